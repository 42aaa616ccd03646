//! Partition upkeep and retention on Postgres, run by one process at a time.
//!
//! Every replica runs maintenance at start and then periodically, and
//! `hookpost purge` may run beside them; the runs take turns through a
//! session-level advisory lock. The lock is held by a connection of its own,
//! opened for the run and closed after it, never a pooled one: `DETACH ...
//! CONCURRENTLY` cannot run inside a transaction block (so a transaction-level
//! lock cannot cover it), and a session lock left on a pooled connection by a
//! failed or cancelled run would block maintenance until that connection
//! happened to close. Closing our own connection always releases it.
//!
//! Locks on the parent tables, which every dispatch, claim and listing uses:
//! - a new day is `CREATE TABLE (LIKE parent)` + a CHECK matching its range +
//!   `ATTACH PARTITION`, which takes SHARE UPDATE EXCLUSIVE on the parent
//!   (`CREATE TABLE ... PARTITION OF` would take ACCESS EXCLUSIVE, and queue
//!   every dispatch behind any long reader); the CHECK lets ATTACH skip its
//!   validation scan;
//! - an expired day goes by `DETACH ... CONCURRENTLY` (SHARE UPDATE EXCLUSIVE)
//!   and only then `DROP TABLE` of the detached table, which locks nothing
//!   but that table. A day still attached is never dropped: DROP would take
//!   ACCESS EXCLUSIVE on the parent. A detach that fails leaves its day
//!   attached until the next run; one interrupted half-way (pending detach)
//!   is finished with `DETACH ... FINALIZE`;
//! - day tables left detached by an interrupted run are found by name and
//!   dropped once past the cutoff.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use sqlx::{Connection, PgConnection, Row};

use super::PostgresStore;
use crate::domain::PurgeReport;
use crate::error::{Error, Result};

/// The advisory lock that makes maintenance runs take turns: "hookpost" in
/// ASCII, so it is recognisable in `pg_locks` (classid 0x686f6f6b, objid
/// 0x706f7374).
const MAINTENANCE_LOCK: i64 = 0x686f_6f6b_706f_7374;

/// Days of partitions created ahead of today.
const PARTITION_DAYS_AHEAD: u64 = 7;

/// The partitioned tables, their partition keys and their day partitions'
/// storage options (`CREATE TABLE … LIKE` does not copy them): a day's
/// deliveries, their attempts and their messages go together. Deliveries
/// keep a share of each page free, so that a claim's new row version fits
/// beside the old one (a HOT update: see the claim_lease migration).
const TABLES: [(&str, &str, &str); 3] = [
    ("webhook_requests", "created_at", " WITH (fillfactor = 45)"),
    ("webhook_attempts", "request_created_at", ""),
    ("webhook_messages", "created_at", ""),
];

/// How long a caller that needs partitions (start-up, `ensure_partitions`)
/// waits for another process's maintenance run to end.
const WAIT_FOR_TURN: Duration = Duration::from_secs(120);

fn partition_name(table: &str, day: NaiveDate) -> String {
    format!("{table}_p{}", day.format("%Y%m%d"))
}

/// The day a partition's name stands for, if it is one of ours.
fn day_of(name: &str) -> Option<(&'static str, NaiveDate)> {
    TABLES.iter().find_map(|(table, _, _)| {
        let digits = name.strip_prefix(table)?.strip_prefix("_p")?;
        let day = NaiveDate::parse_from_str(digits, "%Y%m%d").ok()?;
        (digits.len() == 8).then_some((*table, day))
    })
}

fn day_start(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(NaiveTime::MIN).and_utc()
}

/// A timestamp literal for DDL (bounds cannot be bind parameters).
fn literal(t: DateTime<Utc>) -> String {
    format!("'{}'", t.format("%Y-%m-%d %H:%M:%S+00"))
}

/// This process's turn at maintenance: a dedicated session holding the lock.
/// Dropped without `end` (an error, a cancelled task), the connection closes
/// and Postgres releases the lock with the session.
struct Turn {
    conn: PgConnection,
}

impl Turn {
    async fn end(mut self) {
        if let Err(e) =
            sqlx::query("SELECT pg_advisory_unlock($1)").bind(MAINTENANCE_LOCK).execute(&mut self.conn).await
        {
            tracing::warn!(error = %e, "releasing the maintenance lock failed; closing its session releases it");
        }
        let _ = self.conn.close().await;
    }
}

impl PostgresStore {
    /// Takes the maintenance turn if no other process holds it; with `wait`,
    /// keeps trying that long first.
    async fn turn(&self, wait: Option<Duration>) -> Result<Option<Turn>> {
        let mut conn = PgConnection::connect_with(&self.options).await?;
        let deadline = Instant::now() + wait.unwrap_or_default();
        loop {
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(MAINTENANCE_LOCK)
                .fetch_one(&mut conn)
                .await?;
            if got {
                return Ok(Some(Turn { conn }));
            }
            if Instant::now() >= deadline {
                let _ = conn.close().await;
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Creates the day partitions from yesterday to a week ahead (days by the
    /// database's clock). When another process is maintaining, its run does
    /// this; only a missing today or tomorrow makes this one wait its turn.
    pub(super) async fn prepare_days(&self) -> Result<()> {
        let today: NaiveDate =
            sqlx::query_scalar("SELECT (now() AT TIME ZONE 'UTC')::date").fetch_one(&self.db).await?;
        let (first, last) = (today - chrono::Days::new(1), today + chrono::Days::new(PARTITION_DAYS_AHEAD));
        let turn = match self.turn(None).await? {
            Some(turn) => turn,
            None => {
                let tomorrow = today + chrono::Days::new(1);
                if self.attached(today).await? && self.attached(tomorrow).await? {
                    tracing::debug!("another process is maintaining partitions");
                    return Ok(());
                }
                self.turn(Some(WAIT_FOR_TURN)).await?.ok_or_else(busy)?
            }
        };
        let mut turn = turn;
        let created = create_days(&mut turn.conn, first, last).await;
        turn.end().await;
        created
    }

    /// Creates the day partitions of both tables from `first` to `last`
    /// (waiting for the maintenance turn).
    pub async fn ensure_partitions(&self, first: NaiveDate, last: NaiveDate) -> Result<()> {
        let mut turn = self.turn(Some(WAIT_FOR_TURN)).await?.ok_or_else(busy)?;
        let created = create_days(&mut turn.conn, first, last).await;
        turn.end().await;
        created
    }

    /// Whether every table has an attached partition for `day`.
    async fn attached(&self, day: NaiveDate) -> Result<bool> {
        let names: Vec<String> = TABLES.iter().map(|(t, _, _)| partition_name(t, day)).collect();
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_inherits WHERE NOT inhdetachpending \
             AND inhrelid IN (SELECT to_regclass(n) FROM unnest($1::text[]) AS n)",
        )
        .bind(&names)
        .fetch_one(&self.db)
        .await?;
        Ok(n == TABLES.len() as i64)
    }

    /// Removes whole days older than `older_than` before the database's
    /// `now()`, keeping any day that holds a pending delivery. Skipped (and
    /// reported so) while another process holds the maintenance turn.
    pub(super) async fn purge_days(&self, older_than: chrono::TimeDelta, dry_run: bool) -> Result<PurgeReport> {
        let Some(mut turn) = self.turn(None).await? else {
            return Ok(PurgeReport { skipped: true, ..PurgeReport::default() });
        };
        let purged = purge(&mut turn.conn, older_than, dry_run).await;
        turn.end().await;
        purged
    }
}

fn busy() -> Error {
    Error::unavailable(anyhow::anyhow!("another process held the maintenance lock for {WAIT_FOR_TURN:?}"))
}

async fn create_days(conn: &mut PgConnection, first: NaiveDate, last: NaiveDate) -> Result<()> {
    let mut day = first;
    while day <= last {
        for (parent, key, storage) in TABLES {
            create_day(conn, parent, key, storage, day).await?;
        }
        day = day + chrono::Days::new(1);
    }
    Ok(())
}

async fn create_day(conn: &mut PgConnection, parent: &str, key: &str, storage: &str, day: NaiveDate) -> Result<()> {
    let part = partition_name(parent, day);
    let state: Option<Option<bool>> = sqlx::query_scalar(
        "SELECT (SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = c.oid) FROM pg_class c \
         WHERE c.oid = to_regclass($1)",
    )
    .bind(&part)
    .fetch_optional(&mut *conn)
    .await?;
    match state {
        // Attached, or half-detached (the purge finishes that): nothing to do.
        Some(Some(_)) => return Ok(()),
        // Created by a run that stopped before attaching it: attach it now.
        Some(None) => {}
        None => {
            // Identity is the parent's: rows inserted through it take their
            // ids from the parent's sequence.
            sqlx::query(&format!("CREATE TABLE {part} (LIKE {parent} INCLUDING ALL EXCLUDING IDENTITY){storage}"))
                .execute(&mut *conn)
                .await?;
        }
    }
    let (from, to) = (literal(day_start(day)), literal(day_start(day + chrono::Days::new(1))));
    let bound = format!("{part}_bound");
    sqlx::query(&format!("ALTER TABLE {part} DROP CONSTRAINT IF EXISTS {bound}")).execute(&mut *conn).await?;
    sqlx::query(&format!(
        "ALTER TABLE {part} ADD CONSTRAINT {bound} CHECK ({key} IS NOT NULL AND {key} >= {from} AND {key} < {to})"
    ))
    .execute(&mut *conn)
    .await?;
    sqlx::query(&format!("ALTER TABLE {parent} ATTACH PARTITION {part} FOR VALUES FROM ({from}) TO ({to})"))
        .execute(&mut *conn)
        .await?;
    tracing::info!(partition = %part, "day partition created");
    Ok(())
}

async fn purge(conn: &mut PgConnection, older_than: chrono::TimeDelta, dry_run: bool) -> Result<PurgeReport> {
    // The cutoff is the database's: created_at is stamped by its clock.
    let older_than_ms = older_than.num_milliseconds();
    let cutoff: DateTime<Utc> = sqlx::query_scalar("SELECT now() - make_interval(secs => $1::float8 / 1000)")
        .bind(older_than_ms)
        .fetch_one(&mut *conn)
        .await?;
    let mut report = PurgeReport { cutoff: Some(cutoff), ..PurgeReport::default() };
    let expired = |day: NaiveDate| day_start(day + chrono::Days::new(1)) <= cutoff;

    // 1. Detaches interrupted half-way are finished first: until then their
    //    day can be neither attached nor dropped.
    let pending = sqlx::query(
        "SELECT c.relname::text AS part, p.relname::text AS parent FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent \
         WHERE i.inhdetachpending AND p.relname IN ('webhook_requests', 'webhook_attempts', 'webhook_messages')",
    )
    .fetch_all(&mut *conn)
    .await?;
    for row in &pending {
        let (part, parent): (String, String) = (row.try_get("part")?, row.try_get("parent")?);
        if dry_run {
            continue;
        }
        let sql = format!("ALTER TABLE {parent} DETACH PARTITION {part} FINALIZE");
        match sqlx::query(&sql).execute(&mut *conn).await {
            Ok(_) => tracing::info!(partition = %part, "finished an interrupted detach"),
            Err(e) => tracing::warn!(partition = %part, error = %e, "finishing an interrupted detach failed"),
        }
    }

    // 2. Expired attached days without pending work are counted and detached.
    let mut days = BTreeSet::new();
    let mut detached_now = BTreeSet::new();
    for day in attached_days(conn).await? {
        if !expired(day) {
            continue;
        }
        let requests = partition_name("webhook_requests", day);
        let attempts = partition_name("webhook_attempts", day);
        let messages = partition_name("webhook_messages", day);
        let label = day.format("%Y-%m-%d").to_string();
        let (mut n, mut pending) = (0i64, 0i64);
        if is_attached(conn, &requests).await? {
            let row = sqlx::query(&format!(
                "SELECT count(*) AS n, count(*) FILTER (WHERE status = 'pending') AS pending FROM {requests}"
            ))
            .fetch_one(&mut *conn)
            .await?;
            (n, pending) = (row.try_get("n")?, row.try_get("pending")?);
        }
        if pending > 0 {
            // A delivery still in progress keeps its day; it becomes
            // droppable once its last retry is recorded.
            report.kept_pending.push(label);
            continue;
        }
        let a = if is_attached(conn, &attempts).await? { count_rows(conn, &attempts).await? } else { 0 };
        days.insert(label);
        report.requests += n as u64;
        report.attempts += a as u64;
        if dry_run {
            continue;
        }
        // Deliveries first: once they are gone the day's attempts and
        // messages are unreachable, so a table left attached by a failed
        // detach hides nothing and is simply retried next run.
        for (parent, part) in
            [("webhook_requests", &requests), ("webhook_attempts", &attempts), ("webhook_messages", &messages)]
        {
            if !is_attached(conn, part).await? {
                continue;
            }
            let sql = format!("ALTER TABLE {parent} DETACH PARTITION {part} CONCURRENTLY");
            match sqlx::query(&sql).execute(&mut *conn).await {
                Ok(_) => {
                    detached_now.insert(part.clone());
                }
                Err(e) => {
                    // Dropping it attached would lock the parent against every
                    // dispatch; it stays until a later run detaches it (or, if
                    // it was interrupted half-way, finalises the detach).
                    tracing::warn!(partition = %part, error = %e, "detaching an expired day failed; it stays attached");
                    report.left_attached.push(part.clone());
                }
            }
        }
    }

    // 3. Detached day tables past the cutoff (just detached, finalised, or
    //    left by an interrupted run) are dropped; being detached, their DROP
    //    locks nothing but themselves. Those detached before this run were
    //    not counted above.
    let detached: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c \
         WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace \
           AND c.relname ~ '^webhook_(requests|attempts|messages)_p[0-9]{8}$' \
           AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid) \
         ORDER BY c.relname",
    )
    .fetch_all(&mut *conn)
    .await?;
    for name in detached {
        let Some((table, day)) = day_of(&name) else { continue };
        if !expired(day) {
            continue;
        }
        if !detached_now.contains(&name) {
            let n = count_rows(conn, &name).await? as u64;
            match table {
                "webhook_requests" => report.requests += n,
                "webhook_attempts" => report.attempts += n,
                // Messages are not counted: a log is a delivery.
                _ => {}
            }
            days.insert(day.format("%Y-%m-%d").to_string());
        }
        if !dry_run {
            sqlx::query(&format!("DROP TABLE IF EXISTS {name}")).execute(&mut *conn).await?;
        }
    }
    report.days = days.into_iter().collect();

    if !dry_run {
        // Idempotency keys whose request is gone (a kept day keeps its keys,
        // so a retried Dispatch still finds its request), and the live
        // tail's status changes of deliveries that are gone: batched.
        delete_orphans(
            conn,
            "DELETE FROM idempotency_keys WHERE ctid IN \
             (SELECT k.ctid FROM idempotency_keys k WHERE k.created_at < $1 AND NOT EXISTS \
               (SELECT 1 FROM webhook_requests r WHERE r.id = k.log_id AND r.created_at = k.created_at) \
              LIMIT 10000)",
            cutoff,
        )
        .await?;
        delete_orphans(
            conn,
            "DELETE FROM delivery_events WHERE id IN \
             (SELECT e.id FROM delivery_events e WHERE e.request_created_at < $1 AND NOT EXISTS \
               (SELECT 1 FROM webhook_requests r WHERE r.id = e.log_id AND r.created_at = e.request_created_at) \
              LIMIT 10000)",
            cutoff,
        )
        .await?;
    }
    Ok(report)
}

/// Runs a `DELETE … LIMIT 10000` of rows older than `cutoff` until it
/// deletes fewer: no single statement holds locks or WAL for long.
async fn delete_orphans(conn: &mut PgConnection, sql: &str, cutoff: DateTime<Utc>) -> Result<()> {
    loop {
        let done = sqlx::query(sql).bind(cutoff).execute(&mut *conn).await?;
        if done.rows_affected() < 10000 {
            return Ok(());
        }
    }
}

async fn to_regclass(conn: &mut PgConnection, name: &str) -> Result<Option<String>> {
    Ok(sqlx::query_scalar("SELECT to_regclass($1)::text").bind(name).fetch_one(&mut *conn).await?)
}

/// Whether `name` is an attached (not half-detached) partition.
async fn is_attached(conn: &mut PgConnection, name: &str) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass($1) AND NOT inhdetachpending)",
    )
    .bind(name)
    .fetch_one(&mut *conn)
    .await?)
}

/// Rows of a day table; 0 when it does not exist.
async fn count_rows(conn: &mut PgConnection, table: &str) -> Result<i64> {
    if to_regclass(conn, table).await?.is_none() {
        return Ok(0);
    }
    Ok(sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(&mut *conn).await?)
}

/// The days with a partition of either table attached (not half-detached),
/// oldest first.
async fn attached_days(conn: &mut PgConnection) -> Result<Vec<NaiveDate>> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         JOIN pg_class p ON p.oid = i.inhparent \
         WHERE p.relname IN ('webhook_requests', 'webhook_attempts', 'webhook_messages') AND NOT i.inhdetachpending",
    )
    .fetch_all(&mut *conn)
    .await?;
    let days: BTreeSet<NaiveDate> = names.iter().filter_map(|n| day_of(n)).map(|(_, d)| d).collect();
    Ok(days.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_day_tables_are_recognised() {
        let d = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
        assert_eq!(day_of("webhook_requests_p20261125"), Some(("webhook_requests", d)));
        assert_eq!(day_of("webhook_attempts_p20261125"), Some(("webhook_attempts", d)));
        assert_eq!(day_of("webhook_messages_p20261125"), Some(("webhook_messages", d)));
        assert_eq!(day_of("webhook_requests_p2026112"), None);
        assert_eq!(day_of("webhook_requests_p20261325"), None);
        assert_eq!(day_of("webhook_requests"), None);
        assert_eq!(day_of("other_p20261125"), None);
    }
}
