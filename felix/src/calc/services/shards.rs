//! The Services spread over [`SHARDS`] tables, each Service's objects (its
//! [`Part`]) rendered once and kept for as long as the Service and its
//! EndpointSlices stay the same ([`Renderer`]): a change costs the
//! Services it touches, not all of them. Two [`Tables`] share the parts
//! that did not change, so their difference ([`Tables::diff_ops`]) is found
//! by pointer, and it touches only the tables of the Services that changed
//! — which matters to the kernel, because a commit that adds a jump makes
//! nf_tables re-check every jump of the table it touches (docs/service-proxy.md).
//!
//! A Service lives in the table `twill-svc-<fnv(namespace/name) mod 8>`;
//! each table is complete on its own (its own hooks, maps and helper
//! chains). Two Services claiming the same frontend (an externalIP both
//! list) in one table: the first by name wins, as a Go map's order decides
//! it for kube-proxy.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use twill_api::service::service_key;
use twill_api::service_proxy::{
    ServicePortProxy, namespace_name, service_ports, slices_by_service,
};

use super::{
    Fingerprint, LEGACY_TABLE_NAME, MAPS, Op, SHARDS, StaleUdp, SvcTable, stale_udp, table_name,
};

/// The table a Service's objects live in.
pub fn shard_of(service: &str) -> usize {
    (twill_policy::ir::fnv(service) % SHARDS as u64) as usize
}

/// One Service: what the node does with its ports, and the table objects
/// that do it (its chains, affinity sets and map elements; none of the
/// fixed part).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub model: Vec<ServicePortProxy>,
    pub objects: SvcTable,
}

impl Part {
    pub fn new(model: Vec<ServicePortProxy>) -> Part {
        let mut objects = SvcTable::default();
        for p in &model {
            objects.add_port(p);
        }
        Part { model, objects }
    }
}

/// One map's keys to delete and elements to add.
type ElementChanges = (Vec<String>, Vec<(String, String)>);

/// One table's Services, and who claims each of its map elements.
#[derive(Clone, Debug, Default)]
pub struct Shard {
    parts: BTreeMap<String, Arc<Part>>,
    /// Service ports in `parts`.
    ports: usize,
    /// (map, key) → Service → verdict; the first Service's is the kernel's.
    claims: BTreeMap<(String, String), BTreeMap<String, String>>,
}

impl Shard {
    fn set(&mut self, service: &str, part: Option<Arc<Part>>) {
        if let Some(old) = self.parts.remove(service) {
            self.ports -= old.model.len();
            for (map, elems) in &old.objects.maps {
                for key in elems.keys() {
                    let k = (map.clone(), key.clone());
                    if let Some(c) = self.claims.get_mut(&k) {
                        c.remove(service);
                        if c.is_empty() {
                            self.claims.remove(&k);
                        }
                    }
                }
            }
        }
        if let Some(p) = part {
            for (map, elems) in &p.objects.maps {
                for (key, verdict) in elems {
                    self.claims
                        .entry((map.clone(), key.clone()))
                        .or_default()
                        .insert(service.to_string(), verdict.clone());
                }
            }
            self.ports += p.model.len();
            self.parts.insert(service.to_string(), p);
        }
    }

    fn element(&self, map: &str, key: &str) -> Option<&String> {
        self.claims
            .get(&(map.to_string(), key.to_string()))?
            .values()
            .next()
    }

    /// The shard as one flat table.
    pub fn table(&self) -> SvcTable {
        let mut t = SvcTable::empty();
        for p in self.parts.values() {
            t.chains
                .extend(p.objects.chains.iter().map(|(k, v)| (k.clone(), v.clone())));
            t.sets
                .extend(p.objects.sets.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        for ((map, key), c) in &self.claims {
            if let Some(v) = c.values().next() {
                t.maps
                    .entry(map.clone())
                    .or_default()
                    .insert(key.clone(), v.clone());
            }
        }
        t
    }

    /// What a listing of this shard's table should show (the same as
    /// `self.table().fingerprint()`, without building the table).
    pub fn fingerprint(&self) -> Fingerprint {
        let mut f = SvcTable::empty().fingerprint();
        for p in self.parts.values() {
            for (n, c) in &p.objects.chains {
                f.chains.insert(n.clone(), c.rules.len());
            }
            f.sets.extend(p.objects.sets.keys().cloned());
        }
        for ((map, key), c) in &self.claims {
            if let Some(v) = c.values().next() {
                f.maps
                    .entry(map.clone())
                    .or_default()
                    .insert(format!("{key} : {v}"));
            }
        }
        f
    }

    /// The Services whose parts differ between `old` and `self`.
    fn changed<'a>(&'a self, old: &'a Shard) -> Vec<(&'a str, Option<&'a Part>, Option<&'a Part>)> {
        let mut out = Vec::new();
        for (k, p) in &self.parts {
            match old.parts.get(k) {
                Some(o) if Arc::ptr_eq(o, p) || o == p => {}
                o => out.push((k.as_str(), o.map(|o| &**o), Some(&**p))),
            }
        }
        for (k, o) in &old.parts {
            if !self.parts.contains_key(k) {
                out.push((k.as_str(), Some(&**o), None));
            }
        }
        out
    }

    /// The steps that take this shard's table from `old` to `self`, in the
    /// order of [`SvcTable::diff_ops`]: nothing is deleted while something
    /// still refers to it.
    pub fn diff_ops(&self, old: &Shard) -> Vec<Op> {
        let empty = SvcTable::default();
        let (mut add_chains, mut add_sets, mut rules) = (Vec::new(), Vec::new(), Vec::new());
        let (mut dead_chains, mut dead_sets) = (Vec::new(), Vec::new());
        let mut touched: BTreeSet<(&str, &str)> = BTreeSet::new();
        for (_, a, b) in self.changed(old) {
            let a = a.map_or(&empty, |p| &p.objects);
            let b = b.map_or(&empty, |p| &p.objects);
            for (name, c) in &b.chains {
                match a.chains.get(name) {
                    Some(o) if o.rules == c.rules => continue,
                    Some(_) => rules.push(Op::FlushChain(name.clone())),
                    None => add_chains.push(Op::AddChain {
                        name: name.clone(),
                        hook: c.hook.clone(),
                    }),
                }
                rules.extend(c.rules.iter().map(|r| Op::AddRule {
                    chain: name.clone(),
                    rule: r.clone(),
                }));
            }
            for (name, decl) in &b.sets {
                if a.sets.get(name) != Some(decl) {
                    add_sets.push(Op::AddSet {
                        name: name.clone(),
                        decl: decl.clone(),
                    });
                }
            }
            dead_chains.extend(a.chains.keys().filter(|n| !b.chains.contains_key(*n)));
            dead_sets.extend(a.sets.keys().filter(|n| !b.sets.contains_key(*n)));
            for t in [a, b] {
                for (map, elems) in &t.maps {
                    touched.extend(elems.keys().map(|k| (map.as_str(), k.as_str())));
                }
            }
        }
        let mut ops = add_chains;
        ops.append(&mut add_sets);
        ops.append(&mut rules);
        let mut by_map: BTreeMap<&str, ElementChanges> = BTreeMap::new();
        for (map, key) in touched {
            let (was, now) = (old.element(map, key), self.element(map, key));
            if was == now {
                continue;
            }
            let e = by_map.entry(map).or_default();
            if was.is_some() {
                e.0.push(key.to_string());
            }
            if let Some(v) = now {
                e.1.push((key.to_string(), v.clone()));
            }
        }
        for (map, _) in MAPS {
            let Some((gone, new)) = by_map.remove(map) else {
                continue;
            };
            if !gone.is_empty() {
                ops.push(Op::DelElements {
                    map: map.into(),
                    keys: gone,
                });
            }
            if !new.is_empty() {
                ops.push(Op::AddElements {
                    map: map.into(),
                    elems: new,
                });
            }
        }
        ops.extend(dead_chains.iter().map(|n| Op::FlushChain((*n).clone())));
        ops.extend(dead_chains.into_iter().map(|n| Op::DelChain(n.clone())));
        ops.extend(dead_sets.into_iter().map(|n| Op::DelSet(n.clone())));
        ops
    }
}

/// Every Service's part, over [`SHARDS`] tables.
#[derive(Clone, Debug)]
pub struct Tables {
    shards: Vec<Arc<Shard>>,
}

impl Default for Tables {
    fn default() -> Tables {
        Tables {
            shards: (0..SHARDS).map(|_| Arc::default()).collect(),
        }
    }
}

/// Steps per table (`twill-svc-N`), in one transaction when applied.
pub type TableOps = Vec<(String, Vec<Op>)>;

impl Tables {
    /// Puts (or with None, removes) a Service's part.
    pub fn set(&mut self, service: &str, part: Option<Arc<Part>>) {
        let part = part.filter(|p| !p.model.is_empty());
        let shard = &mut self.shards[shard_of(service)];
        if part.is_none() && !shard.parts.contains_key(service) {
            return;
        }
        Arc::make_mut(shard).set(service, part);
    }

    /// The tables for a whole model (tests, benchmarks: the agent renders
    /// through a [`Renderer`]).
    pub fn from_model(model: &[ServicePortProxy]) -> Tables {
        let mut by: BTreeMap<&str, Vec<ServicePortProxy>> = BTreeMap::new();
        for p in model {
            by.entry(&p.service).or_default().push(p.clone());
        }
        let mut t = Tables::default();
        for (s, m) in by {
            t.set(s, Some(Arc::new(Part::new(m))));
        }
        t
    }

    /// Each table's name and contents as one flat table.
    pub fn tables(&self) -> impl Iterator<Item = (String, SvcTable)> + '_ {
        self.shards
            .iter()
            .enumerate()
            .map(|(i, s)| (table_name(i), s.table()))
    }

    /// The script that replaces all the tables (and the one table earlier
    /// versions wrote) with these, in one transaction.
    pub fn full_script(&self) -> String {
        let mut s =
            format!("add table inet {LEGACY_TABLE_NAME}\ndelete table inet {LEGACY_TABLE_NAME}\n");
        for (name, t) in self.tables() {
            s.push_str(&t.full_script(&name));
        }
        s
    }

    /// The steps that take the kernel from `old` to `self`, per table;
    /// tables without a change are left out.
    pub fn diff_ops(&self, old: &Tables) -> TableOps {
        let mut out = Vec::new();
        for (i, (new, was)) in self.shards.iter().zip(&old.shards).enumerate() {
            if Arc::ptr_eq(new, was) {
                continue;
            }
            let ops = new.diff_ops(was);
            if !ops.is_empty() {
                out.push((table_name(i), ops));
            }
        }
        out
    }

    /// What a listing of each table should show.
    pub fn fingerprints(&self) -> Vec<(String, Fingerprint)> {
        self.shards
            .iter()
            .enumerate()
            .map(|(i, s)| (table_name(i), s.fingerprint()))
            .collect()
    }

    /// How many Service ports (per port and family) the tables implement.
    pub fn ports(&self) -> usize {
        self.shards.iter().map(|s| s.ports).sum()
    }

    /// Every Service port the tables implement, Service by Service.
    pub fn model(&self) -> impl Iterator<Item = &ServicePortProxy> + '_ {
        self.shards
            .iter()
            .flat_map(|s| s.parts.values())
            .flat_map(|p| p.model.iter())
    }

    /// The UDP flows `old` sent where `self` no longer does
    /// ([`stale_udp`]), from the Services that changed only.
    pub fn stale_udp(&self, old: &Tables) -> Vec<StaleUdp> {
        let mut out = Vec::new();
        for (new, was) in self.shards.iter().zip(&old.shards) {
            if Arc::ptr_eq(new, was) {
                continue;
            }
            for (_, a, b) in new.changed(was) {
                let a = a.map_or(&[][..], |p| &p.model[..]);
                let b = b.map_or(&[][..], |p| &p.model[..]);
                out.extend(stale_udp(a, b));
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// Renders Services into [`Tables`], keeping each Service's part for as
/// long as the Service and its EndpointSlices stay the same (same uid and
/// resourceVersion, or equal when there is none): a pass over 10,000
/// Services where one changed renders one. A pass allocates only for what
/// it renders (lookups borrow the names).
pub struct Renderer {
    node: String,
    /// Namespace → name → what the Service was last rendered from.
    memo: HashMap<String, HashMap<String, Memo>>,
    tables: Tables,
    pass: u64,
    rendered: usize,
}

struct Memo {
    service: Service,
    slices: Vec<EndpointSlice>,
    pass: u64,
}

/// The same object: the same uid and resourceVersion (what the API server
/// promises means the same content), else equal.
fn same<T: PartialEq>(a: &T, am: &ObjectMeta, b: &T, bm: &ObjectMeta) -> bool {
    let versioned = am.resource_version.is_some() && am.uid.is_some();
    if versioned && am.resource_version == bm.resource_version && am.uid == bm.uid {
        return true;
    }
    a == b
}

impl Renderer {
    pub fn new(node: &str) -> Renderer {
        Renderer {
            node: node.to_string(),
            memo: HashMap::new(),
            tables: Tables::default(),
            pass: 0,
            rendered: 0,
        }
    }

    /// How many Services the last [`Renderer::render`] rendered (the
    /// others it kept).
    pub fn rendered(&self) -> usize {
        self.rendered
    }

    /// The tables for these Services and EndpointSlices.
    pub fn render(
        &mut self,
        services: &[impl Borrow<Service>],
        slices: &[impl Borrow<EndpointSlice>],
    ) -> Tables {
        self.pass += 1;
        self.rendered = 0;
        let pass = self.pass;
        let by_service = slices_by_service(slices);
        for svc in services {
            let svc = svc.borrow();
            let (ns, name) = namespace_name(&svc.metadata);
            let mine = by_service
                .get(&(ns, name))
                .map(Vec::as_slice)
                .unwrap_or_default();
            if let Some(m) = self.memo.get_mut(ns).and_then(|n| n.get_mut(name)) {
                let unchanged = same(&m.service, &m.service.metadata, svc, &svc.metadata)
                    && m.slices.len() == mine.len()
                    && m.slices
                        .iter()
                        .zip(mine)
                        .all(|(a, b)| same(a, &a.metadata, *b, &b.metadata));
                if unchanged {
                    m.pass = pass;
                    continue;
                }
            }
            self.rendered += 1;
            let part = Part::new(service_ports(&self.node, svc, mine));
            self.tables.set(&service_key(svc), Some(Arc::new(part)));
            self.memo.entry(ns.to_string()).or_default().insert(
                name.to_string(),
                Memo {
                    service: svc.clone(),
                    slices: mine.iter().map(|s| (*s).clone()).collect(),
                    pass,
                },
            );
        }
        let mut gone = Vec::new();
        for (ns, names) in &mut self.memo {
            names.retain(|name, m| {
                let keep = m.pass == pass;
                if !keep {
                    gone.push(format!("{ns}/{name}"));
                }
                keep
            });
        }
        self.memo.retain(|_, names| !names.is_empty());
        for k in gone {
            self.tables.set(&k, None);
        }
        self.tables.clone()
    }
}
