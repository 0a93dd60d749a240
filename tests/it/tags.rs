//! Tag freshness: trusted within the TTL, revalidated with a HEAD after it, re-fetched only
//! when the upstream moved, and served stale when the upstream is down.

use crate::support::archway::{Archway, Settings};
use crate::support::images::{Image, Pusher};
use crate::support::registry::Upstream;
use crate::support::{http, oci_error, random_bytes, unique_seed};

fn image() -> Image {
    let seed = unique_seed();
    Image::new("linux/amd64", vec![random_bytes(seed, 1000)])
}

async fn digest_of(aw: &Archway, path: &str) -> (u16, String) {
    let r = http()
        .get(format!("{}{path}", aw.url()))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let d = r
        .headers()
        .get("docker-content-digest")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn within_the_ttl_a_moved_tag_is_served_from_cache() {
    let up = Upstream::start().await;
    let push = Pusher::new(&up.url(), None);
    let (a, b) = (image(), image());
    push.image("ttl/app", "latest", &a).await;
    let aw = Archway::start(&Settings::single(&up.url())).await; // tag_ttl = 1h
    assert_eq!(
        digest_of(&aw, "/v2/ttl/app/manifests/latest").await,
        (200, a.digest.clone())
    );
    push.image("ttl/app", "latest", &b).await;
    for _ in 0..3 {
        assert_eq!(
            digest_of(&aw, "/v2/ttl/app/manifests/latest").await,
            (200, a.digest.clone())
        );
    }
    assert_eq!(up.count("GET", "/v2/ttl/app/manifests/latest"), 1);
    assert_eq!(up.count("HEAD", "/v2/ttl/app/manifests/latest"), 0);
    assert_eq!(
        aw.access_outcomes("/v2/ttl/app/manifests/latest"),
        ["upstream", "cache", "cache", "cache"],
        "the access log says where each answer came from"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_ttl_tags_are_revalidated_with_head_and_refetched_when_moved() {
    let up = Upstream::start().await;
    let push = Pusher::new(&up.url(), None);
    let (a, b) = (image(), image());
    push.image("reval/app", "latest", &a).await;
    let mut settings = Settings::single(&up.url());
    settings.tag_ttl = "0s".into(); // every request is past the TTL
    let aw = Archway::start(&settings).await;
    let path = "/v2/reval/app/manifests/latest";

    assert_eq!(digest_of(&aw, path).await, (200, a.digest.clone()));
    assert_eq!(digest_of(&aw, path).await, (200, a.digest.clone()));
    assert_eq!(up.count("GET", path), 1, "unchanged tag: no second GET");
    assert_eq!(up.count("HEAD", path), 1, "revalidated with a HEAD");

    push.image("reval/app", "latest", &b).await;
    assert_eq!(digest_of(&aw, path).await, (200, b.digest.clone()));
    assert_eq!(up.count("GET", path), 2, "moved tag: fetched again");
    // The old manifest stays available by digest.
    assert_eq!(
        digest_of(&aw, &format!("/v2/reval/app/manifests/{}", a.digest)).await,
        (200, a.digest.clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_tag_served_when_upstream_is_down_unless_disabled() {
    let mut up = Upstream::start().await;
    let a = image();
    Pusher::new(&up.url(), None)
        .image("stale/app", "latest", &a)
        .await;
    let mut settings = Settings::single(&up.url());
    settings.tag_ttl = "0s".into();
    let aw = Archway::start(&settings).await;
    settings.serve_stale = false;
    let strict = Archway::start(&settings).await;
    let path = "/v2/stale/app/manifests/latest";
    assert_eq!(digest_of(&aw, path).await, (200, a.digest.clone()));
    assert_eq!(digest_of(&strict, path).await, (200, a.digest.clone()));

    up.stop();
    assert_eq!(digest_of(&aw, path).await, (200, a.digest.clone()));
    assert!(aw.log_text().contains("serving the last known manifest"));
    assert_eq!(aw.access_outcomes(path), ["upstream", "stale"]);
    let r = http()
        .get(format!("{}{path}", strict.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        oci_error(r).await,
        (503, "UNAVAILABLE".into()),
        "serve_stale = false: the outage is reported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_list_is_proxied_with_pagination() {
    let up = Upstream::start().await;
    let push = Pusher::new(&up.url(), None);
    let img = image();
    for t in ["a", "b", "c"] {
        push.image("listed/app", t, &img).await;
    }
    let aw = Archway::start(&Settings::single(&up.url())).await;
    let c = http();
    let r = c
        .get(format!(
            "{}/v2/upstream.test/listed/app/tags/list?n=2",
            aw.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let link = r
        .headers()
        .get("link")
        .map(|v| v.to_str().unwrap().to_string());
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(
        link.as_deref(),
        Some("</v2/upstream.test/listed/app/tags/list?n=2&last=b>; rel=\"next\"")
    );
    let r = c
        .get(format!("{}/v2/listed/app/tags/list?n=2&last=b", aw.url()))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers().get("link").is_none(),
        "last page has no next link"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["tags"], serde_json::json!(["c"]));
    assert!(
        up.count("GET", "/v2/listed/app/tags/list") >= 2,
        "proxied upstream"
    );
    let r = c
        .get(format!("{}/v2/listed/app/tags/list?n=x", aw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        oci_error(r).await,
        (400, "PAGINATION_NUMBER_INVALID".into())
    );
    let r = c
        .get(format!("{}/v2/nothing/here/tags/list", aw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(oci_error(r).await, (404, "NAME_UNKNOWN".into()));
}
