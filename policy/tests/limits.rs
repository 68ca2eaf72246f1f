//! Every script Twill renders fits the kernel for every legal Kubernetes
//! input: NetworkPolicies and GlobalNetworkPolicies with names at and near
//! 253 bytes, namespaces of 63, label keys of 317 (a 253-byte prefix, `/`,
//! a 63-byte name), values of 63, selectors far over nft's 128-byte comment
//! limit, and Log rules whose prefixes would run past 127 bytes. Each full
//! render and each incremental update (policies added, changed and removed
//! one by one) is applied with the real `nft` in a network namespace of its
//! own, so the kernel, not a copy of its limits, is the judge.
//!
//! Needs root and nft (CI has both); without them the test fails saying so.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use serde_json::{Value, json};
use twill_policy::incremental::Incremental;
use twill_policy::ir::{COMMENT_MAX, NAME_MAX};
use twill_policy::model::{Endpoint, Labels, NamedPort, Policy, proto};
use twill_policy::{compile_global_policy, compile_network_policy, render};

const NODE: &str = "n1";

/// A network namespace this test made; deleted on drop.
struct TestNs(String);

impl TestNs {
    fn new() -> TestNs {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "twlim-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip (install iproute2): {e}"));
        assert!(
            out.status.success(),
            "ip netns add {name} failed (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TestNs(name)
    }

    /// Runs `nft [-c] -f -` with `script` in the namespace.
    fn nft(&self, check: bool, script: &str) -> Result<(), String> {
        let mut args = vec!["netns", "exec", &self.0, "nft"];
        if check {
            args.push("-c");
        }
        args.extend(["-f", "-"]);
        let mut child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run ip netns exec nft: {e}"));
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write script");
        let out = child.wait_with_output().expect("nft");
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Checks, then applies a script; panics with nft's words and the script.
    fn apply(&self, what: &str, script: &str) {
        for check in [true, false] {
            if let Err(e) = self.nft(check, script) {
                panic!(
                    "nft {}refused the {what}: {e}\n--- script ---\n{script}",
                    if check { "-c " } else { "" }
                );
            }
        }
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// `len` bytes of a DNS label (lowercase letters and digits, starting and
/// ending with a letter), varied by `seed`.
fn label(len: usize, seed: u8) -> String {
    (0..len)
        .map(|i| (b'a' + ((i as u8).wrapping_mul(7).wrapping_add(seed)) % 26) as char)
        .collect()
}

/// A DNS subdomain (what object names may be) of exactly `len` bytes:
/// labels of up to 63 joined by dots.
fn subdomain(len: usize, seed: u8) -> String {
    let mut s = String::new();
    let mut i = 0u8;
    while s.len() < len {
        if !s.is_empty() {
            s.push('.');
        }
        let room = len - s.len();
        // Never leave a single byte for a last label after a dot.
        let take = if room > 63 { 63.min(room - 2) } else { room };
        s.push_str(&label(take, seed.wrapping_add(i)));
        i += 1;
    }
    s
}

/// A label key at the limit: a 253-byte prefix, `/`, a 63-byte name.
fn long_key(seed: u8) -> String {
    format!("{}/{}", subdomain(253, seed), label(63, seed))
}

fn sizes() -> impl Strategy<Value = usize> {
    prop::sample::select(vec![1usize, 63, 113, 200, 235, 236, 252, 253])
}

#[derive(Debug, Clone)]
struct Case {
    ns: String,
    nps: Vec<Value>,
    gnps: Vec<Value>,
    endpoints: Vec<Endpoint>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(vec![1usize, 62, 63]),
        prop::collection::vec((sizes(), any::<u8>(), any::<bool>()), 1..4),
        prop::collection::vec((sizes(), any::<u8>(), 1usize..12), 0..3),
        any::<u8>(),
    )
        .prop_map(|(ns_len, nps, gnps, seed)| {
            let ns = label(ns_len, seed);
            let key = long_key(seed);
            let value = label(63, seed.wrapping_add(1));
            let nps = nps
                .into_iter()
                .enumerate()
                .map(|(i, (len, s, egress))| {
                    // Distinct names: the first bytes differ by index.
                    let name = format!("{i}{}", subdomain(len.max(2) - 1, s));
                    let sel = json!({"matchLabels": {key.clone(): value.clone()},
                        "matchExpressions": [{"key": key.clone(), "operator": "In",
                            "values": [value.clone(), label(63, s)]}]});
                    let peer = json!({"podSelector": sel.clone(),
                        "namespaceSelector": {"matchLabels": {key.clone(): value.clone()}}});
                    let mut spec = json!({"podSelector": sel,
                        "ingress": [{"from": [peer.clone()], "ports": [{"port": "serve-80-tcp"}, {"port": 81}]}]});
                    if egress {
                        spec["egress"] = json!([{"to": [peer, {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}]);
                        spec["policyTypes"] = json!(["Ingress", "Egress"]);
                    }
                    json!({"metadata": {"name": name, "namespace": ns.clone()}, "spec": spec})
                })
                .collect();
            let gnps = gnps
                .into_iter()
                .enumerate()
                .map(|(i, (len, s, clauses))| {
                    let name = format!("{i}{}", subdomain(len.max(2) - 1, s));
                    let sel: Vec<String> = (0..clauses)
                        .map(|c| format!("{key} == '{}'", label(63, s.wrapping_add(c as u8))))
                        .collect();
                    let sel = format!("{} || all()", sel.join(" || "));
                    json!({"apiVersion": "twill.dev/v1", "kind": "GlobalNetworkPolicy",
                        "metadata": {"name": name},
                        "spec": {"order": i, "selector": sel.clone(),
                            "ingress": [{"action": "Log", "source": {"selector": sel.clone()}},
                                        {"action": "Pass", "source": {"selector": sel.clone()}}],
                            "egress": [{"action": "Log"}, {"action": "Allow", "protocol": "TCP",
                                "destination": {"selector": sel, "ports": ["serve-80-tcp", 80]}}]}})
                })
                .collect();
            let endpoints = (0..3u8)
                .map(|i| Endpoint {
                    namespace: ns.clone(),
                    name: subdomain(253 - usize::from(i), seed.wrapping_add(i)),
                    labels: Labels::from([(key.clone(), value.clone())]),
                    ips: vec![
                        IpAddr::from([10, 2, 0, i + 1]),
                        format!("fd00::{}", i + 1).parse().expect("v6"),
                    ],
                    ports: vec![NamedPort {
                        name: "serve-80-tcp".into(),
                        proto: proto::TCP,
                        port: 80,
                    }],
                    node: if i < 2 { NODE.into() } else { "n2".into() },
                    iface: (i < 2).then(|| format!("tw{:013x}", i)),
                })
                .collect();
            Case {
                ns,
                nps,
                gnps,
                endpoints,
            }
        })
}

fn policies(c: &Case) -> Vec<Arc<Policy>> {
    let mut out = Vec::new();
    for np in &c.nps {
        let np: k8s_openapi::api::networking::v1::NetworkPolicy =
            serde_json::from_value(np.clone()).expect("NetworkPolicy");
        twill_api::native::validate_network_policy(&np).expect("a legal NetworkPolicy");
        out.push(Arc::new(compile_network_policy(&np).expect("compiles")));
    }
    for g in &c.gnps {
        twill_api::Kind::GlobalNetworkPolicy
            .validate_value(g)
            .expect("a legal GlobalNetworkPolicy");
        let g: twill_api::resources::GlobalNetworkPolicy =
            serde_json::from_value(g.clone()).expect("GlobalNetworkPolicy");
        out.push(Arc::new(compile_global_policy(&g).expect("compiles")));
    }
    out
}

/// Names and comments in a script, checked without the kernel, so a
/// failure says which limit was crossed.
fn check_limits(script: &str) {
    for line in script.lines() {
        for word in line.split_whitespace() {
            assert!(word.len() <= NAME_MAX || word.starts_with('"'), "{line}");
        }
        for (i, part) in line.split('"').enumerate() {
            if i % 2 == 1 {
                assert!(part.len() <= COMMENT_MAX, "{} bytes: {line}", part.len());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn scripts_at_the_kubernetes_limits_are_accepted_by_the_kernel(c in case()) {
        let pols = policies(&c);
        let ns_labels = BTreeMap::from([(
            c.ns.clone(),
            Labels::from([(long_key(0), label(63, 9))]),
        )]);
        let ns = TestNs::new();
        // Full render of everything.
        let model = twill_policy::Model::new(
            c.endpoints.clone(),
            ns_labels.clone(),
            pols.iter().map(|p| Policy::clone(p)).collect(),
        );
        let full = render(&model, NODE).script();
        check_limits(&full);
        ns.apply("full table", &full);
        // Incremental: from an empty table, policies one at a time, then
        // each one changed (renamed chains stay), then removed.
        let mut inc = Incremental::new(NODE);
        inc.sync(c.endpoints.clone(), &ns_labels, std::iter::empty());
        let first = inc.full_script();
        check_limits(&first);
        ns.apply("first table", &first);
        for k in 1..=pols.len() {
            inc.sync(c.endpoints.clone(), &ns_labels, pols[..k].iter());
            if let Some(s) = inc.commit() {
                check_limits(&s);
                ns.apply(&format!("update adding policy {k}"), &s);
            }
        }
        prop_assert_eq!(inc.table(), &render(&model, NODE));
        for k in (0..pols.len()).rev() {
            inc.sync(c.endpoints.clone(), &ns_labels, pols[..k].iter());
            if let Some(s) = inc.commit() {
                check_limits(&s);
                ns.apply(&format!("update removing policy {k}"), &s);
            }
        }
    }
}

#[test]
fn long_names_are_stable_distinct_and_keep_a_readable_prefix() {
    use twill_policy::model::Direction;
    use twill_policy::render::policy_chain;
    let ns = label(63, 1);
    let a = format!("np/{ns}/{}", subdomain(253, 2));
    let mut b = a.clone();
    b.pop();
    b.push('z');
    let ca = policy_chain(&a, Direction::Ingress);
    let cb = policy_chain(&b, Direction::Ingress);
    assert_eq!(ca, policy_chain(&a, Direction::Ingress), "stable");
    assert_ne!(ca, cb, "names differing only at the end stay distinct");
    assert!(ca.len() <= NAME_MAX && cb.len() <= NAME_MAX);
    assert!(ca.starts_with(&format!("pol-in-np.{ns}.")), "{ca}");
    // A name kept whole never equals a shortened one.
    let short = policy_chain("np/x/y", Direction::Egress);
    assert_eq!(short, "pol-out-np.x.y");
    let comment = twill_policy::ir::fit_comment(&"x".repeat(300));
    assert_eq!(comment.len(), COMMENT_MAX);
    assert!(comment.starts_with("xxxx"));
}
