//! The mirror's services: what to answer for a manifest, blob or tag-list request, from the
//! cache when it can and from the upstream when it must.
//!
//! Owns the in-memory caches (moka) that front the object store: manifest bytes, tag records
//! and per-repository links. A cached manifest hit touches neither the store nor the upstream.

mod blobs;
mod manifests;
mod multiarch;
mod records;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, StorageConfig};
use crate::error::{Error, Result};
use crate::gc::{AccessLog, Collector};
use crate::metrics::Metrics;
use crate::multiarch::Fallbacks;
use crate::oci::{Digest, RepoName, Tag};
use crate::routing::{Route, Router};
use crate::singleflight;
use crate::storage::{Fills, Store};
use crate::upstream::{TagPage, Upstream};

pub use blobs::{BlobBody, BlobSource};
pub use manifests::Manifest;
pub use multiarch::{PlatformRow, Resolution, Synthesis};
use records::TagState;

type LinkKey = (usize, RepoName, Digest);
type TagKey = (usize, RepoName, Tag);

tokio::task_local! {
    /// Where the manifest being answered came from (`cache`, `upstream`, `stale`), for the
    /// access log; set while [`with_outcome`] runs a request.
    static OUTCOME: std::cell::Cell<&'static str>;
}

/// Runs `f` (a request's registry call) and reports where its manifest came from, or `-`
/// when it joined another request's fetch.
pub async fn with_outcome<F: std::future::Future>(f: F) -> (F::Output, &'static str) {
    OUTCOME
        .scope(std::cell::Cell::new("-"), async {
            let v = f.await;
            (v, OUTCOME.with(|c| c.get()))
        })
        .await
}

/// Notes where content came from; the worse of two outcomes wins (a tag served stale whose
/// index was cached was served stale).
fn served_from(outcome: &'static str) {
    let rank = |o: &str| match o {
        "stale" => 3,
        "upstream" => 2,
        "cache" => 1,
        _ => 0,
    };
    let _ = OUTCOME.try_with(|c| {
        if rank(outcome) > rank(c.get()) {
            c.set(outcome);
        }
    });
}

/// What outlives a configuration reload: the store and its in-flight fills, the metrics, and
/// the access times not yet written out.
#[derive(Clone)]
pub struct Shared {
    pub store: Store,
    pub metrics: Metrics,
    pub fills: Fills,
    pub access: Arc<AccessLog>,
}

impl Shared {
    pub fn open(storage: &StorageConfig) -> Result<Shared, String> {
        let store = Store::open(storage)?;
        Ok(Shared {
            fills: Fills::new(store.clone()),
            store,
            metrics: Metrics::new(),
            access: Arc::new(AccessLog::new(storage.gc.max_size.is_some())),
        })
    }

    /// The bounded cache's collector over this store.
    pub fn collector(&self, storage: &StorageConfig) -> Collector {
        Collector::new(self.store.clone(), storage.gc.clone(), self.access.clone())
    }
}

/// Everything a running mirror serves from, built from a [`Config`] (again on each reload).
pub struct Registry {
    pub config: Config,
    pub router: Router,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Upstream names, shared by the access times noted for each request.
    upstream_names: Vec<Arc<str>>,
    pub store: Store,
    pub metrics: Metrics,
    access: Arc<AccessLog>,
    fills: Fills,
    /// Manifest bytes by digest, weighed by size.
    manifests: moka::future::Cache<Digest, Arc<Manifest>>,
    /// The last known state of each tag.
    tags: moka::future::Cache<(usize, RepoName, Tag), Arc<TagState>>,
    /// Manifests known to belong to a repository, with their media type.
    manifest_links: moka::future::Cache<LinkKey, Arc<str>>,
    /// Blobs known to belong to a repository, with the route to fetch them from (the
    /// repository itself, or a fallback's for what a synthesized index reaches).
    blob_links: moka::future::Cache<LinkKey, Arc<Route>>,
    /// Sizes of blobs present in the store. Blobs are immutable, so this never goes stale
    /// except by eviction, which readers detect and repair.
    blob_sizes: moka::future::Cache<Digest, u64>,
    tag_flights: singleflight::Group<TagKey, Result<Arc<Manifest>>>,
    digest_flights: singleflight::Group<LinkKey, Result<Arc<Manifest>>>,
    pub fallbacks: Fallbacks,
    /// Client authentication, when `[auth]` is configured.
    pub auth: Option<crate::auth::Authenticator>,
    /// Resolved tags of repositories with fallback rules, trusted for the tag TTL.
    synth: moka::future::Cache<TagKey, Arc<Synthesis>>,
    synth_flights: singleflight::Group<TagKey, Result<Arc<Synthesis>>>,
}

impl Registry {
    pub fn new(config: Config, shared: &Shared) -> Result<Registry, String> {
        let Shared {
            store,
            metrics,
            fills,
            access,
        } = shared.clone();
        let router = Router::new(&config.upstreams);
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(u, metrics.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let upstream_names = upstreams.iter().map(|u| u.name.as_str().into()).collect();
        // With a bounded cache, another replica's collection may unlink what this one holds in
        // memory. Forgetting links and tags within gc_min_age means nothing evicted (unused
        // for longer than that) is still believed here; the manifest bytes themselves are
        // only served through a link or tag, so they can stay.
        let forget_after = config
            .storage
            .gc
            .max_size
            .map(|_| config.storage.gc.min_age.max(Duration::from_secs(1)));

        let manifests = moka::future::Cache::builder()
            .weigher(|_k: &Digest, m: &Arc<Manifest>| {
                u32::try_from(m.bytes.len() + 256).unwrap_or(u32::MAX)
            })
            .max_capacity(config.cache.memory)
            .build();
        let fallbacks = Fallbacks::new(&config, &router);
        let mut synth = moka::future::Cache::builder().max_capacity(100_000);
        let synth_ttl = match forget_after {
            Some(t) => t.min(config.cache.tag_ttl),
            None => config.cache.tag_ttl,
        };
        if !synth_ttl.is_zero() {
            synth = synth.time_to_live(synth_ttl);
        }
        let auth = config
            .auth
            .as_ref()
            .map(|a| crate::auth::Authenticator::new(a.users.clone(), a.anonymous));
        Ok(Registry {
            auth,
            fallbacks,
            synth: synth.build(),
            synth_flights: Default::default(),
            router,
            upstreams,
            upstream_names,
            access,
            fills,
            store,
            metrics,
            manifests,
            tags: bounded(1_000_000, forget_after),
            manifest_links: bounded(1_000_000, forget_after),
            blob_links: bounded(4_000_000, forget_after),
            blob_sizes: moka::future::Cache::new(4_000_000),
            tag_flights: Default::default(),
            digest_flights: Default::default(),
            config,
        })
    }

    /// Routes a repository name as the client sent it.
    pub fn route(&self, name: &RepoName, ns: Option<&str>) -> Result<Route> {
        self.router.route(name, ns)
    }

    fn upstream(&self, route: &Route) -> &Arc<Upstream> {
        &self.upstreams[route.upstream]
    }

    fn upstream_name(&self, route: &Route) -> &str {
        &self.upstreams[route.upstream].name
    }

    /// The route a link's recorded source names, if its upstream is still configured.
    fn source_route(&self, s: &records::Source) -> Option<Route> {
        Some(Route {
            upstream: self.upstreams.iter().position(|u| u.name == s.upstream)?,
            repo: s.repository.parse().ok()?,
        })
    }

    /// One page of the upstream's tag list. `n` and `last` are the only parameters passed on;
    /// when the upstream ignores them (distribution 2.8 does), the page is cut here, in the
    /// spec's lexical order, with a `Link` to the next one.
    pub async fn tags(&self, route: &Route, n: Option<u32>, last: Option<&Tag>) -> Result<TagPage> {
        let query = {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            if let Some(n) = n {
                q.append_pair("n", &n.to_string());
            }
            if let Some(l) = last {
                q.append_pair("last", l.as_str());
            }
            q.finish()
        };
        let page = self
            .upstream(route)
            .tags(&route.repo, &query)
            .await?
            .ok_or_else(|| {
                Error::NameUnknown(format!(
                    "repository {} is unknown to upstream {}",
                    route.repo,
                    self.upstream_name(route)
                ))
            })?;
        if n.is_none() && last.is_none() {
            return Ok(page);
        }
        Ok(paginate(page, &route.repo, n, last))
    }

    /// Drops in-memory state that may name what a collection just deleted.
    pub async fn forget_evicted(&self, report: &crate::gc::Report) {
        self.tags.invalidate_all();
        self.manifest_links.invalidate_all();
        self.blob_links.invalidate_all();
        self.synth.invalidate_all();
        for (d, _) in &report.plan.content {
            self.manifests.invalidate(d).await;
            self.blob_sizes.invalidate(d).await;
        }
    }

    fn hit(&self, kind: &str) {
        self.metrics.cache_hits.with_label_values(&[kind]).inc();
        served_from("cache");
    }

    fn miss(&self, kind: &str) {
        self.metrics.cache_misses.with_label_values(&[kind]).inc();
        served_from("upstream");
    }

    /// Notes that `digest` was served for the routed repository (for the bounded cache).
    fn note_manifest(&self, route: &Route, digest: &Digest) {
        self.access
            .manifest(&self.upstream_names[route.upstream], &route.repo, digest);
    }

    /// Number of blob fills in flight (for tests and metrics).
    pub fn fills_in_flight(&self) -> usize {
        self.fills.len()
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

#[derive(serde::Deserialize, serde::Serialize)]
struct TagList {
    name: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
}

fn paginate(page: TagPage, repo: &RepoName, n: Option<u32>, last: Option<&Tag>) -> TagPage {
    let Ok(mut list) = serde_json::from_slice::<TagList>(&page.body) else {
        return page;
    };
    let mut tags = list.tags.take().unwrap_or_default();
    tags.sort();
    if let Some(l) = last {
        tags.retain(|t| t.as_str() > l.as_str());
    }
    let limit = n.map_or(usize::MAX, |n| n as usize);
    let more = tags.len() > limit;
    tags.truncate(limit);
    let link = match (&page.link, more, tags.last()) {
        (Some(l), _, _) => Some(l.clone()),
        (None, true, Some(last)) => Some(format!(
            "</v2/{repo}/tags/list?n={limit}&last={last}>; rel=\"next\""
        )),
        _ => None,
    };
    list.tags = Some(tags);
    match serde_json::to_vec(&list) {
        Ok(body) => TagPage {
            body: body.into(),
            link,
        },
        Err(_) => page,
    }
}
