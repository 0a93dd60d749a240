//! The internal endpoint replicas of a `[cluster]` stream each other's fills from:
//! `GET /_archway/fills/<digest>?offset=<n>`. Without the cluster's credentials it answers
//! 403 and nothing else, whether or not this replica is in a cluster.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use super::Body;
use crate::clock::now_millis;
use crate::cluster::{auth, FILL_PATH, SIZE_HEADER};
use crate::error::Error;
use crate::oci::Digest;
use crate::registry::Registry;

const DENIED: Error = Error::Denied("the internal endpoint needs the cluster's credentials");

pub async fn fill<B>(
    registry: &Registry,
    req: &Request<B>,
    peer: IpAddr,
) -> Result<Response<Body>, Error> {
    let Some(cluster) = registry.cluster() else {
        return Err(DENIED);
    };
    let path = match req.uri().path_and_query() {
        Some(pq) => pq.as_str(),
        None => req.uri().path(),
    };
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(why) = auth::verify(
        cluster.secret(),
        header,
        req.method().as_str(),
        path,
        now_millis() / 1000,
    ) {
        tracing::warn!(peer = %peer, reason = %why, "refused a request to the internal endpoint");
        return Err(DENIED);
    }
    if req.method() != Method::GET {
        return Err(Error::Unsupported(format!(
            "{} on the internal endpoint",
            req.method()
        )));
    }
    let digest: Digest = req.uri().path()[FILL_PATH.len()..]
        .parse()
        .map_err(Error::DigestInvalid)?;
    let offset = match req.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "offset")
            .map(|(_, v)| v.into_owned())
    }) {
        None => 0,
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| Error::ReferenceInvalid(format!("offset={v:?} is not a byte offset")))?,
    };
    let Some(fill) = registry.peer_fill(&digest, offset).await? else {
        return Err(Error::BlobUnknown(format!(
            "{digest}: no fill and no copy here"
        )));
    };
    let stream = fill.stream.map_ok(Frame::data);
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(size) = fill.size {
        h.insert(CONTENT_LENGTH, HeaderValue::from(size - offset));
        h.insert(SIZE_HEADER, HeaderValue::from(size));
    }
    Ok(r)
}
