use clap::Parser;
use hookpost::auth::{self, KeyKind};
use std::sync::Arc;

use hookpost::config::{ApiKeyCommand, Cli, Command, Config, DatabaseArgs, LogFormat};
use hookpost::store::{self, Store};
use tracing_subscriber::EnvFilter;

// mimalloc rather than glibc's malloc: glibc's allocation and free paths were
// about a sixth of the server's CPU under Dispatch load (perf), and mimalloc
// took 11 % off the server's CPU per Dispatch and 13 % per listing page
// (docs/PERFORMANCE.md). Built without its secure mode (guard pages and
// encrypted free lists), which costs about a tenth by its own account.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Serve(args) => {
            let config = Config::try_from(*args)?;
            let app = hookpost::Application::build(config).await?;
            println!("hookpost listening on {} (gRPC and REST)", app.local_addr());
            if let Some(key) = app.development_key() {
                println!("development API key (service; shown once, only its hash is stored):");
                println!("{key}");
            }
            app.run(shutdown_signal()).await
        }
        Command::Migrate(db) => {
            open_store(&db).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::ApiKey(cmd) => api_key(cmd).await,
        Command::Purge { database, retention, dry_run } => {
            hookpost::config::check_retention(retention, None)?;
            let store = open_store(&database).await?;
            let r = store.purge(chrono::TimeDelta::from_std(retention)?, dry_run).await?;
            if r.skipped {
                println!("skipped: another process is running maintenance (it applies retention); nothing done");
                return Ok(());
            }
            let verb = if dry_run { "would remove" } else { "removed" };
            let cutoff = r.cutoff.map_or("?".into(), |c| c.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            println!("{verb} {} requests and {} attempts created before {cutoff}", r.requests, r.attempts);
            println!("days: {}", if r.days.is_empty() { "none".to_string() } else { r.days.join(", ") });
            if !r.kept_pending.is_empty() {
                println!("kept (deliveries still pending): {}", r.kept_pending.join(", "));
            }
            if !r.left_attached.is_empty() {
                println!("left attached (detach failed; retried next run): {}", r.left_attached.join(", "));
            }
            Ok(())
        }
    }
}

async fn open_store(db: &DatabaseArgs) -> anyhow::Result<Arc<dyn Store>> {
    db.prepare()?;
    Ok(store::open(&db.url(), 1, std::time::Duration::from_secs(30)).await?.0)
}

/// `hookpost api-key ...`: the key itself is printed once, as the last line.
async fn api_key(cmd: ApiKeyCommand) -> anyhow::Result<()> {
    match cmd {
        ApiKeyCommand::Create { database, organization, service } => {
            let store = open_store(&database).await?;
            let kind = match (organization, service) {
                (Some(org), false) => KeyKind::Organization(org),
                (None, true) => KeyKind::Service,
                _ => anyhow::bail!("give exactly one of --organization <UUID> or --service"),
            };
            let key = auth::generate(kind);
            store.insert_api_key(&key).await?;
            match kind {
                KeyKind::Organization(org) => println!("created organization key {} for {org}", key.prefix),
                KeyKind::Service => println!("created service key {}", key.prefix),
            }
            println!("store it now: it cannot be shown again");
            println!("{}", key.plaintext);
        }
        ApiKeyCommand::List { database } => {
            let store = open_store(&database).await?;
            println!("{:<18} {:<13} {:<37} {:<26} revoked", "prefix", "kind", "organization", "created");
            for k in store.list_api_keys().await? {
                let (kind, org) = match k.kind {
                    KeyKind::Organization(o) => ("organization", o.to_string()),
                    KeyKind::Service => ("service", "-".into()),
                };
                let revoked = k.revoked_at.map_or("-".to_string(), |t| t.to_rfc3339());
                println!("{:<18} {:<13} {:<37} {:<26} {revoked}", k.prefix, kind, org, k.created_at.to_rfc3339());
            }
        }
        ApiKeyCommand::Revoke { database, prefix } => {
            let store = open_store(&database).await?;
            anyhow::ensure!(store.revoke_api_key(&prefix).await?, "no active key with prefix {prefix}");
            println!("revoked {prefix}");
        }
    }
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    // Colours only for a terminal, and not with NO_COLOR set: a log file or
    // a collector reading stderr would get escape codes in every line, and
    // formatting them is work done for every request's span.
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => {
            builder.json().init();
            // The default report of a panic is plain text on stderr, lines
            // in the middle of a JSON stream that a collector cannot parse;
            // as an ERROR event it is one JSON line like the rest (message,
            // location, and the backtrace when RUST_BACKTRACE asks for one).
            std::panic::set_hook(Box::new(tracing_panic::panic_hook));
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested; draining");
}
