//! The records of a hosted repository, as stored under `hosted/<name>/<repo>/`.

use serde::{Deserialize, Serialize};

use crate::oci::Digest;

/// `_manifests/<alg>/<hex>`: the repository holds this manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ManifestRecord {
    pub media_type: String,
    pub size: u64,
    /// The manifest's `subject`, whose referrers list it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Digest>,
}

/// `_tags/<tag>`: the manifest the tag names now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TagRecord {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// `_blobs/<alg>/<hex>`: the repository holds this blob.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobRecord {
    pub size: u64,
}

/// `uploads/<id>`: a blob upload in progress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UploadRecord {
    /// The hosted registry and repository it was started in.
    pub registry: String,
    pub repo: String,
    /// Bytes received so far.
    pub size: u64,
    /// Where each stored chunk starts, in order.
    pub chunks: Vec<u64>,
    /// Unix milliseconds of the last change; an upload idle for a day expires.
    pub updated_at: u64,
}
