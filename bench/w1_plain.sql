INSERT INTO bench_t(v) VALUES (1);
