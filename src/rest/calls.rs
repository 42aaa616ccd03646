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
use crate::service::{CALL_CHUNK, MAX_PAGE_BYTES};
use crate::store::CallCursor;

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
    let first =
        service.call_logs(&who, call_id, webhook_type.clone(), None, CALL_CHUNK).await.map_err(RestError::detail)?;
    if first.logs.is_empty() {
        // A known call with no webhook of that type is an empty list, not a 404.
        if webhook_type.is_some()
            && !service.call_logs(&who, call_id, None, None, 1).await.map_err(RestError::detail)?.logs.is_empty()
        {
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
    //
    //
    // Each chunk asks for as many rows as the last one's average size fits
    // in the byte budget: rows past a chunk's byte cut are sent by Postgres
    // all the same and thrown away, so for a call of large payloads asking
    // for CALL_CHUNK rows every time made Postgres send ten times the
    // response, and the server read it (see the memory test in
    // tests/api/processes.rs).
    let chunks = futures_util::stream::unfold(Some((first, true)), move |state| {
        let (service, who, webhook_type) = (service.clone(), who.clone(), webhook_type.clone());
        async move {
            let (batch, first) = state?;
            let cursor = batch.logs.last().map(cursor_of);
            let bytes = batch.logs.iter().map(crate::store::log_bytes).sum::<usize>();
            let rows = rows_fitting(bytes, batch.logs.len());
            let mut out = Vec::with_capacity(bytes + 2);
            for (i, log) in batch.logs.into_iter().enumerate() {
                out.push(if first && i == 0 { b'[' } else { b',' });
                if let Err(e) = serde_json::to_writer(&mut out, &CallWebhookLog::new(log, call_id)) {
                    return Some((Err(std::io::Error::other(e)), None));
                }
            }
            if !batch.more {
                out.push(b']');
                return Some((Ok(Bytes::from(out)), None));
            }
            match service.call_logs(&who, call_id, webhook_type, cursor, rows).await {
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

/// How many logs of the average size of `count` logs of `bytes` fit in a
/// chunk's byte budget (one more, the one that reaches it), from 1 to
/// [`CALL_CHUNK`].
fn rows_fitting(bytes: usize, count: usize) -> u32 {
    let average = bytes.div_ceil(count.max(1)).max(1);
    u32::try_from(MAX_PAGE_BYTES / average + 1).unwrap_or(CALL_CHUNK).min(CALL_CHUNK)
}

/// Where a log sits in the per-call order.
fn cursor_of(l: &LogRecord) -> CallCursor {
    CallCursor { at: l.last_attempt.as_ref().map_or(l.created_at, |a| a.attempted_at), log_id: l.log_id }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_asks_for_the_rows_its_budget_fits() {
        // Small logs: the full chunk.
        assert_eq!(rows_fitting(100 * 1_000, 100), CALL_CHUNK);
        // 250 kB logs: eight stay under the budget, the ninth reaches it.
        assert_eq!(rows_fitting(9 * 250_000, 9), 9);
        // One log over the whole budget: one at a time.
        assert_eq!(rows_fitting(5 << 20, 1), 1);
        // Nothing read (cannot happen: a chunk holds at least one log).
        assert_eq!(rows_fitting(0, 0), CALL_CHUNK);
    }
}
