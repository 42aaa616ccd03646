//! An endpoint's delivery health for the console's pictures: the last day's
//! attempts hour by hour and its queue now.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

use super::{EndpointRef, WebhookService};
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::store::{BucketRow, EndpointQueue, StatsWindow};

/// Hours in the window, the current (partial) one last.
pub const STATS_HOURS: u32 = 24;

/// How far before the window a delivery may have been created for its
/// attempts to count: retries and redeliveries of older ones are left out,
/// so that what is read stays bounded by time, not by the endpoint's age.
const CREATED_LOOKBACK: TimeDelta = TimeDelta::hours(24);

/// One hour of attempts; empty hours are present, with zero counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsBucket {
    pub start: DateTime<Utc>,
    pub attempts: u64,
    pub successes: u64,
    pub p50_ms: Option<i64>,
    pub p99_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStats {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// Exactly [`STATS_HOURS`], oldest first.
    pub buckets: Vec<StatsBucket>,
    pub queue: EndpointQueue,
}

/// The window ending with the hour `now` is in.
pub fn window_at(now: DateTime<Utc>) -> Result<StatsWindow> {
    let hour = TimeDelta::hours(1);
    let current = now.duration_trunc(hour).map_err(|e| Error::internal(e.into()))?;
    let start = current - hour * (STATS_HOURS as i32 - 1);
    Ok(StatsWindow { start, bucket: hour, buckets: STATS_HOURS, created_after: start - CREATED_LOOKBACK })
}

/// Every bucket of `window`, filled from the store's non-empty ones.
fn fill(window: &StatsWindow, rows: &[BucketRow]) -> Vec<StatsBucket> {
    (0..window.buckets)
        .map(|i| {
            let row = rows.iter().find(|r| r.index == i).copied().unwrap_or_default();
            StatsBucket {
                start: window.start + window.bucket * i as i32,
                attempts: row.attempts,
                successes: row.successes,
                p50_ms: row.p50_ms,
                p99_ms: row.p99_ms,
            }
        })
        .collect()
}

impl WebhookService {
    /// The endpoint's last day and queue. Its scope is checked first, so
    /// another organization's endpoint answers NOT_FOUND like a missing one.
    pub async fn endpoint_stats(&self, who: &Principal, r: EndpointRef) -> Result<EndpointStats> {
        self.get_endpoint(who, r).await?;
        let window = window_at(Utc::now())?;
        let rows = self.store.endpoint_buckets(r.organization_id, r.endpoint_id, &window).await?;
        let queue = self.store.endpoint_queue(r.organization_id, r.endpoint_id).await?;
        Ok(EndpointStats { start: window.start, end: window.end(), buckets: fill(&window, &rows), queue })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_24_whole_hours_ending_with_the_current_one() {
        let now = DateTime::parse_from_rfc3339("2026-11-30T10:17:05Z").unwrap().to_utc();
        let w = window_at(now).unwrap();
        assert_eq!(w.start, DateTime::parse_from_rfc3339("2026-11-29T11:00:00Z").unwrap().to_utc());
        assert_eq!(w.end(), DateTime::parse_from_rfc3339("2026-11-30T11:00:00Z").unwrap().to_utc());
        assert_eq!(w.created_after, DateTime::parse_from_rfc3339("2026-11-28T11:00:00Z").unwrap().to_utc());
    }

    #[test]
    fn empty_hours_are_filled_with_zeroes() {
        let w = window_at(Utc::now()).unwrap();
        let rows = [BucketRow { index: 23, attempts: 2, successes: 1, p50_ms: Some(5), p99_ms: Some(9) }];
        let b = fill(&w, &rows);
        assert_eq!(b.len(), 24);
        assert_eq!((b[0].attempts, b[0].p50_ms), (0, None));
        assert_eq!((b[23].attempts, b[23].successes, b[23].p99_ms), (2, 1, Some(9)));
        assert_eq!(b[23].start, w.start + TimeDelta::hours(23));
    }
}
