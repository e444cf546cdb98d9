WITH i AS (INSERT INTO bench_t(v) VALUES (1) RETURNING 1) SELECT pg_notify('w','x') FROM i;
