//! The running configuration: the current [`Registry`], replaced whole when SIGHUP reloads the
//! config file.
//!
//! Each request takes the registry current when it starts and keeps it to the end, so a reload
//! neither drops connections nor changes a response half-way. What must outlive a reload —
//! the store, fills in flight, metrics, access times — sits in [`Shared`] and is handed to
//! every new registry. A new config is applied entirely or not at all: one that does not
//! load, or changes what only a restart can change (listeners, storage), is refused and the
//! old one stays.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::http::tls::CertReloader;
use crate::registry::{Registry, Shared};

pub struct Live {
    current: ArcSwap<Registry>,
    shared: Shared,
    /// The file the config came from; `None` for the embedded default.
    path: Option<PathBuf>,
    certs: Option<Arc<CertReloader>>,
}

impl Live {
    pub fn new(registry: Arc<Registry>, shared: Shared, path: Option<PathBuf>) -> Live {
        Live {
            current: ArcSwap::new(registry),
            shared,
            path,
            certs: None,
        }
    }

    pub fn with_certs(mut self, certs: Arc<CertReloader>) -> Live {
        self.certs = Some(certs);
        self
    }

    /// The registry to answer a request with.
    pub fn registry(&self) -> Arc<Registry> {
        self.current.load_full()
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Re-reads the config file and, if it is valid and can be applied live, switches to it.
    /// Certificates are re-read either way, so SIGHUP also renews them.
    pub fn reload(&self) -> Result<(), String> {
        let outcome = self.try_reload();
        let label = if outcome.is_ok() { "ok" } else { "error" };
        self.shared
            .metrics
            .config_reloads
            .with_label_values(&[label])
            .inc();
        outcome
    }

    fn try_reload(&self) -> Result<(), String> {
        let old = self.registry();
        let Some(path) = &self.path else {
            if let Some(c) = &self.certs {
                c.reload()?;
            }
            return Ok(());
        };
        let new = Config::load(path).map_err(|e| e.to_string())?;
        restart_only_changes(&old.config, &new)?;
        let registry = Arc::new(Registry::new(new, &self.shared)?);
        if let (Some(certs), Some(files)) = (&self.certs, &registry.config.server.tls) {
            certs.reload_from(&files.cert, &files.key)?;
        }
        self.current.store(registry);
        Ok(())
    }
}

/// Refuses a config that differs from the running one where a reload cannot follow.
fn restart_only_changes(old: &Config, new: &Config) -> Result<(), String> {
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
    if old.storage != new.storage {
        changed.push("storage");
    }
    if changed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: {} changed, which needs a restart; nothing was applied",
            new.source,
            changed.join(", ")
        ))
    }
}
