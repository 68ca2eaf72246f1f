//! twillctl: the Twill command line, in the manner of calicoctl and kubectl.
//!
//! Exit codes: 0 success, 1 the operation failed (invalid object, conflict,
//! datastore unreachable), 2 the command line makes no sense (unknown kind,
//! bad flag). Every error says what to do next.

mod cli;
mod crds;
mod ipam;
mod output;
mod policy;
mod resources;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

/// An error in how the command was used (exit code 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TWILL_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            if let Some(u) = e.downcast_ref::<UsageError>() {
                eprintln!("error: {u}");
                return ExitCode::from(2);
            }
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Crds(args) => crds::run(args),
        Command::Completion { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "twillctl", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Get(args) => resources::get(&cli.store, args).await,
        Command::Apply(args) => resources::apply(&cli.store, args, resources::Mode::Apply).await,
        Command::Create(args) => resources::apply(&cli.store, args, resources::Mode::Create).await,
        Command::Replace(args) => {
            resources::apply(&cli.store, args, resources::Mode::Replace).await
        }
        Command::Delete(args) => resources::delete(&cli.store, args).await,
        Command::Patch(args) => resources::patch(&cli.store, args).await,
        Command::Label(args) => resources::label(&cli.store, args).await,
        Command::Ipam(args) => ipam::run(&cli.store, args).await,
        Command::Policy(args) => policy::run(&cli.store, args).await,
    }
}
