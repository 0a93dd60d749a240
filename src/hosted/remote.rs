//! A hosted registry as the pull side reads an upstream: what lets a `[[fallback]]` rule name
//! a hosted repository (`"linux/s390x" = "local/team/app:s390x-{tag}"`) and have synthesis,
//! the architecture check and the blob links work on it as on any upstream. Failures of the
//! store are reported as an unavailable upstream, which is what they are to the caller.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};

use super::{Hosted, Repo};
use crate::oci::{Digest, Reference, RepoName};
use crate::upstream::{
    BlobDownload, FetchedManifest, ManifestHead, ReferrersPage, Remote, TagPage, UpstreamError,
};

type UResult<T> = Result<T, UpstreamError>;

#[derive(Clone)]
pub struct HostedRemote {
    hosted: Arc<Hosted>,
    name: String,
}

impl std::fmt::Debug for HostedRemote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostedRemote({})", self.name)
    }
}

impl HostedRemote {
    pub fn new(hosted: Arc<Hosted>, name: &str) -> HostedRemote {
        HostedRemote {
            hosted,
            name: name.to_string(),
        }
    }

    fn repo(&self, repo: &RepoName) -> Repo {
        Repo {
            registry: self.name.clone(),
            repo: repo.clone(),
        }
    }

    fn failed(&self, e: impl std::fmt::Display) -> UpstreamError {
        UpstreamError::Status {
            upstream: self.name.clone(),
            status: 503,
            message: e.to_string(),
        }
    }

    async fn read(&self, repo: &RepoName, reference: &str) -> UResult<Option<super::Manifest>> {
        let Ok(reference) = reference.parse::<Reference>() else {
            return Ok(None);
        };
        self.hosted
            .manifest(&self.repo(repo), &reference)
            .await
            .map_err(|e| self.failed(crate::causes::Chain(&e)))
    }
}

#[async_trait]
impl Remote for HostedRemote {
    fn name(&self) -> &str {
        &self.name
    }

    async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
    ) -> UResult<Option<ManifestHead>> {
        Ok(self.read(repo, reference).await?.map(|m| ManifestHead {
            digest: Some(m.digest),
            media_type: Some(m.media_type),
            size: Some(m.bytes.len() as u64),
        }))
    }

    async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
    ) -> UResult<Option<FetchedManifest>> {
        Ok(self.read(repo, reference).await?.map(|m| FetchedManifest {
            bytes: m.bytes,
            media_type: Some(m.media_type),
            digest: Some(m.digest),
        }))
    }

    async fn head_blob(&self, repo: &RepoName, d: &Digest) -> UResult<Option<u64>> {
        self.hosted
            .blob_size(&self.repo(repo), d)
            .await
            .map_err(|e| self.failed(crate::causes::Chain(&e)))
    }

    async fn get_blob(
        &self,
        repo: &RepoName,
        d: &Digest,
        offset: u64,
    ) -> UResult<Option<BlobDownload>> {
        let Some(size) = self.head_blob(repo, d).await? else {
            return Ok(None);
        };
        let stream = self
            .hosted
            .store()
            .read_blob(d, Some(offset.min(size)..size))
            .await
            .map_err(|e| self.failed(crate::causes::Chain(&e)))?;
        let Some(stream) = stream else {
            return Ok(None);
        };
        let me = self.clone();
        Ok(Some(BlobDownload {
            size: Some(size),
            stream: stream.map_err(move |e| me.failed(e)).boxed(),
        }))
    }

    async fn tags(&self, repo: &RepoName, _query: &str) -> UResult<Option<TagPage>> {
        let tags = self
            .hosted
            .tags(&self.repo(repo))
            .await
            .map_err(|e| self.failed(crate::causes::Chain(&e)))?;
        if tags.is_empty() {
            return Ok(None);
        }
        let body = serde_json::json!({"name": repo.as_str(), "tags": tags}).to_string();
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
    ) -> UResult<Option<ReferrersPage>> {
        let manifests = self
            .hosted
            .referrers(&self.repo(repo), d)
            .await
            .map_err(|e| self.failed(crate::causes::Chain(&e)))?;
        Ok(Some(ReferrersPage {
            manifests,
            next: None,
        }))
    }
}
