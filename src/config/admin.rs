//! `[admin]`: the listener for metrics, probes and inspection, apart from the registry port.

use std::net::SocketAddr;

use serde::Deserialize;

use super::values::{self, Errors};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    listen: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where `/metrics`, `/healthz`, `/readyz` and `/inspect` are served. Port 0 picks a free
    /// port (logged at start-up).
    pub listen: SocketAddr,
}

/// `None` when the section, or its `listen`, is absent: no admin listener.
pub(super) fn validate(raw: Option<RawAdmin>, errs: &mut Errors) -> Option<AdminConfig> {
    let listen = raw?.listen?;
    values::address(errs, "admin.listen", &listen).map(|listen| AdminConfig { listen })
}
