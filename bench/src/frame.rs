//! Supabase Realtime v2 binary user broadcast frames (docs/protocol.md §1.7): kind 3, what a
//! client pushes, and kind 4, what subscribers receive; and the tiny payload scanner the load
//! generator uses to read the producer's `t`/`n`/`s` fields.

/// `03 join_ref_len ref_len topic_len event_len meta_len enc | join_ref | ref | topic | event |
/// meta | payload`, JSON-encoded, no metadata.
pub fn encode_kind3(
    join_ref: &str,
    msg_ref: &str,
    topic: &str,
    event: &str,
    json_payload: &[u8],
) -> Vec<u8> {
    let fields = [join_ref, msg_ref, topic, event];
    assert!(fields.iter().all(|f| f.len() <= 255));
    let mut f =
        Vec::with_capacity(7 + fields.iter().map(|x| x.len()).sum::<usize>() + json_payload.len());
    f.push(3);
    f.extend(fields.iter().map(|x| x.len() as u8));
    f.extend_from_slice(&[0, 1]);
    for x in fields {
        f.extend_from_slice(x.as_bytes());
    }
    f.extend_from_slice(json_payload);
    f
}

/// The parts of a kind-3 push the relay forwards (borrowed).
#[derive(Debug, PartialEq, Eq)]
pub struct Kind3<'a> {
    pub topic: &'a [u8],
    pub event: &'a [u8],
    pub meta: &'a [u8],
    pub encoding: u8,
    pub payload: &'a [u8],
}

pub fn decode_kind3(b: &[u8]) -> Option<Kind3<'_>> {
    if b.len() < 7 || b[0] != 3 {
        return None;
    }
    let lens: Vec<usize> = b[1..6].iter().map(|&l| l as usize).collect();
    let mut at = 7;
    let mut next = |len: usize| {
        let r = b.get(at..at + len);
        at += len;
        r
    };
    let (_join_ref, _ref) = (next(lens[0])?, next(lens[1])?);
    let (topic, event, meta) = (next(lens[2])?, next(lens[3])?, next(lens[4])?);
    Some(Kind3 {
        topic,
        event,
        meta,
        encoding: b[6],
        payload: &b[at..],
    })
}

/// `04 topic_len event_len meta_len enc | topic | event | meta | payload`.
pub fn encode_kind4(topic: &str, event: &str, meta: &[u8], json_payload: &[u8]) -> Vec<u8> {
    assert!(topic.len() <= 255 && event.len() <= 255 && meta.len() <= 255);
    let mut f = Vec::with_capacity(5 + topic.len() + event.len() + meta.len() + json_payload.len());
    f.extend_from_slice(&[4, topic.len() as u8, event.len() as u8, meta.len() as u8, 1]);
    f.extend_from_slice(topic.as_bytes());
    f.extend_from_slice(event.as_bytes());
    f.extend_from_slice(meta);
    f.extend_from_slice(json_payload);
    f
}

/// A decoded kind-4 frame (borrowed).
#[derive(Debug, PartialEq, Eq)]
pub struct Kind4<'a> {
    pub topic: &'a [u8],
    pub event: &'a [u8],
    pub meta: &'a [u8],
    pub encoding: u8,
    pub payload: &'a [u8],
}

pub fn decode_kind4(b: &[u8]) -> Option<Kind4<'_>> {
    if b.len() < 5 || b[0] != 4 {
        return None;
    }
    let (tl, el, ml) = (b[1] as usize, b[2] as usize, b[3] as usize);
    let start = 5;
    if b.len() < start + tl + el + ml {
        return None;
    }
    let topic = &b[start..start + tl];
    let event = &b[start + tl..start + tl + el];
    let meta = &b[start + tl + el..start + tl + el + ml];
    Some(Kind4 {
        topic,
        event,
        meta,
        encoding: b[4],
        payload: &b[start + tl + el + ml..],
    })
}

/// Producer fields carried in every benchmark payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Wall-clock microseconds taken just before the producing statement.
    pub t: i64,
    /// Global message sequence number (unique per run).
    pub n: i64,
    /// Step id the message belongs to.
    pub s: i64,
}

/// The text right after `"key"` and its colon in flat JSON text such as `{"n": 1, "s": 2}`
/// (jsonb output) or `{"t" : 3}` (json_build_object); occurrences of `"key"` as a value (no
/// colon after it) are skipped.
fn field<'a>(p: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut i = 0;
    while i + key.len() + 2 <= p.len() {
        if p[i] == b'"' && p[i + 1..].starts_with(key) && p[i + 1 + key.len()] == b'"' {
            let rest = &p[i + 2 + key.len()..];
            let blank = |c: &u8| *c == b' ';
            let after_colon = rest
                .iter()
                .position(|c| !blank(c))
                .filter(|&j| rest[j] == b':')
                .map(|j| &rest[j + 1..]);
            if let Some(v) = after_colon {
                return Some(&v[v.iter().position(|c| !blank(c)).unwrap_or(v.len())..]);
            }
        }
        i += 1;
    }
    None
}

/// An integer value: `-?[0-9]+`.
fn int_field(p: &[u8], key: &[u8]) -> Option<i64> {
    let v = field(p, key)?;
    let (neg, digits) = match v.strip_prefix(b"-") {
        Some(d) => (true, d),
        None => (false, v),
    };
    let end = digits
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in &digits[..end] {
        n = n.checked_mul(10)?.checked_add((d - b'0') as i64)?;
    }
    Some(if neg { -n } else { n })
}

/// A string value without escapes (None for anything else, `null` included).
fn str_field<'a>(p: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let v = field(p, key)?.strip_prefix(b"\"")?;
    let end = v.iter().position(|&c| c == b'"' || c == b'\\')?;
    (v[end] == b'"').then(|| &v[..end])
}

pub fn parse_stamp(payload: &[u8]) -> Option<Stamp> {
    Some(Stamp {
        t: int_field(payload, b"t")?,
        n: int_field(payload, b"n")?,
        s: int_field(payload, b"s")?,
    })
}

/// The stamp of a `postgres_changes` frame, from the columns `ts_us`, `seq_no`, `step_no` of its
/// `record`, and the record's `owner` when it is a string. The names occur nowhere else in the
/// frame as keys (the `columns` list has them as values).
pub fn parse_change(frame: &[u8]) -> Option<(Stamp, Option<&[u8]>)> {
    let stamp = Stamp {
        t: int_field(frame, b"ts_us")?,
        n: int_field(frame, b"seq_no")?,
        s: int_field(frame, b"step_no")?,
    };
    Some((stamp, str_field(frame, b"owner")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind4_roundtrip_matches_protocol_example() {
        let f = encode_kind4("realtime:room1", "cursor", b"", br#"{"x":1}"#);
        let mut want = vec![4u8, 0x0e, 0x06, 0x00, 0x01];
        want.extend_from_slice(b"realtime:room1cursor{\"x\":1}");
        assert_eq!(f, want);
        let d = decode_kind4(&f).unwrap();
        assert_eq!(d.topic, b"realtime:room1");
        assert_eq!(d.event, b"cursor");
        assert_eq!(d.meta, b"");
        assert_eq!(d.encoding, 1);
        assert_eq!(d.payload, br#"{"x":1}"#);
    }

    #[test]
    fn kind3_layout_and_roundtrip() {
        let f = encode_kind3("1", "22", "realtime:r", "m", br#"{"t":1}"#);
        let mut want = vec![3u8, 1, 2, 10, 1, 0, 1];
        want.extend_from_slice(b"122realtime:rm{\"t\":1}");
        assert_eq!(f, want);
        let d = decode_kind3(&f).unwrap();
        assert_eq!(
            d,
            Kind3 {
                topic: b"realtime:r",
                event: b"m",
                meta: b"",
                encoding: 1,
                payload: br#"{"t":1}"#
            }
        );
        assert!(decode_kind3(&f[..12]).is_none());
        assert!(decode_kind3(&encode_kind4("t", "e", b"", b"{}")).is_none());
    }

    #[test]
    fn kind4_with_meta() {
        let f = encode_kind4(
            "realtime:room1",
            "bin-evt",
            br#"{"id":"abc"}"#,
            br#"{"hello":"bin"}"#,
        );
        let d = decode_kind4(&f).unwrap();
        assert_eq!(d.meta, br#"{"id":"abc"}"#);
        assert_eq!(d.payload, br#"{"hello":"bin"}"#);
    }

    #[test]
    fn kind4_rejects_short_or_other_kinds() {
        assert!(decode_kind4(&[4, 10, 0, 0, 1, b'a']).is_none());
        assert!(decode_kind4(&[2, 0, 0, 0, 1]).is_none());
        assert!(decode_kind4(&[]).is_none());
    }

    #[test]
    fn stamps_from_jsonb_and_json_text() {
        let jsonb = br#"{"n": 17, "s": 3, "t": 1712345678901234}"#;
        assert_eq!(
            parse_stamp(jsonb),
            Some(Stamp {
                t: 1712345678901234,
                n: 17,
                s: 3
            })
        );
        let json = br#"{"t" : 1712345678901234, "n" : 17, "s" : 3}"#;
        assert_eq!(
            parse_stamp(json),
            Some(Stamp {
                t: 1712345678901234,
                n: 17,
                s: 3
            })
        );
        let compact = br#"{"t":5,"n":-1,"s":0,"id":"x"}"#;
        assert_eq!(parse_stamp(compact), Some(Stamp { t: 5, n: -1, s: 0 }));
        assert_eq!(parse_stamp(br#"{"t":5}"#), None);
        assert_eq!(parse_stamp(br#"{"t":"x","n":1,"s":1}"#), None);
    }

    #[test]
    fn change_stamp_skips_column_names() {
        let frame = br#"[null,null,"realtime:db","postgres_changes",{"ids":[3],"data":{"columns": [{"name": "ts_us", "type": "int8"}, {"name": "owner", "type": "text"}], "record": {"id": 9, "owner": "user-7", "seq_no": 41, "step_no": 2, "ts_us": 1712345678901234}, "type": "INSERT"}}]"#;
        let (s, owner) = parse_change(frame).unwrap();
        assert_eq!(
            s,
            Stamp {
                t: 1712345678901234,
                n: 41,
                s: 2
            }
        );
        assert_eq!(owner, Some(&b"user-7"[..]));
        let no_owner = br#"{"record": {"owner": null, "seq_no": 1, "step_no": 1, "ts_us": 5}}"#;
        assert_eq!(parse_change(no_owner).unwrap().1, None);
        assert!(parse_change(br#"[null,"2","phoenix","phx_reply",{"status":"ok"}]"#).is_none());
    }
}
