// Issue 10, finding 10: /healthcheck answered 200 "ok" while Postgres was down, so a load
// balancer kept sending clients to a sidecar that could deliver nothing. Now it answers 503 with
// a JSON reason while the queue reader has no database connection, and 200 again once it has.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startStack } from '../lib/harness.mjs';
import { eventually } from '../lib/util.mjs';

let stack;
before(async () => {
  stack = await startStack({ name: 'sec-health' });
});
after(async () => {
  await stack?.stop();
});

async function health() {
  const res = await fetch(stack.httpUrl('/healthcheck'));
  return { status: res.status, json: await res.json() };
}

test('/healthcheck: 503 with a reason while Postgres is down, 200 once it is back', async () => {
  const up = await health();
  assert.equal(up.status, 200);
  assert.equal(up.json.status, 'ok');
  assert.equal(up.json.db_connected, true);

  await stack.stopPostgres();
  try {
    const down = await eventually(
      async () => {
        const h = await health();
        return h.status === 503 && h;
      },
      { timeout: 20000, label: '/healthcheck to answer 503' },
    );
    assert.equal(down.json.status, 'unavailable');
    assert.equal(down.json.db_connected, false);
    assert.equal(down.json.reason, 'The queue reader has no database connection');
  } finally {
    await stack.startPostgres();
  }
  await eventually(async () => (await health()).status === 200, { timeout: 30000, label: '/healthcheck to answer 200 again' });
  await stack.assertHealthy();
});
