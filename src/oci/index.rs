//! Image indexes as JSON: reading the platform of an entry or an image config, writing
//! descriptors, and serializing an index deterministically.
//!
//! Determinism is what lets replicas with separate caches (or one after a restart) serve the
//! same digest for an index they built: the bytes depend only on the entries.

use serde_json::{json, Map, Value};

use super::digest::Digest;
use super::media::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX};
use super::platform::Platform;

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

/// A descriptor for an index entry, with `annotations` when there are any.
pub fn descriptor(
    media_type: &str,
    digest: &Digest,
    size: u64,
    platform: &Platform,
    annotations: &[(&str, &str)],
) -> Value {
    let mut d = json!({
        "mediaType": media_type,
        "digest": digest.to_string(),
        "size": size,
        "platform": platform_json(platform),
    });
    if !annotations.is_empty() {
        let a: Map<String, Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        d["annotations"] = Value::Object(a);
    }
    d
}

/// The entries of an index, as written.
pub fn entries(index: &Value) -> &[Value] {
    index["manifests"].as_array().map_or(&[], Vec::as_slice)
}

/// Whether an index entry is attached to an image rather than one: buildx lists its
/// attestation manifests as `unknown/unknown` entries annotated with
/// `vnd.docker.reference.type`.
pub fn is_attachment(entry: &Value) -> bool {
    entry["annotations"]["vnd.docker.reference.type"].is_string()
}

/// The digest an index entry names.
pub fn entry_digest(entry: &Value) -> Result<Digest, super::DigestError> {
    entry["digest"].as_str().unwrap_or_default().parse()
}

/// The entry that best serves a client on `want`, in containerd's order of preference;
/// otherwise the platforms the index has, normalized, for the error.
pub fn select<'a>(index: &'a Value, want: &Platform) -> Result<&'a Value, Vec<Platform>> {
    let entries = entries(index);
    let platforms: Vec<Platform> = entries
        .iter()
        .map(|e| descriptor_platform(e).unwrap_or_default())
        .collect();
    match want.best_match(&platforms) {
        Some(i) => Ok(&entries[i]),
        None => Err(platforms.iter().map(Platform::normalized).collect()),
    }
}

/// The entry for exactly `platform` (compatible variants do not count).
pub fn find_exact<'a>(index: &'a Value, platform: &Platform) -> Option<&'a Value> {
    entries(index)
        .iter()
        .find(|e| descriptor_platform(e).is_some_and(|p| platform.matches(&p)))
}

/// Serializes an index over `entries`, in the order given. Object keys come out sorted,
/// whatever order the upstream wrote them in, so the bytes are a function of the content
/// alone. It is a Docker manifest list when every entry is a Docker manifest, else an OCI
/// index. `annotations` are kept (an upstream index's own).
pub fn build(entries: &[Value], annotations: Option<&Value>) -> (String, Vec<u8>) {
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
    (media_type.to_string(), canonical(&Value::Object(index)))
}

/// JSON with every object's keys sorted, independent of serde_json's map implementation.
pub(super) fn canonical(v: &Value) -> Vec<u8> {
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
    serde_json::to_vec(&sort(v)).unwrap_or_default()
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

    fn d(s: &str) -> Digest {
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
            &d(D2),
            20,
            &p("linux/s390x"),
            &[("io.example.from", "docker.io/a/b:s390x-latest")],
        );
        let (mt, bytes) = build(&[upstream.clone(), fb.clone()], None);
        assert_eq!(mt, OCI_INDEX);
        let (_, again) = build(&[upstream.clone(), fb.clone()], None);
        assert_eq!(bytes, again, "same inputs, same bytes");
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v["manifests"][0]["digest"], D1,
            "entries in the order given"
        );
        assert_eq!(v["manifests"][0]["annotations"]["x"], "y");
        assert_eq!(v["manifests"][1]["digest"], D2);
        assert_eq!(v["manifests"][1]["platform"]["architecture"], "s390x");
        assert_eq!(
            v["manifests"][1]["annotations"]["io.example.from"],
            "docker.io/a/b:s390x-latest"
        );
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with(r#"{"manifests":[{"annotations""#),
            "{text}"
        );
        // Order of entries matters: swapping them changes the bytes.
        let (_, swapped) = build(&[fb, upstream], None);
        assert_ne!(swapped, again);
    }

    #[test]
    fn docker_list_only_when_every_child_is_docker() {
        let dk = descriptor(DOCKER_MANIFEST, &d(D1), 1, &p("linux/amd64"), &[]);
        let o = descriptor(OCI_MANIFEST, &d(D2), 1, &p("linux/arm64"), &[]);
        assert_eq!(build(&[dk.clone(), dk.clone()], None).0, DOCKER_LIST);
        assert_eq!(build(&[dk, o], None).0, OCI_INDEX);
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
        let e = json!({"platform":{"os":"linux","architecture":"arm64","variant":"v8"}});
        assert!(p("linux/arm64").matches(&descriptor_platform(&e).unwrap()));
    }

    #[test]
    fn selecting_an_entry() {
        let index = json!({"manifests": [
            descriptor(OCI_MANIFEST, &d(D1), 1, &p("linux/amd64"), &[]),
            descriptor(OCI_MANIFEST, &d(D2), 1, &p("linux/arm/v6"), &[]),
        ]});
        assert_eq!(
            entry_digest(select(&index, &p("linux/amd64")).unwrap()).unwrap(),
            d(D1)
        );
        // arm/v7 accepts v6, as containerd does; an exact search does not.
        assert_eq!(
            entry_digest(select(&index, &p("linux/arm/v7")).unwrap()).unwrap(),
            d(D2)
        );
        assert!(find_exact(&index, &p("linux/arm/v7")).is_none());
        let have = select(&index, &p("linux/s390x")).unwrap_err();
        assert_eq!(have, [p("linux/amd64"), p("linux/arm/v6")]);
    }
}
