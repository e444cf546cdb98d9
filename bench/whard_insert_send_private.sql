WITH i AS (INSERT INTO bench_hard_logged(v, owner) VALUES (0, 'user-0') RETURNING 1) SELECT realtime.send('{"a":1}', 'e', 'room', true) FROM i;
