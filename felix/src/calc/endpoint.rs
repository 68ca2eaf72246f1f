//! Endpoints as data (pure): the record twill-node keeps of each pod
//! interface it set up, the addresses a CNI ADD asks for, the CNI result it
//! answers, how IPAM failures map to CNI codes, and what the start-up
//! repair does with each recorded endpoint ([`repair_plan`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use twill_api::resources::Allocation;
use twill_cni::protocol::Request;
use twill_cni::spec::{CniError, CniResult, Interface, IpConfig, Route, code};
use twill_ipam::{IpamError, PlanError};

/// MAC of every host-side veth: pods see one gateway MAC everywhere.
pub const HOST_MAC: [u8; 6] = [0xee; 6];
/// The IPv4 gateway pods route through (answered by the host veth).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The IPv6 gateway: the link-local address the kernel derives (EUI-64)
/// from HOST_MAC on the host veth.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Pod annotation with the addresses a pod wants (comma-separated or a JSON list).
pub const ANNOTATION_IP_ADDRS: &str = "twill.dev/ip-addrs";

/// One address of an endpoint, with the IPAM allocation behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressRecord {
    /// The address as configured in the pod (/32 or /128).
    pub addr: IpNetwork,
    pub block: String,
    pub sequence: u64,
    /// From another node's block: announced as a host route.
    #[serde(default)]
    pub borrowed: bool,
}

impl AddressRecord {
    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }
}

/// One pod interface set up by this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub container_id: String,
    pub ifname: String,
    /// Path of the pod's network namespace.
    pub netns: String,
    /// The host-side veth.
    pub host_ifname: String,
    /// The pod-side MAC address.
    pub mac: String,
    pub mtu: u32,
    pub addresses: Vec<AddressRecord>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub pod: Option<String>,
    /// Pod labels, when the pod is known to the datastore (for policy).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When it was set up (RFC 3339).
    pub created: String,
}

impl EndpointRecord {
    /// The key endpoints are known by: container ID and interface.
    pub fn key(&self) -> EndpointKey {
        EndpointKey {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

/// Container ID + interface name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointKey {
    pub container_id: String,
    pub ifname: String,
}

impl std::fmt::Display for EndpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

pub fn ipam_error(e: IpamError) -> CniError {
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
pub fn requested_addresses(req: &Request, pod: Option<&Pod>) -> Result<Vec<IpAddr>, CniError> {
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

pub fn host_prefix(a: IpAddr) -> IpNetwork {
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
                mac: format_mac(&HOST_MAC),
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
            GATEWAY_V4.to_string()
        } else {
            GATEWAY_V6.to_string()
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

/// How the drift check says IPAM gave an endpoint's address away.
pub const IPAM_LOST: &str = "IPAM no longer records";

/// What reconcile did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    pub healthy: usize,
    pub repaired: Vec<String>,
    pub removed: Vec<String>,
    pub leaked_links: Vec<String>,
    pub released: Vec<String>,
}

/// What the kernel and IPAM showed of one recorded endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub netns_exists: bool,
    /// Every difference from the record (empty: healthy).
    pub drift: Vec<String>,
}

/// What the node holds, as the start-up repair sees it.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// One per record, in the records' order.
    pub seen: Vec<Seen>,
    /// Host-side veth names on the node (`tw…`).
    pub veths: Vec<String>,
    /// The node's IPAM allocations: address, block, allocation.
    pub allocations: Vec<(IpAddr, String, Allocation)>,
}

/// What the start-up repair does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepairPlan {
    pub healthy: usize,
    /// Broken endpoints rebuilt with the same addresses, with their drift.
    pub rebuild: Vec<(EndpointRecord, Vec<String>)>,
    /// Endpoints taken down: their pod is gone, or IPAM gave their
    /// address away (it may be someone else's now), with the drift seen.
    pub remove: Vec<(EndpointRecord, Vec<String>)>,
    /// Veths no record accounts for (a crash mid-ADD).
    pub leaked_links: Vec<String>,
    /// Allocations no record accounts for: address, handle, sequence.
    pub leaked_addresses: Vec<(IpAddr, String, u64)>,
}

/// The repair for `records` given what was seen of them: healthy ones are
/// left alone, and whatever no record accounts for goes. (A removed
/// record's veth and addresses go with it, so they are not leaks.)
pub fn repair_plan(records: &[EndpointRecord], observed: &Observed) -> RepairPlan {
    let mut plan = RepairPlan::default();
    for (rec, seen) in records.iter().zip(&observed.seen) {
        if !seen.netns_exists || seen.drift.iter().any(|d| d.starts_with(IPAM_LOST)) {
            plan.remove.push((rec.clone(), seen.drift.clone()));
        } else if seen.drift.is_empty() {
            plan.healthy += 1;
        } else {
            plan.rebuild.push((rec.clone(), seen.drift.clone()));
        }
    }
    let links: BTreeSet<&str> = records.iter().map(|r| r.host_ifname.as_str()).collect();
    plan.leaked_links = observed
        .veths
        .iter()
        .filter(|n| !links.contains(n.as_str()))
        .cloned()
        .collect();
    let handles: BTreeSet<&str> = records.iter().map(|r| r.container_id.as_str()).collect();
    plan.leaked_addresses = observed
        .allocations
        .iter()
        .filter(|(_, _, a)| !handles.contains(a.handle.as_str()))
        .map(|(addr, _, a)| (*addr, a.handle.clone(), a.sequence))
        .collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> EndpointRecord {
        EndpointRecord {
            container_id: id.into(),
            ifname: "eth0".into(),
            netns: format!("/run/netns/{id}"),
            host_ifname: format!("tw{id}"),
            mac: String::new(),
            mtu: 1500,
            addresses: Vec::new(),
            namespace: None,
            pod: None,
            labels: BTreeMap::new(),
            created: String::new(),
        }
    }

    fn alloc(handle: &str, sequence: u64) -> Allocation {
        Allocation {
            handle: handle.into(),
            sequence,
            ..Default::default()
        }
    }

    #[test]
    fn the_repair_keeps_the_healthy_rebuilds_the_broken_and_removes_leaks() {
        let recs = [rec("ok"), rec("broken"), rec("podgone"), rec("lost")];
        let seen = |netns_exists, drift: &[&str]| Seen {
            netns_exists,
            drift: drift.iter().map(|d| d.to_string()).collect(),
        };
        let observed = Observed {
            seen: vec![
                seen(true, &[]),
                seen(true, &["host veth twbroken is down"]),
                seen(false, &[]),
                seen(true, &["IPAM no longer records 10.0.0.4 as held by lost"]),
            ],
            veths: ["twok", "twbroken", "twcrashed"].map(String::from).to_vec(),
            allocations: vec![
                ("10.0.0.1".parse().unwrap(), "b".into(), alloc("ok", 1)),
                ("10.0.0.9".parse().unwrap(), "b".into(), alloc("crashed", 7)),
            ],
        };
        let plan = repair_plan(&recs, &observed);
        assert_eq!(plan.healthy, 1);
        assert_eq!(plan.rebuild.len(), 1);
        assert_eq!(plan.rebuild[0].0.container_id, "broken");
        let removed: Vec<&str> = plan
            .remove
            .iter()
            .map(|(r, _)| r.container_id.as_str())
            .collect();
        assert_eq!(removed, ["podgone", "lost"]);
        assert_eq!(plan.leaked_links, ["twcrashed"]);
        assert_eq!(
            plan.leaked_addresses,
            [("10.0.0.9".parse().unwrap(), "crashed".to_string(), 7)]
        );
    }
}
