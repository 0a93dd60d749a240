//! Debian's real chromium, headless: what a page renders to (the DOM after parsing) and what
//! it looks like (a screenshot).

use std::path::Path;
use std::process::Command;

/// Runs chromium headless on `url` with `args`; its stdout.
fn headless(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium must be installed (make test installs it)");
    assert!(
        out.status.success(),
        "chromium {args:?} {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The document as chromium parsed and rendered it.
pub fn dump_dom(url: &str) -> String {
    headless(url, &["--dump-dom"])
}

/// A `width`×`height` PNG of the page, written to `to`.
pub fn screenshot(url: &str, to: &Path, width: u32, height: u32) {
    headless(
        url,
        &[
            &format!("--screenshot={}", to.display()),
            &format!("--window-size={width},{height}"),
        ],
    );
}

/// A PNG's width and height, from its header; `None` if it is not a PNG.
pub fn png_size(data: &[u8]) -> Option<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if data.len() < 24 || !data.starts_with(SIGNATURE) || &data[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&data[16..20]), be(&data[20..24])))
}

/// The cells of the table row whose `data-tag` is `tag`: (class, data-platform, text) for
/// each `<td>` that has a platform.
pub fn row_cells(dom: &str, tag: &str) -> Vec<(String, String, String)> {
    let start = dom
        .find(&format!("data-tag=\"{tag}\""))
        .unwrap_or_else(|| panic!("no row for tag {tag} in:\n{dom}"));
    let row = &dom[start..];
    let row = &row[..row.find("</tr>").unwrap_or(row.len())];
    row.split("<td")
        .skip(1)
        .filter_map(|td| {
            let (attrs, rest) = td.split_once('>')?;
            let attr = |name: &str| {
                let at = attrs.find(&format!("{name}=\""))? + name.len() + 2;
                Some(attrs[at..].split('"').next()?.to_string())
            };
            let platform = attr("data-platform")?;
            let class = attr("class").unwrap_or_default();
            let inner = &rest[..rest.find("</td>").unwrap_or(rest.len())];
            Some((class, platform, text_of(inner)))
        })
        .collect()
}

/// The text of an HTML fragment: tags dropped, entities `&amp;` `&lt;` `&gt;` decoded,
/// runs of space collapsed.
fn text_of(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let out = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}
