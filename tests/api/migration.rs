//! Data written before the message table existed (one row per delivery,
//! each carrying its body) keeps answering after the migration: every old
//! request ID on every route, idempotent retries of an old fan-out, and
//! pending deliveries, which go out with their exact body.

use std::borrow::Cow;
use std::time::Duration;

use hookpost::proto::v1 as pb;
use sqlx::migrate::Migrator;
use uuid::Uuid;

use crate::helpers::*;

/// The last migration before messages had their own table.
const BEFORE_MESSAGES: i64 = 20261126000004;

/// Applies the migrations up to and including `BEFORE_MESSAGES`.
async fn migrate_to_before_messages(dir: &str, run: impl AsyncFnOnce(Migrator)) {
    let mut m = Migrator::new(std::path::Path::new(dir)).await.unwrap();
    m.migrations = Cow::Owned(m.migrations.iter().filter(|m| m.version <= BEFORE_MESSAGES).cloned().collect());
    run(m).await;
}

struct Old {
    org: Uuid,
    single: Uuid,
    fan: [Uuid; 2],
    fan_message: Uuid,
    pending: Uuid,
}

const SINGLE_BODY: &str = r#"{"event":"call_ended","n":1}"#;
const FAN_BODY: &str = r#"{"event":"call_started","fan":true}"#;
const PENDING_BODY: &str = r#"{"event":"call_started","pending":true}"#;

async fn seed_postgres(url: &str, receiver: &str) -> Old {
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(url).await.unwrap();
    migrate_to_before_messages("migrations/postgres", async |m| m.run(&pool).await.unwrap()).await;
    let old = Old {
        org: Uuid::new_v4(),
        single: Uuid::new_v4(),
        fan: [Uuid::new_v4(), Uuid::new_v4()],
        fan_message: Uuid::new_v4(),
        pending: Uuid::new_v4(),
    };
    let insert = "INSERT INTO webhook_requests (request_id, message_id, organization_id, call_id, assistant_id, \
         webhook_url, webhook_type, body, metadata, idempotency_key, max_retries, status, attempt_count, \
         next_attempt_at, created_at, updated_at, queue_key) \
         VALUES ($1, $2, $3, 55, 7, $4, $5, $6, '{\"k\": \"v\"}', $7, 3, $8, $9, \
           CASE WHEN $8 = 'pending' THEN now() END, $10, $10, 'h:old') RETURNING id";
    let at = chrono::Utc::now() - chrono::TimeDelta::minutes(5);
    let single: i64 = sqlx::query_scalar(insert)
        .bind(old.single)
        .bind(old.single)
        .bind(old.org)
        .bind("http://127.0.0.1:9/old")
        .bind("call_ended")
        .bind(SINGLE_BODY)
        .bind(None::<&str>)
        .bind("succeeded")
        .bind(1)
        .bind(at)
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO webhook_attempts (request_pk, request_created_at, attempt_number, attempted_at, success, \
           status_code, response_body, response_time_ms) VALUES ($1, $2, 1, $2, true, 200, 'ok', 5)",
    )
    .bind(single)
    .bind(at)
    .execute(&pool)
    .await
    .unwrap();
    // A fan-out: one transaction, so one created_at; the key on the first.
    let fan_at = at + chrono::TimeDelta::seconds(1);
    for (i, id) in old.fan.iter().enumerate() {
        let log_id: i64 = sqlx::query_scalar(insert)
            .bind(id)
            .bind(old.fan_message)
            .bind(old.org)
            .bind("http://127.0.0.1:9/fan")
            .bind("call_started")
            .bind(FAN_BODY)
            .bind((i == 0).then_some("old-key"))
            .bind("failed")
            .bind(0)
            .bind(fan_at)
            .fetch_one(&pool)
            .await
            .unwrap();
        if i == 0 {
            sqlx::query(
                "INSERT INTO idempotency_keys (organization_id, idempotency_key, request_id, log_id, created_at, \
                   message_id) VALUES ($1, 'old-key', $2, $3, $4, $5)",
            )
            .bind(old.org)
            .bind(id)
            .bind(log_id)
            .bind(fan_at)
            .bind(old.fan_message)
            .execute(&pool)
            .await
            .unwrap();
        }
    }
    sqlx::query_scalar::<_, i64>(insert)
        .bind(old.pending)
        .bind(old.pending)
        .bind(old.org)
        .bind(receiver)
        .bind("call_started")
        .bind(PENDING_BODY)
        .bind(None::<&str>)
        .bind("pending")
        .bind(0)
        .bind(at)
        .fetch_one(&pool)
        .await
        .unwrap();
    old
}

/// request ID, message ID, URL, type, body, key, status, attempts, created.
type OldRow<'a> = (Uuid, Uuid, &'a str, &'a str, &'a str, Option<&'a str>, &'a str, i32, i64);

async fn seed_sqlite(url: &str, receiver: &str) -> Old {
    let options: sqlx::sqlite::SqliteConnectOptions = url.parse::<sqlx::sqlite::SqliteConnectOptions>().unwrap();
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options.create_if_missing(true))
        .await
        .unwrap();
    migrate_to_before_messages("migrations/sqlite", async |m| m.run(&pool).await.unwrap()).await;
    let old = Old {
        org: Uuid::new_v4(),
        single: Uuid::new_v4(),
        fan: [Uuid::new_v4(), Uuid::new_v4()],
        fan_message: Uuid::new_v4(),
        pending: Uuid::new_v4(),
    };
    let insert = "INSERT INTO webhook_requests (request_id, message_id, organization_id, call_id, assistant_id, \
         webhook_url, webhook_type, body, metadata, idempotency_key, max_retries, status, attempt_count, \
         next_attempt_at, created_at, updated_at, queue_key) \
         VALUES (?1, ?2, ?3, 55, 7, ?4, ?5, ?6, '{\"k\": \"v\"}', ?7, 3, ?8, ?9, \
           CASE WHEN ?8 = 'pending' THEN ?10 END, ?10, ?10, 'h:old') RETURNING id";
    let at = (chrono::Utc::now() - chrono::TimeDelta::minutes(5)).timestamp_micros();
    let rows: [OldRow; 4] = [
        (old.single, old.single, "http://127.0.0.1:9/old", "call_ended", SINGLE_BODY, None, "succeeded", 1, at),
        (
            old.fan[0],
            old.fan_message,
            "http://127.0.0.1:9/fan",
            "call_started",
            FAN_BODY,
            Some("old-key"),
            "failed",
            0,
            at + 1_000_000,
        ),
        (
            old.fan[1],
            old.fan_message,
            "http://127.0.0.1:9/fan",
            "call_started",
            FAN_BODY,
            None,
            "failed",
            0,
            at + 1_000_000,
        ),
        (old.pending, old.pending, receiver, "call_started", PENDING_BODY, None, "pending", 0, at),
    ];
    for (id, message, url, kind, body, key, status, attempts, created) in rows {
        let log_id: i64 = sqlx::query_scalar(insert)
            .bind(id.to_string())
            .bind(message.to_string())
            .bind(old.org.to_string())
            .bind(url)
            .bind(kind)
            .bind(body)
            .bind(key)
            .bind(status)
            .bind(attempts)
            .bind(created)
            .fetch_one(&pool)
            .await
            .unwrap();
        if attempts == 1 {
            sqlx::query(
                "INSERT INTO webhook_attempts (request_pk, attempt_number, attempted_at, success, status_code, \
                   response_body, response_time_ms) VALUES (?, 1, ?, 1, 200, 'ok', 5)",
            )
            .bind(log_id)
            .bind(created)
            .execute(&pool)
            .await
            .unwrap();
        }
    }
    pool.close().await;
    old
}

async fn old_data_keeps_answering_after_the_message_table(backend: Backend) {
    let receiver = Receiver::start().await;
    let url = fresh_store(backend).await;
    let old = match backend {
        Backend::Postgres => seed_postgres(&url, &receiver.url()).await,
        Backend::Sqlite => seed_sqlite(&url, &receiver.url()).await,
    };
    // The server migrates the rest of the way on start.
    let app = spawn_app_on(test_config(&url), &url).await;

    let single = app.details(&old.single.to_string()).await.unwrap();
    let log = single.log.clone().unwrap();
    assert_eq!(log.assistant_id, Some(7));
    assert_eq!(log.call_id, Some(55));
    assert!(log.metadata.as_ref().is_some_and(|m| m.to_struct().unwrap().fields.contains_key("k")), "{log:?}");
    assert!(log.payload.as_ref().is_some_and(|p| p.to_struct().unwrap().fields.contains_key("n")), "{log:?}");
    assert_eq!(single.attempts.len(), 1);
    assert_eq!(single.attempts[0].request_body, SINGLE_BODY);
    for id in old.fan {
        let d = app.details(&id.to_string()).await.unwrap();
        assert!(d.log.unwrap().payload.is_some_and(|p| p.to_struct().unwrap().fields.contains_key("fan")));
    }

    // REST: the gateway's details route and the seed-000 per-call route.
    let (status, body) = app.get_json(&format!("/v1/webhook-logs/{}", old.single)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["log"]["payload"]["n"], 1, "{body}");
    let (status, body) = app.get_json("/api/v1/calls/55/webhook-logs").await;
    assert_eq!(status, 200, "{body}");
    // That route shows log IDs and payloads, not request IDs.
    let payloads: Vec<String> = body.as_array().unwrap().iter().map(|l| l["request_payload"].to_string()).collect();
    assert_eq!(payloads.len(), 4, "{body}");
    for body in [SINGLE_BODY, FAN_BODY, FAN_BODY, PENDING_BODY] {
        assert!(payloads.iter().any(|p| p == body), "{body} missing from {payloads:?}");
    }

    // The old fan-out's key still answers its message and both deliveries.
    let mut again = dispatch_to(&receiver.url(), old.org);
    again.idempotency_key = "old-key".into();
    let res = app.dispatch(again).await.unwrap();
    assert!(res.duplicate);
    assert_eq!(res.message_id, old.fan_message.to_string());
    assert_eq!(res.request_ids, old.fan.map(|u| u.to_string()));

    // The delivery that was pending goes out with its exact body.
    let got = receiver.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(got[0].body, PENDING_BODY);
    assert_eq!(got[0].headers["webhook-id"].to_str().unwrap(), old.pending.to_string());
    let d = app.settled(&old.pending.to_string(), Duration::from_secs(20)).await;
    assert_eq!(d.log.unwrap().execution_status(), pb::ExecutionStatus::Succeeded);
}

#[tokio::test]
async fn old_data_keeps_answering_after_the_message_table_postgres() {
    old_data_keeps_answering_after_the_message_table(Backend::Postgres).await;
}

#[tokio::test]
async fn old_data_keeps_answering_after_the_message_table_sqlite() {
    old_data_keeps_answering_after_the_message_table(Backend::Sqlite).await;
}
