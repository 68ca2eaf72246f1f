//! Every GlobalNetworkPolicy field changes a verdict: for each field, a
//! policy with it and the same policy with the field changed (or left out)
//! give different verdicts for one packet, both in the model (`explain`,
//! the reference) and in the rendered `inet twill` table (run through the
//! interpreter). A field that were accepted and then ignored by either would
//! make its test fail. The list of fields and their tests is in
//! docs/crd-fields.md; tests/tests/gnp_fields.rs checks the ones whose nft
//! translation is least obvious with real packets.
//!
//! Cluster: namespaces x and y (labelled ns=NAME), pods a and b in each
//! (labelled pod=NAME, IPv4 10.0.N.P and IPv6 fd00::N:P, TCP ports named
//! serve-80 and serve-81), all on node n; 192.168.1.1 is outside.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Value, json};
use twill_policy::interp::{Path, passes};
use twill_policy::ir::Hook;
use twill_policy::model::{Endpoint, Labels, Model, NamedPort, proto};
use twill_policy::{Packet, Verdict, compile_global_policy, explain, render};

use Verdict::{Allow, Deny};

const NODE: &str = "n";

fn idx(ns: &str, pod: &str) -> (u8, u8) {
    let n = ["x", "y"].iter().position(|x| *x == ns).expect("namespace") as u8;
    let p = ["a", "b"].iter().position(|x| *x == pod).expect("pod") as u8;
    (n, p + 1)
}

fn ip(ns: &str, pod: &str) -> IpAddr {
    let (n, p) = idx(ns, pod);
    IpAddr::from([10, 0, n, p])
}

fn ip6(ns: &str, pod: &str) -> IpAddr {
    let (n, p) = idx(ns, pod);
    IpAddr::from([0xfd00, 0, 0, 0, 0, 0, u16::from(n), u16::from(p)])
}

fn endpoints() -> Vec<Endpoint> {
    let mut eps = Vec::new();
    for ns in ["x", "y"] {
        for pod in ["a", "b"] {
            eps.push(Endpoint {
                namespace: ns.into(),
                name: pod.into(),
                labels: Labels::from([("pod".to_string(), pod.to_string())]),
                ips: vec![ip(ns, pod), ip6(ns, pod)],
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
                node: NODE.into(),
                iface: Some(format!("tw{ns}{pod}")),
            });
        }
    }
    eps
}

/// A validated, compiled model of the cluster with these global policies
/// (name → spec).
fn model(gnps: &[(&str, Value)]) -> Model {
    let mut namespaces = BTreeMap::new();
    for ns in ["x", "y"] {
        namespaces.insert(
            ns.to_string(),
            Labels::from([("ns".to_string(), ns.to_string())]),
        );
    }
    let policies = gnps
        .iter()
        .map(|(name, spec)| {
            let v = json!({"apiVersion": "twill.dev/v1", "kind": "GlobalNetworkPolicy",
                "metadata": {"name": name}, "spec": spec});
            if let Err(e) = twill_api::Kind::GlobalNetworkPolicy.validate_value(&v) {
                panic!("{name} does not validate: {e}");
            }
            compile_global_policy(&serde_json::from_value(v).expect("parses")).expect("compiles")
        })
        .collect();
    Model::new(endpoints(), namespaces, policies)
}

/// What the rendered table does with the packet on its way through node n.
fn kernel(m: &Model, pkt: &Packet) -> Verdict {
    let table = render(m, NODE);
    let iface = |a: IpAddr| {
        m.endpoints_at(a)
            .next()
            .and_then(|e| e.iface.clone())
            .unwrap_or_else(|| "uplink".into())
    };
    let path = Path {
        hook: Hook::Forward,
        iif: iface(pkt.src),
        oif: iface(pkt.dst),
    };
    if passes(&table, pkt, &path) {
        Allow
    } else {
        Deny
    }
}

/// The verdict of the model and of the rendered rules, which must agree.
fn verdict(gnps: &[(&str, Value)], pkt: &Packet) -> Verdict {
    let m = model(gnps);
    let e = explain(&m, pkt);
    let k = kernel(&m, pkt);
    assert_eq!(
        e.verdict,
        k,
        "model and rendered table disagree on {pkt:?}\n{e}\n{}",
        render(&m, NODE).script()
    );
    e.verdict
}

/// The field's test: with `with` the packet gets `expect`, with `without`
/// (the field changed or left out) the opposite.
fn field(
    name: &str,
    with: &[(&str, Value)],
    without: &[(&str, Value)],
    pkt: Packet,
    expect: Verdict,
) {
    let other = if expect == Allow { Deny } else { Allow };
    assert_eq!(verdict(with, &pkt), expect, "{name}: with the field");
    assert_eq!(
        verdict(without, &pkt),
        other,
        "{name}: the field changed or left out must change the verdict"
    );
}

fn tcp(from: IpAddr, to: IpAddr, port: u16) -> Packet {
    Packet::l4(from, to, proto::TCP, port)
}

fn ping(from: IpAddr, to: IpAddr, type_: u8, code: u8) -> Packet {
    Packet {
        src: from,
        dst: to,
        proto: if from.is_ipv4() {
            proto::ICMP
        } else {
            proto::ICMPV6
        },
        sport: None,
        dport: None,
        icmp: Some((type_, code)),
    }
}

/// A policy on x/a's ingress with these rules and then a final Deny.
fn on_xa_ingress(rules: Value) -> Value {
    let mut rules = rules.as_array().cloned().unwrap_or_default();
    rules.push(json!({"action": "Deny"}));
    json!({"selector": "pod == 'a'", "namespaceSelector": "ns == 'x'", "ingress": rules})
}

/// A policy on x/a's egress with these rules and then a final Deny.
fn on_xa_egress(rules: Value) -> Value {
    let mut rules = rules.as_array().cloned().unwrap_or_default();
    rules.push(json!({"action": "Deny"}));
    json!({"selector": "pod == 'a'", "namespaceSelector": "ns == 'x'", "types": ["Egress"], "egress": rules})
}

fn yb_to_xa(port: u16) -> Packet {
    tcp(ip("y", "b"), ip("x", "a"), port)
}

fn xa_to_yb(port: u16) -> Packet {
    tcp(ip("x", "a"), ip("y", "b"), port)
}

#[test]
fn order() {
    let allow = |o: f64| {
        (
            "allow",
            json!({"order": o, "selector": "all()", "ingress": [{"action": "Allow"}]}),
        )
    };
    let deny = (
        "deny",
        json!({"order": 2, "selector": "all()", "ingress": [{"action": "Deny"}]}),
    );
    field(
        "order",
        &[allow(1.0), deny.clone()],
        &[allow(3.0), deny],
        yb_to_xa(80),
        Allow,
    );
    // Without an order a policy comes after every ordered one.
    let unordered = (
        "allow",
        json!({"selector": "all()", "ingress": [{"action": "Allow"}]}),
    );
    let deny = (
        "deny",
        json!({"order": 1000000, "selector": "all()", "ingress": [{"action": "Deny"}]}),
    );
    assert_eq!(verdict(&[unordered, deny], &yb_to_xa(80)), Deny);
}

#[test]
fn selector() {
    let p = |sel: &str| {
        [(
            "g",
            json!({"selector": sel, "ingress": [{"action": "Deny"}]}),
        )]
    };
    field(
        "selector",
        &p("pod == 'a'"),
        &p("pod == 'b'"),
        yb_to_xa(80),
        Deny,
    );
}

#[test]
fn namespace_selector() {
    let p = |sel: &str| {
        [(
            "g",
            json!({"selector": "all()", "namespaceSelector": sel, "ingress": [{"action": "Deny"}]}),
        )]
    };
    field(
        "namespaceSelector",
        &p("ns == 'x'"),
        &p("ns == 'y'"),
        yb_to_xa(80),
        Deny,
    );
}

#[test]
fn types() {
    // types: [Ingress] with no rules isolates x/a's ingress; [Egress] does not.
    let p = |t: &str| {
        [(
            "g",
            json!({"selector": "pod == 'a'", "namespaceSelector": "ns == 'x'", "types": [t]}),
        )]
    };
    field("types", &p("Ingress"), &p("Egress"), yb_to_xa(80), Deny);
    assert_eq!(
        verdict(&p("Egress"), &xa_to_yb(80)),
        Deny,
        "types Egress isolates egress"
    );
    // The default: Ingress, plus Egress when there are egress rules.
    let default = [(
        "g",
        json!({"selector": "pod == 'a'", "namespaceSelector": "ns == 'x'", "egress": [{"action": "Deny", "protocol": "UDP"}, {"action": "Allow"}]}),
    )];
    assert_eq!(
        verdict(&default, &yb_to_xa(80)),
        Deny,
        "default types include Ingress"
    );
    assert_eq!(
        verdict(&default, &xa_to_yb(80)),
        Allow,
        "egress rules are evaluated"
    );
    assert_eq!(
        verdict(
            &default,
            &Packet::l4(ip("x", "a"), ip("y", "b"), proto::UDP, 53)
        ),
        Deny
    );
}

#[test]
fn rules_for_a_direction_types_leaves_out_are_refused() {
    for (types, dir) in [("Egress", "ingress"), ("Ingress", "egress")] {
        let v = json!({"apiVersion": "twill.dev/v1", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": "g"}, "spec": {"types": [types], dir: [{"action": "Deny"}]}});
        let err = twill_api::Kind::GlobalNetworkPolicy
            .validate_value(&v)
            .expect_err("rules that would be ignored are refused");
        assert_eq!(err.errors[0].field, format!("spec.{dir}"), "{err}");
        assert!(err.to_string().contains("would be ignored"), "{err}");
        assert!(
            err.to_string().contains("GlobalNetworkPolicy \"g\""),
            "{err}"
        );
        // The same rules with their direction listed are accepted.
        let v = json!({"apiVersion": "twill.dev/v1", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": "g"}, "spec": {"types": [types, if types == "Egress" { "Ingress" } else { "Egress" }], dir: [{"action": "Deny"}]}});
        twill_api::Kind::GlobalNetworkPolicy
            .validate_value(&v)
            .expect("accepted");
    }
}

#[test]
fn action_allow_and_deny() {
    let p = |a: &str| [("g", on_xa_ingress(json!([{"action": a}])))];
    field("action Allow", &p("Allow"), &p("Deny"), yb_to_xa(80), Allow);
}

#[test]
fn action_pass() {
    // Pass hands the decision to the Kubernetes tier (no NetworkPolicy
    // here: allowed); a selected pod that no rule decides is denied.
    let with = [(
        "g",
        json!({"selector": "pod == 'a'", "ingress": [{"action": "Pass"}]}),
    )];
    let without = [("g", json!({"selector": "pod == 'a'", "ingress": []}))];
    field("action Pass", &with, &without, yb_to_xa(80), Allow);
    // Pass skips the remaining global policies.
    let later_deny = (
        "z",
        json!({"order": 10, "selector": "all()", "ingress": [{"action": "Deny"}]}),
    );
    let pass = (
        "g",
        json!({"order": 1, "selector": "pod == 'a'", "ingress": [{"action": "Pass"}]}),
    );
    assert_eq!(verdict(&[pass, later_deny.clone()], &yb_to_xa(80)), Allow);
    assert_eq!(verdict(&[later_deny], &yb_to_xa(80)), Deny);
}

#[test]
fn action_log() {
    // Log records and goes on: [Log, Allow] allows where [Log] alone ends
    // the tier undecided (denied); the rule renders as an nft log statement.
    let p = |rules: Value| [("g", json!({"selector": "pod == 'a'", "ingress": rules}))];
    let with = p(json!([{"action": "Log"}, {"action": "Allow"}]));
    assert_eq!(verdict(&with, &yb_to_xa(80)), Allow, "Log does not decide");
    assert_eq!(verdict(&p(json!([{"action": "Log"}])), &yb_to_xa(80)), Deny);
    let script = render(&model(&with), NODE).script();
    assert!(
        script.contains("log prefix \"twill gnp/g ingress[0] \""),
        "{script}"
    );
    let script = render(&model(&p(json!([{"action": "Allow"}]))), NODE).script();
    assert!(!script.contains("log prefix"), "{script}");
}

#[test]
fn protocol() {
    let p = |pr: &str| {
        [(
            "g",
            on_xa_ingress(json!([{"action": "Allow", "protocol": pr}])),
        )]
    };
    field("protocol", &p("TCP"), &p("UDP"), yb_to_xa(80), Allow);
    let n = [(
        "g",
        on_xa_ingress(json!([{"action": "Allow", "protocol": 6}])),
    )];
    assert_eq!(verdict(&n, &yb_to_xa(80)), Allow, "protocol by number");
}

#[test]
fn not_protocol() {
    let p = |pr: &str| {
        [(
            "g",
            on_xa_ingress(json!([{"action": "Allow", "notProtocol": pr}])),
        )]
    };
    field("notProtocol", &p("UDP"), &p("TCP"), yb_to_xa(80), Allow);
}

#[test]
fn icmp_type() {
    let p = |t: u8| {
        [(
            "g",
            on_xa_ingress(json!([{"action": "Allow", "protocol": "ICMP", "icmp": {"type": t}}])),
        )]
    };
    field(
        "icmp.type",
        &p(8),
        &p(0),
        ping(ip("y", "b"), ip("x", "a"), 8, 0),
        Allow,
    );
}

#[test]
fn icmp_code() {
    let p = |c: u8| {
        [(
            "g",
            on_xa_ingress(
                json!([{"action": "Allow", "protocol": "ICMP", "icmp": {"type": 3, "code": c}}]),
            ),
        )]
    };
    field(
        "icmp.code",
        &p(4),
        &p(1),
        ping(ip("y", "b"), ip("x", "a"), 3, 4),
        Allow,
    );
}

#[test]
fn icmpv6() {
    let p = |t: u8| {
        [(
            "g",
            on_xa_ingress(json!([{"action": "Allow", "protocol": "ICMPv6", "icmp": {"type": t}}])),
        )]
    };
    field(
        "icmp (ICMPv6)",
        &p(128),
        &p(129),
        ping(ip6("y", "b"), ip6("x", "a"), 128, 0),
        Allow,
    );
}

#[test]
fn not_icmp() {
    let p = |t: u8| {
        [(
            "g",
            on_xa_ingress(json!([{"action": "Allow", "protocol": "ICMP", "notIcmp": {"type": t}}])),
        )]
    };
    field(
        "notIcmp",
        &p(0),
        &p(8),
        ping(ip("y", "b"), ip("x", "a"), 8, 0),
        Allow,
    );
}

#[test]
fn ip_version() {
    let p = |v: u8| {
        [(
            "g",
            on_xa_ingress(json!([{"action": "Allow", "ipVersion": v}])),
        )]
    };
    field("ipVersion", &p(4), &p(6), yb_to_xa(80), Allow);
    field(
        "ipVersion (IPv6 packet)",
        &p(6),
        &p(4),
        tcp(ip6("y", "b"), ip6("x", "a"), 80),
        Allow,
    );
}

fn src_rule(src: Value) -> Value {
    json!([{"action": "Allow", "source": src}])
}

fn dst_rule(dst: Value) -> Value {
    json!([{"action": "Allow", "destination": dst}])
}

#[test]
fn source_nets() {
    let p = |n: &str| [("g", on_xa_ingress(src_rule(json!({"nets": [n]}))))];
    field(
        "source.nets",
        &p("10.0.1.2/32"),
        &p("10.0.1.1/32"),
        yb_to_xa(80),
        Allow,
    );
    // From outside the cluster too.
    let outside: IpAddr = "192.168.1.1".parse().expect("address");
    field(
        "source.nets (outside)",
        &p("192.168.0.0/16"),
        &p("172.16.0.0/12"),
        tcp(outside, ip("x", "a"), 80),
        Allow,
    );
}

#[test]
fn source_not_nets() {
    let p = |n: &str| [("g", on_xa_ingress(src_rule(json!({"notNets": [n]}))))];
    field(
        "source.notNets",
        &p("10.0.1.1/32"),
        &p("10.0.1.0/24"),
        yb_to_xa(80),
        Allow,
    );
}

#[test]
fn source_selector() {
    let p = |s: &str| [("g", on_xa_ingress(src_rule(json!({"selector": s}))))];
    field(
        "source.selector",
        &p("pod == 'b'"),
        &p("pod == 'a'"),
        yb_to_xa(80),
        Allow,
    );
}

#[test]
fn source_not_selector() {
    let p = |s: &str| [("g", on_xa_ingress(src_rule(json!({"notSelector": s}))))];
    field(
        "source.notSelector",
        &p("pod == 'a'"),
        &p("pod == 'b'"),
        yb_to_xa(80),
        Allow,
    );
}

#[test]
fn source_namespace_selector() {
    let p = |s: &str| {
        [(
            "g",
            on_xa_ingress(src_rule(json!({"namespaceSelector": s}))),
        )]
    };
    field(
        "source.namespaceSelector",
        &p("ns == 'y'"),
        &p("ns == 'x'"),
        yb_to_xa(80),
        Allow,
    );
    // With a selector, both must match.
    let both = |ns: &str| {
        [(
            "g",
            on_xa_ingress(src_rule(
                json!({"namespaceSelector": ns, "selector": "pod == 'b'"}),
            )),
        )]
    };
    field(
        "source.namespaceSelector && selector",
        &both("ns == 'y'"),
        &both("ns == 'x'"),
        yb_to_xa(80),
        Allow,
    );
}

#[test]
fn source_ports() {
    // Packet::l4 sends from port 40000.
    let p = |port: Value| {
        [(
            "g",
            on_xa_ingress(
                json!([{"action": "Allow", "protocol": "TCP", "source": {"ports": [port]}}]),
            ),
        )]
    };
    field(
        "source.ports",
        &p(json!("39000:41000")),
        &p(json!(40001)),
        yb_to_xa(80),
        Allow,
    );
}

#[test]
fn source_not_ports() {
    let p = |port: Value| {
        [(
            "g",
            on_xa_ingress(
                json!([{"action": "Allow", "protocol": "TCP", "source": {"notPorts": [port]}}]),
            ),
        )]
    };
    field(
        "source.notPorts",
        &p(json!(40001)),
        &p(json!(40000)),
        yb_to_xa(80),
        Allow,
    );
}

#[test]
fn destination_nets() {
    let p = |n: &str| [("g", on_xa_egress(dst_rule(json!({"nets": [n]}))))];
    field(
        "destination.nets",
        &p("10.0.1.0/24"),
        &p("10.0.0.0/24"),
        xa_to_yb(80),
        Allow,
    );
}

#[test]
fn destination_not_nets() {
    let p = |n: &str| [("g", on_xa_egress(dst_rule(json!({"notNets": [n]}))))];
    field(
        "destination.notNets",
        &p("10.0.0.0/24"),
        &p("10.0.1.2/32"),
        xa_to_yb(80),
        Allow,
    );
}

#[test]
fn destination_selector() {
    let p = |s: &str| [("g", on_xa_egress(dst_rule(json!({"selector": s}))))];
    field(
        "destination.selector",
        &p("pod == 'b'"),
        &p("pod == 'a'"),
        xa_to_yb(80),
        Allow,
    );
}

#[test]
fn destination_not_selector() {
    let p = |s: &str| [("g", on_xa_egress(dst_rule(json!({"notSelector": s}))))];
    field(
        "destination.notSelector",
        &p("pod == 'a'"),
        &p("pod == 'b'"),
        xa_to_yb(80),
        Allow,
    );
}

#[test]
fn destination_namespace_selector() {
    let p = |s: &str| [("g", on_xa_egress(dst_rule(json!({"namespaceSelector": s}))))];
    field(
        "destination.namespaceSelector",
        &p("ns == 'y'"),
        &p("ns == 'x'"),
        xa_to_yb(80),
        Allow,
    );
}

#[test]
fn destination_ports() {
    let p = |port: Value| {
        [(
            "g",
            on_xa_ingress(
                json!([{"action": "Allow", "protocol": "TCP", "destination": {"ports": [port]}}]),
            ),
        )]
    };
    field(
        "destination.ports",
        &p(json!(80)),
        &p(json!(81)),
        yb_to_xa(80),
        Allow,
    );
    field(
        "destination.ports (range)",
        &p(json!("79:80")),
        &p(json!("81:90")),
        yb_to_xa(80),
        Allow,
    );
    field(
        "destination.ports (named)",
        &p(json!("serve-80")),
        &p(json!("serve-81")),
        yb_to_xa(80),
        Allow,
    );
}

#[test]
fn destination_not_ports() {
    let p = |port: Value| {
        [(
            "g",
            on_xa_ingress(
                json!([{"action": "Allow", "protocol": "TCP", "destination": {"notPorts": [port]}}]),
            ),
        )]
    };
    field(
        "destination.notPorts",
        &p(json!(81)),
        &p(json!(80)),
        yb_to_xa(80),
        Allow,
    );
    field(
        "destination.notPorts (named)",
        &p(json!("serve-81")),
        &p(json!("serve-80")),
        yb_to_xa(80),
        Allow,
    );
}

#[test]
fn rules_that_could_never_match_are_refused() {
    let bad = [
        (
            json!({"action": "Deny", "protocol": "ICMP", "ipVersion": 6}),
            "spec.ingress[0].ipVersion",
        ),
        (
            json!({"action": "Deny", "protocol": "ICMPv6", "ipVersion": 4}),
            "spec.ingress[0].ipVersion",
        ),
        (
            json!({"action": "Deny", "ipVersion": 6, "source": {"nets": ["10.0.0.0/8"]}}),
            "spec.ingress[0].source.nets",
        ),
        (
            json!({"action": "Deny", "ipVersion": 4, "destination": {"nets": ["fd00::/8"]}}),
            "spec.ingress[0].destination.nets",
        ),
    ];
    for (rule, field) in bad {
        let v = json!({"apiVersion": "twill.dev/v1", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": "g"}, "spec": {"ingress": [rule]}});
        let err = twill_api::Kind::GlobalNetworkPolicy
            .validate_value(&v)
            .expect_err("a rule that never matches is refused");
        assert_eq!(err.errors[0].field, field, "{err}");
        assert!(err.to_string().contains("never match"), "{err}");
    }
    // The same rules with a consistent version are accepted and decide.
    let ok = [(
        "g",
        on_xa_ingress(
            json!([{"action": "Allow", "ipVersion": 6, "source": {"nets": ["fd00::/16", "10.0.0.0/8"]}}]),
        ),
    )];
    assert_eq!(verdict(&ok, &tcp(ip6("y", "b"), ip6("x", "a"), 80)), Allow);
    assert_eq!(verdict(&ok, &yb_to_xa(80)), Deny);
    let ping6 = [(
        "g",
        on_xa_ingress(json!([{"action": "Allow", "protocol": "ICMPv6", "ipVersion": 6}])),
    )];
    assert_eq!(
        verdict(&ping6, &ping(ip6("y", "b"), ip6("x", "a"), 128, 0)),
        Allow
    );
}
