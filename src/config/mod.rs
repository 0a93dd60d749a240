//! The admin interface: archway's TOML configuration, parsed and validated up front.
//!
//! Parsing is two steps. serde reads the file into `Raw*` structs that reject unknown keys,
//! then each section's `validate` checks every value of its table. All problems are collected,
//! each naming its key, so an admin fixes a config in one round instead of one error per
//! restart. One file per section: `server`, `storage`, `cache`, `upstream`, `admin`, `auth`,
//! `multiarch`, `fallback`, `signing`, `cluster` and `hosted`.

mod admin;
mod auth;
mod cache;
mod cluster;
mod fallback;
mod hosted;
mod multiarch;
mod rules;
mod server;
mod signing;
mod storage;
mod upstream;
mod values;

use std::fmt;
use std::path::Path;

use serde::Deserialize;

pub use admin::AdminConfig;
pub use auth::{parse_htpasswd, AuthConfig};
pub use cache::CacheConfig;
pub use cluster::{Advertise, ClusterConfig};
pub use fallback::{expand_template, FallbackConfig, TEMPLATE_PLACEHOLDERS};
pub use hosted::HostedConfig;
pub use multiarch::MultiarchConfig;
pub use rules::{RepoPattern, RepoRules};
pub use server::{ServerConfig, TlsFiles};
pub use signing::SigningConfig;
pub use storage::{AzureConfig, GcConfig, RedirectConfig, S3Config, StorageConfig, StorageUrl};
pub use upstream::UpstreamConfig;
use values::Errors;

/// The configuration compiled into the binary; also shipped as `config/archway.toml`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/archway.toml");

/// One problem with a config, naming the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The TOML path (`upstream[1].url`); empty for the file as a whole.
    pub key: String,
    /// What is wrong with the value, in words an admin can act on.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.key, self.reason)
        }
    }
}

/// All the problems found in one config source.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    /// The file (or `<embedded default>`).
    pub source: String,
    /// Every problem found, in the order the sections were checked.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration {}:", self.source)?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The file as written: every table optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: server::RawServer,
    #[serde(default)]
    storage: storage::RawStorage,
    #[serde(default)]
    cache: cache::RawCache,
    #[serde(default)]
    upstream: Vec<upstream::RawUpstream>,
    #[serde(default)]
    admin: Option<admin::RawAdmin>,
    #[serde(default)]
    auth: Option<auth::RawAuth>,
    #[serde(default)]
    multiarch: multiarch::RawMultiarch,
    #[serde(default)]
    fallback: Vec<fallback::RawFallback>,
    #[serde(default)]
    signing: Option<signing::RawSigning>,
    #[serde(default)]
    cluster: Option<cluster::RawCluster>,
    #[serde(default)]
    hosted: Vec<hosted::RawHosted>,
}

/// A validated configuration: every value parsed, every file it names read.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where this config came from (a path, or `<embedded default>`), for messages.
    pub source: String,
    /// `[server]`: the registry listener, its TLS files and the shutdown grace period.
    pub server: ServerConfig,
    /// `[storage]`: where the cache lives, the backend's settings and the bounded cache.
    pub storage: StorageConfig,
    /// `[cache]`: how long tags are trusted, stale serving, and the manifest memory budget.
    pub cache: CacheConfig,
    /// In config order; a route names an upstream by its index here.
    pub upstreams: Vec<UpstreamConfig>,
    /// The admin listener, when configured.
    pub admin: Option<AdminConfig>,
    /// Client authentication on the registry port, when configured.
    pub auth: Option<AuthConfig>,
    /// `[multiarch]`: the platform served to clients that cannot read an index.
    pub multiarch: MultiarchConfig,
    /// In config order: the first rule that covers a repository applies.
    pub fallbacks: Vec<FallbackConfig>,
    /// archway's signing key, when `[signing]` is configured.
    pub signing: Option<SigningConfig>,
    /// Replicas coordinating their fills, when `[cluster]` is configured.
    pub cluster: Option<ClusterConfig>,
    /// Repositories archway stores itself (`[[hosted]]`), in config order.
    pub hosted: Vec<HostedConfig>,
}

impl Config {
    /// The embedded default configuration.
    pub fn embedded() -> Config {
        Config::from_toml(EMBEDDED_DEFAULT, "<embedded default>", None)
            .unwrap_or_else(|e| panic!("the embedded default config is invalid: {e}"))
    }

    /// Loads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            source: source.clone(),
            errors: vec![ConfigError {
                key: String::new(),
                reason: format!("cannot read: {e}"),
            }],
        })?;
        Config::from_toml(&text, &source, path.parent())
    }

    /// Parses and validates TOML. `base` is the directory relative file names are resolved
    /// against (the config file's own directory).
    pub fn from_toml(
        text: &str,
        source: &str,
        base: Option<&Path>,
    ) -> Result<Config, ConfigErrors> {
        let fail = |errors| ConfigErrors {
            source: source.to_string(),
            errors,
        };
        let raw = parse(text).map_err(|e| fail(vec![e]))?;
        let mut errs = Errors::default();
        let server = server::validate(raw.server, base, &mut errs);
        let storage = storage::validate(raw.storage, base, &mut errs);
        let cache = cache::validate(raw.cache, &mut errs);
        // Routing keys (names and hosts) taken so far, and by what.
        let mut routing = std::collections::HashMap::new();
        let upstreams = upstream::validate(raw.upstream, base, &mut errs, &mut routing);
        let admin = admin::validate(raw.admin, &mut errs);
        let auth = auth::validate(raw.auth, base, &mut errs);
        let multiarch = multiarch::validate(raw.multiarch, &mut errs);
        let hosted = hosted::validate(raw.hosted, auth.as_ref(), &mut errs, &mut routing);
        let registries: Vec<&str> = upstreams
            .iter()
            .flat_map(|u| std::iter::once(&u.name).chain(&u.hosts))
            .chain(
                hosted
                    .iter()
                    .flat_map(|h| std::iter::once(&h.name).chain(&h.hosts)),
            )
            .map(String::as_str)
            .collect();
        let fallbacks = fallback::validate(raw.fallback, &registries, &mut errs);
        for (i, f) in fallbacks.iter().enumerate() {
            if hosted
                .iter()
                .any(|h| h.name == f.registry || h.hosts.contains(&f.registry))
            {
                errs.push(
                    format!("fallback[{i}].repository"),
                    format!("{:?} is a hosted repository: push every platform to it instead (fallback rules fill upstream images; their platforms may come from hosted ones)", f.repository),
                );
            }
        }
        let signing = signing::validate(raw.signing, base, &mut errs);
        let cluster = cluster::validate(raw.cluster, base, &mut errs);
        if cluster.is_some()
            && !matches!(
                storage.url,
                StorageUrl::S3 { .. } | StorageUrl::Azure { .. }
            )
        {
            errs.push(
                "cluster",
                format!(
                    "replicas cannot share a {} cache; [cluster] needs an s3:// or az:// store",
                    storage.url
                ),
            );
        }
        if !errs.0.is_empty() {
            return Err(fail(errs.0));
        }
        Ok(Config {
            source: source.to_string(),
            server,
            storage,
            cache,
            upstreams,
            admin,
            auth,
            multiarch,
            fallbacks,
            signing,
            cluster,
            hosted,
        })
    }
}

/// serde's pass: the shape of the file. A failure names the key and the line.
fn parse(text: &str) -> Result<RawConfig, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let at = inner
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!(" (line {line})")
            })
            .unwrap_or_default();
        ConfigError {
            key: if key == "." { String::new() } else { key },
            reason: format!("{}{at}", inner.message()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn errors(toml: &str) -> Vec<ConfigError> {
        Config::from_toml(toml, "test.toml", None)
            .unwrap_err()
            .errors
    }

    const UP: &str = "[[upstream]]\nname = \"hub\"\nurl = \"https://r.example\"\nhosts = [\"docker.io\"]\ndefault = true\n";

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(c.storage.url, StorageUrl::File("./data".into()));
        assert_eq!(c.cache.tag_ttl, Duration::from_secs(300));
        assert!(c.cache.serve_stale);
        assert_eq!(c.upstreams.len(), 1);
        assert!(c.upstreams[0].default);
        assert_eq!(c.upstreams[0].url.as_str(), "https://registry-1.docker.io/");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = errors(&format!(
            "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n{UP}"
        ));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].key, "server.lisen");
        assert!(
            e[0].reason.contains("unknown field `lisen`"),
            "{}",
            e[0].reason
        );
        assert!(e[0].reason.contains("line 3"), "{}", e[0].reason);

        let e = errors(&format!("{UP}colour = \"red\"\n"));
        assert_eq!(e[0].key, "upstream[0].colour");
        assert!(e[0].reason.contains("unknown field"));
    }

    #[test]
    fn collects_every_error_with_its_key() {
        let e = errors(
            r#"
[server]
listen = "nope"
[storage]
url = "ftp://x"
[cache]
tag_ttl = "5 parsecs"
[[upstream]]
name = "a"
url = "htp//bad"
hosts = ["docker.io"]
default = true
[[upstream]]
name = "b"
url = "https://b.example"
hosts = ["docker.io", "Quay.io"]
default = true
username = "u"
"#,
        );
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        for k in [
            "server.listen",
            "storage.url",
            "cache.tag_ttl",
            "upstream[0].url",
            "upstream[1].hosts[0]",
            "upstream[1].hosts[1]",
            "upstream[1].password_file",
            "upstream.default",
        ] {
            assert!(keys.contains(&k), "missing {k} in {e:?}");
        }
        let dup = e.iter().find(|e| e.key == "upstream[1].hosts[0]").unwrap();
        assert!(dup.reason.contains("duplicate host"), "{}", dup.reason);
        let ttl = e.iter().find(|e| e.key == "cache.tag_ttl").unwrap();
        assert!(ttl.reason.contains("bad duration"));
    }

    #[test]
    fn azure_storage() {
        let c = Config::from_toml(
            &format!(
                "[storage]\nurl = \"az://mirror/cache/\"\n[storage.azure]\naccount = \"acct\"\nendpoint = \"http://127.0.0.1:1/acct\"\nallow_http = true\n{UP}"
            ),
            "t",
            None,
        )
        .unwrap();
        assert_eq!(
            c.storage.url,
            StorageUrl::Azure {
                container: "mirror".into(),
                prefix: "cache".into()
            }
        );
        assert_eq!(c.storage.azure.account.as_deref(), Some("acct"));
        let e = errors(&format!("[storage]\nurl = \"az://My_Container\"\n{UP}"));
        assert_eq!(e[0].key, "storage.url");
        assert!(e[0].reason.contains("not an Azure container name"), "{e:?}");
        let e = errors(&format!(
            "[storage]\nurl = \"s3://bucket\"\n[storage.azure]\naccount = \"a\"\n{UP}"
        ));
        assert_eq!(e[0].key, "storage.azure");
        let e = errors(&format!("[storage]\nurl = \"gs://bucket\"\n{UP}"));
        assert!(e[0].reason.contains("Google Cloud Storage"), "{e:?}");
    }

    #[test]
    fn bounded_cache_settings() {
        let c = Config::from_toml(
            &format!(
                "[storage]\nurl = \"memory://\"\nmax_size = \"200GiB\"\ngc_interval = \"1m\"\ngc_min_age = \"0s\"\n{UP}"
            ),
            "t",
            None,
        )
        .unwrap();
        assert_eq!(
            c.storage.gc,
            GcConfig {
                max_size: Some(200 << 30),
                interval: Duration::from_secs(60),
                min_age: Duration::ZERO,
            }
        );
        assert_eq!(Config::embedded().storage.gc.max_size, None);
        let e = errors(&format!(
            "[storage]\nmax_size = \"lots\"\ngc_interval = \"0s\"\ngc_min_age = \"soon\"\n{UP}"
        ));
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "storage.max_size",
                "storage.gc_min_age",
                "storage.gc_interval"
            ],
            "{e:?}"
        );
        assert!(e[0].reason.contains("bad size \"lots\""), "{}", e[0].reason);
        assert!(e[2].reason.contains("at least 1s"), "{}", e[2].reason);
        let e = errors(&format!("[storage]\nmax_size = \"0\"\n{UP}"));
        assert_eq!(e[0].key, "storage.max_size");
    }

    #[test]
    fn reads_password_and_redacts_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
        let c = Config::from_toml(
            &format!("{UP}username = \"u\"\npassword_file = \"pw\"\n"),
            "t",
            Some(dir.path()),
        )
        .unwrap();
        assert_eq!(c.upstreams[0].password.as_deref(), Some("s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
        let e = errors(&format!(
            "{UP}username = \"u\"\npassword_file = \"/nonexistent/pw\"\n"
        ));
        assert_eq!(e[0].key, "upstream[0].password_file");
        assert!(e[0].reason.contains("cannot read"));
    }

    #[test]
    fn storage_urls() {
        let c =
            Config::from_toml(&format!("[storage]\nurl = \"memory://\"\n{UP}"), "t", None).unwrap();
        assert_eq!(c.storage.url, StorageUrl::Memory);
        let c = Config::from_toml(
            &format!("[storage]\nurl = \"file:///var/x\"\n{UP}"),
            "t",
            None,
        )
        .unwrap();
        assert_eq!(c.storage.url, StorageUrl::File("/var/x".into()));
        let c = Config::from_toml(
            &format!("[storage]\nurl = \"s3://my-bucket/mirror/\"\n[storage.s3]\nendpoint = \"http://127.0.0.1:9000\"\nallow_http = true\n{UP}"),
            "t",
            None,
        )
        .unwrap();
        assert_eq!(
            c.storage.url,
            StorageUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: "mirror".into()
            }
        );
        assert_eq!(c.storage.s3.allow_http, Some(true));
        let e = errors(&format!("[storage]\nurl = \"s3://B\"\n{UP}"));
        assert_eq!(e[0].key, "storage.url");
        let e = errors(&format!("[storage]\nurl = \"gs://bucket\"\n{UP}"));
        assert_eq!(e[0].key, "storage.url");
        let e = errors(&format!("[storage.s3]\nregion = \"x\"\nbogus = 1\n{UP}"));
        assert_eq!(e[0].key, "storage.s3.bogus");
    }

    #[test]
    fn fallbacks() {
        let base = "[[upstream]]\nname = \"hub\"\nurl = \"https://r.example\"\nhosts = [\"docker.io\"]\ndefault = true\n[[upstream]]\nname = \"quay\"\nurl = \"https://quay.example\"\nhosts = [\"quay.io\"]\n";
        let c = Config::from_toml(
            &format!(
                r#"{base}
[multiarch]
default_platform = "linux/arm64"
[[fallback]]
repository = "docker.io/thinklab/go-hello-world"
[fallback.platforms]
"linux/s390x" = "docker.io/thinklab/go-hello-world:s390x-{{tag}}"
"linux/ppc64le" = "quay.io/other/go-hello-world:{{tag}}-ppc64le"
"linux/armhf" = "quay/x/{{name}}:{{tag}}"
[[fallback]]
repository = "docker.io/library/*"
[fallback.platforms]
"linux/arm/v7" = "docker.io/arm32v7/{{name}}:{{tag}}"
"#
            ),
            "t",
            None,
        )
        .unwrap();
        assert_eq!(c.multiarch.default_platform.to_string(), "linux/arm64");
        assert_eq!(c.fallbacks.len(), 2);
        let order: Vec<String> = c.fallbacks[0]
            .platforms
            .iter()
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(
            order,
            ["linux/s390x", "linux/ppc64le", "linux/arm/v7"],
            "config order kept"
        );
        assert!(c.fallbacks[1].wildcard);
        assert_eq!(c.fallbacks[1].path, "library");

        let e = errors(&format!(
            r#"{base}
[multiarch]
default_platform = "amd64"
[[fallback]]
repository = "ghcr.io/x/y"
[[fallback]]
repository = "docker.io/x/y"
[fallback.platforms]
"linux" = "docker.io/x/y:{{tag}}"
"linux/s390x" = "ghcr.io/x/y:{{tag}}"
"linux/arm64" = "docker.io/x/y:{{arch}}"
"linux/ppc64le" = "docker.io/x/y"
"#
        ));
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        for k in [
            "multiarch.default_platform",
            "fallback[0].repository",
            "fallback[1].platforms.\"linux\"",
            "fallback[1].platforms.\"linux/s390x\"",
            "fallback[1].platforms.\"linux/arm64\"",
            "fallback[1].platforms.\"linux/ppc64le\"",
        ] {
            assert!(keys.contains(&k), "missing {k} in {e:?}");
        }
        let ghcr = e
            .iter()
            .find(|e| e.key.ends_with("\"linux/s390x\""))
            .unwrap();
        assert!(
            ghcr.reason.contains("no configured upstream"),
            "{}",
            ghcr.reason
        );
    }

    #[test]
    fn no_upstream_and_bad_name() {
        let e = errors("");
        assert_eq!(e[0].key, "upstream");
        let e = errors("[[upstream]]\nname = \"Hub/x\"\nurl = \"http://a\"\n");
        assert_eq!(e[0].key, "upstream[0].name");
    }
}
