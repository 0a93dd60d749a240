//! The errors a request can end in: what each means for the client (its OCI code and HTTP
//! status), with the cause kept as `source()` rather than flattened into a string.
//!
//! Services and the store return [`Error`]; `http::errors` renders it on the wire, and is the
//! only place that does. Causes travel with it (the upstream's transport error, the object
//! store's), so logs and the OCI `detail` show the whole chain.

use std::sync::Arc;

use http::StatusCode;

use crate::oci::manifest::ManifestError;
use crate::oci::{DigestError, NameError};
use crate::upstream::{Failure, UpstreamError};

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("invalid repository name")]
    NameInvalid(#[source] NameError),
    /// An image reference (`registry/repository:tag`) that does not parse.
    #[error("invalid reference: {0}")]
    ReferenceInvalid(String),
    /// No upstream serves the name (or no such endpoint).
    #[error("{0}")]
    NameUnknown(String),
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    /// A manifest the upstream sent that archway cannot read.
    #[error("upstream {upstream} sent an unusable manifest for {reference}")]
    ManifestUnusable {
        upstream: String,
        reference: String,
        #[source]
        cause: Arc<ManifestError>,
    },
    #[error("blob unknown to registry: {0}")]
    BlobUnknown(String),
    #[error("invalid digest")]
    DigestInvalid(#[source] DigestError),
    #[error("invalid tag")]
    TagInvalid(#[source] NameError),
    #[error("{0}")]
    Unsupported(String),
    #[error("invalid pagination: {0}")]
    PaginationInvalid(String),
    /// Too many requests from this client (failed logins).
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Credentials that do not open what they were sent to (the cluster's internal endpoint,
    /// a push by a user who is not a writer).
    #[error("{0}")]
    Denied(&'static str),
    /// A repository an upstream's `allow`/`deny` rules refuse; the message names the rule.
    #[error("{0}")]
    RepositoryDenied(String),
    /// No such blob upload (never started, finished, cancelled, expired, or another
    /// repository's).
    #[error("{0}")]
    UploadUnknown(String),
    /// A chunk that does not continue the upload where it stands: answered 416 with the
    /// upload's `Range` and `Location`.
    #[error("chunk out of order: the upload holds {size} bytes")]
    UploadRange {
        size: u64,
        /// The upload's URL, for the `Location` header.
        location: String,
    },
    #[error("{0}")]
    UploadInvalid(String),
    /// A pushed blob whose bytes hash to another digest than the one it was pushed as.
    #[error("the content's digest is {actual}, not {expected}")]
    DigestWrong {
        expected: crate::oci::Digest,
        actual: crate::oci::Digest,
    },
    /// A pushed manifest that references a blob or manifest the repository does not have.
    #[error("{0}")]
    ManifestBlobUnknown(String),
    /// A pushed manifest over the size limit.
    #[error(
        "manifest is larger than {} bytes",
        crate::oci::manifest::MAX_MANIFEST_SIZE
    )]
    ManifestTooLarge,
    #[error("{0}")]
    SizeInvalid(String),
    /// A request body paused longer than `server.body_timeout`.
    #[error("{0}")]
    BodyStalled(String),
    /// The upstream failed; what that means for the client depends on how (see
    /// [`UpstreamError::failure`]).
    #[error("{}", upstream_summary(.0))]
    Upstream(#[source] Arc<UpstreamError>),
    #[error("upstream sent content with digest {actual}, expected {expected}")]
    DigestMismatch {
        expected: crate::oci::Digest,
        actual: crate::oci::Digest,
    },
    #[error("upstream sent {actual} bytes for {digest}, announced {announced}")]
    SizeMismatch {
        digest: crate::oci::Digest,
        announced: u64,
        actual: u64,
    },
    #[error("range not satisfiable")]
    RangeInvalid { size: u64 },
    #[error("object store")]
    Storage(#[source] Arc<object_store::Error>),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("corrupt record {key}")]
    CorruptRecord {
        key: String,
        #[source]
        source: Arc<serde_json::Error>,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn upstream_summary(e: &UpstreamError) -> &'static str {
    match e.failure() {
        Failure::RateLimited => "upstream rate limit exceeded",
        Failure::Denied => "upstream denied access",
        Failure::TooLarge => "manifest invalid",
        Failure::Unavailable | Failure::Refused => "upstream unavailable",
    }
}

impl Error {
    /// The distribution spec's error code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NameInvalid(_) | Error::ReferenceInvalid(_) => "NAME_INVALID",
            Error::NameUnknown(_) => "NAME_UNKNOWN",
            Error::ManifestUnknown(_) => "MANIFEST_UNKNOWN",
            Error::ManifestInvalid(_) | Error::ManifestUnusable { .. } => "MANIFEST_INVALID",
            Error::BlobUnknown(_) => "BLOB_UNKNOWN",
            Error::DigestInvalid(_) => "DIGEST_INVALID",
            // The spec has no TAG_INVALID; distribution reports a bad tag as MANIFEST_INVALID.
            Error::TagInvalid(_) => "MANIFEST_INVALID",
            Error::Unsupported(_) => "UNSUPPORTED",
            Error::PaginationInvalid(_) => "PAGINATION_NUMBER_INVALID",
            Error::TooManyRequests(_) => "TOOMANYREQUESTS",
            Error::Unauthorized(_) => "UNAUTHORIZED",
            Error::Denied(_) | Error::RepositoryDenied(_) => "DENIED",
            Error::UploadUnknown(_) => "BLOB_UPLOAD_UNKNOWN",
            Error::UploadRange { .. } | Error::UploadInvalid(_) => "BLOB_UPLOAD_INVALID",
            Error::DigestWrong { .. } => "DIGEST_INVALID",
            Error::ManifestBlobUnknown(_) => "MANIFEST_BLOB_UNKNOWN",
            Error::ManifestTooLarge => "MANIFEST_INVALID",
            Error::SizeInvalid(_) => "SIZE_INVALID",
            // The spec has no code for a timeout; the status and the message say it.
            Error::BodyStalled(_) => "UNKNOWN",
            Error::Upstream(e) => match e.failure() {
                Failure::RateLimited => "TOOMANYREQUESTS",
                Failure::Denied => "DENIED",
                Failure::TooLarge => "MANIFEST_INVALID",
                Failure::Unavailable | Failure::Refused => "UNAVAILABLE",
            },
            Error::RangeInvalid { .. } => "RANGE_INVALID",
            Error::DigestMismatch { .. }
            | Error::SizeMismatch { .. }
            | Error::Storage(_)
            | Error::Io { .. }
            | Error::CorruptRecord { .. }
            | Error::Internal(_) => "UNKNOWN",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::NameInvalid(_)
            | Error::ReferenceInvalid(_)
            | Error::ManifestInvalid(_)
            | Error::ManifestUnusable { .. }
            | Error::DigestInvalid(_)
            | Error::TagInvalid(_)
            | Error::PaginationInvalid(_) => StatusCode::BAD_REQUEST,
            Error::NameUnknown(_) | Error::ManifestUnknown(_) | Error::BlobUnknown(_) => {
                StatusCode::NOT_FOUND
            }
            Error::Unsupported(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Denied(_) | Error::RepositoryDenied(_) => StatusCode::FORBIDDEN,
            Error::UploadUnknown(_) => StatusCode::NOT_FOUND,
            Error::UploadRange { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Error::UploadInvalid(_)
            | Error::DigestWrong { .. }
            | Error::ManifestBlobUnknown(_)
            | Error::SizeInvalid(_) => StatusCode::BAD_REQUEST,
            Error::BodyStalled(_) => StatusCode::REQUEST_TIMEOUT,
            Error::ManifestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Upstream(e) => match e.failure() {
                Failure::RateLimited => StatusCode::TOO_MANY_REQUESTS,
                Failure::Denied => StatusCode::FORBIDDEN,
                Failure::TooLarge => StatusCode::BAD_REQUEST,
                Failure::Unavailable | Failure::Refused => StatusCode::SERVICE_UNAVAILABLE,
            },
            Error::DigestMismatch { .. } | Error::SizeMismatch { .. } => StatusCode::BAD_GATEWAY,
            Error::RangeInvalid { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Error::Storage(_)
            | Error::Io { .. }
            | Error::CorruptRecord { .. }
            | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the upstream was unavailable (down, 5xx, 429): a stale answer may stand in.
    pub fn is_upstream_unavailable(&self) -> bool {
        matches!(self, Error::Upstream(e) if e.is_unavailable())
    }

    /// An I/O failure, with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }
}

impl From<UpstreamError> for Error {
    fn from(e: UpstreamError) -> Error {
        Error::Upstream(Arc::new(e))
    }
}

impl From<object_store::Error> for Error {
    fn from(e: object_store::Error) -> Self {
        Error::Storage(Arc::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causes::Chain;
    use crate::oci::Digest;

    fn upstream(status: u16) -> Error {
        UpstreamError::Status {
            upstream: "hub".into(),
            status,
            message: "injected".into(),
        }
        .into()
    }

    #[test]
    fn every_variant_has_code_and_status() {
        let d = Digest::sha256_of(b"");
        let name_err = "A".parse::<crate::oci::RepoName>().unwrap_err();
        let digest_err = "sha256:zz".parse::<Digest>().unwrap_err();
        let manifest_err = Arc::new(crate::oci::manifest::parse(b"{}", None).unwrap_err());
        let io = Arc::new(std::io::Error::other("disk"));
        let json = Arc::new(serde_json::from_str::<u8>("x").unwrap_err());
        let msg = || "what went wrong".to_string();
        let table: Vec<(Error, u16, &str)> = vec![
            (Error::NameInvalid(name_err.clone()), 400, "NAME_INVALID"),
            (Error::ReferenceInvalid(msg()), 400, "NAME_INVALID"),
            (Error::NameUnknown(msg()), 404, "NAME_UNKNOWN"),
            (Error::ManifestUnknown(msg()), 404, "MANIFEST_UNKNOWN"),
            (Error::ManifestInvalid(msg()), 400, "MANIFEST_INVALID"),
            (
                Error::ManifestUnusable {
                    upstream: "hub".into(),
                    reference: "a:b".into(),
                    cause: manifest_err,
                },
                400,
                "MANIFEST_INVALID",
            ),
            (Error::BlobUnknown(msg()), 404, "BLOB_UNKNOWN"),
            (Error::DigestInvalid(digest_err), 400, "DIGEST_INVALID"),
            (Error::TagInvalid(name_err), 400, "MANIFEST_INVALID"),
            (Error::Unsupported(msg()), 405, "UNSUPPORTED"),
            (
                Error::PaginationInvalid(msg()),
                400,
                "PAGINATION_NUMBER_INVALID",
            ),
            (Error::TooManyRequests(msg()), 429, "TOOMANYREQUESTS"),
            (Error::Unauthorized("login"), 401, "UNAUTHORIZED"),
            (upstream(429), 429, "TOOMANYREQUESTS"),
            (upstream(403), 403, "DENIED"),
            (upstream(503), 503, "UNAVAILABLE"),
            (upstream(400), 503, "UNAVAILABLE"),
            (
                UpstreamError::TooLarge {
                    upstream: "hub".into(),
                }
                .into(),
                400,
                "MANIFEST_INVALID",
            ),
            (
                Error::DigestMismatch {
                    expected: d.clone(),
                    actual: d.clone(),
                },
                502,
                "UNKNOWN",
            ),
            (
                Error::SizeMismatch {
                    digest: d,
                    announced: 2,
                    actual: 1,
                },
                502,
                "UNKNOWN",
            ),
            (Error::RangeInvalid { size: 1 }, 416, "RANGE_INVALID"),
            (
                object_store::Error::NotImplemented {
                    operation: "put".into(),
                    implementer: "test".into(),
                }
                .into(),
                500,
                "UNKNOWN",
            ),
            (
                Error::Io {
                    context: msg(),
                    source: io,
                },
                500,
                "UNKNOWN",
            ),
            (
                Error::CorruptRecord {
                    key: "k".into(),
                    source: json,
                },
                500,
                "UNKNOWN",
            ),
            (Error::Internal(msg()), 500, "UNKNOWN"),
        ];
        for (e, status, code) in table {
            assert_eq!(e.status().as_u16(), status, "{e:?}");
            assert_eq!(e.code(), code, "{e:?}");
            assert!(e.to_string().len() > 1);
        }
    }

    #[test]
    fn causes_are_kept_not_flattened() {
        let e = upstream(503);
        assert_eq!(e.to_string(), "upstream unavailable");
        assert_eq!(
            Chain(&e).to_string(),
            "upstream unavailable: hub answered HTTP 503: injected"
        );
        assert!(e.is_upstream_unavailable());
        assert!(!upstream(403).is_upstream_unavailable());
    }
}
