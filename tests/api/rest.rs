//! The REST adapter: the documented routes compared with the documents'
//! examples, paging, the gateway routes, every bad parameter, and OpenAPI.

use std::time::Duration;

use hookpost::proto::v1 as pb;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

const SETTLE: Duration = Duration::from_secs(20);

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Caller-supplied JSON objects inside the documented shapes.
const FREE_FORM: [&str; 2] = [".request_payload", ".webhook_metadata"];

/// Same field names in the same order, same JSON types, nulls where the
/// document has nulls, recursively.
fn assert_same_shape(doc: &Value, got: &Value, at: &str) {
    assert_eq!(kind(got), kind(doc), "type of {at}: document {doc}, hookpost {got}");
    match (doc, got) {
        (Value::Object(d), Value::Object(g)) => {
            let (mut dk, mut gk): (Vec<_>, Vec<_>) = (d.keys().collect(), g.keys().collect());
            if FREE_FORM.iter().any(|f| at.ends_with(f)) {
                // A caller's payload travels as google.protobuf.Struct, a map
                // without order, so only its keys are compared, not their order.
                dk.sort();
                gk.sort();
            }
            assert_eq!(gk, dk, "fields of {at}");
            for (k, dv) in d {
                assert_same_shape(dv, &g[k], &format!("{at}.{k}"));
            }
        }
        (Value::Array(d), Value::Array(g)) => {
            assert_eq!(g.len(), d.len(), "length of {at}");
            for (i, (dv, gv)) in d.iter().zip(g).enumerate() {
                assert_same_shape(dv, gv, &format!("{at}[{i}]"));
            }
        }
        _ => {}
    }
}

fn payload(v: Value) -> Option<hookpost::proto::RawStruct> {
    Some(hookpost::grpc::json_to_struct(v.as_object().unwrap().clone()))
}

#[tokio::test]
async fn call_webhook_logs_match_the_documented_example() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let doc = fixture("call_webhook_logs.json");
    let org = Uuid::new_v4();
    let mut ids = Vec::new();
    for example in doc.as_array().unwrap() {
        let req = pb::DispatchRequest {
            call_id: Some(101),
            assistant_id: Some(123),
            webhook_type: example["webhook_type"].as_str().unwrap().into(),
            payload: payload(example["request_payload"].clone()),
            ..dispatch_to(&receiver.url(), org)
        };
        let id = app.dispatch(req).await.unwrap().request_id;
        app.settled(&id, SETTLE).await;
        ids.push(id);
    }
    let (status, got) = app.get_json("/api/v1/calls/101/webhook-logs").await;
    assert_eq!(status, 200);
    assert_same_shape(&doc, &got, "$");
    // Values, where the situation is the same as the document's.
    for (d, g) in doc.as_array().unwrap().iter().zip(got.as_array().unwrap()) {
        for field in
            ["call_id", "assistant_id", "webhook_type", "request_payload", "response_status_code", "response_body"]
        {
            assert_eq!(g[field], d[field], "{field}");
        }
        assert_eq!(g["success"], true);
        assert_eq!(g["retry_count"], 0);
        assert!(g["attempted_at"].as_str().unwrap().ends_with('Z'));
    }
    // The filter.
    let (status, ended) = app.get_json("/api/v1/calls/101/webhook-logs?webhook_type=call_ended").await;
    assert_eq!(status, 200);
    assert_eq!(ended.as_array().unwrap().len(), 1);
    assert_eq!(ended[0]["webhook_type"], "call_ended");
    let (status, none) = app.get_json("/api/v1/calls/101/webhook-logs?webhook_type=transcript").await;
    assert_eq!((status, none), (200, json!([])));
}

#[tokio::test]
async fn an_unknown_call_is_the_documented_404() {
    let app = spawn_app().await;
    let (status, body) = app.get_json("/api/v1/calls/101/webhook-logs").await;
    assert_eq!(status, 404);
    assert_eq!(body, json!({"detail": "Call with ID 101 not found in your organization"}));
    let (status, body) = app.get_json("/api/v1/calls/987654/webhook-logs").await;
    assert_eq!(status, 404);
    assert_eq!(body["detail"], "Call with ID 987654 not found in your organization");
}

#[tokio::test]
async fn per_call_retries_and_failures_show_in_retry_count_and_error_message() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(500), Reply::status(500)]);
    let req =
        pb::DispatchRequest { call_id: Some(7), max_retries: Some(1), ..dispatch_to(&receiver.url(), Uuid::new_v4()) };
    let id = app.dispatch(req).await.unwrap().request_id;
    app.settled(&id, SETTLE).await;
    let (_, got) = app.get_json("/api/v1/calls/7/webhook-logs").await;
    assert_eq!(got[0]["success"], false);
    assert_eq!(got[0]["retry_count"], 1);
    assert_eq!(got[0]["response_status_code"], 500);
    assert!(got[0]["error_message"].as_str().unwrap().contains("500"));
}

struct Sub {
    org: Uuid,
    ws: Uuid,
    sub: Uuid,
}

impl Sub {
    fn new() -> Self {
        Self { org: Uuid::new_v4(), ws: Uuid::new_v4(), sub: Uuid::new_v4() }
    }
    fn logs(&self) -> String {
        format!("/organizations/{}/workspaces/{}/webhook-subscriptions/{}/logs", self.org, self.ws, self.sub)
    }
    fn dispatch(&self, url: &str, max_retries: u32) -> pb::DispatchRequest {
        pb::DispatchRequest {
            workspace_id: Some(self.ws.to_string()),
            subscription_id: Some(self.sub.to_string()),
            max_retries: Some(max_retries),
            webhook_type: "sms.outbound".into(),
            ..dispatch_to(url, self.org)
        }
    }
}

#[tokio::test]
async fn subscription_logs_and_details_match_the_documented_examples() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.script((0..20).map(|_| Reply::status(429).body("<!DOCTYPE html><html>limit</html>")));
    let s = Sub::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = app.dispatch(s.dispatch(&receiver.url(), 1)).await.unwrap().request_id;
        app.settled(&id, SETTLE).await;
        ids.push(id);
    }

    let (status, page) = app.get_json(&format!("{}?limit=2", s.logs())).await;
    assert_eq!(status, 200);
    assert_same_shape(&fixture("subscription_logs.json"), &page, "$");
    assert_eq!(page["results"][0]["requestId"], ids[2].as_str(), "newest first");
    assert_eq!(page["results"][0]["executionStatus"], "failed");
    assert_eq!(page["results"][0]["httpStatusCode"], 429);
    assert_eq!(page["results"][0]["attemptCount"], 2);
    assert_eq!(page["results"][0]["organizationId"], s.org.to_string());

    let (status, details) = app.get_json(&format!("{}/details?requestId={}", s.logs(), ids[0])).await;
    assert_eq!(status, 200);
    assert_same_shape(&fixture("subscription_log_details.json"), &details, "$");
    let results = details["results"].as_array().unwrap();
    assert_eq!(results[0]["attemptCount"], 2, "newest attempt first");
    assert_eq!(results[1]["attemptCount"], 1);
    assert_eq!(results[0]["payloadDetails"]["response"], "<!DOCTYPE html><html>limit</html>");
    let sent = &receiver.received()[0].body;
    assert_eq!(results[1]["payloadDetails"]["request"], sent.as_str());
}

#[tokio::test]
async fn unknown_or_foreign_request_ids_give_an_empty_details_list() {
    let app = spawn_app().await;
    let s = Sub::new();
    let id = app.dispatch(s.dispatch("http://127.0.0.1:9/hook", 0)).await.unwrap().request_id;
    app.settled(&id, SETTLE).await;
    let (status, body) = app.get_json(&format!("{}/details?requestId={}", s.logs(), Uuid::new_v4())).await;
    assert_eq!((status, body), (200, json!({"results": []})));
    let other = Sub { org: s.org, ws: s.ws, sub: Uuid::new_v4() };
    let (status, body) = app.get_json(&format!("{}/details?requestId={id}", other.logs())).await;
    assert_eq!((status, body), (200, json!({"results": []})));
    let (_, body) = app.get_json(&format!("{}/details?requestId={id}", s.logs())).await;
    assert_eq!(body["results"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn paging_25_subscription_logs_by_10_and_filtering_failed_ones() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let s = Sub::new();
    let mut failed = Vec::new();
    for i in 0..25 {
        let url = if i % 5 == 0 { "http://127.0.0.1:9/hook".to_string() } else { receiver.url() };
        let id = app.dispatch(s.dispatch(&url, 0)).await.unwrap().request_id;
        if i % 5 == 0 {
            failed.push(id.clone());
        }
        app.settled(&id, SETTLE).await;
    }
    let mut seen = Vec::new();
    let mut url = format!("{}?limit=10", s.logs());
    let mut pages = 0;
    loop {
        let (status, page) = app.get_json(&url).await;
        assert_eq!(status, 200);
        pages += 1;
        seen.extend(page["results"].as_array().unwrap().iter().map(|r| r["requestId"].as_str().unwrap().to_string()));
        match page.get("nextPageToken") {
            Some(t) => url = format!("{}?limit=10&pageToken={}", s.logs(), t.as_str().unwrap()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 25);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 25, "no duplicates");

    let (_, only_failed) = app.get_json(&format!("{}?executionStatus=failed&limit=100", s.logs())).await;
    let mut got: Vec<_> = only_failed["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["requestId"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    failed.sort();
    assert_eq!(got, failed);
    assert!(only_failed["results"].as_array().unwrap().iter().all(|r| r["executionStatus"] == "failed"));
    assert!(only_failed.get("nextPageToken").is_none());
}

#[tokio::test]
async fn every_bad_parameter_is_a_400_naming_it() {
    let app = spawn_app().await;
    let s = Sub::new();
    let logs = s.logs();
    let valid = format!("/organizations/{}/workspaces/{}/webhook-subscriptions/{}", s.org, s.ws, s.sub);
    let cases: Vec<(String, &str)> = vec![
        (format!("{logs}?limit=0"), "limit"),
        (format!("{logs}?limit=101"), "limit"),
        (format!("{logs}?limit=ten"), "limit"),
        (format!("{logs}?pageToken=not-a-token"), "pageToken"),
        (format!("{logs}?pageToken={}", "A".repeat(8001)), "pageToken"),
        (format!("{logs}?executionStatus=done"), "executionStatus"),
        (format!("{logs}?colour=red"), "colour"),
        (format!("{logs}?limit=5&limit=6"), "limit"),
        (format!("/organizations/x/workspaces/{}/webhook-subscriptions/{}/logs", s.ws, s.sub), "organizationId"),
        (format!("/organizations/{}/workspaces/x/webhook-subscriptions/{}/logs", s.org, s.sub), "workspaceId"),
        (format!("/organizations/{}/workspaces/{}/webhook-subscriptions/x/logs", s.org, s.ws), "webhookSubscriptionId"),
        (format!("{valid}/logs/details"), "requestId"),
        (format!("{valid}/logs/details?requestId=101"), "requestId"),
    ];
    for (path, param) in cases {
        let (status, body) = app.get_json(&path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["code"], 3, "{path}");
        assert!(body["message"].as_str().unwrap().starts_with(param), "{path}: {body}");
        assert_eq!(body["details"][0]["fieldViolations"][0]["field"], param, "{path}");
    }
    for path in ["/api/v1/calls/abc/webhook-logs", "/api/v1/calls/101/webhook-logs?type=call_ended"] {
        let (status, body) = app.get_json(path).await;
        assert_eq!(status, 400, "{path}");
        assert!(body["detail"].is_string(), "{path}: {body}");
    }
}

#[tokio::test]
async fn both_authorization_schemes_are_accepted_and_others_refused() {
    let app = spawn_app().await;
    let s = Sub::new();
    let http = reqwest::Client::new();
    let url = format!("{}{}", app.base_url, s.logs());
    for value in [format!("Bearer {}", app.key), format!("AccessKey {}", app.key)] {
        let resp = http.get(&url).header("authorization", &value).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{value}");
    }
    let resp = http.get(&url).header("authorization", format!("Basic {}", app.key)).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn the_gateway_routes_speak_proto3_json() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let http = reqwest::Client::new();
    let org = Uuid::new_v4();
    let resp = http
        .post(format!("{}/v1/webhooks:dispatch", app.base_url))
        .bearer_auth(&app.key)
        .json(&json!({
            "organizationId": org.to_string(),
            "callId": "101",
            "webhookUrl": receiver.url(),
            "webhookType": "call_started",
            "payload": {"event": "call_started"},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let id = body["requestId"].as_str().unwrap().to_string();
    assert!(body["logId"].is_string(), "int64 is a string in proto3 JSON: {body}");
    app.settled(&id, SETTLE).await;

    let (status, list) = app.get_json(&format!("/v1/webhook-logs?organizationId={org}&pageSize=5")).await;
    assert_eq!(status, 200);
    assert_eq!(list["logs"][0]["requestId"], id.as_str());
    assert_eq!(list["logs"][0]["executionStatus"], "EXECUTION_STATUS_SUCCEEDED");
    let (status, details) = app.get_json(&format!("/v1/webhook-logs/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(details["attempts"][0]["attemptNumber"], 1);
    assert_eq!(details["log"]["requestId"], id.as_str());

    // Errors: grpc-gateway's status body, with field violations.
    let resp = http
        .post(format!("{}/v1/webhooks:dispatch", app.base_url))
        .bearer_auth(&app.key)
        .json(&json!({"organizationId": "nope", "webhookUrl": "ftp://x", "webhookType": "t"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], 3);
    let mut fields: Vec<_> =
        body["details"][0]["fieldViolations"].as_array().unwrap().iter().map(|v| v["field"].clone()).collect();
    fields.sort_by_key(|f| f.to_string());
    assert_eq!(fields, [json!("organizationId"), json!("webhookUrl")]);
    let resp = http
        .post(format!("{}/v1/webhooks:dispatch", app.base_url))
        .bearer_auth(&app.key)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let (status, _) = app.get_json(&format!("/v1/webhook-logs/{}", Uuid::new_v4())).await;
    assert_eq!(status, 404);
    let (status, _) = app.get_json("/v1/webhook-logs/not-a-uuid").await;
    assert_eq!(status, 400);
    let (status, _) = app.get_json("/v1/webhook-logs?pageSize=abc").await;
    assert_eq!(status, 400);
    let (status, body) = app.get_json("/v1/nothing-here").await;
    assert_eq!((status, body["code"].clone()), (404, json!(5)));
}

#[tokio::test]
async fn openapi_lists_exactly_the_served_routes() {
    let app = spawn_app().await;
    let (status, doc) = app.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut paths: Vec<_> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    paths.sort();
    let sub = "/organizations/{organizationId}/workspaces/{workspaceId}/webhook-subscriptions/{webhookSubscriptionId}";
    let mut expected = vec![
        "/api/v1/calls/{call_id}/webhook-logs".to_string(),
        format!("{sub}/logs"),
        format!("{sub}/logs/details"),
        sub.rsplit_once('/').unwrap().0.to_string(),
        sub.to_string(),
        format!("{sub}/secret"),
        format!("{sub}/secret:rotate"),
        format!("{sub}/stats"),
        format!("{sub}/logs/redeliver"),
        format!("{sub}:pause"),
        format!("{sub}:resume"),
        "/organizations/{organizationId}/webhook-logs:recover".into(),
        "/organizations/{organizationId}/operations/{operationId}".into(),
        "/v1/webhook-logs/{request_id}:redeliver".into(),
        "/v1/webhook-logs:watch".into(),
        "/v1/caller".into(),
        "/metrics".into(),
        "/organizations/{organizationId}/webhook-secret".into(),
        "/organizations/{organizationId}/webhook-secret:rotate".into(),
        "/v1/webhooks:dispatch".into(),
        "/v1/webhook-logs".into(),
        "/v1/webhook-logs/{request_id}".into(),
        "/healthz".into(),
        "/readyz".into(),
    ];
    expected.sort();
    assert_eq!(paths, expected);
    // And each documented path and method is routed (not a 404 "no such route" or 405).
    let http = reqwest::Client::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{call_id}", "1")
            .replace("{request_id}", &Uuid::new_v4().to_string())
            .replace("{organizationId}", &Uuid::new_v4().to_string())
            .replace("{workspaceId}", &Uuid::new_v4().to_string())
            .replace("{webhookSubscriptionId}", &Uuid::new_v4().to_string())
            .replace("{operationId}", &Uuid::new_v4().to_string());
        for method in item.as_object().unwrap().keys() {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let resp =
                http.request(m, format!("{}{concrete}", app.base_url)).bearer_auth(&app.key).send().await.unwrap();
            let status = resp.status().as_u16();
            if path.ends_with(":watch") {
                // A stream: it answers, and never ends by itself.
                assert_eq!(status, 200, "{method} {path}");
                continue;
            }
            let body = resp.text().await.unwrap();
            assert_ne!(status, 405, "{method} {path}");
            assert!(!body.contains("no such route"), "{method} {path} is documented but not routed");
        }
    }
}

#[tokio::test]
async fn responses_are_compressed_and_carry_a_request_id() {
    let app = spawn_app().await;
    let resp = reqwest::Client::new()
        .get(format!("{}/openapi.json", app.base_url))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    assert!(Uuid::parse_str(resp.headers()["x-request-id"].to_str().unwrap()).is_ok());
}
