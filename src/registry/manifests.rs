//! Manifests: by tag with TTL revalidation and stale serving, by digest as immutable content,
//! fetched, verified and stored on a miss.
//!
//! A fresh tag whose manifest is in memory is answered without the store or the upstream:
//! that is the hot path of a cached pull.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::links::Links;
use super::provenance::{Provenance, Served};
use super::tags::{self, TagState, Tags};
use super::upstreams::Upstreams;
use super::{LinkKey, TagKey};
use crate::clock::now_millis;
use crate::error::{Error, Result};
use crate::gc::AccessLog;
use crate::metrics::Metrics;
use crate::oci::{manifest, Digest, Hasher, Reference, Tag};
use crate::routing::Route;
use crate::singleflight;
use crate::storage::records::TagRecord;
use crate::storage::Store;

/// A manifest as served: the upstream's exact bytes, their digest and media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Of `bytes`: verified on fetch and on load, computed for a synthesized index.
    pub digest: Digest,
    /// Sent as `Content-Type`: the upstream's, or the JSON's `mediaType` when that was
    /// absent or generic.
    pub media_type: String,
    /// Exactly as the upstream sent them, or as built here for a synthesized index.
    pub bytes: Bytes,
    /// Built on the first answer and shared by the rest: a cached manifest is answered
    /// thousands of times a second, and formatting its digest twice per answer was a
    /// measurable share of one.
    headers: OnceLock<Option<ManifestHeaders>>,
}

/// The response headers that depend on nothing but the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHeaders {
    pub content_type: http::HeaderValue,
    /// `"<digest>"`: manifests are content-addressed, so the digest is the entity tag.
    pub etag: http::HeaderValue,
    /// `Docker-Content-Digest`.
    pub digest: http::HeaderValue,
}

impl Manifest {
    pub fn new(digest: Digest, media_type: String, bytes: Bytes) -> Manifest {
        Manifest {
            digest,
            media_type,
            bytes,
            headers: OnceLock::new(),
        }
    }

    /// Its response headers; `None` when the media type cannot be sent as a header value
    /// (an upstream's, with bytes a header may not hold).
    pub fn headers(&self) -> Option<&ManifestHeaders> {
        self.headers
            .get_or_init(|| {
                let digest = self.digest.to_string();
                Some(ManifestHeaders {
                    content_type: http::HeaderValue::from_str(&self.media_type).ok()?,
                    etag: http::HeaderValue::from_str(&format!("\"{digest}\"")).ok()?,
                    digest: http::HeaderValue::from_str(&digest).ok()?,
                })
            })
            .as_ref()
    }
}

type Answer = Result<Served<Arc<Manifest>>>;

pub(crate) struct Manifests {
    store: Store,
    upstreams: Arc<Upstreams>,
    links: Arc<Links>,
    tags: Arc<Tags>,
    metrics: Metrics,
    access: Arc<AccessLog>,
    serve_stale: bool,
    /// Manifest bytes by digest, weighed by size.
    bytes: moka::future::Cache<Digest, Arc<Manifest>>,
    tag_flights: singleflight::Group<TagKey, Answer>,
    digest_flights: singleflight::Group<LinkKey, Answer>,
}

/// What `Manifests::new` needs besides the other parts.
pub(crate) struct ManifestSettings {
    pub(crate) serve_stale: bool,
    /// Budget of the in-memory cache, in bytes.
    pub(crate) memory: u64,
}

impl Manifests {
    pub(crate) fn new(
        store: Store,
        upstreams: Arc<Upstreams>,
        links: Arc<Links>,
        tags: Arc<Tags>,
        metrics: Metrics,
        access: Arc<AccessLog>,
        settings: ManifestSettings,
    ) -> Manifests {
        let bytes = moka::future::Cache::builder()
            .weigher(|_k: &Digest, m: &Arc<Manifest>| {
                u32::try_from(m.bytes.len() + 256).unwrap_or(u32::MAX)
            })
            .max_capacity(settings.memory)
            .build();
        Manifests {
            store,
            upstreams,
            links,
            tags,
            metrics,
            access,
            serve_stale: settings.serve_stale,
            bytes,
            tag_flights: Default::default(),
            digest_flights: Default::default(),
        }
    }

    /// The manifest `reference` names in the routed repository.
    pub(crate) async fn get(&self, route: &Route, reference: &Reference) -> Answer {
        let m = match reference {
            Reference::Tag(t) => self.by_tag(route, t).await,
            Reference::Digest(d) => self.by_digest(route, d).await,
        }?;
        self.note_use(route, &m.value.digest);
        Ok(m)
    }

    /// Notes that `digest` was served for the routed repository (for the bounded cache).
    pub(crate) fn note_use(&self, route: &Route, digest: &Digest) {
        self.access
            .manifest(self.upstreams.name(route), &route.repo, digest);
    }

    async fn by_tag(&self, route: &Route, tag: &Tag) -> Answer {
        if let Some(st) = self.tags.in_memory(route, tag).await {
            if st.fresh(now_millis()) {
                if let Some(m) = self.bytes.get(&st.record.digest).await {
                    return Ok(self.hit("tag", m));
                }
            }
        }
        let (answer, ran) = self
            .tag_flights
            // Boxed: only the request that resolves the tag runs it, and the ones answered from
            // memory, or waiting on it, need not carry it (http::tests).
            .run(tags::key(route, tag), || {
                Box::pin(self.resolve_tag(route, tag))
            })
            .await;
        if ran {
            answer
        } else {
            answer.map(Served::joined)
        }
    }

    /// A tag not answerable from memory: its record, revalidated with a HEAD once stale,
    /// fetched again when it moved.
    async fn resolve_tag(&self, route: &Route, tag: &Tag) -> Answer {
        let now = now_millis();
        if let Some(st) = self.tags.load(route, tag).await? {
            if let Some(served) = self.revalidate(route, tag, &st, now).await? {
                return Ok(served);
            }
        }
        self.metrics.cache_misses.with_label_values(&["tag"]).inc();
        let m = self.fetch_and_store(route, tag.as_str(), None).await?;
        let record = TagRecord {
            digest: m.digest.clone(),
            media_type: m.media_type.clone(),
            size: m.bytes.len() as u64,
            checked_at: now,
        };
        self.tags.record(route, tag, record).await?;
        Ok(Served::new(m, Provenance::Upstream))
    }

    /// Serves a known tag from the cache if it is fresh, or if a HEAD says it has not moved,
    /// or (stale) if the upstream is unavailable. `None`: fetch it.
    async fn revalidate(
        &self,
        route: &Route,
        tag: &Tag,
        st: &Arc<TagState>,
        now: u64,
    ) -> Result<Option<Served<Arc<Manifest>>>> {
        let rec = &st.record;
        if st.fresh(now) {
            if let Some(m) = self.load(&rec.digest, &rec.media_type).await? {
                self.tags.remember(route, tag, st.clone()).await;
                return Ok(Some(self.hit("tag", m)));
            }
        }
        let up = self.upstreams.remote(route);
        // Out of rate budget: what is cached is served past its TTL, as during an outage,
        // rather than spending pulls.
        if up.budget_low() {
            if let Some(m) = self.load(&rec.digest, &rec.media_type).await? {
                self.metrics.stale_serves.inc();
                self.tags.trust_for_a_ttl(route, tag, st, now).await;
                return Ok(Some(Served::new(m, Provenance::Stale)));
            }
        }
        // A HEAD: it does not count against Docker Hub's pull limit.
        match up.head_manifest(&route.repo, tag.as_str()).await {
            Ok(Some(head)) if head.digest.as_ref() == Some(&rec.digest) => {
                let Some(m) = self.load(&rec.digest, &rec.media_type).await? else {
                    return Ok(None);
                };
                self.restore_if_evicted(route, &m).await?;
                let record = TagRecord {
                    checked_at: now,
                    ..rec.clone()
                };
                self.tags.record(route, tag, record).await?;
                Ok(Some(self.hit("tag", m)))
            }
            // Moved, or no digest given: fetch it.
            Ok(Some(_)) => Ok(None),
            Ok(None) => {
                self.tags.forget(route, tag).await;
                Err(Error::ManifestUnknown(format!(
                    "{}:{tag} no longer exists upstream ({})",
                    route.repo,
                    up.name()
                )))
            }
            Err(e) if e.is_unavailable() && self.serve_stale => {
                let Some(m) = self.load(&rec.digest, &rec.media_type).await? else {
                    return Err(e.into());
                };
                tracing::warn!(
                    upstream = %up.name(), repository = %route.repo, tag = %tag,
                    digest = %rec.digest, error = %crate::causes::Chain(&e),
                    "upstream unavailable; serving the last known manifest"
                );
                self.metrics.stale_serves.inc();
                self.tags.trust_for_a_ttl(route, tag, st, now).await;
                Ok(Some(Served::new(m, Provenance::Stale)))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn by_digest(&self, route: &Route, d: &Digest) -> Answer {
        if self.links.knows_manifest(route, d) {
            if let Some(m) = self.bytes.get(d).await {
                return Ok(self.hit("manifest", m));
            }
        }
        let key = (route.upstream, route.repo.clone(), d.clone());
        let (answer, ran) = self
            .digest_flights
            // Boxed, as in `by_tag`.
            .run(key, || {
                Box::pin(async {
                    if let Some(mt) = self.links.manifest(route, d).await? {
                        if let Some(m) = self.load(d, &mt).await? {
                            return Ok(self.hit("manifest", m));
                        }
                    }
                    self.metrics
                        .cache_misses
                        .with_label_values(&["manifest"])
                        .inc();
                    let m = self.fetch_and_store(route, &d.to_string(), Some(d)).await?;
                    Ok(Served::new(m, Provenance::Upstream))
                })
            })
            .await;
        if ran {
            answer
        } else {
            answer.map(Served::joined)
        }
    }

    fn hit(&self, kind: &str, m: Arc<Manifest>) -> Served<Arc<Manifest>> {
        self.metrics.cache_hits.with_label_values(&[kind]).inc();
        Served::new(m, Provenance::Cache)
    }

    /// Puts back a manifest that was served from memory while a collection (here or on
    /// another replica) removed it from the store, so the tag record written next never
    /// points at nothing. Runs on revalidation only: once per tag TTL, not per request.
    async fn restore_if_evicted(&self, route: &Route, m: &Manifest) -> Result<()> {
        if self.store.blob_size(&m.digest).await?.is_some() {
            return Ok(());
        }
        self.store.put_verified(&m.digest, m.bytes.clone()).await?;
        self.links.link_manifest(route, m, route).await
    }

    /// A manifest from memory or the store, verified against its digest.
    pub(crate) async fn load(&self, d: &Digest, media_type: &str) -> Result<Option<Arc<Manifest>>> {
        if let Some(m) = self.bytes.get(d).await {
            return Ok(Some(m));
        }
        let Some(bytes) = self.store.read_small(d).await? else {
            return Ok(None);
        };
        if !d.verify(&bytes) {
            tracing::warn!(digest = %d, "cached manifest does not match its digest; refetching");
            return Ok(None);
        }
        let m = Arc::new(Manifest::new(d.clone(), media_type.to_string(), bytes));
        self.bytes.insert(d.clone(), m.clone()).await;
        Ok(Some(m))
    }

    /// Keeps a manifest built here (a synthesized index) in memory.
    pub(crate) async fn remember(&self, m: Arc<Manifest>) {
        self.bytes.insert(m.digest.clone(), m).await;
    }

    /// Fetches a manifest, verifies it, stores it and links it (and its blobs) to the
    /// repository.
    async fn fetch_and_store(
        &self,
        route: &Route,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<Arc<Manifest>> {
        let up = self.upstreams.remote(route);
        let fetched = up
            .get_manifest(&route.repo, reference)
            .await?
            .ok_or_else(|| {
                Error::ManifestUnknown(format!(
                    "{}:{reference} is unknown to upstream {}",
                    route.repo,
                    up.name()
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
            Error::ManifestUnusable {
                upstream: up.name().to_string(),
                reference: format!("{}:{reference}", route.repo),
                cause: Arc::new(e),
            }
        })?;
        self.store
            .put_verified(&digest, fetched.bytes.clone())
            .await?;
        let m = Arc::new(Manifest::new(
            digest.clone(),
            refs.media_type,
            fetched.bytes,
        ));
        // Linked after its blobs: whoever finds the link finds them linked too.
        let own = Arc::new(route.clone());
        self.links.link_blobs(route, &refs.blobs, &own).await?;
        self.links.link_manifest(route, &m, route).await?;
        self.bytes.insert(digest, m.clone()).await;
        Ok(m)
    }

    /// Forgets the bytes of a manifest a collection deleted.
    pub(crate) async fn forget(&self, d: &Digest) {
        self.bytes.invalidate(d).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::testing::{self, Fixture};

    fn tag(t: &str) -> Reference {
        Reference::Tag(t.parse().unwrap())
    }

    #[tokio::test]
    async fn a_tag_is_fetched_once_then_served_from_memory() {
        let f = Fixture::new("1h", "");
        let img = testing::Image::new("linux/amd64", 1);
        img.push(&f.hub, "team/app", "v1");
        let route = f.route("team/app");
        let m = f.tag("team/app", "v1").await;
        assert_eq!(m.provenance, Provenance::Upstream);
        assert_eq!(m.value.digest, img.digest);
        assert_eq!(
            &m.value.bytes[..],
            &img.manifest[..],
            "the upstream's bytes"
        );
        let again = f.tag("team/app", "v1").await;
        assert_eq!(again.provenance, Provenance::Cache);
        assert_eq!(f.hub.count("GET team/app/manifests/v1"), 1);
        assert_eq!(
            f.hub.count("HEAD team/app/manifests/v1"),
            0,
            "fresh: not revalidated"
        );
        // By digest too, from the link the tag fetch wrote.
        let by_digest = Reference::Digest(img.digest.clone());
        let d = f.registry.manifests.get(&route, &by_digest).await.unwrap();
        assert_eq!(d.provenance, Provenance::Cache);
        assert_eq!(f.hub.total(), 1);
    }

    #[tokio::test]
    async fn a_stale_tag_is_revalidated_with_a_head_and_refetched_when_it_moved() {
        let f = Fixture::new("0s", "");
        let (a, b) = (
            testing::Image::new("linux/amd64", 1),
            testing::Image::new("linux/amd64", 2),
        );
        a.push(&f.hub, "app", "latest");
        let m = f.tag("app", "latest").await;
        assert_eq!(m.value.digest, a.digest);
        let m = f.tag("app", "latest").await;
        assert_eq!(
            (m.provenance, &m.value.digest),
            (Provenance::Cache, &a.digest)
        );
        assert_eq!(f.hub.count("HEAD app/manifests/latest"), 1);
        assert_eq!(f.hub.count("GET app/manifests/latest"), 1);
        b.push(&f.hub, "app", "latest");
        let m = f.tag("app", "latest").await;
        assert_eq!(
            (m.provenance, &m.value.digest),
            (Provenance::Upstream, &b.digest)
        );
        assert_eq!(f.hub.count("GET app/manifests/latest"), 2);
    }

    #[tokio::test]
    async fn an_unavailable_upstream_gets_the_last_known_manifest_unless_stale_serving_is_off() {
        for serve_stale in [true, false] {
            let f = Fixture::new("0s", &format!("serve_stale = {serve_stale}"));
            let img = testing::Image::new("linux/amd64", 3);
            img.push(&f.hub, "app", "v1");
            let route = f.route("app");
            f.tag("app", "v1").await;
            for status in [503, 500, 429] {
                f.hub.set_down(Some(status));
                let got = f.registry.manifests.get(&route, &tag("v1")).await;
                if serve_stale {
                    let m = got.unwrap();
                    assert_eq!(m.provenance, Provenance::Stale, "{status}");
                    assert_eq!(m.value.digest, img.digest);
                    f.hub.set_down(None);
                    let next = f.tag("app", "v1").await;
                    assert_eq!(next.provenance, Provenance::Cache, "revalidated once back");
                } else {
                    let e = got.unwrap_err();
                    assert!(e.is_upstream_unavailable(), "{status}: {e:?}");
                    f.hub.set_down(None);
                }
            }
            // Forbidden is not an outage: never served stale.
            f.hub.set_down(Some(403));
            let e = f
                .registry
                .manifests
                .get(&route, &tag("v1"))
                .await
                .unwrap_err();
            assert_eq!(e.code(), "DENIED");
        }
    }

    #[tokio::test]
    async fn a_manifest_that_does_not_match_its_digest_is_never_stored() {
        let f = Fixture::new("1h", "");
        let img = testing::Image::new("linux/amd64", 4);
        img.push(&f.hub, "app", "v1");
        // Another manifest's bytes under this digest: an upstream that lies.
        let other = testing::Image::new("linux/amd64", 5);
        f.hub.push_manifest_as("app", &img.digest, &other.manifest);
        let route = f.route("app");
        let e = f
            .registry
            .manifests
            .get(&route, &Reference::Digest(img.digest.clone()))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::DigestMismatch { .. }), "{e:?}");
        assert_eq!(f.store.blob_size(&img.digest).await.unwrap(), None);
        assert!(!f.registry.links.knows_manifest(&route, &img.digest));
    }

    #[tokio::test]
    async fn concurrent_requests_for_one_tag_make_one_upstream_request() {
        let f = Fixture::new("1h", "");
        testing::Image::new("linux/amd64", 6).push(&f.hub, "app", "v1");
        let route = f.route("app");
        let v1 = tag("v1");
        let answers =
            futures_util::future::join_all((0..8).map(|_| f.registry.manifests.get(&route, &v1)))
                .await;
        let provenances: Vec<Provenance> =
            answers.into_iter().map(|a| a.unwrap().provenance).collect();
        assert_eq!(f.hub.count("GET app/manifests/v1"), 1);
        assert_eq!(
            provenances
                .iter()
                .filter(|p| **p == Provenance::Upstream)
                .count(),
            1
        );
        assert_eq!(
            provenances
                .iter()
                .filter(|p| **p == Provenance::Joined)
                .count(),
            7,
            "the others waited for that one request: {provenances:?}"
        );
    }
}
