//! Warming: getting images into the cache before a node pulls them. `archway warm` and the
//! admin listener's `POST /warm` fetch named references for chosen platforms; prewarming
//! fetches a cluster's other platforms of an index in the background as soon as a client
//! pulls one of them, so the first arm64 node of a mixed cluster does not pay for the cold
//! pull. Both go through the fills that pulls use: a blob warmed while a client pulls it is
//! fetched once.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;

use super::blobs::{Blobs, Ensured};
use super::manifests::{Manifest, Manifests};
use super::upstreams::Upstreams;
use super::LinkKey;
use crate::config::MultiarchConfig;
use crate::error::Result;
use crate::metrics::Metrics;
use crate::oci::media::is_index;
use crate::oci::{index, manifest, Digest, Platform, Reference};
use crate::routing::Route;
use crate::storage::Fill;

/// Blobs of one image warmed at the same time (as clients fetch them).
const BLOBS_AT_ONCE: usize = 3;

/// What warming does with one blob, as it happens.
pub enum WarmEvent<'a> {
    /// Being fetched now: `fill` reports its progress.
    Fetching {
        digest: &'a Digest,
        fill: &'a Arc<Fill>,
    },
    /// In the cache already.
    Cached {
        digest: &'a Digest,
        size: u64,
    },
    /// Fetched and verified.
    Fetched {
        digest: &'a Digest,
        size: u64,
    },
    Failed {
        digest: &'a Digest,
        error: String,
    },
}

/// Who hears of warming as it goes (a progress bar, a job's state).
pub trait WarmObserver: Send + Sync {
    fn event(&self, event: WarmEvent<'_>);
}

/// An observer that hears nothing.
pub struct Quiet;

impl WarmObserver for Quiet {
    fn event(&self, _: WarmEvent<'_>) {}
}

/// What a warm did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct WarmSummary {
    /// Blobs fetched from the upstream (or joined while a pull fetched them).
    pub fetched: usize,
    /// Blobs already cached.
    pub cached: usize,
    pub failed: usize,
    /// Bytes of the blobs fetched.
    pub bytes: u64,
    /// Why each failure failed.
    pub errors: Vec<String>,
    /// Bytes of the fetches this warm started itself (not joined).
    #[serde(skip)]
    pub bytes_started: u64,
}

impl WarmSummary {
    pub fn add(&mut self, other: WarmSummary) {
        self.fetched += other.fetched;
        self.cached += other.cached;
        self.failed += other.failed;
        self.bytes += other.bytes;
        self.bytes_started += other.bytes_started;
        self.errors.extend(other.errors);
    }
}

/// Fetches images into the cache. Cheap to clone: it holds the services it uses.
#[derive(Clone)]
pub(crate) struct Warmer {
    pub(crate) manifests: Arc<Manifests>,
    pub(crate) blobs: Arc<Blobs>,
    pub(crate) upstreams: Arc<Upstreams>,
    pub(crate) metrics: Metrics,
}

impl Warmer {
    /// The platform manifests of `top` to warm: `top` itself when it is an image, else the
    /// entries of the index whose platform is one of `platforms` (all when empty), never the
    /// attestations buildx attaches.
    pub(crate) async fn images(
        &self,
        route: &Route,
        top: &Arc<Manifest>,
        platforms: &[Platform],
    ) -> Result<Vec<Arc<Manifest>>> {
        if !is_index(&top.media_type) {
            return Ok(vec![top.clone()]);
        }
        let v: serde_json::Value = serde_json::from_slice(&top.bytes)
            .map_err(|e| crate::error::Error::ManifestInvalid(e.to_string()))?;
        let mut out = Vec::new();
        for e in index::entries(&v) {
            if index::is_attachment(e) {
                continue;
            }
            let p = index::descriptor_platform(e).unwrap_or_default();
            if !platforms.is_empty() && !platforms.iter().any(|want| want.matches(&p)) {
                continue;
            }
            let Ok(d) = index::entry_digest(e) else {
                continue;
            };
            out.push(
                self.manifests
                    .get(route, &Reference::Digest(d))
                    .await?
                    .value,
            );
        }
        Ok(out)
    }

    /// Warms the config and layers of `image`. `stop` says, before each blob, whether to
    /// stop (prewarming pauses when the rate budget runs low); `permits`, when given, bounds
    /// the blobs fetched at once across every warm that shares them.
    pub(crate) async fn image(
        &self,
        route: &Route,
        image: &Manifest,
        observer: &dyn WarmObserver,
        stop: &(dyn Fn() -> bool + Sync),
        permits: Option<&tokio::sync::Semaphore>,
    ) -> WarmSummary {
        let blobs = match manifest::parse(&image.bytes, Some(&image.media_type)) {
            Ok(refs) => refs.blobs,
            Err(e) => {
                return WarmSummary {
                    failed: 1,
                    errors: vec![format!("{}: {e}", image.digest)],
                    ..Default::default()
                }
            }
        };
        let results: Vec<WarmSummary> = futures_util::stream::iter(blobs)
            .map(|(d, _)| async move {
                let _permit = match permits {
                    Some(s) => s.acquire().await.ok(),
                    None => None,
                };
                if stop() {
                    return WarmSummary::default();
                }
                self.blob(route, &d, observer).await
            })
            .buffer_unordered(BLOBS_AT_ONCE)
            .collect()
            .await;
        let mut s = WarmSummary::default();
        for r in results {
            s.add(r);
        }
        s
    }

    async fn blob(&self, route: &Route, d: &Digest, observer: &dyn WarmObserver) -> WarmSummary {
        let failed = |e: String| {
            observer.event(WarmEvent::Failed {
                digest: d,
                error: e.clone(),
            });
            WarmSummary {
                failed: 1,
                errors: vec![format!("{d}: {e}")],
                ..Default::default()
            }
        };
        match self.blobs.ensure(route, d).await {
            Ok(Ensured::Cached(size)) => {
                observer.event(WarmEvent::Cached { digest: d, size });
                WarmSummary {
                    cached: 1,
                    ..Default::default()
                }
            }
            Ok(Ensured::Filling(fill, started)) => {
                observer.event(WarmEvent::Fetching {
                    digest: d,
                    fill: &fill,
                });
                match fill.finished().await {
                    Ok(size) => {
                        observer.event(WarmEvent::Fetched { digest: d, size });
                        WarmSummary {
                            fetched: 1,
                            bytes: size,
                            bytes_started: if started { size } else { 0 },
                            ..Default::default()
                        }
                    }
                    Err(e) => failed(crate::causes::Chain(&*e).to_string()),
                }
            }
            Err(e) => failed(crate::causes::Chain(&e).to_string()),
        }
    }
}

/// Prewarming: when a client pulls a platform manifest out of an index archway served, the
/// index's other cluster platforms are fetched in the background, at most
/// `prewarm_concurrency` blobs at a time, and never while the upstream's rate budget is low.
pub(crate) struct Prewarm {
    warmer: Warmer,
    platforms: Vec<Platform>,
    permits: Arc<tokio::sync::Semaphore>,
    /// Platform manifest → the index it was served in (per repository), recently.
    parents: moka::sync::Cache<LinkKey, Arc<Manifest>>,
    /// Indexes prewarmed recently, so each is prewarmed once.
    done: moka::sync::Cache<LinkKey, ()>,
}

impl Prewarm {
    pub(crate) fn new(config: &MultiarchConfig, warmer: Warmer) -> Option<Arc<Prewarm>> {
        if !config.prewarm || config.cluster_platforms.is_empty() {
            return None;
        }
        let ttl = Duration::from_secs(3600);
        Some(Arc::new(Prewarm {
            warmer,
            platforms: config.cluster_platforms.clone(),
            permits: Arc::new(tokio::sync::Semaphore::new(config.prewarm_concurrency)),
            parents: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
            done: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
        }))
    }

    /// An index was served for a tag: remember which index each of its manifests is in.
    pub(crate) fn served_index(&self, route: &Route, index: &Arc<Manifest>) {
        let key = (route.upstream, route.repo.clone(), index.digest.clone());
        if self.done.contains_key(&key) {
            return;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&index.bytes) else {
            return;
        };
        for e in index::entries(&v) {
            if let Ok(d) = index::entry_digest(e) {
                self.parents
                    .insert((route.upstream, route.repo.clone(), d), index.clone());
            }
        }
    }

    /// A platform manifest was pulled: prewarm the other cluster platforms of its index.
    pub(crate) fn pulled(self: &Arc<Self>, route: &Route, d: &Digest) {
        let Some(index) = self
            .parents
            .get(&(route.upstream, route.repo.clone(), d.clone()))
        else {
            return;
        };
        let key = (route.upstream, route.repo.clone(), index.digest.clone());
        if self.done.contains_key(&key) {
            return;
        }
        self.done.insert(key, ());
        let (me, route, pulled) = (self.clone(), route.clone(), d.clone());
        tokio::spawn(async move { me.run(route, index, pulled).await });
    }

    async fn run(&self, route: Route, index: Arc<Manifest>, pulled: Digest) {
        let images = match self.warmer.images(&route, &index, &self.platforms).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(repository = %route.repo, index = %index.digest, error = %crate::causes::Chain(&e), "prewarm: cannot read the index's manifests");
                return;
            }
        };
        let remote = self.warmer.upstreams.remote(&route).clone();
        let low = move || remote.budget_low();
        for image in images.iter().filter(|m| m.digest != pulled) {
            if low() {
                tracing::info!(repository = %route.repo, "prewarm paused: the upstream's rate budget is low");
                return;
            }
            let s = self
                .warmer
                .image(&route, image, &Quiet, &low, Some(&self.permits))
                .await;
            self.warmer.metrics.prewarm_bytes.inc_by(s.bytes_started);
            tracing::info!(
                repository = %route.repo, manifest = %image.digest,
                fetched = s.fetched, cached = s.cached, failed = s.failed, bytes = s.bytes,
                "prewarmed a cluster platform"
            );
        }
    }
}
