//! Blobs: served from the store when cached and linked to the repository (or, with
//! `[storage] redirect`, handed to the object store by a presigned URL), otherwise streamed
//! from a fill of the upstream's bytes that every concurrent request shares, and that every
//! replica of a `[cluster]` shares.

use std::ops::Range;
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};

use super::links::Links;
use super::provenance::Provenance;
use super::upstreams::Upstreams;
use crate::cluster::{Cluster, Origin};
use crate::config::RedirectConfig;
use crate::error::{Error, Result};
use crate::gc::AccessLog;
use crate::metrics::Metrics;
use crate::oci::Digest;
use crate::range::RangeSpec;
use crate::routing::Route;
use crate::storage::{ByteStream, Fill, FillSource, Fills, Store};

/// Fills of its own a client starts before it takes what a fill has, when each one it joined
/// (with the cache disk full) had let go of the bytes it starts at: the first of its own
/// normally holds them all, since the client joins it before it streams.
const MAX_LATE_JOINS: usize = 2;

/// A blob response body and what the headers need.
pub struct BlobBody {
    /// The whole blob's size, when known.
    pub size: Option<u64>,
    /// The part being sent, for a satisfied range request.
    pub range: Option<Range<u64>>,
    /// The bytes to send: the whole blob, or just `range`.
    pub stream: ByteStream,
    /// Where the bytes come from, for the access log and `archway_served_bytes_total`.
    pub provenance: Provenance,
}

/// What warming a blob found.
pub(crate) enum Ensured {
    /// In the store already, of this size.
    Cached(u64),
    /// Being fetched: wait on it. `true` when this call started the fetch (else it joined
    /// one a client or another warm started).
    Filling(Arc<Fill>, bool),
}

/// How a blob GET is answered.
pub enum BlobAnswer {
    /// The bytes, from the store or a fill.
    Body(BlobBody),
    /// A cached blob the client fetches from the object store itself.
    Redirect {
        /// The presigned URL, valid for `[storage] redirect`.
        url: url::Url,
        /// The blob's size.
        size: u64,
    },
}

pub(crate) struct Blobs {
    store: Store,
    fills: Fills,
    links: Arc<Links>,
    upstreams: Arc<Upstreams>,
    metrics: Metrics,
    access: Arc<AccessLog>,
    cluster: Option<Arc<Cluster>>,
    redirect: Option<RedirectConfig>,
    /// Sizes of blobs present in the store. Blobs are immutable, so this never goes stale
    /// except by eviction, which readers detect and repair.
    sizes: moka::future::Cache<Digest, u64>,
}

/// The other parts blobs are served with.
pub(crate) struct Parts {
    pub(crate) store: Store,
    pub(crate) fills: Fills,
    pub(crate) links: Arc<Links>,
    pub(crate) upstreams: Arc<Upstreams>,
    pub(crate) metrics: Metrics,
    pub(crate) access: Arc<AccessLog>,
    pub(crate) cluster: Option<Arc<Cluster>>,
}

impl Blobs {
    pub(crate) fn new(p: Parts, redirect: Option<RedirectConfig>) -> Blobs {
        Blobs {
            store: p.store,
            fills: p.fills,
            links: p.links,
            upstreams: p.upstreams,
            metrics: p.metrics,
            access: p.access,
            cluster: p.cluster,
            redirect,
            sizes: moka::future::Cache::new(4_000_000),
        }
    }

    /// A blob GET's answer: a redirect for a cached blob when `[storage] redirect` is on
    /// (after the same repository check as any GET), else its bytes. One still being filled
    /// streams, as it is not in the store yet.
    pub(crate) async fn answer(
        &self,
        route: &Route,
        d: &Digest,
        range: Option<RangeSpec>,
    ) -> Result<BlobAnswer> {
        if let Some(r) = &self.redirect {
            if let Some(answer) = Box::pin(self.redirected(route, d, range, r)).await? {
                return Ok(answer);
            }
        }
        self.get(route, d, range).await.map(BlobAnswer::Body)
    }

    async fn redirected(
        &self,
        route: &Route,
        d: &Digest,
        range: Option<RangeSpec>,
        r: &RedirectConfig,
    ) -> Result<Option<BlobAnswer>> {
        let linked = self.links.blob(route, d).await?.is_some();
        let Some(size) = self.cached_size(d).await? else {
            return Ok(None);
        };
        if !linked {
            self.check_upstream_has(route, d).await?;
        }
        if let Some(spec) = range {
            spec.resolve(size).ok_or(Error::RangeInvalid { size })?;
        }
        let mut url = match self.store.blob_url(d, r.expires).await {
            Ok(Some(u)) => u,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::warn!(digest = %d, error = %crate::causes::Chain(&e), "cannot presign a blob URL; streaming it");
                return Ok(None);
            }
        };
        if let Some(base) = &r.base_url {
            rebase(&mut url, base);
        }
        self.metrics.cache_hits.with_label_values(&["blob"]).inc();
        self.metrics.blob_redirects.inc();
        self.access.blob(d);
        Ok(Some(BlobAnswer::Redirect { url, size }))
    }

    /// The size of a blob, as a HEAD request answers it. Never starts a fill.
    pub(crate) async fn head(&self, route: &Route, d: &Digest) -> Result<u64> {
        let linked = self.links.blob(route, d).await?.is_some();
        if let Some(size) = self.cached_size(d).await? {
            if !linked {
                self.check_upstream_has(route, d).await?;
            }
            self.metrics.cache_hits.with_label_values(&["blob"]).inc();
            self.access.blob(d);
            return Ok(size);
        }
        self.upstreams
            .remote(route)
            .head_blob(&route.repo, d)
            .await?
            .ok_or_else(|| blob_unknown(route, d))
    }

    /// A blob's bytes (or the requested range of them).
    pub(crate) async fn get(
        &self,
        route: &Route,
        d: &Digest,
        range: Option<RangeSpec>,
    ) -> Result<BlobBody> {
        // A fill joined after the cache disk filled may have let go of the bytes this client
        // starts at (memory was their only copy): then the client gets a fill of its own at
        // once, beside that one, instead of a cut body or a wait for the other to end.
        let mut round = 0;
        let mut alone: Option<Arc<Fill>> = None;
        let mut link = None;
        loop {
            let (fill, provenance) = match alone.take() {
                Some(own) => (own, Provenance::Upstream),
                None => {
                    link = self.links.blob(route, d).await?;
                    if let Some(body) = self.cached(route, d, link.is_some(), range).await? {
                        return Ok(body);
                    }
                    self.metrics.cache_misses.with_label_values(&["blob"]).inc();
                    // Boxed: a cached blob's GET need not carry a fill's start.
                    let (fill, started) = Box::pin(self.fill(route, d, link.clone())).await?;
                    if started {
                        (fill, Provenance::Upstream)
                    } else {
                        self.metrics.fill_waiters.inc();
                        (fill, Provenance::Joined)
                    }
                }
            };
            let size = fill.started().await.map_err(|e| (*e).clone())?;
            let (range, stream) = match (range, size) {
                (Some(spec), Some(size)) => {
                    let r = spec.resolve(size).ok_or(Error::RangeInvalid { size })?;
                    (Some(r.clone()), fill.reader(r.start, Some(r.end)))
                }
                _ => (None, fill.reader(0, None)),
            };
            let start = range.as_ref().map_or(0, |r| r.start);
            if round < MAX_LATE_JOINS && !fill.holds_from(start) {
                drop(stream);
                tracing::info!(digest = %d, at = start, "the cache disk is full and this blob's fill let go of the bytes this client starts at; fetching it again for this client alone, beside that fill");
                alone = Some(self.fill_alone(route, d, link.clone()));
                round += 1;
                continue;
            }
            self.access.blob(d);
            return Ok(self.counted(BlobBody {
                size,
                range,
                stream,
                provenance,
            }));
        }
    }

    /// The fill of `d` for the routed repository: joined if one runs, else started. Whether
    /// this call started it.
    async fn fill(
        &self,
        route: &Route,
        d: &Digest,
        link: Option<Arc<Route>>,
    ) -> Result<(Arc<Fill>, bool)> {
        let (from, origin) = self.fill_origin(route, link.clone());
        if let Some(f) = self.fills.get(d) {
            if f.origin != origin && link.is_none() {
                self.check_upstream_has(route, d).await?;
            }
        }
        let source = self.source(route, d, &from);
        let (fill, started) = self.fills.join_or_start(d, &origin, move || source);
        if started {
            self.after_fill(route, fill.clone(), from);
        }
        Ok((fill, started))
    }

    /// Where a fill for `route` reads from (a blob reached through a synthesized index comes
    /// from the fallback's repository, `link`), and the origin it is known by
    /// (`upstream/repository`).
    fn fill_origin(&self, route: &Route, link: Option<Arc<Route>>) -> (Arc<Route>, String) {
        let from = link.unwrap_or_else(|| Arc::new(route.clone()));
        let origin = format!("{}/{}", self.upstreams.name(route), route.repo);
        (from, origin)
    }

    /// A fill of `d` for one client only, started beside the running one (which stays the
    /// fill everyone else joins). Straight from the upstream, also in a cluster: the lease
    /// for `d` is this replica's running fill's.
    fn fill_alone(&self, route: &Route, d: &Digest, link: Option<Arc<Route>>) -> Arc<Fill> {
        let (from, origin) = self.fill_origin(route, link);
        let source = self.source_from(route, d, &from, None);
        let fill = self.fills.start_alone(d, &origin, move || source);
        self.after_fill(route, fill.clone(), from);
        fill
    }

    /// Makes sure `d` ends up cached, without reading it (warming): cached already, or the
    /// fill every client would share.
    pub(crate) async fn ensure(&self, route: &Route, d: &Digest) -> Result<Ensured> {
        let link = self.links.blob(route, d).await?;
        if let Some(size) = self.cached_size(d).await? {
            if link.is_none() {
                self.check_upstream_has(route, d).await?;
            }
            return Ok(Ensured::Cached(size));
        }
        let (fill, started) = self.fill(route, d, link).await?;
        Ok(Ensured::Filling(fill, started))
    }

    /// Whether `d` is in the store (no upstream is asked).
    pub(crate) async fn is_cached(&self, d: &Digest) -> Result<bool> {
        Ok(self.cached_size(d).await?.is_some())
    }

    /// The cached blob, if it is in the store and the repository may read it.
    async fn cached(
        &self,
        route: &Route,
        d: &Digest,
        linked: bool,
        range: Option<RangeSpec>,
    ) -> Result<Option<BlobBody>> {
        let Some(size) = self.cached_size(d).await? else {
            return Ok(None);
        };
        if !linked {
            self.check_upstream_has(route, d).await?;
        }
        let range = match range {
            Some(spec) => Some(spec.resolve(size).ok_or(Error::RangeInvalid { size })?),
            None => None,
        };
        let Some(stream) = self.store.read_blob(d, range.clone()).await? else {
            // Gone from the store since its size was cached (evicted): fetch it again.
            self.sizes.invalidate(d).await;
            return Ok(None);
        };
        self.metrics.cache_hits.with_label_values(&["blob"]).inc();
        self.access.blob(d);
        Ok(Some(self.counted(BlobBody {
            size: Some(size),
            range,
            stream,
            provenance: Provenance::Cache,
        })))
    }

    /// What a new fill of `d` reads: the upstream's bytes from `from`, or the store's when a
    /// fill finished between this request's cache check and now.
    fn source(
        &self,
        route: &Route,
        d: &Digest,
        from: &Route,
    ) -> impl std::future::Future<Output = Result<FillSource>> + Send + 'static {
        self.source_from(route, d, from, self.cluster.clone())
    }

    /// [`source`](Self::source), through `cluster` when given one.
    fn source_from(
        &self,
        route: &Route,
        d: &Digest,
        from: &Route,
        cluster: Option<Arc<Cluster>>,
    ) -> impl std::future::Future<Output = Result<FillSource>> + Send + 'static {
        let remote = self.upstreams.remote(from).clone();
        let (repo, digest, store) = (from.repo.clone(), d.clone(), self.store.clone());
        let not_found = blob_unknown(route, d);
        async move {
            if let Some(size) = store.blob_size(&digest).await? {
                if let Some(stream) = store.read_blob(&digest, None).await? {
                    let stream = stream
                        .map_err(|e| Error::io("cannot read the cached blob", e))
                        .boxed();
                    return Ok(FillSource::new(Some(size), stream));
                }
            }
            if let Some(c) = cluster {
                return c.source(&digest, Origin { remote, repo }).await;
            }
            let download = crate::upstream::resume::get_blob(remote, &repo, &digest, 0)
                .await?
                .ok_or(not_found)?;
            Ok(FillSource::new(
                download.size,
                download.stream.map_err(Error::from).boxed(),
            ))
        }
    }

    /// Once a fill this request started is verified, the blob belongs to the repository
    /// (one reached through a synthesized index keeps naming the fallback it comes from).
    /// Written on every fill, not only when no link was known: the link in memory may be one
    /// a collection has removed from the store since.
    fn after_fill(&self, route: &Route, fill: Arc<Fill>, from: Arc<Route>) {
        let counted = crate::metrics::InFlight::new(&self.metrics.fills_in_flight);
        let (links, sizes, metrics) =
            (self.links.clone(), self.sizes.clone(), self.metrics.clone());
        let route = route.clone();
        tokio::spawn(async move {
            match fill.finished().await {
                Ok(size) => {
                    sizes.insert(fill.digest.clone(), size).await;
                    if let Err(e) = links.link_blob(&route, &fill.digest, size, &from).await {
                        tracing::warn!(error = %crate::causes::Chain(&e), "cannot record blob link");
                    }
                }
                Err(e) => {
                    let reason = match &*e {
                        Error::DigestMismatch { .. } => "digest_mismatch",
                        Error::SizeMismatch { .. } => "size_mismatch",
                        Error::BlobUnknown(_) => "not_found",
                        Error::Io { .. } | Error::Storage(_) => "store",
                        _ => "upstream",
                    };
                    metrics.fill_failures.with_label_values(&[reason]).inc();
                }
            }
            drop(counted);
        });
    }

    fn counted(&self, mut body: BlobBody) -> BlobBody {
        let counter = self
            .metrics
            .served_bytes
            .with_label_values(&[body.provenance.as_str()]);
        body.stream = Box::pin(
            body.stream
                .inspect_ok(move |b| counter.inc_by(b.len() as u64)),
        );
        body
    }

    async fn cached_size(&self, d: &Digest) -> Result<Option<u64>> {
        if let Some(s) = self.sizes.get(d).await {
            return Ok(Some(s));
        }
        let s = self.store.blob_size(d).await?;
        if let Some(s) = s {
            self.sizes.insert(d.clone(), s).await;
        }
        Ok(s)
    }

    /// Asks the upstream whether the repository has the blob, and links it if so. This is
    /// what keeps repository B from reading repository A's cached blobs.
    async fn check_upstream_has(&self, route: &Route, d: &Digest) -> Result<()> {
        let size = self
            .upstreams
            .remote(route)
            .head_blob(&route.repo, d)
            .await?
            .ok_or_else(|| blob_unknown(route, d))?;
        self.links
            .link_blob(route, d, size, &Arc::new(route.clone()))
            .await
    }

    /// Forgets the size of a blob a collection deleted.
    pub(crate) async fn forget(&self, d: &Digest) {
        self.sizes.invalidate(d).await;
    }
}

/// `url` with the scheme, host and port of `base` (a CDN in front of the bucket); the path
/// and the signed query stay.
fn rebase(url: &mut url::Url, base: &url::Url) {
    let mut out = base.clone();
    out.set_path(url.path());
    out.set_query(url.query());
    *url = out;
}

fn blob_unknown(route: &Route, d: &Digest) -> Error {
    Error::BlobUnknown(format!("{d} in repository {}", route.repo))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::testing::{self, Fixture};
    use bytes::Bytes;

    async fn read(body: BlobBody) -> std::io::Result<Vec<u8>> {
        let chunks: Vec<Bytes> = body.stream.try_collect().await?;
        Ok(chunks.concat())
    }

    #[tokio::test]
    async fn a_blob_is_filled_once_then_served_from_the_store() {
        let f = Fixture::new("1h", "");
        let data = testing::bytes(1, 300_000);
        let d = f.hub.push_blob("app", &data);
        let route = f.route("app");
        let first = f.registry.blobs.get(&route, &d, None).await.unwrap();
        assert_eq!(first.provenance, Provenance::Upstream);
        assert_eq!(read(first).await.unwrap(), data);
        f.registry.shared_fills_done().await;
        let second = f.registry.blobs.get(&route, &d, None).await.unwrap();
        assert_eq!(second.provenance, Provenance::Cache);
        assert_eq!(read(second).await.unwrap(), data);
        assert_eq!(f.hub.count(&format!("GET app/blobs/{d}")), 1);
        // A range of the cached blob.
        let part = f
            .registry
            .blobs
            .get(&route, &d, crate::range::parse("bytes=10-19"))
            .await
            .unwrap();
        assert_eq!(part.range, Some(10..20));
        assert_eq!(read(part).await.unwrap(), &data[10..20]);
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_fill() {
        let f = Fixture::new("1h", "");
        let data = testing::bytes(2, 100_000);
        let d = f.hub.push_blob("app", &data);
        let route = f.route("app");
        let (a, b) = futures_util::join!(
            f.registry.blobs.get(&route, &d, None),
            f.registry.blobs.get(&route, &d, None)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let mut kinds = [a.provenance, b.provenance];
        kinds.sort();
        assert_eq!(kinds, [Provenance::Joined, Provenance::Upstream]);
        assert_eq!(read(a).await.unwrap(), data);
        assert_eq!(read(b).await.unwrap(), data);
        assert_eq!(f.hub.count(&format!("GET app/blobs/{d}")), 1);
    }

    #[tokio::test]
    async fn a_cached_blob_is_not_readable_through_a_repository_that_lacks_it() {
        let f = Fixture::new("1h", "");
        let data = testing::bytes(3, 1000);
        let d = f.hub.push_blob("team/a", &data);
        let a = f.route("team/a");
        read(f.registry.blobs.get(&a, &d, None).await.unwrap())
            .await
            .unwrap();
        f.registry.shared_fills_done().await;
        let b = f.route("team/b");
        let e = f.registry.blobs.get(&b, &d, None).await.err().unwrap();
        assert_eq!(e.code(), "BLOB_UNKNOWN");
        assert_eq!(
            f.registry.blobs.head(&b, &d).await.unwrap_err().code(),
            "BLOB_UNKNOWN"
        );
        assert_eq!(
            f.hub.count(&format!("HEAD team/b/blobs/{d}")),
            2,
            "asked the upstream"
        );
        // Once the upstream has it there too, b may read the cached copy.
        f.hub.push_blob("team/b", &data);
        let body = f.registry.blobs.get(&b, &d, None).await.unwrap();
        assert_eq!(body.provenance, Provenance::Cache);
        assert_eq!(f.hub.count(&format!("GET team/b/blobs/{d}")), 0);
    }

    #[tokio::test]
    async fn wrong_bytes_fail_the_transfer_and_are_never_cached() {
        let f = Fixture::new("1h", "");
        let data = testing::bytes(4, 50_000);
        let d = f.hub.push_blob("app", &data);
        let mut evil = data.clone();
        evil[123] ^= 1;
        f.hub.corrupt(&d, &evil);
        let route = f.route("app");
        // A fill this small may fail before the response starts (then the request fails),
        // or after (then the body breaks off): either way with the fill's error.
        match f.registry.blobs.get(&route, &d, None).await {
            Ok(body) => {
                let e = read(body).await.unwrap_err();
                let cause = crate::storage::fill::FillFailed::cause(&e).expect("the fill's error");
                assert!(matches!(**cause, Error::DigestMismatch { .. }), "{cause:?}");
            }
            Err(e) => assert!(matches!(e, Error::DigestMismatch { .. }), "{e:?}"),
        }
        f.registry.shared_fills_done().await;
        assert_eq!(f.store.blob_size(&d).await.unwrap(), None);
        assert_eq!(
            f.registry
                .metrics
                .fill_failures
                .with_label_values(&["digest_mismatch"])
                .get(),
            1
        );
    }

    #[tokio::test]
    async fn an_unknown_blob_is_blob_unknown_and_a_head_never_fills() {
        let f = Fixture::new("1h", "");
        let data = testing::bytes(5, 10);
        let d = f.hub.push_blob("app", &data);
        let route = f.route("app");
        assert_eq!(f.registry.blobs.head(&route, &d).await.unwrap(), 10);
        assert_eq!(f.hub.count(&format!("GET app/blobs/{d}")), 0);
        let missing = Digest::sha256_of(b"nowhere");
        let e = f
            .registry
            .blobs
            .get(&route, &missing, None)
            .await
            .err()
            .unwrap();
        assert_eq!((e.code(), e.status().as_u16()), ("BLOB_UNKNOWN", 404));
    }
}
