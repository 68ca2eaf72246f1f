//! twill-node's BGP controller: runs the embedded speaker (`twill-bgpd`'s
//! library) and keeps it in line with the datastore; what to run and
//! announce is computed in [`crate::calc::bgp`].
//!
//! * The node address is resolved once from `--node-address` or the
//!   BGPConfiguration's `nodeAddress` (retried until it resolves; never
//!   guessed) and published on the Node object ([`node`]) for the other
//!   nodes' mesh. The IPv6 next hop follows the kernel's addresses
//!   ([`address::follow_addresses`]) by the rule of
//!   [`crate::calc::bgp::address::pick_v6`].
//! * [`sessions`]: sessions follow BGPConfiguration, BGPPeer and Node
//!   objects; a changed session is replaced, others stay up.
//! * [`originate`]: announcements follow the IPAM blocks and pools, and
//!   the Services and EndpointSlices (Service addresses).
//! * [`routes`]: best routes go to the route manager, which deletes stale
//!   Twill routes only after BGP has delivered a complete table, so a
//!   restart never withdraws a route peers still announce. On SIGTERM the
//!   speaker is not shut down: peers keep our routes as stale (graceful
//!   restart).
//! * [`status`]: the sessions' state for the NodeStatus report and the
//!   `bgp` readiness condition.

pub mod address;
pub mod node;
pub mod originate;
pub mod routes;
pub mod sessions;
pub mod status;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use twill_api::Store;
use twill_api::resources::{BGPConfiguration, PeerStatus};
use twill_bgpd::speaker::{GracefulRestartConfig, Speaker, SpeakerConfig};

use crate::calc::bgp::address::AddressSpec;
use crate::calc::bgp::peers::{self, DesiredPeer};
use crate::dataplane::routes::RouteProgrammer;
use crate::health;

/// The desired sessions by address, shared by the session follower (which
/// writes it) and the route and status loops (which read it).
pub type Sources = Arc<Mutex<BTreeMap<IpAddr, DesiredPeer>>>;

/// Settings from twill-node's command line.
#[derive(Clone, Debug)]
pub struct BgpConfig {
    pub node: String,
    pub store: Store,
    /// `--node-address`: wins over the BGPConfiguration's nodeAddress.
    pub address: Option<AddressSpec>,
    /// Where the graceful-restart marker lives (the node's state directory).
    pub state_dir: PathBuf,
    /// Longest wait for a complete table after a start before the route
    /// programmer may remove stale BGP routes.
    pub settle_timeout: Duration,
    /// The Services and EndpointSlices (shared with the service proxy).
    pub services: crate::watch::feeds::ServiceFeed,
}

/// What the status report shows about BGP.
#[derive(Clone, Debug, Default)]
pub struct BgpReport {
    pub address: String,
    pub asn: u32,
    pub peers: Vec<PeerStatus>,
    /// The Service prefixes announced (NodeStatus `servicePrefixes`).
    pub service_prefixes: Vec<String>,
    /// Why BGP is not running, when it is not.
    pub problem: Option<String>,
}

pub type SharedReport = Arc<Mutex<BgpReport>>;

fn set_problem(report: &SharedReport, p: String) {
    if let Ok(mut r) = report.lock() {
        r.problem = Some(p);
    }
}

/// Runs forever. `routes` receives BGP routes; `report` is kept current.
pub async fn run(cfg: BgpConfig, routes: Arc<RouteProgrammer>, report: SharedReport) {
    let (conn, host, _) = match rtnetlink::new_connection() {
        Ok(c) => c,
        Err(e) => {
            set_problem(&report, format!("cannot open netlink: {e}"));
            routes.set_bgp_routes(Vec::new());
            return;
        }
    };
    tokio::spawn(conn);
    // 1. The node address: never guessed, retried until it resolves.
    let mut first_failure = true;
    let mut declared_empty = false;
    let started = Instant::now();
    let (addr, local) = loop {
        let configs = cfg
            .store
            .list::<BGPConfiguration>()
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let me = cfg.store.get::<Node>(None, &cfg.node).await.ok().flatten();
        let local = peers::local_bgp(&cfg.node, me.as_ref(), &configs);
        let spec = match (&cfg.address, &local.node_address) {
            (Some(s), _) => Ok(s.clone()),
            (None, Some(a)) => AddressSpec::try_from(a),
            (None, None) => Err("no node address configured: start twill-node with --node-address IFACE|CIDR or set nodeAddress in the BGPConfiguration; BGP is off".to_string()),
        };
        let configured = spec.is_ok();
        let resolved = match spec {
            Ok(s) => address::resolve(&host, &s)
                .await
                .map_err(|e| format!("node address: {e}; BGP waits for it")),
            Err(e) => Err(e),
        };
        match resolved {
            Ok(a) => break (a, local),
            Err(e) => {
                if first_failure {
                    // No address configured at all is BGP off by choice
                    // (a single node, a lab without a ToR): say so at INFO.
                    if configured {
                        tracing::error!("{e}");
                    } else {
                        tracing::info!("{e}");
                    }
                    health::global().remove(health::BGP);
                    first_failure = false;
                }
                // BGP routes a previous run programmed stay while a configured
                // address may still appear (an interface coming up); with no
                // address configured there is nothing to wait for.
                if !declared_empty && (!configured || started.elapsed() > cfg.settle_timeout) {
                    routes.set_bgp_routes(Vec::new());
                    declared_empty = true;
                }
                set_problem(&report, e);
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    let IpAddr::V4(router_id) = addr.ip() else {
        set_problem(
            &report,
            format!("node address {addr} is not IPv4: the router ID needs one"),
        );
        return;
    };
    // Dual stack: IPv6 blocks are announced with the node's IPv6 address as
    // next hop (over IPv4 sessions too: RFC 4760 carries it in MP_REACH_NLRI).
    // The session follower chooses it (it knows the IPv6 peers) from the
    // addresses the kernel reports as they change; origination follows.
    let first = address::host_addresses(&host).await.ok().map(|(a, _)| a);
    let (addrs_tx, addrs_rx) = tokio::sync::watch::channel(first);
    tokio::spawn(address::follow_addresses(addrs_tx));
    let (next_hop6_tx, next_hop6_rx) = tokio::sync::watch::channel(None);
    if let Err(e) = node::publish_address(&cfg.store, &cfg.node, &addr).await {
        tracing::warn!(error = %e, "cannot publish the node address on the Node object; other nodes will not find this one");
    }
    let speaker = match Speaker::start(SpeakerConfig {
        asn: local.asn,
        router_id,
        listen: Some(SocketAddr::new(addr.ip(), local.listen_port)),
        cluster_id: local.cluster_id,
        multipath: true,
        // Always configured: whether a session advertises GR is per peer
        // (BGPPeer gracefulRestart, defaulting to the configuration's
        // `enabled`), so a BGPPeer can turn it on when the cluster has it off.
        graceful_restart: Some(GracefulRestartConfig {
            restart_time: local.restart_time.min(4095),
            state_file: Some(cfg.state_dir.join("bgp-running")),
            stale_time: Duration::from_secs(u64::from(local.stale_time)),
        }),
    })
    .await
    {
        Ok(s) => Arc::new(s),
        Err(e) => {
            set_problem(&report, format!("cannot start BGP on {addr}: {e}"));
            tracing::error!(error = %e, "cannot start BGP");
            routes.set_bgp_routes(Vec::new());
            return;
        }
    };
    tracing::info!(address = %addr, asn = local.asn, restarting = speaker.restarting(), "BGP speaker started");
    {
        let s = speaker.clone();
        crate::metrics::global().add_text_source(move || s.metrics_text());
    }
    if let Ok(mut r) = report.lock() {
        r.address = addr.to_string();
        r.asn = local.asn;
        r.problem = None;
    }
    let sources: Sources = Default::default();
    tokio::spawn(routes::forward_routes(
        speaker.clone(),
        routes.clone(),
        sources.clone(),
        cfg.settle_timeout,
    ));
    tokio::spawn(status::status_loop(
        speaker.clone(),
        report.clone(),
        sources.clone(),
    ));
    tokio::spawn(originate::follow_origination(
        cfg.clone(),
        speaker.clone(),
        addr.ip(),
        next_hop6_rx,
        report.clone(),
    ));
    let node_addr = sessions::NodeAddrs {
        v4: addr,
        host: addrs_rx,
        next_hop6: next_hop6_tx,
    };
    sessions::follow_peers(cfg, speaker, node_addr, sources).await;
}
