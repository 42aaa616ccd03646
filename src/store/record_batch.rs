//! Group commit for attempt records on Postgres: attempts finishing at the
//! same time are recorded by one transaction, so they share one WAL flush
//! instead of waiting for one each. Each record is still its own statement
//! (the same `RECORD_ATTEMPT` as alone), and each caller answers only after
//! the commit that holds its record, so "recorded" keeps meaning durable.

use std::sync::Arc;

use sqlx::{PgPool, Row};
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use super::postgres::sql::RECORD_ATTEMPT;
use crate::error::{Error, Result};

/// Most records in one transaction.
const MAX_BATCH: usize = 64;
/// Transactions in flight at once (each holds one pool connection).
const WORKERS: usize = 2;

/// One record's statement parameters, in `RECORD_ATTEMPT`'s order.
#[derive(Debug, Clone)]
pub struct Record {
    pub log_id: i64,
    pub lease_id: Uuid,
    pub status: &'static str,
    pub retry_in_ms: Option<i64>,
    pub attempted_at: chrono::DateTime<chrono::Utc>,
    pub success: bool,
    pub status_code: Option<i32>,
    pub response_body: String,
    pub response_truncated: bool,
    pub response_time_ms: i64,
    pub error_category: Option<&'static str>,
    pub error_message: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

type Job = (Record, oneshot::Sender<Result<bool>>);

pub struct RecordBatcher {
    queue: mpsc::Sender<Job>,
}

impl RecordBatcher {
    pub fn start(pool: PgPool) -> Self {
        let (queue, rx) = mpsc::channel::<Job>(MAX_BATCH * WORKERS * 4);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..WORKERS {
            let (rx, pool) = (rx.clone(), pool.clone());
            tokio::spawn(async move {
                loop {
                    let mut jobs = Vec::with_capacity(MAX_BATCH);
                    {
                        let mut rx = rx.lock().await;
                        let Some(first) = rx.recv().await else { return };
                        jobs.push(first);
                        while jobs.len() < MAX_BATCH {
                            match rx.try_recv() {
                                Ok(job) => jobs.push(job),
                                Err(_) => break,
                            }
                        }
                    }
                    record(&pool, jobs).await;
                }
            });
        }
        Self { queue }
    }

    /// Records one attempt; true when its claim still held the delivery.
    pub async fn record(&self, r: Record) -> Result<bool> {
        let (tx, rx) = oneshot::channel();
        let closed = || Error::internal(anyhow::anyhow!("the attempt batcher stopped"));
        self.queue.send((r, tx)).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

async fn statement<'e, E: sqlx::PgExecutor<'e>>(executor: E, r: &Record) -> std::result::Result<bool, sqlx::Error> {
    let row = sqlx::query(RECORD_ATTEMPT)
        .bind(r.log_id)
        .bind(r.lease_id)
        .bind(r.status)
        .bind(r.retry_in_ms)
        .bind(r.attempted_at)
        .bind(r.success)
        .bind(r.status_code)
        .bind(&r.response_body)
        .bind(r.response_truncated)
        .bind(r.response_time_ms)
        .bind(r.error_category)
        .bind(&r.error_message)
        .bind(r.created_at)
        .fetch_optional(executor)
        .await?;
    // No row: the request is gone (purged); nothing left to record against.
    Ok(match row {
        Some(row) => row.try_get("held")?,
        None => false,
    })
}

async fn record(pool: &PgPool, mut jobs: Vec<Job>) {
    // Rows are locked in one order in every batch, so two batches touching
    // the same requests (a lost lease's late record and its successor's)
    // wait for each other instead of deadlocking.
    jobs.sort_by_key(|(r, _)| r.log_id);
    let together = async {
        let mut tx = pool.begin().await?;
        let mut held = Vec::with_capacity(jobs.len());
        for (r, _) in &jobs {
            held.push(statement(&mut *tx, r).await?);
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(held)
    };
    match together.await {
        Ok(held) => {
            for ((_, reply), h) in jobs.into_iter().zip(held) {
                let _ = reply.send(Ok(h));
            }
        }
        // Nothing of the batch was committed (a failed statement aborts the
        // transaction; a lost commit reply is retried as a no-op, since a
        // claim records at most one attempt). Each record goes alone, so one
        // bad record cannot fail the others.
        Err(err) => {
            tracing::debug!(rows = jobs.len(), error = %err, "batched attempt records failed; recording one by one");
            for (r, reply) in jobs {
                let _ = reply.send(statement(pool, &r).await.map_err(Error::from));
            }
        }
    }
}
