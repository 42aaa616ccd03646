//! Group commit for Dispatch on Postgres: concurrent dispatches without an
//! idempotency key are inserted by one multi-row statement and one commit.
//! Each caller still answers only after the commit that holds its row, so
//! "accepted" keeps meaning "durable". No caller waits for a batch to fill:
//! a worker takes whatever has queued while the previous statement ran.

use std::sync::Arc;

use super::postgres::Db;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use crate::domain::NewDelivery;
use crate::error::{Error, ErrorCode, Result};

/// Most rows in one statement.
const MAX_BATCH: usize = 64;
/// Statements in flight at once (each holds one pool connection). Fewer
/// statements carry more rows each, and Postgres spends less per row: with
/// a client in its own process sending 20,000 Dispatches at concurrency 64,
/// 4 workers made about 6.5 rows per commit and Postgres used 157-183 CPU
/// ticks, 2 workers about 10 rows and 132-144 ticks, at 8.5-10.0k vs
/// 9.4-10.4k dispatches/s (docs/PERFORMANCE.md). One worker cost Postgres
/// less again, but two keep a statement forming while one commits.
pub const WORKERS: usize = 2;

type Job = (NewDelivery, oneshot::Sender<Result<i64>>);

pub struct InsertBatcher {
    queue: mpsc::Sender<Job>,
}

/// Starts `workers` tasks that each take whatever jobs have queued (at
/// least one, at most `max_batch`) and hand them to `run` as one batch; the
/// next batch forms while a statement runs. Returns the queue. Shared by
/// the group commits of Dispatch and of attempt records.
pub(crate) fn spawn_batch_workers<J, F, Fut>(pool: Db, workers: usize, max_batch: usize, run: F) -> mpsc::Sender<J>
where
    J: Send + 'static,
    F: Fn(Db, Vec<J>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (queue, rx) = mpsc::channel::<J>(max_batch * workers * 4);
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..workers {
        let (rx, pool, run) = (rx.clone(), pool.clone(), run.clone());
        tokio::spawn(async move {
            loop {
                let mut jobs = Vec::with_capacity(max_batch);
                {
                    let mut rx = rx.lock().await;
                    let Some(first) = rx.recv().await else { return };
                    jobs.push(first);
                    while jobs.len() < max_batch {
                        match rx.try_recv() {
                            Ok(job) => jobs.push(job),
                            Err(_) => break,
                        }
                    }
                }
                run(pool.clone(), jobs).await;
            }
        });
    }
    queue
}

impl InsertBatcher {
    pub fn start(pool: Db) -> Self {
        let queue =
            spawn_batch_workers(pool, WORKERS, MAX_BATCH, |pool, jobs| async move { insert(&pool, jobs).await });
        Self { queue }
    }

    /// Inserts one delivery (without idempotency key) and returns its log ID
    /// once the commit that holds it is done.
    pub async fn insert(&self, d: NewDelivery) -> Result<i64> {
        let (tx, rx) = oneshot::channel();
        let closed = || Error::internal(anyhow::anyhow!("the dispatch batcher stopped"));
        self.queue.send((d, tx)).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

async fn insert(pool: &Db, jobs: Vec<Job>) {
    let n = jobs.len();
    let mut cols = Columns::with_capacity(n);
    // Each delivery moves into the columns; only its ID stays to match replies.
    let mut replies = Vec::with_capacity(n);
    for (d, reply) in jobs {
        replies.push((d.request_id, reply));
        cols.push(d);
    }
    // Each delivery here is its own message: both rows, one statement.
    let result = sqlx::query_as::<_, (i64, Uuid)>(
        "WITH v AS (SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::int8[], $6::int8[], \
           $7::text[], $8::text[], $9::text[], $10::jsonb[], $11::int4[], $12::uuid[], $13::uuid[], $14::text[], \
           $15::bool[], $16::timestamptz[]) AS v(r, o, w, s, c, a, u, t, b, m, x, g, e, q, h, z)), \
         msg AS (INSERT INTO webhook_messages (message_id, organization_id, workspace_id, webhook_type, body, \
           call_id, assistant_id, metadata, created_at) \
           SELECT g, o, w, t, b, c, a, m, now() FROM v) \
         INSERT INTO webhook_requests (request_id, organization_id, workspace_id, subscription_id, call_id, \
           webhook_url, webhook_type, max_retries, next_attempt_at, message_id, endpoint_id, queue_key, created_at, \
           status, expires_at) \
         SELECT r, o, w, s, c, u, t, x, CASE WHEN NOT h THEN now() END, g, e, q, now(), \
           CASE WHEN h THEN 'held' ELSE 'pending' END, z FROM v \
         RETURNING id, request_id",
    )
    .bind(&cols.request_id)
    .bind(&cols.organization_id)
    .bind(&cols.workspace_id)
    .bind(&cols.subscription_id)
    .bind(&cols.call_id)
    .bind(&cols.assistant_id)
    .bind(&cols.url)
    .bind(&cols.webhook_type)
    .bind(&cols.body)
    .bind(&cols.metadata)
    .bind(&cols.max_retries)
    .bind(&cols.message_id)
    .bind(&cols.endpoint_id)
    .bind(&cols.queue_key)
    .bind(&cols.held)
    .bind(&cols.expires_at)
    .fetch_all(pool)
    .await;
    let rows = match result {
        Ok(rows) => Ok(rows),
        // The connection broke: the commit may or may not have happened
        // before it did. Look the batch up so that no caller is told "failed"
        // about a webhook that was in fact stored (and will be delivered).
        Err(
            err @ (sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed),
        ) => {
            let ids: Vec<Uuid> = replies.iter().map(|(id, _)| *id).collect();
            lookup(pool, &ids).await.map_err(|lookup_err| {
                tracing::warn!(error = %lookup_err, "looking up a batch after a lost connection failed");
                err
            })
        }
        Err(err) => Err(err),
    };
    match rows {
        Ok(rows) => {
            let ids: std::collections::HashMap<Uuid, i64> = rows.into_iter().map(|(id, r)| (r, id)).collect();
            for (request_id, reply) in replies {
                // After a lost connection, a row that is not there was not
                // committed: the batch commits whole or not at all.
                let answer = ids
                    .get(&request_id)
                    .copied()
                    .ok_or_else(|| Error::new(ErrorCode::Unavailable, "the store is unavailable, try again"));
                let _ = reply.send(answer);
            }
        }
        Err(err) => {
            // Every caller gets the same classified answer. For a statement
            // error nothing was committed. When even the look-up failed, the
            // outcome is unknown: UNAVAILABLE, and a caller that retries should
            // send an idempotency key so that a retry cannot store it twice.
            let err = Error::from(err);
            tracing::warn!(rows = n, error = %err, "batched dispatch insert failed");
            for (_, reply) in replies {
                let _ = reply.send(Err(Error::new(err.code, err.message.clone())));
            }
        }
    }
}

/// How long the look-up after a lost connection may take in all.
const LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The rows of `ids` that were committed, on a fresh connection.
async fn lookup(pool: &Db, ids: &[Uuid]) -> std::result::Result<Vec<(i64, Uuid)>, sqlx::Error> {
    let query =
        sqlx::query_as::<_, (i64, Uuid)>("SELECT id, request_id FROM webhook_requests WHERE request_id = ANY($1)")
            .bind(ids)
            .fetch_all(pool);
    tokio::time::timeout(LOOKUP_TIMEOUT, query).await.unwrap_or(Err(sqlx::Error::PoolTimedOut))
}

/// The batch, column by column, as the arrays `unnest` takes.
struct Columns {
    request_id: Vec<Uuid>,
    organization_id: Vec<Uuid>,
    workspace_id: Vec<Option<Uuid>>,
    subscription_id: Vec<Option<Uuid>>,
    call_id: Vec<Option<i64>>,
    assistant_id: Vec<Option<i64>>,
    url: Vec<String>,
    webhook_type: Vec<String>,
    body: Vec<String>,
    metadata: Vec<Option<serde_json::Value>>,
    max_retries: Vec<i32>,
    message_id: Vec<Uuid>,
    endpoint_id: Vec<Option<Uuid>>,
    queue_key: Vec<String>,
    held: Vec<bool>,
    expires_at: Vec<Option<chrono::DateTime<chrono::Utc>>>,
}

impl Columns {
    fn with_capacity(n: usize) -> Self {
        Self {
            request_id: Vec::with_capacity(n),
            organization_id: Vec::with_capacity(n),
            workspace_id: Vec::with_capacity(n),
            subscription_id: Vec::with_capacity(n),
            call_id: Vec::with_capacity(n),
            assistant_id: Vec::with_capacity(n),
            url: Vec::with_capacity(n),
            webhook_type: Vec::with_capacity(n),
            body: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            max_retries: Vec::with_capacity(n),
            message_id: Vec::with_capacity(n),
            endpoint_id: Vec::with_capacity(n),
            queue_key: Vec::with_capacity(n),
            held: Vec::with_capacity(n),
            expires_at: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, d: NewDelivery) {
        self.queue_key.push(d.queue_key());
        self.request_id.push(d.request_id);
        self.organization_id.push(d.organization_id);
        self.workspace_id.push(d.workspace_id);
        self.subscription_id.push(d.subscription_id);
        self.call_id.push(d.call_id);
        self.assistant_id.push(d.assistant_id);
        self.url.push(d.webhook_url.as_str().to_owned());
        self.webhook_type.push(d.webhook_type);
        self.body.push(d.body);
        self.metadata.push(d.metadata);
        self.max_retries.push(i32::try_from(d.max_retries).unwrap_or(i32::MAX));
        self.message_id.push(d.message_id);
        self.endpoint_id.push(d.endpoint_id);
        self.held.push(d.held);
        self.expires_at.push(d.expires_at);
    }
}
