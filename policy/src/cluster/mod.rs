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
//!
//! Objects are reduced in `objects`, kept in [`Inputs`] (`inputs`), and
//! turned into endpoints in `endpoints`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use twill_api::resources::{GlobalNetworkPolicy, IPAMBlock};

use crate::model::{CompileError, Labels, Model, Policy};

mod endpoints;
mod inputs;
mod objects;

pub use objects::{Allocation, PodInfo, allocations, named_ports};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Endpoint;
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
