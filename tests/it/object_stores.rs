//! The cache in real object stores shared by replicas: S3 (moto) and Azure Blob Storage
//! (Azurite). Every scenario runs against both.

use serde_json::Value;

use crate::support::archway::{Archway, Settings};
use crate::support::azure::Azurite;
use crate::support::images::{Image, Pusher, OCI_INDEX, OCI_MANIFEST};
use crate::support::registry::Upstream;
use crate::support::s3::S3;
use crate::support::{http, random_bytes, skopeo, unique_seed};

/// A real object store server holding one bucket (or container) named `mirror`.
enum Backend {
    S3(S3),
    Azure(Azurite),
}

impl Backend {
    async fn s3() -> Backend {
        Backend::S3(S3::start("mirror").await)
    }

    async fn azure() -> Backend {
        Backend::Azure(Azurite::start("mirror").await)
    }

    /// Settings whose cache is under `cache/` in the bucket.
    fn settings(&self, up_url: &str) -> Settings {
        let (url, toml) = match self {
            Backend::S3(s) => ("s3://mirror/cache", s.storage_toml()),
            Backend::Azure(a) => ("az://mirror/cache", a.storage_toml()),
        };
        Settings {
            storage_url: Some(url.into()),
            extra: toml,
            ..Settings::single(up_url)
        }
    }

    async fn keys(&self, prefix: &str) -> Vec<String> {
        match self {
            Backend::S3(s) => s.keys("mirror", prefix).await,
            Backend::Azure(a) => a.keys("mirror", prefix).await,
        }
    }

    /// Uploads the store holds but does not show: S3 multipart uploads never completed or
    /// aborted, Azure blobs with staged blocks only.
    async fn leftovers(&self) -> Vec<String> {
        match self {
            Backend::S3(s) => s.pending_uploads("mirror").await,
            Backend::Azure(a) => a.uncommitted("mirror").await,
        }
    }

    /// Settings with no `[storage.s3]`/`[storage.azure]` table: the credentials and the
    /// endpoint come from the environment, as in a Kubernetes pod.
    fn settings_from_env(&self, up_url: &str) -> Settings {
        let (url, env) = match self {
            Backend::S3(s) => ("s3://mirror/cache", s.env()),
            Backend::Azure(a) => ("az://mirror/cache", a.env()),
        };
        Settings {
            storage_url: Some(url.into()),
            env,
            ..Settings::single(up_url)
        }
    }

    fn stop(self) {
        drop(self)
    }
}

fn blob_key(digest: &str) -> String {
    let hex = digest.trim_start_matches("sha256:");
    format!("cache/blobs/sha256/{}/{hex}", &hex[..2])
}

const FALLBACK: &str = r#"
[[fallback]]
repository = "upstream.test/multi/app"
[fallback.platforms]
"linux/s390x" = "upstream.test/multi/app:s390x-{tag}"
"#;

async fn index_digest(aw: &Archway) -> (String, Vec<String>) {
    let r = http()
        .get(format!("{}/v2/multi/app/manifests/latest", aw.url()))
        .header("accept", format!("{OCI_INDEX}, {OCI_MANIFEST}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let digest = r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string();
    let index: Value = r.json().await.unwrap();
    let archs = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap().to_string())
        .collect();
    (digest, archs)
}

async fn replicas_share_the_cache(store: Backend) {
    let mut up = Upstream::start().await;
    let seed = unique_seed();
    // 12 MiB: a multipart upload of two parts.
    let img = Image::new(
        "linux/amd64",
        vec![
            random_bytes(seed, 12 * 1024 * 1024),
            random_bytes(seed + 1, 1000),
        ],
    );
    let push = Pusher::new(&up.url(), None);
    push.image("shared/app", "v1", &img).await;
    let arch = |p: &str, s: u64| Image::new(p, vec![random_bytes(seed + s, 5000)]);
    let s390x = arch("linux/s390x", 4);
    push.index(
        "multi/app",
        "latest",
        &[
            ("linux/amd64", &arch("linux/amd64", 2)),
            ("linux/arm64", &arch("linux/arm64", 3)),
        ],
    )
    .await;
    push.image("multi/app", "s390x-latest", &s390x).await;

    let mut settings = store.settings(&up.url());
    settings.extra.push_str(FALLBACK);
    settings.storage_extra = "gc_min_age = \"0s\"\n".into();
    let one = Archway::start(&settings).await;
    let two = Archway::start(&settings).await;

    let dir = tempfile::tempdir().unwrap();
    let out = skopeo::copy_to_oci(&format!("{}/shared/app:v1", one.host()), dir.path(), &[]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(skopeo::verify_oci_layout(dir.path()), 4);
    let keys = store.keys("cache/blobs/").await;
    for d in std::iter::once(&img.digest).chain(img.blobs().iter().map(|b| &b.digest)) {
        assert!(
            keys.contains(&blob_key(d)),
            "{d} not in the bucket: {keys:?}"
        );
    }
    let (synthesized, archs) = index_digest(&one).await;
    assert_eq!(archs, ["amd64", "arm64", "s390x"]);
    let s390x_pull = |aw: &Archway| {
        let dir = tempfile::tempdir().unwrap();
        let out = skopeo::copy_to_oci(
            &format!("{}/multi/app:latest", aw.host()),
            dir.path(),
            &["--override-arch", "s390x"],
        );
        assert!(out.ok, "{}", out.stderr);
        assert_eq!(skopeo::copied_arch(dir.path()), "s390x");
    };
    s390x_pull(&one);

    // Replica two never saw any of it, and the upstream is gone.
    up.stop();
    for src in [
        format!("{}/shared/app:v1", two.host()),
        format!("{}/shared/app@{}", two.host(), img.digest),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = skopeo::copy_to_oci(&src, dir.path(), &[]);
        assert!(out.ok, "{src}: {}", out.stderr);
        assert_eq!(skopeo::verify_oci_layout(dir.path()), 4);
    }
    assert_eq!(
        index_digest(&two).await.0,
        synthesized,
        "the same synthesized index on both replicas"
    );
    // The fallback image, pulled once through replica one, comes from the bucket.
    s390x_pull(&two);

    // Collection works on the bucket too: down to nothing, every record that named what
    // went goes with it.
    let (ok, out) = crate::gc::gc(&two.config, &["--max-size", "1B"]);
    assert!(ok, "{out}");
    assert!(out.contains("evict up/multi/app@"), "{out}");
    assert_eq!(store.keys("cache/blobs/").await, Vec::<String>::new());
    assert_eq!(
        store.keys("cache/repositories/").await,
        Vec::<String>::new()
    );
    store.stop();
}

async fn an_upload_cut_midway_leaves_nothing(store: Backend) {
    // 20 MiB, cut after 9, once the first 8 MiB part is in the store (S3: an upload begun;
    // Azure: a staged block): there is something to clean up.
    let data = random_bytes(unique_seed(), 20 * 1024 * 1024);
    let digest = crate::support::images::sha256(&data);
    let up = crate::support::fake::gated_cut_server(data.clone(), 9 * 1024 * 1024).await;
    let mut settings = store.settings(&up.raw.url());
    settings.admin = true;
    let aw = Archway::start(&settings).await;
    let url = format!("{}/v2/cut/app/blobs/{digest}", aw.url());
    let len = data.len();
    let transfer = tokio::spawn(async move { crate::support::broken_transfer(&url, len).await });
    let start = std::time::Instant::now();
    while store.leftovers().await.is_empty() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "no part reached the store"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    up.open();
    let received = transfer.await.unwrap();
    assert!(received <= 9 * 1024 * 1024, "{received}");
    assert!(
        crate::support::wait_metric(
            aw.admin(),
            "archway_fill_failures_total{reason=\"upstream\"}",
            1.0,
            std::time::Duration::from_secs(20)
        )
        .await
    );
    // The first request and `retries` (3) more, each cut at the gate.
    assert_eq!(up.raw.requests(), 4);
    assert_eq!(store.keys("cache/").await, Vec::<String>::new());
    // Nor anything the store keeps out of sight: an upload that was never completed.
    assert_eq!(
        store.leftovers().await,
        Vec::<String>::new(),
        "staged parts left behind"
    );
}

async fn readyz_follows_the_store(store: Backend) {
    let up = Upstream::start().await;
    let mut settings = store.settings(&up.url());
    settings.admin = true;
    let aw = Archway::start(&settings).await;
    let admin = aw.admin();
    let readyz = format!("http://127.0.0.1:{admin}/readyz");
    assert_eq!(http().get(&readyz).send().await.unwrap().status(), 200);
    store.stop();
    assert_eq!(http().get(&readyz).send().await.unwrap().status(), 503);
    let healthz = format!("http://127.0.0.1:{admin}/healthz");
    assert_eq!(
        http().get(&healthz).send().await.unwrap().status(),
        200,
        "alive all the same"
    );
    drop(aw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_replicas_share_the_cache() {
    replicas_share_the_cache(Backend::s3().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_replicas_share_the_cache() {
    replicas_share_the_cache(Backend::azure().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_upload_cut_midway_leaves_nothing() {
    an_upload_cut_midway_leaves_nothing(Backend::s3().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_upload_cut_midway_leaves_nothing() {
    an_upload_cut_midway_leaves_nothing(Backend::azure().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_readyz_follows_the_store() {
    readyz_follows_the_store(Backend::s3().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_readyz_follows_the_store() {
    readyz_follows_the_store(Backend::azure().await).await;
}

async fn settings_come_from_the_environment(store: Backend) {
    let up = Upstream::start().await;
    let img = Image::new("linux/amd64", vec![random_bytes(unique_seed(), 5000)]);
    Pusher::new(&up.url(), None)
        .image("env/app", "v1", &img)
        .await;
    let settings = store.settings_from_env(&up.url());
    assert!(
        !crate::support::archway::render(&settings, std::path::Path::new("/x"))
            .contains("[storage.")
    );
    let aw = Archway::start(&settings).await;
    let dir = tempfile::tempdir().unwrap();
    let out = skopeo::copy_to_oci(&format!("{}/env/app:v1", aw.host()), dir.path(), &[]);
    assert!(out.ok, "{}", out.stderr);
    let keys = store.keys("cache/blobs/").await;
    assert!(keys.contains(&blob_key(&img.digest)), "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_settings_come_from_the_environment() {
    settings_come_from_the_environment(Backend::s3().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_settings_come_from_the_environment() {
    settings_come_from_the_environment(Backend::azure().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_replica_collects_every_gc_interval() {
    let store = Backend::s3().await;
    let up = Upstream::start().await;
    let mut settings = store.settings(&up.url());
    settings.admin = true;
    settings.storage_extra =
        "max_size = \"1TiB\"\ngc_min_age = \"0s\"\ngc_interval = \"1s\"\n".into();
    let aw = Archway::start(&settings).await;
    // Nothing is written: only the interval can start runs after the first one at start-up.
    assert!(
        crate::support::wait_metric(
            aw.admin(),
            "archway_gc_runs_total{outcome=\"ok\"}",
            3.0,
            std::time::Duration::from_secs(30)
        )
        .await,
        "{}",
        aw.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_access_times_meet_in_the_bucket() {
    let store = Backend::s3().await;
    let up = Upstream::start().await;
    let seed = unique_seed();
    let x = Image::new("linux/amd64", vec![random_bytes(seed, 100_000)]);
    let y = Image::new("linux/amd64", vec![random_bytes(seed + 1, 100_000)]);
    let push = Pusher::new(&up.url(), None);
    push.image("lru/x", "v1", &x).await;
    push.image("lru/y", "v1", &y).await;
    let mut settings = store.settings(&up.url());
    settings.storage_extra = "max_size = \"1TiB\"\ngc_min_age = \"0s\"\n".into();
    let mut a = Archway::start(&settings).await;
    let mut b = Archway::start(&settings).await;
    let pull = |aw: &Archway, r: &str| {
        let dir = tempfile::tempdir().unwrap();
        let out = skopeo::copy_to_oci(&format!("{}/{r}", aw.host()), dir.path(), &[]);
        assert!(out.ok, "{r}: {}", out.stderr);
    };
    // Replica a alone would say x is the least recently used; b used it last.
    pull(&a, "lru/x:v1");
    pull(&a, "lru/y:v1");
    pull(&b, "lru/x:v1");
    assert!(
        a.terminate() && b.terminate(),
        "clean shutdowns, which write the access times"
    );
    let journals = store.keys("cache/access/").await;
    assert_eq!(journals.len(), 2, "one journal per replica: {journals:?}");
    let Backend::S3(s3) = &store else {
        unreachable!()
    };
    let total = s3.total_size("mirror", "cache/blobs/").await;
    let (ok, out) = crate::gc::gc(&a.config, &["--max-size", &format!("{}B", total - 1)]);
    assert!(ok, "{out}");
    let evicted: Vec<&str> = out.lines().filter(|l| l.starts_with("evict ")).collect();
    assert_eq!(evicted.len(), 1, "{out}");
    assert!(
        evicted[0].starts_with(&format!("evict up/lru/y@{}", y.digest)),
        "both replicas' journals count: {out}"
    );
}
