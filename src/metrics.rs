//! Prometheus metrics, all prefixed `archway_`, owned by one registry per running instance
//! (so tests can run several instances in one process without clashing).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub cache_hits: IntCounterVec,
    pub cache_misses: IntCounterVec,
    pub served_bytes: IntCounterVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub fills_in_flight: IntGauge,
    pub fill_waiters: IntCounter,
    pub fill_failures: IntCounterVec,
    pub stale_serves: IntCounter,
    pub synthesized: IntCounter,
    pub fallbacks_refused: IntCounter,
    pub cache_size: IntGauge,
    pub evictions: IntCounterVec,
    pub evicted_bytes: IntCounter,
    pub gc_runs: IntCounterVec,
    pub config_reloads: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry =
            Registry::new_custom(Some("archway".into()), None).unwrap_or_else(|_| Registry::new());
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0,
                ]),
                labels,
            )
            .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            let _ = registry.register(Box::new(h.clone()));
            h
        };
        let requests = counter(
            "requests_total",
            "Registry API requests answered.",
            &["route", "method", "status"],
        );
        let request_duration = histogram(
            "request_duration_seconds",
            "Time to answer a registry API request (headers; bodies stream after).",
            &["route", "method"],
        );
        let cache_hits = counter("cache_hits_total", "Served from cache.", &["kind"]);
        let cache_misses = counter(
            "cache_misses_total",
            "Not in cache; fetched from upstream.",
            &["kind"],
        );
        let served_bytes = counter(
            "served_bytes_total",
            "Blob bytes sent to clients.",
            &["source"],
        );
        let upstream_requests = counter(
            "upstream_requests_total",
            "Requests sent to upstream registries.",
            &["upstream", "method", "status"],
        );
        let upstream_duration = histogram(
            "upstream_request_duration_seconds",
            "Time to upstream response headers.",
            &["upstream"],
        );
        let fills_in_flight = IntGauge::new(
            "fills_in_flight",
            "Blob fills from upstream in progress (each is one upstream GET).",
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        let _ = registry.register(Box::new(fills_in_flight.clone()));
        let fill_waiters = IntCounter::new(
            "fill_waiters_total",
            "Requests that joined a blob fill already in progress instead of fetching again.",
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        let _ = registry.register(Box::new(fill_waiters.clone()));
        let fill_failures = counter(
            "fill_failures_total",
            "Blob fills that cached nothing.",
            &["reason"],
        );
        let stale_serves = IntCounter::new(
            "stale_serves_total",
            "Tags served from the last known manifest because the upstream failed.",
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        let _ = registry.register(Box::new(stale_serves.clone()));
        let simple = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        let synthesized = simple(
            "synthesized_indexes_total",
            "Indexes synthesized from an upstream index plus fallback images.",
        );
        let fallbacks_refused = simple(
            "fallbacks_refused_total",
            "Fallback images left out: missing upstream, or config architecture mismatch.",
        );
        let cache_size = IntGauge::new(
            "cache_size_bytes",
            "Bytes of content (blobs and manifests) in the object store: the last collection's count plus this replica's writes since (only kept when storage.max_size is set).",
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        let _ = registry.register(Box::new(cache_size.clone()));
        let evictions = counter(
            "cache_evictions_total",
            "Evicted by the bounded cache: manifests unlinked from a repository, and content objects deleted.",
            &["kind"],
        );
        let evicted_bytes = simple(
            "cache_evicted_bytes_total",
            "Bytes of content deleted by the bounded cache.",
        );
        let gc_runs = counter(
            "gc_runs_total",
            "Bounded-cache collections run by this replica.",
            &["outcome"],
        );
        let config_reloads = counter(
            "config_reloads_total",
            "Configuration reloads on SIGHUP, applied (ok) or refused (error).",
            &["outcome"],
        );
        Metrics {
            config_reloads,
            cache_size,
            evictions,
            evicted_bytes,
            gc_runs,
            synthesized,
            fallbacks_refused,
            registry,
            requests,
            request_duration,
            cache_hits,
            cache_misses,
            served_bytes,
            upstream_requests,
            upstream_duration,
            fills_in_flight,
            fill_waiters,
            fill_failures,
            stale_serves,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
