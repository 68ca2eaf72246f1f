//! The endpoints manager: pod interfaces on this node, set up and torn
//! down by CNI ADD / DEL / CHECK / GC / STATUS, and repaired once when
//! twill-node starts ([`reconcile`], the [`super::Manager`] pass).
//!
//! ADD is all or nothing: addresses from IPAM, then the plumbing
//! ([`link`]), then the policy gate, then the record ([`record`]); a failure
//! at any step undoes every earlier one before the error is returned. The
//! record is written last, so after a crash "no record" means "never handed
//! to the runtime" and reconcile may remove whatever such an attempt left
//! (a veth, an allocation). Operations on one container are serialized;
//! different containers proceed in parallel.

pub mod link;
pub mod reconcile;
pub mod record;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use tokio::sync::{oneshot, watch};
use twill_api::Store;
use twill_cni::protocol::Request;
use twill_cni::spec::{CniError, CniResult, code};
use twill_ipam::{AssignRequest, Ipam};

pub use crate::calc::endpoint::{
    ANNOTATION_IP_ADDRS, AddressRecord, EndpointKey, EndpointRecord, ReconcileReport, result_of,
};
use crate::calc::endpoint::{host_prefix, ipam_error, requested_addresses};
pub use record::StateDir;

use super::netns::in_netns;
use crate::names;

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
    releases: Releases,
}

/// Where a waiting DEL hears how its release went.
type ReleaseWaiter = oneshot::Sender<Result<(), CniError>>;

/// DELs waiting for their addresses to be released, and the turn to do
/// it. Whoever gets the turn releases every waiting handle at once
/// ([`Ipam::release_handles`]: one compare-and-swap write per block) and
/// answers each waiter; twenty concurrent DELs then make a few store
/// writes instead of queueing for twenty (docs/cni-latency.md).
#[derive(Default)]
struct Releases {
    waiting: Mutex<Vec<(String, ReleaseWaiter)>>,
    turn: tokio::sync::Mutex<()>,
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

fn setup_error(msg: impl Into<String>) -> CniError {
    CniError::new(code::ENDPOINT_SETUP, msg)
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
            releases: Releases::default(),
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

    /// Releases the addresses of `handle` together with those of every
    /// other DEL waiting at the same time.
    async fn release_batched(&self, handle: &str) -> Result<(), CniError> {
        let (tx, mut rx) = oneshot::channel();
        self.releases
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((handle.to_string(), tx));
        let _turn = self.releases.turn.lock().await;
        match rx.try_recv() {
            // An earlier turn took this handle along.
            Ok(r) => return r,
            Err(oneshot::error::TryRecvError::Empty) => {}
            // The turn that took it was dropped half-way: release alone
            // (releasing is idempotent).
            Err(oneshot::error::TryRecvError::Closed) => {
                return self
                    .ipam
                    .release_handle(handle)
                    .await
                    .map(|_| ())
                    .map_err(ipam_error);
            }
        }
        let batch = std::mem::take(
            &mut *self
                .releases
                .waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let handles: Vec<String> = batch.iter().map(|(h, _)| h.clone()).collect();
        let r = self
            .ipam
            .release_handles(&handles)
            .await
            .map(|_| ())
            .map_err(ipam_error);
        tracing::debug!(
            handles = handles.len(),
            ok = r.is_ok(),
            "addresses released"
        );
        for (_, waiter) in batch {
            let _ = waiter.send(r.clone());
        }
        rx.try_recv().unwrap_or(r)
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
        let t0 = std::time::Instant::now();
        let lock = self.lock_for(&key);
        let _guard = lock.lock().await;
        let t_lock = t0.elapsed();
        let host_if = names::host_veth(&req.container_id, &req.ifname);
        link::delete_link_off_runtime(&host_if)
            .await
            .map_err(|e| CniError::new(code::TRY_AGAIN_LATER, e.to_string()))?;
        let t_veth = t0.elapsed();
        self.release_batched(&req.container_id).await?;
        let t_ipam = t0.elapsed();
        self.state.remove(&key).map_err(|e| {
            CniError::new(
                code::IO_FAILURE,
                format!("removing the endpoint record: {e}"),
            )
        })?;
        let t_rec = t0.elapsed();
        self.publish_del(&key);
        let t_pub = t0.elapsed();
        let us = |d: std::time::Duration| d.as_micros() as u64;
        tracing::debug!(endpoint = %key, lock_us = us(t_lock), veth_us = us(t_veth), ipam_us = us(t_ipam), record_us = us(t_rec), publish_us = us(t_pub), "DEL steps (cumulative)");
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
}
