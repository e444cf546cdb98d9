//! Frame codec properties (docs/protocol.md §1.5–1.7, §4.4–4.5).
//!
//! * [`text`]: any text frame, under v1 and v2, decodes or is refused without a panic; what is
//!   accepted has exactly the fields a JSON reading of the frame gives, what a JSON reading
//!   refuses is refused, and the decoded message re-encodes to a frame that decodes to the same
//!   message (the payload byte for byte).
//! * [`binary`]: any binary frame decodes exactly as an independent kind-3 reader says, or is
//!   refused when that reader refuses it; v1 refuses every binary frame. An accepted user
//!   broadcast is relayed (kind 4, or the JSON fallback) with the same topic, event and payload.
//! * [`roundtrip`]: generated valid messages survive encode → decode unchanged: JSON frames
//!   under both serializers, kind-3 frames written by the reader's counterpart here, and kind-4
//!   frames written by the sidecar.

use arbitrary::{Result, Unstructured};
use bytes::Bytes;
use pg_realtime_sidecar::codec::{
    self, Broadcast, Frame, InPayload, Inbound, UserBroadcast, UserPayload, Vsn,
};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::json;

pub fn text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for vsn in [Vsn::V1, Vsn::V2] {
        let model = text_model(vsn, &text);
        match codec::decode_text(vsn, &text) {
            Ok(msg) => {
                match &model {
                    Model::Accept(want) => assert_eq!(&Fields::of(&msg), want, "{vsn:?} {text:?}"),
                    Model::Reject => panic!("{vsn:?} accepted a frame the model refuses: {text:?}"),
                    Model::Unknown => {}
                }
                text_roundtrip(vsn, &msg);
            }
            Err(err) => {
                assert!(!err.to_string().is_empty());
                if let Model::Accept(want) = model {
                    panic!("{vsn:?} refused {text:?} ({err}), the model reads {want:?}");
                }
            }
        }
    }
}

pub fn binary(data: &[u8]) {
    let frame = Bytes::copy_from_slice(data);
    assert!(
        codec::decode_binary(Vsn::V1, frame.clone()).is_err(),
        "v1 accepted a binary frame"
    );
    match (codec::decode_binary(Vsn::V2, frame), kind3_model(data)) {
        (Ok(msg), Some(want)) => {
            assert_eq!(Kind3::of(&msg), want, "{data:?}");
            let InPayload::User(user) = msg.payload else {
                unreachable!("checked by Kind3::of")
            };
            // Messages from the queue carry a `meta.id`; the relay must keep it.
            let meta_id = (!want.msg_ref.is_empty()).then(|| want.msg_ref.clone());
            relay(&msg.topic, &user.event, &user.payload, meta_id.as_deref());
        }
        (Ok(msg), None) => panic!("accepted a frame the model refuses: {data:?} → {msg:?}"),
        (Err(err), Some(want)) => panic!("refused {data:?} ({err}), the model reads {want:?}"),
        (Err(err), None) => assert!(!err.to_string().is_empty()),
    }
}

pub fn roundtrip(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(case) = Case::generate(&mut u) else {
        return;
    };
    match case {
        Case::Text { vsn, fields, raw } => {
            let frame = codec::encode(
                vsn,
                fields.join_ref.as_deref(),
                fields.msg_ref.as_deref(),
                &fields.topic,
                &fields.event,
                &*raw,
            );
            let Frame::Text(text) = frame else {
                panic!("a JSON message encoded as binary")
            };
            let msg = codec::decode_text(vsn, text.as_str())
                .unwrap_or_else(|e| panic!("{vsn:?} refused its own frame {text:?}: {e}"));
            let mut want = fields;
            if vsn == Vsn::V1 {
                want.join_ref = None; // v1 frames carry no join_ref
            }
            assert_eq!(Fields::of(&msg), want, "{vsn:?} {text:?}");
        }
        Case::Binary {
            frame,
            want,
            meta_id,
        } => {
            let msg = codec::decode_binary(Vsn::V2, Bytes::from(frame.clone()))
                .unwrap_or_else(|e| panic!("refused a valid kind-3 frame {frame:?}: {e}"));
            assert_eq!(Kind3::of(&msg), want, "{frame:?}");
            let InPayload::User(user) = msg.payload else {
                unreachable!("checked by Kind3::of")
            };
            relay(&msg.topic, &user.event, &user.payload, meta_id.as_deref());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON frames

/// A decoded JSON message, the payload as its exact text.
#[derive(Debug, PartialEq)]
struct Fields {
    join_ref: Option<String>,
    msg_ref: Option<String>,
    topic: String,
    event: String,
    payload: String,
}

impl Fields {
    fn of(msg: &Inbound) -> Fields {
        let InPayload::Json(payload) = &msg.payload else {
            panic!("a text frame decoded to a binary payload: {msg:?}")
        };
        Fields {
            join_ref: msg.join_ref.clone(),
            msg_ref: msg.msg_ref.clone(),
            topic: msg.topic.clone(),
            event: msg.event.clone(),
            payload: payload.get().to_owned(),
        }
    }
}

#[derive(Debug)]
enum Model {
    Accept(Fields),
    Reject,
    /// Valid for the codec's raw reading but not for `Value` (a lone surrogate escape).
    Unknown,
}

/// A frame as `serde_json::Value` reads it, then shaped by the serializer's rules.
fn text_model(vsn: Vsn, text: &str) -> Model {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return match serde_json::from_str::<IgnoredAny>(text) {
            Ok(_) => Model::Unknown,
            Err(_) => Model::Reject,
        };
    };
    let nullable = |v: &Value| match v {
        Value::Null => Some(None),
        Value::String(s) => Some(Some(s.clone())),
        _ => None,
    };
    let string = |v: &Value| v.as_str().map(str::to_owned);
    // join_ref, ref, topic, event, payload
    type Shape<'a> = (Option<String>, Option<String>, String, String, &'a Value);
    let fields = || -> Option<Shape> {
        match (vsn, &value) {
            (Vsn::V2, Value::Array(items)) if items.len() >= 5 => Some((
                nullable(&items[0])?,
                nullable(&items[1])?,
                string(&items[2])?,
                string(&items[3])?,
                &items[4],
            )),
            (Vsn::V1, Value::Object(obj)) => {
                // serde refuses a repeated field of the struct; `Value` keeps the last one.
                let keys = serde_json::from_str::<Keys>(text).ok()?.0;
                let known = ["topic", "event", "payload", "ref", "join_ref"];
                if known
                    .iter()
                    .any(|k| keys.iter().filter(|key| key == k).count() > 1)
                {
                    return None;
                }
                Some((
                    obj.get("join_ref").map_or(Some(None), nullable)?,
                    nullable(obj.get("ref")?)?,
                    string(obj.get("topic")?)?,
                    string(obj.get("event")?)?,
                    obj.get("payload")?,
                ))
            }
            _ => None,
        }
    };
    let Some((join_ref, msg_ref, topic, event, payload)) = fields() else {
        return Model::Reject;
    };
    // The payload's exact text is the element's: find it through a raw reading of the frame.
    let Some(raw) = raw_payload(vsn, value.is_array(), text) else {
        return Model::Unknown;
    };
    assert_eq!(
        serde_json::from_str::<Value>(&raw).ok().as_ref(),
        Some(payload),
        "raw payload text of {text:?}"
    );
    Model::Accept(Fields {
        join_ref,
        msg_ref,
        topic,
        event,
        payload: raw,
    })
}

/// The payload element's text, read as a borrowed `RawValue`: the `payload` member, or the
/// fifth element of a v2 array (the third of a v1 one).
fn raw_payload(vsn: Vsn, array: bool, text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct P<'a> {
        #[serde(borrow)]
        payload: &'a RawValue,
    }
    if !array {
        return serde_json::from_str::<P>(text)
            .ok()
            .map(|p| p.payload.get().to_owned());
    }
    let items = serde_json::from_str::<Vec<&RawValue>>(text).ok()?;
    items
        .get(if vsn == Vsn::V1 { 2 } else { 4 })
        .map(|p| p.get().to_owned())
}

/// The keys of a JSON object in order, repeats included.
struct Keys(Vec<String>);

impl<'de> Deserialize<'de> for Keys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Keys, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Keys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Keys, A::Error> {
                let mut keys = Vec::new();
                while let Some((key, IgnoredAny)) = map.next_entry::<String, IgnoredAny>()? {
                    keys.push(key);
                }
                Ok(Keys(keys))
            }
        }
        d.deserialize_map(V)
    }
}

/// Re-encoding a decoded message gives a frame that decodes to the same message, and that
/// frame re-encodes to itself.
fn text_roundtrip(vsn: Vsn, msg: &Inbound) {
    let InPayload::Json(payload) = &msg.payload else {
        panic!("a text frame decoded to a binary payload")
    };
    let encode = |m: &Inbound| {
        codec::encode(
            vsn,
            m.join_ref.as_deref(),
            m.msg_ref.as_deref(),
            &m.topic,
            &m.event,
            &**payload,
        )
    };
    let frame = encode(msg);
    let Frame::Text(text) = &frame else {
        panic!("a JSON message encoded as binary")
    };
    let again = codec::decode_text(vsn, text.as_str())
        .unwrap_or_else(|e| panic!("{vsn:?} refused its own frame {text:?}: {e}"));
    let mut want = Fields::of(msg);
    if vsn == Vsn::V1 {
        want.join_ref = None;
    }
    assert_eq!(Fields::of(&again), want, "{vsn:?} {text:?}");
    assert_eq!(encode(&again), frame, "{vsn:?} encoding is not stable");
}

// ---------------------------------------------------------------------------------------------
// Binary frames

const KIND_PUSH: u8 = 3;
const KIND_BROADCAST: u8 = 4;

/// A decoded kind-3 frame: refs as sent (empty when absent), payload as `(encoding, bytes)`.
#[derive(Debug, PartialEq)]
struct Kind3 {
    join_ref: String,
    msg_ref: String,
    topic: String,
    event: String,
    json: bool,
    payload: Vec<u8>,
}

impl Kind3 {
    fn of(msg: &Inbound) -> Kind3 {
        assert_eq!(msg.event, "broadcast", "kind 3 is always a broadcast");
        let InPayload::User(user) = &msg.payload else {
            panic!("a binary frame decoded to a JSON payload: {msg:?}")
        };
        assert!(user.meta_id.is_none(), "a client cannot set meta.id");
        for r in [&msg.join_ref, &msg.msg_ref] {
            assert_ne!(r.as_deref(), Some(""), "an empty ref must read as absent");
        }
        let (json, payload) = match &user.payload {
            UserPayload::Json(raw) => (true, raw.get().as_bytes().to_vec()),
            UserPayload::Binary(bytes) => (false, bytes.to_vec()),
        };
        Kind3 {
            join_ref: msg.join_ref.clone().unwrap_or_default(),
            msg_ref: msg.msg_ref.clone().unwrap_or_default(),
            topic: msg.topic.clone(),
            event: user.event.clone(),
            json,
            payload,
        }
    }
}

/// Kind 3 as docs/protocol.md §1.7 lays it out: `3, join_ref_len, ref_len, topic_len,
/// event_len, metadata_len, encoding`, the five fields, then the payload to the end; strings
/// UTF-8, metadata empty or JSON, encoding 0 (bytes) or 1 (JSON text, kept without the
/// whitespace around it).
fn kind3_model(frame: &[u8]) -> Option<Kind3> {
    let (&[kind, l0, l1, l2, l3, l4, encoding], mut rest) = frame.split_first_chunk::<7>()?;
    if kind != KIND_PUSH {
        return None;
    }
    let mut field = |len: u8| {
        let (head, tail) = rest.split_at_checked(len.into())?;
        rest = tail;
        Some(head)
    };
    let utf8 = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
    let (join_ref, msg_ref, topic, event, metadata) =
        (field(l0)?, field(l1)?, field(l2)?, field(l3)?, field(l4)?);
    let (join_ref, msg_ref, topic, event) =
        (utf8(join_ref)?, utf8(msg_ref)?, utf8(topic)?, utf8(event)?);
    // JSON text is UTF-8 (serde_json skips strings of a byte slice without checking).
    let json_text = |b: &[u8]| {
        std::str::from_utf8(b)
            .ok()
            .is_some_and(|t| serde_json::from_str::<IgnoredAny>(t).is_ok())
    };
    if !metadata.is_empty() && !json_text(metadata) {
        return None;
    }
    let (json, payload) = match encoding {
        0 => (false, rest.to_vec()),
        1 => {
            if !json_text(rest) {
                return None;
            }
            let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
            let start = rest.iter().position(|b| !ws(b))?;
            let end = rest.iter().rposition(|b| !ws(b))? + 1;
            (true, rest[start..end].to_vec())
        }
        _ => return None,
    };
    Some(Kind3 {
        join_ref,
        msg_ref,
        topic,
        event,
        json,
        payload,
    })
}

/// Kind 3 for valid fields (each at most 255 bytes).
fn kind3_frame(k: &Kind3, metadata: &[u8], payload_text: &[u8]) -> Vec<u8> {
    let len = |b: &[u8]| u8::try_from(b.len()).expect("field fits kind 3");
    let mut v = vec![
        KIND_PUSH,
        len(k.join_ref.as_bytes()),
        len(k.msg_ref.as_bytes()),
        len(k.topic.as_bytes()),
        len(k.event.as_bytes()),
        len(metadata),
        u8::from(k.json),
    ];
    for part in [
        k.join_ref.as_bytes(),
        k.msg_ref.as_bytes(),
        k.topic.as_bytes(),
        k.event.as_bytes(),
        metadata,
        payload_text,
    ] {
        v.extend_from_slice(part);
    }
    v
}

/// Kind 4 as §1.7 lays it out: `4, topic_len, event_len, metadata_len, encoding`, the three
/// fields, the payload. Panics unless the frame is exactly that.
fn read_kind4(frame: &[u8]) -> (String, String, Vec<u8>, bool, Vec<u8>) {
    let (&[kind, l0, l1, l2, encoding], rest) =
        frame.split_first_chunk::<5>().expect("kind-4 header");
    assert_eq!(kind, KIND_BROADCAST);
    assert!(encoding <= 1, "encoding {encoding}");
    let (topic, rest) = rest.split_at(l0.into());
    let (event, rest) = rest.split_at(l1.into());
    let (metadata, payload) = rest.split_at(l2.into());
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).expect("kind-4 text field");
    (
        text(topic),
        text(event),
        metadata.to_vec(),
        encoding == 1,
        payload.to_vec(),
    )
}

/// A user broadcast reaches v2 subscribers as kind 4 when its fields fit, as a JSON broadcast
/// otherwise, and v1 subscribers as JSON; binary payloads only as kind 4. Topic, event,
/// `meta.id` and the payload bytes arrive unchanged.
fn relay(topic: &str, event: &str, payload: &UserPayload, meta_id: Option<&str>) {
    let copy = || match payload {
        UserPayload::Json(raw) => UserPayload::Json(raw.clone()),
        UserPayload::Binary(b) => UserPayload::Binary(b.clone()),
    };
    let msg = Broadcast::User(UserBroadcast {
        event: event.to_owned(),
        payload: copy(),
        meta_id: meta_id.map(str::to_owned),
    });
    let meta = meta_id.map(|id| serde_json::json!({ "id": id }));
    let meta_len = meta.as_ref().map_or(0, |m| m.to_string().len());
    let fits = topic.len() <= 255 && event.len() <= 255 && meta_len <= 255;
    let (json, bytes) = match payload {
        UserPayload::Json(raw) => (true, raw.get().as_bytes()),
        UserPayload::Binary(b) => (false, b.as_ref()),
    };
    for vsn in [Vsn::V1, Vsn::V2] {
        match codec::encode_broadcast(vsn, topic, &msg) {
            Some(Frame::Binary(frame)) => {
                assert!(vsn == Vsn::V2 && fits, "{vsn:?} got kind 4 (fits: {fits})");
                let (t, e, m, j, p) = read_kind4(&frame);
                assert_eq!(
                    (t.as_str(), e.as_str(), j, p.as_slice()),
                    (topic, event, json, bytes)
                );
                let m = (!m.is_empty())
                    .then(|| serde_json::from_slice::<Value>(&m).expect("kind-4 metadata is JSON"));
                assert_eq!(m, meta, "kind-4 metadata");
            }
            Some(Frame::Text(text)) => {
                assert!(json, "a binary payload sent as JSON");
                assert!(
                    vsn == Vsn::V1 || !fits,
                    "v2 fell back to JSON though fields fit"
                );
                let msg = codec::decode_text(vsn, text.as_str())
                    .unwrap_or_else(|e| panic!("relayed frame does not decode: {e}: {text}"));
                assert_eq!(
                    (msg.topic.as_str(), msg.event.as_str()),
                    (topic, "broadcast")
                );
                assert_eq!((msg.join_ref, msg.msg_ref), (None, None));
                let InPayload::Json(body) = msg.payload else {
                    unreachable!()
                };
                #[derive(Deserialize)]
                struct Body<'a> {
                    #[serde(rename = "type")]
                    kind: String,
                    event: String,
                    #[serde(borrow)]
                    payload: &'a RawValue,
                    meta: Option<Value>,
                }
                let body: Body = serde_json::from_str(body.get()).expect("broadcast body");
                assert_eq!(
                    (body.kind.as_str(), body.event.as_str()),
                    ("broadcast", event)
                );
                assert_eq!(body.payload.get().as_bytes(), bytes, "payload not verbatim");
                assert_eq!(body.meta, meta);
            }
            None => assert!(
                !json && (vsn == Vsn::V1 || !fits),
                "{vsn:?} dropped a broadcast it can carry"
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Generated messages

enum Case {
    Text {
        vsn: Vsn,
        fields: Fields,
        raw: Box<RawValue>,
    },
    Binary {
        frame: Vec<u8>,
        want: Kind3,
        meta_id: Option<String>,
    },
}

/// `s` cut to at most `max` bytes on a char boundary.
fn cut(mut s: String, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

fn json_text(u: &mut Unstructured) -> Result<String> {
    let value = json::value(u, 4, true)?;
    Ok(if u.arbitrary()? {
        serde_json::to_string_pretty(&value).expect("JSON")
    } else {
        value.to_string()
    })
}

impl Case {
    fn generate(u: &mut Unstructured) -> Result<Case> {
        if u.arbitrary()? {
            let vsn = if u.arbitrary()? { Vsn::V2 } else { Vsn::V1 };
            let opt = |u: &mut Unstructured| -> Result<Option<String>> {
                Ok(if u.arbitrary()? {
                    Some(json::string(u)?)
                } else {
                    None
                })
            };
            let (join_ref, msg_ref) = (opt(u)?, opt(u)?);
            let (topic, event) = (json::string(u)?, json::string(u)?);
            let payload = json_text(u)?;
            let raw = RawValue::from_string(payload.clone()).expect("generated JSON");
            return Ok(Case::Text {
                vsn,
                fields: Fields {
                    join_ref,
                    msg_ref,
                    topic,
                    event,
                    payload,
                },
                raw,
            });
        }
        let field = |u: &mut Unstructured| -> Result<String> { Ok(cut(json::string(u)?, 255)) };
        let (join_ref, msg_ref, topic, event) = (field(u)?, field(u)?, field(u)?, field(u)?);
        // Long topics and events exercise the relay's JSON fallback.
        let topic = if u.ratio(1, 8)? {
            topic.repeat(40)
        } else {
            topic
        };
        let topic = cut(topic, 255);
        let metadata = match u.choose_index(3)? {
            0 => String::new(),
            1 => r#"{"persist":true}"#.to_owned(),
            _ => cut(json::value(u, 2, true)?.to_string(), 255),
        };
        // A cut JSON text may no longer parse: then send none.
        let metadata = if serde_json::from_str::<IgnoredAny>(&metadata).is_ok() {
            metadata
        } else {
            String::new()
        };
        let json: bool = u.arbitrary()?;
        let (wire, payload) = if json {
            let text = json_text(u)?;
            let padded = format!(" \n{text}\t ");
            (padded.into_bytes(), text.into_bytes())
        } else {
            let bytes: Vec<u8> = u.arbitrary()?;
            (bytes.clone(), bytes)
        };
        let want = Kind3 {
            join_ref,
            msg_ref,
            topic,
            event,
            json,
            payload,
        };
        let frame = kind3_frame(&want, metadata.as_bytes(), &wire);
        let meta_id = if u.arbitrary()? {
            Some(json::string(u)?)
        } else {
            None
        };
        Ok(Case::Binary {
            frame,
            want,
            meta_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Phoenix's v1 serializer reads objects only; serde would read the struct from an array too.
    #[test]
    fn v1_frame_as_an_array_is_refused() {
        for frame in [r#"["t","e",{},null]"#, r#"["t","e",{},"1","2"]"#] {
            assert!(codec::decode_text(Vsn::V1, frame).is_err(), "{frame}");
        }
    }
}
