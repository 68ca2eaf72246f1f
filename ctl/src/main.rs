//! twillctl: the Twill command line, in the manner of calicoctl and kubectl.
//!
//! Exit codes: 0 success, 1 the operation failed (invalid object, conflict,
//! datastore unreachable), 2 the command line makes no sense (unknown kind,
//! bad flag). Every error says what to do next.
//!
//! Installed as `kubectl-twill` (a symlink on PATH) it is a kubectl plugin:
//! `kubectl twill get ippools` is the same program, talking to the cluster
//! by default. Objects written by another Twill version are read and shown
//! as stored, with a warning naming what this version does not understand
//! (`twill_api::compat`).

// These shadow the standard printing macros in every module below, so
// output to a closed pipe or a full disk never panics (see `out`).
macro_rules! print {
    ($($arg:tt)*) => { $crate::out::stdout(format_args!($($arg)*)) };
}
macro_rules! println {
    () => { $crate::out::stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::stdout(format_args!("{}\n", format_args!($($arg)*))) };
}
#[allow(unused_macros)]
macro_rules! eprint {
    ($($arg:tt)*) => { $crate::out::stderr(format_args!($($arg)*)) };
}
macro_rules! eprintln {
    () => { $crate::out::stderr(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::stderr(format_args!("{}\n", format_args!($($arg)*))) };
}

mod cli;
mod crds;
mod ipam;
mod lab;
mod node;
mod out;
mod output;
mod policy;
mod resources;
mod service_show;
mod services;

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

/// Whether twillctl was started as a kubectl plugin (`kubectl twill ...`
/// runs the `kubectl-twill` found on PATH, usually a symlink to twillctl).
fn is_kubectl_plugin(argv0: &std::ffi::OsStr) -> bool {
    std::path::Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with("kubectl-twill"))
}

/// Parses the command line. As a kubectl plugin, twillctl is the same
/// program, named `kubectl twill` in its help, and talks to the cluster by
/// default (`--datastore` and TWILL_DATASTORE still choose).
fn parse() -> Cli {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if !is_kubectl_plugin(&argv0) {
        return Cli::parse();
    }
    let cmd = <Cli as clap::CommandFactory>::command()
        .name("kubectl-twill")
        .bin_name("kubectl twill")
        .mut_arg("datastore", |a| a.default_value("kubernetes"));
    let matches = cmd.get_matches();
    <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn main() -> ExitCode {
    let cli = parse();
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
    cli.kube.clone().set();
    match cli.command {
        Command::Crds(args) => crds::run(args),
        Command::Completion { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "twillctl", &mut script);
            script.extend_from_slice(resources::dynamic_completion(shell).as_bytes());
            out::stdout_bytes(&script);
            Ok(ExitCode::SUCCESS)
        }
        Command::Version { client, output } => resources::version(&cli.store, client, output).await,
        Command::Complete { words } => resources::complete(&cli.store, &words).await,
        Command::Diff(args) => resources::diff(&cli.store, args).await,
        Command::Get(args) => resources::get(&cli.store, args).await,
        Command::Apply(a) => {
            resources::apply_with(&cli.store, a.file, resources::Mode::Apply, a.dry_run).await
        }
        Command::Create(a) => {
            resources::apply_with(&cli.store, a.file, resources::Mode::Create, a.dry_run).await
        }
        Command::Replace(a) => {
            resources::apply_with(&cli.store, a.file, resources::Mode::Replace, a.dry_run).await
        }
        Command::Delete(args) => resources::delete(&cli.store, args).await,
        Command::Patch(args) => resources::patch(&cli.store, args).await,
        Command::Label(args) => resources::label(&cli.store, args).await,
        Command::Ipam(args) => ipam::run(&cli.store, args).await,
        Command::Datastore {
            command: cli::DatastoreCommand::ServiceRange { cidrs },
        } => services::service_range(&cli.store, cidrs).await,
        Command::Policy(args) => policy::run(&cli.store, args).await,
        Command::Service(cli::ServiceArgs {
            command:
                cli::ServiceCommand::Show {
                    service,
                    node,
                    output,
                },
        }) => service_show::show(&cli.store, &service, node, output).await,
        Command::Node(args) => node::run(&cli.store, args).await,
        Command::Lab(args) => lab::run(args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::is_kubectl_plugin;
    use std::ffi::OsStr;

    #[test]
    fn recognizes_the_plugin_name() {
        assert!(is_kubectl_plugin(OsStr::new("kubectl-twill")));
        assert!(is_kubectl_plugin(OsStr::new(
            "/usr/local/bin/kubectl-twill"
        )));
        assert!(!is_kubectl_plugin(OsStr::new("/usr/local/bin/twillctl")));
        assert!(!is_kubectl_plugin(OsStr::new("kubectl-twill-old")));
        assert!(!is_kubectl_plugin(OsStr::new("")));
    }
}
