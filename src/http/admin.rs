//! The admin listener, apart from the registry port: `/healthz`, `/readyz`, `/metrics`,
//! `/inspect?ref=REGISTRY/REPOSITORY:TAG` (how a tag resolves, platform by platform, as JSON),
//! and the console: `/` (the coverage page), `/coverage.json`, `POST /warm` and
//! `GET /warm/<id>`. The console asks for `[auth]` credentials when they are configured; the
//! probes and metrics never do (orchestrators and scrapers do not log in).

use std::convert::Infallible;
use std::sync::Arc;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use super::{errors, full, Body, Current, Front};
use crate::console::jobs::{Jobs, WarmRequest};
use crate::console::Query;
use crate::error::Error;
use crate::registry::Registry;

/// How long `/readyz` waits for the object store.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves the admin endpoints on `listener`, for as long as the process runs.
pub async fn serve(listener: TcpListener, current: Current) {
    let jobs = Arc::new(Jobs::default());
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let (current, jobs) = (current.clone(), jobs.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let front = current.load_full();
                let jobs = jobs.clone();
                async move {
                    let resp = match console(&front, &jobs, req, peer.ip()).await {
                        Ok(r) => r,
                        Err(req) => handle(&front.registry, &req).await,
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The console's endpoints; any other request is handed back.
async fn console(
    front: &Front,
    jobs: &Jobs,
    req: Request<Incoming>,
    peer: std::net::IpAddr,
) -> Result<Response<Body>, Request<Incoming>> {
    let path = req.uri().path().to_string();
    let is_console =
        path == "/" || path == "/coverage.json" || path == "/warm" || path.starts_with("/warm/");
    if !is_console {
        return Err(req);
    }
    if let Some(auth) = &front.auth {
        let header = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if let Err(e) = auth.check(peer, header) {
            return Ok(errors::response(&e, false));
        }
    }
    let registry = front.registry.clone();
    Ok(match (req.method().clone(), path.as_str()) {
        (Method::GET, "/") => {
            let c = crate::console::coverage(&registry, &Query::parse(req.uri().query())).await;
            text(
                StatusCode::OK,
                crate::console::render(&c),
                "text/html; charset=utf-8",
            )
        }
        (Method::GET, "/coverage.json") => {
            let c = crate::console::coverage(&registry, &Query::parse(req.uri().query())).await;
            json(StatusCode::OK, &c)
        }
        (Method::POST, "/warm") => {
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(e) => return Ok(errors::response(&e, false)),
            };
            match serde_json::from_slice::<WarmRequest>(&body)
                .map_err(|e| e.to_string())
                .and_then(|w| jobs.start(registry, w))
            {
                Ok(id) => json(
                    StatusCode::ACCEPTED,
                    &serde_json::json!({"id": id, "status": format!("/warm/{id}")}),
                ),
                Err(why) => {
                    let e = Error::Unsupported(format!("bad warm request: {why}"));
                    let mut r = errors::response(&e, false);
                    *r.status_mut() = StatusCode::BAD_REQUEST;
                    r
                }
            }
        }
        (Method::GET, p) if p.starts_with("/warm/") => match jobs.report(&p["/warm/".len()..]) {
            Some(r) => json(StatusCode::OK, &r),
            None => text(
                StatusCode::NOT_FOUND,
                "no such warm job\n".into(),
                "text/plain",
            ),
        },
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
            "text/plain",
        ),
    })
}

/// A small request body (a warm request), at most 64 KiB.
async fn read_body(req: Request<Incoming>) -> Result<bytes::Bytes, Error> {
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(req.into_body(), 64 * 1024);
    limited
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| Error::SizeInvalid(format!("the request body: {e}")))
}

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response<Body> {
    text(
        status,
        serde_json::to_string_pretty(v).unwrap_or_default(),
        "application/json",
    )
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

async fn handle<B>(registry: &Registry, req: &Request<B>) -> Response<Body> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        // Bounded: object_store retries a failing backend for minutes, and a probe that
        // hangs is as good as a failed one.
        "/readyz" => match tokio::time::timeout(READY_TIMEOUT, registry.store.probe()).await {
            // Still ready: what is cached is served, and new blobs stream through, uncached.
            // Taking the replica out of service would leave a single one serving nothing.
            Ok(Ok(())) => match registry.store.degraded() {
                None => text(StatusCode::OK, "ready\n".into(), "text/plain"),
                Some((at, why)) => text(
                    StatusCode::OK,
                    format!(
                        "ready, cache degraded since {}: {why}\n",
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH + std::time::Duration::from_millis(at)
                        )
                    ),
                    "text/plain",
                ),
            },
            Ok(Err(e)) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("object store not answering: {e}\n"),
                "text/plain",
            ),
            Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("object store did not answer within {READY_TIMEOUT:?}\n"),
                "text/plain",
            ),
        },
        "/metrics" => text(
            StatusCode::OK,
            registry.metrics.render(),
            "text/plain; version=0.0.4",
        ),
        "/inspect" => {
            let reference = url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .find(|(k, _)| k == "ref")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            match registry.inspect(&reference).await {
                Ok(r) => text(
                    StatusCode::OK,
                    serde_json::to_string_pretty(&r).unwrap_or_default(),
                    "application/json",
                ),
                Err(e) => errors::response(&e, false),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}
