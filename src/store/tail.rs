//! The live tail: attempts and status changes in the order they became
//! visible, from a position, with no gap and no repeat.
//!
//! Postgres: transactions commit out of order, so a tail by ID (or by time)
//! can pass a row whose transaction commits later. Each row records its
//! transaction's ID (xid), and a read takes only rows whose xid is below the
//! oldest transaction still running (`pg_snapshot_xmin`): every transaction
//! below that line is finished, so no row can appear below it later. A
//! position is the last (xid, id) read from each source; the next read
//! continues strictly after it. A row of a transaction still running waits
//! until that transaction ends (commit or rollback).
//!
//! SQLite has one writer: IDs follow commit order, and the xid is always 0.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Row};

use super::{LogBatch, PostgresStore, SqliteStore, take_within_budget};
use crate::domain::{AttemptRecord, ExecutionStatus};
use crate::error::{Error, Result};

/// After which attempt and which status change a tail continues: the last
/// (xid, id) of each source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailPosition {
    pub attempt: (i64, i64),
    pub event: (i64, i64),
}

impl TailPosition {
    /// The position as a resume token (opaque to clients).
    pub fn token(&self) -> String {
        use base64::Engine;
        let raw = format!("{}.{}.{}.{}", self.attempt.0, self.attempt.1, self.event.0, self.event.1);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    pub fn from_token(token: &str) -> Option<Self> {
        use base64::Engine;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok()?;
        let text = String::from_utf8(raw).ok()?;
        let n: Vec<i64> = text.split('.').map(str::parse).collect::<std::result::Result<_, _>>().ok()?;
        match n.as_slice() {
            [a, b, c, d] => Some(Self { attempt: (*a, *b), event: (*c, *d) }),
            _ => None,
        }
    }
}

/// What happened to a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailChange {
    /// An attempt was recorded.
    Attempt(AttemptRecord),
    /// Its status changed without an attempt (held, released, redelivered,
    /// recovered).
    Status { status: ExecutionStatus, reason: String },
}

/// Whether a read of the tail carries the bodies (the payload, its
/// metadata, the responses) for a FULL watcher, or leaves them empty, as
/// the BASIC view shows them, without reading them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bodies {
    With,
    /// The watch's default view (BASIC).
    #[default]
    Without,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailEvent {
    /// The delivery (log ID and creation time, its key in the store).
    pub log_id: i64,
    pub created_at: DateTime<Utc>,
    pub change: TailChange,
    pub at: DateTime<Utc>,
    /// The tail's position right after this event.
    pub position: TailPosition,
}

#[async_trait]
pub trait TailStore: Send + Sync {
    /// The position of "now": a tail from it sees only what is recorded later.
    async fn tail_now(&self) -> Result<TailPosition>;

    /// Up to `limit` events of each source after `after`, in order.
    async fn tail(&self, after: TailPosition, limit: u32, bodies: Bodies) -> Result<Vec<TailEvent>>;

    /// The logs of these deliveries (log ID, creation time), as they are now,
    /// in the order first named, each once however often it is named; none
    /// for a key that matches none. Stops once the logs read reach
    /// `max_bytes` (as [`super::log_bytes`] counts; at least one log), and
    /// then says there is `more`: only the keys up to the last log
    /// returned were looked up.
    async fn logs_by_id(&self, ids: &[(i64, DateTime<Utc>)], bodies: Bodies, max_bytes: usize) -> Result<LogBatch>;
}

/// One row of a source, before it gets its position.
struct SourceRow {
    xid: i64,
    id: i64,
    log_id: i64,
    created_at: DateTime<Utc>,
    change: TailChange,
    at: DateTime<Utc>,
}

/// Merges the two sources and gives each event the position after it. Each
/// source is complete up to its last row, so any interleaving that keeps
/// each source's own order has no gap.
fn merge(after: TailPosition, attempts: Vec<SourceRow>, events: Vec<SourceRow>) -> Vec<TailEvent> {
    // A two-way merge: each source keeps its own order (positions only
    // move forward), and between the sources the earlier (xid, time) goes
    // first, so that a delivery's own events keep their order (a
    // redelivery before the attempt it led to), on SQLite too (xid 0).
    let mut out = Vec::with_capacity(attempts.len() + events.len());
    let mut position = after;
    let (mut a, mut e) = (attempts.into_iter().peekable(), events.into_iter().peekable());
    loop {
        let take_attempt = match (a.peek(), e.peek()) {
            (Some(x), Some(y)) => (x.xid, x.at) <= (y.xid, y.at),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let r = if take_attempt { a.next() } else { e.next() }.expect("peeked");
        if take_attempt {
            position.attempt = (r.xid, r.id);
        } else {
            position.event = (r.xid, r.id);
        }
        out.push(TailEvent { log_id: r.log_id, created_at: r.created_at, change: r.change, at: r.at, position });
    }
    out
}

fn status_change(status: &str, reason: String) -> Result<TailChange> {
    let status = ExecutionStatus::parse(status)
        .ok_or_else(|| Error::internal(anyhow::anyhow!("unknown status {status:?} in store")))?;
    Ok(TailChange::Status { status, reason })
}

#[async_trait]
impl TailStore for PostgresStore {
    // Read on a replica when there is one (the same one while it is up): a
    // standby's snapshot horizon is the primary's as of what it has replayed,
    // so the same rule holds there (every transaction below it has ended on
    // the primary, and its rows have been replayed). A position read on one
    // server is valid on any other: one that lags returns nothing after it
    // until it has caught up.
    async fn tail_now(&self) -> Result<TailPosition> {
        let h = self.read_tail(horizon).await?;
        // Everything below the horizon is in the past.
        Ok(TailPosition { attempt: (h - 1, i64::MAX), event: (h - 1, i64::MAX) })
    }

    async fn tail(&self, after: TailPosition, limit: u32, bodies: Bodies) -> Result<Vec<TailEvent>> {
        self.read_tail(|pool| tail_on(pool, after, limit, bodies)).await
    }

    async fn logs_by_id(&self, ids: &[(i64, DateTime<Utc>)], bodies: Bodies, max_bytes: usize) -> Result<LogBatch> {
        // On the primary, even with replicas: a log read on a server that
        // lags more than the one the events came from could be older than
        // its event (a watcher filtering by status would miss the change).
        // The primary is never behind any replica.
        if ids.is_empty() {
            return Ok(LogBatch::default());
        }
        let (logs, created): (Vec<i64>, Vec<DateTime<Utc>>) = ids.iter().copied().unzip();
        let sql = match bodies {
            Bodies::With => super::postgres::sql::LOGS_BY_ID,
            Bodies::Without => super::postgres::sql::LOGS_BY_ID_BASIC,
        };
        let rows = sqlx::query(sql).bind(&logs).bind(&created).fetch(self.db());
        take_within_budget(rows, u32::MAX, max_bytes, super::postgres::log_decoder()).await
    }
}

/// The oldest transaction still running on `pool`'s server: every
/// transaction below it has ended, so no row below it can appear later.
async fn horizon(pool: super::postgres::Db) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint").fetch_one(&pool).await?)
}

async fn tail_on(pool: super::postgres::Db, after: TailPosition, limit: u32, bodies: Bodies) -> Result<Vec<TailEvent>> {
    let h = horizon(pool.clone()).await?;
    let columns = match bodies {
        Bodies::With => super::postgres::ATTEMPT_COLUMNS,
        Bodies::Without => super::postgres::ATTEMPT_COLUMNS_BASIC,
    };
    let rows = sqlx::query(&format!(
        "SELECT xid, id, request_pk, request_created_at, {columns} FROM webhook_attempts \
         WHERE xid < $3 AND (xid, id) > ($1, $2) ORDER BY xid, id LIMIT {limit}"
    ))
    .bind(after.attempt.0)
    .bind(after.attempt.1)
    .bind(h)
    .fetch_all(&pool)
    .await?;
    let mut attempts = Vec::with_capacity(rows.len());
    for (row, a) in rows.iter().zip(super::postgres::attempts_from_rows(&rows)?) {
        let at = a.attempted_at;
        attempts.push(SourceRow {
            xid: row.try_get("xid")?,
            id: row.try_get("id")?,
            log_id: row.try_get("request_pk")?,
            created_at: row.try_get("request_created_at")?,
            change: TailChange::Attempt(a),
            at,
        });
    }
    let rows = sqlx::query(&format!(
        "SELECT xid, id, log_id, request_created_at, status, reason, at FROM delivery_events \
         WHERE xid < $3 AND (xid, id) > ($1, $2) ORDER BY xid, id LIMIT {limit}"
    ))
    .bind(after.event.0)
    .bind(after.event.1)
    .bind(h)
    .fetch_all(&pool)
    .await?;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        events.push(SourceRow {
            xid: row.try_get("xid")?,
            id: row.try_get("id")?,
            log_id: row.try_get("log_id")?,
            created_at: row.try_get("request_created_at")?,
            change: status_change(row.try_get("status")?, row.try_get("reason")?)?,
            at: row.try_get("at")?,
        });
    }
    Ok(merge(after, attempts, events))
}

#[async_trait]
impl TailStore for SqliteStore {
    async fn tail_now(&self) -> Result<TailPosition> {
        let row = sqlx::query(
            "SELECT (SELECT COALESCE(max(id), 0) FROM webhook_attempts) AS a, \
               (SELECT COALESCE(max(id), 0) FROM delivery_events) AS e",
        )
        .fetch_one(self.reader())
        .await?;
        Ok(TailPosition { attempt: (0, row.try_get("a")?), event: (0, row.try_get("e")?) })
    }

    async fn tail(&self, after: TailPosition, limit: u32, bodies: Bodies) -> Result<Vec<TailEvent>> {
        use super::sqlite::time;
        let columns = match bodies {
            Bodies::With => super::sqlite::ATTEMPT_COLUMNS,
            Bodies::Without => super::sqlite::ATTEMPT_COLUMNS_BASIC,
        };
        let rows = sqlx::query(&format!(
            "SELECT a.id, a.request_pk, r.created_at AS request_created_at, {columns} FROM webhook_attempts a \
             JOIN webhook_requests r ON r.id = a.request_pk WHERE a.id > ? ORDER BY a.id LIMIT {limit}"
        ))
        .bind(after.attempt.1)
        .fetch_all(self.reader())
        .await?;
        let mut attempts = Vec::with_capacity(rows.len());
        for row in &rows {
            let a = super::sqlite::attempt_from_row(row)?;
            let at = a.attempted_at;
            attempts.push(SourceRow {
                xid: 0,
                id: row.try_get("id")?,
                log_id: row.try_get("request_pk")?,
                created_at: time(row.try_get("request_created_at")?)?,
                change: TailChange::Attempt(a),
                at,
            });
        }
        let rows = sqlx::query(&format!(
            "SELECT e.id, e.log_id, r.created_at AS request_created_at, e.status, e.reason, e.at \
             FROM delivery_events e JOIN webhook_requests r ON r.id = e.log_id WHERE e.id > ? \
             ORDER BY e.id LIMIT {limit}"
        ))
        .bind(after.event.1)
        .fetch_all(self.reader())
        .await?;
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            events.push(SourceRow {
                xid: 0,
                id: row.try_get("id")?,
                log_id: row.try_get("log_id")?,
                created_at: time(row.try_get("request_created_at")?)?,
                change: status_change(row.try_get("status")?, row.try_get("reason")?)?,
                at: time(row.try_get("at")?)?,
            });
        }
        Ok(merge(after, attempts, events))
    }

    async fn logs_by_id(&self, ids: &[(i64, DateTime<Utc>)], bodies: Bodies, max_bytes: usize) -> Result<LogBatch> {
        if ids.is_empty() {
            return Ok(LogBatch::default());
        }
        let mut q: QueryBuilder<sqlx::Sqlite> = QueryBuilder::new(match bodies {
            Bodies::With => super::sqlite::LOG_SELECT,
            Bodies::Without => super::sqlite::LOG_SELECT_BASIC,
        });
        q.push(" WHERE r.id IN (");
        let mut list = q.separated(", ");
        for (id, _) in ids {
            list.push_bind(*id);
        }
        // In the order first named (a CASE takes its first match).
        q.push(") ORDER BY CASE r.id");
        for (n, (id, _)) in ids.iter().enumerate() {
            q.push(" WHEN ").push_bind(*id).push(format!(" THEN {n}"));
        }
        q.push(" END");
        take_within_budget(q.build().fetch(self.reader()), u32::MAX, max_bytes, super::sqlite::log_from_row).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(xid: i64, id: i64, secs: i64, status: bool) -> SourceRow {
        let change = if status {
            TailChange::Status { status: ExecutionStatus::Pending, reason: "redelivered".into() }
        } else {
            TailChange::Attempt(AttemptRecord {
                attempt_number: 1,
                attempted_at: DateTime::from_timestamp(secs, 0).unwrap(),
                success: true,
                status_code: Some(200),
                response_body: String::new(),
                response_truncated: false,
                response_time_ms: 1,
                error_category: None,
                error_message: None,
                manual: false,
            })
        };
        let at = DateTime::from_timestamp(secs, 0).unwrap();
        SourceRow { xid, id, log_id: id, created_at: at, change, at }
    }

    #[test]
    fn a_merge_keeps_each_sources_order_and_positions_only_move_forward() {
        // Attempt 2 started before attempt 1 but was recorded after it (a
        // higher ID); a status change falls between them in time.
        let attempts = vec![row(0, 1, 30, false), row(0, 2, 10, false)];
        let events = vec![row(0, 1, 20, true)];
        let start = TailPosition { attempt: (0, 0), event: (0, 0) };
        let merged = merge(start, attempts, events);
        let ids: Vec<(bool, i64)> =
            merged.iter().map(|e| (matches!(e.change, TailChange::Status { .. }), e.log_id)).collect();
        assert_eq!(ids, [(true, 1), (false, 1), (false, 2)]);
        let attempt_positions: Vec<(i64, i64)> = merged.iter().map(|e| e.position.attempt).collect();
        assert!(attempt_positions.windows(2).all(|w| w[0] <= w[1]), "{attempt_positions:?}");
        assert_eq!(merged.last().unwrap().position, TailPosition { attempt: (0, 2), event: (0, 1) });
    }

    #[test]
    fn a_position_survives_its_token_and_junk_is_refused() {
        let p = TailPosition { attempt: (7, 42), event: (9, i64::MAX) };
        assert_eq!(TailPosition::from_token(&p.token()), Some(p));
        assert_eq!(TailPosition::from_token("not base64 !"), None);
        assert_eq!(TailPosition::from_token(""), None);
    }
}
