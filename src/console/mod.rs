//! The operator console on the admin listener: the platform-coverage page (`/`), the same
//! data as JSON (`/coverage.json`), and cache warming jobs (`POST /warm`, `GET /warm/<id>`).
//!
//! Coverage is of the tags archway served recently: for each, platform by platform, where
//! the platform came from (the upstream, a fallback, or refused and why) and whether its
//! content is in the cache. It is computed when asked, one page at a time, from what the
//! registry already holds; resolving a tag that is not in memory may ask the upstream, as a
//! pull of it would.

pub mod jobs;
mod page;
pub mod terminal;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::registry::Registry;

pub use page::render;

/// Rows per page when the request does not say.
pub const DEFAULT_PER_PAGE: usize = 50;
const MAX_PER_PAGE: usize = 500;

/// What the console shows.
#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    /// Every platform seen in the rows of this page, in order: the matrix's columns.
    pub platforms: Vec<String>,
    pub rows: Vec<Row>,
    /// Tags matching the filter, over all pages.
    pub total: usize,
    /// This page (from 1) and how many there are.
    pub page: usize,
    pub pages: usize,
    pub per_page: usize,
    /// The repository filter applied (a substring), if any.
    pub filter: Option<String>,
    pub cache: CacheStats,
    pub fills: Vec<FillView>,
    pub upstreams: Vec<UpstreamView>,
}

/// One tag.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `upstream/repository`.
    pub repository: String,
    pub tag: String,
    /// Of what archway serves for the tag.
    pub digest: Option<String>,
    /// Whether that is an index archway built with fallbacks.
    pub synthesized: bool,
    /// When this replica last resolved it (epoch millis).
    pub last_served: u64,
    /// Platform → how it is covered.
    pub cells: BTreeMap<String, Cell>,
    /// Why the tag could not be resolved now, if it could not.
    pub error: Option<String>,
}

/// How one platform of a tag is covered.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Cell {
    /// `upstream`, `fallback` or `refused`.
    pub kind: &'static str,
    /// The fallback's reference, or what kind of refusal it is and of which reference:
    /// `architecture mismatch (docker.io/...:riscv64-latest)`.
    pub detail: Option<String>,
    /// For a refusal, the whole reason: `its image config says linux/amd64`.
    pub why: Option<String>,
    /// Of the platform's manifest, when it has one.
    pub digest: Option<String>,
    /// Whether that manifest, its config and its layers are all in the cache.
    pub cached: bool,
}

impl Cell {
    /// As the matrix writes it: `upstream`, `fallback <reference>`, `refused <reason>`.
    pub fn label(&self) -> String {
        match &self.detail {
            Some(d) => format!("{} {d}", self.kind),
            None => self.kind.to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CacheStats {
    /// As the last collection measured it (bounded caches only).
    pub size_bytes: Option<u64>,
    pub max_size: Option<u64>,
    pub hits: u64,
    pub misses: u64,
    /// hits / (hits + misses), when there was any request.
    pub hit_ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FillView {
    pub digest: String,
    pub bytes_done: u64,
    pub bytes_total: Option<u64>,
    /// Fetched again for one client beside the shared fill of the same blob (the cache
    /// disk was full and that fill had let go of the bytes the client starts at).
    pub alone: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpstreamView {
    pub name: String,
    pub status: crate::upstream::health::UpstreamStatus,
}

/// The query of a coverage request.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub page: usize,
    pub per_page: usize,
    pub repository: Option<String>,
}

impl Query {
    /// From `?page=&per_page=&repository=`.
    pub fn parse(q: Option<&str>) -> Query {
        let mut out = Query {
            page: 1,
            per_page: DEFAULT_PER_PAGE,
            repository: None,
        };
        for (k, v) in url::form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
            match &*k {
                "page" => out.page = v.parse().unwrap_or(1).max(1),
                "per_page" => {
                    out.per_page = v.parse().unwrap_or(DEFAULT_PER_PAGE).clamp(1, MAX_PER_PAGE)
                }
                "repository" if !v.is_empty() => out.repository = Some(v.into_owned()),
                _ => {}
            }
        }
        out
    }
}

/// The coverage page's data.
pub async fn coverage(registry: &Registry, q: &Query) -> Coverage {
    let mut tags: Vec<_> = registry
        .recent_tags()
        .into_iter()
        .map(|(route, tag, at)| (registry.route_name(&route), route, tag, at))
        .filter(|(name, ..)| q.repository.as_deref().is_none_or(|f| name.contains(f)))
        .collect();
    tags.sort_by(|a, b| (&a.0, a.2.as_str()).cmp(&(&b.0, b.2.as_str())));
    let total = tags.len();
    let pages = total.div_ceil(q.per_page).max(1);
    let page = q.page.min(pages);
    let mut rows = Vec::new();
    for (name, route, tag, at) in tags
        .into_iter()
        .skip((page - 1) * q.per_page)
        .take(q.per_page)
    {
        rows.push(row(registry, name, &route, &tag, at).await);
    }
    let platforms: BTreeSet<String> = rows.iter().flat_map(|r| r.cells.keys().cloned()).collect();
    Coverage {
        platforms: order_platforms(platforms),
        rows,
        total,
        page,
        pages,
        per_page: q.per_page,
        filter: q.repository.clone(),
        cache: cache_stats(registry),
        fills: registry
            .fills_progress()
            .into_iter()
            .map(|f| FillView {
                digest: f.digest.to_string(),
                bytes_done: f.written,
                bytes_total: f.size,
                alone: f.alone,
            })
            .collect(),
        upstreams: registry
            .upstream_statuses()
            .into_iter()
            .map(|(name, status)| UpstreamView { name, status })
            .collect(),
    }
}

async fn row(
    registry: &Registry,
    repository: String,
    route: &crate::routing::Route,
    tag: &crate::oci::Tag,
    last_served: u64,
) -> Row {
    let mut row = Row {
        repository,
        tag: tag.to_string(),
        digest: None,
        synthesized: false,
        last_served,
        cells: BTreeMap::new(),
        error: None,
    };
    let report = match registry.resolve(route, tag).await {
        Ok(r) => r,
        Err(e) => {
            row.error = Some(crate::causes::Chain(&e).to_string());
            return row;
        }
    };
    row.digest = Some(report.digest.clone());
    row.synthesized = report.synthesized;
    for p in &report.platforms {
        let (kind, detail, why) = match (&p.digest, p.source.as_str()) {
            (None, reference) => (
                "refused",
                Some(format!(
                    "{} ({reference})",
                    p.refused.map_or("refused", |r| r.as_str())
                )),
                Some(p.check.trim_start_matches("refused: ").to_string()),
            ),
            (Some(_), "upstream index" | "upstream manifest") => ("upstream", None, None),
            (Some(_), reference) => ("fallback", Some(reference.to_string()), None),
        };
        let cached = match p.digest.as_deref().and_then(|d| d.parse().ok()) {
            Some(d) => registry.cached_image(&d).await.unwrap_or(false),
            None => false,
        };
        row.cells.insert(
            p.platform.clone(),
            Cell {
                kind,
                detail,
                why,
                digest: p.digest.clone(),
                cached,
            },
        );
    }
    row
}

/// Columns: the common platforms first (as clusters run them), then the rest by name.
fn order_platforms(seen: BTreeSet<String>) -> Vec<String> {
    const FIRST: [&str; 4] = ["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/s390x"];
    let mut out: Vec<String> = FIRST
        .iter()
        .filter(|p| seen.contains(**p))
        .map(|p| p.to_string())
        .collect();
    out.extend(seen.into_iter().filter(|p| !FIRST.contains(&p.as_str())));
    out
}

fn cache_stats(registry: &Registry) -> CacheStats {
    let m = &registry.metrics;
    let sum = |v: &prometheus::IntCounterVec| -> u64 {
        ["tag", "manifest", "blob"]
            .iter()
            .map(|l| v.with_label_values(&[l]).get())
            .sum()
    };
    let (hits, misses) = (sum(&m.cache_hits), sum(&m.cache_misses));
    let max_size = registry.config.storage.gc.max_size;
    CacheStats {
        size_bytes: max_size.map(|_| m.cache_size.get().max(0) as u64),
        max_size,
        hits,
        misses,
        hit_ratio: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
    }
}
