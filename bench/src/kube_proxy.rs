//! The Service dataplane kube-proxy v1.20 builds in iptables mode, built
//! the same way (learned from its `pkg/proxy/iptables/proxier.go`; written
//! here from that description, no code taken), for the service proxy
//! benchmark's iptables peers (the same input for the nf_tables and the
//! legacy backend):
//!
//! * nat `PREROUTING` and `OUTPUT` jump to `KUBE-SERVICES`, `POSTROUTING`
//!   to `KUBE-POSTROUTING`; filter `INPUT` (new) to
//!   `KUBE-EXTERNAL-SERVICES`, `FORWARD` (new) and `OUTPUT` (new) to the
//!   filter `KUBE-SERVICES`, `FORWARD` to `KUBE-FORWARD` — each made sure
//!   of with one `iptables -N` and one `iptables -C` (`-I` when missing) per
//!   sync ([`jump_rules`]);
//! * `KUBE-SERVICES` holds two rules per Service port, in order: traffic
//!   to the cluster IP and port from outside the cluster CIDR jumps to
//!   `KUBE-MARK-MASQ`, then all traffic to it jumps to `KUBE-SVC-<hash>`;
//!   its last rule sends traffic to a local address to `KUBE-NODEPORTS`
//!   (two rules per NodePort, the same shape);
//! * `KUBE-SVC-<hash>` picks an endpoint with one rule per endpoint,
//!   `-m statistic --mode random --probability 1/(n-i)` (the last rule has
//!   none), jumping to `KUBE-SEP-<hash>`;
//! * `KUBE-SEP-<hash>` marks the endpoint's own traffic for masquerade
//!   (hairpin) and DNATs to the endpoint;
//! * `KUBE-POSTROUTING` masquerades what carries mark `0x4000`;
//!   `KUBE-FORWARD` drops invalid and accepts marked and established
//!   traffic.
//!
//! Every sync writes all of it with one `iptables-restore --noflush
//! --counters` of the filter and nat tables, after `iptables-save` of both
//! (to find chains to delete: `-X` for a `KUBE-SVC-`/`KUBE-SEP-` chain no
//! longer wanted). Not modelled: the ports kube-proxy holds open for
//! NodePorts, the filter rules for Services without endpoints (the
//! benchmark has none), session affinity (`-m recent`), load balancer
//! chains (`KUBE-FW-`, `KUBE-XLB-`), and the hash: kube-proxy names chains
//! with 16 base32 characters of a SHA-256, this module with 16 of a
//! SipHash (same length, same alphabet). The order of Service ports in
//! `KUBE-SERVICES` is the caller's (kube-proxy's is a Go map's: random per
//! sync). Pure: the caller runs the commands.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, SocketAddrV4};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// kube-proxy's masquerade mark (`--iptables-masquerade-bit` 14).
pub const MASQ_MARK: &str = "0x4000";

/// One Service port reduced to what kube-proxy programs for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvcPort {
    /// `namespace/name:port-name`, as kube-proxy's comments print it.
    pub name: String,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    /// Ready endpoints, in the order the EndpointSlice lists them.
    pub endpoints: Vec<SocketAddrV4>,
}

/// 16 characters of base32 (`A–Z2–7`) of a hash of `parts`.
fn hash16(parts: &[&str]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits: u128 = 0;
    for salt in 0u8..2 {
        let mut h = DefaultHasher::new();
        salt.hash(&mut h);
        parts.hash(&mut h);
        bits = (bits << 64) | u128::from(h.finish());
    }
    (0..16)
        .map(|i| ALPHABET[((bits >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// `KUBE-SVC-<hash>` of a Service port.
pub fn svc_chain(p: &SvcPort) -> String {
    format!("KUBE-SVC-{}", hash16(&[&p.name, &p.protocol]))
}

/// `KUBE-SEP-<hash>` of one endpoint of a Service port.
pub fn sep_chain(p: &SvcPort, ep: &SocketAddrV4) -> String {
    format!(
        "KUBE-SEP-{}",
        hash16(&[&p.name, &p.protocol, &ep.to_string()])
    )
}

/// One of the jumps from a built-in chain kube-proxy makes sure of on
/// every sync: `iptables -t TABLE -N CHAIN`, then `-C HOOK ARGS` and,
/// when that fails, `-I HOOK ARGS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpRule {
    pub table: &'static str,
    pub chain: &'static str,
    pub hook: &'static str,
    pub args: Vec<String>,
}

/// kube-proxy 1.20's jumps from the built-in chains.
pub fn jump_rules() -> Vec<JumpRule> {
    let jump = |table, chain, hook, comment: &str, new: bool| {
        let mut args = Vec::new();
        if new {
            args.extend(["-m", "conntrack", "--ctstate", "NEW"].map(String::from));
        }
        args.extend(["-m", "comment", "--comment", comment, "-j", chain].map(String::from));
        JumpRule {
            table,
            chain,
            hook,
            args,
        }
    };
    let external = "kubernetes externally-visible service portals";
    let portals = "kubernetes service portals";
    vec![
        jump("filter", "KUBE-EXTERNAL-SERVICES", "INPUT", external, true),
        jump(
            "filter",
            "KUBE-EXTERNAL-SERVICES",
            "FORWARD",
            external,
            true,
        ),
        jump("filter", "KUBE-SERVICES", "FORWARD", portals, true),
        jump("filter", "KUBE-SERVICES", "OUTPUT", portals, true),
        jump("nat", "KUBE-SERVICES", "OUTPUT", portals, false),
        jump("nat", "KUBE-SERVICES", "PREROUTING", portals, false),
        jump(
            "nat",
            "KUBE-POSTROUTING",
            "POSTROUTING",
            "kubernetes postrouting rules",
            false,
        ),
        jump(
            "filter",
            "KUBE-FORWARD",
            "FORWARD",
            "kubernetes forwarding rules",
            false,
        ),
    ]
}

/// The chain names an `iptables-save` listing declares (`:NAME POLICY
/// [p:b]` lines).
pub fn saved_chains(save: &str) -> BTreeSet<String> {
    save.lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The `iptables-restore --noflush` input of one sync: the filter and
/// nat tables' KUBE chains for `ports`, deleting the `KUBE-SVC-` and
/// `KUBE-SEP-` chains of `existing_nat` (an `iptables-save -t nat`
/// listing's chains) that are no longer wanted. `cluster_cidr` is the pod
/// CIDR (`--cluster-cidr`): cluster IP traffic from outside it is
/// masqueraded.
pub fn restore_input(
    ports: &[SvcPort],
    cluster_cidr: &str,
    existing_nat: &BTreeSet<String>,
) -> String {
    let mut s = String::with_capacity(ports.len() * 1200 + 2048);
    let m = MASQ_MARK;
    s.push_str(
        "*filter\n:KUBE-SERVICES - [0:0]\n:KUBE-EXTERNAL-SERVICES - [0:0]\n:KUBE-FORWARD - [0:0]\n",
    );
    s.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
    let _ = writeln!(
        s,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {m}/{m} -j ACCEPT"
    );
    let _ = writeln!(
        s,
        "-A KUBE-FORWARD -s {cluster_cidr} -m comment --comment \"kubernetes forwarding conntrack pod source rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    );
    let _ = writeln!(
        s,
        "-A KUBE-FORWARD -d {cluster_cidr} -m comment --comment \"kubernetes forwarding conntrack pod destination rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    );
    s.push_str("COMMIT\n*nat\n");
    // Chains first (each declaration flushes the chain), then rules, as
    // kube-proxy writes them.
    let mut chains = String::new();
    let mut rules = String::new();
    for c in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(chains, ":{c} - [0:0]");
    }
    let _ = writeln!(
        rules,
        "-A KUBE-POSTROUTING -m mark ! --mark {m}/{m} -j RETURN"
    );
    let _ = writeln!(rules, "-A KUBE-POSTROUTING -j MARK --xor-mark {m}");
    rules.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    let _ = writeln!(rules, "-A KUBE-MARK-MASQ -j MARK --or-mark {m}");
    let mut active = BTreeSet::new();
    for p in ports {
        let svc = svc_chain(p);
        let _ = writeln!(chains, ":{svc} - [0:0]");
        active.insert(svc.clone());
        let (name, proto, vip, port) = (&p.name, &p.protocol, p.cluster_ip, p.port);
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES ! -s {cluster_cidr} -d {vip}/32 -p {proto} -m comment --comment \"{name} cluster IP\" -m {proto} --dport {port} -j KUBE-MARK-MASQ"
        );
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {vip}/32 -p {proto} -m comment --comment \"{name} cluster IP\" -m {proto} --dport {port} -j {svc}"
        );
        if let Some(np) = p.node_port {
            let _ = writeln!(
                rules,
                "-A KUBE-NODEPORTS -p {proto} -m comment --comment \"{name}\" -m {proto} --dport {np} -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(
                rules,
                "-A KUBE-NODEPORTS -p {proto} -m comment --comment \"{name}\" -m {proto} --dport {np} -j {svc}"
            );
        }
        let n = p.endpoints.len();
        for (i, ep) in p.endpoints.iter().enumerate() {
            let sep = sep_chain(p, ep);
            let _ = writeln!(chains, ":{sep} - [0:0]");
            active.insert(sep.clone());
            if i + 1 < n {
                let _ = writeln!(
                    rules,
                    "-A {svc} -m comment --comment \"{name}\" -m statistic --mode random --probability {:.10} -j {sep}",
                    1.0 / (n - i) as f64
                );
            } else {
                let _ = writeln!(rules, "-A {svc} -m comment --comment \"{name}\" -j {sep}");
            }
            let _ = writeln!(
                rules,
                "-A {sep} -s {}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ",
                ep.ip()
            );
            let _ = writeln!(
                rules,
                "-A {sep} -p {proto} -m comment --comment \"{name}\" -m {proto} -j DNAT --to-destination {ep}"
            );
        }
    }
    rules.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    for old in existing_nat {
        if (old.starts_with("KUBE-SVC-") || old.starts_with("KUBE-SEP-")) && !active.contains(old) {
            let _ = writeln!(chains, ":{old} - [0:0]");
            let _ = writeln!(rules, "-X {old}");
        }
    }
    s.push_str(&chains);
    s.push_str(&rules);
    s.push_str("COMMIT\n");
    s
}

/// The `iptables-restore --noflush` input that deletes `chains` from
/// `table`: each declared (which flushes it, so no rule of one still
/// jumps to another), then each deleted. What the benchmark's legacy peer
/// unloads with: kube-proxy's chains, not the table, which x_tables
/// cannot delete.
pub fn delete_chains_input(table: &str, chains: &[String]) -> String {
    let mut s = format!("*{table}\n");
    for c in chains {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    for c in chains {
        let _ = writeln!(s, "-X {c}");
    }
    s.push_str("COMMIT\n");
    s
}

/// The Service ports kube-proxy would program from these objects: IPv4
/// cluster IPs, each port's endpoints from the EndpointSlices labelled
/// with the Service's name (port matched by name and protocol, endpoints
/// whose `ready` is not false), in the order of `services`.
pub fn from_objects(services: &[Service], slices: &[EndpointSlice]) -> Vec<SvcPort> {
    let label = "kubernetes.io/service-name";
    let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for sl in slices {
        let ns = sl.metadata.namespace.clone().unwrap_or_default();
        if let Some(svc) = sl.metadata.labels.as_ref().and_then(|l| l.get(label)) {
            by_service.entry((ns, svc.clone())).or_default().push(sl);
        }
    }
    let mut out = Vec::new();
    for svc in services {
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let Some(spec) = &svc.spec else { continue };
        let Some(vip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|a| a.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let slices = by_service
            .get(&(ns.clone(), name.clone()))
            .cloned()
            .unwrap_or_default();
        for sp in spec.ports.iter().flatten() {
            let proto = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
            let port_name = sp.name.clone().unwrap_or_default();
            let mut endpoints = Vec::new();
            for sl in &slices {
                let Some(target) = sl.ports.iter().flatten().find(|ep| {
                    ep.name.clone().unwrap_or_default() == port_name
                        && ep.protocol.clone().unwrap_or_else(|| "TCP".into()) == proto
                }) else {
                    continue;
                };
                let Some(tp) = target.port.and_then(|p| u16::try_from(p).ok()) else {
                    continue;
                };
                for e in &sl.endpoints {
                    if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                        continue;
                    }
                    for a in &e.addresses {
                        if let Ok(ip) = a.parse::<Ipv4Addr>() {
                            endpoints.push(SocketAddrV4::new(ip, tp));
                        }
                    }
                }
            }
            let (Ok(port), node_port) = (
                u16::try_from(sp.port),
                sp.node_port.and_then(|p| u16::try_from(p).ok()),
            ) else {
                continue;
            };
            out.push(SvcPort {
                name: format!("{ns}/{name}:{port_name}"),
                protocol: proto.to_lowercase(),
                cluster_ip: vip,
                port,
                node_port,
                endpoints,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(i: u8, eps: usize) -> SvcPort {
        SvcPort {
            name: format!("bench/svc-{i}:http"),
            protocol: "tcp".into(),
            cluster_ip: Ipv4Addr::new(10, 96, 0, i),
            port: 80,
            node_port: (i == 1).then_some(30001),
            endpoints: (0..eps)
                .map(|j| SocketAddrV4::new(Ipv4Addr::new(10, 244, i, j as u8 + 1), 8080))
                .collect(),
        }
    }

    #[test]
    fn one_rule_per_endpoint_with_kube_proxy_probabilities() {
        let p = port(1, 3);
        let s = restore_input(std::slice::from_ref(&p), "10.244.0.0/16", &BTreeSet::new());
        let svc = svc_chain(&p);
        assert_eq!(svc.len(), "KUBE-SVC-".len() + 16);
        let picks: Vec<&str> = s
            .lines()
            .filter(|l| l.starts_with(&format!("-A {svc} ")))
            .collect();
        assert_eq!(picks.len(), 3, "{s}");
        assert!(picks[0].contains("--probability 0.3333333333"), "{s}");
        assert!(picks[1].contains("--probability 0.5000000000"), "{s}");
        assert!(!picks[2].contains("statistic"), "{s}");
        assert!(
            s.contains("-j DNAT --to-destination 10.244.1.3:8080"),
            "{s}"
        );
        assert!(s.contains("-A KUBE-NODEPORTS -p tcp -m comment --comment \"bench/svc-1:http\" -m tcp --dport 30001 -j KUBE-SVC-"), "{s}");
        // The NodePort jump is the last rule of KUBE-SERVICES.
        let last = s
            .lines()
            .rfind(|l| l.starts_with("-A KUBE-SERVICES"))
            .unwrap_or_default();
        assert!(
            last.contains("--dst-type LOCAL -j KUBE-NODEPORTS"),
            "{last}"
        );
        assert!(s.ends_with("COMMIT\n"));
    }

    #[test]
    fn a_sync_deletes_the_chains_no_longer_wanted_and_only_those() {
        let before = [port(1, 3), port(2, 2)];
        let mut after = before.clone();
        after[0].endpoints[0] = "10.244.9.9:8080".parse().unwrap();
        let old_sep = sep_chain(&before[0], &before[0].endpoints[0]);
        let kept = sep_chain(&before[0], &before[0].endpoints[1]);
        let save = format!(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:{old_sep} - [0:0]\n:{kept} - [0:0]\nCOMMIT\n"
        );
        let existing = saved_chains(&save);
        assert!(existing.contains("PREROUTING") && existing.contains(&old_sep));
        let s = restore_input(&after, "10.244.0.0/16", &existing);
        assert!(s.contains(&format!("-X {old_sep}\n")), "{s}");
        assert!(!s.contains(&format!("-X {kept}")), "{s}");
        assert!(!s.contains("-X KUBE-SERVICES"), "{s}");
    }

    #[test]
    fn deleting_chains_flushes_all_of_them_before_deleting_any() {
        let chains = vec!["KUBE-SERVICES".to_string(), "KUBE-SVC-X".to_string()];
        let s = delete_chains_input("nat", &chains);
        assert_eq!(
            s,
            "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-X - [0:0]\n-X KUBE-SERVICES\n-X KUBE-SVC-X\nCOMMIT\n"
        );
        assert_eq!(delete_chains_input("filter", &[]), "*filter\nCOMMIT\n");
    }

    #[test]
    fn from_objects_matches_ports_by_name_and_skips_unready_endpoints() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"clusterIP": "10.96.0.7", "type": "NodePort", "ports": [
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "web", "nodePort": 30080}]}
        }))
        .expect("service");
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "ns",
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "other", "port": 9, "protocol": "TCP"},
                      {"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.0.5"], "conditions": {"ready": true}},
                {"addresses": ["10.244.0.6"], "conditions": {"ready": false}},
                {"addresses": ["10.244.0.7"]}]
        }))
        .expect("slice");
        let other_ns = EndpointSlice {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                namespace: Some("elsewhere".into()),
                ..slice.metadata.clone()
            },
            ..slice.clone()
        };
        let ports = from_objects(&[svc], &[slice, other_ns]);
        assert_eq!(
            ports,
            vec![SvcPort {
                name: "ns/web:http".into(),
                protocol: "tcp".into(),
                cluster_ip: Ipv4Addr::new(10, 96, 0, 7),
                port: 80,
                node_port: Some(30080),
                endpoints: vec![
                    "10.244.0.5:8080".parse().unwrap(),
                    "10.244.0.7:8080".parse().unwrap()
                ],
            }]
        );
    }

    #[test]
    fn jump_rules_cover_every_hook_kube_proxy_uses() {
        let j = jump_rules();
        let hooks: BTreeSet<_> = j.iter().map(|r| (r.table, r.hook)).collect();
        for want in [
            ("nat", "PREROUTING"),
            ("nat", "OUTPUT"),
            ("nat", "POSTROUTING"),
            ("filter", "FORWARD"),
            ("filter", "INPUT"),
            ("filter", "OUTPUT"),
        ] {
            assert!(hooks.contains(&want), "{want:?}");
        }
        assert!(
            j.iter()
                .all(|r| r.args.last().map(String::as_str) == Some(r.chain))
        );
    }
}
