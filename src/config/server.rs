//! `[server]`: the registry listener, its TLS certificate, what one client may hold of it
//! (head, body and idle deadlines, head size, connections), and how long shutdown waits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::values::{self, Errors};

const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5000);
/// What orchestrators allow before SIGKILL is usually 30-40 s (40 s in deploy/).
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// nginx's `client_body_timeout`: a pause this long between two reads of a body.
const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_MAX_HEADER_BYTES: u64 = 32 * 1024;
/// hyper cannot read with a smaller buffer (and no client needs less).
const MIN_MAX_HEADER_BYTES: u64 = 8 * 1024;
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    listen: Option<String>,
    shutdown_grace: Option<String>,
    header_timeout: Option<String>,
    idle_timeout: Option<String>,
    body_timeout: Option<String>,
    max_header_bytes: Option<String>,
    max_connections: Option<usize>,
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
    /// A request head must arrive whole within this of its first byte.
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// A request body (a push) that sends nothing for this long is answered 408 and its
    /// connection closed: a stalled chunk would otherwise hold its upload's lock for good.
    pub body_timeout: Duration,
    /// Request heads (HTTP/1 head, HTTP/2 header list) over this get 431.
    pub max_header_bytes: usize,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
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
    let positive = |errs: &mut Errors, key: &str, v: Option<&str>, default: Duration| {
        let d = values::duration(errs, key, v, default);
        if d.is_zero() {
            errs.push(key, "must be more than 0");
            return default;
        }
        d
    };
    let header_timeout = positive(
        errs,
        "server.header_timeout",
        raw.header_timeout.as_deref(),
        DEFAULT_HEADER_TIMEOUT,
    );
    let idle_timeout = positive(
        errs,
        "server.idle_timeout",
        raw.idle_timeout.as_deref(),
        DEFAULT_IDLE_TIMEOUT,
    );
    let body_timeout = positive(
        errs,
        "server.body_timeout",
        raw.body_timeout.as_deref(),
        DEFAULT_BODY_TIMEOUT,
    );
    let max_header_bytes = match values::size(
        errs,
        "server.max_header_bytes",
        raw.max_header_bytes.as_deref(),
    ) {
        Some(n) if n < MIN_MAX_HEADER_BYTES => {
            errs.push("server.max_header_bytes", "must be at least 8KiB");
            DEFAULT_MAX_HEADER_BYTES
        }
        Some(n) if n > u32::MAX as u64 => {
            errs.push("server.max_header_bytes", "must be under 4GiB");
            DEFAULT_MAX_HEADER_BYTES
        }
        Some(n) => n,
        None => DEFAULT_MAX_HEADER_BYTES,
    } as usize;
    let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        errs.push("server.max_connections", "must be at least 1");
    }
    ServerConfig {
        listen,
        tls,
        shutdown_grace,
        header_timeout,
        idle_timeout,
        body_timeout,
        max_header_bytes,
        max_connections: max_connections.max(1),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const UP: &str =
        "[[upstream]]\nname = \"up\"\nurl = \"http://127.0.0.1:1\"\nhosts = [\"up.test\"]\n";

    fn errors(server: &str) -> Vec<String> {
        match Config::from_toml(&format!("[server]\n{server}\n{UP}"), "t.toml", None) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.key, e.reason))
                .collect(),
        }
    }

    #[test]
    fn deadlines_default_and_each_bad_one_is_named() {
        let c = Config::from_toml(UP, "t.toml", None).unwrap().server;
        let secs = |d: std::time::Duration| d.as_secs();
        assert_eq!(
            (
                secs(c.header_timeout),
                secs(c.idle_timeout),
                secs(c.body_timeout)
            ),
            (10, 60, 60)
        );
        for key in ["header_timeout", "idle_timeout", "body_timeout"] {
            let e = errors(&format!("{key} = \"0s\""));
            assert_eq!(e, [format!("server.{key}: must be more than 0")]);
            let e = errors(&format!("{key} = \"soon\""));
            assert!(
                e.len() == 1 && e[0].starts_with(&format!("server.{key}: ")),
                "{e:?}"
            );
        }
    }
}
