//! Behind PgBouncer in transaction pooling mode (issue 17): Debian's
//! PgBouncer 1.18, which keeps no prepared statement between transactions,
//! with two server connections for hookpost's eight clients, so that
//! consecutive transactions of one client land on different servers.

use std::collections::HashMap;
use std::time::Duration;

use hookpost::proto::v1 as pb;
use uuid::Uuid;

use crate::helpers::*;

const SETTLE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn everything_works_through_pgbouncer_in_transaction_mode() {
    let bouncer = PgBouncer::start(2);
    let direct = fresh_database().await;
    let mut config = test_config(&direct);
    config.db_pool_size = 8;
    config.pooled_database_url = Some(bouncer.url(&direct));
    // The 200 concurrent calls below authenticate from the key cache (the
    // test default, no cache, would look the key up 200 times at once and
    // meet the cap on concurrent lookups).
    config.key_cache_ttl = Duration::from_secs(60);
    let app = spawn_app_on(config, &direct).await;
    let receiver = Receiver::start().await;
    let org = Uuid::new_v4();

    // An endpoint (a transaction with an advisory transaction lock), and a
    // fan-out to it.
    let req = pb::CreateEndpointRequest {
        organization_id: org.to_string(),
        workspace_id: Uuid::new_v4().to_string(),
        endpoint: Some(endpoint(&receiver.url(), &["call.started"])),
    };
    let created = app.client.clone().create_endpoint(app.authed(req)).await.unwrap().into_inner();
    let endpoint_id = created.endpoint.unwrap().endpoint_id;
    let fan_out = pb::DispatchRequest {
        organization_id: org.to_string(),
        webhook_type: "call.started".into(),
        payload: Some(hookpost::grpc::json_to_struct(serde_json::json!({"n": 0}).as_object().unwrap().clone())),
        ..Default::default()
    };
    let mut sent = vec![app.dispatch(fan_out).await.unwrap().request_id];

    // Many Dispatch calls at once: group-committed inserts, some with
    // idempotency keys (each sent twice), all through two server connections.
    let calls = (0..200).map(|i| {
        let app = &app;
        let url = receiver.url();
        async move {
            let mut req = dispatch_to(&url, org);
            if i % 4 == 0 {
                req.idempotency_key = format!("key-{i}");
                let first = app.dispatch(req.clone()).await.unwrap();
                let again = app.dispatch(req).await.unwrap();
                assert_eq!(first.request_id, again.request_id, "an idempotency key answers its first request");
                first.request_id
            } else {
                app.dispatch(req).await.unwrap().request_id
            }
        }
    });
    sent.extend(futures_util::future::join_all(calls).await);

    // Each delivered exactly once, each recorded as one successful attempt.
    let got = receiver.wait_for(sent.len(), SETTLE).await;
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for r in &got {
        *per_id.entry(r.headers["webhook-id"].to_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(per_id.len(), sent.len());
    assert!(per_id.values().all(|&n| n == 1), "a webhook was sent twice");
    for id in &sent {
        let d = app.settled(id, SETTLE).await;
        assert_eq!(d.log.unwrap().execution_status(), pb::ExecutionStatus::Succeeded);
        assert_eq!(d.attempts.len(), 1);
    }

    // Reads: pages through the whole listing.
    let mut listed = 0;
    let mut page_token = String::new();
    loop {
        let page = app
            .list(pb::ListWebhookLogsRequest {
                organization_id: org.to_string(),
                page_size: 50,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        listed += page.logs.len();
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    assert_eq!(listed, sent.len());

    // Redeliver, pause and resume (held, then released), a recovery dry run.
    let again = pb::RedeliverWebhookRequest { request_id: sent[1].clone(), ..Default::default() };
    app.client.clone().redeliver_webhook(app.authed(again)).await.unwrap();
    receiver.wait_for(sent.len() + 1, SETTLE).await;
    let pause = pb::PauseEndpointRequest {
        organization_id: org.to_string(),
        endpoint_id: endpoint_id.clone(),
        ..Default::default()
    };
    app.client.clone().pause_endpoint(app.authed(pause)).await.unwrap();
    let held = pb::DispatchRequest { endpoint_id: endpoint_id.clone(), ..dispatch_to("", org) };
    let held = pb::DispatchRequest { webhook_url: String::new(), webhook_type: "call.started".into(), ..held };
    let held = app.dispatch(held).await.unwrap().request_id;
    let status = app.details(&held).await.unwrap().log.unwrap().execution_status();
    assert_eq!(status, pb::ExecutionStatus::Held);
    let resume = pb::ResumeEndpointRequest { organization_id: org.to_string(), endpoint_id, ..Default::default() };
    app.client.clone().resume_endpoint(app.authed(resume)).await.unwrap();
    assert_eq!(app.settled(&held, SETTLE).await.log.unwrap().execution_status(), pb::ExecutionStatus::Succeeded);

    // The statements did go through the bouncer: its own count of the
    // transactions it passed to the test database (hundreds: every Dispatch,
    // claim, attempt record and read), over its two server connections.
    let database = url::Url::parse(&direct).unwrap().path().trim_start_matches('/').to_owned();
    let stats = bouncer.show("STATS").await;
    let ours = stats.iter().find(|r| r["database"] == database).unwrap_or_else(|| panic!("{stats:?}"));
    let transactions: i64 = ours["total_xact_count"].parse().unwrap();
    assert!(transactions >= sent.len() as i64 * 2, "{ours:?}");
    let pools = bouncer.show("POOLS").await;
    let ours = pools.iter().find(|r| r["database"] == database).unwrap_or_else(|| panic!("{pools:?}"));
    let servers: i64 = ["sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"]
        .iter()
        .map(|k| ours[*k].parse::<i64>().unwrap())
        .sum();
    assert!(servers <= 2, "at most the two server connections: {ours:?}");

    // What the pooler mode is for: the same kind of traffic from a plain
    // sqlx pool (named, cached statements; Parse and Bind in separate round
    // trips) through the same bouncer fails.
    let plain = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect_with(
            bouncer.url(&direct).parse::<sqlx::postgres::PgConnectOptions>().unwrap().extra_float_digits(None),
        )
        .await
        .unwrap();
    let tries = (0..64).map(|i| {
        let plain = plain.clone();
        async move {
            let sql = format!("SELECT $1::bigint + {}", i % 8);
            sqlx::query_scalar::<_, i64>(&sql).bind(i as i64).fetch_one(&plain).await
        }
    });
    let failed = futures_util::future::join_all(tries).await.into_iter().filter(|r| r.is_err()).count();
    assert!(failed > 0, "a plain pool through a transaction pooler should trip over its prepared statements");
}
