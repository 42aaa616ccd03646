//! Redeliver, recover, operations, pause and resume at their
//! `google.api.http` routes, plus a redeliver route beside the seed's
//! per-request details route.
//!
//! Custom methods put a verb after the last path parameter
//! (`{request_id}:redeliver`); the router cannot match a parameter followed
//! by a suffix in one segment, so those routes take the whole segment and
//! split the verb off here. Any other verb answers 404, like an unknown
//! route.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use serde_json::Value;

use super::endpoints::{proto_json, rest_error};
use super::{json, message_from_params, optional_body};
use crate::grpc::recovery as rpc;
use crate::proto::v1 as pb;
use crate::rest::{RestError, RestState, Style, caller};

/// The ID and the verb of a `{id}:verb` segment.
fn custom_method(segment: &str) -> Result<(String, &str), RestError> {
    match segment.split_once(':') {
        Some((id, verb)) => Ok((id.to_owned(), verb)),
        None => Err(RestError::status(crate::error::Error::not_found("no such route"))),
    }
}

fn unknown_verb(verb: &str) -> RestError {
    RestError::status(crate::error::Error::not_found(format!("no custom method {verb:?} here")))
}

/// Send a delivery again (`RedeliverWebhook`): a settled one goes back to
/// pending now, with a fresh retry budget; its new attempts are marked
/// manual. 400 (`FAILED_PRECONDITION`, as grpc-gateway maps it) while it is
/// pending or held.
#[utoipa::path(
    post,
    path = "/v1/webhook-logs/{request_id}:redeliver",
    tag = "gateway",
    params(("request_id" = uuid::Uuid, Path, description = "The request ID")),
    request_body(content = Object, description = "{} or {\"organizationId\": …} to scope the call"),
    responses(
        (status = 200, description = "hookpost.v1.RedeliverWebhookResponse: the delivery, pending again", body = Object),
        (status = 404, description = "No such request", body = Object),
        (status = 400, description = "FAILED_PRECONDITION: still pending or held; or a bad ID", body = Object),
    ),
    security(("bearer" = []))
)]
pub async fn redeliver(
    State(state): State<RestState>,
    Path(segment): Path<String>,
    extensions: axum::http::Extensions,
    body: Bytes,
) -> Result<Json<json::RedeliverWebhookResponse>, RestError> {
    let who = caller(&extensions, Style::Status)?;
    let (request_id, verb) = custom_method(&segment)?;
    if verb != "redeliver" {
        return Err(unknown_verb(verb));
    }
    let mut request: pb::RedeliverWebhookRequest = optional_body(&body, "a valid redelivery request")?;
    request.request_id = request_id;
    let details = redeliver_call(&state, &who, request).await?;
    Ok(Json(json::RedeliverWebhookResponse::new(details)))
}

async fn redeliver_call(
    state: &RestState,
    who: &crate::auth::Principal,
    r: pb::RedeliverWebhookRequest,
) -> Result<crate::domain::LogRecord, RestError> {
    let (request_id, organization_id) = rpc::redeliver_target(&r).map_err(|e| RestError::status(e).json_named())?;
    let details = state
        .service
        .redeliver(who, request_id, organization_id)
        .await
        .map_err(|e| RestError::status(e).json_named())?;
    Ok(details.log)
}

/// Send a delivery of this webhook subscription again, by request ID: the
/// same as `POST /v1/webhook-logs/{request_id}:redeliver`, beside the
/// per-request details route.
#[utoipa::path(
    post,
    path = "/organizations/{organizationId}/workspaces/{workspaceId}/webhook-subscriptions/{webhookSubscriptionId}/logs/redeliver",
    tag = "webhook-subscriptions",
    params(
        ("organizationId" = uuid::Uuid, Path), ("workspaceId" = uuid::Uuid, Path), ("webhookSubscriptionId" = uuid::Uuid, Path),
        ("requestId" = uuid::Uuid, Query, description = "The request ID (the webhook-id header of URL-style webhooks)"),
    ),
    responses(
        (status = 200, description = "hookpost.v1.RedeliverWebhookResponse", body = Object),
        (status = 404, description = "No such request in this subscription", body = Object),
        (status = 400, description = "FAILED_PRECONDITION: still pending or held; or a bad ID", body = Object),
    ),
    security(("bearer" = []), ("accessKey" = []))
)]
pub async fn redeliver_in_subscription(
    State(state): State<RestState>,
    Path((organization_id, workspace_id, subscription_id)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
    extensions: axum::http::Extensions,
) -> Result<Json<json::RedeliverWebhookResponse>, RestError> {
    let who = caller(&extensions, Style::Status)?;
    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct Query {
        request_id: String,
    }
    let q: Query = message_from_params(raw.as_deref(), &[])?;
    let mut v = Vec::new();
    let org = crate::domain::parse_uuid("organizationId", &organization_id, &mut v);
    let workspace = crate::domain::parse_uuid("workspaceId", &workspace_id, &mut v);
    let subscription = crate::domain::parse_uuid("webhookSubscriptionId", &subscription_id, &mut v);
    let request_id = crate::domain::parse_uuid("requestId", &q.request_id, &mut v);
    let (Some(org), Some(workspace), Some(subscription), Some(request_id)) = (org, workspace, subscription, request_id)
    else {
        return Err(RestError::status(crate::error::Error::invalid_fields(v)));
    };
    // Scope first: a request outside this subscription answers like a
    // missing one, and nothing is sent again.
    let query = crate::service::DetailsQuery {
        request_id,
        organization_id: Some(org),
        workspace_id: Some(workspace),
        subscription_id: Some(subscription),
    };
    state.service.log_details(&who, query).await.map_err(RestError::status)?;
    let details = state.service.redeliver(&who, request_id, Some(org)).await.map_err(RestError::status)?;
    Ok(Json(json::RedeliverWebhookResponse::new(details.log)))
}

/// Recover failed deliveries of a window (`RecoverWebhooks`): with
/// `dryRun`, only their count; otherwise an operation that sends them
/// again in the background (see `GET …/operations/{operationId}`).
#[utoipa::path(
    post,
    path = "/organizations/{organizationId}/webhook-logs:recover",
    tag = "gateway",
    params(("organizationId" = uuid::Uuid, Path)),
    request_body(content = Object, description = "hookpost.v1.RecoverWebhooksRequest: startTime and endTime (required), endpointId, errorCategory, webhookType, dryRun"),
    responses(
        (status = 200, description = "hookpost.v1.RecoverWebhooksResponse: the operation, or the count of a dry run", body = Object),
        (status = 400, description = "google.rpc.Status with field violations", body = Object),
    ),
    security(("bearer" = []), ("accessKey" = []))
)]
pub async fn recover(
    State(state): State<RestState>,
    Path(organization_id): Path<String>,
    extensions: axum::http::Extensions,
    body: Bytes,
) -> Result<Json<Value>, RestError> {
    let who = caller(&extensions, Style::Status)?;
    let mut request: pb::RecoverWebhooksRequest = optional_body(&body, "a valid recovery request")?;
    request.organization_id = organization_id;
    proto_json(&rpc::recover(&state.service, &who, request).await.map_err(rest_error)?)
}

/// A long-running operation's progress (`GetOperation`).
#[utoipa::path(
    get,
    path = "/organizations/{organizationId}/operations/{operationId}",
    tag = "gateway",
    params(("organizationId" = uuid::Uuid, Path), ("operationId" = uuid::Uuid, Path)),
    responses(
        (status = 200, description = "hookpost.v1.GetOperationResponse", body = Object),
        (status = 404, description = "No such operation", body = Object),
    ),
    security(("bearer" = []), ("accessKey" = []))
)]
pub async fn get_operation(
    State(state): State<RestState>,
    Path((organization_id, operation_id)): Path<(String, String)>,
    extensions: axum::http::Extensions,
) -> Result<Json<Value>, RestError> {
    let who = caller(&extensions, Style::Status)?;
    let request = pb::GetOperationRequest { organization_id, operation_id };
    proto_json(&rpc::get_operation(&state.service, &who, request).await.map_err(rest_error)?)
}

/// Pause (`:pause`) or resume (`:resume`) a webhook subscription
/// (`PauseEndpoint`, `ResumeEndpoint`). While paused, its deliveries are
/// held; resuming releases them in the order they were created.
#[utoipa::path(
    post,
    path = "/organizations/{organizationId}/workspaces/{workspaceId}/webhook-subscriptions/{webhookSubscriptionId}:pause",
    tag = "webhook-subscriptions",
    params(("organizationId" = uuid::Uuid, Path), ("workspaceId" = uuid::Uuid, Path), ("webhookSubscriptionId" = uuid::Uuid, Path)),
    request_body(content = Object, description = "{} (no fields)"),
    responses((status = 200, description = "hookpost.v1.PauseEndpointResponse", body = Object)),
    security(("bearer" = []), ("accessKey" = []))
)]
pub async fn pause_or_resume(
    State(state): State<RestState>,
    Path((organization_id, workspace_id, segment)): Path<(String, String, String)>,
    extensions: axum::http::Extensions,
) -> Result<Json<Value>, RestError> {
    let who = caller(&extensions, Style::Status)?;
    let (endpoint_id, verb) = custom_method(&segment)?;
    match verb {
        "pause" => {
            let request = pb::PauseEndpointRequest { organization_id, workspace_id, endpoint_id };
            proto_json(&rpc::pause(&state.service, &who, request).await.map_err(rest_error)?)
        }
        "resume" => {
            let request = pb::ResumeEndpointRequest { organization_id, workspace_id, endpoint_id };
            proto_json(&rpc::resume(&state.service, &who, request).await.map_err(rest_error)?)
        }
        other => Err(unknown_verb(other)),
    }
}

/// Resume a paused webhook subscription (`ResumeEndpoint`); the answer
/// counts the held deliveries released. (Served by the same handler as
/// `:pause`; this entry documents the route.)
#[utoipa::path(
    post,
    path = "/organizations/{organizationId}/workspaces/{workspaceId}/webhook-subscriptions/{webhookSubscriptionId}:resume",
    tag = "webhook-subscriptions",
    params(("organizationId" = uuid::Uuid, Path), ("workspaceId" = uuid::Uuid, Path), ("webhookSubscriptionId" = uuid::Uuid, Path)),
    request_body(content = Object, description = "{} (no fields)"),
    responses((status = 200, description = "hookpost.v1.ResumeEndpointResponse", body = Object)),
    security(("bearer" = []), ("accessKey" = []))
)]
#[allow(dead_code)] // documentation only
pub async fn resume_doc() {}
