//! The client for one upstream registry: manifests, blobs and tag lists over the distribution
//! API, with authentication, timeouts, redirects and connection pooling.
//!
//! It knows nothing of the cache. It answers "what does the upstream say", mapping a 404 to
//! `None` so callers decide which OCI error that is, and every other failure to an
//! [`UpstreamError`], which tells whether the upstream is *unavailable* (the case where a
//! stale cached answer may be served). The services see upstreams through the [`Remote`]
//! trait, so their tests can stand an in-memory registry in for the network.

pub mod auth;
mod error;
pub mod health;
#[cfg(test)]
pub mod memory;
pub mod realm;
pub mod resume;

use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RANGE, WWW_AUTHENTICATE};
use http::{Method, StatusCode};
use tokio::time::Instant;
use url::Url;

use crate::config::UpstreamConfig;
use crate::metrics::Metrics;
use crate::oci::manifest::MAX_MANIFEST_SIZE;
use crate::oci::{media, Digest, RepoName};
use auth::{Challenge, Credentials, Token};
pub use error::{Failure, UpstreamError};

/// What a manifest HEAD says.
#[derive(Debug, Clone)]
pub struct ManifestHead {
    /// `Docker-Content-Digest`: what revalidating a tag compares with its record.
    pub digest: Option<Digest>,
    /// `Content-Type`, as the upstream sent it.
    pub media_type: Option<String>,
    /// `Content-Length`, in bytes.
    pub size: Option<u64>,
}

/// A fetched manifest, bytes exactly as sent.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The body, at most `MAX_MANIFEST_SIZE` bytes.
    pub bytes: Bytes,
    /// `Content-Type`, as the upstream sent it.
    pub media_type: Option<String>,
    /// `Docker-Content-Digest` as the upstream declared it.
    pub digest: Option<Digest>,
}

/// A blob as the upstream sends it: its announced length and the body, unverified.
pub struct BlobDownload {
    /// `Content-Length`, when the upstream sent one.
    pub size: Option<u64>,
    /// The body as it arrives, not yet checked against the digest.
    pub stream: BoxStream<'static, Result<Bytes, UpstreamError>>,
}

/// A tag list page, passed through.
#[derive(Debug, Clone)]
pub struct TagPage {
    /// The `/tags/list` JSON.
    pub body: Bytes,
    /// The `Link` header naming the next page, passed on to the client.
    pub link: Option<String>,
}

/// One page of an upstream's referrers listing (the OCI 1.1 referrers API).
#[derive(Debug, Clone)]
pub struct ReferrersPage {
    /// The descriptors of the page, as listed.
    pub manifests: Vec<serde_json::Value>,
    /// The path of the next page (`Link: <...>; rel="next"`), on the same registry.
    pub next: Option<String>,
}

type UResult<T> = Result<T, UpstreamError>;

/// An upstream registry as the services use it. `Ok(None)` is the upstream's 404.
#[async_trait]
pub trait Remote: Send + Sync + std::fmt::Debug {
    /// The configured name, for messages and metrics.
    fn name(&self) -> &str;
    async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
    ) -> UResult<Option<ManifestHead>>;
    async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
    ) -> UResult<Option<FetchedManifest>>;
    /// A blob's size.
    async fn head_blob(&self, repo: &RepoName, d: &Digest) -> UResult<Option<u64>>;
    /// A blob's bytes from `offset` on (0: all of them; more: a fill taken over part-way,
    /// which has the bytes before). `size` is the whole blob's, and the stream starts at
    /// `offset` whether or not the upstream honoured the `Range`.
    async fn get_blob(
        &self,
        repo: &RepoName,
        d: &Digest,
        offset: u64,
    ) -> UResult<Option<BlobDownload>>;
    /// One page of `/tags/list`; `query` is passed on as is (`n=..&last=..`).
    async fn tags(&self, repo: &RepoName, query: &str) -> UResult<Option<TagPage>>;
    /// What is known of this upstream's state, for the console.
    fn status(&self) -> health::UpstreamStatus {
        health::UpstreamStatus::default()
    }

    /// Whether its rate budget is under `min_remaining`: spend no pull that can be avoided.
    fn budget_low(&self) -> bool {
        false
    }

    /// How many times an interrupted blob download is resumed (`retries`).
    fn retries(&self) -> u32 {
        0
    }

    /// A page of `/referrers/<digest>` (`next`: a page's link to the one after). `None` when
    /// the upstream has no referrers API (distribution 2.8 answers 404) or does not answer
    /// with an index.
    async fn referrers(
        &self,
        repo: &RepoName,
        d: &Digest,
        next: Option<&str>,
    ) -> UResult<Option<ReferrersPage>>;
}

/// The HTTP client for one configured upstream.
pub struct Upstream {
    /// The configured `name`, for messages and metric labels.
    pub name: String,
    base: Url,
    http: reqwest::Client,
    creds: Option<Credentials>,
    /// The last challenge seen, so later requests authenticate up front instead of paying a
    /// 401 round trip each.
    challenge: std::sync::Mutex<Option<Challenge>>,
    tokens: moka::future::Cache<String, Token>,
    /// Where the credentials may go to fetch a token.
    realms: realm::RealmPolicy,
    retries: u32,
    metrics: Metrics,
    health: health::Health,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Upstream({} {})", self.name, self.base)
    }
}

/// Why an upstream's HTTP client cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("upstream {name}: ca_file holds no usable certificate")]
    Ca {
        name: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("upstream {name}: cannot build its HTTP client")]
    Client {
        name: String,
        #[source]
        source: reqwest::Error,
    },
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig, metrics: Metrics) -> Result<Upstream, BuildError> {
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
            let certs =
                reqwest::Certificate::from_pem_bundle(pem).map_err(|source| BuildError::Ca {
                    name: cfg.name.clone(),
                    source,
                })?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let http = b.build().map_err(|source| BuildError::Client {
            name: cfg.name.clone(),
            source,
        })?;
        let mut base = cfg.url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let realms = realm::RealmPolicy::new(&base, &cfg.token_realms);
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
            health: health::Health::new(&cfg.name, cfg.min_remaining, metrics.clone()),
            realms,
            retries: cfg.retries,
            metrics: metrics.for_upstream(&cfg.name),
        })
    }

    fn url(&self, path: &str) -> UResult<Url> {
        self.base.join(path).map_err(|source| UpstreamError::Url {
            upstream: self.name.clone(),
            path: path.to_string(),
            source,
        })
    }

    fn transport(&self, e: reqwest::Error) -> UpstreamError {
        let what = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "cannot connect"
        } else if e.is_body() || e.is_decode() {
            "transfer failed"
        } else {
            "transport error"
        };
        UpstreamError::Transport {
            upstream: self.name.clone(),
            what,
            source: e.without_url(),
        }
    }

    fn token_problem(&self, problem: String, status: Option<u16>) -> UpstreamError {
        UpstreamError::Token {
            upstream: self.name.clone(),
            problem,
            status,
        }
    }

    async fn authorize(&self, challenge: &Challenge, scope: &str) -> UResult<Option<String>> {
        match challenge {
            Challenge::Basic => Ok(self.creds.as_ref().map(Credentials::basic_header)),
            Challenge::Bearer { realm, service, .. } => {
                if let Some(t) = self.tokens.get(scope).await {
                    if t.usable(Instant::now()) {
                        return Ok(Some(format!("Bearer {}", t.value)));
                    }
                    self.tokens.invalidate(scope).await;
                }
                let fetch = self.fetch_token(realm, service.as_deref(), scope);
                let t = self
                    .tokens
                    .try_get_with(scope.to_string(), fetch)
                    .await
                    .map_err(|source| UpstreamError::TokenFetch {
                        upstream: self.name.clone(),
                        source,
                    })?;
                Ok(Some(format!("Bearer {}", t.value)))
            }
        }
    }

    async fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &str) -> UResult<Token> {
        let mut url = Url::parse(realm)
            .map_err(|e| self.token_problem(format!("bad token realm {realm:?}: {e}"), None))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let creds = match (&self.creds, self.realms.check(&url)) {
            (Some(c), Ok(_)) => Some(c),
            (Some(_), Err(why)) => {
                tracing::error!(
                    upstream = %self.name, realm = %realm, rule = %why,
                    "not sending this upstream's credentials to the token realm it named; asking for a token anonymously"
                );
                self.metrics
                    .upstream_realm_refused
                    .with_label_values(&[&self.name])
                    .inc();
                None
            }
            (None, _) => None,
        };
        let mut req = self.http.get(url);
        if let Some(c) = creds {
            req = req.header(AUTHORIZATION, c.basic_header());
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        self.count("TOKEN", status.as_str());
        let body = resp.bytes().await.map_err(|e| self.transport(e))?;
        if !status.is_success() {
            return Err(self.token_problem(
                format!("token endpoint answered HTTP {status}"),
                Some(status.as_u16()),
            ));
        }
        auth::parse_token(&body, Instant::now())
            .ok_or_else(|| self.token_problem("token endpoint sent no token".into(), None))
    }

    fn count(&self, method: &str, status: &str) {
        self.metrics
            .upstream_requests
            .with_label_values(&[&self.name, method, status])
            .inc();
    }

    /// Sends a body-less request, authenticating as the upstream asks.
    async fn send(
        &self,
        method: Method,
        url: Url,
        repo: &RepoName,
        accept: Option<&str>,
    ) -> UResult<reqwest::Response> {
        self.send_from(method, url, repo, accept, 0).await
    }

    /// `send`, asking for the body from `offset` on when it is not 0.
    async fn send_from(
        &self,
        method: Method,
        url: Url,
        repo: &RepoName,
        accept: Option<&str>,
        offset: u64,
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
            if offset > 0 {
                req = req.header(RANGE, format!("bytes={offset}-"));
            }
            if let Some(h) = &authz {
                req = req.header(AUTHORIZATION, h);
            }
            let started = Instant::now();
            let resp = req.send().await.map_err(|e| {
                self.count(method.as_str(), "error");
                let e = self.transport(e);
                self.health.failed(&e.to_string());
                e
            })?;
            self.health.answered(resp.status(), resp.headers());
            self.metrics
                .upstream_duration
                .with_label_values(&[&self.name])
                .observe(started.elapsed().as_secs_f64());
            self.count(method.as_str(), resp.status().as_str());
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
            // A token the upstream refused (expired early, revoked) is no good for anyone.
            self.tokens.invalidate(&scope).await;
            match self.authorize(&challenge, &scope).await? {
                Some(h) => authz = Some(h),
                None => return Ok(resp),
            }
            retried = true;
        }
    }

    /// The failure for a response that is neither success nor 404, with the upstream's own
    /// OCI error message when it sent one.
    async fn fail(&self, resp: reqwest::Response) -> UpstreamError {
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&body[..body.len().min(4096)])
            .ok()
            .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_string))
            .unwrap_or_default();
        UpstreamError::Status {
            upstream: self.name.clone(),
            status: status.as_u16(),
            message,
        }
    }

    /// Sends, and sorts the answer: success, `None` for 404, or the failure.
    async fn answer(
        &self,
        method: Method,
        path: &str,
        repo: &RepoName,
        accept: Option<&str>,
    ) -> UResult<Option<reqwest::Response>> {
        let url = self.url(path)?;
        let resp = self.send(method, url, repo, accept).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.fail(resp).await);
        }
        Ok(Some(resp))
    }

    fn too_large(&self) -> UpstreamError {
        UpstreamError::TooLarge {
            upstream: self.name.clone(),
        }
    }
}

#[async_trait]
impl Remote for Upstream {
    fn name(&self) -> &str {
        &self.name
    }

    fn retries(&self) -> u32 {
        self.retries
    }

    fn status(&self) -> health::UpstreamStatus {
        self.health.status()
    }

    fn budget_low(&self) -> bool {
        self.health.low()
    }

    async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
    ) -> UResult<Option<ManifestHead>> {
        let path = format!("v2/{repo}/manifests/{reference}");
        let accept = Some(media::UPSTREAM_ACCEPT);
        let Some(resp) = self.answer(Method::HEAD, &path, repo, accept).await? else {
            return Ok(None);
        };
        let h = resp.headers();
        Ok(Some(ManifestHead {
            digest: header_str(h, "docker-content-digest").and_then(|d| d.parse().ok()),
            media_type: header_str(h, CONTENT_TYPE.as_str()).map(str::to_string),
            size: header_str(h, CONTENT_LENGTH.as_str()).and_then(|s| s.parse().ok()),
        }))
    }

    /// Refuses more than [`MAX_MANIFEST_SIZE`] bytes, announced or sent.
    async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
    ) -> UResult<Option<FetchedManifest>> {
        let path = format!("v2/{repo}/manifests/{reference}");
        let accept = Some(media::UPSTREAM_ACCEPT);
        let Some(resp) = self.answer(Method::GET, &path, repo, accept).await? else {
            return Ok(None);
        };
        let h = resp.headers();
        let media_type = header_str(h, CONTENT_TYPE.as_str()).map(str::to_string);
        let digest = header_str(h, "docker-content-digest").and_then(|d| d.parse().ok());
        let body = self.read_limited(resp).await?;
        Ok(Some(FetchedManifest {
            bytes: body,
            media_type,
            digest,
        }))
    }

    async fn head_blob(&self, repo: &RepoName, d: &Digest) -> UResult<Option<u64>> {
        let path = format!("v2/{repo}/blobs/{d}");
        let Some(resp) = self.answer(Method::HEAD, &path, repo, None).await? else {
            return Ok(None);
        };
        Ok(Some(
            header_str(resp.headers(), CONTENT_LENGTH.as_str())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        ))
    }

    /// Follows redirects (Docker Hub sends blobs from a CDN; reqwest drops `Authorization`
    /// when a redirect leaves the host).
    async fn get_blob(
        &self,
        repo: &RepoName,
        d: &Digest,
        offset: u64,
    ) -> UResult<Option<BlobDownload>> {
        let url = self.url(&format!("v2/{repo}/blobs/{d}"))?;
        let resp = self.send_from(Method::GET, url, repo, None, offset).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.fail(resp).await);
        }
        let name = self.name.clone();
        // 206: the rest, and the whole size in Content-Range. 200: the upstream ignored the
        // range, and the bytes before `offset` are skipped here.
        let (size, skip) = if resp.status() == StatusCode::PARTIAL_CONTENT {
            let total = header_str(resp.headers(), "content-range")
                .and_then(|r| r.rsplit_once('/'))
                .and_then(|(_, t)| t.parse::<u64>().ok());
            (total, 0)
        } else {
            (resp.content_length(), offset)
        };
        let stream = resp
            .bytes_stream()
            .map_err(move |e| UpstreamError::Transport {
                upstream: name.clone(),
                what: if e.is_timeout() {
                    "blob transfer timed out"
                } else {
                    "blob transfer failed"
                },
                source: e.without_url(),
            })
            .boxed();
        let stream = if skip > 0 {
            skip_bytes(stream, skip)
        } else {
            stream
        };
        Ok(Some(BlobDownload { size, stream }))
    }

    async fn tags(&self, repo: &RepoName, query: &str) -> UResult<Option<TagPage>> {
        let mut path = format!("v2/{repo}/tags/list");
        if !query.is_empty() {
            path = format!("{path}?{query}");
        }
        let Some(resp) = self.answer(Method::GET, &path, repo, None).await? else {
            return Ok(None);
        };
        let link = header_str(resp.headers(), "link").map(str::to_string);
        let body = resp.bytes().await.map_err(|e| self.transport(e))?;
        Ok(Some(TagPage { body, link }))
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        d: &Digest,
        next: Option<&str>,
    ) -> UResult<Option<ReferrersPage>> {
        // A next page is followed only on the same registry: a link elsewhere would take our
        // credentials with it.
        let path = match next {
            Some(p) => match self.same_registry(p) {
                Some(p) => p,
                None => {
                    tracing::warn!(
                        upstream = %self.name, repository = %repo, digest = %d, next = p,
                        "referrers list continues on another registry; listing what came so far"
                    );
                    return Ok(None);
                }
            },
            None => format!("v2/{repo}/referrers/{d}"),
        };
        let url = self.url(&path)?;
        let resp = self
            .send(Method::GET, url, repo, Some(media::OCI_INDEX))
            .await?;
        let status = resp.status();
        // No referrers API: the spec's 404, or whatever client error a registry that
        // predates it answers for a path it does not know (400, 405, 406, some a 401 with no
        // challenge...). Refusals that concern us (auth, rate limits) and server errors are
        // errors: reading the tag schema instead would hide them.
        if status.is_client_error() && !matches!(status.as_u16(), 401 | 403 | 429) {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.fail(resp).await);
        }
        let next = header_str(resp.headers(), "link").and_then(next_link);
        let body = self.read_limited(resp).await?;
        let Ok(index) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return Ok(None);
        };
        let Some(manifests) = index.get("manifests").and_then(|m| m.as_array()) else {
            return Ok(None);
        };
        Ok(Some(ReferrersPage {
            manifests: manifests.clone(),
            next,
        }))
    }
}

impl Upstream {
    /// A manifest-like body (a manifest, a referrers page), refused past
    /// [`MAX_MANIFEST_SIZE`] bytes announced or sent: such a document has no business being
    /// larger, and it is held in memory whole.
    async fn read_limited(&self, resp: reqwest::Response) -> UResult<Bytes> {
        if resp
            .content_length()
            .is_some_and(|l| l > MAX_MANIFEST_SIZE as u64)
        {
            return Err(self.too_large());
        }
        let mut body = BytesMut::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.transport(e))?;
            if body.len() + chunk.len() > MAX_MANIFEST_SIZE {
                return Err(self.too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    /// `link` as a path on this upstream (`v2/...?...`), when it stays on it: a relative
    /// path, or an absolute URL of the same scheme, host and port.
    fn same_registry(&self, link: &str) -> Option<String> {
        let url = self.base.join(link).ok()?;
        let same = url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default();
        // Relative to the base, which may sit under a path prefix.
        let path = url.path().strip_prefix(self.base.path())?;
        (same && path.starts_with("v2/")).then(|| match url.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        })
    }
}

/// `stream` without its first `n` bytes.
fn skip_bytes(
    stream: BoxStream<'static, Result<Bytes, UpstreamError>>,
    n: u64,
) -> BoxStream<'static, Result<Bytes, UpstreamError>> {
    stream
        .scan(n, |left, chunk| {
            let out = match chunk {
                Ok(mut b) if *left > 0 => {
                    let cut = (*left).min(b.len() as u64);
                    *left -= cut;
                    Ok(b.split_off(cut as usize))
                }
                other => other,
            };
            std::future::ready(Some(out))
        })
        .try_filter(|b| std::future::ready(!b.is_empty()))
        .boxed()
}

/// The target of a `Link: <target>; rel="next"` header.
fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

fn header_str<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn upstream(url: &str) -> Upstream {
        let toml = format!("[[upstream]]\nname = \"u\"\nurl = \"{url}\"\n");
        let cfg = Config::from_toml(&toml, "test", None).unwrap();
        Upstream::new(&cfg.upstreams[0], Metrics::new()).unwrap()
    }

    #[test]
    fn next_pages_are_followed_only_on_the_same_registry() {
        let u = upstream("https://reg.test/mirror");
        let same = |l: &str| u.same_registry(l);
        assert_eq!(
            same("/mirror/v2/app/referrers/sha256:ab?n=1&last=x").as_deref(),
            Some("v2/app/referrers/sha256:ab?n=1&last=x")
        );
        assert_eq!(
            same("https://reg.test:443/mirror/v2/app/referrers/x").as_deref(),
            Some("v2/app/referrers/x")
        );
        assert_eq!(same("https://other.test/mirror/v2/app/referrers/x"), None);
        assert_eq!(same("http://reg.test/mirror/v2/app/referrers/x"), None);
        assert_eq!(same("https://reg.test:8443/mirror/v2/app/x"), None);
        assert_eq!(same("/v2/app/referrers/x"), None, "outside the base path");
        assert_eq!(
            next_link(r#"</v2/a?last=b>; rel="next""#).as_deref(),
            Some("/v2/a?last=b")
        );
    }
}
