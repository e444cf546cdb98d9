WITH i AS (INSERT INTO bench_t(v) VALUES (1) RETURNING 1) SELECT realtime.broadcast('w','e','{"a":1}') FROM i;
