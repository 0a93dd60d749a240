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

use crate::config::Config;
use crate::error::{Error, Result};
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

/// Everything a running mirror serves from, built once from a [`Config`].
pub struct Registry {
    pub config: Config,
    pub router: Router,
    pub upstreams: Vec<Arc<Upstream>>,
    pub store: Store,
    pub metrics: Metrics,
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
    pub fn new(config: Config, store: Store, metrics: Metrics) -> Result<Registry, String> {
        let router = Router::new(&config.upstreams);
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(u, metrics.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let manifests = moka::future::Cache::builder()
            .weigher(|_k: &Digest, m: &Arc<Manifest>| {
                u32::try_from(m.bytes.len() + 256).unwrap_or(u32::MAX)
            })
            .max_capacity(config.cache.memory)
            .build();
        let fallbacks = Fallbacks::new(&config, &router);
        let mut synth = moka::future::Cache::builder().max_capacity(100_000);
        if !config.cache.tag_ttl.is_zero() {
            synth = synth.time_to_live(config.cache.tag_ttl);
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
            fills: Fills::new(store.clone()),
            store,
            metrics,
            manifests,
            tags: moka::future::Cache::new(1_000_000),
            manifest_links: moka::future::Cache::new(1_000_000),
            blob_links: moka::future::Cache::new(4_000_000),
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

    /// Number of blob fills in flight (for tests and metrics).
    pub fn fills_in_flight(&self) -> usize {
        self.fills.len()
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
