//! Retention never stalls the queue: day partitions come and go under a
//! long-running reader (a report, a slow listing) while dispatches keep
//! answering, one maintenance run at a time.

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{Days, NaiveDate, Utc};
use hookpost::proto::v1 as pb;
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

use crate::helpers::*;
use crate::ops::backdated;

/// The invariant the issue states: retention work never makes a Dispatch wait
/// a second.
const MAX_DISPATCH_LATENCY: Duration = Duration::from_secs(1);

/// A transaction that has read the parent tables and stays open (a report, a
/// slow listing): it holds ACCESS SHARE on them until it ends.
struct Reader(PgConnection);

impl Reader {
    async fn open(database_url: &str) -> Self {
        let mut conn = PgConnection::connect(database_url).await.unwrap();
        conn.execute("BEGIN").await.unwrap();
        conn.execute("SELECT count(*) FROM webhook_requests").await.unwrap();
        conn.execute("SELECT count(*) FROM webhook_attempts").await.unwrap();
        Self(conn)
    }

    async fn end(mut self) {
        self.0.execute("COMMIT").await.unwrap();
    }
}

/// Dispatches a webhook and lists the organization's logs, again and again
/// until stopped; a call that fails counts as slow as it took.
struct DispatchLoop {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<Measured>,
}

#[derive(Debug, Default)]
struct Measured {
    rounds: usize,
    slowest_dispatch: Duration,
    slowest_listing: Duration,
    failures: Vec<String>,
}

impl Measured {
    fn assert_nothing_waited(&self, during: &str) {
        eprintln!("{during}: {self:?}");
        assert!(self.failures.is_empty(), "calls failed {during}: {:?}", self.failures);
        assert!(self.slowest_dispatch < MAX_DISPATCH_LATENCY, "a dispatch waited {:?} {during}", self.slowest_dispatch);
        assert!(self.slowest_listing < MAX_DISPATCH_LATENCY, "a listing waited {:?} {during}", self.slowest_listing);
    }
}

impl DispatchLoop {
    fn start(app: &TestApp, url: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (client, key, flag) = (app.client.clone(), app.key.clone(), stop.clone());
        let handle = tokio::spawn(async move {
            let mut m = Measured::default();
            let org = Uuid::new_v4();
            while !flag.load(Ordering::SeqCst) {
                let started = Instant::now();
                if let Err(e) = client.clone().dispatch(with_key(dispatch_to(&url, org), &key)).await {
                    m.failures.push(format!("dispatch: {e}"));
                }
                m.slowest_dispatch = m.slowest_dispatch.max(started.elapsed());
                let started = Instant::now();
                let list =
                    pb::ListWebhookLogsRequest { organization_id: org.to_string(), page_size: 1, ..Default::default() };
                if let Err(e) = client.clone().list_webhook_logs(with_key(list, &key)).await {
                    m.failures.push(format!("listing: {e}"));
                }
                m.slowest_listing = m.slowest_listing.max(started.elapsed());
                m.rounds += 1;
            }
            m
        });
        Self { stop, handle }
    }

    /// Keeps going for `window` more, then stops.
    async fn finish_after(self, window: Duration) -> Measured {
        tokio::time::sleep(window).await; // the measurement window, not a readiness wait
        self.stop.store(true, Ordering::SeqCst);
        self.handle.await.unwrap()
    }
}

fn spawn_purge(database_url: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_hookpost"))
        .args(["purge", "--retention", "1d"])
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn finished(child: std::process::Child) -> Output {
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success(), "purge failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Waits until a session runs a statement matching the regex `what`
/// (case-insensitive).
async fn running(app: &TestApp, what: &str) {
    let pattern = what.to_owned();
    eventually(Duration::from_secs(10), what, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query ~* $1 \
             AND pid <> pg_backend_pid() AND query NOT ILIKE '%pg_stat_activity%'",
        )
        .bind(&pattern)
        .fetch_one(app.pg())
        .await
        .unwrap();
        (n > 0).then_some(())
    })
    .await
}

async fn relation_exists(app: &TestApp, name: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(name).fetch_one(app.pg()).await.unwrap()
}

/// Whether `name` is a partition (attached, or half-detached) of its parent.
async fn attached(app: &TestApp, name: &str) -> Option<bool> {
    sqlx::query_scalar("SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = to_regclass($1)")
        .bind(name)
        .fetch_optional(app.pg())
        .await
        .unwrap()
        .map(|pending: bool| !pending)
}

fn part(table: &str, day: NaiveDate) -> String {
    format!("{table}_p{}", day.format("%Y%m%d"))
}

#[tokio::test]
async fn two_purges_and_dispatches_at_once_take_turns_and_no_dispatch_waits_a_second() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let store = hookpost::store::PostgresStore::connect(&app.database_url, 1, Duration::from_secs(5)).await.unwrap();
    let today = Utc::now().date_naive();
    store.ensure_partitions(today - Days::new(4), today).await.unwrap();
    let org = Uuid::new_v4();
    for days in [4, 3] {
        backdated(&app, org, Utc::now() - Days::new(days), false, None).await;
    }
    let reader = Reader::open(&app.database_url).await;
    let dispatching = DispatchLoop::start(&app, receiver.url());

    let first = spawn_purge(&app.database_url);
    running(&app, "DETACH PARTITION").await;
    let second = spawn_purge(&app.database_url);
    // The second purge must not queue a lock behind the first: it waits for
    // nothing and leaves the run to the replica that holds the turn.
    let second = finished(second).await;
    let measured = dispatching.finish_after(Duration::from_millis(1500)).await;
    reader.end().await;
    let first = finished(first).await;

    let (first, second) = (String::from_utf8_lossy(&first.stdout), String::from_utf8_lossy(&second.stdout));
    assert!(first.contains("removed 2 requests"), "{first}");
    assert!(second.contains("another process is running maintenance"), "{second}");
    for days in [4, 3] {
        let day = today - Days::new(days);
        assert!(!relation_exists(&app, &part("webhook_requests", day)).await);
        assert!(!relation_exists(&app, &part("webhook_attempts", day)).await);
    }
    measured.assert_nothing_waited("while two purges ran");
}

/// Leaves `table`'s day `day` half-detached, as a DETACH CONCURRENTLY that was
/// cancelled (or whose session died) while it waited for older transactions.
async fn half_detach(app: &TestApp, table: &str, day: NaiveDate) {
    let reader = Reader::open(&app.database_url).await;
    let mut ddl = PgConnection::connect(&app.database_url).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut ddl).await.unwrap();
    let sql = format!("ALTER TABLE {table} DETACH PARTITION {} CONCURRENTLY", part(table, day));
    let detach = tokio::spawn(async move { ddl.execute(sql.as_str()).await.map(|_| ()) });
    // Its first transaction has committed (the partition is marked pending);
    // it now waits for the reader's transaction, and is cancelled there.
    eventually(Duration::from_secs(10), "the detach to be pending", || async {
        (attached(app, &part(table, day)).await == Some(false)).then_some(())
    })
    .await;
    sqlx::query("SELECT pg_cancel_backend($1)").bind(pid).execute(app.pg()).await.unwrap();
    let err = detach.await.unwrap().expect_err("the detach was cancelled");
    assert!(err.to_string().contains("cancel"), "{err}");
    reader.end().await;
    assert_eq!(attached(app, &part(table, day)).await, Some(false), "left pending detach");
}

#[tokio::test]
async fn a_half_detached_day_is_finalised_and_dropped_without_stalling_dispatch() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let store = hookpost::store::PostgresStore::connect(&app.database_url, 1, Duration::from_secs(5)).await.unwrap();
    let today = Utc::now().date_naive();
    let day = today - Days::new(3);
    store.ensure_partitions(day, day).await.unwrap();
    backdated(&app, Uuid::new_v4(), Utc::now() - Days::new(3), false, None).await;
    half_detach(&app, "webhook_attempts", day).await;
    half_detach(&app, "webhook_requests", day).await;

    let reader = Reader::open(&app.database_url).await;
    let dispatching = DispatchLoop::start(&app, receiver.url());
    let purge = spawn_purge(&app.database_url);
    running(&app, "DETACH PARTITION|DROP TABLE").await;
    let measured = dispatching.finish_after(Duration::from_millis(1500)).await;
    reader.end().await;
    let out = finished(purge).await;

    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains(&day.format("%Y-%m-%d").to_string()), "{out}");
    assert!(!relation_exists(&app, &part("webhook_requests", day)).await, "{out}");
    assert!(!relation_exists(&app, &part("webhook_attempts", day)).await, "{out}");
    measured.assert_nothing_waited("while a half-detached day was recovered");
}

#[tokio::test]
async fn a_day_is_created_while_dispatching_under_a_long_reader() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let store = hookpost::store::PostgresStore::connect(&app.database_url, 1, Duration::from_secs(5)).await.unwrap();
    let day = Utc::now().date_naive() + Days::new(12);

    let reader = Reader::open(&app.database_url).await;
    let dispatching = DispatchLoop::start(&app, receiver.url());
    let creating = tokio::spawn(async move { store.ensure_partitions(day, day).await });
    // Attaching needs no lock that the reader holds: the day appears while the
    // reader is still open.
    eventually(Duration::from_secs(5), "the new day, while the reader is open", || async {
        creating.is_finished().then_some(())
    })
    .await;
    let measured = dispatching.finish_after(Duration::from_millis(500)).await;
    reader.end().await;
    creating.await.unwrap().unwrap();

    for table in ["webhook_requests", "webhook_attempts"] {
        assert_eq!(attached(&app, &part(table, day)).await, Some(true), "{table}");
    }
    // Rows of that day are routed to it.
    let at = day.and_hms_opt(12, 0, 0).unwrap().and_utc();
    backdated(&app, Uuid::new_v4(), at, false, None).await;
    let n_day: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", part("webhook_attempts", day)))
        .fetch_one(app.pg())
        .await
        .unwrap();
    assert_eq!(n_day, 1);
    measured.assert_nothing_waited("while a day was created");
}
