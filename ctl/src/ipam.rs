//! `twillctl ipam`: pool and block usage, who holds an address, and the
//! consistency check with its repair. Every change is printed with its
//! reason before it is made, and releases are guarded by the holder and
//! sequence number that were printed, so a reused address is never freed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::Context;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::core::v1::Service;
use twill_api::resources::{IPAMBlock, IPPool, NodeStatus};
use twill_ipam::Ipam;
use twill_ipam::lb;
use twill_ipam::lb_alloc::{LbAllocator, LbOutcome};
use twill_ipam::report::{self, Finding, LiveEndpoints};

use crate::cli::{IpamArgs, IpamCommand, StoreArgs};
use crate::output::align;

pub async fn run(store_args: &StoreArgs, args: IpamArgs) -> anyhow::Result<ExitCode> {
    // Nothing here creates a store: an address cannot be shown, checked or
    // released in a store that does not exist.
    let store = store_args.open_existing().await?;
    let pools = store.list::<IPPool>().await?.items;
    let blocks = store.list::<IPAMBlock>().await?.items;
    match args.command {
        IpamCommand::Show { ip: Some(ip) } => {
            let info = report::find_address(&pools, &blocks, ip);
            print!("{}", describe(&info));
            // Asked who holds an address that nobody holds: not found.
            Ok(if info.allocation.is_some() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        IpamCommand::Show { ip: None } => {
            let mut rows = vec![
                vec!["POOL", "CIDR", "BLOCKS", "ALLOCATED", "CAPACITY", "USAGE"]
                    .into_iter()
                    .map(String::from)
                    .collect(),
            ];
            for u in report::pool_usage(&pools, &blocks) {
                let lb = pools.iter().any(|p| {
                    p.metadata.name.as_deref() == Some(u.name.as_str())
                        && p.spec.allows_load_balancers()
                });
                rows.push(vec![
                    u.name.clone()
                        + if lb { " (LoadBalancer)" } else { "" }
                        + if u.disabled { " (disabled)" } else { "" },
                    u.cidr.clone(),
                    u.blocks.to_string(),
                    u.allocated.to_string(),
                    if u.capacity == u128::MAX {
                        "huge".into()
                    } else {
                        u.capacity.to_string()
                    },
                    format!("{:.2}%", u.percent()),
                ]);
            }
            print!("{}", align(&rows));
            println!();
            print!(
                "{}",
                family_table(
                    &report::pool_usage(&pools, &blocks),
                    &report::block_usage(&blocks)
                )
            );
            println!();
            let mut rows = vec![
                vec!["BLOCK", "AFFINITY", "POOL", "ALLOCATED", "SIZE", "USAGE"]
                    .into_iter()
                    .map(String::from)
                    .collect(),
            ];
            for b in report::block_usage(&blocks) {
                rows.push(vec![
                    b.cidr.clone(),
                    b.affinity.clone().unwrap_or_else(|| "-".into()),
                    b.pool.clone(),
                    b.allocated.to_string(),
                    b.size.to_string(),
                    format!("{:.1}%", b.percent()),
                ]);
            }
            print!("{}", align(&rows));
            let lbs = lb::lb_addresses(&blocks);
            if !lbs.is_empty() {
                println!();
                let mut rows = vec![
                    vec!["LOADBALANCER ADDRESS", "POOL", "SERVICES", "SHARING KEY"]
                        .into_iter()
                        .map(String::from)
                        .collect(),
                ];
                for l in &lbs {
                    let pool = blocks
                        .iter()
                        .find(|b| b.metadata.name.as_deref() == Some(l.block.as_str()))
                        .map(|b| b.spec.pool.clone())
                        .unwrap_or_default();
                    let ns = lb::namespace_of(&l.allocation);
                    let services: Vec<String> = lb::holders(&l.allocation)
                        .iter()
                        .map(|h| format!("{ns}/{}", h.name))
                        .collect();
                    rows.push(vec![
                        l.addr.to_string(),
                        pool,
                        services.join(","),
                        l.allocation
                            .handle
                            .strip_prefix("lb-share:")
                            .unwrap_or("-")
                            .to_string(),
                    ]);
                }
                print!("{}", align(&rows));
            }
            Ok(ExitCode::SUCCESS)
        }
        IpamCommand::Release { ip } => {
            let info = report::find_address(&pools, &blocks, ip);
            let Some(a) = &info.allocation else {
                anyhow::bail!("{ip} is not allocated; nothing to release");
            };
            println!(
                "releasing {ip} (block {}, held by {:?}, sequence {}): requested with --ip",
                info.block.as_ref().map(|b| b.1.as_str()).unwrap_or("?"),
                a.handle,
                a.sequence
            );
            let ipam = Ipam::new(store.clone(), "twillctl");
            match ipam
                .release_address(ip, Some((&a.handle, a.sequence)))
                .await?
            {
                Some(_) => println!("released {ip}"),
                None => println!("{ip} changed hands meanwhile; left as it is"),
            }
            Ok(ExitCode::SUCCESS)
        }
        IpamCommand::Check { repair } => {
            let mut nodes: BTreeSet<String> = store
                .list::<Node>()
                .await?
                .items
                .into_iter()
                .filter_map(|n| n.metadata.name)
                .collect();
            let mut live = BTreeMap::new();
            for s in store.list::<NodeStatus>().await?.items {
                let Some(name) = s.metadata.name.clone() else {
                    continue;
                };
                nodes.insert(name.clone());
                if let Some(r) = s.status {
                    live.insert(
                        name,
                        LiveEndpoints {
                            handles: r.endpoint_handles.into_iter().collect(),
                            as_of: r.updated,
                        },
                    );
                }
            }
            let findings = report::check(&blocks, &nodes, &live);
            let services = store.list::<Service>().await?.items;
            let lb_findings = lb::check(&pools, &blocks, &services);
            if findings.is_empty() && lb_findings.is_empty() {
                let v6 = blocks.iter().filter(|b| b.spec.cidr.contains(':')).count();
                println!(
                    "IPAM is consistent: {} blocks (IPv4 {}, IPv6 {v6}), {} nodes, {} LoadBalancer addresses",
                    blocks.len(),
                    blocks.len() - v6,
                    nodes.len(),
                    lb::lb_addresses(&blocks).len()
                );
                return Ok(ExitCode::SUCCESS);
            }
            for f in &findings {
                println!("{f}");
            }
            for f in &lb_findings {
                println!("{f}");
            }
            if !repair {
                let v6 = findings.iter().filter(|f| finding_is_v6(f)).count();
                println!(
                    "{} problem(s) (IPv4 {}, IPv6 {v6}, LoadBalancer {}); run `twillctl ipam check --repair` to fix them",
                    findings.len() + lb_findings.len(),
                    findings.len() - v6,
                    lb_findings.len()
                );
                return Ok(ExitCode::from(1));
            }
            repair_findings(&store, &findings).await?;
            repair_lb(&store, &lb_findings).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Repairs LoadBalancer findings the way the allocator does: reconciling
/// each Service named (a gone one's addresses are released; a live one's
/// status is written again from the blocks).
async fn repair_lb(store: &twill_api::Store, findings: &[lb::LbFinding]) -> anyhow::Result<()> {
    let alloc = LbAllocator::new(store.clone());
    let mut done = BTreeSet::new();
    for f in findings {
        for key in f.services() {
            if !done.insert(key.clone()) {
                continue;
            }
            let (ns, name) = key.split_once('/').unwrap_or(("default", key.as_str()));
            match alloc.reconcile(ns, name).await? {
                LbOutcome::NotServed { released } if !released.is_empty() => println!(
                    "released {} held for Service {key}",
                    released
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                LbOutcome::NotServed { .. } => println!("Service {key}: nothing held"),
                LbOutcome::Allocated(a) => println!(
                    "Service {key}: status shows {}",
                    a.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                LbOutcome::Pending(r) => println!("Service {key}: pending: {r}"),
            }
        }
    }
    Ok(())
}

async fn repair_findings(store: &twill_api::Store, findings: &[Finding]) -> anyhow::Result<()> {
    let ipam = Ipam::new(store.clone(), "twillctl");
    for f in findings {
        match f {
            Finding::Leaked {
                addr, allocation, ..
            }
            | Finding::NodeGone {
                addr, allocation, ..
            } => {
                println!("releasing {addr} held by {:?}", allocation.handle);
                match ipam
                    .release_address(*addr, Some((&allocation.handle, allocation.sequence)))
                    .await?
                {
                    Some(_) => println!("released {addr}"),
                    None => println!("{addr} changed hands meanwhile; left as it is"),
                }
            }
            Finding::OrphanBlock { block, cidr, .. } => {
                let current = store.get::<IPAMBlock>(None, block).await?;
                match current {
                    Some(b) if b.spec.allocations.is_empty() => {
                        println!("returning empty block {cidr} to the pool");
                        store
                            .delete::<IPAMBlock>(
                                None,
                                block,
                                b.metadata.resource_version.as_deref(),
                            )
                            .await
                            .with_context(|| format!("deleting block {block}"))?;
                    }
                    Some(b) => println!(
                        "block {cidr} still holds {} address(es); it returns to the pool once they are released",
                        b.spec.allocations.len()
                    ),
                    None => {}
                }
            }
        }
    }
    Ok(())
}

fn describe(info: &report::AddressInfo) -> String {
    let mut s = format!("{}:", info.addr);
    match &info.pool {
        Some(p) => s.push_str(&format!(" pool {p}")),
        None => s.push_str(" in no pool"),
    }
    match &info.block {
        Some((_, cidr, aff)) => s.push_str(&format!(
            ", block {cidr} ({})",
            aff.as_deref()
                .map(|a| format!("affine to {a}"))
                .unwrap_or_else(|| "no affinity".into())
        )),
        None => s.push_str(", in no block (not allocated)"),
    }
    s.push('\n');
    match &info.allocation {
        Some(a) if lb::is_lb(a) => {
            let ns = lb::namespace_of(a);
            let services: Vec<String> = lb::holders(a)
                .iter()
                .map(|h| format!("{ns}/{}", h.name))
                .collect();
            s.push_str(&format!(
                "LoadBalancer address of Service {} (handle {:?}, sequence {}), since {}\n",
                services.join(", "),
                a.handle,
                a.sequence,
                a.attributes
                    .get(twill_ipam::ATTR_CREATED)
                    .map(String::as_str)
                    .unwrap_or("-")
            ));
        }
        Some(a) => {
            let attr = |k: &str| a.attributes.get(k).cloned().unwrap_or_else(|| "-".into());
            s.push_str(&format!(
                "held by {:?} (sequence {}), node {}, pod {}/{}, interface {}, since {}\n",
                a.handle,
                a.sequence,
                attr(twill_ipam::ATTR_NODE),
                attr(twill_ipam::ATTR_NAMESPACE),
                attr(twill_ipam::ATTR_POD),
                attr(twill_ipam::ATTR_IFNAME),
                attr(twill_ipam::ATTR_CREATED)
            ));
        }
        None if info.block.is_some() => s.push_str("free\n"),
        None => {}
    }
    s
}

fn finding_is_v6(f: &Finding) -> bool {
    match f {
        Finding::Leaked { addr, .. } | Finding::NodeGone { addr, .. } => addr.is_ipv6(),
        Finding::OrphanBlock { cidr, .. } => cidr.contains(':'),
    }
}

/// An address count as people read it: exact up to 2^32, a power of two
/// beyond (an IPv6 /56 holds 2^72), "huge" when it did not fit.
fn count_text(n: u128) -> String {
    if n == u128::MAX {
        "huge".into()
    } else if n > 1 << 32 && n.is_power_of_two() {
        format!("2^{}", n.trailing_zeros())
    } else {
        n.to_string()
    }
}

/// Totals per address family: pools, blocks, addresses allocated, the
/// addresses the blocks hold (what nodes can hand out without claiming
/// another block) and the pools' capacity; a family without pools or
/// blocks is left out.
fn family_table(pools: &[report::PoolUsage], blocks: &[report::BlockUsage]) -> String {
    let mut rows: Vec<Vec<String>> = vec![
        [
            "FAMILY",
            "POOLS",
            "BLOCKS",
            "ALLOCATED",
            "IN BLOCKS",
            "CAPACITY",
            "USAGE",
        ]
        .into_iter()
        .map(String::from)
        .collect(),
    ];
    for (name, v6) in [("IPv4", false), ("IPv6", true)] {
        let pools: Vec<&report::PoolUsage> = pools
            .iter()
            .filter(|p| p.cidr.contains(':') == v6)
            .collect();
        let blocks: Vec<&report::BlockUsage> = blocks
            .iter()
            .filter(|b| b.cidr.contains(':') == v6)
            .collect();
        if pools.is_empty() && blocks.is_empty() {
            continue;
        }
        let allocated: u128 = blocks.iter().map(|b| b.allocated as u128).sum();
        let in_blocks: u128 = blocks.iter().map(|b| u128::from(b.size)).sum();
        let capacity = pools
            .iter()
            .fold(0u128, |a, p| a.saturating_add(p.capacity));
        let usage = if capacity == 0 {
            0.0
        } else {
            allocated as f64 * 100.0 / capacity as f64
        };
        rows.push(vec![
            name.to_string(),
            pools.len().to_string(),
            blocks.len().to_string(),
            allocated.to_string(),
            in_blocks.to_string(),
            count_text(capacity),
            format!("{usage:.2}%"),
        ]);
    }
    align(&rows)
}

/// Parses an address argument.
pub fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| format!("{s:?} is not an IP address"))
}
