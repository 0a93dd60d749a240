//! Fill leases: the record `fills/<algorithm>/<hex>` says which replica is fetching a blob
//! from the upstream, where its peers can stream the bytes from, and until when the claim
//! holds. Created with a create-only write, renewed and taken over with replace-if-unchanged
//! writes, so two replicas never both believe they hold it.

use std::time::Duration;

use object_store::path::Path;
use prometheus::IntGauge;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::clock::now_millis;
use crate::metrics::InFlight;
use crate::oci::Digest;
use crate::storage::{Store, Versioned};

/// The lease record, as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// The process holding it (one id per start, so a restarted replica is a new owner).
    pub owner: String,
    /// The owner's advertised base URL, where the internal endpoint streams the fill.
    pub peer: String,
    /// Unix milliseconds after which the lease is void unless renewed.
    pub expires_at: u64,
}

impl Lease {
    pub fn new(owner: &str, peer: &str, ttl: Duration) -> Lease {
        Lease {
            owner: owner.to_string(),
            peer: peer.to_string(),
            expires_at: now_millis().saturating_add(ttl.as_millis() as u64),
        }
    }

    pub fn live(&self) -> bool {
        now_millis() < self.expires_at
    }
}

/// Where the lease of `d` lives.
pub fn key(d: &Digest) -> Path {
    crate::storage::layout::fill_lease(d)
}

/// A lease this replica holds: renewed every third of its TTL until dropped, then released
/// (deleted, if it is still ours), so the next replica that needs the blob finds it in the
/// store instead of waiting for the lease to lapse.
pub struct LeaseGuard {
    stop: Option<oneshot::Sender<()>>,
}

impl LeaseGuard {
    /// Starts renewing `held`, the version of the lease just written. `count` is one more
    /// until the lease has been released, after the guard is dropped: a shutdown waits for
    /// it, so a stopping replica does not leave its peers a lease to wait out.
    pub fn hold(
        store: Store,
        d: &Digest,
        held: Versioned<Lease>,
        ttl: Duration,
        count: IntGauge,
    ) -> LeaseGuard {
        let (tx, rx) = oneshot::channel();
        let counted = InFlight::new(&count);
        let key = key(d);
        tokio::spawn(async move {
            renew(store, key, held, ttl, rx).await;
            drop(counted);
        });
        LeaseGuard { stop: Some(tx) }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

async fn renew(
    store: Store,
    key: Path,
    mut held: Versioned<Lease>,
    ttl: Duration,
    mut stop: oneshot::Receiver<()>,
) {
    // At a fixed rate from when the lease was written, not a fixed pause after each write: a
    // store that takes a while to answer then eats into the margin (two thirds of the TTL)
    // instead of adding to the period, so the lease lapses only when one write takes longer
    // than that margin.
    let left = Duration::from_millis(held.value.expires_at.saturating_sub(now_millis()));
    let first = tokio::time::Instant::now() + left.saturating_sub(ttl * 2 / 3);
    let mut every = tokio::time::interval_at(first, ttl / 3);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = &mut stop => break,
        }
        let next = Lease::new(&held.value.owner, &held.value.peer, ttl);
        match store.replace_record(&key, &next, &held).await {
            Ok(Some(v)) => held = v,
            Ok(None) => {
                // Another replica took it over (this one was too slow to renew): the fill
                // goes on here too, and whichever commits first wins; the other's bytes are
                // the same.
                tracing::warn!(lease = %key, "fill lease taken over by another replica");
                let _ = stop.await;
                return;
            }
            Err(e) => {
                tracing::warn!(lease = %key, error = %crate::causes::Chain(&e), "cannot renew a fill lease; retrying");
            }
        }
    }
    // Released only if still ours: deleting a lease another replica took over would let a
    // third start its own fill.
    match store.get_versioned::<Lease>(&key).await {
        Ok(Some(v)) if v.value.owner == held.value.owner => {
            if let Err(e) = store.delete(&key).await {
                tracing::debug!(lease = %key, error = %crate::causes::Chain(&e), "cannot release a fill lease; it lapses");
            }
        }
        Ok(_) => {}
        Err(e) => {
            tracing::debug!(lease = %key, error = %crate::causes::Chain(&e), "cannot release a fill lease; it lapses");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::throttle::{ThrottleConfig, ThrottledStore};
    use object_store::ObjectStoreExt;
    use std::sync::Arc;
    use tokio::time::Instant;

    /// An in-memory store, and a store over it whose calls wait as `config` says.
    fn throttled(config: ThrottleConfig) -> (Arc<InMemory>, Store, tempfile::TempDir) {
        let inner = Arc::new(InMemory::new());
        let slow = ThrottledStore::new(inner.clone(), config);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::from_object_store(Arc::new(slow), dir.path().to_path_buf());
        (inner, store, dir)
    }

    /// A lease of `d`, just written to `store`.
    async fn create(store: &Store, d: &Digest, ttl: Duration) -> Versioned<Lease> {
        let lease = Lease::new("me", "http://me", ttl);
        match store.create_record(&key(d), &lease).await.unwrap() {
            crate::storage::Created::Created(v) => v,
            other => panic!("{other:?}"),
        }
    }

    /// The count falls only once the released lease is gone from the store: a replica
    /// stopping when it reads zero leaves no lease behind. Counting only until the guard is
    /// dropped fails this, the delete (2 s here) still on its way.
    #[tokio::test(start_paused = true)]
    async fn the_count_falls_once_the_lease_is_deleted() {
        let ttl = Duration::from_secs(30);
        let (inner, store, _dir) = throttled(ThrottleConfig {
            wait_delete_per_call: Duration::from_secs(2),
            ..Default::default()
        });
        let d = Digest::sha256_of(b"blob");
        let held = create(&store, &d, ttl).await;
        let count = IntGauge::new("held", "held").unwrap();
        let guard = LeaseGuard::hold(store, &d, held, ttl, count.clone());
        assert_eq!(count.get(), 1);
        drop(guard);
        let end = Instant::now() + ttl;
        while count.get() > 0 && Instant::now() < end {
            // Paused time: each step runs whatever is due, then moves the clock.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(count.get(), 0, "the release ended");
        assert!(
            inner.head(&key(&d)).await.is_err(),
            "the lease is deleted by the time the count falls"
        );
    }

    /// With every write taking 40% of the TTL, each renewal must land before the previous
    /// lease runs out. Renewing a fixed pause after each write (the period growing by the
    /// store's latency) fails this: the gap reaches TTL/3 + the latency.
    #[tokio::test(start_paused = true)]
    async fn a_slow_store_eats_into_the_margin_not_the_period() {
        let ttl = Duration::from_secs(3);
        let latency = Duration::from_millis(1200);
        let (inner, store, dir) = throttled(ThrottleConfig {
            wait_put_per_call: latency,
            ..Default::default()
        });
        // Created on the fast store, so the lease is written at the moment it is dated.
        let fast = Store::from_object_store(inner.clone(), dir.path().to_path_buf());
        let d = Digest::sha256_of(b"blob");
        let held = create(&fast, &d, ttl).await;
        let guard = LeaseGuard::hold(store, &d, held, ttl, IntGauge::new("held", "held").unwrap());

        // When each version of the record became visible, watched on the fast inner store.
        let (mut seen, mut last) = (vec![Instant::now()], None);
        let end = Instant::now() + 10 * ttl;
        while Instant::now() < end {
            let tag = inner.head(&key(&d)).await.unwrap().e_tag;
            if last.as_ref().is_some_and(|l| *l != tag) {
                seen.push(Instant::now());
            }
            last = Some(tag);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(guard);
        assert!(seen.len() >= 10, "renewals: {}", seen.len() - 1);
        // A renewal started at `t` holds until `t + ttl` and shows at `t + latency` (the
        // lease itself showed as it was dated); each is seen within a poll of showing.
        let poll = Duration::from_millis(50);
        for (i, w) in seen.windows(2).enumerate() {
            let gap = w[1] - w[0];
            let dated = if i == 0 { Duration::ZERO } else { latency };
            assert!(
                gap + dated <= ttl + poll,
                "a renewal {gap:?} after the previous one: the lease lapsed in between"
            );
        }
    }
}
