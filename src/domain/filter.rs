//! AIP-160 filter expressions over webhook logs, as ListWebhookLogs and
//! WatchWebhookLogs take them in `filter`:
//!
//! ```text
//! execution_status = FAILED AND error_category = "timeout" AND create_time > "2026-11-20T00:00:00Z"
//! webhook_type = "call.*" OR NOT (http_status_code >= 500 OR -call_id = 5)
//! ```
//!
//! A small recursive-descent parser rather than a crate: the AIP-160 crates
//! found were single-maintainer 0.x releases built on pest that report errors
//! as strings without a position and accept any field and any value; hookpost
//! needs typed values per field and a byte position in every error.
//!
//! Grammar (AND binds tighter than OR; keywords are upper case, as AIP-160
//! says):
//!
//! ```text
//! filter     = [ or ]
//! or         = and { "OR" and }
//! and        = unary { "AND" unary }
//! unary      = "NOT" unary | "-" unary | "(" or ")" | comparison
//! comparison = field ( "=" | "!=" | "<" | "<=" | ">" | ">=" ) value
//! value      = "double" | 'single' quoted string (\" \' \\ \n \t \r) | bare word
//! ```
//!
//! Values are typed by their field when parsed, so a filter that parses can
//! be run. A comparison on a field a log does not have (no call, no attempt
//! yet) is false, except `!=`, which is true: `a != v` always means
//! `NOT a = v`. Both the stores' SQL (`store::filter_sql`) and the watch's
//! in-memory [`FilterExpr::matches`] follow that rule.

use std::cmp::Ordering;
use std::fmt;

use chrono::{DateTime, Datelike, SubsecRound, TimeDelta, Utc};
use uuid::Uuid;

use super::{ExecutionStatus, LogFilter, LogRecord, valid_webhook_type};

/// Longest filter accepted, in bytes.
pub const MAX_FILTER_LEN: usize = 2048;
/// Deepest nesting of parentheses and negations.
pub const MAX_FILTER_DEPTH: usize = 16;
/// Most comparisons in one filter.
pub const MAX_FILTER_TERMS: usize = 32;
/// Longest webhook type (or wildcard prefix) a comparison may name.
const MAX_TYPE_LEN: usize = 256;

/// A filter that does not parse: what was expected, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    /// Byte offset into the filter, from 0.
    pub position: usize,
    pub message: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {}: {}", self.position, self.message)
    }
}

impl std::error::Error for FilterError {}

/// A parsed filter. `And` and `Or` are flat (no `And` directly inside an
/// `And`) and have at least two terms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FilterExpr {
    And(Vec<FilterExpr>),
    Or(Vec<FilterExpr>),
    Not(Box<FilterExpr>),
    Compare(Comparison),
}

/// `field op value`, the value already of the field's type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Comparison {
    pub field: Field,
    pub op: Op,
    pub value: Value,
}

/// What a filter can name (the proto field names of `WebhookLog`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    ExecutionStatus,
    /// The latest attempt's failure category.
    ErrorCategory,
    WebhookType,
    EndpointId,
    SubscriptionId,
    WorkspaceId,
    CallId,
    /// The latest attempt's HTTP status.
    HttpStatusCode,
    CreateTime,
}

const FIELDS: [(Field, &str, &str); 9] = [
    (Field::ExecutionStatus, "execution_status", "executionStatus"),
    (Field::ErrorCategory, "error_category", "errorCategory"),
    (Field::WebhookType, "webhook_type", "webhookType"),
    (Field::EndpointId, "endpoint_id", "endpointId"),
    (Field::SubscriptionId, "subscription_id", "subscriptionId"),
    (Field::WorkspaceId, "workspace_id", "workspaceId"),
    (Field::CallId, "call_id", "callId"),
    (Field::HttpStatusCode, "http_status_code", "httpStatusCode"),
    (Field::CreateTime, "create_time", "createTime"),
];

impl Field {
    fn named(name: &str) -> Option<Self> {
        FIELDS.iter().find(|(_, snake, camel)| name == *snake || name == *camel).map(|(f, _, _)| *f)
    }

    pub fn name(self) -> &'static str {
        FIELDS.iter().find(|(f, _, _)| *f == self).map_or("", |(_, snake, _)| snake)
    }

    /// Numbers and times are ordered; the rest only compare for equality.
    fn ordered(self) -> bool {
        matches!(self, Self::CallId | Self::HttpStatusCode | Self::CreateTime)
    }

    fn value(self, raw: &str) -> std::result::Result<Value, String> {
        match self {
            Self::ExecutionStatus => {
                let upper = raw.to_ascii_uppercase();
                let name = upper.strip_prefix("EXECUTION_STATUS_").unwrap_or(&upper);
                ExecutionStatus::parse(&name.to_ascii_lowercase())
                    .map(Value::Status)
                    .ok_or_else(|| format!("{raw:?} is not a status: expected PENDING, SUCCEEDED, FAILED or HELD"))
            }
            Self::ErrorCategory => {
                if raw.is_empty() || raw.len() > 32 || !raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(format!("{raw:?} is not a failure category such as \"timeout\" or \"http_5xx\""));
                }
                Ok(Value::Text(raw.to_owned()))
            }
            Self::WebhookType => TypePattern::parse(raw).map(Value::Type),
            Self::EndpointId | Self::SubscriptionId | Self::WorkspaceId => {
                Uuid::parse_str(raw).map(Value::Id).map_err(|_| format!("{raw:?} is not a UUID"))
            }
            Self::CallId | Self::HttpStatusCode => {
                raw.parse::<i64>().map(Value::Int).map_err(|_| format!("{raw:?} is not an integer"))
            }
            Self::CreateTime => {
                let bad = || format!("{raw:?} is not an RFC 3339 time such as \"2026-11-20T00:00:00Z\"");
                let t = DateTime::parse_from_rfc3339(raw).map_err(|_| bad())?.to_utc();
                // Postgres' timestamptz spans 4713 BC .. 294276 AD; keep well
                // inside it. Both stores keep microseconds.
                if !(1..=9999).contains(&t.year()) {
                    return Err("must be between years 1 and 9999".into());
                }
                Ok(Value::Time(t.trunc_subsecs(6)))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eq => "=",
            Self::Ne => "!=",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
        }
    }

    /// The SQL operator.
    pub fn sql(self) -> &'static str {
        match self {
            Self::Ne => "<>",
            op => op.as_str(),
        }
    }

    fn holds(self, o: Ordering) -> bool {
        match self {
            Self::Eq => o.is_eq(),
            Self::Ne => o.is_ne(),
            Self::Lt => o.is_lt(),
            Self::Le => o.is_le(),
            Self::Gt => o.is_gt(),
            Self::Ge => o.is_ge(),
        }
    }
}

/// A comparison's value, typed by its field.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    Status(ExecutionStatus),
    Text(String),
    Type(TypePattern),
    Id(Uuid),
    Int(i64),
    Time(DateTime<Utc>),
}

/// A webhook type, or a wildcard as endpoints' event types take them:
/// `"call.*"` (every type starting with `call.`) or `"*"` (every type).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TypePattern {
    Exact(String),
    /// The types starting with this (which ends with `.`).
    Prefix(String),
    Any,
}

impl TypePattern {
    fn parse(raw: &str) -> std::result::Result<Self, String> {
        if raw == "*" {
            return Ok(Self::Any);
        }
        let (name, pattern) = match raw.strip_suffix(".*") {
            Some(name) => (name, Self::Prefix(format!("{name}."))),
            None => (raw, Self::Exact(raw.to_owned())),
        };
        if name.is_empty() || raw.len() > MAX_TYPE_LEN || !valid_webhook_type(name) {
            return Err(format!("{raw:?} is not a webhook type (letters, digits and \"._:-\"), \"prefix.*\" or \"*\""));
        }
        Ok(pattern)
    }

    pub fn matches(&self, t: &str) -> bool {
        match self {
            Self::Exact(e) => e == t,
            Self::Prefix(p) => t.starts_with(p.as_str()),
            Self::Any => true,
        }
    }
}

impl FilterExpr {
    /// Parses a filter; empty (or blank) is `None`, which matches everything.
    pub fn parse(src: &str) -> std::result::Result<Option<Self>, FilterError> {
        if src.len() > MAX_FILTER_LEN {
            return Err(FilterError {
                position: MAX_FILTER_LEN,
                message: format!("the filter is longer than {MAX_FILTER_LEN} bytes"),
            });
        }
        let mut p = Parser { src, pos: 0, depth: 0, terms: 0 };
        if p.at_end() {
            return Ok(None);
        }
        let expr = p.or()?;
        if !p.at_end() {
            let message = match p.peek() {
                Some(b')') => "')' without a matching '('".to_owned(),
                _ => format!("expected AND, OR or the end of the filter, found {}", p.found()),
            };
            return Err(p.error(message));
        }
        Ok(Some(expr))
    }

    /// Whether log `l` is among what this selects (the stores' SQL selects
    /// the same).
    pub fn matches(&self, l: &LogRecord) -> bool {
        match self {
            Self::And(terms) => terms.iter().all(|t| t.matches(l)),
            Self::Or(terms) => terms.iter().any(|t| t.matches(l)),
            Self::Not(e) => !e.matches(l),
            Self::Compare(c) => c.matches(l),
        }
    }
}

impl Comparison {
    fn matches(&self, l: &LogRecord) -> bool {
        /// A field the log lacks only satisfies `!=`.
        fn cmp<T: Ord>(actual: Option<T>, op: Op, expected: T) -> bool {
            actual.map_or(op == Op::Ne, |a| op.holds(a.cmp(&expected)))
        }
        let attempt = l.last_attempt.as_ref();
        let op = self.op;
        match (self.field, &self.value) {
            (Field::ExecutionStatus, Value::Status(s)) => cmp(Some(l.status.as_str()), op, s.as_str()),
            (Field::ErrorCategory, Value::Text(c)) => {
                cmp(attempt.and_then(|a| a.error_category.as_deref()), op, c.as_str())
            }
            (Field::WebhookType, Value::Type(p)) => p.matches(&l.webhook_type) == (op == Op::Eq),
            (Field::EndpointId, Value::Id(id)) => cmp(l.endpoint_id, op, *id),
            (Field::SubscriptionId, Value::Id(id)) => cmp(l.subscription_id, op, *id),
            (Field::WorkspaceId, Value::Id(id)) => cmp(l.workspace_id, op, *id),
            (Field::CallId, Value::Int(n)) => cmp(l.call_id, op, *n),
            (Field::HttpStatusCode, Value::Int(n)) => cmp(attempt.and_then(|a| a.status_code).map(i64::from), op, *n),
            (Field::CreateTime, Value::Time(t)) => cmp(Some(l.created_at), op, *t),
            // The parser types each value by its field.
            _ => false,
        }
    }
}

impl LogFilter {
    /// Adds a filter expression. Its top-level AND terms that this filter's
    /// own fields can say (a status, a call, a time bound, ...) move into
    /// them, so that the stores' index paths serve the common filters; the
    /// rest is kept as `expr`, an extra predicate. A field already set keeps
    /// its value and the term stays in `expr` (both must hold).
    pub fn narrow(&mut self, expr: FilterExpr) {
        let terms = match expr {
            FilterExpr::And(terms) => terms,
            one => vec![one],
        };
        let mut rest: Vec<FilterExpr> = terms.into_iter().filter(|t| !self.absorb(t)).collect();
        self.expr = match rest.len() {
            0 => None,
            1 => rest.pop(),
            _ => Some(FilterExpr::And(rest)),
        };
    }

    fn absorb(&mut self, term: &FilterExpr) -> bool {
        fn set<T>(slot: &mut Option<T>, v: T) -> bool {
            slot.is_none() && slot.replace(v).is_none()
        }
        let FilterExpr::Compare(c) = term else { return false };
        let tick = TimeDelta::microseconds(1);
        match (c.field, c.op, &c.value) {
            (Field::ExecutionStatus, Op::Eq, Value::Status(s)) => set(&mut self.status, *s),
            (Field::ErrorCategory, Op::Eq, Value::Text(v)) => set(&mut self.error_category, v.clone()),
            (Field::WebhookType, Op::Eq, Value::Type(TypePattern::Exact(t))) => set(&mut self.webhook_type, t.clone()),
            (Field::EndpointId, Op::Eq, Value::Id(id)) => set(&mut self.endpoint_id, *id),
            (Field::SubscriptionId, Op::Eq, Value::Id(id)) => set(&mut self.subscription_id, *id),
            (Field::WorkspaceId, Op::Eq, Value::Id(id)) => set(&mut self.workspace_id, *id),
            (Field::CallId, Op::Eq, Value::Int(n)) => set(&mut self.call_id, *n),
            // Times are whole microseconds (see `Field::value`), as stored.
            (Field::CreateTime, Op::Ge, Value::Time(t)) => set(&mut self.created_after, *t),
            (Field::CreateTime, Op::Gt, Value::Time(t)) => set(&mut self.created_after, *t + tick),
            (Field::CreateTime, Op::Lt, Value::Time(t)) => set(&mut self.created_before, *t),
            (Field::CreateTime, Op::Le, Value::Time(t)) => set(&mut self.created_before, *t + tick),
            _ => false,
        }
    }
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
    terms: usize,
}

/// Bytes that end a bare value.
fn ends_word(b: u8) -> bool {
    b.is_ascii_whitespace() || b"()\"'=<>!".contains(&b)
}

fn ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.'
}

impl Parser<'_> {
    fn bytes(&self) -> &[u8] {
        self.src.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn at_end(&mut self) -> bool {
        self.skip_ws();
        self.pos == self.src.len()
    }

    fn error(&self, message: impl Into<String>) -> FilterError {
        FilterError { position: self.pos, message: message.into() }
    }

    /// What is at the current position, for messages.
    fn found(&self) -> String {
        let rest = &self.src[self.pos..];
        match rest.chars().next() {
            None => "the end of the filter".into(),
            Some(c) if c.is_ascii_alphanumeric() || c == '_' => {
                let word: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                format!("'{word}'")
            }
            Some(c) => format!("'{c}'"),
        }
    }

    /// Consumes keyword `kw` if it comes next as a whole word.
    fn keyword(&mut self, kw: &str) -> bool {
        self.skip_ws();
        let rest = &self.bytes()[self.pos..];
        let whole = rest.starts_with(kw.as_bytes()) && !rest.get(kw.len()).copied().is_some_and(ident_byte);
        if whole {
            self.pos += kw.len();
        }
        whole
    }

    fn enter(&mut self, at: usize) -> std::result::Result<(), FilterError> {
        self.depth += 1;
        if self.depth > MAX_FILTER_DEPTH {
            return Err(FilterError {
                position: at,
                message: format!("nested more than {MAX_FILTER_DEPTH} deep (parentheses and NOT)"),
            });
        }
        Ok(())
    }

    fn or(&mut self) -> std::result::Result<FilterExpr, FilterError> {
        let mut terms = Vec::new();
        push_flat(&mut terms, self.and()?, true);
        while self.keyword("OR") {
            push_flat(&mut terms, self.and()?, true);
        }
        Ok(if terms.len() == 1 { terms.remove(0) } else { FilterExpr::Or(terms) })
    }

    fn and(&mut self) -> std::result::Result<FilterExpr, FilterError> {
        let mut terms = Vec::new();
        push_flat(&mut terms, self.unary()?, false);
        while self.keyword("AND") {
            push_flat(&mut terms, self.unary()?, false);
        }
        Ok(if terms.len() == 1 { terms.remove(0) } else { FilterExpr::And(terms) })
    }

    fn unary(&mut self) -> std::result::Result<FilterExpr, FilterError> {
        self.skip_ws();
        let start = self.pos;
        let negated = if self.keyword("NOT") {
            true
        } else if self.peek() == Some(b'-') {
            self.pos += 1;
            true
        } else {
            false
        };
        if negated {
            self.enter(start)?;
            let e = self.unary()?;
            self.depth -= 1;
            return Ok(match e {
                FilterExpr::Not(inner) => *inner,
                e => FilterExpr::Not(Box::new(e)),
            });
        }
        if self.peek() == Some(b'(') {
            self.pos += 1;
            self.enter(start)?;
            let e = self.or()?;
            self.skip_ws();
            if self.peek() != Some(b')') {
                let message = format!("expected ')' to close the '(' at {start}, found {}", self.found());
                return Err(self.error(message));
            }
            self.pos += 1;
            self.depth -= 1;
            return Ok(e);
        }
        self.comparison()
    }

    fn comparison(&mut self) -> std::result::Result<FilterExpr, FilterError> {
        let start = self.pos;
        let first_ok = self.peek().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
        let len = if first_ok { self.bytes()[start..].iter().take_while(|b| ident_byte(**b)).count() } else { 0 };
        let name = &self.src[start..start + len];
        if len == 0 || name == "AND" || name == "OR" {
            let message = format!("expected a field name, '(' or NOT, found {}", self.found());
            return Err(self.error(message));
        }
        let field = Field::named(name).ok_or_else(|| {
            let names: Vec<&str> = FIELDS.iter().map(|(_, snake, _)| *snake).collect();
            self.error(format!("unknown field '{name}'; a filter may name {}", names.join(", ")))
        })?;
        self.pos += len;
        self.terms += 1;
        if self.terms > MAX_FILTER_TERMS {
            return Err(FilterError {
                position: start,
                message: format!("more than {MAX_FILTER_TERMS} comparisons in one filter"),
            });
        }

        self.skip_ws();
        let op_at = self.pos;
        let rest = &self.bytes()[op_at..];
        let (op, len) = match rest {
            [b'>', b'=', ..] => (Op::Ge, 2),
            [b'<', b'=', ..] => (Op::Le, 2),
            [b'!', b'=', ..] => (Op::Ne, 2),
            [b'=', ..] => (Op::Eq, 1),
            [b'<', ..] => (Op::Lt, 1),
            [b'>', ..] => (Op::Gt, 1),
            [b':', ..] => return Err(self.error("':' (has) is not supported; use '='")),
            _ => {
                let message = format!("expected one of = != < <= > >= after '{name}', found {}", self.found());
                return Err(self.error(message));
            }
        };
        if !field.ordered() && !matches!(op, Op::Eq | Op::Ne) {
            return Err(self.error(format!("'{name}' takes only = and !=")));
        }
        self.pos += len;

        self.skip_ws();
        let value_at = self.pos;
        let raw = match self.peek() {
            Some(q @ (b'"' | b'\'')) => self.string(q)?,
            _ => {
                let len = self.bytes()[value_at..].iter().take_while(|b| !ends_word(**b)).count();
                let word = &self.src[value_at..value_at + len];
                if len == 0 || matches!(word, "AND" | "OR" | "NOT") {
                    return Err(self.error(format!("expected a value after '{}'", op.as_str())));
                }
                self.pos += len;
                word.to_owned()
            }
        };
        let value = field
            .value(&raw)
            .map_err(|message| FilterError { position: value_at, message: format!("{name}: {message}") })?;
        Ok(FilterExpr::Compare(Comparison { field, op, value }))
    }

    /// A quoted string starting at the current position (the quote `q`).
    fn string(&mut self, q: u8) -> std::result::Result<String, FilterError> {
        let open = self.pos;
        let mut out = String::new();
        let mut chars = self.src[open + 1..].char_indices();
        while let Some((i, c)) = chars.next() {
            let at = open + 1 + i;
            match c {
                c if c as u32 == u32::from(q) => {
                    self.pos = at + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, c @ ('"' | '\'' | '\\'))) => out.push(c),
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, 'r')) => out.push('\r'),
                    _ => {
                        return Err(FilterError {
                            position: at,
                            message: "unknown escape; use \\\", \\', \\\\, \\n, \\t or \\r".into(),
                        });
                    }
                },
                c => out.push(c),
            }
        }
        Err(FilterError { position: open, message: "string not closed".into() })
    }
}

/// Appends `e` to the terms of an OR (`or`) or an AND, splicing in the terms
/// of one of the same kind: `(a AND b) AND c` is `a AND b AND c`.
fn push_flat(terms: &mut Vec<FilterExpr>, e: FilterExpr, or: bool) {
    match e {
        FilterExpr::Or(inner) if or => terms.extend(inner),
        FilterExpr::And(inner) if !or => terms.extend(inner),
        e => terms.push(e),
    }
}

#[cfg(test)]
mod tests;
