//! Reading one value of a config: durations, byte sizes, addresses and files named by the
//! config, each failure recorded against its key so that every problem is reported at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ConfigError;

/// The problems found so far in one config.
#[derive(Debug, Default)]
pub(super) struct Errors(pub(super) Vec<ConfigError>);

impl Errors {
    pub(super) fn push(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(ConfigError {
            key: key.into(),
            reason: reason.into(),
        });
    }
}

/// A duration such as `"30s"` or `"5m"`; `default` when absent (or unreadable).
pub(super) fn duration(
    errs: &mut Errors,
    key: &str,
    v: Option<&str>,
    default: Duration,
) -> Duration {
    let Some(s) = v else {
        return default;
    };
    match humantime::parse_duration(s) {
        Ok(d) => d,
        Err(e) => {
            errs.push(
                key,
                format!("bad duration {s:?}: {e} (e.g. \"30s\", \"5m\")"),
            );
            default
        }
    }
}

/// A byte size such as `"200GiB"` or `"512MB"`.
pub(super) fn size(errs: &mut Errors, key: &str, v: Option<&str>) -> Option<u64> {
    let s = v?;
    match s.parse::<bytesize::ByteSize>() {
        Ok(b) => Some(b.as_u64()),
        Err(e) => {
            errs.push(
                key,
                format!("bad size {s:?}: {e} (e.g. \"256MiB\", \"200GiB\")"),
            );
            None
        }
    }
}

/// A socket address such as `"127.0.0.1:5000"`.
pub(super) fn address(errs: &mut Errors, key: &str, s: &str) -> Option<SocketAddr> {
    match s.parse() {
        Ok(a) => Some(a),
        Err(e) => {
            errs.push(
                key,
                format!("bad address {s:?}: {e} (e.g. \"127.0.0.1:5000\")"),
            );
            None
        }
    }
}

/// Reads a file named by the config; relative paths are relative to the config's directory.
pub(super) fn read_file(
    errs: &mut Errors,
    base: Option<&Path>,
    key: &str,
    path: &str,
) -> Option<Vec<u8>> {
    let p = resolve(base, path);
    match std::fs::read(&p) {
        Ok(b) => Some(b),
        Err(e) => {
            errs.push(key, format!("cannot read {}: {e}", p.display()));
            None
        }
    }
}

/// A secret kept in a file (a password, an access key): its text without the trailing newline
/// that editors and `echo` add.
pub(super) fn read_secret(
    errs: &mut Errors,
    base: Option<&Path>,
    key: &str,
    path: &str,
) -> Option<String> {
    read_file(errs, base, key, path).map(|b| {
        String::from_utf8_lossy(&b)
            .trim_end_matches(['\n', '\r'])
            .to_string()
    })
}

/// A path as the config names it, relative to the config's directory.
pub(super) fn resolve(base: Option<&Path>, path: &str) -> PathBuf {
    let p = Path::new(path);
    match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p.to_path_buf(),
    }
}
