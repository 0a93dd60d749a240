//! The shipped binary's allocator: jemalloc, with its settings in effect.

use crate::support::archway::{Archway, Settings};

/// jemalloc returns the pages a burst freed through its background threads, and only with
/// `background_thread:true` parsed from the binary's `malloc_conf`; a setting it cannot
/// parse is reported on stderr as `<jemalloc>: ...`. Built without the `jemalloc` feature
/// (glibc's malloc) there is no such thread, and this fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_runs_on_jemalloc_with_its_settings_in_effect() {
    // No request reaches the upstream: the address only has to parse.
    let aw = Archway::start(&Settings::single("http://127.0.0.1:9")).await;
    let pid = aw.pid().expect("running");
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect();
    assert!(
        threads.iter().any(|t| t == "jemalloc_bg_thd"),
        "no jemalloc background thread among {threads:?}"
    );
    let log = aw.log_text();
    assert!(!log.contains("<jemalloc>"), "{log}");
}
