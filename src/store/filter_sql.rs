//! A filter expression (`domain::filter`) as a WHERE fragment, for both
//! stores. Every value is bound, never written into the SQL text.
//!
//! SQL's NULL would make `NOT (call_id = 5)` drop the logs without a call;
//! the filter says they match (a field a log lacks satisfies only `!=`), so
//! each comparison on a nullable column is made two-valued with COALESCE.
//! The columns are those of the stores' `LOG_SELECT`: the delivery `r` and
//! its latest attempt `a`.

use chrono::{DateTime, Utc};
use sqlx::QueryBuilder;
use uuid::Uuid;

use crate::domain::FilterExpr;
use crate::domain::filter::{Comparison, Field, Op, TypePattern, Value};

/// How a store binds each kind of value, and its spelling of a prefix test.
pub(crate) trait FilterSql: sqlx::Database {
    fn bind_text(q: &mut QueryBuilder<'_, Self>, v: String);
    fn bind_int(q: &mut QueryBuilder<'_, Self>, v: i64);
    fn bind_uuid(q: &mut QueryBuilder<'_, Self>, v: Uuid);
    fn bind_time(q: &mut QueryBuilder<'_, Self>, v: DateTime<Utc>);
    /// `column` starts with `prefix`.
    fn push_starts_with(q: &mut QueryBuilder<'_, Self>, column: &str, prefix: String);
}

impl FilterSql for sqlx::Postgres {
    fn bind_text(q: &mut QueryBuilder<'_, Self>, v: String) {
        q.push_bind(v);
    }
    fn bind_int(q: &mut QueryBuilder<'_, Self>, v: i64) {
        q.push_bind(v);
    }
    fn bind_uuid(q: &mut QueryBuilder<'_, Self>, v: Uuid) {
        q.push_bind(v);
    }
    fn bind_time(q: &mut QueryBuilder<'_, Self>, v: DateTime<Utc>) {
        q.push_bind(v);
    }
    fn push_starts_with(q: &mut QueryBuilder<'_, Self>, column: &str, prefix: String) {
        q.push(format_args!("starts_with({column}, ")).push_bind(prefix).push(")");
    }
}

impl FilterSql for sqlx::Sqlite {
    fn bind_text(q: &mut QueryBuilder<'_, Self>, v: String) {
        q.push_bind(v);
    }
    fn bind_int(q: &mut QueryBuilder<'_, Self>, v: i64) {
        q.push_bind(v);
    }
    fn bind_uuid(q: &mut QueryBuilder<'_, Self>, v: Uuid) {
        q.push_bind(v.to_string());
    }
    fn bind_time(q: &mut QueryBuilder<'_, Self>, v: DateTime<Utc>) {
        q.push_bind(super::sqlite::micros(v));
    }
    fn push_starts_with(q: &mut QueryBuilder<'_, Self>, column: &str, prefix: String) {
        // Not LIKE: `_` is a wildcard there and a webhook type may hold it.
        // Webhook types are ASCII, so characters are bytes.
        let len = prefix.len() as i64;
        q.push(format_args!("substr({column}, 1, ")).push_bind(len).push(") = ").push_bind(prefix);
    }
}

/// Appends ` AND (expr)`.
pub(crate) fn push_and<DB: FilterSql>(q: &mut QueryBuilder<'_, DB>, expr: &FilterExpr) {
    q.push(" AND ");
    push_expr(q, expr);
}

fn push_expr<DB: FilterSql>(q: &mut QueryBuilder<'_, DB>, expr: &FilterExpr) {
    match expr {
        FilterExpr::And(terms) => push_terms(q, terms, " AND "),
        FilterExpr::Or(terms) => push_terms(q, terms, " OR "),
        FilterExpr::Not(e) => {
            q.push("(NOT ");
            push_expr(q, e);
            q.push(")");
        }
        FilterExpr::Compare(c) => push_comparison(q, c),
    }
}

fn push_terms<DB: FilterSql>(q: &mut QueryBuilder<'_, DB>, terms: &[FilterExpr], keyword: &str) {
    q.push("(");
    for (i, t) in terms.iter().enumerate() {
        if i > 0 {
            q.push(keyword);
        }
        push_expr(q, t);
    }
    q.push(")");
}

fn push_comparison<DB: FilterSql>(q: &mut QueryBuilder<'_, DB>, c: &Comparison) {
    let (column, nullable) = match c.field {
        Field::ExecutionStatus => ("r.status", false),
        Field::ErrorCategory => ("a.error_category", true),
        Field::WebhookType => ("r.webhook_type", false),
        Field::EndpointId => ("r.endpoint_id", true),
        Field::SubscriptionId => ("r.subscription_id", true),
        Field::WorkspaceId => ("r.workspace_id", true),
        Field::CallId => ("r.call_id", true),
        Field::HttpStatusCode => ("a.status_code", true),
        Field::CreateTime => ("r.created_at", false),
    };
    if let Value::Type(pattern) = &c.value {
        let negated = c.op == Op::Ne;
        match pattern {
            TypePattern::Any => {
                q.push(if negated { "(1 = 0)" } else { "(1 = 1)" });
            }
            TypePattern::Exact(t) => {
                q.push(format_args!("({column} {} ", c.op.sql()));
                DB::bind_text(q, t.clone());
                q.push(")");
            }
            TypePattern::Prefix(p) => {
                q.push(if negated { "(NOT " } else { "(" });
                DB::push_starts_with(q, column, p.clone());
                q.push(")");
            }
        }
        return;
    }
    q.push(if nullable { "COALESCE(" } else { "(" });
    q.push(format_args!("{column} {} ", c.op.sql()));
    match &c.value {
        Value::Status(s) => DB::bind_text(q, s.as_str().to_owned()),
        Value::Text(t) => DB::bind_text(q, t.clone()),
        Value::Id(id) => DB::bind_uuid(q, *id),
        Value::Int(n) => DB::bind_int(q, *n),
        Value::Time(t) => DB::bind_time(q, *t),
        Value::Type(_) => unreachable!("handled above"),
    }
    q.push(match (nullable, c.op) {
        (false, _) => ")",
        (true, Op::Ne) => ", 1 = 1)",
        (true, _) => ", 1 = 0)",
    });
}
