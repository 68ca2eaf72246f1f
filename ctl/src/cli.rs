//! The command-line grammar (clap derive). Kept apart from what the
//! commands do so `twillctl completion` can generate completions from it.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use twill_api::Store;
use twill_api::store::embedded::DEFAULT_PATH;
use twill_api::store::{BackendKind, connect};

#[derive(Parser, Debug)]
#[command(
    name = "twillctl",
    version,
    about = "Manage a Twill network fabric: resources, CRDs, IPAM, nodes and the lab",
    after_help = "Without a cluster, twillctl uses the embedded store at /var/lib/twill/twill.db.\nExit codes: 0 ok, 1 failed, 2 usage error."
)]
pub struct Cli {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Which datastore to talk to.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// Datastore backend.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "TWILL_DATASTORE",
        default_value = "embedded"
    )]
    pub datastore: Backend,
    /// Embedded store file.
    #[arg(long, global = true, env = "TWILL_DATASTORE_PATH", default_value = DEFAULT_PATH)]
    pub path: PathBuf,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The Kubernetes API (KUBECONFIG, ~/.kube/config, or in-cluster).
    Kubernetes,
    /// One SQLite file on this machine.
    Embedded,
}

impl StoreArgs {
    pub async fn open(&self) -> anyhow::Result<Store> {
        let kind = match self.datastore {
            Backend::Embedded => BackendKind::Embedded,
            Backend::Kubernetes => BackendKind::Kubernetes,
        };
        connect(kind, &self.path)
            .await
            .with_context(|| format!("opening the {kind} datastore"))
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List or show resources.
    Get(GetArgs),
    /// Create or update resources from files (declarative).
    Apply(FileArgs),
    /// Create resources from files; fails if one exists.
    Create(FileArgs),
    /// Replace existing resources from files; fails if one is missing.
    Replace(FileArgs),
    /// Delete resources by kind and name, or those in files.
    Delete(DeleteArgs),
    /// Change a resource with a JSON merge patch (RFC 7386).
    Patch(PatchArgs),
    /// Add, change or remove labels.
    Label(LabelArgs),
    /// Pod address management: usage, who holds an address, consistency.
    Ipam(IpamArgs),
    /// What nodes report: BGP sessions, routes, endpoints.
    Node(NodeArgs),
    /// A whole cluster with a ToR router in network namespaces on this machine.
    Lab(crate::lab::LabArgs),
    /// Network policy: explain a verdict, show a node's rules.
    Policy(PolicyArgs),
    /// Print or write the CustomResourceDefinitions generated from the types.
    Crds(CrdArgs),
    /// Print shell completions.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Table,
    Wide,
    Yaml,
    Json,
    Name,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// Kind: ippools, ipamblocks, bgpconfigurations, bgppeers, globalnetworkpolicies,
    /// nodestatuses, nodes, namespaces, pods, networkpolicies, secrets (or a short name).
    pub kind: String,
    /// Names to show (all when none).
    pub names: Vec<String>,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: OutputFormat,
    /// Namespace, for namespaced kinds.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// All namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

#[derive(Args, Debug)]
pub struct FileArgs {
    /// Files or directories of YAML/JSON manifests; `-` reads standard input.
    #[arg(short, long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Namespace for namespaced objects that do not name one.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: OutputFormat,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Kind (omit with -f).
    pub kind: Option<String>,
    pub names: Vec<String>,
    #[arg(short, long = "filename")]
    pub files: Vec<PathBuf>,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Succeed when the object does not exist.
    #[arg(long)]
    pub ignore_not_found: bool,
}

#[derive(Args, Debug)]
pub struct PatchArgs {
    pub kind: String,
    pub name: String,
    /// The merge patch, as JSON or YAML, e.g. '{"spec":{"disabled":true}}'.
    #[arg(short, long)]
    pub patch: String,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
}

#[derive(Args, Debug)]
pub struct LabelArgs {
    pub kind: String,
    pub name: String,
    /// `key=value` to set, `key-` to remove.
    #[arg(required = true)]
    pub labels: Vec<String>,
    /// Allow changing a label that already has another value.
    #[arg(long)]
    pub overwrite: bool,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
}

#[derive(Args, Debug)]
pub struct CrdArgs {
    /// Write one file per CRD into this directory instead of printing.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Compare the files in this directory with the generated ones; exit 1 on any difference.
    #[arg(long, conflicts_with = "out")]
    pub check: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub command: NodeCommand,
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// BGP peers with state, uptime and prefixes, and programmed routes, of one node or all.
    Status {
        node: Option<String>,
        /// table, wide (every route) or json.
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
}

#[derive(Args, Debug)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Which policies select each side, which rule decides, and the verdict.
    Explain {
        /// Source: NAMESPACE/POD or an IP address.
        src: String,
        /// Destination: NAMESPACE/POD or an IP address.
        dst: String,
        /// PORT[/PROTO] (TCP by default), or `icmp`; repeatable. Default: ICMP echo.
        #[arg(long, value_parser = crate::policy::parse_port)]
        port: Vec<crate::policy::PortProto>,
        /// Print JSON.
        #[arg(long = "json")]
        output_json: bool,
    },
    /// Print the nftables table (nft script) a node renders.
    Show {
        /// The node's name.
        node: String,
    },
}

#[derive(Args, Debug)]
pub struct IpamArgs {
    #[command(subcommand)]
    pub command: IpamCommand,
}

#[derive(Subcommand, Debug)]
pub enum IpamCommand {
    /// Pools and blocks with their usage; with --ip, who holds that address.
    Show {
        #[arg(long, value_parser = crate::ipam::parse_ip)]
        ip: Option<std::net::IpAddr>,
    },
    /// Find allocations whose holder is gone and blocks whose node is gone.
    Check {
        /// Release what the check finds (each change is printed first).
        #[arg(long)]
        repair: bool,
    },
    /// Release one address (printed with its holder first).
    Release {
        #[arg(long, value_parser = crate::ipam::parse_ip)]
        ip: std::net::IpAddr,
    },
}
