//! Verified blob writes: bytes are hashed as they arrive and published only when the digest
//! (and size) match. Until then nothing is visible under the blob's key.
//!
//! Every sink also keeps a spool file that concurrent readers of the in-flight blob read from.
//! On local disk the spool *is* the staged file, renamed into place on success, so a cold blob
//! is written once; on other backends the spool is an unlinked temp file beside a multipart
//! upload, whose `complete()` is the atomic publish.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::reserve::Reservation;
use super::{layout, Publish, Store};
use crate::error::{Error, Result};
use crate::oci::{Digest, Hasher};

/// Staging directory under a local store's root. Its name starts with a dot, which no key of
/// the layout can, so it never collides with cached content.
pub(crate) const LOCAL_STAGING_DIR: &str = ".staging";

/// Part size for multipart uploads: S3's minimum part is 5 MiB.
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts in flight per upload; bounds a fill's memory to about PART_SIZE * (this + 1).
const PARTS_IN_FLIGHT: usize = 2;

pub struct BlobSink {
    digest: Digest,
    spool: Arc<std::fs::File>,
    /// Every byte handed to `write`, hashed there, on the fill's task: a chunk just read
    /// from the socket is still in the CPU's cache. SHA-256 ran at 1.7 GB/s over cached
    /// data here and 1.2 over data that had left the cache, and the writer thread, a queue
    /// of chunks behind the socket, hashed at about 1.1 (perf of pinned cold pulls). The
    /// price is a runtime thread busy for up to a quarter of a millisecond per chunk (hyper
    /// reads at most about 400 KiB at a time).
    hasher: Option<Hasher>,
    /// Chunks on their way to the writer thread.
    chunks: Option<mpsc::Sender<Bytes>>,
    /// Spools on the blocking pool, so reading the upstream and writing to disk overlap
    /// instead of taking turns on one task.
    writer: Option<JoinHandle<Spooled>>,
    /// How many bytes the spool holds when writing it failed (disk full); `u64::MAX` while
    /// it holds them all. Readers behind that read the fill's memory or fail.
    spool_limit: Arc<AtomicU64>,
    queued: u64,
    target: Target,
    meter: Arc<super::WriteMeter>,
}

/// Chunks queued per fill: bounds a fill's memory while the writer catches up.
const QUEUED_CHUNKS: usize = 16;

/// What the writer thread saw: the length of every byte, and why the spool stopped taking
/// them, if it did.
struct Spooled {
    written: u64,
    broken: Option<std::io::Error>,
}

/// Writes every chunk to the spool. When the spool cannot be written (the disk is full) the
/// bytes still count: they are reported, so readers at the live tail get them from the
/// fill's memory, and the digest (taken by the sink) is still checked at the end; only
/// caching is given up.
fn writer_loop(
    spool: Arc<std::fs::File>,
    mut reservation: Reservation,
    mut rx: mpsc::Receiver<Bytes>,
    spool_limit: Arc<AtomicU64>,
    on_progress: impl Fn(u64, &[Bytes]),
) -> Spooled {
    let mut written = 0u64;
    let mut broken: Option<std::io::Error> = None;
    let mut batch = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < QUEUED_CHUNKS {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        if broken.is_none() {
            let end = written + batch.iter().map(|c| c.len() as u64).sum::<u64>();
            reservation.ahead(&spool, end);
        }
        for c in &batch {
            if broken.is_none() {
                if let Err(e) = (&*spool).write_all(c) {
                    // What a short write put in the file is not trusted either.
                    spool_limit.store(written, Ordering::Release);
                    tracing::warn!(error = %e, at = written, "cannot write the blob to the cache; streaming it on to its clients without caching it");
                    broken = Some(e);
                }
            }
            written += c.len() as u64;
        }
        on_progress(written, &batch);
        batch.clear();
    }
    reservation.release(&spool);
    Spooled { written, broken }
}

enum Target {
    Local {
        staged: PathBuf,
        final_path: PathBuf,
        published: bool,
    },
    Multipart {
        writer: Option<WriteMultipart>,
        /// Where staged parts outlive an abort (Azure): the store and key to clean up.
        leftover: Option<(Arc<dyn ObjectStore>, object_store::path::Path)>,
    },
    /// Spool only; uploaded from the spool at commit if `publish` is set by then.
    Deferred {
        publish: Arc<std::sync::atomic::AtomicBool>,
        os: Arc<dyn ObjectStore>,
    },
}

impl BlobSink {
    /// `size` is the announced length, when there is one (disk space is claimed for it
    /// ahead of the writes); `on_progress` is called each time the spool grows, with its
    /// length and the chunks just written (which end at that length).
    pub(super) async fn new(
        store: &Store,
        d: &Digest,
        size: Option<u64>,
        publish: Publish,
        on_progress: impl Fn(u64, &[Bytes]) + Send + 'static,
    ) -> Result<BlobSink> {
        let io = |what: &str, path: &std::path::Path, e| {
            Error::io(format!("cannot create the {what} {}", path.display()), e)
        };
        let name = format!("{}-{}", d.hex(), uuid::Uuid::new_v4().simple());
        let (spool, target) = match &store.local_root {
            Some(root) => {
                let staged = root.join(LOCAL_STAGING_DIR).join(&name);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&staged)
                    .map_err(|e| io("staging file", &staged, e))?;
                // Held while the fill runs (it goes with the descriptor, also on SIGKILL):
                // how a start-up tells a crashed fill's leftover from a running one.
                let _ = file.try_lock();
                let final_path = root.join(layout::blob(d).as_ref());
                (
                    file,
                    Target::Local {
                        staged,
                        final_path,
                        published: false,
                    },
                )
            }
            None => {
                let path = store.spool_dir.join(&name);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| io("spool file", &path, e))?;
                // Unlinked at once: readers share the descriptor, and a crash leaves nothing.
                let _ = std::fs::remove_file(&path);
                let target = match publish {
                    Publish::IfAsked(publish) => Target::Deferred {
                        publish,
                        os: store.os.clone(),
                    },
                    Publish::Always => {
                        let upload = store.os.put_multipart(&layout::blob(d)).await?;
                        Target::Multipart {
                            writer: Some(WriteMultipart::new_with_chunk_size(upload, PART_SIZE)),
                            leftover: store
                                .aborts_leave_parts
                                .then(|| (store.os.clone(), layout::blob(d))),
                        }
                    }
                };
                (file, target)
            }
        };
        let spool = Arc::new(spool);
        let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
        let (file, spool_limit) = (spool.clone(), Arc::new(AtomicU64::new(u64::MAX)));
        let limit = spool_limit.clone();
        let reservation = Reservation::new(size);
        let writer = tokio::task::spawn_blocking(move || {
            writer_loop(file, reservation, rx, limit, on_progress)
        });
        Ok(BlobSink {
            digest: d.clone(),
            spool,
            spool_limit,
            hasher: Some(Hasher::new(d.algorithm())),
            chunks: Some(tx),
            writer: Some(writer),
            queued: 0,
            target,
            meter: store.meter.clone(),
        })
    }

    /// The spool that readers of the in-flight blob read with positional reads.
    pub fn spool(&self) -> Arc<std::fs::File> {
        self.spool.clone()
    }

    /// How much of the blob the spool holds: `u64::MAX` unless writing it failed.
    pub fn spool_limit(&self) -> Arc<AtomicU64> {
        self.spool_limit.clone()
    }

    /// Bytes handed to [`BlobSink::write`] so far.
    pub fn queued(&self) -> u64 {
        self.queued
    }

    /// Appends a chunk.
    pub async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.queued += chunk.len() as u64;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&chunk);
        }
        let tx = self
            .chunks
            .as_ref()
            .ok_or_else(|| Error::Internal("blob sink already finished".into()))?;
        if tx.send(chunk.clone()).await.is_err() {
            // The writer stopped: its error is reported by commit.
            return Err(self
                .finish_writer()
                .await
                .err()
                .unwrap_or_else(|| Error::Internal("spool writer stopped".into())));
        }
        if let Target::Multipart {
            writer: Some(w), ..
        } = &mut self.target
        {
            w.wait_for_capacity(PARTS_IN_FLIGHT).await?;
            w.put(chunk);
        }
        Ok(())
    }

    /// Verifies the content and publishes it. On a mismatch nothing becomes visible and the
    /// error names both digests.
    pub async fn commit(self, expected_size: Option<u64>) -> Result<u64> {
        self.commit_then(expected_size, |_| {}).await
    }

    /// [`commit`](Self::commit), calling `verified` with the length once the digest and size
    /// check out and before the content is published: readers may have every byte then,
    /// while the publishing (an fsync, an upload's completion) goes on.
    pub async fn commit_then(
        mut self,
        expected_size: Option<u64>,
        verified: impl FnOnce(u64),
    ) -> Result<u64> {
        let Spooled { written, broken } = match self.finish_writer().await {
            Ok(r) => r,
            Err(e) => {
                self.abort_now().await;
                return Err(e);
            }
        };
        let Some(actual) = self.hasher.take().map(Hasher::finish) else {
            self.abort_now().await;
            return Err(Error::Internal("blob sink committed twice".into()));
        };
        if actual != self.digest {
            self.abort_now().await;
            return Err(Error::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        if let Some(size) = expected_size {
            if size != written {
                self.abort_now().await;
                return Err(Error::SizeMismatch {
                    digest: self.digest.clone(),
                    announced: size,
                    actual: written,
                });
            }
        }
        // A multipart upload got every byte from `write`, not from the spool: it may still
        // complete. Elsewhere the spool is what would be published.
        if let (Some(e), false) = (broken, matches!(self.target, Target::Multipart { .. })) {
            verified(written);
            self.abort_now().await;
            return Err(Error::io(
                "the cache would not take the blob (it was served, not cached)",
                e,
            ));
        }
        // On local disk the readers go first: publishing there is flushing the file to disk,
        // which the client need not wait for; a request arriving meanwhile joins the fill.
        // Object stores publish first, so a client holding the whole blob finds it cached
        // (and redirected) on its next request.
        let mut verified = Some(verified);
        if matches!(self.target, Target::Local { .. }) {
            if let Some(v) = verified.take() {
                v(written);
            }
        }
        match &mut self.target {
            Target::Local {
                staged,
                final_path,
                published,
            } => {
                let (spool, from, to) = (self.spool.clone(), staged.clone(), final_path.clone());
                tokio::task::spawn_blocking(move || publish_local(&spool, &from, &to))
                    .await
                    .map_err(|e| Error::Internal(format!("publishing stopped: {e}")))??;
                *published = true;
            }
            Target::Multipart { writer, .. } => {
                if let Some(w) = writer.take() {
                    w.finish().await?;
                }
            }
            Target::Deferred { publish, os } => {
                if !publish.load(std::sync::atomic::Ordering::SeqCst) {
                    return Ok(written);
                }
                upload_spool(&**os, &self.digest, &self.spool, written).await?;
            }
        }
        if let Some(v) = verified.take() {
            v(written);
        }
        self.meter.add(written);
        Ok(written)
    }

    /// Closes the chunk queue and waits for the writer: the digest and length it saw.
    async fn finish_writer(&mut self) -> Result<Spooled> {
        self.chunks = None;
        let writer = self
            .writer
            .take()
            .ok_or_else(|| Error::Internal("blob sink finished twice".into()))?;
        writer
            .await
            .map_err(|e| Error::Internal(format!("the spool writer stopped: {e}")))
    }

    /// Discards everything written.
    pub async fn abort(mut self) {
        self.abort_now().await;
    }

    async fn abort_now(&mut self) {
        match &mut self.target {
            Target::Local { staged, .. } => {
                let _ = std::fs::remove_file(&*staged);
            }
            Target::Multipart { writer, leftover } => {
                if let Some(w) = writer.take() {
                    let _ = w.abort().await;
                    if let Some((os, key)) = leftover.take() {
                        discard_staged(&*os, &key).await;
                    }
                }
            }
            // Nothing uploaded; the spool goes with its descriptor.
            Target::Deferred { .. } => {}
        }
    }
}

/// Uploads a verified spool as the blob `d`: a fill that only verified (another replica was
/// publishing) and has to publish after all. A failed upload leaves nothing visible.
async fn upload_spool(
    os: &dyn ObjectStore,
    d: &Digest,
    spool: &Arc<std::fs::File>,
    len: u64,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let upload = os.put_multipart(&layout::blob(d)).await?;
    let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    let mut pos = 0u64;
    while pos < len {
        let want = (len - pos).min(PART_SIZE as u64) as usize;
        let file = spool.clone();
        let chunk = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; want];
            file.read_exact_at(&mut buf, pos).map(|()| buf)
        })
        .await
        .map_err(|e| Error::Internal(format!("spool reader stopped: {e}")))?
        .map_err(|e| Error::io("cannot read the spool back", e))?;
        if let Err(e) = w.wait_for_capacity(PARTS_IN_FLIGHT).await {
            let _ = w.abort().await;
            return Err(e.into());
        }
        w.put(chunk.into());
        pos += want as u64;
    }
    w.finish().await?;
    Ok(())
}

/// Drops the staged parts of an aborted upload where the store keeps them (Azure): deleting
/// a blob that has staged blocks but no committed content discards the blocks. Only when
/// nothing is committed there: another replica may have committed the same content since.
/// (Between the check and the delete, such a commit would be lost; the next reader then
/// finds the blob missing and fetches it again.)
async fn discard_staged(os: &dyn ObjectStore, key: &object_store::path::Path) {
    if let Err(object_store::Error::NotFound { .. }) = os.head(key).await {
        if let Err(e) = os.delete(key).await {
            if !matches!(e, object_store::Error::NotFound { .. }) {
                tracing::debug!(key = %key, error = %crate::causes::Chain(&e), "cannot discard the parts of an aborted upload");
            }
        }
    }
}

impl Drop for BlobSink {
    fn drop(&mut self) {
        match &mut self.target {
            Target::Local {
                staged, published, ..
            } if !*published => {
                let _ = std::fs::remove_file(&*staged);
            }
            Target::Multipart { writer, leftover } => {
                if let Some(w) = writer.take() {
                    let leftover = leftover.take();
                    if let Ok(rt) = tokio::runtime::Handle::try_current() {
                        rt.spawn(async move {
                            let _ = w.abort().await;
                            if let Some((os, key)) = leftover {
                                discard_staged(&*os, &key).await;
                            }
                        });
                    }
                }
            }
            _ => {}
        }
    }
}

/// Puts a verified staged file in its place so that a power cut cannot leave it there
/// half-written: its data reaches the disk before the rename, and the rename before the
/// blob is reported cached (rename(2) is atomic: readers see no file or the whole file).
fn publish_local(
    spool: &std::fs::File,
    staged: &std::path::Path,
    final_path: &std::path::Path,
) -> Result<()> {
    spool
        .sync_data()
        .map_err(|e| Error::io(format!("cannot flush {} to disk", staged.display()), e))?;
    let parent = final_path.parent();
    if let Some(parent) = parent {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("cannot create {}", parent.display()), e))?;
    }
    std::fs::rename(staged, final_path)
        .map_err(|e| Error::io(format!("cannot publish {}", final_path.display()), e))?;
    if let Some(dir) = parent.and_then(|p| std::fs::File::open(p).ok()) {
        dir.sync_all()
            .map_err(|e| Error::io(format!("cannot flush {} to disk", final_path.display()), e))?;
    }
    Ok(())
}

/// Removes the staged files of fills that no process runs any more (a crash, a SIGKILL, a
/// power cut): each running fill holds a lock on its file, so one that can be locked is a
/// leftover. They are removed rather than resumed: a cold fill resumes from the upstream
/// with `Range` anyway, and a leftover's bytes were never verified. Files touched in the
/// last seconds are left alone: a fill locks its file just after creating it.
pub(crate) fn clean_stale_staging(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let fresh = SystemTime::now() - FRESH_STAGING;
    let mut removed = 0;
    for e in entries.flatten() {
        let recent = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t > fresh);
        if recent {
            continue;
        }
        let Ok(f) = OpenOptions::new().read(true).write(true).open(e.path()) else {
            continue;
        };
        if f.try_lock().is_ok() && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(dir = %dir.display(), files = removed, "removed the staged files of fills that ended with their process");
    }
    removed
}

/// How long a new staged file may go unlocked (it is locked right after it is created).
const FRESH_STAGING: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{StorageConfig, StorageUrl};
    use futures_util::TryStreamExt;

    #[test]
    fn only_the_staged_files_of_ended_fills_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, age: u64| {
            let p = dir.path().join(name);
            let f = std::fs::File::create(&p).unwrap();
            f.set_modified(SystemTime::now() - Duration::from_secs(age))
                .unwrap();
            f
        };
        let _crashed = file("crashed", 120);
        let running = file("running", 120);
        running.try_lock().unwrap();
        let _new = file("just-created", 0);
        assert_eq!(clean_stale_staging(dir.path()), 1);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["just-created", "running"]);
        drop(running);
        assert_eq!(clean_stale_staging(dir.path()), 1, "its process ended");
    }

    fn stores(dir: &std::path::Path) -> Vec<Store> {
        let spool = dir.join("spool");
        vec![
            Store::open(&StorageConfig {
                s3: Default::default(),
                azure: Default::default(),
                gc: Default::default(),
                redirect: None,
                url: StorageUrl::File(dir.join("disk")),
                spool_dir: spool.clone(),
            })
            .unwrap(),
            Store::open(&StorageConfig {
                s3: Default::default(),
                azure: Default::default(),
                gc: Default::default(),
                redirect: None,
                url: StorageUrl::Memory,
                spool_dir: spool,
            })
            .unwrap(),
        ]
    }

    async fn read_all(store: &Store, d: &Digest) -> Option<Vec<u8>> {
        let s = store.read_blob(d, None).await.unwrap()?;
        let chunks: Vec<Bytes> = s.try_collect().await.unwrap();
        Some(chunks.concat())
    }

    async fn read_range(store: &Store, d: &Digest, r: std::ops::Range<u64>) -> Vec<u8> {
        let s = store.read_blob(d, Some(r)).await.unwrap().unwrap();
        let chunks: Vec<Bytes> = s.try_collect().await.unwrap();
        chunks.concat()
    }

    #[tokio::test]
    async fn verified_blob_becomes_visible_only_after_commit() {
        let dir = tempfile::tempdir().unwrap();
        for store in stores(dir.path()) {
            let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
            let d = Digest::sha256_of(&data);
            let size = Some(data.len() as u64);
            let mut sink = store
                .begin_blob(&d, size, Publish::Always, |_, _| {})
                .await
                .unwrap();
            for c in data.chunks(100_000) {
                sink.write(Bytes::copy_from_slice(c)).await.unwrap();
                assert_eq!(store.blob_size(&d).await.unwrap(), None, "{store:?}");
            }
            assert_eq!(
                sink.commit(Some(data.len() as u64)).await.unwrap(),
                data.len() as u64
            );
            assert_eq!(store.blob_size(&d).await.unwrap(), Some(data.len() as u64));
            assert_eq!(read_all(&store, &d).await.unwrap(), data);
            assert_eq!(read_range(&store, &d, 10..20).await, &data[10..20]);
            // Large ranges of local files are sent from memory maps: unaligned offsets and
            // ends that are not a multiple of the map window.
            for r in [4097..2_900_001u64, 0..1_048_576, 1_000_000..3_000_000] {
                assert_eq!(
                    read_range(&store, &d, r.clone()).await,
                    &data[r.start as usize..r.end as usize],
                    "{r:?}"
                );
            }
        }
    }

    /// A blob written with its size announced has its space claimed ahead of its writes;
    /// once published it holds its own bytes and no claimed space past them.
    #[tokio::test]
    async fn a_published_blob_holds_no_space_past_its_end() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = stores(dir.path()).remove(0);
        let data: Vec<u8> = (0..40_000_000u32).map(|i| (i % 241) as u8).collect();
        let d = Digest::sha256_of(&data);
        // What the staged file held after each batch: (bytes written, bytes allocated).
        let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
        let written_one = Arc::new(tokio::sync::Notify::new());
        let (seen, notify) = (batches.clone(), written_one.clone());
        let staging = dir.path().join("disk").join(LOCAL_STAGING_DIR);
        let mut sink = store
            .begin_blob(&d, Some(data.len() as u64), Publish::Always, move |n, _| {
                for e in std::fs::read_dir(&staging).unwrap() {
                    let blocks = e.unwrap().metadata().unwrap().blocks() * 512;
                    seen.lock().unwrap().push((n, blocks));
                }
                notify.notify_one();
            })
            .await
            .unwrap();
        sink.write(Bytes::copy_from_slice(&data[..2_000_000]))
            .await
            .unwrap();
        // The first batch alone, so its claim is seen before more bytes arrive.
        written_one.notified().await;
        for c in data[2_000_000..].chunks(4_000_000) {
            sink.write(Bytes::copy_from_slice(c)).await.unwrap();
        }
        sink.commit(Some(data.len() as u64)).await.unwrap();
        let first = batches.lock().unwrap()[0];
        assert_eq!(first.0, 2_000_000);
        assert!(first.1 >= 32 * 1024 * 1024, "first batch: {first:?}");
        let path = dir.path().join("disk").join(layout::blob(&d).as_ref());
        let meta = std::fs::metadata(path).unwrap();
        assert_eq!(meta.len(), data.len() as u64);
        assert!(
            meta.blocks() * 512 < data.len() as u64 + 1024 * 1024,
            "{} bytes allocated",
            meta.blocks() * 512
        );
    }

    #[tokio::test]
    async fn mismatch_and_drop_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        for store in stores(dir.path()) {
            let d = Digest::sha256_of(b"the real content");
            let mut sink = store
                .begin_blob(&d, None, Publish::Always, |_, _| {})
                .await
                .unwrap();
            sink.write(Bytes::from_static(b"evil content"))
                .await
                .unwrap();
            let err = sink.commit(None).await.unwrap_err();
            assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
            assert_eq!(store.blob_size(&d).await.unwrap(), None);

            // Right bytes, wrong announced size.
            let mut sink = store
                .begin_blob(&d, None, Publish::Always, |_, _| {})
                .await
                .unwrap();
            sink.write(Bytes::from_static(b"the real content"))
                .await
                .unwrap();
            assert!(sink.commit(Some(99)).await.is_err());
            assert_eq!(store.blob_size(&d).await.unwrap(), None);

            // Dropped mid-way (a cut connection).
            let mut sink = store
                .begin_blob(&d, None, Publish::Always, |_, _| {})
                .await
                .unwrap();
            sink.write(Bytes::from_static(b"the real")).await.unwrap();
            drop(sink);
            assert_eq!(store.blob_size(&d).await.unwrap(), None);
        }
        let staging = dir.path().join("disk").join(LOCAL_STAGING_DIR);
        assert_eq!(std::fs::read_dir(staging).unwrap().count(), 0);
    }
}
