//! Retries as data: whether an outcome is retried and how long to wait are pure
//! functions of the outcome, the attempt number and the policy.

use std::time::{Duration, SystemTime};

use crate::domain::FailureCategory;

/// Server-wide backoff settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the first retry (before jitter).
    pub base: Duration,
    /// Cap on any computed delay.
    pub max: Duration,
    /// Cap on a receiver's `Retry-After`, so a receiver cannot park a webhook
    /// for days.
    pub retry_after_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(10),
            max: Duration::from_secs(3600),
            retry_after_max: Duration::from_secs(3600),
        }
    }
}

impl RetryPolicy {
    /// Delay after failed attempt number `attempt` (1-based): exponential
    /// (`base · 2^(attempt-1)`, capped at `max`) with "equal jitter" (half
    /// fixed, half random, `jitter` in [0, 1)) so that retries of many webhooks
    /// spread out but never collapse to zero. A receiver's `Retry-After`
    /// (clamped to `retry_after_max`) is a floor.
    pub fn next_delay(&self, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(31);
        let backoff = self.base.checked_mul(1u32 << exp).unwrap_or(self.max).min(self.max);
        let jitter = jitter.clamp(0.0, 1.0);
        let delay = backoff / 2 + backoff.div_f64(2.0).mul_f64(jitter);
        match retry_after {
            Some(ra) => delay.max(ra.min(self.retry_after_max)),
            None => delay,
        }
    }
}

/// The delay before retry number `attempt` (1 for the first retry) from an
/// endpoint's own schedule: its entries in order, the last one repeating; a
/// receiver's `Retry-After` (clamped) still wins when it asks for longer.
pub fn scheduled_delay(
    schedule: &[Duration],
    attempt: u32,
    retry_after: Option<Duration>,
    retry_after_max: Duration,
) -> Option<Duration> {
    let last = schedule.len().checked_sub(1)?;
    let delay = schedule[(attempt.saturating_sub(1) as usize).min(last)];
    Some(match retry_after {
        Some(ra) => delay.max(ra.min(retry_after_max)),
        None => delay,
    })
}

impl RetryPolicy {
    /// The longest a delivery can stay pending: each of its `max_retries + 1`
    /// attempts may hold its claim for a whole `lease`, and each retry may
    /// wait the longest delay there is (the backoff cap, or a receiver's
    /// clamped `Retry-After` when that is longer). Saturates rather than
    /// overflows.
    pub fn horizon(&self, max_retries: u32, lease: Duration) -> Duration {
        let wait = self.max.max(self.retry_after_max);
        wait.saturating_mul(max_retries).saturating_add(lease.saturating_mul(max_retries.saturating_add(1)))
    }
}

/// Whether a failed attempt is worth repeating: connection trouble, timeouts,
/// 408, 425, 429 and 5xx are; other statuses (4xx, 3xx) are the receiver's
/// final answer.
pub fn is_retryable(status: Option<u16>, category: Option<FailureCategory>) -> bool {
    match status {
        Some(code) => matches!(code, 408 | 425 | 429) || (500..600).contains(&code),
        None => {
            !matches!(category, Some(FailureCategory::Request | FailureCategory::Blocked | FailureCategory::Expired))
        }
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP-date (relative to
/// `now`). A date in the past means "now".
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_schedule_is_followed_and_its_last_delay_repeats() {
        let s = [Duration::from_secs(5), Duration::from_secs(60)];
        let max = Duration::from_secs(3600);
        assert_eq!(scheduled_delay(&s, 1, None, max), Some(Duration::from_secs(5)));
        assert_eq!(scheduled_delay(&s, 2, None, max), Some(Duration::from_secs(60)));
        assert_eq!(scheduled_delay(&s, 9, None, max), Some(Duration::from_secs(60)));
        assert_eq!(scheduled_delay(&s, 1, Some(Duration::from_secs(30)), max), Some(Duration::from_secs(30)));
        assert_eq!(scheduled_delay(&s, 1, Some(Duration::from_secs(99_999)), max), Some(max));
        assert_eq!(scheduled_delay(&[], 1, None, max), None);
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn policy() -> RetryPolicy {
        RetryPolicy { base: S(10), max: S(100), retry_after_max: S(60) }
    }

    #[test]
    fn delays_double_per_attempt_and_stay_within_the_jitter_band() {
        let p = policy();
        assert_eq!(p.next_delay(1, None, 0.0), S(5));
        assert_eq!(p.next_delay(1, None, 0.999_999).as_secs(), 9);
        assert_eq!(p.next_delay(2, None, 0.0), S(10));
        assert_eq!(p.next_delay(3, None, 0.0), S(20));
        assert_eq!(p.next_delay(3, None, 0.5), S(30));
    }

    #[test]
    fn delays_are_capped_and_never_overflow() {
        let p = policy();
        assert_eq!(p.next_delay(5, None, 0.0), S(50));
        assert_eq!(p.next_delay(6, None, 0.99).max(S(100)), S(100));
        assert!(p.next_delay(u32::MAX, None, 1.0) <= S(100));
        assert_eq!(p.next_delay(0, None, 0.0), S(5));
    }

    #[test]
    fn retry_after_is_a_floor_clamped_to_its_maximum() {
        let p = policy();
        assert_eq!(p.next_delay(1, Some(S(2)), 0.0), S(5));
        assert_eq!(p.next_delay(1, Some(S(42)), 0.0), S(42));
        assert_eq!(p.next_delay(1, Some(S(86_400)), 0.0), S(60));
    }

    #[test]
    fn the_horizon_covers_every_retry_and_every_attempt() {
        let p = policy(); // backoff cap 100 s, Retry-After cap 60 s
        assert_eq!(p.horizon(3, S(25)), S(3 * 100 + 4 * 25));
        let long_retry_after = RetryPolicy { retry_after_max: S(1000), ..p };
        assert_eq!(long_retry_after.horizon(3, S(25)), S(3 * 1000 + 4 * 25));
        assert_eq!(p.horizon(0, S(25)), S(25));
        assert_eq!(p.horizon(u32::MAX, Duration::MAX), Duration::MAX);
    }

    #[test]
    fn only_transient_failures_are_retried() {
        for code in [408, 425, 429, 500, 502, 503, 504, 599] {
            assert!(is_retryable(Some(code), Some(FailureCategory::Http5xx)), "{code}");
        }
        for code in [300, 301, 302, 400, 401, 403, 404, 410, 422] {
            assert!(!is_retryable(Some(code), Some(FailureCategory::Http4xx)), "{code}");
        }
        for cat in [FailureCategory::Timeout, FailureCategory::Connect, FailureCategory::Dns, FailureCategory::Tls] {
            assert!(is_retryable(None, Some(cat)));
        }
        assert!(!is_retryable(None, Some(FailureCategory::Request)));
        assert!(!is_retryable(None, Some(FailureCategory::Blocked)));
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(parse_retry_after("2", now), Some(S(2)));
        assert_eq!(parse_retry_after(" 120 ", now), Some(S(120)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now), Some(S(60)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), Some(S(0)));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }
}
