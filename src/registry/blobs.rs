//! Blobs: served from the store when cached and known to belong to the repository, otherwise
//! streamed from a (shared) fill of the upstream's bytes.

use futures_util::{StreamExt, TryStreamExt};
use std::ops::Range;
use std::sync::Arc;

use super::records::{BlobLink, Source};
use super::{LinkKey, Registry};
use crate::error::{Error, Result};
use crate::oci::Digest;
use crate::range::RangeSpec;
use crate::routing::Route;
use crate::storage::fill::BlobSource as FillSource;
use crate::storage::{layout, ByteStream};

/// Where a response's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobSource {
    Cache,
    Upstream,
}

impl BlobSource {
    pub fn as_str(self) -> &'static str {
        match self {
            BlobSource::Cache => "cache",
            BlobSource::Upstream => "upstream",
        }
    }
}

/// A blob response body and what the headers need.
pub struct BlobBody {
    /// The whole blob's size, when known.
    pub size: Option<u64>,
    /// The part being sent, for a satisfied range request.
    pub range: Option<Range<u64>>,
    pub stream: ByteStream,
    pub source: BlobSource,
}

impl Registry {
    /// The size of a blob, as a HEAD request answers it. Never starts a fill.
    pub async fn blob_head(&self, route: &Route, d: &Digest) -> Result<u64> {
        let key = link_key(route, d);
        let link = self.blob_link(&key).await?;
        let linked = link.is_some();
        if let Some(size) = self.cached_blob_size(d).await? {
            if !linked {
                self.check_upstream_has(route, d).await?;
            }
            self.metrics.cache_hits.with_label_values(&["blob"]).inc();
            self.access.blob(d);
            return Ok(size);
        }
        let up = self.upstream(route);
        up.head_blob(&route.repo, d)
            .await?
            .ok_or_else(|| blob_unknown(route, d))
    }

    /// A blob's bytes (or the requested range of them).
    pub async fn blob(
        &self,
        route: &Route,
        d: &Digest,
        range: Option<RangeSpec>,
    ) -> Result<BlobBody> {
        let key = link_key(route, d);
        let link = self.blob_link(&key).await?;
        let linked = link.is_some();
        if let Some(size) = self.cached_blob_size(d).await? {
            if !linked {
                self.check_upstream_has(route, d).await?;
            }
            let range = match range {
                Some(spec) => Some(spec.resolve(size).ok_or(Error::RangeInvalid { size })?),
                None => None,
            };
            if let Some(stream) = self.store.read_blob(d, range.clone()).await? {
                self.metrics.cache_hits.with_label_values(&["blob"]).inc();
                self.access.blob(d);
                return Ok(self.counted(BlobBody {
                    size: Some(size),
                    range,
                    stream,
                    source: BlobSource::Cache,
                }));
            }
            // Gone from the store since its size was cached (evicted): fetch it again.
            self.blob_sizes.invalidate(d).await;
        }
        self.metrics.cache_misses.with_label_values(&["blob"]).inc();
        let origin = format!("{}/{}", self.upstream_name(route), route.repo);
        if let Some(f) = self.fills.get(d) {
            if f.origin != origin && !linked {
                self.check_upstream_has(route, d).await?;
            }
        }
        // A blob reached through a synthesized index comes from the fallback's repository.
        let from = link.clone().unwrap_or_else(|| Arc::new(route.clone()));
        let up = self.upstream(&from).clone();
        let (repo, digest, store) = (from.repo.clone(), d.clone(), self.store.clone());
        let not_found = blob_unknown(route, d);
        let (fill, started) = self.fills.join_or_start(d, &origin, move || async move {
            // A fill that finished between this request's cache check and now has already
            // cached the blob: copy it from the store rather than fetch it again.
            if let Some(size) = store.blob_size(&digest).await? {
                if let Some(stream) = store.read_blob(&digest, None).await? {
                    return Ok(FillSource {
                        size: Some(size),
                        stream: stream
                            .map_err(|e| Error::Internal(format!("cache read: {e}")))
                            .boxed(),
                    });
                }
            }
            let src = up.get_blob(&repo, &digest).await?.ok_or(not_found)?;
            Ok(FillSource {
                size: src.size,
                stream: src.stream,
            })
        });
        if started {
            self.metrics.fills_in_flight.inc();
            // Fetched for this repository, it belongs to it from now on; one reached through
            // a synthesized index keeps naming the fallback it comes from. Written on every
            // fill, not only when no link was known: the one in memory may be a link a
            // collection has removed from the store since.
            let source = (*from != *route).then(|| Source {
                upstream: self.upstream_name(&from).to_string(),
                repository: from.repo.to_string(),
            });
            let (fill, metrics) = (fill.clone(), self.metrics.clone());
            let (store, links, sizes) = (
                self.store.clone(),
                self.blob_links.clone(),
                self.blob_sizes.clone(),
            );
            let link_path = layout::blob_link(self.upstream_name(route), &route.repo, d);
            let from = from.clone();
            tokio::spawn(async move {
                match fill.finished().await {
                    Ok(size) => {
                        sizes.insert(fill.digest.clone(), size).await;
                        let link = BlobLink { size, source };
                        match store.put_record(&link_path, &link).await {
                            Ok(()) => links.insert(key, from).await,
                            Err(e) => tracing::warn!(error = %e, "cannot record blob link"),
                        }
                    }
                    Err(e) => {
                        let reason = match &*e {
                            Error::DigestMismatch { .. } => "digest_mismatch",
                            Error::BlobUnknown(_) => "not_found",
                            _ => "upstream",
                        };
                        metrics.fill_failures.with_label_values(&[reason]).inc();
                    }
                }
                metrics.fills_in_flight.dec();
            });
        } else {
            self.metrics.fill_waiters.inc();
        }
        let size = fill.started().await.map_err(|e| (*e).clone())?;
        self.access.blob(d);
        let (range, stream) = match (range, size) {
            (Some(spec), Some(size)) => {
                let r = spec.resolve(size).ok_or(Error::RangeInvalid { size })?;
                (Some(r.clone()), fill.reader(r.start, Some(r.end)))
            }
            _ => (None, fill.reader(0, None)),
        };
        Ok(self.counted(BlobBody {
            size,
            range,
            stream,
            source: BlobSource::Upstream,
        }))
    }

    fn counted(&self, mut body: BlobBody) -> BlobBody {
        let counter = self
            .metrics
            .served_bytes
            .with_label_values(&[body.source.as_str()]);
        body.stream = Box::pin(
            body.stream
                .inspect_ok(move |b| counter.inc_by(b.len() as u64)),
        );
        body
    }

    /// The route a linked blob is fetched from, or `None` when the blob is not linked.
    async fn blob_link(&self, key: &LinkKey) -> Result<Option<Arc<Route>>> {
        if let Some(r) = self.blob_links.get(key).await {
            return Ok(Some(r));
        }
        let path = layout::blob_link(&self.upstreams[key.0].name, &key.1, &key.2);
        let Some(link) = self.store.get_record::<BlobLink>(&path).await? else {
            return Ok(None);
        };
        let from = link
            .source
            .and_then(|s| self.source_route(&s))
            .unwrap_or(Route {
                upstream: key.0,
                repo: key.1.clone(),
            });
        let from = Arc::new(from);
        self.blob_links.insert(key.clone(), from.clone()).await;
        Ok(Some(from))
    }

    async fn cached_blob_size(&self, d: &Digest) -> Result<Option<u64>> {
        if let Some(s) = self.blob_sizes.get(d).await {
            return Ok(Some(s));
        }
        let s = self.store.blob_size(d).await?;
        if let Some(s) = s {
            self.blob_sizes.insert(d.clone(), s).await;
        }
        Ok(s)
    }

    /// Asks the upstream whether the repository has the blob, and records the link if so. This
    /// is what keeps repository B from reading repository A's cached blobs.
    async fn check_upstream_has(&self, route: &Route, d: &Digest) -> Result<()> {
        let up = self.upstream(route);
        let size = up
            .head_blob(&route.repo, d)
            .await?
            .ok_or_else(|| blob_unknown(route, d))?;
        let link = BlobLink { size, source: None };
        self.store
            .put_record(&layout::blob_link(&up.name, &route.repo, d), &link)
            .await?;
        self.blob_links
            .insert(link_key(route, d), Arc::new(route.clone()))
            .await;
        Ok(())
    }
}

fn link_key(route: &Route, d: &Digest) -> LinkKey {
    (route.upstream, route.repo.clone(), d.clone())
}

fn blob_unknown(route: &Route, d: &Digest) -> Error {
    Error::BlobUnknown(format!("{d} in repository {}", route.repo))
}
