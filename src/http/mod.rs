//! The HTTP front: the accept loop on each front thread ([`fronts`]), one task per
//! connection (HTTP/1.1 and h2c, or TLS with ALPN), graceful shutdown, and the per-request
//! log line and metrics around the handlers.

mod access;
pub mod admin;
mod client_auth;
mod conn;
pub mod endpoint;
pub mod errors;
pub mod fronts;
mod handlers;
mod hosted;
mod peers;
mod protocol;
mod socket;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
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

/// Serves the registry API on `listener`, from the front `threads`, until `shutdown`
/// resolves, then lets in-flight connections finish for up to `server.shutdown_grace` (of
/// the configuration current then). Returns once they have; the threads keep running what
/// requests started (fills) until the caller stops them.
pub async fn serve(
    listener: TcpListener,
    threads: fronts::Threads,
    current: Current,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<fronts::Running> {
    let limits = current.load().registry.config.server.clone();
    let accepting = Arc::new(Accepting {
        current,
        tls,
        // Shared: the three builders' settings come to a few hundred bytes, which every
        // connection's task would otherwise carry.
        servers: Arc::new(protocol::Servers::new(&limits)),
        // Connections beyond the limit wait in the listen backlog until one ends.
        slots: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut running = threads.start(listener, |listener| {
        accepting.clone().accept(listener, stopped.clone())
    })?;
    tokio::select! {
        _ = shutdown => {}
        // Logged by the thread; the others stop as at a signal.
        _ = running.lost() => {}
    }
    let _ = stop.send(true);
    running.served().await;
    Ok(running)
}

/// What every front thread's accept loop shares.
struct Accepting {
    current: Current,
    tls: Option<tokio_rustls::TlsAcceptor>,
    servers: Arc<protocol::Servers>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Accepting {
    /// One thread's accept loop, until `stop` turns true; then its connections' drain.
    async fn accept(
        self: Arc<Self>,
        listener: TcpListener,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let graceful = GracefulShutdown::new();
        let stopping = async move {
            let _ = stop.wait_for(|&s| s).await;
        };
        tokio::pin!(stopping);
        loop {
            let slot = tokio::select! {
                s = self.slots.clone().acquire_owned() => match s {
                    Ok(s) => s,
                    Err(_) => break,
                },
                _ = &mut stopping => break,
            };
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
                _ = &mut stopping => break,
            };
            let _ = stream.set_nodelay(true);
            let conn = Connection {
                open: Open::new(&self.current.load().registry.metrics, slot),
                current: self.current.clone(),
                servers: self.servers.clone(),
                watcher: graceful.watcher(),
                peer,
            };
            match &self.tls {
                None => {
                    tokio::spawn(conn.serve_plain(stream));
                }
                Some(acceptor) => {
                    tokio::spawn(conn.serve_tls(stream, acceptor.clone()));
                }
            }
        }
        drop(listener);
        let grace = self.current.load().registry.config.server.shutdown_grace;
        tokio::select! {
            _ = graceful.shutdown() => {}
            _ = tokio::time::sleep(grace) => {
                tracing::warn!("shutdown grace period over; closing remaining connections");
            }
        }
    }
}

/// One accepted client connection, and what serving it needs.
struct Connection {
    open: Open,
    current: Current,
    servers: Arc<protocol::Servers>,
    watcher: hyper_util::server::graceful::Watcher,
    peer: std::net::SocketAddr,
}

impl Connection {
    async fn serve_plain(self, tcp: tokio::net::TcpStream) {
        // Before its first request a connection is idle: the same deadline applies.
        let idle = self.current.load().registry.config.server.idle_timeout;
        let Some(protocol) = protocol::Protocol::sniff(&tcp, idle).await else {
            return;
        };
        let sent = self.current.load().registry.metrics.sendfile_bytes.clone();
        self.serve(socket::Socket::new(tcp, sent), protocol).await;
    }

    /// The handshake runs in the connection's task, not the accept loop, and within the
    /// head's deadline: a client that never finishes it holds nothing.
    async fn serve_tls(self, tcp: tokio::net::TcpStream, acceptor: tokio_rustls::TlsAcceptor) {
        let deadline = self.current.load().registry.config.server.header_timeout;
        let peer = self.peer;
        let stream = match tokio::time::timeout(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(peer = %peer, error = %crate::causes::Chain(&e), "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %peer, "TLS handshake not done within server.header_timeout");
                return;
            }
        };
        let protocol = protocol::Protocol::from_alpn(stream.get_ref().1.alpn_protocol());
        self.serve(stream, protocol).await;
    }

    async fn serve<I>(self, io: I, protocol: protocol::Protocol)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            open: _open,
            current,
            servers,
            watcher,
            peer,
        } = self;
        let front = current.load_full();
        // Deadlines from the configuration current now: a reload applies to new connections.
        let server = &front.registry.config.server;
        let (io, activity) = conn::Guarded::new(io, server.header_timeout, server.idle_timeout);
        let service = Api {
            current,
            activity,
            peer,
        };
        servers.serve(io, protocol, service, watcher, peer).await;
    }
}

/// The registry API as one connection's hyper service.
#[derive(Clone)]
struct Api {
    current: Current,
    activity: Arc<conn::Activity>,
    peer: std::net::SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for Api {
    type Response = Response<Body>;
    type Error = Infallible;
    /// Boxed: hyper's HTTP/1 dispatcher keeps a box the size of the service's future for as
    /// long as the connection is open, idle or not, and the registry path is several KiB of
    /// state (5.7 KiB when it was inline); boxed, that is allocated per request instead.
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        // Each request takes the front current when it starts (a reload never changes a
        // response half-way) and keeps the connection busy until its body is sent.
        let front = self.current.load_full();
        let busy = self.activity.begin();
        let peer = self.peer;
        Box::pin(async move {
            let resp = respond(&front, req, peer).await;
            Ok(resp.map(|b| conn::hold(b, busy)))
        })
    }
}

/// An open connection: counted in `archway_connections_open`, holding its slot of
/// `server.max_connections` until it ends.
struct Open {
    _counted: crate::metrics::InFlight,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Open {
    fn new(metrics: &crate::metrics::Metrics, slot: tokio::sync::OwnedSemaphorePermit) -> Open {
        Open {
            _counted: crate::metrics::InFlight::new(&metrics.connections_open),
            _slot: slot,
        }
    }
}

async fn respond(
    front: &Front,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
) -> Response<Body> {
    use http_body::Body as _;
    let started = Instant::now();
    let id = request_id();
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let endpoint = endpoint::parse(uri.path());
    let mut resp = handlers::handle(front, req, &endpoint, peer.ip()).await;
    if let Ok(v) = http::HeaderValue::from_str(&id) {
        resp.headers_mut().insert(X_REQUEST_ID, v);
    }
    let elapsed = started.elapsed();
    let route = handlers::route_label(uri.path(), &endpoint);
    let m = &front.registry.metrics;
    m.requests
        .with_label_values(&[route, method.as_str(), resp.status().as_str()])
        .inc();
    m.request_duration
        .with_label_values(&[route, method.as_str()])
        .observe(elapsed.as_secs_f64());
    if access::enabled() {
        let bytes = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .or_else(|| resp.body().size_hint().exact());
        access::write(&access::Entry {
            id: &id,
            peer,
            method: method.as_str(),
            path: uri.path_and_query().map_or(uri.path(), |p| p.as_str()),
            status: resp.status().as_u16(),
            bytes,
            elapsed,
            cache: resp
                .extensions()
                .get::<Provenance>()
                .map_or("-", |p| p.as_str()),
        });
    }
    resp
}

const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// A request id unique across restarts and replicas without a syscall per request: a random
/// per-process prefix and a counter.
fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..8].to_string());
    let mut num = [0u8; 20];
    let n = crate::logging::decimal(NEXT.fetch_add(1, Ordering::Relaxed), &mut num);
    let mut id = String::with_capacity(prefix.len() + 1 + n.len());
    id.push_str(prefix);
    id.push('-');
    id.push_str(n);
    id
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What an open connection holds for its whole life, idle or not, besides hyper's two
    /// buffers: its task's future, and the service future hyper's HTTP/1 dispatcher keeps
    /// boxed. With the registry path inline in the service future and the three servers'
    /// settings in every task, these were 5.7 KiB and 4.3 KiB per connection.
    #[tokio::test]
    async fn an_open_connection_holds_little_besides_hyper_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            "[storage]\nurl = \"file://{}/cache\"\nspool_dir = \"{0}/spool\"\n\
             [[upstream]]\nname = \"up\"\nurl = \"http://127.0.0.1:1\"\nhosts = [\"up.test\"]\n",
            dir.path().display()
        );
        let config = crate::config::Config::from_toml(&toml, "test.toml", None).unwrap();
        let servers = Arc::new(protocol::Servers::new(&config.server));
        let shared = crate::registry::Shared::open(&config.storage).unwrap();
        let registry = Arc::new(Registry::new(config, &shared).unwrap());
        let current: Current = Arc::new(ArcSwap::from_pointee(Front::new(registry)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, peer) = listener.accept().await.unwrap();
        let slot = Arc::new(tokio::sync::Semaphore::new(1))
            .acquire_owned()
            .await
            .unwrap();
        let graceful = GracefulShutdown::new();
        let conn = Connection {
            open: Open::new(&current.load().registry.metrics, slot),
            current,
            servers,
            watcher: graceful.watcher(),
            peer,
        };
        let task = conn.serve_plain(tcp);
        assert!(
            std::mem::size_of_val(&task) <= 1024,
            "a connection's task is {} bytes",
            std::mem::size_of_val(&task)
        );
        let service =
            std::mem::size_of::<<Api as hyper::service::Service<Request<Incoming>>>::Future>();
        assert!(
            service <= 64,
            "hyper keeps {service} bytes per connection for the service's future"
        );
    }

    /// A request's future is moved whole on every request (into its box, through hyper's
    /// dispatch), and a request waiting on a fill or a tag's resolution holds all of it: it
    /// is as large as the largest path any request can take. The cold paths (fills, a tag's
    /// resolution, a store's read of a link, pushes, referrers, synthesis) are boxed where
    /// they start, so a cached GET neither carries nor copies them. Inline, the future was
    /// 6.8 KB in a release build, and the copies 10% of a cached manifest GET's
    /// instructions; boxed, 2.9 KB.
    #[test]
    fn a_requests_future_leaves_the_cold_paths_boxed() {
        fn any<T>() -> T {
            unreachable!("only the future's type is wanted")
        }
        fn size<F>(_: impl FnOnce() -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let n = size(|| respond(any(), any(), any()));
        assert!(n <= 4096, "a request's future is {n} bytes");
    }
}
