//! API defaulting for the native objects Twill reads, done by Twill itself
//! so that every datastore sees the same object the Kubernetes API server
//! would store. The embedded store has no API server; without this an
//! object written there means something else than the same YAML applied to
//! a cluster (a NetworkPolicy with `egress: []` and no `policyTypes` would
//! isolate egress).
//!
//! Each function follows one upstream `SetDefaults_*` rule, named in its
//! doc (Kubernetes `pkg/apis/<group>/v1/defaults.go`). Defaulting is
//! idempotent, so the store applies it on every write and again on every
//! typed read (objects written before this existed, or by another writer).

use k8s_openapi::api::core::v1::{Container, Namespace, Pod, Service};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// `kubernetes.io/metadata.name`, set on every Namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// `SetDefaults_NetworkPolicy` (networking/v1): no `policyTypes` means
/// `[Ingress]`, plus `Egress` when `egress` has at least one rule (an empty
/// or absent `egress` list does not make the policy govern egress).
/// `SetDefaults_NetworkPolicyPort`: a port without `protocol` is TCP.
pub fn network_policy(np: &mut NetworkPolicy) {
    let Some(spec) = np.spec.as_mut() else {
        return;
    };
    if spec.policy_types.as_ref().is_none_or(Vec::is_empty) {
        let mut types = vec!["Ingress".to_string()];
        if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
            types.push("Egress".to_string());
        }
        spec.policy_types = Some(types);
    }
    let ports = spec
        .ingress
        .iter_mut()
        .flatten()
        .flat_map(|r| r.ports.iter_mut().flatten())
        .chain(
            spec.egress
                .iter_mut()
                .flatten()
                .flat_map(|r| r.ports.iter_mut().flatten()),
        );
    for p in ports {
        network_policy_port(p);
    }
}

fn network_policy_port(p: &mut NetworkPolicyPort) {
    if p.protocol.is_none() {
        p.protocol = Some("TCP".to_string());
    }
}

/// `SetDefaults_ContainerPort` (core/v1): a container port without
/// `protocol` is TCP. `SetDefaults_Pod`: on a host-network pod, a container
/// port without `hostPort` gets `hostPort = containerPort`
/// (`defaultHostNetworkPorts`, containers and init containers).
pub fn pod(p: &mut Pod) {
    let Some(spec) = p.spec.as_mut() else {
        return;
    };
    let host_network = spec.host_network == Some(true);
    let containers = spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten());
    for c in containers {
        container(c, host_network);
    }
}

fn container(c: &mut Container, host_network: bool) {
    for port in c.ports.iter_mut().flatten() {
        if port.protocol.as_deref().is_none_or(str::is_empty) {
            port.protocol = Some("TCP".to_string());
        }
        if host_network && port.host_port.unwrap_or(0) == 0 {
            port.host_port = Some(port.container_port);
        }
    }
}

/// `SetDefaults_Namespace` (core/v1, Kubernetes 1.21 and later; always on
/// since 1.22): the label `kubernetes.io/metadata.name` is the namespace's
/// name, whatever the writer put there. Policies select namespaces by it.
pub fn namespace(ns: &mut Namespace) {
    let Some(name) = ns.metadata.name.clone().filter(|n| !n.is_empty()) else {
        return;
    };
    ns.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(NAMESPACE_NAME_LABEL.to_string(), name);
}

/// `SetDefaults_Service` (core/v1): type ClusterIP, sessionAffinity None,
/// no node ports on a ClusterIP or ExternalName Service (the update
/// strategy's `dropTypeDependentFields`),
/// each port's protocol TCP and targetPort its port,
/// internalTrafficPolicy Cluster, externalTrafficPolicy Cluster for
/// NodePort and LoadBalancer Services. (`ipFamilies`, `ipFamilyPolicy`,
/// cluster IPs and node ports are allocated, not defaulted: the embedded
/// store does that in the write, `service::assign_cluster_fields`.)
pub fn service(s: &mut Service) {
    let Some(spec) = s.spec.as_mut() else {
        return;
    };
    let ty = spec.type_.get_or_insert_with(|| "ClusterIP".into()).clone();
    if ty == "ClusterIP" || ty == "ExternalName" {
        // What the API server drops when a Service changes type (node ports
        // of a former NodePort or LoadBalancer Service).
        for p in spec.ports.iter_mut().flatten() {
            p.node_port = None;
        }
    }
    if ty == "ExternalName" {
        return;
    }
    spec.session_affinity.get_or_insert_with(|| "None".into());
    for p in spec.ports.iter_mut().flatten() {
        if p.protocol.as_deref().is_none_or(str::is_empty) {
            p.protocol = Some("TCP".into());
        }
        let unset = match &p.target_port {
            None => true,
            Some(IntOrString::Int(0)) => true,
            Some(IntOrString::String(s)) => s.is_empty(),
            _ => false,
        };
        if unset {
            p.target_port = Some(IntOrString::Int(p.port));
        }
    }
    spec.internal_traffic_policy
        .get_or_insert_with(|| "Cluster".into());
    if ty == "NodePort" || ty == "LoadBalancer" {
        spec.external_traffic_policy
            .get_or_insert_with(|| "Cluster".into());
    }
}

#[cfg(test)]
mod tests {
    //! Table-driven against the upstream rules: each row is an object as a
    //! user writes it and the object the API server stores (v1.20–v1.31
    //! `SetDefaults_NetworkPolicy`, `SetDefaults_NetworkPolicyPort`,
    //! `SetDefaults_ContainerPort`, `SetDefaults_Pod`/`defaultHostNetworkPorts`,
    //! `SetDefaults_Namespace`).
    use super::*;
    use serde_json::{Value, json};

    fn np(spec: Value) -> NetworkPolicy {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "d"}, "spec": spec}))
            .unwrap()
    }

    fn spec_of(n: &NetworkPolicy) -> Value {
        serde_json::to_value(n.spec.as_ref().unwrap()).unwrap()
    }

    #[test]
    fn network_policy_defaults_match_the_api_server() {
        let sel = json!({});
        let rows: Vec<(&str, Value, Value)> = vec![
            (
                "no types, no rules: Ingress",
                json!({"podSelector": sel}),
                json!(["Ingress"]),
            ),
            (
                "no types, egress: [] (empty): Ingress only",
                json!({"podSelector": sel, "egress": []}),
                json!(["Ingress"]),
            ),
            (
                "no types, ingress: []: Ingress",
                json!({"podSelector": sel, "ingress": []}),
                json!(["Ingress"]),
            ),
            (
                "no types, one egress rule: Ingress and Egress",
                json!({"podSelector": sel, "egress": [{}]}),
                json!(["Ingress", "Egress"]),
            ),
            (
                "policyTypes: [] counts as absent",
                json!({"podSelector": sel, "policyTypes": [], "egress": [{}]}),
                json!(["Ingress", "Egress"]),
            ),
            (
                "explicit Egress only is kept",
                json!({"podSelector": sel, "policyTypes": ["Egress"]}),
                json!(["Egress"]),
            ),
            (
                "explicit Ingress with egress rules is kept",
                json!({"podSelector": sel, "policyTypes": ["Ingress"], "egress": [{}]}),
                json!(["Ingress"]),
            ),
        ];
        for (what, spec, want) in rows {
            let mut p = np(spec);
            network_policy(&mut p);
            assert_eq!(spec_of(&p)["policyTypes"], want, "{what}");
            let once = p.clone();
            network_policy(&mut p);
            assert_eq!(p, once, "{what}: defaulting twice changes nothing");
        }
    }

    #[test]
    fn network_policy_ports_default_to_tcp() {
        let mut p = np(json!({
            "podSelector": {},
            "ingress": [{"ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}, {}]}],
            "egress": [{"ports": [{"port": "dns"}, {"protocol": "SCTP"}]}]
        }));
        network_policy(&mut p);
        let s = spec_of(&p);
        let protos = |dir: &str| -> Vec<Value> {
            s[dir][0]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["protocol"].clone())
                .collect()
        };
        assert_eq!(
            protos("ingress"),
            vec![json!("TCP"), json!("UDP"), json!("TCP")]
        );
        assert_eq!(protos("egress"), vec![json!("TCP"), json!("SCTP")]);
    }

    #[test]
    fn pod_ports_default_like_the_api_server() {
        let rows: Vec<(&str, bool, Value, Value)> = vec![
            (
                "protocol TCP when absent",
                false,
                json!({"containerPort": 80, "name": "http"}),
                json!({"containerPort": 80, "name": "http", "protocol": "TCP"}),
            ),
            (
                "protocol kept",
                false,
                json!({"containerPort": 53, "protocol": "UDP"}),
                json!({"containerPort": 53, "protocol": "UDP"}),
            ),
            (
                "host network: hostPort = containerPort",
                true,
                json!({"containerPort": 9099}),
                json!({"containerPort": 9099, "hostPort": 9099, "protocol": "TCP"}),
            ),
            (
                "host network: a hostPort given is kept",
                true,
                json!({"containerPort": 9099, "hostPort": 19099}),
                json!({"containerPort": 9099, "hostPort": 19099, "protocol": "TCP"}),
            ),
            (
                "pod network: no hostPort added",
                false,
                json!({"containerPort": 9099}),
                json!({"containerPort": 9099, "protocol": "TCP"}),
            ),
        ];
        for (what, host, port, want) in rows {
            let mut p: Pod = serde_json::from_value(json!({
                "metadata": {"name": "a"},
                "spec": {
                    "hostNetwork": host,
                    "containers": [{"name": "c", "ports": [port.clone()]}],
                    "initContainers": [{"name": "i", "ports": [port]}]
                }
            }))
            .unwrap();
            pod(&mut p);
            let v = serde_json::to_value(&p).unwrap();
            assert_eq!(v["spec"]["containers"][0]["ports"][0], want, "{what}");
            assert_eq!(
                v["spec"]["initContainers"][0]["ports"][0], want,
                "{what} (init)"
            );
        }
    }

    #[test]
    fn namespaces_carry_their_name_label() {
        let mut ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": "shop", "labels": {"kubernetes.io/metadata.name": "forged", "team": "a"}}
        }))
        .unwrap();
        namespace(&mut ns);
        let labels = ns.metadata.labels.unwrap();
        assert_eq!(labels[NAMESPACE_NAME_LABEL], "shop");
        assert_eq!(labels["team"], "a");
        let mut bare: Namespace =
            serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
        namespace(&mut bare);
        assert_eq!(bare.metadata.labels.unwrap()[NAMESPACE_NAME_LABEL], "x");
    }
}
