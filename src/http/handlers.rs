//! Request handlers: parse and validate what the client sent, ask the registry, and write the
//! distribution API's headers. Errors go to `errors::response`.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use http::header::{
    HeaderValue, ACCEPT, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, LINK,
    LOCATION, RANGE, USER_AGENT,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};

use super::endpoint::Endpoint;
use super::{empty, errors, full, Body, Front};
use crate::error::Error;
use crate::oci::media::Accept;
use crate::oci::reference::ReferenceError;
use crate::oci::{Digest, Reference, RepoName, Tag};
use crate::range;
use crate::registry::{BlobAnswer, BlobBody, Registry};
use crate::routing::Route;

const DOCKER_CONTENT_DIGEST: http::HeaderName =
    http::HeaderName::from_static("docker-content-digest");
const API_VERSION: HeaderValue = HeaderValue::from_static("registry/2.0");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");
const BYTES: HeaderValue = HeaderValue::from_static("bytes");
const OCI_INDEX: HeaderValue = HeaderValue::from_static("application/vnd.oci.image.index.v1+json");

/// A route label for metrics and logs: bounded cardinality, never the repository name.
pub fn route_label(path: &str, endpoint: &Endpoint<'_>) -> &'static str {
    if path.starts_with(crate::cluster::FILL_PATH) {
        return "peer_fill";
    }
    match endpoint {
        Endpoint::Base => "base",
        Endpoint::Manifest { .. } => "manifest",
        Endpoint::Blob { .. } => "blob",
        Endpoint::Upload { .. } => "upload",
        Endpoint::Tags { .. } => "tags",
        Endpoint::Referrers { .. } => "referrers",
        Endpoint::Catalog => "catalog",
        Endpoint::NotFound => "other",
    }
}

/// Answers `req`, whose path the caller parsed into `endpoint` (once per request: the route
/// label, the hosted lookup and the dispatch all read it).
pub async fn handle(
    front: &Front,
    req: Request<Incoming>,
    endpoint: &Endpoint<'_>,
    peer: IpAddr,
) -> Response<Body> {
    // Replicas' internal endpoint: authenticated by the cluster secret, not client logins.
    if req.uri().path().starts_with(crate::cluster::FILL_PATH) {
        let mut resp = match super::peers::fill(&front.registry, &req, peer).await {
            Ok(r) => r,
            Err(e) => errors::response(&e, false),
        };
        resp.headers_mut()
            .insert("docker-distribution-api-version", API_VERSION);
        return resp;
    }
    // With [auth], every endpoint (the /v2/ check included) needs credentials, as on any
    // registry that requires login.
    let allowed = match &front.auth {
        Some(a) => a.check(
            peer,
            req.headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        ),
        None => Ok(None),
    };
    let head = req.method() == Method::HEAD;
    let result = match allowed {
        Ok(user) => match hosted_target(&front.registry, &req, endpoint, user) {
            // Boxed, as the other paths a cached manifest GET does not take: every request's
            // future is as large as its largest path, and is moved whole (http::tests).
            Some(t) => {
                Box::pin(super::hosted::dispatch(
                    &front.registry,
                    req,
                    endpoint.clone(),
                    t,
                ))
                .await
            }
            None => dispatch(&front.registry, &req, endpoint).await,
        },
        Err(e) => Err(e),
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => errors::response(&e, head),
    };
    resp.headers_mut()
        .insert("docker-distribution-api-version", API_VERSION);
    resp
}

/// The hosted repository a request is for, if it is for one.
fn hosted_target<B>(
    registry: &Registry,
    req: &Request<B>,
    endpoint: &Endpoint<'_>,
    user: Option<String>,
) -> Option<super::hosted::Target> {
    // Without [[hosted]], nothing to look for: the pull path pays nothing for it.
    if registry.config.hosted.is_empty() {
        return None;
    }
    let name = *match endpoint {
        Endpoint::Manifest { name, .. }
        | Endpoint::Blob { name, .. }
        | Endpoint::Upload { name, .. }
        | Endpoint::Tags { name }
        | Endpoint::Referrers { name, .. } => name,
        _ => return None,
    };
    let route = route(registry, req, name).ok()?;
    let repo = registry.hosted_repo(&route)?;
    Some(super::hosted::Target {
        repo,
        name: name.to_string(),
        ns: query_param(req.uri().query(), "ns").map(|n| n.into_owned()),
        user,
    })
}

async fn dispatch<B>(
    registry: &Registry,
    req: &Request<B>,
    endpoint: &Endpoint<'_>,
) -> Result<Response<Body>, Error> {
    let method = req.method();
    let path = req.uri().path();
    let read_only = |what: &str| -> Result<(), Error> {
        if method == Method::GET || method == Method::HEAD {
            Ok(())
        } else {
            Err(Error::Unsupported(format!(
                "{method} on {what} is not supported: archway is a read-only pull-through mirror"
            )))
        }
    };
    match *endpoint {
        Endpoint::Base => {
            read_only("/v2/")?;
            let mut r = Response::new(if method == Method::HEAD {
                empty()
            } else {
                full(&b"{}"[..])
            });
            r.headers_mut().insert(CONTENT_TYPE, JSON);
            r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(2));
            Ok(r)
        }
        Endpoint::Manifest { name, reference } => {
            read_only("manifests")?;
            let route = route(registry, req, name)?;
            let reference = parse_read_reference(reference)?;
            manifest(registry, req, &route, &reference).await
        }
        Endpoint::Blob { name, digest } => {
            read_only("blobs")?;
            let route = route(registry, req, name)?;
            let digest: Digest = digest.parse().map_err(Error::DigestInvalid)?;
            // Boxed (see `handle`): a blob's GET ends in a file or a fill, whose setup outweighs
            // the allocation.
            Box::pin(blob(registry, req, &route, &digest)).await
        }
        Endpoint::Upload { .. } => Err(Error::Unsupported(
            "pushing is not supported: archway is a read-only pull-through mirror".into(),
        )),
        Endpoint::Tags { name } => {
            read_only("tags")?;
            let route = route(registry, req, name)?;
            tags(registry, req, name, &route).await
        }
        Endpoint::Referrers { name, digest } => {
            read_only("referrers")?;
            let route = route(registry, req, name)?;
            let digest: Digest = digest.parse().map_err(Error::DigestInvalid)?;
            Box::pin(referrers(registry, req, &route, &digest)).await
        }
        Endpoint::Catalog => {
            read_only("_catalog")?;
            super::hosted::catalog(registry, req).await
        }
        Endpoint::NotFound => Err(Error::NameUnknown(format!("no such endpoint: {path}"))),
    }
}

pub(super) fn query_param<'a>(
    query: Option<&'a str>,
    key: &str,
) -> Option<std::borrow::Cow<'a, str>> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

fn route<B>(registry: &Registry, req: &Request<B>, name: &str) -> Result<Route, Error> {
    let name: RepoName = name.parse().map_err(Error::NameInvalid)?;
    let ns = query_param(req.uri().query(), "ns");
    registry.route(&name, ns.as_deref())
}

/// A reference to read a manifest by. No manifest can be found under a malformed tag, so
/// it is unknown (404, as the OCI conformance suite requires and distribution answers),
/// not a bad request; a malformed digest is still `DIGEST_INVALID`.
pub(super) fn parse_read_reference(s: &str) -> Result<Reference, Error> {
    s.parse().map_err(|e| match e {
        ReferenceError::Digest(e) => Error::DigestInvalid(e),
        ReferenceError::Tag(e) => Error::ManifestUnknown(format!(
            "no manifest has the reference {s:?}: it is not a valid tag ({e})"
        )),
    })
}

/// A reference to write a manifest under: a malformed tag is the request's fault.
pub(super) fn parse_reference(s: &str) -> Result<Reference, Error> {
    s.parse().map_err(|e| match e {
        ReferenceError::Digest(e) => Error::DigestInvalid(e),
        ReferenceError::Tag(e) => Error::TagInvalid(e),
    })
}

/// The single byte range a request asks for; `None` for none, or one that is ignored.
pub(super) fn requested_range<B>(req: &Request<B>) -> Option<range::RangeSpec> {
    req.headers()
        .get(RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(range::parse)
}

pub(super) fn header(s: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(s).map_err(|_| Error::Internal(format!("unsendable header value {s:?}")))
}

async fn manifest<B>(
    registry: &Registry,
    req: &Request<B>,
    route: &Route,
    reference: &Reference,
) -> Result<Response<Body>, Error> {
    let head = req.method() == Method::HEAD;
    let accept = Accept::parse(
        req.headers()
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let ua = req.headers().get(USER_AGENT).and_then(|v| v.to_str().ok());
    let served = registry
        .manifest_for_client(route, reference, &accept, ua)
        .await?;
    let m = served.value;
    let values = m
        .headers()
        .ok_or_else(|| Error::Internal(format!("unsendable media type {:?}", m.media_type)))?;
    let mut r = Response::new(if head { empty() } else { full(m.bytes.clone()) });
    r.extensions_mut().insert(served.provenance);
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, values.content_type.clone());
    h.insert(CONTENT_LENGTH, HeaderValue::from(m.bytes.len()));
    h.insert(ETAG, values.etag.clone());
    h.insert(DOCKER_CONTENT_DIGEST, values.digest.clone());
    Ok(r)
}

async fn blob<B>(
    registry: &Registry,
    req: &Request<B>,
    route: &Route,
    d: &Digest,
) -> Result<Response<Body>, Error> {
    let digest_header = header(&d.to_string())?;
    if req.method() == Method::HEAD {
        let size = registry.blob_head(route, d).await?;
        let mut r = Response::new(empty());
        let h = r.headers_mut();
        h.insert(CONTENT_LENGTH, HeaderValue::from(size));
        h.insert(CONTENT_TYPE, OCTET_STREAM);
        h.insert(ACCEPT_RANGES, BYTES);
        h.insert("docker-content-digest", digest_header);
        return Ok(r);
    }
    let spec = requested_range(req);
    let body = match registry.blob(route, d, spec).await? {
        BlobAnswer::Body(b) => b,
        BlobAnswer::Redirect { url, .. } => {
            // 307: the client repeats the GET (with its Range) at the object store.
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            r.extensions_mut()
                .insert(crate::registry::Provenance::Cache);
            let h = r.headers_mut();
            h.insert(LOCATION, header(url.as_str())?);
            h.insert(CONTENT_LENGTH, HeaderValue::from(0));
            h.insert("docker-content-digest", digest_header);
            return Ok(r);
        }
    };
    blob_response(d, body)
}

/// A blob GET's answer for `body`: 200, or 206 with `Content-Range` for a range.
pub(super) fn blob_response(d: &Digest, body: BlobBody) -> Result<Response<Body>, Error> {
    let digest_header = header(&d.to_string())?;
    let len = match &body.range {
        Some(r) => Some(r.end - r.start),
        None => body.size,
    };
    let stream = body.stream.map_ok(Frame::data);
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
    r.extensions_mut().insert(body.provenance);
    let h = r.headers_mut();
    if let Some(len) = len {
        h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    h.insert(CONTENT_TYPE, OCTET_STREAM);
    h.insert(ACCEPT_RANGES, BYTES);
    h.insert(ETAG, header(&format!("\"{d}\""))?);
    h.insert("docker-content-digest", digest_header);
    if let (Some(range), Some(size)) = (&body.range, body.size) {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        r.headers_mut().insert(
            CONTENT_RANGE,
            header(&format!("bytes {}-{}/{size}", range.start, range.end - 1))?,
        );
    }
    Ok(r)
}

/// `GET /v2/<name>/referrers/<digest>[?artifactType=T]`: always an index, empty when
/// nothing refers to the digest.
async fn referrers<B>(
    registry: &Registry,
    req: &Request<B>,
    route: &Route,
    d: &Digest,
) -> Result<Response<Body>, Error> {
    let artifact_type = query_param(req.uri().query(), "artifactType");
    let served = registry
        .referrers(route, d, artifact_type.as_deref())
        .await?;
    let list = served.value;
    let len = list.body.len();
    let head = req.method() == Method::HEAD;
    let mut r = Response::new(if head { empty() } else { full(list.body) });
    r.extensions_mut().insert(served.provenance);
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, OCI_INDEX);
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    if list.filtered {
        h.insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(r)
}

async fn tags<B>(
    registry: &Registry,
    req: &Request<B>,
    client_name: &str,
    route: &Route,
) -> Result<Response<Body>, Error> {
    let q = req.uri().query();
    let n = match query_param(q, "n") {
        None => None,
        Some(v) => Some(v.parse::<u32>().map_err(|_| {
            Error::PaginationInvalid(format!("n={v:?} is not a non-negative integer"))
        })?),
    };
    let last = match query_param(q, "last") {
        None => None,
        Some(v) => Some(
            v.parse::<Tag>()
                .map_err(|e| Error::PaginationInvalid(format!("last: {e}")))?,
        ),
    };
    let page = registry.tags(route, n, last.as_ref()).await?;
    let mut r = Response::new(full(page.body.clone()));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, JSON);
    h.insert(CONTENT_LENGTH, HeaderValue::from(page.body.len()));
    // The upstream's next-page link names its own repository path; point it back at ours.
    if let Some(link) = page
        .link
        .as_deref()
        .and_then(|l| rewrite_link(l, client_name))
    {
        h.insert(LINK, header(&link)?);
    }
    Ok(r)
}

/// `</v2/<upstream name>/tags/list?n=..&last=..>; rel="next"` → the same under `client_name`.
fn rewrite_link(link: &str, client_name: &str) -> Option<String> {
    let inner = link.split_once('<')?.1.split_once('>')?.0;
    let query = inner.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if k == "n" || k == "last" {
            out.append_pair(&k, &v);
        }
    }
    Some(format!(
        "</v2/{client_name}/tags/list?{}>; rel=\"next\"",
        out.finish()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_rewrite() {
        assert_eq!(
            rewrite_link(
                "</v2/library/alpine/tags/list?last=3.1&n=2>; rel=\"next\"",
                "docker.io/library/alpine"
            )
            .as_deref(),
            Some("</v2/docker.io/library/alpine/tags/list?last=3.1&n=2>; rel=\"next\"")
        );
        assert_eq!(rewrite_link("garbage", "x"), None);
    }
}
