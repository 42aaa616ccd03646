//! One POST of a webhook, and its outcome in the terms the log keeps.

use std::error::Error as _;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};

use super::retry::parse_retry_after;
use super::ssrf::{BlockedAddress, GuardedResolver, blocked_literal};
use crate::domain::{ClaimedDelivery, FailureCategory};

/// Response bytes kept in the log.
pub const KEPT_BODY_BYTES: usize = 10 * 1024;

/// Longest error message kept: messages quote what receivers send (a
/// `Location`, an error chain), and a receiver must not decide how much we
/// store or show.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

/// What a tenant is told when the SSRF guard refuses a destination: how the
/// name resolved is about our network, not theirs, and stays in our log.
pub const BLOCKED_MESSAGE: &str = "address not allowed";

/// `s` cut to at most `max` bytes on a character boundary, with `…` marking
/// the cut.
pub fn bounded(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    const MARK: &str = "…";
    let mut end = max.saturating_sub(MARK.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    if max >= MARK.len() {
        s.push_str(MARK);
    }
    s
}

/// The shared HTTP client and the limits of one attempt.
#[derive(Clone)]
/// How one attempt is signed and bounded.
pub struct Signing {
    /// Secrets that sign it (two during a rotation); none leaves it unsigned.
    pub secrets: Vec<super::sign::Secret>,
    /// The whole attempt's time limit.
    pub timeout: std::time::Duration,
}

pub struct HttpDeliverer {
    client: reqwest::Client,
    /// Response bytes read (and discarded past [`KEPT_BODY_BYTES`]) before the
    /// connection is dropped, so a receiver cannot make us read forever.
    max_read_bytes: usize,
    /// False unless `--allow-private-targets`: the SSRF guard is on.
    allow_private: bool,
}

/// What one attempt produced.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub attempted_at: DateTime<Utc>,
    pub status: Option<u16>,
    pub response_body: String,
    pub response_truncated: bool,
    pub response_time_ms: i64,
    /// `None` on success.
    pub category: Option<FailureCategory>,
    pub error_message: Option<String>,
    pub retry_after: Option<Duration>,
}

impl AttemptResult {
    /// An attempt that could not be made at all, for `reason`: nothing is
    /// sent, and it is not retried.
    pub fn refused(reason: String) -> Self {
        Self {
            attempted_at: Utc::now(),
            status: None,
            response_body: String::new(),
            response_truncated: false,
            response_time_ms: 0,
            category: Some(FailureCategory::Request),
            error_message: Some(reason),
            retry_after: None,
        }
    }

    /// Its deadline passed first: nothing is sent.
    pub fn expired(at: chrono::DateTime<Utc>) -> Self {
        Self {
            category: Some(FailureCategory::Expired),
            error_message: Some(format!("expired at {} before it was delivered; not sent", at.to_rfc3339())),
            ..Self::refused(String::new())
        }
    }

    pub fn success(&self) -> bool {
        self.category.is_none()
    }
}

impl HttpDeliverer {
    pub fn new(
        attempt_timeout: Duration,
        connect_timeout: Duration,
        max_read_bytes: usize,
        allow_private: bool,
    ) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("hookpost/", env!("CARGO_PKG_VERSION")))
            // A 3xx is the receiver's answer, recorded as a failed attempt;
            // following it could lead anywhere.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(connect_timeout)
            .timeout(attempt_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            // A proxy would resolve names itself, out of the guard's sight.
            .no_proxy();
        if !allow_private {
            builder = builder.dns_resolver(std::sync::Arc::new(GuardedResolver));
        }
        Ok(Self { client: builder.build()?, max_read_bytes, allow_private })
    }

    #[tracing::instrument(skip_all, fields(request_id = %d.request_id, attempt = d.attempt_count + 1))]
    pub async fn attempt(&self, d: &ClaimedDelivery, signing: &Signing) -> AttemptResult {
        let attempted_at = Utc::now();
        let started = Instant::now();
        let mut result = AttemptResult {
            attempted_at,
            status: None,
            response_body: String::new(),
            response_truncated: false,
            response_time_ms: 0,
            category: None,
            error_message: None,
            retry_after: None,
        };
        if !self.allow_private
            && let Some(ip) = blocked_literal(&d.webhook_url)
        {
            tracing::warn!(%ip, "delivery refused: a private or reserved address");
            result.category = Some(FailureCategory::Blocked);
            result.error_message = Some(BLOCKED_MESSAGE.into());
            return result;
        }
        let mut request = self.client.post(&d.webhook_url).timeout(signing.timeout);
        // The endpoint's own headers first: hookpost's below cannot be
        // overridden (and registration refuses webhook-* and hop-by-hop ones).
        if let Some(endpoint) = &d.endpoint {
            for (name, value) in &endpoint.headers {
                request = request.header(name, value);
            }
        }
        let timestamp = attempted_at.timestamp();
        let message_id = d.message_id.to_string();
        let mut request = request
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            // Standard Webhooks: webhook-id is the message, the same for every
            // endpoint and retry, so receivers can deduplicate on it.
            .header(super::sign::HEADER_ID, &message_id)
            .header(super::sign::HEADER_TIMESTAMP, timestamp.to_string())
            .header("x-hookpost-request-id", d.request_id.to_string())
            .header("x-hookpost-event", &d.webhook_type)
            .header("x-hookpost-attempt", (d.attempt_count + 1).to_string());
        if !signing.secrets.is_empty() {
            let secrets: Vec<&super::sign::Secret> = signing.secrets.iter().collect();
            let signature = super::sign::sign(&message_id, timestamp, d.body.as_bytes(), &secrets);
            request = request.header(super::sign::HEADER_SIGNATURE, signature);
        }
        let request = request.body(d.body.clone());
        match request.send().await {
            Err(err) => {
                let (category, message) = classify(&err);
                result.category = Some(category);
                result.error_message = Some(if category == FailureCategory::Blocked {
                    tracing::warn!(detail = %message, "delivery refused by the SSRF guard");
                    BLOCKED_MESSAGE.into()
                } else {
                    message
                });
            }
            Ok(mut response) => {
                let status = response.status();
                result.status = Some(status.as_u16());
                result.retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                let mut kept = Vec::new();
                let mut read = 0usize;
                let mut body_err = None;
                loop {
                    match response.chunk().await {
                        Ok(Some(chunk)) => {
                            read += chunk.len();
                            let room = KEPT_BODY_BYTES.saturating_sub(kept.len());
                            kept.extend_from_slice(&chunk[..room.min(chunk.len())]);
                            if chunk.len() > room {
                                result.response_truncated = true;
                            }
                            if read > self.max_read_bytes {
                                // Dropping the response closes the connection.
                                result.response_truncated = true;
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(err) => {
                            result.response_truncated = true;
                            body_err = Some(format!("reading the response body failed: {}", chain(&err)));
                            break;
                        }
                    }
                }
                result.response_body = String::from_utf8_lossy(&kept).into_owned();
                // The status decides the outcome, as Svix and Standard Webhooks
                // do: a 2xx means the receiver took the webhook, so it is
                // delivered, and a success carries no error message (a body cut
                // short is only `response_truncated`, the cause is in our log).
                // Retrying would deliver it twice.
                if status.is_success()
                    && let Some(body_err) = &body_err
                {
                    tracing::info!(error = %body_err, "a 2xx answer's body could not be read; delivered all the same");
                }
                if !status.is_success() {
                    let category = match status.as_u16() {
                        300..=399 => FailureCategory::Redirect,
                        400..=499 => FailureCategory::Http4xx,
                        500..=599 => FailureCategory::Http5xx,
                        _ => FailureCategory::HttpOther,
                    };
                    result.category = Some(category);
                    let mut message = format!("receiver answered HTTP {status}");
                    let location = response.headers().get("location").and_then(|v| v.to_str().ok());
                    if let (FailureCategory::Redirect, Some(loc)) = (category, location) {
                        // Bounded here too, so the note after it survives.
                        let loc = bounded(loc.to_owned(), MAX_ERROR_MESSAGE_BYTES / 2);
                        message.push_str(&format!(" to {loc} (redirects are not followed)"));
                    }
                    result.error_message = Some(match body_err {
                        Some(body_err) => format!("{message}; {body_err}"),
                        None => message,
                    });
                }
            }
        }
        result.response_time_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        result.error_message = result.error_message.map(|m| bounded(m, MAX_ERROR_MESSAGE_BYTES));
        result
    }
}

/// The error and its causes on one line; reqwest's own message alone is vague.
fn chain(err: &reqwest::Error) -> String {
    let mut s = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        s.push_str(": ");
        s.push_str(&e.to_string());
        source = e.source();
    }
    s
}

/// Maps a transport failure to a category. reqwest exposes timeouts and
/// connect failures as kinds; TLS is found by type in the cause chain; DNS
/// failures are only recognisable by hyper-util's "dns error" wording.
fn classify(err: &reqwest::Error) -> (FailureCategory, String) {
    let message = chain(err);
    let (mut tls, mut blocked) = (false, false);
    let mut source = err.source();
    while let Some(e) = source {
        tls |= e.downcast_ref::<rustls::Error>().is_some();
        blocked |= e.downcast_ref::<BlockedAddress>().is_some();
        source = e.source();
    }
    let category = if blocked {
        FailureCategory::Blocked
    } else if err.is_timeout() {
        FailureCategory::Timeout
    } else if tls {
        FailureCategory::Tls
    } else if err.is_connect() && message.contains("dns error") {
        FailureCategory::Dns
    } else if err.is_connect() {
        FailureCategory::Connect
    } else if err.is_builder() {
        FailureCategory::Request
    } else {
        // The connection broke before a response (reset, closed, protocol error).
        FailureCategory::Connect
    };
    (category, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_character_boundary_and_marked() {
        let cut = bounded("é".repeat(1000), 1024);
        assert!(cut.len() <= 1024, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.trim_end_matches('…').chars().all(|c| c == 'é'));
        assert_eq!(bounded("short".into(), 1024), "short");
        assert_eq!(bounded("x".repeat(1024), 1024).len(), 1024, "exactly the limit is kept whole");
        assert!(bounded("abcdef".into(), 2).len() <= 2);
    }
}
