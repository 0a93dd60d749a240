//! TLS on the registry listener: clients verify archway's certificate against a test CA,
//! HTTP/2 is offered by ALPN, and SIGHUP swaps in a renewed certificate. skopeo and containerd
//! (with `ca` in hosts.toml) verify it.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::clients::Containerd;
use crate::support::archway::{Archway, Settings, UpstreamSpec};
use crate::support::images::{Image, Pusher};
use crate::support::registry::Upstream;
use crate::support::{random_bytes, skopeo, unique_seed};

/// A CA and a server certificate for 127.0.0.1/localhost signed by it, written into `dir` as
/// ca.crt, server.crt and server.key. Returns the CA certificate PEM.
pub fn issue(dir: &Path, name: &str) -> String {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    ca_cert.pem()
}

fn client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_verified_clients_h2_and_sighup_reload() {
    let up = Upstream::start().await;
    let seed = unique_seed();
    let img = Image::new(
        "linux/amd64",
        vec![random_bytes(seed, 1000), random_bytes(seed + 1, 700_000)],
    );
    Pusher::new(&up.url(), None)
        .image("secure/app", "v1", &img)
        .await;
    let certs = tempfile::tempdir().unwrap();
    let ca1 = issue(certs.path(), "first");
    let aw = Archway::start(&Settings {
        tls: Some((
            certs.path().join("server.crt"),
            certs.path().join("server.key"),
        )),
        admin: true,
        ..Settings::single(&up.url())
    })
    .await;

    // skopeo verifies the certificate against the CA in --src-cert-dir.
    let ca_dir = tempfile::tempdir().unwrap();
    std::fs::copy(certs.path().join("ca.crt"), ca_dir.path().join("ca.crt")).unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let dest = format!("oci:{}:latest", out_dir.path().display());
    let src = format!("docker://localhost:{}/secure/app:v1", aw.port);
    let out = skopeo::run(&[
        "copy",
        "--src-cert-dir",
        ca_dir.path().to_str().unwrap(),
        &src,
        &dest,
    ]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(skopeo::verify_oci_layout(out_dir.path()), 4);
    let out = skopeo::run(&["copy", &src, &dest]);
    assert!(!out.ok, "an unknown CA was accepted");

    // HTTP/2 by ALPN.
    let r = client(&ca1)
        .get(format!("https://localhost:{}/v2/", aw.port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);

    // A cached blob large enough to be mapped is encrypted from the map, over HTTP/2 and
    // HTTP/1.1: the socket beneath TLS sees only ciphertext and never uses sendfile.
    let big = &img.layers[1];
    let url = format!(
        "https://localhost:{}/v2/secure/app/blobs/{}",
        aw.port, big.digest
    );
    let h1 = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca1.as_bytes()).unwrap())
        .http1_only()
        .build()
        .unwrap();
    for c in [client(&ca1), h1] {
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap(), big.data);
    }
    assert_eq!(
        crate::support::metric(aw.admin(), "archway_sendfile_bytes_total").await,
        Some(0.0)
    );

    // Renew under a new CA and send SIGHUP: new connections get the new certificate.
    let ca2 = issue(certs.path(), "second");
    let pid = aw.pid().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let start = Instant::now();
    loop {
        // A fresh client per attempt: a fresh connection and handshake.
        if client(&ca2)
            .get(format!("https://localhost:{}/v2/", aw.port))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the renewed certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(client(&ca1)
        .get(format!("https://localhost:{}/v2/", aw.port))
        .send()
        .await
        .is_err());
    assert!(aw.log_text().contains("SIGHUP: configuration reloaded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_verifies_archway_against_the_ca_in_hosts_toml() {
    let up = Upstream::start().await;
    let img = Image::new("linux/arm64", vec![random_bytes(unique_seed(), 1000)]);
    Pusher::new(&up.url(), None)
        .image("secure/app", "v1", &img)
        .await;
    let certs = tempfile::tempdir().unwrap();
    issue(certs.path(), "containerd");
    let aw = Archway::start(&Settings {
        upstreams: vec![UpstreamSpec::new("hub", &up.url(), &["docker.io"], true)],
        tls: Some((
            certs.path().join("server.crt"),
            certs.path().join("server.key"),
        )),
        ..Settings::single(&up.url())
    })
    .await;
    let hosts = |dir: &Path, ca: Option<&Path>| {
        let ca = ca
            .map(|p| format!("  ca = \"{}\"\n", p.display()))
            .unwrap_or_default();
        std::fs::create_dir_all(dir.join("docker.io")).unwrap();
        std::fs::write(
            dir.join("docker.io").join("hosts.toml"),
            format!(
                "server = \"https://registry-1.docker.io\"\n\n[host.\"https://localhost:{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n{ca}",
                aw.port
            ),
        )
        .unwrap();
    };
    let c = Containerd::start();
    let pull = |dir: &Path, ns: &str| {
        c.ctr(&[
            "-n",
            ns,
            "images",
            "pull",
            "--hosts-dir",
            dir.to_str().unwrap(),
            "--platform",
            "linux/arm64",
            "docker.io/secure/app:v1",
        ])
    };

    let without = tempfile::tempdir().unwrap();
    hosts(without.path(), None);
    let (ok, _, err) = pull(without.path(), "untrusted");
    assert!(!ok, "pulled without trusting the CA");
    assert!(
        err.contains("x509: certificate signed by unknown authority"),
        "{err}"
    );

    let with = tempfile::tempdir().unwrap();
    hosts(with.path(), Some(&certs.path().join("ca.crt")));
    let (ok, _, err) = pull(with.path(), "trusted");
    assert!(ok, "ctr pull over TLS: {err}");
    assert_eq!(c.pulled_arch("trusted"), "arm64");
}
