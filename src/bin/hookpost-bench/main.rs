//! The load generator behind docs/PERFORMANCE.md. Every figure is a ratio of
//! hookpost against the bare baseline that bounds it (pgbench running the same
//! SQL, a bare reqwest loop), measured in the same run, alternating rounds.
//! All traffic stays on 127.0.0.1.

mod scenarios;
mod support;

use std::time::Instant;

use clap::Parser;
use sqlx::PgPool;

use scenarios::*;
use support::*;

#[derive(Parser)]
#[command(about = "hookpost benchmarks: each figure is a ratio against its bare baseline")]
struct Args {
    /// The short run (about 2 minutes on 2 cores).
    #[arg(long)]
    quick: bool,
    /// Postgres server to create the benchmark databases on.
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    database_url: String,
    /// Scenarios to run (dispatch and deliver run together).
    #[arg(long, value_delimiter = ',', default_value = "deliver,list,details,rest,purge")]
    only: Vec<String>,
    /// Webhooks per dispatch/deliver round (default 5000, quick 2000).
    #[arg(long)]
    webhooks: Option<usize>,
    /// Rounds of hookpost and baseline, alternating (default 3, quick 2).
    #[arg(long)]
    rounds: Option<usize>,
    /// Concurrent requests / deliveries.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// hookpost's database pool (pgbench gets as many connections).
    #[arg(long, default_value_t = 16)]
    pool: u32,
    /// Store sizes for the list scenario (default 1M,10M; quick 200k,1M).
    #[arg(long, value_delimiter = ',')]
    list_rows: Option<Vec<u64>>,
    /// Rows in the day that the purge scenario removes (default 1M, quick 200k).
    #[arg(long)]
    purge_rows: Option<u64>,
    /// Latency samples per measurement (default 1000, quick 300).
    #[arg(long)]
    samples: Option<usize>,
}

struct Row {
    scenario: String,
    hookpost: f64,
    baseline: f64,
    unit: &'static str,
    note: String,
}

impl Row {
    fn new(
        scenario: impl Into<String>,
        hookpost: f64,
        baseline: f64,
        unit: &'static str,
        note: impl Into<String>,
    ) -> Self {
        Self { scenario: scenario.into(), hookpost, baseline, unit, note: note.into() }
    }
}

fn ms(v: f64) -> f64 {
    v * 1e3
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let started = Instant::now();
    let n = a.webhooks.unwrap_or(if a.quick { 2000 } else { 5000 });
    let rounds = a.rounds.unwrap_or(if a.quick { 2 } else { 3 });
    let pg_secs = if a.quick { 5 } else { 10 };
    let samples = a.samples.unwrap_or(if a.quick { 300 } else { 1000 });
    let list_rows =
        a.list_rows.clone().unwrap_or(if a.quick { vec![200_000, 1_000_000] } else { vec![1_000_000, 10_000_000] });
    let purge_rows = a.purge_rows.unwrap_or(if a.quick { 200_000 } else { 1_000_000 });
    let run = |s: &str| a.only.iter().any(|o| o == s);
    let tag = format!("hookpost_bench_{}", std::process::id());
    let tmp = std::env::temp_dir().join(&tag);
    std::fs::create_dir_all(&tmp)?;
    let receiver = BenchReceiver::start().await?;
    let mut rows: Vec<Row> = Vec::new();
    let mut databases = Vec::new();
    eprintln!("concurrency {}, pool {}, {n} webhooks x {rounds} rounds", a.concurrency, a.pool);

    if run("deliver") || run("dispatch") {
        let db = create_database(&a.database_url, &format!("{tag}_deliver")).await?;
        let pgb = create_database(&a.database_url, &format!("{tag}_pgbench")).await?;
        databases.extend([format!("{tag}_deliver"), format!("{tag}_pgbench")]);
        let (mut d, mut disp, mut wal, mut conns, mut r, mut s, mut p) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for round in 1..=rounds {
            let bare = reqwest_loop(&receiver.url, n, a.concurrency).await?;
            let got = deliver_round(&db, a.pool, a.concurrency, &receiver, n).await?;
            let sql = pgbench_deliver_sql(&pgb, a.pool, pg_secs, &tmp).await?;
            let pgd = pgbench_dispatch(&pgb, a.pool, pg_secs, &tmp)?;
            eprintln!(
                "round {round}: deliver {:.0}/s (R {bare:.0}/s, S {sql:.0}/s); dispatch {:.0}/s vs pgbench {pgd:.0}/s",
                got.deliveries_per_s, got.dispatch_per_s
            );
            d.push(got.deliveries_per_s);
            disp.push(got.dispatch_per_s);
            wal.push(got.commits_per_wal_sync);
            conns.push(got.new_connections_per_delivery);
            r.push(bare);
            s.push(sql);
            p.push(pgd);
        }
        let (r, s) = (median(&r), median(&s));
        let same = pickup_latency(&db, &receiver, true, 50).await?;
        let other = pickup_latency(&db, &receiver, false, 20).await?;
        eprintln!(
            "pickup (Dispatch answered -> webhook at the receiver, median): same replica {:.1} ms, \
             other replica {:.1} ms (poll interval 200 ms)",
            ms(same),
            ms(other)
        );
        rows.push(Row::new(
            "dispatch",
            median(&disp),
            median(&p),
            "requests/s",
            format!("pgbench, same INSERT + COMMIT, {} connections; {:.2} commits per WAL flush", a.pool, median(&wal)),
        ));
        rows.push(Row::new(
            "deliver",
            median(&d),
            1.0 / (1.0 / r + 1.0 / s),
            "deliveries/s",
            format!(
                "1/(1/R+1/S): R bare reqwest {r:.0}/s, S pgbench claim+record {s:.0}/s; {:.4} new connections/delivery",
                median(&conns)
            ),
        ));
    }

    let reads = run("list") || run("details") || run("rest");
    if reads || run("purge") {
        let db = create_database(&a.database_url, &format!("{tag}_reads")).await?;
        databases.push(format!("{tag}_reads"));
        let pool = PgPool::connect(&db).await?;
        let now = chrono::Utc::now();
        // Within today's and yesterday's partitions, which exist from start-up.
        let mut s = Seeded {
            tag: "r",
            rows: 0,
            total: *list_rows.iter().max().unwrap_or(&1),
            orgs: 100,
            from: now - chrono::TimeDelta::hours(20),
            span: chrono::TimeDelta::hours(20) - chrono::TimeDelta::minutes(1),
        };
        let mut p50_by_size = Vec::new();
        let app = start_app(&db, a.pool, a.concurrency, false).await?;
        for (i, &size) in list_rows.iter().enumerate() {
            if !reads {
                break;
            }
            let t = Instant::now();
            seed_logs(&pool, s.rows, size, &s).await?;
            eprintln!("seeded {} rows in {:.1}s", size - s.rows, t.elapsed().as_secs_f64());
            s.rows = size;
            let (mut h, mut b) = (Vec::new(), Vec::new());
            for _ in 0..2 {
                h.extend(grpc_list_latencies(&app, &s, samples / 2, None).await?);
                b.extend(pgbench_list_latencies(&db, &s, (samples / 2) as u64, &tmp)?);
            }
            let label = format!("{}k rows", size / 1000);
            p50_by_size.push(median(&h));
            if run("list") {
                rows.push(Row::new(
                    format!("list_p50 ({label})"),
                    ms(median(&h)),
                    ms(median(&b)),
                    "ms",
                    "pgbench, same SQL, random cursors",
                ));
                rows.push(Row::new(
                    format!("list_p99 ({label})"),
                    ms(percentile(&h, 0.99)),
                    ms(percentile(&b, 0.99)),
                    "ms",
                    "pgbench, same SQL, random cursors",
                ));
            }
            if i + 1 == list_rows.len() {
                if run("list") {
                    let first = grpc_list_latencies(&app, &s, samples / 2, Some(false)).await?;
                    let deep = grpc_list_latencies(&app, &s, samples / 2, Some(true)).await?;
                    rows.push(Row::new(
                        "list_deep_vs_first_page",
                        ms(median(&deep)),
                        ms(median(&first)),
                        "ms",
                        "p50 of the oldest page vs the first page",
                    ));
                    if p50_by_size.len() > 1 {
                        rows.push(Row::new(
                            format!("list_p50_{}k_vs_{}k", list_rows[list_rows.len() - 1] / 1000, list_rows[0] / 1000),
                            ms(p50_by_size[p50_by_size.len() - 1]),
                            ms(p50_by_size[0]),
                            "ms",
                            "hookpost p50 at the largest vs the smallest store",
                        ));
                    }
                }
                if run("details") {
                    let (mut h, mut b) = (Vec::new(), Vec::new());
                    for _ in 0..2 {
                        h.extend(grpc_details_latencies(&app, &pool, samples / 2).await?);
                        b.extend(pgbench_details_latencies(&db, &s, (samples / 2) as u64, &tmp)?);
                    }
                    rows.push(Row::new(
                        "details_p50",
                        ms(median(&h)),
                        ms(median(&b)),
                        "ms",
                        "pgbench, same two statements",
                    ));
                }
                if run("rest") {
                    let (mut rl, mut gl) = (Vec::new(), Vec::new());
                    for _ in 0..2 {
                        rl.extend(rest_list_latencies(&app, &s, samples / 2).await?);
                        gl.extend(grpc_list_latencies(&app, &s, samples / 2, None).await?);
                    }
                    rows.push(Row::new(
                        "rest_list_p50",
                        ms(median(&rl)),
                        ms(median(&gl)),
                        "ms",
                        "REST gateway vs gRPC, same listing",
                    ));
                    let (mut rd, mut gd) = (Vec::new(), Vec::new());
                    for _ in 0..rounds {
                        rd.push(rest_dispatch(&app, &receiver.url, n, a.concurrency).await?);
                        gd.push(grpc_dispatch(&app, &receiver.url, n, a.concurrency).await?);
                    }
                    rows.push(Row::new(
                        "rest_dispatch",
                        median(&rd),
                        median(&gd),
                        "requests/s",
                        "REST gateway vs gRPC, same Dispatch",
                    ));
                }
            }
        }
        app.shutdown().await?;
        if run("purge") {
            let f = purge_figures(&db, purge_rows, a.pool, a.concurrency, &receiver.url, n).await?;
            let label = format!("{}k rows", purge_rows / 1000);
            rows.push(Row::new(
                format!("purge_day_secs ({label})"),
                f.drop_secs,
                f.delete_secs,
                "s",
                "partition drop vs DELETE of the same rows",
            ));
            rows.push(Row::new(
                format!("purge_day_wal ({label})"),
                f.drop_wal as f64 / 1e6,
                f.delete_wal as f64 / 1e6,
                "MB of WAL",
                "partition drop vs DELETE",
            ));
            rows.push(Row::new(
                "dispatch_during_drop",
                f.dispatch_during_drop,
                f.dispatch_alone,
                "requests/s",
                "while a day's partition is dropped vs no purge",
            ));
            rows.push(Row::new(
                "dispatch_during_delete",
                f.dispatch_during_delete,
                f.dispatch_alone,
                "requests/s",
                "while the same day is DELETEd vs no purge",
            ));
        }
    }

    println!("| scenario | hookpost | baseline | unit | ratio | baseline is |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.3} | {:.3} | {} | {:.2} | {} |",
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
    for db in databases {
        drop_database(&a.database_url, &db).await;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    eprintln!("done in {:.0}s", started.elapsed().as_secs_f64());
    Ok(())
}
