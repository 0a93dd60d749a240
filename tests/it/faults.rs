//! Fault injection with an in-process upstream: wrong bytes, cut connections, rate limits,
//! oversized manifests, and the Bearer token flow with a CDN redirect.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::support::archway::{Archway, Settings, UpstreamSpec};
use crate::support::fake::{Fake, Reply};
use crate::support::http;
use crate::support::images::{Image, OCI_MANIFEST};
use crate::support::{get_expecting_failure, random_bytes, unique_seed};

fn ok(content_type: &str, body: Vec<u8>) -> Reply {
    Reply::Ok {
        content_type: content_type.into(),
        headers: vec![],
        body,
    }
}

fn cached_file(aw: &Archway, digest: &str) -> std::path::PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    aw.cache_dir()
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(hex)
}

fn staging_is_empty(aw: &Archway) -> bool {
    std::fs::read_dir(aw.cache_dir().join(".staging"))
        .map(|d| d.count() == 0)
        .unwrap_or(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_from_upstream_are_never_cached_or_completed() {
    let fake = Fake::start().await;
    let seed = unique_seed();
    let img = Image::new("linux/amd64", vec![random_bytes(seed, 3_000_000)]);
    let layer = &img.layers[0];
    let mut evil = layer.data.clone();
    evil[1_234_567] ^= 0xff;
    fake.route("/v2/", ok("application/json", b"{}".to_vec()));
    fake.route(
        &format!("/v2/bad/app/blobs/{}", layer.digest),
        ok("application/octet-stream", evil),
    );
    let aw = Archway::start(&Settings::single(&fake.url())).await;
    let url = format!("{}/v2/bad/app/blobs/{}", aw.url(), layer.digest);

    for attempt in 1..=2 {
        get_expecting_failure(&url).await;
        assert!(
            !cached_file(&aw, &layer.digest).exists(),
            "corrupt blob cached"
        );
        assert!(staging_is_empty(&aw));
        assert_eq!(
            fake.count("GET", &format!("/v2/bad/app/blobs/{}", layer.digest)),
            attempt,
            "nothing cached, so the next request goes upstream again"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connection_mid_blob_leaves_nothing_behind() {
    let data = random_bytes(unique_seed(), 1_000_000);
    let digest = crate::support::images::sha256(&data);
    let port = crate::support::fake::cut_server(data.len(), data[..400_000].to_vec()).await;
    let aw = Archway::start(&Settings::single(&format!("http://127.0.0.1:{port}"))).await;
    get_expecting_failure(&format!("{}/v2/cut/app/blobs/{digest}", aw.url())).await;
    let alive = http().get(format!("{}/v2/", aw.url())).send().await;
    assert_eq!(alive.map(|r| r.status().as_u16()).ok(), Some(200));
    assert!(!cached_file(&aw, &digest).exists());
    assert!(staging_is_empty(&aw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_upstream_times_out_and_caches_nothing() {
    let data = random_bytes(unique_seed(), 500_000);
    let digest = crate::support::images::sha256(&data);
    let port = crate::support::fake::stall_server(data.len(), data[..100_000].to_vec()).await;
    let mut settings = Settings::single(&format!("http://127.0.0.1:{port}"));
    settings.read_timeout = "1s".into();
    let aw = Archway::start(&settings).await;
    get_expecting_failure(&format!("{}/v2/stall/app/blobs/{digest}", aw.url())).await;
    assert!(!cached_file(&aw, &digest).exists());
    assert!(staging_is_empty(&aw));
    assert!(aw.log_text().contains("timed out") || aw.log_text().contains("blob fill failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_rate_limit_is_passed_on_when_nothing_is_cached() {
    let fake = Fake::start().await;
    fake.route(
        "/v2/limited/app/manifests/v1",
        Reply::Status(429, vec![("retry-after".into(), "60".into())]),
    );
    let big = vec![b' '; 5 * 1024 * 1024];
    fake.route("/v2/big/app/manifests/v1", ok(OCI_MANIFEST, big));
    let aw = Archway::start(&Settings::single(&fake.url())).await;
    let r = http()
        .get(format!("{}/v2/limited/app/manifests/v1", aw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS");

    let r = http()
        .get(format!("{}/v2/big/app/manifests/v1", aw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "MANIFEST_INVALID");
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("larger than"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_flow_and_cdn_redirect_without_credentials() {
    let registry = Fake::start().await;
    let cdn = Fake::start().await;
    let img = Image::new("linux/amd64", vec![random_bytes(unique_seed(), 50_000)]);
    let layer = img.layers[0].clone();
    let token_fetches = Arc::new(AtomicUsize::new(0));
    let realm = format!("{}/token", registry.url());
    let cdn_url = format!("{}/cdn/blob?signature=abc", cdn.url());
    let manifest = img.manifest.clone();
    let manifest_path = "/v2/private/app/manifests/v1".to_string();
    let blob_path = format!("/v2/private/app/blobs/{}", layer.digest);
    let fetches = token_fetches.clone();
    registry.handler(move |req| {
        let path = req.uri().path();
        let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok());
        if path == "/token" {
            // The credentials configured for the upstream go to the token endpoint only.
            assert_eq!(auth, Some("Basic dXNlcjpwYXNz"), "token request without credentials");
            let q = req.uri().query().unwrap_or("");
            assert!(q.contains("scope=repository%3Aprivate%2Fapp%3Apull"), "{q}");
            assert!(q.contains("service=fake-registry"), "{q}");
            fetches.fetch_add(1, Ordering::SeqCst);
            return Some(ok("application/json", br#"{"token":"good-token","expires_in":300}"#.to_vec()));
        }
        if auth != Some("Bearer good-token") {
            return Some(Reply::Status(
                401,
                vec![(
                    "www-authenticate".into(),
                    format!(r#"Bearer realm="{realm}",service="fake-registry",scope="repository:private/app:pull""#),
                )],
            ));
        }
        if path == manifest_path {
            return Some(ok(OCI_MANIFEST, manifest.clone()));
        }
        if path == blob_path {
            return Some(Reply::Status(307, vec![("location".into(), cdn_url.clone())]));
        }
        None
    });
    cdn.route(
        "/cdn/blob",
        ok("application/octet-stream", layer.data.clone()),
    );

    let mut settings = Settings::single(&registry.url());
    settings.upstreams = vec![UpstreamSpec {
        creds: Some(("user".into(), "pass".into())),
        ..UpstreamSpec::new("tok", &registry.url(), &["tok.example"], true)
    }];
    let aw = Archway::start(&settings).await;
    let c = http();
    let r = c
        .get(format!("{}/v2/private/app/manifests/v1", aw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), img.manifest);
    let r = c
        .get(format!(
            "{}/v2/private/app/blobs/{}",
            aw.url(),
            layer.digest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), layer.data);

    assert_eq!(
        token_fetches.load(Ordering::SeqCst),
        1,
        "the token is cached per scope"
    );
    let cdn_requests = cdn.requests();
    assert_eq!(cdn_requests.len(), 1);
    assert_eq!(
        cdn_requests[0].authorization, None,
        "Authorization leaked to the CDN"
    );
    // After the first challenge, requests carry the token up front: one 401 in all.
    let unauthorized = registry
        .requests()
        .iter()
        .filter(|s| s.path.starts_with("/v2/") && s.authorization.is_none())
        .count();
    assert_eq!(unauthorized, 1);
    let log = aw.log_text();
    assert!(
        !log.contains("good-token") && !log.contains("dXNlcjpwYXNz"),
        "secret in log"
    );
}

/// A 1 MB blob behind an upstream that takes about a second to send it, and a GET for it
/// through archway whose headers have arrived: a transfer under way.
async fn slow_transfer() -> (Vec<u8>, String, Archway, reqwest::Response) {
    let data = random_bytes(unique_seed(), 1_000_000);
    let digest = crate::support::images::sha256(&data);
    let port = crate::support::fake::trickle_server(
        data.clone(),
        10,
        std::time::Duration::from_millis(100),
    )
    .await;
    let aw = Archway::start(&Settings::single(&format!("http://127.0.0.1:{port}"))).await;
    let r = http()
        .get(format!("{}/v2/slow/app/blobs/{digest}", aw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    (data, digest, aw, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_transfers_and_fills_finish() {
    let (data, digest, mut aw, r) = slow_transfer().await;
    let cache = cached_file(&aw, &digest);
    let stopper = std::thread::spawn(move || {
        let clean = aw.terminate();
        (clean, aw) // keeps its directory alive for the check below
    });
    assert_eq!(
        r.bytes().await.unwrap(),
        data,
        "the in-flight response completed"
    );
    let (clean, _aw) = stopper.join().unwrap();
    assert!(clean, "archway exited cleanly after SIGTERM");
    assert!(cache.exists(), "the fill finished and the blob is cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_fills_whose_client_went_away() {
    let (_, digest, mut aw, r) = slow_transfer().await;
    drop(r); // the client gives up; the fill goes on without it
    assert!(aw.terminate(), "archway exited cleanly after SIGTERM");
    assert!(
        cached_file(&aw, &digest).exists(),
        "shutdown waited for the fill, and the blob is cached"
    );
}
