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
    pub fn renamed(mut self, rename: impl Fn(&str) -> Option<&'static str>) -> Self {
        if self.err.violations.is_empty() {
            return self;
        }
        let violations: Vec<FieldViolation> = self
            .err
            .violations
            .iter()
            .map(|v| FieldViolation {
                field: rename(&v.field).map(str::to_owned).unwrap_or_else(|| v.field.clone()),
                description: v.description.clone(),
            })
            .collect();
        self.err = Error::invalid_fields(violations);
        self
    }

    pub fn code(&self) -> ErrorCode {
        self.err.code
    }
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
            Style::Status => {
                let mut body = json!({
                    "code": self.err.code.grpc_code() as i32,
                    "message": self.err.message,
                    "details": [],
                });
                if !self.err.violations.is_empty() {
                    let violations: Vec<_> = self
                        .err
                        .violations
                        .iter()
                        .map(|v| json!({"field": v.field, "description": v.description}))
                        .collect();
                    body["details"] = json!([{
                        "@type": "type.googleapis.com/google.rpc.BadRequest",
                        "fieldViolations": violations,
                    }]);
                }
                body
            }
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
