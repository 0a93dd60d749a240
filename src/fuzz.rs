//! Entry points for the fuzz targets in `fuzz/`: one per parser that reads input from the
//! network or the config. Each checks what the parser promises beyond not panicking (what
//! it accepts prints back to itself, a range it resolves lies inside the blob, a challenge
//! it reads names a realm), so a fuzzer finds wrong answers as well as crashes. `make fuzz`
//! runs them under libFuzzer; the unit test below replays the committed corpus
//! (`fuzz/corpus/<target>/`), crashing inputs included, on every `make test`.

use std::str::FromStr;

use crate::oci::media::Accept;
use crate::oci::{index, manifest, Digest, Platform, Reference, RepoName, Tag};

/// A fuzz target: one input, checked.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory and `fuzz/fuzz_targets/` file.
pub const TARGETS: &[(&str, Target)] = &[
    ("reference", reference),
    ("range", range),
    ("accept", accept),
    ("challenge", challenge),
    ("manifest", manifest_json),
    ("platform", platform),
    ("htpasswd", htpasswd),
    ("config", config),
    ("endpoint", endpoint),
];

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// Repository names, tags, digests and references: what parses prints back to itself.
pub fn reference(data: &[u8]) {
    let Some(s) = text(data) else {
        return;
    };
    if let Ok(n) = RepoName::from_str(s) {
        assert_eq!(n.as_str(), s, "a name is kept as written");
        assert_eq!(RepoName::from_str(n.as_str()).ok(), Some(n));
    }
    if let Ok(t) = Tag::from_str(s) {
        assert_eq!(t.as_str(), s);
        assert!(t.as_str().len() <= 128, "tags are at most 128 characters");
    }
    if let Ok(d) = Digest::from_str(s) {
        assert_eq!(Digest::from_str(&d.to_string()).ok(), Some(d));
    }
    if let Ok(r) = Reference::from_str(s) {
        match r {
            Reference::Tag(t) => assert_eq!(t.as_str(), s),
            Reference::Digest(d) => assert_eq!(d.to_string(), s),
        }
    }
}

/// `Range` headers: a range resolved against a size lies within it and is not empty.
pub fn range(data: &[u8]) {
    let Some(s) = text(data) else {
        return;
    };
    let Some(spec) = crate::range::parse(s) else {
        return;
    };
    for size in [0, 1, 7, 1000, u64::MAX] {
        if let Some(r) = spec.resolve(size) {
            assert!(
                r.start < r.end && r.end <= size,
                "{spec:?} on {size}: {r:?}"
            );
        }
    }
}

/// `Accept` lines: a type named is accepted, and a wildcard accepts everything.
pub fn accept(data: &[u8]) {
    let Some(s) = text(data) else {
        return;
    };
    let a = Accept::parse(s.lines());
    for probe in [
        crate::oci::media::OCI_INDEX,
        crate::oci::media::DOCKER_MANIFEST,
        "text/plain",
    ] {
        if a.accepts_anything() {
            assert!(a.accepts(probe));
        }
    }
    let _ = (a.accepts_index(), a.names_index(), a.is_empty());
}

/// `WWW-Authenticate` challenges from an upstream, and its token endpoint's answer.
pub fn challenge(data: &[u8]) {
    if let Some(s) = text(data) {
        if let Some(crate::upstream::auth::Challenge::Bearer { realm, .. }) =
            crate::upstream::auth::parse_challenge(s)
        {
            assert!(!realm.is_empty(), "a Bearer challenge names its realm");
        }
    }
    let _ = crate::upstream::auth::parse_token(data, tokio::time::Instant::now());
}

/// Manifest, index and image-config JSON, under each media type a client may claim.
pub fn manifest_json(data: &[u8]) {
    for ct in [
        None,
        Some(crate::oci::media::OCI_MANIFEST),
        Some(crate::oci::media::OCI_INDEX),
        Some(crate::oci::media::DOCKER_MANIFEST),
        Some(crate::oci::media::DOCKER_LIST),
    ] {
        if let Ok(refs) = manifest::parse(data, ct) {
            for (d, _) in &refs.blobs {
                assert_eq!(Digest::from_str(&d.to_string()).ok().as_ref(), Some(d));
            }
        }
    }
    let _ = index::config_platform(data);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        for e in index::entries(&v) {
            let _ = (index::descriptor_platform(e), index::entry_digest(e));
            let _ = index::is_attachment(e);
        }
        let _ = index::select(&v, &Platform::new("linux", "arm", "v7"));
    }
}

/// Platforms as the config and `?platform=` write them, and Docker's `User-Agent`.
pub fn platform(data: &[u8]) {
    let Some(s) = text(data) else {
        return;
    };
    if let Ok(p) = Platform::from_str(s) {
        assert_eq!(Platform::from_str(&p.to_string()).ok(), Some(p.clone()));
        let _ = p.normalized();
    }
    let _ = Platform::from_user_agent(s);
}

/// The htpasswd file: every user it accepts has a name and a bcrypt hash.
pub fn htpasswd(data: &[u8]) {
    let Some(s) = text(data) else {
        return;
    };
    if let Ok(users) = crate::config::parse_htpasswd(s) {
        for (user, hash) in users {
            assert!(!user.is_empty() && !user.contains(':'), "{user:?}");
            assert!(hash.starts_with("$2"), "only bcrypt: {hash:?}");
        }
    }
}

/// The TOML config. Inputs that name files are skipped: the loader reads them, and a
/// fuzzer must not make it read `/dev/zero`.
pub fn config(data: &[u8]) {
    let Some(s) = text(data) else {
        return;
    };
    if ["file", "htpasswd", "cert", "key"]
        .iter()
        .any(|w| s.contains(w))
    {
        return;
    }
    if let Err(e) = crate::config::Config::from_toml(s, "fuzz.toml", None) {
        assert!(!e.errors.is_empty(), "a refused config says why");
    }
}

/// Request paths, as the router splits them.
pub fn endpoint(data: &[u8]) {
    if let Some(s) = text(data) {
        let _ = crate::http::endpoint::parse(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `make test` replays what the fuzzers found and the seeds they started from.
    #[test]
    fn the_committed_corpus_replays_cleanly() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        let mut replayed = 0;
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let entries = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}: every target has a corpus", dir.display()));
            for e in entries {
                let path = e.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "{name}: {} fails", path.display());
                replayed += 1;
            }
        }
        assert!(
            replayed >= TARGETS.len() * 3,
            "{replayed} inputs: seeds are missing"
        );
    }
}
