//! Disk space claimed ahead of a spool's writes.
//!
//! On a filesystem with delayed allocation (ext4, XFS) every buffered write reserves and
//! maps its blocks page by page; on a cold fill that bookkeeping cost more than copying the
//! bytes into the page cache (over half of the spool's `write` time, benches/README.md).
//! `fallocate` claims the blocks an extent at a time instead, so the writes that follow find
//! them mapped.
//!
//! The space is claimed with `FALLOC_FL_KEEP_SIZE`: the file's length stays what was
//! written, so readers, the size check at commit and a crash leftover see only real bytes.
//! It is claimed in windows ahead of the writes and never past the announced size, so an
//! upstream announcing more than it sends holds at most one window it never writes; what
//! the writes did not reach is given back when the writer stops. Claiming is a saving, never
//! a requirement: where the filesystem refuses (no support, or no room for the window) the
//! writes go on unclaimed, and a disk that is really full fails them as before.

use std::fs::File;

/// How far ahead of the writes space is claimed.
const WINDOW: u64 = 32 * 1024 * 1024;
/// Blobs smaller than this are written without claiming: one more system call is not
/// worth what it saves on a few pages.
const MIN_SIZE: u64 = 1024 * 1024;

/// The space claimed so far for one spool.
#[derive(Debug)]
pub(super) struct Reservation {
    /// The announced size: nothing is claimed past it, nor without it.
    size: Option<u64>,
    /// Bytes from the start of the file claimed so far.
    claimed: u64,
    /// The filesystem refused a claim: the rest of the blob is written unclaimed. A refusal
    /// can leave part of its range claimed, so it is given back like a claim.
    refused: bool,
}

impl Reservation {
    /// Claims nothing when the size is unknown or small.
    pub(super) fn new(size: Option<u64>) -> Reservation {
        Reservation {
            size: size.filter(|s| *s >= MIN_SIZE),
            claimed: 0,
            refused: false,
        }
    }

    /// Called before the writes that take the file to `end` bytes.
    pub(super) fn ahead(&mut self, file: &File, end: u64) {
        let Some(size) = self.size else { return };
        if self.refused || end <= self.claimed || end > size {
            return;
        }
        let to = end.saturating_add(WINDOW).min(size);
        let flags = rustix::fs::FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(file, flags, self.claimed, to - self.claimed) {
            Ok(()) => self.claimed = to,
            Err(e) => {
                tracing::debug!(error = %e, at = self.claimed, "the filesystem would not claim space for the spool ahead of its writes");
                self.refused = true;
            }
        }
    }

    /// Gives back whatever was claimed past the file's end: truncating a file to its own
    /// length releases the blocks a `KEEP_SIZE` claim put beyond it.
    pub(super) fn release(self, file: &File) {
        if self.claimed == 0 && !self.refused {
            return;
        }
        if let Ok(len) = file.metadata().map(|m| m.len()) {
            if self.refused || self.claimed > len {
                let _ = file.set_len(len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    const MIB: u64 = 1024 * 1024;

    /// Bytes the filesystem holds for `f`, claimed or written.
    fn allocated(f: &File) -> u64 {
        f.metadata().unwrap().blocks() * 512
    }

    fn write_mib(mut f: &File, n: u64) {
        let chunk = vec![7u8; MIB as usize];
        for _ in 0..n {
            f.write_all(&chunk).unwrap();
        }
    }

    /// The space is claimed ahead of the writes, up to the announced size, without changing
    /// the file's length; a file that reached its size keeps exactly what it wrote.
    #[test]
    fn claims_ahead_up_to_the_announced_size() {
        let dir = tempfile::tempdir().unwrap();
        let f = tempfile::tempfile_in(dir.path()).unwrap();
        let mut r = Reservation::new(Some(10 * MIB));
        r.ahead(&f, MIB);
        assert_eq!(f.metadata().unwrap().len(), 0);
        assert!(allocated(&f) >= 10 * MIB, "claimed {}", allocated(&f));
        write_mib(&f, 10);
        r.ahead(&f, 10 * MIB);
        r.release(&f);
        assert_eq!(f.metadata().unwrap().len(), 10 * MIB);
        assert!(allocated(&f) < 10 * MIB + MIB, "{}", allocated(&f));
    }

    /// An upstream announcing far more than it sends holds one window past its bytes, and
    /// gives that back when the writer stops.
    #[test]
    fn an_announced_size_never_sent_costs_one_window_until_release() {
        let dir = tempfile::tempdir().unwrap();
        let f = tempfile::tempfile_in(dir.path()).unwrap();
        let mut r = Reservation::new(Some(1 << 40));
        for i in 1..=3 {
            r.ahead(&f, i * MIB);
            write_mib(&f, 1);
        }
        let held = allocated(&f);
        assert!(
            (WINDOW..=3 * MIB + WINDOW + MIB).contains(&held),
            "held {held}"
        );
        r.release(&f);
        assert_eq!(f.metadata().unwrap().len(), 3 * MIB);
        assert!(allocated(&f) < 4 * MIB, "{}", allocated(&f));
    }

    #[test]
    fn small_and_unknown_sizes_claim_nothing() {
        let dir = tempfile::tempdir().unwrap();
        for size in [None, Some(MIB - 1)] {
            let f = tempfile::tempfile_in(dir.path()).unwrap();
            let mut r = Reservation::new(size);
            r.ahead(&f, 1);
            assert_eq!(allocated(&f), 0, "{size:?}");
            r.release(&f);
        }
    }
}
