//! twill-node: one agent per node. Start-up order matters and is fixed:
//! datastore → node registration → kernel prerequisites (forwarding) →
//! endpoint reconcile → route programmer and NAT → CNI socket. The socket
//! opens only after reconcile, so no ADD ever races with the repair of a
//! previous run's leftovers. Routes follow the endpoint set and the blocks
//! this node owns (watched in the store); NAT follows the IPPools.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::TryStreamExt;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::RouteAttribute;
use rtnetlink::RouteMessageBuilder;
use twill_api::Store;
use twill_api::kinds::Object;
use twill_api::resources::{IPAMBlock, IPPool, NodeStatusReport, RouteStatus};
use twill_api::store::WatchEvent;

use crate::endpoint::{EndpointGate, Endpoints, StateDir};
use crate::nft::engine::PolicyEngine;
use crate::routes::{RouteConfig, RouteProgrammer, Sources, Target};
use crate::{cni_server, health, metrics, nat, status, sysctl};

/// Everything twill-node needs to start.
#[derive(Clone)]
pub struct AgentConfig {
    pub node_name: String,
    pub store: Store,
    pub cni_socket: PathBuf,
    pub state_dir: PathBuf,
    /// MTU for pod interfaces; detected from the uplink when not set.
    pub mtu: Option<u32>,
    /// Create the Node object (with these labels) if it does not exist.
    pub register_node: Option<BTreeMap<String, String>>,
    pub status_interval: Duration,
    /// How long a block stays empty before it returns to the pool.
    pub block_grace: Duration,
    /// Time between full route resyncs (and NAT table checks).
    pub route_resync: Duration,
    /// `--node-address`; else the BGPConfiguration's nodeAddress.
    pub node_address: Option<crate::bgp::address::AddressSpec>,
    /// Longest wait for a complete BGP table after a start.
    pub bgp_settle: Duration,
}

/// The MTU of the interface the IPv4 default route leaves by, if any.
async fn uplink_mtu(h: &rtnetlink::Handle) -> Option<u32> {
    let mut routes = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut oif = None;
    while let Ok(Some(r)) = routes.try_next().await {
        if r.header.destination_prefix_length == 0
            && let Some(i) = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            })
        {
            oif = Some(i);
            break;
        }
    }
    let mut links = h.link().get().match_index(oif?).execute();
    let link = links.try_next().await.ok()??;
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

/// A started agent: its endpoints, and the tasks serving it.
pub struct Agent {
    pub endpoints: Arc<Endpoints>,
    /// Kernel routes; BGP routes go in through `set_bgp_routes` and friends.
    pub routes: Arc<RouteProgrammer>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Agent {
    /// Starts everything and returns once the CNI socket accepts requests.
    pub async fn start(cfg: AgentConfig, gate: Arc<dyn EndpointGate>) -> anyhow::Result<Agent> {
        let (conn, host, _) = rtnetlink::new_connection().context("opening netlink")?;
        let mut tasks = vec![tokio::spawn(conn)];
        for (key, what) in [
            ("net.ipv4.ip_forward", "IPv4 forwarding"),
            ("net.ipv6.conf.all.forwarding", "IPv6 forwarding"),
        ] {
            if let Err(e) = sysctl::write(key, "1") {
                tracing::warn!(error = %e, "cannot enable {what} ({key}); pods will not reach other nodes");
            }
        }
        if let Some(labels) = &cfg.register_node
            && status::register_node(&cfg.store, &cfg.node_name, labels).await?
        {
            tracing::info!(node = %cfg.node_name, "registered the Node object");
        }
        let mtu = match cfg.mtu {
            Some(m) => m,
            None => uplink_mtu(&host).await.unwrap_or(1500),
        };
        let state = StateDir::open(&cfg.state_dir)
            .with_context(|| format!("opening the state directory {}", cfg.state_dir.display()))?;
        let endpoints = Arc::new(Endpoints::new(
            &cfg.node_name,
            cfg.store.clone(),
            state,
            host.clone(),
            mtu,
            gate,
        ));
        let report = endpoints
            .reconcile()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tracing::info!(
            healthy = report.healthy,
            repaired = report.repaired.len(),
            removed = report.removed.len(),
            leaked_links = report.leaked_links.len(),
            released = report.released.len(),
            mtu,
            "node {} ready",
            cfg.node_name
        );
        let routes = Arc::new(
            RouteProgrammer::start(RouteConfig {
                resync_interval: cfg.route_resync,
                // Nothing stale is removed before BGP has delivered a
                // complete table (see bgp::run).
                wait_for: Sources {
                    endpoints: true,
                    blocks: true,
                    bgp: true,
                },
                ..RouteConfig::default()
            })
            .await
            .context("starting the route programmer")?,
        );
        tasks.push(tokio::spawn(follow_endpoints(
            endpoints.clone(),
            routes.clone(),
        )));
        tasks.push(tokio::spawn(follow_blocks(cfg.clone(), routes.clone())));
        tasks.push(tokio::spawn(follow_nat(cfg.clone())));
        let bgp_report = crate::bgp::run::SharedReport::default();
        tasks.push(tokio::spawn(crate::bgp::run::run(
            crate::bgp::run::BgpConfig {
                node: cfg.node_name.clone(),
                store: cfg.store.clone(),
                address: cfg.node_address.clone(),
                state_dir: cfg.state_dir.clone(),
                settle_timeout: cfg.bgp_settle,
            },
            routes.clone(),
            bgp_report.clone(),
        )));
        let listener = cni_server::bind(&cfg.cni_socket)
            .with_context(|| format!("binding the CNI socket {}", cfg.cni_socket.display()))?;
        {
            let eps = endpoints.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = cni_server::serve(listener, eps).await {
                    tracing::error!(error = %e, "the CNI socket failed");
                }
            }));
        }
        health::global().set_ready(health::DATAPLANE);
        tasks.push(tokio::spawn(report_loop(
            cfg.clone(),
            endpoints.clone(),
            routes.clone(),
            host,
            bgp_report,
        )));
        tasks.push(tokio::spawn(block_gc_loop(cfg.clone(), endpoints.clone())));
        Ok(Agent {
            endpoints,
            routes,
            tasks,
        })
    }
}

/// How often the policy table is read back and compared with what it should
/// be (seconds; `TWILL_POLICY_RESYNC_SECS`, default 10).
fn policy_resync() -> Duration {
    std::env::var("TWILL_POLICY_RESYNC_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(10))
}

/// twill-node as [`run`] starts it: the agent with network policy enforced.
/// Dropping it stops every task; kernel state stays as it is.
pub struct EnforcingAgent {
    pub agent: Agent,
    policy: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for EnforcingAgent {
    fn drop(&mut self) {
        for t in &self.policy {
            t.abort();
        }
    }
}

/// Starts the agent with network policy enforced: the policy engine follows
/// the datastore and the endpoints, and a CNI ADD returns only once its
/// endpoint's policy is in the kernel. Returns once the CNI socket accepts
/// requests. The store may be any backend (`twill-node` connects it; tests
/// pass a Kubernetes backend on a mock API server).
pub async fn start_enforcing(cfg: AgentConfig) -> anyhow::Result<EnforcingAgent> {
    let engine = PolicyEngine::new(&cfg.node_name, cfg.store.clone());
    let agent = Agent::start(cfg, engine.gate()).await?;
    let policy = engine.run(agent.endpoints.subscribe(), policy_resync());
    Ok(EnforcingAgent { agent, policy })
}

/// Runs twill-node ([`start_enforcing`]) until SIGTERM or SIGINT.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let node = start_enforcing(cfg).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Kernel state stays as it is: a restart must not disturb running pods.
    drop(node);
    tracing::info!("stopping; endpoints, routes and policy rules stay in place");
    Ok(())
}

/// The status report's view of a programmed route.
fn route_status(
    dst: &ipnetwork::IpNetwork,
    t: &Target,
    names: &BTreeMap<u32, String>,
) -> RouteStatus {
    let (kind, via) = match t {
        Target::Dev(i) => (
            "local",
            vec![names.get(i).cloned().unwrap_or_else(|| format!("#{i}"))],
        ),
        Target::Blackhole => ("blackhole", Vec::new()),
        Target::Via(h) => ("bgp", h.iter().map(ToString::to_string).collect()),
    };
    RouteStatus {
        destination: dst.to_string(),
        kind: kind.into(),
        via,
    }
}

async fn report_loop(
    cfg: AgentConfig,
    endpoints: Arc<Endpoints>,
    routes: Arc<RouteProgrammer>,
    host: rtnetlink::Handle,
    bgp: crate::bgp::run::SharedReport,
) {
    loop {
        // Interface names of the local endpoints, for the route listing.
        let mut names = BTreeMap::new();
        for e in endpoints.current().values() {
            if let Ok(Some(i)) = crate::endpoint::link::link_index(&host, &e.host_ifname).await {
                names.insert(i, e.host_ifname.clone());
            }
        }
        let programmed: Vec<RouteStatus> = routes
            .programmed()
            .await
            .map(|m| m.iter().map(|(d, t)| route_status(d, t, &names)).collect())
            .unwrap_or_default();
        let (listed_routes, route_counts) = status::listed_routes(programmed);
        let eps = endpoints.current();
        metrics::global().set_endpoints(eps.len());
        let blocks = match cfg.store.list::<IPAMBlock>().await {
            Ok(l) => {
                health::global().set_ready(health::DATASTORE);
                let mine = l
                    .items
                    .iter()
                    .filter(|b| b.spec.affinity.as_deref() == Some(cfg.node_name.as_str()));
                let used = mine.clone().map(|b| b.spec.allocations.len()).sum();
                metrics::global().set_ipam(mine.count(), used);
                twill_ipam::owned_blocks(&l.items, &cfg.node_name)
                    .into_iter()
                    .map(|b| b.to_string())
                    .collect()
            }
            Err(e) => {
                health::global()
                    .set_not_ready(health::DATASTORE, &format!("cannot read IPAM blocks: {e}"));
                Vec::new()
            }
        };
        let bgp = bgp.lock().map(|b| b.clone()).unwrap_or_default();
        let report = NodeStatusReport {
            updated: jiff::Timestamp::now().to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            ready: health::global().is_ready(),
            not_ready: health::global()
                .snapshot()
                .into_iter()
                .filter(|(_, c)| !c.ready)
                .map(|(n, c)| (n, c.reason))
                .collect(),
            address: bgp.address,
            as_number: bgp.asn,
            bgp_peers: bgp.peers,
            endpoints: eps.len() as u32,
            endpoint_handles: eps.values().map(|e| e.container_id.clone()).collect(),
            blocks,
            routes: listed_routes,
            route_counts,
        };
        let secs = cfg.status_interval.as_secs().max(1) as u32;
        if let Err(e) = status::write_report(&cfg.store, &cfg.node_name, secs, report).await {
            tracing::warn!(error = %e, "cannot write the node status");
        }
        tokio::time::sleep(cfg.status_interval).await;
    }
}

async fn block_gc_loop(cfg: AgentConfig, endpoints: Arc<Endpoints>) {
    let every = (cfg.block_grace / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = endpoints.ipam().release_empty_blocks(cfg.block_grace).await {
            tracing::warn!(error = %e, "cannot release empty blocks");
        }
    }
}

/// Feeds the endpoint set to the route programmer, now and on every change.
async fn follow_endpoints(endpoints: Arc<Endpoints>, routes: Arc<RouteProgrammer>) {
    let mut rx = endpoints.subscribe();
    loop {
        let set = rx.borrow_and_update().clone();
        routes.set_endpoints(set.values().flat_map(|e| {
            e.addresses
                .iter()
                .map(|a| (a.addr, e.host_ifname.clone()))
                .collect::<Vec<_>>()
        }));
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Follows every object of a kind in the store, calling `changed` with the
/// complete set after each burst of events; re-watches after an error.
pub(crate) async fn follow<K: Object>(store: Store, mut changed: impl FnMut(Vec<K>) + Send) {
    use futures::StreamExt;
    loop {
        let mut cache: BTreeMap<String, K> = BTreeMap::new();
        let mut watch = store.watch::<K>(None);
        let name = |k: &K| k.meta().name.clone().unwrap_or_default();
        while let Some(ev) = watch.next().await {
            match ev {
                Ok(WatchEvent::Resync { items, .. }) => {
                    cache = items.into_iter().map(|k| (name(&k), k)).collect();
                }
                Ok(WatchEvent::Applied(k)) => {
                    cache.insert(name(&k), k);
                }
                Ok(WatchEvent::Deleted(k)) => {
                    cache.remove(&name(&k));
                }
                Err(e) => {
                    tracing::warn!(kind = ?K::KIND, error = %e, "watch failed; watching again");
                    break;
                }
            }
            changed(cache.values().cloned().collect());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A blackhole route for every block this node owns.
async fn follow_blocks(cfg: AgentConfig, routes: Arc<RouteProgrammer>) {
    let node = cfg.node_name.clone();
    follow::<IPAMBlock>(cfg.store, move |blocks| {
        routes.set_blocks(twill_ipam::owned_blocks(&blocks, &node));
    })
    .await;
}

/// The NAT table follows the pools; a periodic check repairs drift.
async fn follow_nat(cfg: AgentConfig) {
    let (tx, mut rx) = tokio::sync::watch::channel(None::<nat::NatConfig>);
    let every = cfg.route_resync;
    let applier = tokio::spawn(async move {
        loop {
            let want = rx.borrow_and_update().clone();
            if let Some(want) = want {
                match nat::apply(&want).await {
                    Ok(true) => tracing::info!(nat = ?want.nat, "NAT outgoing table written"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot program NAT outgoing; retrying"),
                }
            }
            if let Ok(Err(_)) = tokio::time::timeout(every, rx.changed()).await {
                return; // the pool follower is gone
            }
        }
    });
    follow::<IPPool>(cfg.store, move |pools| {
        tx.send_replace(Some(nat::nat_config(&pools)));
    })
    .await;
    applier.abort();
}
