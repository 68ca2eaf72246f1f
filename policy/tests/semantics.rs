//! The model's semantics on the Kubernetes e2e cases and Twill's global
//! policies, on a small cluster: namespaces x, y, z (labelled ns=NAME),
//! pods a, b, c in each (labelled pod=NAME), serving TCP 80 ("serve-80")
//! and 81 ("serve-81").

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Value, json};
use twill_policy::explain::Decision;
use twill_policy::model::{Endpoint, Labels, Model, NamedPort, proto};
use twill_policy::{Packet, Verdict, compile_global_policy, compile_network_policy, explain};

fn ip(ns: &str, pod: &str) -> IpAddr {
    let n = ["x", "y", "z"].iter().position(|x| *x == ns).unwrap() as u8;
    let p = ["a", "b", "c"].iter().position(|x| *x == pod).unwrap() as u8;
    IpAddr::from([10, 0, n, p + 1])
}

fn model(nps: &[Value], gnps: &[Value]) -> Model {
    let mut eps = Vec::new();
    let mut namespaces = BTreeMap::new();
    for ns in ["x", "y", "z"] {
        namespaces.insert(
            ns.to_string(),
            Labels::from([("ns".to_string(), ns.to_string())]),
        );
        for pod in ["a", "b", "c"] {
            eps.push(Endpoint {
                namespace: ns.into(),
                name: pod.into(),
                labels: Labels::from([("pod".to_string(), pod.to_string())]),
                ips: vec![ip(ns, pod)],
                ports: vec![
                    NamedPort {
                        name: "serve-80".into(),
                        proto: proto::TCP,
                        port: 80,
                    },
                    NamedPort {
                        name: "serve-81".into(),
                        proto: proto::TCP,
                        port: 81,
                    },
                ],
                node: "n".into(),
                iface: Some(format!("tw{ns}{pod}")),
            });
        }
    }
    let mut policies: Vec<_> = nps
        .iter()
        .map(|v| compile_network_policy(&serde_json::from_value(v.clone()).unwrap()).unwrap())
        .collect();
    policies.extend(
        gnps.iter()
            .map(|v| compile_global_policy(&serde_json::from_value(v.clone()).unwrap()).unwrap()),
    );
    Model::new(eps, namespaces, policies)
}

fn np(ns: &str, name: &str, spec: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn gnp(name: &str, spec: Value) -> Value {
    json!({"metadata": {"name": name}, "spec": spec})
}

fn v(m: &Model, from: (&str, &str), to: (&str, &str), port: u16) -> Verdict {
    explain(
        m,
        &Packet::l4(ip(from.0, from.1), ip(to.0, to.1), proto::TCP, port),
    )
    .verdict
}

use Verdict::{Allow, Deny};

#[test]
fn no_policy_allows_everything() {
    let m = model(&[], &[]);
    let e = explain(&m, &Packet::l4(ip("x", "a"), ip("y", "b"), proto::TCP, 80));
    assert_eq!(e.verdict, Allow);
    assert_eq!(e.ingress.unwrap().decision, Decision::NotIsolated);
}

#[test]
fn default_deny_ingress_isolates_only_its_namespace() {
    let m = model(&[np("x", "deny", json!({"podSelector": {}}))], &[]);
    assert_eq!(v(&m, ("y", "a"), ("x", "a"), 80), Deny);
    assert_eq!(v(&m, ("x", "b"), ("x", "a"), 80), Deny);
    assert_eq!(
        v(&m, ("x", "a"), ("y", "a"), 80),
        Allow,
        "egress is not isolated"
    );
    let e = explain(&m, &Packet::l4(ip("y", "a"), ip("x", "a"), proto::TCP, 80));
    let ing = e.ingress.unwrap();
    assert_eq!(ing.selecting, ["np/x/deny"]);
    assert_eq!(ing.decision, Decision::NoRuleAllows);
}

#[test]
fn empty_egress_without_policy_types_does_not_isolate_egress() {
    // SetDefaults_NetworkPolicy: with no policyTypes, Egress is governed
    // only when `egress` has a rule; `egress: []` is Ingress only.
    let m = model(
        &[np("x", "deny", json!({"podSelector": {}, "egress": []}))],
        &[],
    );
    assert_eq!(v(&m, ("y", "a"), ("x", "a"), 80), Deny);
    assert_eq!(
        v(&m, ("x", "a"), ("y", "a"), 80),
        Allow,
        "egress: [] must not isolate egress"
    );
    // One egress rule does make it govern egress.
    let m = model(
        &[np(
            "x",
            "deny",
            json!({"podSelector": {}, "egress": [{"ports": [{"port": 53}]}]}),
        )],
        &[],
    );
    assert_eq!(v(&m, ("x", "a"), ("y", "a"), 80), Deny);
}

#[test]
fn default_deny_egress() {
    let m = model(
        &[np(
            "x",
            "deny",
            json!({"podSelector": {}, "policyTypes": ["Egress"]}),
        )],
        &[],
    );
    assert_eq!(v(&m, ("x", "a"), ("y", "a"), 80), Deny);
    assert_eq!(v(&m, ("y", "a"), ("x", "a"), 80), Allow);
}

#[test]
fn pod_and_namespace_selectors_and_or() {
    // AND: pods b in namespaces y.
    let and = model(
        &[np(
            "x",
            "and",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"podSelector": {"matchLabels": {"pod": "b"}}, "namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
        )],
        &[],
    );
    assert_eq!(v(&and, ("y", "b"), ("x", "a"), 80), Allow);
    assert_eq!(v(&and, ("y", "c"), ("x", "a"), 80), Deny);
    assert_eq!(v(&and, ("x", "b"), ("x", "a"), 80), Deny);
    assert_eq!(
        v(&and, ("z", "b"), ("x", "b"), 80),
        Allow,
        "x/b is not selected"
    );
    // OR: pods b in x, or anything in y.
    let or = model(
        &[np(
            "x",
            "or",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"podSelector": {"matchLabels": {"pod": "b"}}}, {"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
        )],
        &[],
    );
    assert_eq!(v(&or, ("x", "b"), ("x", "a"), 80), Allow);
    assert_eq!(v(&or, ("y", "c"), ("x", "a"), 80), Allow);
    assert_eq!(
        v(&or, ("z", "b"), ("x", "a"), 80),
        Deny,
        "podSelector alone means the policy's namespace"
    );
}

#[test]
fn match_expressions() {
    let m = model(
        &[np(
            "x",
            "expr",
            json!({"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["y"]}]}}]}]}),
        )],
        &[],
    );
    assert_eq!(v(&m, ("y", "a"), ("x", "a"), 80), Deny);
    assert_eq!(v(&m, ("z", "a"), ("x", "a"), 80), Allow);
    assert_eq!(v(&m, ("x", "c"), ("x", "a"), 80), Allow);
}

#[test]
fn ports_named_ports_and_end_port() {
    let m = model(
        &[np(
            "x",
            "p",
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": "serve-81"}]}]}),
        )],
        &[],
    );
    assert_eq!(v(&m, ("y", "a"), ("x", "a"), 81), Allow);
    assert_eq!(v(&m, ("y", "a"), ("x", "a"), 80), Deny);
    let m = model(
        &[np(
            "x",
            "p",
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 79, "endPort": 80}]}]}),
        )],
        &[],
    );
    assert_eq!(v(&m, ("y", "a"), ("x", "a"), 80), Allow);
    assert_eq!(v(&m, ("y", "a"), ("x", "a"), 81), Deny);
    let udp = explain(&m, &Packet::l4(ip("y", "a"), ip("x", "a"), proto::UDP, 80));
    assert_eq!(udp.verdict, Deny, "the default protocol is TCP");
}

#[test]
fn ip_block_with_except_and_policies_add_up() {
    let m = model(
        &[
            np(
                "x",
                "block",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"ipBlock": {"cidr": "10.0.1.0/24", "except": ["10.0.1.2/32"]}}]}]}),
            ),
            np(
                "x",
                "more",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"ns": "z"}}, "podSelector": {"matchLabels": {"pod": "c"}}}]}]}),
            ),
        ],
        &[],
    );
    assert_eq!(v(&m, ("y", "a"), ("x", "a"), 80), Allow);
    assert_eq!(v(&m, ("y", "b"), ("x", "a"), 80), Deny, "excepted");
    assert_eq!(
        v(&m, ("z", "c"), ("x", "a"), 80),
        Allow,
        "the second policy adds"
    );
    assert_eq!(v(&m, ("z", "b"), ("x", "a"), 80), Deny);
    let e = explain(&m, &Packet::l4(ip("z", "c"), ip("x", "a"), proto::TCP, 80));
    assert_eq!(
        e.ingress.unwrap().decision,
        Decision::Rule {
            policy: "np/x/more".into(),
            rule: "ingress[0]".into(),
            action: "Allow".into()
        }
    );
}

#[test]
fn egress_to_ip_block_only() {
    let m = model(
        &[np(
            "x",
            "e",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.0.2.0/24"}}]}]}),
        )],
        &[],
    );
    assert_eq!(v(&m, ("x", "a"), ("z", "b"), 80), Allow);
    assert_eq!(v(&m, ("x", "a"), ("y", "b"), 80), Deny);
}

#[test]
fn global_policy_order_deny_and_pass() {
    let deny_z = gnp(
        "deny-z",
        json!({"order": 10, "selector": "pod == 'a'", "ingress": [
        {"action": "Deny", "source": {"namespaceSelector": "ns == 'z'"}},
        {"action": "Pass"}]}),
    );
    let allow_zb = gnp(
        "allow-zb",
        json!({"order": 5, "selector": "pod == 'a'", "ingress": [
        {"action": "Allow", "source": {"selector": "pod == 'b'", "namespaceSelector": "ns == 'z'"}}]}),
    );
    let iso = np(
        "x",
        "only-y",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    );
    let m = model(&[iso], &[deny_z, allow_zb]);
    assert_eq!(
        v(&m, ("z", "b"), ("x", "a"), 80),
        Allow,
        "order 5 allows before order 10 denies"
    );
    assert_eq!(v(&m, ("z", "c"), ("x", "a"), 80), Deny, "order 10 denies z");
    assert_eq!(
        v(&m, ("y", "c"), ("x", "a"), 80),
        Allow,
        "passed to the NetworkPolicy, which allows y"
    );
    assert_eq!(
        v(&m, ("x", "c"), ("x", "a"), 80),
        Deny,
        "passed to the NetworkPolicy, which isolates"
    );
    assert_eq!(
        v(&m, ("z", "c"), ("x", "b"), 80),
        Deny,
        "x/b: no global policy, the NetworkPolicy isolates"
    );
    let e = explain(&m, &Packet::l4(ip("y", "c"), ip("x", "a"), proto::TCP, 80));
    let ing = e.ingress.unwrap();
    assert_eq!(ing.selecting, ["gnp/allow-zb", "gnp/deny-z", "np/x/only-y"]);
    assert_eq!(ing.passed.as_deref(), Some("gnp/deny-z ingress[1]"));
    // Without the Pass rule, the end of the global tier denies.
    let no_pass = gnp(
        "deny-z",
        json!({"order": 10, "selector": "pod == 'a'", "ingress": [
        {"action": "Deny", "source": {"namespaceSelector": "ns == 'z'"}}]}),
    );
    let m = model(&[], &[no_pass]);
    let e = explain(&m, &Packet::l4(ip("y", "c"), ip("x", "a"), proto::TCP, 80));
    assert_eq!(e.verdict, Deny);
    assert_eq!(e.ingress.unwrap().decision, Decision::EndOfGlobalTier);
}

#[test]
fn global_nets_not_nets_and_icmp() {
    let g = gnp(
        "icmp",
        json!({"selector": "all()", "ingress": [
        {"action": "Deny", "protocol": "ICMP", "icmp": {"type": 8}, "source": {"nets": ["10.0.1.0/24"], "notNets": ["10.0.1.3/32"]}},
        {"action": "Allow"}]}),
    );
    let m = model(&[], &[g]);
    let ping = |from: (&str, &str)| {
        explain(
            &m,
            &Packet {
                src: ip(from.0, from.1),
                dst: ip("x", "a"),
                proto: proto::ICMP,
                sport: None,
                dport: None,
                icmp: Some((8, 0)),
            },
        )
        .verdict
    };
    assert_eq!(ping(("y", "a")), Deny);
    assert_eq!(ping(("y", "c")), Allow, "notNets");
    assert_eq!(ping(("z", "a")), Allow, "not in nets");
    assert_eq!(
        v(&m, ("y", "a"), ("x", "a"), 80),
        Allow,
        "only ICMP echo is denied"
    );
}
