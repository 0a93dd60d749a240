//! `[storage] redirect`: cached blobs answered with a 307 to a presigned object-store URL,
//! followed by real clients (skopeo, containerd's ctr) against moto (S3) and Azurite (SAS).

use crate::clients::Containerd;
use crate::support::archway::{Archway, Settings};
use crate::support::azure::Azurite;
use crate::support::images::{Image, Pusher};
use crate::support::registry::Upstream;
use crate::support::s3::S3;
use crate::support::{http, metric, random_bytes, skopeo, unique_seed};

const REPO: &str = "cdn/app";

async fn served_from_cache(aw: &Archway) -> f64 {
    metric(aw.admin(), "archway_served_bytes_total{source=\"cache\"}")
        .await
        .unwrap_or(0.0)
}

async fn redirects(storage_url: &str, storage_toml: String) {
    let up = Upstream::start().await;
    let seed = unique_seed();
    let img = Image::new(
        "linux/amd64",
        vec![
            random_bytes(seed, 2 * 1024 * 1024),
            random_bytes(seed + 1, 4096),
        ],
    );
    Pusher::new(&up.url(), None).image(REPO, "v1", &img).await;
    let aw = Archway::start(&Settings {
        storage_url: Some(storage_url.into()),
        storage_extra: "redirect = \"10m\"\n".into(),
        extra: storage_toml,
        admin: true,
        ..Settings::single(&up.url())
    })
    .await;
    let big = &img.layers[0];
    let path = format!("/v2/{REPO}/blobs/{}", big.digest);

    // Cold: the fill streams through archway, as without redirects.
    let cold = tempfile::tempdir().unwrap();
    let out = skopeo::copy_to_oci(&format!("{}/{REPO}:v1", aw.host()), cold.path(), &[]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(skopeo::verify_oci_layout(cold.path()), 4);
    assert_eq!(aw.access_outcomes(&path), ["upstream"]);

    // Cached: every blob by redirect, and no blob byte through archway.
    let before = served_from_cache(&aw).await;
    let warm = tempfile::tempdir().unwrap();
    let out = skopeo::copy_to_oci(&format!("{}/{REPO}:v1", aw.host()), warm.path(), &[]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(skopeo::verify_oci_layout(warm.path()), 4);
    let c = Containerd::start();
    let (ok, _, err) = c.ctr(&[
        "-n",
        "redirects",
        "images",
        "pull",
        "--plain-http",
        &format!("{}/{REPO}:v1", aw.host()),
    ]);
    assert!(ok, "ctr pull: {err}");
    for b in img.blobs() {
        assert!(
            c.has_content("redirects", &b.digest),
            "ctr has {}",
            b.digest
        );
    }
    assert_eq!(
        served_from_cache(&aw).await,
        before,
        "blob bytes through archway"
    );
    let redirected = metric(aw.admin(), "archway_blob_redirects_total")
        .await
        .unwrap_or(0.0);
    assert!(redirected >= 2.0 * img.blobs().len() as f64, "{redirected}");

    // A Range GET is redirected too, and the object store answers the range.
    let r = http()
        .get(format!("{}{path}", aw.url()))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(r.headers()["docker-content-digest"], big.digest.as_str());
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let part = http()
        .get(&location)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206, "{location}");
    assert_eq!(&part.bytes().await.unwrap()[..], &big.data[10..20]);
    // HEAD is answered here, and a range past the end is refused here.
    let head = http()
        .head(format!("{}{path}", aw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        big.data.len().to_string().as_str()
    );
    let past = http()
        .get(format!("{}{path}", aw.url()))
        .header("range", format!("bytes={}-", big.data.len() + 10))
        .send()
        .await
        .unwrap();
    assert_eq!(past.status(), 416);
    // Another repository gets no redirect to content it cannot prove it has.
    let other = http()
        .get(format!(
            "{}/v2/elsewhere/app/blobs/{}",
            aw.url(),
            big.digest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_blobs_are_redirected_to_presigned_urls() {
    let s3 = S3::start("mirror").await;
    redirects("s3://mirror/cache", s3.storage_toml()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_blobs_are_redirected_to_sas_urls() {
    let az = Azurite::start("mirror").await;
    redirects("az://mirror/cache", az.storage_toml()).await;
}
