//! The command-line grammar (clap derive). Kept apart from what the
//! commands do so `twillctl completion` can generate completions from it.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use twill_api::Store;
use twill_api::store::embedded::DEFAULT_PATH;
use twill_api::store::kubernetes::KubeStore;
use twill_api::store::{BackendKind, connect};

#[derive(Parser, Debug)]
#[command(
    name = "twillctl",
    version,
    about = "Manage a Twill network fabric: resources, CRDs, IPAM, nodes and the lab",
    after_help = "Without a cluster, twillctl uses the embedded store at /var/lib/twill/twill.db.\nThe global options (--datastore, --path, --kubeconfig, --context) work before or after any command.\nExit codes: 0 ok, 1 failed or not found, 2 usage error, 141 stdout was closed (e.g. piped into head)."
)]
pub struct Cli {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Which datastore to talk to. Global: listed under "Global options" by
/// `--help`, left out of every command's `-h` so it is not repeated.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// Datastore backend.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "TWILL_DATASTORE",
        default_value = "embedded",
        help_heading = "Global options",
        hide_short_help = true
    )]
    pub datastore: Backend,
    /// Embedded store file.
    #[arg(long, global = true, env = "TWILL_DATASTORE_PATH", default_value = DEFAULT_PATH, help_heading = "Global options",
        hide_short_help = true)]
    pub path: PathBuf,
}

/// Which cluster `--datastore kubernetes` talks to. Kept apart from
/// [`StoreArgs`] (which other modules build by hand) and recorded once per
/// process by [`KubeArgs::set`], since there is one command line.
#[derive(Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// Kubeconfig file for --datastore kubernetes (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        help_heading = "Global options",
        hide_short_help = true
    )]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context for --datastore kubernetes (default: the current context).
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        help_heading = "Global options",
        hide_short_help = true
    )]
    pub context: Option<String>,
}

static KUBE_ARGS: std::sync::OnceLock<KubeArgs> = std::sync::OnceLock::new();

impl KubeArgs {
    /// Records the command line's choice for every later `kube_client`.
    pub fn set(self) {
        let _ = KUBE_ARGS.set(self);
    }

    fn get() -> KubeArgs {
        KUBE_ARGS.get().cloned().unwrap_or_default()
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The Kubernetes API (KUBECONFIG, ~/.kube/config, or in-cluster).
    Kubernetes,
    /// One SQLite file on this machine.
    Embedded,
}

impl StoreArgs {
    /// Opens the datastore for a command that may write: the embedded file
    /// is created when missing.
    pub async fn open(&self) -> anyhow::Result<Store> {
        match self.datastore {
            Backend::Embedded => connect(BackendKind::Embedded, &self.path)
                .await
                .context("opening the embedded datastore"),
            Backend::Kubernetes => Ok(Store::new(KubeStore::new(self.kube_client().await?))),
        }
    }

    /// Opens the datastore for a command that only reads: a missing
    /// embedded store is an error naming the path (nothing is created).
    pub async fn open_existing(&self) -> anyhow::Result<Store> {
        if self.datastore == Backend::Embedded && !self.path.exists() {
            anyhow::bail!(
                "no embedded datastore at {}: nothing has been written there yet (check --path or TWILL_DATASTORE_PATH, or apply something first)",
                self.path.display()
            );
        }
        self.open().await
    }

    /// A client for the cluster named by --kubeconfig/--context (or the
    /// usual defaults: KUBECONFIG, ~/.kube/config, in-cluster).
    pub async fn kube_client(&self) -> anyhow::Result<kube::Client> {
        use kube::config::{Config, KubeConfigOptions, Kubeconfig};
        let kube = KubeArgs::get();
        let options = KubeConfigOptions {
            context: kube.context.clone(),
            ..Default::default()
        };
        let config = match (&kube.kubeconfig, &kube.context) {
            (Some(file), _) => {
                let kc = Kubeconfig::read_from(file)
                    .with_context(|| format!("reading kubeconfig {}", file.display()))?;
                Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .with_context(|| format!("using kubeconfig {}", file.display()))?
            }
            (None, Some(ctx)) => Config::from_kubeconfig(&options)
                .await
                .with_context(|| format!("using kubeconfig context {ctx:?}"))?,
            (None, None) => Config::infer().await.context(
                "cannot find the cluster (set KUBECONFIG, pass --kubeconfig, or run in a pod)",
            )?,
        };
        kube::Client::try_from(config).context("creating the Kubernetes client")
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List or show resources.
    Get(GetArgs),
    /// Create or update resources from files (declarative).
    Apply(ApplyArgs),
    /// Show how files differ from what is stored (exit 0 same, 1 different, >1 error).
    Diff(DiffArgs),
    /// Create resources from files; fails if one exists.
    Create(ApplyArgs),
    /// Replace existing resources from files; fails if one is missing.
    Replace(ApplyArgs),
    /// Delete resources by kind and name, or those in files.
    Delete(DeleteArgs),
    /// Change a resource with a JSON merge patch (RFC 7386).
    Patch(PatchArgs),
    /// Add, change or remove labels.
    Label(LabelArgs),
    /// Pod and LoadBalancer address management: usage, who holds an address, consistency.
    Ipam(IpamArgs),
    /// Settings of the embedded datastore.
    Datastore {
        #[command(subcommand)]
        command: DatastoreCommand,
    },
    /// What nodes report: BGP sessions, routes, endpoints.
    Node(NodeArgs),
    /// A whole cluster with a ToR router in network namespaces on this machine.
    Lab(crate::lab::LabArgs),
    /// Network policy: explain a verdict, show a node's rules.
    Policy(PolicyArgs),
    /// Services: what each node's service proxy does with one.
    Service(ServiceArgs),
    /// Print or write the CustomResourceDefinitions generated from the types.
    Crds(CrdArgs),
    /// Print shell completions (commands, flags, kinds and object names).
    Completion {
        /// The shell to print completions for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print twillctl's version, and the server's with --datastore kubernetes.
    Version {
        /// Only the client's version (do not contact the datastore).
        #[arg(long)]
        client: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Words for shell completion (called by the completion scripts).
    #[command(name = "__complete", hide = true)]
    Complete {
        /// `kinds`, or `names KIND [NAMESPACE]`.
        words: Vec<String>,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Aligned columns.
    #[default]
    Table,
    /// Aligned columns, more of them.
    Wide,
    /// YAML documents.
    Yaml,
    /// JSON (a List for several objects).
    Json,
    /// `kind/name` lines.
    Name,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// Kind: ippools, ipamblocks, bgpconfigurations, bgppeers, globalnetworkpolicies,
    /// nodestatuses, nodes, namespaces, pods, networkpolicies, secrets, services,
    /// endpointslices (or a short name).
    pub kind: String,
    /// Names to show (all when none).
    pub names: Vec<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: OutputFormat,
    /// Namespace, for namespaced kinds.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// All namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Label selector, as kubectl: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, comma-separated.
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// After listing, watch for changes and print each changed object.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Add a LABELS column.
    #[arg(long)]
    pub show_labels: bool,
}

/// `--dry-run`: `client` validates here only; `server` also asks the
/// backend (Kubernetes dryRun=All), where it has one.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DryRun {
    /// Write for real.
    None,
    /// Validate here and say what would happen; nothing is sent to be written.
    Client,
    /// Also send each write with dryRun=All (Kubernetes only).
    Server,
}

#[derive(Args, Debug)]
pub struct FileArgs {
    /// Files or directories of YAML/JSON manifests; `-` reads standard input.
    #[arg(short, long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Namespace for namespaced objects that do not name one.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Output format for what was written (table prints one `kind/name verb` line each).
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: OutputFormat,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub file: FileArgs,
    /// Only say what would be done: client (checked here) or server (checked by the backend too).
    #[arg(long, value_enum, num_args = 0..=1, require_equals = true, default_missing_value = "client", default_value = "none")]
    pub dry_run: DryRun,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// Files or directories of YAML/JSON manifests; `-` reads standard input.
    #[arg(short, long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Namespace for namespaced objects that do not name one.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Kind (omit with -f).
    pub kind: Option<String>,
    /// Names of the objects to delete.
    pub names: Vec<String>,
    /// Delete the objects named in these files instead.
    #[arg(short, long = "filename")]
    pub files: Vec<PathBuf>,
    /// Namespace, for namespaced kinds.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Succeed when the object does not exist.
    #[arg(long)]
    pub ignore_not_found: bool,
}

#[derive(Args, Debug)]
pub struct PatchArgs {
    /// Kind of the object.
    pub kind: String,
    /// Name of the object.
    pub name: String,
    /// The merge patch, as JSON or YAML, e.g. '{"spec":{"disabled":true}}'.
    #[arg(short, long)]
    pub patch: String,
    /// Namespace, for namespaced kinds.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
}

#[derive(Args, Debug)]
pub struct LabelArgs {
    /// Kind of the object.
    pub kind: String,
    /// Name of the object.
    pub name: String,
    /// `key=value` to set, `key-` to remove.
    #[arg(required = true)]
    pub labels: Vec<String>,
    /// Allow changing a label that already has another value.
    #[arg(long)]
    pub overwrite: bool,
    /// Namespace, for namespaced kinds.
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
        /// The node's name (all nodes that report when omitted).
        node: Option<String>,
        /// table, wide (every route), yaml, json, or name.
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
pub struct ServiceArgs {
    #[command(subcommand)]
    pub command: ServiceCommand,
}

#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// For each node, the endpoints it sends each Service port's traffic to, and why.
    Show {
        /// The Service: NAMESPACE/NAME.
        service: String,
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
        /// table or json.
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
}

#[derive(Args, Debug)]
pub struct IpamArgs {
    #[command(subcommand)]
    pub command: IpamCommand,
}

#[derive(Subcommand, Debug)]
pub enum DatastoreCommand {
    /// Show or set the range(s) the embedded store takes Service cluster IPs
    /// from (one CIDR per family, e.g. 10.96.0.0/12,fd00:96::/108; default 10.96.0.0/12).
    ServiceRange {
        /// The new range(s); without, print the current one.
        cidrs: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum IpamCommand {
    /// Pools and blocks with their usage; with --ip, who holds that address.
    Show {
        /// Show who holds this address instead.
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
        /// The address to release.
        #[arg(long, value_parser = crate::ipam::parse_ip)]
        ip: std::net::IpAddr,
    },
}
