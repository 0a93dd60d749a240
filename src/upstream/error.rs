//! What can go wrong talking to an upstream, kept with its cause (the transport error, the
//! status the upstream answered), so the caller decides what a client sees and whether a
//! stale cached answer may stand in.

use std::sync::Arc;

use crate::oci::manifest::MAX_MANIFEST_SIZE;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No usable answer: a refused or timed-out connection, a transfer cut short.
    #[error("{upstream}: {what}")]
    Transport {
        upstream: String,
        /// `cannot connect`, `timed out`, `blob transfer failed`, ...
        what: &'static str,
        /// Without its URL: a redirect target may carry a signed query string.
        #[source]
        source: reqwest::Error,
    },
    /// An answer other than success or 404.
    #[error("{upstream} answered HTTP {status}{}", if .message.is_empty() { String::new() } else { format!(": {}", .message) })]
    Status {
        upstream: String,
        status: u16,
        /// The upstream's own OCI error message, when it sent one.
        message: String,
    },
    /// The token endpoint named by the upstream's challenge could not be used.
    #[error("{upstream}: authentication failed: {problem}")]
    Token {
        upstream: String,
        problem: String,
        /// The token endpoint's HTTP status, when it answered.
        status: Option<u16>,
    },
    /// Fetching a token failed (shared by every request that waited for that token).
    #[error("{upstream}: cannot get a token")]
    TokenFetch {
        upstream: String,
        #[source]
        source: Arc<UpstreamError>,
    },
    #[error("{upstream}: cannot build a request for {path}")]
    Url {
        upstream: String,
        path: String,
        #[source]
        source: url::ParseError,
    },
    #[error("{upstream}: manifest larger than {MAX_MANIFEST_SIZE} bytes")]
    TooLarge { upstream: String },
    /// A blob download that stopped short, or changed between a request and its resumption.
    #[error("{upstream}: {problem}")]
    Interrupted { upstream: String, problem: String },
}

/// What an upstream failure means for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Down, overloaded or unreachable: a stale cached answer may be served.
    Unavailable,
    /// The upstream rate-limits us (429): also a case for a stale answer.
    RateLimited,
    /// The upstream refused our credentials (or their absence).
    Denied,
    /// The upstream answered something a mirror does not pass on (a 400, an oversized
    /// manifest): not a reason to serve stale, and not the client's fault.
    Refused,
    /// A manifest over the size limit.
    TooLarge,
}

impl UpstreamError {
    pub fn failure(&self) -> Failure {
        match self {
            UpstreamError::Transport { .. }
            | UpstreamError::Url { .. }
            | UpstreamError::Interrupted { .. } => Failure::Unavailable,
            UpstreamError::Status { status, .. } => status_failure(*status),
            UpstreamError::Token { status, .. } => match status.map(status_failure) {
                Some(f @ (Failure::Unavailable | Failure::RateLimited)) => f,
                _ => Failure::Denied,
            },
            UpstreamError::TokenFetch { source, .. } => match source.failure() {
                f @ (Failure::Unavailable | Failure::RateLimited) => f,
                _ => Failure::Denied,
            },
            UpstreamError::TooLarge { .. } => Failure::TooLarge,
        }
    }

    /// Down, overloaded or rate limiting: the cases where serving a stale answer is right.
    pub fn is_unavailable(&self) -> bool {
        matches!(self.failure(), Failure::Unavailable | Failure::RateLimited)
    }
}

fn status_failure(status: u16) -> Failure {
    match status {
        429 => Failure::RateLimited,
        401 | 403 => Failure::Denied,
        s if s >= 500 => Failure::Unavailable,
        _ => Failure::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: u16) -> UpstreamError {
        UpstreamError::Status {
            upstream: "hub".into(),
            status: s,
            message: String::new(),
        }
    }

    #[test]
    fn failures() {
        assert_eq!(status(429).failure(), Failure::RateLimited);
        assert_eq!(status(503).failure(), Failure::Unavailable);
        assert_eq!(status(401).failure(), Failure::Denied);
        assert_eq!(status(400).failure(), Failure::Refused);
        assert!(status(502).is_unavailable() && !status(403).is_unavailable());
        // A token endpoint that is down is an outage, not a refusal.
        let down = UpstreamError::TokenFetch {
            upstream: "hub".into(),
            source: Arc::new(status(503)),
        };
        assert!(down.is_unavailable());
        let refused = UpstreamError::Token {
            upstream: "hub".into(),
            problem: "token endpoint answered HTTP 401".into(),
            status: Some(401),
        };
        assert_eq!(refused.failure(), Failure::Denied);
    }
}
