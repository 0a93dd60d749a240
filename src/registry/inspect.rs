//! How a tag resolves, platform by platform, for `archway inspect` and the admin listener's
//! `/inspect`: the synthesis report, with the upstream's own entries checked too.

use super::synthesis::Resolution;
use super::Registry;
use crate::error::{Error, Result};
use crate::oci::reference::split_reference;
use crate::oci::{Digest, Platform, Reference, RepoName, Tag};
use crate::routing::Route;

impl Registry {
    /// Routes `REGISTRY/REPOSITORY:TAG` or `REGISTRY/REPOSITORY@DIGEST` as a client of that
    /// registry would name it: the registry part must be a configured upstream's (or hosted
    /// registry's) host or name.
    pub fn route_reference(&self, reference: &str) -> Result<(Route, Reference)> {
        let (host, path, reference_part) = match reference.split_once('@') {
            Some((name, digest)) => {
                let (host, path) = name.split_once('/').ok_or_else(|| bad(reference))?;
                (
                    host,
                    path,
                    Reference::Digest(digest.parse().map_err(Error::DigestInvalid)?),
                )
            }
            None => {
                let (host, path, tag) = split_reference(reference).ok_or_else(|| bad(reference))?;
                (
                    host,
                    path,
                    Reference::Tag(tag.parse::<Tag>().map_err(Error::TagInvalid)?),
                )
            }
        };
        let name: RepoName = format!("{host}/{path}")
            .parse()
            .map_err(Error::NameInvalid)?;
        let path_name: RepoName = path.parse().map_err(Error::NameInvalid)?;
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
        Ok((route, reference_part))
    }

    /// How `REGISTRY/REPOSITORY:TAG` resolves. The registry part must name a configured
    /// upstream (a host or its name).
    pub async fn inspect(&self, reference: &str) -> Result<Resolution> {
        let (route, tag) = match self.route_reference(reference)? {
            (route, Reference::Tag(t)) => (route, t),
            (_, Reference::Digest(_)) => {
                return Err(Error::ReferenceInvalid(format!(
                    "{reference:?}: inspect takes a tag (registry/repository:tag)"
                )))
            }
        };
        let mut report = self
            .synthesis
            .resolve(&route, &tag)
            .await?
            .value
            .report
            .clone();
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
            let checked = match self.manifests.get(&route, &Reference::Digest(d)).await {
                Ok(m) => self.synthesis.image_platform(&route, &m.value).await,
                Err(e) => Err(e),
            };
            row.check = match checked {
                Ok(p) if want.matches(&p) => format!("ok (config {})", p.normalized()),
                Ok(p) => format!("MISMATCH: its image config says {}", p.normalized()),
                Err(e) => format!("unchecked: {}", crate::causes::Chain(&e)),
            };
        }
        report.upstream_signature = self
            .upstream_signature(&route, &report.upstream_digest)
            .await;
        Ok(report)
    }

    /// Where the upstream keeps its own signature of `digest`: cosign's `.sig` tag, or the
    /// referrers listing (a signature or a Sigstore bundle). `None` when it has neither or
    /// cannot be asked.
    async fn upstream_signature(&self, route: &Route, digest: &str) -> Option<String> {
        let d: Digest = digest.parse().ok()?;
        let remote = self.upstreams.remote(route);
        let tag = crate::oci::cosign::signature_tag(&d);
        if let Ok(Some(_)) = remote.head_manifest(&route.repo, &tag).await {
            return Some(tag);
        }
        // The upstream's alone: archway's own signature is not the upstream's.
        let listed = self.referrers.list(route, &d, None, false).await.ok()?;
        let index: serde_json::Value = serde_json::from_slice(&listed.value.body).ok()?;
        let signed = crate::oci::index::entries(&index).iter().any(|e| {
            let t = e["artifactType"].as_str().unwrap_or_default();
            t == crate::oci::cosign::SIGNATURE_ARTIFACT
                || t.starts_with("application/vnd.dev.sigstore.bundle")
        });
        signed.then(|| "referrers".to_string())
    }
}

fn bad(reference: &str) -> Error {
    Error::ReferenceInvalid(format!(
        "{reference:?} is not of the form registry/repository:tag or registry/repository@digest"
    ))
}
