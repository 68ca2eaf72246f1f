//! From datastore objects to the [`Model`]: the one place that decides which
//! pods exist for policy, with which addresses, labels and named ports, so
//! twill-node (rendering) and twillctl (explain, show) see the same thing.
//!
//! A pod's addresses come, in order of preference, from the node's own
//! endpoint records (twill-node only), from IPAM allocations carrying the
//! pod's namespace and name, or from the Pod's `status.podIPs`. Pods on the
//! host network are not endpoints.
//!
//! Endpoints a CNI ADD made without `K8S_POD_NAMESPACE` (podman does this)
//! are endpoints of no namespace (namespace empty, named by container ID,
//! no labels) on every node and in twillctl alike: their IPAM allocations
//! carry the interface name but no namespace, and their records none.
//! NetworkPolicies never select or match them; GlobalNetworkPolicies
//! without a namespaceSelector do, by labels (see
//! [`crate::model::Model::ns_matches`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use twill_api::resources::{GlobalNetworkPolicy, IPAMBlock};

use crate::model::{
    CompileError, Endpoint, Labels, Model, NamedPort, Policy, compile_global_policy,
    compile_network_policy, proto,
};

/// IPAM allocation attributes (the IPAM crate's names).
const ATTR_NODE: &str = "node";
const ATTR_NAMESPACE: &str = "namespace";
const ATTR_POD: &str = "pod";
const ATTR_IFNAME: &str = "ifname";

/// An endpoint the rendering node set up itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    /// Labels recorded at ADD (used when the Pod object is unknown).
    pub labels: Labels,
    pub ips: Vec<IpAddr>,
    pub iface: String,
    pub container_id: String,
}

/// Everything read from the datastore.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub pods: Vec<Pod>,
    pub namespaces: Vec<Namespace>,
    pub network_policies: Vec<NetworkPolicy>,
    pub global_policies: Vec<GlobalNetworkPolicy>,
    pub blocks: Vec<IPAMBlock>,
}

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

/// A pod's allocations: node, addresses, host interface.
type Allocated = (String, Vec<IpAddr>, Option<String>);

fn key(ns: &str, name: &str) -> (String, String) {
    (ns.to_string(), name.to_string())
}

/// The pod an endpoint record belongs to (its container ID when unknown).
fn local_key(l: &LocalEndpoint) -> PodKey {
    (
        l.namespace.clone().unwrap_or_default(),
        l.pod.clone().unwrap_or_else(|| l.container_id.clone()),
    )
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

/// A pod's (namespace, name).
pub type PodKey = (String, String);

/// Datastore objects reduced to what policy needs (twill-node keeps this
/// up to date from its watches instead of keeping whole objects). Pods,
/// blocks and the node's endpoint records change through methods that note
/// which pods' endpoints may have changed ([`Inputs::take_changed`]).
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// (namespace, name) → pod.
    pods: BTreeMap<PodKey, PodInfo>,
    /// Namespace → labels.
    pub namespaces: BTreeMap<String, Labels>,
    /// Block name → its pods' allocations.
    blocks: BTreeMap<String, Vec<Allocation>>,
    /// Pod → blocks holding allocations for it.
    allocated_in: BTreeMap<PodKey, BTreeSet<String>>,
    /// The node's endpoint records by pod (see [`Inputs::set_locals`]).
    locals: BTreeMap<PodKey, Vec<LocalEndpoint>>,
    /// Pods whose endpoints may have changed since the last take.
    changed: BTreeSet<PodKey>,
    /// Everything may have changed.
    all_changed: bool,
    /// (namespace, name) → compiled NetworkPolicy (shared, so a consumer
    /// can tell an unchanged policy by pointer).
    pub network_policies: BTreeMap<(String, String), Arc<Policy>>,
    /// name → compiled GlobalNetworkPolicy.
    pub global_policies: BTreeMap<String, Arc<Policy>>,
}

impl Inputs {
    /// Reduces objects; policies that do not compile are left out and
    /// returned with the reason.
    pub fn of(objs: &Objects) -> (Inputs, Vec<CompileError>) {
        let mut errors = Vec::new();
        let mut i = Inputs {
            namespaces: objs
                .namespaces
                .iter()
                .filter_map(|n| {
                    Some((
                        n.metadata.name.clone()?,
                        n.metadata.labels.clone().unwrap_or_default(),
                    ))
                })
                .collect(),
            ..Default::default()
        };
        i.replace_pods(objs.pods.iter().filter_map(PodInfo::of).collect());
        i.replace_blocks(
            objs.blocks
                .iter()
                .map(|b| (b.metadata.name.clone().unwrap_or_default(), allocations(b)))
                .collect(),
        );
        for np in &objs.network_policies {
            if let Err(e) = i.apply_network_policy(np) {
                errors.push(e);
            }
        }
        for g in &objs.global_policies {
            if let Err(e) = i.apply_global_policy(g) {
                errors.push(e);
            }
        }
        (i, errors)
    }

    /// Records a NetworkPolicy; one that does not compile is left out.
    pub fn apply_network_policy(&mut self, np: &NetworkPolicy) -> Result<(), CompileError> {
        let k = key(
            np.metadata.namespace.as_deref().unwrap_or_default(),
            np.metadata.name.as_deref().unwrap_or_default(),
        );
        record(&mut self.network_policies, k, compile_network_policy(np))
    }

    /// Records a GlobalNetworkPolicy; one that does not compile is left out.
    pub fn apply_global_policy(&mut self, g: &GlobalNetworkPolicy) -> Result<(), CompileError> {
        let k = g.metadata.name.clone().unwrap_or_default();
        record(&mut self.global_policies, k, compile_global_policy(g))
    }

    /// Records a pod.
    pub fn apply_pod(&mut self, key: PodKey, pod: PodInfo) {
        if self.pods.get(&key) != Some(&pod) {
            self.changed.insert(key.clone());
            self.pods.insert(key, pod);
        }
    }

    /// Forgets a pod.
    pub fn remove_pod(&mut self, key: &PodKey) {
        if self.pods.remove(key).is_some() {
            self.changed.insert(key.clone());
        }
    }

    /// Replaces every pod (a full listing).
    pub fn replace_pods(&mut self, pods: BTreeMap<PodKey, PodInfo>) {
        self.pods = pods;
        self.all_changed = true;
    }

    /// The pods.
    pub fn pods(&self) -> &BTreeMap<PodKey, PodInfo> {
        &self.pods
    }

    /// Records a block's allocations.
    pub fn apply_block(&mut self, name: &str, allocs: Vec<Allocation>) {
        self.remove_block(name);
        for a in &allocs {
            let k = key(&a.namespace, &a.pod);
            self.allocated_in
                .entry(k.clone())
                .or_default()
                .insert(name.to_string());
            self.changed.insert(k);
        }
        self.blocks.insert(name.to_string(), allocs);
    }

    /// Forgets a block.
    pub fn remove_block(&mut self, name: &str) {
        for a in self.blocks.remove(name).unwrap_or_default() {
            let k = key(&a.namespace, &a.pod);
            if let Some(b) = self.allocated_in.get_mut(&k) {
                b.remove(name);
                if b.is_empty() {
                    self.allocated_in.remove(&k);
                }
            }
            self.changed.insert(k);
        }
    }

    /// Replaces every block (a full listing).
    pub fn replace_blocks(&mut self, blocks: BTreeMap<String, Vec<Allocation>>) {
        self.allocated_in.clear();
        for (name, allocs) in &blocks {
            for a in allocs {
                self.allocated_in
                    .entry(key(&a.namespace, &a.pod))
                    .or_default()
                    .insert(name.clone());
            }
        }
        self.blocks = blocks;
        self.all_changed = true;
    }

    /// Sets the node's endpoint records (twill-node's view: with records,
    /// this node's allocations without one are not endpoints).
    pub fn set_locals(&mut self, locals: &[LocalEndpoint]) {
        let mut by_pod: BTreeMap<PodKey, Vec<LocalEndpoint>> = BTreeMap::new();
        for l in locals {
            by_pod.entry(local_key(l)).or_default().push(l.clone());
        }
        for k in self.locals.keys().chain(by_pod.keys()) {
            if self.locals.get(k) != by_pod.get(k) {
                self.changed.insert(k.clone());
            }
        }
        self.locals = by_pod;
    }

    /// The pods whose endpoints may have changed since the last call, or
    /// None when everything may have.
    pub fn take_changed(&mut self) -> Option<BTreeSet<PodKey>> {
        let changed = std::mem::take(&mut self.changed);
        if std::mem::take(&mut self.all_changed) {
            None
        } else {
            Some(changed)
        }
    }

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
                .map(|l| Endpoint {
                    labels: pod.map_or_else(|| l.labels.clone(), |p| p.labels.clone()),
                    ports: pod.map(|p| p.ports.clone()).unwrap_or_default(),
                    namespace: k.0.clone(),
                    name: k.1.clone(),
                    ips: l.ips.clone(),
                    node: node.to_string(),
                    iface: Some(l.iface.clone()),
                })
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
        if let Some((n, mut ips)) = alloc
            && n != node
        {
            ips.sort();
            return vec![Endpoint {
                labels: pod.map(|p| p.labels.clone()).unwrap_or_default(),
                ports: pod.map(|p| p.ports.clone()).unwrap_or_default(),
                namespace: k.0.clone(),
                name: k.1.clone(),
                ips,
                iface: None,
                node: n,
            }];
        }
        match pod {
            Some(p) if !p.ips.is_empty() => vec![Endpoint {
                labels: p.labels.clone(),
                ports: p.ports.clone(),
                namespace: k.0.clone(),
                name: k.1.clone(),
                ips: p.ips.clone(),
                node: p.node.clone(),
                iface: None,
            }],
            _ => Vec::new(),
        }
    }

    /// Every compiled policy.
    pub fn policies(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.network_policies
            .values()
            .chain(self.global_policies.values())
    }

    /// The endpoints as seen by `node` (see [`build`]).
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
            let (ns, name) = k.clone();
            let pod = pods.get(&k);
            seen.insert(k);
            endpoints.push(Endpoint {
                labels: pod.map_or_else(|| l.labels.clone(), |p| p.labels.clone()),
                ports: pod.map(|p| p.ports.clone()).unwrap_or_default(),
                namespace: ns,
                name,
                ips: l.ips.clone(),
                node: node.to_string(),
                iface: Some(l.iface.clone()),
            });
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
        for (k, (n, mut ips, iface)) in allocated {
            if seen.contains(&k) || host_network(&k) {
                continue;
            }
            // twill-node knows its own endpoints from its records: an
            // allocation on this node without one is not (or no longer) a
            // live endpoint.
            if locals.is_some() && n == node {
                continue;
            }
            ips.sort();
            let pod = pods.get(&k);
            seen.insert(k.clone());
            endpoints.push(Endpoint {
                labels: pod.map(|p| p.labels.clone()).unwrap_or_default(),
                ports: pod.map(|p| p.ports.clone()).unwrap_or_default(),
                namespace: k.0,
                name: k.1,
                ips,
                iface: if locals.is_none() { iface } else { None },
                node: n,
            });
        }
        for (k, p) in pods {
            if seen.contains(k) || p.host_network || p.ips.is_empty() {
                continue;
            }
            endpoints.push(Endpoint {
                labels: p.labels.clone(),
                ports: p.ports.clone(),
                namespace: k.0.clone(),
                name: k.1.clone(),
                ips: p.ips.clone(),
                node: p.node.clone(),
                iface: None,
            });
        }
        endpoints
    }
}

/// Builds the model as seen by `node` (`locals`: its endpoint records;
/// empty for tools, which derive interface names with `iface_of(container
/// ID, interface)` from IPAM allocations instead). Policies that do not
/// compile are left out and returned with the reason.
pub fn build(
    objs: &Objects,
    node: &str,
    locals: Option<&[LocalEndpoint]>,
    iface_of: &dyn Fn(&str, &str) -> String,
) -> (Model, Vec<CompileError>) {
    let (inputs, errors) = Inputs::of(objs);
    let endpoints = inputs.endpoints(node, locals, iface_of);
    let policies = inputs.policies().map(|p| Policy::clone(p)).collect();
    (Model::new(endpoints, inputs.namespaces, policies), errors)
}

/// Keeps a compiled policy under `key`, or drops the previous one when the
/// new version does not compile (a broken policy never keeps its old rules).
fn record<K: Ord>(
    map: &mut BTreeMap<K, Arc<Policy>>,
    key: K,
    compiled: Result<Policy, CompileError>,
) -> Result<(), CompileError> {
    match compiled {
        Ok(p) => {
            map.insert(key, Arc::new(p));
            Ok(())
        }
        Err(e) => {
            map.remove(&key);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn endpoints_of_no_namespace_are_the_same_everywhere() {
        // A CNI ADD without K8S_POD_NAMESPACE on n2 (podman): its
        // allocation carries the interface but no namespace or pod.
        let block: IPAMBlock = serde_json::from_value(json!({"metadata": {"name": "b"}, "spec": {
            "cidr": "10.1.0.0/26", "pool": "p", "sequence": 1, "allocations": [
                {"ordinal": 5, "handle": "cid-podman", "sequence": 1, "attributes": {"node": "n2", "ifname": "eth0"}},
                {"ordinal": 6, "handle": "by-hand", "sequence": 2, "attributes": {"node": "n2"}}]}}))
        .unwrap();
        let gnp: GlobalNetworkPolicy = serde_json::from_value(json!({"metadata": {"name": "g"},
            "spec": {"selector": "all()", "ingress": [{"action": "Allow", "source": {"selector": "all()"}}]}}))
        .unwrap();
        let np: NetworkPolicy =
            serde_json::from_value(json!({"metadata": {"name": "n", "namespace": "x"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}}))
            .unwrap();
        let objs = Objects {
            blocks: vec![block],
            global_policies: vec![gnp],
            network_policies: vec![np],
            ..Default::default()
        };
        let ip: IpAddr = "10.1.0.5".parse().unwrap();
        // Another node and a tool see it; an address reserved by hand is
        // not an endpoint.
        let (m, _) = build(&objs, "n1", Some(&[]), &|_, _| String::new());
        let ep = m.endpoints_at(ip).next().expect("the podman endpoint");
        assert_eq!(
            (ep.id().as_str(), ep.node.as_str()),
            ("container cid-podman", "n2")
        );
        assert!(m.endpoints_at("10.1.0.6".parse().unwrap()).next().is_none());
        let (tool, _) = build(&objs, "", None, &|c, i| format!("{c}-{i}"));
        let ep = tool.endpoints_at(ip).next().expect("twillctl sees it");
        assert_eq!(ep.iface.as_deref(), Some("cid-podman-eth0"));
        // Its own node names its record the same way.
        let local = LocalEndpoint {
            namespace: None,
            pod: None,
            labels: Labels::new(),
            ips: vec![ip],
            iface: "twpod".into(),
            container_id: "cid-podman".into(),
        };
        let (own, _) = build(&objs, "n2", Some(std::slice::from_ref(&local)), &|_, _| {
            String::new()
        });
        let eps: Vec<_> = own.endpoints_at(ip).collect();
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].id(), "container cid-podman");
        // Selections: the global policy's `all()` takes it in, the
        // NetworkPolicy's namespaceSelector {} does not.
        for model in [&m, &tool, &own] {
            let by = |id: &str| model.policies.iter().find(|p| p.id == id).unwrap();
            let peer = |p: &Policy| match &p.ingress.as_ref().unwrap()[0].src.peers[0] {
                crate::model::Peer::Pods(s) => s.clone(),
                other => panic!("{other:?}"),
            };
            assert_eq!(model.members(&peer(by("gnp/g"))), vec![ip]);
            assert!(model.members(&peer(by("np/x/n"))).is_empty());
        }
    }

    #[test]
    fn pods_get_addresses_from_records_then_ipam_then_status() {
        let pod = |ns: &str, name: &str, extra: serde_json::Value| -> Pod {
            let mut v = json!({"metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "ports": [{"name": "web", "containerPort": 8080}]}]}});
            if let Some(o) = extra.as_object() {
                for (k, x) in o {
                    v[k] = x.clone();
                }
            }
            serde_json::from_value(v).unwrap()
        };
        let block: IPAMBlock = serde_json::from_value(json!({"metadata": {"name": "b"}, "spec": {
            "cidr": "10.1.0.0/26", "pool": "p", "sequence": 1, "allocations": [
                {"ordinal": 3, "handle": "cid-b", "sequence": 1, "attributes": {"node": "n2", "namespace": "x", "pod": "b", "ifname": "eth0"}},
                {"ordinal": 4, "handle": "cid-a", "sequence": 2, "attributes": {"node": "n1", "namespace": "x", "pod": "a", "ifname": "eth0"}}]}}))
        .unwrap();
        let objs = Objects {
            pods: vec![
                pod("x", "a", json!({})),
                pod("x", "b", json!({})),
                pod(
                    "x",
                    "c",
                    json!({"status": {"podIPs": [{"ip": "10.9.0.1"}]}}),
                ),
                pod(
                    "x",
                    "h",
                    json!({"spec": {"hostNetwork": true, "containers": []}, "status": {"podIPs": [{"ip": "192.0.2.1"}]}}),
                ),
            ],
            blocks: vec![block],
            ..Default::default()
        };
        let local = LocalEndpoint {
            namespace: Some("x".into()),
            pod: Some("a".into()),
            labels: Labels::new(),
            ips: vec!["10.1.0.4".parse().unwrap()],
            iface: "twlocal".into(),
            container_id: "cid-a".into(),
        };
        let (m, errs) = build(&objs, "n1", Some(std::slice::from_ref(&local)), &|c, i| {
            format!("if-{c}-{i}")
        });
        assert!(errs.is_empty());
        let by: BTreeMap<String, &Endpoint> =
            m.endpoints.iter().map(|e| (e.name.clone(), e)).collect();
        assert_eq!(by["a"].iface.as_deref(), Some("twlocal"));
        assert_eq!(
            by["a"].labels["app"], "a",
            "labels come from the Pod object"
        );
        assert_eq!(by["a"].ports[0].port, 8080);
        assert_eq!(by["b"].ips, ["10.1.0.3".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            (by["b"].node.as_str(), by["b"].iface.as_deref()),
            ("n2", None)
        );
        assert_eq!(by["c"].ips, ["10.9.0.1".parse::<IpAddr>().unwrap()]);
        assert!(!by.contains_key("h"), "host-network pods are not endpoints");
        // twill-node's per-pod derivation yields the same endpoints.
        let (mut inputs, _) = Inputs::of(&objs);
        inputs.set_locals(std::slice::from_ref(&local));
        let mut keys: BTreeSet<PodKey> = inputs.pods().keys().cloned().collect();
        keys.insert(key("x", "a"));
        keys.insert(key("x", "gone"));
        let mut per_pod: Vec<Endpoint> = keys
            .iter()
            .flat_map(|k| inputs.pod_endpoints(k, "n1"))
            .collect();
        let mut all = inputs.node_endpoints("n1");
        let by_id = |a: &Endpoint, b: &Endpoint| a.id().cmp(&b.id());
        per_pod.sort_by(by_id);
        all.sort_by(by_id);
        assert_eq!(per_pod, all);
        assert_eq!(per_pod.len(), 3, "a (record), b (IPAM), c (status)");
        // A tool without records derives interfaces from the allocations.
        let (m, _) = build(&objs, "n1", None, &|c, i| format!("if-{c}-{i}"));
        let a = m.endpoints.iter().find(|e| e.name == "a").unwrap();
        assert_eq!(
            (a.node.as_str(), a.iface.as_deref()),
            ("n1", Some("if-cid-a-eth0"))
        );
    }
}
