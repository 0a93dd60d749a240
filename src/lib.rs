//! archway: a pull-through OCI registry mirror that gets multi-arch images right.
//!
//! Layers, each depending only on those listed before it:
//! - [`oci`]: digests, names, references, media types, manifest fields. Depends on nothing of ours.
//! - [`config`], [`error`], [`metrics`], [`range`], [`singleflight`]: shared vocabulary.
//! - [`routing`]: which upstream a repository name goes to.
//! - [`storage`]: the object-store cache, verified writes and in-flight fill de-duplication.
//! - [`gc`]: the bounded cache: access times and least-recently-used eviction by image.
//! - [`upstream`]: the client for upstream registries (auth, redirects, timeouts).
//! - [`registry`]: the mirror's services: manifests, blobs, tags, with in-memory caches.
//! - [`live`]: the running configuration, swapped whole on SIGHUP.
//! - [`http`]: the HTTP front that turns requests into registry calls.
// One audited exception: the memory map of cache files in `storage` (see its SAFETY note).
#![deny(unsafe_code)]

pub mod auth;
pub mod config;
pub mod error;
pub mod gc;
pub mod http;
pub mod live;
pub mod metrics;
pub mod multiarch;
pub mod oci;
pub mod range;
pub mod registry;
pub mod routing;
pub mod singleflight;
pub mod storage;
pub mod upstream;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use config::Config;
pub use live::Live;
pub use registry::Registry;

/// Builds the registry for `config`: opens the store and the upstream clients.
pub fn build(config: Config) -> Result<Arc<Registry>, String> {
    let shared = registry::Shared::open(&config.storage)?;
    Ok(Arc::new(Registry::new(config, &shared)?))
}

/// Binds the configured listeners and serves until `shutdown` resolves. `path` is the
/// config file that SIGHUP re-reads (`None` for the embedded default).
pub async fn run(
    config: Config,
    path: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let listen = config.server.listen;
    let shared = registry::Shared::open(&config.storage)?;
    let registry = Arc::new(Registry::new(config, &shared)?);
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("server.listen: cannot listen on {listen}: {e}"))?;
    let mut live = Live::new(registry.clone(), shared.clone(), path);
    let tls = match &registry.config.server.tls {
        None => None,
        Some(files) => {
            let certs = Arc::new(http::tls::CertReloader::new(&files.cert, &files.key)?);
            live = live.with_certs(certs.clone());
            Some(http::tls::acceptor(certs)?)
        }
    };
    let live = Arc::new(live);
    if let Some(admin) = registry.config.admin {
        let l = TcpListener::bind(admin)
            .await
            .map_err(|e| format!("admin.listen: cannot listen on {admin}: {e}"))?;
        tokio::spawn(http::admin::serve(l, live.clone()));
    }
    watch_sighup(live.clone());
    let collector = Arc::new(shared.collector(&registry.config.storage));
    let gc = &registry.config.storage.gc;
    if gc.max_size.is_some() {
        tokio::spawn(collector.clone().flush_periodically());
        if gc.min_age < 2 * gc::access::FLUSH_INTERVAL {
            tracing::warn!(
                gc_min_age = %humantime::format_duration(gc.min_age),
                "storage.gc_min_age is under twice the access-time flush interval (30s): with several replicas, an image pulled through another one moments ago may be evicted"
            );
        }
    }
    let forget = live.clone();
    tokio::spawn(
        collector
            .clone()
            .maintain(shared.metrics.clone(), move |report| {
                let live = forget.clone();
                Box::pin(async move { live.registry().forget_evicted(&report).await })
            }),
    );
    tracing::info!(
        tls = tls.is_some(),
        listen = %listener.local_addr().map_err(|e| e.to_string())?,
        storage = %registry.config.storage.url,
        max_size = registry.config.storage.gc.max_size.map(gc::human_bytes).unwrap_or_else(|| "unbounded".into()),
        upstreams = registry.upstreams.len(),
        "archway is serving"
    );
    drop(registry);
    // One grace period for everything after the signal: in-flight responses, then fills
    // (tasks of their own, so a restart does not throw away half-fetched layers). It has to
    // fit in what orchestrators wait before SIGKILL (40 s in deploy/).
    let asked = Arc::new(std::sync::OnceLock::new());
    let noted = asked.clone();
    let shutdown = async move {
        shutdown.await;
        let _ = noted.set(tokio::time::Instant::now());
    };
    http::serve(listener, live.clone(), tls, shutdown).await;
    let deadline = asked
        .get()
        .copied()
        .unwrap_or_else(tokio::time::Instant::now)
        + http::SHUTDOWN_GRACE;
    while live.registry().fills_in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    collector.flush().await;
    Ok(())
}

/// SIGHUP: reload the config (and with it the TLS certificate); a bad new config is logged
/// and the old one kept.
fn watch_sighup(live: Arc<Live>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot watch SIGHUP: configuration reload disabled");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match live.reload() {
                Ok(()) => {
                    let r = live.registry();
                    tracing::info!(
                        source = %r.config.source,
                        upstreams = r.upstreams.len(),
                        fallbacks = r.config.fallbacks.len(),
                        tls = r.config.server.tls.is_some(),
                        auth = r.config.auth.is_some(),
                        "SIGHUP: configuration reloaded"
                    )
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: configuration not reloaded; keeping the running one")
                }
            }
        }
    });
}
