//! Multi-arch serving: synthesizing an index that fills the platforms an upstream index lacks
//! from configured per-architecture images, and resolving an index to one platform manifest
//! for clients that cannot read indexes.
//!
//! A fallback is admitted only after its image config says the platform it is served for: a
//! mislabelled image is left out (and logged), never served under the wrong architecture.

use std::sync::Arc;

use futures_util::TryStreamExt;
use serde::Serialize;
use serde_json::Value;

use super::manifests::Manifest;
use super::records::{BlobLink, Source};
use super::Registry;
use crate::error::{Error, Result};
use crate::multiarch::{self, config_platform, descriptor, descriptor_platform};
use crate::oci::media::{is_index, Accept};
use crate::oci::{manifest, Digest, Platform, Reference, Tag};
use crate::routing::Route;
use crate::storage::layout;

/// Config blobs are read whole; anything larger than this is not an image config.
const MAX_CONFIG_SIZE: usize = 4 * 1024 * 1024;

/// What one platform of a tag resolves to.
#[derive(Debug, Clone, Serialize)]
pub struct PlatformRow {
    pub platform: String,
    pub digest: Option<String>,
    /// `upstream index`, `upstream manifest`, or the fallback reference.
    pub source: String,
    /// The config check: `ok (config linux/s390x)`, or why the entry was left out.
    pub check: String,
}

/// How a tag resolves: the rows, and the manifest archway serves for it.
#[derive(Debug, Clone, Serialize)]
pub struct Resolution {
    pub repository: String,
    pub tag: String,
    pub digest: String,
    pub media_type: String,
    pub synthesized: bool,
    pub platforms: Vec<PlatformRow>,
}

/// A resolved tag: the manifest to serve and how it came about.
pub struct Synthesis {
    pub manifest: Arc<Manifest>,
    pub report: Resolution,
}

struct Admitted {
    descriptor: Value,
    child: Arc<Manifest>,
    from: Route,
}

impl Registry {
    /// The manifest a client gets for `reference`: after fallback synthesis for tags, and
    /// resolved to one platform when the client's `Accept` names no index type.
    pub async fn manifest_for_client(
        &self,
        route: &Route,
        reference: &Reference,
        accept: &Accept,
        user_agent: Option<&str>,
    ) -> Result<Arc<Manifest>> {
        let (m, tag) = match reference {
            Reference::Digest(_) => return self.manifest(route, reference).await,
            Reference::Tag(t) => (self.tag_manifest(route, t).await?, t),
        };
        if !is_index(&m.media_type) || accept.names_index() {
            return Ok(m);
        }
        // As Docker Hub does for clients that cannot read an index: the manifest for the
        // client's platform (from a Docker-style User-Agent), else the default platform.
        let want = user_agent
            .and_then(Platform::from_user_agent)
            .unwrap_or_else(|| self.config.multiarch.default_platform.clone());
        let index: Value = serde_json::from_slice(&m.bytes)
            .map_err(|e| Error::ManifestInvalid(format!("index of {}:{tag}: {e}", route.repo)))?;
        let entries = index["manifests"].as_array().cloned().unwrap_or_default();
        let platforms: Vec<Platform> = entries
            .iter()
            .map(|e| descriptor_platform(e).unwrap_or_default())
            .collect();
        let Some(i) = want.best_match(&platforms) else {
            let have: Vec<String> = platforms
                .iter()
                .map(|p| p.normalized().to_string())
                .collect();
            return Err(Error::ManifestUnknown(format!(
                "{}:{tag} has no manifest for {want}; its platforms are: {}",
                route.repo,
                have.join(", ")
            )));
        };
        let d: Digest = entries[i]["digest"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(|e| Error::ManifestInvalid(format!("index entry: {e}")))?;
        self.manifest(route, &Reference::Digest(d)).await
    }

    /// How `REGISTRY/REPOSITORY:TAG` resolves (for `archway inspect` and the admin endpoint).
    /// The registry part must name a configured upstream (a host or its name).
    pub async fn inspect(&self, reference: &str) -> Result<Resolution> {
        let (host, path, tag) = crate::config::split_reference(reference).ok_or_else(|| {
            Error::NameInvalid(format!(
                "{reference:?} is not of the form registry/repository:tag"
            ))
        })?;
        let tag: Tag = tag.parse().map_err(|e| Error::TagInvalid(format!("{e}")))?;
        let name: crate::oci::RepoName = format!("{host}/{path}")
            .parse()
            .map_err(|e| Error::NameInvalid(format!("{e}")))?;
        let path_name: crate::oci::RepoName = path
            .parse()
            .map_err(|e| Error::NameInvalid(format!("{e}")))?;
        let route = match self.route(&path_name, Some(host)) {
            Ok(r) => r,
            Err(_) => {
                let r = self.route(&name, None)?;
                if r.repo.as_str().starts_with(&format!("{host}/")) {
                    return Err(Error::NameUnknown(format!(
                        "{host:?} names no configured upstream"
                    )));
                }
                r
            }
        };
        let mut report = self.resolve(&route, &tag).await?.report.clone();
        // Serving passes the upstream's own entries through untouched; the report still
        // checks their configs, so an admin sees a mislabelled upstream image too.
        for row in report
            .platforms
            .iter_mut()
            .filter(|r| r.source == "upstream index")
        {
            let Some(d) = row.digest.as_deref().and_then(|d| d.parse::<Digest>().ok()) else {
                continue;
            };
            let want: Platform = row.platform.parse().unwrap_or_default();
            row.check = match self.manifest(&route, &Reference::Digest(d)).await {
                Ok(m) => match self.image_platform(&route, &m).await {
                    Ok(p) if want.matches(&p) => format!("ok (config {})", p.normalized()),
                    Ok(p) => format!("MISMATCH: its image config says {}", p.normalized()),
                    Err(e) => format!("unchecked: {e}"),
                },
                Err(e) => format!("unchecked: {e}"),
            };
        }
        Ok(report)
    }

    /// What a tag serves: the upstream's manifest, or the synthesized index when a fallback
    /// rule covers the repository.
    pub async fn tag_manifest(&self, route: &Route, tag: &Tag) -> Result<Arc<Manifest>> {
        if self.fallbacks.for_route(route).is_none() {
            return self.manifest(route, &Reference::Tag(tag.clone())).await;
        }
        let m = self.resolve(route, tag).await?.manifest.clone();
        self.note_manifest(route, &m.digest);
        Ok(m)
    }

    /// Resolves a tag platform by platform (synthesizing when a rule applies), cached for the
    /// tag TTL. Inputs revalidate through their own tag records, so a moved upstream tag or
    /// fallback changes the result once their TTL passes.
    pub async fn resolve(&self, route: &Route, tag: &Tag) -> Result<Arc<Synthesis>> {
        let key = (route.upstream, route.repo.clone(), tag.clone());
        if let Some(s) = self.synth.get(&key).await {
            return Ok(s);
        }
        self.synth_flights
            .run(key.clone(), || async {
                let s = Arc::new(self.synthesize(route, tag).await?);
                if !self.config.cache.tag_ttl.is_zero() {
                    self.synth.insert(key, s.clone()).await;
                }
                Ok(s)
            })
            .await
    }

    async fn synthesize(&self, route: &Route, tag: &Tag) -> Result<Synthesis> {
        let base = self.manifest(route, &Reference::Tag(tag.clone())).await?;
        let mut rows = Vec::new();
        let mut entries: Vec<Value> = Vec::new();
        let mut present: Vec<Platform> = Vec::new();
        let mut annotations = None;
        if is_index(&base.media_type) {
            let v: Value = serde_json::from_slice(&base.bytes).map_err(|e| {
                Error::ManifestInvalid(format!("index of {}:{tag}: {e}", route.repo))
            })?;
            annotations = v.get("annotations").cloned();
            for e in v["manifests"].as_array().into_iter().flatten() {
                let p = descriptor_platform(e).unwrap_or_default();
                rows.push(PlatformRow {
                    platform: p.normalized().to_string(),
                    digest: e["digest"].as_str().map(str::to_string),
                    source: "upstream index".into(),
                    check: "upstream's own entry".into(),
                });
                present.push(p);
                entries.push(e.clone());
            }
        } else {
            let p = self.image_platform(route, &base).await?;
            rows.push(PlatformRow {
                platform: p.normalized().to_string(),
                digest: Some(base.digest.to_string()),
                source: "upstream manifest".into(),
                check: format!("ok (config {})", p.normalized()),
            });
            entries.push(descriptor(
                &base.media_type,
                &base.digest.to_string(),
                base.bytes.len() as u64,
                &p,
                None,
            ));
            present.push(p);
        }

        let mut admitted = Vec::new();
        if let Some(rule) = self.fallbacks.for_route(route) {
            for (platform, template) in &rule.platforms {
                if present.iter().any(|p| platform.matches(p)) {
                    continue;
                }
                let fb = match multiarch::fallback_ref(&self.router, template, route, tag) {
                    Ok(fb) => fb,
                    Err(reason) => {
                        self.refuse(route, tag, platform, template, &reason, &mut rows);
                        continue;
                    }
                };
                match self.admit(platform, &fb).await {
                    Ok(a) => {
                        rows.push(PlatformRow {
                            platform: platform.to_string(),
                            digest: Some(a.child.digest.to_string()),
                            source: fb.reference.clone(),
                            check: format!(
                                "ok (config {})",
                                descriptor_platform(&a.descriptor)
                                    .map(|p| p.normalized().to_string())
                                    .unwrap_or_default()
                            ),
                        });
                        entries.push(a.descriptor.clone());
                        admitted.push(a);
                    }
                    Err(reason) => {
                        self.refuse(route, tag, platform, &fb.reference, &reason, &mut rows)
                    }
                }
            }
        }

        if admitted.is_empty() {
            // Nothing to add: the upstream's manifest, byte for byte.
            let report = self.report(route, tag, &base, false, rows);
            return Ok(Synthesis {
                manifest: base,
                report,
            });
        }
        let (media_type, bytes) = multiarch::build_index(&entries, annotations.as_ref());
        let digest = Digest::sha256_of(&bytes);
        let index = Arc::new(Manifest {
            digest: digest.clone(),
            media_type,
            bytes: bytes.into(),
        });
        self.store_synthesized(route, &index, &admitted).await?;
        self.metrics.synthesized.inc();
        let report = self.report(route, tag, &index, true, rows);
        Ok(Synthesis {
            manifest: index,
            report,
        })
    }

    fn report(
        &self,
        route: &Route,
        tag: &Tag,
        m: &Manifest,
        synthesized: bool,
        platforms: Vec<PlatformRow>,
    ) -> Resolution {
        Resolution {
            repository: format!("{}/{}", self.upstream_name(route), route.repo),
            tag: tag.to_string(),
            digest: m.digest.to_string(),
            media_type: m.media_type.clone(),
            synthesized,
            platforms,
        }
    }

    fn refuse(
        &self,
        route: &Route,
        tag: &Tag,
        platform: &Platform,
        reference: &str,
        reason: &str,
        rows: &mut Vec<PlatformRow>,
    ) {
        tracing::warn!(
            upstream = %self.upstream_name(route), repository = %route.repo, tag = %tag,
            platform = %platform, fallback = %reference, reason = %reason,
            "fallback left out of the index"
        );
        self.metrics.fallbacks_refused.inc();
        rows.push(PlatformRow {
            platform: platform.to_string(),
            digest: None,
            source: reference.to_string(),
            check: format!("refused: {reason}"),
        });
    }

    /// Resolves a fallback reference to the manifest for `platform` and checks its config.
    async fn admit(
        &self,
        platform: &Platform,
        fb: &multiarch::FallbackRef,
    ) -> Result<Admitted, String> {
        let m = self
            .manifest(&fb.route, &Reference::Tag(fb.tag.clone()))
            .await
            .map_err(|e| e.to_string())?;
        let child = if is_index(&m.media_type) {
            // Strictly the entry for this platform: no compatible-variant substitutes.
            let v: Value = serde_json::from_slice(&m.bytes).map_err(|e| e.to_string())?;
            let entry = v["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| descriptor_platform(e).is_some_and(|p| platform.matches(&p)))
                .ok_or_else(|| format!("its index has no entry for {platform}"))?;
            let d: Digest = entry["digest"]
                .as_str()
                .unwrap_or_default()
                .parse()
                .map_err(|e| format!("index entry: {e}"))?;
            self.manifest(&fb.route, &Reference::Digest(d))
                .await
                .map_err(|e| e.to_string())?
        } else {
            m
        };
        if is_index(&child.media_type) {
            return Err("nested index".into());
        }
        let actual = self
            .image_platform(&fb.route, &child)
            .await
            .map_err(|e| e.to_string())?;
        if !platform.matches(&actual) {
            return Err(format!("its image config says {}", actual.normalized()));
        }
        Ok(Admitted {
            descriptor: descriptor(
                &child.media_type,
                &child.digest.to_string(),
                child.bytes.len() as u64,
                &actual,
                Some(&fb.reference),
            ),
            child,
            from: fb.route.clone(),
        })
    }

    /// The platform an image manifest's config declares.
    async fn image_platform(&self, route: &Route, m: &Manifest) -> Result<Platform> {
        let refs = manifest::parse(&m.bytes, Some(&m.media_type))
            .map_err(|e| Error::ManifestInvalid(e.to_string()))?;
        let cfg = refs.config.ok_or_else(|| {
            Error::ManifestInvalid(format!("manifest {} has no config", m.digest))
        })?;
        let bytes = self.small_blob(route, &cfg.digest).await?;
        config_platform(&bytes).ok_or_else(|| {
            Error::ManifestInvalid(format!("config {} names no os/architecture", cfg.digest))
        })
    }

    /// A small blob (an image config), through the cache, verified.
    async fn small_blob(&self, route: &Route, d: &Digest) -> Result<Vec<u8>> {
        let body = self.blob(route, d, None).await?;
        if body.size.is_some_and(|s| s > MAX_CONFIG_SIZE as u64) {
            return Err(Error::ManifestInvalid(format!("config {d} is too large")));
        }
        let chunks: Vec<bytes::Bytes> = body
            .stream
            .try_collect()
            .await
            .map_err(|e| Error::Unavailable(format!("reading {d}: {e}")))?;
        let bytes = chunks.concat();
        if !d.verify(&bytes) {
            return Err(Error::Internal(format!("{d} does not verify")));
        }
        Ok(bytes)
    }

    /// Stores a synthesized index under the repository and links what it reaches: each
    /// fallback manifest and its blobs, recorded with the fallback's repository as source.
    async fn store_synthesized(
        &self,
        route: &Route,
        index: &Arc<Manifest>,
        admitted: &[Admitted],
    ) -> Result<()> {
        let up = self.upstream_name(route).to_string();
        self.store
            .put_verified(&index.digest, index.bytes.clone())
            .await?;
        for a in admitted {
            let source = Source {
                upstream: self.upstream_name(&a.from).to_string(),
                repository: a.from.repo.to_string(),
            };
            let refs = manifest::parse(&a.child.bytes, Some(&a.child.media_type))
                .map_err(|e| Error::ManifestInvalid(e.to_string()))?;
            for (b, size) in &refs.blobs {
                let link = BlobLink {
                    size: *size,
                    source: Some(source.clone()),
                };
                self.store
                    .put_record(&layout::blob_link(&up, &route.repo, b), &link)
                    .await?;
                self.blob_links
                    .insert(
                        (route.upstream, route.repo.clone(), b.clone()),
                        Arc::new(a.from.clone()),
                    )
                    .await;
            }
            self.link_manifest(route, &a.child, Some(source)).await?;
        }
        self.link_manifest(route, index, None).await?;
        self.manifests
            .insert(index.digest.clone(), index.clone())
            .await;
        Ok(())
    }
}
