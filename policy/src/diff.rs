//! The incremental update from one rendered table to the next, as one nft
//! script (one transaction): new sets and chains are declared first, set
//! and map elements are added and removed one by one, only chains whose
//! rules changed are flushed and refilled, and objects nothing refers to any
//! more are deleted last. A pod coming or going therefore costs a few set
//! elements and its own two chains, not a reload.

use std::fmt::Write as _;

use crate::ir::{TABLE, Table, elements_text, fit_comment, map_elements_text, set_type};

/// What an update does, for logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiffStats {
    pub elements_added: usize,
    pub elements_removed: usize,
    pub chains_written: usize,
    pub chains_deleted: usize,
    pub sets_added: usize,
    pub sets_deleted: usize,
}

impl DiffStats {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        *self == DiffStats::default()
    }
}

/// The script that turns `old` (what the kernel has) into `new`, or None
/// when they are equal. Base chains are never changed in place: if theirs
/// differ the caller must replace the whole table.
pub fn diff(old: &Table, new: &Table) -> Option<(String, DiffStats)> {
    let mut s = String::new();
    let mut st = DiffStats::default();
    let base_changed = old
        .chains
        .iter()
        .filter(|(_, c)| c.hook.is_some())
        .any(|(n, c)| new.chains.get(n) != Some(c))
        || new
            .chains
            .iter()
            .any(|(n, c)| c.hook.is_some() && !old.chains.contains_key(n));
    if base_changed {
        return Some((
            new.script(),
            DiffStats {
                chains_written: new.chains.len(),
                ..Default::default()
            },
        ));
    }
    // 1. new sets, new chains (empty), new maps.
    for (name, set) in &new.sets {
        match old.sets.get(name) {
            Some(o) if o.kind == set.kind => {}
            Some(_) => return Some((new.script(), DiffStats::default())),
            None => {
                st.sets_added += 1;
                let _ = writeln!(
                    s,
                    "add set {TABLE} {name} {{ {} comment \"{}\"; }}",
                    set_type(set.kind),
                    fit_comment(&set.comment)
                );
            }
        }
    }
    for (name, c) in &new.chains {
        if c.hook.is_none() && !old.chains.contains_key(name) {
            let _ = writeln!(s, "add chain {TABLE} {name}");
        }
    }
    for name in new.maps.keys() {
        if !old.maps.contains_key(name) {
            let _ = writeln!(s, "add map {TABLE} {name} {{ type ifname : verdict; }}");
        }
    }
    // 2. elements added.
    for (name, set) in &new.sets {
        let added: Vec<_> = match old.sets.get(name) {
            Some(o) => set.elements.difference(&o.elements).collect(),
            None => set.elements.iter().collect(),
        };
        st.elements_added += added.len();
        if let Some(e) = elements_text(added) {
            let _ = writeln!(s, "add element {TABLE} {name} {e}");
        }
    }
    // 3. chains whose rules changed: flush and refill (new ones: fill).
    for (name, c) in &new.chains {
        if c.hook.is_some() {
            continue;
        }
        match old.chains.get(name) {
            Some(o) if o.rules == c.rules => continue,
            Some(_) => {
                let _ = writeln!(s, "flush chain {TABLE} {name}");
            }
            None => {}
        }
        st.chains_written += 1;
        for r in &c.rules {
            let _ = writeln!(s, "add rule {TABLE} {name} {}", r.text());
        }
    }
    // 4. map elements: changed ones go and come back.
    for (name, m) in &new.maps {
        let empty = Default::default();
        let o = old.maps.get(name).unwrap_or(&empty);
        let gone: Vec<&String> = o
            .iter()
            .filter(|(k, v)| m.get(*k) != Some(*v))
            .map(|(k, _)| k)
            .collect();
        if !gone.is_empty() {
            let keys: Vec<String> = gone.iter().map(|k| format!("\"{k}\"")).collect();
            let _ = writeln!(s, "delete element {TABLE} {name} {{ {} }}", keys.join(", "));
        }
        let added: Vec<(&String, &String)> =
            m.iter().filter(|(k, v)| o.get(*k) != Some(*v)).collect();
        st.elements_added += added.len();
        st.elements_removed += gone.len();
        if let Some(e) = map_elements_text(added) {
            let _ = writeln!(s, "add element {TABLE} {name} {e}");
        }
    }
    for (name, m) in &old.maps {
        if !new.maps.contains_key(name) {
            if let Some(e) = map_elements_text(m.iter()) {
                let _ = writeln!(s, "delete element {TABLE} {name} {e}");
            }
            let _ = writeln!(s, "delete map {TABLE} {name}");
        }
    }
    // 5. elements removed.
    for (name, set) in &new.sets {
        if let Some(o) = old.sets.get(name) {
            let gone: Vec<_> = o.elements.difference(&set.elements).collect();
            st.elements_removed += gone.len();
            if let Some(e) = elements_text(gone) {
                let _ = writeln!(s, "delete element {TABLE} {name} {e}");
            }
        }
    }
    // 6. chains that are gone: flush all first (they may jump to each other), then delete.
    let gone: Vec<&String> = old
        .chains
        .iter()
        .filter(|(n, c)| c.hook.is_none() && !new.chains.contains_key(*n))
        .map(|(n, _)| n)
        .collect();
    for n in &gone {
        let _ = writeln!(s, "flush chain {TABLE} {n}");
    }
    for n in &gone {
        st.chains_deleted += 1;
        let _ = writeln!(s, "delete chain {TABLE} {n}");
    }
    // 7. sets that are gone.
    for name in old.sets.keys() {
        if !new.sets.contains_key(name) {
            st.sets_deleted += 1;
            let _ = writeln!(s, "delete set {TABLE} {name}");
        }
    }
    if s.is_empty() { None } else { Some((s, st)) }
}
