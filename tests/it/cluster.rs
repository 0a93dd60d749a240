//! Replicas in a `[cluster]` on one real S3 bucket (moto), in front of the real upstream
//! (through a relay that can hold a transfer half-way): one upstream fetch per blob however
//! many replicas and clients ask, streaming from the owner's fill, takeover when the owner
//! dies, a lapsed lease whose owner still streams, the fallback when it cannot be reached,
//! `archway warm` as a member, and the internal endpoint's credentials.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use tempfile::TempDir;

use crate::support::archway::{Archway, Settings};
use crate::support::azure::Azurite;
use crate::support::images::{sha256, Image, Pusher};
use crate::support::registry::Upstream;
use crate::support::relay::Relay;
use crate::support::s3::S3;
use crate::support::{http, metric, random_bytes, skopeo, unique_seed};

const REPO: &str = "herd/app";
const BIG: usize = 32 * 1024 * 1024;
/// Where the relay holds the first transfer of the big layer.
const HELD_AFTER: usize = 4 * 1024 * 1024;

/// The bucket the replicas share.
enum Bucket {
    S3(S3),
    Azure(Azurite),
}

impl Bucket {
    fn url(&self) -> &'static str {
        match self {
            Bucket::S3(_) => "s3://mirror/cache",
            Bucket::Azure(_) => "az://mirror/cache",
        }
    }

    fn toml(&self) -> String {
        match self {
            Bucket::S3(s) => s.storage_toml(),
            Bucket::Azure(a) => a.storage_toml(),
        }
    }

    async fn keys(&self, prefix: &str) -> Vec<String> {
        match self {
            Bucket::S3(s) => s.keys("mirror", prefix).await,
            Bucket::Azure(a) => a.keys("mirror", prefix).await,
        }
    }
}

struct Herd {
    up: Upstream,
    relay: Relay,
    bucket: Bucket,
    img: Image,
    secrets: TempDir,
}

impl Herd {
    /// A three-layer image (one of 32 MiB) on the upstream; the relay holds the first
    /// transfer of the big layer after 4 MiB. The replicas share a moto bucket.
    async fn start() -> Herd {
        let bucket = Bucket::S3(S3::start("mirror").await);
        Herd::start_on(bucket).await
    }

    async fn start_on(bucket: Bucket) -> Herd {
        let up = Upstream::start().await;
        let seed = unique_seed();
        let img = Image::new(
            "linux/amd64",
            vec![
                random_bytes(seed, BIG),
                random_bytes(seed + 1, 1024 * 1024),
                random_bytes(seed + 2, 4096),
            ],
        );
        Pusher::new(&up.url(), None).image(REPO, "v1", &img).await;
        let relay = Relay::start(&up.url()).await;
        relay.hold_first(&self::blob_path(&img.layers[0].digest), HELD_AFTER);
        let secrets = tempfile::tempdir().unwrap();
        std::fs::write(
            secrets.path().join("cluster"),
            "a-shared-secret-of-32-bytes-long\n",
        )
        .unwrap();
        Herd {
            up,
            relay,
            bucket,
            img,
            secrets,
        }
    }

    fn big(&self) -> &str {
        &self.img.layers[0].digest
    }

    /// A replica's settings: the bucket, `[cluster]` with its address from POD_IP (and the
    /// port it binds), or `advertise` when given.
    fn settings(&self, advertise: Option<&str>) -> Settings {
        let advertise = advertise
            .map(|a| format!("advertise = \"{a}\"\n"))
            .unwrap_or_default();
        let mut s = Settings {
            storage_url: Some(self.bucket.url().into()),
            admin: true,
            // The relay holds a transfer for as long as a test needs.
            read_timeout: "60s".into(),
            extra: format!(
                "{}\n[cluster]\n{advertise}secret_file = \"{}\"\nlease_ttl = \"5s\"\n",
                self.bucket.toml(),
                self.secrets.path().join("cluster").display()
            ),
            ..Settings::single(&self.relay.url())
        };
        s.env.push(("POD_IP".into(), "127.0.0.1".into()));
        s
    }

    /// What the real upstream's access log says: GETs of each blob.
    fn assert_one_get_per_blob(&self, replicas: &[&Archway]) {
        for b in self.img.blobs() {
            assert_eq!(
                self.up.blob_gets(REPO, &b.digest),
                1,
                "blob {} fetched more than once; logs:\n{}",
                b.digest,
                logs(replicas)
            );
        }
    }
}

fn blob_path(digest: &str) -> String {
    format!("/v2/{REPO}/blobs/{digest}")
}

fn logs(replicas: &[&Archway]) -> String {
    replicas
        .iter()
        .map(|a| {
            a.log_text()
                .lines()
                .filter(|l| {
                    l.contains("WARN")
                        || l.contains("ERROR")
                        || l.contains("fill")
                        || l.contains("peer")
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect::<Vec<_>>()
        .join("\n----\n")
}

/// A client reading the big layer from `aw`: reports its first bytes, then reads the rest;
/// the digest of what it read, or the error.
fn observe(
    aw: &Archway,
    digest: &str,
    first: tokio::sync::mpsc::Sender<usize>,
) -> tokio::task::JoinHandle<Result<String, String>> {
    let url = format!("{}{}", aw.url(), blob_path(digest));
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let r = client.get(url).send().await.map_err(|e| e.to_string())?;
        if r.status() != 200 {
            return Err(format!("status {}", r.status()));
        }
        let mut body = r.bytes_stream();
        let mut data = Vec::new();
        let mut told = false;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            data.extend_from_slice(&chunk);
            if !told && !data.is_empty() {
                told = true;
                let _ = first.send(data.len()).await;
            }
        }
        Ok(sha256(&data))
    })
}

/// Waits for `n` clients to report their first bytes. A deadline only turns a hang into a
/// failure; nothing proceeds before the event itself.
async fn first_bytes(rx: &mut tokio::sync::mpsc::Receiver<usize>, n: usize) -> Vec<usize> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(b)) => got.push(b),
            _ => panic!("only {} of {n} clients got first bytes", got.len()),
        }
    }
    got
}

/// skopeo pulls of the image through `aw`, in threads; each one's OCI layout.
fn pulls(aw: &Archway, n: usize) -> Vec<(TempDir, std::thread::JoinHandle<skopeo::Output>)> {
    (0..n)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let (src, path) = (format!("{}/{REPO}:v1", aw.host()), dir.path().to_path_buf());
            let h = std::thread::spawn(move || skopeo::copy_to_oci(&src, &path, &[]));
            (dir, h)
        })
        .collect()
}

/// Waits until `aw` has answered the headers of `n` GETs of `path` (its access log): every
/// client is then attached to the fill.
async fn attached(aw: &Archway, path: &str, n: usize) {
    let start = std::time::Instant::now();
    while aw.access_outcomes(path).len() < n {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{} of {n} GETs of {path} answered:\n{}",
            aw.access_outcomes(path).len(),
            aw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn verified(dir: &Path, out: skopeo::Output) {
    assert!(out.ok, "a pull failed: {}", out.stderr);
    assert_eq!(skopeo::verify_oci_layout(dir), 5);
}

async fn leases(aw: &Archway, outcome: &str) -> f64 {
    metric(
        aw.admin(),
        &format!("archway_fill_leases_total{{outcome=\"{outcome}\"}}"),
    )
    .await
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_fetch_each_blob_once_and_stream_before_it_arrives() {
    let h = Herd::start().await;
    let s = h.settings(None);
    let replicas = [
        Archway::start(&s).await,
        Archway::start(&s).await,
        Archway::start(&s).await,
    ];
    let all: Vec<&Archway> = replicas.iter().collect();

    // One client per replica on the big layer: each gets its first bytes while the relay
    // still holds the upstream transfer, so nobody waited for the whole blob.
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let observers: Vec<_> = replicas
        .iter()
        .map(|a| observe(a, h.big(), tx.clone()))
        .collect();
    let got = first_bytes(&mut rx, 3).await;
    assert!(got.iter().all(|b| *b > 0 && *b < BIG), "{got:?}");

    // Eight skopeo pulls per replica join the fills in flight.
    let pulls: Vec<_> = replicas.iter().map(|a| pulls(a, 8)).collect();
    for a in &replicas {
        attached(a, &blob_path(h.big()), 9).await;
    }
    h.relay.open();
    for o in observers {
        assert_eq!(o.await.unwrap().unwrap(), h.big(), "an observer's bytes");
    }
    for (dir, t) in pulls.into_iter().flatten() {
        verified(dir.path(), t.join().unwrap());
    }
    h.assert_one_get_per_blob(&all);

    let (mut owned, mut followed) = (0.0, 0.0);
    for a in &replicas {
        owned += leases(a, "owned").await;
        followed += leases(a, "followed").await;
        assert_eq!(leases(a, "taken_over").await, 0.0);
        assert_eq!(leases(a, "fallback").await, 0.0);
    }
    assert_eq!(owned, h.img.blobs().len() as f64, "one owner per blob");
    assert!(followed >= 2.0, "the other replicas followed the big layer");
    let peer_bytes: f64 = {
        let mut sum = 0.0;
        for a in &replicas {
            sum += metric(a.admin(), "archway_peer_bytes_total")
                .await
                .unwrap_or(0.0);
        }
        sum
    };
    assert!(
        peer_bytes >= 2.0 * BIG as f64,
        "followers streamed from the owner: {peer_bytes}"
    );
    // Every lease is released once its blob is committed.
    assert_eq!(h.bucket.keys("cache/fills/").await, Vec::<String>::new());
}

/// The replica that owns the only fill so far (the one lease taken).
async fn owner(replicas: &[Archway]) -> usize {
    let mut owners = Vec::new();
    for (i, a) in replicas.iter().enumerate() {
        if leases(a, "owned").await == 1.0 {
            owners.push(i);
        }
    }
    assert_eq!(owners.len(), 1, "exactly one owner: {owners:?}");
    owners[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_owner_dies_mid_fill_a_follower_takes_over_from_its_offset() {
    let h = Herd::start().await;
    let s = h.settings(None);
    let mut replicas = vec![
        Archway::start(&s).await,
        Archway::start(&s).await,
        Archway::start(&s).await,
    ];
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let mut observers: Vec<_> = replicas
        .iter()
        .map(|a| observe(a, h.big(), tx.clone()))
        .collect();
    first_bytes(&mut rx, 3).await;
    let dead = owner(&replicas).await;
    let mut pulls: Vec<_> = replicas.iter().map(|a| pulls(a, 2)).collect();
    for a in &replicas {
        attached(a, &blob_path(h.big()), 3).await;
    }

    replicas[dead].sigkill();
    let _ = observers.remove(dead).await;
    for (_, t) in pulls.remove(dead) {
        let _ = t.join();
    }
    h.relay.open();
    for o in observers {
        assert_eq!(
            o.await.unwrap().unwrap(),
            h.big(),
            "an observer on a live replica"
        );
    }
    for (dir, t) in pulls.into_iter().flatten() {
        verified(dir.path(), t.join().unwrap());
    }
    let alive: Vec<&Archway> = (0..3)
        .filter(|i| *i != dead)
        .map(|i| &replicas[i])
        .collect();
    let gets = h.relay.seen("GET", &blob_path(h.big()));
    assert_eq!(
        gets.len(),
        2,
        "fetched once more, by the one that took over: {gets:?}\n{}",
        logs(&alive)
    );
    let range = gets[1]
        .range
        .clone()
        .expect("the takeover asks for the rest only");
    let from: u64 = range
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(from > 0 && from <= HELD_AFTER as u64, "{range}");
    // The dead replica may have owned other blobs of the image too: each of those is
    // fetched at most once more as well.
    for b in h.img.blobs() {
        let n = h.relay.seen("GET", &blob_path(&b.digest)).len();
        assert!(
            (1..=2).contains(&n),
            "{}: {n} GETs: {:?}\n{}",
            b.digest,
            h.relay.seen("GET", &blob_path(&b.digest)),
            logs(&alive)
        );
    }
    let mut taken = 0.0;
    for a in &alive {
        taken += leases(a, "taken_over").await;
    }
    assert!(taken >= 1.0, "{}", logs(&alive));
}

/// A lease lapses when the store is slow to take the owner's renewals, not only when the
/// owner died. A follower that finds a lapsed lease first asks the owner, and follows it if it
/// still streams the fill: the blob is fetched once. (Taking a lapsed lease over on sight,
/// the rule before, fetches the rest a second time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_lease_whose_owner_still_streams_is_followed_not_taken_over() {
    let h = Herd::start().await;
    let owner = Archway::start(&h.settings(None)).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let held = observe(&owner, h.big(), tx.clone());
    first_bytes(&mut rx, 1).await;

    // The lease, made to read as lapsed: rewritten under the owner, so its next renewal
    // (a replace of the version it wrote) fails too and it stops renewing, as an owner
    // whose store is too slow does. It goes on filling and serving the fill.
    let Bucket::S3(s3) = &h.bucket else {
        unreachable!("Herd::start is on S3")
    };
    let keys = h.bucket.keys("cache/fills/").await;
    assert_eq!(keys.len(), 1, "one lease, of the big layer: {keys:?}");
    use object_store::ObjectStoreExt;
    let store = {
        let mut b = object_store::aws::AmazonS3Builder::new().with_bucket_name("mirror");
        for (k, v) in s3.env() {
            if let Ok(key) = k.to_ascii_lowercase().parse() {
                b = b.with_config(key, v);
            }
        }
        b.build().unwrap()
    };
    let key = object_store::path::Path::from(keys[0].as_str());
    let body = store.get(&key).await.unwrap().bytes().await.unwrap();
    let mut lease: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        lease["expiresAt"].as_u64().is_some_and(|t| t > now),
        "{lease}"
    );
    lease["expiresAt"] = (now - 1_000).into();
    store
        .put(&key, lease.to_string().into_bytes().into())
        .await
        .unwrap();

    let follower = Archway::start(&h.settings(None)).await;
    let follows = observe(&follower, h.big(), tx.clone());
    attached(&follower, &blob_path(h.big()), 1).await;
    h.relay.open();
    assert_eq!(held.await.unwrap().unwrap(), h.big());
    assert_eq!(follows.await.unwrap().unwrap(), h.big());
    let gets = h.relay.seen("GET", &blob_path(h.big()));
    assert_eq!(
        gets.len(),
        1,
        "the follower fetched it again: {gets:?}\n{}",
        logs(&[&owner, &follower])
    );
    assert!(leases(&follower, "followed").await >= 1.0);
    assert_eq!(leases(&follower, "taken_over").await, 0.0);
}

/// `archway warm` in a cluster is a member while it runs: the blob it is fetching, a
/// replica streams from it rather than fetch again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archway_warm_in_a_cluster_takes_leases_and_replicas_stream_its_fills() {
    let h = Herd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("archway.toml");
    std::fs::write(
        &config,
        crate::support::archway::render(&h.settings(None), dir.path()),
    )
    .unwrap();
    let warm = std::process::Command::new(Archway::bin())
        .arg("warm")
        .arg("--config")
        .arg(&config)
        .arg(format!("upstream.test/{REPO}:v1"))
        .env("POD_IP", "127.0.0.1")
        .env("ARCHWAY_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The warm's fetch of the big layer is under way, held by the relay.
    let path = blob_path(h.big());
    let start = std::time::Instant::now();
    while h.relay.seen("GET", &path).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the warm never asked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let replica = Archway::start(&h.settings(None)).await;
    let (tx, _rx) = tokio::sync::mpsc::channel(8);
    let pulled = observe(&replica, h.big(), tx);
    attached(&replica, &path, 1).await;
    h.relay.open();
    assert_eq!(pulled.await.unwrap().unwrap(), h.big());
    let out = warm.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("4 blobs fetched"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let gets = h.relay.seen("GET", &path);
    assert_eq!(
        gets.len(),
        1,
        "the replica fetched it again: {gets:?}\n{stderr}\n{}",
        replica.log_text()
    );
    assert!(leases(&replica, "followed").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_owner_cannot_be_reached_fetches_the_blob_itself() {
    let h = Herd::start().await;
    // The owner advertises an address nobody listens on.
    let owner = Archway::start(&h.settings(Some("http://127.0.0.1:9"))).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let held = observe(&owner, h.big(), tx.clone());
    first_bytes(&mut rx, 1).await;

    let other = Archway::start(&h.settings(None)).await;
    for (dir, t) in pulls(&other, 2) {
        verified(dir.path(), t.join().unwrap());
    }
    assert!(
        leases(&other, "fallback").await >= 1.0,
        "{}",
        logs(&[&other])
    );
    h.relay.open();
    assert_eq!(held.await.unwrap().unwrap(), h.big());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_endpoint_needs_the_cluster_secret() {
    let h = Herd::start().await;
    h.relay.open();
    let aw = Archway::start(&h.settings(None)).await;
    let small = &h.img.layers[2];
    // Cached through the registry API first.
    let r = http()
        .get(format!("{}{}", aw.url(), blob_path(&small.digest)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();

    let path = format!("/_archway/fills/{}?offset=10", small.digest);
    let secret = b"a-shared-secret-of-32-bytes-long";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let url = format!("{}{path}", aw.url());
    let ask = |authz: Option<String>| {
        let mut b = http().get(&url);
        if let Some(a) = authz {
            b = b.header("authorization", a);
        }
        async move { b.send().await.unwrap() }
    };
    use archway::cluster::auth::authorization;
    for (authz, why) in [
        (None, "no credentials"),
        (Some(format!("Basic {}", "YTpi")), "a client's login"),
        (
            Some(authorization(
                b"not-the-secret-but-just-as-long!",
                now,
                "GET",
                &path,
            )),
            "another secret",
        ),
        (
            Some(authorization(secret, now - 600, "GET", &path)),
            "ten minutes old",
        ),
        (
            Some(authorization(secret, now, "GET", "/_archway/fills/other")),
            "made for another path",
        ),
    ] {
        let r = ask(authz).await;
        assert_eq!(r.status(), 403, "{why}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "DENIED", "{why}");
    }
    let r = ask(Some(authorization(secret, now, "GET", &path))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-archway-blob-size"],
        small.data.len().to_string().as_str()
    );
    assert_eq!(&r.bytes().await.unwrap()[..], &small.data[10..]);

    // Without [cluster] the endpoint opens for nothing, not even the right credentials.
    let mut plain = Settings::single(&h.relay.url());
    plain.storage_url = Some("s3://mirror/plain".into());
    plain.extra = h.bucket.toml();
    let solo = Archway::start(&plain).await;
    let r = http()
        .get(format!("{}{path}", solo.url()))
        .header("authorization", authorization(secret, now, "GET", &path))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

/// Azure's conditional writes (If-None-Match, If-Match) hold the lease the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_azure_fetch_each_blob_once() {
    let h = Herd::start_on(Bucket::Azure(Azurite::start("mirror").await)).await;
    let s = h.settings(None);
    let replicas = [Archway::start(&s).await, Archway::start(&s).await];
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let observers: Vec<_> = replicas
        .iter()
        .map(|a| observe(a, h.big(), tx.clone()))
        .collect();
    first_bytes(&mut rx, 2).await;
    let pulls: Vec<_> = replicas.iter().map(|a| pulls(a, 3)).collect();
    for a in &replicas {
        attached(a, &blob_path(h.big()), 4).await;
    }
    h.relay.open();
    for o in observers {
        assert_eq!(o.await.unwrap().unwrap(), h.big());
    }
    for (dir, t) in pulls.into_iter().flatten() {
        verified(dir.path(), t.join().unwrap());
    }
    h.assert_one_get_per_blob(&replicas.iter().collect::<Vec<_>>());
    let mut followed = 0.0;
    for a in &replicas {
        followed += leases(a, "followed").await;
        assert_eq!(leases(a, "fallback").await, 0.0, "Azure wrote create-only");
    }
    assert!(followed >= 1.0);
    assert_eq!(h.bucket.keys("cache/fills/").await, Vec::<String>::new());
}
