//! The scenarios: each returns hookpost's figure and its baseline's, measured
//! in the same run.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Days, Utc};
use hookpost::domain::{Cursor, ExecutionStatus, LogFilter};
use hookpost::proto::v1 as pb;
use hookpost::proto::v1::webhook_service_client::WebhookServiceClient;
use hookpost::store::postgres::sql;
use hookpost::store::{PostgresStore, Store};
use sqlx::PgPool;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::procs::{CpuMeter, PhaseCpu};
use crate::support::*;

/// HTTP/2 connections a gRPC load generator opens (BENCH_GRPC_CONNECTIONS,
/// default 8), as a fleet of callers would: one connection's frames are
/// handled by one task on each side.
fn grpc_connections() -> usize {
    std::env::var("BENCH_GRPC_CONNECTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(8usize)
}

/// Dispatches `n` webhooks at `concurrency` over gRPC; returns dispatches/s.
pub async fn grpc_dispatch(app: &RunningApp, url: &str, n: usize, concurrency: usize) -> anyhow::Result<f64> {
    let connections = grpc_connections();
    let mut clients = Vec::new();
    for _ in 0..connections.max(1) {
        clients.push(WebhookServiceClient::connect(app.base_url()).await?);
    }
    let payload = hookpost::grpc::json_to_struct(payload_1k());
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..concurrency {
        let client = &clients[i % clients.len()];
        let (mut client, next, payload, url, key) =
            (client.clone(), next.clone(), payload.clone(), url.to_string(), app.key.clone());
        tasks.spawn(async move {
            let org = Uuid::new_v4().to_string();
            while next.fetch_add(1, Ordering::Relaxed) < n as u64 {
                let req = pb::DispatchRequest {
                    organization_id: org.clone(),
                    webhook_url: url.clone(),
                    webhook_type: "call_ended".into(),
                    payload: Some(payload.clone()),
                    ..Default::default()
                };
                client.dispatch(authed(req, &key)).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// The same dispatches as [`grpc_dispatch`], from a load generator as lean
/// as pgbench is for its baseline: each task's request is encoded once and
/// sent as it is over `h2` itself, on 8 connections. tonic's client puts a
/// task hop (tower's Buffer) and hyper's dispatch channel between a call
/// and its connection, and encodes every message; on two cores that CPU is
/// taken from the server being measured. Stops after `n` or once `within`
/// has passed, whichever comes first; returns dispatches/s.
pub async fn grpc_dispatch_lean(
    app: &RunningApp,
    url: &str,
    n: usize,
    concurrency: usize,
    within: Option<Duration>,
) -> anyhow::Result<f64> {
    use prost::Message;
    let payload = hookpost::grpc::json_to_struct(payload_1k());
    let mut messages = Vec::new();
    for _ in 0..concurrency {
        let req = pb::DispatchRequest {
            organization_id: Uuid::new_v4().to_string(),
            webhook_url: url.to_string(),
            webhook_type: "call_ended".into(),
            payload: Some(payload.clone()),
            ..Default::default()
        };
        messages.push(req.encode_to_vec());
    }
    let call = LeanCall { addr: app.addr, path: "/hookpost.v1.WebhookService/Dispatch", bearer: Some(&app.key) };
    call.run(messages, n, within).await
}

/// The floor under any unary gRPC call here: an empty health Check to a
/// tonic server with nothing else in it (no store, no key, no middleware),
/// from the same lean load generator as [`grpc_dispatch_lean`], for
/// `within`; returns calls/s. Dispatch does this much and more, on the same
/// two cores as Postgres.
pub async fn grpc_floor(addr: std::net::SocketAddr, concurrency: usize, within: Duration) -> anyhow::Result<f64> {
    let call = LeanCall { addr, path: "/grpc.health.v1.Health/Check", bearer: None };
    // An empty HealthCheckRequest (every service) encodes to no bytes.
    call.run(vec![Vec::new(); concurrency], usize::MAX, Some(within)).await
}

/// One unary gRPC method called over raw `h2`, one task per message.
struct LeanCall<'a> {
    addr: std::net::SocketAddr,
    path: &'a str,
    bearer: Option<&'a str>,
}

impl LeanCall<'_> {
    /// Each task sends its message again and again until `n` calls in all
    /// or `within`; returns calls/s.
    async fn run(&self, messages: Vec<Vec<u8>>, n: usize, within: Option<Duration>) -> anyhow::Result<f64> {
        let connections = grpc_connections();
        let mut senders = Vec::new();
        for _ in 0..connections.max(1) {
            let tcp = tokio::net::TcpStream::connect(self.addr).await?;
            tcp.set_nodelay(true)?;
            // Writes coalesced as the server's are (and as grpc-go's client
            // does): one system call for the requests of one scheduler round.
            let tcp = hookpost::transport::coalesce::Coalesce::new(tcp);
            let (send, conn) = h2::client::handshake(tcp).await?;
            tokio::spawn(conn);
            senders.push(send);
        }
        let uri = format!("http://{}{}", self.addr, self.path);
        let bearer = self.bearer.map(|key| format!("Bearer {key}"));
        let (next, done) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let start = Instant::now();
        let end = within.map(|w| start + w);
        let mut tasks = JoinSet::new();
        for (i, message) in messages.into_iter().enumerate() {
            // A gRPC message: uncompressed flag, big-endian length, the bytes.
            let mut frame = vec![0u8];
            frame.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
            frame.extend_from_slice(&message);
            let frame = bytes::Bytes::from(frame);
            let (mut send, next, done, uri, bearer) =
                (senders[i % senders.len()].clone(), next.clone(), done.clone(), uri.clone(), bearer.clone());
            tasks.spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < n as u64 && end.is_none_or(|end| Instant::now() < end) {
                    let mut req = axum::http::Request::post(uri.as_str())
                        .header("content-type", "application/grpc")
                        .header("te", "trailers");
                    if let Some(bearer) = &bearer {
                        req = req.header("authorization", bearer.as_str());
                    }
                    let req = req.body(())?;
                    send = send.ready().await?;
                    let (response, mut body) = send.send_request(req, false)?;
                    body.send_data(frame.clone(), true)?;
                    let (head, mut recv) = response.await?.into_parts();
                    while let Some(data) = recv.data().await {
                        let data = data?;
                        recv.flow_control().release_capacity(data.len())?;
                    }
                    // grpc-status comes in the trailers, or in the head of a
                    // trailers-only (error) answer.
                    let trailers = recv.trailers().await?;
                    let status =
                        trailers.as_ref().and_then(|t| t.get("grpc-status")).or(head.headers.get("grpc-status"));
                    if status.is_none_or(|s| s != "0") {
                        bail!("call failed: {head:?} {trailers:?}");
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
    }
}

/// The same dispatches as JSON over the REST gateway route.
pub async fn rest_dispatch(app: &RunningApp, url: &str, n: usize, concurrency: usize) -> anyhow::Result<f64> {
    let client = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    let endpoint = format!("{}/v1/webhooks:dispatch", app.base_url());
    for _ in 0..concurrency {
        let (client, next, endpoint, key) = (client.clone(), next.clone(), endpoint.clone(), app.key.clone());
        let body = serde_json::json!({
            "organizationId": Uuid::new_v4().to_string(),
            "webhookUrl": url,
            "webhookType": "call_ended",
            "payload": payload_1k(),
        })
        .to_string();
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n as u64 {
                let resp = client.post(&endpoint).bearer_auth(&key).body(body.clone()).send().await?;
                if !resp.status().is_success() {
                    bail!("REST dispatch answered {}", resp.status());
                }
                resp.bytes().await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// pgbench running Dispatch's own statement (no idempotency key) + COMMIT.
pub fn pgbench_dispatch(db_url: &str, clients: u32, seconds: u64, dir: &Path) -> anyhow::Result<f64> {
    let body = format!("'{}'", serde_json::Value::Object(payload_1k()).to_string().replace('\'', "''"));
    let stmt = substitute(
        sql::INSERT_DELIVERY,
        &[
            "gen_random_uuid()",
            "gen_random_uuid()",
            "NULL::uuid",
            "NULL::uuid",
            "NULL::bigint",
            "NULL::bigint",
            "'http://127.0.0.1:9/hook'",
            "'call_ended'",
            &body,
            "NULL::jsonb",
            "NULL::text",
            "3",
            "gen_random_uuid()",
            "NULL::uuid",
            "'h:127.0.0.1:9'",
            "false",
            "NULL::timestamptz",
        ],
    );
    Ok(pgbench(db_url, &format!("{stmt};\n"), clients, seconds, None, dir)?.tps)
}

/// Dispatch's group-commit statement, read from `src/store/batch.rs` at
/// build time so that the baseline cannot drift from it (it is a literal
/// there, not in `sql`).
pub fn batched_insert_sql() -> anyhow::Result<String> {
    const SOURCE: &str = include_str!("../../store/batch.rs");
    let start = SOURCE.find("\"WITH v AS").context("batched INSERT not found in batch.rs")? + 1;
    let len = SOURCE[start..].find('"').context("unterminated batched INSERT in batch.rs")?;
    // Rust string continuations: a backslash, the newline and the next
    // line's indentation disappear.
    let mut out = String::new();
    let mut lines = SOURCE[start..start + len].split('\n');
    if let Some(first) = lines.next() {
        out.push_str(first.trim_end_matches('\\'));
    }
    for l in lines {
        out.push_str(l.trim_start().trim_end_matches('\\'));
    }
    Ok(out)
}

/// pgbench running Dispatch's batched statement with `batch` rows per
/// statement (one commit each); returns rows/s. The arrays are built in the
/// statement instead of bound, the same values as `pgbench_dispatch`.
pub fn pgbench_dispatch_batched(
    db_url: &str,
    clients: u32,
    batch: usize,
    seconds: u64,
    dir: &Path,
) -> anyhow::Result<f64> {
    let body = format!("'{}'", serde_json::Value::Object(payload_1k()).to_string().replace('\'', "''"));
    let fill = |v: &str, t: &str| format!("array_fill({v}::{t}, ARRAY[{batch}])");
    let uuids = format!("ARRAY(SELECT gen_random_uuid() FROM generate_series(1, {batch}))");
    let stmt = substitute(
        &batched_insert_sql()?,
        &[
            &uuids,
            &uuids,
            &fill("NULL", "uuid"),
            &fill("NULL", "uuid"),
            &fill("NULL", "int8"),
            &fill("NULL", "int8"),
            &fill("'http://127.0.0.1:9/hook'", "text"),
            &fill("'call_ended'", "text"),
            &fill(&body, "text"),
            &fill("NULL", "jsonb"),
            &fill("3", "int4"),
            &uuids,
            &fill("NULL", "uuid"),
            &fill("'h:127.0.0.1:9'", "text"),
            &fill("false", "bool"),
            &fill("NULL", "timestamptz"),
        ],
    );
    Ok(pgbench(db_url, &format!("{stmt};\n"), clients, seconds, None, dir)?.tps * batch as f64)
}

/// The bare HTTP baseline: one reqwest client posting `n` bodies.
pub async fn reqwest_loop(url: &str, n: usize, concurrency: usize) -> anyhow::Result<f64> {
    let client = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let body = serde_json::Value::Object(payload_1k()).to_string();
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let (client, next, body, url) = (client.clone(), next.clone(), body.clone(), url.to_string());
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n as u64 {
                let resp =
                    client.post(&url).header("content-type", "application/json").body(body.clone()).send().await?;
                resp.bytes().await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

pub struct DeliverRound {
    pub deliveries_per_s: f64,
    pub new_connections_per_delivery: f64,
}

pub struct DispatchRound {
    pub dispatch_per_s: f64,
    pub commits_per_wal_sync: f64,
    pub rows_per_commit: f64,
    /// pgbench's single-row statement, rows/s, over as long as hookpost ran.
    pub single_row_per_s: f64,
    /// pgbench's batched statement at hookpost's batch size, rows/s.
    pub batched_per_s: f64,
    pub batch: usize,
    /// CPU of the Dispatch slices, per Dispatch; of pgbench's single-row
    /// and batched slices, per row (pgbench's own CPU is not counted, only
    /// in the machine's busy share; its connection setup is); of the floor
    /// slices, per call.
    pub cpu: [PhaseCpu; 4],
    /// Empty health Checks to a bare tonic server, calls/s, from the same
    /// load generator at the same concurrency (see [`grpc_floor`]).
    pub floor_per_s: f64,
}

/// Times Dispatch on an API-only replica against its two pgbench baselines,
/// interleaved: `slices` times, `slice_secs` of Dispatch, then as long of
/// the gRPC floor (an empty call to a bare tonic server), of pgbench's
/// single-row statement, and of its batched one at the batch size hookpost
/// reached so far. This machine's speed drifts by a fifth
/// within a minute (pgbench alone, 5 s runs back to back: 19k to 28k rows/s),
/// and phases of 10 s each, run one after the other, put that drift into
/// the ratio. Dispatch starts after 1,000 untimed (connections opened,
/// caches warm: pgbench leaves its connection setup out of its rate too).
pub async fn dispatch_round(
    db_url: &str,
    pgbench_db: &str,
    pool_size: u32,
    concurrency: usize,
    receiver: &BenchReceiver,
    (slices, slice_secs): (u32, u64),
    dir: &Path,
) -> anyhow::Result<DispatchRound> {
    let pool = PgPool::connect(db_url).await?;
    let api = start_app(db_url, pool_size, concurrency, false).await?;
    let url = receiver.url.as_str();
    let tonic = std::env::var("BENCH_DISPATCH_CLIENT").as_deref() == Ok("tonic");
    match tonic {
        true => grpc_dispatch(&api, url, 1000, concurrency).await?,
        false => grpc_dispatch_lean(&api, url, 1000, concurrency, None).await?,
    };
    let warm: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM webhook_requests").fetch_one(&pool).await?;
    // Rows per group commit so far: the rows of one commit share its
    // transaction ID (nothing has touched them since). The database's commit
    // counter would also count the announcements of due work and the
    // organization secrets, and made the batch look smaller than it was, so
    // that the batched baseline ran smaller batches than hookpost's (a slower
    // baseline). Only the timed rows: the warm-up's first batches are small.
    let rows_per_commit = || {
        sqlx::query_scalar::<_, f64>(
            "SELECT count(*)::float8 / greatest(count(DISTINCT xmin::text), 1) FROM webhook_requests WHERE id > $1",
        )
        .bind(warm)
        .fetch_one(&pool)
    };
    let workers = hookpost::store::DISPATCH_WORKERS as u32;
    let (mut rates, mut single, mut batched, mut syncs, mut commits) = (vec![], vec![], vec![], 0, 0);
    let mut batch = 1;
    let mut cpu = [PhaseCpu::default(); 4];
    let (bare, mut floor) = (BareGrpc::start().await?, vec![]);
    let secs = slice_secs as f64;
    checkpoint(db_url).await;
    for _ in 0..slices {
        let (s0, c0) = wal_syncs_and_commits(&pool).await?;
        let meter = CpuMeter::start();
        rates.push(match tonic {
            // The old load generator has no time bound: 10,000 per second
            // asked for, about what it reaches on this kind of machine.
            true => grpc_dispatch(&api, url, 10_000 * slice_secs as usize, concurrency).await?,
            false => {
                grpc_dispatch_lean(&api, url, usize::MAX, concurrency, Some(Duration::from_secs(slice_secs))).await?
            }
        });
        // Both load generators return Dispatches per second of their own
        // span (the tonic one sends a fixed number, however long it takes).
        let span = meter.elapsed();
        meter.stop(&mut cpu[0], rates.last().copied().unwrap_or(0.0) * span);
        let (s1, c1) = wal_syncs_and_commits(&pool).await?;
        (syncs, commits) = (syncs + s1 - s0, commits + c1 - c0);
        batch = rows_per_commit().await?.round().clamp(1.0, 64.0) as usize;
        let meter = CpuMeter::start();
        floor.push(grpc_floor(bare.addr, concurrency, Duration::from_secs(slice_secs)).await?);
        let span = meter.elapsed();
        meter.stop(&mut cpu[3], floor.last().copied().unwrap_or(0.0) * span);
        let meter = CpuMeter::start();
        single.push(pgbench_dispatch(pgbench_db, pool_size, slice_secs, dir)?);
        // pgbench's rate leaves out its connection setup: per its own span.
        meter.stop(&mut cpu[1], single.last().copied().unwrap_or(0.0) * secs);
        let meter = CpuMeter::start();
        batched.push(pgbench_dispatch_batched(pgbench_db, workers, batch, slice_secs, dir)?);
        meter.stop(&mut cpu[2], batched.last().copied().unwrap_or(0.0) * secs);
    }
    let rows_per_commit = rows_per_commit().await?;
    api.shutdown().await?;
    bare.shutdown().await?;
    sqlx::query("TRUNCATE webhook_attempts, webhook_requests, webhook_messages").execute(&pool).await?;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Ok(DispatchRound {
        dispatch_per_s: mean(&rates),
        // Backends flush their commit counters within a second; a slice's
        // last commits may count in the next one's, which is why the counts
        // are summed over the round.
        commits_per_wal_sync: commits as f64 / syncs.max(1) as f64,
        rows_per_commit,
        single_row_per_s: mean(&single),
        batched_per_s: mean(&batched),
        batch,
        cpu,
        floor_per_s: mean(&floor),
    })
}

/// Dispatch without a pause for `windows` x `window` into one database,
/// as a day's partition fills: each window's Dispatches/s, and the requests
/// stored at the end. Nothing is delivered, so every row stays.
pub async fn dispatch_growth(
    db_url: &str,
    pool_size: u32,
    concurrency: usize,
    receiver: &BenchReceiver,
    (windows, window): (u32, Duration),
) -> anyhow::Result<(Vec<f64>, i64)> {
    let api = start_app(db_url, pool_size, concurrency, false).await?;
    grpc_dispatch_lean(&api, &receiver.url, 1000, concurrency, None).await?;
    checkpoint(db_url).await;
    let mut rates = Vec::new();
    for _ in 0..windows {
        rates.push(grpc_dispatch_lean(&api, &receiver.url, usize::MAX, concurrency, Some(window)).await?);
    }
    api.shutdown().await?;
    let pool = PgPool::connect(db_url).await?;
    let rows = sqlx::query_scalar("SELECT count(*) FROM webhook_requests").fetch_one(&pool).await?;
    Ok((rates, rows))
}

/// Seeds `n` pending webhooks through an API-only replica, then times a
/// delivering replica until every one is recorded as succeeded.
pub async fn deliver_round(
    db_url: &str,
    pool_size: u32,
    concurrency: usize,
    receiver: &BenchReceiver,
    n: usize,
) -> anyhow::Result<DeliverRound> {
    let pool = PgPool::connect(db_url).await?;
    let api = start_app(db_url, pool_size, concurrency, false).await?;
    grpc_dispatch_lean(&api, &receiver.url, n, concurrency, None).await?;
    api.shutdown().await?;

    let conns_before = receiver.connections.load(Ordering::Relaxed);
    let requests_before = receiver.requests.load(Ordering::Relaxed);
    let start = Instant::now();
    let worker = start_app(db_url, pool_size, concurrency, true).await?;
    // Watch the receiver first (free), then the store, so that polling does not
    // load the database being measured.
    while receiver.requests.load(Ordering::Relaxed) - requests_before < n as u64 {
        if start.elapsed() > Duration::from_secs(600) {
            bail!("deliveries did not finish in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    loop {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_requests WHERE status = 'pending'")
            .fetch_one(&pool)
            .await?;
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deliveries_per_s = n as f64 / start.elapsed().as_secs_f64();
    worker.shutdown().await?;
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_requests WHERE status <> 'succeeded'")
        .fetch_one(&pool)
        .await?;
    if failed > 0 {
        bail!("{failed} deliveries did not succeed");
    }
    sqlx::query("TRUNCATE webhook_attempts, webhook_requests, webhook_messages").execute(&pool).await?;
    Ok(DeliverRound {
        deliveries_per_s,
        new_connections_per_delivery: (receiver.connections.load(Ordering::Relaxed) - conns_before) as f64 / n as f64,
    })
}

/// S of the deliver bound: pgbench running the claim and the attempt record
/// (hookpost's own statements) on seeded pending rows, one delivery per
/// transaction.
pub async fn pgbench_deliver_sql(db_url: &str, clients: u32, seconds: u64, dir: &Path) -> anyhow::Result<f64> {
    let pool = PgPool::connect(db_url).await?;
    sqlx::query("TRUNCATE webhook_attempts, webhook_requests, webhook_messages").execute(&pool).await?;
    // Enough due rows for the whole run.
    sqlx::query(&format!(
        "WITH m AS (INSERT INTO webhook_messages (message_id, organization_id, webhook_type, body, created_at) \
           SELECT gen_random_uuid(), gen_random_uuid(), 'call_ended', '{}', now() FROM generate_series(1, {}) \
           RETURNING message_id, organization_id, created_at) \
         INSERT INTO webhook_requests (request_id, organization_id, webhook_url, webhook_type, max_retries, \
           next_attempt_at, message_id, queue_key, created_at) \
         SELECT gen_random_uuid(), organization_id, 'http://127.0.0.1:9/hook', 'call_ended', 3, now(), \
           message_id, 'h:127.0.0.1:9', created_at FROM m",
        serde_json::Value::Object(payload_1k()).to_string().replace('\'', "''"),
        20_000 * seconds
    ))
    .execute(&pool)
    .await?;
    // The engine's claim (one queue, a quota of one: pgbench cannot iterate
    // over a batch; the engine's probe of the queues, DUE_QUEUES, is left out).
    let claim = substitute(sql::CLAIM_FROM, &["ARRAY['h:127.0.0.1:9']", "ARRAY[1]", "20000"]);
    let record = substitute(
        sql::RECORD_ATTEMPT,
        &[
            ":id",
            ":lease_id",
            "'succeeded'",
            "NULL",
            "now()",
            "true",
            "200",
            "'{\"received\": true}'",
            "false",
            "1",
            "NULL",
            "NULL",
            ":created_at",
        ],
    );
    let script = format!("{claim}\n\\gset\n{record};\n");
    let tps = pgbench(db_url, &script, clients, seconds, None, dir)?.tps;
    sqlx::query("TRUNCATE webhook_attempts, webhook_requests, webhook_messages").execute(&pool).await?;
    Ok(tps)
}

/// The seeded log data of the read scenarios.
#[derive(Clone)]
pub struct Seeded {
    /// Request IDs are md5(tag || i), so separate seedings never collide.
    pub tag: &'static str,
    /// Rows seeded so far.
    pub rows: u64,
    /// Rows the seeding will reach; row i sits at from + span * i / total.
    pub total: u64,
    pub orgs: u64,
    pub from: DateTime<Utc>,
    pub span: chrono::TimeDelta,
}

impl Seeded {
    /// The newest seeded time: growing the store appends newer rows, so the
    /// cursors of a measurement stay inside what exists.
    pub fn to(&self) -> DateTime<Utc> {
        self.from + self.span * (self.rows as i32) / (self.total as i32)
    }
}

/// Seeds rows `start..end` (settled webhooks, one attempt each) over `orgs`
/// organizations in time order, with server-side multi-row inserts: appends
/// to every time-ordered index, so 10M rows take minutes.
pub async fn seed_logs(pool: &PgPool, start: u64, end: u64, s: &Seeded) -> anyhow::Result<()> {
    const CHUNK: u64 = 250_000;
    let span_us = s.span.num_microseconds().context("span")? as f64;
    let at = |i: u64| s.from + chrono::TimeDelta::microseconds((span_us * i as f64 / s.total as f64) as i64);
    let mut a = start;
    while a < end {
        let b = (a + CHUNK).min(end);
        sqlx::query(&format!(
            "WITH v AS (SELECT i, md5('{tag}' || i)::uuid AS id, md5('o' || (i % {orgs}))::uuid AS org, t \
               FROM generate_series({a}::bigint, {last}::bigint) AS i, \
               LATERAL (SELECT '{from}'::timestamptz + (i::float8 / {total} * {span_us}) \
                 * interval '1 microsecond' AS t) AS ts), \
             m AS (INSERT INTO webhook_messages (message_id, organization_id, webhook_type, body, created_at) \
               SELECT id, org, 'call_ended', '{{\"event\":\"call_ended\",\"n\":' || i || '}}', t FROM v) \
             INSERT INTO webhook_requests (request_id, message_id, organization_id, subscription_id, webhook_url, \
               webhook_type, max_retries, status, attempt_count, created_at, updated_at) \
             SELECT id, id, org, md5('s' || (i % {orgs}))::uuid, 'http://127.0.0.1:9/hook', 'call_ended', 3, \
               CASE WHEN i % 3 = 0 THEN 'succeeded' ELSE 'failed' END, 1, t, t FROM v",
            tag = s.tag,
            orgs = s.orgs,
            last = b - 1,
            from = s.from.to_rfc3339(),
            total = s.total,
        ))
        .execute(pool)
        .await?;
        sqlx::query(
            "INSERT INTO webhook_attempts (request_pk, request_created_at, attempt_number, attempted_at, success, \
               status_code, response_body, response_time_ms) \
             SELECT id, created_at, 1, created_at, status = 'succeeded', \
               CASE WHEN status = 'succeeded' THEN 200 ELSE 500 END, '{\"received\": true}', 12 \
             FROM webhook_requests WHERE created_at >= $1 AND created_at < $2 AND attempt_count = 1 \
               AND webhook_type = 'call_ended' AND max_retries = 3 AND next_attempt_at IS NULL",
        )
        .bind(at(a))
        .bind(at(b))
        .execute(pool)
        .await?;
        a = b;
    }
    // VACUUM as well as ANALYZE: the first read of a freshly inserted row
    // sets its hint bits and dirties its page, and with 10M rows just
    // written whichever side was measured first paid for that (5.8 ms p50
    // for the first 1,000 pages, 1.9 ms for the next; docs/PERFORMANCE.md).
    // Logs read in production were written long before.
    for table in ["webhook_requests", "webhook_attempts", "webhook_messages"] {
        sqlx::query(&format!("VACUUM (ANALYZE) {table}")).execute(pool).await?;
    }
    Ok(())
}

fn list_filter(org: Uuid) -> LogFilter {
    LogFilter { organization_id: Some(org), status: Some(ExecutionStatus::Failed), ..Default::default() }
}

fn org_of(i: u64) -> Uuid {
    // md5('o' || i)::uuid, as seeded.
    Uuid::from_bytes(md5_bytes(format!("o{i}").as_bytes()))
}

fn md5_bytes(data: &[u8]) -> [u8; 16] {
    use md5::{Digest, Md5};
    Md5::digest(data).into()
}

/// A random keyset position inside the seeded range.
fn random_token(s: &Seeded, org: Uuid, deep: Option<bool>) -> String {
    let span = (s.to() - s.from).num_microseconds().unwrap_or(1);
    let frac = match deep {
        None => rand::random::<f64>(),
        Some(true) => 0.03, // near the oldest end: a deep page that is still full
        Some(false) => return String::new(),
    };
    let at = s.from + chrono::TimeDelta::microseconds((span as f64 * frac) as i64);
    hookpost::pagination::Pages::of(&list_filter(org)).encode(Cursor { created_at: at, log_id: i64::MAX })
}

/// ListWebhookLogs latencies (seconds), one call at a time, page of 50.
pub async fn grpc_list_latencies(
    app: &RunningApp,
    s: &Seeded,
    samples: usize,
    deep: Option<bool>,
) -> anyhow::Result<Vec<f64>> {
    let (url, key, s) = (app.base_url(), app.key.clone(), s.clone());
    on_client_thread(async move {
        let mut client = WebhookServiceClient::connect(url).await?;
        let mut out = Vec::with_capacity(samples);
        let mut empty = 0;
        for _ in 0..samples {
            let org = org_of(rand::random::<u64>() % s.orgs);
            let req = pb::ListWebhookLogsRequest {
                organization_id: org.to_string(),
                execution_status: pb::ExecutionStatus::Failed.into(),
                page_size: 50,
                page_token: random_token(&s, org, deep),
                ..Default::default()
            };
            let t = Instant::now();
            let page = client.list_webhook_logs(authed(req, &key)).await?.into_inner();
            out.push(t.elapsed().as_secs_f64());
            empty += usize::from(page.logs.is_empty());
        }
        // A cursor drawn near the oldest row gives an empty page now and then;
        // many mean the seeding and the cursors disagree.
        if empty * 10 > samples {
            bail!("{empty} of {samples} pages were empty: the seeding or the cursors are off");
        }
        Ok(out)
    })
    .await
}

/// The same listing over the REST gateway route.
pub async fn rest_list_latencies(app: &RunningApp, s: &Seeded, samples: usize) -> anyhow::Result<Vec<f64>> {
    let client = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let org = org_of(rand::random::<u64>() % s.orgs);
        let url = format!(
            "{}/v1/webhook-logs?organizationId={org}&executionStatus=EXECUTION_STATUS_FAILED&pageSize=50&pageToken={}",
            app.base_url(),
            random_token(s, org, None)
        );
        let t = Instant::now();
        let resp = client.get(&url).bearer_auth(&app.key).send().await?;
        if !resp.status().is_success() {
            bail!("REST list answered {}", resp.status());
        }
        resp.bytes().await?;
        out.push(t.elapsed().as_secs_f64());
    }
    Ok(out)
}

/// The listing's SQL through pgbench, with random organizations and cursors.
pub fn pgbench_list_latencies(db_url: &str, s: &Seeded, samples: u64, dir: &Path) -> anyhow::Result<Vec<f64>> {
    let script = format!(
        "\\set o random(0, {last_org})\n\\set t random({t0}, {t1})\n{select} WHERE true \
         AND r.organization_id = md5('o' || :o)::uuid AND r.status = 'failed' \
         AND (r.created_at, r.id) < (to_timestamp(:t / 1000000.0), 9223372036854775807) \
         ORDER BY r.created_at DESC, r.id DESC LIMIT 51{end};\n",
        last_org = s.orgs - 1,
        t0 = s.from.timestamp_micros(),
        t1 = s.to().timestamp_micros(),
        select = sql::LIST_PAGE,
        end = sql::LIST_PAGE_END,
    );
    Ok(pgbench(db_url, &script, 1, 0, Some(samples), dir)?.latencies)
}

/// GetLogDetails latencies for random seeded requests.
pub async fn grpc_details_latencies(app: &RunningApp, pool: &PgPool, samples: usize) -> anyhow::Result<Vec<f64>> {
    let ids: Vec<Uuid> =
        sqlx::query_scalar(&format!("SELECT request_id FROM webhook_requests TABLESAMPLE SYSTEM (1) LIMIT {samples}"))
            .fetch_all(pool)
            .await?;
    let (url, key) = (app.base_url(), app.key.clone());
    on_client_thread(async move {
        let mut client = WebhookServiceClient::connect(url).await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let req = pb::GetLogDetailsRequest { request_id: id.to_string(), ..Default::default() };
            let t = Instant::now();
            client.get_log_details(authed(req, &key)).await?;
            out.push(t.elapsed().as_secs_f64());
        }
        Ok(out)
    })
    .await
}

/// The floor of a call: gRPC health Check round trips to the same server
/// (no store, no authentication), one at a time.
pub async fn grpc_floor_latencies(app: &RunningApp, samples: usize) -> anyhow::Result<Vec<f64>> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let url = app.base_url();
    on_client_thread(async move {
        let channel = tonic::transport::Endpoint::from_shared(url)?.connect().await?;
        let mut client = HealthClient::new(channel);
        let mut out = Vec::with_capacity(samples);
        for _ in 0..samples {
            let t = Instant::now();
            client.check(HealthCheckRequest { service: String::new() }).await?;
            out.push(t.elapsed().as_secs_f64());
        }
        Ok(out)
    })
    .await
}

/// The floor of a statement: `SELECT 1` through pgbench, one transaction's
/// end to the next (its logged latencies are mostly 0: see `intervals`).
pub fn pgbench_floor_latencies(db_url: &str, samples: u64, dir: &Path) -> anyhow::Result<Vec<f64>> {
    Ok(pgbench(db_url, "SELECT 1;\n", 1, 0, Some(samples), dir)?.intervals)
}

/// GetLogDetails' two statements through pgbench.
pub fn pgbench_details_latencies(db_url: &str, s: &Seeded, samples: u64, dir: &Path) -> anyhow::Result<Vec<f64>> {
    let script = format!(
        "\\set i random(0, {last})\n{select} WHERE r.request_id = md5('r' || :i)::uuid\n\\gset g_\n\
         SELECT attempt_number, attempted_at, success, status_code, response_body, response_truncated, \
         response_time_ms, error_category, error_message FROM webhook_attempts \
         WHERE request_pk = :g_id AND request_created_at = :g_created_at ORDER BY attempt_number DESC;\n",
        last = s.rows - 1,
        select = sql::LOG_SELECT,
    );
    Ok(pgbench(db_url, &script, 1, 0, Some(samples), dir)?.latencies)
}

pub struct PurgeFigures {
    pub drop_secs: f64,
    pub drop_wal: i64,
    pub delete_secs: f64,
    pub delete_wal: i64,
    pub dispatch_alone: f64,
    pub dispatch_during_drop: f64,
    pub dispatch_during_delete: f64,
}

/// Retention: one day of `rows` requests (+ attempts) removed by partition
/// drop vs by DELETE, and dispatch throughput while each runs.
pub async fn purge_figures(
    db_url: &str,
    rows: u64,
    pool_size: u32,
    concurrency: usize,
    url: &str,
    n: usize,
) -> anyhow::Result<PurgeFigures> {
    let pool = PgPool::connect(db_url).await?;
    let store = PostgresStore::connect(db_url, 2, Duration::from_secs(10)).await?;
    let today = Utc::now().date_naive();
    let day = today - Days::new(3);
    let day_start = day.and_hms_opt(0, 0, 0).context("midnight")?.and_utc();
    let cutoff = day_start + chrono::TimeDelta::days(1);
    let seeded = Seeded { tag: "p", rows, total: rows, orgs: 100, from: day_start, span: chrono::TimeDelta::hours(23) };
    let reseed = || async {
        store.ensure_partitions(day, day).await?;
        seed_logs(&pool, 0, rows, &seeded).await
    };
    let app = start_app(db_url, pool_size, concurrency, false).await?;

    reseed().await?;
    let dispatch_alone = grpc_dispatch(&app, url, n, concurrency).await?;
    let (w0, t0) = (wal_bytes(&pool).await?, Instant::now());
    store.purge(Utc::now() - cutoff, false).await?;
    let (drop_secs, drop_wal) = (t0.elapsed().as_secs_f64(), wal_bytes(&pool).await? - w0);

    reseed().await?;
    let delete = |pool: PgPool| async move {
        sqlx::query("DELETE FROM webhook_attempts WHERE request_created_at >= $1 AND request_created_at < $2")
            .bind(day_start)
            .bind(cutoff)
            .execute(&pool)
            .await?;
        sqlx::query("DELETE FROM webhook_requests WHERE created_at >= $1 AND created_at < $2")
            .bind(day_start)
            .bind(cutoff)
            .execute(&pool)
            .await?;
        sqlx::query("DELETE FROM webhook_messages WHERE created_at >= $1 AND created_at < $2")
            .bind(day_start)
            .bind(cutoff)
            .execute(&pool)
            .await?;
        anyhow::Ok(())
    };
    let (w0, t0) = (wal_bytes(&pool).await?, Instant::now());
    delete(pool.clone()).await?;
    let (delete_secs, delete_wal) = (t0.elapsed().as_secs_f64(), wal_bytes(&pool).await? - w0);

    // Dispatch while each purge runs.
    sqlx::query("VACUUM webhook_requests").execute(&pool).await.ok();
    reseed().await?;
    let purge = tokio::spawn({
        let store = store.clone();
        async move { store.purge(Utc::now() - cutoff, false).await }
    });
    let dispatch_during_drop = grpc_dispatch(&app, url, n, concurrency).await?;
    purge.await??;
    reseed().await?;
    let deleting = tokio::spawn(delete(pool.clone()));
    let dispatch_during_delete = grpc_dispatch(&app, url, n, concurrency).await?;
    deleting.await??;
    app.shutdown().await?;
    Ok(PurgeFigures {
        drop_secs,
        drop_wal,
        delete_secs,
        delete_wal,
        dispatch_alone,
        dispatch_during_drop,
        dispatch_during_delete,
    })
}

/// Time from sending a Dispatch to the webhook's arrival at the receiver, one
/// at a time. With `same_process` the replica dispatched to delivers (woken
/// in-process); otherwise an API-only replica takes the Dispatch and another
/// finds the work by polling.
pub async fn pickup_latency(
    db_url: &str,
    receiver: &BenchReceiver,
    same_process: bool,
    samples: usize,
) -> anyhow::Result<f64> {
    let worker = start_app(db_url, 4, 16, true).await?;
    let api = if same_process { None } else { Some(start_app(db_url, 4, 16, false).await?) };
    let target = api.as_ref().unwrap_or(&worker);
    let mut client = WebhookServiceClient::connect(target.base_url()).await?;
    let mut took = Vec::new();
    for _ in 0..samples {
        let arrived = receiver.arrived.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        let start = Instant::now();
        let req = pb::DispatchRequest {
            organization_id: Uuid::new_v4().to_string(),
            webhook_url: receiver.url.clone(),
            webhook_type: "call_ended".into(),
            ..Default::default()
        };
        client.dispatch(authed(req, &target.key)).await?;
        tokio::time::timeout(Duration::from_secs(10), arrived).await.context("webhook never arrived")?;
        took.push(start.elapsed().as_secs_f64());
    }
    if let Some(api) = api {
        api.shutdown().await?;
    }
    worker.shutdown().await?;
    Ok(median(&took))
}
