//! Prometheus metrics, all prefixed `archway_`, owned by one collector registry per running
//! instance (so tests can run several instances in one process without clashing).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    TextEncoder,
};

/// Request latencies span a cached manifest (well under a millisecond) to a cold blob's
/// headers behind a slow upstream (tens of seconds).
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

#[derive(Clone)]
pub struct Metrics {
    collectors: prometheus::Registry,
    /// route, method, status
    pub requests: IntCounterVec,
    /// route, method
    pub request_duration: HistogramVec,
    /// kind: manifest, blob, tag
    pub cache_hits: IntCounterVec,
    /// kind: manifest, blob, tag
    pub cache_misses: IntCounterVec,
    /// source: a provenance (cache, upstream, joined)
    pub served_bytes: IntCounterVec,
    /// upstream, method, status
    pub upstream_requests: IntCounterVec,
    /// upstream
    pub upstream_duration: HistogramVec,
    /// `archway_fills_in_flight`: blob fills from upstream in progress.
    pub fills_in_flight: IntGauge,
    /// `archway_fill_waiters_total`: requests that joined a fill already in progress.
    pub fill_waiters: IntCounter,
    /// reason: digest_mismatch, size_mismatch, not_found, upstream, store (verified and
    /// served, but the store would not take it)
    pub fill_failures: IntCounterVec,
    /// `archway_stale_serves_total`: tags served stale because the upstream failed.
    pub stale_serves: IntCounter,
    /// `archway_synthesized_indexes_total`: indexes built with fallback images.
    pub synthesized: IntCounter,
    /// `archway_fallbacks_refused_total`: fallback images left out of an index.
    pub fallbacks_refused: IntCounter,
    /// `archway_cache_size_bytes`: content in the store; kept only with `storage.max_size`.
    pub cache_size: IntGauge,
    /// kind: manifest, content
    pub evictions: IntCounterVec,
    /// `archway_cache_evicted_bytes_total`: content bytes the bounded cache deleted.
    pub evicted_bytes: IntCounter,
    /// outcome: ok, error
    pub gc_runs: IntCounterVec,
    /// outcome: ok, error
    pub config_reloads: IntCounterVec,
    /// `archway_signatures_served_total`: archway's own signatures, as a `.sig` tag or a
    /// referrer.
    pub signatures_served: IntCounter,
    /// `archway_referrers_requests_total`; source: upstream_api, tag_schema, cache, synthesized
    pub referrers_requests: IntCounterVec,
    /// `archway_fill_leases_total`; outcome: owned (this replica fetched from the upstream),
    /// followed (streamed from the replica that did), taken_over (its owner stopped renewing),
    /// fallback (its owner could not be reached for a lease TTL; fetched here).
    pub fill_leases: IntCounterVec,
    /// `archway_fill_leases_held`: cluster fill leases this replica holds or is releasing.
    pub fill_leases_held: IntGauge,
    /// `archway_peer_bytes_total`: blob bytes received from other replicas' fills.
    pub peer_bytes: IntCounter,
    /// `archway_blob_redirects_total`: cached blobs answered by a redirect to the object store.
    pub blob_redirects: IntCounter,
    /// `archway_upstream_ratelimit_remaining{upstream}`: pulls left, as the upstream announced.
    pub upstream_ratelimit_remaining: IntGaugeVec,
    /// `archway_upstream_realm_refused_total{upstream}`: token requests made anonymously
    /// because the realm an upstream named may not receive its credentials.
    pub upstream_realm_refused: IntCounterVec,
    /// `archway_connections_open`: client connections on the registry listener now.
    pub connections_open: IntGauge,
    /// `archway_prewarm_bytes_total`: blob bytes fetched by prewarming.
    pub prewarm_bytes: IntCounter,
    /// `archway_sendfile_bytes_total`: response bytes the kernel sent from cache files
    /// with `sendfile(2)`, never copied through archway.
    pub sendfile_bytes: IntCounter,
}

/// The `kind` of cache hits and misses.
const KINDS: &[&str] = &["manifest", "blob", "tag"];
/// The `outcome` of collections and reloads.
const OUTCOMES: &[&str] = &["ok", "error"];

/// Registers each metric as it is made. The names and labels are constants of this file,
/// so a failure is a bug caught by the first test that builds `Metrics`.
struct Builder(prometheus::Registry);

impl Builder {
    fn register<C: prometheus::core::Collector + Clone + 'static>(
        &self,
        name: &str,
        c: prometheus::Result<C>,
    ) -> C {
        let c = c.unwrap_or_else(|e| panic!("metric {name}: {e}"));
        if let Err(e) = self.0.register(Box::new(c.clone())) {
            panic!("metric {name}: {e}");
        }
        c
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(name, IntCounter::new(name, help))
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(name, IntCounterVec::new(Opts::new(name, help), labels))
    }

    /// A family of one label whose values are all known: each series is there at 0 from
    /// the start, so dashboards and alerts (rates, absent()) see it before its first event.
    fn known(&self, name: &str, help: &str, label: &str, values: &[&str]) -> IntCounterVec {
        let c = self.counters(name, help, &[label]);
        for v in values {
            c.with_label_values(&[v]);
        }
        c
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(name, IntGauge::new(name, help))
    }

    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(name, IntGaugeVec::new(Opts::new(name, help), labels))
    }

    fn histograms(&self, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        self.register(name, HistogramVec::new(opts, labels))
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let collectors = prometheus::Registry::new_custom(Some("archway".into()), None)
            .unwrap_or_else(|_| prometheus::Registry::new());
        let b = Builder(collectors.clone());
        Metrics {
            requests: b.counters("requests_total", "Registry API requests answered.", &["route", "method", "status"]),
            request_duration: b.histograms(
                "request_duration_seconds",
                "Time to answer a registry API request (headers; bodies stream after).",
                &["route", "method"],
            ),
            cache_hits: b.known("cache_hits_total", "Served from cache.", "kind", KINDS),
            cache_misses: b.known("cache_misses_total", "Not in cache; fetched from upstream.", "kind", KINDS),
            served_bytes: b.known("served_bytes_total", "Blob bytes sent to clients.", "source", &["cache", "upstream", "joined", "hosted"]),
            upstream_requests: b.counters(
                "upstream_requests_total",
                "Requests sent to upstream registries.",
                &["upstream", "method", "status"],
            ),
            upstream_duration: b.histograms(
                "upstream_request_duration_seconds",
                "Time to upstream response headers.",
                &["upstream"],
            ),
            fills_in_flight: b.gauge(
                "fills_in_flight",
                "Blob fills from upstream in progress (each is one upstream GET).",
            ),
            fill_waiters: b.counter(
                "fill_waiters_total",
                "Requests that joined a blob fill already in progress instead of fetching again.",
            ),
            fill_failures: b.known("fill_failures_total", "Blob fills that cached nothing.", "reason", &["digest_mismatch", "size_mismatch", "not_found", "upstream", "store"]),
            stale_serves: b.counter(
                "stale_serves_total",
                "Tags served from the last known manifest because the upstream failed.",
            ),
            synthesized: b.counter(
                "synthesized_indexes_total",
                "Indexes synthesized from an upstream index plus fallback images.",
            ),
            fallbacks_refused: b.counter(
                "fallbacks_refused_total",
                "Fallback images left out: missing upstream, or config architecture mismatch.",
            ),
            cache_size: b.gauge(
                "cache_size_bytes",
                "Bytes of content (blobs and manifests) in the object store: the last collection's count plus this replica's writes since (only kept when storage.max_size is set).",
            ),
            evictions: b.known(
                "cache_evictions_total",
                "Evicted by the bounded cache: manifests unlinked from a repository, and content objects deleted.",
                "kind",
                &["manifest", "content"],
            ),
            evicted_bytes: b.counter("cache_evicted_bytes_total", "Bytes of content deleted by the bounded cache."),
            gc_runs: b.known("gc_runs_total", "Bounded-cache collections run by this replica.", "outcome", OUTCOMES),
            config_reloads: b.known(
                "config_reloads_total",
                "Configuration reloads on SIGHUP, applied (ok) or refused (error).",
                "outcome",
                OUTCOMES,
            ),
            signatures_served: b.counter(
                "signatures_served_total",
                "Signatures archway made of what it synthesized, served as a .sig tag or a referrer.",
            ),
            referrers_requests: b.known(
                "referrers_requests_total",
                "Referrers listings answered, by where the list came from.",
                "source",
                &["upstream_api", "tag_schema", "cache", "synthesized"],
            ),
            fill_leases: b.known(
                "fill_leases_total",
                "Cluster fills of cold blobs, by how this replica took part.",
                "outcome",
                &["owned", "followed", "taken_over", "fallback"],
            ),
            fill_leases_held: b.gauge(
                "fill_leases_held",
                "Cluster fill leases this replica holds, or has yet to release.",
            ),
            peer_bytes: b.counter(
                "peer_bytes_total",
                "Blob bytes received from the fills of other replicas.",
            ),
            blob_redirects: b.counter(
                "blob_redirects_total",
                "Cached blobs answered by a redirect to a presigned object-store URL.",
            ),
            upstream_ratelimit_remaining: b.gauges(
                "upstream_ratelimit_remaining",
                "Pulls left in the upstream's rate-limit window, as it last announced.",
                &["upstream"],
            ),
            upstream_realm_refused: b.counters(
                "upstream_realm_refused_total",
                "Token requests sent without credentials: the realm the upstream named may not receive them.",
                &["upstream"],
            ),
            connections_open: b.gauge(
                "connections_open",
                "Client connections open on the registry listener (at most server.max_connections).",
            ),
            prewarm_bytes: b.counter(
                "prewarm_bytes_total",
                "Blob bytes fetched for cluster platforms no client asked for yet.",
            ),
            sendfile_bytes: b.counter(
                "sendfile_bytes_total",
                "Response bytes sent from cache files with sendfile(2), on plain-HTTP connections.",
            ),
            collectors,
        }
    }

    /// `self`, with the series of upstream `name` that have no other label there at 0.
    pub fn for_upstream(self, name: &str) -> Metrics {
        self.upstream_realm_refused.with_label_values(&[name]);
        self.upstream_duration.with_label_values(&[name]);
        self
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.collectors.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// One on a gauge of things in progress (connections open, fills, leases held) for as long as
/// it lives: taken back when its holder ends, also when a task holding it is dropped
/// unfinished at shutdown.
pub struct InFlight(IntGauge);

impl InFlight {
    pub fn new(gauge: &IntGauge) -> InFlight {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed_under_its_name() {
        let m = Metrics::new();
        m.fills_in_flight.set(2);
        m.cache_hits.with_label_values(&["blob"]).inc();
        let text = m.render();
        assert!(text.contains("archway_fills_in_flight 2"), "{text}");
        assert!(
            text.contains("archway_cache_hits_total{kind=\"blob\"} 1"),
            "{text}"
        );
        // Labelled families are there before their first event.
        for series in [
            "archway_cache_misses_total{kind=\"tag\"} 0",
            "archway_served_bytes_total{source=\"upstream\"} 0",
            "archway_fill_failures_total{reason=\"digest_mismatch\"} 0",
            "archway_config_reloads_total{outcome=\"error\"} 0",
            "archway_fill_leases_total{outcome=\"taken_over\"} 0",
            "archway_referrers_requests_total{source=\"tag_schema\"} 0",
            "archway_cache_evictions_total{kind=\"content\"} 0",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
        // Two instances in one process do not clash.
        let _again = Metrics::new();
    }
}
