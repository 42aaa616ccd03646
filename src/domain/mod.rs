//! Domain types, parsed once at the edge: below the service, an invalid
//! delivery cannot be represented.

pub mod address;
mod endpoint;
pub mod filter;
mod new_delivery;

pub use endpoint::{
    DeliveryPolicy, Endpoint, EndpointFilter, EndpointInput, EndpointSpec, PolicyInput, SignatureScheme,
    UPDATABLE_FIELDS, apply_update, event_type_matches, scheme_not_updatable,
};
pub use filter::{FilterError, FilterExpr};
pub use new_delivery::{
    DispatchInput, Draft, Expiration, Limits, MAX_TTL_STD, MIN_TTL, NewDelivery, Target, WebhookUrl,
};
pub(crate) use new_delivery::{parse_uuid, valid_webhook_type};

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Where a webhook stands in its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExecutionStatus {
    Pending,
    Succeeded,
    Failed,
    /// Waiting for its endpoint to be resumed or re-enabled; never claimed.
    Held,
}

impl ExecutionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Held => "held",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "succeeded" => Some(Self::Succeeded),
            "failed" => Some(Self::Failed),
            "held" => Some(Self::Held),
            _ => None,
        }
    }
}

/// What was stored for a Dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatched {
    pub message_id: Uuid,
    /// The first delivery's request ID and log ID (nil and 0 when no endpoint
    /// subscribed).
    pub request_id: Uuid,
    pub log_id: i64,
    /// Every delivery's request ID.
    pub request_ids: Vec<Uuid>,
    /// The idempotency key had been used: this is the earlier request.
    pub duplicate: bool,
}

impl Dispatched {
    /// A message stored as this one delivery.
    pub fn one(d: &NewDelivery, log_id: i64) -> Self {
        Self {
            message_id: d.message_id,
            request_id: d.request_id,
            log_id,
            request_ids: vec![d.request_id],
            duplicate: false,
        }
    }
}

/// Filters of a log listing; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LogFilter {
    pub organization_id: Option<Uuid>,
    pub workspace_id: Option<Uuid>,
    pub subscription_id: Option<Uuid>,
    pub call_id: Option<i64>,
    pub webhook_type: Option<String>,
    pub status: Option<ExecutionStatus>,
    /// Inclusive lower bound on `created_at`.
    pub created_after: Option<DateTime<Utc>>,
    /// Exclusive upper bound on `created_at`.
    pub created_before: Option<DateTime<Utc>>,
    /// Deliveries to this endpoint.
    pub endpoint_id: Option<Uuid>,
    /// The latest attempt failed with this category (see [`FailureCategory`]).
    pub error_category: Option<String>,
    /// What an AIP-160 `filter` adds beyond the fields above (see
    /// [`LogFilter::narrow`]). Part of the hash that ties page tokens to
    /// their filter.
    pub expr: Option<FilterExpr>,
}

/// A keyset position: logs are ordered by `(created_at, log_id)` descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub log_id: i64,
}

/// One webhook request and the outcome of its latest attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    pub log_id: i64,
    pub request_id: Uuid,
    /// The message it delivers: its `webhook-id` header.
    pub message_id: Uuid,
    pub organization_id: Uuid,
    pub workspace_id: Option<Uuid>,
    pub subscription_id: Option<Uuid>,
    pub call_id: Option<i64>,
    pub assistant_id: Option<i64>,
    pub webhook_url: String,
    pub webhook_type: String,
    /// The exact body sent (a JSON object).
    pub body: String,
    pub metadata: Option<serde_json::Value>,
    pub status: ExecutionStatus,
    pub attempt_count: u32,
    pub max_retries: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When delivery gives up (None: never, short of max_retries).
    pub expires_at: Option<DateTime<Utc>>,
    /// The registered endpoint it goes to, if any.
    pub endpoint_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_attempt: Option<AttemptRecord>,
}

impl LogRecord {
    pub fn cursor(&self) -> Cursor {
        Cursor { created_at: self.created_at, log_id: self.log_id }
    }
}

/// The failure categories an attempt can end with. Stored as their `as_str`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCategory {
    Timeout,
    Connect,
    Dns,
    Tls,
    Redirect,
    Http4xx,
    Http5xx,
    /// Any non-2xx status outside 3xx/4xx/5xx (1xx upgrades and the like).
    HttpOther,
    /// The URL or the request could not be built or sent for another reason.
    Request,
    /// The destination is a private or reserved address and the SSRF guard is on.
    Blocked,
    /// Its deadline (expire_time, ttl) passed before it was delivered: no
    /// request was sent, and none will be.
    Expired,
}

impl FailureCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Dns => "dns",
            Self::Tls => "tls",
            Self::Redirect => "redirect",
            Self::Http4xx => "http_4xx",
            Self::Http5xx => "http_5xx",
            Self::HttpOther => "http_other",
            Self::Request => "request",
            Self::Blocked => "blocked",
            Self::Expired => "expired",
        }
    }
}

/// One recorded delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub attempt_number: u32,
    pub attempted_at: DateTime<Utc>,
    pub success: bool,
    pub status_code: Option<i32>,
    pub response_body: String,
    pub response_truncated: bool,
    pub response_time_ms: i64,
    pub error_category: Option<String>,
    pub error_message: Option<String>,
    /// Made after a manual redelivery or a recovery.
    pub manual: bool,
}

impl AttemptRecord {
    /// The BASIC view (AIP-157): without the response body.
    pub fn strip_bodies(&mut self) {
        self.response_body.clear();
    }

    /// A copy in the BASIC view, made without copying the response body:
    /// equal to a clone after `strip_bodies` (a unit test checks it), so a
    /// new body field is cleared in both.
    pub fn basic_copy(&self) -> Self {
        Self {
            response_body: String::new(),
            error_category: self.error_category.clone(),
            error_message: self.error_message.clone(),
            ..*self
        }
    }
}

impl LogRecord {
    /// The BASIC view (AIP-157): without request and response bodies (the
    /// payload, the metadata, the latest attempt's response).
    pub fn strip_bodies(&mut self) {
        self.body.clear();
        self.metadata = None;
        if let Some(a) = &mut self.last_attempt {
            a.strip_bodies();
        }
    }

    /// A copy in the BASIC view, made without copying the bodies: equal to
    /// a clone after `strip_bodies` (a unit test checks it), so a new body
    /// field is cleared in both.
    pub fn basic_copy(&self) -> Self {
        Self {
            webhook_url: self.webhook_url.clone(),
            webhook_type: self.webhook_type.clone(),
            body: String::new(),
            metadata: None,
            last_attempt: self.last_attempt.as_ref().map(AttemptRecord::basic_copy),
            ..*self
        }
    }
}

/// A due delivery claimed by one worker until `lease_id`'s lease expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedDelivery {
    pub log_id: i64,
    /// The request's creation time (its partition key in the store).
    pub created_at: DateTime<Utc>,
    pub request_id: Uuid,
    pub lease_id: Uuid,
    pub webhook_url: String,
    pub webhook_type: String,
    pub body: String,
    /// Attempts already made; the next one is `attempt_count + 1`.
    pub attempt_count: u32,
    pub max_retries: u32,
    /// Attempts made before the latest manual redelivery (0 without one):
    /// the retry budget and the backoff count from there.
    pub manual_from: u32,
    /// The endpoint is paused or disabled: hold the delivery, don't send it.
    pub hold: bool,
    /// The endpoint's current run of failed attempts.
    pub endpoint_failures: u32,
    /// Not succeeded by then: fails as expired, unsent.
    pub expires_at: Option<DateTime<Utc>>,
    /// The `webhook-id` receivers deduplicate on.
    pub message_id: Uuid,
    pub organization_id: Uuid,
    /// The registered endpoint, when the delivery goes to one; then its
    /// headers and policy as they are now (`None` once it was deleted).
    pub endpoint_id: Option<Uuid>,
    pub endpoint: Option<EndpointSettings>,
    /// The signing secrets (the endpoint's, or the organization's for a bare
    /// URL), still encrypted.
    pub secrets: Option<SealedSecrets>,
    /// The queue it was claimed from (see [`NewDelivery::queue_key`]).
    pub queue_key: String,
}

/// A queue with pending deliveries, as the claimer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueQueue {
    pub key: String,
    /// Its oldest pending delivery is due now (it may be in flight).
    pub due: bool,
    /// The endpoint's caps, when the queue is an endpoint's and sets them.
    pub max_in_flight: Option<u32>,
    pub rate_limit_per_second: Option<u32>,
}

/// What an endpoint adds to each of its deliveries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointSettings {
    pub headers: std::collections::BTreeMap<String, String>,
    pub policy: DeliveryPolicy,
}

/// Signing secrets as stored (encrypted): the current one, and the previous
/// one with the time it stops signing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecrets {
    pub current: Vec<u8>,
    pub previous: Option<(Vec<u8>, DateTime<Utc>)>,
}

/// What becomes of a request after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    Succeeded,
    Failed,
    /// Due again this long after the attempt is recorded. A delay, not a
    /// time: the store adds it to its own clock, the one due times are
    /// compared with.
    RetryAfter(std::time::Duration),
}

/// What a purge removed, or would remove with `--dry-run`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Whole days removed (or removable), as `YYYY-MM-DD`.
    pub days: Vec<String>,
    pub requests: u64,
    pub attempts: u64,
    /// Expired days kept because a delivery in them is still pending.
    pub kept_pending: Vec<String>,
    /// Logs created before this (by the store's clock) were expired.
    pub cutoff: Option<DateTime<Utc>>,
    /// Partitions whose detach failed: left attached, retried next run.
    pub left_attached: Vec<String>,
    /// Nothing was done: another process holds the maintenance turn.
    pub skipped: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_basic_copy_is_the_record_with_its_bodies_stripped() {
        let at = Utc::now();
        let attempt = AttemptRecord {
            attempt_number: 2,
            attempted_at: at,
            success: false,
            status_code: Some(503),
            response_body: "busy".into(),
            response_truncated: true,
            response_time_ms: 12,
            error_category: Some("http_5xx".into()),
            error_message: Some("503 Service Unavailable".into()),
            manual: true,
        };
        let log = LogRecord {
            log_id: 7,
            request_id: Uuid::new_v4(),
            message_id: Uuid::new_v4(),
            organization_id: Uuid::new_v4(),
            workspace_id: Some(Uuid::new_v4()),
            subscription_id: None,
            call_id: Some(3),
            assistant_id: Some(4),
            webhook_url: "http://127.0.0.1:9/hook".into(),
            webhook_type: "call_ended".into(),
            body: r#"{"a":1}"#.into(),
            metadata: Some(serde_json::json!({"m": true})),
            status: ExecutionStatus::Pending,
            attempt_count: 2,
            max_retries: 5,
            next_attempt_at: Some(at),
            expires_at: None,
            endpoint_id: Some(Uuid::new_v4()),
            created_at: at,
            updated_at: at,
            last_attempt: Some(attempt.clone()),
        };
        let mut stripped = log.clone();
        stripped.strip_bodies();
        assert_eq!(log.basic_copy(), stripped);
        let mut stripped = attempt.clone();
        stripped.strip_bodies();
        assert_eq!(attempt.basic_copy(), stripped);
    }
}
