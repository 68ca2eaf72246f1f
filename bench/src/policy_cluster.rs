//! The synthetic cluster the policy-engine benchmarks share
//! (`policy_control`, `nft_apply`): `total` pods over 20 namespaces and 100
//! apps, the first `local` on this node, and `pols` NetworkPolicies of one
//! realistic shape (pod and namespace selectors, named ports, ipBlock with
//! except, egress).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;
use twill_policy::cluster::{Inputs, LocalEndpoint, PodInfo};
use twill_policy::model::Labels;

pub const NODE: &str = "n0";
pub const NAMESPACES: usize = 20;
pub const APPS: usize = 100;
pub const TIERS: [&str; 3] = ["web", "api", "db"];

pub fn ip(i: usize) -> IpAddr {
    IpAddr::from([
        10,
        100 + (i / 65536) as u8,
        (i / 256 % 256) as u8,
        (i % 256) as u8,
    ])
}

/// Pod `i` as the datastore has it.
pub fn pod(i: usize, local: bool) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": format!("pod{i}"), "namespace": format!("ns{}", i % NAMESPACES),
            "labels": {"app": format!("app{}", i % APPS), "tier": TIERS[i % 3]}},
        "spec": {"nodeName": if local { NODE.to_string() } else { format!("n{}", 1 + i % 40) },
            "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"podIPs": [{"ip": ip(i).to_string()}]}
    }))
    .expect("pod")
}

/// The node's endpoint record for local pod `i` (what CNI ADD writes).
pub fn record(i: usize) -> LocalEndpoint {
    LocalEndpoint {
        namespace: Some(format!("ns{}", i % NAMESPACES)),
        pod: Some(format!("pod{i}")),
        labels: Labels::new(),
        ips: vec![ip(i)],
        iface: format!("tw{i:013x}"),
        container_id: format!("c{i}"),
    }
}

pub fn policy(j: usize, port: u16) -> NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {"name": format!("np{j}"), "namespace": format!("ns{}", j % NAMESPACES)},
        "spec": {
            "podSelector": {"matchLabels": {"app": format!("app{}", j % APPS)}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": format!("app{}", (j + 1) % APPS)}}},
                          {"namespaceSelector": {"matchLabels": {"team": format!("t{}", j % 5)}},
                           "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "api"]}]}}],
                 "ports": [{"port": port}, {"port": "http"}]},
                {"from": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}]}
            ],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"tier": "db"}}}], "ports": [{"port": 5432}]}]
        }
    }))
    .expect("policy")
}

/// The engine's inputs: `total` pods of which the first `local` run here,
/// and `pols` policies; plus the node's endpoint records.
pub fn inputs(total: usize, local: usize, pols: usize) -> (Inputs, Vec<LocalEndpoint>) {
    let mut i = Inputs::default();
    for n in 0..NAMESPACES {
        i.namespaces.insert(
            format!("ns{n}"),
            Labels::from([("team".to_string(), format!("t{}", n % 5))]),
        );
    }
    // As the engine's first full listing delivers them.
    i.replace_pods(
        (0..total)
            .filter_map(|p| PodInfo::of(&pod(p, p < local)))
            .collect(),
    );
    for j in 0..pols {
        i.apply_network_policy(&policy(j, 80)).expect("compile");
    }
    (i, (0..local).map(record).collect())
}
