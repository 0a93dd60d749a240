//! Warming jobs of the running server: `POST /warm` starts one, `GET /warm/<id>` follows it.
//! A job warms its references one after the other through the registry current when it was
//! started; its counts move as blobs finish, so a poll sees progress. Jobs are kept an hour.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::oci::Platform;
use crate::registry::warming::{WarmEvent, WarmObserver};
use crate::registry::Registry;

/// `POST /warm`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmRequest {
    /// `registry/repo:tag` or `registry/repo@digest`.
    pub refs: Vec<String>,
    /// `os/arch[/variant]`; empty: every platform of an index.
    #[serde(default)]
    pub platforms: Vec<String>,
}

/// A job as `GET /warm/<id>` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    pub id: String,
    /// `running`, `done` (everything warmed) or `failed` (something could not be).
    pub state: &'static str,
    pub refs: Vec<String>,
    pub platforms: Vec<String>,
    pub fetched: usize,
    pub cached: usize,
    pub failed: usize,
    pub bytes: u64,
    pub errors: Vec<String>,
}

#[derive(Default)]
struct Job {
    refs: Vec<String>,
    platforms: Vec<String>,
    fetched: AtomicUsize,
    cached: AtomicUsize,
    failed: AtomicUsize,
    bytes: AtomicU64,
    errors: Mutex<Vec<String>>,
    finished: std::sync::atomic::AtomicBool,
}

impl WarmObserver for Job {
    fn event(&self, e: WarmEvent<'_>) {
        match e {
            WarmEvent::Fetching { .. } => {}
            WarmEvent::Cached { .. } => {
                self.cached.fetch_add(1, Ordering::Relaxed);
            }
            WarmEvent::Fetched { size, .. } => {
                self.fetched.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(size, Ordering::Relaxed);
            }
            WarmEvent::Failed { digest, error } => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.error(format!("{digest}: {error}"));
            }
        }
    }
}

impl Job {
    fn error(&self, e: String) {
        if let Ok(mut errs) = self.errors.lock() {
            errs.push(e);
        }
    }

    fn report(&self, id: &str) -> JobReport {
        let failed = self.failed.load(Ordering::Relaxed);
        let errors = self.errors.lock().map(|e| e.clone()).unwrap_or_default();
        JobReport {
            id: id.to_string(),
            state: match (self.finished.load(Ordering::Acquire), errors.is_empty()) {
                (false, _) => "running",
                (true, true) => "done",
                (true, false) => "failed",
            },
            refs: self.refs.clone(),
            platforms: self.platforms.clone(),
            fetched: self.fetched.load(Ordering::Relaxed),
            cached: self.cached.load(Ordering::Relaxed),
            failed,
            bytes: self.bytes.load(Ordering::Relaxed),
            errors,
        }
    }
}

/// The jobs of this process.
pub struct Jobs {
    jobs: moka::sync::Cache<String, Arc<Job>>,
}

impl Default for Jobs {
    fn default() -> Jobs {
        Jobs {
            jobs: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        }
    }
}

impl Jobs {
    /// Starts warming what `req` names with `registry`; the job's id. A request that names
    /// nothing, or a platform that does not parse, is refused before anything starts.
    pub fn start(&self, registry: Arc<Registry>, req: WarmRequest) -> Result<String, String> {
        if req.refs.is_empty() {
            return Err(
                "refs: name at least one reference (registry/repo:tag or registry/repo@digest)"
                    .into(),
            );
        }
        let platforms = req
            .platforms
            .iter()
            .map(|p| {
                p.parse::<Platform>()
                    .map_err(|e| format!("platforms: {p:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let job = Arc::new(Job {
            refs: req.refs.clone(),
            platforms: req.platforms.clone(),
            ..Default::default()
        });
        self.jobs.insert(id.clone(), job.clone());
        tokio::spawn(async move {
            for r in &job.refs {
                if let Err(e) = registry.warm(r, &platforms, &*job).await {
                    job.error(format!("{r}: {}", crate::causes::Chain(&e)));
                }
            }
            job.finished.store(true, Ordering::Release);
        });
        Ok(id)
    }

    pub fn report(&self, id: &str) -> Option<JobReport> {
        self.jobs.get(id).map(|j| j.report(id))
    }
}
