//! The admin listener, apart from the registry port: `/healthz`, `/readyz`, `/metrics` and
//! `/inspect?ref=REGISTRY/REPOSITORY:TAG` (how a tag resolves, platform by platform, as JSON).

use std::convert::Infallible;
use std::sync::Arc;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use super::{errors, full, Body, Current};
use crate::registry::Registry;

/// How long `/readyz` waits for the object store.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves the admin endpoints on `listener`, for as long as the process runs.
pub async fn serve(listener: TcpListener, current: Current) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let current = current.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let registry: Arc<Registry> = current.load().registry.clone();
                async move { Ok::<_, Infallible>(handle(&registry, &req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
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
            Ok(Ok(())) => text(StatusCode::OK, "ready\n".into(), "text/plain"),
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
