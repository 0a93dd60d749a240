//! A real Azure Blob Storage server for tests: Azurite (npm `azurite`), which
//! `scripts/install-test-deps.sh` installs. It keeps its data in a temp dir of its own, binds
//! port 0 and prints the port it bound.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use super::{http, port_after, wait_for_log};

/// Azurite's well-known development account.
pub const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const VERSION: &str = "2021-08-06";

pub struct Azurite {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

fn binary() -> String {
    super::test_tool("azurite/node_modules/.bin/azurite-blob", "azurite-blob")
}

impl Azurite {
    /// Starts Azurite's blob service and creates `container`.
    pub async fn start(container: &str) -> Azurite {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("azurite.log");
        let log = std::fs::File::create(&out).expect("azurite log");
        // --disableTelemetry: Azurite otherwise tries to reach Microsoft's telemetry hosts.
        let mut child = Command::new(binary())
            .args(["--blobHost", "127.0.0.1", "--blobPort", "0"])
            .arg("--location")
            .arg(dir.path().join("data"))
            .args(["--silent", "--skipApiVersionCheck", "--disableTelemetry"])
            .stdout(log.try_clone().expect("fd"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("azurite-blob must be installed (make test installs it)");
        let port = wait_for_log(&out, &mut child, Duration::from_secs(30), |l| {
            port_after(l, "successfully listens on http://127.0.0.1:")
        })
        .await;
        std::fs::write(dir.path().join("key"), format!("{KEY}\n")).expect("key");
        let az = Azurite { port, child, dir };
        let status = az
            .signed("PUT", &format!("/{container}"), "restype=container")
            .await;
        assert_eq!(status, 201, "create container {container}");
        az
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The storage settings for archway's config (after `[storage] url = "az://..."`).
    pub fn storage_toml(&self) -> String {
        format!(
            "[storage.azure]\naccount = \"{ACCOUNT}\"\naccess_key_file = \"{}\"\nendpoint = \"{}/{ACCOUNT}\"\nallow_http = true\n",
            self.dir.path().join("key").display(),
            self.url()
        )
    }

    /// The environment `object_store` reads instead of `[storage.azure]`.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT.to_string()),
            ("AZURE_STORAGE_ACCOUNT_KEY", KEY.to_string()),
            (
                "AZURE_STORAGE_ENDPOINT",
                format!("{}/{ACCOUNT}", self.url()),
            ),
            ("AZURE_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Blobs in `container` that have staged blocks no commit made visible.
    pub async fn uncommitted(&self, container: &str) -> Vec<String> {
        let all = self
            .signed_text(
                "GET",
                &format!("/{container}"),
                "comp=list&include=uncommittedblobs&restype=container",
            )
            .await;
        let committed = self.keys(container, "").await;
        names(&all)
            .into_iter()
            .filter(|n| !committed.contains(n))
            .collect()
    }

    /// Blob names in `container` under `prefix`.
    pub async fn keys(&self, container: &str, prefix: &str) -> Vec<String> {
        let body = self
            .signed_text(
                "GET",
                &format!("/{container}"),
                &format!("comp=list&prefix={prefix}&restype=container"),
            )
            .await;
        names(&body)
    }

    /// Stops the server (its data stays on disk for the test's lifetime).
    pub fn stop(&mut self) {
        super::reap(&mut self.child);
    }

    async fn signed(&self, method: &str, path: &str, query: &str) -> u16 {
        self.request(method, path, query).await.status().as_u16()
    }

    async fn signed_text(&self, method: &str, path: &str, query: &str) -> String {
        self.request(method, path, query)
            .await
            .text()
            .await
            .expect("body")
    }

    /// A request signed with the account's shared key, as the Azure SDKs sign them.
    async fn request(&self, method: &str, path: &str, query: &str) -> reqwest::Response {
        let date = http_date(SystemTime::now());
        let mut resource = format!("/{ACCOUNT}/{ACCOUNT}{path}");
        let mut params: Vec<(&str, &str)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once('='))
            .collect();
        params.sort();
        for (k, v) in &params {
            resource.push_str(&format!("\n{k}:{v}"));
        }
        let to_sign = format!(
            "{method}\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{VERSION}\n{resource}"
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(KEY)
            .expect("key");
        let sig =
            base64::engine::general_purpose::STANDARD.encode(hmac_sha256(&key, to_sign.as_bytes()));
        let url = format!("{}/{ACCOUNT}{path}?{query}", self.url());
        http()
            .request(method.parse().expect("method"), url)
            .header("x-ms-date", date)
            .header("x-ms-version", VERSION)
            .header("authorization", format!("SharedKey {ACCOUNT}:{sig}"))
            .send()
            .await
            .expect("azurite request")
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `<Name>`s of a List Blobs answer.
fn names(body: &str) -> Vec<String> {
    body.split("<Name>")
        .skip(1)
        .filter_map(|s| s.split("</Name>").next())
        .map(str::to_string)
        .collect()
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// RFC 1123 date, as HTTP and Azure's x-ms-date want it.
fn http_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = archway::clock::civil_from_days(days as i64);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!(
        "{weekday}, {day:02} {mon} {year} {:02}:{:02}:{:02} GMT",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[test]
fn http_dates() {
    assert_eq!(
        http_date(UNIX_EPOCH + Duration::from_secs(1_796_000_000)),
        "Mon, 30 Nov 2026 00:53:20 GMT"
    );
    assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
}
