//! WatchWebhookLogs: the live tail over gRPC, NDJSON and SSE; resume with no
//! gap and no repeat; out-of-order commits; another replica's attempts; the
//! per-key limit; shutdown; views.

use std::time::Duration;

use futures_util::StreamExt;
use hookpost::auth::KeyKind;
use hookpost::proto::v1 as pb;
use hookpost::store::Bodies;
use uuid::Uuid;

use crate::helpers::*;

const SETTLE: Duration = Duration::from_secs(20);

type Events = tonic::Streaming<pb::WatchWebhookLogsResponse>;

async fn watch(app: &TestApp, req: pb::WatchWebhookLogsRequest) -> Events {
    app.client.clone().watch_webhook_logs(app.authed(req)).await.unwrap().into_inner()
}

fn of_org(org: Uuid) -> pb::WatchWebhookLogsRequest {
    pb::WatchWebhookLogsRequest { organization_id: org.to_string(), ..Default::default() }
}

/// The next event, within the deadline.
async fn next(events: &mut Events) -> pb::WatchWebhookLogsResponse {
    tokio::time::timeout(SETTLE, events.message()).await.expect("an event in time").unwrap().expect("an open stream")
}

fn attempt_number(e: &pb::WatchWebhookLogsResponse) -> u32 {
    e.attempt.as_ref().map_or(0, |a| a.attempt_number)
}

async fn tail_and_resume(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(500), Reply::status(500)]);
    let org = Uuid::new_v4();
    let mut events = watch(&app, of_org(org)).await;
    // Another organization's traffic never shows.
    let other = Receiver::start().await;
    app.dispatch(dispatch_to(&other.url(), Uuid::new_v4())).await.unwrap();
    let sent = app.dispatch(dispatch_to(&receiver.url(), org)).await.unwrap();

    let first = next(&mut events).await;
    assert_eq!((first.kind.as_str(), attempt_number(&first)), ("attempt", 1));
    let log = first.log.clone().unwrap();
    assert_eq!(log.request_id, sent.request_id);
    // BASIC by default: no bodies.
    assert!(log.payload.is_none() && first.attempt.as_ref().unwrap().request_body.is_empty());
    drop(events);

    // Resumed from the first event: the next attempts, none repeated.
    let resumed = pb::WatchWebhookLogsRequest {
        resume_token: first.resume_token.clone(),
        view: pb::LogView::Full.into(),
        ..of_org(org)
    };
    let mut events = watch(&app, resumed).await;
    let second = next(&mut events).await;
    let third = next(&mut events).await;
    assert_eq!((attempt_number(&second), attempt_number(&third)), (2, 3));
    assert_eq!(third.log.as_ref().unwrap().execution_status(), pb::ExecutionStatus::Succeeded);
    // FULL: the bodies are there.
    assert!(third.log.as_ref().unwrap().payload.is_some());
    assert!(!third.attempt.as_ref().unwrap().request_body.is_empty());

    // A status change without an attempt: a redelivery.
    let redeliver = pb::RedeliverWebhookRequest { request_id: sent.request_id.clone(), ..Default::default() };
    app.client.clone().redeliver_webhook(app.authed(redeliver)).await.unwrap();
    let changed = next(&mut events).await;
    assert_eq!((changed.kind.as_str(), changed.reason.as_str()), ("status", "redelivered"));
    let fourth = next(&mut events).await;
    assert_eq!(attempt_number(&fourth), 4);

    // A bad token is named.
    let bad = pb::WatchWebhookLogsRequest { resume_token: "junk".into(), ..of_org(org) };
    let err = app.client.clone().watch_webhook_logs(app.authed(bad)).await.unwrap_err();
    assert_eq!(violated_fields(&err), ["resume_token"]);
}

#[tokio::test]
async fn a_watch_sees_each_attempt_once_and_resumes_without_a_gap_on_postgres() {
    tail_and_resume(Backend::Postgres).await;
}

#[tokio::test]
async fn a_watch_sees_each_attempt_once_and_resumes_without_a_gap_on_sqlite() {
    tail_and_resume(Backend::Sqlite).await;
}

/// Two transactions record attempts; the one that started first commits
/// last. A tail by ID would pass the first one's row while it is still
/// invisible and never come back: the watcher must get both, once each.
#[tokio::test]
async fn attempts_committed_out_of_order_both_reach_the_watcher() {
    let app = spawn_app_with(|c| c.delivery.enabled = false).await;
    let org = Uuid::new_v4();
    let a = app.dispatch(dispatch_to("http://127.0.0.1:9/a", org)).await.unwrap();
    let b = app.dispatch(dispatch_to("http://127.0.0.1:9/b", org)).await.unwrap();
    let mut events = watch(&app, of_org(org)).await;
    let insert = "INSERT INTO webhook_attempts (request_pk, request_created_at, attempt_number, attempted_at, \
         success, status_code, response_time_ms) \
         SELECT id, created_at, 1, now(), true, 200, 1 FROM webhook_requests WHERE request_id = $1::uuid";

    let store = open_store(&app.database_url).await;
    let start = store.tail_now().await.unwrap();
    let mut early = app.pg().begin().await.unwrap();
    sqlx::query(insert).bind(&a.request_id).execute(&mut *early).await.unwrap();
    let mut late = app.pg().begin().await.unwrap();
    sqlx::query(insert).bind(&b.request_id).execute(&mut *late).await.unwrap();
    late.commit().await.unwrap();
    // The later transaction is committed, the earlier one is not: the tail
    // holds the later row back rather than pass the earlier one by.
    assert!(store.tail(start, 100, Bodies::With).await.unwrap().is_empty());
    early.commit().await.unwrap();
    // Both appear once no older transaction runs (the horizon is the
    // server's: other tests' transactions can hold it back a moment).
    let both = eventually(SETTLE, "both rows to pass the horizon", || {
        let store = store.clone();
        async move { Some(store.tail(start, 100, Bodies::With).await.unwrap()).filter(|e| e.len() >= 2) }
    })
    .await;
    assert_eq!(both.len(), 2, "{both:?}");

    let mut seen =
        vec![next(&mut events).await.log.unwrap().request_id, next(&mut events).await.log.unwrap().request_id];
    seen.sort();
    let mut expected = vec![a.request_id, b.request_id];
    expected.sort();
    assert_eq!(seen, expected);
    // Nothing more (no repeat): a third event would be a duplicate.
    assert!(tokio::time::timeout(Duration::from_millis(600), events.message()).await.is_err());
}

/// A watcher on one replica sees what another replica delivers.
#[tokio::test]
async fn a_watcher_sees_attempts_recorded_by_another_replica() {
    let db = fresh_database().await;
    let delivering = spawn_app_on(test_config(&db), &db).await;
    let mut config = test_config(&db);
    config.delivery.enabled = false;
    let watching = spawn_app_on(config, &db).await;
    let receiver = Receiver::start().await;
    let org = Uuid::new_v4();
    let mut events = watch(&watching, of_org(org)).await;
    let sent = delivering.dispatch(dispatch_to(&receiver.url(), org)).await.unwrap();
    let e = next(&mut events).await;
    assert_eq!(e.log.unwrap().request_id, sent.request_id);
}

#[tokio::test]
async fn ndjson_and_sse_stream_the_same_events_and_sse_resumes_with_last_event_id() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let org = Uuid::new_v4();
    let http = reqwest::Client::new();
    let url = format!("{}/v1/webhook-logs:watch?organizationId={org}", app.base_url);
    let ndjson = http.get(&url).bearer_auth(&app.key).send().await.unwrap();
    assert_eq!(ndjson.status(), 200);
    assert_eq!(ndjson.headers()["content-type"], "application/x-ndjson");
    let sse = http.get(&url).bearer_auth(&app.key).header("accept", "text/event-stream").send().await.unwrap();
    assert_eq!(sse.headers()["content-type"], "text/event-stream");

    receiver.script([Reply::status(500)]);
    let sent = app.dispatch(dispatch_to(&receiver.url(), org)).await.unwrap();

    // NDJSON: one {"result": …} per line.
    let mut lines = ndjson.bytes_stream();
    let mut buf = Vec::new();
    while !buf.contains(&b'\n') {
        let chunk = tokio::time::timeout(SETTLE, lines.next()).await.unwrap().unwrap().unwrap();
        buf.extend_from_slice(&chunk);
    }
    let line = &buf[..buf.iter().position(|b| *b == b'\n').unwrap()];
    let v: serde_json::Value = serde_json::from_slice(line).unwrap();
    assert_eq!(v["result"]["kind"], "attempt", "{v}");
    assert_eq!(v["result"]["log"]["requestId"], sent.request_id.as_str());
    assert_eq!(v["result"]["attempt"]["attemptNumber"], 1);

    // SSE: `id:` is the resume token.
    let mut frames = sse.bytes_stream();
    let mut text = String::new();
    while !text.contains("\n\n") || !text.contains("data:") {
        let chunk = tokio::time::timeout(SETTLE, frames.next()).await.unwrap().unwrap().unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let id = text.lines().find_map(|l| l.strip_prefix("id: ")).unwrap().to_owned();
    assert!(text.contains("event: log"), "{text}");
    drop(frames);
    let again = http
        .get(&url)
        .bearer_auth(&app.key)
        .header("accept", "text/event-stream")
        .header("last-event-id", &id)
        .send()
        .await
        .unwrap();
    let mut frames = again.bytes_stream();
    let mut text = String::new();
    while !text.contains("data:") {
        let chunk = tokio::time::timeout(SETTLE, frames.next()).await.unwrap().unwrap().unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    // Resumed after attempt 1: the next one is attempt 2.
    assert!(text.contains("\"attemptNumber\":2"), "{text}");
}

#[tokio::test]
async fn open_streams_are_limited_per_key_and_end_at_shutdown() {
    let mut app = spawn_app_with(|c| c.limits.max_watch_streams_per_key = 2).await;
    let org = Uuid::new_v4();
    let mut one = watch(&app, of_org(org)).await;
    let two = watch(&app, of_org(org)).await;
    let err = app.client.clone().watch_webhook_logs(app.authed(of_org(org))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    // Another key has its own allowance.
    let other = app.create_key(KeyKind::Organization(org)).await;
    app.client.clone().watch_webhook_logs(with_key(of_org(org), &other)).await.unwrap();
    // A closed stream frees its place.
    drop(two);
    eventually(SETTLE, "a place frees up", || async {
        app.client.clone().watch_webhook_logs(app.authed(of_org(org))).await.ok()
    })
    .await;
    // Shutdown ends the streams cleanly, and the server stops.
    app.stop().await;
    let end = tokio::time::timeout(SETTLE, one.message()).await.expect("the stream ends at shutdown");
    assert!(matches!(end, Ok(None) | Err(_)));
}

#[tokio::test]
async fn an_organization_key_watches_its_own_organization_only() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let (mine, theirs) = (Uuid::new_v4(), Uuid::new_v4());
    let key = app.create_key(KeyKind::Organization(mine)).await;
    let mut client = app.client.clone();
    // Naming another organization: a stream that stays empty.
    let mut foreign = client.watch_webhook_logs(with_key(of_org(theirs), &key)).await.unwrap().into_inner();
    let mut own =
        client.watch_webhook_logs(with_key(pb::WatchWebhookLogsRequest::default(), &key)).await.unwrap().into_inner();
    app.dispatch(dispatch_to(&receiver.url(), theirs)).await.unwrap();
    let sent = app.dispatch(dispatch_to(&receiver.url(), mine)).await.unwrap();
    assert_eq!(next(&mut own).await.log.unwrap().request_id, sent.request_id);
    assert!(tokio::time::timeout(Duration::from_millis(600), foreign.message()).await.is_err());
}

async fn views(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    let org = Uuid::new_v4();
    let sent = app.dispatch(dispatch_to(&receiver.url(), org)).await.unwrap();
    app.settled(&sent.request_id, SETTLE).await;
    let list = |view: pb::LogView| pb::ListWebhookLogsRequest {
        organization_id: org.to_string(),
        view: view.into(),
        ..Default::default()
    };
    let full = app.list(list(pb::LogView::Unspecified)).await.unwrap().logs.remove(0);
    assert!(full.payload.is_some(), "FULL stays the default");
    let basic = app.list(list(pb::LogView::Basic)).await.unwrap().logs.remove(0);
    assert!(basic.payload.is_none() && basic.metadata.is_none());
    assert_eq!(basic.execution_status(), pb::ExecutionStatus::Succeeded);
    let req = pb::GetLogDetailsRequest {
        request_id: sent.request_id.clone(),
        view: pb::LogView::Basic.into(),
        ..Default::default()
    };
    let d = app.client.clone().get_log_details(app.authed(req)).await.unwrap().into_inner();
    assert!(d.attempts[0].request_body.is_empty() && d.attempts[0].response_body.is_empty());
    let (status, body) = app.get_json(&format!("/v1/webhook-logs/{}?view=LOG_VIEW_BASIC", sent.request_id)).await;
    assert_eq!(status, 200);
    assert!(body["log"].get("payload").is_none() && body["attempts"][0].get("requestBody").is_none(), "{body}");
}

/// Two watchers share each event's log: the BASIC one gets it without
/// bodies, the FULL one, watching at the same time, with all of them.
async fn watch_views(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::ok()]);
    let org = Uuid::new_v4();
    let view = |view: pb::LogView| pb::WatchWebhookLogsRequest { view: view.into(), ..of_org(org) };
    let mut basic = watch(&app, view(pb::LogView::Basic)).await;
    let mut full = watch(&app, view(pb::LogView::Full)).await;
    let sent = app.dispatch(dispatch_to(&receiver.url(), org)).await.unwrap();
    let (b, f) = (next(&mut basic).await, next(&mut full).await);
    let (b_log, f_log) = (b.log.unwrap(), f.log.unwrap());
    assert_eq!(
        (b_log.request_id.as_str(), f_log.request_id.as_str()),
        (sent.request_id.as_str(), sent.request_id.as_str())
    );
    assert_eq!(b.resume_token, f.resume_token);
    let (b_attempt, f_attempt) = (b.attempt.unwrap(), f.attempt.unwrap());
    assert!(b_log.payload.is_none() && b_log.response_body.as_deref().unwrap_or_default().is_empty());
    assert!(b_attempt.request_body.is_empty() && b_attempt.response_body.is_empty());
    assert!(f_log.payload.is_some());
    assert_eq!(f_log.response_body.as_deref(), Some(r#"{"received": true}"#));
    assert!(!f_attempt.request_body.is_empty());
    assert_eq!(f_attempt.response_body, r#"{"received": true}"#);
    // Everything but the bodies is the same in both views.
    assert_eq!((b_log.execution_status, b_log.attempt_count), (f_log.execution_status, f_log.attempt_count));
    assert_eq!(
        (b_attempt.attempt_number, b_attempt.http_status_code),
        (f_attempt.attempt_number, f_attempt.http_status_code)
    );
}

#[tokio::test]
async fn watchers_in_both_views_share_events_on_postgres() {
    watch_views(Backend::Postgres).await;
}

#[tokio::test]
async fn watchers_in_both_views_share_events_on_sqlite() {
    watch_views(Backend::Sqlite).await;
}

#[tokio::test]
async fn basic_views_leave_the_bodies_out_on_postgres() {
    views(Backend::Postgres).await;
}

#[tokio::test]
async fn basic_views_leave_the_bodies_out_on_sqlite() {
    views(Backend::Sqlite).await;
}

/// A gRPC-Web call (HTTP/1.1, `application/grpc-web+proto`) on the same port.
#[tokio::test]
async fn grpc_web_calls_work_on_the_same_port() {
    use prost::Message;
    let app = spawn_app().await;
    let req = dispatch_to("http://127.0.0.1:9/hook", Uuid::new_v4());
    let message = req.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let resp = reqwest::Client::new()
        .post(format!("{}/hookpost.v1.WebhookService/Dispatch", app.base_url))
        .bearer_auth(&app.key)
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(frame)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/grpc-web"));
    let body = resp.bytes().await.unwrap();
    // A data frame (flag 0) with the response, then a trailer frame (0x80).
    assert_eq!(body[0], 0);
    let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    let answer = pb::DispatchResponse::decode(&body[5..5 + len]).unwrap();
    assert!(Uuid::parse_str(&answer.request_id).is_ok());
    let trailer = &body[5 + len..];
    assert_eq!(trailer[0], 0x80);
    assert!(String::from_utf8_lossy(&trailer[5..]).contains("grpc-status:0"));
}

/// CORS is off by default; with an allowed origin, a preflight is answered
/// without a key and only that origin is allowed.
#[tokio::test]
async fn cors_is_off_by_default_and_allows_only_configured_origins() {
    let preflight = |app: &TestApp, origin: &str| {
        reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, format!("{}/v1/webhook-logs", app.base_url))
            .header("origin", origin.to_owned())
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let plain = spawn_app().await;
    let resp = preflight(&plain, "http://localhost:3000").await.unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());

    let app = spawn_app_with(|c| c.cors_allow_origins = vec!["http://localhost:3000".into()]).await;
    let resp = preflight(&app, "http://localhost:3000").await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    assert_eq!(resp.headers()["access-control-allow-origin"], "http://localhost:3000");
    assert!(resp.headers()["access-control-allow-headers"].to_str().unwrap().contains("authorization"));
    let resp = preflight(&app, "http://127.0.0.1:9").await.unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    // A real request from the allowed origin carries the header too.
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/webhook-logs", app.base_url))
        .bearer_auth(&app.key)
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], "http://localhost:3000");
}

/// Reads `n` events: each the first attempt of a delivery carrying `blob`
/// whole (FULL) or no payload (BASIC); returns their request IDs, sorted.
async fn large_events(events: &mut Events, n: usize, blob: Option<&str>) -> Vec<String> {
    let mut got = Vec::new();
    for _ in 0..n {
        let e = next(events).await;
        assert_eq!(attempt_number(&e), 1);
        let log = e.log.unwrap();
        match blob {
            Some(blob) => {
                let payload = hookpost::grpc::struct_to_json(log.payload.expect("FULL: the payload")).unwrap();
                assert_eq!(payload["blob"].as_str(), Some(blob), "{}", log.request_id);
            }
            None => assert!(log.payload.is_none(), "BASIC: no payload"),
        }
        got.push(log.request_id);
    }
    got.sort();
    got
}

/// Watchers over large payloads: a read with bodies stops its logs at a
/// byte budget (2 MiB) and the rest come with the next reads, live (the
/// hub's reads) and catching up from a token (the watcher's own): every
/// event once, every FULL payload whole, no BASIC one.
#[tokio::test]
async fn watches_over_large_payloads_get_every_event_once_and_whole() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let org = Uuid::new_v4();
    // A resume token from before the large deliveries.
    let mut events = watch(&app, of_org(org)).await;
    app.dispatch(dispatch_to(&receiver.url(), org)).await.unwrap();
    let token = next(&mut events).await.resume_token;
    drop(events);
    let view = |view: pb::LogView| pb::WatchWebhookLogsRequest { view: view.into(), ..of_org(org) };
    let mut live_basic = watch(&app, view(pb::LogView::Basic)).await;
    let mut live_full = watch(&app, view(pb::LogView::Full)).await;

    let blob = "x".repeat(200 * 1024);
    let mut sent = Vec::new();
    for n in 0..12 {
        let mut req = dispatch_to(&receiver.url(), org);
        let payload = serde_json::json!({ "n": n, "blob": blob });
        req.payload = Some(hookpost::grpc::json_to_struct(payload.as_object().unwrap().clone()));
        sent.push(app.dispatch(req).await.unwrap().request_id);
    }
    for id in &sent {
        app.settled(id, SETTLE).await;
    }
    // 12 logs of 200 KiB: more than one read's budget.
    let full = pb::WatchWebhookLogsRequest { resume_token: token, view: pb::LogView::Full.into(), ..of_org(org) };
    let mut caught_up = watch(&app, full).await;
    sent.sort();
    assert_eq!(large_events(&mut caught_up, sent.len(), Some(&blob)).await, sent, "catching up: each once");
    assert_eq!(large_events(&mut live_full, sent.len(), Some(&blob)).await, sent, "live, FULL: each once");
    assert_eq!(large_events(&mut live_basic, sent.len(), None).await, sent, "live, BASIC: each once");
}

/// FULL watchers joining, one after another, while a BASIC one keeps the hub
/// reading without bodies and webhooks keep arriving: a joiner may receive a
/// batch the hub read before it was counted, and reads that one again from
/// the store. Whichever way, every event a FULL watcher gets has its bodies.
#[tokio::test]
async fn full_watchers_joining_a_hub_that_reads_without_bodies_get_bodies() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let org = Uuid::new_v4();
    let view = |view: pb::LogView| pb::WatchWebhookLogsRequest { view: view.into(), ..of_org(org) };
    let _basic = watch(&app, view(pb::LogView::Basic)).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (client, key, url, stop) = (app.client.clone(), app.key.clone(), receiver.url(), stop.clone());
        senders.spawn(async move {
            while !stop.is_cancelled() {
                client.clone().dispatch(with_key(dispatch_to(&url, org), &key)).await.unwrap();
            }
        });
    }
    for _ in 0..50 {
        let mut full = watch(&app, view(pb::LogView::Full)).await;
        for _ in 0..3 {
            let e = next(&mut full).await;
            assert!(e.log.as_ref().unwrap().payload.is_some(), "FULL: the payload");
            assert!(!e.attempt.as_ref().unwrap().request_body.is_empty(), "FULL: the request body");
        }
    }
    stop.cancel();
    while let Some(sent) = senders.join_next().await {
        sent.unwrap();
    }
}
