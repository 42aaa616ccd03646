//! The gateway's responses in proto3 canonical JSON, written from the
//! service's types. What protobuf's own JSON printer does, so that a client
//! parsing with it (`json_format.Parse`, `protojson`) round-trips exactly:
//! lowerCamelCase names; int64 as strings; enums by name; fields at their
//! default value left out unless they are `optional`; timestamps in RFC 3339
//! with `Z` and 0, 3, 6 or 9 fractional digits.
//!
//! `payload` (a `google.protobuf.Struct`) is the stored body itself, passed
//! through as raw JSON: it was written as canonical JSON at Dispatch, so it
//! needs no parsing, and a page of large payloads costs its size in memory
//! rather than a tree of values many times that.

use chrono::{DateTime, Utc};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;

use crate::domain::{AttemptRecord, Dispatched, ExecutionStatus, LogRecord};
use crate::service::{LogDetails, LogPage};

/// `google.protobuf.Timestamp` in proto3 JSON.
pub(super) fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

fn status_name(s: ExecutionStatus) -> &'static str {
    match s {
        ExecutionStatus::Pending => "EXECUTION_STATUS_PENDING",
        ExecutionStatus::Succeeded => "EXECUTION_STATUS_SUCCEEDED",
        ExecutionStatus::Failed => "EXECUTION_STATUS_FAILED",
        ExecutionStatus::Held => "EXECUTION_STATUS_HELD",
    }
}

/// A stored JSON object, checked (without building it) to be one.
fn raw_object(body: &str) -> Option<&RawValue> {
    serde_json::from_str::<&RawValue>(body).ok().filter(|r| r.get().starts_with('{'))
}

pub struct DispatchResponse {
    /// Empty when no endpoint subscribed (nothing was stored).
    request_id: String,
    log_id: i64,
    duplicate: bool,
    message_id: String,
    request_ids: Vec<String>,
}

impl DispatchResponse {
    pub fn new(d: &Dispatched) -> Self {
        Self {
            request_id: if d.request_ids.is_empty() { String::new() } else { d.request_id.to_string() },
            log_id: d.log_id,
            duplicate: d.duplicate,
            message_id: d.message_id.to_string(),
            request_ids: d.request_ids.iter().map(ToString::to_string).collect(),
        }
    }
}

impl Serialize for DispatchResponse {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        if !self.request_id.is_empty() {
            m.serialize_entry("requestId", &self.request_id)?;
        }
        if self.log_id != 0 {
            m.serialize_entry("logId", &self.log_id.to_string())?;
        }
        if self.duplicate {
            m.serialize_entry("duplicate", &true)?;
        }
        m.serialize_entry("messageId", &self.message_id)?;
        if !self.request_ids.is_empty() {
            m.serialize_entry("requestIds", &self.request_ids)?;
        }
        m.end()
    }
}

pub struct ListWebhookLogsResponse(LogPage);

impl ListWebhookLogsResponse {
    pub fn new(page: LogPage) -> Self {
        Self(page)
    }
}

impl Serialize for ListWebhookLogsResponse {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        if !self.0.logs.is_empty() {
            let logs: Vec<WebhookLog<'_>> = self.0.logs.iter().map(WebhookLog).collect();
            m.serialize_entry("logs", &logs)?;
        }
        if let Some(token) = self.0.next_page_token.as_deref().filter(|t| !t.is_empty()) {
            m.serialize_entry("nextPageToken", token)?;
        }
        m.end()
    }
}

pub struct GetLogDetailsResponse(LogDetails);

impl GetLogDetailsResponse {
    pub fn new(details: LogDetails) -> Self {
        Self(details)
    }
}

impl Serialize for GetLogDetailsResponse {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        if !self.0.attempts.is_empty() {
            let body = self.0.log.body.as_str();
            let attempts: Vec<Attempt<'_>> = self.0.attempts.iter().map(|a| Attempt(a, body)).collect();
            m.serialize_entry("attempts", &attempts)?;
        }
        m.serialize_entry("log", &WebhookLog(&self.0.log))?;
        m.end()
    }
}

/// `hookpost.v1.WatchWebhookLogsResponse` (bodies left out when `basic`).
/// Serialized from the shared event itself: a FULL event is not copied.
pub struct WatchEvent(crate::service::WatchEvent);

impl WatchEvent {
    pub fn new(event: crate::service::WatchEvent, basic: bool) -> Self {
        Self(if basic { event.into_basic() } else { event })
    }
}

impl Serialize for WatchEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = &self.0;
        let mut m = s.serialize_map(None)?;
        match &*e.change {
            crate::store::TailChange::Attempt(a) => {
                m.serialize_entry("kind", "attempt")?;
                m.serialize_entry("log", &WebhookLog(&e.log))?;
                m.serialize_entry("attempt", &Attempt(a, &e.log.body))?;
            }
            crate::store::TailChange::Status { reason, .. } => {
                m.serialize_entry("kind", "status")?;
                m.serialize_entry("log", &WebhookLog(&e.log))?;
                m.serialize_entry("reason", reason)?;
            }
        }
        m.serialize_entry("eventTime", &timestamp(e.at))?;
        m.serialize_entry("resumeToken", &e.resume_token)?;
        m.end()
    }
}

/// `hookpost.v1.RedeliverWebhookResponse`.
pub struct RedeliverWebhookResponse(LogRecord);

impl RedeliverWebhookResponse {
    pub fn new(log: LogRecord) -> Self {
        Self(log)
    }
}

impl Serialize for RedeliverWebhookResponse {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("log", &WebhookLog(&self.0))?;
        m.end()
    }
}

struct WebhookLog<'a>(&'a LogRecord);

impl Serialize for WebhookLog<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let l = self.0;
        let last = l.last_attempt.as_ref();
        let mut m = s.serialize_map(None)?;
        if l.log_id != 0 {
            m.serialize_entry("logId", &l.log_id.to_string())?;
        }
        m.serialize_entry("requestId", &l.request_id.to_string())?;
        m.serialize_entry("organizationId", &l.organization_id.to_string())?;
        if let Some(w) = l.workspace_id {
            m.serialize_entry("workspaceId", &w.to_string())?;
        }
        if let Some(w) = l.subscription_id {
            m.serialize_entry("subscriptionId", &w.to_string())?;
        }
        if let Some(c) = l.call_id {
            m.serialize_entry("callId", &c.to_string())?;
        }
        if let Some(a) = l.assistant_id {
            m.serialize_entry("assistantId", &a.to_string())?;
        }
        if !l.webhook_url.is_empty() {
            m.serialize_entry("webhookUrl", &l.webhook_url)?;
        }
        if !l.webhook_type.is_empty() {
            m.serialize_entry("webhookType", &l.webhook_type)?;
        }
        if let Some(payload) = raw_object(&l.body) {
            m.serialize_entry("payload", payload)?;
        }
        if let Some(meta @ serde_json::Value::Object(_)) = &l.metadata {
            m.serialize_entry("metadata", meta)?;
        }
        m.serialize_entry("executionStatus", status_name(l.status))?;
        if l.attempt_count != 0 {
            m.serialize_entry("attemptCount", &l.attempt_count)?;
        }
        if l.max_retries != 0 {
            m.serialize_entry("maxRetries", &l.max_retries)?;
        }
        if let Some(a) = last {
            if let Some(code) = a.status_code {
                m.serialize_entry("httpStatusCode", &code)?;
            }
            m.serialize_entry("responseBody", &a.response_body)?;
            m.serialize_entry("responseTimeMs", &a.response_time_ms.to_string())?;
            if let Some(e) = &a.error_message {
                m.serialize_entry("errorMessage", e)?;
            }
            if let Some(e) = &a.error_category {
                m.serialize_entry("errorCategory", e)?;
            }
            m.serialize_entry("lastAttemptedAt", &timestamp(a.attempted_at))?;
        }
        if let Some(next) = l.next_attempt_at.filter(|_| l.status == ExecutionStatus::Pending) {
            m.serialize_entry("nextAttemptAt", &timestamp(next))?;
        }
        if let Some(t) = l.expires_at {
            m.serialize_entry("expireTime", &timestamp(t))?;
        }
        m.serialize_entry("createdAt", &timestamp(l.created_at))?;
        m.serialize_entry("updatedAt", &timestamp(l.updated_at))?;
        m.serialize_entry("messageId", &l.message_id.to_string())?;
        if let Some(e) = l.endpoint_id {
            m.serialize_entry("endpointId", &e.to_string())?;
        }
        m.end()
    }
}

/// `hookpost.v1.DeliveryAttempt`, with the request's body.
struct Attempt<'a>(&'a AttemptRecord, &'a str);

impl Serialize for Attempt<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (a, request_body) = (self.0, self.1);
        let status = if a.success { ExecutionStatus::Succeeded } else { ExecutionStatus::Failed };
        let mut m = s.serialize_map(None)?;
        if a.attempt_number != 0 {
            m.serialize_entry("attemptNumber", &a.attempt_number)?;
        }
        if let Some(code) = a.status_code {
            m.serialize_entry("httpStatusCode", &code)?;
        }
        m.serialize_entry("executionStatus", status_name(status))?;
        m.serialize_entry("createdAt", &timestamp(a.attempted_at))?;
        if !request_body.is_empty() {
            m.serialize_entry("requestBody", request_body)?;
        }
        if !a.response_body.is_empty() {
            m.serialize_entry("responseBody", &a.response_body)?;
        }
        if a.response_truncated {
            m.serialize_entry("responseTruncated", &true)?;
        }
        if a.response_time_ms != 0 {
            m.serialize_entry("responseTimeMs", &a.response_time_ms.to_string())?;
        }
        if let Some(e) = &a.error_message {
            m.serialize_entry("errorMessage", e)?;
        }
        if let Some(e) = &a.error_category {
            m.serialize_entry("errorCategory", e)?;
        }
        if a.manual {
            m.serialize_entry("manual", &true)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_end_in_z_with_protobufs_fraction_digits() {
        let t = DateTime::parse_from_rfc3339("2026-11-25T12:07:36.826785+00:00").unwrap().to_utc();
        assert_eq!(timestamp(t), "2026-11-25T12:07:36.826785Z");
        let whole = DateTime::parse_from_rfc3339("2026-11-25T12:07:36Z").unwrap().to_utc();
        assert_eq!(timestamp(whole), "2026-11-25T12:07:36Z");
    }

    #[test]
    fn a_stored_object_passes_through_byte_for_byte() {
        let body = r#"{"b":1,"a":[true,null,"x"]}"#;
        assert_eq!(raw_object(body).unwrap().get(), body);
        assert!(raw_object("[1]").is_none());
        assert!(raw_object("{not json").is_none());
    }
}
