//! The mirror's services: what to answer for a manifest, blob or tag-list request, from the
//! cache when it can and from the upstream when it must.
//!
//! [`Registry`] wires parts that each own one job:
//! - `manifests`: by tag (TTL, revalidation, stale serving) and by digest, fetched and
//!   verified on a miss;
//! - `blobs`: served from the store, or streamed from a fill every concurrent request shares;
//! - `links`: which content belongs to which repository (the only reader and writer of links);
//! - `tags`: tag records, and the upstream's tag lists;
//! - `synthesis`: the index of a repository with fallback rules;
//! - `signatures`: archway's signatures of what synthesis built, in cosign's formats;
//! - `referrers`: the manifests that refer to a manifest (signatures, SBOMs, attestations).
//!
//! The in-memory caches (moka) front the object store; a cached manifest hit touches neither
//! the store nor the upstream.

mod blobs;
mod inspect;
mod links;
mod manifests;
mod provenance;
mod referrers;
mod signatures;
mod synthesis;
mod tags;
#[cfg(test)]
mod testing;
mod upstreams;
pub mod warming;

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::config::{Config, StorageConfig};
use crate::error::{Error, Result};
use crate::gc::{AccessLog, Collector, Report};
use crate::hosted::{self, remote::HostedRemote, Hosted};
use crate::metrics::Metrics;
use crate::oci::media::{is_index, Accept};
use crate::oci::{cosign, index, Digest, Platform, Reference, RepoName, Tag};
use crate::range::RangeSpec;
use crate::routing::{Fallbacks, Route, Router};
use crate::storage::{Fills, OpenError, Store};
use crate::upstream::{BuildError, Remote, TagPage, Upstream};

pub use blobs::{BlobAnswer, BlobBody};

/// A fill as this replica streams it to a peer.
pub struct PeerFill {
    /// The whole blob's size, when known.
    pub size: Option<u64>,
    /// The bytes from the offset asked for.
    pub stream: crate::storage::ByteStream,
}
pub use manifests::Manifest;
pub use provenance::{Provenance, Served};
pub use referrers::ReferrersList;
pub use synthesis::{PlatformRow, Resolution, FALLBACK_ANNOTATION};

/// A repository's content, keyed by upstream index, repository and digest.
type LinkKey = (usize, RepoName, Digest);
/// A repository's tag.
type TagKey = (usize, RepoName, Tag);

/// What outlives a configuration reload: the store and its in-flight fills, the metrics, and
/// the access times not yet written out.
#[derive(Clone)]
pub struct Shared {
    /// The object store the cache lives in (`storage.url`).
    pub store: Store,
    /// Kept across reloads, so counters do not reset.
    pub metrics: Metrics,
    /// Blob fills in flight, which a reload must not interrupt.
    pub fills: Fills,
    /// Access times not yet written to the store's journals, for the bounded cache.
    pub access: Arc<AccessLog>,
    /// With `[cluster]`: this replica's membership, through which fills are coordinated.
    pub cluster: Option<Arc<Cluster>>,
}

impl Shared {
    pub fn open(storage: &StorageConfig) -> Result<Shared, OpenError> {
        let store = Store::open(storage)?;
        Ok(Shared {
            fills: Fills::new(store.clone()),
            store,
            metrics: Metrics::new(),
            access: Arc::new(AccessLog::new(storage.gc.max_size.is_some())),
            cluster: None,
        })
    }

    /// The bounded cache's collector over this store.
    pub fn collector(&self, storage: &StorageConfig) -> Collector {
        Collector::new(self.store.clone(), storage.gc.clone(), self.access.clone())
    }
}

/// Everything a running mirror serves from, built from a [`Config`] (again on each reload).
pub struct Registry {
    /// The configuration this registry was built from.
    pub config: Config,
    /// The same store as `Shared::store`; the admin listener's `/readyz` probes it.
    pub store: Store,
    /// The same as `Shared::metrics`; the admin listener's `/metrics` renders them.
    pub metrics: Metrics,
    router: Router,
    upstreams: Arc<Upstreams>,
    fills: Fills,
    links: Arc<Links>,
    tags: Arc<Tags>,
    manifests: Arc<Manifests>,
    blobs: Arc<Blobs>,
    signatures: Arc<Signatures>,
    referrers: Referrers,
    synthesis: Synthesis,
    cluster: Option<Arc<Cluster>>,
    hosted: Arc<Hosted>,
    warmer: Warmer,
    prewarm: Option<Arc<Prewarm>>,
    /// The tags served recently, for the console's coverage page: when each was last
    /// resolved here.
    recent: moka::sync::Cache<TagKey, u64>,
}

/// Tags the console remembers at most.
const RECENT_TAGS: u64 = 50_000;

use blobs::Blobs;
use links::Links;
use manifests::{ManifestSettings, Manifests};
use referrers::Referrers;
use signatures::{SignatureSettings, Signatures};
use synthesis::Synthesis;
use tags::Tags;
use upstreams::Upstreams;
use warming::{Prewarm, Warmer};

impl Registry {
    /// A registry whose upstreams are the configured registries, over HTTP.
    pub fn new(config: Config, shared: &Shared) -> Result<Registry, BuildError> {
        let remotes = config
            .upstreams
            .iter()
            .map(|u| {
                Upstream::new(u, shared.metrics.clone()).map(|u| Arc::new(u) as Arc<dyn Remote>)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Registry::with_remotes(config, shared, remotes))
    }

    /// A registry over the given upstreams, one per `[[upstream]]` in config order.
    pub fn with_remotes(
        config: Config,
        shared: &Shared,
        remotes: Vec<Arc<dyn Remote>>,
    ) -> Registry {
        let Shared {
            store,
            metrics,
            fills,
            access,
            cluster,
        } = shared.clone();
        let router = Router::new(&config.upstreams, &config.hosted);
        // Hosted registries come after the upstreams, as in the routing table, read through
        // the same interface (what fallback rules that name them use).
        let hosted = Arc::new(Hosted::new(store.clone(), config.hosted.clone()));
        let mut remotes = remotes;
        remotes.extend(
            config
                .hosted
                .iter()
                .map(|h| Arc::new(HostedRemote::new(hosted.clone(), &h.name)) as Arc<dyn Remote>),
        );
        let upstreams = Arc::new(Upstreams::new(remotes));
        // With a bounded cache, another replica's collection may unlink what this one holds in
        // memory. Forgetting links and tags within gc_min_age means nothing evicted (unused
        // for longer than that) is still believed here; the manifest bytes themselves are
        // only served through a link or tag, so they can stay.
        let forget_after = config
            .storage
            .gc
            .max_size
            .map(|_| config.storage.gc.min_age.max(Duration::from_secs(1)));
        let ttl = config.cache.tag_ttl;
        let links = Arc::new(Links::new(store.clone(), upstreams.clone(), forget_after));
        let tags = Arc::new(Tags::new(
            store.clone(),
            upstreams.clone(),
            ttl,
            forget_after,
        ));
        let manifests = Arc::new(Manifests::new(
            store.clone(),
            upstreams.clone(),
            links.clone(),
            tags.clone(),
            metrics.clone(),
            access.clone(),
            ManifestSettings {
                serve_stale: config.cache.serve_stale,
                memory: config.cache.memory,
            },
        ));
        let blobs = Arc::new(Blobs::new(
            blobs::Parts {
                store: store.clone(),
                fills: fills.clone(),
                links: links.clone(),
                upstreams: upstreams.clone(),
                metrics: metrics.clone(),
                access,
                cluster: cluster.clone(),
            },
            config.storage.redirect.clone(),
        ));
        let signatures = Arc::new(Signatures::new(
            store.clone(),
            upstreams.clone(),
            links.clone(),
            manifests.clone(),
            metrics.clone(),
            SignatureSettings {
                key: config.signing.as_ref().map(|s| s.key.clone()),
                registries: config
                    .upstreams
                    .iter()
                    .map(|u| u.hosts.first().unwrap_or(&u.name).clone())
                    .chain(
                        config
                            .hosted
                            .iter()
                            .map(|h| h.hosts.first().unwrap_or(&h.name).clone()),
                    )
                    .collect(),
                ttl,
                forget_after,
            },
        ));
        let referrers = Referrers::new(referrers::Parts {
            store: store.clone(),
            upstreams: upstreams.clone(),
            links: links.clone(),
            manifests: manifests.clone(),
            signatures: signatures.clone(),
            metrics: metrics.clone(),
            ttl,
            serve_stale: config.cache.serve_stale,
            forget_after,
        });
        let synthesis = Synthesis::new(
            router.clone(),
            Fallbacks::new(&config.fallbacks, &router),
            synthesis::Parts {
                store: store.clone(),
                manifests: manifests.clone(),
                blobs: blobs.clone(),
                links: links.clone(),
                upstreams: upstreams.clone(),
                signatures: signatures.clone(),
                metrics: metrics.clone(),
            },
            forget_after.map_or(ttl, |t| t.min(ttl)),
        );
        let warmer = Warmer {
            manifests: manifests.clone(),
            blobs: blobs.clone(),
            upstreams: upstreams.clone(),
            metrics: metrics.clone(),
        };
        let prewarm = Prewarm::new(&config.multiarch, warmer.clone());
        Registry {
            warmer,
            prewarm,
            recent: moka::sync::Cache::builder()
                .max_capacity(RECENT_TAGS)
                .time_to_idle(Duration::from_secs(7 * 24 * 3600))
                .build(),
            config,
            store,
            metrics,
            router,
            upstreams,
            fills,
            links,
            tags,
            manifests,
            blobs,
            signatures,
            referrers,
            synthesis,
            cluster,
            hosted,
        }
    }

    /// Routes a repository name as the client sent it, with containerd's `?ns=` if any.
    pub fn route(&self, name: &RepoName, ns: Option<&str>) -> Result<Route> {
        self.router.route(name, ns)
    }

    /// How many upstreams are configured.
    pub fn upstream_count(&self) -> usize {
        self.config.upstreams.len()
    }

    /// Each configured upstream's name and state (last success, last error, rate budget).
    pub fn upstream_statuses(&self) -> Vec<(String, crate::upstream::health::UpstreamStatus)> {
        (0..self.config.upstreams.len())
            .map(|i| {
                let r = self.upstreams.at(i);
                (r.name().to_string(), r.status())
            })
            .collect()
    }

    /// The fills in flight, with the bytes each has so far.
    pub fn fills_progress(&self) -> Vec<crate::storage::fill::InFlight> {
        self.fills.in_flight()
    }

    /// Whether the image `d` is wholly in the store: the manifest, its config and layers
    /// (an index: every manifest it lists, wholly). No upstream is asked.
    pub async fn cached_image(&self, d: &Digest) -> Result<bool> {
        let Some(bytes) = self.store.read_small(d).await? else {
            return Ok(false);
        };
        let refs = match crate::oci::manifest::parse(&bytes, None) {
            Ok(r) => r,
            Err(_) => return Ok(false),
        };
        for (b, _) in &refs.blobs {
            if !self.blobs.is_cached(b).await? {
                return Ok(false);
            }
        }
        for child in &refs.manifests {
            if self.store.read_small(&child.digest).await?.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// How a route's repository is named on the console: `upstream/repository`.
    pub fn route_name(&self, route: &Route) -> String {
        format!("{}/{}", self.upstreams.name(route), route.repo)
    }

    /// The manifest `reference` names, as stored (no synthesis, no platform resolution).
    pub async fn manifest(
        &self,
        route: &Route,
        reference: &Reference,
    ) -> Result<Served<Arc<Manifest>>> {
        self.manifests.get(route, reference).await
    }

    /// The manifest a client gets for `reference`: after fallback synthesis for tags, and
    /// resolved to one platform when the client's `Accept` names no index type.
    pub async fn manifest_for_client(
        &self,
        route: &Route,
        reference: &Reference,
        accept: &Accept,
        user_agent: Option<&str>,
    ) -> Result<Served<Arc<Manifest>>> {
        let tag = match reference {
            Reference::Digest(d) => {
                let m = self.manifests.get(route, reference).await?;
                if let Some(p) = &self.prewarm {
                    p.pulled(route, d);
                }
                return Ok(m);
            }
            Reference::Tag(t) => t,
        };
        let served = self.tag_manifest(route, tag).await?;
        if !is_index(&served.value.media_type) || accept.names_index() {
            return Ok(served);
        }
        // As Docker Hub does for clients that cannot read an index: the manifest for the
        // client's platform (from a Docker-style User-Agent), else the default platform.
        let want = user_agent
            .and_then(Platform::from_user_agent)
            .unwrap_or_else(|| self.config.multiarch.default_platform.clone());
        let child = self.platform_manifest(route, tag, &served.value, &want)?;
        let m = self
            .manifests
            .get(route, &Reference::Digest(child.clone()))
            .await?;
        if let Some(p) = &self.prewarm {
            p.pulled(route, &child);
        }
        Ok(Served::new(m.value, served.provenance.and(m.provenance)))
    }

    /// The digest of the entry of `index` that serves `want`.
    fn platform_manifest(
        &self,
        route: &Route,
        tag: &Tag,
        m: &Manifest,
        want: &Platform,
    ) -> Result<Digest> {
        let v: serde_json::Value = serde_json::from_slice(&m.bytes)
            .map_err(|e| Error::ManifestInvalid(format!("index of {}:{tag}: {e}", route.repo)))?;
        let entry = index::select(&v, want).map_err(|have| {
            let have: Vec<String> = have.iter().map(Platform::to_string).collect();
            Error::ManifestUnknown(format!(
                "{}:{tag} has no manifest for {want}; its platforms are: {}",
                route.repo,
                have.join(", ")
            ))
        })?;
        index::entry_digest(entry).map_err(|e| Error::ManifestInvalid(format!("index entry: {e}")))
    }

    /// What a tag serves: the upstream's manifest, or the synthesized index when a fallback
    /// rule covers the repository.
    pub async fn tag_manifest(&self, route: &Route, tag: &Tag) -> Result<Served<Arc<Manifest>>> {
        let covered = self.synthesis.rule(route).is_some();
        // `sha256-<hex>.sig` of something archway signs: archway's signature, with the
        // upstream's own if it has one. Only while a rule covers the repository, so removing
        // a fallback rule withdraws the signatures archway made under it. Boxed, as the
        // synthesis below: the other repositories' requests need not carry them.
        if covered {
            if let Some(sig) = Box::pin(self.signatures.legacy_tag(route, tag)).await? {
                return Ok(sig);
            }
        }
        // A tag derived from a digest (a signature, an attestation, a referrers index) is
        // the upstream's as it stands: there is no image to synthesize platforms for.
        if cosign::is_digest_tag(tag) {
            return self
                .manifests
                .get(route, &Reference::Tag(tag.clone()))
                .await;
        }
        let served = if covered {
            let r = Box::pin(self.synthesis.resolve(route, tag)).await?;
            let m = r.value.manifest.clone();
            self.manifests.note_use(route, &m.digest);
            Served::new(m, r.provenance)
        } else {
            self.manifests
                .get(route, &Reference::Tag(tag.clone()))
                .await?
        };
        self.served_tag(route, tag, &served);
        Ok(served)
    }

    /// Notes a tag served (for the console) and, for an index, which manifests it holds (for
    /// prewarming). From memory, a known tag costs one lookup.
    fn served_tag(&self, route: &Route, tag: &Tag, served: &Served<Arc<Manifest>>) {
        let key = tags::key(route, tag);
        if served.provenance == Provenance::Cache && self.recent.contains_key(&key) {
            return;
        }
        self.recent.insert(key, crate::clock::now_millis());
        if let Some(p) = &self.prewarm {
            if is_index(&served.value.media_type) {
                p.served_index(route, &served.value);
            }
        }
    }

    /// The tags served recently, as (route, tag, when last resolved).
    pub fn recent_tags(&self) -> Vec<(Route, Tag, u64)> {
        self.recent
            .iter()
            .map(|(k, at)| {
                let (upstream, repo, tag) = (*k).clone();
                (Route { upstream, repo }, tag, at)
            })
            .collect()
    }

    /// Fetches `reference` (`registry/repo:tag` or `registry/repo@digest`) into the cache for
    /// `platforms` (every platform of an index when empty), through the fills pulls use.
    pub async fn warm(
        &self,
        reference: &str,
        platforms: &[Platform],
        observer: &dyn warming::WarmObserver,
    ) -> Result<warming::WarmSummary> {
        let (route, reference) = self.route_reference(reference)?;
        let top = match &reference {
            Reference::Tag(t) => self.tag_manifest(&route, t).await?.value,
            Reference::Digest(_) => self.manifests.get(&route, &reference).await?.value,
        };
        let images = self.warmer.images(&route, &top, platforms).await?;
        let mut summary = warming::WarmSummary::default();
        for image in &images {
            let s = self
                .warmer
                .image(&route, image, observer, &|| false, None)
                .await;
            summary.add(s);
        }
        Ok(summary)
    }

    /// How a tag resolves platform by platform (synthesizing when a rule applies).
    pub async fn resolve(&self, route: &Route, tag: &Tag) -> Result<Resolution> {
        Ok(self
            .synthesis
            .resolve(route, tag)
            .await?
            .value
            .report
            .clone())
    }

    /// The size of a blob, as a HEAD request answers it. Never starts a fill.
    pub async fn blob_head(&self, route: &Route, d: &Digest) -> Result<u64> {
        self.blobs.head(route, d).await
    }

    /// A blob's bytes (or the requested range of them), or where in the object store the
    /// client reads them.
    pub async fn blob(
        &self,
        route: &Route,
        d: &Digest,
        range: Option<RangeSpec>,
    ) -> Result<BlobAnswer> {
        self.blobs.answer(route, d, range).await
    }

    /// The hosted registries (`[[hosted]]`).
    pub fn hosted(&self) -> &Arc<Hosted> {
        &self.hosted
    }

    /// The hosted repository a route names, when it routes to a hosted registry.
    pub fn hosted_repo(&self, route: &Route) -> Option<hosted::Repo> {
        let i = self.router.hosted(route)?;
        Some(hosted::Repo {
            registry: self.config.hosted.get(i)?.name.clone(),
            repo: route.repo.clone(),
        })
    }

    /// The size of blob `d` when it is cached and linked to the routed (upstream) repository:
    /// what a cross-repository mount from it may take, without asking the upstream.
    pub async fn cached_blob(&self, route: &Route, d: &Digest) -> Result<Option<u64>> {
        if self.links.blob(route, d).await?.is_none() {
            return Ok(None);
        }
        self.store.blob_size(d).await
    }

    /// With `[cluster]`: this replica's membership.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// For a peer replica: `d` from `offset` on, from this replica's fill of it while one
    /// runs (the last byte once verified, like any fill reader), else from the store.
    /// `None`: neither has it. No repository check: peers are authenticated by the cluster
    /// secret, and ask only for what a client of theirs was allowed.
    pub async fn peer_fill(&self, d: &Digest, offset: u64) -> Result<Option<PeerFill>> {
        if let Some(f) = self.fills.get(d) {
            let size = f.started().await.map_err(|e| (*e).clone())?;
            if let Some(size) = size.filter(|s| offset > *s) {
                return Err(Error::RangeInvalid { size });
            }
            return Ok(Some(PeerFill {
                size,
                stream: f.reader(offset, None),
            }));
        }
        let Some(size) = self.store.blob_size(d).await? else {
            return Ok(None);
        };
        if offset > size {
            return Err(Error::RangeInvalid { size });
        }
        Ok(self
            .store
            .read_blob(d, Some(offset..size))
            .await?
            .map(|stream| PeerFill {
                size: Some(size),
                stream,
            }))
    }

    /// The manifests whose `subject` is `d` (only those of `artifact_type`, when given).
    pub async fn referrers(
        &self,
        route: &Route,
        d: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Served<ReferrersList>> {
        let signs = self.synthesis.rule(route).is_some();
        self.referrers.list(route, d, artifact_type, signs).await
    }

    /// The fingerprint of the key archway signs with, when `[signing]` is configured.
    pub fn signing_fingerprint(&self) -> Option<String> {
        self.signatures.fingerprint()
    }

    /// One page of the upstream's tag list.
    pub async fn tags(&self, route: &Route, n: Option<u32>, last: Option<&Tag>) -> Result<TagPage> {
        tags::list(&self.upstreams, route, n, last).await
    }

    /// Drops in-memory state that may name what a collection just deleted.
    pub async fn forget_evicted(&self, report: &Report) {
        self.tags.forget_all();
        self.links.forget_all();
        self.synthesis.forget_all();
        self.signatures.forget_all();
        self.referrers.forget_all();
        for (d, _) in &report.plan.content {
            self.manifests.forget(d).await;
            self.blobs.forget(d).await;
        }
    }

    /// Blob fills in progress, with the bookkeeping that links what they cached.
    pub fn fills_in_flight(&self) -> usize {
        let recording = usize::try_from(self.metrics.fills_in_flight.get()).unwrap_or(0);
        self.fills.len().max(recording)
    }

    /// Cluster fill leases held, or released but not yet deleted from the store.
    pub fn fill_leases_held(&self) -> usize {
        usize::try_from(self.metrics.fill_leases_held.get()).unwrap_or(0)
    }
}

/// An in-memory cache of `max` entries, each forgotten `ttl` after it was written.
fn bounded<K, V>(max: u64, ttl: Option<Duration>) -> moka::future::Cache<K, V>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    let b = moka::future::Cache::builder().max_capacity(max);
    match ttl {
        Some(t) => b.time_to_live(t).build(),
        None => b.build(),
    }
}
