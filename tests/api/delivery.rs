use std::time::Duration;

use hookpost::proto::v1 as pb;
use uuid::Uuid;

use crate::helpers::*;

const SETTLE: Duration = Duration::from_secs(20);

fn statuses(d: &pb::GetLogDetailsResponse) -> Vec<Option<i32>> {
    d.attempts.iter().map(|a| a.http_status_code).collect()
}

async fn the_webhook_is_posted_as_stored_with_identifying_headers(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    let res = app.dispatch(dispatch_to(&receiver.url(), Uuid::new_v4())).await.unwrap();
    let got = receiver.wait_for(1, SETTLE).await;
    let req = &got[0];
    assert_eq!(req.path, "/hook");
    assert_eq!(req.body, r#"{"assistant_id":123,"event":"call_started"}"#);
    assert_eq!(req.headers["content-type"], "application/json");
    assert!(req.headers["user-agent"].to_str().unwrap().starts_with("hookpost/"));
    assert_eq!(req.headers["webhook-id"].to_str().unwrap(), res.request_id);
    assert_eq!(req.headers["x-hookpost-event"], "call_started");
    assert_eq!(req.headers["x-hookpost-attempt"], "1");

    let d = app.settled(&res.request_id, SETTLE).await;
    let log = d.log.clone().unwrap();
    assert_eq!(log.execution_status(), pb::ExecutionStatus::Succeeded);
    assert_eq!(log.attempt_count, 1);
    assert_eq!(log.http_status_code, Some(200));
    assert_eq!(d.attempts.len(), 1);
    assert_eq!(d.attempts[0].request_body, req.body);
    assert_eq!(d.attempts[0].response_body, r#"{"received": true}"#);
    assert_eq!(d.attempts[0].attempt_number, 1);
}

async fn two_500s_then_a_200_make_three_attempts_and_succeed(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(500), Reply::status(500).body("still down"), Reply::ok()]);
    let res = app.dispatch(dispatch_to(&receiver.url(), Uuid::new_v4())).await.unwrap();
    let d = app.settled(&res.request_id, SETTLE).await;
    let log = d.log.clone().unwrap();
    assert_eq!(log.execution_status(), pb::ExecutionStatus::Succeeded);
    assert_eq!(log.attempt_count, 3);
    assert_eq!(log.http_status_code, Some(200));
    // Newest first.
    assert_eq!(statuses(&d), [Some(200), Some(500), Some(500)]);
    assert_eq!(d.attempts.iter().map(|a| a.attempt_number).collect::<Vec<_>>(), [3, 2, 1]);
    assert_eq!(d.attempts[1].error_category.as_deref(), Some("http_5xx"));
    assert_eq!(d.attempts[1].response_body, "still down");
    assert_eq!(d.attempts[1].execution_status(), pb::ExecutionStatus::Failed);
    let attempts: Vec<_> = receiver.received().iter().map(|r| r.headers["x-hookpost-attempt"].clone()).collect();
    assert_eq!(attempts, ["1", "2", "3"]);
}

async fn a_400_fails_at_once_without_retry(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(400).body("bad event")]);
    let res = app.dispatch(dispatch_to(&receiver.url(), Uuid::new_v4())).await.unwrap();
    let d = app.settled(&res.request_id, SETTLE).await;
    let log = d.log.clone().unwrap();
    assert_eq!(log.execution_status(), pb::ExecutionStatus::Failed);
    assert_eq!(log.attempt_count, 1);
    assert_eq!(statuses(&d), [Some(400)]);
    assert_eq!(d.attempts[0].error_category.as_deref(), Some("http_4xx"));
    assert_eq!(receiver.received().len(), 1);
}

async fn retries_stop_after_max_retries_and_the_log_agrees_with_the_attempts(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    receiver.script((0..10).map(|_| Reply::status(503)));
    let req = pb::DispatchRequest { max_retries: Some(1), ..dispatch_to(&receiver.url(), Uuid::new_v4()) };
    let res = app.dispatch(req).await.unwrap();
    let d = app.settled(&res.request_id, SETTLE).await;
    let log = d.log.clone().unwrap();
    assert_eq!(log.execution_status(), pb::ExecutionStatus::Failed);
    assert_eq!(log.attempt_count, 2);
    assert_eq!(log.max_retries, 1);
    assert_eq!(statuses(&d), [Some(503), Some(503)]);
    assert!(log.next_attempt_at.is_none());
}

async fn a_receiver_hanging_past_the_timeout_is_a_timeout_and_is_retried(backend: Backend) {
    let app = spawn_app_on_backend(backend, |c| c.delivery.attempt_timeout = Duration::from_millis(500)).await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::ok().after(Duration::from_secs(3))]);
    let res = app.dispatch(dispatch_to(&receiver.url(), Uuid::new_v4())).await.unwrap();
    let d = app.settled(&res.request_id, SETTLE).await;
    assert_eq!(d.log.unwrap().execution_status(), pb::ExecutionStatus::Succeeded);
    assert_eq!(d.attempts.len(), 2);
    let hung = &d.attempts[1];
    assert_eq!(hung.error_category.as_deref(), Some("timeout"));
    assert_eq!(hung.http_status_code, None);
    assert!(hung.error_message.as_deref().unwrap().contains("timed out"), "{:?}", hung.error_message);
    assert!(hung.response_time_ms >= 500);
}

async fn a_429_with_retry_after_delays_the_next_attempt(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(429).header("retry-after", "2")]);
    let res = app.dispatch(dispatch_to(&receiver.url(), Uuid::new_v4())).await.unwrap();
    let d = app.settled(&res.request_id, SETTLE).await;
    assert_eq!(statuses(&d), [Some(200), Some(429)]);
    let got = receiver.received();
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}, before Retry-After");
}

async fn a_large_response_body_is_kept_to_10_kib_and_flagged(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::ok().body("é".repeat(25 * 1024))]); // 50 KiB of 2-byte characters
    let res = app.dispatch(dispatch_to(&receiver.url(), Uuid::new_v4())).await.unwrap();
    let d = app.settled(&res.request_id, SETTLE).await;
    let a = &d.attempts[0];
    assert!(a.response_truncated);
    assert_eq!(a.response_body.len(), 10 * 1024);
    assert_eq!(d.log.unwrap().execution_status(), pb::ExecutionStatus::Succeeded);

    let small = app.dispatch(dispatch_to(&receiver.url(), Uuid::new_v4())).await.unwrap();
    assert!(!app.settled(&small.request_id, SETTLE).await.attempts[0].response_truncated);
}

async fn a_redirect_fails_and_is_not_followed(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    let elsewhere = format!("http://{}/elsewhere", receiver.addr);
    receiver.script([Reply::status(302).header("location", elsewhere)]);
    let res = app.dispatch(dispatch_to(&receiver.url(), Uuid::new_v4())).await.unwrap();
    let d = app.settled(&res.request_id, SETTLE).await;
    assert_eq!(d.log.as_ref().unwrap().execution_status(), pb::ExecutionStatus::Failed);
    assert_eq!(statuses(&d), [Some(302)]);
    assert_eq!(d.attempts[0].error_category.as_deref(), Some("redirect"));
    assert!(d.attempts[0].error_message.as_deref().unwrap().contains("/elsewhere"));
    assert!(receiver.received().iter().all(|r| r.path == "/hook"));
}

async fn a_redirect_with_a_300_kb_location_stores_a_message_of_at_most_1_kib(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    let far = format!("http://{}/{}", receiver.addr, "x".repeat(300 * 1024));
    receiver.script([Reply::status(302).header("location", far)]);
    let res = app.dispatch(dispatch_to(&receiver.url(), Uuid::new_v4())).await.unwrap();
    let d = app.settled(&res.request_id, SETTLE).await;
    let message = d.attempts[0].error_message.clone().unwrap();
    assert!(message.len() <= 1024, "a {}-byte message was stored", message.len());
    assert!(message.starts_with("receiver answered HTTP 302"), "{message}");
    assert!(message.ends_with("(redirects are not followed)"), "{message}");
    assert_eq!(d.attempts[0].error_category.as_deref(), Some("redirect"));
}

/// A receiver on 127.0.0.1 that answers every connection with `response`
/// verbatim, then closes it.
async fn raw_receiver(response: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Read the whole request (headers, then the announced body).
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{addr}/hook")
}

async fn a_2xx_whose_body_breaks_off_is_delivered_without_an_error_message(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    // 100 bytes announced, 5 sent, then the connection closes.
    let url = raw_receiver("HTTP/1.1 200 OK\r\ncontent-length: 100\r\nconnection: close\r\n\r\nshort").await;
    let res = app.dispatch(dispatch_to(&url, Uuid::new_v4())).await.unwrap();
    let d = app.settled(&res.request_id, SETTLE).await;
    // The status is the outcome: the receiver took the webhook.
    assert_eq!(d.log.as_ref().unwrap().execution_status(), pb::ExecutionStatus::Succeeded);
    assert_eq!(d.attempts.len(), 1, "a delivered webhook is not sent again");
    let a = &d.attempts[0];
    assert_eq!(a.execution_status(), pb::ExecutionStatus::Succeeded);
    assert_eq!(a.error_message, None, "a success carries no error message");
    assert!(a.response_truncated, "the cut body is flagged");
}

async fn a_receiver_answering_500_always_sees_four_attempts_by_default(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    receiver.script((0..10).map(|_| Reply::status(500)));
    // No max_retries on the Dispatch: the server's default of 3 applies.
    let res = app.dispatch(dispatch_to(&receiver.url(), Uuid::new_v4())).await.unwrap();
    let d = app.settled(&res.request_id, SETTLE).await;
    let log = d.log.clone().unwrap();
    assert_eq!(log.execution_status(), pb::ExecutionStatus::Failed);
    assert_eq!(log.attempt_count, 4);
    assert_eq!(log.max_retries, 3);
    assert_eq!(statuses(&d), [Some(500); 4]);
    assert_eq!(receiver.received().len(), 4, "the receiver saw exactly four attempts");
}

async fn a_retry_after_beyond_its_maximum_is_clamped(backend: Backend) {
    let app = spawn_app_on_backend(backend, |c| c.delivery.retry.retry_after_max = Duration::from_secs(60)).await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(429).header("retry-after", "999999")]);
    let res = app.dispatch(dispatch_to(&receiver.url(), Uuid::new_v4())).await.unwrap();
    let log = eventually(SETTLE, "the 429 to be recorded", || async {
        let log = app.details(&res.request_id).await.ok()?.log?;
        (log.attempt_count == 1).then_some(log)
    })
    .await;
    assert_eq!(log.execution_status(), pb::ExecutionStatus::Pending);
    let at = |t: Option<pbjson_types::Timestamp>| {
        let t = t.unwrap();
        t.seconds as f64 + f64::from(t.nanos) / 1e9
    };
    // Both stamped by the store when the attempt was recorded.
    let delay = at(log.next_attempt_at) - at(log.updated_at);
    assert!((59.9..=60.5).contains(&delay), "next attempt {delay} s after the 429, not the 60 s maximum");
}

async fn a_refused_connection_is_a_connect_failure_and_is_retried(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    // A loopback port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let req = pb::DispatchRequest {
        max_retries: Some(1),
        ..dispatch_to(&format!("http://127.0.0.1:{port}/hook"), Uuid::new_v4())
    };
    let res = app.dispatch(req).await.unwrap();
    let d = app.settled(&res.request_id, SETTLE).await;
    assert_eq!(d.attempts.len(), 2);
    assert!(d.attempts.iter().all(|a| a.error_category.as_deref() == Some("connect")));
    assert_eq!(d.log.as_ref().unwrap().execution_status(), pb::ExecutionStatus::Failed);
}

async fn shutdown_lets_the_in_flight_attempt_finish_and_records_it(backend: Backend) {
    let mut app = spawn_app_on_backend(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::ok().after(Duration::from_millis(800))]);
    let res = app.dispatch(dispatch_to(&receiver.url(), Uuid::new_v4())).await.unwrap();
    receiver.wait_for(1, SETTLE).await;
    app.stop().await;
    let store = open_store(&app.database_url).await;
    let (log, attempts) = store
        .log_details(res.request_id.parse().unwrap(), None, hookpost::store::ReadFrom::Primary)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((log.status, attempts.len()), (hookpost::domain::ExecutionStatus::Succeeded, 1));
}

#[tokio::test]
async fn a_database_outage_is_unavailable_and_nothing_in_flight_is_lost() {
    let database_url = fresh_database().await;
    let proxy = DbProxy::start(&database_url).await;
    let mut config = test_config(&proxy.url(&database_url));
    config.db_acquire_timeout = Duration::from_millis(500);
    let app = spawn_app_on(config, &database_url).await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::ok().after(Duration::from_millis(700))]);
    let org = Uuid::new_v4();
    let in_flight = app.dispatch(dispatch_to(&receiver.url(), org)).await.unwrap();
    receiver.wait_for(1, SETTLE).await;

    proxy.cut();
    // The attempt completes while the database is away; a new Dispatch is refused.
    let err = app.dispatch(dispatch_to(&receiver.url(), org)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let err = app.details(&in_flight.request_id).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);

    proxy.restore();
    let d = app.settled(&in_flight.request_id, SETTLE).await;
    assert_eq!(d.log.unwrap().execution_status(), pb::ExecutionStatus::Succeeded);
    assert_eq!(d.attempts.len(), 1);
    // And work flows again.
    let after = app.dispatch(dispatch_to(&receiver.url(), org)).await.unwrap();
    assert_eq!(app.settled(&after.request_id, SETTLE).await.attempts.len(), 1);
}

async fn a_hanging_receiver_does_not_starve_other_hosts(backend: Backend) {
    let app = spawn_app_on_backend(backend, |c| {
        c.delivery.concurrency = 4;
        c.delivery.per_host_concurrency = 2;
        c.delivery.attempt_timeout = Duration::from_secs(10);
    })
    .await;
    let slow = Receiver::start().await;
    slow.script((0..8).map(|_| Reply::ok().after(Duration::from_secs(4))));
    let fast = Receiver::start().await;
    let org = Uuid::new_v4();
    for _ in 0..8 {
        app.dispatch(dispatch_to(&slow.url(), org)).await.unwrap();
    }
    slow.wait_for(2, SETTLE).await;
    // Two slots are held by the slow host; its other six wait their turn while
    // the fast receiver gets the rest of the capacity.
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(app.dispatch(dispatch_to(&fast.url(), org)).await.unwrap().request_id);
    }
    fast.wait_for(10, Duration::from_secs(3)).await;
    assert_eq!(slow.received().len(), 2, "the slow host never gets more than its cap");
}

async fn a_binary_response_body_is_recorded(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::ok().body("\u{0}PNG\u{0}")]);
    let res = app.dispatch(dispatch_to(&receiver.url(), Uuid::new_v4())).await.unwrap();
    let d = app.settled(&res.request_id, SETTLE).await;
    assert_eq!(d.log.unwrap().execution_status(), pb::ExecutionStatus::Succeeded);
    assert_eq!(d.attempts[0].response_body, "\u{FFFD}PNG\u{FFFD}");
}

on_both_stores!(
    a_redirect_with_a_300_kb_location_stores_a_message_of_at_most_1_kib,
    a_2xx_whose_body_breaks_off_is_delivered_without_an_error_message,
    a_receiver_answering_500_always_sees_four_attempts_by_default,
    a_retry_after_beyond_its_maximum_is_clamped,
    a_binary_response_body_is_recorded,
    the_webhook_is_posted_as_stored_with_identifying_headers,
    two_500s_then_a_200_make_three_attempts_and_succeed,
    a_400_fails_at_once_without_retry,
    retries_stop_after_max_retries_and_the_log_agrees_with_the_attempts,
    a_receiver_hanging_past_the_timeout_is_a_timeout_and_is_retried,
    a_429_with_retry_after_delays_the_next_attempt,
    a_large_response_body_is_kept_to_10_kib_and_flagged,
    a_redirect_fails_and_is_not_followed,
    a_refused_connection_is_a_connect_failure_and_is_retried,
    shutdown_lets_the_in_flight_attempt_finish_and_records_it,
    a_hanging_receiver_does_not_starve_other_hosts
);

/// A replica that delivers hears of another replica's Dispatch at once (a
/// NOTIFY after the commit), not at its next poll: here the poll is two
/// minutes away, and the webhook arrives within the test's deadline.
#[tokio::test]
async fn a_replica_hears_of_another_replicas_dispatch_without_waiting_for_its_poll() {
    let db = fresh_database().await;
    // One secret key for both, as replicas have: the one signs what the
    // other stored.
    let key = hookpost::config::SecretKeySource::Base64(hookpost::secrets::SecretKey::generate().expose_base64());
    let mut config = test_config(&db);
    config.delivery.poll_interval = Duration::from_secs(120);
    config.secret_key = key.clone();
    let _delivering = spawn_app_on(config, &db).await;
    let mut config = test_config(&db);
    config.delivery.enabled = false;
    config.secret_key = key;
    let api = spawn_app_on(config, &db).await;
    let receiver = Receiver::start().await;
    // The first may meet the delivering engine's first look at start-up;
    // once it is delivered, that engine waits for a poll or a word.
    let first = api.dispatch(dispatch_to(&receiver.url(), Uuid::new_v4())).await.unwrap();
    api.settled(&first.request_id, SETTLE).await;
    api.dispatch(dispatch_to(&receiver.url(), Uuid::new_v4())).await.unwrap();
    receiver.wait_for(2, Duration::from_secs(20)).await;
}
