//! The policy dataplane kube-router programs, built the way kube-router's
//! network policy controller builds it (learned from its
//! `pkg/controllers/netpol`; written here from that description, no code
//! taken), for the same policies Twill renders, so the dataplane benchmark
//! compares like with like:
//!
//! * `FORWARD` jumps to `KUBE-ROUTER-FORWARD`, then accepts what carries
//!   the "passed policy" mark `0x20000`;
//! * `KUBE-ROUTER-FORWARD` holds one rule per isolated pod on the node,
//!   `-d POD_IP -j KUBE-POD-FW-<hash>`: the per-pod chain is chosen by
//!   destination, walking this list;
//! * `KUBE-POD-FW-<hash>` accepts established/related traffic and traffic
//!   from the node itself, jumps to the chain of every policy that selects
//!   the pod — and only those — then rejects what no policy marked
//!   (`0x10000`), clears that mark and sets `0x20000`;
//! * `KUBE-NWPLCY-<hash>`: per ingress rule and port, a rule matching the
//!   rule's peers (ipset `KUBE-SRC-<hash>`, `hash:ip`) and the policy's
//!   selected pods (ipset `KUBE-DST-<hash>`) that sets `0x10000`, and the
//!   same match with that mark that returns.
//!
//! Left out: kube-router's NFLOG of rejected packets (only denied packets
//! reach it) and its egress and bridged-traffic (`physdev`) jumps, which
//! ingress-only policies between routed pods never use. Pure: the caller
//! loads the output with `ipset restore` and `iptables-restore`.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;

/// One ingress NetworkPolicy reduced to addresses: the pods it selects,
/// the peers its one rule allows, on these TCP ports.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub selects: Vec<Ipv4Addr>,
    pub from: Vec<Ipv4Addr>,
    pub tcp_ports: Vec<u16>,
}

/// `ipset restore` input and `iptables-restore` input (filter table).
#[derive(Debug, Clone)]
pub struct Ruleset {
    pub ipset: String,
    pub iptables: String,
}

/// `PREFIX` + 16 characters of a hash of `what` (iptables chain names are
/// at most 28 characters; kube-router's prefixes are sized for that).
fn hashed(prefix: &str, what: &str) -> String {
    let mut h = DefaultHasher::new();
    what.hash(&mut h);
    format!("{prefix}{:016X}", h.finish())
}

pub fn pod_chain(pod: Ipv4Addr) -> String {
    hashed("KUBE-POD-FW-", &pod.to_string())
}

pub fn policy_chain(policy: &str) -> String {
    hashed("KUBE-NWPLCY-", policy)
}

/// The ruleset for `policies`, with the node's isolated pods' jumps in
/// `KUBE-ROUTER-FORWARD` in the order of `local_pods` (pods no policy
/// selects get no chain, as in kube-router).
pub fn ruleset(local_pods: &[Ipv4Addr], policies: &[Policy]) -> Ruleset {
    let mut ipset = String::new();
    let mut chains = String::from("*filter\n:KUBE-ROUTER-FORWARD - [0:0]\n");
    let mut rules = String::from(
        "-A FORWARD -j KUBE-ROUTER-FORWARD\n-A FORWARD -m mark --mark 0x20000/0x20000 -j ACCEPT\n",
    );
    for p in policies {
        let chain = policy_chain(&p.name);
        let src = hashed("KUBE-SRC-", &p.name);
        let dst = hashed("KUBE-DST-", &p.name);
        ipset.push_str(&format!("create {src} hash:ip\ncreate {dst} hash:ip\n"));
        for a in &p.from {
            ipset.push_str(&format!("add {src} {a}\n"));
        }
        for a in &p.selects {
            ipset.push_str(&format!("add {dst} {a}\n"));
        }
        chains.push_str(&format!(":{chain} - [0:0]\n"));
        for port in &p.tcp_ports {
            let m = format!(
                "-p tcp --dport {port} -m set --match-set {src} src -m set --match-set {dst} dst"
            );
            rules.push_str(&format!(
                "-A {chain} {m} -j MARK --set-xmark 0x10000/0x10000\n-A {chain} {m} -m mark --mark 0x10000/0x10000 -j RETURN\n"
            ));
        }
    }
    for pod in local_pods {
        let selecting: Vec<&Policy> = policies
            .iter()
            .filter(|p| p.selects.contains(pod))
            .collect();
        if selecting.is_empty() {
            continue;
        }
        let chain = pod_chain(*pod);
        chains.push_str(&format!(":{chain} - [0:0]\n"));
        rules.push_str(&format!("-A KUBE-ROUTER-FORWARD -d {pod}/32 -j {chain}\n"));
        rules.push_str(&format!(
            "-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n-A {chain} -m addrtype --src-type LOCAL -d {pod}/32 -j ACCEPT\n"
        ));
        for p in selecting {
            rules.push_str(&format!("-A {chain} -j {}\n", policy_chain(&p.name)));
        }
        rules.push_str(&format!(
            "-A {chain} -m mark ! --mark 0x10000/0x10000 -j REJECT\n-A {chain} -j MARK --set-xmark 0x0/0x10000\n-A {chain} -j MARK --set-xmark 0x20000/0x20000\n"
        ));
    }
    Ruleset {
        ipset,
        iptables: format!("{chains}{rules}COMMIT\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_jumps_only_to_the_policies_that_select_it() {
        let a: Ipv4Addr = "10.0.0.1".parse().unwrap();
        let b: Ipv4Addr = "10.0.0.2".parse().unwrap();
        let c: Ipv4Addr = "10.0.0.3".parse().unwrap();
        let pol = |name: &str, sel: Ipv4Addr| Policy {
            name: name.into(),
            selects: vec![sel],
            from: vec![c],
            tcp_ports: vec![80],
        };
        let r = ruleset(&[a, b, c], &[pol("p1", a), pol("p2", b), pol("p3", a)]);
        let jumps_of = |pod| {
            let chain = pod_chain(pod);
            r.iptables
                .lines()
                .filter(|l| l.starts_with(&format!("-A {chain} -j KUBE-NWPLCY-")))
                .count()
        };
        assert_eq!(jumps_of(a), 2);
        assert_eq!(jumps_of(b), 1);
        // c is selected by nothing: no chain, no dispatch rule.
        assert!(!r.iptables.contains(&pod_chain(c)));
        assert_eq!(r.iptables.matches("-A KUBE-ROUTER-FORWARD -d").count(), 2);
        assert!(pod_chain(a).len() <= 28 && policy_chain("p1").len() <= 28);
        assert_eq!(r.ipset.matches("create ").count(), 6);
    }
}
