//! The table's per-endpoint chains and per-selection and per-port sets,
//! built one at a time so that [`crate::incremental`] can build exactly the
//! parts a change touches, the same way a full [`crate::render()`] does.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{SelForm, endpoint_chain, endpoint_prefix, policy_chain, port_set, sel_form};
use crate::ir::{
    Atom, Chain, Element, Fam, NamedSet, NftRule, PASS_MARK, SetKind, Verdict, fit_name,
};
use crate::model::{Direction, Endpoint, PodSel, Tier};

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

/// The sets of a selection with these members: one per family in which it
/// has the [`SelForm::Set`] form (two members or more).
pub(crate) fn selection_sets(sel: &PodSel, members: &BTreeSet<IpAddr>) -> Vec<(String, NamedSet)> {
    [Fam::V4, Fam::V6]
        .into_iter()
        .filter_map(|fam| selection_set_of(sel, fam, members))
        .collect()
}

/// The set of a selection in one family, if its form there is a set.
pub(crate) fn selection_set_of(
    sel: &PodSel,
    fam: Fam,
    members: &BTreeSet<IpAddr>,
) -> Option<(String, NamedSet)> {
    let SelForm::Set(name) = sel_form(sel, fam, members) else {
        return None;
    };
    Some((
        name,
        NamedSet {
            kind: SetKind::Addr(fam),
            elements: members
                .iter()
                .filter(|a| Fam::of(**a) == fam)
                .map(|a| Element::Addr(*a))
                .collect(),
            comment: sel.to_string(),
        },
    ))
}

/// The two sets (IPv4, IPv6) of a named port: address . protocol . port
/// of every endpoint with a port of that name.
pub(crate) fn named_port_sets<'a>(
    name: &str,
    endpoints: impl IntoIterator<Item = &'a Endpoint>,
) -> [(String, NamedSet); 2] {
    let mut els: BTreeMap<Fam, BTreeSet<Element>> = BTreeMap::new();
    for e in endpoints {
        for p in e.ports.iter().filter(|p| p.name == name) {
            for ip in &e.ips {
                els.entry(Fam::of(*ip))
                    .or_default()
                    .insert(Element::AddrProtoPort(*ip, p.proto, p.port));
            }
        }
    }
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
