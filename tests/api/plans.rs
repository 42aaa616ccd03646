//! The delivery path's statements keep their shape whatever the planner
//! thinks of the tables' sizes. A prepared statement settles on a generic
//! plan after five runs and keeps it for the life of the connection, so a
//! plan made while the day's partitions were empty is the plan for the rest
//! of the day (without `autovacuum`, nothing analyzes and replans). These
//! tests make the generic plans on empty, never-analyzed tables (a day's new
//! partitions) and check that every lookup into a table that grows is an
//! index probe. (A table analyzed while empty is planned from its real size,
//! and can still get a whole-table scan until the next ANALYZE replans it.)

use hookpost::store::postgres::{claim_connect_options, sql};

use crate::helpers::spawn_app_with;

/// The generic plan of `statement` (its parameters typed `types`), run with
/// `args`, in the worst case: planned on empty tables; in a transaction that
/// first runs `setup` (the store's own settings for that statement).
async fn generic_plan(pool: &sqlx::PgPool, setup: &str, types: &str, statement: &str, args: &str) -> String {
    let mut conn = pool.acquire().await.unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut *conn).await.unwrap();
    if !setup.is_empty() {
        sqlx::raw_sql(setup).execute(&mut *conn).await.unwrap();
    }
    sqlx::raw_sql("SET LOCAL plan_cache_mode = force_generic_plan").execute(&mut *conn).await.unwrap();
    sqlx::raw_sql(&format!("PREPARE s({types}) AS {statement}")).execute(&mut *conn).await.unwrap();
    // EXPLAIN without ANALYZE: the statement is planned, not run.
    let lines: Vec<String> =
        sqlx::query_scalar(&format!("EXPLAIN (COSTS OFF) EXECUTE s({args})")).fetch_all(&mut *conn).await.unwrap();
    sqlx::raw_sql("DEALLOCATE s; COMMIT").execute(&mut *conn).await.unwrap();
    lines.join("\n")
}

/// The tables that grow with the traffic.
const GROWING: [&str; 5] =
    ["webhook_requests", "webhook_attempts", "webhook_messages", "endpoints", "organization_secrets"];

/// The scans of a growing table that are not probes by key: a sequential
/// scan, or an index scan without an index condition (a walk over the whole
/// index, filtering). A bitmap heap scan is judged by its bitmap index scans.
fn whole_table_scans(plan: &str) -> Vec<String> {
    let on_growing = |target: &str| GROWING.iter().any(|t| target.starts_with(t));
    let lines: Vec<&str> = plan.lines().collect();
    let mut wrong = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let node = line.trim().trim_start_matches("->").trim();
        let target = if let Some(rest) = node.split_once(" on ").map(|(_, r)| r) {
            rest.split_whitespace().next().unwrap_or_default()
        } else {
            continue;
        };
        if !on_growing(target) {
            continue;
        }
        let probe = ["Index Scan", "Index Only Scan", "Bitmap Index Scan"].iter().any(|k| node.starts_with(k));
        if node.starts_with("Seq Scan") {
            wrong.push(node.to_owned());
        } else if probe {
            // The node's own lines run until the next node.
            let keyed = lines[i + 1..]
                .iter()
                .take_while(|l| !l.contains("->"))
                .any(|l| l.trim_start().starts_with("Index Cond:"));
            if !keyed {
                wrong.push(node.to_owned());
            }
        }
    }
    wrong
}

#[tokio::test]
async fn the_delivery_statements_probe_by_key_even_when_planned_on_empty_tables() {
    let app = spawn_app_with(|c| c.delivery.enabled = false).await;
    let pool = app.pg();
    assert_keyed_plans(pool).await;
}

/// The same on a day's partitions holding a few rows to a few hundred: the
/// size a partition has in its first seconds, and when a partition's DDL
/// (maintenance adds and drops a day's partitions daily) makes every
/// connection plan its statements again. Planned there, Postgres found a
/// whole-partition scan cheaper than any index for the claim's update of the
/// rows it locked, and kept that plan while the partition grew: a claim of
/// 33 rows took 45 ms at 130,000 rows, and a backlog drained at 1,000/s
/// instead of 9,000/s (docs/PERFORMANCE.md).
#[tokio::test]
async fn the_delivery_statements_probe_by_key_when_planned_on_small_tables() {
    let app = spawn_app_with(|c| c.delivery.enabled = false).await;
    let pool = app.pg();
    for rows in [20, 500, 5000] {
        add_rows_today(pool, rows).await;
        assert_keyed_plans(pool).await;
    }
}

/// `n` more deliveries, each with its message and one attempt, in today's
/// partitions (two-thirds of them settled, like a day's traffic).
async fn add_rows_today(pool: &sqlx::PgPool, n: i64) {
    sqlx::query(
        "WITH r AS ( \
           INSERT INTO webhook_requests (request_id, organization_id, webhook_url, webhook_type, max_retries, \
             status, next_attempt_at, message_id, queue_key, created_at) \
           SELECT gen_random_uuid(), gen_random_uuid(), 'http://127.0.0.1:9/h', 't', 3, \
             CASE WHEN i % 3 = 0 THEN 'pending' ELSE 'succeeded' END, now(), gen_random_uuid(), \
             'h:127.0.0.1:9', now() \
           FROM generate_series(1, $1) i RETURNING id, created_at, message_id, organization_id), \
         m AS (INSERT INTO webhook_messages (message_id, organization_id, webhook_type, body, created_at) \
           SELECT message_id, organization_id, 't', '{}', created_at FROM r) \
         INSERT INTO webhook_attempts (request_pk, request_created_at, attempt_number, attempted_at, success, \
           response_time_ms) \
         SELECT id, created_at, 1, now(), true, 1 FROM r",
    )
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

/// Every hot statement's generic plan, made now, probes the growing tables
/// by key.
async fn assert_keyed_plans(pool: &sqlx::PgPool) {
    // Today: a day with a partition (a fixed date would fall outside the
    // partitions a fresh database has, and every scan would be pruned away).
    let now = chrono::Utc::now().to_rfc3339();
    let ts = format!("'{now}'");
    let cases = [
        (
            "record (batched)",
            "int8[], uuid[], text[], int8[], timestamptz[], bool[], int4[], text[], bool[], int8[], text[], text[], \
             timestamptz[]",
            sql::RECORD_ATTEMPTS,
            format!(
                "'{{1,2}}', '{{{u},{u}}}', '{{succeeded,pending}}', '{{NULL,1000}}', '{{{t},{t}}}', '{{t,f}}', \
                 '{{200,500}}', '{{a,b}}', '{{f,f}}', '{{1,2}}', '{{NULL,http}}', '{{NULL,x}}', '{{{t},{t}}}'",
                u = uuid::Uuid::nil(),
                t = now
            ),
        ),
        (
            "record (one)",
            "int8, uuid, text, int8, timestamptz, bool, int4, text, bool, int8, text, text, timestamptz",
            sql::RECORD_ATTEMPT,
            format!("1, '{}', 'succeeded', NULL, {ts}, true, 200, 'a', false, 1, NULL, NULL, {ts}", uuid::Uuid::nil()),
        ),
        ("claim", "text[], int4[], int8", sql::CLAIM_FROM, "'{h:127.0.0.1:9,e:x}', '{8,8}', 30000".to_owned()),
        // Not CLAIM_DUE: the claim in one global order serves tests only, and
        // has had no index of its own since the engine claims per queue.
        ("due queues", "text, int4", sql::DUE_QUEUES, "'', 64".to_owned()),
        ("logs by key (live tail)", "int8[], timestamptz[]", sql::LOGS_BY_ID, format!("'{{1,2}}', '{{{now},{now}}}'")),
        (
            "logs by key without bodies (live tail, BASIC)",
            "int8[], timestamptz[]",
            sql::LOGS_BY_ID_BASIC,
            format!("'{{1,2}}', '{{{now},{now}}}'"),
        ),
        // Rare (a delivery that belongs to another replica, an endpoint
        // paused since the claim), so a connection may run them for the
        // first time when its day's partition is large.
        (
            "release",
            "int8[], uuid[], timestamptz[], float8",
            sql::RELEASE,
            format!("'{{1,2}}', '{{{u},{u}}}', '{{{now},{now}}}', 500", u = uuid::Uuid::nil()),
        ),
        (
            "hold",
            "int8[], uuid[], timestamptz[]",
            sql::HOLD,
            format!("'{{1,2}}', '{{{u},{u}}}', '{{{now},{now}}}'", u = uuid::Uuid::nil()),
        ),
    ];
    // The claims run on connections of their own, opened as the store opens
    // them (see `claims_pool`); the statements that give claims back or hold
    // them run on the main pool with the store's setting in their
    // transaction (`sql::SEQSCAN_OFF`).
    let claims = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(claim_connect_options(&pool.connect_options()))
        .await
        .unwrap();
    let mut wrong = Vec::new();
    for (name, types, statement, args) in cases {
        let (on, setup) = match statement {
            s if [sql::CLAIM_FROM, sql::DUE_QUEUES].contains(&s) => (&claims, ""),
            s if [sql::RELEASE, sql::HOLD].contains(&s) => (pool, sql::SEQSCAN_OFF),
            _ => (pool, ""),
        };
        let plan = generic_plan(on, setup, types, statement, &args).await;
        let scans = whole_table_scans(&plan);
        if !scans.is_empty() || !plan.contains("Index") {
            wrong.push(format!("{name}: whole-table scans {scans:?} (or no index probe at all) in\n{plan}"));
        }
    }
    claims.close().await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

/// A claim changes no indexed column (the lease has columns of its own and
/// the due time stays), and the day's partition keeps room on each page for
/// the new version: every claim is a heap-only (HOT) update, which writes no
/// index entry and leaves nothing for a vacuum to clean from the indexes.
#[tokio::test]
async fn claims_are_heap_only_updates() {
    use std::time::Duration;

    use crate::helpers::{eventually, fresh_database, open_store};

    let url = fresh_database().await;
    let store = open_store(&url).await;
    let n: usize = 200;
    insert_deliveries(store.as_ref(), n).await;
    let mut claimed = 0;
    while claimed < n {
        let got = store.claim_due(64, Duration::from_secs(30)).await.unwrap().len();
        assert!(got > 0, "only {claimed} of {n} claimed");
        claimed += got;
    }
    // The statistics reach the view when the claiming connection goes idle:
    // poll them (within a deadline) rather than guess when.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let (updates, hot): (i64, i64) = eventually(Duration::from_secs(30), "the claims' statistics", || {
        let pool = pool.clone();
        async move {
            let row: (i64, i64) = sqlx::query_as(
                "SELECT COALESCE(sum(n_tup_upd), 0)::int8, COALESCE(sum(n_tup_hot_upd), 0)::int8 \
                 FROM pg_stat_user_tables WHERE relname LIKE 'webhook_requests_p%'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            (row.0 >= n as i64).then_some(row)
        }
    })
    .await;
    assert_eq!((updates, hot), (n as i64, n as i64), "every claim should be a HOT update");
}

/// `n` deliveries to one bare URL (one queue), due now.
async fn insert_deliveries(store: &dyn hookpost::store::Store, n: usize) {
    for _ in 0..n {
        store.insert_delivery(&crate::helpers::delivery(uuid::Uuid::new_v4(), |_| {})).await.unwrap();
    }
}

/// Claimed deliveries keep their due time and stay at the head of their
/// queue: a claim passes over them (their lease has not ended) to the ones
/// free to claim. A lease taken before leases had their own column (lease_id
/// set, no leased_until) ends, as it did then, at next_attempt_at.
#[tokio::test]
async fn a_claim_passes_over_deliveries_in_flight_and_old_leases_end() {
    use std::time::Duration;

    use crate::helpers::{fresh_database, open_store};

    let url = fresh_database().await;
    let store = open_store(&url).await;
    insert_deliveries(store.as_ref(), 3).await;
    assert_eq!(store.claim_due(10, Duration::from_secs(30)).await.unwrap().len(), 3);
    assert!(store.claim_due(10, Duration::from_secs(30)).await.unwrap().is_empty(), "all three are in flight");

    // One more: only it is claimed.
    insert_deliveries(store.as_ref(), 1).await;
    assert_eq!(store.claim_due(10, Duration::from_secs(30)).await.unwrap().len(), 1);

    // A lease as an earlier version wrote it, already over: claimable.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let old = sqlx::query(
        "UPDATE webhook_requests SET lease_id = gen_random_uuid(), leased_until = NULL, \
           next_attempt_at = now() - interval '1 second' \
         WHERE id = (SELECT min(id) FROM webhook_requests)",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(old.rows_affected(), 1);
    assert_eq!(store.claim_due(10, Duration::from_secs(30)).await.unwrap().len(), 1);
}

/// A claim commits without waiting for its WAL flush (see `claimed_with!`),
/// and only the claim: the setting is local to the claim's transaction, so
/// the pooled connection it ran on commits durably again for whatever runs
/// on it next (a Dispatch, an attempt's record).
#[tokio::test]
async fn a_claims_lazy_commit_stays_inside_the_claim() {
    use crate::helpers::{fresh_database, open_store};

    let url = fresh_database().await;
    let store = open_store(&url).await;
    insert_deliveries(store.as_ref(), 2).await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let key: String =
        sqlx::query_scalar("SELECT queue_key FROM webhook_requests LIMIT 1").fetch_one(&pool).await.unwrap();
    for name in ["claim from queues", "claim due"] {
        let claim = match name {
            "claim due" => sqlx::query(sql::CLAIM_DUE).bind(8i64).bind(30_000i64),
            _ => sqlx::query(sql::CLAIM_FROM).bind(vec![key.clone()]).bind(vec![8i32]).bind(30_000i64),
        };
        // Inside a transaction of the test's own, to see the setting the
        // statement left; the store's claims run alone, and commit at once.
        let mut tx = pool.begin().await.unwrap();
        assert_eq!(claim.fetch_all(&mut *tx).await.unwrap().len(), 2, "{name}: both deliveries are claimed");
        let during: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(&mut *tx).await.unwrap();
        assert_eq!(during, "off", "{name}: its transaction commits without waiting for the flush");
        tx.rollback().await.unwrap();
    }
    // Alone, as the store runs it: the connection commits durably after it.
    let mut conn = pool.acquire().await.unwrap();
    let claimed = sqlx::query(sql::CLAIM_DUE).bind(8i64).bind(30_000i64).fetch_all(&mut *conn).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let after: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(&mut *conn).await.unwrap();
    assert_eq!(after, "on", "the claim's connection commits durably again");
}
