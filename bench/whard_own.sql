\set u random(0, 999)
INSERT INTO bench_hard_own(v, owner) VALUES (0, 'user-' || :u);
