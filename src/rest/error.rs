//! REST error bodies. Status codes come from the one code table in
//! [`crate::error`]; each API family keeps its own body shape.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::{Error, ErrorCode, FieldViolation};

/// Which body shape an error takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `{"detail": "..."}`, as in the per-call webhook-log API.
    Detail,
    /// grpc-gateway's `{"code": <grpc code>, "message": "...", "details": [...]}`.
    Status,
}

#[derive(Debug)]
pub struct RestError {
    style: Style,
    err: Error,
}

impl RestError {
    pub fn detail(err: Error) -> Self {
        Self { style: Style::Detail, err }
    }

    pub fn status(err: Error) -> Self {
        Self { style: Style::Status, err }
    }

    /// Renames fields in violations (proto names to this route's parameter
    /// names), rebuilding the message so it names the parameter the caller used.
    pub fn renamed(mut self, rename: impl Fn(&str) -> Option<String>) -> Self {
        if self.err.violations.is_empty() {
            return self;
        }
        let violations: Vec<FieldViolation> = self
            .err
            .violations
            .iter()
            .map(|v| FieldViolation {
                field: rename(&v.field).unwrap_or_else(|| v.field.clone()),
                description: v.description.clone(),
            })
            .collect();
        self.err = Error::invalid_fields(violations);
        self
    }

    /// Names fields as proto3 JSON does (`page_size` → `pageSize`): the
    /// gateway routes take their parameters and bodies under those names.
    pub fn json_named(self) -> Self {
        self.renamed(|field| Some(lower_camel(field)))
    }

    pub fn code(&self) -> ErrorCode {
        self.err.code
    }
}

/// `snake_case` → `lowerCamelCase`, as protobuf derives JSON names.
pub(crate) fn lower_camel(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut upper = false;
    for c in field.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                out.extend(c.to_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}

/// A bad query or path parameter, named as the caller wrote it.
pub fn bad_param(style: Style, param: &str, description: impl Into<String>) -> RestError {
    RestError { style, err: Error::invalid(param, description) }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        self.err.log();
        let status = StatusCode::from_u16(self.err.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = match self.style {
            Style::Detail => json!({ "detail": self.err.message }),
            Style::Status => status_body(&self.err),
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(after) = self.err.retry_after
            && let Ok(v) = after.as_secs().max(1).to_string().parse()
        {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        response
    }
}

/// An error as grpc-gateway's `google.rpc.Status` JSON, field violations
/// included.
pub(crate) fn status_body(err: &Error) -> serde_json::Value {
    let mut body = json!({
        "code": err.code.grpc_code() as i32,
        "message": err.message,
        "details": [],
    });
    if !err.violations.is_empty() {
        let violations: Vec<_> =
            err.violations.iter().map(|v| json!({"field": v.field, "description": v.description})).collect();
        body["details"] = json!([{
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": violations,
        }]);
    }
    body
}

/// The gRPC status of a gateway call, as grpc-gateway renders it.
impl From<tonic::Status> for RestError {
    fn from(status: tonic::Status) -> Self {
        use tonic_types::StatusExt;
        let code = ErrorCode::from_grpc(status.code());
        let details = status.get_error_details();
        let violations: Vec<FieldViolation> = details
            .bad_request()
            .map(|b| {
                b.field_violations
                    .iter()
                    .map(|v| FieldViolation { field: v.field.clone(), description: v.description.clone() })
                    .collect()
            })
            .unwrap_or_default();
        let mut err =
            if violations.is_empty() { Error::new(code, status.message()) } else { Error::invalid_fields(violations) };
        err.retry_after = details.retry_info().and_then(|r| r.retry_delay);
        Self::status(err)
    }
}

/// Longest request target (path and query) served; longer is a 414 in the
/// route's JSON shape (hyper's own limit, far above, answers without a body).
pub const MAX_URI_BYTES: usize = 16 * 1024;

/// The gRPC code a bare HTTP status stands for, in grpc-gateway's body.
fn grpc_code_of(status: StatusCode) -> tonic::Code {
    match status.as_u16() {
        400 | 411 | 414 | 415 | 422 => tonic::Code::InvalidArgument,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        404 => tonic::Code::NotFound,
        405 | 501 => tonic::Code::Unimplemented,
        408 | 504 => tonic::Code::DeadlineExceeded,
        409 => tonic::Code::AlreadyExists,
        413 | 429 => tonic::Code::ResourceExhausted,
        503 => tonic::Code::Unavailable,
        _ => tonic::Code::Internal,
    }
}

/// An error body of `style` for a status that has no [`ErrorCode`] of its
/// own (405, 413, 414, 415...).
pub fn status_response(style: Style, status: StatusCode, message: &str) -> Response {
    let body = match style {
        Style::Detail => json!({ "detail": message }),
        Style::Status => json!({ "code": grpc_code_of(status) as i32, "message": message, "details": [] }),
    };
    (status, Json(body)).into_response()
}

/// Every REST error leaves in the route's documented JSON shape: the
/// framework's own rejections (method not allowed, body too large, a path
/// segment that does not decode...) are plain text, and are rewritten here.
pub async fn json_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let style = crate::transport::rest_style(request.uri().path());
    let target = request.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_URI_BYTES {
        let message = format!("the request target is {target} bytes; at most {MAX_URI_BYTES} are accepted");
        return status_response(style, StatusCode::URI_TOO_LONG, &message);
    }
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Rejection texts are short; anything longer is cut, not buffered.
    let text = axum::body::to_bytes(body, 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = if text.trim().is_empty() { status.canonical_reason().unwrap_or("error") } else { text.trim() };
    let rewritten = status_response(style, status, message);
    parts.headers.remove(axum::http::header::CONTENT_TYPE);
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let (new_parts, body) = rewritten.into_parts();
    parts.headers.extend(new_parts.headers);
    Response::from_parts(parts, body)
}
