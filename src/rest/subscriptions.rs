//! Webhook-subscription logs and per-request log details, in the shape of the
//! messaging platform's documented API (camelCase, `results`, `nextPageToken`).

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::bad_param;
use super::{RestError, RestState, Style, caller, iso_millis, query_params, uuid_param};
use crate::domain::{ExecutionStatus, LogFilter, LogRecord};
use crate::error::ErrorCode;
use crate::service::{DetailsQuery, ListQuery};

/// The documented values of `executionStatus`.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // a schema only: the parameter is parsed by ExecutionStatus::parse
pub enum StatusParam {
    Pending,
    Succeeded,
    Failed,
    Held,
}

/// Proto field names as this API calls its parameters.
fn rest_name(field: &str) -> Option<&'static str> {
    Some(match field {
        "page_token" => "pageToken",
        "page_size" => "limit",
        "execution_status" => "executionStatus",
        "request_id" => "requestId",
        "organization_id" => "organizationId",
        "workspace_id" => "workspaceId",
        "subscription_id" => "webhookSubscriptionId",
        _ => return None,
    })
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionLog {
    organization_id: String,
    workspace_id: String,
    subscription_id: String,
    request_id: String,
    attempt_count: u32,
    /// Status of the latest attempt; null before the first attempt.
    http_status_code: Option<i32>,
    /// pending, succeeded, failed or held.
    execution_status: String,
    created_at: String,
    updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionLogPage {
    /// Absent on the last page.
    #[serde(rename = "nextPageToken", skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
    results: Vec<SubscriptionLog>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PayloadDetails {
    /// The response body received (at most 10 KiB).
    response: String,
    /// The exact request body sent.
    request: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionLogDetail {
    organization_id: String,
    workspace_id: String,
    subscription_id: String,
    request_id: String,
    /// This attempt's number (1 for the first).
    attempt_count: u32,
    http_status_code: Option<i32>,
    /// succeeded or failed, for this attempt.
    execution_status: String,
    created_at: String,
    updated_at: String,
    payload_details: PayloadDetails,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionLogDetails {
    results: Vec<SubscriptionLogDetail>,
}

struct Scope {
    organization_id: Uuid,
    workspace_id: Uuid,
    subscription_id: Uuid,
}

fn scope(path: (String, String, String)) -> Result<Scope, RestError> {
    Ok(Scope {
        organization_id: uuid_param(Style::Status, "organizationId", &path.0)?,
        workspace_id: uuid_param(Style::Status, "workspaceId", &path.1)?,
        subscription_id: uuid_param(Style::Status, "webhookSubscriptionId", &path.2)?,
    })
}

fn summary(l: LogRecord) -> SubscriptionLog {
    SubscriptionLog {
        organization_id: l.organization_id.to_string(),
        workspace_id: l.workspace_id.map(|u| u.to_string()).unwrap_or_default(),
        subscription_id: l.subscription_id.map(|u| u.to_string()).unwrap_or_default(),
        request_id: l.request_id.to_string(),
        attempt_count: l.attempt_count,
        http_status_code: l.last_attempt.as_ref().and_then(|a| a.status_code),
        execution_status: l.status.as_str().to_owned(),
        created_at: iso_millis(l.created_at),
        updated_at: iso_millis(l.updated_at),
    }
}

/// List all logs for a webhook subscription, newest first.
#[utoipa::path(
    get,
    path = "/organizations/{organizationId}/workspaces/{workspaceId}/webhook-subscriptions/{webhookSubscriptionId}/logs",
    tag = "webhook-subscriptions",
    params(
        ("organizationId" = Uuid, Path),
        ("workspaceId" = Uuid, Path),
        ("webhookSubscriptionId" = Uuid, Path),
        ("limit" = Option<u32>, Query, description = "1..100, default 10", minimum = 1, maximum = 100),
        ("pageToken" = Option<String>, Query, description = "nextPageToken of the previous page", max_length = 8000),
        ("executionStatus" = Option<StatusParam>, Query),
    ),
    responses(
        (status = 200, description = "A page of logs; empty when there are none", body = SubscriptionLogPage),
        (status = 400, description = "A bad parameter", body = Object),
    ),
    security(("bearer" = []), ("accessKey" = []))
)]
pub async fn list_logs(
    State(state): State<RestState>,
    Path(path): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
    extensions: axum::http::Extensions,
) -> Result<Json<SubscriptionLogPage>, RestError> {
    let who = caller(&extensions, Style::Status)?;
    let scope = scope(path)?;
    let params = query_params(raw.as_deref(), &["limit", "pageToken", "executionStatus"], Style::Status)?;
    let limit = match params.get("limit") {
        None => 10,
        Some(raw) => match raw.parse::<i32>() {
            Ok(n @ 1..=100) => n,
            _ => {
                return Err(bad_param(
                    Style::Status,
                    "limit",
                    format!("must be an integer from 1 to 100, got {raw:?}"),
                ));
            }
        },
    };
    let status = match params.get("executionStatus").map(String::as_str) {
        None => None,
        Some(raw) => Some(ExecutionStatus::parse(raw).ok_or_else(|| {
            bad_param(
                Style::Status,
                "executionStatus",
                format!("must be pending, succeeded, failed or held, got {raw:?}"),
            )
        })?),
    };
    let filter = LogFilter {
        organization_id: Some(scope.organization_id),
        workspace_id: Some(scope.workspace_id),
        subscription_id: Some(scope.subscription_id),
        status,
        ..Default::default()
    };
    let query =
        ListQuery { filter, page_size: limit, page_token: params.get("pageToken").cloned().unwrap_or_default() };
    let page = state
        .service
        .list_logs(&who, query)
        .await
        .map_err(|e| RestError::status(e).renamed(|f| rest_name(f).map(str::to_owned)))?;
    Ok(Json(SubscriptionLogPage {
        results: page.logs.into_iter().map(summary).collect(),
        next_page_token: page.next_page_token,
    }))
}

/// Get webhook log details by request ID: every attempt, newest first.
#[utoipa::path(
    get,
    path = "/organizations/{organizationId}/workspaces/{workspaceId}/webhook-subscriptions/{webhookSubscriptionId}/logs/details",
    tag = "webhook-subscriptions",
    params(
        ("organizationId" = Uuid, Path),
        ("workspaceId" = Uuid, Path),
        ("webhookSubscriptionId" = Uuid, Path),
        ("requestId" = Uuid, Query, description = "The request ID (the webhook-id header)"),
    ),
    responses(
        (status = 200, description = "Every attempt; an empty list when none exist", body = SubscriptionLogDetails),
        (status = 400, description = "A bad parameter", body = Object),
    ),
    security(("bearer" = []), ("accessKey" = []))
)]
pub async fn log_details(
    State(state): State<RestState>,
    Path(path): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
    extensions: axum::http::Extensions,
) -> Result<Json<SubscriptionLogDetails>, RestError> {
    let who = caller(&extensions, Style::Status)?;
    let scope = scope(path)?;
    let params = query_params(raw.as_deref(), &["requestId"], Style::Status)?;
    let raw_id = params.get("requestId").ok_or_else(|| bad_param(Style::Status, "requestId", "is required"))?;
    let request_id = uuid_param(Style::Status, "requestId", raw_id)?;
    let query = DetailsQuery {
        request_id,
        organization_id: Some(scope.organization_id),
        workspace_id: Some(scope.workspace_id),
        subscription_id: Some(scope.subscription_id),
    };
    let details = match state.service.log_details(&who, query).await {
        Ok(d) => d,
        // Documented: no details is an empty list, not an error.
        Err(e) if e.code == ErrorCode::NotFound => return Ok(Json(SubscriptionLogDetails { results: Vec::new() })),
        Err(e) => return Err(RestError::status(e).renamed(|f| rest_name(f).map(str::to_owned))),
    };
    let log = &details.log;
    let results = details
        .attempts
        .into_iter()
        .map(|a| SubscriptionLogDetail {
            organization_id: log.organization_id.to_string(),
            workspace_id: scope.workspace_id.to_string(),
            subscription_id: scope.subscription_id.to_string(),
            request_id: log.request_id.to_string(),
            attempt_count: a.attempt_number,
            http_status_code: a.status_code,
            execution_status: if a.success { "succeeded" } else { "failed" }.to_owned(),
            created_at: iso_millis(a.attempted_at),
            updated_at: iso_millis(a.attempted_at),
            payload_details: PayloadDetails { response: a.response_body, request: log.body.clone() },
        })
        .collect();
    Ok(Json(SubscriptionLogDetails { results }))
}
