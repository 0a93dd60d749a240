//! Hosted repositories against the distribution spec, rule by rule: uploads (monolithic,
//! chunked, streamed, status, cancel, mount), manifest validation, content discovery, content
//! management, auth, and restarts in the middle of an upload. Real archway binary, real HTTP.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::archway::{Archway, Settings};
use crate::support::images::{sha256, Blob, Image, OCI_MANIFEST};
use crate::support::registry::Upstream;
use crate::support::{http, oci_error, random_bytes, unique_seed};

pub const WRITER: (&str, &str) = ("ci", "push-secret");
pub const READER: (&str, &str) = ("reader", "read-secret");

/// The `[auth]` and `[[hosted]]` tables for a hosted registry `local` whose writer is `ci`.
pub fn hosted_toml(dir: &std::path::Path, delete: bool) -> String {
    let path = dir.join("htpasswd");
    let mut text = String::new();
    for (u, p) in [WRITER, READER] {
        text.push_str(&format!("{u}:{}\n", bcrypt::hash(p, 4).unwrap()));
    }
    std::fs::write(&path, text).unwrap();
    format!(
        "\n[auth]\nhtpasswd = \"{}\"\n\n[[hosted]]\nname = \"local\"\nhosts = [\"registry.example.com\"]\nwriters = [\"ci\"]\ndelete = {delete}\n",
        path.display()
    )
}

pub struct Fixture {
    pub up: Upstream,
    pub aw: Archway,
    pub settings: Settings,
    _dir: tempfile::TempDir,
}

pub async fn fixture(delete: bool) -> Fixture {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        extra: hosted_toml(dir.path(), delete),
        ..Settings::single(&up.url())
    };
    let aw = Archway::start(&settings).await;
    Fixture {
        up,
        aw,
        settings,
        _dir: dir,
    }
}

/// Pushes as the writer, through the distribution API, to the archway at `base`.
pub struct Pushing {
    base: String,
}

impl Pushing {
    pub fn new(base: &str) -> Pushing {
        Pushing {
            base: base.to_string(),
        }
    }

    /// A blob, monolithically.
    pub async fn blob(&self, repo: &str, b: &Blob) {
        let r = http()
            .post(format!(
                "{}/v2/{repo}/blobs/uploads/?digest={}",
                self.base, b.digest
            ))
            .basic_auth(WRITER.0, Some(WRITER.1))
            .header("content-type", "application/octet-stream")
            .body(b.data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }

    pub async fn manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> reqwest::Response {
        http()
            .put(format!("{}/v2/{repo}/manifests/{reference}", self.base))
            .basic_auth(WRITER.0, Some(WRITER.1))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// `img` (blobs, then the manifest) as `repo:tag`.
    pub async fn image(&self, repo: &str, tag: &str, img: &Image) {
        for b in img.blobs() {
            self.blob(repo, b).await;
        }
        let r = self
            .manifest(repo, tag, img.media_type, &img.manifest)
            .await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
}

impl Fixture {
    fn push(&self) -> Pushing {
        Pushing::new(&self.aw.url())
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.aw.url())
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        http()
            .request(method, self.url(path))
            .basic_auth(WRITER.0, Some(WRITER.1))
    }

    async fn blob(&self, repo: &str, b: &Blob) {
        self.push().blob(repo, b).await
    }

    async fn start_upload(&self, repo: &str) -> String {
        let r = self
            .req(reqwest::Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        assert_eq!(r.headers()["range"], "0-0");
        assert!(r.headers().contains_key("docker-upload-uuid"));
        r.headers()["location"].to_str().unwrap().to_string()
    }

    async fn patch(
        &self,
        location: &str,
        range: Option<(u64, u64)>,
        data: &[u8],
    ) -> reqwest::Response {
        let mut r = self
            .req(reqwest::Method::PATCH, location)
            .header("content-type", "application/octet-stream")
            .body(data.to_vec());
        if let Some((a, b)) = range {
            r = r.header("content-range", format!("{a}-{b}"));
        }
        r.send().await.unwrap()
    }

    /// Finishes the upload at `location` with `PUT ?digest=`: the status.
    async fn finish_upload(&self, location: &str, digest: &str) -> u16 {
        let sep = if location.contains('?') { '&' } else { '?' };
        self.status(
            reqwest::Method::PUT,
            &format!("{location}{sep}digest={digest}"),
        )
        .await
    }

    async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> reqwest::Response {
        self.push()
            .manifest(repo, reference, media_type, body)
            .await
    }

    /// The status of a HEAD of blob `d` in `repo`.
    async fn head_blob(&self, repo: &str, d: &str) -> u16 {
        self.status(reqwest::Method::HEAD, &format!("/v2/{repo}/blobs/{d}"))
            .await
    }

    async fn status(&self, method: reqwest::Method, path: &str) -> u16 {
        self.req(method, path)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    pub async fn image(&self, repo: &str, tag: &str, img: &Image) {
        self.push().image(repo, tag, img).await
    }
}

fn image(seed: u64) -> Image {
    Image::new(
        "linux/amd64",
        vec![random_bytes(seed, 300_000), random_bytes(seed + 1, 5000)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monolithic_and_two_step_uploads() {
    let f = fixture(false).await;
    let b = Blob::new(random_bytes(unique_seed(), 100_000));
    f.blob("local/team/app", &b).await;
    let head = f
        .req(
            reqwest::Method::HEAD,
            &format!("/v2/local/team/app/blobs/{}", b.digest),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "100000");
    assert_eq!(head.headers()["docker-content-digest"], b.digest.as_str());
    let got = f
        .req(
            reqwest::Method::GET,
            &format!("/v2/local/team/app/blobs/{}", b.digest),
        )
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 206);
    assert_eq!(&got.bytes().await.unwrap()[..], &b.data[10..20]);

    // POST, then PUT ?digest= with the whole body.
    let c = Blob::new(random_bytes(unique_seed(), 70_000));
    let loc = f.start_upload("local/team/app").await;
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = f
        .req(
            reqwest::Method::PUT,
            &format!("{loc}{sep}digest={}", c.digest),
        )
        .header("content-type", "application/octet-stream")
        .body(c.data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["location"],
        format!("/v2/local/team/app/blobs/{}", c.digest).as_str()
    );
    assert_eq!(f.head_blob("local/team/app", &c.digest).await, 200);
    // Another repository does not have it.
    assert_eq!(f.head_blob("local/other", &c.digest).await, 404);
}

/// A chunk whose body stops half-way is answered 408 at `server.body_timeout` and its
/// connection closed; nothing of it is kept, and the upload goes on from where it stood
/// (the stalled chunk held the upload's lock until it was cut).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_stops_half_way_gets_408_at_the_body_timeout_and_the_upload_goes_on() {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        extra: hosted_toml(dir.path(), false),
        server_extra: "body_timeout = \"1s\"".into(),
        ..Settings::single(&up.url())
    };
    let aw = Archway::start(&settings).await;
    let f = Fixture {
        up,
        aw,
        settings,
        _dir: dir,
    };
    let data = random_bytes(unique_seed(), 20_000);
    let loc = f.start_upload("local/team/app").await;
    let path = url::Url::parse(&f.url(&loc)).unwrap();
    let path = &f.url(&loc)[path.origin().ascii_serialization().len()..];
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", WRITER.0, WRITER.1));
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", f.aw.port))
        .await
        .unwrap();
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&data[..5_000]).await.unwrap();
    // Then nothing: archway answers and closes. The deadline only turns a hang into a
    // failure.
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut answer))
        .await
        .expect("the stalled chunk was never answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"UNKNOWN""#), "{answer}");
    assert!(answer.contains("server.body_timeout"), "{answer}");

    let st = f.req(reqwest::Method::GET, &loc).send().await.unwrap();
    assert_eq!(st.status(), 204);
    assert_eq!(
        st.headers()["range"],
        "0-0",
        "nothing of the cut chunk kept"
    );
    let r = f.patch(&loc, None, &data).await;
    assert_eq!(r.status(), 202, "{}", f.aw.log_text());
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(f.finish_upload(&loc, &sha256(&data)).await, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_must_come_in_order() {
    let f = fixture(false).await;
    let data = random_bytes(unique_seed(), 30_000);
    let digest = sha256(&data);
    let loc = f.start_upload("local/team/app").await;
    let r = f.patch(&loc, Some((0, 9_999)), &data[..10_000]).await;
    assert_eq!(r.status(), 202, "{}", f.aw.log_text());
    assert_eq!(r.headers()["range"], "0-9999");
    let loc = r.headers()["location"].to_str().unwrap().to_string();

    // A chunk that skips ahead, and the same chunk again: 416 with where the upload stands.
    for range in [(20_000, 29_999), (0, 9_999)] {
        let (a, b) = (range.0 as usize, range.1 as usize + 1);
        let r = f.patch(&loc, Some(range), &data[a..b]).await;
        assert_eq!(r.status(), 416, "{range:?}");
        assert_eq!(r.headers()["range"], "0-9999");
        assert!(r.headers().contains_key("location"));
        assert_eq!(oci_error(r).await.1, "BLOB_UPLOAD_INVALID");
    }
    // A Content-Range whose length is not the body's.
    let r = f
        .patch(&loc, Some((10_000, 10_099)), &data[10_000..10_050])
        .await;
    assert_eq!(oci_error(r).await, (400, "SIZE_INVALID".into()));

    // The status of the upload, then the rest in order, streamed without Content-Range.
    let st = f.req(reqwest::Method::GET, &loc).send().await.unwrap();
    assert_eq!(st.status(), 204);
    assert_eq!(st.headers()["range"], "0-9999");
    let r = f
        .patch(&loc, Some((10_000, 19_999)), &data[10_000..20_000])
        .await;
    assert_eq!(r.status(), 202);
    let r = f.patch(&loc, None, &data[20_000..]).await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["range"], "0-29999");
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = f
        .req(reqwest::Method::PUT, &format!("{loc}{sep}digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = f
        .req(
            reqwest::Method::GET,
            &format!("/v2/local/team/app/blobs/{digest}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(&got.bytes().await.unwrap()[..], &data[..]);
    // The upload is over.
    assert_eq!(f.status(reqwest::Method::GET, &loc).await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_digest_leaves_nothing_and_a_cancelled_upload_is_gone() {
    let f = fixture(false).await;
    let data = random_bytes(unique_seed(), 20_000);
    let wrong = sha256(b"something else");
    let loc = f.start_upload("local/team/app").await;
    assert_eq!(f.patch(&loc, None, &data).await.status(), 202);
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = f
        .req(reqwest::Method::PUT, &format!("{loc}{sep}digest={wrong}"))
        .send()
        .await
        .unwrap();
    assert_eq!(oci_error(r).await, (400, "DIGEST_INVALID".into()));
    assert_eq!(f.head_blob("local/team/app", &wrong).await, 404);
    let right = sha256(&data);
    assert_eq!(
        f.head_blob("local/team/app", &right).await,
        404,
        "nothing of it was published"
    );
    assert_eq!(
        f.status(reqwest::Method::GET, &loc).await,
        404,
        "the upload is discarded"
    );
    // Monolithic with a wrong digest too.
    let r = f
        .req(
            reqwest::Method::POST,
            &format!("/v2/local/team/app/blobs/uploads/?digest={wrong}"),
        )
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(oci_error(r).await, (400, "DIGEST_INVALID".into()));

    // Cancel.
    let loc = f.start_upload("local/team/app").await;
    assert_eq!(f.patch(&loc, None, &data).await.status(), 202);
    assert_eq!(f.status(reqwest::Method::DELETE, &loc).await, 204);
    let r = f.req(reqwest::Method::GET, &loc).send().await.unwrap();
    assert_eq!(oci_error(r).await, (404, "BLOB_UPLOAD_UNKNOWN".into()));
    // An upload is bound to its repository.
    let loc = f.start_upload("local/team/app").await;
    let id = loc.rsplit('/').next().unwrap().to_string();
    let r = f
        .req(
            reqwest::Method::GET,
            &format!("/v2/local/team/other/blobs/uploads/{id}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(oci_error(r).await, (404, "BLOB_UPLOAD_UNKNOWN".into()));
    let r = f
        .req(
            reqwest::Method::GET,
            "/v2/local/team/app/blobs/uploads/not-an-id",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(oci_error(r).await, (404, "BLOB_UPLOAD_UNKNOWN".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_come_only_from_repositories_that_have_the_blob() {
    let f = fixture(false).await;
    let b = Blob::new(random_bytes(unique_seed(), 10_000));
    f.blob("local/base", &b).await;
    let mount = |from: &str| {
        format!(
            "/v2/local/derived/blobs/uploads/?mount={}&from={from}",
            b.digest
        )
    };
    let r = f
        .req(reqwest::Method::POST, &mount("local/base"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["location"],
        format!("/v2/local/derived/blobs/{}", b.digest).as_str()
    );
    assert_eq!(f.head_blob("local/derived", &b.digest).await, 200);
    // From a repository without it, or one that does not exist: an ordinary upload.
    for from in ["local/empty", "upstream.test/nothing/here", "no..valid"] {
        let r = f
            .req(
                reqwest::Method::POST,
                &mount(from).replace("derived", "third"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{from}");
        assert!(r.headers()["location"]
            .to_str()
            .unwrap()
            .contains("/blobs/uploads/"));
    }
    assert_eq!(f.head_blob("local/third", &b.digest).await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_are_validated_before_anything_is_written() {
    let f = fixture(false).await;
    let img = image(unique_seed());
    // Nothing of the image is there yet.
    let r = f
        .put_manifest("local/app", "v1", OCI_MANIFEST, &img.manifest)
        .await;
    assert_eq!(oci_error(r).await, (400, "MANIFEST_BLOB_UNKNOWN".into()));
    for b in img.blobs() {
        f.blob("local/app", b).await;
    }
    let wrong_digest = sha256(b"not the manifest");
    let r = f
        .put_manifest("local/app", &wrong_digest, OCI_MANIFEST, &img.manifest)
        .await;
    assert_eq!(oci_error(r).await, (400, "DIGEST_INVALID".into()));
    let r = f
        .put_manifest(
            "local/app",
            "v1",
            "application/vnd.docker.distribution.manifest.v2+json",
            &img.manifest,
        )
        .await;
    assert_eq!(
        oci_error(r).await,
        (400, "MANIFEST_INVALID".into()),
        "type mismatch"
    );
    let r = f
        .put_manifest("local/app", "v1", OCI_MANIFEST, b"{not json")
        .await;
    assert_eq!(oci_error(r).await, (400, "MANIFEST_INVALID".into()));
    // Over 4 MiB: refused on the announced length, before the body is read (so the request
    // is written by hand: a client still sending would see the connection close).
    let status = {
        use base64::Engine as _;
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", f.aw.port)).unwrap();
        let auth =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", WRITER.0, WRITER.1));
        write!(
            s,
            "PUT /v2/local/app/manifests/v1 HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {}\r\n\r\n",
            4 * 1024 * 1024 + 1
        )
        .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        String::from_utf8_lossy(&head[9..12]).to_string()
    };
    assert_eq!(status, "413");
    assert_eq!(
        f.status(reqwest::Method::GET, "/v2/local/app/manifests/v1")
            .await,
        404
    );

    // Now it goes in, by tag and by digest.
    let r = f
        .put_manifest("local/app", "v1", OCI_MANIFEST, &img.manifest)
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["docker-content-digest"], img.digest.as_str());
    assert_eq!(
        r.headers()["location"],
        format!("/v2/local/app/manifests/{}", img.digest).as_str()
    );
    let r = f
        .put_manifest("local/app", &img.digest, OCI_MANIFEST, &img.manifest)
        .await;
    assert_eq!(r.status(), 201);
    for reference in ["v1", img.digest.as_str()] {
        let got = f
            .req(
                reqwest::Method::GET,
                &format!("/v2/local/app/manifests/{reference}"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), 200);
        assert_eq!(got.headers()["content-type"], OCI_MANIFEST);
        assert_eq!(got.headers()["docker-content-digest"], img.digest.as_str());
        assert_eq!(&got.bytes().await.unwrap()[..], &img.manifest[..]);
    }
    // An index needs its manifests in the repository.
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": img.digest, "size": img.manifest.len(), "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": OCI_MANIFEST, "digest": sha256(b"absent"), "size": 10, "platform": {"os": "linux", "architecture": "arm64"}},
        ]
    }))
    .unwrap();
    let r = f
        .put_manifest(
            "local/app",
            "multi",
            "application/vnd.oci.image.index.v1+json",
            &index,
        )
        .await;
    assert_eq!(oci_error(r).await, (400, "MANIFEST_BLOB_UNKNOWN".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_tags_and_the_catalog_list_what_was_pushed() {
    let f = fixture(false).await;
    let img = image(unique_seed());
    f.image("local/app", "v1", &img).await;
    for t in ["v2", "v3", "latest"] {
        let r = f
            .put_manifest("local/app", t, OCI_MANIFEST, &img.manifest)
            .await;
        assert_eq!(r.status(), 201);
    }
    f.image("local/zeta/tool", "1", &image(unique_seed())).await;

    // An SBOM referring to the image.
    let empty = Blob::new(b"{}".to_vec());
    let sbom = Blob::new(b"{\"spdxVersion\":\"SPDX-2.3\"}".to_vec());
    f.blob("local/app", &empty).await;
    f.blob("local/app", &sbom).await;
    let artifact = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/spdx+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty.digest, "size": 2},
        "layers": [{"mediaType": "application/spdx+json", "digest": sbom.digest, "size": sbom.data.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": img.digest, "size": img.manifest.len()},
        "annotations": {"org.example": "x"},
    }))
    .unwrap();
    let artifact_digest = sha256(&artifact);
    let r = f
        .put_manifest("local/app", &artifact_digest, OCI_MANIFEST, &artifact)
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["oci-subject"], img.digest.as_str());

    let list = |q: &str| {
        let url = format!("/v2/local/app/referrers/{}{q}", img.digest);
        let req = f.req(reqwest::Method::GET, &url);
        async move { req.send().await.unwrap() }
    };
    let r = list("").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.oci.image.index.v1+json"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(v["manifests"][0]["digest"], artifact_digest.as_str());
    assert_eq!(v["manifests"][0]["artifactType"], "application/spdx+json");
    assert_eq!(v["manifests"][0]["annotations"]["org.example"], "x");
    let r = list("?artifactType=application/spdx+json").await;
    assert_eq!(r.headers()["oci-filters-applied"], "artifactType");
    let r = list("?artifactType=application/other").await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 0);
    // Nothing refers to the artifact: an empty index, never a 404.
    let r = f
        .req(
            reqwest::Method::GET,
            &format!("/v2/local/app/referrers/{artifact_digest}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Tags, paginated.
    let r = f
        .req(reqwest::Method::GET, "/v2/local/app/tags/list?n=2")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["link"],
        "</v2/local/app/tags/list?n=2&last=v1>; rel=\"next\""
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"name": "local/app", "tags": ["latest", "v1"]}));
    let r = f
        .req(reqwest::Method::GET, "/v2/local/app/tags/list?n=2&last=v1")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("link"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!(["v2", "v3"]));
    let r = f
        .req(reqwest::Method::GET, "/v2/local/nothing/tags/list")
        .send()
        .await
        .unwrap();
    assert_eq!(oci_error(r).await, (404, "NAME_UNKNOWN".into()));

    // The catalog: hosted repositories only.
    let r = f
        .req(reqwest::Method::GET, "/v2/_catalog")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"repositories": ["local/app", "local/zeta/tool"]}));
    let r = f
        .req(reqwest::Method::GET, "/v2/_catalog?n=1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["link"],
        "</v2/_catalog?n=1&last=local%2Fapp>; rel=\"next\""
    );
    let r = f
        .req(reqwest::Method::GET, "/v2/_catalog?n=1&last=local/app")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["repositories"], json!(["local/zeta/tool"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_are_refused_unless_enabled() {
    let f = fixture(false).await;
    let img = image(unique_seed());
    f.image("local/app", "v1", &img).await;
    for path in [
        "/v2/local/app/manifests/v1".to_string(),
        format!("/v2/local/app/manifests/{}", img.digest),
        format!("/v2/local/app/blobs/{}", img.layers[0].digest),
    ] {
        let r = f.req(reqwest::Method::DELETE, &path).send().await.unwrap();
        assert_eq!(oci_error(r).await, (405, "UNSUPPORTED".into()), "{path}");
    }
    assert_eq!(
        f.status(reqwest::Method::GET, "/v2/local/app/manifests/v1")
            .await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_remove_tags_manifests_and_blobs_and_gc_reclaims_them() {
    let mut f = fixture(true).await;
    let img = image(unique_seed());
    f.image("local/app", "v1", &img).await;
    let r = f
        .put_manifest("local/app", "v2", OCI_MANIFEST, &img.manifest)
        .await;
    assert_eq!(r.status(), 201);

    // A tag: the manifest stays.
    assert_eq!(
        f.status(reqwest::Method::DELETE, "/v2/local/app/manifests/v1")
            .await,
        202
    );
    assert_eq!(
        f.status(reqwest::Method::GET, "/v2/local/app/manifests/v1")
            .await,
        404
    );
    assert_eq!(
        f.status(reqwest::Method::DELETE, "/v2/local/app/manifests/v1")
            .await,
        404
    );
    let by_digest = format!("/v2/local/app/manifests/{}", img.digest);
    assert_eq!(f.status(reqwest::Method::GET, &by_digest).await, 200);
    // The manifest: and the tags that named it.
    assert_eq!(f.status(reqwest::Method::DELETE, &by_digest).await, 202);
    assert_eq!(f.status(reqwest::Method::GET, &by_digest).await, 404);
    assert_eq!(
        f.status(reqwest::Method::GET, "/v2/local/app/manifests/v2")
            .await,
        404
    );
    // A blob.
    let layer = format!("/v2/local/app/blobs/{}", img.layers[0].digest);
    assert_eq!(f.status(reqwest::Method::DELETE, &layer).await, 202);
    assert_eq!(f.status(reqwest::Method::HEAD, &layer).await, 404);

    // archway gc reclaims what nothing references any more (here: everything of the image).
    let cache = f.aw.cache_dir();
    let blob_file = |d: &str| {
        let hex = d.trim_start_matches("sha256:");
        cache.join(format!("blobs/sha256/{}/{hex}", &hex[..2]))
    };
    assert!(blob_file(&img.layers[1].digest).exists());
    let dir = f.aw.stop();
    let mut settings = std::mem::replace(&mut f.settings, Settings::single(&f.up.url()));
    settings.storage_extra = "gc_min_age = \"0s\"\n".into();
    let aw = Archway::start_in(dir, &settings).await;
    let out = std::process::Command::new(Archway::bin())
        .args(["gc", "--config"])
        .arg(&aw.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for b in img.blobs() {
        assert!(!blob_file(&b.digest).exists(), "{} reclaimed", b.digest);
    }
    assert!(!blob_file(&img.digest).exists(), "the manifest's bytes too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_keeps_every_hosted_image_whatever_the_limit() {
    let f = fixture(false).await;
    let img = image(unique_seed());
    f.image("local/app", "v1", &img).await;
    let out = std::process::Command::new(Archway::bin())
        .args(["gc", "--max-size", "1B", "--config"])
        .arg(&f.aw.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = f
        .req(
            reqwest::Method::GET,
            &format!("/v2/local/app/blobs/{}", img.layers[0].digest),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(&got.bytes().await.unwrap()[..], &img.layers[0].data[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_survives_a_restart() {
    let mut f = fixture(false).await;
    let data = random_bytes(unique_seed(), 50_000);
    let loc = f.start_upload("local/team/app").await;
    assert_eq!(
        f.patch(&loc, Some((0, 24_999)), &data[..25_000])
            .await
            .status(),
        202
    );
    let dir = f.aw.stop();
    f.aw = Archway::start_in(dir, &f.settings).await;
    // The same upload, on the new process (a new port: the path is what counts).
    let path = loc.trim_start_matches(|c| c != '/');
    let st = f.req(reqwest::Method::GET, path).send().await.unwrap();
    assert_eq!(st.status(), 204);
    assert_eq!(st.headers()["range"], "0-24999");
    assert_eq!(
        f.patch(path, Some((25_000, 49_999)), &data[25_000..])
            .await
            .status(),
        202
    );
    assert_eq!(f.finish_upload(path, &sha256(&data)).await, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_writers_push_and_upstreams_stay_read_only() {
    let f = fixture(false).await;
    let b = Blob::new(random_bytes(unique_seed(), 1000));
    let post = format!("/v2/local/app/blobs/uploads/?digest={}", b.digest);
    // Anonymous: 401 with a challenge; a reader: 403.
    let r = http()
        .post(f.url(&post))
        .body(b.data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let r = http()
        .post(f.url(&post))
        .basic_auth(READER.0, Some(READER.1))
        .body(b.data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(oci_error(r).await, (403, "DENIED".into()));
    let img = image(unique_seed());
    f.image("local/app", "v1", &img).await;
    let r = http()
        .put(f.url("/v2/local/app/manifests/v2"))
        .basic_auth(READER.0, Some(READER.1))
        .header("content-type", OCI_MANIFEST)
        .body(img.manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(oci_error(r).await, (403, "DENIED".into()));
    // A reader reads.
    let r = http()
        .get(f.url("/v2/local/app/manifests/v1"))
        .basic_auth(READER.0, Some(READER.1))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Hosted by one of its hosts (?ns=), as for upstreams.
    let r = http()
        .get(f.url("/v2/app/manifests/v1?ns=registry.example.com"))
        .basic_auth(READER.0, Some(READER.1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Writes under an upstream's name: still a read-only mirror.
    let r = f
        .req(
            reqwest::Method::POST,
            "/v2/upstream.test/team/app/blobs/uploads/",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(oci_error(r).await, (405, "UNSUPPORTED".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_started_with_ns_continues_with_it() {
    let f = fixture(false).await;
    let data = random_bytes(unique_seed(), 5000);
    let r = f
        .req(
            reqwest::Method::POST,
            "/v2/app/blobs/uploads/?ns=registry.example.com",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert!(loc.ends_with("?ns=registry.example.com"), "{loc}");
    assert_eq!(f.patch(&loc, None, &data).await.status(), 202);
    assert_eq!(f.finish_upload(&loc, &sha256(&data)).await, 201);
    assert_eq!(f.head_blob("local/app", &sha256(&data)).await, 200);
}
