//! The LoadBalancer allocator: executes [`crate::lb`] plans with
//! compare-and-swap writes and keeps each Service's
//! `status.loadBalancer.ingress` and its condition
//! [`twill_api::service::CONDITION_LB`] true to the blocks.
//!
//! Meant to run in every twill-node at once ([`run`]): nothing elects a
//! leader. Correctness comes from the writes, not from there being one
//! writer: an address is one ordinal of one IPAMBlock, taken by a CAS write,
//! so two allocators can never give it to two Services; whoever loses a
//! race re-reads and finds the address taken (or the Service already
//! served). Status is derived from the blocks, never the other way round:
//! the allocator reads the Service, then the blocks, publishes the lowest
//! address the Service holds per family, with a CAS write of the status
//! against the Service it read, and only after that releases any other
//! address the Service holds (a duplicate two racing allocators made, or
//! one it no longer asks for). A crash between any two writes leaves an
//! allocation whose status is not written yet (the next pass publishes
//! it) or an extra address (the next pass releases it).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, Service, ServiceStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use twill_api::resources::{IPAMBlock, IPPool};
use twill_api::service::{CONDITION_LB, is_twill_lb};
use twill_api::{Store, StoreError, WatchEvent};

use crate::lb::{
    LbAddress, LbRefusal, LbRequest, LbStep, held_by, holders, lb_addresses, namespace_of, plan_lb,
    without_holder,
};
use crate::plan::Family;

/// How many times one step re-reads and retries after losing a race.
const MAX_ATTEMPTS: usize = 64;

/// Allocator failures (refusals are not failures: they end up in the Service's status).
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("datastore: {0}")]
    Store(#[from] StoreError),
    #[error("gave up after {MAX_ATTEMPTS} attempts: other writers kept changing the same objects")]
    Contended,
}

/// What one reconcile of one Service ended in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LbOutcome {
    /// The Service is gone or not Twill's LoadBalancer: its addresses (if any) were released.
    NotServed { released: Vec<IpAddr> },
    /// Published these addresses (one per family, in the Service's order).
    Allocated(Vec<IpAddr>),
    /// Pending: the reason is in the Service's condition.
    Pending(LbRefusal),
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// LoadBalancer IPAM over a store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LbAllocator {
    store: Store,
}

impl LbAllocator {
    pub fn new(store: Store) -> Self {
        LbAllocator { store }
    }

    async fn blocks(&self) -> Result<Vec<IPAMBlock>, StoreError> {
        Ok(self.store.list::<IPAMBlock>().await?.items)
    }

    /// Brings one Service's addresses and status in line with what it asks for.
    pub async fn reconcile(&self, namespace: &str, name: &str) -> Result<LbOutcome, LbError> {
        let Some(svc) = self.store.get::<Service>(Some(namespace), name).await? else {
            let released = self.release_stale(namespace, name, None).await?;
            return Ok(LbOutcome::NotServed { released });
        };
        let uid = svc.metadata.uid.clone().unwrap_or_default();
        // Older incarnations of the name (deleted and created again) hold nothing any more.
        self.release_stale(namespace, name, Some(&uid)).await?;
        if !is_twill_lb(&svc) {
            self.publish(namespace, name, &uid, None).await?;
            let released = self.release_all(namespace, name, &uid).await?;
            return Ok(LbOutcome::NotServed { released });
        }
        let req = match LbRequest::from_service(&svc) {
            Ok(r) => r,
            Err(refusal) => {
                self.publish(namespace, name, &uid, Some(&Err(refusal.clone())))
                    .await?;
                return Ok(LbOutcome::Pending(refusal));
            }
        };
        // All or nothing, as the API server allocates cluster IPs and as
        // MetalLB does: a Service that cannot get every family it requires
        // holds none (a pending Service keeping half its addresses would
        // starve others). Checked before anything is written, so a pending
        // Service does not allocate and release on every pass; a race lost
        // after the check ends the same way (the release below).
        let mut refusal = self.infeasible(&req).await?;
        for (family, required) in &req.families {
            if refusal.is_some() {
                break;
            }
            match self.ensure(&req, *family).await? {
                Ok(_) => {}
                // PreferDualStack's second family: nice to have, never a reason to wait.
                Err(_) if !required => {}
                Err(r) => {
                    refusal = Some(r);
                    break;
                }
            }
        }
        let result = match refusal {
            Some(r) => Err(r),
            None => Ok(()),
        };
        let published = self.publish(namespace, name, &uid, Some(&result)).await?;
        // Only now that the status no longer shows them: give back extras.
        self.release_extras(&req, &published).await?;
        Ok(match result {
            Ok(()) => LbOutcome::Allocated(published),
            Err(r) => LbOutcome::Pending(r),
        })
    }

    /// The addresses of a family the Service may keep: held under its
    /// current handle and, if it asks for one, that one.
    fn keepers(req: &LbRequest, blocks: &[IPAMBlock], family: Family) -> Vec<LbAddress> {
        let want = req.requested_in(family);
        held_by(blocks, &req.namespace, &req.name, &req.uid)
            .into_iter()
            .filter(|l| Family::of_addr(&l.addr) == family)
            .filter(|l| l.allocation.handle == req.handle())
            .filter(|l| want.is_none_or(|w| w == l.addr))
            .collect()
    }

    /// The refusal of the first required family the Service holds no
    /// address of and would not get one of now (nothing is written).
    async fn infeasible(&self, req: &LbRequest) -> Result<Option<LbRefusal>, LbError> {
        let pools = self.store.list::<IPPool>().await?.items;
        let blocks = self.blocks().await?;
        for (family, required) in &req.families {
            if !required || !Self::keepers(req, &blocks, *family).is_empty() {
                continue;
            }
            if let Err(r) = plan_lb(&pools, &blocks, req, *family, &now()) {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// Makes sure the Service holds an address of `family` (one CAS write, retried on conflict).
    async fn ensure(
        &self,
        req: &LbRequest,
        family: Family,
    ) -> Result<Result<IpAddr, LbRefusal>, LbError> {
        for _ in 0..MAX_ATTEMPTS {
            let pools = self.store.list::<IPPool>().await?.items;
            let blocks = self.blocks().await?;
            if let Some(l) = Self::keepers(req, &blocks, family).first() {
                return Ok(Ok(l.addr));
            }
            let step = match plan_lb(&pools, &blocks, req, family, &now()) {
                Ok(s) => s,
                Err(r) => return Ok(Err(r)),
            };
            let addr = step.addr();
            let written = match step {
                LbStep::Update { block, .. } => self.store.update(&block).await.map(|_| ()),
                LbStep::Claim { block, .. } => self.store.create(&block).await.map(|_| ()),
            };
            match written {
                Ok(()) => {
                    tracing::info!(service = %req.key(), %addr, "LoadBalancer address allocated");
                    return Ok(Ok(addr));
                }
                Err(e) if e.is_conflict() || e.is_not_found() || e.is_already_exists() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(LbError::Contended)
    }

    /// Writes the Service's status from the blocks: read the Service, then
    /// the blocks, then CAS the status against the Service read. `result`
    /// None clears what Twill wrote (not Twill's Service any more).
    /// Returns the addresses published.
    async fn publish(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        result: Option<&Result<(), LbRefusal>>,
    ) -> Result<Vec<IpAddr>, LbError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(mut svc) = self.store.get::<Service>(Some(namespace), name).await? else {
                return Ok(vec![]);
            };
            if svc.metadata.uid.as_deref() != Some(uid) {
                return Ok(vec![]);
            }
            let blocks = self.blocks().await?;
            // Addresses of LoadBalancer pools and blocks are Twill's to write.
            let pools = self.store.list::<IPPool>().await?.items;
            let lb_nets: Vec<ipnetwork::IpNetwork> = pools
                .iter()
                .filter(|p| p.spec.allows_load_balancers())
                .filter_map(|p| p.spec.network())
                .collect();
            let lb_ips: Vec<IpAddr> = lb_addresses(&blocks).iter().map(|l| l.addr).collect();
            let twills = |a: IpAddr| lb_ips.contains(&a) || lb_nets.iter().any(|n| n.contains(a));
            let mut published = Vec::new();
            let mut condition = None;
            if let Some(result) = result {
                let req = LbRequest::from_service(&svc).ok();
                if let (Some(req), Ok(())) = (&req, result) {
                    for (family, _) in &req.families {
                        if let Some(l) = Self::keepers(req, &blocks, *family).first() {
                            published.push(l.addr);
                        }
                    }
                }
                condition = Some(match result {
                    Ok(()) => (
                        "True",
                        "Allocated".to_string(),
                        format!(
                            "allocated {}",
                            published
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ),
                    Err(r) => ("False", r.reason().to_string(), r.to_string()),
                });
            }
            let status = svc.status.get_or_insert_with(ServiceStatus::default);
            let before = status.clone();
            // A Service Twill serves shows exactly the addresses it holds;
            // one it no longer serves loses Twill's and keeps any other
            // controller's.
            let ingress: Vec<LoadBalancerIngress> = if result.is_some() {
                Vec::new()
            } else {
                status
                    .load_balancer
                    .as_ref()
                    .and_then(|lb| lb.ingress.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|i| {
                        i.ip.as_deref()
                            .and_then(|s| s.parse::<IpAddr>().ok())
                            .is_none_or(|a| !twills(a))
                    })
                    .collect()
            };
            let ingress: Vec<LoadBalancerIngress> = ingress
                .into_iter()
                .chain(published.iter().map(|a| LoadBalancerIngress {
                    ip: Some(a.to_string()),
                    ip_mode: Some("VIP".into()),
                    ..Default::default()
                }))
                .collect();
            status.load_balancer = match (ingress.is_empty(), &before.load_balancer) {
                (true, None) => None,
                _ => Some(LoadBalancerStatus {
                    ingress: (!ingress.is_empty()).then_some(ingress),
                }),
            };
            let mut conds: Vec<Condition> = status.conditions.clone().unwrap_or_default();
            let old = conds.iter().position(|c| c.type_ == CONDITION_LB);
            match condition {
                None => {
                    if let Some(i) = old {
                        conds.remove(i);
                    }
                }
                Some((st, reason, message)) => {
                    let keep_time = old
                        .map(|i| &conds[i])
                        .filter(|c| c.status == st)
                        .map(|c| c.last_transition_time.clone());
                    let c = Condition {
                        type_: CONDITION_LB.into(),
                        status: st.into(),
                        reason,
                        message,
                        last_transition_time: keep_time
                            .unwrap_or_else(|| Time(jiff::Timestamp::now())),
                        observed_generation: svc.metadata.generation,
                    };
                    match old {
                        Some(i) => conds[i] = c,
                        None => conds.push(c),
                    }
                }
            }
            status.conditions = (!conds.is_empty()).then_some(conds);
            if *status == before {
                return Ok(published);
            }
            match self.store.update_status(&svc).await {
                Ok(_) => return Ok(published),
                Err(e) if e.is_conflict() => continue,
                Err(e) if e.is_not_found() => return Ok(vec![]),
                Err(e) => return Err(e.into()),
            }
        }
        Err(LbError::Contended)
    }

    /// Releases what the Service holds beyond `published` (duplicates from
    /// racing allocators, addresses it no longer asks for).
    async fn release_extras(&self, req: &LbRequest, published: &[IpAddr]) -> Result<(), LbError> {
        self.release_matching(&req.namespace, &req.name, |uid, addr| {
            uid == req.uid && !published.contains(&addr)
        })
        .await
        .map(|_| ())
    }

    /// Releases everything the Service (this uid) holds.
    async fn release_all(&self, ns: &str, name: &str, uid: &str) -> Result<Vec<IpAddr>, LbError> {
        self.release_matching(ns, name, |u, _| u == uid).await
    }

    /// Releases holdings of `ns/name` by any uid but `keep`.
    async fn release_stale(
        &self,
        ns: &str,
        name: &str,
        keep: Option<&str>,
    ) -> Result<Vec<IpAddr>, LbError> {
        self.release_matching(ns, name, |u, _| Some(u) != keep)
            .await
    }

    async fn release_matching(
        &self,
        ns: &str,
        name: &str,
        pick: impl Fn(&str, IpAddr) -> bool,
    ) -> Result<Vec<IpAddr>, LbError> {
        let mut released = Vec::new();
        'attempt: for _ in 0..MAX_ATTEMPTS {
            let blocks = self.blocks().await?;
            for l in lb_addresses(&blocks) {
                if namespace_of(&l.allocation) != ns {
                    continue;
                }
                for h in holders(&l.allocation) {
                    if h.name != name || !pick(&h.uid, l.addr) {
                        continue;
                    }
                    let Some(b) = blocks
                        .iter()
                        .find(|b| b.metadata.name.as_deref() == Some(l.block.as_str()))
                    else {
                        continue;
                    };
                    let Some(next) = without_holder(b, l.allocation.ordinal, name, &h.uid, &now())
                    else {
                        continue;
                    };
                    match self.store.update(&next).await {
                        Ok(_) => {
                            tracing::info!(service = %format!("{ns}/{name}"), addr = %l.addr, "LoadBalancer address released");
                            released.push(l.addr);
                            continue 'attempt;
                        }
                        Err(e) if e.is_conflict() || e.is_not_found() => continue 'attempt,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            return Ok(released);
        }
        Err(LbError::Contended)
    }

    /// Every Service, and every holder of a LoadBalancer address whose
    /// Service is gone: what one resync pass does.
    pub async fn reconcile_all(&self) -> Result<BTreeMap<String, LbOutcome>, LbError> {
        let mut out = BTreeMap::new();
        let mut keys: Vec<(String, String)> = self
            .store
            .list::<Service>()
            .await?
            .items
            .iter()
            .map(|s| {
                (
                    s.metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                    s.metadata.name.clone().unwrap_or_default(),
                )
            })
            .collect();
        for l in lb_addresses(&self.blocks().await?) {
            for h in holders(&l.allocation) {
                keys.push((namespace_of(&l.allocation).to_string(), h.name));
            }
        }
        keys.sort();
        keys.dedup();
        for (ns, name) in keys {
            let o = self.reconcile(&ns, &name).await?;
            out.insert(format!("{ns}/{name}"), o);
        }
        Ok(out)
    }
}

/// The allocator loop the node agent starts (every node runs one; see the
/// module docs for why that is safe). A Service change reconciles that
/// Service; a change that can free or add addresses (a Service deleted or
/// no longer of type LoadBalancer, any IPPool change) reconciles every
/// Service, so a pending one gets a freed address at once. `resync` is only
/// the safety net for a failed pass: at idle nothing is listed before it.
/// Returns only on a failure of a watch; the caller restarts it after a
/// backoff.
pub async fn run(store: Store, resync: Duration) -> Result<(), LbError> {
    let alloc = LbAllocator::new(store.clone());
    let mut services = store.watch::<Service>(None);
    let mut pools = store.watch::<IPPool>(None);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + resync, resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // One event wakes the loop; every event already waiting joins it
        // (a burst of creates, and every node's status write echoing back
        // to every allocator), so each Service is reconciled once per batch
        // instead of once per event.
        let mut batch = Batch::default();
        tokio::select! {
            ev = services.next() => batch.service(ev)?,
            ev = pools.next() => batch.pool(ev)?,
            _ = tick.tick() => batch.all = true,
        }
        while let Some(ev) = services.next().now_or_never() {
            batch.service(ev)?;
        }
        while let Some(ev) = pools.next().now_or_never() {
            batch.pool(ev)?;
        }
        if batch.stopped {
            return Ok(());
        }
        // The Services named first: a deleted one's addresses are released
        // before the pass over every Service, where a pending one takes them.
        for (ns, name) in batch.keys {
            if let Err(e) = alloc.reconcile(&ns, &name).await {
                tracing::warn!(service = %format!("{ns}/{name}"), error = %e, "LoadBalancer allocation failed; retried at the next resync");
            }
        }
        if batch.all
            && let Err(e) = alloc.reconcile_all().await
        {
            tracing::warn!(error = %e, "LoadBalancer resync failed; retried at the next one");
        }
    }
}

/// The Services one pass of [`run`] reconciles: those named by the events
/// taken together, or all of them when an event can free or add addresses.
#[derive(Default)]
struct Batch {
    keys: BTreeSet<(String, String)>,
    all: bool,
    /// A watch ended (the store closed): the loop returns.
    stopped: bool,
}

impl Batch {
    fn service(
        &mut self,
        ev: Option<Result<WatchEvent<Service>, StoreError>>,
    ) -> Result<(), LbError> {
        match ev {
            None => self.stopped = true,
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(WatchEvent::Resync { items, .. })) => {
                self.keys.extend(items.iter().map(key_of))
            }
            Some(Ok(WatchEvent::Applied(s))) => {
                self.all |= !is_load_balancer(&s);
                self.keys.insert(key_of(&s));
            }
            Some(Ok(WatchEvent::Deleted(s))) => {
                self.all = true;
                self.keys.insert(key_of(&s));
            }
        }
        Ok(())
    }

    fn pool(&mut self, ev: Option<Result<WatchEvent<IPPool>, StoreError>>) -> Result<(), LbError> {
        match ev {
            None => self.stopped = true,
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(_)) => self.all = true,
        }
        Ok(())
    }
}

/// Whether a Service is of type LoadBalancer (any class: a Service that
/// stops being one, or moves to another class, may free addresses).
fn is_load_balancer(s: &Service) -> bool {
    s.spec.as_ref().and_then(|p| p.type_.as_deref()) == Some("LoadBalancer")
}

fn key_of(s: &Service) -> (String, String) {
    (
        s.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        s.metadata.name.clone().unwrap_or_default(),
    )
}
