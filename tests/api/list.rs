use std::collections::HashSet;
use std::time::Duration;

use hookpost::proto::v1 as pb;
use uuid::Uuid;

use crate::helpers::*;

/// Dispatches to a closed loopback port with no retries, so each log settles
/// as failed without anything listening.
fn quiet(org: Uuid) -> pb::DispatchRequest {
    pb::DispatchRequest { max_retries: Some(0), ..dispatch_to("http://127.0.0.1:9/hook", org) }
}

#[tokio::test]
async fn paging_through_25_logs_has_no_duplicates_or_gaps() {
    let app = spawn_app().await;
    let org = Uuid::new_v4();
    let mut dispatched = Vec::new();
    for _ in 0..25 {
        dispatched.push(app.dispatch(quiet(org)).await.unwrap().request_id);
    }
    // Noise from another organization must not appear.
    app.dispatch(quiet(Uuid::new_v4())).await.unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = app
            .list(pb::ListWebhookLogsRequest {
                organization_id: org.to_string(),
                page_size: 10,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        pages += 1;
        seen.extend(page.logs.iter().map(|l| l.request_id.clone()));
        if page.next_page_token.is_empty() {
            assert_eq!(page.logs.len(), 5);
            break;
        }
        assert_eq!(page.logs.len(), 10);
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    dispatched.reverse(); // newest first
    assert_eq!(seen, dispatched);
}

#[tokio::test]
async fn page_size_defaults_to_10_and_is_coerced_to_100() {
    let app = spawn_app().await;
    let org = Uuid::new_v4();
    for _ in 0..12 {
        app.dispatch(quiet(org)).await.unwrap();
    }
    let list = |page_size| {
        app.list(pb::ListWebhookLogsRequest { organization_id: org.to_string(), page_size, ..Default::default() })
    };
    assert_eq!(list(0).await.unwrap().logs.len(), 10);
    let all = list(1000).await.unwrap();
    assert_eq!(all.logs.len(), 12);
    assert!(all.next_page_token.is_empty());
    let err = list(-1).await.unwrap_err();
    assert_eq!(violated_fields(&err), ["page_size"]);
}

#[tokio::test]
async fn every_filter_narrows_the_listing() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let (org, ws, sub) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let base = || dispatch_to(&receiver.url(), org);
    let plain = app.dispatch(base()).await.unwrap().request_id;
    let in_ws = app.dispatch(pb::DispatchRequest { workspace_id: Some(ws.to_string()), ..base() }).await.unwrap();
    let in_sub = app
        .dispatch(pb::DispatchRequest {
            workspace_id: Some(ws.to_string()),
            subscription_id: Some(sub.to_string()),
            ..base()
        })
        .await
        .unwrap();
    let on_call = app.dispatch(pb::DispatchRequest { call_id: Some(101), ..base() }).await.unwrap();
    let ended = app.dispatch(pb::DispatchRequest { webhook_type: "call_ended".into(), ..base() }).await.unwrap();
    let failed = app.dispatch(quiet(org)).await.unwrap();
    for id in [&plain, &in_ws.request_id, &in_sub.request_id, &on_call.request_id, &ended.request_id] {
        app.settled(id, Duration::from_secs(10)).await;
    }
    app.settled(&failed.request_id, Duration::from_secs(10)).await;

    let ids = |r: pb::ListWebhookLogsResponse| r.logs.into_iter().map(|l| l.request_id).collect::<HashSet<_>>();
    let q = || pb::ListWebhookLogsRequest { organization_id: org.to_string(), page_size: 100, ..Default::default() };
    let set = |v: &[&String]| v.iter().map(|s| s.to_string()).collect::<HashSet<_>>();

    assert_eq!(ids(app.list(q()).await.unwrap()).len(), 6);
    let by_ws = app.list(pb::ListWebhookLogsRequest { workspace_id: Some(ws.to_string()), ..q() }).await.unwrap();
    assert_eq!(ids(by_ws), set(&[&in_ws.request_id, &in_sub.request_id]));
    let by_sub = app.list(pb::ListWebhookLogsRequest { subscription_id: Some(sub.to_string()), ..q() }).await.unwrap();
    assert_eq!(ids(by_sub), set(&[&in_sub.request_id]));
    let by_call = app.list(pb::ListWebhookLogsRequest { call_id: Some(101), ..q() }).await.unwrap();
    assert_eq!(ids(by_call), set(&[&on_call.request_id]));
    let by_type = app.list(pb::ListWebhookLogsRequest { webhook_type: "call_ended".into(), ..q() }).await.unwrap();
    assert_eq!(ids(by_type), set(&[&ended.request_id]));
    let by_status = app
        .list(pb::ListWebhookLogsRequest { execution_status: pb::ExecutionStatus::Failed.into(), ..q() })
        .await
        .unwrap();
    assert_eq!(ids(by_status), set(&[&failed.request_id]));
    let succeeded = app
        .list(pb::ListWebhookLogsRequest { execution_status: pb::ExecutionStatus::Succeeded.into(), ..q() })
        .await
        .unwrap();
    assert_eq!(succeeded.logs.len(), 5);
    assert!(succeeded.logs.iter().all(|l| l.http_status_code == Some(200) && l.attempt_count == 1));
    let other_org =
        app.list(pb::ListWebhookLogsRequest { organization_id: Uuid::new_v4().to_string(), ..q() }).await.unwrap();
    assert!(other_org.logs.is_empty());

    // Time range: created_after is inclusive, created_before exclusive.
    let all = app.list(q()).await.unwrap().logs;
    let newest = all[0].created_at.unwrap();
    let oldest = all[5].created_at.unwrap();
    let after = app.list(pb::ListWebhookLogsRequest { created_after: Some(newest), ..q() }).await.unwrap();
    assert_eq!(after.logs.len(), 1);
    let before = app.list(pb::ListWebhookLogsRequest { created_before: Some(newest), ..q() }).await.unwrap();
    assert_eq!(before.logs.len(), 5);
    let window = app
        .list(pb::ListWebhookLogsRequest { created_after: Some(oldest), created_before: Some(newest), ..q() })
        .await
        .unwrap();
    assert_eq!(window.logs.len(), 5);
}

#[tokio::test]
async fn bad_tokens_and_filters_are_invalid_argument() {
    let app = spawn_app().await;
    let org = Uuid::new_v4();
    for _ in 0..3 {
        app.dispatch(quiet(org)).await.unwrap();
    }
    let q = || pb::ListWebhookLogsRequest { organization_id: org.to_string(), page_size: 1, ..Default::default() };
    let token = app.list(q()).await.unwrap().next_page_token;
    assert!(!token.is_empty());

    let mut tampered = token.clone().into_bytes();
    tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
    let bad_tokens =
        ["garbage!".to_string(), String::from_utf8(tampered).unwrap(), "A".repeat(8001), format!("{token}AA")];
    for bad in bad_tokens {
        let err = app.list(pb::ListWebhookLogsRequest { page_token: bad.clone(), ..q() }).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
        assert_eq!(violated_fields(&err), ["page_token"]);
    }
    // A token reused with other filters.
    let err = app
        .list(pb::ListWebhookLogsRequest {
            page_token: token.clone(),
            execution_status: pb::ExecutionStatus::Failed.into(),
            ..q()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["page_token"]);
    // The genuine token still works.
    assert_eq!(app.list(pb::ListWebhookLogsRequest { page_token: token, ..q() }).await.unwrap().logs.len(), 1);

    let err = app
        .list(pb::ListWebhookLogsRequest {
            organization_id: "x".into(),
            subscription_id: Some("y".into()),
            execution_status: 42,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["execution_status", "organization_id", "subscription_id"]);
}

#[tokio::test]
async fn log_details_of_unknown_malformed_or_out_of_scope_requests() {
    let app = spawn_app().await;
    let org = Uuid::new_v4();
    let res = app.dispatch(quiet(org)).await.unwrap();

    let missing_id = Uuid::new_v4().to_string();
    let missing = app.details(&missing_id).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let err = app.details("101").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(violated_fields(&err), ["request_id"]);
    let err = app.details("").await.unwrap_err();
    assert_eq!(violated_fields(&err), ["request_id"]);

    let scoped = |organization_id: Uuid| pb::GetLogDetailsRequest {
        request_id: res.request_id.clone(),
        organization_id: organization_id.to_string(),
        ..Default::default()
    };
    let mut client = app.client.clone();
    let found = client.get_log_details(app.authed(scoped(org))).await.unwrap().into_inner();
    assert_eq!(found.log.unwrap().request_id, res.request_id);
    let hidden = client.get_log_details(app.authed(scoped(Uuid::new_v4()))).await.unwrap_err();
    assert_eq!(hidden.code(), tonic::Code::NotFound);
    // The same answer as for a request that does not exist, but for the ID.
    assert_eq!(hidden.message().replace(&res.request_id, "X"), missing.message().replace(&missing_id, "X"));
}

/// hookpost reads timestamps from Postgres' binary form itself (not through
/// sqlx's chrono decoding, which cost about 2.5 times as much): what a page
/// and the details show must be what Postgres holds, to the microsecond.
#[tokio::test]
async fn listed_times_are_the_stored_times_to_the_microsecond() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(500)]);
    let org = Uuid::new_v4();
    // An expiration, so that the optional expire_time is set too.
    let ttl = pb::dispatch_request::Expiration::Ttl(pbjson_types::Duration { seconds: 3600, nanos: 0 });
    let req = pb::DispatchRequest { max_retries: Some(0), expiration: Some(ttl), ..dispatch_to(&receiver.url(), org) };
    let id = app.dispatch(req).await.unwrap().request_id;
    let details = app.settled(&id, Duration::from_secs(10)).await;
    let page = app.list(pb::ListWebhookLogsRequest { organization_id: org.to_string(), ..Default::default() }).await;
    let listed = page.unwrap().logs.remove(0);

    type Times = (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>, Option<chrono::DateTime<chrono::Utc>>);
    let (created, updated, expires): Times =
        sqlx::query_as("SELECT created_at, updated_at, expires_at FROM webhook_requests WHERE request_id = $1")
            .bind(Uuid::parse_str(&id).unwrap())
            .fetch_one(app.pg())
            .await
            .unwrap();
    let attempted: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT a.attempted_at FROM webhook_attempts a JOIN webhook_requests r \
         ON a.request_pk = r.id AND a.request_created_at = r.created_at WHERE r.request_id = $1",
    )
    .bind(Uuid::parse_str(&id).unwrap())
    .fetch_one(app.pg())
    .await
    .unwrap();
    let ts = |t: chrono::DateTime<chrono::Utc>| {
        Some(pbjson_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 })
    };
    for log in [&listed, details.log.as_ref().unwrap()] {
        assert_eq!(log.created_at, ts(created), "{log:?}");
        assert_eq!(log.updated_at, ts(updated), "{log:?}");
        assert!(expires.is_some());
        assert_eq!(log.expire_time, expires.and_then(ts), "{log:?}");
        assert_eq!(log.last_attempted_at, ts(attempted), "{log:?}");
    }
    assert_eq!(details.attempts[0].created_at, ts(attempted));
}
