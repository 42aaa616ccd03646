//! Per-endpoint delivery statistics for the console's pictures: attempts of
//! a bounded window, bucketed by the hour they started, and the endpoint's
//! queue now. Read-only and scoped by organization like every endpoint
//! statement.
//!
//! What is read is bounded twice: by the window (the caller's, a day) and by
//! the deliveries' creation time (`created_after`), so that the scan walks
//! the organization's `(organization_id, created_at)` index over a fixed span
//! rather than every delivery the endpoint ever had. Percentiles are the
//! nearest-rank ones (Postgres' `percentile_disc`); the embedded store,
//! which has no such aggregate, streams the times in order and picks the
//! same ranks, holding one row at a time.

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::{PostgresStore, SqliteStore};
use crate::error::Result;

/// The window statistics are read over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsWindow {
    /// Start of the first bucket.
    pub start: DateTime<Utc>,
    /// Width of one bucket.
    pub bucket: TimeDelta,
    /// How many buckets follow `start`.
    pub buckets: u32,
    /// Only attempts of deliveries created at or after this.
    pub created_after: DateTime<Utc>,
}

impl StatsWindow {
    pub fn end(&self) -> DateTime<Utc> {
        self.start + self.bucket * self.buckets as i32
    }
}

/// One bucket with attempts in it (empty ones are not returned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BucketRow {
    /// 0 for the bucket starting at the window's start.
    pub index: u32,
    pub attempts: u64,
    pub successes: u64,
    pub p50_ms: Option<i64>,
    pub p99_ms: Option<i64>,
}

/// An endpoint's queue now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointQueue {
    pub pending: u64,
    pub held: u64,
    pub oldest_pending_created_at: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait StatsStore: Send + Sync {
    /// The non-empty buckets of the endpoint's attempts in `window`, in
    /// index order.
    async fn endpoint_buckets(
        &self,
        organization_id: Uuid,
        endpoint_id: Uuid,
        window: &StatsWindow,
    ) -> Result<Vec<BucketRow>>;

    async fn endpoint_queue(&self, organization_id: Uuid, endpoint_id: Uuid) -> Result<EndpointQueue>;
}

/// The 1-based nearest rank of percentile `percent` among `n` values:
/// ceil(n × percent / 100), at least 1 (what `percentile_disc` picks).
pub fn nearest_rank(percent: u64, n: u64) -> u64 {
    (n * percent).div_ceil(100).max(1)
}

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A bucket index as the store computed it; attempts exactly at the window's
/// end (or clock skew) fall outside and are dropped by the caller's bounds.
fn index(v: i64, window: &StatsWindow) -> Option<u32> {
    u32::try_from(v).ok().filter(|i| *i < window.buckets)
}

#[async_trait]
impl StatsStore for PostgresStore {
    async fn endpoint_buckets(
        &self,
        organization_id: Uuid,
        endpoint_id: Uuid,
        window: &StatsWindow,
    ) -> Result<Vec<BucketRow>> {
        // The attempts' partition key (request_created_at) is bounded too, so
        // only the partitions of the span are visited. A dashboard read: a
        // read replica answers it when there is one.
        let rows = self
            .read_logs(|db| async move {
                Ok(sqlx::query(
                    "SELECT floor(extract(epoch FROM a.attempted_at - $3)::float8 / $4)::bigint AS bucket, \
               count(*) AS attempts, count(*) FILTER (WHERE a.success) AS successes, \
               percentile_disc(0.5) WITHIN GROUP (ORDER BY a.response_time_ms) AS p50, \
               percentile_disc(0.99) WITHIN GROUP (ORDER BY a.response_time_ms) AS p99 \
             FROM webhook_requests r \
             JOIN webhook_attempts a ON a.request_pk = r.id AND a.request_created_at = r.created_at \
             WHERE r.organization_id = $1 AND r.endpoint_id = $2 AND r.created_at >= $5 \
               AND a.request_created_at >= $5 AND a.attempted_at >= $3 AND a.attempted_at < $6 \
             GROUP BY 1 ORDER BY 1",
                )
                .bind(organization_id)
                .bind(endpoint_id)
                .bind(window.start)
                .bind(window.bucket.as_seconds_f64())
                .bind(window.created_after)
                .bind(window.end())
                .fetch_all(&db)
                .await?)
            })
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let Some(index) = index(row.try_get("bucket")?, window) else { continue };
            out.push(BucketRow {
                index,
                attempts: count(row.try_get("attempts")?),
                successes: count(row.try_get("successes")?),
                p50_ms: row.try_get("p50")?,
                p99_ms: row.try_get("p99")?,
            });
        }
        Ok(out)
    }

    async fn endpoint_queue(&self, organization_id: Uuid, endpoint_id: Uuid) -> Result<EndpointQueue> {
        // Through the (organization_id, status, created_at) index: only the
        // organization's pending and held deliveries are visited.
        let row = sqlx::query(
            "SELECT count(*) FILTER (WHERE status = 'pending') AS pending, \
               count(*) FILTER (WHERE status = 'held') AS held, \
               min(created_at) FILTER (WHERE status = 'pending') AS oldest \
             FROM webhook_requests \
             WHERE organization_id = $1 AND status IN ('pending', 'held') AND endpoint_id = $2",
        )
        .bind(organization_id)
        .bind(endpoint_id)
        .fetch_one(self.db())
        .await?;
        Ok(EndpointQueue {
            pending: count(row.try_get("pending")?),
            held: count(row.try_get("held")?),
            oldest_pending_created_at: row.try_get("oldest")?,
        })
    }
}

/// The embedded store's attempts of the window (times in microseconds, its
/// unit), shared by both of its reads below.
const SQLITE_SCOPE: &str = "FROM webhook_requests r JOIN webhook_attempts a ON a.request_pk = r.id \
     WHERE r.organization_id = ?1 AND r.endpoint_id = ?2 AND r.created_at >= ?5 \
       AND a.attempted_at >= ?3 AND a.attempted_at < ?6";

/// One of the embedded store's reads, its parameters bound.
fn sqlite_query<'q>(
    sql: &'q str,
    organization_id: Uuid,
    endpoint_id: Uuid,
    window: &StatsWindow,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    let micros = super::sqlite::micros;
    sqlx::query(sql)
        .bind(organization_id.to_string())
        .bind(endpoint_id.to_string())
        .bind(micros(window.start))
        .bind(window.bucket.num_microseconds().unwrap_or(i64::MAX))
        .bind(micros(window.created_after))
        .bind(micros(window.end()))
}

#[async_trait]
impl StatsStore for SqliteStore {
    async fn endpoint_buckets(
        &self,
        organization_id: Uuid,
        endpoint_id: Uuid,
        window: &StatsWindow,
    ) -> Result<Vec<BucketRow>> {
        use futures_util::TryStreamExt;
        let counts_sql = format!(
            "SELECT (a.attempted_at - ?3) / ?4 AS bucket, count(*) AS attempts, sum(a.success) AS successes \
             {SQLITE_SCOPE} GROUP BY 1 ORDER BY 1"
        );
        // The times in (bucket, time) order: each bucket's ranks are known
        // from its count, so one pass picks them without holding the rest.
        let times_sql = format!(
            "SELECT (a.attempted_at - ?3) / ?4 AS bucket, a.response_time_ms AS ms {SQLITE_SCOPE} ORDER BY 1, 2"
        );
        let counts = sqlite_query(&counts_sql, organization_id, endpoint_id, window).fetch_all(self.reader()).await?;
        let mut out = Vec::with_capacity(counts.len());
        for row in &counts {
            let Some(index) = index(row.try_get("bucket")?, window) else { continue };
            out.push(BucketRow {
                index,
                attempts: count(row.try_get("attempts")?),
                successes: count(row.try_get::<Option<i64>, _>("successes")?.unwrap_or(0)),
                ..BucketRow::default()
            });
        }
        let mut times = sqlite_query(&times_sql, organization_id, endpoint_id, window).fetch(self.reader());
        let (mut current, mut seen) = (None::<usize>, 0u64);
        while let Some(row) = times.try_next().await? {
            let Some(index) = index(row.try_get("bucket")?, window) else { continue };
            let Some(at) = out.iter().position(|b| b.index == index) else { continue };
            if current != Some(at) {
                (current, seen) = (Some(at), 0);
            }
            seen += 1;
            let bucket = &mut out[at];
            let ms: i64 = row.try_get("ms")?;
            if seen == nearest_rank(50, bucket.attempts) {
                bucket.p50_ms = Some(ms);
            }
            if seen == nearest_rank(99, bucket.attempts) {
                bucket.p99_ms = Some(ms);
            }
        }
        Ok(out)
    }

    async fn endpoint_queue(&self, organization_id: Uuid, endpoint_id: Uuid) -> Result<EndpointQueue> {
        let row = sqlx::query(
            "SELECT coalesce(sum(status = 'pending'), 0) AS pending, coalesce(sum(status = 'held'), 0) AS held, \
               min(CASE WHEN status = 'pending' THEN created_at END) AS oldest \
             FROM webhook_requests \
             WHERE organization_id = ? AND status IN ('pending', 'held') AND endpoint_id = ?",
        )
        .bind(organization_id.to_string())
        .bind(endpoint_id.to_string())
        .fetch_one(self.reader())
        .await?;
        let oldest: Option<i64> = row.try_get("oldest")?;
        Ok(EndpointQueue {
            pending: count(row.try_get("pending")?),
            held: count(row.try_get("held")?),
            oldest_pending_created_at: oldest.map(super::sqlite::time).transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::nearest_rank;

    #[test]
    fn nearest_ranks_are_those_of_percentile_disc() {
        assert_eq!(nearest_rank(50, 1), 1);
        assert_eq!(nearest_rank(99, 1), 1);
        assert_eq!(nearest_rank(50, 4), 2);
        assert_eq!(nearest_rank(50, 5), 3);
        assert_eq!(nearest_rank(99, 100), 99);
        assert_eq!(nearest_rank(99, 101), 100);
        assert_eq!(nearest_rank(99, 10), 10);
    }
}
