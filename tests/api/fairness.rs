//! One tenant's broken receiver never slows another's: queues are served
//! round-robin, each within its in-flight cap, and a busy queue is skipped
//! rather than claimed and released.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hookpost::proto::v1 as pb;
use uuid::Uuid;

use crate::helpers::*;

/// A receiver that never answers: it counts the requests it holds at once.
struct Hanging {
    url: String,
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
}

impl Hanging {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (now, most, total) = (Arc::default(), Arc::default(), Arc::default());
        let state = (Arc::clone(&now), Arc::clone(&most), Arc::clone(&total));
        let app = axum::Router::new().fallback(move || {
            let (now, most, total): (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>) = state.clone();
            async move {
                total.fetch_add(1, Ordering::SeqCst);
                let held = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(held, Ordering::SeqCst);
                // Decremented when hookpost gives up and drops the request.
                struct Leave(Arc<AtomicUsize>);
                impl Drop for Leave {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let _leave = Leave(now);
                std::future::pending::<()>().await;
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, now, most, total }
    }
}

/// Row updates Postgres counted on the requests' partitions.
async fn request_row_updates(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT COALESCE(sum(n_tup_upd), 0)::int8 FROM pg_stat_user_tables WHERE relname LIKE 'webhook_requests_p%'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_hanging_tenant_with_2000_queued_never_delays_another_and_never_exceeds_its_cap() {
    const CAP: u32 = 3;
    let mut app = spawn_app_with(|c| {
        c.delivery.concurrency = 16;
        c.delivery.attempt_timeout = Duration::from_secs(2);
        c.delivery.drain_timeout = Duration::from_millis(200);
        c.db_pool_size = 6;
    })
    .await;
    let hanging = Hanging::start().await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let created = app
        .client
        .clone()
        .create_endpoint(app.authed(pb::CreateEndpointRequest {
            organization_id: a.to_string(),
            workspace_id: String::new(),
            endpoint: Some(pb::Endpoint {
                url: hanging.url.clone(),
                policy: Some(pb::DeliveryPolicy { max_in_flight: Some(CAP), ..Default::default() }),
                ..Default::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    let endpoint_id = created.endpoint.unwrap().endpoint_id;

    // Tenant A queues 2,000 webhooks for a receiver that never answers.
    let calls = (0..2000).map(|_| {
        let mut client = app.client.clone();
        let req = pb::DispatchRequest {
            organization_id: a.to_string(),
            endpoint_id: endpoint_id.clone(),
            webhook_type: "call.started".into(),
            max_retries: Some(0),
            ..Default::default()
        };
        let req = app.authed(req);
        async move { client.dispatch(req).await.unwrap() }
    });
    futures_util::stream::iter(calls).buffer_unordered(32).collect::<Vec<_>>().await;
    eventually(Duration::from_secs(20), "A's receiver to be busy", || async {
        (hanging.now.load(Ordering::SeqCst) == CAP as usize).then_some(())
    })
    .await;

    // Tenant B's webhooks reach B while A's backlog waits.
    let receiver = Receiver::start().await;
    let mut latencies = Vec::new();
    for i in 0..20 {
        let sent = Instant::now();
        app.dispatch(dispatch_to(&receiver.url(), b)).await.unwrap();
        receiver.wait_for(i + 1, Duration::from_secs(20)).await;
        latencies.push(sent.elapsed());
    }
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_requests WHERE organization_id = $1 AND status = 'pending'")
            .bind(a)
            .fetch_one(app.pg())
            .await
            .unwrap();
    assert!(pending >= 1900, "A's backlog drained ({pending} left): the scenario did not hold");
    assert!(hanging.most.load(Ordering::SeqCst) <= CAP as usize, "A's receiver held more than its cap at once");
    latencies.sort();
    eprintln!(
        "B while A has {pending} pending: p50 {:?}, p99 {:?}; A received {} (most at once {})",
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100],
        hanging.total.load(Ordering::SeqCst),
        hanging.most.load(Ordering::SeqCst)
    );

    // The queue did work in proportion to deliveries: each attempt is one
    // claim and one record, and nothing was claimed only to be released.
    app.stop().await; // its connections close, so their statistics are flushed
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_attempts").fetch_one(app.pg()).await.unwrap();
    let updates = eventually(Duration::from_secs(10), "statistics to be flushed", || async {
        let u = request_row_updates(app.pg()).await;
        (u >= 2 * attempts).then_some(u)
    })
    .await;
    eprintln!("{attempts} attempts, {updates} row updates on webhook_requests");
    // Claimed but unrecorded at shutdown: at most the engine's slots.
    assert!(updates <= 2 * attempts + 16, "{updates} row updates for {attempts} attempts");
}
