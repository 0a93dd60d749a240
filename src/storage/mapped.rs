//! Windows of cache files mapped into memory, and which file each one shows.
//!
//! Large cached blobs (and spool reads behind a fill) travel to hyper as `Bytes` over a
//! map of their file. Whoever holds such bytes can read them like any others: TLS encrypts
//! them, HTTP/2 frames them. A plain-HTTP socket (`http::socket`) can do better: it asks
//! here which file and offset the bytes it is about to write come from and hands the kernel
//! the file with `sendfile(2)`, so the bytes go from the page cache to the socket without
//! being copied through the process. The maps are the fallback that makes that safe: a write
//! that is not recognised is still correct.

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

/// Blobs (and spool reads) at least this large are sent from memory maps of the file. A
/// read would put the bytes in anonymous memory first: with 3,000 responses of small
/// layers in flight (the soak in `benches/`) that was about 190 MiB of buffers, where maps
/// are page cache the kernel reclaims at will. Below this a read is cheaper than a map.
pub(crate) const MAP_AT_LEAST: u64 = 64 * 1024;

/// Each map covers this much of the file. A response holds at most a few windows, so a
/// process serving many large blobs does not map (and count in its RSS) whole files.
pub(crate) const MAP_WINDOW: u64 = 512 * 1024;

/// The windows alive now, by the address of their first byte. Windows never overlap while
/// both are alive, since each is its own mapping.
static WINDOWS: RwLock<BTreeMap<usize, Shown>> = RwLock::new(BTreeMap::new());

/// What a window shows: `len` bytes of `file` from `offset`.
struct Shown {
    file: Arc<File>,
    offset: u64,
    len: usize,
}

/// Bytes about to be written that are a file's bytes: `len` of them from `offset` of `file`.
pub struct FileBytes {
    pub file: Arc<File>,
    pub offset: u64,
    pub len: usize,
}

/// Which file bytes `bytes` are, if they lie in a window: as many of them, from their start,
/// as the window holds.
pub fn file_bytes(bytes: &[u8]) -> Option<FileBytes> {
    let at = bytes.as_ptr() as usize;
    let windows = WINDOWS.read().ok()?;
    let (&base, shown) = windows.range(..=at).next_back()?;
    let into = at - base;
    if into >= shown.len {
        return None;
    }
    Some(FileBytes {
        file: shown.file.clone(),
        offset: shown.offset + into as u64,
        len: bytes.len().min(shown.len - into),
    })
}

/// A mapped window, registered in `WINDOWS` for as long as it is mapped.
struct Window {
    map: memmap2::Mmap,
}

impl AsRef<[u8]> for Window {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // Deregistered before the field is unmapped, so a later map at the same address
        // is never taken for this one.
        if let Ok(mut windows) = WINDOWS.write() {
            windows.remove(&(self.map.as_ptr() as usize));
        }
    }
}

/// Maps `len` bytes of a cache file at `offset`, as one chunk: the socket then sends them
/// from the page cache (with `sendfile`, or a write straight from the map) instead of a
/// read into a buffer and a second copy out of it. Pages not in the page cache are read in
/// here, so a sendfile or a write from the map never waits for the disk: call it where
/// blocking is allowed. `len` must be positive.
pub(crate) fn window(file: &Arc<File>, offset: u64, len: u64) -> std::io::Result<Bytes> {
    let map = map(file, offset, len, false)?;
    if resident(file, offset, len as usize, &map) {
        return Ok(register(file, offset, map));
    }
    Ok(register(file, offset, self::map(file, offset, len, true)?))
}

/// [`window`], when every page is in the page cache already: then it never waits for the
/// disk, and a runtime thread may call it. `None` when some page would have to be read.
pub(crate) fn resident_window(
    file: &Arc<File>,
    offset: u64,
    len: u64,
) -> std::io::Result<Option<Bytes>> {
    let map = map(file, offset, len, false)?;
    Ok(resident(file, offset, len as usize, &map).then(|| register(file, offset, map)))
}

/// Maps the range, faulting every page in (`populate`: reading it from disk if need be) or
/// none. Resident pages are best left unmapped: setting up and tearing down a page table
/// entry per 4 KiB cost as much CPU as sendfile spends sending them.
#[allow(unsafe_code)]
fn map(file: &File, offset: u64, len: u64, populate: bool) -> std::io::Result<memmap2::Mmap> {
    let mut options = memmap2::MmapOptions::new();
    options.offset(offset).len(len as usize);
    if populate {
        options.populate();
    }
    // SAFETY: a mapped file truncated while mapped would fault on access. Cache files are
    // never modified in place: a blob is written under .staging/, renamed into place once
    // verified, and afterwards only unlinked (eviction), which leaves existing mappings
    // intact. Spool files are only appended to, then renamed or unlinked. Callers keep
    // `offset + len` within the size the file had when opened (for a spool: what its
    // writer reported written).
    unsafe { options.map(file) }
}

/// `map` as bytes, registered as showing `file` from `offset` for as long as it lives.
fn register(file: &Arc<File>, offset: u64, map: memmap2::Mmap) -> Bytes {
    let shown = Shown {
        file: file.clone(),
        offset,
        len: map.len(),
    };
    if let Ok(mut windows) = WINDOWS.write() {
        windows.insert(map.as_ptr() as usize, shown);
    }
    Bytes::from_owner(Window { map })
}

/// Whether every page of `len` bytes of `file` from `offset` (which `map` shows) is in the
/// page cache. When it cannot be told, no: the caller then reads them in.
fn resident(file: &File, offset: u64, len: usize, map: &memmap2::Mmap) -> bool {
    match cached_pages(file, offset, len) {
        Some(n) => n == pages(offset, len),
        None => mapped_pages_resident(map),
    }
}

/// Pages from the one holding `offset` to the one holding its last byte.
fn pages(offset: u64, len: usize) -> u64 {
    let page = rustix::param::page_size() as u64;
    (offset + len as u64).div_ceil(page) - offset / page
}

/// Whether `cachestat(2)` (Linux 6.5) is known to be missing here.
static NO_CACHESTAT: AtomicBool = AtomicBool::new(false);

/// How many pages of the range are in the page cache, by `cachestat(2)`: one walk of the
/// file's page cache, where `mincore` looks each page up on its own (a tenth of the CPU of
/// sending cached blobs). `None` where the kernel has no cachestat.
#[allow(unsafe_code)]
fn cached_pages(file: &File, offset: u64, len: usize) -> Option<u64> {
    use std::os::fd::AsRawFd;
    /// `struct cachestat_range` and `struct cachestat` of linux/mman.h.
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    /// The same number on every architecture: it was added after the tables were unified.
    const SYS_CACHESTAT: libc::c_long = 451;
    if !cfg!(target_os = "linux") || NO_CACHESTAT.load(Ordering::Relaxed) {
        return None;
    }
    let range = Range {
        off: offset,
        len: len as u64,
    };
    let mut stat = Stat::default();
    // SAFETY: cachestat reads `range` and writes `stat`, both live and of the layouts the
    // kernel defines; `flags` must be 0. It touches nothing else.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Stat,
            0 as libc::c_uint,
        )
    };
    if r != 0 {
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
            NO_CACHESTAT.store(true, Ordering::Relaxed);
        }
        return None;
    }
    Some(stat.nr_cache)
}

/// Whether every page `map` covers is in the page cache (`mincore(2)`).
#[allow(unsafe_code)]
fn mapped_pages_resident(map: &memmap2::Mmap) -> bool {
    let page = rustix::param::page_size();
    let at = map.as_ptr() as usize;
    // mincore wants a page-aligned start; memmap2 maps from the page holding `offset`.
    let start = at & !(page - 1);
    let len = at - start + map.len();
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: `start..start + len` lies in the mapping `map` owns, alive for this call, and
    // `vec` has one byte per page of it, as mincore requires.
    let r = unsafe { libc::mincore(start as *mut libc::c_void, len, vec.as_mut_ptr()) };
    r == 0 && vec.iter().all(|v| v & 1 == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn windows_name_their_file_and_offset_until_dropped() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let f = Arc::new(f);
        let w = window(&f, 70_001, 200_000).unwrap();
        assert_eq!(&w[..], &data[70_001..270_001]);

        let at = file_bytes(&w[1000..5000]).expect("inside the window");
        assert_eq!((at.offset, at.len), (71_001, 4000));
        assert!(Arc::ptr_eq(&at.file, &f));
        // Bytes running past the window are cut at its end.
        let tail = w.slice(199_000..);
        let at = file_bytes(&tail).unwrap();
        assert_eq!((at.offset, at.len), (269_001, 1000));

        let copy = w.to_vec();
        assert!(file_bytes(&copy).is_none(), "a copy is not the file");
        let addr = w.as_ptr();
        drop((w, tail));
        // The address leaves the registry with the window.
        let windows = WINDOWS.read().unwrap();
        assert!(!windows.contains_key(&(addr as usize)));
    }

    /// Pages evicted from the page cache are told apart from resident ones by both probes,
    /// and a window over them reads them in (on the caller's thread, the blocking pool).
    #[test]
    fn evicted_pages_are_read_in_when_mapped() {
        // Beside the sources, not in a temp dir that may be tmpfs, whose pages never leave.
        let mut f = tempfile::tempfile_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 241) as u8).collect();
        f.write_all(&data).unwrap();
        // Dirty pages cannot be evicted: write them back first.
        f.sync_all().unwrap();
        let f = Arc::new(f);
        let probe = |offset: u64, len: usize| {
            // SAFETY: the file is not truncated while mapped.
            #[allow(unsafe_code)]
            let map = unsafe {
                memmap2::MmapOptions::new()
                    .offset(offset)
                    .len(len)
                    .map(&*f)
                    .unwrap()
            };
            let by_cachestat = cached_pages(&f, offset, len).map(|n| n == pages(offset, len));
            (by_cachestat, mapped_pages_resident(&map))
        };
        let evict = || {
            rustix::fs::fadvise(&*f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        };
        evict();
        let (cachestat, mincore) = probe(200_001, 300_000);
        assert_ne!(
            cachestat,
            Some(true),
            "cachestat: evicted pages counted as cached"
        );
        assert!(!mincore, "mincore: evicted pages taken for resident");
        assert!(
            resident_window(&f, 200_001, 300_000).unwrap().is_none(),
            "a runtime thread would wait for the disk"
        );

        // Probed before the window's bytes are touched, which would fault them in anyway.
        let w = window(&f, 200_001, 300_000).unwrap();
        let (cachestat, mincore) = probe(200_001, 300_000);
        assert_ne!(
            cachestat,
            Some(false),
            "cachestat: read-in pages not counted"
        );
        assert!(mincore, "mincore: read-in pages not resident");
        assert_eq!(&w[..], &data[200_001..500_001]);
        let again = resident_window(&f, 200_001, 300_000).unwrap();
        assert_eq!(again.as_deref(), Some(&data[200_001..500_001]));
    }
}
