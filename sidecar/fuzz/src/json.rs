//! Bounded arbitrary JSON values, for payloads, metadata and JWT claims.

use arbitrary::{Result, Unstructured};
use serde_json::{Map, Number, Value};

/// Strings that make parsers work: escapes, NUL, quotes, separators, non-ASCII, keywords.
const AWKWARD: [&str; 12] = [
    "",
    "\u{0}",
    "\"",
    "\\",
    ",",
    "()",
    "null",
    "é",
    "名前",
    "\u{1F600}",
    "a.b=c",
    "\r\n\t",
];

pub fn string(u: &mut Unstructured) -> Result<String> {
    if u.ratio(1, 4)? {
        return Ok((*u.choose(&AWKWARD)?).to_owned());
    }
    u.arbitrary()
}

/// A JSON value at most `depth` containers deep. Without `floats` its numbers are integers,
/// which survive a parse and a print unchanged (serde_json's float parsing may be 1 ULP off).
pub fn value(u: &mut Unstructured, depth: u32, floats: bool) -> Result<Value> {
    let kinds = if depth == 0 { 5 } else { 7 };
    Ok(match u.choose_index(kinds)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => Value::from(u.arbitrary::<i64>()?),
        3 if floats => Number::from_f64(u.arbitrary()?).map_or(Value::Null, Value::Number),
        3 => Value::from(u.arbitrary::<u64>()?),
        4 => Value::String(string(u)?),
        5 => {
            let len = u.int_in_range(0..=4)?;
            Value::Array(
                (0..len)
                    .map(|_| value(u, depth - 1, floats))
                    .collect::<Result<_>>()?,
            )
        }
        _ => {
            let len = u.int_in_range(0..=4)?;
            let mut map = Map::new();
            for _ in 0..len {
                map.insert(string(u)?, value(u, depth - 1, floats)?);
            }
            Value::Object(map)
        }
    })
}
