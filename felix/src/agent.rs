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
use twill_api::resources::{
    IPAMBlock, IPPool, InvalidObject, NodeStatusReport, ReportCondition, RouteStatus,
};
use twill_api::store::WatchEvent;
use twill_api::store::retry::{Backoff, Change, Outage};

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
        let (block_tx, block_rx) = tokio::sync::watch::channel(None);
        let block_gc_rx = block_rx.clone();
        tasks.push(tokio::spawn(follow_blocks(
            cfg.clone(),
            routes.clone(),
            block_tx,
        )));
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
async fn reconcile_until_done(endpoints: &Endpoints) -> crate::endpoint::ReconcileReport {
    let mut backoff = Backoff::watch();
    let mut outage = Outage::default();
    loop {
        match endpoints.reconcile().await {
            Ok(report) => {
                if let Change::Recovered { attempts } = outage.succeeded() {
                    tracing::info!(
                        attempts,
                        "endpoints reconciled after the datastore came back"
                    );
                }
                return report;
            }
            Err(e) => {
                let error = e.to_string();
                if outage.failed(&error) == Change::Failing {
                    tracing::warn!(error = %error, "cannot reconcile endpoints yet; retrying with backoff (running pods are untouched)");
                }
                health::global().set_not_ready(
                    health::DATAPLANE,
                    &format!("endpoints not reconciled yet (CNI socket closed): {error}"),
                );
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
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

/// What the status report says about this node's blocks, kept by the
/// block watch (the report reads it instead of listing every block).
#[derive(Clone, Debug, Default, PartialEq)]
struct BlockSummary {
    /// Blocks affine to this node and the allocations in them.
    mine: usize,
    used: usize,
    /// Blocks this node owns (CIDRs).
    owned: Vec<String>,
    /// The blocks affine to this node, whole (for the empty-block release).
    affine: Vec<IPAMBlock>,
}

fn block_summary(blocks: &[IPAMBlock], node: &str) -> BlockSummary {
    let mine = blocks
        .iter()
        .filter(|b| b.spec.affinity.as_deref() == Some(node));
    BlockSummary {
        mine: mine.clone().count(),
        used: mine.clone().map(|b| b.spec.allocations.len()).sum(),
        affine: mine.cloned().collect(),
        owned: twill_ipam::owned_blocks(blocks, node)
            .into_iter()
            .map(|b| b.to_string())
            .collect(),
    }
}

/// The periodic NodeStatus report. It makes one datastore request per
/// interval at idle (the status write; a GET only when the cached object is
/// stale): blocks come from the block watch, readiness from the watches.
async fn report_loop(
    cfg: AgentConfig,
    endpoints: Arc<Endpoints>,
    routes: Arc<RouteProgrammer>,
    host: rtnetlink::Handle,
    bgp: crate::bgp::run::SharedReport,
    blocks: tokio::sync::watch::Receiver<Option<BlockSummary>>,
) {
    let mut cached: Option<twill_api::resources::NodeStatus> = None;
    let mut outage = Outage::default();
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
        let owned = match blocks.borrow().clone() {
            Some(b) => {
                metrics::global().set_ipam(b.mine, b.used);
                b.owned
            }
            None => Vec::new(),
        };
        let bgp = bgp.lock().map(|b| b.clone()).unwrap_or_default();
        // One snapshot: ready, not_ready and conditions agree.
        let readiness = health::global().snapshot();
        let ready = readiness.values().all(|c| c.ready);
        let not_ready = readiness
            .iter()
            .filter(|(_, c)| !c.ready)
            .map(|(n, c)| (n.clone(), c.reason.clone()))
            .collect();
        let conditions = readiness
            .into_iter()
            .map(|(name, c)| ReportCondition {
                name,
                ready: c.ready,
                reason: c.reason,
            })
            .collect();
        let invalid_objects = health::watches()
            .invalid()
            .into_iter()
            .map(|i| InvalidObject {
                kind: i.kind.to_string(),
                name: i.key,
                reason: i.reason,
            })
            .collect();
        let report = NodeStatusReport {
            updated: jiff::Timestamp::now().to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            ready,
            not_ready,
            address: bgp.address,
            as_number: bgp.asn,
            bgp_peers: bgp.peers,
            endpoints: eps.len() as u32,
            endpoint_handles: eps.values().map(|e| e.container_id.clone()).collect(),
            blocks: owned,
            service_prefixes: Vec::new(),
            routes: listed_routes,
            route_counts,
            conditions,
            invalid_objects,
        };
        let secs = cfg.status_interval.as_secs().max(1) as u32;
        match status::write_report(&cfg.store, &cfg.node_name, secs, report, &mut cached).await {
            Ok(()) => {
                if let Change::Recovered { attempts } = outage.succeeded() {
                    tracing::info!(attempts, "the node status is written again");
                }
            }
            Err(e) => {
                if outage.failed(&e.to_string()) == Change::Failing {
                    tracing::warn!(error = %e, "cannot write the node status (logged again when it works)");
                }
            }
        }
        tokio::time::sleep(cfg.status_interval).await;
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

/// Why an object is invalid, as one line: its field errors.
fn invalid_reason<K: Object>(obj: &K) -> Option<String> {
    obj.validate().err().map(|e| {
        e.errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// `namespace/name` for namespaced kinds, else `name`.
fn object_key<K: Object>(obj: &K) -> String {
    let m = obj.meta();
    let name = m.name.as_deref().unwrap_or_default();
    match m.namespace.as_deref().filter(|_| K::KIND.namespaced()) {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// Watches a kind for as long as `on_event` returns true, through every
/// failure: a failed watch is started again after [`Backoff::watch`]
/// (1 s doubling to 30 s, with jitter), and the consumer keeps what it has
/// meanwhile. One log line when the watch starts failing (or fails for
/// another reason) and one when it recovers, never one per retry. The
/// state shows in readiness ([`health::DATASTORE`], naming the kind and the
/// error), and every object delivered is validated: an invalid one is
/// reported ([`health::Watches`]), never silently used or dropped.
pub(crate) async fn watch_kind<K: Object>(
    store: Store,
    mut on_event: impl FnMut(WatchEvent<K>) -> bool + Send,
) {
    use futures::StreamExt;
    let reg = health::watches().register(K::KIND);
    let mut backoff = Backoff::watch();
    let mut outage = Outage::default();
    loop {
        let mut watch = store.watch::<K>(None);
        let error = loop {
            match watch.next().await {
                None => break "the watch ended".to_string(),
                Some(Err(e)) => break e.to_string(),
                Some(Ok(ev)) => {
                    match &ev {
                        WatchEvent::Resync { items, .. } => {
                            backoff.reset();
                            if let Change::Recovered { attempts } = outage.succeeded() {
                                tracing::info!(kind = %K::KIND, attempts, "datastore watch recovered");
                            }
                            // Only invalid objects cost more than a check.
                            let mut invalid = std::collections::BTreeSet::new();
                            for o in items {
                                if let Some(reason) = invalid_reason(o) {
                                    let key = object_key(o);
                                    reg.object(K::KIND, &key, Some(reason));
                                    invalid.insert(key);
                                }
                            }
                            reg.retain(K::KIND, &invalid);
                            reg.synced();
                        }
                        WatchEvent::Applied(o) => {
                            reg.object(K::KIND, &object_key(o), invalid_reason(o));
                        }
                        WatchEvent::Deleted(o) => reg.object(K::KIND, &object_key(o), None),
                    }
                    if !on_event(ev) {
                        return;
                    }
                }
            }
        };
        reg.failing(&error);
        let delay = backoff.next_delay();
        if outage.failed(&error) == Change::Failing {
            tracing::warn!(kind = %K::KIND, %error, "datastore watch failing; retrying with backoff up to 30 s (logged again when it recovers)");
        } else {
            tracing::debug!(kind = %K::KIND, %error, attempts = outage.attempts(), ?delay, "datastore watch still failing");
        }
        tokio::time::sleep(delay).await;
    }
}

/// Follows every object of a kind in the store, calling `changed` with the
/// complete set after each burst of events ([`watch_kind`] retries).
pub(crate) async fn follow<K: Object>(store: Store, mut changed: impl FnMut(Vec<K>) + Send) {
    let mut cache: BTreeMap<String, K> = BTreeMap::new();
    let key = |k: &K| object_key(k);
    watch_kind::<K>(store, move |ev| {
        match ev {
            WatchEvent::Resync { items, .. } => {
                cache = items.into_iter().map(|k| (key(&k), k)).collect();
            }
            WatchEvent::Applied(k) => {
                cache.insert(key(&k), k);
            }
            WatchEvent::Deleted(k) => {
                cache.remove(&key(&k));
            }
        }
        changed(cache.values().cloned().collect());
        true
    })
    .await;
}

/// A blackhole route for every block this node owns; the status report's
/// view of the blocks.
async fn follow_blocks(
    cfg: AgentConfig,
    routes: Arc<RouteProgrammer>,
    summary: tokio::sync::watch::Sender<Option<BlockSummary>>,
) {
    let node = cfg.node_name.clone();
    follow::<IPAMBlock>(cfg.store, move |blocks| {
        routes.set_blocks(twill_ipam::owned_blocks(&blocks, &node));
        summary.send_replace(Some(block_summary(&blocks, &node)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream::{self, BoxStream, StreamExt};
    use serde_json::Value;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use twill_api::resources::GlobalNetworkPolicy;
    use twill_api::store::{Backend, Listing, ObjectKey};
    use twill_api::{Kind, StoreError};

    /// The tests here read the process's readiness: one at a time.
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// An API server whose GlobalNetworkPolicy resource is missing (every
    /// watch fails with 404, as with the CRD not installed) until `fail`
    /// is cleared; then it lists `items`.
    struct MissingCrd {
        fail: Arc<AtomicBool>,
        attempts: Arc<AtomicUsize>,
        items: Vec<Value>,
    }

    fn unused() -> StoreError {
        StoreError::Backend {
            backend: "test",
            message: "not used".into(),
        }
    }

    #[async_trait::async_trait]
    impl Backend for MissingCrd {
        fn name(&self) -> &'static str {
            "test"
        }
        async fn get(&self, _: Kind, _: &ObjectKey) -> Result<Option<Value>, StoreError> {
            Err(unused())
        }
        async fn list(&self, _: Kind, _: Option<&str>) -> Result<Listing<Value>, StoreError> {
            Err(unused())
        }
        async fn create(&self, _: Kind, _: Value) -> Result<Value, StoreError> {
            Err(unused())
        }
        async fn update(&self, _: Kind, _: Value) -> Result<Value, StoreError> {
            Err(unused())
        }
        async fn update_status(&self, _: Kind, _: Value) -> Result<Value, StoreError> {
            Err(unused())
        }
        async fn delete(&self, _: Kind, _: &ObjectKey, _: Option<&str>) -> Result<(), StoreError> {
            Err(unused())
        }
        fn watch(
            &self,
            kind: Kind,
            _: Option<String>,
        ) -> BoxStream<'static, Result<twill_api::WatchEvent<Value>, StoreError>> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return stream::iter([Err(StoreError::Backend {
                    backend: "kubernetes",
                    message: format!(
                        "watch {}: failed to perform initial object list: ApiError: the server could not find the requested resource: NotFound (404)",
                        kind.plural()
                    ),
                })])
                .boxed();
            }
            stream::iter([Ok(twill_api::WatchEvent::Resync {
                items: self.items.clone(),
                revision: "1".into(),
            })])
            .chain(stream::pending())
            .boxed()
        }
    }

    /// Log lines at INFO and above, captured.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Lines {
        fn count(&self, level: &str, text: &str) -> usize {
            String::from_utf8_lossy(&self.0.lock().unwrap())
                .lines()
                .filter(|l| l.contains(level) && l.contains(text))
                .count()
        }
    }

    /// A missing CRD during a long outage: the watch retries with
    /// exponential backoff (1 s → 30 s), logs one line when it starts
    /// failing and one when it recovers, and readiness names the kind and
    /// the error until then. Three consumers of the kind, as in twill-node.
    #[tokio::test(start_paused = true)]
    async fn a_failing_watch_backs_off_logs_state_changes_and_reports_not_ready() {
        let _serial = SERIAL.lock().await;
        let lines = Lines::default();
        let w = lines.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let _guard = tracing::subscriber::set_default(sub);
        let fail = Arc::new(AtomicBool::new(true));
        let attempts = Arc::new(AtomicUsize::new(0));
        let bad_gnp = serde_json::json!({"apiVersion": "twill.dev/v1", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": "bad-selector"}, "spec": {"selector": "has(("}});
        let store = Store::new(MissingCrd {
            fail: fail.clone(),
            attempts: attempts.clone(),
            items: vec![bad_gnp],
        });
        let events = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let ev = events.clone();
                tokio::spawn(watch_kind::<GlobalNetworkPolicy>(
                    store.clone(),
                    move |_| {
                        ev.fetch_add(1, Ordering::SeqCst);
                        true
                    },
                ))
            })
            .collect();
        let outage = Duration::from_secs(120);
        tokio::time::sleep(outage).await;
        let tried = attempts.load(Ordering::SeqCst);
        // 1+2+4+8+16+30+30+30 s (±20 %): about 8 attempts per watch in
        // 120 s, where a fixed 1 s retry made 120.
        assert!((3 * 6..=3 * 10).contains(&tried), "{tried} watch attempts");
        let failing = lines.count("WARN", "datastore watch failing");
        assert_eq!(failing, 3, "one line per watch, not one per retry");
        assert_eq!(lines.count("WARN", ""), 3);
        let reason = health::watches().not_ready_reason().unwrap_or_default();
        assert!(
            reason.contains("globalnetworkpolicies") && reason.contains("404"),
            "{reason}"
        );
        let readyz = health::readyz(&health::global().snapshot());
        assert_eq!(readyz.status, 503);
        assert!(
            readyz
                .body
                .contains("[-]datastore: the watch of globalnetworkpolicies"),
            "{}",
            readyz.body
        );
        assert_eq!(events.load(Ordering::SeqCst), 0);
        println!(
            "outage of {outage:?}: {tried} watch requests, {} WARN/ERROR lines ({:.3}/s) for 3 watches",
            failing,
            failing as f64 / outage.as_secs_f64()
        );

        // The CRD is installed: every watch recovers within one backoff step.
        fail.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(37)).await;
        assert_eq!(
            events.load(Ordering::SeqCst),
            3,
            "each consumer got its listing"
        );
        assert_eq!(lines.count("INFO", "datastore watch recovered"), 3);
        assert_eq!(
            lines.count("WARN", "datastore watch failing"),
            3,
            "no new failure lines"
        );
        assert_eq!(health::watches().not_ready_reason(), None);
        // The listing held an invalid policy: reported once for the three
        // watches (one entry), named, and readiness says it is not
        // enforced. (Its log line comes from health.rs, whose callsites
        // other tests of this binary hit concurrently without a subscriber,
        // so it is not counted here.)
        let invalid = health::watches().invalid();
        assert_eq!(invalid.len(), 1, "{invalid:?}");
        assert_eq!(invalid[0].key, "bad-selector");
        assert!(invalid[0].reason.contains("spec.selector"), "{invalid:?}");
        let readyz = health::readyz(&health::global().snapshot());
        assert!(
            readyz
                .body
                .contains("[-]policy-objects: GlobalNetworkPolicy bad-selector is invalid"),
            "{}",
            readyz.body
        );
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        assert!(
            health::watches().invalid().is_empty(),
            "gone with its watches"
        );
        assert_eq!(health::watches().not_ready_reason(), None);
    }

    /// An object that does not even decode (a field of the wrong type,
    /// written past validation) stops that kind's listing: the watch is
    /// failing, and readiness names the kind, the object and the field —
    /// the consumer is never handed a listing with the object silently
    /// missing.
    #[tokio::test(start_paused = true)]
    async fn an_undecodable_object_is_named_not_skipped() {
        let _serial = SERIAL.lock().await;
        let bad = serde_json::json!({"apiVersion": "twill.dev/v1", "kind": "IPPool",
            "metadata": {"name": "typo-pool"}, "spec": {"cidr": "10.9.0.0/16", "blockSize": "big"}});
        let store = Store::new(MissingCrd {
            fail: Arc::new(AtomicBool::new(false)),
            attempts: Arc::new(AtomicUsize::new(0)),
            items: vec![bad],
        });
        let events = Arc::new(AtomicUsize::new(0));
        let ev = events.clone();
        let task = tokio::spawn(watch_kind::<IPPool>(store, move |_| {
            ev.fetch_add(1, Ordering::SeqCst);
            true
        }));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(events.load(Ordering::SeqCst), 0, "no partial listing");
        let reason = health::watches().not_ready_reason().unwrap_or_default();
        assert!(
            reason.contains("the watch of ippools has been failing")
                && reason.contains("typo-pool")
                && reason.contains("spec.blockSize"),
            "{reason}"
        );
        task.abort();
        let _ = task.await;
    }
}
