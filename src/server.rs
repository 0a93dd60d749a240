//! A running archway: [`Server::bind`] opens the store, builds the registry and binds the
//! listeners (so their addresses are known before anything is served, port 0 included);
//! [`Server::serve`] answers until shutdown, with SIGHUP reloads and the bounded cache's
//! background work, then drains.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::cluster::Cluster;
use crate::config::{Config, ConfigErrors};
use crate::gc::{self, Collector};
use crate::http;
use crate::live::Live;
use crate::registry::{Registry, Shared};
use crate::storage::OpenError;
use crate::tls::{self, CertReloader, TlsError};
use crate::upstream::BuildError;

/// What stops archway from starting (each names the config key it is about, where one is),
/// or from serving on.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Store(#[from] OpenError),
    #[error(transparent)]
    Upstream(#[from] BuildError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::BuildError),
    #[error("server.tls: the certificate cannot be used")]
    Tls(#[from] TlsError),
    #[error("{key}: cannot listen on {addr}")]
    Listen {
        key: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// Not at start-up: a front thread panicked, and archway stopped serving (after the
    /// drain a signal gets) so that its supervisor restarts it whole.
    #[error("{thread} panicked; archway stopped serving")]
    FrontLost { thread: String },
}

/// The listeners, bound, and what they serve.
pub struct Server {
    live: Arc<Live>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    tls: Option<TlsAcceptor>,
    collector: Arc<Collector>,
    threads: http::fronts::Threads,
}

impl Server {
    /// Opens the store and the upstream clients and binds the listeners. `path` is the config
    /// file that SIGHUP re-reads (`None` for the embedded default).
    pub async fn bind(config: Config, path: Option<PathBuf>) -> Result<Server, StartupError> {
        let mut shared = Shared::open(&config.storage)?;
        let collector = Arc::new(shared.collector(&config.storage));
        let listener = listen("server.listen", config.server.listen).await?;
        if let Some(c) = &config.cluster {
            // The advertised address may name the port just bound (POD_IP and port 0).
            let port = listener
                .local_addr()
                .map_err(|source| StartupError::Listen {
                    key: "server.listen",
                    addr: config.server.listen,
                    source,
                })?
                .port();
            let me = c.advertise.url(port, config.server.tls.is_some());
            let cluster = Cluster::new(c, me, shared.store.clone(), shared.metrics.clone())?;
            shared.cluster = Some(Arc::new(cluster));
        }
        let admin = match &config.admin {
            Some(a) => Some(listen("admin.listen", a.listen).await?),
            None => None,
        };
        let tls_files = config.server.tls.clone();
        let registry = Arc::new(Registry::new(config, &shared)?);
        let mut live = Live::new(registry, shared, path);
        let tls = match tls_files {
            None => None,
            Some(files) => {
                let certs = Arc::new(CertReloader::new(&files.cert, &files.key)?);
                live = live.with_certs(certs.clone());
                Some(tls::acceptor(certs)?)
            }
        };
        // Last: nothing after this may fail, since a start-up error would drop them here.
        let threads = http::fronts::Threads::build().map_err(StartupError::Runtime)?;
        Ok(Server {
            live: Arc::new(live),
            listener,
            admin,
            tls,
            collector,
            threads,
        })
    }

    /// Where the registry API is served (the port chosen, when the config said 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where the admin listener is, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then gives in-flight responses, and then fills
    /// (tasks of their own, so a restart does not throw away half-fetched layers),
    /// `server.shutdown_grace` in all from the signal. Fails when the front threads cannot
    /// start (out of threads or file descriptors), or when one of them panicked.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), StartupError> {
        let Server {
            live,
            listener,
            admin,
            tls,
            collector,
            threads,
        } = self;
        let registry = live.registry();
        let listen = listener.local_addr().ok();
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(l) = admin {
            tokio::spawn(http::admin::serve(l, live.current()));
        }
        watch_sighup(live.clone());
        start_collecting(&live, &collector);
        tracing::info!(
            listen = %listen.map_or_else(|| "?".to_string(), |a| a.to_string()),
            admin = %admin_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
            tls = tls.is_some(),
            threads = threads.len(),
            storage = %registry.config.storage.url,
            max_size = registry.config.storage.gc.max_size.map(gc::human_bytes).unwrap_or_else(|| "unbounded".into()),
            upstreams = registry.upstream_count(),
            cluster = %registry.cluster().map_or_else(|| "off".to_string(), |c| c.advertised().to_string()),
            "archway is serving"
        );
        drop(registry);
        let asked = Arc::new(std::sync::OnceLock::new());
        let noted = asked.clone();
        let shutdown = async move {
            shutdown.await;
            let _ = noted.set(Instant::now());
        };
        let running = http::serve(listener, threads, live.current(), tls, shutdown)
            .await
            .map_err(StartupError::Runtime)?;
        let grace = live.registry().config.server.shutdown_grace;
        let deadline = asked.get().copied().unwrap_or_else(Instant::now) + grace;
        drain_fills(&live, deadline).await;
        collector.flush().await;
        let lost = running.lost_thread();
        running.stop().await;
        match lost {
            Some(thread) => Err(StartupError::FrontLost { thread }),
            None => Ok(()),
        }
    }
}

/// A short-lived cluster member beside a replica, for as long as a command needs one
/// (`archway warm`): the fills it starts take leases as a replica's do, and replicas that
/// need a blob it is fetching stream it from its internal endpoint rather than fetch it
/// again. It binds `server.listen`'s address on a port of its own (the replica has that
/// one), advertises the replica's host at that port, and runs no admin listener.
pub struct Member {
    registry: Arc<Registry>,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<Result<(), StartupError>>,
}

impl Member {
    /// `path` is the config file `config` came from, as for [`Server::bind`].
    pub async fn join(mut config: Config, path: Option<PathBuf>) -> Result<Member, StartupError> {
        config.server.listen.set_port(0);
        config.admin = None;
        if let Some(c) = &mut config.cluster {
            c.advertise = c.advertise.beside();
        }
        let server = Server::bind(config, path).await?;
        let registry = server.live.registry();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        Ok(Member {
            registry,
            stop,
            serving,
        })
    }

    /// The registry whose fills are the member's.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Stops serving once the responses peers are reading are done (within
    /// `server.shutdown_grace`).
    pub async fn leave(self) {
        let _ = self.stop.send(());
        if let Ok(Err(e)) = self.serving.await {
            tracing::warn!(error = %crate::causes::Chain(&e), "the cluster member could not serve");
        }
    }
}

/// Connections the kernel may queue before archway accepts them (it caps this at
/// `net.core.somaxconn`): a burst of pulls as a deployment rolls out must not find the queue
/// full, nor wait for SYN retries.
const BACKLOG: u32 = 4096;

async fn listen(key: &'static str, addr: SocketAddr) -> Result<TcpListener, StartupError> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    };
    socket
        .and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(addr)?;
            s.listen(BACKLOG)
        })
        .map_err(|source| StartupError::Listen { key, addr, source })
}

/// Waits for fills in flight, until `deadline`. Fills report no progress event to wait on
/// here, so this polls their count.
async fn drain_fills(live: &Live, deadline: Instant) {
    let registry = live.registry();
    // Leases too: a fill's lease is deleted after its commit, and a replica that stopped
    // before that leaves its peers one to wait out (its TTL).
    while registry.fills_in_flight() > 0 || registry.fill_leases_held() > 0 {
        if Instant::now() >= deadline {
            tracing::warn!(
                fills = registry.fills_in_flight(),
                leases = registry.fill_leases_held(),
                "shutdown grace period over; abandoning blob fills in flight"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The bounded cache's background work: access times written out, collections when the
/// cache grows past `max_size`.
fn start_collecting(live: &Arc<Live>, collector: &Arc<Collector>) {
    let registry = live.registry();
    let gc = &registry.config.storage.gc;
    if gc.max_size.is_some() {
        tokio::spawn(collector.clone().flush_periodically());
        if gc.min_age < 2 * gc::access::FLUSH_INTERVAL {
            tracing::warn!(
                gc_min_age = %humantime::format_duration(gc.min_age),
                "storage.gc_min_age is under twice the access-time flush interval (30s): with several replicas, an image pulled through another one moments ago may be evicted"
            );
        }
    }
    // Abandoned uploads into hosted repositories: their chunks go once they expire. The
    // registry current at each run, so a reload that adds [[hosted]] is seen.
    let uploads = live.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(3600));
        loop {
            every.tick().await;
            let registry = uploads.registry();
            if registry.config.hosted.is_empty() {
                continue;
            }
            match registry.hosted().expire_uploads().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(objects = n, "expired abandoned uploads"),
                Err(e) => {
                    tracing::warn!(error = %crate::causes::Chain(&e), "cannot expire abandoned uploads")
                }
            }
        }
    });
    let forget = live.clone();
    tokio::spawn(
        collector
            .clone()
            .maintain(live.shared().metrics.clone(), move |report| {
                let live = forget.clone();
                Box::pin(async move { live.registry().forget_evicted(&report).await })
            }),
    );
}

/// SIGHUP: reload the config (and with it the TLS certificate); a bad new config is logged
/// and the old one kept.
fn watch_sighup(live: Arc<Live>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot watch SIGHUP: configuration reload disabled");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match live.reload() {
                Ok(()) => {
                    let r = live.registry();
                    tracing::info!(
                        source = %r.config.source,
                        upstreams = r.upstream_count(),
                        fallbacks = r.config.fallbacks.len(),
                        tls = r.config.server.tls.is_some(),
                        auth = r.config.auth.is_some(),
                        "SIGHUP: configuration reloaded"
                    )
                }
                Err(e) => {
                    tracing::error!(error = %crate::causes::Chain(&e), "SIGHUP: configuration not reloaded; keeping the running one")
                }
            }
        }
    });
}
