//! The Postgres attempt store: the production store.

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{QueryBuilder, Row};
use uuid::Uuid;

use std::sync::Arc;

use super::batch::InsertBatcher;
use super::{CallCursor, CallLogFilter, LogBatch, NewAttempt, PoolUsage, QueueStats, Store, take_within_budget};
use crate::auth::{ApiKeyRecord, KeyKind, NewApiKey};
use crate::domain::{
    AttemptRecord, ClaimedDelivery, Cursor, Dispatched, DueQueue, LogFilter, LogRecord, NewDelivery, PurgeReport,
};
use crate::error::{Error, Result};

mod rows;
pub mod sql;

use rows::claim_from_row;
pub(crate) use rows::{attempts_from_rows, log_decoder, log_from_row};

/// A chunk of a call's logs, read on `db` (the primary or a replica).
async fn call_logs_on(
    db: Db,
    f: &CallLogFilter,
    after: Option<CallCursor>,
    limit: u32,
    max_bytes: usize,
) -> Result<LogBatch> {
    // The order key comes from the latest attempt (a lateral row), so the
    // keyset condition applies to the joined rows; a call's logs are found by
    // the call_id index first, and each chunk is one query.
    let select = sql::LOG_SELECT.replacen("SELECT ", "SELECT COALESCE(a.attempted_at, r.created_at) AS sort_at, ", 1);
    let mut q = QueryBuilder::new("SELECT * FROM (");
    q.push(select).push(" WHERE r.call_id = ").push_bind(f.call_id);
    if let Some(v) = f.organization_id {
        q.push(" AND r.organization_id = ").push_bind(v);
    }
    if let Some(v) = &f.webhook_type {
        q.push(" AND r.webhook_type = ").push_bind(v.clone());
    }
    q.push(") l");
    if let Some(c) = after {
        q.push(" WHERE (l.sort_at, l.id) > (").push_bind(c.at).push(", ").push_bind(c.log_id).push(")");
    }
    q.push(format_args!(" ORDER BY l.sort_at, l.id LIMIT {}", u64::from(limit) + 1));
    take_within_budget(q.build().fetch(&db), limit, max_bytes, log_decoder()).await
}

/// A request and its attempts, read on `pool` (the primary or a replica).
async fn log_details_on(
    pool: Db,
    request_id: Uuid,
    organization_id: Option<Uuid>,
) -> Result<Option<(LogRecord, Vec<AttemptRecord>)>> {
    // Two statements rather than `$2 IS NULL OR ...`, which a generic plan
    // cannot simplify away.
    // Both statements on one connection (see `Db::session`).
    let mut session = pool.session().await?;
    let row = match organization_id {
        Some(org) => {
            let sql = format!("{} WHERE r.request_id = $1 AND r.organization_id = $2", sql::LOG_SELECT);
            sqlx::query(&sql).bind(request_id).bind(org).fetch_optional(session.ex()).await?
        }
        None => {
            let sql = format!("{} WHERE r.request_id = $1", sql::LOG_SELECT);
            sqlx::query(&sql).bind(request_id).fetch_optional(session.ex()).await?
        }
    };
    let Some(row) = row else {
        session.finish().await?;
        return Ok(None);
    };
    let log = log_from_row(&row)?;
    let sql = format!(
        "SELECT {ATTEMPT_COLUMNS} FROM webhook_attempts WHERE request_pk = $1 AND request_created_at = $2 \
         ORDER BY attempt_number DESC"
    );
    let rows = sqlx::query(&sql).bind(log.log_id).bind(log.created_at).fetch_all(session.ex()).await?;
    session.finish().await?;
    let attempts = attempts_from_rows(&rows)?;
    Ok(Some((log, attempts)))
}

/// How far a read replica may lag and still serve reads, unless told.
pub const DEFAULT_READ_MAX_LAG: Duration = Duration::from_secs(10);

/// Where a Postgres store connects.
#[derive(Debug, Clone, Copy)]
pub struct Connect<'a> {
    /// The primary, directly.
    pub url: &'a str,
    /// The same database through a connection pooler in transaction mode
    /// (PgBouncer): the pool's statements go there, see `pooler`.
    pub pooled_url: Option<&'a str>,
    /// Streaming replicas for log reads, see `replicas`.
    pub read_urls: &'a [String],
    /// How far a replica may lag (replay behind what the primary had
    /// written that long ago) and still serve reads.
    pub read_max_lag: Duration,
}

impl<'a> Connect<'a> {
    /// The primary alone.
    pub fn direct(url: &'a str) -> Self {
        Self { url, pooled_url: None, read_urls: &[], read_max_lag: DEFAULT_READ_MAX_LAG }
    }
}

/// The channel on which replicas announce newly committed work.
const DUE_CHANNEL: &str = "hookpost_due";

mod maintenance;
mod pooler;
mod record;
mod replicas;
mod warm;

pub use pooler::Db;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Clone)]
pub struct PostgresStore {
    /// Where statements go (through a transaction pooler, if one is named).
    db: Db,
    /// Straight to Postgres, never through a pooler: for what needs a
    /// session (migrations' advisory lock, LISTEN). Opens connections only
    /// when asked for one.
    direct: PgPool,
    /// The delivery engine's claims (see [`claims_pool`]).
    claims: Db,
    /// For maintenance's own session, outside the pool (see `maintenance`).
    options: PgConnectOptions,
    /// Group commit for dispatches without an idempotency key.
    batcher: Arc<InsertBatcher>,
    /// Group commit for attempt records.
    recorder: Arc<record::RecordBatcher>,
    /// Where log reads go (none: the primary answers them).
    reads: Arc<replicas::ReadReplicas>,
}

/// Connections of their own for the claim statements, on which the planner
/// picks a whole-table scan only where no index would do (`enable_seqscan`
/// off).
///
/// A prepared statement keeps the generic plan it settles on after five runs
/// for the life of its connection, and every connection plans again when a
/// partition is added or dropped (daily). Planned on a day's partition of a
/// few hundred rows, the claim's update of the rows it locked became a scan
/// of the whole partition (cheaper than any index at that size), and stayed
/// one as the partition grew: 45 ms per claim at 130,000 rows, a backlog
/// draining at 1,000/s instead of 9,000/s (`tests/api/plans.rs`,
/// docs/PERFORMANCE.md). Custom plans each time cost more than the claim
/// itself. The claimer runs one statement at a time, so its own small pool
/// also keeps it from waiting behind Dispatch for a connection: one
/// connection in use as a rule, kept warm between statements (three is the
/// smallest pool that keeps one: see `warm::RESERVED`). Behind a
/// transaction pooler, statements are never prepared (planned for their
/// parameters each time) and the claims share the main pool.
fn claims_pool(options: &PgConnectOptions, acquire_timeout: Duration) -> Db {
    Db::new(pool_builder(3, acquire_timeout).connect_lazy_with(claim_connect_options(options)), false)
}

/// The store's pools (the main one and the claims'): at most
/// `max_connections`, callers waiting at most `acquire_timeout` for one.
fn pool_builder(max_connections: u32, acquire_timeout: Duration) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        // No ping before each use: a round trip on every query. A broken
        // connection fails its query as UNAVAILABLE and leaves the pool.
        .test_before_acquire(false)
}

/// How the claims' connections are opened (see [`claims_pool`]), given the
/// store's own options.
pub fn claim_connect_options(options: &PgConnectOptions) -> PgConnectOptions {
    options.clone().options([("enable_seqscan", "off")])
}

pub(crate) const ATTEMPT_COLUMNS: &str = "attempt_number, attempted_at, success, status_code, response_body, \
     response_truncated, response_time_ms, error_category, error_message, manual";
/// [`ATTEMPT_COLUMNS`] in the BASIC view: the response body left unread.
pub(crate) const ATTEMPT_COLUMNS_BASIC: &str = "attempt_number, attempted_at, success, status_code, \
     ''::text AS response_body, response_truncated, response_time_ms, error_category, error_message, manual";

impl PostgresStore {
    /// Connects with a pool of at most `max_connections`, without migrating.
    /// `acquire_timeout` bounds how long a caller waits for a connection, so a
    /// dead database surfaces as UNAVAILABLE quickly rather than a hang.
    pub async fn connect(url: &str, max_connections: u32, acquire_timeout: Duration) -> anyhow::Result<Self> {
        Self::connect_with(&Connect::direct(url), max_connections, acquire_timeout).await
    }

    /// Connects as `to` says (a pooler, read replicas: each replica with a
    /// pool of its own of the same size), without migrating.
    pub async fn connect_with(
        to: &Connect<'_>,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let options: PgConnectOptions = to.url.parse().context("parsing the database URL")?;
        let pool_options = match to.pooled_url {
            // The pooler keeps no statement between transactions (see
            // `pooler`), so there is nothing to cache.
            // `extra_float_digits` is a startup parameter PgBouncer refuses
            // unless told to ignore it; hookpost reads floats in binary.
            Some(url) => url
                .parse::<PgConnectOptions>()
                .context("parsing the pooled database URL")?
                .statement_cache_capacity(0)
                .extra_float_digits(None),
            None => options.clone(),
        };
        let pool = pool_builder(max_connections, acquire_timeout)
            .connect_with(pool_options)
            .await
            .context("connecting to Postgres")?;
        let db = Db::new(pool, to.pooled_url.is_some());
        let direct = match to.pooled_url {
            Some(_) => PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(acquire_timeout)
                .connect_lazy_with(options.clone()),
            None => db.pool().clone(),
        };
        let claims = match to.pooled_url {
            Some(_) => db.clone(),
            None => claims_pool(&options, acquire_timeout),
        };
        let batcher = Arc::new(InsertBatcher::start(db.clone()));
        let recorder = Arc::new(record::RecordBatcher::start(db.clone()));
        let reads = replicas::ReadReplicas::new(to.read_urls, max_connections, acquire_timeout, to.read_max_lag)?;
        reads.spawn_probe(db.clone());
        Ok(Self { db, direct, claims, options, batcher, recorder, reads })
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        // Directly: the migrator holds a session-level advisory lock.
        MIGRATOR.run(&self.direct).await.context("applying the Postgres migrations")
    }

    /// The pool (behind the pooler, if any) as an executor.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Runs [`sql::RELEASE`] or [`sql::HOLD`] on `claims` (their keys and
    /// leases as $1 to $3; `after`, in milliseconds, as $4), in a
    /// transaction planned as the claims are (see [`sql::SEQSCAN_OFF`]).
    pub(crate) async fn give_back(
        &self,
        statement: &'static str,
        claims: &[ClaimedDelivery],
        after: Option<Duration>,
    ) -> Result<()> {
        if claims.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = claims.iter().map(|c| c.log_id).collect();
        let leases: Vec<Uuid> = claims.iter().map(|c| c.lease_id).collect();
        let created: Vec<DateTime<Utc>> = claims.iter().map(|c| c.created_at).collect();
        let mut query = sqlx::query(statement).bind(&ids).bind(&leases).bind(&created);
        if let Some(after) = after {
            query = query.bind(millis(after));
        }
        let mut tx = self.db.begin().await?;
        sqlx::query(sql::SEQSCAN_OFF).execute(tx.ex()).await?;
        query.execute(tx.ex()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Runs a log read on a read replica when one answers, else here.
    pub(crate) async fn read_logs<T, F, Fut>(&self, read: F) -> Result<T>
    where
        F: Fn(Db) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.reads.read(&self.db, read).await
    }

    /// As [`PostgresStore::read_logs`], always on the same replica while it
    /// is up (the live tail: see `replicas`).
    pub(crate) async fn read_tail<T, F, Fut>(&self, read: F) -> Result<T>
    where
        F: Fn(Db) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.reads.read_sticky(&self.db, read).await
    }

    /// The Dispatch an idempotency key was first used for: its message and
    /// every delivery of it.
    async fn earlier_dispatch(&self, organization_id: Uuid, key: &str) -> Result<Dispatched> {
        let row = sqlx::query(
            "SELECT log_id, request_id, message_id FROM idempotency_keys \
             WHERE organization_id = $1 AND idempotency_key = $2",
        )
        .bind(organization_id)
        .bind(key)
        .fetch_one(&self.db)
        .await?;
        let request_id: Uuid = row.try_get("request_id")?;
        let message_id: Uuid = row.try_get::<Option<Uuid>, _>("message_id")?.unwrap_or(request_id);
        let request_ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT request_id FROM webhook_requests WHERE message_id = $1 AND organization_id = $2 ORDER BY id",
        )
        .bind(message_id)
        .bind(organization_id)
        .fetch_all(&self.db)
        .await?;
        Ok(Dispatched { message_id, request_id, log_id: row.try_get("log_id")?, request_ids, duplicate: true })
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
impl Store for PostgresStore {
    #[tracing::instrument(skip_all, fields(request_id = %d.request_id))]
    async fn insert_delivery(&self, d: &NewDelivery) -> Result<Dispatched> {
        if d.idempotency_key.is_none() {
            let log_id = self.batcher.insert(d.clone()).await?;
            return Ok(Dispatched::one(d, log_id));
        }
        // With a key, the key row and the request are inserted by one
        // statement of their own; the key's primary key decides a duplicate,
        // so concurrent Dispatches with one key cannot both insert: the loser
        // waits for the winner's commit, gets DO NOTHING, and reads the winner's.
        let row = sqlx::query(sql::INSERT_DELIVERY)
            .bind(d.request_id)
            .bind(d.organization_id)
            .bind(d.workspace_id)
            .bind(d.subscription_id)
            .bind(d.call_id)
            .bind(d.assistant_id)
            .bind(d.webhook_url.as_str())
            .bind(&d.webhook_type)
            .bind(&d.body)
            .bind(&d.metadata)
            .bind(&d.idempotency_key)
            .bind(i32::try_from(d.max_retries).unwrap_or(i32::MAX))
            .bind(d.message_id)
            .bind(d.endpoint_id)
            .bind(d.queue_key())
            .bind(d.held)
            .bind(d.expires_at)
            .fetch_optional(&self.db)
            .await?;
        if let Some(row) = row {
            return Ok(Dispatched::one(d, row.try_get("id")?));
        }
        self.earlier_dispatch(d.organization_id, d.idempotency_key.as_deref().unwrap_or_default()).await
    }

    async fn insert_deliveries(&self, ds: &[NewDelivery]) -> Result<Dispatched> {
        let Some(first) = ds.first() else {
            return Err(Error::internal(anyhow::anyhow!("a message with no delivery")));
        };
        if ds.len() == 1 {
            return self.insert_delivery(first).await;
        }
        // One transaction: every delivery of the message, or none. With a
        // key, its row goes first: a concurrent duplicate waits on it, then
        // finds it and rolls back.
        let mut tx = self.db.begin().await?;
        let mut first_id = None;
        if let Some(key) = &first.idempotency_key {
            let reserved: Option<i64> = sqlx::query_scalar(
                "INSERT INTO idempotency_keys (organization_id, idempotency_key, request_id, log_id, created_at, \
                   message_id) VALUES ($1, $2, $3, nextval('webhook_requests_log_id_seq'), now(), $4) \
                 ON CONFLICT DO NOTHING RETURNING log_id",
            )
            .bind(first.organization_id)
            .bind(key)
            .bind(first.request_id)
            .bind(first.message_id)
            .fetch_optional(tx.ex())
            .await?;
            match reserved {
                Some(id) => first_id = Some(id),
                None => {
                    drop(tx);
                    return self.earlier_dispatch(first.organization_id, key).await;
                }
            }
        }
        // The message once (its deliveries share the transaction's now(),
        // so they share its created_at), then one delivery per endpoint.
        sqlx::query(
            "INSERT INTO webhook_messages (message_id, organization_id, workspace_id, webhook_type, body, call_id, \
               assistant_id, metadata, idempotency_key, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())",
        )
        .bind(first.message_id)
        .bind(first.organization_id)
        .bind(first.workspace_id)
        .bind(&first.webhook_type)
        .bind(&first.body)
        .bind(first.call_id)
        .bind(first.assistant_id)
        .bind(&first.metadata)
        .bind(first.idempotency_key.as_deref())
        .execute(tx.ex())
        .await?;
        let mut log_ids = Vec::with_capacity(ds.len());
        for (i, d) in ds.iter().enumerate() {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO webhook_requests (id, request_id, organization_id, workspace_id, subscription_id, \
                   call_id, webhook_url, webhook_type, max_retries, next_attempt_at, message_id, endpoint_id, \
                   queue_key, created_at, status, expires_at) \
                 VALUES (COALESCE($1, nextval('webhook_requests_log_id_seq')), $2, $3, $4, $5, $6, $7, $8, $9, \
                   CASE WHEN NOT $13 THEN now() END, $10, $11, $12, now(), \
                   CASE WHEN $13 THEN 'held' ELSE 'pending' END, $14) RETURNING id",
            )
            .bind(if i == 0 { first_id } else { None })
            .bind(d.request_id)
            .bind(d.organization_id)
            .bind(d.workspace_id)
            .bind(d.subscription_id)
            .bind(d.call_id)
            .bind(d.webhook_url.as_str())
            .bind(&d.webhook_type)
            .bind(i32::try_from(d.max_retries).unwrap_or(i32::MAX))
            .bind(d.message_id)
            .bind(d.endpoint_id)
            .bind(d.queue_key())
            .bind(d.held)
            .bind(d.expires_at)
            .fetch_one(tx.ex())
            .await?;
            log_ids.push(id);
        }
        tx.commit().await?;
        Ok(Dispatched {
            message_id: first.message_id,
            request_id: first.request_id,
            log_id: log_ids[0],
            request_ids: ds.iter().map(|d| d.request_id).collect(),
            duplicate: false,
        })
    }

    async fn list_logs(&self, f: &LogFilter, after: Option<Cursor>, limit: u32, max_bytes: usize) -> Result<LogBatch> {
        self.read_logs(|pool| async move {
            let mut q = list_logs_query("", f, after, limit);
            take_within_budget(q.build().fetch(&pool), limit, max_bytes, log_decoder()).await
        })
        .await
    }

    async fn call_logs(
        &self,
        f: &CallLogFilter,
        after: Option<CallCursor>,
        limit: u32,
        max_bytes: usize,
    ) -> Result<LogBatch> {
        let first = self.read_logs(|db| call_logs_on(db, f, after, limit, max_bytes)).await?;
        // A call the replica knows nothing of yet (dispatched a moment ago)
        // is looked up on the primary, as details are: "no such call" is an
        // answer the caller acts on.
        if first.logs.is_empty() && after.is_none() {
            return call_logs_on(self.db.clone(), f, after, limit, max_bytes).await;
        }
        Ok(first)
    }

    async fn log_details(
        &self,
        request_id: Uuid,
        organization_id: Option<Uuid>,
        from: super::ReadFrom,
    ) -> Result<Option<(LogRecord, Vec<AttemptRecord>)>> {
        if from == super::ReadFrom::Replica {
            let found = self.read_logs(|pool| log_details_on(pool, request_id, organization_id)).await?;
            if found.is_some() {
                return Ok(found);
            }
        }
        // Not replicated yet (or the primary was asked): the primary knows.
        log_details_on(self.db.clone(), request_id, organization_id).await
    }

    async fn due_queues(&self, after: &str, max_queues: u32) -> Result<Vec<DueQueue>> {
        let rows = sqlx::query(sql::DUE_QUEUES)
            .bind(after)
            .bind(i32::try_from(max_queues).unwrap_or(i32::MAX))
            .fetch_all(&self.claims)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(DueQueue {
                    key: row.try_get("k")?,
                    due: row.try_get("due")?,
                    max_in_flight: row.try_get::<Option<i32>, _>("max_in_flight")?.map(|v| v.max(0) as u32),
                    rate_limit_per_second: row
                        .try_get::<Option<i32>, _>("rate_limit_per_second")?
                        .map(|v| v.max(0) as u32),
                })
            })
            .collect()
    }

    async fn claim_from(&self, quotas: &[(String, u32)], lease: Duration) -> Result<Vec<ClaimedDelivery>> {
        if quotas.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&str> = quotas.iter().map(|(k, _)| k.as_str()).collect();
        let counts: Vec<i32> = quotas.iter().map(|(_, q)| i32::try_from(*q).unwrap_or(i32::MAX)).collect();
        let rows =
            sqlx::query(sql::CLAIM_FROM).bind(&keys).bind(&counts).bind(millis(lease)).fetch_all(&self.claims).await?;
        rows.iter().map(claim_from_row).collect()
    }

    async fn claim_due(&self, limit: u32, lease: Duration) -> Result<Vec<ClaimedDelivery>> {
        let rows =
            sqlx::query(sql::CLAIM_DUE).bind(i64::from(limit)).bind(millis(lease)).fetch_all(&self.claims).await?;
        rows.iter().map(claim_from_row).collect()
    }

    #[tracing::instrument(skip_all, fields(request_id = %claim.request_id))]
    async fn record_attempt(&self, claim: &ClaimedDelivery, a: &NewAttempt) -> Result<bool> {
        // Batched with the attempts finishing at the same time: one statement
        // and one commit for all of them (see `record`). The retry time is
        // computed by the database (now() + delay): due times are compared
        // with the database's clock, so they must come from it.
        self.recorder.record(claim, a).await
    }

    async fn release(&self, claims: &[ClaimedDelivery], after: Duration) -> Result<()> {
        self.give_back(sql::RELEASE, claims, Some(after)).await
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.db).await?;
        Ok(())
    }

    fn read_replicas(&self) -> Vec<super::ReplicaState> {
        self.reads.states()
    }

    async fn announce_due(&self) -> Result<()> {
        // Committed without waiting for the WAL flush: NOTIFY gives its
        // transaction an ID and a commit record, and a durable commit per
        // announcement (up to 200 a second) competed with Dispatch's own for
        // the disk. The notification goes out at commit either way; one lost
        // in a crash costs a poll interval.
        sqlx::query("SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, '')")
            .bind(DUE_CHANNEL)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    async fn due_announcements(&self) -> Result<Option<futures_util::stream::BoxStream<'static, ()>>> {
        use futures_util::StreamExt;
        // Its own connection (outside the pool's count). A notification
        // sent while it reconnects is lost: the poll still finds the work.
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.direct).await?;
        listener.listen(DUE_CHANNEL).await?;
        Ok(Some(listener.into_stream().map(|_| ()).boxed()))
    }

    async fn prepare(&self) -> Result<()> {
        self.prepare_days().await
    }

    async fn purge(&self, older_than: chrono::TimeDelta, dry_run: bool) -> Result<PurgeReport> {
        self.purge_days(older_than, dry_run).await
    }

    fn pool_usage(&self) -> Vec<PoolUsage> {
        let usage = |pool, (in_use, idle)| PoolUsage { pool, in_use, idle };
        let mut out = vec![usage("main", self.db.usage())];
        match self.db.pooled() {
            // Behind a pooler the claims share the main pool, and sessions
            // (LISTEN, the migrator's lock) have connections of their own.
            true => out.push(usage("session", super::connections(&self.direct))),
            false => out.push(usage("claims", self.claims.usage())),
        }
        out
    }

    async fn queue_stats(&self) -> Result<QueueStats> {
        let row = sqlx::query(
            "SELECT count(*) AS n, min(created_at) AS oldest FROM webhook_requests WHERE status = 'pending'",
        )
        .fetch_one(&self.db)
        .await?;
        Ok(QueueStats {
            pending: row.try_get::<i64, _>("n")? as u64,
            oldest_pending_created_at: row.try_get("oldest")?,
        })
    }

    async fn insert_api_key(&self, key: &NewApiKey) -> Result<()> {
        let (kind, org) = key.kind.to_stored();
        sqlx::query("INSERT INTO api_keys (prefix, key_hash, kind, organization_id) VALUES ($1, $2, $3, $4)")
            .bind(&key.prefix)
            .bind(&key.key_hash)
            .bind(kind)
            .bind(org)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    async fn find_api_key(&self, prefix: &str) -> Result<Option<ApiKeyRecord>> {
        let row = sqlx::query(
            "SELECT prefix, key_hash, kind, organization_id, created_at, revoked_at FROM api_keys WHERE prefix = $1",
        )
        .bind(prefix)
        .fetch_optional(&self.db)
        .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        let rows = sqlx::query(
            "SELECT prefix, key_hash, kind, organization_id, created_at, revoked_at FROM api_keys \
             ORDER BY created_at DESC, id DESC",
        )
        .fetch_all(&self.db)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    async fn revoke_api_key(&self, prefix: &str) -> Result<bool> {
        let done = sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE prefix = $1 AND revoked_at IS NULL")
            .bind(prefix)
            .execute(&self.db)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

fn key_from_row(row: &PgRow) -> Result<ApiKeyRecord> {
    let kind = KeyKind::from_stored(row.try_get("kind")?, row.try_get("organization_id")?)?;
    Ok(ApiKeyRecord {
        prefix: row.try_get("prefix")?,
        key_hash: row.try_get("key_hash")?,
        kind,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// The query of [`Store::list_logs`] for `limit` logs (plus one, to tell
/// whether there are more), after `prefix` (`EXPLAIN` shows its plan: see
/// the plan test in `tests/api/filter.rs`).
pub fn list_logs_query<'a>(
    prefix: &str,
    f: &LogFilter,
    after: Option<Cursor>,
    limit: u32,
) -> QueryBuilder<'a, sqlx::Postgres> {
    let mut q = QueryBuilder::new(prefix);
    q.push(sql::LIST_PAGE).push(" WHERE true");
    if let Some(v) = f.organization_id {
        q.push(" AND r.organization_id = ").push_bind(v);
    }
    if let Some(v) = f.workspace_id {
        q.push(" AND r.workspace_id = ").push_bind(v);
    }
    if let Some(v) = f.subscription_id {
        q.push(" AND r.subscription_id = ").push_bind(v);
    }
    if let Some(v) = f.call_id {
        q.push(" AND r.call_id = ").push_bind(v);
    }
    if let Some(v) = &f.webhook_type {
        q.push(" AND r.webhook_type = ").push_bind(v.clone());
    }
    if let Some(v) = f.status {
        q.push(" AND r.status = ").push_bind(v.as_str());
    }
    if let Some(v) = f.created_after {
        q.push(" AND r.created_at >= ").push_bind(v);
    }
    if let Some(v) = f.created_before {
        q.push(" AND r.created_at < ").push_bind(v);
    }
    if let Some(v) = f.endpoint_id {
        q.push(" AND r.endpoint_id = ").push_bind(v);
    }
    if let Some(v) = &f.error_category {
        q.push(" AND a.error_category = ").push_bind(v.clone());
    }
    // What the indexed fields above could not say.
    if let Some(e) = &f.expr {
        super::filter_sql::push_and(&mut q, e);
    }
    if let Some(c) = after {
        // A row comparison keeps this a single index range scan.
        q.push(" AND (r.created_at, r.id) < (").push_bind(c.created_at).push(", ").push_bind(c.log_id).push(")");
    }
    // The limit is written into the SQL, not bound: a prepared statement's
    // generic plan cannot see a bound LIMIT and may stop using the keyset
    // index order. It is a number the service computed (at most 101).
    q.push(format_args!(" ORDER BY r.created_at DESC, r.id DESC LIMIT {}", u64::from(limit) + 1));
    q.push(sql::LIST_PAGE_END);
    q
}
