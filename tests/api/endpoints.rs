//! Endpoints (webhook subscriptions): CRUD over gRPC and REST, field masks,
//! secrets, limits and tenant isolation.

use std::time::Duration;

use hookpost::auth::KeyKind;
use hookpost::proto::v1 as pb;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

const SETTLE: Duration = Duration::from_secs(20);

async fn create(app: &TestApp, org: Uuid, ws: Uuid, e: pb::Endpoint) -> pb::CreateEndpointResponse {
    let req =
        pb::CreateEndpointRequest { organization_id: org.to_string(), workspace_id: ws.to_string(), endpoint: Some(e) };
    app.client.clone().create_endpoint(app.authed(req)).await.unwrap().into_inner()
}

fn get_req(org: Uuid, id: &str) -> pb::GetEndpointRequest {
    pb::GetEndpointRequest { organization_id: org.to_string(), endpoint_id: id.into(), ..Default::default() }
}

async fn endpoint_crud_and_secrets(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let mut client = app.client.clone();
    let (org, ws) = (Uuid::new_v4(), Uuid::new_v4());
    let mut e = endpoint("http://127.0.0.1:9/hook", &["call.*", "sms_received"]);
    e.description = "billing".into();
    e.headers.insert("X-Tenant".into(), "acme".into());
    e.policy = Some(pb::DeliveryPolicy { max_in_flight: Some(4), ..Default::default() });
    let created = create(&app, org, ws, e).await;
    assert!(created.secret.starts_with("whsec_"), "{}", created.secret);
    let made = created.endpoint.unwrap();
    assert_eq!(
        (made.organization_id.as_str(), made.workspace_id.as_str()),
        (org.to_string().as_str(), ws.to_string().as_str())
    );
    assert_eq!(made.event_types, ["call.*", "sms_received"]);
    assert_eq!(made.policy.as_ref().unwrap().max_in_flight, Some(4));

    let got = client.get_endpoint(app.authed(get_req(org, &made.endpoint_id))).await.unwrap().into_inner();
    assert_eq!(got.endpoint.unwrap(), made);

    // The secret reads back; a rotation changes it.
    let secret_req = pb::GetEndpointSecretRequest {
        organization_id: org.to_string(),
        endpoint_id: made.endpoint_id.clone(),
        ..Default::default()
    };
    let read = client.get_endpoint_secret(app.authed(secret_req.clone())).await.unwrap().into_inner();
    assert_eq!(read.secret, created.secret);
    let rotated = client
        .rotate_endpoint_secret(app.authed(pb::RotateEndpointSecretRequest {
            organization_id: org.to_string(),
            endpoint_id: made.endpoint_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(rotated.secret.starts_with("whsec_") && rotated.secret != created.secret);
    let expires = rotated.previous_secret_expire_time.unwrap();
    let hours = (expires.seconds - chrono::Utc::now().timestamp()) as f64 / 3600.0;
    assert!((23.9..=24.0).contains(&hours), "{hours}");
    let read = client.get_endpoint_secret(app.authed(secret_req)).await.unwrap().into_inner();
    assert_eq!(read.secret, rotated.secret);

    // A mask changes only what it names.
    let update = pb::UpdateEndpointRequest {
        organization_id: org.to_string(),
        endpoint_id: made.endpoint_id.clone(),
        endpoint: Some(pb::Endpoint { description: "payments".into(), disabled: true, ..Default::default() }),
        update_mask: Some(pbjson_types::FieldMask { paths: vec!["description".into()] }),
        ..Default::default()
    };
    let updated = client.update_endpoint(app.authed(update)).await.unwrap().into_inner().endpoint.unwrap();
    assert_eq!((updated.description.as_str(), updated.disabled), ("payments", false));
    assert_eq!(updated.url, made.url);
    assert_eq!(updated.headers, made.headers);

    // Listing pages through every endpoint of the organization, oldest first.
    let mut ids = vec![made.endpoint_id.clone()];
    for i in 0..4 {
        let e = create(&app, org, ws, endpoint(&format!("http://127.0.0.1:9/{i}"), &[])).await;
        ids.push(e.endpoint.unwrap().endpoint_id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_endpoints(app.authed(pb::ListEndpointsRequest {
                organization_id: org.to_string(),
                page_size: 2,
                page_token: token,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.endpoints.into_iter().map(|e| e.endpoint_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ids);

    let delete = pb::DeleteEndpointRequest {
        organization_id: org.to_string(),
        endpoint_id: made.endpoint_id.clone(),
        ..Default::default()
    };
    client.delete_endpoint(app.authed(delete.clone())).await.unwrap();
    let err = client.get_endpoint(app.authed(get_req(org, &made.endpoint_id))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = client.delete_endpoint(app.authed(delete)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn endpoint_crud_and_secrets_on_postgres() {
    endpoint_crud_and_secrets(Backend::Postgres).await;
}

#[tokio::test]
async fn endpoint_crud_and_secrets_on_sqlite() {
    endpoint_crud_and_secrets(Backend::Sqlite).await;
}

#[tokio::test]
async fn bad_endpoints_are_refused_naming_each_field() {
    let app = spawn_app().await;
    let mut e = endpoint("ftp://127.0.0.1/x", &["call.*.x"]);
    e.headers.insert("webhook-signature".into(), "forged".into());
    e.policy = Some(pb::DeliveryPolicy { max_in_flight: Some(0), ..Default::default() });
    let req = pb::CreateEndpointRequest {
        organization_id: "nope".into(),
        workspace_id: String::new(),
        endpoint: Some(e.clone()),
    };
    let err = app.client.clone().create_endpoint(app.authed(req)).await.unwrap_err();
    assert_eq!(violated_fields(&err), ["organization_id"]);
    let req = pb::CreateEndpointRequest {
        organization_id: Uuid::new_v4().to_string(),
        workspace_id: String::new(),
        endpoint: Some(e),
    };
    let err = app.client.clone().create_endpoint(app.authed(req)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        violated_fields(&err),
        ["endpoint.event_types", "endpoint.headers", "endpoint.policy.max_in_flight", "endpoint.url"]
    );
}

#[tokio::test]
async fn another_organizations_endpoint_answers_like_a_missing_one() {
    let app = spawn_app().await;
    let (org, other) = (Uuid::new_v4(), Uuid::new_v4());
    let made = create(&app, org, Uuid::new_v4(), endpoint("http://127.0.0.1:9/a", &[])).await.endpoint.unwrap();
    let intruder = app.create_key(KeyKind::Organization(other)).await;
    let mut client = app.client.clone();
    let missing = Uuid::new_v4().to_string();
    for id in [made.endpoint_id.as_str(), missing.as_str()] {
        let err = client.get_endpoint(with_key(get_req(org, id), &intruder)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{id}");
        assert_eq!(err.message(), format!("no endpoint with ID {id}"));
        let secret = pb::GetEndpointSecretRequest {
            organization_id: org.to_string(),
            endpoint_id: id.into(),
            ..Default::default()
        };
        assert_eq!(
            client.get_endpoint_secret(with_key(secret, &intruder)).await.unwrap_err().code(),
            tonic::Code::NotFound
        );
        let rotate = pb::RotateEndpointSecretRequest {
            organization_id: org.to_string(),
            endpoint_id: id.into(),
            ..Default::default()
        };
        assert_eq!(
            client.rotate_endpoint_secret(with_key(rotate, &intruder)).await.unwrap_err().code(),
            tonic::Code::NotFound
        );
        let delete = pb::DeleteEndpointRequest {
            organization_id: org.to_string(),
            endpoint_id: id.into(),
            ..Default::default()
        };
        assert_eq!(
            client.delete_endpoint(with_key(delete, &intruder)).await.unwrap_err().code(),
            tonic::Code::NotFound
        );
        let update = pb::UpdateEndpointRequest {
            organization_id: org.to_string(),
            endpoint_id: id.into(),
            endpoint: Some(pb::Endpoint { description: "x".into(), ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(
            client.update_endpoint(with_key(update, &intruder)).await.unwrap_err().code(),
            tonic::Code::NotFound
        );
    }
    let listed = client
        .list_endpoints(with_key(
            pb::ListEndpointsRequest { organization_id: org.to_string(), ..Default::default() },
            &intruder,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.endpoints.is_empty());
    // The owner still has it, unchanged.
    let got = client.get_endpoint(app.authed(get_req(org, &made.endpoint_id))).await.unwrap().into_inner();
    assert_eq!(got.endpoint.unwrap(), made);
}

#[tokio::test]
async fn an_organization_may_register_only_so_many_endpoints() {
    let app = spawn_app_with(|c| c.limits.max_endpoints_per_organization = 2).await;
    let org = Uuid::new_v4();
    for i in 0..2 {
        create(&app, org, Uuid::new_v4(), endpoint(&format!("http://127.0.0.1:9/{i}"), &[])).await;
    }
    let req = pb::CreateEndpointRequest {
        organization_id: org.to_string(),
        workspace_id: String::new(),
        endpoint: Some(endpoint("http://127.0.0.1:9/3", &[])),
    };
    let err = app.client.clone().create_endpoint(app.authed(req)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    // Another organization is not affected.
    create(&app, Uuid::new_v4(), Uuid::new_v4(), endpoint("http://127.0.0.1:9/4", &[])).await;
}

#[tokio::test]
async fn secrets_are_stored_encrypted() {
    let app = spawn_app().await;
    let created = create(&app, Uuid::new_v4(), Uuid::new_v4(), endpoint("http://127.0.0.1:9/a", &[])).await;
    let raw: Vec<u8> = sqlx::query_scalar("SELECT secret FROM endpoints").fetch_one(app.pg()).await.unwrap();
    let key_part = created.secret.trim_start_matches("whsec_");
    assert!(!String::from_utf8_lossy(&raw).contains(key_part));
    assert!(!raw.windows(6).any(|w| w == b"whsec_"));
}

#[tokio::test]
async fn webhook_subscriptions_over_rest() {
    let app = spawn_app().await;
    let (org, ws) = (Uuid::new_v4(), Uuid::new_v4());
    let base = format!("{}/organizations/{org}/workspaces/{ws}/webhook-subscriptions", app.base_url);
    let http = reqwest::Client::new();
    let send = |req: reqwest::RequestBuilder, key: &str| {
        let req = req.bearer_auth(key);
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let (status, created) =
        send(http.post(&base).json(&json!({"url": "http://127.0.0.1:9/hook", "eventTypes": ["call.*"]})), &app.key)
            .await;
    assert_eq!(status, 200, "{created}");
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    let id = created["endpoint"]["endpointId"].as_str().unwrap().to_owned();
    let create_time = created["endpoint"]["createTime"].as_str().unwrap();
    assert!(create_time.ends_with('Z'), "{create_time}");

    let (status, got) = send(http.get(format!("{base}/{id}")), &app.key).await;
    assert_eq!((status, &got["endpoint"]), (200, &created["endpoint"]));

    let (status, patched) = send(
        http.patch(format!("{base}/{id}?updateMask=description,policy.maxInFlight"))
            .json(&json!({"description": "new", "url": "http://127.0.0.1:9/ignored", "policy": {"maxInFlight": 3}})),
        &app.key,
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["endpoint"]["description"], "new");
    assert_eq!(patched["endpoint"]["url"], "http://127.0.0.1:9/hook");
    assert_eq!(patched["endpoint"]["policy"]["maxInFlight"], 3);

    let (status, listed) = send(http.get(&base), &app.key).await;
    assert_eq!((status, listed["endpoints"].as_array().unwrap().len()), (200, 1));
    let (status, secret) = send(http.get(format!("{base}/{id}/secret")), &app.key).await;
    assert_eq!((status, &secret["secret"]), (200, &created["secret"]));
    let (status, rotated) =
        send(http.post(format!("{base}/{id}/secret:rotate")).json(&json!({"gracePeriod": "3600s"})), &app.key).await;
    assert_eq!(status, 200, "{rotated}");
    assert_ne!(rotated["secret"], created["secret"]);

    // Bad input is named; another workspace's path or organization is 404.
    let (status, bad) = send(http.post(&base).json(&json!({"url": "nope", "eventTypes": ["a b"]})), &app.key).await;
    assert_eq!(status, 400);
    let fields: Vec<_> =
        bad["details"][0]["fieldViolations"].as_array().unwrap().iter().map(|v| v["field"].clone()).collect();
    assert_eq!(fields, [json!("endpoint.url"), json!("endpoint.eventTypes")]);
    let other_ws =
        format!("{}/organizations/{org}/workspaces/{}/webhook-subscriptions/{id}", app.base_url, Uuid::new_v4());
    assert_eq!(send(http.get(other_ws), &app.key).await.0, 404);
    let intruder = app.create_key(KeyKind::Organization(Uuid::new_v4())).await;
    let (status, body) = send(http.get(format!("{base}/{id}")), &intruder).await;
    assert_eq!((status, body["code"].as_i64()), (404, Some(5)));

    let (status, _) = send(http.delete(format!("{base}/{id}")), &app.key).await;
    assert_eq!(status, 200);
    assert_eq!(send(http.get(format!("{base}/{id}")), &app.key).await.0, 404);
}

/// True when `r` carries a valid Standard Webhooks signature under `secret`.
fn verifies(r: &Received, secret: &str) -> bool {
    use hookpost::delivery::sign::{self, Secret};
    let header = |name: &str| r.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let received = sign::Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: r.body.as_bytes(),
    };
    let key = secret.parse::<Secret>().unwrap().verification_key();
    sign::verify(&received, &[&key], chrono::Utc::now().timestamp(), sign::DEFAULT_TOLERANCE).is_ok()
}

fn dispatch_event(org: Uuid, event: &str) -> pb::DispatchRequest {
    pb::DispatchRequest { organization_id: org.to_string(), webhook_type: event.into(), ..Default::default() }
}

async fn signed_deliveries_to_an_endpoint(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    let org = Uuid::new_v4();
    let mut e = endpoint(&receiver.url(), &["call.*"]);
    e.headers.insert("X-Tenant".into(), "acme".into());
    let created = create(&app, org, Uuid::new_v4(), e).await;
    let endpoint_id = created.endpoint.unwrap().endpoint_id;

    let mut req = dispatch_event(org, "call.started");
    req.endpoint_id = endpoint_id.clone();
    let sent = app.dispatch(req).await.unwrap();
    assert_eq!(sent.request_ids, std::slice::from_ref(&sent.request_id));
    let got = receiver.wait_for(1, SETTLE).await;
    let r = &got[0];
    assert_eq!(r.headers["webhook-id"], sent.message_id.as_str());
    assert_eq!(r.headers["x-hookpost-request-id"], sent.request_id.as_str());
    assert_eq!(r.headers["x-tenant"], "acme");
    assert!(verifies(r, &created.secret), "{:?}", r.headers);
    let mut tampered = Received { body: r.body.replace('}', ",\"x\":1}"), ..r.clone() };
    assert!(!verifies(&tampered, &created.secret), "a tampered body verifies");
    tampered.body = r.body.clone();
    tampered.headers.insert("webhook-timestamp", "1600000000".parse().unwrap());
    assert!(!verifies(&tampered, &created.secret), "a stale timestamp verifies");

    // During a rotation both secrets sign, and each verifies on its own.
    let rotated = app
        .client
        .clone()
        .rotate_endpoint_secret(app.authed(pb::RotateEndpointSecretRequest {
            organization_id: org.to_string(),
            endpoint_id: endpoint_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let mut req = dispatch_event(org, "call.ended");
    req.endpoint_id = endpoint_id.clone();
    app.dispatch(req).await.unwrap();
    let got = receiver.wait_for(2, SETTLE).await;
    let r = &got[1];
    assert_eq!(r.headers["webhook-signature"].to_str().unwrap().split(' ').count(), 2);
    assert!(verifies(r, &created.secret) && verifies(r, &rotated.secret));

    // An event the endpoint does not take, another organization's endpoint,
    // and both a URL and an endpoint are refused.
    let mut req = dispatch_event(org, "sms_received");
    req.endpoint_id = endpoint_id.clone();
    assert_eq!(app.dispatch(req).await.unwrap_err().code(), tonic::Code::FailedPrecondition);
    let mut req = dispatch_event(Uuid::new_v4(), "call.started");
    req.endpoint_id = endpoint_id.clone();
    assert_eq!(app.dispatch(req).await.unwrap_err().code(), tonic::Code::NotFound);
    let mut req = dispatch_event(org, "call.started");
    req.endpoint_id = endpoint_id;
    req.webhook_url = receiver.url();
    assert_eq!(violated_fields(&app.dispatch(req).await.unwrap_err()), ["endpoint_id"]);
}

#[tokio::test]
async fn signed_deliveries_to_an_endpoint_on_postgres() {
    signed_deliveries_to_an_endpoint(Backend::Postgres).await;
}

#[tokio::test]
async fn signed_deliveries_to_an_endpoint_on_sqlite() {
    signed_deliveries_to_an_endpoint(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_bare_url_delivery_is_signed_with_the_organization_secret() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let org = Uuid::new_v4();
    let sent = app.dispatch(dispatch_to(&receiver.url(), org)).await.unwrap();
    assert_eq!(sent.message_id, sent.request_id, "one URL, one delivery: webhook-id stays the request ID");
    let secret = app
        .client
        .clone()
        .get_organization_secret(app.authed(pb::GetOrganizationSecretRequest { organization_id: org.to_string() }))
        .await
        .unwrap()
        .into_inner()
        .secret;
    let got = receiver.wait_for(1, SETTLE).await;
    assert_eq!(got[0].headers["webhook-id"], sent.request_id.as_str());
    assert!(verifies(&got[0], &secret));
    // Another organization's key cannot read it.
    let intruder = app.create_key(KeyKind::Organization(Uuid::new_v4())).await;
    let err = app
        .client
        .clone()
        .get_organization_secret(with_key(
            pb::GetOrganizationSecretRequest { organization_id: org.to_string() },
            &intruder,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

async fn fan_out(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let org = Uuid::new_v4();
    let receivers = [
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    ];
    let filters: [&[&str]; 5] = [&["call.*"], &["call.started"], &[], &["sms_received"], &["call.*"]];
    let mut secrets = Vec::new();
    for (i, (r, f)) in receivers.iter().zip(filters).enumerate() {
        let mut e = endpoint(&r.url(), f);
        e.disabled = i == 4;
        secrets.push(create(&app, org, Uuid::new_v4(), e).await.secret);
    }
    // Another organization's endpoint never receives this organization's events.
    let stranger = Receiver::start().await;
    create(&app, Uuid::new_v4(), Uuid::new_v4(), endpoint(&stranger.url(), &[])).await;

    let mut req = dispatch_event(org, "call.started");
    req.idempotency_key = "fan-1".into();
    let sent = app.dispatch(req.clone()).await.unwrap();
    // Three deliveries go out; the disabled endpoint's is held (not
    // dropped), to flow if it is re-enabled.
    assert_eq!(sent.request_ids.len(), 4, "{sent:?}");
    let held = app.details(&sent.request_ids[3]).await.unwrap().log.unwrap();
    assert_eq!(held.execution_status(), pb::ExecutionStatus::Held);
    for (i, r) in receivers.iter().enumerate().take(3) {
        let got = r.wait_for(1, SETTLE).await;
        assert_eq!(got[0].headers["webhook-id"], sent.message_id.as_str(), "receiver {i}");
        assert!(verifies(&got[0], &secrets[i]), "receiver {i}");
        assert!(!verifies(&got[0], &secrets[(i + 1) % 3]), "receiver {i} verifies with another endpoint's secret");
    }
    // The idempotent repeat answers the same deliveries and stores nothing.
    let again = app.dispatch(req).await.unwrap();
    assert!(again.duplicate);
    assert_eq!((again.message_id, again.request_ids.clone()), (sent.message_id.clone(), sent.request_ids.clone()));
    for id in &sent.request_ids {
        app.settled(id, SETTLE).await;
    }
    for (i, r) in receivers.iter().enumerate() {
        assert_eq!(r.received().len(), usize::from(i < 3), "receiver {i}");
    }
    assert!(stranger.received().is_empty());
    // No endpoint takes the event (an organization without endpoints):
    // answered, nothing stored.
    let none = app.dispatch(dispatch_event(Uuid::new_v4(), "invoice.paid")).await.unwrap();
    assert!(none.request_ids.is_empty() && none.request_id.is_empty());
}

#[tokio::test]
async fn fan_out_reaches_3_of_5_endpoints_once_on_postgres() {
    fan_out(Backend::Postgres).await;
}

#[tokio::test]
async fn fan_out_reaches_3_of_5_endpoints_once_on_sqlite() {
    fan_out(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_replica_with_another_secret_key_leaves_the_delivery_for_one_that_can_sign_it() {
    use hookpost::config::SecretKeySource;
    let database_url = fresh_database().await;
    let key = hookpost::secrets::SecretKey::generate().expose_base64();
    let with_key = |key: String, deliver: bool| {
        let mut c = test_config(&database_url);
        c.secret_key = SecretKeySource::Base64(key);
        c.delivery.enabled = deliver;
        c
    };
    // The API replica seals the endpoint's secret with the right key.
    let api = spawn_app_on(with_key(key.clone(), false), &database_url).await;
    let receiver = Receiver::start().await;
    let org = Uuid::new_v4();
    let created = create(&api, org, Uuid::new_v4(), endpoint(&receiver.url(), &[])).await;
    let mut req = dispatch_event(org, "call.started");
    req.endpoint_id = created.endpoint.unwrap().endpoint_id;
    let sent = api.dispatch(req).await.unwrap();

    // A misconfigured replica claims it, cannot sign it, and gives it back:
    // nothing sent, no attempt recorded, still pending.
    let mut wrong =
        spawn_app_on(with_key(hookpost::secrets::SecretKey::generate().expose_base64(), true), &database_url).await;
    eventually(Duration::from_secs(20), "the misconfigured replica to claim and release it", || async {
        let leased: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM webhook_requests WHERE lease_id IS NULL AND next_attempt_at > now() + interval '5 seconds'",
        )
        .fetch_optional(api.pg())
        .await
        .unwrap();
        leased.map(|_| ())
    })
    .await;
    wrong.stop().await;
    let d = api.details(&sent.request_id).await.unwrap();
    assert_eq!(d.log.unwrap().execution_status(), pb::ExecutionStatus::Pending);
    assert!(d.attempts.is_empty() && receiver.received().is_empty());

    // A replica with the right key delivers it, signed.
    sqlx::query("UPDATE webhook_requests SET next_attempt_at = now()").execute(api.pg()).await.unwrap();
    let _right = spawn_app_on(with_key(key, true), &database_url).await;
    let got = receiver.wait_for(1, SETTLE).await;
    assert!(verifies(&got[0], &created.secret));
}
