//! Upstream authentication: `WWW-Authenticate` challenges, Basic credentials and the Bearer
//! token flow of the distribution token spec, with tokens cached per scope until they expire.
//!
//! Tokens and passwords are never logged: the types holding them redact themselves in `Debug`.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use tokio::time::Instant;

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses `Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let params = parse_params(rest);
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer {
            // An empty realm names no token endpoint: the challenge cannot be answered.
            realm: params.get("realm").filter(|r| !r.is_empty())?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        })
    } else {
        None
    }
}

/// auth-param list: `key=value` or `key="quoted, value"`, comma separated.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        while chars.peek().is_some_and(|c| *c == ' ') {
            chars.next();
        }
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        out.insert(key.trim().to_ascii_lowercase(), value);
    }
    out
}

/// Username and password for an upstream.
#[derive(Clone)]
pub struct Credentials {
    /// The upstream's `username` key.
    pub username: String,
    /// Read from the upstream's `password_file`; never logged.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({:?}, <redacted>)", self.username)
    }
}

impl Credentials {
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// A bearer token and when to stop using it.
#[derive(Clone)]
pub struct Token {
    /// Sent as `Authorization: Bearer`; never logged.
    pub value: String,
    /// A little before the lifetime the token endpoint gave runs out, so it never dies in flight.
    pub expires: Instant,
}

impl Token {
    /// Whether the token may still be sent at `now`. Tokens are cached per scope; one that
    /// has expired is fetched again rather than sent to collect a 401.
    pub fn usable(&self, now: Instant) -> bool {
        now < self.expires
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(<redacted>, expires {:?})", self.expires)
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// The token spec's default lifetime when the server names none.
const DEFAULT_TOKEN_LIFETIME: u64 = 60;

/// Reads a token endpoint's JSON answer. The token is reused until shortly before it expires,
/// so a request never goes out with a token that dies in flight.
pub fn parse_token(body: &[u8], now: Instant) -> Option<Token> {
    let r: TokenResponse = serde_json::from_slice(body).ok()?;
    let value = r.token.or(r.access_token).filter(|t| !t.is_empty())?;
    let lifetime = r.expires_in.unwrap_or(DEFAULT_TOKEN_LIFETIME).max(1);
    let margin = (lifetime / 10).clamp(1, 30);
    Some(Token {
        value,
        expires: now + Duration::from_secs(lifetime.saturating_sub(margin).max(1)),
    })
}

/// The pull scope for a repository.
pub fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(r#"bearer realm=http://x/token, service = "a\"b""#),
            Some(Challenge::Bearer {
                realm: "http://x/token".into(),
                service: Some("a\"b".into()),
                scope: None,
            })
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(
            parse_challenge("bearer realm=,service=x"),
            None,
            "found by the fuzzer"
        );
        assert_eq!(parse_challenge("Negotiate abc"), None);
    }

    #[test]
    fn tokens() {
        let now = Instant::now();
        let t = parse_token(br#"{"token":"abc","expires_in":300}"#, now).unwrap();
        assert_eq!(t.value, "abc");
        assert_eq!(t.expires, now + Duration::from_secs(270));
        let t = parse_token(br#"{"access_token":"xyz"}"#, now).unwrap();
        assert_eq!(t.value, "xyz");
        assert_eq!(t.expires, now + Duration::from_secs(54));
        assert!(t.usable(now + Duration::from_secs(53)));
        assert!(
            !t.usable(now + Duration::from_secs(54)),
            "refetched once it expires"
        );
        assert!(parse_token(br#"{"token":""}"#, now).is_none());
        assert!(parse_token(b"nope", now).is_none());
        assert!(!format!("{t:?}").contains("xyz"));
    }

    #[test]
    fn basic_header() {
        let c = Credentials {
            username: "u".into(),
            password: "p".into(),
        };
        assert_eq!(c.basic_header(), "Basic dTpw");
        assert!(!format!("{c:?}").contains("\"p\""));
    }
}
