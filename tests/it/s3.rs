//! The cache in a real S3-speaking server (moto), shared by two replicas.

use crate::support::archway::{Archway, Settings};
use crate::support::images::{Image, Pusher};
use crate::support::registry::Upstream;
use crate::support::s3::S3;
use crate::support::{http, random_bytes, skopeo, unique_seed};

fn settings(up_url: &str, s3: &S3) -> Settings {
    Settings {
        storage_url: Some("s3://mirror/cache".into()),
        extra: s3.storage_toml(),
        ..Settings::single(up_url)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_bucket_share_the_cache() {
    let s3 = S3::start("mirror").await;
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
    Pusher::new(&up.url(), None)
        .image("shared/app", "v1", &img)
        .await;
    let one = Archway::start(&settings(&up.url(), &s3)).await;
    let two = Archway::start(&settings(&up.url(), &s3)).await;

    let dir = tempfile::tempdir().unwrap();
    let out = skopeo::copy_to_oci(&format!("{}/shared/app:v1", one.host()), dir.path(), &[]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(skopeo::verify_oci_layout(dir.path()), 4);
    let keys = s3.keys("mirror", "cache/blobs/").await;
    assert_eq!(
        keys.len(),
        4,
        "manifest, config and 2 layers in the bucket: {keys:?}"
    );

    // Replica two never saw the image, and the upstream is gone.
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_midway_leaves_nothing_in_the_bucket() {
    let s3 = S3::start("mirror").await;
    let data = random_bytes(unique_seed(), 10 * 1024 * 1024);
    let digest = crate::support::images::sha256(&data);
    let port = crate::support::fake::cut_server(data.len(), data[..9 * 1024 * 1024].to_vec()).await;
    let aw = Archway::start(&settings(&format!("http://127.0.0.1:{port}"), &s3)).await;
    let r = http()
        .get(format!("{}/v2/cut/app/blobs/{digest}", aw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().await.is_err(),
        "a cut blob was delivered as complete"
    );
    assert_eq!(s3.keys("mirror", "cache/").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_not_ready_when_the_bucket_stops_answering() {
    let s3 = S3::start("mirror").await;
    let up = Upstream::start().await;
    let admin = crate::support::free_port();
    let mut settings = settings(&up.url(), &s3);
    settings
        .extra
        .push_str(&format!("\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"));
    let aw = Archway::start(&settings).await;
    let readyz = format!("http://127.0.0.1:{admin}/readyz");
    assert_eq!(http().get(&readyz).send().await.unwrap().status(), 200);
    drop(s3);
    assert_eq!(http().get(&readyz).send().await.unwrap().status(), 503);
    let healthz = format!("http://127.0.0.1:{admin}/healthz");
    assert_eq!(
        http().get(&healthz).send().await.unwrap().status(),
        200,
        "alive all the same"
    );
    drop(aw);
}
