//! Real cluster clients pulling multi-arch images through archway, configured with the very
//! files in `deploy/` (only the address substituted): containerd (`ctr` with a private
//! daemon, `hosts.toml`) and podman (`registries.conf` mirrors).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::archway::{Archway, Settings, UpstreamSpec};
use crate::support::images::{Image, Pusher};
use crate::support::registry::Upstream;
use crate::support::{random_bytes, unique_seed};

const REPO: &str = "thinklab/go-hello-world";

/// Runs a client command: success, stdout, stderr.
fn run(mut cmd: Command) -> (bool, String, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} (make test installs the clients): {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
const DEPLOY_ADDR: &str = "127.0.0.1:5000";

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel)
}

/// Copies a deploy file with archway's real address in place of the documented one.
fn install(rel: &str, dest: &Path, addr: &str) {
    let text = std::fs::read_to_string(deploy(rel)).expect("deploy file");
    assert!(
        text.contains(DEPLOY_ADDR),
        "{rel} no longer names {DEPLOY_ADDR}"
    );
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(dest, text.replace(DEPLOY_ADDR, addr)).expect("write");
}

fn image(platform: &str) -> Image {
    Image::new(platform, vec![random_bytes(unique_seed(), 4096)])
}

/// Upstreams for docker.io and quay.io, with the tutorial's multi-arch layout on docker.io.
struct Fixture {
    hub: Upstream,
    quay: Upstream,
    s390x: Image,
    quay_img: Image,
    archway: Archway,
}

async fn fixture() -> Fixture {
    let hub = Upstream::start().await;
    let quay = Upstream::start().await;
    let push = Pusher::new(&hub.url(), None);
    push.index(
        REPO,
        "latest",
        &[
            ("linux/amd64", &image("linux/amd64")),
            ("linux/arm64", &image("linux/arm64")),
        ],
    )
    .await;
    let s390x = image("linux/s390x");
    push.image(REPO, "s390x-latest", &s390x).await;
    push.image("arm32v7/go-hello-world", "latest", &image("linux/arm/v7"))
        .await;
    let quay_img = image("linux/amd64");
    Pusher::new(&quay.url(), None)
        .image("org/app", "v1", &quay_img)
        .await;
    let settings = Settings {
        upstreams: vec![
            UpstreamSpec::hub(&hub.url()),
            UpstreamSpec::new("quay", &quay.url(), &["quay.io", "ghcr.io"], false),
        ],
        extra: r#"
[[fallback]]
repository = "docker.io/thinklab/go-hello-world"
[fallback.platforms]
"linux/s390x" = "docker.io/thinklab/go-hello-world:s390x-{tag}"
"linux/arm/v7" = "docker.io/arm32v7/{name}:{tag}"
"#
        .into(),
        ..Settings::single("http://unused")
    };
    let archway = Archway::start(&settings).await;
    Fixture {
        hub,
        quay,
        s390x,
        quay_img,
        archway,
    }
}

// === containerd ===

pub struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Containerd {
    pub fn start() -> Containerd {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let cfg = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = "{debug}"
[metrics]
  address = ""
[plugins."io.containerd.metadata.v1.bolt"]
  content_sharing_policy = "isolated"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("containerd.sock").display(),
            debug = d.join("debug.sock").display(),
        );
        std::fs::write(d.join("config.toml"), cfg).expect("config");
        let log = std::fs::File::create(d.join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(log.try_clone().expect("fd"))
            .stderr(log)
            .spawn()
            .expect("containerd must be installed (make test installs it)");
        let c = Containerd { dir, child };
        // Start-up readiness: the socket appears once containerd serves.
        let start = Instant::now();
        while !c.dir.path().join("containerd.sock").exists() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "containerd did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    pub fn ctr(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(args);
        run(cmd)
    }

    /// The architecture in the image config that namespace `ns` holds.
    pub fn pulled_arch(&self, ns: &str) -> String {
        let (ok, list, err) = self.ctr(&["-n", ns, "content", "ls", "-q"]);
        assert!(ok, "{err}");
        for digest in list
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("sha256:"))
        {
            let (ok, body, _) = self.ctr(&["-n", ns, "content", "get", digest]);
            if !ok {
                continue;
            }
            if let Ok(v) = serde_json::from_str::<Value>(&body) {
                if let (Some(a), Some(_)) = (v["architecture"].as_str(), v.get("rootfs")) {
                    return match v["variant"].as_str() {
                        Some(var) => format!("{a}/{var}"),
                        None => a.to_string(),
                    };
                }
            }
        }
        panic!("no image config in namespace {ns}: {list}");
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        crate::support::reap(&mut self.child);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_every_platform_through_hosts_toml() {
    let f = fixture().await;
    let hosts = tempfile::tempdir().unwrap();
    let addr = f.archway.host();
    for ns in ["docker.io", "quay.io", "ghcr.io", "_default"] {
        install(
            &format!("containerd/certs.d/{ns}/hosts.toml"),
            &hosts.path().join(ns).join("hosts.toml"),
            &addr,
        );
    }
    let hosts_dir = hosts.path().to_str().unwrap().to_string();
    let c = Containerd::start();
    let image = format!("docker.io/{REPO}:latest");
    for (platform, want) in [
        ("linux/amd64", "amd64"),
        ("linux/arm64", "arm64"),
        ("linux/s390x", "s390x"),
        ("linux/arm/v7", "arm/v7"),
    ] {
        let ns = format!("t-{}", platform.replace('/', "-"));
        let (ok, _, err) = c.ctr(&[
            "-n",
            &ns,
            "images",
            "pull",
            "--hosts-dir",
            &hosts_dir,
            "--platform",
            platform,
            &image,
        ]);
        assert!(ok, "ctr pull {platform}: {err}");
        assert_eq!(c.pulled_arch(&ns), want, "{platform}");
    }
    // containerd resolved through archway (HEAD with ?ns=docker.io), never the real registry.
    let log = f.archway.log_text();
    assert!(
        log.contains("method=HEAD") && log.contains("ns=docker.io"),
        "no ?ns= HEAD seen"
    );
    assert!(f.hub.count("HEAD", &format!("/v2/{REPO}/manifests/latest")) <= 1);

    // ghcr.io has no directory of its own here: containerd uses _default/hosts.toml and sends
    // ?ns=ghcr.io, which archway routes to the upstream that answers for ghcr.io.
    let no_ghcr = tempfile::tempdir().unwrap();
    for ns in ["docker.io", "_default"] {
        install(
            &format!("containerd/certs.d/{ns}/hosts.toml"),
            &no_ghcr.path().join(ns).join("hosts.toml"),
            &addr,
        );
    }
    let (ok, _, err) = c.ctr(&[
        "-n",
        "default-ns",
        "images",
        "pull",
        "--hosts-dir",
        no_ghcr.path().to_str().unwrap(),
        "ghcr.io/org/app:v1",
    ]);
    assert!(ok, "ghcr.io via _default: {err}");
    assert!(f.archway.log_text().contains("ns=ghcr.io"));

    // quay.io through its own hosts.toml.
    let (ok, _, err) = c.ctr(&[
        "-n",
        "quay",
        "images",
        "pull",
        "--hosts-dir",
        &hosts_dir,
        "quay.io/org/app:v1",
    ]);
    assert!(ok, "quay.io: {err}");
    // ghcr.io through its own hosts.toml as well.
    let (ok, _, err) = c.ctr(&[
        "-n",
        "ghcr",
        "images",
        "pull",
        "--hosts-dir",
        &hosts_dir,
        "ghcr.io/org/app:v1",
    ]);
    assert!(ok, "ghcr.io: {err}");
    // One upstream fetch for all three pulls: quay.io and ghcr.io share that upstream's cache.
    assert_eq!(f.quay.count("GET", "/v2/org/app/manifests/v1"), 1);
    let (ok, out, _) = c.ctr(&["-n", "quay", "images", "ls", "-q"]);
    assert!(ok && out.contains("quay.io/org/app:v1"));

    // override_path: the host URL's path is the API root, with the registry in the path.
    let op = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(op.path().join("docker.io")).unwrap();
    std::fs::write(
        op.path().join("docker.io/hosts.toml"),
        format!(
            "server = \"https://registry-1.docker.io\"\n[host.\"http://{addr}/v2/docker.io\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n"
        ),
    )
    .unwrap();
    let (ok, _, err) = c.ctr(&[
        "-n",
        "override",
        "images",
        "pull",
        "--hosts-dir",
        op.path().to_str().unwrap(),
        "--platform",
        "linux/s390x",
        &image,
    ]);
    assert!(ok, "override_path: {err}");
    assert_eq!(c.pulled_arch("override"), "s390x");
    assert!(f
        .archway
        .log_text()
        .contains(&format!("/v2/docker.io/{REPO}/manifests/")));
    let _ = (&f.s390x, &f.quay_img);
}

// === Docker ===

/// dockerd 20.10 (Debian's docker.io) with its own containerd, data root and socket, its
/// `registry-mirrors` taken from deploy/docker/daemon.json.
pub struct Dockerd {
    dir: tempfile::TempDir,
    child: Child,
    _containerd: Containerd,
}

impl Dockerd {
    pub fn start(addr: &str) -> Dockerd {
        let containerd = Containerd::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let deploy_json = std::fs::read_to_string(deploy("docker/daemon.json"))
            .expect("daemon.json")
            .replace(DEPLOY_ADDR, addr);
        let mut cfg: Value = serde_json::from_str(&deploy_json).expect("daemon.json is JSON");
        let sock = d.join("docker.sock");
        for (k, v) in [
            ("data-root", serde_json::json!(d.join("data"))),
            ("exec-root", serde_json::json!(d.join("exec"))),
            ("pidfile", serde_json::json!(d.join("dockerd.pid"))),
            (
                "hosts",
                serde_json::json!([format!("unix://{}", sock.display())]),
            ),
            (
                "containerd",
                serde_json::json!(containerd.dir.path().join("containerd.sock")),
            ),
            ("containerd-namespace", serde_json::json!("moby-test")),
            (
                "containerd-plugins-namespace",
                serde_json::json!("moby-test-plugins"),
            ),
            ("iptables", serde_json::json!(false)),
            ("ip6tables", serde_json::json!(false)),
            ("bridge", serde_json::json!("none")),
            ("storage-driver", serde_json::json!("vfs")),
        ] {
            cfg[k] = v;
        }
        std::fs::write(d.join("daemon.json"), cfg.to_string()).expect("write");
        let log = std::fs::File::create(d.join("dockerd.log")).expect("log");
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .stdout(log.try_clone().expect("fd"))
            .stderr(log)
            .spawn()
            .expect("dockerd must be installed (make test installs docker.io)");
        let dockerd = Dockerd {
            dir,
            child,
            _containerd: containerd,
        };
        let start = Instant::now();
        loop {
            let (ok, _, _) = dockerd.docker(&["version"]);
            if ok {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "dockerd did not start: {}",
                std::fs::read_to_string(dockerd.dir.path().join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        dockerd
    }

    pub fn docker(&self, args: &[&str]) -> (bool, String, String) {
        // Debian's client, matching the daemon (a newer one may be first on PATH). Its own
        // config dir: `docker login` writes credentials there, not into ~/.docker.
        let mut cmd = Command::new("/usr/bin/docker");
        cmd.env(
            "DOCKER_HOST",
            format!("unix://{}", self.dir.path().join("docker.sock").display()),
        )
        .env("DOCKER_CONFIG", self.dir.path().join("client"))
        .args(args);
        run(cmd)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        crate::support::reap(&mut self.child);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pulls_through_registry_mirrors() {
    let f = fixture().await;
    let docker = Dockerd::start(&f.archway.host());
    let image = format!("{REPO}:latest");
    for (platform, want) in [
        ("linux/arm64", "arm64"),
        ("linux/s390x", "s390x"),
        ("linux/amd64", "amd64"),
    ] {
        let (ok, _, err) = docker.docker(&["pull", "-q", "--platform", platform, &image]);
        assert!(ok, "docker pull {platform}: {err}");
        let (ok, arch, err) =
            docker.docker(&["image", "inspect", "--format", "{{.Architecture}}", &image]);
        assert!(ok, "{err}");
        assert_eq!(arch.trim(), want, "{platform}");
        // dockerd keeps manifests in containerd: forget the image so the next pull asks again.
        let _ = docker.docker(&["rmi", "-f", &image]);
    }
    // Docker's mirror sends Docker Hub names without a registry prefix or ?ns=.
    assert!(f
        .archway
        .log_text()
        .contains(&format!("/v2/{REPO}/manifests/")));
}

// === skopeo with registries.conf ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_through_the_registries_conf_mirror() {
    let f = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    let registries = dir.path().join("registries.conf");
    install(
        "containers/registries.conf.d/archway.conf",
        &registries,
        &f.archway.host(),
    );
    let out_dir = dir.path().join("oci");
    let dest = format!("oci:{}:latest", out_dir.display());
    // skopeo 1.9 ignores CONTAINERS_REGISTRIES_CONF: the file is passed explicitly.
    let out = crate::support::skopeo::run(&[
        "--registries-conf",
        registries.to_str().unwrap(),
        "copy",
        "--override-arch",
        "s390x",
        &format!("docker://docker.io/{REPO}:latest"),
        &dest,
    ]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(crate::support::skopeo::copied_arch(&out_dir), "s390x");
    assert!(f
        .archway
        .log_text()
        .contains(&format!("/v2/{REPO}/manifests/latest")));
}

// === podman ===

pub fn podman_env(dir: &Path, registries: &Path) -> Vec<(String, String)> {
    let storage = dir.join("storage.conf");
    std::fs::write(
        &storage,
        format!(
            "[storage]\ndriver = \"vfs\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
            dir.join("run").display(),
            dir.join("root").display()
        ),
    )
    .unwrap();
    let containers = dir.join("containers.conf");
    std::fs::write(
        &containers,
        format!(
            "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nevents_logfile_path = \"{}\"\nruntime = \"runc\"\n[containers]\nnetns = \"host\"\n",
            dir.join("events.log").display()
        ),
    )
    .unwrap();
    vec![
        (
            "CONTAINERS_STORAGE_CONF".into(),
            storage.display().to_string(),
        ),
        ("CONTAINERS_CONF".into(), containers.display().to_string()),
        (
            "CONTAINERS_REGISTRIES_CONF".into(),
            registries.display().to_string(),
        ),
    ]
}

pub fn podman(env: &[(String, String)], args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new("podman");
    cmd.args(args).envs(env.iter().cloned());
    run(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pulls_through_registries_conf_mirrors() {
    let f = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    let registries = dir.path().join("registries.conf");
    install(
        "containers/registries.conf.d/archway.conf",
        &registries,
        &f.archway.host(),
    );
    let env = podman_env(dir.path(), &registries);
    let image = format!("docker.io/{REPO}:latest");
    for (args, want) in [
        (vec!["--arch", "s390x"], "s390x"),
        (vec!["--arch", "arm64"], "arm64"),
        (vec!["--platform", "linux/arm/v7"], "arm"),
    ] {
        let mut a = vec!["pull", "-q"];
        a.extend(&args);
        a.push(&image);
        let (ok, _, err) = podman(&env, &a);
        assert!(ok, "podman pull {args:?}: {err}");
        let (ok, arch, err) = podman(
            &env,
            &["image", "inspect", "--format", "{{.Architecture}}", &image],
        );
        assert!(ok, "{err}");
        assert_eq!(arch.trim(), want, "{args:?}");
        let _ = podman(&env, &["rmi", "-f", &image]);
    }
    // The quay.io mirror has a path: /v2/quay.io/org/app/...
    let (ok, _, err) = podman(&env, &["pull", "-q", "quay.io/org/app:v1"]);
    assert!(ok, "quay.io: {err}");
    assert!(f
        .archway
        .log_text()
        .contains("/v2/quay.io/org/app/manifests/v1"));

    // digest-only mirrors: a pull by digest goes through archway.
    let text = std::fs::read_to_string(&registries).unwrap().replace(
        "insecure = true",
        "insecure = true\npull-from-mirror = \"digest-only\"",
    );
    let digest_only = dir.path().join("digest-only.conf");
    std::fs::write(&digest_only, text).unwrap();
    let env2 = podman_env(dir.path(), &digest_only);
    let by_digest = format!("docker.io/{REPO}@{}", f.s390x.digest);
    let (ok, _, err) = podman(&env2, &["pull", "-q", "--arch", "s390x", &by_digest]);
    assert!(ok, "digest-only pull by digest: {err}");
    let _ = &f.quay_img;
}

// === buildah: the tutorial's workflow ===

fn buildah(env: &[(String, String)], args: &[&str]) -> String {
    let mut cmd = Command::new("buildah");
    cmd.args(args)
        .envs(env.iter().cloned())
        .env("BUILDAH_ISOLATION", "chroot");
    let (ok, out, err) = run(cmd);
    assert!(ok, "buildah {args:?}: {err}");
    out.trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildah_multiarch_workflow_then_every_platform_through_archway() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = podman_env(dir.path(), &dir.path().join("registries.conf"));
    std::fs::write(dir.path().join("registries.conf"), "").unwrap();
    let payload = dir.path().join("hello.txt");
    let repo = format!("{}/tutorial/hello", up.host());
    // Per-architecture images from scratch, as the tutorial builds them.
    for (arch, variant) in [("amd64", ""), ("arm64", "v8"), ("s390x", "")] {
        std::fs::write(&payload, format!("hello from {arch}\n")).unwrap();
        let ctr = buildah(&env, &["from", "scratch"]);
        buildah(
            &env,
            &["copy", &ctr, payload.to_str().unwrap(), "/hello.txt"],
        );
        let mut cfg = vec!["config", "--arch", arch, "--os", "linux"];
        if !variant.is_empty() {
            cfg.extend(["--variant", variant]);
        }
        cfg.push(&ctr);
        buildah(&env, &cfg);
        buildah(
            &env,
            &["commit", "--rm", &ctr, &format!("localhost/hello:{arch}")],
        );
        buildah(
            &env,
            &[
                "push",
                "--tls-verify=false",
                &format!("localhost/hello:{arch}"),
                &format!("docker://{repo}:{arch}-latest"),
            ],
        );
    }
    // The index holds amd64 and arm64 only; s390x stays a per-arch tag.
    buildah(&env, &["manifest", "create", "hello-list"]);
    for arch in ["amd64", "arm64"] {
        buildah(
            &env,
            &[
                "manifest",
                "add",
                "--tls-verify=false",
                "--arch",
                arch,
                "--os",
                "linux",
                "hello-list",
                &format!("docker://{repo}:{arch}-latest"),
            ],
        );
    }
    buildah(
        &env,
        &[
            "manifest",
            "push",
            "--all",
            "--tls-verify=false",
            "hello-list",
            &format!("docker://{repo}:latest"),
        ],
    );

    let aw = Archway::start(&Settings {
        upstreams: vec![UpstreamSpec::new("hub", &up.url(), &["docker.io"], true)],
        extra: r#"
[[fallback]]
repository = "docker.io/tutorial/hello"
[fallback.platforms]
"linux/s390x" = "docker.io/tutorial/hello:s390x-{tag}"
"#
        .into(),
        ..Settings::single(&up.url())
    })
    .await;
    for (arch, want) in [("amd64", "amd64"), ("arm64", "arm64"), ("s390x", "s390x")] {
        let out_dir = dir.path().join(format!("oci-{arch}"));
        let out = crate::support::skopeo::copy_to_oci(
            &format!("{}/tutorial/hello:latest", aw.host()),
            &out_dir,
            &["--override-arch", arch],
        );
        assert!(out.ok, "{arch}: {}", out.stderr);
        let got = crate::support::skopeo::copied_arch(&out_dir);
        assert!(got.starts_with(want), "{arch}: {got}");
    }
}
