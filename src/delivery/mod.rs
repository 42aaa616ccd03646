//! The delivery engine: claims due webhooks from the store, POSTs them, records
//! every attempt and schedules retries.
//!
//! The queue is the store itself. A worker claims a batch with `FOR UPDATE SKIP
//! LOCKED` and a lease (attempt timeout + margin); a delivery claimed by a
//! process that dies is due again once its lease ends, so nothing accepted is
//! lost, and a crash between sending and recording repeats the attempt
//! (at-least-once). This process's dispatches wake the claimer at once; other
//! replicas' dispatches and due retries are found by a short poll.

pub mod http;
pub mod retry;
pub mod sign;
pub mod ssrf;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::{ClaimedDelivery, DueQueue, FailureCategory, NextStep};
use crate::error::ErrorCode;
use crate::metrics::{AttemptLabels, Metrics};
use crate::store::{DisableRule, EndpointOutcome, NewAttempt, Store};
use http::{AttemptResult, HttpDeliverer, Signing};
use retry::{RetryPolicy, is_retryable};

/// How the engine runs; every field is a server option.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// False for an API-only replica: dispatches are stored and left for
    /// replicas that deliver.
    pub enabled: bool,
    /// Deliveries in flight at once in this process.
    pub concurrency: usize,
    /// Deliveries in flight at once to one host, so that one slow receiver
    /// cannot take every slot.
    pub per_host_concurrency: usize,
    pub attempt_timeout: Duration,
    pub connect_timeout: Duration,
    /// Added to the attempt timeout to make the lease (at most 30 s).
    pub lease_margin: Duration,
    /// How often to look for work that this process was not woken for
    /// (other replicas' dispatches, retries falling due).
    pub poll_interval: Duration,
    /// Most deliveries claimed per query.
    pub batch_size: u32,
    pub retry: RetryPolicy,
    /// How long shutdown waits for in-flight attempts.
    pub drain_timeout: Duration,
    /// Response bytes read before the connection is dropped.
    pub max_response_read: usize,
    /// Lifts the SSRF guard (local development and tests only).
    pub allow_private_targets: bool,
    /// When an endpoint whose deliveries keep failing is disabled.
    pub disable_rule: DisableRule,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            concurrency: 256,
            per_host_concurrency: 64,
            attempt_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            lease_margin: Duration::from_secs(10),
            poll_interval: Duration::from_millis(200),
            batch_size: 64,
            retry: RetryPolicy::default(),
            drain_timeout: Duration::from_secs(30),
            max_response_read: 1024 * 1024,
            allow_private_targets: false,
            disable_rule: DisableRule { window: chrono::TimeDelta::days(5), min_failures: 10 },
        }
    }
}

impl DeliveryConfig {
    pub fn lease(&self) -> Duration {
        self.attempt_timeout + self.lease_margin
    }
}

/// Why a claimed delivery is not sent.
enum Unsendable {
    /// Never: the attempt is recorded as failed with this reason.
    Never(String),
    /// Not by this process (it cannot open the signing secret).
    NotHere,
}

/// How long a delivery this process cannot sign waits before it is due again.
const NOT_HERE_PAUSE: Duration = Duration::from_secs(30);

/// Queues looked at per claim round.
const QUEUES_PER_ROUND: u32 = 256;

/// A cursor from which the next round starts at `key` itself: the key
/// without its last character sorts before it. (A queue between the two is
/// looked at again, which costs a probe and skips nobody.)
fn before(key: &str) -> String {
    let mut k = key.to_owned();
    k.pop();
    k
}

/// What the engine tells the service about: an endpoint it disabled (the
/// service announces it with an operational event). A trait, so that the
/// engine does not reach up into the service.
#[async_trait::async_trait]
pub trait Notices: Send + Sync {
    async fn endpoint_disabled(&self, endpoint: crate::domain::Endpoint);

    /// Something was recorded (an attempt, a hold): live tails look now.
    fn recorded(&self);
}

pub struct DeliveryEngine {
    store: Arc<dyn Store>,
    notices: Arc<dyn Notices>,
    http: HttpDeliverer,
    config: DeliveryConfig,
    wake: Arc<Notify>,
    slots: Arc<Semaphore>,
    /// Requests open per queue in this process (see [`QueueSeat`]).
    in_flight: Mutex<HashMap<String, u32>>,
    /// Per-queue rate limiters, for endpoints that set a rate.
    limiters: Mutex<HashMap<String, (NonZeroU32, Arc<DefaultDirectRateLimiter>)>>,
    tracker: TaskTracker,
    metrics: Arc<Metrics>,
    /// Opens the signing secrets each claim carries.
    secrets: Arc<crate::secrets::SecretKey>,
}

impl DeliveryEngine {
    pub fn new(
        store: Arc<dyn Store>,
        config: DeliveryConfig,
        wake: Arc<Notify>,
        metrics: Arc<Metrics>,
        secrets: Arc<crate::secrets::SecretKey>,
        notices: Arc<dyn Notices>,
    ) -> anyhow::Result<Arc<Self>> {
        let http = HttpDeliverer::new(
            config.attempt_timeout,
            config.connect_timeout,
            config.max_response_read,
            config.allow_private_targets,
        )?;
        Ok(Arc::new(Self {
            store,
            notices,
            http,
            slots: Arc::new(Semaphore::new(config.concurrency.max(1))),
            config,
            wake,
            in_flight: Mutex::new(HashMap::new()),
            limiters: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            metrics,
            secrets,
        }))
    }

    /// Claims and delivers until `shutdown` fires, then drains: in-flight
    /// attempts finish and are recorded (bounded by the drain timeout).
    ///
    /// Each round walks the next queues (endpoints, or hosts for bare URLs)
    /// after a round-robin cursor and claims from each due one only what its
    /// in-flight cap, its rate limit and this process's free slots allow: a
    /// busy queue is skipped, never claimed and given back, and one queue's
    /// backlog never stands in front of another's.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if !self.config.enabled {
            tracing::info!("delivery disabled on this replica");
            // Runs until shutdown all the same: the server takes an engine
            // task that ends before as a failure.
            shutdown.cancelled().await;
            return;
        }
        // Other replicas announce what they commit: wake at once instead of
        // at the next poll (which stays, for announcements lost in a
        // reconnect and for retries falling due).
        let listener = match self.store.due_announcements().await {
            Ok(Some(mut announcements)) => {
                let wake = self.wake.clone();
                Some(tokio::spawn(async move {
                    use futures_util::StreamExt;
                    while announcements.next().await.is_some() {
                        wake.notify_one();
                    }
                }))
            }
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(error = %err, "listening for other replicas' work failed; polling only");
                None
            }
        };
        let mut failures = 0u32;
        let mut cursor = String::new();
        // Whether every round since one that started at the ring's start has
        // claimed nothing: once such a pass reaches the ring's end, nothing
        // is claimable anywhere, and the claimer waits.
        let mut idle_pass = false;
        while !shutdown.is_cancelled() {
            // Claim in batches: while most slots are busy, wait for a quarter
            // of them to free up rather than claiming one row at a time.
            let free = self.slots.available_permits();
            let min_claim = (self.config.concurrency / 4).clamp(1, self.config.batch_size as usize);
            if free < min_claim {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    permits = self.slots.acquire_many(min_claim as u32) => drop(permits),
                }
                continue;
            }
            let from_start = cursor.is_empty();
            let round = async {
                let queues = self.store.due_queues(&cursor, QUEUES_PER_ROUND).await?;
                let (quotas, next) = self.quotas(&queues, free.min(self.config.batch_size as usize));
                let claims = self.store.claim_from(&quotas, self.config.lease()).await?;
                Ok::<_, crate::error::Error>((claims, next))
            };
            match round.await {
                Ok((claims, next)) => {
                    failures = 0;
                    let claimed = !claims.is_empty();
                    self.start(claims);
                    cursor = next.unwrap_or_default();
                    if claimed {
                        idle_pass = false;
                        continue;
                    }
                    // Nothing claimed: more may be due in the queues after
                    // the cursor, or before it when this round started
                    // mid-ring; but at most one pass over the ring. A claimed
                    // delivery keeps its due time, so a queue whose work is
                    // all in flight (here or on another replica) looks due,
                    // takes its share of a round's slots and claims nothing:
                    // without the bound, such rounds would follow each other
                    // without a pause.
                    idle_pass |= from_start;
                    if !(cursor.is_empty() && idle_pass) {
                        continue;
                    }
                    idle_pass = false;
                }
                Err(err) => {
                    failures += 1;
                    let pause = Duration::from_millis(100 * 2u64.pow(failures.min(6))).min(Duration::from_secs(5));
                    tracing::warn!(error = %err, ?pause, "claiming deliveries failed; backing off");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    continue;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
        if let Some(listener) = listener {
            listener.abort();
        }
        self.tracker.close();
        if tokio::time::timeout(self.config.drain_timeout, self.tracker.wait()).await.is_err() {
            tracing::warn!("drain timeout: in-flight deliveries will be retried after their lease");
        }
    }

    /// How many deliveries to claim from each due queue, in ring order, with
    /// `free` slots in all; and where the next round starts (`None`: from the
    /// beginning of the ring).
    fn quotas(&self, queues: &[DueQueue], free: usize) -> (Vec<(String, u32)>, Option<String>) {
        let mut remaining = free as u32;
        let mut out = Vec::new();
        let in_flight = self.in_flight.lock().expect("queue state poisoned");
        for q in queues {
            if remaining == 0 {
                // Out of slots: the next round starts at this queue.
                return (out, Some(before(&q.key)));
            }
            if !q.due {
                continue;
            }
            let cap = q.max_in_flight.unwrap_or(self.config.per_host_concurrency as u32);
            let busy = in_flight.get(&q.key).copied().unwrap_or(0);
            let mut quota = cap.saturating_sub(busy).min(remaining);
            if let Some(rate) = q.rate_limit_per_second.and_then(NonZeroU32::new) {
                quota = quota.min(rate.get());
                if let Some(n) = NonZeroU32::new(quota)
                    && !matches!(self.limiter(&q.key, rate).check_n(n), Ok(Ok(())))
                {
                    quota = 0;
                }
            }
            if quota > 0 {
                out.push((q.key.clone(), quota));
                remaining -= quota;
            }
        }
        let next = if queues.len() < QUEUES_PER_ROUND as usize { None } else { queues.last().map(|q| q.key.clone()) };
        (out, next)
    }

    /// The rate limiter of one queue, made (or remade) for `rate` per second.
    fn limiter(&self, key: &str, rate: NonZeroU32) -> Arc<DefaultDirectRateLimiter> {
        let mut limiters = self.limiters.lock().expect("rate limiters poisoned");
        if limiters.len() > 10_000 {
            limiters.clear();
        }
        match limiters.get(key) {
            Some((r, l)) if *r == rate => l.clone(),
            _ => {
                let l = Arc::new(RateLimiter::direct(Quota::per_second(rate)));
                limiters.insert(key.to_owned(), (rate, l.clone()));
                l
            }
        }
    }

    fn start(self: &Arc<Self>, claims: Vec<ClaimedDelivery>) {
        // Claimed while its endpoint is paused or disabled: held, not sent
        // (it flows again when the endpoint is resumed or re-enabled).
        let (held, claims): (Vec<_>, Vec<_>) = claims.into_iter().partition(|c| c.hold);
        if !held.is_empty() {
            let (store, notices) = (self.store.clone(), self.notices.clone());
            self.tracker.spawn(async move {
                match store.hold(&held).await {
                    Ok(()) => notices.recorded(),
                    // The lease brings them back and they are held then.
                    Err(err) => tracing::warn!(error = %err, "holding deliveries failed"),
                }
            });
        }
        for claim in claims {
            // Quotas never exceed the free slots, so a slot is there.
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                tracing::warn!(request_id = %claim.request_id, "no free slot; the lease will bring it back");
                continue;
            };
            let seat = QueueSeat::take(self, &claim.queue_key);
            let engine = self.clone();
            self.tracker.spawn(async move {
                engine.deliver(claim, seat).await;
                // No wake needed here: a claimer short of slots waits on the
                // semaphore itself.
                drop(slot);
            });
        }
    }

    /// The secrets that sign `claim` now (decrypted), and its time limit;
    /// `Err` when it must not be sent (now, or at all).
    fn signing(&self, claim: &ClaimedDelivery) -> Result<Signing, Unsendable> {
        let policy_timeout =
            claim.endpoint.as_ref().and_then(|e| e.policy.attempt_timeout_ms).map(Duration::from_millis);
        // The lease was sized for the server's timeout: an endpoint may only
        // shorten it.
        let timeout = policy_timeout.map_or(self.config.attempt_timeout, |t| t.min(self.config.attempt_timeout));
        if claim.endpoint_id.is_some() && claim.endpoint.is_none() {
            return Err(Unsendable::Never("the endpoint was deleted".into()));
        }
        let Some(sealed) = &claim.secrets else {
            // Only deliveries stored before signing existed lack a secret.
            tracing::warn!(request_id = %claim.request_id, "no signing secret; sending unsigned");
            return Ok(Signing { secrets: Vec::new(), timeout });
        };
        let owner = claim.endpoint_id.unwrap_or(claim.organization_id);
        let open = |sealed: &[u8]| -> Result<sign::Secret, Unsendable> {
            // This process's key does not open it: a replica with the wrong
            // --secret-key. Another replica (or this one, fixed) can still
            // deliver it, so it is not failed here.
            let plain = self.secrets.decrypt(sealed, owner.as_bytes()).map_err(|e| {
                tracing::error!(
                    request_id = %claim.request_id, error = %e,
                    "a signing secret does not decrypt with this process's --secret-key; leaving the delivery pending"
                );
                Unsendable::NotHere
            })?;
            let corrupt = || Unsendable::Never("the signing secret is corrupt".into());
            String::from_utf8(plain).map_err(|_| corrupt())?.parse::<sign::Secret>().map_err(|_| corrupt())
        };
        let mut secrets = vec![open(&sealed.current)?];
        if let Some((previous, until)) = &sealed.previous
            && *until > chrono::Utc::now()
        {
            secrets.push(open(previous)?);
        }
        Ok(Signing { secrets, timeout })
    }

    async fn deliver(&self, claim: ClaimedDelivery, seat: QueueSeat) {
        self.metrics.in_flight.inc();
        let started = std::time::Instant::now();
        let expired = claim.expires_at.filter(|at| *at <= chrono::Utc::now());
        let result = match self.signing(&claim) {
            // Past its deadline: recorded as failed ("expired"), never sent.
            _ if expired.is_some() => AttemptResult::expired(expired.unwrap_or_default()),
            Ok(signing) => self.http.attempt(&claim, &signing).await,
            Err(Unsendable::Never(reason)) => AttemptResult::refused(reason),
            Err(Unsendable::NotHere) => {
                drop(seat);
                self.metrics.in_flight.dec();
                // No attempt was made, so none is recorded; it is due again
                // after the pause, for whichever replica can open it.
                if let Err(err) = self.store.release(std::slice::from_ref(&claim), NOT_HERE_PAUSE).await {
                    tracing::warn!(request_id = %claim.request_id, error = %err, "releasing a delivery failed");
                }
                return;
            }
        };
        // The receiver is done with it: its queue may take the next one
        // while this attempt is recorded.
        drop(seat);
        self.metrics.in_flight.dec();
        self.metrics.attempt_duration.observe(started.elapsed().as_secs_f64());
        let labels = AttemptLabels {
            outcome: if result.success() { "success" } else { "failure" },
            category: result.category.map_or("none", |c| c.as_str()),
        };
        self.metrics.attempts.get_or_create(&labels).inc();
        let attempt = self.settle(&claim, result);
        if matches!(attempt.next, NextStep::RetryAfter(_)) {
            self.metrics.retries_scheduled.inc();
        }
        tracing::debug!(request_id = %claim.request_id, next = ?attempt.next, "attempt done");
        // The attempt happened, so keep trying to record it while the store is
        // down; if the process dies first, the lease expires and the webhook is
        // sent again (at-least-once).
        // Recording is idempotent per claim, so retrying after a lost reply
        // cannot record the attempt twice.
        let mut pause = Duration::from_millis(100);
        loop {
            match self.store.record_attempt(&claim, &attempt).await {
                Ok(true) => {
                    self.notices.recorded();
                    self.endpoint_outcome(&claim, &attempt).await;
                    return;
                }
                Ok(false) => {
                    tracing::warn!(request_id = %claim.request_id, "lease was lost before the attempt was recorded");
                    return;
                }
                Err(err) if err.code == ErrorCode::Unavailable => {
                    tracing::warn!(request_id = %claim.request_id, error = %err, "recording an attempt failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(err) => {
                    // Not a passing outage: retrying would hold this slot forever.
                    // The lease expires and the webhook is attempted again.
                    tracing::error!(request_id = %claim.request_id, error = %err, "recording an attempt failed");
                    return;
                }
            }
        }
    }

    /// Counts an attempt toward its endpoint's run of failures (a success
    /// ends a run), and announces the endpoint if this attempt disabled it.
    async fn endpoint_outcome(&self, claim: &ClaimedDelivery, attempt: &NewAttempt) {
        let Some(endpoint_id) = claim.endpoint_id else { return };
        // An expired delivery sent nothing: it says nothing about the receiver.
        if attempt.error_category == Some(FailureCategory::Expired.as_str()) {
            return;
        }
        let outcome = match (attempt.success, attempt.status_code) {
            // Nothing to reset: no write for the common case.
            (true, _) if claim.endpoint_failures == 0 => return,
            (true, _) => EndpointOutcome::Succeeded,
            (false, Some(410)) => EndpointOutcome::Gone,
            (false, _) => EndpointOutcome::Failed,
        };
        match self.store.record_endpoint_outcome(endpoint_id, outcome, &self.config.disable_rule).await {
            Ok(Some(endpoint)) => {
                tracing::warn!(%endpoint_id, reason = ?endpoint.disabled_reason, "endpoint disabled");
                self.notices.endpoint_disabled(endpoint).await;
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(%endpoint_id, error = %err, "recording an endpoint's outcome failed"),
        }
    }

    /// Decides the request's next step from an attempt's result.
    fn settle(&self, claim: &ClaimedDelivery, r: AttemptResult) -> NewAttempt {
        // Counted from the latest manual redelivery, which starts a fresh
        // retry budget and backoff.
        let number = claim.attempt_count.saturating_sub(claim.manual_from) + 1;
        let next = if r.success() {
            NextStep::Succeeded
        } else if is_retryable(r.status, r.category) && number <= claim.max_retries {
            let schedule: Vec<Duration> = claim
                .endpoint
                .as_ref()
                .map(|e| e.policy.retry_schedule_ms.iter().map(|m| Duration::from_millis(*m)).collect())
                .unwrap_or_default();
            let delay = retry::scheduled_delay(&schedule, number, r.retry_after, self.config.retry.retry_after_max)
                .unwrap_or_else(|| self.config.retry.next_delay(number, r.retry_after, rand::random::<f64>()));
            // Never later than the deadline: due then, it fails as expired
            // at that time rather than after a longer backoff.
            let until_deadline = claim.expires_at.map(|at| (at - chrono::Utc::now()).to_std().unwrap_or_default());
            NextStep::RetryAfter(until_deadline.map_or(delay, |d| delay.min(d)))
        } else {
            NextStep::Failed
        };
        NewAttempt {
            attempted_at: r.attempted_at,
            success: r.success(),
            status_code: r.status.map(i32::from),
            response_body: without_nul(r.response_body),
            response_truncated: r.response_truncated,
            response_time_ms: r.response_time_ms,
            error_category: r.category.map(|c| c.as_str()),
            error_message: r.error_message.map(without_nul),
            next,
        }
    }
}

/// One delivery's place under its queue's in-flight cap in this process.
/// Given back, and the claimer woken (the queue may have been at its cap with
/// work waiting), as soon as the request to the receiver ends rather than
/// once its attempt is recorded: the cap bounds what a receiver is sent at
/// once, and a seat held through the record's commit kept a capped queue
/// below its cap for that long on every delivery (the claim of the next one
/// waited for it).
struct QueueSeat {
    engine: Arc<DeliveryEngine>,
    key: String,
}

impl QueueSeat {
    fn take(engine: &Arc<DeliveryEngine>, key: &str) -> Self {
        *engine.in_flight.lock().expect("queue state poisoned").entry(key.to_owned()).or_insert(0) += 1;
        Self { engine: engine.clone(), key: key.to_owned() }
    }
}

impl Drop for QueueSeat {
    fn drop(&mut self) {
        {
            let mut in_flight = self.engine.in_flight.lock().expect("queue state poisoned");
            if let Some(n) = in_flight.get_mut(&self.key) {
                *n -= 1;
                if *n == 0 {
                    in_flight.remove(&self.key);
                }
            }
        }
        self.engine.wake.notify_one();
    }
}

/// Postgres TEXT cannot hold NUL; a receiver's binary body must not make its
/// attempt unrecordable.
fn without_nul(s: String) -> String {
    if s.contains('\0') { s.replace('\0', "\u{FFFD}") } else { s }
}

#[cfg(test)]
mod tests {
    use super::without_nul;

    #[test]
    fn nul_bytes_are_replaced_before_storing() {
        assert_eq!(without_nul("a\0b".into()), "a\u{FFFD}b");
        assert_eq!(without_nul("plain".into()), "plain");
    }
}
