//! The HTTP front: the accept loop, one task per connection (HTTP/1.1 and h2c, or TLS with
//! ALPN), graceful shutdown, and the per-request log line and metrics around the handlers.

pub mod admin;
mod client_auth;
pub mod endpoint;
pub mod errors;
mod handlers;
mod hosted;
mod peers;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::registry::{Provenance, Registry};
pub use client_auth::ClientAuth;

/// Response body: in-memory bytes or a stream from the cache or a fill.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// What requests are answered with: the registry, and the client authentication of the
/// same configuration. Replaced whole on reload.
pub struct Front {
    /// The mirror built from this configuration, which answers the registry API.
    pub registry: Arc<Registry>,
    auth: Option<ClientAuth>,
}

impl Front {
    pub fn new(registry: Arc<Registry>) -> Front {
        let auth = registry.config.auth.as_ref().map(ClientAuth::new);
        Front { registry, auth }
    }
}

/// The front current now. Each request takes the one current when it starts and keeps it
/// to the end, so a reload never changes a response half-way.
pub type Current = Arc<ArcSwap<Front>>;

/// Serves the registry API on `listener` until `shutdown` resolves, then lets in-flight
/// connections finish for up to `server.shutdown_grace` (of the configuration current then).
pub async fn serve(
    listener: TcpListener,
    current: Current,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %crate::causes::Chain(&e), "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let current = current.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let front = current.load_full();
            async move { Ok::<_, Infallible>(respond(&front, req, peer).await) }
        });
        match &tls {
            None => {
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(peer = %peer, error = %crate::causes::Chain(&*e), "connection ended with an error");
                    }
                });
            }
            Some(acceptor) => {
                // The handshake runs in the connection's task, not the accept loop.
                let (acceptor, builder) = (acceptor.clone(), builder.clone());
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let stream = match acceptor.accept(stream).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!(peer = %peer, error = %crate::causes::Chain(&e), "TLS handshake failed");
                            return;
                        }
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(peer = %peer, error = %crate::causes::Chain(&*e), "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    let grace = current.load().registry.config.server.shutdown_grace;
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!("shutdown grace period over; closing remaining connections");
        }
    }
}

async fn respond(
    front: &Front,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    let id = request_id();
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let mut resp = handlers::handle(front, req, peer.ip()).await;
    if let Ok(v) = http::HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let elapsed = started.elapsed();
    let route = handlers::route_label(uri.path());
    let m = &front.registry.metrics;
    m.requests
        .with_label_values(&[route, method.as_str(), resp.status().as_str()])
        .inc();
    m.request_duration
        .with_label_values(&[route, method.as_str()])
        .observe(elapsed.as_secs_f64());
    tracing::info!(
        target: "archway::access",
        id = %id,
        peer = %peer,
        method = %method,
        path = %uri,
        status = resp.status().as_u16(),
        bytes = resp.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).unwrap_or("-"),
        ms = format_args!("{:.3}", elapsed.as_secs_f64() * 1000.0),
        cache = %resp.extensions().get::<Provenance>().map_or("-", |p| p.as_str()),
        "request"
    );
    resp
}

/// A request id unique across restarts and replicas without a syscall per request: a random
/// per-process prefix and a counter.
fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..8].to_string());
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A body of bytes held in memory.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    full(Bytes::new())
}
