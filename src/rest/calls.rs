//! `GET /api/v1/calls/{call_id}/webhook-logs`: every webhook sent for one call,
//! ordered by attempt time, in the per-call API's shape.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::IntoResponse;
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::error::bad_param;
use super::{RestError, RestState, Style, caller, query_params};
use crate::domain::{ExecutionStatus, LogRecord};
use crate::error::Error;

/// One webhook log, as the per-call API documents it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallWebhookLog {
    /// Unique webhook log ID.
    id: i64,
    call_id: i64,
    assistant_id: Option<i64>,
    webhook_url: String,
    webhook_type: String,
    /// The JSON payload sent to the webhook URL.
    #[schema(value_type = Object)]
    request_payload: Box<RawValue>,
    response_status_code: Option<i32>,
    /// Response body (at most 10 KiB kept).
    response_body: Option<String>,
    response_time_ms: Option<i64>,
    /// When the (latest) attempt was made, ISO 8601; null before the first.
    attempted_at: Option<String>,
    success: bool,
    error_message: Option<String>,
    /// Retries made (attempts after the first).
    retry_count: u32,
    #[schema(value_type = Option<Object>)]
    webhook_metadata: Option<serde_json::Value>,
}

impl CallWebhookLog {
    fn new(l: LogRecord, call_id: i64) -> Self {
        let last = l.last_attempt.as_ref();
        Self {
            id: l.log_id,
            call_id,
            assistant_id: l.assistant_id,
            webhook_url: l.webhook_url,
            webhook_type: l.webhook_type,
            // The stored body is the JSON sent: passed through, not re-parsed.
            request_payload: RawValue::from_string(l.body)
                .unwrap_or_else(|_| RawValue::from_string("null".to_owned()).expect("null is JSON")),
            response_status_code: last.and_then(|a| a.status_code),
            // No response (connect error, timeout) is null, not an empty body.
            response_body: last.filter(|a| a.status_code.is_some()).map(|a| a.response_body.clone()),
            response_time_ms: last.map(|a| a.response_time_ms),
            attempted_at: last.map(|a| a.attempted_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            success: l.status == ExecutionStatus::Succeeded,
            error_message: last.and_then(|a| a.error_message.clone()),
            retry_count: l.attempt_count.saturating_sub(1),
            webhook_metadata: l.metadata,
        }
    }
}

/// Retrieve all webhook delivery logs for a call.
#[utoipa::path(
    get,
    path = "/api/v1/calls/{call_id}/webhook-logs",
    tag = "calls",
    params(
        ("call_id" = i64, Path, description = "The internal call ID"),
        ("webhook_type" = Option<String>, Query, description = "Filter by webhook type, e.g. call_ended; empty means any",
            max_length = 128, pattern = "^[A-Za-z0-9._:-]*$"),
    ),
    responses(
        (status = 200, description = "Logs ordered by attempt time", body = [CallWebhookLog]),
        (status = 400, description = "A bad parameter", body = Object, example = json!({"detail": "call_id: must be an integer"})),
        (status = 404, description = "No webhook for this call", body = Object, example = json!({"detail": "Call with ID 101 not found in your organization"})),
    ),
    security(("bearer" = []))
)]
pub async fn call_webhook_logs(
    State(state): State<RestState>,
    Path(call_id): Path<String>,
    RawQuery(raw): RawQuery,
    extensions: axum::http::Extensions,
) -> Result<axum::response::Response, RestError> {
    let who = caller(&extensions, Style::Detail)?;
    let call_id: i64 = call_id.parse().map_err(|_| bad_param(Style::Detail, "call_id", "must be an integer"))?;
    let params = query_params(raw.as_deref(), &["webhook_type"], Style::Detail)?;
    // Empty means any type, as it does on ListWebhookLogs.
    let webhook_type = params.get("webhook_type").filter(|t| !t.is_empty()).cloned();
    let service = state.service;
    let first = service.call_logs(&who, call_id, webhook_type.clone(), None).await.map_err(RestError::detail)?;
    if first.logs.is_empty() {
        // A known call with no webhook of that type is an empty list, not a 404.
        if webhook_type.is_some() && service.call_known(&who, call_id).await.map_err(RestError::detail)? {
            return Ok(Json(Vec::<CallWebhookLog>::new()).into_response());
        }
        return Err(RestError::detail(Error::not_found(format!(
            "Call with ID {call_id} not found in your organization"
        ))));
    }
    // Every log of the call, however many, streamed one chunk (one keyset
    // query) at a time: memory holds one chunk, never the whole call. A
    // failure after the first chunk can no longer change the status, so it
    // aborts the response rather than end it as if complete.
    let chunks = futures_util::stream::unfold(Some((first, true)), move |state| {
        let (service, who, webhook_type) = (service.clone(), who.clone(), webhook_type.clone());
        async move {
            let (chunk, first) = state?;
            let mut out = Vec::with_capacity(chunk.bytes + 2);
            for (i, log) in chunk.logs.into_iter().enumerate() {
                out.push(if first && i == 0 { b'[' } else { b',' });
                if let Err(e) = serde_json::to_writer(&mut out, &CallWebhookLog::new(log, call_id)) {
                    return Some((Err(std::io::Error::other(e)), None));
                }
            }
            let Some(after) = chunk.next else {
                out.push(b']');
                return Some((Ok(Bytes::from(out)), None));
            };
            match service.call_logs(&who, call_id, webhook_type, Some(after)).await {
                Ok(next) => Some((Ok(Bytes::from(out)), Some((next, false)))),
                Err(e) => {
                    e.log();
                    Some((Err(std::io::Error::other("reading the next chunk of logs failed")), None))
                }
            }
        }
    });
    let body = axum::body::Body::from_stream(chunks);
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
}
