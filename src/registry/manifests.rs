//! Manifests: by tag with TTL revalidation and stale serving, by digest as immutable content.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::try_join_all;

use super::records::{now_millis, BlobLink, ManifestLink, Source, TagRecord, TagState};
use super::Registry;
use crate::error::{Error, Result};
use crate::oci::{manifest, Digest, Hasher, Reference, Tag};
use crate::routing::Route;
use crate::storage::layout;

/// A manifest as served: the upstream's exact bytes, their digest and media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

impl Registry {
    /// The manifest `reference` names in the routed repository.
    pub async fn manifest(&self, route: &Route, reference: &Reference) -> Result<Arc<Manifest>> {
        let m = match reference {
            Reference::Tag(t) => self.manifest_by_tag(route, t).await,
            Reference::Digest(d) => self.manifest_by_digest(route, d).await,
        }?;
        self.note_manifest(route, &m.digest);
        Ok(m)
    }

    async fn manifest_by_tag(&self, route: &Route, tag: &Tag) -> Result<Arc<Manifest>> {
        let key = (route.upstream, route.repo.clone(), tag.clone());
        // The hot path: a fresh tag whose manifest is in memory. No store, no upstream.
        if let Some(st) = self.tags.get(&key).await {
            if st.fresh(now_millis()) {
                if let Some(m) = self.manifests.get(&st.record.digest).await {
                    self.hit("tag");
                    return Ok(m);
                }
            }
        }
        self.tag_flights
            .run(key, || self.resolve_tag(route, tag))
            .await
    }

    async fn resolve_tag(&self, route: &Route, tag: &Tag) -> Result<Arc<Manifest>> {
        let key = (route.upstream, route.repo.clone(), tag.clone());
        let up = self.upstream(route);
        let ttl = self.config.cache.tag_ttl;
        let tag_key = layout::tag(&up.name, &route.repo, tag);
        let now = now_millis();
        let state = match self.tags.get(&key).await {
            Some(s) => Some(s),
            None => self
                .store
                .get_record::<TagRecord>(&tag_key)
                .await?
                .map(|r| Arc::new(TagState::new(r, ttl))),
        };
        if let Some(st) = &state {
            let rec = &st.record;
            if st.fresh(now) {
                if let Some(m) = self.load_manifest(&rec.digest, &rec.media_type).await? {
                    self.tags.insert(key, st.clone()).await;
                    self.hit("tag");
                    return Ok(m);
                }
            }
            // Revalidate with a HEAD: it does not count against Docker Hub's pull limit.
            match up.head_manifest(&route.repo, tag.as_str()).await {
                Ok(Some(head)) if head.digest.as_ref() == Some(&rec.digest) => {
                    if let Some(m) = self.load_manifest(&rec.digest, &rec.media_type).await? {
                        self.restore_if_evicted(route, &m).await?;
                        let rec = TagRecord {
                            checked_at: now,
                            ..rec.clone()
                        };
                        self.store.put_record(&tag_key, &rec).await?;
                        self.tags
                            .insert(key, Arc::new(TagState::new(rec, ttl)))
                            .await;
                        self.hit("tag");
                        return Ok(m);
                    }
                }
                Ok(Some(_)) => {} // moved, or no digest given: fetch it
                Ok(None) => {
                    self.tags.invalidate(&key).await;
                    return Err(Error::ManifestUnknown(format!(
                        "{}:{tag} no longer exists upstream ({})",
                        route.repo, up.name
                    )));
                }
                Err(e) if e.is_unavailable() && self.config.cache.serve_stale => {
                    if let Some(m) = self.load_manifest(&rec.digest, &rec.media_type).await? {
                        tracing::warn!(
                            upstream = %up.name, repository = %route.repo, tag = %tag,
                            digest = %rec.digest, error = %e,
                            "upstream unavailable; serving the last known manifest"
                        );
                        self.metrics.stale_serves.inc();
                        super::served_from("stale");
                        // Trust the old answer for another TTL rather than hammering an
                        // upstream that is down.
                        let mut st = (**st).clone();
                        st.revalidate_at = now.saturating_add(ttl.as_millis() as u64);
                        self.tags.insert(key, Arc::new(st)).await;
                        return Ok(m);
                    }
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.miss("tag");
        let m = self.fetch_and_store(route, tag.as_str(), None).await?;
        let rec = TagRecord {
            digest: m.digest.clone(),
            media_type: m.media_type.clone(),
            size: m.bytes.len() as u64,
            checked_at: now,
        };
        self.store.put_record(&tag_key, &rec).await?;
        self.tags
            .insert(key, Arc::new(TagState::new(rec, ttl)))
            .await;
        Ok(m)
    }

    async fn manifest_by_digest(&self, route: &Route, d: &Digest) -> Result<Arc<Manifest>> {
        let key = (route.upstream, route.repo.clone(), d.clone());
        if self.manifest_links.contains_key(&key) {
            if let Some(m) = self.manifests.get(d).await {
                self.hit("manifest");
                return Ok(m);
            }
        }
        self.digest_flights
            .run(key.clone(), || async {
                let up = self.upstream(route);
                let link = match self.manifest_links.get(&key).await {
                    Some(mt) => Some(mt.to_string()),
                    None => self
                        .store
                        .get_record::<ManifestLink>(&layout::manifest_link(
                            &up.name,
                            &route.repo,
                            d,
                        ))
                        .await?
                        .map(|l| l.media_type),
                };
                if let Some(mt) = link {
                    if let Some(m) = self.load_manifest(d, &mt).await? {
                        self.manifest_links.insert(key, mt.into()).await;
                        self.hit("manifest");
                        return Ok(m);
                    }
                }
                self.miss("manifest");
                self.fetch_and_store(route, &d.to_string(), Some(d)).await
            })
            .await
    }

    /// Puts back a manifest that was served from memory while a collection (here or on
    /// another replica) removed it from the store, so the tag record written next never
    /// points at nothing. Runs on revalidation only: once per tag TTL, not per request.
    async fn restore_if_evicted(&self, route: &Route, m: &Manifest) -> Result<()> {
        if self.store.blob_size(&m.digest).await?.is_some() {
            return Ok(());
        }
        self.store.put_verified(&m.digest, m.bytes.clone()).await?;
        self.link_manifest(route, m, None).await
    }

    /// Records that `m` belongs to the routed repository — fetched from `source` when that
    /// is not the repository itself — in the store and in memory.
    pub(super) async fn link_manifest(
        &self,
        route: &Route,
        m: &Manifest,
        source: Option<Source>,
    ) -> Result<()> {
        let link = ManifestLink {
            media_type: m.media_type.clone(),
            size: m.bytes.len() as u64,
            source,
        };
        self.store
            .put_record(
                &layout::manifest_link(self.upstream_name(route), &route.repo, &m.digest),
                &link,
            )
            .await?;
        self.manifest_links
            .insert(
                (route.upstream, route.repo.clone(), m.digest.clone()),
                m.media_type.as_str().into(),
            )
            .await;
        Ok(())
    }

    /// A manifest from memory or the store, verified against its digest.
    async fn load_manifest(&self, d: &Digest, media_type: &str) -> Result<Option<Arc<Manifest>>> {
        if let Some(m) = self.manifests.get(d).await {
            return Ok(Some(m));
        }
        let Some(bytes) = self.store.read_small(d).await? else {
            return Ok(None);
        };
        if !d.verify(&bytes) {
            tracing::warn!(digest = %d, "cached manifest does not match its digest; refetching");
            return Ok(None);
        }
        let m = Arc::new(Manifest {
            digest: d.clone(),
            media_type: media_type.to_string(),
            bytes,
        });
        self.manifests.insert(d.clone(), m.clone()).await;
        Ok(Some(m))
    }

    /// Fetches a manifest, verifies it, stores it and links it (and its blobs) to the repository.
    async fn fetch_and_store(
        &self,
        route: &Route,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<Arc<Manifest>> {
        let up = self.upstream(route);
        let fetched = up
            .get_manifest(&route.repo, reference)
            .await?
            .ok_or_else(|| {
                Error::ManifestUnknown(format!(
                    "{}:{reference} is unknown to upstream {}",
                    route.repo, up.name
                ))
            })?;
        // By digest, the request names the digest; by tag, the upstream's header does, and
        // without one the spec's canonical sha256 is used.
        let digest = match expected.or(fetched.digest.as_ref()) {
            Some(d) => d.clone(),
            None => Digest::sha256_of(&fetched.bytes),
        };
        if !digest.verify(&fetched.bytes) {
            let mut h = Hasher::new(digest.algorithm());
            h.update(&fetched.bytes);
            return Err(Error::DigestMismatch {
                expected: digest,
                actual: h.finish(),
            });
        }
        let refs = manifest::parse(&fetched.bytes, fetched.media_type.as_deref()).map_err(|e| {
            Error::ManifestInvalid(format!(
                "upstream {} sent an unusable manifest for {}:{reference}: {e}",
                up.name, route.repo
            ))
        })?;
        self.store
            .put_verified(&digest, fetched.bytes.clone())
            .await?;
        let store = &self.store;
        let blob_links = refs.blobs.iter().map(|(b, size)| async move {
            store
                .put_record(
                    &layout::blob_link(&up.name, &route.repo, b),
                    &BlobLink {
                        size: *size,
                        source: None,
                    },
                )
                .await
        });
        try_join_all(blob_links).await?;
        let m = Arc::new(Manifest {
            digest: digest.clone(),
            media_type: refs.media_type,
            bytes: fetched.bytes,
        });
        // Linked after its blobs: whoever finds the link finds them linked too.
        self.link_manifest(route, &m, None).await?;
        let own = Arc::new(route.clone());
        for (b, _) in &refs.blobs {
            self.blob_links
                .insert((route.upstream, route.repo.clone(), b.clone()), own.clone())
                .await;
        }
        self.manifests.insert(digest, m.clone()).await;
        Ok(m)
    }
}
