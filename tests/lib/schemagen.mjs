// Generated schemas for the Postgres Changes suites (tests/security/changes_schema.test.mjs):
// awkward column and table names, column types with awkward values, a seeded PRNG, the
// identifiers the extension's own SQL uses, and JSON read with its numbers' source text.
//
// Invariants:
// - Every name reaches SQL through qi() (a quoted identifier) and every value through ql() (a
//   standard-conforming string literal) or as a query parameter: generated names may be SQL
//   keywords, contain quotes, spaces, format specifiers or any non-NUL Unicode.
// - Everything random comes from one Rng: the same seed builds the same tables, rows and filters.
// - extensionIdentifiers() reads the extension's source at run time, so an alias the capture
//   code introduces tomorrow is a column name of the suite tomorrow.
import fs from 'node:fs';
import path from 'node:path';

// ---------------------------------------------------------------------------------------------
// seeded randomness

/** mulberry32: small, fast, and the same sequence for the same seed on every machine. */
export class Rng {
  constructor(seed) {
    this.seed = seed >>> 0;
    this.state = this.seed;
  }

  next() {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  int(lo, hi) {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }

  pick(items) {
    return items[Math.floor(this.next() * items.length)];
  }

  chance(p) {
    return this.next() < p;
  }

  /** `n` distinct items of `items` (all of them if n is larger), in random order. */
  sample(items, n) {
    const copy = [...items];
    for (let i = copy.length - 1; i > 0; i -= 1) {
      const j = Math.floor(this.next() * (i + 1));
      [copy[i], copy[j]] = [copy[j], copy[i]];
    }
    return copy.slice(0, n);
  }

  hex(bytes) {
    let s = '';
    for (let i = 0; i < bytes; i += 1) s += this.int(0, 255).toString(16).padStart(2, '0');
    return s;
  }
}

/** The suite's seed: SCHEMAGEN_SEED when set (to reproduce a failure), else a fresh one. */
export function suiteSeed() {
  const fromEnv = process.env.SCHEMAGEN_SEED;
  return fromEnv ? Number(fromEnv) >>> 0 : Math.floor(Math.random() * 2 ** 32) >>> 0;
}

// ---------------------------------------------------------------------------------------------
// quoting

/** A quoted identifier: any non-NUL name, keywords and quotes included. */
export const qi = (name) => `"${String(name).replace(/"/g, '""')}"`;

/** A standard-conforming string literal (backslashes are literal characters). */
export const ql = (text) => `'${String(text).replace(/'/g, "''")}'`;

/** `schema.table` as SQL. */
export const qname = ({ schema, table }) => `${qi(schema)}.${qi(table)}`;

// ---------------------------------------------------------------------------------------------
// names

/** Aliases and names the capture code uses or used (some appear only in format! templates). */
export const FIXED_ALIASES = [
  'n', 'x', 'o', 'r', 'k', 't', 's', 'p', 'c', 'e', 'v', 'w', 'm', 'q',
  'ord', 'rec', 'hit', 'k0', 'k1', 'k2', 'v0', 'v1', 'v2', 'cols', 'col', 'bounds', 'sub',
  'realtime_new', 'realtime_old', 'realtime_row', 'realtime_before', 'realtime_after',
  'id', 'sidecar', 'binding', 'entity', 'action_filter', 'filters', 'claims', 'claims_role',
  'selected_columns', 'eq_column', 'eq_value', 'created_at',
];

/** Keywords, reserved and not, that a column may be called when quoted. */
export const KEYWORDS = [
  'select', 'order', 'user', 'from', 'table', 'where', 'group', 'limit', 'offset', 'null', 'true',
  'false', 'default', 'primary', 'check', 'column', 'and', 'or', 'not', 'all', 'any', 'array',
  'case', 'end', 'as', 'on', 'in', 'is', 'like', 'union', 'with', 'lateral', 'row', 'values',
  'current_user', 'session_user', 'returning', 'operator', 'cast',
];

/** Exactly 63 bytes (NAMEDATALEN - 1): the longest name PostgreSQL keeps. */
export const LONG_ASCII_NAME = `long_${'abcdefghij'.repeat(5)}_63_bytes`.padEnd(63, 'z').slice(0, 63);
/** 21 three-byte characters: 63 bytes of UTF-8. */
export const LONG_UNICODE_NAME = '名'.repeat(21);

/** Names needing quotes for other reasons than being keywords. */
export const AWKWARD_NAMES = [
  'CamelCase', 'UPPER', 'with space', ' leading space', 'trailing space ', 'a"b', '"', "a'b",
  'back\\slash', 'dot.ted', 'com,ma', 'eq=uals', '(paren)', '名前', 'ñandú', 'Ωμέγα', 'עברית',
  '😀', 'emoji 🎉 col', 'tab\there', '%I', '%s', '%L %1$s', '$1', '$user', '-- comment',
  '/* c */', "'); drop table x; --", '?', LONG_ASCII_NAME, LONG_UNICODE_NAME,
];

/**
 * Every identifier-like word of the extension's SQL: all of sql/changes.sql (comments dropped)
 * and the string literals of extension/src/*.rs that look like SQL, lowercased, plus a
 * `name{i}` template's first three instances (`k{i}` gives k0, k1, k2) and FIXED_ALIASES.
 * Sorted, so a seed's choices do not depend on the order files are read in.
 */
export function extensionIdentifiers(repo) {
  const words = new Set(FIXED_ALIASES);
  const add = (text) => {
    for (const w of text.match(/[A-Za-z_][A-Za-z0-9_$]*/g) ?? []) words.add(w.toLowerCase());
    for (const [, stem] of text.matchAll(/([A-Za-z_][A-Za-z0-9_]*)\{[a-z_]+\}/g)) {
      for (let i = 0; i < 3; i += 1) words.add(`${stem.toLowerCase()}${i}`);
    }
  };
  const sqlDir = path.join(repo, 'sql');
  const changesSql = path.join(sqlDir, 'changes.sql');
  if (fs.existsSync(changesSql)) add(fs.readFileSync(changesSql, 'utf8').replace(/--[^\n]*/g, ''));
  const srcDir = path.join(repo, 'extension/src');
  const looksLikeSql = /\b(select|from|where|join|unnest|lateral|returning|operator|cast|jsonb|regclass|order by|limit|offset)\b/i;
  for (const file of fs.readdirSync(srcDir).filter((f) => f.endsWith('.rs')).sort()) {
    const src = fs.readFileSync(path.join(srcDir, file), 'utf8').replace(/^\s*\/\/[^\n]*/gm, '');
    for (const literal of src.match(/"(?:[^"\\]|\\.)*"/g) ?? []) {
      if (looksLikeSql.test(literal)) add(literal.slice(1, -1).replace(/\\n/g, ' '));
    }
  }
  return [...words].filter((w) => Buffer.byteLength(w) <= 63).sort();
}

// ---------------------------------------------------------------------------------------------
// types and values (SQL expressions, each carrying its own cast)

/** Type definitions the TYPES below rely on (run once per database). */
export const TYPE_SETUP_SQL = `
  create schema sg_types;
  create type sg_types."Mood" as enum ('happy', 'sad', 'it''s', '😀 glad', 'with space');
  create domain sg_types.posint as int4 check (value > 0);
  create type sg_types."Pair" as (a int4, "b c" text, "select" jsonb);
`;

const longText = (rng) => `${rng.pick(['x', 'é', '名', '😀', 'a"b\\'])}`.repeat(rng.int(20000, 40000));

/** Awkward text values: no NUL (text cannot hold one), everything else fair game. */
export const AWKWARD_TEXT = [
  '', ' ', 'plain', "it's", 'say "hi"', 'back\\slash \\n not a newline', 'tab\there', 'new\nline',
  'ünïcödé', '名前', '😀🎉', 'e\u0301 combining', '\u202eright-to-left', 'line\u2028sep',
  '{"looks": "like json"}', '[1, 2]', '123', '1e400', 'true', 'null', 'NULL', '%_like_%',
  "'; drop table x; --", '$1 %s %I', '\u0001\u001f control', '\\x00ff', '\uffff',
];

const textValue = (rng, { long = true } = {}) => ql(long && rng.chance(0.06) ? longText(rng) : rng.pick(AWKWARD_TEXT));

/**
 * Column types: `sql` is the type as written in CREATE TABLE, `gen(rng)` an SQL expression of
 * that type (never NULL: callers add NULLs; `{long: false}` keeps text short, for wide rows).
 * `pk`: usable as a primary key column.
 */
export const TYPES = {
  bool: { sql: 'boolean', gen: (r) => r.pick(['true', 'false']) },
  int2: { sql: 'int2', gen: (r) => `${ql(r.pick(['-32768', '0', '1', '32767']))}::int2` },
  int4: { sql: 'int4', gen: (r) => `${ql(r.pick(['-2147483648', '-1', '0', '7', '2147483647']))}::int4`, pk: true },
  int8: {
    sql: 'int8',
    gen: (r) => `${ql(r.pick(['-9223372036854775808', '9223372036854775807', '9007199254740993', '0', '42']))}::int8`,
    pk: true,
  },
  numeric: {
    sql: 'numeric',
    gen: (r) => `${ql(r.pick(['0', '1.50', '-0.000000000000000000000000000001', '12345678901234567890.123456789012345678901234567890', 'NaN', '1e-20', '100', 'Infinity']))}::numeric`,
  },
  numeric40: {
    sql: 'numeric(40, 10)',
    gen: (r) => `${ql(r.pick(['123456789012345678901234567890.0123456789', '-1.5', '0', '0.0000000001']))}::numeric(40, 10)`,
  },
  float4: { sql: 'float4', gen: (r) => `${ql(r.pick(['3.4028235e38', '1.1', '-0', 'NaN', '1e-45']))}::float4` },
  float8: {
    sql: 'float8',
    gen: (r) => `${ql(r.pick(['0.1', '-0', 'NaN', 'Infinity', '-Infinity', '1e308', '5e-324', '0.30000000000000004']))}::float8`,
  },
  text: { sql: 'text', gen: (r, opts) => `${textValue(r, opts)}::text`, pk: true },
  varchar: { sql: 'varchar(12)', gen: (r) => `${ql(r.pick(['', 'short', '名前😀', 'a"b\\c']))}::varchar(12)` },
  bpchar: { sql: 'char(5)', gen: (r) => `${ql(r.pick(['', 'ab', '名', 'abcde']))}::char(5)` },
  uuid: { sql: 'uuid', gen: (r) => `${ql(`${r.hex(4)}-${r.hex(2)}-${r.hex(2)}-${r.hex(2)}-${r.hex(6)}`.toUpperCase())}::uuid`, pk: true },
  timestamptz: {
    sql: 'timestamptz',
    gen: (r) => `${ql(r.pick(['2026-03-29 01:30:00+00', '1999-12-31 23:59:59.999999+05:45', 'infinity', '-infinity', '0044-03-15 12:00:00+00 BC', '2026-01-01 00:00:00', '2026-07-01 12:00:00.5-09:30']))}::timestamptz`,
  },
  timestamp: { sql: 'timestamp', gen: (r) => `${ql(r.pick(['2026-01-01 12:34:56.789', 'infinity', '1970-01-01 00:00:00']))}::timestamp` },
  date: { sql: 'date', gen: (r) => `${ql(r.pick(['2026-02-28', 'infinity', '0001-01-01 BC']))}::date` },
  time: { sql: 'time', gen: (r) => `${ql(r.pick(['23:59:59.999999', '00:00:00']))}::time` },
  timetz: { sql: 'timetz', gen: (r) => `${ql(r.pick(['12:00:00+05:45', '00:00:00-12']))}::timetz` },
  interval: { sql: 'interval', gen: (r) => `${ql(r.pick(['1 day 02:03:04', '-1 mon', '1 year 2 mons', '00:00:00.000001', '24 hours']))}::interval` },
  json: {
    sql: 'json',
    gen: (r) => `${ql(r.pick(['{"b": 1, "a": [1, 2, {"c": null}], "a": 2}', '"just a string"', '123.450', '[]', 'null', '"123"', '{"é": "\\u00e9\\n"}']))}::json`,
  },
  jsonb: {
    sql: 'jsonb',
    gen: (r) => `${ql(r.pick(['{"nested": {"é": ["x", 1.5, true, null]}, "k": "v"}', '"123"', '{"big": 123456789012345678901234567890}', '[]', '{}', '"true"', '{"q\\"uote": "back\\\\slash"}']))}::jsonb`,
  },
  bytea: { sql: 'bytea', gen: (r) => r.pick([`'\\x00ff10'::bytea`, `''::bytea`, `decode('68656c6c6f', 'hex')`, `'\\x5c22'::bytea`]) },
  text_array: {
    sql: 'text[]',
    gen: (r) => r.pick([`array['a', null, 'b,c', '"q"', 'back\\slash', '', 'NULL']::text[]`, `'{}'::text[]`, `array['名前', '😀']::text[]`]),
  },
  int4_array2: { sql: 'int4[]', gen: (r) => r.pick([`'{{1,2},{3,4}}'::int4[]`, `'{}'::int4[]`, `'[0:1]={7,8}'::int4[]`, `array[null, 1]::int4[]`]) },
  jsonb_array: { sql: 'jsonb[]', gen: () => `array['{"a": 1}'::jsonb, 'null'::jsonb, null]` },
  mood: { sql: 'sg_types."Mood"', gen: (r) => `${ql(r.pick(['happy', "it's", '😀 glad', 'with space']))}::sg_types."Mood"` },
  mood_array: { sql: 'sg_types."Mood"[]', gen: () => `array['sad', 'with space']::sg_types."Mood"[]` },
  posint: { sql: 'sg_types.posint', gen: (r) => `${r.pick(['1', '2147483647'])}::sg_types.posint` },
  pair: {
    sql: 'sg_types."Pair"',
    gen: (r) => r.pick([`row(1, 'x', '{"k": [1]}')::sg_types."Pair"`, `row(null, 'q"uote\\', null)::sg_types."Pair"`, `row(-5, '', '"s"')::sg_types."Pair"`]),
  },
  int4range: { sql: 'int4range', gen: (r) => `${ql(r.pick(['[1,10)', 'empty', '(,5]']))}::int4range` },
  tstzrange: { sql: 'tstzrange', gen: () => `'[2026-01-01 00:00+05:45, 2026-01-02 00:00+00)'::tstzrange` },
  point: { sql: 'point', gen: () => `'(1.5,-2)'::point` },
  inet: { sql: 'inet', gen: (r) => `${ql(r.pick(['192.168.0.1/24', '::1']))}::inet` },
  varbit: { sql: 'varbit', gen: () => `B'1010'::varbit` },
};

// ---------------------------------------------------------------------------------------------
// JSON with its numbers' source text

/** A JSON number as written: its source text. */
export class Num {
  constructor(src) {
    this.src = src;
  }
}

/** JSON.parse keeping every number's source text (a Num), so precision can be compared. */
export function parseExact(text) {
  return JSON.parse(text, (key, value, context) => (typeof value === 'number' ? new Num(context.source) : value));
}

/** A parseExact value with its numbers as JavaScript numbers: what JSON.parse would give. */
export function plain(v) {
  if (v instanceof Num) return Number(v.src);
  if (Array.isArray(v)) return v.map(plain);
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  return v;
}

/** A decimal number's text in a canonical form (sign, digits without padding zeros, exponent). */
export function canonicalDecimal(src) {
  const m = /^(-?)(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/.exec(src);
  if (!m) return src;
  const [, sign, int, frac = '', exp = '0'] = m;
  let digits = (int + frac).replace(/^0+/, '');
  let e = Number(exp) - frac.length;
  if (!digits) return '0';
  while (digits.endsWith('0')) {
    digits = digits.slice(0, -1);
    e += 1;
  }
  return `${sign}${digits}e${e}`;
}

/** Paths (`a.b[2]`) where two parseExact values differ, numbers compared as exact decimals. */
export function exactDifferences(a, b, at = '') {
  if (a instanceof Num || b instanceof Num) {
    const same = a instanceof Num && b instanceof Num && canonicalDecimal(a.src) === canonicalDecimal(b.src);
    return same ? [] : [`${at || '.'}: ${a instanceof Num ? a.src : JSON.stringify(a)} ≠ ${b instanceof Num ? b.src : JSON.stringify(b)}`];
  }
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return [`${at || '.'}: shape differs`];
    return a.flatMap((x, i) => exactDifferences(x, b[i], `${at}[${i}]`));
  }
  if (a && b && typeof a === 'object' && typeof b === 'object') {
    const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
    return [...keys].flatMap((k) => (k in a && k in b ? exactDifferences(a[k], b[k], `${at}.${k}`) : [`${at}.${k}: only on one side`]));
  }
  return a === b ? [] : [`${at || '.'}: ${JSON.stringify(a)} ≠ ${JSON.stringify(b)}`];
}

// ---------------------------------------------------------------------------------------------
// filter strings as realtime-js sends them (`column=[not.]op.value`, PostgREST quoting)

const quoted = (text) => `"${text.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;

/** A filter's column: bare when the parser reads it back unchanged (and the coin says so). */
export function filterColumn(name, rng) {
  const bareOk = !/[=,"]/.test(name) && name === name.trim() && name !== '';
  return bareOk && rng.chance(0.5) ? name : quoted(name);
}

/** A scalar filter value: bare when that reads back unchanged (and the coin says so). */
export function filterValue(text, rng) {
  let depth = 0;
  let balanced = true;
  for (const ch of text) {
    if (ch === '(') depth += 1;
    if (ch === ')') depth -= 1;
    if (depth < 0) balanced = false;
  }
  const bareOk = balanced && depth === 0 && !text.includes(',') && !text.startsWith('"') && text === text.trimEnd();
  return bareOk && rng.chance(0.5) ? text : quoted(text);
}

/** An `in` list; null elements are SQL NULL (bare `null`). */
export function filterList(values, rng) {
  const item = (v) => {
    if (v === null) return rng.pick(['null', 'NULL']);
    const bareOk = v !== '' && v === v.trim() && !/[,()"]/.test(v) && v.toLowerCase() !== 'null';
    return bareOk && rng.chance(0.5) ? v : quoted(v);
  };
  return `(${values.map(item).join(',')})`;
}
