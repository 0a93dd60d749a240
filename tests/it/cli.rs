//! The command line: `--version`, `check-config`, and start-up failures on bad config.

use std::process::Command;

use crate::support::archway::Archway;

fn archway(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(Archway::bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version() {
    let (code, out, _) = archway(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("archway "), "{out}");
}

#[test]
fn check_config_prints_the_routing_table() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ok.toml");
    std::fs::write(
        &cfg,
        r#"
[[upstream]]
name = "dockerhub"
url = "https://registry-1.docker.io"
hosts = ["docker.io"]
default = true
[[upstream]]
name = "quay"
url = "https://quay.io"
hosts = ["quay.io"]
"#,
    )
    .unwrap();
    let (code, out, err) = archway(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("dockerhub") && out.contains("(default)"),
        "{out}"
    );
    assert!(out.contains("quay.io"), "{out}");
    assert!(out.contains("library/"), "{out}");

    // The shipped config is valid too.
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/archway.toml");
    let (code, _, err) = archway(&["check-config", shipped]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn check_config_warns_when_signatures_would_name_no_real_registry() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let (code, _, err) = archway(&["signing-key", "generate", "--out", key.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let write = |hosts: &str| {
        let cfg = dir.path().join("signing.toml");
        std::fs::write(
            &cfg,
            format!(
                "[[upstream]]\nname = \"hub\"\nurl = \"http://127.0.0.1:1\"\n{hosts}default = true\n\
                 [[fallback]]\nrepository = \"hub/team/app\"\n[fallback.platforms]\n\"linux/s390x\" = \"hub/team/app:s390x-{{tag}}\"\n\
                 [signing]\nkey = \"{}\"\n",
                key.display()
            ),
        )
        .unwrap();
        let (code, _, err) = archway(&["check-config", cfg.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        err
    };
    let err = write("");
    assert!(
        err.contains("fallback hub/team/app: upstream hub has no `hosts`"),
        "{err}"
    );
    let err = write("hosts = [\"registry.example\"]\n");
    assert!(!err.contains("warning"), "{err}");
}

#[test]
fn bad_config_names_the_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        r#"
[cache]
tag_ttl = "soon"
[[upstream]]
name = "a"
url = "https://a.example"
hosts = ["docker.io"]
default = true
[[upstream]]
name = "b"
url = "not a url"
hosts = ["docker.io"]
default = true
"#,
    )
    .unwrap();
    let path = cfg.to_str().unwrap();
    for args in [vec!["check-config", path], vec!["serve", "--config", path]] {
        let (code, _, err) = archway(&args);
        assert_eq!(code, 2, "{args:?}");
        assert!(err.contains("bad.toml"), "{err}");
        assert!(err.contains("cache.tag_ttl: bad duration"), "{err}");
        assert!(err.contains("upstream[1].url"), "{err}");
        assert!(
            err.contains("upstream[1].hosts[0]") && err.contains("duplicate host"),
            "{err}"
        );
        assert!(err.contains("more than one default upstream"), "{err}");
    }
    std::fs::write(&cfg, "[server]\nlisten = \"127.0.0.1:0\"\ntypo = 1\n").unwrap();
    let (code, _, err) = archway(&["check-config", path]);
    assert_eq!(code, 2);
    assert!(
        err.contains("server.typo") && err.contains("unknown field"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    use crate::support::archway::Settings;
    use crate::support::images::{Image, Pusher};
    use crate::support::registry::Upstream;
    let up = Upstream::start().await;
    let img = Image::new(
        "linux/amd64",
        vec![crate::support::random_bytes(
            crate::support::unique_seed(),
            100,
        )],
    );
    Pusher::new(&up.url(), None)
        .image("logged/app", "v1", &img)
        .await;
    let aw = Archway::start(&Settings {
        json_logs: true,
        ..Settings::single(&up.url())
    })
    .await;
    let r = crate::support::http()
        .get(format!("{}/v2/logged/app/manifests/v1", aw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let lines: Vec<serde_json::Value> = aw
        .log_text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let serving = lines
        .iter()
        .find(|l| l["message"] == "archway is serving")
        .expect("the start-up line");
    assert_eq!(serving["listen"], format!("127.0.0.1:{}", aw.port));
    let access = lines
        .iter()
        .find(|l| l["target"] == "archway::access" && l["id"] == id.as_str())
        .expect("the access line of the request");
    assert_eq!(access["method"], "GET");
    assert_eq!(access["path"], "/v2/logged/app/manifests/v1");
    assert_eq!(access["status"], 200);
    assert_eq!(access["cache"], "upstream");
}
