//! When the kernel refuses a table: which policies caused it, and what the
//! pods they select get instead (fail closed).
//!
//! * [`find_refused`] narrows a refusal down to policies by bisection: the
//!   table is checked (never applied) with only some policies' chains
//!   filled, the others left empty; the checker is given as a function so
//!   this stays free of I/O (twill-node passes `nft -c -f -`).
//! * [`fail_closed`] is what such a policy becomes until it changes: the
//!   same scope and governed directions, allowing nothing. The pods it
//!   selects lose what only it would allow, so no pod is ever less
//!   isolated than its policies say; everything else is programmed as
//!   usual.

use std::collections::{BTreeMap, BTreeSet};

use crate::ir::Table;
use crate::model::{Action, Direction, Policy, Rule, Tier};
use crate::render::policy_chain;

/// The origin of the rule [`fail_closed`] puts in a global policy.
pub const NOT_PROGRAMMED: &str = "not-programmed";

/// `p` as it is enforced when the kernel refused it: it allows nothing in
/// the directions it governs. A NetworkPolicy becomes one without rules
/// (its pods are isolated; what other policies allow still adds up, so
/// they get at most what their policies allow); a GlobalNetworkPolicy
/// denies everything (no later policy can open what it would have decided).
pub fn fail_closed(p: &Policy) -> Policy {
    let rules = match p.tier {
        Tier::Kubernetes => Vec::new(),
        Tier::Global => vec![Rule::any(NOT_PROGRAMMED, Action::Deny)],
    };
    Policy {
        ingress: p.ingress.as_ref().map(|_| rules.clone()),
        egress: p.egress.as_ref().map(|_| rules),
        ..p.clone()
    }
}

/// The first line of nft's complaint that says what is wrong (nft prints
/// the offending line and carets after it).
pub fn nft_reason(stderr: &str) -> String {
    let line = stderr
        .lines()
        .find(|l| l.contains("Error:"))
        .or_else(|| stderr.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("refused");
    match line.find("Error:") {
        Some(i) => line[i + "Error:".len()..].trim().to_string(),
        None => line.trim().to_string(),
    }
}

/// `table` with the chains of every policy not in `keep` emptied.
fn with_only(table: &Table, chains: &BTreeMap<String, Vec<String>>, keep: &[&String]) -> Table {
    let keep: BTreeSet<&String> = chains
        .iter()
        .filter(|(id, _)| keep.contains(id))
        .flat_map(|(_, c)| c.iter())
        .collect();
    let mut t = table.clone();
    for c in chains.values().flatten() {
        if !keep.contains(c)
            && let Some(chain) = t.chains.get_mut(c)
        {
            chain.rules.clear();
        }
    }
    t
}

/// Which policies make the kernel refuse `table`, with nft's reason:
/// `check` is given whole-table scripts and answers Err(nft's message) when
/// the kernel refuses one. `policies` are the ids of the policies the table
/// was rendered from. Err when the refusal is not any policy's doing (the
/// table is refused with every policy chain empty, or only a combination
/// of policies is refused).
pub fn find_refused<'a>(
    table: &Table,
    policies: impl IntoIterator<Item = &'a str>,
    check: &mut dyn FnMut(&str) -> Result<(), String>,
) -> Result<BTreeMap<String, String>, String> {
    let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in policies {
        let names: Vec<String> = [Direction::Ingress, Direction::Egress]
            .into_iter()
            .map(|d| policy_chain(id, d))
            .filter(|n| table.chains.contains_key(n))
            .collect();
        if !names.is_empty() {
            chains.insert(id.to_string(), names);
        }
    }
    check(&with_only(table, &chains, &[]).script()).map_err(|e| nft_reason(&e))?;
    let ids: Vec<&String> = chains.keys().collect();
    let mut found = BTreeMap::new();
    bisect(table, &chains, &ids, check, &mut found);
    if found.is_empty() {
        // The whole table may pass now (the refusal was transient) or only
        // a combination of policies is refused.
        return match check(&table.script()) {
            Ok(()) => Ok(found),
            Err(e) => Err(nft_reason(&e)),
        };
    }
    Ok(found)
}

fn bisect(
    table: &Table,
    chains: &BTreeMap<String, Vec<String>>,
    ids: &[&String],
    check: &mut dyn FnMut(&str) -> Result<(), String>,
    found: &mut BTreeMap<String, String>,
) {
    if ids.is_empty() {
        return;
    }
    let Err(e) = check(&with_only(table, chains, ids).script()) else {
        return;
    };
    if let [one] = ids {
        found.insert((*one).clone(), nft_reason(&e));
        return;
    }
    let (a, b) = ids.split_at(ids.len() / 2);
    bisect(table, chains, a, check, found);
    bisect(table, chains, b, check, found);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::{Packet, evaluate};
    use crate::model::{Endpoint, Model, NsMatch, PodSel, proto};
    use twill_api::selector::Selector;

    fn policy(id: &str, tier: Tier) -> Policy {
        let allow = Rule::any("ingress[0]", Action::Allow);
        Policy {
            id: id.into(),
            tier,
            order: None,
            scope: PodSel {
                ns: NsMatch::Any,
                pods: Selector::parse("all()").unwrap(),
            },
            ingress: Some(vec![allow]),
            egress: None,
        }
    }

    #[test]
    fn a_fail_closed_policy_denies_what_it_governed_and_nothing_else() {
        for tier in [Tier::Global, Tier::Kubernetes] {
            let p = policy("gnp/a", tier);
            let closed = fail_closed(&p);
            assert_eq!(closed.egress, None, "egress stays ungoverned");
            let ep = Endpoint {
                namespace: "x".into(),
                name: "a".into(),
                labels: Default::default(),
                ips: vec!["10.0.0.1".parse().unwrap()],
                ports: Vec::new(),
                node: "n".into(),
                iface: None,
            };
            let pkt = Packet::l4(
                "10.0.0.2".parse().unwrap(),
                "10.0.0.1".parse().unwrap(),
                proto::TCP,
                80,
            );
            let open = Model::new(vec![ep.clone()], Default::default(), vec![p]);
            assert_eq!(
                evaluate(&open, &ep, Direction::Ingress, &pkt).verdict,
                crate::Verdict::Allow
            );
            let shut = Model::new(vec![ep.clone()], Default::default(), vec![closed]);
            assert_eq!(
                evaluate(&shut, &ep, Direction::Ingress, &pkt).verdict,
                crate::Verdict::Deny
            );
        }
    }

    #[test]
    fn bisection_names_exactly_the_refused_policies() {
        let ids: Vec<String> = (0..9).map(|i| format!("gnp/p{i}")).collect();
        let mut t = crate::render::base_table();
        for id in &ids {
            let (c, _, _) = crate::render::policy_chain_rules(
                &policy(id, Tier::Global),
                Direction::Ingress,
                &mut |_, _| crate::render::SelForm::Empty,
            );
            t.chains.insert(policy_chain(id, Direction::Ingress), c);
        }
        // A checker that refuses any script filling p3's or p7's chain, as
        // nft would a rule it cannot take.
        let bad = [
            policy_chain("gnp/p3", Direction::Ingress),
            policy_chain("gnp/p7", Direction::Ingress),
        ];
        let mut calls = 0;
        let mut check = |s: &str| -> Result<(), String> {
            calls += 1;
            for b in &bad {
                if s.contains(&format!("add rule inet twill {b} ")) {
                    return Err(format!(
                        "/dev/stdin:9:1-2: Error: {b} is bad\nadd rule\n^^^"
                    ));
                }
            }
            Ok(())
        };
        let found = find_refused(&t, ids.iter().map(String::as_str), &mut check).unwrap();
        assert_eq!(
            found.keys().cloned().collect::<Vec<_>>(),
            ["gnp/p3", "gnp/p7"]
        );
        assert_eq!(found["gnp/p3"], format!("{} is bad", bad[0]));
        assert!(calls < ids.len() * 2, "{calls} checks");
        // A refusal no policy explains is not pinned on one.
        let mut always = |_: &str| -> Result<(), String> { Err("Error: no".into()) };
        assert_eq!(
            find_refused(&t, ids.iter().map(String::as_str), &mut always),
            Err("no".to_string())
        );
    }
}
