//! `[cache]`: how long tags are trusted, stale serving, and the in-memory manifest budget.

use std::time::Duration;

use serde::Deserialize;

use super::values::{self, Errors};

const DEFAULT_TAG_TTL: Duration = Duration::from_secs(300);
const DEFAULT_MEMORY: u64 = 256 * 1024 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    tag_ttl: Option<String>,
    serve_stale: Option<bool>,
    memory: Option<String>,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// How long a tag → digest mapping is trusted before a HEAD revalidates it.
    pub tag_ttl: Duration,
    /// Whether a tag is served from its last known manifest when the upstream is down,
    /// answers 5xx or 429.
    pub serve_stale: bool,
    /// Budget for the in-memory manifest cache, in bytes.
    pub memory: u64,
}

pub(super) fn validate(raw: RawCache, errs: &mut Errors) -> CacheConfig {
    CacheConfig {
        tag_ttl: values::duration(
            errs,
            "cache.tag_ttl",
            raw.tag_ttl.as_deref(),
            DEFAULT_TAG_TTL,
        ),
        serve_stale: raw.serve_stale.unwrap_or(true),
        memory: values::size(errs, "cache.memory", raw.memory.as_deref()).unwrap_or(DEFAULT_MEMORY),
    }
}
