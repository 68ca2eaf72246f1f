//! The policy table (`inet twill`) in the kernel: applying a script,
//! checking one, reading the table back — through [`twill_nft`]
//! (libnftables in this process; the `nft` binary where the library cannot
//! be loaded, e.g. a static musl build).
//!
//! * A script is one atomic transaction, so a full replacement
//!   (`add table` + `delete table` + everything) or an incremental update
//!   ([`twill_policy::diff`]) either happens entirely or not at all. Only
//!   commands naming `inet twill` are ever sent: other tables (kube-proxy's,
//!   the distribution's firewall) are never touched.
//! * Reads list only our table: a whole-ruleset read would have to parse
//!   other tables' constructs, which are none of our business. The JSON is
//!   reduced to a [`Fingerprint`] (chains with their rule counts, sets and
//!   maps with their elements) and compared with the one of the table we
//!   meant to have; any difference is drift, repaired by a full replacement.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use twill_policy::ir::{Element, Table};

pub use twill_nft::{NftError, apply_script, check_script, delete_table};

/// What the table holds, reduced to what drift detection compares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint {
    /// Chain → number of rules.
    pub chains: BTreeMap<String, usize>,
    /// Set → elements, as text (`10.0.0.1`, `10.0.0.1 . 6 . 80`).
    pub sets: BTreeMap<String, BTreeSet<String>>,
    /// Map → interface → chain jumped to.
    pub maps: BTreeMap<String, BTreeMap<String, String>>,
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        1 => "icmp".into(),
        58 => "ipv6-icmp".into(),
        n => n.to_string(),
    }
}

fn element_text(e: &Element) -> String {
    match e {
        Element::Addr(a) => a.to_string(),
        Element::AddrProtoPort(a, p, port) => format!("{a} . {} . {port}", proto_name(*p)),
    }
}

impl Fingerprint {
    /// The fingerprint the kernel should show for a rendered table.
    pub fn of(t: &Table) -> Fingerprint {
        Fingerprint {
            chains: t
                .chains
                .iter()
                .map(|(n, c)| (n.clone(), c.rules.len()))
                .collect(),
            sets: t
                .sets
                .iter()
                .map(|(n, s)| (n.clone(), s.elements.iter().map(element_text).collect()))
                .collect(),
            maps: t.maps.clone(),
        }
    }

    /// Reads `nft -j list table inet twill` output.
    pub fn from_json(v: &Value) -> Result<Fingerprint, NftError> {
        let items = v
            .get("nftables")
            .and_then(Value::as_array)
            .ok_or_else(|| NftError::BadJson("no \"nftables\" array".into()))?;
        let mut f = Fingerprint::default();
        let scalar = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        for item in items {
            if let Some(c) = item.get("chain") {
                let name = c.get("name").map(scalar).unwrap_or_default();
                f.chains.entry(name).or_insert(0);
            } else if let Some(r) = item.get("rule") {
                let name = r.get("chain").map(scalar).unwrap_or_default();
                *f.chains.entry(name).or_insert(0) += 1;
            } else if let Some(s) = item.get("set") {
                let name = s.get("name").map(scalar).unwrap_or_default();
                let els = s
                    .get("elem")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|e| match e.get("concat").and_then(Value::as_array) {
                                Some(parts) => {
                                    parts.iter().map(scalar).collect::<Vec<_>>().join(" . ")
                                }
                                None => scalar(e),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                f.sets.insert(name, els);
            } else if let Some(m) = item.get("map") {
                let name = m.get("name").map(scalar).unwrap_or_default();
                let mut els = BTreeMap::new();
                for e in m
                    .get("elem")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(pair) = e.as_array()
                        && let (Some(k), Some(t)) = (
                            pair.first().and_then(Value::as_str),
                            pair.get(1)
                                .and_then(|v| v.pointer("/jump/target"))
                                .and_then(Value::as_str),
                        )
                    {
                        els.insert(k.to_string(), t.to_string());
                    }
                }
                f.maps.insert(name, els);
            }
        }
        Ok(f)
    }

    /// Human-readable differences (empty when equal).
    pub fn differences(&self, kernel: &Fingerprint) -> Vec<String> {
        let mut d = Vec::new();
        for (n, c) in &self.chains {
            match kernel.chains.get(n) {
                None => d.push(format!("chain {n} is missing")),
                Some(k) if k != c => d.push(format!("chain {n} has {k} rules, not {c}")),
                _ => {}
            }
        }
        for n in kernel.chains.keys() {
            if !self.chains.contains_key(n) {
                d.push(format!("chain {n} should not exist"));
            }
        }
        for (n, s) in &self.sets {
            match kernel.sets.get(n) {
                None => d.push(format!("set {n} is missing")),
                Some(k) if k != s => d.push(format!(
                    "set {n} has {} elements that differ ({} expected)",
                    k.symmetric_difference(s).count(),
                    s.len()
                )),
                _ => {}
            }
        }
        for n in kernel.sets.keys() {
            if !self.sets.contains_key(n) {
                d.push(format!("set {n} should not exist"));
            }
        }
        for (n, m) in &self.maps {
            if kernel.maps.get(n) != Some(m) {
                d.push(format!("map {n} differs"));
            }
        }
        d
    }
}

/// Reads our table back; None when it does not exist.
pub fn read_table() -> Result<Option<Fingerprint>, NftError> {
    let v = twill_nft::list_table_json("inet", "twill")?;
    v.as_ref().map(Fingerprint::from_json).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use twill_policy::ir::{Chain, NamedSet, NftRule, SetKind, Verdict};

    fn table() -> Table {
        let mut t = Table::default();
        t.sets.insert(
            "port-http-4".into(),
            NamedSet {
                kind: SetKind::AddrProtoPort(twill_policy::ir::Fam::V4),
                elements: BTreeSet::from([Element::AddrProtoPort(
                    "10.0.0.1".parse().unwrap(),
                    6,
                    8080,
                )]),
                comment: String::new(),
            },
        );
        t.sets.insert(
            "sel-1-4".into(),
            NamedSet {
                kind: SetKind::Addr(twill_policy::ir::Fam::V4),
                elements: BTreeSet::from([Element::Addr("10.0.0.2".parse().unwrap())]),
                comment: String::new(),
            },
        );
        t.chains.insert(
            "ep-in-twa".into(),
            Chain {
                hook: None,
                rules: vec![NftRule::new(Vec::new(), Verdict::Accept)],
            },
        );
        t.maps.insert(
            "endpoint-ingress".into(),
            BTreeMap::from([("twa".to_string(), "ep-in-twa".to_string())]),
        );
        t
    }

    /// What `nft -j list table inet twill` prints for [`table`] (nft 1.0.6).
    fn kernel_json() -> Value {
        serde_json::json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "twill", "handle": 1}},
            {"set": {"family": "inet", "name": "port-http-4", "table": "twill",
                "type": ["ipv4_addr", "inet_proto", "inet_service"],
                "elem": [{"concat": ["10.0.0.1", "tcp", 8080]}]}},
            {"set": {"family": "inet", "name": "sel-1-4", "table": "twill", "type": "ipv4_addr",
                "elem": ["10.0.0.2"]}},
            {"map": {"family": "inet", "name": "endpoint-ingress", "table": "twill", "type": "ifname",
                "map": "verdict", "elem": [["twa", {"jump": {"target": "ep-in-twa"}}]]}},
            {"chain": {"family": "inet", "table": "twill", "name": "ep-in-twa", "handle": 2}},
            {"rule": {"family": "inet", "table": "twill", "chain": "ep-in-twa", "handle": 3,
                "expr": [{"accept": null}]}}
        ]})
    }

    #[test]
    fn the_kernel_listing_matches_the_rendered_table() {
        let want = Fingerprint::of(&table());
        let got = Fingerprint::from_json(&kernel_json()).unwrap();
        assert_eq!(want.differences(&got), Vec::<String>::new());
    }

    #[test]
    fn drift_is_named() {
        let want = Fingerprint::of(&table());
        let mut j = kernel_json();
        let items = j["nftables"].as_array_mut().unwrap();
        items.pop(); // a rule flushed
        items[3]["set"]["elem"] = serde_json::json!([]); // an element gone
        items[4]["map"]["elem"] = serde_json::json!([]); // dispatch gone
        let got = Fingerprint::from_json(&j).unwrap();
        assert_eq!(
            want.differences(&got),
            [
                "chain ep-in-twa has 0 rules, not 1",
                "set sel-1-4 has 1 elements that differ (1 expected)",
                "map endpoint-ingress differs"
            ]
        );
    }
}
