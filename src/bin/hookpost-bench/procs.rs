//! Out-of-process pieces: the sink (a receiver in its own process, a
//! subcommand of this binary) and hookpost itself run as the real `hookpost
//! serve` binary, so that their CPU can be read from /proc apart from the load
//! generator's. Also the Postgres counters the delivery scenarios report.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use axum::extract::State;
use axum::http::HeaderMap;
use sqlx::PgPool;

/// `hookpost-bench sink --listen ADDR [--hang] [--delay-ms MS] [--record]`.
#[derive(clap::Parser)]
pub struct SinkArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// Never answer (a receiver that hangs until the sender gives up).
    #[arg(long)]
    pub hang: bool,
    /// Answer each request after this many milliseconds (a slow receiver).
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Keep each request's `webhook-id` and arrival time (Unix µs).
    #[arg(long)]
    pub record: bool,
}

#[derive(Default)]
struct SinkState {
    hang: bool,
    delay: Duration,
    record: bool,
    requests: AtomicU64,
    open: AtomicU64,
    max_open: AtomicU64,
    arrivals: Mutex<Vec<(String, i64)>>,
}

struct Open(Arc<SinkState>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

pub fn unix_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Answers 200 at once (HTTP/1.1 keep-alive, as axum serves it), after
/// `--delay-ms`, or never with `--hang`. `GET /__stats` and `GET /__arrivals` report to the bench.
pub async fn run_sink(args: SinkArgs) -> anyhow::Result<()> {
    let state = Arc::new(SinkState {
        hang: args.hang,
        delay: Duration::from_millis(args.delay_ms),
        record: args.record,
        ..Default::default()
    });
    async fn hook(State(s): State<Arc<SinkState>>, headers: HeaderMap) -> &'static str {
        let at = unix_micros();
        s.requests.fetch_add(1, Ordering::Relaxed);
        let open = s.open.fetch_add(1, Ordering::Relaxed) + 1;
        s.max_open.fetch_max(open, Ordering::Relaxed);
        let _open = Open(s.clone());
        if s.record
            && let Some(id) = headers.get("webhook-id").and_then(|v| v.to_str().ok())
        {
            s.arrivals.lock().expect("arrivals").push((id.to_owned(), at));
        }
        if s.hang {
            std::future::pending::<()>().await;
        }
        if !s.delay.is_zero() {
            tokio::time::sleep(s.delay).await;
        }
        r#"{"received": true}"#
    }
    async fn stats(State(s): State<Arc<SinkState>>) -> axum::Json<serde_json::Value> {
        axum::Json(serde_json::json!({
            "requests": s.requests.load(Ordering::Relaxed),
            "open": s.open.load(Ordering::Relaxed),
            "max_open": s.max_open.load(Ordering::Relaxed),
        }))
    }
    async fn arrivals(State(s): State<Arc<SinkState>>) -> axum::Json<Vec<(String, i64)>> {
        axum::Json(s.arrivals.lock().expect("arrivals").clone())
    }
    let app = axum::Router::new()
        .route("/__stats", axum::routing::get(stats))
        .route("/__arrivals", axum::routing::get(arrivals))
        .fallback(hook)
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// A child process whose first stdout line announces where it listens.
pub struct Child {
    child: std::process::Child,
    pub pid: u32,
    pub addr: String,
}

impl Child {
    async fn spawn(program: &Path, args: &[String], dir: &Path, name: &str, marker: &str) -> anyhow::Result<Self> {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let mut child = std::process::Command::new(program)
            .args(args)
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let pid = child.id();
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if let Some(rest) = text.lines().find_map(|l| l.strip_prefix(marker)) {
                let addr = rest.split_whitespace().next().unwrap_or_default().to_owned();
                return Ok(Self { child, pid, addr });
            }
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited ({status}): {}", std::fs::read_to_string(&err).unwrap_or_default());
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("{name} did not start: {}", std::fs::read_to_string(&err).unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(mut self) {
        // SIGTERM lets hookpost drain; then make sure (Drop).
        let _ = std::process::Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The out-of-process receiver.
pub struct Sink {
    pub proc: Child,
    pub base: String,
    client: reqwest::Client,
}

#[derive(serde::Deserialize, Debug, Clone, Copy)]
pub struct SinkStats {
    pub requests: u64,
    pub max_open: u64,
}

impl Sink {
    pub async fn start(dir: &Path, name: &str, flags: &[&str]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut args = vec!["sink".to_string(), "--listen".into(), "127.0.0.1:0".into()];
        args.extend(flags.iter().map(|f| f.to_string()));
        let proc = Child::spawn(&exe, &args, dir, name, "listening ").await?;
        let base = proc.addr.clone();
        Ok(Self { proc, base, client: reqwest::Client::new() })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    pub async fn stats(&self) -> anyhow::Result<SinkStats> {
        let body = self.client.get(format!("{}/__stats", self.base)).send().await?.bytes().await?;
        Ok(serde_json::from_slice(&body)?)
    }

    pub async fn arrivals(&self) -> anyhow::Result<HashMap<String, i64>> {
        let body = self.client.get(format!("{}/__arrivals", self.base)).send().await?.bytes().await?;
        let v: Vec<(String, i64)> = serde_json::from_slice(&body)?;
        Ok(v.into_iter().collect())
    }

    /// Waits until the sink has seen `n` requests; returns when it did.
    pub async fn wait_for(&self, n: u64, limit: Duration) -> anyhow::Result<Instant> {
        let start = Instant::now();
        loop {
            if self.stats().await?.requests >= n {
                return Ok(Instant::now());
            }
            if start.elapsed() > limit {
                bail!("the sink saw {} of {n} requests in {limit:?}", self.stats().await?.requests);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The real `hookpost serve` (built next to this binary by scripts/bench),
/// on the Postgres store, with its default delivery settings unless `extra`
/// says otherwise. Receivers are on 127.0.0.1, so private targets are allowed.
pub struct Hookpost {
    pub proc: Child,
    pub key: String,
}

impl Hookpost {
    pub async fn start(db_url: &str, dir: &Path, name: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let exe = hookpost_binary()?;
        // One data directory for every replica: the secret key generated there
        // must open the signing secrets another replica sealed.
        let data = dir.join("hookpost-data");
        std::fs::create_dir_all(&data)?;
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--database-url".into(),
            db_url.into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--allow-private-targets".into(),
            "--data-dir".into(),
            data.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let key = crate::support::service_key(db_url).await?;
        let proc = Child::spawn(&exe, &args, dir, name, "hookpost listening on ").await?;
        // Idle: listening, nothing asked of it yet.
        let idle = memory_mib(proc.pid, "VmRSS:");
        MEMORY.lock().expect("memory figures poisoned").push((name.to_owned(), proc.pid, idle, 0.0));
        Ok(Self { proc, key })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.proc.addr)
    }

    /// Stops it, keeping its peak RSS for [`memory_figures`].
    pub async fn stop(self) {
        let peak = memory_mib(self.proc.pid, "VmHWM:");
        if let Some(m) = MEMORY.lock().expect("memory figures poisoned").iter_mut().find(|m| m.1 == self.proc.pid) {
            m.3 = peak;
        }
        self.proc.stop().await
    }
}

/// (process name, pid, idle RSS, peak RSS) in MiB of every `hookpost serve`
/// the run started (issue 14, item 7). Pids are not reused within a run.
type MemoryFigure = (String, u32, f64, f64);
static MEMORY: std::sync::Mutex<Vec<MemoryFigure>> = std::sync::Mutex::new(Vec::new());

/// The largest idle RSS and the largest peak RSS (MiB) of the `hookpost
/// serve` processes stopped so far, with the names of those processes.
pub fn memory_figures() -> Option<((String, f64), (String, f64))> {
    let m = MEMORY.lock().expect("memory figures poisoned");
    let idle = m.iter().max_by(|a, b| a.2.total_cmp(&b.2))?;
    let peak = m.iter().max_by(|a, b| a.3.total_cmp(&b.3))?;
    Some(((idle.0.clone(), idle.2), (peak.0.clone(), peak.3)))
}

/// A `/proc/<pid>/status` size field (`VmRSS:` now, `VmHWM:` the peak), MiB.
fn memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn hookpost_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name("hookpost");
    if !path.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release --bin hookpost` (scripts/bench does)",
            path.display()
        );
    }
    Ok(path)
}

/// utime + stime of a process, in seconds (0 when it is gone).
pub fn cpu_secs(pid: u32) -> f64 {
    stat_times(pid).map_or(0.0, |(own, _)| own)
}

/// A process's own CPU (utime + stime) and that of its children that have
/// exited and been waited for (cutime + cstime), in seconds; None when it
/// is gone.
fn stat_times(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15, cutime
    // 16, cstime 17.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / clock_ticks();
    Some((ticks(11) + ticks(12), ticks(13) + ticks(14)))
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU seconds of one process and of every postgres process, per pid, so a
/// later snapshot can be subtracted. A postgres process's figure includes
/// its children that have exited: so the postmaster's holds every backend
/// that ended (pgbench's, at the end of each run), which would otherwise
/// vanish from the sum with its pid.
pub struct CpuSnapshot {
    hookpost: f64,
    postgres: HashMap<u32, f64>,
}

impl CpuSnapshot {
    pub fn take(hookpost_pid: u32) -> Self {
        let hookpost = cpu_secs(hookpost_pid);
        // A backend reaped after the postmaster's entry was read but before
        // its own would be in neither (pgbench's backends end just as a
        // phase does): read again until no postgres process's children
        // changed during the read.
        let mut postgres = Self::postgres();
        for _ in 0..10 {
            let children: f64 = postgres.values().map(|(_, c)| c).sum();
            let again: f64 = postgres.keys().filter_map(|pid| stat_times(*pid)).map(|(_, c)| c).sum();
            if again == children {
                break;
            }
            postgres = Self::postgres();
        }
        Self { hookpost, postgres: postgres.into_iter().map(|(pid, (own, children))| (pid, own + children)).collect() }
    }

    /// Every postgres process's (own, children's) CPU seconds.
    fn postgres() -> HashMap<u32, (f64, f64)> {
        let mut postgres = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "postgres"
                    && let Some(times) = stat_times(pid)
                {
                    postgres.insert(pid, times);
                }
            }
        }
        postgres
    }

    /// (hookpost, postgres) CPU seconds from `earlier` to `self`: all of
    /// Postgres then against all of it now. A backend that started in
    /// between counts whole; one that ended counts in the postmaster's
    /// children, less what it had used by `earlier`. Other clients of the
    /// same cluster count in (noise).
    pub fn since(&self, earlier: &CpuSnapshot) -> (f64, f64) {
        let pg = self.postgres.values().sum::<f64>() - earlier.postgres.values().sum::<f64>();
        (self.hookpost - earlier.hookpost, pg)
    }
}

/// Busy and total CPU ticks of the whole machine (`/proc/stat`: user,
/// nice, system, idle, iowait, irq, softirq, steal, then guest and
/// guest_nice, which user and nice already hold). Busy is what ran here:
/// not idle, iowait, or steal (time the hypervisor gave to another guest).
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
    let total: u64 = (0..8).map(at).sum();
    (at(0) + at(1) + at(2) + at(5) + at(6), total)
}

/// Where one kind of phase spends its CPU, summed over its slices: this
/// process (in the Dispatch round: the server and the load generator),
/// every postgres process, and the machine's busy share, per unit of work
/// (a Dispatch, a row). Item 5 of issue 14 is a question of CPU on two
/// shared cores, and this is the arithmetic behind it.
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseCpu {
    process_secs: f64,
    postgres_secs: f64,
    busy_ticks: u64,
    total_ticks: u64,
    units: f64,
}

/// A phase being measured: started before it, stopped after it.
pub struct CpuMeter {
    cpu: CpuSnapshot,
    ticks: (u64, u64),
    started: Instant,
}

impl CpuMeter {
    pub fn start() -> Self {
        Self { cpu: CpuSnapshot::take(std::process::id()), ticks: machine_ticks(), started: Instant::now() }
    }

    /// Seconds since the meter started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Adds the phase, which did `units` of work, to `into`.
    pub fn stop(self, into: &mut PhaseCpu, units: f64) {
        let (process, postgres) = CpuSnapshot::take(std::process::id()).since(&self.cpu);
        let (busy, total) = machine_ticks();
        into.process_secs += process;
        into.postgres_secs += postgres;
        into.busy_ticks += busy.saturating_sub(self.ticks.0);
        into.total_ticks += total.saturating_sub(self.ticks.1);
        into.units += units;
    }
}

impl PhaseCpu {
    /// This process's and Postgres's CPU per unit (µs), and the machine's
    /// busy share (%).
    pub fn per_unit(&self) -> (f64, f64, f64) {
        let per = |secs: f64| secs * 1e6 / self.units.max(1.0);
        let busy = 100.0 * self.busy_ticks as f64 / self.total_ticks.max(1) as f64;
        (per(self.process_secs), per(self.postgres_secs), busy)
    }
}

/// Counters of the request partitions (`webhook_requests_p*`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TableStats {
    pub upd: i64,
    pub hot: i64,
    pub dead: i64,
    pub live: i64,
}

pub async fn request_partition_stats(pool: &PgPool) -> anyhow::Result<TableStats> {
    // Backends flush their counters within a second of going idle.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_stat_clear_snapshot()").execute(&mut *conn).await?;
    let (upd, hot, dead, live): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(n_tup_upd), 0)::int8, \
           COALESCE(sum(n_tup_hot_upd), 0)::int8, COALESCE(sum(n_dead_tup), 0)::int8, \
           COALESCE(sum(n_live_tup), 0)::int8 \
         FROM pg_stat_user_tables WHERE relname ~ '^webhook_requests_p[0-9]+$'",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(TableStats { upd, hot, dead, live })
}

/// Transactions committed in this database so far.
pub async fn commits(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        .fetch_one(pool)
        .await?)
}

pub async fn pending(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM webhook_requests WHERE status = 'pending'").fetch_one(pool).await?)
}

/// Waits until no delivery is pending (every attempt recorded).
pub async fn wait_settled(pool: &PgPool, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while pending(pool).await? > 0 {
        if start.elapsed() > limit {
            bail!("deliveries still pending after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Samples what the database's active sessions wait on until `stop`, every
/// 100 ms: "wait_event_type:wait_event (statement start)" → samples.
pub fn sample_waits(
    pool: PgPool,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<HashMap<String, u64>> {
    tokio::spawn(async move {
        let mut seen: HashMap<String, u64> = HashMap::new();
        while !stop.is_cancelled() {
            let rows: Vec<(String,)> = sqlx::query_as(
                "SELECT COALESCE(wait_event_type, 'CPU') || ':' || COALESCE(wait_event, 'running') || ' (' || \
                   regexp_replace(left(query, 60), '\\s+', ' ', 'g') || ')' \
                 FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' \
                   AND pid <> pg_backend_pid()",
            )
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
            for (k,) in rows {
                *seen.entry(k).or_default() += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    })
}

/// The most frequent waits, as "share% what".
pub fn top_waits(seen: &HashMap<String, u64>, n: usize) -> String {
    let total: u64 = seen.values().sum();
    let mut v: Vec<_> = seen.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1));
    v.iter()
        .take(n)
        .map(|(k, c)| format!("{:.0}% {k}", **c as f64 * 100.0 / total.max(1) as f64))
        .collect::<Vec<_>>()
        .join("; ")
}
