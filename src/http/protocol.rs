//! Which HTTP version a client connection speaks, and hyper's server for each, with the
//! registry listener's limits.
//!
//! hyper-util's `auto` server tells HTTP/1 from HTTP/2 by reading the first bytes and
//! handing them back to hyper through a rewind buffer. hyper then reads the rest of the first
//! request head into a buffer that already holds them, which makes it grow: every keep-alive
//! connection kept a 16 KiB read buffer instead of 8 KiB, a third of what an idle connection
//! costs. Here a plain connection's first bytes are peeked at, not read, and TLS says which
//! protocol it agreed on, so hyper's own HTTP/1 or HTTP/2 server gets the connection from its
//! first byte. `auto` remains for the rare client whose first bytes do not tell yet.

use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// What HTTP/2 with prior knowledge (h2c) starts with; no HTTP/1 request can (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/2 streams per connection: what one client pulling layers in parallel needs.
const MAX_STREAMS: u32 = 256;
/// Streams reset by the client before they were served, at most, at any moment.
const MAX_PENDING_RESETS: usize = 20;
/// Streams archway may reset for a client's errors before it closes the connection.
const MAX_ERROR_RESETS: usize = 256;

/// The version a connection speaks, or that its first bytes do not tell yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Undecided,
}

impl Protocol {
    /// From the first bytes a client sent (at least one).
    fn of(first: &[u8]) -> Protocol {
        if !PREFACE.starts_with(first) {
            Protocol::Http1
        } else if first.len() == PREFACE.len() {
            Protocol::Http2
        } else {
            Protocol::Undecided
        }
    }

    /// From the protocol TLS agreed on by ALPN (archway offers `h2` and `http/1.1`).
    pub fn from_alpn(alpn: Option<&[u8]>) -> Protocol {
        match alpn {
            Some(b"h2") => Protocol::Http2,
            Some(b"http/1.1") => Protocol::Http1,
            _ => Protocol::Undecided,
        }
    }

    /// Waits up to `deadline` for a plain connection's first bytes, and looks at them
    /// without taking them. `None` when the client closed or sent nothing in time.
    pub async fn sniff(tcp: &TcpStream, deadline: Duration) -> Option<Protocol> {
        let mut first = [0u8; PREFACE.len()];
        match tokio::time::timeout(deadline, tcp.peek(&mut first)).await {
            Ok(Ok(n)) if n > 0 => Some(Protocol::of(&first[..n])),
            _ => None,
        }
    }
}

/// Bounded streams and header lists; a client resetting streams faster than they are served
/// (rapid reset) has the connection closed past these. A macro, because hyper's HTTP/2
/// builder and `auto`'s are different types with the same methods.
macro_rules! http2_limits {
    ($builder:expr, $limits:expr) => {
        $builder
            .max_header_list_size($limits.max_header_bytes as u32)
            .max_concurrent_streams(MAX_STREAMS)
            .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
            .max_local_error_reset_streams(MAX_ERROR_RESETS)
    };
}

/// hyper's servers, set up with the listener's limits.
#[derive(Clone)]
pub struct Servers {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    auto: auto::Builder<TokioExecutor>,
}

impl Servers {
    pub fn new(limits: &crate::config::ServerConfig) -> Servers {
        let mut http1 = http1::Builder::new();
        // A head that does not fit gets 431 (hyper reads heads into this buffer).
        http1.max_buf_size(limits.max_header_bytes);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2_limits!(http2, limits);
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http1().max_buf_size(limits.max_header_bytes);
        http2_limits!(auto.http2(), limits);
        Servers { http1, http2, auto }
    }

    /// Serves `io` in `protocol` until the client or a graceful shutdown ends it.
    pub async fn serve<I, S>(
        &self,
        io: I,
        protocol: Protocol,
        service: S,
        watcher: Watcher,
        peer: std::net::SocketAddr,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<
                http::Request<hyper::body::Incoming>,
                Response = http::Response<super::Body>,
                Error = std::convert::Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let io = TokioIo::new(io);
        // Each connection boxed at its own size: inline, every connection's task would be
        // as large as the largest of the three (the undecided one holds both servers).
        let ended = match protocol {
            Protocol::Http1 => Box::pin(watcher.watch(self.http1.serve_connection(io, service)))
                .await
                .map_err(Into::into),
            Protocol::Http2 => Box::pin(watcher.watch(self.http2.serve_connection(io, service)))
                .await
                .map_err(Into::into),
            Protocol::Undecided => {
                Box::pin(watcher.watch(self.auto.serve_connection(io, service).into_owned())).await
            }
        };
        if let Err(e) = ended {
            let e: Box<dyn std::error::Error + Send + Sync> = e;
            tracing::debug!(peer = %peer, error = %crate::causes::Chain(&*e), "connection ended with an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_tell_the_protocol() {
        assert_eq!(Protocol::of(b"GET /v2/ HTTP/1.1\r\n"), Protocol::Http1);
        assert_eq!(Protocol::of(b"G"), Protocol::Http1);
        // PRI is no HTTP/1 method archway serves, but only the whole preface is HTTP/2.
        assert_eq!(Protocol::of(b"PRI * HTTP/1.1\r\n\r\n"), Protocol::Http1);
        assert_eq!(Protocol::of(b"PRI * HTTP/2"), Protocol::Undecided);
        assert_eq!(Protocol::of(PREFACE), Protocol::Http2);
        assert_eq!(Protocol::from_alpn(Some(b"h2")), Protocol::Http2);
        assert_eq!(Protocol::from_alpn(Some(b"http/1.1")), Protocol::Http1);
        assert_eq!(Protocol::from_alpn(None), Protocol::Undecided);
    }

    /// Each server answers its version, and one still undecided answers both.
    #[tokio::test]
    async fn each_server_serves_its_version_and_undecided_serves_both() {
        use http_body_util::BodyExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let toml =
            "[[upstream]]\nname = \"up\"\nurl = \"http://127.0.0.1:1\"\nhosts = [\"up.test\"]\n";
        let config = crate::config::Config::from_toml(toml, "test.toml", None).unwrap();
        let servers = Servers::new(&config.server);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let peer: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        let service = hyper::service::service_fn(|_req| async {
            let body = http_body_util::Full::new(bytes::Bytes::from_static(b"ok"))
                .map_err(|never| match never {})
                .boxed_unsync();
            Ok::<_, std::convert::Infallible>(http::Response::new(body))
        });
        for (protocol, h2) in [
            (Protocol::Http1, false),
            (Protocol::Undecided, false),
            (Protocol::Http2, true),
            (Protocol::Undecided, true),
        ] {
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let (servers, service, watcher) = (servers.clone(), service, graceful.watcher());
            tokio::spawn(async move {
                servers
                    .serve(server, protocol, service, watcher, peer)
                    .await
            });
            if h2 {
                let (mut h2, conn) = h2::client::handshake(client).await.unwrap();
                tokio::spawn(conn);
                let req = http::Request::get("http://x/v2/").body(()).unwrap();
                let (resp, _) = h2.send_request(req, true).unwrap();
                let resp = resp.await.unwrap();
                assert_eq!(resp.status(), 200, "{protocol:?} over HTTP/2");
            } else {
                client
                    .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                let mut buf = [0u8; 256];
                let n = client.read(&mut buf).await.unwrap();
                assert!(
                    buf[..n].starts_with(b"HTTP/1.1 200"),
                    "{protocol:?} over HTTP/1.1: {}",
                    String::from_utf8_lossy(&buf[..n])
                );
            }
        }
    }
}
