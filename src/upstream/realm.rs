//! Which token realms may receive an upstream's credentials. A Bearer challenge names the
//! URL to fetch a token from, and whoever answers for the upstream (the upstream itself, or
//! anyone who can alter its answer) chooses it: sending the configured username and password
//! wherever it points would hand them over. They go only to the upstream's own host and
//! port, to a host of the same registrable domain (`auth.docker.io` for
//! `registry-1.docker.io`, by the public suffix list), or to a realm the admin listed in
//! `token_realms`; and never from an HTTPS upstream to a plain-HTTP realm unless listed.
//! Elsewhere the token is asked for anonymously.

use url::Url;

/// An upstream's rule for its token realms.
#[derive(Debug, Clone)]
pub struct RealmPolicy {
    base: Url,
    listed: Vec<Url>,
}

/// `scheme://host:port`, the part of a URL that says who receives a request.
fn origin(u: &Url) -> (String, Option<String>, Option<u16>) {
    (
        u.scheme().to_string(),
        u.host_str().map(str::to_ascii_lowercase),
        u.port_or_known_default(),
    )
}

/// The registrable domain of a host name (`docker.io` for `auth.docker.io`); `None` for IP
/// addresses and names that are themselves a public suffix or have no known one.
fn registrable(u: &Url) -> Option<String> {
    let host = u.domain()?.trim_end_matches('.').to_ascii_lowercase();
    let d = psl::domain(host.as_bytes())?;
    // A name under no rule of the list (`*` prevails) is not vouched for by it.
    if !d.suffix().is_known() {
        return None;
    }
    std::str::from_utf8(d.as_bytes()).ok().map(str::to_string)
}

impl RealmPolicy {
    /// The rule for an upstream at `base`, with the realms the admin trusts besides.
    pub fn new(base: &Url, listed: &[Url]) -> RealmPolicy {
        RealmPolicy {
            base: base.clone(),
            listed: listed.to_vec(),
        }
    }

    /// Whether `realm` may receive the credentials: the rule that allows it, or why not.
    pub fn check(&self, realm: &Url) -> Result<&'static str, String> {
        let want = origin(realm);
        if self.listed.iter().any(|l| origin(l) == want) {
            return Ok("listed in token_realms");
        }
        if self.base.scheme() == "https" && realm.scheme() != "https" {
            return Err(format!(
                "the upstream is HTTPS and the realm is {}:, which would send them in the clear",
                realm.scheme()
            ));
        }
        if origin(&self.base).1 == want.1 && self.base.port_or_known_default() == want.2 {
            return Ok("the upstream's own host");
        }
        if let (Some(a), Some(b)) = (registrable(&self.base), registrable(realm)) {
            if a == b {
                return Ok("the upstream's registrable domain");
            }
        }
        Err(format!(
            "{} is neither the upstream's host and port ({}) nor a host of its registrable domain, and token_realms does not list it",
            host_port(realm),
            host_port(&self.base)
        ))
    }
}

fn host_port(u: &Url) -> String {
    match (u.host_str(), u.port_or_known_default()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => u.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn allowed(base: &str, listed: &[&str], realm: &str) -> Result<&'static str, String> {
        let listed: Vec<Url> = listed.iter().map(|l| u(l)).collect();
        RealmPolicy::new(&u(base), &listed).check(&u(realm))
    }

    #[test]
    fn docker_hubs_shape_and_the_upstreams_own_host() {
        assert_eq!(
            allowed(
                "https://registry-1.docker.io",
                &[],
                "https://auth.docker.io/token"
            ),
            Ok("the upstream's registrable domain")
        );
        assert_eq!(
            allowed("https://ghcr.io", &[], "https://ghcr.io/token"),
            Ok("the upstream's own host")
        );
        assert_eq!(
            allowed("https://quay.io", &[], "https://QUAY.io:443/v2/auth"),
            Ok("the upstream's own host")
        );
        // Multi-label public suffixes: co.uk names are registrable one level below.
        assert!(allowed(
            "https://reg.example.co.uk",
            &[],
            "https://auth.example.co.uk/t"
        )
        .is_ok());
        assert!(allowed(
            "https://reg.example.co.uk",
            &[],
            "https://auth.other.co.uk/t"
        )
        .is_err());
    }

    #[test]
    fn elsewhere_they_are_refused_unless_listed() {
        let e = allowed("http://127.0.0.1:5000", &[], "http://127.0.0.1:5001/token").unwrap_err();
        assert!(
            e.contains("127.0.0.1:5001") && e.contains("token_realms"),
            "{e}"
        );
        assert!(allowed(
            "https://registry-1.docker.io",
            &[],
            "https://auth.docker.io.evil.com/t"
        )
        .is_err());
        assert!(allowed("https://registry.example.com", &[], "https://example.net/t").is_err());
        // Another tenant of a public suffix is not the same domain.
        assert!(allowed("https://a.github.io", &[], "https://b.github.io/t").is_err());
        assert!(allowed("https://localhost:5000", &[], "https://other.localhost/t").is_err());
        // No downgrade to plain HTTP, even on the same host.
        let e = allowed(
            "https://registry-1.docker.io",
            &[],
            "http://auth.docker.io/token",
        )
        .unwrap_err();
        assert!(e.contains("in the clear"), "{e}");
        assert_eq!(
            allowed(
                "http://127.0.0.1:5000",
                &["http://127.0.0.1:5001"],
                "http://127.0.0.1:5001/token?x=1"
            ),
            Ok("listed in token_realms")
        );
        assert!(
            allowed(
                "http://127.0.0.1:5000",
                &["https://127.0.0.1:5001"],
                "http://127.0.0.1:5001/t"
            )
            .is_err(),
            "a listed realm is its scheme, host and port"
        );
    }
}
