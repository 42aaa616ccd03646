//! Test scaffolding: a fresh database per test, the real server on port 0, a
//! local HTTP receiver whose answers each test scripts, and a TCP proxy that can
//! cut the server off from Postgres.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use hookpost::Config;
use hookpost::auth::KeyKind;
use hookpost::domain::{DispatchInput, Limits, NewDelivery};
use hookpost::proto::v1 as pb;
use hookpost::proto::v1::webhook_service_client::WebhookServiceClient;
use hookpost::store::Store;
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection, PgPool};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use uuid::Uuid;

/// The server every test database is created on.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Creates an empty database and returns its URL.
pub async fn fresh_database() -> String {
    let admin = admin_url();
    // Named after the test run (set by scripts/test) so a run can drop its own.
    let run = std::env::var("HOOKPOST_TEST_RUN").unwrap_or_else(|_| "local".into());
    let name = format!("hookpost_test_{run}_{}", Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(&admin).await.expect("connect to the test Postgres");
    conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str()).await.expect("create test database");
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&name);
    url.to_string()
}

/// Polls `check` until it returns `Some`, failing the test after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub struct TestApp {
    /// `http://127.0.0.1:<port>`: REST and gRPC share it.
    pub base_url: String,
    pub client: WebhookServiceClient<Channel>,
    /// A pool on the test's database, when it is Postgres.
    pub db: Option<PgPool>,
    pub database_url: String,
    /// A service key: acts for any organization.
    pub key: String,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Test defaults: a small pool, fast retries, short timeouts.
pub fn test_config(database_url: &str) -> Config {
    let mut c = Config::new(database_url, "127.0.0.1:0".parse().unwrap());
    c.db_pool_size = 4;
    c.delivery.retry.base = Duration::from_millis(100);
    c.delivery.retry.max = Duration::from_millis(400);
    c.delivery.attempt_timeout = Duration::from_secs(5);
    c.delivery.lease_margin = Duration::from_secs(1);
    c.delivery.poll_interval = Duration::from_millis(50);
    // Receivers live on 127.0.0.1; the SSRF tests turn the guard back on.
    c.allow_private_targets(true);
    // Revocations must take effect at once in tests.
    c.key_cache_ttl = Duration::ZERO;
    c
}

/// The store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A fresh, empty store of `backend`: its URL.
pub async fn fresh_store(backend: Backend) -> String {
    match backend {
        Backend::Postgres => fresh_database().await,
        Backend::Sqlite => {
            let dir = std::env::temp_dir().join(format!("hookpost-test-sqlite-{}", Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir).unwrap();
            format!("sqlite://{}/hookpost.db", dir.display())
        }
    }
}

/// Opens (and migrates) the store at `url`, whichever it is.
pub async fn open_store(url: &str) -> std::sync::Arc<dyn Store> {
    hookpost::store::open(url, 2, Duration::from_secs(10)).await.unwrap().0
}

/// Creates an API key in the store at `database_url` and returns it.
pub async fn create_key(database_url: &str, kind: KeyKind) -> String {
    let store = open_store(database_url).await;
    let key = hookpost::auth::generate(kind);
    store.insert_api_key(&key).await.unwrap();
    key.plaintext
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// The real server on a fresh store of `backend`.
pub async fn spawn_app_on_backend(backend: Backend, configure: impl FnOnce(&mut Config)) -> TestApp {
    let url = fresh_store(backend).await;
    let mut config = test_config(&url);
    configure(&mut config);
    spawn_app_on(config, &url).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    let database_url = fresh_database().await;
    let mut config = test_config(&database_url);
    configure(&mut config);
    spawn_app_on(config, &database_url).await
}

pub async fn spawn_app_on(config: Config, database_url: &str) -> TestApp {
    let app = hookpost::Application::build(config).await.expect("build the application");
    let addr = app.local_addr();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let handle = tokio::spawn(app.run(async move { stop.cancelled().await }));
    let client = WebhookServiceClient::connect(format!("http://{addr}")).await.expect("connect to hookpost");
    let db = match database_url.starts_with("postgres") {
        true => Some(sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(database_url).await.unwrap()),
        false => None,
    };
    let key = create_key(database_url, KeyKind::Service).await;
    TestApp {
        base_url: format!("http://{addr}"),
        client,
        db,
        database_url: database_url.to_owned(),
        key,
        shutdown,
        handle: Some(handle),
    }
}

impl TestApp {
    /// The Postgres pool of a Postgres-only test.
    pub fn pg(&self) -> &PgPool {
        self.db.as_ref().expect("this test runs on Postgres")
    }

    /// GET a REST route with the service key; returns the status and the JSON body.
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        self.get_json_as(path, Some(&self.key)).await
    }

    /// GET a REST route as the holder of `key` (no key: no Authorization).
    pub async fn get_json_as(&self, path: &str, key: Option<&str>) -> (u16, serde_json::Value) {
        let mut req = reqwest::Client::new().get(format!("{}{path}", self.base_url));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.expect("GET");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("a JSON body"))
    }

    /// A gRPC request carrying the service key.
    pub fn authed<T>(&self, message: T) -> tonic::Request<T> {
        with_key(message, &self.key)
    }

    /// Creates another key for this app's database.
    pub async fn create_key(&self, kind: KeyKind) -> String {
        create_key(&self.database_url, kind).await
    }

    /// Stops the server the way SIGTERM does and waits for it to drain.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.await.expect("server task panicked").expect("server failed");
        }
    }

    pub async fn dispatch(&self, req: pb::DispatchRequest) -> Result<pb::DispatchResponse, tonic::Status> {
        self.client.clone().dispatch(self.authed(req)).await.map(|r| r.into_inner())
    }

    pub async fn list(&self, req: pb::ListWebhookLogsRequest) -> Result<pb::ListWebhookLogsResponse, tonic::Status> {
        self.client.clone().list_webhook_logs(self.authed(req)).await.map(|r| r.into_inner())
    }

    pub async fn details(&self, request_id: &str) -> Result<pb::GetLogDetailsResponse, tonic::Status> {
        let req = pb::GetLogDetailsRequest { request_id: request_id.into(), ..Default::default() };
        self.client.clone().get_log_details(self.authed(req)).await.map(|r| r.into_inner())
    }

    /// Waits until the request is no longer pending and returns its details.
    pub async fn settled(&self, request_id: &str, deadline: Duration) -> pb::GetLogDetailsResponse {
        eventually(deadline, "the webhook to settle", || async {
            let d = self.details(request_id).await.ok()?;
            let status = d.log.as_ref()?.execution_status();
            (status != pb::ExecutionStatus::Pending).then_some(d)
        })
        .await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A gRPC request with `authorization: Bearer <key>`.
pub fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    req
}

/// A Dispatch with sensible defaults for `url`.
/// An endpoint for `url` taking `event_types` (empty: every event).
pub fn endpoint(url: &str, event_types: &[&str]) -> pb::Endpoint {
    pb::Endpoint {
        url: url.into(),
        event_types: event_types.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn dispatch_to(url: &str, organization_id: Uuid) -> pb::DispatchRequest {
    pb::DispatchRequest {
        organization_id: organization_id.to_string(),
        webhook_url: url.to_string(),
        webhook_type: "call_started".into(),
        payload: Some(hookpost::grpc::json_to_struct(
            json!({"event": "call_started", "assistant_id": 123}).as_object().unwrap().clone(),
        )),
        ..Default::default()
    }
}

/// Field names of a `google.rpc.BadRequest` carried by a status.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    let details = status.get_error_details();
    let mut fields: Vec<String> =
        details.bad_request().map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect()).unwrap_or_default();
    fields.sort();
    fields
}

// ---------------------------------------------------------------- receiver

/// One scripted answer of the receiver.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// Held this long before answering (to model a slow or hanging receiver).
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self { status, headers: Vec::new(), body: String::new(), delay: Duration::ZERO }
    }
    pub fn ok() -> Self {
        Self { body: r#"{"received": true}"#.into(), ..Self::status(200) }
    }
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: String,
    pub at: Instant,
}

#[derive(Default)]
struct ReceiverState {
    script: Mutex<VecDeque<Reply>>,
    received: Mutex<Vec<Received>>,
    arrived: Notify,
}

/// A real HTTP server on 127.0.0.1 that answers from a script (then 200).
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: String,
) -> impl IntoResponse {
    state.received.lock().unwrap().push(Received { path: uri.path().to_string(), headers, body, at: Instant::now() });
    state.arrived.notify_waiters();
    let reply = state.script.lock().unwrap().pop_front().unwrap_or_else(Reply::ok);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut h = HeaderMap::new();
    for (k, v) in reply.headers {
        h.insert(k, v.parse().unwrap());
    }
    (StatusCode::from_u16(reply.status).unwrap(), h, reply.body)
}

impl Receiver {
    pub async fn start() -> Self {
        let state = Arc::new(ReceiverState::default());
        let app = axum::Router::new().fallback(receive).with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answers the next requests with these replies, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests have arrived.
    pub async fn wait_for(&self, n: usize, deadline: Duration) -> Vec<Received> {
        eventually(deadline, &format!("{n} request(s) at the receiver"), || async {
            let got = self.received();
            (got.len() >= n).then_some(got)
        })
        .await
    }
}

// ---------------------------------------------------------------- db proxy

/// A TCP proxy in front of Postgres that a test can cut and restore, to model
/// the database going away while hookpost runs.
pub struct DbProxy {
    pub port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    cut: Arc<Notify>,
}

impl DbProxy {
    pub async fn start(database_url: &str) -> Self {
        let url = url::Url::parse(database_url).unwrap();
        let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let cut = Arc::new(Notify::new());
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the connection is refused in effect
                }
                let target = target.clone();
                let cut = cut2.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        Self { port, up, cut }
    }

    /// `database_url` with its port pointing at the proxy.
    pub fn url(&self, database_url: &str) -> String {
        let mut url = url::Url::parse(database_url).unwrap();
        url.set_port(Some(self.port)).unwrap();
        url.to_string()
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------- own cluster

/// A Postgres cluster of the test's own (initdb + pg_ctl), for tests that stop
/// the database: the shared server is never stopped. scripts/test exports
/// HOOKPOST_PG_BIN (installing Debian's postgresql when needed).
pub struct ThrowawayPostgres {
    bin: std::path::PathBuf,
    dir: std::path::PathBuf,
    pub port: u16,
    as_postgres: bool,
}

impl ThrowawayPostgres {
    pub fn start() -> Self {
        let bin = std::env::var("HOOKPOST_PG_BIN").map(std::path::PathBuf::from).ok().or_else(|| {
            let mut dirs: Vec<_> =
                std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten().map(|e| e.path().join("bin")).collect();
            dirs.sort();
            dirs.pop()
        });
        let bin = bin.filter(|b| b.join("initdb").exists()).expect(
            "no initdb found: set HOOKPOST_PG_BIN to a PostgreSQL bin directory (scripts/test does, installing postgresql)",
        );
        let uid = std::process::Command::new("id").arg("-u").output().unwrap();
        let as_postgres = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        let dir = std::env::temp_dir().join(format!("hookpost-test-pg-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        if as_postgres {
            let ok = std::process::Command::new("chown").args(["postgres"]).arg(&dir).status().unwrap();
            assert!(ok.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let pg = Self { bin, dir, port, as_postgres };
        let data = pg.dir.join("data");
        pg.run("initdb", &["-D", data.to_str().unwrap(), "-U", "postgres", "--auth=trust"]);
        pg.start_server();
        pg
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        let out = cmd.args(args).stdin(std::process::Stdio::null()).output().unwrap();
        assert!(out.status.success(), "{tool} failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A streaming replica of this cluster (`pg_basebackup -R`: a standby
    /// that follows it over replication), started on a port of its own.
    pub fn replica(&self) -> Self {
        let dir = std::env::temp_dir().join(format!("hookpost-test-pg-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        if self.as_postgres {
            let ok = std::process::Command::new("chown").args(["postgres"]).arg(&dir).status().unwrap();
            assert!(ok.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let replica = Self { bin: self.bin.clone(), dir, port, as_postgres: self.as_postgres };
        let data = replica.dir.join("data");
        let primary_port = self.port.to_string();
        replica.run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary_port,
                "-U",
                "postgres",
                "-D",
                data.to_str().unwrap(),
                "-R",
                "-X",
                "stream",
            ],
        );
        replica.start_server();
        replica
    }

    pub fn start_server(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=30",
            self.port,
            self.dir.display()
        );
        let data = self.dir.join("data");
        let log = self.dir.join("log");
        self.run("pg_ctl", &["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-o", &opts, "-w", "start"]);
    }

    pub fn stop_server(&self) {
        let data = self.dir.join("data");
        self.run("pg_ctl", &["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"]);
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let pg_ctl = self.bin.join("pg_ctl");
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            c
        } else {
            std::process::Command::new(&pg_ctl)
        };
        let _ = cmd.args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------- PgBouncer

/// A PgBouncer (Debian's package; scripts/test installs it) in transaction
/// pooling mode in front of the test Postgres, with fewer server connections
/// than hookpost's pool has clients, so that clients really do share them.
pub struct PgBouncer {
    child: std::process::Child,
    dir: std::path::PathBuf,
    pub port: u16,
}

impl PgBouncer {
    pub fn start(server_connections: u32) -> Self {
        let exe = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.exists())
            .expect("no pgbouncer found: install Debian's pgbouncer (scripts/test does)");
        let admin = url::Url::parse(&admin_url()).unwrap();
        let (host, upstream) = (admin.host_str().unwrap().to_owned(), admin.port().unwrap_or(5432));
        let dir = std::env::temp_dir().join(format!("hookpost-test-pgbouncer-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let user = admin.username().to_owned();
        std::fs::write(dir.join("userlist.txt"), format!("\"{user}\" \"\"\n")).unwrap();
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\n* = host={host} port={upstream}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
                 listen_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {users}\n\
                 admin_users = {user}\npool_mode = transaction\ndefault_pool_size = {server_connections}\n\
                 max_client_conn = 200\nserver_reset_query =\nlogfile = {log}\n",
                users = dir.join("userlist.txt").display(),
                log = dir.join("pgbouncer.log").display(),
            ),
        )
        .unwrap();
        // PgBouncer refuses to run as root; `-u` has it switch user itself
        // (so that the child is PgBouncer, and killing it stops it).
        let uid = std::process::Command::new("id").arg("-u").output().unwrap();
        let mut cmd = std::process::Command::new(&exe);
        if String::from_utf8_lossy(&uid.stdout).trim() == "0" {
            let ok = std::process::Command::new("chown").args(["-R", "postgres"]).arg(&dir).status().unwrap();
            assert!(ok.success());
            cmd.args(["-u", "postgres"]);
        }
        let child = cmd
            .arg(dir.join("pgbouncer.ini"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        let bouncer = Self { child, dir, port };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "pgbouncer did not listen: {}", bouncer.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        bouncer
    }

    /// `database_url` with the bouncer's address in place of the server's.
    pub fn url(&self, database_url: &str) -> String {
        let mut u = url::Url::parse(database_url).unwrap();
        u.set_host(Some("127.0.0.1")).unwrap();
        u.set_port(Some(self.port)).unwrap();
        u.to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    /// `SHOW <what>` on the admin console, each row as column → text.
    pub async fn show(&self, what: &str) -> Vec<std::collections::HashMap<String, String>> {
        use sqlx::{Column, Row};
        let user = url::Url::parse(&admin_url()).unwrap().username().to_owned();
        let options = sqlx::postgres::PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port)
            .username(&user)
            .database("pgbouncer")
            .extra_float_digits(None)
            .statement_cache_capacity(0);
        let mut conn = sqlx::PgConnection::connect_with(&options).await.unwrap();
        // The console speaks the simple protocol only, and answers in text.
        let rows = sqlx::raw_sql(&format!("SHOW {what}")).fetch_all(&mut conn).await.unwrap();
        rows.iter()
            .map(|row| {
                row.columns()
                    .iter()
                    .map(|c| {
                        let raw = row.try_get_raw(c.ordinal()).unwrap();
                        let text = if sqlx::ValueRef::is_null(&raw) {
                            String::new()
                        } else {
                            String::from_utf8_lossy(raw.as_bytes().unwrap()).into_owned()
                        };
                        (c.name().to_owned(), text)
                    })
                    .collect()
            })
            .collect()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A delivery of `org` to a bare URL on 127.0.0.1 (nothing listens there),
/// as the service would make it, changed by `f` first; for the stores' own
/// tests.
pub fn delivery(org: Uuid, f: impl FnOnce(&mut DispatchInput)) -> NewDelivery {
    let mut input = DispatchInput {
        organization_id: org.to_string(),
        webhook_url: "http://127.0.0.1:9/hook".into(),
        webhook_type: "call_started".into(),
        ..Default::default()
    };
    f(&mut input);
    let limits = Limits { allow_private_targets: true, ..Limits::default() };
    NewDelivery::parse(input, &limits, 3).unwrap()
}
