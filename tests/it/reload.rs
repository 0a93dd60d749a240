//! SIGHUP reloads the whole config (upstreams, auth, ...) without dropping connections; a bad
//! new config is refused and the running one kept.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use base64::Engine as _;

use crate::support::archway::{render, Archway, Settings, UpstreamSpec};
use crate::support::images::{Image, Pusher, OCI_INDEX, OCI_MANIFEST};
use crate::support::registry::Upstream;
use crate::support::{random_bytes, unique_seed, wait_metric};

/// One HTTP/1.1 connection, kept open across requests.
struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Conn {
            reader: BufReader::new(s),
        }
    }

    /// GETs a manifest on this connection; the status. Panics if the server closed it.
    fn get(&mut self, path: &str, auth: Option<&str>) -> u16 {
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        write!(
            self.reader.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {OCI_MANIFEST}, {OCI_INDEX}\r\n{auth}\r\n"
        )
        .expect("the connection is still open");
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).expect("response");
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("connection closed: {status_line:?}"));
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("header");
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body).expect("body");
        status
    }
}

async fn setup() -> (Upstream, Upstream, Settings, Archway, u16) {
    let one = Upstream::start().await;
    let two = Upstream::start().await;
    let seed = unique_seed();
    Pusher::new(&one.url(), None)
        .image(
            "team/app",
            "v1",
            &Image::new("linux/amd64", vec![random_bytes(seed, 1000)]),
        )
        .await;
    Pusher::new(&two.url(), None)
        .image(
            "other/app",
            "v1",
            &Image::new("linux/amd64", vec![random_bytes(seed + 1, 1000)]),
        )
        .await;
    let settings = Settings {
        admin: true,
        ..Settings::single(&one.url())
    };
    let aw = Archway::start(&settings).await;
    let admin = aw.admin();
    (one, two, settings, aw, admin)
}

const RELOADED: &str = "archway_config_reloads_total{outcome=\"ok\"}";
const REFUSED: &str = "archway_config_reloads_total{outcome=\"error\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_config_to_open_connections() {
    let (_one, two, mut settings, aw, admin) = setup().await;
    let mut conn = Conn::open(aw.port);
    assert_eq!(conn.get("/v2/team/app/manifests/v1", None), 200);
    // No upstream is called "second" yet: the default upstream gets the whole name.
    assert_eq!(conn.get("/v2/second/other/app/manifests/v1", None), 404);

    // The new config adds an upstream and requires logins.
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = crate::support::htpasswd(dir.path(), "ci", "let-me-in");
    settings.upstreams.push(UpstreamSpec::new(
        "second",
        &two.url(),
        &["second.test"],
        false,
    ));
    settings.extra.push_str(&format!(
        "\n[auth]\nhtpasswd = \"{}\"\n",
        htpasswd.display()
    ));
    aw.write_config(&render(&settings, aw.dir.path()));
    aw.sighup();
    assert!(
        wait_metric(admin, RELOADED, 1.0, Duration::from_secs(20)).await,
        "{}",
        aw.log_text()
    );

    // Same connection, new config.
    let creds = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("ci:let-me-in")
    );
    assert_eq!(conn.get("/v2/second/other/app/manifests/v1", None), 401);
    assert_eq!(
        conn.get("/v2/second/other/app/manifests/v1", Some(&creds)),
        200
    );
    assert_eq!(conn.get("/v2/team/app/manifests/v1", Some(&creds)), 200);
    assert!(aw.log_text().contains("SIGHUP: configuration reloaded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_bad_config_keeps_the_running_one() {
    let (_one, _two, settings, aw, admin) = setup().await;
    let mut conn = Conn::open(aw.port);
    assert_eq!(conn.get("/v2/team/app/manifests/v1", None), 200);
    let good = render(&settings, aw.dir.path());

    // Invalid: refused, with the key and the reason in the log.
    aw.write_config(&good.replace("tag_ttl = \"1h\"", "tag_ttl = \"5 parsecs\""));
    aw.sighup();
    assert!(wait_metric(admin, REFUSED, 1.0, Duration::from_secs(20)).await);
    let log = aw.log_text();
    assert!(
        log.contains("configuration not reloaded") && log.contains("cache.tag_ttl"),
        "{log}"
    );
    assert_eq!(conn.get("/v2/team/app/manifests/v1", None), 200);

    // Valid, but only a restart can follow: refused as a whole, each naming what changed.
    let certs = tempfile::tempdir().unwrap();
    crate::tls::issue(certs.path(), "reload");
    let server_listen = "[server]\nlisten = \"127.0.0.1:0\"\n";
    let with_tls = format!(
        "{server_listen}[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        certs.path().join("server.crt").display(),
        certs.path().join("server.key").display()
    );
    let other_cache = aw.dir.path().join("elsewhere");
    let refusals = [
        (
            good.replace(server_listen, "[server]\nlisten = \"127.0.0.1:1\"\n"),
            "server.listen changed",
        ),
        (
            good.replace(server_listen, &with_tls),
            "server.tls (turning TLS on or off) changed",
        ),
        (
            good.replace(
                "[admin]\nlisten = \"127.0.0.1:0\"",
                "[admin]\nlisten = \"127.0.0.1:1\"",
            ),
            "admin.listen changed",
        ),
        (
            good.replace(
                &format!("file://{}", aw.cache_dir().display()),
                &format!("file://{}", other_cache.display()),
            ),
            "storage changed",
        ),
    ];
    for (i, (config, says)) in refusals.iter().enumerate() {
        assert_ne!(config, &good, "{says}: the test changed nothing");
        aw.write_config(config);
        aw.sighup();
        let refused = 2.0 + i as f64;
        assert!(
            wait_metric(admin, REFUSED, refused, Duration::from_secs(20)).await,
            "{says}"
        );
        assert!(aw.log_text().contains(says), "{says}: {}", aw.log_text());
        assert_eq!(conn.get("/v2/team/app/manifests/v1", None), 200, "{says}");
    }
    assert!(
        !other_cache.exists(),
        "a refused storage change touched nothing"
    );
    assert_eq!(
        crate::support::metric(admin, RELOADED).await.unwrap_or(0.0),
        0.0
    );
}
