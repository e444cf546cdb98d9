//! Phoenix serializers v1 (JSON objects) and v2 (JSON arrays + binary kinds 3 in / 4 out), as
//! specified in docs/protocol.md §1.5–1.7, §4.4–4.5.
//!
//! Invariants:
//! * Decoding never panics and never trusts a length field: every binary slice is bounds-checked
//!   against the frame, strings must be UTF-8 and JSON must parse, otherwise the frame is
//!   rejected with a [`DecodeError`].
//! * User payloads are carried as raw JSON text ([`RawValue`]) or raw bytes and written to
//!   subscribers verbatim, never re-encoded.
//! * v1 connections never receive a binary frame; a binary user payload is dropped for them.
//! * Kind 4 is used only when topic, event and metadata each fit in 255 bytes; otherwise a v2 JSON
//!   broadcast is sent instead (binary payloads cannot be, so they are dropped).
//! * [`Frame`] clones share their bytes, so one encoding serves every subscriber.

use axum::extract::ws::{Message, Utf8Bytes};
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::error::DecodeError;

/// Serializer negotiated by the `vsn` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vsn {
    V1,
    V2,
}

/// One encoded WebSocket message. Cloning is cheap (reference-counted bytes).
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Text(Utf8Bytes),
    Binary(Bytes),
}

impl Frame {
    /// Bytes of the encoded message (what it holds while queued).
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(t) => t.as_str().len(),
            Frame::Binary(b) => b.len(),
        }
    }
}

impl From<Frame> for Message {
    fn from(frame: Frame) -> Message {
        match frame {
            Frame::Text(t) => Message::Text(t),
            Frame::Binary(b) => Message::Binary(b),
        }
    }
}

/// A decoded client message.
#[derive(Debug)]
pub struct Inbound {
    pub join_ref: Option<String>,
    pub msg_ref: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: InPayload,
}

#[derive(Debug)]
pub enum InPayload {
    /// The payload of a JSON text frame, as sent.
    Json(Box<RawValue>),
    /// A binary kind-3 user broadcast (its event is always `broadcast`).
    User(UserBroadcast),
}

/// A user broadcast as carried by kinds 3/4: user event, payload and optional message id.
#[derive(Debug)]
pub struct UserBroadcast {
    pub event: String,
    pub payload: UserPayload,
    /// `meta.id` (set for messages that come from the database queue).
    pub meta_id: Option<String>,
}

#[derive(Debug)]
pub enum UserPayload {
    Json(Box<RawValue>),
    Binary(Bytes),
}

/// What the fan-out delivers as a `broadcast` event.
#[derive(Debug)]
pub enum Broadcast {
    /// Kind 4 to v2 subscribers, converted JSON to v1 subscribers.
    User(UserBroadcast),
    /// A JSON push payload (`{"type":"broadcast",...}`) forwarded verbatim as a JSON frame.
    Json(Box<RawValue>),
}

impl UserPayload {
    /// Size of the user payload as sent: JSON text or raw bytes.
    pub fn len(&self) -> usize {
        match self {
            UserPayload::Json(raw) => raw.get().len(),
            UserPayload::Binary(bytes) => bytes.len(),
        }
    }
}

impl Broadcast {
    /// The user event and payload (a JSON push's `event` and `payload`); `None` for a JSON push
    /// without a string `event`.
    pub fn user_parts(&self) -> Option<(String, UserPayload)> {
        match self {
            Broadcast::User(user) => {
                let payload = match &user.payload {
                    UserPayload::Json(raw) => UserPayload::Json(raw.clone()),
                    UserPayload::Binary(bytes) => UserPayload::Binary(bytes.clone()),
                };
                Some((user.event.clone(), payload))
            }
            Broadcast::Json(raw) => {
                #[derive(Deserialize)]
                struct Push<'a> {
                    event: String,
                    #[serde(borrow)]
                    payload: Option<&'a RawValue>,
                }
                let push: Push = serde_json::from_str(raw.get()).ok()?;
                let payload = push
                    .payload
                    .map_or_else(|| RawValue::NULL.to_owned(), |p| p.to_owned());
                Some((push.event, UserPayload::Json(payload)))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding

#[derive(Deserialize)]
struct V1In {
    topic: String,
    event: String,
    payload: Box<RawValue>,
    /// Required key (Phoenix `from_map!`), `null` allowed.
    #[serde(rename = "ref", deserialize_with = "nullable_string")]
    msg_ref: Option<String>,
    #[serde(default, deserialize_with = "nullable_string")]
    join_ref: Option<String>,
}

fn array_field<T: serde::de::DeserializeOwned>(raw: &RawValue) -> Result<T, DecodeError> {
    serde_json::from_str(raw.get()).map_err(|_| DecodeError::ArrayShape)
}

fn nullable_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)
}

pub fn decode_text(vsn: Vsn, text: &str) -> Result<Inbound, DecodeError> {
    let json_err = |e: serde_json::Error| DecodeError::Json(e.to_string());
    match vsn {
        Vsn::V1 => {
            // An object only, as Phoenix reads v1 (serde would take the fields from an array too).
            if !text.trim_start().starts_with('{') {
                return Err(DecodeError::Json(
                    "a v1 message is a JSON object".to_owned(),
                ));
            }
            let m: V1In = serde_json::from_str(text).map_err(json_err)?;
            Ok(Inbound {
                join_ref: m.join_ref,
                msg_ref: m.msg_ref,
                topic: m.topic,
                event: m.event,
                payload: InPayload::Json(m.payload),
            })
        }
        Vsn::V2 => {
            // `[join_ref, ref, topic, event, payload | extra]`: extra elements are ignored.
            let items: Vec<Box<RawValue>> = serde_json::from_str(text).map_err(json_err)?;
            let mut items = items.into_iter();
            let (Some(join_ref), Some(msg_ref), Some(topic), Some(event), Some(payload)) = (
                items.next(),
                items.next(),
                items.next(),
                items.next(),
                items.next(),
            ) else {
                return Err(DecodeError::ArrayShape);
            };
            Ok(Inbound {
                join_ref: array_field(&join_ref)?,
                msg_ref: array_field(&msg_ref)?,
                topic: array_field(&topic)?,
                event: array_field(&event)?,
                payload: InPayload::Json(payload),
            })
        }
    }
}

const KIND_USER_PUSH: u8 = 3;
const KIND_USER_BROADCAST: u8 = 4;
const ENCODING_BINARY: u8 = 0;
const ENCODING_JSON: u8 = 1;

/// Decode a binary frame: only kind 3 (user broadcast push) exists client-to-server.
///
/// Layout: `3, join_ref_len, ref_len, topic_len, event_len, metadata_len, encoding`, then the
/// five fields and the payload up to the end of the frame.
pub fn decode_binary(vsn: Vsn, frame: Bytes) -> Result<Inbound, DecodeError> {
    const HEADER: usize = 7;
    if vsn == Vsn::V1 {
        return Err(DecodeError::BinaryOnV1);
    }
    let header = frame.get(..HEADER).ok_or(DecodeError::Truncated)?;
    if header[0] != KIND_USER_PUSH {
        return Err(DecodeError::UnsupportedKind(header[0]));
    }
    let lens = [header[1], header[2], header[3], header[4], header[5]].map(usize::from);
    let encoding = header[6];
    let fields_end = HEADER + lens.iter().sum::<usize>();
    if fields_end > frame.len() {
        return Err(DecodeError::LengthMismatch);
    }
    let mut at = HEADER;
    let mut next = |len: usize| {
        let range = at..at + len;
        at += len;
        range
    };
    let text = |range: std::ops::Range<usize>, name| {
        std::str::from_utf8(&frame[range])
            .map(str::to_owned)
            .map_err(|_| DecodeError::NotUtf8(name))
    };
    let join_ref = text(next(lens[0]), "join_ref")?;
    let msg_ref = text(next(lens[1]), "ref")?;
    let topic = text(next(lens[2]), "topic")?;
    let event = text(next(lens[3]), "event")?;
    // Metadata (e.g. `{"persist":true}`) is validated but not used yet, like Realtime.
    let metadata = &frame[next(lens[4])];
    if !metadata.is_empty() && serde_json::from_slice::<&RawValue>(metadata).is_err() {
        return Err(DecodeError::BadJson("metadata"));
    }
    let body = frame.slice(fields_end..);
    let payload = match encoding {
        ENCODING_BINARY => UserPayload::Binary(body),
        ENCODING_JSON => {
            let text = std::str::from_utf8(&body).map_err(|_| DecodeError::NotUtf8("payload"))?;
            let raw = RawValue::from_string(text.to_owned())
                .map_err(|_| DecodeError::BadJson("payload"))?;
            UserPayload::Json(raw)
        }
        other => return Err(DecodeError::UnsupportedEncoding(other)),
    };
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    Ok(Inbound {
        join_ref: non_empty(join_ref),
        msg_ref: non_empty(msg_ref),
        topic,
        event: "broadcast".to_owned(),
        payload: InPayload::User(UserBroadcast {
            event,
            payload,
            meta_id: None,
        }),
    })
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// `phx_reply` payload.
#[derive(Serialize)]
pub struct Reply<R: Serialize> {
    pub status: &'static str,
    pub response: R,
}

#[derive(Serialize)]
struct V1Out<'a, P: Serialize + ?Sized> {
    topic: &'a str,
    event: &'a str,
    payload: &'a P,
    #[serde(rename = "ref")]
    msg_ref: Option<&'a str>,
}

/// Encode a JSON message. v1 carries no `join_ref` (Phoenix V1 serializer).
pub fn encode<P: Serialize + ?Sized>(
    vsn: Vsn,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: &P,
) -> Frame {
    let text = match vsn {
        Vsn::V1 => serde_json::to_string(&V1Out {
            topic,
            event,
            payload,
            msg_ref,
        }),
        Vsn::V2 => serde_json::to_string(&(join_ref, msg_ref, topic, event, payload)),
    };
    // Payloads are server-built values or already-validated raw JSON: serializing cannot fail.
    Frame::Text(Utf8Bytes::from(
        text.expect("JSON serialization of a valid message"),
    ))
}

#[derive(Serialize)]
struct Meta<'a> {
    id: &'a str,
}

/// `{"type":"broadcast","event":…,"payload":…,"meta":…}`: a user broadcast as JSON.
#[derive(Serialize)]
struct UserJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    event: &'a str,
    payload: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<Meta<'a>>,
}

/// Encode a `broadcast` for one serializer; `None` when it cannot be represented (binary
/// payload for v1, or for v2 when kind 4's 255-byte limits are exceeded).
pub fn encode_broadcast(vsn: Vsn, topic: &str, msg: &Broadcast) -> Option<Frame> {
    match msg {
        Broadcast::Json(payload) => Some(encode(vsn, None, None, topic, "broadcast", payload)),
        Broadcast::User(user) => {
            if vsn == Vsn::V2 {
                if let Some(frame) = encode_kind4(topic, user) {
                    return Some(frame);
                }
            }
            let UserPayload::Json(payload) = &user.payload else {
                return None;
            };
            let body = UserJson {
                kind: "broadcast",
                event: &user.event,
                payload,
                meta: user.meta_id.as_deref().map(|id| Meta { id }),
            };
            Some(encode(vsn, None, None, topic, "broadcast", &body))
        }
    }
}

/// Kind 4: `4, topic_len, event_len, metadata_len, encoding, topic, event, metadata, payload`.
fn encode_kind4(topic: &str, user: &UserBroadcast) -> Option<Frame> {
    let metadata = match &user.meta_id {
        Some(id) => serde_json::to_vec(&Meta { id }).ok()?,
        None => Vec::new(),
    };
    let topic_len = u8::try_from(topic.len()).ok()?;
    let event_len = u8::try_from(user.event.len()).ok()?;
    let metadata_len = u8::try_from(metadata.len()).ok()?;
    let (encoding, payload) = match &user.payload {
        UserPayload::Json(raw) => (ENCODING_JSON, raw.get().as_bytes()),
        UserPayload::Binary(bytes) => (ENCODING_BINARY, bytes.as_ref()),
    };
    let mut buf = BytesMut::with_capacity(
        5 + topic.len() + user.event.len() + metadata.len() + payload.len(),
    );
    buf.put_slice(&[
        KIND_USER_BROADCAST,
        topic_len,
        event_len,
        metadata_len,
        encoding,
    ]);
    buf.put_slice(topic.as_bytes());
    buf.put_slice(user.event.as_bytes());
    buf.put_slice(&metadata);
    buf.put_slice(payload);
    Some(Frame::Binary(buf.freeze()))
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).expect("valid JSON")
    }

    fn text(frame: &Frame) -> Value {
        match frame {
            Frame::Text(t) => serde_json::from_str(t.as_str()).expect("JSON frame"),
            Frame::Binary(_) => panic!("expected a text frame"),
        }
    }

    fn kind3(
        join_ref: &str,
        r: &str,
        topic: &str,
        event: &str,
        meta: &str,
        enc: u8,
        payload: &[u8],
    ) -> Bytes {
        let mut v = vec![
            3,
            join_ref.len() as u8,
            r.len() as u8,
            topic.len() as u8,
            event.len() as u8,
            meta.len() as u8,
            enc,
        ];
        for s in [join_ref, r, topic, event, meta] {
            v.extend_from_slice(s.as_bytes());
        }
        v.extend_from_slice(payload);
        Bytes::from(v)
    }

    #[test]
    fn decodes_v1_object() {
        let m = decode_text(
            Vsn::V1,
            r#"{"topic":"realtime:room1","event":"phx_join","payload":{"config":{}},"ref":"6","join_ref":"6"}"#,
        )
        .expect("valid");
        assert_eq!(
            (m.join_ref.as_deref(), m.msg_ref.as_deref()),
            (Some("6"), Some("6"))
        );
        assert_eq!(
            (m.topic.as_str(), m.event.as_str()),
            ("realtime:room1", "phx_join")
        );
        let heartbeat = decode_text(
            Vsn::V1,
            r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"15"}"#,
        )
        .expect("join_ref is optional");
        assert_eq!(heartbeat.join_ref, None);
    }

    #[test]
    fn rejects_bad_v1() {
        for bad in [
            "garbage",
            "[]",
            r#"["t","e",{},null]"#, // the fields in order: still not an object
            r#"{"topic":"t","event":"e","payload":{}}"#, // ref key is required
            r#"{"topic":1,"event":"e","payload":{},"ref":null}"#,
            r#"{"event":"e","payload":{},"ref":null}"#,
        ] {
            assert!(decode_text(Vsn::V1, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decodes_v2_array_with_extra_elements() {
        let m =
            decode_text(Vsn::V2, r#"[null,"15","phoenix","heartbeat",{},"extra"]"#).expect("valid");
        assert_eq!((m.join_ref, m.msg_ref.as_deref()), (None, Some("15")));
        let InPayload::Json(p) = m.payload else {
            panic!("json payload")
        };
        assert_eq!(p.get(), "{}");
    }

    #[test]
    fn rejects_bad_v2() {
        for bad in [
            "",
            "{}",
            r#"["1","2","t","e"]"#,
            r#"[1,"2","t","e",{}]"#,
            r#"["1","2",null,"e",{}]"#,
            r#"["1","2","t",{},{}]"#,
            r#"["1","2","t","e",{}"#,
        ] {
            assert!(decode_text(Vsn::V2, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn decodes_observed_kind3_frames() {
        // docs/protocol.md §1.7, captured from realtime-js 2.119.1.
        let json_frame = Bytes::from_static(&[
            0x03, 0x01, 0x02, 0x0e, 0x06, 0x00, 0x01, 0x36, 0x31, 0x30, 0x72, 0x65, 0x61, 0x6c,
            0x74, 0x69, 0x6d, 0x65, 0x3a, 0x72, 0x6f, 0x6f, 0x6d, 0x31, 0x63, 0x75, 0x72, 0x73,
            0x6f, 0x72, 0x7b, 0x22, 0x78, 0x22, 0x3a, 0x31, 0x7d,
        ]);
        let m = decode_binary(Vsn::V2, json_frame).expect("valid kind 3");
        assert_eq!(
            (m.join_ref.as_deref(), m.msg_ref.as_deref()),
            (Some("6"), Some("10"))
        );
        assert_eq!(
            (m.topic.as_str(), m.event.as_str()),
            ("realtime:room1", "broadcast")
        );
        let InPayload::User(u) = m.payload else {
            panic!("user broadcast")
        };
        assert_eq!(u.event, "cursor");
        assert!(matches!(u.payload, UserPayload::Json(ref p) if p.get() == r#"{"x":1}"#));

        let bin = Bytes::from_static(&[
            0x03, 0x01, 0x02, 0x0e, 0x03, 0x00, 0x00, 0x36, 0x31, 0x31, 0x72, 0x65, 0x61, 0x6c,
            0x74, 0x69, 0x6d, 0x65, 0x3a, 0x72, 0x6f, 0x6f, 0x6d, 0x31, 0x62, 0x69, 0x6e, 0x09,
            0x08, 0x07,
        ]);
        let InPayload::User(u) = decode_binary(Vsn::V2, bin).expect("valid").payload else {
            panic!()
        };
        assert_eq!(u.event, "bin");
        assert!(matches!(u.payload, UserPayload::Binary(ref b) if b.as_ref() == [9, 8, 7]));
    }

    #[test]
    fn kind3_with_metadata_and_empty_refs() {
        let f = kind3(
            "",
            "",
            "realtime:a",
            "e",
            r#"{"persist":true}"#,
            1,
            b"[1,2]",
        );
        let m = decode_binary(Vsn::V2, f).expect("valid");
        assert_eq!((m.join_ref, m.msg_ref), (None, None));
    }

    #[test]
    fn rejects_malformed_binary() {
        let good = kind3("1", "2", "realtime:a", "ev", "", 1, b"{}");
        assert!(decode_binary(Vsn::V2, good.clone()).is_ok());
        let cases: Vec<(Bytes, DecodeError)> = vec![
            (Bytes::new(), DecodeError::Truncated),
            (
                Bytes::from_static(&[3, 0, 0, 0, 0, 0]),
                DecodeError::Truncated,
            ),
            (
                Bytes::from_static(&[0, 0, 0, 0, 0, 0, 1]),
                DecodeError::UnsupportedKind(0),
            ),
            (
                Bytes::from_static(&[4, 0, 0, 0, 0, 0, 1]),
                DecodeError::UnsupportedKind(4),
            ),
            // lengths claim more bytes than the frame has
            (
                Bytes::from_static(&[3, 255, 255, 255, 255, 255, 1, b'x']),
                DecodeError::LengthMismatch,
            ),
            (
                Bytes::from_static(&[3, 0, 0, 2, 0, 0, 1, b'x']),
                DecodeError::LengthMismatch,
            ),
            (
                kind3("1", "2", "t", "e", "", 7, b"{}"),
                DecodeError::UnsupportedEncoding(7),
            ),
            (
                kind3("1", "2", "t", "e", "", 1, b"{not json"),
                DecodeError::BadJson("payload"),
            ),
            (
                kind3("1", "2", "t", "e", "", 1, b""),
                DecodeError::BadJson("payload"),
            ),
            (
                kind3("1", "2", "t", "e", "", 1, &[0xff, 0xfe]),
                DecodeError::NotUtf8("payload"),
            ),
            (
                kind3("1", "2", "t", "e", "{bad", 1, b"{}"),
                DecodeError::BadJson("metadata"),
            ),
        ];
        for (frame, expected) in cases {
            assert_eq!(
                decode_binary(Vsn::V2, frame.clone()).unwrap_err(),
                expected,
                "{frame:?}"
            );
        }
        let mut bad_topic = good.to_vec();
        bad_topic[10] = 0xff; // inside the topic
        assert_eq!(
            decode_binary(Vsn::V2, Bytes::from(bad_topic)).unwrap_err(),
            DecodeError::NotUtf8("topic")
        );
        assert_eq!(
            decode_binary(Vsn::V1, good).unwrap_err(),
            DecodeError::BinaryOnV1
        );
    }

    #[test]
    fn truncated_binary_never_panics() {
        let good = kind3(
            "12",
            "34",
            "realtime:room",
            "event",
            r#"{"persist":true}"#,
            1,
            br#"{"a":[1,2,3]}"#,
        );
        for len in 0..good.len() {
            let _ = decode_binary(Vsn::V2, good.slice(..len));
        }
        for byte in 0..=255u8 {
            for pos in 0..7 {
                let mut v = good.to_vec();
                v[pos] = byte;
                let _ = decode_binary(Vsn::V2, Bytes::from(v));
            }
        }
    }

    #[test]
    fn encodes_replies() {
        let reply = Reply {
            status: "ok",
            response: json!({}),
        };
        let v2 = encode(Vsn::V2, None, Some("15"), "phoenix", "phx_reply", &reply);
        assert_eq!(
            v2,
            Frame::Text(
                r#"[null,"15","phoenix","phx_reply",{"status":"ok","response":{}}]"#.into()
            )
        );
        let v1 = encode(
            Vsn::V1,
            Some("6"),
            Some("15"),
            "phoenix",
            "phx_reply",
            &reply,
        );
        assert_eq!(
            v1,
            Frame::Text(r#"{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"15"}"#.into())
        );
    }

    fn user(event: &str, payload: UserPayload, meta_id: Option<&str>) -> Broadcast {
        Broadcast::User(UserBroadcast {
            event: event.into(),
            payload,
            meta_id: meta_id.map(Into::into),
        })
    }

    #[test]
    fn kind4_matches_observed_frames() {
        let b = user(
            "bin-evt",
            UserPayload::Json(raw(r#"{"hello":"bin"}"#)),
            Some("abc"),
        );
        let Some(Frame::Binary(f)) = encode_broadcast(Vsn::V2, "realtime:room1", &b) else {
            panic!("binary")
        };
        let mut expected = vec![4, 0x0e, 0x07, 0x0c, 0x01];
        expected.extend_from_slice(br#"realtime:room1bin-evt{"id":"abc"}{"hello":"bin"}"#);
        assert_eq!(f.as_ref(), expected.as_slice());

        let b = user(
            "raw-evt",
            UserPayload::Binary(Bytes::from_static(&[1, 2, 3])),
            None,
        );
        let Some(Frame::Binary(f)) = encode_broadcast(Vsn::V2, "realtime:room1", &b) else {
            panic!("binary")
        };
        let mut expected = vec![4, 0x0e, 0x07, 0x00, 0x00];
        expected.extend_from_slice(b"realtime:room1raw-evt\x01\x02\x03");
        assert_eq!(f.as_ref(), expected.as_slice());
    }

    #[test]
    fn user_broadcast_to_v1_is_json_and_binary_is_dropped() {
        let b = user("ev", UserPayload::Json(raw(r#"{"a":1}"#)), Some("id-1"));
        let f = encode_broadcast(Vsn::V1, "realtime:room1", &b).expect("json");
        assert_eq!(
            text(&f),
            json!({"topic":"realtime:room1","event":"broadcast","ref":null,
                   "payload":{"type":"broadcast","event":"ev","payload":{"a":1},"meta":{"id":"id-1"}}})
        );
        let b = user("ev", UserPayload::Binary(Bytes::from_static(b"x")), None);
        assert_eq!(encode_broadcast(Vsn::V1, "realtime:room1", &b), None);
    }

    #[test]
    fn long_topic_falls_back_to_v2_json() {
        let topic = format!("realtime:{}", "t".repeat(300));
        let b = user("ev", UserPayload::Json(raw(r#"{"a":1}"#)), None);
        let f = encode_broadcast(Vsn::V2, &topic, &b).expect("json fallback");
        assert_eq!(
            text(&f),
            json!([null, null, topic, "broadcast", {"type":"broadcast","event":"ev","payload":{"a":1}}])
        );
        let b = user(
            &"e".repeat(256),
            UserPayload::Binary(Bytes::from_static(b"x")),
            None,
        );
        assert_eq!(encode_broadcast(Vsn::V2, "realtime:a", &b), None);
    }

    #[test]
    fn json_push_is_forwarded_verbatim() {
        let payload =
            r#"{"type":"broadcast","event":"json-evt","payload":{"hello":"json"},"x":[1]}"#;
        let b = Broadcast::Json(raw(payload));
        let Some(Frame::Text(v2)) = encode_broadcast(Vsn::V2, "realtime:room1", &b) else {
            panic!()
        };
        assert_eq!(
            v2.as_str(),
            format!(r#"[null,null,"realtime:room1","broadcast",{payload}]"#)
        );
        let Some(Frame::Text(v1)) = encode_broadcast(Vsn::V1, "realtime:room1", &b) else {
            panic!()
        };
        assert_eq!(
            v1.as_str(),
            format!(
                r#"{{"topic":"realtime:room1","event":"broadcast","payload":{payload},"ref":null}}"#
            )
        );
    }

    #[test]
    fn large_payload_round_trips() {
        let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(200_000));
        let f = kind3("1", "2", "realtime:big", "ev", "", 1, big.as_bytes());
        let InPayload::User(u) = decode_binary(Vsn::V2, f).expect("valid").payload else {
            panic!()
        };
        let Some(Frame::Binary(out)) =
            encode_broadcast(Vsn::V2, "realtime:big", &Broadcast::User(u))
        else {
            panic!()
        };
        assert_eq!(&out[5 + "realtime:big".len() + 2..], big.as_bytes());
    }
}
