//! Datastore objects reduced to what policy needs: a Pod's labels, named
//! ports, node and addresses ([`PodInfo`]), and a block's allocations made
//! for endpoints ([`Allocation`]).

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Pod;
use twill_api::resources::IPAMBlock;

use super::key;
use crate::model::{Labels, NamedPort, proto};

/// IPAM allocation attributes (the IPAM crate's names).
const ATTR_NODE: &str = "node";
const ATTR_NAMESPACE: &str = "namespace";
const ATTR_POD: &str = "pod";
const ATTR_IFNAME: &str = "ifname";

/// A pod's named container ports.
pub fn named_ports(pod: &Pod) -> Vec<NamedPort> {
    let mut out = Vec::new();
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        for p in c.ports.iter().flatten() {
            let (Some(name), Ok(port)) = (&p.name, u16::try_from(p.container_port)) else {
                continue;
            };
            let proto = match p.protocol.as_deref().unwrap_or("TCP") {
                "UDP" => proto::UDP,
                "SCTP" => proto::SCTP,
                _ => proto::TCP,
            };
            out.push(NamedPort {
                name: name.clone(),
                proto,
                port,
            });
        }
    }
    out
}

/// The address at `ordinal` in a block.
fn addr_at(cidr: &str, ordinal: u32) -> Option<IpAddr> {
    let net: IpNetwork = cidr.parse().ok()?;
    match net {
        IpNetwork::V4(n) => {
            let base = u32::from(n.network());
            Some(IpAddr::V4(base.checked_add(ordinal)?.into()))
        }
        IpNetwork::V6(n) => {
            let base = u128::from(n.network());
            Some(IpAddr::V6(base.checked_add(u128::from(ordinal))?.into()))
        }
    }
}

/// What policy needs from a Pod object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub labels: Labels,
    pub ports: Vec<NamedPort>,
    pub host_network: bool,
    /// `spec.nodeName`.
    pub node: String,
    /// `status.podIPs`.
    pub ips: Vec<IpAddr>,
}

impl PodInfo {
    /// The pod's (namespace, name) and what policy needs from it.
    pub fn of(p: &Pod) -> Option<((String, String), PodInfo)> {
        let k = key(
            p.metadata.namespace.as_deref()?,
            p.metadata.name.as_deref()?,
        );
        Some((
            k,
            PodInfo {
                labels: p.metadata.labels.clone().unwrap_or_default(),
                ports: named_ports(p),
                host_network: p
                    .spec
                    .as_ref()
                    .and_then(|s| s.host_network)
                    .unwrap_or(false),
                node: p
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
                ips: p
                    .status
                    .iter()
                    .flat_map(|s| s.pod_ips.iter().flatten())
                    .filter_map(|i| i.ip.parse().ok())
                    .collect(),
            },
        ))
    }
}

/// An IPAM allocation made for a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub namespace: String,
    pub pod: String,
    pub node: String,
    pub ip: IpAddr,
    /// The allocation handle (the container ID) and interface, if recorded.
    pub handle: String,
    pub ifname: Option<String>,
}

/// A block's allocations made for endpoints: those that carry a pod's
/// namespace and name, and those a CNI ADD without them made (they carry
/// the interface name): a missing namespace is none (empty), a missing pod
/// name is the handle (the container ID), as the node names its record.
pub fn allocations(b: &IPAMBlock) -> Vec<Allocation> {
    let mut out = Vec::new();
    for a in &b.spec.allocations {
        let (ns, pod) = (a.attributes.get(ATTR_NAMESPACE), a.attributes.get(ATTR_POD));
        if (ns.is_none() || pod.is_none()) && !a.attributes.contains_key(ATTR_IFNAME) {
            // Not an endpoint's (an address reserved by hand).
            continue;
        }
        // Named as the node names its record (`local_key`).
        let ns = ns.cloned().unwrap_or_default();
        let pod = pod.cloned().unwrap_or_else(|| a.handle.clone());
        let Some(ip) = addr_at(&b.spec.cidr, a.ordinal) else {
            continue;
        };
        out.push(Allocation {
            namespace: ns.clone(),
            pod: pod.clone(),
            node: a.attributes.get(ATTR_NODE).cloned().unwrap_or_default(),
            ip,
            handle: a.handle.clone(),
            ifname: a.attributes.get(ATTR_IFNAME).cloned(),
        });
    }
    out
}
