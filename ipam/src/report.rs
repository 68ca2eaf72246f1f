//! Pure summaries and consistency checks behind `twillctl ipam show` and
//! `twillctl ipam check`: usage per pool and per block, who holds an address,
//! and which allocations or blocks have lost their owner.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use twill_api::resources::{Allocation, IPAMBlock, IPPool};

use crate::ATTR_NODE;
use crate::blockmath::{addr_at, block_len, ordinal_of};
use crate::plan::block_net;

/// Usage of one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolUsage {
    pub name: String,
    pub cidr: String,
    pub blocks: usize,
    pub allocated: u64,
    /// Addresses in the pool (saturating for huge IPv6 pools).
    pub capacity: u128,
    pub disabled: bool,
}

impl PoolUsage {
    /// Allocated addresses as a percentage of the pool.
    pub fn percent(&self) -> f64 {
        if self.capacity == 0 {
            0.0
        } else {
            self.allocated as f64 * 100.0 / self.capacity as f64
        }
    }
}

/// Usage of one block.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockUsage {
    pub name: String,
    pub cidr: String,
    pub affinity: Option<String>,
    pub pool: String,
    pub allocated: usize,
    pub size: u32,
}

impl BlockUsage {
    pub fn percent(&self) -> f64 {
        if self.size == 0 {
            0.0
        } else {
            self.allocated as f64 * 100.0 / f64::from(self.size)
        }
    }
}

pub fn pool_usage(pools: &[IPPool], blocks: &[IPAMBlock]) -> Vec<PoolUsage> {
    pools
        .iter()
        .map(|p| {
            let net = p.spec.network();
            let inside: Vec<&IPAMBlock> = blocks
                .iter()
                .filter(|b| match (net, block_net(b)) {
                    (Some(pn), Some(bn)) => {
                        pn.is_ipv4() == bn.is_ipv4() && pn.contains(bn.network())
                    }
                    _ => false,
                })
                .collect();
            let capacity = net.map_or(0, |n| {
                let bits = u32::from(if n.is_ipv4() { 32 } else { 128 } - n.prefix());
                1u128.checked_shl(bits).unwrap_or(u128::MAX)
            });
            PoolUsage {
                name: p.metadata.name.clone().unwrap_or_default(),
                cidr: p.spec.cidr.clone(),
                blocks: inside.len(),
                allocated: inside.iter().map(|b| b.spec.allocations.len() as u64).sum(),
                capacity,
                disabled: p.spec.disabled,
            }
        })
        .collect()
}

pub fn block_usage(blocks: &[IPAMBlock]) -> Vec<BlockUsage> {
    let mut v: Vec<BlockUsage> = blocks
        .iter()
        .map(|b| BlockUsage {
            name: b.metadata.name.clone().unwrap_or_default(),
            cidr: b.spec.cidr.clone(),
            affinity: b.spec.affinity.clone(),
            pool: b.spec.pool.clone(),
            allocated: b.spec.allocations.len(),
            size: block_net(b).map_or(0, |n| block_len(&n)),
        })
        .collect();
    v.sort_by(|a, b| a.cidr.cmp(&b.cidr));
    v
}

/// Everything known about one address.
#[derive(Debug, Clone, PartialEq)]
pub struct AddressInfo {
    pub addr: IpAddr,
    pub pool: Option<String>,
    pub block: Option<(String, String, Option<String>)>,
    pub allocation: Option<Allocation>,
}

pub fn find_address(pools: &[IPPool], blocks: &[IPAMBlock], addr: IpAddr) -> AddressInfo {
    let pool = pools
        .iter()
        .find(|p| p.spec.network().is_some_and(|n| n.contains(addr)))
        .and_then(|p| p.metadata.name.clone());
    let mut info = AddressInfo {
        addr,
        pool,
        block: None,
        allocation: None,
    };
    for b in blocks {
        let Some(net) = block_net(b) else { continue };
        if let Some(ordinal) = ordinal_of(&net, addr) {
            info.block = Some((
                b.metadata.name.clone().unwrap_or_default(),
                b.spec.cidr.clone(),
                b.spec.affinity.clone(),
            ));
            info.allocation = b
                .spec
                .allocations
                .iter()
                .find(|a| a.ordinal == ordinal)
                .cloned();
        }
    }
    info
}

/// What a node last said about its endpoints.
#[derive(Debug, Clone)]
pub struct LiveEndpoints {
    pub handles: BTreeSet<String>,
    /// When the node wrote the list (RFC 3339).
    pub as_of: String,
}

/// A problem `ipam check` found, and what `--repair` does about it.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// An allocation whose holder is not among its node's live endpoints.
    Leaked {
        addr: IpAddr,
        block: String,
        node: String,
        allocation: Allocation,
    },
    /// An allocation made by a node that no longer exists.
    NodeGone {
        addr: IpAddr,
        block: String,
        node: String,
        allocation: Allocation,
    },
    /// A block affine to a node that no longer exists.
    OrphanBlock {
        block: String,
        cidr: String,
        node: String,
    },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Leaked {
                addr,
                block,
                node,
                allocation,
            } => write!(
                f,
                "{addr} (block {block}) is held by {:?}, which is not a live endpoint on node {node:?}: release it",
                allocation.handle
            ),
            Finding::NodeGone {
                addr,
                block,
                node,
                allocation,
            } => write!(
                f,
                "{addr} (block {block}) is held by {:?} on node {node:?}, which no longer exists: release it",
                allocation.handle
            ),
            Finding::OrphanBlock { block, cidr, node } => write!(
                f,
                "block {block} ({cidr}) is affine to node {node:?}, which no longer exists: return it to the pool once empty"
            ),
        }
    }
}

/// Compares the blocks against the nodes that exist and the endpoints they
/// report. An allocation counts as leaked only if it is older than its node's
/// last report (a pod being set up right now is not in any report yet).
pub fn check(
    blocks: &[IPAMBlock],
    nodes: &BTreeSet<String>,
    live: &BTreeMap<String, LiveEndpoints>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for b in blocks {
        let Some(net) = block_net(b) else { continue };
        let name = b.metadata.name.clone().unwrap_or_default();
        for a in &b.spec.allocations {
            let Some(addr) = addr_at(&net, a.ordinal) else {
                continue;
            };
            let Some(node) = a.attributes.get(ATTR_NODE) else {
                continue;
            };
            if !nodes.contains(node) {
                out.push(Finding::NodeGone {
                    addr,
                    block: name.clone(),
                    node: node.clone(),
                    allocation: a.clone(),
                });
                continue;
            }
            let Some(report) = live.get(node) else {
                continue;
            };
            let older = match (
                a.attributes
                    .get(crate::ATTR_CREATED)
                    .and_then(|c| c.parse::<jiff::Timestamp>().ok()),
                report.as_of.parse::<jiff::Timestamp>().ok(),
            ) {
                (Some(created), Some(as_of)) => created < as_of,
                _ => false,
            };
            if older && !report.handles.contains(&a.handle) {
                out.push(Finding::Leaked {
                    addr,
                    block: name.clone(),
                    node: node.clone(),
                    allocation: a.clone(),
                });
            }
        }
        if let Some(node) = &b.spec.affinity
            && !nodes.contains(node)
        {
            out.push(Finding::OrphanBlock {
                block: name.clone(),
                cidr: b.spec.cidr.clone(),
                node: node.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_api::resources::{IPAMBlockSpec, IPPoolSpec};

    fn alloc(ordinal: u32, handle: &str, node: &str, created: &str) -> Allocation {
        Allocation {
            ordinal,
            handle: handle.into(),
            sequence: u64::from(ordinal) + 1,
            attributes: [
                (ATTR_NODE.to_string(), node.to_string()),
                (crate::ATTR_CREATED.to_string(), created.to_string()),
            ]
            .into(),
        }
    }

    fn block(cidr: &str, node: &str, allocs: Vec<Allocation>) -> IPAMBlock {
        IPAMBlock::new(
            &twill_api::resources::block_name(cidr),
            IPAMBlockSpec {
                cidr: cidr.into(),
                affinity: Some(node.into()),
                pool: "p".into(),
                allocations: allocs,
                ..Default::default()
            },
        )
    }

    #[test]
    fn usage_and_lookup() {
        let pool = IPPool::new(
            "p",
            IPPoolSpec {
                cidr: "10.0.0.0/24".into(),
                ..Default::default()
            },
        );
        let blocks = vec![block(
            "10.0.0.0/26",
            "a",
            vec![
                alloc(0, "h0", "a", "2026-01-01T00:00:00Z"),
                alloc(1, "h1", "a", "2026-01-01T00:00:00Z"),
            ],
        )];
        let u = pool_usage(std::slice::from_ref(&pool), &blocks);
        assert_eq!((u[0].blocks, u[0].allocated, u[0].capacity), (1, 2, 256));
        assert!((u[0].percent() - 0.78125).abs() < 1e-9);
        assert_eq!(block_usage(&blocks)[0].percent(), 3.125);
        let info = find_address(&[pool], &blocks, "10.0.0.1".parse().unwrap());
        assert_eq!(info.pool.as_deref(), Some("p"));
        assert_eq!(info.allocation.unwrap().handle, "h1");
    }

    #[test]
    fn check_finds_leaks_gone_nodes_and_orphans_but_not_fresh_pods() {
        let blocks = vec![
            block(
                "10.0.0.0/26",
                "a",
                vec![
                    alloc(0, "live", "a", "2026-01-01T00:00:00Z"),
                    alloc(1, "leaked", "a", "2026-01-01T00:00:00Z"),
                    alloc(2, "fresh", "a", "2026-01-01T00:10:00Z"),
                    alloc(3, "borrower", "gone", "2026-01-01T00:00:00Z"),
                ],
            ),
            block("10.0.0.64/26", "gone", vec![]),
        ];
        let nodes: BTreeSet<String> = ["a".to_string()].into();
        let live: BTreeMap<String, LiveEndpoints> = [(
            "a".to_string(),
            LiveEndpoints {
                handles: ["live".to_string()].into(),
                as_of: "2026-01-01T00:05:00Z".into(),
            },
        )]
        .into();
        let f = check(&blocks, &nodes, &live);
        assert_eq!(f.len(), 3, "{f:#?}");
        assert!(
            matches!(&f[0], Finding::Leaked { allocation, .. } if allocation.handle == "leaked")
        );
        assert!(matches!(&f[1], Finding::NodeGone { node, .. } if node == "gone"));
        assert!(matches!(&f[2], Finding::OrphanBlock { node, .. } if node == "gone"));
    }
}
