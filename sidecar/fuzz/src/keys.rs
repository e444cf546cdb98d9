//! The key ring of the JWT checks: the keys the sidecar is configured with, an attacker's keys
//! of every family, and HMAC keys made of the configured keys' public material (the
//! algorithm-confusion attack). Tokens are signed here, independently of the verifier.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use p521::ecdsa::signature::Signer as _;
use serde_json::{json, Value};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

/// `JWT_SECRET` of the verifier under test.
pub const SECRET: &str = "fuzz-secret-jwt-token-with-at-least-32-characters";
const OCT: &[u8] = b"the-oct-jwk-secret-of-the-fuzz-targets-0123";

/// Key material a verifier must hold for a signature of this signer to be accepted.
#[derive(Debug, PartialEq)]
pub enum Public {
    Hmac(Vec<u8>),
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec { x: Vec<u8>, y: Vec<u8> },
    Okp { x: Vec<u8> },
}

enum Signing {
    Hmac(Vec<u8>),
    Der(EncodingKey),
    P521(p521::ecdsa::SigningKey),
}

pub struct Signer {
    /// Also its `kid` in a JWKS.
    pub name: &'static str,
    /// Whether the verifier under test is configured with this key.
    pub configured: bool,
    /// Header `alg` spellings it signs with.
    pub algs: &'static [&'static str],
    pub public: Public,
    /// Its public JWK (`kid` = name, no `alg`); `None` for `JWT_SECRET`-style keys.
    pub jwk: Option<Value>,
    signing: Signing,
}

const HS: &[&str] = &["HS256", "HS384", "HS512"];
const RS: &[&str] = &["RS256", "RS384", "RS512"];

impl Signer {
    /// A compact JWS of `claims` under `header`; the header's `alg` must be one of `algs`.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let alg_name = header["alg"].as_str().expect("header alg");
        let alg = match alg_name {
            "Ed25519" => Algorithm::EdDSA,
            "ES512" => Algorithm::ES256, // unused: P-521 signs below
            other => other.parse().expect("known alg"),
        };
        let sig = match &self.signing {
            Signing::Hmac(k) => {
                jsonwebtoken::crypto::sign(input.as_bytes(), &EncodingKey::from_secret(k), alg)
                    .expect("HMAC signs")
            }
            Signing::Der(k) => jsonwebtoken::crypto::sign(input.as_bytes(), k, alg).expect("signs"),
            Signing::P521(k) => {
                let sig: p521::ecdsa::Signature = k.sign(input.as_bytes());
                b64(&sig.to_bytes())
            }
        };
        format!("{input}.{sig}")
    }
}

fn der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).expect("PEM base64")
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).expect("key fixture")
}

fn b64_member(jwk: &Value, member: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(jwk[member].as_str().expect("JWK member"))
        .expect("JWK base64")
}

fn hmac(name: &'static str, configured: bool, key: &[u8], jwk: bool) -> Signer {
    Signer {
        name,
        configured,
        algs: HS,
        public: Public::Hmac(key.to_vec()),
        jwk: jwk.then(|| json!({"kty": "oct", "kid": name, "k": URL_SAFE_NO_PAD.encode(key)})),
        signing: Signing::Hmac(key.to_vec()),
    }
}

/// A key of a PEM fixture, its public JWK derived by jsonwebtoken.
fn der_key(name: &'static str, configured: bool, file: &str, alg: Algorithm) -> Signer {
    let der = der(&fixture(file));
    let (key, algs): (_, &'static [&'static str]) = match alg {
        Algorithm::RS256 => (EncodingKey::from_rsa_der(&der), RS),
        Algorithm::ES256 => (EncodingKey::from_ec_der(&der), &["ES256"]),
        Algorithm::ES384 => (EncodingKey::from_ec_der(&der), &["ES384"]),
        Algorithm::EdDSA => (EncodingKey::from_ed_der(&der), &["EdDSA", "Ed25519"]),
        _ => unreachable!("no fixture for {alg:?}"),
    };
    let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&key, alg).expect("public JWK"))
        .expect("JWK JSON");
    let obj = jwk.as_object_mut().expect("JWK object");
    obj.remove("alg");
    obj.insert("kid".into(), json!(name));
    let public = match alg {
        Algorithm::RS256 => Public::Rsa {
            n: b64_member(&jwk, "n"),
            e: b64_member(&jwk, "e"),
        },
        Algorithm::EdDSA => Public::Okp {
            x: b64_member(&jwk, "x"),
        },
        _ => Public::Ec {
            x: b64_member(&jwk, "x"),
            y: b64_member(&jwk, "y"),
        },
    };
    Signer {
        name,
        configured,
        algs,
        public,
        jwk: Some(jwk),
        signing: Signing::Der(key),
    }
}

/// A P-521 key from a fixed scalar (jsonwebtoken has no ES512).
fn p521_key(name: &'static str, configured: bool, fill: u8) -> Signer {
    let mut scalar = [fill; 66];
    scalar[0] = 0x01; // below the group order
    let key = p521::ecdsa::SigningKey::from_slice(&scalar).expect("P-521 scalar");
    let point = p521::ecdsa::VerifyingKey::from(&key).to_encoded_point(false);
    let (x, y) = point.as_bytes()[1..].split_at(66);
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    Signer {
        name,
        configured,
        algs: &["ES512"],
        public: Public::Ec {
            x: x.to_vec(),
            y: y.to_vec(),
        },
        jwk: Some(json!({"kty": "EC", "crv": "P-521", "kid": name, "x": b64(x), "y": b64(y)})),
        signing: Signing::P521(key),
    }
}

pub struct Ring {
    pub signers: Vec<Signer>,
    /// The JWKS of the configured keys.
    pub jwks: Value,
    /// Tokens of asymmetric keys, signed once: (signer, header, claims) → token.
    cache: Mutex<HashMap<(usize, String, String), String>>,
}

impl Ring {
    /// A token of signer `i`; public-key signatures (milliseconds each) are signed once.
    pub fn token(&self, i: usize, header: &Value, claims: &Value) -> String {
        let signer = &self.signers[i];
        if matches!(signer.signing, Signing::Hmac(_)) {
            return signer.sign(header, claims);
        }
        let key = (i, header.to_string(), claims.to_string());
        let mut cache = self.cache.lock().expect("token cache");
        if let Some(token) = cache.get(&key) {
            return token.clone();
        }
        let token = signer.sign(header, claims);
        // Bounded: the callers draw from a few thousand combinations.
        if cache.len() < 20_000 {
            cache.insert(key, token.clone());
        }
        token
    }

    pub fn index(&self, name: &str) -> usize {
        self.signers
            .iter()
            .position(|s| s.name == name)
            .expect("signer")
    }
}

pub fn ring() -> &'static Ring {
    static RING: OnceLock<Ring> = OnceLock::new();
    RING.get_or_init(|| {
        let rsa_a = der_key("rsa-a", true, "rsa-a.pem", Algorithm::RS256);
        let p256 = der_key("p256", true, "ec-p256-a.pem", Algorithm::ES256);
        let ed = der_key("ed", true, "ed25519-a.pem", Algorithm::EdDSA);
        // What an attacker may try as an HMAC key: the configured keys' public parts.
        let pub_pem = fixture("rsa-a.pub.pem");
        let jwk_text = |s: &Signer| s.jwk.as_ref().expect("JWK").to_string();
        let xy = |s: &Signer| match &s.public {
            Public::Ec { x, y } => [x.as_slice(), y].concat(),
            Public::Okp { x } => x.clone(),
            _ => unreachable!(),
        };
        let n = match &rsa_a.public {
            Public::Rsa { n, .. } => n.clone(),
            _ => unreachable!(),
        };
        let confusion = [
            hmac("rsa-a", false, pub_pem.as_bytes(), false),
            hmac("rsa-a", false, &der(&pub_pem), false),
            hmac("rsa-a", false, &n, false),
            hmac("rsa-a", false, jwk_text(&rsa_a).as_bytes(), false),
            hmac("p256", false, &xy(&p256), false),
            hmac("p256", false, jwk_text(&p256).as_bytes(), false),
            hmac("ed", false, &xy(&ed), false),
        ];
        let mut signers = vec![
            hmac("secret", true, SECRET.as_bytes(), false),
            hmac("oct-1", true, OCT, true),
            rsa_a,
            p256,
            der_key("p384", true, "ec-p384-a.pem", Algorithm::ES384),
            p521_key("p521", true, 0x33),
            ed,
            hmac(
                "evil-secret",
                false,
                b"an-attackers-guess-at-the-secret",
                false,
            ),
            hmac("evil-oct", false, b"an-attackers-oct-key", true),
            der_key("rsa-b", false, "rsa-b.pem", Algorithm::RS256),
            der_key("p256-b", false, "ec-p256-b.pem", Algorithm::ES256),
            p521_key("p521-b", false, 0x66),
            der_key("ed-b", false, "ed25519-b.pem", Algorithm::EdDSA),
        ];
        signers.extend(confusion);
        let jwks = json!({"keys": signers
            .iter()
            .filter(|s| s.configured)
            .filter_map(|s| s.jwk.clone())
            .collect::<Vec<_>>()});
        Ring {
            signers,
            jwks,
            cache: Mutex::new(HashMap::new()),
        }
    })
}
