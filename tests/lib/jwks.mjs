// Asymmetric JWT keys for tests of the sidecar's JWKS support (node:crypto only).
//
//   const { jwks, sign, kids, kid, publicPem } = makeKeys();
//   start the sidecar with JWT_JWKS=jwks, then
//   sign('ES512', { role: 'anon', exp })            // kid of the ES512 key
//   sign('RS256', claims, { kid: 'nope' })           // unknown kid
//   sign('RS256', claims, { kid: null })             // no kid header
//   sign('HS256', claims, { secret: 'shh' })         // HMAC with a given secret (no kid)
//   sign('none', claims)                             // unsigned: `header.claims.`
//
// The JWKS has one public JWK per algorithm, each with `kid` and `alg` (a JWK's `alg` binds it
// to that algorithm, so the three RSA entries share one RSA-2048 key under three kids). ECDSA
// signatures are r||s (ieee-p1363), as JWS requires.
import { createHmac, generateKeyPairSync, sign as cryptoSign } from 'node:crypto';

// alg → [key family, digest]
const ALGS = {
  RS256: ['rsa', 'sha256'],
  RS384: ['rsa', 'sha384'],
  RS512: ['rsa', 'sha512'],
  ES256: ['P-256', 'sha256'],
  ES384: ['P-384', 'sha384'],
  ES512: ['P-521', 'sha512'],
  EdDSA: ['ed25519', null],
};
const HMAC = { HS256: 'sha256', HS384: 'sha384', HS512: 'sha512' };

const b64url = (data) => Buffer.from(data).toString('base64url');

export function makeKeys() {
  const pairs = {
    rsa: generateKeyPairSync('rsa', { modulusLength: 2048 }),
    'P-256': generateKeyPairSync('ec', { namedCurve: 'P-256' }),
    'P-384': generateKeyPairSync('ec', { namedCurve: 'P-384' }),
    'P-521': generateKeyPairSync('ec', { namedCurve: 'P-521' }),
    ed25519: generateKeyPairSync('ed25519'),
  };
  const kids = {};
  const keys = [];
  for (const [alg, [family]] of Object.entries(ALGS)) {
    const kid = `${alg.toLowerCase()}-key`;
    kids[alg] = kid;
    const jwk = pairs[family].publicKey.export({ format: 'jwk' });
    keys.push({ ...jwk, kid, alg, use: 'sig' });
  }

  /**
   * Compact JWS of `claims`. `opts.kid`: header kid (default: this alg's key; null: none).
   * `opts.secret`: HMAC secret (HS256/384/512). `opts.header`: extra header fields.
   */
  function sign(alg, claims, opts = {}) {
    const { secret, header: extra = {} } = opts;
    const header = { alg, typ: 'JWT' };
    const kid = 'kid' in opts ? opts.kid : kids[alg];
    if (kid !== undefined && kid !== null) header.kid = kid;
    Object.assign(header, extra);
    const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    let sig;
    if (alg === 'none') {
      sig = Buffer.alloc(0);
    } else if (HMAC[alg]) {
      if (secret === undefined) throw new Error(`sign(${alg}) needs opts.secret`);
      sig = createHmac(HMAC[alg], secret).update(input).digest();
    } else if (ALGS[alg]) {
      const [family, digest] = ALGS[alg];
      const key = pairs[family].privateKey;
      sig = family.startsWith('P-')
        ? cryptoSign(digest, Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' })
        : cryptoSign(digest, Buffer.from(input), key);
    } else {
      throw new Error(`unsupported alg ${alg}`);
    }
    return `${input}.${b64url(sig)}`;
  }

  return {
    jwks: JSON.stringify({ keys }),
    sign,
    kids,
    /** The kid of `alg`'s JWK. */
    kid: (alg) => kids[alg],
    /** SPKI PEM of the public key that verifies `alg` (e.g. as an HMAC secret, to try algorithm confusion). */
    publicPem: (alg) => pairs[ALGS[alg][0]].publicKey.export({ type: 'spki', format: 'pem' }),
  };
}
