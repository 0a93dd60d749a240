//! N concurrent cold pulls of one image = one upstream GET per blob, with every client
//! receiving verified bytes.

use crate::support::archway::{Archway, Settings};
use crate::support::images::{Image, Pusher};
use crate::support::registry::Upstream;
use crate::support::{random_bytes, skopeo, unique_seed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_cold_pulls_fetch_each_blob_once() {
    let up = Upstream::start().await;
    let seed = unique_seed();
    let img = Image::new(
        "linux/amd64",
        vec![
            random_bytes(seed, 20 * 1024 * 1024),
            random_bytes(seed + 1, 1024 * 1024),
            random_bytes(seed + 2, 4096),
        ],
    );
    Pusher::new(&up.url(), None)
        .image("herd/app", "v1", &img)
        .await;
    let aw = Archway::start(&Settings::single(&up.url())).await;

    let src = format!("{}/herd/app:v1", aw.host());
    let dirs: Vec<_> = (0..16).map(|_| tempfile::tempdir().unwrap()).collect();
    let handles: Vec<_> = dirs
        .iter()
        .map(|d| {
            let (src, path) = (src.clone(), d.path().to_path_buf());
            std::thread::spawn(move || skopeo::copy_to_oci(&src, &path, &[]))
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        assert!(out.ok, "a concurrent pull failed: {}", out.stderr);
    }
    for d in &dirs {
        assert_eq!(skopeo::verify_oci_layout(d.path()), 5);
    }
    for b in img.blobs() {
        assert_eq!(
            up.blob_gets("herd/app", &b.digest),
            1,
            "blob {} fetched more than once upstream; archway log:\n{}",
            b.digest,
            aw.log_text()
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("blob"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert_eq!(up.count("GET", "/v2/herd/app/manifests/v1"), 1);
}
