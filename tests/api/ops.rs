//! Operations: retention by partition, across day boundaries.

use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Days, Utc};
use hookpost::proto::v1 as pb;
use uuid::Uuid;

use crate::helpers::*;

/// Inserts a request created at `at` (and, unless pending, one attempt), as if
/// it had been dispatched then. Pending ones are due far in the future, so the
/// engine leaves them alone.
pub(crate) async fn backdated(app: &TestApp, org: Uuid, at: DateTime<Utc>, pending: bool, key: Option<&str>) -> Uuid {
    let id = Uuid::new_v4();
    let (status, attempts) = if pending { ("pending", 0) } else { ("succeeded", 1) };
    let log_id: i64 = sqlx::query_scalar(
        "WITH m AS (INSERT INTO webhook_messages (message_id, organization_id, webhook_type, body, \
           idempotency_key, created_at) VALUES ($1, $2, 'call_started', '{}', $3, $6)) \
         INSERT INTO webhook_requests (request_id, message_id, organization_id, webhook_url, webhook_type, \
           max_retries, status, attempt_count, next_attempt_at, created_at, updated_at) \
         VALUES ($1, $1, $2, 'http://127.0.0.1:9/h', 'call_started', 3, $4, $5, \
           CASE WHEN $4 = 'pending' THEN now() + interval '1 year' END, $6, $6) RETURNING id",
    )
    .bind(id)
    .bind(org)
    .bind(key)
    .bind(status)
    .bind(attempts)
    .bind(at)
    .fetch_one(app.pg())
    .await
    .unwrap();
    if !pending {
        sqlx::query(
            "INSERT INTO webhook_attempts (request_pk, request_created_at, attempt_number, attempted_at, success, \
               status_code, response_time_ms) VALUES ($1, $2, 1, $2, true, 200, 5)",
        )
        .bind(log_id)
        .bind(at)
        .execute(app.pg())
        .await
        .unwrap();
    }
    if let Some(key) = key {
        sqlx::query(
            "INSERT INTO idempotency_keys (organization_id, idempotency_key, request_id, log_id, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(org)
        .bind(key)
        .bind(id)
        .bind(log_id)
        .bind(at)
        .execute(app.pg())
        .await
        .unwrap();
    }
    id
}

fn purge(app: &TestApp, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hookpost"))
        .args(["purge", "--retention", "1d"])
        .args(extra)
        .env("DATABASE_URL", &app.database_url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(app.pg()).await.unwrap()
}

#[tokio::test]
async fn retention_drops_expired_days_keeps_pending_work_and_logs_still_answer() {
    let app = spawn_app().await;
    let store = hookpost::store::PostgresStore::connect(&app.database_url, 1, Duration::from_secs(5)).await.unwrap();
    let now = Utc::now();
    let today = now.date_naive();
    store.ensure_partitions(today - Days::new(5), today).await.unwrap();
    let org = Uuid::new_v4();
    let day = |n: u64| now - Days::new(n);
    let mut expired = Vec::new();
    for _ in 0..3 {
        expired.push(backdated(&app, org, day(4), false, None).await);
        expired.push(backdated(&app, org, day(2), false, None).await);
    }
    let old_key = backdated(&app, org, day(4), false, Some("order-1")).await;
    let pending_old = backdated(&app, org, day(3), true, None).await;
    let done_beside_pending = backdated(&app, org, day(3), false, None).await;
    let recent = backdated(&app, org, day(0) - chrono::TimeDelta::hours(1), false, None).await;
    let receiver = Receiver::start().await;
    let fresh = app.dispatch(dispatch_to(&receiver.url(), org)).await.unwrap().request_id;
    app.settled(&fresh, Duration::from_secs(20)).await;
    let before = count(&app, "SELECT count(*) FROM webhook_requests").await;
    assert_eq!(before, 11);

    let dry = purge(&app, &["--dry-run"]);
    assert!(dry.contains("would remove 7 requests and 7 attempts"), "{dry}");
    assert!(dry.contains(&day(4).format("%Y-%m-%d").to_string()), "{dry}");
    assert!(dry.contains(&format!("kept (deliveries still pending): {}", day(3).format("%Y-%m-%d"))), "{dry}");
    assert_eq!(count(&app, "SELECT count(*) FROM webhook_requests").await, before, "a dry run removes nothing");

    let done = purge(&app, &[]);
    assert!(done.contains("removed 7 requests and 7 attempts"), "{done}");
    assert_eq!(count(&app, "SELECT count(*) FROM webhook_requests").await, 4);
    assert_eq!(count(&app, "SELECT count(*) FROM webhook_attempts").await, 3);
    // Whole partitions went: no DELETE left dead rows behind.
    let parts = count(
        &app,
        &format!(
            "SELECT count(*) FROM pg_class WHERE relname IN ('webhook_requests_p{}', 'webhook_requests_p{}')",
            day(4).format("%Y%m%d"),
            day(2).format("%Y%m%d")
        ),
    )
    .await;
    assert_eq!(parts, 0);
    assert_eq!(count(&app, "SELECT count(*) FROM idempotency_keys").await, 0);

    // Logs still answer: the survivors page correctly, the purged are gone.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .list(pb::ListWebhookLogsRequest {
                organization_id: org.to_string(),
                page_size: 1,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap();
        seen.extend(page.logs.into_iter().map(|l| l.request_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut expected =
        vec![fresh.clone(), recent.to_string(), done_beside_pending.to_string(), pending_old.to_string()];
    expected.sort();
    let mut got = seen.clone();
    got.sort();
    assert_eq!(got, expected);
    assert_eq!(seen[0], fresh, "newest first across days");
    assert_eq!(
        app.details(&pending_old.to_string()).await.unwrap().log.unwrap().execution_status(),
        pb::ExecutionStatus::Pending
    );
    assert_eq!(app.details(&done_beside_pending.to_string()).await.unwrap().attempts.len(), 1);
    for id in expired.iter().chain([&old_key]) {
        assert_eq!(app.details(&id.to_string()).await.unwrap_err().code(), tonic::Code::NotFound);
    }
    // The expired key can be used again.
    let again = pb::DispatchRequest { idempotency_key: "order-1".into(), ..dispatch_to(&receiver.url(), org) };
    assert!(!app.dispatch(again).await.unwrap().duplicate);
}

#[tokio::test]
async fn idempotency_and_request_lookups_work_across_a_day_boundary() {
    let app = spawn_app().await;
    let org = Uuid::new_v4();
    let yesterday = Utc::now() - Days::new(1);
    let old = backdated(&app, org, yesterday, false, Some("call-101-started")).await;
    let req =
        pb::DispatchRequest { idempotency_key: "call-101-started".into(), ..dispatch_to("http://127.0.0.1:9/", org) };
    let res = app.dispatch(req).await.unwrap();
    assert!(res.duplicate);
    assert_eq!(res.request_id, old.to_string());
    let d = app.details(&old.to_string()).await.unwrap();
    assert_eq!(d.attempts.len(), 1);
    // Paging across the boundary: today's first, then yesterday's.
    let today = app
        .dispatch(pb::DispatchRequest { max_retries: Some(0), ..dispatch_to("http://127.0.0.1:9/", org) })
        .await
        .unwrap();
    let q = |token: String| pb::ListWebhookLogsRequest {
        organization_id: org.to_string(),
        page_size: 1,
        page_token: token,
        ..Default::default()
    };
    let first = app.list(q(String::new())).await.unwrap();
    assert_eq!(first.logs[0].request_id, today.request_id);
    let second = app.list(q(first.next_page_token)).await.unwrap();
    assert_eq!(second.logs[0].request_id, old.to_string());
    assert!(second.next_page_token.is_empty());
}

fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

async fn scrape(app: &TestApp) -> (prometheus_parse::Scrape, String) {
    let text = reqwest::get(format!("{}/metrics", app.base_url)).await.unwrap().text().await.unwrap();
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text");
    (parsed, text)
}

/// One series' value read from the raw text: prometheus-parse splits label
/// values at the first `}`, and route templates contain braces.
fn raw_value(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(503)]);
    let (before, before_text) = scrape(&app).await;
    let res = app.dispatch(dispatch_to(&receiver.url(), Uuid::new_v4())).await.unwrap();
    app.settled(&res.request_id, Duration::from_secs(20)).await;
    let (status, _) = app.get_json("/api/v1/calls/5/webhook-logs").await;
    assert_eq!(status, 404);
    let (after, after_text) = scrape(&app).await;

    let moved = |name: &str, labels: &[(&str, &str)]| sample(&after, name, labels) - sample(&before, name, labels);
    assert_eq!(moved("hookpost_dispatches_total", &[("outcome", "stored")]), 1.0);
    assert_eq!(moved("hookpost_attempts_total", &[("outcome", "failure"), ("category", "http_5xx")]), 1.0);
    assert_eq!(moved("hookpost_attempts_total", &[("outcome", "success"), ("category", "none")]), 1.0);
    assert_eq!(moved("hookpost_retries_scheduled_total", &[]), 1.0);
    assert!(moved("hookpost_attempt_duration_seconds_count", &[]) >= 2.0);
    assert!(moved("hookpost_grpc_requests_total", &[("method", "Dispatch"), ("code", "Ok")]) >= 1.0);
    let series = r#"hookpost_http_requests_total{route="/api/v1/calls/{call_id}/webhook-logs",status="404"} "#;
    assert_eq!(raw_value(&after_text, series) - raw_value(&before_text, series), 1.0);
    for gauge in ["hookpost_deliveries_pending", "hookpost_oldest_pending_age_seconds", "hookpost_deliveries_in_flight"]
    {
        assert!(after.samples.iter().any(|s| s.metric == gauge), "{gauge} missing");
    }
    // The claims' own pool is counted beside the main one (the main pool's
    // count alone left out up to three connections per process).
    let pools = match app.db.is_some() {
        true => ["main", "claims"],
        false => ["read", "write"],
    };
    for pool in pools {
        let series = after
            .samples
            .iter()
            .filter(|s| s.metric == "hookpost_db_pool_connections" && s.labels.get("pool") == Some(pool));
        assert_eq!(series.count(), 2, "{pool}: in_use and idle");
    }
    // No unbounded labels: nothing carries an ID or a URL.
    assert!(!after_text.contains("127.0.0.1") && !after_text.contains(&res.request_id));
}

#[tokio::test]
async fn health_follows_the_database_down_and_back_up() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let pg = ThrowawayPostgres::start();
    let mut config = test_config(&pg.url());
    config.db_acquire_timeout = Duration::from_millis(500);
    let app = spawn_app_on(config, &pg.url()).await;
    let channel = tonic::transport::Channel::from_shared(app.base_url.clone()).unwrap().connect().await.unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = |want: ServingStatus| {
        let mut h = health.clone();
        async move {
            let req = tonic_health::pb::HealthCheckRequest { service: "hookpost.v1.WebhookService".into() };
            let got = h.check(req).await.ok()?.into_inner().status;
            (got == want as i32).then_some(())
        }
    };
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{}{path}", app.base_url)).send();

    eventually(Duration::from_secs(10), "SERVING", || status(ServingStatus::Serving)).await;
    assert_eq!(get("/readyz").await.unwrap().status(), 200);

    pg.stop_server();
    eventually(Duration::from_secs(20), "NOT_SERVING", || status(ServingStatus::NotServing)).await;
    assert_eq!(get("/readyz").await.unwrap().status(), 503);
    assert_eq!(get("/healthz").await.unwrap().status(), 200, "the process is alive");

    pg.start_server();
    eventually(Duration::from_secs(20), "SERVING again", || status(ServingStatus::Serving)).await;
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
}

#[tokio::test]
async fn the_queue_gauges_are_sampled_from_the_store() {
    // Nothing delivers, so what is dispatched stays pending.
    let app = spawn_app_with(|c| c.delivery.enabled = false).await;
    let org = Uuid::new_v4();
    for _ in 0..3 {
        app.dispatch(dispatch_to("http://127.0.0.1:9/hook", org)).await.unwrap();
    }
    eventually(Duration::from_secs(20), "the pending gauge to read 3", || async {
        let (scraped, _) = scrape(&app).await;
        let pending = sample(&scraped, "hookpost_deliveries_pending", &[]);
        let age = sample(&scraped, "hookpost_oldest_pending_age_seconds", &[]);
        (pending == 3.0 && age > 0.0).then_some(())
    })
    .await;
}
