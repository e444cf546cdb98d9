//! Property checks of the sidecar's parsers of untrusted input, shared by the libFuzzer targets
//! (`fuzz_targets/`, run by `scripts/fuzz.sh`) and the stable regression tests (`tests/`).
//!
//! Invariants:
//! * Every check takes arbitrary bytes and either returns or panics; a panic is a finding, be it
//!   a panic inside the sidecar or a violated property. No check depends on the order of inputs.
//! * A property is stated against a model written here from the protocol (docs/protocol.md
//!   §1.5–1.7 frames, §6 filters, §1.3 tokens), never by calling the code under test a second way.
//! * Signing keys are the sidecar's test fixtures (`sidecar/tests/fixtures`); nothing here is a
//!   secret.

pub mod codec;
pub mod filter;
mod json;
pub mod jwt;
mod keys;

/// A property check: returns, or panics with the finding.
pub type Check = fn(&[u8]);

/// Every libFuzzer target, by name: the check it runs.
pub const TARGETS: [(&str, Check); 7] = [
    ("codec_text", codec::text),
    ("codec_binary", codec::binary),
    ("codec_roundtrip", codec::roundtrip),
    ("filter_text", filter::text),
    ("filter_binding", filter::binding),
    ("jwt_verify", jwt::verify),
    ("jwks_config", jwt::jwks),
];
