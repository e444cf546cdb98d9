INSERT INTO bench_hard_1(v, owner) VALUES (0, 'user-0');
