//! Last-use times: noted in memory on every serve, written to the store in batches.
//!
//! A write per request would double the cost of a cached manifest hit and, on S3, bill every
//! pull twice. Instead each replica keeps the latest time per manifest and blob in memory and
//! writes them as one journal object every [`FLUSH_INTERVAL`] (and at shutdown). The collector
//! merges all replicas' journals, keeping the latest time per key, and compacts them into one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use super::plan::{Atimes, RootKey};
use crate::clock::now_millis;
use crate::error::Result;
use crate::oci::{Digest, RepoName};
use crate::storage::{layout, Store};

/// How often a serving replica writes out the access times it noted.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(30);

/// The access times noted since the last flush.
#[derive(Debug)]
pub struct AccessLog {
    /// Names this replica's journal objects, so replicas never overwrite each other's.
    replica: String,
    /// Only a bounded cache needs access times; an unbounded one notes nothing and writes no
    /// journals that nothing would ever compact.
    enabled: bool,
    pending: Mutex<Atimes>,
    /// Tells apart journals written within one millisecond.
    seq: std::sync::atomic::AtomicU64,
}

impl AccessLog {
    pub fn new(enabled: bool) -> AccessLog {
        AccessLog {
            replica: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            enabled,
            pending: Mutex::new(Atimes::default()),
            seq: Default::default(),
        }
    }

    fn journal_key(&self, suffix: &str) -> Path {
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        layout::access_journal(now_millis(), &format!("{}-{n}{suffix}", self.replica))
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Notes that a manifest was served from (or for) a repository.
    pub fn manifest(&self, upstream: &Arc<str>, repo: &RepoName, digest: &Digest) {
        if !self.enabled {
            return;
        }
        let key = RootKey {
            upstream: upstream.clone(),
            repo: repo.clone(),
            digest: digest.clone(),
        };
        let now = now_millis();
        if let Ok(mut p) = self.pending.lock() {
            p.roots.insert(key, now);
        }
    }

    /// Notes that a blob was served.
    pub fn blob(&self, digest: &Digest) {
        if !self.enabled {
            return;
        }
        let now = now_millis();
        if let Ok(mut p) = self.pending.lock() {
            p.blobs.insert(digest.clone(), now);
        }
    }

    /// Writes what was noted since the last flush as one journal object. On failure the
    /// times are kept for the next attempt.
    pub async fn flush(&self, store: &Store) -> Result<()> {
        let batch = match self.pending.lock() {
            Ok(mut p) if !p.roots.is_empty() || !p.blobs.is_empty() => std::mem::take(&mut *p),
            _ => return Ok(()),
        };
        let key = self.journal_key("");
        if let Err(e) = store.put_record(&key, &Journal::from(&batch)).await {
            if let Ok(mut p) = self.pending.lock() {
                merge(&mut p, batch);
            }
            return Err(e);
        }
        Ok(())
    }
}

/// Every replica's journals, merged, with the keys of the objects read.
pub async fn load(store: &Store) -> Result<(Atimes, Vec<Path>)> {
    // A journal listed but gone by the time it is read was compacted by a collection on
    // another replica, which wrote its merged journal first: list again to read that one.
    for _ in 0..3 {
        if let Some(loaded) = load_once(store).await? {
            return Ok(loaded);
        }
    }
    Err(crate::error::Error::Internal(
        "access journals keep changing under this collection (another one is running)".into(),
    ))
}

async fn load_once(store: &Store) -> Result<Option<(Atimes, Vec<Path>)>> {
    let metas: Vec<_> = store.list(layout::ACCESS).try_collect().await?;
    let mut all = Atimes::default();
    let mut keys = Vec::new();
    for m in metas {
        match store.get_record::<Journal>(&m.location).await {
            Ok(Some(j)) => merge(&mut all, j.into()),
            Ok(None) => return Ok(None),
            // A journal that does not parse is useless: let compaction remove it.
            Err(e) => {
                tracing::warn!(key = %m.location, error = %crate::causes::Chain(&e), "skipping access journal")
            }
        }
        keys.push(m.location);
    }
    Ok(Some((all, keys)))
}

/// Replaces the journals in `read` by one holding `keep`. Written before the old ones are
/// deleted, so a crash in between loses nothing (merging is idempotent).
pub async fn compact(store: &Store, replica: &str, keep: &Atimes, read: &[Path]) -> Result<()> {
    let key = layout::access_journal(now_millis(), &format!("{replica}-gc"));
    store.put_record(&key, &Journal::from(keep)).await?;
    for k in read.iter().filter(|k| **k != key) {
        store.delete(k).await?;
    }
    Ok(())
}

fn merge(into: &mut Atimes, from: Atimes) {
    for (k, t) in from.roots {
        let e = into.roots.entry(k).or_default();
        *e = (*e).max(t);
    }
    for (k, t) in from.blobs {
        let e = into.blobs.entry(k).or_default();
        *e = (*e).max(t);
    }
}

/// A journal object as stored: compact tuples, strings validated when read back.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Journal {
    /// (upstream, repository, digest, epoch millis)
    #[serde(default)]
    manifests: Vec<(String, String, String, u64)>,
    /// (digest, epoch millis)
    #[serde(default)]
    blobs: Vec<(String, u64)>,
}

impl From<&Atimes> for Journal {
    fn from(a: &Atimes) -> Journal {
        let mut j = Journal {
            manifests: a
                .roots
                .iter()
                .map(|(k, t)| {
                    (
                        k.upstream.to_string(),
                        k.repo.to_string(),
                        k.digest.to_string(),
                        *t,
                    )
                })
                .collect(),
            blobs: a.blobs.iter().map(|(d, t)| (d.to_string(), *t)).collect(),
        };
        j.manifests.sort();
        j.blobs.sort();
        j
    }
}

impl From<Journal> for Atimes {
    fn from(j: Journal) -> Atimes {
        let mut a = Atimes::default();
        let mut names: HashMap<String, Arc<str>> = HashMap::new();
        for (up, repo, digest, t) in j.manifests {
            let (Ok(repo), Ok(digest)) = (repo.parse(), digest.parse()) else {
                continue;
            };
            let upstream = names.entry(up).or_insert_with_key(|k| k.as_str().into());
            a.roots.insert(
                RootKey {
                    upstream: upstream.clone(),
                    repo,
                    digest,
                },
                t,
            );
        }
        for (digest, t) in j.blobs {
            if let Ok(d) = digest.parse() {
                a.blobs.insert(d, t);
            }
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &std::path::Path) -> Store {
        Store::from_object_store(
            Arc::new(object_store::memory::InMemory::new()),
            dir.to_path_buf(),
        )
    }

    #[tokio::test]
    async fn replicas_journals_merge_to_the_latest_time_and_compact() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let up: Arc<str> = "hub".into();
        let repo: RepoName = "library/alpine".parse().unwrap();
        let (m, b) = (Digest::sha256_of(b"m"), Digest::sha256_of(b"b"));

        let one = AccessLog::new(true);
        let two = AccessLog::new(true);
        let off = AccessLog::new(false);
        off.blob(&b);
        off.flush(&store).await.unwrap();
        assert_eq!(
            load(&store).await.unwrap().1.len(),
            0,
            "disabled: nothing written"
        );
        one.manifest(&up, &repo, &m);
        one.blob(&b);
        one.flush(&store).await.unwrap();
        // Nothing new: no object is written.
        one.flush(&store).await.unwrap();
        two.manifest(&up, &repo, &m);
        two.flush(&store).await.unwrap();

        let (all, read) = load(&store).await.unwrap();
        assert_eq!(read.len(), 2, "{read:?}");
        let key = RootKey {
            upstream: up.clone(),
            repo: repo.clone(),
            digest: m.clone(),
        };
        let t_two = all.roots[&key];
        assert!(all.blobs[&b] <= t_two);

        compact(&store, "x", &all, &read).await.unwrap();
        let (again, read) = load(&store).await.unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(again.roots[&key], t_two);
        assert_eq!(again.blobs.len(), 1);
    }
}
