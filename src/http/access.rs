//! The access log: one line per request, under the `archway::access` target, in the layout
//! of the other log lines (text or JSON, see [`crate::logging`]).
//!
//! Formatted here rather than by tracing's formatter because it is written for every
//! request: through tracing's field visitors (each value through `Debug`, each name through
//! a styling wrapper) the line cost about a third of a cached manifest GET's instructions;
//! written straight into a reused buffer it costs a few percent. The filter still decides:
//! `ARCHWAY_LOG=warn` or `archway::access=off` turn it off like any other target.

use std::cell::RefCell;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use crate::logging::{self, Format};

/// What the line says about one request.
pub(super) struct Entry<'a> {
    pub id: &'a str,
    pub peer: SocketAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// The body's length when the response announced one.
    pub bytes: Option<u64>,
    pub elapsed: Duration,
    /// Where the answer came from (`registry::Provenance`), `-` when nothing was served.
    pub cache: &'a str,
}

/// Whether access lines are wanted (the log filter's decision, cached by tracing).
pub(super) fn enabled() -> bool {
    tracing::enabled!(target: "archway::access", tracing::Level::INFO)
}

thread_local! {
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

/// Writes the line for `e`.
pub(super) fn write(e: &Entry<'_>) {
    LINE.with(|line| {
        let Ok(mut buf) = line.try_borrow_mut() else {
            return;
        };
        buf.clear();
        format(&mut buf, e, logging::format());
        logging::write_line(&buf);
    });
}

fn format(buf: &mut Vec<u8>, e: &Entry<'_>, format: Format) {
    let micros = e.elapsed.as_micros().min(u128::from(u64::MAX)) as u64;
    if format == Format::Json {
        buf.extend_from_slice(b"{\"timestamp\":\"");
        logging::timestamp(buf);
        buf.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"id\":");
        logging::json_string(buf, e.id);
        buf.extend_from_slice(b",\"peer\":\"");
        peer(buf, e.peer);
        buf.extend_from_slice(b"\",\"method\":");
        logging::json_string(buf, e.method);
        buf.extend_from_slice(b",\"path\":");
        logging::json_string(buf, e.path);
        buf.extend_from_slice(b",\"status\":");
        number(buf, u64::from(e.status));
        buf.extend_from_slice(b",\"bytes\":");
        match e.bytes {
            Some(b) => number(buf, b),
            None => buf.extend_from_slice(b"null"),
        }
        buf.extend_from_slice(b",\"ms\":");
        millis(buf, micros);
        buf.extend_from_slice(b",\"cache\":");
        logging::json_string(buf, e.cache);
        buf.extend_from_slice(b",\"target\":\"archway::access\"}\n");
    } else {
        logging::timestamp(buf);
        buf.extend_from_slice(b"  INFO archway::access: request id=");
        buf.extend_from_slice(e.id.as_bytes());
        buf.extend_from_slice(b" peer=");
        peer(buf, e.peer);
        buf.extend_from_slice(b" method=");
        buf.extend_from_slice(e.method.as_bytes());
        buf.extend_from_slice(b" path=");
        buf.extend_from_slice(e.path.as_bytes());
        buf.extend_from_slice(b" status=");
        number(buf, u64::from(e.status));
        buf.extend_from_slice(b" bytes=");
        match e.bytes {
            Some(b) => number(buf, b),
            None => buf.push(b'-'),
        }
        buf.extend_from_slice(b" ms=");
        millis(buf, micros);
        buf.extend_from_slice(b" cache=");
        buf.extend_from_slice(e.cache.as_bytes());
        buf.push(b'\n');
    }
}

fn number(buf: &mut Vec<u8>, v: u64) {
    let mut digits = [0u8; 20];
    buf.extend_from_slice(logging::decimal(v, &mut digits).as_bytes());
}

/// Microseconds as milliseconds with three decimals: `1.234`.
fn millis(buf: &mut Vec<u8>, micros: u64) {
    number(buf, micros / 1000);
    let frac = micros % 1000;
    buf.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// `address:port`, as `SocketAddr`'s `Display` writes it (IPv6 in brackets).
fn peer(buf: &mut Vec<u8>, peer: SocketAddr) {
    match peer {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                number(buf, u64::from(octet));
            }
            buf.push(b':');
            number(buf, u64::from(v4.port()));
        }
        SocketAddr::V6(_) => {
            let _ = write!(buf, "{peer}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, bytes: Option<u64>) -> Entry<'_> {
        Entry {
            id: "e57ed663-1",
            peer: "127.0.0.1:47404".parse().unwrap(),
            method: "GET",
            path,
            status: 200,
            bytes,
            elapsed: Duration::from_micros(1_234),
            cache: "cache",
        }
    }

    #[test]
    fn text_lines_have_tracings_layout() {
        let mut b = Vec::new();
        format(
            &mut b,
            &entry("/v2/a/b/manifests/v1", Some(723)),
            Format::Text,
        );
        let line = String::from_utf8(b).unwrap();
        let (ts, rest) = line.split_at(27);
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
        assert_eq!(
            rest,
            "  INFO archway::access: request id=e57ed663-1 peer=127.0.0.1:47404 method=GET \
             path=/v2/a/b/manifests/v1 status=200 bytes=723 ms=1.234 cache=cache\n"
        );
    }

    #[test]
    fn json_lines_parse_with_typed_fields() {
        let mut b = Vec::new();
        format(&mut b, &entry("/v2/a\"b/tags/list?n=1", None), Format::Json);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["target"], "archway::access");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "request");
        assert_eq!(v["path"], "/v2/a\"b/tags/list?n=1");
        assert_eq!(v["peer"], "127.0.0.1:47404");
        assert_eq!(v["status"], 200);
        assert!(v["bytes"].is_null());
        assert_eq!(v["ms"], 1.234);
        assert_eq!(v["cache"], "cache");
        assert!(b.ends_with(b"}\n") && !b[..b.len() - 1].contains(&b'\n'));
    }

    #[test]
    fn peers_and_durations_are_written_like_display() {
        for addr in [
            "10.0.0.255:1",
            "[::1]:5000",
            "[fe80::1%2]:80",
            "0.0.0.0:65535",
        ] {
            let mut b = Vec::new();
            let a: SocketAddr = addr.parse().unwrap();
            peer(&mut b, a);
            assert_eq!(String::from_utf8(b).unwrap(), a.to_string());
        }
        for (micros, want) in [
            (0, "ms=0.000 "),
            (1_000, "ms=1.000 "),
            (61_234_567, "ms=61234.567 "),
        ] {
            let mut e = entry("/v2/", None);
            e.elapsed = Duration::from_micros(micros);
            let mut b = Vec::new();
            format(&mut b, &e, Format::Text);
            assert!(String::from_utf8(b).unwrap().contains(want), "{micros}");
        }
    }
}
