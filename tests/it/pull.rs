//! Pulling through archway with skopeo: cold, warm, by digest, ranges, restarts, and the
//! per-repository blob rule.

use crate::support::archway::{Archway, Settings};
use crate::support::images::{Image, Pusher};
use crate::support::registry::{Options, Upstream};
use crate::support::{http, oci_error, random_bytes, skopeo, unique_seed};

async fn seeded_image(up: &Upstream, repo: &str, tag: &str) -> Image {
    let seed = unique_seed();
    let img = Image::new(
        "linux/amd64",
        vec![
            random_bytes(seed, 300_000),
            random_bytes(seed + 1, 2_500_000),
            random_bytes(seed + 2, 10),
        ],
    );
    Pusher::new(&up.url(), up.creds.clone())
        .image(repo, tag, &img)
        .await;
    img
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_then_warm_pull_with_every_digest_verified() {
    let mut up = Upstream::start().await;
    let img = seeded_image(&up, "team/app", "v1").await;
    let aw = Archway::start(&Settings::single(&up.url())).await;

    let cold = tempfile::tempdir().unwrap();
    let out = skopeo::copy_to_oci(&format!("{}/team/app:v1", aw.host()), cold.path(), &[]);
    assert!(out.ok, "cold pull failed: {}", out.stderr);
    assert_eq!(skopeo::verify_oci_layout(cold.path()), 5); // manifest, config, 3 layers
    for b in img.blobs() {
        assert!(
            skopeo::layout_has(cold.path(), &b.digest),
            "{} missing from {:?}",
            b.digest,
            std::fs::read_dir(cold.path().join("blobs/sha256"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect::<Vec<_>>()
        );
        assert_eq!(
            up.blob_gets("team/app", &b.digest),
            1,
            "one upstream GET per blob"
        );
    }
    assert!(skopeo::layout_has(cold.path(), &img.digest));

    // Warm: the upstream is gone, everything comes from the cache.
    up.stop();
    let warm = tempfile::tempdir().unwrap();
    let out = skopeo::copy_to_oci(&format!("{}/team/app:v1", aw.host()), warm.path(), &[]);
    assert!(
        out.ok,
        "warm pull failed with the upstream down: {}",
        out.stderr
    );
    assert_eq!(skopeo::verify_oci_layout(warm.path()), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_by_digest_is_served_from_cache_without_upstream() {
    let mut up = Upstream::start().await;
    let img = seeded_image(&up, "app", "v1").await;
    let aw = Archway::start(&Settings::single(&up.url())).await;
    let dir = tempfile::tempdir().unwrap();
    let by_digest = format!("{}/app@{}", aw.host(), img.digest);
    let out = skopeo::copy_to_oci(&by_digest, dir.path(), &[]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        up.count("GET", &format!("/v2/app/manifests/{}", img.digest)),
        1
    );

    up.stop();
    let r = http()
        .get(format!("{}/v2/app/manifests/{}", aw.url(), img.digest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], img.digest.as_str());
    assert_eq!(r.headers()["content-type"], img.media_type);
    assert_eq!(
        r.bytes().await.unwrap(),
        img.manifest,
        "bytes exactly as upstream sent them"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_and_blob_headers_and_ranges() {
    let up = Upstream::start().await;
    let img = seeded_image(&up, "ranged", "v1").await;
    let aw = Archway::start(&Settings::single(&up.url())).await;
    let c = http();
    let layer = &img.layers[1];
    let url = format!("{}/v2/ranged/blobs/{}", aw.url(), layer.digest);

    // HEAD of a manifest carries what containerd needs to resolve a tag.
    let r = c
        .head(format!("{}/v2/ranged/manifests/v1", aw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], img.digest.as_str());
    assert_eq!(
        r.headers()["content-length"],
        img.manifest.len().to_string().as_str()
    );
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    assert_eq!(
        r.headers()["etag"],
        format!("\"{}\"", img.digest).as_str(),
        "the ETag is the quoted digest"
    );
    // Every response carries a request id, unique, and the access log line names it.
    let id = |r: &reqwest::Response| r.headers()["x-request-id"].to_str().unwrap().to_string();
    let first = id(&r);
    let again = c
        .get(format!("{}/v2/ranged/manifests/v1", aw.url()))
        .send()
        .await
        .unwrap();
    assert_ne!(id(&again), first);
    let logged = aw
        .log_text()
        .lines()
        .filter(|l| l.contains("archway::access") && l.contains(&format!("id={first} ")))
        .count();
    assert_eq!(logged, 1, "one access line per request, by its id");

    // A range on a blob that is not cached yet is served from the fill.
    let r = c
        .get(&url)
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 100-199/{}", layer.data.len()).as_str()
    );
    assert_eq!(r.bytes().await.unwrap(), &layer.data[100..200]);

    // Now cached: whole, bounded, open-ended, suffix, unsatisfiable, ignored multi-range.
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(
        r.headers()["etag"],
        format!("\"{}\"", layer.digest).as_str()
    );
    assert_eq!(r.bytes().await.unwrap(), layer.data);
    let len = layer.data.len();
    for (range, want) in [
        ("bytes=0-0".to_string(), &layer.data[0..1]),
        (format!("bytes={}-", len - 10), &layer.data[len - 10..]),
        ("bytes=-7".to_string(), &layer.data[len - 7..]),
        (format!("bytes=5-{}", len * 2), &layer.data[5..]),
    ] {
        let r = c.get(&url).header("range", &range).send().await.unwrap();
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(r.bytes().await.unwrap(), want, "{range}");
    }
    let r = c
        .get(&url)
        .header("range", format!("bytes={len}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{len}").as_str()
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "RANGE_INVALID");
    let r = c
        .get(&url)
        .header("range", "bytes=0-1,5-6")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "multi-range is ignored");

    let r = c.head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], len.to_string().as_str());
    assert_eq!(r.headers()["docker-content-digest"], layer.digest.as_str());
}

/// Cached blobs on plain HTTP go out with sendfile(2) from the cache file, byte for byte what
/// a copy would send, ranges included: the counter proves the path was taken, the bodies that
/// it sent the right bytes. (Without `http::socket`, the counter stays at 0.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_blobs_are_sent_with_sendfile_ranges_included() {
    let up = Upstream::start().await;
    let img = seeded_image(&up, "zerocopy", "v1").await;
    let aw = Archway::start(&Settings {
        admin: true,
        ..Settings::single(&up.url())
    })
    .await;
    let c = http();
    let sent = || async {
        crate::support::metric(aw.admin(), "archway_sendfile_bytes_total")
            .await
            .expect("archway_sendfile_bytes_total is exported")
    };
    let big = &img.layers[1];
    let url = format!("{}/v2/zerocopy/blobs/{}", aw.url(), big.digest);
    // The cold fill streams the blob and caches it: a client has every byte once
    // the digest is verified, the file is in place once the fill is counted out.
    assert_eq!(
        c.get(&url).send().await.unwrap().bytes().await.unwrap(),
        big.data
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while crate::support::metric(aw.admin(), "archway_fills_in_flight").await != Some(0.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the fill never finished"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // 2.5 MB: several map windows, each sent whole, the last one shorter.
    let before = sent().await;
    assert_eq!(
        c.get(&url).send().await.unwrap().bytes().await.unwrap(),
        big.data
    );
    assert_eq!(sent().await - before, big.data.len() as f64);

    // A range that starts and ends inside windows, off page boundaries.
    let before = sent().await;
    let r = c
        .get(&url)
        .header("range", "bytes=100001-1600000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), &big.data[100_001..1_600_001]);
    assert_eq!(sent().await - before, 1_500_000.0);

    // Evicted from the page cache, the file is read back in (off the runtime threads) and
    // sent the same way.
    let hex = big.digest.trim_start_matches("sha256:");
    let path = aw
        .cache_dir()
        .join(format!("blobs/sha256/{}/{hex}", &hex[..2]));
    let file = std::fs::File::open(&path).unwrap();
    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    let before = sent().await;
    assert_eq!(
        c.get(&url).send().await.unwrap().bytes().await.unwrap(),
        big.data
    );
    assert_eq!(sent().await - before, big.data.len() as f64);

    // A 10-byte blob is read, not mapped.
    let tiny = &img.layers[2];
    let url = format!("{}/v2/zerocopy/blobs/{}", aw.url(), tiny.digest);
    assert_eq!(
        c.get(&url).send().await.unwrap().bytes().await.unwrap(),
        tiny.data
    );
    let before = sent().await;
    // (Cached or not, a 10-byte blob never comes from a map.)
    assert_eq!(
        c.get(&url).send().await.unwrap().bytes().await.unwrap(),
        tiny.data
    );
    assert_eq!(sent().await - before, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_archway_serves_everything_with_upstream_down() {
    let mut up = Upstream::start().await;
    let img = seeded_image(&up, "persist/app", "v1").await;
    let settings = Settings::single(&up.url());
    let aw = Archway::start(&settings).await;
    let dir = tempfile::tempdir().unwrap();
    let out = skopeo::copy_to_oci(&format!("{}/persist/app:v1", aw.host()), dir.path(), &[]);
    assert!(out.ok, "{}", out.stderr);

    let cache = aw.stop();
    up.stop();
    let aw = Archway::start_in(cache, &settings).await;
    for reference in ["v1", img.digest.as_str()] {
        let dir = tempfile::tempdir().unwrap();
        let src = if reference.starts_with("sha256:") {
            format!("{}/persist/app@{reference}", aw.host())
        } else {
            format!("{}/persist/app:{reference}", aw.host())
        };
        let out = skopeo::copy_to_oci(&src, dir.path(), &[]);
        assert!(
            out.ok,
            "pull of {reference} after restart failed: {}",
            out.stderr
        );
        assert_eq!(skopeo::verify_oci_layout(dir.path()), 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_of_one_repository_are_not_readable_through_another() {
    let up = Upstream::start().await;
    let img = seeded_image(&up, "private/a", "v1").await;
    let aw = Archway::start(&Settings::single(&up.url())).await;
    let c = http();
    let r = c
        .get(format!("{}/v2/private/a/manifests/v1", aw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let layer = &img.layers[0];
    let r = c
        .get(format!("{}/v2/private/a/blobs/{}", aw.url(), layer.digest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), layer.data);

    // The blob is cached now, but repository b never had it.
    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        let r = c
            .request(
                method.clone(),
                format!("{}/v2/other/b/blobs/{}", aw.url(), layer.digest),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{method}");
        if method == reqwest::Method::GET {
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["errors"][0]["code"], "BLOB_UNKNOWN");
        }
    }
    // Same for the manifest by digest.
    let r = c
        .get(format!("{}/v2/other/b/manifests/{}", aw.url(), img.digest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_upstream_with_and_without_credentials() {
    let creds = ("mirror".to_string(), "s3cret-pw".to_string());
    let up = Upstream::start_with(Options {
        htpasswd: Some(creds.clone()),
        ..Options::default()
    })
    .await;
    seeded_image(&up, "locked/app", "v1").await;

    let mut settings = Settings::single(&up.url());
    settings.upstreams[0].creds = Some(creds);
    let aw = Archway::start(&settings).await;
    let dir = tempfile::tempdir().unwrap();
    let out = skopeo::copy_to_oci(&format!("{}/locked/app:v1", aw.host()), dir.path(), &[]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(skopeo::verify_oci_layout(dir.path()), 5);
    assert!(
        !aw.log_text().contains("s3cret-pw"),
        "a password reached the log"
    );

    let anon = Archway::start(&Settings::single(&up.url())).await;
    let r = http()
        .get(format!("{}/v2/locked/app/manifests/v1", anon.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(oci_error(r).await, (403, "DENIED".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha512_content_end_to_end() {
    use crate::support::images::{Blob, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST};
    let up = Upstream::start().await;
    let config = Blob::new(
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec(),
    );
    let layer = Blob::sha512(random_bytes(unique_seed(), 200_000));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.data.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer.digest, "size": layer.data.len()}],
    }))
    .unwrap();
    let push = Pusher::new(&up.url(), None);
    push.blob("sha/app", &config).await;
    push.blob("sha/app", &layer).await;
    push.manifest("sha/app", "v1", OCI_MANIFEST, &manifest)
        .await;
    let aw = Archway::start(&Settings::single(&up.url())).await;
    let c = http();
    let r = c
        .get(format!("{}/v2/sha/app/manifests/v1", aw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), manifest);
    let url = format!("{}/v2/sha/app/blobs/{}", aw.url(), layer.digest);
    let hex = layer.digest.trim_start_matches("sha512:");
    let cached = aw
        .cache_dir()
        .join(format!("blobs/sha512/{}/{hex}", &hex[..2]));
    for round in ["upstream", "cache"] {
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{round}");
        assert_eq!(r.headers()["docker-content-digest"], layer.digest.as_str());
        assert_eq!(r.bytes().await.unwrap(), layer.data, "{round}");
        // On local disk the client's last byte goes out before the file is flushed and
        // renamed into place: the next request is a cache hit once it is there.
        let start = std::time::Instant::now();
        while !cached.exists() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "never cached"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    let path = format!("/v2/sha/app/blobs/{}", layer.digest);
    assert_eq!(aw.access_outcomes(&path), ["upstream", "cache"]);
    assert_eq!(up.blob_gets("sha/app", &layer.digest), 1);
    assert!(cached.exists(), "cached under its own algorithm");
    // A wrong sha512 is refused like a wrong sha256.
    let bad = format!("sha512:{}", "0".repeat(128));
    let r = c
        .get(format!("{}/v2/sha/app/blobs/{bad}", aw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(oci_error(r).await, (404, "BLOB_UNKNOWN".into()));
    // And a real client verifies it.
    let dir = tempfile::tempdir().unwrap();
    let out = skopeo::copy_to_oci(&format!("{}/sha/app:v1", aw.host()), dir.path(), &[]);
    assert!(out.ok, "{}", out.stderr);
}
