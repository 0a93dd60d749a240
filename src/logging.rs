//! The process's log output: where lines go, in which format, and the timestamps they start
//! with. Every event goes through tracing's subscriber, set up here; the access log (one
//! line per request, the hottest line by far) is formatted by `http::access` and handed to
//! [`write_line`] directly, in the same layout.
//!
//! Both write to one duplicate of stderr's descriptor, a whole line per `write(2)`, without
//! `Stderr`'s lock: that lock made the runtime's threads queue for one another (a futex wait
//! and wake) on every access-log line under load. A line written in one call stays whole
//! between concurrent writers (pipes keep writes of up to 4 KiB whole, files keep every
//! write at its own offset).

use std::cell::RefCell;
use std::fs::File;
use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `2026-12-01T14:44:12.109042Z  INFO target: message key=value ...`
    Text,
    /// One JSON object per line, the event's fields flattened beside `timestamp`, `level`,
    /// `message` and `target`.
    Json,
}

static FORMAT: OnceLock<Format> = OnceLock::new();
static OUT: OnceLock<Option<Arc<File>>> = OnceLock::new();

/// The format [`init`] chose (text before it ran).
pub fn format() -> Format {
    FORMAT.get().copied().unwrap_or(Format::Text)
}

/// The descriptor lines go to; `None` when stderr could not be duplicated (then `Stderr`).
fn out() -> Option<&'static Arc<File>> {
    OUT.get_or_init(|| {
        use std::os::fd::AsFd;
        std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .map(|fd| Arc::new(File::from(fd)))
    })
    .as_ref()
}

/// Installs the subscriber: the filter from `ARCHWAY_LOG` (or `RUST_LOG`, default `info`),
/// colour only when stderr is a terminal (escape codes in a file or a collector are noise).
pub fn init(format: Format) {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::EnvFilter;
    let _ = FORMAT.set(format);
    let filter = EnvFilter::try_from_env("ARCHWAY_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let writer = match out() {
        Some(f) => BoxMakeWriter::new(f.clone()),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    match format {
        Format::Text => builder.init(),
        Format::Json => builder.json().flatten_event(true).init(),
    }
}

/// Writes one whole line (ending in `\n`) in one call. A failing stderr is not the request's
/// problem: the line is dropped.
pub fn write_line(line: &[u8]) {
    let _ = match out() {
        Some(f) => (&**f).write_all(line),
        None => std::io::stderr().write_all(line),
    };
}

/// Appends the current UTC time as tracing writes it: `2026-12-01T14:44:12.109042Z`.
pub fn timestamp(buf: &mut Vec<u8>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    write_timestamp(buf, now.as_secs(), now.subsec_micros());
}

thread_local! {
    /// The last second formatted on this thread, and its `YYYY-MM-DDTHH:MM:SS.` text: lines
    /// of one second share it, so the calendar arithmetic runs once a second.
    static SECOND: RefCell<(u64, [u8; 20])> = const { RefCell::new((u64::MAX, [0; 20])) };
}

fn write_timestamp(buf: &mut Vec<u8>, secs: u64, micros: u32) {
    SECOND.with(|s| {
        let mut s = s.borrow_mut();
        if s.0 != secs {
            *s = (secs, second_prefix(secs));
        }
        buf.extend_from_slice(&s.1);
    });
    let mut digits = [b'0'; 6];
    let mut m = micros.min(999_999);
    for d in digits.iter_mut().rev() {
        *d = b'0' + (m % 10) as u8;
        m /= 10;
    }
    buf.extend_from_slice(&digits);
    buf.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS.` for `secs` after the epoch.
fn second_prefix(secs: u64) -> [u8; 20] {
    let rem = secs % 86_400;
    let (year, month, day) = crate::clock::civil_from_days((secs / 86_400) as i64);
    let mut out = [0u8; 20];
    let mut put = |at: usize, v: i64, width: usize| {
        let mut v = v.clamp(0, 9999);
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, (rem / 3600) as i64, 2);
    put(14, (rem / 60 % 60) as i64, 2);
    put(17, (rem % 60) as i64, 2);
    for (at, c) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ] {
        out[at] = c;
    }
    out
}

/// `n` in decimal, in `buf`: what `write!` does, without its formatting machinery, for the
/// numbers of every access-log line.
pub fn decimal(n: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    let mut n = n;
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).unwrap_or("0")
}

/// Appends `s` as a JSON string, quotes included.
pub fn json_string(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    for c in s.chars() {
        match c {
            '"' => buf.extend_from_slice(b"\\\""),
            '\\' => buf.extend_from_slice(b"\\\\"),
            '\n' => buf.extend_from_slice(b"\\n"),
            '\r' => buf.extend_from_slice(b"\\r"),
            '\t' => buf.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(buf, "\\u{:04x}", c as u32);
            }
            c => {
                let mut tmp = [0u8; 4];
                buf.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
            }
        }
    }
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: u64, micros: u32) -> String {
        let mut b = Vec::new();
        write_timestamp(&mut b, secs, micros);
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        // Values from `date -u -d @N`.
        assert_eq!(ts(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(ts(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(ts(1_709_164_799, 999_999), "2024-02-28T23:59:59.999999Z");
        assert_eq!(ts(1_796_135_052, 109_042), "2026-12-01T14:24:12.109042Z");
        assert_eq!(ts(4_102_444_800, 0), "2100-01-01T00:00:00.000000Z");
        // The per-second cache is keyed by the second, not reused across one.
        assert_eq!(ts(1_796_135_053, 1), "2026-12-01T14:24:13.000001Z");
        assert_eq!(ts(1_796_135_052, 1), "2026-12-01T14:24:12.000001Z");
    }

    #[test]
    fn decimals() {
        let mut b = [0u8; 20];
        for n in [0, 7, 10, 4_096, u64::MAX] {
            assert_eq!(decimal(n, &mut b), n.to_string());
        }
    }

    #[test]
    fn json_strings_escape_what_json_requires() {
        let mut b = Vec::new();
        json_string(&mut b, "a\"b\\c\nd\u{1}é");
        assert_eq!(String::from_utf8(b).unwrap(), r#""a\"b\\c\nd\u0001é""#);
    }
}
