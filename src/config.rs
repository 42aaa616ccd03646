//! The command line: every option has an env var, and its doc comment is its
//! `--help` line. Parsed once into [`Config`], which the rest of the crate uses.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::delivery::DeliveryConfig;
use crate::delivery::retry::RetryPolicy;
use crate::domain::Limits;
use crate::transport::ConnectionLimits;

#[derive(Debug, Parser)]
#[command(name = "hookpost", version, about = "Durable webhook delivery over gRPC, with a log of every attempt")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log output: human-readable text or one JSON object per line.
    #[arg(long, env = "HOOKPOST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server and the delivery workers.
    Serve(Box<ServeArgs>),
    /// Apply the database migrations and exit.
    Migrate(DatabaseArgs),
    /// Create, list and revoke API keys.
    #[command(subcommand)]
    ApiKey(ApiKeyCommand),
    /// Remove logs older than the retention window (whole days on Postgres).
    Purge {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Logs older than this go (30d, 7d, 12h...).
        #[arg(long, env = "HOOKPOST_RETENTION", value_parser = duration, default_value = "30d")]
        retention: Duration,
        /// Report what would go, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create a key and print it (once: only its hash is stored) as the last line.
    Create {
        #[command(flatten)]
        database: DatabaseArgs,
        /// An organization key, confined to this organization (UUID).
        #[arg(long, conflicts_with = "service", required_unless_present = "service")]
        organization: Option<uuid::Uuid>,
        /// A service key, for internal callers acting for any organization.
        #[arg(long)]
        service: bool,
    },
    /// List keys: prefix, kind, organization, created, revoked.
    List {
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Revoke the key with this prefix (hpk_...).
    Revoke {
        #[command(flatten)]
        database: DatabaseArgs,
        prefix: String,
    },
}

#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// Postgres URL (postgres://user@host:5432/db) for production; without
    /// one, the embedded SQLite store in --data-dir is used.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Where the embedded store keeps its file (when no database URL is given).
    #[arg(long, env = "HOOKPOST_DATA_DIR", default_value = "./data")]
    pub data_dir: std::path::PathBuf,
}

impl DatabaseArgs {
    /// The store's URL: the database URL, or the embedded store's file.
    pub fn url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("hookpost.db").display()),
        }
    }

    /// Creates the data directory when the embedded store is used: 0700,
    /// since the store holds payloads and API key hashes. A directory that
    /// already exists keeps its mode (it may be the operator's choice).
    pub fn prepare(&self) -> anyhow::Result<()> {
        if self.database_url.is_none() {
            let mut dir = std::fs::DirBuilder::new();
            dir.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
            dir.create(&self.data_dir)
                .map_err(|e| anyhow::anyhow!("creating the data directory {}: {e}", self.data_dir.display()))?;
        }
        Ok(())
    }
}

/// The shortest retention: logs are dropped by whole UTC days.
pub const MIN_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// The longest retention: far beyond any real use, and well inside every
/// clock's calendar (a cutoff of `now - retention` must be a real date).
pub const MAX_RETENTION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Checks `--retention`: at least a day, at most a century, and (for a
/// server, whose retry policy is known) longer than the longest a delivery
/// can stay pending, so the logs of work still in progress are never
/// candidates for removal.
pub fn check_retention(retention: Duration, pending_horizon: Option<Duration>) -> anyhow::Result<()> {
    let shown = |d: Duration| humantime::format_duration(d).to_string();
    anyhow::ensure!(retention >= MIN_RETENTION, "--retention must be at least 1d (got {})", shown(retention));
    anyhow::ensure!(retention <= MAX_RETENTION, "--retention must be at most 100 years (got {})", shown(retention));
    if let Some(horizon) = pending_horizon {
        anyhow::ensure!(
            retention > horizon,
            "--retention ({}) must be longer than the longest a delivery can stay pending ({}: the most retries a \
             Dispatch may ask for, each after --backoff-max or --retry-after-max, plus each attempt's timeout and \
             lease margin); raise --retention or lower --backoff-max / --retry-after-max",
            shown(retention),
            shown(horizon)
        );
    }
    Ok(())
}

/// Parses `200ms`, `2s`, `1h`, `30d` and the like.
fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write durations like 200ms, 2s, 1h)"))
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Address to listen on for gRPC.
    #[arg(long, env = "HOOKPOST_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Key that encrypts endpoints' signing secrets at rest: 32 bytes in
    /// base64 (`openssl rand -base64 32`). Every replica needs the same one.
    /// Without it, a key is generated once into --data-dir and reused.
    #[arg(long, env = "HOOKPOST_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,

    /// Endpoints one organization may register.
    #[arg(long, env = "HOOKPOST_MAX_ENDPOINTS_PER_ORGANIZATION", default_value_t = 1000)]
    pub max_endpoints_per_organization: u32,

    /// Live-tail streams (WatchWebhookLogs, REST watch) one API key may hold
    /// open at once; more answer RESOURCE_EXHAUSTED (HTTP 429).
    #[arg(long, env = "HOOKPOST_MAX_WATCH_STREAMS_PER_KEY", default_value_t = 16)]
    pub max_watch_streams_per_key: u32,

    /// A streaming read replica of the Postgres database that serves log
    /// reads (listings, details, the live tail). Repeat the flag for several
    /// (or separate them with commas in the variable); reads go round-robin to
    /// those that answer, and to the primary when none does.
    #[arg(long = "read-database-url", env = "HOOKPOST_READ_DATABASE_URLS", value_delimiter = ',')]
    pub read_database_urls: Vec<String>,

    /// How far a read replica may fall behind and still serve reads: one
    /// that has not replayed what the primary had written this long ago
    /// (replay stopped, paused or slow) gets no reads until it catches up.
    #[arg(long, env = "HOOKPOST_READ_REPLICA_MAX_LAG", value_parser = duration, default_value = "10s")]
    pub read_replica_max_lag: Duration,

    /// The same Postgres database through a connection pooler in transaction
    /// mode (PgBouncer `pool_mode = transaction`): the pool's statements go
    /// there, each unnamed and inside a transaction. --database-url stays the
    /// direct address, used for what needs a session of its own (migrations,
    /// LISTEN, maintenance's lock): at most three connections per process.
    #[arg(long, env = "HOOKPOST_POOLED_DATABASE_URL")]
    pub pooled_database_url: Option<String>,

    /// Most database connections in this process's pool. Without a pooler, a
    /// delivering process has a pool of up to three more for its claims (one
    /// in use as a rule; planned with `enable_seqscan` off: see
    /// `store::postgres::claims_pool`).
    #[arg(long, env = "HOOKPOST_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,

    /// Longest wait for a database connection before a call fails UNAVAILABLE.
    #[arg(long, env = "HOOKPOST_DB_ACQUIRE_TIMEOUT", value_parser = duration, default_value = "5s")]
    pub db_acquire_timeout: Duration,

    /// Retries after the first attempt, unless a Dispatch sets max_retries.
    #[arg(long, env = "HOOKPOST_MAX_RETRIES", default_value_t = 3)]
    pub max_retries: u32,

    /// Delay before the first retry; each later retry doubles it (with jitter).
    #[arg(long, env = "HOOKPOST_BACKOFF_BASE", value_parser = duration, default_value = "10s")]
    pub backoff_base: Duration,

    /// Longest delay between two attempts.
    #[arg(long, env = "HOOKPOST_BACKOFF_MAX", value_parser = duration, default_value = "1h")]
    pub backoff_max: Duration,

    /// Longest Retry-After honoured from a receiver.
    #[arg(long, env = "HOOKPOST_RETRY_AFTER_MAX", value_parser = duration, default_value = "1h")]
    pub retry_after_max: Duration,

    /// Total time one attempt may take (connect, send, response).
    #[arg(long, env = "HOOKPOST_ATTEMPT_TIMEOUT", value_parser = duration, default_value = "15s")]
    pub attempt_timeout: Duration,

    /// Time allowed to open a connection to a receiver.
    #[arg(long, env = "HOOKPOST_CONNECT_TIMEOUT", value_parser = duration, default_value = "5s")]
    pub connect_timeout: Duration,

    /// Added to the attempt timeout to form a claim's lease (at most 30s).
    #[arg(long, env = "HOOKPOST_LEASE_MARGIN", value_parser = duration, default_value = "10s")]
    pub lease_margin: Duration,

    /// How often to look for work dispatched by other replicas or falling due.
    #[arg(long, env = "HOOKPOST_POLL_INTERVAL", value_parser = duration, default_value = "200ms")]
    pub poll_interval: Duration,

    /// Serve the API only and deliver nothing (another replica delivers).
    #[arg(long, env = "HOOKPOST_NO_DELIVERY")]
    pub no_delivery: bool,

    /// Deliveries in flight at once in this process. A slot is held from the
    /// claim until the attempt's record commits, so under Dispatch load (slower
    /// commits) a process needs more slots to keep up with what it accepts.
    /// Measured (docs/PERFORMANCE.md): 64 slots delivered 2,150/s while
    /// accepting 3,500/s, 128 all 3,250/s; with Dispatch at concurrency 64,
    /// 128 slots delivered 4,700-4,900/s of 4,950-5,200/s accepted (4,400 to
    /// 7,300 behind after 20 s), 256 all of 4,650-4,950/s. Each slot holds one
    /// payload (at most --max-payload-bytes) while it is in flight.
    #[arg(long, env = "HOOKPOST_CONCURRENCY", default_value_t = 256)]
    pub concurrency: usize,

    /// Deliveries in flight at once in one queue (an endpoint without its own
    /// max_in_flight, or one host of bare-URL webhooks). A quarter of the
    /// default --concurrency: one hanging receiver can hold at most a quarter
    /// of this process's slots, and one healthy receiver still gets the full
    /// rate (measured to one receiver, docs/PERFORMANCE.md: 32 fell behind
    /// under Dispatch load, 64 kept up; a seat is given back when the request
    /// ends, before the record commits, so 128 gained nothing over 64).
    #[arg(long, env = "HOOKPOST_PER_HOST_CONCURRENCY", default_value_t = 64)]
    pub per_host_concurrency: usize,

    /// An endpoint all of whose deliveries have failed for this long (and at
    /// least --disable-after-failures in a row) is disabled automatically;
    /// its new deliveries are held until it is re-enabled. An endpoint that
    /// answers 410 Gone is disabled at once.
    #[arg(long, env = "HOOKPOST_DISABLE_AFTER", value_parser = duration, default_value = "5d")]
    pub disable_after: Duration,

    /// Failed attempts in a row, at least, before --disable-after applies.
    #[arg(long, env = "HOOKPOST_DISABLE_AFTER_FAILURES", default_value_t = 10)]
    pub disable_after_failures: u32,

    /// How long shutdown waits for in-flight deliveries.
    #[arg(long, env = "HOOKPOST_DRAIN_TIMEOUT", value_parser = duration, default_value = "30s")]
    pub drain_timeout: Duration,

    /// Largest payload accepted, in bytes of JSON.
    #[arg(long, env = "HOOKPOST_MAX_PAYLOAD_BYTES", default_value_t = 256 * 1024)]
    pub max_payload_bytes: usize,

    /// Largest metadata accepted, in bytes of JSON.
    #[arg(long, env = "HOOKPOST_MAX_METADATA_BYTES", default_value_t = 16 * 1024)]
    pub max_metadata_bytes: usize,

    /// Longest webhook_url accepted, in bytes.
    #[arg(long, env = "HOOKPOST_MAX_URL_BYTES", default_value_t = 2048)]
    pub max_url_bytes: usize,

    /// Longest webhook_type accepted, in bytes.
    #[arg(long, env = "HOOKPOST_MAX_WEBHOOK_TYPE_BYTES", default_value_t = 128)]
    pub max_webhook_type_bytes: usize,

    /// Longest idempotency_key accepted, in bytes.
    #[arg(long, env = "HOOKPOST_MAX_IDEMPOTENCY_KEY_BYTES", default_value_t = 255)]
    pub max_idempotency_key_bytes: usize,

    /// Allow deliveries to loopback, private and other reserved addresses
    /// (local development and tests only: this lifts the SSRF guard).
    #[arg(long, env = "HOOKPOST_ALLOW_PRIVATE_TARGETS")]
    pub allow_private_targets: bool,

    /// Requests per second allowed per API key (token bucket); no limit if unset.
    #[arg(long, env = "HOOKPOST_RATE_LIMIT")]
    pub rate_limit: Option<std::num::NonZeroU32>,

    /// Logs (requests and their attempts) older than this are removed
    /// automatically (30d, 7d, 12h...). Pending deliveries are never removed.
    #[arg(long, env = "HOOKPOST_RETENTION", value_parser = duration, default_value = "30d")]
    pub retention: Duration,

    /// How often retention and partition upkeep run.
    #[arg(long, env = "HOOKPOST_MAINTENANCE_INTERVAL", value_parser = duration, default_value = "1h")]
    pub maintenance_interval: Duration,

    /// How long a looked-up API key is trusted before it is read again (so a
    /// revocation takes effect within this time); unknown keys are remembered
    /// as unknown for as long.
    #[arg(long, env = "HOOKPOST_KEY_CACHE_TTL", value_parser = duration, default_value = "10s")]
    pub key_cache_ttl: Duration,

    /// Client connections served at once; more wait in the accept queue.
    #[arg(long, env = "HOOKPOST_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Time a client has to send a request's headers (from connecting, or from
    /// the end of its previous request on an HTTP/1 keep-alive connection).
    #[arg(long, env = "HOOKPOST_HEADER_READ_TIMEOUT", value_parser = duration, default_value = "10s")]
    pub header_read_timeout: Duration,

    /// Time a whole request may take, body included; a unary call past it
    /// fails DEADLINE_EXCEEDED (HTTP 504).
    #[arg(long, env = "HOOKPOST_REQUEST_TIMEOUT", value_parser = duration, default_value = "30s")]
    pub request_timeout: Duration,

    /// Browser origins allowed to call the API across origins (CORS), e.g.
    /// https://console.example.com; repeat the flag or separate with commas;
    /// `*` allows any. Off by default: browsers may then call only from the
    /// same origin. Applies to REST and gRPC-Web alike.
    #[arg(long = "cors-allow-origin", env = "HOOKPOST_CORS_ALLOW_ORIGINS", value_delimiter = ',')]
    pub cors_allow_origins: Vec<String>,

    /// A connection with no request in flight for this long is closed.
    #[arg(long, env = "HOOKPOST_IDLE_TIMEOUT", value_parser = duration, default_value = "60s")]
    pub idle_timeout: Duration,

    /// Interval of HTTP/2 keep-alive pings to clients.
    #[arg(long, env = "HOOKPOST_HTTP2_KEEPALIVE_INTERVAL", value_parser = duration, default_value = "30s")]
    pub http2_keepalive_interval: Duration,

    /// A client that does not answer a keep-alive ping within this is dropped.
    #[arg(long, env = "HOOKPOST_HTTP2_KEEPALIVE_TIMEOUT", value_parser = duration, default_value = "10s")]
    pub http2_keepalive_timeout: Duration,

    /// Concurrent HTTP/2 streams (calls) per client connection.
    #[arg(long, env = "HOOKPOST_HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 128)]
    pub http2_max_concurrent_streams: u32,
}

/// Where the key that encrypts signing secrets at rest comes from.
#[derive(Clone)]
pub enum SecretKeySource {
    /// Given by the operator (base64 of 32 bytes).
    Base64(String),
    /// Generated once into this directory and reused.
    DataDir(std::path::PathBuf),
    /// A new key for this process only (tests, throwaway runs): secrets stored
    /// under it cannot be read after a restart.
    Ephemeral,
}

impl std::fmt::Debug for SecretKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Base64(_) => f.write_str("Base64(***)"),
            Self::DataDir(d) => f.debug_tuple("DataDir").field(d).finish(),
            Self::Ephemeral => f.write_str("Ephemeral"),
        }
    }
}

/// Everything `hookpost serve` needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Where the key that encrypts signing secrets comes from.
    pub secret_key: SecretKeySource,
    pub database_url: String,
    /// Read replicas of `database_url` for log reads (Postgres only).
    pub read_database_urls: Vec<String>,
    /// `database_url` through a transaction pooler, for the pool.
    pub pooled_database_url: Option<String>,
    /// How far a read replica may lag and still serve reads.
    pub read_replica_max_lag: Duration,
    pub db_pool_size: u32,
    pub db_acquire_timeout: Duration,
    pub default_max_retries: u32,
    pub limits: Limits,
    pub delivery: DeliveryConfig,
    pub key_cache_ttl: Duration,
    pub connection_limits: ConnectionLimits,
    pub request_timeout: Duration,
    /// Origins allowed by CORS; empty: CORS off.
    pub cors_allow_origins: Vec<String>,
    pub rate_limit: Option<std::num::NonZeroU32>,
    pub retention: Duration,
    pub maintenance_interval: Duration,
}

impl Config {
    /// Defaults for everything but the database, listening on `listen`.
    pub fn new(database_url: impl Into<String>, listen: SocketAddr) -> Self {
        Self {
            listen,
            database_url: database_url.into(),
            read_database_urls: Vec::new(),
            pooled_database_url: None,
            read_replica_max_lag: crate::store::postgres::DEFAULT_READ_MAX_LAG,
            secret_key: SecretKeySource::Ephemeral,
            db_pool_size: 16,
            db_acquire_timeout: Duration::from_secs(5),
            default_max_retries: 3,
            limits: Limits::default(),
            delivery: DeliveryConfig::default(),
            key_cache_ttl: Duration::from_secs(10),
            connection_limits: ConnectionLimits::default(),
            request_timeout: Duration::from_secs(30),
            cors_allow_origins: Vec::new(),
            rate_limit: None,
            retention: Duration::from_secs(30 * 24 * 3600),
            maintenance_interval: Duration::from_secs(3600),
        }
    }

    /// Lifts (or restores) the SSRF guard for both dispatch and delivery.
    pub fn allow_private_targets(&mut self, allow: bool) {
        self.limits.allow_private_targets = allow;
        self.delivery.allow_private_targets = allow;
    }
}

impl TryFrom<ServeArgs> for Config {
    type Error = anyhow::Error;

    fn try_from(a: ServeArgs) -> anyhow::Result<Self> {
        anyhow::ensure!(a.lease_margin <= Duration::from_secs(30), "--lease-margin must be at most 30s");
        anyhow::ensure!(a.concurrency >= 1, "--concurrency must be at least 1");
        anyhow::ensure!(a.per_host_concurrency >= 1, "--per-host-concurrency must be at least 1");
        anyhow::ensure!(a.db_pool_size >= 1, "--db-pool-size must be at least 1");
        anyhow::ensure!(!a.attempt_timeout.is_zero(), "--attempt-timeout must be positive");
        let limits = Limits {
            max_payload_bytes: a.max_payload_bytes,
            max_metadata_bytes: a.max_metadata_bytes,
            max_url_len: a.max_url_bytes,
            max_webhook_type_len: a.max_webhook_type_bytes,
            max_idempotency_key_len: a.max_idempotency_key_bytes,
            allow_private_targets: a.allow_private_targets,
            max_endpoints_per_organization: a.max_endpoints_per_organization,
            max_watch_streams_per_key: a.max_watch_streams_per_key,
            ..Limits::default()
        };
        anyhow::ensure!(a.max_retries <= limits.max_retries, "--max-retries must be at most {}", limits.max_retries);
        anyhow::ensure!(a.max_connections >= 1, "--max-connections must be at least 1");
        for (flag, d) in [
            ("--header-read-timeout", a.header_read_timeout),
            ("--request-timeout", a.request_timeout),
            ("--idle-timeout", a.idle_timeout),
            ("--http2-keepalive-interval", a.http2_keepalive_interval),
            ("--http2-keepalive-timeout", a.http2_keepalive_timeout),
        ] {
            anyhow::ensure!(!d.is_zero(), "{flag} must be positive");
        }
        anyhow::ensure!(a.http2_max_concurrent_streams >= 1, "--http2-max-concurrent-streams must be at least 1");
        let retry = RetryPolicy { base: a.backoff_base, max: a.backoff_max, retry_after_max: a.retry_after_max };
        // A Dispatch may ask for up to limits.max_retries, so that is the bound.
        let horizon = retry.horizon(limits.max_retries, a.attempt_timeout + a.lease_margin);
        check_retention(a.retention, Some(horizon))?;
        anyhow::ensure!(
            a.read_database_urls.is_empty() || a.database.database_url.is_some(),
            "--read-database-url needs a Postgres --database-url"
        );
        anyhow::ensure!(
            a.pooled_database_url.is_none() || a.database.database_url.is_some(),
            "--pooled-database-url needs a Postgres --database-url (the direct address)"
        );
        a.database.prepare()?;
        Ok(Self {
            listen: a.listen,
            database_url: a.database.url(),
            read_database_urls: a.read_database_urls,
            pooled_database_url: a.pooled_database_url,
            read_replica_max_lag: a.read_replica_max_lag,
            secret_key: match a.secret_key {
                Some(key) => SecretKeySource::Base64(key),
                None => SecretKeySource::DataDir(a.database.data_dir.clone()),
            },
            db_pool_size: a.db_pool_size,
            db_acquire_timeout: a.db_acquire_timeout,
            default_max_retries: a.max_retries,
            limits,
            delivery: DeliveryConfig {
                enabled: !a.no_delivery,
                concurrency: a.concurrency,
                per_host_concurrency: a.per_host_concurrency,
                attempt_timeout: a.attempt_timeout,
                connect_timeout: a.connect_timeout.min(a.attempt_timeout),
                lease_margin: a.lease_margin,
                poll_interval: a.poll_interval,
                retry,
                drain_timeout: a.drain_timeout,
                allow_private_targets: a.allow_private_targets,
                disable_rule: crate::store::DisableRule {
                    window: chrono::TimeDelta::from_std(a.disable_after)
                        .map_err(|_| anyhow::anyhow!("--disable-after is too long"))?,
                    min_failures: a.disable_after_failures.max(1),
                },
                ..DeliveryConfig::default()
            },
            key_cache_ttl: a.key_cache_ttl,
            connection_limits: ConnectionLimits {
                max_connections: a.max_connections,
                header_read_timeout: a.header_read_timeout,
                idle_timeout: a.idle_timeout,
                http2_keepalive_interval: a.http2_keepalive_interval,
                http2_keepalive_timeout: a.http2_keepalive_timeout,
                http2_max_concurrent_streams: a.http2_max_concurrent_streams,
            },
            request_timeout: a.request_timeout,
            cors_allow_origins: a.cors_allow_origins.clone(),
            rate_limit: a.rate_limit,
            retention: a.retention,
            maintenance_interval: a.maintenance_interval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_human_units() {
        assert_eq!(duration("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(duration("30d").unwrap(), Duration::from_secs(30 * 86400));
        assert_eq!(duration("12h").unwrap(), Duration::from_secs(12 * 3600));
        assert!(duration("soon").unwrap_err().contains("200ms"));
    }

    fn serve(extra: &[&str]) -> anyhow::Result<Config> {
        // A Postgres URL: nothing is created on disk and nothing connects.
        let base = ["hookpost", "serve", "--database-url", "postgres://127.0.0.1:1/none"];
        let cli = Cli::try_parse_from(base.iter().chain(extra)).map_err(|e| anyhow::anyhow!("{e}"))?;
        match cli.command {
            Command::Serve(args) => Config::try_from(*args),
            _ => unreachable!(),
        }
    }

    fn refusal(extra: &[&str]) -> String {
        format!("{:#}", serve(extra).expect_err("refused at start"))
    }

    #[test]
    fn a_retention_of_300000_years_is_refused_at_start_naming_the_flag() {
        let err = refusal(&["--retention", "300000y"]);
        assert!(err.contains("--retention") && err.contains("at most 100 years"), "{err}");
    }

    #[test]
    fn a_retention_under_a_day_is_refused_at_start() {
        let err = refusal(&["--retention", "12h"]);
        assert!(err.contains("--retention must be at least 1d"), "{err}");
    }

    #[test]
    fn a_retention_within_the_retry_horizon_is_refused_at_start() {
        // 50 retries (the most a Dispatch may ask) × 1h, plus attempts: over 2 days.
        let err = refusal(&["--retention", "2d"]);
        assert!(err.contains("--retention (2days) must be longer"), "{err}");
        assert!(serve(&["--retention", "2d", "--backoff-max", "30m", "--retry-after-max", "30m"]).is_ok());
        assert!(serve(&[]).is_ok(), "the defaults are consistent");
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
