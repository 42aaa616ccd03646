//! GetEndpointStats, the read API behind the console's pictures: an
//! endpoint's last 24 hours hour by hour and its queue, on both stores, over
//! REST and gRPC; another organization's endpoint answers like a missing one.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use hookpost::auth::KeyKind;
use hookpost::proto::v1 as pb;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::*;

const SETTLE: Duration = Duration::from_secs(20);

fn stats_path(org: Uuid, ws: Uuid, endpoint_id: &str) -> String {
    format!("/organizations/{org}/workspaces/{ws}/webhook-subscriptions/{endpoint_id}/stats")
}

fn int(v: &Value) -> i64 {
    v.as_str().map_or_else(|| v.as_i64().unwrap_or(0), |s| s.parse().unwrap())
}

/// The nearest-rank percentile of `times` (sorted), as percentile_disc.
fn nearest(times: &[i64], percent: usize) -> i64 {
    let rank = (times.len() * percent).div_ceil(100).max(1);
    times[rank - 1]
}

async fn endpoint_stats_show_the_last_day_and_the_queue(backend: Backend) {
    let app = spawn_app_on_backend(backend, |_| {}).await;
    let mut client = app.client.clone();
    let receiver = Receiver::start().await;
    let (org, ws) = (Uuid::new_v4(), Uuid::new_v4());
    let mut e = endpoint(&receiver.url(), &[]);
    // A failed first attempt is retried an hour later: pending meanwhile.
    e.policy = Some(pb::DeliveryPolicy {
        max_retries: Some(1),
        retry_schedule: vec![pbjson_types::Duration { seconds: 3600, nanos: 0 }],
        ..Default::default()
    });
    let create =
        pb::CreateEndpointRequest { organization_id: org.to_string(), workspace_id: ws.to_string(), endpoint: Some(e) };
    let endpoint_id =
        client.create_endpoint(app.authed(create)).await.unwrap().into_inner().endpoint.unwrap().endpoint_id;

    // Nothing yet: 24 empty hours and an empty queue.
    let (status, empty) = app.get_json(&stats_path(org, ws, &endpoint_id)).await;
    assert_eq!(status, 200, "{empty}");
    let buckets = empty["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 24);
    assert!(buckets.iter().all(|b| int(&b["attempts"]) == 0 && b.get("p50ResponseTimeMs").is_none()), "{empty}");
    assert!(empty.get("oldestPendingCreateTime").is_none(), "{empty}");

    receiver.script([Reply::ok().after(Duration::from_millis(60)), Reply::ok(), Reply::status(500)]);
    let dispatch = |n: u32| pb::DispatchRequest {
        organization_id: org.to_string(),
        endpoint_id: endpoint_id.clone(),
        webhook_type: format!("stats.{n}"),
        ..Default::default()
    };
    let mut ids = Vec::new();
    for n in 0..2 {
        let id = app.dispatch(dispatch(n)).await.unwrap().request_id;
        app.settled(&id, SETTLE).await;
        ids.push(id);
    }
    // A log names its endpoint and its message, the webhook-id it was sent with.
    let (_, details) = app.get_json(&format!("/v1/webhook-logs/{}", ids[0])).await;
    assert_eq!(details["log"]["endpointId"], endpoint_id.as_str(), "{details}");
    let sent = &receiver.received()[0];
    assert_eq!(details["log"]["messageId"], sent.headers["webhook-id"].to_str().unwrap(), "{details}");
    let over_grpc = app.details(&ids[0]).await.unwrap().log.unwrap();
    assert_eq!(
        (over_grpc.endpoint_id.as_str(), over_grpc.message_id.as_str()),
        (endpoint_id.as_str(), sent.headers["webhook-id"].to_str().unwrap())
    );
    let failing = app.dispatch(dispatch(2)).await.unwrap().request_id;
    let failing_log = eventually(SETTLE, "the first attempt of the failing delivery", || async {
        let d = app.details(&failing).await.ok()?;
        (d.attempts.len() == 1).then_some(d.log.unwrap())
    })
    .await;
    ids.push(failing);
    // A paused endpoint holds what comes next.
    let pause = pb::PauseEndpointRequest {
        organization_id: org.to_string(),
        endpoint_id: endpoint_id.clone(),
        ..Default::default()
    };
    client.pause_endpoint(app.authed(pause)).await.unwrap();
    app.dispatch(dispatch(3)).await.unwrap();

    // What the stats must say, from the attempts themselves.
    let mut by_hour: BTreeMap<DateTime<Utc>, (i64, i64, Vec<i64>)> = BTreeMap::new();
    for id in &ids {
        for a in app.details(id).await.unwrap().attempts {
            let at = DateTime::<Utc>::try_from(a.created_at.unwrap()).unwrap();
            let hour = by_hour.entry(at.duration_trunc(TimeDelta::hours(1)).unwrap()).or_default();
            hour.0 += 1;
            hour.1 += i64::from(a.execution_status() == pb::ExecutionStatus::Succeeded);
            hour.2.push(a.response_time_ms);
        }
    }
    assert_eq!(by_hour.values().map(|h| h.0).sum::<i64>(), 3);

    let (status, got) = app.get_json(&stats_path(org, ws, &endpoint_id)).await;
    assert_eq!(status, 200, "{got}");
    let buckets = got["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 24);
    let start = DateTime::parse_from_rfc3339(got["startTime"].as_str().unwrap()).unwrap().to_utc();
    let end = DateTime::parse_from_rfc3339(got["endTime"].as_str().unwrap()).unwrap().to_utc();
    assert_eq!(end - start, TimeDelta::hours(24));
    assert!(end > Utc::now() && end - Utc::now() <= TimeDelta::hours(1), "{got}");
    for (i, b) in buckets.iter().enumerate() {
        let at = DateTime::parse_from_rfc3339(b["startTime"].as_str().unwrap()).unwrap().to_utc();
        assert_eq!(at, start + TimeDelta::hours(i as i64), "{b}");
        match by_hour.get_mut(&at) {
            None => assert_eq!((int(&b["attempts"]), b.get("p99ResponseTimeMs")), (0, None), "{b}"),
            Some((attempts, successes, times)) => {
                times.sort();
                assert_eq!((int(&b["attempts"]), int(&b["successes"])), (*attempts, *successes), "{b}");
                assert_eq!(int(&b["p50ResponseTimeMs"]), nearest(times, 50), "{b}");
                assert_eq!(int(&b["p99ResponseTimeMs"]), nearest(times, 99), "{b}");
            }
        }
    }
    assert_eq!((int(&got["pendingCount"]), int(&got["heldCount"])), (1, 1), "{got}");
    let oldest = DateTime::parse_from_rfc3339(got["oldestPendingCreateTime"].as_str().unwrap()).unwrap().to_utc();
    let created = DateTime::<Utc>::try_from(failing_log.created_at.unwrap()).unwrap();
    assert_eq!(oldest, created);

    // gRPC answers the same.
    let request = pb::GetEndpointStatsRequest {
        organization_id: org.to_string(),
        endpoint_id: endpoint_id.clone(),
        ..Default::default()
    };
    let over_grpc = client.get_endpoint_stats(app.authed(request.clone())).await.unwrap().into_inner();
    assert_eq!(over_grpc.buckets.len(), 24);
    assert_eq!(over_grpc.buckets.iter().map(|b| b.attempts).sum::<i64>(), 3);
    assert_eq!((over_grpc.pending_count, over_grpc.held_count), (1, 1));

    // Another organization's endpoint answers exactly like a missing one.
    let missing = Uuid::new_v4().to_string();
    let (status, nothing) = app.get_json(&stats_path(org, ws, &missing)).await;
    assert_eq!(status, 404, "{nothing}");
    let other_org = Uuid::new_v4();
    let (status, foreign) = app.get_json(&stats_path(other_org, ws, &endpoint_id)).await;
    assert_eq!(status, 404, "{foreign}");
    assert_eq!(foreign["message"], nothing["message"].as_str().unwrap().replace(&missing, &endpoint_id));
    let org_key = app.create_key(KeyKind::Organization(other_org)).await;
    let (status, as_other) = app.get_json_as(&stats_path(org, ws, &endpoint_id), Some(&org_key)).await;
    assert_eq!((status, &as_other), (404, &foreign));
    let grpc_other = client.get_endpoint_stats(with_key(request, &org_key)).await.unwrap_err();
    assert_eq!(grpc_other.code(), tonic::Code::NotFound);
    // So does one of another workspace, on these per-workspace routes.
    let (status, _) = app.get_json(&stats_path(org, Uuid::new_v4(), &endpoint_id)).await;
    assert_eq!(status, 404);
    let (status, _) = app.get_json(&stats_path(org, ws, "not-a-uuid")).await;
    assert_eq!(status, 400);
}

on_both_stores!(endpoint_stats_show_the_last_day_and_the_queue);
