//! What one client connection may hold: its socket is closed when a request head does not
//! arrive whole within `server.header_timeout` of its first byte (a client dripping a head
//! byte by byte holds a connection and a task for nothing), or when no request comes for
//! `server.idle_timeout`. hyper's own header timeout starts when it begins waiting, which
//! would also cut idle keep-alive connections at the header timeout; here the two are kept
//! apart by watching the socket: bytes arriving while no request is in flight start a head,
//! a request being dispatched ends it, and a response finishing starts the idle clock.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::Body;

/// What the socket and the requests of one connection share.
pub struct Activity {
    /// Requests whose response has not finished (its body included).
    in_flight: AtomicUsize,
    /// Milliseconds since `start` when the last response finished.
    idle_since: AtomicU64,
    start: Instant,
    /// The socket's reader, parked while a request was in flight: woken when the last one
    /// finishes, so the idle clock starts even if nothing else wakes the connection.
    reader: futures_util::task::AtomicWaker,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            start: Instant::now(),
            reader: futures_util::task::AtomicWaker::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// A request was dispatched: the connection is busy until the returned guard, held by
    /// its response body, is dropped.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }
}

/// A request in flight on its connection.
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.idle_since.store(self.0.now_ms(), Ordering::Release);
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.reader.wake();
        }
    }
}

/// Ties `busy` to `body`: the connection stays busy until the body is sent or dropped, so
/// a slow download is never taken for an idle connection.
pub fn hold(body: Body, busy: Busy) -> Body {
    body.map_frame(move |f: hyper::body::Frame<Bytes>| {
        let _ = &busy;
        f
    })
    .boxed_unsync()
}

/// A client socket under the connection's deadlines.
pub struct Guarded<T> {
    io: T,
    activity: Arc<Activity>,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// When the head being read started to arrive, if one is.
    head_since: Option<Instant>,
    timer: Pin<Box<Sleep>>,
}

impl<T> Guarded<T> {
    /// `io`, and the activity its requests report to.
    pub fn new(io: T, header_timeout: Duration, idle_timeout: Duration) -> (Self, Arc<Activity>) {
        let activity = Activity::new();
        let g = Guarded {
            io,
            activity: activity.clone(),
            header_timeout,
            idle_timeout,
            head_since: None,
            timer: Box::pin(tokio::time::sleep(header_timeout.min(idle_timeout))),
        };
        (g, activity)
    }

    /// How often the deadlines are checked: the shorter of the two.
    fn period(&self) -> Duration {
        self.header_timeout.min(self.idle_timeout)
    }

    /// When the connection must have made progress by, with nothing in flight.
    fn deadline(&self) -> Instant {
        match self.head_since {
            Some(t) => t + self.header_timeout,
            None => {
                let idle = self.activity.idle_since.load(Ordering::Acquire);
                self.activity.start + Duration::from_millis(idle) + self.idle_timeout
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                let busy = this.activity.in_flight.load(Ordering::Acquire) > 0;
                if busy {
                    this.head_since = None;
                } else if buf.filled().len() > before && this.head_since.is_none() {
                    this.head_since = Some(Instant::now());
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if this.activity.in_flight.load(Ordering::Acquire) > 0 {
                    // A request is being answered; its own limits apply, and the next head
                    // starts after it.
                    this.activity.reader.register(cx.waker());
                    this.head_since = None;
                    return Poll::Pending;
                }
                // The timer is a periodic check, re-armed only when it fires: moving it on
                // every request would touch the runtime's timer wheel twice per request. A
                // deadline is therefore noticed up to one period late.
                while this.timer.as_mut().poll(cx).is_ready() {
                    let now = Instant::now();
                    let deadline = this.deadline();
                    if now >= deadline {
                        let what = if this.head_since.is_some() {
                            "the request head did not arrive within server.header_timeout"
                        } else {
                            "no request within server.idle_timeout"
                        };
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
                    }
                    let next = deadline.min(now + this.period());
                    this.timer.as_mut().reset(next);
                }
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
