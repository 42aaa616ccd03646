//! Parsing a Dispatch into a [`NewDelivery`]: every field checked once, every
//! violation reported by field name.

use uuid::Uuid;

use super::address::is_blocked;
use crate::error::{Error, FieldViolation, Result};

/// Size limits on what a caller may store. Each is a server option.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_metadata_bytes: usize,
    pub max_url_len: usize,
    pub max_webhook_type_len: usize,
    pub max_idempotency_key_len: usize,
    /// Upper bound on a request's `max_retries`.
    pub max_retries: u32,
    /// Lifts the SSRF guard (local development and tests only).
    pub allow_private_targets: bool,
    /// Endpoints one organization may register.
    pub max_endpoints_per_organization: u32,
    /// WatchWebhookLogs streams one API key may hold open at once.
    pub max_watch_streams_per_key: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 256 * 1024,
            max_metadata_bytes: 16 * 1024,
            max_url_len: 2048,
            max_webhook_type_len: 128,
            max_idempotency_key_len: 255,
            max_retries: 50,
            allow_private_targets: false,
            max_endpoints_per_organization: 1000,
            max_watch_streams_per_key: 16,
        }
    }
}

/// A Dispatch as the transports hand it to the service, not yet validated.
#[derive(Debug, Clone, Default)]
pub struct DispatchInput {
    pub organization_id: String,
    pub workspace_id: Option<String>,
    pub subscription_id: Option<String>,
    pub call_id: Option<i64>,
    pub assistant_id: Option<i64>,
    pub webhook_url: String,
    pub webhook_type: String,
    pub payload: Option<serde_json::Map<String, serde_json::Value>>,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    pub idempotency_key: String,
    pub max_retries: Option<u32>,
    /// A registered endpoint to deliver to, instead of `webhook_url`.
    pub endpoint_id: String,
    /// When delivery gives up, if the caller says (a deadline or a time to
    /// live; `Err` for a duration that is not one).
    pub expiration: Option<Expiration<std::result::Result<std::time::Duration, ()>>>,
}

/// An absolute `http`/`https` URL with a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(url::Url);

impl WebhookUrl {
    pub fn parse(raw: &str, max_len: usize, allow_private: bool) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("is required".into());
        }
        if raw.len() > max_len {
            return Err(format!("must be at most {max_len} bytes"));
        }
        let url = url::Url::parse(raw).map_err(|e| format!("is not a valid URL ({e})"))?;
        // The limit is on what is stored and sent: normalising percent-encodes
        // (one `é` becomes six bytes), so the parsed form is checked too.
        if url.as_str().len() > max_len {
            return Err(format!("must be at most {max_len} bytes once normalised, is {}", url.as_str().len()));
        }
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("scheme must be http or https, not {:?}", url.scheme()));
        }
        let blocked = match url.host() {
            None => return Err("must name a host".into()),
            Some(url::Host::Ipv4(ip)) => is_blocked(ip.into()),
            Some(url::Host::Ipv6(ip)) => is_blocked(ip.into()),
            // A name is checked where it matters, on the addresses it resolves
            // to at connect time (so DNS rebinding cannot slip through).
            Some(url::Host::Domain(_)) => false,
        };
        if blocked && !allow_private {
            return Err("points to a private or reserved address, which is not allowed".into());
        }
        Ok(Self(url))
    }

    pub fn as_url(&self) -> &url::Url {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// A new message or request ID: a UUIDv7, whose first 48 bits are the time
/// in milliseconds. These IDs key B-tree indexes (the request ID's, the
/// message ID's, the message table's primary key). Random (v4) IDs sent
/// every insert to a random leaf page: once a day's partition outgrew
/// Postgres's shared buffers, each Dispatch read and dirtied pages all over
/// those indexes, and wrote each again in full after every checkpoint. The
/// bench's growth scenario fell from 16.7k to 9.7k Dispatches/s within two
/// minutes (1.45M rows; docs/PERFORMANCE.md). Time-ordered IDs append at
/// the indexes' right edge. The time an ID carries is shown with its log
/// anyway (created_at).
pub fn new_id() -> Uuid {
    Uuid::now_v7()
}

/// Where a Dispatch goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A URL given in the request (the seed-000 style of caller).
    Url(WebhookUrl),
    /// One registered endpoint.
    Endpoint(Uuid),
    /// Every enabled endpoint whose event types match.
    Subscribers,
}

/// A validated Dispatch: the message, and where it goes. Each delivery is
/// made from it by [`Draft::delivery`].
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub message_id: Uuid,
    pub organization_id: Uuid,
    pub workspace_id: Option<Uuid>,
    pub subscription_id: Option<Uuid>,
    pub call_id: Option<i64>,
    pub assistant_id: Option<i64>,
    pub webhook_type: String,
    pub body: String,
    pub metadata: Option<serde_json::Value>,
    pub idempotency_key: Option<String>,
    /// Given in the request; else the endpoint's policy, else the default.
    pub max_retries: Option<u32>,
    /// The request's own deadline, if it gave one.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub target: Target,
}

/// A deadline as a request gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiration<D> {
    At(chrono::DateTime<chrono::Utc>),
    After(D),
}

/// Bounds of a time to live (a request's, or an endpoint policy's).
pub const MIN_TTL: std::time::Duration = std::time::Duration::from_secs(1);
pub const MAX_TTL_STD: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);
const MAX_TTL: chrono::TimeDelta = chrono::TimeDelta::days(365);

impl Draft {
    /// One delivery of this message to `url` (an endpoint's, when
    /// `endpoint_id` is set).
    pub fn delivery(&self, url: WebhookUrl, endpoint_id: Option<Uuid>, max_retries: u32) -> NewDelivery {
        NewDelivery {
            // A message sent to a URL of its own has one delivery, whose
            // request ID is the message ID: `webhook-id` stays the request ID
            // that callers of the URL style have always seen.
            request_id: match self.target {
                Target::Url(_) => self.message_id,
                _ => new_id(),
            },
            message_id: self.message_id,
            endpoint_id,
            organization_id: self.organization_id,
            workspace_id: self.workspace_id,
            subscription_id: self.subscription_id.or(endpoint_id),
            call_id: self.call_id,
            assistant_id: self.assistant_id,
            webhook_url: url,
            webhook_type: self.webhook_type.clone(),
            body: self.body.clone(),
            metadata: self.metadata.clone(),
            idempotency_key: self.idempotency_key.clone(),
            max_retries,
            held: false,
            expires_at: self.expires_at,
        }
    }

    /// The message's only delivery: as [`Self::delivery`], but the body (up
    /// to the payload limit) moves into it instead of being copied.
    pub fn into_delivery(mut self, url: WebhookUrl, endpoint_id: Option<Uuid>, max_retries: u32) -> NewDelivery {
        let body = std::mem::take(&mut self.body);
        NewDelivery { body, ..self.delivery(url, endpoint_id, max_retries) }
    }
}

/// A validated webhook, ready to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    pub request_id: Uuid,
    /// Shared by every delivery of one Dispatch; the `webhook-id` header.
    pub message_id: Uuid,
    /// The registered endpoint this delivery goes to, if any.
    pub endpoint_id: Option<Uuid>,
    pub organization_id: Uuid,
    pub workspace_id: Option<Uuid>,
    pub subscription_id: Option<Uuid>,
    pub call_id: Option<i64>,
    pub assistant_id: Option<i64>,
    pub webhook_url: WebhookUrl,
    pub webhook_type: String,
    /// The exact JSON bytes that every attempt POSTs.
    pub body: String,
    pub metadata: Option<serde_json::Value>,
    pub idempotency_key: Option<String>,
    pub max_retries: u32,
    /// Its endpoint is paused or disabled: stored held, sent once it is
    /// resumed or re-enabled.
    pub held: bool,
    /// Not succeeded by then: fails with the category "expired".
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl NewDelivery {
    /// The queue this delivery waits in: its endpoint's, or its host's for a
    /// bare URL. Caps, rate limits and round-robin apply per queue.
    pub fn queue_key(&self) -> String {
        queue_key(self.endpoint_id, &self.webhook_url)
    }
}

/// See [`NewDelivery::queue_key`].
pub fn queue_key(endpoint_id: Option<Uuid>, url: &WebhookUrl) -> String {
    match endpoint_id {
        Some(e) => format!("e:{e}"),
        None => {
            let u = url.as_url();
            format!("h:{}:{}", u.host_str().unwrap_or_default(), u.port_or_known_default().unwrap_or(0))
        }
    }
}

/// Parses an optional UUID field, recording a violation when it is malformed.
pub(crate) fn parse_uuid(field: &str, raw: &str, violations: &mut Vec<FieldViolation>) -> Option<Uuid> {
    match Uuid::parse_str(raw) {
        Ok(id) => Some(id),
        Err(_) => {
            violations.push(FieldViolation { field: field.into(), description: "must be a UUID".into() });
            None
        }
    }
}

pub(crate) fn valid_webhook_type(t: &str) -> bool {
    t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

impl NewDelivery {
    /// A Dispatch to a URL, validated (every violation reported at once).
    pub fn parse(input: DispatchInput, limits: &Limits, default_max_retries: u32) -> Result<Self> {
        if input.webhook_url.is_empty() {
            return Err(Error::invalid("webhook_url", "is required"));
        }
        let draft = Draft::parse(input, limits)?;
        match draft.target.clone() {
            Target::Url(url) => {
                let max_retries = draft.max_retries.unwrap_or(default_max_retries);
                Ok(draft.into_delivery(url, None, max_retries))
            }
            _ => Err(Error::invalid("webhook_url", "is required")),
        }
    }
}

impl Draft {
    /// Validates every field and reports all violations at once.
    pub fn parse(input: DispatchInput, limits: &Limits) -> Result<Self> {
        let mut v = Vec::new();
        let mut violation =
            |field: &str, description: String| v.push(FieldViolation { field: field.into(), description });

        if input.organization_id.is_empty() {
            violation("organization_id", "is required".into());
        }
        let target = match (input.webhook_url.is_empty(), input.endpoint_id.is_empty()) {
            (false, false) => {
                violation("endpoint_id", "give either webhook_url or endpoint_id, not both".into());
                None
            }
            (false, true) => WebhookUrl::parse(&input.webhook_url, limits.max_url_len, limits.allow_private_targets)
                .map_err(|e| violation("webhook_url", e))
                .ok()
                .map(Target::Url),
            (true, false) => match Uuid::parse_str(&input.endpoint_id) {
                Ok(id) => Some(Target::Endpoint(id)),
                Err(_) => {
                    violation("endpoint_id", "must be a UUID".into());
                    None
                }
            },
            (true, true) => Some(Target::Subscribers),
        };
        if input.webhook_type.is_empty() {
            violation("webhook_type", "is required".into());
        } else if input.webhook_type.len() > limits.max_webhook_type_len {
            violation("webhook_type", format!("must be at most {} bytes", limits.max_webhook_type_len));
        } else if !valid_webhook_type(&input.webhook_type) {
            violation("webhook_type", "may contain only letters, digits and \"._:-\"".into());
        }
        // Stored as the exact bytes every attempt will send.
        let body = serde_json::Value::Object(input.payload.unwrap_or_default()).to_string();
        if body.len() > limits.max_payload_bytes {
            violation(
                "payload",
                format!("must be at most {} bytes as JSON, is {}", limits.max_payload_bytes, body.len()),
            );
        }
        let metadata = input.metadata.map(serde_json::Value::Object);
        if let Some(m) = &metadata {
            let text = m.to_string();
            if text.len() > limits.max_metadata_bytes {
                let max = limits.max_metadata_bytes;
                violation("metadata", format!("must be at most {max} bytes as JSON, is {}", text.len()));
            } else if text.contains("\\u0000") {
                // Stored as JSON that Postgres (jsonb) cannot hold.
                violation("metadata", "must not contain NUL characters".into());
            }
        }
        if input.idempotency_key.len() > limits.max_idempotency_key_len {
            violation("idempotency_key", format!("must be at most {} bytes", limits.max_idempotency_key_len));
        } else if input.idempotency_key.contains('\0') {
            violation("idempotency_key", "must not contain NUL characters".into());
        }
        let max_retries = input.max_retries;
        if max_retries.is_some_and(|m| m > limits.max_retries) {
            violation("max_retries", format!("must be at most {}", limits.max_retries));
        }
        let now = chrono::Utc::now();
        let expires_at = match input.expiration {
            None => None,
            Some(Expiration::At(t)) if t > now && t <= now + MAX_TTL => Some(t),
            Some(Expiration::At(_)) => {
                violation("expire_time", "must be in the future, at most 365 days ahead".into());
                None
            }
            Some(Expiration::After(Ok(d))) if (MIN_TTL..=MAX_TTL_STD).contains(&d) => {
                chrono::TimeDelta::from_std(d).ok().map(|d| now + d)
            }
            Some(Expiration::After(_)) => {
                violation("ttl", "must be from 1s to 365 days".into());
                None
            }
        };

        let organization_id = if input.organization_id.is_empty() {
            None
        } else {
            parse_uuid("organization_id", &input.organization_id, &mut v)
        };
        let workspace_id = input.workspace_id.as_deref().and_then(|s| parse_uuid("workspace_id", s, &mut v));
        let subscription_id = input.subscription_id.as_deref().and_then(|s| parse_uuid("subscription_id", s, &mut v));

        match (organization_id, target) {
            (Some(organization_id), Some(target)) if v.is_empty() => Ok(Self {
                message_id: new_id(),
                organization_id,
                workspace_id,
                subscription_id,
                call_id: input.call_id,
                assistant_id: input.assistant_id,
                webhook_type: input.webhook_type,
                body,
                metadata,
                idempotency_key: Some(input.idempotency_key).filter(|k| !k.is_empty()),
                max_retries,
                expires_at,
                target,
            }),
            _ => Err(Error::invalid_fields(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_sort_in_the_order_they_were_made() {
        // What keeps index inserts at the right edge: each ID sorts after
        // the last, also within one millisecond, and all are distinct.
        let ids: Vec<Uuid> = (0..10_000).map(|_| new_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(ids[0].get_version_num(), 7);
        let (secs, _) = ids[0].get_timestamp().map(|t| t.to_unix()).unwrap_or_default();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        assert!(now.as_secs().abs_diff(secs) < 60, "{secs} s vs {now:?}");
    }

    #[test]
    fn the_url_limit_applies_to_the_normalised_url() {
        // 1,000 bytes as written, 3,000 once each `é` is percent-encoded.
        let raw = format!("http://127.0.0.1/{}", "é".repeat(500));
        assert!(raw.len() < 2048);
        let err = WebhookUrl::parse(&raw, 2048, true).unwrap_err();
        assert!(err.contains("once normalised"), "{err}");
        assert!(WebhookUrl::parse("http://127.0.0.1/é", 2048, true).is_ok());
    }

    fn input() -> DispatchInput {
        DispatchInput {
            organization_id: Uuid::new_v4().to_string(),
            webhook_url: "https://example.com/hook".into(),
            webhook_type: "call_started".into(),
            ..Default::default()
        }
    }

    fn fields(err: Error) -> Vec<String> {
        err.violations.into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn a_minimal_dispatch_parses_with_an_empty_object_body() {
        let d = NewDelivery::parse(input(), &Limits::default(), 3).unwrap();
        assert_eq!(d.body, "{}");
        assert_eq!(d.max_retries, 3);
        assert_eq!(d.idempotency_key, None);
    }

    #[test]
    fn every_bad_field_is_named() {
        let bad = DispatchInput {
            organization_id: "nope".into(),
            workspace_id: Some("x".into()),
            subscription_id: Some("y".into()),
            webhook_url: "ftp://example.com".into(),
            webhook_type: "has space".into(),
            idempotency_key: "k".repeat(256),
            max_retries: Some(51),
            ..Default::default()
        };
        let mut got = fields(NewDelivery::parse(bad, &Limits::default(), 3).unwrap_err());
        got.sort();
        assert_eq!(
            got,
            [
                "idempotency_key",
                "max_retries",
                "organization_id",
                "subscription_id",
                "webhook_type",
                "webhook_url",
                "workspace_id"
            ]
        );
    }

    #[test]
    fn payload_limit_is_exclusive_of_one_byte_more() {
        let limits = Limits { max_payload_bytes: 20, ..Limits::default() };
        let mut just_under = input();
        // {"k":"123456789012"} is exactly 20 bytes.
        just_under.payload = Some(serde_json::from_str(r#"{"k":"123456789012"}"#).unwrap());
        assert!(NewDelivery::parse(just_under, &limits, 3).is_ok());
        let mut over = input();
        over.payload = Some(serde_json::from_str(r#"{"k":"1234567890123"}"#).unwrap());
        assert_eq!(fields(NewDelivery::parse(over, &limits, 3).unwrap_err()), ["payload"]);
    }

    #[test]
    fn urls_need_an_http_scheme_and_a_host() {
        for bad in ["", "not a url", "file:///etc/passwd", "ftp://x.org/", "http://"] {
            assert!(WebhookUrl::parse(bad, 2048, true).is_err(), "{bad}");
        }
        assert!(WebhookUrl::parse("https://example.com/x?y=1", 2048, false).is_ok());
    }

    #[test]
    fn literal_private_urls_are_refused_unless_allowed() {
        for bad in [
            "http://127.0.0.1/",
            "http://127.1.2.3:8080/x",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://0.0.0.0/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.1.2.3/",
        ] {
            let err = WebhookUrl::parse(bad, 2048, false).unwrap_err();
            assert!(err.contains("private"), "{bad}: {err}");
            assert!(WebhookUrl::parse(bad, 2048, true).is_ok(), "{bad}");
        }
    }

    #[test]
    fn url_length_limit_is_inclusive() {
        let at = format!("https://example.com/{}", "a".repeat(100 - 20));
        assert_eq!(at.len(), 100);
        assert!(WebhookUrl::parse(&at, 100, false).is_ok());
        assert!(WebhookUrl::parse(&format!("{at}b"), 100, false).is_err());
    }
}
