//! What every request goes through before it reaches gRPC or REST: the
//! bounded listener, one per-request deadline, one authentication layer that
//! reads only headers (so no anonymous body is ever read or decoded), and
//! the choice of protocol.
//!
//! - [`listener`]: the accept loop and its per-connection bounds.
//! - [`auth`]: the API key check shared by gRPC and REST.

pub mod auth;
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

/// The whole HTTP surface: gRPC and REST behind the shared layers.
pub fn router(
    grpc: axum::Router,
    rest: axum::Router,
    auth: Arc<Authenticator>,
    request_timeout: Duration,
) -> axum::Router {
    by_content_type(grpc, rest)
        .layer(axum::middleware::from_fn_with_state(auth, auth::authenticate))
        .layer(axum::middleware::from_fn_with_state(request_timeout, deadline))
}

/// True for a gRPC call: a gRPC content type on a gRPC method path. Anything
/// else (`/healthz` with a gRPC content type included) is REST.
pub fn is_grpc(request: &Request) -> bool {
    let content_type = request.headers().get(axum::http::header::CONTENT_TYPE).map(|v| v.as_bytes());
    let grpc_type = content_type.is_some_and(|v| {
        v == b"application/grpc" || v.starts_with(b"application/grpc+") || v.starts_with(b"application/grpc;")
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

/// One listener for both protocols.
fn by_content_type(grpc: axum::Router, rest: axum::Router) -> axum::Router {
    use tower::ServiceExt;
    axum::Router::new().fallback_service(tower::service_fn(move |request: Request| {
        let target = if is_grpc(&request) { grpc.clone() } else { rest.clone() };
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
