//! Bad input gets the distribution spec's error code and status, before anything reaches the
//! storage or the upstream.

use crate::support::archway::{Archway, Settings};
use crate::support::registry::Upstream;
use crate::support::{http, raw_status};

const GOOD_DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

async fn check(aw: &Archway, method: &str, path: &str, status: u16, code: &str) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let r = http()
        .request(m, format!("{}{path}", aw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), status, "{method} {path}");
    assert_eq!(
        r.headers()["content-type"],
        "application/json",
        "{method} {path}"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], code, "{method} {path}: {body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().len() > 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_oci_errors() {
    let up = Upstream::start().await;
    let aw = Archway::start(&Settings::single(&up.url())).await;
    // The catalog lists hosted repositories: none here.
    let r = http()
        .get(format!("{}/v2/_catalog", aw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v, serde_json::json!({"repositories": []}));
    let r = http()
        .get(format!("{}/v2/", aw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );

    for (method, path, status, code) in [
        ("GET", "/v2/UPPER/manifests/latest", 400, "NAME_INVALID"),
        ("GET", "/v2/a//b/manifests/latest", 400, "NAME_INVALID"),
        ("GET", "/v2/a/-b/manifests/latest", 400, "NAME_INVALID"),
        ("GET", "/v2/a/manifests/sha256:abc", 400, "DIGEST_INVALID"),
        (
            "GET",
            "/v2/a/manifests/md5:d41d8cd98f00b204e9800998ecf8427e",
            400,
            "DIGEST_INVALID",
        ),
        ("GET", "/v2/a/blobs/latest", 400, "DIGEST_INVALID"),
        // No manifest has a malformed tag: unknown, as the OCI conformance suite's
        // `.INVALID_MANIFEST_NAME` checks require.
        (
            "GET",
            "/v2/a/manifests/.INVALID_MANIFEST_NAME",
            404,
            "MANIFEST_UNKNOWN",
        ),
        ("HEAD", "/v2/a/manifests/.INVALID_MANIFEST_NAME", 404, ""),
        ("GET", "/v2/a/manifests/nope", 404, "MANIFEST_UNKNOWN"),
        ("HEAD", "/v2/a/manifests/nope", 404, ""),
        (
            "GET",
            &format!("/v2/a/manifests/{GOOD_DIGEST}"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            "GET",
            &format!("/v2/a/blobs/{GOOD_DIGEST}"),
            404,
            "BLOB_UNKNOWN",
        ),
        (
            "GET",
            "/v2/a/manifests/latest?ns=unknown.example",
            404,
            "NAME_UNKNOWN",
        ),
        ("PUT", "/v2/a/manifests/latest", 405, "UNSUPPORTED"),
        (
            "DELETE",
            &format!("/v2/a/manifests/{GOOD_DIGEST}"),
            405,
            "UNSUPPORTED",
        ),
        (
            "DELETE",
            &format!("/v2/a/blobs/{GOOD_DIGEST}"),
            405,
            "UNSUPPORTED",
        ),
        ("POST", "/v2/a/blobs/uploads/", 405, "UNSUPPORTED"),
        ("PATCH", "/v2/a/blobs/uploads/123", 405, "UNSUPPORTED"),
        (
            "PUT",
            "/v2/a/blobs/uploads/123?digest=sha256:00",
            405,
            "UNSUPPORTED",
        ),
        ("POST", "/v2/_catalog", 405, "UNSUPPORTED"),
        ("GET", "/v2/a/unknown/thing", 404, "NAME_UNKNOWN"),
    ] {
        if method == "HEAD" {
            let r = http()
                .head(format!("{}{path}", aw.url()))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), status, "{method} {path}");
            continue;
        }
        check(&aw, method, path, status, code).await;
    }
    // Path traversal, sent raw (a URL library would resolve the dots first).
    for path in [
        "/v2/../../etc/manifests/latest",
        "/v2/%2e%2e/x/blobs/sha256:00",
        "/v2/a/../../../blobs/sha256:00",
        "/v2/a/blobs/sha256:..%2f..%2fetc",
        "/v2/a/blobs/sha256:../../../../etc/passwd",
    ] {
        let status = raw_status(aw.port, "GET", path);
        assert!(matches!(status, 400 | 404), "{path}: {status}");
    }
    // None of the invalid requests reached the upstream.
    let log = up.log_text();
    for bad in ["UPPER", "/etc/", "md5", "hidden", "passwd", "blobs/uploads"] {
        assert!(!log.contains(bad), "{bad} reached the upstream");
    }
}
