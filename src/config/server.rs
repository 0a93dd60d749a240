//! `[server]`: the registry listener, its TLS certificate, and how long shutdown waits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::values::{self, Errors};

const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5000);
/// What orchestrators allow before SIGKILL is usually 30-40 s (40 s in deploy/).
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    listen: Option<String>,
    shutdown_grace: Option<String>,
    tls: Option<RawTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The registry API listener. Port 0 picks a free port (logged at start-up).
    pub listen: SocketAddr,
    /// TLS on the registry listener: certificate chain and key (PEM), re-read on SIGHUP.
    pub tls: Option<TlsFiles>,
    /// After SIGTERM, how long in-flight responses and then blob fills get to finish.
    pub shutdown_grace: Duration,
}

/// A certificate chain and its private key, both PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// `server.tls.cert`: the certificate chain; a relative path is from the config's directory.
    pub cert: PathBuf,
    /// `server.tls.key`: the private key for that chain.
    pub key: PathBuf,
}

pub(super) fn validate(raw: RawServer, base: Option<&Path>, errs: &mut Errors) -> ServerConfig {
    let listen = match raw.listen.as_deref() {
        None => DEFAULT_LISTEN,
        Some(s) => values::address(errs, "server.listen", s).unwrap_or(DEFAULT_LISTEN),
    };
    let shutdown_grace = values::duration(
        errs,
        "server.shutdown_grace",
        raw.shutdown_grace.as_deref(),
        DEFAULT_SHUTDOWN_GRACE,
    );
    let tls = raw.tls.and_then(|t| {
        let (Some(cert), Some(key)) = (t.cert, t.key) else {
            errs.push("server.tls", "needs both cert and key");
            return None;
        };
        let files = TlsFiles {
            cert: values::resolve(base, &cert),
            key: values::resolve(base, &key),
        };
        // Read now, so a bad certificate stops the start-up instead of every handshake.
        match crate::tls::load_certified_key(&files.cert, &files.key) {
            Ok(_) => Some(files),
            Err(e) => {
                errs.push("server.tls", crate::causes::Chain(&e).to_string());
                None
            }
        }
    });
    ServerConfig {
        listen,
        tls,
        shutdown_grace,
    }
}
