//! twill-node's path from datastore changes to its table: random sequences
//! of pod, IPAM block, endpoint record and namespace changes recorded in
//! `cluster::Inputs` and followed by `Incremental::follow` (which derives
//! only the pods a change touches) give, after every step, the table a full
//! render of everything derives, and a script equal to the diff between
//! the two full renders.

use std::collections::BTreeMap;
use std::net::IpAddr;

use proptest::prelude::*;
use serde_json::json;
use twill_policy::cluster::{Allocation, Inputs, LocalEndpoint, PodInfo};
use twill_policy::incremental::Incremental;
use twill_policy::model::{Labels, Model, NamedPort, proto};
use twill_policy::render;

const NODE: &str = "n1";
const PODS: [(&str, &str); 4] = [("x", "a"), ("x", "b"), ("y", "a"), ("y", "c")];

#[derive(Debug, Clone)]
enum Op {
    ApplyPod(usize, PodInfo),
    RemovePod(usize),
    ReplacePods(Vec<(usize, PodInfo)>),
    /// Block 0 or 1 with allocations: (pod, node, address octet).
    ApplyBlock(usize, Vec<(usize, &'static str, u8)>),
    RemoveBlock(usize),
    /// Records: (pod, address octet).
    SetLocals(Vec<(usize, u8)>),
    Namespaces(bool),
}

fn pod_info() -> impl Strategy<Value = PodInfo> {
    (
        prop::sample::select(vec!["web", "db"]),
        prop::sample::select(vec!["n1", "n2"]),
        prop::bool::weighted(0.1),
        prop::option::of(1u8..6),
        any::<bool>(),
    )
        .prop_map(|(app, node, host_network, ip, http)| PodInfo {
            labels: Labels::from([("app".to_string(), app.to_string())]),
            ports: if http {
                vec![NamedPort {
                    name: "http".into(),
                    proto: proto::TCP,
                    port: 8080,
                }]
            } else {
                Vec::new()
            },
            host_network,
            node: node.into(),
            ips: ip
                .map(|o| vec![IpAddr::from([10, 0, 1, o])])
                .unwrap_or_default(),
        })
}

fn op() -> impl Strategy<Value = Op> {
    let alloc = (
        0..PODS.len(),
        prop::sample::select(vec!["n1", "n2"]),
        1u8..6,
    );
    prop_oneof![
        3 => (0..PODS.len(), pod_info()).prop_map(|(i, p)| Op::ApplyPod(i, p)),
        1 => (0..PODS.len()).prop_map(Op::RemovePod),
        1 => prop::collection::vec((0..PODS.len(), pod_info()), 0..4).prop_map(Op::ReplacePods),
        2 => (0..2usize, prop::collection::vec(alloc, 0..3)).prop_map(|(b, a)| Op::ApplyBlock(b, a)),
        1 => (0..2usize).prop_map(Op::RemoveBlock),
        2 => prop::collection::vec((0..PODS.len(), 1u8..6), 0..3).prop_map(Op::SetLocals),
        1 => any::<bool>().prop_map(Op::Namespaces),
    ]
}

fn key(i: usize) -> (String, String) {
    (PODS[i].0.to_string(), PODS[i].1.to_string())
}

fn policies(inputs: &mut Inputs) {
    let np = |name: &str, ns: &str, spec: serde_json::Value| {
        serde_json::from_value::<k8s_openapi::api::networking::v1::NetworkPolicy>(
            json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}),
        )
        .unwrap()
    };
    inputs
        .apply_network_policy(&np(
            "web",
            "x",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "db"}}},
                                      {"namespaceSelector": {"matchLabels": {"team": "red"}}}],
                             "ports": [{"port": "http"}]}]}),
        ))
        .unwrap();
    inputs
        .apply_network_policy(&np(
            "db",
            "y",
            json!({"podSelector": {}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}),
        ))
        .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn following_inputs_equals_full_rendering(ops in prop::collection::vec(op(), 1..12)) {
        let mut inputs = Inputs::default();
        policies(&mut inputs);
        let mut locals: Vec<LocalEndpoint> = Vec::new();
        let mut inc = Incremental::new(NODE);
        let mut prev = render(&Model::default(), NODE);
        for op in ops {
            match op {
                Op::ApplyPod(i, p) => inputs.apply_pod(key(i), p),
                Op::RemovePod(i) => inputs.remove_pod(&key(i)),
                Op::ReplacePods(v) => inputs.replace_pods(v.into_iter().map(|(i, p)| (key(i), p)).collect()),
                Op::ApplyBlock(b, allocs) => inputs.apply_block(
                    &format!("b{b}"),
                    allocs
                        .into_iter()
                        .map(|(i, node, o)| Allocation {
                            namespace: PODS[i].0.into(),
                            pod: PODS[i].1.into(),
                            node: node.into(),
                            ip: IpAddr::from([10, 0, 2 + b as u8, o]),
                            handle: format!("c{i}"),
                            ifname: Some("eth0".into()),
                        })
                        .collect(),
                ),
                Op::RemoveBlock(b) => inputs.remove_block(&format!("b{b}")),
                Op::SetLocals(v) => {
                    locals = v
                        .into_iter()
                        .map(|(i, o)| LocalEndpoint {
                            namespace: Some(PODS[i].0.into()),
                            pod: Some(PODS[i].1.into()),
                            labels: Labels::new(),
                            ips: vec![IpAddr::from([10, 0, 9, o])],
                            iface: format!("tw{i}-{o}"),
                            container_id: format!("c{i}"),
                        })
                        .collect()
                }
                Op::Namespaces(red) => {
                    inputs.namespaces = BTreeMap::from([(
                        "x".to_string(),
                        if red { Labels::from([("team".to_string(), "red".to_string())]) } else { Labels::new() },
                    )]);
                }
            }
            inc.follow(&mut inputs, &locals);
            let script = inc.commit();
            let mut all = inputs.clone();
            all.set_locals(&locals);
            let model = Model::new(
                all.node_endpoints(NODE),
                all.namespaces.clone(),
                all.policies().map(|p| (**p).clone()).collect(),
            );
            let want = render(&model, NODE);
            prop_assert_eq!(inc.table(), &want);
            prop_assert_eq!(script, twill_policy::diff::diff(&prev, &want).map(|(s, _)| s));
            prev = want;
        }
    }
}
