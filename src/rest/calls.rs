//! `GET /api/v1/calls/{call_id}/webhook-logs`: every webhook sent for one call,
//! ordered by attempt time, in the per-call API's shape.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::bad_param;
use super::{RestError, RestState, Style, caller, query_params};
use crate::domain::{ExecutionStatus, LogFilter, LogRecord};
use crate::error::Error;
use crate::service::{ListQuery, MAX_PAGE_SIZE};

/// Most logs returned for one call; a call's webhooks are few in practice and
/// this bounds the work one request can cause.
const MAX_CALL_LOGS: usize = 10_000;

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
    request_payload: serde_json::Value,
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
            request_payload: serde_json::from_str(&l.body).unwrap_or(serde_json::Value::Null),
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
        ("webhook_type" = Option<String>, Query, description = "Filter by webhook type, e.g. call_ended"),
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
) -> Result<Json<Vec<CallWebhookLog>>, RestError> {
    let who = caller(&extensions, Style::Detail)?;
    let call_id: i64 = call_id.parse().map_err(|_| bad_param(Style::Detail, "call_id", "must be an integer"))?;
    let params = query_params(raw.as_deref(), &["webhook_type"], Style::Detail)?;
    let filter =
        LogFilter { call_id: Some(call_id), webhook_type: params.get("webhook_type").cloned(), ..Default::default() };

    let mut logs = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = state
            .service
            .list_logs(&who, ListQuery { filter: filter.clone(), page_size: MAX_PAGE_SIZE as i32, page_token })
            .await
            .map_err(RestError::detail)?;
        logs.extend(page.logs);
        match page.next_page_token {
            Some(t) if logs.len() < MAX_CALL_LOGS => page_token = t,
            _ => break,
        }
    }
    if logs.is_empty() && filter.webhook_type.is_some() {
        // A known call with no webhook of that type is an empty list, not a 404.
        let any = LogFilter { webhook_type: None, ..filter };
        let page = state
            .service
            .list_logs(&who, ListQuery { filter: any, page_size: 1, page_token: String::new() })
            .await
            .map_err(RestError::detail)?;
        if !page.logs.is_empty() {
            return Ok(Json(Vec::new()));
        }
    }
    if logs.is_empty() {
        return Err(RestError::detail(Error::not_found(format!(
            "Call with ID {call_id} not found in your organization"
        ))));
    }
    // Attempt time, oldest first; a webhook not yet attempted sorts by creation.
    logs.sort_by_key(|l| (l.last_attempt.as_ref().map_or(l.created_at, |a| a.attempted_at), l.log_id));
    Ok(Json(logs.into_iter().map(|l| CallWebhookLog::new(l, call_id)).collect()))
}
