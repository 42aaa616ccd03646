//! The endpoint RPCs at their `google.api.http` routes, the documented API's
//! webhook subscriptions: `/organizations/{organizationId}/workspaces/
//! {workspaceId}/webhook-subscriptions[/{webhookSubscriptionId}]`. The body
//! of create and update is the `Endpoint` itself (`body: "endpoint"`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use serde_json::Value;

use super::{bad_request, message_from_params, optional_body};
use crate::grpc::endpoints as rpc;
use crate::proto::v1 as pb;
use crate::rest::{RestError, RestState, Style, caller};

type Scope = (String, String);
type Item = (String, String, String);

/// Field names as these routes spell them: the path's names for the IDs,
/// proto3 JSON names for the rest.
pub(super) fn rest_error(e: crate::error::Error) -> RestError {
    RestError::status(e).renamed(|field| {
        Some(match field {
            "endpoint_id" => "webhookSubscriptionId".to_owned(),
            other => super::super::error::lower_camel(other),
        })
    })
}

/// A proto message as proto3 JSON, timestamps with `Z` (pbjson writes
/// `+00:00`, which protobuf's own parsers reject).
pub(super) fn proto_json<T: serde::Serialize>(message: &T) -> Result<Json<Value>, RestError> {
    let mut value =
        serde_json::to_value(message).map_err(|e| RestError::status(crate::error::Error::internal(e.into())))?;
    fix_times(&mut value);
    Ok(Json(value))
}

/// Rewrites the `…Time` fields (`google.protobuf.Timestamp`) of endpoint
/// messages, which carry no free-form strings, into the canonical form.
fn fix_times(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match value {
                    Value::String(s) if key.ends_with("Time") => {
                        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
                            *s = super::json::timestamp(t.to_utc());
                        }
                    }
                    other => fix_times(other),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(fix_times),
        _ => {}
    }
}

fn endpoint_body(body: &Bytes) -> Result<pb::Endpoint, RestError> {
    if body.is_empty() {
        return Err(bad_request("the body must be an Endpoint in JSON (url, eventTypes, ...)".into()));
    }
    serde_json::from_slice(body).map_err(|e| bad_request(format!("body is not a valid Endpoint: {e}")))
}

/// Create a webhook subscription (`CreateEndpoint`); the answer carries its
/// signing secret, shown once. `signatureScheme` picks HMAC-SHA256 (the
/// default, `whsec_` secret, `v1` signatures) or ed25519 (`whsk_` key, `v1a`
/// signatures, verified with the endpoint's `publicKey`).
#[utoipa::path(
    post,
    path = "/organizations/{organizationId}/workspaces/{workspaceId}/webhook-subscriptions",
    tag = "webhook-subscriptions",
    params(("organizationId" = uuid::Uuid, Path), ("workspaceId" = uuid::Uuid, Path)),
    request_body(content = Object, description = "hookpost.v1.Endpoint in proto3 JSON: url (required), description, eventTypes, disabled, headers, policy, signatureScheme (SIGNATURE_SCHEME_HMAC_SHA256, the default, or SIGNATURE_SCHEME_ED25519)"),
    responses((status = 200, description = "hookpost.v1.CreateEndpointResponse: the endpoint (with its signatureScheme, and publicKey for ed25519) and its secret (whsec_... or whsk_...)", body = Object)),
    security(("bearer" = []), ("accessKey" = []))
)]
pub async fn create(
    State(state): State<RestState>,
    Path((organization_id, workspace_id)): Path<Scope>,
    extensions: axum::http::Extensions,
    body: Bytes,
) -> Result<Json<Value>, RestError> {
    let who = caller(&extensions, Style::Status)?;
    let request = pb::CreateEndpointRequest { organization_id, workspace_id, endpoint: Some(endpoint_body(&body)?) };
    proto_json(&rpc::create(&state.service, &who, request).await.map_err(rest_error)?)
}

/// List webhook subscriptions (`ListEndpoints`), oldest first.
#[utoipa::path(
    get,
    path = "/organizations/{organizationId}/workspaces/{workspaceId}/webhook-subscriptions",
    tag = "webhook-subscriptions",
    params(
        ("organizationId" = uuid::Uuid, Path), ("workspaceId" = uuid::Uuid, Path),
        ("pageSize" = Option<i32>, Query, minimum = 0, description = "0 means 10; above 100 means 100"),
        ("pageToken" = Option<String>, Query, max_length = 8000),
    ),
    responses((status = 200, description = "hookpost.v1.ListEndpointsResponse", body = Object)),
    security(("bearer" = []), ("accessKey" = []))
)]
pub async fn list(
    State(state): State<RestState>,
    Path((organization_id, workspace_id)): Path<Scope>,
    RawQuery(raw): RawQuery,
    extensions: axum::http::Extensions,
) -> Result<Json<Value>, RestError> {
    let who = caller(&extensions, Style::Status)?;
    let request: pb::ListEndpointsRequest =
        message_from_params(raw.as_deref(), &[("organizationId", organization_id), ("workspaceId", workspace_id)])?;
    proto_json(&rpc::list(&state.service, &who, request).await.map_err(rest_error)?)
}

/// Get a webhook subscription (`GetEndpoint`).
#[utoipa::path(
    get,
    path = "/organizations/{organizationId}/workspaces/{workspaceId}/webhook-subscriptions/{webhookSubscriptionId}",
    tag = "webhook-subscriptions",
    params(("organizationId" = uuid::Uuid, Path), ("workspaceId" = uuid::Uuid, Path), ("webhookSubscriptionId" = uuid::Uuid, Path)),
    responses((status = 200, description = "hookpost.v1.GetEndpointResponse", body = Object)),
    security(("bearer" = []), ("accessKey" = []))
)]
pub async fn get(
    State(state): State<RestState>,
    Path((organization_id, workspace_id, endpoint_id)): Path<Item>,
    extensions: axum::http::Extensions,
) -> Result<Json<Value>, RestError> {
    let who = caller(&extensions, Style::Status)?;
    let request = pb::GetEndpointRequest { organization_id, workspace_id, endpoint_id };
    proto_json(&rpc::get(&state.service, &who, request).await.map_err(rest_error)?)
}

/// Update a webhook subscription (`UpdateEndpoint`): the fields named in
/// `updateMask` (comma-separated), or every field the body sets.
#[utoipa::path(
    patch,
    path = "/organizations/{organizationId}/workspaces/{workspaceId}/webhook-subscriptions/{webhookSubscriptionId}",
    tag = "webhook-subscriptions",
    params(
        ("organizationId" = uuid::Uuid, Path), ("workspaceId" = uuid::Uuid, Path), ("webhookSubscriptionId" = uuid::Uuid, Path),
        ("updateMask" = Option<String>, Query, max_length = 1024, description = "e.g. url,eventTypes,policy.maxInFlight"),
    ),
    request_body(content = Object, description = "hookpost.v1.Endpoint in proto3 JSON; signatureScheme cannot be updated (400): rotate the secret with a signatureScheme instead"),
    responses((status = 200, description = "hookpost.v1.UpdateEndpointResponse", body = Object)),
    security(("bearer" = []), ("accessKey" = []))
)]
pub async fn update(
    State(state): State<RestState>,
    Path((organization_id, workspace_id, endpoint_id)): Path<Item>,
    RawQuery(raw): RawQuery,
    extensions: axum::http::Extensions,
    body: Bytes,
) -> Result<Json<Value>, RestError> {
    let who = caller(&extensions, Style::Status)?;
    let params = crate::rest::query_params(raw.as_deref(), &["updateMask", "update_mask"], Style::Status)?;
    let mask = params
        .get("updateMask")
        .or(params.get("update_mask"))
        .map(|m| m.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect::<Vec<_>>());
    let request = pb::UpdateEndpointRequest {
        organization_id,
        workspace_id,
        endpoint_id,
        endpoint: Some(endpoint_body(&body)?),
        update_mask: mask.map(|paths| pbjson_types::FieldMask { paths }),
    };
    proto_json(&rpc::update(&state.service, &who, request).await.map_err(rest_error)?)
}

/// Delete a webhook subscription (`DeleteEndpoint`).
#[utoipa::path(
    delete,
    path = "/organizations/{organizationId}/workspaces/{workspaceId}/webhook-subscriptions/{webhookSubscriptionId}",
    tag = "webhook-subscriptions",
    params(("organizationId" = uuid::Uuid, Path), ("workspaceId" = uuid::Uuid, Path), ("webhookSubscriptionId" = uuid::Uuid, Path)),
    responses((status = 200, description = "An empty object", body = Object)),
    security(("bearer" = []), ("accessKey" = []))
)]
pub async fn delete(
    State(state): State<RestState>,
    Path((organization_id, workspace_id, endpoint_id)): Path<Item>,
    extensions: axum::http::Extensions,
) -> Result<Json<Value>, RestError> {
    let who = caller(&extensions, Style::Status)?;
    let request = pb::DeleteEndpointRequest { organization_id, workspace_id, endpoint_id };
    proto_json(&rpc::delete(&state.service, &who, request).await.map_err(rest_error)?)
}

/// The webhook subscription's current signing secret (`GetEndpointSecret`).
#[utoipa::path(
    get,
    path = "/organizations/{organizationId}/workspaces/{workspaceId}/webhook-subscriptions/{webhookSubscriptionId}/secret",
    tag = "webhook-subscriptions",
    params(("organizationId" = uuid::Uuid, Path), ("workspaceId" = uuid::Uuid, Path), ("webhookSubscriptionId" = uuid::Uuid, Path)),
    responses((status = 200, description = "hookpost.v1.GetEndpointSecretResponse: secret, and publicKey (whpk_...) for ed25519", body = Object)),
    security(("bearer" = []), ("accessKey" = []))
)]
pub async fn secret(
    State(state): State<RestState>,
    Path((organization_id, workspace_id, endpoint_id)): Path<Item>,
    extensions: axum::http::Extensions,
) -> Result<Json<Value>, RestError> {
    let who = caller(&extensions, Style::Status)?;
    let request = pb::GetEndpointSecretRequest { organization_id, workspace_id, endpoint_id };
    proto_json(&rpc::secret(&state.service, &who, request).await.map_err(rest_error)?)
}

/// Rotate the signing secret (`RotateEndpointSecret`); the previous one keeps
/// signing for `gracePeriod` (default 24 h, at most 7 days). A
/// `signatureScheme` other than the current one switches the endpoint's
/// scheme; during the grace period deliveries carry both signatures.
#[utoipa::path(
    post,
    path = "/organizations/{organizationId}/workspaces/{workspaceId}/webhook-subscriptions/{webhookSubscriptionId}/secret:rotate",
    tag = "webhook-subscriptions",
    params(("organizationId" = uuid::Uuid, Path), ("workspaceId" = uuid::Uuid, Path), ("webhookSubscriptionId" = uuid::Uuid, Path)),
    request_body(content = Object, description = "{\"gracePeriod\": \"3600s\", \"signatureScheme\": \"SIGNATURE_SCHEME_ED25519\"} (both optional; no signatureScheme keeps the current one)"),
    responses((status = 200, description = "hookpost.v1.RotateEndpointSecretResponse: secret, previousSecretExpireTime, and publicKey for ed25519", body = Object)),
    security(("bearer" = []), ("accessKey" = []))
)]
pub async fn rotate(
    State(state): State<RestState>,
    Path((organization_id, workspace_id, endpoint_id)): Path<Item>,
    extensions: axum::http::Extensions,
    body: Bytes,
) -> Result<Json<Value>, RestError> {
    let who = caller(&extensions, Style::Status)?;
    let mut request: pb::RotateEndpointSecretRequest = optional_body(&body, "a valid rotation request")?;
    (request.organization_id, request.workspace_id, request.endpoint_id) = (organization_id, workspace_id, endpoint_id);
    proto_json(&rpc::rotate(&state.service, &who, request).await.map_err(rest_error)?)
}

/// The webhook subscription's last 24 hours, hour by hour (attempts,
/// successes, p50 and p99 response time), and its queue now
/// (`GetEndpointStats`).
#[utoipa::path(
    get,
    path = "/organizations/{organizationId}/workspaces/{workspaceId}/webhook-subscriptions/{webhookSubscriptionId}/stats",
    tag = "webhook-subscriptions",
    params(("organizationId" = uuid::Uuid, Path), ("workspaceId" = uuid::Uuid, Path), ("webhookSubscriptionId" = uuid::Uuid, Path)),
    responses(
        (status = 200, description = "hookpost.v1.GetEndpointStatsResponse: startTime, endTime, 24 hourly buckets (attempts, successes, p50ResponseTimeMs, p99ResponseTimeMs), pendingCount, heldCount, oldestPendingCreateTime", body = Object),
        (status = 404, description = "No such webhook subscription (or another organization's)", body = Object),
    ),
    security(("bearer" = []), ("accessKey" = []))
)]
pub async fn stats(
    State(state): State<RestState>,
    Path((organization_id, workspace_id, endpoint_id)): Path<Item>,
    extensions: axum::http::Extensions,
) -> Result<Json<Value>, RestError> {
    let who = caller(&extensions, Style::Status)?;
    let request = pb::GetEndpointStatsRequest { organization_id, workspace_id, endpoint_id };
    proto_json(&rpc::stats(&state.service, &who, request).await.map_err(rest_error)?)
}

/// The organization's signing secret (`GetOrganizationSecret`), which signs
/// deliveries to a bare `webhookUrl`.
#[utoipa::path(
    get,
    path = "/organizations/{organizationId}/webhook-secret",
    tag = "webhook-subscriptions",
    params(("organizationId" = uuid::Uuid, Path)),
    responses((status = 200, description = "hookpost.v1.GetOrganizationSecretResponse", body = Object)),
    security(("bearer" = []), ("accessKey" = []))
)]
pub async fn organization_secret(
    State(state): State<RestState>,
    Path(organization_id): Path<String>,
    extensions: axum::http::Extensions,
) -> Result<Json<Value>, RestError> {
    let who = caller(&extensions, Style::Status)?;
    let request = pb::GetOrganizationSecretRequest { organization_id };
    proto_json(&rpc::organization_secret(&state.service, &who, request).await.map_err(rest_error)?)
}

/// Rotate the organization's signing secret (`RotateOrganizationSecret`).
#[utoipa::path(
    post,
    path = "/organizations/{organizationId}/webhook-secret:rotate",
    tag = "webhook-subscriptions",
    params(("organizationId" = uuid::Uuid, Path)),
    request_body(content = Object, description = "{\"gracePeriod\": \"3600s\"} (optional)"),
    responses((status = 200, description = "hookpost.v1.RotateOrganizationSecretResponse", body = Object)),
    security(("bearer" = []), ("accessKey" = []))
)]
pub async fn rotate_organization_secret(
    State(state): State<RestState>,
    Path(organization_id): Path<String>,
    extensions: axum::http::Extensions,
    body: Bytes,
) -> Result<Json<Value>, RestError> {
    let who = caller(&extensions, Style::Status)?;
    let mut request: pb::RotateOrganizationSecretRequest = optional_body(&body, "a valid rotation request")?;
    request.organization_id = organization_id;
    proto_json(&rpc::rotate_organization_secret(&state.service, &who, request).await.map_err(rest_error)?)
}
