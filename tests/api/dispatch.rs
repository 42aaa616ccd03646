use std::collections::HashSet;

use hookpost::proto::v1 as pb;
use sqlx::Row;
use uuid::Uuid;

use crate::helpers::*;

#[tokio::test]
async fn dispatch_commits_the_webhook_before_answering() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let org = Uuid::new_v4();
    let mut req = dispatch_to(&receiver.url(), org);
    req.call_id = Some(101);
    req.assistant_id = Some(123);
    let res = app.dispatch(req).await.unwrap();
    assert!(!res.duplicate);
    let request_id: Uuid = res.request_id.parse().unwrap();

    // The delivery row, and the body on its message, stored once.
    let row = sqlx::query(
        "SELECT r.id, r.organization_id, r.call_id, m.body, m.assistant_id FROM webhook_requests r \
         JOIN webhook_messages m ON m.message_id = r.message_id AND m.created_at = r.created_at \
         WHERE r.request_id = $1",
    )
    .bind(request_id)
    .fetch_one(app.pg())
    .await
    .unwrap();
    assert_eq!(row.get::<i64, _>("id"), res.log_id);
    assert_eq!(row.get::<Uuid, _>("organization_id"), org);
    assert_eq!(row.get::<Option<i64>, _>("call_id"), Some(101));
    assert_eq!(row.get::<String, _>("body"), r#"{"assistant_id":123,"event":"call_started"}"#);
    assert_eq!(row.get::<Option<i64>, _>("assistant_id"), Some(123));
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_first_request_and_stores_nothing() {
    let app = spawn_app().await;
    let org = Uuid::new_v4();
    let mut req = dispatch_to("http://127.0.0.1:9/hook", org);
    req.idempotency_key = "order-42".into();
    let first = app.dispatch(req.clone()).await.unwrap();
    let second = app.dispatch(req.clone()).await.unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.request_id, second.request_id);
    assert_eq!(first.log_id, second.log_id);

    // The same key in another organization is another request.
    let other = app.dispatch(pb::DispatchRequest { organization_id: Uuid::new_v4().to_string(), ..req }).await.unwrap();
    assert!(!other.duplicate);
    assert_ne!(other.request_id, first.request_id);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_requests").fetch_one(app.pg()).await.unwrap();
    assert_eq!(n, 2);
}

#[tokio::test]
async fn concurrent_duplicate_dispatches_store_exactly_one_request() {
    let app = spawn_app().await;
    let mut req = dispatch_to("http://127.0.0.1:9/hook", Uuid::new_v4());
    req.idempotency_key = "race".into();
    let calls = (0..24).map(|_| app.dispatch(req.clone()));
    let results: Vec<_> = futures_util::future::join_all(calls).await.into_iter().map(|r| r.unwrap()).collect();
    let ids: HashSet<_> = results.iter().map(|r| r.request_id.clone()).collect();
    assert_eq!(ids.len(), 1, "every caller gets the same request_id");
    assert_eq!(results.iter().filter(|r| !r.duplicate).count(), 1, "exactly one caller stored it");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_requests").fetch_one(app.pg()).await.unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn bad_fields_are_invalid_argument_naming_each_field() {
    let app = spawn_app().await;
    let bad = pb::DispatchRequest {
        organization_id: "not-a-uuid".into(),
        workspace_id: Some("nope".into()),
        webhook_url: "ftp://example.com/x".into(),
        webhook_type: "".into(),
        max_retries: Some(1000),
        ..Default::default()
    };
    let err = app.dispatch(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        violated_fields(&err),
        ["max_retries", "organization_id", "webhook_type", "webhook_url", "workspace_id"]
    );
    assert!(err.message().contains("webhook_url"), "{}", err.message());

    // No URL and no endpoint means "every subscribed endpoint", not an error.
    let missing = app.dispatch(pb::DispatchRequest::default()).await.unwrap_err();
    assert_eq!(violated_fields(&missing), ["organization_id", "webhook_type"]);

    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_requests").fetch_one(app.pg()).await.unwrap();
    assert_eq!(n, 0, "nothing is stored for a rejected dispatch");
}

#[tokio::test]
async fn payload_size_limit_is_checked_just_under_and_just_over() {
    let app = spawn_app_with(|c| c.limits.max_payload_bytes = 1024).await;
    let org = Uuid::new_v4();
    // {"k":"…"} is 8 bytes of JSON around the string.
    let payload = |n: usize| {
        Some(hookpost::grpc::json_to_struct(serde_json::json!({"k": "x".repeat(n)}).as_object().unwrap().clone()))
    };
    let mut ok = dispatch_to("http://127.0.0.1:9/hook", org);
    ok.payload = payload(1024 - 8);
    app.dispatch(ok).await.unwrap();
    let mut over = dispatch_to("http://127.0.0.1:9/hook", org);
    over.payload = payload(1024 - 7);
    let err = app.dispatch(over).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(violated_fields(&err), ["payload"]);
}

#[tokio::test]
async fn a_far_oversized_payload_is_named_not_a_transport_error() {
    let app = spawn_app().await;
    let mut req = dispatch_to("http://127.0.0.1:9/hook", Uuid::new_v4());
    req.payload = Some(hookpost::grpc::json_to_struct(
        serde_json::json!({"k": "x".repeat(600_000)}).as_object().unwrap().clone(),
    ));
    let err = app.dispatch(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(violated_fields(&err), ["payload"]);
}
