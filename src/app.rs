//! Wiring: store, service, delivery engine and the listener, built from a
//! [`Config`]. `build` binds the listener (port 0 works) before returning, so
//! tests can connect as soon as they have an [`Application`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::auth::Authenticator;
use crate::config::{Config, SecretKeySource};
use crate::delivery::DeliveryEngine;
use crate::grpc::GrpcApi;
use crate::metrics::{Metrics, PoolLabels, ReplicaLabels, TableLabels};
use crate::proto::v1::webhook_service_server::WebhookServiceServer;
use crate::secrets::SecretKey;
use crate::service::WebhookService;
use crate::store::{self, Store};
use crate::transport::ConnectionLimits;

pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    service: WebhookService,
    store: Arc<dyn Store>,
    engine: Arc<DeliveryEngine>,
    max_message_bytes: usize,
    auth: Arc<Authenticator>,
    connection_limits: ConnectionLimits,
    request_timeout: Duration,
    cors_allow_origins: Vec<String>,
    retention: Duration,
    maintenance_interval: Duration,
    metrics: Arc<Metrics>,
    dev_key: Option<String>,
}

/// How often the health reporter checks the store.
const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(2);

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // Checked here too, for configs built in code rather than parsed from
        // the CLI: an unbounded retention would break the maintenance loop.
        let horizon = config.delivery.retry.horizon(config.limits.max_retries, config.delivery.lease());
        crate::config::check_retention(config.retention, Some(horizon))?;
        let connect = store::postgres::Connect {
            url: &config.database_url,
            pooled_url: config.pooled_database_url.as_deref(),
            read_urls: &config.read_database_urls,
            read_max_lag: config.read_replica_max_lag,
        };
        let (store, kind) = store::open_with(&connect, config.db_pool_size, config.db_acquire_timeout).await?;
        let location = match kind {
            "sqlite" => config.database_url.trim_start_matches("sqlite://").to_owned(),
            _ => store::redact_url(&config.database_url),
        };
        tracing::info!(store = kind, at = %location, "store ready");
        let secrets = Arc::new(secret_key(&config.secret_key, kind)?);
        let wake = Arc::new(Notify::new());
        let metrics = Arc::new(Metrics::new());
        let auth = Arc::new(Authenticator::new(store.clone(), config.key_cache_ttl, config.rate_limit));
        let service = WebhookService::new(
            store.clone(),
            config.limits.clone(),
            config.default_max_retries,
            wake.clone(),
            metrics.clone(),
            secrets.clone(),
            config.retention,
        );
        if config.limits.allow_private_targets {
            tracing::warn!("--allow-private-targets: the SSRF guard is off; webhooks may reach private networks");
        }
        let notices: Arc<dyn crate::delivery::Notices> = Arc::new(service.clone());
        let engine =
            DeliveryEngine::new(store.clone(), config.delivery.clone(), wake, metrics.clone(), secrets, notices)?;
        match crate::transport::raise_open_file_limit() {
            Ok(limit) => tracing::debug!(limit, "open-file limit"),
            Err(err) => tracing::warn!(error = %err, "raising the open-file limit failed"),
        }
        let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        // Only once the port is ours: a failed start leaves no key nobody saw.
        let dev_key = development_key(store.as_ref(), kind, addr).await?;
        let max_message_bytes = 4 * (config.limits.max_payload_bytes + config.limits.max_metadata_bytes) + (1 << 20);
        // Partitions for today must exist before the first Dispatch.
        store.prepare().await?;
        Ok(Self {
            listener,
            addr,
            service,
            store,
            engine,
            max_message_bytes,
            auth,
            connection_limits: config.connection_limits.clone(),
            request_timeout: config.request_timeout,
            cors_allow_origins: config.cors_allow_origins.clone(),
            retention: config.retention,
            maintenance_interval: config.maintenance_interval,
            metrics,
            dev_key,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A service key created at start-up for local development: only on the
    /// embedded store, only on a loopback address, only while no key exists.
    /// Shown once; only its hash is stored.
    pub fn development_key(&self) -> Option<&str> {
        self.dev_key.as_deref()
    }

    /// Serves until `shutdown` completes, then stops accepting, drains the
    /// delivery engine and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let token = CancellationToken::new();
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        // grpcurl 1.8 only speaks v1alpha.
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        let grpc_api = GrpcApi::new(self.service.clone(), self.metrics.clone());
        let grpc = tonic::service::Routes::new(grpc_api.clone().into_server(self.max_message_bytes))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .prepare()
            .into_axum_router()
            // gRPC-Web on the same port: browsers (and grpc-web clients)
            // call the same service; the layer passes plain gRPC through.
            .layer(tonic_web::GrpcWebLayer::new());
        let rest = crate::rest::router(crate::rest::RestState {
            service: self.service.clone(),
            metrics: self.metrics.clone(),
        })
        .layer(axum::extract::DefaultBodyLimit::max(self.max_message_bytes))
        // Not the watch's NDJSON: the encoder holds back a stream's small
        // chunks until its buffer fills, so a browser (which always asks for
        // gzip) would see a live tail's events late or never. SSE and gRPC
        // are left out by the default predicate already.
        .layer(tower_http::compression::CompressionLayer::new().compress_when(tower_http::compression::Predicate::and(
            tower_http::compression::DefaultPredicate::new(),
            tower_http::compression::predicate::NotForContentType::const_new("application/x-ndjson"),
        )))
        .layer(tower_http::request_id::PropagateRequestIdLayer::x_request_id())
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(tower_http::request_id::SetRequestIdLayer::x_request_id(tower_http::request_id::MakeRequestUuid));
        let router =
            crate::transport::router(grpc, rest, self.auth.clone(), self.request_timeout, &self.cors_allow_origins)?;

        let mut engine = Tasks::default();
        engine.spawn("delivery engine", self.engine.clone().run(token.clone()));
        let mut background = Tasks::default();
        background.spawn("health reporter", report_health(self.store.clone(), health, token.clone()));
        background.spawn(
            "maintenance",
            maintain(
                self.store.clone(),
                self.metrics.clone(),
                self.retention,
                self.maintenance_interval,
                token.clone(),
            ),
        );
        background.spawn("queue sampler", sample_queue(self.store.clone(), self.metrics.clone(), token.clone()));
        background.spawn("recovery operations", self.service.clone().run_operations(token.clone()));
        background.spawn("announcer", self.service.clone().run_announcer(token.clone()));
        tracing::info!(addr = %self.addr, "hookpost listening (gRPC and REST)");

        let (stop, service) = (token.clone(), self.service.clone());
        tokio::spawn(async move {
            shutdown.await;
            // Watch streams never end on their own: end them, so that their
            // connections can drain.
            service.stop_watchers();
            stop.cancel();
        });
        let serving = crate::transport::serve(self.listener, router, self.connection_limits.clone(), token.clone());
        tokio::pin!(serving);
        // Each of these runs until shutdown. One that ends before (a panic)
        // would leave the server answering with its duty undone: no
        // deliveries, a frozen health status. So it stops the server: the
        // process exits with an error for its supervisor to restart, and
        // what was accepted waits in the store.
        let mut engine_running = true;
        let died = loop {
            let ended = tokio::select! {
                () = &mut serving => break None,
                ended = engine.first_end(), if engine_running => {
                    engine_running = false;
                    ended
                }
                ended = background.first_end() => ended,
            };
            // Once shutdown has begun, the tasks return by themselves.
            if ended.failed || !token.is_cancelled() {
                break Some(ended);
            }
        };
        token.cancel();
        if let Some(ended) = &died {
            tracing::error!(task = ended.name, reason = %ended.reason, "a background task stopped; stopping the server");
            serving.await;
        }
        background.abort_all();
        // The engine drains its deliveries under way (bounded by its drain
        // timeout), unless it is the task that stopped.
        if engine_running {
            let ended = engine.first_end().await;
            if ended.failed {
                anyhow::bail!("the delivery engine {}", ended.reason);
            }
        }
        if let Some(ended) = died {
            anyhow::bail!("the {} {}; the server stopped with it", ended.name, ended.reason);
        }
        tracing::info!("hookpost stopped");
        Ok(())
    }
}

/// Named tasks, and which of them ended first.
#[derive(Default)]
struct Tasks {
    set: tokio::task::JoinSet<()>,
    names: std::collections::HashMap<tokio::task::Id, &'static str>,
}

/// How a task ended.
#[derive(Debug)]
struct Ended {
    name: &'static str,
    /// It panicked or was cancelled, rather than returned.
    failed: bool,
    reason: String,
}

impl Tasks {
    fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// The first task to end (never resolves while none has, or with none).
    async fn first_end(&mut self) -> Ended {
        let Some(joined) = self.set.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (id, failed, reason) = match joined {
            Ok((id, ())) => (id, false, "returned".to_owned()),
            Err(err) => {
                let id = err.id();
                let reason = match err.try_into_panic() {
                    Ok(payload) => {
                        let message = payload
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| payload.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "(no message)".to_owned());
                        format!("panicked: {message}")
                    }
                    Err(_) => "was cancelled".to_owned(),
                };
                (id, true, reason)
            }
        };
        Ended { name: self.names.get(&id).copied().unwrap_or("task"), failed, reason }
    }

    fn abort_all(&mut self) {
        self.set.abort_all();
    }
}

/// Creates partitions ahead and applies retention, now and every `interval`.
async fn maintain(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    retention: Duration,
    interval: Duration,
    token: CancellationToken,
) {
    // Config validation bounds the retention (at most 100 years), so this
    // conversion cannot fail; were it to, the purge refuses a huge interval
    // with an error that is logged, and the loop goes on.
    let older_than = chrono::TimeDelta::from_std(retention).unwrap_or(chrono::TimeDelta::MAX);
    loop {
        if let Err(err) = store.prepare().await {
            tracing::warn!(error = %err, "preparing partitions failed");
        }
        let purged = store.purge(older_than, false).await;
        if let Ok(r) = &purged {
            metrics.purged_rows.get_or_create(&TableLabels { table: "webhook_requests" }).inc_by(r.requests);
            metrics.purged_rows.get_or_create(&TableLabels { table: "webhook_attempts" }).inc_by(r.attempts);
        }
        match purged {
            Ok(r) if r.skipped => tracing::debug!("another process is running maintenance; this run skipped"),
            Ok(r) if !r.left_attached.is_empty() => tracing::warn!(
                left_attached = ?r.left_attached,
                days = ?r.days,
                "retention applied in part: some expired days could not be detached and stay until the next run"
            ),
            Ok(r) if !r.days.is_empty() || !r.kept_pending.is_empty() => tracing::info!(
                requests = r.requests,
                attempts = r.attempts,
                days = ?r.days,
                kept_pending = ?r.kept_pending,
                "retention applied"
            ),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "retention purge failed"),
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

async fn development_key(store: &dyn Store, kind: &str, listen: SocketAddr) -> anyhow::Result<Option<String>> {
    if kind != "sqlite" || !listen.ip().is_loopback() || !store.list_api_keys().await?.is_empty() {
        return Ok(None);
    }
    let key = crate::auth::generate(crate::auth::KeyKind::Service);
    store.insert_api_key(&key).await?;
    Ok(Some(key.plaintext))
}

/// The key that encrypts signing secrets at rest, from where the config says.
fn secret_key(source: &SecretKeySource, store_kind: &str) -> anyhow::Result<SecretKey> {
    Ok(match source {
        SecretKeySource::Base64(text) => SecretKey::from_base64(text).context("--secret-key")?,
        SecretKeySource::DataDir(dir) => {
            if store_kind == "postgres" {
                tracing::warn!(
                    dir = %dir.display(),
                    "no --secret-key: using a key file in the data directory; replicas sharing this database \
                     need the same key (set HOOKPOST_SECRET_KEY)"
                );
            }
            std::fs::create_dir_all(dir).with_context(|| format!("creating the data directory {}", dir.display()))?;
            SecretKey::load_or_create(dir).with_context(|| format!("the secret key in {}", dir.display()))?
        }
        SecretKeySource::Ephemeral => SecretKey::generate(),
    })
}

/// How often the queue gauges are refreshed from the store.
const QUEUE_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Refreshes the gauges that only the store knows: queue depth, oldest
/// pending age, pool usage.
async fn sample_queue(store: Arc<dyn Store>, metrics: Arc<Metrics>, token: CancellationToken) {
    loop {
        if let Ok(stats) = store.queue_stats().await {
            metrics.pending.set(stats.pending as i64);
            let age = stats
                .oldest_pending_created_at
                .map_or(0.0, |t| (chrono::Utc::now() - t).to_std().map_or(0.0, |d| d.as_secs_f64()));
            metrics.oldest_pending_age.set(age);
        }
        for p in store.pool_usage() {
            metrics.db_pool.get_or_create(&PoolLabels { pool: p.pool, state: "in_use" }).set(i64::from(p.in_use));
            metrics.db_pool.get_or_create(&PoolLabels { pool: p.pool, state: "idle" }).set(i64::from(p.idle));
        }
        for r in store.read_replicas() {
            metrics.read_replica_up.get_or_create(&ReplicaLabels { replica: r.label }).set(i64::from(r.up));
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(QUEUE_SAMPLE_INTERVAL) => {}
        }
    }
}

/// The `grpc.health.v1` service name under which the read replicas report:
/// NOT_SERVING while any is unavailable (reads then go to the primary, so the
/// server as a whole stays SERVING).
pub const READ_REPLICAS_HEALTH: &str = "hookpost.read_replicas";

/// Keeps `grpc.health.v1` honest: NOT_SERVING while the store does not answer.
async fn report_health(store: Arc<dyn Store>, health: tonic_health::server::HealthReporter, token: CancellationToken) {
    let mut last = None;
    let mut last_replicas = None;
    loop {
        let replicas = store.read_replicas();
        if !replicas.is_empty() {
            let status = if replicas.iter().all(|r| r.up) { ServingStatus::Serving } else { ServingStatus::NotServing };
            if last_replicas != Some(status) {
                health.set_service_status(READ_REPLICAS_HEALTH, status).await;
                last_replicas = Some(status);
            }
        }
        let status = match store.ping().await {
            Ok(()) => ServingStatus::Serving,
            Err(err) => {
                tracing::warn!(error = %err, "store unreachable; reporting NOT_SERVING");
                ServingStatus::NotServing
            }
        };
        if last != Some(status) {
            health.set_service_status("", status).await;
            health
                .set_service_status(<WebhookServiceServer<GrpcApi> as tonic::server::NamedService>::NAME, status)
                .await;
            last = Some(status);
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(HEALTH_PROBE_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Tasks;

    #[tokio::test]
    async fn the_first_task_to_end_is_named_with_its_panic() {
        let mut tasks = Tasks::default();
        tasks.spawn("forever", std::future::pending());
        tasks.spawn("sampler", async { panic!("attempt to add with overflow") });
        let ended = tasks.first_end().await;
        assert_eq!(ended.name, "sampler");
        assert!(ended.failed);
        assert_eq!(ended.reason, "panicked: attempt to add with overflow");
        tasks.spawn("quits", async {});
        let ended = tasks.first_end().await;
        assert_eq!((ended.name, ended.failed, ended.reason.as_str()), ("quits", false, "returned"));
        tasks.abort_all();
    }

    #[tokio::test]
    async fn no_task_no_end() {
        let mut tasks = Tasks::default();
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), tasks.first_end()).await;
        assert!(waited.is_err(), "an empty set never ends");
    }
}
