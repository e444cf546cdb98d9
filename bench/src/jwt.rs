//! Minimal HS256 JWT for the benchmark clients (claims: role, exp, iat, plus any extra ones).
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// `extra` claims (e.g. `sub`) are added as strings.
pub fn hs256(secret: &str, role: &str, ttl_secs: u64, extra: &[(&str, &str)]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let mut claims = serde_json::json!({"role": role, "iat": now, "exp": now + ttl_secs});
    for (k, v) in extra {
        claims[*k] = (*v).into();
    }
    let body = URL_SAFE_NO_PAD.encode(claims.to_string().as_bytes());
    let signing_input = format!("{header}.{body}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_rfc7515_style_vector() {
        // HMAC-SHA256("secret", "a.b") computed independently (python hmac module).
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(b"a.b");
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        assert_eq!(sig, "sbh7-OGGafGEtAYeHeo5APUejXcSJjSgpMkJURRbDuA");
        let t = hs256("secret", "anon", 60, &[("sub", "user-1")]);
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["role"], "anon");
        assert_eq!(claims["sub"], "user-1");
        assert!(claims["exp"].as_u64().unwrap() > claims["iat"].as_u64().unwrap());
    }
}
