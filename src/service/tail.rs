//! WatchWebhookLogs: every attempt and status change of the deliveries a
//! filter matches, as they are recorded by any replica, from now or from a
//! resume token. The store's tail is gap-free (see `store::tail`); this
//! polls it, woken early by this process's own records, and filters each
//! event by its delivery's log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::Stream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{WebhookService, check_filter};
use crate::auth::Principal;
use crate::domain::{LogFilter, LogRecord};
use crate::error::{Error, ErrorCode, Result};
use crate::store::{TailChange, TailPosition};

/// How often a watcher looks for what other replicas recorded.
const POLL: Duration = Duration::from_millis(200);
/// Events read per source per look.
const BATCH: u32 = 200;

#[derive(Debug, Clone, Default)]
pub struct WatchQuery {
    pub filter: LogFilter,
    /// Continue right after this event; empty: from now.
    pub resume_token: String,
}

/// One event of a watch: the delivery as it is now and what happened.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub log: LogRecord,
    pub change: TailChange,
    pub at: DateTime<Utc>,
    pub resume_token: String,
}

/// The watchers of this process: their count per API key, their wake-up,
/// and the token that ends them all at shutdown.
#[derive(Default)]
pub struct Watchers {
    open: Mutex<HashMap<String, u32>>,
    pub(super) wake: Notify,
    pub(super) shutdown: CancellationToken,
}

/// One open stream, counted against its key until dropped.
struct Slot {
    watchers: Arc<Watchers>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.watchers.open.lock().expect("watchers poisoned");
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Whether `l` is among what `f` selects (the in-memory twin of the
/// stores' list filters).
pub fn matches(f: &LogFilter, l: &LogRecord) -> bool {
    let category = l.last_attempt.as_ref().and_then(|a| a.error_category.as_deref());
    f.organization_id.is_none_or(|v| v == l.organization_id)
        && f.workspace_id.is_none_or(|v| Some(v) == l.workspace_id)
        && f.subscription_id.is_none_or(|v| Some(v) == l.subscription_id)
        && f.call_id.is_none_or(|v| Some(v) == l.call_id)
        && f.webhook_type.as_ref().is_none_or(|v| *v == l.webhook_type)
        && f.status.is_none_or(|v| v == l.status)
        && f.endpoint_id.is_none_or(|v| Some(v) == l.endpoint_id)
        && f.error_category.as_deref().is_none_or(|v| Some(v) == category)
        && f.created_after.is_none_or(|v| l.created_at >= v)
        && f.created_before.is_none_or(|v| l.created_at < v)
        && f.expr.as_ref().is_none_or(|e| e.matches(l))
}

impl WebhookService {
    /// Wakes this process's watchers: something was just recorded.
    pub fn recorded(&self) {
        self.watchers.wake.notify_waiters();
    }

    /// Ends every watch stream (at shutdown, so that connections can drain).
    pub fn stop_watchers(&self) {
        self.watchers.shutdown.cancel();
    }

    /// Opens a watch. The stream ends at shutdown or when the client goes.
    pub async fn watch(
        &self,
        who: &Principal,
        mut q: WatchQuery,
    ) -> Result<impl Stream<Item = Result<WatchEvent>> + Send + 'static> {
        check_filter(&q.filter, &self.limits)?;
        // Another organization's logs look like an organization with none.
        let mut nothing = false;
        if let Some(org) = who.organization() {
            match q.filter.organization_id {
                Some(named) if named != org => nothing = true,
                _ => q.filter.organization_id = Some(org),
            }
        }
        let mut position = match q.resume_token.as_str() {
            "" => self.store.tail_now().await?,
            token => TailPosition::from_token(token)
                .ok_or_else(|| Error::invalid("resume_token", "is not a token this API issued"))?,
        };
        let slot = self.open_slot(who)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<WatchEvent>>(64);
        let service = self.clone();
        let filter = q.filter;
        tokio::spawn(async move {
            let _slot = slot;
            let shutdown = service.watchers.shutdown.clone();
            loop {
                if nothing {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tx.closed() => return,
                    }
                }
                let wake = service.watchers.wake.notified();
                let events = match service.store.tail(position, BATCH).await {
                    Ok(events) => events,
                    Err(err) => {
                        let _ = tx.send(Err(err)).await;
                        return;
                    }
                };
                let full = events.len() >= BATCH as usize;
                if !events.is_empty() {
                    let mut ids: Vec<(i64, DateTime<Utc>)> = events.iter().map(|e| (e.log_id, e.created_at)).collect();
                    ids.sort();
                    ids.dedup();
                    let logs = match service.store.logs_by_id(&ids).await {
                        Ok(logs) => logs,
                        Err(err) => {
                            let _ = tx.send(Err(err)).await;
                            return;
                        }
                    };
                    let logs: HashMap<i64, LogRecord> = logs.into_iter().map(|l| (l.log_id, l)).collect();
                    for e in events {
                        position = e.position;
                        // A delivery purged since, or outside the filter.
                        let Some(log) = logs.get(&e.log_id).filter(|l| matches(&filter, l)) else { continue };
                        let event = WatchEvent {
                            log: log.clone(),
                            change: e.change,
                            at: e.at,
                            resume_token: e.position.token(),
                        };
                        if tx.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                }
                if full {
                    continue;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    _ = wake => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    fn open_slot(&self, who: &Principal) -> Result<Slot> {
        let mut open = self.watchers.open.lock().expect("watchers poisoned");
        let n = open.entry(who.key_prefix.clone()).or_insert(0);
        if *n >= self.limits.max_watch_streams_per_key {
            return Err(Error::new(
                ErrorCode::ResourceExhausted,
                format!("this API key already has {} open watch streams", self.limits.max_watch_streams_per_key),
            ));
        }
        *n += 1;
        Ok(Slot { watchers: self.watchers.clone(), key: who.key_prefix.clone() })
    }
}
