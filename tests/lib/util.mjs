// Small async helpers shared by the integration tests: bounded waits, inboxes, unique names.
import { randomBytes } from 'node:crypto';

/** Rejects with a labelled error when `promise` does not settle within `ms`. */
export function withTimeout(promise, ms, label = 'operation') {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${label}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `fn` until it returns a truthy value (or throws after `ms`). */
export async function eventually(fn, { timeout = 15000, interval = 50, label = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let lastErr;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      lastErr = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${label}${lastErr ? `: ${lastErr.message}` : ''}`);
    }
    await delay(interval);
  }
}

let counter = 0;
/** A topic / event name unique to this process. */
export function uniq(prefix = 't') {
  counter += 1;
  return `${prefix}-${counter}-${randomBytes(3).toString('hex')}`;
}

/**
 * Collects items pushed by callbacks and lets a test wait for them with a bound.
 * `waitFor(pred)` resolves with the first matching item (already present or future);
 * `waitForCount(n, pred)` resolves with the first n matching items.
 */
export class Inbox {
  constructor(label = 'inbox') {
    this.label = label;
    this.items = [];
    this.waiters = [];
  }

  push(item) {
    this.items.push(item);
    for (const w of [...this.waiters]) w.check();
  }

  waitForCount(n, pred = () => true, timeout = 15000, label) {
    const what = label ?? `${n} item(s) in ${this.label}`;
    return new Promise((resolve, reject) => {
      const waiter = {
        check: () => {
          const got = this.items.filter(pred);
          if (got.length >= n) {
            cleanup();
            resolve(got.slice(0, n));
          }
        },
      };
      const timer = setTimeout(() => {
        cleanup();
        const got = this.items.filter(pred).length;
        reject(new Error(`timed out after ${timeout} ms waiting for ${what} (have ${got}; all items: ${preview(this.items)})`));
      }, timeout);
      const cleanup = () => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((w) => w !== waiter);
      };
      this.waiters.push(waiter);
      waiter.check();
    });
  }

  async waitFor(pred, timeout = 15000, label) {
    const [item] = await this.waitForCount(1, pred, timeout, label);
    return item;
  }

  count(pred = () => true) {
    return this.items.filter(pred).length;
  }
}

export function preview(v, max = 600) {
  let s;
  try {
    s = JSON.stringify(v, (k, x) => (typeof x === 'string' && x.length > 80 ? `${x.slice(0, 40)}…(${x.length} chars)` : x));
  } catch {
    s = String(v);
  }
  return s.length > max ? `${s.slice(0, max)}…` : s;
}
