//! The `archway` command: `serve`, `check-config`, `inspect`, `warm`, `gc`, `signing-key`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use archway::causes::Chain;
use archway::config::Config;
use archway::gc::human_bytes;
use archway::routing::Router;
use archway::StartupError;

/// jemalloc rather than glibc's malloc. Under a burst (1,000 clients arriving together, 200
/// cold fills starting at once) glibc grew to about 95 MiB and stayed there for the rest of the
/// run, since it returns freed memory inside its heaps only when asked; jemalloc gives back
/// what the burst freed and runs at about 60–70 MiB after it (benches/README.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts (`_RJEM_MALLOC_CONF` in the environment
/// overrides them): freed pages go back to the kernel after a second, with `MADV_DONTNEED`
/// so that they stop counting against the process (and its container's memory limit) at
/// once, by a background thread rather than on a request's path.
#[cfg(feature = "jemalloc")]
#[allow(non_upper_case_globals, unsafe_code)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// `println!` that ends the process quietly when stdout goes away (`archway gc | head`),
/// where `println!` would panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// A pull-through OCI registry mirror that gets multi-arch images right.
#[derive(Parser)]
#[command(name = "archway", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mirror.
    Serve {
        /// Config file. Default: config/archway.toml if present, else the embedded default.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print the effective routing table.
    CheckConfig {
        /// Config file to check.
        config: PathBuf,
    },
    /// Bring the cache under storage.max_size now, evicting the least recently used images.
    Gc {
        /// Config file. Default: as for `serve`.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print what would be evicted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Size to bring the cache under instead of storage.max_size, e.g. "50GiB".
        #[arg(long)]
        max_size: Option<String>,
    },
    /// Make or read the key archway signs the indexes it synthesizes with.
    SigningKey {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Show how a tag resolves platform by platform, and the index digest archway serves.
    Inspect {
        /// Config file. Default: as for `serve`.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// REGISTRY/REPOSITORY:TAG, e.g. docker.io/thinklab/go-hello-world:latest
        reference: String,
    },
    /// Fetch images into the cache before nodes pull them: the manifest, then for each
    /// platform its manifest, config and layers, through the fills pulls use. With a
    /// `[cluster]`, a member of it while it runs (its fills take leases, replicas stream them).
    Warm {
        /// Config file. Default: as for `serve`.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A platform to warm, e.g. linux/arm64 (repeatable). Default: every platform of
        /// the index.
        #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
        platforms: Vec<String>,
        /// REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@DIGEST.
        #[arg(required = true)]
        references: Vec<String>,
    },
}

#[derive(Subcommand)]
enum KeyAction {
    /// Write a new ECDSA P-256 key (PKCS#8 PEM, mode 0600) and its public key to FILE.pub.
    Generate {
        /// Where to write the private key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the public key (SubjectPublicKeyInfo PEM) of a private key file.
    Public {
        /// The private key (PKCS#8 or SEC1 PEM).
        key: PathBuf,
    },
}

/// A command's failure: the message for stderr, and the exit status.
struct Failure {
    message: String,
    status: u8,
}

impl From<StartupError> for Failure {
    fn from(e: StartupError) -> Failure {
        // A config the admin has to fix is not a crash: exit 2, as for check-config.
        let status = if matches!(e, StartupError::Config(_)) {
            2
        } else {
            1
        };
        Failure {
            message: Chain(&e).to_string(),
            status,
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure { message, status: 1 }
    }
}

/// Raises the soft limit on open files to the hard one (as Go's runtime does): every client
/// connection, cached file and upstream socket takes one, and the soft default (often 1024)
/// is far below what `server.max_connections` allows.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, StartupError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(StartupError::Runtime)
}

fn serve(config: Option<&Path>) -> Result<(), Failure> {
    raise_fd_limit();
    let path = config_path(config);
    let config = load(path.as_deref())?;
    runtime()?.block_on(archway::run(config, path, shutdown_signal()))?;
    Ok(())
}

fn signing_key(action: &KeyAction) -> Result<(), Failure> {
    use archway::signing::SigningKey;
    let failed = |e: &archway::signing::KeyError| Failure::from(Chain(e).to_string());
    match action {
        KeyAction::Generate { out } => {
            let key = SigningKey::generate();
            let private = key.private_pem().map_err(|e| failed(&e))?;
            let public = key.public_pem().map_err(|e| failed(&e))?;
            write_private(out, &private)
                .map_err(|e| Failure::from(format!("{}: {}", out.display(), Chain(&e))))?;
            let pub_path = PathBuf::from(format!("{}.pub", out.display()));
            std::fs::write(&pub_path, public)
                .map_err(|e| Failure::from(format!("{}: {}", pub_path.display(), Chain(&e))))?;
            say!("wrote {} and {}", out.display(), pub_path.display());
            say!("fingerprint {}", key.fingerprint());
        }
        KeyAction::Public { key } => {
            let key = SigningKey::load(key).map_err(|e| failed(&e))?;
            let public = key.public_pem().map_err(|e| failed(&e))?;
            print!("{public}");
        }
    }
    Ok(())
}

/// Creates `path` readable by its owner only, refusing to overwrite a key.
fn write_private(path: &Path, pem: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(pem.as_bytes())
}

fn check_config(path: &Path) -> Result<(), Failure> {
    let c = Config::load(path).map_err(StartupError::from)?;
    say!("{}: OK", path.display());
    say!("listen   {}", c.server.listen);
    say!("storage  {}", c.storage.url);
    match c.storage.gc.max_size {
        Some(max) => say!(
            "bounded  max_size {}, gc_interval {}, gc_min_age {}",
            human_bytes(max),
            humantime::format_duration(c.storage.gc.interval),
            humantime::format_duration(c.storage.gc.min_age)
        ),
        None => say!("bounded  no (storage.max_size unset)"),
    }
    if let Some(r) = &c.storage.redirect {
        say!(
            "redirect cached blobs to presigned URLs valid {}{}",
            humantime::format_duration(r.expires),
            r.base_url
                .as_ref()
                .map(|u| format!(", through {u}"))
                .unwrap_or_default()
        );
    }
    match &c.cluster {
        Some(cl) => say!(
            "cluster  advertise {}, lease_ttl {}, secret {}",
            match &cl.advertise {
                archway::config::Advertise::Url(u) => u.to_string(),
                archway::config::Advertise::PodIp(ip) =>
                    format!("{ip} (POD_IP), port of server.listen"),
                archway::config::Advertise::OnBoundPort(u) => format!("{u} (host), port bound"),
            },
            humantime::format_duration(cl.lease_ttl),
            cl.secret_file.display()
        ),
        None => say!("cluster  off"),
    }
    say!(
        "cache    tag_ttl {}, serve_stale {}",
        humantime::format_duration(c.cache.tag_ttl),
        c.cache.serve_stale
    );
    say!(
        "{}",
        Router::new(&c.upstreams, &c.hosted)
            .describe(&c.upstreams, &c.hosted)
            .trim_end()
    );
    say!("default platform {}", c.multiarch.default_platform);
    for f in &c.fallbacks {
        say!("fallback {}", f.repository);
        for (p, t) in &f.platforms {
            say!("  {:<14} {t}", p.to_string());
        }
    }
    match &c.signing {
        Some(s) => say!(
            "signing  {} (fingerprint {})",
            s.key_path.display(),
            s.key.fingerprint()
        ),
        None => say!("signing  off"),
    }
    if c.signing.is_none() && !c.fallbacks.is_empty() {
        eprintln!(
            "warning: {}: [[fallback]] rules without [signing]: the indexes they synthesize are signed by no one, so a cluster with a signature policy refuses them (see README: Signatures)",
            path.display()
        );
    }
    if c.signing.is_some() {
        for f in &c.fallbacks {
            let upstream = c
                .upstreams
                .iter()
                .find(|u| u.name == f.registry || u.hosts.contains(&f.registry));
            if let Some(u) = upstream.filter(|u| u.hosts.is_empty()) {
                eprintln!(
                    "warning: {}: fallback {}: upstream {} has no `hosts`, so archway's signatures name the repository {}/{}, which no client pulls by; give it the registry name clients use (see README: Signatures)",
                    path.display(), f.repository, u.name, u.name, f.path
                );
            }
        }
    }
    Ok(())
}

fn inspect(config: Option<&Path>, reference: &str, json: bool) -> Result<(), Failure> {
    let config = load(config_path(config).as_deref())?;
    let r = runtime()?.block_on(async {
        let registry = archway::build(config)?;
        registry
            .inspect(reference)
            .await
            .map_err(|e| Failure::from(Chain(&e).to_string()))
    })?;
    if json {
        let text = serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?;
        say!("{text}");
        return Ok(());
    }
    say!("{reference}");
    say!(
        "serves {} ({}{})",
        r.digest,
        r.media_type,
        if r.synthesized { ", synthesized" } else { "" }
    );
    match &r.signed_by {
        Some(k) => say!("signed by archway, key {k}"),
        None => say!("not signed by archway"),
    }
    match &r.upstream_signature {
        Some(at) => say!("upstream {} is signed: {at}", r.upstream_digest),
        None => say!("upstream {} has no signature", r.upstream_digest),
    }
    say!("{:<16} {:<73} {:<48} CHECK", "PLATFORM", "DIGEST", "SOURCE");
    for row in &r.platforms {
        say!(
            "{:<16} {:<73} {:<48} {}",
            row.platform,
            row.digest.as_deref().unwrap_or("-"),
            row.source,
            row.check
        );
    }
    Ok(())
}

fn gc(config: Option<&Path>, dry_run: bool, max_size: Option<&str>) -> Result<(), Failure> {
    let config = load(config_path(config).as_deref())?;
    let max = match max_size {
        Some(s) => s
            .parse::<bytesize::ByteSize>()
            .map_err(|e| format!("--max-size {s:?}: {e}"))?
            .as_u64(),
        // Unbounded: nothing is evicted, and the sweep still deletes what nothing
        // references.
        None => config.storage.gc.max_size.unwrap_or(u64::MAX),
    };
    let r = runtime()?.block_on(async {
        let shared =
            archway::registry::Shared::open(&config.storage).map_err(StartupError::from)?;
        if !dry_run && !config.hosted.is_empty() {
            let hosted = archway::hosted::Hosted::new(shared.store.clone(), config.hosted.clone());
            hosted
                .expire_uploads()
                .await
                .map_err(|e| Failure::from(format!("{}: {}", config.storage.url, Chain(&e))))?;
        }
        let collector = shared.collector(&config.storage);
        collector
            .run_sweeping(max, dry_run, true)
            .await
            .map_err(|e| Failure::from(format!("{}: {}", config.storage.url, Chain(&e))))
    })?;
    let p = &r.plan;
    say!(
        "cache {}: {} in {} objects; max_size {}",
        config.storage.url,
        human_bytes(p.size_before),
        r.objects,
        if max == u64::MAX {
            "unbounded (sweep only)".to_string()
        } else {
            human_bytes(max)
        }
    );
    for (root, used) in &p.roots {
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_millis(*used);
        say!(
            "evict {root}  last used {}",
            humantime::format_rfc3339_seconds(when)
        );
    }
    let verb = if dry_run { "would free" } else { "freed" };
    say!(
        "{verb} {} ({} manifest links, {} objects); cache {} {}",
        human_bytes(p.freed()),
        p.roots.len(),
        p.content.len(),
        if dry_run { "would be" } else { "is now" },
        human_bytes(p.size_after)
    );
    if p.size_after > max {
        say!(
            "still over max_size: everything left was used within storage.gc_min_age ({})",
            humantime::format_duration(config.storage.gc.min_age)
        );
    }
    if r.errors > 0 {
        return Err(format!("{} deletions failed (see the log); run again", r.errors).into());
    }
    Ok(())
}

fn warm(config: Option<&Path>, platforms: &[String], references: &[String]) -> Result<(), Failure> {
    use std::io::IsTerminal as _;
    let platforms = platforms
        .iter()
        .map(|p| {
            p.parse::<archway::oci::Platform>()
                .map_err(|e| format!("--platform {p:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let path = config_path(config);
    let config = load(path.as_deref())?;
    let (total, failed_refs) = runtime()?.block_on(async {
        // In a cluster, a member for as long as the warm lasts: it takes fill leases, and
        // replicas that need a blob it is fetching stream it from its internal endpoint.
        let (member, registry) = if config.cluster.is_some() {
            let m = archway::server::Member::join(config, path).await?;
            let registry = m.registry();
            (Some(m), registry)
        } else {
            (None, archway::build(config)?)
        };
        let progress =
            archway::console::terminal::TerminalProgress::new(std::io::stderr().is_terminal());
        let mut total = archway::registry::warming::WarmSummary::default();
        let mut failed_refs = 0;
        for r in references {
            match registry.warm(r, &platforms, &progress).await {
                Ok(s) => total.add(s),
                Err(e) => {
                    failed_refs += 1;
                    eprintln!("error: {r}: {}", Chain(&e));
                }
            }
        }
        progress.finish();
        if let Some(m) = member {
            m.leave().await;
        }
        Ok::<_, Failure>((total, failed_refs))
    })?;
    say!(
        "{} blobs fetched ({}), {} already cached, {} failed",
        total.fetched,
        human_bytes(total.bytes),
        total.cached,
        total.failed
    );
    match (failed_refs, total.failed) {
        (0, 0) => Ok(()),
        (r, b) => Err(format!("{r} references and {b} blobs could not be warmed").into()),
    }
}

const DEFAULT_CONFIG_PATH: &str = "config/archway.toml";

/// The config file to use (`None`: the embedded default).
fn config_path(path: Option<&Path>) -> Option<PathBuf> {
    match path {
        Some(p) => Some(p.to_path_buf()),
        None if Path::new(DEFAULT_CONFIG_PATH).exists() => Some(DEFAULT_CONFIG_PATH.into()),
        None => None,
    }
}

fn load(path: Option<&Path>) -> Result<Config, StartupError> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::embedded()),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %Chain(&e), "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(
        cli.command,
        Command::CheckConfig { .. } | Command::SigningKey { .. }
    ) {
        archway::logging::init(match cli.log_format {
            LogFormat::Text => archway::logging::Format::Text,
            LogFormat::Json => archway::logging::Format::Json,
        });
    }
    let result = match &cli.command {
        Command::Serve { config } => serve(config.as_deref()),
        Command::CheckConfig { config } => check_config(config),
        Command::SigningKey { action } => signing_key(action),
        Command::Gc {
            config,
            dry_run,
            max_size,
        } => gc(config.as_deref(), *dry_run, max_size.as_deref()),
        Command::Inspect {
            config,
            json,
            reference,
        } => inspect(config.as_deref(), reference, *json),
        Command::Warm {
            config,
            platforms,
            references,
        } => warm(config.as_deref(), platforms, references),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.status)
        }
    }
}
