//! archway: a pull-through OCI registry mirror that gets multi-arch images right.
//!
//! # How a request flows
//!
//! A client asks `GET /v2/library/alpine/manifests/3.20`. One of [`http`]'s front threads
//! ([`http::fronts`]) accepts the connection and serves it to its end; it takes the
//! [`http::Front`] current at that moment (a SIGHUP reload swaps in a new one for later
//! requests, see [`live`]), checks client credentials, and parses the path into a
//! validated [`oci::RepoName`] and [`oci::Reference`] before anything else sees it.
//! [`routing`] picks the upstream (`?ns=`, a registry prefix, or the default). The
//! [`registry`] services answer: `manifests` from memory when the tag is fresh, else from
//! the [`storage`] records and the [`upstream`] client; `synthesis` builds the index of a
//! repository with fallback rules; `blobs` serves the store's bytes or joins the one fill of
//! a blob that every concurrent request shares. The answer comes back with its
//! [`registry::Provenance`], which the access log and the metrics report; a failure is an
//! [`error::Error`], rendered once by [`http::errors`]. Meanwhile [`gc`] keeps a bounded
//! cache under its size.
//!
//! # Layers
//!
//! A module uses only modules of a lower rank, never one of its own rank or above; a test
//! (`layers`) reads every `crate::` path in `src/` and fails on one that points up. The
//! README's code map is this same table.
//!
//! | rank | modules | what they hold |
//! |---|---|---|
//! | 0 | `oci` `clock` `causes` `range` `singleflight` | OCI types and grammar; time; error chains; byte ranges; call merging |
//! | 1 | `tls` `signing` `metrics` `logging` | certificates; archway's signing key; Prometheus metrics; the log output |
//! | 2 | `config` | the validated TOML configuration |
//! | 3 | `upstream` | the client for upstream registries |
//! | 4 | `error` | the errors a request can end in |
//! | 5 | `routing` `storage` | which upstream serves a name; the object-store cache |
//! | 6 | `gc` `cluster` `hosted` | the bounded cache: access times, eviction; fill leases and peers across replicas; pushed repositories |
//! | 7 | `registry` | the services: manifests, blobs, links, tags, synthesis |
//! | 8 | `console` | the operator console: coverage page and JSON, warming jobs, `archway warm`'s progress |
//! | 9 | `http` | the HTTP front: its threads, server, handlers, admin listener |
//! | 10 | `live` | the running configuration, swapped on SIGHUP |
//! | 11 | `server` | start-up, serving, shutdown; the short-lived cluster member `archway warm` runs as |
//! | 12 | `fuzz` | the fuzz targets' entry points (`fuzz/`), and the replay of their corpus |
// One audited exception: the memory map of cache files in `storage` (see its SAFETY note).
#![deny(unsafe_code)]

pub mod causes;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod console;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod gc;
pub mod hosted;
pub mod http;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod oci;
pub mod range;
pub mod registry;
pub mod routing;
pub mod server;
pub mod signing;
pub mod singleflight;
pub mod storage;
pub mod tls;
pub mod upstream;

#[cfg(test)]
mod layers;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

pub use config::Config;
pub use live::Live;
pub use registry::Registry;
pub use server::{Server, StartupError};

/// Builds the registry for `config`: opens the store and the upstream clients (for the
/// commands that use the cache without serving it).
pub fn build(config: Config) -> Result<Arc<Registry>, StartupError> {
    let shared = registry::Shared::open(&config.storage)?;
    Ok(Arc::new(Registry::new(config, &shared)?))
}

/// Binds the configured listeners and serves until `shutdown` resolves. `path` is the config
/// file that SIGHUP re-reads (`None` for the embedded default).
pub async fn run(
    config: Config,
    path: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartupError> {
    Server::bind(config, path).await?.serve(shutdown).await
}
