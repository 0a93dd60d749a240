//! Signing in cosign's legacy layout with openssl (what a publisher does by hand), and
//! verifying with the Sigstore project's Rust client (`sigstore`), which fetches the `.sig`
//! tag and its layers from a registry exactly as cosign does. Neither is archway's code.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_json::json;
use sigstore::cosign::verification_constraint::{PublicKeyVerifier, VerificationConstraint};
use sigstore::cosign::{Client, ClientBuilder, CosignCapabilities};
use sigstore::registry::{Auth, ClientConfig, ClientProtocol, OciReference};

use super::images::{sha256, Blob, Pusher, OCI_CONFIG, OCI_MANIFEST};

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// An ECDSA P-256 key pair made by openssl, as a publisher would make one.
pub struct KeyPair {
    pub private: PathBuf,
    pub public_pem: String,
}

impl KeyPair {
    pub fn generate(dir: &Path, name: &str) -> KeyPair {
        let private = dir.join(format!("{name}.pem"));
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            private.to_str().unwrap(),
        ]);
        let public = openssl(&["pkey", "-in", private.to_str().unwrap(), "-pubout"]);
        KeyPair {
            private,
            public_pem: String::from_utf8(public).unwrap(),
        }
    }

    /// The base64 of openssl's DER ECDSA signature of `payload`.
    pub fn sign(&self, payload: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("payload");
        std::fs::write(&file, payload).unwrap();
        let der = openssl(&[
            "dgst",
            "-sha256",
            "-sign",
            self.private.to_str().unwrap(),
            file.to_str().unwrap(),
        ]);
        base64::engine::general_purpose::STANDARD.encode(der)
    }
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// cosign's simple-signing payload for `digest` under the name `identity`.
pub fn payload(identity: &str, digest: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "critical": {
            "identity": {"docker-reference": identity},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .unwrap()
}

/// Signs `digest` in `repo` of the registry behind `push`, as cosign does without a
/// transparency log: a signature manifest at the tag `sha256-<hex>.sig`.
pub async fn sign_upstream(push: &Pusher, repo: &str, digest: &str, identity: &str, key: &KeyPair) {
    let payload = Blob::new(payload(identity, digest));
    let signature = key.sign(&payload.data);
    let config = Blob::new(
        serde_json::to_vec(&json!({"architecture": "", "os": "", "config": {}, "rootfs": {"type": "layers", "diff_ids": [payload.digest]}}))
            .unwrap(),
    );
    push.blob(repo, &payload).await;
    push.blob(repo, &config).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.data.len()},
        "layers": [{
            "mediaType": SIMPLE_SIGNING,
            "digest": payload.digest,
            "size": payload.data.len(),
            "annotations": {SIGNATURE_ANNOTATION: signature},
        }],
    }))
    .unwrap();
    let tag = format!("sha256-{}.sig", digest.trim_start_matches("sha256:"));
    push.manifest(repo, &tag, OCI_MANIFEST, &manifest).await;
    assert_eq!(sha256(&payload.data), payload.digest);
}

fn client() -> Client {
    let config = ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    };
    ClientBuilder::default()
        .with_oci_client_config(config)
        .build()
        .expect("a sigstore client")
}

/// What the Sigstore client makes of `image` (`host/repo:tag` or `host/repo@digest`) against
/// `public_pem`: the identities (`docker-reference`) of the signatures that verify, for the
/// digest the reference resolves to. Empty: nothing verifies.
pub async fn verified_identities(image: &str, public_pem: &str) -> Vec<String> {
    let reference: OciReference = image.parse().expect("an image reference");
    let layers = client()
        .trusted_signature_layers(&Auth::Anonymous, &reference)
        .await
        .unwrap_or_default();
    let verifier = PublicKeyVerifier::try_from(public_pem.as_bytes()).expect("a public key");
    layers
        .iter()
        .filter(|l| verifier.verify(l).unwrap_or(false))
        .map(|l| l.simple_signing.critical.identity.docker_reference.clone())
        .collect()
}

/// Whether `signature_b64` over `payload` verifies against `public_pem`, by the Sigstore
/// client's own check (what `cosign verify-blob --key` does).
pub fn blob_verifies(public_pem: &str, signature_b64: &str, payload: &[u8]) -> bool {
    Client::verify_blob_with_public_key(public_pem, signature_b64, payload).is_ok()
}
