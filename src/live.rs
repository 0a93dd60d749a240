//! The running configuration: the front requests are answered with, replaced whole when
//! SIGHUP reloads the config file.
//!
//! Each request takes the front current when it starts and keeps it to the end, so a reload
//! neither drops connections nor changes a response half-way. What must outlive a reload —
//! the store, fills in flight, metrics, access times — sits in [`Shared`] and is handed to
//! every new registry. A new config is applied entirely or not at all: one that does not
//! load, or changes what only a restart can change (listeners, storage), is refused and the
//! old one stays.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigErrors};
use crate::http::{Current, Front};
use crate::registry::{Registry, Shared};
use crate::tls::{CertReloader, TlsError};
use crate::upstream::BuildError;

pub struct Live {
    current: Current,
    shared: Shared,
    /// The file the config came from; `None` for the embedded default.
    path: Option<PathBuf>,
    /// The registry listener's certificate, when it serves TLS.
    certs: Option<Arc<CertReloader>>,
}

/// Why a reload was refused (the running configuration stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error("{file}: {} changed, which needs a restart; nothing was applied", .changed.join(", "))]
    RestartOnly {
        file: String,
        changed: Vec<&'static str>,
    },
    #[error(transparent)]
    Upstream(#[from] BuildError),
    #[error("server.tls: the certificate cannot be used")]
    Tls(#[from] TlsError),
}

impl Live {
    pub fn new(registry: Arc<Registry>, shared: Shared, path: Option<PathBuf>) -> Live {
        Live {
            current: Arc::new(ArcSwap::from_pointee(Front::new(registry))),
            shared,
            path,
            certs: None,
        }
    }

    pub fn with_certs(mut self, certs: Arc<CertReloader>) -> Live {
        self.certs = Some(certs);
        self
    }

    /// Where the HTTP front finds the current configuration.
    pub fn current(&self) -> Current {
        self.current.clone()
    }

    /// The registry of the current configuration.
    pub fn registry(&self) -> Arc<Registry> {
        self.current.load().registry.clone()
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Re-reads the config file and, if it is valid and can be applied live, switches to it.
    /// Certificates are re-read either way, so SIGHUP also renews them.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let outcome = self.try_reload();
        let label = if outcome.is_ok() { "ok" } else { "error" };
        self.shared
            .metrics
            .config_reloads
            .with_label_values(&[label])
            .inc();
        outcome
    }

    fn try_reload(&self) -> Result<(), ReloadError> {
        let old = self.registry();
        let Some(path) = &self.path else {
            if let Some(c) = &self.certs {
                c.reload()?;
            }
            return Ok(());
        };
        let new = Config::load(path)?;
        let changed = restart_only_changes(&old.config, &new);
        if !changed.is_empty() {
            return Err(ReloadError::RestartOnly {
                file: new.source,
                changed,
            });
        }
        let registry = Arc::new(Registry::new(new, &self.shared)?);
        if let (Some(certs), Some(files)) = (&self.certs, &registry.config.server.tls) {
            certs.reload_from(&files.cert, &files.key)?;
        }
        self.current.store(Arc::new(Front::new(registry)));
        Ok(())
    }
}

/// Where `new` differs from the running config in what a reload cannot follow.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.server.listen != new.server.listen {
        changed.push("server.listen");
    }
    if old.server.tls.is_some() != new.server.tls.is_some() {
        changed.push("server.tls (turning TLS on or off)");
    }
    if old.admin != new.admin {
        changed.push("admin.listen");
    }
    if old.cluster != new.cluster {
        changed.push("cluster");
    }
    if old.storage != new.storage {
        changed.push("storage");
    }
    changed
}
