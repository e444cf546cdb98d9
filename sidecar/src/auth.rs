//! JWT verification for connection tokens (`x-api-key` / `apikey`) and channel access tokens.
//!
//! Rules (Supabase Realtime `ChannelsAuthorization.authorize_conn`, PROTOCOL.md §1.3, §3.5):
//! * the raw token is URL-decoded, then all whitespace is removed;
//! * only HS256/HS384/HS512 signed with the configured secret are accepted (`jsonwebtoken` does
//!   the parsing and the constant-time signature check);
//! * checks run in Realtime's order: malformed → signature → `exp` in the past → `role`/`exp`
//!   present → `exp` numeric → `iat` numeric if present.
//!
//! `Auth` is immutable after start-up and shared by every connection.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value};

use crate::error::AuthError;

/// Verified claims of a token.
#[derive(Debug, Clone)]
pub struct Claims {
    /// `exp`, seconds since the Unix epoch; always in the future when verified.
    pub exp: i64,
    /// All claims, kept for RLS (`request.jwt.claims`) in later issues.
    pub all: Map<String, Value>,
}

pub struct Auth {
    key: DecodingKey,
    validation: Validation,
}

impl Auth {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
        // Claims are checked below, in Realtime's order and with its messages.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        Auth {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    pub fn verify(&self, raw: &str) -> Result<Claims, AuthError> {
        self.verify_at(raw, unix_now())
    }

    fn verify_at(&self, raw: &str, now: i64) -> Result<Claims, AuthError> {
        let token = clean_token(raw).ok_or(AuthError::Malformed)?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(&token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::Signature,
                ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => AuthError::Signer,
                _ => AuthError::Malformed,
            })?;
        let claims = data.claims;
        let exp = claims.get("exp").map(|v| v.as_f64().map(|f| f as i64));
        if let Some(Some(exp)) = exp {
            if exp <= now {
                return Err(AuthError::Expired {
                    secs_ago: now - exp,
                });
            }
        }
        if !claims.contains_key("role") || exp.is_none() {
            return Err(AuthError::MissingClaims);
        }
        let Some(Some(exp)) = exp else {
            return Err(AuthError::InvalidExp);
        };
        if claims.get("iat").is_some_and(|iat| !iat.is_number()) {
            return Err(AuthError::Malformed);
        }
        Ok(Claims { exp, all: claims })
    }
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
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    use super::*;

    pub const SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";

    pub fn token_with(alg: Algorithm, secret: &str, claims: &Value) -> String {
        encode(
            &Header::new(alg),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode test token")
    }

    pub fn token(claims: &Value) -> String {
        token_with(Algorithm::HS256, SECRET, claims)
    }

    pub fn valid_token() -> String {
        token(&json!({"role": "anon", "exp": unix_now() + 3600, "iat": unix_now()}))
    }

    fn auth() -> Auth {
        Auth::new(SECRET)
    }

    #[test]
    fn accepts_hs256_384_512() {
        let claims = json!({"role": "authenticated", "exp": unix_now() + 60, "sub": "u1"});
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let c = auth()
                .verify(&token_with(alg, SECRET, &claims))
                .expect("valid");
            assert_eq!(c.all["sub"], "u1");
        }
    }

    #[test]
    fn bad_signature() {
        let t = token_with(
            Algorithm::HS256,
            "other",
            &json!({"role": "anon", "exp": unix_now() + 60}),
        );
        assert_eq!(auth().verify(&t).unwrap_err(), AuthError::Signature);
    }

    #[test]
    fn missing_claims() {
        let no_exp = token(&json!({"role": "anon"}));
        assert_eq!(
            auth().verify(&no_exp).unwrap_err(),
            AuthError::MissingClaims
        );
        let no_role = token(&json!({"exp": unix_now() + 60}));
        assert_eq!(
            auth().verify(&no_role).unwrap_err(),
            AuthError::MissingClaims
        );
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
    fn non_numeric_exp_and_iat() {
        let t = token(&json!({"role": "anon", "exp": "soon"}));
        assert_eq!(auth().verify(&t).unwrap_err(), AuthError::InvalidExp);
        let t = token(&json!({"role": "anon", "exp": unix_now() + 60, "iat": "now"}));
        assert_eq!(auth().verify(&t).unwrap_err(), AuthError::Malformed);
    }

    #[test]
    fn not_a_jwt() {
        for t in ["", "abc", "a.b.c", "sb_publishable_xyz", "%E0%A4%A"] {
            assert_eq!(auth().verify(t).unwrap_err(), AuthError::Malformed, "{t:?}");
        }
    }

    #[test]
    fn unsupported_algorithm() {
        // An RS256 header with an HMAC body: no signer for it.
        let good = valid_token();
        let mut parts = good.split('.');
        let (_, body, sig) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let header = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9"; // {"alg":"RS256","typ":"JWT"}
        let t = format!("{header}.{body}.{sig}");
        assert_eq!(auth().verify(&t).unwrap_err(), AuthError::Signer);
    }

    #[test]
    fn whitespace_and_url_encoding_are_stripped() {
        let t = valid_token();
        let (head, rest) = t.split_at(10);
        let messy = format!(" {head}\n{}%20", rest.replace('.', "%2E"));
        auth().verify(&messy).expect("cleaned token verifies");
    }
}
