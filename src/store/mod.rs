//! The attempt store: requests (the delivery queue) and their attempts.
//!
//! One trait, so that the service and the delivery engine never know which
//! database they run on. Postgres is the production implementation.

mod batch;
pub mod endpoints;
mod filter_sql;
pub mod postgres;
pub mod recovery;
mod sqlite;
pub mod stats;
pub mod tail;

/// How many group-commit statements of Dispatch run at once (the
/// benchmark gives pgbench as many connections).
pub use batch::WORKERS as DISPATCH_WORKERS;
pub use endpoints::{DisableRule, EndpointOutcome, EndpointStore, NewEndpoint, StoredSecrets};
pub use postgres::PostgresStore;
pub use recovery::{Operation, RecoverFilter, RecoveryStore, Redelivered};
pub use sqlite::SqliteStore;
pub use stats::{BucketRow, EndpointQueue, StatsStore, StatsWindow};
pub use tail::{Bodies, TailChange, TailEvent, TailPosition, TailStore};

/// Opens and migrates the store a URL names: `postgres://` (or `postgresql://`)
/// for Postgres, `sqlite://path` for the embedded store. Returns it with a
/// short name for logs.
pub async fn open(
    url: &str,
    pool_size: u32,
    acquire_timeout: std::time::Duration,
) -> anyhow::Result<(std::sync::Arc<dyn Store>, &'static str)> {
    open_with(&postgres::Connect::direct(url), pool_size, acquire_timeout).await
}

/// As [`open`], for a Postgres store also through a pooler and with read
/// replicas, as `to` says.
pub async fn open_with(
    to: &postgres::Connect<'_>,
    pool_size: u32,
    acquire_timeout: std::time::Duration,
) -> anyhow::Result<(std::sync::Arc<dyn Store>, &'static str)> {
    let url = to.url;
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = PostgresStore::connect_with(to, pool_size, acquire_timeout).await?;
        store.migrate().await?;
        Ok((std::sync::Arc::new(store), "postgres"))
    } else if url.starts_with("sqlite:") {
        anyhow::ensure!(
            to.read_urls.is_empty() && to.pooled_url.is_none(),
            "read replicas and a pooler need a Postgres store"
        );
        let store = SqliteStore::connect(url, pool_size, acquire_timeout).await?;
        store.migrate().await?;
        Ok((std::sync::Arc::new(store), "sqlite"))
    } else {
        anyhow::bail!("unsupported database URL (use postgres://... or sqlite://...)")
    }
}

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::auth::{ApiKeyRecord, NewApiKey};
use crate::domain::{
    AttemptRecord, ClaimedDelivery, Cursor, Dispatched, DueQueue, LogFilter, LogRecord, NewDelivery, NextStep,
    PurgeReport,
};
use crate::error::Result;

/// An attempt's outcome, as the engine hands it to the store.
#[derive(Debug, Clone)]
pub struct NewAttempt {
    pub attempted_at: DateTime<Utc>,
    pub success: bool,
    pub status_code: Option<i32>,
    pub response_body: String,
    pub response_truncated: bool,
    pub response_time_ms: i64,
    pub error_category: Option<&'static str>,
    pub error_message: Option<String>,
    pub next: NextStep,
}

/// A chunk of logs, and whether more follow it.
#[derive(Debug, Clone, Default)]
pub struct LogBatch {
    pub logs: Vec<LogRecord>,
    pub more: bool,
}

/// Which call's logs to read, within which organization (`None`: any, for a
/// service key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallLogFilter {
    pub organization_id: Option<Uuid>,
    pub call_id: i64,
    pub webhook_type: Option<String>,
}

/// A position in a call's logs: (latest attempt time or creation time, log ID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallCursor {
    pub at: DateTime<Utc>,
    pub log_id: i64,
}

/// What a log costs to hold: the bodies it carries.
pub fn log_bytes(l: &LogRecord) -> usize {
    let attempt =
        l.last_attempt.as_ref().map_or(0, |a| a.response_body.len() + a.error_message.as_ref().map_or(0, String::len));
    l.body.len() + l.webhook_url.len() + attempt
}

/// Reads rows from `rows` (a query with `LIMIT limit + 1`, or with no LIMIT
/// and `limit` `u32::MAX`, as the live tail's lookup by key) until `limit`
/// are taken or their bytes reach `max_bytes`; then looks at one more row
/// only to tell whether more follow. Rows are decoded one at a time from the
/// connection, so what was not taken is never held.
pub(crate) async fn take_within_budget<R, S>(
    mut rows: S,
    limit: u32,
    max_bytes: usize,
    mut decode: impl FnMut(&R) -> Result<LogRecord>,
) -> Result<LogBatch>
where
    S: futures_util::Stream<Item = std::result::Result<R, sqlx::Error>> + Unpin,
{
    use futures_util::TryStreamExt;
    let mut batch = LogBatch::default();
    let mut bytes = 0;
    while let Some(row) = rows.try_next().await? {
        if batch.logs.len() >= limit as usize {
            batch.more = true;
            // Read to the statement's end (its LIMIT is limit + 1, so
            // nothing is left) rather than drop it: a statement read to
            // its end keeps its connection warm (store::postgres::warm).
            while rows.try_next().await?.is_some() {}
            break;
        }
        if bytes >= max_bytes && !batch.logs.is_empty() {
            // Up to a page of large rows may still be coming: dropped
            // here, sqlx reads them off the request's path.
            batch.more = true;
            break;
        }
        let log = decode(&row)?;
        bytes += log_bytes(&log);
        batch.logs.push(log);
    }
    Ok(batch)
}

/// Where a read may be answered. Listings and the live tail always may come
/// from a read replica (they show what has replicated); a single request's
/// details may too, but then one the replica does not know yet is looked up
/// on the primary, so a caller reading right after its own Dispatch finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// The primary: a decision follows from what is read (redelivery).
    Primary,
    /// A replica if one answers, the primary for what it does not have.
    Replica,
}

/// A read replica as the store last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaState {
    /// Its URL without the password.
    pub label: String,
    /// Whether it answers (and is still a standby).
    pub up: bool,
}

/// One connection pool's connections, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    /// Which pool: `main`, `claims` or `session` on Postgres; `read` or
    /// `write` on SQLite.
    pub pool: &'static str,
    pub in_use: u32,
    pub idle: u32,
}

/// The delivery queue at a glance, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub pending: u64,
    pub oldest_pending_created_at: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait Store: EndpointStore + RecoveryStore + TailStore + StatsStore + Send + Sync + 'static {
    /// Stores a webhook durably (committed before returning). A repeated
    /// idempotency key in the same organization returns the earlier request.
    async fn insert_delivery(&self, delivery: &NewDelivery) -> Result<Dispatched>;

    /// Stores every delivery of one message (same message ID and idempotency
    /// key) in one transaction. A repeated key answers the earlier message's
    /// deliveries and stores nothing.
    async fn insert_deliveries(&self, deliveries: &[NewDelivery]) -> Result<Dispatched>;

    /// Up to `limit` logs matching `filter`, newest first, strictly after
    /// `after` in that order; fewer (at least one) once the bodies read reach
    /// `max_bytes`, so that no page holds more than about that much.
    async fn list_logs(
        &self,
        filter: &LogFilter,
        after: Option<Cursor>,
        limit: u32,
        max_bytes: usize,
    ) -> Result<LogBatch>;

    /// A call's logs in the per-call API's order, by the time of their latest
    /// attempt (creation time before the first), then log ID; after `after`,
    /// up to `limit` and `max_bytes` as for [`Store::list_logs`].
    async fn call_logs(
        &self,
        filter: &CallLogFilter,
        after: Option<CallCursor>,
        limit: u32,
        max_bytes: usize,
    ) -> Result<LogBatch>;

    /// A request and all its attempts, newest first; `None` also when
    /// `organization_id` is given and the request belongs to another one.
    /// `from` says whether a read replica may answer (see [`ReadFrom`]).
    async fn log_details(
        &self,
        request_id: Uuid,
        organization_id: Option<Uuid>,
        from: ReadFrom,
    ) -> Result<Option<(LogRecord, Vec<AttemptRecord>)>>;

    /// Up to `max_queues` queues with pending deliveries whose keys follow
    /// `after`, in key order (the claimer's round-robin cursor).
    async fn due_queues(&self, after: &str, max_queues: u32) -> Result<Vec<DueQueue>>;

    /// Claims from each queue up to its quota of due deliveries, oldest
    /// first, for `lease`. Queues not named are not touched at all.
    async fn claim_from(&self, quotas: &[(String, u32)], lease: Duration) -> Result<Vec<ClaimedDelivery>>;

    /// Claims up to `limit` due deliveries for `lease`, oldest first across
    /// every queue: until it ends, no other worker claims them; after it,
    /// they are due again. (The engine claims per queue; this global order
    /// serves tests, and on Postgres has no index of its own.)
    async fn claim_due(&self, limit: u32, lease: Duration) -> Result<Vec<ClaimedDelivery>>;

    /// Records one attempt and the request's new state in one transaction.
    /// Returns false when the claim had been lost (the lease expired and
    /// another worker took the request); the attempt is recorded either way.
    async fn record_attempt(&self, claim: &ClaimedDelivery, attempt: &NewAttempt) -> Result<bool>;

    /// Gives claimed deliveries back without an attempt, due `after` from
    /// now by the store's clock.
    async fn release(&self, claims: &[ClaimedDelivery], after: Duration) -> Result<()>;

    /// Cheap round trip, for health checks.
    async fn ping(&self) -> Result<()>;

    /// The read replicas and whether each answers (none for a store without
    /// them).
    fn read_replicas(&self) -> Vec<ReplicaState> {
        Vec::new()
    }

    /// Tells every process sharing the store that work was just committed
    /// (Postgres: one `NOTIFY`, sent after the commit, outside it). Callers
    /// coalesce. Nothing to do where one process owns the store.
    async fn announce_due(&self) -> Result<()> {
        Ok(())
    }

    /// What other processes announce: one item per announcement. `None`
    /// where there is no such channel (then polling alone finds work).
    async fn due_announcements(&self) -> Result<Option<futures_util::stream::BoxStream<'static, ()>>> {
        Ok(None)
    }

    /// Prepares storage for the days around today by the store's clock
    /// (Postgres: creates the day partitions ahead of time).
    async fn prepare(&self) -> Result<()>;

    /// Removes logs (requests and their attempts) created more than
    /// `older_than` before the store's own `now` (created_at comes from that
    /// clock, so the cutoff must too), never one still pending. With
    /// `dry_run`, only reports. One run at a time across processes: a run
    /// that finds another in progress does nothing and says so (`skipped`).
    async fn purge(&self, older_than: chrono::TimeDelta, dry_run: bool) -> Result<PurgeReport>;

    /// Pending deliveries and the creation time of the oldest one.
    async fn queue_stats(&self) -> Result<QueueStats>;

    /// Connections of each of the store's pools.
    fn pool_usage(&self) -> Vec<PoolUsage> {
        Vec::new()
    }

    async fn insert_api_key(&self, key: &NewApiKey) -> Result<()>;

    async fn find_api_key(&self, prefix: &str) -> Result<Option<ApiKeyRecord>>;

    /// Every key, newest first.
    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>>;

    /// Revokes a key; false when no unrevoked key has that prefix.
    async fn revoke_api_key(&self, prefix: &str) -> Result<bool>;
}

/// Query parameters of a database URL that carry secrets.
const SECRET_PARAMS: &[&str] = &["password", "sslpassword", "sslkey"];

/// The URL without its password (in the user part or as a parameter), for logs.
pub fn redact_url(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return "(unparsable URL)".into();
    };
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let secret = SECRET_PARAMS.iter().any(|s| k.eq_ignore_ascii_case(s));
                (k.into_owned(), if secret { "***".to_owned() } else { v.into_owned() })
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

/// The idle connections of a sqlx pool.
///
/// sqlx's own count can read as `usize::MAX` for a moment: a release puts the
/// connection back in the idle queue before it increments the count, and an
/// acquire that takes it in between decrements first. Used as a number, that
/// overflowed the pool gauge's sum (a panic in debug builds, caught by the
/// rolling-restart test; a wrong gauge in release). Such a reading, anything
/// above the pool's size, is taken as none idle.
pub(crate) fn idle_connections<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> u32 {
    idle_reading(pool.size(), pool.num_idle())
}

/// A sqlx pool's connections: (in use, idle).
pub(crate) fn connections<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> (u32, u32) {
    let idle = idle_connections(pool);
    (pool.size().saturating_sub(idle), idle)
}

fn idle_reading(size: u32, reading: usize) -> u32 {
    u32::try_from(reading).ok().filter(|&n| n <= size).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::redact_url as redact;

    #[test]
    fn an_idle_count_below_zero_reads_as_none_idle() {
        assert_eq!(super::idle_reading(4, usize::MAX), 0);
        assert_eq!(super::idle_reading(4, 5), 0);
        assert_eq!(super::idle_reading(4, 4), 4);
        assert_eq!(super::idle_reading(4, 0), 0);
    }

    #[test]
    fn passwords_never_reach_the_log() {
        let r = redact("postgres://app:s3cret@db:5432/hookpost?sslmode=require&password=s3cret&PASSWORD=x");
        assert!(!r.contains("s3cret") && !r.contains("=x"), "{r}");
        assert!(r.contains("sslmode=require"), "{r}");
        assert_eq!(redact("postgres://db/hookpost"), "postgres://db/hookpost");
    }
}
