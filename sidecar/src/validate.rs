//! What client input may hold, checked where it enters (the socket session and the REST
//! endpoints) and nowhere later.
//!
//! Invariants:
//! * Nothing PostgreSQL cannot store reaches a shared statement: the publisher writes many
//!   clients' messages in one `realtime._publish` call, so one unstorable message must be
//!   refused at its sender, not fail everyone's batch. Postgres `text` cannot hold U+0000;
//!   `jsonb` cannot hold it in a string or key (`\u0000`), nor a number beyond its range
//!   (JSON numbers that do not fit an `f64` are refused here, which is stricter than jsonb).
//! * Checks do not allocate for the common case: JSON is walked with a visitor, not built.
//! * Refs are echoed by every reply, so they are bounded ([`MAX_REF_BYTES`]). Topics are
//!   echoed too, even refused ones (a client matches a reply by topic and ref); what replies
//!   to oversized input can hold is bounded by the connection's `CLIENT_QUEUE_BYTES`.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::codec::Inbound;

/// Longest `ref` / `join_ref` a client may send, in bytes. Phoenix clients count refs up from
/// 1, so real ones are a few digits; every reply echoes them.
pub const MAX_REF_BYTES: usize = 64;

/// Whether the message's `ref` and `join_ref` fit [`MAX_REF_BYTES`].
pub fn refs_fit(msg: &Inbound) -> bool {
    [&msg.join_ref, &msg.msg_ref]
        .into_iter()
        .flatten()
        .all(|r| r.len() <= MAX_REF_BYTES)
}

/// Whether `text` can be stored as Postgres `text`.
pub fn text_storable(text: &str) -> bool {
    !text.contains('\0')
}

/// Whether the JSON document `raw` (already known to be valid JSON) can be stored as `jsonb`.
pub fn json_storable(raw: &str) -> bool {
    serde_json::from_str::<Storable>(raw).is_ok()
}

/// Whether a parsed JSON value can be stored as `jsonb`. Its numbers fit (they were parsed).
pub fn value_storable(value: &Value) -> bool {
    match value {
        Value::String(s) => text_storable(s),
        Value::Array(items) => items.iter().all(value_storable),
        Value::Object(map) => map
            .iter()
            .all(|(k, v)| text_storable(k) && value_storable(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => true,
    }
}

/// A JSON value walked for storability; deserializing it fails on an unstorable part.
struct Storable;

impl<'de> Deserialize<'de> for Storable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StorableVisitor)
    }
}

struct StorableVisitor;

impl<'de> Visitor<'de> for StorableVisitor {
    type Value = Storable;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value PostgreSQL can store")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Storable, E> {
        Ok(Storable)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Storable, E> {
        Ok(Storable)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Storable, E> {
        Ok(Storable)
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Storable, E> {
        if n.is_finite() {
            Ok(Storable)
        } else {
            Err(E::custom("number out of range"))
        }
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Storable, E> {
        if text_storable(s) {
            Ok(Storable)
        } else {
            Err(E::custom("U+0000 in a string"))
        }
    }

    fn visit_unit<E>(self) -> Result<Storable, E> {
        Ok(Storable)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Storable, A::Error> {
        while seq.next_element::<Storable>()?.is_some() {}
        Ok(Storable)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Storable, A::Error> {
        while map.next_key::<Storable>()?.is_some() {
            map.next_value::<Storable>()?;
        }
        Ok(Storable)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nul_anywhere_is_refused() {
        assert!(json_storable(r#"{"a":[1,"x",{"b":null}],"c":true}"#));
        assert!(json_storable(r#""\u0001 é \ud83d\ude00""#));
        for bad in [
            r#"{"a":"\u0000"}"#,
            r#"{"\u0000":1}"#,
            r#"[[["x\u0000y"]]]"#,
            r#""\u0000""#,
        ] {
            assert!(!json_storable(bad), "{bad}");
        }
        assert!(!text_storable("a\0b"));
        assert!(text_storable("room-ü"));
        assert!(!value_storable(&json!({"k": ["\u{0}"]})));
        assert!(!value_storable(&json!({"\u{0}": 1})));
        assert!(value_storable(&json!({"k": [1, "v"]})));
    }

    #[test]
    fn refs_are_bounded() {
        let msg = |join_ref: &str, msg_ref: &str| {
            let frame = json!([join_ref, msg_ref, "phoenix", "heartbeat", {}]).to_string();
            crate::codec::decode_text(crate::codec::Vsn::V2, &frame).expect("frame")
        };
        let fits = "9".repeat(MAX_REF_BYTES);
        let over = "9".repeat(MAX_REF_BYTES + 1);
        assert!(refs_fit(&msg("1", "2")));
        assert!(refs_fit(&msg(&fits, &fits)));
        assert!(!refs_fit(&msg(&over, "2")));
        assert!(!refs_fit(&msg("1", &over)));
        // Multi-byte characters count in bytes.
        assert!(!refs_fit(&msg("1", &"é".repeat(MAX_REF_BYTES / 2 + 1))));
    }

    #[test]
    fn numbers_out_of_range_and_lone_surrogates_are_refused() {
        assert!(json_storable(
            "[1e308, -1e308, 12345678901234567890, 1e-400]"
        ));
        assert!(!json_storable("[1e400]"));
        assert!(!json_storable(r#"{"a":"\ud800"}"#));
    }
}
