//! Routing: `?ns=`, a registry host or upstream name as the first path component, the default
//! upstream, and Docker Hub's `library/` rule.

use crate::support::archway::{Archway, Settings, UpstreamSpec};
use crate::support::images::{Image, Pusher};
use crate::support::registry::Upstream;
use crate::support::{http, random_bytes, unique_seed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ns_parameter_path_prefix_default_and_library() {
    let hub = Upstream::start().await;
    let quay = Upstream::start().await;
    let seed = unique_seed();
    let hub_img = Image::new("linux/amd64", vec![random_bytes(seed, 100)]);
    let quay_img = Image::new("linux/amd64", vec![random_bytes(seed + 1, 100)]);
    Pusher::new(&hub.url(), None)
        .image("library/app", "v1", &hub_img)
        .await;
    Pusher::new(&quay.url(), None)
        .image("org/app", "v1", &quay_img)
        .await;

    let settings = Settings {
        upstreams: vec![
            UpstreamSpec::hub(&hub.url()),
            UpstreamSpec::new("quay", &quay.url(), &["quay.io"], false),
        ],
        ..Settings::single("http://unused")
    };
    let aw = Archway::start(&settings).await;
    let c = http();
    let digest = |path: String| {
        let c = c.clone();
        async move {
            let r = c.get(path).send().await.unwrap();
            (
                r.status().as_u16(),
                r.headers()
                    .get("docker-content-digest")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default(),
            )
        }
    };
    let u = aw.url();
    let hub_ok = (200, hub_img.digest.clone());
    let quay_ok = (200, quay_img.digest.clone());
    // Default upstream, with library/ for one-component names.
    assert_eq!(digest(format!("{u}/v2/app/manifests/v1")).await, hub_ok);
    assert_eq!(
        digest(format!("{u}/v2/library/app/manifests/v1")).await,
        hub_ok
    );
    // containerd: ?ns= names the registry.
    assert_eq!(
        digest(format!("{u}/v2/library/app/manifests/v1?ns=docker.io")).await,
        hub_ok
    );
    assert_eq!(
        digest(format!("{u}/v2/org/app/manifests/v1?ns=quay.io")).await,
        quay_ok
    );
    // podman/registries.conf mirror with a path: the first component names the registry.
    assert_eq!(
        digest(format!("{u}/v2/docker.io/library/app/manifests/v1")).await,
        hub_ok
    );
    assert_eq!(
        digest(format!("{u}/v2/docker.io/app/manifests/v1")).await,
        hub_ok
    );
    assert_eq!(
        digest(format!("{u}/v2/quay.io/org/app/manifests/v1")).await,
        quay_ok
    );
    assert_eq!(
        digest(format!("{u}/v2/quay/org/app/manifests/v1")).await,
        quay_ok
    );
    // override_path: both the path prefix and ?ns=.
    assert_eq!(
        digest(format!("{u}/v2/quay.io/org/app/manifests/v1?ns=quay.io")).await,
        quay_ok
    );
    // Blobs route the same way.
    let blob = &quay_img.layers[0];
    let r = c
        .get(format!("{u}/v2/org/app/blobs/{}?ns=quay.io", blob.digest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), blob.data);
    // quay's repository is not on the default upstream.
    assert_eq!(digest(format!("{u}/v2/org/app/manifests/v1")).await.0, 404);
    // The quay upstream saw only its own name, never a prefix or library/.
    assert!(quay.count("GET", "/v2/org/app/manifests/v1") >= 1);
    assert!(!quay.log_text().contains("/v2/quay.io/"));
    assert!(!hub.log_text().contains("/v2/app/"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_default_upstream_means_name_unknown() {
    let quay = Upstream::start().await;
    let settings = Settings {
        upstreams: vec![UpstreamSpec::new("quay", &quay.url(), &["quay.io"], false)],
        ..Settings::single("http://unused")
    };
    let aw = Archway::start(&settings).await;
    let r = http()
        .get(format!("{}/v2/org/app/manifests/v1", aw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "NAME_UNKNOWN");
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("no default upstream"));
}
