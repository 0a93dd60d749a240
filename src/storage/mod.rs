//! The cache in object storage: the key layout, verified writes, fast reads and the in-flight
//! de-duplication of blob fills.
//!
//! Everything archway needs to serve what it has cached lives here, so a restarted replica (or
//! another replica on the same bucket) serves it without the upstream. The in-memory caches in
//! `registry` only front this.

mod backend;
pub mod fill;
pub mod layout;
pub mod mapped;
mod pace;
pub mod records;
mod reserve;
mod sink;
pub mod versioned;

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::signer::Signer;
use object_store::{
    GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::{StorageConfig, StorageUrl};
use crate::error::{Error, Result};
use crate::oci::Digest;

pub use fill::{Fill, FillSource, Fills, Publish};
pub use sink::BlobSink;
pub use versioned::{Created, Versioned};

/// Size of each read when streaming a cached blob from local disk: large enough that syscalls
/// and task hand-offs vanish against the copy, small enough to keep memory per client flat.
const READ_CHUNK: usize = 128 * 1024;

/// A stream of blob bytes.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// Content bytes this process has added to the store, and a wake-up for whoever keeps the
/// store's size bounded: between two scans of the store, this is how its size is estimated.
#[derive(Debug, Default)]
pub struct WriteMeter {
    bytes: AtomicU64,
    notify: tokio::sync::Notify,
}

impl WriteMeter {
    fn add(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// Bytes added since start.
    pub fn total(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Resolves after the next addition (or at once if one happened since the last wait).
    pub async fn added(&self) {
        self.notify.notified().await
    }
}

/// Why the store cannot be opened at start-up.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("storage.spool_dir: cannot create {}", path.display())]
    Spool {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("storage.url: cannot use {}", path.display())]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("storage.url: cannot open {url}")]
    Backend {
        url: String,
        #[source]
        source: object_store::Error,
    },
}

/// The object store, plus what archway knows about its backend.
#[derive(Clone)]
pub struct Store {
    os: Arc<dyn ObjectStore>,
    meter: Arc<WriteMeter>,
    /// For `file://`: the root directory. Blobs are then staged beside their final place and
    /// renamed in, and read with large direct reads instead of object_store's 8 KiB chunks.
    local_root: Option<PathBuf>,
    /// Where fills of non-local backends spool bytes for concurrent readers.
    spool_dir: PathBuf,
    /// Azure keeps the blocks of an aborted upload (object_store's abort cannot drop them)
    /// until a week passes or the blob is committed: an abort there deletes the staged blob.
    aborts_leave_parts: bool,
    /// Presigns URLs clients can read a blob at (S3, Azure).
    signer: Option<Arc<dyn Signer>>,
    /// The last failure to cache a blob, until a later one is cached (`/readyz` says so).
    write_failure: Arc<std::sync::Mutex<Option<(u64, String)>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.os)
    }
}

impl Store {
    pub fn open(cfg: &StorageConfig) -> Result<Store, OpenError> {
        std::fs::create_dir_all(&cfg.spool_dir).map_err(|source| OpenError::Spool {
            path: cfg.spool_dir.clone(),
            source,
        })?;
        let backend = |source| OpenError::Backend {
            url: cfg.url.to_string(),
            source,
        };
        match &cfg.url {
            StorageUrl::S3 { bucket, prefix } => {
                let s3 = backend::s3(bucket, &cfg.s3).map_err(backend)?;
                Ok(Store::remote(s3, prefix, cfg, false))
            }
            StorageUrl::Azure { container, prefix } => {
                let az = backend::azure(container, &cfg.azure).map_err(backend)?;
                Ok(Store::remote(az, prefix, cfg, true))
            }
            StorageUrl::Memory => Ok(Store::from_object_store(
                Arc::new(InMemory::new()),
                cfg.spool_dir.clone(),
            )),
            StorageUrl::File(dir) => Store::local(dir, cfg),
        }
    }

    /// A store in a local directory: blobs are staged in `.staging/` beside their place and
    /// renamed in, so what a crashed process left there is cleaned up here.
    fn local(dir: &std::path::Path, cfg: &StorageConfig) -> Result<Store, OpenError> {
        let directory = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| OpenError::Directory { path, source }
        };
        std::fs::create_dir_all(dir).map_err(directory(dir))?;
        let root = std::fs::canonicalize(dir).map_err(directory(dir))?;
        let fs = LocalFileSystem::new_with_prefix(&root).map_err(|source| OpenError::Backend {
            url: cfg.url.to_string(),
            source,
        })?;
        let staging = root.join(sink::LOCAL_STAGING_DIR);
        std::fs::create_dir_all(&staging).map_err(directory(&staging))?;
        sink::clean_stale_staging(&staging);
        Ok(Store {
            os: Arc::new(fs),
            meter: Default::default(),
            local_root: Some(root),
            spool_dir: cfg.spool_dir.clone(),
            aborts_leave_parts: false,
            signer: None,
            write_failure: Default::default(),
        })
    }

    /// A store on a remote object store, under `prefix`.
    fn remote<O: ObjectStore + Signer>(
        os: O,
        prefix: &str,
        cfg: &StorageConfig,
        aborts_leave_parts: bool,
    ) -> Store {
        let (os, signer): (Arc<dyn ObjectStore>, Arc<dyn Signer>) = if prefix.is_empty() {
            let os = Arc::new(os);
            (os.clone(), os)
        } else {
            let os = Arc::new(PrefixStore::new(os, prefix));
            (os.clone(), os)
        };
        Store {
            os,
            meter: Default::default(),
            local_root: None,
            spool_dir: cfg.spool_dir.clone(),
            aborts_leave_parts,
            signer: Some(signer),
            write_failure: Default::default(),
        }
    }

    /// A store over any object_store backend (tests use this with `InMemory`).
    pub fn from_object_store(os: Arc<dyn ObjectStore>, spool_dir: PathBuf) -> Store {
        Store {
            os,
            meter: Default::default(),
            local_root: None,
            spool_dir,
            aborts_leave_parts: false,
            signer: None,
            write_failure: Default::default(),
        }
    }

    /// Whether this is a `file://` store: one process at a time, and no conditional
    /// replace (object_store's local backend has none).
    pub fn is_local(&self) -> bool {
        self.local_root.is_some()
    }

    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.os
    }

    pub fn meter(&self) -> &Arc<WriteMeter> {
        &self.meter
    }

    /// Every object under `prefix` (a top-level directory of the layout), with its size and
    /// modification time.
    pub fn list(&self, prefix: &str) -> BoxStream<'static, Result<ObjectMeta>> {
        self.os
            .list(Some(&Path::from(prefix)))
            .map_err(Error::from)
            .boxed()
    }

    /// Deletes an object; one that is already gone counts as deleted.
    pub async fn delete(&self, key: &Path) -> Result<()> {
        match self.os.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the object store answers now (a missing key is an answer).
    /// A blob could not be cached for a reason of the store's (a full disk, a failed
    /// upload): the cache is degraded until one is cached again.
    pub fn note_write_failure(&self, why: &str) {
        if let Ok(mut f) = self.write_failure.lock() {
            *f = Some((crate::clock::now_millis(), why.to_string()));
        }
    }

    /// A blob was cached: whatever failed before is over.
    pub fn note_write_ok(&self) {
        if let Ok(mut f) = self.write_failure.lock() {
            *f = None;
        }
    }

    /// When caching last failed and why, while no blob was cached since.
    pub fn degraded(&self) -> Option<(u64, String)> {
        self.write_failure.lock().ok().and_then(|f| f.clone())
    }

    pub async fn probe(&self) -> Result<()> {
        match self.os.head(&Path::from("readyz-probe")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The size of a cached blob, or `None` when it is not cached.
    pub async fn blob_size(&self, d: &Digest) -> Result<Option<u64>> {
        match self.os.head(&layout::blob(d)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Streams `range` of a cached blob (the whole blob for `None`). The range must lie within
    /// the blob; callers check it against [`Store::blob_size`].
    pub async fn read_blob(
        &self,
        d: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<Option<ByteStream>> {
        let key = layout::blob(d);
        if let Some(root) = &self.local_root {
            let path = root.join(key.as_ref());
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Error::io(format!("cannot open {}", path.display()), e)),
            };
            let range = match range {
                Some(r) => r,
                None => {
                    0..file
                        .metadata()
                        .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?
                        .len()
                }
            };
            // Never map past the end of the file: touching such a page is a fatal signal,
            // where a read reports a short file.
            let map = range.end - range.start >= mapped::MAP_AT_LEAST
                && file.metadata().is_ok_and(|m| m.len() >= range.end);
            if map {
                let file = Arc::new(file);
                let first = (range.end - range.start).min(mapped::MAP_WINDOW);
                match mapped::resident_window(&file, range.start, first) {
                    Ok(first) => return Ok(Some(mapped_stream(file, range, first))),
                    // Unusual file systems may refuse maps: read instead.
                    Err(e) => {
                        tracing::debug!(error = %crate::causes::Chain(&e), "cannot map a cache file; reading it");
                        return Ok(Some(file_stream(file, range)));
                    }
                }
            }
            return Ok(Some(file_stream(Arc::new(file), range)));
        }
        let opts = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        match self.os.get_opts(&key, opts).await {
            Ok(r) => Ok(Some(r.into_stream().map_err(std::io::Error::other).boxed())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A URL a client can GET the cached blob `d` at, valid for `expires`, when the backend
    /// presigns URLs (S3, Azure SAS). The object store then answers the client's `Range`
    /// itself.
    pub async fn blob_url(
        &self,
        d: &Digest,
        expires: std::time::Duration,
    ) -> Result<Option<url::Url>> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        Ok(Some(
            signer
                .signed_url(http::Method::GET, &layout::blob(d), expires)
                .await?,
        ))
    }

    /// Writes `stream` as the object `key` (a chunk of a blob upload), all or nothing: a
    /// multipart upload completed only when the stream ended cleanly. Its length.
    pub async fn put_stream(
        &self,
        key: &Path,
        mut stream: BoxStream<'static, Result<Bytes>>,
    ) -> Result<u64> {
        let upload = self.os.put_multipart(key).await?;
        let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, 8 * 1024 * 1024);
        let mut len = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = w.abort().await;
                    return Err(e);
                }
            };
            if let Err(e) = w.wait_for_capacity(2).await {
                let _ = w.abort().await;
                return Err(e.into());
            }
            len += chunk.len() as u64;
            w.put(chunk);
        }
        w.finish().await?;
        Ok(len)
    }

    /// Streams any object whole (a chunk of a blob upload); `None` when it is absent.
    pub async fn read_object(&self, key: &Path) -> Result<Option<ByteStream>> {
        match self.os.get(key).await {
            Ok(r) => Ok(Some(r.into_stream().map_err(std::io::Error::other).boxed())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads a small object (a manifest) whole.
    pub async fn read_small(&self, d: &Digest) -> Result<Option<Bytes>> {
        self.get_bytes(&layout::blob(d)).await
    }

    /// Stores content the caller has already verified against `d`. Content-addressed, so an
    /// existing object is the same bytes and counts as success.
    pub async fn put_verified(&self, d: &Digest, bytes: Bytes) -> Result<()> {
        debug_assert!(d.verify(&bytes));
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let key = layout::blob(d);
        let len = bytes.len() as u64;
        match self.os.put_opts(&key, bytes.clone().into(), opts).await {
            Ok(_) => {
                self.meter.add(len);
                Ok(())
            }
            Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            // A backend without conditional puts: overwriting with identical bytes is harmless.
            Err(object_store::Error::NotImplemented { .. }) => {
                self.os.put(&key, bytes.into()).await?;
                self.meter.add(len);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Starts writing a blob that will become visible only if it verifies. `size` is its
    /// announced length, if any; `on_progress` hears how many bytes are in the spool each
    /// time it grows.
    pub async fn begin_blob(
        &self,
        d: &Digest,
        size: Option<u64>,
        publish: Publish,
        on_progress: impl Fn(u64, &[Bytes]) + Send + 'static,
    ) -> Result<BlobSink> {
        BlobSink::new(self, d, size, publish, on_progress).await
    }

    pub async fn get_record<T: DeserializeOwned>(&self, key: &Path) -> Result<Option<T>> {
        match self.get_bytes(key).await? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::CorruptRecord {
                    key: key.to_string(),
                    source: Arc::new(e),
                }),
        }
    }

    /// Writes a record unless one is there already (the first writer's stands, so replicas
    /// that write the same key agree on its content).
    pub async fn put_record_if_absent<T: Serialize>(&self, key: &Path, value: &T) -> Result<()> {
        let body = serde_json::to_vec(value).map_err(|e| Error::Internal(e.to_string()))?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .os
            .put_opts(key, Bytes::from(body.clone()).into(), opts)
            .await
        {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(object_store::Error::NotImplemented { .. }) => {
                if self.get_bytes(key).await?.is_none() {
                    self.os.put(key, Bytes::from(body).into()).await?;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn put_record<T: Serialize>(&self, key: &Path, value: &T) -> Result<()> {
        let body = serde_json::to_vec(value).map_err(|e| Error::Internal(e.to_string()))?;
        self.os.put(key, Bytes::from(body).into()).await?;
        Ok(())
    }

    async fn get_bytes(&self, key: &Path) -> Result<Option<Bytes>> {
        match self.os.get(key).await {
            Ok(r) => Ok(Some(r.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Streams `range` of `file` as mapped windows, `first` being the first one if it was
/// resident. A window whose pages are all in the page cache is mapped right on the runtime
/// thread: a map that reads nothing costs a syscall, never the disk. Only one that is not
/// goes to the blocking pool to be read in. Handing every window over from a blocking
/// thread (the thread woken, a channel, the runtime woken back) cost more CPU per GB than
/// sendfile spends sending it.
fn mapped_stream(file: Arc<std::fs::File>, range: Range<u64>, first: Option<Bytes>) -> ByteStream {
    let end = range.end;
    futures_util::stream::try_unfold((range.start, first), move |(pos, resident)| {
        let file = file.clone();
        async move {
            if pos >= end {
                return Ok(None);
            }
            let want = (end - pos).min(mapped::MAP_WINDOW);
            let window = match resident {
                Some(w) => w,
                None => match mapped::resident_window(&file, pos, want)? {
                    Some(w) => w,
                    None => tokio::task::spawn_blocking(move || mapped::window(&file, pos, want))
                        .await
                        .map_err(std::io::Error::other)??,
                },
            };
            Ok(Some((window, (pos + want, None))))
        }
    })
    .boxed()
}

/// Streams `range` of `file` from the blocking pool, one task per response, in large
/// sequential reads. `read_to_end` into a fresh buffer fills it without zeroing it first,
/// which at disk-cache speeds is a measurable share of the copy.
fn file_stream(file: Arc<std::fs::File>, range: Range<u64>) -> ByteStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek, SeekFrom};
        if let Err(e) = (&*file).seek(SeekFrom::Start(range.start)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        let mut pos = range.start;
        while pos < range.end {
            let want = (range.end - pos).min(READ_CHUNK as u64);
            let mut buf = Vec::with_capacity(want as usize);
            let item = match (&*file).take(want).read_to_end(&mut buf) {
                Ok(0) => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "cached blob is shorter than expected",
                )),
                Ok(n) => {
                    pos += n as u64;
                    Ok(Bytes::from(buf))
                }
                Err(e) => Err(e),
            };
            let stop = item.is_err();
            if tx.blocking_send(item).is_err() || stop {
                return;
            }
        }
    });
    tokio_stream_from(rx)
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> BoxStream<'static, T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}
