//! AIP-160 `filter` on ListWebhookLogs and WatchWebhookLogs: filtered lists
//! on both stores, paging under a filter, the watch, REST, errors naming the
//! position, and the Postgres plans of the common filters.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use hookpost::domain::LogFilter;
use hookpost::proto::v1 as pb;
use hookpost::service::ListQuery;
use uuid::Uuid;

use crate::helpers::*;

const SETTLE: Duration = Duration::from_secs(20);

/// Six logs of one organization, each settled before the next is sent:
/// name → request ID, plus the endpoint and workspace used.
struct Seeded {
    org: Uuid,
    ids: HashMap<&'static str, String>,
    endpoint: String,
    workspace: Uuid,
}

async fn seed(app: &TestApp) -> Seeded {
    let receiver = Receiver::start().await;
    let org = Uuid::new_v4();
    let workspace = Uuid::new_v4();
    let mut ids = HashMap::new();
    let base = |webhook_type: &str, call_id: Option<i64>| pb::DispatchRequest {
        webhook_type: webhook_type.into(),
        call_id,
        max_retries: Some(0),
        ..dispatch_to(&receiver.url(), org)
    };
    let sent: [(&str, pb::DispatchRequest, Reply); 5] = [
        ("started", base("call.started", Some(1)), Reply::ok()),
        ("ended_5xx", base("call.ended", Some(2)), Reply::status(503)),
        ("ended_4xx", base("call.ended", Some(3)), Reply::status(404)),
        (
            "unreachable",
            pb::DispatchRequest { webhook_url: "http://127.0.0.1:9/h".into(), ..base("message.sent", None) },
            Reply::ok(),
        ),
        (
            "underscore",
            pb::DispatchRequest { workspace_id: Some(workspace.to_string()), ..base("call_ended", Some(1)) },
            Reply::ok(),
        ),
    ];
    for (name, req, reply) in sent {
        receiver.script([reply]);
        let id = app.dispatch(req).await.unwrap().request_id;
        app.settled(&id, SETTLE).await;
        ids.insert(name, id);
    }
    // A paused endpoint's delivery: held, never attempted.
    let create = pb::CreateEndpointRequest {
        organization_id: org.to_string(),
        workspace_id: Uuid::new_v4().to_string(),
        endpoint: Some(pb::Endpoint { url: receiver.url(), ..Default::default() }),
    };
    let endpoint = app
        .client
        .clone()
        .create_endpoint(app.authed(create))
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap()
        .endpoint_id;
    let pause = pb::PauseEndpointRequest {
        organization_id: org.to_string(),
        endpoint_id: endpoint.clone(),
        ..Default::default()
    };
    app.client.clone().pause_endpoint(app.authed(pause)).await.unwrap();
    let held =
        pb::DispatchRequest { endpoint_id: endpoint.clone(), webhook_url: String::new(), ..base("call.held", None) };
    ids.insert("held", app.dispatch(held).await.unwrap().request_id);
    Seeded { org, ids, endpoint, workspace }
}

async fn filtered_lists_select_what_the_filter_says(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let s = seed(&app).await;
    let all = app
        .list(pb::ListWebhookLogsRequest { organization_id: s.org.to_string(), page_size: 100, ..Default::default() })
        .await
        .unwrap()
        .logs;
    assert_eq!(all.len(), 6);
    let time = |name: &str| {
        let log = all.iter().find(|l| l.request_id == s.ids[name]).unwrap();
        let t: chrono::DateTime<chrono::Utc> = log.created_at.unwrap().try_into().unwrap();
        t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    let (e, w) = (&s.endpoint, &s.workspace);
    let cases: Vec<(String, &[&str])> = vec![
        ("execution_status = FAILED".into(), &["ended_5xx", "ended_4xx", "unreachable"]),
        // Several statuses.
        (
            "execution_status = FAILED OR execution_status = HELD".into(),
            &["ended_5xx", "ended_4xx", "unreachable", "held"],
        ),
        ("executionStatus = EXECUTION_STATUS_SUCCEEDED".into(), &["started", "underscore"]),
        ("execution_status = FAILED AND error_category = \"http_5xx\"".into(), &["ended_5xx"]),
        ("error_category = connect".into(), &["unreachable"]),
        ("webhook_type = \"call.*\"".into(), &["started", "ended_5xx", "ended_4xx", "held"]),
        ("webhook_type = \"*\"".into(), &["started", "ended_5xx", "ended_4xx", "unreachable", "underscore", "held"]),
        ("NOT webhook_type = \"call.*\"".into(), &["unreachable", "underscore"]),
        ("webhook_type = call_ended".into(), &["underscore"]),
        ("http_status_code >= 400 AND http_status_code < 500".into(), &["ended_4xx"]),
        // Without an attempt (or a response) there is no status code: only != holds.
        ("http_status_code != 200".into(), &["ended_5xx", "ended_4xx", "unreachable", "held"]),
        ("call_id = 1".into(), &["started", "underscore"]),
        ("-call_id = 1".into(), &["ended_5xx", "ended_4xx", "unreachable", "held"]),
        ("call_id > 1".into(), &["ended_5xx", "ended_4xx"]),
        ("(call_id = 2 OR call_id = 3) AND NOT error_category = \"http_4xx\"".into(), &["ended_5xx"]),
        (
            format!("create_time >= \"{}\" AND create_time <= \"{}\"", time("ended_5xx"), time("unreachable")),
            &["ended_5xx", "ended_4xx", "unreachable"],
        ),
        (format!("create_time > \"{}\"", time("underscore")), &["held"]),
        (format!("create_time < \"{}\"", time("ended_5xx")), &["started"]),
        (format!("endpoint_id = {e}"), &["held"]),
        (format!("workspaceId = \"{w}\" OR endpointId = \"{e}\""), &["underscore", "held"]),
        (format!("subscription_id = {w}"), &[]),
    ];
    let names = |logs: &[pb::WebhookLog]| -> BTreeSet<&str> {
        logs.iter().map(|l| *s.ids.iter().find(|(_, id)| **id == l.request_id).unwrap().0).collect()
    };
    for (filter, expected) in &cases {
        let req = pb::ListWebhookLogsRequest {
            organization_id: s.org.to_string(),
            page_size: 100,
            filter: filter.clone(),
            ..Default::default()
        };
        let got = app.list(req).await.unwrap().logs;
        assert_eq!(names(&got), expected.iter().copied().collect(), "{filter}");
    }

    // ANDed with the request's own fields.
    let req = pb::ListWebhookLogsRequest {
        organization_id: s.org.to_string(),
        execution_status: pb::ExecutionStatus::Failed.into(),
        filter: "call_id = 2 OR call_id = 1".into(),
        ..Default::default()
    };
    assert_eq!(names(&app.list(req).await.unwrap().logs), BTreeSet::from(["ended_5xx"]));

    // Paging under a filter, newest first; the token is tied to the filter.
    let q = |token: String| pb::ListWebhookLogsRequest {
        organization_id: s.org.to_string(),
        page_size: 1,
        page_token: token,
        filter: "execution_status = FAILED OR webhook_type = \"call.held\"".into(),
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app.list(q(token)).await.unwrap();
        seen.extend(names(&page.logs));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
        let other = pb::ListWebhookLogsRequest { filter: "execution_status = FAILED".into(), ..q(token.clone()) };
        assert_eq!(violated_fields(&app.list(other).await.unwrap_err()), ["page_token"]);
    }
    assert_eq!(seen, ["held", "unreachable", "ended_4xx", "ended_5xx"]);
}

on_both_stores!(filtered_lists_select_what_the_filter_says, a_watch_streams_only_what_its_filter_matches);

#[tokio::test]
async fn a_bad_filter_is_invalid_argument_naming_the_position() {
    let app = spawn_app().await;
    let cases = [
        ("execution_status =", "filter: at 18: expected a value after '='"),
        ("status = FAILED", "filter: at 0: unknown field 'status'"),
        ("call_id > \"x\"", "filter: at 10: call_id: \"x\" is not an integer"),
        ("execution_status < FAILED", "filter: at 17: 'execution_status' takes only = and !="),
    ];
    for (filter, message) in cases {
        let req = pb::ListWebhookLogsRequest { filter: filter.into(), ..Default::default() };
        let err = app.list(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{filter}");
        assert_eq!(violated_fields(&err), ["filter"]);
        assert!(err.message().starts_with(message), "{filter}: {}", err.message());
    }
    let long = pb::ListWebhookLogsRequest { filter: "call_id = 1 OR ".repeat(200), ..Default::default() };
    assert_eq!(violated_fields(&app.list(long).await.unwrap_err()), ["filter"]);
}

#[tokio::test]
async fn filter_is_a_rest_query_parameter() {
    let app = spawn_app().await;
    let s = seed(&app).await;
    let enc = |f: &str| url::form_urlencoded::byte_serialize(f.as_bytes()).collect::<String>();
    let filter = enc("execution_status = FAILED AND (http_status_code >= 500 OR error_category = \"connect\")");
    let (status, body) = app.get_json(&format!("/v1/webhook-logs?organizationId={}&filter={filter}", s.org)).await;
    assert_eq!(status, 200, "{body}");
    let got: BTreeSet<&str> =
        body["logs"].as_array().unwrap().iter().map(|l| l["requestId"].as_str().unwrap()).collect();
    assert_eq!(got, BTreeSet::from([s.ids["ended_5xx"].as_str(), s.ids["unreachable"].as_str()]));

    let (status, body) = app.get_json(&format!("/v1/webhook-logs?filter={}", enc("call_id = 1 AND"))).await;
    assert_eq!(status, 400, "{body}");
    let violation = &body["details"][0]["fieldViolations"][0];
    assert_eq!(violation["field"], "filter");
    assert_eq!(violation["description"], "at 15: expected a field name, '(' or NOT, found the end of the filter");
}

async fn a_watch_streams_only_what_its_filter_matches(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    let org = Uuid::new_v4();
    let watch = |filter: &str| pb::WatchWebhookLogsRequest {
        organization_id: org.to_string(),
        filter: filter.into(),
        ..Default::default()
    };
    let bad = app.client.clone().watch_webhook_logs(app.authed(watch("call_id = "))).await.unwrap_err();
    assert_eq!(violated_fields(&bad), ["filter"]);

    let req = watch("webhook_type = \"call.*\" AND NOT http_status_code = 200");
    let mut events = app.client.clone().watch_webhook_logs(app.authed(req)).await.unwrap().into_inner();
    let send = |webhook_type: &str| pb::DispatchRequest {
        webhook_type: webhook_type.into(),
        max_retries: Some(0),
        ..dispatch_to(&receiver.url(), org)
    };
    // Neither of these matches: another type, and a 200.
    receiver.script([Reply::ok(), Reply::ok()]);
    let other_type = app.dispatch(send("message.sent")).await.unwrap().request_id;
    app.settled(&other_type, SETTLE).await;
    let ok = app.dispatch(send("call.started")).await.unwrap().request_id;
    app.settled(&ok, SETTLE).await;
    receiver.script([Reply::status(503)]);
    let failed = app.dispatch(send("call.ended")).await.unwrap().request_id;

    let first = tokio::time::timeout(SETTLE, events.message()).await.expect("an event in time").unwrap().unwrap();
    let log = first.log.unwrap();
    assert_eq!((log.request_id.as_str(), log.http_status_code), (failed.as_str(), Some(503)));
}

/// Postgres plans of the common filters, over enough rows that the planner
/// has a choice (200,000 deliveries of 10 organizations, 2% failed): each
/// must be an index scan on the index that fits, in the listing's order (no
/// sort, no sequential scan of the deliveries).
#[tokio::test]
async fn the_common_filters_are_index_range_scans_on_postgres() {
    let app = spawn_app_with(|c| c.delivery.enabled = false).await;
    let orgs: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();
    sqlx::query(
        "WITH v AS (SELECT g, gen_random_uuid() AS id, ($1::uuid[])[1 + (g / 7) % 10] AS org, \
             now() - g * interval '100 microseconds' AS t FROM generate_series(1, 200000) g), \
         m AS (INSERT INTO webhook_messages (message_id, organization_id, webhook_type, body, created_at) \
           SELECT id, org, 'call.ended', '{}', t FROM v) \
         INSERT INTO webhook_requests (request_id, message_id, organization_id, call_id, webhook_url, webhook_type, \
           max_retries, status, attempt_count, created_at, updated_at) \
         SELECT id, id, org, CASE WHEN g % 3 = 0 THEN g / 3 END, 'http://127.0.0.1:9/h', 'call.ended', 0, \
           CASE g % 50 WHEN 1 THEN 'failed' WHEN 2 THEN 'held' ELSE 'succeeded' END, 1, t, t FROM v",
    )
    .bind(&orgs)
    .execute(app.pg())
    .await
    .unwrap();
    sqlx::query("ANALYZE").execute(app.pg()).await.unwrap();
    // The day partitions that hold the rows: the empty ones (days ahead) are
    // scanned however is cheapest for an empty table.
    let filled: Vec<String> = sqlx::query_scalar("SELECT DISTINCT tableoid::regclass::text FROM webhook_requests")
        .fetch_all(app.pg())
        .await
        .unwrap();

    // Half the rows' time span, from the rows themselves: from the clock, the
    // share would shrink with however long the insert took on a busy machine,
    // and with it the plan.
    let since: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT max(created_at) - interval '10 seconds' FROM webhook_requests")
            .fetch_one(app.pg())
            .await
            .unwrap();
    let since = since.to_rfc3339();
    // (filter, the index, whether the page comes in index order). A call's
    // few deliveries may be sorted after the index finds them.
    let cases = [
        (format!("execution_status = FAILED AND create_time > \"{since}\""), "status", true),
        // The extra predicate is checked on the rows of the same scan.
        (
            format!("execution_status = FAILED AND create_time > \"{since}\" AND http_status_code >= 500"),
            "status",
            true,
        ),
        ("call_id = 5".to_string(), "call_id", false),
        ("call_id = 5 AND (webhook_type = \"call.*\" OR NOT http_status_code = 200)".to_string(), "call_id", false),
    ];
    for (filter, index, ordered) in cases {
        let req = pb::ListWebhookLogsRequest { organization_id: orgs[0].to_string(), filter, ..Default::default() };
        let q = ListQuery::try_from(req.clone()).unwrap();
        let plan = explain(&app, &q.filter).await;
        let scans = scans_of(&plan["Plan"]);
        let deliveries: Vec<_> = scans.iter().filter(|(_, rel, _)| filled.contains(rel)).collect();
        assert!(!deliveries.is_empty(), "{}: {plan:#}", req.filter);
        for (kind, rel, idx) in deliveries {
            assert!(kind == "Index Scan" && idx.contains(index), "{}: {kind} on {rel} ({idx})\n{plan:#}", req.filter);
        }
        assert!(!ordered || !sorts(&plan["Plan"], &filled), "{}: {plan:#}", req.filter);
    }
}

async fn explain(app: &TestApp, f: &LogFilter) -> serde_json::Value {
    let mut q = hookpost::store::postgres::list_logs_query("EXPLAIN (FORMAT JSON) ", f, None, 10);
    let plan: serde_json::Value = q.build_query_scalar().fetch_one(app.pg()).await.unwrap();
    plan[0].clone()
}

/// (node type, relation, index) of every scan in a plan.
fn scans_of(node: &serde_json::Value) -> Vec<(String, String, String)> {
    let s = |k: &str| node[k].as_str().unwrap_or_default().to_string();
    let mut out = Vec::new();
    if s("Node Type").contains("Scan") {
        out.push((s("Node Type"), s("Relation Name"), s("Index Name")));
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        out.extend(scans_of(child));
    }
    out
}

/// Whether a Sort sits above a scan of these partitions (the listing's
/// order should come from the index).
fn sorts(node: &serde_json::Value, partitions: &[String]) -> bool {
    let sorted = node["Node Type"] == "Sort" && scans_of(node).iter().any(|(_, rel, _)| partitions.contains(rel));
    sorted || node["Plans"].as_array().into_iter().flatten().any(|child| sorts(child, partitions))
}
