//! Which manifests and blobs belong to which repository: the only reader and writer of the
//! per-repository links, in the store and in the memory that fronts it.
//!
//! A link is what lets a repository serve cached content: repository B never reads what only
//! repository A fetched. A link may also say where its content comes from when that is not
//! the repository itself (a fallback image reached through a synthesized index).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::try_join_all;

use super::manifests::Manifest;
use super::upstreams::Upstreams;
use super::{bounded, LinkKey};
use crate::error::Result;
use crate::oci::Digest;
use crate::routing::Route;
use crate::storage::layout;
use crate::storage::records::{BlobLink, ManifestLink};
use crate::storage::Store;

pub(crate) struct Links {
    store: Store,
    upstreams: Arc<Upstreams>,
    /// Manifests known to be linked, with their media type.
    manifests: moka::future::Cache<LinkKey, Arc<str>>,
    /// Blobs known to be linked, with the route to fetch them from.
    blobs: moka::future::Cache<LinkKey, Arc<Route>>,
}

fn key(route: &Route, d: &Digest) -> LinkKey {
    (route.upstream, route.repo.clone(), d.clone())
}

impl Links {
    /// `forget_after`: with a bounded cache another replica's collection may unlink what this
    /// one remembers, so memory forgets links once they are that old.
    pub(crate) fn new(
        store: Store,
        upstreams: Arc<Upstreams>,
        forget_after: Option<Duration>,
    ) -> Links {
        Links {
            store,
            upstreams,
            manifests: bounded(1_000_000, forget_after),
            blobs: bounded(4_000_000, forget_after),
        }
    }

    /// Whether memory knows the manifest is linked: the hot path, without the store.
    pub(crate) fn knows_manifest(&self, route: &Route, d: &Digest) -> bool {
        self.manifests.contains_key(&key(route, d))
    }

    /// The media type of a manifest linked to the routed repository, if it is.
    pub(crate) async fn manifest(&self, route: &Route, d: &Digest) -> Result<Option<Arc<str>>> {
        let k = key(route, d);
        if let Some(mt) = self.manifests.get(&k).await {
            return Ok(Some(mt));
        }
        let path = layout::manifest_link(self.upstreams.name(route), &route.repo, d);
        let Some(link) = self.store.get_record::<ManifestLink>(&path).await? else {
            return Ok(None);
        };
        let mt: Arc<str> = link.media_type.into();
        self.manifests.insert(k, mt.clone()).await;
        Ok(Some(mt))
    }

    /// Links `m` to the routed repository, fetched from `from` (the repository itself, or a
    /// fallback's).
    pub(crate) async fn link_manifest(
        &self,
        route: &Route,
        m: &Manifest,
        from: &Route,
    ) -> Result<()> {
        let link = ManifestLink {
            media_type: m.media_type.clone(),
            size: m.bytes.len() as u64,
            source: (from != route).then(|| self.upstreams.source(from)),
        };
        let path = layout::manifest_link(self.upstreams.name(route), &route.repo, &m.digest);
        self.store.put_record(&path, &link).await?;
        self.manifests
            .insert(key(route, &m.digest), m.media_type.as_str().into())
            .await;
        Ok(())
    }

    /// Where a blob linked to the routed repository is fetched from, or `None` when it is
    /// not linked.
    pub(crate) async fn blob(&self, route: &Route, d: &Digest) -> Result<Option<Arc<Route>>> {
        let k = key(route, d);
        if let Some(r) = self.blobs.get(&k).await {
            return Ok(Some(r));
        }
        // Boxed: the store's read is most of this future, and a cached blob's GET, which
        // memory answers, would otherwise carry it (and move it) on every request.
        Box::pin(self.load_blob_link(route, d, k)).await
    }

    /// A blob link from the store, remembered in memory.
    async fn load_blob_link(
        &self,
        route: &Route,
        d: &Digest,
        k: LinkKey,
    ) -> Result<Option<Arc<Route>>> {
        let path = layout::blob_link(self.upstreams.name(route), &route.repo, d);
        let Some(link) = self.store.get_record::<BlobLink>(&path).await? else {
            return Ok(None);
        };
        let from = link
            .source
            .and_then(|s| self.upstreams.route_of(&s))
            .unwrap_or_else(|| route.clone());
        let from = Arc::new(from);
        self.blobs.insert(k, from.clone()).await;
        Ok(Some(from))
    }

    /// Links one blob, of `size` bytes, fetched from `from`.
    pub(crate) async fn link_blob(
        &self,
        route: &Route,
        d: &Digest,
        size: u64,
        from: &Arc<Route>,
    ) -> Result<()> {
        self.link_blobs(route, &[(d.clone(), size)], from).await
    }

    /// Links the blobs a manifest references, all fetched from `from`. The store's records
    /// are written before memory learns of them, and before the manifest that names them is
    /// linked: whoever finds a link finds what it leads to linked too.
    pub(crate) async fn link_blobs(
        &self,
        route: &Route,
        blobs: &[(Digest, u64)],
        from: &Arc<Route>,
    ) -> Result<()> {
        let source = (**from != *route).then(|| self.upstreams.source(from));
        let name = self.upstreams.name(route);
        try_join_all(blobs.iter().map(|(d, size)| {
            let link = BlobLink {
                size: *size,
                source: source.clone(),
            };
            let path = layout::blob_link(name, &route.repo, d);
            async move { self.store.put_record(&path, &link).await }
        }))
        .await?;
        for (d, _) in blobs {
            self.blobs.insert(key(route, d), from.clone()).await;
        }
        Ok(())
    }

    /// Forgets every link held in memory (a collection may have removed some).
    pub(crate) fn forget_all(&self) {
        self.manifests.invalidate_all();
        self.blobs.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::testing;

    fn route(upstream: usize, repo: &str) -> Route {
        Route {
            upstream,
            repo: repo.parse().unwrap(),
        }
    }

    #[tokio::test]
    async fn links_are_per_repository_and_survive_a_restart() {
        let (store, _dir) = testing::memory_store();
        let upstreams = testing::upstreams(&["hub", "quay"]);
        let links = Links::new(store.clone(), upstreams.clone(), None);
        let (a, b) = (route(0, "team/a"), route(0, "team/b"));
        let m = Manifest::new(
            Digest::sha256_of(b"m"),
            "application/vnd.oci.image.manifest.v1+json".into(),
            bytes::Bytes::from_static(b"m"),
        );
        let blob = Digest::sha256_of(b"layer");
        links
            .link_blobs(&a, &[(blob.clone(), 5)], &Arc::new(a.clone()))
            .await
            .unwrap();
        links.link_manifest(&a, &m, &a).await.unwrap();
        assert!(links.knows_manifest(&a, &m.digest));
        assert!(!links.knows_manifest(&b, &m.digest), "b never linked it");
        assert_eq!(links.blob(&b, &blob).await.unwrap(), None);

        // A new process on the same store: from the store's records, not memory.
        let again = Links::new(store, upstreams, None);
        assert!(!again.knows_manifest(&a, &m.digest));
        assert_eq!(
            again.manifest(&a, &m.digest).await.unwrap().as_deref(),
            Some(m.media_type.as_str())
        );
        assert_eq!(again.blob(&a, &blob).await.unwrap().as_deref(), Some(&a));
        assert!(again.knows_manifest(&a, &m.digest), "remembered once read");
    }

    #[tokio::test]
    async fn a_link_remembers_the_fallback_it_comes_from() {
        let (store, _dir) = testing::memory_store();
        let upstreams = testing::upstreams(&["hub", "quay"]);
        let links = Links::new(store.clone(), upstreams.clone(), None);
        let here = route(0, "app");
        let fallback = Arc::new(route(1, "other/app"));
        let blob = Digest::sha256_of(b"s390x layer");
        links.link_blob(&here, &blob, 11, &fallback).await.unwrap();
        let record: BlobLink = store
            .get_record(&layout::blob_link("hub", &here.repo, &blob))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.source.unwrap().upstream, "quay");
        let again = Links::new(store, upstreams, None);
        assert_eq!(
            again.blob(&here, &blob).await.unwrap().as_deref(),
            Some(&*fallback),
            "fetched from the fallback's repository"
        );
        links.forget_all();
        assert!(links.blobs.get(&key(&here, &blob)).await.is_none());
    }
}
