//! The client for one upstream registry: manifests, blobs and tag lists over the distribution
//! API, with authentication, timeouts, redirects and connection pooling.
//!
//! It knows nothing of the cache. It answers "what does the upstream say", mapping a 404 to
//! `None` so callers decide which OCI error that is, and every other failure to
//! [`UpstreamError`], which tells whether the upstream is *unavailable* (the case where a
//! stale cached answer may be served).

pub mod auth;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Method, StatusCode};
use tokio::time::Instant;
use url::Url;

use crate::config::UpstreamConfig;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::oci::manifest::MAX_MANIFEST_SIZE;
use crate::oci::{media, Digest, RepoName};
use crate::storage::fill::BlobSource;
use auth::{Challenge, Credentials, Token};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{upstream}: {message}")]
    Transport { upstream: String, message: String },
    #[error("{upstream} answered HTTP {status}{}", if .message.is_empty() { String::new() } else { format!(": {}", .message) })]
    Status {
        upstream: String,
        status: u16,
        message: String,
    },
    #[error("{upstream}: authentication failed: {message}")]
    Auth { upstream: String, message: String },
    #[error("{upstream}: manifest larger than {MAX_MANIFEST_SIZE} bytes")]
    TooLarge { upstream: String },
}

impl UpstreamError {
    /// Down, overloaded or rate limiting: the cases where serving a stale answer is right.
    pub fn is_unavailable(&self) -> bool {
        match self {
            UpstreamError::Transport { .. } => true,
            UpstreamError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

impl From<UpstreamError> for Error {
    fn from(e: UpstreamError) -> Error {
        match &e {
            UpstreamError::Status { status: 429, .. } => Error::TooManyRequests(e.to_string()),
            UpstreamError::Status {
                status: 401 | 403, ..
            }
            | UpstreamError::Auth { .. } => Error::Denied(e.to_string()),
            UpstreamError::TooLarge { .. } => Error::ManifestInvalid(e.to_string()),
            _ => Error::Unavailable(e.to_string()),
        }
    }
}

/// What a manifest HEAD says.
#[derive(Debug, Clone)]
pub struct ManifestHead {
    pub digest: Option<Digest>,
    pub media_type: Option<String>,
    pub size: Option<u64>,
}

/// A fetched manifest, bytes exactly as sent.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Bytes,
    pub media_type: Option<String>,
    /// `Docker-Content-Digest` as the upstream declared it.
    pub digest: Option<Digest>,
}

/// A tag list page, passed through.
#[derive(Debug, Clone)]
pub struct TagPage {
    pub body: Bytes,
    pub link: Option<String>,
}

pub struct Upstream {
    pub name: String,
    base: Url,
    http: reqwest::Client,
    creds: Option<Credentials>,
    /// The last challenge seen, so later requests authenticate up front instead of paying a
    /// 401 round trip each.
    challenge: std::sync::Mutex<Option<Challenge>>,
    tokens: moka::future::Cache<String, Token>,
    metrics: Metrics,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Upstream({} {})", self.name, self.base)
    }
}

type UResult<T> = Result<T, UpstreamError>;

impl Upstream {
    pub fn new(cfg: &UpstreamConfig, metrics: Metrics) -> Result<Upstream, String> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(concat!("archway/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(cfg.connect_timeout)
            // A stalled body (no byte for this long) fails the transfer.
            .read_timeout(cfg.read_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .danger_accept_invalid_certs(cfg.insecure_skip_verify);
        if let Some(pem) = &cfg.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("upstream {}: ca_file: {e}", cfg.name))?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let http = b
            .build()
            .map_err(|e| format!("upstream {}: {e}", cfg.name))?;
        let mut base = cfg.url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(Upstream {
            name: cfg.name.clone(),
            base,
            http,
            creds: cfg.username.as_ref().map(|u| Credentials {
                username: u.clone(),
                password: cfg.password.clone().unwrap_or_default(),
            }),
            challenge: std::sync::Mutex::new(None),
            tokens: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            metrics,
        })
    }

    fn url(&self, path: &str) -> UResult<Url> {
        self.base.join(path).map_err(|e| UpstreamError::Transport {
            upstream: self.name.clone(),
            message: format!("bad URL {path}: {e}"),
        })
    }

    fn transport(&self, e: reqwest::Error) -> UpstreamError {
        let kind = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "cannot connect"
        } else {
            "transport error"
        };
        // Without the URL: a redirect target may carry a signed query string.
        let e = e.without_url();
        UpstreamError::Transport {
            upstream: self.name.clone(),
            message: format!("{kind}: {e}"),
        }
    }

    fn status_error(&self, status: StatusCode, body: &[u8]) -> UpstreamError {
        // Keep the upstream's own OCI error message when it sent one.
        let message = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_string))
            .unwrap_or_default();
        UpstreamError::Status {
            upstream: self.name.clone(),
            status: status.as_u16(),
            message,
        }
    }

    async fn authorize(&self, challenge: &Challenge, scope: &str) -> UResult<Option<String>> {
        match challenge {
            Challenge::Basic => Ok(self.creds.as_ref().map(Credentials::basic_header)),
            Challenge::Bearer { realm, service, .. } => {
                let now = Instant::now();
                if let Some(t) = self.tokens.get(scope).await {
                    if t.expires > now {
                        return Ok(Some(format!("Bearer {}", t.value)));
                    }
                    self.tokens.invalidate(scope).await;
                }
                let fetch = self.fetch_token(realm, service.as_deref(), scope);
                let t = self
                    .tokens
                    .try_get_with(scope.to_string(), fetch)
                    .await
                    .map_err(|e| UpstreamError::Auth {
                        upstream: self.name.clone(),
                        message: e.to_string(),
                    })?;
                Ok(Some(format!("Bearer {}", t.value)))
            }
        }
    }

    async fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &str) -> UResult<Token> {
        let mut url = Url::parse(realm).map_err(|e| UpstreamError::Auth {
            upstream: self.name.clone(),
            message: format!("bad token realm {realm:?}: {e}"),
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let mut req = self.http.get(url);
        if let Some(c) = &self.creds {
            req = req.header(AUTHORIZATION, c.basic_header());
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        self.metrics
            .upstream_requests
            .with_label_values(&[&self.name, "TOKEN", status.as_str()])
            .inc();
        let body = resp.bytes().await.map_err(|e| self.transport(e))?;
        if !status.is_success() {
            return Err(UpstreamError::Auth {
                upstream: self.name.clone(),
                message: format!("token endpoint answered HTTP {status}"),
            });
        }
        auth::parse_token(&body, Instant::now()).ok_or_else(|| UpstreamError::Auth {
            upstream: self.name.clone(),
            message: "token endpoint sent no token".into(),
        })
    }

    /// Sends a body-less request, authenticating as the upstream asks.
    async fn send(
        &self,
        method: Method,
        url: Url,
        repo: &RepoName,
        accept: Option<&str>,
    ) -> UResult<reqwest::Response> {
        let scope = auth::pull_scope(repo.as_str());
        let known = self.challenge.lock().ok().and_then(|c| c.clone());
        let mut authz = match &known {
            Some(c) => self.authorize(c, &scope).await?,
            None => None,
        };
        let mut retried = false;
        loop {
            let mut req = self.http.request(method.clone(), url.clone());
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(h) = &authz {
                req = req.header(AUTHORIZATION, h);
            }
            let started = Instant::now();
            let resp = req.send().await.map_err(|e| {
                self.metrics
                    .upstream_requests
                    .with_label_values(&[&self.name, method.as_str(), "error"])
                    .inc();
                self.transport(e)
            })?;
            self.metrics
                .upstream_duration
                .with_label_values(&[&self.name])
                .observe(started.elapsed().as_secs_f64());
            self.metrics
                .upstream_requests
                .with_label_values(&[&self.name, method.as_str(), resp.status().as_str()])
                .inc();
            if resp.status() != StatusCode::UNAUTHORIZED || retried {
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(auth::parse_challenge);
            let Some(challenge) = challenge else {
                return Ok(resp);
            };
            if let Ok(mut c) = self.challenge.lock() {
                *c = Some(challenge.clone());
            }
            // A token the upstream refused is no good for anyone.
            self.tokens.invalidate(&scope).await;
            match self.authorize(&challenge, &scope).await? {
                Some(h) => authz = Some(h),
                None => return Ok(resp),
            }
            retried = true;
        }
    }

    async fn fail(&self, resp: reqwest::Response) -> UpstreamError {
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        self.status_error(status, &body[..body.len().min(4096)])
    }

    /// HEAD a manifest: `None` when the upstream does not have it.
    pub async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
    ) -> UResult<Option<ManifestHead>> {
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"))?;
        let resp = self
            .send(Method::HEAD, url, repo, Some(media::UPSTREAM_ACCEPT))
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.fail(resp).await);
        }
        let h = resp.headers();
        Ok(Some(ManifestHead {
            digest: header_str(h, "docker-content-digest").and_then(|d| d.parse().ok()),
            media_type: header_str(h, CONTENT_TYPE.as_str()).map(str::to_string),
            size: header_str(h, CONTENT_LENGTH.as_str()).and_then(|s| s.parse().ok()),
        }))
    }

    /// GET a manifest, refusing more than [`MAX_MANIFEST_SIZE`] bytes.
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
    ) -> UResult<Option<FetchedManifest>> {
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"))?;
        let resp = self
            .send(Method::GET, url, repo, Some(media::UPSTREAM_ACCEPT))
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.fail(resp).await);
        }
        if resp
            .content_length()
            .is_some_and(|l| l > MAX_MANIFEST_SIZE as u64)
        {
            return Err(UpstreamError::TooLarge {
                upstream: self.name.clone(),
            });
        }
        let h = resp.headers();
        let media_type = header_str(h, CONTENT_TYPE.as_str()).map(str::to_string);
        let digest = header_str(h, "docker-content-digest").and_then(|d| d.parse().ok());
        let mut body = BytesMut::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.transport(e))?;
            if body.len() + chunk.len() > MAX_MANIFEST_SIZE {
                return Err(UpstreamError::TooLarge {
                    upstream: self.name.clone(),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some(FetchedManifest {
            bytes: body.freeze(),
            media_type,
            digest,
        }))
    }

    /// HEAD a blob: its size, or `None` when the repository does not have it.
    pub async fn head_blob(&self, repo: &RepoName, d: &Digest) -> UResult<Option<u64>> {
        let url = self.url(&format!("v2/{repo}/blobs/{d}"))?;
        let resp = self.send(Method::HEAD, url, repo, None).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.fail(resp).await);
        }
        Ok(Some(
            header_str(resp.headers(), CONTENT_LENGTH.as_str())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        ))
    }

    /// GET a blob as a stream, following redirects (Docker Hub sends blobs from a CDN; reqwest
    /// drops `Authorization` when a redirect leaves the host).
    pub async fn get_blob(&self, repo: &RepoName, d: &Digest) -> UResult<Option<BlobSource>> {
        let url = self.url(&format!("v2/{repo}/blobs/{d}"))?;
        let resp = self.send(Method::GET, url, repo, None).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.fail(resp).await);
        }
        let name = self.name.clone();
        let size = resp.content_length();
        let stream = resp
            .bytes_stream()
            .map_err(move |e| {
                Error::Unavailable(format!("{name}: blob transfer failed: {}", e.without_url()))
            })
            .boxed();
        Ok(Some(BlobSource { size, stream }))
    }

    /// One page of the tag list, passed through.
    pub async fn tags(&self, repo: &RepoName, query: &str) -> UResult<Option<TagPage>> {
        let mut url = self.url(&format!("v2/{repo}/tags/list"))?;
        if !query.is_empty() {
            url.set_query(Some(query));
        }
        let resp = self.send(Method::GET, url, repo, None).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.fail(resp).await);
        }
        let link = header_str(resp.headers(), "link").map(str::to_string);
        let body = resp.bytes().await.map_err(|e| self.transport(e))?;
        Ok(Some(TagPage { body, link }))
    }
}

fn header_str<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}
