//! Sending deliveries again: redeliver one, hold and release an endpoint's,
//! and recoveries of many, run as operations in batches. One narrow trait,
//! implemented for both stores.
//!
//! A delivery sent again keeps its request ID and its attempts; its new
//! attempts continue the numbering. `manual_from` records the attempt count
//! when it was sent again: the retry budget counts from there, and attempts
//! above it are marked manual.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Row};
use uuid::Uuid;

use super::{PostgresStore, SqliteStore};
use crate::domain::{ClaimedDelivery, ExecutionStatus};
use crate::error::{Error, Result};

/// What became of a redelivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivered {
    /// Pending again, now.
    Done,
    /// No such request (in that organization).
    Missing,
    /// Not settled yet: still pending or held.
    NotSettled(ExecutionStatus),
}

/// Which failed deliveries a recovery sends again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecoverFilter {
    pub organization_id: Uuid,
    pub endpoint_id: Option<Uuid>,
    pub error_category: Option<String>,
    pub webhook_type: Option<String>,
    /// Created in [start, end).
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// A recovery, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub operation_id: Uuid,
    pub organization_id: Uuid,
    pub kind: String,
    pub filter: RecoverFilter,
    /// (created_at, log ID) of the last delivery looked at.
    pub cursor: Option<(DateTime<Utc>, i64)>,
    pub matched: u64,
    pub recovered: u64,
    pub done: bool,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub const RECOVER: &str = "recover";

#[async_trait]
pub trait RecoveryStore: Send + Sync {
    /// Makes a settled delivery pending again, due now, with a fresh retry
    /// budget.
    async fn redeliver(&self, request_id: Uuid, organization_id: Option<Uuid>) -> Result<Redelivered>;

    /// Holds claimed deliveries whose endpoint is paused or disabled.
    async fn hold(&self, claims: &[ClaimedDelivery]) -> Result<()>;

    /// Makes an endpoint's held deliveries pending, due in the order they
    /// were created; returns how many.
    async fn release_held(&self, endpoint_id: Uuid) -> Result<u64>;

    /// Releases held deliveries whose endpoint is neither paused nor
    /// disabled (any more), at most `limit`: a safety net for the races
    /// between holding and resuming (a Dispatch that read the endpoint just
    /// before it was resumed, an update re-enabling it meanwhile) and for
    /// endpoints deleted while they held deliveries. Returns how many.
    async fn release_stranded(&self, limit: u32) -> Result<u64>;

    /// How many failed deliveries `f` matches now.
    async fn count_recoverable(&self, f: &RecoverFilter) -> Result<u64>;

    async fn create_operation(&self, operation_id: Uuid, f: &RecoverFilter) -> Result<Operation>;

    async fn get_operation(&self, organization_id: Uuid, operation_id: Uuid) -> Result<Option<Operation>>;

    /// Takes an unfinished operation whose lease (if any) ran out, for
    /// `lease`: after a restart, its work resumes where the last committed
    /// batch left it.
    async fn lease_operation(&self, lease: Duration) -> Result<Option<Operation>>;

    /// Recovers the next `batch` matching deliveries after the operation's
    /// cursor and moves the cursor, in one transaction (a batch is done
    /// whole or not at all); extends the lease. Returns the operation as it
    /// is now.
    async fn recover_batch(&self, op: &Operation, batch: u32, lease: Duration) -> Result<Operation>;
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn not_found_or<T>(v: Option<T>) -> Result<T> {
    v.ok_or_else(|| Error::internal(anyhow::anyhow!("an operation vanished while it ran")))
}

/// The failed deliveries `f` matches, after `cursor`: the shared WHERE
/// clause. Each store gives its own spelling of IDs (`U`) and times (`T`,
/// made by `time`); the builder spells the placeholders.
fn push_filter<'a, DB, T, U>(
    q: &mut QueryBuilder<'a, DB>,
    f: &RecoverFilter,
    cursor: Option<(DateTime<Utc>, i64)>,
    org: U,
    endpoint: Option<U>,
    time: impl Fn(DateTime<Utc>) -> T,
    same_day: &str,
) where
    DB: sqlx::Database,
    T: sqlx::Encode<'a, DB> + sqlx::Type<DB> + 'a,
    U: sqlx::Encode<'a, DB> + sqlx::Type<DB> + 'a,
    String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    q.push(" WHERE r.status = 'failed' AND r.organization_id = ").push_bind(org);
    q.push(" AND r.created_at >= ").push_bind(time(f.start));
    q.push(" AND r.created_at < ").push_bind(time(f.end));
    if let Some(e) = endpoint {
        q.push(" AND r.endpoint_id = ").push_bind(e);
    }
    if let Some(t) = &f.webhook_type {
        q.push(" AND r.webhook_type = ").push_bind(t.clone());
    }
    if let Some(c) = &f.error_category {
        // The latest attempt that counts (not a late one) decides.
        q.push(format_args!(
            " AND (SELECT la.error_category FROM webhook_attempts la WHERE la.request_pk = r.id{same_day} \
             AND la.held ORDER BY la.attempt_number DESC LIMIT 1) = "
        ))
        .push_bind(c.clone());
    }
    if let Some((at, id)) = cursor {
        q.push(" AND (r.created_at > ").push_bind(time(at));
        q.push(" OR (r.created_at = ").push_bind(time(at));
        q.push(" AND r.id > ").push_bind(id).push("))");
    }
}

// ---------------------------------------------------------------- Postgres

/// A delivery's queue when it has none (rows that were settled before
/// queues existed); the same rule as the queue-key migration.
const PG_QUEUE_KEY: &str = "COALESCE(queue_key, CASE WHEN endpoint_id IS NOT NULL THEN 'e:' || endpoint_id::text \
     ELSE 'h:' || lower(substring(webhook_url from '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/?#]+)')) END)";

const PG_OPERATION: &str = "operation_id, organization_id, kind, params::text AS params, cursor_at, cursor_id, \
     matched, recovered, done, error, created_at, updated_at";

fn pg_operation(row: &sqlx::postgres::PgRow) -> Result<Operation> {
    let params: String = row.try_get("params")?;
    let at: Option<DateTime<Utc>> = row.try_get("cursor_at")?;
    let id: Option<i64> = row.try_get("cursor_id")?;
    Ok(Operation {
        operation_id: row.try_get("operation_id")?,
        organization_id: row.try_get("organization_id")?,
        kind: row.try_get("kind")?,
        filter: serde_json::from_str(&params).map_err(|e| Error::internal(e.into()))?,
        cursor: at.zip(id),
        matched: row.try_get::<i64, _>("matched")? as u64,
        recovered: row.try_get::<i64, _>("recovered")? as u64,
        done: row.try_get("done")?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn pg_filter(q: &mut QueryBuilder<'_, sqlx::Postgres>, f: &RecoverFilter, cursor: Option<(DateTime<Utc>, i64)>) {
    push_filter(q, f, cursor, f.organization_id, f.endpoint_id, |t| t, " AND la.request_created_at = r.created_at");
}

#[async_trait]
impl RecoveryStore for PostgresStore {
    async fn redeliver(&self, request_id: Uuid, organization_id: Option<Uuid>) -> Result<Redelivered> {
        let row = sqlx::query(&format!(
            "WITH r AS (SELECT id, created_at, status FROM webhook_requests \
               WHERE request_id = $1 AND ($2::uuid IS NULL OR organization_id = $2) FOR UPDATE), \
             upd AS (UPDATE webhook_requests w SET status = 'pending', next_attempt_at = now(), lease_id = NULL, \
               manual_from = w.attempt_count, queue_key = {PG_QUEUE_KEY}, updated_at = now(), expires_at = NULL \
               FROM r WHERE w.id = r.id AND w.created_at = r.created_at AND r.status IN ('succeeded', 'failed') \
               RETURNING w.id, w.created_at), \
             ev AS (INSERT INTO delivery_events (log_id, request_created_at, status, reason) \
               SELECT id, created_at, 'pending', 'redelivered' FROM upd) \
             SELECT r.status, EXISTS (SELECT 1 FROM upd) AS done FROM r"
        ))
        .bind(request_id)
        .bind(organization_id)
        .fetch_optional(self.db())
        .await?;
        let Some(row) = row else { return Ok(Redelivered::Missing) };
        if row.try_get("done")? {
            return Ok(Redelivered::Done);
        }
        let status: String = row.try_get("status")?;
        Ok(Redelivered::NotSettled(ExecutionStatus::parse(&status).unwrap_or(ExecutionStatus::Pending)))
    }

    async fn hold(&self, claims: &[ClaimedDelivery]) -> Result<()> {
        self.give_back(super::postgres::sql::HOLD, claims, None).await
    }

    async fn release_held(&self, endpoint_id: Uuid) -> Result<u64> {
        // Due at their creation time: already due, and claimed oldest first.
        let done = sqlx::query(
            "WITH upd AS (UPDATE webhook_requests SET status = 'pending', next_attempt_at = created_at, \
               updated_at = now() WHERE endpoint_id = $1 AND status = 'held' RETURNING id, created_at) \
             INSERT INTO delivery_events (log_id, request_created_at, status, reason) \
             SELECT id, created_at, 'pending', 'released' FROM upd",
        )
        .bind(endpoint_id)
        .execute(self.db())
        .await?;
        Ok(done.rows_affected())
    }

    async fn release_stranded(&self, limit: u32) -> Result<u64> {
        let done = sqlx::query(&format!(
            "WITH s AS (SELECT r.id, r.created_at FROM webhook_requests r WHERE r.status = 'held' \
               AND NOT EXISTS (SELECT 1 FROM endpoints e WHERE e.endpoint_id = r.endpoint_id \
                 AND (e.paused OR e.disabled)) \
               LIMIT {limit} FOR UPDATE OF r SKIP LOCKED), \
             upd AS (UPDATE webhook_requests r SET status = 'pending', next_attempt_at = r.created_at, \
               updated_at = now() FROM s WHERE r.id = s.id AND r.created_at = s.created_at \
               RETURNING r.id, r.created_at) \
             INSERT INTO delivery_events (log_id, request_created_at, status, reason) \
             SELECT id, created_at, 'pending', 'released' FROM upd"
        ))
        .execute(self.db())
        .await?;
        Ok(done.rows_affected())
    }

    async fn count_recoverable(&self, f: &RecoverFilter) -> Result<u64> {
        let mut q = QueryBuilder::new("SELECT count(*) FROM webhook_requests r");
        pg_filter(&mut q, f, None);
        let n: i64 = q.build_query_scalar().fetch_one(self.db()).await?;
        Ok(n as u64)
    }

    async fn create_operation(&self, operation_id: Uuid, f: &RecoverFilter) -> Result<Operation> {
        let params = serde_json::to_string(f).map_err(|e| Error::internal(e.into()))?;
        let row = sqlx::query(&format!(
            "INSERT INTO operations (operation_id, organization_id, kind, params) VALUES ($1, $2, $3, $4::jsonb) \
             RETURNING {PG_OPERATION}"
        ))
        .bind(operation_id)
        .bind(f.organization_id)
        .bind(RECOVER)
        .bind(params)
        .fetch_one(self.db())
        .await?;
        pg_operation(&row)
    }

    async fn get_operation(&self, organization_id: Uuid, operation_id: Uuid) -> Result<Option<Operation>> {
        let row = sqlx::query(&format!(
            "SELECT {PG_OPERATION} FROM operations WHERE operation_id = $1 AND organization_id = $2"
        ))
        .bind(operation_id)
        .bind(organization_id)
        .fetch_optional(self.db())
        .await?;
        row.as_ref().map(pg_operation).transpose()
    }

    async fn lease_operation(&self, lease: Duration) -> Result<Option<Operation>> {
        let row = sqlx::query(&format!(
            "UPDATE operations SET lease_until = now() + make_interval(secs => $1::float8 / 1000) \
             WHERE id = (SELECT id FROM operations WHERE NOT done AND (lease_until IS NULL OR lease_until < now()) \
               ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING {PG_OPERATION}"
        ))
        .bind(millis(lease))
        .fetch_optional(self.db())
        .await?;
        row.as_ref().map(pg_operation).transpose()
    }

    async fn recover_batch(&self, op: &Operation, batch: u32, lease: Duration) -> Result<Operation> {
        let mut tx = self.db().begin().await?;
        let mut q = QueryBuilder::new("SELECT r.id, r.created_at FROM webhook_requests r");
        pg_filter(&mut q, &op.filter, op.cursor);
        q.push(format_args!(" ORDER BY r.created_at, r.id LIMIT {batch} FOR UPDATE OF r"));
        let rows: Vec<(i64, DateTime<Utc>)> = q.build_query_as().fetch_all(tx.ex()).await?;
        let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let created: Vec<DateTime<Utc>> = rows.iter().map(|r| r.1).collect();
        // Only a delivery still failed goes back: one queued by an earlier
        // run, or sent again by hand meanwhile, is not queued twice.
        let recovered = sqlx::query(&format!(
            "WITH upd AS (UPDATE webhook_requests w SET status = 'pending', next_attempt_at = now(), lease_id = NULL, \
               manual_from = w.attempt_count, queue_key = {PG_QUEUE_KEY}, updated_at = now(), expires_at = NULL \
             FROM unnest($1::bigint[], $2::timestamptz[]) AS c(id, created_at) \
             WHERE w.id = c.id AND w.created_at = c.created_at AND w.status = 'failed' RETURNING w.id, w.created_at) \
             INSERT INTO delivery_events (log_id, request_created_at, status, reason) \
             SELECT id, created_at, 'pending', 'recovered' FROM upd"
        ))
        .bind(&ids)
        .bind(&created)
        .execute(tx.ex())
        .await?
        .rows_affected();
        let last = rows.last().map(|r| (r.1, r.0)).or(op.cursor);
        let row = sqlx::query(&format!(
            "UPDATE operations SET cursor_at = $2, cursor_id = $3, matched = matched + $4, \
               recovered = recovered + $5, done = $6, updated_at = now(), \
               lease_until = now() + make_interval(secs => $7::float8 / 1000) \
             WHERE operation_id = $1 RETURNING {PG_OPERATION}"
        ))
        .bind(op.operation_id)
        .bind(last.map(|l| l.0))
        .bind(last.map(|l| l.1))
        .bind(rows.len() as i64)
        .bind(recovered as i64)
        .bind(rows.len() < batch as usize)
        .bind(millis(lease))
        .fetch_optional(tx.ex())
        .await?;
        let op = pg_operation(&not_found_or(row)?)?;
        tx.commit().await?;
        Ok(op)
    }
}

// ------------------------------------------------------------------ SQLite

use super::sqlite::{micros, time};

/// Records a status change no attempt explains, for the live tail.
async fn sqlite_event(tx: &mut sqlx::SqliteConnection, log_id: i64, status: &str, reason: &str, at: i64) -> Result<()> {
    sqlx::query("INSERT INTO delivery_events (log_id, status, reason, at) VALUES (?, ?, ?, ?)")
        .bind(log_id)
        .bind(status)
        .bind(reason)
        .bind(at)
        .execute(tx)
        .await?;
    Ok(())
}

const SQLITE_OPERATION: &str = "operation_id, organization_id, kind, params, cursor_at, cursor_id, matched, \
     recovered, done, error, created_at, updated_at";

fn sqlite_operation(row: &sqlx::sqlite::SqliteRow) -> Result<Operation> {
    let uuid = |col: &str| -> Result<Uuid> {
        let s: String = row.try_get(col)?;
        Uuid::parse_str(&s).map_err(|e| Error::internal(e.into()))
    };
    let params: String = row.try_get("params")?;
    let at: Option<i64> = row.try_get("cursor_at")?;
    let id: Option<i64> = row.try_get("cursor_id")?;
    Ok(Operation {
        operation_id: uuid("operation_id")?,
        organization_id: uuid("organization_id")?,
        kind: row.try_get("kind")?,
        filter: serde_json::from_str(&params).map_err(|e| Error::internal(e.into()))?,
        cursor: at.map(time).transpose()?.zip(id),
        matched: row.try_get::<i64, _>("matched")? as u64,
        recovered: row.try_get::<i64, _>("recovered")? as u64,
        done: row.try_get("done")?,
        error: row.try_get("error")?,
        created_at: time(row.try_get("created_at")?)?,
        updated_at: time(row.try_get("updated_at")?)?,
    })
}

fn sqlite_filter(q: &mut QueryBuilder<'_, sqlx::Sqlite>, f: &RecoverFilter, cursor: Option<(DateTime<Utc>, i64)>) {
    let endpoint = f.endpoint_id.map(|e| e.to_string());
    push_filter(q, f, cursor, f.organization_id.to_string(), endpoint, micros, "");
}

#[async_trait]
impl RecoveryStore for SqliteStore {
    async fn redeliver(&self, request_id: Uuid, organization_id: Option<Uuid>) -> Result<Redelivered> {
        let mut tx = self.writer().begin().await?;
        let row = sqlx::query(
            "SELECT id, status FROM webhook_requests WHERE request_id = ? AND (? IS NULL OR organization_id = ?)",
        )
        .bind(request_id.to_string())
        .bind(organization_id.map(|o| o.to_string()))
        .bind(organization_id.map(|o| o.to_string()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(Redelivered::Missing) };
        let status: String = row.try_get("status")?;
        let status = ExecutionStatus::parse(&status).unwrap_or(ExecutionStatus::Pending);
        if !matches!(status, ExecutionStatus::Succeeded | ExecutionStatus::Failed) {
            return Ok(Redelivered::NotSettled(status));
        }
        let now = micros(Utc::now());
        sqlx::query(
            "UPDATE webhook_requests SET status = 'pending', next_attempt_at = ?, lease_id = NULL, \
               manual_from = attempt_count, updated_at = ?, expires_at = NULL, \
               queue_key = COALESCE(queue_key, CASE WHEN endpoint_id IS NOT NULL THEN 'e:' || endpoint_id \
                 ELSE 'h:' || webhook_url END) \
             WHERE id = ?",
        )
        .bind(now)
        .bind(now)
        .bind(row.try_get::<i64, _>("id")?)
        .execute(&mut *tx)
        .await?;
        sqlite_event(&mut tx, row.try_get("id")?, "pending", "redelivered", now).await?;
        tx.commit().await?;
        Ok(Redelivered::Done)
    }

    async fn hold(&self, claims: &[ClaimedDelivery]) -> Result<()> {
        let mut tx = self.writer().begin().await?;
        let now = micros(Utc::now());
        for c in claims {
            // Read the endpoint again in this (serialized) transaction: if
            // it was resumed since the claim, release instead.
            let status: Option<String> = sqlx::query_scalar(
                "UPDATE webhook_requests SET \
                   status = CASE WHEN EXISTS (SELECT 1 FROM endpoints e WHERE e.endpoint_id = \
                     webhook_requests.endpoint_id AND (e.paused OR e.disabled)) THEN 'held' ELSE 'pending' END, \
                   next_attempt_at = CASE WHEN EXISTS (SELECT 1 FROM endpoints e WHERE e.endpoint_id = \
                     webhook_requests.endpoint_id AND (e.paused OR e.disabled)) THEN NULL ELSE ?1 END, \
                   lease_id = NULL, updated_at = ?1 WHERE id = ?2 AND lease_id = ?3 AND status = 'pending' \
                 RETURNING status",
            )
            .bind(now)
            .bind(c.log_id)
            .bind(c.lease_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
            if status.as_deref() == Some("held") {
                sqlite_event(&mut tx, c.log_id, "held", "held", now).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn release_held(&self, endpoint_id: Uuid) -> Result<u64> {
        let now = micros(Utc::now());
        let mut tx = self.writer().begin().await?;
        let ids: Vec<i64> = sqlx::query_scalar(
            "UPDATE webhook_requests SET status = 'pending', next_attempt_at = created_at, updated_at = ? \
             WHERE endpoint_id = ? AND status = 'held' RETURNING id",
        )
        .bind(now)
        .bind(endpoint_id.to_string())
        .fetch_all(&mut *tx)
        .await?;
        for id in &ids {
            sqlite_event(&mut tx, *id, "pending", "released", now).await?;
        }
        tx.commit().await?;
        Ok(ids.len() as u64)
    }

    async fn release_stranded(&self, limit: u32) -> Result<u64> {
        let now = micros(Utc::now());
        let mut tx = self.writer().begin().await?;
        let ids: Vec<i64> = sqlx::query_scalar(&format!(
            "UPDATE webhook_requests SET status = 'pending', next_attempt_at = created_at, updated_at = ? \
             WHERE id IN (SELECT r.id FROM webhook_requests r WHERE r.status = 'held' AND NOT EXISTS \
               (SELECT 1 FROM endpoints e WHERE e.endpoint_id = r.endpoint_id AND (e.paused OR e.disabled)) \
               LIMIT {limit}) RETURNING id"
        ))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        for id in &ids {
            sqlite_event(&mut tx, *id, "pending", "released", now).await?;
        }
        tx.commit().await?;
        Ok(ids.len() as u64)
    }

    async fn count_recoverable(&self, f: &RecoverFilter) -> Result<u64> {
        let mut q = QueryBuilder::new("SELECT count(*) FROM webhook_requests r");
        sqlite_filter(&mut q, f, None);
        let n: i64 = q.build_query_scalar().fetch_one(self.reader()).await?;
        Ok(n as u64)
    }

    async fn create_operation(&self, operation_id: Uuid, f: &RecoverFilter) -> Result<Operation> {
        let params = serde_json::to_string(f).map_err(|e| Error::internal(e.into()))?;
        let now = micros(Utc::now());
        let row = sqlx::query(&format!(
            "INSERT INTO operations (operation_id, organization_id, kind, params, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?) RETURNING {SQLITE_OPERATION}"
        ))
        .bind(operation_id.to_string())
        .bind(f.organization_id.to_string())
        .bind(RECOVER)
        .bind(params)
        .bind(now)
        .bind(now)
        .fetch_one(self.writer())
        .await?;
        sqlite_operation(&row)
    }

    async fn get_operation(&self, organization_id: Uuid, operation_id: Uuid) -> Result<Option<Operation>> {
        let row = sqlx::query(&format!(
            "SELECT {SQLITE_OPERATION} FROM operations WHERE operation_id = ? AND organization_id = ?"
        ))
        .bind(operation_id.to_string())
        .bind(organization_id.to_string())
        .fetch_optional(self.reader())
        .await?;
        row.as_ref().map(sqlite_operation).transpose()
    }

    async fn lease_operation(&self, lease: Duration) -> Result<Option<Operation>> {
        let now = Utc::now();
        let until = now + chrono::TimeDelta::from_std(lease).unwrap_or(chrono::TimeDelta::seconds(30));
        let row = sqlx::query(&format!(
            "UPDATE operations SET lease_until = ? \
             WHERE id = (SELECT id FROM operations WHERE NOT done AND (lease_until IS NULL OR lease_until < ?) \
               ORDER BY id LIMIT 1) \
             RETURNING {SQLITE_OPERATION}"
        ))
        .bind(micros(until))
        .bind(micros(now))
        .fetch_optional(self.writer())
        .await?;
        row.as_ref().map(sqlite_operation).transpose()
    }

    async fn recover_batch(&self, op: &Operation, batch: u32, lease: Duration) -> Result<Operation> {
        let mut tx = self.writer().begin().await?;
        let mut q = QueryBuilder::new("SELECT r.id, r.created_at FROM webhook_requests r");
        sqlite_filter(&mut q, &op.filter, op.cursor);
        q.push(format_args!(" ORDER BY r.created_at, r.id LIMIT {batch}"));
        let rows: Vec<(i64, i64)> = q.build_query_as().fetch_all(&mut *tx).await?;
        let now = Utc::now();
        let mut recovered = 0u64;
        for (id, _) in &rows {
            let n = sqlx::query(
                "UPDATE webhook_requests SET status = 'pending', next_attempt_at = ?, lease_id = NULL, \
                   manual_from = attempt_count, updated_at = ?, expires_at = NULL, \
                   queue_key = COALESCE(queue_key, CASE WHEN endpoint_id IS NOT NULL THEN 'e:' || endpoint_id \
                     ELSE 'h:' || webhook_url END) \
                 WHERE id = ? AND status = 'failed'",
            )
            .bind(micros(now))
            .bind(micros(now))
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 1 {
                sqlite_event(&mut tx, *id, "pending", "recovered", micros(now)).await?;
            }
            recovered += n;
        }
        let last = match rows.last() {
            Some((id, at)) => Some((time(*at)?, *id)),
            None => op.cursor,
        };
        let until = now + chrono::TimeDelta::from_std(lease).unwrap_or(chrono::TimeDelta::seconds(30));
        let row = sqlx::query(&format!(
            "UPDATE operations SET cursor_at = ?, cursor_id = ?, matched = matched + ?, recovered = recovered + ?, \
               done = ?, updated_at = ?, lease_until = ? WHERE operation_id = ? RETURNING {SQLITE_OPERATION}"
        ))
        .bind(last.map(|l| micros(l.0)))
        .bind(last.map(|l| l.1))
        .bind(rows.len() as i64)
        .bind(recovered as i64)
        .bind(rows.len() < batch as usize)
        .bind(micros(now))
        .bind(micros(until))
        .bind(op.operation_id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let op = sqlite_operation(&not_found_or(row)?)?;
        tx.commit().await?;
        Ok(op)
    }
}
