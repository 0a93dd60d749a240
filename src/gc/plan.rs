//! Which cached content to delete to bring the cache under its size limit: a pure function of
//! what the store holds, what references what, and when each thing was last used.
//!
//! The unit of eviction is a *root*: a manifest linked to a repository (what a client pulls).
//! Content — manifests and blobs — lives exactly as long as some remaining root reaches it,
//! directly or through an index. So evicting the least recently used roots can never take a
//! layer from under a manifest that is still served from the cache, which is how
//! distribution's proxy breaks cached images (distribution/distribution#2367). Content no root
//! reaches at all (a blob fetched by digest alone, what an evicted image left behind) competes
//! by its own last use. A platform manifest's link is held by every index of the same
//! repository that reaches it: a client that gets the index from the cache asks the repository
//! for that manifest by digest next, whenever it last did so itself.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use crate::oci::{Digest, RepoName};

/// A manifest linked to a repository: what a pull names, and what eviction removes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RootKey {
    /// The upstream's configured name, the key segment after `repositories/`.
    pub upstream: Arc<str>,
    /// The repository as that upstream names it.
    pub repo: RepoName,
    /// Of the manifest the link names.
    pub digest: Digest,
}

impl std::fmt::Display for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.upstream, self.repo, self.digest)
    }
}

/// A content object: its size and when it was written (epoch millis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Object {
    /// In bytes, as the store lists it.
    pub size: u64,
    /// The store's last-modified time, in epoch milliseconds.
    pub modified: u64,
}

/// What the store holds.
#[derive(Debug, Default)]
pub struct Inventory {
    /// Everything under `blobs/`: layers, configs and manifests.
    pub content: HashMap<Digest, Object>,
    /// Manifest links, with when each was written.
    pub roots: HashMap<RootKey, u64>,
    /// For each manifest reached: the manifests and blobs it references.
    pub refs: HashMap<Digest, Arc<[Digest]>>,
    /// Some cached manifest could not be read for its references: content that looks
    /// unreachable may not be, so none of it is a candidate.
    pub opaque: bool,
    /// Manifests of hosted repositories: roots that are never evicted, so neither is what
    /// they reach.
    pub pinned: HashSet<Digest>,
    /// Blobs pushed to hosted repositories: never evicted either (a push in progress has its
    /// blobs before its manifest), but swept once nothing references them.
    pub pushed: HashSet<Digest>,
}

/// Last-use times recorded by the replicas (epoch millis).
#[derive(Debug, Default, Clone)]
pub struct Atimes {
    /// When each manifest was last served from its repository.
    pub roots: HashMap<RootKey, u64>,
    /// When each blob was last served, from whichever repository.
    pub blobs: HashMap<Digest, u64>,
}

/// The outcome of planning.
#[derive(Debug, Default)]
pub struct Plan {
    /// Bytes of content in the store when planning began.
    pub size_before: u64,
    /// Bytes left once the plan is carried out; above `max_size` when it stopped short.
    pub size_after: u64,
    /// Roots to unlink, least recently used first, with their last use.
    pub roots: Vec<(RootKey, u64)>,
    /// Content to delete, each manifest before what it references.
    pub content: Vec<(Digest, u64)>,
    /// Content that no remaining root reaches and that stays (used too recently).
    pub unreachable_kept: Vec<Digest>,
    /// Links whose manifest is no longer in the store (a delete that failed, a race with a
    /// fill), unused for longer than the protection window: removed with their tags.
    pub dangling: Vec<RootKey>,
}

impl Plan {
    pub fn freed(&self) -> u64 {
        self.size_before - self.size_after
    }

    /// Nothing to delete.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty() && self.content.is_empty() && self.dangling.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Candidate<'a> {
    Root(&'a RootKey),
    Unreachable(&'a Digest),
}

/// Plans evictions until the content fits in `max_size`, never touching anything used at or
/// after `keep_after` (epoch millis). When what remains is all that recent, the plan stops
/// short and `size_after` stays above `max_size`.
pub fn plan(inv: &Inventory, atimes: &Atimes, max_size: u64, keep_after: u64) -> Plan {
    plan_sweeping(inv, atimes, max_size, keep_after, false)
}

/// [`plan`], and with `sweep` also every piece of content nothing references any more (what
/// deletes in hosted repositories left, what evicted images left) that was not used at or
/// after `keep_after`, whatever the size.
pub fn plan_sweeping(
    inv: &Inventory,
    atimes: &Atimes,
    max_size: u64,
    keep_after: u64,
    sweep: bool,
) -> Plan {
    let mut p = Planner::new(inv, atimes, keep_after);
    while let Some(Reverse((used, c))) = p.queue.pop() {
        if p.plan.size_after <= max_size || used >= keep_after {
            break;
        }
        match c {
            Candidate::Unreachable(d) => p.delete(d),
            Candidate::Root(root) => p.evict(root, used),
        }
    }
    if sweep && !inv.opaque {
        let mut left: Vec<&Digest> = p
            .unreachable
            .iter()
            .chain(&p.recent_orphans)
            .copied()
            .filter(|d| !p.deleted.contains(*d) && p.content_used(d) < keep_after)
            .collect();
        left.sort();
        left.dedup();
        for d in left {
            p.delete(d);
        }
    }
    p.finish()
}

/// The state of one planning run, over borrowed inventory.
struct Planner<'a> {
    inv: &'a Inventory,
    atimes: &'a Atimes,
    keep_after: u64,
    /// How many live referrers each piece of content has: roots plus referencing manifests
    /// that are themselves reached.
    rc: HashMap<&'a Digest, u32>,
    /// Content no root reaches, directly or through an index.
    unreachable: Vec<&'a Digest>,
    /// For each link another root of its repository reaches: how many such roots remain.
    held_by: HashMap<&'a RootKey, u32>,
    /// For each root: the links it holds.
    holds: HashMap<&'a RootKey, Vec<&'a RootKey>>,
    /// Candidates, least recently used first.
    queue: BinaryHeap<Reverse<(u64, Candidate<'a>)>>,
    /// Content left without referrers but used too recently to go.
    recent_orphans: Vec<&'a Digest>,
    deleted: HashSet<&'a Digest>,
    plan: Plan,
}

impl<'a> Planner<'a> {
    fn new(inv: &'a Inventory, atimes: &'a Atimes, keep_after: u64) -> Planner<'a> {
        let size_before: u64 = inv.content.values().map(|o| o.size).sum();
        let (rc, reached) = reference_counts(inv);
        let (held_by, holds) = held_links(inv);
        let unreachable = inv
            .content
            .keys()
            .filter(|d| !reached.contains(d))
            .collect();
        let mut p = Planner {
            inv,
            atimes,
            keep_after,
            rc,
            unreachable,
            held_by,
            holds,
            queue: BinaryHeap::new(),
            recent_orphans: Vec::new(),
            deleted: HashSet::new(),
            plan: Plan {
                size_before,
                size_after: size_before,
                ..Default::default()
            },
        };
        for (root, modified) in &inv.roots {
            if inv.content.contains_key(&root.digest) && !p.held_by.contains_key(root) {
                let used = p.last_use(root, *modified);
                p.queue.push(Reverse((used, Candidate::Root(root))));
            }
        }
        if !inv.opaque {
            for d in p.unreachable.clone() {
                if inv.pushed.contains(d) {
                    continue;
                }
                let used = p.content_used(d);
                p.queue.push(Reverse((used, Candidate::Unreachable(d))));
            }
        }
        p
    }

    fn last_use(&self, root: &RootKey, modified: u64) -> u64 {
        self.atimes
            .roots
            .get(root)
            .copied()
            .unwrap_or(0)
            .max(modified)
    }

    fn content_used(&self, d: &Digest) -> u64 {
        self.atimes
            .blobs
            .get(d)
            .copied()
            .unwrap_or(0)
            .max(self.inv.content.get(d).map_or(0, |o| o.modified))
    }

    fn delete(&mut self, d: &'a Digest) {
        let size = self.inv.content[d].size;
        self.plan.size_after -= size;
        self.plan.content.push((d.clone(), size));
        self.deleted.insert(d);
    }

    /// Unlinks a root: the links it held may become candidates, and content it alone kept
    /// alive goes with it.
    fn evict(&mut self, root: &'a RootKey, used: u64) {
        self.plan.roots.push((root.clone(), used));
        for child in self.holds.get(root).cloned().into_iter().flatten() {
            if let Some(n) = self.held_by.get_mut(child) {
                *n -= 1;
                if *n == 0 {
                    let used = self.last_use(child, self.inv.roots[child]);
                    self.queue.push(Reverse((used, Candidate::Root(child))));
                }
            }
        }
        self.release(&root.digest);
    }

    /// Drops one reference to `d`; whatever drops to no referrers goes, and releases what it
    /// references in turn.
    fn release(&mut self, d: &'a Digest) {
        let mut release = vec![d];
        while let Some(d) = release.pop() {
            let Some(n) = self.rc.get_mut(d) else {
                continue;
            };
            *n -= 1;
            if *n > 0 {
                continue;
            }
            // A layer fetched moments ago belongs to a pull in progress, whatever the
            // manifest's own last use: it stays, and competes later on its own. A pushed
            // blob stays until a sweep.
            if self.content_used(d) >= self.keep_after || self.inv.pushed.contains(d) {
                self.recent_orphans.push(d);
                continue;
            }
            self.delete(d);
            release.extend(
                refs_of(self.inv, d)
                    .iter()
                    .filter(|r| self.inv.content.contains_key(*r)),
            );
        }
    }

    fn finish(mut self) -> Plan {
        let mut dangling: Vec<RootKey> = self
            .inv
            .roots
            .iter()
            .filter(|(r, modified)| {
                !self.inv.content.contains_key(&r.digest)
                    && self.last_use(r, **modified) < self.keep_after
            })
            .map(|(r, _)| r.clone())
            .collect();
        dangling.sort();
        self.plan.dangling = dangling;
        self.plan.unreachable_kept = self
            .unreachable
            .iter()
            .chain(&self.recent_orphans)
            .filter(|d| !self.deleted.contains(*d))
            .map(|d| (*d).clone())
            .collect();
        self.plan
    }
}

fn refs_of<'a>(inv: &'a Inventory, d: &Digest) -> &'a [Digest] {
    inv.refs.get(d).map(|r| &r[..]).unwrap_or_default()
}

/// How many live referrers each piece of content has (roots, and the manifests that are
/// themselves reached), and what is reached at all. Content hashes rule out cycles.
fn reference_counts(inv: &Inventory) -> (HashMap<&Digest, u32>, HashSet<&Digest>) {
    let mut rc: HashMap<&Digest, u32> = HashMap::new();
    let mut stack: Vec<&Digest> = Vec::new();
    let mut reached: HashSet<&Digest> = HashSet::new();
    let roots = inv.roots.keys().map(|r| &r.digest).chain(&inv.pinned);
    for d in roots {
        if inv.content.contains_key(d) {
            *rc.entry(d).or_default() += 1;
            if reached.insert(d) {
                stack.push(d);
            }
        }
    }
    while let Some(d) = stack.pop() {
        for r in refs_of(inv, d) {
            if !inv.content.contains_key(r) {
                continue;
            }
            *rc.entry(r).or_default() += 1;
            if reached.insert(r) {
                stack.push(r);
            }
        }
    }
    (rc, reached)
}

type Holds<'a> = (
    HashMap<&'a RootKey, u32>,
    HashMap<&'a RootKey, Vec<&'a RootKey>>,
);

/// A link that another surviving root of the same repository reaches (an index's platform
/// manifest) is what serving that index from the cache needs: a client asks the repository
/// for the child by digest. It becomes a candidate only once every root that reaches it is
/// gone. Returns how many roots hold each such link, and which links each root holds.
fn held_links(inv: &Inventory) -> Holds<'_> {
    let mut held_by: HashMap<&RootKey, u32> = HashMap::new();
    let mut holds: HashMap<&RootKey, Vec<&RootKey>> = HashMap::new();
    for root in inv.roots.keys() {
        if !inv.content.contains_key(&root.digest) {
            continue;
        }
        let mut seen: HashSet<&Digest> = HashSet::new();
        let mut stack: Vec<&Digest> = vec![&root.digest];
        while let Some(d) = stack.pop() {
            for r in refs_of(inv, d) {
                if !seen.insert(r) || *r == root.digest {
                    continue;
                }
                stack.push(r);
                let key = RootKey {
                    upstream: root.upstream.clone(),
                    repo: root.repo.clone(),
                    digest: r.clone(),
                };
                if let Some((child, _)) = inv.roots.get_key_value(&key) {
                    *held_by.entry(child).or_default() += 1;
                    holds.entry(root).or_default().push(child);
                }
            }
        }
    }
    (held_by, holds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Digest {
        Digest::sha256_of(s.as_bytes())
    }

    fn root(repo: &str, m: &str) -> RootKey {
        RootKey {
            upstream: "up".into(),
            repo: repo.parse().unwrap(),
            digest: d(m),
        }
    }

    /// Content sizes: manifests 1, blobs as given. `images`: (manifest, [blobs]).
    fn inventory(images: &[(&str, &[(&str, u64)])], written: u64) -> Inventory {
        let mut inv = Inventory::default();
        for (m, blobs) in images {
            inv.content.insert(
                d(m),
                Object {
                    size: 1,
                    modified: written,
                },
            );
            let refs: Vec<Digest> = blobs.iter().map(|(b, _)| d(b)).collect();
            inv.refs.insert(d(m), refs.into());
            for (b, size) in *blobs {
                inv.content.insert(
                    d(b),
                    Object {
                        size: *size,
                        modified: written,
                    },
                );
            }
        }
        inv
    }

    fn deleted(p: &Plan) -> Vec<Digest> {
        let mut v: Vec<Digest> = p.content.iter().map(|(d, _)| d.clone()).collect();
        v.sort();
        v
    }

    fn sorted(mut v: Vec<Digest>) -> Vec<Digest> {
        v.sort();
        v
    }

    #[test]
    fn least_recently_used_image_goes_first_and_shared_layers_stay() {
        let mut inv = inventory(
            &[
                ("a", &[("base", 100), ("a-layer", 50)]),
                ("b", &[("base", 100), ("b-layer", 50)]),
            ],
            10,
        );
        inv.roots.insert(root("app/a", "a"), 10);
        inv.roots.insert(root("app/b", "b"), 10);
        let mut at = Atimes::default();
        at.roots.insert(root("app/a", "a"), 30);
        at.roots.insert(root("app/b", "b"), 20);
        // 202 bytes; bring it to 160: b (used at 20) goes, with its own layer only.
        let p = plan(&inv, &at, 160, 1000);
        assert_eq!(p.roots, vec![(root("app/b", "b"), 20)]);
        assert_eq!(deleted(&p), sorted(vec![d("b"), d("b-layer")]));
        assert_eq!((p.size_before, p.size_after), (202, 151));
        assert!(p.unreachable_kept.is_empty());
    }

    #[test]
    fn a_manifest_in_two_repositories_stays_while_either_links_it() {
        let mut inv = inventory(&[("m", &[("layer", 100)])], 10);
        inv.roots.insert(root("one", "m"), 10);
        inv.roots.insert(root("two", "m"), 50);
        let p = plan(&inv, &Atimes::default(), 50, 40);
        // "one" goes (used at 10); "two" was used at 50, after keep_after: the content stays.
        assert_eq!(p.roots, vec![(root("one", "m"), 10)]);
        assert!(p.content.is_empty());
        assert_eq!(p.size_after, 101);
    }

    #[test]
    fn an_index_keeps_its_children_and_their_blobs() {
        let mut inv = inventory(
            &[
                ("idx", &[]),
                ("amd64", &[("l1", 100)]),
                ("arm64", &[("l2", 100)]),
            ],
            10,
        );
        inv.refs
            .insert(d("idx"), vec![d("amd64"), d("arm64")].into());
        inv.roots.insert(root("app", "idx"), 10);
        inv.roots.insert(root("app", "amd64"), 10);
        let mut at = Atimes::default();
        at.roots.insert(root("app", "idx"), 90);
        // The amd64 link is the oldest, but the index (recent) reaches it: a client that gets
        // the index asks the repository for it by digest, so the link stays with the index.
        let p = plan(&inv, &at, 10, 50);
        assert!(p.roots.is_empty() && p.content.is_empty(), "{p:?}");
        // Once the index is old too, everything goes, manifests before their blobs, and the
        // child link right after the index that held it.
        at.roots.insert(root("app", "idx"), 20);
        let p = plan(&inv, &at, 10, 50);
        assert_eq!(p.size_after, 0);
        assert_eq!(
            p.roots,
            vec![(root("app", "idx"), 20), (root("app", "amd64"), 10)]
        );
        let pos = |x: &str| p.content.iter().position(|(c, _)| *c == d(x)).unwrap();
        assert!(pos("idx") < pos("amd64") && pos("amd64") < pos("l1"));
        assert!(pos("arm64") < pos("l2"));
    }

    #[test]
    fn an_index_in_another_repository_does_not_hold_a_link() {
        let mut inv = inventory(&[("idx", &[]), ("amd64", &[("l1", 100)])], 10);
        inv.refs.insert(d("idx"), vec![d("amd64")].into());
        inv.roots.insert(root("a", "idx"), 10);
        inv.roots.insert(root("b", "amd64"), 10);
        let mut at = Atimes::default();
        at.roots.insert(root("a", "idx"), 90);
        // b's link is not what a's index needs (a's clients ask a): it goes, the content
        // stays because a's index still reaches it.
        let p = plan(&inv, &at, 10, 50);
        assert_eq!(p.roots, vec![(root("b", "amd64"), 10)]);
        assert!(p.content.is_empty());
    }

    #[test]
    fn unreachable_content_competes_by_its_own_last_use() {
        let mut inv = inventory(&[("m", &[("layer", 100)])], 10);
        inv.roots.insert(root("app", "m"), 10);
        for (name, t) in [("old-blob", 5), ("new-blob", 80)] {
            inv.content.insert(
                d(name),
                Object {
                    size: 30,
                    modified: t,
                },
            );
        }
        let mut at = Atimes::default();
        at.roots.insert(root("app", "m"), 60);
        // 161 bytes, limit 140: the old unreachable blob is enough.
        let p = plan(&inv, &at, 140, 1000);
        assert_eq!(deleted(&p), vec![d("old-blob")]);
        assert!(p.roots.is_empty());
        assert_eq!(p.unreachable_kept, vec![d("new-blob")]);
        // A recorded access protects an unreachable blob too.
        at.blobs.insert(d("old-blob"), 70);
        let p = plan(&inv, &at, 140, 1000);
        assert_eq!(p.roots, vec![(root("app", "m"), 60)]);
    }

    #[test]
    fn recent_use_is_never_evicted_even_over_the_limit() {
        let mut inv = inventory(&[("m", &[("layer", 100)])], 10);
        inv.roots.insert(root("app", "m"), 10);
        let mut at = Atimes::default();
        at.roots.insert(root("app", "m"), 500);
        let p = plan(&inv, &at, 1, 400);
        assert!(p.roots.is_empty() && p.content.is_empty());
        assert_eq!(p.size_after, 101);
    }

    #[test]
    fn under_the_limit_nothing_is_planned() {
        let mut inv = inventory(&[("m", &[("layer", 100)])], 10);
        inv.roots.insert(root("app", "m"), 10);
        let p = plan(&inv, &Atimes::default(), 101, u64::MAX);
        assert!(p.roots.is_empty() && p.content.is_empty());
    }

    #[test]
    fn a_link_whose_manifest_is_missing_is_not_a_candidate_but_is_swept() {
        let mut inv = inventory(&[("m", &[("layer", 100)])], 10);
        inv.roots.insert(root("app", "gone"), 1);
        inv.roots.insert(root("app", "gone-recently"), 500);
        let p = plan(&inv, &Atimes::default(), 0, 100);
        assert!(p.roots.is_empty());
        // m and its layer are unreachable (no root links m): both go.
        assert_eq!(deleted(&p), sorted(vec![d("m"), d("layer")]));
        assert_eq!(p.dangling, vec![root("app", "gone")]);
    }

    #[test]
    fn a_layer_in_use_outlives_its_evicted_manifest() {
        let mut inv = inventory(&[("m", &[("old", 100), ("pulling", 100)])], 10);
        inv.roots.insert(root("app", "m"), 10);
        let mut at = Atimes::default();
        at.blobs.insert(d("pulling"), 90);
        let p = plan(&inv, &at, 0, 50);
        assert_eq!(p.roots, vec![(root("app", "m"), 10)]);
        assert_eq!(deleted(&p), sorted(vec![d("m"), d("old")]));
        assert_eq!(p.unreachable_kept, vec![d("pulling")]);
    }

    #[test]
    fn an_unreadable_manifest_keeps_all_unreachable_content() {
        let mut inv = inventory(&[("m", &[("layer", 100)])], 10);
        inv.opaque = true;
        let p = plan(&inv, &Atimes::default(), 0, u64::MAX);
        assert!(p.content.is_empty());
    }
}
