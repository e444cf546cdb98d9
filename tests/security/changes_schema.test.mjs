// Postgres Changes on generated, awkward schemas, end to end with the unmodified realtime-js
// client (issue 10, findings 11 and 13). Every expectation is what PostgreSQL itself says:
// - records: each delivered `new` / `old` equals to_jsonb of the row as of that statement
//   (read back in the writer's transaction under the settings the extension renders with:
//   TimeZone UTC, DateStyle ISO, IntervalStyle postgres, extra_float_digits 1, bytea_output hex),
//   passed through realtime-js's own column conversion; `columns` (read off the wire) equals the
//   catalog's names and type names in attnum order; `old` is the primary key, or with REPLICA
//   IDENTITY FULL the whole old row;
// - filters: the ids each binding receives equal `select id ... where <col> <op> <value>`.
// Column names include every identifier the extension's own SQL uses (read from its source at
// run time), keywords, mixed case, quotes, spaces, Unicode, 63-byte names; tables and schemas are
// named awkwardly too. Random choices come from one seed, printed first: SCHEMAGEN_SEED=<seed>
// reproduces a run. A test reports every broken case it found, not just the first.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { isDeepStrictEqual } from 'node:util';
import serializerModule from '@supabase/realtime-js/dist/main/lib/serializer.js';
import { convertChangeData } from '@supabase/realtime-js/dist/main/lib/transformers.js';
import { startStack, uniq, Inbox, preview, REPO } from '../lib/harness.mjs';
import {
  Rng, suiteSeed, qi, ql, qname, extensionIdentifiers, FIXED_ALIASES, KEYWORDS, AWKWARD_NAMES,
  AWKWARD_TEXT, LONG_UNICODE_NAME, TYPE_SETUP_SQL, TYPES, parseExact, plain, exactDifferences,
  filterColumn, filterValue, filterList,
} from '../lib/schemagen.mjs';

const Serializer = serializerModule.default ?? serializerModule;
const SEED = suiteSeed();
const IDENTIFIERS = extensionIdentifiers(REPO);
const ALIAS = qi('sg row');
/** The settings the extension renders records with; expected rows are read back under them. */
const RENDERING = [
  `set local timezone = 'UTC'`,
  `set local datestyle = 'ISO, MDY'`,
  `set local intervalstyle = 'postgres'`,
  'set local extra_float_digits = 1',
  `set local bytea_output = 'hex'`,
];
/** The writer's own session: a zone far from UTC, so a record rendered in it shows. */
const WRITER = [`set local timezone = 'Asia/Kathmandu'`];
const COMMIT_TS = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

let stack;
let writer;

before(async () => {
  console.log(`changes_schema: SCHEMAGEN_SEED=${SEED} (${IDENTIFIERS.length} identifiers from the extension's SQL)`);
  stack = await startStack({ name: 'changes-schema' });
  await stack.sql(`
    ${TYPE_SETUP_SQL}
    grant usage on schema sg_types to anon;
    create table public.sg_barrier (id bigint primary key);
    grant select on public.sg_barrier to anon;
    select realtime.enable('public.sg_barrier');
    create schema sg_cols; create schema sg_pk; create schema sg_all; create schema sg_gen;
    create schema "Mixed Schema"; create schema sg_filters; create schema sg_full; create schema sg_wire;
    grant usage on schema sg_cols, sg_pk, sg_all, sg_gen, "Mixed Schema", sg_filters, sg_full, sg_wire to anon;
  `);
  writer = await stack.session();
});
after(async () => {
  await stack?.stop();
});

/** A generator of its own per test: adding a test does not change another's tables. */
function rngFor(name) {
  let h = SEED;
  for (const ch of name) h = Math.imul(h ^ ch.codePointAt(0), 0x9e3779b1) >>> 0;
  return new Rng(h);
}

// ---------------------------------------------------------------------------------------------
// subscribing: batches of bindings on few clients, frames tapped off the wire, a barrier

/**
 * Channels of up to `perChannel` bindings on clients of up to `perClient` channels. Each channel
 * also listens to INSERTs on public.sg_barrier: once a marker inserted after the writes has
 * arrived on every channel, so has everything committed before it. Every `postgres_changes`
 * frame is also read off the wire (numbers with their source text), for `columns` and digits.
 */
class Listener {
  constructor() {
    this.clients = [];
    this.channels = [];
    this.frames = new Map();
    this.marker = 0;
  }

  client() {
    const serializer = new Serializer();
    const decode = serializer.decode.bind(serializer);
    const client = stack.client({
      decode: (raw, callback) => {
        if (typeof raw === 'string' && raw.includes('"postgres_changes"')) this.tap(raw);
        return decode(raw, callback);
      },
    });
    this.clients.push(client);
    return client;
  }

  tap(raw) {
    const msg = parseExact(raw);
    if (!Array.isArray(msg) || msg[3] !== 'postgres_changes') return;
    const [, , topic, , payload] = msg;
    for (const id of payload?.ids ?? []) {
      const key = `${topic}|${plain(id)}`;
      if (!this.frames.has(key)) this.frames.set(key, []);
      this.frames.get(key).push(payload.data);
    }
  }

  /**
   * Subscribes every sink ({binding, label}); fills in `payloads` (realtime-js), `frames` (wire)
   * and, for a binding the server refused, `refused` (the system message). A refused channel is
   * retried one binding per channel, so the refusal is pinned on the binding that caused it.
   */
  async subscribe(sinks, { perChannel = 16, perClient = 5 } = {}) {
    for (const s of sinks) Object.assign(s, { payloads: [], frames: [], refused: null });
    const channelGroups = chunk(sinks, perChannel);
    const results = [];
    for (const clientGroup of chunk(channelGroups, perClient)) {
      const client = this.client();
      results.push(...(await Promise.all(clientGroup.map((g) => this.channel(client, g)))));
    }
    const retry = results.filter((r) => r.error && r.sinks.length > 1).flatMap((r) => r.sinks);
    for (const r of results.filter((x) => x.error && x.sinks.length === 1)) r.sinks[0].refused = r.error;
    for (const clientGroup of chunk(retry.map((s) => [s]), perClient)) {
      const client = this.client();
      const again = await Promise.all(clientGroup.map((g) => this.channel(client, g)));
      for (const r of again.filter((x) => x.error)) r.sinks[0].refused = r.error;
    }
  }

  async channel(client, sinks) {
    const ch = client.channel(uniq('schema'));
    const system = new Inbox(`system of ${ch.topic}`);
    const statuses = new Inbox(`statuses of ${ch.topic}`);
    const barrier = new Inbox(`barrier on ${ch.topic}`);
    for (const s of sinks) ch.on('postgres_changes', s.binding, (p) => s.payloads.push(p));
    ch.on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'sg_barrier' }, (p) => barrier.push(p));
    ch.on('system', {}, (m) => system.push(m));
    ch.subscribe((status, err) => statuses.push({ status, err }));
    const first = await statuses.waitFor(() => true, 30000, `subscribe ${ch.topic}`);
    if (first.status !== 'SUBSCRIBED') return { sinks, error: `${first.status}: ${first.err?.message ?? ''}` };
    const sys = await system.waitFor((m) => m.extension === 'postgres_changes', 30000, `postgres_changes system message on ${ch.topic}`);
    if (sys.status !== 'ok') {
      await client.removeChannel(ch);
      return { sinks, error: sys.message ?? preview(sys) };
    }
    sinks.forEach((s, i) => {
      const key = `${ch.topic}|${ch.bindings.postgres_changes[i].id}`;
      if (!this.frames.has(key)) this.frames.set(key, []);
      s.frames = this.frames.get(key);
    });
    this.channels.push({ ch, barrier });
    return { sinks, error: null };
  }

  /** Waits until a marker committed now has reached every channel. */
  async settle(timeout = 60000) {
    this.marker += 1;
    const id = Number(`${Date.now()}${String(this.marker).padStart(3, '0')}`.slice(-15));
    await stack.sql('insert into public.sg_barrier values ($1)', [id]);
    await Promise.all(this.channels.map(({ ch, barrier }) => barrier.waitFor((p) => p.new?.id === id, timeout, `barrier ${id} on ${ch.topic}`)));
  }

  async close() {
    await Promise.all(this.clients.map((c) => stack.closeClient(c)));
  }
}

function chunk(items, n) {
  const out = [];
  for (let i = 0; i < items.length; i += n) out.push(items.slice(i, i + n));
  return out;
}

// ---------------------------------------------------------------------------------------------
// writing: statements in one transaction, each followed by the rows as PostgreSQL renders them

/**
 * Runs `ops` on `table` ({schema, table, pk}) in one transaction of the writer's session (its
 * own TimeZone, or `settings`), reading the table back with to_jsonb under RENDERING before the
 * first and after each statement. Returns per statement its type and changed rows in the order
 * the statement returned them: {type, events: [{type, key, before, after}]} (images parsed with
 * their numbers' source text). Ops: {insert: [{col: sqlExpr}]}, {update: {set: {col: sqlExpr},
 * where}}, {delete: {where}} (`where` SQL over the alias "sg row"; none: every row).
 */
async function applyOps(table, ops, { settings = WRITER } = {}) {
  const target = qname(table);
  const key = `pg_catalog.jsonb_build_array(${table.pk.map((c) => `${ALIAS}.${qi(c)}`).join(', ')})::text`;
  const snapshot = `select ${key} as k, pg_catalog.to_jsonb(${ALIAS})::text as j from ${target} ${ALIAS}`;
  const parts = ['begin', ...RENDERING];
  const snapshotAt = [parts.push(snapshot) - 1];
  const statementAt = [];
  for (const op of ops) {
    parts.push(...settings);
    statementAt.push(parts.push(`${statementSql(target, op)} returning ${key} as k`) - 1);
    parts.push(...RENDERING);
    snapshotAt.push(parts.push(snapshot) - 1);
  }
  parts.push('commit');
  let results;
  try {
    results = await writer.query(parts.join(';\n'));
  } catch (e) {
    await writer.query('rollback').catch(() => {});
    throw new Error(`writing ${target} failed: ${e.message}`);
  }
  const snaps = snapshotAt.map((i) => new Map(results[i].rows.map((r) => [r.k, parseExact(r.j)])));
  return ops.map((op, i) => {
    const type = op.insert ? 'INSERT' : op.update ? 'UPDATE' : 'DELETE';
    const events = results[statementAt[i]].rows.map(({ k }) => ({ type, key: k, before: snaps[i].get(k), after: snaps[i + 1].get(k) }));
    return { type, events };
  });
}

function statementSql(target, op) {
  if (op.insert) {
    const cols = [...new Set(op.insert.flatMap((row) => Object.keys(row)))];
    const values = op.insert.map((row) => `(${cols.map((c) => (c in row ? row[c] : 'default')).join(', ')})`);
    return `insert into ${target} as ${ALIAS} (${cols.map(qi).join(', ')}) values ${values.join(', ')}`;
  }
  if (op.update) {
    const set = Object.entries(op.update.set).map(([c, v]) => `${qi(c)} = ${v}`);
    return `update ${target} as ${ALIAS} set ${set.join(', ')}${op.update.where ? ` where ${op.update.where}` : ''}`;
  }
  return `delete from ${target} as ${ALIAS}${op.delete.where ? ` where ${op.delete.where}` : ''}`;
}

/** `"sg row".<col> in (values)`: rows by one key column. */
const whereIn = (col, values) => `${ALIAS}.${qi(col)} in (${values.join(', ')})`;

/** Columns role `anon` may select, as `columns` must list them: attnum order, type names. */
async function catalogColumns(table) {
  return stack.sql(
    `select a.attname::text as name, t.typname::text as type
       from pg_catalog.pg_attribute a join pg_catalog.pg_type t on t.oid = a.atttypid
      where a.attrelid = $1::regclass and a.attnum > 0 and not a.attisdropped
        and has_column_privilege('anon', a.attrelid, a.attnum, 'SELECT')
      order by a.attnum`,
    [qname(table)],
  );
}

// ---------------------------------------------------------------------------------------------
// comparing

/**
 * The events binding `sink` should get, per statement: of type `event` ('*': any), whose image
 * (the new row; DELETE: the old one) passes `visible` (the policy) and `filter`.
 */
function expectedFor(statements, { event = '*', visible = () => true, filter = () => true } = {}) {
  return statements.map((st) =>
    st.events.filter((e) => {
      if (event !== '*' && e.type !== event) return false;
      const image = plain(e.type === 'DELETE' ? e.before : e.after);
      return visible(image) && filter(image);
    }),
  );
}

/**
 * Problems (strings) with what `sink` received against `groups` (expectedFor): within a
 * statement events are matched by type and primary key, statements in commit order. `meta`:
 * {schema, table, columns, pk, old: 'pk' | 'full'}.
 */
function compareSink(label, sink, groups, meta) {
  if (sink.refused) return [`${label}: subscription refused: ${sink.refused}`];
  const problems = [];
  const got = sink.payloads;
  const total = groups.reduce((n, g) => n + g.length, 0);
  if (got.length !== total) problems.push(`${label}: expected ${total} events, got ${got.length}`);
  if (sink.frames.length !== got.length) problems.push(`${label}: ${sink.frames.length} frames on the wire for ${got.length} events`);
  const keyOf = (record) => JSON.stringify(meta.pk.map((c) => record?.[c]));
  let at = 0;
  for (const group of groups) {
    const slice = got.slice(at, at + group.length).map((p, i) => ({ p, frame: sink.frames[at + i], used: false }));
    at += group.length;
    for (const e of group) {
      const key = JSON.stringify(JSON.parse(e.key));
      const hit = slice.find((d) => !d.used && d.p.eventType === e.type && keyOf(e.type === 'DELETE' ? d.p.old : d.p.new) === key);
      const d = hit ?? slice.find((x) => !x.used);
      const where = `${label}: ${e.type} ${key}`;
      if (!d) {
        problems.push(`${where}: not delivered`);
        continue;
      }
      d.used = true;
      if (!hit) problems.push(`${where}: not delivered; in its place ${d.p.eventType} new=${preview(d.p.new, 200)} old=${preview(d.p.old, 200)}`);
      problems.push(...compareEvent(where, d, e, meta));
    }
  }
  for (const extra of got.slice(at)) problems.push(`${label}: unexpected ${extra.eventType} new=${preview(extra.new, 200)} old=${preview(extra.old, 200)}`);
  return problems;
}

function compareEvent(where, { p, frame }, e, meta) {
  const problems = [];
  const names = meta.columns.map((c) => c.name);
  const pick = (image, cols) => Object.fromEntries(cols.map((c) => [c, image[c]]));
  const view = (image) => convertChangeData(meta.columns, pick(plain(image), names));
  const expectNew = e.type === 'DELETE' ? {} : view(e.after);
  const oldCols = meta.old === 'full' ? names : meta.pk;
  const expectOld = e.type === 'INSERT' ? {} : convertChangeData(meta.columns, pick(plain(e.before), oldCols));
  if (p.schema !== meta.schema || p.table !== meta.table) problems.push(`${where}: reported as ${preview([p.schema, p.table])}`);
  if (p.errors !== null) problems.push(`${where}: errors ${preview(p.errors)}`);
  if (!COMMIT_TS.test(p.commit_timestamp ?? '')) problems.push(`${where}: commit_timestamp ${preview(p.commit_timestamp)}`);
  problems.push(...recordDiff(`${where}: new`, expectNew, p.new));
  problems.push(...recordDiff(`${where}: old`, expectOld, p.old));
  const wireColumns = frame ? plain(frame.columns) : undefined;
  if (!isDeepStrictEqual(wireColumns, meta.columns)) {
    problems.push(`${where}: columns ${preview(wireColumns, 300)}, expected ${preview(meta.columns, 300)}`);
  }
  return problems;
}

function recordDiff(what, expected, got) {
  if (isDeepStrictEqual(expected, got)) return [];
  if (!got || typeof got !== 'object' || Array.isArray(got)) return [`${what}: expected ${preview(expected, 300)} got ${preview(got, 300)}`];
  const keys = [...new Set([...Object.keys(expected), ...Object.keys(got)])].filter((k) => !isDeepStrictEqual(expected[k], got[k]));
  const shown = keys.slice(0, 4).map((k) => `${JSON.stringify(k)}: expected ${k in expected ? preview(expected[k], 120) : '(absent)'} got ${k in got ? preview(got[k], 120) : '(absent)'}`);
  return [`${what}: ${keys.length} column(s) differ: ${shown.join('; ')}${keys.length > 4 ? '; …' : ''}`];
}

/** Fails with every problem (grouped by case, the first few of each), or passes. */
function report(title, problemsByCase, total) {
  const failing = [...problemsByCase].filter(([, ps]) => ps.length);
  if (!failing.length) return;
  const lines = failing.slice(0, 150).map(([name, ps]) => `  ${name}: ${ps.slice(0, 3).join(' | ')}${ps.length > 3 ? ` (+${ps.length - 3} more)` : ''}`);
  const more = failing.length > 150 ? `\n  … and ${failing.length - 150} more` : '';
  assert.fail(`${title}: ${failing.length} of ${total} case(s) broken (SCHEMAGEN_SEED=${SEED}):\n${lines.join('\n')}${more}`);
}

/** DDL for a captured table anon may read (RLS with `policy` when given). */
function tableSql(table, columnsSql, { policy, replicaFull = false, grant = 'select' } = {}) {
  const t = qname(table);
  return [
    `create table ${t} (${columnsSql})`,
    policy ? `alter table ${t} enable row level security; create policy "sg anon" on ${t} for select to anon using (${policy})` : '',
    replicaFull ? `alter table ${t} replica identity full` : '',
    `grant ${grant} on ${t} to anon`,
    `select realtime.enable(${ql(t)})`,
  ].filter(Boolean).join(';\n');
}

async function runDdl(statements, batch = 40) {
  for (const part of chunk(statements, batch)) await stack.sql(part.join(';\n'));
}

// ---------------------------------------------------------------------------------------------
// finding 11: records

describe('finding 11: every identifier of the extension\'s SQL', () => {
  // One small table per identifier, with RLS on (so the visibility check runs too): the
  // identifier as a column, as a table name in public (unqualified in regclass output), and as
  // a primary key. Per table: an unfiltered binding and an `eq` binding on the named column.
  const variants = {
    column: (tok) => ({ schema: 'sg_cols', table: tok, pk: ['sg pk'], col: tok }),
    table: (tok) => ({ schema: 'public', table: tok, pk: ['sg pk'], col: 'sg value' }),
    'primary key': (tok) => ({ schema: 'sg_pk', table: tok, pk: [tok], col: 'sg value' }),
  };
  const tokensFor = { column: IDENTIFIERS, table: IDENTIFIERS, 'primary key': FIXED_ALIASES };

  for (const [variant, make] of Object.entries(variants)) {
    test(`as a ${variant}: records, old keys, columns and an eq filter are right`, async () => {
      const rng = rngFor(`identifier ${variant}`);
      const cases = tokensFor[variant].map((tok) => ({ tok, ...make(tok) }));
      await runDdl(cases.map((c) => tableSql(c, `${qi(c.pk[0])} int8 primary key, ${qi(c.col)} text`, { policy: `${qi(c.col)} is distinct from 'hidden'` })));
      const problems = new Map();
      for (const phase of chunk(cases, 60)) {
        const listener = new Listener();
        const sinks = phase.flatMap((c) => [
          { c, kind: 'all', binding: { event: '*', schema: c.schema, table: c.table } },
          { c, kind: 'eq', binding: { event: '*', schema: c.schema, table: c.table, filter: `${filterColumn(c.col, rng)}=eq.v2` } },
        ]);
        await listener.subscribe(sinks);
        const written = new Map();
        for (const c of phase) {
          const [pk] = c.pk;
          written.set(c, await applyOps(c, [
            { insert: [{ [pk]: '1', [c.col]: `'v1'` }, { [pk]: '2', [c.col]: `'hidden'` }, { [pk]: '3', [c.col]: 'null' }] },
            { update: { set: { [c.col]: `'v2'` }, where: whereIn(pk, [1]) } },
            { delete: { where: whereIn(pk, [1]) } },
          ]));
        }
        await listener.settle();
        for (const s of sinks) {
          const { c } = s;
          const columns = [{ name: c.pk[0], type: 'int8' }, { name: c.col, type: 'text' }];
          const groups = expectedFor(written.get(c), {
            visible: (img) => img[c.col] !== 'hidden',
            filter: s.kind === 'eq' ? (img) => img[c.col] === 'v2' : undefined,
          });
          const name = `${variant} ${JSON.stringify(c.tok)}`;
          const ps = compareSink(`${s.kind} binding ${s.binding.filter ?? ''}`.trim(), s, groups, { ...c, columns, old: 'pk' });
          problems.set(name, [...(problems.get(name) ?? []), ...ps]);
        }
        await listener.close();
      }
      report(`identifiers as a ${variant}`, problems, cases.length);
    });
  }
});

/** A row of random values for `columns` ({name, type}), NULL with probability `nulls`. */
function randomRow(rng, columns, { nulls = 0.15, long = true } = {}) {
  return Object.fromEntries(columns.map((c) => [c.name, rng.chance(nulls) ? 'null' : TYPES[c.type].gen(rng, { long })]));
}

/**
 * A table's life in statements: a multi-row insert, updates of a few rows and of all, deletes
 * of one row and of all, a second insert. `ids`: the values of the int8 key column `key`;
 * `extraKey(id)` gives the other key columns' values.
 */
function lifeOps(rng, { key, columns, extraKey = () => ({}), long = true }) {
  const writable = columns.filter((c) => !c.generated);
  const row = (id) => ({ [key]: String(id), ...extraKey(id), ...randomRow(rng, writable, { long }) });
  const someColumns = () => rng.sample(writable, rng.int(1, Math.min(4, writable.length)));
  const set = () => randomRow(rng, someColumns(), { nulls: 0.2, long });
  return [
    { insert: [row(1), row(2), row(3), { [key]: '4', ...extraKey(4) }] },
    { update: { set: set(), where: whereIn(key, [1, 2]) } },
    { delete: { where: whereIn(key, [3]) } },
    { insert: [row(5)] },
    { update: { set: set() } },
    { delete: {} },
  ];
}

/** Captures `spec` tables ({schema, table, pk, ddl, ops}) with one '*' binding each and checks every event. */
async function checkRecords(title, specs, { old = 'pk' } = {}) {
  const listener = new Listener();
  const sinks = specs.map((spec) => ({ spec, binding: { event: '*', schema: spec.schema, table: spec.table } }));
  await listener.subscribe(sinks, { perChannel: 8 });
  const written = [];
  for (const spec of specs) written.push(await applyOps(spec, spec.ops, { settings: spec.settings ?? WRITER }));
  await listener.settle();
  const problems = new Map();
  for (const [i, s] of sinks.entries()) {
    const columns = await catalogColumns(s.spec);
    const name = `${qname(s.spec)} (${s.spec.describe ?? `${columns.length} columns`})`;
    problems.set(name, compareSink('', s, expectedFor(written[i]), { ...s.spec, columns, old }));
  }
  await listener.close();
  report(title, problems, specs.length);
}

describe('finding 11: awkward names and every column type', () => {
  test('fixed awkward table in a quoted mixed-case schema: keywords, quotes, Unicode, 63-byte names, dropped, generated, domain, enum, arrays, json, numeric, timestamptz, bytea, composite', async () => {
    const rng = rngFor('fixed');
    const typeKeys = Object.keys(TYPES);
    const names = [...KEYWORDS, ...AWKWARD_NAMES].filter((n) => !['Id Key', '名前 key'].includes(n));
    const columns = names.map((name, i) => ({ name, type: typeKeys[i % typeKeys.length] }));
    const table = { schema: 'Mixed Schema', table: 'Weird "Table" 名', pk: ['Id Key', '名前 key'] };
    const columnsSql = [
      `${qi('Id Key')} int8`,
      `${qi('名前 key')} text`,
      ...columns.map((c) => `${qi(c.name)} ${TYPES[c.type].sql}`),
      `${qi('sg dropped')} text`,
      `${qi('generated')} int8 generated always as (${qi('Id Key')} * 2) stored`,
      `primary key (${qi('Id Key')}, ${qi('名前 key')})`,
    ].join(', ');
    await stack.sql(`
      create table ${qname(table)} (${columnsSql});
      insert into ${qname(table)} (${qi('Id Key')}, ${qi('名前 key')}, ${qi('sg dropped')}) values (100, 'before the drop', 'gone');
      alter table ${qname(table)} drop column ${qi('sg dropped')};
      grant select on ${qname(table)} to anon;
      select realtime.enable(${ql(qname(table))});`);
    const extraKey = (id) => ({ '名前 key': ql(`${rng.pick(AWKWARD_TEXT)}#${id}`) });
    const ops = lifeOps(rng, { key: 'Id Key', columns, extraKey });
    ops.splice(1, 0, { update: { set: randomRow(rng, columns.slice(0, 6)), where: whereIn('Id Key', [100]) } });
    await checkRecords('awkward table', [{ ...table, ops, describe: `${columns.length + 3} columns, every type` }]);
  });

  test('one table with every identifier of the extension\'s SQL, every keyword and awkward name as columns at once', async () => {
    const rng = rngFor('everything');
    const typeKeys = Object.keys(TYPES);
    const names = [...new Set([...IDENTIFIERS, ...KEYWORDS, ...AWKWARD_NAMES])].filter((n) => n !== 'sg id');
    const columns = names.map((name, i) => ({ name, type: typeKeys[(i * 7) % typeKeys.length] }));
    const table = { schema: 'sg_all', table: 'n', pk: ['sg id'] };
    await stack.sql(tableSql(table, [`${qi('sg id')} int8 primary key`, ...columns.map((c) => `${qi(c.name)} ${TYPES[c.type].sql}`)].join(', ')));
    await checkRecords('every name at once', [{ ...table, ops: lifeOps(rng, { key: 'sg id', columns, long: false }), describe: `${columns.length + 1} columns` }]);
  });

  /** Random names from awkward characters; never one of the extension's identifiers. */
  function randomName(rng) {
    const alphabet = ['a', 'Z', 'q', '_', ' ', '"', "'", '\\', '.', ',', '=', '(', ')', '%', '$', 'é', '名', '😀', '\t', '-', '/', '*', ';', '1'];
    for (;;) {
      let name = '';
      const len = rng.int(1, 14);
      for (let i = 0; i < len; i += 1) name += rng.pick(alphabet);
      if (Buffer.byteLength(name) <= 63 && !IDENTIFIERS.includes(name.toLowerCase())) return name;
    }
  }

  /** `count` random tables: names from `pool()`, random types, one or two key columns, sometimes a dropped and a generated column. */
  async function generatedTables(rng, count, pool) {
    const specs = [];
    const typeKeys = Object.keys(TYPES);
    const used = new Set();
    for (let n = 0; n < count; n += 1) {
      const schema = rng.pick(['sg_gen', 'Mixed Schema']);
      let tableName = pool();
      while (used.has(`${schema}.${tableName}`)) tableName = pool();
      used.add(`${schema}.${tableName}`);
      const names = new Set();
      const width = rng.int(4, 14);
      while (names.size < width) names.add(pool());
      const [key, second, ...rest] = [...names];
      const secondType = rng.pick(['text', 'uuid', 'int4']);
      const pk = rng.chance(0.35) ? [key, second] : [key];
      const columns = rest.map((name) => ({ name, type: rng.pick(typeKeys) }));
      if (pk.length === 1) columns.unshift({ name: second, type: secondType });
      const generated = rng.chance(0.4) ? columns.pop() : null;
      const dropped = rng.chance(0.4);
      const table = { schema, table: tableName, pk };
      const columnsSql = [
        `${qi(key)} int8`,
        ...(pk.length === 2 ? [`${qi(second)} ${TYPES[secondType].sql}`] : []),
        ...columns.map((c) => `${qi(c.name)} ${TYPES[c.type].sql}`),
        ...(generated ? [`${qi(generated.name)} int8 generated always as (${qi(key)} * 3) stored`] : []),
        ...(dropped ? [`${qi('sg dropped')} text`] : []),
        `primary key (${pk.map(qi).join(', ')})`,
      ].join(', ');
      await stack.sql(`${tableSql(table, columnsSql)}; ${dropped ? `alter table ${qname(table)} drop column ${qi('sg dropped')}` : ''}`);
      const extraKey = pk.length === 2 ? (id) => ({ [second]: secondType === 'text' ? ql(`${rng.pick(AWKWARD_TEXT)}#${id}`) : secondType === 'int4' ? String(id * 7) : TYPES.uuid.gen(rng) }) : undefined;
      const describe = `${pk.length + columns.length + (generated ? 1 : 0)} columns: ${preview([...pk, ...columns.map((c) => `${c.name} ${c.type}`), ...(generated ? [`${generated.name} generated`] : []), ...(dropped ? ['(dropped)'] : [])], 400)}`;
      specs.push({ ...table, ops: lifeOps(rng, { key, columns, extraKey }), describe });
    }
    return specs;
  }

  test('generated tables, awkward names without the extension\'s identifiers', async () => {
    const rng = rngFor('generated plain');
    const pool = () => (rng.chance(0.5) ? rng.pick([...KEYWORDS, ...AWKWARD_NAMES]) : randomName(rng));
    await checkRecords('generated tables', await generatedTables(rng, 8, pool));
  });

  test('generated tables whose names include the extension\'s identifiers', async () => {
    const rng = rngFor('generated identifiers');
    const pool = () => (rng.chance(0.6) ? rng.pick(IDENTIFIERS) : rng.pick([...KEYWORDS, ...AWKWARD_NAMES]));
    await checkRecords('generated tables with identifiers', await generatedTables(rng, 8, pool));
  });

  test('records do not depend on the writer\'s session settings (TimeZone, DateStyle, IntervalStyle, extra_float_digits, bytea_output)', async () => {
    const rng = rngFor('settings');
    const table = { schema: 'Mixed Schema', table: 'Settings', pk: ['sg id'] };
    const types = ['timestamptz', 'timestamp', 'date', 'timetz', 'interval', 'float8', 'float4', 'bytea', 'tstzrange', 'pair', 'text_array', 'jsonb'];
    const columns = types.map((type) => ({ name: `${type} col`, type }));
    await stack.sql(tableSql(table, [`${qi('sg id')} int8 primary key`, ...columns.map((c) => `${qi(c.name)} ${TYPES[c.type].sql}`)].join(', ')));
    const settings = [
      `set local timezone = 'America/St_Johns'`,
      `set local datestyle = 'SQL, DMY'`,
      `set local intervalstyle = 'sql_standard'`,
      'set local extra_float_digits = -3',
      `set local bytea_output = 'escape'`,
    ];
    await checkRecords('writer settings', [{ ...table, settings, ops: lifeOps(rng, { key: 'sg id', columns }) }]);
  });

  test('numbers keep every digit on the wire (numeric, int8, jsonb numbers)', async () => {
    const table = { schema: 'sg_wire', table: 'Digits', pk: ['sg id'] };
    await stack.sql(tableSql(table, `${qi('sg id')} int8 primary key, big numeric, scaled numeric(60, 20), i8 int8, doc jsonb, f8 float8, arr numeric[]`));
    const listener = new Listener();
    const sink = { binding: { event: '*', schema: table.schema, table: table.table } };
    await listener.subscribe([sink]);
    const [inserted] = await applyOps(table, [
      {
        insert: [
          {
            'sg id': '9007199254740993',
            big: `'12345678901234567890123456789012345678.123456789012345678901234567890'`,
            scaled: `'-0.00000000000000000001'`,
            i8: '9223372036854775807',
            doc: `'{"big": 123456789012345678901234567890, "small": 1e-40, "pi": 3.14159265358979323846264338327950288}'`,
            f8: `'0.30000000000000004'`,
            arr: `'{1.10, 98765432109876543210.0123456789}'`,
          },
        ],
      },
    ]);
    await listener.settle();
    const problems = new Map();
    const [frame] = sink.frames;
    const expected = inserted.events[0].after;
    problems.set('INSERT record on the wire', frame ? exactDifferences(expected, frame.record) : ['not delivered']);
    await listener.close();
    report('digits', problems, 1);
  });
});

describe('capture and the writer\'s session', () => {
  test('a captured statement leaves the writer\'s settings, role and claims as they were', async () => {
    const table = { schema: 'sg_wire', table: 'Session', pk: ['sg id'] };
    await stack.sql(tableSql(table, `${qi('sg id')} int8 primary key, v text`, { policy: `v is distinct from 'hidden'` }));
    const listener = new Listener();
    const sink = { binding: { event: '*', schema: table.schema, table: table.table } };
    await listener.subscribe([sink]);
    const s = await stack.session();
    const show = async () => (await s.query(`select current_setting('search_path') as search_path, current_setting('TimeZone') as timezone,
        current_setting('DateStyle') as datestyle, current_setting('IntervalStyle') as intervalstyle,
        current_setting('extra_float_digits') as extra_float_digits, current_setting('bytea_output') as bytea_output,
        current_setting('request.jwt.claims', true) as claims, current_setting('request.jwt.claim.sub', true) as sub,
        current_user::text as current_user, session_user::text as session_user`)).rows[0];
    await s.query(`set search_path = "$user", public, sg_types; set timezone = 'Asia/Kathmandu'; set datestyle = 'German';
      set intervalstyle = 'iso_8601'; set extra_float_digits = 0; set bytea_output = 'escape';
      set request.jwt.claims = '{"role": "writer", "sub": "w1"}'; set request.jwt.claim.sub = 'w1'`);
    const expected = await show();
    const target = qname(table);
    const seen = {};
    await s.query(`insert into ${target} values (1, 'a')`);
    seen['after an autocommitted INSERT'] = await show();
    await s.query('begin');
    await s.query(`update ${target} set v = 'b' where ${qi('sg id')} = 1`);
    seen['after an UPDATE, same transaction'] = await show();
    const [, multi] = await s.query(`delete from ${target}; select current_setting('search_path') as search_path`);
    seen['search_path in the statement after a DELETE'] = { ...expected, search_path: multi.rows[0].search_path };
    await s.query('commit');
    seen['after COMMIT'] = await show();
    await listener.settle();
    const problems = new Map();
    for (const [when, got] of Object.entries(seen)) {
      const changed = Object.keys(expected).filter((k) => got[k] !== expected[k]).map((k) => `${k}: ${preview(expected[k])} became ${preview(got[k])}`);
      problems.set(when, changed);
    }
    problems.set('capture ran', sink.payloads.length === 3 ? [] : [`${sink.payloads.length} events delivered, expected 3`]);
    await listener.close();
    report('writer session', problems, problems.size);
  });
});

// ---------------------------------------------------------------------------------------------
// finding 13: REPLICA IDENTITY FULL

describe('finding 13: REPLICA IDENTITY FULL', () => {
  test('old is the whole previous row (selectable columns only), never a hidden row\'s', async () => {
    const rng = rngFor('replica full');
    const plainTable = { schema: 'sg_full', table: 'Plain Full', pk: ['sg id'] };
    const cols = ['status text', `${qi('CamelCase')} jsonb`, `${qi('名前')} timestamptz`, `${qi('select')} numeric`, 'tags text[]'];
    await stack.sql(tableSql(plainTable, `${qi('sg id')} int8 primary key, ${cols.join(', ')}`, { replicaFull: true }));
    const guarded = { schema: 'sg_full', table: 'Guarded Full', pk: ['sg id'] };
    await stack.sql(`
      ${tableSql(guarded, `${qi('sg id')} int8 primary key, status text, secret text, ${qi('CamelCase')} jsonb, ${qi('名前')} timestamptz`, {
        replicaFull: true,
        policy: `status is distinct from 'hidden'`,
        grant: `select (${qi('sg id')}, status, ${qi('CamelCase')}, ${qi('名前')})`,
      })}`);
    const listener = new Listener();
    const plainSink = { binding: { event: '*', schema: plainTable.schema, table: plainTable.table } };
    const guardedSink = { binding: { event: '*', schema: guarded.schema, table: guarded.table } };
    await listener.subscribe([plainSink, guardedSink]);
    const plainColumns = [
      { name: 'status', type: 'text' }, { name: 'CamelCase', type: 'jsonb' }, { name: '名前', type: 'timestamptz' },
      { name: 'select', type: 'numeric' }, { name: 'tags', type: 'text_array' },
    ];
    const plainOps = lifeOps(rng, { key: 'sg id', columns: plainColumns });
    const plainWritten = await applyOps(plainTable, plainOps);
    const stamp = `'2026-05-01 10:00:00+02'`;
    const guardedWritten = await applyOps(guarded, [
      { insert: [
        { 'sg id': '1', status: `'draft'`, secret: `'s1'`, CamelCase: `'{"v": 1}'`, 名前: stamp },
        { 'sg id': '2', status: `'hidden'`, secret: `'s2'`, CamelCase: `'{"v": 2}'`, 名前: stamp },
        { 'sg id': '3', status: `'draft'`, secret: `'s3'`, CamelCase: `'{"v": 3}'`, 名前: stamp },
      ] },
      { update: { set: { status: `'published'`, secret: `'s1b'` }, where: whereIn('sg id', [1]) } },
      { update: { set: { status: `'draft'`, CamelCase: `'{"v": "revealed"}'` }, where: whereIn('sg id', [2]) } },
      { update: { set: { status: `'hidden'` }, where: whereIn('sg id', [3]) } },
      { delete: { where: whereIn('sg id', [1]) } },
    ]);
    await listener.settle();
    const problems = new Map();
    problems.set(qname(plainTable), compareSink('', plainSink, expectedFor(plainWritten), { ...plainTable, columns: await catalogColumns(plainTable), old: 'full' }));
    // Row 2 was hidden before its UPDATE: its old version must not reach anon (at most its key).
    const visible = (img) => img.status !== 'hidden';
    const groups = expectedFor(guardedWritten, { visible });
    const hiddenBefore = groups.map((g) => g.filter((e) => e.type === 'UPDATE' && !visible(plain(e.before))));
    const fullGroups = groups.map((g, i) => g.filter((e) => !hiddenBefore[i].includes(e)));
    const guardedMeta = { ...guarded, columns: await catalogColumns(guarded), old: 'full' };
    const revealed = guardedSink.payloads.filter((p) => p.eventType === 'UPDATE' && p.new?.['sg id'] === 2);
    const guardedProblems = [];
    if (revealed.length !== 1) guardedProblems.push(`UPDATE of row 2 (hidden → visible): ${revealed.length} deliveries`);
    for (const p of revealed) {
      const leaked = Object.keys(p.old ?? {}).filter((k) => k !== 'sg id');
      if (leaked.length) guardedProblems.push(`UPDATE of row 2: old shows ${preview(leaked)} of the version anon's policy hid`);
    }
    const rest = { ...guardedSink, payloads: guardedSink.payloads.filter((p) => !revealed.includes(p)), frames: guardedSink.frames.filter((f, i) => !revealed.includes(guardedSink.payloads[i])) };
    guardedProblems.push(...compareSink('', rest, fullGroups, guardedMeta));
    problems.set(`${qname(guarded)} (RLS, secret not granted)`, guardedProblems);
    await listener.close();
    report('replica identity full', problems, 2);
  });
});

// ---------------------------------------------------------------------------------------------
// finding 11: filters match exactly what PostgreSQL's operators match

const TEXT_OPS = ['eq', 'neq', 'lt', 'lte', 'gt', 'gte', 'in', 'like', 'ilike', 'match', 'imatch', 'isdistinct', 'is'];
const ORDERED_OPS = ['eq', 'neq', 'lt', 'lte', 'gt', 'gte', 'in', 'isdistinct', 'is'];
const REGEXES = ['^a', 'c$', 'A', '^$', '名', '[,"]', '\\\\', '^ ', ' $', 'ß|ẞ', '(a|b)c?', '.', 'x"y', '^\\(p\\)$'];

/** Value domains per column type: `values` appear in rows, `absent` only in filters. */
const DOMAINS = {
  text: { sql: 'text', ops: TEXT_OPS, values: ['', 'a', 'A', 'abc', 'Abc', 'a,b', 'x"y', 'back\\slash', '(p)', ' lead', 'trail ', '名前', 'ß', '😀', 'a%b', 'a_b', 'null', 'NULL', 'true'], absent: ['zzz', 'ABC ', '名'] },
  short: { sql: 'varchar(12)', ops: TEXT_OPS, values: ['名前', '名', 'x', '😀 emoji', 'Ωμέγα', 'ωμέγα'], absent: ['y'] },
  int4: { sql: 'int4', ops: ORDERED_OPS, values: ['-2', '-1', '0', '1', '2', '3'], absent: ['99', '-2147483648'] },
  int8: { sql: 'int8', ops: ORDERED_OPS, values: ['9007199254740993', '9007199254740992', '-1', '0'], absent: ['9223372036854775807'] },
  numeric: { sql: 'numeric', ops: ORDERED_OPS, values: ['1.5', '1.50', '2', '-0.5', '0', '1e3', 'NaN', '1000'], absent: ['0.000', '15e-1', '7'] },
  float8: { sql: 'float8', ops: ORDERED_OPS, values: ['0.1', '-0', '0', '1.5', 'NaN', 'Infinity', '-Infinity'], absent: ['0.10000000000000001', '2'] },
  bool: { sql: 'boolean', ops: ['eq', 'neq', 'lt', 'gt', 'in', 'isdistinct', 'is'], values: ['true', 'false'], absent: [] },
  uuid: { sql: 'uuid', ops: ORDERED_OPS, values: ['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A12', '00000000-0000-0000-0000-000000000000'], absent: ['A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', 'ffffffff-ffff-ffff-ffff-ffffffffffff'] },
  timestamptz: { sql: 'timestamptz', ops: ORDERED_OPS, values: ['2026-01-01T00:00:00Z', '2026-01-01T05:45:00+05:45', '2026-01-01 00:00:01', '2025-12-31T23:59:59.999999Z', 'infinity'], absent: ['2026-01-01 05:45:00', '2025-12-31T19:00:00-05:00'] },
  date: { sql: 'date', ops: ORDERED_OPS, values: ['2026-01-01', '2026-01-02', 'infinity'], absent: ['20260101', '-infinity'] },
  mood: { sql: 'sg_types."Mood"', ops: ORDERED_OPS, values: ['happy', 'sad', "it's", '😀 glad', 'with space'], absent: [] },
  jsonb: { sql: 'jsonb', ops: ['eq', 'neq', 'lt', 'gt', 'in', 'isdistinct', 'is'], values: ['{"a":1}', '{"a":1.0}', '[1,2]', '"s"', 'null', '1', '{}'], absent: ['{"a": 1.00}', '[2, 1]'] },
  text_array: { sql: 'text[]', ops: ['eq', 'neq', 'lt', 'gt', 'in', 'isdistinct', 'is'], values: ['{a,b}', '{}', '{NULL}', '{"a,b"}', '{b}'], absent: ['{"a","b"}'] },
};

/** One random condition on `col` ({name, domain}): {column, op, negate, value | values | keyword}. */
function randomCondition(rng, col, op) {
  const d = DOMAINS[col.domain];
  const pickValue = () => (d.absent.length && rng.chance(0.2) ? rng.pick(d.absent) : rng.pick(d.values));
  const cond = { column: col.name, op, negate: rng.chance(0.15) };
  if (op === 'is') cond.keyword = col.domain === 'bool' ? rng.pick(['null', 'true', 'false', 'unknown', 'NULL', 'True']) : rng.pick(['null', 'NULL']);
  else if (op === 'in') cond.values = Array.from({ length: rng.int(1, 4) }, () => (rng.chance(0.15) ? null : pickValue()));
  else if (op === 'like' || op === 'ilike') {
    const v = [...(rng.pick(d.values) || 'a')]; // code points: a pattern never splits a surrogate pair
    const cut = rng.int(0, v.length);
    const part = (a, b) => v.slice(a, b).join('');
    cond.value = rng.pick([part(0), `%${part(cut)}`, `${part(0, cut)}%`, `%${part(cut, cut + 1)}%`, `_${part(1)}`, '%', '']);
  } else if (op === 'match' || op === 'imatch') cond.value = rng.pick(REGEXES);
  else cond.value = pickValue();
  return cond;
}

/** The filter text realtime-js sends for `conds` (all must hold). */
function filterText(rng, conds) {
  return conds
    .map((c) => {
      const value = c.op === 'is' ? c.keyword : c.op === 'in' ? filterList(c.values, rng) : filterValue(c.value, rng);
      return `${filterColumn(c.column, rng)}=${c.negate ? 'not.' : ''}${c.op}.${value}`;
    })
    .join(',');
}

/** The same conditions as PostgreSQL's own operators, values as parameters typed by the column. */
function conditionSql(conds, params) {
  const p = (v) => `$${params.push(v)}`;
  return conds
    .map((c) => {
      const col = qi(c.column);
      const sql = {
        eq: () => `${col} = ${p(c.value)}`,
        neq: () => `${col} <> ${p(c.value)}`,
        lt: () => `${col} < ${p(c.value)}`,
        lte: () => `${col} <= ${p(c.value)}`,
        gt: () => `${col} > ${p(c.value)}`,
        gte: () => `${col} >= ${p(c.value)}`,
        like: () => `${col} ~~ ${p(c.value)}`,
        ilike: () => `${col} ~~* ${p(c.value)}`,
        match: () => `${col} ~ ${p(c.value)}`,
        imatch: () => `${col} ~* ${p(c.value)}`,
        in: () => `${col} in (${c.values.map(p).join(', ')})`,
        isdistinct: () => `${col} is distinct from ${p(c.value)}`,
        is: () => `${col} is ${c.keyword.toLowerCase()}`,
      }[c.op]();
      return c.negate ? `not (${sql})` : `(${sql})`;
    })
    .join(' and ');
}

/**
 * Creates `table` with `columns` ({name, domain}), subscribes one '*' binding per generated
 * filter (every op of every column, plus pairs), then inserts `rows` random rows, updates every
 * row (an unfiltered column) and deletes every row. Each binding must receive exactly the ids
 * PostgreSQL selects with the same conditions, for each of the three events.
 */
async function checkFilters(title, rng, table, columns, { rows = 30, opsPerColumn = Infinity, pairs = 12, everyValue = false } = {}) {
  const columnsSql = [`${qi('sg id')} int8 primary key`, `${qi('sg touched')} int4 not null default 0`, ...columns.map((c) => `${qi(c.name)} ${DOMAINS[c.domain].sql}`)].join(', ');
  await stack.sql(tableSql(table, columnsSql));
  const condSets = [];
  for (const col of columns) {
    const { ops, values, absent } = DOMAINS[col.domain];
    for (const op of opsPerColumn >= ops.length ? ops : rng.sample(ops, opsPerColumn)) {
      if (!everyValue || op === 'is') condSets.push([randomCondition(rng, col, op)]);
      else if (op === 'in') condSets.push(...values.map((v, i) => [{ column: col.name, op, negate: false, values: [v, values[(i + 1) % values.length]] }]));
      else condSets.push(...[...values, ...absent].map((value) => [{ column: col.name, op, negate: false, value }]));
    }
  }
  for (let i = 0; i < pairs; i += 1) {
    const [a, b] = rng.sample(columns, 2);
    condSets.push([randomCondition(rng, a, rng.pick(DOMAINS[a.domain].ops)), randomCondition(rng, b, rng.pick(DOMAINS[b.domain].ops))]);
  }
  // Expected ids first: a condition PostgreSQL cannot evaluate is a bug of this test.
  const seen = new Set();
  const sinks = [];
  for (const conds of condSets) {
    const filter = filterText(rng, conds);
    if (seen.has(filter)) continue;
    seen.add(filter);
    sinks.push({ conds, filter, binding: { event: '*', schema: table.schema, table: table.table, filter } });
  }
  const tableRows = Array.from({ length: rows }, (_, i) => ({
    [qi('sg id')]: String(i + 1),
    ...Object.fromEntries(columns.map((c) => [qi(c.name), rng.chance(0.15) ? 'null' : `${ql(rng.pick(DOMAINS[c.domain].values))}::${DOMAINS[c.domain].sql}`])),
  }));
  const listener = new Listener();
  await listener.subscribe(sinks);
  const target = qname(table);
  const insert = (part) => `insert into ${target} (${Object.keys(part[0]).join(', ')}) values ${part.map((r) => `(${Object.values(r).join(', ')})`).join(', ')}`;
  // One transaction per statement: what a statement means never depends on what capture did
  // to the transaction before it.
  const w = await stack.session();
  await w.query(`set timezone = 'Asia/Kathmandu'`);
  for (const statement of [insert(tableRows.slice(0, rows / 2)), insert(tableRows.slice(rows / 2)),
    `update ${target} set ${qi('sg touched')} = ${qi('sg touched')} + 1`, `delete from ${target}`]) await w.query(statement);
  await w.end();
  stack.sessions.delete(w);
  await listener.settle();
  // The table is empty now: recreate the rows in a rolled-back transaction, without firing
  // capture, and ask PostgreSQL (default search_path, the extension's rendering settings).
  const problems = new Map();
  const check = await stack.session();
  await check.query(`begin; set local session_replication_role = replica; set local timezone = 'Asia/Kathmandu';
    ${insert(tableRows.slice(0, rows / 2))}; ${insert(tableRows.slice(rows / 2))}; ${RENDERING.join('; ')}`);
  try {
    for (const s of sinks) {
      const params = [];
      const where = conditionSql(s.conds, params);
      const res = await check.query(`select ${qi('sg id')}::text as id from ${target} where ${where} order by 1`, params).catch((e) => {
        throw new Error(`PostgreSQL cannot evaluate ${where} with ${preview(params)}: ${e.message}`);
      });
      const want = res.rows.map((r) => Number(r.id)).sort((a, b) => a - b);
      if (s.refused) {
        problems.set(s.filter, [`subscription refused: ${s.refused}`]);
        continue;
      }
      const ps = [];
      for (const type of ['INSERT', 'UPDATE', 'DELETE']) {
        const got = s.payloads.filter((p) => p.eventType === type).map((p) => (type === 'DELETE' ? p.old : p.new)?.['sg id']).sort((a, b) => a - b);
        if (!isDeepStrictEqual(got, want)) {
          const missing = want.filter((id) => !got.includes(id));
          const extra = got.filter((id) => !want.includes(id));
          ps.push(`${type}: missing ${preview(missing)} extra ${preview(extra)} (PostgreSQL: ${where} ${preview(params, 200)})`);
        }
      }
      problems.set(s.filter, ps);
    }
  } finally {
    await check.query('rollback');
  }
  await listener.close();
  report(title, problems, sinks.length);
}

describe('finding 11: filters match exactly the rows PostgreSQL\'s operators match', () => {
  test('every operator on keyword, mixed-case, quoted, Unicode and 63-byte column names', async () => {
    const rng = rngFor('filters awkward');
    const columns = [
      { name: 'select', domain: 'text' },
      { name: 'CamelCase', domain: 'int4' },
      { name: '名前', domain: 'short' },
      { name: 'with space', domain: 'numeric' },
      { name: 'a"b', domain: 'float8' },
      { name: 'user', domain: 'uuid' },
      { name: 'from', domain: 'bool' },
      { name: 'table', domain: 'timestamptz' },
      { name: '😀', domain: 'date' },
      { name: 'order', domain: 'mood' },
      { name: 'a,b=c', domain: 'int8' },
      { name: 'json b', domain: 'jsonb' },
      { name: ' leading space', domain: 'text_array' },
      { name: LONG_UNICODE_NAME, domain: 'text' },
    ];
    await checkFilters('filters on awkward names', rng, { schema: 'Mixed Schema', table: 'Filter Me' }, columns);
  });

  test('operators on columns named like the extension\'s aliases (n, x, o, rec, ord, …)', async () => {
    const rng = rngFor('filters aliases');
    const domains = Object.keys(DOMAINS);
    const columns = FIXED_ALIASES.map((name, i) => ({ name, domain: domains[i % domains.length] }));
    await checkFilters('filters on alias names', rng, { schema: 'sg_filters', table: 'rec' }, columns, { opsPerColumn: 3, pairs: 8 });
  });

  test('equality as the type defines it: interval, a nondeterministic collation, numeric scale, char padding', async (t) => {
    const rng = rngFor('filters equality');
    DOMAINS.interval = { sql: 'interval', ops: ['eq', 'neq', 'in', 'lt', 'gt', 'isdistinct'], values: ['1 day', '24 hours', '1 mon', '30 days', '00:00:00', '0'], absent: ['86400 seconds'] };
    DOMAINS.bpchar = { sql: 'char(3)', ops: ['eq', 'neq', 'in', 'lt', 'isdistinct'], values: ['a', 'a  ', 'b'], absent: ['a '] };
    DOMAINS.scale = { sql: 'numeric', ops: ['eq', 'neq', 'in', 'isdistinct'], values: ['1.0', '1.00', '1', '-0.0'], absent: ['1.000', '0'] };
    const columns = [
      { name: 'interval', domain: 'interval' },
      { name: 'char', domain: 'bpchar' },
      { name: 'scale', domain: 'scale' },
    ];
    const [{ icu }] = await stack.sql(`select exists (select from pg_collation where collprovider = 'i') as icu`);
    if (icu) {
      await stack.sql(`create collation sg_types.ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)`);
      DOMAINS.ci = { sql: 'text collate sg_types.ci', ops: ['eq', 'neq', 'in', 'lt', 'isdistinct'], values: ['Ab', 'ab', 'AB', 'b'], absent: ['aB'] };
      columns.push({ name: 'ci text', domain: 'ci' });
    } else {
      t.diagnostic('no ICU collations: the nondeterministic collation case skipped');
    }
    await checkFilters('filters with type-defined equality', rng, { schema: 'sg_filters', table: 'Equality' }, columns, { rows: 16, pairs: 0, everyValue: true });
  });

  test('operators of an extension\'s type, installed in public as users do (citext)', async (t) => {
    const [{ citext }] = await stack.sql(`select exists (select from pg_available_extensions where name = 'citext') as citext`);
    if (!citext) {
      t.skip('citext is not available');
      return;
    }
    await stack.sql('create extension if not exists citext schema public');
    DOMAINS.citext = { sql: 'public.citext', ops: ['eq', 'neq', 'in', 'lt', 'isdistinct', 'like'], values: ['ABC', 'abc', 'Abc', 'x'], absent: ['aBc'] };
    await checkFilters('filters on citext', rngFor('filters citext'), { schema: 'sg_filters', table: 'Citext' }, [{ name: 'citext', domain: 'citext' }], { rows: 12, pairs: 0, everyValue: true });
  });
});
