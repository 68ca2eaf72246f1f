//! The allocator: executes the plans of [`crate::plan`] against the
//! datastore. Every allocation or release is exactly one compare-and-swap
//! write of one IPAMBlock (a claim is a create, which fails if someone else
//! created the block first); on conflict it re-reads and replans. So two
//! processes, two nodes, or a process killed between any two writes can never
//! give one address to two holders: the worst a crash leaves is an allocation
//! whose holder never got it, which reconcile frees by handle.
//!
//! Within one process, operations take turns (one async lock) and plan
//! against a cache of the blocks that their own writes keep current. Without
//! it, every concurrent pod on a node would race its neighbours for the same
//! block and lose most rounds. The cache is only a guess: correctness still
//! comes from the compare-and-swap, and any conflict (another node wrote)
//! drops the cache and re-reads.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;
use twill_api::resources::{Allocation, IPAMBlock, IPPool};
use twill_api::{Store, StoreError};

use crate::blockmath::{addr_at, ordinal_of};
use crate::plan::{self, Family, PlanError, Release, Step, block_net, eligible_pools};
use crate::{ATTR_CREATED, ATTR_NODE};

/// How many times one operation re-reads and retries after losing a race.
const MAX_ATTEMPTS: usize = 64;

/// IPAM failures.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("datastore: {0}")]
    Store(#[from] StoreError),
    #[error("gave up after {MAX_ATTEMPTS} attempts: other writers kept changing the same blocks")]
    Contended,
    #[error("address {0} is not in any IPAM block")]
    NotAllocated(IpAddr),
}

/// A request for a pod's addresses.
#[derive(Clone, Debug, Default)]
pub struct AssignRequest {
    /// Who will hold the addresses (the container ID).
    pub handle: String,
    /// Specific addresses wanted (CNI `IP=` or a pod annotation); a family
    /// without one gets any free address.
    pub requested: Vec<IpAddr>,
    /// Recorded with the allocation: namespace, pod, interface.
    pub attributes: BTreeMap<String, String>,
    /// Only these pools (by name); empty means every pool that selects the node.
    pub pools: Vec<String>,
}

/// One address handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assigned {
    pub addr: IpAddr,
    /// The block's network and object name.
    pub block: IpNetwork,
    pub block_name: String,
    /// Sequence number of the allocation inside its block.
    pub sequence: u64,
    /// Whether the block belongs to another node (announce as a host route).
    pub borrowed: bool,
}

/// One address given back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Released {
    pub addr: IpAddr,
    pub block_name: String,
    pub allocation: Allocation,
}

/// Block IPAM for one node.
#[derive(Clone, Debug)]
pub struct Ipam {
    store: Store,
    node: String,
    cache: std::sync::Arc<tokio::sync::Mutex<BlockCache>>,
}

/// The blocks as this process last saw or wrote them; `None` when unknown.
#[derive(Debug, Default)]
struct BlockCache {
    blocks: Option<BTreeMap<String, IPAMBlock>>,
}

impl BlockCache {
    async fn get(&mut self, store: &Store) -> Result<Vec<IPAMBlock>, StoreError> {
        if self.blocks.is_none() {
            let listed = store.list::<IPAMBlock>().await?.items;
            self.blocks = Some(
                listed
                    .into_iter()
                    .map(|b| (b.metadata.name.clone().unwrap_or_default(), b))
                    .collect(),
            );
        }
        Ok(self
            .blocks
            .as_ref()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default())
    }

    fn put(&mut self, b: IPAMBlock) {
        if let Some(m) = &mut self.blocks {
            m.insert(b.metadata.name.clone().unwrap_or_default(), b);
        }
    }

    fn forget(&mut self) {
        self.blocks = None;
    }

    fn is_known(&self) -> bool {
        self.blocks.is_some()
    }
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

impl Ipam {
    pub fn new(store: Store, node: impl Into<String>) -> Self {
        Ipam {
            store,
            node: node.into(),
            cache: Default::default(),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The node's labels (from its Node object; none if it has no object yet).
    async fn node_labels(&self) -> Result<BTreeMap<String, String>, StoreError> {
        Ok(self
            .store
            .get::<Node>(None, &self.node)
            .await?
            .and_then(|n| n.metadata.labels)
            .unwrap_or_default())
    }

    /// The families this node can get addresses in (an enabled pool selects it).
    pub async fn families(&self) -> Result<Vec<Family>, IpamError> {
        let pools = self.store.list::<IPPool>().await?.items;
        let labels = self.node_labels().await?;
        Ok([Family::V4, Family::V6]
            .into_iter()
            .filter(|f| !eligible_pools(&pools, &labels, *f).is_empty())
            .collect())
    }

    /// Gives the handle one address of every family that has a pool for this
    /// node (one of each in dual stack). A retried request returns what the
    /// handle already holds. If a later family fails, the earlier ones are
    /// released again: all or nothing.
    pub async fn assign(&self, req: &AssignRequest) -> Result<Vec<Assigned>, IpamError> {
        let mut pools = self.store.list::<IPPool>().await?.items;
        if !req.pools.is_empty() {
            for name in &req.pools {
                if !pools
                    .iter()
                    .any(|p| p.metadata.name.as_deref() == Some(name.as_str()))
                {
                    return Err(PlanError::UnknownPool { name: name.clone() }.into());
                }
            }
            pools.retain(|p| {
                p.metadata
                    .name
                    .as_ref()
                    .is_some_and(|n| req.pools.contains(n))
            });
        }
        let labels = self.node_labels().await?;
        let mut families: Vec<Family> = [Family::V4, Family::V6]
            .into_iter()
            .filter(|f| !eligible_pools(&pools, &labels, *f).is_empty())
            .collect();
        for r in &req.requested {
            let f = Family::of_addr(r);
            if !families.contains(&f) {
                families.push(f);
            }
        }
        if families.is_empty() {
            return Err(PlanError::NoPool {
                family: Family::V4,
                node: self.node.clone(),
            }
            .into());
        }
        let mut out = Vec::new();
        for family in families {
            let requested = req
                .requested
                .iter()
                .copied()
                .find(|a| Family::of_addr(a) == family);
            let eligible = eligible_pools(&pools, &labels, family);
            match self.assign_one(&eligible, req, family, requested).await {
                Ok(a) => out.push(a),
                Err(e) => {
                    if !out.is_empty() {
                        // Undo the families already assigned in this request.
                        if let Err(undo) = self.release_handle(&req.handle).await {
                            tracing::warn!(handle = %req.handle, error = %undo, "could not undo a partial assignment; reconcile will free it");
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    async fn assign_one(
        &self,
        pools: &[&IPPool],
        req: &AssignRequest,
        family: Family,
        requested: Option<IpAddr>,
    ) -> Result<Assigned, IpamError> {
        let mut cache = self.cache.lock().await;
        for _ in 0..MAX_ATTEMPTS {
            let fresh = !cache.is_known();
            let blocks = cache.get(&self.store).await?;
            let step = match plan::plan(pools, &blocks, &self.node, &req.handle, family, requested)
            {
                Ok(s) => s,
                // Another process may have freed addresses or blocks since
                // the cache was filled: a refusal counts only on fresh data.
                Err(_) if !fresh => {
                    cache.forget();
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let mut attributes = req.attributes.clone();
            attributes.insert(ATTR_NODE.into(), self.node.clone());
            attributes.insert(ATTR_CREATED.into(), now());
            let (written, ordinal, sequence, borrowed) = match step {
                Step::Existing {
                    addr,
                    block,
                    sequence,
                } => {
                    // Confirm against the store: the cache may be behind a release.
                    let Some(b) = self.store.get::<IPAMBlock>(None, &block).await? else {
                        cache.forget();
                        continue;
                    };
                    let net = block_net(&b).ok_or(IpamError::NotAllocated(addr))?;
                    let still = ordinal_of(&net, addr).is_some_and(|o| {
                        b.spec
                            .allocations
                            .iter()
                            .any(|a| a.ordinal == o && a.handle == req.handle)
                    });
                    if !still {
                        cache.forget();
                        continue;
                    }
                    let borrowed = b.spec.affinity.as_deref() != Some(self.node.as_str());
                    cache.put(b);
                    return Ok(Assigned {
                        addr,
                        block: net,
                        block_name: block,
                        sequence,
                        borrowed,
                    });
                }
                Step::Allocate {
                    block,
                    ordinal,
                    borrowed,
                } => {
                    let (b, seq) = plan::with_allocation(&block, ordinal, &req.handle, attributes);
                    match self.store.update(&b).await {
                        Ok(w) => (w, ordinal, seq, borrowed),
                        Err(e) if e.is_conflict() || e.is_not_found() => {
                            cache.forget();
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Step::Claim { block, ordinal } => {
                    let (b, seq) = plan::with_allocation(&block, ordinal, &req.handle, attributes);
                    match self.store.create(&b).await {
                        Ok(w) => {
                            tracing::info!(node = %self.node, block = %w.spec.cidr, "claimed block");
                            (w, ordinal, seq, false)
                        }
                        Err(e) if e.is_already_exists() => {
                            cache.forget();
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            let net = block_net(&written).ok_or(IpamError::Contended)?;
            let addr = addr_at(&net, ordinal).ok_or(IpamError::Contended)?;
            let block_name = written.metadata.name.clone().unwrap_or_default();
            cache.put(written);
            return Ok(Assigned {
                addr,
                block: net,
                block_name,
                sequence,
                borrowed,
            });
        }
        Err(IpamError::Contended)
    }

    /// Releases every address the handle holds, in any block. Idempotent:
    /// releasing an unknown handle releases nothing and succeeds.
    pub async fn release_handle(&self, handle: &str) -> Result<Vec<Released>, IpamError> {
        self.release_where(|b| {
            b.spec
                .allocations
                .iter()
                .any(|a| a.handle == handle)
                .then_some(Release::Handle(handle))
        })
        .await
    }

    /// Releases every allocation of each of `handles`, with one
    /// compare-and-swap write per block touched (however many handles it
    /// holds). Handles with nothing allocated are ignored.
    pub async fn release_handles(&self, handles: &[String]) -> Result<Vec<Released>, IpamError> {
        self.release_where(|b| {
            b.spec
                .allocations
                .iter()
                .any(|a| handles.contains(&a.handle))
                .then_some(Release::Handles(handles))
        })
        .await
    }

    /// Releases one address; with `guard`, only while it is still held by
    /// that handle at that sequence number.
    pub async fn release_address(
        &self,
        addr: IpAddr,
        guard: Option<(&str, u64)>,
    ) -> Result<Option<Released>, IpamError> {
        let released = self
            .release_where(|b| {
                let net = block_net(b)?;
                let ordinal = ordinal_of(&net, addr)?;
                b.spec
                    .allocations
                    .iter()
                    .any(|a| a.ordinal == ordinal)
                    .then_some(Release::Ordinal { ordinal, guard })
            })
            .await?;
        Ok(released.into_iter().next())
    }

    async fn release_where<'a>(
        &self,
        pick: impl Fn(&IPAMBlock) -> Option<Release<'a>>,
    ) -> Result<Vec<Released>, IpamError> {
        let mut out = Vec::new();
        let mut cache = self.cache.lock().await;
        'attempt: for _ in 0..MAX_ATTEMPTS {
            let blocks = cache.get(&self.store).await?;
            for b in &blocks {
                let Some(release) = pick(b) else { continue };
                let (next, gone) = plan::without(b, release, &now());
                if gone.is_empty() {
                    continue;
                }
                match self.store.update(&next).await {
                    Ok(written) => {
                        cache.put(written);
                        let net = block_net(b);
                        for a in gone {
                            if let Some(addr) = net.and_then(|n| addr_at(&n, a.ordinal)) {
                                out.push(Released {
                                    addr,
                                    block_name: b.metadata.name.clone().unwrap_or_default(),
                                    allocation: a,
                                });
                            }
                        }
                    }
                    // Someone changed the block: read everything again.
                    Err(e) if e.is_conflict() || e.is_not_found() => {
                        cache.forget();
                        continue 'attempt;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(out);
        }
        Err(IpamError::Contended)
    }

    /// Returns this node's empty blocks to the pool once they have been
    /// empty for `grace`. The delete is conditional on the revision read, so a
    /// block that got an allocation meanwhile stays.
    pub async fn release_empty_blocks(
        &self,
        grace: std::time::Duration,
    ) -> Result<Vec<String>, IpamError> {
        let blocks = self.store.list::<IPAMBlock>().await?.items;
        self.release_empty(&blocks, grace).await
    }

    /// [`Ipam::release_empty_blocks`] over blocks the caller already holds
    /// (twill-node's block watch cache, so no list per round). Each delete
    /// is conditional on the revision held: a stale copy releases nothing.
    pub async fn release_empty(
        &self,
        blocks: &[IPAMBlock],
        grace: std::time::Duration,
    ) -> Result<Vec<String>, IpamError> {
        let now = jiff::Timestamp::now();
        let mut released = Vec::new();
        for b in blocks
            .iter()
            .filter(|b| b.spec.affinity.as_deref() == Some(self.node.as_str()))
        {
            if !b.spec.allocations.is_empty() {
                continue;
            }
            let Some(since) = b
                .spec
                .empty_since
                .as_deref()
                .and_then(|s| s.parse::<jiff::Timestamp>().ok())
            else {
                continue;
            };
            let empty_for = now.duration_since(since);
            if empty_for
                < jiff::SignedDuration::try_from(grace).unwrap_or(jiff::SignedDuration::MAX)
            {
                continue;
            }
            let name = b.metadata.name.clone().unwrap_or_default();
            match self
                .store
                .delete::<IPAMBlock>(None, &name, b.metadata.resource_version.as_deref())
                .await
            {
                Ok(()) => {
                    self.cache.lock().await.forget();
                    tracing::info!(node = %self.node, block = %b.spec.cidr, "released empty block to the pool");
                    released.push(b.spec.cidr.clone());
                }
                Err(e) if e.is_conflict() || e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(released)
    }

    /// Every allocation made by this node (in its own blocks or borrowed),
    /// with its address: what reconcile compares against live endpoints.
    pub async fn node_allocations(&self) -> Result<Vec<(IpAddr, String, Allocation)>, IpamError> {
        let blocks = self.store.list::<IPAMBlock>().await?.items;
        Ok(node_allocations(&blocks, &self.node))
    }
}

/// Every allocation whose `node` attribute names `node`.
pub fn node_allocations(blocks: &[IPAMBlock], node: &str) -> Vec<(IpAddr, String, Allocation)> {
    allocations_where(blocks, |a| {
        a.attributes.get(ATTR_NODE).map(String::as_str) == Some(node)
    })
}

/// Every allocation `keep` accepts: its address, its block's name, and the
/// allocation itself.
pub fn allocations_where(
    blocks: &[IPAMBlock],
    keep: impl Fn(&Allocation) -> bool,
) -> Vec<(IpAddr, String, Allocation)> {
    let keep = &keep;
    blocks
        .iter()
        .filter_map(|b| Some((b, block_net(b)?)))
        .flat_map(|(b, net)| {
            b.spec
                .allocations
                .iter()
                .filter(move |a| keep(a))
                .filter_map(move |a| {
                    Some((
                        addr_at(&net, a.ordinal)?,
                        b.metadata.name.clone().unwrap_or_default(),
                        a.clone(),
                    ))
                })
        })
        .collect()
}
