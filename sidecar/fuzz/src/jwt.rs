//! JWT verification properties (docs/protocol.md §1.3, §3.5).
//!
//! * [`verify`]: a token signed by any key of the ring (the configured keys, an attacker's keys
//!   of every family, HMAC keys made of the configured public keys), with generated claims and
//!   header, then mutated (signature bits flipped or cut, `alg` rewritten or `none`, claims or
//!   signature swapped, bytes edited, whitespace or percent-escapes inserted, or replaced by
//!   arbitrary text). The verifier never panics and accepts the token only if, once URL-decoded
//!   and stripped of whitespace as the sidecar reads it, it is the token as signed, by a
//!   configured key that fits its `alg` and `kid`, with valid claims (`role` a string, `exp` a
//!   number in the future, `iat` a number when present); then the claims it returns are exactly
//!   the signed ones. Tokens that must verify (a configured key, valid claims) do.
//! * [`jwks`]: an arbitrary or mangled JWKS (and secret) is taken or refused at start-up without
//!   a panic; once taken, a token is accepted only when the configuration holds the key that
//!   signed it (an `oct` member or the secret equal to the HMAC key; a JWK with the token's
//!   `kid` and the signer's public numbers), and a configured unmodified key verifies its
//!   tokens.

use std::sync::OnceLock;

use arbitrary::{Result, Unstructured};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clap::Parser;
use percent_encoding::percent_decode_str;
use pg_realtime_sidecar::auth::{unix_now, Auth};
use pg_realtime_sidecar::config::Config;
use serde_json::{json, Map, Value};

use crate::json;
use crate::keys::{ring, Public, Signer, SECRET};

/// Whether the verifier refuses a token whose `nbf` is in the future (issue 10, finding 6; it
/// accepted one before). The regression test `nbf_in_the_future` fails unless this matches.
pub const NBF_HONOURED: bool = true;

/// The verifier's `ALLOWED_ROLES` (the default); a token naming another role is refused.
const ROLES: [&str; 3] = ["anon", "authenticated", "service_role"];

/// What the verifier must do with a token as signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Accept,
    /// Either answer is right (an `exp` beyond the range of a timestamp, a rule not enforced).
    Either,
    Reject,
}

impl Verdict {
    fn and(self, other: Verdict) -> Verdict {
        match (self, other) {
            (Verdict::Reject, _) | (_, Verdict::Reject) => Verdict::Reject,
            (Verdict::Either, _) | (_, Verdict::Either) => Verdict::Either,
            _ => Verdict::Accept,
        }
    }
}

/// Times are fixed when the process starts, far enough from it to hold for years of fuzzing.
fn t0() -> i64 {
    static T0: OnceLock<i64> = OnceLock::new();
    *T0.get_or_init(unix_now)
}

const YEARS: i64 = 10 * 365 * 86_400;

/// Generated claims and what they call for.
struct Claims {
    value: Value,
    verdict: Verdict,
    role: Option<String>,
    exp: Option<i64>,
}

fn claims(u: &mut Unstructured, free: bool) -> Result<Claims> {
    let t0 = t0();
    let mut map = Map::new();
    let mut verdict = Verdict::Accept;
    let mut role = None;
    // Public-key tokens are signed once per distinct (header, claims) and signing is slow
    // (milliseconds with coverage instrumentation), so their claims come from a small set; HMAC
    // tokens carry every variant.
    let role_choice = if free {
        u.choose_index(9)?
    } else {
        *u.choose(&[1, 3])?
    };
    match role_choice {
        0..=2 => role = Some(ROLES[role_choice].to_owned()),
        3 => role = Some("postgres".to_owned()),
        4 => role = Some(String::new()),
        5 => verdict = Verdict::Reject, // no role
        6 => {
            map.insert("role".into(), json!(7));
            verdict = Verdict::Reject;
        }
        7 => {
            map.insert("role".into(), Value::Null);
            verdict = Verdict::Reject;
        }
        _ => role = Some(json::string(u)?),
    }
    if let Some(r) = &role {
        map.insert("role".into(), json!(r));
        if !ROLES.contains(&r.as_str()) {
            verdict = Verdict::Reject;
        }
    }
    let exp_choice = if free {
        u.choose_index(10)?
    } else {
        *u.choose(&[0, 2])?
    };
    let (exp_value, exp, exp_verdict) = match exp_choice {
        0 | 1 => (Some(json!(t0 + YEARS)), Some(t0 + YEARS), Verdict::Accept),
        2 => (Some(json!(t0 - 3600)), None, Verdict::Reject),
        3 => (Some(json!(t0)), None, Verdict::Reject), // exp == now is expired
        4 => (
            Some(json!(t0 as f64 + YEARS as f64 + 0.5)),
            Some(t0 + YEARS),
            Verdict::Accept,
        ),
        5 => (Some(json!(1e300)), Some(i64::MAX), Verdict::Either),
        6 => (Some(json!(-1)), None, Verdict::Reject),
        7 => (Some(json!((t0 + YEARS).to_string())), None, Verdict::Reject),
        8 => (Some(Value::Null), None, Verdict::Reject),
        _ => (None, None, Verdict::Reject),
    };
    if let Some(v) = exp_value {
        map.insert("exp".into(), v);
    }
    verdict = verdict.and(exp_verdict);
    let nbf_refused = if NBF_HONOURED {
        Verdict::Reject
    } else {
        Verdict::Either
    };
    let (nbf, v) = match u.choose_index(if free { 5 } else { 1 })? {
        0 | 1 => (None, Verdict::Accept),
        2 => (Some(json!(t0 - 3600)), Verdict::Accept),
        3 => (Some(json!(t0 + YEARS)), nbf_refused),
        _ => (Some(json!("soon")), nbf_refused),
    };
    if let Some(nbf) = nbf {
        map.insert("nbf".into(), nbf);
    }
    verdict = verdict.and(v);
    let (iat, v) = match u.choose_index(if free { 4 } else { 2 })? {
        0 => (None, Verdict::Accept),
        1 => (Some(json!(t0)), Verdict::Accept),
        2 => (Some(json!("now")), Verdict::Reject),
        _ => (Some(Value::Null), Verdict::Reject),
    };
    if let Some(iat) = iat {
        map.insert("iat".into(), iat);
    }
    verdict = verdict.and(v);
    if free {
        // More claims, which RLS policies read; they must come back unchanged.
        for _ in 0..u.int_in_range(0..=3)? {
            let key = json::string(u)?;
            if !["role", "exp", "nbf", "iat"].contains(&key.as_str()) {
                map.insert(key, json::value(u, 2, false)?);
            }
        }
    } else {
        map.insert("sub".into(), json!("user-1"));
    }
    Ok(Claims {
        value: Value::Object(map),
        verdict,
        role,
        exp,
    })
}

/// Kids a header may name: the signer's own, none, each configured one, unknown ones.
const KIDS: [&str; 7] = ["secret", "oct-1", "rsa-a", "p256", "p384", "p521", "ed"];

fn kid(u: &mut Unstructured, own: &str, free: bool) -> Result<Option<String>> {
    Ok(match u.choose_index(if free { 5 } else { 4 })? {
        0 | 1 => Some(own.to_owned()),
        2 => None,
        3 => Some((*u.choose(&KIDS)?).to_owned()),
        _ => Some(json::string(u)?),
    })
}

/// Which configured key the verifier must use for a header (docs/protocol.md §1.3): the JWKS
/// key with the header's `kid` that fits its `alg`, else the secret for HS tokens.
fn key_verdict(signer: &Signer, alg: &str, kid: Option<&str>) -> Verdict {
    if !signer.configured {
        return Verdict::Reject;
    }
    let jwks_fits = |kid: &str| match kid {
        "oct-1" => alg.starts_with("HS"),
        "rsa-a" => alg.starts_with("RS"),
        "p256" => alg == "ES256",
        "p384" => alg == "ES384",
        "p521" => alg == "ES512",
        "ed" => alg == "EdDSA" || alg == "Ed25519",
        _ => false,
    };
    match (signer.name, kid) {
        // HS without a fitting JWKS key falls back to the secret.
        ("secret", Some(kid)) if jwks_fits(kid) => Verdict::Reject,
        ("secret", _) => Verdict::Accept,
        (name, Some(kid)) if name == kid => Verdict::Accept,
        _ => Verdict::Reject,
    }
}

/// The token as the sidecar reads it: URL-decoded, whitespace removed.
fn clean(raw: &str) -> Option<String> {
    let decoded = percent_decode_str(raw).decode_utf8().ok()?;
    Some(decoded.chars().filter(|c| !c.is_whitespace()).collect())
}

const ALGS: [&str; 16] = [
    "none", "None", "NONE", "HS256", "HS384", "HS512", "RS256", "RS512", "ES256", "ES384", "ES512",
    "EdDSA", "Ed25519", "PS256", "hs256", "",
];

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// One of the attacks on a signed token (or none).
fn mutate(u: &mut Unstructured, token: &str, header: &Value) -> Result<String> {
    let (input, sig) = token.rsplit_once('.').expect("compact JWS");
    let (h, c) = input.split_once('.').expect("compact JWS");
    let sig_bytes = URL_SAFE_NO_PAD.decode(sig).expect("signature base64");
    let with_alg = |alg: &str| {
        let mut header = header.clone();
        header["alg"] = json!(alg);
        b64(header.to_string().as_bytes())
    };
    Ok(match u.choose_index(14)? {
        0 | 1 => token.to_owned(),
        2 => {
            let mut s = sig_bytes;
            let bit = u.choose_index(s.len() * 8)?;
            s[bit / 8] ^= 1 << (bit % 8);
            format!("{input}.{}", b64(&s))
        }
        3 => {
            let keep = u.choose_index(sig.len())?;
            format!("{input}.{}", &sig[..keep])
        }
        4 => input.to_owned(),
        5 => {
            let alg = *u.choose(&ALGS[..3])?;
            let sig = if u.arbitrary()? { sig } else { "" };
            format!("{}.{c}.{sig}", with_alg(alg))
        }
        6 => format!("{}.{c}.{sig}", with_alg(u.choose(&ALGS)?)),
        7 => {
            let other = claims(u, true)?.value;
            format!("{h}.{}.{sig}", b64(other.to_string().as_bytes()))
        }
        8 => {
            let mut s = sig_bytes;
            s.truncate(u.choose_index(s.len().max(1))?);
            s.extend(u.arbitrary::<Vec<u8>>()?);
            format!("{input}.{}", b64(&s))
        }
        9 => {
            let mut bytes = token.as_bytes().to_vec();
            let at = u.choose_index(bytes.len())?;
            bytes[at] = u.arbitrary()?;
            String::from_utf8_lossy(&bytes).into_owned()
        }
        10 => {
            // Same token as the sidecar reads it: whitespace or a percent-escape inserted.
            let at = u.choose_index(token.len() + 1)?;
            let insert = *u.choose(&[" ", "\n", "\t", "\u{a0}", "%20", "%0A"])?;
            format!("{}{insert}{}", &token[..at], &token[at..])
        }
        11 => {
            let at = u.choose_index(token.len())?;
            let escaped = format!("%{:02X}", token.as_bytes()[at]);
            format!("{}{escaped}{}", &token[..at], &token[at + 1..])
        }
        12 => {
            // Header of one signature, claims and signature of another.
            let other = claims(u, true)?.value;
            let header = json!({"alg": "HS256", "typ": "JWT"});
            let evil = ring().token(ring().index("evil-secret"), &header, &other);
            let (_, evil_sig) = evil.rsplit_once('.').expect("compact JWS");
            format!("{input}.{evil_sig}")
        }
        _ => u.arbitrary::<String>()?,
    })
}

fn verifier() -> &'static Auth {
    static AUTH: OnceLock<Auth> = OnceLock::new();
    AUTH.get_or_init(|| {
        let mut config = config();
        config.jwt_secret = Some(SECRET.to_owned());
        config.jwt_jwks = Some(ring().jwks.to_string());
        Auth::from_config(&config).expect("the ring's keys are valid")
    })
}

/// Defaults, whatever the environment says (clap also reads `JWT_*` variables).
fn config() -> Config {
    let mut config =
        Config::try_parse_from(["fuzz", "--database-url=postgres://fuzz@127.0.0.1:1/fuzz"])
            .expect("config");
    config.jwt_secret = None;
    config.jwt_jwks = None;
    config.jwt_jwks_file = None;
    config.jwt_iss = None;
    config.jwt_aud = None;
    config.allowed_roles = ROLES.map(str::to_owned).to_vec();
    config
}

pub fn verify(data: &[u8]) {
    let _ = verify_case(&mut Unstructured::new(data));
}

fn verify_case(u: &mut Unstructured) -> Result<()> {
    let ring = ring();
    let i = u.choose_index(ring.signers.len())?;
    let signer = &ring.signers[i];
    let free = matches!(signer.public, Public::Hmac(_));
    let alg = *u.choose(signer.algs)?;
    let kid = kid(u, signer.name, free)?;
    let mut header = json!({"alg": alg});
    if free && u.arbitrary()? {
        header["typ"] = json!("JWT");
    }
    if let Some(kid) = &kid {
        header["kid"] = json!(kid);
    }
    let claims = claims(u, free)?;
    let token = ring.token(i, &header, &claims.value);
    let verdict = key_verdict(signer, alg, kid.as_deref()).and(claims.verdict);
    let sent = mutate(u, &token, &header)?;
    let verdict = if clean(&sent).as_deref() == Some(token.as_str()) {
        verdict
    } else {
        Verdict::Reject
    };
    match verifier().verify(&sent) {
        Ok(got) => {
            assert_ne!(
                verdict,
                Verdict::Reject,
                "accepted {sent:?}: signer {}, alg {alg}, kid {kid:?}, claims {}",
                signer.name,
                claims.value
            );
            assert_eq!(Some(got.role.as_str()), claims.role.as_deref());
            assert_eq!(Some(got.exp), claims.exp);
            let json: Value = serde_json::from_str(&got.json).expect("claims JSON");
            assert_eq!(
                json, claims.value,
                "claims passed on differ from the signed ones"
            );
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert_ne!(
                verdict,
                Verdict::Accept,
                "refused ({e}) {sent:?}: signer {}, alg {alg}, kid {kid:?}, claims {}",
                signer.name,
                claims.value
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// JWKS documents

const MEMBERS: [&str; 12] = [
    "kid", "kty", "crv", "alg", "use", "k", "n", "e", "x", "y", "key_ops", "x5c",
];

fn member_value(u: &mut Unstructured, member: &str, jwks: &[Value]) -> Result<Option<Value>> {
    let strings: &[&str] = match member {
        "kty" => &["oct", "RSA", "EC", "OKP", "rsa", ""],
        "crv" => &["P-256", "P-384", "P-521", "Ed25519", "X25519", "secp256k1"],
        "alg" => &ALGS,
        "use" => &["sig", "enc", "SIG"],
        "kid" => &["oct-1", "rsa-a", "p256", "p384", "p521", "ed", "rsa-b", ""],
        _ => &["AQAB", "AA", "", "=", "!!"],
    };
    Ok(match u.choose_index(7)? {
        0 => None,
        1 => Some(json!(*u.choose(strings)?)),
        2 | 3 => u.choose(jwks)?.get(member).cloned(),
        4 => Some(json!(b64(&u.arbitrary::<Vec<u8>>()?))),
        5 => {
            let pad = *u.choose(&["=", "==", "\n"])?;
            let v = u.choose(jwks)?.get(member).and_then(Value::as_str);
            v.map(|s| json!(format!("{s}{pad}")))
        }
        _ => Some(json::value(u, 1, true)?),
    })
}

fn jwk(u: &mut Unstructured, jwks: &[Value]) -> Result<Value> {
    if u.ratio(1, 8)? {
        return json::value(u, 2, true);
    }
    let mut jwk = u.choose(jwks)?.clone();
    for _ in 0..u.int_in_range(0..=3)? {
        let member = *u.choose(&MEMBERS)?;
        let obj = jwk.as_object_mut().expect("JWK object");
        match member_value(u, member, jwks)? {
            Some(v) => obj.insert(member.to_owned(), v),
            None => obj.remove(member),
        };
    }
    Ok(jwk)
}

/// The document's key objects, for checks against what it configures.
fn entries(doc: &Value) -> Vec<&Map<String, Value>> {
    doc.get("keys")
        .and_then(Value::as_array)
        .map(|keys| keys.iter().filter_map(Value::as_object).collect())
        .unwrap_or_default()
}

/// A JWK member's number or bytes, ignoring base64 padding and leading zero bytes.
fn member_bytes(jwk: &Map<String, Value>, member: &str) -> Option<Vec<u8>> {
    let text = jwk.get(member)?.as_str()?.trim_end_matches('=');
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    Some(bytes[start..].to_vec())
}

fn stripped(b: &[u8]) -> Vec<u8> {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    b[start..].to_vec()
}

/// Whether `doc` (or the secret) holds the key that signed a token with this `kid`.
fn configured(signer: &Signer, kid: Option<&str>, doc: &Value, secret: Option<&str>) -> bool {
    if let (Public::Hmac(k), Some(s)) = (&signer.public, secret) {
        if !s.trim().is_empty() && s.as_bytes() == k.as_slice() {
            return true;
        }
    }
    let Some(kid) = kid else {
        return false;
    };
    entries(doc).into_iter().any(|jwk| {
        let is = |member: &str, want: &str| jwk.get(member).and_then(Value::as_str) == Some(want);
        let eq = |member: &str, want: &[u8]| member_bytes(jwk, member) == Some(stripped(want));
        is("kid", kid)
            && match &signer.public {
                // `k` is a secret's bytes: leading zeros count.
                Public::Hmac(k) => {
                    is("kty", "oct")
                        && jwk
                            .get("k")
                            .and_then(Value::as_str)
                            .and_then(|t| URL_SAFE_NO_PAD.decode(t.trim_end_matches('=')).ok())
                            .is_some_and(|b| b == *k)
                }
                Public::Rsa { n, e } => is("kty", "RSA") && eq("n", n) && eq("e", e),
                Public::Ec { x, y } => is("kty", "EC") && eq("x", x) && eq("y", y),
                Public::Okp { x } => is("kty", "OKP") && eq("x", x),
            }
    })
}

pub fn jwks(data: &[u8]) {
    let _ = jwks_case(&mut Unstructured::new(data));
}

fn jwks_case(u: &mut Unstructured) -> Result<()> {
    let ring = ring();
    let all: Vec<Value> = ring.signers.iter().filter_map(|s| s.jwk.clone()).collect();
    let (text, doc) = match u.choose_index(10)? {
        0 => {
            let text = u.arbitrary::<String>()?;
            let doc = serde_json::from_str(&text).unwrap_or(Value::Null);
            (text, doc)
        }
        1 => {
            let doc = json!({"keys": json::value(u, 2, true)?});
            (doc.to_string(), doc)
        }
        _ => {
            let n = u.int_in_range(0..=4)?;
            let keys = (0..n).map(|_| jwk(u, &all)).collect::<Result<Vec<_>>>()?;
            let doc = json!({ "keys": keys });
            (doc.to_string(), doc)
        }
    };
    let secret = *u.choose(&[None, Some(SECRET), Some(""), Some("  ")])?;
    let mut config = config();
    config.jwt_secret = secret.map(str::to_owned);
    config.jwt_jwks = Some(text);
    let auth = match Auth::from_config(&config) {
        Ok(auth) => auth,
        Err(message) => {
            assert!(!message.is_empty());
            return Ok(());
        }
    };
    for _ in 0..u.int_in_range(1..=2)? {
        let i = u.choose_index(ring.signers.len())?;
        let signer = &ring.signers[i];
        let alg = *u.choose(signer.algs)?;
        let kid = match u.choose_index(3)? {
            0 => None,
            1 => Some(signer.name.to_owned()),
            // Public-key tokens are cached: their kids come from a fixed set.
            _ if !matches!(signer.public, Public::Hmac(_)) => Some((*u.choose(&KIDS)?).to_owned()),
            _ => entries(&doc)
                .get(u.choose_index(4)?)
                .and_then(|jwk| jwk.get("kid"))
                .and_then(Value::as_str)
                .map(str::to_owned),
        };
        let mut header = json!({"alg": alg, "typ": "JWT"});
        if let Some(kid) = &kid {
            header["kid"] = json!(kid);
        }
        let claims = json!({"role": "authenticated", "exp": t0() + YEARS});
        let token = ring.token(i, &header, &claims);
        let accepted = auth.verify(&token).is_ok();
        let holds = configured(signer, kid.as_deref(), &doc, secret);
        assert!(
            !accepted || holds,
            "accepted a token of {} (alg {alg}, kid {kid:?}) that {doc} does not configure",
            signer.name
        );
        // The signer's unmodified JWK, the only one with its kid, must verify its tokens.
        let only_own = signer.jwk.as_ref().is_some_and(|own| {
            let same_kid: Vec<_> = entries(&doc)
                .into_iter()
                .filter(|jwk| jwk.get("kid") == own.get("kid"))
                .collect();
            same_kid.len() == 1 && Some(same_kid[0]) == own.as_object()
        });
        if only_own && kid.as_deref() == Some(signer.name) {
            assert!(
                accepted,
                "refused a token of {} with its own JWK",
                signer.name
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(alg: &str, kid: Option<&str>) -> Value {
        match kid {
            Some(kid) => json!({"alg": alg, "typ": "JWT", "kid": kid}),
            None => json!({"alg": alg, "typ": "JWT"}),
        }
    }

    fn valid_claims() -> Value {
        json!({"role": "authenticated", "exp": t0() + YEARS, "sub": "u1"})
    }

    /// The ring's model is not vacuous: every configured key verifies with its kid, every
    /// other key (an attacker's, or public material used as an HMAC secret) is refused.
    #[test]
    fn configured_keys_verify_and_others_do_not() {
        let ring = ring();
        for (i, signer) in ring.signers.iter().enumerate() {
            for alg in signer.algs {
                let kid = (signer.name != "secret").then_some(signer.name);
                let token = ring.token(i, &header(alg, kid), &valid_claims());
                let result = verifier().verify(&token);
                assert_eq!(
                    result.is_ok(),
                    signer.configured,
                    "{} {alg}: {result:?}",
                    signer.name
                );
                assert_eq!(
                    key_verdict(signer, alg, kid) == Verdict::Accept,
                    signer.configured
                );
            }
        }
    }

    #[test]
    fn alg_none_is_refused() {
        let claims = URL_SAFE_NO_PAD.encode(valid_claims().to_string());
        for alg in ["none", "None", "NONE", ""] {
            let head = URL_SAFE_NO_PAD.encode(header(alg, None).to_string());
            for token in [format!("{head}.{claims}."), format!("{head}.{claims}")] {
                assert!(verifier().verify(&token).is_err(), "{token}");
            }
        }
    }

    /// Issue 10, finding 6: `nbf` is to be honoured. Flip [`NBF_HONOURED`] when it is.
    #[test]
    fn nbf_in_the_future() {
        let claims = json!({"role": "anon", "exp": t0() + YEARS, "nbf": t0() + YEARS});
        let token = ring().token(ring().index("secret"), &header("HS256", None), &claims);
        assert_eq!(
            verifier().verify(&token).is_err(),
            NBF_HONOURED,
            "a token not valid before {} years from now: set NBF_HONOURED to match",
            YEARS / 365 / 86_400
        );
    }
}
