//! `twillctl lab up|status|exec|down`: a whole Twill cluster on one Linux
//! machine. A network namespace per node, a ToR namespace running BIRD, FRR
//! or GoBGP (or nothing), a link from each node to the ToR's bridge,
//! twill-node in every node namespace on one embedded store in the lab's
//! directory (the ToR only learns, or with `torReflector` reflects the
//! nodes' routes to each other), and pods created through twill-cni
//! exactly as a container runtime calls it, with Namespace and Pod objects in
//! the store so NetworkPolicy selects them (`pods`: `lab pod add|del`, the
//! responder serving their ports, `lab probe`).
//!
//! Everything the lab creates is written to `DIR/lab.json` the moment it
//! exists (namespaces by name, processes by PID and command line), so `lab
//! down` removes exactly that — also after an `up` that failed half-way — and
//! never kills a process whose PID was reused (`state`). The plan itself is
//! pure, in `plan`.
//!
//! Here: the commands and their dispatch. `up` builds a lab (the ToR in
//! `tor`, the matrix in `matrix`), `status` shows it, `manage` restarts,
//! execs in and removes it, `pods` adds and deletes pods, `traffic` serves
//! and probes their ports; `host` runs the commands and processes.

mod echo;
mod host;
mod limits;
mod manage;
mod matrix;
pub mod plan;
pub mod pods;
mod state;
mod status;
mod tor;
mod traffic;
mod up;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use plan::Tor;

#[derive(Args, Debug)]
pub struct LabArgs {
    #[command(subcommand)]
    pub command: LabCommand,
    /// The lab's directory: its store, configs, logs and lab.json.
    #[arg(
        long,
        global = true,
        env = "TWILL_LAB_DIR",
        default_value = DEFAULT_DIR
    )]
    pub dir: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Build the cluster, create example pods, print node status and a connectivity matrix.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, value_enum, default_value = "bird")]
        tor: Tor,
        /// YAML: nodes (name, labels), tor, podsPerNode, pool, blockSize, nodeAs, torAs,
        /// routeReflectors (node names), torReflector (true: the ToR is the rack's
        /// route reflector, one AS, no mesh), dualStack, pool6, blockSize6.
        #[arg(long)]
        topology: Option<PathBuf>,
        /// IPv6 beside IPv4: an IPv6 pool (fd00:10:244::/56, /122 blocks),
        /// every pod one address of each family, IPv6 rack addresses and
        /// IPv6 sessions to the ToR (as `dualStack: true` in a topology file).
        #[arg(long)]
        dual_stack: bool,
        #[arg(long, default_value_t = 2)]
        pods_per_node: usize,
        /// Make the first N nodes route reflectors (the mesh off; the others
        /// peer with them), as `routeReflectors` in a topology file.
        #[arg(long)]
        route_reflectors: Option<usize>,
        /// Namespace name prefix (several labs can run side by side with
        /// different prefixes and directories).
        #[arg(long, default_value = plan::DEFAULT_PREFIX)]
        name: String,
    },
    /// Restart a node's twill-node (SIGTERM, or SIGKILL with --kill) and
    /// wait until it serves again: graceful restart in action.
    Restart {
        node: String,
        #[arg(long)]
        kill: bool,
    },
    /// What is running, node status, pods and the ToR's routes.
    Status {
        /// table (for people), json or yaml (for programs).
        #[arg(short, long, value_enum, default_value = "table")]
        output: StatusFormat,
    },
    /// Add or delete a pod: its Namespace and Pod objects, its network
    /// through twill-cni, and a responder serving its ports.
    Pod {
        #[command(subcommand)]
        command: PodCommand,
    },
    /// One TCP connection or UDP datagram from the current network namespace
    /// (run it in a pod: `lab exec POD -- twillctl lab probe IP 80/TCP`);
    /// exit 0 when answered, 1 when not.
    Probe {
        ip: std::net::IpAddr,
        /// PORT[/TCP|/UDP].
        #[arg(value_parser = pods::parse_port)]
        port: plan::PortSpec,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// A pod's responder (started by the lab in the pod's namespace).
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        pod: String,
        #[arg(long = "port", value_parser = pods::parse_port)]
        ports: Vec<plan::PortSpec>,
    },
    /// Run a command in a node's, a pod's or the ToR's namespace (`tor`).
    Exec {
        target: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Remove every namespace and process the lab made.
    Down,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFormat {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand, Debug)]
pub enum PodCommand {
    /// Create a pod on a node, labelled, serving the given ports.
    Add {
        /// The pod's name (unique in the lab).
        name: String,
        /// The node it runs on.
        #[arg(long)]
        node: String,
        /// Its Kubernetes namespace (created when missing).
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Labels: k=v[,k=v] (repeatable).
        #[arg(short, long, value_parser = pods::parse_labels)]
        labels: Vec<BTreeMap<String, String>>,
        /// A port the pod serves: [NAME=]PORT[/TCP|/UDP] (repeatable, or comma-separated).
        #[arg(short, long = "port", value_parser = pods::parse_port, value_delimiter = ',')]
        ports: Vec<plan::PortSpec>,
    },
    /// Delete a pod: its responder, its address (CNI DEL), its Pod object and namespace.
    Del { name: String },
}

pub async fn run(args: LabArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        LabCommand::Up {
            nodes,
            tor,
            topology,
            dual_stack,
            pods_per_node,
            route_reflectors,
            name,
        } => {
            up::up(
                &args.dir,
                &name,
                up::Shape {
                    nodes,
                    tor,
                    topology,
                    dual_stack,
                    pods_per_node,
                    route_reflectors,
                },
            )
            .await
        }
        LabCommand::Restart { node, kill } => manage::restart(&args.dir, &node, kill),
        LabCommand::Status { output } => status::status(&args.dir, output).await,
        LabCommand::Exec { target, command } => manage::exec(&args.dir, &target, &command),
        LabCommand::Down => manage::down(&args.dir),
        LabCommand::Pod {
            command:
                PodCommand::Add {
                    name,
                    node,
                    namespace,
                    labels,
                    ports,
                },
        } => {
            pods::add(
                &args.dir,
                pods::AddArgs {
                    name,
                    node,
                    namespace,
                    labels,
                    ports,
                },
            )
            .await
        }
        LabCommand::Pod {
            command: PodCommand::Del { name },
        } => pods::del(&args.dir, &name).await,
        LabCommand::Probe {
            ip,
            port,
            timeout_ms,
        } => traffic::probe(ip, &port, Duration::from_millis(timeout_ms)),
        LabCommand::Serve { pod, ports } => traffic::serve(&pod, &ports),
    }
}

/// The lab directory's default (the `--dir` default).
const DEFAULT_DIR: &str = "/var/lib/twill/lab";

/// ` --dir DIR` when the lab is not in the default directory, for hints.
fn dir_flag(dir: &Path) -> String {
    if dir == Path::new(DEFAULT_DIR) {
        String::new()
    } else {
        format!(" --dir {}", dir.display())
    }
}
