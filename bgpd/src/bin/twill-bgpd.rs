//! `twill-bgpd --config FILE` runs a standalone speaker from a YAML file;
//! `twill-bgpd status [-o json] [--socket PATH]` asks a running one.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use twill_bgpd::config::Config;
use twill_bgpd::speaker::{PeerStatus, Speaker};
use twill_bgpd::status;

#[derive(Parser)]
#[command(name = "twill-bgpd", about = "Twill's BGP speaker, standalone")]
struct Cli {
    /// YAML configuration (see the README's bgpd section).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show each peer's state, uptime, prefixes and last error.
    Status {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        /// The status socket (default: the config's status_socket, else /run/twill-bgpd.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Best routes as JSON.
    Routes {
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Prometheus metrics.
    Metrics {
        #[arg(long)]
        socket: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

fn socket_path(cli: &Cli, given: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.clone());
    }
    if let Some(c) = &cli.config {
        return Ok(Config::from_file(c)?.status_socket);
    }
    Ok(PathBuf::from("/run/twill-bgpd.sock"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.cmd {
        Some(Cmd::Status { output, socket }) => {
            let path = socket_path(&cli, socket)?;
            let text = status::query(&path, "status")
                .with_context(|| format!("ask twill-bgpd at {}", path.display()))?;
            match output {
                Output::Json => println!("{text}"),
                Output::Table => {
                    let peers: Vec<PeerStatus> =
                        serde_json::from_str(&text).context("decode status")?;
                    print!("{}", status::render_table(&peers));
                }
            }
            Ok(())
        }
        Some(Cmd::Routes { socket }) => {
            let path = socket_path(&cli, socket)?;
            println!("{}", status::query(&path, "routes")?);
            Ok(())
        }
        Some(Cmd::Metrics { socket }) => {
            let path = socket_path(&cli, socket)?;
            print!("{}", status::query(&path, "metrics")?);
            Ok(())
        }
        None => {
            let Some(path) = &cli.config else {
                anyhow::bail!("give --config FILE to run, or a subcommand (status)");
            };
            // Colour only for a person at a terminal, never into log files.
            use std::io::IsTerminal;
            tracing_subscriber::fmt()
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            let loaded = Config::from_file(path)?.load()?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(run(loaded))
        }
    }
}

async fn run(loaded: twill_bgpd::config::Loaded) -> anyhow::Result<()> {
    let speaker = Speaker::start(loaded.speaker).await?;
    if speaker.restarting() {
        tracing::info!("previous run did not stop cleanly: graceful restart (R bit set)");
    }
    for (p, a) in loaded.networks {
        speaker.originate(p, a);
    }
    for p in loaded.peers {
        speaker.add_peer(p)?;
    }
    let sock = loaded.status_socket.clone();
    let sp = speaker.clone();
    let status_task = tokio::spawn(async move {
        if let Err(e) = status::serve(&sock, sp).await {
            tracing::error!("status socket {}: {e}", sock.display());
        }
    });
    let metrics_task = loaded.metrics_address.map(|addr| {
        let sp = speaker.clone();
        tokio::spawn(async move {
            if let Err(e) = status::serve_metrics(addr, sp).await {
                tracing::error!("metrics on {addr}: {e}");
            }
        })
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("stopping");
    speaker.shutdown().await;
    status_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    let _ = std::fs::remove_file(&loaded.status_socket);
    Ok(())
}
