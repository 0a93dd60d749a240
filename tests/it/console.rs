//! The operator console on the admin listener, read by a real headless chromium: the
//! coverage matrix of the tutorial's layout, its JSON twin, paging, and `[auth]` in front.

use serde_json::Value;

use crate::multiarch::{settings, tutorial, REPO};
use crate::support::archway::Archway;
use crate::support::chromium::{dump_dom, png_size, row_cells, screenshot};
use crate::support::images::{Image, Pusher};
use crate::support::{htpasswd, http, oci_error, random_bytes, skopeo, unique_seed};

/// One more fallback, whose reference does not exist upstream: refused as missing.
const MISSING: &str = "\"linux/mips64le\" = \"docker.io/thinklab/go-hello-world:mips64le-{tag}\"\n";

async fn coverage_json(aw: &Archway, query: &str) -> Value {
    crate::support::admin_json(aw.admin(), &format!("/coverage.json{query}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_where_each_platform_comes_from_in_a_real_browser() {
    let t = tutorial().await;
    let mut s = settings(&t.up, "1h", MISSING);
    s.admin = true;
    let aw = Archway::start(&s).await;
    // A node pulls amd64: its content is cached, arm64's is not.
    let dir = tempfile::tempdir().unwrap();
    let out = skopeo::copy_to_oci(
        &format!("{}/{REPO}:latest", aw.host()),
        dir.path(),
        &["--override-arch", "amd64"],
    );
    assert!(out.ok, "{}", out.stderr);

    let url = format!("http://127.0.0.1:{}/", aw.admin());
    let dom = dump_dom(&url);
    let cells = row_cells(&dom, "latest");
    let cell = |p: &str| {
        cells
            .iter()
            .find(|c| c.1 == p)
            .unwrap_or_else(|| panic!("no {p} cell in {cells:?}"))
            .clone()
    };
    assert_eq!(
        cell("linux/amd64"),
        (
            "upstream".into(),
            "linux/amd64".into(),
            "upstream cached".into()
        )
    );
    assert_eq!(cell("linux/arm64").2, "upstream not cached");
    let s390x = cell("linux/s390x");
    assert_eq!(s390x.0, "fallback");
    assert!(
        s390x
            .2
            .starts_with("fallback docker.io/thinklab/go-hello-world:s390x-latest"),
        "{s390x:?}"
    );
    assert_eq!(
        cell("linux/arm/v7").2,
        "fallback docker.io/arm32v7/go-hello-world:latest not cached"
    );
    let riscv = cell("linux/riscv64");
    assert_eq!(riscv.0, "refused");
    assert_eq!(
        riscv.2,
        "refused architecture mismatch (docker.io/thinklab/go-hello-world:riscv64-latest) its image config says linux/amd64",
        "the mislabelled fallback says what its config names"
    );
    let mips = cell("linux/mips64le");
    assert_eq!(mips.0, "refused");
    assert!(
        mips.2
            .starts_with("refused missing (docker.io/thinklab/go-hello-world:mips64le-latest)"),
        "{mips:?}"
    );
    // Self-contained: no script, nothing from another origin.
    assert!(!dom.contains("<script"), "no JavaScript");
    for attr in ["src=\"", "href=\""] {
        for (i, _) in dom.match_indices(attr) {
            let v = &dom[i + attr.len()..];
            assert!(
                v.starts_with('/') || v.starts_with('?'),
                "the page links only to itself: {}",
                &v[..v.len().min(60)]
            );
        }
    }
    assert!(dom.contains("id=\"upstreams\"") && dom.contains("<td>hub</td>"));

    // The picture, kept where cargo keeps test output.
    let png = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    let _ = std::fs::remove_file(&png);
    screenshot(&url, &png, 1280, 900);
    let data = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert_eq!(png_size(&data), Some((1280, 900)));
    assert!(
        data.len() > 10_000,
        "a page, not a blank: {} bytes",
        data.len()
    );

    // The same data for scripts.
    let c = coverage_json(&aw, "").await;
    let row = c["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["tag"] == "latest" && r["repository"].as_str().unwrap().ends_with(REPO))
        .unwrap_or_else(|| panic!("{c:#}"));
    assert_eq!(row["synthesized"], true);
    let cell = &row["cells"]["linux/s390x"];
    assert_eq!(cell["kind"], "fallback");
    assert_eq!(
        cell["detail"],
        "docker.io/thinklab/go-hello-world:s390x-latest"
    );
    assert_eq!(cell["digest"].as_str(), Some(t.s390x.digest.as_str()));
    assert_eq!(row["cells"]["linux/amd64"]["cached"], true);
    assert_eq!(row["cells"]["linux/arm64"]["cached"], false);
    assert_eq!(row["cells"]["linux/riscv64"]["kind"], "refused");
    assert_eq!(
        row["cells"]["linux/riscv64"]["why"],
        "its image config says linux/amd64"
    );
    let platforms: Vec<&str> = c["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(&platforms[..2], ["linux/amd64", "linux/arm64"]);
    assert!(c["cache"]["hits"].as_u64().is_some());
    assert_eq!(c["upstreams"][0]["name"], "hub");
    assert!(c["upstreams"][0]["status"]["last_success"].is_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tags_are_paged_and_filtered_by_repository() {
    let t = tutorial().await;
    let push = Pusher::new(&t.up.url(), None);
    let img = Image::new("linux/amd64", vec![random_bytes(unique_seed(), 1_000)]);
    let tags: Vec<String> = (0..12).map(|i| format!("v{i:02}")).collect();
    for tag in &tags {
        push.image("pager/app", tag, &img).await;
    }
    let mut s = settings(&t.up, "1h", "");
    s.admin = true;
    let aw = Archway::start(&s).await;
    for tag in &tags {
        let r = http()
            .get(format!("{}/v2/pager/app/manifests/{tag}", aw.url()))
            .header("accept", crate::support::images::OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = http()
        .get(format!("{}/v2/{REPO}/manifests/latest", aw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let c = coverage_json(&aw, "?repository=pager/app&per_page=5&page=3").await;
    assert_eq!(
        (c["total"].as_u64(), c["pages"].as_u64()),
        (Some(12), Some(3))
    );
    let on_page: Vec<&str> = c["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["tag"].as_str().unwrap())
        .collect();
    assert_eq!(on_page, ["v10", "v11"], "sorted by repository, then tag");
    let all = coverage_json(&aw, "").await;
    assert_eq!(all["total"], 13, "{all:#}");

    let dom = dump_dom(&format!(
        "http://127.0.0.1:{}/?repository=pager%2Fapp&per_page=5&page=2",
        aw.admin()
    ));
    assert!(dom.contains("12 tags; page 2 of 3"), "{dom}");
    assert!(dom.contains("data-tag=\"v05\"") && !dom.contains("data-tag=\"v04\""));
    assert!(!dom.contains("data-tag=\"latest\""), "filtered out");
    assert!(
        dom.contains("page=3") && dom.contains("page=1"),
        "links both ways"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_auth_the_console_asks_for_credentials_and_probes_stay_open() {
    let t = tutorial().await;
    let dir = tempfile::tempdir().unwrap();
    let file = htpasswd(dir.path(), "ops", "s3cret");
    let mut s = settings(
        &t.up,
        "1h",
        &format!(
            "\n[auth]\nhtpasswd = \"{}\"\nanonymous = false\n",
            file.display()
        ),
    );
    s.admin = true;
    let aw = Archway::start(&s).await;
    let admin = format!("http://127.0.0.1:{}", aw.admin());
    for path in ["/", "/coverage.json", "/warm/x"] {
        let r = http().get(format!("{admin}{path}")).send().await.unwrap();
        assert!(r.headers().contains_key("www-authenticate"), "{path}");
        assert_eq!(oci_error(r).await, (401, "UNAUTHORIZED".into()), "{path}");
    }
    let r = http()
        .post(format!("{admin}/warm"))
        .body(r#"{"refs":["docker.io/thinklab/go-hello-world:latest"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no anonymous warming");
    for path in ["/healthz", "/metrics"] {
        let r = http().get(format!("{admin}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}: probes and scrapes need no login");
    }
    let r = http()
        .get(format!("{admin}/"))
        .basic_auth("ops", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("id=\"coverage\""));
    // The browser sends the credentials it is given.
    let dom = dump_dom(&format!("http://ops:s3cret@127.0.0.1:{}/", aw.admin()));
    assert!(dom.contains("id=\"coverage\""), "{dom}");
}
