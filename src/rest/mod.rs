//! The REST adapter, grpc-gateway style: thin translations onto the same
//! service (and, for the `/v1` gateway routes, the same gRPC methods) that
//! gRPC callers use. No SQL, no second implementation.
//!
//! - [`calls`]: `GET /api/v1/calls/{call_id}/webhook-logs` (per-call logs).
//! - [`subscriptions`]: webhook-subscription logs and log details.
//! - [`gateway`]: the RPCs at their `google.api.http` routes, in proto3 JSON.

mod calls;
mod error;
mod gateway;
mod openapi;
mod subscriptions;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{RestError, Style};

use crate::auth::Principal;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::service::WebhookService;

#[derive(Clone)]
pub struct RestState {
    pub service: WebhookService,
    pub metrics: Arc<Metrics>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "hookpost REST API", description = "Webhook logs over JSON; every route maps onto the gRPC service."),
    components(schemas(calls::CallWebhookLog, subscriptions::SubscriptionLog, subscriptions::SubscriptionLogDetail)),
    // Custom methods after a path parameter (`{id}:verb`), routed by hand below.
    paths(gateway::recovery::redeliver, gateway::recovery::pause_or_resume, gateway::recovery::resume_doc)
)]
struct ApiDoc;

/// The REST routes and the OpenAPI document generated from their handlers.
pub fn router(state: RestState) -> axum::Router {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(calls::call_webhook_logs))
        .routes(routes!(subscriptions::list_logs))
        .routes(routes!(subscriptions::log_details))
        .routes(routes!(gateway::dispatch))
        .routes(routes!(gateway::list_webhook_logs))
        .routes(routes!(gateway::get_log_details))
        .routes(routes!(gateway::endpoints::create, gateway::endpoints::list))
        .routes(routes!(gateway::endpoints::get, gateway::endpoints::update, gateway::endpoints::delete))
        .routes(routes!(gateway::endpoints::secret))
        .routes(routes!(gateway::endpoints::rotate))
        .routes(routes!(gateway::endpoints::stats))
        .routes(routes!(gateway::endpoints::organization_secret))
        .routes(routes!(gateway::endpoints::rotate_organization_secret))
        .routes(routes!(gateway::recovery::redeliver_in_subscription))
        .routes(routes!(gateway::recovery::recover))
        .routes(routes!(gateway::recovery::get_operation))
        .routes(routes!(gateway::get_caller))
        .routes(routes!(gateway::watch::watch))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .with_state(state.clone())
        .split_for_parts();
    // `{id}:verb` segments: the router takes the whole segment (see
    // gateway::recovery), beside the same path's other methods.
    let router = router
        .route("/v1/webhook-logs/{request_id}", axum::routing::post(gateway::recovery::redeliver))
        .route(
            "/organizations/{organizationId}/workspaces/{workspaceId}/webhook-subscriptions/{webhookSubscriptionId}",
            axum::routing::post(gateway::recovery::pause_or_resume),
        )
        .with_state(state.clone());
    let mut api = api;
    utoipa::Modify::modify(&openapi::ErrorResponses, &mut api);
    let api = Arc::new(api);
    router
        .route_layer(axum::middleware::from_fn_with_state(state.metrics.clone(), observe_http))
        .route("/openapi.json", axum::routing::get(move || async move { Json(api.as_ref().clone()) }))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(error::json_errors))
}

/// Prometheus metrics (open, like health: they carry no tenant data).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
async fn metrics(State(state): State<RestState>) -> axum::response::Response {
    let metrics = &state.metrics;
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(axum::http::header::CONTENT_TYPE, content_type)], metrics.render()).into_response()
}

/// Counts and times each request under its route template (never the raw
/// path, which would carry IDs).
async fn observe_http(
    State(metrics): State<Arc<Metrics>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    metrics.observe_http(&route, response.status().as_u16(), started.elapsed());
    response
}

async fn not_found() -> RestError {
    RestError::status(Error::not_found("no such route"))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive")))]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the store answers. Read replicas that do not answer are named
/// (the primary serves their reads, so the server stays ready).
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "ready"), (status = 503, description = "the store is unreachable")))]
async fn readyz(State(state): State<RestState>) -> impl IntoResponse {
    if state.service.ready().await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "store unavailable".to_owned());
    }
    let mut body = "ready".to_owned();
    for r in state.service.read_replicas().into_iter().filter(|r| !r.up) {
        body.push_str(&format!("\nread replica {} unavailable: its reads go to the primary", r.label));
    }
    (StatusCode::OK, body)
}

/// The caller of a request, as the transport's authentication layer found it
/// (from `Authorization: Bearer <key>` or `Authorization: AccessKey <key>`,
/// both schemes appear in the documented APIs) before the body was read.
pub fn caller(extensions: &axum::http::Extensions, style: Style) -> Result<Principal, RestError> {
    crate::transport::auth::principal(extensions).map_err(|e| match style {
        Style::Detail => RestError::detail(e),
        Style::Status => RestError::status(e),
    })
}

/// Query parameters, each allowed at most once; an unknown or repeated one is a
/// 400 rather than silently ignored.
pub fn query_params(raw: Option<&str>, allowed: &[&str], style: Style) -> Result<HashMap<String, String>, RestError> {
    let mut params = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        if !allowed.contains(&k.as_ref()) {
            let expected = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
            return Err(error::bad_param(style, &k, format!("is not a known parameter (expected: {expected})")));
        }
        if params.insert(k.to_string(), v.to_string()).is_some() {
            return Err(error::bad_param(style, &k, "is given more than once"));
        }
    }
    Ok(params)
}

/// Parses a UUID path or query parameter.
pub fn uuid_param(style: Style, name: &str, raw: &str) -> Result<uuid::Uuid, RestError> {
    uuid::Uuid::parse_str(raw).map_err(|_| error::bad_param(style, name, format!("must be a UUID, got {raw:?}")))
}

/// ISO 8601 / RFC 3339 in UTC with milliseconds, as the documents show.
pub fn iso_millis(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
