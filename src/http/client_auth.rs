//! Client authentication on the registry port: HTTP Basic against an htpasswd file of bcrypt
//! entries (as `htpasswd -B` writes them), so `docker login`, `podman login` and
//! `skopeo --creds` work.
//!
//! bcrypt is deliberately slow, so a verified (user, password) pair is remembered for a few
//! minutes under a sha256 of the password: one bcrypt per client session, not per request.
//! Repeated failures from one address are throttled.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;

use crate::config::AuthConfig;
use crate::error::Error;
use crate::oci::Digest;

/// Failures from one address within [`FAILURE_WINDOW`] before it is refused outright.
const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Checks the `Authorization` header of requests on the registry port.
pub struct ClientAuth {
    /// User name → bcrypt hash.
    users: HashMap<String, String>,
    anonymous: bool,
    /// (user, sha256 of the password) pairs that bcrypt accepted recently.
    verified: moka::sync::Cache<(String, Digest), ()>,
    /// Recent failures per client address.
    failures: moka::sync::Cache<IpAddr, Arc<AtomicU32>>,
    /// bcrypt verifications run, for the test that proves the cache spares them.
    bcrypt_runs: AtomicU64,
}

impl ClientAuth {
    pub fn new(config: &AuthConfig) -> ClientAuth {
        ClientAuth {
            users: config.users.clone(),
            anonymous: config.anonymous,
            bcrypt_runs: AtomicU64::new(0),
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(300))
                .build(),
            failures: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(FAILURE_WINDOW)
                .build(),
        }
    }

    /// Checks a request's `Authorization` header. `Ok` lets it through, with the user it
    /// authenticated (`None`: anonymous, where that is allowed).
    pub fn check(
        &self,
        peer: IpAddr,
        authorization: Option<&str>,
    ) -> Result<Option<String>, Error> {
        let failures = self.failures.get_with(peer, || Arc::new(AtomicU32::new(0)));
        if failures.load(Ordering::Relaxed) >= MAX_FAILURES {
            return Err(Error::TooManyRequests(
                "too many failed logins from this address; try again in a minute".into(),
            ));
        }
        let Some(header) = authorization else {
            return if self.anonymous {
                Ok(None)
            } else {
                Err(Error::Unauthorized("authentication required"))
            };
        };
        let creds = header
            .strip_prefix("Basic ")
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok());
        let mut who = None;
        let ok = creds
            .as_deref()
            .and_then(|c| c.split_once(':'))
            .is_some_and(|(user, pass)| {
                who = Some(user.to_string());
                let key = (user.to_string(), Digest::sha256_of(pass.as_bytes()));
                if self.verified.contains_key(&key) {
                    return true;
                }
                let good = self.users.get(user).is_some_and(|hash| {
                    self.bcrypt_runs.fetch_add(1, Ordering::Relaxed);
                    bcrypt::verify(pass, hash).unwrap_or(false)
                });
                if good {
                    self.verified.insert(key, ());
                }
                good
            });
        if ok {
            Ok(who)
        } else {
            failures.fetch_add(1, Ordering::Relaxed);
            Err(Error::Unauthorized("invalid username or password"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(u: &str, p: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    }

    fn config(anonymous: bool) -> AuthConfig {
        let hash = bcrypt::hash("pw", 4).unwrap();
        AuthConfig {
            users: HashMap::from([("alice".to_string(), hash)]),
            anonymous,
        }
    }

    #[test]
    fn checks() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let strict = ClientAuth::new(&config(false));
        assert!(strict.check(ip, Some(&basic("alice", "pw"))).is_ok());
        assert!(strict.check(ip, Some(&basic("alice", "pw"))).is_ok());
        assert_eq!(
            strict.bcrypt_runs.load(Ordering::Relaxed),
            1,
            "a verified login is remembered: one bcrypt for both checks"
        );
        assert!(matches!(
            strict.check(ip, None),
            Err(Error::Unauthorized(_))
        ));
        assert!(matches!(
            strict.check(ip, Some(&basic("alice", "nope"))),
            Err(Error::Unauthorized(_))
        ));
        let open = ClientAuth::new(&config(true));
        assert!(open.check(ip, None).is_ok());
        assert!(
            open.check(ip, Some(&basic("mallory", "x"))).is_err(),
            "wrong creds still fail"
        );
        for _ in 0..MAX_FAILURES {
            let _ = open.check(ip, Some("Basic !!!"));
        }
        assert!(matches!(
            open.check(ip, Some(&basic("alice", "pw"))),
            Err(Error::TooManyRequests(_))
        ));
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(open.check(other, Some(&basic("alice", "pw"))).is_ok());
    }
}
