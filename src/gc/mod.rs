//! The bounded cache: `[storage] max_size`, least-recently-used eviction by image, and the
//! `archway gc` command.
//!
//! A run lists the store (content, manifest links, tags, blob links), reads the manifests that
//! links reach to learn what references what, merges every replica's access journal, and
//! plans with [`plan::plan`]. Deletion goes in the reverse order of a fill — first the tags
//! and manifest links of evicted images, then each content object after its blob links,
//! manifests before what they reference — so no tag or link is ever left pointing at content
//! that is gone.
//!
//! Replicas sharing a bucket may each run; deletes are idempotent and every replica's
//! recent use is in the journals (or within `gc_min_age`, which nothing younger than is
//! touched).

pub mod access;
pub mod plan;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use futures_util::TryStreamExt;
use object_store::path::Path;

use crate::config::GcConfig;
use crate::error::Result;
use crate::metrics::Metrics;
use crate::oci::{manifest, Digest, RepoName};
use crate::storage::layout::{self, RepoEntryKind};
use crate::storage::Store;
pub use access::AccessLog;
pub use plan::{Plan, RootKey};

/// Runs collections over one store.
pub struct Collector {
    store: Store,
    config: GcConfig,
    access: Arc<AccessLog>,
    /// What each manifest references. Manifests are immutable, so this survives runs and only
    /// shrinks when they are deleted.
    refs: Mutex<HashMap<Digest, Arc<Refs>>>,
    running: tokio::sync::Mutex<()>,
}

/// What one manifest references.
#[derive(Debug)]
struct Refs {
    /// Child manifests (of an index): these have references of their own.
    children: Vec<Digest>,
    /// Children and blobs, without duplicates.
    all: Arc<[Digest]>,
}

impl Default for Refs {
    fn default() -> Refs {
        Refs {
            children: Vec::new(),
            all: Arc::from(Vec::new()),
        }
    }
}

impl Refs {
    fn of(m: manifest::ManifestRefs) -> Refs {
        let children: Vec<Digest> = m.manifests.iter().map(|c| c.digest.clone()).collect();
        let mut all = children.clone();
        all.extend(m.blobs.into_iter().map(|(b, _)| b));
        all.sort();
        all.dedup();
        Refs {
            children,
            all: all.into(),
        }
    }
}

/// The one field of a tag record a run needs.
#[derive(serde::Deserialize)]
struct TagTarget {
    digest: Digest,
}

/// What a run found and did.
#[derive(Debug)]
pub struct Report {
    /// What was evicted (in a dry run, what would be), and the sizes before and after.
    pub plan: Plan,
    /// The limit planned against, in bytes: `storage.max_size`, or `archway gc --max-size`.
    pub max_size: u64,
    /// Content objects under `blobs/` when the run listed the store.
    pub objects: usize,
    /// Nothing was deleted: the plan only says what a real run would do.
    pub dry_run: bool,
    /// Deletions that failed (the next run retries them).
    pub errors: usize,
}

/// Everything listed under `repositories/`, grouped for deletion.
#[derive(Default)]
struct Listing {
    inventory: plan::Inventory,
    tags: HashMap<(Arc<str>, RepoName), Vec<Path>>,
    blob_links: HashMap<Digest, Vec<Path>>,
}

impl Collector {
    pub fn new(store: Store, config: GcConfig, access: Arc<AccessLog>) -> Collector {
        Collector {
            store,
            config,
            access,
            refs: Default::default(),
            running: Default::default(),
        }
    }

    /// One collection: plan evictions down to `max_size` and, unless `dry_run`, carry them out.
    pub async fn run(&self, max_size: u64, dry_run: bool) -> Result<Report> {
        self.run_sweeping(max_size, dry_run, false).await
    }

    /// [`Collector::run`], and with `sweep` also delete content nothing references any more
    /// (left by deletes in hosted repositories, or by evicted images), whatever the size:
    /// what `archway gc` does.
    pub async fn run_sweeping(&self, max_size: u64, dry_run: bool, sweep: bool) -> Result<Report> {
        let _one_at_a_time = self.running.lock().await;
        if !dry_run {
            self.access.flush(&self.store).await?;
        }
        let mut listing = self.list().await?;
        self.load_refs(&mut listing.inventory).await?;
        let (mut atimes, mut journals) = access::load(&self.store).await?;
        let mut plan = self.plan(&listing, &atimes, max_size, sweep);
        if !dry_run && !plan.is_empty() {
            // Listing a large store takes a while: take in the uses noted meanwhile (here,
            // and by replicas that flushed since) and plan again before deleting anything.
            self.access.flush(&self.store).await?;
            (atimes, journals) = access::load(&self.store).await?;
            plan = self.plan(&listing, &atimes, max_size, sweep);
        }
        let mut report = Report {
            objects: listing.inventory.content.len(),
            plan,
            max_size,
            dry_run,
            errors: 0,
        };
        if dry_run {
            return Ok(report);
        }
        if report.plan.is_empty() {
            // Under the limit: still fold the journals written since into one, so they do
            // not pile up between evictions.
            if journals.len() > 1 {
                let keep = prune(atimes, &listing, &report.plan, self.keep_after());
                if let Err(e) =
                    access::compact(&self.store, self.access.replica(), &keep, &journals).await
                {
                    tracing::warn!(error = %crate::causes::Chain(&e), "gc: cannot compact the access journals");
                }
            }
            return Ok(report);
        }
        report.errors = self.delete(&report.plan, &listing).await;
        let keep = prune(atimes, &listing, &report.plan, self.keep_after());
        if let Err(e) = access::compact(&self.store, self.access.replica(), &keep, &journals).await
        {
            tracing::warn!(error = %crate::causes::Chain(&e), "gc: cannot compact the access journals; the next run will");
            report.errors += 1;
        }
        if let Ok(mut refs) = self.refs.lock() {
            for (d, _) in &report.plan.content {
                refs.remove(d);
            }
        }
        Ok(report)
    }

    /// Uses at or after this moment (epoch millis) protect what they used.
    fn keep_after(&self) -> u64 {
        crate::clock::now_millis().saturating_sub(self.config.min_age.as_millis() as u64)
    }

    fn plan(&self, listing: &Listing, atimes: &plan::Atimes, max_size: u64, sweep: bool) -> Plan {
        plan::plan_sweeping(
            &listing.inventory,
            atimes,
            max_size,
            self.keep_after(),
            sweep,
        )
    }

    async fn list(&self) -> Result<Listing> {
        let mut l = Listing::default();
        let mut blobs = self.store.list(layout::BLOBS);
        while let Some(meta) = blobs.try_next().await? {
            if let Some(d) = layout::parse_blob(&meta.location) {
                l.inventory.content.insert(
                    d,
                    plan::Object {
                        size: meta.size,
                        modified: meta.last_modified.timestamp_millis().max(0) as u64,
                    },
                );
            }
        }
        let mut names: HashMap<String, Arc<str>> = HashMap::new();
        let mut repos = self.store.list(layout::REPOSITORIES);
        while let Some(meta) = repos.try_next().await? {
            let Some(e) = layout::parse_repository(&meta.location) else {
                continue;
            };
            let upstream = names
                .entry(e.upstream)
                .or_insert_with_key(|k| k.as_str().into())
                .clone();
            match e.kind {
                RepoEntryKind::Manifest(digest) => {
                    let modified = meta.last_modified.timestamp_millis().max(0) as u64;
                    let key = RootKey {
                        upstream,
                        repo: e.repo,
                        digest,
                    };
                    l.inventory.roots.insert(key, modified);
                }
                RepoEntryKind::Tag(_) => l
                    .tags
                    .entry((upstream, e.repo))
                    .or_default()
                    .push(meta.location),
                RepoEntryKind::Blob(d) => l.blob_links.entry(d).or_default().push(meta.location),
            }
        }
        // Hosted repositories: their manifests are never evicted, nor what they reference;
        // their blob links go with their blob when a sweep deletes it.
        let mut hosted = self.store.list(layout::HOSTED);
        while let Some(meta) = hosted.try_next().await? {
            let Some(e) = layout::parse_hosted(&meta.location) else {
                continue;
            };
            match e.kind {
                RepoEntryKind::Manifest(d) => {
                    l.inventory.pinned.insert(d);
                }
                RepoEntryKind::Blob(d) => {
                    l.inventory.pushed.insert(d.clone());
                    l.blob_links.entry(d).or_default().push(meta.location);
                }
                RepoEntryKind::Tag(_) => {}
            }
        }
        Ok(l)
    }

    /// Reads every manifest the roots reach (through indexes too) to learn its references.
    async fn load_refs(&self, inv: &mut plan::Inventory) -> Result<()> {
        let mut queue: VecDeque<Digest> = inv
            .roots
            .keys()
            .map(|r| r.digest.clone())
            .chain(inv.pinned.iter().cloned())
            .collect();
        let mut seen: HashSet<Digest> = HashSet::new();
        while let Some(d) = queue.pop_front() {
            if !seen.insert(d.clone()) || !inv.content.contains_key(&d) {
                continue;
            }
            let cached = self.refs.lock().ok().and_then(|r| r.get(&d).cloned());
            let refs = match cached {
                Some(r) => r,
                None => {
                    let Some(bytes) = self.store.read_small(&d).await? else {
                        continue;
                    };
                    let r = Arc::new(match manifest::parse(&bytes, None) {
                        Ok(m) => Refs::of(m),
                        Err(e) => {
                            tracing::warn!(digest = %d, error = %crate::causes::Chain(&e), "gc: a cached manifest does not parse; no unreferenced content is deleted in this run");
                            inv.opaque = true;
                            continue;
                        }
                    });
                    if let Ok(mut cache) = self.refs.lock() {
                        cache.insert(d.clone(), r.clone());
                    }
                    r
                }
            };
            queue.extend(refs.children.iter().cloned());
            inv.refs.insert(d, refs.all.clone());
        }
        Ok(())
    }

    /// Carries out a plan; returns how many deletions failed.
    async fn delete(&self, plan: &Plan, listing: &Listing) -> usize {
        let mut errors = 0usize;
        // Tags that point at an evicted root go first, so no pull by tag finds it half gone.
        let mut unlinked: HashMap<(Arc<str>, RepoName), HashSet<&Digest>> = HashMap::new();
        let roots = plan.roots.iter().map(|(r, _)| r).chain(&plan.dangling);
        for r in roots.clone() {
            unlinked
                .entry((r.upstream.clone(), r.repo.clone()))
                .or_default()
                .insert(&r.digest);
        }
        for (repo, digests) in &unlinked {
            for key in listing.tags.get(repo).into_iter().flatten() {
                match self.store.get_record::<TagTarget>(key).await {
                    Ok(Some(t)) if digests.contains(&t.digest) => {
                        if let Err(e) = self.store.delete(key).await {
                            failed(&mut errors, key, e);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => failed(&mut errors, key, e),
                }
            }
        }
        for r in roots {
            let key = layout::manifest_link(&r.upstream, &r.repo, &r.digest);
            if let Err(e) = self.store.delete(&key).await {
                failed(&mut errors, &key, e);
            }
        }
        if errors > 0 {
            // A tag or link that is still there may lead a client to this content: keep it
            // all until a later run has removed them.
            tracing::warn!(
                errors,
                "gc: tags or links could not be removed; deleting no content in this run"
            );
            return errors;
        }
        for (d, _) in &plan.content {
            let before = errors;
            for key in listing.blob_links.get(d).into_iter().flatten() {
                if let Err(e) = self.store.delete(key).await {
                    failed(&mut errors, key, e);
                }
            }
            if errors > before {
                // A link left behind would name a blob that is gone: keep the blob too.
                continue;
            }
            let key = layout::blob(d);
            if let Err(e) = self.store.delete(&key).await {
                failed(&mut errors, &key, e);
            }
        }
        errors
    }

    /// Keeps the cache under `max_size` while serving: a run every `gc_interval`, and sooner
    /// when this replica's writes push the estimated size over the limit. `evicted` hears of
    /// every run that deleted something (to drop in-memory state that named it).
    pub async fn maintain(
        self: Arc<Self>,
        metrics: Metrics,
        evicted: impl Fn(Arc<Report>) -> futures_util::future::BoxFuture<'static, ()>,
    ) {
        let Some(max) = self.config.max_size else {
            return;
        };
        let meter = self.store.meter().clone();
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Size after the last run, and the meter's reading when it started.
        let mut base: Option<(u64, u64)> = None;
        // The last run could not get under the limit (all recent): wait for the next tick
        // rather than rescanning after every write.
        let mut short = false;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = meter.added(), if !short => {
                    if let Some((size, at)) = base {
                        let estimate = size + meter.total().saturating_sub(at);
                        metrics.cache_size.set(estimate as i64);
                        if estimate <= max {
                            continue;
                        }
                    }
                }
            }
            let at = meter.total();
            let started = std::time::Instant::now();
            match self.run(max, false).await {
                Ok(r) => {
                    base = Some((r.plan.size_after, at));
                    short = r.plan.size_after > max;
                    if short {
                        tracing::warn!(
                            size_bytes = r.plan.size_after,
                            max_size = max,
                            min_age = %humantime::format_duration(self.config.min_age),
                            "gc: the cache is over storage.max_size, but everything left was used within storage.gc_min_age"
                        );
                    }
                    let r = Arc::new(r);
                    if !r.plan.roots.is_empty() || !r.plan.content.is_empty() {
                        tracing::info!(
                            evicted_manifests = r.plan.roots.len(),
                            deleted_objects = r.plan.content.len(),
                            freed_bytes = r.plan.freed(),
                            size_bytes = r.plan.size_after,
                            max_size = max,
                            errors = r.errors,
                            took_ms = started.elapsed().as_millis() as u64,
                            "gc: cache trimmed"
                        );
                        evicted(r.clone()).await;
                    }
                    // Counted last: whoever watches these sees a run whose effects are done.
                    count(&metrics, &r);
                }
                Err(e) => {
                    metrics.gc_runs.with_label_values(&["error"]).inc();
                    tracing::warn!(error = %crate::causes::Chain(&e), "gc: run failed");
                    short = true;
                }
            }
        }
    }

    /// Writes out the access times noted in memory, every [`access::FLUSH_INTERVAL`].
    pub async fn flush_periodically(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(access::FLUSH_INTERVAL);
        loop {
            ticker.tick().await;
            self.flush().await;
        }
    }

    pub async fn flush(&self) {
        if let Err(e) = self.access.flush(&self.store).await {
            tracing::warn!(error = %crate::causes::Chain(&e), "cannot write access times; keeping them for the next attempt");
        }
    }
}

/// A finished run, in the metrics.
fn count(metrics: &Metrics, r: &Report) {
    metrics.cache_size.set(r.plan.size_after as i64);
    let evictions = |kind: &str, n: usize| {
        metrics
            .evictions
            .with_label_values(&[kind])
            .inc_by(n as u64)
    };
    evictions("manifest", r.plan.roots.len());
    evictions("content", r.plan.content.len());
    metrics.evicted_bytes.inc_by(r.plan.freed());
    metrics.gc_runs.with_label_values(&["ok"]).inc();
}

fn failed(errors: &mut usize, what: &Path, e: crate::error::Error) {
    tracing::warn!(key = %what, error = %crate::causes::Chain(&e), "gc: delete failed");
    *errors += 1;
}

/// The access times that still matter after `plan`: surviving roots, content no root
/// reaches (which competes by its own last use), and recent uses of anything.
fn prune(atimes: plan::Atimes, listing: &Listing, plan: &Plan, keep_after: u64) -> plan::Atimes {
    let gone: HashSet<&RootKey> = plan.roots.iter().map(|(r, _)| r).collect();
    let unreachable: HashSet<&Digest> = plan.unreachable_kept.iter().collect();
    let deleted: HashSet<&Digest> = plan.content.iter().map(|(d, _)| d).collect();
    plan::Atimes {
        roots: atimes
            .roots
            .into_iter()
            .filter(|(k, _)| listing.inventory.roots.contains_key(k) && !gone.contains(k))
            .collect(),
        blobs: atimes
            .blobs
            .into_iter()
            .filter(|(d, t)| !deleted.contains(d) && (unreachable.contains(d) || *t >= keep_after))
            .collect(),
    }
}

/// A byte count for people (`archway gc` output, logs).
pub fn human_bytes(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Digest;

    #[tokio::test]
    async fn journals_are_folded_even_when_nothing_is_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::from_object_store(
            Arc::new(object_store::memory::InMemory::new()),
            dir.path().to_path_buf(),
        );
        let access = Arc::new(AccessLog::new(true));
        let up: Arc<str> = "hub".into();
        let repo: RepoName = "app".parse().unwrap();
        for i in 0..3u8 {
            access.manifest(&up, &repo, &Digest::sha256_of(&[i]));
            access.flush(&store).await.unwrap();
        }
        assert_eq!(access::load(&store).await.unwrap().1.len(), 3);
        let gc = Collector::new(store.clone(), GcConfig::default(), access);
        let r = gc.run(u64::MAX, true).await.unwrap();
        assert!(r.plan.is_empty());
        assert_eq!(
            access::load(&store).await.unwrap().1.len(),
            3,
            "a dry run writes nothing"
        );
        gc.run(u64::MAX, false).await.unwrap();
        assert_eq!(access::load(&store).await.unwrap().1.len(), 1);
    }
}
