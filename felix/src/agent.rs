//! twill-node: one agent per node. Start-up order matters and is fixed:
//! datastore → node registration → kernel prerequisites (forwarding) →
//! endpoint reconcile → CNI socket. The socket opens only after reconcile,
//! so no ADD ever races with the repair of a previous run's leftovers.

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
use twill_api::resources::{IPAMBlock, NodeStatusReport};

use crate::endpoint::{EndpointGate, Endpoints, StateDir};
use crate::nft::engine::PolicyEngine;
use crate::{cni_server, status, sysctl};

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
            host,
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
        tasks.push(tokio::spawn(report_loop(cfg.clone(), endpoints.clone())));
        tasks.push(tokio::spawn(block_gc_loop(cfg.clone(), endpoints.clone())));
        Ok(Agent { endpoints, tasks })
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

/// Runs twill-node until SIGTERM or SIGINT. Network policy is enforced:
/// the policy engine follows the datastore and the endpoints, and a CNI ADD
/// returns only once its endpoint's policy is in the kernel.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let engine = PolicyEngine::new(&cfg.node_name, cfg.store.clone());
    let agent = Agent::start(cfg, engine.gate()).await?;
    let policy_tasks = engine.run(agent.endpoints.subscribe(), policy_resync());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Kernel state stays as it is: a restart must not disturb running pods.
    for t in policy_tasks {
        t.abort();
    }
    tracing::info!("stopping; endpoints, routes and policy rules stay in place");
    Ok(())
}

async fn report_loop(cfg: AgentConfig, endpoints: Arc<Endpoints>) {
    loop {
        let eps = endpoints.current();
        let blocks = match cfg.store.list::<IPAMBlock>().await {
            Ok(l) => twill_ipam::owned_blocks(&l.items, &cfg.node_name)
                .into_iter()
                .map(|b| b.to_string())
                .collect(),
            Err(_) => Vec::new(),
        };
        let report = NodeStatusReport {
            updated: jiff::Timestamp::now().to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            ready: true,
            endpoints: eps.len() as u32,
            endpoint_handles: eps.values().map(|e| e.container_id.clone()).collect(),
            blocks,
            ..Default::default()
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
