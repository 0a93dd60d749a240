//! An in-memory upstream for the services' unit tests: a registry that holds what the test
//! pushed, answers as distribution does, counts requests, and can be taken down or made to
//! send wrong bytes.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use super::{BlobDownload, FetchedManifest, ManifestHead, Remote, TagPage, UResult, UpstreamError};
use crate::oci::{Digest, RepoName};

#[derive(Debug, Default)]
struct State {
    /// (repository, tag or digest) → (media type, bytes).
    manifests: HashMap<(String, String), (String, Bytes)>,
    /// (repository, digest) → bytes.
    blobs: HashMap<(String, String), Bytes>,
    /// Answered instead of content while set (a status such as 503).
    down: Option<u16>,
    /// Sent instead of a blob's real bytes.
    corrupt: HashMap<String, Bytes>,
    /// "METHOD repository/kind/reference", in order.
    requests: Vec<String>,
    /// With a referrers API: (repository, digest) → the descriptors it lists.
    referrers: Option<HashMap<(String, String), Vec<serde_json::Value>>>,
    /// digest → (bytes sent before waiting, the permit that lets the rest through).
    gates: HashMap<String, (usize, std::sync::Arc<tokio::sync::Semaphore>)>,
    /// The `offset` of every blob GET, in order.
    offsets: Vec<(String, u64)>,
}

#[derive(Debug)]
pub struct MemoryUpstream {
    name: String,
    state: Mutex<State>,
}

impl MemoryUpstream {
    pub fn new(name: &str) -> MemoryUpstream {
        MemoryUpstream {
            name: name.to_string(),
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a blob in `repo`; its digest.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> Digest {
        let d = Digest::sha256_of(bytes);
        self.state()
            .blobs
            .insert((repo.into(), d.to_string()), Bytes::copy_from_slice(bytes));
        d
    }

    /// Stores a manifest under its digest and, if given, a tag; its digest.
    pub fn push_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: &[u8],
    ) -> Digest {
        let d = Digest::sha256_of(bytes);
        let entry = (media_type.to_string(), Bytes::copy_from_slice(bytes));
        let mut s = self.state();
        s.manifests
            .insert((repo.into(), d.to_string()), entry.clone());
        if let Some(t) = tag {
            s.manifests.insert((repo.into(), t.into()), entry);
        }
        d
    }

    /// Serves `bytes` as the manifest `d` of `repo`: an upstream whose content does not match
    /// the digest it is asked for.
    pub fn push_manifest_as(&self, repo: &str, d: &Digest, bytes: &[u8]) {
        let entry = (
            "application/vnd.oci.image.manifest.v1+json".to_string(),
            Bytes::copy_from_slice(bytes),
        );
        self.state()
            .manifests
            .insert((repo.into(), d.to_string()), entry);
    }

    /// Gives this upstream a referrers API listing `descriptors` for `d` in `repo`.
    pub fn list_referrers(&self, repo: &str, d: &Digest, descriptors: Vec<serde_json::Value>) {
        self.state()
            .referrers
            .get_or_insert_with(HashMap::new)
            .insert((repo.into(), d.to_string()), descriptors);
    }

    /// Sends the first `after` bytes of blob `d`, then holds each transfer until a permit
    /// is added to the returned semaphore.
    pub fn gate(&self, d: &Digest, after: usize) -> std::sync::Arc<tokio::sync::Semaphore> {
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        self.state()
            .gates
            .insert(d.to_string(), (after, permits.clone()));
        permits
    }

    /// The offsets blob `d` was asked for from, in order.
    pub fn offsets(&self, d: &Digest) -> Vec<u64> {
        let d = d.to_string();
        self.state()
            .offsets
            .iter()
            .filter(|(x, _)| *x == d)
            .map(|(_, o)| *o)
            .collect()
    }

    /// Answers every request with `status` (`None`: back up).
    pub fn set_down(&self, status: Option<u16>) {
        self.state().down = status;
    }

    /// Serves `bytes` whenever blob `d` is asked for.
    pub fn corrupt(&self, d: &Digest, bytes: &[u8]) {
        self.state()
            .corrupt
            .insert(d.to_string(), Bytes::copy_from_slice(bytes));
    }

    /// How many requests were `METHOD repository/kind/reference` (`GET a/b/blobs/sha256:..`).
    pub fn count(&self, request: &str) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|r| *r == request)
            .count()
    }

    /// How many requests were made at all.
    pub fn total(&self) -> usize {
        self.state().requests.len()
    }

    /// Notes a request; the failure to answer while down. Yields first, as a network
    /// round trip would, so that concurrent callers really overlap.
    async fn note(
        &self,
        method: &str,
        repo: &RepoName,
        kind: &str,
        reference: &str,
    ) -> UResult<()> {
        tokio::task::yield_now().await;
        let mut s = self.state();
        s.requests
            .push(format!("{method} {repo}/{kind}/{reference}"));
        match s.down {
            Some(status) => Err(UpstreamError::Status {
                upstream: self.name.clone(),
                status,
                message: "injected".into(),
            }),
            None => Ok(()),
        }
    }

    fn manifest(&self, repo: &RepoName, reference: &str) -> Option<(String, Bytes)> {
        self.state()
            .manifests
            .get(&(repo.to_string(), reference.to_string()))
            .cloned()
    }

    fn blob(&self, repo: &RepoName, d: &Digest) -> Option<Bytes> {
        let s = self.state();
        let real = s.blobs.get(&(repo.to_string(), d.to_string()))?;
        Some(s.corrupt.get(&d.to_string()).unwrap_or(real).clone())
    }
}

#[async_trait]
impl Remote for MemoryUpstream {
    fn name(&self) -> &str {
        &self.name
    }

    async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
    ) -> UResult<Option<ManifestHead>> {
        self.note("HEAD", repo, "manifests", reference).await?;
        Ok(self.manifest(repo, reference).map(|(mt, b)| ManifestHead {
            digest: Some(Digest::sha256_of(&b)),
            media_type: Some(mt),
            size: Some(b.len() as u64),
        }))
    }

    async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
    ) -> UResult<Option<FetchedManifest>> {
        self.note("GET", repo, "manifests", reference).await?;
        Ok(self
            .manifest(repo, reference)
            .map(|(mt, b)| FetchedManifest {
                digest: Some(Digest::sha256_of(&b)),
                media_type: Some(mt),
                bytes: b,
            }))
    }

    async fn head_blob(&self, repo: &RepoName, d: &Digest) -> UResult<Option<u64>> {
        self.note("HEAD", repo, "blobs", &d.to_string()).await?;
        Ok(self.blob(repo, d).map(|b| b.len() as u64))
    }

    async fn get_blob(
        &self,
        repo: &RepoName,
        d: &Digest,
        offset: u64,
    ) -> UResult<Option<BlobDownload>> {
        self.note("GET", repo, "blobs", &d.to_string()).await?;
        let gate = {
            let mut s = self.state();
            s.offsets.push((d.to_string(), offset));
            s.gates.get(&d.to_string()).cloned()
        };
        Ok(self.blob(repo, d).map(|b| {
            let size = Some(b.len() as u64);
            let b = b.slice((offset as usize).min(b.len())..);
            let stream = match gate {
                Some((after, permits)) => {
                    let after = after.min(b.len());
                    let (head, tail) = (b.slice(..after), b.slice(after..));
                    let rest = futures_util::stream::once(async move {
                        // The semaphore is never closed.
                        if let Ok(p) = permits.acquire().await {
                            p.forget();
                        }
                        Ok(tail)
                    });
                    futures_util::stream::once(async move { Ok(head) })
                        .chain(rest)
                        .boxed()
                }
                None => {
                    // Two chunks, so readers see a transfer in parts.
                    let half = b.len() / 2;
                    let chunks = vec![Ok(b.slice(..half)), Ok(b.slice(half..))];
                    futures_util::stream::iter(chunks).boxed()
                }
            };
            BlobDownload { size, stream }
        }))
    }

    async fn tags(&self, repo: &RepoName, _query: &str) -> UResult<Option<TagPage>> {
        self.note("GET", repo, "tags", "list").await?;
        let mut tags: Vec<String> = self
            .state()
            .manifests
            .keys()
            .filter(|(r, t)| r == repo.as_str() && !t.contains(':'))
            .map(|(_, t)| t.clone())
            .collect();
        if tags.is_empty() {
            return Ok(None);
        }
        tags.sort();
        let body = serde_json::json!({ "name": repo.as_str(), "tags": tags }).to_string();
        Ok(Some(TagPage {
            body: body.into(),
            link: None,
        }))
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        d: &Digest,
        _next: Option<&str>,
    ) -> UResult<Option<super::ReferrersPage>> {
        self.note("GET", repo, "referrers", &d.to_string()).await?;
        let s = self.state();
        let Some(api) = &s.referrers else {
            return Ok(None);
        };
        let manifests = api
            .get(&(repo.to_string(), d.to_string()))
            .cloned()
            .unwrap_or_default();
        Ok(Some(super::ReferrersPage {
            manifests,
            next: None,
        }))
    }
}
