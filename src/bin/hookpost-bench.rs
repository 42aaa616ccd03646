//! Load generator behind docs/PERFORMANCE.md. Each figure is a ratio of
//! hookpost against the bare baseline that bounds it, measured in the same run,
//! alternating rounds: `dispatch` against pgbench running the same INSERT, and
//! `deliver` against a bare reqwest loop posting the same bodies to the same
//! receiver at the same concurrency. Traffic stays on 127.0.0.1.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::serve::ListenerExt;
use clap::Parser;
use hookpost::proto::v1 as pb;
use hookpost::proto::v1::webhook_service_client::WebhookServiceClient;
use hookpost::store::Store;
use hookpost::{Application, Config};
use sqlx::{Connection, Executor, PgConnection};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Parser)]
#[command(about = "hookpost benchmarks: each figure is a ratio against its bare baseline")]
struct Args {
    /// The short run (under 2 minutes on 2 cores).
    #[arg(long)]
    quick: bool,
    /// Postgres server to create the benchmark databases on.
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    database_url: String,
    /// Webhooks per round (default 5000, quick 2000).
    #[arg(long)]
    webhooks: Option<usize>,
    /// Concurrent requests / deliveries.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Rounds of A and B, alternating (default 3, quick 2).
    #[arg(long)]
    rounds: Option<usize>,
    /// hookpost's database pool (pgbench gets as many connections).
    #[arg(long, default_value_t = 16)]
    pool: u32,
}

/// A receiver that answers 200 at once and counts requests and connections.
struct BenchReceiver {
    url: String,
    requests: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    arrived: Arc<tokio::sync::Notify>,
}

impl BenchReceiver {
    async fn start() -> anyhow::Result<Self> {
        let requests = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let arrived = Arc::new(tokio::sync::Notify::new());
        let (r, a) = (requests.clone(), arrived.clone());
        let app = axum::Router::new().fallback(move || {
            r.fetch_add(1, Ordering::Relaxed);
            a.notify_one();
            async { r#"{"received": true}"# }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let c = connections.clone();
        let listener = listener.tap_io(move |_| {
            c.fetch_add(1, Ordering::Relaxed);
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { url: format!("http://{addr}/hook"), requests, connections, arrived })
    }
}

fn payload_1k() -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("event".into(), "call_ended".into());
    m.insert("transcript_summary".into(), "x".repeat(960).into());
    m
}

async fn create_database(admin: &str, name: &str) -> anyhow::Result<String> {
    let mut conn = PgConnection::connect(admin).await.context("connecting to Postgres")?;
    conn.execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str()).await?;
    conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str()).await?;
    let mut url = url::Url::parse(admin)?;
    url.set_path(name);
    Ok(url.to_string())
}

async fn drop_database(admin: &str, name: &str) {
    if let Ok(mut conn) = PgConnection::connect(admin).await {
        let _ = conn.execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str()).await;
    }
}

struct RunningApp {
    addr: std::net::SocketAddr,
    key: String,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_app(database_url: &str, args: &Args, deliver: bool) -> anyhow::Result<RunningApp> {
    let mut config = Config::new(database_url, "127.0.0.1:0".parse()?);
    config.db_pool_size = args.pool;
    config.delivery.enabled = deliver;
    config.delivery.concurrency = args.concurrency;
    config.delivery.per_host_concurrency = args.concurrency;
    config.delivery.batch_size = args.concurrency as u32;
    // The receiver is on 127.0.0.1.
    config.allow_private_targets(true);
    let app = Application::build(config).await?;
    let addr = app.local_addr();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let handle = tokio::spawn(app.run(async move { s.cancelled().await }));
    let key = service_key(database_url).await?;
    Ok(RunningApp { addr, key, stop, handle })
}

impl RunningApp {
    async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.handle.await?
    }
}

/// Creates a service key in the benchmark database.
async fn service_key(db_url: &str) -> anyhow::Result<String> {
    let store = hookpost::store::PostgresStore::connect(db_url, 1, Duration::from_secs(10)).await?;
    store.migrate().await?;
    let key = hookpost::auth::generate(hookpost::auth::KeyKind::Service);
    store.insert_api_key(&key).await?;
    Ok(key.plaintext)
}

fn authed<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert("authorization", format!("Bearer {key}").parse().expect("ASCII key"));
    req
}

/// Dispatches `n` webhooks at `concurrency`; returns dispatches per second.
async fn dispatch_round(app: &RunningApp, url: &str, n: usize, concurrency: usize) -> anyhow::Result<f64> {
    let client = WebhookServiceClient::connect(format!("http://{}", app.addr)).await?;
    let payload = hookpost::grpc::json_to_struct(payload_1k());
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let (mut client, next, payload, url) = (client.clone(), next.clone(), payload.clone(), url.to_string());
        let key = app.key.clone();
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

/// The bare baseline: one reqwest client posting `n` bodies at `concurrency`.
async fn reqwest_round(url: &str, n: usize, concurrency: usize) -> anyhow::Result<f64> {
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
                let _ = resp.bytes().await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Seeds `n` pending webhooks through an API-only replica, then times a
/// delivering replica until every one is recorded as succeeded.
async fn deliver_round(
    db_url: &str,
    args: &Args,
    receiver: &BenchReceiver,
    n: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    let api = start_app(db_url, args, false).await?;
    let dispatch_rate = dispatch_round(&api, &receiver.url, n, args.concurrency).await?;
    api.shutdown().await?;

    let pool = sqlx::PgPool::connect(db_url).await?;
    let conns_before = receiver.connections.load(Ordering::Relaxed);
    let requests_before = receiver.requests.load(Ordering::Relaxed);
    let start = Instant::now();
    let worker = start_app(db_url, args, true).await?;
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
    let rate = n as f64 / start.elapsed().as_secs_f64();
    worker.shutdown().await?;
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_requests WHERE status <> 'succeeded'")
        .fetch_one(&pool)
        .await?;
    if failed > 0 {
        bail!("{failed} deliveries did not succeed");
    }
    let received = receiver.requests.load(Ordering::Relaxed) - requests_before;
    if received < n as u64 {
        bail!("the receiver saw {received} requests for {n} deliveries");
    }
    sqlx::query("TRUNCATE webhook_attempts, webhook_requests").execute(&pool).await?;
    let new_conns = (receiver.connections.load(Ordering::Relaxed) - conns_before) as f64 / n as f64;
    Ok((rate, dispatch_rate, new_conns))
}

/// pgbench running Dispatch's INSERT + COMMIT with `clients` connections for
/// `seconds`; returns transactions per second.
fn pgbench_insert(db_url: &str, clients: u32, seconds: u64, dir: &std::path::Path) -> anyhow::Result<f64> {
    let script = dir.join("dispatch.sql");
    let body = serde_json::Value::Object(payload_1k()).to_string().replace('\'', "''");
    std::fs::write(
        &script,
        format!(
            "INSERT INTO webhook_requests (request_id, organization_id, webhook_url, webhook_type, body, \
             metadata, idempotency_key, max_retries, next_attempt_at) VALUES (gen_random_uuid(), \
             gen_random_uuid(), 'http://127.0.0.1:9/hook', 'call_ended', '{body}', NULL, NULL, 3, now()) \
             ON CONFLICT (organization_id, idempotency_key) DO NOTHING RETURNING id;\n"
        ),
    )?;
    let out = Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-c", &clients.to_string(), "-j", "2", "-T", &seconds.to_string(), "-f"])
        .arg(&script)
        .arg(db_url)
        .output()
        .context("running pgbench (Debian package postgresql-client)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("pgbench failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    }
    text.lines()
        .find_map(|l| l.strip_prefix("tps = ").and_then(|r| r.split_whitespace().next()).and_then(|v| v.parse().ok()))
        .context("no tps in pgbench output")
}

/// Time from sending a Dispatch to the webhook's arrival at the receiver, for
/// `samples` webhooks one at a time. With `same_process` the delivering replica
/// is the one dispatched to (woken in-process); otherwise an API-only replica
/// takes the Dispatch and a second replica finds it by polling.
async fn pickup_latency(
    db_url: &str,
    args: &Args,
    receiver: &BenchReceiver,
    same_process: bool,
    samples: usize,
) -> anyhow::Result<Duration> {
    let worker = start_app(db_url, args, true).await?;
    let api = if same_process { None } else { Some(start_app(db_url, args, false).await?) };
    let target = api.as_ref().unwrap_or(&worker).addr;
    let target_key = api.as_ref().unwrap_or(&worker).key.clone();
    let mut client = WebhookServiceClient::connect(format!("http://{target}")).await?;
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
        client.dispatch(authed(req, &target_key)).await?;
        tokio::time::timeout(Duration::from_secs(10), arrived).await.context("webhook never arrived")?;
        took.push(start.elapsed().as_secs_f64());
    }
    if let Some(api) = api {
        api.shutdown().await?;
    }
    worker.shutdown().await?;
    Ok(Duration::from_secs_f64(median(took)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Row {
    scenario: &'static str,
    hookpost: f64,
    baseline: f64,
    unit: &'static str,
    note: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let n = args.webhooks.unwrap_or(if args.quick { 2000 } else { 5000 });
    let rounds = args.rounds.unwrap_or(if args.quick { 2 } else { 3 });
    let tag = format!("hookpost_bench_{}", std::process::id());
    let db_url = create_database(&args.database_url, &tag).await?;
    let pgb_name = format!("{tag}_pgbench");
    let pgb_url = create_database(&args.database_url, &pgb_name).await?;
    hookpost::store::PostgresStore::connect(&pgb_url, 1, Duration::from_secs(10)).await?.migrate().await?;
    let tmp = std::env::temp_dir().join(&tag);
    std::fs::create_dir_all(&tmp)?;
    let receiver = BenchReceiver::start().await?;
    eprintln!("{n} webhooks per round, concurrency {}, pool {}, {rounds} rounds", args.concurrency, args.pool);

    let (mut deliver, mut bare, mut dispatch, mut pgb, mut conns) = (vec![], vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        let r = reqwest_round(&receiver.url, n, args.concurrency).await?;
        let (d, disp, c) = deliver_round(&db_url, &args, &receiver, n).await?;
        let p = pgbench_insert(&pgb_url, args.pool, if args.quick { 5 } else { 10 }, &tmp)?;
        eprintln!(
            "round {round}: deliver {d:.0}/s vs reqwest {r:.0}/s; dispatch {disp:.0}/s vs pgbench {p:.0}/s; \
             {c:.4} new connections per delivery"
        );
        deliver.push(d);
        bare.push(r);
        dispatch.push(disp);
        pgb.push(p);
        conns.push(c);
    }
    let same = pickup_latency(&db_url, &args, &receiver, true, 50).await?;
    let other = pickup_latency(&db_url, &args, &receiver, false, 20).await?;
    eprintln!(
        "pickup (dispatch answered -> webhook at receiver, median): same replica {:.1} ms, \
         other replica {:.1} ms (poll interval 200 ms)",
        same.as_secs_f64() * 1e3,
        other.as_secs_f64() * 1e3
    );
    let rows = [
        Row {
            scenario: "dispatch",
            hookpost: median(dispatch),
            baseline: median(pgb),
            unit: "requests/s",
            note: format!("pgbench INSERT+COMMIT, {} connections", args.pool),
        },
        Row {
            scenario: "deliver",
            hookpost: median(deliver),
            baseline: median(bare),
            unit: "deliveries/s",
            note: format!("bare reqwest loop; {:.4} new connections/delivery", median(conns)),
        },
    ];
    println!("| scenario | hookpost | baseline | unit | ratio | baseline is |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.0} | {} | {:.2} | {} |",
            r.scenario,
            r.hookpost,
            r.baseline,
            r.unit,
            r.hookpost / r.baseline,
            r.note
        );
    }
    for r in &rows {
        println!(
            "{}",
            serde_json::json!({"scenario": r.scenario, "hookpost": r.hookpost, "baseline": r.baseline,
                "unit": r.unit, "ratio": r.hookpost / r.baseline})
        );
    }
    drop_database(&args.database_url, &tag).await;
    drop_database(&args.database_url, &pgb_name).await;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
