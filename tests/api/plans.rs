//! The delivery path's statements keep their shape whatever the planner
//! thinks of the tables' sizes. A prepared statement settles on a generic
//! plan after five runs and keeps it for the life of the connection, so a
//! plan made while the day's partitions were empty is the plan for the rest
//! of the day (without `autovacuum`, nothing analyzes and replans). These
//! tests make the generic plans on empty, never-analyzed tables (a day's new
//! partitions) and check that every lookup into a table that grows is an
//! index probe. (A table analyzed while empty is planned from its real size,
//! and can still get a whole-table scan until the next ANALYZE replans it.)

use hookpost::store::postgres::sql;

use crate::helpers::spawn_app_with;

/// The generic plan of `statement` (its parameters typed `types`), run with
/// `args`, in the worst case: planned on empty tables.
async fn generic_plan(pool: &sqlx::PgPool, types: &str, statement: &str, args: &str) -> String {
    let mut conn = pool.acquire().await.unwrap();
    sqlx::raw_sql("SET plan_cache_mode = force_generic_plan").execute(&mut *conn).await.unwrap();
    sqlx::raw_sql(&format!("PREPARE s({types}) AS {statement}")).execute(&mut *conn).await.unwrap();
    // EXPLAIN without ANALYZE: the statement is planned, not run.
    let lines: Vec<String> =
        sqlx::query_scalar(&format!("EXPLAIN (COSTS OFF) EXECUTE s({args})")).fetch_all(&mut *conn).await.unwrap();
    sqlx::raw_sql("DEALLOCATE s; RESET plan_cache_mode").execute(&mut *conn).await.unwrap();
    lines.join("\n")
}

/// The tables that grow with the traffic, scanned other than by an index.
fn whole_table_scans(plan: &str) -> Vec<String> {
    const GROWING: [&str; 5] =
        ["webhook_requests", "webhook_attempts", "webhook_messages", "endpoints", "organization_secrets"];
    plan.lines()
        .filter(|l| l.contains("Seq Scan on") && GROWING.iter().any(|t| l.contains(&format!(" {t}"))))
        .map(|l| l.trim().to_owned())
        .collect()
}

#[tokio::test]
async fn the_delivery_statements_probe_by_key_even_when_planned_on_empty_tables() {
    let app = spawn_app_with(|c| c.delivery.enabled = false).await;
    let pool = app.pg();
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
        ("claim (any queue)", "int8, int8", sql::CLAIM_DUE, "16, 30000".to_owned()),
        ("due queues", "text, int4", sql::DUE_QUEUES, "'', 64".to_owned()),
    ];
    for (name, types, statement, args) in cases {
        let plan = generic_plan(pool, types, statement, &args).await;
        let scans = whole_table_scans(&plan);
        assert!(scans.is_empty(), "{name}: whole-table scans {scans:?} in\n{plan}");
        assert!(plan.contains("Index"), "{name}: no index probe at all in\n{plan}");
    }
}
