//! Renders the model into Twill's nftables table for one node.
//!
//! Layout (`nft list table inet twill` shows the same):
//! * base chain `egress` (forward, priority -1) and `egress-host` (input,
//!   priority -1): established/related accepted (in `egress-host` also
//!   ICMPv6 neighbour discovery to the node: IPv6 has no ARP, and a pod
//!   that cannot resolve its gateway loses even its allowed traffic), then
//!   `iifname vmap @endpoint-egress` jumps to the sending pod's chain;
//! * base chain `ingress` (forward, priority 0): established/related
//!   accepted, then `oifname vmap @endpoint-ingress` jumps to the receiving
//!   pod's chain. Traffic from the node to its own pods leaves through the
//!   output hook, which Twill does not filter: the node always reaches its
//!   pods (kubelet probes), as Kubernetes requires;
//! * one chain per local endpoint and direction (`ep-in-IFACE`,
//!   `ep-out-IFACE`, plus `...-k8s` when global policies apply): jumps to
//!   the chains of the policies selecting it, in evaluation order, then the
//!   tier's default;
//! * one chain per policy and direction (`pol-in-np.NS.NAME`,
//!   `pol-out-gnp.NAME`), shared by every endpoint it selects;
//! * every name fits the kernel's 255 bytes and every comment nft's 128
//!   (log prefixes 127) for any legal input: a name too long is cut to a
//!   readable prefix plus a hash of the whole ([`crate::ir::fit_name`]),
//!   comments likewise when printed ([`crate::ir::fit_comment`]);
//! * a selection (keyed by the canonical selector text) appears in rules,
//!   per address family, as what its members make cheapest for the kernel
//!   ([`SelForm`]): no member — a rule needing one is left out, a negated
//!   match dropped; one member — that address, inline; more — a named set
//!   `sel-HASH-4`/`-6` shared by every rule using it. nf_tables finds a
//!   set by walking the table's list of sets by name, on every set and
//!   every rule referring to one, so a table's load time grows with the
//!   square of its sets (docs/nft.md); a set is made only where it is
//!   needed;
//! * one concatenated set per named port (`port-NAME-4`: address .
//!   protocol . port of every pod that has it);
//! * short literal lists (ports, networks) are written without a set: one
//!   entry as such, a few as one rule per entry (positive) or one atom per
//!   entry (negated); only longer lists become anonymous sets.
//!
//! Egress allowing means `accept` in the egress base chain, after which the
//! packet still meets the ingress base chain; a drop anywhere is final.
//!
//! Here: names, the base chains and the whole-table [`render`]; a policy's
//! rules are expanded in `rules`, endpoint chains and sets built in `parts`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::ir::{
    Atom, Chain, Fam, Hook, MAP_EGRESS, MAP_INGRESS, NftRule, Table, Verdict, fit_name, fnv,
};
use crate::model::{Direction, Endpoint, Model, PodSel};

mod parts;
mod rules;

pub(crate) use parts::{endpoint_chains, named_port_sets, selection_set_of, selection_sets};
pub(crate) use rules::policy_chain_rules;

/// Base name of a selection's sets.
pub fn selection_set(sel: &PodSel) -> String {
    format!("sel-{:016x}", fnv(&format!("{sel:?}")))
}

/// How a selection appears in rules for one address family, decided by
/// its members of that family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelForm {
    /// No member: a rule that needs one never matches and is left out; a
    /// negated match always holds and is dropped.
    Empty,
    /// One member: its address, inline (no set for the kernel to find).
    One(IpAddr),
    /// More: the named set of that name.
    Set(String),
}

/// The form of a selection with these members (every family) in `fam`.
pub fn sel_form(sel: &PodSel, fam: Fam, members: &BTreeSet<IpAddr>) -> SelForm {
    use std::net::{Ipv4Addr, Ipv6Addr};
    // Addresses sort by family first: a range finds a family's first two
    // without walking the other family's members.
    let (lo, hi) = match fam {
        Fam::V4 => (
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::BROADCAST),
        ),
        Fam::V6 => (
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::from(u128::MAX)),
        ),
    };
    let mut it = members.range(lo..=hi);
    match (it.next(), it.next()) {
        (None, _) => SelForm::Empty,
        (Some(a), None) => SelForm::One(*a),
        _ => SelForm::Set(format!("{}-{}", selection_set(sel), fam.digit())),
    }
}

/// Name of a named port's set (see [`fit_name`] for long names).
pub fn port_set(name: &str, fam: Fam) -> String {
    fit_name("port-", name, &format!("-{}", fam.digit()))
}

/// The chain of a policy for a direction: `pol-in-np.NAMESPACE.NAME`,
/// `pol-out-gnp.NAME`; ids too long for the kernel are cut and hashed
/// ([`fit_name`]).
pub fn policy_chain(id: &str, d: Direction) -> String {
    let base = id.replace('/', ".");
    let dir = match d {
        Direction::Ingress => "pol-in-",
        Direction::Egress => "pol-out-",
    };
    fit_name(dir, &base, "")
}

/// The chain of a local endpoint for a direction (interface names are at
/// most 15 bytes; longer ones, never made by Twill, are cut and hashed).
pub fn endpoint_chain(iface: &str, d: Direction) -> String {
    fit_name(endpoint_prefix(d), iface, "")
}

fn endpoint_prefix(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ep-in-",
        Direction::Egress => "ep-out-",
    }
}

struct Renderer<'a> {
    model: &'a Model,
    table: Table,
    sel_sets: BTreeSet<PodSel>,
    port_sets: BTreeSet<String>,
    /// Members of every selection met so far.
    members: BTreeMap<PodSel, BTreeSet<IpAddr>>,
}

impl Renderer<'_> {
    fn policy_chain(&mut self, p: &crate::model::Policy, d: Direction) {
        let name = policy_chain(&p.id, d);
        if self.table.chains.contains_key(&name) {
            return;
        }
        let model = self.model;
        let cache = &mut self.members;
        let (chain, sels, ports) = policy_chain_rules(p, d, &mut |sel, fam| {
            let m = cache
                .entry(sel.clone())
                .or_insert_with(|| model.members(sel).into_iter().collect());
            sel_form(sel, fam, m)
        });
        self.sel_sets.extend(sels);
        self.port_sets.extend(ports);
        self.table.chains.insert(name, chain);
    }

    fn endpoint(&mut self, ep: &Endpoint, iface: &str, d: Direction, selected: &[usize]) {
        let selecting: Vec<&crate::model::Policy> = selected
            .iter()
            .filter_map(|i| self.model.policies.get(*i))
            .filter(|p| p.rules(d).is_some())
            .collect();
        for p in &selecting {
            self.policy_chain(p, d);
        }
        for (name, chain) in endpoint_chains(&ep.id(), iface, d, &selecting) {
            self.table.chains.insert(name, chain);
        }
    }

    fn base_chains(&mut self) {
        let mut est = NftRule::new(vec![Atom::CtEstablished], Verdict::Accept);
        est.comment = Some("replies and related flows".into());
        let dispatch = |by_oif: bool, map: &str| {
            NftRule::new(
                Vec::new(),
                Verdict::Dispatch {
                    by_oif,
                    map: map.to_string(),
                },
            )
        };
        self.table.chains.insert(
            "egress".into(),
            Chain {
                hook: Some((Hook::Forward, -1)),
                rules: vec![est.clone(), dispatch(false, MAP_EGRESS)],
            },
        );
        // Router solicitation, neighbour solicitation and advertisement
        // (RFC 4861) from a pod to its node: never blocked. The kernel's
        // own checks (hop limit 255, link-local scope) still apply.
        let mut host_rules = vec![est.clone()];
        for (type_, what) in [
            (133, "router solicitation"),
            (135, "neighbour solicitation"),
            (136, "neighbour advertisement"),
        ] {
            let mut nd = NftRule::new(
                vec![Atom::Icmp {
                    fam: Fam::V6,
                    type_,
                    code: None,
                    neg: false,
                }],
                Verdict::Accept,
            );
            nd.comment = Some(format!("ICMPv6 {what}"));
            host_rules.push(nd);
        }
        host_rules.push(dispatch(false, MAP_EGRESS));
        self.table.chains.insert(
            "egress-host".into(),
            Chain {
                hook: Some((Hook::Input, -1)),
                rules: host_rules,
            },
        );
        self.table.chains.insert(
            "ingress".into(),
            Chain {
                hook: Some((Hook::Forward, 0)),
                rules: vec![est, dispatch(true, MAP_INGRESS)],
            },
        );
    }

    fn sets(&mut self) {
        for sel in std::mem::take(&mut self.sel_sets) {
            if let Some(members) = self.members.get(&sel) {
                self.table.sets.extend(selection_sets(&sel, members));
            }
        }
        for name in std::mem::take(&mut self.port_sets) {
            self.table
                .sets
                .extend(named_port_sets(&name, &self.model.endpoints));
        }
    }
}

/// Whether an endpoint is on `node` with a known interface.
pub fn local_iface<'a>(ep: &'a Endpoint, node: &str) -> Option<&'a str> {
    ep.iface.as_deref().filter(|_| ep.node == node)
}

/// The table with only its base chains and (empty) dispatch maps.
pub(crate) fn base_table() -> Table {
    let empty = Model::default();
    let mut r = Renderer {
        model: &empty,
        table: Table::default(),
        sel_sets: BTreeSet::new(),
        port_sets: BTreeSet::new(),
        members: BTreeMap::new(),
    };
    r.base_chains();
    for m in [MAP_EGRESS, MAP_INGRESS] {
        r.table.maps.insert(m.into(), BTreeMap::new());
    }
    r.table
}

/// Renders the table for `node`.
pub fn render(model: &Model, node: &str) -> Table {
    let mut r = Renderer {
        model,
        table: Table::default(),
        sel_sets: BTreeSet::new(),
        port_sets: BTreeSet::new(),
        members: BTreeMap::new(),
    };
    r.base_chains();
    // Which policies select each local endpoint, in evaluation order. Local
    // endpoints are indexed by namespace so a namespaced policy only looks
    // at its own namespace's pods (this is most of the render time).
    let locals: Vec<(&Endpoint, &str)> = model
        .endpoints
        .iter()
        .filter_map(|e| local_iface(e, node).map(|i| (e, i)))
        .collect();
    let mut by_ns: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, (e, _)) in locals.iter().enumerate() {
        by_ns.entry(e.namespace.as_str()).or_default().push(i);
    }
    let all: Vec<usize> = (0..locals.len()).collect();
    let mut selected: Vec<Vec<usize>> = vec![Vec::new(); locals.len()];
    for (pi, p) in model.policies.iter().enumerate() {
        let candidates = match &p.scope.ns {
            crate::model::NsMatch::Exact(n) => {
                by_ns.get(n.as_str()).map(Vec::as_slice).unwrap_or_default()
            }
            _ => all.as_slice(),
        };
        for li in candidates {
            if let Some((e, _)) = locals.get(*li)
                && model.selects(&p.scope, e)
                && let Some(v) = selected.get_mut(*li)
            {
                v.push(pi);
            }
        }
    }
    let mut egress_map = BTreeMap::new();
    let mut ingress_map = BTreeMap::new();
    for ((ep, iface), sel) in locals.iter().zip(&selected) {
        let (ep, iface) = (*ep, *iface);
        for d in [Direction::Egress, Direction::Ingress] {
            r.endpoint(ep, iface, d, sel);
        }
        egress_map.insert(iface.to_string(), endpoint_chain(iface, Direction::Egress));
        ingress_map.insert(iface.to_string(), endpoint_chain(iface, Direction::Ingress));
    }
    r.table.maps.insert(MAP_EGRESS.into(), egress_map);
    r.table.maps.insert(MAP_INGRESS.into(), ingress_map);
    r.sets();
    r.table
}

/// The addresses a table's rules treat as pods (for tests and tools).
pub fn addresses(model: &Model) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = model
        .endpoints
        .iter()
        .flat_map(|e| e.ips.iter().copied())
        .collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incremental::Incremental;

    fn ep(name: &str, role: &str, ip: &str, local: bool) -> Endpoint {
        Endpoint {
            namespace: "x".into(),
            name: name.into(),
            labels: [("role".to_string(), role.to_string())].into(),
            ips: vec![ip.parse().unwrap()],
            ports: Vec::new(),
            node: if local { "n" } else { "m" }.into(),
            iface: local.then(|| format!("tw{name}")),
        }
    }

    fn allow_from_clients() -> crate::model::Policy {
        let np: k8s_openapi::api::networking::v1::NetworkPolicy =
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "namespace": "x"},
                "spec": {"podSelector": {"matchLabels": {"role": "server"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                        "ports": [{"port": 80}, {"port": 443}]}]}
            }))
            .unwrap();
        crate::compile_network_policy(&np).unwrap()
    }

    #[test]
    fn a_selection_is_a_set_only_from_two_members_and_never_for_an_empty_family() {
        let server = ep("s", "server", "10.0.0.1", true);
        let c1 = ep("c1", "client", "10.0.0.2", false);
        let c2 = ep("c2", "client", "10.0.0.3", false);
        let none = Model::new(
            vec![server.clone()],
            Default::default(),
            vec![allow_from_clients()],
        );
        let one = Model::new(
            vec![server.clone(), c1.clone()],
            Default::default(),
            vec![allow_from_clients()],
        );
        let two = Model::new(
            vec![server.clone(), c1.clone(), c2.clone()],
            Default::default(),
            vec![allow_from_clients()],
        );
        let chain = policy_chain("np/x/p", Direction::Ingress);
        let rules = |t: &Table| -> Vec<String> {
            t.chains[&chain].rules.iter().map(NftRule::text).collect()
        };
        // No client: no set, no rule (it could never match).
        let t0 = render(&none, "n");
        assert!(t0.sets.is_empty(), "{:?}", t0.sets.keys());
        assert!(rules(&t0).is_empty(), "{:?}", rules(&t0));
        // One client: its address inline, one rule per port, no IPv6 rule.
        let t1 = render(&one, "n");
        assert!(t1.sets.is_empty(), "{:?}", t1.sets.keys());
        let r1 = rules(&t1);
        assert_eq!(r1.len(), 2, "{r1:?}");
        assert!(
            r1[0].contains("ip saddr 10.0.0.2 th dport 80 accept"),
            "{r1:?}"
        );
        assert!(r1[1].contains("th dport 443 accept"), "{r1:?}");
        // Two clients: one IPv4 set, none for IPv6.
        let t2 = render(&two, "n");
        let names: Vec<&String> = t2.sets.keys().collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].ends_with("-4"));
        assert_eq!(t2.sets[names[0]].elements.len(), 2);
        assert!(rules(&t2)[0].contains(&format!("ip saddr @{}", names[0])));
        // Incrementally, 1 -> 2 -> 1 -> 0 members: the set comes and goes
        // with the chain rewritten in the same script, as a full render has it.
        let mut inc = Incremental::new("n");
        let pols = [std::sync::Arc::new(allow_from_clients())];
        inc.sync(vec![server.clone(), c1.clone()], &Default::default(), &pols);
        inc.full_script();
        assert_eq!(inc.table(), &t1);
        inc.sync(
            vec![server.clone(), c1.clone(), c2],
            &Default::default(),
            &pols,
        );
        let s = inc.commit().unwrap();
        assert!(
            s.contains(&format!("add set inet twill {}", names[0])),
            "{s}"
        );
        assert!(
            s.contains(&format!("flush chain inet twill {chain}")),
            "{s}"
        );
        assert_eq!(inc.table(), &t2);
        inc.sync(vec![server.clone(), c1], &Default::default(), &pols);
        let s = inc.commit().unwrap();
        assert!(
            s.contains(&format!("delete set inet twill {}", names[0])),
            "{s}"
        );
        assert_eq!(inc.table(), &t1);
        inc.sync(vec![server], &Default::default(), &pols);
        inc.commit().unwrap();
        assert_eq!(inc.table(), &t0);
    }
}
