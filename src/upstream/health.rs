//! What archway knows of an upstream's state: its last success and last error, and the
//! rate-limit budget it announces (Docker Hub's `ratelimit-limit` / `ratelimit-remaining`,
//! `100;w=21600`), for the console, the metrics and the decision to spend pulls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::clock::now_millis;
use crate::metrics::Metrics;

/// A rate-limit window as the upstream last announced it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RateLimit {
    /// Pulls allowed in the window.
    pub limit: u64,
    /// Pulls left in it.
    pub remaining: u64,
    /// The window's length in seconds, when announced (`w=`).
    pub window_secs: Option<u64>,
    /// When it was announced (epoch millis).
    pub seen_at: u64,
}

/// An upstream's state, as the console shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UpstreamStatus {
    /// When a request last succeeded (epoch millis).
    pub last_success: Option<u64>,
    /// The last failure, and when (epoch millis).
    pub last_error: Option<(u64, String)>,
    /// The last rate-limit announcement.
    pub ratelimit: Option<RateLimit>,
    /// Whether the budget is under `min_remaining`: expired tags are served from the cache
    /// and prewarming pauses.
    pub budget_low: bool,
}

pub(crate) struct Health {
    name: String,
    min_remaining: u64,
    status: Mutex<UpstreamStatus>,
    /// Until when (epoch millis) the budget counts as low: the end of the window the low
    /// announcement was made in. Low responses come only from the upstream, and a low
    /// budget stops most requests to it, so the window's end is what lifts it.
    low_until: AtomicU64,
    metrics: Metrics,
}

impl Health {
    pub(crate) fn new(name: &str, min_remaining: u64, metrics: Metrics) -> Health {
        Health {
            name: name.to_string(),
            min_remaining,
            status: Mutex::default(),
            low_until: AtomicU64::new(0),
            metrics,
        }
    }

    pub(crate) fn status(&self) -> UpstreamStatus {
        let mut s = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        s.budget_low = self.low();
        s
    }

    pub(crate) fn low(&self) -> bool {
        now_millis() < self.low_until.load(Ordering::Relaxed)
    }

    /// A response arrived: its status, and its rate-limit headers if any.
    pub(crate) fn answered(&self, status: http::StatusCode, headers: &http::HeaderMap) {
        let now = now_millis();
        let limit = header(headers, "ratelimit-limit").and_then(parse);
        let remaining = header(headers, "ratelimit-remaining").and_then(parse);
        if let Ok(mut s) = self.status.lock() {
            if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS {
                s.last_error = Some((now, format!("answered {status}")));
            } else {
                s.last_success = Some(now);
            }
            if let (Some((limit, w)), Some((remaining, _))) = (limit, remaining) {
                s.ratelimit = Some(RateLimit {
                    limit,
                    remaining,
                    window_secs: w,
                    seen_at: now,
                });
            }
        }
        if let Some((remaining, window)) = remaining {
            self.metrics
                .upstream_ratelimit_remaining
                .with_label_values(&[&self.name])
                .set(remaining as i64);
            let window = window.or(limit.and_then(|(_, w)| w));
            self.budget(remaining, now, window);
        }
    }

    /// No answer at all.
    pub(crate) fn failed(&self, what: &str) {
        if let Ok(mut s) = self.status.lock() {
            s.last_error = Some((now_millis(), what.to_string()));
        }
    }

    /// Whether `remaining`, announced at `now` for a window of `window` seconds, puts the
    /// budget under `min_remaining`; logged once per change.
    fn budget(&self, remaining: u64, now: u64, window: Option<u64>) {
        if self.min_remaining == 0 {
            return;
        }
        let low = remaining < self.min_remaining;
        let was = self.low();
        let until = if low {
            now.saturating_add(window.unwrap_or(DEFAULT_WINDOW_SECS).saturating_mul(1000))
        } else {
            0
        };
        self.low_until.store(until, Ordering::Relaxed);
        if was != low {
            if low {
                tracing::warn!(
                    upstream = %self.name, remaining, min_remaining = self.min_remaining,
                    "upstream rate budget low: serving cached tags past their TTL and pausing prewarm"
                );
            } else {
                tracing::info!(
                    upstream = %self.name, remaining, min_remaining = self.min_remaining,
                    "upstream rate budget recovered"
                );
            }
        }
    }
}

/// The window a low budget holds for when the upstream does not say (Docker Hub's is six
/// hours; a shorter wait costs at most one request to learn the budget again).
const DEFAULT_WINDOW_SECS: u64 = 900;

fn header<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// `100;w=21600` → (100, Some(21600)).
fn parse(v: &str) -> Option<(u64, Option<u64>)> {
    let mut parts = v.split(';');
    let n = parts.next()?.trim().parse().ok()?;
    let w = parts
        .find_map(|p| p.trim().strip_prefix("w="))
        .and_then(|w| w.parse().ok());
    Some((n, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_headers_and_the_budget() {
        assert_eq!(parse("100;w=21600"), Some((100, Some(21600))));
        assert_eq!(parse("76"), Some((76, None)));
        assert_eq!(parse("x;w=1"), None);
        let h = Health::new("hub", 10, Metrics::new());
        let mut headers = http::HeaderMap::new();
        headers.insert("ratelimit-limit", "100;w=21600".parse().unwrap());
        headers.insert("ratelimit-remaining", "50;w=21600".parse().unwrap());
        h.answered(http::StatusCode::OK, &headers);
        let s = h.status();
        assert_eq!(s.ratelimit.as_ref().unwrap().remaining, 50);
        assert!(!s.budget_low && s.last_success.is_some());
        headers.insert("ratelimit-remaining", "9;w=21600".parse().unwrap());
        h.answered(http::StatusCode::OK, &headers);
        assert!(h.low());
        h.answered(
            http::StatusCode::SERVICE_UNAVAILABLE,
            &http::HeaderMap::new(),
        );
        assert!(h.status().last_error.is_some());
        assert!(
            h.low(),
            "a response without headers leaves the budget as it was"
        );
        // The window the low announcement was made for ends: the budget is spent anew.
        let short = Health::new("hub", 10, Metrics::new());
        short.budget(1, now_millis() - 2000, Some(1));
        assert!(!short.low(), "the window announced ended");
        short.budget(1, now_millis(), Some(60));
        assert!(short.low());
        let off = Health::new("quay", 0, Metrics::new());
        off.answered(http::StatusCode::OK, &headers);
        assert!(!off.low(), "min_remaining 0: never low");
    }
}
