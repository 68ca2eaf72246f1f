//! `twill-bgpd --config FILE` runs a standalone speaker from a YAML file;
//! `twill-bgpd status [-o json] [--socket PATH]` asks a running one.
//!
//! Built to stay small in memory (docs/bgp.md#memory): the command line is
//! parsed by hand (`args`) and log lines are written by a ~100-line
//! subscriber (`log`) instead of clap and tracing-subscriber's env-filter,
//! whose code the kernel would otherwise map at start-up; the runtime is
//! tokio's current-thread one (one thread, one malloc arena: every task is
//! I/O bound, and the mesh benchmark's 100 sessions take 0.01 s of CPU).

use std::path::PathBuf;

use anyhow::Context;
use twill_bgpd::config::Config;
use twill_bgpd::speaker::{PeerStatus, Speaker};
use twill_bgpd::status;

#[path = "twill-bgpd/args.rs"]
mod args;
#[path = "twill-bgpd/log.rs"]
mod log;

use args::{Cmd, Output};

const USAGE: &str = "\
twill-bgpd: Twill's BGP speaker, standalone

Usage:
  twill-bgpd --config FILE                 run the speaker (-c FILE)
  twill-bgpd status [-o table|json] [--socket PATH]
                                           each peer's state, uptime, prefixes, last error
  twill-bgpd routes [--socket PATH]        best routes as JSON
  twill-bgpd metrics [--socket PATH]       Prometheus metrics
  twill-bgpd --help

The socket defaults to the config's status_socket (with --config), else
/run/twill-bgpd.sock. RUST_LOG sets the log level (error, warn, info, debug,
trace; `target=level` for one module, e.g. info,twill_bgpd::session=debug).
";

fn socket_path(config: &Option<PathBuf>, given: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.clone());
    }
    if let Some(c) = config {
        return Ok(Config::from_file(c)?.status_socket);
    }
    Ok(PathBuf::from("/run/twill-bgpd.sock"))
}

fn main() -> anyhow::Result<()> {
    let cli = match args::parse(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprint!("twill-bgpd: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    match &cli.cmd {
        Cmd::Help => {
            print!("{USAGE}");
            Ok(())
        }
        Cmd::Status { output, socket } => {
            let path = socket_path(&cli.config, socket)?;
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
        Cmd::Routes { socket } => {
            let path = socket_path(&cli.config, socket)?;
            println!("{}", status::query(&path, "routes")?);
            Ok(())
        }
        Cmd::Metrics { socket } => {
            let path = socket_path(&cli.config, socket)?;
            print!("{}", status::query(&path, "metrics")?);
            Ok(())
        }
        Cmd::Run => {
            let Some(path) = &cli.config else {
                anyhow::bail!("give --config FILE to run, or a subcommand (status)");
            };
            log::init(std::env::var("RUST_LOG").ok().as_deref());
            let loaded = Config::from_file(path)?.load()?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
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
