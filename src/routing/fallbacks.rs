//! Which `[[fallback]]` rule covers a repository, and what a rule's template names for a tag,
//! resolved against the routing table so that a fallback reference routes like a client's
//! request would.

use super::{Route, Router};
use crate::config::{expand_template, FallbackConfig};
use crate::oci::reference::split_reference;
use crate::oci::{Platform, RepoName, Tag};

/// One `[[fallback]]` rule, resolved against the routing table.
#[derive(Debug, Clone)]
pub struct Rule {
    /// As written in the config, for messages.
    pub repository: String,
    upstream: usize,
    /// The repository (or, with `wildcard`, the prefix) as the upstream names it.
    path: String,
    wildcard: bool,
    /// In config order: the platform and the reference template that fills it.
    pub platforms: Vec<(Platform, String)>,
}

/// The configured rules, in config order.
#[derive(Debug, Clone, Default)]
pub struct Fallbacks {
    rules: Vec<Rule>,
}

impl Fallbacks {
    pub fn new(configs: &[FallbackConfig], router: &Router) -> Fallbacks {
        let rules = configs
            .iter()
            .filter_map(|f| Rule::resolve(f, router))
            .collect();
        Fallbacks { rules }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule, in config order, that covers the routed repository.
    pub fn for_route(&self, route: &Route) -> Option<&Rule> {
        let repo = route.repo.as_str();
        self.rules.iter().find(|r| {
            r.upstream == route.upstream
                && if r.wildcard {
                    repo.strip_prefix(&r.path)
                        .is_some_and(|rest| rest.starts_with('/'))
                } else {
                    repo == r.path
                }
        })
    }
}

impl Rule {
    /// Routes `registry/path` as a client would name it. A wildcard prefix is matched as
    /// written (no `library/` expansion of the prefix itself). The config was validated, so
    /// `None` means a rule that can never apply.
    fn resolve(f: &FallbackConfig, router: &Router) -> Option<Rule> {
        let probe = if f.wildcard {
            format!("{}/{}/x", f.registry, f.path)
        } else {
            format!("{}/{}", f.registry, f.path)
        };
        let route = router.route(&probe.parse::<RepoName>().ok()?, None).ok()?;
        let path = if f.wildcard {
            f.path.clone()
        } else {
            route.repo.to_string()
        };
        Some(Rule {
            repository: f.repository.clone(),
            upstream: route.upstream,
            path,
            wildcard: f.wildcard,
            platforms: f.platforms.clone(),
        })
    }
}

/// A fallback reference: where it routes, and the tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackRef {
    /// The expanded reference, as written in annotations and logs.
    pub reference: String,
    /// The upstream and repository the reference routes to.
    pub route: Route,
    /// The tag part of the expanded reference.
    pub tag: Tag,
}

impl FallbackRef {
    /// Expands `template` for the requested repository and tag and routes the result.
    pub fn expand(
        router: &Router,
        template: &str,
        route: &Route,
        tag: &Tag,
    ) -> Result<FallbackRef, String> {
        let reference = expand_template(template, route.repo.as_str(), tag.as_str());
        let (host, path, t) = split_reference(&reference)
            .ok_or_else(|| format!("{reference:?} is not registry/repo:tag"))?;
        let name: RepoName = format!("{host}/{path}")
            .parse()
            .map_err(|e| format!("{reference:?}: {e}"))?;
        let tag: Tag = t.parse().map_err(|e| format!("{reference:?}: {e}"))?;
        let route = router
            .route(&name, None)
            .map_err(|e| format!("{reference:?}: {e}"))?;
        Ok(FallbackRef {
            reference,
            route,
            tag,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn rules_and_references() {
        let c = Config::from_toml(
            r#"
[[upstream]]
name = "hub"
url = "http://h"
hosts = ["docker.io"]
default = true
[[upstream]]
name = "quay"
url = "http://q"
hosts = ["quay.io"]
[[fallback]]
repository = "docker.io/thinklab/go-hello-world"
[fallback.platforms]
"linux/s390x" = "docker.io/thinklab/go-hello-world:s390x-{tag}"
"linux/ppc64le" = "quay.io/other/{name}:{tag}-ppc64le"
[[fallback]]
repository = "docker.io/library/*"
[fallback.platforms]
"linux/arm/v7" = "docker.io/arm32v7/{name}:{tag}"
"#,
            "t",
            None,
        )
        .unwrap();
        let router = Router::new(&c.upstreams, &c.hosted);
        let fb = Fallbacks::new(&c.fallbacks, &router);
        let route = |n: &str| router.route(&n.parse().unwrap(), None).unwrap();
        let r = fb.for_route(&route("thinklab/go-hello-world")).unwrap();
        assert_eq!(r.repository, "docker.io/thinklab/go-hello-world");
        assert!(
            fb.for_route(&route("alpine")).is_some(),
            "library/* covers library/alpine"
        );
        assert!(fb.for_route(&route("thinklab/other")).is_none());
        assert!(fb
            .for_route(&route("quay.io/thinklab/go-hello-world"))
            .is_none());

        let tag: Tag = "latest".parse().unwrap();
        let f = FallbackRef::expand(
            &router,
            &r.platforms[1].1,
            &route("thinklab/go-hello-world"),
            &tag,
        )
        .unwrap();
        assert_eq!(f.reference, "quay.io/other/go-hello-world:latest-ppc64le");
        assert_eq!(f.route.upstream, 1);
        assert_eq!(f.route.repo.as_str(), "other/go-hello-world");
        assert_eq!(f.tag.as_str(), "latest-ppc64le");
        let arm = fb.for_route(&route("alpine")).unwrap();
        let f = FallbackRef::expand(
            &router,
            &arm.platforms[0].1,
            &route("alpine"),
            &"3.20".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(f.reference, "docker.io/arm32v7/alpine:3.20");
        assert_eq!(f.route.repo.as_str(), "arm32v7/alpine");
    }
}
