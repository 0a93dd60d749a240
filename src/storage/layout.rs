//! Where things live in the object store. Every key is built here from validated types, so
//! nothing a client sends can name a key outside this layout.
//!
//! ```text
//! blobs/<alg>/<first two hex>/<hex>                          blob and manifest bytes (content-addressed)
//! repositories/<upstream>/<repo>/_manifests/<alg>/<hex>      manifest link: {mediaType, size}
//! repositories/<upstream>/<repo>/_tags/<tag>                 tag record: {digest, mediaType, size, checkedAt}
//! repositories/<upstream>/<repo>/_blobs/<alg>/<hex>          blob link: {size}
//! repositories/<upstream>/<repo>/_signed/<alg>/<hex>         what archway vouches for when it signs
//! repositories/<upstream>/<repo>/_referrers/<alg>/<hex>      the referrers of a manifest, last checked
//! access/<epoch millis>-<replica>-<n>.json                   access times, written in batches
//! fills/<alg>/<hex>                                          [cluster] lease of a fill in progress
//! hosted/<name>/<repo>/_manifests/<alg>/<hex>                pushed manifest: {mediaType, size, ...}
//! hosted/<name>/<repo>/_tags/<tag>                           pushed tag: {digest, mediaType, size}
//! hosted/<name>/<repo>/_blobs/<alg>/<hex>                    pushed blob: {size}
//! hosted/<name>/<repo>/_referrers/<alg>/<hex>/<alg>/<hex>    a pushed manifest whose subject is the first digest
//! uploads/<id>.json                                          a blob upload in progress
//! uploads/<id>/<offset>                                      one chunk of it
//! ```
//! Repository components start with `[a-z0-9]`, so the `_`-prefixed directories can never
//! collide with a repository name.

use object_store::path::Path;

use crate::oci::{Digest, RepoName, Tag};

pub const BLOBS: &str = "blobs";
pub const REPOSITORIES: &str = "repositories";
pub const ACCESS: &str = "access";
/// Hosted repositories: what clients pushed. Never evicted by the bounded cache.
pub const HOSTED: &str = "hosted";
pub const UPLOADS: &str = "uploads";

/// The lease of a blob fill in progress (see `cluster::lease`). Outside every prefix the
/// bounded cache scans: a lease is not content.
pub fn fill_lease(d: &Digest) -> Path {
    Path::from(format!("fills/{}/{}", d.algorithm().as_str(), d.hex()))
}

pub fn blob(d: &Digest) -> Path {
    let hex = d.hex();
    Path::from(format!(
        "blobs/{}/{}/{}",
        d.algorithm().as_str(),
        &hex[..2],
        hex
    ))
}

fn repo_prefix(upstream: &str, repo: &RepoName) -> String {
    format!("repositories/{upstream}/{repo}")
}

fn digest_path(d: &Digest) -> String {
    format!("{}/{}", d.algorithm().as_str(), d.hex())
}

/// Where a hosted repository's records of one kind (`_manifests`, `_tags`, `_blobs`,
/// `_referrers`) live.
pub fn hosted_dir(name: &str, repo: &RepoName, kind: &str) -> Path {
    Path::from(format!("{HOSTED}/{name}/{repo}/{kind}"))
}

pub fn hosted_manifest(name: &str, repo: &RepoName, d: &Digest) -> Path {
    Path::from(format!(
        "{HOSTED}/{name}/{repo}/_manifests/{}",
        digest_path(d)
    ))
}

pub fn hosted_tag(name: &str, repo: &RepoName, tag: &Tag) -> Path {
    Path::from(format!("{HOSTED}/{name}/{repo}/_tags/{tag}"))
}

pub fn hosted_blob(name: &str, repo: &RepoName, d: &Digest) -> Path {
    Path::from(format!("{HOSTED}/{name}/{repo}/_blobs/{}", digest_path(d)))
}

/// The manifests pushed with `subject` = `subject`: one record each.
pub fn hosted_referrers(name: &str, repo: &RepoName, subject: &Digest) -> Path {
    Path::from(format!(
        "{HOSTED}/{name}/{repo}/_referrers/{}",
        digest_path(subject)
    ))
}

pub fn hosted_referrer(name: &str, repo: &RepoName, subject: &Digest, d: &Digest) -> Path {
    Path::from(format!(
        "{}/{}",
        hosted_referrers(name, repo, subject),
        digest_path(d)
    ))
}

/// A blob upload's record, beside the directory of its chunks (a key cannot be both an
/// object and a directory on local disk).
pub fn upload(id: &str) -> Path {
    Path::from(format!("{UPLOADS}/{id}.json"))
}

/// The chunk of an upload that starts at `offset` (zero-padded, so they list in order).
pub fn upload_chunk(id: &str, offset: u64) -> Path {
    Path::from(format!("{UPLOADS}/{id}/{offset:020}"))
}

pub fn manifest_link(upstream: &str, repo: &RepoName, d: &Digest) -> Path {
    Path::from(format!(
        "{}/_manifests/{}/{}",
        repo_prefix(upstream, repo),
        d.algorithm().as_str(),
        d.hex()
    ))
}

pub fn blob_link(upstream: &str, repo: &RepoName, d: &Digest) -> Path {
    Path::from(format!(
        "{}/_blobs/{}/{}",
        repo_prefix(upstream, repo),
        d.algorithm().as_str(),
        d.hex()
    ))
}

/// What archway vouches for when it signs `d` in the repository (a vouch record).
pub fn signed(upstream: &str, repo: &RepoName, d: &Digest) -> Path {
    Path::from(format!(
        "{}/_signed/{}/{}",
        repo_prefix(upstream, repo),
        d.algorithm().as_str(),
        d.hex()
    ))
}

/// The manifests whose `subject` is `d`, as last fetched (a referrers record).
pub fn referrers(upstream: &str, repo: &RepoName, d: &Digest) -> Path {
    Path::from(format!(
        "{}/_referrers/{}/{}",
        repo_prefix(upstream, repo),
        d.algorithm().as_str(),
        d.hex()
    ))
}

pub fn tag(upstream: &str, repo: &RepoName, tag: &Tag) -> Path {
    Path::from(format!("{}/_tags/{}", repo_prefix(upstream, repo), tag))
}

/// A batch of access times written by one replica at one moment.
pub fn access_journal(millis: u64, replica: &str) -> Path {
    Path::from(format!("{ACCESS}/{millis:013}-{replica}.json"))
}

/// The digest a `blobs/` key holds, or `None` for a key outside the layout.
pub fn parse_blob(p: &Path) -> Option<Digest> {
    let mut parts = p.as_ref().split('/');
    let (Some(BLOBS), Some(alg), Some(_), Some(hex), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    format!("{alg}:{hex}").parse().ok()
}

/// What a key under `repositories/` records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoEntry {
    /// The upstream's configured name, the key segment after `repositories/`.
    pub upstream: String,
    /// The repository as that upstream names it: the segments before the `_` one.
    pub repo: RepoName,
    /// Which record the key holds, with the digest or tag it is for.
    pub kind: RepoEntryKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoEntryKind {
    Manifest(Digest),
    Blob(Digest),
    Tag(Tag),
}

/// Reads a `repositories/` key back into what it names; `None` for anything else.
pub fn parse_repository(p: &Path) -> Option<RepoEntry> {
    parse_under(p, REPOSITORIES)
}

/// Reads a `hosted/` key back into what it names (`upstream` is the hosted name); `None`
/// for anything else, referrer records included.
pub fn parse_hosted(p: &Path) -> Option<RepoEntry> {
    parse_under(p, HOSTED)
}

fn parse_under(p: &Path, top: &str) -> Option<RepoEntry> {
    let parts: Vec<&str> = p.as_ref().split('/').collect();
    if parts.first() != Some(&top) || parts.len() < 5 {
        return None;
    }
    let upstream = parts[1].to_string();
    let i = parts.iter().skip(2).position(|c| c.starts_with('_'))? + 2;
    let repo: RepoName = parts[2..i].join("/").parse().ok()?;
    let digest = || -> Option<Digest> {
        match &parts[i + 1..] {
            [alg, hex] => format!("{alg}:{hex}").parse().ok(),
            _ => None,
        }
    };
    let kind = match parts[i] {
        "_manifests" => RepoEntryKind::Manifest(digest()?),
        "_blobs" => RepoEntryKind::Blob(digest()?),
        "_tags" if parts.len() == i + 2 => RepoEntryKind::Tag(parts[i + 1].parse().ok()?),
        _ => return None,
    };
    Some(RepoEntry {
        upstream,
        repo,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let d = Digest::sha256_of(b"");
        let r: RepoName = "library/alpine".parse().unwrap();
        assert_eq!(
            blob(&d).as_ref(),
            "blobs/sha256/e3/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            tag("hub", &r, &"latest".parse().unwrap()).as_ref(),
            "repositories/hub/library/alpine/_tags/latest"
        );
        assert!(manifest_link("hub", &r, &d)
            .as_ref()
            .starts_with("repositories/hub/library/alpine/_manifests/sha256/e3b0"));
        assert!(blob_link("hub", &r, &d)
            .as_ref()
            .starts_with("repositories/hub/library/alpine/_blobs/sha256/"));
    }

    #[test]
    fn keys_read_back() {
        let d = Digest::sha256_of(b"x");
        let r: RepoName = "a/b/c".parse().unwrap();
        let t: Tag = "v1.0".parse().unwrap();
        assert_eq!(parse_blob(&blob(&d)), Some(d.clone()));
        assert_eq!(parse_blob(&Path::from("blobs/sha256/zz")), None);
        for (key, kind) in [
            (
                manifest_link("up", &r, &d),
                RepoEntryKind::Manifest(d.clone()),
            ),
            (blob_link("up", &r, &d), RepoEntryKind::Blob(d.clone())),
            (tag("up", &r, &t), RepoEntryKind::Tag(t.clone())),
        ] {
            assert_eq!(
                parse_repository(&key),
                Some(RepoEntry {
                    upstream: "up".into(),
                    repo: r.clone(),
                    kind
                }),
                "{key}"
            );
        }
        for bad in [
            "repositories/up/a/_manifests/sha256",
            "repositories/up/_tags/x",
            "repositories/up/a/_other/x",
            "blobs/sha256/aa/bb",
        ] {
            assert_eq!(parse_repository(&Path::from(bad)), None, "{bad}");
        }
        assert_eq!(
            access_journal(42, "r1").as_ref(),
            "access/0000000000042-r1.json"
        );
    }
}
