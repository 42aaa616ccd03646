//! `WatchWebhookLogs` over HTTP, as grpc-gateway streams a server-streaming
//! RPC: newline-delimited JSON, one `{"result": …}` per event and
//! `{"error": …}` if the stream fails; or, for browsers asking for
//! `text/event-stream`, Server-Sent Events whose IDs are resume tokens, so
//! that `EventSource` resumes by itself (`Last-Event-ID`).

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::{json, message_from_params};
use crate::proto::v1 as pb;
use crate::rest::error::status_body;
use crate::rest::{RestError, RestState, Style, caller};
use crate::service::WatchQuery;

/// Watch webhook logs (`WatchWebhookLogs`): NDJSON by default, Server-Sent
/// Events with `Accept: text/event-stream`. Query parameters are the
/// request's fields (`organizationId`, `executionStatus`, `resumeToken`,
/// `view`, ...).
#[utoipa::path(
    get,
    path = "/v1/webhook-logs:watch",
    tag = "gateway",
    params(
        ("organizationId" = Option<uuid::Uuid>, Query), ("workspaceId" = Option<uuid::Uuid>, Query),
        ("subscriptionId" = Option<uuid::Uuid>, Query), ("callId" = Option<i64>, Query),
        ("webhookType" = Option<String>, Query, max_length = 128, pattern = "^[A-Za-z0-9._:-]*$"),
        ("executionStatus" = Option<super::StatusName>, Query),
        ("endpointId" = Option<uuid::Uuid>, Query),
        ("errorCategory" = Option<String>, Query, max_length = 32, pattern = "^[A-Za-z0-9_]*$"),
        ("filter" = Option<String>, Query, max_length = 2048, description = "AIP-160 filter, as for ListWebhookLogs"),
        ("resumeToken" = Option<String>, Query, max_length = 200, description = "Continue right after the event that carried it"),
        ("view" = Option<String>, Query, description = "LOG_VIEW_BASIC (default: no bodies) or LOG_VIEW_FULL"),
    ),
    responses(
        (status = 200, description = "One JSON object per line: {\"result\": hookpost.v1.WatchWebhookLogsResponse}, or {\"error\": google.rpc.Status}; with Accept: text/event-stream, Server-Sent Events (id: resume token)", content_type = "application/x-ndjson"),
        (status = 400, description = "google.rpc.Status with field violations", body = Object),
        (status = 429, description = "Too many open watch streams for this API key", body = Object),
    ),
    security(("bearer" = []))
)]
pub async fn watch(
    State(state): State<RestState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
) -> Result<Response, RestError> {
    let who = caller(&extensions, Style::Status)?;
    let mut message: pb::WatchWebhookLogsRequest = message_from_params(raw.as_deref(), &[])?;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let sse = accept.contains("text/event-stream");
    if sse && message.resume_token.is_empty() {
        // An EventSource reconnecting sends the last event's ID.
        if let Some(last) = headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
            message.resume_token = last.to_owned();
        }
    }
    let query = WatchQuery::try_from(message).map_err(|e| RestError::status(e).json_named())?;
    let basic = query.bodies == crate::store::Bodies::Without;
    let events = state.service.watch(&who, query).await.map_err(|e| RestError::status(e).json_named())?;
    if sse {
        let stream = events.map(move |e| {
            Ok::<_, Infallible>(match e {
                Ok(e) => {
                    let id = e.resume_token.clone();
                    let data = serde_json::to_string(&json::WatchEvent::new(e, basic)).unwrap_or_default();
                    Event::default().event("log").id(id).data(data)
                }
                Err(err) => Event::default().event("error").data(status_body(&err).to_string()),
            })
        });
        return Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response());
    }
    let lines = events.map(move |e| {
        let mut line = match e {
            Ok(e) => serde_json::to_vec(&serde_json::json!({ "result": json::WatchEvent::new(e, basic) })),
            Err(err) => serde_json::to_vec(&serde_json::json!({ "error": status_body(&err) })),
        }
        .unwrap_or_default();
        line.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(line))
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response())
}
