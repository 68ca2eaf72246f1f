//! What changed since the last commit: every table edit remembers the
//! value it replaced (the first time only), and [`Incremental::commit`]
//! diffs just those chains, sets and map entries ([`crate::diff`]).

use std::collections::BTreeMap;

use super::{Before, Incremental};
use crate::ir::{Chain, MAP_EGRESS, MAP_INGRESS, NamedSet, Table};

impl Incremental {
    /// Renders what is pending and returns the nft script that turns the
    /// table of the previous commit into the current one (None: no change).
    pub fn commit(&mut self) -> Option<String> {
        self.finish();
        let before = std::mem::take(&mut self.before);
        if let Some(old) = self.full_from.take() {
            return crate::diff::diff(&old, &self.table).map(|(s, _)| s);
        }
        let mut old = Table::default();
        let mut new = Table::default();
        for m in [MAP_EGRESS, MAP_INGRESS] {
            old.maps.insert(m.to_string(), BTreeMap::new());
            new.maps.insert(m.to_string(), BTreeMap::new());
        }
        for (name, o) in before.chains {
            if let Some(c) = self.table.chains.get(&name) {
                new.chains.insert(name.clone(), c.clone());
            }
            if let Some(c) = o {
                old.chains.insert(name, c);
            }
        }
        for (name, o) in before.sets {
            if let Some(s) = self.table.sets.get(&name) {
                new.sets.insert(name.clone(), s.clone());
            }
            if let Some(s) = o {
                old.sets.insert(name, s);
            }
        }
        for ((map, iface), o) in before.maps {
            if let Some(c) = self.table.maps.get(&map).and_then(|m| m.get(&iface)) {
                new.maps
                    .entry(map.clone())
                    .or_default()
                    .insert(iface.clone(), c.clone());
            }
            if let Some(c) = o {
                old.maps.entry(map).or_default().insert(iface, c);
            }
        }
        crate::diff::diff(&old, &new).map(|(s, _)| s)
    }

    /// Renders what is pending and returns the script that replaces the
    /// whole table (after a failure or drift); the next commit diffs
    /// against this table.
    pub fn full_script(&mut self) -> String {
        self.finish();
        self.before = Before::default();
        self.full_from = None;
        self.table.script()
    }

    // Table edits, remembering the value at the last commit.

    pub(super) fn put_chain(&mut self, name: String, chain: Option<Chain>) {
        let old = replace(&mut self.table.chains, &name, chain);
        if self.full_from.is_none() {
            self.before.chains.entry(name).or_insert(old);
        }
    }

    pub(super) fn put_set(&mut self, name: String, set: Option<NamedSet>) {
        let old = replace(&mut self.table.sets, &name, set);
        if self.full_from.is_none() {
            self.before.sets.entry(name).or_insert(old);
        }
    }

    pub(super) fn set_mut(&mut self, name: &str) -> Option<&mut NamedSet> {
        if self.full_from.is_none() && !self.before.sets.contains_key(name) {
            self.before
                .sets
                .insert(name.to_string(), self.table.sets.get(name).cloned());
        }
        self.table.sets.get_mut(name)
    }

    pub(super) fn put_map(&mut self, map: &str, iface: &str, chain: Option<String>) {
        let m = self.table.maps.entry(map.to_string()).or_default();
        let old = replace(m, iface, chain);
        if self.full_from.is_none() {
            self.before
                .maps
                .entry((map.to_string(), iface.to_string()))
                .or_insert(old);
        }
    }
}

/// Sets (`Some`) or removes (`None`) `key` in `map`; returns the value it
/// replaced.
fn replace<V>(map: &mut BTreeMap<String, V>, key: &str, value: Option<V>) -> Option<V> {
    match value {
        Some(v) => map.insert(key.to_string(), v),
        None => map.remove(key),
    }
}
