INSERT INTO bench_hard_neq(v, owner) VALUES (0, 'user-0');
