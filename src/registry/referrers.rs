//! Referrers: the manifests whose `subject` is a given manifest (signatures, SBOMs,
//! attestations), as the OCI 1.1 referrers API lists them.
//!
//! Taken from the upstream's referrers API when it has one, else from the referrers tag
//! schema (an index at the tag `sha256-<hex>`, what cosign v3 and oras write to registries
//! without the API). Lists are kept like tags: trusted for the tag TTL, served stale when
//! the upstream fails, and from the store after a restart. Every manifest listed is fetched
//! and linked, so it and its blobs are readable through archway by digest. archway's own
//! signature joins the list for what it signs.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

use super::links::Links;
use super::manifests::Manifests;
use super::provenance::{Provenance, Served};
use super::signatures::{Signatures, NOTE_UPSTREAM_DIGEST};
use super::upstreams::Upstreams;
use super::LinkKey;
use crate::clock::now_millis;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::oci::media::is_index;
use crate::oci::{cosign, index, Digest, Reference};
use crate::routing::Route;
use crate::singleflight;
use crate::storage::layout;
use crate::storage::records::ReferrersRecord;
use crate::storage::Store;

/// Upstream pages followed at most: a registry that links in circles stops here.
const MAX_PAGES: usize = 100;

/// Referrers listed at most for one manifest. Real images have a handful; a list past this
/// is an upstream being hostile or broken, and every entry costs a manifest fetch.
const MAX_REFERRERS: usize = 10_000;

/// Listed manifests fetched at the same time.
const PREFETCH: usize = 8;

/// What memory holds at most, counted in listed entries (so a few long lists cannot take
/// what many short ones would).
const MEMORY_ENTRIES: u64 = 1_000_000;

/// A referrers listing as answered.
pub struct ReferrersList {
    /// The OCI index.
    pub body: Vec<u8>,
    /// Whether an `artifactType` filter was applied (`OCI-Filters-Applied`).
    pub filtered: bool,
}

pub(crate) struct Referrers {
    store: Store,
    upstreams: Arc<Upstreams>,
    links: Arc<Links>,
    manifests: Arc<Manifests>,
    signatures: Arc<Signatures>,
    metrics: Metrics,
    ttl: Duration,
    serve_stale: bool,
    memory: moka::future::Cache<LinkKey, Arc<ReferrersRecord>>,
    flights: singleflight::Group<LinkKey, Result<Served<Arc<ReferrersRecord>>>>,
}

/// The other parts referrers build on, and the tag rules they follow.
pub(crate) struct Parts {
    pub(crate) store: Store,
    pub(crate) upstreams: Arc<Upstreams>,
    pub(crate) links: Arc<Links>,
    pub(crate) manifests: Arc<Manifests>,
    pub(crate) signatures: Arc<Signatures>,
    pub(crate) metrics: Metrics,
    pub(crate) ttl: Duration,
    pub(crate) serve_stale: bool,
    pub(crate) forget_after: Option<Duration>,
}

impl Referrers {
    pub(crate) fn new(p: Parts) -> Referrers {
        let memory = moka::future::Cache::builder()
            .max_capacity(MEMORY_ENTRIES)
            .weigher(|_, r: &Arc<ReferrersRecord>| {
                u32::try_from(r.manifests.len() + 1).unwrap_or(u32::MAX)
            });
        Referrers {
            store: p.store,
            upstreams: p.upstreams,
            links: p.links,
            manifests: p.manifests,
            signatures: p.signatures,
            metrics: p.metrics,
            ttl: p.ttl,
            serve_stale: p.serve_stale,
            memory: match p.forget_after {
                Some(t) => memory.time_to_live(t).build(),
                None => memory.build(),
            },
            flights: Default::default(),
        }
    }

    /// The referrers of `d` in the routed repository, only those of `artifact_type` when
    /// given. `signs`: archway's own signature joins the list when it vouches for `d`.
    pub(crate) async fn list(
        &self,
        route: &Route,
        d: &Digest,
        artifact_type: Option<&str>,
        signs: bool,
    ) -> Result<Served<ReferrersList>> {
        let vouch = match signs {
            true => self.signatures.vouched(route, d).await?,
            false => None,
        };
        // An index archway built exists nowhere upstream: nothing there refers to it.
        let built_here = vouch
            .as_ref()
            .is_some_and(|v| v.notes.contains_key(NOTE_UPSTREAM_DIGEST));
        let upstream = match built_here {
            true => None,
            false => match self.upstream_list(route, d).await {
                Ok(u) => Some(u),
                Err(e) if vouch.is_some() && e.is_upstream_unavailable() => {
                    tracing::warn!(
                        repository = %route.repo, digest = %d, error = %crate::causes::Chain(&e),
                        "upstream unavailable; listing archway's signature alone"
                    );
                    None
                }
                Err(e) => return Err(e),
            },
        };
        let mut manifests = upstream
            .as_ref()
            .map(|u| u.value.manifests.clone())
            .unwrap_or_default();
        let ours = match vouch {
            Some(_) => self.signatures.referrer(route, d).await?,
            None => None,
        };
        let source = match (&ours, &upstream) {
            (Some(_), _) => "synthesized",
            (None, Some(u)) if u.provenance == Provenance::Cache => "cache",
            (None, Some(u)) if u.value.source == "upstream_api" => "upstream_api",
            (None, _) => "tag_schema",
        };
        if let Some(ours) = ours {
            if !manifests.contains(&ours) {
                manifests.push(ours);
            }
        }
        let provenance = match (&upstream, built_here) {
            (Some(u), _) => u.provenance,
            (None, true) => Provenance::Synthesized,
            (None, false) => Provenance::Stale,
        };
        self.metrics
            .referrers_requests
            .with_label_values(&[source])
            .inc();
        if let Some(t) = artifact_type {
            manifests.retain(|m| m["artifactType"].as_str() == Some(t));
        }
        Ok(Served::new(
            ReferrersList {
                body: cosign::referrers_index(&manifests),
                filtered: artifact_type.is_some(),
            },
            provenance,
        ))
    }

    /// What the upstream lists for `d`: a fresh record from memory or the store, else asked
    /// again (once, however many ask at the same time), else the last one if it is down.
    async fn upstream_list(
        &self,
        route: &Route,
        d: &Digest,
    ) -> Result<Served<Arc<ReferrersRecord>>> {
        let k = (route.upstream, route.repo.clone(), d.clone());
        let fresh = |r: &ReferrersRecord| {
            now_millis() < r.checked_at.saturating_add(self.ttl.as_millis() as u64)
        };
        if let Some(r) = self.memory.get(&k).await.filter(|r| fresh(r)) {
            return Ok(Served::new(r, Provenance::Cache));
        }
        let (answer, ran) = self
            .flights
            .run(k.clone(), || async {
                let path = layout::referrers(self.upstreams.name(route), &route.repo, d);
                let known = match self.memory.get(&k).await {
                    Some(r) => Some(r),
                    None => self.store.get_record::<ReferrersRecord>(&path).await?.map(Arc::new),
                };
                if let Some(r) = known.clone().filter(|r| fresh(r)) {
                    self.memory.insert(k.clone(), r.clone()).await;
                    return Ok(Served::new(r, Provenance::Cache));
                }
                match self.fetch(route, d).await {
                    Ok(record) => {
                        // Kept across restarts for what is cached here; a listing for any
                        // other digest a client names stays in memory, so asking for
                        // random digests cannot fill the store.
                        if !record.manifests.is_empty()
                            || self.links.manifest(route, d).await?.is_some()
                        {
                            self.store.put_record(&path, &record).await?;
                        }
                        let record = Arc::new(record);
                        self.memory.insert(k.clone(), record.clone()).await;
                        Ok(Served::new(record, Provenance::Upstream))
                    }
                    Err(e) if e.is_upstream_unavailable() && self.serve_stale => match known {
                        Some(r) => {
                            tracing::warn!(
                                repository = %route.repo, digest = %d, error = %crate::causes::Chain(&e),
                                "upstream unavailable; serving the last known referrers"
                            );
                            Ok(Served::new(r, Provenance::Stale))
                        }
                        None => Err(e),
                    },
                    Err(e) => Err(e),
                }
            })
            .await;
        if ran {
            answer
        } else {
            answer.map(Served::joined)
        }
    }

    /// Asks the upstream: its referrers API, every page, else the tag schema's index. Every
    /// manifest listed is fetched, so it is served by digest even when the upstream is not.
    async fn fetch(&self, route: &Route, d: &Digest) -> Result<ReferrersRecord> {
        let (source, manifests) = match self.listed_by_api(route, d).await? {
            Some(m) => ("upstream_api", m),
            None => ("tag_schema", self.listed_by_tag_schema(route, d).await?),
        };
        let fetches: Vec<_> = manifests.iter().filter_map(|m| {
            let child = index::entry_digest(m).ok()?;
            Some(async move {
                let got = self.manifests.get(route, &Reference::Digest(child.clone())).await;
                if let Err(e) = got {
                    tracing::warn!(
                        repository = %route.repo, referrer = %child, error = %crate::causes::Chain(&e),
                        "cannot fetch a referrer; listing it all the same"
                    );
                }
            })
        }).collect();
        futures_util::stream::iter(fetches)
            .buffer_unordered(PREFETCH)
            .collect::<Vec<()>>()
            .await;
        Ok(ReferrersRecord {
            checked_at: now_millis(),
            source: source.into(),
            manifests,
        })
    }

    async fn listed_by_api(&self, route: &Route, d: &Digest) -> Result<Option<Vec<Value>>> {
        let remote = self.upstreams.remote(route);
        let Some(mut page) = remote.referrers(&route.repo, d, None).await? else {
            return Ok(None);
        };
        let mut all = std::mem::take(&mut page.manifests);
        let mut pages = 1;
        while let Some(next) = page.next.take() {
            if pages == MAX_PAGES || all.len() >= MAX_REFERRERS {
                tracing::warn!(
                    repository = %route.repo, digest = %d, pages, listed = all.len(),
                    "the upstream's referrers list goes on; listing what came so far"
                );
                break;
            }
            match remote.referrers(&route.repo, d, Some(&next)).await? {
                Some(p) => {
                    page = p;
                    pages += 1;
                    all.append(&mut page.manifests);
                }
                None => break,
            }
        }
        if all.len() > MAX_REFERRERS {
            tracing::warn!(
                repository = %route.repo, digest = %d, listed = all.len(),
                "the upstream lists more than {MAX_REFERRERS} referrers; keeping the first"
            );
            all.truncate(MAX_REFERRERS);
        }
        Ok(Some(all))
    }

    /// The entries of the index at the tag `sha256-<hex>`, if there is one.
    async fn listed_by_tag_schema(&self, route: &Route, d: &Digest) -> Result<Vec<Value>> {
        let tag = cosign::referrers_tag(d)
            .parse()
            .map_err(|e| Error::Internal(format!("referrers tag for {d}: {e}")))?;
        let m = match self.manifests.get(route, &Reference::Tag(tag)).await {
            Ok(m) => m.value,
            Err(Error::ManifestUnknown(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        if !is_index(&m.media_type) {
            return Ok(Vec::new());
        }
        let v: Value = serde_json::from_slice(&m.bytes).unwrap_or_default();
        let entries = index::entries(&v);
        Ok(entries[..entries.len().min(MAX_REFERRERS)].to_vec())
    }

    pub(crate) fn forget_all(&self) {
        self.memory.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::media::{OCI_INDEX, OCI_MANIFEST};
    use crate::registry::testing::{Fixture, Image};
    use serde_json::json;

    const SBOM: &str = "application/spdx+json";
    const ATTESTATION: &str = "application/vnd.in-toto+json";

    /// An artifact manifest of `artifact_type` whose subject is `image`, pushed by digest
    /// with its blob; its descriptor as a referrers index lists it.
    fn push_referrer(
        f: &Fixture,
        repo: &str,
        image: &Image,
        artifact_type: &str,
        content: &[u8],
    ) -> Value {
        let blob = f.hub.push_blob(repo, content);
        let empty = f.hub.push_blob(repo, b"{}");
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": cosign::EMPTY_CONFIG, "digest": empty.to_string(), "size": 2},
            "layers": [{"mediaType": artifact_type, "digest": blob.to_string(), "size": content.len()}],
            "subject": {"mediaType": image.media_type, "digest": image.digest.to_string(), "size": image.manifest.len()},
            "annotations": {"org.example.kind": artifact_type},
        }))
        .unwrap();
        f.hub.push_manifest(repo, None, OCI_MANIFEST, &manifest);
        cosign::referrer_descriptor(&manifest, OCI_MANIFEST).unwrap()
    }

    fn listed(list: &ReferrersList) -> Vec<Value> {
        let v: Value = serde_json::from_slice(&list.body).unwrap();
        assert_eq!(v["mediaType"], OCI_INDEX);
        index::entries(&v).to_vec()
    }

    #[tokio::test]
    async fn the_tag_schema_is_read_filtered_and_kept_for_an_outage() {
        let f = Fixture::new("0s", "");
        let img = Image::new("linux/amd64", 500);
        img.push(&f.hub, "app", "v1");
        let sbom = push_referrer(&f, "app", &img, SBOM, b"sbom");
        let att = push_referrer(&f, "app", &img, ATTESTATION, b"attestation");
        // What cosign v3 and oras write on a registry without the API.
        let tag_index = cosign::referrers_index(&[sbom.clone(), att.clone()]);
        f.hub.push_manifest(
            "app",
            Some(&cosign::referrers_tag(&img.digest)),
            OCI_INDEX,
            &tag_index,
        );
        let route = f.route("app");

        let all = f
            .registry
            .referrers(&route, &img.digest, None)
            .await
            .unwrap();
        assert_eq!(listed(&all.value), [sbom.clone(), att.clone()]);
        assert!(!all.value.filtered);
        let sboms = f
            .registry
            .referrers(&route, &img.digest, Some(SBOM))
            .await
            .unwrap();
        assert_eq!(listed(&sboms.value), std::slice::from_ref(&sbom));
        assert!(sboms.value.filtered);
        assert_eq!(
            f.registry
                .metrics
                .referrers_requests
                .with_label_values(&["tag_schema"])
                .get(),
            2
        );
        // Nothing refers to the SBOM: an empty index, not an error.
        let sbom_digest: Digest = sbom["digest"].as_str().unwrap().parse().unwrap();
        let none = f
            .registry
            .referrers(&route, &sbom_digest, None)
            .await
            .unwrap();
        assert_eq!(listed(&none.value), Vec::<Value>::new());

        // The upstream goes down: the list, and what it lists, are served from the cache.
        f.hub.set_down(Some(503));
        let stale = f
            .registry
            .referrers(&route, &img.digest, None)
            .await
            .unwrap();
        assert_eq!(stale.provenance, Provenance::Stale);
        assert_eq!(listed(&stale.value), [sbom.clone(), att]);
        let m = f
            .registry
            .manifests
            .get(&route, &Reference::Digest(sbom_digest))
            .await
            .unwrap();
        assert_eq!(m.provenance, Provenance::Cache, "fetched when listed");
    }

    #[tokio::test]
    async fn the_upstreams_referrers_api_comes_first() {
        let f = Fixture::new("1h", "");
        let img = Image::new("linux/amd64", 600);
        img.push(&f.hub, "app", "v1");
        let sbom = push_referrer(&f, "app", &img, SBOM, b"sbom");
        f.hub.list_referrers("app", &img.digest, vec![sbom.clone()]);
        let route = f.route("app");
        let got = f
            .registry
            .referrers(&route, &img.digest, None)
            .await
            .unwrap();
        assert_eq!(listed(&got.value), [sbom]);
        assert_eq!(
            f.hub.count(&format!(
                "GET app/manifests/{}",
                cosign::referrers_tag(&img.digest)
            )),
            0,
            "the tag schema is not needed"
        );
        assert_eq!(
            f.registry
                .metrics
                .referrers_requests
                .with_label_values(&["upstream_api"])
                .get(),
            1
        );
        let again = f
            .registry
            .referrers(&route, &img.digest, None)
            .await
            .unwrap();
        assert_eq!(again.provenance, Provenance::Cache);
        assert_eq!(f.hub.count(&format!("GET app/referrers/{}", img.digest)), 1);
    }

    const RULE: &str = "[[fallback]]\nrepository = \"hub.test/app/go\"\n[fallback.platforms]\n\"linux/s390x\" = \"hub.test/app/go:s390x-{tag}\"\n";

    #[tokio::test]
    async fn archways_signature_is_listed_for_what_it_signs() {
        let key = crate::signing::SigningKey::generate();
        let mut f = Fixture::signing(&key, RULE);
        let amd64 = Image::new("linux/amd64", 700);
        amd64.push(&f.hub, "app/go", "latest");
        Image::new("linux/s390x", 701).push(&f.hub, "app/go", "s390x-latest");
        let index = f.resolve("app/go").await.value.manifest.clone();
        let route = f.route("app/go");
        let got = f
            .registry
            .referrers(&route, &index.digest, None)
            .await
            .unwrap();
        let entries = listed(&got.value);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["artifactType"], cosign::SIGNATURE_ARTIFACT);
        // The artifact is served by digest, and names the index as its subject.
        let d: Digest = entries[0]["digest"].as_str().unwrap().parse().unwrap();
        let m = f
            .registry
            .manifests
            .get(&route, &Reference::Digest(d))
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&m.value.bytes).unwrap();
        assert_eq!(v["subject"]["digest"], index.digest.to_string());
        assert_eq!(v["subject"]["size"], index.bytes.len());
        assert_eq!(
            f.registry
                .metrics
                .referrers_requests
                .with_label_values(&["synthesized"])
                .get(),
            1
        );
        // The index exists nowhere upstream: nothing there is asked about it.
        assert_eq!(
            f.hub
                .count(&format!("GET app/go/referrers/{}", index.digest)),
            0
        );
        assert_eq!(
            f.hub.count(&format!(
                "GET app/go/manifests/{}",
                cosign::referrers_tag(&index.digest)
            )),
            0
        );

        // An upstream entry archway signs: when the upstream cannot be asked, archway's
        // signature is the answer.
        f.hub.set_down(Some(503));
        let alone = f
            .registry
            .referrers(&route, &amd64.digest, None)
            .await
            .unwrap();
        assert_eq!(alone.provenance, Provenance::Stale);
        assert_eq!(listed(&alone.value).len(), 1);
        f.hub.set_down(None);

        // The rule is removed: archway no longer lists a signature of its own.
        f.reconfigure("");
        let route = f.route("app/go");
        let after = f
            .registry
            .referrers(&route, &amd64.digest, None)
            .await
            .unwrap();
        assert_eq!(listed(&after.value), Vec::<Value>::new());
    }

    #[tokio::test]
    async fn an_endless_upstream_list_is_cut_short() {
        let f = Fixture::new("1h", "");
        let img = Image::new("linux/amd64", 800);
        img.push(&f.hub, "app", "v1");
        let entry = |i: usize| {
            serde_json::json!({
                "mediaType": OCI_MANIFEST,
                "digest": Digest::sha256_of(i.to_string().as_bytes()).to_string(),
                "size": 100,
                "artifactType": SBOM,
            })
        };
        f.hub.list_referrers(
            "app",
            &img.digest,
            (0..MAX_REFERRERS + 5).map(entry).collect(),
        );
        let got = f
            .registry
            .referrers(&f.route("app"), &img.digest, None)
            .await
            .unwrap();
        assert_eq!(listed(&got.value).len(), MAX_REFERRERS);
    }
}
