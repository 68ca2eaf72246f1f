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
//! it) or an extra address (the next pass releases it). Nothing is released
//! as "gone" on the strength of a read taken before the blocks: a name the
//! blocks hold for another incarnation than the one read is read again
//! first (`LbAllocator::settle`).
//!
//! One pass reconciles many Services against one reading of the pools and
//! blocks ([`View`]), kept current with the pass's own writes; a write that
//! loses a race re-reads the block it wrote. The loop skips a Service event
//! that changed nothing the allocator reads (every node's status write
//! echoing to every allocator).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, Service, ServiceStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use twill_api::resources::{IPAMBlock, IPPool};
use twill_api::service::{CONDITION_LB, is_twill_lb};
use twill_api::{Store, StoreError, WatchEvent};

use crate::lb::{
    LbRefusal, LbRequest, LbStep, holders, is_lb, namespace_of, plan_lb, without_holder,
};
use crate::plan::{Family, block_net};

/// How many times one step re-reads and retries after losing a race.
const MAX_ATTEMPTS: usize = 64;

/// Services one pass serves against one reading of the blocks: their
/// statuses are written once the chunk's addresses are, so a burst shows
/// its first addresses before the last ones are allocated.
const CHUNK: usize = 100;

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

/// The condition reason of a PreferDualStack Service served in its first
/// family only; the message says why the second was not given.
pub const REASON_PARTIAL: &str = "PartiallyAllocated";

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

type Key = (String, String);

fn key_of(s: &Service) -> Key {
    (
        s.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        s.metadata.name.clone().unwrap_or_default(),
    )
}

/// One holder's claim on a LoadBalancer address, as the blocks record it.
#[derive(Clone, Debug)]
struct Holding {
    addr: IpAddr,
    uid: String,
    handle: String,
    block: String,
}

/// The pools and blocks as one pass sees them, with the LoadBalancer
/// holdings indexed by (namespace, Service name).
#[derive(Default)]
struct View {
    pools: Vec<IPPool>,
    blocks: Vec<IPAMBlock>,
    held: HashMap<Key, Vec<Holding>>,
}

impl View {
    async fn load(store: &Store) -> Result<View, StoreError> {
        let mut v = View {
            pools: store.list::<IPPool>().await?.items,
            ..Default::default()
        };
        v.reload_blocks(store).await?;
        Ok(v)
    }

    async fn reload_blocks(&mut self, store: &Store) -> Result<(), StoreError> {
        self.blocks = store.list::<IPAMBlock>().await?.items;
        self.held.clear();
        for i in 0..self.blocks.len() {
            self.index(i);
        }
        Ok(())
    }

    fn holdings_of(b: &IPAMBlock) -> Vec<(Key, Holding)> {
        let Some(net) = block_net(b) else {
            return vec![];
        };
        let name = b.metadata.name.clone().unwrap_or_default();
        let mut out = Vec::new();
        for a in b.spec.allocations.iter().filter(|a| is_lb(a)) {
            let Some(addr) = crate::blockmath::addr_at(&net, a.ordinal) else {
                continue;
            };
            let ns = namespace_of(a).to_string();
            for h in holders(a) {
                out.push((
                    (ns.clone(), h.name),
                    Holding {
                        addr,
                        uid: h.uid,
                        handle: a.handle.clone(),
                        block: name.clone(),
                    },
                ));
            }
        }
        out
    }

    fn index(&mut self, i: usize) {
        for (k, h) in Self::holdings_of(&self.blocks[i]) {
            self.held.entry(k).or_default().push(h);
        }
    }

    fn unindex(&mut self, i: usize) {
        let name = self.blocks[i].metadata.name.clone().unwrap_or_default();
        for (k, _) in Self::holdings_of(&self.blocks[i]) {
            if let Some(v) = self.held.get_mut(&k) {
                v.retain(|h| h.block != name);
                if v.is_empty() {
                    self.held.remove(&k);
                }
            }
        }
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.blocks
            .iter()
            .position(|b| b.metadata.name.as_deref() == Some(name))
    }

    fn block(&self, name: &str) -> Option<&IPAMBlock> {
        self.position(name).map(|i| &self.blocks[i])
    }

    /// Puts a block as written or read (replacing the one of its name), or
    /// removes it (`None`: it is gone).
    fn put(&mut self, name: &str, b: Option<IPAMBlock>) {
        if let Some(i) = self.position(name) {
            self.unindex(i);
            match b {
                Some(b) => {
                    self.blocks[i] = b;
                    self.index(i);
                }
                None => {
                    self.blocks.remove(i);
                }
            }
        } else if let Some(b) = b {
            self.blocks.push(b);
            self.index(self.blocks.len() - 1);
        }
    }

    /// Re-reads one block after a write to it lost a race.
    async fn refresh(&mut self, store: &Store, name: &str) -> Result<(), StoreError> {
        let b = store.get::<IPAMBlock>(None, name).await?;
        self.put(name, b);
        Ok(())
    }

    fn held(&self, ns: &str, name: &str) -> &[Holding] {
        self.held
            .get(&(ns.to_string(), name.to_string()))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The addresses of a family the Service may keep, lowest first: held
    /// under its current handle and, if it asks for one, that one.
    fn keepers(&self, req: &LbRequest, family: Family) -> Vec<IpAddr> {
        let want = req.requested_in(family);
        let handle = req.handle();
        let mut v: Vec<IpAddr> = self
            .held(&req.namespace, &req.name)
            .iter()
            .filter(|h| h.uid == req.uid && h.handle == handle)
            .map(|h| h.addr)
            .filter(|a| Family::of_addr(a) == family)
            .filter(|a| want.is_none_or(|w| w == *a))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Whether an address is Twill's to write in a status: held in a
    /// LoadBalancer allocation or inside a LoadBalancer pool.
    fn is_twills(&self, a: IpAddr) -> bool {
        self.held.values().flatten().any(|h| h.addr == a)
            || self
                .pools
                .iter()
                .filter(|p| p.spec.allows_load_balancers())
                .filter_map(|p| p.spec.network())
                .any(|n| n.contains(a))
    }
}

/// What the allocation phase decided for one Service, for its status.
#[derive(Clone, Debug)]
enum Verdict {
    /// Not Twill's LoadBalancer (any more): clear Twill's status, release all.
    NotServed,
    /// Served: every required family held, `missing` says why an optional
    /// one (PreferDualStack's second) is not.
    Served { missing: Vec<(Family, LbRefusal)> },
    /// Pending for this reason (holds nothing).
    Pending(LbRefusal),
    /// The Service's request is malformed: pending, keeping what it holds.
    Invalid(LbRefusal),
}

/// A fingerprint of what the allocator reads of a Service: identity,
/// labels, annotations, spec, and the parts of the status it writes. A
/// Service event whose fingerprint the loop has already reconciled (a
/// status write echoing back, another node writing the same status) needs
/// no pass.
fn fingerprint(s: &Service) -> u64 {
    hash_json(&serde_json::json!({"in": inputs(s), "out": shown(s)}))
}

/// What the allocator decides from: identity, labels, annotations, spec.
fn inputs(s: &Service) -> serde_json::Value {
    serde_json::json!({
        "uid": s.metadata.uid,
        "deleting": s.metadata.deletion_timestamp,
        "labels": s.metadata.labels,
        "annotations": s.metadata.annotations,
        "spec": s.spec,
    })
}

fn hash_json(v: &serde_json::Value) -> u64 {
    let mut h = DefaultHasher::new();
    v.to_string().hash(&mut h);
    h.finish()
}

/// What the allocator writes: the ingress and its condition.
fn shown(s: &Service) -> serde_json::Value {
    let cond = s
        .status
        .as_ref()
        .and_then(|st| st.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == CONDITION_LB))
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()));
    serde_json::json!({
        "lb": s.status.as_ref().and_then(|st| st.load_balancer.as_ref()),
        "cond": cond,
    })
}

/// What publishing a status ended in.
struct Published {
    /// The addresses the status shows.
    addrs: Vec<IpAddr>,
    /// The Service's fingerprint as left; `None`: gone, another
    /// incarnation, or changed since it was read (its own event brings it
    /// back; nothing is released meanwhile).
    fp: Option<u64>,
}

/// What one pass did: each Service's outcome, the fingerprint of each
/// Service as the pass left it (`None`: gone, or not known), and whether
/// it released any address (a pending Service may take it).
#[derive(Default)]
struct Pass {
    outcomes: BTreeMap<String, LbOutcome>,
    seen: Vec<(Key, Option<u64>)>,
    freed: bool,
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

    /// Brings one Service's addresses and status in line with what it asks for.
    pub async fn reconcile(&self, namespace: &str, name: &str) -> Result<LbOutcome, LbError> {
        let key = (namespace.to_string(), name.to_string());
        let mut p = self.pass(self.read(&[key]).await?, false).await?;
        Ok(p.outcomes
            .remove(&format!("{namespace}/{name}"))
            .unwrap_or(LbOutcome::NotServed { released: vec![] }))
    }

    /// Every Service, and every holder of a LoadBalancer address whose
    /// Service is gone: what one resync pass does.
    pub async fn reconcile_all(&self) -> Result<BTreeMap<String, LbOutcome>, LbError> {
        Ok(self.pass_all().await?.outcomes)
    }

    async fn pass_all(&self) -> Result<Pass, LbError> {
        let items = self
            .store
            .list::<Service>()
            .await?
            .items
            .into_iter()
            .map(|s| (key_of(&s), Some(s)))
            .collect();
        self.pass(items, true).await
    }

    /// The Services of `keys` as they are now (`None`: gone): one listing
    /// for many, one read each for a few.
    async fn read(&self, keys: &[Key]) -> Result<BTreeMap<Key, Option<Service>>, LbError> {
        if keys.len() > CHUNK {
            let mut all: HashMap<Key, Service> = self
                .store
                .list::<Service>()
                .await?
                .items
                .into_iter()
                .map(|s| (key_of(&s), s))
                .collect();
            return Ok(keys.iter().map(|k| (k.clone(), all.remove(k))).collect());
        }
        let mut out = BTreeMap::new();
        for k in keys {
            let s = self.store.get::<Service>(Some(&k.0), &k.1).await?;
            out.insert(k.clone(), s);
        }
        Ok(out)
    }

    /// Reconciles the Services read (read before the blocks, which the
    /// status CAS relies on). `all`: also every holder whose Service is
    /// gone. Services gone or no longer served are released first, so a
    /// pending Service of the same pass can take what they held.
    async fn pass(
        &self,
        mut items: BTreeMap<Key, Option<Service>>,
        all: bool,
    ) -> Result<Pass, LbError> {
        let mut view = View::load(&self.store).await?;
        if all {
            for k in view.held.keys() {
                items.entry(k.clone()).or_insert(None);
            }
        }
        let mut out = Pass::default();
        let mut served = Vec::new();
        for (key, read) in items {
            let label = format!("{}/{}", key.0, key.1);
            let (svc, gone) = self.settle(&view, &key, read).await?;
            // Incarnations of the name that no longer exist hold nothing any more.
            let stale = self
                .release(&mut view, &key, |u, _| gone.contains(u))
                .await?;
            out.freed |= !stale.is_empty();
            let Some(svc) = svc else {
                out.outcomes
                    .insert(label, LbOutcome::NotServed { released: stale });
                out.seen.push((key, None));
                continue;
            };
            let uid = svc.metadata.uid.clone().unwrap_or_default();
            if !is_twill_lb(&svc) {
                let p = self.publish(&mut view, svc, &Verdict::NotServed).await?;
                let released = match p.fp {
                    Some(_) => self.release(&mut view, &key, |u, _| u == uid).await?,
                    None => vec![],
                };
                let fp = p.fp;
                out.freed |= !released.is_empty();
                out.outcomes
                    .insert(label, LbOutcome::NotServed { released });
                out.seen.push((key, fp));
                continue;
            }
            served.push((key, svc));
        }
        for chunk in served.chunks(CHUNK) {
            let mut verdicts = Vec::with_capacity(chunk.len());
            for (_, svc) in chunk {
                verdicts.push(self.allocate(&mut view, svc).await?);
            }
            // Statuses from a fresh reading of the blocks (still read after the Services).
            view.reload_blocks(&self.store).await?;
            for ((key, svc), verdict) in chunk.iter().zip(verdicts) {
                let uid = svc.metadata.uid.clone().unwrap_or_default();
                let p = self.publish(&mut view, svc.clone(), &verdict).await?;
                out.seen.push((key.clone(), p.fp));
                let published = p.addrs;
                let outcome = match verdict {
                    // An invalid request keeps what it holds (a typo does not give an address away).
                    Verdict::Invalid(r) => LbOutcome::Pending(r),
                    // Changed or gone since it was read: the next pass decides.
                    Verdict::Pending(r) if p.fp.is_none() => LbOutcome::Pending(r),
                    _ if p.fp.is_none() => LbOutcome::Allocated(published),
                    v => {
                        // Only now that the status no longer shows them: give back extras.
                        let extra = self
                            .release(&mut view, key, |u, a| u == uid && !published.contains(&a))
                            .await?;
                        out.freed |= !extra.is_empty();
                        match v {
                            Verdict::Pending(r) => LbOutcome::Pending(r),
                            _ => LbOutcome::Allocated(published),
                        }
                    }
                };
                out.outcomes.insert(format!("{}/{}", key.0, key.1), outcome);
            }
        }
        Ok(out)
    }

    /// The Service to reconcile under `key` and the uids of the
    /// incarnations of its name that are gone (whose holdings go).
    ///
    /// `read` was read before the blocks. A holding of another incarnation
    /// than the one read (of any, when none was read) may belong to one
    /// created after that read and served by another allocator since: a
    /// listing taken just before a create must not release the new
    /// Service's address while its status shows it. So the Service is read
    /// again, now after the blocks; every uid the blocks hold but the
    /// current Service's is gone for good (uids are never reused), and a
    /// holding written after the blocks were read is never released.
    async fn settle(
        &self,
        view: &View,
        key: &Key,
        read: Option<Service>,
    ) -> Result<(Option<Service>, BTreeSet<String>), LbError> {
        let uid_of = |s: &Option<Service>| {
            s.as_ref()
                .map(|s| s.metadata.uid.clone().unwrap_or_default())
        };
        let others = |uid: Option<String>| -> BTreeSet<String> {
            view.held(&key.0, &key.1)
                .iter()
                .filter(|h| uid.as_ref() != Some(&h.uid))
                .map(|h| h.uid.clone())
                .collect()
        };
        if others(uid_of(&read)).is_empty() {
            return Ok((read, BTreeSet::new()));
        }
        let now = self.store.get::<Service>(Some(&key.0), &key.1).await?;
        let gone = others(uid_of(&now));
        Ok((now, gone))
    }

    /// Gives a served Service an address of every family it asks for, all
    /// or nothing for the required ones.
    async fn allocate(&self, view: &mut View, svc: &Service) -> Result<Verdict, LbError> {
        let req = match LbRequest::from_service(svc) {
            Ok(r) => r,
            Err(r) => return Ok(Verdict::Invalid(r)),
        };
        // All or nothing, as the API server allocates cluster IPs and as
        // MetalLB does: a Service that cannot get every family it requires
        // holds none (a pending Service keeping half its addresses would
        // starve others). Checked before anything is written, so a pending
        // Service does not allocate and release on every pass; a race lost
        // after the check ends the same way (the release after publishing).
        for (family, required) in &req.families {
            if !required || !view.keepers(&req, *family).is_empty() {
                continue;
            }
            if let Err(r) = plan_lb(&view.pools, &view.blocks, &req, *family, &now()) {
                return Ok(Verdict::Pending(r));
            }
        }
        let mut missing = Vec::new();
        for (family, required) in &req.families {
            match self.ensure(view, &req, *family).await? {
                Ok(_) => {}
                // PreferDualStack's second family: nice to have, never a
                // reason to wait; the condition says why it is missing.
                Err(r) if !required => missing.push((*family, r)),
                Err(r) => return Ok(Verdict::Pending(r)),
            }
        }
        Ok(Verdict::Served { missing })
    }

    /// Makes sure the Service holds an address of `family` (one CAS write;
    /// a lost race re-reads the block and plans again).
    async fn ensure(
        &self,
        view: &mut View,
        req: &LbRequest,
        family: Family,
    ) -> Result<Result<IpAddr, LbRefusal>, LbError> {
        for _ in 0..MAX_ATTEMPTS {
            if let Some(a) = view.keepers(req, family).first() {
                return Ok(Ok(*a));
            }
            let step = match plan_lb(&view.pools, &view.blocks, req, family, &now()) {
                Ok(s) => s,
                Err(r) => return Ok(Err(r)),
            };
            let addr = step.addr();
            let (name, written) = match step {
                LbStep::Update { block, .. } => (
                    block.metadata.name.clone().unwrap_or_default(),
                    self.store.update(&block).await,
                ),
                LbStep::Claim { block, .. } => (
                    block.metadata.name.clone().unwrap_or_default(),
                    self.store.create(&block).await,
                ),
            };
            match written {
                Ok(b) => {
                    view.put(&name, Some(b));
                    tracing::info!(service = %req.key(), %addr, "LoadBalancer address allocated");
                    return Ok(Ok(addr));
                }
                Err(e) if e.is_conflict() || e.is_not_found() || e.is_already_exists() => {
                    view.refresh(&self.store, &name).await?
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(LbError::Contended)
    }

    /// Writes the Service's status from the view (blocks read after the
    /// Service), a CAS against the Service read. Returns the addresses the
    /// status shows and the fingerprint of the Service as left (`None`:
    /// gone or another incarnation).
    async fn publish(
        &self,
        view: &mut View,
        mut svc: Service,
        verdict: &Verdict,
    ) -> Result<Published, LbError> {
        let (ns, name) = key_of(&svc);
        let read = hash_json(&inputs(&svc));
        let gone = Published {
            addrs: vec![],
            fp: None,
        };
        for _ in 0..MAX_ATTEMPTS {
            let (next, addrs) = status_for(view, &svc, verdict);
            if next.status == svc.status {
                let fp = Some(fingerprint(&svc));
                return Ok(Published { addrs, fp });
            }
            match self.store.update_status(&next).await {
                Ok(written) => {
                    let fp = Some(fingerprint(&written));
                    return Ok(Published { addrs, fp });
                }
                Err(e) if e.is_conflict() => {
                    let Some(cur) = self.store.get::<Service>(Some(&ns), &name).await? else {
                        return Ok(gone);
                    };
                    // Another incarnation, or changed in what the verdict
                    // was made from: its own event brings it back.
                    if hash_json(&inputs(&cur)) != read {
                        return Ok(gone);
                    }
                    svc = cur;
                    // Most often another allocator wrote what this one
                    // would; otherwise the blocks are read again (after
                    // the Service) before writing.
                    if status_for(view, &svc, verdict).0.status != svc.status {
                        view.reload_blocks(&self.store).await?;
                    }
                }
                Err(e) if e.is_not_found() => return Ok(gone),
                Err(e) => return Err(e.into()),
            }
        }
        Err(LbError::Contended)
    }

    /// Releases the holdings of `key` that `pick(uid, addr)` selects, one
    /// CAS write each (a lost race re-reads the block).
    async fn release(
        &self,
        view: &mut View,
        key: &Key,
        pick: impl Fn(&str, IpAddr) -> bool,
    ) -> Result<Vec<IpAddr>, LbError> {
        let (ns, name) = key;
        let mut released = Vec::new();
        let mut attempts = 0;
        // Holdings the block has nothing to remove for (left alone, as before).
        let mut skip: Vec<(String, IpAddr)> = Vec::new();
        loop {
            let Some(h) = view
                .held(ns, name)
                .iter()
                .find(|h| pick(&h.uid, h.addr) && !skip.contains(&(h.block.clone(), h.addr)))
                .cloned()
            else {
                return Ok(released);
            };
            attempts += 1;
            if attempts > MAX_ATTEMPTS {
                return Err(LbError::Contended);
            }
            let next = view.block(&h.block).and_then(|b| {
                let net = block_net(b)?;
                let ordinal = crate::blockmath::ordinal_of(&net, h.addr)?;
                without_holder(b, ordinal, name, &h.uid, &now())
            });
            let Some(next) = next else {
                skip.push((h.block.clone(), h.addr));
                continue;
            };
            match self.store.update(&next).await {
                Ok(b) => {
                    view.put(&h.block, Some(b));
                    tracing::info!(service = %format!("{ns}/{name}"), addr = %h.addr, "LoadBalancer address released");
                    released.push(h.addr);
                }
                Err(e) if e.is_conflict() || e.is_not_found() => {
                    view.refresh(&self.store, &h.block).await?
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The Service with the status the verdict and the view give it, and the
/// addresses that status shows.
fn status_for(view: &View, svc: &Service, verdict: &Verdict) -> (Service, Vec<IpAddr>) {
    let mut svc = svc.clone();
    let mut published = Vec::new();
    let condition = match verdict {
        Verdict::NotServed => None,
        Verdict::Invalid(r) | Verdict::Pending(r) => {
            Some(("False", r.reason().to_string(), r.to_string()))
        }
        Verdict::Served { missing } => {
            if let Ok(req) = LbRequest::from_service(&svc) {
                for (family, _) in &req.families {
                    if let Some(a) = view.keepers(&req, *family).first() {
                        published.push(*a);
                    }
                }
            }
            let shown = published
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            Some(if missing.is_empty() {
                (
                    "True",
                    "Allocated".to_string(),
                    format!("allocated {shown}"),
                )
            } else {
                let why = missing
                    .iter()
                    .map(|(f, r)| format!("no {f} address (PreferDualStack): {r}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                (
                    "True",
                    REASON_PARTIAL.to_string(),
                    format!("allocated {shown}; {why}"),
                )
            })
        }
    };
    let generation = svc.metadata.generation;
    let orig = svc.status.clone();
    let status = svc.status.get_or_insert_with(ServiceStatus::default);
    let before = status.clone();
    // A Service Twill serves shows exactly the addresses it holds; one it
    // no longer serves loses Twill's and keeps any other controller's.
    let ingress: Vec<LoadBalancerIngress> = if condition.is_some() {
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
                    .is_none_or(|a| !view.is_twills(a))
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
            let prev = old.map(|i| &conds[i]);
            // Unchanged: the condition as it is (its time included).
            let same = prev.is_some_and(|c| {
                c.status == st
                    && c.reason == reason
                    && c.message == message
                    && c.observed_generation == generation
            });
            if !same {
                let keep_time = prev
                    .filter(|c| c.status == st)
                    .map(|c| c.last_transition_time.clone());
                let c = Condition {
                    type_: CONDITION_LB.into(),
                    status: st.into(),
                    reason,
                    message,
                    last_transition_time: keep_time.unwrap_or_else(|| Time(jiff::Timestamp::now())),
                    observed_generation: generation,
                };
                match old {
                    Some(i) => conds[i] = c,
                    None => conds.push(c),
                }
            }
        }
    }
    status.conditions = (!conds.is_empty()).then_some(conds);
    if *status == before {
        // Nothing to write (an absent status stays absent).
        svc.status = orig;
    }
    (svc, published)
}

/// The allocator loop the node agent starts (every node runs one; see the
/// module docs for why that is safe). Service events name the Services a
/// pass reconciles; an event whose Service this loop already left in the
/// state it shows is skipped ([`fingerprint`]). A pass that released an
/// address, and any IPPool change, is followed by a pass over every
/// Service, so a pending one gets a freed address at once. A failed pass
/// is retried with its Services after a backoff (1 s doubling to 30 s);
/// `resync` is the safety net beyond that. Returns only on a failure of a
/// watch; the caller restarts it after a backoff.
pub async fn run(store: Store, resync: Duration) -> Result<(), LbError> {
    let alloc = LbAllocator::new(store.clone());
    let mut services = store.watch::<Service>(None);
    let mut pools = store.watch::<IPPool>(None);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + resync, resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The fingerprint of each Service as the last pass left it.
    let mut seen: HashMap<Key, u64> = HashMap::new();
    // The work of a failed pass, retried when `retry` comes (or with the next event).
    let mut failed = Batch::default();
    let mut retry: Option<tokio::time::Instant> = None;
    let mut backoff = RETRY_MIN;
    loop {
        // One event wakes the loop; every event already waiting joins it
        // (a burst of creates), so each Service is reconciled once per
        // pass instead of once per event.
        let mut batch = std::mem::take(&mut failed);
        let retry_due = async {
            match retry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = services.next() => batch.service(ev, &mut seen)?,
            ev = pools.next() => batch.pool(ev)?,
            _ = tick.tick() => batch.all = true,
            _ = retry_due => {}
        }
        retry = None;
        while let Some(ev) = services.next().now_or_never() {
            batch.service(ev, &mut seen)?;
        }
        while let Some(ev) = pools.next().now_or_never() {
            batch.pool(ev)?;
        }
        if batch.stopped {
            return Ok(());
        }
        let mut all = batch.all;
        let mut ok = true;
        if !all && !batch.keys.is_empty() {
            let keys: Vec<Key> = batch.keys.iter().cloned().collect();
            let done = match alloc.read(&keys).await {
                Ok(items) => alloc.pass(items, false).await,
                Err(e) => Err(e),
            };
            match done {
                Ok(p) => {
                    all = p.freed;
                    remember(&mut seen, p.seen);
                }
                Err(e) => {
                    tracing::warn!(error = %e, services = keys.len(), retry_in = ?backoff, "LoadBalancer allocation failed");
                    failed.keys = batch.keys;
                    ok = false;
                }
            }
        }
        if all {
            match alloc.pass_all().await {
                Ok(p) => remember(&mut seen, p.seen),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "LoadBalancer pass over every Service failed");
                    failed.all = true;
                    ok = false;
                }
            }
        }
        if ok {
            backoff = RETRY_MIN;
        } else {
            retry = Some(tokio::time::Instant::now() + backoff);
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }
}

/// First and longest wait before a failed pass is retried.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

fn remember(seen: &mut HashMap<Key, u64>, pass: Vec<(Key, Option<u64>)>) {
    for (k, fp) in pass {
        match fp {
            Some(f) => {
                seen.insert(k, f);
            }
            None => {
                seen.remove(&k);
            }
        }
    }
}

/// The Services one pass of [`run`] reconciles: those named by the events
/// taken together, or all of them.
#[derive(Default)]
struct Batch {
    keys: BTreeSet<Key>,
    all: bool,
    /// A watch ended (the store closed): the loop returns.
    stopped: bool,
}

impl Batch {
    fn service(
        &mut self,
        ev: Option<Result<WatchEvent<Service>, StoreError>>,
        seen: &mut HashMap<Key, u64>,
    ) -> Result<(), LbError> {
        match ev {
            None => self.stopped = true,
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(WatchEvent::Resync { items, .. })) => {
                seen.clear();
                self.all = true;
                self.keys.extend(items.iter().map(key_of))
            }
            Some(Ok(WatchEvent::Applied(s))) => {
                let k = key_of(&s);
                if seen.get(&k) != Some(&fingerprint(&s)) {
                    self.keys.insert(k);
                }
            }
            Some(Ok(WatchEvent::Deleted(s))) => {
                let k = key_of(&s);
                seen.remove(&k);
                self.keys.insert(k);
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

#[cfg(test)]
mod tests {
    //! Passes that read the Services before another allocator served a new
    //! one: the reads a real pass takes, with the other allocator's writes
    //! placed between them (the race a lab run showed: a resync listing
    //! taken just before a create released the new Service's address).

    use super::*;
    use crate::lb::held_by;
    use twill_api::resources::{AllowedUse, IPPoolSpec};
    use twill_api::store::embedded::EmbeddedStore;

    fn open(path: &std::path::Path) -> Store {
        Store::new(EmbeddedStore::open(path).expect("open store"))
    }

    fn web() -> Service {
        serde_json::from_value(serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}))
        .expect("service")
    }

    /// A store with one LoadBalancer pool, and two allocators on it (each its
    /// own connection, as two node agents).
    async fn setup() -> (tempfile::TempDir, Store, LbAllocator, LbAllocator) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("lb.db");
        let store = open(&path);
        let pool = IPPool::new(
            "lb",
            IPPoolSpec {
                cidr: "192.0.2.0/28".into(),
                allowed_uses: vec![AllowedUse::LoadBalancer],
                ..Default::default()
            },
        );
        store.create(&pool).await.expect("pool");
        let late = LbAllocator::new(open(&path));
        let other = LbAllocator::new(open(&path));
        (dir, store, late, other)
    }

    fn key() -> Key {
        ("shop".into(), "web".into())
    }

    /// The addresses the blocks give to the Service of this uid.
    async fn held(store: &Store, uid: &str) -> Vec<IpAddr> {
        let blocks = store.list::<IPAMBlock>().await.expect("blocks").items;
        held_by(&blocks, "shop", "web", uid)
            .iter()
            .map(|l| l.addr)
            .collect()
    }

    /// The Service's uid and the addresses its status shows.
    async fn shown(store: &Store) -> (String, Vec<IpAddr>) {
        let s = store
            .get::<Service>(Some("shop"), "web")
            .await
            .expect("get")
            .expect("web exists");
        let ips = twill_api::service::ingress_ips(&s).collect();
        (s.metadata.uid.unwrap_or_default(), ips)
    }

    #[tokio::test]
    async fn a_pass_that_read_before_a_service_existed_leaves_its_address_alone() {
        let (_dir, store, late, other) = setup().await;
        let first: IpAddr = "192.0.2.1".parse().expect("addr");

        // A resync's listing and one event's read, both taken before the create.
        let listing: BTreeMap<Key, Option<Service>> = BTreeMap::new();
        let absent = late.read(&[key()]).await.expect("read");
        assert_eq!(absent.get(&key()), Some(&None));
        store.create(&web()).await.expect("create web");
        let served = other.reconcile("shop", "web").await.expect("reconcile");
        assert_eq!(served, LbOutcome::Allocated(vec![first]));
        let (uid, ips) = shown(&store).await;
        assert_eq!(ips, vec![first]);

        // The late passes see the holding in the blocks: the Service is served, not gone.
        for (what, items, all) in [("resync", listing.clone(), true), ("event", absent, false)] {
            let p = late.pass(items, all).await.expect("late pass");
            assert_eq!(
                p.outcomes.get("shop/web"),
                Some(&LbOutcome::Allocated(vec![first])),
                "{what}"
            );
            assert_eq!(held(&store, &uid).await, vec![first], "{what}");
            assert_eq!(shown(&store).await, (uid.clone(), vec![first]), "{what}");
        }

        // The same stale listing once the Service really is gone releases its address.
        store
            .delete::<Service>(Some("shop"), "web", None)
            .await
            .expect("delete");
        let p = late.pass(listing, true).await.expect("pass after delete");
        assert_eq!(
            p.outcomes.get("shop/web"),
            Some(&LbOutcome::NotServed {
                released: vec![first]
            })
        );
        assert!(held(&store, &uid).await.is_empty());
    }

    #[tokio::test]
    async fn a_pass_that_read_an_old_incarnation_keeps_the_new_ones_address() {
        let (_dir, store, late, other) = setup().await;

        store.create(&web()).await.expect("create web");
        let first = other.reconcile("shop", "web").await.expect("first");
        assert!(
            matches!(&first, LbOutcome::Allocated(a) if a.len() == 1),
            "{first:?}"
        );
        let (old_uid, _) = shown(&store).await;
        // `late` reads the first incarnation; then the name is deleted and
        // created again, and another allocator serves the new one while the
        // first one's holding is still in the blocks (its release not run yet).
        let stale = late.read(&[key()]).await.expect("read");
        store
            .delete::<Service>(Some("shop"), "web", None)
            .await
            .expect("delete");
        store.create(&web()).await.expect("create again");
        let LbOutcome::Allocated(new_ips) = other.reconcile("shop", "web").await.expect("second")
        else {
            panic!("the second incarnation got no address");
        };
        let (new_uid, shown_ips) = shown(&store).await;
        assert_ne!(old_uid, new_uid);
        assert_eq!(shown_ips, new_ips);
        // `other` released the first incarnation's address while serving the second.
        assert!(held(&store, &old_uid).await.is_empty());

        let p = late.pass(stale, false).await.expect("late pass");
        assert_eq!(
            p.outcomes.get("shop/web"),
            Some(&LbOutcome::Allocated(new_ips.clone()))
        );
        assert_eq!(held(&store, &new_uid).await, new_ips);
        assert_eq!(shown(&store).await, (new_uid, new_ips));
    }
}
