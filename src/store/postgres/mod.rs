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
    AttemptRecord, ClaimedDelivery, Cursor, Dispatched, DueQueue, ExecutionStatus, LogFilter, LogRecord, NewDelivery,
    PurgeReport,
};
use crate::error::{Error, Result};

/// The statements behind the store's hot paths, public so that the
/// benchmark's pgbench baselines run exactly the same SQL.
pub mod sql {
    pub use super::record::RECORD_ATTEMPTS;

    /// The end of both claim statements (after `UPDATE … FROM <picked rows>`):
    /// what a claim returns, with its endpoint's settings and the secrets
    /// that sign it.
    ///
    /// Every lookup in the hot statements is a `LATERAL … LIMIT 1` probe on
    /// a key: a plain join's shape depends on the table sizes the planner
    /// sees, and the generic plan a prepared statement settles on after five
    /// runs is kept for the life of the connection. Planned while the day's
    /// partitions were nearly empty, a join became a hash over a sequential
    /// scan of the whole table, run on every batch for the rest of the day
    /// (the 100k backlog drain slowed from 2,500/s to 900/s that way, with
    /// `autovacuum` off and so no `ANALYZE` to replan it). The claims update
    /// the rows they locked by `id = ANY(<their IDs>)` (IDs are unique across
    /// partitions): a restriction, not a join, so it cannot become a hash
    /// over the table. Not by ctid: a row updated after the statement's
    /// snapshot is locked in its newest version, whose ctid the snapshot's
    /// version does not have. `tests/api/plans.rs` checks the shapes on
    /// never-analyzed empty tables. A table analyzed while empty is planned
    /// from its real size, so a generic plan made then can still scan it
    /// whole until the next ANALYZE replans it (autovacuum's, in production).
    ///
    /// A claim commits without waiting for its WAL flush (`synchronous_commit`
    /// off for its own transaction, set in the statement so that it costs no
    /// round trip). A lease is not something to keep: a claim lost in a
    /// database crash leaves its deliveries unclaimed, so they are sent again
    /// (at-least-once, as after any crash); the attempt made under the lost
    /// lease is still recorded, as a late attempt (kept, not the log's latest,
    /// counted toward max_retries). The attempt's record, which does wait for
    /// its flush, is later in the WAL than the claim, so a durable record
    /// implies a durable claim. Under Dispatch load the flush wait was most
    /// of a claim's time; the claimer, one round at a time, was what kept
    /// delivery behind acceptance (docs/PERFORMANCE.md).
    macro_rules! claimed_with {
        () => {
            "RETURNING r.id, r.created_at, r.request_id, r.lease_id, r.webhook_url, r.webhook_type, \
                       r.attempt_count, r.max_retries, r.message_id, r.organization_id, r.endpoint_id, \
                       r.queue_key, r.manual_from, r.expires_at) \
             SELECT c.*, m.body, e.headers::text AS endpoint_headers, e.policy::text AS endpoint_policy, \
               COALESCE(e.paused OR e.disabled, false) AS hold, \
               COALESCE(e.consecutive_failures, 0) AS endpoint_failures, \
               CASE WHEN c.endpoint_id IS NULL THEN o.secret ELSE e.secret END AS secret, \
               CASE WHEN c.endpoint_id IS NULL THEN o.previous_secret ELSE e.previous_secret END \
                 AS previous_secret, \
               CASE WHEN c.endpoint_id IS NULL THEN o.previous_secret_expires_at \
                 ELSE e.previous_secret_expires_at END AS previous_secret_expires_at \
             FROM claimed c \
             CROSS JOIN (SELECT set_config('synchronous_commit', 'off', true)) lazy_commit \
             CROSS JOIN LATERAL (SELECT m.body FROM webhook_messages m \
               WHERE m.message_id = c.message_id AND m.created_at = c.created_at LIMIT 1) m \
             LEFT JOIN LATERAL (SELECT * FROM endpoints e WHERE e.endpoint_id = c.endpoint_id LIMIT 1) e ON true \
             LEFT JOIN LATERAL (SELECT * FROM organization_secrets o \
               WHERE c.endpoint_id IS NULL AND o.organization_id = c.organization_id LIMIT 1) o ON true"
        };
    }

    /// The columns of a log: the delivery (`r`), its message (`m`) and its
    /// latest attempt (`a`).
    macro_rules! log_columns {
        () => {
            "SELECT r.id, r.request_id, r.organization_id, r.workspace_id, r.subscription_id, \
             r.endpoint_id, r.message_id, \
             r.call_id, m.assistant_id, r.webhook_url, r.webhook_type, m.body, m.metadata, r.status, \
             r.attempt_count, r.max_retries, r.next_attempt_at, r.created_at, r.updated_at, r.expires_at, \
             a.attempt_number, a.attempted_at, a.success, a.status_code, a.response_body, \
             a.response_truncated, a.response_time_ms, a.error_category, a.error_message, a.manual "
        };
    }
    /// A delivery's latest recorded attempt, by its key.
    macro_rules! latest_attempt {
        () => {
            "LEFT JOIN LATERAL (SELECT * FROM webhook_attempts la \
               WHERE la.request_pk = r.id AND la.request_created_at = r.created_at AND la.held \
               ORDER BY la.attempt_number DESC LIMIT 1) a ON true"
        };
    }

    /// Logs, to be followed by a WHERE on the delivery (`r`).
    pub const LOG_SELECT: &str = concat!(
        log_columns!(),
        "FROM webhook_requests r \
         JOIN webhook_messages m ON m.message_id = r.message_id AND m.created_at = r.created_at ",
        latest_attempt!()
    );

    /// The logs of the deliveries keyed ($1 IDs, $2 their creation times),
    /// each found by its key, once however often it is named. Not `WHERE
    /// (r.id, r.created_at) IN (…)`: on tables never analyzed, Postgres
    /// planned that as a parallel hash join over every delivery and message,
    /// read on every look of the live tail.
    pub const LOGS_BY_ID: &str = concat!(
        log_columns!(),
        "FROM (SELECT DISTINCT * FROM unnest($1::int8[], $2::timestamptz[])) AS k(id, created_at) \
         CROSS JOIN LATERAL (SELECT * FROM webhook_requests r \
           WHERE r.id = k.id AND r.created_at = k.created_at LIMIT 1) r \
         CROSS JOIN LATERAL (SELECT m.assistant_id, m.body, m.metadata FROM webhook_messages m \
           WHERE m.message_id = r.message_id AND m.created_at = r.created_at LIMIT 1) m ",
        latest_attempt!()
    );

    /// A page of the log listing, in two steps: the deliveries (`r`) with
    /// their latest attempts (`a`) are filtered, ordered and limited first,
    /// and only the page is joined to its messages. Joined before the limit,
    /// Postgres estimates the two-column message join at one row whatever the
    /// filter, and for a narrow filter (a status and a time bound) hashed the
    /// whole messages table and sorted, rather than read the page in index
    /// order (see the plan test in tests/api/filter.rs).
    pub const LIST_PAGE: &str = "SELECT p.*, m.assistant_id, m.body, m.metadata FROM ( \
         SELECT r.id, r.request_id, r.organization_id, r.workspace_id, r.subscription_id, r.endpoint_id, \
         r.call_id, r.webhook_url, r.webhook_type, r.status, r.attempt_count, r.max_retries, r.next_attempt_at, \
         r.created_at, r.updated_at, r.expires_at, r.message_id, \
         a.attempt_number, a.attempted_at, a.success, a.status_code, a.response_body, \
         a.response_truncated, a.response_time_ms, a.error_category, a.error_message, a.manual \
         FROM webhook_requests r \
         LEFT JOIN LATERAL (SELECT * FROM webhook_attempts la \
             WHERE la.request_pk = r.id AND la.request_created_at = r.created_at AND la.held \
             ORDER BY la.attempt_number DESC LIMIT 1) a ON true";
    /// What closes [`LIST_PAGE`] after its WHERE, ORDER BY and LIMIT.
    pub const LIST_PAGE_END: &str = ") p JOIN webhook_messages m ON m.message_id = p.message_id \
         AND m.created_at = p.created_at ORDER BY p.created_at DESC, p.id DESC";

    /// Dispatch to one endpoint or URL: the idempotency key row (if any),
    /// the message and its delivery, one statement.
    pub const INSERT_DELIVERY: &str = "WITH key AS ( \
                   INSERT INTO idempotency_keys (organization_id, idempotency_key, request_id, log_id, created_at, \
                     message_id) \
                   SELECT $2, $11, $1, nextval('webhook_requests_log_id_seq'), now(), $13 WHERE $11::text IS NOT NULL \
                   ON CONFLICT DO NOTHING RETURNING log_id), \
                 ins AS ( \
                   INSERT INTO webhook_requests (id, request_id, organization_id, workspace_id, subscription_id, \
                     call_id, webhook_url, webhook_type, max_retries, next_attempt_at, message_id, endpoint_id, \
                     queue_key, created_at, status, expires_at) \
                   SELECT COALESCE((SELECT log_id FROM key), nextval('webhook_requests_log_id_seq')), \
                     $1, $2, $3, $4, $5, $7, $8, $12, CASE WHEN NOT $16 THEN now() END, $13, $14, $15, now(), \
                     CASE WHEN $16 THEN 'held' ELSE 'pending' END, $17 \
                   WHERE $11::text IS NULL OR EXISTS (SELECT 1 FROM key) \
                   RETURNING id, created_at), \
                 msg AS ( \
                   INSERT INTO webhook_messages (message_id, organization_id, workspace_id, webhook_type, body, \
                     call_id, assistant_id, metadata, idempotency_key, created_at) \
                   SELECT $13, $2, $3, $8, $9, $5, $6, $10, $11, created_at FROM ins) \
                 SELECT id FROM ins";

    /// Claims up to $1 due deliveries for a lease of $2 milliseconds.
    pub const CLAIM_DUE: &str = concat!(
        "WITH due AS ( \
                   SELECT id, created_at FROM webhook_requests \
                   WHERE status = 'pending' AND next_attempt_at <= now() \
                     AND (lease_id IS NULL OR COALESCE(leased_until, '-infinity') <= now()) \
                   ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED), \
                 claimed AS ( \
                   UPDATE webhook_requests r \
                   SET leased_until = now() + make_interval(secs => $2::float8 / 1000), \
                       lease_id = gen_random_uuid() \
                   WHERE r.id = ANY(ARRAY(SELECT id FROM due)) AND r.created_at = ANY(ARRAY(SELECT created_at FROM due)) \
                   ",
        claimed_with!()
    );

    /// The queues with pending deliveries after $1 in key order, at most $2,
    /// each with whether its oldest delivery is due and its endpoint's caps.
    /// One index probe per queue (a loose index scan), so the cost follows
    /// the number of queues, never their backlogs. A claimed delivery keeps
    /// its due time, so a queue whose work is all in flight looks due here
    /// (the engine copes: see `Engine::run`). Asking whether a due row is
    /// free of a lease cost a second walk over the queue's head on every
    /// round, and delivery under Dispatch load fell from 1.00 to 0.7 of
    /// acceptance.
    pub const DUE_QUEUES: &str = "WITH RECURSIVE keys(k, due_at, n) AS ( \
                   (SELECT queue_key, next_attempt_at, 1 FROM webhook_requests \
                    WHERE status = 'pending' AND queue_key > $1 ORDER BY queue_key, next_attempt_at LIMIT 1) \
                   UNION ALL \
                   (SELECT nxt.queue_key, nxt.next_attempt_at, keys.n + 1 FROM keys \
                    CROSS JOIN LATERAL (SELECT queue_key, next_attempt_at FROM webhook_requests \
                      WHERE status = 'pending' AND queue_key > keys.k ORDER BY queue_key, next_attempt_at LIMIT 1) nxt \
                    WHERE keys.n < $2)) \
                 SELECT keys.k, keys.due_at <= now() AS due, \
                   (e.policy->>'max_in_flight')::int4 AS max_in_flight, \
                   (e.policy->>'rate_limit_per_second')::int4 AS rate_limit_per_second \
                 FROM keys LEFT JOIN LATERAL (SELECT e.policy FROM endpoints e \
                   WHERE e.endpoint_id = CASE WHEN left(keys.k, 2) = 'e:' THEN substr(keys.k, 3)::uuid END \
                   LIMIT 1) e ON true \
                 ORDER BY keys.n";

    /// Claims, from each queue in $1, up to its quota in $2 of due deliveries,
    /// oldest first, for a lease of $3 milliseconds; with each its endpoint's
    /// settings and the secrets that sign it.
    pub const CLAIM_FROM: &str = concat!(
        "WITH picked AS ( \
                   SELECT r.id, r.created_at FROM unnest($1::text[], $2::int4[]) AS q(k, quota) \
                   CROSS JOIN LATERAL (SELECT id, created_at FROM webhook_requests \
                     WHERE status = 'pending' AND queue_key = q.k AND next_attempt_at <= now() \
                       AND (lease_id IS NULL OR COALESCE(leased_until, '-infinity') <= now()) \
                     ORDER BY next_attempt_at LIMIT q.quota FOR UPDATE SKIP LOCKED) r), \
                 claimed AS ( \
                   UPDATE webhook_requests r \
                   SET leased_until = now() + make_interval(secs => $3::float8 / 1000), \
                       lease_id = gen_random_uuid() \
                   WHERE r.id = ANY(ARRAY(SELECT id FROM picked)) AND r.created_at = ANY(ARRAY(SELECT created_at FROM picked)) \
                   ",
        claimed_with!()
    );

    /// Gives claimed deliveries back, due again after $4 milliseconds.
    ///
    /// Rare (a delivery this replica may not send), so a connection may run
    /// it for the first time when the day's partition is large, with a plan
    /// made while it was small. So it is shaped as the claims are: each row
    /// is found by a `LATERAL … LIMIT 1` probe on its key (the limit keeps
    /// the status test out of the probe, where it made the index of pending
    /// rows look cheaper than the key) and locked, in ID order as the
    /// records lock theirs, and the update takes the locked rows by
    /// `id = ANY(…)`; and it is planned with `enable_seqscan` off (see
    /// [`SEQSCAN_OFF`]). (A join of the table with the claimed pairs,
    /// filtered by status, was planned as a walk over every pending row.)
    pub const RELEASE: &str = "WITH picked AS ( \
           SELECT r.id, r.created_at \
           FROM (SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::timestamptz[]) AS c(id, lease_id, created_at) \
             ORDER BY id) c \
           CROSS JOIN LATERAL (SELECT r.id, r.created_at, r.lease_id, r.status FROM webhook_requests r \
             WHERE r.id = c.id AND r.created_at = c.created_at LIMIT 1 FOR NO KEY UPDATE) r \
           WHERE r.lease_id = c.lease_id AND r.status = 'pending') \
         UPDATE webhook_requests r \
         SET next_attempt_at = now() + make_interval(secs => $4::float8 / 1000), lease_id = NULL \
         WHERE r.id = ANY(ARRAY(SELECT id FROM picked)) \
           AND r.created_at = ANY(ARRAY(SELECT created_at FROM picked))";

    /// Set in the transaction of the rare statements that give claims back
    /// or hold them ([`RELEASE`], [`HOLD`]), before they run, so that they
    /// are planned as the claims are on their own connections (see
    /// `claims_pool`): on a partition of a few hundred rows, the update of
    /// the rows found by key was otherwise planned as a scan of the
    /// partition, a plan the connection keeps. They run on the main pool:
    /// the claims' three connections are the claimer's, and a release per
    /// delivery (a replica that cannot open a delivery's secret) or a hold
    /// waiting on an endpoint's lock must not take them from it.
    pub const SEQSCAN_OFF: &str = "SET LOCAL enable_seqscan = off";

    /// Holds claimed deliveries whose endpoint is paused or disabled, and
    /// gives back, due now, those whose endpoint was resumed since the claim.
    /// The endpoint is read again here, its row locked FOR SHARE: a resume
    /// that committed since the claim releases the delivery instead, and one
    /// still running waits for this to commit and then releases what it
    /// held. Holding on the claim's stale view could strand a delivery held
    /// on an active endpoint. Rare, and shaped and planned as [`RELEASE`] is.
    pub const HOLD: &str = "WITH picked AS MATERIALIZED ( \
           SELECT r.id, r.created_at, r.endpoint_id \
           FROM (SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::timestamptz[]) AS c(id, lease_id, created_at) \
             ORDER BY id) c \
           CROSS JOIN LATERAL (SELECT r.id, r.created_at, r.lease_id, r.status, r.endpoint_id \
             FROM webhook_requests r WHERE r.id = c.id AND r.created_at = c.created_at LIMIT 1 FOR NO KEY UPDATE) r \
           WHERE r.lease_id = c.lease_id AND r.status = 'pending'), \
         still AS (SELECT e.endpoint_id FROM (SELECT DISTINCT endpoint_id FROM picked) p \
           CROSS JOIN LATERAL (SELECT e.endpoint_id FROM endpoints e \
             WHERE e.endpoint_id = p.endpoint_id AND (e.paused OR e.disabled) FOR SHARE) e), \
         upd AS (UPDATE webhook_requests r SET \
           status = CASE WHEN r.endpoint_id IN (SELECT endpoint_id FROM still) THEN 'held' ELSE 'pending' END, \
           next_attempt_at = CASE WHEN r.endpoint_id IN (SELECT endpoint_id FROM still) THEN NULL ELSE now() END, \
           lease_id = NULL, updated_at = now() \
         WHERE r.id = ANY(ARRAY(SELECT id FROM picked)) \
           AND r.created_at = ANY(ARRAY(SELECT created_at FROM picked)) \
         RETURNING r.id, r.created_at, r.status) \
         INSERT INTO delivery_events (log_id, request_created_at, status, reason) \
         SELECT id, created_at, 'held', 'held' FROM upd WHERE status = 'held'";

    /// Records one attempt and the request's new state, one statement. A
    /// claim records at most one attempt: if this lease's attempt is already
    /// there (the reply to an earlier try was lost), nothing changes. Retry or
    /// fail is decided on the locked row: a retry past max_retries (counting
    /// late attempts) fails. A late attempt (lease lost) is kept, marked not
    /// held, and changes neither the status nor the log's latest attempt.
    pub const RECORD_ATTEMPT: &str = "WITH old AS ( \
                   SELECT id, attempt_count, max_retries, manual_from, \
                     COALESCE(lease_id = $2 AND status = 'pending', false) AS held \
                   FROM webhook_requests r \
                   LEFT JOIN LATERAL (SELECT true AS found FROM webhook_attempts \
                       WHERE request_pk = $1 AND lease_id = $2 AND request_created_at = $13 LIMIT 1) seen ON true \
                   WHERE r.id = $1 AND r.created_at = $13 AND seen.found IS NULL \
                   FOR UPDATE OF r), \
                 dec AS ( \
                   SELECT old.*, CASE WHEN NOT old.held THEN NULL \
                     WHEN $3 = 'pending' AND old.attempt_count + 1 - COALESCE(old.manual_from, 0) > old.max_retries \
                       THEN 'failed' \
                     ELSE $3 END AS new_status FROM old), \
                 upd AS ( \
                   UPDATE webhook_requests r SET \
                     attempt_count = dec.attempt_count + 1, \
                     status = COALESCE(dec.new_status, r.status), \
                     next_attempt_at = CASE WHEN NOT dec.held THEN r.next_attempt_at \
                       WHEN dec.new_status = 'pending' THEN now() + make_interval(secs => $4::float8 / 1000) END, \
                     lease_id = CASE WHEN dec.held THEN NULL ELSE r.lease_id END, \
                     leased_until = CASE WHEN dec.held THEN NULL ELSE r.leased_until END, \
                     updated_at = now() \
                   FROM dec WHERE r.id = dec.id AND r.created_at = $13 \
                   RETURNING r.id, r.created_at, r.attempt_count, dec.held, dec.manual_from IS NOT NULL AS manual), \
                 ins AS ( \
                   INSERT INTO webhook_attempts (request_pk, request_created_at, attempt_number, attempted_at, \
                     success, status_code, response_body, response_truncated, response_time_ms, error_category, \
                     error_message, lease_id, held, manual) \
                   SELECT id, created_at, attempt_count, $5, $6, $7, $8, $9, $10, $11, $12, $2, held, manual FROM upd) \
                 SELECT COALESCE((SELECT held FROM old), EXISTS (SELECT 1 FROM webhook_attempts \
                   WHERE request_pk = $1 AND lease_id = $2 AND request_created_at = $13)) AS held";
}

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

fn status_from_db(s: &str) -> Result<ExecutionStatus> {
    ExecutionStatus::parse(s).ok_or_else(|| Error::internal(anyhow::anyhow!("unknown status {s:?} in store")))
}

fn to_u32(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

/// Declares where each named column sits in a result set, found once per
/// result rather than for every value: by name, `try_get` hashes the name
/// for each value of each row, which was an eighth of a listing page's CPU
/// in a profile of the server (docs/PERFORMANCE.md). The logs' and
/// attempts' columns are then read with `try_get_unchecked`: checking each
/// value's type against the Rust type's list of compatible Postgres types
/// was another twelfth. Their types are not checked, so the SELECTs these
/// decode (`LOG_SELECT`, `LIST_PAGE`, `LOGS_BY_ID`, `ATTEMPT_COLUMNS` here
/// and in the tail) must keep the column types the Rust fields have: int8
/// for i64, int4 for i32, timestamptz (not timestamp) for times, jsonb for
/// the metadata.
macro_rules! column_positions {
    ($name:ident { $($col:ident),* $(,)? }) => {
        #[derive(Debug, Clone, Copy)]
        pub(crate) struct $name { $($col: usize),* }
        impl $name {
            pub(crate) fn of(row: &PgRow) -> Result<Self> {
                use sqlx::Column;
                Ok(Self { $($col: row.try_column(stringify!($col))?.ordinal()),* })
            }
        }
    };
}

column_positions!(AttemptColumns {
    attempt_number,
    attempted_at,
    success,
    status_code,
    response_body,
    response_truncated,
    response_time_ms,
    error_category,
    error_message,
    manual,
});

column_positions!(DeliveryColumns {
    id,
    request_id,
    message_id,
    organization_id,
    workspace_id,
    subscription_id,
    call_id,
    assistant_id,
    webhook_url,
    webhook_type,
    body,
    metadata,
    status,
    attempt_count,
    max_retries,
    next_attempt_at,
    expires_at,
    endpoint_id,
    created_at,
    updated_at,
});

/// The columns of a log: its delivery and message, and its latest attempt.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogColumns {
    delivery: DeliveryColumns,
    attempt: AttemptColumns,
}

impl LogColumns {
    pub(crate) fn of(row: &PgRow) -> Result<Self> {
        Ok(Self { delivery: DeliveryColumns::of(row)?, attempt: AttemptColumns::of(row)? })
    }
}

/// A decoder of the rows of one result: finds the columns (`of`) in the
/// first row, then reads every row by position (`at`).
fn decoder<C: Copy, T>(
    of: fn(&PgRow) -> Result<C>,
    at: fn(&C, &PgRow) -> Result<T>,
) -> impl FnMut(&PgRow) -> Result<T> {
    let mut columns = None;
    move |row| {
        let c = match columns {
            Some(c) => c,
            None => *columns.insert(of(row)?),
        };
        at(&c, row)
    }
}

/// Decodes rows of attempts, finding the columns once.
pub(crate) fn attempts_from_rows(rows: &[PgRow]) -> Result<Vec<AttemptRecord>> {
    rows.iter().map(decoder(AttemptColumns::of, attempt_at)).collect()
}

/// A timestamptz read straight from its binary form, microseconds since
/// 2000-01-01 UTC. sqlx's own decode goes through `DateTime<FixedOffset>`
/// and `NaiveDateTime` arithmetic: about 380 instructions a value against
/// about 150 here. A log carries up to five; in a listing page's profile
/// they went from 17.5M to 7.0M of 390M instructions (docs/PERFORMANCE.md).
struct PgTime(DateTime<Utc>);

/// 2000-01-01T00:00:00Z in microseconds since the Unix epoch.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

impl sqlx::Type<sqlx::Postgres> for PgTime {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <DateTime<Utc> as sqlx::Type<sqlx::Postgres>>::type_info()
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for PgTime {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> std::result::Result<Self, sqlx::error::BoxDynError> {
        if value.format() == sqlx::postgres::PgValueFormat::Text {
            return <DateTime<Utc> as sqlx::Decode<sqlx::Postgres>>::decode(value).map(PgTime);
        }
        let micros = i64::from_be_bytes(value.as_bytes()?.try_into()?);
        micros
            .checked_add(POSTGRES_EPOCH_MICROS)
            .and_then(DateTime::from_timestamp_micros)
            .map(PgTime)
            .ok_or_else(|| format!("timestamptz {micros} is out of range").into())
    }
}

fn time_at(row: &PgRow, at: usize) -> Result<DateTime<Utc>> {
    Ok(row.try_get_unchecked::<PgTime, _>(at)?.0)
}

fn opt_time_at(row: &PgRow, at: usize) -> Result<Option<DateTime<Utc>>> {
    Ok(row.try_get_unchecked::<Option<PgTime>, _>(at)?.map(|t| t.0))
}

fn attempt_at(c: &AttemptColumns, row: &PgRow) -> Result<AttemptRecord> {
    Ok(AttemptRecord {
        attempt_number: to_u32(row.try_get_unchecked(c.attempt_number)?),
        attempted_at: time_at(row, c.attempted_at)?,
        success: row.try_get_unchecked(c.success)?,
        status_code: row.try_get_unchecked(c.status_code)?,
        response_body: row.try_get_unchecked(c.response_body)?,
        response_truncated: row.try_get_unchecked(c.response_truncated)?,
        response_time_ms: row.try_get_unchecked(c.response_time_ms)?,
        error_category: row.try_get_unchecked(c.error_category)?,
        error_message: row.try_get_unchecked(c.error_message)?,
        manual: row.try_get_unchecked(c.manual)?,
    })
}

pub(crate) fn log_from_row(row: &PgRow) -> Result<LogRecord> {
    log_at(&LogColumns::of(row)?, row)
}

/// Decodes rows of logs, finding the columns once.
pub(crate) fn logs_from_rows(rows: &[PgRow]) -> Result<Vec<LogRecord>> {
    rows.iter().map(log_decoder()).collect()
}

/// A decoder of streamed log rows that finds the columns in the first.
pub(crate) fn log_decoder() -> impl FnMut(&PgRow) -> Result<LogRecord> {
    decoder(LogColumns::of, log_at)
}

fn log_at(c: &LogColumns, row: &PgRow) -> Result<LogRecord> {
    let a = &c.attempt;
    // No latest attempt: the LEFT JOIN's columns are all NULL.
    let last_attempt = match sqlx::ValueRef::is_null(&row.try_get_raw(a.attempt_number)?) {
        false => Some(attempt_at(a, row)?),
        true => None,
    };
    let d = &c.delivery;
    Ok(LogRecord {
        log_id: row.try_get_unchecked(d.id)?,
        request_id: row.try_get_unchecked(d.request_id)?,
        message_id: row.try_get_unchecked(d.message_id)?,
        organization_id: row.try_get_unchecked(d.organization_id)?,
        workspace_id: row.try_get_unchecked(d.workspace_id)?,
        subscription_id: row.try_get_unchecked(d.subscription_id)?,
        call_id: row.try_get_unchecked(d.call_id)?,
        assistant_id: row.try_get_unchecked(d.assistant_id)?,
        webhook_url: row.try_get_unchecked(d.webhook_url)?,
        webhook_type: row.try_get_unchecked(d.webhook_type)?,
        body: row.try_get_unchecked(d.body)?,
        metadata: row.try_get_unchecked(d.metadata)?,
        status: status_from_db(row.try_get_unchecked(d.status)?)?,
        attempt_count: to_u32(row.try_get_unchecked(d.attempt_count)?),
        max_retries: to_u32(row.try_get_unchecked(d.max_retries)?),
        next_attempt_at: opt_time_at(row, d.next_attempt_at)?,
        expires_at: opt_time_at(row, d.expires_at)?,
        endpoint_id: row.try_get_unchecked(d.endpoint_id)?,
        created_at: time_at(row, d.created_at)?,
        updated_at: time_at(row, d.updated_at)?,
        last_attempt,
    })
}

fn claim_from_row(row: &PgRow) -> Result<ClaimedDelivery> {
    Ok(ClaimedDelivery {
        log_id: row.try_get("id")?,
        created_at: row.try_get("created_at")?,
        request_id: row.try_get("request_id")?,
        lease_id: row.try_get("lease_id")?,
        webhook_url: row.try_get("webhook_url")?,
        webhook_type: row.try_get("webhook_type")?,
        body: row.try_get("body")?,
        attempt_count: to_u32(row.try_get("attempt_count")?),
        max_retries: to_u32(row.try_get("max_retries")?),
        message_id: row.try_get("message_id")?,
        organization_id: row.try_get("organization_id")?,
        endpoint_id: row.try_get("endpoint_id")?,
        endpoint: super::endpoints::settings(row.try_get("endpoint_headers")?, row.try_get("endpoint_policy")?)?,
        secrets: super::endpoints::sealed(
            row.try_get("secret")?,
            row.try_get("previous_secret")?,
            row.try_get("previous_secret_expires_at")?,
        ),
        queue_key: row.try_get::<Option<String>, _>("queue_key")?.unwrap_or_default(),
        manual_from: row.try_get::<Option<i32>, _>("manual_from")?.map_or(0, to_u32),
        hold: row.try_get("hold")?,
        endpoint_failures: to_u32(row.try_get("endpoint_failures")?),
        expires_at: row.try_get("expires_at")?,
    })
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
