//! Wall-clock time as milliseconds since the Unix epoch: the one clock that tag records,
//! access times and collections share; and the calendar date of a day, for the dates logs
//! and HTTP headers spell out.
//!
//! Wall-clock, not monotonic, because replicas compare times that other processes wrote into
//! the shared store (when a tag was checked, when an image was last pulled).

use std::time::{SystemTime, UNIX_EPOCH};

/// The proleptic Gregorian `(year, month, day)` of `days` after 1970-01-01 (Howard
/// Hinnant's `civil_from_days`), for the dates that logs and HTTP headers spell out.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Now, in epoch milliseconds (0 for a clock set before 1970).
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
