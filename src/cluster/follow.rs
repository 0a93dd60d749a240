//! A follower's fill source: the bytes of a blob another replica is fetching, streamed from
//! it, with recovery when that replica goes away. The follower keeps the offset it has
//! verified to; whatever comes next (the store, the owner again, a new owner, the upstream
//! from that offset) continues from there.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use tokio::time::Instant;

use super::lease::{self, Lease, LeaseGuard};
use super::{peer, Cluster, Origin};
use crate::error::{Error, Result};
use crate::oci::Digest;
use crate::storage::{Created, FillSource, Publish};

/// Where the follower's bytes come from right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    Peer,
    Store,
    /// This replica fetches from the upstream itself (it took the lease over, or gave up
    /// waiting): failures there end the fill, as for any fill.
    Upstream,
}

struct Follower {
    cluster: Arc<Cluster>,
    d: Digest,
    origin: Origin,
    /// Set when this replica must publish what it verifies (it fetches from the upstream).
    publish: Arc<AtomicBool>,
    offset: u64,
    size: Option<u64>,
    current: Option<(From, BoxStream<'static, Result<Bytes>>)>,
    /// The lease, once this replica took the fill over. Shared with the fill source's
    /// `hold`, which the fill keeps until its commit: the follower itself is dropped as soon
    /// as its stream ends, before the commit, and a lease released then lets another replica
    /// find neither a lease nor the blob and fetch it all again.
    guard: Arc<Mutex<Option<LeaseGuard>>>,
    followed: bool,
}

/// Follows the fill of `d` that another replica holds the lease of.
pub async fn start(cluster: Arc<Cluster>, d: &Digest, origin: Origin) -> Result<FillSource> {
    let publish = Arc::new(AtomicBool::new(false));
    let guard = Arc::new(Mutex::new(None));
    let mut f = Follower {
        cluster,
        d: d.clone(),
        origin,
        publish: publish.clone(),
        offset: 0,
        size: None,
        current: None,
        guard: guard.clone(),
        followed: false,
    };
    f.connect().await?;
    let size = f.size;
    let stream = futures_util::stream::unfold(f, |mut f| async move {
        let item = f.next_chunk().await?;
        Some((item, f))
    })
    .boxed();
    Ok(FillSource {
        size,
        stream,
        publish: Publish::IfAsked(publish),
        hold: Some(Box::new(guard)),
    })
}

impl Follower {
    async fn next_chunk(&mut self) -> Option<Result<Bytes>> {
        loop {
            if self.current.is_none() {
                if let Err(e) = self.connect().await {
                    return Some(Err(e));
                }
            }
            let (from, stream) = self.current.as_mut()?;
            let from = *from;
            match stream.next().await {
                Some(Ok(b)) => {
                    self.offset += b.len() as u64;
                    return Some(Ok(b));
                }
                Some(Err(e)) if from == From::Upstream => return Some(Err(e)),
                Some(Err(e)) => {
                    tracing::info!(
                        digest = %self.d, offset = self.offset, error = %crate::causes::Chain(&e),
                        "the fill being followed broke off; picking it up from here"
                    );
                    self.current = None;
                }
                None if self.size.is_some_and(|s| self.offset < s) && from != From::Upstream => {
                    tracing::info!(
                        digest = %self.d, offset = self.offset,
                        "the fill being followed ended early; picking it up from here"
                    );
                    self.current = None;
                }
                None => return None,
            }
        }
    }

    /// Finds where the bytes from `offset` on come from now.
    async fn connect(&mut self) -> Result<()> {
        let c = self.cluster.clone();
        let key = lease::key(&self.d);
        // Which owner was first found unreachable, when, and its lease's expiry then.
        let mut unreachable: Option<(String, Instant, u64)> = None;
        loop {
            // Committed meanwhile: the rest is in the store.
            if let Some(size) = c.store.blob_size(&self.d).await? {
                if self.offset <= size {
                    if let Some(s) = c.store.read_blob(&self.d, Some(self.offset..size)).await? {
                        self.set_size(size)?;
                        let s = s
                            .map_err(|e| Error::io("cannot read the cached blob", e))
                            .boxed();
                        self.current = Some((From::Store, s));
                        return Ok(());
                    }
                }
            }
            let seen = c.store.get_versioned::<Lease>(&key).await?;
            match seen {
                // Released without a commit (the owner's fill failed), or lapsed: this
                // replica takes the fill over, from the offset it has.
                None => {
                    let mine = Lease::new(&c.instance, c.me.as_str(), c.ttl);
                    match c.store.create_record(&key, &mine).await? {
                        Created::Created(v) => {
                            let guard = c.hold(&self.d, v);
                            // The owner may have committed and released between the store
                            // check above and this claim: then the store has the rest.
                            if c.store.blob_size(&self.d).await?.is_some() {
                                drop(guard);
                                continue;
                            }
                            return self.fetch_upstream(Some(guard), "taken_over").await;
                        }
                        Created::Exists => continue,
                        Created::Unsupported => return self.fetch_upstream(None, "fallback").await,
                    }
                }
                Some(v) if !v.value.live() => {
                    // A lease also lapses when the store is slow to take the owner's
                    // renewals (under load, on a shared store): an owner that still streams
                    // the fill keeps it, and only one that cannot be reached is replaced.
                    if let Ok(Some(p)) = peer::open(&c, &v.value.peer, &self.d, self.offset).await {
                        self.attach(p)?;
                        return Ok(());
                    }
                    let mine = Lease::new(&c.instance, c.me.as_str(), c.ttl);
                    if let Some(v) = c.store.replace_record(&key, &mine, &v).await? {
                        let guard = c.hold(&self.d, v);
                        if c.store.blob_size(&self.d).await?.is_some() {
                            drop(guard);
                            continue;
                        }
                        return self.fetch_upstream(Some(guard), "taken_over").await;
                    }
                    continue;
                }
                Some(v) => match peer::open(&c, &v.value.peer, &self.d, self.offset).await {
                    Ok(Some(p)) => {
                        self.attach(p)?;
                        return Ok(());
                    }
                    // The owner has neither a fill nor a copy: it just committed, or just
                    // failed and released the lease. Look again.
                    Ok(None) => {}
                    Err(e) => {
                        // A new owner (it took over from the one that went away) gets its
                        // own TTL to answer: its lease is newer, which must not read as
                        // "the unreachable owner still renews".
                        let (since, expiry) = match &unreachable {
                            Some((owner, since, expiry)) if *owner == v.value.owner => {
                                (*since, *expiry)
                            }
                            _ => {
                                let first = (Instant::now(), v.value.expires_at);
                                unreachable = Some((v.value.owner.clone(), first.0, first.1));
                                first
                            }
                        };
                        // An owner that still renews is alive but unreachable from here: after
                        // a TTL, fetch here. One that stopped renewing is dead: its lease
                        // lapses within a TTL and is taken over above (three TTLs at most,
                        // whatever the clocks say).
                        let renewing = v.value.expires_at > expiry;
                        if (since.elapsed() >= c.ttl && renewing) || since.elapsed() >= 3 * c.ttl {
                            tracing::warn!(
                                digest = %self.d, error = %crate::causes::Chain(&e),
                                "the replica filling this blob cannot be reached and it has not been committed; fetching it here"
                            );
                            return self.fetch_upstream(None, "fallback").await;
                        }
                        tracing::debug!(digest = %self.d, error = %crate::causes::Chain(&e), "peer unreachable; waiting for the commit");
                    }
                },
            }
            tokio::time::sleep(c.poll).await;
        }
    }

    /// Streams the rest from the owner's fill.
    fn attach(&mut self, p: peer::PeerStream) -> Result<()> {
        if let Some(size) = p.size {
            self.set_size(size)?;
        }
        if !self.followed {
            self.followed = true;
            self.cluster
                .metrics
                .fill_leases
                .with_label_values(&["followed"])
                .inc();
        }
        self.current = Some((From::Peer, p.stream));
        Ok(())
    }

    /// Fetches the rest from the upstream, publishing what this replica verifies.
    async fn fetch_upstream(&mut self, guard: Option<LeaseGuard>, outcome: &str) -> Result<()> {
        *self.guard.lock().unwrap_or_else(|p| p.into_inner()) = guard;
        self.publish.store(true, Ordering::SeqCst);
        tracing::info!(
            digest = %self.d, offset = self.offset, outcome,
            "fetching the rest of the followed fill from the upstream here"
        );
        self.cluster
            .metrics
            .fill_leases
            .with_label_values(&[outcome])
            .inc();
        let o = &self.origin;
        let download =
            crate::upstream::resume::get_blob(o.remote.clone(), &o.repo, &self.d, self.offset)
                .await?
                .ok_or_else(|| {
                    Error::BlobUnknown(format!("{} in repository {}", self.d, o.repo))
                })?;
        if let Some(size) = download.size {
            self.set_size(size)?;
        }
        let s = download.stream.map_err(Error::from).boxed();
        self.current = Some((From::Upstream, s));
        Ok(())
    }

    /// Notes the blob's size; every source must agree on it.
    fn set_size(&mut self, size: u64) -> Result<()> {
        match self.size {
            Some(known) if known != size => Err(Error::SizeMismatch {
                digest: self.d.clone(),
                announced: known,
                actual: size,
            }),
            _ => {
                self.size = Some(size);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Advertise, ClusterConfig};
    use crate::metrics::Metrics;
    use crate::storage::Store;
    use crate::upstream::memory::MemoryUpstream;
    use std::time::Duration;

    /// A replica that takes a fill over holds the lease until its commit, not until its
    /// stream ends: the follower is dropped with its stream, and a lease released then let
    /// a third replica find neither the lease nor the blob and fetch the whole blob again
    /// (seen as three upstream GETs of one blob in the owner-dies cluster test).
    #[tokio::test(start_paused = true)]
    async fn a_fill_taken_over_keeps_its_lease_until_the_fill_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::from_object_store(
            Arc::new(object_store::memory::InMemory::new()),
            dir.path().to_path_buf(),
        );
        let ttl = Duration::from_secs(5);
        let cfg = ClusterConfig {
            advertise: Advertise::Url("http://127.0.0.1:1/".parse().unwrap()),
            secret_file: dir.path().join("secret"),
            secret: b"s".to_vec(),
            lease_ttl: ttl,
        };
        let me = "http://127.0.0.1:1/".parse().unwrap();
        let cluster = Arc::new(Cluster::new(&cfg, me, store.clone(), Metrics::new()).unwrap());
        let up = Arc::new(MemoryUpstream::new("up"));
        let d = up.push_blob("app", b"the blob's bytes");
        let origin = Origin {
            remote: up,
            repo: "app".parse().unwrap(),
        };
        // No lease and no blob: the owner's fill failed and released it. This follower takes
        // the fill over.
        let source = start(cluster.clone(), &d, origin).await.unwrap();
        let body: Vec<Bytes> = source.stream.map(|c| c.unwrap()).collect().await;
        assert_eq!(body.concat(), b"the blob's bytes");
        let leased = || async {
            store
                .get_versioned::<Lease>(&lease::key(&d))
                .await
                .unwrap()
                .map(|v| v.value.owner)
        };

        // The stream is over and gone; the commit has not happened. Well past a TTL (in the
        // runtime's paused time, so every renewal and release due has run), the lease is
        // still this replica's.
        tokio::time::sleep(3 * ttl).await;
        assert_eq!(leased().await.as_deref(), Some(cluster.instance.as_str()));

        // Once the fill lets go of what it holds (after its commit), the lease is released.
        drop(source.hold);
        tokio::time::sleep(ttl).await;
        assert_eq!(leased().await, None);
    }
}
