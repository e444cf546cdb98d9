BEGIN;
INSERT INTO bench_t(v) VALUES (1);
SELECT realtime.broadcast('w','e','{"a":1}');
END;
