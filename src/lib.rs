//! archway: a pull-through OCI registry mirror that gets multi-arch images right.
//!
//! Layers, each depending only on those listed before it:
//! - [`oci`]: digests, names, references, media types, manifest fields. Depends on nothing of ours.
//! - [`config`], [`error`], [`metrics`], [`range`], [`singleflight`]: shared vocabulary.
//! - [`routing`]: which upstream a repository name goes to.
//! - [`storage`]: the object-store cache, verified writes and in-flight fill de-duplication.
//! - [`upstream`]: the client for upstream registries (auth, redirects, timeouts).
//! - [`registry`]: the mirror's services: manifests, blobs, tags, with in-memory caches.
//! - [`http`]: the HTTP front that turns requests into registry calls.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod error;
pub mod http;
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
use std::sync::Arc;

use tokio::net::TcpListener;

pub use config::Config;
pub use registry::Registry;

/// Builds the registry for `config`: opens the store and the upstream clients.
pub fn build(config: Config) -> Result<Arc<Registry>, String> {
    let store = storage::Store::open(&config.storage)?;
    let registry = Registry::new(config, store, metrics::Metrics::new())?;
    Ok(Arc::new(registry))
}

/// Binds the configured listener and serves until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let listen = config.server.listen;
    let registry = build(config)?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("server.listen: cannot listen on {listen}: {e}"))?;
    if let Some(admin) = registry.config.admin {
        let l = TcpListener::bind(admin)
            .await
            .map_err(|e| format!("admin.listen: cannot listen on {admin}: {e}"))?;
        tokio::spawn(http::admin::serve(l, registry.clone()));
    }
    let tls = match &registry.config.server.tls {
        None => None,
        Some(files) => {
            let certs = Arc::new(http::tls::CertReloader::new(&files.cert, &files.key)?);
            watch_sighup(certs.clone());
            Some(http::tls::acceptor(certs)?)
        }
    };
    tracing::info!(
        tls = tls.is_some(),
        listen = %listener.local_addr().map_err(|e| e.to_string())?,
        storage = %registry.config.storage.url,
        upstreams = registry.upstreams.len(),
        "archway is serving"
    );
    http::serve(listener, registry.clone(), tls, shutdown).await;
    // Fills are tasks of their own: give the ones in flight the same grace to finish, so a
    // restart does not throw away half-fetched layers.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while registry.fills_in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Re-reads the TLS certificate on SIGHUP; a bad new one is logged and the old one kept.
fn watch_sighup(certs: Arc<http::tls::CertReloader>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot watch SIGHUP: certificate reload disabled");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match certs.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: TLS certificate not reloaded; keeping the old one")
                }
            }
        }
    });
}
