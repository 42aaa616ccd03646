//! The end-to-end delivery scenarios of issues 13 and 14: a real `hookpost
//! serve` process delivering to a sink in its own process.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hookpost::proto::v1 as pb;
use hookpost::proto::v1::webhook_service_client::WebhookServiceClient;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::procs::*;
use crate::support::*;

/// How long a dispatch load runs: a number of requests, or a time.
#[derive(Clone, Copy)]
pub enum Load {
    Count(usize),
    For(Duration),
}

type MakeRequest = Arc<dyn Fn(u64) -> pb::DispatchRequest + Send + Sync>;

/// Dispatches over gRPC (8 HTTP/2 connections, as `grpc_dispatch`) at
/// `concurrency`; returns (dispatched, seconds, responses' message IDs with
/// their send times in Unix µs when `keep` is set).
pub async fn dispatch_load(
    base: &str,
    key: &str,
    concurrency: usize,
    load: Load,
    keep: bool,
    make: MakeRequest,
) -> anyhow::Result<(u64, f64, Vec<(String, i64)>)> {
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(WebhookServiceClient::connect(base.to_string()).await?);
    }
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..concurrency {
        let (mut client, next, key, make) =
            (clients[i % clients.len()].clone(), next.clone(), key.to_string(), make.clone());
        tasks.spawn(async move {
            let mut sent = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                match load {
                    Load::Count(c) if n >= c as u64 => break,
                    Load::For(d) if start.elapsed() >= d => break,
                    _ => {}
                }
                let at = unix_micros();
                let resp = client.dispatch(authed(make(n), &key)).await?.into_inner();
                if keep {
                    sent.push((resp.message_id, at));
                }
            }
            anyhow::Ok(sent)
        });
    }
    let mut sent = Vec::new();
    while let Some(r) = tasks.join_next().await {
        sent.extend(r??);
    }
    let secs = start.elapsed().as_secs_f64();
    let done = match load {
        Load::Count(c) => c as u64,
        Load::For(_) => next.load(Ordering::Relaxed) - concurrency as u64,
    };
    Ok((done, secs, sent))
}

/// A bare-URL Dispatch with a 1 KiB payload, one organization per caller.
pub fn bare(url: String) -> MakeRequest {
    let payload = hookpost::grpc::json_to_struct(payload_1k());
    let org = Uuid::new_v4().to_string();
    Arc::new(move |_| pb::DispatchRequest {
        organization_id: org.clone(),
        webhook_url: url.clone(),
        webhook_type: "call_ended".into(),
        payload: Some(payload.clone()),
        ..Default::default()
    })
}

/// A Dispatch to the endpoints of `org` (all of them, or `endpoint`).
pub fn to_endpoints(org: String, endpoint: Option<String>) -> MakeRequest {
    let payload = hookpost::grpc::json_to_struct(payload_1k());
    Arc::new(move |_| pb::DispatchRequest {
        organization_id: org.clone(),
        endpoint_id: endpoint.clone().unwrap_or_default(),
        webhook_type: "call_ended".into(),
        payload: Some(payload.clone()),
        ..Default::default()
    })
}

pub async fn create_endpoint(
    app: &Hookpost,
    org: &str,
    url: String,
    policy: Option<pb::DeliveryPolicy>,
) -> anyhow::Result<String> {
    let mut client = WebhookServiceClient::connect(app.base_url()).await?;
    let req = pb::CreateEndpointRequest {
        organization_id: org.to_string(),
        endpoint: Some(pb::Endpoint { url, policy, ..Default::default() }),
        ..Default::default()
    };
    let e = client.create_endpoint(authed(req, &app.key)).await?.into_inner();
    Ok(e.endpoint.map(|e| e.endpoint_id).unwrap_or_default())
}

pub struct Backlog {
    pub pending: usize,
    pub dispatch_per_s: f64,
    /// First arrival to last, over the whole backlog.
    pub drain_per_s: f64,
    /// Over the first tenth of the backlog (the rate at full backlog).
    pub first_tenth_per_s: f64,
    pub before: TableStats,
    pub after: TableStats,
    pub commits_per_delivery: f64,
    pub waits: String,
    pub cpu_ms_per_delivery: f64,
}

/// `pending` webhooks dispatched through an API-only hookpost (real rows),
/// then a delivering hookpost started and timed until all are at the sink.
pub async fn backlog(admin: &str, db_name: &str, pending: usize, dir: &Path) -> anyhow::Result<Backlog> {
    let db = create_database(admin, db_name).await?;
    let pool = PgPool::connect(&db).await?;
    let sink = Sink::start(dir, &format!("sink-backlog-{pending}"), &[]).await?;
    let api = Hookpost::start(&db, dir, &format!("api-backlog-{pending}"), &["--no-delivery"]).await?;
    let (_, secs, _) =
        dispatch_load(&api.base_url(), &api.key, 64, Load::Count(pending), false, bare(sink.url("hook"))).await?;
    api.stop().await;
    let before = request_partition_stats(&pool).await?;
    let c0 = commits(&pool).await?;
    let worker = Hookpost::start(&db, dir, &format!("worker-backlog-{pending}"), &[]).await?;
    let cpu0 = CpuSnapshot::take(worker.proc.pid);
    let stop = CancellationToken::new();
    let waits = sample_waits(pool.clone(), stop.clone());
    let first = sink.wait_for(1, Duration::from_secs(60)).await?;
    let tenth = sink.wait_for((pending / 10).max(2) as u64, Duration::from_secs(900)).await?;
    let last = sink.wait_for(pending as u64, Duration::from_secs(1800)).await?;
    wait_settled(&pool, Duration::from_secs(120)).await?;
    stop.cancel();
    let cpu = CpuSnapshot::take(worker.proc.pid).since(&cpu0);
    let waits = waits.await?;
    let c1 = commits(&pool).await?;
    worker.stop().await;
    let after = request_partition_stats(&pool).await?;
    sink.proc.stop().await;
    pool.close().await;
    drop_database(admin, db_name).await;
    let n = pending as f64;
    Ok(Backlog {
        pending,
        dispatch_per_s: n / secs,
        drain_per_s: (n - 1.0) / (last - first).as_secs_f64(),
        first_tenth_per_s: ((pending / 10).max(2) as f64 - 1.0) / (tenth - first).as_secs_f64(),
        before,
        after,
        commits_per_delivery: (c1 - c0) as f64 / n,
        waits: top_waits(&waits, 4),
        cpu_ms_per_delivery: (cpu.0 + cpu.1) * 1e3 / n,
    })
}

pub struct EndToEnd {
    pub deliveries_per_s: f64,
    pub dispatch_per_s: f64,
    pub secs: f64,
    pub hookpost_cpu: f64,
    pub postgres_cpu: f64,
    pub n: u64,
    pub upd_per_delivery: f64,
    pub waits: String,
}

/// `n` webhooks dispatched at `concurrency` to a delivering hookpost (one
/// server accepting and delivering, default settings): deliveries/s from the
/// first Dispatch until the last webhook is at the sink; CPU of hookpost and
/// Postgres from before the first Dispatch until every attempt is recorded.
pub async fn end_to_end(
    admin: &str,
    db_name: &str,
    n: usize,
    concurrency: usize,
    dir: &Path,
) -> anyhow::Result<EndToEnd> {
    let db = create_database(admin, db_name).await?;
    let pool = PgPool::connect(&db).await?;
    let sink = Sink::start(dir, "sink-e2e", &[]).await?;
    let app = Hookpost::start(&db, dir, "e2e", &[]).await?;
    let s0 = request_partition_stats(&pool).await?;
    let stop = CancellationToken::new();
    let waits = sample_waits(pool.clone(), stop.clone());
    let cpu0 = CpuSnapshot::take(app.proc.pid);
    let start = Instant::now();
    let (_, dsecs, _) =
        dispatch_load(&app.base_url(), &app.key, concurrency, Load::Count(n), false, bare(sink.url("hook"))).await?;
    let last = sink.wait_for(n as u64, Duration::from_secs(900)).await?;
    wait_settled(&pool, Duration::from_secs(120)).await?;
    let (hookpost_cpu, postgres_cpu) = CpuSnapshot::take(app.proc.pid).since(&cpu0);
    stop.cancel();
    let waits = waits.await?;
    let s1 = request_partition_stats(&pool).await?;
    app.stop().await;
    sink.proc.stop().await;
    pool.close().await;
    drop_database(admin, db_name).await;
    let secs = (last - start).as_secs_f64();
    Ok(EndToEnd {
        deliveries_per_s: n as f64 / secs,
        dispatch_per_s: n as f64 / dsecs,
        secs,
        hookpost_cpu,
        postgres_cpu,
        n: n as u64,
        upd_per_delivery: (s1.upd - s0.upd) as f64 / n as f64,
        waits: top_waits(&waits, 4),
    })
}

pub struct Sustain {
    pub accepted_per_s: f64,
    pub delivered_per_s: f64,
    pub backlog_at_end: u64,
    pub drain_secs: f64,
}

/// Dispatch for `window` at `concurrency` to a delivering hookpost: accepted/s,
/// delivered/s over the same window, and how long the rest takes to arrive.
pub async fn sustain(
    admin: &str,
    db_name: &str,
    window: Duration,
    concurrency: usize,
    dir: &Path,
) -> anyhow::Result<Sustain> {
    let db = create_database(admin, db_name).await?;
    let sink = Sink::start(dir, "sink-sustain", &[]).await?;
    let app = Hookpost::start(&db, dir, "sustain", &[]).await?;
    let (accepted, secs, _) =
        dispatch_load(&app.base_url(), &app.key, concurrency, Load::For(window), false, bare(sink.url("hook"))).await?;
    let ended = Instant::now();
    let delivered = sink.stats().await?.requests;
    let last = sink.wait_for(accepted, Duration::from_secs(1800)).await?;
    app.stop().await;
    sink.proc.stop().await;
    drop_database(admin, db_name).await;
    Ok(Sustain {
        accepted_per_s: accepted as f64 / secs,
        delivered_per_s: delivered as f64 / secs,
        backlog_at_end: accepted.saturating_sub(delivered),
        drain_secs: (last - ended).as_secs_f64(),
    })
}

/// Fan-out to 10 endpoints (each its own queue) vs dispatch to one endpoint:
/// (fan-out deliveries/s, single-endpoint deliveries/s), `n` deliveries each.
/// Dispatches `messages` webhooks made by `make` (`per_message` deliveries
/// each) and waits until the sink has everything sent so far (`seen`, moved
/// on); returns the deliveries per second from the first Dispatch to the
/// last arrival.
async fn dispatch_and_drain(
    app: &Hookpost,
    sink: &Sink,
    concurrency: usize,
    messages: usize,
    per_message: usize,
    make: MakeRequest,
    seen: &mut u64,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    dispatch_load(&app.base_url(), &app.key, concurrency, Load::Count(messages), false, make).await?;
    let deliveries = (messages * per_message) as u64;
    *seen += deliveries;
    let last = sink.wait_for(*seen, Duration::from_secs(900)).await?;
    Ok(deliveries as f64 / (last - start).as_secs_f64())
}

pub async fn fan_out(
    admin: &str,
    db_name: &str,
    n: usize,
    concurrency: usize,
    dir: &Path,
) -> anyhow::Result<(f64, f64)> {
    let db = create_database(admin, db_name).await?;
    let sink = Sink::start(dir, "sink-fanout", &[]).await?;
    let app = Hookpost::start(&db, dir, "fanout", &[]).await?;
    let (fan_org, one_org) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    for i in 0..10 {
        create_endpoint(&app, &fan_org, sink.url(&format!("e{i}")), None).await?;
    }
    let one = create_endpoint(&app, &one_org, sink.url("single"), None).await?;
    let mut fan = Vec::new();
    let mut single = Vec::new();
    let mut seen = 0u64;
    for _ in 0..2 {
        let to_fan = to_endpoints(fan_org.clone(), None);
        fan.push(dispatch_and_drain(&app, &sink, concurrency, n / 10, 10, to_fan, &mut seen).await?);
        let to_one = to_endpoints(one_org.clone(), Some(one.clone()));
        single.push(dispatch_and_drain(&app, &sink, concurrency, n, 1, to_one, &mut seen).await?);
    }
    app.stop().await;
    sink.proc.stop().await;
    drop_database(admin, db_name).await;
    Ok((median(&fan), median(&single)))
}

pub struct Fairness {
    pub alone: Vec<f64>,
    pub with_backlog: Vec<f64>,
    pub a_pending_after: i64,
    pub a_attempts: i64,
    pub a_max_open: u64,
    pub updates_per_attempt: f64,
}

/// Tenant B's dispatch-to-receipt latencies (seconds) at `rate`/s for
/// `window`, alone and while tenant A's `backlog` waits for a receiver that
/// never answers (its endpoint: max_in_flight 4, attempt timeout 1 s).
pub async fn fairness(
    admin: &str,
    db_name: &str,
    backlog: usize,
    rate: u32,
    window: Duration,
    dir: &Path,
) -> anyhow::Result<Fairness> {
    let db = create_database(admin, db_name).await?;
    let pool = PgPool::connect(&db).await?;
    let hang = Sink::start(dir, "sink-hang", &["--hang"]).await?;
    let ok = Sink::start(dir, "sink-b", &["--record"]).await?;
    let app = Hookpost::start(&db, dir, "fairness", &[]).await?;
    let (a_org, b_org) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let policy = pb::DeliveryPolicy {
        max_in_flight: Some(4),
        attempt_timeout: Some(pbjson_types::Duration { seconds: 1, nanos: 0 }),
        ..Default::default()
    };
    let a = create_endpoint(&app, &a_org, hang.url("a"), Some(policy)).await?;
    let b = create_endpoint(&app, &b_org, ok.url("b"), None).await?;
    let steady = |app: &Hookpost| {
        let (base, key, b_org, b) = (app.base_url(), app.key.clone(), b_org.clone(), b.clone());
        async move {
            let mut client = WebhookServiceClient::connect(base).await?;
            let make = to_endpoints(b_org, Some(b));
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
            let start = Instant::now();
            let mut sent = Vec::new();
            let mut i = 0;
            while start.elapsed() < window {
                tick.tick().await;
                let at = unix_micros();
                let resp = client.dispatch(authed(make(i), &key)).await?.into_inner();
                sent.push((resp.message_id, at));
                i += 1;
            }
            anyhow::Ok(sent)
        }
    };
    let latencies = |sent: Vec<(String, i64)>, arrived: &std::collections::HashMap<String, i64>| {
        sent.iter().map(|(id, at)| arrived.get(id).map_or(f64::INFINITY, |t| (t - at) as f64 / 1e6)).collect::<Vec<_>>()
    };
    let sent = steady(&app).await?;
    ok.wait_for(sent.len() as u64, Duration::from_secs(60)).await.ok();
    let alone = latencies(sent, &ok.arrivals().await?);

    dispatch_load(
        &app.base_url(),
        &app.key,
        32,
        Load::Count(backlog),
        false,
        to_endpoints(a_org.clone(), Some(a.clone())),
    )
    .await?;
    let s0 = request_partition_stats(&pool).await?;
    let att0: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_attempts").fetch_one(&pool).await?;
    let b_before = ok.stats().await?.requests;
    let sent = steady(&app).await?;
    // Missing arrivals count as infinitely late.
    ok.wait_for(b_before + sent.len() as u64, Duration::from_secs(30)).await.ok();
    let with_backlog = latencies(sent, &ok.arrivals().await?);
    let s1 = request_partition_stats(&pool).await?;
    let att1: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_attempts").fetch_one(&pool).await?;
    let a_pending_after: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_requests WHERE status = 'pending' AND endpoint_id = $1::uuid")
            .bind(&a)
            .fetch_one(&pool)
            .await?;
    let a_max_open = hang.stats().await?.max_open;
    app.stop().await;
    hang.proc.stop().await;
    ok.proc.stop().await;
    pool.close().await;
    drop_database(admin, db_name).await;
    Ok(Fairness {
        alone,
        with_backlog,
        a_pending_after,
        a_attempts: att1 - att0,
        a_max_open,
        updates_per_attempt: (s1.upd - s0.upd) as f64 / ((att1 - att0).max(1)) as f64,
    })
}

pub struct Watch {
    /// Deliveries per second without watchers and with them.
    pub bare: f64,
    pub watched: f64,
    /// Attempt recorded (its end) -> event at a watcher, seconds.
    pub latencies: Vec<f64>,
    pub events: u64,
}

/// What a benchmark watcher reads of each event: the attempt's start and
/// response time, for the latency. prost skips the rest (the log, the
/// attempt's other fields) without building it: the watchers share the two
/// cores with the server they measure, and decoding whole events cost them
/// about a tenth of a core at 4,000 deliveries/s to 10 watchers.
#[derive(Clone, PartialEq, prost::Message)]
struct WatchedEvent {
    #[prost(message, optional, tag = "3")]
    attempt: Option<WatchedAttempt>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WatchedAttempt {
    #[prost(message, optional, tag = "4")]
    created_at: Option<pbjson_types::Timestamp>,
    #[prost(int64, tag = "8")]
    response_time_ms: i64,
}

/// Opens `watchers` WatchWebhookLogs streams on `org`; each collects its
/// events' latencies until `stop`.
async fn open_watchers(
    app: &Hookpost,
    org: &str,
    watchers: usize,
    stop: &CancellationToken,
) -> anyhow::Result<JoinSet<Vec<f64>>> {
    use futures_util::StreamExt;
    let mut tasks = JoinSet::new();
    for _ in 0..watchers {
        let channel = tonic::transport::Channel::from_shared(app.base_url())?.connect().await?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await?;
        let mut req =
            tonic::Request::new(pb::WatchWebhookLogsRequest { organization_id: org.to_owned(), ..Default::default() });
        req.metadata_mut().insert("authorization", format!("Bearer {}", app.key).parse()?);
        let path = axum::http::uri::PathAndQuery::from_static("/hookpost.v1.WebhookService/WatchWebhookLogs");
        let codec = tonic_prost::ProstCodec::<pb::WatchWebhookLogsRequest, WatchedEvent>::default();
        let mut stream = grpc.server_streaming(req, path, codec).await?.into_inner();
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut lat = Vec::new();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return lat,
                    m = stream.next() => match m {
                        Some(Ok(e)) => {
                            let now = chrono::Utc::now();
                            if let Some(a) = e.attempt
                                && let Some(t) = a.created_at
                                && let Ok(at) = chrono::DateTime::<chrono::Utc>::try_from(t)
                            {
                                let done = at + chrono::TimeDelta::milliseconds(a.response_time_ms);
                                lat.push((now - done).num_microseconds().unwrap_or(0) as f64 / 1e6);
                            }
                        }
                        _ => return lat,
                    },
                }
            }
        });
    }
    Ok(tasks)
}

/// Timed rounds of the watch scenario (bare and watched phases each): even,
/// so that each phase goes first as often as the other.
const WATCH_ROUNDS: usize = 4;

/// Delivery at full speed (`n` webhooks to one endpoint, dispatch
/// concurrency `concurrency`), without watchers and with `watchers` open
/// WatchWebhookLogs streams on the organization, [`WATCH_ROUNDS`] times,
/// after one untimed run. Timed, the new process's first run was about 8 %
/// slower than the same run again (two runs without watchers), so the bare
/// phase, always first, flattered the watchers; and the phases alternate
/// which goes first, so that drift within the run counts against neither.
/// Latency is measured from the end of each attempt (its start plus its
/// response time, as recorded) to the event's arrival.
pub async fn watch(
    admin: &str,
    db_name: &str,
    n: usize,
    watchers: usize,
    concurrency: usize,
    dir: &Path,
) -> anyhow::Result<Watch> {
    let db = create_database(admin, db_name).await?;
    let sink = Sink::start(dir, "sink-watch", &[]).await?;
    let app = Hookpost::start(&db, dir, "watch", &["--max-watch-streams-per-key", "64"]).await?;
    let org = Uuid::new_v4().to_string();
    let endpoint = create_endpoint(&app, &org, sink.url("w"), None).await?;
    let (mut bare, mut watched, mut latencies, mut events) = (Vec::new(), Vec::new(), Vec::new(), 0u64);
    let mut seen = 0u64;
    let to_one = || to_endpoints(org.clone(), Some(endpoint.clone()));
    dispatch_and_drain(&app, &sink, concurrency, n, 1, to_one(), &mut seen).await?;
    let pool = PgPool::connect(&db).await?;
    // Every phase ends the same way: nothing pending, then a second for the
    // tails to catch up with the last attempts (and for a phase's last
    // records to land before the next phase starts).
    let settle = || async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_requests WHERE status = 'pending'")
                .fetch_one(&pool)
                .await?;
            if pending == 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        anyhow::Ok(())
    };
    // CPU per delivery (µs) of the server, Postgres and this process (the
    // dispatcher and the watchers), per phase, through its settling: the
    // tails' catching up is the watchers' cost too.
    let (mut cpu_bare, mut cpu_watched) = (Vec::new(), Vec::new());
    let me = std::process::id();
    let cpu_per_delivery = |a: &CpuSnapshot, a_me: f64| {
        let (server, pg) = CpuSnapshot::take(app.proc.pid).since(a);
        let per = |secs: f64| secs * 1e6 / n as f64;
        [per(server), per(pg), per(cpu_secs(me) - a_me)]
    };
    for round in 0..WATCH_ROUNDS {
        for with_watchers in [round % 2 == 1, round % 2 == 0] {
            let (cpu0, me0) = (CpuSnapshot::take(app.proc.pid), cpu_secs(me));
            let stop = CancellationToken::new();
            let tasks = match with_watchers {
                true => Some(open_watchers(&app, &org, watchers, &stop).await?),
                false => None,
            };
            let rate = dispatch_and_drain(&app, &sink, concurrency, n, 1, to_one(), &mut seen).await?;
            settle().await?;
            let cpu = cpu_per_delivery(&cpu0, me0);
            let Some(mut tasks) = tasks else {
                bare.push(rate);
                cpu_bare.push(cpu);
                continue;
            };
            watched.push(rate);
            cpu_watched.push(cpu);
            stop.cancel();
            let want = (n * watchers) as u64;
            let mut got = 0u64;
            while let Some(lat) = tasks.join_next().await {
                let lat = lat?;
                got += lat.len() as u64;
                latencies.extend(lat);
            }
            events += got;
            if got < want {
                eprintln!("watch: {got} events of {want} expected arrived");
            }
        }
    }
    eprintln!("watch: deliveries/s by round, without watchers {bare:.0?}, with {watched:.0?}");
    let med = |v: &[[f64; 3]], i: usize| median(&v.iter().map(|c| c[i]).collect::<Vec<_>>());
    eprintln!(
        "watch: CPU per delivery (server / Postgres / bench process), without watchers {:.0} / {:.0} / {:.0} µs, \
         with {:.0} / {:.0} / {:.0} µs",
        med(&cpu_bare, 0),
        med(&cpu_bare, 1),
        med(&cpu_bare, 2),
        med(&cpu_watched, 0),
        med(&cpu_watched, 1),
        med(&cpu_watched, 2)
    );
    pool.close().await;
    app.stop().await;
    sink.proc.stop().await;
    drop_database(admin, db_name).await;
    Ok(Watch { bare: median(&bare), watched: median(&watched), latencies, events })
}

pub struct Scale {
    pub replicas: usize,
    /// Deliveries per second, first arrival at the sink to the last.
    pub per_s: f64,
    /// Most requests open at the sink at once (cap × replicas at most).
    pub max_open: u64,
    /// Attempts each replica made (its /metrics).
    pub per_replica: Vec<u64>,
    /// Requests at the sink, and distinct webhook-ids among them.
    pub hits: u64,
    pub distinct: usize,
    /// Attempt rows; (request, attempt number) pairs recorded more than once;
    /// deliveries not succeeded at exactly one attempt.
    pub attempts: i64,
    pub duplicate_attempts: i64,
    pub not_once: i64,
}

/// Issue 17, item 5: `replicas` delivering `hookpost serve` processes on one
/// database and an API-only one that takes the Dispatch calls; `n` webhooks
/// to one endpoint whose `max_in_flight` is `cap` (a per-process cap, so each
/// replica has its own), at a sink that answers after `delay_ms`. The
/// delivering replicas run before the first Dispatch (they are woken by the
/// API replica's announcements), so none starts late; deliveries/s from the
/// first arrival to the last. Then every arrival and every attempt row is
/// counted.
pub async fn scale(
    admin: &str,
    db_name: &str,
    n: usize,
    replicas: usize,
    cap: u32,
    delay_ms: u64,
    dir: &Path,
) -> anyhow::Result<Scale> {
    let db = create_database(admin, db_name).await?;
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&db).await?;
    let sink =
        Sink::start(dir, &format!("sink-scale-{replicas}"), &["--delay-ms", &delay_ms.to_string(), "--record"]).await?;
    let small_pool = ["--db-pool-size", "4"];
    let api =
        Hookpost::start(&db, dir, &format!("api-scale-{replicas}"), &[&small_pool[..], &["--no-delivery"]].concat())
            .await?;
    let org = Uuid::new_v4().to_string();
    let policy = pb::DeliveryPolicy { max_in_flight: Some(cap), ..Default::default() };
    let endpoint = create_endpoint(&api, &org, sink.url("scale"), Some(policy)).await?;
    // After the API replica, which created the shared data directory's key.
    let names: Vec<String> = (0..replicas).map(|i| format!("scale-{replicas}-{i}")).collect();
    let workers =
        futures_util::future::try_join_all(names.iter().map(|name| Hookpost::start(&db, dir, name, &small_pool)))
            .await?;
    let base = api.base_url();
    let load = dispatch_load(&base, &api.key, 32, Load::Count(n), false, to_endpoints(org, Some(endpoint)));
    let first = sink.wait_for(1, Duration::from_secs(60));
    let (dispatched, first) = tokio::try_join!(load, first)?;
    let last = sink.wait_for(n as u64, Duration::from_secs(600)).await?;
    wait_settled(&pool, Duration::from_secs(120)).await?;
    anyhow::ensure!(dispatched.0 == n as u64, "{} of {n} dispatched", dispatched.0);
    let per_s = (n as f64 - 1.0) / (last - first).as_secs_f64();

    let mut per_replica = Vec::new();
    for w in &workers {
        per_replica.push(attempts_made(&w.base_url()).await?);
    }
    let stats = sink.stats().await?;
    let distinct = sink.arrivals().await?.len();
    let (attempts, duplicate_attempts, not_once): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM webhook_attempts), \
           (SELECT count(*) FROM (SELECT 1 FROM webhook_attempts GROUP BY request_pk, attempt_number \
              HAVING count(*) > 1) d), \
           (SELECT count(*) FROM webhook_requests r WHERE status <> 'succeeded' OR attempt_count <> 1 \
              OR (SELECT count(*) FROM webhook_attempts a WHERE a.request_pk = r.id) <> 1)",
    )
    .fetch_one(&pool)
    .await?;
    for w in workers {
        w.stop().await;
    }
    api.stop().await;
    sink.proc.stop().await;
    pool.close().await;
    drop_database(admin, db_name).await;
    Ok(Scale {
        replicas,
        per_s,
        max_open: stats.max_open,
        per_replica,
        hits: stats.requests,
        distinct,
        attempts,
        duplicate_attempts,
        not_once,
    })
}

/// Attempts a `hookpost serve` made since it started (its /metrics).
async fn attempts_made(base: &str) -> anyhow::Result<u64> {
    let text = reqwest::get(format!("{base}/metrics")).await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("hookpost_attempts_total{"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum::<f64>() as u64)
}
