//! Redeliver, pause/resume with held deliveries, auto-disable with its
//! operational event, recoveries and the dead-letter view, on both stores.

use std::time::Duration;

use hookpost::auth::KeyKind;
use hookpost::proto::v1 as pb;
use uuid::Uuid;

use crate::helpers::*;

const SETTLE: Duration = Duration::from_secs(20);

async fn create(app: &TestApp, org: Uuid, e: pb::Endpoint) -> String {
    let req = pb::CreateEndpointRequest {
        organization_id: org.to_string(),
        workspace_id: Uuid::new_v4().to_string(),
        endpoint: Some(e),
    };
    app.client.clone().create_endpoint(app.authed(req)).await.unwrap().into_inner().endpoint.unwrap().endpoint_id
}

async fn get_endpoint(app: &TestApp, org: Uuid, id: &str) -> pb::Endpoint {
    let req = pb::GetEndpointRequest { organization_id: org.to_string(), endpoint_id: id.into(), ..Default::default() };
    app.client.clone().get_endpoint(app.authed(req)).await.unwrap().into_inner().endpoint.unwrap()
}

fn to_endpoint(org: Uuid, endpoint_id: &str, n: u32) -> pb::DispatchRequest {
    pb::DispatchRequest {
        organization_id: org.to_string(),
        webhook_type: "call.started".into(),
        endpoint_id: endpoint_id.into(),
        payload: Some(hookpost::grpc::json_to_struct(serde_json::json!({ "n": n }).as_object().unwrap().clone())),
        ..Default::default()
    }
}

async fn status(app: &TestApp, request_id: &str) -> pb::ExecutionStatus {
    app.details(request_id).await.unwrap().log.unwrap().execution_status()
}

async fn redeliver(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(400)]);
    let org = Uuid::new_v4();
    let sent = app.dispatch(dispatch_to(&receiver.url(), org)).await.unwrap();
    let d = app.settled(&sent.request_id, SETTLE).await;
    assert_eq!(d.log.unwrap().execution_status(), pb::ExecutionStatus::Failed);

    // A failed delivery goes again, same webhook-id, attempt 2, manual.
    let req = pb::RedeliverWebhookRequest { request_id: sent.request_id.clone(), ..Default::default() };
    let again = app.client.clone().redeliver_webhook(app.authed(req.clone())).await.unwrap().into_inner();
    assert_eq!(again.log.unwrap().request_id, sent.request_id);
    let got = receiver.wait_for(2, SETTLE).await;
    assert_eq!(got[1].headers["webhook-id"], got[0].headers["webhook-id"]);
    assert_eq!(got[1].headers["x-hookpost-attempt"], "2");
    let d = app.settled(&sent.request_id, SETTLE).await;
    assert_eq!(d.log.as_ref().unwrap().execution_status(), pb::ExecutionStatus::Succeeded);
    let numbers: Vec<(u32, bool)> = d.attempts.iter().map(|a| (a.attempt_number, a.manual)).collect();
    assert_eq!(numbers, [(2, true), (1, false)]);

    // A succeeded one too, over REST.
    let url = format!("{}/v1/webhook-logs/{}:redeliver", app.base_url, sent.request_id);
    let resp = reqwest::Client::new().post(&url).bearer_auth(&app.key).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["log"]["requestId"], sent.request_id.as_str(), "{body}");
    receiver.wait_for(3, SETTLE).await;
    let d = app.settled(&sent.request_id, SETTLE).await;
    assert_eq!(d.attempts.len(), 3);
    assert!(d.attempts[0].manual);

    // Another organization's key: exactly like a missing request.
    let stranger = app.create_key(KeyKind::Organization(Uuid::new_v4())).await;
    let err = app.client.clone().redeliver_webhook(with_key(req.clone(), &stranger)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let missing = pb::RedeliverWebhookRequest { request_id: Uuid::new_v4().to_string(), ..Default::default() };
    let err2 = app.client.clone().redeliver_webhook(app.authed(missing)).await.unwrap_err();
    assert_eq!(err2.code(), tonic::Code::NotFound);
    let resp = reqwest::Client::new().post(&url).bearer_auth(&stranger).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let bad = pb::RedeliverWebhookRequest { request_id: "nope".into(), ..Default::default() };
    let err = app.client.clone().redeliver_webhook(app.authed(bad)).await.unwrap_err();
    assert_eq!(violated_fields(&err), ["request_id"]);
}

#[tokio::test]
async fn redeliver_continues_the_numbering_with_manual_attempts_on_postgres() {
    redeliver(Backend::Postgres).await;
}

#[tokio::test]
async fn redeliver_continues_the_numbering_with_manual_attempts_on_sqlite() {
    redeliver(Backend::Sqlite).await;
}

async fn pause_holds_and_resume_releases_in_order(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    let org = Uuid::new_v4();
    let mut e = endpoint(&receiver.url(), &[]);
    // One at a time, so the receiver sees the order they were released in.
    e.policy = Some(pb::DeliveryPolicy { max_in_flight: Some(1), ..Default::default() });
    let id = create(&app, org, e).await;
    let pause =
        pb::PauseEndpointRequest { organization_id: org.to_string(), endpoint_id: id.clone(), ..Default::default() };
    let paused = app.client.clone().pause_endpoint(app.authed(pause.clone())).await.unwrap().into_inner();
    assert!(paused.endpoint.unwrap().paused);

    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(app.dispatch(to_endpoint(org, &id, n)).await.unwrap().request_id);
    }
    for r in &ids {
        assert_eq!(status(&app, r).await, pb::ExecutionStatus::Held);
    }
    // A held delivery is not settled: no redelivery of it.
    let req = pb::RedeliverWebhookRequest { request_id: ids[0].clone(), ..Default::default() };
    let err = app.client.clone().redeliver_webhook(app.authed(req)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    // Another organization cannot pause or resume it.
    let stranger = app.create_key(KeyKind::Organization(Uuid::new_v4())).await;
    let err = app.client.clone().pause_endpoint(with_key(pause, &stranger)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(receiver.received().is_empty());

    // Resume over REST: all three flow, oldest first.
    let url =
        format!("{}/organizations/{org}/workspaces/{}/webhook-subscriptions/{id}:resume", app.base_url, Uuid::new_v4());
    let resp = reqwest::Client::new().post(&url).bearer_auth(&app.key).send().await.unwrap();
    // The workspace in the path is not the endpoint's: like a missing one.
    assert_eq!(resp.status(), 404);
    let url = format!("{}/organizations/{org}/workspaces/-/webhook-subscriptions/{id}:resume", app.base_url);
    let resp = reqwest::Client::new().post(&url).bearer_auth(&app.key).send().await.unwrap();
    assert_eq!(resp.status(), 400, "a workspace that is not a UUID is named");
    let resume =
        pb::ResumeEndpointRequest { organization_id: org.to_string(), endpoint_id: id.clone(), ..Default::default() };
    let resumed = app.client.clone().resume_endpoint(app.authed(resume)).await.unwrap().into_inner();
    assert_eq!(resumed.released, 3);
    let got = receiver.wait_for(3, SETTLE).await;
    let order: Vec<String> = got.iter().map(|r| r.body.clone()).collect();
    assert_eq!(order, [r#"{"n":0}"#, r#"{"n":1}"#, r#"{"n":2}"#]);
    for r in &ids {
        assert_eq!(app.settled(r, SETTLE).await.log.unwrap().execution_status(), pb::ExecutionStatus::Succeeded);
    }
}

#[tokio::test]
async fn pause_holds_and_resume_releases_in_order_on_postgres() {
    pause_holds_and_resume_releases_in_order(Backend::Postgres).await;
}

#[tokio::test]
async fn pause_holds_and_resume_releases_in_order_on_sqlite() {
    pause_holds_and_resume_releases_in_order(Backend::Sqlite).await;
}

async fn gone_disables_and_announces(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let (gone, ops, catch_all) = (Receiver::start().await, Receiver::start().await, Receiver::start().await);
    let star = Receiver::start().await;
    gone.script([Reply::status(410)]);
    let org = Uuid::new_v4();
    let a = create(&app, org, endpoint(&gone.url(), &["call.*"])).await;
    create(&app, org, endpoint(&ops.url(), &["hookpost.endpoint.disabled"])).await;
    create(&app, org, endpoint(&catch_all.url(), &[])).await;
    create(&app, org, endpoint(&star.url(), &["*"])).await;

    let first = app.dispatch(to_endpoint(org, &a, 0)).await.unwrap().request_id;
    let d = app.settled(&first, SETTLE).await;
    assert_eq!(d.log.unwrap().execution_status(), pb::ExecutionStatus::Failed, "410 is not retried");
    let notice = ops.wait_for(1, SETTLE).await;
    let body: serde_json::Value = serde_json::from_str(&notice[0].body).unwrap();
    assert_eq!(body["type"], "hookpost.endpoint.disabled");
    assert_eq!(body["endpointId"], a.as_str());
    assert!(body["reason"].as_str().unwrap().contains("410"), "{body}");
    let disabled = get_endpoint(&app, org, &a).await;
    assert!(disabled.disabled && disabled.disabled_reason.contains("410"), "{disabled:?}");
    assert!(disabled.disable_time.is_some());

    // While disabled, new deliveries are held; re-enabling sends them.
    let second = app.dispatch(to_endpoint(org, &a, 1)).await.unwrap().request_id;
    assert_eq!(status(&app, &second).await, pb::ExecutionStatus::Held);
    let update = pb::UpdateEndpointRequest {
        organization_id: org.to_string(),
        endpoint_id: a.clone(),
        endpoint: Some(pb::Endpoint { disabled: false, ..Default::default() }),
        update_mask: Some(pbjson_types::FieldMask { paths: vec!["disabled".into()] }),
        ..Default::default()
    };
    let enabled = app.client.clone().update_endpoint(app.authed(update)).await.unwrap().into_inner();
    let enabled = enabled.endpoint.unwrap();
    assert!(!enabled.disabled && enabled.disabled_reason.is_empty());
    let got = gone.wait_for(2, SETTLE).await;
    assert_eq!(got[1].body, r#"{"n":1}"#);
    assert_eq!(app.settled(&second, SETTLE).await.log.unwrap().execution_status(), pb::ExecutionStatus::Succeeded);
    // Catch-all endpoints (no event types, or "*") never get hookpost's own events.
    assert!(catch_all.received().is_empty());
    assert!(star.received().is_empty());
}

#[tokio::test]
async fn a_410_disables_the_endpoint_and_announces_it_on_postgres() {
    gone_disables_and_announces(Backend::Postgres).await;
}

#[tokio::test]
async fn a_410_disables_the_endpoint_and_announces_it_on_sqlite() {
    gone_disables_and_announces(Backend::Sqlite).await;
}

async fn failing_for_the_window_disables(backend: Backend) {
    // A window of zero: the run of failures decides (two in a row).
    let app = spawn_app_on_backend(backend, |c| {
        c.delivery.disable_rule = hookpost::store::DisableRule { window: chrono::TimeDelta::zero(), min_failures: 2 };
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(400), Reply::status(400)]);
    let org = Uuid::new_v4();
    let a = create(&app, org, endpoint(&receiver.url(), &[])).await;
    let one = app.dispatch(to_endpoint(org, &a, 0)).await.unwrap().request_id;
    app.settled(&one, SETTLE).await;
    assert!(!get_endpoint(&app, org, &a).await.disabled, "one failure is not a run");
    let two = app.dispatch(to_endpoint(org, &a, 1)).await.unwrap().request_id;
    app.settled(&two, SETTLE).await;
    let e = eventually(SETTLE, "the endpoint is disabled", || async {
        let e = get_endpoint(&app, org, &a).await;
        e.disabled.then_some(e)
    })
    .await;
    assert!(e.disabled_reason.contains("2 attempts in a row"), "{e:?}");
}

#[tokio::test]
async fn failures_for_the_whole_window_disable_the_endpoint_on_postgres() {
    failing_for_the_window_disables(Backend::Postgres).await;
}

#[tokio::test]
async fn failures_for_the_whole_window_disable_the_endpoint_on_sqlite() {
    failing_for_the_window_disables(Backend::Sqlite).await;
}

async fn recover_a_window(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    receiver.script((0..5).map(|_| Reply::status(400)));
    let org = Uuid::new_v4();
    let from = chrono::Utc::now() - chrono::TimeDelta::minutes(1);
    let mut ids = Vec::new();
    for _ in 0..5 {
        let id = app.dispatch(dispatch_to(&receiver.url(), org)).await.unwrap().request_id;
        app.settled(&id, SETTLE).await;
        ids.push(id);
    }
    let to = chrono::Utc::now() + chrono::TimeDelta::minutes(1);

    // The dead letters: failed, by category.
    let dead = pb::ListWebhookLogsRequest {
        organization_id: org.to_string(),
        execution_status: pb::ExecutionStatus::Failed.into(),
        error_category: "http_4xx".into(),
        page_size: 100,
        ..Default::default()
    };
    let listed = app.list(dead.clone()).await.unwrap();
    assert_eq!(listed.logs.len(), 5);
    let none = app.list(pb::ListWebhookLogsRequest { error_category: "timeout".into(), ..dead.clone() }).await;
    assert!(none.unwrap().logs.is_empty());
    let (status, body) =
        app.get_json(&format!("/v1/webhook-logs?organizationId={org}&errorCategory=http_4xx&pageSize=100")).await;
    assert_eq!((status, body["logs"].as_array().map(Vec::len)), (200, Some(5)), "{body}");

    let window = pb::RecoverWebhooksRequest {
        organization_id: org.to_string(),
        start_time: Some(from.into()),
        end_time: Some(to.into()),
        dry_run: true,
        ..Default::default()
    };
    let mut client = app.client.clone();
    let dry = client.recover_webhooks(app.authed(window.clone())).await.unwrap().into_inner();
    assert_eq!((dry.matched, dry.operation), (5, None));
    let other = pb::RecoverWebhooksRequest { error_category: "timeout".into(), ..window.clone() };
    assert_eq!(client.recover_webhooks(app.authed(other)).await.unwrap().into_inner().matched, 0);

    // A real run: an operation that finishes with all five sent again.
    let real = pb::RecoverWebhooksRequest { dry_run: false, ..window.clone() };
    let op = client.recover_webhooks(app.authed(real.clone())).await.unwrap().into_inner().operation.unwrap();
    let get = pb::GetOperationRequest { organization_id: org.to_string(), operation_id: op.operation_id.clone() };
    let done = eventually(SETTLE, "the recovery finishes", || {
        let (mut client, get) = (client.clone(), get.clone());
        let req = app.authed(get);
        async move {
            let op = client.get_operation(req).await.unwrap().into_inner().operation.unwrap();
            op.done.then_some(op)
        }
    })
    .await;
    assert_eq!((done.matched, done.recovered), (5, 5));
    receiver.wait_for(10, SETTLE).await;
    for id in &ids {
        let d = app.settled(id, SETTLE).await;
        assert_eq!(d.log.unwrap().execution_status(), pb::ExecutionStatus::Succeeded);
        assert!(d.attempts[0].manual);
    }
    // The same window again queues nothing twice.
    let again = client.recover_webhooks(app.authed(real)).await.unwrap().into_inner().operation.unwrap();
    let get = pb::GetOperationRequest { organization_id: org.to_string(), operation_id: again.operation_id };
    eventually(SETTLE, "the second run finishes", || {
        let (mut client, get) = (client.clone(), get.clone());
        let req = app.authed(get);
        async move { client.get_operation(req).await.unwrap().into_inner().operation.unwrap().done.then_some(()) }
    })
    .await;
    assert_eq!(receiver.received().len(), 10);

    // Empty or inverted windows are refused, naming the field.
    let inverted =
        pb::RecoverWebhooksRequest { start_time: Some(to.into()), end_time: Some(from.into()), ..window.clone() };
    let err = client.recover_webhooks(app.authed(inverted)).await.unwrap_err();
    assert_eq!(violated_fields(&err), ["end_time"]);
    let open = pb::RecoverWebhooksRequest { start_time: None, ..window.clone() };
    let err = client.recover_webhooks(app.authed(open)).await.unwrap_err();
    assert_eq!(violated_fields(&err), ["start_time"]);
    // Another organization's operation answers like a missing one.
    let stranger = app.create_key(KeyKind::Organization(Uuid::new_v4())).await;
    let err = client.get_operation(with_key(get.clone(), &stranger)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let (status, _) =
        app.get_json_as(&format!("/organizations/{org}/operations/{}", get.operation_id), Some(&stranger)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn recover_a_window_once_with_a_dry_run_first_on_postgres() {
    recover_a_window(Backend::Postgres).await;
}

#[tokio::test]
async fn recover_a_window_once_with_a_dry_run_first_on_sqlite() {
    recover_a_window(Backend::Sqlite).await;
}

async fn expiry(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    receiver.script((0..50).map(|_| Reply::status(500)));
    let org = Uuid::new_v4();

    // A time to live on the request: retries stop at the deadline.
    let mut req = dispatch_to(&receiver.url(), org);
    req.max_retries = Some(50);
    req.expiration = Some(pb::dispatch_request::Expiration::Ttl(pbjson_types::Duration { seconds: 2, nanos: 0 }));
    let sent = app.dispatch(req).await.unwrap();
    let d = app.settled(&sent.request_id, Duration::from_secs(30)).await;
    let log = d.log.clone().unwrap();
    assert_eq!(log.execution_status(), pb::ExecutionStatus::Failed);
    assert_eq!(log.error_category.as_deref(), Some("expired"), "{log:?}");
    assert!(log.expire_time.is_some());
    // The expired attempt sent nothing; every other attempt was a POST.
    assert_eq!(d.attempts[0].http_status_code, None);
    assert_eq!(receiver.received().len(), d.attempts.len() - 1);
    assert!(d.attempts.len() < 51);

    // A policy's ttl applies to deliveries without their own: held past it,
    // the delivery fails as expired when released, unsent.
    let quiet = Receiver::start().await;
    let mut e = endpoint(&quiet.url(), &[]);
    e.policy =
        Some(pb::DeliveryPolicy { ttl: Some(pbjson_types::Duration { seconds: 1, nanos: 0 }), ..Default::default() });
    let id = create(&app, org, e).await;
    let pause =
        pb::PauseEndpointRequest { organization_id: org.to_string(), endpoint_id: id.clone(), ..Default::default() };
    app.client.clone().pause_endpoint(app.authed(pause)).await.unwrap();
    let held = app.dispatch(to_endpoint(org, &id, 0)).await.unwrap().request_id;
    let log = app.details(&held).await.unwrap().log.unwrap();
    let deadline: chrono::DateTime<chrono::Utc> = log.expire_time.unwrap().try_into().unwrap();
    eventually(SETTLE, "the deadline passes", || async { (chrono::Utc::now() > deadline).then_some(()) }).await;
    let resume = pb::ResumeEndpointRequest { organization_id: org.to_string(), endpoint_id: id, ..Default::default() };
    app.client.clone().resume_endpoint(app.authed(resume)).await.unwrap();
    let d = app.settled(&held, SETTLE).await;
    assert_eq!(d.log.unwrap().error_category.as_deref(), Some("expired"));
    assert!(quiet.received().is_empty());
    // Sent again by hand, it is sent: a redelivery lifts the deadline.
    let again = pb::RedeliverWebhookRequest { request_id: held.clone(), ..Default::default() };
    app.client.clone().redeliver_webhook(app.authed(again)).await.unwrap();
    quiet.wait_for(1, SETTLE).await;

    // Deadlines out of bounds are refused, naming the field.
    let mut bad = dispatch_to(&receiver.url(), org);
    bad.expiration = Some(pb::dispatch_request::Expiration::Ttl(pbjson_types::Duration { seconds: 0, nanos: 0 }));
    assert_eq!(violated_fields(&app.dispatch(bad.clone()).await.unwrap_err()), ["ttl"]);
    let past = chrono::Utc::now() - chrono::TimeDelta::minutes(1);
    bad.expiration = Some(pb::dispatch_request::Expiration::ExpireTime(past.into()));
    assert_eq!(violated_fields(&app.dispatch(bad).await.unwrap_err()), ["expire_time"]);
}

#[tokio::test]
async fn a_delivery_past_its_deadline_fails_as_expired_on_postgres() {
    expiry(Backend::Postgres).await;
}

#[tokio::test]
async fn a_delivery_past_its_deadline_fails_as_expired_on_sqlite() {
    expiry(Backend::Sqlite).await;
}

/// A delivery held for an endpoint that is active again without a release
/// (a race between holding and resuming, simulated by flipping the flag in
/// the database) is released by the periodic sweep.
#[tokio::test]
async fn a_held_delivery_of_an_active_endpoint_is_released_by_the_sweep() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let org = Uuid::new_v4();
    let id = create(&app, org, endpoint(&receiver.url(), &[])).await;
    let pause =
        pb::PauseEndpointRequest { organization_id: org.to_string(), endpoint_id: id.clone(), ..Default::default() };
    app.client.clone().pause_endpoint(app.authed(pause)).await.unwrap();
    let held = app.dispatch(to_endpoint(org, &id, 0)).await.unwrap().request_id;
    assert_eq!(status(&app, &held).await, pb::ExecutionStatus::Held);
    sqlx::query("UPDATE endpoints SET paused = false WHERE endpoint_id = $1::uuid")
        .bind(&id)
        .execute(app.pg())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "the sweep releases it and it is delivered", || async {
        (status(&app, &held).await == pb::ExecutionStatus::Succeeded).then_some(())
    })
    .await;
    assert_eq!(receiver.received().len(), 1);
}
