//! The formats signatures travel in: cosign's simple-signing payload, its legacy signature
//! manifest at the tag `sha256-<hex>.sig`, signatures as OCI 1.1 referrers (an artifact
//! manifest with a `subject`), and the referrers index.
//!
//! Everything here is bytes in, bytes out: the same inputs give the same bytes, so replicas
//! that sign the same thing serve the same digests. Keys and the signing itself live in
//! `signing`.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};

use super::digest::Digest;
use super::media::{OCI_CONFIG, OCI_INDEX, OCI_MANIFEST};
use super::reference::Tag;

/// The media type of a simple-signing payload layer.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation that carries a payload layer's base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The artifact type of a cosign signature attached as a referrer.
pub const SIGNATURE_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
/// The empty config of an artifact manifest.
pub const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
/// The payload `type` containers/image and cosign require.
const PAYLOAD_TYPE: &str = "cosign container image signature";

/// The tag of cosign's legacy signature manifest for `d`: `sha256-<hex>.sig`.
pub fn signature_tag(d: &Digest) -> String {
    format!("{}-{}.sig", d.algorithm().as_str(), d.hex())
}

/// The tag of the referrers tag schema for `d`: `sha256-<hex>`.
pub fn referrers_tag(d: &Digest) -> String {
    format!("{}-{}", d.algorithm().as_str(), d.hex())
}

/// The digest a legacy signature tag names, when `tag` is one.
pub fn signed_digest(tag: &Tag) -> Option<Digest> {
    let rest = tag.as_str().strip_suffix(".sig")?;
    let (alg, hex) = rest.split_once('-')?;
    format!("{alg}:{hex}").parse().ok()
}

/// Whether `tag` is one that tools derive from a digest: the referrers tag schema's
/// `sha256-<hex>`, and cosign's `sha256-<hex>.sig`, `.att`, `.sbom`. Such a tag names
/// something attached to an image, never an image to synthesize platforms for.
pub fn is_digest_tag(tag: &Tag) -> bool {
    let t = tag.as_str();
    let t = t.split_once('.').map_or(t, |(head, suffix)| {
        if matches!(suffix, "sig" | "att" | "sbom") {
            head
        } else {
            ""
        }
    });
    t.split_once('-')
        .is_some_and(|(alg, hex)| format!("{alg}:{hex}").parse::<Digest>().is_ok())
}

#[derive(Serialize)]
struct Payload<'a> {
    critical: Critical<'a>,
    optional: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct Critical<'a> {
    identity: Identity<'a>,
    image: Image,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct Identity<'a> {
    #[serde(rename = "docker-reference")]
    docker_reference: &'a str,
}

#[derive(Serialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// The simple-signing payload that vouches for `digest` under the repository name
/// `reference` (`docker.io/team/app`, no tag), with `optional` notes. Field order and
/// formatting are fixed, so the bytes depend on the inputs alone.
pub fn payload(reference: &str, digest: &Digest, optional: &BTreeMap<String, String>) -> Vec<u8> {
    let p = Payload {
        critical: Critical {
            identity: Identity {
                docker_reference: reference,
            },
            image: Image {
                docker_manifest_digest: digest.to_string(),
            },
            kind: PAYLOAD_TYPE,
        },
        optional,
    };
    serde_json::to_vec(&p).unwrap_or_default()
}

/// One signature: the payload's bytes and the base64 of the DER signature over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub payload: Vec<u8>,
    pub signature_b64: String,
}

impl Signature {
    /// The layer that carries this signature in a signature manifest.
    pub fn layer(&self) -> Value {
        json!({
            "mediaType": SIMPLE_SIGNING,
            "digest": Digest::sha256_of(&self.payload).to_string(),
            "size": self.payload.len(),
            "annotations": { SIGNATURE_ANNOTATION: self.signature_b64 },
        })
    }
}

/// A signature manifest in cosign's legacy layout: one layer per signature (`layers`, as
/// [`Signature::layer`] writes them, or an upstream signature manifest's own), and a config
/// naming them as cosign does. Returns the config bytes and the manifest bytes.
pub fn signature_manifest(layers: &[Value]) -> (Vec<u8>, Vec<u8>) {
    let diff_ids: Vec<&str> = layers.iter().filter_map(|l| l["digest"].as_str()).collect();
    let config = canonical(&json!({
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }));
    let manifest = canonical(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": Digest::sha256_of(&config).to_string(),
            "size": config.len(),
        },
        "layers": layers,
    }));
    (config, manifest)
}

/// The empty config blob of artifact manifests: `{}`.
pub fn empty_config() -> &'static [u8] {
    b"{}"
}

/// A signature as an OCI 1.1 referrer of `subject`: an artifact manifest whose one layer is
/// the payload, annotated with its signature. `subject` is the signed manifest's descriptor
/// (media type, digest, size).
pub fn signature_referrer(signature: &Signature, subject: &Value) -> Vec<u8> {
    canonical(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SIGNATURE_ARTIFACT,
        "config": {
            "mediaType": EMPTY_CONFIG,
            "digest": Digest::sha256_of(empty_config()).to_string(),
            "size": empty_config().len(),
        },
        "layers": [signature.layer()],
        "subject": subject,
    }))
}

/// The descriptor a referrers index lists for a referring manifest: its media type, digest
/// and size, and its `artifactType` and `annotations` as the manifest says them.
pub fn referrer_descriptor(manifest: &[u8], media_type: &str) -> Option<Value> {
    let v: Value = serde_json::from_slice(manifest).ok()?;
    let mut d = json!({
        "mediaType": media_type,
        "digest": Digest::sha256_of(manifest).to_string(),
        "size": manifest.len(),
    });
    // An image manifest without artifactType takes its config's media type (spec 1.1).
    let artifact = v
        .get("artifactType")
        .or_else(|| v.get("config").and_then(|c| c.get("mediaType")));
    if let Some(a) = artifact {
        d["artifactType"] = a.clone();
    }
    if let Some(a) = v.get("annotations").filter(|a| a.is_object()) {
        d["annotations"] = a.clone();
    }
    Some(d)
}

/// The referrers index over `descriptors`, in the order given.
pub fn referrers_index(descriptors: &[Value]) -> Vec<u8> {
    canonical(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": descriptors,
    }))
}

/// JSON with every object's keys sorted.
fn canonical(v: &Value) -> Vec<u8> {
    super::index::canonical(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &[u8]) -> Digest {
        Digest::sha256_of(s)
    }

    #[test]
    fn tags_name_the_signed_digest() {
        let x = d(b"x");
        let tag: Tag = signature_tag(&x).parse().unwrap();
        assert_eq!(tag.as_str(), format!("sha256-{}.sig", x.hex()));
        assert_eq!(signed_digest(&tag), Some(x.clone()));
        assert_eq!(referrers_tag(&x), format!("sha256-{}", x.hex()));
        assert_eq!(signed_digest(&"latest".parse().unwrap()), None);
        assert_eq!(signed_digest(&"sha256-zz.sig".parse().unwrap()), None);
    }

    #[test]
    fn digest_tags_are_told_from_image_tags() {
        let hex = d(b"x").hex().to_string();
        for t in ["", ".sig", ".att", ".sbom"] {
            let tag: Tag = format!("sha256-{hex}{t}").parse().unwrap();
            assert!(is_digest_tag(&tag), "{tag}");
        }
        for t in [
            "latest".to_string(),
            format!("sha256-{hex}.tar"),
            format!("sha256-{}", &hex[..12]),
            "sha256-v1.2".to_string(),
            format!("md5-{hex}"),
        ] {
            assert!(!is_digest_tag(&t.parse().unwrap()), "{t}");
        }
    }

    #[test]
    fn the_payload_is_what_containers_image_parses() {
        let x = d(b"x");
        let optional = BTreeMap::from([("io.example".to_string(), "v".to_string())]);
        let p = payload("docker.io/team/app", &x, &optional);
        assert_eq!(
            String::from_utf8(p.clone()).unwrap(),
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"docker.io/team/app"}},"image":{{"docker-manifest-digest":"{x}"}},"type":"cosign container image signature"}},"optional":{{"io.example":"v"}}}}"#
            )
        );
        assert_eq!(
            p,
            payload("docker.io/team/app", &x, &optional),
            "deterministic"
        );
    }

    #[test]
    fn signature_manifests_and_referrers() {
        let s = Signature {
            payload: b"payload".to_vec(),
            signature_b64: "c2ln".into(),
        };
        let (config, manifest) = signature_manifest(&[s.layer()]);
        let m: Value = serde_json::from_slice(&manifest).unwrap();
        assert_eq!(m["layers"][0]["mediaType"], SIMPLE_SIGNING);
        assert_eq!(m["layers"][0]["annotations"][SIGNATURE_ANNOTATION], "c2ln");
        assert_eq!(m["config"]["digest"], d(&config).to_string());
        let c: Value = serde_json::from_slice(&config).unwrap();
        assert_eq!(c["rootfs"]["diff_ids"][0], d(b"payload").to_string());

        let subject = json!({"mediaType": OCI_MANIFEST, "digest": d(b"x").to_string(), "size": 1});
        let r = signature_referrer(&s, &subject);
        let desc = referrer_descriptor(&r, OCI_MANIFEST).unwrap();
        assert_eq!(desc["artifactType"], SIGNATURE_ARTIFACT);
        assert_eq!(desc["digest"], d(&r).to_string());
        let index: Value = serde_json::from_slice(&referrers_index(&[desc])).unwrap();
        assert_eq!(index["mediaType"], OCI_INDEX);
        assert_eq!(index["manifests"][0]["size"], r.len());
    }
}
