INSERT INTO bench_nocap(v) VALUES (1);
