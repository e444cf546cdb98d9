SELECT realtime.send('{"a":1}', 'e', 'room', false);
