//! Criterion benchmarks of the per-request hot paths: parsing what every request carries
//! (path, repository name, digest, Accept) and the manifest fields read on every cold fetch.
//!
//! `cargo bench --bench hot_paths`

use criterion::{black_box, criterion_group, criterion_main, Criterion};

use archway::http::endpoint;
use archway::oci::media::Accept;
use archway::oci::{manifest, Digest, RepoName};

const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn request_parsing(c: &mut Criterion) {
    let path = format!("/v2/docker.io/library/alpine/blobs/{DIGEST}");
    c.bench_function("endpoint::parse blob path", |b| {
        b.iter(|| endpoint::parse(black_box(&path)))
    });
    c.bench_function("RepoName::from_str", |b| {
        b.iter(|| black_box("docker.io/library/go-hello-world").parse::<RepoName>())
    });
    c.bench_function("Digest::from_str", |b| {
        b.iter(|| black_box(DIGEST).parse::<Digest>())
    });
    let skopeo = [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
    ];
    c.bench_function("Accept::parse (skopeo's six lines)", |b| {
        b.iter(|| Accept::parse(black_box(skopeo)).accepts_index())
    });
}

fn manifests(c: &mut Criterion) {
    let layers: Vec<String> = (0..10)
        .map(|i| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{:064x}","size":{}}}"#,
                i,
                1000 + i
            )
        })
        .collect();
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{DIGEST}","size":2}},"layers":[{}]}}"#,
        layers.join(",")
    );
    c.bench_function("manifest::parse (10 layers)", |b| {
        b.iter(|| manifest::parse(black_box(m.as_bytes()), None))
    });
    let blob = vec![7u8; 1 << 20];
    c.bench_function("sha256 verify 1 MiB", |b| {
        let d = Digest::sha256_of(&blob);
        b.iter(|| d.verify(black_box(&blob)))
    });
}

criterion_group!(benches, request_parsing, manifests);
criterion_main!(benches);
