//! Replicas that share one object store fill each cold blob once between them, with the
//! store as the only coordination point.
//!
//! The replica that needs a blob first takes its lease (a create-only record, see [`lease`])
//! and fetches it from the upstream as a single replica would. A replica that finds a live
//! lease streams the bytes from the owner's fill through the owner's internal endpoint (see
//! [`auth`] for how peers authenticate), so its clients get their first bytes as soon as the
//! owner does, and reads the store once the blob is committed. When the owner stops renewing
//! and no longer answers (it died; a lapse alone can be a slow store), one follower takes
//! the lease over and fetches the rest from the upstream from
//! the offset it has (see [`follow`]). A replica never fails a pull because of another one:
//! when the owner cannot be reached and nothing is committed within a lease TTL, it fetches
//! the blob itself.

pub mod auth;
mod follow;
pub mod lease;
mod peer;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use url::Url;

use crate::config::ClusterConfig;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::oci::{Digest, RepoName};
use crate::storage::{Created, FillSource, Store, Versioned};
use crate::upstream::Remote;
use lease::{Lease, LeaseGuard};

/// The internal endpoint's path, under which `<digest>?offset=<n>` streams a fill.
pub const FILL_PATH: &str = "/_archway/fills/";

/// The internal endpoint's header for the whole blob's size (its `Content-Length` is what
/// is left from the offset).
pub const SIZE_HEADER: &str = "x-archway-blob-size";

/// Where a blob comes from upstream, for whichever replica ends up fetching it.
#[derive(Clone)]
pub struct Origin {
    /// The upstream to fetch from.
    pub remote: Arc<dyn Remote>,
    /// The repository there that has the blob.
    pub repo: RepoName,
}

/// This replica's membership: its address, the shared secret, and the lease rules.
pub struct Cluster {
    store: Store,
    /// The base URL peers reach this replica's internal endpoint at.
    me: Url,
    /// This process, as lease owner.
    instance: String,
    secret: Vec<u8>,
    ttl: Duration,
    /// How often a follower that cannot stream looks at the store and the lease again.
    poll: Duration,
    http: reqwest::Client,
    metrics: Metrics,
    warned_unsupported: AtomicBool,
}

/// Why the cluster client cannot be built.
#[derive(Debug, thiserror::Error)]
#[error("cluster: cannot build the client for peers")]
pub struct BuildError(#[source] reqwest::Error);

impl Cluster {
    /// `me` is this replica's advertised base URL, known once the listener is bound.
    pub fn new(
        cfg: &ClusterConfig,
        me: Url,
        store: Store,
        metrics: Metrics,
    ) -> Result<Cluster, BuildError> {
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(concat!("archway/", env!("CARGO_PKG_VERSION"), " (peer)"))
            // Peers are on the pod network: a proxy from the environment (meant for the
            // upstreams) must not carry their traffic.
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            // An owner that sends nothing for a lease TTL is as good as gone.
            .read_timeout(cfg.lease_ttl)
            .build()
            .map_err(BuildError)?;
        Ok(Cluster {
            store,
            me,
            instance: uuid::Uuid::new_v4().simple().to_string(),
            secret: cfg.secret.clone(),
            ttl: cfg.lease_ttl,
            poll: (cfg.lease_ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(1)),
            http,
            metrics,
            warned_unsupported: AtomicBool::new(false),
        })
    }

    /// The base URL this replica advertises to its peers.
    pub fn advertised(&self) -> &Url {
        &self.me
    }

    /// The shared secret, for checking requests to the internal endpoint.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// What a new fill of `d` on this replica reads: the upstream's bytes if this replica
    /// gets the lease, else the owner's fill.
    pub async fn source(self: &Arc<Self>, d: &Digest, origin: Origin) -> Result<FillSource> {
        let key = lease::key(d);
        // Each round loses only to a replica that just won: a handful is plenty.
        for _ in 0..8 {
            let mine = Lease::new(&self.instance, self.me.as_str(), self.ttl);
            let seen = match self.store.create_record(&key, &mine).await? {
                Created::Created(v) => {
                    let guard = self.hold(d, v);
                    if self.store.blob_size(d).await?.is_some() {
                        // The previous owner committed and released between this replica's
                        // cache miss and its claim: the bytes are in the store.
                        drop(guard);
                        return follow::start(self.clone(), d, origin).await;
                    }
                    return self.own(d, &origin, Some(guard), "owned").await;
                }
                Created::Unsupported => {
                    if !self.warned_unsupported.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "the object store cannot write create-only: replicas fill blobs without a lease, each fetching what it needs"
                        );
                    }
                    return self.own(d, &origin, None, "fallback").await;
                }
                Created::Exists => self.store.get_versioned::<Lease>(&key).await?,
            };
            match seen {
                // Released between the two requests: claim again.
                None => continue,
                // Live, or lapsed: the follower decides whether the owner still streams the
                // fill (a lapse can be a slow store) or is gone and the fill is taken over.
                Some(_) => return follow::start(self.clone(), d, origin).await,
            }
        }
        tracing::warn!(digest = %d, "fill lease contended beyond reason; fetching here");
        self.own(d, &origin, None, "fallback").await
    }

    /// Holds the lease just written as `v`, renewing it until the guard is dropped.
    fn hold(&self, d: &Digest, v: Versioned<Lease>) -> LeaseGuard {
        let count = self.metrics.fill_leases_held.clone();
        LeaseGuard::hold(self.store.clone(), d, v, self.ttl, count)
    }

    /// This replica fetches `d` from the upstream, holding `guard` until the commit.
    async fn own(
        &self,
        d: &Digest,
        origin: &Origin,
        guard: Option<LeaseGuard>,
        outcome: &str,
    ) -> Result<FillSource> {
        self.metrics.fill_leases.with_label_values(&[outcome]).inc();
        let download = crate::upstream::resume::get_blob(origin.remote.clone(), &origin.repo, d, 0)
            .await?
            .ok_or_else(|| Error::BlobUnknown(format!("{d} in repository {}", origin.repo)))?;
        let mut source =
            FillSource::new(download.size, download.stream.map_err(Error::from).boxed());
        source.hold = guard.map(|g| Box::new(g) as Box<dyn Send + Sync>);
        Ok(source)
    }
}
