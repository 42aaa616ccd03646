//! Prometheus metrics, in one registry per application (no globals, so tests
//! running many servers in one process each see their own).
//!
//! Labels are bounded: outcomes, failure categories, method and route
//! templates, status codes; never URLs or IDs.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub outcome: &'static str,
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: &'static str,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteOnly {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabels {
    /// The replica's URL without its password.
    pub replica: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// Which of the store's pools (see `store::PoolUsage`).
    pub pool: &'static str,
    pub state: &'static str,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub dispatches: Family<OutcomeLabels, Counter>,
    pub attempts: Family<AttemptLabels, Counter>,
    pub attempt_duration: Histogram,
    pub retries_scheduled: Counter,
    pub in_flight: Gauge,
    pub pending: Gauge,
    pub oldest_pending_age: Gauge<f64, AtomicU64>,
    pub purged_rows: Family<TableLabels, Counter>,
    pub grpc_requests: Family<RpcLabels, Counter>,
    pub grpc_duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
    pub http_requests: Family<RouteLabels, Counter>,
    pub http_duration: Family<RouteOnly, Histogram, fn() -> Histogram>,
    pub db_pool: Family<PoolLabels, Gauge>,
    pub read_replica_up: Family<ReplicaLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let m = Self {
            dispatches: Family::default(),
            attempts: Family::default(),
            attempt_duration: latency_histogram(),
            retries_scheduled: Counter::default(),
            in_flight: Gauge::default(),
            pending: Gauge::default(),
            oldest_pending_age: Gauge::default(),
            purged_rows: Family::default(),
            grpc_requests: Family::default(),
            grpc_duration: Family::new_with_constructor(latency_histogram),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency_histogram),
            db_pool: Family::default(),
            read_replica_up: Family::default(),
            registry: Registry::default(),
        };
        // Counters get their `_total` suffix from the encoder.
        r.register(
            "hookpost_dispatches",
            "Dispatches accepted, by outcome (stored or duplicate)",
            m.dispatches.clone(),
        );
        r.register("hookpost_attempts", "Delivery attempts, by outcome and failure category", m.attempts.clone());
        r.register("hookpost_attempt_duration_seconds", "Time of one delivery attempt", m.attempt_duration.clone());
        r.register(
            "hookpost_retries_scheduled",
            "Retries scheduled after a failed attempt",
            m.retries_scheduled.clone(),
        );
        r.register("hookpost_deliveries_in_flight", "Attempts in progress in this process", m.in_flight.clone());
        r.register("hookpost_deliveries_pending", "Webhooks not yet delivered or given up", m.pending.clone());
        r.register(
            "hookpost_oldest_pending_age_seconds",
            "Age of the oldest pending webhook",
            m.oldest_pending_age.clone(),
        );
        r.register("hookpost_purged_rows", "Rows removed by retention, by table", m.purged_rows.clone());
        r.register("hookpost_grpc_requests", "RPCs handled, by method and status code", m.grpc_requests.clone());
        r.register("hookpost_grpc_request_duration_seconds", "RPC latency, by method", m.grpc_duration.clone());
        r.register("hookpost_http_requests", "REST requests, by route template and status", m.http_requests.clone());
        r.register(
            "hookpost_http_request_duration_seconds",
            "REST latency, by route template",
            m.http_duration.clone(),
        );
        r.register("hookpost_db_pool_connections", "Database pool connections, by pool and state", m.db_pool.clone());
        r.register(
            "hookpost_read_replica_up",
            "1 while a read replica answers and serves log reads, 0 while reads go to the primary instead",
            m.read_replica_up.clone(),
        );
        Self { registry: r, ..m }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }

    pub fn observe_rpc(&self, method: &'static str, code: tonic::Code, took: Duration) {
        self.grpc_requests.get_or_create(&RpcLabels { method, code: format!("{code:?}") }).inc();
        self.grpc_duration.get_or_create(&MethodLabels { method }).observe(took.as_secs_f64());
    }

    pub fn observe_http(&self, route: &str, status: u16, took: Duration) {
        self.http_requests.get_or_create(&RouteLabels { route: route.to_owned(), status }).inc();
        self.http_duration.get_or_create(&RouteOnly { route: route.to_owned() }).observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new();
        m.dispatches.get_or_create(&OutcomeLabels { outcome: "stored" }).inc();
        m.attempts.get_or_create(&AttemptLabels { outcome: "failure", category: "timeout" }).inc();
        m.observe_rpc("Dispatch", tonic::Code::Ok, Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("hookpost_dispatches_total{outcome=\"stored\"} 1"), "{text}");
        assert!(text.contains("hookpost_attempts_total{outcome=\"failure\",category=\"timeout\"} 1"), "{text}");
        assert!(text.contains("hookpost_grpc_request_duration_seconds_bucket{"), "{text}");
    }
}
