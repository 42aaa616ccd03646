//! One authentication layer for gRPC and REST. It reads only the request's
//! headers: a request without a valid key is answered before a byte of its
//! body is read or decoded. The caller's [`Principal`] travels to the
//! handlers as a request extension (tonic copies extensions into
//! `tonic::Request`).
//!
//! Open without a key: health, readiness, metrics, the OpenAPI document, the
//! console's static files (its data calls carry the key), and gRPC health and
//! reflection. They carry no tenant data.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;

use crate::auth::Authenticator;
pub use crate::auth::Principal;
use crate::error::{Error, ErrorCode};

const OPEN_REST_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics", "/openapi.json"];
const OPEN_GRPC_SERVICES: &[&str] =
    &["/grpc.health.v1.Health/", "/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/"];

fn is_open(grpc: bool, path: &str) -> bool {
    if grpc {
        OPEN_GRPC_SERVICES.iter().any(|s| path.starts_with(s))
    } else {
        OPEN_REST_PATHS.contains(&path) || super::console::is_console(path)
    }
}

pub(super) async fn authenticate(State(auth): State<Arc<Authenticator>>, mut request: Request, next: Next) -> Response {
    let grpc = super::is_grpc(&request);
    if is_open(grpc, request.uri().path()) {
        return next.run(request).await;
    }
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let value = request.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    match auth.authenticate(value, peer).await {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(err) => super::error_response(grpc, request.uri().path(), err),
    }
}

/// The principal the layer attached; its absence is a wiring bug, reported
/// as UNAUTHENTICATED rather than a panic.
pub fn principal(extensions: &axum::http::Extensions) -> Result<Principal, Error> {
    extensions
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Error::new(ErrorCode::Unauthenticated, "missing API key: send \"authorization: Bearer <key>\""))
}
