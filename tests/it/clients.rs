//! Real cluster clients pulling multi-arch images through archway, configured with the very
//! files in `deploy/` (only the address substituted): containerd (`ctr` with a private
//! daemon, `hosts.toml`), dockerd (`registry-mirrors`), podman, skopeo and buildah
//! (`registries.conf` mirrors).
//!
//! Each pull is checked for the exact digest archway served (what the test pushed, or the
//! index archway synthesized: random bytes no real registry has), and the clients' outside
//! traffic goes to a proxy that refuses it and remembers it, so a pull that fell back to the
//! real registry of a deploy file (Docker Hub, quay.io, ghcr.io) fails the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::archway::{Archway, Settings, UpstreamSpec};
use crate::support::fake::Proxy;
use crate::support::images::{Image, Pusher, OCI_INDEX};
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
    amd64: Image,
    arm64: Image,
    s390x: Image,
    armv7: Image,
    quay_img: Image,
    archway: Archway,
    /// Where the clients' traffic to anything but loopback goes.
    proxy: Proxy,
}

impl Fixture {
    /// The image the test pushed for `platform`.
    fn image(&self, platform: &str) -> &Image {
        match platform {
            "linux/amd64" => &self.amd64,
            "linux/arm64" => &self.arm64,
            "linux/s390x" => &self.s390x,
            "linux/arm/v7" => &self.armv7,
            p => panic!("no image for {p}"),
        }
    }

    /// The index archway serves for `docker.io/REPO:latest` (synthesized: it adds s390x and
    /// arm/v7), asked for directly.
    async fn index_digest(&self) -> String {
        let r = crate::support::http()
            .get(format!("{}/v2/{REPO}/manifests/latest", self.archway.url()))
            .header("accept", OCI_INDEX)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let d = r.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_string();
        let index: Value = r.json().await.unwrap();
        let archs: Vec<&str> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["platform"]["architecture"].as_str())
            .collect();
        assert_eq!(
            archs,
            ["amd64", "arm64", "s390x", "arm"],
            "the synthesized index"
        );
        d
    }

    /// Every client request that tried to leave the machine: none may.
    fn assert_no_outside_traffic(&self) {
        assert_eq!(
            self.proxy.seen(),
            Vec::<String>::new(),
            "a client went to a real registry instead of archway"
        );
    }

    /// That archway answered `METHOD path` with 200 (its access log).
    fn assert_served(&self, method: &str, path: &str) {
        let log = self.archway.log_text();
        let access: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("archway::access"))
            .collect();
        assert!(
            access
                .iter()
                .any(|l| l.contains(&format!("method={method} "))
                    && l.contains(&format!("path={path} "))
                    && l.contains("status=200")),
            "archway did not serve {method} {path}:\n{}",
            access.join("\n")
        );
    }
}

async fn fixture() -> Fixture {
    let hub = Upstream::start().await;
    let quay = Upstream::start().await;
    let push = Pusher::new(&hub.url(), None);
    let (amd64, arm64) = (image("linux/amd64"), image("linux/arm64"));
    push.index(
        REPO,
        "latest",
        &[("linux/amd64", &amd64), ("linux/arm64", &arm64)],
    )
    .await;
    let s390x = image("linux/s390x");
    push.image(REPO, "s390x-latest", &s390x).await;
    let armv7 = image("linux/arm/v7");
    push.image("arm32v7/go-hello-world", "latest", &armv7).await;
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
        amd64,
        arm64,
        s390x,
        armv7,
        quay_img,
        archway,
        proxy: Proxy::start().await,
    }
}

// === containerd ===

pub struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
    /// For `ctr`, which fetches in its own process.
    env: Vec<(String, String)>,
}

impl Containerd {
    pub fn start() -> Containerd {
        Containerd::start_with(Vec::new())
    }

    /// A daemon, and `ctr` calls, with `env` (a proxy).
    pub fn start_with(env: Vec<(String, String)>) -> Containerd {
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
            .envs(env.iter().cloned())
            .stdout(log.try_clone().expect("fd"))
            .stderr(log)
            .spawn()
            .expect("containerd must be installed (make test installs it)");
        let c = Containerd { dir, child, env };
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
            .args(args)
            .envs(self.env.iter().cloned());
        run(cmd)
    }

    /// The digest namespace `ns` records for image `name` (what the tag resolved to).
    pub fn image_digest(&self, ns: &str, name: &str) -> String {
        let (ok, out, err) = self.ctr(&["-n", ns, "images", "ls"]);
        assert!(ok, "{err}");
        out.lines()
            .find_map(|l| {
                let mut cols = l.split_whitespace();
                (cols.next() == Some(name)).then(|| {
                    cols.find(|c| c.starts_with("sha256:"))
                        .unwrap_or_default()
                        .to_string()
                })
            })
            .unwrap_or_else(|| panic!("no image {name} in namespace {ns}: {out}"))
    }

    /// Whether namespace `ns` holds content `digest`.
    pub fn has_content(&self, ns: &str, digest: &str) -> bool {
        let (ok, out, err) = self.ctr(&["-n", ns, "content", "ls", "-q"]);
        assert!(ok, "{err}");
        out.lines().any(|l| l.trim() == digest)
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
    let c = Containerd::start_with(f.proxy.env());
    let image = format!("docker.io/{REPO}:latest");
    let index = f.index_digest().await;
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
        // The tag resolved to archway's synthesized index, and the platform's manifest and
        // config are the very ones the test pushed.
        assert_eq!(c.image_digest(&ns, &image), index, "{platform}");
        let pushed = f.image(platform);
        assert!(c.has_content(&ns, &pushed.digest), "{platform}: manifest");
        assert!(
            c.has_content(&ns, &pushed.config.digest),
            "{platform}: config"
        );
        assert_eq!(c.pulled_arch(&ns), want, "{platform}");
        f.assert_served(
            "GET",
            &format!("/v2/{REPO}/manifests/{}?ns=docker.io", pushed.digest),
        );
    }
    // containerd resolved the tag through archway (HEAD with ?ns=docker.io).
    f.assert_served("HEAD", &format!("/v2/{REPO}/manifests/latest?ns=docker.io"));
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
    assert_eq!(
        c.image_digest("default-ns", "ghcr.io/org/app:v1"),
        f.quay_img.digest
    );
    f.assert_served("HEAD", "/v2/org/app/manifests/v1?ns=ghcr.io");

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
    assert_eq!(
        c.image_digest("quay", "quay.io/org/app:v1"),
        f.quay_img.digest
    );
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
    assert_eq!(
        c.image_digest("ghcr", "ghcr.io/org/app:v1"),
        f.quay_img.digest
    );
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
    assert_eq!(c.image_digest("override", &image), index);
    assert!(c.has_content("override", &f.s390x.digest));
    assert_eq!(c.pulled_arch("override"), "s390x");
    f.assert_served(
        "GET",
        &format!(
            "/v2/docker.io/{REPO}/manifests/{}?ns=docker.io",
            f.s390x.digest
        ),
    );
    f.assert_no_outside_traffic();
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
        Dockerd::start_with(addr, Vec::new())
    }

    /// A daemon (and its containerd) with `env` (a proxy): dockerd pulls in its own process.
    pub fn start_with(addr: &str, env: Vec<(String, String)>) -> Dockerd {
        let containerd = Containerd::start_with(env.clone());
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
            .envs(env)
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
    let docker = Dockerd::start_with(&f.archway.host(), f.proxy.env());
    let image = format!("{REPO}:latest");
    for (platform, want) in [
        ("linux/arm64", "arm64"),
        ("linux/s390x", "s390x"),
        ("linux/amd64", "amd64"),
    ] {
        let (ok, _, err) = docker.docker(&["pull", "-q", "--platform", platform, &image]);
        assert!(ok, "docker pull {platform}: {err}");
        let (ok, out, err) = docker.docker(&[
            "image",
            "inspect",
            "--format",
            "{{.Id}} {{.Architecture}}",
            &image,
        ]);
        assert!(ok, "{err}");
        // The image id is the digest of its config: the very one the test pushed.
        let pushed = f.image(platform);
        assert_eq!(
            out.trim(),
            format!("{} {want}", pushed.config.digest),
            "{platform}"
        );
        // Docker's mirror sends Docker Hub names without a registry prefix or ?ns=.
        f.assert_served("GET", &format!("/v2/{REPO}/manifests/{}", pushed.digest));
        // dockerd keeps manifests in containerd: forget the image so the next pull asks again.
        let _ = docker.docker(&["rmi", "-f", &image]);
    }
    f.assert_no_outside_traffic();
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
    let out = crate::support::skopeo::run_env(
        &[
            "--registries-conf",
            registries.to_str().unwrap(),
            "copy",
            "--override-arch",
            "s390x",
            &format!("docker://docker.io/{REPO}:latest"),
            &dest,
        ],
        &f.proxy.env(),
    );
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        crate::support::skopeo::copied_manifest(&out_dir),
        f.s390x.digest
    );
    assert_eq!(crate::support::skopeo::copied_arch(&out_dir), "s390x");
    f.assert_served("GET", &format!("/v2/{REPO}/manifests/latest"));
    f.assert_served("GET", &format!("/v2/{REPO}/manifests/{}", f.s390x.digest));
    f.assert_no_outside_traffic();
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
    let mut env = podman_env(dir.path(), &registries);
    env.extend(f.proxy.env());
    let image = format!("docker.io/{REPO}:latest");
    // podman's image id is the hex of the config digest.
    let id = |img: &Image| img.config.digest.trim_start_matches("sha256:").to_string();
    let inspect = |env: &[(String, String)], image: &str| {
        let (ok, out, err) = podman(
            env,
            &[
                "image",
                "inspect",
                "--format",
                "{{.Id}} {{.Architecture}}",
                image,
            ],
        );
        assert!(ok, "{err}");
        out.trim().to_string()
    };
    for (args, platform, want) in [
        (vec!["--arch", "s390x"], "linux/s390x", "s390x"),
        (vec!["--arch", "arm64"], "linux/arm64", "arm64"),
        (vec!["--platform", "linux/arm/v7"], "linux/arm/v7", "arm"),
    ] {
        let mut a = vec!["pull", "-q"];
        a.extend(&args);
        a.push(&image);
        let (ok, _, err) = podman(&env, &a);
        assert!(ok, "podman pull {args:?}: {err}");
        let pushed = f.image(platform);
        assert_eq!(
            inspect(&env, &image),
            format!("{} {want}", id(pushed)),
            "{args:?}"
        );
        f.assert_served("GET", &format!("/v2/{REPO}/manifests/{}", pushed.digest));
        let _ = podman(&env, &["rmi", "-f", &image]);
    }
    // The quay.io mirror has a path: /v2/quay.io/org/app/...
    let (ok, _, err) = podman(&env, &["pull", "-q", "quay.io/org/app:v1"]);
    assert!(ok, "quay.io: {err}");
    assert_eq!(
        inspect(&env, "quay.io/org/app:v1"),
        format!("{} amd64", id(&f.quay_img))
    );
    f.assert_served("GET", "/v2/quay.io/org/app/manifests/v1");

    // digest-only mirrors: a pull by digest goes through archway.
    let text = std::fs::read_to_string(&registries).unwrap().replace(
        "insecure = true",
        "insecure = true\npull-from-mirror = \"digest-only\"",
    );
    let digest_only = dir.path().join("digest-only.conf");
    std::fs::write(&digest_only, text).unwrap();
    let mut env2 = podman_env(dir.path(), &digest_only);
    env2.extend(f.proxy.env());
    let by_digest = format!("docker.io/{REPO}@{}", f.s390x.digest);
    let (ok, _, err) = podman(&env2, &["pull", "-q", "--arch", "s390x", &by_digest]);
    assert!(ok, "digest-only pull by digest: {err}");
    assert_eq!(
        inspect(&env2, &by_digest),
        format!("{} s390x", id(&f.s390x))
    );
    f.assert_no_outside_traffic();
}

// === buildah: the tutorial's workflow ===

pub fn buildah(env: &[(String, String)], args: &[&str]) -> String {
    let mut cmd = Command::new("buildah");
    cmd.args(args)
        .envs(env.iter().cloned())
        .env("BUILDAH_ISOLATION", "chroot");
    let (ok, out, err) = run(cmd);
    assert!(ok, "buildah {args:?}: {err}");
    out.trim().to_string()
}

/// The tutorial's per-architecture images, built from scratch with buildah (amd64, arm64/v8,
/// s390x) and each pushed to `dest(arch)` with `push_args` more; the digest of each as
/// pushed.
pub fn build_per_arch(
    env: &[(String, String)],
    dir: &Path,
    push_args: &[&str],
    dest: impl Fn(&str) -> String,
) -> std::collections::HashMap<&'static str, String> {
    let payload = dir.join("hello.txt");
    let mut pushed = std::collections::HashMap::new();
    for (arch, variant) in [("amd64", ""), ("arm64", "v8"), ("s390x", "")] {
        std::fs::write(&payload, format!("hello from {arch}\n")).unwrap();
        let ctr = buildah(env, &["from", "scratch"]);
        buildah(
            env,
            &["copy", &ctr, payload.to_str().unwrap(), "/hello.txt"],
        );
        let mut cfg = vec!["config", "--arch", arch, "--os", "linux"];
        if !variant.is_empty() {
            cfg.extend(["--variant", variant]);
        }
        cfg.push(&ctr);
        buildah(env, &cfg);
        buildah(
            env,
            &["commit", "--rm", &ctr, &format!("localhost/hello:{arch}")],
        );
        let digest_file = dir.join(format!("{arch}.digest"));
        let (image, target) = (format!("localhost/hello:{arch}"), dest(arch));
        let mut push = vec!["push", "--tls-verify=false"];
        push.extend_from_slice(push_args);
        push.extend([
            "--digestfile",
            digest_file.to_str().unwrap(),
            &image,
            &target,
        ]);
        buildah(env, &push);
        let digest = std::fs::read_to_string(&digest_file).unwrap();
        pushed.insert(arch, digest.trim().to_string());
    }
    pushed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildah_multiarch_workflow_then_every_platform_through_archway() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = podman_env(dir.path(), &dir.path().join("registries.conf"));
    std::fs::write(dir.path().join("registries.conf"), "").unwrap();
    let repo = format!("{}/tutorial/hello", up.host());
    let pushed = build_per_arch(&env, dir.path(), &[], |arch| {
        format!("docker://{repo}:{arch}-latest")
    });
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
        assert_eq!(
            crate::support::skopeo::copied_manifest(&out_dir),
            pushed[arch],
            "{arch}: the image buildah pushed"
        );
        let got = crate::support::skopeo::copied_arch(&out_dir);
        assert!(got.starts_with(want), "{arch}: {got}");
    }
}
