//! Synthesis: the index a tag serves when a `[[fallback]]` rule covers its repository, with
//! the platforms the upstream lacks filled from per-architecture images.
//!
//! A fallback is admitted only after its image config says the platform it is served for: a
//! mislabelled image is left out (and logged), never served under the wrong architecture.
//! The index is canonical JSON, so replicas with separate caches serve the same digest.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::TryStreamExt;
use serde::Serialize;
use serde_json::Value;

use super::blobs::Blobs;
use super::links::Links;
use super::manifests::{Manifest, Manifests};
use super::provenance::{Provenance, Served};
use super::signatures::{
    Signatures, NOTE_FALLBACK_REPOSITORY, NOTE_UPSTREAM_DIGEST, NOTE_UPSTREAM_REPOSITORY,
};
use super::tags;
use super::upstreams::Upstreams;
use super::TagKey;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::oci::media::is_index;
use crate::oci::{index, manifest, Digest, Platform, Reference, Tag};
use crate::routing::{FallbackRef, Fallbacks, Route, Router, Rule};
use crate::singleflight;
use crate::storage::fill::FillFailed;
use crate::storage::Store;

/// The annotation that names the fallback reference an index entry came from.
pub const FALLBACK_ANNOTATION: &str = "io.archway.fallback.reference";

/// Config blobs are read whole; anything larger than this is not an image config.
const MAX_CONFIG_SIZE: usize = 4 * 1024 * 1024;

/// What one platform of a tag resolves to.
#[derive(Debug, Clone, Serialize)]
pub struct PlatformRow {
    /// Normalized `os/architecture[/variant]`, such as `linux/arm/v7`.
    pub platform: String,
    /// Of the entry's manifest; `None` when the fallback was refused.
    pub digest: Option<String>,
    /// `upstream index`, `upstream manifest`, or the fallback reference.
    pub source: String,
    /// The config check: `ok (config linux/s390x)`, or why the entry was left out.
    pub check: String,
    /// For a fallback left out: what kind of reason it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refusal>,
}

/// Why a fallback was left out of an index, as the console's matrix groups reasons.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The reference names nothing: no such tag or repository, or its index has no entry
    /// for the platform.
    Missing,
    /// Its image config names another platform (what would give `exec format error`).
    ArchitectureMismatch,
    /// The reference or what it names cannot be used (a malformed template, a nested
    /// index, a manifest that does not parse).
    Invalid,
    /// Its upstream could not be asked now.
    Unavailable,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::ArchitectureMismatch => "architecture mismatch",
            Refusal::Invalid => "invalid",
            Refusal::Unavailable => "unavailable",
        }
    }

    /// The kind of a failure to read the fallback.
    fn of(e: &Error) -> Refusal {
        match e {
            Error::ManifestUnknown(_) | Error::NameUnknown(_) | Error::BlobUnknown(_) => {
                Refusal::Missing
            }
            Error::ManifestInvalid(_)
            | Error::NameInvalid(_)
            | Error::TagInvalid(_)
            | Error::DigestInvalid(_)
            | Error::ReferenceInvalid(_)
            | Error::RepositoryDenied(_) => Refusal::Invalid,
            _ => Refusal::Unavailable,
        }
    }
}

/// How a tag resolves: the rows, and the manifest archway serves for it.
#[derive(Debug, Clone, Serialize)]
pub struct Resolution {
    /// `UPSTREAM/REPO`: the upstream's configured name, then the repository as it names it.
    pub repository: String,
    /// As the client or `archway inspect` named it.
    pub tag: String,
    /// Of the manifest served for the tag: the synthesized index, when there is one.
    pub digest: String,
    /// Of the manifest served for the tag.
    pub media_type: String,
    /// Whether archway built an index with fallback images instead of serving the upstream's.
    pub synthesized: bool,
    /// What the upstream itself serves for the tag (the same as `digest` unless
    /// synthesized).
    pub upstream_digest: String,
    /// The fingerprint of archway's key, when archway signs what it serves for the tag.
    pub signed_by: Option<String>,
    /// Where the upstream's own signature of `upstream_digest` is (its `sha256-<hex>.sig`
    /// tag, or `referrers`), if it has one; filled in by `inspect`, which asks.
    pub upstream_signature: Option<String>,
    /// One row per platform: the upstream's entries, then each fallback admitted or refused.
    pub platforms: Vec<PlatformRow>,
}

/// A resolved tag: the manifest to serve and how it came about.
pub struct Resolved {
    /// What a client pulling the tag receives.
    pub manifest: Arc<Manifest>,
    /// How it came about, for `archway inspect` and the admin listener's `/inspect`.
    pub report: Resolution,
}

/// A fallback image that passed the config check.
struct Admitted {
    descriptor: Value,
    child: Arc<Manifest>,
    from: Route,
}

/// The upstream's side of a tag: its entries (or its one manifest, as an entry).
struct Base {
    manifest: Served<Arc<Manifest>>,
    entries: Vec<Value>,
    present: Vec<Platform>,
    rows: Vec<PlatformRow>,
    annotations: Option<Value>,
}

pub(crate) struct Synthesis {
    router: Router,
    fallbacks: Fallbacks,
    store: Store,
    manifests: Arc<Manifests>,
    blobs: Arc<Blobs>,
    links: Arc<Links>,
    upstreams: Arc<Upstreams>,
    signatures: Arc<Signatures>,
    metrics: Metrics,
    /// Resolved tags, trusted for the tag TTL (`None`: a TTL of zero, nothing kept).
    resolved: Option<moka::future::Cache<TagKey, Arc<Resolved>>>,
    flights: singleflight::Group<TagKey, Result<Served<Arc<Resolved>>>>,
}

/// The other parts synthesis builds on.
pub(crate) struct Parts {
    pub(crate) store: Store,
    pub(crate) manifests: Arc<Manifests>,
    pub(crate) blobs: Arc<Blobs>,
    pub(crate) links: Arc<Links>,
    pub(crate) upstreams: Arc<Upstreams>,
    pub(crate) signatures: Arc<Signatures>,
    pub(crate) metrics: Metrics,
}

impl Synthesis {
    /// `ttl`: how long a resolution is kept (zero: not kept).
    pub(crate) fn new(
        router: Router,
        fallbacks: Fallbacks,
        parts: Parts,
        ttl: std::time::Duration,
    ) -> Synthesis {
        let resolved = (!ttl.is_zero()).then(|| {
            moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build()
        });
        Synthesis {
            router,
            fallbacks,
            store: parts.store,
            manifests: parts.manifests,
            blobs: parts.blobs,
            links: parts.links,
            upstreams: parts.upstreams,
            signatures: parts.signatures,
            metrics: parts.metrics,
            resolved,
            flights: Default::default(),
        }
    }

    /// The rule that covers the routed repository, if any.
    pub(crate) fn rule(&self, route: &Route) -> Option<&Rule> {
        self.fallbacks.for_route(route)
    }

    /// Resolves a tag platform by platform (synthesizing when a rule applies), cached for the
    /// tag TTL. Inputs revalidate through their own tag records, so a moved upstream tag or
    /// fallback changes the result once their TTL passes.
    pub(crate) async fn resolve(&self, route: &Route, tag: &Tag) -> Result<Served<Arc<Resolved>>> {
        let key = tags::key(route, tag);
        if let Some(r) = match &self.resolved {
            Some(c) => c.get(&key).await,
            None => None,
        } {
            return Ok(Served::new(r, Provenance::Cache));
        }
        let (answer, ran) = self
            .flights
            .run(key.clone(), || async {
                let r = self.synthesize(route, tag).await?;
                let value = Arc::new(r.value);
                if let Some(c) = &self.resolved {
                    c.insert(key, value.clone()).await;
                }
                Ok(Served::new(value, r.provenance))
            })
            .await;
        if ran {
            answer
        } else {
            answer.map(Served::joined)
        }
    }

    async fn synthesize(&self, route: &Route, tag: &Tag) -> Result<Served<Resolved>> {
        let mut base = self.base(route, tag).await?;
        let admitted = match self.rule(route) {
            Some(rule) => self.fill_missing(route, tag, rule, &mut base).await,
            None => Vec::new(),
        };
        if admitted.is_empty() {
            // Nothing to add: the upstream's manifest, byte for byte.
            let report = self.report(route, tag, &base.manifest.value, &base, false);
            return Ok(Served::new(
                Resolved {
                    manifest: base.manifest.value,
                    report,
                },
                base.manifest.provenance,
            ));
        }
        let (media_type, bytes) = index::build(&base.entries, base.annotations.as_ref());
        let index = Arc::new(Manifest::new(
            Digest::sha256_of(&bytes),
            media_type,
            bytes.into(),
        ));
        self.store_index(route, &index, &admitted).await?;
        self.vouch(route, &index, &base, &admitted).await?;
        self.metrics.synthesized.inc();
        let report = self.report(route, tag, &index, &base, true);
        Ok(Served::new(
            Resolved {
                manifest: index,
                report,
            },
            base.manifest.provenance.and(Provenance::Synthesized),
        ))
    }

    /// The upstream's entries for the tag: an index's as written, or its one manifest as an
    /// entry whose platform its config names.
    async fn base(&self, route: &Route, tag: &Tag) -> Result<Base> {
        let manifest = self
            .manifests
            .get(route, &Reference::Tag(tag.clone()))
            .await?;
        let m = &manifest.value;
        if !is_index(&m.media_type) {
            let p = self.image_platform(route, m).await?;
            let rows = vec![PlatformRow {
                platform: p.normalized().to_string(),
                digest: Some(m.digest.to_string()),
                source: "upstream manifest".into(),
                check: format!("ok (config {})", p.normalized()),
                refused: None,
            }];
            let entries = vec![index::descriptor(
                &m.media_type,
                &m.digest,
                m.bytes.len() as u64,
                &p,
                &[],
            )];
            return Ok(Base {
                manifest,
                entries,
                present: vec![p],
                rows,
                annotations: None,
            });
        }
        let v: Value = serde_json::from_slice(&m.bytes)
            .map_err(|e| Error::ManifestInvalid(format!("index of {}:{tag}: {e}", route.repo)))?;
        let mut base = Base {
            annotations: v.get("annotations").cloned(),
            entries: Vec::new(),
            present: Vec::new(),
            rows: Vec::new(),
            manifest: manifest.clone(),
        };
        for e in index::entries(&v) {
            let p = index::descriptor_platform(e).unwrap_or_default();
            base.rows.push(PlatformRow {
                platform: p.normalized().to_string(),
                digest: e["digest"].as_str().map(str::to_string),
                source: "upstream index".into(),
                check: "upstream's own entry".into(),
                refused: None,
            });
            base.present.push(p);
            base.entries.push(e.clone());
        }
        Ok(base)
    }

    /// Adds an entry for every platform of `rule` the base lacks and whose fallback passes
    /// the config check; records a refusal for the others.
    async fn fill_missing(
        &self,
        route: &Route,
        tag: &Tag,
        rule: &Rule,
        base: &mut Base,
    ) -> Vec<Admitted> {
        let mut admitted = Vec::new();
        for (platform, template) in &rule.platforms {
            if base.present.iter().any(|p| platform.matches(p)) {
                continue;
            }
            let fb = match FallbackRef::expand(&self.router, template, route, tag) {
                Ok(fb) => fb,
                Err(reason) => {
                    let why = (Refusal::Invalid, reason);
                    self.refuse(route, tag, platform, template, why, &mut base.rows);
                    continue;
                }
            };
            match self.admit(platform, &fb).await {
                Ok(a) => {
                    let config = index::descriptor_platform(&a.descriptor)
                        .map(|p| p.normalized().to_string())
                        .unwrap_or_default();
                    base.rows.push(PlatformRow {
                        platform: platform.to_string(),
                        digest: Some(a.child.digest.to_string()),
                        source: fb.reference.clone(),
                        check: format!("ok (config {config})"),
                        refused: None,
                    });
                    base.entries.push(a.descriptor.clone());
                    admitted.push(a);
                }
                Err(why) => self.refuse(route, tag, platform, &fb.reference, why, &mut base.rows),
            }
        }
        admitted
    }

    fn report(
        &self,
        route: &Route,
        tag: &Tag,
        m: &Manifest,
        base: &Base,
        synthesized: bool,
    ) -> Resolution {
        Resolution {
            repository: format!("{}/{}", self.upstreams.name(route), route.repo),
            tag: tag.to_string(),
            digest: m.digest.to_string(),
            media_type: m.media_type.clone(),
            synthesized,
            upstream_digest: base.manifest.value.digest.to_string(),
            signed_by: synthesized.then(|| self.signatures.fingerprint()).flatten(),
            upstream_signature: None,
            platforms: base.rows.clone(),
        }
    }

    fn refuse(
        &self,
        route: &Route,
        tag: &Tag,
        platform: &Platform,
        reference: &str,
        (kind, reason): (Refusal, String),
        rows: &mut Vec<PlatformRow>,
    ) {
        tracing::warn!(
            upstream = %self.upstreams.name(route), repository = %route.repo, tag = %tag,
            platform = %platform, fallback = %reference, reason = %reason,
            "fallback left out of the index"
        );
        self.metrics.fallbacks_refused.inc();
        rows.push(PlatformRow {
            platform: platform.to_string(),
            digest: None,
            source: reference.to_string(),
            check: format!("refused: {reason}"),
            refused: Some(kind),
        });
    }

    /// Resolves a fallback reference to the manifest for `platform` and checks its config.
    async fn admit(
        &self,
        platform: &Platform,
        fb: &FallbackRef,
    ) -> Result<Admitted, (Refusal, String)> {
        let reason = |e: Error| (Refusal::of(&e), crate::causes::Chain(&e).to_string());
        let invalid = |why: String| (Refusal::Invalid, why);
        let m = self
            .manifests
            .get(&fb.route, &Reference::Tag(fb.tag.clone()))
            .await
            .map_err(reason)?
            .value;
        let child = if is_index(&m.media_type) {
            // Strictly the entry for this platform: no compatible-variant substitutes.
            let v: Value = serde_json::from_slice(&m.bytes).map_err(|e| invalid(e.to_string()))?;
            let entry = index::find_exact(&v, platform).ok_or_else(|| {
                (
                    Refusal::Missing,
                    format!("its index has no entry for {platform}"),
                )
            })?;
            let d = index::entry_digest(entry).map_err(|e| invalid(format!("index entry: {e}")))?;
            self.manifests
                .get(&fb.route, &Reference::Digest(d))
                .await
                .map_err(reason)?
                .value
        } else {
            m
        };
        if is_index(&child.media_type) {
            return Err(invalid("nested index".into()));
        }
        let actual = self
            .image_platform(&fb.route, &child)
            .await
            .map_err(reason)?;
        if !platform.matches(&actual) {
            return Err((
                Refusal::ArchitectureMismatch,
                format!("its image config says {}", actual.normalized()),
            ));
        }
        let annotation = [(FALLBACK_ANNOTATION, fb.reference.as_str())];
        Ok(Admitted {
            descriptor: index::descriptor(
                &child.media_type,
                &child.digest,
                child.bytes.len() as u64,
                &actual,
                &annotation,
            ),
            child,
            from: fb.route.clone(),
        })
    }

    /// The platform an image manifest's config declares.
    pub(crate) async fn image_platform(&self, route: &Route, m: &Manifest) -> Result<Platform> {
        let refs = manifest::parse(&m.bytes, Some(&m.media_type))
            .map_err(|e| Error::ManifestInvalid(e.to_string()))?;
        let cfg = refs.config.ok_or_else(|| {
            Error::ManifestInvalid(format!("manifest {} has no config", m.digest))
        })?;
        let bytes = self.small_blob(route, &cfg.digest).await?;
        index::config_platform(&bytes).ok_or_else(|| {
            Error::ManifestInvalid(format!("config {} names no os/architecture", cfg.digest))
        })
    }

    /// A small blob (an image config), through the cache, verified.
    async fn small_blob(&self, route: &Route, d: &Digest) -> Result<Vec<u8>> {
        let body = self.blobs.get(route, d, None).await?;
        if body.size.is_some_and(|s| s > MAX_CONFIG_SIZE as u64) {
            return Err(Error::ManifestInvalid(format!("config {d} is too large")));
        }
        let chunks: Vec<bytes::Bytes> =
            body.stream
                .try_collect()
                .await
                .map_err(|e| match FillFailed::cause(&e) {
                    Some(cause) => (**cause).clone(),
                    None => Error::io(format!("cannot read {d}"), e),
                })?;
        let bytes = chunks.concat();
        if !d.verify(&bytes) {
            return Err(Error::Internal(format!("{d} does not verify")));
        }
        Ok(bytes)
    }

    /// Stores a synthesized index under the repository and links what it reaches: each
    /// fallback manifest and its blobs, recorded with the fallback's repository as source.
    async fn store_index(
        &self,
        route: &Route,
        index: &Arc<Manifest>,
        admitted: &[Admitted],
    ) -> Result<()> {
        self.store
            .put_verified(&index.digest, index.bytes.clone())
            .await?;
        for a in admitted {
            let refs = manifest::parse(&a.child.bytes, Some(&a.child.media_type))
                .map_err(|e| Error::ManifestInvalid(e.to_string()))?;
            let from = Arc::new(a.from.clone());
            self.links.link_blobs(route, &refs.blobs, &from).await?;
            self.links.link_manifest(route, &a.child, &a.from).await?;
        }
        self.links.link_manifest(route, index, route).await?;
        self.manifests.remember(index.clone()).await;
        Ok(())
    }

    /// Records what archway vouches for when it signs: the index (built from the upstream's
    /// manifest), each of the upstream's image entries (served in this repository), and each
    /// fallback (found in its repository). A node that pulls one platform checks that
    /// platform manifest's signature, never the index's, so every entry needs one.
    ///
    /// The notes name repositories, never tags: the first record of a digest stands, and a
    /// digest served under several tags must sign into the same bytes whichever came first.
    async fn vouch(
        &self,
        route: &Route,
        index: &Manifest,
        base: &Base,
        admitted: &[Admitted],
    ) -> Result<()> {
        let note = |k: &str, v: String| BTreeMap::from([(k.to_string(), v)]);
        let upstream = base.manifest.value.digest.to_string();
        self.signatures
            .vouch(
                route,
                &index.digest,
                &index.media_type,
                index.bytes.len() as u64,
                note(NOTE_UPSTREAM_DIGEST, upstream),
            )
            .await?;
        let repository = self.signatures.logical_name(route);
        let upstream_entries = base.entries.len() - admitted.len();
        for e in &base.entries[..upstream_entries] {
            let (Ok(d), Some(mt), Some(size)) = (
                index::entry_digest(e),
                e["mediaType"].as_str(),
                e["size"].as_u64(),
            ) else {
                continue;
            };
            // Not an image: an attestation buildx attached (`unknown/unknown`), or a nested
            // index. archway vouches for images it serves, nothing else.
            if index::is_attachment(e) || is_index(mt) {
                continue;
            }
            self.signatures
                .vouch(
                    route,
                    &d,
                    mt,
                    size,
                    note(NOTE_UPSTREAM_REPOSITORY, repository.clone()),
                )
                .await?;
        }
        for a in admitted {
            let c = &a.child;
            self.signatures
                .vouch(
                    route,
                    &c.digest,
                    &c.media_type,
                    c.bytes.len() as u64,
                    note(
                        NOTE_FALLBACK_REPOSITORY,
                        self.signatures.logical_name(&a.from),
                    ),
                )
                .await?;
        }
        Ok(())
    }

    /// Forgets every resolution (a collection may have removed what one names).
    pub(crate) fn forget_all(&self) {
        if let Some(c) = &self.resolved {
            c.invalidate_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::media::{Accept, DOCKER_LIST, OCI_INDEX};
    use crate::registry::testing::{push_index, Fixture, Image};

    const RULES: &str = r#"
[[fallback]]
repository = "hub.test/app/go"
[fallback.platforms]
"linux/s390x" = "hub.test/app/go:s390x-{tag}"
"linux/arm/v7" = "quay.io/arm32v7/{name}:{tag}"
"linux/riscv64" = "hub.test/app/go:riscv64-{tag}"
"#;

    /// The tutorial's layout: an index of amd64 and arm64, an s390x image under its own tag,
    /// arm/v7 in another registry, and an amd64 image mislabelled as riscv64.
    struct Tutorial {
        f: Fixture,
        amd64: Image,
        arm64: Image,
        s390x: Image,
        armv7: Image,
        index: Vec<u8>,
    }

    fn tutorial(seed: u64) -> Tutorial {
        let f = Fixture::with("1h", "", RULES);
        let (amd64, arm64) = (
            Image::new("linux/amd64", seed),
            Image::new("linux/arm64", seed + 1),
        );
        let index = push_index(
            &f.hub,
            "app/go",
            "latest",
            &[("linux/amd64", &amd64), ("linux/arm64", &arm64)],
        );
        let s390x = Image::new("linux/s390x", seed + 2);
        s390x.push(&f.hub, "app/go", "s390x-latest");
        let armv7 = Image::new("linux/arm/v7", seed + 3);
        armv7.push(&f.quay, "arm32v7/go", "latest");
        Image::new("linux/amd64", seed + 4).push(&f.hub, "app/go", "riscv64-latest");
        Tutorial {
            f,
            amd64,
            arm64,
            s390x,
            armv7,
            index,
        }
    }

    fn latest() -> Tag {
        "latest".parse().unwrap()
    }

    fn entries(m: &Manifest) -> Vec<(String, String)> {
        let v: Value = serde_json::from_slice(&m.bytes).unwrap();
        index::entries(&v)
            .iter()
            .map(|e| {
                let p = index::descriptor_platform(e)
                    .unwrap()
                    .normalized()
                    .to_string();
                (p, e["digest"].as_str().unwrap().to_string())
            })
            .collect()
    }

    #[tokio::test]
    async fn missing_platforms_are_filled_and_a_mislabelled_image_is_refused() {
        let t = tutorial(10);
        let route = t.f.route("app/go");
        let r =
            t.f.registry
                .synthesis
                .resolve(&route, &latest())
                .await
                .unwrap();
        assert_eq!(r.provenance, Provenance::Synthesized);
        let m = &r.value.manifest;
        assert_eq!(m.media_type, OCI_INDEX);
        assert_eq!(m.digest, Digest::sha256_of(&m.bytes));
        assert_eq!(
            entries(m),
            [
                ("linux/amd64".to_string(), t.amd64.digest.to_string()),
                ("linux/arm64".to_string(), t.arm64.digest.to_string()),
                ("linux/s390x".to_string(), t.s390x.digest.to_string()),
                ("linux/arm/v7".to_string(), t.armv7.digest.to_string()),
            ],
            "upstream entries in upstream order, then fallbacks in config order; no riscv64"
        );
        let v: Value = serde_json::from_slice(&m.bytes).unwrap();
        assert_eq!(
            v["manifests"][3]["annotations"][FALLBACK_ANNOTATION],
            "quay.io/arm32v7/go:latest"
        );
        assert!(v["manifests"][0].get("annotations").is_none());
        let riscv = r
            .value
            .report
            .platforms
            .iter()
            .find(|p| p.platform == "linux/riscv64")
            .unwrap();
        assert_eq!(riscv.check, "refused: its image config says linux/amd64");
        assert_eq!(t.f.registry.metrics.fallbacks_refused.get(), 1);

        // Everything the index reaches is servable under app/go: the fallback's manifest by
        // digest, and its blobs, fetched from the fallback's repository in quay.
        let child =
            t.f.registry
                .manifests
                .get(&route, &Reference::Digest(t.armv7.digest.clone()))
                .await
                .unwrap();
        assert_eq!(&child.value.bytes[..], &t.armv7.manifest[..]);
        assert_eq!(
            child.provenance,
            Provenance::Cache,
            "linked when the index was built"
        );
        let layer =
            t.f.registry
                .blobs
                .get(&route, &t.armv7.layer_digest(), None)
                .await
                .unwrap();
        let bytes: Vec<bytes::Bytes> = layer.stream.try_collect().await.unwrap();
        assert_eq!(bytes.concat(), t.armv7.layer);
        assert_eq!(
            t.f.quay
                .count(&format!("GET arm32v7/go/blobs/{}", t.armv7.layer_digest())),
            1
        );

        // Resolved once per TTL.
        let again =
            t.f.registry
                .synthesis
                .resolve(&route, &latest())
                .await
                .unwrap();
        assert_eq!(
            (again.provenance, &again.value.manifest.digest),
            (Provenance::Cache, &m.digest)
        );
        // The upstream's own index stays available byte-identical, by its digest.
        let own =
            t.f.registry
                .manifests
                .get(&route, &Reference::Digest(Digest::sha256_of(&t.index)))
                .await
                .unwrap();
        assert_eq!(&own.value.bytes[..], &t.index[..]);
    }

    #[tokio::test]
    async fn replicas_with_separate_caches_build_the_same_bytes() {
        let (a, b) = (tutorial(20), tutorial(20));
        let ra =
            a.f.registry
                .synthesis
                .resolve(&a.f.route("app/go"), &latest())
                .await
                .unwrap();
        let rb =
            b.f.registry
                .synthesis
                .resolve(&b.f.route("app/go"), &latest())
                .await
                .unwrap();
        assert_eq!(ra.value.manifest.bytes, rb.value.manifest.bytes);
        assert_ne!(
            ra.value.manifest.digest,
            Digest::sha256_of(&a.index),
            "synthesized"
        );
    }

    #[tokio::test]
    async fn a_single_upstream_manifest_is_wrapped_with_the_fallbacks() {
        let f = Fixture::with("1h", "", RULES);
        let amd64 = Image::new("linux/amd64", 30);
        amd64.push(&f.hub, "app/go", "latest");
        let s390x = Image::new("linux/s390x", 31);
        s390x.push(&f.hub, "app/go", "s390x-latest");
        let r = f.resolve("app/go").await;
        assert!(r.value.report.synthesized);
        assert_eq!(
            entries(&r.value.manifest),
            [
                ("linux/amd64".to_string(), amd64.digest.to_string()),
                ("linux/s390x".to_string(), s390x.digest.to_string())
            ]
        );
        assert_eq!(r.value.report.platforms[0].source, "upstream manifest");
        // arm/v7 and riscv64 have no image: refused, named in the report.
        let refused: Vec<&str> = r
            .value
            .report
            .platforms
            .iter()
            .filter(|p| p.check.starts_with("refused"))
            .map(|p| p.platform.as_str())
            .collect();
        assert_eq!(refused, ["linux/arm/v7", "linux/riscv64"]);
    }

    #[tokio::test]
    async fn a_complete_index_is_served_byte_identical() {
        let f = Fixture::with("1h", "", RULES);
        let images: Vec<Image> = [
            "linux/amd64",
            "linux/s390x",
            "linux/arm/v7",
            "linux/riscv64",
        ]
        .iter()
        .enumerate()
        .map(|(i, p)| Image::new(p, 40 + i as u64))
        .collect();
        let platforms = [
            "linux/amd64",
            "linux/s390x",
            "linux/arm/v7",
            "linux/riscv64",
        ];
        let pairs: Vec<(&str, &Image)> = platforms.iter().copied().zip(images.iter()).collect();
        let own = push_index(&f.hub, "app/go", "latest", &pairs);
        let r = f.resolve("app/go").await;
        assert!(!r.value.report.synthesized);
        assert_eq!(r.provenance, Provenance::Upstream);
        assert_eq!(&r.value.manifest.bytes[..], &own[..]);
        assert_eq!(
            f.hub.count("GET app/go/manifests/s390x-latest"),
            0,
            "no fallback looked up"
        );
    }

    #[tokio::test]
    async fn a_fallback_that_is_an_index_gives_exactly_its_platform() {
        let f = Fixture::with("1h", "", RULES);
        let amd64 = Image::new("linux/amd64", 50);
        amd64.push(&f.hub, "app/go", "latest");
        let (s390x, ppc) = (
            Image::new("linux/s390x", 51),
            Image::new("linux/ppc64le", 52),
        );
        push_index(
            &f.hub,
            "app/go",
            "s390x-latest",
            &[("linux/ppc64le", &ppc), ("linux/s390x", &s390x)],
        );
        // arm/v7 is asked for, but the fallback's index has arm/v6 only: no substitute.
        let armv6 = Image::new("linux/arm/v6", 53);
        push_index(&f.quay, "arm32v7/go", "latest", &[("linux/arm/v6", &armv6)]);
        let r = f.resolve("app/go").await;
        assert_eq!(
            entries(&r.value.manifest),
            [
                ("linux/amd64".to_string(), amd64.digest.to_string()),
                ("linux/s390x".to_string(), s390x.digest.to_string())
            ]
        );
        let arm = r
            .value
            .report
            .platforms
            .iter()
            .find(|p| p.platform == "linux/arm/v7")
            .unwrap();
        assert_eq!(
            arm.check,
            "refused: its index has no entry for linux/arm/v7"
        );
    }

    #[tokio::test]
    async fn docker_images_make_a_docker_manifest_list() {
        let f = Fixture::with("1h", "", RULES);
        Image::docker("linux/amd64", 60).push(&f.hub, "app/go", "latest");
        Image::docker("linux/s390x", 61).push(&f.hub, "app/go", "s390x-latest");
        let r = f.resolve("app/go").await;
        assert_eq!(r.value.manifest.media_type, DOCKER_LIST);
        // One OCI child makes it an OCI index.
        let f2 = Fixture::with("1h", "", RULES);
        Image::docker("linux/amd64", 60).push(&f2.hub, "app/go", "latest");
        Image::new("linux/arm/v7", 62).push(&f2.quay, "arm32v7/go", "latest");
        let r = f2.resolve("app/go").await;
        assert_eq!(r.value.manifest.media_type, OCI_INDEX);
    }

    #[tokio::test]
    async fn clients_that_cannot_read_an_index_get_their_platform_or_the_default() {
        let extra = format!("{RULES}\n[multiarch]\ndefault_platform = \"linux/arm64\"\n");
        let f = Fixture::with("1h", "", &extra);
        let (amd64, arm64) = (Image::new("linux/amd64", 70), Image::new("linux/arm64", 71));
        push_index(
            &f.hub,
            "app/go",
            "latest",
            &[("linux/amd64", &amd64), ("linux/arm64", &arm64)],
        );
        let s390x = Image::new("linux/s390x", 72);
        s390x.push(&f.hub, "app/go", "s390x-latest");
        let route = f.route("app/go");
        let old = Accept::parse(["application/vnd.docker.distribution.manifest.v2+json"]);
        let reference = Reference::Tag(latest());
        let m = f
            .registry
            .manifest_for_client(&route, &reference, &old, None)
            .await
            .unwrap();
        assert_eq!(m.value.digest, arm64.digest, "multiarch.default_platform");
        let ua = "docker/20.10.24 go/go1.19.8 os/linux arch/s390x UpstreamClient(Docker-Client/20.10.24)";
        let m = f
            .registry
            .manifest_for_client(&route, &reference, &old, Some(ua))
            .await
            .unwrap();
        assert_eq!(
            m.value.digest, s390x.digest,
            "a synthesized platform resolves too"
        );
        let e = f
            .registry
            .manifest_for_client(
                &route,
                &reference,
                &old,
                Some("docker/1 os/linux arch/mips64"),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), "MANIFEST_UNKNOWN");
        assert!(e.to_string().contains("linux/s390x"), "{e}");
        let index_aware = Accept::parse([OCI_INDEX]);
        let m = f
            .registry
            .manifest_for_client(&route, &reference, &index_aware, Some(ua))
            .await
            .unwrap();
        assert_eq!(m.value.media_type, OCI_INDEX);
    }
}
