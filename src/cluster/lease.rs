//! Fill leases: the record `fills/<algorithm>/<hex>` says which replica is fetching a blob
//! from the upstream, where its peers can stream the bytes from, and until when the claim
//! holds. Created with a create-only write, renewed and taken over with replace-if-unchanged
//! writes, so two replicas never both believe they hold it.

use std::time::Duration;

use object_store::path::Path;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::clock::now_millis;
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
    /// Starts renewing `held`, the version of the lease just written.
    pub fn hold(store: Store, d: &Digest, held: Versioned<Lease>, ttl: Duration) -> LeaseGuard {
        let (tx, rx) = oneshot::channel();
        tokio::spawn(renew(store, key(d), held, ttl, rx));
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
    let every = ttl / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
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
