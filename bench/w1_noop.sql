WITH i AS (INSERT INTO bench_t(v) VALUES (1) RETURNING 1) SELECT concat_ws('w','e','{"a":1}'::jsonb) FROM i;
