//! Signatures through archway, judged by the Sigstore project's client (`sigstore`) and
//! fetched by containers/image (skopeo with `use-sigstore-attachments`): an upstream's own
//! signatures pass through and keep verifying with the upstream gone; an index archway
//! synthesized, and each platform manifest it lists, verify against archway's key under the
//! name clients use.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::archway::{Archway, Settings, UpstreamSpec};
use crate::support::cosign::{blob_verifies, sign_upstream, verified_identities, KeyPair};
use crate::support::images::{Image, Pusher, OCI_INDEX};
use crate::support::registry::Upstream;
use crate::support::{http, random_bytes, skopeo, unique_seed};

const REPO: &str = "thinklab/go-hello-world";
const NAME: &str = "docker.io/thinklab/go-hello-world";

fn image(platform: &str) -> Image {
    Image::new(platform, vec![random_bytes(unique_seed(), 3000)])
}

fn hub(up: &Upstream) -> Settings {
    Settings {
        upstreams: vec![UpstreamSpec::hub(&up.url())],
        ..Settings::single(&up.url())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_signature_verifies_through_archway_and_without_the_upstream() {
    let mut up = Upstream::start().await;
    let keys = tempfile::tempdir().unwrap();
    let publisher = KeyPair::generate(keys.path(), "publisher");
    let impostor = KeyPair::generate(keys.path(), "impostor");
    let push = Pusher::new(&up.url(), None);
    let (signed, unsigned, forged) = (
        image("linux/amd64"),
        image("linux/amd64"),
        image("linux/amd64"),
    );
    push.image("team/signed", "v1", &signed).await;
    push.image("team/unsigned", "v1", &unsigned).await;
    push.image("team/forged", "v1", &forged).await;
    sign_upstream(
        &push,
        "team/signed",
        &signed.digest,
        "docker.io/team/signed",
        &publisher,
    )
    .await;
    sign_upstream(
        &push,
        "team/forged",
        &forged.digest,
        "docker.io/team/forged",
        &impostor,
    )
    .await;
    let aw = Archway::start(&hub(&up)).await;
    let at = |r: &str| format!("{}/{r}", aw.host());

    assert_eq!(
        verified_identities(&at("team/signed:v1"), &publisher.public_pem).await,
        ["docker.io/team/signed"]
    );
    // The verifier really checks: no signature, or one by another key, verifies nothing.
    assert!(
        verified_identities(&at("team/unsigned:v1"), &publisher.public_pem)
            .await
            .is_empty()
    );
    assert!(
        verified_identities(&at("team/forged:v1"), &publisher.public_pem)
            .await
            .is_empty()
    );

    // The signature and its layers are cached like the image.
    up.stop();
    assert_eq!(
        verified_identities(
            &at(&format!("team/signed@{}", signed.digest)),
            &publisher.public_pem
        )
        .await,
        ["docker.io/team/signed"],
        "verified with the upstream stopped"
    );
}

/// The tutorial's layout behind archway with a fallback for s390x; the upstream signed its
/// amd64 image itself.
struct Tutorial {
    up: Upstream,
    keys: tempfile::TempDir,
    upstream_key: KeyPair,
    archway_pub: String,
    /// What `archway signing-key generate` printed as the key's fingerprint.
    fingerprint: String,
    upstream_index: String,
    amd64: Image,
    s390x: Image,
}

async fn tutorial() -> Tutorial {
    let up = Upstream::start().await;
    let keys = tempfile::tempdir().unwrap();
    let upstream_key = KeyPair::generate(keys.path(), "upstream");
    let push = Pusher::new(&up.url(), None);
    let (amd64, arm64) = (image("linux/amd64"), image("linux/arm64"));
    let upstream_index = push
        .index(
            REPO,
            "latest",
            &[("linux/amd64", &amd64), ("linux/arm64", &arm64)],
        )
        .await;
    let s390x = image("linux/s390x");
    push.image(REPO, "s390x-latest", &s390x).await;
    // The publisher signed its index and its amd64 image.
    let upstream_index = crate::support::images::sha256(&upstream_index);
    sign_upstream(&push, REPO, &upstream_index, NAME, &upstream_key).await;
    sign_upstream(&push, REPO, &amd64.digest, NAME, &upstream_key).await;
    // archway's key, made as an admin would make it.
    let key = keys.path().join("archway.pem");
    let out = std::process::Command::new(Archway::bin())
        .args(["signing-key", "generate", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fingerprint = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint "))
        .expect("a fingerprint")
        .to_string();
    let archway_pub = std::fs::read_to_string(keys.path().join("archway.pem.pub")).unwrap();
    Tutorial {
        up,
        keys,
        upstream_key,
        archway_pub,
        fingerprint,
        upstream_index,
        amd64,
        s390x,
    }
}

impl Tutorial {
    fn settings(&self, signing: bool) -> Settings {
        let mut extra = format!(
            "[[fallback]]\nrepository = \"{NAME}\"\n[fallback.platforms]\n\"linux/s390x\" = \"{NAME}:s390x-{{tag}}\"\n"
        );
        if signing {
            extra.push_str(&format!(
                "\n[signing]\nkey = \"{}\"\n",
                self.keys.path().join("archway.pem").display()
            ));
        }
        Settings {
            extra,
            ..hub(&self.up)
        }
    }
}

/// The digest of the index archway serves for REPO:latest.
async fn index_digest(aw: &Archway) -> String {
    let r = http()
        .get(format!("{}/v2/{REPO}/manifests/latest", aw.url()))
        .header("accept", OCI_INDEX)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synthesized_index_and_its_platforms_verify_against_archways_key() {
    let t = tutorial().await;
    let aw = Archway::start(&t.settings(true)).await;
    let index = index_digest(&aw).await;
    let at = |d: &str| format!("{}/{REPO}@{d}", aw.host());
    for (what, d) in [
        ("index", index.as_str()),
        ("s390x", t.s390x.digest.as_str()),
        ("amd64", t.amd64.digest.as_str()),
    ] {
        assert_eq!(
            verified_identities(&at(d), &t.archway_pub).await,
            [NAME],
            "{what}"
        );
    }
    // The upstream's own signature of amd64 is served beside archway's.
    assert_eq!(
        verified_identities(&at(&t.amd64.digest), &t.upstream_key.public_pem).await,
        [NAME]
    );
    // The synthesized index was never signed by the upstream.
    assert!(verified_identities(&at(&index), &t.upstream_key.public_pem)
        .await
        .is_empty());

    // Without [signing], nothing vouches for what archway built.
    let unsigned = Archway::start(&t.settings(false)).await;
    assert_eq!(index_digest(&unsigned).await, index, "the same index");
    let at = |d: &str| format!("{}/{REPO}@{d}", unsigned.host());
    assert!(verified_identities(&at(&index), &t.archway_pub)
        .await
        .is_empty());
    assert!(verified_identities(&at(&t.s390x.digest), &t.archway_pub)
        .await
        .is_empty());
}

/// What containers/image wrote next to an image it copied into a `dir:` destination with
/// `use-sigstore-attachments`: each sigstore signature's payload and base64 signature.
fn sigstore_signatures(dir: &Path) -> Vec<(Vec<u8>, String)> {
    use base64::Engine as _;
    let mut out = Vec::new();
    for n in 1.. {
        let Ok(blob) = std::fs::read(dir.join(format!("signature-{n}"))) else {
            break;
        };
        // "\0sigstore-json\n" then {"mimeType","payload"(base64),"annotations"}.
        let json = blob
            .splitn(2, |b| *b == b'\n')
            .nth(1)
            .expect("a sigstore signature");
        let v: Value = serde_json::from_slice(json).unwrap();
        let payload = base64::engine::general_purpose::STANDARD
            .decode(v["payload"].as_str().unwrap())
            .unwrap();
        let signature = v["annotations"]["dev.cosignproject.cosign/signature"]
            .as_str()
            .unwrap()
            .to_string();
        out.push((payload, signature));
    }
    out
}

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_image_fetches_archways_signature_through_the_mirror() {
    let t = tutorial().await;
    let aw = Archway::start(&t.settings(true)).await;
    let dir = tempfile::tempdir().unwrap();
    // The deploy/ mirror file, with archway's real address.
    let conf = std::fs::read_to_string(deploy("containers/registries.conf.d/archway.conf"))
        .unwrap()
        .replace("127.0.0.1:5000", &aw.host());
    let registries = dir.path().join("registries.conf");
    std::fs::write(&registries, conf).unwrap();
    let registries_d = dir.path().join("registries.d");
    std::fs::create_dir_all(&registries_d).unwrap();
    std::fs::write(
        registries_d.join("archway.yaml"),
        std::fs::read_to_string(deploy("containers/registries.d/archway.yaml"))
            .unwrap()
            .replace("127.0.0.1:5000", &aw.host()),
    )
    .unwrap();
    let out_dir = dir.path().join("copy");
    let out = skopeo::run(&[
        "--registries-conf",
        registries.to_str().unwrap(),
        "--registries.d",
        registries_d.to_str().unwrap(),
        "copy",
        "--override-arch",
        "s390x",
        &format!("docker://{NAME}:latest"),
        &format!("dir:{}", out_dir.display()),
    ]);
    assert!(out.ok, "{}", out.stderr);
    let signatures = sigstore_signatures(&out_dir);
    assert_eq!(
        signatures.len(),
        1,
        "archway's signature of the s390x manifest"
    );
    let (payload, signature) = &signatures[0];
    assert!(blob_verifies(&t.archway_pub, signature, payload));
    let p: Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(p["critical"]["identity"]["docker-reference"], NAME);
    assert_eq!(
        p["critical"]["image"]["docker-manifest-digest"],
        t.s390x.digest.as_str()
    );
    assert_eq!(p["optional"]["io.archway.fallback.repository"], NAME);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_separate_caches_serve_the_same_signatures() {
    let t = tutorial().await;
    let one = Archway::start(&t.settings(true)).await;
    let two = Archway::start(&t.settings(true)).await;
    let index = index_digest(&one).await;
    assert_eq!(index_digest(&two).await, index);
    for d in [&index, &t.s390x.digest, &t.amd64.digest] {
        let tag = format!("sha256-{}.sig", d.trim_start_matches("sha256:"));
        let get = |aw: &Archway| {
            http()
                .get(format!("{}/v2/{REPO}/manifests/{tag}", aw.url()))
                .header("accept", "application/vnd.oci.image.manifest.v1+json")
                .send()
        };
        let (a, b) = (get(&one).await.unwrap(), get(&two).await.unwrap());
        assert_eq!(
            (a.status().as_u16(), b.status().as_u16()),
            (200, 200),
            "{tag}"
        );
        let da = a.headers()["docker-content-digest"].clone();
        assert_eq!(da, b.headers()["docker-content-digest"], "{tag}");
        assert_eq!(a.bytes().await.unwrap(), b.bytes().await.unwrap(), "{tag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_check_config_and_reload_know_the_key() {
    let t = tutorial().await;
    let mut settings = t.settings(true);
    settings.admin = true;
    let aw = Archway::start(&settings).await;
    let index = index_digest(&aw).await;

    // inspect: who signs what archway serves, and whether the upstream signed its own.
    let out = std::process::Command::new(Archway::bin())
        .args(["inspect", "--json", "--config"])
        .arg(&aw.config)
        .arg(format!("{NAME}:latest"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["digest"], index.as_str());
    assert_eq!(report["signed_by"], t.fingerprint.as_str());
    assert_eq!(report["upstream_digest"], t.upstream_index.as_str());
    assert_eq!(
        report["upstream_signature"],
        format!(
            "sha256-{}.sig",
            t.upstream_index.trim_start_matches("sha256:")
        )
        .as_str()
    );

    // check-config shows the key, and warns about fallbacks without one.
    let check = |config: &Path| {
        let out = std::process::Command::new(Archway::bin())
            .arg("check-config")
            .arg(config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (stdout, stderr) = check(&aw.config);
    assert!(
        stdout.contains(&format!("(fingerprint {})", t.fingerprint)),
        "{stdout}"
    );
    assert!(!stderr.contains("warning"), "{stderr}");
    let unsigned = aw.dir.path().join("unsigned.toml");
    std::fs::write(
        &unsigned,
        crate::support::archway::render(&t.settings(false), aw.dir.path()),
    )
    .unwrap();
    let (stdout, stderr) = check(&unsigned);
    assert!(stdout.contains("signing  off"), "{stdout}");
    assert!(
        stderr.contains("warning") && stderr.contains("without [signing]"),
        "{stderr}"
    );

    // A new key on SIGHUP: what archway serves from then on is signed with it.
    let key = t.keys.path().join("archway.pem");
    std::fs::remove_file(&key).unwrap();
    let out = std::process::Command::new(Archway::bin())
        .args(["signing-key", "generate", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let new_pub = std::fs::read_to_string(t.keys.path().join("archway.pem.pub")).unwrap();
    aw.sighup();
    assert!(
        crate::support::wait_metric(
            aw.admin(),
            "archway_config_reloads_total{outcome=\"ok\"}",
            1.0,
            std::time::Duration::from_secs(20)
        )
        .await
    );
    let at = format!("{}/{REPO}@{}", aw.host(), t.s390x.digest);
    assert_eq!(
        verified_identities(&at, &new_pub).await,
        [NAME],
        "the new key"
    );
    assert!(
        verified_identities(&at, &t.archway_pub).await.is_empty(),
        "not the old one"
    );
}
