//! Criterion benchmarks of the per-request hot paths: parsing what every request carries
//! (path, repository name, digest, Accept), the manifest fields read on every cold fetch,
//! noting an access for the bounded cache, and planning a collection over a large cache.
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

fn bounded_cache(c: &mut Criterion) {
    use archway::gc::plan::{plan, Atimes, Inventory, Object, RootKey};
    use archway::gc::AccessLog;
    use std::sync::Arc;

    let log = AccessLog::new(true);
    let up: Arc<str> = "hub".into();
    let repo: RepoName = "library/alpine".parse().unwrap();
    let d: Digest = DIGEST.parse().unwrap();
    c.bench_function("AccessLog::manifest (note one access)", |b| {
        b.iter(|| log.manifest(black_box(&up), black_box(&repo), black_box(&d)))
    });

    // 10,000 images in 1,000 repositories, 4 layers each, one of them a base shared by the
    // 100 images of each of 100 families; a tenth used recently.
    let digest = |tag: &str, i: usize| Digest::sha256_of(format!("{tag}{i}").as_bytes());
    let mut inv = Inventory::default();
    let mut at = Atimes::default();
    for i in 0..10_000 {
        let m = digest("m", i);
        let mut refs = vec![digest("base", i % 100), digest("cfg", i)];
        refs.extend((0..3).map(|l| digest(&format!("l{l}-"), i)));
        for r in &refs {
            inv.content.insert(
                r.clone(),
                Object {
                    size: 10 << 20,
                    modified: i as u64,
                },
            );
        }
        inv.content.insert(
            m.clone(),
            Object {
                size: 2000,
                modified: i as u64,
            },
        );
        inv.refs.insert(m.clone(), refs.into());
        let root = RootKey {
            upstream: up.clone(),
            repo: format!("org{}/app", i % 1000).parse().unwrap(),
            digest: m,
        };
        if i % 10 == 0 {
            at.roots.insert(root.clone(), 1_000_000 + i as u64);
        }
        inv.roots.insert(root, i as u64);
    }
    let total: u64 = inv.content.values().map(|o| o.size).sum();
    c.bench_function("gc plan: 10k images, evict a quarter", |b| {
        b.iter(|| plan(black_box(&inv), &at, total / 4 * 3, u64::MAX))
    });
}

criterion_group!(benches, request_parsing, manifests, bounded_cache);
criterion_main!(benches);
