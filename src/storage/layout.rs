//! Where things live in the object store. Every key is built here from validated types, so
//! nothing a client sends can name a key outside this layout.
//!
//! ```text
//! blobs/<alg>/<first two hex>/<hex>                          blob and manifest bytes (content-addressed)
//! repositories/<upstream>/<repo>/_manifests/<alg>/<hex>      manifest link: {mediaType, size}
//! repositories/<upstream>/<repo>/_tags/<tag>                 tag record: {digest, mediaType, size, checkedAt}
//! repositories/<upstream>/<repo>/_blobs/<alg>/<hex>          blob link: {size}
//! ```
//! Repository components start with `[a-z0-9]`, so the `_`-prefixed directories can never
//! collide with a repository name.

use object_store::path::Path;

use crate::oci::{Digest, RepoName, Tag};

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

pub fn tag(upstream: &str, repo: &RepoName, tag: &Tag) -> Path {
    Path::from(format!("{}/_tags/{}", repo_prefix(upstream, repo), tag))
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
}
