//! Per-upstream repository rules (`allow`, `deny`) against the real docker-registry, and the
//! rate budget against an upstream that announces Docker Hub's ratelimit headers (an
//! in-process fake: docker-registry sends no such headers).

use crate::support::archway::{Archway, Settings, UpstreamSpec};
use crate::support::fake::{Fake, Reply};
use crate::support::images::{Image, Pusher, OCI_MANIFEST};
use crate::support::registry::Upstream;
use crate::support::{http, metric, oci_error, random_bytes, unique_seed};

async fn get(aw: &Archway, path: &str) -> reqwest::Response {
    http()
        .get(format!("{}{path}", aw.url()))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap()
}

fn upstream_requests_for(up: &Upstream, repo: &str) -> usize {
    let needle = format!(" /v2/{repo}/");
    up.log_text()
        .lines()
        .filter(|l| l.contains(&needle))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_refuse_before_any_upstream_contact_and_withdraw_cached_content() {
    let up = Upstream::start().await;
    let push = Pusher::new(&up.url(), None);
    let img = Image::new("linux/amd64", vec![random_bytes(unique_seed(), 5_000)]);
    for repo in [
        "library/alpine",
        "myorg/team/app",
        "myorg/secret-tool",
        "other/thing",
    ] {
        push.image(repo, "latest", &img).await;
    }
    let pushed: Vec<usize> = ["other/thing", "myorg/secret-tool"]
        .iter()
        .map(|r| upstream_requests_for(&up, r))
        .collect();
    let rules = "allow = [\"library/*\", \"myorg/**\"]\ndeny = [\"myorg/secret*\"]\n";
    let mut s = Settings::single(&up.url());
    s.upstreams[0].extra = rules.into();
    let aw = Archway::start(&s).await;

    for repo in ["library/alpine", "myorg/team/app"] {
        let r = get(&aw, &format!("/v2/{repo}/manifests/latest")).await;
        assert_eq!(r.status(), 200, "{repo} is allowed");
    }
    for ((repo, rule), pushed) in [
        ("other/thing", "allow"),
        ("myorg/secret-tool", "myorg/secret*"),
    ]
    .into_iter()
    .zip(pushed)
    {
        for path in [
            format!("/v2/{repo}/manifests/latest"),
            format!("/v2/{repo}/blobs/{}", img.layers[0].digest),
            format!("/v2/{repo}/tags/list"),
        ] {
            let r = get(&aw, &path).await;
            let body = r.text().await.unwrap();
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["errors"][0]["code"], "DENIED", "{path}: {body}");
            let message = v["errors"][0]["message"].as_str().unwrap();
            assert!(
                message.contains(rule),
                "{path}: the message names the rule: {message}"
            );
        }
        assert_eq!(
            upstream_requests_for(&up, repo),
            pushed,
            "refused before any upstream contact"
        );
    }
    let r = get(&aw, "/v2/other/thing/manifests/latest").await;
    assert_eq!(r.status(), 403);

    // Newly denied: what is cached of it is no longer served, whichever way it is asked.
    let layer = format!("/v2/library/alpine/blobs/{}", img.layers[0].digest);
    assert_eq!(get(&aw, &layer).await.status(), 200, "cached now");
    let text = std::fs::read_to_string(&aw.config).unwrap().replace(
        "deny = [\"myorg/secret*\"]",
        "deny = [\"myorg/secret*\", \"library/alpine\"]",
    );
    aw.write_config(&text);
    aw.sighup();
    aw.wait_log("SIGHUP: configuration reloaded").await;
    for path in [
        "/v2/library/alpine/manifests/latest".to_string(),
        format!("/v2/library/alpine/manifests/{}", img.digest),
        layer.clone(),
    ] {
        let (status, code) = oci_error(get(&aw, &path).await).await;
        assert_eq!((status, code.as_str()), (403, "DENIED"), "{path}");
    }
    assert_eq!(
        get(&aw, "/v2/myorg/team/app/manifests/latest")
            .await
            .status(),
        200
    );
}

fn manifest_reply(img: &Image, remaining: u64) -> Reply {
    Reply::Ok {
        content_type: OCI_MANIFEST.into(),
        headers: vec![
            ("docker-content-digest".into(), img.digest.clone()),
            ("ratelimit-limit".into(), "100;w=21600".into()),
            ("ratelimit-remaining".into(), format!("{remaining};w=21600")),
        ],
        body: img.manifest.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_min_remaining_expired_tags_are_served_from_cache_without_spending_pulls() {
    let img = Image::new("linux/amd64", vec![random_bytes(unique_seed(), 1_000)]);
    // `low` announces 3 pulls left, `ok` 50; both ask archway to keep 10.
    let (low, ok) = (Fake::start().await, Fake::start().await);
    for (fake, remaining) in [(&low, 3), (&ok, 50)] {
        for tag in ["v1", "v2"] {
            fake.route(
                &format!("/v2/app/manifests/{tag}"),
                manifest_reply(&img, remaining),
            );
        }
    }
    let spec = |name: &str, url: &str, host: &str, default: bool| UpstreamSpec {
        extra: "min_remaining = 10\n".into(),
        ..UpstreamSpec::new(name, url, &[host], default)
    };
    let s = Settings {
        upstreams: vec![
            spec("low", &low.url(), "low.test", true),
            spec("ok", &ok.url(), "ok.test", false),
        ],
        // Every tag is past its TTL at once.
        tag_ttl: "0s".into(),
        admin: true,
        ..Settings::single(&low.url())
    };
    let aw = Archway::start(&s).await;
    let asks = |f: &Fake, tag: &str| {
        let p = format!("/v2/app/manifests/{tag}");
        f.count("GET", &p) + f.count("HEAD", &p)
    };

    for ns in ["low.test", "ok.test"] {
        for _ in 0..2 {
            let r = get(&aw, &format!("/v2/app/manifests/v1?ns={ns}")).await;
            assert_eq!(r.status(), 200, "{ns}");
            assert_eq!(r.bytes().await.unwrap(), img.manifest);
        }
    }
    assert_eq!(
        asks(&low, "v1"),
        1,
        "the low budget: the expired tag came from the cache"
    );
    assert!(
        asks(&ok, "v1") >= 2,
        "a healthy budget revalidates the expired tag"
    );
    // What the cache cannot answer still goes upstream.
    let r = get(&aw, "/v2/app/manifests/v2?ns=low.test").await;
    assert_eq!(r.status(), 200);
    assert_eq!(asks(&low, "v2"), 1);

    let m = |u: &str| format!("archway_upstream_ratelimit_remaining{{upstream=\"{u}\"}}");
    assert_eq!(metric(aw.admin(), &m("low")).await, Some(3.0));
    assert_eq!(metric(aw.admin(), &m("ok")).await, Some(50.0));
    let c = crate::support::admin_json(aw.admin(), "/coverage.json").await;
    let status = |name: &str| {
        c["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == name)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(status("low")["ratelimit"]["remaining"], 3);
    assert_eq!(status("low")["ratelimit"]["limit"], 100);
    assert_eq!(status("low")["budget_low"], true);
    assert_eq!(status("ok")["budget_low"], false);
    let log = aw.log_text();
    assert_eq!(
        log.matches("upstream rate budget low").count(),
        1,
        "logged once per transition:\n{log}"
    );
    let (status, _) = oci_error(get(&aw, "/v2/app/manifests/v3?ns=low.test").await).await;
    assert_eq!(status, 404);
}
