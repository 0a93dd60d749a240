//! The front's threads: one single-threaded runtime per core, each accepting connections
//! from the one listener and serving each connection it accepted to its end.
//!
//! Why not the multi-threaded runtime: a cached manifest GET is a few microseconds of work,
//! and its work-stealing threads handing ready connections to each other cost a quarter of
//! that on the development machine (benches/README.md). nginx's workers share nothing in the
//! same way. A request's own tasks (a fill, a lease's renewal) run on its thread too, and
//! its blocking work (spool writes, file reads) goes to that runtime's blocking pool.
//!
//! All threads wait on the same listening socket and the first to wake takes the
//! connection: a thread busy with a request leaves new connections to an idle one, which a
//! per-thread `SO_REUSEPORT` socket (the kernel choosing by a hash of the address) would not.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::runtime::Runtime;

/// Runtimes built at start-up (so a failure stops archway before it serves), one per front
/// thread, not yet running.
pub struct Threads {
    runtimes: Vec<Owned>,
}

/// A runtime that shuts down without blocking when dropped: dropping a runtime waits for
/// its blocking threads, which is not allowed inside another runtime's task (a start-up
/// error, or a thread that could not be started).
struct Owned(Option<Runtime>);

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Threads {
    /// One per core archway may use (`std::thread::available_parallelism`, which counts a
    /// container's CPU quota), or `TOKIO_WORKER_THREADS` of them when that is set.
    pub fn build() -> std::io::Result<Threads> {
        let n = std::env::var("TOKIO_WORKER_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(1);
        Threads::with(n)
    }

    fn with(n: usize) -> std::io::Result<Threads> {
        // tokio's default, 512 blocking threads, shared out: each runtime has a pool of its
        // own, and N pools of 512 would let N times as many file reads wait on the disk.
        let blocking = (512 / n.max(1)).max(32);
        let runtimes = (0..n)
            .map(|_| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_name("archway-blocking")
                    .max_blocking_threads(blocking)
                    .build()
                    .map(|rt| Owned(Some(rt)))
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Threads { runtimes })
    }

    /// How many threads serve.
    pub fn len(&self) -> usize {
        self.runtimes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.runtimes.is_empty()
    }

    /// Starts `serve` on every thread with its own handle on `listener`. Each thread's
    /// runtime keeps running what its requests started after `serve` returns, until
    /// [`Running::stop`].
    pub fn start<F, Fut>(self, listener: TcpListener, serve: F) -> std::io::Result<Running>
    where
        F: Fn(TcpListener) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = listener.into_std()?;
        let (release, released) = tokio::sync::watch::channel(());
        let (lose, lost) = tokio::sync::watch::channel(None);
        let mut served = Vec::new();
        let mut joins = Vec::new();
        for (i, mut owned) in self.runtimes.into_iter().enumerate() {
            let Some(rt) = owned.0.as_ref() else { continue };
            let mine = listener.try_clone()?;
            let (done, wait) = tokio::sync::oneshot::channel::<()>();
            served.push(wait);
            let work = {
                // Registered with this thread's runtime, on this thread's reactor.
                let _entered = rt.enter();
                serve(TcpListener::from_std(mine)?)
            };
            let mut released = released.clone();
            let lose = lose.clone();
            let name = format!("archway-front-{i}");
            let join = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    let Some(rt) = owned.0.take() else { return };
                    // A panic in a connection's task is caught by tokio and ends only that
                    // connection; one in the accept loop would end the thread, and with it
                    // a share of the accepts, silently. Caught here, it stops archway, so
                    // its supervisor restarts a whole one.
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        rt.block_on(async move {
                            work.await;
                            let _ = done.send(());
                            // Fills and other tasks the requests started go on until
                            // released.
                            let _ = released.changed().await;
                        })
                    }));
                    if outcome.is_err() {
                        tracing::error!(thread = %name, "a front thread panicked; archway stops");
                        lose.send_replace(Some(name));
                    }
                    rt.shutdown_timeout(Duration::from_secs(1));
                })?;
            joins.push(join);
        }
        Ok(Running {
            release: Some(release),
            served,
            joins,
            lost,
        })
    }
}

/// The front threads, serving.
pub struct Running {
    release: Option<tokio::sync::watch::Sender<()>>,
    served: Vec<tokio::sync::oneshot::Receiver<()>>,
    joins: Vec<std::thread::JoinHandle<()>>,
    /// The name of the first thread that panicked.
    lost: tokio::sync::watch::Receiver<Option<String>>,
}

impl Running {
    /// Resolves when a thread has panicked (never, while all serve).
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        let _ = lost.wait_for(Option::is_some).await;
    }

    /// The thread that panicked, if one did.
    pub fn lost_thread(&self) -> Option<String> {
        self.lost.borrow().clone()
    }

    /// Waits until every thread's `serve` has returned (their connections are done).
    pub async fn served(&mut self) {
        for wait in self.served.drain(..) {
            let _ = wait.await;
        }
    }

    /// Stops the threads' runtimes, and with them whatever their requests left running.
    pub async fn stop(mut self) {
        self.release.take();
        let joins = std::mem::take(&mut self.joins);
        let _ = tokio::task::spawn_blocking(move || {
            for j in joins {
                let _ = j.join();
            }
        })
        .await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Released: the threads end on their own.
        self.release.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    async fn listener() -> (TcpListener, std::net::SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        (l, addr)
    }

    /// Each thread takes connections from the one listener: with every thread taking one
    /// connection and then returning, two connections make both threads return, on threads
    /// of their own.
    #[tokio::test]
    async fn every_thread_accepts_from_the_one_listener() {
        let (l, addr) = listener().await;
        let names = Arc::new(Mutex::new(Vec::new()));
        let mut running = Threads::with(2)
            .unwrap()
            .start(l, |l| {
                let names = names.clone();
                async move {
                    let _ = l.accept().await.unwrap();
                    let name = std::thread::current().name().map(str::to_string);
                    names.lock().unwrap().push(name);
                }
            })
            .unwrap();
        let _a = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _b = tokio::net::TcpStream::connect(addr).await.unwrap();
        running.served().await;
        let mut names = names.lock().unwrap().clone();
        names.sort();
        assert_eq!(
            names,
            [
                Some("archway-front-0".into()),
                Some("archway-front-1".into())
            ]
        );
        running.stop().await;
    }

    /// A thread whose accept loop panics is reported, by name, while the other serves on;
    /// without the catch its panic would end it unseen and `lost` would never resolve.
    #[tokio::test]
    async fn a_thread_that_panics_is_reported() {
        let (l, addr) = listener().await;
        let started = std::sync::atomic::AtomicUsize::new(0);
        let running = Threads::with(2)
            .unwrap()
            .start(l, |l| {
                let first = started.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
                async move {
                    if first {
                        panic!("the accept loop failed");
                    }
                    let (mut s, _) = l.accept().await.unwrap();
                    let _ = tokio::io::AsyncWriteExt::write_all(&mut s, b"still serving").await;
                }
            })
            .unwrap();
        tokio::time::timeout(Duration::from_secs(30), running.lost())
            .await
            .expect("the panicked thread is reported");
        assert_eq!(running.lost_thread().as_deref(), Some("archway-front-0"));
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut got = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut c, &mut got)
            .await
            .unwrap();
        assert_eq!(got, "still serving");
        running.stop().await;
    }

    /// What a request started (a fill) goes on after its thread stopped accepting, until
    /// the threads are stopped, and no longer.
    #[tokio::test]
    async fn tasks_requests_started_run_until_the_threads_stop() {
        struct Dropped(Option<tokio::sync::oneshot::Sender<()>>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                if let Some(tx) = self.0.take() {
                    let _ = tx.send(());
                }
            }
        }
        let (l, _) = listener().await;
        let (go, wait_go) = tokio::sync::oneshot::channel::<()>();
        let (ran, wait_ran) = tokio::sync::oneshot::channel::<()>();
        let (dropped, wait_dropped) = tokio::sync::oneshot::channel::<()>();
        let once = Mutex::new(Some((wait_go, ran, dropped)));
        let mut running = Threads::with(1)
            .unwrap()
            .start(l, |_l| {
                let (wait_go, ran, dropped) = once.lock().unwrap().take().unwrap();
                async move {
                    tokio::spawn(async move {
                        let _ = wait_go.await;
                        let _ = ran.send(());
                    });
                    tokio::spawn(async move {
                        let _guard = Dropped(Some(dropped));
                        std::future::pending::<()>().await;
                    });
                }
            })
            .unwrap();
        running.served().await;
        go.send(()).unwrap();
        wait_ran.await.expect("a task outlives its thread's serve");
        running.stop().await;
        wait_dropped
            .await
            .expect("stopping the threads drops their tasks");
    }
}
