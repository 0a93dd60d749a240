//! Signatures: archway signs what it synthesizes (an index, and every platform manifest that
//! index lists), in cosign's formats, so a cluster with a signature policy can pull images
//! whose index no upstream ever signed.
//!
//! What archway vouches for is recorded when synthesis stores an index (`_signed` records in
//! the store); signatures are derived from those records on request. They are deterministic
//! (canonical payload, RFC 6979), so replicas serve the same bytes. Where the upstream signed
//! the same digest itself, archway serves one signature manifest with the upstream's layers
//! and its own: containers/image accepts an image when any one signature satisfies the
//! policy, and cosign verifies layer by layer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::links::Links;
use super::manifests::{Manifest, Manifests};
use super::provenance::{Provenance, Served};
use super::upstreams::Upstreams;
use super::{bounded, LinkKey};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::oci::cosign::{self, Signature};
use crate::oci::media::OCI_MANIFEST;
use crate::oci::{Digest, Reference, Tag};
use crate::routing::Route;
use crate::signing::SigningKey;
use crate::storage::layout;
use crate::storage::records::VouchRecord;
use crate::storage::Store;

/// The notes a payload's `optional` carries.
pub const NOTE_UPSTREAM_DIGEST: &str = "io.archway.upstream.digest";
pub const NOTE_UPSTREAM_REPOSITORY: &str = "io.archway.upstream.repository";
pub const NOTE_FALLBACK_REPOSITORY: &str = "io.archway.fallback.repository";

pub(crate) struct Signatures {
    /// `None`: no `[signing]`, archway signs nothing and passes the upstream's through.
    key: Option<SigningKey>,
    store: Store,
    upstreams: Arc<Upstreams>,
    links: Arc<Links>,
    manifests: Arc<Manifests>,
    metrics: Metrics,
    /// Per upstream: the registry name clients use for it (its first host, else its
    /// name), which signatures name as the identity.
    registries: Vec<String>,
    vouches: moka::future::Cache<LinkKey, Arc<VouchRecord>>,
    /// Signature manifests built, kept for the tag TTL: the upstream's own signature, which
    /// they include, may change.
    built: moka::future::Cache<LinkKey, Arc<Manifest>>,
    /// archway's signatures as referrers, already stored: their descriptors.
    referrers: moka::future::Cache<LinkKey, Value>,
}

/// What `Signatures::new` needs besides the other parts.
pub(crate) struct SignatureSettings {
    pub(crate) key: Option<SigningKey>,
    pub(crate) registries: Vec<String>,
    pub(crate) ttl: Duration,
    pub(crate) forget_after: Option<Duration>,
}

fn key(route: &Route, d: &Digest) -> LinkKey {
    (route.upstream, route.repo.clone(), d.clone())
}

impl Signatures {
    pub(crate) fn new(
        store: Store,
        upstreams: Arc<Upstreams>,
        links: Arc<Links>,
        manifests: Arc<Manifests>,
        metrics: Metrics,
        settings: SignatureSettings,
    ) -> Signatures {
        let built = moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(settings.ttl.max(Duration::from_millis(1)))
            .build();
        Signatures {
            key: settings.key,
            store,
            upstreams,
            links,
            manifests,
            metrics,
            registries: settings.registries,
            vouches: bounded(1_000_000, settings.forget_after),
            built,
            referrers: bounded(100_000, settings.forget_after),
        }
    }

    /// The signing key's fingerprint, when archway signs.
    pub(crate) fn fingerprint(&self) -> Option<String> {
        self.key.as_ref().map(SigningKey::fingerprint)
    }

    /// The repository's name as clients use it through the mirror, and as signatures name
    /// it: `docker.io/thinklab/go-hello-world`.
    pub(crate) fn logical_name(&self, route: &Route) -> String {
        format!("{}/{}", self.registries[route.upstream], route.repo)
    }

    /// Records that archway vouches for the manifest `d` (of `media_type` and `size`) in the
    /// routed repository. The first record of a digest stands, so the signature's bytes do
    /// not change with the order tags are resolved in.
    pub(crate) async fn vouch(
        &self,
        route: &Route,
        d: &Digest,
        media_type: &str,
        size: u64,
        notes: BTreeMap<String, String>,
    ) -> Result<()> {
        if self.key.is_none() {
            return Ok(());
        }
        let k = key(route, d);
        if self.vouches.contains_key(&k) {
            return Ok(());
        }
        let record = VouchRecord {
            media_type: media_type.to_string(),
            size,
            notes,
        };
        let path = layout::signed(self.upstreams.name(route), &route.repo, d);
        self.store.put_record_if_absent(&path, &record).await?;
        // Whatever stands in the store is what every replica signs.
        if let Some(stored) = self.store.get_record::<VouchRecord>(&path).await? {
            self.vouches.insert(k, Arc::new(stored)).await;
        }
        Ok(())
    }

    /// What archway vouches for about `d` in the repository, if it signs it.
    pub(crate) async fn vouched(
        &self,
        route: &Route,
        d: &Digest,
    ) -> Result<Option<Arc<VouchRecord>>> {
        if self.key.is_none() {
            return Ok(None);
        }
        let k = key(route, d);
        if let Some(v) = self.vouches.get(&k).await {
            return Ok(Some(v));
        }
        // Not remembered when absent: another replica may vouch for it any moment.
        let path = layout::signed(self.upstreams.name(route), &route.repo, d);
        let Some(v) = self.store.get_record::<VouchRecord>(&path).await? else {
            return Ok(None);
        };
        let v = Arc::new(v);
        self.vouches.insert(k, v.clone()).await;
        Ok(Some(v))
    }

    /// archway's signature of `d` in the repository.
    fn sign(&self, route: &Route, d: &Digest, vouch: &VouchRecord) -> Option<Signature> {
        let key = self.key.as_ref()?;
        let payload = cosign::payload(&self.logical_name(route), d, &vouch.notes);
        Some(Signature {
            signature_b64: key.sign(&payload),
            payload,
        })
    }

    /// What the tag `sha256-<hex>.sig` serves when archway signs `<hex>` here: cosign's
    /// legacy signature manifest with archway's signature, after the upstream's own when it
    /// has one. `None`: archway does not sign that digest (the tag is the upstream's).
    pub(crate) async fn legacy_tag(
        &self,
        route: &Route,
        tag: &Tag,
    ) -> Result<Option<Served<Arc<Manifest>>>> {
        let Some(d) = cosign::signed_digest(tag) else {
            return Ok(None);
        };
        let Some(vouch) = self.vouched(route, &d).await? else {
            return Ok(None);
        };
        if let Some(m) = self.built.get(&key(route, &d)).await {
            self.metrics.signatures_served.inc();
            return Ok(Some(Served::new(m, Provenance::Cache)));
        }
        let Some(ours) = self.sign(route, &d, &vouch) else {
            return Ok(None);
        };
        let (mut layers, complete) = self.upstream_layers(route, tag).await;
        let own = ours.layer();
        if !layers.contains(&own) {
            layers.push(own);
        }
        let (config, manifest) = cosign::signature_manifest(&layers);
        let blobs = [
            (Digest::sha256_of(&ours.payload), ours.payload.clone()),
            (Digest::sha256_of(&config), config),
        ];
        let m = self.publish(route, &blobs, &layers, manifest).await?;
        // Without the upstream's layers it is built again next time, so they join it as
        // soon as the upstream answers.
        if complete {
            self.built.insert(key(route, &d), m.clone()).await;
        }
        self.metrics.signatures_served.inc();
        Ok(Some(Served::new(m, Provenance::Synthesized)))
    }

    /// The layers of the upstream's own signature manifest at `tag`, if it has one, and
    /// whether the answer is complete. An upstream that cannot be asked right now leaves
    /// archway's signature on its own.
    async fn upstream_layers(&self, route: &Route, tag: &Tag) -> (Vec<Value>, bool) {
        let m = match self
            .manifests
            .get(route, &Reference::Tag(tag.clone()))
            .await
        {
            Ok(m) => m.value,
            Err(Error::ManifestUnknown(_)) => return (Vec::new(), true),
            Err(e) => {
                tracing::warn!(
                    repository = %route.repo, tag = %tag, error = %crate::causes::Chain(&e),
                    "cannot read the upstream's signature; serving archway's alone"
                );
                return (Vec::new(), false);
            }
        };
        let layers = serde_json::from_slice::<Value>(&m.bytes)
            .ok()
            .and_then(|v| v.get("layers").and_then(Value::as_array).cloned());
        if layers.is_none() {
            tracing::warn!(
                repository = %route.repo, tag = %tag,
                "the upstream's signature manifest has no layers; serving archway's alone"
            );
        }
        (layers.unwrap_or_default(), true)
    }

    /// archway's signature of `d` as an OCI 1.1 referrer (an artifact manifest whose
    /// `subject` is `d`), stored and linked; its descriptor, for a referrers listing.
    pub(crate) async fn referrer(&self, route: &Route, d: &Digest) -> Result<Option<Value>> {
        let Some(vouch) = self.vouched(route, d).await? else {
            return Ok(None);
        };
        if let Some(known) = self.referrers.get(&key(route, d)).await {
            self.metrics.signatures_served.inc();
            return Ok(Some(known));
        }
        let Some(ours) = self.sign(route, d, &vouch) else {
            return Ok(None);
        };
        let subject =
            json!({"mediaType": vouch.media_type, "digest": d.to_string(), "size": vouch.size});
        let manifest = cosign::signature_referrer(&ours, &subject);
        let descriptor = cosign::referrer_descriptor(&manifest, OCI_MANIFEST);
        let blobs = [
            (Digest::sha256_of(&ours.payload), ours.payload.clone()),
            (
                Digest::sha256_of(cosign::empty_config()),
                cosign::empty_config().to_vec(),
            ),
        ];
        self.publish(route, &blobs, &[], manifest).await?;
        if let Some(d) = &descriptor {
            self.referrers
                .insert(key(route, &subject_digest(&subject)), d.clone())
                .await;
        }
        self.metrics.signatures_served.inc();
        Ok(descriptor)
    }

    /// Stores a signature manifest and the blobs it names (archway's `blobs`, and the
    /// upstream's `layers`, which stay fetchable from the repository itself), linked to the
    /// repository so they are served by digest like any image.
    async fn publish(
        &self,
        route: &Route,
        blobs: &[(Digest, Vec<u8>)],
        layers: &[Value],
        manifest: Vec<u8>,
    ) -> Result<Arc<Manifest>> {
        let mut linked = Vec::new();
        for (d, bytes) in blobs {
            self.store.put_verified(d, bytes.clone().into()).await?;
            linked.push((d.clone(), bytes.len() as u64));
        }
        for l in layers {
            if let (Some(d), Some(size)) = (
                l["digest"].as_str().and_then(|d| d.parse::<Digest>().ok()),
                l["size"].as_u64(),
            ) {
                if !linked.iter().any(|(x, _)| *x == d) {
                    linked.push((d, size));
                }
            }
        }
        let own = Arc::new(route.clone());
        self.links.link_blobs(route, &linked, &own).await?;
        let m = Arc::new(Manifest::new(
            Digest::sha256_of(&manifest),
            OCI_MANIFEST.to_string(),
            manifest.into(),
        ));
        self.store.put_verified(&m.digest, m.bytes.clone()).await?;
        self.links.link_manifest(route, &m, route).await?;
        self.manifests.remember(m.clone()).await;
        Ok(m)
    }

    /// Forgets what memory holds (a collection may have removed some of it).
    pub(crate) fn forget_all(&self) {
        self.vouches.invalidate_all();
        self.built.invalidate_all();
        self.referrers.invalidate_all();
    }
}

fn subject_digest(subject: &Value) -> Digest {
    subject["digest"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| Digest::sha256_of(b""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::cosign::{SIGNATURE_ANNOTATION, SIMPLE_SIGNING};
    use crate::registry::testing::{push_index, Fixture, Image};
    use base64::Engine as _;
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;

    const RULES: &str = r#"
[[fallback]]
repository = "hub.test/app/go"
[fallback.platforms]
"linux/s390x" = "hub.test/app/go:s390x-{tag}"
"#;

    /// An index of amd64 and arm64 upstream, s390x from a fallback: archway synthesizes.
    struct Signed {
        f: Fixture,
        amd64: Image,
        s390x: Image,
        index: Digest,
    }

    async fn signed(key: &SigningKey, seed: u64) -> Signed {
        let f = Fixture::signing(key, RULES);
        let (amd64, arm64) = (
            Image::new("linux/amd64", seed),
            Image::new("linux/arm64", seed + 1),
        );
        push_index(
            &f.hub,
            "app/go",
            "latest",
            &[("linux/amd64", &amd64), ("linux/arm64", &arm64)],
        );
        let s390x = Image::new("linux/s390x", seed + 2);
        s390x.push(&f.hub, "app/go", "s390x-latest");
        let index = f.resolve("app/go").await.value.manifest.digest.clone();
        Signed {
            f,
            amd64,
            s390x,
            index,
        }
    }

    /// The signature manifest archway serves at `sha256-<hex>.sig` for `d`.
    async fn sig(f: &Fixture, d: &Digest) -> Result<Served<Arc<Manifest>>> {
        let tag: Tag = cosign::signature_tag(d).parse().unwrap();
        f.registry.tag_manifest(&f.route("app/go"), &tag).await
    }

    /// The payloads of a signature manifest's layers whose signature `key` verifies.
    async fn verified_payloads(f: &Fixture, m: &Manifest, key: &SigningKey) -> Vec<Value> {
        let verifier =
            p256::ecdsa::VerifyingKey::from_public_key_pem(&key.public_pem().unwrap()).unwrap();
        let v: Value = serde_json::from_slice(&m.bytes).unwrap();
        let mut out = Vec::new();
        for layer in v["layers"].as_array().unwrap() {
            assert_eq!(layer["mediaType"], SIMPLE_SIGNING);
            let d: Digest = layer["digest"].as_str().unwrap().parse().unwrap();
            let body = f
                .registry
                .blobs
                .get(&f.route("app/go"), &d, None)
                .await
                .unwrap();
            let chunks: Vec<bytes::Bytes> = futures_util::TryStreamExt::try_collect(body.stream)
                .await
                .unwrap();
            let payload = chunks.concat();
            let sig = base64::engine::general_purpose::STANDARD
                .decode(layer["annotations"][SIGNATURE_ANNOTATION].as_str().unwrap())
                .unwrap();
            let sig = p256::ecdsa::Signature::from_der(&sig).unwrap();
            if verifier.verify(&payload, &sig).is_ok() {
                out.push(serde_json::from_slice(&payload).unwrap());
            }
        }
        out
    }

    #[tokio::test]
    async fn the_index_and_every_platform_manifest_it_lists_are_signed() {
        let key = SigningKey::generate();
        let s = signed(&key, 100).await;
        for (d, note) in [
            (&s.index, NOTE_UPSTREAM_DIGEST),
            (&s.s390x.digest, NOTE_FALLBACK_REPOSITORY),
            (&s.amd64.digest, NOTE_UPSTREAM_REPOSITORY),
        ] {
            let m = sig(&s.f, d).await.unwrap();
            assert_eq!(m.provenance, Provenance::Synthesized);
            let payloads = verified_payloads(&s.f, &m.value, &key).await;
            assert_eq!(payloads.len(), 1, "{d}: one layer, archway's");
            let p = &payloads[0]["critical"];
            assert_eq!(p["identity"]["docker-reference"], "hub.test/app/go");
            assert_eq!(p["image"]["docker-manifest-digest"], d.to_string());
            assert_eq!(p["type"], "cosign container image signature");
            assert!(
                payloads[0]["optional"][note].is_string(),
                "{d}: {}",
                payloads[0]
            );
        }
        let s390x =
            verified_payloads(&s.f, &sig(&s.f, &s.s390x.digest).await.unwrap().value, &key).await;
        assert_eq!(
            s390x[0]["optional"][NOTE_FALLBACK_REPOSITORY],
            "hub.test/app/go"
        );
        // Another key does not verify them.
        let other = SigningKey::generate();
        let m = sig(&s.f, &s.index).await.unwrap();
        assert!(verified_payloads(&s.f, &m.value, &other).await.is_empty());
        // The signature manifest is served by digest too, like any manifest.
        let by_digest =
            s.f.registry
                .manifests
                .get(
                    &s.f.route("app/go"),
                    &Reference::Digest(m.value.digest.clone()),
                )
                .await
                .unwrap();
        assert_eq!(by_digest.value.bytes, m.value.bytes);
        assert!(s.f.registry.metrics.signatures_served.get() >= 1);
    }

    #[tokio::test]
    async fn the_upstreams_own_signature_is_kept_beside_archways() {
        let key = SigningKey::generate();
        let upstream_key = SigningKey::generate();
        let s = signed(&key, 200).await;
        // The upstream signed its amd64 image, in cosign's legacy layout.
        let payload = cosign::payload("hub.test/app/go", &s.amd64.digest, &BTreeMap::new());
        let theirs = Signature {
            signature_b64: upstream_key.sign(&payload),
            payload: payload.clone(),
        };
        let (config, manifest) = cosign::signature_manifest(&[theirs.layer()]);
        s.f.hub.push_blob("app/go", &payload);
        s.f.hub.push_blob("app/go", &config);
        s.f.hub.push_manifest(
            "app/go",
            Some(&cosign::signature_tag(&s.amd64.digest)),
            OCI_MANIFEST,
            &manifest,
        );

        let m = sig(&s.f, &s.amd64.digest).await.unwrap().value;
        let layers: Value = serde_json::from_slice(&m.bytes).unwrap();
        assert_eq!(
            layers["layers"].as_array().unwrap().len(),
            2,
            "the upstream's, then archway's"
        );
        assert_eq!(layers["layers"][0], theirs.layer());
        assert_eq!(verified_payloads(&s.f, &m, &upstream_key).await.len(), 1);
        assert_eq!(verified_payloads(&s.f, &m, &key).await.len(), 1);
    }

    #[tokio::test]
    async fn replicas_with_separate_caches_sign_into_the_same_bytes() {
        let key = SigningKey::generate();
        let (a, b) = (signed(&key, 300).await, signed(&key, 300).await);
        assert_eq!(a.index, b.index);
        for d in [&a.index, &a.s390x.digest] {
            let (x, y) = (sig(&a.f, d).await.unwrap(), sig(&b.f, d).await.unwrap());
            assert_eq!(x.value.bytes, y.value.bytes, "{d}");
        }
    }

    #[tokio::test]
    async fn removing_the_rule_withdraws_archways_signatures() {
        let key = SigningKey::generate();
        let mut s = signed(&key, 350).await;
        assert!(sig(&s.f, &s.s390x.digest).await.is_ok());
        s.f.reconfigure("");
        let e = sig(&s.f, &s.s390x.digest).await.unwrap_err();
        assert_eq!(e.code(), "MANIFEST_UNKNOWN", "the upstream's answer");
    }

    #[tokio::test]
    async fn tags_derived_from_digests_are_never_synthesized() {
        let key = SigningKey::generate();
        let s = signed(&key, 370).await;
        // An attestation the upstream attached, cosign style, to its amd64 image.
        let att = Image::new("linux/amd64", 371);
        let tag = format!("sha256-{}.att", s.amd64.digest.hex());
        att.push(&s.f.hub, "app/go", &tag);
        let got =
            s.f.registry
                .tag_manifest(&s.f.route("app/go"), &tag.parse().unwrap())
                .await
                .unwrap();
        assert_eq!(got.value.digest, att.digest, "byte for byte the upstream's");
        assert_eq!(
            s.f.hub.count(&format!("GET app/go/manifests/s390x-{tag}")),
            0,
            "no fallback looked for"
        );
    }

    #[tokio::test]
    async fn without_signing_the_tag_is_the_upstreams() {
        let f = Fixture::with("1h", "", RULES);
        let amd64 = Image::new("linux/amd64", 400);
        amd64.push(&f.hub, "app/go", "latest");
        Image::new("linux/s390x", 401).push(&f.hub, "app/go", "s390x-latest");
        let index = f.resolve("app/go").await.value.manifest.digest.clone();
        let e = sig(&f, &index).await.unwrap_err();
        assert_eq!(e.code(), "MANIFEST_UNKNOWN", "the upstream has no such tag");
        assert_eq!(
            f.hub.count(&format!(
                "GET app/go/manifests/{}",
                cosign::signature_tag(&index)
            )),
            1
        );
    }
}
