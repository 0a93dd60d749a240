//! A real upstream: Debian's `docker-registry` (distribution 2.8) on a free loopback port with
//! its storage in a temp dir. Its access log is kept so tests can count upstream requests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{free_port, wait_ready};

pub struct Upstream {
    pub port: u16,
    pub dir: TempDir,
    pub log: PathBuf,
    child: Option<Child>,
    /// `user:password` when started with htpasswd auth.
    pub creds: Option<(String, String)>,
}

pub struct Options {
    pub htpasswd: Option<(String, String)>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        Upstream::start_with(Options { htpasswd: None }).await
    }

    pub async fn start_with(opts: Options) -> Upstream {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut up = Upstream {
            port,
            log: dir.path().join("registry.log"),
            dir,
            child: None,
            creds: opts.htpasswd.clone(),
        };
        if let Some((user, pass)) = &opts.htpasswd {
            let hash = bcrypt::hash(pass, 4).expect("bcrypt");
            std::fs::write(up.dir.path().join("htpasswd"), format!("{user}:{hash}\n"))
                .expect("write htpasswd");
        }
        up.spawn().await;
        up
    }

    async fn spawn(&mut self) {
        let root = self.dir.path().join("storage");
        let auth = if self.creds.is_some() {
            format!(
                "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                self.dir.path().join("htpasswd").display()
            )
        } else {
            String::new()
        };
        let cfg = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{}\n{auth}",
            root.display(),
            self.port
        );
        let cfg_path = self.dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg).expect("write registry config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("docker-registry must be installed (make test installs it)");
        self.child = Some(child);
        assert!(
            wait_ready(&format!("{}/v2/", self.url()), Duration::from_secs(20)).await,
            "docker-registry did not start; log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the registry (the upstream "goes down").
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            super::reap(&mut c);
        }
    }

    /// Starts it again on the same port and storage.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many access-log lines show `method path` (path without query), any status.
    pub fn count(&self, method: &str, path: &str) -> usize {
        let needle = format!("\"{method} {path} ");
        let needle_q = format!("\"{method} {path}?");
        self.log_text()
            .lines()
            .filter(|l| l.contains(&needle) || l.contains(&needle_q))
            .count()
    }

    pub fn blob_gets(&self, repo: &str, digest: &str) -> usize {
        self.count("GET", &format!("/v2/{repo}/blobs/{digest}"))
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}
