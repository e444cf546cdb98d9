// Attack (issue 10, finding 9, connections): sockets that trickle their HTTP request head one
// byte at a time stayed open indefinitely (300 held for 45 s+), and nothing capped connections
// in all or per client address (20,000 file descriptors end the service for everyone). Now the
// head must arrive within HEADER_READ_TIMEOUT_MS, and connections beyond MAX_CONNECTIONS /
// MAX_CONNECTIONS_PER_IP are answered 429 before any upgrade — while /healthcheck and the
// clients already connected keep working.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startStack, join, uniq, withTimeout } from '../lib/harness.mjs';
import { RawSocket } from '../lib/raw.mjs';
import { eventually } from '../lib/util.mjs';

const HEADER_TIMEOUT_MS = 2000;
const PER_IP = 10;
const TOTAL = 40;

let slow; // a stack with a short header-read timeout
let capped; // a stack with small connection caps
before(async () => {
  slow = await startStack({ name: 'sec-trickle', sidecarEnv: { HEADER_READ_TIMEOUT_MS: String(HEADER_TIMEOUT_MS) } });
  capped = await startStack({
    name: 'sec-conn-caps',
    sidecarEnv: { MAX_CONNECTIONS: String(TOTAL), MAX_CONNECTIONS_PER_IP: String(PER_IP) },
  });
  await slow.assertHealthy();
  await capped.assertHealthy();
});
after(async () => {
  await slow?.stop();
  await capped?.stop();
});

test('300 sockets trickling their request head are closed after the header-read timeout', async () => {
  const sockets = [];
  const path = `/realtime/v1/websocket?apikey=${slow.anonKey}&vsn=2.0.0`;
  for (let i = 0; i < 300; i++) {
    const sock = net.connect({ host: '127.0.0.1', port: slow.port });
    sock.on('error', () => {});
    sock.resume();
    sock.closedAt = new Promise((resolve) => sock.once('close', () => resolve(Date.now())));
    sock.write(`GET ${path} HTTP/1.1\r\nHost: x\r\n`);
    sockets.push(sock);
  }
  const started = Date.now();
  // One more header byte every 300 ms, never the blank line that ends the head.
  const trickle = setInterval(() => {
    for (const sock of sockets) if (!sock.destroyed) sock.write('X');
  }, 300);
  try {
    // Meanwhile the service works for everyone else.
    await slow.assertHealthy();
    const closed = await withTimeout(Promise.all(sockets.map((s) => s.closedAt)), 15000, 'the server to close the trickling sockets');
    const latest = Math.max(...closed) - started;
    assert.ok(latest >= HEADER_TIMEOUT_MS - 500, `closed after ${latest} ms, not before the timeout`);
  } finally {
    clearInterval(trickle);
    for (const sock of sockets) sock.destroy();
  }
  await slow.assertHealthy();
});

test('an idle kept-alive HTTP connection is closed after the header-read timeout too', async () => {
  const sock = net.connect({ host: '127.0.0.1', port: slow.port });
  sock.on('error', () => {});
  sock.resume(); // read the response, so the server's FIN is seen
  const closed = new Promise((resolve) => sock.once('close', resolve));
  sock.write('GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\n');
  await withTimeout(closed, HEADER_TIMEOUT_MS + 8000, 'the idle connection to be closed');
});

test(`connections beyond ${PER_IP} per address and ${TOTAL} in all are refused with 429; others keep working`, async () => {
  const url = capped.wsUrl();
  const attackers = [];
  try {
    // One address fills its share.
    for (let i = 0; i < PER_IP; i++) attackers.push(capped.trackRaw(await RawSocket.connect(url, { localAddress: '127.0.0.2' })));
    const perIp = await RawSocket.refusal(url, { localAddress: '127.0.0.2' });
    assert.deepEqual({ status: perIp.status, json: perIp.json }, { status: 429, json: { error: 'Too many connections from this address' } });
    await capped.assertHealthy(); // other addresses are not affected

    // Many addresses fill the whole server.
    let refusal;
    for (let host = 3; host < 3 + TOTAL && !refusal; host++) {
      for (let i = 0; i < PER_IP && !refusal; i++) {
        try {
          attackers.push(capped.trackRaw(await RawSocket.connect(url, { localAddress: `127.0.0.${host}` })));
        } catch (e) {
          if (e.status === undefined) throw e;
          refusal = { status: e.status, json: JSON.parse(e.body) };
        }
      }
    }
    assert.deepEqual(refusal, { status: 429, json: { error: 'Too many connected users' } });
    assert.ok(attackers.length < TOTAL, `${attackers.length} attacker sockets were served`);
    // Full: the health probe is still answered and the connected canary still receives.
    await capped.assertHealthy();
    // The attackers' sockets themselves are still served.
    assert.equal((await attackers.at(-1).heartbeat()).payload.status, 'ok');
  } finally {
    for (const a of attackers) a.terminate();
  }
  // Once they leave, new clients get in again.
  await eventually(
    async () => {
      const client = capped.client();
      try {
        await join(client, uniq('after'), { timeout: 3000 });
        return true;
      } finally {
        await capped.closeClient(client);
      }
    },
    { timeout: 15000, label: 'a new client to connect after the attackers left' },
  );
});
