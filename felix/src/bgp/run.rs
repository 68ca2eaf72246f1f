//! twill-node's BGP controller: runs the embedded speaker (`twill-bgpd`'s
//! library) and keeps it in line with the datastore.
//!
//! * The node address is resolved once from `--node-address` or the
//!   BGPConfiguration's `nodeAddress` (retried until it resolves; never
//!   guessed) and published on the Node object for the other nodes' mesh.
//! * Sessions follow BGPConfiguration, BGPPeer and Node objects
//!   ([`super::peers`]); a changed session is replaced, others stay up.
//! * Originated routes follow the IPAM blocks: every block this node owns,
//!   and every address it borrowed from another node's block as a /32.
//! * Best routes from peers go to the route programmer. The programmer only
//!   deletes stale Twill routes after BGP has delivered a complete table
//!   (all sessions up and quiet, or a timeout), so a restart — SIGKILL
//!   included — never withdraws a route from the kernel that peers still
//!   announce. On SIGTERM the speaker is not shut down: peers see the TCP
//!   session drop and keep our routes as stale (graceful restart).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::from_api::{Advertisements, peer_policies};
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Node, Secret};
use twill_api::resources::{BGPConfiguration, BGPPeer, IPAMBlock, IPPool, PeerStatus};
use twill_api::{Kind, Store};
use twill_bgpd::rib::PeerKind;
use twill_bgpd::speaker::{
    GracefulRestartConfig, PasswordSource, PeerConfig, Speaker, SpeakerConfig,
};
use twill_bgpd::types::{Origin, PathAttrs};

use super::address::{self, AddressSpec};
use super::peers::{self, ANN_ADDRESS, DesiredPeer};
use crate::health;
use crate::routes::RouteProgrammer;

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
}

/// What the status report shows about BGP.
#[derive(Clone, Debug, Default)]
pub struct BgpReport {
    pub address: String,
    pub asn: u32,
    pub peers: Vec<PeerStatus>,
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
    let next_hop6 = match address::host_addresses(&host).await {
        Ok((addrs, _)) => address::pick_v6(&addrs, &addr).unwrap_or_else(|e| {
            tracing::error!("{e}; IPv6 blocks are not announced");
            None
        }),
        Err(e) => {
            tracing::error!(error = %e, "cannot list the node's IPv6 addresses; IPv6 blocks are not announced");
            None
        }
    };
    if let Some(a) = next_hop6 {
        tracing::info!(address = %a, "IPv6 next hop");
    }
    if let Err(e) = publish_address(&cfg.store, &cfg.node, &addr).await {
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
    let sources: Arc<Mutex<BTreeMap<IpAddr, DesiredPeer>>> = Default::default();
    tokio::spawn(forward_routes(
        speaker.clone(),
        routes.clone(),
        sources.clone(),
        cfg.settle_timeout,
    ));
    tokio::spawn(status_loop(
        speaker.clone(),
        report.clone(),
        sources.clone(),
    ));
    tokio::spawn(follow_origination(
        cfg.clone(),
        speaker.clone(),
        addr.ip(),
        next_hop6,
    ));
    follow_peers(cfg, speaker, addr.ip(), sources).await;
}

/// Writes the node address into the Node's annotations (creating the Node
/// in the embedded store if no kubelet did). The Node is edited as JSON and
/// written back whole (compare-and-swap): a kubelet newer than this build's
/// Kubernetes types may have set fields they do not know, and a typed
/// round trip would drop them from the Node.
async fn publish_address(
    store: &Store,
    node: &str,
    addr: &IpNetwork,
) -> Result<(), twill_api::StoreError> {
    let key = twill_api::ObjectKey::new(None, node);
    for _ in 0..10 {
        let Some(mut n) = store.backend().get(Kind::Node, &key).await? else {
            let mut n = Node::default();
            n.metadata.name = Some(node.to_string());
            match store.create(&n).await {
                Ok(_) => continue,
                Err(e) if e.is_already_exists() => continue,
                Err(e) => return Err(e),
            }
        };
        let changed = set_annotation(&mut n, ANN_ADDRESS, &addr.to_string()).map_err(|reason| {
            twill_api::StoreError::Malformed {
                kind: Kind::Node,
                reason,
            }
        })?;
        if !changed {
            return Ok(());
        }
        Kind::Node.validate_value(&n)?;
        match store.backend().update(Kind::Node, n).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sets `metadata.annotations[key]` of a JSON object, leaving every other
/// field as it is. Returns whether anything changed.
fn set_annotation(obj: &mut serde_json::Value, key: &str, value: &str) -> Result<bool, String> {
    let meta = obj
        .get_mut("metadata")
        .and_then(serde_json::Value::as_object_mut)
        .ok_or("the object has no metadata")?;
    let ann = meta
        .entry("annotations")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    if ann.is_null() {
        *ann = serde_json::Value::Object(Default::default());
    }
    let ann = ann
        .as_object_mut()
        .ok_or("metadata.annotations is not a map")?;
    if ann.get(key).and_then(serde_json::Value::as_str) == Some(value) {
        return Ok(false);
    }
    ann.insert(key.to_string(), value.into());
    Ok(true)
}

/// Best-route changes → kernel routes. Until the table is complete, changes
/// are only added; then the full set is declared, which lets the programmer
/// remove what no peer announces any more.
async fn forward_routes(
    speaker: Arc<Speaker>,
    routes: Arc<RouteProgrammer>,
    sources: Arc<Mutex<BTreeMap<IpAddr, DesiredPeer>>>,
    settle_timeout: Duration,
) {
    let mut rx = speaker.subscribe();
    let start = Instant::now();
    let mut complete = false;
    let mut last_change = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            batch = rx.recv() => {
                let Some(batch) = batch else { return };
                last_change = Instant::now();
                for ch in batch {
                    match ch.best {
                        Some(b) if !b.local => routes.set_bgp_route(ch.prefix, b.next_hops.clone()),
                        _ => routes.remove_bgp_route(ch.prefix),
                    }
                }
            }
            _ = tick.tick(), if !complete => {
                let want = sources.lock().map(|s| s.len()).unwrap_or(0);
                let status = speaker.status();
                let up = status.iter().filter(|p| p.state.name() == "Established").count();
                let settled = up >= want && last_change.elapsed() > Duration::from_secs(2)
                    && status.iter().all(|p| p.uptime_secs >= 2 || p.state.name() != "Established");
                if (settled && start.elapsed() > Duration::from_secs(2)) || start.elapsed() > settle_timeout {
                    complete = true;
                    let all: Vec<(IpNetwork, Vec<IpAddr>)> = speaker
                        .best_routes()
                        .await
                        .into_iter()
                        .filter(|(_, b)| !b.local)
                        .map(|(p, b)| (p, b.next_hops.clone()))
                        .collect();
                    tracing::info!(routes = all.len(), sessions_up = up, "BGP table complete; stale routes may now go");
                    routes.set_bgp_routes(all);
                }
            }
        }
    }
}

async fn status_loop(
    speaker: Arc<Speaker>,
    report: SharedReport,
    sources: Arc<Mutex<BTreeMap<IpAddr, DesiredPeer>>>,
) {
    // Each peer's last error and when this loop first saw it: reported as
    // the last down reason, and as the current error only while the
    // session is not Established.
    let mut downs: BTreeMap<IpAddr, (String, String)> = BTreeMap::new();
    loop {
        let now = jiff::Timestamp::now();
        let src = sources.lock().map(|s| s.clone()).unwrap_or_default();
        let status = speaker.status();
        for p in &status {
            if let Some(e) = &p.last_error
                && downs.get(&p.address).is_none_or(|(seen, _)| seen != e)
            {
                downs.insert(p.address, (e.clone(), now.to_string()));
            }
        }
        let peers: Vec<PeerStatus> = status
            .into_iter()
            .map(|p| PeerStatus {
                address: p.address.to_string(),
                as_number: p.asn,
                source: src
                    .get(&p.address)
                    .map(|d| d.source.as_str().to_string())
                    .unwrap_or_default(),
                state: p.state.name().to_string(),
                since: now
                    .checked_sub(jiff::SignedDuration::from_secs(p.uptime_secs as i64))
                    .map(|t| {
                        // An Established session always has a start time,
                        // also in its first second (the report may not be
                        // rewritten until something else changes).
                        if p.uptime_secs > 0 || p.state.name() == "Established" {
                            t.to_string()
                        } else {
                            String::new()
                        }
                    })
                    .unwrap_or_default(),
                prefixes_received: p.received as u64,
                prefixes_accepted: p.accepted as u64,
                prefixes_advertised: p.advertised as u64,
                last_error: if p.state.name() == "Established" {
                    None
                } else {
                    p.last_error
                },
                last_down_reason: downs.get(&p.address).map(|d| d.0.clone()),
                last_down_at: downs.get(&p.address).map(|d| d.1.clone()),
            })
            .collect();
        let up = peers.iter().any(|p| p.state == "Established");
        if peers.is_empty() {
            health::global().remove(health::BGP);
        } else if up {
            health::global().set_ready(health::BGP);
        } else {
            health::global().set_not_ready(health::BGP, "no BGP session is established");
        }
        if let Ok(mut r) = report.lock() {
            r.peers = peers;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The latest complete set of a kind, kept by a watch
/// ([`crate::agent::follow`]); `None` until the first listing.
struct Cache<K>(Arc<Mutex<Option<Vec<K>>>>);

impl<K: twill_api::Object> Cache<K> {
    /// Starts following `K`, poking `wake` after every change.
    fn follow(store: &Store, wake: tokio::sync::watch::Sender<()>) -> Cache<K> {
        let cell = Arc::new(Mutex::new(None));
        let c = cell.clone();
        tokio::spawn(crate::agent::follow::<K>(store.clone(), move |items| {
            if let Ok(mut g) = c.lock() {
                *g = Some(items);
            }
            wake.send_replace(());
        }));
        Cache(cell)
    }

    fn get(&self) -> Option<Vec<K>> {
        self.0.lock().ok().and_then(|g| g.clone())
    }
}

/// Originates owned blocks and borrowed /32s (/128s), following the IPAM
/// blocks. IPv6 prefixes need `next_hop6`: without one they are not
/// announced (an IPv4 next hop is no way to reach them).
async fn follow_origination(
    cfg: BgpConfig,
    speaker: Arc<Speaker>,
    next_hop: IpAddr,
    next_hop6: Option<std::net::Ipv6Addr>,
) {
    let store = cfg.store.clone();
    let mut originated: BTreeSet<IpNetwork> = BTreeSet::new();
    // The follower turns every block change into the set of prefixes this
    // node should announce, and wakes the loop only when that set changes:
    // a pod ADD or DEL that only touches allocations costs nothing here.
    let (tx, mut rx) = tokio::sync::watch::channel(None::<BTreeSet<IpNetwork>>);
    let node = cfg.node.clone();
    tokio::spawn(crate::agent::follow::<IPAMBlock>(
        store.clone(),
        move |blocks| {
            let mut want: BTreeSet<IpNetwork> = twill_ipam::owned_blocks(&blocks, &node)
                .into_iter()
                .collect();
            want.extend(
                twill_ipam::borrowed_addresses(&blocks, &node)
                    .into_iter()
                    .filter_map(|a| IpNetwork::new(a, if a.is_ipv4() { 32 } else { 128 }).ok()),
            );
            tx.send_if_modified(|cur| {
                if cur.as_ref() == Some(&want) {
                    false
                } else {
                    *cur = Some(want);
                    true
                }
            });
        },
    ));
    // Pools (disableBGPExport) and communities come from their watches'
    // caches; a change to either wakes the loop like a block change.
    let (poke, mut poked) = tokio::sync::watch::channel(());
    let pools = Cache::<IPPool>::follow(&store, poke.clone());
    let configs = Cache::<BGPConfiguration>::follow(&store, poke);
    loop {
        let wanted = rx.borrow_and_update().clone();
        poked.borrow_and_update();
        if let (Some(mut want), Some(pools), Some(configs)) = (wanted, pools.get(), configs.get()) {
            // The node's own `node.<name>` list wins over `default`'s.
            let named = |n: &str| {
                configs
                    .iter()
                    .find(|c| c.metadata.name.as_deref() == Some(n))
            };
            let own = format!("node.{}", cfg.node);
            let adv = named(&own)
                .filter(|c| !c.spec.prefix_advertisements.is_empty())
                .or_else(|| named("default"))
                .map(|c| Advertisements::from_api(&c.spec))
                .transpose()
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "BGPConfiguration prefixAdvertisements ignored");
                    None
                })
                .unwrap_or_default();
            let no_export: Vec<IpNetwork> = pools
                .iter()
                .filter(|p| p.spec.disable_bgp_export)
                .filter_map(|p| p.spec.cidr.parse().ok())
                .collect();
            want.retain(|p| !no_export.iter().any(|n| n.contains(p.ip())));
            if next_hop6.is_none() {
                want.retain(|p| p.is_ipv4());
            }
            for p in originated.difference(&want) {
                tracing::info!(prefix = %p, "withdrawing");
                speaker.withdraw(*p);
            }
            for p in want.difference(&originated) {
                tracing::info!(prefix = %p, "announcing");
                let mut attrs: PathAttrs = adv.attrs_for(p);
                attrs.origin = Origin::Igp;
                attrs.next_hop = Some(match (p, next_hop6) {
                    (IpNetwork::V6(_), Some(a)) => IpAddr::V6(a),
                    _ => next_hop,
                });
                speaker.originate(*p, attrs);
            }
            originated = want;
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            r = poked.changed() => if r.is_err() { return },
        }
    }
}

/// Sessions follow the datastore: recomputed whenever BGPConfiguration,
/// BGPPeer, Node or Secret objects change, and every 30 s.
async fn follow_peers(
    cfg: BgpConfig,
    speaker: Arc<Speaker>,
    my_addr: IpAddr,
    sources: Arc<Mutex<BTreeMap<IpAddr, DesiredPeer>>>,
) {
    let (tx, mut rx) = tokio::sync::watch::channel(());
    let nodes = Cache::<Node>::follow(&cfg.store, tx.clone());
    let configs = Cache::<BGPConfiguration>::follow(&cfg.store, tx.clone());
    let bgp_peers = Cache::<BGPPeer>::follow(&cfg.store, tx);
    let mut running: BTreeMap<IpAddr, String> = BTreeMap::new();
    loop {
        // The watches' caches, not a list per round: API load stays flat
        // as the cluster grows.
        let lists = (nodes.get(), configs.get(), bgp_peers.get());
        if let (Some(nodes), Some(configs), Some(bgp_peers)) = lists {
            let (mut desired, problems) =
                peers::desired_peers(&cfg.node, &nodes, &configs, &bgp_peers);
            for p in problems {
                tracing::warn!("{p}");
            }
            desired.retain(|p| p.address != my_addr);
            let mut want: BTreeMap<IpAddr, (PeerConfig, String)> = BTreeMap::new();
            for d in &desired {
                match peer_config(&cfg.store, d, my_addr).await {
                    Ok(pc) => {
                        let fp = format!("{d:?}");
                        want.insert(d.address, (pc, fp));
                    }
                    Err(e) => tracing::warn!(peer = %d.address, "session not configured: {e}"),
                }
            }
            let gone: Vec<IpAddr> = running
                .keys()
                .filter(|a| !want.contains_key(a))
                .copied()
                .collect();
            for a in gone {
                tracing::info!(peer = %a, "removing BGP session");
                speaker.remove_peer(a).await;
                running.remove(&a);
            }
            for (a, (pc, fp)) in want {
                if running.get(&a) == Some(&fp) {
                    continue;
                }
                if running.contains_key(&a) {
                    tracing::info!(peer = %a, "BGP session settings changed; replacing it");
                    speaker.remove_peer(a).await;
                }
                match speaker.add_peer(pc) {
                    Ok(()) => {
                        tracing::info!(peer = %a, "BGP session configured");
                        running.insert(a, fp);
                    }
                    Err(e) => tracing::warn!(peer = %a, error = %e, "cannot add BGP session"),
                }
            }
            if let Ok(mut s) = sources.lock() {
                *s = desired.into_iter().map(|d| (d.address, d)).collect();
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), rx.changed()).await;
        // Let a burst of changes settle into one recomputation.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The speaker's configuration for one desired session.
/// BGPPeer.spec.bfd to the speaker's BFD settings (300 ms × 3 by default;
/// the API validates the ranges).
pub(crate) fn bfd_config(
    b: &twill_api::resources::bgppeer::Bfd,
) -> twill_bgpd::bfd::session::Config {
    let d = twill_bgpd::bfd::session::Config::default();
    twill_bgpd::bfd::session::Config {
        min_tx: b
            .min_tx_ms
            .map(|ms| Duration::from_millis(ms.into()))
            .unwrap_or(d.min_tx),
        min_rx: b
            .min_rx_ms
            .map(|ms| Duration::from_millis(ms.into()))
            .unwrap_or(d.min_rx),
        multiplier: b.multiplier.filter(|m| *m > 0).unwrap_or(d.multiplier),
    }
}

/// Where twill-node runs when nothing says otherwise (the deploy manifests).
pub const DEFAULT_NAMESPACE: &str = "twill-system";
/// The namespace file Kubernetes mounts with the service account token.
const SERVICEACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The namespace of a BGPPeer password Secret: the reference's own, else
/// the namespace twill-node runs in (`own`), else twill-system.
pub(crate) fn secret_namespace(
    field: Option<&str>,
    own: impl FnOnce() -> Option<String>,
) -> String {
    match field.map(str::trim).filter(|s| !s.is_empty()) {
        Some(ns) => ns.to_string(),
        None => own().unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
    }
}

/// The namespace twill-node runs in: `POD_NAMESPACE` (the downward API in
/// the DaemonSet), else the service account's namespace file.
fn own_namespace() -> Option<String> {
    let valid = |s: String| {
        let s = s.trim().to_string();
        (!s.is_empty()).then_some(s)
    };
    std::env::var("POD_NAMESPACE")
        .ok()
        .and_then(valid)
        .or_else(|| {
            std::fs::read_to_string(SERVICEACCOUNT_NAMESPACE)
                .ok()
                .and_then(valid)
        })
}

/// Everything of a session's settings but the password (pure): the
/// BGPPeer's and BGPConfiguration's fields as the speaker takes them.
pub(crate) fn session_settings(d: &DesiredPeer, my_addr: IpAddr) -> Result<PeerConfig, String> {
    let mut pc = PeerConfig::new(d.address, d.asn);
    pc.port = d.port;
    pc.hold_time = d.hold_time;
    pc.keepalive = d.keepalive_time;
    pc.multihop = d.ebgp_multihop;
    // GTSM with the hop count the BGPPeer gives (RFC 5082: accept TTL ≥ 256 − N).
    pc.ttl_security = d.ttl_security;
    pc.graceful_restart = d.graceful_restart;
    pc.route_reflector_client = d.rr_client;
    pc.kind = if d.is_node {
        PeerKind::Node
    } else {
        PeerKind::External
    };
    pc.connect_retry = Duration::from_secs(2);
    pc.bfd = d.bfd.as_ref().map(bfd_config);
    if my_addr.is_ipv4() == d.address.is_ipv4() {
        pc.source_address = Some(my_addr);
    }
    if let Some(spec) = &d.spec {
        let pol = peer_policies(spec)
            .map_err(|e| format!("BGPPeer {}: {e}", d.from.clone().unwrap_or_default()))?;
        pc.import = pol.import;
        pc.export = pol.export;
        match spec.source_address.as_deref() {
            Some("None") => pc.source_address = None,
            Some("UseNodeIP") | None => {}
            Some(ip) => {
                pc.source_address = Some(
                    ip.parse()
                        .map_err(|_| format!("sourceAddress {ip:?} is not an address"))?,
                )
            }
        }
    }
    Ok(pc)
}

async fn peer_config(
    store: &Store,
    d: &DesiredPeer,
    my_addr: IpAddr,
) -> Result<PeerConfig, String> {
    let mut pc = session_settings(d, my_addr)?;
    if let Some(r) = &d.password {
        let ns = secret_namespace(r.namespace.as_deref(), own_namespace);
        let secret = store
            .get::<Secret>(Some(&ns), &r.name)
            .await
            .map_err(|e| format!("reading Secret {ns}/{}: {e}", r.name))?
            .ok_or_else(|| format!("Secret {ns}/{} does not exist", r.name))?;
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&r.key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(&r.key))
                    .cloned()
            })
            .ok_or_else(|| format!("Secret {ns}/{} has no key {:?}", r.name, r.key))?;
        pc.password = Some(PasswordSource::Literal(
            value.trim_end_matches('\n').to_string(),
        ));
    }
    Ok(pc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_annotation_is_set_and_every_other_field_kept() {
        let mut node = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "resourceVersion": "7", "labels": {"rack": "a"},
                "annotations": {"other": "x"}},
            "spec": {"podCIDR": "10.0.0.0/24", "aFieldFromANewerKubernetes": {"on": true}}});
        assert_eq!(
            set_annotation(&mut node, ANN_ADDRESS, "172.30.0.2/24"),
            Ok(true)
        );
        assert_eq!(
            node,
            json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "n1", "resourceVersion": "7", "labels": {"rack": "a"},
                    "annotations": {"other": "x", "twill.dev/bgp-address": "172.30.0.2/24"}},
                "spec": {"podCIDR": "10.0.0.0/24", "aFieldFromANewerKubernetes": {"on": true}}})
        );
        assert_eq!(
            set_annotation(&mut node, ANN_ADDRESS, "172.30.0.2/24"),
            Ok(false)
        );
        let mut bare = json!({"metadata": {"name": "n2", "annotations": null}});
        assert_eq!(set_annotation(&mut bare, ANN_ADDRESS, "a"), Ok(true));
        assert_eq!(bare["metadata"]["annotations"][ANN_ADDRESS], "a");
        assert!(set_annotation(&mut json!({"metadata": 1}), ANN_ADDRESS, "a").is_err());
        assert!(
            set_annotation(
                &mut json!({"metadata": {"annotations": []}}),
                ANN_ADDRESS,
                "a"
            )
            .is_err()
        );
    }

    /// Every BGPPeer field that shapes a session reaches the speaker's
    /// settings (the speaker's behaviour for each is tested in bgpd).
    #[test]
    fn every_bgppeer_session_field_reaches_the_speaker() {
        use twill_api::resources::bgppeer::{Bfd, FilterRule, MaxPrefixes};
        use twill_api::resources::{BGPConfigurationSpec, BGPPeerSpec};
        let cfg = BGPConfiguration::new(
            "default",
            BGPConfigurationSpec {
                as_number: Some(65001),
                node_to_node_mesh_enabled: Some(false),
                hold_time: Some(30),
                graceful_restart: Some(twill_api::resources::bgpconfig::GracefulRestart {
                    enabled: true,
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        let spec = BGPPeerSpec {
            peer_ip: Some("10.96.0.1:1179".into()),
            as_number: Some(65000),
            hold_time: Some(9),
            keepalive_time: Some(2),
            ttl_security: Some(3),
            max_prefixes: Some(MaxPrefixes {
                limit: 5,
                ..Default::default()
            }),
            import_filters: vec![FilterRule {
                cidr: Some("10.0.0.0/8".into()),
                ..Default::default()
            }],
            export_filters: vec![FilterRule::default()],
            bfd: Some(Bfd {
                enabled: true,
                ..Default::default()
            }),
            source_address: Some("10.98.0.9".into()),
            next_hop_self: true,
            route_reflector_client: true,
            graceful_restart: Some(false),
            ..Default::default()
        };
        let peer = BGPPeer::new("tor", spec.clone());
        let (d, problems) = peers::desired_peers("n1", &[], std::slice::from_ref(&cfg), &[peer]);
        assert!(problems.is_empty(), "{problems:?}");
        let me: IpAddr = "10.98.0.2".parse().unwrap();
        let pc = session_settings(&d[0], me).unwrap();
        assert_eq!(pc.address, "10.96.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((pc.port, pc.asn), (1179, 65000));
        assert_eq!((pc.hold_time, pc.keepalive), (9, Some(2)));
        assert_eq!(pc.ttl_security, Some(3));
        assert_eq!(pc.import.max_prefix.map(|m| m.limit), Some(5));
        assert_eq!(pc.import.terms.len(), 1);
        assert_eq!(pc.export.terms.len(), 1);
        assert!(pc.export.next_hop_self);
        assert!(pc.bfd.is_some());
        assert_eq!(pc.source_address, Some("10.98.0.9".parse().unwrap()));
        assert!(pc.route_reflector_client);
        assert!(!pc.graceful_restart);
        assert_eq!(pc.kind, PeerKind::External);
        // ebgpMultihop (exclusive with ttlSecurity), sourceAddress None and
        // UseNodeIP, and the configuration's defaults.
        let spec = BGPPeerSpec {
            ttl_security: None,
            ebgp_multihop: Some(4),
            source_address: Some("None".into()),
            hold_time: None,
            keepalive_time: None,
            graceful_restart: None,
            ..spec
        };
        let (d, _) = peers::desired_peers(
            "n1",
            &[],
            std::slice::from_ref(&cfg),
            &[BGPPeer::new("tor", spec.clone())],
        );
        let pc = session_settings(&d[0], me).unwrap();
        assert_eq!((pc.multihop, pc.ttl_security), (Some(4), None));
        assert_eq!(pc.source_address, None);
        assert_eq!((pc.hold_time, pc.keepalive), (30, None));
        assert!(pc.graceful_restart, "the configuration's setting");
        let spec = BGPPeerSpec {
            source_address: Some("UseNodeIP".into()),
            ..spec
        };
        let (d, _) = peers::desired_peers("n1", &[], &[cfg], &[BGPPeer::new("tor", spec)]);
        assert_eq!(
            session_settings(&d[0], me).unwrap().source_address,
            Some(me)
        );
    }

    #[test]
    fn secret_namespace_is_the_field_then_our_own_then_twill_system() {
        assert_eq!(
            secret_namespace(Some("bgp-secrets"), || Some("kube-system".into())),
            "bgp-secrets"
        );
        assert_eq!(
            secret_namespace(None, || Some("kube-system".into())),
            "kube-system"
        );
        assert_eq!(
            secret_namespace(Some(""), || Some("kube-system".into())),
            "kube-system",
            "an empty namespace is no namespace"
        );
        assert_eq!(secret_namespace(None, || None), DEFAULT_NAMESPACE);
    }

    #[test]
    fn bgppeer_bfd_maps_to_speaker_settings_with_defaults() {
        use twill_api::resources::bgppeer::Bfd;
        let c = bfd_config(&Bfd {
            enabled: true,
            min_tx_ms: Some(100),
            min_rx_ms: None,
            multiplier: Some(5),
        });
        assert_eq!(c.min_tx, Duration::from_millis(100));
        assert_eq!(c.min_rx, Duration::from_millis(300));
        assert_eq!(c.multiplier, 5);
        assert_eq!(
            bfd_config(&Bfd {
                enabled: true,
                ..Default::default()
            }),
            twill_bgpd::bfd::session::Config::default()
        );
    }
}
