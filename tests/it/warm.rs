//! Warming the cache before nodes pull: `archway warm` (the real binary on the same cache as
//! the server), `POST /warm` in the running server, and prewarming a cluster's platforms
//! when a node pulls one. Whether anything reached the upstream is read from the real
//! docker-registry's access log.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::multiarch::{settings, tutorial, REPO};
use crate::support::archway::{render, Archway, Settings, UpstreamSpec};
use crate::support::images::{Image, Pusher};
use crate::support::registry::Upstream;
use crate::support::{http, random_bytes, skopeo, unique_seed, wait_metric};

/// Every GET the upstream has answered so far.
fn upstream_gets(up: &Upstream) -> usize {
    up.log_text()
        .lines()
        .filter(|l| l.contains("\"GET /v2/"))
        .count()
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn warm(config: &std::path::Path, args: &[&str]) -> Run {
    let out = Command::new(Archway::bin())
        .arg("warm")
        .arg("--config")
        .arg(config)
        .args(args)
        .env("ARCHWAY_LOG", "warn")
        .output()
        .expect("run archway warm");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `N blobs fetched (S), N already cached, N failed` → the three counts.
fn summary(stdout: &str) -> (usize, usize, usize) {
    let line = stdout
        .lines()
        .find(|l| l.contains("blobs fetched"))
        .unwrap_or_else(|| panic!("no summary in {stdout:?}"));
    let n = |after: &str| -> usize {
        let at = line
            .find(after)
            .unwrap_or_else(|| panic!("{after:?} in {line:?}"));
        line[..at]
            .rsplit(|c: char| !c.is_ascii_digit())
            .find(|w| !w.is_empty())
            .unwrap()
            .parse()
            .unwrap()
    };
    (n(" blobs fetched"), n(" already cached"), n(" failed"))
}

/// `skopeo copy` of one platform of `reference` through `aw`.
fn pull(aw: &Archway, reference: &str, platform: &str) {
    let mut parts = platform.split('/').skip(1);
    let arch = parts.next().unwrap();
    let mut extra = vec!["--override-arch", arch];
    if let Some(v) = parts.next() {
        extra.extend(["--override-variant", v]);
    }
    let dir = tempfile::tempdir().unwrap();
    let out = skopeo::copy_to_oci(&format!("{}/{reference}", aw.host()), dir.path(), &extra);
    assert!(out.ok, "{platform}: {}", out.stderr);
    skopeo::verify_oci_layout(dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archway_warm_fills_every_platform_so_pulls_never_reach_the_upstream() {
    let t = tutorial().await;
    let s = settings(&t.up, "1h", "");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("archway.toml");
    std::fs::write(&config, render(&s, dir.path())).unwrap();
    let reference = format!("docker.io/{REPO}:latest");

    let first = warm(&config, &[&reference]);
    assert!(first.ok, "{}\n{}", first.stdout, first.stderr);
    // The synthesized index's five platforms (riscv64 is refused): config and layer each.
    let blobs: Vec<&str> = [&t.amd64, &t.arm64, &t.s390x, &t.ppc64le, &t.armv7]
        .iter()
        .flat_map(|i| i.blobs())
        .map(|b| b.digest.as_str())
        .collect();
    for d in &blobs {
        // Synthesis already read the fallbacks' configs (to check their architecture).
        assert!(
            first.stderr.contains(&format!("fetched  {d}"))
                || first.stderr.contains(&format!("cached   {d}")),
            "one line per blob when stderr is not a terminal: {d}\n{}",
            first.stderr
        );
        let gets = t.up.count("GET", &format!("/v2/{REPO}/blobs/{d}"))
            + t.up
                .count("GET", &format!("/v2/arm32v7/go-hello-world/blobs/{d}"));
        assert_eq!(gets, 1, "{d}");
    }
    let (fetched, cached, failed) = summary(&first.stdout);
    assert_eq!(
        (fetched + cached, failed),
        (blobs.len(), 0),
        "{}",
        first.stdout
    );
    assert!(fetched >= 6, "every layer was fetched: {}", first.stdout);

    // The server on the same cache: every platform pulls without the upstream.
    let before = upstream_gets(&t.up);
    let aw = Archway::start_in(dir, &s).await;
    for p in [
        "linux/amd64",
        "linux/arm64",
        "linux/s390x",
        "linux/ppc64le",
        "linux/arm/v7",
    ] {
        pull(&aw, &format!("{REPO}:latest"), p);
    }
    assert_eq!(
        upstream_gets(&t.up),
        before,
        "pulls after a warm make no upstream GET:\n{}",
        t.up.log_text()
    );

    // Idempotent: a second warm fetches nothing.
    let again = warm(&aw.config, &[&reference]);
    assert!(again.ok, "{}", again.stderr);
    assert_eq!(
        summary(&again.stdout),
        (0, blobs.len(), 0),
        "{}",
        again.stdout
    );
    assert_eq!(upstream_gets(&t.up), before);

    // A tag that does not exist: an error naming it, and a failing exit status.
    let missing = warm(&aw.config, &[&format!("docker.io/{REPO}:no-such-tag")]);
    assert!(!missing.ok);
    assert!(
        missing.stderr.contains("no-such-tag") && missing.stderr.contains("unknown"),
        "{}",
        missing.stderr
    );
    let bad = warm(&aw.config, &["--platform", "linux", &reference]);
    assert!(
        !bad.ok && bad.stderr.contains("--platform \"linux\""),
        "{}",
        bad.stderr
    );
}

/// An upstream with one index of amd64, arm64 and s390x images, all of its own.
async fn three_platforms(repo: &str) -> (Upstream, [Image; 3]) {
    let up = Upstream::start().await;
    let push = Pusher::new(&up.url(), None);
    let img = |p: &str| {
        Image::new(
            p,
            vec![
                random_bytes(unique_seed(), 30_000),
                random_bytes(unique_seed(), 10_000),
            ],
        )
    };
    let images = [img("linux/amd64"), img("linux/arm64"), img("linux/s390x")];
    push.index(
        repo,
        "v1",
        &[
            ("linux/amd64", &images[0]),
            ("linux/arm64", &images[1]),
            ("linux/s390x", &images[2]),
        ],
    )
    .await;
    (up, images)
}

fn blob_gets(up: &Upstream, repo: &str, img: &Image) -> Vec<usize> {
    img.blobs()
        .iter()
        .map(|b| up.blob_gets(repo, &b.digest))
        .collect()
}

async fn job(aw: &Archway, id: &str) -> Value {
    let start = std::time::Instant::now();
    loop {
        let r = crate::support::admin_json(aw.admin(), &format!("/warm/{id}")).await;
        if r["state"] != "running" {
            return r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "job still running: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post_warm(aw: &Archway, body: &str) -> (u16, Value) {
    let r = http()
        .post(format!("http://127.0.0.1:{}/warm", aw.admin()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_warm_runs_a_job_for_the_platforms_asked() {
    let repo = "team/app";
    let (up, [amd64, arm64, s390x]) = three_platforms(repo).await;
    let mut s = Settings::single(&up.url());
    s.admin = true;
    let aw = Archway::start(&s).await;

    let (status, started) = post_warm(
        &aw,
        r#"{"refs":["upstream.test/team/app:v1"],"platforms":["linux/arm64"]}"#,
    )
    .await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().unwrap();
    assert_eq!(started["status"], format!("/warm/{id}"));
    let report = job(&aw, id).await;
    assert_eq!(report["state"], "done", "{report}");
    assert_eq!(report["fetched"], 3, "{report}");
    assert_eq!(report["failed"], 0);
    assert_eq!(blob_gets(&up, repo, &arm64), [1, 1, 1]);
    assert_eq!(
        blob_gets(&up, repo, &amd64),
        [0, 0, 0],
        "only the platform asked"
    );
    assert_eq!(blob_gets(&up, repo, &s390x), [0, 0, 0]);

    // Again: everything cached now.
    let (_, again) = post_warm(
        &aw,
        r#"{"refs":["upstream.test/team/app:v1"],"platforms":["linux/arm64"]}"#,
    )
    .await;
    let report = job(&aw, again["id"].as_str().unwrap()).await;
    assert_eq!(
        (report["fetched"].as_u64(), report["cached"].as_u64()),
        (Some(0), Some(3))
    );

    // A reference that does not resolve fails the job, and says why.
    let (_, missing) = post_warm(&aw, r#"{"refs":["upstream.test/team/app:nope"]}"#).await;
    let report = job(&aw, missing["id"].as_str().unwrap()).await;
    assert_eq!(report["state"], "failed");
    assert!(
        report["errors"][0].as_str().unwrap().contains("nope"),
        "{report}"
    );

    // Requests that cannot be started are refused at once, in the OCI error format.
    for body in [
        r#"{"refs":[]}"#,
        r#"{"refs":["x"],"platforms":["linux"]}"#,
        "not json",
    ] {
        let (status, e) = post_warm(&aw, body).await;
        assert_eq!(status, 400, "{body}");
        assert!(e["errors"][0]["code"].is_string(), "{e}");
    }
    let r = http()
        .get(format!("http://127.0.0.1:{}/warm/unknown", aw.admin()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulling_one_platform_prewarms_the_clusters_others_only() {
    let repo = "team/app";
    let (up, [amd64, arm64, s390x]) = three_platforms(repo).await;
    let s = Settings {
        upstreams: vec![UpstreamSpec::new("up", &up.url(), &["upstream.test"], true)],
        admin: true,
        extra: "[multiarch]\ncluster_platforms = [\"linux/amd64\", \"linux/arm64\"]\nprewarm = true\nprewarm_concurrency = 2\n".into(),
        ..Settings::single(&up.url())
    };
    let aw = Archway::start(&s).await;

    pull(&aw, &format!("{repo}:v1"), "linux/amd64");
    let arm64_bytes: usize = arm64.blobs().iter().map(|b| b.data.len()).sum();
    assert!(
        wait_metric(
            aw.admin(),
            "archway_prewarm_bytes_total",
            arm64_bytes as f64,
            Duration::from_secs(30)
        )
        .await,
        "arm64 was prewarmed: {:?}\n{}",
        crate::support::metric(aw.admin(), "archway_prewarm_bytes_total").await,
        aw.log_text()
    );
    assert_eq!(blob_gets(&up, repo, &amd64), [1, 1, 1]);
    assert_eq!(
        blob_gets(&up, repo, &arm64),
        [1, 1, 1],
        "fetched with no client asking"
    );
    assert_eq!(
        blob_gets(&up, repo, &s390x),
        [0, 0, 0],
        "s390x is not a cluster platform"
    );
    assert_eq!(
        crate::support::metric(aw.admin(), "archway_prewarm_bytes_total").await,
        Some(arm64_bytes as f64),
        "counts what prewarm fetched, not the client's pull"
    );

    // The first arm64 node finds it all cached.
    pull(&aw, &format!("{repo}:v1"), "linux/arm64");
    assert_eq!(blob_gets(&up, repo, &arm64), [1, 1, 1]);
    assert_eq!(blob_gets(&up, repo, &s390x), [0, 0, 0]);
}
