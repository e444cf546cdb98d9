//! Postgres Changes filters as SQL, for capture (`changes`) and for validation at subscribe time
//! (`realtime._filter_check`, called by `realtime._subscribe`).
//!
//! Invariants:
//! - Nothing a client sent becomes SQL text. Column names come from the catalog, quoted; the
//!   operator comes from a fixed list; `is` takes one of four keywords; values travel as
//!   parameters and reach the column's type through CAST (the type's input function, or a
//!   cast), evaluated as the table's owner, security-restricted (`identity::as_table_owner`).
//! - Filters compare the row's own typed values (the statement's transition table), never a
//!   rendering of them: numbers keep every digit and a jsonb `null` is not an SQL NULL.
//! - Operators are looked up, never resolved through a search path: the one the column's (base)
//!   type declares in its own schema (citext's case-insensitive `=`), else pg_catalog's. Queries
//!   are parsed with `search_path` pinned to `pg_catalog, pg_temp`.
//! - Every name the SQL introduces is qualified by an alias of its own (`r.w`, `p.v0`), and the
//!   transition table's alias is chosen unlike any column of the table, so no column name can be
//!   mistaken for one.
//! - The indexed `eq` path (`realtime.subscription.eq_value`, compared with the row's `to_jsonb`)
//!   is used only for types whose equal values render identically ([`indexable`]); every other
//!   `eq` is evaluated with the type's operator like any other condition.
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use serde::Deserialize;
use serde_json::Value;
use std::collections::hash_map::Entry;
use std::collections::HashMap;

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
    pub values: Option<Vec<Option<String>>>,
}

/// What a condition's SQL depends on besides its parameter: conditions of one shape share a query.
pub type Shape = (String, String, bool, Option<String>);

/// A column of the filtered table, as filter SQL needs it.
#[derive(Clone)]
pub struct Column {
    /// The name as an identifier.
    quoted: String,
    /// The type as SQL (schema-qualified outside pg_catalog).
    typed: String,
    /// Its base type (a domain's underlying type) and whether its collation is deterministic.
    base: pg_sys::Oid,
    deterministic: bool,
    /// Operators the base type declares in its own schema, by name → the schema, quoted.
    operators: HashMap<String, String>,
}

impl Column {
    fn operator(&self, op: &str) -> String {
        let schema = self.operators.get(op).map_or("pg_catalog", String::as_str);
        format!("OPERATOR({schema}.{op})")
    }
}

impl Condition {
    pub fn shape(&self) -> Shape {
        let keyword =
            (self.op == "is").then(|| self.value.clone().unwrap_or_default().to_uppercase());
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

    /// The condition as SQL over the row `r.w`, with its parameter in `slot` (text).
    fn sql(&self, column: &Column, slot: &str) -> Result<String, String> {
        let typed = &column.typed;
        let value = format!("CAST({slot} AS {typed})");
        let field = format!("(r.w).{}", column.quoted);
        let comparison = |op: &str| format!("{field} {} {value}", column.operator(op));
        let sql = match self.op.as_str() {
            "eq" => comparison("="),
            "neq" => comparison("<>"),
            "lt" => comparison("<"),
            "lte" => comparison("<="),
            "gt" => comparison(">"),
            "gte" => comparison(">="),
            "like" => comparison("~~"),
            "ilike" => comparison("~~*"),
            "match" => format!("{field}::pg_catalog.text OPERATOR(pg_catalog.~) {slot}"),
            "imatch" => format!("{field}::pg_catalog.text OPERATOR(pg_catalog.~*) {slot}"),
            // IN's own semantics: true if one value is equal, else NULL if a value is NULL.
            "in" => format!(
                "(select case when pg_catalog.count(*) OPERATOR(pg_catalog.=) 0 then false
                              when pg_catalog.bool_or(c.c) then true
                              when pg_catalog.bool_or(c.c is null) then null
                              else false end
                    from (select {field} {} CAST(e.e AS {typed})
                            from pg_catalog.jsonb_array_elements_text({slot}::pg_catalog.jsonb) e(e)) c(c))",
                column.operator("=")
            ),
            // IS DISTINCT FROM with the type's own `=` (IS DISTINCT FROM itself would resolve one).
            "isdistinct" => format!(
                "(case when {field} is null then {value} is not null when {value} is null then true
                       else not ({field} {} {value}) end)",
                column.operator("=")
            ),
            "is" => match self.shape().3.as_deref() {
                Some(keyword @ ("NULL" | "TRUE" | "FALSE" | "UNKNOWN")) => format!("{field} is {keyword}"),
                _ => return Err(format!("invalid value for is: {}", self.value.as_deref().unwrap_or(""))),
            },
            other => return Err(format!("unknown filter operator: {other}")),
        };
        Ok(if self.negate {
            format!("not ({sql})")
        } else {
            sql
        })
    }
}

/// The query that keeps the (row, subscription) pairs passing every condition of one shape.
/// `rows`: a FROM item `r(ord, w)` with each row whole in `w`; parameters: `$1`/`$2` the pairs'
/// ords and subscription ids, then one text array per condition with the pairs' parameters.
pub fn shape_sql(
    rows: &str,
    conditions: &[Condition],
    columns: &HashMap<String, Column>,
) -> Result<String, String> {
    let mut params = String::new();
    let mut slots = String::new();
    let mut tests = Vec::with_capacity(conditions.len());
    for (i, cond) in conditions.iter().enumerate() {
        let column = columns
            .get(&cond.column)
            .ok_or_else(|| format!("column \"{}\" does not exist", cond.column))?;
        params.push_str(&format!(
            ", pg_catalog.unnest(${}::pg_catalog.text[])",
            i + 3
        ));
        slots.push_str(&format!(", v{i}"));
        tests.push(cond.sql(column, &format!("p.v{i}"))?);
    }
    Ok(format!(
        "select p.ord, p.sub
           from {rows}
           join rows from (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.int8[]){params})
                p(ord, sub{slots})
             on p.ord OPERATOR(pg_catalog.=) r.ord
          where {}",
        if tests.is_empty() { "true".to_owned() } else { tests.join(" and ") }
    ))
}

/// A FROM item `r(ord, w)` over a statement's transition table `table` (`realtime_new` or
/// `realtime_old`), numbered as `changes` numbers the row images.
pub fn transition_rows(table: &str, columns: &HashMap<String, Column>) -> String {
    let mut alias = String::from("realtime_row");
    while columns.contains_key(&alias) {
        alias.push('_');
    }
    format!("(select pg_catalog.row_number() over () as ord, {alias} as w from {table} {alias}) r")
}

/// The table's name as SQL, and its columns by name. Inside SPI, with the pinned search path
/// (types outside pg_catalog come out schema-qualified).
pub fn columns(
    client: &SpiClient<'_>,
    entity: pg_sys::Oid,
) -> Result<(String, HashMap<String, Column>), pgrx::spi::Error> {
    const COLUMNS_SQL: &str = "
        select pg_catalog.format('%I.%I', n.nspname, c.relname), a.attname::pg_catalog.text,
               pg_catalog.quote_ident(a.attname), pg_catalog.format_type(a.atttypid, a.atttypmod),
               a.atttypid, a.attcollation
          from pg_catalog.pg_class c
          join pg_catalog.pg_namespace n on n.oid OPERATOR(pg_catalog.=) c.relnamespace
          join pg_catalog.pg_attribute a on a.attrelid OPERATOR(pg_catalog.=) c.oid
         where c.oid OPERATOR(pg_catalog.=) $1 and a.attnum OPERATOR(pg_catalog.>) 0 and not a.attisdropped";
    const OPERATORS_SQL: &str = "
        select o.oprname::pg_catalog.text, pg_catalog.quote_ident(n.nspname)
          from pg_catalog.pg_operator o
          join pg_catalog.pg_type t on t.oid OPERATOR(pg_catalog.=) $1
          join pg_catalog.pg_namespace n on n.oid OPERATOR(pg_catalog.=) o.oprnamespace
         where o.oprleft OPERATOR(pg_catalog.=) $1 and o.oprright OPERATOR(pg_catalog.=) $1
           and o.oprnamespace OPERATOR(pg_catalog.=) t.typnamespace";
    let mut entity_sql = String::new();
    let mut found = HashMap::new();
    for row in client.select(COLUMNS_SQL, None, &[entity.into()])? {
        entity_sql = row.get::<String>(1)?.unwrap_or_default();
        let (Some(name), Some(quoted), Some(typed), Some(ty), Some(collation)) = (
            row.get::<String>(2)?,
            row.get::<String>(3)?,
            row.get::<String>(4)?,
            row.get::<pg_sys::Oid>(5)?,
            row.get::<pg_sys::Oid>(6)?,
        ) else {
            continue;
        };
        // SAFETY: catalog lookups of a type and a collation the attribute refers to.
        let (base, deterministic) = unsafe {
            (
                pg_sys::getBaseType(ty),
                collation == pg_sys::Oid::INVALID
                    || pg_sys::get_collation_isdeterministic(collation),
            )
        };
        found.insert(
            name,
            Column {
                quoted,
                typed,
                base,
                deterministic,
                operators: HashMap::new(),
            },
        );
    }
    let mut by_type: HashMap<pg_sys::Oid, HashMap<String, String>> = HashMap::new();
    for column in found.values_mut() {
        let operators = match by_type.entry(column.base) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(slot) => {
                let mut operators = HashMap::new();
                for row in client.select(OPERATORS_SQL, None, &[column.base.into()])? {
                    if let (Some(op), Some(schema)) = (row.get::<String>(1)?, row.get::<String>(2)?)
                    {
                        operators.insert(op, schema);
                    }
                }
                slot.insert(operators)
            }
        };
        column.operators = operators.clone();
    }
    Ok((entity_sql, found))
}

/// Whether equal values of the column always render the same `to_jsonb`, so that an `eq` filter
/// can be matched by comparing renderings (an index probe) instead of calling `=`: not numeric
/// (1.0 = 1.00), floats (0 = -0), intervals (1 day = 24 hours), bpchar (padding), jsonb, arrays,
/// citext, nondeterministic collations, …
fn indexable(column: &Column) -> bool {
    const TYPES: [pg_sys::Oid; 12] = [
        pg_sys::BOOLOID,
        pg_sys::INT2OID,
        pg_sys::INT4OID,
        pg_sys::INT8OID,
        pg_sys::OIDOID,
        pg_sys::TEXTOID,
        pg_sys::VARCHAROID,
        pg_sys::UUIDOID,
        pg_sys::DATEOID,
        pg_sys::TIMEOID,
        pg_sys::TIMESTAMPOID,
        pg_sys::TIMESTAMPTZOID,
    ];
    TYPES.contains(&column.base) && column.deterministic
}

/// `realtime._filter_check(entity, cond)`: validates one condition against `entity` as its
/// owner (the value casts to the column's type, the operator exists for it, a regular
/// expression compiles) and returns the value as `to_jsonb` renders it for an `eq` condition
/// that can be matched by its rendering (what capture compares row images with), else NULL.
/// Errors are for the client.
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
                let (entity_sql, columns) = columns(client, entity)?;
                let Some(column) = columns.get(&cond.column) else {
                    error!("column \"{}\" does not exist", cond.column)
                };
                let rows = format!("(select 0::pg_catalog.int8 as ord, null::{entity_sql} as w) r");
                let sql = shape_sql(&rows, std::slice::from_ref(&cond), &columns)
                    .unwrap_or_else(|message| error!("{message}"));
                let param = cond.param();
                let args = [
                    vec![0i64].into(),
                    vec![0i64].into(),
                    vec![param.clone()].into(),
                ];
                client.select(&sql, None, &args)?;
                // The row is NULL, so the query above may never have cast the value: cast it.
                let typed = &column.typed;
                let cast = match cond.op.as_str() {
                    "is" | "match" | "imatch" => None,
                    "in" => Some(format!(
                        "select pg_catalog.count(CAST(e.e AS {typed})) \
                         from pg_catalog.jsonb_array_elements_text($1::pg_catalog.jsonb) e(e)"
                    )),
                    _ => Some(format!("select CAST($1 AS {typed})")),
                };
                if let Some(cast) = cast {
                    client.select(&cast, None, &[param.clone().into()])?;
                }
                if matches!(cond.op.as_str(), "match" | "imatch") {
                    let regex = if cond.op == "match" { "~" } else { "~*" };
                    client.select(
                        &format!("select '' OPERATOR(pg_catalog.{regex}) $1"),
                        None,
                        &[param.clone().into()],
                    )?;
                }
                if cond.op == "eq" && !cond.negate && indexable(column) {
                    let sql = format!("select pg_catalog.to_jsonb(CAST($1 AS {}))", column.typed);
                    return client
                        .select(&sql, None, &[param.into()])?
                        .first()
                        .get_one::<JsonB>();
                }
                Ok::<_, pgrx::spi::Error>(None)
            })
        })
    })
    .unwrap_or_else(|err| error!("{err}"))
}
