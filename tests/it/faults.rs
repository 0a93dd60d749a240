//! Fault injection with an in-process upstream: wrong bytes, cut and stalled transfers, rate
//! limits, oversized manifests, and an upstream that fails while a tag is cached. Each test
//! checks the failure it is about (what the client got, what archway asked the upstream,
//! what it counted) and that nothing was published.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::archway::{Archway, Settings};
use crate::support::fake::{Fake, Reply};
use crate::support::images::{Image, OCI_MANIFEST};
use crate::support::{
    broken_transfer, broken_transfer_then, get_body, http, oci_error, random_bytes, unique_seed,
    wait_metric,
};

fn ok(content_type: &str, body: Vec<u8>) -> Reply {
    Reply::Ok {
        content_type: content_type.into(),
        headers: vec![],
        body,
    }
}

fn hex(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

fn cached_file(aw: &Archway, digest: &str) -> std::path::PathBuf {
    let hex = hex(digest);
    aw.cache_dir()
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(hex)
}

/// Nothing of the blob is visible: no content, no link, no staged file left over.
fn nothing_published(aw: &Archway, repo: &str, digest: &str) {
    assert!(!cached_file(aw, digest).exists(), "{digest} was cached");
    let link = aw.cache_dir().join(format!(
        "repositories/up/{repo}/_blobs/sha256/{}",
        hex(digest)
    ));
    assert!(!link.exists(), "{digest} was linked to {repo}");
    let staged = std::fs::read_dir(aw.cache_dir().join(".staging"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(staged, 0, "a staged file was left behind");
}

fn with_admin(url: &str) -> Settings {
    Settings {
        admin: true,
        ..Settings::single(url)
    }
}

const DIGEST_MISMATCH: &str = "archway_fill_failures_total{reason=\"digest_mismatch\"}";
const UPSTREAM_FAILED: &str = "archway_fill_failures_total{reason=\"upstream\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_from_upstream_are_never_cached_or_completed() {
    let img = Image::new("linux/amd64", vec![random_bytes(unique_seed(), 3_000_000)]);
    let layer = &img.layers[0];
    let mut evil = layer.data.clone();
    evil[1_234_567] ^= 0xff;
    // Held after the first MiB until the client has the response's head: a fill that ran to
    // its (failing) digest check before the head went out would be answered 502 instead,
    // which is right too, but not the case this test is about.
    let up = crate::support::fake::gated_server(evil, 1 << 20).await;
    let aw = Archway::start(&with_admin(&up.raw.url())).await;
    let url = format!("{}/v2/bad/app/blobs/{}", aw.url(), layer.digest);

    for attempt in 1..=2 {
        broken_transfer_then(&url, layer.data.len(), || up.release_one()).await;
        assert!(
            wait_metric(
                aw.admin(),
                DIGEST_MISMATCH,
                attempt as f64,
                Duration::from_secs(20)
            )
            .await,
            "the fill failed on the digest check"
        );
        nothing_published(&aw, "bad/app", &layer.digest);
        assert_eq!(
            up.raw.requests(),
            attempt,
            "nothing cached, so the next request goes upstream again"
        );
    }
    let log = aw.log_text();
    assert!(
        log.contains("blob fill failed; nothing cached")
            && log.contains(&format!("expected {}", layer.digest)),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connection_mid_blob_leaves_nothing_behind() {
    let data = random_bytes(unique_seed(), 1_000_000);
    let digest = crate::support::images::sha256(&data);
    let up = crate::support::fake::cut_server(data.len(), data[..400_000].to_vec()).await;
    let aw = Archway::start(&with_admin(&up.url())).await;
    let received = broken_transfer(
        &format!("{}/v2/cut/app/blobs/{digest}", aw.url()),
        data.len(),
    )
    .await;
    assert!(
        received <= 400_000,
        "{received}: more than the upstream sent"
    );
    // Asked again `retries` (3) times, from where it stopped; each answer was cut as well.
    assert_eq!(up.requests(), 4);
    assert!(wait_metric(aw.admin(), UPSTREAM_FAILED, 1.0, Duration::from_secs(20)).await);
    nothing_published(&aw, "cut/app", &digest);
    assert!(
        aw.log_text().contains("up: blob transfer failed"),
        "{}",
        aw.log_text()
    );
    // Still serving.
    let alive = http()
        .get(format!("{}/v2/", aw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(alive.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_at_30_and_70_percent_resumes_with_ranges_and_verifies() {
    let data = random_bytes(unique_seed(), 1_000_000);
    let digest = crate::support::images::sha256(&data);
    let cuts = vec![300_000, 700_000];
    let (up, ranges) = crate::support::fake::flaky_server(data.clone(), cuts.clone(), true).await;
    let aw = Archway::start(&with_admin(&up.url())).await;
    let url = format!("{}/v2/flaky/app/blobs/{digest}", aw.url());
    let r = http().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(data.len() as u64));
    let body = r.bytes().await.unwrap();
    assert!(
        body == data,
        "the client got the whole blob, unaware of the cuts"
    );
    assert_eq!(
        *ranges.lock().unwrap(),
        vec![
            None,
            Some("bytes=300000-".to_string()),
            Some("bytes=700000-".to_string())
        ],
        "three GETs, two of them for the rest only"
    );
    // Verified and cached: served again without the upstream.
    let again = get_body(&url).await;
    assert!(again == data);
    assert_eq!(ranges.lock().unwrap().len(), 3);
    assert_eq!(metric_of(&aw, UPSTREAM_FAILED).await, Some(0.0));
    assert!(aw.log_text().contains("resuming from where it stopped"));

    // An upstream that ignores Range sends it all again: what was received is skipped.
    let (up, ranges) = crate::support::fake::flaky_server(data.clone(), vec![300_000], false).await;
    let aw = Archway::start(&with_admin(&up.url())).await;
    let r = http()
        .get(format!("{}/v2/flaky/app/blobs/{digest}", aw.url()))
        .send()
        .await
        .unwrap();
    assert!(r.bytes().await.unwrap() == data);
    assert_eq!(ranges.lock().unwrap().len(), 2);

    // With retries = 0, a cut is the end of the transfer.
    let (up, ranges) = crate::support::fake::flaky_server(data.clone(), cuts, true).await;
    let mut s = with_admin(&up.url());
    s.upstreams[0].extra = "retries = 0\n".into();
    let aw = Archway::start(&s).await;
    // The fill may break before the response head is flushed: then the client sees the
    // connection close instead of a body cut short. Either way, never the whole blob.
    let complete = match http()
        .get(format!("{}/v2/flaky/app/blobs/{digest}", aw.url()))
        .send()
        .await
    {
        Ok(r) if r.status() == 200 => r.bytes().await.is_ok(),
        Ok(_) | Err(_) => false,
    };
    assert!(!complete, "a cut transfer is never delivered as complete");
    assert_eq!(ranges.lock().unwrap().len(), 1);
    nothing_published(&aw, "flaky/app", &digest);
}

async fn metric_of(aw: &Archway, series: &str) -> Option<f64> {
    crate::support::metric(aw.admin(), series).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_upstream_times_out_and_caches_nothing() {
    let data = random_bytes(unique_seed(), 500_000);
    let digest = crate::support::images::sha256(&data);
    let up = crate::support::fake::stall_server(data.len(), data[..100_000].to_vec()).await;
    let mut settings = with_admin(&up.url());
    settings.read_timeout = "1s".into();
    let aw = Archway::start(&settings).await;
    let received = broken_transfer(
        &format!("{}/v2/stall/app/blobs/{digest}", aw.url()),
        data.len(),
    )
    .await;
    assert!(received <= 100_000, "{received}");
    assert!(wait_metric(aw.admin(), UPSTREAM_FAILED, 1.0, Duration::from_secs(20)).await);
    nothing_published(&aw, "stall/app", &digest);
    assert!(
        aw.log_text().contains("up: blob transfer timed out"),
        "{}",
        aw.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_rate_limit_and_oversized_manifests_are_refused_and_not_cached() {
    let fake = Fake::start().await;
    fake.route(
        "/v2/limited/app/manifests/v1",
        Reply::Status(429, vec![("retry-after".into(), "60".into())]),
    );
    let big = vec![b' '; 5 * 1024 * 1024];
    fake.route("/v2/big/app/manifests/v1", ok(OCI_MANIFEST, big));
    let aw = Archway::start(&Settings::single(&fake.url())).await;
    let get = |path: &str| http().get(format!("{}{path}", aw.url())).send();

    let r = get("/v2/limited/app/manifests/v1").await.unwrap();
    assert_eq!(oci_error(r).await, (429, "TOOMANYREQUESTS".into()));
    assert_eq!(fake.count("GET", "/v2/limited/app/manifests/v1"), 1);

    let r = get("/v2/big/app/manifests/v1").await.unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "MANIFEST_INVALID");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("larger than"), "{message}");
    assert_eq!(fake.count("GET", "/v2/big/app/manifests/v1"), 1);
    for repo in ["limited/app", "big/app"] {
        let tag = aw
            .cache_dir()
            .join(format!("repositories/up/{repo}/_tags/v1"));
        assert!(!tag.exists(), "{repo}: a tag was recorded");
    }
    assert!(
        !aw.cache_dir().join("blobs").exists(),
        "nothing was stored at all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_tag_is_served_stale_on_5xx_429_and_timeouts() {
    let fake = Fake::start().await;
    let img = Image::new("linux/amd64", vec![random_bytes(unique_seed(), 1000)]);
    let path = "/v2/flaky/app/manifests/v1";
    // 0: healthy, 1: 500, 2: 429, 3: no answer at all.
    let mode = Arc::new(AtomicU8::new(0));
    let (m, manifest, digest) = (mode.clone(), img.manifest.clone(), img.digest.clone());
    fake.handler(move |req| {
        if req.uri().path() != path {
            return None;
        }
        Some(match m.load(Ordering::SeqCst) {
            0 => Reply::Ok {
                content_type: OCI_MANIFEST.into(),
                headers: vec![("docker-content-digest".into(), digest.clone())],
                body: manifest.clone(),
            },
            1 => Reply::Status(500, vec![]),
            2 => Reply::Status(429, vec![]),
            _ => Reply::Hang,
        })
    });
    let mut settings = with_admin(&fake.url());
    settings.tag_ttl = "0s".into(); // every request revalidates
    settings.read_timeout = "1s".into();
    let aw = Archway::start(&settings).await;
    let fetch = || async {
        let r = http()
            .get(format!("{}{path}", aw.url()))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let d = r.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_string();
        (status, d, r.bytes().await.unwrap())
    };
    let (status, d, body) = fetch().await;
    assert_eq!((status, d.as_str()), (200, img.digest.as_str()));
    assert_eq!(body, img.manifest);
    for (failure, m) in [("HTTP 500", 1), ("HTTP 429", 2), ("timed out", 3)] {
        mode.store(m, Ordering::SeqCst);
        let (status, d, body) = fetch().await;
        assert_eq!(
            (status, d.as_str()),
            (200, img.digest.as_str()),
            "{failure}"
        );
        assert_eq!(body, img.manifest, "{failure}");
        assert!(
            wait_metric(
                aw.admin(),
                "archway_stale_serves_total",
                m as f64,
                Duration::from_secs(20)
            )
            .await,
            "{failure}"
        );
    }
    assert_eq!(
        aw.access_outcomes(path),
        ["upstream", "stale", "stale", "stale"]
    );
    assert_eq!(
        fake.count("HEAD", path),
        3,
        "each one asked the upstream first"
    );
    let log = aw.log_text();
    let stale: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("serving the last known manifest"))
        .collect();
    assert_eq!(stale.len(), 3, "{log}");
    assert!(stale[0].contains("answered HTTP 500"), "{}", stale[0]);
    assert!(stale[1].contains("answered HTTP 429"), "{}", stale[1]);
    assert!(stale[2].contains("timed out"), "{}", stale[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_killed_with_sigkill_leaves_a_staged_file_the_next_start_removes() {
    let data = random_bytes(unique_seed(), 600_000);
    let digest = crate::support::images::sha256(&data);
    let gated = crate::support::fake::gated_server(data.clone(), 200_000).await;
    let s = with_admin(&gated.raw.url());
    let mut aw = Archway::start(&s).await;
    let url = format!("{}/v2/killed/app/blobs/{digest}", aw.url());
    let held = tokio::spawn(async move { http().get(url).send().await.map(|r| r.status()) });
    let staging = aw.cache_dir().join(".staging");
    let staged = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&staging)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let start = std::time::Instant::now();
    while staged().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the fill never staged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    aw.sigkill();
    let _ = held.await;
    let left = staged();
    assert_eq!(left.len(), 1, "SIGKILL leaves the staged file");
    // As after any real outage, it is older than the few seconds a new fill may go unlocked.
    std::fs::File::options()
        .write(true)
        .open(&left[0])
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
        .unwrap();
    // A staged file some other live process holds (its fill is running) stays.
    let running = staging.join(format!("{}-running", &digest[7..]));
    let lock = std::fs::File::create(&running).unwrap();
    lock.set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
        .unwrap();
    lock.try_lock().unwrap();

    let aw = Archway::start_in(aw.stop(), &s).await;
    assert_eq!(
        staged(),
        vec![running.clone()],
        "the leftover is gone at start-up"
    );
    assert!(aw
        .log_text()
        .contains("removed the staged files of fills that ended"));
    gated.open();
    let body = get_body(&format!("{}/v2/killed/app/blobs/{digest}", aw.url())).await;
    assert!(body == data, "fetched anew and verified");
    drop(lock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_cache_disk_fills_mid_blob_clients_still_get_it_whole() {
    let f = FullDisk::start(3 << 20).await;
    let (up, blob, aw, url) = (&f.up, &f.blob, &f.aw, f.url());
    for round in 1..=2 {
        let r = http().get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body = r.bytes().await.expect("the whole body, not a cut one");
        assert_eq!(
            crate::support::images::sha256(&body),
            blob.digest,
            "round {round}: verified bytes"
        );
        // Nothing was cached: each round is a fill of its own.
        assert_eq!(up.blob_gets("big/app", &blob.digest), round);
        assert!(
            wait_metric(
                aw.admin(),
                "archway_fill_failures_total{reason=\"store\"}",
                round as f64,
                Duration::from_secs(20)
            )
            .await
        );
    }
    assert!(aw
        .log_text()
        .contains("streaming it on to its clients without caching it"));
    let ready = http()
        .get(format!("http://127.0.0.1:{}/readyz", aw.admin()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "still serving what it has");
    let text = ready.text().await.unwrap();
    assert!(
        text.contains("cache degraded") && text.contains("No space left"),
        "{text}"
    );
    let staged = std::fs::read_dir(f.disk.path().join(".staging"))
        .unwrap()
        .count();
    assert_eq!(staged, 0, "the partial staged file is removed");
}

/// A blob on the upstream and archway caching on a 1 MiB tmpfs.
struct FullDisk {
    disk: crate::support::tmpfs::Tmpfs,
    up: crate::support::registry::Upstream,
    blob: crate::support::images::Blob,
    aw: Archway,
}

impl FullDisk {
    async fn start(size: usize) -> FullDisk {
        let disk = crate::support::tmpfs::Tmpfs::mount("1m");
        let up = crate::support::registry::Upstream::start().await;
        let blob = crate::support::images::Blob::new(random_bytes(unique_seed(), size));
        crate::support::images::Pusher::new(&up.url(), None)
            .blob("big/app", &blob)
            .await;
        let mut s = with_admin(&up.url());
        s.storage_url = Some(format!("file://{}", disk.path().display()));
        let aw = Archway::start(&s).await;
        FullDisk { disk, up, blob, aw }
    }

    fn url(&self) -> String {
        format!("{}/v2/big/app/blobs/{}", self.aw.url(), self.blob.digest)
    }

    /// A client with a small receive buffer that reads the response head and `first` bytes
    /// of the body, and then stops.
    async fn stalled_client(&self, first: usize) -> Stalled {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(32 * 1024).unwrap();
        let mut c = socket
            .connect(self.aw.host().parse().unwrap())
            .await
            .unwrap();
        let path = format!("/v2/big/app/blobs/{}", self.blob.digest);
        let host = self.aw.host();
        c.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(c.read(&mut byte).await.unwrap(), 1, "a response head");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let mut body = vec![0u8; first];
        c.read_exact(&mut body).await.unwrap();
        Stalled { c, body }
    }

    /// Reads the stalled client's body to its end and checks it is the whole, verified blob.
    async fn read_on(&self, stalled: Stalled) {
        use tokio::io::AsyncReadExt;
        let Stalled { mut c, mut body } = stalled;
        let read = tokio::time::timeout(Duration::from_secs(60), c.read_to_end(&mut body)).await;
        assert!(read.is_ok(), "the slow client's response never ended");
        assert_eq!(
            body.len(),
            self.blob.data.len(),
            "the slow client got its whole body, not a cut one"
        );
        assert_eq!(crate::support::images::sha256(&body), self.blob.digest);
    }

    /// Waits until `done` or archway logs `line`: without the feature a test is about, the
    /// first; with it, the second.
    async fn until(&self, line: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !(done() || self.aw.log_text().contains(line)) {
            assert!(
                std::time::Instant::now() < deadline,
                "{}",
                self.aw.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A client that stopped reading, and what it read before.
struct Stalled {
    c: tokio::net::TcpStream,
    body: Vec<u8>,
}

const PACING: &str = "no faster than this blob's slowest client";

/// Once the cache disk is full, memory holds the only copy of what the spool did not take.
/// A client far behind another is waited for, not cut: the fill reads the upstream no faster
/// than it, and both clients get the whole blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_cache_disk_fills_a_slow_client_is_waited_for_not_cut() {
    // Far more than the disk takes, than a fill keeps in memory (4 MiB), and than the
    // sockets between archway and a client can hold.
    let f = FullDisk::start(48 << 20).await;
    let slow = f.stalled_client(0).await;
    let fast = tokio::spawn({
        let url = f.url();
        async move { http().get(&url).send().await?.bytes().await }
    });
    // Without the wait, the fast client is done and the bytes the slow one still needs are
    // gone from memory; with it, the fill holds back until the slow one reads on.
    f.until(PACING, || fast.is_finished()).await;
    f.read_on(slow).await;
    let fast = fast.await.unwrap().expect("the fast client's whole body");
    assert_eq!(crate::support::images::sha256(&fast), f.blob.digest);
    assert_eq!(
        f.up.blob_gets("big/app", &f.blob.digest),
        1,
        "one upstream fetch"
    );
}

/// A client that joins a fill after the disk filled, when the fill has let go of the bytes
/// before its slowest reader, gets a fill of its own at once, whole, while the first fill
/// still waits for its stalled client (who then gets every byte too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_cache_disk_fills_a_client_joining_late_gets_a_fill_of_its_own() {
    // Far more than the disk takes, than a fill keeps in memory (4 MiB), and than the
    // sockets between archway and a client can hold.
    let f = FullDisk::start(48 << 20).await;
    // Past the first 16 MiB before it stops: the fill has let go of what lies between the
    // disk's 1 MiB and where this client stands.
    let slow = f.stalled_client(16 << 20).await;
    f.until(PACING, || false).await;
    let late = tokio::spawn({
        let url = f.url();
        async move { http().get(&url).send().await?.bytes().await }
    });
    // Without a fill of its own, the late client gets its 200 at once (and a cut body).
    f.until(
        "fetching it again for this client alone, beside that fill",
        || {
            f.aw.access_outcomes(&format!("/v2/big/app/blobs/{}", f.blob.digest))
                .len()
                >= 2
        },
    )
    .await;
    // While the slow client still reads nothing: waiting for the first fill to end instead
    // would wait for it, until it is cut after 20 s of taking nothing (`PATIENCE`).
    let late = tokio::time::timeout(Duration::from_secs(15), late)
        .await
        .expect("the late client's body, while the first fill still waits for its slow client")
        .unwrap();
    let late = late.expect("the late client's whole body");
    f.read_on(slow).await;
    assert_eq!(crate::support::images::sha256(&late), f.blob.digest);
    assert_eq!(
        f.up.blob_gets("big/app", &f.blob.digest),
        2,
        "a fill of its own for the late client"
    );
}
