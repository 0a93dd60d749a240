//! Multi-arch resolution that needs no I/O: which fallback rule covers a repository, what a
//! rule's template names for a tag, the platform an image config declares, and the
//! deterministic bytes of a synthesized index.
//!
//! Determinism is what lets replicas with separate caches (or one after a restart) serve the
//! same index digest: the bytes depend only on the upstream index and the fallback images.

use serde_json::{json, Map, Value};

use crate::config::{expand_template, split_reference, Config};
use crate::oci::media::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX};
use crate::oci::{Platform, RepoName, Tag};
use crate::routing::{Route, Router};

/// The annotation that names the fallback reference an index entry came from.
pub const FALLBACK_ANNOTATION: &str = "io.archway.fallback.reference";

/// One `[[fallback]]` rule, resolved against the routing table.
#[derive(Debug, Clone)]
pub struct Rule {
    pub repository: String,
    upstream: usize,
    /// The repository (or, with `wildcard`, the prefix) as the upstream names it.
    path: String,
    wildcard: bool,
    pub platforms: Vec<(Platform, String)>,
}

#[derive(Debug, Clone, Default)]
pub struct Fallbacks {
    rules: Vec<Rule>,
}

impl Fallbacks {
    pub fn new(config: &Config, router: &Router) -> Fallbacks {
        let mut rules = Vec::new();
        for f in &config.fallbacks {
            // Route "registry/path" as a client would name it; a wildcard prefix is matched
            // as written (no library/ expansion of the prefix itself).
            let probe = if f.wildcard {
                format!("{}/{}/x", f.registry, f.path)
            } else {
                format!("{}/{}", f.registry, f.path)
            };
            let Ok(name) = probe.parse::<RepoName>() else {
                continue;
            };
            let Ok(route) = router.route(&name, None) else {
                continue;
            };
            let path = if f.wildcard {
                f.path.clone()
            } else {
                route.repo.to_string()
            };
            rules.push(Rule {
                repository: f.repository.clone(),
                upstream: route.upstream,
                path,
                wildcard: f.wildcard,
                platforms: f.platforms.clone(),
            });
        }
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

/// A fallback reference: where it routes, and the tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackRef {
    /// The expanded reference, as written in annotations and logs.
    pub reference: String,
    pub route: Route,
    pub tag: Tag,
}

/// Expands `template` for the requested repository and tag and routes the result.
pub fn fallback_ref(
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

/// The platform an image config declares (`os`, `architecture`, `variant`, `os.version`,
/// `os.features`), as written (not normalized), for use in an index descriptor.
pub fn config_platform(config: &[u8]) -> Option<Platform> {
    let v: Value = serde_json::from_slice(config).ok()?;
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let os = s("os").filter(|o| !o.is_empty())?;
    let architecture = s("architecture").filter(|a| !a.is_empty())?;
    Some(Platform {
        os,
        architecture,
        variant: s("variant").unwrap_or_default(),
        os_version: s("os.version").filter(|v| !v.is_empty()),
        os_features: os_features(&v),
    })
}

/// `os.features` of a config or a `platform` object: both spell it the same.
fn os_features(v: &Value) -> Vec<String> {
    v.get("os.features")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The platform of an index entry's `platform` object.
pub fn descriptor_platform(descriptor: &Value) -> Option<Platform> {
    let p = descriptor.get("platform")?;
    let s = |k: &str| {
        p.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Some(Platform {
        os: s("os"),
        architecture: s("architecture"),
        variant: s("variant"),
        os_version: p
            .get("os.version")
            .and_then(Value::as_str)
            .map(str::to_string),
        os_features: os_features(p),
    })
}

/// The `platform` object for a descriptor.
pub fn platform_json(p: &Platform) -> Value {
    let mut m = Map::new();
    m.insert("architecture".into(), json!(p.architecture));
    m.insert("os".into(), json!(p.os));
    if let Some(v) = &p.os_version {
        m.insert("os.version".into(), json!(v));
    }
    if !p.os_features.is_empty() {
        m.insert("os.features".into(), json!(p.os_features));
    }
    if !p.variant.is_empty() {
        m.insert("variant".into(), json!(p.variant));
    }
    Value::Object(m)
}

/// A descriptor for an index entry.
pub fn descriptor(
    media_type: &str,
    digest: &str,
    size: u64,
    platform: &Platform,
    fallback: Option<&str>,
) -> Value {
    let mut d = json!({
        "mediaType": media_type,
        "digest": digest,
        "size": size,
        "platform": platform_json(platform),
    });
    if let Some(r) = fallback {
        d["annotations"] = json!({ FALLBACK_ANNOTATION: r });
    }
    d
}

/// Serializes an index over `entries` (upstream entries first, then fallbacks, as given).
/// Object keys come out sorted, whatever order the upstream wrote them in, so the bytes are a
/// function of the content alone. `annotations` are the upstream index's, kept.
pub fn build_index(entries: &[Value], annotations: Option<&Value>) -> (String, Vec<u8>) {
    let docker = !entries.is_empty()
        && entries
            .iter()
            .all(|e| e.get("mediaType").and_then(Value::as_str) == Some(DOCKER_MANIFEST));
    let media_type = if docker { DOCKER_LIST } else { OCI_INDEX };
    let mut index = Map::new();
    index.insert("schemaVersion".into(), json!(2));
    index.insert("mediaType".into(), json!(media_type));
    index.insert("manifests".into(), Value::Array(entries.to_vec()));
    if let Some(a) = annotations.filter(|a| a.as_object().is_some_and(|o| !o.is_empty())) {
        index.insert("annotations".into(), a.clone());
    }
    let bytes = canonical(&Value::Object(index));
    (media_type.to_string(), bytes)
}

/// JSON with every object's keys sorted, independent of serde_json's map implementation.
fn canonical(v: &Value) -> Vec<u8> {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = Map::new();
                for k in keys {
                    out.insert(k.clone(), sort(&m[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    let sorted = sort(v);
    serde_json::to_vec(&sorted).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::media::OCI_MANIFEST;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn index_is_deterministic_ordered_and_typed() {
        // Upstream entry with keys in an unusual order and an extra field: kept, keys sorted.
        let upstream: Value = serde_json::from_str(&format!(
            r#"{{"size":10,"platform":{{"os":"linux","architecture":"amd64"}},"digest":"{D1}","mediaType":"{OCI_MANIFEST}","annotations":{{"x":"y"}}}}"#
        ))
        .unwrap();
        let fb = descriptor(
            OCI_MANIFEST,
            D2,
            20,
            &p("linux/s390x"),
            Some("docker.io/a/b:s390x-latest"),
        );
        let (mt, bytes) = build_index(&[upstream.clone(), fb.clone()], None);
        assert_eq!(mt, OCI_INDEX);
        let (_, again) = build_index(&[upstream.clone(), fb.clone()], None);
        assert_eq!(bytes, again, "same inputs, same bytes");
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["manifests"][0]["digest"], D1, "upstream entries first");
        assert_eq!(v["manifests"][0]["annotations"]["x"], "y");
        assert_eq!(v["manifests"][1]["digest"], D2);
        assert_eq!(v["manifests"][1]["platform"]["architecture"], "s390x");
        assert_eq!(
            v["manifests"][1]["annotations"][FALLBACK_ANNOTATION],
            "docker.io/a/b:s390x-latest"
        );
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with(r#"{"manifests":[{"annotations""#),
            "{text}"
        );
        // Order of entries matters: swapping them changes the bytes.
        let (_, swapped) = build_index(&[fb, upstream], None);
        assert_ne!(swapped, again);
    }

    #[test]
    fn docker_list_only_when_every_child_is_docker() {
        let d = descriptor(DOCKER_MANIFEST, D1, 1, &p("linux/amd64"), None);
        let o = descriptor(OCI_MANIFEST, D2, 1, &p("linux/arm64"), None);
        assert_eq!(build_index(&[d.clone(), d.clone()], None).0, DOCKER_LIST);
        assert_eq!(build_index(&[d, o], None).0, OCI_INDEX);
    }

    #[test]
    fn platforms_from_config_and_descriptor() {
        let cfg = br#"{"architecture":"arm","os":"linux","variant":"v7","os.features":["a"],"rootfs":{}}"#;
        let pl = config_platform(cfg).unwrap();
        assert_eq!(pl.to_string(), "linux/arm/v7");
        assert_eq!(pl.os_features, ["a"]);
        assert_eq!(
            platform_json(&pl),
            json!({"architecture":"arm","os":"linux","variant":"v7","os.features":["a"]})
        );
        assert!(config_platform(br#"{"os":"linux"}"#).is_none());
        let d = json!({"platform":{"os":"linux","architecture":"arm64","variant":"v8"}});
        assert!(p("linux/arm64").matches(&descriptor_platform(&d).unwrap()));
    }

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
        let router = Router::new(&c.upstreams);
        let fb = Fallbacks::new(&c, &router);
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
        let f = fallback_ref(
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
        let f = fallback_ref(
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
