//! A real S3-speaking server for tests: moto_server (PyPI `moto[server]`), which
//! `scripts/install-test-deps.sh` installs, run by `tests/it/support/moto_atomic.py` so that its
//! conditional writes are decided atomically, as S3 decides them (moto checks a precondition
//! and writes with nothing held between, so two racing writers can both win).
//! State is in memory and dies with the process. It binds port 0 and prints the port it bound.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{http, port_after, wait_for_log};

pub struct S3 {
    pub port: u16,
    child: Child,
    /// The secret key file archway reads, and moto's output.
    secrets: tempfile::TempDir,
}

/// The Python that has moto (the test tools' venv, else the system's).
fn moto_python() -> String {
    super::test_tool("venv/bin/python", "python3")
}

const MOTO_ATOMIC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/it/support/moto_atomic.py"
);

impl S3 {
    /// Starts moto and creates `bucket`.
    pub async fn start(bucket: &str) -> S3 {
        let secrets = tempfile::tempdir().expect("tempdir");
        std::fs::write(secrets.path().join("secret"), "test-secret\n").expect("secret");
        let out = secrets.path().join("moto.log");
        let log = std::fs::File::create(&out).expect("moto log");
        let mut child = Command::new(moto_python())
            .args([MOTO_ATOMIC, "-H", "127.0.0.1", "-p", "0"])
            .stdout(log.try_clone().expect("fd"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("moto must be installed (make test installs it)");
        // Werkzeug: " * Running on http://127.0.0.1:35089"
        let port = wait_for_log(&out, &mut child, Duration::from_secs(30), |l| {
            port_after(l, "Running on http://127.0.0.1:")
        })
        .await;
        let s3 = S3 {
            port,
            child,
            secrets,
        };
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

    /// The environment `object_store` reads instead of `[storage.s3]`.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", self.url()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test-secret".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Bytes stored in `bucket` under `prefix`.
    pub async fn total_size(&self, bucket: &str, prefix: &str) -> u64 {
        let body = self
            .get(bucket, &format!("list-type=2&prefix={prefix}"))
            .await;
        elements(&body, "Size")
            .iter()
            .filter_map(|s| s.parse::<u64>().ok())
            .sum()
    }

    /// Multipart uploads started in `bucket` and neither completed nor aborted (their keys:
    /// each `<Upload>` names one, and the listing has no other `<Key>`).
    pub async fn pending_uploads(&self, bucket: &str) -> Vec<String> {
        elements(&self.get(bucket, "uploads").await, "Key")
    }

    /// Keys in `bucket` under `prefix`, via the S3 list API.
    pub async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let body = self
            .get(bucket, &format!("list-type=2&prefix={prefix}"))
            .await;
        elements(&body, "Key")
    }

    /// A bucket-level GET (a listing): its XML.
    async fn get(&self, bucket: &str, query: &str) -> String {
        http()
            .get(format!("{}/{bucket}?{query}", self.url()))
            .send()
            .await
            .expect("list")
            .text()
            .await
            .expect("list body")
    }
}

/// The text of every `<name>` element of an XML answer.
fn elements(xml: &str, name: &str) -> Vec<String> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|s| s.split(&close).next())
        .map(str::to_string)
        .collect()
}

impl Drop for S3 {
    fn drop(&mut self) {
        super::reap(&mut self.child);
    }
}
