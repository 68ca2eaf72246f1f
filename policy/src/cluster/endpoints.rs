//! Which endpoints the inputs make, as seen by one node: a pod's
//! addresses come from the node's own endpoint records, else from IPAM
//! allocations, else from the Pod's status (see [`super`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{Inputs, LocalEndpoint, PodInfo, PodKey, key, local_key};
use crate::model::Endpoint;

/// A pod's allocations: node, addresses, host interface.
type Allocated = (String, Vec<IpAddr>, Option<String>);

impl Inputs {
    /// Every endpoint as seen by `node` with the recorded endpoint records
    /// ([`Inputs::set_locals`]).
    pub fn node_endpoints(&self, node: &str) -> Vec<Endpoint> {
        let locals: Vec<LocalEndpoint> = self.locals.values().flatten().cloned().collect();
        // With records, interface names come from them only.
        self.endpoints(node, Some(&locals), &|_, _| String::new())
    }

    /// The endpoints of one pod as seen by `node` with the recorded
    /// endpoint records: what [`Inputs::node_endpoints`] yields for it.
    pub fn pod_endpoints(&self, k: &PodKey, node: &str) -> Vec<Endpoint> {
        let pod = self.pods.get(k);
        if let Some(ls) = self.locals.get(k) {
            return ls
                .iter()
                .map(|l| from_record(k.clone(), l, pod, node))
                .collect();
        }
        if pod.is_some_and(|p| p.host_network) {
            return Vec::new();
        }
        let mut alloc: Option<(String, Vec<IpAddr>)> = None;
        for b in self.allocated_in.get(k).into_iter().flatten() {
            for a in self.blocks.get(b).into_iter().flatten() {
                if a.namespace == k.0 && a.pod == k.1 {
                    alloc
                        .get_or_insert_with(|| (a.node.clone(), Vec::new()))
                        .1
                        .push(a.ip);
                }
            }
        }
        // An allocation on this node without a record is not (or no longer)
        // a live endpoint; the Pod's own addresses may still make one.
        if let Some((n, ips)) = alloc
            && n != node
        {
            return vec![from_allocations(k.clone(), pod, n, ips, None)];
        }
        match pod {
            Some(p) if !p.ips.is_empty() => vec![from_status(k, p)],
            _ => Vec::new(),
        }
    }

    /// The endpoints as seen by `node` (see [`super::build`]).
    pub fn endpoints(
        &self,
        node: &str,
        locals: Option<&[LocalEndpoint]>,
        iface_of: &dyn Fn(&str, &str) -> String,
    ) -> Vec<Endpoint> {
        let pods = &self.pods;
        let host_network = |k: &(String, String)| pods.get(k).is_some_and(|p| p.host_network);
        let mut endpoints = Vec::new();
        let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
        for l in locals.unwrap_or_default() {
            let k = local_key(l);
            endpoints.push(from_record(k.clone(), l, pods.get(&k), node));
            seen.insert(k);
        }
        // IPAM allocations: (namespace, pod) → (node, ips, iface).
        let mut allocated: BTreeMap<(String, String), Allocated> = BTreeMap::new();
        for a in self.blocks.values().flatten() {
            let iface = a.ifname.as_ref().map(|ifn| iface_of(&a.handle, ifn));
            let e = allocated
                .entry(key(&a.namespace, &a.pod))
                .or_insert_with(|| (a.node.clone(), Vec::new(), iface));
            e.1.push(a.ip);
        }
        for (k, (n, ips, iface)) in allocated {
            if seen.contains(&k) || host_network(&k) {
                continue;
            }
            // twill-node knows its own endpoints from its records: an
            // allocation on this node without one is not (or no longer) a
            // live endpoint.
            if locals.is_some() && n == node {
                continue;
            }
            let iface = if locals.is_none() { iface } else { None };
            endpoints.push(from_allocations(k.clone(), pods.get(&k), n, ips, iface));
            seen.insert(k);
        }
        for (k, p) in pods {
            if seen.contains(k) || p.host_network || p.ips.is_empty() {
                continue;
            }
            endpoints.push(from_status(k, p));
        }
        endpoints
    }
}

/// The endpoint of one of the node's records: labels from the Pod when it
/// is known, else those recorded at ADD.
fn from_record(k: PodKey, l: &LocalEndpoint, pod: Option<&PodInfo>, node: &str) -> Endpoint {
    Endpoint {
        labels: pod.map_or_else(|| l.labels.clone(), |p| p.labels.clone()),
        ports: pod.map(|p| p.ports.clone()).unwrap_or_default(),
        namespace: k.0,
        name: k.1,
        ips: l.ips.clone(),
        node: node.to_string(),
        iface: Some(l.iface.clone()),
    }
}

/// The endpoint of a pod's IPAM allocations on `node`.
fn from_allocations(
    k: PodKey,
    pod: Option<&PodInfo>,
    node: String,
    mut ips: Vec<IpAddr>,
    iface: Option<String>,
) -> Endpoint {
    ips.sort();
    Endpoint {
        labels: pod.map(|p| p.labels.clone()).unwrap_or_default(),
        ports: pod.map(|p| p.ports.clone()).unwrap_or_default(),
        namespace: k.0,
        name: k.1,
        ips,
        node,
        iface,
    }
}

/// The endpoint of a Pod's own addresses (`status.podIPs`).
fn from_status(k: &PodKey, p: &PodInfo) -> Endpoint {
    Endpoint {
        labels: p.labels.clone(),
        ports: p.ports.clone(),
        namespace: k.0.clone(),
        name: k.1.clone(),
        ips: p.ips.clone(),
        node: p.node.clone(),
        iface: None,
    }
}
