//! What `archway warm` shows while it works: on a terminal, a progress bar per blob being
//! fetched and one for the overall bytes; otherwise (a CI log, a pipe) one line per blob,
//! so the output stays readable when nobody watches it live.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::gc::human_bytes;
use crate::oci::Digest;
use crate::registry::warming::{WarmEvent, WarmObserver};
use crate::storage::Fill;

/// How often the bars follow the fills.
const TICK: Duration = Duration::from_millis(100);

/// Reports warming on stderr.
pub struct TerminalProgress {
    bars: Option<Bars>,
}

struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    state: Arc<Mutex<State>>,
    ticker: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct State {
    /// Blobs being fetched, with their bars.
    active: HashMap<Digest, (Arc<Fill>, ProgressBar)>,
    /// Bytes of the blobs finished (fetched or found cached).
    done: u64,
    /// Sizes known so far, of finished and active blobs.
    known: u64,
}

impl TerminalProgress {
    /// Bars when `tty` (stderr is a terminal), else lines. Must be made inside a Tokio
    /// runtime: the bars follow the fills from a task.
    pub fn new(tty: bool) -> TerminalProgress {
        if !tty {
            return TerminalProgress { bars: None };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(style(
            "{prefix:>8} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}",
        ));
        overall.set_prefix("overall");
        let state = Arc::new(Mutex::new(State::default()));
        let ticker = tokio::spawn(follow(state.clone(), overall.clone()));
        TerminalProgress {
            bars: Some(Bars {
                multi,
                overall,
                state,
                ticker,
            }),
        }
    }

    /// Clears the bars, so the summary that follows stands alone.
    pub fn finish(&self) {
        if let Some(b) = &self.bars {
            b.ticker.abort();
            b.overall.finish_and_clear();
            let _ = b.multi.clear();
        }
    }

    fn line(&self, text: String) {
        match &self.bars {
            Some(b) => {
                let _ = b.multi.println(text);
            }
            None => eprintln!("{text}"),
        }
    }
}

impl WarmObserver for TerminalProgress {
    fn event(&self, event: WarmEvent<'_>) {
        match event {
            WarmEvent::Fetching { digest, fill } => {
                let Some(b) = &self.bars else {
                    return;
                };
                let (_, size) = fill.progress();
                let bar = b.multi.add(ProgressBar::new(size.unwrap_or(0)));
                bar.set_style(style(
                    "{prefix:>8} [{bar:40}] {bytes}/{total_bytes} {wide_msg}",
                ));
                bar.set_prefix("fetch");
                bar.set_message(short(digest));
                if let Ok(mut s) = b.state.lock() {
                    s.known += size.unwrap_or(0);
                    s.active.insert(digest.clone(), (fill.clone(), bar));
                }
            }
            WarmEvent::Cached { digest, size } => {
                self.settle(digest, size, false);
                self.line(format!("cached   {digest} {}", human_bytes(size)));
            }
            WarmEvent::Fetched { digest, size } => {
                self.settle(digest, size, true);
                self.line(format!("fetched  {digest} {}", human_bytes(size)));
            }
            WarmEvent::Failed { digest, error } => {
                self.settle(digest, 0, true);
                self.line(format!("failed   {digest}: {error}"));
            }
        }
    }
}

impl TerminalProgress {
    /// A blob is finished: its bar goes, its bytes count as done.
    fn settle(&self, digest: &Digest, size: u64, was_active: bool) {
        let Some(b) = &self.bars else {
            return;
        };
        let Ok(mut s) = b.state.lock() else {
            return;
        };
        match s.active.remove(digest) {
            Some((fill, bar)) => {
                // Its size was counted as known when it started, if announced then.
                if fill.progress().1.is_none() {
                    s.known += size;
                }
                bar.finish_and_clear();
                b.multi.remove(&bar);
            }
            None if !was_active => s.known += size,
            None => {}
        }
        s.done += size;
    }
}

/// Moves the bars to where the fills are, until aborted.
async fn follow(state: Arc<Mutex<State>>, overall: ProgressBar) {
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let Ok(s) = state.lock() else {
            return;
        };
        let mut active = 0;
        for (fill, bar) in s.active.values() {
            let (written, _) = fill.progress();
            bar.set_position(written);
            active += written;
        }
        overall.set_length(s.known);
        overall.set_position(s.done + active);
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// `sha256:0123456789ab`, enough to tell blobs apart on one screen.
fn short(d: &Digest) -> String {
    let s = d.to_string();
    s.chars().take(19).collect()
}
