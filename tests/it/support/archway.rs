//! The real `archway` binary, started with a generated config. It binds port 0 and the test
//! reads the port it bound from its start-up log line.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{port_after, wait_for_log};

pub struct Archway {
    pub port: u16,
    json_logs: bool,
    env: Vec<(String, String)>,
    /// The admin listener's port, when `Settings::admin` asked for one.
    pub admin_port: Option<u16>,
    pub tls: bool,
    pub dir: TempDir,
    pub config: PathBuf,
    /// This process's log (a directory reused for a restart gets a new one).
    pub log: PathBuf,
    child: Option<Child>,
}

/// One `[[upstream]]` table.
pub struct UpstreamSpec {
    pub name: String,
    pub url: String,
    pub hosts: Vec<String>,
    pub default: bool,
    pub creds: Option<(String, String)>,
    /// `ca_file`: a CA to trust for an HTTPS upstream.
    pub ca_file: Option<PathBuf>,
    /// More keys for this `[[upstream]]` table (`allow`, `min_remaining`, ...).
    pub extra: String,
}

impl UpstreamSpec {
    /// The default upstream, answering for Docker Hub's host names.
    pub fn hub(url: &str) -> UpstreamSpec {
        UpstreamSpec::new("hub", url, &["docker.io", "registry-1.docker.io"], true)
    }

    pub fn new(name: &str, url: &str, hosts: &[&str], default: bool) -> UpstreamSpec {
        UpstreamSpec {
            name: name.into(),
            url: url.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            default,
            creds: None,
            ca_file: None,
            extra: String::new(),
        }
    }
}

pub struct Settings {
    pub upstreams: Vec<UpstreamSpec>,
    pub tag_ttl: String,
    pub serve_stale: bool,
    /// `None`: a `file://` cache in the instance's temp dir.
    pub storage_url: Option<String>,
    /// Each upstream's `read_timeout`.
    pub read_timeout: String,
    /// `[server.tls]` certificate and key files.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// More keys for the `[storage]` table.
    pub storage_extra: String,
    /// An admin listener, on a port archway picks.
    pub admin: bool,
    /// `--log-format json`.
    pub json_logs: bool,
    /// `server.shutdown_grace`.
    pub shutdown_grace: Option<String>,
    /// More keys for the `[server]` table.
    pub server_extra: String,
    /// More environment for the process (AWS_*, AZURE_*, ...).
    pub env: Vec<(String, String)>,
    pub extra: String,
}

impl Settings {
    /// One default upstream named `up` answering to `docker.io`-less host `upstream.test`.
    pub fn single(url: &str) -> Settings {
        Settings {
            upstreams: vec![UpstreamSpec::new("up", url, &["upstream.test"], true)],
            tag_ttl: "1h".into(),
            serve_stale: true,
            storage_url: None,
            read_timeout: "5s".into(),
            tls: None,
            storage_extra: String::new(),
            admin: false,
            json_logs: false,
            shutdown_grace: None,
            server_extra: String::new(),
            env: Vec::new(),
            extra: String::new(),
        }
    }
}

/// The config file for `settings`, with both listeners on port 0.
pub fn render(settings: &Settings, dir: &Path) -> String {
    let storage = settings
        .storage_url
        .clone()
        .unwrap_or_else(|| format!("file://{}", dir.join("cache").display()));
    let tls = match &settings.tls {
        Some((cert, key)) => format!(
            "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ),
        None => String::new(),
    };
    let grace = match &settings.shutdown_grace {
        Some(g) => format!("shutdown_grace = \"{g}\"\n"),
        None => String::new(),
    };
    let mut s = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{grace}{}\n{tls}\n[storage]\nurl = \"{storage}\"\nspool_dir = \"{}\"\n{}\n[cache]\ntag_ttl = \"{}\"\nserve_stale = {}\n\n",
        settings.server_extra,
        dir.join("spool").display(),
        settings.storage_extra,
        settings.tag_ttl,
        settings.serve_stale
    );
    for (i, u) in settings.upstreams.iter().enumerate() {
        s.push_str(&format!(
            "[[upstream]]\nname = \"{}\"\nurl = \"{}\"\nhosts = [{}]\ndefault = {}\nconnect_timeout = \"2s\"\nread_timeout = \"{}\"\n",
            u.name,
            u.url,
            u.hosts
                .iter()
                .map(|h| format!("\"{h}\""))
                .collect::<Vec<_>>()
                .join(", "),
            u.default,
            settings.read_timeout
        ));
        if let Some(ca) = &u.ca_file {
            s.push_str(&format!("ca_file = \"{}\"\n", ca.display()));
        }
        if let Some((user, pass)) = &u.creds {
            let pw = dir.join(format!("password-{i}"));
            std::fs::write(&pw, format!("{pass}\n")).expect("write password");
            s.push_str(&format!(
                "username = \"{user}\"\npassword_file = \"{}\"\n",
                pw.display()
            ));
        }
        s.push_str(&u.extra);
        s.push('\n');
    }
    if settings.admin {
        s.push_str("[admin]\nlisten = \"127.0.0.1:0\"\n\n");
    }
    s.push_str(&settings.extra);
    s
}

impl Archway {
    pub fn bin() -> &'static str {
        env!("CARGO_BIN_EXE_archway")
    }

    pub async fn start(settings: &Settings) -> Archway {
        let dir = tempfile::tempdir().expect("tempdir");
        Archway::start_in(dir, settings).await
    }

    /// Sends SIGTERM and returns at once.
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Kills the process with SIGKILL (no shutdown of any kind) and reaps it.
    pub fn sigkill(&mut self) {
        self.signal("KILL");
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    fn signal(&self, name: &str) {
        let pid = self.pid().expect("running").to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{name} {pid}");
    }

    /// Waits for the process to exit; whether it exited cleanly.
    pub fn wait_exit(&mut self) -> bool {
        let mut c = self.child.take().expect("running");
        c.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// Waits until the log has a line containing `needle` (an event archway reports).
    pub async fn wait_log(&self, needle: &str) {
        let start = std::time::Instant::now();
        while !self.log_text().contains(needle) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no {needle:?} in the log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts on an existing directory (to restart with the same cache).
    pub async fn start_in(dir: TempDir, settings: &Settings) -> Archway {
        let config = dir.path().join("archway.toml");
        std::fs::write(&config, render(settings, dir.path())).expect("write config");
        let mut a = Archway {
            port: 0,
            admin_port: None,
            json_logs: settings.json_logs,
            env: settings.env.clone(),
            tls: settings.tls.is_some(),
            log: (0..)
                .map(|n| dir.path().join(format!("archway-{n}.log")))
                .find(|p| !p.exists())
                .expect("a free log name"),
            config,
            dir,
            child: None,
        };
        a.spawn().await;
        a
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let format = if self.json_logs { "json" } else { "text" };
        let child = Command::new(Archway::bin())
            .args(["--log-format", format, "serve", "--config"])
            .arg(&self.config)
            .env("ARCHWAY_LOG", "info,archway=debug")
            .envs(self.env.iter().cloned())
            .stdout(log.try_clone().expect("fd"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn archway");
        let mut child = child;
        // Printed once both listeners are bound: from then on connections queue.
        let (port, admin) = wait_for_log(&self.log, &mut child, Duration::from_secs(20), |l| {
            if !l.contains("archway is serving") {
                return None;
            }
            // Text: `listen=127.0.0.1:PORT`; JSON: `"listen":"127.0.0.1:PORT"`.
            let clean = strip_colours(l).replace("\":\"", "=");
            Some((
                port_after(&clean, "listen=127.0.0.1:")?,
                port_after(&clean, "admin=127.0.0.1:"),
            ))
        })
        .await;
        self.port = port;
        self.admin_port = admin;
        self.child = Some(child);
    }

    /// The admin listener's port; the settings must have asked for one.
    pub fn admin(&self) -> u16 {
        self.admin_port.expect("started with Settings::admin")
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The log, without terminal colour codes.
    pub fn log_text(&self) -> String {
        strip_colours(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// The `cache=` outcome of each access-log line for `path`, in order.
    pub fn access_outcomes(&self, path: &str) -> Vec<String> {
        let needle = format!(" path={path} ");
        self.log_text()
            .lines()
            .filter(|l| l.contains("archway::access") && l.contains(&needle))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("cache="))
                    .map(str::to_string)
            })
            .collect()
    }

    /// Replaces the config file (for a reload).
    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).expect("write config");
    }

    /// Asks the process to reload its config.
    pub fn sighup(&self) {
        self.signal("HUP");
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        c.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// Stops the process as an operator restarts it (SIGTERM: fills finish and publish; a
    /// blob's readers get their last byte before its file is flushed and renamed into place,
    /// so a SIGKILL right after a pull may lose that blob) and hands back its directory
    /// (cache included) for a restart. SIGKILL if it has not exited after 30 s.
    pub fn stop(mut self) -> TempDir {
        if self.child.is_some() {
            self.sigterm();
        }
        if let Some(c) = self.child.as_mut() {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while matches!(c.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill();
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            super::reap(&mut c);
        }
    }
}

impl Drop for Archway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `text` without terminal colour codes (CSI sequences: ESC [ params final-byte).
fn strip_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for n in chars.by_ref() {
                if n.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
