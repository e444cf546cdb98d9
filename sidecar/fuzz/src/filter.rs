//! `postgres_changes` filter properties (docs/protocol.md §6.1, §6.2).
//!
//! * [`text`]: any filter string is parsed or refused without a panic, and the refusal has a
//!   message. What is accepted is well formed (`in` ⇔ a list of at most [`MAX_IN_VALUES`],
//!   `is` ⇔ one of its four values, non-empty columns, no more conditions than comma-separated
//!   pieces) and re-renders: printing the conditions in the canonical quoted form and parsing
//!   that again gives the same conditions. Without quotes or backslashes in the input, columns
//!   and values are the input's own text.
//! * [`binding`]: generated conditions, printed with bare or quoted pieces and stray whitespace
//!   wherever PostgREST syntax allows, parse back to exactly those conditions; and a whole
//!   `postgres_changes` entry of arbitrary JSON is accepted or refused as the rules of §6.1 say
//!   (event, schema/table defaults, `select`, the order of the checks).

use arbitrary::{Result, Unstructured};
use pg_realtime_sidecar::filter::{
    parse_binding, Binding, Condition, Event, FilterValue, IsValue, Op, MAX_IN_VALUES,
};
use serde_json::{json, Map, Value};

use crate::json;

pub fn text(data: &[u8]) {
    let filter = String::from_utf8_lossy(data);
    let Some(conditions) = parse_filter(&filter) else {
        return;
    };
    assert!(
        conditions.len() <= filter.matches(',').count() + 1,
        "more conditions than pieces in {filter:?}"
    );
    for c in &conditions {
        assert!(!c.column.is_empty(), "empty column from {filter:?}");
        match (&c.op, &c.value) {
            (Op::In, FilterValue::List(values)) => assert!(values.len() <= MAX_IN_VALUES),
            (Op::Is, FilterValue::Is(_)) => {}
            (Op::In | Op::Is, v) | (_, v @ (FilterValue::List(_) | FilterValue::Is(_))) => {
                panic!("{:?} with {v:?} from {filter:?}", c.op)
            }
            _ => {}
        }
        if !filter.contains(['"', '\\']) {
            let pieces: Vec<&str> = match &c.value {
                FilterValue::One(v) => vec![v],
                FilterValue::List(vs) => vs.iter().flatten().map(String::as_str).collect(),
                FilterValue::Is(_) => vec![],
            };
            for piece in pieces.into_iter().chain([c.column.as_str()]) {
                assert!(filter.contains(piece), "{piece:?} is not in {filter:?}");
            }
        }
    }
    let canonical = render(&conditions);
    let again = parse_filter(&canonical)
        .unwrap_or_else(|| panic!("canonical form {canonical:?} of {filter:?} is refused"));
    assert_eq!(again, conditions, "{filter:?} → {canonical:?}");
    assert_eq!(render(&again), canonical);
}

pub fn binding(data: &[u8]) {
    let mut u = Unstructured::new(data);
    if u.arbitrary().unwrap_or(false) {
        let _ = generated_filter(&mut u);
    } else {
        let _ = entry(&mut u);
    }
}

/// The conditions of `filter` on a fixed table, `None` when refused (with a message).
fn parse_filter(filter: &str) -> Option<Vec<Condition>> {
    let entry = json!({"schema": "public", "table": "t", "filter": filter});
    let Value::Object(entry) = entry else {
        unreachable!()
    };
    match parse_binding(&entry) {
        Ok(b) => {
            assert_eq!(
                (b.event, b.schema.as_str(), b.table.as_str(), &b.select),
                (Event::All, "public", "t", &None)
            );
            Some(b.filters)
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.starts_with("Error parsing `filter` params: "),
                "{filter:?}: {message}"
            );
            None
        }
    }
}

/// PostgREST double quotes: `"` and `\` escaped with a backslash.
fn quote(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Every column and value quoted; `in` NULLs and `is` values bare.
fn render(conditions: &[Condition]) -> String {
    let one = |c: &Condition| {
        let value = match &c.value {
            FilterValue::One(v) => quote(v),
            FilterValue::List(vs) => {
                let items: Vec<String> = vs
                    .iter()
                    .map(|v| v.as_deref().map_or_else(|| "null".to_owned(), quote))
                    .collect();
                format!("({})", items.join(","))
            }
            FilterValue::Is(v) => v.as_str().to_owned(),
        };
        let not = if c.negate { "not." } else { "" };
        format!("{}={not}{}.{value}", quote(&c.column), c.op.sql_name())
    };
    conditions.iter().map(one).collect::<Vec<_>>().join(",")
}

// ---------------------------------------------------------------------------------------------
// Generated filters

/// Whitespace a parser must skip: nothing, ASCII blanks or a non-ASCII space.
fn blank(u: &mut Unstructured) -> Result<&'static str> {
    Ok(*u.choose(&["", "", " ", "  \t", "\u{a0}", "\u{3000}"])?)
}

/// A column: bare when the bare form reads back as itself, else quoted.
fn column(u: &mut Unstructured, name: &str) -> Result<String> {
    let bare_ok = !name.is_empty()
        && name.trim() == name
        && !name.starts_with('"')
        && !name.contains(['=', ',']);
    let text = if bare_ok && u.arbitrary()? {
        name.to_owned()
    } else {
        quote(name)
    };
    Ok(format!("{}{text}{}", blank(u)?, blank(u)?))
}

/// A scalar value: bare keeps leading whitespace and stops at a comma outside parentheses, so it
/// is bare only without `,`, `(`, `)`, a leading quote or trailing whitespace.
fn scalar(u: &mut Unstructured, value: &str) -> Result<String> {
    let bare_ok =
        value.trim_end() == value && !value.starts_with('"') && !value.contains([',', '(', ')']);
    Ok(if bare_ok && u.arbitrary()? {
        value.to_owned()
    } else {
        format!("{}{}", quote(value), blank(u)?)
    })
}

fn list_item(u: &mut Unstructured, item: Option<&str>) -> Result<String> {
    let text = match item {
        None => (*u.choose(&["null", "NULL", "Null"])?).to_owned(),
        Some(v)
            if !v.is_empty()
                && v.trim() == v
                && !v.starts_with('"')
                && !v.contains([',', ')'])
                && !v.eq_ignore_ascii_case("null")
                && u.arbitrary()? =>
        {
            v.to_owned()
        }
        Some(v) => quote(v),
    };
    Ok(format!("{}{text}{}", blank(u)?, blank(u)?))
}

fn condition(u: &mut Unstructured) -> Result<Condition> {
    let op = *u.choose(&Op::ALL)?;
    let value = match op {
        Op::In => {
            let n = if u.ratio(1, 16)? {
                MAX_IN_VALUES
            } else {
                u.int_in_range(0..=6)?
            };
            let item = |u: &mut Unstructured| -> Result<Option<String>> {
                Ok(if u.ratio(1, 5)? {
                    None
                } else {
                    Some(json::string(u)?)
                })
            };
            FilterValue::List((0..n).map(|_| item(u)).collect::<Result<_>>()?)
        }
        Op::Is => FilterValue::Is(*u.choose(&IsValue::ALL)?),
        _ => FilterValue::One(json::string(u)?),
    };
    let mut column = json::string(u)?;
    if column.is_empty() {
        column.push('c');
    }
    Ok(Condition {
        column,
        op,
        negate: u.arbitrary()?,
        value,
    })
}

fn print(u: &mut Unstructured, c: &Condition) -> Result<String> {
    let value = match &c.value {
        FilterValue::One(v) => scalar(u, v)?,
        FilterValue::List(vs) => {
            let items = vs
                .iter()
                .map(|v| list_item(u, v.as_deref()))
                .collect::<Result<Vec<_>>>()?;
            let inner = if items.is_empty() {
                blank(u)?.to_owned()
            } else {
                items.join(",")
            };
            format!("({inner}){}", blank(u)?)
        }
        FilterValue::Is(v) => {
            let name = v.as_str();
            match u.choose_index(3)? {
                0 => name.to_owned(),
                1 => name.to_ascii_uppercase(),
                _ => quote(name),
            }
        }
    };
    let not = if c.negate { "not." } else { "" };
    Ok(format!(
        "{}={not}{}.{value}",
        column(u, &c.column)?,
        c.op.sql_name()
    ))
}

/// Generated conditions, printed in a random legal form, parse back to themselves.
fn generated_filter(u: &mut Unstructured) -> Result<()> {
    let n = u.int_in_range(1..=5)?;
    let conditions = (0..n).map(|_| condition(u)).collect::<Result<Vec<_>>>()?;
    let printed = conditions
        .iter()
        .map(|c| print(u, c))
        .collect::<Result<Vec<_>>>()?;
    let filter = printed.join(",");
    match parse_filter(&filter) {
        Some(parsed) => assert_eq!(parsed, conditions, "{filter:?}"),
        None => panic!("refused {filter:?}, printed from {conditions:?}"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Whole entries

/// What §6.1 says of an entry: the binding, or which check refuses it first.
#[derive(Debug, PartialEq)]
enum Verdict {
    Ok(Binding),
    Select,
    NoParams,
    Filter,
    SelectOnWildcard,
}

const FILTERS: [&str; 8] = [
    "",
    "id=eq.1",
    "id=in.(1,2,null)",
    "name=not.ilike.%a%, done=is.false",
    "id=eq",
    "undefined",
    "a=eq.1,,b=eq.2",
    r#""x\"y"=neq."a,b""#,
];

fn entry_value(u: &mut Unstructured, strings: &[&str]) -> Result<Option<Value>> {
    Ok(match u.choose_index(6)? {
        0 => None,
        1 => Some(Value::Null),
        2 | 3 => Some(Value::String((*u.choose(strings)?).to_owned())),
        4 => Some(Value::String(json::string(u)?)),
        _ => Some(json::value(u, 2, true)?),
    })
}

fn entry(u: &mut Unstructured) -> Result<()> {
    let mut map = Map::new();
    let fields: [(&str, &[&str]); 4] = [
        (
            "event",
            &["INSERT", "update", "Delete", "*", "truncate", "İnsert"],
        ),
        ("schema", &["public", "*", "Sch ema", ""]),
        ("table", &["todos", "*", "select", ""]),
        ("filter", &FILTERS),
    ];
    for (key, strings) in fields {
        if let Some(v) = entry_value(u, strings)? {
            map.insert(key.to_owned(), v);
        }
    }
    let select = match u.choose_index(5)? {
        0 => None,
        1 => Some(Value::Null),
        2 => Some(json!([])),
        3 => Some(json!(["id", "title"])),
        _ => Some(json::value(u, 2, true)?),
    };
    if let Some(select) = select {
        map.insert("select".to_owned(), select);
    }
    if u.arbitrary()? {
        map.insert(json::string(u)?, json::value(u, 1, true)?);
    }
    let want = verdict(&map);
    let got = match parse_binding(&map) {
        Ok(b) => Verdict::Ok(b),
        Err(e) => {
            let m = e.to_string();
            if m.starts_with("Error parsing `select`") {
                Verdict::Select
            } else if m.starts_with("No subscription params provided") {
                Verdict::NoParams
            } else if m.starts_with("Error parsing `filter`") {
                Verdict::Filter
            } else if m.starts_with("Column selection is not supported for wildcard") {
                Verdict::SelectOnWildcard
            } else {
                panic!("unexpected refusal of {map:?}: {m}")
            }
        }
    };
    assert_eq!(got, want, "{}", Value::Object(map));
    Ok(())
}

/// §6.1, checked in Supabase's order: `select`, schema/table, `filter`, `select` on a wildcard.
fn verdict(map: &Map<String, Value>) -> Verdict {
    let select = match map.get("select") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let Some(columns) = items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
            else {
                return Verdict::Select;
            };
            (!columns.is_empty()).then_some(columns)
        }
        Some(_) => return Verdict::Select,
    };
    let text = |key| match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Verdict::NoParams),
    };
    let (schema, table) = match (text("schema"), text("table")) {
        (Err(v), _) | (_, Err(v)) => return v,
        (Ok(Some(s)), Ok(t)) => (s, t.unwrap_or_else(|| "*".to_owned())),
        (Ok(None), Ok(Some(t))) => ("public".to_owned(), t),
        (Ok(None), Ok(None)) => return Verdict::NoParams,
    };
    let filters = match map.get("filter") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(f)) => match parse_filter(f) {
            Some(c) => c,
            None => return Verdict::Filter,
        },
        Some(_) => return Verdict::Filter,
    };
    if select.is_some() && (schema == "*" || table == "*") {
        return Verdict::SelectOnWildcard;
    }
    let event = match map
        .get("event")
        .and_then(Value::as_str)
        .map(str::to_uppercase)
    {
        Some(e) if e == "INSERT" => Event::Insert,
        Some(e) if e == "UPDATE" => Event::Update,
        Some(e) if e == "DELETE" => Event::Delete,
        _ => Event::All,
    };
    Verdict::Ok(Binding {
        event,
        schema,
        table,
        filters,
        select,
    })
}
