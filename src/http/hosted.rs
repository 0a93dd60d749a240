//! The endpoints of hosted repositories: the distribution spec's pull, push, content
//! discovery and content management, answered from what clients pushed. Writes need a
//! writer of that hosted registry; deletes also need `delete = true`.

use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use http::header::{
    HeaderValue, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, LINK, LOCATION,
    RANGE,
};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::endpoint::Endpoint;
use super::errors::upload_range;
use super::handlers::{
    blob_response, header, parse_read_reference, parse_reference, query_param, requested_range,
};
use super::{empty, full, Body};
use crate::error::{Error, Result};
use crate::hosted::uploads::{self, ChunkRange};
use crate::hosted::Repo;
use crate::oci::manifest::MAX_MANIFEST_SIZE;
use crate::oci::{cosign, Digest, Reference, RepoName};
use crate::registry::{BlobBody, Provenance, Registry};

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const OCI_INDEX: HeaderValue = HeaderValue::from_static("application/vnd.oci.image.index.v1+json");

/// A request to a hosted repository: what it names, who sent it.
pub struct Target {
    pub repo: Repo,
    /// The repository's name as the client wrote it (for `Location` and `Link`).
    pub name: String,
    /// The `?ns=` it came with: kept in the `Location` of an upload, whose next request must
    /// route the same way.
    pub ns: Option<String>,
    /// The authenticated user, if any.
    pub user: Option<String>,
}

pub async fn dispatch(
    registry: &Registry,
    req: Request<Incoming>,
    endpoint: Endpoint<'_>,
    t: Target,
) -> Result<Response<Body>> {
    let method = req.method().clone();
    let read = method == Method::GET || method == Method::HEAD;
    match endpoint {
        Endpoint::Manifest { reference, .. } => {
            let reference = if read {
                parse_read_reference(reference)?
            } else {
                parse_reference(reference)?
            };
            match method {
                _ if read => manifest(registry, &req, &t, &reference).await,
                Method::PUT => {
                    writer(registry, &t)?;
                    put_manifest(registry, req, &t, &reference).await
                }
                Method::DELETE => {
                    deleter(registry, &t)?;
                    let h = registry.hosted();
                    match &reference {
                        Reference::Tag(tag) => h.delete_tag(&t.repo, tag).await?,
                        Reference::Digest(d) => h.delete_manifest(&t.repo, d).await?,
                    }
                    Ok(accepted())
                }
                m => Err(not_allowed(&m, "manifests")),
            }
        }
        Endpoint::Blob { digest, .. } => {
            let d: Digest = digest.parse().map_err(Error::DigestInvalid)?;
            match method {
                _ if read => blob(registry, &req, &t, &d).await,
                Method::DELETE => {
                    deleter(registry, &t)?;
                    registry.hosted().delete_blob(&t.repo, &d).await?;
                    Ok(accepted())
                }
                m => Err(not_allowed(&m, "blobs")),
            }
        }
        Endpoint::Upload { id, .. } => {
            writer(registry, &t)?;
            match (method, id) {
                (Method::POST, None) => start_upload(registry, req, &t).await,
                (Method::PATCH, Some(id)) => patch(registry, req, &t, id).await,
                (Method::PUT, Some(id)) => finish(registry, req, &t, id).await,
                (Method::GET, Some(id)) => {
                    let size = registry.hosted().upload_size(&t.repo, id).await?;
                    upload_answer(StatusCode::NO_CONTENT, &t, id, size)
                }
                (Method::DELETE, Some(id)) => {
                    registry.hosted().cancel(&t.repo, id).await?;
                    let mut r = Response::new(empty());
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    Ok(r)
                }
                (m, _) => Err(not_allowed(&m, "uploads")),
            }
        }
        Endpoint::Tags { .. } if read => tags(registry, &req, &t).await,
        Endpoint::Referrers { digest, .. } if read => {
            let d: Digest = digest.parse().map_err(Error::DigestInvalid)?;
            referrers(registry, &req, &t, &d).await
        }
        _ => Err(not_allowed(&method, "this endpoint")),
    }
}

fn not_allowed(m: &Method, what: &str) -> Error {
    Error::Unsupported(format!("{m} is not supported on {what}"))
}

fn accepted() -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}

/// Pushing needs an authenticated writer of the hosted registry.
fn writer(registry: &Registry, t: &Target) -> Result<()> {
    let Some(user) = &t.user else {
        return Err(Error::Unauthorized("authentication required to push"));
    };
    let may = registry
        .hosted()
        .config(&t.repo.registry)
        .is_some_and(|c| c.may_write(user));
    if may {
        Ok(())
    } else {
        Err(Error::Denied(
            "this user may not push to this hosted registry",
        ))
    }
}

/// Deleting also needs `delete = true`.
fn deleter(registry: &Registry, t: &Target) -> Result<()> {
    writer(registry, t)?;
    let enabled = registry
        .hosted()
        .config(&t.repo.registry)
        .is_some_and(|c| c.delete);
    if enabled {
        Ok(())
    } else {
        Err(Error::Unsupported(format!(
            "deleting is disabled for hosted registry {} (delete = false)",
            t.repo.registry
        )))
    }
}

/// The request body as a stream, cut when it pauses longer than `server.body_timeout`: a
/// client that stops sending mid-chunk would otherwise hold the upload's lock, and its
/// connection, for good. Once cut, the stream ends; the body is left unread, so hyper
/// closes the connection after the 408.
fn body_stream(registry: &Registry, req: Request<Incoming>) -> uploads::Body {
    let stall = registry.config.server.body_timeout;
    let frames = http_body_util::BodyStream::new(req.into_body())
        .try_filter_map(|frame| futures_util::future::ready(Ok(frame.into_data().ok())))
        .map_err(|e| Error::io("the request body broke off", std::io::Error::other(e)))
        .boxed();
    futures_util::stream::unfold(Some(frames), move |frames| async move {
        let mut frames = frames?;
        match tokio::time::timeout(stall, frames.next()).await {
            Ok(Some(item)) => Some((item, Some(frames))),
            Ok(None) => None,
            Err(_) => Some((
                Err(Error::BodyStalled(format!(
                    "the request body sent nothing for {} (server.body_timeout)",
                    humantime::format_duration(stall)
                ))),
                None,
            )),
        }
    })
    .boxed()
}

async fn manifest(
    registry: &Registry,
    req: &Request<Incoming>,
    t: &Target,
    reference: &Reference,
) -> Result<Response<Body>> {
    let m = registry
        .hosted()
        .manifest(&t.repo, reference)
        .await?
        .ok_or_else(|| Error::ManifestUnknown(format!("{reference} in {}", t.repo)))?;
    let head = req.method() == Method::HEAD;
    let digest = m.digest.to_string();
    let mut r = Response::new(if head { empty() } else { full(m.bytes.clone()) });
    r.extensions_mut().insert(Provenance::Hosted);
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, header(&m.media_type)?);
    h.insert(CONTENT_LENGTH, HeaderValue::from(m.bytes.len()));
    h.insert(ETAG, header(&format!("\"{digest}\""))?);
    h.insert("docker-content-digest", header(&digest)?);
    Ok(r)
}

async fn put_manifest(
    registry: &Registry,
    req: Request<Incoming>,
    t: &Target,
    reference: &Reference,
) -> Result<Response<Body>> {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let announced = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|l| l > MAX_MANIFEST_SIZE as u64) {
        return Err(Error::ManifestTooLarge);
    }
    let mut body = body_stream(registry, req);
    let mut bytes = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if bytes.len() + chunk.len() > MAX_MANIFEST_SIZE {
            return Err(Error::ManifestTooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    let pushed = registry
        .hosted()
        .put_manifest(&t.repo, reference, content_type.as_deref(), bytes.freeze())
        .await?;
    let digest = pushed.digest.to_string();
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::CREATED;
    let h = r.headers_mut();
    h.insert(
        LOCATION,
        header(&format!("/v2/{}/manifests/{digest}", t.name))?,
    );
    h.insert("docker-content-digest", header(&digest)?);
    h.insert(CONTENT_LENGTH, HeaderValue::from(0));
    if let Some(s) = pushed.subject {
        h.insert("oci-subject", header(&s.to_string())?);
    }
    Ok(r)
}

async fn blob(
    registry: &Registry,
    req: &Request<Incoming>,
    t: &Target,
    d: &Digest,
) -> Result<Response<Body>> {
    let hosted = registry.hosted();
    let size = hosted
        .blob_size(&t.repo, d)
        .await?
        .ok_or_else(|| Error::BlobUnknown(format!("{d} in repository {}", t.repo)))?;
    if req.method() == Method::HEAD {
        let mut r = Response::new(empty());
        let h = r.headers_mut();
        h.insert(CONTENT_LENGTH, HeaderValue::from(size));
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert("docker-content-digest", header(&d.to_string())?);
        return Ok(r);
    }
    let spec = requested_range(req);
    let range = match spec {
        Some(s) => Some(s.resolve(size).ok_or(Error::RangeInvalid { size })?),
        None => None,
    };
    let stream = hosted
        .store()
        .read_blob(d, range.clone())
        .await?
        .ok_or_else(|| Error::BlobUnknown(format!("{d}: its content is gone")))?;
    blob_response(
        d,
        BlobBody {
            size: Some(size),
            range,
            stream,
            provenance: Provenance::Hosted,
        },
    )
}

/// `POST /v2/<name>/blobs/uploads/`: a mount, a monolithic push, or a new upload.
async fn start_upload(
    registry: &Registry,
    req: Request<Incoming>,
    t: &Target,
) -> Result<Response<Body>> {
    let q = req.uri().query().map(str::to_string);
    let q = q.as_deref();
    let digest = |v: Option<std::borrow::Cow<'_, str>>| -> Result<Option<Digest>> {
        v.map(|d| d.parse().map_err(Error::DigestInvalid))
            .transpose()
    };
    let hosted = registry.hosted();
    if let (Some(d), Some(from)) = (digest(query_param(q, "mount"))?, query_param(q, "from")) {
        if let Some(size) = mountable(registry, &d, &from).await? {
            hosted.link_blob(&t.repo, &d, size).await?;
            return created_blob(t, &d);
        }
        // Not readable from there: an ordinary upload, as the spec says.
    }
    if let Some(d) = digest(query_param(q, "digest"))? {
        hosted
            .monolithic(&t.repo, &d, body_stream(registry, req))
            .await?;
        return created_blob(t, &d);
    }
    let id = hosted.start_upload(&t.repo).await?;
    upload_answer(StatusCode::ACCEPTED, t, &id, 0)
}

/// The size of `d` in repository `from` when this client may read it there: pushed to a
/// hosted repository, or cached for an upstream one (no upstream is asked).
async fn mountable(registry: &Registry, d: &Digest, from: &str) -> Result<Option<u64>> {
    let Ok(name) = from.parse::<RepoName>() else {
        return Ok(None);
    };
    let Ok(route) = registry.route(&name, None) else {
        return Ok(None);
    };
    match registry.hosted_repo(&route) {
        Some(repo) => registry.hosted().blob_size(&repo, d).await,
        None => registry.cached_blob(&route, d).await,
    }
}

fn created_blob(t: &Target, d: &Digest) -> Result<Response<Body>> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::CREATED;
    let h = r.headers_mut();
    h.insert(LOCATION, header(&format!("/v2/{}/blobs/{d}", t.name))?);
    h.insert("docker-content-digest", header(&d.to_string())?);
    h.insert(CONTENT_LENGTH, HeaderValue::from(0));
    Ok(r)
}

fn upload_location(t: &Target, id: &str) -> String {
    let base = format!("/v2/{}/blobs/uploads/{id}", t.name);
    match &t.ns {
        Some(ns) => {
            let q = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("ns", ns)
                .finish();
            format!("{base}?{q}")
        }
        None => base,
    }
}

fn upload_answer(status: StatusCode, t: &Target, id: &str, size: u64) -> Result<Response<Body>> {
    let mut r = Response::new(empty());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(LOCATION, header(&upload_location(t, id))?);
    h.insert(RANGE, header(&upload_range(size))?);
    h.insert("docker-upload-uuid", header(id)?);
    h.insert(CONTENT_LENGTH, HeaderValue::from(0));
    Ok(r)
}

fn content_range(req: &Request<Incoming>) -> Result<Option<ChunkRange>> {
    match req.headers().get(CONTENT_RANGE) {
        None => Ok(None),
        Some(v) => {
            let s = v.to_str().unwrap_or_default();
            ChunkRange::parse(s).map(Some).ok_or_else(|| {
                Error::UploadInvalid(format!("Content-Range {s:?} is not <start>-<end>"))
            })
        }
    }
}

async fn patch(
    registry: &Registry,
    req: Request<Incoming>,
    t: &Target,
    id: &str,
) -> Result<Response<Body>> {
    let range = content_range(&req)?;
    let location = upload_location(t, id);
    let size = registry
        .hosted()
        .append(&t.repo, id, range, body_stream(registry, req), &location)
        .await?;
    upload_answer(StatusCode::ACCEPTED, t, id, size)
}

async fn finish(
    registry: &Registry,
    req: Request<Incoming>,
    t: &Target,
    id: &str,
) -> Result<Response<Body>> {
    let d: Digest = query_param(req.uri().query(), "digest")
        .ok_or_else(|| Error::UploadInvalid("PUT of an upload needs ?digest=".into()))?
        .parse()
        .map_err(Error::DigestInvalid)?;
    let range = content_range(&req)?;
    let location = upload_location(t, id);
    registry
        .hosted()
        .finish(
            &t.repo,
            id,
            &d,
            range,
            body_stream(registry, req),
            &location,
        )
        .await?;
    created_blob(t, &d)
}

/// `n` and `last` of a listing request.
pub fn page_params(q: Option<&str>) -> Result<(Option<usize>, Option<String>)> {
    let n = match query_param(q, "n") {
        None => None,
        Some(v) => Some(v.parse::<usize>().map_err(|_| {
            Error::PaginationInvalid(format!("n={v:?} is not a non-negative integer"))
        })?),
    };
    Ok((n, query_param(q, "last").map(|v| v.into_owned())))
}

/// The page of `items` (sorted) after `last`, at most `n` long, and whether more follow.
pub fn paginate(items: Vec<String>, n: Option<usize>, last: Option<&str>) -> (Vec<String>, bool) {
    let after: Vec<String> = items
        .into_iter()
        .filter(|i| last.is_none_or(|l| i.as_str() > l))
        .collect();
    match n {
        Some(n) if after.len() > n => (after[..n].to_vec(), true),
        _ => (after, false),
    }
}

async fn tags(registry: &Registry, req: &Request<Incoming>, t: &Target) -> Result<Response<Body>> {
    let hosted = registry.hosted();
    let (n, last) = page_params(req.uri().query())?;
    let all = hosted.tags(&t.repo).await?;
    if all.is_empty() && !hosted.has_manifests(&t.repo).await? {
        return Err(Error::NameUnknown(format!("no repository {}", t.repo)));
    }
    let (page, more) = paginate(all, n, last.as_deref());
    let next = more.then(|| format!("/v2/{}/tags/list", t.name));
    listing(
        serde_json::json!({"name": t.name, "tags": page}),
        next.as_deref(),
        n,
        page.last(),
    )
}

async fn referrers(
    registry: &Registry,
    req: &Request<Incoming>,
    t: &Target,
    d: &Digest,
) -> Result<Response<Body>> {
    let artifact_type = query_param(req.uri().query(), "artifactType");
    let mut list = registry.hosted().referrers(&t.repo, d).await?;
    if let Some(at) = &artifact_type {
        list.retain(|m| m["artifactType"].as_str() == Some(at.as_ref()));
    }
    let body: Bytes = cosign::referrers_index(&list).into();
    let mut r = Response::new(if req.method() == Method::HEAD {
        empty()
    } else {
        full(body.clone())
    });
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, OCI_INDEX);
    h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    if artifact_type.is_some() {
        h.insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(r)
}

/// `GET /v2/_catalog`: the hosted repositories (a mirror has no catalog of its upstreams).
pub async fn catalog<B>(registry: &Registry, req: &Request<B>) -> Result<Response<Body>> {
    let (n, last) = page_params(req.uri().query())?;
    let all = registry.hosted().catalog().await?;
    let (page, more) = paginate(all, n, last.as_deref());
    let next = more.then_some("/v2/_catalog");
    listing(
        serde_json::json!({ "repositories": page }),
        next,
        n,
        page.last(),
    )
}

/// A JSON listing page; with `next` (the listing's path, when more follow) a `Link` to the
/// page after `last`, of `n` entries.
fn listing(
    body: serde_json::Value,
    next: Option<&str>,
    n: Option<usize>,
    last: Option<&String>,
) -> Result<Response<Body>> {
    let body = serde_json::to_vec(&body).map_err(|e| Error::Internal(e.to_string()))?;
    let mut r = Response::new(full(body.clone()));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, JSON);
    h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    if let (Some(path), Some(l), Some(n)) = (next, last, n) {
        let q = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("n", &n.to_string())
            .append_pair("last", l)
            .finish();
        h.insert(LINK, header(&format!("<{path}?{q}>; rel=\"next\""))?);
    }
    Ok(r)
}
