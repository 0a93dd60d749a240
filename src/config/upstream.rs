//! `[[upstream]]`: the registries archway mirrors, how requests route to them, and how
//! archway connects and authenticates to each.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::rules::{RepoPattern, RepoRules};
use super::values::{self, Errors};
use crate::oci::RepoName;

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_RETRIES: u32 = 3;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    name: Option<String>,
    url: Option<String>,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    default: bool,
    username: Option<String>,
    password_file: Option<String>,
    ca_file: Option<String>,
    #[serde(default)]
    insecure_skip_verify: bool,
    connect_timeout: Option<String>,
    read_timeout: Option<String>,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    min_remaining: u64,
    #[serde(default)]
    token_realms: Vec<String>,
    retries: Option<u32>,
}

#[derive(Clone)]
pub struct UpstreamConfig {
    /// One lower-case name component: the upstream's key in the store and a path prefix.
    pub name: String,
    /// Base URL of the registry (`https://registry-1.docker.io`).
    pub url: Url,
    /// Registry host names this upstream answers for (`?ns=` and path prefix).
    pub hosts: Vec<String>,
    /// Whether names without a registry prefix go here.
    pub default: bool,
    /// `username`: with `password`, sent as Basic auth or to the upstream's token endpoint.
    pub username: Option<String>,
    /// Read from `password_file` at load time; never printed.
    pub password: Option<String>,
    /// Extra CA certificates to trust (PEM), read from `ca_file`.
    pub ca_pem: Option<Vec<u8>>,
    /// `insecure_skip_verify`: accept the upstream's TLS certificate without verifying it.
    pub insecure_skip_verify: bool,
    /// TCP and TLS connect timeout.
    pub connect_timeout: Duration,
    /// A transfer that sends nothing for this long fails.
    pub read_timeout: Duration,
    /// `allow` and `deny`: which repositories may be served from this upstream.
    pub rules: RepoRules,
    /// Below this many pulls left in the upstream's rate-limit window, expired tags are served
    /// from the cache and prewarming pauses; 0: off.
    pub min_remaining: u64,
    /// Token realms (scheme, host and port) that may receive the credentials besides the
    /// upstream's own host and registrable domain.
    pub token_realms: Vec<Url>,
    /// How many times an interrupted blob download is resumed from where it stopped.
    pub retries: u32,
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .field("hosts", &self.hosts)
            .field("default", &self.default)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

pub(super) fn validate(
    raw: Vec<RawUpstream>,
    base: Option<&Path>,
    errs: &mut Errors,
    seen: &mut HashMap<String, String>,
) -> Vec<UpstreamConfig> {
    if raw.is_empty() {
        errs.push(
            "upstream",
            "no [[upstream]] is configured: nothing to mirror",
        );
    }
    let mut upstreams = Vec::new();
    let mut defaults = Vec::new();
    for (i, u) in raw.into_iter().enumerate() {
        let k = |f: &str| format!("upstream[{i}].{f}");
        let name = u.name.clone().unwrap_or_default();
        if name.is_empty() {
            errs.push(k("name"), "missing");
        } else if name.contains('/') || name.parse::<RepoName>().is_err() {
            errs.push(
                k("name"),
                format!("{name:?} must be one lower-case name component (e.g. \"dockerhub\")"),
            );
        }
        let url = url(errs, &k("url"), u.url.as_deref());
        claim_routing_keys(
            errs,
            seen,
            &format!("upstream[{i}]"),
            &format!("upstream {name:?}"),
            &u.hosts,
            &name,
        );
        if u.default {
            defaults.push(name.clone());
        }
        let password = password(errs, base, &k, &u);
        let ca_pem = u
            .ca_file
            .as_deref()
            .and_then(|f| ca_file(errs, base, &k("ca_file"), f));
        let connect_timeout = values::duration(
            errs,
            &k("connect_timeout"),
            u.connect_timeout.as_deref(),
            DEFAULT_CONNECT_TIMEOUT,
        );
        let read_timeout = values::duration(
            errs,
            &k("read_timeout"),
            u.read_timeout.as_deref(),
            DEFAULT_READ_TIMEOUT,
        );
        let token_realms: Vec<Url> = u
            .token_realms
            .iter()
            .enumerate()
            .filter_map(|(j, r)| self::url(errs, &k(&format!("token_realms[{j}]")), Some(r)))
            .collect();
        let mut rules = RepoRules::default();
        for (list, raw_list, key) in [
            (&mut rules.allow, &u.allow, "allow"),
            (&mut rules.deny, &u.deny, "deny"),
        ] {
            for (j, p) in raw_list.iter().enumerate() {
                match RepoPattern::parse(p) {
                    Ok(p) => list.push(p),
                    Err(e) => errs.push(k(&format!("{key}[{j}]")), e),
                }
            }
        }
        if let Some(url) = url {
            upstreams.push(UpstreamConfig {
                name,
                url,
                hosts: u.hosts,
                default: u.default,
                username: u.username,
                password,
                ca_pem,
                insecure_skip_verify: u.insecure_skip_verify,
                connect_timeout,
                read_timeout,
                rules,
                min_remaining: u.min_remaining,
                token_realms,
                retries: u.retries.unwrap_or(DEFAULT_RETRIES),
            });
        }
    }
    if defaults.len() > 1 {
        errs.push(
            "upstream.default",
            format!(
                "more than one default upstream ({}); at most one may say default = true",
                defaults.join(", ")
            ),
        );
    }
    upstreams
}

fn url(errs: &mut Errors, key: &str, v: Option<&str>) -> Option<Url> {
    let Some(s) = v else {
        errs.push(key, "missing");
        return None;
    };
    let problem = match Url::parse(s) {
        Ok(url) if !matches!(url.scheme(), "http" | "https") => {
            format!("{s:?}: scheme must be http or https")
        }
        Ok(url) if url.host_str().is_none() => format!("{s:?} names no host"),
        Ok(url) if url.query().is_some() || url.fragment().is_some() => {
            format!("{s:?} must not have a query or fragment")
        }
        Ok(url) => return Some(url),
        Err(e) => format!("bad URL {s:?}: {e}"),
    };
    errs.push(key, problem);
    None
}

/// The name and every host are routing keys, so each may belong to one upstream or hosted
/// registry only. `at` is the table (`upstream[0]`), `owner` how messages name it
/// (`upstream "hub"`).
pub(super) fn claim_routing_keys(
    errs: &mut Errors,
    seen: &mut HashMap<String, String>,
    at: &str,
    owner: &str,
    hosts: &[String],
    name: &str,
) {
    let mut keys = vec![(name.to_string(), format!("{at}.name"), false)];
    for (j, h) in hosts.iter().enumerate() {
        let at = format!("{at}.hosts[{j}]");
        if !valid_host(h) {
            errs.push(&at, format!("{h:?} is not a lower-case host[:port]"));
        }
        keys.push((h.clone(), at, true));
    }
    for (key, at, is_host) in keys {
        if key.is_empty() {
            continue;
        }
        match seen.get(&key) {
            Some(prev) if prev != owner => errs.push(
                at,
                format!("{key:?} already routes to {prev} (duplicate host)"),
            ),
            Some(_) if is_host => errs.push(at, format!("{key:?} is listed twice")),
            Some(_) => {}
            None => {
                seen.insert(key, owner.to_string());
            }
        }
    }
}

fn password(
    errs: &mut Errors,
    base: Option<&Path>,
    k: &impl Fn(&str) -> String,
    u: &RawUpstream,
) -> Option<String> {
    match (&u.username, &u.password_file) {
        (Some(_), Some(f)) => values::read_secret(errs, base, &k("password_file"), f),
        (Some(_), None) => {
            errs.push(
                k("password_file"),
                "username is set but password_file is not",
            );
            None
        }
        (None, Some(_)) => {
            errs.push(k("username"), "password_file is set but username is not");
            None
        }
        (None, None) => None,
    }
}

fn ca_file(errs: &mut Errors, base: Option<&Path>, key: &str, f: &str) -> Option<Vec<u8>> {
    let pem = values::read_file(errs, base, key, f)?;
    match rustls_pemfile::certs(&mut &pem[..]).collect::<Result<Vec<_>, _>>() {
        Ok(c) if !c.is_empty() => Some(pem),
        Ok(_) => {
            errs.push(key, format!("{f}: no PEM certificate found"));
            None
        }
        Err(e) => {
            errs.push(key, format!("{f}: bad PEM: {e}"));
            None
        }
    }
}

pub(super) fn valid_name(name: &str) -> bool {
    !name.contains('/') && name.parse::<RepoName>().is_ok()
}

pub(super) fn valid_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (h, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    host_ok && port.is_none_or(|p| p.parse::<u16>().is_ok())
}
