//! Which upstream (or hosted registry) a request for a repository goes to, and under which
//! name.
//!
//! Hosted registries are routed exactly like upstreams and come after them in the table:
//! `Route::upstream` indexes upstreams first, then `[[hosted]]` entries. The rules, in order: containerd's `?ns=<host>` names the registry; else a first path
//! component naming an upstream (podman's `location = "mirror/docker.io"`) selects it and is
//! stripped; else the default upstream. Docker Hub's one-component names gain `library/`.

mod fallbacks;

use std::fmt::Write as _;

use crate::config::{HostedConfig, RepoRules, UpstreamConfig};
use crate::error::Error;
use crate::oci::RepoName;
pub use fallbacks::{FallbackRef, Fallbacks, Rule};

/// A routed request: the upstream and the repository name as that upstream knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// Index into the config's `[[upstream]]` list, then (from its length on) into the
    /// `[[hosted]]` list.
    pub upstream: usize,
    /// The repository as the upstream names it (`library/alpine`, never `docker.io/alpine`).
    pub repo: RepoName,
}

#[derive(Debug, Clone)]
pub struct Router {
    entries: Vec<Entry>,
    default: Option<usize>,
    /// How many of the entries are upstreams (the rest are hosted).
    upstreams: usize,
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    hosts: Vec<String>,
    docker_hub: bool,
    rules: RepoRules,
}

impl Entry {
    fn answers_to(&self, component: &str) -> bool {
        self.name == component || self.hosts.iter().any(|h| h == component)
    }
}

impl Router {
    pub fn new(upstreams: &[UpstreamConfig], hosted: &[HostedConfig]) -> Router {
        let entries = upstreams
            .iter()
            .map(|u| Entry {
                name: u.name.clone(),
                hosts: u.hosts.clone(),
                docker_hub: u.hosts.iter().any(|h| h == "docker.io"),
                rules: u.rules.clone(),
            })
            .chain(hosted.iter().map(|h| Entry {
                name: h.name.clone(),
                hosts: h.hosts.clone(),
                docker_hub: false,
                rules: RepoRules::default(),
            }))
            .collect();
        Router {
            entries,
            default: upstreams.iter().position(|u| u.default),
            upstreams: upstreams.len(),
        }
    }

    /// The `[[hosted]]` index of a route to a hosted registry.
    pub fn hosted(&self, route: &Route) -> Option<usize> {
        route.upstream.checked_sub(self.upstreams)
    }

    /// Routes `name`, as the client sent it, with the `ns` query parameter if any.
    pub fn route(&self, name: &RepoName, ns: Option<&str>) -> Result<Route, Error> {
        let first = name.components().next().unwrap_or_default();
        let (upstream, repo) = if let Some(ns) = ns {
            let idx = self
                .entries
                .iter()
                .position(|e| e.hosts.iter().any(|h| h.eq_ignore_ascii_case(ns)))
                .ok_or_else(|| {
                    Error::NameUnknown(format!(
                        "repository {name} is not mirrored here: no upstream is configured for registry {ns:?}"
                    ))
                })?;
            // containerd with override_path sends the namespace in the path as well.
            let repo = match name.strip_first() {
                Some(rest) if self.entries[idx].answers_to(first) => rest,
                _ => name.clone(),
            };
            (idx, repo)
        } else if let (Some(idx), Some(rest)) = (
            self.entries.iter().position(|e| e.answers_to(first)),
            name.strip_first(),
        ) {
            (idx, rest)
        } else if let Some(idx) = self.default {
            (idx, name.clone())
        } else {
            return Err(Error::NameUnknown(format!(
                "repository {name} is not mirrored here: it names no configured upstream and there is no default upstream"
            )));
        };
        let entry = &self.entries[upstream];
        let repo = if entry.docker_hub {
            repo.with_library_prefix()
        } else {
            repo
        };
        // Before anything is looked up: cached content of a denied repository is not served.
        if let Some(why) = entry.rules.refusal(repo.as_str()) {
            return Err(Error::RepositoryDenied(format!(
                "repository {repo} of upstream {}: {why}",
                entry.name
            )));
        }
        Ok(Route { upstream, repo })
    }

    /// A human-readable routing table, for `archway check-config`.
    pub fn describe(&self, upstreams: &[UpstreamConfig], hosted: &[HostedConfig]) -> String {
        let mut s = String::new();
        for (e, u) in self.entries.iter().zip(upstreams) {
            let _ = writeln!(
                s,
                "upstream {:<12} {}{}",
                e.name,
                u.url,
                if u.default { "  (default)" } else { "" }
            );
            let _ = writeln!(s, "  ?ns=       {}", e.hosts.join(", "));
            let mut prefixes = vec![e.name.clone()];
            prefixes.extend(e.hosts.iter().filter(|h| !h.contains(':')).cloned());
            let _ = writeln!(s, "  /v2/<p>/.. {}", prefixes.join(", "));
            if e.docker_hub {
                let _ = writeln!(s, "  one-component names get library/ (Docker Hub)");
            }
            if let Some(user) = &u.username {
                let _ = writeln!(s, "  credentials: user {user:?}");
            }
            for (what, list) in [("allow", &e.rules.allow), ("deny", &e.rules.deny)] {
                if !list.is_empty() {
                    let l: Vec<String> = list.iter().map(|p| p.to_string()).collect();
                    let _ = writeln!(s, "  {what:<10} {}", l.join(", "));
                }
            }
            if u.min_remaining > 0 {
                let _ = writeln!(
                    s,
                    "  rate budget: serve cached tags below {} pulls left",
                    u.min_remaining
                );
            }
        }
        for (e, h) in self.entries[self.upstreams..].iter().zip(hosted) {
            let _ = writeln!(
                s,
                "hosted   {:<12} writers {}{}",
                e.name,
                h.writers.join(", "),
                if h.delete { ", delete on" } else { "" }
            );
            if !e.hosts.is_empty() {
                let _ = writeln!(s, "  ?ns=       {}", e.hosts.join(", "));
            }
            let mut prefixes = vec![e.name.clone()];
            prefixes.extend(e.hosts.iter().filter(|h| !h.contains(':')).cloned());
            let _ = writeln!(s, "  /v2/<p>/.. {}", prefixes.join(", "));
        }
        if self.default.is_none() {
            let _ = writeln!(
                s,
                "no default upstream: names without a registry prefix get 404"
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn router() -> Router {
        let c = Config::from_toml(
            r#"
[[upstream]]
name = "dockerhub"
url = "https://registry-1.docker.io"
hosts = ["docker.io", "registry-1.docker.io"]
default = true
[[upstream]]
name = "quay"
url = "https://quay.io"
hosts = ["quay.io"]
[[upstream]]
name = "local"
url = "http://127.0.0.1:5001"
hosts = ["127.0.0.1:5001"]
"#,
            "t",
            None,
        )
        .unwrap();
        Router::new(&c.upstreams, &c.hosted)
    }

    fn r(name: &str, ns: Option<&str>) -> Result<(usize, String), String> {
        router()
            .route(&name.parse().unwrap(), ns)
            .map(|r| (r.upstream, r.repo.to_string()))
            .map_err(|e| e.code().to_string())
    }

    #[test]
    fn routing_table() {
        let ok = |u: usize, s: &str| Ok((u, s.to_string()));
        // (3) default, with Docker Hub's library/ rule
        assert_eq!(r("alpine", None), ok(0, "library/alpine"));
        assert_eq!(r("library/alpine", None), ok(0, "library/alpine"));
        assert_eq!(r("org/app", None), ok(0, "org/app"));
        // (2) path prefix by host or by name, stripped
        assert_eq!(r("docker.io/alpine", None), ok(0, "library/alpine"));
        assert_eq!(r("docker.io/library/alpine", None), ok(0, "library/alpine"));
        assert_eq!(r("quay.io/org/app", None), ok(1, "org/app"));
        assert_eq!(r("quay/org/app", None), ok(1, "org/app"));
        // quay is not Docker Hub: no library/
        assert_eq!(r("quay.io/app", None), ok(1, "app"));
        // a lone component equal to an upstream name is a repository, not a prefix
        assert_eq!(r("quay", None), ok(0, "library/quay"));
        // (1) ns wins, and a matching prefix is still stripped (override_path)
        assert_eq!(
            r("library/alpine", Some("docker.io")),
            ok(0, "library/alpine")
        );
        assert_eq!(r("org/app", Some("quay.io")), ok(1, "org/app"));
        assert_eq!(r("quay.io/org/app", Some("quay.io")), ok(1, "org/app"));
        assert_eq!(r("app", Some("127.0.0.1:5001")), ok(2, "app"));
        assert_eq!(r("x/app", Some("ghcr.io")), Err("NAME_UNKNOWN".into()));
    }

    #[test]
    fn no_default_means_name_unknown() {
        let c = Config::from_toml(
            "[[upstream]]\nname = \"quay\"\nurl = \"https://quay.io\"\nhosts = [\"quay.io\"]\n",
            "t",
            None,
        )
        .unwrap();
        let router = Router::new(&c.upstreams, &c.hosted);
        let e = router.route(&"org/app".parse().unwrap(), None).unwrap_err();
        assert_eq!(e.code(), "NAME_UNKNOWN");
        assert!(router
            .route(&"quay.io/org/app".parse().unwrap(), None)
            .is_ok());
        assert!(router
            .describe(&c.upstreams, &c.hosted)
            .contains("no default upstream"));
    }
}
