//! WatchWebhookLogs: every attempt and status change of the deliveries a
//! filter matches, as they are recorded by any replica, from now or from a
//! resume token. The store's tail is gap-free (see `store::tail`).
//!
//! One reader per process (the hub) polls the tail, woken early by this
//! process's own records, fetches each event's log once and broadcasts the
//! batch; every watcher filters it. So N watchers cost one read of the tail,
//! not N. A watcher that resumes from a token (or falls behind the
//! broadcast) first reads from the store itself, then joins the broadcast,
//! dropping what it has already sent: each source (attempts, status
//! changes) is in order in both, so positions tell what is new.
//!
//! While no watcher asks for the FULL view, the hub reads without bodies
//! (the payload, its metadata, the responses), as BASIC shows them; a
//! read with bodies stops its logs at a byte budget. A FULL watcher that
//! joins while a read without them is under way reads that batch again.
//!
//! An event's log and change are read once and shared, by the hub's
//! buffer and by every watcher's queue: a watcher copies them only as it
//! sends them, and in the BASIC view without their bodies. Copied into
//! each queue, a 256 KiB payload cost every watcher its own copy per event
//! (up to 64 queued), on top of the hub's.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use chrono::{DateTime, Utc};
use futures_util::Stream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{MAX_PAGE_BYTES, WebhookService, check_filter};
use crate::auth::Principal;
use crate::domain::{LogFilter, LogRecord};
use crate::error::{Error, ErrorCode, Result};
use crate::store::{Bodies, TailChange, TailPosition};

/// How often a watcher looks for what other replicas recorded.
const POLL: Duration = Duration::from_millis(200);
/// Events read per source per look.
const BATCH: u32 = 500;
/// Shortest time between two reads of the tail by the hub.
const MIN_GAP: Duration = Duration::from_millis(20);
/// Bytes of logs one read with bodies holds at most, give or take one log
/// and the logs' metadata (at least one log): 500 logs with 256 KiB
/// payloads would be 125 MiB.
const READ_BYTES: usize = MAX_PAGE_BYTES;
/// Events per source per look with bodies: each attempt carries its kept
/// response (10 KiB at most), and a look cut at [`READ_BYTES`] reads the
/// events after the cut again in the next.
const BATCH_WITH_BODIES: u32 = 100;

/// Sends the events of `batch` after `position` that `filter` selects,
/// moving `position` past every one of them; false once the client left.
async fn send(
    tx: &tokio::sync::mpsc::Sender<Result<WatchEvent>>,
    filter: &LogFilter,
    batch: &[Observed],
    position: &mut TailPosition,
    shutdown: &CancellationToken,
) -> bool {
    for e in batch {
        if !after(e, position) {
            continue;
        }
        match *e.change {
            TailChange::Attempt(_) => position.attempt = e.position.attempt,
            TailChange::Status { .. } => position.event = e.position.event,
        }
        // A delivery purged since, or outside the filter.
        let Some(log) = e.log.as_ref().filter(|l| matches(filter, l)) else { continue };
        let event = WatchEvent { log: log.clone(), change: e.change.clone(), at: e.at, resume_token: position.token() };
        // A client that stops reading must not hold shutdown up.
        tokio::select! {
            sent = tx.send(Ok(event)) => if sent.is_err() { return false },
            _ = shutdown.cancelled() => return false,
        }
    }
    true
}

#[derive(Debug, Clone, Default)]
pub struct WatchQuery {
    pub filter: LogFilter,
    /// Continue right after this event; empty: from now.
    pub resume_token: String,
    /// The FULL view's bodies, or none (BASIC): events come without them.
    pub bodies: Bodies,
}

/// One event of a watch: the delivery as it is now and what happened,
/// shared with the other watchers it is sent to.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub log: Arc<LogRecord>,
    pub change: Arc<TailChange>,
    pub at: DateTime<Utc>,
    pub resume_token: String,
}

impl WatchEvent {
    /// The event in the BASIC view: this watcher's own copies of the log
    /// and the change, without the request and response bodies, made
    /// without copying the bodies.
    pub fn into_basic(self) -> Self {
        let change = match &*self.change {
            TailChange::Attempt(a) => Arc::new(TailChange::Attempt(a.basic_copy())),
            // A status change has no body: it stays shared.
            TailChange::Status { .. } => self.change.clone(),
        };
        Self { log: Arc::new(self.log.basic_copy()), change, ..self }
    }
}

/// The watchers of this process: their count per API key, their wake-up,
/// the token that ends them all at shutdown, and the hub they listen to.
#[derive(Default)]
pub struct Watchers {
    open: Mutex<HashMap<String, u32>>,
    pub(super) wake: Notify,
    pub(super) shutdown: CancellationToken,
    hub: tokio::sync::OnceCell<Arc<Hub>>,
}

/// One tail event with its delivery's log as it was read (None: purged).
struct Observed {
    change: Arc<TailChange>,
    at: DateTime<Utc>,
    /// The tail's position right after this event.
    position: TailPosition,
    log: Option<Arc<LogRecord>>,
}

/// Events read from the tail in one look, and whether more were there.
struct TailRead {
    events: Vec<Observed>,
    more: bool,
}

/// What the hub broadcasts: one look's events, read with or without bodies.
struct HubBatch {
    events: Vec<Observed>,
    bodies: Bodies,
}

type Batch = Arc<HubBatch>;

/// The process's one reader of the tail.
struct Hub {
    sender: broadcast::Sender<Batch>,
    /// Through where batches have been sent; updated with each send, under
    /// this lock, so that a watcher reading it after subscribing knows that
    /// every later batch comes after it.
    position: Mutex<TailPosition>,
    /// Watchers that want bodies. While there are none, the hub reads
    /// without them. A FULL watcher reads any batch that comes without
    /// bodies again from the store (that is what makes sure it gets them);
    /// it counts itself here before it subscribes, so that only a read
    /// already under way can reach it so.
    full: AtomicUsize,
}

/// A FULL watcher, counted by its hub until dropped.
struct FullWatcher(Arc<Hub>);

impl FullWatcher {
    fn new(hub: Arc<Hub>) -> Self {
        hub.full.fetch_add(1, Ordering::SeqCst);
        Self(hub)
    }
}

impl Drop for FullWatcher {
    fn drop(&mut self) {
        self.0.full.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Batches the broadcast holds for a slow watcher before it falls behind
/// (and catches up from the store).
const HUB_BUFFER: usize = 16;

/// Whether `e` comes after `p` in its own source.
fn after(e: &Observed, p: &TailPosition) -> bool {
    match *e.change {
        TailChange::Attempt(_) => e.position.attempt > p.attempt,
        TailChange::Status { .. } => e.position.event > p.event,
    }
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
        let from = match q.resume_token.as_str() {
            "" => None,
            token => Some(
                TailPosition::from_token(token)
                    .ok_or_else(|| Error::invalid("resume_token", "is not a token this API issued"))?,
            ),
        };
        let slot = self.open_slot(who)?;
        let hub = self.hub().await?;
        let bodies = q.bodies;
        // Counted before it subscribes: every read the hub starts after
        // this carries bodies.
        let full = (bodies == Bodies::With && !nothing).then(|| FullWatcher::new(hub.clone()));
        // Subscribe before reading the hub's position: every batch sent
        // after that read is in the subscription.
        let mut batches = hub.sender.subscribe();
        let hub_at = *hub.position.lock().expect("hub poisoned");
        let mut position = from.unwrap_or(hub_at);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<WatchEvent>>(64);
        let service = self.clone();
        let filter = q.filter;
        tokio::spawn(async move {
            let (_slot, _full) = (slot, full);
            let shutdown = service.watchers.shutdown.clone();
            if nothing {
                // Never reads the broadcast: must not hold its batches.
                drop(batches);
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tx.closed() => {}
                }
                return;
            }
            // From a token: catch up from the store, then join the hub.
            let mut catch_up = from.is_some();
            loop {
                if catch_up {
                    match service.read_tail(position, bodies).await {
                        Ok(read) => {
                            if !send(&tx, &filter, &read.events, &mut position, &shutdown).await {
                                return;
                            }
                            catch_up = read.more && !shutdown.is_cancelled();
                        }
                        Err(err) => {
                            let _ = tx.send(Err(err)).await;
                            return;
                        }
                    }
                    continue;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    batch = batches.recv() => match batch {
                        // Read before this watcher was counted: its events
                        // are read again, with their bodies.
                        Ok(batch) if batch.bodies == Bodies::Without && bodies == Bodies::With => catch_up = true,
                        Ok(batch) => {
                            if !send(&tx, &filter, &batch.events, &mut position, &shutdown).await {
                                return;
                            }
                        }
                        // Too slow for the broadcast: read what was missed.
                        Err(broadcast::error::RecvError::Lagged(_)) => catch_up = true,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    /// The next events after `position`, each with its log. With bodies,
    /// the logs are read in the events' order until they reach
    /// [`READ_BYTES`], and the events whose logs were not read are left for
    /// the next read.
    async fn read_tail(&self, position: TailPosition, bodies: Bodies) -> Result<TailRead> {
        let (limit, max_bytes) = match bodies {
            Bodies::With => (BATCH_WITH_BODIES, READ_BYTES),
            Bodies::Without => (BATCH, usize::MAX),
        };
        let events = self.store.tail(position, limit, bodies).await?;
        let full = events.len() >= limit as usize;
        // Each delivery once, in the order of its first event.
        let mut seen = HashSet::new();
        let keys: Vec<(i64, DateTime<Utc>)> =
            events.iter().filter(|e| seen.insert(e.log_id)).map(|e| (e.log_id, e.created_at)).collect();
        let read = self.store.logs_by_id(&keys, bodies, max_bytes).await?;
        // Looked up: every key, or, cut at the budget, those up to the last
        // log read (a key after it may be a purged delivery or one not read).
        let looked = match (read.more, read.logs.last()) {
            (true, Some(last)) => keys.iter().position(|k| k.0 == last.log_id).map_or(0, |i| i + 1),
            _ => keys.len(),
        };
        // The events before the first one of the first delivery not looked
        // up: keys are in the order of their first events, so every event
        // before it is of a delivery looked up.
        let total = events.len();
        let end = keys.get(looked).and_then(|k| events.iter().position(|e| e.log_id == k.0)).unwrap_or(total);
        // A delivery with several events in the batch shares one log.
        let logs: HashMap<i64, Arc<LogRecord>> = read.logs.into_iter().map(|l| (l.log_id, Arc::new(l))).collect();
        let events: Vec<Observed> = events
            .into_iter()
            .take(end)
            .map(|e| Observed {
                log: logs.get(&e.log_id).cloned(),
                change: Arc::new(e.change),
                at: e.at,
                position: e.position,
            })
            .collect();
        Ok(TailRead { more: full || events.len() < total, events })
    }

    /// The process's hub, started by the first watcher.
    async fn hub(&self) -> Result<Arc<Hub>> {
        let hub = self
            .watchers
            .hub
            .get_or_try_init(|| async {
                let start = self.store.tail_now().await?;
                let (sender, _) = broadcast::channel(HUB_BUFFER);
                let hub = Arc::new(Hub { sender, position: Mutex::new(start), full: AtomicUsize::new(0) });
                tokio::spawn(self.clone().run_hub(hub.clone()));
                Ok::<_, Error>(hub)
            })
            .await?;
        Ok(hub.clone())
    }

    /// Reads the tail and broadcasts it, while anyone listens; woken early
    /// by this process's own records. With no watcher it only keeps its
    /// position at "now", so that a new watcher does not start in the past.
    async fn run_hub(self, hub: Arc<Hub>) {
        let shutdown = self.watchers.shutdown.clone();
        let mut failures = 0u32;
        loop {
            let wake = self.watchers.wake.notified();
            let mut full = false;
            if hub.sender.receiver_count() == 0 {
                if let Ok(now) = self.store.tail_now().await {
                    // Only if still nobody listens: a watcher that subscribed
                    // meanwhile read the old position and must get what
                    // follows it (it subscribes before it takes this lock).
                    let mut position = hub.position.lock().expect("hub poisoned");
                    if hub.sender.receiver_count() == 0 {
                        *position = now;
                    }
                }
            } else {
                let at = *hub.position.lock().expect("hub poisoned");
                let bodies = if hub.full.load(Ordering::SeqCst) > 0 { Bodies::With } else { Bodies::Without };
                match self.read_tail(at, bodies).await {
                    Ok(read) => {
                        failures = 0;
                        full = read.more;
                        if let Some(last) = read.events.last() {
                            let mut position = hub.position.lock().expect("hub poisoned");
                            *position = last.position;
                            let _ = hub.sender.send(Arc::new(HubBatch { events: read.events, bodies }));
                        }
                    }
                    Err(err) => {
                        failures += 1;
                        tracing::warn!(error = %err, "reading the live tail failed");
                        tokio::time::sleep(POLL * failures.min(10)).await;
                    }
                }
            }
            if full {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wake => {}
                _ = tokio::time::sleep(POLL) => {}
            }
            // Coalesce: at most one read per MIN_GAP, however many records
            // woke it (each read takes everything up to the horizon).
            tokio::time::sleep(MIN_GAP).await;
        }
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
