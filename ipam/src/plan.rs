//! Pure allocation decisions: given the pools, the blocks as last read and a
//! request, decide the one write that satisfies it — allocate in an existing
//! block, claim a new block with the allocation already in it, or borrow from
//! another node's block — or say why it cannot be done. The allocator
//! executes the decision as a single compare-and-swap write and replans on
//! conflict, which is why a crash can never leave half an allocation.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use twill_api::Selector;
use twill_api::resources::{Allocation, IPAMBlock, IPAMBlockSpec, IPPool, block_name};

use crate::blockmath::{
    addr_at, block_containing, block_len, first_unclaimed_block, next_free_ordinal, ordinal_of,
    overlapping_claimed, width,
};

/// Address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(net: &IpNetwork) -> Family {
        if net.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
    pub fn of_addr(a: &IpAddr) -> Family {
        if a.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Why a request cannot be satisfied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "no enabled {family} IPPool selects node {node:?} (check the pools' nodeSelector, disabled and allowedUses fields)"
    )]
    NoPool { family: Family, node: String },
    #[error("{family} pools {pools:?} have no free address for node {node:?}{hint}")]
    Exhausted {
        family: Family,
        node: String,
        pools: Vec<String>,
        hint: String,
    },
    #[error("requested address {addr} is not available: {reason}")]
    Unavailable { addr: IpAddr, reason: String },
    #[error("IPPool {name:?} does not exist")]
    UnknownPool { name: String },
}

/// The one write that satisfies a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The handle already holds this address (a retried ADD): nothing to write.
    Existing {
        addr: IpAddr,
        block: String,
        sequence: u64,
    },
    /// Write `block` (read at its revision) back with one more allocation.
    Allocate {
        block: IPAMBlock,
        ordinal: u32,
        borrowed: bool,
    },
    /// Create a new block affine to the node with the allocation in it.
    Claim { block: IPAMBlock, ordinal: u32 },
}

/// Pools a node may allocate from for a family, in name order.
pub fn eligible_pools<'a>(
    pools: &'a [IPPool],
    node_labels: &BTreeMap<String, String>,
    family: Family,
) -> Vec<&'a IPPool> {
    let mut out: Vec<&IPPool> = pools
        .iter()
        .filter(|p| !p.spec.disabled && p.spec.allows_workloads())
        .filter(|p| p.spec.network().is_some_and(|n| Family::of(&n) == family))
        .filter(|p| {
            p.spec
                .node_selector
                .as_deref()
                .map(Selector::parse)
                .unwrap_or(Ok(Selector::All))
                .is_ok_and(|s| s.matches(node_labels))
        })
        .collect();
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    out
}

/// The network of a block (validated blocks always parse).
pub fn block_net(b: &IPAMBlock) -> Option<IpNetwork> {
    b.spec.cidr.parse().ok()
}

fn taken(b: &IPAMBlock) -> BTreeSet<u32> {
    b.spec.allocations.iter().map(|a| a.ordinal).collect()
}

fn free_ordinal(b: &IPAMBlock) -> Option<u32> {
    let net = block_net(b)?;
    next_free_ordinal(block_len(&net), &taken(b), b.spec.last_ordinal)
}

fn in_pool(b: &IPAMBlock, pool: &IPPool) -> bool {
    match (block_net(b), pool.spec.network()) {
        (Some(bn), Some(pn)) => Family::of(&bn) == Family::of(&pn) && pn.contains(bn.network()),
        _ => false,
    }
}

/// The address a handle already holds in a family, if any.
pub fn existing(blocks: &[IPAMBlock], handle: &str, family: Family) -> Option<Step> {
    blocks.iter().find_map(|b| {
        let net = block_net(b)?;
        if Family::of(&net) != family {
            return None;
        }
        let a = b.spec.allocations.iter().find(|a| a.handle == handle)?;
        Some(Step::Existing {
            addr: addr_at(&net, a.ordinal)?,
            block: b.metadata.name.clone().unwrap_or_default(),
            sequence: a.sequence,
        })
    })
}

/// Decides how to give `handle` one address of `family` on `node`.
pub fn plan(
    pools: &[&IPPool],
    blocks: &[IPAMBlock],
    node: &str,
    handle: &str,
    family: Family,
    requested: Option<IpAddr>,
) -> Result<Step, PlanError> {
    if let Some(step) = existing(blocks, handle, family) {
        return Ok(step);
    }
    if pools.is_empty() {
        return Err(PlanError::NoPool {
            family,
            node: node.to_string(),
        });
    }
    if let Some(addr) = requested {
        return plan_requested(pools, blocks, node, addr);
    }
    // 1. A block already affine to this node.
    for pool in pools {
        for b in blocks
            .iter()
            .filter(|b| in_pool(b, pool) && b.spec.affinity.as_deref() == Some(node))
        {
            if let Some(ordinal) = free_ordinal(b) {
                return Ok(Step::Allocate {
                    block: b.clone(),
                    ordinal,
                    borrowed: false,
                });
            }
        }
    }
    // 2. Claim a new block.
    for pool in pools {
        let Some(pnet) = pool.spec.network() else {
            continue;
        };
        // Every block of the family, whatever its size or pool: a new block
        // must not share an address with any (blockSize may have changed).
        let claimed: BTreeSet<IpNetwork> = blocks
            .iter()
            .filter_map(block_net)
            .filter(|n| Family::of(n) == family)
            .collect();
        if let Some(cidr) = first_unclaimed_block(&pnet, pool.spec.effective_block_size(), &claimed)
        {
            return Ok(Step::Claim {
                block: new_block(pool, cidr, node),
                ordinal: 0,
            });
        }
    }
    // 3. Borrow one address from a block that is not ours.
    for pool in pools.iter().filter(|p| !p.spec.strict_affinity) {
        for b in blocks
            .iter()
            .filter(|b| in_pool(b, pool) && b.spec.affinity.as_deref() != Some(node))
        {
            if let Some(ordinal) = free_ordinal(b) {
                return Ok(Step::Allocate {
                    block: b.clone(),
                    ordinal,
                    borrowed: true,
                });
            }
        }
    }
    let strict = pools.iter().any(|p| p.spec.strict_affinity);
    Err(PlanError::Exhausted {
        family,
        node: node.to_string(),
        pools: pools
            .iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect(),
        hint: if strict {
            " (strictAffinity forbids borrowing from other nodes' blocks)".into()
        } else {
            String::new()
        },
    })
}

fn plan_requested(
    pools: &[&IPPool],
    blocks: &[IPAMBlock],
    node: &str,
    addr: IpAddr,
) -> Result<Step, PlanError> {
    let unavailable = |reason: String| PlanError::Unavailable { addr, reason };
    let pool = pools
        .iter()
        .find(|p| p.spec.network().is_some_and(|n| n.contains(addr)))
        .ok_or_else(|| unavailable("it is in no enabled pool that selects this node".into()))?;
    let pnet = pool
        .spec
        .network()
        .ok_or_else(|| unavailable("pool CIDR does not parse".into()))?;
    // The block holding the address, whatever its size (blockSize may have
    // changed since it was claimed).
    let holding = blocks
        .iter()
        .find(|b| block_net(b).is_some_and(|n| n.contains(addr)));
    match holding {
        Some(b) => {
            let cidr = block_net(b).ok_or_else(|| unavailable("outside the pool".into()))?;
            let ordinal =
                ordinal_of(&cidr, addr).ok_or_else(|| unavailable("outside its block".into()))?;
            if let Some(a) = b.spec.allocations.iter().find(|a| a.ordinal == ordinal) {
                return Err(unavailable(format!("already held by {:?}", a.handle)));
            }
            let borrowed = b.spec.affinity.as_deref() != Some(node);
            if borrowed && pool.spec.strict_affinity {
                return Err(unavailable(format!(
                    "its block is affine to node {:?} and pool {:?} has strictAffinity",
                    b.spec.affinity.as_deref().unwrap_or(""),
                    pool.metadata.name.as_deref().unwrap_or("")
                )));
            }
            Ok(Step::Allocate {
                block: b.clone(),
                ordinal,
                borrowed,
            })
        }
        None => {
            // The pool's block size, or a smaller block when that would
            // overlap a block of another size.
            let claimed: BTreeSet<IpNetwork> = blocks
                .iter()
                .filter_map(block_net)
                .filter(|n| n.is_ipv4() == addr.is_ipv4())
                .collect();
            let cidr = (pool.spec.effective_block_size()..=width(&pnet))
                .filter_map(|size| block_containing(&pnet, size, addr))
                .find(|b| overlapping_claimed(b, &claimed).is_none())
                .ok_or_else(|| unavailable("outside the pool".into()))?;
            Ok(Step::Claim {
                block: new_block(pool, cidr, node),
                ordinal: ordinal_of(&cidr, addr)
                    .ok_or_else(|| unavailable("outside its block".into()))?,
            })
        }
    }
}

fn new_block(pool: &IPPool, cidr: IpNetwork, node: &str) -> IPAMBlock {
    let cidr = cidr.to_string();
    IPAMBlock::new(
        &block_name(&cidr),
        IPAMBlockSpec {
            cidr,
            affinity: Some(node.to_string()),
            pool: pool.metadata.name.clone().unwrap_or_default(),
            ..Default::default()
        },
    )
}

/// The block with one more allocation (sequence bumped, kept sorted).
pub fn with_allocation(
    block: &IPAMBlock,
    ordinal: u32,
    handle: &str,
    attributes: BTreeMap<String, String>,
) -> (IPAMBlock, u64) {
    let mut b = block.clone();
    b.spec.sequence += 1;
    let sequence = b.spec.sequence;
    let pos = b.spec.allocations.partition_point(|a| a.ordinal < ordinal);
    b.spec.allocations.insert(
        pos,
        Allocation {
            ordinal,
            handle: handle.to_string(),
            sequence,
            attributes,
        },
    );
    b.spec.last_ordinal = Some(ordinal);
    b.spec.empty_since = None;
    (b, sequence)
}

/// Which allocations a release removes.
#[derive(Debug, Clone, Copy)]
pub enum Release<'a> {
    /// Every allocation of a handle.
    Handle(&'a str),
    /// Every allocation of any of these handles (many releases, one write).
    Handles(&'a [String]),
    /// One address, optionally only if still held by this handle at this
    /// sequence (a stale release must not free a reused address).
    Ordinal {
        ordinal: u32,
        guard: Option<(&'a str, u64)>,
    },
}

/// The block without the released allocations, and what was removed. When
/// the block becomes empty it is stamped `emptySince = now`.
pub fn without(block: &IPAMBlock, release: Release<'_>, now: &str) -> (IPAMBlock, Vec<Allocation>) {
    let mut b = block.clone();
    let (gone, kept): (Vec<Allocation>, Vec<Allocation>) =
        b.spec.allocations.drain(..).partition(|a| match release {
            Release::Handle(h) => a.handle == h,
            Release::Handles(hs) => hs.contains(&a.handle),
            Release::Ordinal { ordinal, guard } => {
                a.ordinal == ordinal && guard.is_none_or(|(h, s)| a.handle == h && a.sequence == s)
            }
        });
    b.spec.allocations = kept;
    if b.spec.allocations.is_empty() && !gone.is_empty() {
        b.spec.empty_since = Some(now.to_string());
    }
    (b, gone)
}

/// Blocks affine to `node`, as networks (what the node announces over BGP).
pub fn owned_blocks(blocks: &[IPAMBlock], node: &str) -> Vec<IpNetwork> {
    let mut v: Vec<IpNetwork> = blocks
        .iter()
        .filter(|b| b.spec.affinity.as_deref() == Some(node))
        .filter_map(block_net)
        .collect();
    v.sort();
    v
}

/// Single addresses `node` holds in blocks affine to another node (or to
/// none): each is announced as a host route.
pub fn borrowed_addresses(blocks: &[IPAMBlock], node: &str) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = blocks
        .iter()
        .filter(|b| b.spec.affinity.as_deref() != Some(node))
        .filter_map(|b| Some((b, block_net(b)?)))
        .flat_map(|(b, net)| {
            b.spec
                .allocations
                .iter()
                .filter(|a| a.attributes.get(crate::ATTR_NODE).map(String::as_str) == Some(node))
                .filter_map(move |a| addr_at(&net, a.ordinal))
        })
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_api::resources::IPPoolSpec;

    fn pool(name: &str, cidr: &str, block: u8) -> IPPool {
        IPPool::new(
            name,
            IPPoolSpec {
                cidr: cidr.into(),
                block_size: Some(block),
                ..Default::default()
            },
        )
    }

    fn apply(step: &Step, handle: &str, node: &str) -> IPAMBlock {
        let mut attrs = BTreeMap::new();
        attrs.insert(crate::ATTR_NODE.to_string(), node.to_string());
        match step {
            Step::Allocate { block, ordinal, .. } | Step::Claim { block, ordinal } => {
                with_allocation(block, *ordinal, handle, attrs).0
            }
            Step::Existing { .. } => panic!("nothing to apply"),
        }
    }

    fn put(blocks: &mut Vec<IPAMBlock>, b: IPAMBlock) {
        blocks.retain(|x| x.metadata.name != b.metadata.name);
        blocks.push(b);
    }

    #[test]
    fn claims_fills_claims_again_then_borrows() {
        // A /28 pool in /30 blocks: 4 blocks of 4 addresses.
        let p = pool("p", "10.0.0.0/28", 30);
        let pools = vec![&p];
        let mut blocks = Vec::new();
        let mut got = Vec::new();
        for i in 0..12 {
            let step = plan(&pools, &blocks, "a", &format!("h{i}"), Family::V4, None).unwrap();
            if i % 4 == 0 {
                assert!(matches!(step, Step::Claim { .. }), "{i}: {step:?}");
            } else {
                assert!(
                    matches!(
                        step,
                        Step::Allocate {
                            borrowed: false,
                            ..
                        }
                    ),
                    "{i}: {step:?}"
                );
            }
            let b = apply(&step, &format!("h{i}"), "a");
            put(&mut blocks, b);
            got.push(i);
        }
        assert_eq!(owned_blocks(&blocks, "a").len(), 3);
        // Node b claims the last block, then must borrow from a's blocks? No:
        // a's blocks are full; b fills its own block and the pool is exhausted.
        for i in 0..4 {
            let step = plan(&pools, &blocks, "b", &format!("b{i}"), Family::V4, None).unwrap();
            put(&mut blocks, apply(&step, &format!("b{i}"), "b"));
        }
        let err = plan(&pools, &blocks, "b", "b4", Family::V4, None).unwrap_err();
        assert!(matches!(err, PlanError::Exhausted { .. }), "{err}");
        // Free one of a's addresses: b borrows it, announced as a /32.
        let a0 = blocks
            .iter()
            .position(|b| b.spec.affinity.as_deref() == Some("a"))
            .unwrap();
        let (freed, gone) = without(&blocks[a0], Release::Handle("h0"), "now");
        assert_eq!(gone.len(), 1);
        blocks[a0] = freed;
        let step = plan(&pools, &blocks, "b", "b4", Family::V4, None).unwrap();
        assert!(
            matches!(step, Step::Allocate { borrowed: true, .. }),
            "{step:?}"
        );
        put(&mut blocks, apply(&step, "b4", "b"));
        assert_eq!(
            borrowed_addresses(&blocks, "b"),
            vec!["10.0.0.0".parse::<IpAddr>().unwrap()]
        );
        assert!(borrowed_addresses(&blocks, "a").is_empty());
    }

    #[test]
    fn releasing_several_handles_frees_exactly_theirs_in_one_block() {
        let p = pool("p", "10.0.0.0/30", 30);
        let pools = vec![&p];
        let mut blocks = Vec::new();
        for i in 0..4 {
            let step = plan(&pools, &blocks, "a", &format!("h{i}"), Family::V4, None).unwrap();
            put(&mut blocks, apply(&step, &format!("h{i}"), "a"));
        }
        let some = ["h0".to_string(), "h2".to_string(), "absent".to_string()];
        let (b, gone) = without(&blocks[0], Release::Handles(&some), "now");
        let handles = |v: &[Allocation]| v.iter().map(|a| a.handle.clone()).collect::<Vec<_>>();
        assert_eq!(handles(&gone), vec!["h0", "h2"]);
        assert_eq!(handles(&b.spec.allocations), vec!["h1", "h3"]);
        assert_eq!(b.spec.empty_since, None);
        let rest = ["h1".to_string(), "h3".to_string()];
        let (b, gone) = without(&b, Release::Handles(&rest), "now");
        assert_eq!(gone.len(), 2);
        assert!(b.spec.allocations.is_empty());
        assert_eq!(b.spec.empty_since.as_deref(), Some("now"));
    }

    #[test]
    fn strict_affinity_forbids_borrowing() {
        let mut p = pool("p", "10.0.0.0/30", 30);
        p.spec.strict_affinity = true;
        let pools = vec![&p];
        let mut blocks = Vec::new();
        for i in 0..4 {
            let step = plan(&pools, &blocks, "a", &format!("h{i}"), Family::V4, None).unwrap();
            put(&mut blocks, apply(&step, &format!("h{i}"), "a"));
        }
        let (freed, _) = without(&blocks[0], Release::Handle("h1"), "now");
        blocks[0] = freed;
        let err = plan(&pools, &blocks, "b", "x", Family::V4, None).unwrap_err();
        assert!(err.to_string().contains("strictAffinity"), "{err}");
    }

    #[test]
    fn retried_request_returns_what_the_handle_holds() {
        let p = pool("p", "10.0.0.0/24", 26);
        let pools = vec![&p];
        let step = plan(&pools, &[], "a", "h", Family::V4, None).unwrap();
        let blocks = vec![apply(&step, "h", "a")];
        match plan(&pools, &blocks, "a", "h", Family::V4, None).unwrap() {
            Step::Existing { addr, sequence, .. } => {
                assert_eq!(addr, "10.0.0.0".parse::<IpAddr>().unwrap());
                assert_eq!(sequence, 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn requested_addresses() {
        let p = pool("p", "10.0.0.0/24", 26);
        let pools = vec![&p];
        let want: IpAddr = "10.0.0.77".parse().unwrap();
        let step = plan(&pools, &[], "a", "h", Family::V4, Some(want)).unwrap();
        match &step {
            Step::Claim { block, ordinal } => {
                assert_eq!(block.spec.cidr, "10.0.0.64/26");
                assert_eq!(*ordinal, 13);
            }
            other => panic!("{other:?}"),
        }
        let blocks = vec![apply(&step, "h", "a")];
        let err = plan(&pools, &blocks, "a", "h2", Family::V4, Some(want)).unwrap_err();
        assert!(err.to_string().contains("already held by \"h\""), "{err}");
        let err = plan(
            &pools,
            &blocks,
            "a",
            "h2",
            Family::V4,
            Some("10.9.0.1".parse().unwrap()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no enabled pool"), "{err}");
    }

    #[test]
    fn requested_addresses_after_a_block_size_change_never_overlap_a_block() {
        let mut p = pool("p", "10.0.0.0/24", 26);
        let step = plan(&[&p], &[], "a", "h", Family::V4, None).unwrap();
        let blocks = vec![apply(&step, "h", "a")];
        p.spec.block_size = Some(25);
        // Inside a's /26: allocated there (borrowed), not in a new /25.
        let want: IpAddr = "10.0.0.5".parse().unwrap();
        match plan(&[&p], &blocks, "b", "h2", Family::V4, Some(want)).unwrap() {
            Step::Allocate {
                block,
                ordinal,
                borrowed,
            } => {
                assert_eq!(block.spec.cidr, "10.0.0.0/26");
                assert_eq!((ordinal, borrowed), (5, true));
            }
            other => panic!("{other:?}"),
        }
        // Outside it: the /25 would overlap, so the /26 next to it.
        let want: IpAddr = "10.0.0.70".parse().unwrap();
        match plan(&[&p], &blocks, "b", "h3", Family::V4, Some(want)).unwrap() {
            Step::Claim { block, ordinal } => {
                assert_eq!(block.spec.cidr, "10.0.0.64/26");
                assert_eq!(ordinal, 6);
            }
            other => panic!("{other:?}"),
        }
        // Without a request: the free /25, never one over a's block.
        match plan(&[&p], &blocks, "b", "h4", Family::V4, None).unwrap() {
            Step::Claim { block, .. } => assert_eq!(block.spec.cidr, "10.0.0.128/25"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pool_selection_honours_selector_disabled_and_family() {
        let mut rack_a = pool("a", "10.1.0.0/16", 26);
        rack_a.spec.node_selector = Some("rack == 'a'".into());
        let mut off = pool("off", "10.2.0.0/16", 26);
        off.spec.disabled = true;
        let v6 = pool("v6", "fd00::/120", 122);
        let all = vec![rack_a, off, v6];
        let mut labels = BTreeMap::new();
        assert!(eligible_pools(&all, &labels, Family::V4).is_empty());
        labels.insert("rack".to_string(), "a".to_string());
        let names: Vec<_> = eligible_pools(&all, &labels, Family::V4)
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["a"]);
        assert_eq!(eligible_pools(&all, &labels, Family::V6).len(), 1);
        let err = plan(&[], &[], "n", "h", Family::V4, None).unwrap_err();
        assert!(matches!(err, PlanError::NoPool { .. }));
    }

    #[test]
    fn stale_release_does_not_free_a_reused_address() {
        let p = pool("p", "10.0.0.0/30", 30);
        let pools = vec![&p];
        let step = plan(&pools, &[], "a", "old", Family::V4, None).unwrap();
        let b = apply(&step, "old", "a");
        let (b, _) = without(&b, Release::Handle("old"), "t0");
        assert_eq!(b.spec.empty_since.as_deref(), Some("t0"));
        // The address is reused by a new pod (after rotation wraps, ordinal 0 again).
        let (b, seq) = with_allocation(&b, 0, "new", BTreeMap::new());
        assert_eq!(seq, 2);
        assert!(b.spec.empty_since.is_none());
        // A release meant for the old holder (sequence 1) frees nothing.
        let (b2, gone) = without(
            &b,
            Release::Ordinal {
                ordinal: 0,
                guard: Some(("old", 1)),
            },
            "t1",
        );
        assert!(gone.is_empty());
        assert_eq!(b2.spec.allocations.len(), 1);
        let (_, gone) = without(
            &b,
            Release::Ordinal {
                ordinal: 0,
                guard: Some(("new", 2)),
            },
            "t1",
        );
        assert_eq!(gone.len(), 1);
    }
}
