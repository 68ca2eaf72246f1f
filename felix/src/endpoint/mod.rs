//! Pod endpoints on this node: CNI ADD / DEL / CHECK / GC / STATUS, and the
//! reconcile that runs when twill-node starts.
//!
//! ADD is all or nothing: addresses from IPAM, then the plumbing
//! ([`link`]), then the policy gate, then the record ([`record`]); a failure
//! at any step undoes every earlier one before the error is returned. The
//! record is written last, so after a crash "no record" means "never handed
//! to the runtime" and reconcile may remove whatever such an attempt left
//! (a veth, an allocation). Operations on one container are serialized;
//! different containers proceed in parallel.

pub mod link;
pub mod record;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use tokio::sync::watch;
use twill_api::Store;
use twill_cni::protocol::Request;
use twill_cni::spec::{CniError, CniResult, Interface, IpConfig, Route, code};
use twill_ipam::{AssignRequest, Ipam, IpamError, PlanError};

pub use record::{AddressRecord, EndpointKey, EndpointRecord, StateDir};

use crate::names;
use crate::netns::in_netns;

/// Pod annotation with the addresses a pod wants (comma-separated or a JSON list).
pub const ANNOTATION_IP_ADDRS: &str = "twill.dev/ip-addrs";

/// What must be true before a new endpoint is handed to the runtime.
/// Policy enforcement plugs in here: ADD returns only after `ready`.
#[async_trait::async_trait]
pub trait EndpointGate: Send + Sync + 'static {
    /// Called with the complete endpoint before ADD replies.
    async fn ready(&self, ep: &EndpointRecord) -> Result<(), String>;
}

/// A gate that is always open (no policy engine attached).
pub struct Open;

#[async_trait::async_trait]
impl EndpointGate for Open {
    async fn ready(&self, _ep: &EndpointRecord) -> Result<(), String> {
        Ok(())
    }
}

/// The current set of endpoints, shared with routing and policy.
pub type EndpointSet = Arc<BTreeMap<EndpointKey, EndpointRecord>>;

/// Endpoint management for one node.
pub struct Endpoints {
    node: String,
    store: Store,
    ipam: Ipam,
    state: StateDir,
    host: rtnetlink::Handle,
    mtu: u32,
    gate: Arc<dyn EndpointGate>,
    locks: Mutex<HashMap<EndpointKey, Arc<tokio::sync::Mutex<()>>>>,
    set: watch::Sender<EndpointSet>,
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

fn setup_error(msg: impl Into<String>) -> CniError {
    CniError::new(code::ENDPOINT_SETUP, msg)
}

fn ipam_error(e: IpamError) -> CniError {
    match e {
        IpamError::Plan(p @ PlanError::NoPool { .. }) => {
            CniError::new(code::NO_POOL, p.to_string())
        }
        IpamError::Plan(p @ PlanError::Exhausted { .. }) => {
            CniError::new(code::POOL_EXHAUSTED, p.to_string())
        }
        IpamError::Plan(p @ PlanError::Unavailable { .. }) => {
            CniError::new(code::ADDRESS_UNAVAILABLE, p.to_string())
        }
        IpamError::Plan(p @ PlanError::UnknownPool { .. }) => CniError::new(
            code::INVALID_NETWORK_CONFIG,
            format!("{p} (the network configuration's \"pools\" names it)"),
        ),
        IpamError::Store(s) => CniError::new(code::TRY_AGAIN_LATER, format!("datastore: {s}")),
        IpamError::Contended => CniError::new(code::TRY_AGAIN_LATER, e.to_string()),
        other => CniError::new(code::INTERNAL, other.to_string()),
    }
}

/// Addresses requested through CNI_ARGS `IP=`, runtimeConfig `ips`, or
/// the pod annotation.
fn requested_addresses(req: &Request, pod: Option<&Pod>) -> Result<Vec<IpAddr>, CniError> {
    let mut raw: Vec<String> = Vec::new();
    if let Some(ips) = req.args.get("IP") {
        raw.extend(ips.split(',').map(str::to_string));
    }
    if let Some(ips) = req
        .config
        .pointer("/runtimeConfig/ips")
        .and_then(Value::as_array)
    {
        raw.extend(ips.iter().filter_map(Value::as_str).map(str::to_string));
    }
    if raw.is_empty()
        && let Some(a) = pod
            .and_then(|p| p.metadata.annotations.as_ref())
            .and_then(|a| a.get(ANNOTATION_IP_ADDRS))
    {
        match serde_json::from_str::<Vec<String>>(a) {
            Ok(list) => raw.extend(list),
            Err(_) => raw.extend(a.split(',').map(|s| s.trim().to_string())),
        }
    }
    raw.iter()
        .filter(|s| !s.is_empty())
        .map(|s| {
            let addr = s.split('/').next().unwrap_or(s);
            addr.parse::<IpAddr>().map_err(|_| {
                CniError::new(
                    code::INVALID_NETWORK_CONFIG,
                    format!("requested address {s:?} is not an IP address"),
                )
            })
        })
        .collect()
}

fn host_prefix(a: IpAddr) -> IpNetwork {
    match a {
        IpAddr::V4(_) => IpNetwork::new(a, 32),
        IpAddr::V6(_) => IpNetwork::new(a, 128),
    }
    .unwrap_or_else(|_| IpNetwork::from(a))
}

/// The CNI result for an endpoint.
pub fn result_of(rec: &EndpointRecord) -> CniResult {
    let mut r = CniResult {
        interfaces: vec![
            Interface {
                name: rec.host_ifname.clone(),
                mac: link::format_mac(&link::HOST_MAC),
                sandbox: None,
                mtu: None,
            },
            Interface {
                name: rec.ifname.clone(),
                mac: rec.mac.clone(),
                sandbox: Some(rec.netns.clone()),
                mtu: Some(rec.mtu),
            },
        ],
        ips: Vec::new(),
        routes: Vec::new(),
    };
    for a in &rec.addresses {
        let gw = if a.addr.is_ipv4() {
            link::GATEWAY_V4.to_string()
        } else {
            link::GATEWAY_V6.to_string()
        };
        r.ips.push(IpConfig {
            address: a.addr.to_string(),
            gateway: Some(gw.clone()),
            interface: Some(1),
        });
        let dst = if a.addr.is_ipv4() {
            "0.0.0.0/0"
        } else {
            "::/0"
        };
        if !r.routes.iter().any(|x| x.dst == dst) {
            r.routes.push(Route {
                dst: dst.into(),
                gw: Some(gw),
            });
        }
    }
    r
}

/// How [`Endpoints::drift`] says IPAM gave an endpoint's address away.
const IPAM_LOST: &str = "IPAM no longer records";

/// What reconcile did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    pub healthy: usize,
    pub repaired: Vec<String>,
    pub removed: Vec<String>,
    pub leaked_links: Vec<String>,
    pub released: Vec<String>,
}

impl Endpoints {
    pub fn new(
        node: &str,
        store: Store,
        state: StateDir,
        host: rtnetlink::Handle,
        mtu: u32,
        gate: Arc<dyn EndpointGate>,
    ) -> Self {
        let (set, _) = watch::channel(Arc::new(BTreeMap::new()));
        Endpoints {
            node: node.to_string(),
            ipam: Ipam::new(store.clone(), node),
            store,
            state,
            host,
            mtu,
            gate,
            locks: Mutex::new(HashMap::new()),
            set,
        }
    }

    /// Follows the set of endpoints on this node.
    pub fn subscribe(&self) -> watch::Receiver<EndpointSet> {
        self.set.subscribe()
    }

    /// The endpoints now.
    pub fn current(&self) -> EndpointSet {
        self.set.borrow().clone()
    }

    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    fn lock_for(&self, key: &EndpointKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(key.clone()).or_default().clone()
    }

    /// Records an endpoint as live (routing and policy follow the set).
    fn publish_add(&self, rec: &EndpointRecord) {
        self.set.send_modify(|set| {
            Arc::make_mut(set).insert(rec.key(), rec.clone());
        });
    }

    fn publish_del(&self, key: &EndpointKey) {
        self.set
            .send_if_modified(|set| Arc::make_mut(set).remove(key).is_some());
    }

    async fn pod_object(&self, req: &Request) -> Option<Pod> {
        let ns = req.args.get("K8S_POD_NAMESPACE")?;
        let name = req.args.get("K8S_POD_NAME")?;
        match self.store.get::<Pod>(Some(ns), name).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "cannot read the pod object");
                None
            }
        }
    }

    /// CNI ADD.
    pub async fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let key = EndpointKey {
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
        };
        let lock = self.lock_for(&key);
        let _guard = lock.lock().await;
        if let Ok(Some(rec)) = self.state.load(&key)
            && link::link_index(&self.host, &rec.host_ifname)
                .await
                .ok()
                .flatten()
                .is_some()
        {
            // A repeated ADD for a live endpoint: same answer as the first.
            return Ok(result_of(&rec));
        }
        let pod = self.pod_object(req).await;
        let requested = requested_addresses(req, pod.as_ref())?;
        let mtu = match req.config.get("mtu").and_then(Value::as_u64) {
            Some(m) => u32::try_from(m).unwrap_or(self.mtu),
            None => self.mtu,
        };
        let mut attributes = BTreeMap::new();
        attributes.insert(twill_ipam::ATTR_IFNAME.to_string(), req.ifname.clone());
        let namespace = req.args.get("K8S_POD_NAMESPACE").cloned();
        let pod_name = req.args.get("K8S_POD_NAME").cloned();
        if let Some(ns) = &namespace {
            attributes.insert(twill_ipam::ATTR_NAMESPACE.to_string(), ns.clone());
        }
        if let Some(p) = &pod_name {
            attributes.insert(twill_ipam::ATTR_POD.to_string(), p.clone());
        }
        let assigned = self
            .ipam
            .assign(&AssignRequest {
                handle: req.container_id.clone(),
                requested,
                attributes,
                pools: req
                    .config
                    .get("pools")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .await
            .map_err(ipam_error)?;
        let addresses: Vec<AddressRecord> = assigned
            .iter()
            .map(|a| AddressRecord {
                addr: host_prefix(a.addr),
                block: a.block_name.clone(),
                sequence: a.sequence,
                borrowed: a.borrowed,
            })
            .collect();
        let host_if = names::host_veth(&req.container_id, &req.ifname);
        let mut rec = EndpointRecord {
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
            netns: req.netns.clone(),
            host_ifname: host_if.clone(),
            mac: String::new(),
            mtu,
            addresses,
            namespace,
            pod: pod_name,
            labels: pod.and_then(|p| p.metadata.labels).unwrap_or_default(),
            created: now(),
        };
        let outcome = async {
            rec.mac = self.plumb(&rec).await?;
            // The policy engine and the route programmer follow the published
            // set; the record is written only once policy is in place, right
            // before the reply, so a crash while waiting leaves no record and
            // reconcile removes what this attempt made.
            self.publish_add(&rec);
            self.gate.ready(&rec).await.map_err(|e| {
                CniError::new(
                    code::POLICY_NOT_READY,
                    format!("policy for the pod was not programmed: {e}"),
                )
            })?;
            self.state
                .save(&rec)
                .map_err(|e| setup_error(format!("saving the endpoint record: {e}")))
        }
        .await;
        match outcome {
            Ok(()) => {
                tracing::info!(endpoint = %key, host_if = %host_if, addrs = ?rec.addresses.iter().map(|a| a.addr.to_string()).collect::<Vec<_>>(), "endpoint added");
                Ok(result_of(&rec))
            }
            Err(e) => {
                self.undo(&rec).await;
                Err(e)
            }
        }
    }

    /// Builds the veth pair and configures both ends. Returns the pod MAC.
    async fn plumb(&self, rec: &EndpointRecord) -> Result<String, CniError> {
        // A veth left by an earlier attempt at this same endpoint goes first.
        link::delete_link(&self.host, &rec.host_ifname)
            .await
            .map_err(|e| setup_error(e.to_string()))?;
        let ns = std::fs::File::open(&rec.netns).map_err(|e| {
            CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("CNI_NETNS {}: {e}", rec.netns),
            )
        })?;
        let addrs: Vec<IpNetwork> = rec.addresses.iter().map(|a| a.addr).collect();
        let idx = link::create_veth(&self.host, &rec.host_ifname, &rec.ifname, &ns, rec.mtu)
            .await
            .map_err(|e| setup_error(e.to_string()))?;
        let pod_if = rec.ifname.clone();
        let pod_addrs = addrs.clone();
        let mac = in_netns(&rec.netns, move |h| async move {
            link::configure_pod_side(&h, &pod_if, &pod_addrs).await
        })
        .await
        .map_err(|e| setup_error(e.to_string()))?
        .map_err(|e| setup_error(e.to_string()))?;
        link::configure_host_side(&self.host, &rec.host_ifname, idx, &addrs)
            .await
            .map_err(|e| setup_error(e.to_string()))?;
        Ok(mac)
    }

    /// Removes everything an endpoint (or a failed attempt at one) made.
    async fn undo(&self, rec: &EndpointRecord) {
        if let Err(e) = link::delete_link(&self.host, &rec.host_ifname).await {
            tracing::warn!(link = %rec.host_ifname, error = %e, "undo: cannot delete veth; reconcile will");
        }
        if let Err(e) = self.state.remove(&rec.key()) {
            tracing::warn!(error = %e, "undo: cannot remove the endpoint record");
        }
        if let Err(e) = self.ipam.release_handle(&rec.container_id).await {
            tracing::warn!(handle = %rec.container_id, error = %e, "undo: cannot release addresses; reconcile will");
        }
        self.publish_del(&rec.key());
    }

    /// CNI DEL: idempotent, and fine when the pod's namespace is gone.
    pub async fn del(&self, req: &Request) -> Result<(), CniError> {
        let key = EndpointKey {
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
        };
        let lock = self.lock_for(&key);
        let _guard = lock.lock().await;
        let host_if = names::host_veth(&req.container_id, &req.ifname);
        let own = link::own_connection();
        link::delete_link(own.as_ref().unwrap_or(&self.host), &host_if)
            .await
            .map_err(|e| CniError::new(code::TRY_AGAIN_LATER, e.to_string()))?;
        self.ipam
            .release_handle(&req.container_id)
            .await
            .map_err(ipam_error)?;
        self.state.remove(&key).map_err(|e| {
            CniError::new(
                code::IO_FAILURE,
                format!("removing the endpoint record: {e}"),
            )
        })?;
        self.publish_del(&key);
        tracing::info!(endpoint = %key, "endpoint deleted");
        Ok(())
    }

    /// CNI CHECK: compares the kernel and IPAM with the record; names every drift.
    pub async fn check(&self, req: &Request) -> Result<(), CniError> {
        let key = EndpointKey {
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
        };
        let rec = self
            .state
            .load(&key)
            .map_err(|e| CniError::new(code::IO_FAILURE, e.to_string()))?
            .ok_or_else(|| {
                CniError::new(
                    code::UNKNOWN_CONTAINER,
                    format!("no endpoint {key} on node {}", self.node),
                )
            })?;
        let drift = self.drift(&rec).await;
        if drift.is_empty() {
            Ok(())
        } else {
            Err(CniError::new(
                code::CHECK_DRIFT,
                format!("endpoint {key} has drifted: {}", drift.join("; ")),
            ))
        }
    }

    /// Everything about an endpoint that differs from its record. Only a
    /// line starting with [`IPAM_LOST`] means the address may be someone
    /// else's now; a failed IPAM read is drift of another kind.
    pub async fn drift(&self, rec: &EndpointRecord) -> Vec<String> {
        let mut d = Vec::new();
        let host_if = &rec.host_ifname;
        match link::link_state(&self.host, host_if).await {
            Ok(None) => d.push(format!("host veth {host_if} is missing")),
            Err(e) => d.push(e.to_string()),
            Ok(Some(st)) => {
                if !st.up {
                    d.push(format!("host veth {host_if} is down"));
                }
                if st.mac != link::HOST_MAC {
                    d.push(format!(
                        "host veth {host_if} has MAC {} instead of ee:ee:ee:ee:ee:ee",
                        link::format_mac(&st.mac)
                    ));
                }
                match crate::sysctl::read_if("ipv4", host_if, "proxy_arp") {
                    Ok(v) if v == "1" => {}
                    Ok(v) => d.push(format!("proxy_arp on {host_if} is {v}, not 1")),
                    Err(e) => d.push(format!("proxy_arp on {host_if}: {e}")),
                }
                match link::twill_routes_via(&self.host, st.index).await {
                    Ok(routes) => {
                        for a in &rec.addresses {
                            if !routes.contains(&a.addr) {
                                d.push(format!("host route {} dev {host_if} is missing", a.addr));
                            }
                        }
                    }
                    Err(e) => d.push(e.to_string()),
                }
            }
        }
        if !Path::new(&rec.netns).exists() {
            d.push(format!("pod network namespace {} is gone", rec.netns));
        } else {
            let pod_if = rec.ifname.clone();
            match in_netns(&rec.netns, move |h| async move {
                link::pod_view(&h, &pod_if).await
            })
            .await
            {
                Err(e) => d.push(e.to_string()),
                Ok(Err(e)) => d.push(e.to_string()),
                Ok(Ok(None)) => d.push(format!("{} is missing inside the pod", rec.ifname)),
                Ok(Ok(Some(v))) => {
                    if !v.up {
                        d.push(format!("{} is down inside the pod", rec.ifname));
                    }
                    for a in &rec.addresses {
                        if !v.addrs.contains(&a.addr) {
                            d.push(format!(
                                "address {} is missing from {} inside the pod",
                                a.addr, rec.ifname
                            ));
                        }
                    }
                    if rec.addresses.iter().any(|a| a.addr.is_ipv4()) && !v.default_v4 {
                        d.push(format!(
                            "the pod's default route via {} is missing",
                            link::GATEWAY_V4
                        ));
                    }
                    if rec.addresses.iter().any(|a| a.addr.is_ipv6()) && !v.default_v6 {
                        d.push(format!(
                            "the pod's default route via {} is missing",
                            link::GATEWAY_V6
                        ));
                    }
                }
            }
        }
        match self.ipam.node_allocations().await {
            Ok(allocs) => {
                for a in &rec.addresses {
                    let held = allocs.iter().any(|(ip, _, al)| {
                        *ip == a.ip() && al.handle == rec.container_id && al.sequence == a.sequence
                    });
                    if !held {
                        d.push(format!(
                            "{IPAM_LOST} {} as held by {}",
                            a.ip(),
                            rec.container_id
                        ));
                    }
                }
            }
            Err(e) => d.push(format!("cannot read IPAM: {e}")),
        }
        d
    }

    /// CNI GC: removes every endpoint of this node that the runtime no
    /// longer lists in `cni.dev/valid-attachments`.
    pub async fn gc(&self, req: &Request) -> Result<(), CniError> {
        let valid: BTreeSet<EndpointKey> = req
            .config
            .get("cni.dev/valid-attachments")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|a| {
                        Some(EndpointKey {
                            container_id: a.get("containerID")?.as_str()?.to_string(),
                            ifname: a.get("ifname")?.as_str()?.to_string(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (recs, _) = self
            .state
            .all()
            .map_err(|e| CniError::new(code::IO_FAILURE, e.to_string()))?;
        for rec in recs.into_iter().filter(|r| !valid.contains(&r.key())) {
            tracing::info!(endpoint = %rec.key(), "GC: not a valid attachment any more");
            let del = Request {
                command: twill_cni::protocol::Command::Del,
                container_id: rec.container_id.clone(),
                netns: rec.netns.clone(),
                ifname: rec.ifname.clone(),
                args: BTreeMap::new(),
                config: Value::Null,
            };
            self.del(&del).await?;
        }
        Ok(())
    }

    /// CNI STATUS: ready when this node can get an address from some pool.
    pub async fn status(&self) -> Result<(), CniError> {
        match self.ipam.families().await {
            Ok(f) if !f.is_empty() => Ok(()),
            Ok(_) => Err(CniError::new(
                code::NOT_AVAILABLE,
                format!(
                    "no enabled IPPool selects node {:?}: pods cannot get addresses",
                    self.node
                ),
            )),
            Err(e) => Err(CniError::new(code::NOT_AVAILABLE, format!("IPAM: {e}"))),
        }
    }

    /// Makes the kernel and IPAM agree with the records, once, at start:
    /// a healthy node is left untouched; endpoints whose pod is gone are
    /// removed; broken ones are rebuilt with the same addresses; veths and
    /// allocations no record accounts for (a crash mid-ADD) are removed.
    pub async fn reconcile(&self) -> Result<ReconcileReport, CniError> {
        let mut report = ReconcileReport::default();
        if let Ok(n) = self.state.clean_incomplete()
            && n > 0
        {
            tracing::info!(files = n, "removed incomplete endpoint records");
        }
        // The datastore must answer before anything is judged: an IPAM
        // read that fails (the API server is down while twill-node starts)
        // says nothing about the pods, and must never take one down.
        self.ipam.node_allocations().await.map_err(ipam_error)?;
        let (recs, bad) = self
            .state
            .all()
            .map_err(|e| CniError::new(code::IO_FAILURE, e.to_string()))?;
        for b in bad {
            tracing::warn!(record = %b, "unreadable endpoint record ignored");
        }
        for rec in &recs {
            if !Path::new(&rec.netns).exists() {
                self.undo(rec).await;
                report.removed.push(rec.key().to_string());
                continue;
            }
            let drift = self.drift(rec).await;
            if drift.is_empty() {
                report.healthy += 1;
                continue;
            }
            tracing::warn!(endpoint = %rec.key(), drift = ?drift, "repairing endpoint");
            let ipam_lost = drift.iter().any(|d| d.starts_with(IPAM_LOST));
            if ipam_lost {
                // Its address may be someone else's now: take it down.
                self.undo(rec).await;
                report.removed.push(rec.key().to_string());
                continue;
            }
            match self.plumb(rec).await {
                Ok(mac) => {
                    let mut fixed = rec.clone();
                    fixed.mac = mac;
                    if let Err(e) = self.state.save(&fixed) {
                        tracing::warn!(error = %e, "cannot save repaired record");
                    }
                    report.repaired.push(rec.key().to_string());
                }
                Err(e) => {
                    tracing::warn!(endpoint = %rec.key(), error = %e, "repair failed; removing the endpoint");
                    self.undo(rec).await;
                    report.removed.push(rec.key().to_string());
                }
            }
        }
        let known: BTreeSet<String> = recs
            .iter()
            .filter(|r| !report.removed.contains(&r.key().to_string()))
            .map(|r| r.host_ifname.clone())
            .collect();
        let mut links = self.host.link().get().execute();
        let mut leaked = Vec::new();
        while let Some(l) = links
            .try_next()
            .await
            .map_err(|e| CniError::new(code::INTERNAL, format!("listing links: {e}")))?
        {
            for a in &l.attributes {
                if let netlink_packet_route::link::LinkAttribute::IfName(n) = a
                    && names::is_host_veth(n)
                    && !known.contains(n)
                {
                    leaked.push(n.clone());
                }
            }
        }
        for n in leaked {
            if link::delete_link(&self.host, &n).await.is_ok() {
                report.leaked_links.push(n);
            }
        }
        let live: BTreeSet<String> = recs
            .iter()
            .filter(|r| !report.removed.contains(&r.key().to_string()))
            .map(|r| r.container_id.clone())
            .collect();
        let allocs = self.ipam.node_allocations().await.map_err(ipam_error)?;
        for (addr, _, a) in allocs {
            if !live.contains(&a.handle) {
                match self
                    .ipam
                    .release_address(addr, Some((&a.handle, a.sequence)))
                    .await
                {
                    Ok(Some(_)) => report.released.push(format!("{addr} ({})", a.handle)),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(%addr, error = %e, "cannot release leaked address"),
                }
            }
        }
        match self.state.all() {
            Ok((recs, _)) => {
                self.set
                    .send_replace(Arc::new(recs.into_iter().map(|r| (r.key(), r)).collect()));
            }
            Err(e) => tracing::warn!(error = %e, "cannot read endpoint records"),
        }
        tracing::info!(?report, "endpoint reconcile done");
        Ok(report)
    }
}
