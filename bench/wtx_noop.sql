BEGIN;
INSERT INTO bench_t(v) VALUES (1);
SELECT concat_ws('w','e','{"a":1}'::jsonb);
END;
