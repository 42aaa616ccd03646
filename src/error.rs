//! One error type for every layer, and one code table that yields both the gRPC
//! code and the HTTP status (grpc-gateway's `HTTPStatusFromCode`).

use std::fmt;

/// What went wrong, as the caller should see it. Each code maps to exactly one
/// gRPC code and one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    Unauthenticated,
    ResourceExhausted,
    FailedPrecondition,
    Unavailable,
    DeadlineExceeded,
    Internal,
}

impl ErrorCode {
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            Self::InvalidArgument => tonic::Code::InvalidArgument,
            Self::NotFound => tonic::Code::NotFound,
            Self::AlreadyExists => tonic::Code::AlreadyExists,
            Self::PermissionDenied => tonic::Code::PermissionDenied,
            Self::Unauthenticated => tonic::Code::Unauthenticated,
            Self::ResourceExhausted => tonic::Code::ResourceExhausted,
            Self::FailedPrecondition => tonic::Code::FailedPrecondition,
            Self::Unavailable => tonic::Code::Unavailable,
            Self::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            Self::Internal => tonic::Code::Internal,
        }
    }

    /// The inverse of [`Self::grpc_code`], for statuses coming back from the
    /// gRPC layer (the REST gateway calls it in-process).
    pub fn from_grpc(code: tonic::Code) -> Self {
        match code {
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => Self::InvalidArgument,
            tonic::Code::NotFound => Self::NotFound,
            tonic::Code::AlreadyExists | tonic::Code::Aborted => Self::AlreadyExists,
            tonic::Code::PermissionDenied => Self::PermissionDenied,
            tonic::Code::Unauthenticated => Self::Unauthenticated,
            tonic::Code::ResourceExhausted => Self::ResourceExhausted,
            tonic::Code::FailedPrecondition => Self::FailedPrecondition,
            tonic::Code::Unavailable => Self::Unavailable,
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => Self::DeadlineExceeded,
            _ => Self::Internal,
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidArgument | Self::FailedPrecondition => 400,
            Self::Unauthenticated => 401,
            Self::PermissionDenied => 403,
            Self::NotFound => 404,
            Self::AlreadyExists => 409,
            Self::ResourceExhausted => 429,
            Self::Internal => 500,
            Self::Unavailable => 503,
            Self::DeadlineExceeded => 504,
        }
    }
}

/// A request field that failed validation (`google.rpc.BadRequest.FieldViolation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// The error every layer returns. `message` is what the caller sees; `source`
/// keeps the full cause chain for the logs and is never sent to the caller.
#[derive(Debug)]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    pub violations: Vec<FieldViolation>,
    /// When to try again (rate limiting), sent as `Retry-After`.
    pub retry_after: Option<std::time::Duration>,
    pub source: Option<anyhow::Error>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), violations: Vec::new(), retry_after: None, source: None }
    }

    /// Bad input in one field.
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        Self::invalid_fields(vec![FieldViolation { field: field.to_owned(), description: description.into() }])
    }

    /// Bad input in one or more fields; the message names them all.
    pub fn invalid_fields(violations: Vec<FieldViolation>) -> Self {
        let message =
            violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ");
        Self { code: ErrorCode::InvalidArgument, message, violations, retry_after: None, source: None }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn internal(source: anyhow::Error) -> Self {
        Self {
            code: ErrorCode::Internal,
            message: "internal error".into(),
            violations: Vec::new(),
            retry_after: None,
            source: Some(source),
        }
    }

    pub fn unavailable(source: anyhow::Error) -> Self {
        Self {
            code: ErrorCode::Unavailable,
            message: "the store is unavailable, try again".into(),
            violations: Vec::new(),
            retry_after: None,
            source: Some(source),
        }
    }

    /// Logs server-side failures with their cause chain; client mistakes are not
    /// worth a log line each.
    pub fn log(&self) {
        match self.code {
            ErrorCode::Internal | ErrorCode::Unavailable | ErrorCode::DeadlineExceeded => {
                tracing::error!(code = ?self.code, error = ?self.source, message = ?self.message, "server error")
            }
            // Debug-formatted: the message can quote what a client sent
            // (a query key with a newline must not forge a log line).
            _ => tracing::debug!(code = ?self.code, message = ?self.message, "client error"),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)?;
        if let Some(source) = &self.source {
            write!(f, " ({source:#})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// Database errors are classified by kind and SQLSTATE, never by message text.
impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        let unavailable = match &err {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // 08: connection exception; 53: insufficient resources;
                // 57P0x: admin/crash shutdown, cannot connect now; 40001/40P01:
                // serialization failure or deadlock, safe to retry.
                // SQLite: BUSY and LOCKED (and their extended codes).
                matches!(code.as_ref(), "5" | "6" | "261" | "262" | "517" | "773")
                    || code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57P")
                    || code == "40001"
                    || code == "40P01"
            }),
            _ => false,
        };
        let source = anyhow::Error::new(err);
        if unavailable { Self::unavailable(source) } else { Self::internal(source) }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        use tonic_types::{ErrorDetails, StatusExt};
        err.log();
        let code = err.code.grpc_code();
        let mut details = ErrorDetails::new();
        for v in &err.violations {
            details.add_bad_request_violation(v.field.clone(), v.description.clone());
        }
        if let Some(after) = err.retry_after {
            details.set_retry_info(Some(after));
        }
        let mut status = if err.violations.is_empty() && err.retry_after.is_none() {
            tonic::Status::new(code, err.message)
        } else {
            tonic::Status::with_error_details(code, err.message, details)
        };
        if let Some(after) = err.retry_after
            && let Ok(v) = after.as_secs().max(1).to_string().parse()
        {
            status.metadata_mut().insert("retry-after", v);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_error_quoting_a_newline_logs_one_line() {
        #[derive(Clone, Default)]
        struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            Error::invalid("x\n2026-01-01T00:00:00Z  INFO forged: admin logged in", "is not a known parameter").log();
        });
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
    }

    #[test]
    fn codes_follow_the_grpc_gateway_table() {
        let table = [
            (ErrorCode::InvalidArgument, tonic::Code::InvalidArgument, 400),
            (ErrorCode::Unauthenticated, tonic::Code::Unauthenticated, 401),
            (ErrorCode::PermissionDenied, tonic::Code::PermissionDenied, 403),
            (ErrorCode::NotFound, tonic::Code::NotFound, 404),
            (ErrorCode::AlreadyExists, tonic::Code::AlreadyExists, 409),
            (ErrorCode::ResourceExhausted, tonic::Code::ResourceExhausted, 429),
            (ErrorCode::Unavailable, tonic::Code::Unavailable, 503),
            (ErrorCode::DeadlineExceeded, tonic::Code::DeadlineExceeded, 504),
        ];
        for (code, grpc, http) in table {
            assert_eq!(code.grpc_code(), grpc);
            assert_eq!(ErrorCode::from_grpc(grpc), code);
            assert_eq!(code.http_status(), http);
        }
    }

    #[test]
    fn retry_after_travels_in_status_details_and_metadata() {
        use tonic_types::StatusExt;
        let mut err = Error::new(ErrorCode::ResourceExhausted, "slow down");
        err.retry_after = Some(std::time::Duration::from_secs(3));
        let status = tonic::Status::from(err);
        assert_eq!(status.metadata().get("retry-after").unwrap(), "3");
        let info = status.get_error_details().retry_info().cloned().expect("retry info");
        assert_eq!(info.retry_delay, Some(std::time::Duration::from_secs(3)));
    }

    #[test]
    fn a_lost_connection_is_unavailable() {
        let err = Error::from(sqlx::Error::PoolTimedOut);
        assert_eq!(err.code, ErrorCode::Unavailable);
    }
}
