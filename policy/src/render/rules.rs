//! A policy's rules as nft rules: each model rule expands, per address
//! family, into the alternatives nft can match (one nft rule each), naming
//! the selection and named-port sets it refers to; the policy's chain is
//! those rules with the rule's action as verdict.

use std::collections::BTreeSet;

use super::{port_set, selection_set};
use crate::ir::{AddrTarget, Atom, Chain, Fam, NftRule, PASS_MARK, Side, Verdict};
use crate::model::{Action, Direction, Entity, Peer, PodSel, PortSpec, Rule, proto};

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
        let addr = move |neg, target| Atom::Addr {
            fam,
            side,
            neg,
            target,
        };
        let mut alts: Vec<Vec<Atom>> = vec![Vec::new()];
        if !e.peers.is_empty() {
            let mut peer_alts = Vec::new();
            for p in &e.peers {
                match p {
                    Peer::Pods(sel) => {
                        *specific = true;
                        let target = self.sel_target(sel, fam);
                        peer_alts.push(vec![addr(false, target)]);
                    }
                    Peer::Block { net, except } => {
                        *specific = true;
                        if Fam::of(net.ip()) != fam {
                            continue;
                        }
                        let mut v = vec![addr(false, AddrTarget::Nets(vec![*net]))];
                        let ex = fam_nets(except, fam);
                        if !ex.is_empty() {
                            v.push(addr(true, AddrTarget::Nets(ex)));
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
            fixed.push(addr(false, AddrTarget::Nets(n)));
        }
        let nn = fam_nets(&e.not_nets, fam);
        if !e.not_nets.is_empty() {
            *specific = true;
        }
        if !nn.is_empty() {
            fixed.push(addr(true, AddrTarget::Nets(nn)));
        }
        if let Some(sel) = &e.not_pods {
            *specific = true;
            let target = self.sel_target(sel, fam);
            fixed.push(addr(true, target));
        }
        fixed.extend(self.port_atoms(&e.not_ports, side, fam, true, specific));
        alts = product(alts, vec![fixed]);
        if !e.ports.is_empty() {
            let port_alts = self
                .port_atoms(&e.ports, side, fam, false, specific)
                .into_iter()
                .map(|a| vec![a])
                .collect();
            alts = product(alts, port_alts);
        }
        Some(alts)
    }

    /// Atoms for a port list on one side (its numeric ranges as one atom,
    /// then one per named port), each negated when `neg`.
    fn port_atoms(
        &mut self,
        v: &[PortSpec],
        side: Side,
        fam: Fam,
        neg: bool,
        specific: &mut bool,
    ) -> Vec<Atom> {
        let mut out = Vec::new();
        let ranges: Vec<(u16, u16)> = v
            .iter()
            .filter_map(|p| match p {
                PortSpec::Range(a, b) => Some((*a, *b)),
                PortSpec::Named(_) => None,
            })
            .collect();
        if !ranges.is_empty() {
            out.push(Atom::Port { side, neg, ranges });
        }
        for p in v {
            if let PortSpec::Named(n) = p {
                *specific = true;
                self.port_sets.insert(n.clone());
                out.push(Atom::AddrPort {
                    fam,
                    side,
                    neg,
                    set: port_set(n, fam),
                });
            }
        }
        out
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
