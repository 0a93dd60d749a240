//! Multi-arch through archway with real skopeo: the tutorial's layout, an index that lacks
//! s390x, ppc64le and arm/v7, fallbacks that fill them, and a mislabelled fallback that must
//! never be served.

use serde_json::Value;

use crate::support::archway::{Archway, Settings, UpstreamSpec};
use crate::support::images::{sha256, Image, Pusher, OCI_INDEX, OCI_MANIFEST};
use crate::support::registry::Upstream;
use crate::support::{http, random_bytes, skopeo, unique_seed};

pub(crate) const REPO: &str = "thinklab/go-hello-world";

/// The tutorial's layout on a real upstream: an index of amd64 and arm64, and
/// per-architecture images the fallbacks name (one mislabelled).
pub(crate) struct Tutorial {
    pub(crate) up: Upstream,
    pub(crate) amd64: Image,
    pub(crate) arm64: Image,
    pub(crate) s390x: Image,
    pub(crate) ppc64le: Image,
    pub(crate) armv7: Image,
    pub(crate) index: Vec<u8>,
}

fn image(platform: &str) -> Image {
    Image::new(platform, vec![random_bytes(unique_seed(), 20_000)])
}

pub(crate) async fn tutorial() -> Tutorial {
    let up = Upstream::start().await;
    let push = Pusher::new(&up.url(), None);
    let (amd64, arm64) = (image("linux/amd64"), image("linux/arm64"));
    let index = push
        .index(
            REPO,
            "latest",
            &[("linux/amd64", &amd64), ("linux/arm64", &arm64)],
        )
        .await;
    let s390x = image("linux/s390x");
    push.image(REPO, "s390x-latest", &s390x).await;
    let ppc64le = image("linux/ppc64le");
    push.image(REPO, "ppc64le-latest", &ppc64le).await;
    let armv7 = image("linux/arm/v7");
    push.image("arm32v7/go-hello-world", "latest", &armv7).await;
    // Mislabelled: an amd64 image that the config below offers as linux/riscv64.
    push.image(REPO, "riscv64-latest", &image("linux/amd64"))
        .await;
    Tutorial {
        up,
        amd64,
        arm64,
        s390x,
        ppc64le,
        armv7,
        index,
    }
}

const FALLBACKS: &str = r#"
[[fallback]]
repository = "docker.io/thinklab/go-hello-world"
[fallback.platforms]
"linux/s390x" = "docker.io/thinklab/go-hello-world:s390x-{tag}"
"linux/ppc64le" = "docker.io/thinklab/go-hello-world:ppc64le-{tag}"
"linux/arm/v7" = "docker.io/arm32v7/{name}:{tag}"
"linux/riscv64" = "docker.io/thinklab/go-hello-world:riscv64-{tag}"
"#;

/// archway in front of `up` with the tutorial's fallbacks; `extra` continues the
/// `[fallback.platforms]` table, then any further tables.
pub(crate) fn settings(up: &Upstream, ttl: &str, extra: &str) -> Settings {
    Settings {
        upstreams: vec![UpstreamSpec::hub(&up.url())],
        tag_ttl: ttl.into(),
        extra: format!("{FALLBACKS}{extra}"),
        ..Settings::single(&up.url())
    }
}

async fn get(
    aw: &Archway,
    path: &str,
    accept: Option<&str>,
    ua: Option<&str>,
) -> (u16, String, String, Vec<u8>) {
    let mut r = http().get(format!("{}{path}", aw.url()));
    if let Some(a) = accept {
        r = r.header("accept", a);
    }
    if let Some(u) = ua {
        r = r.header("user-agent", u);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let h = |k: &str| {
        r.headers()
            .get(k)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let (ct, digest) = (h("content-type"), h("docker-content-digest"));
    (status, ct, digest, r.bytes().await.unwrap().to_vec())
}

fn platforms(index: &Value) -> Vec<String> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            let mut s = format!(
                "{}/{}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap()
            );
            if let Some(v) = p["variant"].as_str() {
                s = format!("{s}/{v}");
            }
            s
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthesized_index_fills_missing_platforms_and_refuses_mislabelled_ones() {
    let t = tutorial().await;
    let aw = Archway::start(&settings(&t.up, "1h", "")).await;
    let src = format!("{}/{REPO}:latest", aw.host());

    let out = skopeo::run(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{src}"),
    ]);
    assert!(out.ok, "{}", out.stderr);
    let index: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(index["mediaType"], OCI_INDEX);
    assert_eq!(
        platforms(&index),
        [
            "linux/amd64",
            "linux/arm64",
            "linux/s390x",
            "linux/ppc64le",
            "linux/arm/v7"
        ],
        "upstream entries in upstream order, then fallbacks in config order; no riscv64"
    );
    let m = index["manifests"].as_array().unwrap();
    assert_eq!(m[0]["digest"], t.amd64.digest.as_str());
    assert_eq!(m[1]["digest"], t.arm64.digest.as_str());
    assert_eq!(m[2]["digest"], t.s390x.digest.as_str());
    assert_eq!(m[3]["digest"], t.ppc64le.digest.as_str());
    assert_eq!(m[4]["digest"], t.armv7.digest.as_str());
    assert_eq!(
        m[4]["annotations"]["io.archway.fallback.reference"],
        "docker.io/arm32v7/go-hello-world:latest"
    );
    assert!(m[0].get("annotations").is_none());
    let log = aw.log_text();
    assert!(
        log.contains("fallback left out")
            && log.contains("linux/riscv64")
            && log.contains("docker.io/thinklab/go-hello-world:riscv64-latest"),
        "the refused fallback is logged with its platform and reference"
    );

    // Every platform pulls an image whose config says that architecture.
    for (args, want) in [
        (vec!["--override-arch", "s390x"], "s390x"),
        (vec!["--override-arch", "ppc64le"], "ppc64le"),
        (
            vec!["--override-arch", "arm", "--override-variant", "v7"],
            "arm/v7",
        ),
        (vec!["--override-arch", "arm64"], "arm64"),
        (vec!["--override-arch", "amd64"], "amd64"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = skopeo::copy_to_oci(&src, dir.path(), &args);
        assert!(out.ok, "{args:?}: {}", out.stderr);
        assert_eq!(skopeo::copied_arch(dir.path()), want, "{args:?}");
        skopeo::verify_oci_layout(dir.path());
    }
    // riscv64 is not offered at all: never the mislabelled amd64 image.
    let dir = tempfile::tempdir().unwrap();
    let out = skopeo::copy_to_oci(&src, dir.path(), &["--override-arch", "riscv64"]);
    assert!(!out.ok, "a riscv64 pull must fail, not get an amd64 image");

    // The whole synthesized index, every digest verified.
    let dir = tempfile::tempdir().unwrap();
    let out = skopeo::copy_to_oci(&src, dir.path(), &["--all"]);
    assert!(out.ok, "{}", out.stderr);
    let n = skopeo::verify_oci_layout(dir.path());
    assert_eq!(n, 16, "index, 5 manifests, 5 configs, 5 layers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthesis_is_deterministic_and_reaches_only_what_the_index_names() {
    let t = tutorial().await;
    let aw = Archway::start(&settings(&t.up, "1h", "")).await;
    let other = Archway::start(&settings(&t.up, "1h", "")).await; // its own empty cache
    let path = format!("/v2/{REPO}/manifests/latest");
    let (s1, ct, d1, b1) = get(&aw, &path, Some(OCI_INDEX), None).await;
    let (s2, _, d2, b2) = get(&other, &path, Some(OCI_INDEX), None).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(ct, OCI_INDEX);
    assert_eq!(
        d1, d2,
        "two replicas with separate caches serve the same index digest"
    );
    assert_eq!(b1, b2);
    assert_eq!(d1, sha256(&b1));
    assert_ne!(d1, sha256(&t.index), "the index was synthesized");

    // By its digest, after a restart with the upstream gone, byte-identical.
    let dir = aw.stop();
    let mut up = t.up;
    up.stop();
    let aw = Archway::start_in(dir, &settings(&up, "1h", "")).await;
    let (s, _, d, b) = get(
        &aw,
        &format!("/v2/{REPO}/manifests/{d1}"),
        Some(OCI_INDEX),
        None,
    )
    .await;
    assert_eq!((s, d.as_str()), (200, d1.as_str()));
    assert_eq!(b, b1);
    let (s, _, d, _) = get(&aw, &path, Some(OCI_INDEX), None).await;
    assert_eq!(
        (s, d),
        (200, d1.clone()),
        "restart, upstream down: same index"
    );
    up.restart().await;

    // The upstream's own index stays available by its digest.
    let upstream_digest = sha256(&t.index);
    let (s, _, _, b) = get(
        &aw,
        &format!("/v2/{REPO}/manifests/{upstream_digest}"),
        Some(OCI_INDEX),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(b, t.index, "upstream index byte-identical");

    // The arm/v7 child lives in arm32v7/go-hello-world upstream, and is servable here.
    let (s, ct, _, b) = get(
        &aw,
        &format!("/v2/{REPO}/manifests/{}", t.armv7.digest),
        Some(OCI_MANIFEST),
        None,
    )
    .await;
    assert_eq!((s, ct.as_str()), (200, OCI_MANIFEST));
    assert_eq!(b, t.armv7.manifest);
    let layer = &t.armv7.layers[0];
    let r = http()
        .get(format!("{}/v2/{REPO}/blobs/{}", aw.url(), layer.digest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), layer.data);
    // A blob of the fallback repository that the index does not reach is not readable here.
    let stray = crate::support::images::Blob::new(random_bytes(unique_seed(), 999));
    Pusher::new(&up.url(), None)
        .blob("arm32v7/go-hello-world", &stray)
        .await;
    let r = http()
        .get(format!("{}/v2/{REPO}/blobs/{}", aw.url(), stray.digest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_index_support_get_their_platform() {
    let t = tutorial().await;
    let aw = Archway::start(&settings(&t.up, "1h", "")).await;
    let path = format!("/v2/{REPO}/manifests/latest");
    let docker_manifest_only = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json";
    let (s, ct, d, _) = get(&aw, &path, Some(docker_manifest_only), None).await;
    assert_eq!(
        (s, ct.as_str(), d.as_str()),
        (200, OCI_MANIFEST, t.amd64.digest.as_str()),
        "default platform"
    );
    let ua = |arch: &str| {
        format!("docker/20.10.24+dfsg1 go/go1.19.8 git-commit/5d6db84 kernel/6.1 os/linux arch/{arch} UpstreamClient(Docker-Client/20.10.24)")
    };
    let (_, _, d, _) = get(&aw, &path, Some(docker_manifest_only), Some(&ua("arm64"))).await;
    assert_eq!(d, t.arm64.digest);
    let (_, _, d, _) = get(&aw, &path, Some(docker_manifest_only), Some(&ua("s390x"))).await;
    assert_eq!(d, t.s390x.digest, "a synthesized platform resolves too");
    let (s, _, _, body) = get(&aw, &path, Some(docker_manifest_only), Some(&ua("mips64"))).await;
    assert_eq!(s, 404);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["errors"][0]["code"], "MANIFEST_UNKNOWN");
    let msg = v["errors"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("linux/s390x") && msg.contains("linux/amd64"),
        "{msg}"
    );
    // No Accept at all is a client that cannot read an index, as on Docker Hub.
    let (_, _, d, _) = get(&aw, &path, None, None).await;
    assert_eq!(d, t.amd64.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_fallback_changes_the_index_and_unconfigured_repos_are_untouched() {
    let t = tutorial().await;
    let aw = Archway::start(&Settings {
        admin: true,
        ..settings(&t.up, "0s", "")
    })
    .await;
    let admin = aw.admin();
    let path = format!("/v2/{REPO}/manifests/latest");
    let (_, _, before, _) = get(&aw, &path, Some(OCI_INDEX), None).await;
    let (_, _, again, _) = get(&aw, &path, Some(OCI_INDEX), None).await;
    assert_eq!(before, again, "nothing moved, same digest");

    let s390x2 = image("linux/s390x");
    Pusher::new(&t.up.url(), None)
        .image(REPO, "s390x-latest", &s390x2)
        .await;
    let (_, _, after, body) = get(&aw, &path, Some(OCI_INDEX), None).await;
    assert_ne!(after, before, "the fallback moved: a new index");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["manifests"][2]["digest"], s390x2.digest.as_str());

    // A repository without fallbacks: the upstream index unchanged.
    let push = Pusher::new(&t.up.url(), None);
    let plain = push
        .index(
            "plain/app",
            "latest",
            &[
                ("linux/amd64", &image("linux/amd64")),
                ("linux/arm64", &image("linux/arm64")),
            ],
        )
        .await;
    let (s, _, d, b) = get(&aw, "/v2/plain/app/manifests/latest", Some(OCI_INDEX), None).await;
    assert_eq!(s, 200);
    assert_eq!(b, plain, "byte-identical");
    assert_eq!(d, sha256(&plain));

    // The admin endpoint and the CLI show the same resolution.
    let r = http()
        .get(format!(
            "http://127.0.0.1:{admin}/inspect?ref=docker.io/{REPO}:latest"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["digest"], after.as_str());
    assert_eq!(report["synthesized"], true);
    let rows = report["platforms"].as_array().unwrap();
    let riscv = rows
        .iter()
        .find(|r| r["platform"] == "linux/riscv64")
        .unwrap();
    assert!(
        riscv["check"].as_str().unwrap().starts_with("refused"),
        "{riscv}"
    );
    assert!(
        riscv["check"].as_str().unwrap().contains("linux/amd64"),
        "{riscv}"
    );
    assert_eq!(rows.len(), 6);

    let inspect = |json: bool| {
        let mut cmd = std::process::Command::new(Archway::bin());
        cmd.args(["inspect", "--config"]).arg(&aw.config);
        if json {
            cmd.arg("--json");
        }
        let out = cmd
            .arg(format!("docker.io/{REPO}:latest"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let stdout = inspect(false);
    assert!(stdout.contains(&format!("serves {after}")), "{stdout}");
    let row = |platform: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(platform))
            .unwrap_or_else(|| panic!("no {platform} row: {stdout}"))
            .to_string()
    };
    assert!(
        row("linux/arm64").ends_with("ok (config linux/arm64)"),
        "upstream entries are checked too: {stdout}"
    );
    let s390x = row("linux/s390x");
    assert!(
        s390x.contains(&s390x2.digest) && s390x.ends_with("ok (config linux/s390x)"),
        "the moved fallback: {s390x}"
    );
    assert!(
        row("linux/riscv64").ends_with("refused: its image config says linux/amd64"),
        "{stdout}"
    );
    // --json: the same report as the admin endpoint's.
    let json: Value = serde_json::from_str(&inspect(true)).unwrap();
    assert_eq!(json["digest"], after.as_str());
    assert_eq!(json["platforms"], report["platforms"]);
    // Every synthesis refused riscv64 once: three pulls (the tag TTL is 0s) and /inspect.
    assert_eq!(
        crate::support::metric(admin, "archway_fallbacks_refused_total").await,
        Some(4.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_schema2_lists_are_kept_and_synthesized_as_docker_lists() {
    use crate::support::images::{DOCKER_LIST, DOCKER_MANIFEST};
    let up = Upstream::start().await;
    let push = Pusher::new(&up.url(), None);
    let docker = |p: &str| Image::docker(p, vec![random_bytes(unique_seed(), 20_000)]);
    let (amd64, arm64, s390x) = (
        docker("linux/amd64"),
        docker("linux/arm64"),
        docker("linux/s390x"),
    );
    push.docker_list(
        "dock/app",
        "latest",
        &[("linux/amd64", &amd64), ("linux/arm64", &arm64)],
    )
    .await;
    push.image("dock/app", "s390x-latest", &s390x).await;
    let plain = push
        .docker_list("dock/plain", "latest", &[("linux/amd64", &amd64)])
        .await;
    let aw = Archway::start(&Settings {
        upstreams: vec![UpstreamSpec::hub(&up.url())],
        extra: r#"
[[fallback]]
repository = "docker.io/dock/app"
[fallback.platforms]
"linux/s390x" = "docker.io/dock/app:s390x-{tag}"
"#
        .into(),
        ..Settings::single(&up.url())
    })
    .await;
    let accept = format!("{DOCKER_LIST}, {DOCKER_MANIFEST}");
    // Every child is Docker schema2: the synthesized index is a Docker manifest list.
    let (s, ct, d, body) = get(&aw, "/v2/dock/app/manifests/latest", Some(&accept), None).await;
    assert_eq!((s, ct.as_str()), (200, DOCKER_LIST));
    assert_eq!(d, sha256(&body));
    let list: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list["mediaType"], DOCKER_LIST);
    assert_eq!(
        platforms(&list),
        ["linux/amd64", "linux/arm64", "linux/s390x"]
    );
    assert!(list["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["mediaType"] == DOCKER_MANIFEST));
    // Without a rule, the upstream's list byte for byte; a schema2 image as sent.
    let (s, ct, _, body) = get(&aw, "/v2/dock/plain/manifests/latest", Some(&accept), None).await;
    assert_eq!((s, ct.as_str(), body), (200, DOCKER_LIST, plain));
    let (s, ct, d, _) = get(
        &aw,
        "/v2/dock/app/manifests/s390x-latest",
        Some(&accept),
        None,
    )
    .await;
    assert_eq!(
        (s, ct.as_str(), d.as_str()),
        (200, DOCKER_MANIFEST, s390x.digest.as_str())
    );
    // A real client pulls the synthesized platform from the Docker list, unconverted (a
    // `dir:` copy keeps the manifest's bytes; an OCI layout would convert it).
    let dir = tempfile::tempdir().unwrap();
    let out = skopeo::run(&[
        "copy",
        "--src-tls-verify=false",
        "--override-arch",
        "s390x",
        &format!("docker://{}/dock/app:latest", aw.host()),
        &format!("dir:{}", dir.path().display()),
    ]);
    assert!(out.ok, "{}", out.stderr);
    let copied = std::fs::read(dir.path().join("manifest.json")).unwrap();
    assert_eq!(sha256(&copied), s390x.digest);
}
