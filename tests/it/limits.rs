//! What hostile or careless clients may hold of the registry listener: heads dripped byte by
//! byte are cut at `server.header_timeout`, oversized heads get 431, thousands of idle
//! connections leave room for real requests, `server.max_connections` holds, and HTTP/2
//! connections are bounded in streams and header size and closed when they reset streams
//! as fast as they open them (rapid reset, CVE-2023-44487).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::archway::{Archway, Settings};
use crate::support::registry::Upstream;
use crate::support::{http, metric, wait_metric};

/// Enough descriptors for thousands of sockets in this process (the soft limit is often
/// 1024; archway raises its own).
fn more_files() {
    rlimit::increase_nofile_limit(u64::MAX).expect("raise RLIMIT_NOFILE");
}

async fn settings(extra_server: &str) -> (Upstream, Settings) {
    let up = Upstream::start().await;
    let mut s = Settings::single(&up.url());
    s.admin = true;
    s.server_extra = extra_server.into();
    (up, s)
}

/// The status line's code of a raw HTTP/1.1 exchange on `stream`.
async fn status_of(stream: &mut TcpStream) -> Option<u16> {
    let mut buf = vec![0u8; 1024];
    let n = stream.read(&mut buf).await.ok()?;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1)?.parse().ok()
}

async fn base_ok(aw: &Archway) {
    let r = http()
        .get(format!("{}/v2/", aw.url()))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("a normal request is served");
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_dripped_byte_by_byte_are_cut_at_the_header_timeout() {
    more_files();
    let (_up, s) = settings("header_timeout = \"1s\"\nidle_timeout = \"30s\"").await;
    let aw = Archway::start(&s).await;
    let head = b"GET /v2/ HTTP/1.1\r\nHost: archway\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut drippers = Vec::new();
    for _ in 0..300 {
        let mut c = TcpStream::connect(("127.0.0.1", aw.port)).await.unwrap();
        drippers.push(tokio::spawn(async move {
            // One byte every 100 ms: the head would take seconds longer than allowed.
            for b in head.iter() {
                // Once archway has closed, a write soon fails (the peer answers with RST).
                if c.write_all(&[*b]).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        }));
    }
    assert!(
        wait_metric(
            aw.admin(),
            "archway_connections_open",
            300.0,
            Duration::from_secs(20)
        )
        .await,
        "all 300 were accepted"
    );
    // Meanwhile, real clients are served.
    base_ok(&aw).await;
    let mut closed = 0;
    for d in drippers {
        if tokio::time::timeout(Duration::from_secs(60), d)
            .await
            .expect("every slow connection ends long before its head would")
            .unwrap()
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 300, "archway closed every dripping connection");
    base_ok(&aw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_80_kib_head_gets_431_and_a_16_kib_one_is_served() {
    let (_up, s) = settings("").await;
    let aw = Archway::start(&s).await;
    for (size, want) in [(16 * 1024, 200), (80 * 1024, 431)] {
        let mut c = TcpStream::connect(("127.0.0.1", aw.port)).await.unwrap();
        let filler = "a".repeat(size);
        let req = format!("GET /v2/ HTTP/1.1\r\nHost: archway\r\nX-Big: {filler}\r\n\r\n");
        // The server may answer and close before it has read all of an oversized head.
        let _ = c.write_all(req.as_bytes()).await;
        assert_eq!(
            status_of(&mut c).await,
            Some(want),
            "{size} bytes of header"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_connections_leave_room_and_max_connections_holds() {
    more_files();
    let (_up, s) = settings("").await;
    let aw = Archway::start(&s).await;
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(TcpStream::connect(("127.0.0.1", aw.port)).await.unwrap());
    }
    assert!(
        wait_metric(
            aw.admin(),
            "archway_connections_open",
            2000.0,
            Duration::from_secs(30)
        )
        .await,
        "{:?}",
        metric(aw.admin(), "archway_connections_open").await
    );
    base_ok(&aw).await;
    drop(idle);

    // At most 20 at once: the 21st connection waits in the backlog until one ends.
    let (_up2, s) = settings("max_connections = 20").await;
    let aw = Archway::start(&s).await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(("127.0.0.1", aw.port)).await.unwrap());
    }
    assert!(
        wait_metric(
            aw.admin(),
            "archway_connections_open",
            20.0,
            Duration::from_secs(10)
        )
        .await
    );
    let waiting = tokio::spawn({
        let url = format!("{}/v2/", aw.url());
        async move { http().get(url).send().await.map(|r| r.status().as_u16()) }
    });
    let mut extra = TcpStream::connect(("127.0.0.1", aw.port)).await.unwrap();
    extra
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut probe = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), extra.read(&mut probe))
            .await
            .is_err(),
        "no answer while every slot is held"
    );
    assert_eq!(
        metric(aw.admin(), "archway_connections_open").await,
        Some(20.0)
    );
    assert!(!waiting.is_finished());
    drop(held);
    assert_eq!(
        waiting.await.unwrap().unwrap(),
        200,
        "served once slots were free"
    );
    assert_eq!(status_of(&mut extra).await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_with_no_request_are_closed_after_the_idle_timeout() {
    let (_up, s) = settings("idle_timeout = \"1s\"").await;
    let aw = Archway::start(&s).await;
    // One that never sends anything, and one that made a request and kept the connection.
    let mut silent = TcpStream::connect(("127.0.0.1", aw.port)).await.unwrap();
    let mut kept = TcpStream::connect(("127.0.0.1", aw.port)).await.unwrap();
    kept.write_all(b"GET /v2/ HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status_of(&mut kept).await, Some(200));
    for (name, c) in [("silent", &mut silent), ("kept", &mut kept)] {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(30), c.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{name}: not closed by archway:\n{}", aw.log_text()))
            .unwrap_or(0);
        assert_eq!(n, 0, "{name}: closed without a response");
    }
    base_ok(&aw).await;
}

/// HTTP/2 with prior knowledge over cleartext (the listener detects the preface), the
/// connection driven on its own task.
async fn h2_connect(
    aw: &Archway,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(("127.0.0.1", aw.port)).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    (client, tokio::spawn(conn))
}

fn h2_get(aw: &Archway, extra: Option<(&str, String)>) -> http::Request<()> {
    let mut r = http::Request::get(format!("http://127.0.0.1:{}/v2/", aw.port))
        .body(())
        .unwrap();
    if let Some((name, value)) = extra {
        r.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(&value).unwrap(),
        );
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_bounds_streams_and_headers_and_closes_rapid_reset_connections() {
    let (_up, s) = settings("").await;
    let aw = Archway::start(&s).await;

    // The stream bound is announced in the server's SETTINGS (hyper's own default is 200).
    let (client, _conn) = h2_connect(&aw).await;
    let mut client = client.ready().await.unwrap();
    let (resp, _) = client.send_request(h2_get(&aw, None), true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    assert_eq!(client.current_max_send_streams(), 256);

    // Header lists: 16 KiB is served, 80 KiB is refused (server.max_header_bytes, 32 KiB).
    let mut client = client.ready().await.unwrap();
    let (resp, _) = client
        .send_request(h2_get(&aw, Some(("x-big", "a".repeat(16 * 1024)))), true)
        .unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    let mut client = client.ready().await.unwrap();
    let (resp, _) = client
        .send_request(h2_get(&aw, Some(("x-big", "a".repeat(80 * 1024)))), true)
        .unwrap();
    let status = resp.await.map(|r| r.status().as_u16());
    assert!(
        matches!(status, Ok(431))
            || status
                .as_ref()
                .is_err_and(|e| e.is_reset() || e.is_go_away()),
        "an 80 KiB header list must be refused: {status:?}"
    );

    // Rapid reset: every stream cancelled as soon as it is opened. The connection is ended
    // with GOAWAY ENHANCE_YOUR_CALM long before the client runs out of streams to open.
    let (mut client, conn) = h2_connect(&aw).await;
    let mut opened = 0u32;
    while opened < 100_000 {
        client = match client.ready().await {
            Ok(c) => c,
            Err(_) => break,
        };
        match client.send_request(h2_get(&aw, None), true) {
            Ok((_resp, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                opened += 1;
            }
            Err(_) => break,
        }
        // Let the connection task write (and read the GOAWAY) between bursts.
        if opened.is_multiple_of(64) {
            tokio::task::yield_now().await;
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(30), conn)
        .await
        .expect("the attacking connection is ended")
        .unwrap();
    let e = ended.expect_err("the server ends the connection with an error");
    // The GOAWAY, or, when the client was still writing as the server closed the socket
    // after it, the broken pipe that beat the GOAWAY to the client.
    assert!(
        e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || e.is_io(),
        "after {opened} reset streams: {e:?}"
    );
    assert!(opened < 100_000, "the connection was ended early: {opened}");
    // Everyone else is still served.
    base_ok(&aw).await;
}
