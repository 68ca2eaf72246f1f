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
//! * one named set per distinct selection (`sel-HASH-4`/`-6`, keyed by the
//!   canonical selector text) holding its members' addresses, and one
//!   concatenated set per named port (`port-NAME-4`: address . protocol .
//!   port of every pod that has it).
//!
//! Egress allowing means `accept` in the egress base chain, after which the
//! packet still meets the ingress base chain; a drop anywhere is final.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::ir::{
    AddrTarget, Atom, Chain, Element, Fam, Hook, MAP_EGRESS, MAP_INGRESS, NamedSet, NftRule,
    PASS_MARK, SetKind, Side, Table, Verdict, fit_name, fnv,
};
use crate::model::{
    Action, Direction, Endpoint, Entity, Model, Peer, PodSel, PortSpec, Rule, Tier, proto,
};

/// Base name of a selection's sets.
pub fn selection_set(sel: &PodSel) -> String {
    format!("sel-{:016x}", fnv(&format!("{sel:?}")))
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
}

/// Expands model rules into nft atoms, collecting the selections and named
/// ports whose sets the atoms refer to.
#[derive(Default)]
struct Expander {
    sel_sets: BTreeSet<PodSel>,
    port_sets: BTreeSet<String>,
}

/// Alternatives for one part of a rule in one family: None = impossible.
type Alts = Option<Vec<Vec<Atom>>>;

fn product(a: Vec<Vec<Atom>>, b: Vec<Vec<Atom>>) -> Vec<Vec<Atom>> {
    let mut out = Vec::with_capacity(a.len() * b.len());
    for x in &a {
        for y in &b {
            let mut v = x.clone();
            v.extend(y.iter().cloned());
            out.push(v);
        }
    }
    out
}

fn fam_nets(v: &[ipnetwork::IpNetwork], fam: Fam) -> Vec<ipnetwork::IpNetwork> {
    v.iter()
        .filter(|n| Fam::of(n.ip()) == fam)
        .copied()
        .collect()
}

impl Expander {
    fn sel_target(&mut self, sel: &PodSel, fam: Fam) -> AddrTarget {
        self.sel_sets.insert(sel.clone());
        AddrTarget::Set(format!("{}-{}", selection_set(sel), fam.digit()))
    }

    /// Atoms for one entity in one family; `specific` is set when an atom
    /// depends on the family.
    fn entity(&mut self, e: &Entity, side: Side, fam: Fam, specific: &mut bool) -> Alts {
        let mut alts: Vec<Vec<Atom>> = vec![Vec::new()];
        if !e.peers.is_empty() {
            let mut peer_alts = Vec::new();
            for p in &e.peers {
                match p {
                    Peer::Pods(sel) => {
                        *specific = true;
                        let target = self.sel_target(sel, fam);
                        peer_alts.push(vec![Atom::Addr {
                            fam,
                            side,
                            neg: false,
                            target,
                        }]);
                    }
                    Peer::Block { net, except } => {
                        *specific = true;
                        if Fam::of(net.ip()) != fam {
                            continue;
                        }
                        let mut v = vec![Atom::Addr {
                            fam,
                            side,
                            neg: false,
                            target: AddrTarget::Nets(vec![*net]),
                        }];
                        let ex = fam_nets(except, fam);
                        if !ex.is_empty() {
                            v.push(Atom::Addr {
                                fam,
                                side,
                                neg: true,
                                target: AddrTarget::Nets(ex),
                            });
                        }
                        peer_alts.push(v);
                    }
                }
            }
            if peer_alts.is_empty() {
                return None;
            }
            alts = product(alts, peer_alts);
        }
        let mut fixed = Vec::new();
        if !e.nets.is_empty() {
            *specific = true;
            let n = fam_nets(&e.nets, fam);
            if n.is_empty() {
                return None;
            }
            fixed.push(Atom::Addr {
                fam,
                side,
                neg: false,
                target: AddrTarget::Nets(n),
            });
        }
        let nn = fam_nets(&e.not_nets, fam);
        if !e.not_nets.is_empty() {
            *specific = true;
        }
        if !nn.is_empty() {
            fixed.push(Atom::Addr {
                fam,
                side,
                neg: true,
                target: AddrTarget::Nets(nn),
            });
        }
        if let Some(sel) = &e.not_pods {
            *specific = true;
            let target = self.sel_target(sel, fam);
            fixed.push(Atom::Addr {
                fam,
                side,
                neg: true,
                target,
            });
        }
        let numeric = |v: &[PortSpec]| -> Vec<(u16, u16)> {
            v.iter()
                .filter_map(|p| match p {
                    PortSpec::Range(a, b) => Some((*a, *b)),
                    PortSpec::Named(_) => None,
                })
                .collect()
        };
        let nums = numeric(&e.not_ports);
        if !nums.is_empty() {
            fixed.push(Atom::Port {
                side,
                neg: true,
                ranges: nums,
            });
        }
        for p in &e.not_ports {
            if let PortSpec::Named(n) = p {
                *specific = true;
                self.port_sets.insert(n.clone());
                fixed.push(Atom::AddrPort {
                    fam,
                    side,
                    neg: true,
                    set: port_set(n, fam),
                });
            }
        }
        alts = product(alts, vec![fixed]);
        if !e.ports.is_empty() {
            let mut port_alts = Vec::new();
            let nums = numeric(&e.ports);
            if !nums.is_empty() {
                port_alts.push(vec![Atom::Port {
                    side,
                    neg: false,
                    ranges: nums,
                }]);
            }
            for p in &e.ports {
                if let PortSpec::Named(n) = p {
                    *specific = true;
                    self.port_sets.insert(n.clone());
                    port_alts.push(vec![Atom::AddrPort {
                        fam,
                        side,
                        neg: false,
                        set: port_set(n, fam),
                    }]);
                }
            }
            alts = product(alts, port_alts);
        }
        Some(alts)
    }

    fn rule_alts(&mut self, r: &Rule, fam: Fam, specific: &mut bool) -> Alts {
        let mut base = Vec::new();
        if let Some(v) = r.ip_version {
            *specific = true;
            if (v == 4) != (fam == Fam::V4) {
                return None;
            }
        }
        if let Some(p) = r.proto {
            base.push(Atom::L4Proto {
                proto: p,
                neg: false,
            });
        }
        if let Some(p) = r.not_proto {
            base.push(Atom::L4Proto {
                proto: p,
                neg: true,
            });
        }
        for (m, neg) in [(&r.icmp, false), (&r.not_icmp, true)] {
            if let Some(m) = m {
                *specific = true;
                let icmp_fam = if r.proto == Some(proto::ICMPV6) {
                    Fam::V6
                } else {
                    Fam::V4
                };
                if icmp_fam != fam {
                    return None;
                }
                base.push(Atom::Icmp {
                    fam,
                    type_: m.type_,
                    code: m.code,
                    neg,
                });
            }
        }
        let src = self.entity(&r.src, Side::Src, fam, specific)?;
        let dst = self.entity(&r.dst, Side::Dst, fam, specific)?;
        Some(product(product(vec![base], src), dst))
    }

    /// Every nft rule a model rule expands to.
    fn expand(&mut self, r: &Rule) -> Vec<Vec<Atom>> {
        let mut specific = false;
        let v4 = self.rule_alts(r, Fam::V4, &mut specific);
        let v6 = self.rule_alts(r, Fam::V6, &mut specific);
        if !specific {
            return v4.unwrap_or_default();
        }
        let mut out = Vec::new();
        for (fam, alts) in [(Fam::V4, v4), (Fam::V6, v6)] {
            for mut a in alts.unwrap_or_default() {
                a.insert(0, Atom::Family(fam));
                out.push(a);
            }
        }
        out
    }
}

/// A policy's chain for a direction (empty when it does not govern it),
/// with the selections and named ports its rules refer to.
pub(crate) fn policy_chain_rules(
    p: &crate::model::Policy,
    d: Direction,
) -> (Chain, BTreeSet<PodSel>, BTreeSet<String>) {
    let mut x = Expander::default();
    let mut rules = Vec::new();
    for r in p.rules(d).unwrap_or_default() {
        let here = format!("{} {}", p.id, r.origin);
        for atoms in x.expand(r) {
            let mut nr = NftRule::new(atoms, Verdict::Accept);
            match r.action {
                Action::Allow => {}
                Action::Deny => nr.verdict = Verdict::Drop,
                Action::Pass => {
                    nr.set_mark = Some(PASS_MARK);
                    nr.verdict = Verdict::Return;
                }
                Action::Log => {
                    // Fitted to the kernel's 127 bytes when printed.
                    nr.log = Some(format!("twill {here}"));
                    nr.verdict = Verdict::Continue;
                }
            }
            nr.comment = Some(here.clone());
            rules.push(nr);
        }
    }
    (Chain { hook: None, rules }, x.sel_sets, x.port_sets)
}

/// The chains of a local endpoint for a direction: `selecting` are the
/// policies selecting it that govern `d`, in evaluation order.
pub(crate) fn endpoint_chains(
    ep_id: &str,
    iface: &str,
    d: Direction,
    selecting: &[&crate::model::Policy],
) -> Vec<(String, Chain)> {
    let name = endpoint_chain(iface, d);
    let global: Vec<_> = selecting
        .iter()
        .filter(|p| p.tier == Tier::Global)
        .collect();
    let k8s: Vec<_> = selecting
        .iter()
        .filter(|p| p.tier == Tier::Kubernetes)
        .collect();
    let mut k8s_rules = Vec::new();
    for p in &k8s {
        k8s_rules.push(NftRule::new(
            Vec::new(),
            Verdict::Jump(policy_chain(&p.id, d)),
        ));
    }
    let mut last = NftRule::new(
        Vec::new(),
        if k8s.is_empty() {
            Verdict::Accept
        } else {
            Verdict::Drop
        },
    );
    last.comment = Some(if k8s.is_empty() {
        format!("{d}: no NetworkPolicy isolates {ep_id}")
    } else {
        format!("{d}: isolated {ep_id}, nothing allowed")
    });
    k8s_rules.push(last);
    // Pods with policy drop packets conntrack cannot place (as Calico
    // does); everything else on the node is left alone.
    let invalid = NftRule::new(vec![Atom::CtInvalid], Verdict::Drop);
    if global.is_empty() {
        if !k8s.is_empty() {
            k8s_rules.insert(0, invalid);
        }
        return vec![(
            name,
            Chain {
                hook: None,
                rules: k8s_rules,
            },
        )];
    }
    let k8s_name = fit_name(endpoint_prefix(d), iface, "-k8s");
    let mut clear = NftRule::new(Vec::new(), Verdict::Continue);
    clear.clear_mark = Some(PASS_MARK);
    let mut rules = vec![invalid, clear];
    for p in &global {
        rules.push(NftRule::new(
            Vec::new(),
            Verdict::Jump(policy_chain(&p.id, d)),
        ));
        rules.push(NftRule::new(
            vec![Atom::MarkSet(PASS_MARK)],
            Verdict::Goto(k8s_name.clone()),
        ));
    }
    let mut eot = NftRule::new(Vec::new(), Verdict::Drop);
    eot.comment = Some("end of the global tier".into());
    rules.push(eot);
    vec![
        (name, Chain { hook: None, rules }),
        (
            k8s_name,
            Chain {
                hook: None,
                rules: k8s_rules,
            },
        ),
    ]
}

/// The two sets (IPv4, IPv6) of a selection with its members' addresses.
pub(crate) fn selection_sets(sel: &PodSel, members: &BTreeSet<IpAddr>) -> [(String, NamedSet); 2] {
    [Fam::V4, Fam::V6].map(|fam| {
        (
            format!("{}-{}", selection_set(sel), fam.digit()),
            NamedSet {
                kind: SetKind::Addr(fam),
                elements: members
                    .iter()
                    .filter(|a| Fam::of(**a) == fam)
                    .map(|a| Element::Addr(*a))
                    .collect(),
                comment: sel.to_string(),
            },
        )
    })
}

/// The two sets (IPv4, IPv6) of a named port with their elements.
pub(crate) fn named_port_sets(
    name: &str,
    mut els: BTreeMap<Fam, BTreeSet<Element>>,
) -> [(String, NamedSet); 2] {
    [Fam::V4, Fam::V6].map(|fam| {
        (
            port_set(name, fam),
            NamedSet {
                kind: SetKind::AddrProtoPort(fam),
                elements: els.remove(&fam).unwrap_or_default(),
                comment: format!("pods with a port named {name}"),
            },
        )
    })
}

impl Renderer<'_> {
    fn policy_chain(&mut self, p: &crate::model::Policy, d: Direction) {
        let name = policy_chain(&p.id, d);
        if self.table.chains.contains_key(&name) {
            return;
        }
        let (chain, sels, ports) = policy_chain_rules(p, d);
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
            let members: BTreeSet<IpAddr> = self.model.members(&sel).into_iter().collect();
            self.table.sets.extend(selection_sets(&sel, &members));
        }
        for name in std::mem::take(&mut self.port_sets) {
            let mut els: BTreeMap<Fam, BTreeSet<Element>> = BTreeMap::new();
            for ep in &self.model.endpoints {
                for p in ep.ports.iter().filter(|p| p.name == name) {
                    for ip in &ep.ips {
                        els.entry(Fam::of(*ip))
                            .or_default()
                            .insert(Element::AddrProtoPort(*ip, p.proto, p.port));
                    }
                }
            }
            self.table.sets.extend(named_port_sets(&name, els));
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
