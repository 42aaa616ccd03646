//! Read replicas: streaming standbys of the primary that serve the log reads
//! (listings, details, the live tail), so that customers reading their logs do
//! not compete with dispatch and delivery for the primary.
//!
//! Each replica has its own small pool, connected lazily (a replica that is
//! down at start is not an error). A probe every [`PROBE_INTERVAL`] marks each
//! one up or down; reads go round-robin to the replicas that are up, and to the
//! primary when none is. A read that fails on a replica because it cannot be
//! reached (or was cancelled by a recovery conflict) is marked down and run on
//! the primary at once, so a replica dying costs a caller nothing but time.
//!
//! Consistency: replicas lag the primary by their replay delay. Listings and
//! the tail accept that (the tail's horizon is taken on the same replica, so
//! it stays gap-free: see `store::tail`). Reads that must see the caller's own
//! write are the store's callers' choice ([`crate::store::ReadFrom`]): a
//! details read after Dispatch that the replica does not yet know is answered
//! by the primary.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::Db;

use crate::error::{ErrorCode, Result};
use crate::store::ReplicaState;

/// How often each replica is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The longest a read waits for a replica connection before the primary
/// answers instead: a replica that does not answer at all (not refused,
/// silent) must not hold reads for the primary's full acquire timeout.
const REPLICA_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

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
}

impl ReadReplicas {
    /// Pools for each URL (not connected yet), all marked up until the first
    /// probe says otherwise.
    pub fn new(urls: &[String], max_connections: u32, acquire_timeout: Duration) -> anyhow::Result<Arc<Self>> {
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
        Ok(Arc::new(Self { replicas, next: AtomicUsize::new(0) }))
    }

    /// Probes every replica until the store lets go of them. A replica is up
    /// when it answers and is still a standby; a promoted one is left alone
    /// (it no longer follows the primary).
    pub fn spawn_probe(self: &Arc<Self>) {
        if self.replicas.is_empty() {
            return;
        }
        let replicas = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(this) = replicas.upgrade() {
                this.probe_once().await;
                drop(this);
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
        });
    }

    async fn probe_once(&self) {
        for r in &self.replicas {
            let answer = tokio::time::timeout(
                REPLICA_ACQUIRE_TIMEOUT,
                sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()").fetch_one(r.db.pool()),
            )
            .await;
            let up = matches!(answer, Ok(Ok(true)));
            if r.up.swap(up, Ordering::Relaxed) == up {
                continue;
            }
            match &answer {
                _ if up => tracing::info!(replica = %r.label, "read replica is back; reads go to it"),
                Ok(Ok(_)) => tracing::warn!(
                    replica = %r.label,
                    "read replica is not in recovery (promoted?); reads go to the primary"
                ),
                Ok(Err(err)) => {
                    tracing::warn!(replica = %r.label, error = %err, "read replica unreachable; reads go to the primary")
                }
                Err(_) => tracing::warn!(replica = %r.label, "read replica did not answer; reads go to the primary"),
            }
        }
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

    /// Runs `read` on a replica that is up, or on `primary` when none is or
    /// the replica turns out to be unreachable.
    pub async fn read<T, F, Fut>(&self, primary: &Db, read: F) -> Result<T>
    where
        F: Fn(Db) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        if let Some(r) = self.pick() {
            match read(r.db.clone()).await {
                Err(err) if err.code == ErrorCode::Unavailable => {
                    r.up.store(false, Ordering::Relaxed);
                    tracing::warn!(replica = %r.label, error = %err, "read replica failed a read; the primary answers");
                }
                answer => return answer,
            }
        }
        read(primary.clone()).await
    }
}
