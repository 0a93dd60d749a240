//! The small JSON records kept in the object store beside the content: tags and links.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::oci::Digest;

/// What a tag pointed at when it was last checked upstream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TagRecord {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// Milliseconds since the Unix epoch. Wall-clock, because replicas share the record.
    pub checked_at: u64,
}

/// Where linked content is fetched from when it is not the repository itself: a fallback
/// image's repository, for what a synthesized index reaches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Source {
    pub upstream: String,
    pub repository: String,
}

/// A manifest that belongs to a repository.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestLink {
    pub media_type: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

/// A blob that belongs to a repository.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobLink {
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

/// A tag record as held in memory.
#[derive(Debug, Clone)]
pub struct TagState {
    pub record: TagRecord,
    /// When this replica should next ask the upstream (epoch millis). Usually
    /// `checked_at + tag_ttl`; pushed out after a stale serve so an outage is not hammered.
    pub revalidate_at: u64,
}

impl TagState {
    pub fn new(record: TagRecord, ttl: Duration) -> TagState {
        let revalidate_at = record.checked_at.saturating_add(ttl.as_millis() as u64);
        TagState {
            record,
            revalidate_at,
        }
    }

    pub fn fresh(&self, now: u64) -> bool {
        now < self.revalidate_at
    }
}

/// Wall-clock epoch millis: the one clock tag records and access times share.
pub use crate::gc::access::now_millis;
