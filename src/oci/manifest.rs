//! The fields of a manifest that a mirror must read: its media type and the content it
//! references. The bytes themselves are never re-serialized; this is a read-only view.

use serde::Deserialize;

use super::digest::Digest;
use super::media;

/// Manifests larger than this are refused, as distribution does: a manifest is metadata, and
/// an unbounded one is a memory exhaustion vector.
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

/// A content descriptor as it appears in manifests and indexes.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The `mediaType` as written; empty when the descriptor has none.
    #[serde(default)]
    pub media_type: String,
    /// Of the referenced content, which a fetch of it must match.
    pub digest: Digest,
    /// Of the referenced content, in bytes, as the descriptor declares it.
    pub size: u64,
    /// An index entry's `platform` object; `None` elsewhere.
    #[serde(default)]
    pub platform: Option<PlatformField>,
}

/// The `platform` object of an index entry, kept as written.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct PlatformField {
    /// As written (`linux`, `windows`); empty when missing.
    #[serde(default)]
    pub os: String,
    /// As written (`amd64`, `arm64`); empty when missing.
    #[serde(default)]
    pub architecture: String,
    /// As written (`v7`, `v8`), when the entry has one.
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(default)]
    blobs: Vec<Descriptor>,
    #[serde(default)]
    subject: Option<Descriptor>,
    /// Docker schema1, which only names its layers.
    #[serde(default)]
    fs_layers: Vec<FsLayer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FsLayer {
    blob_sum: Digest,
}

/// What a manifest points at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestRefs {
    /// The media type, from the JSON when the transport did not say.
    pub media_type: String,
    /// Blobs: config and layers (and an artifact's blobs), with their declared sizes.
    pub blobs: Vec<(Digest, u64)>,
    /// Child manifests of an index.
    pub manifests: Vec<Descriptor>,
    /// The config descriptor of an image manifest.
    pub config: Option<Descriptor>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is larger than {MAX_MANIFEST_SIZE} bytes")]
    TooLarge,
    #[error("manifest is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest has no recognizable schema")]
    Unrecognized,
}

/// Reads `bytes` as a manifest. `content_type` is what the upstream said; when it is absent or
/// generic, the JSON's own `mediaType` (or its shape) decides.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<ManifestRefs, ManifestError> {
    if bytes.len() > MAX_MANIFEST_SIZE {
        return Err(ManifestError::TooLarge);
    }
    let raw: RawManifest = serde_json::from_slice(bytes)?;
    let declared = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| !c.is_empty() && *c != "application/json" && *c != "text/plain");
    let media_type = match (declared, raw.media_type.as_deref()) {
        (Some(c), _) => c.to_string(),
        (None, Some(m)) if !m.is_empty() => m.to_string(),
        _ if !raw.manifests.is_empty() => media::OCI_INDEX.to_string(),
        _ if raw.config.is_some() => media::OCI_MANIFEST.to_string(),
        _ if raw.schema_version == Some(1) => {
            "application/vnd.docker.distribution.manifest.v1+prettyjws".to_string()
        }
        _ => return Err(ManifestError::Unrecognized),
    };
    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    if let Some(c) = &raw.config {
        blobs.push((c.digest.clone(), c.size));
    }
    blobs.extend(raw.layers.iter().map(|d| (d.digest.clone(), d.size)));
    blobs.extend(raw.blobs.iter().map(|d| (d.digest.clone(), d.size)));
    blobs.extend(raw.fs_layers.into_iter().map(|l| (l.blob_sum, 0)));
    blobs.sort();
    blobs.dedup_by(|a, b| a.0 == b.0);
    let mut manifests = raw.manifests;
    if let Some(s) = raw.subject {
        manifests.push(s);
    }
    Ok(ManifestRefs {
        media_type,
        blobs,
        manifests,
        config: raw.config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn image_manifest() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"x","digest":"{D1}","size":1}},"layers":[{{"mediaType":"y","digest":"{D2}","size":2}},{{"mediaType":"y","digest":"{D2}","size":2}}]}}"#,
            media::DOCKER_MANIFEST
        );
        let r = parse(m.as_bytes(), None).unwrap();
        assert_eq!(r.media_type, media::DOCKER_MANIFEST);
        assert_eq!(r.blobs.len(), 2);
        assert!(r.manifests.is_empty());
        // The transport's Content-Type wins over the body.
        let r = parse(m.as_bytes(), Some(media::OCI_MANIFEST)).unwrap();
        assert_eq!(r.media_type, media::OCI_MANIFEST);
    }

    #[test]
    fn index_without_media_type() {
        let m = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"x","digest":"{D1}","size":1,"platform":{{"os":"linux","architecture":"arm64"}}}}]}}"#
        );
        let r = parse(m.as_bytes(), Some("application/json")).unwrap();
        assert_eq!(r.media_type, media::OCI_INDEX);
        assert_eq!(r.manifests.len(), 1);
        assert_eq!(
            r.manifests[0].platform.as_ref().unwrap().architecture,
            "arm64"
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse(b"not json", None).is_err());
        assert!(parse(b"{}", None).is_err());
        let bad_digest = r#"{"config":{"digest":"sha256:zz","size":1}}"#;
        assert!(parse(bad_digest.as_bytes(), None).is_err());
        let big = vec![b' '; MAX_MANIFEST_SIZE + 1];
        assert!(matches!(parse(&big, None), Err(ManifestError::TooLarge)));
    }
}
