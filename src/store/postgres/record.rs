//! Group commit for attempt records on Postgres: attempts that finish
//! together are recorded by one multi-row statement (one transaction, one
//! WAL flush) instead of one commit each, which is where delivery spent its
//! time (docs/PERFORMANCE.md: most sessions waiting on the WAL write of the
//! record statement). Each caller still answers only after the commit that
//! holds its attempt. No caller waits for a batch to fill: a worker takes
//! whatever queued while the previous statement ran.
//!
//! The statement is [`super::sql::RECORD_ATTEMPT`] over arrays: the same
//! rules (one attempt per claim, retry-or-fail decided on the locked row, a
//! late attempt kept but not held), row for row. Rows are locked in ID order
//! (the sorted input drives a nested loop, whose inner side locks one row per
//! outer row, in the outer's order), so two batches never deadlock; each
//! lookup is a keyed probe whatever the planner thinks of the tables' sizes
//! (see `claimed_with!` in `super::sql`). An earlier try recorded a
//! batch as single-row statements in one transaction, run one after the
//! other; it halved throughput and was reverted (05d863d).

use super::Db;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::domain::{ClaimedDelivery, ExecutionStatus, NextStep};
use crate::error::{Error, Result};
use crate::store::NewAttempt;

/// Most attempts in one statement.
const MAX_BATCH: usize = 64;
/// Statements in flight at once (each holds one pool connection).
const WORKERS: usize = 2;

/// The row-for-row array form of `RECORD_ATTEMPT` ($1..$13 become arrays,
/// `n` keeps each input's place so that answers go back to their callers).
pub const RECORD_ATTEMPTS: &str = "WITH input AS ( \
       SELECT * FROM unnest($1::int8[], $2::uuid[], $3::text[], $4::int8[], $5::timestamptz[], $6::bool[], \
         $7::int4[], $8::text[], $9::bool[], $10::int8[], $11::text[], $12::text[], $13::timestamptz[]) \
         WITH ORDINALITY AS t(rid, lease, want, retry_ms, attempted_at, success, status_code, response_body, \
           truncated, time_ms, category, message, rcreated, n)), \
     old AS ( \
       SELECT i.n, r.id, r.created_at, r.attempt_count, r.max_retries, r.manual_from, i.want, i.retry_ms, \
         COALESCE(r.lease_id = i.lease AND r.status = 'pending', false) AS held \
       FROM (SELECT * FROM input ORDER BY rid) i \
       CROSS JOIN LATERAL (SELECT r.id, r.created_at, r.attempt_count, r.max_retries, r.manual_from, r.lease_id, \
           r.status FROM webhook_requests r WHERE r.id = i.rid AND r.created_at = i.rcreated FOR UPDATE) r \
       LEFT JOIN LATERAL (SELECT true AS found FROM webhook_attempts a \
         WHERE a.request_pk = i.rid AND a.lease_id = i.lease AND a.request_created_at = i.rcreated LIMIT 1) seen \
         ON true \
       WHERE seen.found IS NULL), \
     dec AS ( \
       SELECT old.*, CASE WHEN NOT old.held THEN NULL \
         WHEN old.want = 'pending' AND old.attempt_count + 1 - COALESCE(old.manual_from, 0) > old.max_retries \
           THEN 'failed' \
         ELSE old.want END AS new_status FROM old), \
     upd AS ( \
       UPDATE webhook_requests r SET \
         attempt_count = dec.attempt_count + 1, \
         status = COALESCE(dec.new_status, r.status), \
         next_attempt_at = CASE WHEN NOT dec.held THEN r.next_attempt_at \
           WHEN dec.new_status = 'pending' THEN now() + make_interval(secs => dec.retry_ms::float8 / 1000) END, \
         lease_id = CASE WHEN dec.held THEN NULL ELSE r.lease_id END, \
         leased_until = CASE WHEN dec.held THEN NULL ELSE r.leased_until END, \
         updated_at = now() \
       FROM dec WHERE r.id = dec.id AND r.created_at = dec.created_at \
       RETURNING dec.n, r.id, r.created_at, r.attempt_count, dec.held, dec.manual_from IS NOT NULL AS manual), \
     ins AS ( \
       INSERT INTO webhook_attempts (request_pk, request_created_at, attempt_number, attempted_at, success, \
         status_code, response_body, response_truncated, response_time_ms, error_category, error_message, lease_id, \
         held, manual) \
       SELECT upd.id, upd.created_at, upd.attempt_count, i.attempted_at, i.success, i.status_code, \
         i.response_body, i.truncated, i.time_ms, i.category, i.message, i.lease, upd.held, upd.manual \
       FROM upd JOIN input i ON i.n = upd.n) \
     SELECT i.n, COALESCE((SELECT old.held FROM old WHERE old.n = i.n), EXISTS (SELECT 1 FROM webhook_attempts a \
       WHERE a.request_pk = i.rid AND a.lease_id = i.lease AND a.request_created_at = i.rcreated)) AS held \
     FROM input i ORDER BY i.n";

/// One attempt to record, as the statement's columns take it.
struct Job {
    log_id: i64,
    created_at: DateTime<Utc>,
    lease_id: Uuid,
    status: &'static str,
    retry_ms: Option<i64>,
    attempt: NewAttempt,
    reply: oneshot::Sender<Result<bool>>,
}

pub struct RecordBatcher {
    queue: mpsc::Sender<Job>,
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl RecordBatcher {
    pub fn start(pool: Db) -> Self {
        let queue = crate::store::batch::spawn_batch_workers(pool, WORKERS, MAX_BATCH, |pool, jobs| async move {
            record(&pool, jobs).await
        });
        Self { queue }
    }

    /// Records one attempt (see `Store::record_attempt`) and answers once
    /// the commit that holds it is done.
    pub async fn record(&self, claim: &ClaimedDelivery, attempt: &NewAttempt) -> Result<bool> {
        let (status, retry_ms) = match attempt.next {
            NextStep::Succeeded => (ExecutionStatus::Succeeded, None),
            NextStep::Failed => (ExecutionStatus::Failed, None),
            NextStep::RetryAfter(delay) => (ExecutionStatus::Pending, Some(millis(delay))),
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            log_id: claim.log_id,
            created_at: claim.created_at,
            lease_id: claim.lease_id,
            status: status.as_str(),
            retry_ms,
            attempt: attempt.clone(),
            reply,
        };
        let stopped = || Error::internal(anyhow::anyhow!("the attempt recorder stopped"));
        self.queue.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Records `jobs`, at most one per delivery per statement: two attempts of
/// one delivery in one statement (a late one and the current holder's)
/// would update its row once, with either's values, and lose the other's.
async fn record(pool: &Db, jobs: Vec<Job>) {
    let mut pending = jobs;
    while !pending.is_empty() {
        let mut seen = std::collections::HashSet::new();
        let (now, later): (Vec<Job>, Vec<Job>) = pending.into_iter().partition(|j| seen.insert(j.log_id));
        record_unique(pool, now).await;
        pending = later;
    }
}

async fn record_unique(pool: &Db, jobs: Vec<Job>) {
    let n = jobs.len();
    let mut ids = Vec::with_capacity(n);
    let mut leases = Vec::with_capacity(n);
    let mut wants = Vec::with_capacity(n);
    let mut retries = Vec::with_capacity(n);
    let mut attempted = Vec::with_capacity(n);
    let mut success = Vec::with_capacity(n);
    let mut codes = Vec::with_capacity(n);
    let mut bodies = Vec::with_capacity(n);
    let mut truncated = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    let mut categories = Vec::with_capacity(n);
    let mut messages = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let mut replies = Vec::with_capacity(n);
    for j in jobs {
        ids.push(j.log_id);
        leases.push(j.lease_id);
        wants.push(j.status);
        retries.push(j.retry_ms);
        attempted.push(j.attempt.attempted_at);
        success.push(j.attempt.success);
        codes.push(j.attempt.status_code);
        bodies.push(j.attempt.response_body);
        truncated.push(j.attempt.response_truncated);
        times.push(j.attempt.response_time_ms);
        categories.push(j.attempt.error_category);
        messages.push(j.attempt.error_message);
        created.push(j.created_at);
        replies.push(j.reply);
    }
    let result = sqlx::query_as::<_, (i64, bool)>(RECORD_ATTEMPTS)
        .bind(&ids)
        .bind(&leases)
        .bind(&wants)
        .bind(&retries)
        .bind(&attempted)
        .bind(&success)
        .bind(&codes)
        .bind(&bodies)
        .bind(&truncated)
        .bind(&times)
        .bind(&categories)
        .bind(&messages)
        .bind(&created)
        .fetch_all(pool)
        .await;
    match result {
        Ok(rows) => {
            let mut held = vec![false; n];
            for (i, h) in rows {
                if let Some(slot) = usize::try_from(i - 1).ok().and_then(|i| held.get_mut(i)) {
                    *slot = h;
                }
            }
            for (reply, held) in replies.into_iter().zip(held) {
                let _ = reply.send(Ok(held));
            }
        }
        Err(err) => {
            // Nothing of the batch was recorded, or (a lost connection) the
            // outcome is unknown: every caller gets the error, and the
            // engine records again. Recording is idempotent per claim, so a
            // batch that did commit records nothing twice.
            let err = Error::from(err);
            tracing::warn!(rows = n, error = %err, "batched attempt record failed");
            for reply in replies {
                let _ = reply.send(Err(Error::new(err.code, err.message.clone())));
            }
        }
    }
}
