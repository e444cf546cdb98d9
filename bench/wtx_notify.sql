BEGIN;
INSERT INTO bench_t(v) VALUES (1);
SELECT pg_notify('w','x');
END;
