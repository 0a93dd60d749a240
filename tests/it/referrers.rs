//! The OCI 1.1 referrers API through archway: from the referrers tag schema on a registry
//! without the API (distribution 2.8, what cosign v3 and oras write there), and from an
//! upstream's own API (an in-process fake: no installable registry here serves it), with
//! the artifactType filter, empty answers, and everything served with the upstream gone.

use serde_json::{json, Value};

use crate::support::archway::{Archway, Settings};
use crate::support::fake::{Fake, Reply};
use crate::support::images::{Blob, Image, Pusher, OCI_INDEX, OCI_MANIFEST};
use crate::support::registry::Upstream;
use crate::support::{http, oci_error, random_bytes, unique_seed, wait_metric};

const SBOM: &str = "application/spdx+json";
const ATTESTATION: &str = "application/vnd.in-toto+json";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// An artifact manifest of `artifact_type` that refers to `subject`, with one layer.
fn artifact(subject: &Image, artifact_type: &str, layer: &Blob) -> Vec<u8> {
    let empty = Blob::new(b"{}".to_vec());
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY, "digest": empty.digest, "size": 2},
        "layers": [{"mediaType": artifact_type, "digest": layer.digest, "size": layer.data.len()}],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.manifest.len()},
        "annotations": {"org.opencontainers.image.created": "2026-12-01T00:00:00Z"},
    }))
    .unwrap()
}

/// The descriptor a referrers index lists for `manifest`.
fn descriptor(manifest: &[u8], artifact_type: &str) -> Value {
    json!({
        "mediaType": OCI_MANIFEST,
        "digest": crate::support::images::sha256(manifest),
        "size": manifest.len(),
        "artifactType": artifact_type,
        "annotations": {"org.opencontainers.image.created": "2026-12-01T00:00:00Z"},
    })
}

async fn referrers(
    aw: &Archway,
    repo: &str,
    digest: &str,
    query: &str,
) -> (u16, Option<String>, Vec<Value>) {
    let r = http()
        .get(format!("{}/v2/{repo}/referrers/{digest}{query}", aw.url()))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_eq!(r.headers()["content-type"], OCI_INDEX);
    let filters = r
        .headers()
        .get("oci-filters-applied")
        .map(|v| v.to_str().unwrap().to_string());
    let index: Value = r.json().await.unwrap();
    assert_eq!(index["schemaVersion"], 2);
    let manifests = index["manifests"].as_array().expect("manifests").clone();
    (status, filters, manifests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_from_the_tag_schema_survive_the_upstream() {
    let mut up = Upstream::start().await;
    let push = Pusher::new(&up.url(), None);
    let img = Image::new("linux/amd64", vec![random_bytes(unique_seed(), 2000)]);
    push.image("team/app", "v1", &img).await;
    let (sbom_blob, att_blob) = (
        Blob::new(random_bytes(unique_seed(), 500)),
        Blob::new(random_bytes(unique_seed(), 300)),
    );
    push.blob("team/app", &Blob::new(b"{}".to_vec())).await;
    push.blob("team/app", &sbom_blob).await;
    push.blob("team/app", &att_blob).await;
    let sbom = artifact(&img, SBOM, &sbom_blob);
    let att = artifact(&img, ATTESTATION, &att_blob);
    let (sbom_d, att_d) = (
        crate::support::images::sha256(&sbom),
        crate::support::images::sha256(&att),
    );
    push.manifest("team/app", &sbom_d, OCI_MANIFEST, &sbom)
        .await;
    push.manifest("team/app", &att_d, OCI_MANIFEST, &att).await;
    // The tag schema: an index at sha256-<hex of the subject>.
    let tag = format!("sha256-{}", img.digest.trim_start_matches("sha256:"));
    let schema = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [descriptor(&sbom, SBOM), descriptor(&att, ATTESTATION)],
    }))
    .unwrap();
    push.manifest("team/app", &tag, OCI_INDEX, &schema).await;
    let aw = Archway::start(&Settings {
        admin: true,
        ..Settings::single(&up.url())
    })
    .await;

    let (status, filters, listed) = referrers(&aw, "team/app", &img.digest, "").await;
    assert_eq!((status, filters), (200, None));
    assert_eq!(
        listed,
        [descriptor(&sbom, SBOM), descriptor(&att, ATTESTATION)]
    );
    let (_, filters, listed) = referrers(
        &aw,
        "team/app",
        &img.digest,
        "?artifactType=application%2Fspdx%2Bjson",
    )
    .await;
    assert_eq!(filters.as_deref(), Some("artifactType"));
    assert_eq!(listed, [descriptor(&sbom, SBOM)]);
    // Nothing refers to the SBOM itself: 200 and an empty index, not 404.
    let (status, _, listed) = referrers(&aw, "team/app", &sbom_d, "").await;
    assert_eq!((status, listed.len()), (200, 0));
    let r = http()
        .get(format!("{}/v2/team/app/referrers/sha256:nope", aw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(oci_error(r).await, (400, "DIGEST_INVALID".into()));
    assert!(
        wait_metric(
            aw.admin(),
            "archway_referrers_requests_total{source=\"tag_schema\"}",
            1.0,
            std::time::Duration::from_secs(10)
        )
        .await
    );

    // A verifier fetches what is listed; then the upstream goes away.
    let get = |path: String| http().get(format!("{}{path}", aw.url())).send();
    for (m, blob) in [(&sbom, &sbom_blob), (&att, &att_blob)] {
        let d = crate::support::images::sha256(m);
        assert_eq!(
            get(format!("/v2/team/app/manifests/{d}"))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap(),
            *m
        );
        assert_eq!(
            get(format!("/v2/team/app/blobs/{}", blob.digest))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap(),
            blob.data
        );
    }
    up.stop();
    let (status, _, listed) = referrers(&aw, "team/app", &img.digest, "").await;
    assert_eq!(
        (status, listed.len()),
        (200, 2),
        "listed with the upstream stopped"
    );
    for (m, blob) in [(&sbom, &sbom_blob), (&att, &att_blob)] {
        let d = crate::support::images::sha256(m);
        let r = get(format!("/v2/team/app/manifests/{d}")).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap(), *m, "byte-identical");
        let r = get(format!("/v2/team/app/blobs/{}", blob.digest))
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap(), blob.data);
    }
    // And after a restart, from the store.
    let aw = Archway::start_in(aw.stop(), &Settings::single(&up.url())).await;
    let (status, _, listed) = referrers(&aw, "team/app", &img.digest, "").await;
    assert_eq!(
        (status, listed.len()),
        (200, 2),
        "after a restart, upstream down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_referrers_api_is_followed_page_by_page() {
    let fake = Fake::start().await;
    let img = Image::new("linux/amd64", vec![random_bytes(unique_seed(), 100)]);
    let page = |d: Vec<Value>| Reply::Ok {
        content_type: OCI_INDEX.into(),
        headers: vec![],
        body: serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": d}),
        )
        .unwrap(),
    };
    let (one, two) = (
        artifact(&img, SBOM, &Blob::new(b"sbom".to_vec())),
        artifact(&img, ATTESTATION, &Blob::new(b"att".to_vec())),
    );
    let path = format!("/v2/api/app/referrers/{}", img.digest);
    let (first, second) = (descriptor(&one, SBOM), descriptor(&two, ATTESTATION));
    let next = format!("{path}?n=1&last=x");
    let (p, f, s, n) = (path.clone(), first.clone(), second.clone(), next.clone());
    fake.handler(move |req| {
        if req.uri().path() != p {
            return None;
        }
        Some(if req.uri().query().is_some() {
            page(vec![s.clone()])
        } else {
            let mut r = page(vec![f.clone()]);
            if let Reply::Ok { headers, .. } = &mut r {
                headers.push(("link".into(), format!("<{n}>; rel=\"next\"")));
            }
            r
        })
    });
    for (m, _) in [(&one, SBOM), (&two, ATTESTATION)] {
        fake.route(
            &format!(
                "/v2/api/app/manifests/{}",
                crate::support::images::sha256(m)
            ),
            Reply::Ok {
                content_type: OCI_MANIFEST.into(),
                headers: vec![],
                body: m.clone(),
            },
        );
    }
    let aw = Archway::start(&Settings {
        admin: true,
        ..Settings::single(&fake.url())
    })
    .await;
    let (status, _, listed) = referrers(&aw, "api/app", &img.digest, "").await;
    assert_eq!(status, 200);
    assert_eq!(listed, [first, second], "both pages, in order");
    assert_eq!(fake.count("GET", &path), 2);
    assert_eq!(
        fake.count(
            "GET",
            &format!(
                "/v2/api/app/manifests/sha256-{}",
                img.digest.trim_start_matches("sha256:")
            )
        ),
        0,
        "no tag schema when the API answers"
    );
    assert!(
        wait_metric(
            aw.admin(),
            "archway_referrers_requests_total{source=\"upstream_api\"}",
            1.0,
            std::time::Duration::from_secs(10)
        )
        .await
    );
}
