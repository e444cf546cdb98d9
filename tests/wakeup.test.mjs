// Wake-up path with the fallback poll effectively disabled (POLL_FALLBACK_MS = 10 min): every
// commit must reach clients through the idle → busy notification alone. A lost wake-up shows up
// as a message that does not arrive within the (generous) wait, i.e. as a failure, not a delay.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startStack, join, barrier, uniq, delay } from './lib/harness.mjs';

let stack;
let h;
before(async () => {
  stack = await startStack({ name: 'wakeup', sidecarEnv: { POLL_FALLBACK_MS: '600000' } });
  h = await join(stack.client({ vsn: '2.0.0' }), uniq('wake'));
});
after(async () => {
  await stack?.stop();
});

test('an idle sidecar is woken by every single commit (100 rounds)', async () => {
  const s = await stack.session();
  for (let i = 1; i <= 100; i++) {
    const event = `single-${i}`;
    await s.query("select realtime.broadcast($1, $2, '{}'::jsonb)", [h.topic, event]);
    await h.inbox.waitFor((m) => m.event === event, 15000, `${event} (no fallback poll: a lost wake-up never arrives)`);
    if (i % 10 === 0) await delay(Math.floor(Math.random() * 20)); // let the reader settle idle sometimes
  }
});

test('concurrent short writers: every message arrives once, each writer in its own commit order', async () => {
  const WRITERS = 4;
  const PER = 100;
  const sessions = [];
  for (let w = 0; w < WRITERS; w++) sessions.push(await stack.session());
  await Promise.all(
    sessions.map(async (s, w) => {
      for (let i = 1; i <= PER; i++) {
        await s.query("select realtime.broadcast($1, 'cw', jsonb_build_object('w', $2::int, 'i', $3::int))", [h.topic, w, i]);
        if (i % 7 === 0) await delay(Math.floor(Math.random() * 5));
      }
    }),
  );
  const got = await h.inbox.waitForCount(WRITERS * PER, (m) => m.event === 'cw', 30000);
  for (let w = 0; w < WRITERS; w++) {
    assert.deepEqual(
      got.filter((m) => m.payload.w === w).map((m) => m.payload.i),
      Array.from({ length: PER }, (_, i) => i + 1),
      `writer ${w}`,
    );
  }
  await barrier(stack, h);
  assert.equal(h.inbox.count((m) => m.event === 'cw'), WRITERS * PER, 'no duplicates');
});
