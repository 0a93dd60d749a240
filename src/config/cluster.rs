//! `[cluster]`: replicas sharing one object store agree on a single upstream fetch per blob.
//! How peers reach this replica, the secret that authenticates them to each other, and how
//! long a fill lease lasts without renewal.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::values::{self, Errors};

const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);
/// Shorter secrets are guessable; 32 random bytes is what `head -c 32 /dev/urandom` gives.
const MIN_SECRET_BYTES: usize = 16;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    advertise: Option<String>,
    secret_file: Option<String>,
    lease_ttl: Option<String>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// How peers reach this replica's registry listener.
    pub advertise: Advertise,
    /// `cluster.secret_file`, re-read only at start-up (every replica must hold the same).
    pub secret_file: PathBuf,
    /// The file's bytes (without a trailing newline); never printed.
    pub secret: Vec<u8>,
    /// A fill lease not renewed for this long is taken over by another replica.
    pub lease_ttl: Duration,
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("advertise", &self.advertise)
            .field("secret_file", &self.secret_file)
            .field("secret", &"<redacted>")
            .field("lease_ttl", &self.lease_ttl)
            .finish()
    }
}

/// `cluster.advertise`, or what stands in for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advertise {
    /// As configured: `http://10.1.2.3:5000`.
    Url(Url),
    /// Not configured: `http://<POD_IP>:<the port the registry listener bound>`, known only
    /// once it is bound (the Kubernetes downward API sets `POD_IP`).
    PodIp(IpAddr),
    /// The configured URL's host, at the port the registry listener bound: a short-lived
    /// member beside a replica (`archway warm` in a cluster), which cannot take its port.
    OnBoundPort(Url),
}

impl Advertise {
    /// Where a short-lived member beside this replica is reached: the same host, on the
    /// port it binds itself.
    pub fn beside(&self) -> Advertise {
        match self {
            Advertise::Url(u) | Advertise::OnBoundPort(u) => Advertise::OnBoundPort(u.clone()),
            Advertise::PodIp(ip) => Advertise::PodIp(*ip),
        }
    }
}

impl Advertise {
    /// The base URL peers use, given the port the registry listener bound and whether it
    /// speaks TLS.
    pub fn url(&self, port: u16, tls: bool) -> Url {
        match self {
            Advertise::Url(u) => u.clone(),
            Advertise::OnBoundPort(u) => {
                let mut u = u.clone();
                // A URL with a host has a port to set; `advertise_url` checked the host.
                let _ = u.set_port(Some(port));
                u
            }
            Advertise::PodIp(ip) => {
                let scheme = if tls { "https" } else { "http" };
                let host = match ip {
                    IpAddr::V4(v4) => v4.to_string(),
                    IpAddr::V6(v6) => format!("[{v6}]"),
                };
                Url::parse(&format!("{scheme}://{host}:{port}/"))
                    .unwrap_or_else(|e| unreachable!("an IP and a port make a URL: {e}"))
            }
        }
    }
}

pub(super) fn validate(
    raw: Option<RawCluster>,
    base: Option<&Path>,
    errs: &mut Errors,
) -> Option<ClusterConfig> {
    let raw = raw?;
    let advertise = match raw.advertise.as_deref() {
        Some(s) => advertise_url(errs, s).map(Advertise::Url),
        None => match std::env::var("POD_IP") {
            Ok(ip) => match ip.trim().parse() {
                Ok(ip) => Some(Advertise::PodIp(ip)),
                Err(_) => {
                    errs.push(
                        "cluster.advertise",
                        format!("not set, and POD_IP={ip:?} is not an IP address"),
                    );
                    None
                }
            },
            Err(_) => {
                errs.push(
                    "cluster.advertise",
                    "not set, and POD_IP is not in the environment: set the URL peers reach this replica at (e.g. \"http://10.1.2.3:5000\")",
                );
                None
            }
        },
    };
    let secret = match raw.secret_file.as_deref() {
        None => {
            errs.push(
                "cluster.secret_file",
                "missing: replicas authenticate each other with a shared secret",
            );
            None
        }
        Some(f) => values::read_file(errs, base, "cluster.secret_file", f).and_then(|b| {
            let trimmed = b.strip_suffix(b"\n").unwrap_or(&b);
            let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed).to_vec();
            if trimmed.len() < MIN_SECRET_BYTES {
                errs.push(
                    "cluster.secret_file",
                    format!(
                        "holds {} bytes; a shared secret needs at least {MIN_SECRET_BYTES} (e.g. `head -c 32 /dev/urandom | base64`)",
                        trimmed.len()
                    ),
                );
                return None;
            }
            Some((values::resolve(base, f), trimmed))
        }),
    };
    let lease_ttl = values::duration(
        errs,
        "cluster.lease_ttl",
        raw.lease_ttl.as_deref(),
        DEFAULT_LEASE_TTL,
    );
    if lease_ttl < Duration::from_secs(1) {
        errs.push("cluster.lease_ttl", "must be at least 1s");
    }
    let (advertise, (secret_file, secret)) = (advertise?, secret?);
    Some(ClusterConfig {
        advertise,
        secret_file,
        secret,
        lease_ttl,
    })
}

fn advertise_url(errs: &mut Errors, s: &str) -> Option<Url> {
    let bad = |errs: &mut Errors, why: &str| {
        errs.push(
            "cluster.advertise",
            format!("{s:?}: {why} (e.g. \"http://10.1.2.3:5000\")"),
        );
        None
    };
    let Ok(u) = Url::parse(s) else {
        return bad(errs, "not a URL");
    };
    if !matches!(u.scheme(), "http" | "https") {
        return bad(errs, "must be http:// or https://");
    }
    if u.host_str().is_none_or(str::is_empty) {
        return bad(errs, "has no host");
    }
    if u.path() != "/" || u.query().is_some() {
        return bad(errs, "must be a scheme, host and port only");
    }
    Some(u)
}

#[cfg(test)]
mod tests {
    use crate::config::{Advertise, Config, ConfigError};

    const UP: &str = "[[upstream]]\nname = \"hub\"\nurl = \"https://r.example\"\ndefault = true\n";

    fn load(storage: &str, cluster: &str) -> Result<Config, Vec<ConfigError>> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "0123456789abcdef0123\n").unwrap();
        std::fs::write(dir.path().join("short"), "tiny\n").unwrap();
        let toml = format!("{UP}[storage]\n{storage}\n[cluster]\n{cluster}\n");
        Config::from_toml(&toml, "t.toml", Some(dir.path())).map_err(|e| e.errors)
    }

    fn keys(e: Vec<ConfigError>) -> Vec<String> {
        e.iter()
            .map(|e| format!("{}: {}", e.key, e.reason))
            .collect()
    }

    #[test]
    fn a_cluster_needs_a_shared_store_an_address_and_a_secret() {
        let s3 = "url = \"s3://bucket\"";
        let c = load(
            s3,
            "advertise = \"http://10.1.2.3:5000\"\nsecret_file = \"secret\"\nlease_ttl = \"5s\"",
        )
        .unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.secret, b"0123456789abcdef0123");
        assert_eq!(cluster.lease_ttl, std::time::Duration::from_secs(5));
        assert!(
            matches!(cluster.advertise, Advertise::Url(ref u) if u.as_str() == "http://10.1.2.3:5000/")
        );
        assert!(
            !format!("{cluster:?}").contains("0123456789"),
            "the secret is never printed"
        );

        let e = keys(
            load(
                "url = \"file:///tmp/x\"",
                "advertise = \"http://10.1.2.3:5000\"\nsecret_file = \"secret\"",
            )
            .unwrap_err(),
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("cluster: replicas cannot share a file://")),
            "{e:?}"
        );
        let e = keys(
            load(
                "url = \"memory://\"",
                "advertise = \"http://10.1.2.3:5000\"\nsecret_file = \"secret\"",
            )
            .unwrap_err(),
        );
        assert!(e.iter().any(|e| e.starts_with("cluster:")), "{e:?}");
        let e = keys(load(s3, "advertise = \"http://10.1.2.3:5000\"").unwrap_err());
        assert!(
            e.iter()
                .any(|e| e.starts_with("cluster.secret_file: missing")),
            "{e:?}"
        );
        let e = keys(
            load(
                s3,
                "advertise = \"http://10.1.2.3:5000\"\nsecret_file = \"short\"",
            )
            .unwrap_err(),
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("cluster.secret_file: holds 4 bytes")),
            "{e:?}"
        );
        let e = keys(
            load(
                s3,
                "advertise = \"ftp://x\"\nsecret_file = \"secret\"\nlease_ttl = \"10ms\"",
            )
            .unwrap_err(),
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("cluster.advertise: \"ftp://x\": must be http")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("cluster.lease_ttl: must be at least 1s")),
            "{e:?}"
        );
        let e = keys(
            load(
                s3,
                "advertise = \"http://h:1/path\"\nsecret_file = \"secret\"",
            )
            .unwrap_err(),
        );
        assert!(
            e.iter().any(|e| e.contains("scheme, host and port only")),
            "{e:?}"
        );
    }

    #[test]
    fn the_pod_ip_stands_in_for_an_address_with_the_bound_port() {
        let a = Advertise::PodIp("10.0.0.7".parse().unwrap());
        assert_eq!(a.url(5000, false).as_str(), "http://10.0.0.7:5000/");
        assert_eq!(a.url(443, true).as_str(), "https://10.0.0.7/");
        let v6 = Advertise::PodIp("fd00::1".parse().unwrap());
        assert_eq!(v6.url(5000, false).as_str(), "http://[fd00::1]:5000/");
    }

    #[test]
    fn redirects_are_for_object_stores_that_presign() {
        let ok = |storage: &str| {
            let toml = format!("{UP}[storage]\n{storage}\n");
            Config::from_toml(&toml, "t.toml", None).map_err(|e| keys(e.errors))
        };
        let c = ok("url = \"s3://bucket\"\nredirect = \"10m\"\nredirect_base_url = \"https://cdn.example\"").unwrap();
        let r = c.storage.redirect.unwrap();
        assert_eq!(r.expires, std::time::Duration::from_secs(600));
        assert_eq!(r.base_url.unwrap().as_str(), "https://cdn.example/");
        assert!(ok("url = \"az://container\"\nredirect = \"1h\"")
            .unwrap()
            .storage
            .redirect
            .is_some());
        assert!(
            ok("url = \"s3://bucket\"")
                .unwrap()
                .storage
                .redirect
                .is_none(),
            "off by default"
        );
        for (storage, want) in [
            (
                "url = \"file:///tmp/x\"\nredirect = \"10m\"",
                "storage.redirect: only for s3:// and az://",
            ),
            (
                "url = \"memory://\"\nredirect = \"10m\"",
                "storage.redirect: only for s3:// and az://",
            ),
            (
                "url = \"s3://bucket\"\nredirect = \"30d\"",
                "storage.redirect: must be between 1s and 7d",
            ),
            (
                "url = \"s3://bucket\"\nredirect_base_url = \"https://cdn\"",
                "storage.redirect_base_url: set, but storage.redirect is not",
            ),
            (
                "url = \"s3://bucket\"\nredirect = \"1m\"\nredirect_base_url = \"https://cdn/x?y\"",
                "storage.redirect_base_url: \"https://cdn/x?y\"",
            ),
        ] {
            let e = ok(storage).unwrap_err();
            assert!(e.iter().any(|e| e.starts_with(want)), "{storage}: {e:?}");
        }
    }
}
