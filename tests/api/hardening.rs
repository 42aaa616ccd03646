//! Anonymous and misbehaving clients: bounded connections, authentication
//! before any body is read, bounded key lookups.

use std::time::Duration;

use hookpost::auth::KeyKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// Reads until the server closes the connection (or `deadline` passes, which
/// fails the test); returns what was read.
async fn read_until_closed(stream: &mut TcpStream, deadline: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(deadline, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept the connection open past {deadline:?}");
    out
}

#[tokio::test]
async fn more_idle_connections_than_the_cap_neither_stop_healthz_nor_stay_open() {
    let app = spawn_app_with(|c| {
        c.connection_limits.max_connections = 16;
        c.connection_limits.header_read_timeout = Duration::from_millis(500);
    })
    .await;
    let addr = app.base_url.trim_start_matches("http://").to_owned();
    // Silent clients, and clients stuck halfway through a header line.
    let mut idle = Vec::new();
    for i in 0..48 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        if i % 2 == 1 {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        }
        idle.push(s);
    }
    // /healthz answers although every slot was taken when it connected.
    let (status, _) = eventually(Duration::from_secs(20), "/healthz to answer", || async {
        let resp = reqwest::Client::new()
            .get(format!("{}/healthz", app.base_url))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        Some((resp.status().as_u16(), ()))
    })
    .await;
    assert_eq!(status, 200);
    // Every stalled client is dropped by the server.
    for s in &mut idle {
        read_until_closed(s, Duration::from_secs(20)).await;
    }
}

#[tokio::test]
async fn a_keyless_request_is_answered_before_its_body_is_read() {
    let app = spawn_app().await;
    let addr = app.base_url.trim_start_matches("http://").to_owned();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    // Promises 2 MB and sends a few bytes: a server that reads the body
    // first would wait for the rest.
    s.write_all(
        b"POST /v1/webhooks:dispatch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 2000000\r\n\r\n{\"payload\": {\"a\": [[[[",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("an answer before the body is complete")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(head.contains("application/json"), "{head}");
}

#[tokio::test]
async fn random_keys_from_one_address_are_refused_without_lookups_past_the_allowance() {
    let app = spawn_app_with(|c| c.key_cache_ttl = Duration::from_secs(10)).await;
    let mut codes = Vec::new();
    for _ in 0..80 {
        let key = hookpost::auth::generate(KeyKind::Service).plaintext;
        codes.push(app.get_json_as("/v1/webhook-logs", Some(&key)).await.0);
    }
    let unauthenticated = codes.iter().filter(|c| **c == 401).count();
    let exhausted = codes.iter().filter(|c| **c == 429).count();
    assert_eq!(unauthenticated + exhausted, codes.len(), "{codes:?}");
    assert!(exhausted > 0, "no request was refused without a lookup: {codes:?}");
    // The allowance is a burst of 40, plus what refills while the loop runs.
    assert!(unauthenticated <= 60, "{unauthenticated} lookups of unknown keys were made");
    // The address's own valid key waits too (it is the same client), and
    // health stays open.
    let (status, _) = app.get_json_as("/v1/webhook-logs", Some(&app.key)).await;
    assert_eq!(status, 429);
    let health = reqwest::get(format!("{}/healthz", app.base_url)).await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_revoked_key_keeps_working_only_until_the_cache_ttl_passes() {
    let app = spawn_app_with(|c| c.key_cache_ttl = Duration::from_millis(300)).await;
    let key = app.create_key(KeyKind::Service).await;
    assert_eq!(app.get_json_as("/v1/webhook-logs", Some(&key)).await.0, 200);
    let store = open_store(&app.database_url).await;
    assert!(store.revoke_api_key(hookpost::auth::prefix_of(&key).unwrap()).await.unwrap());
    eventually(Duration::from_secs(10), "the revocation to take effect", || async {
        (app.get_json_as("/v1/webhook-logs", Some(&key)).await.0 == 401).then_some(())
    })
    .await;
    // A long TTL keeps serving the cached key after its revocation: the TTL,
    // not chance, decides.
    let cached = spawn_app_with(|c| c.key_cache_ttl = Duration::from_secs(3600)).await;
    let key = cached.create_key(KeyKind::Service).await;
    assert_eq!(cached.get_json_as("/v1/webhook-logs", Some(&key)).await.0, 200);
    let store = open_store(&cached.database_url).await;
    assert!(store.revoke_api_key(hookpost::auth::prefix_of(&key).unwrap()).await.unwrap());
    assert_eq!(cached.get_json_as("/v1/webhook-logs", Some(&key)).await.0, 200);
}

#[tokio::test]
async fn an_authenticated_request_that_trickles_its_body_is_cut_off() {
    let app = spawn_app_with(|c| c.request_timeout = Duration::from_secs(1)).await;
    let addr = app.base_url.trim_start_matches("http://").to_owned();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/webhooks:dispatch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{",
        app.key
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut s, Duration::from_secs(20)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(answer.contains("\"code\":4"), "{answer}");
}

#[tokio::test]
async fn a_grpc_content_type_on_a_rest_path_is_rest() {
    let app = spawn_app().await;
    let resp = reqwest::Client::new()
        .get(format!("{}/healthz", app.base_url))
        .header("content-type", "application/grpc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ok");
}

#[tokio::test]
async fn framework_rejections_have_the_routes_json_shape() {
    let app = spawn_app_with(|c| c.limits.max_payload_bytes = 1024).await;
    let http = reqwest::Client::new();
    let key = app.key.clone();
    let send = |req: reqwest::RequestBuilder| {
        let key = key.clone();
        async move {
            let resp = req.bearer_auth(&key).send().await.unwrap();
            let status = resp.status().as_u16();
            let content_type = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
            let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
            (status, content_type, body)
        }
    };
    let base = &app.base_url;
    let long = "a".repeat(20_000);
    let cases = [
        (405, http.delete(format!("{base}/v1/webhook-logs"))),
        (405, http.post(format!("{base}/api/v1/calls/1/webhook-logs"))),
        (413, http.post(format!("{base}/v1/webhooks:dispatch")).body(vec![b' '; 3 << 20])),
        (414, http.get(format!("{base}/v1/webhook-logs?pageToken={long}"))),
        (414, http.get(format!("{base}/api/v1/calls/1/webhook-logs?webhook_type={long}"))),
        (400, http.get(format!("{base}/v1/webhook-logs/%FF%FE"))),
    ];
    for (expected, req) in cases {
        let (status, content_type, body) = send(req).await;
        assert_eq!(status, expected, "{body}");
        assert_eq!(content_type.as_deref(), Some("application/json"), "{status}");
        assert!(body["message"].is_string() || body["detail"].is_string(), "{status}: {body}");
    }
    // The per-call route keeps its own shape.
    let (_, _, body) = send(http.post(format!("{base}/api/v1/calls/1/webhook-logs"))).await;
    assert!(body["detail"].is_string(), "{body}");
    let (_, _, body) = send(http.delete(format!("{base}/v1/webhook-logs"))).await;
    assert_eq!(body["code"], 12, "{body}");
}

#[tokio::test]
async fn the_openapi_document_lists_every_error_status_and_parameter_format() {
    let app = spawn_app().await;
    let doc: serde_json::Value =
        reqwest::get(format!("{}/openapi.json", app.base_url)).await.unwrap().json().await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            let mut wanted = vec!["405", "414", "500", "503", "504"];
            if !["/healthz", "/readyz", "/metrics"].contains(&path.as_str()) {
                wanted.extend(["400", "401", "404", "413", "429"]);
            }
            for status in wanted {
                assert!(responses.contains_key(status), "{method} {path} does not document {status}");
            }
        }
    }
    let params = doc["paths"]["/v1/webhook-logs"]["get"]["parameters"].as_array().unwrap();
    let param = |name: &str| params.iter().find(|p| p["name"] == name).unwrap()["schema"].clone();
    assert_eq!(param("organizationId")["format"], "uuid");
    assert_eq!(param("createdAfter")["format"], "date-time");
    assert_eq!(param("pageSize")["minimum"], 0);
    assert_eq!(param("pageToken")["maxLength"], 8000);
}

#[tokio::test]
async fn a_failed_start_leaves_no_development_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = fresh_store(Backend::Sqlite).await;
    let mut config = test_config(&url);
    config.listen = taken.local_addr().unwrap();
    assert!(hookpost::Application::build(config).await.is_err(), "the port is taken");
    assert!(open_store(&url).await.list_api_keys().await.unwrap().is_empty(), "a key nobody saw was stored");
}

#[tokio::test]
async fn an_empty_webhook_type_means_any_type_on_the_per_call_route_as_on_grpc() {
    let app = spawn_app_with(|c| c.delivery.enabled = false).await;
    let mut req = dispatch_to("http://127.0.0.1:9/hook", uuid::Uuid::new_v4());
    req.call_id = Some(4242);
    app.dispatch(req).await.unwrap();
    let (status, all) = app.get_json("/api/v1/calls/4242/webhook-logs").await;
    assert_eq!(status, 200);
    let (status, empty_type) = app.get_json("/api/v1/calls/4242/webhook-logs?webhook_type=").await;
    assert_eq!((status, empty_type), (200, all.clone()));
    let listed = app
        .list(hookpost::proto::v1::ListWebhookLogsRequest { call_id: Some(4242), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(listed.logs.len(), all.as_array().unwrap().len());
}

#[tokio::test]
async fn every_caller_of_a_failed_batch_is_answered_and_nothing_half_stored() {
    let database_url = fresh_database().await;
    let proxy = DbProxy::start(&database_url).await;
    let mut config = test_config(&proxy.url(&database_url));
    config.db_acquire_timeout = Duration::from_millis(500);
    config.delivery.enabled = false;
    let app = spawn_app_on(config, &database_url).await;
    let org = uuid::Uuid::new_v4();
    proxy.cut();
    let calls = (0..24).map(|_| app.dispatch(dispatch_to("http://127.0.0.1:9/hook", org)));
    let answers = futures_util::future::join_all(calls).await;
    for a in &answers {
        assert_eq!(a.as_ref().unwrap_err().code(), tonic::Code::Unavailable, "{a:?}");
    }
    proxy.restore();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_requests WHERE organization_id = $1")
        .bind(org)
        .fetch_one(app.pg())
        .await
        .unwrap();
    assert_eq!(stored, 0, "a caller was told UNAVAILABLE about a stored webhook");
    let calls = (0..24).map(|_| app.dispatch(dispatch_to("http://127.0.0.1:9/hook", org)));
    for a in futures_util::future::join_all(calls).await {
        a.unwrap();
    }
}

#[tokio::test]
async fn paging_is_exact_across_logs_created_in_the_same_instant() {
    // Group commit gives a whole batch one created_at: paging must not skip
    // or repeat any of them.
    let app = spawn_app_with(|c| c.delivery.enabled = false).await;
    let org = uuid::Uuid::new_v4();
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(app.dispatch(dispatch_to("http://127.0.0.1:9/hook", org)).await.unwrap().request_id);
    }
    // Each delivery's message moves with it (they share a created_at).
    sqlx::query(
        "WITH t AS (SELECT min(created_at) AS t FROM webhook_requests WHERE organization_id = $1), \
         m AS (UPDATE webhook_messages SET created_at = t.t FROM t WHERE organization_id = $1) \
         UPDATE webhook_requests SET created_at = t.t FROM t WHERE organization_id = $1",
    )
    .bind(org)
    .execute(app.pg())
    .await
    .unwrap();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .list(hookpost::proto::v1::ListWebhookLogsRequest {
                organization_id: org.to_string(),
                page_size: 3,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap();
        seen.extend(page.logs.iter().map(|l| l.request_id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    ids.reverse();
    assert_eq!(seen, ids, "newest first, each once");
}
