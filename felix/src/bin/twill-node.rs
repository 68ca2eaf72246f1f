//! twill-node: the per-node agent (see `twill_felix::agent`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use twill_api::store::{BackendKind, connect};
use twill_felix::agent::{AgentConfig, run};
use twill_felix::{health, metrics};

#[derive(Parser, Debug)]
#[command(
    name = "twill-node",
    version,
    about = "Twill's node agent: pod endpoints, IPAM, routes, policy, BGP"
)]
struct Args {
    /// This node's name (as in its Node object).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Datastore backend: kubernetes or embedded.
    #[arg(long, env = "TWILL_DATASTORE", default_value = "embedded")]
    datastore: BackendKind,
    /// Embedded store file.
    #[arg(long, env = "TWILL_DATASTORE_PATH", default_value = twill_api::store::embedded::DEFAULT_PATH)]
    path: PathBuf,
    /// The unix socket twill-cni talks to.
    #[arg(long, env = "TWILL_CNI_SOCKET", default_value = twill_cni::spec::DEFAULT_SOCKET)]
    cni_socket: PathBuf,
    /// Where endpoint records are kept.
    #[arg(long, env = "TWILL_STATE_DIR", default_value = "/var/lib/twill/node")]
    state_dir: PathBuf,
    /// MTU of pod interfaces (default: the uplink's).
    #[arg(long, env = "TWILL_MTU")]
    mtu: Option<u32>,
    /// Register the Node object with these labels if it does not exist
    /// (embedded store: there is no kubelet). `k=v,k2=v2`.
    #[arg(long, env = "TWILL_NODE_LABELS")]
    node_labels: Option<String>,
    /// Seconds between NodeStatus reports.
    #[arg(long, default_value = "10")]
    status_interval: u64,
    /// Seconds a report that has not changed (but for its time) may go
    /// unwritten; its `reportInterval`, by which readers judge it stale.
    /// Default: the status interval (every report is written).
    #[arg(long)]
    status_heartbeat: Option<u64>,
    /// Seconds a block stays empty before it returns to the pool.
    #[arg(long, default_value = "300")]
    block_grace: u64,
    /// Where /healthz, /readyz and /metrics are served.
    #[arg(long, env = "TWILL_HEALTH_ADDR", default_value = "127.0.0.1:9099")]
    health_addr: SocketAddr,
    /// Seconds between full route resyncs (a route changed by hand is
    /// repaired within this) and NAT table checks.
    #[arg(long, env = "TWILL_ROUTE_RESYNC", default_value = "30")]
    route_resync: u64,
    /// The address this node peers from: an interface (`eth0`) or a CIDR
    /// (`172.30.0.0/24`) holding exactly one of the node's addresses. Wins
    /// over the BGPConfiguration's nodeAddress; without either, BGP is off.
    #[arg(long, env = "TWILL_NODE_ADDRESS")]
    node_address: Option<twill_felix::calc::bgp::address::AddressSpec>,
    /// Longest wait, after a start, for BGP to deliver a complete table
    /// before stale BGP routes may be removed from the kernel.
    #[arg(long, default_value = "60")]
    bgp_settle: u64,
    /// Handle Service traffic (ClusterIP, NodePort, LoadBalancer, external
    /// IPs) in the `inet twill-svc-0` … `twill-svc-7` nftables tables, replacing kube-proxy;
    /// `off` leaves it to kube-proxy (and deletes a table a previous run left).
    #[arg(long, env = "TWILL_SERVICE_PROXY", value_enum, default_value = "off")]
    service_proxy: twill_felix::dataplane::services::Mode,
}

fn parse_labels(s: &str) -> anyhow::Result<BTreeMap<String, String>> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("--node-labels: {p:?} is not key=value"))
        })
        .collect()
}

/// glibc malloc arenas the agent may use (unless `MALLOC_ARENA_MAX` says
/// otherwise). glibc's default, eight per core, lets memory a burst frees on
/// one thread sit unused in its arena while another thread grows its own:
/// after a burst of LoadBalancer Services the agent held much more memory
/// than it used (docs/benchmarks.md, "LoadBalancer Services"). Two
/// arenas serve the runtime's few threads without contention.
const MALLOC_ARENAS: i32 = 2;

/// Caps glibc's malloc arenas at [`MALLOC_ARENAS`]; before any thread
/// starts, so every thread shares them. A user's `MALLOC_ARENA_MAX` wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before
        // the runtime's threads exist.
        let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) };
        if ok != 1 {
            tracing::warn!("cannot limit malloc arenas (mallopt refused)");
        }
    }
}

fn main() -> anyhow::Result<()> {
    // TWILL_LOG: the level / filter (`info`, `twill_felix=debug,info`);
    // TWILL_LOG_FORMAT=json: one JSON object per line, for log collectors.
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("TWILL_LOG").unwrap_or_else(|_| "info".into());
    let json = std::env::var("TWILL_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    if json {
        tracing_subscriber::fmt()
            .json()
            .with_current_span(false)
            .with_env_filter(filter)
            .init();
    } else {
        // Colour only for a person at a terminal, never into log files.
        use std::io::IsTerminal;
        tracing_subscriber::fmt()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init();
    }
    limit_malloc_arenas();
    let args = Args::parse();
    let node_name = match args.node_name {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .context("--node-name not given and the hostname is unreadable")?
            .to_string_lossy()
            .into_owned(),
    };
    let register = match (&args.datastore, &args.node_labels) {
        (BackendKind::Embedded, Some(l)) => Some(parse_labels(l)?),
        (BackendKind::Embedded, None) => Some(BTreeMap::new()),
        (BackendKind::Kubernetes, _) => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // The health port opens first, so the kubelet sees a live process
        // (and what it waits for) during a slow start-up.
        let readiness = health::global().clone();
        readiness.register(health::DATASTORE, "the datastore has not been read yet");
        readiness.register(
            health::DATAPLANE,
            "endpoints are not reconciled yet (CNI socket closed)",
        );
        let listener = health::bind(args.health_addr).await.with_context(|| {
            format!(
                "cannot serve health and metrics on {} (another twill-node running? set --health-addr)",
                args.health_addr
            )
        })?;
        tracing::info!(addr = %args.health_addr, "serving /healthz, /readyz and /metrics");
        tokio::spawn(async move {
            if let Err(e) = health::serve(listener, readiness, metrics::global().clone()).await {
                tracing::error!(error = %e, "the health endpoint failed");
            }
        });
        let store = connect(args.datastore, &args.path).await?;
        run(AgentConfig {
            node_name,
            store,
            cni_socket: args.cni_socket,
            state_dir: args.state_dir,
            mtu: args.mtu,
            register_node: register,
            status_interval: Duration::from_secs(args.status_interval),
            status_heartbeat: Duration::from_secs(
                args.status_heartbeat
                    .unwrap_or(args.status_interval)
                    .max(args.status_interval),
            ),
            block_grace: Duration::from_secs(args.block_grace),
            route_resync: Duration::from_secs(args.route_resync.max(1)),
            node_address: args.node_address,
            bgp_settle: Duration::from_secs(args.bgp_settle.max(1)),
            service_proxy: args.service_proxy,
        })
        .await
    })
}
