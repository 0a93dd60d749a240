//! A relay in front of the real upstream, for the cluster tests: it passes every request to
//! `docker-registry` and its answer back, records what was asked (with any `Range`), and can
//! hold the first transfer of one path after some bytes until the test opens the gate: an
//! upstream transfer that is certainly still running while the test looks at the replicas.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use super::fake::Body;

/// A request as the relay passed it on.
#[derive(Clone, Debug)]
pub struct Relayed {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
}

#[derive(Clone)]
pub struct Relay {
    pub port: u16,
    seen: Arc<Mutex<Vec<Relayed>>>,
    /// The path whose first GET is held, and after how many bytes.
    held: Arc<Mutex<Option<(String, usize)>>>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl Relay {
    pub async fn start(upstream: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let relay = Relay {
            port: listener.local_addr().expect("addr").port(),
            seen: Arc::default(),
            held: Arc::default(),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
        };
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let (r, upstream) = (relay.clone(), upstream.trim_end_matches('/').to_string());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (r, client, upstream) = (r.clone(), client.clone(), upstream.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (r, client, upstream) = (r.clone(), client.clone(), upstream.clone());
                        async move { Ok::<_, Infallible>(r.pass(&client, &upstream, req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        relay
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Holds the first GET of `path` after `after` bytes, until [`Relay::open`].
    pub fn hold_first(&self, path: &str, after: usize) {
        *self.held.lock().expect("lock") = Some((path.to_string(), after));
    }

    /// Lets the held transfer go on.
    pub fn open(&self) {
        self.gate.add_permits(1_000);
    }

    /// The requests for `path` with `method`, in order.
    pub fn seen(&self, method: &str, path: &str) -> Vec<Relayed> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.method == method && s.path == path)
            .cloned()
            .collect()
    }

    async fn pass(
        &self,
        client: &reqwest::Client,
        upstream: &str,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let path = req.uri().path().to_string();
        let range = req
            .headers()
            .get("range")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        self.seen.lock().expect("lock").push(Relayed {
            method: req.method().to_string(),
            path: path.clone(),
            range,
        });
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or(path.clone());
        let mut out = client.request(req.method().clone(), format!("{upstream}{pq}"));
        for (k, v) in req.headers() {
            if k != "host" {
                out = out.header(k, v);
            }
        }
        let resp = match out.send().await {
            Ok(r) => r,
            Err(_) => {
                return Response::builder()
                    .status(502)
                    .body(super::fake::empty_body())
                    .expect("response")
            }
        };
        // Only the first GET of the held path waits; later ones (a takeover) pass.
        let hold = {
            let mut held = self.held.lock().expect("lock");
            match held.as_ref() {
                Some((p, after)) if *p == path && req.method() == http::Method::GET => {
                    let after = *after;
                    *held = None;
                    Some(after)
                }
                _ => None,
            }
        };
        let mut builder = Response::builder().status(resp.status().as_u16());
        for (k, v) in resp.headers() {
            builder = builder.header(k, v);
        }
        let stream = resp.bytes_stream().map_err(std::io::Error::other).boxed();
        let stream = match hold {
            Some(after) => held_after(stream, after, self.gate.clone()),
            None => stream,
        };
        // Through a channel: the body type wants a Sync stream.
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut stream = stream;
            while let Some(item) = stream.next().await {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let body = BodyExt::boxed(StreamBody::new(stream.map_ok(Frame::data)));
        builder.body(body).expect("response")
    }
}

type Chunks = futures_util::stream::BoxStream<'static, std::io::Result<Bytes>>;

/// `stream`, stopped after `after` bytes until `gate` has a permit.
fn held_after(stream: Chunks, after: usize, gate: Arc<tokio::sync::Semaphore>) -> Chunks {
    struct St {
        inner: Chunks,
        sent: usize,
        after: usize,
        gate: Arc<tokio::sync::Semaphore>,
        tail: Option<Bytes>,
    }
    let st = St {
        inner: stream,
        sent: 0,
        after,
        gate,
        tail: None,
    };
    futures_util::stream::unfold(st, |mut st| async move {
        if let Some(tail) = st.tail.take() {
            if let Ok(p) = st.gate.acquire().await {
                p.forget();
            }
            st.sent += tail.len();
            return Some((Ok(tail), st));
        }
        let chunk = match st.inner.next().await? {
            Ok(c) => c,
            Err(e) => return Some((Err(e), st)),
        };
        if st.sent < st.after && st.sent + chunk.len() >= st.after {
            let mut head = chunk;
            let tail = head.split_off(st.after - st.sent);
            st.sent += head.len();
            st.tail = Some(tail);
            return Some((Ok(head), st));
        }
        st.sent += chunk.len();
        Some((Ok(chunk), st))
    })
    .boxed()
}
