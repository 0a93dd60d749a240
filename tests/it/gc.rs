//! The bounded cache: least-recently-used eviction by image, never a layer that a cached
//! image still needs, with `archway gc` and in the background of a serving replica.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::archway::{Archway, Settings};
use crate::support::images::{Image, Pusher};
use crate::support::registry::Upstream;
use crate::support::{metric, random_bytes, skopeo, unique_seed, wait_metric};

/// Digest → size of every content object in a local cache.
fn cached(cache: &Path) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let root = cache.join("blobs");
    let Ok(algs) = std::fs::read_dir(&root) else {
        return out;
    };
    for alg in algs.flatten() {
        for pre in std::fs::read_dir(alg.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            for f in std::fs::read_dir(pre.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = format!(
                    "{}:{}",
                    alg.file_name().to_string_lossy(),
                    f.file_name().to_string_lossy()
                );
                out.insert(name, f.metadata().map(|m| m.len()).unwrap_or(0));
            }
        }
    }
    out
}

fn pull(host: &str, reference: &str) -> skopeo::Output {
    let dir = tempfile::tempdir().unwrap();
    let out = skopeo::copy_to_oci(&format!("{host}/{reference}"), dir.path(), &[]);
    if out.ok {
        assert!(skopeo::verify_oci_layout(dir.path()) > 0);
    }
    out
}

/// Runs `archway gc --config CONFIG ARGS...`: success and output.
pub fn gc(config: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(Archway::bin())
        .arg("gc")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run archway gc");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_evicts_the_least_recently_used_image_and_keeps_shared_layers() {
    let mut up = Upstream::start().await;
    let seed = unique_seed();
    let base = random_bytes(seed, 300_000);
    let a = Image::new(
        "linux/amd64",
        vec![base.clone(), random_bytes(seed + 1, 200_000)],
    );
    let b = Image::new("linux/amd64", vec![base, random_bytes(seed + 2, 200_000)]);
    let c = Image::new("linux/amd64", vec![random_bytes(seed + 3, 200_000)]);
    assert_eq!(
        a.layers[0].digest, b.layers[0].digest,
        "a and b share a base"
    );
    let push = Pusher::new(&up.url(), None);
    push.image("app/a", "v1", &a).await;
    push.image("app/b", "v1", &b).await;
    push.image("app/c", "v1", &c).await;

    let settings = Settings {
        // Bounded (access times are kept), but far above what the test caches.
        storage_extra: "max_size = \"1TiB\"\ngc_min_age = \"0s\"\n".into(),
        ..Settings::single(&up.url())
    };
    let mut aw = Archway::start(&settings).await;
    // b is pulled before c, and a again after both: b is the least recently used.
    for r in ["app/a:v1", "app/b:v1", "app/c:v1", "app/a:v1"] {
        let out = pull(&aw.host(), r);
        assert!(out.ok, "{r}: {}", out.stderr);
    }
    // Shutdown writes out the access times noted in memory.
    assert!(aw.terminate(), "clean shutdown");
    let before = cached(&aw.cache_dir());
    assert_eq!(
        before.len(),
        10,
        "3 manifests, 3 configs, 4 layers: {before:?}"
    );
    let total: u64 = before.values().sum();
    // One byte under: evicting the least recently used image is enough.
    let limit = format!("{}B", total - 1);

    let (ok, out) = gc(&aw.config, &["--dry-run", "--max-size", &limit]);
    assert!(ok, "{out}");
    let evicted: Vec<&str> = out.lines().filter(|l| l.starts_with("evict ")).collect();
    assert_eq!(evicted.len(), 1, "{out}");
    assert!(
        evicted[0].starts_with(&format!("evict up/app/b@{}", b.digest)),
        "{out}"
    );
    assert!(out.contains("would free"), "{out}");
    assert_eq!(cached(&aw.cache_dir()), before, "a dry run deletes nothing");

    let (ok, out) = gc(&aw.config, &["--max-size", &limit]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("evict up/app/b@{}", b.digest)),
        "{out}"
    );
    let after = cached(&aw.cache_dir());
    for gone in [&b.digest, &b.config.digest, &b.layers[1].digest] {
        assert!(!after.contains_key(gone), "{gone} should be gone");
    }
    for kept in a.blobs().iter().chain(c.blobs().iter()) {
        assert!(
            after.contains_key(&kept.digest),
            "{} was evicted",
            kept.digest
        );
    }
    assert!(after.contains_key(&a.digest) && after.contains_key(&c.digest));
    assert!(
        after.contains_key(&b.layers[0].digest),
        "the base layer a still needs stays"
    );
    // Under the limit now: another run has nothing to do.
    let (ok, out) = gc(&aw.config, &["--max-size", &limit]);
    assert!(ok && !out.contains("evict "), "{out}");

    // What stayed is complete: served with the upstream gone. b is no longer cached.
    up.stop();
    let aw = Archway::start_in(aw.stop(), &settings).await;
    for r in ["app/a:v1", "app/c:v1"] {
        let out = pull(&aw.host(), r);
        assert!(out.ok, "{r} offline after gc: {}", out.stderr);
    }
    assert!(!pull(&aw.host(), "app/b:v1").ok, "b was evicted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_without_a_limit_evicts_nothing_and_only_sweeps() {
    let up = Upstream::start().await;
    let aw = Archway::start(&Settings::single(&up.url())).await;
    let (ok, out) = gc(&aw.config, &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("unbounded (sweep only)") && !out.contains("evict "),
        "{out}"
    );
    let (ok, out) = gc(&aw.config, &["--max-size", "plenty"]);
    assert!(!ok);
    assert!(out.contains("--max-size \"plenty\""), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_replica_keeps_the_cache_under_max_size() {
    let mut up = Upstream::start().await;
    let seed = unique_seed();
    let images: Vec<Image> = (0..3)
        .map(|i| Image::new("linux/amd64", vec![random_bytes(seed + i, 1024 * 1024)]))
        .collect();
    let push = Pusher::new(&up.url(), None);
    for (i, img) in images.iter().enumerate() {
        push.image(&format!("app/img{i}"), "v1", img).await;
    }
    let aw = Archway::start(&Settings {
        // Two images fit, three do not. No periodic run: the third pull's writes start one.
        storage_extra: "max_size = \"2600KiB\"\ngc_min_age = \"0s\"\ngc_interval = \"1h\"\n".into(),
        admin: true,
        ..Settings::single(&up.url())
    })
    .await;
    let admin = aw.admin();
    for i in 0..3 {
        let out = pull(&aw.host(), &format!("app/img{i}:v1"));
        assert!(out.ok, "img{i}: {}", out.stderr);
    }
    assert!(
        wait_metric(
            admin,
            "archway_cache_evictions_total{kind=\"manifest\"}",
            1.0,
            Duration::from_secs(30)
        )
        .await,
        "no eviction; log:\n{}",
        aw.log_text()
    );
    let size = metric(admin, "archway_cache_size_bytes").await.unwrap();
    assert!(size <= 2600.0 * 1024.0, "cache_size_bytes {size}");
    assert!(
        metric(admin, "archway_cache_evicted_bytes_total")
            .await
            .unwrap()
            >= 1024.0 * 1024.0
    );
    let on_disk = cached(&aw.cache_dir());
    assert!(on_disk.values().sum::<u64>() <= 2600 * 1024);
    assert!(
        !on_disk.contains_key(&images[0].layers[0].digest),
        "img0 is the oldest"
    );
    for img in &images[1..] {
        assert!(on_disk.contains_key(&img.layers[0].digest));
    }
    assert!(aw.log_text().contains("gc: cache trimmed"));

    // The same replica forgot what it evicted: img0 needs the upstream again, the rest not.
    up.stop();
    for i in 1..3 {
        let out = pull(&aw.host(), &format!("app/img{i}:v1"));
        assert!(out.ok, "img{i} offline: {}", out.stderr);
    }
    assert!(!pull(&aw.host(), "app/img0:v1").ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_manifest_stays_linked_while_its_index_is_cached() {
    let mut up = Upstream::start().await;
    let seed = unique_seed();
    let amd64 = Image::new("linux/amd64", vec![random_bytes(seed, 100_000)]);
    let arm64 = Image::new("linux/arm64", vec![random_bytes(seed + 1, 100_000)]);
    let filler = Image::new("linux/amd64", vec![random_bytes(seed + 2, 300_000)]);
    let push = Pusher::new(&up.url(), None);
    push.index(
        "app/multi",
        "latest",
        &[("linux/amd64", &amd64), ("linux/arm64", &arm64)],
    )
    .await;
    push.image("app/filler", "v1", &filler).await;
    let settings = Settings {
        // Bounded (access times are kept), but far above what the test caches.
        storage_extra: "max_size = \"1TiB\"\ngc_min_age = \"0s\"\n".into(),
        ..Settings::single(&up.url())
    };
    let mut aw = Archway::start(&settings).await;
    let pull_arch = |aw: &Archway, arch: &str| {
        let dir = tempfile::tempdir().unwrap();
        let out = skopeo::copy_to_oci(
            &format!("{}/app/multi:latest", aw.host()),
            dir.path(),
            &["--override-arch", arch],
        );
        assert!(out.ok, "{arch}: {}", out.stderr);
        assert_eq!(skopeo::copied_arch(dir.path()), arch);
    };
    // The arm64 manifest's own last use is the oldest of all; the index is used last.
    pull_arch(&aw, "arm64");
    assert!(pull(&aw.host(), "app/filler:v1").ok);
    pull_arch(&aw, "amd64");
    assert!(aw.terminate());

    let before = cached(&aw.cache_dir());
    let total: u64 = before.values().sum();
    let filler_bytes: u64 = std::iter::once(&filler.digest)
        .chain(filler.blobs().iter().map(|b| &b.digest))
        .map(|d| before[d])
        .sum();
    let (ok, out) = gc(
        &aw.config,
        &["--max-size", &format!("{}B", total - filler_bytes)],
    );
    assert!(ok, "{out}");
    let evicted: Vec<&str> = out.lines().filter(|l| l.starts_with("evict ")).collect();
    assert_eq!(evicted.len(), 1, "only the filler image goes: {out}");
    assert!(evicted[0].contains("up/app/filler@"), "{out}");

    // With the upstream gone, the index still leads to a complete arm64 image.
    up.stop();
    let aw = Archway::start_in(aw.stop(), &settings).await;
    pull_arch(&aw, "arm64");
    pull_arch(&aw, "amd64");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_replica_repairs_what_a_collection_removed_under_it() {
    let mut up = Upstream::start().await;
    let img = Image::new("linux/amd64", vec![random_bytes(unique_seed(), 200_000)]);
    Pusher::new(&up.url(), None)
        .image("app/busy", "v1", &img)
        .await;
    let settings = Settings {
        // Every pull revalidates the tag, so the replica keeps serving it from memory.
        tag_ttl: "0s".into(),
        storage_extra: "max_size = \"1TiB\"\ngc_min_age = \"0s\"\n".into(),
        ..Settings::single(&up.url())
    };
    let aw = Archway::start(&settings).await;
    assert!(pull(&aw.host(), "app/busy:v1").ok);

    // Another process (a cron job, another replica) empties the cache under it.
    let (ok, out) = gc(&aw.config, &["--max-size", "1B"]);
    assert!(ok && out.contains("evict up/app/busy@"), "{out}");
    assert!(cached(&aw.cache_dir()).is_empty());

    // The replica still serves the image (its memory, the upstream for the blobs) and puts
    // back everything the store needs to serve it alone.
    let out = pull(&aw.host(), "app/busy:v1");
    assert!(out.ok, "{}", out.stderr);
    up.stop();
    let aw = Archway::start_in(aw.stop(), &settings).await;
    let out = pull(&aw.host(), "app/busy:v1");
    assert!(out.ok, "offline after repair: {}", out.stderr);
}
