//! How replicas prove to each other that they are replicas: each request to the internal
//! endpoint carries `Authorization: ArchwayCluster <unix seconds>:<hex HMAC-SHA256>`, keyed
//! by the shared secret, over the time, the method and the path with its query. A captured
//! header is good for one path and a minute, so it opens nothing else.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The scheme in the `Authorization` header.
pub const SCHEME: &str = "ArchwayCluster";

/// How far a request's time may be from ours: replicas' clocks are NTP-synced, and a
/// request is used at once.
const MAX_SKEW_SECS: u64 = 60;

/// Why a request to the internal endpoint was refused (said in the log, never to the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no ArchwayCluster credentials")]
    Missing,
    #[error("malformed ArchwayCluster credentials")]
    Malformed,
    #[error("credentials from {0} s away from this replica's clock")]
    Skewed(i64),
    #[error("credentials do not match the shared secret")]
    Mismatch,
}

fn mac(secret: &[u8], time: u64, method: &str, path: &str) -> Hmac<Sha256> {
    // Keys of any length are accepted by HMAC.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|e| unreachable!("HMAC takes any key length: {e}"));
    m.update(format!("{time}\n{method}\n{path}").as_bytes());
    m
}

/// The `Authorization` value for `method path` at `time` (unix seconds).
pub fn authorization(secret: &[u8], time: u64, method: &str, path: &str) -> String {
    let tag = mac(secret, time, method, path).finalize().into_bytes();
    format!("{SCHEME} {time}:{}", hex::encode(tag))
}

/// Checks a request's `Authorization` value against the secret, at `now` (unix seconds).
pub fn verify(
    secret: &[u8],
    header: Option<&str>,
    method: &str,
    path: &str,
    now: u64,
) -> Result<(), Refusal> {
    let value = header.ok_or(Refusal::Missing)?;
    let creds = value
        .strip_prefix(SCHEME)
        .and_then(|v| v.strip_prefix(' '))
        .ok_or(Refusal::Missing)?;
    let (time, tag) = creds.split_once(':').ok_or(Refusal::Malformed)?;
    let time: u64 = time.parse().map_err(|_| Refusal::Malformed)?;
    let tag = hex::decode(tag).map_err(|_| Refusal::Malformed)?;
    let skew = now as i64 - time as i64;
    if skew.unsigned_abs() > MAX_SKEW_SECS {
        return Err(Refusal::Skewed(skew));
    }
    // Constant time: the comparison says nothing about how much of a guess was right.
    mac(secret, time, method, path)
        .verify_slice(&tag)
        .map_err(|_| Refusal::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const PATH: &str = "/_archway/fills/sha256:ab?offset=0";

    #[test]
    fn only_the_secret_for_this_path_and_minute_opens_the_endpoint() {
        let now = 1_800_000_000;
        let good = authorization(SECRET, now, "GET", PATH);
        assert_eq!(verify(SECRET, Some(&good), "GET", PATH, now + 30), Ok(()));
        assert_eq!(
            verify(SECRET, None, "GET", PATH, now),
            Err(Refusal::Missing)
        );
        assert_eq!(
            verify(SECRET, Some("Bearer x"), "GET", PATH, now),
            Err(Refusal::Missing)
        );
        assert_eq!(
            verify(SECRET, Some("ArchwayCluster zz"), "GET", PATH, now),
            Err(Refusal::Malformed)
        );
        let other = authorization(b"another secret of enough bytes!!", now, "GET", PATH);
        assert_eq!(
            verify(SECRET, Some(&other), "GET", PATH, now),
            Err(Refusal::Mismatch)
        );
        assert_eq!(
            verify(
                SECRET,
                Some(&good),
                "GET",
                "/_archway/fills/sha256:cd?offset=0",
                now
            ),
            Err(Refusal::Mismatch),
            "another path"
        );
        assert_eq!(
            verify(SECRET, Some(&good), "GET", PATH, now + 120),
            Err(Refusal::Skewed(120)),
            "replayed later"
        );
    }
}
