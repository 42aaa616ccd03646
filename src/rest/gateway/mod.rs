//! The RPCs at their `google.api.http` routes (see `proto/`), in proto3
//! canonical JSON. Requests are decoded into the proto messages (pbjson) and
//! parsed by the same conversions gRPC uses; the service answers; responses
//! are written by [`json`], which passes stored bodies through as the bytes
//! they are instead of rebuilding them as `google.protobuf.Struct`.

pub(super) mod endpoints;
mod json;
pub(super) mod recovery;
pub(super) mod watch;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{RestError, RestState, Style, caller};
use crate::domain::DispatchInput;
use crate::error::{Error, ErrorCode};
use crate::proto::v1 as pb;
use crate::service::{DetailsQuery, ListQuery};

fn bad_request(message: String) -> RestError {
    RestError::status(Error::new(ErrorCode::InvalidArgument, message))
}

/// A body that may be empty (then the message's defaults) or JSON of `T`;
/// `what` names it in the error ("body is not a valid rotation request").
fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &Bytes, what: &str) -> Result<T, RestError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| bad_request(format!("body is not {what}: {e}")))
}

/// Query parameters (and path variables) as a proto3 JSON object of strings,
/// which pbjson accepts for every scalar, enum and timestamp field.
fn message_from_params<T: DeserializeOwned>(raw: Option<&str>, path: &[(&str, String)]) -> Result<T, RestError> {
    let mut object = Map::new();
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        if object.insert(k.to_string(), Value::String(v.to_string())).is_some() {
            return Err(bad_request(format!("{k:?}: is given more than once")));
        }
    }
    for (k, v) in path {
        object.insert((*k).to_owned(), Value::String(v.clone()));
    }
    serde_json::from_value(Value::Object(object)).map_err(|e| bad_request(format!("bad query parameter: {e}")))
}

/// `hookpost.v1.DispatchRequest` in proto3 JSON, with the server's default
/// bounds (each is an option of `hookpost serve`).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)] // a schema only: the body is decoded as the proto message
pub struct DispatchBody {
    /// Required unless the API key is an organization key.
    organization_id: Option<uuid::Uuid>,
    workspace_id: Option<uuid::Uuid>,
    subscription_id: Option<uuid::Uuid>,
    call_id: Option<i64>,
    assistant_id: Option<i64>,
    /// An absolute http(s) URL; private and reserved addresses are refused.
    #[schema(max_length = 2048, format = "uri")]
    webhook_url: String,
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")]
    webhook_type: String,
    /// At most 256 KiB as JSON.
    #[schema(value_type = Option<Object>)]
    payload: Option<serde_json::Value>,
    /// At most 16 KiB as JSON.
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Value>,
    #[schema(max_length = 255)]
    idempotency_key: Option<String>,
    #[schema(minimum = 0, maximum = 50)]
    max_retries: Option<u32>,
}

/// `hookpost.v1.ExecutionStatus` by name.
#[derive(utoipa::ToSchema)]
#[allow(dead_code, clippy::enum_variant_names)] // a schema only
pub enum StatusName {
    #[schema(rename = "EXECUTION_STATUS_PENDING")]
    ExecutionStatusPending,
    #[schema(rename = "EXECUTION_STATUS_SUCCEEDED")]
    ExecutionStatusSucceeded,
    #[schema(rename = "EXECUTION_STATUS_FAILED")]
    ExecutionStatusFailed,
    #[schema(rename = "EXECUTION_STATUS_HELD")]
    ExecutionStatusHeld,
}

/// Dispatch a webhook (`hookpost.v1.WebhookService/Dispatch`).
#[utoipa::path(
    post,
    path = "/v1/webhooks:dispatch",
    tag = "gateway",
    request_body(content = DispatchBody, description = "hookpost.v1.DispatchRequest in proto3 JSON"),
    responses(
        (status = 200, description = "hookpost.v1.DispatchResponse in proto3 JSON", body = Object),
        (status = 400, description = "google.rpc.Status with field violations", body = Object),
    ),
    security(("bearer" = []))
)]
pub async fn dispatch(
    State(state): State<RestState>,
    extensions: axum::http::Extensions,
    body: Bytes,
) -> Result<Json<json::DispatchResponse>, RestError> {
    let who = caller(&extensions, Style::Status)?;
    let message: pb::DispatchRequest =
        serde_json::from_slice(&body).map_err(|e| bad_request(format!("body is not a valid DispatchRequest: {e}")))?;
    let input = DispatchInput::try_from(message).map_err(|e| RestError::status(e).json_named())?;
    let d = state.service.dispatch(&who, input).await.map_err(|e| RestError::status(e).json_named())?;
    Ok(Json(json::DispatchResponse::new(&d)))
}

/// List webhook logs (`hookpost.v1.WebhookService/ListWebhookLogs`); query
/// parameters are the request's fields (`organizationId`, `pageSize`, ...).
#[utoipa::path(
    get,
    path = "/v1/webhook-logs",
    tag = "gateway",
    params(
        ("organizationId" = Option<uuid::Uuid>, Query), ("workspaceId" = Option<uuid::Uuid>, Query),
        ("subscriptionId" = Option<uuid::Uuid>, Query), ("callId" = Option<i64>, Query),
        ("webhookType" = Option<String>, Query, max_length = 128, pattern = "^[A-Za-z0-9._:-]*$"),
        ("executionStatus" = Option<StatusName>, Query),
        ("createdAfter" = Option<chrono::DateTime<chrono::Utc>>, Query),
        ("createdBefore" = Option<chrono::DateTime<chrono::Utc>>, Query),
        ("pageSize" = Option<i32>, Query, minimum = 0, description = "0 means 10; above 100 means 100"),
        ("pageToken" = Option<String>, Query, max_length = 8000),
        ("endpointId" = Option<uuid::Uuid>, Query, description = "Deliveries to this endpoint"),
        ("view" = Option<String>, Query, description = "LOG_VIEW_FULL (default) or LOG_VIEW_BASIC: without request and response bodies"),
        ("errorCategory" = Option<String>, Query, max_length = 32, pattern = "^[A-Za-z0-9_]*$",
            description = "The latest attempt's failure category; with executionStatus=EXECUTION_STATUS_FAILED, the dead letters"),
        ("filter" = Option<String>, Query, max_length = 2048,
            description = "AIP-160 filter, ANDed with the other parameters, e.g. `execution_status = FAILED AND create_time > \"2026-11-20T00:00:00Z\"` (see ListWebhookLogsRequest.filter)"),
    ),
    responses(
        (status = 200, description = "hookpost.v1.ListWebhookLogsResponse in proto3 JSON", body = Object),
        (status = 400, description = "google.rpc.Status with field violations", body = Object),
    ),
    security(("bearer" = []))
)]
pub async fn list_webhook_logs(
    State(state): State<RestState>,
    RawQuery(raw): RawQuery,
    extensions: axum::http::Extensions,
) -> Result<Json<json::ListWebhookLogsResponse>, RestError> {
    let who = caller(&extensions, Style::Status)?;
    let message: pb::ListWebhookLogsRequest = message_from_params(raw.as_deref(), &[])?;
    let basic = crate::grpc::basic_view(message.view, false);
    let query = ListQuery::try_from(message).map_err(|e| RestError::status(e).json_named())?;
    let mut page = state.service.list_logs(&who, query).await.map_err(|e| RestError::status(e).json_named())?;
    if basic {
        page.logs.iter_mut().for_each(crate::domain::LogRecord::strip_bodies);
    }
    Ok(Json(json::ListWebhookLogsResponse::new(page)))
}

/// Every attempt of one request (`hookpost.v1.WebhookService/GetLogDetails`).
#[utoipa::path(
    get,
    path = "/v1/webhook-logs/{request_id}",
    tag = "gateway",
    params(
        ("request_id" = uuid::Uuid, Path, description = "The request ID"),
        ("view" = Option<String>, Query, description = "LOG_VIEW_FULL (default) or LOG_VIEW_BASIC: without request and response bodies"),
    ),
    responses(
        (status = 200, description = "hookpost.v1.GetLogDetailsResponse in proto3 JSON", body = Object),
        (status = 400, description = "google.rpc.Status with field violations", body = Object),
        (status = 404, description = "No such request", body = Object),
    ),
    security(("bearer" = []))
)]
pub async fn get_log_details(
    State(state): State<RestState>,
    Path(request_id): Path<String>,
    RawQuery(raw): RawQuery,
    extensions: axum::http::Extensions,
) -> Result<Json<json::GetLogDetailsResponse>, RestError> {
    let who = caller(&extensions, Style::Status)?;
    let message: pb::GetLogDetailsRequest = message_from_params(raw.as_deref(), &[("request_id", request_id)])?;
    let basic = crate::grpc::basic_view(message.view, false);
    let query = DetailsQuery::try_from(message).map_err(|e| RestError::status(e).json_named())?;
    let mut details = state.service.log_details(&who, query).await.map_err(|e| RestError::status(e).json_named())?;
    if basic {
        crate::grpc::strip_details(&mut details);
    }
    Ok(Json(json::GetLogDetailsResponse::new(details)))
}

/// Who the caller is (`GetCaller`): its key's kind and, for an organization
/// key, its organization.
#[utoipa::path(
    get,
    path = "/v1/caller",
    tag = "gateway",
    responses((status = 200, description = "hookpost.v1.GetCallerResponse", body = Object)),
    security(("bearer" = []), ("accessKey" = []))
)]
pub async fn get_caller(extensions: axum::http::Extensions) -> Result<Json<Value>, RestError> {
    let who = caller(&extensions, Style::Status)?;
    endpoints::proto_json(&crate::grpc::caller_to_proto(&who))
}
