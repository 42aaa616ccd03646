//! The embedded store: SQLite in one file, the default when no database URL
//! is given. WAL mode; every write goes through one connection, so writes are
//! serialised in the process and `database is locked` never reaches a caller
//! (a busy timeout covers other processes on the same file).
//!
//! Maintenance needs no lock here, unlike Postgres' advisory lock: the store
//! belongs to one `hookpost serve` process, and its purge is batched DELETEs
//! through the one writer, which serialises it with every other write. The
//! process's clock is the store's clock (SQLite has no server), so due times
//! and the purge cutoff are taken from it.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};
use uuid::Uuid;

use super::{CallCursor, CallLogFilter, LogBatch, NewAttempt, QueueStats, Store, take_within_budget};
use crate::auth::{ApiKeyRecord, KeyKind, NewApiKey};
use crate::domain::{
    AttemptRecord, ClaimedDelivery, Cursor, Dispatched, DueQueue, ExecutionStatus, LogFilter, LogRecord, NewDelivery,
    NextStep, PurgeReport,
};
use crate::error::{Error, Result};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

#[derive(Clone)]
pub struct SqliteStore {
    /// Readers (WAL lets them run beside the writer).
    read: SqlitePool,
    /// The one writer connection.
    write: SqlitePool,
    /// For migrations: foreign keys off, so that a migration can rebuild a
    /// table the documented way (new table, copy, drop the old one) without
    /// the drop cascading into the tables that reference it. Nothing checks
    /// the keys then (20261128000002 says otherwise in a comment, which
    /// cannot change without changing its checksum): such a migration keeps
    /// every referenced ID.
    migrate_options: SqliteConnectOptions,
}

/// Logs with these message bodies and this latest response body, to be
/// followed by a WHERE on the delivery (`r`).
macro_rules! log_select {
    ($message_bodies:literal, $response_body:literal) => {
        concat!(
            "SELECT r.id, r.request_id, r.organization_id, r.workspace_id, r.subscription_id, \
             r.endpoint_id, COALESCE(r.message_id, r.request_id) AS message_id, \
             r.call_id, m.assistant_id, r.webhook_url, r.webhook_type, ",
            $message_bodies,
            ", r.status, r.attempt_count, \
             r.max_retries, r.next_attempt_at, r.created_at, r.updated_at, r.expires_at, \
             a.attempt_number, a.attempted_at, a.success, a.status_code, ",
            $response_body,
            ", a.response_truncated, \
             a.response_time_ms, a.error_category, a.error_message, a.manual \
             FROM webhook_requests r \
             JOIN webhook_messages m ON m.message_id = r.message_id \
             LEFT JOIN webhook_attempts a ON a.request_pk = r.id AND a.attempt_number = \
               (SELECT max(la.attempt_number) FROM webhook_attempts la WHERE la.request_pk = r.id AND la.held)"
        )
    };
}

pub(crate) const LOG_SELECT: &str = log_select!("m.body, m.metadata", "a.response_body");
/// [`LOG_SELECT`] in the BASIC view: the bodies as empty as
/// `LogRecord::strip_bodies` leaves them, never read.
pub(crate) const LOG_SELECT_BASIC: &str = log_select!("'' AS body, NULL AS metadata", "'' AS response_body");

pub(crate) const ATTEMPT_COLUMNS: &str = "attempt_number, attempted_at, success, status_code, response_body, \
     response_truncated, response_time_ms, error_category, error_message, manual";
/// [`ATTEMPT_COLUMNS`] in the BASIC view: the response body left unread.
pub(crate) const ATTEMPT_COLUMNS_BASIC: &str = "attempt_number, attempted_at, success, status_code, \
     '' AS response_body, response_truncated, response_time_ms, error_category, error_message, manual";

pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn time(us: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| Error::internal(anyhow::anyhow!("bad time {us} in store")))
}

fn opt_time(us: Option<i64>) -> Result<Option<DateTime<Utc>>> {
    us.map(time).transpose()
}

fn uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| Error::internal(anyhow::anyhow!("bad UUID {s:?} in store: {e}")))
}

fn opt_uuid(s: Option<String>) -> Result<Option<Uuid>> {
    s.as_deref().map(uuid).transpose()
}

fn to_u32(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

pub(crate) fn attempt_from_row(row: &SqliteRow) -> Result<AttemptRecord> {
    Ok(AttemptRecord {
        attempt_number: to_u32(row.try_get("attempt_number")?),
        attempted_at: time(row.try_get("attempted_at")?)?,
        success: row.try_get("success")?,
        status_code: row.try_get("status_code")?,
        response_body: row.try_get("response_body")?,
        response_truncated: row.try_get("response_truncated")?,
        response_time_ms: row.try_get("response_time_ms")?,
        error_category: row.try_get("error_category")?,
        error_message: row.try_get("error_message")?,
        manual: row.try_get("manual")?,
    })
}

pub(crate) fn log_from_row(row: &SqliteRow) -> Result<LogRecord> {
    let last_attempt = match row.try_get::<Option<i64>, _>("attempt_number")? {
        Some(_) => Some(attempt_from_row(row)?),
        None => None,
    };
    let status: String = row.try_get("status")?;
    let metadata: Option<String> = row.try_get("metadata")?;
    Ok(LogRecord {
        log_id: row.try_get("id")?,
        request_id: uuid(row.try_get("request_id")?)?,
        message_id: uuid(row.try_get("message_id")?)?,
        organization_id: uuid(row.try_get("organization_id")?)?,
        workspace_id: opt_uuid(row.try_get("workspace_id")?)?,
        subscription_id: opt_uuid(row.try_get("subscription_id")?)?,
        call_id: row.try_get("call_id")?,
        assistant_id: row.try_get("assistant_id")?,
        webhook_url: row.try_get("webhook_url")?,
        webhook_type: row.try_get("webhook_type")?,
        body: row.try_get("body")?,
        metadata: metadata.and_then(|m| serde_json::from_str(&m).ok()),
        status: ExecutionStatus::parse(&status)
            .ok_or_else(|| Error::internal(anyhow::anyhow!("unknown status {status:?} in store")))?,
        attempt_count: to_u32(row.try_get("attempt_count")?),
        max_retries: to_u32(row.try_get("max_retries")?),
        next_attempt_at: opt_time(row.try_get("next_attempt_at")?)?,
        expires_at: opt_time(row.try_get("expires_at")?)?,
        endpoint_id: opt_uuid(row.try_get("endpoint_id")?)?,
        created_at: time(row.try_get("created_at")?)?,
        updated_at: time(row.try_get("updated_at")?)?,
        last_attempt,
    })
}

fn key_from_row(row: &SqliteRow) -> Result<ApiKeyRecord> {
    let kind: String = row.try_get("kind")?;
    let kind = KeyKind::from_stored(&kind, opt_uuid(row.try_get("organization_id")?)?)?;
    Ok(ApiKeyRecord {
        prefix: row.try_get("prefix")?,
        key_hash: row.try_get("key_hash")?,
        kind,
        created_at: time(row.try_get("created_at")?)?,
        revoked_at: opt_time(row.try_get("revoked_at")?)?,
    })
}

/// The rows claimed under `lease_id`, with their endpoint's settings and
/// the secrets that sign them.
async fn claimed_with(tx: &mut sqlx::SqliteConnection, lease_id: &str) -> Result<Vec<ClaimedDelivery>> {
    let rows = sqlx::query(
        "SELECT r.id, r.created_at, r.request_id, r.lease_id, r.webhook_url, r.webhook_type, m.body, \
           r.attempt_count, r.max_retries, COALESCE(r.message_id, r.request_id) AS message_id, \
           r.organization_id, r.endpoint_id, r.queue_key, e.headers AS endpoint_headers, e.policy AS endpoint_policy, \
           r.manual_from, r.expires_at, COALESCE(e.paused OR e.disabled, 0) AS hold, \
           COALESCE(e.consecutive_failures, 0) AS endpoint_failures, \
           CASE WHEN r.endpoint_id IS NULL THEN o.secret ELSE e.secret END AS secret, \
           CASE WHEN r.endpoint_id IS NULL THEN o.previous_secret ELSE e.previous_secret END AS previous_secret, \
           CASE WHEN r.endpoint_id IS NULL THEN o.previous_secret_expires_at \
             ELSE e.previous_secret_expires_at END AS previous_secret_expires_at \
         FROM webhook_requests r \
         JOIN webhook_messages m ON m.message_id = r.message_id \
         LEFT JOIN endpoints e ON e.endpoint_id = r.endpoint_id \
         LEFT JOIN organization_secrets o ON r.endpoint_id IS NULL AND o.organization_id = r.organization_id \
         WHERE r.lease_id = ? AND r.status = 'pending' ORDER BY r.next_attempt_at",
    )
    .bind(lease_id)
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|row| {
            let endpoint_id: Option<String> = row.try_get("endpoint_id")?;
            let until: Option<i64> = row.try_get("previous_secret_expires_at")?;
            Ok(ClaimedDelivery {
                log_id: row.try_get("id")?,
                created_at: time(row.try_get("created_at")?)?,
                request_id: uuid(row.try_get("request_id")?)?,
                lease_id: uuid(row.try_get("lease_id")?)?,
                webhook_url: row.try_get("webhook_url")?,
                webhook_type: row.try_get("webhook_type")?,
                body: row.try_get("body")?,
                attempt_count: to_u32(row.try_get("attempt_count")?),
                max_retries: to_u32(row.try_get("max_retries")?),
                message_id: uuid(row.try_get("message_id")?)?,
                organization_id: uuid(row.try_get("organization_id")?)?,
                endpoint_id: endpoint_id.as_deref().map(uuid).transpose()?,
                endpoint: super::endpoints::settings(
                    row.try_get("endpoint_headers")?,
                    row.try_get("endpoint_policy")?,
                )?,
                secrets: super::endpoints::sealed(
                    row.try_get("secret")?,
                    row.try_get("previous_secret")?,
                    until.map(time).transpose()?,
                ),
                queue_key: row.try_get::<Option<String>, _>("queue_key")?.unwrap_or_default(),
                manual_from: row.try_get::<Option<i64>, _>("manual_from")?.map_or(0, to_u32),
                hold: row.try_get("hold")?,
                endpoint_failures: to_u32(row.try_get("endpoint_failures")?),
                expires_at: opt_time(row.try_get("expires_at")?)?,
            })
        })
        .collect()
}

impl SqliteStore {
    /// The Dispatch `d`'s idempotency key was first used for.
    async fn earlier_dispatch(&self, d: &NewDelivery) -> Result<Dispatched> {
        let row = sqlx::query(
            "SELECT id, request_id, COALESCE(message_id, request_id) AS message_id FROM webhook_requests \
             WHERE organization_id = ? AND idempotency_key = ?",
        )
        .bind(d.organization_id.to_string())
        .bind(&d.idempotency_key)
        .fetch_one(&self.write)
        .await?;
        let message_id: String = row.try_get("message_id")?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT request_id FROM webhook_requests WHERE message_id = ? AND organization_id = ? ORDER BY id",
        )
        .bind(&message_id)
        .bind(d.organization_id.to_string())
        .fetch_all(&self.write)
        .await?;
        Ok(Dispatched {
            message_id: uuid(&message_id)?,
            request_id: uuid(row.try_get("request_id")?)?,
            log_id: row.try_get("id")?,
            request_ids: ids.iter().map(|s| uuid(s)).collect::<Result<_>>()?,
            duplicate: true,
        })
    }

    /// The readers' pool, for the other concerns' statements.
    pub(crate) fn reader(&self) -> &SqlitePool {
        &self.read
    }

    /// The one writer.
    pub(crate) fn writer(&self) -> &SqlitePool {
        &self.write
    }

    /// Opens (creating when missing) the database at `url` (`sqlite://path`).
    pub async fn connect(url: &str, max_readers: u32, acquire_timeout: Duration) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .context("parsing the SQLite URL")?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Dispatch answers only after its commit is on disk.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        create_private(options.get_filename())?;
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(acquire_timeout.max(Duration::from_secs(30)))
            .connect_with(options.clone())
            .await
            .context("opening the SQLite database")?;
        let read = SqlitePoolOptions::new()
            .max_connections(max_readers.max(1))
            .acquire_timeout(acquire_timeout)
            .connect_with(options.clone().read_only(false))
            .await
            .context("opening the SQLite database")?;
        Ok(Self { read, write, migrate_options: options.foreign_keys(false) })
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect_with(&self.migrate_options)
            .await
            .context("opening the SQLite database to migrate it")?;
        MIGRATOR.run(&mut conn).await.context("applying the SQLite migrations")?;
        conn.close().await.context("closing the migration connection")
    }
}

/// Creates the database file readable by its owner only (0600) when it does
/// not exist yet: it holds payloads and API key hashes, and SQLite would
/// create it with the umask's mode (usually world-readable). SQLite gives its
/// -wal and -shm files the database file's mode.
fn create_private(path: &std::path::Path) -> anyhow::Result<()> {
    if path.as_os_str().is_empty() || path.as_os_str() == ":memory:" {
        return Ok(());
    }
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    match open.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(anyhow::anyhow!("creating the SQLite database {}: {e}", path.display())),
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_delivery(&self, d: &NewDelivery) -> Result<Dispatched> {
        self.insert_deliveries(std::slice::from_ref(d)).await
    }

    async fn insert_deliveries(&self, ds: &[NewDelivery]) -> Result<Dispatched> {
        let Some(first) = ds.first() else {
            return Err(Error::internal(anyhow::anyhow!("a message with no delivery")));
        };
        let now = micros(Utc::now());
        // One transaction on the one writer. The key lives on the first
        // delivery, whose unique (organization, key) decides a duplicate.
        let mut tx = self.write.begin().await?;
        let mut log_ids = Vec::with_capacity(ds.len());
        for (i, d) in ds.iter().enumerate() {
            let key = if i == 0 { d.idempotency_key.as_deref() } else { None };
            let row = sqlx::query(
                "INSERT INTO webhook_requests (request_id, organization_id, workspace_id, subscription_id, call_id, \
                   webhook_url, webhook_type, idempotency_key, max_retries, \
                   next_attempt_at, created_at, updated_at, message_id, endpoint_id, queue_key, status, expires_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (organization_id, idempotency_key) DO NOTHING RETURNING id",
            )
            .bind(d.request_id.to_string())
            .bind(d.organization_id.to_string())
            .bind(d.workspace_id.map(|u| u.to_string()))
            .bind(d.subscription_id.map(|u| u.to_string()))
            .bind(d.call_id)
            .bind(d.webhook_url.as_str())
            .bind(&d.webhook_type)
            .bind(key)
            .bind(i64::from(d.max_retries))
            .bind((!d.held).then_some(now))
            .bind(now)
            .bind(now)
            .bind(d.message_id.to_string())
            .bind(d.endpoint_id.map(|u| u.to_string()))
            .bind(d.queue_key())
            .bind(if d.held { "held" } else { "pending" })
            .bind(d.expires_at.map(micros))
            .fetch_optional(&mut *tx)
            .await?;
            match row {
                Some(row) => log_ids.push(row.try_get::<i64, _>("id")?),
                None => {
                    drop(tx);
                    return self.earlier_dispatch(first).await;
                }
            }
        }
        // The message once, after its first delivery has decided that this
        // is not a duplicate.
        sqlx::query(
            "INSERT INTO webhook_messages (message_id, organization_id, workspace_id, webhook_type, body, call_id, \
               assistant_id, metadata, idempotency_key, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(first.message_id.to_string())
        .bind(first.organization_id.to_string())
        .bind(first.workspace_id.map(|u| u.to_string()))
        .bind(&first.webhook_type)
        .bind(&first.body)
        .bind(first.call_id)
        .bind(first.assistant_id)
        .bind(first.metadata.as_ref().map(|m| m.to_string()))
        .bind(first.idempotency_key.as_deref())
        .bind(now)
        .execute(&mut *tx)
        .await?;
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
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(LOG_SELECT);
        q.push(" WHERE 1 = 1");
        if let Some(v) = f.organization_id {
            q.push(" AND r.organization_id = ").push_bind(v.to_string());
        }
        if let Some(v) = f.workspace_id {
            q.push(" AND r.workspace_id = ").push_bind(v.to_string());
        }
        if let Some(v) = f.subscription_id {
            q.push(" AND r.subscription_id = ").push_bind(v.to_string());
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
            q.push(" AND r.created_at >= ").push_bind(micros(v));
        }
        if let Some(v) = f.created_before {
            q.push(" AND r.created_at < ").push_bind(micros(v));
        }
        if let Some(v) = f.endpoint_id {
            q.push(" AND r.endpoint_id = ").push_bind(v.to_string());
        }
        if let Some(v) = &f.error_category {
            q.push(" AND a.error_category = ").push_bind(v.clone());
        }
        // What the indexed fields above could not say.
        if let Some(e) = &f.expr {
            super::filter_sql::push_and(&mut q, e);
        }
        if let Some(c) = after {
            q.push(" AND (r.created_at, r.id) < (")
                .push_bind(micros(c.created_at))
                .push(", ")
                .push_bind(c.log_id)
                .push(")");
        }
        q.push(" ORDER BY r.created_at DESC, r.id DESC LIMIT ").push_bind(i64::from(limit) + 1);
        take_within_budget(q.build().fetch(&self.read), limit, max_bytes, log_from_row).await
    }

    async fn call_logs(
        &self,
        f: &CallLogFilter,
        after: Option<CallCursor>,
        limit: u32,
        max_bytes: usize,
    ) -> Result<LogBatch> {
        let select = LOG_SELECT.replacen("SELECT ", "SELECT COALESCE(a.attempted_at, r.created_at) AS sort_at, ", 1);
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT * FROM (");
        q.push(select).push(" WHERE r.call_id = ").push_bind(f.call_id);
        if let Some(v) = f.organization_id {
            q.push(" AND r.organization_id = ").push_bind(v.to_string());
        }
        if let Some(v) = &f.webhook_type {
            q.push(" AND r.webhook_type = ").push_bind(v.clone());
        }
        q.push(") l");
        if let Some(c) = after {
            q.push(" WHERE (l.sort_at, l.id) > (").push_bind(micros(c.at)).push(", ").push_bind(c.log_id).push(")");
        }
        q.push(" ORDER BY l.sort_at, l.id LIMIT ").push_bind(i64::from(limit) + 1);
        take_within_budget(q.build().fetch(&self.read), limit, max_bytes, log_from_row).await
    }

    async fn log_details(
        &self,
        request_id: Uuid,
        organization_id: Option<Uuid>,
        // One file: every read sees every committed write.
        _from: super::ReadFrom,
    ) -> Result<Option<(LogRecord, Vec<AttemptRecord>)>> {
        let sql = format!("{LOG_SELECT} WHERE r.request_id = ? AND (? IS NULL OR r.organization_id = ?)");
        let org = organization_id.map(|o| o.to_string());
        let Some(row) =
            sqlx::query(&sql).bind(request_id.to_string()).bind(&org).bind(&org).fetch_optional(&self.read).await?
        else {
            return Ok(None);
        };
        let log = log_from_row(&row)?;
        let sql =
            format!("SELECT {ATTEMPT_COLUMNS} FROM webhook_attempts WHERE request_pk = ? ORDER BY attempt_number DESC");
        let rows = sqlx::query(&sql).bind(log.log_id).fetch_all(&self.read).await?;
        let attempts = rows.iter().map(attempt_from_row).collect::<Result<_>>()?;
        Ok(Some((log, attempts)))
    }

    async fn due_queues(&self, after: &str, max_queues: u32) -> Result<Vec<DueQueue>> {
        // A loose index scan, as on Postgres: one probe per queue.
        let rows = sqlx::query(
            "WITH RECURSIVE keys(k, n) AS ( \
               SELECT (SELECT queue_key FROM webhook_requests WHERE status = 'pending' AND queue_key > ? \
                       ORDER BY queue_key LIMIT 1), 1 \
               UNION ALL \
               SELECT (SELECT queue_key FROM webhook_requests WHERE status = 'pending' AND queue_key > keys.k \
                       ORDER BY queue_key LIMIT 1), keys.n + 1 FROM keys WHERE keys.k IS NOT NULL AND keys.n < ?) \
             SELECT keys.k, \
               (SELECT min(next_attempt_at) FROM webhook_requests WHERE status = 'pending' AND queue_key = keys.k) \
                 <= ? AS due, \
               json_extract(e.policy, '$.max_in_flight') AS max_in_flight, \
               json_extract(e.policy, '$.rate_limit_per_second') AS rate_limit_per_second \
             FROM keys LEFT JOIN endpoints e ON 'e:' || e.endpoint_id = keys.k \
             WHERE keys.k IS NOT NULL ORDER BY keys.n",
        )
        .bind(after)
        .bind(i64::from(max_queues))
        .bind(micros(Utc::now()))
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DueQueue {
                    key: row.try_get("k")?,
                    due: row.try_get("due")?,
                    max_in_flight: row.try_get::<Option<i64>, _>("max_in_flight")?.map(|v| v.clamp(0, 1000) as u32),
                    rate_limit_per_second: row
                        .try_get::<Option<i64>, _>("rate_limit_per_second")?
                        .map(|v| v.clamp(0, 10_000) as u32),
                })
            })
            .collect()
    }

    async fn claim_from(&self, quotas: &[(String, u32)], lease: Duration) -> Result<Vec<ClaimedDelivery>> {
        let now = Utc::now();
        let until = micros(now) + i64::try_from(lease.as_micros()).unwrap_or(i64::MAX / 2);
        let lease_id = Uuid::new_v4().to_string();
        let mut tx = self.write.begin().await?;
        for (key, quota) in quotas {
            sqlx::query(
                "UPDATE webhook_requests SET next_attempt_at = ?, lease_id = ? \
                 WHERE id IN (SELECT id FROM webhook_requests WHERE status = 'pending' AND queue_key = ? \
                              AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?)",
            )
            .bind(until)
            .bind(&lease_id)
            .bind(key)
            .bind(micros(now))
            .bind(i64::from(*quota))
            .execute(&mut *tx)
            .await?;
        }
        let claims = claimed_with(&mut tx, &lease_id).await?;
        tx.commit().await?;
        Ok(claims)
    }

    async fn claim_due(&self, limit: u32, lease: Duration) -> Result<Vec<ClaimedDelivery>> {
        let now = Utc::now();
        let until = micros(now) + i64::try_from(lease.as_micros()).unwrap_or(i64::MAX / 2);
        let lease_id = Uuid::new_v4().to_string();
        // One writer: the UPDATE is atomic, so no two workers claim a row. The
        // batch shares one lease ID, by which the claimed rows are then read
        // with their endpoint and secrets (SQLite's RETURNING cannot join).
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "UPDATE webhook_requests SET next_attempt_at = ?, lease_id = ? \
             WHERE id IN (SELECT id FROM webhook_requests WHERE status = 'pending' AND next_attempt_at <= ? \
                          ORDER BY next_attempt_at LIMIT ?)",
        )
        .bind(until)
        .bind(&lease_id)
        .bind(micros(now))
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await?;
        let claims = claimed_with(&mut tx, &lease_id).await?;
        tx.commit().await?;
        Ok(claims)
    }

    async fn record_attempt(&self, claim: &ClaimedDelivery, a: &NewAttempt) -> Result<bool> {
        let (status, next_at) = match a.next {
            NextStep::Succeeded => (ExecutionStatus::Succeeded, None),
            NextStep::Failed => (ExecutionStatus::Failed, None),
            NextStep::RetryAfter(delay) => {
                let delay = chrono::TimeDelta::from_std(delay).unwrap_or(chrono::TimeDelta::days(1));
                (ExecutionStatus::Pending, Some(micros(Utc::now() + delay)))
            }
        };
        // One transaction on the writer: the attempt row and the request's new
        // state land together. A lost lease still records the attempt.
        let mut tx = self.write.begin().await?;
        // A claim records at most one attempt (a retry after a lost reply
        // finds it already there).
        let recorded: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM webhook_attempts WHERE request_pk = ? AND lease_id = ?")
                .bind(claim.log_id)
                .bind(claim.lease_id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        if recorded.is_some() {
            return Ok(true);
        }
        let Some(row) = sqlx::query(
            "SELECT attempt_count, max_retries, manual_from, (lease_id = ? AND status = 'pending') AS held \
             FROM webhook_requests WHERE id = ?",
        )
        .bind(claim.lease_id.to_string())
        .bind(claim.log_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(false);
        };
        let number: i64 = row.try_get::<i64, _>("attempt_count")? + 1;
        let held: bool = row.try_get::<Option<bool>, _>("held")?.unwrap_or(false);
        let manual_from: Option<i64> = row.try_get("manual_from")?;
        // Retry or fail is decided on the row as it is now: late attempts by
        // a worker that lost its lease count toward max_retries too.
        let (status, next_at) = if status == ExecutionStatus::Pending
            && number - manual_from.unwrap_or(0) > row.try_get::<i64, _>("max_retries")?
        {
            (ExecutionStatus::Failed, None)
        } else {
            (status, next_at)
        };
        let now = micros(Utc::now());
        if held {
            sqlx::query(
                "UPDATE webhook_requests SET attempt_count = ?, status = ?, next_attempt_at = ?, lease_id = NULL, \
                 updated_at = ? WHERE id = ?",
            )
            .bind(number)
            .bind(status.as_str())
            .bind(next_at)
            .bind(now)
            .bind(claim.log_id)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query("UPDATE webhook_requests SET attempt_count = ?, updated_at = ? WHERE id = ?")
                .bind(number)
                .bind(now)
                .bind(claim.log_id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO webhook_attempts (request_pk, attempt_number, attempted_at, success, status_code, \
               response_body, response_truncated, response_time_ms, error_category, error_message, lease_id, held, \
               manual) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(claim.log_id)
        .bind(number)
        .bind(micros(a.attempted_at))
        .bind(a.success)
        .bind(a.status_code)
        .bind(&a.response_body)
        .bind(a.response_truncated)
        .bind(a.response_time_ms)
        .bind(a.error_category)
        .bind(&a.error_message)
        .bind(claim.lease_id.to_string())
        .bind(held)
        .bind(manual_from.is_some())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(held)
    }

    async fn release(&self, claims: &[ClaimedDelivery], after: Duration) -> Result<()> {
        let due_at = Utc::now() + chrono::TimeDelta::from_std(after).unwrap_or(chrono::TimeDelta::days(1));
        let mut tx = self.write.begin().await?;
        for c in claims {
            sqlx::query(
                "UPDATE webhook_requests SET next_attempt_at = ?, lease_id = NULL \
                 WHERE id = ? AND lease_id = ? AND status = 'pending'",
            )
            .bind(micros(due_at))
            .bind(c.log_id)
            .bind(c.lease_id.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    async fn prepare(&self) -> Result<()> {
        Ok(()) // nothing to create ahead of time: no partitions
    }

    async fn purge(&self, older_than: chrono::TimeDelta, dry_run: bool) -> Result<PurgeReport> {
        let cutoff = Utc::now()
            .checked_sub_signed(older_than)
            .ok_or_else(|| Error::invalid("retention", "the retention reaches beyond the calendar"))?;
        // Days are reported like Postgres' partitions: UTC dates of creation.
        let day = "strftime('%Y-%m-%d', created_at / 1000000, 'unixepoch')";
        let days: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT DISTINCT {day} FROM webhook_requests WHERE created_at < ? AND status <> 'pending' ORDER BY 1"
        ))
        .bind(micros(cutoff))
        .fetch_all(&self.read)
        .await?;
        let kept: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT DISTINCT {day} FROM webhook_requests WHERE created_at < ? AND status = 'pending' ORDER BY 1"
        ))
        .bind(micros(cutoff))
        .fetch_all(&self.read)
        .await?;
        let row = sqlx::query(
            "SELECT count(*) AS n, (SELECT count(*) FROM webhook_attempts a JOIN webhook_requests r ON r.id = a.request_pk \
               WHERE r.created_at < ?1 AND r.status <> 'pending') AS a \
             FROM webhook_requests WHERE created_at < ?1 AND status <> 'pending'",
        )
        .bind(micros(cutoff))
        .fetch_one(&self.read)
        .await?;
        let report = PurgeReport {
            days,
            requests: row.try_get::<i64, _>("n")? as u64,
            attempts: row.try_get::<i64, _>("a")? as u64,
            kept_pending: kept,
            cutoff: Some(cutoff),
            ..PurgeReport::default()
        };
        if dry_run {
            return Ok(report);
        }
        // Batched, so the writer is never held for long; pending work is
        // never deleted.
        loop {
            let mut tx = self.write.begin().await?;
            let ids: Vec<i64> = sqlx::query_scalar(
                "SELECT id FROM webhook_requests WHERE created_at < ? AND status <> 'pending' LIMIT 1000",
            )
            .bind(micros(cutoff))
            .fetch_all(&mut *tx)
            .await?;
            if ids.is_empty() {
                break;
            }
            let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
            sqlx::query(&format!("DELETE FROM webhook_attempts WHERE request_pk IN ({list})"))
                .execute(&mut *tx)
                .await?;
            sqlx::query(&format!("DELETE FROM webhook_requests WHERE id IN ({list})")).execute(&mut *tx).await?;
            tx.commit().await?;
        }
        // The live tail's status changes of deliveries that are gone.
        sqlx::query(
            "DELETE FROM delivery_events WHERE NOT EXISTS \
             (SELECT 1 FROM webhook_requests r WHERE r.id = delivery_events.log_id)",
        )
        .execute(&self.write)
        .await?;
        // Messages left without a delivery go with their last one.
        loop {
            let done = sqlx::query(
                "DELETE FROM webhook_messages WHERE message_id IN (SELECT m.message_id FROM webhook_messages m \
                 WHERE m.created_at < ? AND NOT EXISTS \
                   (SELECT 1 FROM webhook_requests r WHERE r.message_id = m.message_id) LIMIT 1000)",
            )
            .bind(micros(cutoff))
            .execute(&self.write)
            .await?;
            if done.rows_affected() < 1000 {
                break;
            }
        }
        Ok(report)
    }

    async fn queue_stats(&self) -> Result<QueueStats> {
        let row = sqlx::query(
            "SELECT count(*) AS n, min(created_at) AS oldest FROM webhook_requests WHERE status = 'pending'",
        )
        .fetch_one(&self.read)
        .await?;
        Ok(QueueStats {
            pending: row.try_get::<i64, _>("n")? as u64,
            oldest_pending_created_at: opt_time(row.try_get("oldest")?)?,
        })
    }

    fn pool_usage(&self) -> Vec<super::PoolUsage> {
        [("read", &self.read), ("write", &self.write)]
            .into_iter()
            .map(|(pool, p)| {
                let (in_use, idle) = super::connections(p);
                super::PoolUsage { pool, in_use, idle }
            })
            .collect()
    }

    async fn insert_api_key(&self, key: &NewApiKey) -> Result<()> {
        let (kind, org) = key.kind.to_stored();
        let org = org.map(|o| o.to_string());
        sqlx::query(
            "INSERT INTO api_keys (prefix, key_hash, kind, organization_id, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&key.prefix)
        .bind(&key.key_hash)
        .bind(kind)
        .bind(org)
        .bind(micros(Utc::now()))
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn find_api_key(&self, prefix: &str) -> Result<Option<ApiKeyRecord>> {
        let row = sqlx::query(
            "SELECT prefix, key_hash, kind, organization_id, created_at, revoked_at FROM api_keys WHERE prefix = ?",
        )
        .bind(prefix)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        let rows = sqlx::query(
            "SELECT prefix, key_hash, kind, organization_id, created_at, revoked_at FROM api_keys ORDER BY created_at DESC, id DESC",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    async fn revoke_api_key(&self, prefix: &str) -> Result<bool> {
        let done = sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE prefix = ? AND revoked_at IS NULL")
            .bind(micros(Utc::now()))
            .bind(prefix)
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
