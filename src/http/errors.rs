//! The one place an [`Error`] becomes a response: the OCI body
//! `{"errors":[{"code","message","detail"}]}`, its status, and the headers some errors need
//! (a Basic challenge, the size of an unsatisfiable range).
//!
//! `message` is the error with its causes, as a person reads it; `detail.causes` lists the
//! causes one by one, for tools.

use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::Response;
use serde_json::{json, Value};

use super::{empty, full, Body};
use crate::causes::{sources, Chain};
use crate::error::Error;

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// The response for `e`; without a body for a HEAD request. Server-side failures are logged
/// here, once, with their causes.
pub fn response(e: &Error, head: bool) -> Response<Body> {
    if e.status().is_server_error() {
        tracing::error!(error = %Chain(e), "request failed");
    }
    let body = body(e);
    let len = body.len();
    let mut resp = Response::new(if head { empty() } else { full(body) });
    *resp.status_mut() = e.status();
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, JSON);
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    match e {
        Error::Unauthorized(_) => {
            h.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"archway\""),
            );
        }
        Error::RangeInvalid { size } => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                h.insert(CONTENT_RANGE, v);
            }
        }
        // Where the upload stands, so the client can resume from there.
        Error::UploadRange { size, location } => {
            if let Ok(v) = HeaderValue::from_str(&upload_range(*size)) {
                h.insert(http::header::RANGE, v);
            }
            if let Ok(v) = HeaderValue::from_str(location) {
                h.insert(http::header::LOCATION, v);
            }
        }
        _ => {}
    }
    resp
}

/// An upload's `Range` header: `0-<last byte>`, and `0-0` while it is empty (as
/// distribution answers).
pub fn upload_range(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

/// The JSON body.
pub fn body(e: &Error) -> Vec<u8> {
    let causes: Vec<String> = sources(e).map(|c| c.to_string()).collect();
    let detail = if causes.is_empty() {
        Value::Null
    } else {
        json!({ "causes": causes })
    };
    let body = json!({
        "errors": [{
            "code": e.code(),
            "message": Chain(e).to_string(),
            "detail": detail,
        }]
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::UpstreamError;
    use http_body_util::BodyExt;

    async fn parts(resp: Response<Body>) -> (u16, http::HeaderMap, Value) {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn the_body_carries_code_message_and_every_cause() {
        let e: Error = UpstreamError::Status {
            upstream: "hub".into(),
            status: 502,
            message: "bad gateway".into(),
        }
        .into();
        let (status, headers, v) = parts(response(&e, false)).await;
        assert_eq!(status, 503);
        assert_eq!(headers[CONTENT_TYPE], "application/json");
        let err = &v["errors"][0];
        assert_eq!(err["code"], "UNAVAILABLE");
        assert_eq!(
            err["message"],
            "upstream unavailable: hub answered HTTP 502: bad gateway"
        );
        assert_eq!(
            err["detail"]["causes"],
            json!(["hub answered HTTP 502: bad gateway"])
        );
    }

    #[tokio::test]
    async fn errors_that_need_headers_get_them() {
        let (status, headers, v) = parts(response(&Error::RangeInvalid { size: 42 }, false)).await;
        assert_eq!(
            (status, &headers[CONTENT_RANGE]),
            (416, &HeaderValue::from_static("bytes */42"))
        );
        assert_eq!(v["errors"][0]["detail"], Value::Null);
        let (status, headers, _) = parts(response(&Error::Unauthorized("login"), false)).await;
        assert_eq!(status, 401);
        assert_eq!(headers[WWW_AUTHENTICATE], "Basic realm=\"archway\"");
        let head = response(&Error::BlobUnknown("x".into()), true);
        let len: usize = head.headers()[CONTENT_LENGTH]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(len > 0, "a HEAD says how long the body would be");
        assert!(head
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty());
    }
}
