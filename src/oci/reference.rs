//! Repository names and manifest references, checked against the distribution spec's grammar.
//!
//! The grammar is what keeps a request from escaping the storage layout: a component can only
//! start with `[a-z0-9]`, so `..`, `_tags` or an empty segment can never appear in a key.

use std::fmt;
use std::str::FromStr;

use super::digest::{Digest, DigestError};

/// Longest repository name accepted. Clients commonly cap `host/name` at 255 characters.
pub const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("repository name is empty")]
    Empty,
    #[error("repository name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("repository name component {0:?} does not match [a-z0-9]+((.|_|__|-+)[a-z0-9]+)*")]
    BadComponent(String),
    #[error("tag {0:?} does not match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    BadTag(String),
}

/// A repository name such as `library/alpine`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(Box<str>);

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The name with its first component removed, if more than one remains.
    pub fn strip_first(&self) -> Option<RepoName> {
        self.0
            .split_once('/')
            .map(|(_, rest)| RepoName(rest.into()))
    }

    /// `library/<name>` for a one-component name, as Docker Hub resolves official images.
    pub fn with_library_prefix(&self) -> RepoName {
        if self.0.contains('/') {
            self.clone()
        } else {
            RepoName(format!("library/{}", self.0).into())
        }
    }

    /// Last path component (`alpine` for `library/alpine`).
    pub fn last_component(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

fn valid_component(c: &str) -> bool {
    // [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() {
        return false;
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    // A run of alphanumerics must start the component and follow every separator.
    loop {
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

impl FromStr for RepoName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        for c in s.split('/') {
            if !valid_component(c) {
                return Err(NameError::BadComponent(c.to_string()));
            }
        }
        Ok(RepoName(s.into()))
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A tag such as `latest`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(Box<str>);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let first_ok = b
            .first()
            .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_');
        let rest_ok = b
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if !first_ok || !rest_ok || b.len() > MAX_TAG_LEN {
            return Err(NameError::BadTag(s.to_string()));
        }
        Ok(Tag(s.into()))
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// What follows `/manifests/`: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error(transparent)]
    Tag(#[from] NameError),
    #[error(transparent)]
    Digest(#[from] DigestError),
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // A tag can never contain ':', so the colon alone tells the two apart.
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(s.parse()?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

/// Splits `registry/repository:tag` into its three parts (the tag after the last `/`), as
/// fallback rules and `archway inspect` name images. Not validated: the parts still have to
/// parse as a [`RepoName`] and a [`Tag`].
pub fn split_reference(r: &str) -> Option<(&str, &str, &str)> {
    let (host, rest) = r.split_once('/')?;
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    let colon = rest[slash..].find(':').map(|i| slash + i)?;
    Some((host, &rest[..colon], &rest[colon + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for n in [
            "a",
            "library/alpine",
            "docker.io/library/alpine",
            "a-b/c__d/e.f/g_h",
            "a---b",
            "0/1/2/3",
            "thinklab/go-hello-world",
        ] {
            assert!(n.parse::<RepoName>().is_ok(), "{n}");
        }
    }

    #[test]
    fn rejects_invalid_names() {
        for n in [
            "",
            "/a",
            "a/",
            "a//b",
            "A",
            "a/../b",
            "..",
            ".a",
            "a.",
            "a..b",
            "a___b",
            "_a",
            "a/_tags",
            "a-",
            "-a",
            "a b",
            "a%2fb",
            "127.0.0.1:5000/a",
        ] {
            assert!(n.parse::<RepoName>().is_err(), "{n:?} should be rejected");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert_eq!(long.parse::<RepoName>(), Err(NameError::TooLong));
    }

    #[test]
    fn library_prefix_and_strip() {
        let n: RepoName = "alpine".parse().unwrap();
        assert_eq!(n.with_library_prefix().as_str(), "library/alpine");
        let n: RepoName = "x/alpine".parse().unwrap();
        assert_eq!(n.with_library_prefix().as_str(), "x/alpine");
        let n: RepoName = "docker.io/library/alpine".parse().unwrap();
        assert_eq!(n.strip_first().unwrap().as_str(), "library/alpine");
        assert_eq!(n.last_component(), "alpine");
        assert!("alpine"
            .parse::<RepoName>()
            .unwrap()
            .strip_first()
            .is_none());
    }

    #[test]
    fn tags() {
        for t in ["latest", "_x", "1.0", "s390x-latest", "A.b-c_d"] {
            assert!(t.parse::<Tag>().is_ok(), "{t}");
        }
        for t in ["", ".x", "-x", "a/b", "a:b", "..", &"a".repeat(129)] {
            assert!(t.parse::<Tag>().is_err(), "{t:?}");
        }
        assert!("a".repeat(128).parse::<Tag>().is_ok());
    }

    #[test]
    fn references() {
        assert!(matches!("latest".parse(), Ok(Reference::Tag(_))));
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(matches!(d.parse(), Ok(Reference::Digest(_))));
        assert!(matches!(
            "sha256:zz".parse::<Reference>(),
            Err(ReferenceError::Digest(_))
        ));
        assert!(matches!(
            "..".parse::<Reference>(),
            Err(ReferenceError::Tag(_))
        ));
    }

    #[test]
    fn image_references() {
        assert_eq!(
            split_reference("docker.io/a/b:c"),
            Some(("docker.io", "a/b", "c"))
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/a:v1"),
            Some(("127.0.0.1:5000", "a", "v1"))
        );
        assert_eq!(split_reference("docker.io/a/b"), None);
    }
}
