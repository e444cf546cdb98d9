INSERT INTO bench_hard_0(v, owner) VALUES (0, 'user-0');
