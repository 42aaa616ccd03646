//! Read replicas: streaming standbys of the primary that serve the log reads
//! (listings, details, the live tail, dashboard figures), so that customers
//! reading their logs do not compete with dispatch and delivery for the
//! primary.
//!
//! Each replica has its own small pool, connected lazily (a replica that is
//! down at start is not an error). A probe every [`PROBE_INTERVAL`] marks each
//! one up or down: up means it answers, is still a standby, and has replayed
//! what the primary had written `max_lag` ago (a standby whose replay stopped,
//! or is paused, or fell behind, is down). Reads go round-robin to the
//! replicas that are up, and to the primary when none is. A read that fails on
//! a replica, or takes longer than [`REPLICA_READ_TIMEOUT`], runs on the
//! primary at once; one that failed for want of a connection also marks the
//! replica down until the next probe finds it again.
//!
//! Consistency: replicas lag the primary by their replay delay (at most about
//! `max_lag` while they count as up). Reads that must see the caller's own
//! write are the store's callers' choice ([`crate::store::ReadFrom`]).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::Db;
use crate::error::{Error, ErrorCode, Result};
use crate::store::ReplicaState;

/// How often each replica is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The longest a read waits for a replica connection, and a probe for its
/// answer: a replica that does not answer at all (not refused, silent) must
/// not hold reads for the primary's full acquire timeout.
const REPLICA_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest a read may take on a replica before the primary runs it
/// instead. A query on a connection to a host that went silent would
/// otherwise wait for the kernel's TCP timeout (many minutes).
pub const REPLICA_READ_TIMEOUT: Duration = Duration::from_secs(10);

struct Replica {
    /// The URL without its password, for health and metrics.
    label: String,
    db: Db,
    up: AtomicBool,
}

/// The replicas and which of them answer.
pub struct ReadReplicas {
    replicas: Vec<Replica>,
    next: AtomicUsize,
    /// The most a replica may lag and still serve reads.
    max_lag: Duration,
}

impl ReadReplicas {
    /// Pools for each URL (not connected yet), all marked up until the first
    /// probe says otherwise.
    pub fn new(
        urls: &[String],
        max_connections: u32,
        acquire_timeout: Duration,
        max_lag: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        let mut replicas = Vec::with_capacity(urls.len());
        for url in urls {
            let options: PgConnectOptions = url.parse().context("parsing a read replica's URL")?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(acquire_timeout.min(REPLICA_ACQUIRE_TIMEOUT))
                .test_before_acquire(false)
                .connect_lazy_with(options.application_name("hookpost-read"));
            let db = Db::new(pool, false);
            replicas.push(Replica { label: crate::store::redact_url(url), db, up: AtomicBool::new(true) });
        }
        Ok(Arc::new(Self { replicas, next: AtomicUsize::new(0), max_lag }))
    }

    /// Probes every replica until the store lets go of them (see the module
    /// comment for what "up" means).
    pub fn spawn_probe(self: &Arc<Self>, primary: Db) {
        if self.replicas.is_empty() {
            return;
        }
        let replicas = Arc::downgrade(self);
        tokio::spawn(async move {
            // The primary's WAL position at each probe, oldest first, as far
            // back as `max_lag` (and one more).
            let mut written: std::collections::VecDeque<(Instant, i64)> = Default::default();
            while let Some(this) = replicas.upgrade() {
                if let Ok(Ok(lsn)) = tokio::time::timeout(REPLICA_ACQUIRE_TIMEOUT, wal_position(&primary)).await {
                    written.push_back((Instant::now(), lsn));
                }
                while written.len() > 1 && written[1].0.elapsed() >= this.max_lag {
                    written.pop_front();
                }
                // What a replica must have replayed: what the primary had
                // written `max_lag` ago (nothing yet, in the first moments).
                let due = written.front().filter(|(at, _)| at.elapsed() >= this.max_lag).map(|(_, lsn)| *lsn);
                futures_util::future::join_all(this.replicas.iter().map(|r| probe(r, due))).await;
                drop(this);
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
        });
    }

    pub fn states(&self) -> Vec<ReplicaState> {
        self.replicas
            .iter()
            .map(|r| ReplicaState { label: r.label.clone(), up: r.up.load(Ordering::Relaxed) })
            .collect()
    }

    /// The next replica that is up, round-robin.
    fn pick(&self) -> Option<&Replica> {
        let n = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|i| &self.replicas[(start + i) % n]).find(|r| r.up.load(Ordering::Relaxed))
    }

    /// The first replica that is up, in the order given: reads that follow
    /// one another (the live tail) stay on one server, so they never go
    /// back in time by moving to one that lags more.
    fn first(&self) -> Option<&Replica> {
        self.replicas.iter().find(|r| r.up.load(Ordering::Relaxed))
    }

    /// Runs `read` on a replica that is up (round-robin), or on `primary`.
    pub async fn read<T, F, Fut>(&self, primary: &Db, read: F) -> Result<T>
    where
        F: Fn(Db) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.read_on(self.pick(), primary, read).await
    }

    /// As [`ReadReplicas::read`], always on the first replica that is up.
    pub async fn read_sticky<T, F, Fut>(&self, primary: &Db, read: F) -> Result<T>
    where
        F: Fn(Db) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.read_on(self.first(), primary, read).await
    }

    async fn read_on<T, F, Fut>(&self, replica: Option<&Replica>, primary: &Db, read: F) -> Result<T>
    where
        F: Fn(Db) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        if let Some(r) = replica {
            match tokio::time::timeout(REPLICA_READ_TIMEOUT, read(r.db.clone())).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(err)) => {
                    // Whatever the replica could not answer, the primary may
                    // (a column a migration added that it has not replayed,
                    // a query cancelled by a recovery conflict, a full pool).
                    if unreachable(&err) {
                        r.up.store(false, Ordering::Relaxed);
                    }
                    tracing::warn!(replica = %r.label, error = %err, "read replica failed a read; the primary answers");
                }
                Err(_) => {
                    r.up.store(false, Ordering::Relaxed);
                    tracing::warn!(replica = %r.label, "read replica took too long; the primary answers");
                }
            }
        }
        read(primary.clone()).await
    }
}

/// Whether an error says the replica cannot be reached (rather than busy:
/// a full pool or a recovery conflict leave it up).
fn unreachable(err: &Error) -> bool {
    let busy = err.source.as_ref().and_then(|s| s.downcast_ref::<sqlx::Error>()).is_some_and(|e| match e {
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c == "40001"),
        _ => false,
    });
    err.code == ErrorCode::Unavailable && !busy
}

/// A server's WAL position in bytes: written, on the primary.
async fn wal_position(primary: &Db) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint").fetch_one(primary).await?)
}

async fn probe(r: &Replica, due: Option<i64>) {
    let answer = tokio::time::timeout(
        REPLICA_ACQUIRE_TIMEOUT,
        sqlx::query_as::<_, (bool, Option<i64>)>(
            "SELECT pg_is_in_recovery(), pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint",
        )
        .fetch_one(&r.db),
    )
    .await;
    let (up, why) = match &answer {
        Ok(Ok((false, _))) => (false, "is not in recovery (promoted?)".to_owned()),
        Ok(Ok((true, replayed))) => match due {
            Some(due) if replayed.unwrap_or(0) < due => (false, "lags more than --read-replica-max-lag".to_owned()),
            _ => (true, String::new()),
        },
        Ok(Err(err)) => (false, format!("is unreachable: {err}")),
        Err(_) => (false, "did not answer".to_owned()),
    };
    if r.up.swap(up, Ordering::Relaxed) != up {
        if up {
            tracing::info!(replica = %r.label, "read replica is back; reads go to it");
        } else {
            tracing::warn!(replica = %r.label, "read replica {why}; its reads go to the primary");
        }
    }
}
