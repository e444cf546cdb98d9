// A raw Phoenix/Realtime socket (npm `ws`) for frame-level assertions and for sending input the
// official client never sends. Frames are decoded into {join_ref, ref, topic, event, payload}
// regardless of vsn (binary kind 4 frames get `binary: true`).
import WebSocket from 'ws';
import { Inbox, withTimeout } from './util.mjs';

export const DEFAULT_JOIN_CONFIG = {
  broadcast: { ack: false, self: false },
  presence: { enabled: false, key: '' },
  postgres_changes: [],
  private: false,
};

export function decodeKind4(buf) {
  if (buf.length < 5 || buf[0] !== 4) return null;
  const [topicLen, eventLen, metaLen, enc] = [buf[1], buf[2], buf[3], buf[4]];
  let o = 5;
  const topic = buf.subarray(o, (o += topicLen)).toString('utf8');
  const event = buf.subarray(o, (o += eventLen)).toString('utf8');
  const meta = metaLen ? JSON.parse(buf.subarray(o, (o += metaLen)).toString('utf8')) : undefined;
  const rest = buf.subarray(o);
  const payload = { type: 'broadcast', event, payload: enc === 1 ? JSON.parse(rest.toString('utf8')) : rest };
  if (meta !== undefined) payload.meta = meta;
  return { join_ref: null, ref: null, topic, event: 'broadcast', payload, binary: true };
}

/** Binary kind 3 (client broadcast push) with honest lengths unless overridden. */
export function encodeKind3({ joinRef, ref, topic, event, payload, meta = '', encoding = 1, lens = {} }) {
  const parts = [joinRef, ref, topic, event, meta].map((s) => Buffer.from(s, 'utf8'));
  const body = Buffer.isBuffer(payload) ? payload : Buffer.from(JSON.stringify(payload), 'utf8');
  const header = Buffer.from([
    3,
    lens.joinRef ?? parts[0].length,
    lens.ref ?? parts[1].length,
    lens.topic ?? parts[2].length,
    lens.event ?? parts[3].length,
    lens.meta ?? parts[4].length,
    encoding,
  ]);
  return Buffer.concat([header, ...parts, body]);
}

export class RawSocket {
  /**
   * Opens a socket (from `localAddress`, e.g. '127.0.0.2', when given). Resolves with a
   * RawSocket once open; rejects with an Error carrying {status, body} when the server refuses
   * the upgrade.
   */
  static connect(url, { vsn = '2.0.0', timeout = 10000, localAddress } = {}) {
    return withTimeout(
      new Promise((resolve, reject) => {
        const ws = new WebSocket(url, localAddress ? { localAddress } : undefined);
        ws.once('open', () => resolve(new RawSocket(ws, vsn)));
        ws.once('unexpected-response', (req, res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (d) => (body += d));
          res.on('end', () => {
            const err = new Error(`upgrade refused: HTTP ${res.statusCode} ${body}`);
            err.status = res.statusCode;
            err.body = body;
            err.headers = res.headers;
            reject(err);
            req.destroy();
          });
          res.on('error', () => {});
        });
        ws.once('error', (e) => reject(e));
      }),
      timeout,
      `websocket connect ${url.replace(/apikey=[^&]+/, 'apikey=…')}`,
    );
  }

  /** Resolves with {status, body, json} of a refused upgrade; throws if the upgrade succeeds. */
  static async refusal(url, opts) {
    try {
      const s = await RawSocket.connect(url, opts);
      s.terminate();
    } catch (e) {
      if (e.status === undefined) throw e;
      let json;
      try {
        json = JSON.parse(e.body);
      } catch {
        json = undefined;
      }
      return { status: e.status, body: e.body, json, headers: e.headers };
    }
    throw new Error('expected the websocket upgrade to be refused, but it succeeded');
  }

  constructor(ws, vsn) {
    this.ws = ws;
    this.vsn = vsn;
    this.refCounter = 100;
    this.frames = new Inbox('raw frames');
    this.closeInfo = null;
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() };
        resolve(this.closeInfo);
      });
    });
    ws.on('error', () => {});
    ws.on('message', (data, isBinary) => this.frames.push(this.decode(data, isBinary)));
  }

  get isOpen() {
    return this.ws.readyState === WebSocket.OPEN;
  }

  decode(data, isBinary) {
    const buf = Buffer.isBuffer(data) ? data : Buffer.concat(data);
    if (isBinary) return decodeKind4(buf) ?? { undecodable: true, bytes: buf, binary: true };
    let v;
    try {
      v = JSON.parse(buf.toString('utf8'));
    } catch {
      return { undecodable: true, text: buf.toString('utf8') };
    }
    if (Array.isArray(v)) {
      const [join_ref, ref, topic, event, payload] = v;
      return { join_ref, ref, topic, event, payload, raw: v };
    }
    return { join_ref: v.join_ref, ref: v.ref, topic: v.topic, event: v.event, payload: v.payload, raw: v };
  }

  nextRef() {
    this.refCounter += 1;
    return String(this.refCounter);
  }

  sendRaw(data, { binary = false } = {}) {
    this.ws.send(data, { binary });
  }

  /**
   * Sends `data`; resolves true once it is handed to the kernel, false when the socket failed
   * or the send did not complete within `timeout` ms (the server stopped reading).
   */
  sendAcked(data, { binary = false, timeout = 2000 } = {}) {
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeout);
      this.ws.send(data, { binary }, (err) => {
        clearTimeout(timer);
        resolve(!err);
      });
    });
  }

  /** Stops reading the socket, like a client that never reads: the server's writes back up. */
  pauseReading() {
    this.ws._socket.pause();
  }

  resumeReading() {
    this.ws._socket.resume();
  }

  /** Sends a logical message; returns its ref. */
  push(topic, event, payload, { joinRef = null, ref = this.nextRef() } = {}) {
    if (this.vsn === '1.0.0') {
      const msg = { topic, event, payload, ref };
      if (joinRef !== null) msg.join_ref = joinRef;
      this.ws.send(JSON.stringify(msg));
    } else {
      this.ws.send(JSON.stringify([joinRef, ref, topic, event, payload]));
    }
    return ref;
  }

  reply(ref, timeout = 15000) {
    return this.frames.waitFor((f) => f.event === 'phx_reply' && f.ref === ref, timeout, `phx_reply to ref ${ref}`);
  }

  async join(topic, { config = DEFAULT_JOIN_CONFIG, extra = {}, timeout = 15000 } = {}) {
    const ref = this.nextRef();
    this.push(topic, 'phx_join', { config, ...extra }, { joinRef: ref, ref });
    const reply = await this.reply(ref, timeout);
    return { joinRef: ref, reply };
  }

  async heartbeat(timeout = 15000) {
    const ref = this.push('phoenix', 'heartbeat', {});
    return this.reply(ref, timeout);
  }

  close() {
    this.ws.close();
  }

  terminate() {
    this.ws.terminate();
  }
}
