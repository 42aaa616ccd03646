//! What every scenario needs: databases, a running hookpost, a counting
//! receiver, pgbench, percentiles and WAL counters.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::serve::ListenerExt;
use hookpost::store::{PostgresStore, Store};
use hookpost::{Application, Config};
use sqlx::{Connection, Executor, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

/// A receiver that answers 200 at once and counts requests and connections.
pub struct BenchReceiver {
    pub url: String,
    pub requests: Arc<AtomicU64>,
    pub connections: Arc<AtomicU64>,
    pub arrived: Arc<tokio::sync::Notify>,
}

impl BenchReceiver {
    pub async fn start() -> anyhow::Result<Self> {
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

/// A 1 KiB JSON payload, as most benchmarks dispatch.
pub fn payload_1k() -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("event".into(), "call_ended".into());
    m.insert("transcript_summary".into(), "x".repeat(960).into());
    m
}

pub async fn create_database(admin: &str, name: &str) -> anyhow::Result<String> {
    let mut conn = PgConnection::connect(admin).await.context("connecting to Postgres")?;
    conn.execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str()).await?;
    conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str()).await?;
    let mut url = url::Url::parse(admin)?;
    url.set_path(name);
    let url = url.to_string();
    PostgresStore::connect(&url, 1, Duration::from_secs(10)).await?.migrate().await?;
    Ok(url)
}

/// Starts a timed phase from a fresh checkpoint. Runs write a GiB of WAL
/// within a minute or two, so Postgres checkpoints every half minute or so
/// (`max_wal_size`), and the pages first written after a checkpoint go to
/// the WAL whole: a phase that happened to start after one ran slower than
/// one that did not, and the ratio of two phases swung by a fifth from run
/// to run. Each phase now starts just after a checkpoint. Needs a superuser
/// or `pg_checkpoint`; without, phases run as before.
pub async fn checkpoint(db_url: &str) {
    let done = async {
        let mut conn = PgConnection::connect(db_url).await?;
        conn.execute("CHECKPOINT").await
    };
    if let Err(err) = done.await {
        eprintln!("CHECKPOINT before a phase failed ({err}); the phase runs without");
    }
}

pub async fn drop_database(admin: &str, name: &str) {
    if let Ok(mut conn) = PgConnection::connect(admin).await {
        let _ = conn.execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str()).await;
    }
}

pub struct RunningApp {
    pub addr: std::net::SocketAddr,
    pub key: String,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub async fn start_app(database_url: &str, pool: u32, concurrency: usize, deliver: bool) -> anyhow::Result<RunningApp> {
    let mut config = Config::new(database_url, "127.0.0.1:0".parse()?);
    config.db_pool_size = pool;
    config.delivery.enabled = deliver;
    config.delivery.concurrency = concurrency;
    config.delivery.per_host_concurrency = concurrency;
    config.delivery.batch_size = concurrency as u32;
    // One key for every replica of the run: an ephemeral key per replica
    // cannot open the signing secrets another one sealed (every delivery
    // then fails with "the signing secret cannot be read").
    config.secret_key =
        hookpost::config::SecretKeySource::Base64("aG9va3Bvc3QtYmVuY2gtZml4ZWQta2V5LTMyYnl0ZXM=".into());
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
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.handle.await?
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A tonic server with the health service alone, served by tonic's own
/// transport with its defaults: the gRPC floor the Dispatch round compares
/// with. Runs until `stop` is cancelled.
pub struct BareGrpc {
    pub addr: std::net::SocketAddr,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl BareGrpc {
    pub async fn start() -> anyhow::Result<Self> {
        let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse()?)?.with_nodelay(Some(true));
        let addr = incoming.local_addr()?;
        let (_, health) = tonic_health::server::health_reporter();
        let stop = CancellationToken::new();
        let stopped = stop.clone().cancelled_owned();
        let handle = tokio::spawn(
            tonic::transport::Server::builder().add_service(health).serve_with_incoming_shutdown(incoming, stopped),
        );
        Ok(Self { addr, stop, handle })
    }

    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        Ok(self.handle.await??)
    }
}

pub async fn service_key(db_url: &str) -> anyhow::Result<String> {
    let store = PostgresStore::connect(db_url, 1, Duration::from_secs(10)).await?;
    let key = hookpost::auth::generate(hookpost::auth::KeyKind::Service);
    store.insert_api_key(&key).await?;
    Ok(key.plaintext)
}

pub fn authed<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert("authorization", format!("Bearer {key}").parse().expect("ASCII key"));
    req
}

/// Replaces `$1`, `$2`, ... of a store statement (highest first, so `$1`
/// does not eat `$12`).
pub fn substitute(sql: &str, args: &[&str]) -> String {
    let mut out = sql.to_owned();
    for (i, arg) in args.iter().enumerate().rev() {
        out = out.replace(&format!("${}", i + 1), arg);
    }
    out
}

pub struct Pgbench {
    pub tps: f64,
    /// Per-transaction latencies in seconds (only with `log`).
    pub latencies: Vec<f64>,
    /// Seconds between one client's consecutive transaction ends (only with
    /// `log`). pgbench logs a latency of 0 µs for most transactions that find
    /// their answer already there (SELECT 1 here: 487 of 500), as it reads
    /// its clock lazily, while the log's end times stay right.
    pub intervals: Vec<f64>,
}

/// Runs pgbench on `script` with `clients` connections, for `seconds` (or for
/// `transactions` per client when given), in prepared mode.
pub fn pgbench(
    db_url: &str,
    script: &str,
    clients: u32,
    seconds: u64,
    transactions: Option<u64>,
    dir: &Path,
) -> anyhow::Result<Pgbench> {
    let path = dir.join("script.sql");
    std::fs::write(&path, script)?;
    let prefix = dir.join("pgbench_log");
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_name().to_string_lossy().starts_with("pgbench_log") {
            std::fs::remove_file(e.path())?;
        }
    }
    let mut cmd = Command::new("pgbench");
    cmd.args(["-n", "-M", "prepared", "-c", &clients.to_string(), "-j", &clients.min(2).to_string()]);
    match transactions {
        Some(t) => cmd.args(["-t", &t.to_string(), "--log", "--log-prefix"]).arg(&prefix),
        None => cmd.args(["-T", &seconds.to_string()]),
    };
    let out = cmd.arg("-f").arg(&path).arg(db_url).output().context("running pgbench (postgresql-client)")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!("pgbench failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let tps = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = ").and_then(|r| r.split_whitespace().next()).and_then(|v| v.parse().ok()))
        .context("no tps in pgbench output")?;
    let (mut latencies, mut intervals) = (Vec::new(), Vec::new());
    if transactions.is_some() {
        for e in std::fs::read_dir(dir)?.flatten() {
            if e.file_name().to_string_lossy().starts_with("pgbench_log") {
                let mut last_end: HashMap<&str, i64> = HashMap::new();
                let text = std::fs::read_to_string(e.path())?;
                for line in text.lines() {
                    // client_id transaction_no latency_us script_no epoch us
                    let f: Vec<&str> = line.split_whitespace().collect();
                    if let Some(us) = f.get(2).and_then(|v| v.parse::<f64>().ok()) {
                        latencies.push(us / 1e6);
                    }
                    let end = f
                        .get(4)
                        .zip(f.get(5))
                        .and_then(|(s, us)| Some(s.parse::<i64>().ok()? * 1_000_000 + us.parse::<i64>().ok()?));
                    if let (Some(&client), Some(end)) = (f.first(), end)
                        && let Some(prev) = last_end.insert(client, end)
                    {
                        intervals.push((end - prev) as f64 / 1e6);
                    }
                }
            }
        }
    }
    Ok(Pgbench { tps, latencies, intervals })
}

pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() - 1) as f64 * p).round() as usize]
}

/// hookpost's samples and its baseline's, half of each at a time, in the
/// order hookpost, baseline, baseline, hookpost: whatever runs in the
/// background (a checkpoint, an earlier scenario's leftovers) falls on
/// neither side more than the other.
pub async fn alternating<F>(
    mut hookpost: impl FnMut() -> F,
    mut baseline: impl FnMut() -> anyhow::Result<Vec<f64>>,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)>
where
    F: std::future::Future<Output = anyhow::Result<Vec<f64>>>,
{
    let mut h = hookpost().await?;
    let mut b = baseline()?;
    b.extend(baseline()?);
    h.extend(hookpost().await?);
    Ok((h, b))
}

pub fn median(v: &[f64]) -> f64 {
    percentile(v, 0.5)
}

/// Bytes of WAL written so far (cluster-wide).
pub async fn wal_bytes(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint").fetch_one(pool).await?)
}

/// (WAL syncs, commits in this database) so far.
pub async fn wal_syncs_and_commits(pool: &PgPool) -> anyhow::Result<(i64, i64)> {
    let syncs: i64 = sqlx::query_scalar("SELECT wal_sync FROM pg_stat_wal").fetch_one(pool).await?;
    let commits: i64 =
        sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
            .fetch_one(pool)
            .await?;
    Ok((syncs, commits))
}

/// Runs a latency loop the way pgbench runs its one client (`-c 1 -j 1`): on
/// a thread of its own, with a single-threaded runtime, so that the load
/// generator's own tasks neither share the server's worker threads nor wake
/// them. The p50s of one call at a time then compare the server's path with
/// pgbench's, not the server's path plus the client's hops between threads.
pub async fn on_client_thread<T: Send + 'static>(
    work: impl std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(work)
    })
    .await?
}
