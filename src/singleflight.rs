//! Merges concurrent computations of the same key into one: the first caller runs it, the
//! others wait for its result. If the running caller is cancelled, a waiter takes over, so a
//! disconnecting client never strands the others.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

pub struct Group<K, V> {
    calls: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K, V> Default for Group<K, V> {
    fn default() -> Self {
        Group {
            calls: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Group<K, V> {
    /// The result of `f` for `key`, run once however many callers ask at the same time, and
    /// whether this caller is the one that ran it (the others joined).
    pub async fn run<F, Fut>(&self, key: K, f: F) -> (V, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = {
            let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            calls.entry(key.clone()).or_default().clone()
        };
        let mut ran = false;
        let v = cell
            .get_or_init(|| {
                ran = true;
                f()
            })
            .await
            .clone();
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        if calls.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            calls.remove(&key);
        }
        (v, ran)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let g: Arc<Group<u8, usize>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (g, runs, gate) = (g.clone(), runs.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                g.run(1, || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    gate.notified().await;
                    42
                })
                .await
            }));
        }
        // On the current-thread test runtime each yield lets every spawned task run until it
        // blocks, so all eight are waiting on the one call before it is released.
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        let mut leaders = 0;
        for t in tasks {
            let (v, ran) = t.await.unwrap();
            assert_eq!(v, 42);
            leaders += usize::from(ran);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1, "one caller ran it, seven joined");
        // Finished calls are forgotten: the next one runs again.
        assert_eq!(g.run(1, || async { 7 }).await, (7, true));
    }
}
