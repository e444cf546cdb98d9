//! JWT verification for connection tokens (`x-api-key` / `apikey`) and channel access tokens.
//!
//! Rules (Supabase Realtime `JwtVerification` and `ChannelsAuthorization.authorize_conn`,
//! docs/protocol.md §1.3, §3.5):
//! * the raw token is URL-decoded, then all whitespace is removed;
//! * it must be a compact JWS: `header.claims.signature`, each part unpadded base64url, header
//!   and claims JSON objects;
//! * the verifying key follows from the header's `alg` and `kid`, never from key material:
//!   - HS256/384/512: the JWKS `oct` key with the token's `kid`, else the configured secret;
//!   - RS256/384/512 (`RSA` key), ES256/384/512 (`EC` key on P-256/P-384/P-521) and EdDSA
//!     (`OKP` key on Ed25519; Realtime also accepts the header spelling `Ed25519`): only the
//!     JWKS key with the token's `kid`.
//!
//!   A JWK serves only its own family (and curve), and a JWK that names an `alg` serves only
//!   that one. So an HS token is never checked against public-key material (no algorithm
//!   confusion) and `none` has no key at all. No key → the signer error, naming the `kid` when
//!   the token had one and a JWKS is configured (Realtime's `{:error_generating_signer, kid}`);
//! * checks run in Realtime's order: malformed → signer → signature → `exp` in the past →
//!   `role`/`exp` present → `exp` numeric → `iat` numeric. The optional `iss`/`aud` checks
//!   (Realtime's claim validators) run right after the `exp` one. Two checks of this server's
//!   own follow: `nbf` (numeric, and not later than now + [`NBF_LEEWAY_SECS`]), then `role`
//!   must be one of `ALLOWED_ROLES` — so a signed token naming a superuser or a BYPASSRLS role
//!   is refused wherever a token is verified (connect, join, refresh, REST).
//!
//! Design: `jsonwebtoken` (`crypto::verify`) checks the signature of every algorithm it has
//! (HS, RS, ES256/384, EdDSA), with exactly the token's `alg` and a `DecodingKey` of that
//! algorithm's family (`from_secret`, `from_jwk`). It lacks ES512, the one algorithm left to
//! `p521`. The framing is read here, not by `jsonwebtoken::decode`, whose typed header rejects
//! ES512, `none` and the `Ed25519` spelling: Realtime refuses a malformed token before choosing a
//! key, and every claim check is Realtime's (order and texts). JWKS keys are parsed as
//! `jsonwebtoken::jwk::Jwk` and checked once, in [`Auth::from_config`]: a bad JWKS stops the
//! process at start-up instead of failing every token later.
//!
//! `Auth` is immutable after start-up and shared by every connection.

use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use p521::ecdsa::signature::Verifier as _;
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value};

use crate::config::Config;
use crate::error::AuthError;

/// Verified claims of a token.
#[derive(Debug, Clone)]
pub struct Claims {
    /// `exp`, seconds since the Unix epoch; always in the future when verified.
    pub exp: i64,
    /// `role` (a string: a token without one is refused).
    pub role: String,
    /// All claims, for RLS (`request.jwt.claims`).
    /// All claims as JSON text (`request.jwt.claims` for policies), shared by the channels
    /// authorized with this token.
    pub json: std::sync::Arc<str>,
}

/// A signature algorithm a token may use: one of `jsonwebtoken`'s, or ES512.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Jwt(Algorithm),
    ES512,
}

impl Alg {
    /// A header's or a JWK's `alg`. RFC 8037 names Ed25519 signatures `EdDSA`; JOSE (and so
    /// Realtime) also accepts the curve's name. Realtime has no RSASSA-PSS.
    fn parse(name: &str) -> Option<Alg> {
        match name {
            "ES512" => Some(Alg::ES512),
            "Ed25519" => Some(Alg::Jwt(Algorithm::EdDSA)),
            "PS256" | "PS384" | "PS512" => None,
            _ => Algorithm::from_str(name).ok().map(Alg::Jwt),
        }
    }
}

/// Clock skew tolerated for `nbf`: a token whose `nbf` is at most this far in the future is
/// accepted (the issuer's clock may run slightly ahead of ours).
pub const NBF_LEEWAY_SECS: i64 = 30;

const HS: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512];

/// A verifying key, checked at start-up.
enum Key {
    /// Verified by `jsonwebtoken`, for these algorithms (its family, and for EC its curve).
    Jwt(DecodingKey, Vec<Algorithm>),
    /// ES512: ECDSA on P-521 with SHA-512.
    P521(p521::ecdsa::VerifyingKey),
}

impl Key {
    /// Whether this key's family (and curve) is the one `alg` signs with.
    fn fits(&self, alg: Alg) -> bool {
        match (self, alg) {
            (Key::Jwt(_, algs), Alg::Jwt(alg)) => algs.contains(&alg),
            (Key::P521(_), Alg::ES512) => true,
            _ => false,
        }
    }

    /// Whether `jws` carries this key's `alg` signature (false for a key that does not fit).
    fn verifies(&self, alg: Alg, jws: &Jws) -> bool {
        let input = jws.signing_input.as_bytes();
        match (self, alg) {
            // A verifier for exactly `alg`; jsonwebtoken refuses a key of another family.
            (Key::Jwt(key, _), Alg::Jwt(alg)) => {
                jsonwebtoken::crypto::verify(jws.signature, input, key, alg).unwrap_or(false)
            }
            // `from_slice` takes exactly `r || s`, 66 bytes each (RFC 7518 §3.4).
            (Key::P521(key), Alg::ES512) => URL_SAFE_NO_PAD
                .decode(jws.signature)
                .ok()
                .and_then(|sig| p521::ecdsa::Signature::from_slice(&sig).ok())
                .is_some_and(|sig| key.verify(input, &sig).is_ok()),
            _ => false,
        }
    }
}

/// One JWKS entry.
struct JwksKey {
    kid: String,
    /// The JWK's `alg`, when it names one: then only tokens of that `alg` may use it.
    alg: Option<Alg>,
    key: Key,
}

impl JwksKey {
    fn fits(&self, alg: Alg) -> bool {
        self.key.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// RSA moduli accepted in a JWKS: RFC 7518 §3.3 asks for at least 2048 bits; the RSA crate
/// verifies up to 4096.
const RSA_BITS: RangeInclusive<usize> = 2048..=4096;

/// Parse a JWK set, `{"keys": [...]}`. Every key must be usable: an unusable one is a
/// configuration mistake, reported now rather than as a refused token later.
fn parse_jwks(text: &str, source: &str) -> Result<Vec<JwksKey>, String> {
    let doc: Value =
        serde_json::from_str(text).map_err(|e| format!("{source}: not valid JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{source}: expected a JWK set, {{\"keys\": [...]}}"))?;
    keys.iter()
        .enumerate()
        .map(|(i, jwk)| {
            parse_jwk(jwk).map_err(|e| match jwk.get("kid").and_then(Value::as_str) {
                Some(kid) => format!("{source}: key {i} (kid {kid:?}): {e}"),
                None => format!("{source}: key {i}: {e}"),
            })
        })
        .collect()
}

fn parse_jwk(raw: &Value) -> Result<JwksKey, String> {
    // JWK members are unpadded base64url; trailing padding is tolerated.
    let mut raw = raw.clone();
    for member in ["k", "n", "e", "x", "y"] {
        if let Some(Value::String(text)) = raw.get_mut(member) {
            text.truncate(text.trim_end_matches('=').len());
        }
    }
    let jwk: Jwk = serde_json::from_value(raw.clone()).map_err(|e| format!("not a JWK: {e}"))?;
    let kid = jwk.common.key_id.clone();
    let kid = kid.ok_or("no \"kid\" (tokens name their key by kid)")?;
    if !matches!(
        jwk.common.public_key_use,
        None | Some(PublicKeyUse::Signature)
    ) {
        return Err(format!("\"use\" is {}, not \"sig\"", raw["use"]));
    }
    // Read as text: jsonwebtoken's `KeyAlgorithm` has no ES512.
    let alg_name = raw.get("alg").and_then(Value::as_str);
    let alg = alg_name
        .map(|name| Alg::parse(name).ok_or_else(|| format!("unsupported \"alg\" {name:?}")))
        .transpose()?;
    let bytes = |member: &str, text: &str| {
        URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| format!("\"{member}\" is not base64url"))
    };
    let decoding_key = || DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string());
    let key = match &jwk.algorithm {
        AlgorithmParameters::OctetKey(oct) => {
            if bytes("k", &oct.value)?.is_empty() {
                return Err("empty \"k\"".into());
            }
            Key::Jwt(decoding_key()?, HS.to_vec())
        }
        AlgorithmParameters::RSA(rsa) => {
            let n = bytes("n", &rsa.n)?;
            let bits = n
                .iter()
                .position(|&b| b != 0)
                .map_or(0, |i| (n.len() - i) * 8 - n[i].leading_zeros() as usize);
            if !RSA_BITS.contains(&bits) {
                return Err(format!(
                    "RSA modulus of {bits} bits (supported: {} to {})",
                    RSA_BITS.start(),
                    RSA_BITS.end()
                ));
            }
            // The RSA crate's other checks, which it runs as jsonwebtoken verifies each token.
            let e = bytes("e", &rsa.e)?
                .iter()
                .try_fold(0u64, |e, &b| e.checked_mul(256)?.checked_add(b.into()));
            let e_ok = e.is_some_and(|e| e % 2 == 1 && (3..1 << 33).contains(&e));
            if !e_ok || n[n.len() - 1] % 2 == 0 {
                return Err("invalid RSA key: n and e must be odd, 3 <= e < 2^33".into());
            }
            Key::Jwt(decoding_key()?, RS.to_vec())
        }
        AlgorithmParameters::EllipticCurve(ec) => {
            let point = [&[0x04][..], &bytes("x", &ec.x)?, &bytes("y", &ec.y)?].concat();
            let key = match ec.curve {
                EllipticCurve::P256 => jwt_ec(&jwk, Algorithm::ES256),
                EllipticCurve::P384 => jwt_ec(&jwk, Algorithm::ES384),
                EllipticCurve::P521 => p521::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                    .ok()
                    .map(Key::P521),
                _ => return Err(unusable(&raw)),
            };
            let crv = raw["crv"].as_str().unwrap_or_default();
            key.ok_or_else(|| format!("\"x\", \"y\" are not a point on {crv}"))?
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            let x: [u8; 32] = bytes("x", &okp.x)?
                .try_into()
                .map_err(|_| "\"x\" is not 32 bytes")?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&x)
                .map_err(|_| "\"x\" is not an Ed25519 public key")?;
            if key.is_weak() {
                return Err("\"x\" is a weak (small-order) Ed25519 key".into());
            }
            Key::Jwt(decoding_key()?, vec![Algorithm::EdDSA])
        }
        _ => return Err(unusable(&raw)),
    };
    if let (Some(alg), Some(name)) = (alg, alg_name) {
        if !key.fits(alg) {
            return Err(format!("\"alg\" {name} does not fit this key"));
        }
    }
    Ok(JwksKey { kid, alg, key })
}

/// An EC key for `jsonwebtoken`, if its point is on `alg`'s curve. `jsonwebtoken` reads the
/// point only when it builds a verifier, so one is built now (its check of an empty signature
/// fails, as it should).
fn jwt_ec(jwk: &Jwk, alg: Algorithm) -> Option<Key> {
    let key = DecodingKey::from_jwk(jwk).ok()?;
    jsonwebtoken::crypto::verify("", b"", &key, alg).ok()?;
    Some(Key::Jwt(key, vec![alg]))
}

/// Why a JWK is none of the keys above: its `kty`, a missing member, or its curve.
fn unusable(jwk: &Value) -> String {
    let field = |name: &str| jwk.get(name).and_then(Value::as_str);
    let (kty, members, curves): (_, &[&str], _) = match field("kty") {
        Some(kty @ "EC") => (kty, &["crv", "x", "y"], "P-256, P-384, P-521"),
        Some(kty @ "OKP") => (kty, &["crv", "x"], "Ed25519"),
        Some(kty @ "RSA") => (kty, &["n", "e"], ""),
        Some(kty @ "oct") => (kty, &["k"], ""),
        Some(other) => return format!("unsupported \"kty\" {other:?} (oct, RSA, EC, OKP)"),
        None => return "no \"kty\"".into(),
    };
    match members.iter().find(|m| field(m).is_none()) {
        Some(missing) => format!("no \"{missing}\""),
        None => format!(
            "unsupported {kty} curve {:?} ({curves})",
            field("crv").unwrap_or_default()
        ),
    }
}

/// A compact JWS, split and decoded; nothing verified yet.
struct Jws<'a> {
    header: Map<String, Value>,
    claims: Map<String, Value>,
    /// `header.claims`, the text the signature covers.
    signing_input: &'a str,
    /// The signature, base64url.
    signature: &'a str,
}

impl<'a> Jws<'a> {
    fn parse(token: &'a str) -> Option<Self> {
        let (signing_input, signature) = token.rsplit_once('.')?;
        let (header, claims) = signing_input.split_once('.')?;
        if claims.contains('.') || URL_SAFE_NO_PAD.decode(signature).is_err() {
            return None;
        }
        Some(Jws {
            header: json_object(header)?,
            claims: json_object(claims)?,
            signing_input,
            signature,
        })
    }
}

fn json_object(part: &str) -> Option<Map<String, Value>> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

pub struct Auth {
    /// `JWT_SECRET`, for HS tokens without a matching `oct` JWK.
    secret: Option<Key>,
    /// `None` when no JWKS is configured.
    jwks: Option<Vec<JwksKey>>,
    iss: Option<String>,
    aud: Option<String>,
    /// `ALLOWED_ROLES`.
    allowed_roles: Vec<String>,
}

impl Auth {
    /// Keys and claim checks from the configuration. `Err` is a start-up error message: no key
    /// configured, an unreadable JWKS file, bad JWKS JSON, an unsupported or invalid key.
    /// Empty values count as unset.
    pub fn from_config(config: &Config) -> Result<Auth, String> {
        let jwks = match (non_empty(&config.jwt_jwks), &config.jwt_jwks_file) {
            (Some(_), Some(_)) => {
                return Err("set one of JWT_JWKS and JWT_JWKS_FILE, not both".into());
            }
            (Some(text), None) => Some(parse_jwks(text, "JWT_JWKS")?),
            (None, Some(path)) => {
                let source = format!("JWT_JWKS_FILE {}", path.display());
                let text = std::fs::read_to_string(path).map_err(|e| format!("{source}: {e}"))?;
                Some(parse_jwks(&text, &source)?)
            }
            (None, None) => None,
        };
        let secret = non_empty(&config.jwt_secret)
            .map(|s| Key::Jwt(DecodingKey::from_secret(s.as_bytes()), HS.to_vec()));
        if secret.is_none() && jwks.as_ref().is_none_or(Vec::is_empty) {
            return Err("no JWT key configured: set JWT_SECRET, JWT_JWKS or JWT_JWKS_FILE".into());
        }
        Ok(Auth {
            secret,
            jwks,
            iss: non_empty(&config.jwt_iss).map(str::to_owned),
            aud: non_empty(&config.jwt_aud).map(str::to_owned),
            allowed_roles: config.allowed_roles.clone(),
        })
    }

    pub fn verify(&self, raw: &str) -> Result<Claims, AuthError> {
        self.verify_at(raw, unix_now())
    }

    fn verify_at(&self, raw: &str, now: i64) -> Result<Claims, AuthError> {
        let token = clean_token(raw).ok_or(AuthError::Malformed)?;
        let jws = Jws::parse(&token).ok_or(AuthError::Malformed)?;
        let (alg, key) = self.key_for(&jws.header)?;
        if !key.verifies(alg, &jws) {
            return Err(AuthError::Signature);
        }
        let claims = jws.claims;
        let exp = claims.get("exp").map(|v| v.as_f64().map(|f| f as i64));
        if let Some(Some(exp)) = exp {
            if exp <= now {
                return Err(AuthError::Expired {
                    secs_ago: now - exp,
                });
            }
        }
        self.check_claims(&claims)?;
        let role = claims
            .get("role")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let (Some(role), Some(exp)) = (role, exp) else {
            return Err(AuthError::MissingClaims);
        };
        let Some(exp) = exp else {
            return Err(AuthError::InvalidExp);
        };
        if claims.get("iat").is_some_and(|iat| !iat.is_number()) {
            return Err(AuthError::Malformed);
        }
        match claims.get("nbf") {
            None => {}
            Some(nbf) => match nbf.as_f64() {
                Some(nbf) if nbf as i64 > now + NBF_LEEWAY_SECS => {
                    return Err(AuthError::NotYetValid)
                }
                Some(_) => {}
                None => return Err(AuthError::Malformed),
            },
        }
        if !self.allowed_roles.contains(&role) {
            return Err(AuthError::RoleNotAllowed { role });
        }
        Ok(Claims {
            exp,
            role,
            json: Value::Object(claims).to_string().into(),
        })
    }

    /// The key for a token's header (see the module doc).
    fn key_for(&self, header: &Map<String, Value>) -> Result<(Alg, &Key), AuthError> {
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(Alg::parse)
            .ok_or(AuthError::Signer)?;
        let kid = header.get("kid").and_then(Value::as_str);
        if let (Some(kid), Some(jwks)) = (kid, &self.jwks) {
            if let Some(jwk) = jwks.iter().find(|jwk| jwk.kid == kid && jwk.fits(alg)) {
                return Ok((alg, &jwk.key));
            }
        }
        // The secret is an HMAC key: it fits HS tokens only.
        if let Some(secret) = self.secret.as_ref().filter(|secret| secret.fits(alg)) {
            return Ok((alg, secret));
        }
        match (kid, &self.jwks) {
            (Some(kid), Some(_)) => Err(AuthError::SignerKid {
                kid: kid.to_owned(),
            }),
            _ => Err(AuthError::Signer),
        }
    }

    /// The configured `iss` / `aud` checks. A claim that is absent fails too.
    fn check_claims(&self, claims: &Map<String, Value>) -> Result<(), AuthError> {
        let failed = |claim: &'static str| AuthError::InvalidClaim {
            claim,
            value: claims
                .get(claim)
                .map_or_else(|| "nil".to_owned(), Value::to_string),
        };
        if let Some(iss) = &self.iss {
            if claims.get("iss").and_then(Value::as_str) != Some(iss) {
                return Err(failed("iss"));
            }
        }
        if let Some(aud) = &self.aud {
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => a == aud,
                Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(aud)),
                _ => false,
            };
            if !ok {
                return Err(failed("aud"));
            }
        }
        Ok(())
    }
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.trim().is_empty())
}

/// URL-decode, then drop every whitespace character. `None` if the result is not UTF-8.
fn clean_token(raw: &str) -> Option<String> {
    let decoded = percent_decode_str(raw).decode_utf8().ok()?;
    Some(decoded.chars().filter(|c| !c.is_whitespace()).collect())
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::OnceLock;

    use clap::Parser;
    use jsonwebtoken::{AlgorithmFamily, EncodingKey};
    use p521::ecdsa::signature::Signer as _;
    use serde_json::json;

    use super::*;

    pub const SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";
    const OCT_SECRET: &[u8] = b"the-oct-jwk-secret-0123456789-0123456789";
    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    /// A signing key of the tests. RSA, P-256, P-384 and Ed25519 keys are fixed
    /// (`tests/fixtures/`) and sign with jsonwebtoken; P-521 keys come from fixed scalars.
    pub enum TestKey {
        Hmac(Vec<u8>),
        /// A private key of `Algorithm`'s family (and, for EC, curve).
        Der(EncodingKey, Algorithm),
        P521(p521::ecdsa::SigningKey),
    }

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A compact JWS of `claims` under `header`, signed by `key` with the header's `alg`.
    pub fn sign(header: &Value, claims: &Value, key: &TestKey) -> String {
        let alg = header["alg"].as_str().and_then(Alg::parse);
        let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
        let msg = input.as_bytes();
        let sig = match (key, alg) {
            (TestKey::Hmac(k), Some(Alg::Jwt(alg))) => {
                jsonwebtoken::crypto::sign(msg, &EncodingKey::from_secret(k), alg)
            }
            (TestKey::Der(k, _), Some(Alg::Jwt(alg))) => jsonwebtoken::crypto::sign(msg, k, alg),
            (TestKey::P521(k), Some(Alg::ES512)) => {
                let sig: p521::ecdsa::Signature = k.sign(msg);
                Ok(b64(sig.to_bytes()))
            }
            _ => panic!("test key cannot sign {header}"),
        };
        format!("{input}.{}", sig.expect("signed"))
    }

    pub fn token(claims: &Value) -> String {
        sign(
            &json!({"alg": "HS256", "typ": "JWT"}),
            claims,
            &TestKey::Hmac(SECRET.into()),
        )
    }

    pub fn valid_token() -> String {
        token(&json!({"role": "anon", "exp": unix_now() + 3600, "iat": unix_now()}))
    }

    fn claims() -> Value {
        json!({"role": "authenticated", "exp": unix_now() + 60, "sub": "u1"})
    }

    /// DER bytes of a PEM document.
    fn pem_der(pem: &str) -> Vec<u8> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .expect("PEM base64")
    }

    struct Keys {
        rsa_a: TestKey,
        rsa_b: TestKey,
        p256: TestKey,
        p384: TestKey,
        p521: TestKey,
        ed25519: TestKey,
        /// Same curves, other scalars: keys the JWKS does not hold.
        p256_other: TestKey,
        p521_other: TestKey,
        ed25519_other: TestKey,
        /// The JWKS of the keys above (not the `_other`s), plus an `oct` key.
        jwks: Value,
    }

    /// A PKCS#1 (RSA) or PKCS#8 (EC, Ed25519) PEM key of `tests/fixtures/`.
    fn fixture(name: &str, alg: Algorithm) -> TestKey {
        let pem = std::fs::read_to_string(format!("{FIXTURES}/{name}")).expect("key fixture");
        let der = pem_der(&pem);
        let key = match alg.family() {
            AlgorithmFamily::Rsa => EncodingKey::from_rsa_der(&der),
            AlgorithmFamily::Ec => EncodingKey::from_ec_der(&der),
            AlgorithmFamily::Ed => EncodingKey::from_ed_der(&der),
            AlgorithmFamily::Hmac => unreachable!("HMAC keys are not PEM"),
        };
        TestKey::Der(key, alg)
    }

    fn p521_key(fill: u8) -> p521::ecdsa::SigningKey {
        let mut scalar = [fill; 66];
        scalar[0] = 0x01; // below the group order
        p521::ecdsa::SigningKey::from_slice(&scalar).expect("P-521 scalar")
    }

    /// Public JWK of a test key (no `alg`).
    fn jwk(kid: &str, key: &TestKey) -> Value {
        let mut jwk = match key {
            TestKey::Hmac(k) => json!({"kty": "oct", "k": b64(k)}),
            TestKey::Der(k, alg) => {
                let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(k, *alg).expect("public JWK");
                serde_json::to_value(jwk).expect("JWK JSON")
            }
            TestKey::P521(k) => {
                let point = p521::ecdsa::VerifyingKey::from(k).to_encoded_point(false);
                let (x, y) = point.as_bytes()[1..].split_at(66);
                json!({"kty": "EC", "crv": "P-521", "x": b64(x), "y": b64(y)})
            }
        };
        jwk.as_object_mut().expect("JWK object").remove("alg");
        jwk["kid"] = json!(kid);
        jwk
    }

    fn keys() -> &'static Keys {
        static KEYS: OnceLock<Keys> = OnceLock::new();
        KEYS.get_or_init(|| {
            let mut keys = Keys {
                rsa_a: fixture("rsa-a.pem", Algorithm::RS256),
                rsa_b: fixture("rsa-b.pem", Algorithm::RS256),
                p256: fixture("ec-p256-a.pem", Algorithm::ES256),
                p384: fixture("ec-p384-a.pem", Algorithm::ES384),
                p521: TestKey::P521(p521_key(0x33)),
                ed25519: fixture("ed25519-a.pem", Algorithm::EdDSA),
                p256_other: fixture("ec-p256-b.pem", Algorithm::ES256),
                p521_other: TestKey::P521(p521_key(0x66)),
                ed25519_other: fixture("ed25519-b.pem", Algorithm::EdDSA),
                jwks: Value::Null,
            };
            keys.jwks = json!({"keys": [
                jwk("oct-1", &TestKey::Hmac(OCT_SECRET.to_vec())),
                jwk("rsa-a", &keys.rsa_a),
                jwk("p256", &keys.p256),
                jwk("p384", &keys.p384),
                jwk("p521", &keys.p521),
                jwk("ed", &keys.ed25519),
            ]});
            keys
        })
    }

    fn config(args: &[&str]) -> Config {
        let mut argv = vec![
            "test",
            "--database-url=postgres://postgres@127.0.0.1:1/postgres",
        ];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv).expect("test config")
    }

    fn auth_with(args: &[&str]) -> Result<Auth, String> {
        Auth::from_config(&config(args))
    }

    /// The secret only, as before JWKS support.
    fn auth() -> Auth {
        auth_with(&[&format!("--jwt-secret={SECRET}")]).expect("auth")
    }

    /// The secret and the test JWKS.
    fn auth_jwks() -> Auth {
        let jwks = format!("--jwt-jwks={}", keys().jwks);
        auth_with(&[&format!("--jwt-secret={SECRET}"), &jwks]).expect("auth")
    }

    /// The test JWKS only.
    fn auth_jwks_only() -> Auth {
        auth_with(&[&format!("--jwt-jwks={}", keys().jwks)]).expect("auth")
    }

    fn header(alg: &str, kid: Option<&str>) -> Value {
        match kid {
            Some(kid) => json!({"alg": alg, "typ": "JWT", "kid": kid}),
            None => json!({"alg": alg, "typ": "JWT"}),
        }
    }

    fn signed(alg: &str, kid: Option<&str>, key: &TestKey) -> String {
        sign(&header(alg, kid), &claims(), key)
    }

    fn signer_kid(kid: &str) -> AuthError {
        AuthError::SignerKid { kid: kid.into() }
    }

    #[test]
    fn accepts_hs256_384_512() {
        let secret = TestKey::Hmac(SECRET.into());
        for alg in ["HS256", "HS384", "HS512"] {
            for auth in [auth(), auth_jwks()] {
                let c = auth.verify(&signed(alg, None, &secret)).expect(alg);
                assert!(c.json.contains(r#""sub":"u1""#));
                assert_eq!(c.role, "authenticated");
            }
        }
    }

    #[test]
    fn accepts_rs256_384_512() {
        for alg in ["RS256", "RS384", "RS512"] {
            let t = signed(alg, Some("rsa-a"), &keys().rsa_a);
            let c = auth_jwks().verify(&t).expect(alg);
            assert!(c.json.contains(r#""sub":"u1""#));
            auth_jwks_only().verify(&t).expect(alg);
        }
    }

    #[test]
    fn accepts_es256_384_512() {
        let k = keys();
        for (alg, kid, key) in [
            ("ES256", "p256", &k.p256),
            ("ES384", "p384", &k.p384),
            ("ES512", "p521", &k.p521),
        ] {
            let t = signed(alg, Some(kid), key);
            assert_eq!(auth_jwks().verify(&t).expect(alg).role, "authenticated");
            auth_jwks_only().verify(&t).expect(alg);
        }
    }

    #[test]
    fn es512_signature_is_132_bytes_r_s() {
        let t = signed("ES512", Some("p521"), &keys().p521);
        let sig = URL_SAFE_NO_PAD
            .decode(t.rsplit_once('.').expect("three parts").1)
            .expect("base64url");
        assert_eq!(sig.len(), 132);
        // The DER form of the same signature is not a JWS signature.
        let der = p521::ecdsa::Signature::from_slice(&sig)
            .expect("r || s")
            .to_der();
        let (input, _) = t.rsplit_once('.').expect("three parts");
        let der_token = format!("{input}.{}", b64(der.as_bytes()));
        assert_eq!(
            auth_jwks().verify(&der_token).unwrap_err(),
            AuthError::Signature
        );
        // Truncated, and one bit flipped.
        let short = format!("{input}.{}", b64(&sig[..131]));
        assert_eq!(
            auth_jwks().verify(&short).unwrap_err(),
            AuthError::Signature
        );
        let mut flipped = sig.clone();
        flipped[100] ^= 1;
        let flipped = format!("{input}.{}", b64(flipped));
        assert_eq!(
            auth_jwks().verify(&flipped).unwrap_err(),
            AuthError::Signature
        );
    }

    #[test]
    fn accepts_eddsa() {
        for alg in ["EdDSA", "Ed25519"] {
            let t = signed(alg, Some("ed"), &keys().ed25519);
            assert_eq!(auth_jwks().verify(&t).expect(alg).role, "authenticated");
        }
    }

    #[test]
    fn oct_jwk_by_kid() {
        let oct = TestKey::Hmac(OCT_SECRET.to_vec());
        let secret = TestKey::Hmac(SECRET.into());
        for alg in ["HS256", "HS384", "HS512"] {
            auth_jwks()
                .verify(&signed(alg, Some("oct-1"), &oct))
                .expect(alg);
            auth_jwks_only()
                .verify(&signed(alg, Some("oct-1"), &oct))
                .expect(alg);
        }
        // A kid that names an oct key means that key, not the secret.
        assert_eq!(
            auth_jwks()
                .verify(&signed("HS256", Some("oct-1"), &secret))
                .unwrap_err(),
            AuthError::Signature
        );
        // Without a matching oct key HS tokens use the secret (Supabase Auth tokens carry a kid
        // whose key is not published)...
        auth_jwks()
            .verify(&signed("HS256", Some("gotrue"), &secret))
            .expect("secret");
        // ...and fail with the kid when there is no secret.
        assert_eq!(
            auth_jwks_only()
                .verify(&signed("HS256", Some("gotrue"), &secret))
                .unwrap_err(),
            signer_kid("gotrue")
        );
        // No kid, no secret: the plain signer error.
        assert_eq!(
            auth_jwks_only()
                .verify(&signed("HS256", None, &oct))
                .unwrap_err(),
            AuthError::Signer
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let body = b64(claims().to_string());
        for head in [
            json!({"alg": "none", "typ": "JWT"}),
            json!({"alg": "none", "typ": "JWT", "kid": "rsa-a"}),
            json!({"alg": "None"}),
            json!({"typ": "JWT"}),
            json!({"alg": null}),
        ] {
            for sig in ["", "c2ln"] {
                let t = format!("{}.{body}.{sig}", b64(head.to_string()));
                for auth in [auth(), auth_jwks()] {
                    assert_eq!(
                        auth.verify(&t).unwrap_err(),
                        AuthError::Signer,
                        "{head} {sig:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn algorithm_confusion_is_refused() {
        // HS256 tokens keyed with every form of the RSA public key an attacker could know.
        let pem = std::fs::read(format!("{FIXTURES}/rsa-a.pub.pem")).expect("public PEM");
        let der = pem_der(std::str::from_utf8(&pem).expect("PEM text"));
        let jwk_json = jwk("rsa-a", &keys().rsa_a).to_string().into_bytes();
        let n = jwk("rsa-a", &keys().rsa_a)["n"]
            .as_str()
            .map(|n| URL_SAFE_NO_PAD.decode(n));
        let n = n.expect("n").expect("base64url");
        for material in [pem, der, jwk_json, n] {
            let key = TestKey::Hmac(material);
            for kid in [Some("rsa-a"), None] {
                for alg in ["HS256", "HS384", "HS512"] {
                    let t = signed(alg, kid, &key);
                    assert_eq!(auth_jwks().verify(&t).unwrap_err(), AuthError::Signature);
                    let without_secret = auth_jwks_only().verify(&t).unwrap_err();
                    match kid {
                        Some(kid) => assert_eq!(without_secret, signer_kid(kid)),
                        None => assert_eq!(without_secret, AuthError::Signer),
                    }
                }
            }
        }
        // The other way round: an RS256 header over an HMAC of the secret.
        let secret = TestKey::Hmac(SECRET.into());
        let hs = signed("HS256", Some("rsa-a"), &secret);
        let (_, rest) = hs.split_once('.').expect("three parts");
        let rs = format!("{}.{rest}", b64(header("RS256", Some("rsa-a")).to_string()));
        assert_eq!(auth_jwks().verify(&rs).unwrap_err(), AuthError::Signature);
    }

    #[test]
    fn key_must_fit_the_alg() {
        let k = keys();
        // An EC key's curve fixes the alg: a P-256 key does not serve ES384 or ES512.
        assert_eq!(
            auth_jwks()
                .verify(&signed("ES384", Some("p256"), &k.p384))
                .unwrap_err(),
            signer_kid("p256")
        );
        // An RSA kid does not serve ES256, an EC kid does not serve RS256 or EdDSA.
        assert_eq!(
            auth_jwks()
                .verify(&signed("ES256", Some("rsa-a"), &k.p256))
                .unwrap_err(),
            signer_kid("rsa-a")
        );
        assert_eq!(
            auth_jwks()
                .verify(&signed("RS256", Some("p256"), &k.rsa_a))
                .unwrap_err(),
            signer_kid("p256")
        );
        assert_eq!(
            auth_jwks()
                .verify(&signed("EdDSA", Some("p256"), &k.ed25519))
                .unwrap_err(),
            signer_kid("p256")
        );
        // A JWK `alg` binds the key to that alg.
        let mut rs256_only = jwk("rsa-a", &k.rsa_a);
        rs256_only["alg"] = json!("RS256");
        let jwks = json!({"keys": [rs256_only]});
        let auth = auth_with(&[&format!("--jwt-jwks={jwks}")]).expect("auth");
        auth.verify(&signed("RS256", Some("rsa-a"), &k.rsa_a))
            .expect("RS256");
        assert_eq!(
            auth.verify(&signed("RS512", Some("rsa-a"), &k.rsa_a))
                .unwrap_err(),
            signer_kid("rsa-a")
        );
    }

    #[test]
    fn unknown_kid() {
        let k = keys();
        let err = auth_jwks()
            .verify(&signed("RS256", Some("rotated-away"), &k.rsa_a))
            .unwrap_err();
        assert_eq!(err, signer_kid("rotated-away"));
        assert_eq!(
            err.connect_message(),
            "Failed to generate JWT signer for key ID (kid) \"rotated-away\", check your JWT secret or JWKS configuration"
        );
        assert_eq!(
            err.join_reason(),
            "JwtSignerError: Failed to generate JWT signer for key ID (kid) \"rotated-away\", check your JWT secret or JWKS configuration"
        );
        assert_eq!(err.refresh_message(), err.to_string());
        assert_eq!(
            auth_jwks()
                .verify(&signed("ES512", Some("p384"), &k.p521))
                .unwrap_err(),
            signer_kid("p384")
        );
        // No kid, or no JWKS at all: nothing to name.
        assert_eq!(
            auth_jwks()
                .verify(&signed("RS256", None, &k.rsa_a))
                .unwrap_err(),
            AuthError::Signer
        );
        assert_eq!(
            auth()
                .verify(&signed("RS256", Some("rsa-a"), &k.rsa_a))
                .unwrap_err(),
            AuthError::Signer
        );
        // A non-string kid is no kid.
        let t = sign(&json!({"alg": "ES256", "kid": 7}), &claims(), &k.p256);
        assert_eq!(auth_jwks().verify(&t).unwrap_err(), AuthError::Signer);
    }

    #[test]
    fn wrong_key() {
        let k = keys();
        for (alg, kid, key) in [
            ("RS256", "rsa-a", &k.rsa_b),
            ("RS512", "rsa-a", &k.rsa_b),
            ("ES256", "p256", &k.p256_other),
            ("ES512", "p521", &k.p521_other),
            ("EdDSA", "ed", &k.ed25519_other),
            (
                "HS256",
                "oct-1",
                &TestKey::Hmac(b"not-the-oct-secret".to_vec()),
            ),
        ] {
            assert_eq!(
                auth_jwks()
                    .verify(&signed(alg, Some(kid), key))
                    .unwrap_err(),
                AuthError::Signature,
                "{alg}"
            );
        }
    }

    #[test]
    fn tampered_claims() {
        let k = keys();
        for (alg, kid, key) in [
            ("HS256", None, &TestKey::Hmac(SECRET.into())),
            ("RS256", Some("rsa-a"), &k.rsa_a),
            ("ES384", Some("p384"), &k.p384),
            ("ES512", Some("p521"), &k.p521),
            ("EdDSA", Some("ed"), &k.ed25519),
        ] {
            let t = signed(alg, kid, key);
            let mut parts: Vec<&str> = t.split('.').collect();
            let forged = b64(json!({"role": "service_role", "exp": unix_now() + 60}).to_string());
            parts[1] = &forged;
            assert_eq!(
                auth_jwks().verify(&parts.join(".")).unwrap_err(),
                AuthError::Signature,
                "{alg}"
            );
        }
    }

    #[test]
    fn bad_signature() {
        let t = signed("HS256", None, &TestKey::Hmac(b"other".to_vec()));
        assert_eq!(auth().verify(&t).unwrap_err(), AuthError::Signature);
    }

    #[test]
    fn missing_claims() {
        for claims in [
            json!({"role": "anon"}),
            json!({"exp": unix_now() + 60}),
            json!({"role": 7, "exp": unix_now() + 60}),
            json!({"role": null, "exp": unix_now() + 60}),
        ] {
            assert_eq!(
                auth().verify(&token(&claims)).unwrap_err(),
                AuthError::MissingClaims,
                "{claims}"
            );
        }
    }

    #[test]
    fn expired_reports_seconds() {
        let t = token(&json!({"role": "anon", "exp": 1_000}));
        assert_eq!(
            auth().verify_at(&t, 1_003).unwrap_err(),
            AuthError::Expired { secs_ago: 3 }
        );
        // Realtime requires exp > now: a token expiring this second is already expired.
        assert_eq!(
            auth().verify_at(&t, 1_000).unwrap_err(),
            AuthError::Expired { secs_ago: 0 }
        );
        // Any algorithm.
        let es = sign(
            &header("ES256", Some("p256")),
            &json!({"role": "anon", "exp": 1_000}),
            &keys().p256,
        );
        assert_eq!(
            auth_jwks().verify_at(&es, 1_010).unwrap_err(),
            AuthError::Expired { secs_ago: 10 }
        );
    }

    #[test]
    fn expiry_is_checked_before_role() {
        let t = token(&json!({"exp": 1_000}));
        assert_eq!(
            auth().verify_at(&t, 2_000).unwrap_err(),
            AuthError::Expired { secs_ago: 1_000 }
        );
    }

    #[test]
    fn only_allowed_roles() {
        let with = |role: &str| token(&json!({"role": role, "exp": unix_now() + 60}));
        for role in ["anon", "authenticated", "service_role"] {
            assert_eq!(auth().verify(&with(role)).expect(role).role, role);
        }
        for role in ["postgres", "supabase_admin", "Anon", "anon ", ""] {
            assert_eq!(
                auth().verify(&with(role)).unwrap_err(),
                AuthError::RoleNotAllowed { role: role.into() },
                "{role:?}"
            );
        }
        let custom = auth_with(&[
            &format!("--jwt-secret={SECRET}"),
            "--allowed-roles=app_user",
        ])
        .expect("auth");
        assert!(custom.verify(&with("app_user")).is_ok());
        assert!(custom.verify(&with("anon")).is_err());
    }

    #[test]
    fn nbf_is_honoured_with_a_small_leeway() {
        let t = |nbf: Value| token(&json!({"role": "anon", "exp": 10_000, "nbf": nbf}));
        assert!(auth().verify_at(&t(json!(1_000)), 1_000).is_ok());
        assert!(auth()
            .verify_at(&t(json!(1_000 + NBF_LEEWAY_SECS)), 1_000)
            .is_ok());
        assert_eq!(
            auth()
                .verify_at(&t(json!(1_001 + NBF_LEEWAY_SECS)), 1_000)
                .unwrap_err(),
            AuthError::NotYetValid
        );
        assert_eq!(
            auth().verify_at(&t(json!("later")), 1_000).unwrap_err(),
            AuthError::Malformed
        );
    }

    #[test]
    fn non_numeric_exp_and_iat() {
        let t = token(&json!({"role": "anon", "exp": "soon"}));
        assert_eq!(auth().verify(&t).unwrap_err(), AuthError::InvalidExp);
        let t = token(&json!({"role": "anon", "exp": unix_now() + 60, "iat": "now"}));
        assert_eq!(auth().verify(&t).unwrap_err(), AuthError::Malformed);
    }

    #[test]
    fn not_a_jwt() {
        let good = valid_token();
        let (head, rest) = good.split_once('.').expect("three parts");
        let padded = format!("{head}=.{rest}");
        let four = format!("{good}.x");
        let array_claims = format!("{head}.{}.{}", b64("[1]"), rest.split_once('.').unwrap().1);
        let bad_sig = format!("{}.!!", good.rsplit_once('.').unwrap().0);
        for t in [
            "",
            "abc",
            "a.b",
            "a.b.c",
            "sb_publishable_xyz",
            "%E0%A4%A",
            &padded,
            &four,
            &array_claims,
            &bad_sig,
        ] {
            assert_eq!(auth().verify(t).unwrap_err(), AuthError::Malformed, "{t:?}");
        }
    }

    #[test]
    fn whitespace_and_url_encoding_are_stripped() {
        let t = valid_token();
        let (head, rest) = t.split_at(10);
        let messy = format!(" {head}\n{}%20", rest.replace('.', "%2E"));
        auth().verify(&messy).expect("cleaned token verifies");
    }

    #[test]
    fn iss_and_aud() {
        let secret = TestKey::Hmac(SECRET.into());
        let auth = auth_with(&[
            &format!("--jwt-secret={SECRET}"),
            "--jwt-iss=https://auth.example/v1",
            "--jwt-aud=authenticated",
        ])
        .expect("auth");
        let with = |extra: Value| {
            let mut c = claims();
            for (k, v) in extra.as_object().expect("object") {
                c[k] = v.clone();
            }
            sign(&header("HS256", None), &c, &secret)
        };
        let iss = "https://auth.example/v1";
        auth.verify(&with(json!({"iss": iss, "aud": "authenticated"})))
            .expect("string aud");
        auth.verify(&with(
            json!({"iss": iss, "aud": ["other", "authenticated"]}),
        ))
        .expect("aud in an array");
        let fail = |extra: Value, claim: &'static str, value: &str| {
            assert_eq!(
                auth.verify(&with(extra.clone())).unwrap_err(),
                AuthError::InvalidClaim {
                    claim,
                    value: value.into()
                },
                "{extra}"
            );
        };
        fail(
            json!({"iss": "https://evil", "aud": "authenticated"}),
            "iss",
            "\"https://evil\"",
        );
        fail(json!({"aud": "authenticated"}), "iss", "nil");
        fail(json!({"iss": 1, "aud": "authenticated"}), "iss", "1");
        fail(json!({"iss": iss, "aud": "anon"}), "aud", "\"anon\"");
        fail(json!({"iss": iss, "aud": ["anon"]}), "aud", "[\"anon\"]");
        fail(json!({"iss": iss}), "aud", "nil");
        // Without the settings neither claim is looked at.
        auth_jwks()
            .verify(&with(json!({"iss": "https://evil"})))
            .expect("no iss check");
        // After the expiry check, before the role check.
        let expired = sign(&header("HS256", None), &json!({"exp": 1_000}), &secret);
        assert_eq!(
            auth.verify_at(&expired, 1_001).unwrap_err(),
            AuthError::Expired { secs_ago: 1 }
        );
        let no_role = sign(
            &header("HS256", None),
            &json!({"exp": unix_now() + 60}),
            &secret,
        );
        assert!(matches!(
            auth.verify(&no_role).unwrap_err(),
            AuthError::InvalidClaim { claim: "iss", .. }
        ));
    }

    #[test]
    fn claim_check_messages() {
        let err = AuthError::InvalidClaim {
            claim: "iss",
            value: "\"https://evil\"".into(),
        };
        assert_eq!(err.connect_message(), "Error connecting to Realtime");
        assert_eq!(err.join_reason(), "Unknown Error on Channel");
        assert_eq!(
            err.refresh_message(),
            "[message: \"Invalid token\", claim: \"iss\", claim_val: \"https://evil\"]"
        );
    }

    #[test]
    fn jwks_from_file() {
        let file = format!("--jwt-jwks-file={FIXTURES}/jwks.json");
        let auth = auth_with(&[&file]).expect("JWKS file");
        let t = signed("RS256", Some("rsa-a"), &keys().rsa_a);
        auth.verify(&t).expect("RS256 from the file's key");
        // The fixture's JWK (written by Node) encodes the same key as ours.
        let fixture: Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{FIXTURES}/jwks.json")).unwrap(),
        )
        .unwrap();
        let ours = jwk("rsa-a", &keys().rsa_a);
        assert_eq!(fixture["keys"][0]["n"], ours["n"]);
        assert_eq!(fixture["keys"][0]["e"], ours["e"]);
        // Its alg is RS256.
        assert_eq!(
            auth.verify(&signed("RS384", Some("rsa-a"), &keys().rsa_a))
                .unwrap_err(),
            signer_kid("rsa-a")
        );
    }

    #[test]
    fn node_signed_tokens_verify() {
        // Tokens signed by tests/lib/jwks.mjs (node:crypto, expiring in 2100): an independent
        // encoder of every algorithm's signature and JWK.
        let fixture: Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{FIXTURES}/node-tokens.json")).unwrap(),
        )
        .unwrap();
        let auth = auth_with(&[
            &format!("--jwt-secret={}", fixture["secret"].as_str().unwrap()),
            &format!("--jwt-jwks={}", fixture["jwks"]),
        ])
        .expect("auth");
        let tokens = fixture["tokens"].as_object().expect("tokens");
        for alg in [
            "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "EdDSA", "HS256",
        ] {
            let c = auth.verify(tokens[alg].as_str().unwrap()).expect(alg);
            assert_eq!(c.role, "authenticated", "{alg}");
            assert_eq!(c.exp, 4_102_444_800, "{alg}");
        }
        assert_eq!(
            auth.verify(tokens["none"].as_str().unwrap()).unwrap_err(),
            AuthError::Signer
        );
    }

    #[test]
    fn startup_errors() {
        let err = |args: &[&str]| match auth_with(args) {
            Ok(_) => panic!("accepted {args:?}"),
            Err(e) => e,
        };
        let jwks = |keys: Value| format!("--jwt-jwks={}", json!({"keys": keys}));
        let k = keys();
        assert!(err(&[]).contains("no JWT key configured"));
        assert!(err(&["--jwt-secret= "]).contains("no JWT key configured"));
        assert!(err(&[&jwks(json!([]))]).contains("no JWT key configured"));
        assert!(
            err(&["--jwt-secret=s", "--jwt-jwks={}", "--jwt-jwks-file=/x"]).contains("not both")
        );
        assert!(err(&["--jwt-jwks=[1"]).contains("JWT_JWKS: not valid JSON"));
        assert!(err(&["--jwt-jwks={\"kty\":\"RSA\"}"]).contains("expected a JWK set"));
        let missing = err(&["--jwt-jwks-file=/nonexistent/jwks.json"]);
        assert!(
            missing.starts_with("JWT_JWKS_FILE /nonexistent/jwks.json: "),
            "{missing}"
        );

        let mut no_kid = jwk("x", &k.p256);
        no_kid.as_object_mut().unwrap().remove("kid");
        let mut enc = jwk("enc", &k.rsa_a);
        enc["use"] = json!("enc");
        let mut ps256 = jwk("ps", &k.rsa_a);
        ps256["alg"] = json!("PS256");
        let mut misfit = jwk("misfit", &k.rsa_a);
        misfit["alg"] = json!("ES256");
        let mut off_curve = jwk("off", &k.p256);
        off_curve["y"] = off_curve["x"].clone();
        let mut short_x = jwk("short", &k.p384);
        short_x["x"] = json!(b64([1u8; 20]));
        let small_rsa = json!({"kty": "RSA", "kid": "small", "n": b64([0xC3u8; 128]), "e": "AQAB"});
        let ed448 = json!({"kty": "OKP", "crv": "Ed448", "kid": "448", "x": b64([1u8; 57])});
        let x25519 = json!({"kty": "OKP", "crv": "X25519", "kid": "x", "x": b64([1u8; 32])});
        let mut even_e = jwk("even-e", &k.rsa_a);
        even_e["e"] = json!("AQAA"); // 65536
        let mut weak_ed = jwk("weak", &k.ed25519);
        weak_ed["x"] = json!(b64([0u8; 32])); // the identity: small order
        for (key, want) in [
            (no_kid, "no \"kid\""),
            (enc, "\"use\" is \"enc\""),
            (ps256, "unsupported \"alg\" \"PS256\""),
            (misfit, "\"alg\" ES256 does not fit"),
            (off_curve, "not a point on P-256"),
            (short_x, "not a point on P-384"),
            (small_rsa, "RSA modulus of 1024 bits"),
            (ed448, "unsupported OKP curve \"Ed448\""),
            (x25519, "unsupported OKP curve \"X25519\""),
            (weak_ed, "weak"),
            (json!({"kty": "oct", "kid": "o", "k": ""}), "empty \"k\""),
            (
                json!({"kty": "oct", "kid": "o", "k": "*"}),
                "\"k\" is not base64url",
            ),
            (
                json!({"kty": "EC", "kid": "k", "crv": "secp256k1", "x": "AA", "y": "AA"}),
                "unsupported EC curve",
            ),
            (json!({"kty": "OKP", "kid": "k"}), "no \"crv\""),
            (
                json!({"kty": "DSA", "kid": "d"}),
                "unsupported \"kty\" \"DSA\"",
            ),
            (json!({"kid": "d"}), "no \"kty\""),
            (json!({"kty": "RSA", "kid": "r", "e": "AQAB"}), "no \"n\""),
            (even_e, "invalid RSA key"),
        ] {
            let e = err(&["--jwt-secret=s", &jwks(json!([jwk("fine", &k.p256), key]))]);
            assert!(e.starts_with("JWT_JWKS: key 1"), "{e}");
            assert!(e.contains(want), "{e} (want {want:?})");
        }
    }

    #[test]
    fn jwk_padding_is_tolerated() {
        let mut padded = jwk("p256", &keys().p256);
        let x = format!("{}=", padded["x"].as_str().unwrap());
        padded["x"] = json!(x);
        let auth =
            auth_with(&[&format!("--jwt-jwks={}", json!({"keys": [padded]}))]).expect("auth");
        auth.verify(&signed("ES256", Some("p256"), &keys().p256))
            .expect("ES256");
    }
}
