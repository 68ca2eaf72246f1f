//! The rendered rules decide what the model decides: for random
//! NetworkPolicies, GlobalNetworkPolicies, namespaces, endpoints on two
//! nodes and packets, `explain`'s verdict equals what the nodes' rendered
//! tables do with the packet (run through the interpreter along its path:
//! the sender's node, then the receiver's). Also checks that the
//! incremental diff between two random tables is a well-formed script.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{Value, json};
use twill_policy::incremental::Incremental;
use twill_policy::interp::{Path, passes};
use twill_policy::ir::Hook;
use twill_policy::model::{Endpoint, Labels, Model, NamedPort, Policy, proto};
use twill_policy::{
    Packet, Verdict, compile_global_policy, compile_network_policy, explain, render,
};

fn labels_strategy() -> impl Strategy<Value = Labels> {
    (
        prop::option::of(prop::sample::select(vec!["a", "b", "c"])),
        prop::option::of(prop::sample::select(vec!["f", "g"])),
    )
        .prop_map(|(app, tier)| {
            let mut l = Labels::new();
            if let Some(a) = app {
                l.insert("app".into(), a.into());
            }
            if let Some(t) = tier {
                l.insert("tier".into(), t.into());
            }
            l
        })
}

fn endpoint_strategy(i: usize) -> impl Strategy<Value = Endpoint> {
    (
        prop::sample::select(vec!["x", "y"]),
        labels_strategy(),
        any::<bool>(),
        prop::sample::select(vec!["n1", "n2"]),
        prop::option::of(prop::sample::select(vec![80u16, 81])),
        any::<bool>(),
    )
        .prop_map(move |(ns, labels, v6, node, http, dns)| {
            let mut ips: Vec<IpAddr> = vec![format!("10.0.0.{}", i + 1).parse().unwrap()];
            if v6 {
                ips.push(format!("fd00::{}", i + 1).parse().unwrap());
            }
            let mut ports = Vec::new();
            if let Some(p) = http {
                ports.push(NamedPort {
                    name: "http".into(),
                    proto: proto::TCP,
                    port: p,
                });
            }
            if dns {
                ports.push(NamedPort {
                    name: "dns".into(),
                    proto: proto::UDP,
                    port: 53,
                });
            }
            Endpoint {
                namespace: ns.into(),
                name: format!("p{i}"),
                labels,
                ips,
                ports,
                node: node.into(),
                iface: Some(format!("tw{i}")),
            }
        })
}

fn label_selector() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        Just(json!({"matchLabels": {"app": "a"}})),
        Just(json!({"matchLabels": {"app": "b", "tier": "f"}})),
        Just(json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "c"]}]})),
        Just(json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]})),
        Just(json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["b"]}]})),
    ]
}

fn ns_selector() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        Just(json!({"matchLabels": {"team": "red"}})),
        Just(json!({"matchLabels": {"kubernetes.io/metadata.name": "y"}})),
    ]
}

fn peer() -> impl Strategy<Value = Value> {
    prop_oneof![
        label_selector().prop_map(|s| json!({"podSelector": s})),
        ns_selector().prop_map(|s| json!({"namespaceSelector": s})),
        (label_selector(), ns_selector())
            .prop_map(|(p, n)| json!({"podSelector": p, "namespaceSelector": n})),
        Just(json!({"ipBlock": {"cidr": "10.0.0.0/29", "except": ["10.0.0.2/32"]}})),
        Just(json!({"ipBlock": {"cidr": "fd00::/120"}})),
        Just(json!({"ipBlock": {"cidr": "192.168.0.0/16"}})),
    ]
}

fn np_port() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({"port": 80})),
        Just(json!({"protocol": "UDP", "port": 53})),
        Just(json!({"protocol": "TCP", "port": 80, "endPort": 81})),
        Just(json!({"port": "http"})),
        Just(json!({"protocol": "UDP", "port": "dns"})),
        Just(json!({"protocol": "UDP"})),
    ]
}

fn np_rule(field: &'static str) -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::collection::vec(peer(), 0..3)),
        prop::option::of(prop::collection::vec(np_port(), 0..3)),
    )
        .prop_map(move |(peers, ports)| {
            let mut r = json!({});
            if let Some(p) = peers {
                r[field] = json!(p);
            }
            if let Some(p) = ports {
                r["ports"] = json!(p);
            }
            r
        })
}

fn network_policy(i: usize) -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["x", "y"]),
        label_selector(),
        prop::sample::select(vec![
            json!(null),
            json!(["Ingress"]),
            json!(["Egress"]),
            json!(["Ingress", "Egress"]),
        ]),
        prop::option::of(prop::collection::vec(np_rule("from"), 0..3)),
        prop::option::of(prop::collection::vec(np_rule("to"), 0..3)),
    )
        .prop_map(move |(ns, sel, types, ing, eg)| {
            let mut spec = json!({"podSelector": sel});
            if !types.is_null() {
                spec["policyTypes"] = types;
            }
            if let Some(i) = ing {
                spec["ingress"] = json!(i);
            }
            if let Some(e) = eg {
                spec["egress"] = json!(e);
            }
            json!({"metadata": {"name": format!("np{i}"), "namespace": ns}, "spec": spec})
        })
}

fn calico_selector() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop::sample::select(vec![
        "app == 'a'".to_string(),
        "has(tier)".into(),
        "app in {'b', 'c'} || tier == 'g'".into(),
        "all()".into(),
    ]))
}

fn entity() -> impl Strategy<Value = Value> {
    (
        calico_selector(),
        calico_selector(),
        prop::option::of(prop::sample::select(vec![
            "team == 'red'".to_string(),
            "all()".into(),
        ])),
        prop::sample::select(vec![
            json!(null),
            json!(["10.0.0.0/30"]),
            json!(["fd00::/126", "10.0.0.4/31"]),
        ]),
        prop::sample::select(vec![
            json!(null),
            json!(["10.0.0.3/32"]),
            json!(["fd00::1/128"]),
        ]),
    )
        .prop_map(|(sel, notsel, nssel, nets, notnets)| {
            let mut e = json!({});
            if let Some(s) = sel {
                e["selector"] = json!(s);
            }
            if let Some(s) = notsel {
                e["notSelector"] = json!(s);
            }
            if let Some(s) = nssel {
                e["namespaceSelector"] = json!(s);
            }
            if !nets.is_null() {
                e["nets"] = nets;
            }
            if !notnets.is_null() {
                e["notNets"] = notnets;
            }
            e
        })
}

fn gnp_rule() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["Allow", "Deny", "Pass", "Log"]),
        prop::sample::select(vec![None, Some("TCP"), Some("UDP"), Some("ICMP")]),
        entity(),
        entity(),
        prop::sample::select(vec![
            json!(null),
            json!([80]),
            json!(["81:82", 53]),
            json!(["http"]),
            json!(["dns", 80]),
        ]),
        prop::sample::select(vec![json!(null), json!([81]), json!(["http"])]),
        prop::option::of(prop::sample::select(vec![4u8, 6])),
        prop::option::of(prop::sample::select(vec![
            json!({"type": 8}),
            json!({"type": 8, "code": 0}),
            json!({"type": 0}),
        ])),
        any::<bool>(),
    )
        .prop_map(
            |(action, protocol, src, mut dst, ports, not_ports, ipv, icmp, neg_icmp)| {
                let mut r = json!({"action": action, "source": src});
                if let Some(v) = ipv {
                    r["ipVersion"] = json!(v);
                }
                match protocol {
                    Some("ICMP") => {
                        r["protocol"] = json!("ICMP");
                        if let Some(i) = icmp {
                            r[if neg_icmp { "notIcmp" } else { "icmp" }] = i;
                        }
                    }
                    Some(p) => {
                        r["protocol"] = json!(p);
                        if !ports.is_null() {
                            dst["ports"] = ports;
                        }
                        if !not_ports.is_null() {
                            dst["notPorts"] = not_ports;
                        }
                    }
                    None => {
                        if neg_icmp {
                            r["notProtocol"] = json!("UDP");
                        }
                    }
                }
                r["destination"] = dst;
                // Validation refuses a rule that could never match: ICMP
                // (IPv4) with ipVersion 6, or nets of only the other family.
                if r["ipVersion"] == json!(6)
                    && (r["protocol"] == json!("ICMP")
                        || r["source"]["nets"] == json!(["10.0.0.0/30"])
                        || r["destination"]["nets"] == json!(["10.0.0.0/30"]))
                {
                    r.as_object_mut().map(|o| o.remove("ipVersion"));
                }
                r
            },
        )
}

fn global_policy(i: usize) -> impl Strategy<Value = Value> {
    (
        prop::option::of(1u8..4),
        calico_selector(),
        prop::option::of(prop::sample::select(vec!["team == 'red'".to_string()])),
        prop::sample::select(vec![json!(null), json!(["Ingress"]), json!(["Egress"]), json!(["Ingress", "Egress"])]),
        prop::collection::vec(gnp_rule(), 0..4),
        prop::collection::vec(gnp_rule(), 0..4),
    )
        .prop_map(move |(order, sel, nssel, types, ing, eg)| {
            let mut spec = json!({"ingress": ing, "egress": eg});
            if let Some(o) = order {
                spec["order"] = json!(o);
            }
            if let Some(s) = sel {
                spec["selector"] = json!(s);
            }
            if let Some(s) = nssel {
                spec["namespaceSelector"] = json!(s);
            }
            if !types.is_null() {
                // Validation refuses rules for a direction types leaves out.
                for (dir, t) in [("ingress", "Ingress"), ("egress", "Egress")] {
                    if !types.as_array().is_some_and(|a| a.contains(&json!(t))) {
                        spec[dir] = json!([]);
                    }
                }
                spec["types"] = types;
            }
            json!({"apiVersion": "twill.dev/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": format!("g{i}")}, "spec": spec})
        })
}

#[derive(Debug, Clone)]
struct Case {
    endpoints: Vec<Endpoint>,
    red: Vec<&'static str>,
    nps: Vec<Value>,
    gnps: Vec<Value>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        (0..6usize).map(endpoint_strategy).collect::<Vec<_>>(),
        prop::sample::subsequence(vec!["x", "y"], 0..=2),
        prop::collection::vec(0..1usize, 0..4)
            .prop_flat_map(|v| (0..v.len()).map(network_policy).collect::<Vec<_>>()),
        prop::collection::vec(0..1usize, 0..3)
            .prop_flat_map(|v| (0..v.len()).map(global_policy).collect::<Vec<_>>()),
    )
        .prop_map(|(endpoints, red, nps, gnps)| Case {
            endpoints,
            red,
            nps,
            gnps,
        })
}

/// What `Model::new` takes for a case: endpoints, namespace labels, policies.
fn inputs_of(c: &Case) -> (Vec<Endpoint>, BTreeMap<String, Labels>, Vec<Policy>) {
    let mut policies = Vec::new();
    for np in &c.nps {
        let np: k8s_openapi::api::networking::v1::NetworkPolicy =
            serde_json::from_value(np.clone()).unwrap();
        twill_api::native::validate_network_policy(&np).unwrap();
        policies.push(compile_network_policy(&np).unwrap());
    }
    for g in &c.gnps {
        twill_api::Kind::GlobalNetworkPolicy
            .validate_value(g)
            .unwrap();
        let g: twill_api::resources::GlobalNetworkPolicy =
            serde_json::from_value(g.clone()).unwrap();
        policies.push(compile_global_policy(&g).unwrap());
    }
    let mut namespaces = BTreeMap::new();
    for ns in ["x", "y"] {
        let mut l = Labels::new();
        if c.red.contains(&ns) {
            l.insert("team".into(), "red".into());
        }
        namespaces.insert(ns.to_string(), l);
    }
    (c.endpoints.clone(), namespaces, policies)
}

fn model_of(c: &Case) -> Model {
    let (endpoints, namespaces, policies) = inputs_of(c);
    Model::new(endpoints, namespaces, policies)
}

/// The states from `a` to `b` one change at a time: each endpoint in turn,
/// then the policies, then the namespace labels.
fn steps(a: &Case, b: &Case) -> Vec<Case> {
    let mut out = vec![a.clone()];
    let mut cur = a.clone();
    for i in 0..a.endpoints.len().max(b.endpoints.len()) {
        match b.endpoints.get(i) {
            Some(e) if i < cur.endpoints.len() => cur.endpoints[i] = e.clone(),
            Some(e) => cur.endpoints.push(e.clone()),
            None => {
                cur.endpoints.pop();
            }
        }
        out.push(cur.clone());
    }
    for i in 0..a.nps.len().max(b.nps.len()) {
        match b.nps.get(i) {
            Some(p) if i < cur.nps.len() => cur.nps[i] = p.clone(),
            Some(p) => cur.nps.push(p.clone()),
            None => {
                cur.nps.pop();
            }
        }
        out.push(cur.clone());
    }
    cur.gnps = b.gnps.clone();
    out.push(cur.clone());
    cur.red = b.red.clone();
    out.push(cur);
    out
}

fn packets(m: &Model) -> Vec<Packet> {
    let mut out = Vec::new();
    let mut v4: Vec<IpAddr> = vec![
        "10.0.0.100".parse().unwrap(),
        "192.168.1.1".parse().unwrap(),
    ];
    let mut v6: Vec<IpAddr> = vec!["fd00::100".parse().unwrap()];
    for e in &m.endpoints {
        for ip in &e.ips {
            if ip.is_ipv4() {
                v4.push(*ip)
            } else {
                v6.push(*ip)
            }
        }
    }
    for fam in [&v4, &v6] {
        for src in fam.iter() {
            for dst in fam.iter() {
                if src == dst {
                    continue;
                }
                for (p, port) in [
                    (proto::TCP, 80),
                    (proto::TCP, 81),
                    (proto::TCP, 82),
                    (proto::UDP, 53),
                    (proto::UDP, 80),
                ] {
                    out.push(Packet::l4(*src, *dst, p, port));
                }
                let icmp = if src.is_ipv4() {
                    proto::ICMP
                } else {
                    proto::ICMPV6
                };
                for (t, c) in [(8, 0), (0, 0)] {
                    out.push(Packet {
                        src: *src,
                        dst: *dst,
                        proto: icmp,
                        sport: None,
                        dport: None,
                        icmp: Some((t, c)),
                    });
                }
            }
        }
    }
    out
}

/// What the nodes' tables do with a packet along its path.
fn kernel(m: &Model, tables: &BTreeMap<&str, twill_policy::ir::Table>, pkt: &Packet) -> Verdict {
    let src = m.endpoints_at(pkt.src).next();
    let dst = m.endpoints_at(pkt.dst).next();
    let iface = |e: Option<&Endpoint>| e.and_then(|e| e.iface.clone());
    let mut hops: Vec<(&str, String, String)> = Vec::new();
    match (src, dst) {
        (Some(s), Some(d)) if s.node == d.node => {
            hops.push((&s.node, iface(src).unwrap(), iface(dst).unwrap()))
        }
        _ => {
            if let Some(s) = src {
                hops.push((&s.node, iface(src).unwrap(), "uplink".into()));
            }
            if let Some(d) = dst {
                hops.push((&d.node, "uplink".into(), iface(dst).unwrap()));
            }
        }
    }
    for (node, iif, oif) in hops {
        if !passes(
            &tables[node],
            pkt,
            &Path {
                hook: Hook::Forward,
                iif,
                oif,
            },
        ) {
            return Verdict::Deny;
        }
    }
    Verdict::Allow
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn rendered_rules_decide_what_the_model_decides(c in case()) {
        let m = model_of(&c);
        let tables: BTreeMap<&str, _> = ["n1", "n2"].into_iter().map(|n| (n, render(&m, n))).collect();
        for pkt in packets(&m) {
            let e = explain(&m, &pkt);
            let k = kernel(&m, &tables, &pkt);
            prop_assert_eq!(e.verdict, k, "packet {:?}\nexplain:\n{}\ntable n1:\n{}", pkt, e, tables["n1"].script());
        }
    }

    #[test]
    fn diff_between_any_two_tables_reaches_the_second(a in case(), b in case()) {
        let ta = render(&model_of(&a), "n1");
        let tb = render(&model_of(&b), "n1");
        if let Some((script, _)) = twill_policy::diff::diff(&ta, &tb) {
            prop_assert!(!script.contains("add table"), "incremental update recreated the table:\n{}", script);
            // Every chain the new table has is either added or already there.
            for name in tb.chains.keys() {
                let declared = ta.chains.contains_key(name) || script.contains(&format!(" {}", name));
                prop_assert!(declared, "chain {} missing", name);
            }
        } else {
            prop_assert_eq!(ta, tb);
        }
    }

    #[test]
    fn incremental_rendering_equals_full_rendering(a in case(), b in case(), c in case()) {
        // From nothing to a in one go, then to b one change at a time,
        // then to c in one go: after every commit the table equals the full
        // render and the script equals the diff of the two full renders.
        let mut inc = Incremental::new("n1");
        let mut prev = render(&Model::default(), "n1");
        prop_assert_eq!(inc.table(), &prev);
        let mut states = steps(&a, &b);
        states.push(c);
        for st in &states {
            let (eps, ns, pols) = inputs_of(st);
            let shared: Vec<Arc<Policy>> = pols.iter().cloned().map(Arc::new).collect();
            inc.sync(eps.clone(), &ns, shared.iter());
            let script = inc.commit();
            let want = render(&Model::new(eps, ns, pols), "n1");
            prop_assert_eq!(inc.table(), &want, "state {:?}", st);
            let want_script = twill_policy::diff::diff(&prev, &want).map(|(s, _)| s);
            prop_assert_eq!(script, want_script);
            prev = want;
        }
        prop_assert_eq!(inc.commit(), None);
        prop_assert_eq!(inc.full_script(), prev.script());
    }
}
