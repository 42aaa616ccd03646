//! What every request goes through before it reaches gRPC or REST: the
//! bounded listener, one per-request deadline, one authentication layer that
//! reads only headers (so no anonymous body is ever read or decoded), and
//! the choice of protocol.
//!
//! - [`listener`]: the accept loop and its per-connection bounds.
//! - [`auth`]: the API key check shared by gRPC and REST.
//! - [`console`]: the browser console's static files at `/console`.
//! - [`coalesce`]: one system call for what a connection writes between two
//!   trips through the scheduler.

pub mod auth;
pub mod coalesce;
pub mod console;
pub mod listener;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::Authenticator;
use crate::error::{Error, ErrorCode};
use crate::rest::{RestError, Style};

pub use listener::{ConnectionLimits, raise_open_file_limit, serve};

/// The whole HTTP surface: gRPC (and gRPC-Web) and REST behind the shared
/// layers; CORS outermost when origins are configured, so that a browser's
/// preflight is answered without a key.
pub fn router(
    grpc: axum::Router,
    rest: axum::Router,
    auth: Arc<Authenticator>,
    request_timeout: Duration,
    cors_allow_origins: &[String],
) -> anyhow::Result<axum::Router> {
    let router = by_content_type(grpc, rest)
        .layer(axum::middleware::from_fn_with_state(auth, auth::authenticate))
        .layer(axum::middleware::from_fn_with_state(request_timeout, deadline));
    Ok(match cors(cors_allow_origins)? {
        Some(cors) => router.layer(cors),
        None => router,
    })
}

/// The CORS policy for `origins` (none: no CORS headers at all).
fn cors(origins: &[String]) -> anyhow::Result<Option<tower_http::cors::CorsLayer>> {
    use axum::http::{HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins: Vec<&str> = origins.iter().map(|o| o.trim()).filter(|o| !o.is_empty()).collect();
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.contains(&"*") {
        AllowOrigin::any()
    } else {
        let parsed = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o).map_err(|_| anyhow::anyhow!("--cors-allow-origin {o:?} is not a valid origin"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        AllowOrigin::list(parsed)
    };
    let headers = [
        "authorization",
        "content-type",
        "accept",
        "last-event-id",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
        "connect-protocol-version",
        "connect-timeout-ms",
    ];
    let exposed = ["grpc-status", "grpc-message", "grpc-status-details-bin", "x-request-id", "retry-after"];
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE, Method::OPTIONS])
            .allow_headers(headers.map(HeaderName::from_static))
            .expose_headers(exposed.map(HeaderName::from_static))
            .max_age(Duration::from_secs(3600)),
    ))
}

/// True for a gRPC call: a gRPC content type on a gRPC method path. Anything
/// else (`/healthz` with a gRPC content type included) is REST.
pub fn is_grpc(request: &Request) -> bool {
    let content_type = request.headers().get(axum::http::header::CONTENT_TYPE).map(|v| v.as_bytes());
    // gRPC, and gRPC-Web (application/grpc-web, -web+proto, -web-text),
    // which the gRPC side translates.
    let grpc_type = content_type.is_some_and(|v| {
        v == b"application/grpc"
            || v.starts_with(b"application/grpc+")
            || v.starts_with(b"application/grpc;")
            || v.starts_with(b"application/grpc-web")
    });
    let path = request.uri().path();
    // gRPC paths are /<package.Service>/<Method>; REST paths never have a
    // dot in their first segment.
    let grpc_path = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .is_some_and(|(service, method)| service.contains('.') && !method.is_empty() && !method.contains('/'));
    grpc_type && grpc_path
}

/// The REST body shape a path uses for errors: the per-call API's
/// `{"detail": …}`, or grpc-gateway's status object everywhere else.
pub fn rest_style(path: &str) -> Style {
    if path.starts_with("/api/v1/calls/") { Style::Detail } else { Style::Status }
}

/// An error in the protocol and shape the request expects.
pub fn error_response(grpc: bool, path: &str, err: Error) -> Response {
    if grpc {
        tonic::Status::from(err).into_http()
    } else {
        match rest_style(path) {
            Style::Detail => RestError::detail(err).into_response(),
            Style::Status => RestError::status(err).into_response(),
        }
    }
}

/// One deadline for a whole request, body read included: a client that
/// trickles its body cannot hold a request (and its buffers) open for longer.
async fn deadline(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    let grpc = is_grpc(&request);
    let path = request.uri().path().to_owned();
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error_response(
            grpc,
            &path,
            Error::new(ErrorCode::DeadlineExceeded, format!("the request took longer than {timeout:?}")),
        ),
    }
}

/// One listener for both protocols, and the console's files beside REST.
fn by_content_type(grpc: axum::Router, rest: axum::Router) -> axum::Router {
    use tower::ServiceExt;
    let console = console::router();
    axum::Router::new().fallback_service(tower::service_fn(move |request: Request| {
        let target = if is_grpc(&request) {
            grpc.clone()
        } else if console::is_console(request.uri().path()) {
            console.clone()
        } else {
            rest.clone()
        };
        target.oneshot(request)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, content_type: &str) -> Request {
        Request::builder().uri(path).header("content-type", content_type).body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn only_grpc_types_on_grpc_paths_go_to_grpc() {
        assert!(is_grpc(&request("/hookpost.v1.WebhookService/Dispatch", "application/grpc")));
        assert!(is_grpc(&request("/grpc.health.v1.Health/Check", "application/grpc+proto")));
        assert!(!is_grpc(&request("/healthz", "application/grpc")));
        assert!(!is_grpc(&request("/v1/webhook-logs", "application/grpc")));
        assert!(!is_grpc(&request("/hookpost.v1.WebhookService/Dispatch", "application/grpcx")));
        assert!(!is_grpc(&request("/hookpost.v1.WebhookService/Dispatch", "application/json")));
    }
}
