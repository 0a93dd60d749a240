//! `[storage]`: where the cache lives (`file://`, `s3://`, `az://`, `memory://`), the
//! backends' settings, and the bounded cache.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::values::{self, Errors};

const DEFAULT_STORAGE: &str = "file://./data";
const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(600);
const DEFAULT_GC_MIN_AGE: Duration = Duration::from_secs(600);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    url: Option<String>,
    spool_dir: Option<String>,
    s3: Option<RawS3>,
    azure: Option<RawAzure>,
    max_size: Option<String>,
    gc_interval: Option<String>,
    gc_min_age: Option<String>,
    redirect: Option<String>,
    redirect_base_url: Option<String>,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// `storage.url`: the backend and bucket, container or directory (default `file://./data`).
    pub url: StorageUrl,
    /// `[storage.s3]`; only accepted when `storage.url` is an `s3://` URL.
    pub s3: S3Config,
    /// `[storage.azure]`; only accepted when `storage.url` is an `az://` URL.
    pub azure: AzureConfig,
    /// Where in-flight blob fills are spooled for concurrent readers.
    pub spool_dir: PathBuf,
    /// The bounded cache: how large it may grow and how eviction runs.
    pub gc: GcConfig,
    /// Cached blobs answered by redirect to the object store; `None`: streamed through.
    pub redirect: Option<RedirectConfig>,
}

/// `[storage] redirect`, `redirect_base_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectConfig {
    /// How long a presigned URL stays valid.
    pub expires: Duration,
    /// Replaces the presigned URL's scheme, host and port (a CDN in front of the bucket).
    pub base_url: Option<url::Url>,
}

/// S3 presigns URLs for at most a week; Azure SAS has no such cap, but a blob URL that lives
/// longer than a pull has no use.
const MAX_REDIRECT: Duration = Duration::from_secs(7 * 24 * 3600);

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

/// S3 settings beyond what `AmazonS3Builder::from_env` reads from the environment
/// (`AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, ...); a value
/// set here wins over the environment.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Config {
    /// `storage.s3.endpoint`: the S3 API's base URL, for a regional host, MinIO or Ceph RGW.
    pub endpoint: Option<String>,
    /// `storage.s3.region`, such as `eu-west-1`.
    pub region: Option<String>,
    /// `storage.s3.allow_http`: permit a plain `http://` endpoint (a local MinIO, say).
    pub allow_http: Option<bool>,
    /// `storage.s3.virtual_hosted_style`: address the bucket as a host name (`BUCKET.endpoint`)
    /// instead of as the first path segment.
    pub virtual_hosted_style: Option<bool>,
    /// `storage.s3.access_key_id`; its secret comes from `secret_access_key_file`.
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

/// Azure settings beyond what `MicrosoftAzureBuilder::from_env` reads from the environment
/// (`AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, managed identity, ...); a
/// value set here wins over the environment.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AzureConfig {
    /// `storage.azure.account`: the storage account's name.
    pub account: Option<String>,
    /// Read from `access_key_file`; never printed.
    pub access_key: Option<String>,
    /// `storage.azure.endpoint`; Azure's default is `https://ACCOUNT.blob.core.windows.net`.
    pub endpoint: Option<String>,
    /// `storage.azure.allow_http`: permit a plain `http://` endpoint.
    pub allow_http: Option<bool>,
    /// `storage.azure.use_emulator`: talk to a local Azurite emulator instead of Azure.
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

pub(super) fn validate(raw: RawStorage, base: Option<&Path>, errs: &mut Errors) -> StorageConfig {
    let url = storage_url(errs, raw.storage_url());
    let redirect = redirect(&raw, &url, errs);
    let s3 = s3(raw.s3, base, errs);
    if s3 != S3Config::default() && !matches!(url, StorageUrl::S3 { .. }) {
        errs.push("storage.s3", "set, but storage.url is not an s3:// URL");
    }
    let azure = azure(raw.azure, base, errs);
    if azure != AzureConfig::default() && !matches!(url, StorageUrl::Azure { .. }) {
        errs.push("storage.azure", "set, but storage.url is not an az:// URL");
    }
    let spool_dir = raw
        .spool_dir
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("archway-spool"));
    let gc = GcConfig {
        max_size: values::size(errs, "storage.max_size", raw.max_size.as_deref()),
        interval: values::duration(
            errs,
            "storage.gc_interval",
            raw.gc_interval.as_deref(),
            DEFAULT_GC_INTERVAL,
        ),
        min_age: values::duration(
            errs,
            "storage.gc_min_age",
            raw.gc_min_age.as_deref(),
            DEFAULT_GC_MIN_AGE,
        ),
    };
    if gc.max_size == Some(0) {
        errs.push("storage.max_size", "must be more than 0 bytes");
    }
    if gc.interval < Duration::from_secs(1) {
        errs.push("storage.gc_interval", "must be at least 1s");
    }
    StorageConfig {
        url,
        s3,
        azure,
        spool_dir,
        gc,
        redirect,
    }
}

fn redirect(raw: &RawStorage, url: &StorageUrl, errs: &mut Errors) -> Option<RedirectConfig> {
    let Some(expires) = raw.redirect.as_deref() else {
        if raw.redirect_base_url.is_some() {
            errs.push(
                "storage.redirect_base_url",
                "set, but storage.redirect is not: redirects are off",
            );
        }
        return None;
    };
    let expires = values::duration(errs, "storage.redirect", Some(expires), Duration::ZERO);
    if !matches!(url, StorageUrl::S3 { .. } | StorageUrl::Azure { .. }) {
        errs.push(
            "storage.redirect",
            format!("only for s3:// and az:// stores (clients cannot be sent to {url})"),
        );
        return None;
    }
    if expires < Duration::from_secs(1) || expires > MAX_REDIRECT {
        errs.push(
            "storage.redirect",
            "must be between 1s and 7d (how long a presigned URL stays valid)",
        );
        return None;
    }
    let base_url = match raw.redirect_base_url.as_deref() {
        None => None,
        Some(s) => match url::Url::parse(s) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some_and(|h| !h.is_empty())
                    && u.path() == "/"
                    && u.query().is_none() =>
            {
                Some(u)
            }
            _ => {
                errs.push(
                    "storage.redirect_base_url",
                    format!("{s:?}: must be an http(s) URL of a scheme, host and port only (e.g. \"https://cdn.example.com\")"),
                );
                None
            }
        },
    };
    Some(RedirectConfig { expires, base_url })
}

impl RawStorage {
    fn storage_url(&self) -> &str {
        self.url.as_deref().unwrap_or(DEFAULT_STORAGE)
    }
}

fn s3(raw: Option<RawS3>, base: Option<&Path>, errs: &mut Errors) -> S3Config {
    let Some(r) = raw else {
        return S3Config::default();
    };
    S3Config {
        endpoint: r.endpoint,
        region: r.region,
        allow_http: r.allow_http,
        virtual_hosted_style: r.virtual_hosted_style,
        access_key_id: r.access_key_id,
        secret_access_key: r
            .secret_access_key_file
            .and_then(|f| values::read_secret(errs, base, "storage.s3.secret_access_key_file", &f)),
    }
}

fn azure(raw: Option<RawAzure>, base: Option<&Path>, errs: &mut Errors) -> AzureConfig {
    let Some(r) = raw else {
        return AzureConfig::default();
    };
    AzureConfig {
        account: r.account,
        access_key: r.access_key_file.and_then(|f| {
            values::read_secret(errs, base, "storage.azure.access_key_file", &f)
                .map(|k| k.trim().to_string())
        }),
        endpoint: r.endpoint,
        allow_http: r.allow_http,
        use_emulator: r.use_emulator,
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
        if !valid_bucket(bucket) {
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
        if !valid_container(container) {
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

fn valid_bucket(bucket: &str) -> bool {
    bucket.len() >= 3
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Azure's rule: 3-63 of `[a-z0-9-]`, starting and ending with a letter or digit, no `--`.
fn valid_container(container: &str) -> bool {
    (3..=63).contains(&container.len())
        && container
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !container.starts_with('-')
        && !container.ends_with('-')
        && !container.contains("--")
}
