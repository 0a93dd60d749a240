//! Helper for `benches/load.sh`: pushes a fixture image to a registry and performs timed cold
//! pulls the way a container client does (manifest by tag, config and layers with 3 in
//! parallel, every blob sha256-verified).
//!
//! ```text
//! benchtool push URL REPO TAG MIB[,MIB...]     prints the manifest digest and the layer digests
//! benchtool pull URL REPO TAG                  prints seconds for one pull
//! benchtool herd URL REPO TAG N                N concurrent pulls; prints seconds for all
//! benchtool fetch URL DIGEST N C               N verified GETs, C at a time (following
//!                                              redirects); prints MB/s
//! benchtool soak URL PREFIX IMAGES CLIENTS SECONDS UPSTREAM
//!                                              CLIENTS clients, each with its own
//!                                              connections, pulling PREFIX0..PREFIX<IMAGES-1>
//!                                              (tag v1) in a random order until SECONDS
//!                                              pass, one pull in 8 the newest of the fresh
//!                                              images pushed to UPSTREAM every second (cold
//!                                              fills joined by many); prints pulls, errors
//!                                              and latencies
//! ```

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn sha(data: &[u8]) -> String {
    named(Sha256::digest(data))
}

/// A SHA-256 hash as a digest string.
fn named(hash: impl AsRef<[u8]>) -> String {
    format!("sha256:{}", hex::encode(hash))
}

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

async fn push_blob(c: &reqwest::Client, url: &str, repo: &str, data: Vec<u8>) -> Res<String> {
    let digest = sha(&data);
    let r = c
        .post(format!("{url}/v2/{repo}/blobs/uploads/"))
        .send()
        .await?;
    let loc = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or("no upload location")?
        .to_string();
    let loc = if loc.starts_with('/') {
        format!("{url}{loc}")
    } else {
        loc
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{loc}{sep}digest={digest}"))
        .body(data)
        .send()
        .await?;
    if r.status() != 201 {
        return Err(format!("blob upload: {}", r.status()).into());
    }
    Ok(digest)
}

/// Pushes an image; returns its manifest digest and its layers' digests.
async fn push(url: &str, repo: &str, tag: &str, mibs: &str) -> Res<Vec<String>> {
    let c = reqwest::Client::new();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    let mut layers = Vec::new();
    for (i, m) in mibs.split(',').enumerate() {
        let size = (m.parse::<f64>()? * 1024.0 * 1024.0) as usize;
        let data = bytes(seed + i as u64, size);
        let len = data.len();
        let d = push_blob(&c, url, repo, data).await?;
        layers.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": len}));
    }
    let cfg = serde_json::to_vec(
        &json!({"architecture": "amd64", "os": "linux", "created": seed.to_string(), "rootfs": {"type": "layers", "diff_ids": []}}),
    )?;
    let cfg_len = cfg.len();
    let cfg_d = push_blob(&c, url, repo, cfg).await?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_d, "size": cfg_len},
        "layers": layers,
    }))?;
    let md = sha(&manifest);
    let r = c
        .put(format!("{url}/v2/{repo}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest)
        .send()
        .await?;
    if r.status() != 201 {
        return Err(format!("manifest put: {}", r.status()).into());
    }
    let mut out = vec![md];
    for l in &layers {
        out.push(l["digest"].as_str().unwrap_or_default().to_string());
    }
    Ok(out)
}

/// Latencies in microseconds, and errors, of one soak client.
#[derive(Default)]
struct SoakStats {
    manifests: Vec<u32>,
    blobs: Vec<u32>,
    pulls: Vec<u32>,
    errors: Vec<String>,
}

async fn soak(
    url: &str,
    prefix: &str,
    images: usize,
    clients: usize,
    secs: u64,
    upstream: &str,
) -> Res<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let until = Instant::now() + std::time::Duration::from_secs(secs);
    // The newest fresh image, plus one (0: none yet).
    let fresh = Arc::new(AtomicUsize::new(0));
    let pusher = {
        let (fresh, upstream, prefix) = (fresh.clone(), upstream.to_string(), prefix.to_string());
        tokio::spawn(async move {
            let mut k = 0;
            while Instant::now() < until {
                if push(&upstream, &format!("{prefix}fresh{k}"), "v1", "0.25,0.5,1")
                    .await
                    .is_ok()
                {
                    k += 1;
                    fresh.store(k, Ordering::Release);
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            k
        })
    };
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (url, prefix, fresh) = (url.to_string(), prefix.to_string(), fresh.clone());
        tasks.push(tokio::spawn(async move {
            let c = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()
                .unwrap_or_default();
            let mut st = SoakStats::default();
            let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            while Instant::now() < until {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let newest = fresh.load(Ordering::Acquire);
                let repo = if x.is_multiple_of(8) && newest > 0 {
                    format!("{prefix}fresh{}", newest - 1)
                } else {
                    format!("{prefix}{}", (x >> 3) as usize % images)
                };
                if let Err(e) = pull_timed(&c, &url, &repo, "v1", Some(&mut st)).await {
                    st.errors.push(e.to_string());
                }
            }
            st
        }));
    }
    let mut all = SoakStats::default();
    for t in tasks {
        let st = t.await?;
        all.manifests.extend(st.manifests);
        all.blobs.extend(st.blobs);
        all.pulls.extend(st.pulls);
        all.errors.extend(st.errors);
    }
    let pct = |v: &mut Vec<u32>, p: f64| -> f64 {
        v.sort_unstable();
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
            .map_or(0.0, |us| *us as f64 / 1000.0)
    };
    println!("fresh {}", pusher.await?);
    println!("pulls {}", all.pulls.len());
    println!("requests {}", all.manifests.len() + all.blobs.len());
    println!("errors {}", all.errors.len());
    for (name, v) in [
        ("manifest", &mut all.manifests),
        ("blob", &mut all.blobs),
        ("pull", &mut all.pulls),
    ] {
        println!(
            "{name}_ms p50 {:.1} p99 {:.1} max {:.1}",
            pct(v, 0.5),
            pct(v, 0.99),
            pct(v, 1.0)
        );
    }
    all.errors.sort();
    all.errors.dedup();
    for e in all.errors.iter().take(5) {
        println!("error: {e}");
    }
    Ok(())
}

/// Hashes the body as it arrives, as a container client writing layers to disk does: one
/// that collected each blob whole faulted in a fresh page for every 4 KiB it received, which
/// on this VM cost the client up to three times its receive time in some pulls and not in
/// others, whichever server it pulled from (benches/README.md).
async fn get_verified(c: &reqwest::Client, url: String, digest: &str) -> Res<usize> {
    let mut r = c.get(&url).send().await?;
    if !r.status().is_success() {
        return Err(format!("{url}: {}", r.status()).into());
    }
    let (mut hasher, mut n) = (Sha256::new(), 0);
    while let Some(chunk) = r.chunk().await? {
        hasher.update(&chunk);
        n += chunk.len();
    }
    if named(hasher.finalize()) != digest {
        return Err(format!("{url}: digest mismatch").into());
    }
    Ok(n)
}

async fn pull(c: &reqwest::Client, url: &str, repo: &str, tag: &str) -> Res<usize> {
    pull_timed(c, url, repo, tag, None).await
}

/// One pull as a container client does it: the manifest by tag, then the config and the
/// layers, three at a time (containerd's and containers/image's default), every blob
/// verified. With `st`, each request's latency and the pull's are recorded there.
async fn pull_timed(
    c: &reqwest::Client,
    url: &str,
    repo: &str,
    tag: &str,
    mut st: Option<&mut SoakStats>,
) -> Res<usize> {
    let started = Instant::now();
    let r = c
        .get(format!("{url}/v2/{repo}/manifests/{tag}"))
        .header(
            "accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
        )
        .send()
        .await?;
    if !r.status().is_success() {
        return Err(format!("{repo} manifest: {}", r.status()).into());
    }
    let m: Value = serde_json::from_slice(&r.bytes().await?)?;
    if let Some(st) = st.as_deref_mut() {
        st.manifests.push(started.elapsed().as_micros() as u32);
    }
    let mut digests = vec![m["config"]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_string()];
    for l in m["layers"].as_array().into_iter().flatten() {
        digests.push(l["digest"].as_str().unwrap_or_default().to_string());
    }
    let sem = Arc::new(tokio::sync::Semaphore::new(3));
    let mut tasks = Vec::new();
    for d in digests {
        let (c, sem) = (c.clone(), sem.clone());
        let u = format!("{url}/v2/{repo}/blobs/{d}");
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await?;
            let t = Instant::now();
            let n = get_verified(&c, u, &d).await?;
            Res::Ok((n, t.elapsed().as_micros() as u32))
        }));
    }
    let mut total = 0;
    for t in tasks {
        let (n, us) = t.await??;
        total += n;
        if let Some(st) = st.as_deref_mut() {
            st.blobs.push(us);
        }
    }
    if let Some(st) = st {
        st.pulls.push(started.elapsed().as_micros() as u32);
    }
    Ok(total)
}

/// Opens `n` keep-alive connections to `addr`, each after one `GET` of `path` (`/v2/` when
/// empty) read to its end, and prints the anonymous memory of process `pid` with all of them
/// open (KiB) and what each added (KiB). A blob path shows what a connection keeps after
/// serving a body, as the soak's connections do.
async fn idle(addr: &str, n: usize, pid: &str, path: &str) -> Res<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let path = if path.is_empty() { "/v2/" } else { path };
    let anon = || -> Res<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or("no RssAnon")?;
        Ok(kib)
    };
    let before = anon()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
    let mut conns = Vec::with_capacity(n);
    let mut buf = vec![0u8; 256 << 10];
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(request.as_bytes()).await?;
        // The head, then as many body bytes as it announces.
        let mut got = Vec::new();
        let head_end = loop {
            let k = s.read(&mut buf).await?;
            if k == 0 {
                return Err("connection closed before the response head".into());
            }
            got.extend_from_slice(&buf[..k]);
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&got[..head_end]).to_string();
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!("not a 200: {head}").into());
        }
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut left = length.saturating_sub(got.len() - head_end);
        while left > 0 {
            let k = s.read(&mut buf).await?;
            if k == 0 {
                return Err("connection closed inside the body".into());
            }
            left = left.saturating_sub(k);
        }
        conns.push(s);
    }
    let after = anon()?;
    println!(
        "{after} {:.1}",
        after.saturating_sub(before) as f64 / n as f64
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    match arg(1) {
        "push" => {
            for d in push(arg(2), arg(3), arg(4), arg(5)).await? {
                println!("{d}");
            }
            Ok(())
        }
        "pull" => {
            let c = reqwest::Client::new();
            let t = Instant::now();
            let n = pull(&c, arg(2), arg(3), arg(4)).await?;
            println!("{:.4} {n}", t.elapsed().as_secs_f64());
            Ok(())
        }
        "soak" => {
            soak(
                arg(2),
                arg(3),
                arg(4).parse()?,
                arg(5).parse()?,
                arg(6).parse()?,
                arg(7),
            )
            .await
        }
        "herd" => {
            let n: usize = arg(5).parse()?;
            let t = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..n {
                let (u, r, tag) = (arg(2).to_string(), arg(3).to_string(), arg(4).to_string());
                tasks.push(tokio::spawn(async move {
                    pull(&reqwest::Client::new(), &u, &r, &tag).await
                }));
            }
            let mut total = 0;
            for t in tasks {
                total += t.await??;
            }
            println!("{:.4} {total}", t.elapsed().as_secs_f64());
            Ok(())
        }
        "get" => {
            use futures_util::StreamExt;
            let c = reqwest::Client::new();
            for _ in 0..3 {
                let t = Instant::now();
                let mut s = c.get(arg(2)).send().await?.bytes_stream();
                let (mut n, mut chunks) = (0usize, 0usize);
                while let Some(b) = s.next().await {
                    n += b?.len();
                    chunks += 1;
                }
                println!(
                    "{:.4}s {n} bytes {chunks} chunks",
                    t.elapsed().as_secs_f64()
                );
            }
            Ok(())
        }
        "fetch" => {
            let (url, digest) = (arg(2).to_string(), arg(3).to_string());
            let (n, conc): (usize, usize) = (arg(4).parse()?, arg(5).parse()?);
            let c = reqwest::Client::new();
            let sem = Arc::new(tokio::sync::Semaphore::new(conc));
            let t = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..n {
                let (c, sem, url, digest) = (c.clone(), sem.clone(), url.clone(), digest.clone());
                tasks.push(tokio::spawn(async move {
                    let _permit = sem.acquire().await?;
                    get_verified(&c, url, &digest).await
                }));
            }
            let mut total = 0;
            for t in tasks {
                total += t.await??;
            }
            let secs = t.elapsed().as_secs_f64();
            println!("{:.0} {total}", total as f64 / secs / 1e6);
            Ok(())
        }
        "idle" => idle(arg(2), arg(3).parse()?, arg(4), arg(5)).await,
        _ => Err("usage: benchtool push|pull|herd|get|fetch|idle ...".into()),
    }
}
