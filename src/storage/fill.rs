//! In-flight blob fills: one upstream fetch per digest, however many clients ask at once, and
//! every one of them streaming the bytes as they arrive.
//!
//! A fill is a spawned task, owned by no request: a client that disconnects or reads slowly
//! neither cancels nor throttles it (distribution's proxy ties the fill to its first client
//! and sends concurrent clients back to the upstream). Readers, the first client included,
//! follow the fill's spool file, woken by a `watch` of the byte count: large ranges as maps of
//! the spool (which a plain-HTTP socket sends with sendfile), small ones from memory.
//! The last byte of a blob is released only after the digest verified, so a client never
//! receives a complete response for content that failed verification.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::sync::watch;

use super::mapped::{self, MAP_WINDOW};
use super::pace::{Mark, Places, PATIENCE};
use super::{ByteStream, Store};
use crate::error::{Error, Result};
use crate::oci::Digest;

/// What a fill reads from: the upstream response (already checked for status), another
/// replica's fill, or the store.
pub struct FillSource {
    /// The announced length, when the source sent one.
    pub size: Option<u64>,
    /// The body, unverified: the fill checks it against the digest.
    pub stream: BoxStream<'static, Result<Bytes>>,
    /// Whether the fill writes what it verified to the store.
    pub publish: Publish,
    /// Kept until the fill has committed or failed, then dropped (a cluster lease, which
    /// must outlast the commit so no other replica starts a fill in between).
    pub hold: Option<Box<dyn Send + Sync>>,
}

impl FillSource {
    /// A source whose verified bytes the fill publishes.
    pub fn new(size: Option<u64>, stream: BoxStream<'static, Result<Bytes>>) -> FillSource {
        FillSource {
            size,
            stream,
            publish: Publish::Always,
            hold: None,
        }
    }
}

/// Whether a fill publishes the blob it verified.
#[derive(Clone, Debug)]
pub enum Publish {
    /// Uploaded as it streams in, committed once verified.
    Always,
    /// Only spooled and verified: another replica is publishing it. Uploaded from the spool
    /// after all if the flag is set by the time the blob verifies (this replica took the
    /// fill over, or gave up waiting for its owner).
    IfAsked(Arc<std::sync::atomic::AtomicBool>),
}

/// How a reader's stream ends when its fill failed: the fill's own error, which callers that
/// read a blob whole can take back out of the `io::Error` (see [`FillFailed::cause`]).
#[derive(Debug, thiserror::Error)]
#[error("blob fill failed")]
pub struct FillFailed(#[source] pub Arc<Error>);

impl FillFailed {
    /// The fill's error behind `e`, when `e` is how a fill reader reported one.
    pub fn cause(e: &std::io::Error) -> Option<&Arc<Error>> {
        e.get_ref()?.downcast_ref::<FillFailed>().map(|f| &f.0)
    }
}

#[derive(Clone, Debug)]
pub enum Phase {
    /// Waiting for the upstream's response headers.
    Connecting,
    Streaming,
    /// Every byte is in and the digest verified; being published in the store. Readers may
    /// have every byte.
    Verified,
    /// Verified and published in the store.
    Done,
    /// Verified, but the store would not take it (disk full, a failed upload): readers
    /// still get every byte; nothing is cached.
    Unpublished(Arc<Error>),
    Failed(Arc<Error>),
}

#[derive(Clone, Debug)]
pub struct Progress {
    /// The blob's length in bytes, when the upstream announced one.
    pub size: Option<u64>,
    /// Bytes spooled so far. Readers get all but the last one until the digest verifies.
    pub written: u64,
    /// Where the fill stands; readers wake on each change.
    pub phase: Phase,
}

/// One in-flight fill.
pub struct Fill {
    /// Of the blob being fetched: its bytes must hash to this before they are published.
    pub digest: Digest,
    /// Who started it (`upstream/repository`); other repositories must prove access first.
    pub origin: String,
    spool: OnceLock<Arc<std::fs::File>>,
    /// How much of the blob the spool holds (`u64::MAX`: all; less once the disk filled).
    spool_limit: OnceLock<Arc<std::sync::atomic::AtomicU64>>,
    /// The most recently written chunks, by offset: readers keeping up with the upstream take
    /// pieces smaller than a map is worth from here (a reference count, no copy), and all
    /// their bytes when the disk filled and the spool stopped taking them.
    recent: Mutex<Recent>,
    /// Where the readers stand: once the disk filled, the fill waits for the slowest.
    places: Places,
    /// Whether the fill has waited for a reader yet (said once in the log).
    paced: std::sync::atomic::AtomicBool,
    progress: watch::Receiver<Progress>,
}

/// A fill's chunks in memory, and what they count against the budget of all fills.
struct Recent {
    chunks: VecDeque<(u64, Bytes)>,
    bytes: usize,
    budget: Arc<Budget>,
}

/// The bytes of recent chunks all fills hold together, and how many they may hold.
#[derive(Debug)]
struct Budget {
    used: std::sync::atomic::AtomicUsize,
    limit: usize,
}

impl Budget {
    fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            used: Default::default(),
            limit,
        })
    }
}

impl Recent {
    fn new(budget: Arc<Budget>) -> Recent {
        Recent {
            chunks: VecDeque::new(),
            bytes: 0,
            budget,
        }
    }

    fn push(&mut self, off: u64, b: Bytes) {
        self.bytes += b.len();
        self.budget.used.fetch_add(b.len(), Ordering::Relaxed);
        self.chunks.push_back((off, b));
    }

    fn pop(&mut self) {
        if let Some((_, b)) = self.chunks.pop_front() {
            self.bytes -= b.len();
            self.budget.used.fetch_sub(b.len(), Ordering::Relaxed);
        }
    }

    fn clear(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
        self.bytes = 0;
        self.chunks = VecDeque::new();
    }
}

impl Drop for Recent {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Bytes of recent chunks a fill keeps in memory for readers at the live tail.
const RECENT_BYTES: usize = 4 * 1024 * 1024;

/// Bytes of recent chunks all fills together keep in memory. Each chunk also pins the
/// upstream client's read buffer it was cut from, however small the chunk: under heaptrack
/// the 200 cold fills at the start of the soak held 48 MiB of those at the heap's peak with
/// no budget, and still 69 MiB when each fill kept its newest chunk past it. Past
/// the budget a fill keeps none, and its readers take the bytes from the spool, which holds
/// every one of them (unless the disk filled: then only the fill's own bound applies).
const RECENT_BUDGET: usize = 16 * 1024 * 1024;

impl Fill {
    fn remember(&self, end: u64, batch: &[Bytes]) {
        let Ok(mut recent) = self.recent.lock() else {
            return;
        };
        let mut off = end - batch.iter().map(|b| b.len() as u64).sum::<u64>();
        for b in batch {
            recent.push(off, b.clone());
            off += b.len() as u64;
        }
        // Once the disk filled, memory is the only copy of what the spool did not take: then
        // only the fill's own bound applies, not the budget of all fills.
        // And a chunk past what the spool took goes only once every reader has read it: the
        // fill waits for the slowest (see `pace`) so that stays within the bound.
        let spooled = self.spooled_up_to();
        let spool_full = spooled != u64::MAX;
        let read_by_all = if spool_full {
            spooled.max(self.places.slowest().unwrap_or(u64::MAX))
        } else {
            u64::MAX
        };
        let limit = recent.budget.limit;
        while let Some((off, front)) = recent.chunks.front() {
            let unneeded = off + front.len() as u64 <= read_by_all;
            let over_own = recent.chunks.len() > 1 && recent.bytes > RECENT_BYTES;
            let over_budget = !spool_full && recent.budget.used.load(Ordering::Relaxed) > limit;
            if !(unneeded && over_own || over_budget) {
                break;
            }
            recent.pop();
        }
    }

    /// Once the disk filled, waits before taking more than [`RECENT_BYTES`] past the slowest
    /// reader, so every reader still gets every byte from memory. (What was already queued
    /// for the disk when it filled comes on top, once: at most the sink's queue of chunks.)
    async fn pace(&self, queued: u64) {
        if self.spooled_up_to() == u64::MAX {
            return;
        }
        let paced = &self.paced;
        let cut = self
            .places
            .wait_for_slowest(queued, RECENT_BYTES as u64, PATIENCE, || {
                if !paced.swap(true, Ordering::Relaxed) {
                    tracing::info!(digest = %self.digest, at = queued, "the cache disk is full; reading the upstream no faster than this blob's slowest client, so every client gets every byte");
                }
            })
            .await;
        if cut > 0 {
            tracing::warn!(digest = %self.digest, readers = cut, "the cache disk is full and a client of this blob took nothing for {}s; cut it so the others go on", PATIENCE.as_secs());
        }
    }

    /// Whether a reader starting at `pos` gets every byte from there on. It does unless the
    /// disk filled and the fill already let go of bytes past what the spool took, from `pos`
    /// on (no reader needed them then). Ask once the reader is made: from then on its place
    /// keeps what it needs.
    pub fn holds_from(&self, pos: u64) -> bool {
        let spooled = self.spooled_up_to();
        if spooled == u64::MAX {
            return true;
        }
        let Ok(recent) = self.recent.lock() else {
            return false;
        };
        // Memory holds what is past the spool from its first chunk on; `spooled..kept` is lost.
        let kept = recent
            .chunks
            .front()
            .map_or_else(|| self.progress.borrow().written, |(off, _)| *off);
        kept <= spooled || pos >= kept
    }

    /// How much of the blob the spool holds: `u64::MAX` (all of it) until the disk filled.
    fn spooled_up_to(&self) -> u64 {
        self.spool_limit
            .get()
            .map_or(u64::MAX, |l| l.load(Ordering::Acquire))
    }

    fn forget_recent(&self) {
        if let Ok(mut recent) = self.recent.lock() {
            recent.clear();
        }
    }

    /// `pos..limit` (or a prefix of it) from the recent chunks, if they still hold `pos`.
    fn recent_slice(&self, pos: u64, limit: u64) -> Option<Bytes> {
        let recent = self.recent.lock().ok()?;
        let (off, b) = recent
            .chunks
            .iter()
            .find(|(off, b)| *off <= pos && pos < off + b.len() as u64)?;
        let start = (pos - off) as usize;
        let end = ((limit - off) as usize).min(b.len());
        Some(b.slice(start..end))
    }
}

impl Fill {
    /// Bytes spooled so far, and the blob's size when announced.
    pub fn progress(&self) -> (u64, Option<u64>) {
        let p = self.progress.borrow();
        (p.written, p.size)
    }

    /// Waits for the upstream's answer: the blob's size (if announced) or the failure.
    pub async fn started(&self) -> Result<Option<u64>, Arc<Error>> {
        let mut rx = self.progress.clone();
        loop {
            let p = rx.borrow_and_update().clone();
            match p.phase {
                Phase::Connecting => {}
                Phase::Failed(e) => return Err(e),
                Phase::Streaming => return Ok(p.size),
                Phase::Verified | Phase::Done | Phase::Unpublished(_) => {
                    return Ok(Some(p.written))
                }
            }
            if rx.changed().await.is_err() {
                return Err(Arc::new(Error::Internal(
                    "blob fill ended unexpectedly".into(),
                )));
            }
        }
    }

    /// Waits until the blob is verified and published (or failed).
    pub async fn finished(&self) -> Result<u64, Arc<Error>> {
        let mut rx = self.progress.clone();
        loop {
            let p = rx.borrow_and_update().clone();
            match p.phase {
                Phase::Failed(e) | Phase::Unpublished(e) => return Err(e),
                Phase::Done => return Ok(p.written),
                _ => {}
            }
            if rx.changed().await.is_err() {
                return Err(Arc::new(Error::Internal(
                    "blob fill ended unexpectedly".into(),
                )));
            }
        }
    }

    /// Streams `range` of the blob (to its end for `None`) as it arrives. Call after
    /// [`Fill::started`] succeeded.
    pub fn reader(self: &Arc<Self>, start: u64, end: Option<u64>) -> ByteStream {
        let state = ReaderState {
            fill: self.clone(),
            rx: self.progress.clone(),
            pos: start,
            end,
            finished: false,
            mark: self.places.join(start),
        };
        futures_util::stream::unfold(state, |mut st| async move {
            if st.finished {
                return None;
            }
            let item = st.next_chunk().await;
            match item {
                Ok(Some(b)) => {
                    if st.end.is_some_and(|end| st.pos >= end) {
                        // Its range is read: it holds nothing back while its response ends.
                        st.fill.places.leave(&st.mark);
                    } else {
                        let waited = st.fill.spooled_up_to() != u64::MAX;
                        st.fill.places.moved(&st.mark, st.pos, waited);
                    }
                    Some((Ok(b), st))
                }
                Ok(None) => None,
                Err(e) => {
                    // Its place goes when the stream is dropped, right after (`Drop` below).
                    st.finished = true;
                    Some((Err(e), st))
                }
            }
        })
        .boxed()
    }
}

struct ReaderState {
    fill: Arc<Fill>,
    rx: watch::Receiver<Progress>,
    pos: u64,
    end: Option<u64>,
    finished: bool,
    /// This reader's place among the fill's readers.
    mark: Arc<Mark>,
}

impl Drop for ReaderState {
    fn drop(&mut self) {
        // Read to the end, failed, or its client went away: a fill waiting for it goes on.
        self.fill.places.leave(&self.mark);
    }
}

impl ReaderState {
    async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        // Set once the fill task has gone: its last state is then final.
        let mut closed = false;
        loop {
            if self.mark.is_cut() {
                return Err(std::io::Error::other(format!(
                    "the cache disk would not take this blob, and this reader took nothing for {}s while the others waited",
                    PATIENCE.as_secs()
                )));
            }
            let p = self.rx.borrow_and_update().clone();
            let done = match &p.phase {
                Phase::Failed(e) => return Err(std::io::Error::other(FillFailed(e.clone()))),
                Phase::Connecting | Phase::Streaming if closed => {
                    return Err(std::io::Error::other("blob fill ended unexpectedly"))
                }
                Phase::Connecting => None,
                Phase::Streaming => Some(false),
                Phase::Verified | Phase::Done | Phase::Unpublished(_) => Some(true),
            };
            if let Some(done) = done {
                let end = self.end.or(if done { Some(p.written) } else { p.size });
                if let Some(end) = end {
                    if self.pos >= end {
                        return Ok(None);
                    }
                    if done && end > p.written {
                        return Err(std::io::Error::other("blob is shorter than the range"));
                    }
                }
                // Hold back the final byte until the digest verified.
                let available = if done {
                    p.written
                } else {
                    p.written.saturating_sub(1)
                };
                let limit = end.map_or(available, |e| e.min(available));
                if self.pos < limit {
                    if let Some(chunk) = self.spooled_window(limit) {
                        self.pos += chunk.len() as u64;
                        return Ok(Some(chunk));
                    }
                    if let Some(chunk) = self.fill.recent_slice(self.pos, limit) {
                        self.pos += chunk.len() as u64;
                        return Ok(Some(chunk));
                    }
                    let spool = self
                        .fill
                        .spool
                        .get()
                        .cloned()
                        .ok_or_else(|| std::io::Error::other("fill has no spool"))?;
                    let spooled = self.fill.spooled_up_to();
                    if self.pos >= spooled {
                        return Err(std::io::Error::other(
                            "the cache disk would not take this blob, and this reader fell behind the bytes kept in memory",
                        ));
                    }
                    let range = self.pos..limit.min(spooled).min(self.pos + MAP_WINDOW);
                    let chunk = read_at(spool, range).await?;
                    self.pos += chunk.len() as u64;
                    return Ok(Some(chunk));
                }
            }
            if closed {
                return Err(std::io::Error::other("blob fill ended unexpectedly"));
            }
            if self.rx.changed().await.is_err() {
                closed = true;
            }
        }
    }
}

impl ReaderState {
    /// `pos..limit`, or a prefix, as a map of the spool, when enough of it is on disk to be
    /// worth one: a plain-HTTP client is then sent it from the page cache with sendfile,
    /// where the recent chunks in memory would be copied through archway once more.
    fn spooled_window(&self, limit: u64) -> Option<Bytes> {
        let spool = self.fill.spool.get()?;
        let spooled = self.fill.spooled_up_to();
        let end = limit.min(spooled).min(self.pos + MAP_WINDOW);
        if end < self.pos + mapped::MAP_AT_LEAST {
            return None;
        }
        // Just written, so in the page cache; were it not, memory or a read serve instead of
        // this runtime thread waiting for the disk.
        mapped::resident_window(spool, self.pos, end - self.pos)
            .ok()
            .flatten()
    }
}

/// Reads from the spool inline: the bytes were written moments ago and sit in the page cache.
/// A large range is mapped, so the socket write copies straight from the page cache; a read
/// into a fresh buffer costs a second copy, zeroing the buffer and faulting its pages in,
/// which for a client slower than the upstream was a tenth of the fill's CPU.
async fn read_at(file: Arc<std::fs::File>, range: Range<u64>) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let len = range.end - range.start;
    if len >= mapped::MAP_AT_LEAST {
        // The range lies below what the writer reported written: inside the file.
        if let Ok(b) = mapped::window(&file, range.start, len) {
            return Ok(b);
        }
    }
    let mut buf = BytesMut::zeroed((range.end - range.start) as usize);
    let n = file.read_at(&mut buf, range.start)?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "spool is shorter than its progress",
        ));
    }
    buf.truncate(n);
    Ok(buf.freeze())
}

/// The set of fills in flight: the ones clients join, keyed by digest, and the ones started
/// alone for one client (listed so that operators and shutdown see them too).
#[derive(Clone)]
pub struct Fills {
    store: Store,
    map: Arc<Mutex<HashMap<Digest, Arc<Fill>>>>,
    alone: Arc<Mutex<Vec<Arc<Fill>>>>,
    budget: Arc<Budget>,
}

/// Takes a fill off its list however its task ends, panics included.
enum Deregister {
    Shared {
        map: Arc<Mutex<HashMap<Digest, Arc<Fill>>>>,
        digest: Digest,
    },
    Alone {
        list: Arc<Mutex<Vec<Arc<Fill>>>>,
        fill: Arc<Fill>,
    },
}

impl Drop for Deregister {
    fn drop(&mut self) {
        match self {
            Deregister::Shared { map, digest } => {
                if let Ok(mut m) = map.lock() {
                    m.remove(digest);
                }
            }
            Deregister::Alone { list, fill } => {
                if let Ok(mut l) = list.lock() {
                    l.retain(|f| !Arc::ptr_eq(f, fill));
                }
            }
        }
    }
}

/// A fill in flight as the admin listener shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    pub digest: Digest,
    /// Bytes spooled so far.
    pub written: u64,
    /// The blob's length, once the source announced it.
    pub size: Option<u64>,
    /// Started for one client beside the shared fill of the same digest (see
    /// [`Fills::start_alone`]); nobody joins it.
    pub alone: bool,
}

impl Fills {
    pub fn new(store: Store) -> Fills {
        Fills {
            store,
            map: Arc::default(),
            alone: Arc::default(),
            budget: Budget::new(RECENT_BUDGET),
        }
    }

    /// Fills whose chunks in memory may come to `limit` bytes together.
    #[cfg(test)]
    fn with_recent_budget(store: Store, limit: usize) -> Fills {
        Fills {
            budget: Budget::new(limit),
            ..Fills::new(store)
        }
    }

    /// The fill in flight for `d`, if any.
    pub fn get(&self, d: &Digest) -> Option<Arc<Fill>> {
        self.map.lock().ok()?.get(d).cloned()
    }

    /// The fills in flight now, shared and alone, by digest.
    pub fn in_flight(&self) -> Vec<InFlight> {
        let view = |f: &Arc<Fill>, alone| {
            let (written, size) = f.progress();
            InFlight {
                digest: f.digest.clone(),
                written,
                size,
                alone,
            }
        };
        let mut all: Vec<InFlight> = self
            .map
            .lock()
            .map(|m| m.values().map(|f| view(f, false)).collect())
            .unwrap_or_default();
        if let Ok(l) = self.alone.lock() {
            all.extend(l.iter().map(|f| view(f, true)));
        }
        all.sort_by(|a, b| (&a.digest, a.alone).cmp(&(&b.digest, b.alone)));
        all
    }

    /// Number of fills in flight, shared and alone.
    pub fn len(&self) -> usize {
        let shared = self.map.lock().map(|m| m.len()).unwrap_or(0);
        shared + self.alone.lock().map(|l| l.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Joins the fill of `d`, or starts one reading from `source`. Returns the fill and whether
    /// this call started it.
    pub fn join_or_start<F, Fut>(&self, d: &Digest, origin: &str, source: F) -> (Arc<Fill>, bool)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<FillSource>> + Send + 'static,
    {
        // The lock is held only for the map operation: no await under it.
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.get(d) {
            return (f.clone(), false);
        }
        let (fill, tx) = self.new_fill(d, origin);
        map.insert(d.clone(), fill.clone());
        drop(map);
        let guard = Deregister::Shared {
            map: self.map.clone(),
            digest: d.clone(),
        };
        self.launch(fill.clone(), tx, guard, source);
        (fill, true)
    }

    /// A fill of `d` that no later client joins: for a client that joined the running fill
    /// too late to get every byte from it (see [`Fill::holds_from`]), so that it need not
    /// wait for that fill to end. The running one stays the fill others join.
    pub fn start_alone<F, Fut>(&self, d: &Digest, origin: &str, source: F) -> Arc<Fill>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<FillSource>> + Send + 'static,
    {
        let (fill, tx) = self.new_fill(d, origin);
        self.alone
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(fill.clone());
        let guard = Deregister::Alone {
            list: self.alone.clone(),
            fill: fill.clone(),
        };
        self.launch(fill.clone(), tx, guard, source);
        fill
    }

    fn new_fill(&self, d: &Digest, origin: &str) -> (Arc<Fill>, watch::Sender<Progress>) {
        let (tx, rx) = watch::channel(Progress {
            size: None,
            written: 0,
            phase: Phase::Connecting,
        });
        let fill = Arc::new(Fill {
            digest: d.clone(),
            origin: origin.to_string(),
            spool: OnceLock::new(),
            spool_limit: OnceLock::new(),
            recent: Mutex::new(Recent::new(self.budget.clone())),
            places: Places::default(),
            paced: Default::default(),
            progress: rx,
        });
        (fill, tx)
    }

    /// Runs `task_fill` from `source` on a task of its own; `guard` takes it off its list
    /// (the map of fills to join, or the fills started alone) before its end is announced.
    fn launch<F, Fut>(
        &self,
        task_fill: Arc<Fill>,
        tx: watch::Sender<Progress>,
        guard: Deregister,
        source: F,
    ) where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<FillSource>> + Send + 'static,
    {
        let store = self.store.clone();
        let tx = Arc::new(tx);
        tokio::spawn(async move {
            let guard = guard;
            let result = run(&store, &task_fill, &tx, source).await;
            match &result {
                Ok(()) => store.note_write_ok(),
                Err(e @ (Error::Io { .. } | Error::Storage(_))) => {
                    store.note_write_failure(&crate::causes::Chain(e).to_string())
                }
                Err(_) => {}
            }
            let verified = matches!(tx.borrow().phase, Phase::Verified);
            let phase = match (result, verified) {
                (Ok(()), _) => Phase::Done,
                (Err(e), true) => {
                    tracing::warn!(digest = %task_fill.digest, error = %crate::causes::Chain(&e), "blob verified and served, but the store would not take it; nothing cached");
                    Phase::Unpublished(Arc::new(e))
                }
                (Err(e), false) => {
                    tracing::warn!(digest = %task_fill.digest, error = %crate::causes::Chain(&e), "blob fill failed; nothing cached");
                    Phase::Failed(Arc::new(e))
                }
            };
            // Published, every byte is in the spool (the cache file itself on disk); failed,
            // none may be read. Either way the chunks in memory are no longer anyone's only
            // copy, and readers still streaming a finished fill would otherwise keep them,
            // and hyper's read buffers under them, alive until the last of them is done.
            // Before the phase is announced, so whoever sees it sees them gone.
            if matches!(phase, Phase::Done | Phase::Failed(_)) {
                task_fill.forget_recent();
            }
            // Out of the map before the end is announced: whoever hears of it and asks again
            // (after a failure, or a wait on a full disk) starts a fill instead of joining
            // this finished one.
            drop(guard);
            tx.send_modify(|p| p.phase = phase);
        });
    }
}

async fn run<F, Fut>(
    store: &Store,
    fill: &Arc<Fill>,
    tx: &Arc<watch::Sender<Progress>>,
    source: F,
) -> Result<()>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<FillSource>>,
{
    let FillSource {
        size,
        mut stream,
        publish,
        hold,
    } = source().await?;
    // The writer thread reports spool progress; readers wake on it. It batches whatever
    // chunks have queued up, so readers are not woken once per network read.
    let (progress, filling) = (tx.clone(), fill.clone());
    let mut sink = store
        .begin_blob(&fill.digest, size, publish, move |written, batch| {
            filling.remember(written, batch);
            progress.send_modify(|p| p.written = written)
        })
        .await?;
    let _ = fill.spool.set(sink.spool());
    let _ = fill.spool_limit.set(sink.spool_limit());
    tx.send_modify(|p| {
        p.size = size;
        p.phase = Phase::Streaming;
    });
    let started = tokio::time::Instant::now();
    let mut chunks = 0u64;
    let copied: Result<()> = async {
        while let Some(chunk) = stream.next().await {
            chunks += 1;
            let chunk = chunk?;
            fill.pace(sink.queued()).await;
            sink.write(chunk).await?;
            if let Some(announced) = size.filter(|s| sink.queued() > *s) {
                return Err(Error::SizeMismatch {
                    digest: fill.digest.clone(),
                    announced,
                    actual: sink.queued(),
                });
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = copied {
        // Discarded before the failure is reported: whoever hears of it finds nothing left.
        sink.abort().await;
        return Err(e);
    }
    let verified = tx.clone();
    let written = sink
        .commit_then(size, move |written| {
            verified.send_modify(|p| {
                p.written = written;
                p.phase = Phase::Verified;
            })
        })
        .await?;
    drop(hold);
    tx.send_modify(|p| p.written = written);
    tracing::info!(
        digest = %fill.digest,
        bytes = written,
        chunks,
        ms = started.elapsed().as_millis() as u64,
        "blob verified and cached"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{StorageConfig, StorageUrl};
    use futures_util::TryStreamExt;
    use tokio::sync::mpsc;

    fn store(dir: &std::path::Path, local: bool) -> Store {
        Store::open(&StorageConfig {
            s3: Default::default(),
            azure: Default::default(),
            gc: Default::default(),
            redirect: None,
            url: if local {
                StorageUrl::File(dir.join("disk"))
            } else {
                StorageUrl::Memory
            },
            spool_dir: dir.join("spool"),
        })
        .unwrap()
    }

    /// A source fed by the test, chunk by chunk.
    fn channel_source(size: Option<u64>) -> (mpsc::Sender<Result<Bytes>>, FillSource) {
        let (tx, mut rx) = mpsc::channel::<Result<Bytes>>(16);
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed();
        (tx, FillSource::new(size, stream))
    }

    /// A fill started alone runs beside the shared one and is never joined: later clients
    /// still join the shared fill, and each gets every byte. Where the disk has room it
    /// publishes too: whichever of the two commits second replaces the same verified bytes.
    #[tokio::test]
    async fn a_fill_started_alone_is_not_the_one_others_join() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), true);
        let fills = Fills::new(store.clone());
        let data = b"0123456789".to_vec();
        let d = Digest::sha256_of(&data);
        let (shared_tx, shared_src) = channel_source(Some(10));
        let (shared, _) = fills.join_or_start(&d, "up/a", move || async move { Ok(shared_src) });
        let (alone_tx, alone_src) = channel_source(Some(10));
        let alone = fills.start_alone(&d, "up/a", move || async move { Ok(alone_src) });
        assert!(!Arc::ptr_eq(&shared, &alone));
        assert!(Arc::ptr_eq(&fills.get(&d).unwrap(), &shared));
        let (joined, started) =
            fills.join_or_start(&d, "up/a", || async { panic!("the shared fill runs") });
        assert!(!started && Arc::ptr_eq(&joined, &shared));
        let listed: Vec<bool> = fills.in_flight().iter().map(|f| f.alone).collect();
        assert_eq!(listed, [false, true], "both are listed in flight");
        assert_eq!(fills.len(), 2);
        for tx in [alone_tx, shared_tx] {
            tx.send(Ok(Bytes::from(data.clone()))).await.unwrap();
        }
        for fill in [&alone, &shared] {
            fill.started().await.unwrap();
            let got: Vec<Bytes> = fill.reader(0, None).try_collect().await.unwrap();
            assert_eq!(got.concat(), data);
        }
        for fill in [&alone, &shared] {
            fill.finished().await.unwrap();
        }
        assert!(fills.in_flight().is_empty(), "both off the lists once done");
        assert!(fills.is_empty());
        assert_eq!(store.blob_size(&d).await.unwrap(), Some(10), "cached");
    }

    #[tokio::test]
    async fn readers_stream_before_the_fill_finishes_and_share_one_source() {
        let dir = tempfile::tempdir().unwrap();
        for local in [true, false] {
            let store = store(dir.path(), local);
            let fills = Fills::new(store.clone());
            let data = b"0123456789abcdefghij".to_vec();
            let d = Digest::sha256_of(&data);
            let (tx, src) = channel_source(Some(data.len() as u64));
            let (fill, started) = fills.join_or_start(&d, "up/a", move || async move { Ok(src) });
            assert!(started);
            let (again, started2) = fills.join_or_start(&d, "up/a", || async {
                panic!("second source must not run")
            });
            assert!(!started2 && Arc::ptr_eq(&fill, &again));

            tx.send(Ok(Bytes::from_static(b"0123456789")))
                .await
                .unwrap();
            assert_eq!(fill.started().await.unwrap(), Some(20));
            let mut r = fill.reader(0, None);
            // The first bytes arrive while the upstream is still sending (all but the held-back last one).
            let first = r.try_next().await.unwrap().unwrap();
            assert_eq!(&first[..], b"012345678");
            tx.send(Ok(Bytes::from_static(b"abcdefghij")))
                .await
                .unwrap();
            drop(tx);
            let rest: Vec<Bytes> = r.try_collect().await.unwrap();
            assert_eq!([first, rest.concat().into()].concat(), data);
            assert_eq!(fill.finished().await.unwrap(), 20);
            assert_eq!(store.blob_size(&d).await.unwrap(), Some(20));
            // A late reader with a range still works from the spool.
            let part: Vec<Bytes> = fill.reader(5, Some(7)).try_collect().await.unwrap();
            assert_eq!(part.concat(), b"56");
        }
    }

    /// A reader at the live tail gets what is spooled as maps of the spool once there is
    /// enough of it (sent with sendfile on plain HTTP), and small pieces from memory.
    #[tokio::test]
    async fn live_readers_get_large_spooled_ranges_as_maps() {
        let dir = tempfile::tempdir().unwrap();
        for local in [true, false] {
            let store = store(dir.path(), local);
            let fills = Fills::new(store.clone());
            let data: Vec<u8> = (0..301_000u32).map(|i| (i % 253) as u8).collect();
            let d = Digest::sha256_of(&data);
            let (tx, src) = channel_source(Some(data.len() as u64));
            let (fill, _) = fills.join_or_start(&d, "up/a", move || async move { Ok(src) });
            let mut r = fill.reader(0, None);
            tx.send(Ok(Bytes::copy_from_slice(&data[..1000])))
                .await
                .unwrap();
            let small = r.try_next().await.unwrap().unwrap();
            assert_eq!(&small[..], &data[..999]);
            assert!(
                super::mapped::file_bytes(&small).is_none(),
                "small: from memory"
            );

            tx.send(Ok(Bytes::copy_from_slice(&data[1000..200_000])))
                .await
                .unwrap();
            let large = r.try_next().await.unwrap().unwrap();
            assert_eq!(&large[..], &data[999..199_999]);
            let at = super::mapped::file_bytes(&large).expect("large: a map of the spool");
            assert_eq!(at.offset, 999);

            tx.send(Ok(Bytes::copy_from_slice(&data[200_000..])))
                .await
                .unwrap();
            drop(tx);
            let rest: Vec<Bytes> = r.try_collect().await.unwrap();
            assert_eq!([small, large, rest.concat().into()].concat(), data);
            assert_eq!(fill.finished().await.unwrap(), data.len() as u64);
        }
    }

    /// A fill fed by hand, of `len` bytes (a pattern shifted by `seed`), with a reader from
    /// byte 0 that reads nothing yet.
    struct Fed {
        data: Vec<u8>,
        tx: mpsc::Sender<Result<Bytes>>,
        fill: Arc<Fill>,
        reader: ByteStream,
    }

    impl Fed {
        fn start(fills: &Fills, seed: u32, len: u32) -> Fed {
            let data: Vec<u8> = (0..len).map(|i| ((i + seed) % 251) as u8).collect();
            let d = Digest::sha256_of(&data);
            let (tx, src) = channel_source(Some(data.len() as u64));
            let (fill, _) = fills.join_or_start(&d, "up/a", move || async move { Ok(src) });
            let reader = fill.reader(0, None);
            Fed {
                data,
                tx,
                fill,
                reader,
            }
        }

        /// Sends `range` of the data and waits until the spool has it.
        async fn feed(&self, range: Range<usize>) {
            let end = range.end as u64;
            self.tx
                .send(Ok(Bytes::copy_from_slice(&self.data[range])))
                .await
                .unwrap();
            let mut rx = self.fill.progress.clone();
            while rx.borrow_and_update().written < end {
                rx.changed().await.unwrap();
            }
        }

        /// Sends the rest from `from`, and checks the reader gets every byte and the fill
        /// publishes.
        async fn finish(self, from: usize) {
            self.tx
                .send(Ok(Bytes::copy_from_slice(&self.data[from..])))
                .await
                .unwrap();
            drop(self.tx);
            let got: Vec<Bytes> = self.reader.try_collect().await.unwrap();
            assert_eq!(got.concat(), self.data);
            assert_eq!(self.fill.finished().await.unwrap(), self.data.len() as u64);
        }
    }

    /// Fills together keep at most their budget of chunks in memory; a reader whose bytes
    /// were let go reads them from the spool, and finished fills give their share back.
    #[tokio::test]
    async fn fills_share_one_budget_of_chunks_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        for local in [true, false] {
            let fills = Fills::with_recent_budget(store(dir.path(), local), 10_000);
            let feeds: Vec<Fed> = (0..2)
                .map(|seed| Fed::start(&fills, seed, 16_000))
                .collect();
            // Both fills get all but their last chunk, in turns; nobody reads yet.
            for at in (0..14_000).step_by(2_000) {
                for f in &feeds {
                    f.feed(at..at + 2_000).await;
                    let used = fills.budget.used.load(Ordering::Relaxed);
                    assert!(used <= 10_000, "{used} bytes in memory");
                }
            }
            assert!(feeds
                .iter()
                .all(|f| !f.fill.recent.lock().unwrap().chunks.is_empty()));
            for f in feeds {
                f.finish(14_000).await;
            }
            assert_eq!(fills.budget.used.load(Ordering::Relaxed), 0);
        }
    }

    /// Past the budget a fill keeps not even its newest chunk: each pins an upstream read
    /// buffer, and with hundreds of fills those pinned buffers were most of the heap. Its
    /// reader takes the bytes from the spool.
    #[tokio::test]
    async fn past_the_budget_a_fill_keeps_no_chunk_and_its_reader_reads_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        for local in [true, false] {
            let fills = Fills::with_recent_budget(store(dir.path(), local), 3_000);
            let mut feeds = Vec::new();
            for seed in 0..3u32 {
                let f = Fed::start(&fills, seed, 4_000);
                f.feed(0..2_000).await;
                let used = fills.budget.used.load(Ordering::Relaxed);
                assert!(
                    used <= 3_000,
                    "{used} bytes in memory after {} fills",
                    seed + 1
                );
                feeds.push(f);
            }
            for f in feeds {
                f.finish(2_000).await;
            }
            assert_eq!(fills.budget.used.load(Ordering::Relaxed), 0);
        }
    }

    /// Once published, a fill keeps no chunks in memory, and a reader still streaming it
    /// reads the rest from the spool.
    #[tokio::test]
    async fn a_finished_fill_lets_go_of_its_chunks_and_readers_finish_from_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        for local in [true, false] {
            let store = store(dir.path(), local);
            let fills = Fills::new(store.clone());
            let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
            let d = Digest::sha256_of(&data);
            let (tx, src) = channel_source(Some(data.len() as u64));
            let (fill, _) = fills.join_or_start(&d, "up/a", move || async move { Ok(src) });
            let mut r = fill.reader(0, None);
            tx.send(Ok(Bytes::copy_from_slice(&data[..4000])))
                .await
                .unwrap();
            let first = r.try_next().await.unwrap().unwrap();
            assert!(
                !fill.recent.lock().unwrap().chunks.is_empty(),
                "kept while filling"
            );
            tx.send(Ok(Bytes::copy_from_slice(&data[4000..])))
                .await
                .unwrap();
            drop(tx);
            assert_eq!(fill.finished().await.unwrap(), data.len() as u64);
            assert!(
                fill.recent.lock().unwrap().chunks.is_empty(),
                "kept after publishing"
            );
            let rest: Vec<Bytes> = r.try_collect().await.unwrap();
            assert_eq!([first, rest.concat().into()].concat(), data);
        }
    }

    #[tokio::test]
    async fn corrupt_content_fails_readers_and_caches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        for local in [true, false] {
            let store = store(dir.path(), local);
            let fills = Fills::new(store.clone());
            let d = Digest::sha256_of(b"good bytes");
            let (tx, src) = channel_source(Some(10));
            let (fill, _) = fills.join_or_start(&d, "up/a", move || async move { Ok(src) });
            tx.send(Ok(Bytes::from_static(b"evil bytes")))
                .await
                .unwrap();
            drop(tx);
            let r: std::io::Result<Vec<Bytes>> = fill.reader(0, None).try_collect().await;
            let e = r.expect_err("a corrupt blob must not be delivered whole");
            assert!(
                matches!(
                    FillFailed::cause(&e).map(|c| &**c),
                    Some(Error::DigestMismatch { .. })
                ),
                "the reader's error carries the fill's: {e:?}"
            );
            assert!(matches!(
                &*fill.finished().await.unwrap_err(),
                Error::DigestMismatch { .. }
            ));
            assert_eq!(store.blob_size(&d).await.unwrap(), None);
        }
    }

    #[tokio::test]
    async fn cut_connection_fails_readers_and_caches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), true);
        let fills = Fills::new(store.clone());
        let d = Digest::sha256_of(b"0123456789");
        let (tx, src) = channel_source(Some(10));
        let (fill, _) = fills.join_or_start(&d, "up/a", move || async move { Ok(src) });
        tx.send(Ok(Bytes::from_static(b"01234"))).await.unwrap();
        tx.send(Err(Error::io(
            "upstream transfer",
            std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        )))
        .await
        .unwrap();
        let r: std::io::Result<Vec<Bytes>> = fill.reader(0, None).try_collect().await;
        assert!(r.is_err());
        assert_eq!(store.blob_size(&d).await.unwrap(), None);
    }

    /// Once the disk filled, a fill keeps every byte its slowest reader still needs, and to
    /// keep that within its bound it waits for the reader rather than reading on.
    #[tokio::test]
    async fn with_the_disk_full_a_fill_waits_for_its_slowest_reader() {
        const CHUNK: usize = 64 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let fills = Fills::new(store(dir.path(), true));
        let data: Vec<u8> = (0..3 * RECENT_BYTES).map(|i| (i % 253) as u8).collect();
        let d = Digest::sha256_of(&data);
        let (tx, src) = channel_source(Some(data.len() as u64));
        let (fill, _) = fills.join_or_start(&d, "up/a", move || async move { Ok(src) });
        let mut reader = fill.reader(0, None);
        tx.send(Ok(Bytes::copy_from_slice(&data[..CHUNK])))
            .await
            .unwrap();
        fill.started().await.unwrap();
        // The disk is full from the start: only memory holds the bytes for the reader.
        fill.spool_limit.get().unwrap().store(0, Ordering::Release);
        let feeder = tokio::spawn({
            let data = data.clone();
            async move {
                for c in data[CHUNK..].chunks(CHUNK) {
                    tx.send(Ok(Bytes::copy_from_slice(c))).await.unwrap();
                }
            }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !(fill.paced.load(Ordering::Relaxed) || feeder.is_finished()) {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let kept = fill.recent.lock().unwrap().bytes;
        assert!(
            kept <= RECENT_BYTES + 2 * CHUNK,
            "{kept} bytes in memory for a reader that read none"
        );
        assert!(!feeder.is_finished(), "the fill waits for the reader");
        let mut got = Vec::new();
        while let Some(b) = reader.try_next().await.unwrap() {
            got.extend_from_slice(&b);
        }
        assert!(got == data, "the reader got every byte");
        feeder.await.unwrap();
        fill.finished().await.unwrap();
    }
}
