//! Test support: a real upstream (`docker-registry`), the real `archway` binary, an image
//! builder that pushes through the distribution API, and an in-process fault injector.

#![allow(dead_code)]

pub mod archway;
pub mod azure;
pub mod chromium;
pub mod cosign;
pub mod fake;
pub mod images;
pub mod registry;
pub mod relay;
pub mod s3;
pub mod skopeo;
pub mod tmpfs;

use std::time::Duration;

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

/// The body of a GET that must succeed.
pub async fn get_body(url: &str) -> bytes::Bytes {
    let r = http().get(url).send().await.expect("GET");
    assert!(r.status().is_success(), "GET {url}: {}", r.status());
    r.bytes().await.expect("body")
}

/// Waits until a line of the log at `log` satisfies `find`, and returns what it found: how a
/// server started with port 0 tells which port it bound. Fails if `child` exits first (it
/// could not bind, or crashed) or `deadline` passes. Start-up readiness, not synchronisation
/// between test steps.
pub async fn wait_for_log<T>(
    log: &std::path::Path,
    child: &mut std::process::Child,
    deadline: Duration,
    find: impl Fn(&str) -> Option<T>,
) -> T {
    let start = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(found) = text.lines().find_map(&find) {
            return found;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{} exited ({status}) before it was ready:\n{text}",
                log.display()
            );
        }
        assert!(
            start.elapsed() < deadline,
            "not ready after {deadline:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The port in `line` right after `prefix` (`listening on 127.0.0.1:` → 43121).
pub fn port_after(line: &str, prefix: &str) -> Option<u16> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Pseudo-random bytes that differ per seed, so every test image has unique blobs.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A seed unique to this process and call, so parallel tests never share blobs by accident.
pub fn unique_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (N.fetch_add(1, Ordering::SeqCst) << 48) ^ (std::process::id() as u64) << 32
}

/// Sends a request line as written, without any client-side path normalisation (reqwest
/// resolves `..`), and returns the status code.
pub fn raw_status(port: u16, method: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The status and the first OCI error code of an error response.
pub async fn oci_error(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.expect("an OCI error body");
    let code = body["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (status, code)
}

/// A JSON document from an admin listener (`/coverage.json`, `/warm/<id>`), which must
/// answer it with 200.
pub async fn admin_json(admin_port: u16, path: &str) -> serde_json::Value {
    let r = http()
        .get(format!("http://127.0.0.1:{admin_port}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {}", chain(&e)));
    assert_eq!(r.status(), 200, "{path}");
    r.json()
        .await
        .unwrap_or_else(|e| panic!("{path}: not JSON: {}", chain(&e)))
}

/// The value of one series on an admin listener's `/metrics`, e.g.
/// `archway_gc_runs_total{outcome="ok"}`; `None` while it is absent.
pub async fn metric(admin_port: u16, series: &str) -> Option<f64> {
    let text = http()
        .get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Polls a metric until it reaches `at_least` or `deadline` passes: waiting for background
/// work (a collection, a reload) that the metric reports as done.
pub async fn wait_metric(admin_port: u16, series: &str, at_least: f64, deadline: Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < deadline {
        if metric(admin_port, series)
            .await
            .is_some_and(|v| v >= at_least)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// An error with its causes, for messages.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

/// GETs a blob of `len` bytes whose fill fails after the upstream's headers arrived: archway
/// has answered `200` with the whole length, streams what it got, and breaks the body off
/// before the end, so the client never holds a complete body of unverified content. Returns
/// how many bytes arrived.
pub async fn broken_transfer(url: &str, len: usize) -> usize {
    broken_transfer_then(url, len, || {}).await
}

/// [`broken_transfer`], calling `at_head` once the `200` and its length have arrived and
/// before the body is read: for an upstream the test holds back until then.
pub async fn broken_transfer_then(url: &str, len: usize, at_head: impl FnOnce()) -> usize {
    use futures_util::StreamExt;
    let r = http()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: no response: {}", crate::support::chain(&e)));
    assert_eq!(r.status(), 200, "{url}");
    assert_eq!(
        r.headers()["content-length"].to_str().unwrap(),
        len.to_string(),
        "{url}: the announced length"
    );
    at_head();
    let mut body = r.bytes_stream();
    let mut received = 0;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(b) => received += b.len(),
            Err(_) => {
                assert!(
                    received < len,
                    "{url}: {received} of {len} bytes, then an error"
                );
                return received;
            }
        }
    }
    panic!("{url}: delivered as complete ({received} of {len} bytes)");
}

/// Writes an htpasswd file with one bcrypt entry (as `htpasswd -B` does) into `dir`.
pub fn htpasswd(dir: &std::path::Path, user: &str, password: &str) -> std::path::PathBuf {
    let path = dir.join("htpasswd");
    let hash = bcrypt::hash(password, 4).expect("bcrypt");
    std::fs::write(&path, format!("{user}:{hash}\n")).expect("write htpasswd");
    path
}

/// A test tool installed by `scripts/install-test-deps.sh` under
/// `$ARCHWAY_TEST_TOOLS` (default `/opt/archway-test-tools`), else `name` on PATH.
pub fn test_tool(under_tools: &str, name: &str) -> String {
    let tools =
        std::env::var("ARCHWAY_TEST_TOOLS").unwrap_or_else(|_| "/opt/archway-test-tools".into());
    let local = format!("{tools}/{under_tools}");
    if std::path::Path::new(&local).exists() {
        local
    } else {
        name.into()
    }
}

/// Stops a server process a test started, and reaps it.
pub fn reap(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}
