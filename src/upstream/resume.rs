//! Blob downloads that survive a dropped upstream connection. When the body fails mid-blob
//! (a reset, a timeout, a 5xx on the way back), the rest is asked for again with
//! `Range: bytes=<received>-`, up to the upstream's `retries`, with backoff, and the bytes
//! continue the same stream: the fill's hash and the clients reading it never notice. An
//! upstream that ignores the range answers 200 and `get_blob` drops what was already
//! received, so nothing is counted twice; the digest check at the end judges the whole.
//! This is what makes pulls of 10-40 GB images finish over flaky links.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use super::error::{Failure, UpstreamError};
use super::{BlobDownload, Remote};
use crate::oci::{Digest, RepoName};

/// The first wait before asking again; doubled for each further attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// `remote.get_blob(repo, d, offset)`, resumed on failure as the module says.
pub async fn get_blob(
    remote: Arc<dyn Remote>,
    repo: &RepoName,
    d: &Digest,
    offset: u64,
) -> Result<Option<BlobDownload>, UpstreamError> {
    let Some(first) = remote.get_blob(repo, d, offset).await? else {
        return Ok(None);
    };
    let retries = remote.retries();
    if retries == 0 {
        return Ok(Some(first));
    }
    let size = first.size;
    let r = Resuming {
        remote,
        repo: repo.clone(),
        d: d.clone(),
        stream: Some(first.stream),
        received: offset,
        size,
        left: retries,
        attempt: 0,
    };
    let stream = futures_util::stream::unfold(r, |mut r| async move {
        let item = r.next().await?;
        Some((item, r))
    })
    .boxed();
    Ok(Some(BlobDownload { size, stream }))
}

struct Resuming {
    remote: Arc<dyn Remote>,
    repo: RepoName,
    d: Digest,
    /// `None` once the download has ended (done, or failed for good).
    stream: Option<BoxStream<'static, Result<Bytes, UpstreamError>>>,
    /// Bytes of the blob passed on so far, counting from 0.
    received: u64,
    size: Option<u64>,
    left: u32,
    attempt: u32,
}

impl Resuming {
    async fn next(&mut self) -> Option<Result<Bytes, UpstreamError>> {
        loop {
            let s = self.stream.as_mut()?;
            let failure = match s.next().await {
                Some(Ok(b)) => {
                    self.received += b.len() as u64;
                    return Some(Ok(b));
                }
                Some(Err(e)) => e,
                None => match self.size {
                    Some(n) if self.received < n => UpstreamError::Interrupted {
                        upstream: self.remote.name().to_string(),
                        problem: format!("the blob ended after {} of {n} bytes", self.received),
                    },
                    _ => {
                        self.stream = None;
                        return None;
                    }
                },
            };
            if self.left == 0 || !resumable(&failure) {
                self.stream = None;
                return Some(Err(failure));
            }
            self.left -= 1;
            self.attempt += 1;
            let wait = FIRST_BACKOFF
                .saturating_mul(1 << (self.attempt - 1).min(16))
                .min(MAX_BACKOFF);
            tracing::warn!(
                upstream = %self.remote.name(), digest = %self.d, offset = self.received,
                attempt = self.attempt, error = %crate::causes::Chain(&failure),
                "blob download interrupted; resuming from where it stopped"
            );
            tokio::time::sleep(wait).await;
            self.stream = Some(
                match self
                    .remote
                    .get_blob(&self.repo, &self.d, self.received)
                    .await
                {
                    Ok(Some(dl)) => match (self.size, dl.size) {
                        (Some(a), Some(b)) if a != b => {
                            self.stream = None;
                            return Some(Err(UpstreamError::Interrupted {
                            upstream: self.remote.name().to_string(),
                            problem: format!("the blob's size changed from {a} to {b} bytes between requests"),
                        }));
                        }
                        _ => dl.stream,
                    },
                    Ok(None) => {
                        self.stream = None;
                        return Some(Err(failure));
                    }
                    // Asking again failed too: that failure is the next one to retry or end on.
                    Err(e) => futures_util::stream::once(std::future::ready(Err(e))).boxed(),
                },
            );
        }
    }
}

/// Failures worth asking again for: the connection, not the request.
fn resumable(e: &UpstreamError) -> bool {
    matches!(e.failure(), Failure::Unavailable)
}
