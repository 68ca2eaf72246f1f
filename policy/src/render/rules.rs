//! A policy's rules as nft rules: each model rule expands, per address
//! family, into the alternatives nft can match (one nft rule each), naming
//! the selections and named-port sets it refers to; the policy's chain is
//! those rules with the rule's action as verdict.
//!
//! A selection appears as its [`SelForm`] in each family, which the caller
//! decides from its members; a short list of ports or networks is split
//! (positive: one rule per entry; negated: one atom per entry) instead of
//! becoming an anonymous set, which costs the kernel as much as a named one.

use std::collections::BTreeSet;

use ipnetwork::IpNetwork;

use super::{SelForm, port_set};
use crate::ir::{AddrTarget, Atom, Chain, Fam, NftRule, PASS_MARK, Side, Verdict};
use crate::model::{Action, Direction, Entity, Peer, PodSel, PortSpec, Rule, proto};

/// Lists of ports or networks up to this long are split rather than
/// written as an anonymous set.
pub(crate) const SPLIT_MAX: usize = 4;

/// The form of a selection in a family (see [`super::sel_form`]).
pub(crate) type Forms<'a> = dyn FnMut(&PodSel, Fam) -> SelForm + 'a;

/// Expands model rules into nft atoms, collecting the selections and named
/// ports the atoms depend on.
struct Expander<'f, 'a> {
    sel_sets: BTreeSet<PodSel>,
    port_sets: BTreeSet<String>,
    forms: &'f mut Forms<'a>,
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

/// Address atoms for a list of networks: negated, one per network while
/// the list is short (all must hold), else one atom.
fn negated_nets(fam: Fam, side: Side, nets: Vec<IpNetwork>) -> Vec<Atom> {
    let addr = |target| Atom::Addr {
        fam,
        side,
        neg: true,
        target,
    };
    if nets.len() <= SPLIT_MAX {
        nets.into_iter()
            .map(|n| addr(AddrTarget::Nets(vec![n])))
            .collect()
    } else {
        vec![addr(AddrTarget::Nets(nets))]
    }
}

impl Expander<'_, '_> {
    /// What a selection's addresses are matched against in `fam`; None
    /// when it has no member there.
    fn sel_target(&mut self, sel: &PodSel, fam: Fam) -> Option<AddrTarget> {
        self.sel_sets.insert(sel.clone());
        match (self.forms)(sel, fam) {
            SelForm::Empty => None,
            SelForm::One(ip) => Some(AddrTarget::Nets(vec![IpNetwork::from(ip)])),
            SelForm::Set(name) => Some(AddrTarget::Set(name)),
        }
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
                        // No member in this family: this peer matches nothing.
                        if let Some(target) = self.sel_target(sel, fam) {
                            peer_alts.push(vec![addr(false, target)]);
                        }
                    }
                    Peer::Block { net, except } => {
                        *specific = true;
                        if Fam::of(net.ip()) != fam {
                            continue;
                        }
                        let mut v = vec![addr(false, AddrTarget::Nets(vec![*net]))];
                        v.extend(negated_nets(fam, side, fam_nets(except, fam)));
                        peer_alts.push(v);
                    }
                }
            }
            if peer_alts.is_empty() {
                return None;
            }
            alts = product(alts, peer_alts);
        }
        if !e.nets.is_empty() {
            *specific = true;
            let n = fam_nets(&e.nets, fam);
            if n.is_empty() {
                return None;
            }
            let net_alts = if n.len() <= SPLIT_MAX {
                n.into_iter()
                    .map(|n| vec![addr(false, AddrTarget::Nets(vec![n]))])
                    .collect()
            } else {
                vec![vec![addr(false, AddrTarget::Nets(n))]]
            };
            alts = product(alts, net_alts);
        }
        if !e.not_nets.is_empty() {
            *specific = true;
        }
        let mut fixed = negated_nets(fam, side, fam_nets(&e.not_nets, fam));
        if let Some(sel) = &e.not_pods {
            *specific = true;
            // No member in this family: the negation always holds.
            if let Some(target) = self.sel_target(sel, fam) {
                fixed.push(addr(true, target));
            }
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

    /// Atoms for a port list on one side (its numeric ranges one atom each
    /// while they are at most [`SPLIT_MAX`], else one atom; then one per
    /// named port), each negated when `neg`.
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
        if ranges.len() <= SPLIT_MAX {
            for r in ranges {
                out.push(Atom::Port {
                    side,
                    neg,
                    ranges: vec![r],
                });
            }
        } else {
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
/// with the selections and named ports its rules depend on; `forms` says
/// how each selection appears in each family.
pub(crate) fn policy_chain_rules(
    p: &crate::model::Policy,
    d: Direction,
    forms: &mut Forms<'_>,
) -> (Chain, BTreeSet<PodSel>, BTreeSet<String>) {
    let mut x = Expander {
        sel_sets: BTreeSet::new(),
        port_sets: BTreeSet::new(),
        forms,
    };
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
