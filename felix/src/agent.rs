//! twill-node: one agent per node, wired here. Start-up order matters and
//! is fixed: datastore → node registration → kernel prerequisites
//! (forwarding) → endpoint reconcile → route manager, NAT and BGP → CNI
//! socket → status. The LoadBalancer allocator runs beside them from the
//! start (every node runs one; see `twill_ipam::lb_alloc`). The socket opens only after reconcile, so no ADD ever
//! races with the repair of a previous run's leftovers. The service proxy
//! (`--service-proxy`) follows the Services beside BGP origination, on the
//! same Service and EndpointSlice watches.

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
use twill_api::store::retry::Backoff;

use crate::dataplane::endpoints::{EndpointGate, Endpoints, ReconcileReport, StateDir};
use crate::dataplane::policy::PolicyEngine;
use crate::dataplane::routes::{RouteConfig, RouteProgrammer, Sources};
use crate::dataplane::{Requeue, nat, services, sysctl};
use crate::status::report::{BlockSummary, ReportConfig, report_loop};
use crate::watch::feeds::{ServiceFeed, follow_blocks, follow_endpoints, follow_pools};
use crate::{cni_server, health, status};

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
    /// The longest time between two NodeStatus writes when the report
    /// does not change (at least `status_interval`; the report is built
    /// every `status_interval` and written when it differs).
    pub status_heartbeat: Duration,
    /// How long a block stays empty before it returns to the pool.
    pub block_grace: Duration,
    /// Time between full route resyncs (and NAT table checks).
    pub route_resync: Duration,
    /// `--node-address`; else the BGPConfiguration's nodeAddress.
    pub node_address: Option<crate::calc::bgp::address::AddressSpec>,
    /// Longest wait for a complete BGP table after a start.
    pub bgp_settle: Duration,
    /// `--service-proxy`: whether this agent owns Service traffic.
    pub service_proxy: services::Mode,
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
        let report = reconcile_until_done(&endpoints).await;
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
                // complete table (see bgp::routes).
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
        let (block_tx, block_rx) = tokio::sync::watch::channel(None);
        let block_gc_rx = block_rx.clone();
        tasks.push(tokio::spawn(follow_blocks(
            cfg.store.clone(),
            cfg.node_name.clone(),
            routes.clone(),
            block_tx,
        )));
        let (pools_tx, pools_rx) = tokio::sync::watch::channel(None);
        tasks.push(tokio::spawn(nat::run(pools_rx, cfg.route_resync)));
        tasks.push(tokio::spawn(follow_pools(cfg.store.clone(), pools_tx)));
        tasks.push(tokio::spawn(lb_alloc_loop(cfg.store.clone(), LB_RESYNC)));
        let (service_feed, feed_tasks) = ServiceFeed::start(&cfg.store);
        tasks.extend(feed_tasks);
        tasks.push(tokio::spawn(service_proxy(
            cfg.service_proxy,
            cfg.node_name.clone(),
            service_feed.clone(),
            cfg.route_resync,
        )));
        let bgp_report = crate::bgp::SharedReport::default();
        tasks.push(tokio::spawn(crate::bgp::run(
            crate::bgp::BgpConfig {
                node: cfg.node_name.clone(),
                store: cfg.store.clone(),
                address: cfg.node_address.clone(),
                state_dir: cfg.state_dir.clone(),
                settle_timeout: cfg.bgp_settle,
                services: service_feed,
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
            ReportConfig {
                node: cfg.node_name.clone(),
                store: cfg.store.clone(),
                interval: cfg.status_interval,
                heartbeat: cfg.status_heartbeat,
            },
            endpoints.clone(),
            routes.clone(),
            host,
            bgp_report,
            block_rx,
        )));
        tasks.push(tokio::spawn(block_gc_loop(
            cfg.clone(),
            endpoints.clone(),
            block_gc_rx,
        )));
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

/// Reconciles the node's endpoints with the datastore and the kernel,
/// retrying with backoff (1 s doubling to 30 s) while that fails — the API
/// server may be down while twill-node starts. Meanwhile the pods already
/// running keep their links, routes and policy (nothing is torn down), the
/// CNI socket stays shut, and `/readyz` names the reason; one log line when
/// it starts failing and one when it recovers.
async fn reconcile_until_done(endpoints: &Endpoints) -> ReconcileReport {
    let mut requeue = Requeue::new("endpoints (running pods are untouched)", Backoff::watch());
    loop {
        match endpoints.reconcile().await {
            Ok(report) => {
                requeue.succeeded();
                return report;
            }
            Err(e) => {
                health::global().set_not_ready(
                    health::DATAPLANE,
                    &format!("endpoints not reconciled yet (CNI socket closed): {e}"),
                );
                tokio::time::sleep(requeue.failed(&e)).await;
            }
        }
    }
}

/// The LoadBalancer allocator's safety-net resync (a failed pass): Service
/// and IPPool changes are handled as their watches show them, so at idle
/// the allocator lists nothing before this.
const LB_RESYNC: Duration = Duration::from_secs(300);

/// Runs the LoadBalancer allocator for as long as the agent runs: when it
/// returns (its Service watch failed or ended) or panics, that is logged
/// (once per outage) and it starts again after a backoff (1 s doubling to
/// 30 s); nothing in it can stop the agent.
async fn lb_alloc_loop(store: Store, resync: Duration) {
    use futures::FutureExt;
    let mut requeue = Requeue::new("LoadBalancer allocator", Backoff::watch());
    loop {
        let run = std::panic::AssertUnwindSafe(twill_ipam::lb_alloc::run(store.clone(), resync));
        let error = match run.catch_unwind().await {
            Ok(Ok(())) => "its Service watch ended".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "it panicked".to_string(),
        };
        tokio::time::sleep(requeue.failed(&error)).await;
    }
}

/// The service proxy as `--service-proxy` says: the `inet twill-svc`
/// table kept in line with the Services, or (off) a leftover of a previous
/// run deleted once.
async fn service_proxy(mode: services::Mode, node: String, feed: ServiceFeed, resync: Duration) {
    match mode {
        services::Mode::Nftables => {
            tracing::info!(
                "service proxy on: Service traffic is handled in the {} tables",
                crate::calc::services::TABLES
            );
            // The semantics that hang on each applied table: stale UDP
            // conntrack entries flushed, health check node ports served.
            let (models, followed) = tokio::sync::watch::channel(Arc::new(Vec::new()));
            tokio::spawn(crate::health::service_health::follow(
                node.clone(),
                followed,
            ));
            let hooks = services::Hooks {
                on_stale_udp: Some(Arc::new(|stale| {
                    let filters = crate::dataplane::conntrack::filters(&stale);
                    tokio::spawn(async move {
                        match crate::dataplane::conntrack::flush_async(filters).await {
                            Ok(r) if r.deleted > 0 => tracing::info!(
                                deleted = r.deleted,
                                "flushed conntrack entries of UDP endpoints that left"
                            ),
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e,
                                "stale UDP conntrack entries of gone endpoints could not be flushed"),
                        }
                    });
                })),
                model: Some(models),
            };
            services::run(node, feed, resync, hooks).await;
        }
        services::Mode::Off => match services::remove_leftover().await {
            Ok(true) => tracing::info!(
                "service proxy off: deleted the {} tables a previous run left",
                crate::calc::services::TABLES
            ),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "service proxy off, and the table a previous run may have left cannot be checked")
            }
        },
    }
}

/// Returns this node's empty blocks to the pool after `block_grace`,
/// reading them from the block watch (no list per round).
async fn block_gc_loop(
    cfg: AgentConfig,
    endpoints: Arc<Endpoints>,
    blocks: tokio::sync::watch::Receiver<Option<BlockSummary>>,
) {
    let every = (cfg.block_grace / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::time::sleep(every).await;
        let Some(mine) = blocks.borrow().as_ref().map(|b| b.affine.clone()) else {
            continue;
        };
        if let Err(e) = endpoints.ipam().release_empty(&mine, cfg.block_grace).await {
            tracing::warn!(error = %e, "cannot release empty blocks");
        }
    }
}
