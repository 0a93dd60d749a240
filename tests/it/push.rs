//! Real clients push to hosted repositories: skopeo (a multi-arch OCI layout with `--all`,
//! on local disk and on S3), podman, docker, and the tutorial's buildah workflow straight
//! into archway, pulled back with podman and containerd. A hosted image fills the platform an
//! upstream index lacks, and a mislabelled one is refused.

use serde_json::Value;

use crate::clients::{buildah, podman, podman_env, Containerd, Dockerd};
use crate::hosted::{hosted_toml, WRITER};
use crate::support::archway::{Archway, Settings};
use crate::support::images::{Image, Pusher, OCI_INDEX, OCI_MANIFEST};
use crate::support::registry::Upstream;
use crate::support::s3::S3;
use crate::support::{http, random_bytes, skopeo, unique_seed};

fn creds() -> String {
    format!("{}:{}", WRITER.0, WRITER.1)
}

/// archway with the hosted registry `local` (writer `ci`) besides `settings`.
async fn start(dir: &std::path::Path, settings: Settings) -> Archway {
    Archway::start(&Settings {
        extra: format!("{}{}", settings.extra, hosted_toml(dir, true)),
        ..settings
    })
    .await
}

/// The digest and bytes of the manifest `repo:reference` archway serves (as the writer).
async fn served(aw: &Archway, repo: &str, reference: &str) -> (String, Vec<u8>) {
    let r = http()
        .get(format!("{}/v2/{repo}/manifests/{reference}", aw.url()))
        .basic_auth(WRITER.0, Some(WRITER.1))
        .header("accept", format!("{OCI_INDEX}, {OCI_MANIFEST}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{repo}:{reference}");
    let d = r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string();
    (d, r.bytes().await.unwrap().to_vec())
}

/// skopeo copies a multi-arch OCI layout into `aw` with `--all`, and back out.
async fn skopeo_round_trip(up: &Upstream, aw: &Archway) {
    let seed = unique_seed();
    let imgs: Vec<Image> = ["linux/amd64", "linux/arm64"]
        .iter()
        .enumerate()
        .map(|(i, p)| Image::new(p, vec![random_bytes(seed + i as u64, 200_000)]))
        .collect();
    let index = Pusher::new(&up.url(), None)
        .index(
            "src/multi",
            "v1",
            &[("linux/amd64", &imgs[0]), ("linux/arm64", &imgs[1])],
        )
        .await;
    let layout = tempfile::tempdir().unwrap();
    let out = skopeo::run(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{}/src/multi:v1", up.host()),
        &format!("oci:{}:v1", layout.path().display()),
    ]);
    assert!(out.ok, "into a layout: {}", out.stderr);
    let out = skopeo::run(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds(),
        &format!("oci:{}:v1", layout.path().display()),
        &format!("docker://{}/local/team/multi:v1", aw.host()),
    ]);
    assert!(out.ok, "skopeo push --all: {}", out.stderr);
    let (digest, bytes) = served(aw, "local/team/multi", "v1").await;
    assert_eq!(bytes, index, "the index, byte for byte");
    assert_eq!(digest, crate::support::images::sha256(&index));
    for img in &imgs {
        assert_eq!(
            served(aw, "local/team/multi", &img.digest).await.1,
            img.manifest
        );
    }
    let back = tempfile::tempdir().unwrap();
    let out = skopeo::copy_to_oci(
        &format!("{}/local/team/multi:v1", aw.host()),
        back.path(),
        &["--all", "--src-creds", &creds()],
    );
    assert!(out.ok, "pull back: {}", out.stderr);
    assert_eq!(skopeo::verify_oci_layout(back.path()), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_a_multi_arch_layout_with_all() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let aw = start(dir.path(), Settings::single(&up.url())).await;
    skopeo_round_trip(&up, &aw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_to_a_hosted_repository_on_s3() {
    let up = Upstream::start().await;
    let s3 = S3::start("mirror").await;
    let dir = tempfile::tempdir().unwrap();
    let aw = start(
        dir.path(),
        Settings {
            storage_url: Some("s3://mirror/cache".into()),
            extra: s3.storage_toml(),
            ..Settings::single(&up.url())
        },
    )
    .await;
    skopeo_round_trip(&up, &aw).await;
    // Chunked uploads too (skopeo uploads monolithically): a PATCH then a PUT.
    let data = random_bytes(unique_seed(), 3 * 1024 * 1024);
    let digest = crate::support::images::sha256(&data);
    let c = http();
    let r = c
        .post(format!("{}/v2/local/s3/blobs/uploads/", aw.url()))
        .basic_auth(WRITER.0, Some(WRITER.1))
        .send()
        .await
        .unwrap();
    let loc = format!("{}{}", aw.url(), r.headers()["location"].to_str().unwrap());
    for (a, b) in [(0, 1_000_000), (1_000_000, data.len())] {
        let r = c
            .patch(&loc)
            .basic_auth(WRITER.0, Some(WRITER.1))
            .header("content-range", format!("{a}-{}", b - 1))
            .body(data[a..b].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let r = c
        .put(format!("{loc}?digest={digest}"))
        .basic_auth(WRITER.0, Some(WRITER.1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(
        s3.keys("mirror", "cache/uploads/").await.is_empty(),
        "no chunk left behind"
    );
    let got = c
        .get(format!("{}/v2/local/s3/blobs/{digest}", aw.url()))
        .basic_auth(WRITER.0, Some(WRITER.1))
        .send()
        .await
        .unwrap();
    assert_eq!(&got.bytes().await.unwrap()[..], &data[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_and_docker_push() {
    let up = Upstream::start().await;
    let img = Image::new("linux/amd64", vec![random_bytes(unique_seed(), 100_000)]);
    Pusher::new(&up.url(), None)
        .image("src/app", "v1", &img)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let aw = start(dir.path(), Settings::single(&up.url())).await;

    // podman: pull from the upstream, push into archway.
    let registries = dir.path().join("registries.conf");
    std::fs::write(&registries, "").unwrap();
    let env = podman_env(dir.path(), &registries);
    let src = format!("{}/src/app:v1", up.host());
    let (ok, _, err) = podman(&env, &["pull", "-q", "--tls-verify=false", &src]);
    assert!(ok, "podman pull: {err}");
    let dest = format!("{}/local/podman/app:v1", aw.host());
    let (ok, _, err) = podman(
        &env,
        &[
            "push",
            "--tls-verify=false",
            "--creds",
            &creds(),
            &src,
            &dest,
        ],
    );
    assert!(ok, "podman push: {err}");
    let (_, bytes) = served(&aw, "local/podman/app", "v1").await;
    let m: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        m["config"]["digest"],
        img.config.digest.as_str(),
        "the same config"
    );
    let out_dir = dir.path().join("podman-back");
    let out = skopeo::copy_to_oci(&dest, &out_dir, &["--src-creds", &creds()]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(skopeo::copied_arch(&out_dir), "amd64");

    // docker: login, pull from the upstream, tag, push (127.0.0.0/8 is insecure for dockerd).
    let docker = Dockerd::start(&aw.host());
    let (ok, _, err) = docker.docker(&["pull", "-q", &src]);
    assert!(ok, "docker pull: {err}");
    let (ok, _, err) = docker.docker(&["login", "-u", WRITER.0, "-p", WRITER.1, &aw.host()]);
    assert!(ok, "docker login: {err}");
    let dest = format!("{}/local/docker/app:v1", aw.host());
    assert!(docker.docker(&["tag", &src, &dest]).0);
    let (ok, out, err) = docker.docker(&["push", &dest]);
    assert!(ok, "docker push: {out}{err}");
    let (_, bytes) = served(&aw, "local/docker/app", "v1").await;
    let m: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(m["config"]["digest"], img.config.digest.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildah_builds_every_platform_into_archway_then_podman_and_containerd_pull_them() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let aw = start(dir.path(), Settings::single(&up.url())).await;
    let registries = dir.path().join("registries.conf");
    std::fs::write(&registries, "").unwrap();
    let env = podman_env(dir.path(), &registries);
    let repo = format!("{}/local/tutorial/hello", aw.host());
    let login = creds();
    let pushed = crate::clients::build_per_arch(&env, dir.path(), &["--creds", &login], |arch| {
        format!("docker://{repo}:{arch}")
    });
    buildah(&env, &["manifest", "create", "hello-list"]);
    for arch in ["amd64", "arm64", "s390x"] {
        buildah(
            &env,
            &[
                "manifest",
                "add",
                "--tls-verify=false",
                "--creds",
                &creds(),
                "hello-list",
                &format!("docker://{repo}:{arch}"),
            ],
        );
    }
    buildah(
        &env,
        &[
            "manifest",
            "annotate",
            "--variant",
            "v8",
            "hello-list",
            &pushed["arm64"],
        ],
    );
    buildah(
        &env,
        &[
            "manifest",
            "push",
            "--all",
            "--tls-verify=false",
            "--creds",
            &creds(),
            "hello-list",
            &format!("docker://{repo}:latest"),
        ],
    );
    let (_, index) = served(&aw, "local/tutorial/hello", "latest").await;
    let index: Value = serde_json::from_slice(&index).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 3, "{index}");

    // podman pulls each platform back.
    for arch in ["amd64", "arm64", "s390x"] {
        let image = format!("{repo}:latest");
        let (ok, _, err) = podman(
            &env,
            &[
                "pull",
                "-q",
                "--tls-verify=false",
                "--creds",
                &creds(),
                "--arch",
                arch,
                &image,
            ],
        );
        assert!(ok, "podman pull {arch}: {err}");
        // The platform podman stored is the one asked for (its config says so).
        let (ok, out, err) = podman(
            &env,
            &["image", "inspect", "--format", "{{.Architecture}}", &image],
        );
        assert!(ok, "{err}");
        assert_eq!(out.trim(), arch);
        let _ = podman(&env, &["rmi", "-f", &image]);
    }
    // containerd too.
    let c = Containerd::start();
    for arch in ["amd64", "arm64", "s390x"] {
        let ns = format!("push-{arch}");
        let (ok, _, err) = c.ctr(&[
            "-n",
            &ns,
            "images",
            "pull",
            "--plain-http",
            "--user",
            &creds(),
            "--platform",
            &format!("linux/{arch}"),
            &format!("{repo}:latest"),
        ]);
        assert!(ok, "ctr pull {arch}: {err}");
        assert!(c.has_content(&ns, &pushed[arch]), "{arch}");
        assert_eq!(c.pulled_arch(&ns).split('/').next().unwrap(), arch);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosted_image_fills_the_platform_an_upstream_index_lacks() {
    let up = Upstream::start().await;
    let seed = unique_seed();
    let (amd64, arm64) = (
        Image::new("linux/amd64", vec![random_bytes(seed, 1000)]),
        Image::new("linux/arm64", vec![random_bytes(seed + 1, 1000)]),
    );
    Pusher::new(&up.url(), None)
        .index(
            "thinklab/go",
            "v1",
            &[("linux/amd64", &amd64), ("linux/arm64", &arm64)],
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let aw = start(
        dir.path(),
        Settings {
            extra: r#"
[[fallback]]
repository = "upstream.test/thinklab/go"
[fallback.platforms]
"linux/s390x" = "local/thinklab/go:s390x-{tag}"
"linux/ppc64le" = "local/thinklab/go:ppc64le-{tag}"
"#
            .into(),
            ..Settings::single(&up.url())
        },
    )
    .await;
    // The team pushes s390x; its ppc64le push names another architecture in its config.
    let hosted = crate::hosted::Pushing::new(&aw.url());
    let s390x = Image::new("linux/s390x", vec![random_bytes(seed + 2, 1000)]);
    hosted.image("local/thinklab/go", "s390x-v1", &s390x).await;
    let wrong = Image::new("linux/arm64", vec![random_bytes(seed + 3, 1000)]);
    hosted
        .image("local/thinklab/go", "ppc64le-v1", &wrong)
        .await;

    let (_, bytes) = served(&aw, "upstream.test/thinklab/go", "v1").await;
    let index: Value = serde_json::from_slice(&bytes).unwrap();
    let archs: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(
        archs,
        ["amd64", "arm64", "s390x"],
        "ppc64le refused: its config says arm64"
    );
    let out_dir = dir.path().join("s390x");
    let out = skopeo::copy_to_oci(
        &format!("{}/upstream.test/thinklab/go:v1", aw.host()),
        &out_dir,
        &["--override-arch", "s390x", "--src-creds", &creds()],
    );
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(skopeo::copied_manifest(&out_dir), s390x.digest);
    assert_eq!(skopeo::verify_oci_layout(&out_dir), 3);
}
