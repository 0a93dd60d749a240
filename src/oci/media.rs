//! Manifest media types and `Accept` negotiation.

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// What archway asks upstreams for: every manifest type it can serve, indexes included, so the
/// upstream never down-converts (Docker Hub answers a bare request with the amd64 manifest).
pub const UPSTREAM_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Whether a media type is an index (OCI index or Docker manifest list).
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// The media types a client accepts, from all its `Accept` header lines.
///
/// Clients differ in shape (containers/image sends one type per line, containerd one
/// comma-joined line with `*/*`, dockerd shuffles its lines), so order carries no preference.
#[derive(Debug, Default, Clone)]
pub struct Accept {
    types: Vec<String>,
    wildcard: bool,
}

impl Accept {
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Accept {
        let mut a = Accept::default();
        for v in values {
            for part in v.split(',') {
                let t = part.split(';').next().unwrap_or("").trim();
                if t.is_empty() {
                    continue;
                }
                if t == "*/*" || t == "application/*" {
                    a.wildcard = true;
                } else {
                    a.types.push(t.to_ascii_lowercase());
                }
            }
        }
        a
    }

    /// True when the client sent no Accept at all, or a wildcard.
    pub fn accepts_anything(&self) -> bool {
        self.wildcard || self.types.is_empty()
    }

    pub fn accepts(&self, media_type: &str) -> bool {
        self.accepts_anything() || self.types.iter().any(|t| t == media_type)
    }

    /// Whether the client named an index type explicitly (or a wildcard).
    pub fn accepts_index(&self) -> bool {
        self.wildcard || self.types.iter().any(|t| is_index(t))
    }

    /// Whether the client named an index type explicitly. A bare `*/*` does not count: such a
    /// client gets a platform manifest for a tag, as from Docker Hub.
    pub fn names_index(&self) -> bool {
        self.types.iter().any(|t| is_index(t))
    }

    /// Whether the client named any type at all.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty() && !self.wildcard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_shapes() {
        let containerd = Accept::parse([
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, */*",
        ]);
        assert!(containerd.accepts_index());
        assert!(containerd.accepts(OCI_MANIFEST));

        let skopeo = Accept::parse([OCI_MANIFEST, DOCKER_MANIFEST, DOCKER_LIST, OCI_INDEX]);
        assert!(skopeo.accepts_index());
        assert!(!skopeo.accepts("application/json"));

        let old = Accept::parse([DOCKER_MANIFEST]);
        assert!(!old.accepts_index());
        assert!(old.accepts(DOCKER_MANIFEST));

        let none = Accept::parse([]);
        assert!(none.is_empty());
        assert!(none.accepts(OCI_INDEX));
        assert!(!none.accepts_index());
    }
}
