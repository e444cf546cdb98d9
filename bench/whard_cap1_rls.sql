INSERT INTO bench_hard_1_rls(v, owner) VALUES (0, 'user-0');
