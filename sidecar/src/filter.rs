//! Reads one `config.postgres_changes` entry of a `phx_join` (docs/protocol.md §6.1, §6.2,
//! §10.3) into a typed subscription spec. Pure: no database, no I/O.
//!
//! Invariants:
//! * The output is data, never SQL: column names and values are the text the client meant
//!   (quotes and escapes removed) and go to the database as parameters.
//! * What Supabase Realtime accepts is accepted with the same meaning: the event, schema and table
//!   defaults, the 13 operators and `not.`, comma-separated conditions that must all hold,
//!   PostgREST double quotes with backslash escapes, and `in` lists read like the Postgres array
//!   literal Supabase builds from them (unquoted elements trimmed, unquoted `null` is SQL NULL).
//! * Departures, each with a specific error: a quote that never closes, text after a closing
//!   quote, unbalanced parentheses in a bare value and empty `in` elements are refused (Supabase
//!   keeps such values verbatim or fails later in the database); `select` must be an array of
//!   strings. Leniencies: `schema` or `table` alone takes its default even with a `filter`, and
//!   whitespace around column names is ignored.
//! * Checks run in Supabase's order: `select`, then schema/table, then `filter`, then `select`
//!   on a wildcard.
//! * Not checked here, because they need the table: that columns exist, that values cast to the
//!   column type, that regexes compile, that `is` is used with a boolean column for
//!   `true`/`false`/`unknown`. The database checks them when it creates the subscription.
//! * The session uses this module once Postgres Changes land; it is `pub` so that the crate stays
//!   warning-free until then.

use serde_json::{Map, Value};

use crate::error::{FilterError, FilterSyntax};

/// Most values an `in` list may hold (docs/protocol.md §6.2).
pub const MAX_IN_VALUES: usize = 100;

const WILDCARD: &str = "*";
const DEFAULT_SCHEMA: &str = "public";

/// One `config.postgres_changes` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub event: Event,
    /// `*` for every schema of the publication.
    pub schema: String,
    /// `*` for every table of the schema.
    pub table: String,
    /// All must hold.
    pub filters: Vec<Condition>,
    /// Columns the payload is limited to (plus the primary key); `None`: all columns.
    pub select: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Insert,
    Update,
    Delete,
    All,
}

impl Event {
    /// The `action_filter`: the change type to match, `*` for any.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Insert => "INSERT",
            Event::Update => "UPDATE",
            Event::Delete => "DELETE",
            Event::All => "*",
        }
    }

    /// Unicode upper-casing, as Elixir's `String.upcase`; anything else, or no string, is `*`.
    fn parse(value: Option<&Value>) -> Self {
        match value
            .and_then(Value::as_str)
            .map(str::to_uppercase)
            .as_deref()
        {
            Some("INSERT") => Event::Insert,
            Some("UPDATE") => Event::Update,
            Some("DELETE") => Event::Delete,
            _ => Event::All,
        }
    }
}

/// `column=[not.]op.value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub column: String,
    pub op: Op,
    /// The `not.` prefix: the row passes when the comparison does not.
    pub negate: bool,
    pub value: FilterValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
    Like,
    Ilike,
    Match,
    Imatch,
    Is,
    IsDistinct,
}

impl Op {
    /// Every operator (the fuzz targets draw from this list too).
    pub const ALL: [Op; 13] = [
        Op::Eq,
        Op::Neq,
        Op::Lt,
        Op::Lte,
        Op::Gt,
        Op::Gte,
        Op::In,
        Op::Like,
        Op::Ilike,
        Op::Match,
        Op::Imatch,
        Op::Is,
        Op::IsDistinct,
    ];

    /// The operator's name in filters, which is also what the database function takes.
    pub fn sql_name(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Neq => "neq",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::In => "in",
            Op::Like => "like",
            Op::Ilike => "ilike",
            Op::Match => "match",
            Op::Imatch => "imatch",
            Op::Is => "is",
            Op::IsDistinct => "isdistinct",
        }
    }

    /// Case-sensitive, like Supabase and PostgREST.
    fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.sql_name() == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterValue {
    /// Every operator but `in` and `is`.
    One(String),
    /// `in`; `None` is SQL NULL (an unquoted `null`), which equals nothing.
    List(Vec<Option<String>>),
    Is(IsValue),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsValue {
    Null,
    True,
    False,
    Unknown,
}

impl IsValue {
    /// Every value `is` takes (the fuzz targets draw from this list too).
    pub const ALL: [IsValue; 4] = [
        IsValue::Null,
        IsValue::True,
        IsValue::False,
        IsValue::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IsValue::Null => "null",
            IsValue::True => "true",
            IsValue::False => "false",
            IsValue::Unknown => "unknown",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        IsValue::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(text))
    }
}

/// Validates one `postgres_changes` entry as realtime-js sends it.
pub fn parse_binding(entry: &Map<String, Value>) -> Result<Binding, FilterError> {
    let select = select(entry.get("select"))?;
    let (schema, table) = match (text(entry, "schema")?, text(entry, "table")?) {
        (Some(schema), table) => (schema, table.unwrap_or(WILDCARD)),
        (None, Some(table)) => (DEFAULT_SCHEMA, table),
        (None, None) => return Err(FilterError::no_params(entry)),
    };
    let filters = match entry.get("filter") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(filter)) => parse_filter(filter)?,
        Some(_) => return Err(FilterSyntax::NotAString.into()),
    };
    if select.is_some() && (schema == WILDCARD || table == WILDCARD) {
        return Err(FilterError::SelectOnWildcard);
    }
    Ok(Binding {
        event: Event::parse(entry.get("event")),
        schema: schema.to_owned(),
        table: table.to_owned(),
        filters,
        select,
    })
}

/// `schema` or `table`: absent and `null` both mean "not given".
fn text<'a>(entry: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, FilterError> {
    match entry.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(FilterError::no_params(entry)),
    }
}

/// An empty list selects all columns, like no list (Supabase).
fn select(value: Option<&Value>) -> Result<Option<Vec<String>>, FilterError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => {
            let columns = items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or(FilterError::SelectNotList)?;
            Ok((!columns.is_empty()).then_some(columns))
        }
        Some(_) => Err(FilterError::SelectNotList),
    }
}

/// Conditions separated by commas; blank means none.
fn parse_filter(filter: &str) -> Result<Vec<Condition>, FilterSyntax> {
    let mut cur = Cursor {
        src: filter.trim(),
        pos: 0,
    };
    let mut conditions = Vec::new();
    if cur.src.is_empty() {
        return Ok(conditions);
    }
    loop {
        conditions.push(condition(&mut cur)?);
        if !cur.eat(',') {
            return Ok(conditions);
        }
    }
}

/// `column=[not.]op.value`, leaving the cursor on the comma that ends it or at the end.
fn condition(cur: &mut Cursor) -> Result<Condition, FilterSyntax> {
    cur.skip_ws();
    let start = cur.pos;
    if matches!(cur.peek(), None | Some(',')) {
        return Err(FilterSyntax::EmptyCondition);
    }
    let column = if cur.peek() == Some('"') {
        let column = cur.quoted(start)?;
        cur.after_quote(start, &['='])?;
        column
    } else {
        cur.take_while(|c| c != '=' && c != ',').trim().to_owned()
    };
    if !cur.eat('=') {
        return Err(FilterSyntax::MissingEquals(cur.context(start)));
    }
    if column.is_empty() {
        return Err(FilterSyntax::EmptyColumn(cur.context(start)));
    }
    let negate = cur.eat_str("not.");
    let name = cur.take_while(|c| c != '.' && c != ',');
    if !cur.eat('.') {
        return Err(FilterSyntax::MissingDot(cur.context(start)));
    }
    let op = Op::from_name(name).ok_or_else(|| FilterSyntax::UnknownOperator(name.to_owned()))?;
    let value = match op {
        Op::In => FilterValue::List(in_list(cur, start, &column)?),
        Op::Is => {
            let text = scalar(cur, start)?;
            FilterValue::Is(IsValue::parse(&text).ok_or(FilterSyntax::BadIsValue(text))?)
        }
        _ => FilterValue::One(scalar(cur, start)?),
    };
    Ok(Condition {
        column,
        op,
        negate,
        value,
    })
}

/// A quoted string, or bare text up to the next comma outside parentheses (so `f(a,b)` is one
/// value, as in Supabase). A bare value keeps its leading whitespace (Supabase does), not the
/// whitespace before the comma, which separates conditions.
fn scalar(cur: &mut Cursor, start: usize) -> Result<String, FilterSyntax> {
    if cur.peek() == Some('"') {
        let value = cur.quoted(start)?;
        cur.after_quote(start, &[','])?;
        return Ok(value);
    }
    let from = cur.pos;
    let mut depth = 0usize;
    while let Some(c) = cur.peek() {
        match c {
            ',' if depth == 0 => break,
            '(' => depth += 1,
            ')' if depth == 0 => {
                return Err(FilterSyntax::UnbalancedParentheses(cur.context(start)));
            }
            ')' => depth -= 1,
            _ => {}
        }
        cur.bump();
    }
    if depth > 0 {
        return Err(FilterSyntax::UnbalancedParentheses(cur.context(start)));
    }
    Ok(cur.src[from..cur.pos].trim_end().to_owned())
}

/// `(a, "b,c", null)`: elements trimmed, quoted ones unescaped, an unquoted `null` (any case)
/// is SQL NULL; `()` is an empty list, which nothing is in.
fn in_list(
    cur: &mut Cursor,
    start: usize,
    column: &str,
) -> Result<Vec<Option<String>>, FilterSyntax> {
    if !cur.eat('(') {
        return Err(FilterSyntax::InNotParenthesized);
    }
    let mut values = Vec::new();
    cur.skip_ws();
    if !cur.eat(')') {
        loop {
            if values.len() == MAX_IN_VALUES {
                return Err(FilterSyntax::TooManyInValues);
            }
            cur.skip_ws();
            let value = if cur.peek() == Some('"') {
                let value = cur.quoted(start)?;
                cur.after_quote(start, &[',', ')'])?;
                Some(value)
            } else {
                let raw = cur.take_while(|c| c != ',' && c != ')').trim();
                if raw.is_empty() {
                    return Err(FilterSyntax::EmptyInValue(column.to_owned()));
                }
                (!raw.eq_ignore_ascii_case("null")).then(|| raw.to_owned())
            };
            values.push(value);
            match cur.bump() {
                Some(',') => {}
                Some(')') => break,
                _ => return Err(FilterSyntax::InNotParenthesized),
            }
        }
    }
    cur.skip_ws();
    if !matches!(cur.peek(), None | Some(',')) {
        return Err(FilterSyntax::InNotParenthesized);
    }
    Ok(values)
}

/// A position in a trimmed filter string; always on a char boundary.
struct Cursor<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, c: char) -> bool {
        self.eat_str(c.encode_utf8(&mut [0; 4]))
    }

    fn eat_str(&mut self, s: &str) -> bool {
        let found = self.src[self.pos..].starts_with(s);
        if found {
            self.pos += s.len();
        }
        found
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> &'a str {
        let from = self.pos;
        while self.peek().is_some_and(&keep) {
            self.bump();
        }
        &self.src[from..self.pos]
    }

    fn skip_ws(&mut self) {
        self.take_while(char::is_whitespace);
    }

    /// At `"`: the string up to the closing quote; a backslash takes the next char literally.
    fn quoted(&mut self, start: usize) -> Result<String, FilterSyntax> {
        self.bump();
        let mut text = String::new();
        loop {
            match self.bump() {
                Some('"') => return Ok(text),
                Some('\\') => match self.bump() {
                    Some(c) => text.push(c),
                    None => break,
                },
                Some(c) => text.push(c),
                None => break,
            }
        }
        // The quote swallowed the rest, commas included: show all of it.
        Err(FilterSyntax::UnterminatedQuote(
            self.src[start..].to_owned(),
        ))
    }

    /// After a closing quote only whitespace may come before one of `ends` or the end.
    fn after_quote(&mut self, start: usize, ends: &[char]) -> Result<(), FilterSyntax> {
        self.skip_ws();
        match self.peek() {
            Some(c) if !ends.contains(&c) => Err(FilterSyntax::TextAfterQuote(self.context(start))),
            _ => Ok(()),
        }
    }

    /// The condition that began at `start`, up to the first comma from here on.
    fn context(&self, start: usize) -> String {
        let rest = &self.src[self.pos..];
        let end = rest.find(',').map_or(self.src.len(), |i| self.pos + i);
        self.src[start..end].trim().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(entry: Value) -> Result<Binding, FilterError> {
        let Value::Object(entry) = entry else {
            panic!("entries are objects")
        };
        parse_binding(&entry)
    }

    fn filters(filter: &str) -> Vec<Condition> {
        parse(json!({"schema": "public", "table": "t", "filter": filter}))
            .unwrap_or_else(|e| panic!("{filter}: {e}"))
            .filters
    }

    fn only(filter: &str) -> Condition {
        let mut all = filters(filter);
        assert_eq!(all.len(), 1, "{filter}");
        all.remove(0)
    }

    fn value(filter: &str) -> FilterValue {
        only(filter).value
    }

    fn one(text: &str) -> FilterValue {
        FilterValue::One(text.to_owned())
    }

    fn list(items: &[Option<&str>]) -> FilterValue {
        FilterValue::List(items.iter().map(|i| i.map(str::to_owned)).collect())
    }

    fn error(entry: Value) -> String {
        parse(entry).expect_err("must fail").to_string()
    }

    fn filter_error(filter: &str) -> String {
        error(json!({"schema": "public", "table": "t", "filter": filter}))
    }

    #[test]
    fn op_and_event_names() {
        let names: Vec<_> = Op::ALL.iter().map(|op| op.sql_name()).collect();
        assert_eq!(
            names,
            [
                "eq",
                "neq",
                "lt",
                "lte",
                "gt",
                "gte",
                "in",
                "like",
                "ilike",
                "match",
                "imatch",
                "is",
                "isdistinct"
            ]
        );
        let events = [Event::Insert, Event::Update, Event::Delete, Event::All];
        let events: Vec<_> = events.iter().map(|e| e.as_str()).collect();
        assert_eq!(events, ["INSERT", "UPDATE", "DELETE", "*"]);
        assert_eq!(IsValue::Unknown.as_str(), "unknown");
    }

    #[test]
    fn every_op_plain_and_negated() {
        for op in Op::ALL {
            let text = match op {
                Op::In => "(1,2)",
                Op::Is => "null",
                _ => "1",
            };
            let expected = match op {
                Op::In => list(&[Some("1"), Some("2")]),
                Op::Is => FilterValue::Is(IsValue::Null),
                _ => one("1"),
            };
            for negate in [false, true] {
                let not = if negate { "not." } else { "" };
                let filter = format!("col={not}{}.{text}", op.sql_name());
                let want = Condition {
                    column: "col".into(),
                    op,
                    negate,
                    value: expected.clone(),
                };
                assert_eq!(only(&filter), want, "{filter}");
            }
        }
    }

    #[test]
    fn conditions_are_anded_in_order() {
        let all = filters("id=gt.0, id=lt.100 ,name=not.ilike.%a%,done=is.false");
        let summary: Vec<_> = all
            .iter()
            .map(|c| (c.column.as_str(), c.op, c.negate, c.value.clone()))
            .collect();
        assert_eq!(
            summary,
            [
                ("id", Op::Gt, false, one("0")),
                ("id", Op::Lt, false, one("100")),
                ("name", Op::Ilike, true, one("%a%")),
                ("done", Op::Is, false, FilterValue::Is(IsValue::False)),
            ]
        );
        // realtime-js builder output.
        assert_eq!(
            filters("amount=gt.100,status=not.in.(draft,archived)").len(),
            2
        );
    }

    #[test]
    fn blank_or_missing_filter_means_no_conditions() {
        assert!(filters("").is_empty());
        assert!(filters("  \t ").is_empty());
        for entry in [
            json!({"schema": "public", "table": "t"}),
            json!({"schema": "public", "table": "t", "filter": null}),
        ] {
            assert!(parse(entry).map(|b| b.filters.is_empty()).unwrap_or(false));
        }
    }

    #[test]
    fn quoted_values() {
        assert_eq!(value(r#"name=eq."a,b""#), one("a,b"));
        assert_eq!(value(r#"name=eq."say \"hi\"""#), one(r#"say "hi""#));
        assert_eq!(value(r#"name=eq."back\\slash""#), one(r"back\slash"));
        assert_eq!(value(r#"name=eq." padded ""#), one(" padded "));
        assert_eq!(value(r#"name=eq."f(x)""#), one("f(x)"));
        assert_eq!(value(r#"name=eq."""#), one(""));
        assert_eq!(value(r#"name=eq."\q""#), one("q"));
        let all = filters(r#"a=eq."x,y" , b=neq."(z)""#);
        assert_eq!(
            (all[0].value.clone(), all[1].value.clone()),
            (one("x,y"), one("(z)"))
        );
    }

    #[test]
    fn bare_values_are_verbatim() {
        assert_eq!(value("url=eq.a=b.c"), one("a=b.c"));
        assert_eq!(value("name=eq. lead"), one(" lead"));
        assert_eq!(filters("name=eq.trail  ,x=eq.1")[0].value, one("trail"));
        assert_eq!(value(r#"name=eq.a"b"#), one(r#"a"b"#));
        assert_eq!(value("name=eq.f(x,y)"), one("f(x,y)"));
        assert_eq!(value("name=eq."), one(""));
        assert_eq!(value("name=eq.null"), one("null"));
        assert_eq!(value("name=like.%foo_"), one("%foo_"));
        assert_eq!(value(r"name=match.^\d+$"), one(r"^\d+$"));
    }

    #[test]
    fn sql_looking_text_is_kept_as_data() {
        assert_eq!(
            value("name=eq.'; drop table x; --"),
            one("'; drop table x; --")
        );
        let c = only(r#"a"; drop table x; --=eq.1 or 1=1"#);
        assert_eq!(c.column, r#"a"; drop table x; --"#);
        assert_eq!(c.value, one("1 or 1=1"));
        let c = only(r#"id=in.(1,"2); delete from t; --")"#);
        assert_eq!(c.value, list(&[Some("1"), Some("2); delete from t; --")]));
    }

    #[test]
    fn in_lists() {
        assert_eq!(value("s=in.(hidee,ho)"), list(&[Some("hidee"), Some("ho")]));
        assert_eq!(
            value(r#"s=in.( a , "b,c" ,"d \"e\"", " f ")"#),
            list(&[Some("a"), Some("b,c"), Some(r#"d "e""#), Some(" f ")])
        );
        // realtime-js quotes what a Postgres array literal would misread.
        assert_eq!(
            value(r#"s=in.("",null,NULL,"null","{x}")"#),
            list(&[Some(""), None, None, Some("null"), Some("{x}")])
        );
        assert_eq!(value("s=in.()"), list(&[]));
        assert_eq!(value("s=in.(  )"), list(&[]));
        assert_eq!(filters("s=in.(1) ,t=eq.2")[0].value, list(&[Some("1")]));
        let c = only("s=not.in.(draft,archived)");
        assert!(c.negate);
        assert_eq!(c.value, list(&[Some("draft"), Some("archived")]));
    }

    #[test]
    fn in_list_limit() {
        let items = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        match value(&format!("id=in.({})", items(MAX_IN_VALUES))) {
            FilterValue::List(values) => assert_eq!(values.len(), 100),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            filter_error(&format!("id=in.({})", items(MAX_IN_VALUES + 1))),
            "Error parsing `filter` params: `in` filter accepts at most 100 values"
        );
    }

    #[test]
    fn is_values() {
        for (text, want) in [
            ("null", IsValue::Null),
            ("NULL", IsValue::Null),
            ("True", IsValue::True),
            ("false", IsValue::False),
            ("UnKnown", IsValue::Unknown),
            (r#""null""#, IsValue::Null),
        ] {
            assert_eq!(value(&format!("c=is.{text}")), FilterValue::Is(want));
        }
        let c = only("deleted_at=not.is.null");
        assert_eq!((c.op, c.negate), (Op::Is, true));
    }

    #[test]
    fn column_names() {
        assert_eq!(only("名前=eq.1").column, "名前");
        assert_eq!(only("émoji_1=eq.1").column, "émoji_1");
        assert_eq!(only("1col=eq.1").column, "1col");
        assert_eq!(only("my col=eq.1").column, "my col");
        assert_eq!(only(" id =eq.1").column, "id");
        assert_eq!(only(r#""a,b=c"=eq.1"#).column, "a,b=c");
        assert_eq!(only(r#" "x\"y" =eq.1"#).column, r#"x"y"#);
        assert_eq!(only("Name=eq.1").column, "Name");
    }

    #[test]
    fn schema_and_table_defaults() {
        let binding = parse(json!({"schema": "public"})).expect("schema only");
        assert_eq!(
            (binding.schema.as_str(), binding.table.as_str()),
            ("public", "*")
        );
        let binding = parse(json!({"table": "todos"})).expect("table only");
        assert_eq!(
            (binding.schema.as_str(), binding.table.as_str()),
            ("public", "todos")
        );
        let binding = parse(json!({"schema": "s", "table": "t", "event": "INSERT"})).expect("both");
        assert_eq!(
            binding,
            Binding {
                event: Event::Insert,
                schema: "s".into(),
                table: "t".into(),
                filters: Vec::new(),
                select: None,
            }
        );
        let binding = parse(json!({"schema": "*", "table": "*"})).expect("wildcards");
        assert_eq!(
            (binding.schema.as_str(), binding.table.as_str()),
            ("*", "*")
        );
        let binding = parse(json!({"table": "todos", "schema": null, "filter": "id=eq.1"}))
            .expect("table with a filter");
        assert_eq!(
            (binding.schema.as_str(), binding.filters.len()),
            ("public", 1)
        );
    }

    #[test]
    fn events_are_case_insensitive() {
        for (event, want) in [
            (json!("insert"), Event::Insert),
            (json!("Update"), Event::Update),
            (json!("DELETE"), Event::Delete),
            (json!("*"), Event::All),
            (json!("truncate"), Event::All),
            (json!(3), Event::All),
            (json!(null), Event::All),
        ] {
            let binding = parse(json!({"schema": "public", "event": event})).expect("valid");
            assert_eq!(binding.event, want);
        }
        let binding = parse(json!({"schema": "public"})).expect("valid");
        assert_eq!(binding.event, Event::All);
    }

    #[test]
    fn select_columns() {
        let binding = parse(json!({"schema": "public", "table": "t", "select": ["id", "title"]}))
            .expect("valid");
        assert_eq!(binding.select, Some(vec!["id".into(), "title".into()]));
        for select in [json!([]), json!(null)] {
            let binding =
                parse(json!({"schema": "public", "table": "t", "select": select})).expect("valid");
            assert_eq!(binding.select, None);
        }
        let not_list = "Error parsing `select` params: expected a list of column name strings, \
                        e.g. select: [\"col1\", \"col2\"]";
        for select in [
            json!("id,title"),
            json!(1),
            json!({"id": true}),
            json!(["id", 2]),
        ] {
            assert_eq!(
                error(json!({"schema": "public", "table": "t", "select": select})),
                not_list
            );
        }
        let wildcard = "Column selection is not supported for wildcard subscriptions. \
                        Provide an explicit schema and table name.";
        for entry in [
            json!({"schema": "public", "select": ["id"]}),
            json!({"schema": "*", "table": "t", "select": ["id"]}),
            json!({"table": "*", "select": ["id"]}),
        ] {
            assert_eq!(error(entry), wildcard);
        }
        // An empty list selects nothing in particular, so wildcards are fine.
        assert!(parse(json!({"schema": "*", "select": []})).is_ok());
    }

    #[test]
    fn missing_params() {
        let prefix = "No subscription params provided. Please provide at least a `schema` or \
                      `table` to subscribe to: ";
        assert_eq!(error(json!({})), format!("{prefix}{{}}"));
        assert_eq!(
            error(json!({"event": "INSERT", "filter": "id=eq.1"})),
            format!(r#"{prefix}{{"event":"INSERT","filter":"id=eq.1"}}"#)
        );
        assert_eq!(
            error(json!({"schema": 1, "table": "t"})),
            format!(r#"{prefix}{{"schema":1,"table":"t"}}"#)
        );
        assert_eq!(
            error(json!({"schema": null, "table": null})),
            format!(r#"{prefix}{{"schema":null,"table":null}}"#)
        );
        assert_eq!(
            error(json!({"user_token": "secret"})),
            format!("{prefix}<redacted>")
        );
        assert_eq!(
            error(json!({"event": "*", "auth_token": "secret"})),
            format!("{prefix}<redacted>")
        );
    }

    #[test]
    fn filter_errors() {
        let prefix = "Error parsing `filter` params: ";
        for (filter, detail) in [
            ("undefined", "missing `=` in `undefined`"),
            ("id=eq.1,name", "missing `=` in `name`"),
            (
                r#""id"x=eq.1"#,
                r#"unexpected text after a closing quote in `"id"x=eq.1`"#,
            ),
            ("=eq.1", "empty column name in `=eq.1`"),
            (r#"""=eq.1"#, r#"empty column name in `""=eq.1`"#),
            ("id=eq", "missing `.` after the operator in `id=eq`"),
            ("id=5,b=eq.1", "missing `.` after the operator in `id=5`"),
            ("subject=foo.hey", "unknown operator `foo`"),
            ("id=EQ.1", "unknown operator `EQ`"),
            ("id= eq.1", "unknown operator ` eq`"),
            ("id=not.not.eq.1", "unknown operator `not`"),
            ("id=not.1", "missing `.` after the operator in `id=not.1`"),
            (r#"name=eq."a,b"#, r#"unterminated quote in `name=eq."a,b`"#),
            (r#"name=eq."a\""#, r#"unterminated quote in `name=eq."a\"`"#),
            (r#""na,me=eq.1"#, r#"unterminated quote in `"na,me=eq.1`"#),
            (
                r#"name=eq."a"b,c=eq.1"#,
                r#"unexpected text after a closing quote in `name=eq."a"b`"#,
            ),
            (
                r#"s=in.("a"b)"#,
                r#"unexpected text after a closing quote in `s=in.("a"b)`"#,
            ),
            (
                "a=eq.1,,b=eq.2",
                "filter must not contain empty segments (check for extra commas)",
            ),
            (
                "a=eq.1,",
                "filter must not contain empty segments (check for extra commas)",
            ),
            (
                ",a=eq.1",
                "filter must not contain empty segments (check for extra commas)",
            ),
            (
                "a=eq.f(x",
                "unbalanced parentheses in `a=eq.f(x`; quote values containing `,`, `(` or `)`",
            ),
            (
                "a=eq.:),b=eq.1",
                "unbalanced parentheses in `a=eq.:)`; quote values containing `,`, `(` or `)`",
            ),
            (
                "s=in.a,b",
                "`in` filter value must be wrapped by parentheses",
            ),
            (
                "s=in. (a)",
                "`in` filter value must be wrapped by parentheses",
            ),
            (
                "s=in.(a,b",
                "`in` filter value must be wrapped by parentheses",
            ),
            (
                "s=in.(a)b",
                "`in` filter value must be wrapped by parentheses",
            ),
            (
                "s=in.(a,,b)",
                r#"empty value in the `in` list of `s`; write "" for an empty string"#,
            ),
            (
                "s=in.(a, )",
                r#"empty value in the `in` list of `s`; write "" for an empty string"#,
            ),
            (
                "c=is.nil",
                "invalid `is` value `nil`; expected null, true, false or unknown",
            ),
            (
                "c=is.",
                "invalid `is` value ``; expected null, true, false or unknown",
            ),
        ] {
            assert_eq!(
                filter_error(filter),
                format!("{prefix}{detail}"),
                "{filter}"
            );
        }
        assert_eq!(
            error(json!({"schema": "public", "table": "t", "filter": 7})),
            format!("{prefix}`filter` must be a string")
        );
    }

    #[test]
    fn errors_come_in_supabase_order() {
        // select before schema/table, schema/table before filter, filter before the wildcard rule.
        assert!(error(json!({"select": "id"})).starts_with("Error parsing `select`"));
        assert!(error(json!({"filter": "bad"})).starts_with("No subscription params"));
        assert!(
            error(json!({"schema": "*", "filter": "bad", "select": ["id"]}))
                .starts_with("Error parsing `filter`")
        );
    }
}
