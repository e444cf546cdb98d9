// The official Python client (pip `realtime`, tests/python/requirements.txt), unmodified: join
// with broadcast self/ack and presence, Postgres Changes, a broadcast from SQL. The client script
// (tests/python/client.py) prints what it receives; this test drives the database and asserts.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import readline from 'node:readline';
import path from 'node:path';
import { startStack, uniq, REPO } from './lib/harness.mjs';

const PYTHON = process.env.IT_PYTHON ?? path.join(REPO, 'tests/.venv/bin/python');
let stack;

before(async () => {
  stack = await startStack({ name: 'python' });
  await stack.sql(`
    create table public.py_items (id bigint primary key, title text);
    grant select on public.py_items to anon;
    select realtime.enable('public.py_items');`);
});

after(async () => {
  await stack?.stop();
});

test('python realtime: subscribe, broadcast (self, ack, from SQL), presence, postgres_changes', async () => {
  const topic = uniq('py');
  const child = spawn(PYTHON, [
    path.join(REPO, 'tests/python/client.py'),
    `ws://127.0.0.1:${stack.port}/realtime/v1`, stack.anonKey, topic, 'py_items',
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const lines = [];
  const exited = new Promise((resolve) => child.on('exit', resolve));
  for await (const line of readline.createInterface({ input: child.stdout })) {
    const msg = JSON.parse(line);
    lines.push(msg);
    if (msg.ready) {
      await stack.broadcast(topic, 'hello', { from: 'sql' });
      await stack.sql("insert into public.py_items values (7, 'from python test')");
    }
  }
  const code = await exited;
  assert.equal(code, 0, `python client failed:\n${stderr}`);
  assert.ok(lines.some((l) => l.ready), `never subscribed: ${JSON.stringify(lines)}\n${stderr}`);
  assert.equal(lines.find((l) => l.timeout), undefined, `missing events: ${JSON.stringify(lines)}`);

  const broadcasts = lines.filter((l) => l.kind === 'broadcast').map((l) => l.message);
  assert.deepEqual(broadcasts.map((b) => [b.event, b.payload.from]).sort(), [['hello', 'py'], ['hello', 'sql']]);
  const sync = lines.filter((l) => l.kind === 'sync').at(-1).message;
  assert.deepEqual(Object.keys(sync), ['py']);
  assert.equal(sync.py[0].name, 'py');
  const change = lines.find((l) => l.kind === 'change').message;
  assert.equal(change.data.type, 'INSERT');
  assert.equal(change.data.table, 'py_items');
  assert.deepEqual(change.data.record, { id: 7, title: 'from python test' });
  assert.match(change.data.commit_timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
});
