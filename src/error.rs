//! The one error type that services return, and its mapping to an OCI error response.
//!
//! Every failure a client can see goes through [`Error::code`] and [`Error::status`], so the
//! wire format (`{"errors":[{"code","message","detail"}]}`) is rendered in exactly one place.

use http::StatusCode;

use crate::oci::Digest;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    #[error("{0}")]
    NameUnknown(String),
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("blob unknown to registry: {0}")]
    BlobUnknown(String),
    #[error("invalid digest: {0}")]
    DigestInvalid(String),
    #[error("invalid tag: {0}")]
    TagInvalid(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("invalid pagination: {0}")]
    PaginationInvalid(String),
    #[error("upstream rate limit exceeded: {0}")]
    TooManyRequests(String),
    #[error("upstream denied access: {0}")]
    Denied(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    #[error("upstream sent content with digest {actual}, expected {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("range not satisfiable")]
    RangeInvalid { size: u64 },
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The distribution spec's error code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NameInvalid(_) => "NAME_INVALID",
            Error::NameUnknown(_) => "NAME_UNKNOWN",
            Error::ManifestUnknown(_) => "MANIFEST_UNKNOWN",
            Error::ManifestInvalid(_) => "MANIFEST_INVALID",
            Error::BlobUnknown(_) => "BLOB_UNKNOWN",
            Error::DigestInvalid(_) => "DIGEST_INVALID",
            // The spec has no TAG_INVALID; distribution reports a bad tag as MANIFEST_INVALID.
            Error::TagInvalid(_) => "MANIFEST_INVALID",
            Error::Unsupported(_) => "UNSUPPORTED",
            Error::PaginationInvalid(_) => "PAGINATION_NUMBER_INVALID",
            Error::TooManyRequests(_) => "TOOMANYREQUESTS",
            Error::Denied(_) => "DENIED",
            Error::Unauthorized(_) => "UNAUTHORIZED",
            Error::Unavailable(_) => "UNAVAILABLE",
            Error::DigestMismatch { .. } => "UNKNOWN",
            Error::RangeInvalid { .. } => "RANGE_INVALID",
            Error::Internal(_) => "UNKNOWN",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::NameInvalid(_)
            | Error::ManifestInvalid(_)
            | Error::DigestInvalid(_)
            | Error::TagInvalid(_)
            | Error::PaginationInvalid(_) => StatusCode::BAD_REQUEST,
            Error::NameUnknown(_) | Error::ManifestUnknown(_) | Error::BlobUnknown(_) => {
                StatusCode::NOT_FOUND
            }
            Error::Unsupported(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::Denied(_) => StatusCode::FORBIDDEN,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::DigestMismatch { .. } => StatusCode::BAD_GATEWAY,
            Error::RangeInvalid { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON body: `{"errors":[{"code":..,"message":..,"detail":..}]}`.
    pub fn to_json(&self) -> Vec<u8> {
        let body = serde_json::json!({
            "errors": [{
                "code": self.code(),
                "message": self.to_string(),
                "detail": serde_json::Value::Null,
            }]
        });
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

impl From<object_store::Error> for Error {
    fn from(e: object_store::Error) -> Self {
        Error::Internal(format!("object store: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_code_status_and_json() {
        let d = Digest::sha256_of(b"");
        let table: Vec<(Error, u16, &str)> = vec![
            (
                Error::NameInvalid("what went wrong".into()),
                400,
                "NAME_INVALID",
            ),
            (
                Error::NameUnknown("what went wrong".into()),
                404,
                "NAME_UNKNOWN",
            ),
            (
                Error::ManifestUnknown("what went wrong".into()),
                404,
                "MANIFEST_UNKNOWN",
            ),
            (
                Error::ManifestInvalid("what went wrong".into()),
                400,
                "MANIFEST_INVALID",
            ),
            (
                Error::BlobUnknown("what went wrong".into()),
                404,
                "BLOB_UNKNOWN",
            ),
            (
                Error::DigestInvalid("what went wrong".into()),
                400,
                "DIGEST_INVALID",
            ),
            (
                Error::TagInvalid("what went wrong".into()),
                400,
                "MANIFEST_INVALID",
            ),
            (
                Error::Unsupported("what went wrong".into()),
                405,
                "UNSUPPORTED",
            ),
            (
                Error::PaginationInvalid("what went wrong".into()),
                400,
                "PAGINATION_NUMBER_INVALID",
            ),
            (
                Error::TooManyRequests("what went wrong".into()),
                429,
                "TOOMANYREQUESTS",
            ),
            (Error::Denied("what went wrong".into()), 403, "DENIED"),
            (
                Error::Unauthorized("what went wrong".into()),
                401,
                "UNAUTHORIZED",
            ),
            (
                Error::Unavailable("what went wrong".into()),
                503,
                "UNAVAILABLE",
            ),
            (
                Error::DigestMismatch {
                    expected: d.clone(),
                    actual: d,
                },
                502,
                "UNKNOWN",
            ),
            (Error::RangeInvalid { size: 1 }, 416, "RANGE_INVALID"),
            (Error::Internal("what went wrong".into()), 500, "UNKNOWN"),
        ];
        for (e, status, code) in table {
            assert_eq!(e.status().as_u16(), status, "{e:?}");
            assert_eq!(e.code(), code);
            let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
            assert_eq!(v["errors"][0]["code"], code);
            assert!(v["errors"][0]["message"].as_str().unwrap().len() > 1);
        }
    }
}
