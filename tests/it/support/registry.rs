//! A real upstream: Debian's `docker-registry` (distribution 2.8) on loopback, with its storage
//! in a temp dir. It binds port 0 and logs the port it bound; its access log is kept so tests
//! can count upstream requests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{port_after, wait_for_log};

pub struct Upstream {
    pub port: u16,
    pub dir: TempDir,
    /// One log per start, in order.
    logs: Vec<PathBuf>,
    child: Option<Child>,
    /// `user:password` when started with htpasswd auth.
    pub creds: Option<(String, String)>,
    /// PEM certificate and key when it serves TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

#[derive(Default)]
pub struct Options {
    pub htpasswd: Option<(String, String)>,
    /// Serve HTTPS with this certificate and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        Upstream::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Upstream {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut up = Upstream {
            port: 0,
            logs: Vec::new(),
            dir,
            child: None,
            creds: opts.htpasswd.clone(),
            tls: opts.tls.clone(),
        };
        if let Some((user, pass)) = &opts.htpasswd {
            let hash = bcrypt::hash(pass, 4).expect("bcrypt");
            std::fs::write(up.dir.path().join("htpasswd"), format!("{user}:{hash}\n"))
                .expect("write htpasswd");
        }
        up.spawn().await;
        up
    }

    /// Starts the registry on `self.port` (0 the first time: the registry picks, and logs
    /// what it bound).
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
        let tls = match &self.tls {
            Some((cert, key)) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        let cfg = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{}\n{tls}{auth}",
            root.display(),
            self.port
        );
        let cfg_path = self.dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg).expect("write registry config");
        // A log per start: the port is read from this start's line.
        let path = self
            .dir
            .path()
            .join(format!("registry-{}.log", self.logs.len()));
        let log = std::fs::File::create(&path).expect("registry log");
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("docker-registry must be installed (make test installs it)");
        let port = wait_for_log(&path, &mut child, Duration::from_secs(20), |l| {
            port_after(l, "msg=\"listening on 127.0.0.1:")
        })
        .await;
        assert!(
            self.port == 0 || self.port == port,
            "restarted on another port"
        );
        self.port = port;
        self.logs.push(path);
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
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

    /// Starts it again on the same port and storage. The port was free a moment ago; should
    /// another process take it meanwhile, the registry exits and this fails, saying so.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// Everything it logged, every start.
    pub fn log_text(&self) -> String {
        self.logs
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
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
