//! Tenancy and security: keys, organization isolation, the SSRF guard, input
//! limits and rate limiting.

use std::time::Duration;

use hookpost::auth::KeyKind;
use hookpost::proto::v1 as pb;
use hookpost::store::Store;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

const SETTLE: Duration = Duration::from_secs(20);

struct Tenant {
    org: Uuid,
    ws: Uuid,
    sub: Uuid,
    call: i64,
    key: String,
    request_id: String,
}

impl Tenant {
    fn logs_path(&self, org: Uuid) -> String {
        format!("/organizations/{org}/workspaces/{}/webhook-subscriptions/{}/logs", self.ws, self.sub)
    }
}

async fn tenant(app: &TestApp, receiver: &Receiver, call: i64) -> Tenant {
    let org = Uuid::new_v4();
    let key = app.create_key(KeyKind::Organization(org)).await;
    let (ws, sub) = (Uuid::new_v4(), Uuid::new_v4());
    // An organization key may leave organization_id out.
    let req = pb::DispatchRequest {
        organization_id: String::new(),
        workspace_id: Some(ws.to_string()),
        subscription_id: Some(sub.to_string()),
        call_id: Some(call),
        ..dispatch_to(&receiver.url(), org)
    };
    let res = app.client.clone().dispatch(with_key(req, &key)).await.unwrap().into_inner();
    app.settled(&res.request_id, SETTLE).await;
    Tenant { org, ws, sub, call, key, request_id: res.request_id }
}

fn maybe_key<T>(message: T, key: Option<&str>) -> tonic::Request<T> {
    match key {
        Some(k) => with_key(message, k),
        None => tonic::Request::new(message),
    }
}

fn not_found_text(status: &tonic::Status, id: &str) -> String {
    format!("{:?} {}", status.code(), status.message().replace(id, "ID"))
}

#[tokio::test]
async fn organizations_never_see_each_others_data() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let a = tenant(&app, &receiver, 101).await;
    let b = tenant(&app, &receiver, 202).await;
    let mut client = app.client.clone();

    // gRPC listing: own data only; naming the other organization finds nothing.
    let list = |key: &str, req: pb::ListWebhookLogsRequest| {
        let mut c = app.client.clone();
        let r = with_key(req, key);
        async move { c.list_webhook_logs(r).await.unwrap().into_inner() }
    };
    let own = list(&a.key, pb::ListWebhookLogsRequest::default()).await;
    assert_eq!(own.logs.len(), 1);
    assert_eq!(own.logs[0].request_id, a.request_id);
    for req in [
        pb::ListWebhookLogsRequest { organization_id: b.org.to_string(), ..Default::default() },
        pb::ListWebhookLogsRequest { subscription_id: Some(b.sub.to_string()), ..Default::default() },
        pb::ListWebhookLogsRequest { call_id: Some(b.call), ..Default::default() },
    ] {
        assert!(list(&a.key, req).await.logs.is_empty());
    }
    let nobody =
        list(&a.key, pb::ListWebhookLogsRequest { organization_id: Uuid::new_v4().to_string(), ..Default::default() });
    assert_eq!(
        nobody.await,
        list(&a.key, pb::ListWebhookLogsRequest { organization_id: b.org.to_string(), ..Default::default() }).await
    );

    // gRPC details: another tenant's request is NOT_FOUND, exactly as a missing one.
    let details = |id: &str| pb::GetLogDetailsRequest { request_id: id.into(), ..Default::default() };
    let foreign = client.get_log_details(with_key(details(&b.request_id), &a.key)).await.unwrap_err();
    let missing_id = Uuid::new_v4().to_string();
    let missing = client.get_log_details(with_key(details(&missing_id), &a.key)).await.unwrap_err();
    assert_eq!(foreign.code(), tonic::Code::NotFound);
    assert_eq!(not_found_text(&foreign, &b.request_id), not_found_text(&missing, &missing_id));
    assert!(client.get_log_details(with_key(details(&a.request_id), &a.key)).await.is_ok());

    // Dispatch for another organization is refused.
    let err = client.dispatch(with_key(dispatch_to(&receiver.url(), b.org), &a.key)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // REST, per call: the other tenant's call is the documented 404, same body.
    let (s1, foreign) = app.get_json_as(&format!("/api/v1/calls/{}/webhook-logs", b.call), Some(&a.key)).await;
    let (s2, missing) = app.get_json_as("/api/v1/calls/303/webhook-logs", Some(&a.key)).await;
    assert_eq!((s1, s2), (404, 404));
    assert_eq!(
        foreign["detail"].as_str().unwrap().replace("202", "N"),
        missing["detail"].as_str().unwrap().replace("303", "N")
    );
    let (s, own) = app.get_json_as(&format!("/api/v1/calls/{}/webhook-logs", a.call), Some(&a.key)).await;
    assert_eq!((s, own.as_array().unwrap().len()), (200, 1));

    // REST, subscriptions: another organization's path is an empty list.
    let (s, page) = app.get_json_as(&b.logs_path(b.org), Some(&a.key)).await;
    assert_eq!((s, page), (200, json!({"results": []})));
    let (_, nothing) = app.get_json_as(&b.logs_path(Uuid::new_v4()), Some(&a.key)).await;
    assert_eq!(nothing, json!({"results": []}));
    let (s, details) =
        app.get_json_as(&format!("{}/details?requestId={}", b.logs_path(b.org), b.request_id), Some(&a.key)).await;
    assert_eq!((s, details), (200, json!({"results": []})));
    let (_, own) =
        app.get_json_as(&format!("{}/details?requestId={}", a.logs_path(a.org), a.request_id), Some(&a.key)).await;
    assert_eq!(own["results"].as_array().unwrap().len(), 1);

    // REST gateway: 404 bodies identical but for the ID.
    let (s1, foreign) = app.get_json_as(&format!("/v1/webhook-logs/{}", b.request_id), Some(&a.key)).await;
    let (s2, missing) = app.get_json_as(&format!("/v1/webhook-logs/{missing_id}"), Some(&a.key)).await;
    assert_eq!((s1, s2), (404, 404));
    assert_eq!(foreign.to_string().replace(&b.request_id, "ID"), missing.to_string().replace(&missing_id, "ID"));
    let (_, listed) = app.get_json_as("/v1/webhook-logs", Some(&b.key)).await;
    assert_eq!(listed["logs"].as_array().unwrap().len(), 1);
    assert_eq!(listed["logs"][0]["requestId"], b.request_id.as_str());

    // A service key sees both and must name the organization to dispatch.
    assert_eq!(app.list(pb::ListWebhookLogsRequest::default()).await.unwrap().logs.len(), 2);
    let err = app
        .dispatch(pb::DispatchRequest { organization_id: String::new(), ..dispatch_to(&receiver.url(), a.org) })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["organization_id"]);
}

#[tokio::test]
async fn an_organization_key_pages_without_naming_its_organization() {
    let app = spawn_app().await;
    let org = Uuid::new_v4();
    let key = app.create_key(KeyKind::Organization(org)).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let req =
            pb::DispatchRequest { max_retries: Some(0), call_id: Some(7), ..dispatch_to("http://127.0.0.1:9/", org) };
        ids.push(app.client.clone().dispatch(with_key(req, &key)).await.unwrap().into_inner().request_id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let req = pb::ListWebhookLogsRequest { page_size: 1, page_token: token, ..Default::default() };
        let page = app.client.clone().list_webhook_logs(with_key(req, &key)).await.unwrap().into_inner();
        seen.extend(page.logs.into_iter().map(|l| l.request_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    ids.reverse();
    assert_eq!(seen, ids);
    let (status, logs) = app.get_json_as("/api/v1/calls/7/webhook-logs", Some(&key)).await;
    assert_eq!((status, logs.as_array().unwrap().len()), (200, 3));
}

#[tokio::test]
async fn filters_and_metadata_that_the_store_cannot_hold_are_invalid_arguments() {
    let app = spawn_app().await;
    let bad_type = app
        .list(pb::ListWebhookLogsRequest { webhook_type: "call\u{0}ended".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad_type), ["webhook_type"]);
    let ancient = pbjson_types::Timestamp { seconds: -100_000_000_000, nanos: 0 };
    let err =
        app.list(pb::ListWebhookLogsRequest { created_after: Some(ancient), ..Default::default() }).await.unwrap_err();
    assert_eq!(violated_fields(&err), ["created_after"]);
    let meta = Some(hookpost::grpc::json_to_struct(json!({"k": "a\u{0}b"}).as_object().unwrap().clone()));
    let req = pb::DispatchRequest { metadata: meta, ..dispatch_to("http://127.0.0.1:9/", Uuid::new_v4()) };
    assert_eq!(violated_fields(&app.dispatch(req).await.unwrap_err()), ["metadata"]);
    let req =
        pb::DispatchRequest { idempotency_key: "k\u{0}".into(), ..dispatch_to("http://127.0.0.1:9/", Uuid::new_v4()) };
    assert_eq!(violated_fields(&app.dispatch(req).await.unwrap_err()), ["idempotency_key"]);
}

#[tokio::test]
async fn missing_bad_and_revoked_keys_are_unauthenticated_everywhere_but_health_and_reflection() {
    let app = spawn_app().await;
    let org = Uuid::new_v4();
    let revoked = app.create_key(KeyKind::Organization(org)).await;
    let store = hookpost::store::PostgresStore::connect(&app.database_url, 1, Duration::from_secs(5)).await.unwrap();
    assert!(store.revoke_api_key(hookpost::auth::prefix_of(&revoked).unwrap()).await.unwrap());
    // The real key with its last character changed (to one it is not: a key
    // that happened to end in "x" made this forgery the real key, 1 run in 62).
    let last = if app.key.ends_with('x') { 'y' } else { 'x' };
    let forged = format!("{}{last}", &app.key[..app.key.len() - 1]);
    let keys: [Option<&str>; 4] = [None, Some("not-a-key"), Some(&forged), Some(&revoked)];

    let id = Uuid::new_v4();
    let sub = format!("/organizations/{org}/workspaces/{org}/webhook-subscriptions/{org}/logs");
    let routes = [
        "/api/v1/calls/101/webhook-logs".to_string(),
        sub.clone(),
        format!("{sub}/details?requestId={id}"),
        "/v1/webhook-logs".into(),
        format!("/v1/webhook-logs/{id}"),
    ];
    for key in keys {
        for route in &routes {
            let (status, body) = app.get_json_as(route, key).await;
            assert_eq!(status, 401, "{route} with {key:?}: {body}");
        }
        let mut post = reqwest::Client::new().post(format!("{}/v1/webhooks:dispatch", app.base_url)).body("{}");
        if let Some(k) = key {
            post = post.bearer_auth(k);
        }
        assert_eq!(post.send().await.unwrap().status(), 401);

        let mut c = app.client.clone();
        let e1 = c.dispatch(maybe_key(dispatch_to("https://example.com/", org), key)).await.unwrap_err();
        let e2 = c.list_webhook_logs(maybe_key(pb::ListWebhookLogsRequest::default(), key)).await.unwrap_err();
        let e3 = c
            .get_log_details(maybe_key(
                pb::GetLogDetailsRequest { request_id: id.to_string(), ..Default::default() },
                key,
            ))
            .await
            .unwrap_err();
        for e in [e1, e2, e3] {
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{key:?}: {e:?}");
        }
    }

    // Health and reflection need no key.
    let channel = tonic::transport::Channel::from_shared(app.base_url.clone()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let ok = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(ok.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient, server_reflection_request,
        server_reflection_response,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let answer = stream.message().await.unwrap().unwrap();
    let Some(server_reflection_response::MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer");
    };
    assert!(list.service.iter().any(|s| s.name == "hookpost.v1.WebhookService"));
}

#[tokio::test]
async fn the_ssrf_guard_refuses_private_targets_and_nothing_reaches_them() {
    let app = spawn_app_with(|c| c.allow_private_targets(false)).await;
    let receiver = Receiver::start().await;
    let port = receiver.addr.port();
    let org = Uuid::new_v4();
    for url in [
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://127.1.2.3:{port}/hook"),
        format!("http://[::1]:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        format!("http://0.0.0.0:{port}/hook"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "file:///etc/passwd".to_string(),
        "ftp://127.0.0.1/x".to_string(),
    ] {
        let err = app.dispatch(dispatch_to(&url, org)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{url}");
        assert_eq!(violated_fields(&err), ["webhook_url"], "{url}");
    }
    // A name that resolves to loopback passes the literal check and is refused
    // at connect time, as `blocked`, without a retry.
    let res = app.dispatch(dispatch_to(&format!("http://localhost:{port}/hook"), org)).await.unwrap();
    let d = app.settled(&res.request_id, SETTLE).await;
    assert_eq!(d.log.as_ref().unwrap().execution_status(), pb::ExecutionStatus::Failed);
    assert_eq!(d.attempts.len(), 1);
    assert_eq!(d.attempts[0].error_category.as_deref(), Some("blocked"));
    // The tenant learns that the address is refused, not how our resolver
    // sees the name (that detail is in the server log).
    assert_eq!(d.attempts[0].error_message.as_deref(), Some("address not allowed"));
    assert!(receiver.received().is_empty(), "nothing may reach the receiver");
}

#[tokio::test]
async fn each_input_limit_is_checked_just_under_and_just_over() {
    let app = spawn_app().await;
    let org = Uuid::new_v4();
    let base = || dispatch_to("http://127.0.0.1:9/hook", org);
    let ok = |r: Result<pb::DispatchResponse, tonic::Status>, what: &str| {
        assert!(r.is_ok(), "{what} just under the limit: {r:?}");
    };
    let over = |r: Result<pb::DispatchResponse, tonic::Status>, field: &str| {
        let e = r.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(violated_fields(&e), [field]);
    };
    // URL: 2048 bytes.
    let url = |n: usize| format!("http://127.0.0.1:9/{}", "a".repeat(n - 19));
    ok(app.dispatch(pb::DispatchRequest { webhook_url: url(2048), ..base() }).await, "url");
    over(app.dispatch(pb::DispatchRequest { webhook_url: url(2049), ..base() }).await, "webhook_url");
    // webhook_type: 128 bytes of letters, digits and ._:-
    ok(app.dispatch(pb::DispatchRequest { webhook_type: "t".repeat(128), ..base() }).await, "type");
    over(app.dispatch(pb::DispatchRequest { webhook_type: "t".repeat(129), ..base() }).await, "webhook_type");
    over(app.dispatch(pb::DispatchRequest { webhook_type: "call ended".into(), ..base() }).await, "webhook_type");
    over(app.dispatch(pb::DispatchRequest { webhook_type: "call/ended".into(), ..base() }).await, "webhook_type");
    // metadata: 16 KiB of JSON; {"k":"…"} is 8 bytes around the string.
    let meta =
        |n: usize| Some(hookpost::grpc::json_to_struct(json!({"k": "x".repeat(n - 8)}).as_object().unwrap().clone()));
    ok(app.dispatch(pb::DispatchRequest { metadata: meta(16 * 1024), ..base() }).await, "metadata");
    over(app.dispatch(pb::DispatchRequest { metadata: meta(16 * 1024 + 1), ..base() }).await, "metadata");
    // idempotency_key: 255 bytes.
    ok(app.dispatch(pb::DispatchRequest { idempotency_key: "k".repeat(255), ..base() }).await, "idempotency_key");
    over(app.dispatch(pb::DispatchRequest { idempotency_key: "k".repeat(256), ..base() }).await, "idempotency_key");
    // page_token: at most 8000 characters (a made-up one is malformed either way,
    // but only the longer one is refused for its length).
    let token = |n: usize| pb::ListWebhookLogsRequest { page_token: "A".repeat(n), ..Default::default() };
    let at = app.list(token(8000)).await.unwrap_err();
    assert!(at.message().contains("malformed"), "{}", at.message());
    let beyond = app.list(token(8001)).await.unwrap_err();
    assert!(beyond.message().contains("at most 8000"), "{}", beyond.message());
}

#[tokio::test]
async fn a_rate_limited_key_gets_resource_exhausted_with_retry_after() {
    let app = spawn_app_with(|c| c.rate_limit = std::num::NonZeroU32::new(2)).await;
    let mut codes = Vec::new();
    for _ in 0..5 {
        let r = app.list(pb::ListWebhookLogsRequest::default()).await;
        codes.push(r.as_ref().err().map(|e| e.code()));
        if let Err(e) = r {
            assert_eq!(e.code(), tonic::Code::ResourceExhausted);
            assert!(e.metadata().get("retry-after").is_some());
        }
    }
    assert!(codes.contains(&Some(tonic::Code::ResourceExhausted)), "{codes:?}");
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/webhook-logs", app.base_url))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_some(), "{:?}", resp.headers());
    // Another key has its own bucket.
    let other = app.create_key(KeyKind::Service).await;
    let (status, _) = app.get_json_as("/v1/webhook-logs", Some(&other)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn get_caller_names_an_organization_keys_organization_and_nothing_for_a_service_key() {
    let app = spawn_app().await;
    let org = Uuid::new_v4();
    let org_key = app.create_key(KeyKind::Organization(org)).await;
    let me = app.client.clone().get_caller(with_key(pb::GetCallerRequest {}, &org_key)).await.unwrap().into_inner();
    assert_eq!((me.kind(), me.organization_id.as_str()), (pb::CallerKind::Organization, org.to_string().as_str()));
    assert!(org_key.starts_with(&me.key_prefix) && me.key_prefix.len() < org_key.len(), "the prefix, never the key");
    let me = app.client.clone().get_caller(app.authed(pb::GetCallerRequest {})).await.unwrap().into_inner();
    assert_eq!((me.kind(), me.organization_id.as_str()), (pb::CallerKind::Service, ""));
    let err = app.client.clone().get_caller(pb::GetCallerRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // The same over REST, in proto3 JSON.
    let (status, body) = app.get_json_as("/v1/caller", Some(&org_key)).await;
    assert_eq!(status, 200);
    assert_eq!(body["kind"], "CALLER_KIND_ORGANIZATION");
    assert_eq!(body["organizationId"], org.to_string());
    let (status, _) = app.get_json_as("/v1/caller", None).await;
    assert_eq!(status, 401);
}
