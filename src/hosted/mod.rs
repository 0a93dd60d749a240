//! Hosted repositories: what clients push to archway, kept in the same object store as the
//! cache (content under `blobs/`, shared and verified the same way) with records of their
//! own under `hosted/`, which the bounded cache never evicts.
//!
//! Reads of a hosted repository come straight from its records (a push is visible at once on
//! every replica; a delete too). Uploads live in the store and survive a restart (see
//! [`uploads`]); manifests are validated against what the repository holds before anything
//! of them is written (see [`manifests`]). [`remote`] lets the pull side read a hosted
//! repository as it reads an upstream, so fallback rules may name one.

pub mod manifests;
pub mod records;
pub mod remote;
pub mod uploads;

use bytes::Bytes;
use futures_util::TryStreamExt;
use serde_json::Value;

use crate::config::HostedConfig;
use crate::error::Result;
use crate::oci::{Digest, Reference, RepoName};
use crate::storage::{layout, Store};
use records::{BlobRecord, ManifestRecord, TagRecord};

/// A repository of a hosted registry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Repo {
    /// The `[[hosted]]` name (`local`).
    pub registry: String,
    /// The repository below it (`team/app`).
    pub repo: RepoName,
}

impl std::fmt::Display for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repo)
    }
}

/// A manifest as a hosted repository serves it.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// The hosted registries of one configuration.
pub struct Hosted {
    store: Store,
    configs: Vec<HostedConfig>,
    /// Per upload: its chunks are appended one at a time.
    upload_locks: moka::sync::Cache<String, std::sync::Arc<tokio::sync::Mutex<()>>>,
}

impl Hosted {
    pub fn new(store: Store, configs: Vec<HostedConfig>) -> Hosted {
        Hosted {
            store,
            configs,
            upload_locks: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(std::time::Duration::from_secs(3600))
                .build(),
        }
    }

    /// The configuration of the hosted registry `name`.
    pub fn config(&self, name: &str) -> Option<&HostedConfig> {
        self.configs.iter().find(|c| c.name == name)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The manifest a tag or digest names in `r`, if it has one.
    pub async fn manifest(&self, r: &Repo, reference: &Reference) -> Result<Option<Manifest>> {
        let (digest, media_type) = match reference {
            Reference::Tag(t) => {
                let key = layout::hosted_tag(&r.registry, &r.repo, t);
                match self.store.get_record::<TagRecord>(&key).await? {
                    Some(t) => (t.digest, t.media_type),
                    None => return Ok(None),
                }
            }
            Reference::Digest(d) => match self.manifest_record(r, d).await? {
                Some(m) => (d.clone(), m.media_type),
                None => return Ok(None),
            },
        };
        let Some(bytes) = self.store.read_small(&digest).await? else {
            return Ok(None);
        };
        Ok(Some(Manifest {
            digest,
            media_type,
            bytes,
        }))
    }

    pub(crate) async fn manifest_record(
        &self,
        r: &Repo,
        d: &Digest,
    ) -> Result<Option<ManifestRecord>> {
        let key = layout::hosted_manifest(&r.registry, &r.repo, d);
        self.store.get_record(&key).await
    }

    /// The size of blob `d` in `r`, if the repository has it.
    pub async fn blob_size(&self, r: &Repo, d: &Digest) -> Result<Option<u64>> {
        let key = layout::hosted_blob(&r.registry, &r.repo, d);
        Ok(self
            .store
            .get_record::<BlobRecord>(&key)
            .await?
            .map(|b| b.size))
    }

    /// Records that `r` holds blob `d` (its content is in the store).
    pub async fn link_blob(&self, r: &Repo, d: &Digest, size: u64) -> Result<()> {
        let key = layout::hosted_blob(&r.registry, &r.repo, d);
        self.store.put_record(&key, &BlobRecord { size }).await
    }

    /// The tags of `r`, in lexical order.
    pub async fn tags(&self, r: &Repo) -> Result<Vec<String>> {
        let dir = layout::hosted_dir(&r.registry, &r.repo, "_tags");
        let mut tags: Vec<String> = self
            .store
            .list(dir.as_ref())
            .try_filter_map(|m| {
                let name = m
                    .location
                    .as_ref()
                    .rsplit_once('/')
                    .map(|(_, t)| t.to_string());
                futures_util::future::ready(Ok(name))
            })
            .try_collect()
            .await?;
        tags.sort();
        Ok(tags)
    }

    /// Whether `r` holds any manifest (whether the repository exists).
    pub async fn has_manifests(&self, r: &Repo) -> Result<bool> {
        let dir = layout::hosted_dir(&r.registry, &r.repo, "_manifests");
        Ok(self.store.list(dir.as_ref()).try_next().await?.is_some())
    }

    /// The descriptors of the manifests pushed to `r` with `subject` = `d`.
    pub async fn referrers(&self, r: &Repo, d: &Digest) -> Result<Vec<Value>> {
        let dir = layout::hosted_referrers(&r.registry, &r.repo, d);
        let keys: Vec<_> = self
            .store
            .list(dir.as_ref())
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        let mut out = Vec::new();
        for k in keys {
            if let Some(v) = self.store.get_record::<Value>(&k).await? {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Every hosted repository that holds a manifest, as clients name it
    /// (`local/team/app`), in lexical order.
    pub async fn catalog(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .store
            .list(layout::HOSTED)
            .try_filter_map(|m| {
                let e = layout::parse_hosted(&m.location)
                    .filter(|e| matches!(e.kind, layout::RepoEntryKind::Manifest(_)))
                    .map(|e| format!("{}/{}", e.upstream, e.repo));
                futures_util::future::ready(Ok(e))
            })
            .try_collect()
            .await?;
        names.sort();
        names.dedup();
        Ok(names)
    }
}
