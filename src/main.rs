//! The `archway` command: `serve`, `check-config`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use archway::config::Config;
use archway::routing::Router;

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
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    println!("{reference}");
    println!(
        "serves {} ({}{})",
        r.digest,
        r.media_type,
        if r.synthesized { ", synthesized" } else { "" }
    );
    println!("{:<16} {:<73} {:<48} CHECK", "PLATFORM", "DIGEST", "SOURCE");
    for row in &r.platforms {
        println!(
            "{:<16} {:<73} {:<48} {}",
            row.platform,
            row.digest.as_deref().unwrap_or("-"),
            row.source,
            row.check
        );
    }
    Ok(())
}

const DEFAULT_CONFIG_PATH: &str = "config/archway.toml";

fn load(path: Option<&Path>) -> Result<Config, String> {
    match path {
        Some(p) => Config::load(p).map_err(|e| e.to_string()),
        None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
            Config::load(Path::new(DEFAULT_CONFIG_PATH)).map_err(|e| e.to_string())
        }
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
                println!("{}: OK", config.display());
                println!("listen   {}", c.server.listen);
                println!("storage  {}", c.storage.url);
                println!(
                    "cache    tag_ttl {}, serve_stale {}",
                    humantime::format_duration(c.cache.tag_ttl),
                    c.cache.serve_stale
                );
                print!("{}", Router::new(&c.upstreams).describe(&c.upstreams));
                println!("default platform {}", c.multiarch.default_platform);
                for f in &c.fallbacks {
                    println!("fallback {}", f.repository);
                    for (p, t) in &f.platforms {
                        println!("  {:<14} {t}", p.to_string());
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
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
            let config = match load(config.as_deref()) {
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
            match rt.block_on(archway::run(config, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
