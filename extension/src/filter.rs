//! Postgres Changes filters as SQL, for capture (`changes`) and for validation at subscribe time
//! (`realtime._filter_check`, called by `realtime._subscribe`).
//!
//! Invariants:
//! - Nothing a client sent becomes SQL text. Column names come from the catalog, quoted; the
//!   operator comes from a fixed list; `is` takes one of four keywords; values travel as
//!   parameters and reach the column's type through CAST (the type's input function, or a
//!   cast), evaluated as the table's owner, security-restricted (`identity::as_table_owner`).
//! - Queries are parsed with `search_path` pinned to `pg_catalog, pg_temp`: an operator of a
//!   type outside pg_catalog resolves through the type's implicit casts, never through a schema
//!   someone else could write to.
//! - Every identifier the SQL introduces is qualified by an alias of its own (`r.w`, `p.v0`),
//!   so no column name of the user's table can be mistaken for one.
use pgrx::prelude::*;
use pgrx::JsonB;
use serde::Deserialize;
use serde_json::Value;

use crate::identity;

/// One condition of a subscription, as `realtime._subscribe` stores it.
#[derive(Deserialize, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Condition {
    pub column: String,
    pub op: String,
    #[serde(default)]
    pub negate: bool,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub values: Option<Vec<String>>,
}

/// What a condition's SQL depends on besides its parameter: conditions of one shape share a query.
pub type Shape = (String, String, bool, Option<String>);

impl Condition {
    pub fn shape(&self) -> Shape {
        let keyword = (self.op == "is").then(|| self.value.clone().unwrap_or_default().to_uppercase());
        (self.column.clone(), self.op.clone(), self.negate, keyword)
    }

    /// The condition's parameter: its value, or for `in` its values as a JSON array; None for `is`.
    pub fn param(&self) -> Option<String> {
        match self.op.as_str() {
            "is" => None,
            "in" => Some(Value::from(self.values.clone().unwrap_or_default()).to_string()),
            _ => Some(self.value.clone().unwrap_or_default()),
        }
    }

    /// The condition as SQL over the populated row `r.w`, with its parameter in `slot` (text).
    /// `quoted`: the column's name as an identifier; `typed`: its type as SQL.
    pub fn sql(&self, quoted: &str, typed: &str, slot: &str) -> Result<String, String> {
        let column = format!("(r.w).{quoted}");
        let value = format!("CAST({slot} AS {typed})");
        let comparison = |op: &str| format!("{column} OPERATOR(pg_catalog.{op}) {value}");
        let sql = match self.op.as_str() {
            "eq" => comparison("="),
            "neq" => comparison("<>"),
            "lt" => comparison("<"),
            "lte" => comparison("<="),
            "gt" => comparison(">"),
            "gte" => comparison(">="),
            "like" => comparison("~~"),
            "ilike" => comparison("~~*"),
            "match" => format!("{column}::pg_catalog.text OPERATOR(pg_catalog.~) {slot}"),
            "imatch" => format!("{column}::pg_catalog.text OPERATOR(pg_catalog.~*) {slot}"),
            "in" => format!(
                "{column} OPERATOR(pg_catalog.=) any (array(select CAST(e.e AS {typed}) \
                 from pg_catalog.jsonb_array_elements_text({slot}::pg_catalog.jsonb) e(e)))"
            ),
            "isdistinct" => format!("{column} is distinct from {value}"),
            "is" => match self.shape().3.as_deref() {
                Some(keyword @ ("NULL" | "TRUE" | "FALSE" | "UNKNOWN")) => format!("{column} is {keyword}"),
                _ => return Err(format!("invalid value for is: {}", self.value.as_deref().unwrap_or(""))),
            },
            other => return Err(format!("unknown filter operator: {other}")),
        };
        Ok(if self.negate { format!("not ({sql})") } else { sql })
    }
}

/// The query that keeps the (row, subscription) pairs passing every condition of one shape:
/// `$1` row ords and `$2` row images (text), `$3`/`$4` the pairs' ords and subscription ids,
/// then one text array per condition with the pairs' parameters. `columns` gives each
/// condition's (quoted name, type as SQL).
pub fn shape_sql(entity_sql: &str, conditions: &[Condition], columns: &[(String, String)]) -> Result<String, String> {
    let mut params = String::new();
    let mut slots = String::new();
    let mut tests = Vec::with_capacity(conditions.len());
    for (i, (cond, (quoted, typed))) in conditions.iter().zip(columns).enumerate() {
        params.push_str(&format!(", pg_catalog.unnest(${}::pg_catalog.text[])", i + 5));
        slots.push_str(&format!(", v{i}"));
        tests.push(cond.sql(quoted, typed, &format!("p.v{i}"))?);
    }
    Ok(format!(
        "select p.ord, p.sub
           from (select o.ord, pg_catalog.jsonb_populate_record(null::{entity_sql}, o.rec::pg_catalog.jsonb) as w
                   from rows from (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.text[])) o(ord, rec)
                  offset 0) r
           join rows from (pg_catalog.unnest($3::pg_catalog.int8[]), pg_catalog.unnest($4::pg_catalog.int8[]){params})
                p(ord, sub{slots})
             on p.ord OPERATOR(pg_catalog.=) r.ord
          where {}",
        if tests.is_empty() { "true".to_owned() } else { tests.join(" and ") }
    ))
}

/// The table's name and a column's (quoted name, type as SQL), rendered with the pinned search
/// path (types outside pg_catalog come out schema-qualified). Inside SPI.
pub const COLUMN_TYPES_SQL: &str = "
    select pg_catalog.format('%I.%I', n.nspname, c.relname), a.attname::pg_catalog.text,
           pg_catalog.quote_ident(a.attname), pg_catalog.format_type(a.atttypid, a.atttypmod)
      from pg_catalog.pg_class c
      join pg_catalog.pg_namespace n on n.oid OPERATOR(pg_catalog.=) c.relnamespace
      join pg_catalog.pg_attribute a on a.attrelid OPERATOR(pg_catalog.=) c.oid
     where c.oid OPERATOR(pg_catalog.=) $1 and a.attnum OPERATOR(pg_catalog.>) 0 and not a.attisdropped";

/// `realtime._filter_check(entity, cond)`: validates one condition against `entity` as its
/// owner (the value casts to the column's type, the operator exists for it, a regular
/// expression compiles) and returns the value as `to_jsonb` renders it for an `eq` condition
/// (what capture compares row images with), else NULL. Errors are for the client.
#[pg_extern(volatile, parallel_unsafe, name = "_filter_check")]
fn filter_check(entity: pg_sys::Oid, cond: JsonB) -> Option<JsonB> {
    let cond: Condition = match serde_json::from_value(cond.0) {
        Ok(cond) => cond,
        Err(err) => error!("invalid filter: {err}"),
    };
    let Some(owner) = identity::relation_owner(entity) else {
        error!("relation {entity:?} does not exist")
    };
    identity::with_rendering(|| {
        identity::as_table_owner(owner, || {
            Spi::connect(|client| {
                let mut found = None;
                for row in client.select(COLUMN_TYPES_SQL, None, &[entity.into()])? {
                    if row.get::<String>(2)?.as_deref() == Some(cond.column.as_str()) {
                        found = Some((row.get::<String>(1)?, row.get::<String>(3)?, row.get::<String>(4)?));
                    }
                }
                let Some((Some(entity_sql), Some(quoted), Some(typed))) = found else {
                    error!("column \"{}\" does not exist", cond.column)
                };
                let sql = shape_sql(&entity_sql, std::slice::from_ref(&cond), &[(quoted, typed.clone())])
                    .unwrap_or_else(|message| error!("{message}"));
                let param = cond.param();
                let args = [
                    vec![0i64].into(),
                    vec!["{}"].into(),
                    vec![0i64].into(),
                    vec![0i64].into(),
                    vec![param.clone()].into(),
                ];
                client.select(&sql, None, &args)?;
                if matches!(cond.op.as_str(), "match" | "imatch") {
                    let regex = if cond.op == "match" { "~" } else { "~*" };
                    client.select(&format!("select '' OPERATOR(pg_catalog.{regex}) $1"), None, &[param.clone().into()])?;
                }
                if cond.op == "eq" && !cond.negate {
                    let sql = format!("select pg_catalog.to_jsonb(CAST($1 AS {typed}))");
                    return client.select(&sql, None, &[param.into()])?.first().get_one::<JsonB>();
                }
                Ok::<_, pgrx::spi::Error>(None)
            })
        })
    })
    .unwrap_or_else(|err| error!("{err}"))
}
