//! Signature schemes: an endpoint chooses HMAC-SHA256 (`whsec_`, `v1`) or
//! ed25519 (`whsk_` / `whpk_`, `v1a`) on create, changes it only by rotating
//! its secret, and receivers verify what arrives with what hookpost showed.

use std::time::Duration;

use hookpost::delivery::sign::{self, PublicKey, Secret, VerificationKey};
use hookpost::proto::v1 as pb;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

const SETTLE: Duration = Duration::from_secs(20);

fn endpoint_with(url: &str, scheme: pb::SignatureScheme) -> pb::Endpoint {
    pb::Endpoint { url: url.into(), signature_scheme: scheme.into(), ..Default::default() }
}

async fn create(app: &TestApp, org: Uuid, e: pb::Endpoint) -> pb::CreateEndpointResponse {
    let req =
        pb::CreateEndpointRequest { organization_id: org.to_string(), workspace_id: String::new(), endpoint: Some(e) };
    app.client.clone().create_endpoint(app.authed(req)).await.unwrap().into_inner()
}

async fn read_secret(app: &TestApp, org: Uuid, id: &str) -> pb::GetEndpointSecretResponse {
    let req =
        pb::GetEndpointSecretRequest { organization_id: org.to_string(), endpoint_id: id.into(), ..Default::default() };
    app.client.clone().get_endpoint_secret(app.authed(req)).await.unwrap().into_inner()
}

async fn read_endpoint(app: &TestApp, org: Uuid, id: &str) -> pb::Endpoint {
    let req = pb::GetEndpointRequest { organization_id: org.to_string(), endpoint_id: id.into(), ..Default::default() };
    app.client.clone().get_endpoint(app.authed(req)).await.unwrap().into_inner().endpoint.unwrap()
}

async fn rotate(
    app: &TestApp,
    org: Uuid,
    id: &str,
    scheme: pb::SignatureScheme,
    grace: Option<Duration>,
) -> pb::RotateEndpointSecretResponse {
    let req = pb::RotateEndpointSecretRequest {
        organization_id: org.to_string(),
        endpoint_id: id.into(),
        grace_period: grace.map(Into::into),
        signature_scheme: scheme.into(),
        ..Default::default()
    };
    app.client.clone().rotate_endpoint_secret(app.authed(req)).await.unwrap().into_inner()
}

/// Dispatches one event to endpoint `id`; its `webhook-id` (the message ID).
async fn dispatch(app: &TestApp, org: Uuid, id: &str) -> String {
    let req = pb::DispatchRequest {
        organization_id: org.to_string(),
        endpoint_id: id.into(),
        webhook_type: "call.started".into(),
        ..Default::default()
    };
    app.dispatch(req).await.unwrap().message_id
}

/// True when `r` verifies under `key` as a receiver would, now.
fn verifies(r: &Received, key: &VerificationKey) -> bool {
    let header = |name: &str| r.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let received = sign::Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: r.body.as_bytes(),
    };
    sign::verify(&received, &[key], chrono::Utc::now().timestamp(), sign::DEFAULT_TOLERANCE).is_ok()
}

/// What a receiver of an ed25519 endpoint holds: the public key alone.
fn public(whpk: &str) -> VerificationKey {
    VerificationKey::Asymmetric(whpk.parse::<PublicKey>().unwrap())
}

fn shared(whsec: &str) -> VerificationKey {
    whsec.parse::<Secret>().unwrap().verification_key()
}

/// The versions of the signatures in `webhook-signature`, in order.
fn versions(r: &Received) -> Vec<String> {
    let header = r.headers["webhook-signature"].to_str().unwrap();
    header.split(' ').map(|s| s.split_once(',').unwrap().0.to_owned()).collect()
}

async fn an_ed25519_endpoint_signs_v1a_verified_by_its_public_key(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    let org = Uuid::new_v4();
    let created = create(&app, org, endpoint_with(&receiver.url(), pb::SignatureScheme::Ed25519)).await;
    let made = created.endpoint.unwrap();
    assert!(created.secret.starts_with("whsk_"), "{}", created.secret);
    assert_eq!(made.signature_scheme(), pb::SignatureScheme::Ed25519);
    assert!(made.public_key.starts_with("whpk_"), "{}", made.public_key);
    // Reads show the same scheme and key; the secret reads back with it.
    assert_eq!(read_endpoint(&app, org, &made.endpoint_id).await, made);
    let secret = read_secret(&app, org, &made.endpoint_id).await;
    assert_eq!(
        (secret.secret.as_str(), secret.public_key.as_str()),
        (created.secret.as_str(), made.public_key.as_str())
    );
    let derived = created.secret.parse::<Secret>().unwrap().verification_key();
    assert_eq!(derived, public(&made.public_key), "the public key is the secret's own");

    let message_id = dispatch(&app, org, &made.endpoint_id).await;
    let got = receiver.wait_for(1, SETTLE).await;
    let r = &got[0];
    assert_eq!(r.headers["webhook-id"], message_id.as_str());
    assert_eq!(versions(r), ["v1a"]);
    assert!(verifies(r, &public(&secret.public_key)), "{:?}", r.headers);
    let tampered = Received { body: r.body.replace('}', ",\"x\":1}"), ..r.clone() };
    assert!(!verifies(&tampered, &public(&secret.public_key)), "a tampered body verifies");
    let other = sign::AsymmetricSecret::generate().public_key().expose();
    assert!(!verifies(r, &public(&other)), "another key verifies");

    // An endpoint that names no scheme signs with HMAC-SHA256, and says so.
    let hmac = create(&app, org, endpoint_with(&receiver.url(), pb::SignatureScheme::Unspecified)).await;
    let hmac_endpoint = hmac.endpoint.unwrap();
    assert!(hmac.secret.starts_with("whsec_"));
    assert_eq!(hmac_endpoint.signature_scheme(), pb::SignatureScheme::HmacSha256);
    assert_eq!(hmac_endpoint.public_key, "");
    assert_eq!(read_secret(&app, org, &hmac_endpoint.endpoint_id).await.public_key, "");
    let listed = app
        .client
        .clone()
        .list_endpoints(app.authed(pb::ListEndpointsRequest { organization_id: org.to_string(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    let schemes: Vec<_> = listed.endpoints.iter().map(|e| e.signature_scheme()).collect();
    assert_eq!(schemes, [pb::SignatureScheme::Ed25519, pb::SignatureScheme::HmacSha256]);
}

async fn rotating_to_ed25519_signs_with_both_schemes_during_the_grace_period(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    let org = Uuid::new_v4();
    let created = create(&app, org, endpoint_with(&receiver.url(), pb::SignatureScheme::HmacSha256)).await;
    let id = created.endpoint.unwrap().endpoint_id;
    let old = shared(&created.secret);

    let rotated = rotate(&app, org, &id, pb::SignatureScheme::Ed25519, None).await;
    assert!(rotated.secret.starts_with("whsk_") && rotated.public_key.starts_with("whpk_"), "{rotated:?}");
    let now = read_endpoint(&app, org, &id).await;
    assert_eq!(
        (now.signature_scheme(), now.public_key.as_str()),
        (pb::SignatureScheme::Ed25519, rotated.public_key.as_str())
    );
    let secret = read_secret(&app, org, &id).await;
    assert_eq!(
        (secret.secret.as_str(), secret.public_key.as_str()),
        (rotated.secret.as_str(), rotated.public_key.as_str())
    );

    // Receivers holding either the old secret or the new public key accept it.
    let message_id = dispatch(&app, org, &id).await;
    let got = receiver.wait_for(1, SETTLE).await;
    let r = &got[0];
    assert_eq!(r.headers["webhook-id"], message_id.as_str());
    assert_eq!(versions(r), ["v1a", "v1"], "the new key's signature, then the previous one's");
    assert!(verifies(r, &old), "the old HMAC secret no longer verifies: {:?}", r.headers);
    assert!(verifies(r, &public(&rotated.public_key)), "the new public key does not verify: {:?}", r.headers);
    let tampered = Received { body: r.body.replace('}', ",\"x\":1}"), ..r.clone() };
    assert!(!verifies(&tampered, &old) && !verifies(&tampered, &public(&rotated.public_key)));

    // Rotating with no scheme keeps ed25519; with no grace, only the new key signs.
    let again = rotate(&app, org, &id, pb::SignatureScheme::Unspecified, Some(Duration::ZERO)).await;
    assert!(again.secret.starts_with("whsk_") && again.public_key != rotated.public_key, "{again:?}");
    dispatch(&app, org, &id).await;
    let got = receiver.wait_for(2, SETTLE).await;
    let r = &got[1];
    assert_eq!(versions(r), ["v1a"]);
    assert!(verifies(r, &public(&again.public_key)));
    assert!(!verifies(r, &public(&rotated.public_key)) && !verifies(r, &old));

    // And back to HMAC: the public key goes.
    let back = rotate(&app, org, &id, pb::SignatureScheme::HmacSha256, Some(Duration::ZERO)).await;
    assert!(back.secret.starts_with("whsec_") && back.public_key.is_empty(), "{back:?}");
    let now = read_endpoint(&app, org, &id).await;
    assert_eq!((now.signature_scheme(), now.public_key.as_str()), (pb::SignatureScheme::HmacSha256, ""));
}

async fn update_endpoint_cannot_change_the_signature_scheme(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let org = Uuid::new_v4();
    let made = create(&app, org, endpoint_with("http://127.0.0.1:9/a", pb::SignatureScheme::HmacSha256))
        .await
        .endpoint
        .unwrap();
    let update = |scheme: pb::SignatureScheme, paths: &[&str]| pb::UpdateEndpointRequest {
        organization_id: org.to_string(),
        endpoint_id: made.endpoint_id.clone(),
        endpoint: Some(pb::Endpoint { description: "d".into(), signature_scheme: scheme.into(), ..Default::default() }),
        update_mask: Some(pbjson_types::FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() }),
        ..Default::default()
    };
    let mut client = app.client.clone();
    for mask in [&["signature_scheme"][..], &["description", "signatureScheme"]] {
        let err = client.update_endpoint(app.authed(update(pb::SignatureScheme::Ed25519, mask))).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{mask:?}");
        assert_eq!(violated_fields(&err), ["update_mask"]);
        assert!(
            err.message().contains("signature_scheme") && err.message().contains("RotateEndpointSecret"),
            "{err:?}"
        );
    }
    // Without a mask, another scheme in the body is refused the same way...
    let err = client.update_endpoint(app.authed(update(pb::SignatureScheme::Ed25519, &[]))).await.unwrap_err();
    assert_eq!(violated_fields(&err), ["endpoint.signature_scheme"]);
    assert!(err.message().contains("RotateEndpointSecret"), "{err:?}");
    // ...and an unknown one is named; nothing changed.
    let mut bad = update(pb::SignatureScheme::Unspecified, &[]);
    bad.endpoint.as_mut().unwrap().signature_scheme = 7;
    assert_eq!(
        violated_fields(&client.update_endpoint(app.authed(bad)).await.unwrap_err()),
        ["endpoint.signature_scheme"]
    );
    assert_eq!(read_endpoint(&app, org, &made.endpoint_id).await, made);
    // The endpoint as read (its own scheme) goes back unchanged.
    let same = client.update_endpoint(app.authed(update(pb::SignatureScheme::HmacSha256, &[]))).await.unwrap();
    let same = same.into_inner().endpoint.unwrap();
    assert_eq!((same.description.as_str(), same.signature_scheme()), ("d", pb::SignatureScheme::HmacSha256));

    let mut unknown = endpoint_with("http://127.0.0.1:9/b", pb::SignatureScheme::Unspecified);
    unknown.signature_scheme = 7;
    let req = pb::CreateEndpointRequest {
        organization_id: org.to_string(),
        workspace_id: String::new(),
        endpoint: Some(unknown),
    };
    assert_eq!(
        violated_fields(&client.create_endpoint(app.authed(req)).await.unwrap_err()),
        ["endpoint.signature_scheme"]
    );
}

on_both_stores!(
    an_ed25519_endpoint_signs_v1a_verified_by_its_public_key,
    rotating_to_ed25519_signs_with_both_schemes_during_the_grace_period,
    update_endpoint_cannot_change_the_signature_scheme,
);

#[tokio::test]
async fn an_ed25519_key_is_stored_encrypted_beside_its_public_key() {
    let app = spawn_app().await;
    let created =
        create(&app, Uuid::new_v4(), endpoint_with("http://127.0.0.1:9/a", pb::SignatureScheme::Ed25519)).await;
    let (raw, public_key): (Vec<u8>, Option<String>) =
        sqlx::query_as("SELECT secret, public_key FROM endpoints").fetch_one(app.pg()).await.unwrap();
    let key_part = created.secret.trim_start_matches("whsk_");
    assert!(!String::from_utf8_lossy(&raw).contains(&key_part[..20]));
    assert!(!raw.windows(5).any(|w| w == b"whsk_"));
    assert_eq!(public_key.as_deref(), Some(created.endpoint.unwrap().public_key.as_str()));
}

#[tokio::test]
async fn signature_schemes_over_rest_in_proto3_json() {
    let app = spawn_app().await;
    let (org, ws) = (Uuid::new_v4(), Uuid::new_v4());
    let base = format!("{}/organizations/{org}/workspaces/{ws}/webhook-subscriptions", app.base_url);
    let http = reqwest::Client::new();
    let send = |req: reqwest::RequestBuilder| {
        let req = req.bearer_auth(&app.key);
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let body = json!({"url": "http://127.0.0.1:9/hook", "signatureScheme": "SIGNATURE_SCHEME_ED25519"});
    let (status, created) = send(http.post(&base).json(&body)).await;
    assert_eq!(status, 200, "{created}");
    let endpoint = &created["endpoint"];
    assert_eq!(endpoint["signatureScheme"], "SIGNATURE_SCHEME_ED25519");
    let public_key = endpoint["publicKey"].as_str().unwrap().to_owned();
    assert!(public_key.starts_with("whpk_") && created["secret"].as_str().unwrap().starts_with("whsk_"));
    let id = endpoint["endpointId"].as_str().unwrap().to_owned();

    let (status, got) = send(http.get(format!("{base}/{id}"))).await;
    assert_eq!((status, &got["endpoint"]), (200, endpoint));
    let (status, secret) = send(http.get(format!("{base}/{id}/secret"))).await;
    assert_eq!(
        (status, &secret["secret"], secret["publicKey"].as_str()),
        (200, &created["secret"], Some(public_key.as_str()))
    );

    // Updating the scheme is refused, naming the mask; rotation changes it.
    let (status, bad) =
        send(http.patch(format!("{base}/{id}?updateMask=signatureScheme")).json(&json!({"signatureScheme": 1}))).await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["details"][0]["fieldViolations"][0]["field"], "updateMask");
    assert!(bad["message"].as_str().unwrap().contains("RotateEndpointSecret"), "{bad}");
    let (status, rotated) = send(
        http.post(format!("{base}/{id}/secret:rotate"))
            .json(&json!({"gracePeriod": "60s", "signatureScheme": "SIGNATURE_SCHEME_HMAC_SHA256"})),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    assert!(rotated["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(rotated.get("publicKey"), None, "an empty field is left out in proto3 JSON: {rotated}");
    let (_, got) = send(http.get(format!("{base}/{id}"))).await;
    assert_eq!(got["endpoint"]["signatureScheme"], "SIGNATURE_SCHEME_HMAC_SHA256");
    assert_eq!(got["endpoint"].get("publicKey"), None, "{got}");
}
