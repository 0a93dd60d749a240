//! Wall-clock time as milliseconds since the Unix epoch: the one clock that tag records,
//! access times and collections share.
//!
//! Wall-clock, not monotonic, because replicas compare times that other processes wrote into
//! the shared store (when a tag was checked, when an image was last pulled).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in epoch milliseconds (0 for a clock set before 1970).
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
