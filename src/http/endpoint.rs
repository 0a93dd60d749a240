//! Which registry API endpoint a request path names. Names and references are returned raw;
//! the handlers validate them so each gets its own error code.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// `/v2/`: the API version check.
    Base,
    Manifest {
        name: &'a str,
        reference: &'a str,
    },
    Blob {
        name: &'a str,
        digest: &'a str,
    },
    /// `/v2/<name>/blobs/uploads/` (start one) and `/v2/<name>/blobs/uploads/<id>`.
    Upload {
        name: &'a str,
        id: Option<&'a str>,
    },
    Tags {
        name: &'a str,
    },
    /// `/v2/<name>/referrers/<digest>`: the OCI 1.1 referrers API.
    Referrers {
        name: &'a str,
        digest: &'a str,
    },
    Catalog,
    NotFound,
}

pub fn parse(path: &str) -> Endpoint<'_> {
    let rest = match path.strip_prefix("/v2") {
        Some("") | Some("/") => return Endpoint::Base,
        Some(r) => match r.strip_prefix('/') {
            Some(r) => r,
            None => return Endpoint::NotFound,
        },
        None => return Endpoint::NotFound,
    };
    if rest == "_catalog" {
        return Endpoint::Catalog;
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Endpoint::Tags { name };
    }
    // The name may itself contain "manifests", "blobs" or "uploads" components, so split
    // from the end, as distribution's routes match (an upload id has no slash).
    let Some((head, last)) = rest.rsplit_once('/') else {
        return Endpoint::NotFound;
    };
    // Uploads: /v2/<name>/blobs/uploads, /v2/<name>/blobs/uploads/ and .../uploads/<id>
    if let Some(name) = head.strip_suffix("/blobs/uploads") {
        return Endpoint::Upload {
            name,
            id: (!last.is_empty()).then_some(last),
        };
    }
    if last == "uploads" {
        if let Some(name) = head.strip_suffix("/blobs") {
            return Endpoint::Upload { name, id: None };
        }
    }
    match head.rsplit_once('/') {
        Some((name, "manifests")) => Endpoint::Manifest {
            name,
            reference: last,
        },
        Some((name, "blobs")) => Endpoint::Blob { name, digest: last },
        Some((name, "referrers")) => Endpoint::Referrers { name, digest: last },
        _ => Endpoint::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(parse("/v2/"), Endpoint::Base);
        assert_eq!(parse("/v2"), Endpoint::Base);
        assert_eq!(
            parse("/v2/library/alpine/manifests/latest"),
            Endpoint::Manifest {
                name: "library/alpine",
                reference: "latest"
            }
        );
        assert_eq!(
            parse("/v2/a/manifests/b/manifests/sha256:x"),
            Endpoint::Manifest {
                name: "a/manifests/b",
                reference: "sha256:x"
            }
        );
        assert_eq!(
            parse("/v2/docker.io/x/blobs/sha256:abc"),
            Endpoint::Blob {
                name: "docker.io/x",
                digest: "sha256:abc"
            }
        );
        assert_eq!(parse("/v2/a/b/tags/list"), Endpoint::Tags { name: "a/b" });
        assert_eq!(
            parse("/v2/a/b/referrers/sha256:abc"),
            Endpoint::Referrers {
                name: "a/b",
                digest: "sha256:abc"
            }
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads/"),
            Endpoint::Upload {
                name: "a",
                id: None
            }
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads/1234-5678"),
            Endpoint::Upload {
                name: "a",
                id: Some("1234-5678")
            }
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads"),
            Endpoint::Upload {
                name: "a",
                id: None
            }
        );
        // A repository whose name has "blobs/uploads" components is still a repository.
        assert_eq!(
            parse("/v2/x/blobs/uploads/y/manifests/v1"),
            Endpoint::Manifest {
                name: "x/blobs/uploads/y",
                reference: "v1"
            }
        );
        assert_eq!(
            parse("/v2/x/blobs/uploads/y/blobs/uploads/1"),
            Endpoint::Upload {
                name: "x/blobs/uploads/y",
                id: Some("1")
            }
        );
        assert_eq!(parse("/v2/_catalog"), Endpoint::Catalog);
        assert_eq!(
            parse("/v2/a/manifests/"),
            Endpoint::Manifest {
                name: "a",
                reference: ""
            }
        );
        for nf in [
            "/",
            "/v3/",
            "/v2x",
            "/v2/a",
            "/v2/a/tags",
            "/v2/a/things/x",
            "/healthz",
        ] {
            assert_eq!(parse(nf), Endpoint::NotFound, "{nf}");
        }
    }
}
