//! The RPCs at their `google.api.http` routes (see `proto/`), in proto3
//! canonical JSON (pbjson). Each handler decodes the JSON into the proto
//! message and calls the gRPC method in-process, as grpc-gateway would over
//! the network; the `authorization` header travels as gRPC metadata.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{RestError, RestState};
use crate::error::{Error, ErrorCode};
use crate::proto::v1 as pb;
use crate::proto::v1::webhook_service_server::WebhookService as _;

fn grpc_request<T>(message: T, headers: &HeaderMap) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()) {
        request.metadata_mut().insert("authorization", v);
    }
    request
}

fn bad_request(message: String) -> RestError {
    RestError::status(Error::new(ErrorCode::InvalidArgument, message))
}

/// Query parameters (and path variables) as a proto3 JSON object of strings,
/// which pbjson accepts for every scalar, enum and timestamp field.
fn message_from_params<T: DeserializeOwned>(raw: Option<&str>, path: &[(&str, String)]) -> Result<T, RestError> {
    let mut object = Map::new();
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        if object.insert(k.to_string(), Value::String(v.to_string())).is_some() {
            return Err(bad_request(format!("{k}: is given more than once")));
        }
    }
    for (k, v) in path {
        object.insert((*k).to_owned(), Value::String(v.clone()));
    }
    serde_json::from_value(Value::Object(object)).map_err(|e| bad_request(format!("bad query parameter: {e}")))
}

fn to_json<T: serde::Serialize>(message: &T) -> Result<Json<Value>, RestError> {
    serde_json::to_value(message).map(Json).map_err(|e| RestError::status(Error::internal(e.into())))
}

/// Dispatch a webhook (`hookpost.v1.WebhookService/Dispatch`).
#[utoipa::path(
    post,
    path = "/v1/webhooks:dispatch",
    tag = "gateway",
    request_body(content = Object, description = "hookpost.v1.DispatchRequest in proto3 JSON"),
    responses(
        (status = 200, description = "hookpost.v1.DispatchResponse in proto3 JSON", body = Object),
        (status = 400, description = "google.rpc.Status with field violations", body = Object),
    ),
    security(("bearer" = []))
)]
pub async fn dispatch(
    State(state): State<RestState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, RestError> {
    let message: pb::DispatchRequest =
        serde_json::from_slice(&body).map_err(|e| bad_request(format!("body is not a valid DispatchRequest: {e}")))?;
    let response = state.grpc.dispatch(grpc_request(message, &headers)).await?;
    to_json(response.get_ref())
}

/// List webhook logs (`hookpost.v1.WebhookService/ListWebhookLogs`); query
/// parameters are the request's fields (`organizationId`, `pageSize`, ...).
#[utoipa::path(
    get,
    path = "/v1/webhook-logs",
    tag = "gateway",
    params(
        ("organizationId" = Option<String>, Query), ("workspaceId" = Option<String>, Query),
        ("subscriptionId" = Option<String>, Query), ("callId" = Option<i64>, Query),
        ("webhookType" = Option<String>, Query), ("executionStatus" = Option<String>, Query),
        ("createdAfter" = Option<String>, Query), ("createdBefore" = Option<String>, Query),
        ("pageSize" = Option<i32>, Query), ("pageToken" = Option<String>, Query),
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
    headers: HeaderMap,
) -> Result<Json<Value>, RestError> {
    let message: pb::ListWebhookLogsRequest = message_from_params(raw.as_deref(), &[])?;
    let response = state.grpc.list_webhook_logs(grpc_request(message, &headers)).await?;
    to_json(response.get_ref())
}

/// Every attempt of one request (`hookpost.v1.WebhookService/GetLogDetails`).
#[utoipa::path(
    get,
    path = "/v1/webhook-logs/{request_id}",
    tag = "gateway",
    params(("request_id" = String, Path, description = "The request ID (UUID)")),
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
    headers: HeaderMap,
) -> Result<Json<Value>, RestError> {
    let message: pb::GetLogDetailsRequest = message_from_params(raw.as_deref(), &[("request_id", request_id)])?;
    let response = state.grpc.get_log_details(grpc_request(message, &headers)).await?;
    to_json(response.get_ref())
}
