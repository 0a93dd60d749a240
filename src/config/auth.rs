//! `[auth]`: client authentication on the registry port, from an htpasswd file of bcrypt
//! entries (as `htpasswd -B` writes them).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use super::values::{self, Errors};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    htpasswd: Option<String>,
    #[serde(default)]
    anonymous: bool,
}

/// htpasswd users (bcrypt hashes, never printed) and whether anonymous pulls pass.
#[derive(Clone)]
pub struct AuthConfig {
    /// User name → bcrypt hash.
    pub users: HashMap<String, String>,
    /// Whether requests without credentials may pull (wrong credentials still fail).
    pub anonymous: bool,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("users", &self.users.len())
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

pub(super) fn validate(
    raw: Option<RawAuth>,
    base: Option<&Path>,
    errs: &mut Errors,
) -> Option<AuthConfig> {
    let raw = raw?;
    let Some(file) = raw.htpasswd else {
        errs.push("auth.htpasswd", "missing: [auth] needs an htpasswd file");
        return None;
    };
    let text = values::read_file(errs, base, "auth.htpasswd", &file)?;
    match parse_htpasswd(&String::from_utf8_lossy(&text)) {
        Ok(users) if users.is_empty() => {
            errs.push("auth.htpasswd", format!("{file}: no users"));
            None
        }
        Ok(users) => Some(AuthConfig {
            users,
            anonymous: raw.anonymous,
        }),
        Err(e) => {
            errs.push("auth.htpasswd", format!("{file}: {e}"));
            None
        }
    }
}

/// Parses an htpasswd file: `user:$2y$...` lines; blank lines and `#` comments are skipped.
/// Only bcrypt is accepted: the other htpasswd schemes (crypt, MD5, SHA1) are too weak to
/// keep in a file that may leak.
pub fn parse_htpasswd(text: &str) -> Result<HashMap<String, String>, String> {
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| format!("line {}: not user:hash", i + 1))?;
        // Found by the fuzzer: `:$2y$...` made a user with no name, whom a client could
        // log in as with `Authorization: Basic <base64 of ":password">`.
        if user.is_empty() {
            return Err(format!("line {}: no user name before the ':'", i + 1));
        }
        if !(hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$")) {
            return Err(format!(
                "line {}: user {user:?} does not have a bcrypt hash (create it with htpasswd -B)",
                i + 1
            ));
        }
        users.insert(user.to_string(), hash.to_string());
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htpasswd_files() {
        let users = parse_htpasswd("# users\nalice:$2y$04$abc\n\n").unwrap();
        assert_eq!(users["alice"], "$2y$04$abc");
        assert!(parse_htpasswd("bob:{SHA}abc")
            .unwrap_err()
            .contains("bcrypt"));
        assert!(parse_htpasswd("nocolon").unwrap_err().contains("line 1"));
        assert!(parse_htpasswd("a:$2y$04$x\n:$2y$04$abc")
            .unwrap_err()
            .contains("line 2: no user name"));
    }
}
