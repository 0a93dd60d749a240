//! The admin interface: archway's TOML configuration, parsed and validated up front.
//!
//! Parsing is two steps. serde reads the file into `Raw*` structs that reject unknown keys, then
//! [`Config::from_toml`] checks every value and collects *all* problems, each naming its key, so
//! an admin fixes a config in one round instead of one error per restart.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::oci::{Platform, RepoName, Tag};

/// The configuration compiled into the binary; also shipped as `config/archway.toml`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/archway.toml");

/// One problem with a config, naming the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
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
    pub source: String,
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

// === raw, as written ===

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    upstream: Vec<RawUpstream>,
    #[serde(default)]
    admin: Option<RawAdmin>,
    #[serde(default)]
    auth: Option<RawAuth>,
    #[serde(default)]
    multiarch: RawMultiarch,
    #[serde(default)]
    fallback: Vec<RawFallback>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    htpasswd: Option<String>,
    #[serde(default)]
    anonymous: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMultiarch {
    default_platform: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFallback {
    repository: Option<String>,
    /// Platform → reference template, in the order written (toml's `preserve_order`).
    #[serde(default)]
    platforms: toml::Table,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    tls: Option<RawTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    url: Option<String>,
    spool_dir: Option<String>,
    s3: Option<RawS3>,
    azure: Option<RawAzure>,
    max_size: Option<String>,
    gc_interval: Option<String>,
    gc_min_age: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3 {
    endpoint: Option<String>,
    region: Option<String>,
    allow_http: Option<bool>,
    virtual_hosted_style: Option<bool>,
    access_key_id: Option<String>,
    secret_access_key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAzure {
    account: Option<String>,
    access_key_file: Option<String>,
    endpoint: Option<String>,
    allow_http: Option<bool>,
    use_emulator: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    tag_ttl: Option<String>,
    serve_stale: Option<bool>,
    memory: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: Option<String>,
    url: Option<String>,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    default: bool,
    username: Option<String>,
    password_file: Option<String>,
    ca_file: Option<String>,
    #[serde(default)]
    insecure_skip_verify: bool,
    connect_timeout: Option<String>,
    read_timeout: Option<String>,
}

// === validated ===

#[derive(Debug, Clone)]
pub struct Config {
    /// Where this config came from (a path, or `<embedded default>`), for messages.
    pub source: String,
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub cache: CacheConfig,
    pub upstreams: Vec<UpstreamConfig>,
    /// The admin listener (`/metrics`, `/healthz`, `/inspect`), when configured.
    pub admin: Option<SocketAddr>,
    /// Client authentication on the registry port, when configured.
    pub auth: Option<AuthConfig>,
    pub multiarch: MultiarchConfig,
    pub fallbacks: Vec<FallbackConfig>,
}

/// `[auth]`: htpasswd users (bcrypt hashes, never printed) and whether anonymous pulls pass.
#[derive(Clone)]
pub struct AuthConfig {
    pub users: HashMap<String, String>,
    pub anonymous: bool,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("users", &self.users.len())
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct MultiarchConfig {
    /// The platform served to clients that cannot read an index and do not say theirs.
    pub default_platform: Platform,
}

/// Per-architecture images that fill platforms an upstream index lacks.
#[derive(Debug, Clone)]
pub struct FallbackConfig {
    /// As written: `docker.io/library/*`.
    pub repository: String,
    /// The registry host or upstream name it starts with.
    pub registry: String,
    /// The repository path after it (`library` for `library/*`, `thinklab/app`).
    pub path: String,
    /// Whether `path` ends in `/*` (then every repository below `path` matches).
    pub wildcard: bool,
    /// In config order: the platform and its reference template.
    pub platforms: Vec<(Platform, String)>,
}

/// The placeholders a fallback template may use.
pub const TEMPLATE_PLACEHOLDERS: [&str; 3] = ["{repo}", "{name}", "{tag}"];

/// Expands a fallback template for a requested repository path and tag.
pub fn expand_template(template: &str, repo: &str, tag: &str) -> String {
    let name = repo.rsplit('/').next().unwrap_or(repo);
    template
        .replace("{repo}", repo)
        .replace("{name}", name)
        .replace("{tag}", tag)
}

/// Splits `host/path:tag` into its parts (the tag after the last `/`).
pub fn split_reference(r: &str) -> Option<(&str, &str, &str)> {
    let (host, rest) = r.split_once('/')?;
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    let colon = rest[slash..].find(':').map(|i| slash + i)?;
    Some((host, &rest[..colon], &rest[colon + 1..]))
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// TLS on the registry listener: certificate chain and key (PEM), re-read on SIGHUP.
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    /// A directory on local disk.
    File(PathBuf),
    /// In-process memory; nothing survives a restart.
    Memory,
    /// An S3 bucket, optionally under a key prefix.
    S3 { bucket: String, prefix: String },
    /// An Azure Blob Storage container, optionally under a prefix.
    Azure { container: String, prefix: String },
}

/// S3 settings beyond what `AmazonS3Builder::from_env` reads from the environment
/// (`AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, ...); a value
/// set here wins over the environment.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub allow_http: Option<bool>,
    pub virtual_hosted_style: Option<bool>,
    pub access_key_id: Option<String>,
    /// Read from `secret_access_key_file`; never printed.
    pub secret_access_key: Option<String>,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

impl fmt::Display for StorageUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageUrl::File(p) => write!(f, "file://{}", p.display()),
            StorageUrl::Memory => f.write_str("memory://"),
            StorageUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            StorageUrl::Azure { container, prefix } => write!(f, "az://{container}/{prefix}"),
        }
    }
}

/// Azure settings beyond what `MicrosoftAzureBuilder::from_env` reads from the environment
/// (`AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, managed identity, ...); a
/// value set here wins over the environment.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AzureConfig {
    pub account: Option<String>,
    /// Read from `access_key_file`; never printed.
    pub access_key: Option<String>,
    pub endpoint: Option<String>,
    pub allow_http: Option<bool>,
    pub use_emulator: Option<bool>,
}

impl fmt::Debug for AzureConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureConfig")
            .field("account", &self.account)
            .field(
                "access_key",
                &self.access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("endpoint", &self.endpoint)
            .field("allow_http", &self.allow_http)
            .field("use_emulator", &self.use_emulator)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    pub url: StorageUrl,
    pub s3: S3Config,
    pub azure: AzureConfig,
    /// Where in-flight blob fills are spooled for concurrent readers.
    pub spool_dir: PathBuf,
    /// The bounded cache: how large it may grow and how eviction runs.
    pub gc: GcConfig,
}

/// `[storage] max_size`, `gc_interval`, `gc_min_age`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcConfig {
    /// Bytes of content (blobs and manifests) the cache may hold; `None`: unbounded.
    pub max_size: Option<u64>,
    /// How often a replica compares the cache's size with `max_size`. Writes that push the
    /// size over it start a run sooner.
    pub interval: Duration,
    /// What was used more recently than this is never evicted, whatever the size: it covers
    /// pulls in progress and access times other replicas have not written out yet.
    pub min_age: Duration,
}

impl Default for GcConfig {
    fn default() -> GcConfig {
        GcConfig {
            max_size: None,
            interval: DEFAULT_GC_INTERVAL,
            min_age: DEFAULT_GC_MIN_AGE,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub tag_ttl: Duration,
    pub serve_stale: bool,
    /// Budget for the in-memory manifest cache, in bytes.
    pub memory: u64,
}

#[derive(Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub url: Url,
    pub hosts: Vec<String>,
    pub default: bool,
    pub username: Option<String>,
    /// Read from `password_file` at load time; never printed.
    pub password: Option<String>,
    pub ca_pem: Option<Vec<u8>>,
    pub insecure_skip_verify: bool,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .field("hosts", &self.hosts)
            .field("default", &self.default)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

const DEFAULT_LISTEN: &str = "127.0.0.1:5000";
const DEFAULT_STORAGE: &str = "file://./data";
const DEFAULT_TAG_TTL: Duration = Duration::from_secs(300);
const DEFAULT_MEMORY: u64 = 256 * 1024 * 1024;
const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(600);
const DEFAULT_GC_MIN_AGE: Duration = Duration::from_secs(600);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);

struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(ConfigError {
            key: key.into(),
            reason: reason.into(),
        });
    }
}

fn duration(errs: &mut Errors, key: &str, v: Option<&str>, default: Duration) -> Duration {
    match v {
        None => default,
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) => d,
            Err(e) => {
                errs.push(
                    key,
                    format!("bad duration {s:?}: {e} (e.g. \"30s\", \"5m\")"),
                );
                default
            }
        },
    }
}

/// A byte size such as `"200GiB"` or `"512MB"`.
fn size(errs: &mut Errors, key: &str, v: Option<&str>) -> Option<u64> {
    let s = v?;
    match s.parse::<bytesize::ByteSize>() {
        Ok(b) => Some(b.as_u64()),
        Err(e) => {
            errs.push(
                key,
                format!("bad size {s:?}: {e} (e.g. \"256MiB\", \"200GiB\")"),
            );
            None
        }
    }
}

/// Reads a file named by the config; relative paths are relative to the config's directory.
fn read_file(errs: &mut Errors, base: Option<&Path>, key: &str, path: &str) -> Option<Vec<u8>> {
    let p = resolve(base, path);
    match std::fs::read(&p) {
        Ok(b) => Some(b),
        Err(e) => {
            errs.push(key, format!("cannot read {}: {e}", p.display()));
            None
        }
    }
}

fn resolve(base: Option<&Path>, path: &str) -> PathBuf {
    let p = Path::new(path);
    match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p.to_path_buf(),
    }
}

fn storage_url(errs: &mut Errors, s: &str) -> StorageUrl {
    if let Some(path) = s.strip_prefix("file://") {
        if path.is_empty() {
            errs.push("storage.url", "file:// URL names no directory");
        }
        // Relative file URLs are relative to the working directory, like a shell path.
        return StorageUrl::File(PathBuf::from(path));
    }
    if s == "memory://" || s == "memory:///" {
        return StorageUrl::Memory;
    }
    if let Some(rest) = s.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = bucket.len() >= 3
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            errs.push(
                "storage.url",
                format!("{s:?}: {bucket:?} is not an S3 bucket name"),
            );
        }
        return StorageUrl::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        };
    }
    if let Some(rest) = s.strip_prefix("az://") {
        let (container, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // Azure's rule: 3-63 of [a-z0-9-], starting with a letter or digit, no "--".
        let ok = (3..=63).contains(&container.len())
            && container
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !container.starts_with('-')
            && !container.ends_with('-')
            && !container.contains("--");
        if !ok {
            errs.push(
                "storage.url",
                format!("{s:?}: {container:?} is not an Azure container name"),
            );
        }
        return StorageUrl::Azure {
            container: container.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        };
    }
    let reason = match s.split_once("://") {
        Some(("gs", _)) => format!(
            "{s:?}: Google Cloud Storage is not supported by this build yet; use s3://, az://, file:// or memory://"
        ),
        Some(("abfs" | "abfss" | "azure" | "adl", _)) => {
            format!("{s:?}: write Azure containers as az://CONTAINER/PREFIX")
        }
        Some((scheme, _)) => {
            format!("unsupported scheme {scheme:?} (use s3://, az://, file:// or memory://)")
        }
        None => format!("{s:?} is not a URL (e.g. \"file://./data\")"),
    };
    errs.push("storage.url", reason);
    StorageUrl::Memory
}

fn valid_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (h, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
    host_ok && port_ok
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
        let de = toml::Deserializer::new(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let reason = inner.message().to_string();
            let at = inner
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            fail(vec![ConfigError {
                key: if key == "." { String::new() } else { key },
                reason: format!("{reason}{at}"),
            }])
        })?;
        let mut errs = Errors(Vec::new());

        let listen_s = raw.server.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen_s.parse().unwrap_or_else(|e| {
            errs.push(
                "server.listen",
                format!("bad address {listen_s:?}: {e} (e.g. \"127.0.0.1:5000\")"),
            );
            SocketAddr::from(([127, 0, 0, 1], 5000))
        });

        let tls = raw.server.tls.and_then(|t| {
            let (Some(cert), Some(key)) = (t.cert, t.key) else {
                errs.push("server.tls", "needs both cert and key");
                return None;
            };
            let files = TlsFiles {
                cert: resolve(base, &cert),
                key: resolve(base, &key),
            };
            match crate::http::tls::load_certified_key(&files.cert, &files.key) {
                Ok(_) => Some(files),
                Err(e) => {
                    errs.push("server.tls", e);
                    None
                }
            }
        });
        let url = storage_url(
            &mut errs,
            raw.storage.url.as_deref().unwrap_or(DEFAULT_STORAGE),
        );
        let s3 = match raw.storage.s3 {
            None => S3Config::default(),
            Some(r) => S3Config {
                endpoint: r.endpoint,
                region: r.region,
                allow_http: r.allow_http,
                virtual_hosted_style: r.virtual_hosted_style,
                access_key_id: r.access_key_id,
                secret_access_key: r.secret_access_key_file.and_then(|f| {
                    read_file(&mut errs, base, "storage.s3.secret_access_key_file", &f).map(|b| {
                        String::from_utf8_lossy(&b)
                            .trim_end_matches(['\n', '\r'])
                            .to_string()
                    })
                }),
            },
        };
        if s3 != S3Config::default() && !matches!(url, StorageUrl::S3 { .. }) {
            errs.push("storage.s3", "set, but storage.url is not an s3:// URL");
        }
        let azure = match raw.storage.azure {
            None => AzureConfig::default(),
            Some(r) => AzureConfig {
                account: r.account,
                access_key: r.access_key_file.and_then(|f| {
                    read_file(&mut errs, base, "storage.azure.access_key_file", &f)
                        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                }),
                endpoint: r.endpoint,
                allow_http: r.allow_http,
                use_emulator: r.use_emulator,
            },
        };
        if azure != AzureConfig::default() && !matches!(url, StorageUrl::Azure { .. }) {
            errs.push("storage.azure", "set, but storage.url is not an az:// URL");
        }
        let spool_dir = raw
            .storage
            .spool_dir
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("archway-spool"));

        let tag_ttl = duration(
            &mut errs,
            "cache.tag_ttl",
            raw.cache.tag_ttl.as_deref(),
            DEFAULT_TAG_TTL,
        );
        let memory =
            size(&mut errs, "cache.memory", raw.cache.memory.as_deref()).unwrap_or(DEFAULT_MEMORY);
        let gc = GcConfig {
            max_size: size(
                &mut errs,
                "storage.max_size",
                raw.storage.max_size.as_deref(),
            ),
            interval: duration(
                &mut errs,
                "storage.gc_interval",
                raw.storage.gc_interval.as_deref(),
                DEFAULT_GC_INTERVAL,
            ),
            min_age: duration(
                &mut errs,
                "storage.gc_min_age",
                raw.storage.gc_min_age.as_deref(),
                DEFAULT_GC_MIN_AGE,
            ),
        };
        if gc.max_size == Some(0) {
            errs.push("storage.max_size", "must be more than 0 bytes");
        }
        if gc.interval < Duration::from_secs(1) {
            errs.push("storage.gc_interval", "must be at least 1s");
        }

        if raw.upstream.is_empty() {
            errs.push(
                "upstream",
                "no [[upstream]] is configured: nothing to mirror",
            );
        }
        let mut upstreams = Vec::new();
        let mut seen: HashMap<String, String> = HashMap::new();
        let mut defaults = Vec::new();
        for (i, u) in raw.upstream.into_iter().enumerate() {
            let k = |f: &str| format!("upstream[{i}].{f}");
            let name = u.name.unwrap_or_default();
            if name.is_empty() {
                errs.push(k("name"), "missing");
            } else if name.contains('/') || name.parse::<RepoName>().is_err() {
                errs.push(
                    k("name"),
                    format!("{name:?} must be one lower-case name component (e.g. \"dockerhub\")"),
                );
            }
            let url = match u.url.as_deref() {
                None => {
                    errs.push(k("url"), "missing");
                    None
                }
                Some(s) => match Url::parse(s) {
                    Ok(url) if !matches!(url.scheme(), "http" | "https") => {
                        errs.push(k("url"), format!("{s:?}: scheme must be http or https"));
                        None
                    }
                    Ok(url) if url.host_str().is_none() => {
                        errs.push(k("url"), format!("{s:?} names no host"));
                        None
                    }
                    Ok(url) if url.query().is_some() || url.fragment().is_some() => {
                        errs.push(k("url"), format!("{s:?} must not have a query or fragment"));
                        None
                    }
                    Ok(url) => Some(url),
                    Err(e) => {
                        errs.push(k("url"), format!("bad URL {s:?}: {e}"));
                        None
                    }
                },
            };
            // The name and every host are routing keys, so each may belong to one upstream only.
            let mut keys = vec![(name.clone(), k("name"))];
            for (j, h) in u.hosts.iter().enumerate() {
                if !valid_host(h) {
                    errs.push(
                        format!("upstream[{i}].hosts[{j}]"),
                        format!("{h:?} is not a lower-case host[:port]"),
                    );
                }
                keys.push((h.clone(), format!("upstream[{i}].hosts[{j}]")));
            }
            for (key, at) in keys {
                if key.is_empty() {
                    continue;
                }
                if let Some(prev) = seen.get(&key) {
                    if prev != &name {
                        errs.push(
                            at,
                            format!("{key:?} already routes to upstream {prev:?} (duplicate host)"),
                        );
                    } else if at.contains("hosts") {
                        errs.push(at, format!("{key:?} is listed twice"));
                    }
                } else {
                    seen.insert(key, name.clone());
                }
            }
            if u.default {
                defaults.push(name.clone());
            }
            let password = match (&u.username, &u.password_file) {
                (Some(_), Some(f)) => read_file(&mut errs, base, &k("password_file"), f).map(|b| {
                    String::from_utf8_lossy(&b)
                        .trim_end_matches(['\n', '\r'])
                        .to_string()
                }),
                (Some(_), None) => {
                    errs.push(
                        k("password_file"),
                        "username is set but password_file is not",
                    );
                    None
                }
                (None, Some(_)) => {
                    errs.push(k("username"), "password_file is set but username is not");
                    None
                }
                (None, None) => None,
            };
            let ca_pem = u.ca_file.as_deref().and_then(|f| {
                let pem = read_file(&mut errs, base, &k("ca_file"), f)?;
                match rustls_pemfile::certs(&mut &pem[..]).collect::<Result<Vec<_>, _>>() {
                    Ok(c) if !c.is_empty() => Some(pem),
                    Ok(_) => {
                        errs.push(k("ca_file"), format!("{f}: no PEM certificate found"));
                        None
                    }
                    Err(e) => {
                        errs.push(k("ca_file"), format!("{f}: bad PEM: {e}"));
                        None
                    }
                }
            });
            let connect_timeout = duration(
                &mut errs,
                &k("connect_timeout"),
                u.connect_timeout.as_deref(),
                DEFAULT_CONNECT_TIMEOUT,
            );
            let read_timeout = duration(
                &mut errs,
                &k("read_timeout"),
                u.read_timeout.as_deref(),
                DEFAULT_READ_TIMEOUT,
            );
            if let Some(url) = url {
                upstreams.push(UpstreamConfig {
                    name,
                    url,
                    hosts: u.hosts,
                    default: u.default,
                    username: u.username,
                    password,
                    ca_pem,
                    insecure_skip_verify: u.insecure_skip_verify,
                    connect_timeout,
                    read_timeout,
                });
            }
        }
        let admin = raw.admin.and_then(|a| {
            let s = a.listen?;
            match s.parse() {
                Ok(addr) => Some(addr),
                Err(e) => {
                    errs.push("admin.listen", format!("bad address {s:?}: {e}"));
                    None
                }
            }
        });
        let auth = raw.auth.and_then(|a| {
            let Some(file) = a.htpasswd else {
                errs.push("auth.htpasswd", "missing: [auth] needs an htpasswd file");
                return None;
            };
            let text = read_file(&mut errs, base, "auth.htpasswd", &file)?;
            match crate::auth::parse_htpasswd(&String::from_utf8_lossy(&text)) {
                Ok(users) if users.is_empty() => {
                    errs.push("auth.htpasswd", format!("{file}: no users"));
                    None
                }
                Ok(users) => Some(AuthConfig {
                    users,
                    anonymous: a.anonymous,
                }),
                Err(e) => {
                    errs.push("auth.htpasswd", format!("{file}: {e}"));
                    None
                }
            }
        });
        let default_platform = match raw.multiarch.default_platform.as_deref() {
            None => Platform::new("linux", "amd64", ""),
            Some(s) => s.parse().unwrap_or_else(|e| {
                errs.push("multiarch.default_platform", format!("{e}"));
                Platform::new("linux", "amd64", "")
            }),
        };
        let registries: Vec<&String> = upstreams
            .iter()
            .flat_map(|u| std::iter::once(&u.name).chain(&u.hosts))
            .collect();
        let mut fallbacks = Vec::new();
        for (i, f) in raw.fallback.into_iter().enumerate() {
            let k = |f: &str| format!("fallback[{i}].{f}");
            let Some(repository) = f.repository else {
                errs.push(k("repository"), "missing");
                continue;
            };
            let (registry, path, wildcard) = match repository.split_once('/') {
                Some((reg, path)) => match path.strip_suffix("/*") {
                    Some(p) => (reg.to_string(), p.to_string(), true),
                    None => (reg.to_string(), path.to_string(), false),
                },
                None => (repository.clone(), String::new(), false),
            };
            if !registries.iter().any(|r| **r == registry) || path.parse::<RepoName>().is_err() {
                errs.push(
                    k("repository"),
                    format!(
                        "{repository:?} must be a configured registry host or upstream name, then a repository (a trailing /* matches every repository below it)"
                    ),
                );
                continue;
            }
            let mut platforms = Vec::new();
            for (pk, v) in f.platforms {
                let key = format!("fallback[{i}].platforms.\"{pk}\"");
                let platform = match pk.parse::<Platform>() {
                    Ok(p) => p,
                    Err(e) => {
                        errs.push(&key, format!("{e}"));
                        continue;
                    }
                };
                let Some(template) = v.as_str().map(str::to_string) else {
                    errs.push(&key, "must be a reference template string");
                    continue;
                };
                let mut rest = template.clone();
                for ph in TEMPLATE_PLACEHOLDERS {
                    rest = rest.replace(ph, "");
                }
                if rest.contains('{') || rest.contains('}') {
                    errs.push(
                        &key,
                        format!(
                            "{template:?}: unknown placeholder (use {{repo}}, {{name}}, {{tag}})"
                        ),
                    );
                    continue;
                }
                let sample = expand_template(&template, "library/alpine", "latest");
                match split_reference(&sample) {
                    Some((host, path, tag))
                        if path.parse::<RepoName>().is_ok() && tag.parse::<Tag>().is_ok() =>
                    {
                        if !registries.iter().any(|r| *r == host) {
                            errs.push(
                                &key,
                                format!(
                                    "{template:?} names {host:?}, which is no configured upstream"
                                ),
                            );
                            continue;
                        }
                    }
                    _ => {
                        errs.push(
                            &key,
                            format!("{template:?} is not of the form registry/repository:tag"),
                        );
                        continue;
                    }
                }
                if platforms
                    .iter()
                    .any(|(p, _): &(Platform, String)| *p == platform)
                {
                    errs.push(&key, format!("platform {platform} is listed twice"));
                    continue;
                }
                platforms.push((platform, template));
            }
            fallbacks.push(FallbackConfig {
                repository,
                registry,
                path,
                wildcard,
                platforms,
            });
        }
        if defaults.len() > 1 {
            errs.push(
                "upstream.default",
                format!(
                    "more than one default upstream ({}); at most one may say default = true",
                    defaults.join(", ")
                ),
            );
        }
        if !errs.0.is_empty() {
            return Err(fail(errs.0));
        }
        Ok(Config {
            source: source.to_string(),
            server: ServerConfig { listen, tls },
            storage: StorageConfig {
                url,
                s3,
                azure,
                spool_dir,
                gc,
            },
            cache: CacheConfig {
                tag_ttl,
                serve_stale: raw.cache.serve_stale.unwrap_or(true),
                memory,
            },
            upstreams,
            admin,
            auth,
            multiarch: MultiarchConfig { default_platform },
            fallbacks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn templates() {
        assert_eq!(
            expand_template("docker.io/arm32v7/{name}:{tag}", "library/alpine", "3.20"),
            "docker.io/arm32v7/alpine:3.20"
        );
        assert_eq!(
            expand_template("quay.io/{repo}:{tag}-ppc64le", "org/app", "v1"),
            "quay.io/org/app:v1-ppc64le"
        );
        assert_eq!(
            split_reference("docker.io/a/b:c"),
            Some(("docker.io", "a/b", "c"))
        );
        assert_eq!(split_reference("docker.io/a/b"), None);
    }

    #[test]
    fn no_upstream_and_bad_name() {
        let e = errors("");
        assert_eq!(e[0].key, "upstream");
        let e = errors("[[upstream]]\nname = \"Hub/x\"\nurl = \"http://a\"\n");
        assert_eq!(e[0].key, "upstream[0].name");
    }
}
