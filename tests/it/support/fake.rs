//! An in-process upstream for fault injection only: it serves what the test tells it to,
//! including wrong bytes, cut connections, 429s and auth challenges, and counts requests.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

pub type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// What to answer for one path.
#[derive(Clone)]
pub enum Reply {
    Ok {
        content_type: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    Status(u16, Vec<(String, String)>),
    /// No answer at all: a connection that stays silent until the client gives up.
    Hang,
}

/// A request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
}

type Handler = Arc<dyn Fn(&Request<Incoming>) -> Option<Reply> + Send + Sync>;

#[derive(Clone)]
pub struct Fake {
    pub port: u16,
    routes: Arc<Mutex<HashMap<String, Reply>>>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    handler: Arc<Mutex<Option<Handler>>>,
}

impl Fake {
    pub async fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let fake = Fake {
            port,
            routes: Arc::default(),
            seen: Arc::default(),
            handler: Arc::default(),
        };
        let f = fake.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let f = f.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let f = f.clone();
                        async move { Ok::<_, Infallible>(f.answer(req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        fake
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn route(&self, path: &str, reply: Reply) {
        self.routes
            .lock()
            .expect("lock")
            .insert(path.to_string(), reply);
    }

    /// A custom handler tried before the fixed routes.
    pub fn handler(&self, h: impl Fn(&Request<Incoming>) -> Option<Reply> + Send + Sync + 'static) {
        *self.handler.lock().expect("lock") = Some(Arc::new(h));
    }

    pub fn count(&self, method: &str, path: &str) -> usize {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.method == method && s.path == path)
            .count()
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        self.seen.lock().expect("lock").push(Seen {
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            authorization: req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        });
        let custom = self.handler.lock().expect("lock").clone();
        let reply = custom
            .and_then(|h| h(&req))
            .or_else(|| {
                self.routes
                    .lock()
                    .expect("lock")
                    .get(req.uri().path())
                    .cloned()
            })
            .unwrap_or(Reply::Status(404, vec![]));
        let head = req.method() == http::Method::HEAD;
        let full = |b: Vec<u8>| Full::new(Bytes::from(b)).map_err(|n| match n {}).boxed();
        match reply {
            Reply::Ok {
                content_type,
                headers,
                body,
            } => {
                let len = body.len();
                let mut r = Response::new(if head { full(vec![]) } else { full(body) });
                r.headers_mut()
                    .insert("content-type", content_type.parse().expect("header"));
                r.headers_mut().insert("content-length", len.into());
                for (k, v) in headers {
                    r.headers_mut().insert(
                        http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                        v.parse().expect("value"),
                    );
                }
                r
            }
            Reply::Hang => std::future::pending().await,
            Reply::Status(code, headers) => {
                let mut r = Response::new(full(
                    br#"{"errors":[{"code":"X","message":"injected"}]}"#.to_vec(),
                ));
                *r.status_mut() = StatusCode::from_u16(code).expect("status");
                for (k, v) in headers {
                    r.headers_mut().insert(
                        http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                        v.parse().expect("value"),
                    );
                }
                r
            }
        }
    }
}

/// A raw upstream: where it listens, and how many requests it has read.
pub struct Raw {
    pub port: u16,
    requests: Arc<std::sync::atomic::AtomicUsize>,
}

impl Raw {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A raw TCP upstream that answers every request with `200`, a `Content-Length` of `len`,
/// the first bytes of the body, and then closes the connection: a transfer cut mid-blob.
pub async fn cut_server(len: usize, prefix: Vec<u8>) -> Raw {
    partial_server(len, prefix, false).await
}

/// Like [`cut_server`], but the connection stays open and silent: a stalled upstream.
pub async fn stall_server(len: usize, prefix: Vec<u8>) -> Raw {
    partial_server(len, prefix, true).await
}

async fn partial_server(len: usize, prefix: Vec<u8>, stall: bool) -> Raw {
    raw_server(move |mut s, _| {
        let prefix = prefix.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&prefix).await;
            if stall {
                // Hold the connection until the client gives up on it.
                let mut sink = [0u8; 64];
                while let Ok(n) = s.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
                return;
            }
            let _ = s.shutdown().await;
        }
    })
    .await
}

/// A raw upstream that sends the first `first` bytes of `body`, then waits for the test to
/// open the gate before it sends the rest: a transfer that is certainly still running when
/// the test acts on the mirror.
pub struct Gated {
    pub raw: Raw,
    gate: Arc<tokio::sync::Semaphore>,
}

impl Gated {
    /// Lets the transfers waiting at the gate (and every later one) finish.
    pub fn open(&self) {
        self.gate.add_permits(1_000);
    }

    /// Lets one transfer waiting at the gate (or the next to reach it) finish.
    pub fn release_one(&self) {
        self.gate.add_permits(1);
    }
}

pub async fn gated_server(body: Vec<u8>, first: usize) -> Gated {
    gated(body, first, false).await
}

/// Like [`gated_server`], but at the gate the connection is closed instead: a transfer cut
/// at the moment the test chooses.
pub async fn gated_cut_server(body: Vec<u8>, first: usize) -> Gated {
    gated(body, first, true).await
}

async fn gated(body: Vec<u8>, first: usize, cut: bool) -> Gated {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let waiting = gate.clone();
    let raw = raw_server(move |mut s, _| {
        let (body, gate) = (body.clone(), waiting.clone());
        async move {
            use tokio::io::AsyncWriteExt;
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&body[..first]).await;
            let _ = s.flush().await;
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
                if cut {
                    let _ = s.shutdown().await;
                } else {
                    let _ = s.write_all(&body[first..]).await;
                }
            }
        }
    })
    .await;
    Gated { raw, gate }
}

/// An upstream whose blob downloads break: the `n`th GET sends the body up to `cuts[n]`
/// (counted from the blob's start) and closes the connection; a GET past the last cut
/// sends the rest. With `ranges`, a `Range: bytes=N-` gets a 206 from `N`; without, the
/// server ignores it and sends from 0 (as some registries and CDNs do). Each GET's `Range`
/// header is recorded.
pub async fn flaky_server(
    body: Vec<u8>,
    cuts: Vec<usize>,
    ranges: bool,
) -> (Raw, Arc<Mutex<Vec<Option<String>>>>) {
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let log = seen.clone();
    let raw = raw_server(move |mut s, head| {
        let (body, cuts, log) = (body.clone(), cuts.clone(), log.clone());
        async move {
            use tokio::io::AsyncWriteExt;
            let head = String::from_utf8_lossy(&head).to_string();
            let range = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("range").then(|| v.trim().to_string())
            });
            let get = head.starts_with("GET ");
            let n = {
                let mut l = log.lock().expect("lock");
                if get {
                    l.push(range.clone());
                }
                l.len()
            };
            let len = body.len();
            let from = match (&range, ranges) {
                (Some(r), true) => r
                    .trim_start_matches("bytes=")
                    .trim_end_matches('-')
                    .parse::<usize>()
                    .unwrap_or(0),
                _ => 0,
            };
            let status = if from > 0 {
                format!(
                    "206 Partial Content\r\nContent-Range: bytes {from}-{}/{len}",
                    len - 1
                )
            } else {
                "200 OK".to_string()
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                len - from
            );
            let _ = s.write_all(reply.as_bytes()).await;
            if !get {
                return;
            }
            let cut = cuts.get(n - 1).copied().unwrap_or(len).max(from);
            let _ = s.write_all(&body[from..cut]).await;
            let _ = s.flush().await;
            let _ = s.shutdown().await;
        }
    })
    .await;
    (raw, seen)
}

/// A loopback listener that reads each request's head, then hands the connection and the
/// head to `respond`, which writes whatever (mis)behaviour the test needs.
async fn raw_server<F, Fut>(respond: F) -> Raw
where
    F: Fn(tokio::net::TcpStream, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let respond = Arc::new(respond);
    let requests: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
    let counted = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let (respond, counted) = (respond.clone(), counted.clone());
            tokio::spawn(async move {
                if let Some(head) = read_request_head(&mut s).await {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    respond(s, head).await;
                }
            });
        }
    });
    Raw { port, requests }
}

/// Reads one request's head; `None` when the client went away first.
async fn read_request_head(s: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut b = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut b).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
    }
    Some(buf)
}

/// An HTTP(S) proxy that refuses everything and remembers what was asked of it. Clients are
/// pointed at it (`HTTPS_PROXY`/`HTTP_PROXY`) so that any attempt to reach a real registry
/// (the fallback of a deploy file, when the mirror fails) is seen; Go clients never proxy
/// loopback, so archway itself is reached directly.
#[derive(Clone)]
pub struct Proxy {
    pub port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    pub async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let line = String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string();
                    record.lock().expect("lock").push(line);
                    let _ = s
                        .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                        .await;
                });
            }
        });
        Proxy { port, seen }
    }

    /// The environment that sends a client's outside traffic here.
    pub fn env(&self) -> Vec<(String, String)> {
        let url = format!("http://127.0.0.1:{}", self.port);
        ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"]
            .iter()
            .map(|k| (k.to_string(), url.clone()))
            .chain([
                ("NO_PROXY".into(), String::new()),
                ("no_proxy".into(), String::new()),
            ])
            .collect()
    }

    /// The request lines (`CONNECT registry-1.docker.io:443 HTTP/1.1`) clients sent.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }
}

/// An empty response body.
pub fn empty_body() -> Body {
    Full::new(Bytes::new()).map_err(|n| match n {}).boxed()
}
