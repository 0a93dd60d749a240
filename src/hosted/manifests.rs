//! Pushing and deleting manifests and tags in a hosted repository.
//!
//! A pushed manifest is checked before anything of it is written: it parses, its media type
//! is one archway serves and agrees with the body's `mediaType`, it is at most 4 MiB, a
//! digest in the URL matches it, and everything it references (config and layers, or an
//! index's manifests) is already in the repository. Then its bytes go to the store, then its
//! record, then the tag: each step one atomic write, so a manifest is never half visible and
//! of two pushes of one tag the last to finish wins.

use bytes::Bytes;
use serde_json::{json, Value};

use super::records::{ManifestRecord, TagRecord};
use super::{Hosted, Repo};
use crate::error::{Error, Result};
use crate::oci::manifest::MAX_MANIFEST_SIZE;
use crate::oci::media::{self, is_index};
use crate::oci::{Digest, Reference, Tag};
use crate::storage::layout;

/// Media types of layers that clients may omit from the registry (`urls` point elsewhere).
const NON_DISTRIBUTABLE: [&str; 3] = [
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// The manifest media types a hosted repository accepts.
const ACCEPTED: [&str; 4] = [
    media::OCI_MANIFEST,
    media::OCI_INDEX,
    media::DOCKER_MANIFEST,
    media::DOCKER_LIST,
];

/// What a manifest push did.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub digest: Digest,
    /// The manifest's `subject`, for the `OCI-Subject` header.
    pub subject: Option<Digest>,
}

impl Hosted {
    /// Validates and stores a manifest pushed to `r` under `reference`.
    pub async fn put_manifest(
        &self,
        r: &Repo,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Pushed> {
        if body.len() > MAX_MANIFEST_SIZE {
            return Err(Error::ManifestTooLarge);
        }
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| Error::ManifestInvalid(format!("not JSON: {e}")))?;
        let media_type = media_type(content_type, &v)?;
        let digest = match reference {
            Reference::Digest(d) => {
                let actual = Digest::of(d.algorithm(), &body);
                if actual != *d {
                    return Err(Error::DigestWrong {
                        expected: d.clone(),
                        actual,
                    });
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256_of(&body),
        };
        self.check_references(r, &v, &media_type).await?;
        let subject = match v.get("subject") {
            None | Some(Value::Null) => None,
            Some(s) => Some(
                s["digest"]
                    .as_str()
                    .and_then(|d| d.parse::<Digest>().ok())
                    .ok_or_else(|| Error::ManifestInvalid("subject has no valid digest".into()))?,
            ),
        };
        let size = body.len() as u64;
        self.store.put_verified(&digest, body).await?;
        let record = ManifestRecord {
            media_type: media_type.clone(),
            size,
            subject: subject.clone(),
        };
        self.store
            .put_record(
                &layout::hosted_manifest(&r.registry, &r.repo, &digest),
                &record,
            )
            .await?;
        if let Some(s) = &subject {
            let descriptor = referrer_descriptor(&v, &media_type, &digest, size);
            self.store
                .put_record(
                    &layout::hosted_referrer(&r.registry, &r.repo, s, &digest),
                    &descriptor,
                )
                .await?;
        }
        if let Reference::Tag(t) = reference {
            let tag = TagRecord {
                digest: digest.clone(),
                media_type,
                size,
            };
            self.store
                .put_record(&layout::hosted_tag(&r.registry, &r.repo, t), &tag)
                .await?;
        }
        Ok(Pushed { digest, subject })
    }

    /// Everything `v` references must be in `r` already: its config and layers, or an
    /// index's manifests. A `subject` need not be (the spec lets referrers come first).
    async fn check_references(&self, r: &Repo, v: &Value, media_type: &str) -> Result<()> {
        let missing = |what: &str, d: &str| {
            Error::ManifestBlobUnknown(format!("{what} {d} is not in repository {r}"))
        };
        let digest_of = |desc: &Value, what: &str| -> Result<Digest> {
            desc["digest"]
                .as_str()
                .and_then(|d| d.parse().ok())
                .ok_or_else(|| Error::ManifestInvalid(format!("{what} has no valid digest")))
        };
        if is_index(media_type) {
            let Some(entries) = v["manifests"].as_array() else {
                return Err(Error::ManifestInvalid("an index needs manifests".into()));
            };
            for e in entries {
                let d = digest_of(e, "an index entry")?;
                if self.manifest_record(r, &d).await?.is_none() {
                    return Err(missing("manifest", &d.to_string()));
                }
            }
            return Ok(());
        }
        let config = v
            .get("config")
            .filter(|c| c.is_object())
            .ok_or_else(|| Error::ManifestInvalid("an image manifest needs a config".into()))?;
        let mut blobs = vec![(digest_of(config, "the config")?, "config")];
        for l in v["layers"].as_array().into_iter().flatten() {
            let mt = l["mediaType"].as_str().unwrap_or_default();
            let d = digest_of(l, "a layer")?;
            if NON_DISTRIBUTABLE.contains(&mt) && l.get("urls").is_some() {
                continue;
            }
            blobs.push((d, "layer"));
        }
        for (d, what) in blobs {
            if self.blob_size(r, &d).await?.is_none() {
                return Err(missing(what, &d.to_string()));
            }
        }
        Ok(())
    }

    /// Deletes a tag (the manifest stays).
    pub async fn delete_tag(&self, r: &Repo, t: &Tag) -> Result<()> {
        let key = layout::hosted_tag(&r.registry, &r.repo, t);
        if self.store.get_record::<TagRecord>(&key).await?.is_none() {
            return Err(Error::ManifestUnknown(format!("no tag {t} in {r}")));
        }
        self.store.delete(&key).await
    }

    /// Deletes a manifest, every tag that names it, and its entry among its subject's
    /// referrers. Its bytes stay until `archway gc` finds nothing references them.
    pub async fn delete_manifest(&self, r: &Repo, d: &Digest) -> Result<()> {
        let Some(record) = self.manifest_record(r, d).await? else {
            return Err(Error::ManifestUnknown(format!("no manifest {d} in {r}")));
        };
        for t in self.tags(r).await? {
            let Ok(tag) = t.parse::<Tag>() else {
                continue;
            };
            let key = layout::hosted_tag(&r.registry, &r.repo, &tag);
            if let Some(rec) = self.store.get_record::<TagRecord>(&key).await? {
                if rec.digest == *d {
                    self.store.delete(&key).await?;
                }
            }
        }
        if let Some(s) = &record.subject {
            self.store
                .delete(&layout::hosted_referrer(&r.registry, &r.repo, s, d))
                .await?;
        }
        self.store
            .delete(&layout::hosted_manifest(&r.registry, &r.repo, d))
            .await
    }

    /// Removes blob `d` from `r` (its bytes stay while anything else references them).
    pub async fn delete_blob(&self, r: &Repo, d: &Digest) -> Result<()> {
        if self.blob_size(r, d).await?.is_none() {
            return Err(Error::BlobUnknown(format!("{d} in repository {r}")));
        }
        self.store
            .delete(&layout::hosted_blob(&r.registry, &r.repo, d))
            .await
    }
}

/// The manifest's media type: the request's `Content-Type`, which the body's `mediaType`
/// must not contradict (else the same bytes would be served as two types).
fn media_type(content_type: Option<&str>, v: &Value) -> Result<String> {
    let declared = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim().to_string())
        .filter(|c| !c.is_empty());
    let body = v["mediaType"].as_str().map(str::to_string);
    let mt = match (declared, body) {
        (Some(c), Some(b)) if c != b => {
            return Err(Error::ManifestInvalid(format!(
                "Content-Type {c} but the manifest says mediaType {b}"
            )))
        }
        (Some(c), _) => c,
        (None, Some(b)) => b,
        (None, None) => {
            return Err(Error::ManifestInvalid(
                "no Content-Type and no mediaType".into(),
            ))
        }
    };
    if v["schemaVersion"].as_u64() != Some(2) {
        return Err(Error::ManifestInvalid(
            "schemaVersion must be 2 (schema 1 is not accepted)".into(),
        ));
    }
    if !ACCEPTED.contains(&mt.as_str()) {
        return Err(Error::ManifestInvalid(format!(
            "media type {mt} is not a manifest archway accepts ({})",
            ACCEPTED.join(", ")
        )));
    }
    Ok(mt)
}

/// How a manifest with a `subject` is listed among the referrers of that subject.
fn referrer_descriptor(v: &Value, media_type: &str, d: &Digest, size: u64) -> Value {
    let artifact_type = v["artifactType"]
        .as_str()
        .or_else(|| v["config"]["mediaType"].as_str())
        .map(str::to_string);
    let mut desc = json!({"mediaType": media_type, "digest": d.to_string(), "size": size});
    if let Some(t) = artifact_type {
        desc["artifactType"] = json!(t);
    }
    if let Some(a) = v.get("annotations").filter(|a| a.is_object()) {
        desc["annotations"] = a.clone();
    }
    desc
}
