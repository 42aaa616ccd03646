//! Read replicas (issue 17): a real streaming standby, made by
//! `pg_basebackup -R` from a throwaway primary, serves log reads; a read of
//! one's own fresh write still finds it; a stopped replica hands its reads to
//! the primary and health says so.

use std::time::Duration;

use hookpost::proto::v1 as pb;
use sqlx::Connection;
use tonic_health::pb::health_check_response::ServingStatus;
use uuid::Uuid;

use crate::helpers::*;

const SETTLE: Duration = Duration::from_secs(30);

fn of_org(org: Uuid) -> pb::ListWebhookLogsRequest {
    pb::ListWebhookLogsRequest { organization_id: org.to_string(), page_size: 50, ..Default::default() }
}

async fn listed(app: &TestApp, org: Uuid) -> Vec<String> {
    app.list(of_org(org)).await.unwrap().logs.into_iter().map(|l| l.request_id).collect()
}

async fn replica_sql(replica: &ThrowawayPostgres, sql: &str) {
    let mut conn = sqlx::PgConnection::connect(&replica.url()).await.unwrap();
    sqlx::query(sql).execute(&mut conn).await.unwrap();
}

/// Waits until the replica has replayed everything the primary has written.
async fn caught_up(primary: &ThrowawayPostgres, replica: &ThrowawayPostgres) {
    let mut p = sqlx::PgConnection::connect(&primary.url()).await.unwrap();
    let written: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text").fetch_one(&mut p).await.unwrap();
    eventually(SETTLE, "the replica to catch up", || async {
        let mut r = sqlx::PgConnection::connect(&replica.url()).await.ok()?;
        let behind: f64 = sqlx::query_scalar("SELECT pg_wal_lsn_diff($1::pg_lsn, pg_last_wal_replay_lsn())::float8")
            .bind(&written)
            .fetch_one(&mut r)
            .await
            .ok()?;
        (behind <= 0.0).then_some(())
    })
    .await;
}

/// Pauses the replica's replay and waits until it has paused.
async fn pause_replay(replica: &ThrowawayPostgres) {
    replica_sql(replica, "SELECT pg_wal_replay_pause()").await;
    eventually(SETTLE, "replay to pause", || async {
        let mut r = sqlx::PgConnection::connect(&replica.url()).await.ok()?;
        let state: String =
            sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()").fetch_one(&mut r).await.ok()?;
        (state == "paused").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_streaming_replica_serves_log_reads_and_the_primary_takes_over_when_it_stops() {
    let primary = ThrowawayPostgres::start();
    let replica = primary.replica();
    let mut config = test_config(&primary.url());
    config.read_database_urls = vec![replica.url()];
    // Paused on purpose below: not "too far behind" for this test.
    config.read_replica_max_lag = Duration::from_secs(3600);
    config.db_acquire_timeout = Duration::from_millis(500);
    let app = spawn_app_on(config, &primary.url()).await;
    let receiver = Receiver::start().await;
    let org = Uuid::new_v4();

    // Delivered and, once replayed, listed and detailed from the replica.
    let first = app.dispatch(dispatch_to(&receiver.url(), org)).await.unwrap();
    let settled = app.settled(&first.request_id, SETTLE).await;
    assert_eq!(settled.log.unwrap().execution_status(), pb::ExecutionStatus::Succeeded);
    eventually(SETTLE, "the replica to list the first webhook", || async {
        (listed(&app, org).await == [first.request_id.clone()]).then_some(())
    })
    .await;

    // With replay paused, the replica no longer sees new writes: a listing
    // (from the replica) does not show the next webhook, but its details
    // right after Dispatch do (the primary answers what the replica lacks).
    caught_up(&primary, &replica).await;
    pause_replay(&replica).await;
    let second = app.dispatch(dispatch_to(&receiver.url(), org)).await.unwrap();
    let details = app.details(&second.request_id).await.expect("details of one's own write");
    assert_eq!(details.log.unwrap().request_id, second.request_id);
    receiver.wait_for(2, SETTLE).await;
    assert_eq!(
        listed(&app, org).await,
        std::slice::from_ref(&first.request_id),
        "listings come from the (paused) replica"
    );

    // The live tail reads the replica too: a watch opened now starts from
    // the paused replica's horizon, so the second webhook's attempt (already
    // committed on the primary) reaches it once replay resumes.
    let watch = pb::WatchWebhookLogsRequest { organization_id: org.to_string(), ..Default::default() };
    let mut events = app.client.clone().watch_webhook_logs(app.authed(watch)).await.unwrap().into_inner();
    replica_sql(&replica, "SELECT pg_wal_replay_resume()").await;
    let event = tokio::time::timeout(SETTLE, events.message()).await.expect("an event in time").unwrap().unwrap();
    assert_eq!((event.kind.as_str(), event.log.unwrap().request_id), ("attempt", second.request_id.clone()));
    eventually(SETTLE, "the replica to list both", || async { (listed(&app, org).await.len() == 2).then_some(()) })
        .await;

    // The replica stops: reads go to the primary, health names it.
    let channel = tonic::transport::Channel::from_shared(app.base_url.clone()).unwrap().connect().await.unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = |service: &'static str, want: ServingStatus| {
        let mut h = health.clone();
        async move {
            let got = h.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.ok()?;
            (got.into_inner().status == want as i32).then_some(())
        }
    };
    eventually(SETTLE, "replicas SERVING", || status(hookpost::app::READ_REPLICAS_HEALTH, ServingStatus::Serving))
        .await;
    replica.stop_server();
    let third = app.dispatch(dispatch_to(&receiver.url(), org)).await.unwrap();
    app.settled(&third.request_id, SETTLE).await;
    let mut all = listed(&app, org).await;
    all.sort();
    let mut want = vec![first.request_id.clone(), second.request_id.clone(), third.request_id.clone()];
    want.sort();
    assert_eq!(all, want, "the primary answers the listing");
    eventually(SETTLE, "replicas NOT_SERVING", || {
        status(hookpost::app::READ_REPLICAS_HEALTH, ServingStatus::NotServing)
    })
    .await;
    assert!(status("", ServingStatus::Serving).await.is_some(), "the server itself stays SERVING");
    let ready = reqwest::get(format!("{}/readyz", app.base_url)).await.unwrap();
    assert_eq!(ready.status(), 200);
    let body = ready.text().await.unwrap();
    assert!(body.contains("read replica") && body.contains("unavailable"), "{body}");
    eventually(SETTLE, "the replica gauge at 0", || async {
        let metrics = reqwest::get(format!("{}/metrics", app.base_url)).await.ok()?.text().await.ok()?;
        metrics.lines().any(|l| l.starts_with("hookpost_read_replica_up{") && l.ends_with(" 0")).then_some(())
    })
    .await;

    // Back: once it has caught up, reads return to it (paused again, it
    // does not show a fourth webhook that the primary has).
    replica.start_server();
    eventually(SETTLE, "replicas SERVING again", || {
        status(hookpost::app::READ_REPLICAS_HEALTH, ServingStatus::Serving)
    })
    .await;
    caught_up(&primary, &replica).await;
    pause_replay(&replica).await;
    let fourth = app.dispatch(dispatch_to(&receiver.url(), org)).await.unwrap();
    app.settled(&fourth.request_id, SETTLE).await;
    assert_eq!(listed(&app, org).await.len(), 3, "the listing comes from the replica again");
}

#[tokio::test]
async fn a_replica_that_falls_behind_gets_no_reads_until_it_catches_up() {
    let primary = ThrowawayPostgres::start();
    let replica = primary.replica();
    let mut config = test_config(&primary.url());
    config.read_database_urls = vec![replica.url()];
    config.read_replica_max_lag = Duration::from_secs(1);
    let app = spawn_app_on(config, &primary.url()).await;
    let receiver = Receiver::start().await;
    let org = Uuid::new_v4();
    let channel = tonic::transport::Channel::from_shared(app.base_url.clone()).unwrap().connect().await.unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel);
    let replicas = |want: ServingStatus| {
        let mut h = health.clone();
        async move {
            let req = tonic_health::pb::HealthCheckRequest { service: hookpost::app::READ_REPLICAS_HEALTH.into() };
            (h.check(req).await.ok()?.into_inner().status == want as i32).then_some(())
        }
    };
    eventually(SETTLE, "replicas SERVING", || replicas(ServingStatus::Serving)).await;

    // Replay stops while the primary goes on writing: past the allowed lag
    // the replica is out, and the primary answers (the new webhook listed).
    caught_up(&primary, &replica).await;
    pause_replay(&replica).await;
    let sent = app.dispatch(dispatch_to(&receiver.url(), org)).await.unwrap();
    app.settled(&sent.request_id, SETTLE).await;
    eventually(SETTLE, "replicas NOT_SERVING", || replicas(ServingStatus::NotServing)).await;
    assert_eq!(listed(&app, org).await, std::slice::from_ref(&sent.request_id));

    // Replaying again, it catches up and is back.
    replica_sql(&replica, "SELECT pg_wal_replay_resume()").await;
    eventually(SETTLE, "replicas SERVING again", || replicas(ServingStatus::Serving)).await;
    assert_eq!(listed(&app, org).await, std::slice::from_ref(&sent.request_id));
}
