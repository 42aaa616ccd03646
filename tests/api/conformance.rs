//! One conformance suite for every store implementation: each behaviour the
//! service and the engine rely on, run against Postgres and SQLite alike.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use hookpost::domain::{Cursor, ExecutionStatus, LogFilter, NextStep};
use hookpost::store::{Bodies, NewAttempt, ReadFrom, Store};
use uuid::Uuid;

use crate::helpers::*;

async fn store(backend: Backend) -> Arc<dyn Store> {
    open_store(&fresh_store(backend).await).await
}

fn settled(next: NextStep) -> NewAttempt {
    NewAttempt {
        attempted_at: Utc::now(),
        success: next == NextStep::Succeeded,
        status_code: Some(if next == NextStep::Succeeded { 200 } else { 500 }),
        response_body: "ok".into(),
        response_truncated: false,
        response_time_ms: 3,
        error_category: (next != NextStep::Succeeded).then_some("http_5xx"),
        error_message: None,
        next,
    }
}

/// Pages through `filter` `size` at a time; returns request IDs in order.
async fn all_pages(store: &dyn Store, filter: &LogFilter, size: u32) -> Vec<Uuid> {
    let mut out = Vec::new();
    let mut after: Option<Cursor> = None;
    loop {
        let page = store.list_logs(filter, after, size, usize::MAX).await.unwrap();
        out.extend(page.logs.iter().map(|l| l.request_id));
        if !page.more {
            assert!(page.logs.len() <= size as usize);
            return out;
        }
        assert_eq!(page.logs.len(), size as usize, "a page short of its size without a byte budget");
        after = page.logs.last().map(|l| l.cursor());
    }
}

async fn idempotency_under_concurrent_duplicates(backend: Backend) {
    let store = store(backend).await;
    let org = Uuid::new_v4();
    let calls = (0..16).map(|_| {
        let store = store.clone();
        let d = delivery(org, |i| i.idempotency_key = "same".into());
        async move { store.insert_delivery(&d).await.unwrap() }
    });
    let results = futures_util::future::join_all(calls).await;
    assert_eq!(results.iter().filter(|r| !r.duplicate).count(), 1);
    assert_eq!(results.iter().map(|r| r.request_id).collect::<HashSet<_>>().len(), 1);
    // Another organization may use the same key.
    let other = store.insert_delivery(&delivery(Uuid::new_v4(), |i| i.idempotency_key = "same".into())).await.unwrap();
    assert!(!other.duplicate);
    assert_eq!(all_pages(store.as_ref(), &LogFilter::default(), 10).await.len(), 2);
}

async fn keyset_paging_with_every_filter(backend: Backend) {
    let store = store(backend).await;
    let (org, ws, sub) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut all = Vec::new();
    for i in 0..30 {
        let d = delivery(org, |input| {
            if i % 2 == 0 {
                input.workspace_id = Some(ws.to_string());
            }
            if i % 3 == 0 {
                input.subscription_id = Some(sub.to_string());
            }
            if i % 5 == 0 {
                input.call_id = Some(101);
            }
            if i % 7 == 0 {
                input.webhook_type = "call_ended".into();
            }
        });
        all.push((i, store.insert_delivery(&d).await.unwrap().request_id));
    }
    store.insert_delivery(&delivery(Uuid::new_v4(), |_| {})).await.unwrap();
    // Settle every fourth one as failed through the claim path.
    let claims = store.claim_due(100, Duration::from_secs(30)).await.unwrap();
    let failed: HashSet<Uuid> = all.iter().filter(|(i, _)| i % 4 == 0).map(|(_, id)| *id).collect();
    for c in claims.iter().filter(|c| failed.contains(&c.request_id)) {
        assert!(store.record_attempt(c, &settled(NextStep::Failed)).await.unwrap());
    }
    store
        .release(
            &claims.iter().filter(|c| !failed.contains(&c.request_id)).cloned().collect::<Vec<_>>(),
            Duration::ZERO,
        )
        .await
        .unwrap();

    let newest_first = |pred: &dyn Fn(usize) -> bool| -> Vec<Uuid> {
        all.iter().rev().filter(|(i, _)| pred(*i)).map(|(_, id)| *id).collect()
    };
    let base = LogFilter { organization_id: Some(org), ..Default::default() };
    let cases: Vec<(LogFilter, Vec<Uuid>)> = vec![
        (base.clone(), newest_first(&|_| true)),
        (LogFilter { workspace_id: Some(ws), ..base.clone() }, newest_first(&|i| i % 2 == 0)),
        (LogFilter { subscription_id: Some(sub), ..base.clone() }, newest_first(&|i| i % 3 == 0)),
        (LogFilter { call_id: Some(101), ..base.clone() }, newest_first(&|i| i % 5 == 0)),
        (LogFilter { webhook_type: Some("call_ended".into()), ..base.clone() }, newest_first(&|i| i % 7 == 0)),
        (LogFilter { status: Some(ExecutionStatus::Failed), ..base.clone() }, newest_first(&|i| i % 4 == 0)),
        (LogFilter { status: Some(ExecutionStatus::Pending), ..base.clone() }, newest_first(&|i| i % 4 != 0)),
        (LogFilter { created_before: Some(Utc::now() - chrono::TimeDelta::days(1)), ..base.clone() }, vec![]),
        (
            LogFilter { created_after: Some(Utc::now() - chrono::TimeDelta::days(1)), ..base.clone() },
            newest_first(&|_| true),
        ),
    ];
    for (filter, expected) in cases {
        for size in [1, 4, 7, 100] {
            assert_eq!(all_pages(store.as_ref(), &filter, size).await, expected, "{filter:?} by {size}");
        }
    }
}

async fn a_lease_expires_and_the_delivery_is_claimed_again(backend: Backend) {
    let store = store(backend).await;
    let d = store.insert_delivery(&delivery(Uuid::new_v4(), |_| {})).await.unwrap();
    let first = store.claim_due(10, Duration::from_millis(300)).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(store.claim_due(10, Duration::from_millis(300)).await.unwrap().is_empty(), "claimed once at a time");
    let again = eventually(Duration::from_secs(5), "the lease to expire", || {
        let store = store.clone();
        async move { store.claim_due(10, Duration::from_secs(30)).await.unwrap().pop() }
    })
    .await;
    assert_eq!(again.request_id, d.request_id);
    assert_ne!(again.lease_id, first[0].lease_id);
    // The first worker's late attempt is recorded but does not settle the request.
    assert!(!store.record_attempt(&first[0], &settled(NextStep::Succeeded)).await.unwrap());
    assert!(store.record_attempt(&again, &settled(NextStep::Failed)).await.unwrap());
    let (log, attempts) = store.log_details(d.request_id, None, ReadFrom::Primary).await.unwrap().unwrap();
    assert_eq!(log.status, ExecutionStatus::Failed);
    assert_eq!(attempts.iter().map(|a| a.attempt_number).collect::<Vec<_>>(), [2, 1]);
    assert_eq!(log.attempt_count, 2);
}

async fn an_attempt_and_the_new_state_are_recorded_together(backend: Backend) {
    let store = store(backend).await;
    let d = store.insert_delivery(&delivery(Uuid::new_v4(), |_| {})).await.unwrap();
    let claim = store.claim_due(1, Duration::from_secs(30)).await.unwrap().pop().unwrap();
    let retry_in = Duration::from_secs(3600);
    assert!(store.record_attempt(&claim, &settled(NextStep::RetryAfter(retry_in))).await.unwrap());
    let (log, attempts) = store.log_details(d.request_id, None, ReadFrom::Primary).await.unwrap().unwrap();
    assert_eq!((log.status, log.attempt_count, attempts.len()), (ExecutionStatus::Pending, 1, 1));
    assert_eq!(log.last_attempt.as_ref().unwrap().status_code, Some(500));
    assert!(log.next_attempt_at.unwrap() > Utc::now() + chrono::TimeDelta::minutes(59));
    assert!(store.claim_due(10, Duration::from_secs(30)).await.unwrap().is_empty(), "not due before its retry time");
    // Released work is due again at once.
    let d2 = store.insert_delivery(&delivery(Uuid::new_v4(), |_| {})).await.unwrap();
    let c2 = store.claim_due(10, Duration::from_secs(30)).await.unwrap();
    store.release(&c2, Duration::ZERO).await.unwrap();
    let c3 = store.claim_due(10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(c3.iter().map(|c| c.request_id).collect::<Vec<_>>(), [d2.request_id]);
    // Every request's attempt_count equals its attempt rows.
    for id in [d.request_id, d2.request_id] {
        let (log, attempts) = store.log_details(id, None, ReadFrom::Primary).await.unwrap().unwrap();
        assert_eq!(log.attempt_count as usize, attempts.len());
    }
}

async fn purge_removes_settled_logs_and_never_pending_ones(backend: Backend) {
    let store = store(backend).await;
    store.prepare().await.unwrap();
    let org = Uuid::new_v4();
    for _ in 0..3 {
        store.insert_delivery(&delivery(org, |_| {})).await.unwrap();
    }
    for c in store.claim_due(10, Duration::from_secs(30)).await.unwrap() {
        store.record_attempt(&c, &settled(NextStep::Succeeded)).await.unwrap();
    }
    // One is sent again (a status change the live tail records), and settles.
    let again = all_pages(store.as_ref(), &LogFilter::default(), 10).await[0];
    assert_eq!(store.redeliver(again, None).await.unwrap(), hookpost::store::Redelivered::Done);
    for c in store.claim_due(10, Duration::from_secs(30)).await.unwrap() {
        store.record_attempt(&c, &settled(NextStep::Succeeded)).await.unwrap();
    }
    let start = hookpost::store::TailPosition { attempt: (0, 0), event: (0, 0) };
    // (On Postgres, rows show once no older transaction runs on the server.)
    let seen = eventually(Duration::from_secs(20), "the tail to show every row", || {
        let store = store.clone();
        async move { Some(store.tail(start, 100, Bodies::With).await.unwrap()).filter(|e| e.len() >= 5) }
    })
    .await;
    assert_eq!(seen.len(), 5, "4 attempts and 1 status change");
    // Everything created before the cutoff goes (whole days on Postgres): a
    // cutoff two days ahead takes today.
    let cutoff = -chrono::TimeDelta::days(2);
    let dry = store.purge(cutoff, true).await.unwrap();
    assert_eq!((dry.requests, dry.attempts), (3, 4));
    assert_eq!(all_pages(store.as_ref(), &LogFilter::default(), 10).await.len(), 3, "a dry run removes nothing");
    let done = store.purge(cutoff, false).await.unwrap();
    assert_eq!((done.requests, done.attempts), (3, 4));
    assert!(all_pages(store.as_ref(), &LogFilter::default(), 10).await.is_empty());
    assert!(store.tail(start, 100, Bodies::With).await.unwrap().is_empty(), "the tail's rows go with their logs");

    // A pending delivery is never purged.
    store.prepare().await.unwrap();
    let pending = store.insert_delivery(&delivery(org, |_| {})).await.unwrap();
    let report = store.purge(cutoff, false).await.unwrap();
    assert_eq!(report.requests, 0);
    assert!(!report.kept_pending.is_empty());
    assert!(store.log_details(pending.request_id, None, ReadFrom::Primary).await.unwrap().is_some());
}

async fn a_claim_records_at_most_one_attempt(backend: Backend) {
    let store = store(backend).await;
    let d = store.insert_delivery(&delivery(Uuid::new_v4(), |_| {})).await.unwrap();
    let a = store.claim_due(1, Duration::from_millis(200)).await.unwrap().pop().unwrap();
    // A's lease runs out; B claims, fails and schedules a retry (the lease is
    // cleared); then A's late attempt arrives, and arrives again (a lost reply).
    let b = eventually(Duration::from_secs(5), "the lease to expire", || {
        let store = store.clone();
        async move { store.claim_due(1, Duration::from_secs(30)).await.unwrap().pop() }
    })
    .await;
    let later = Duration::from_secs(3600);
    assert!(store.record_attempt(&b, &settled(NextStep::RetryAfter(later))).await.unwrap());
    assert!(
        store.record_attempt(&b, &settled(NextStep::RetryAfter(later))).await.unwrap(),
        "a retried record is a no-op"
    );
    assert!(!store.record_attempt(&a, &settled(NextStep::Succeeded)).await.unwrap(), "A's lease is lost");
    store.record_attempt(&a, &settled(NextStep::Succeeded)).await.unwrap();
    let (log, attempts) = store.log_details(d.request_id, None, ReadFrom::Primary).await.unwrap().unwrap();
    assert_eq!(attempts.len(), 2, "one attempt per claim, whatever the retries");
    assert_eq!(log.attempt_count, 2);
    assert_eq!(log.status, ExecutionStatus::Pending, "the late attempt does not settle what B scheduled");
}

/// The lost-lease scenario: A's lease runs out, B claims and settles, then
/// A's late attempt arrives. The log's status and latest attempt stay B's.
async fn a_late_attempt_neither_becomes_the_latest_nor_changes_the_status(backend: Backend) {
    let store = store(backend).await;
    let d = store.insert_delivery(&delivery(Uuid::new_v4(), |_| {})).await.unwrap();
    let a = store.claim_due(1, Duration::from_millis(200)).await.unwrap().pop().unwrap();
    let b = eventually(Duration::from_secs(5), "the lease to expire", || {
        let store = store.clone();
        async move { store.claim_due(1, Duration::from_secs(30)).await.unwrap().pop() }
    })
    .await;
    assert!(store.record_attempt(&b, &settled(NextStep::Succeeded)).await.unwrap());
    let mut late = settled(NextStep::Failed);
    late.error_message = Some("A's late failure".into());
    assert!(!store.record_attempt(&a, &late).await.unwrap());
    let (log, attempts) = store.log_details(d.request_id, None, ReadFrom::Primary).await.unwrap().unwrap();
    assert_eq!(attempts.len(), 2, "the late attempt happened and is kept");
    assert_eq!(log.status, ExecutionStatus::Succeeded);
    let latest = log.last_attempt.unwrap();
    assert!(latest.success && latest.error_message.is_none(), "the latest attempt agrees with the status: {latest:?}");
    // Listings agree with details.
    let filter = LogFilter { organization_id: Some(d_org(&store, d.request_id).await), ..Default::default() };
    let listed = store.list_logs(&filter, None, 10, usize::MAX).await.unwrap().logs.pop().unwrap();
    assert!(listed.last_attempt.unwrap().success);
}

async fn d_org(store: &Arc<dyn Store>, request_id: Uuid) -> Uuid {
    store.log_details(request_id, None, ReadFrom::Primary).await.unwrap().unwrap().0.organization_id
}

/// Retry or fail is decided on the locked row: with max_retries 1, a late
/// attempt by a lost lease counts, and B's retry becomes a failure rather
/// than a third attempt.
async fn no_more_than_max_retries_plus_one_attempts_even_with_a_lost_lease(backend: Backend) {
    let store = store(backend).await;
    let d = store.insert_delivery(&delivery(Uuid::new_v4(), |i| i.max_retries = Some(1))).await.unwrap();
    let a = store.claim_due(1, Duration::from_millis(200)).await.unwrap().pop().unwrap();
    let b = eventually(Duration::from_secs(5), "the lease to expire", || {
        let store = store.clone();
        async move { store.claim_due(1, Duration::from_secs(30)).await.unwrap().pop() }
    })
    .await;
    assert!(!store.record_attempt(&a, &settled(NextStep::Failed)).await.unwrap());
    // B read attempt_count 0 when it claimed, so the engine asks for a retry.
    assert!(store.record_attempt(&b, &settled(NextStep::RetryAfter(Duration::ZERO))).await.unwrap());
    let (log, attempts) = store.log_details(d.request_id, None, ReadFrom::Primary).await.unwrap().unwrap();
    assert_eq!((log.status, attempts.len()), (ExecutionStatus::Failed, 2));
    assert!(store.claim_due(10, Duration::from_secs(30)).await.unwrap().is_empty(), "nothing left to attempt");
}

/// A late attempt and the current holder's, recorded at the same moment
/// (on Postgres they may share one batched statement): both are kept, and
/// the holder's decides the status.
async fn a_late_and_a_current_attempt_recorded_together_both_land(backend: Backend) {
    let store = store(backend).await;
    for _ in 0..10 {
        let d = store.insert_delivery(&delivery(Uuid::new_v4(), |_| {})).await.unwrap();
        let a = store.claim_due(1, Duration::from_millis(100)).await.unwrap().pop().unwrap();
        let b = eventually(Duration::from_secs(5), "the lease to expire", || {
            let store = store.clone();
            async move { store.claim_due(1, Duration::from_secs(30)).await.unwrap().pop() }
        })
        .await;
        let (failed, succeeded) = (settled(NextStep::Failed), settled(NextStep::Succeeded));
        let (late, current) = tokio::join!(store.record_attempt(&a, &failed), store.record_attempt(&b, &succeeded));
        assert!(!late.unwrap() && current.unwrap());
        let (log, attempts) = store.log_details(d.request_id, None, ReadFrom::Primary).await.unwrap().unwrap();
        assert_eq!((log.status, attempts.len()), (ExecutionStatus::Succeeded, 2), "{attempts:?}");
        assert!(log.last_attempt.unwrap().success);
    }
}

/// The live tail's lookup of logs by key: each delivery once however often
/// its key is named, with its latest attempt as listings show it, and
/// nothing for a key that matches no delivery.
async fn logs_by_key_come_once_each_with_their_latest_attempt(backend: Backend) {
    let store = store(backend).await;
    let tried = store.insert_delivery(&delivery(Uuid::new_v4(), |_| {})).await.unwrap();
    let claimed = store.claim_due(10, Duration::from_secs(30)).await.unwrap();
    let waiting = store.insert_delivery(&delivery(Uuid::new_v4(), |_| {})).await.unwrap();
    assert!(store.record_attempt(&claimed[0], &settled(NextStep::Failed)).await.unwrap());
    let key = |log: &hookpost::domain::LogRecord| (log.log_id, log.created_at);
    let (a, _) = store.log_details(tried.request_id, None, ReadFrom::Primary).await.unwrap().unwrap();
    let (b, _) = store.log_details(waiting.request_id, None, ReadFrom::Primary).await.unwrap().unwrap();
    let nobody = (a.log_id + b.log_id + 1000, a.created_at);

    let read = store.logs_by_id(&[key(&b), key(&a), key(&b), nobody], Bodies::With, usize::MAX).await.unwrap();
    assert!(!read.more);
    let logs = read.logs;
    let ids: Vec<Uuid> = logs.iter().map(|l| l.request_id).collect();
    assert_eq!(
        ids,
        [waiting.request_id, tried.request_id],
        "each delivery once, as first named, the unknown key nowhere"
    );
    let a_now = logs.iter().find(|l| l.request_id == tried.request_id).unwrap();
    assert_eq!(a_now.status, ExecutionStatus::Failed);
    assert_eq!(a_now.last_attempt.as_ref().map(|t| t.status_code), Some(Some(500)));
    let b_now = logs.iter().find(|l| l.request_id == waiting.request_id).unwrap();
    assert!(b_now.last_attempt.is_none(), "no attempt yet: {b_now:?}");
    assert!(!a_now.body.is_empty() && a_now.last_attempt.as_ref().unwrap().response_body == "ok");

    // A byte budget the first log reaches: that log, and more to read.
    let cut = store.logs_by_id(&[key(&a), nobody, key(&b)], Bodies::With, 1).await.unwrap();
    assert!(cut.more);
    assert_eq!(cut.logs.iter().map(|l| l.request_id).collect::<Vec<_>>(), [tried.request_id]);
    // Without bodies: the same logs as the BASIC view shows them.
    let basic = store.logs_by_id(&[key(&b), key(&a), nobody], Bodies::Without, usize::MAX).await.unwrap();
    let want: Vec<_> = logs.iter().map(|l| l.basic_copy()).collect();
    assert_eq!(basic.logs, want);
    // And the tail's attempts without their response bodies.
    let start = hookpost::store::TailPosition { attempt: (0, 0), event: (0, 0) };
    let tail = |bodies| {
        let store = store.clone();
        async move { Some(store.tail(start, 100, bodies).await.unwrap()).filter(|e| !e.is_empty()) }
    };
    let with = eventually(Duration::from_secs(20), "the attempt in the tail", || tail(Bodies::With)).await;
    let without = store.tail(start, 100, Bodies::Without).await.unwrap();
    let stripped: Vec<_> = with
        .into_iter()
        .map(|mut e| {
            if let hookpost::store::TailChange::Attempt(a) = &mut e.change {
                assert_eq!(a.response_body, "ok");
                a.strip_bodies();
            }
            e
        })
        .collect();
    assert_eq!(without, stripped);
}

/// A claim given back early: held when its endpoint was paused since the
/// claim, else due again (at once, or after the delay asked for); and only
/// under the lease it was claimed with.
async fn claims_are_held_or_released_under_their_own_lease(backend: Backend) {
    use hookpost::domain::{DeliveryPolicy, EndpointSpec};
    use hookpost::store::NewEndpoint;
    let store = store(backend).await;
    let org = Uuid::new_v4();
    let mut endpoints = Vec::new();
    for _ in 0..2 {
        let spec = EndpointSpec {
            url: "http://127.0.0.1:9/hook".into(),
            description: String::new(),
            event_types: Vec::new(),
            disabled: false,
            headers: Default::default(),
            policy: DeliveryPolicy::default(),
        };
        let e = NewEndpoint {
            endpoint_id: Uuid::new_v4(),
            organization_id: org,
            workspace_id: None,
            spec,
            secret: vec![7; 32],
            public_key: None,
        };
        endpoints.push(store.insert_endpoint(&e, 10).await.unwrap().endpoint_id);
    }
    let (paused, active) = (endpoints[0], endpoints[1]);
    let to = |endpoint| hookpost::domain::NewDelivery { endpoint_id: Some(endpoint), ..delivery(org, |_| {}) };
    let on_paused = store.insert_delivery(&to(paused)).await.unwrap();
    let on_active = store.insert_delivery(&to(active)).await.unwrap();
    let lease = Duration::from_secs(30);
    let claims = store.claim_due(10, lease).await.unwrap();
    assert_eq!(claims.len(), 2);
    store.set_paused(org, paused, true).await.unwrap().unwrap();

    store.hold(&claims).await.unwrap();
    let status = |id| {
        let store = store.clone();
        async move { store.log_details(id, None, ReadFrom::Primary).await.unwrap().unwrap().0.status }
    };
    assert_eq!(status(on_paused.request_id).await, ExecutionStatus::Held);
    assert_eq!(status(on_active.request_id).await, ExecutionStatus::Pending);
    // The active endpoint's delivery is due again at once; the held one is not.
    let again = store.claim_due(10, lease).await.unwrap();
    assert_eq!(again.iter().map(|c| c.request_id).collect::<Vec<_>>(), [on_active.request_id]);

    // The first claim's lease is over: giving it back changes nothing.
    store.release(&claims, Duration::ZERO).await.unwrap();
    store.hold(&claims).await.unwrap();
    assert!(store.claim_due(10, lease).await.unwrap().is_empty(), "still leased to the second claim");
    assert_eq!(status(on_paused.request_id).await, ExecutionStatus::Held);
    let (held, _) = store.log_details(on_paused.request_id, None, ReadFrom::Primary).await.unwrap().unwrap();
    assert_eq!(held.next_attempt_at, None, "a held delivery has no due time, even after a stale release");
    // Given back under its own lease, due after the delay asked for.
    store.release(&again, Duration::from_secs(3600)).await.unwrap();
    assert!(store.claim_due(10, lease).await.unwrap().is_empty(), "not due for an hour");
    let (log, _) = store.log_details(on_active.request_id, None, ReadFrom::Primary).await.unwrap().unwrap();
    assert!(log.next_attempt_at.unwrap() > Utc::now() + chrono::TimeDelta::minutes(59));
}

on_both_stores!(
    claims_are_held_or_released_under_their_own_lease,
    logs_by_key_come_once_each_with_their_latest_attempt,
    a_late_and_a_current_attempt_recorded_together_both_land,
    a_late_attempt_neither_becomes_the_latest_nor_changes_the_status,
    no_more_than_max_retries_plus_one_attempts_even_with_a_lost_lease,
    a_claim_records_at_most_one_attempt,
    idempotency_under_concurrent_duplicates,
    keyset_paging_with_every_filter,
    a_lease_expires_and_the_delivery_is_claimed_again,
    an_attempt_and_the_new_state_are_recorded_together,
    purge_removes_settled_logs_and_never_pending_ones,
);
