//! A plain-HTTP client socket that sends cache files with `sendfile(2)`.
//!
//! hyper writes a response as a list of buffers, and for a large cached blob those buffers
//! are maps of the cache file (`storage::mapped`). A write from a map copies every byte
//! from the page cache into the socket; nginx instead hands the kernel the file and the
//! socket, and the pages go out without that copy, which was most of archway's CPU per GB
//! of cached blob. This socket does the same beneath hyper: a buffer that lies in a mapped
//! window is sent with `sendfile` from the window's file at the matching offset, and every
//! other buffer is written as usual. hyper is none the wiser: it asked for bytes to be
//! written, and they were, from the same file they were mapped from.
//!
//! Only plain HTTP gets this: a TLS connection's bytes are ciphertext, in no window.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::storage::mapped::{self, FileBytes};

/// Buffers this large are looked up among the mapped windows. HTTP/2 cuts a body into
/// 16 KiB frames, each behind a 9-byte header: one `sendfile` per frame would cost more
/// syscalls than it saves copies, so those stay one `writev`.
const SENDFILE_AT_LEAST: usize = 64 * 1024;

/// A client's TCP socket, sending mapped cache bytes with `sendfile`.
pub struct Socket {
    tcp: TcpStream,
    /// The address just past the last byte sent with `sendfile`: hyper hands back the rest
    /// of a buffer that was sent in part, however short it has become.
    resume: usize,
    sent: prometheus::IntCounter,
}

impl Socket {
    /// `tcp`, counting what it sends with `sendfile` in `sent`.
    pub fn new(tcp: TcpStream, sent: prometheus::IntCounter) -> Socket {
        Socket {
            tcp,
            resume: 0,
            sent,
        }
    }

    /// The file bytes `buf` is, if it is worth a `sendfile`.
    fn file_bytes(&self, buf: &[u8]) -> Option<FileBytes> {
        if buf.len() >= SENDFILE_AT_LEAST
            || (!buf.is_empty() && buf.as_ptr() as usize == self.resume)
        {
            mapped::file_bytes(buf)
        } else {
            None
        }
    }

    fn poll_sendfile(
        &mut self,
        cx: &mut Context<'_>,
        from: &FileBytes,
        start: *const u8,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let mut offset = from.offset;
            let sent = self.tcp.try_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(&self.tcp, &*from.file, Some(&mut offset), from.len)
                    .map_err(io::Error::from)
            });
            match sent {
                // The map covers these bytes, so the file holds them: a short file here
                // would be a cache file truncated in place, which archway never does.
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "cache file is shorter than its map",
                    )))
                }
                Ok(n) => {
                    self.resume = start as usize + n;
                    self.sent.inc_by(n as u64);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(from) = self.file_bytes(buf) {
            return self.poll_sendfile(cx, &from, buf.as_ptr());
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Buffers before the first file bytes go in one writev; the file bytes are sent on
        // the next call, which hyper makes once it has taken the short write.
        let mut written_before = 0;
        for (i, buf) in bufs.iter().enumerate() {
            if let Some(from) = self.file_bytes(buf) {
                if written_before == 0 {
                    return self.poll_sendfile(cx, &from, buf.as_ptr());
                }
                return Pin::new(&mut self.tcp).poll_write_vectored(cx, &bufs[..i]);
            }
            written_before += buf.len();
        }
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
