//! The `archway` command: `serve`, `check-config`, `inspect`, `gc`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use archway::config::Config;
use archway::routing::Router;

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
}

fn inspect(config: Config, reference: &str, json: bool) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let r = rt.block_on(async {
        let registry = archway::build(config)?;
        registry.inspect(reference).await.map_err(|e| e.to_string())
    })?;
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    say!("{reference}");
    say!(
        "serves {} ({}{})",
        r.digest,
        r.media_type,
        if r.synthesized { ", synthesized" } else { "" }
    );
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

fn gc(config: Config, dry_run: bool, max_size: Option<&str>) -> Result<bool, String> {
    use archway::gc::human_bytes;
    let max = match max_size {
        Some(s) => s
            .parse::<bytesize::ByteSize>()
            .map_err(|e| format!("--max-size {s:?}: {e}"))?
            .as_u64(),
        None => config.storage.gc.max_size.ok_or_else(|| {
            format!(
                "{}: storage.max_size is not set; set it or pass --max-size",
                config.source
            )
        })?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let r = rt.block_on(async {
        let shared = archway::registry::Shared::open(&config.storage)?;
        let collector = shared.collector(&config.storage);
        collector
            .run(max, dry_run)
            .await
            .map_err(|e| format!("{}: {e}", config.storage.url))
    })?;
    let p = &r.plan;
    say!(
        "cache {}: {} in {} objects; max_size {}",
        config.storage.url,
        human_bytes(p.size_before),
        r.objects,
        human_bytes(max)
    );
    for (root, used) in &p.roots {
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_millis(*used);
        say!(
            "evict {root}  last used {}",
            humantime::format_rfc3339_seconds(when)
        );
    }
    let manifests = p.roots.len();
    let objects = p.content.len();
    let verb = if dry_run { "would free" } else { "freed" };
    say!(
        "{verb} {} ({manifests} manifest links, {objects} objects); cache {} {}",
        human_bytes(p.freed()),
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
        eprintln!(
            "error: {} deletions failed (see the log); run again",
            r.errors
        );
    }
    Ok(r.errors == 0)
}

const DEFAULT_CONFIG_PATH: &str = "config/archway.toml";

/// The config to use and the file it came from (`None`: the embedded default).
fn config_path(path: Option<&Path>) -> Option<PathBuf> {
    match path {
        Some(p) => Some(p.to_path_buf()),
        None if Path::new(DEFAULT_CONFIG_PATH).exists() => Some(DEFAULT_CONFIG_PATH.into()),
        None => None,
    }
}

fn load(path: Option<&Path>) -> Result<Config, String> {
    match config_path(path) {
        Some(p) => Config::load(&p).map_err(|e| e.to_string()),
        None => Ok(Config::embedded()),
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("ARCHWAY_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM");
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
    match cli.command {
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(c) => {
                say!("{}: OK", config.display());
                say!("listen   {}", c.server.listen);
                say!("storage  {}", c.storage.url);
                match c.storage.gc.max_size {
                    Some(max) => say!(
                        "bounded  max_size {}, gc_interval {}, gc_min_age {}",
                        archway::gc::human_bytes(max),
                        humantime::format_duration(c.storage.gc.interval),
                        humantime::format_duration(c.storage.gc.min_age)
                    ),
                    None => say!("bounded  no (storage.max_size unset)"),
                }
                say!(
                    "cache    tag_ttl {}, serve_stale {}",
                    humantime::format_duration(c.cache.tag_ttl),
                    c.cache.serve_stale
                );
                say!(
                    "{}",
                    Router::new(&c.upstreams).describe(&c.upstreams).trim_end()
                );
                say!("default platform {}", c.multiarch.default_platform);
                for f in &c.fallbacks {
                    say!("fallback {}", f.repository);
                    for (p, t) in &f.platforms {
                        say!("  {:<14} {t}", p.to_string());
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Gc {
            config,
            dry_run,
            max_size,
        } => {
            init_logging(cli.log_format);
            match load(config.as_deref()).and_then(|c| gc(c, dry_run, max_size.as_deref())) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Inspect {
            config,
            json,
            reference,
        } => {
            init_logging(cli.log_format);
            let result = load(config.as_deref()).and_then(|c| inspect(c, &reference, json));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve { config } => {
            init_logging(cli.log_format);
            let config_arg = config;
            let config = match load(config_arg.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let path = config_path(config_arg.as_deref());
            match rt.block_on(archway::run(config, path, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
