//! Blob uploads into a hosted repository, as the distribution spec has them: monolithic
//! (`POST ?digest=`, or `POST` then `PUT ?digest=` with the body), chunked (`PATCH` with
//! `Content-Range`, in order) and streamed (`PATCH` without it), with status, cancel and
//! cross-repository mount.
//!
//! An upload is a record in the store plus one object per chunk, so it survives a restart
//! and any replica can continue it. Its bytes become a blob only at the final `PUT`, through
//! the same verified sink as a fill: hashed as they are written, and published only if they
//! hash to the digest the client named. A chunk that does not continue the upload where it
//! stands is refused with 416 and the upload's range, and never written.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};

use super::records::UploadRecord;
use super::{Hosted, Repo};
use crate::clock::now_millis;
use crate::error::{Error, Result};
use crate::oci::Digest;
use crate::storage::{layout, Publish, Versioned};
use object_store::path::Path;

/// An upload nobody touched for this long is gone: its chunks are deleted by the next sweep,
/// and the client gets `BLOB_UPLOAD_UNKNOWN`.
pub const UPLOAD_TTL: Duration = Duration::from_secs(24 * 3600);

/// A request body, as the handlers pass it on.
pub type Body = BoxStream<'static, Result<Bytes>>;

/// A `Content-Range` of a `PATCH`: the first and last byte it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRange {
    pub start: u64,
    pub end: u64,
}

impl ChunkRange {
    /// `<start>-<end>` (as the spec writes it; `bytes=` and `bytes ` prefixes accepted).
    pub fn parse(s: &str) -> Option<ChunkRange> {
        let s = s.trim();
        let s = s
            .strip_prefix("bytes=")
            .or_else(|| s.strip_prefix("bytes "))
            .unwrap_or(s);
        let s = s.split('/').next()?;
        let (a, b) = s.split_once('-')?;
        let (start, end) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        (start <= end).then_some(ChunkRange { start, end })
    }

    fn len(&self) -> u64 {
        self.end - self.start + 1
    }
}

impl Hosted {
    /// Starts an upload into `r`; its id.
    pub async fn start_upload(&self, r: &Repo) -> Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        let record = UploadRecord {
            registry: r.registry.clone(),
            repo: r.repo.to_string(),
            size: 0,
            chunks: Vec::new(),
            updated_at: now_millis(),
        };
        self.store.put_record(&layout::upload(&id), &record).await?;
        Ok(id)
    }

    /// The upload `id` of `r`, if it is one that is still going.
    async fn upload(&self, r: &Repo, id: &str) -> Result<Versioned<UploadRecord>> {
        let unknown = || Error::UploadUnknown(format!("no upload {id} in {r}"));
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(unknown());
        }
        let rec = self
            .store
            .get_versioned::<UploadRecord>(&layout::upload(id))
            .await?
            .ok_or_else(unknown)?;
        let v = &rec.value;
        let expired = now_millis().saturating_sub(v.updated_at) > UPLOAD_TTL.as_millis() as u64;
        if v.registry != r.registry || v.repo != r.repo.as_str() || expired {
            return Err(unknown());
        }
        Ok(rec)
    }

    /// How many bytes the upload holds.
    pub async fn upload_size(&self, r: &Repo, id: &str) -> Result<u64> {
        Ok(self.upload(r, id).await?.value.size)
    }

    /// Appends a `PATCH` body; the upload's size after it. `range` is the request's
    /// `Content-Range` (a streamed upload has none); `location` the upload's URL, for the
    /// answer to a chunk out of order.
    pub async fn append(
        &self,
        r: &Repo,
        id: &str,
        range: Option<ChunkRange>,
        body: Body,
        location: &str,
    ) -> Result<u64> {
        // One chunk at a time per upload in this process; across replicas, the conditional
        // replace below decides.
        let lock = self.upload_lock(id);
        let _held = lock.lock().await;
        let rec = self.upload(r, id).await?;
        let size = rec.value.size;
        let out_of_order = || Error::UploadRange {
            size,
            location: location.to_string(),
        };
        if range.is_some_and(|c| c.start != size) {
            return Err(out_of_order());
        }
        let mut body = body.peekable();
        if std::pin::Pin::new(&mut body).peek().await.is_none() {
            return Ok(size);
        }
        let chunk = layout::upload_chunk(id, size);
        let written = self.store.put_stream(&chunk, body.boxed()).await?;
        if let Some(c) = range.filter(|c| c.len() != written) {
            let _ = self.store.delete(&chunk).await;
            return Err(Error::SizeInvalid(format!(
                "Content-Range {}-{} announces {} bytes, the body has {written}",
                c.start,
                c.end,
                c.len()
            )));
        }
        let mut next = rec.value.clone();
        next.size += written;
        next.chunks.push(size);
        next.updated_at = now_millis();
        // Two chunks at once for the same offset: one wins, the other is out of order. A
        // local store is one process's, and the lock above orders its chunks.
        if self.store.is_local() {
            self.store.put_record(&layout::upload(id), &next).await?;
        } else if self
            .store
            .replace_record(&layout::upload(id), &next, &rec)
            .await?
            .is_none()
        {
            let _ = self.store.delete(&chunk).await;
            return Err(out_of_order());
        }
        Ok(next.size)
    }

    /// Completes the upload as blob `d` (after a last chunk, when the `PUT` carries one):
    /// verified, published, linked to `r`, and the upload gone. On a digest that does not
    /// match, nothing is published and the upload is discarded.
    pub async fn finish(
        &self,
        r: &Repo,
        id: &str,
        d: &Digest,
        range: Option<ChunkRange>,
        body: Body,
        location: &str,
    ) -> Result<u64> {
        self.append(r, id, range, body, location).await?;
        let rec = self.upload(r, id).await?.value;
        let chunks: Vec<_> = rec
            .chunks
            .iter()
            .map(|o| layout::upload_chunk(id, *o))
            .collect();
        let (store, owner) = (self.store.clone(), id.to_string());
        let stream = futures_util::stream::iter(chunks)
            .then(move |key| {
                let (store, owner) = (store.clone(), owner.clone());
                async move {
                    store.read_object(&key).await?.ok_or_else(|| {
                        Error::UploadInvalid(format!("a chunk of upload {owner} is missing"))
                    })
                }
            })
            .map_ok(|s| s.map_err(|e| Error::io("cannot read an upload chunk", e)))
            .try_flatten()
            .boxed();
        let result = self.publish(d, Some(rec.size), stream).await;
        self.discard(id, &rec).await;
        let size = result?;
        self.link_blob(r, d, size).await?;
        Ok(size)
    }

    /// A blob pushed in one request (`POST ?digest=` with the body).
    pub async fn monolithic(&self, r: &Repo, d: &Digest, body: Body) -> Result<u64> {
        let size = self.publish(d, None, body).await?;
        self.link_blob(r, d, size).await?;
        Ok(size)
    }

    /// Writes `body` as blob `d` through the verified sink.
    async fn publish(&self, d: &Digest, size: Option<u64>, mut body: Body) -> Result<u64> {
        let mut sink = self
            .store
            .begin_blob(d, size, Publish::Always, |_, _| {})
            .await?;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) => sink.write(c).await?,
                Err(e) => {
                    sink.abort().await;
                    return Err(e);
                }
            }
        }
        sink.commit(size).await.map_err(|e| match e {
            Error::DigestMismatch { expected, actual } => Error::DigestWrong { expected, actual },
            Error::SizeMismatch {
                announced, actual, ..
            } => Error::SizeInvalid(format!(
                "the upload holds {actual} bytes, {announced} were announced"
            )),
            e => e,
        })
    }

    fn upload_lock(&self, id: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        self.upload_locks.get_with(id.to_string(), || {
            std::sync::Arc::new(tokio::sync::Mutex::new(()))
        })
    }

    /// Cancels an upload: its chunks and record go.
    pub async fn cancel(&self, r: &Repo, id: &str) -> Result<()> {
        let rec = self.upload(r, id).await?.value;
        self.discard(id, &rec).await;
        Ok(())
    }

    async fn discard(&self, id: &str, rec: &UploadRecord) {
        for o in &rec.chunks {
            let _ = self.store.delete(&layout::upload_chunk(id, *o)).await;
        }
        let _ = self.store.delete(&layout::upload(id)).await;
    }

    /// Deletes uploads idle for longer than [`UPLOAD_TTL`], and chunks no upload owns; how
    /// many objects went.
    pub async fn expire_uploads(&self) -> Result<usize> {
        let keys: Vec<_> = self
            .store
            .list(layout::UPLOADS)
            .map_ok(|m| (m.location, m.last_modified.timestamp_millis().max(0) as u64))
            .try_collect()
            .await?;
        let cutoff = now_millis().saturating_sub(UPLOAD_TTL.as_millis() as u64);
        let mut gone = 0;
        for (key, modified) in keys {
            if modified >= cutoff {
                continue;
            }
            let parts: Vec<&str> = key.as_ref().split('/').collect();
            let stale = match parts.as_slice() {
                [_, record] => self
                    .store
                    .get_record::<UploadRecord>(&Path::from(format!(
                        "{}/{record}",
                        layout::UPLOADS
                    )))
                    .await
                    .ok()
                    .flatten()
                    .is_none_or(|r| r.updated_at < cutoff),
                // A chunk: stale once its upload's record is (or is gone).
                [_, id, _] => self
                    .store
                    .get_record::<UploadRecord>(&layout::upload(id))
                    .await
                    .ok()
                    .flatten()
                    .is_none_or(|r| r.updated_at < cutoff),
                _ => false,
            };
            if stale && self.store.delete(&key).await.is_ok() {
                gone += 1;
            }
        }
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        let r = |s| ChunkRange::parse(s);
        assert_eq!(r("0-99"), Some(ChunkRange { start: 0, end: 99 }));
        assert_eq!(
            r("bytes=100-199"),
            Some(ChunkRange {
                start: 100,
                end: 199
            })
        );
        assert_eq!(r("bytes 5-5/10"), Some(ChunkRange { start: 5, end: 5 }));
        assert_eq!(r("9-1"), None);
        assert_eq!(r("x-1"), None);
        assert_eq!(r("100"), None);
    }
}
