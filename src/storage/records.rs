//! The small JSON records kept in the object store beside the content: tag records and
//! per-repository links. Replicas sharing a bucket read each other's, so their shape is part
//! of the storage format (see `layout`).

use serde::{Deserialize, Serialize};

use crate::oci::Digest;

/// What a tag pointed at when it was last checked upstream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TagRecord {
    /// Of the manifest the tag pointed at.
    pub digest: Digest,
    /// Of that manifest, sent as `Content-Type` when it is served from the cache.
    pub media_type: String,
    /// Of that manifest, in bytes.
    pub size: u64,
    /// Milliseconds since the Unix epoch. Wall-clock, because replicas share the record.
    pub checked_at: u64,
}

/// Where linked content is fetched from when it is not the repository itself: a fallback
/// image's repository, for what a synthesized index reaches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Source {
    /// The upstream's configured name.
    pub upstream: String,
    /// The repository as that upstream names it.
    pub repository: String,
}

/// A manifest that belongs to a repository.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ManifestLink {
    /// Of the manifest, sent as `Content-Type` when it is served from the cache.
    pub media_type: String,
    /// Of the manifest, in bytes.
    pub size: u64,
    /// Where the manifest was fetched from, when not this repository; omitted otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

/// A blob that belongs to a repository.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobLink {
    /// Of the blob, in bytes.
    pub size: u64,
    /// Where to fetch the blob from, when not this repository; omitted otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

/// What archway vouches for when it signs a manifest in a repository: the manifest's
/// descriptor (for a referrer's `subject`) and the notes its signature's payload carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VouchRecord {
    /// Of the signed manifest.
    pub media_type: String,
    /// Of the signed manifest, in bytes.
    pub size: u64,
    /// The payload's `optional` object: the upstream digest, or the fallback reference.
    pub notes: std::collections::BTreeMap<String, String>,
}

/// The referrers of a manifest, as the upstream listed them when last asked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReferrersRecord {
    /// Epoch milliseconds; the record is trusted for the tag TTL after this.
    pub checked_at: u64,
    /// `upstream_api` or `tag_schema`: where the list came from.
    pub source: String,
    /// The descriptors, as listed.
    pub manifests: Vec<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keep_their_stored_shape() {
        let d = Digest::sha256_of(b"x");
        let tag = TagRecord {
            digest: d.clone(),
            media_type: "m".into(),
            size: 3,
            checked_at: 42,
        };
        assert_eq!(
            serde_json::to_string(&tag).unwrap(),
            format!(r#"{{"digest":"{d}","mediaType":"m","size":3,"checkedAt":42}}"#)
        );
        let link = BlobLink {
            size: 1,
            source: None,
        };
        assert_eq!(serde_json::to_string(&link).unwrap(), r#"{"size":1}"#);
        let from: ManifestLink = serde_json::from_str(
            r#"{"mediaType":"m","size":2,"source":{"upstream":"hub","repository":"a/b"}}"#,
        )
        .unwrap();
        assert_eq!(from.source.unwrap().repository, "a/b");
    }
}
