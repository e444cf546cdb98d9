SELECT realtime.broadcast('room', 'e', '{"a":1}', true);
