//! Client authentication on the registry port with an htpasswd file (bcrypt), through real
//! skopeo, `podman login` and `docker login`.

use crate::clients::{podman, podman_env, Dockerd};
use crate::support::archway::{Archway, Settings};
use crate::support::images::{Image, Pusher};
use crate::support::registry::Upstream;
use crate::support::{htpasswd, http, oci_error, random_bytes, skopeo, unique_seed};

async fn setup(anonymous: bool) -> (Upstream, Archway) {
    let up = Upstream::start().await;
    let img = Image::new("linux/amd64", vec![random_bytes(unique_seed(), 1000)]);
    Pusher::new(&up.url(), None)
        .image("team/app", "v1", &img)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = htpasswd(dir.path(), "ci", "let-me-in");
    let aw = Archway::start(&Settings {
        extra: format!(
            "\n[auth]\nhtpasswd = \"{}\"\nanonymous = {anonymous}\n",
            htpasswd.display()
        ),
        ..Settings::single(&up.url())
    })
    .await;
    // The htpasswd file is read at start-up; the temp dir may go.
    drop(dir);
    (up, aw)
}

/// GETs `path` from archway, as user `ci` with `password` if given.
async fn get(aw: &Archway, path: &str, password: Option<&str>) -> reqwest::Response {
    let mut r = http().get(format!("{}{path}", aw.url()));
    if let Some(p) = password {
        r = r.basic_auth("ci", Some(p));
    }
    r.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_login_is_required_unless_anonymous_is_allowed() {
    let (_up, aw) = setup(false).await;
    let src = format!("{}/team/app:v1", aw.host());
    let dir = tempfile::tempdir().unwrap();
    let out = skopeo::copy_to_oci(&src, dir.path(), &["--src-creds", "ci:let-me-in"]);
    assert!(out.ok, "{}", out.stderr);
    let dir = tempfile::tempdir().unwrap();
    let out = skopeo::copy_to_oci(&src, dir.path(), &[]);
    assert!(!out.ok, "an anonymous pull got through");
    let out = skopeo::copy_to_oci(&src, dir.path(), &["--src-creds", "ci:wrong"]);
    assert!(!out.ok, "wrong credentials got through");

    let r = get(&aw, "/v2/", None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"archway\"");
    assert_eq!(oci_error(r).await, (401, "UNAUTHORIZED".into()));
    let r = get(&aw, "/v2/", Some("let-me-in")).await;
    assert_eq!(r.status(), 200);
    assert!(!aw.log_text().contains("let-me-in"));

    // Repeated failures from one address are throttled, even with the right password next.
    for _ in 0..10 {
        get(&aw, "/v2/", Some("guess")).await;
    }
    let r = get(&aw, "/v2/", Some("let-me-in")).await;
    assert_eq!(oci_error(r).await, (429, "TOOMANYREQUESTS".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_pulls_when_allowed_but_wrong_credentials_still_fail() {
    let (_up, aw) = setup(true).await;
    let dir = tempfile::tempdir().unwrap();
    let out = skopeo::copy_to_oci(&format!("{}/team/app:v1", aw.host()), dir.path(), &[]);
    assert!(out.ok, "{}", out.stderr);
    let r = get(&aw, "/v2/team/app/manifests/v1", Some("wrong")).await;
    assert_eq!(oci_error(r).await, (401, "UNAUTHORIZED".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_login_and_docker_login_then_pull() {
    let (_up, aw) = setup(false).await;
    let host = aw.host();
    let image = format!("{host}/team/app:v1");

    let dir = tempfile::tempdir().unwrap();
    let registries = dir.path().join("registries.conf");
    std::fs::write(
        &registries,
        format!("[[registry]]\nlocation = \"{host}\"\ninsecure = true\n"),
    )
    .unwrap();
    let mut env = podman_env(dir.path(), &registries);
    env.push((
        "REGISTRY_AUTH_FILE".into(),
        dir.path().join("auth.json").display().to_string(),
    ));
    let (ok, _, _) = podman(&env, &["pull", "-q", &image]);
    assert!(!ok, "podman pulled without logging in");
    let (ok, _, _) = podman(&env, &["login", "-u", "ci", "-p", "wrong", &host]);
    assert!(!ok, "podman login accepted a wrong password");
    let (ok, out, err) = podman(&env, &["login", "-u", "ci", "-p", "let-me-in", &host]);
    assert!(ok && out.contains("Login Succeeded"), "{out}{err}");
    let (ok, _, err) = podman(&env, &["pull", "-q", &image]);
    assert!(ok, "podman pull after login: {err}");

    // dockerd treats 127.0.0.0/8 registries as insecure: plain HTTP is fine.
    let docker = Dockerd::start(&host);
    let (ok, _, _) = docker.docker(&["pull", "-q", &image]);
    assert!(!ok, "docker pulled without logging in");
    let (ok, _, _) = docker.docker(&["login", "-u", "ci", "-p", "wrong", &host]);
    assert!(!ok, "docker login accepted a wrong password");
    let (ok, out, err) = docker.docker(&["login", "-u", "ci", "-p", "let-me-in", &host]);
    assert!(ok && out.contains("Login Succeeded"), "{out}{err}");
    let (ok, _, err) = docker.docker(&["pull", "-q", &image]);
    assert!(ok, "docker pull after login: {err}");
}
