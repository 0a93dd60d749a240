//! A real S3-speaking server for tests: moto_server (PyPI `moto[server]`), which
//! `scripts/install-test-deps.sh` installs. State is in memory and dies with the process.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, http, wait_ready};

pub struct S3 {
    pub port: u16,
    child: Child,
    secrets: tempfile::TempDir,
}

fn moto_binary() -> String {
    super::test_tool("venv/bin/moto_server", "moto_server")
}

impl S3 {
    /// Starts moto and creates `bucket`.
    pub async fn start(bucket: &str) -> S3 {
        let port = free_port();
        let child = Command::new(moto_binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("moto_server must be installed (make test installs it)");
        let secrets = tempfile::tempdir().expect("tempdir");
        std::fs::write(secrets.path().join("secret"), "test-secret\n").expect("secret");
        let s3 = S3 {
            port,
            child,
            secrets,
        };
        assert!(
            wait_ready(&s3.url(), Duration::from_secs(30)).await,
            "moto_server did not start"
        );
        let r = http()
            .put(format!("{}/{bucket}", s3.url()))
            .send()
            .await
            .expect("create bucket");
        assert!(r.status().is_success(), "create bucket: {}", r.status());
        s3
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The storage settings for archway's config.
    pub fn storage_toml(&self) -> String {
        format!(
            "[storage.s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\nvirtual_hosted_style = false\naccess_key_id = \"test\"\nsecret_access_key_file = \"{}\"\n",
            self.url(),
            self.secrets.path().join("secret").display()
        )
    }

    /// Keys in `bucket` under `prefix`, via the S3 list API.
    pub async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let body = http()
            .get(format!(
                "{}/{bucket}?list-type=2&prefix={prefix}",
                self.url()
            ))
            .send()
            .await
            .expect("list")
            .text()
            .await
            .expect("list body");
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        super::reap(&mut self.child);
    }
}
