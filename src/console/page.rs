//! The coverage page, rendered on the server (maud): one self-contained HTML document with
//! its style inline and no script, so it works behind any proxy and fetches nothing.

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::{Coverage, Row};

const STYLE: &str = r#"
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1b1f23; background: #fff; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; } th, td { border: 1px solid #d0d7de; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.upstream { background: #e6f4ea; } td.fallback { background: #e8f0fe; }
td.refused { background: #fde7e9; } td.none { color: #8c959f; text-align: center; }
.cached { font-size: .85em; color: #1a7f37; } .cold { font-size: .85em; color: #9a6700; }
.muted { color: #57606a; } code { font-size: .9em; } form { margin: .5em 0; }
.stats td, .stats th { border: none; padding: .1em 1em .1em 0; }
#coverage td[data-platform] { font-size: .85em; max-width: 12em; overflow-wrap: anywhere; }
#coverage .why { display: block; font-size: .9em; color: #57606a; }
"#;

fn bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).to_string()
}

fn when(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The page for `c`.
pub fn render(c: &Coverage) -> String {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "archway — platform coverage" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "archway" }
                p.muted { "Platform coverage of the tags served recently, the cache, and the upstreams." }
                (cache(c))
                (upstreams(c))
                h2 { "Coverage" }
                form method="get" action="/" {
                    label { "Repository contains " input type="text" name="repository" value=(c.filter.clone().unwrap_or_default()); }
                    " " button type="submit" { "Filter" }
                }
                p.muted { (c.total) @if c.total == 1 { " tag" } @else { " tags" } "; page " (c.page) " of " (c.pages) }
                (matrix(c))
                (pager(c))
            }
        }
    };
    page.into_string()
}

fn cache(c: &Coverage) -> Markup {
    let s = &c.cache;
    html! {
        h2 { "Cache" }
        table.stats {
            tr { th { "size" } td {
                @match (s.size_bytes, s.max_size) {
                    (Some(size), Some(max)) => { (bytes(size)) " of " (bytes(max)) }
                    _ => { "unbounded (storage.max_size unset)" }
                }
            } }
            tr { th { "hit ratio" } td {
                @match s.hit_ratio {
                    Some(r) => { (format!("{:.1}%", r * 100.0)) " (" (s.hits) " hits, " (s.misses) " misses)" }
                    None => { "no requests yet" }
                }
            } }
            tr { th { "fills in flight" } td { (c.fills.len()) } }
        }
        @if !c.fills.is_empty() {
            table id="fills" {
                tr { th { "blob" } th { "done" } }
                @for f in &c.fills {
                    tr {
                        td { code { (f.digest) } @if f.alone { " (for one client)" } }
                        td { (bytes(f.bytes_done)) @if let Some(t) = f.bytes_total { " of " (bytes(t)) } }
                    }
                }
            }
        }
    }
}

fn upstreams(c: &Coverage) -> Markup {
    html! {
        h2 { "Upstreams" }
        table id="upstreams" {
            tr { th { "upstream" } th { "last success" } th { "last error" } th { "rate budget" } }
            @for u in &c.upstreams {
                tr {
                    td { (u.name) }
                    td { @match u.status.last_success { Some(t) => { (when(t)) } None => { "—" } } }
                    td { @match &u.status.last_error { Some((t, e)) => { (when(*t)) ": " (e) } None => { "—" } } }
                    td {
                        @match &u.status.ratelimit {
                            Some(r) => {
                                (r.remaining) " of " (r.limit) " left"
                                @if let Some(w) = r.window_secs { " per " (humantime::format_duration(std::time::Duration::from_secs(w))) }
                                @if u.status.budget_low { " — low: serving cached tags, prewarm paused" }
                            }
                            None => { "not announced" }
                        }
                    }
                }
            }
        }
    }
}

fn matrix(c: &Coverage) -> Markup {
    html! {
        table id="coverage" {
            tr {
                th { "repository" } th { "tag" }
                @for p in &c.platforms { th { (p) } }
            }
            @for r in &c.rows { (row(c, r)) }
        }
    }
}

fn row(c: &Coverage, r: &Row) -> Markup {
    html! {
        tr data-repository=(r.repository) data-tag=(r.tag) {
            td { (r.repository) }
            td {
                (r.tag)
                @if r.synthesized { br; span.muted { "synthesized index" } }
                @if let Some(e) = &r.error { br; span.muted { "unresolved: " (e) } }
            }
            @for p in &c.platforms {
                @match r.cells.get(p) {
                    Some(cell) => {
                        td class=(cell.kind) data-platform=(p) {
                            (cell.label())
                            br;
                            @if let Some(why) = &cell.why { span.why { (why) } }
                            @if cell.kind != "refused" {
                                @if cell.cached { span.cached { "cached" } } @else { span.cold { "not cached" } }
                            }
                        }
                    }
                    None => { td.none data-platform=(p) { "—" } }
                }
            }
        }
    }
}

fn pager(c: &Coverage) -> Markup {
    let link = |page: usize| {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("page", &page.to_string());
        q.append_pair("per_page", &c.per_page.to_string());
        if let Some(f) = &c.filter {
            q.append_pair("repository", f);
        }
        format!("/?{}", q.finish())
    };
    html! {
        p {
            @if c.page > 1 { a href=(link(c.page - 1)) { "← previous" } " " }
            @if c.page < c.pages { a href=(link(c.page + 1)) { "next →" } }
        }
    }
}
