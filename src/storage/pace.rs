//! Where a fill's readers stand, and the fill's wait for the slowest of them once the cache
//! disk stopped taking its bytes.
//!
//! Normally a reader that falls behind the chunks a fill keeps in memory reads the spool, so
//! a fill never waits for anyone. Once the disk filled, memory is the only copy of what the
//! spool did not take, and a bounded memory cannot keep every byte for a reader far behind.
//! Rather than cut that reader's response (a 200 whose body stops short), the fill reads the
//! upstream no faster than its slowest reader, as a relay does. A reader that takes nothing
//! for [`PATIENCE`] is cut, so one stalled client cannot hold the others, and the upstream
//! connection, for ever.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;

/// How long a fill waits for a reader that takes nothing, before cutting it. Below the
/// upstream's default read timeout, so the fill's other readers go on over the same
/// connection rather than a resumed one.
pub(super) const PATIENCE: Duration = Duration::from_secs(20);

/// The readers of one fill.
#[derive(Default)]
pub(super) struct Places {
    marks: Mutex<Vec<Weak<Mark>>>,
    /// Woken when a reader moves on or leaves while the fill waits.
    moved: Notify,
}

/// One reader's place.
pub(super) struct Mark {
    /// The next byte it wants; `u64::MAX` once it wants none.
    pos: AtomicU64,
    /// Set when the fill stopped waiting for it.
    cut: AtomicBool,
}

impl Mark {
    pub(super) fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }
}

impl Places {
    /// A reader that wants the bytes from `start` on.
    pub(super) fn join(&self, start: u64) -> Arc<Mark> {
        let mark = Arc::new(Mark {
            pos: AtomicU64::new(start),
            cut: AtomicBool::new(false),
        });
        if let Ok(mut marks) = self.marks.lock() {
            marks.retain(|m| m.strong_count() > 0);
            marks.push(Arc::downgrade(&mark));
        }
        mark
    }

    /// `mark` now wants the bytes from `pos` on. `waited` says whether a fill may be waiting
    /// (its disk filled): only then is anyone woken, so normal reads pay one atomic store.
    pub(super) fn moved(&self, mark: &Mark, pos: u64, waited: bool) {
        mark.pos.store(pos, Ordering::Release);
        if waited {
            self.moved.notify_waiters();
        }
    }

    /// `mark` wants no more bytes (its range is read, it failed, or its client went away).
    pub(super) fn leave(&self, mark: &Mark) {
        mark.pos.store(u64::MAX, Ordering::Release);
        self.moved.notify_waiters();
    }

    /// The place of the slowest reader still reading, if any.
    pub(super) fn slowest(&self) -> Option<u64> {
        let marks = self.marks.lock().ok()?;
        marks
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|m| !m.is_cut())
            .map(|m| m.pos.load(Ordering::Acquire))
            .filter(|p| *p != u64::MAX)
            .min()
    }

    /// Waits until no reader is more than `ahead` bytes behind `queued`, cutting readers that
    /// take nothing for `patience`; `on_wait` is called before the first wait, if any.
    /// Returns how many it cut.
    pub(super) async fn wait_for_slowest(
        &self,
        queued: u64,
        ahead: u64,
        patience: Duration,
        on_wait: impl FnOnce(),
    ) -> usize {
        let mut on_wait = Some(on_wait);
        let mut cut = 0;
        loop {
            let woken = self.moved.notified();
            tokio::pin!(woken);
            // Registered before the check: a reader moving in between still wakes this wait.
            woken.as_mut().enable();
            let Some(slowest) = self.slowest() else {
                return cut;
            };
            if queued.saturating_sub(slowest) <= ahead {
                return cut;
            }
            if let Some(f) = on_wait.take() {
                f();
            }
            if tokio::time::timeout(patience, woken).await.is_err() {
                cut += self.cut_at(slowest);
            }
        }
    }

    /// Cuts the readers still at `pos`.
    fn cut_at(&self, pos: u64) -> usize {
        let Ok(marks) = self.marks.lock() else {
            return 0;
        };
        let mut n = 0;
        for m in marks.iter().filter_map(Weak::upgrade) {
            if !m.is_cut() && m.pos.load(Ordering::Acquire) == pos {
                m.cut.store(true, Ordering::Release);
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `wait` is still waiting once every other task is idle (time is paused and
    /// jumps ahead only then, so this is no race).
    async fn still_waiting(wait: &mut tokio::task::JoinHandle<usize>) -> bool {
        tokio::time::timeout(Duration::from_secs(1), wait)
            .await
            .is_err()
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_the_slowest_reader_and_not_for_those_gone() {
        let places = Arc::new(Places::default());
        let (fast, slow) = (places.join(0), places.join(0));
        places.moved(&fast, 950, true);
        assert_eq!(places.slowest(), Some(0));
        let wait = |places: Arc<Places>| {
            tokio::spawn(async move {
                places
                    .wait_for_slowest(1_000, 100, Duration::from_secs(3600), || {})
                    .await
            })
        };
        let mut waiting = wait(places.clone());
        assert!(still_waiting(&mut waiting).await);
        places.moved(&slow, 500, true);
        assert!(still_waiting(&mut waiting).await, "500 behind is too far");
        places.moved(&slow, 900, true);
        assert_eq!(waiting.await.unwrap(), 0, "within 100 of the end: done");

        let mut waiting = wait(places.clone());
        places.moved(&fast, 0, true);
        assert!(still_waiting(&mut waiting).await);
        // That reader's client goes away: nobody is left behind.
        places.leave(&fast);
        assert_eq!(waiting.await.unwrap(), 0);
        assert_eq!(places.slowest(), Some(900));
        drop(slow);
        assert_eq!(
            places.slowest(),
            None,
            "a dropped reader holds nothing back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_takes_nothing_is_cut_after_the_patience() {
        let places = Places::default();
        let stalled = places.join(10);
        let cut = places
            .wait_for_slowest(10_000, 100, Duration::from_secs(20), || {})
            .await;
        assert_eq!(cut, 1);
        assert!(stalled.is_cut());
        assert_eq!(places.slowest(), None, "a cut reader holds nothing back");
    }
}
