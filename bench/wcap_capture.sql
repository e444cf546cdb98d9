INSERT INTO bench_cap(v) VALUES (1);
