//! Shutdown on SIGTERM: in-flight responses and blob fills finish (a rolling restart throws
//! away no half-fetched layer), within `server.shutdown_grace`. The upstream holds each
//! transfer at a gate the test opens only after archway has logged the signal, so the
//! transfer is certainly still running when the signal lands.

use futures_util::StreamExt;

use crate::support::archway::{Archway, Settings};
use crate::support::fake::{gated_server, Gated};
use crate::support::{http, random_bytes, unique_seed};

const SIZE: usize = 1_000_000;

fn cached_file(aw: &Archway, digest: &str) -> std::path::PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    aw.cache_dir()
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(hex)
}

/// A blob behind an upstream gate, and a GET for it through archway that has received its
/// first bytes: a transfer under way.
async fn transfer_under_way(
    settings: impl FnOnce(&str) -> Settings,
) -> (Vec<u8>, String, Gated, Archway, reqwest::Response) {
    let data = random_bytes(unique_seed(), SIZE);
    let digest = crate::support::images::sha256(&data);
    let gated = gated_server(data.clone(), 300_000).await;
    let aw = Archway::start(&settings(&gated.raw.url())).await;
    let r = http()
        .get(format!("{}/v2/slow/app/blobs/{digest}", aw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    (data, digest, gated, aw, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_transfers_and_fills_finish() {
    let (data, digest, gated, mut aw, r) = transfer_under_way(Settings::single).await;
    let mut body = r.bytes_stream();
    let first = body.next().await.expect("a first chunk").unwrap();
    aw.sigterm();
    aw.wait_log("shutting down").await;
    // The signal has landed and the upstream has not sent the rest yet.
    gated.open();
    let mut got = first.to_vec();
    while let Some(chunk) = body.next().await {
        got.extend_from_slice(&chunk.expect("the response completes"));
    }
    assert_eq!(got, data, "the in-flight response completed");
    assert!(aw.wait_exit(), "archway exited cleanly after SIGTERM");
    assert!(
        cached_file(&aw, &digest).exists(),
        "the fill finished and the blob is cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_fills_whose_client_went_away() {
    let (_, digest, gated, mut aw, r) = transfer_under_way(Settings::single).await;
    drop(r); // the client gives up; the fill goes on without it
    aw.sigterm();
    aw.wait_log("shutting down").await;
    gated.open();
    assert!(aw.wait_exit(), "archway exited cleanly after SIGTERM");
    assert!(
        cached_file(&aw, &digest).exists(),
        "shutdown waited for the fill, and the blob is cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_caps_the_wait_for_a_transfer_that_never_ends() {
    // The gate stays shut: the upstream never sends the rest, and would only time out after
    // read_timeout, long after the grace period.
    let (_, digest, _gated, mut aw, r) = transfer_under_way(|url| Settings {
        read_timeout: "120s".into(),
        shutdown_grace: Some("1s".into()),
        ..Settings::single(url)
    })
    .await;
    let mut body = r.bytes_stream();
    body.next().await.expect("a first chunk").unwrap();
    aw.sigterm();
    assert!(
        aw.wait_exit(),
        "archway exited cleanly when the grace period was over"
    );
    let log = aw.log_text();
    assert!(log.contains("shutdown grace period over"), "{log}");
    assert!(
        !log.contains("timed out"),
        "the cap, not the read timeout, ended it: {log}"
    );
    assert!(!cached_file(&aw, &digest).exists());
}
