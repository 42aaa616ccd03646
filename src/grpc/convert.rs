//! Conversions between the generated proto messages and the service's types.
//! Parsing happens here, at the edge, and reports bad fields by proto name.

use chrono::{DateTime, Utc};
use pbjson_types::{ListValue, Struct, Timestamp, Value, value::Kind};
use serde_json::{Map, Number, Value as Json};
use uuid::Uuid;

use crate::domain::{AttemptRecord, DispatchInput, ExecutionStatus, Expiration, FilterExpr, LogFilter, LogRecord};
use crate::error::{Error, FieldViolation, Result};
use crate::proto::v1 as pb;
use crate::proto::{MAX_DEPTH, RawStruct, too_deep};
use crate::service::{DetailsQuery, ListQuery, LogDetails};

/// Largest integer an f64 holds exactly; integral numbers up to it are written
/// without a fraction, so `{"id": 123}` is sent as `123`, not `123.0`.
const MAX_SAFE_INT: f64 = 9_007_199_254_740_991.0;

/// `depth` is the level `v` sits at (the Struct's own members at 1).
fn value_to_json(v: Value, depth: usize) -> Result<Json, String> {
    Ok(match v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(b),
        Some(Kind::StringValue(s)) => Json::String(s),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() <= MAX_SAFE_INT => Json::Number((n as i64).into()),
        Some(Kind::NumberValue(n)) => {
            Json::Number(Number::from_f64(n).ok_or("numbers must be finite (no NaN or infinity)")?)
        }
        Some(Kind::StructValue(s)) => Json::Object(fields_to_json(s, depth + 1)?),
        Some(Kind::ListValue(l)) => {
            nest(depth + 1)?;
            Json::Array(l.values.into_iter().map(|v| value_to_json(v, depth + 1)).collect::<Result<_, _>>()?)
        }
    })
}

/// A caller's Struct as a JSON object. Keys come out sorted: a Struct is a
/// map without order, and the stored body must not depend on hash order.
/// Objects and arrays nest at most [`MAX_DEPTH`] levels, as a listing can
/// send them back (`RawStruct::from_json_object` refuses deeper ones).
pub fn struct_to_json(s: RawStruct) -> Result<Map<String, Json>, String> {
    let s = s.to_struct().map_err(|err| format!("is not a valid google.protobuf.Struct: {err}"))?;
    fields_to_json(s, 1)
}

/// An object or array at level `depth` (the Struct itself being the first).
fn nest(depth: usize) -> Result<(), String> {
    match depth > MAX_DEPTH {
        true => Err(too_deep()),
        false => Ok(()),
    }
}

fn fields_to_json(s: Struct, depth: usize) -> Result<Map<String, Json>, String> {
    nest(depth)?;
    let sorted: std::collections::BTreeMap<_, _> = s.fields.into_iter().collect();
    sorted.into_iter().map(|(k, v)| Ok((k, value_to_json(v, depth)?))).collect()
}

fn json_to_value(j: Json) -> Value {
    let kind = match j {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => Kind::StringValue(s),
        Json::Array(a) => Kind::ListValue(ListValue { values: a.into_iter().map(json_to_value).collect() }),
        Json::Object(o) => Kind::StructValue(struct_of(o)),
    };
    Value { kind: Some(kind) }
}

/// A JSON object as a Struct, in the wire form the messages carry.
pub fn json_to_struct(o: Map<String, Json>) -> RawStruct {
    struct_of(o).into()
}

fn struct_of(o: Map<String, Json>) -> Struct {
    Struct { fields: o.into_iter().map(|(k, v)| (k, json_to_value(v))).collect() }
}

pub(super) fn opt_uuid(field: &str, raw: Option<&str>, v: &mut Vec<FieldViolation>) -> Option<Uuid> {
    let raw = raw.filter(|s| !s.is_empty())?;
    crate::domain::parse_uuid(field, raw, v)
}

pub(super) fn timestamp(field: &str, ts: Option<Timestamp>, v: &mut Vec<FieldViolation>) -> Option<DateTime<Utc>> {
    let ts = ts?;
    match DateTime::<Utc>::try_from(ts) {
        Ok(t) => Some(t),
        Err(_) => {
            v.push(FieldViolation { field: field.into(), description: "is not a valid timestamp".into() });
            None
        }
    }
}

pub fn status_to_proto(s: ExecutionStatus) -> pb::ExecutionStatus {
    match s {
        ExecutionStatus::Pending => pb::ExecutionStatus::Pending,
        ExecutionStatus::Succeeded => pb::ExecutionStatus::Succeeded,
        ExecutionStatus::Failed => pb::ExecutionStatus::Failed,
        ExecutionStatus::Held => pb::ExecutionStatus::Held,
    }
}

/// An `error_category` filter: a category's spelling (letters, digits, `_`).
pub fn error_category(raw: String, v: &mut Vec<FieldViolation>) -> Option<String> {
    if raw.is_empty() {
        return None;
    }
    if raw.len() > 32 || !raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        v.push(FieldViolation {
            field: "error_category".into(),
            description: "must be a failure category such as \"timeout\" or \"http_5xx\"".into(),
        });
        return None;
    }
    Some(raw)
}

impl TryFrom<pb::DispatchRequest> for DispatchInput {
    type Error = Error;

    fn try_from(r: pb::DispatchRequest) -> Result<Self> {
        let payload = r.payload.map(struct_to_json).transpose().map_err(|e| Error::invalid("payload", e))?;
        let metadata = r.metadata.map(struct_to_json).transpose().map_err(|e| Error::invalid("metadata", e))?;
        Ok(DispatchInput {
            organization_id: r.organization_id,
            workspace_id: r.workspace_id,
            subscription_id: r.subscription_id,
            call_id: r.call_id,
            assistant_id: r.assistant_id,
            webhook_url: r.webhook_url,
            webhook_type: r.webhook_type,
            payload,
            metadata,
            idempotency_key: r.idempotency_key,
            max_retries: r.max_retries,
            endpoint_id: r.endpoint_id,
            expiration: match r.expiration {
                None => None,
                Some(pb::dispatch_request::Expiration::ExpireTime(t)) => {
                    let mut v = Vec::new();
                    let at = timestamp("expire_time", Some(t), &mut v);
                    if !v.is_empty() {
                        return Err(Error::invalid_fields(v));
                    }
                    at.map(Expiration::At)
                }
                Some(pb::dispatch_request::Expiration::Ttl(d)) => {
                    Some(Expiration::After(std::time::Duration::try_from(d).map_err(|_| ())))
                }
            },
        })
    }
}

impl TryFrom<pb::ListWebhookLogsRequest> for ListQuery {
    type Error = Error;

    fn try_from(r: pb::ListWebhookLogsRequest) -> Result<Self> {
        let mut v = Vec::new();
        let status = match pb::ExecutionStatus::try_from(r.execution_status) {
            Ok(pb::ExecutionStatus::Unspecified) => None,
            Ok(pb::ExecutionStatus::Pending) => Some(ExecutionStatus::Pending),
            Ok(pb::ExecutionStatus::Succeeded) => Some(ExecutionStatus::Succeeded),
            Ok(pb::ExecutionStatus::Failed) => Some(ExecutionStatus::Failed),
            Ok(pb::ExecutionStatus::Held) => Some(ExecutionStatus::Held),
            Err(_) => {
                v.push(FieldViolation {
                    field: "execution_status".into(),
                    description: "is not a known status".into(),
                });
                None
            }
        };
        let mut filter = LogFilter {
            organization_id: opt_uuid("organization_id", Some(&r.organization_id), &mut v),
            workspace_id: opt_uuid("workspace_id", r.workspace_id.as_deref(), &mut v),
            subscription_id: opt_uuid("subscription_id", r.subscription_id.as_deref(), &mut v),
            call_id: r.call_id,
            webhook_type: Some(r.webhook_type).filter(|t| !t.is_empty()),
            status,
            created_after: timestamp("created_after", r.created_after, &mut v),
            created_before: timestamp("created_before", r.created_before, &mut v),
            endpoint_id: opt_uuid("endpoint_id", Some(&r.endpoint_id), &mut v),
            error_category: error_category(r.error_category, &mut v),
            expr: None,
        };
        match FilterExpr::parse(&r.filter) {
            Ok(Some(expr)) => filter.narrow(expr),
            Ok(None) => {}
            Err(e) => v.push(FieldViolation { field: "filter".into(), description: e.to_string() }),
        }
        if !v.is_empty() {
            return Err(Error::invalid_fields(v));
        }
        Ok(ListQuery { filter, page_size: r.page_size, page_token: r.page_token })
    }
}

impl TryFrom<pb::GetLogDetailsRequest> for DetailsQuery {
    type Error = Error;

    fn try_from(r: pb::GetLogDetailsRequest) -> Result<Self> {
        let mut v = Vec::new();
        if r.request_id.is_empty() {
            return Err(Error::invalid("request_id", "is required"));
        }
        let request_id = crate::domain::parse_uuid("request_id", &r.request_id, &mut v);
        let q = DetailsQuery {
            request_id: request_id.unwrap_or_default(),
            organization_id: opt_uuid("organization_id", Some(&r.organization_id), &mut v),
            workspace_id: opt_uuid("workspace_id", r.workspace_id.as_deref(), &mut v),
            subscription_id: opt_uuid("subscription_id", r.subscription_id.as_deref(), &mut v),
        };
        if !v.is_empty() {
            return Err(Error::invalid_fields(v));
        }
        Ok(q)
    }
}

/// The stored body as a Struct: its text written straight into the wire
/// form, with no `Struct` (or `serde_json::Value` tree) in between. The
/// page's byte budget bounds how many are built.
fn parse_object(raw: &str) -> Option<RawStruct> {
    RawStruct::from_json_object(raw)
}

/// A UUID in its hyphenated form, written straight into the string (the
/// `Display` route through the formatter showed in a page's profile: a
/// log carries up to six).
fn uuid_text(u: Uuid) -> String {
    u.hyphenated().encode_lower(&mut Uuid::encode_buffer()).to_owned()
}

impl From<LogRecord> for pb::WebhookLog {
    fn from(l: LogRecord) -> Self {
        // The latest attempt's fields, moved rather than cloned.
        let (http_status_code, response_body, response_time_ms, error_message, error_category, last_attempted_at) =
            match l.last_attempt {
                Some(a) => (
                    a.status_code,
                    Some(a.response_body),
                    Some(a.response_time_ms),
                    a.error_message,
                    a.error_category,
                    Some(a.attempted_at.into()),
                ),
                None => (None, None, None, None, None, None),
            };
        pb::WebhookLog {
            log_id: l.log_id,
            request_id: uuid_text(l.request_id),
            organization_id: uuid_text(l.organization_id),
            workspace_id: l.workspace_id.map(uuid_text),
            subscription_id: l.subscription_id.map(uuid_text),
            call_id: l.call_id,
            assistant_id: l.assistant_id,
            webhook_url: l.webhook_url,
            webhook_type: l.webhook_type,
            payload: parse_object(&l.body),
            metadata: match l.metadata {
                Some(Json::Object(o)) => Some(json_to_struct(o)),
                _ => None,
            },
            execution_status: status_to_proto(l.status).into(),
            attempt_count: l.attempt_count,
            max_retries: l.max_retries,
            http_status_code,
            response_body,
            response_time_ms,
            error_message,
            error_category,
            last_attempted_at,
            next_attempt_at: l.next_attempt_at.filter(|_| l.status == ExecutionStatus::Pending).map(Into::into),
            created_at: Some(l.created_at.into()),
            updated_at: Some(l.updated_at.into()),
            expire_time: l.expires_at.map(Into::into),
            message_id: uuid_text(l.message_id),
            endpoint_id: l.endpoint_id.map(uuid_text).unwrap_or_default(),
        }
    }
}

fn attempt_to_proto(a: AttemptRecord, request_body: &str) -> pb::DeliveryAttempt {
    let status = if a.success { ExecutionStatus::Succeeded } else { ExecutionStatus::Failed };
    pb::DeliveryAttempt {
        attempt_number: a.attempt_number,
        http_status_code: a.status_code,
        execution_status: status_to_proto(status).into(),
        created_at: Some(a.attempted_at.into()),
        request_body: request_body.to_owned(),
        response_body: a.response_body,
        response_truncated: a.response_truncated,
        response_time_ms: a.response_time_ms,
        error_message: a.error_message,
        error_category: a.error_category,
        manual: a.manual,
    }
}

/// Whether a request's view leaves the bodies out; `default_basic` is the
/// method's default (AIP-157).
pub fn basic_view(view: i32, default_basic: bool) -> bool {
    match pb::LogView::try_from(view) {
        Ok(pb::LogView::Basic) => true,
        Ok(pb::LogView::Full) => false,
        _ => default_basic,
    }
}

/// A page or details in the BASIC view.
pub fn strip_details(d: &mut LogDetails) {
    d.log.strip_bodies();
    d.attempts.iter_mut().for_each(AttemptRecord::strip_bodies);
}

impl TryFrom<pb::WatchWebhookLogsRequest> for crate::service::WatchQuery {
    type Error = Error;

    /// The filters are ListWebhookLogs's, checked by the same conversion;
    /// the view says whether events carry bodies.
    fn try_from(r: pb::WatchWebhookLogsRequest) -> Result<Self> {
        let list = pb::ListWebhookLogsRequest {
            organization_id: r.organization_id,
            workspace_id: r.workspace_id,
            subscription_id: r.subscription_id,
            call_id: r.call_id,
            webhook_type: r.webhook_type,
            execution_status: r.execution_status,
            endpoint_id: r.endpoint_id,
            error_category: r.error_category,
            filter: r.filter,
            ..Default::default()
        };
        let filter = ListQuery::try_from(list)?.filter;
        // BASIC unless FULL is asked for (AIP-157: the method's default).
        let bodies = if basic_view(r.view, true) { crate::store::Bodies::Without } else { crate::store::Bodies::With };
        Ok(crate::service::WatchQuery { filter, resume_token: r.resume_token, bodies })
    }
}

/// One watch event in proto form (the bodies left out when `basic`).
pub fn watch_event_to_proto(e: crate::service::WatchEvent, basic: bool) -> pb::WatchWebhookLogsResponse {
    let e = if basic { e.into_basic() } else { e };
    // The message owns its fields: a BASIC copy is this watcher's own and
    // moves; a FULL event is shared with the other watchers and is copied.
    let (log, change) = (std::sync::Arc::unwrap_or_clone(e.log), std::sync::Arc::unwrap_or_clone(e.change));
    let (kind, attempt, reason) = match change {
        crate::store::TailChange::Attempt(a) => ("attempt", Some(attempt_to_proto(a, &log.body)), String::new()),
        crate::store::TailChange::Status { reason, .. } => ("status", None, reason),
    };
    pb::WatchWebhookLogsResponse {
        kind: kind.into(),
        log: Some(log.into()),
        attempt,
        reason,
        event_time: Some(e.at.into()),
        resume_token: e.resume_token,
    }
}

impl From<LogDetails> for pb::GetLogDetailsResponse {
    fn from(d: LogDetails) -> Self {
        let attempts = d.attempts.into_iter().map(|a| attempt_to_proto(a, &d.log.body)).collect();
        pb::GetLogDetailsResponse { attempts, log: Some(d.log.into()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integral_numbers_stay_integers_and_fractions_stay_fractions() {
        let j: Map<String, Json> =
            serde_json::from_str(r#"{"a":123,"b":1.5,"c":[true,null,"x"],"d":{"e":-7}}"#).unwrap();
        let back = struct_to_json(json_to_struct(j.clone())).unwrap();
        assert_eq!(back, j);
        assert_eq!(Json::Object(back).to_string(), r#"{"a":123,"b":1.5,"c":[true,null,"x"],"d":{"e":-7}}"#);
    }

    #[test]
    fn a_struct_nested_past_the_limit_is_refused_by_name() {
        let nested = |depth: usize| {
            let text = format!(r#"{{"a":{}1{}}}"#, "[".repeat(depth - 1), "]".repeat(depth - 1));
            json_to_struct(serde_json::from_str(&text).unwrap())
        };
        assert!(struct_to_json(nested(MAX_DEPTH)).is_ok());
        let err = struct_to_json(nested(MAX_DEPTH + 1)).unwrap_err();
        assert!(err.contains("must not nest deeper than 32 levels"), "{err}");
    }

    #[test]
    fn nan_is_refused() {
        let s = Struct {
            fields: [("n".to_string(), Value { kind: Some(Kind::NumberValue(f64::NAN)) })].into_iter().collect(),
        };
        assert!(struct_to_json(s.into()).is_err());
    }
}
