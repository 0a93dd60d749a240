//! How archway authenticates to upstreams: the Bearer token flow of the distribution token
//! spec (with and without configured credentials, tokens cached per scope and fetched again
//! when the registry refuses one), a CDN redirect that must not see the token, and an HTTPS
//! upstream whose certificate is verified against `ca_file`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::support::archway::{Archway, Settings, UpstreamSpec};
use crate::support::fake::{Fake, Reply};
use crate::support::images::{Image, Pusher, OCI_MANIFEST};
use crate::support::registry::{Options, Upstream};
use crate::support::{http, random_bytes, skopeo, unique_seed};

fn ok(content_type: &str, body: Vec<u8>) -> Reply {
    Reply::Ok {
        content_type: content_type.into(),
        headers: vec![],
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_flow_with_credentials_and_a_cdn_redirect() {
    let registry = Fake::start().await;
    let cdn = Fake::start().await;
    let img = Image::new("linux/amd64", vec![random_bytes(unique_seed(), 50_000)]);
    let layer = img.layers[0].clone();
    let token_fetches = Arc::new(AtomicUsize::new(0));
    let realm = format!("{}/token", registry.url());
    let cdn_url = format!("{}/cdn/blob?signature=abc", cdn.url());
    let manifest = img.manifest.clone();
    let manifest_path = "/v2/private/app/manifests/v1".to_string();
    let blob_path = format!("/v2/private/app/blobs/{}", layer.digest);
    let fetches = token_fetches.clone();
    registry.handler(move |req| {
        let path = req.uri().path();
        let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok());
        if path == "/token" {
            // The credentials configured for the upstream go to the token endpoint only.
            assert_eq!(auth, Some("Basic dXNlcjpwYXNz"), "token request without credentials");
            let q = req.uri().query().unwrap_or("");
            assert!(q.contains("scope=repository%3Aprivate%2Fapp%3Apull"), "{q}");
            assert!(q.contains("service=fake-registry"), "{q}");
            fetches.fetch_add(1, Ordering::SeqCst);
            return Some(ok("application/json", br#"{"token":"good-token","expires_in":300}"#.to_vec()));
        }
        if auth != Some("Bearer good-token") {
            return Some(Reply::Status(
                401,
                vec![(
                    "www-authenticate".into(),
                    format!(r#"Bearer realm="{realm}",service="fake-registry",scope="repository:private/app:pull""#),
                )],
            ));
        }
        if path == manifest_path {
            return Some(ok(OCI_MANIFEST, manifest.clone()));
        }
        if path == blob_path {
            return Some(Reply::Status(307, vec![("location".into(), cdn_url.clone())]));
        }
        None
    });
    cdn.route(
        "/cdn/blob",
        ok("application/octet-stream", layer.data.clone()),
    );

    let mut settings = Settings::single(&registry.url());
    settings.upstreams = vec![UpstreamSpec {
        creds: Some(("user".into(), "pass".into())),
        ..UpstreamSpec::new("tok", &registry.url(), &["tok.example"], true)
    }];
    let aw = Archway::start(&settings).await;
    let c = http();
    let r = c
        .get(format!("{}/v2/private/app/manifests/v1", aw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), img.manifest);
    let r = c
        .get(format!(
            "{}/v2/private/app/blobs/{}",
            aw.url(),
            layer.digest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), layer.data);

    assert_eq!(
        token_fetches.load(Ordering::SeqCst),
        1,
        "the token is cached per scope"
    );
    let cdn_requests = cdn.requests();
    assert_eq!(cdn_requests.len(), 1);
    assert_eq!(
        cdn_requests[0].authorization, None,
        "Authorization leaked to the CDN"
    );
    // After the first challenge, requests carry the token up front: one 401 in all.
    let unauthorized = registry
        .requests()
        .iter()
        .filter(|s| s.path.starts_with("/v2/") && s.authorization.is_none())
        .count();
    assert_eq!(unauthorized, 1);
    let log = aw.log_text();
    assert!(
        !log.contains("good-token") && !log.contains("dXNlcjpwYXNz"),
        "secret in log"
    );
}

/// A registry whose token endpoint hands out `token-1`, `token-2`, ... and accepts each token
/// for `uses` requests before answering 401 again (a token that expired early, or was
/// revoked). Returns the number of token requests, and whether any carried credentials.
fn token_registry(
    registry: &Fake,
    manifest: Vec<u8>,
    uses: usize,
) -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let issued = Arc::new(AtomicUsize::new(0));
    let with_credentials = Arc::new(AtomicUsize::new(0));
    let used: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>> = Arc::default();
    let realm = format!("{}/token", registry.url());
    let (n, creds) = (issued.clone(), with_credentials.clone());
    let digest = crate::support::images::sha256(&manifest);
    registry.handler(move |req| {
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if req.uri().path() == "/token" {
            if auth.is_some() {
                creds.fetch_add(1, Ordering::SeqCst);
            }
            let t = n.fetch_add(1, Ordering::SeqCst) + 1;
            let body = format!(r#"{{"token":"token-{t}","expires_in":300}}"#);
            return Some(ok("application/json", body.into_bytes()));
        }
        let challenge = Reply::Status(
            401,
            vec![(
                "www-authenticate".into(),
                format!(
                    r#"Bearer realm="{realm}",service="fake",scope="repository:open/app:pull""#
                ),
            )],
        );
        let Some(token) = auth.as_deref().and_then(|a| a.strip_prefix("Bearer ")) else {
            return Some(challenge);
        };
        let mut used = used.lock().unwrap();
        let count = used.entry(token.to_string()).or_default();
        *count += 1;
        if *count > uses {
            return Some(challenge);
        }
        (req.uri().path() == "/v2/open/app/manifests/v1").then(|| Reply::Ok {
            content_type: OCI_MANIFEST.into(),
            headers: vec![("docker-content-digest".into(), digest.clone())],
            body: manifest.clone(),
        })
    });
    (issued, with_credentials)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_bearer_tokens_are_fetched_without_credentials() {
    let registry = Fake::start().await;
    let img = Image::new("linux/amd64", vec![random_bytes(unique_seed(), 100)]);
    let (issued, with_credentials) = token_registry(&registry, img.manifest.clone(), 100);
    // No username: the anonymous token flow Docker Hub offers public images.
    let aw = Archway::start(&Settings {
        tag_ttl: "0s".into(),
        ..Settings::single(&registry.url())
    })
    .await;
    for _ in 0..3 {
        let r = http()
            .get(format!("{}/v2/open/app/manifests/v1", aw.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap(), img.manifest);
    }
    assert_eq!(
        issued.load(Ordering::SeqCst),
        1,
        "one token for the scope, reused"
    );
    assert_eq!(
        with_credentials.load(Ordering::SeqCst),
        0,
        "an anonymous token request carries no Authorization"
    );
    let bearer = registry
        .requests()
        .iter()
        .filter(|s| s.authorization.as_deref() == Some("Bearer token-1"))
        .count();
    assert_eq!(
        bearer, 3,
        "a GET and then two revalidating HEADs, each with the token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_the_registry_refuses_is_replaced() {
    let registry = Fake::start().await;
    let img = Image::new("linux/amd64", vec![random_bytes(unique_seed(), 100)]);
    // Each token is good for one request, then expires.
    let (issued, _) = token_registry(&registry, img.manifest.clone(), 1);
    let aw = Archway::start(&Settings {
        tag_ttl: "0s".into(),
        ..Settings::single(&registry.url())
    })
    .await;
    for round in 1..=3 {
        let r = http()
            .get(format!("{}/v2/open/app/manifests/v1", aw.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "round {round}");
        assert_eq!(
            issued.load(Ordering::SeqCst),
            round,
            "a fresh token each round"
        );
    }
    let log = aw.log_text();
    assert!(
        !log.contains("token-1") && !log.contains("token-2"),
        "a token reached the log"
    );
}

/// A CA and a certificate for 127.0.0.1 signed by it, written into `dir` as ca.crt,
/// server.crt and server.key.
fn https_upstream_certs(dir: &std::path::Path) {
    crate::tls::issue(dir, "upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_verified_against_ca_file() {
    let certs = tempfile::tempdir().unwrap();
    https_upstream_certs(certs.path());
    let up = Upstream::start_with(Options {
        tls: Some((
            certs.path().join("server.crt"),
            certs.path().join("server.key"),
        )),
        ..Options::default()
    })
    .await;
    assert!(up.url().starts_with("https://"));
    let img = Image::new("linux/amd64", vec![random_bytes(unique_seed(), 5000)]);
    let push = Pusher::with_ca(
        &up.url(),
        &std::fs::read(certs.path().join("ca.crt")).unwrap(),
    );
    push.image("secure/app", "v1", &img).await;

    let trusting = Archway::start(&Settings {
        upstreams: vec![UpstreamSpec {
            ca_file: Some(certs.path().join("ca.crt")),
            ..UpstreamSpec::new("up", &up.url(), &["upstream.test"], true)
        }],
        ..Settings::single(&up.url())
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = skopeo::copy_to_oci(
        &format!("{}/secure/app:v1", trusting.host()),
        dir.path(),
        &[],
    );
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(skopeo::copied_manifest(dir.path()), img.digest);

    // Without ca_file the certificate is unknown: the upstream is unusable, and says why.
    let strict = Archway::start(&Settings::single(&up.url())).await;
    let r = http()
        .get(format!("{}/v2/secure/app/manifests/v1", strict.url()))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("cannot connect"), "{message}");
    assert!(
        message.to_lowercase().contains("certificate"),
        "the cause is in the message: {message}"
    );
}

/// A registry at `registry` whose challenge names a token realm on `realm_host` (another
/// server): the realm hands out a token to anyone and records what Authorization it got.
fn foreign_realm(
    registry: &Fake,
    realm_host: &Fake,
    img: &Image,
) -> Arc<std::sync::Mutex<Vec<Option<String>>>> {
    let seen: Arc<std::sync::Mutex<Vec<Option<String>>>> = Arc::default();
    let s = seen.clone();
    realm_host.handler(move |req| {
        if req.uri().path() != "/token" {
            return None;
        }
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        s.lock().unwrap().push(auth);
        Some(ok(
            "application/json",
            br#"{"token":"realm-token","expires_in":300}"#.to_vec(),
        ))
    });
    let realm = format!("{}/token", realm_host.url());
    let manifest = img.manifest.clone();
    registry.handler(move |req| {
        let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok());
        if auth != Some("Bearer realm-token") {
            return Some(Reply::Status(
                401,
                vec![(
                    "www-authenticate".into(),
                    format!(r#"Bearer realm="{realm}",service="reg",scope="repository:private/app:pull""#),
                )],
            ));
        }
        (req.uri().path() == "/v2/private/app/manifests/v1").then(|| ok(OCI_MANIFEST, manifest.clone()))
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_go_to_a_token_realm_on_another_host_unless_listed() {
    let img = Image::new("linux/amd64", vec![random_bytes(unique_seed(), 1_000)]);
    let (registry, realm_host) = (Fake::start().await, Fake::start().await);
    let seen = foreign_realm(&registry, &realm_host, &img);
    let settings = |extra: &str| {
        let mut s = Settings::single(&registry.url());
        s.admin = true;
        s.upstreams = vec![UpstreamSpec {
            creds: Some(("user".into(), "pass".into())),
            extra: extra.into(),
            ..UpstreamSpec::new("tok", &registry.url(), &["tok.example"], true)
        }];
        s
    };
    let pull = |aw: &Archway| {
        let url = format!("{}/v2/private/app/manifests/v1", aw.url());
        async move {
            let r = http().get(url).send().await.unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap())
        }
    };

    let aw = Archway::start(&settings("")).await;
    let refused = "archway_upstream_realm_refused_total{upstream=\"tok\"}";
    assert_eq!(
        crate::support::metric(aw.admin(), refused).await,
        Some(0.0),
        "there before any refusal"
    );
    assert_eq!(
        pull(&aw).await,
        (200, img.manifest.clone().into()),
        "anonymous token, still served"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        vec![None],
        "the foreign realm got no credentials"
    );
    assert_eq!(crate::support::metric(aw.admin(), refused).await, Some(1.0));
    let log = aw.log_text();
    assert!(
        log.contains("not sending this upstream's credentials")
            && log.contains(&format!("{}/token", realm_host.url()))
            && log.contains("token_realms does not list it"),
        "the log names the realm and the rule:\n{log}"
    );
    assert!(!log.contains("dXNlcjpwYXNz"));
    drop(aw);

    // Listed by the admin: the credentials go there.
    seen.lock().unwrap().clear();
    let aw = Archway::start(&settings(&format!(
        "token_realms = [\"{}\"]\n",
        realm_host.url()
    )))
    .await;
    assert_eq!(pull(&aw).await.0, 200);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Some("Basic dXNlcjpwYXNz".to_string())]
    );
    assert_eq!(crate::support::metric(aw.admin(), refused).await, Some(0.0));
}
