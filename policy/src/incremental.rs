//! Incremental rendering: keeps a node's rendered [`Table`] together with
//! what it was rendered from, and on each change re-renders only what the
//! change touches, producing the same table as [`crate::render()`] of the
//! whole model (a property test holds it to that).
//!
//! * A policy change re-renders that policy's chains and, only when its
//!   scope, tier, order or governed directions change, the chains of the
//!   local endpoints it selects (before or after).
//! * An endpoint change updates the elements of every referenced set for
//!   its addresses and, for a local endpoint, its own chains.
//! * A namespace label change rebuilds everything (rare, and it can move
//!   every selection).
//!
//! Touched chains, sets and map entries remember their value at the last
//! [`Incremental::commit`]; the commit diffs just those ([`crate::diff`]),
//! so the nft script of a one-policy change is O(that policy and the
//! endpoints it selects), not O(table). Endpoints are identified by
//! namespace, name and interface.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::cluster::{Inputs, LocalEndpoint};
use crate::ir::{Chain, Element, Fam, MAP_EGRESS, MAP_INGRESS, NamedSet, Table};
use crate::model::{
    Direction, Endpoint, Labels, NAMESPACE_NAME_LABEL, NsMatch, PodSel, Policy, evaluation_order,
};
use crate::render::{
    base_table, endpoint_chain, endpoint_chains, local_iface, named_port_sets, policy_chain,
    policy_chain_rules, port_set, selection_set, selection_sets,
};

/// Namespace, name, interface.
type EpKey = (String, String, Option<String>);
/// Policy id and direction: one policy chain.
type ChainKey = (String, Direction);

const DIRS: [Direction; 2] = [Direction::Egress, Direction::Ingress];

fn ep_key(e: &Endpoint) -> EpKey {
    (e.namespace.clone(), e.name.clone(), e.iface.clone())
}

/// Values at the last commit of everything touched since.
#[derive(Default)]
struct Before {
    chains: BTreeMap<String, Option<Chain>>,
    sets: BTreeMap<String, Option<NamedSet>>,
    maps: BTreeMap<(String, String), Option<String>>,
}

/// A local endpoint and the policies selecting it (whatever they govern).
struct Local {
    iface: String,
    selecting: BTreeSet<String>,
}

/// What a local endpoint's rendered chains are and which policy chains
/// they jump to.
struct Rendered {
    iface: String,
    chains: Vec<String>,
    refs: BTreeSet<ChainKey>,
}

/// A policy chain in the table: how many endpoint chains jump to it, and
/// the sets its rules refer to.
struct PolChain {
    users: usize,
    sels: BTreeSet<PodSel>,
    ports: BTreeSet<String>,
}

/// A referenced selection: reference count and its sets' base name.
struct SelRef {
    users: usize,
    base: String,
}

/// A node's table, kept up to date change by change.
pub struct Incremental {
    node: String,
    /// Namespace labels as given.
    namespaces: BTreeMap<String, Labels>,
    /// Labels selectors see: as given plus the name label, for every
    /// namespace given or holding an endpoint (as [`crate::Model::new`]).
    ns_labels: BTreeMap<String, Labels>,
    endpoints: BTreeMap<EpKey, Endpoint>,
    by_ip: BTreeMap<IpAddr, BTreeSet<EpKey>>,
    policies: BTreeMap<String, Arc<Policy>>,
    locals: BTreeMap<EpKey, Local>,
    /// Policy id → local endpoints its scope selects.
    users: BTreeMap<String, BTreeSet<EpKey>>,
    rendered: BTreeMap<EpKey, Rendered>,
    pol_chains: BTreeMap<ChainKey, PolChain>,
    sel_refs: BTreeMap<PodSel, SelRef>,
    port_refs: BTreeMap<String, usize>,
    /// Local endpoints whose chains must be rendered again.
    dirty: BTreeSet<EpKey>,
    table: Table,
    before: Before,
    /// Set when everything was rebuilt: the table to diff against instead.
    full_from: Option<Table>,
}

impl Incremental {
    /// The table of a node with no endpoints and no policies.
    pub fn new(node: &str) -> Incremental {
        Incremental {
            node: node.to_string(),
            namespaces: BTreeMap::new(),
            ns_labels: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            by_ip: BTreeMap::new(),
            policies: BTreeMap::new(),
            locals: BTreeMap::new(),
            users: BTreeMap::new(),
            rendered: BTreeMap::new(),
            pol_chains: BTreeMap::new(),
            sel_refs: BTreeMap::new(),
            port_refs: BTreeMap::new(),
            dirty: BTreeSet::new(),
            table: base_table(),
            before: Before::default(),
            full_from: None,
        }
    }

    /// Brings the inputs to these endpoints, namespace labels and policies
    /// (what [`crate::Model::new`] takes), touching only what differs. A
    /// policy that is the same `Arc` as last time is not compared.
    pub fn sync<'a>(
        &mut self,
        endpoints: Vec<Endpoint>,
        namespaces: &BTreeMap<String, Labels>,
        policies: impl IntoIterator<Item = &'a Arc<Policy>>,
    ) {
        if *namespaces != self.namespaces {
            self.namespaces = namespaces.clone();
            self.policies = policies
                .into_iter()
                .map(|p| (p.id.clone(), p.clone()))
                .collect();
            self.endpoints = endpoints.into_iter().map(|e| (ep_key(&e), e)).collect();
            self.rebuild();
            return;
        }
        self.set_policies(policies);
        let mut pods: BTreeMap<(String, String), Vec<Endpoint>> = BTreeMap::new();
        for k in self.endpoints.keys() {
            pods.entry((k.0.clone(), k.1.clone())).or_default();
        }
        for e in endpoints {
            pods.entry((e.namespace.clone(), e.name.clone()))
                .or_default()
                .push(e);
        }
        for ((ns, name), eps) in pods {
            self.set_pod_endpoints(&ns, &name, eps);
        }
    }

    /// Brings the table up to date with twill-node's inputs and endpoint
    /// records: only the pods whose endpoints may have changed are derived
    /// again (every pod after a full listing).
    pub fn follow(&mut self, inputs: &mut Inputs, locals: &[LocalEndpoint]) {
        inputs.set_locals(locals);
        match inputs.take_changed() {
            None => self.sync(
                inputs.node_endpoints(&self.node),
                &inputs.namespaces,
                inputs.policies(),
            ),
            Some(pods) => {
                self.set_namespaces(&inputs.namespaces);
                self.set_policies(inputs.policies());
                for k in pods {
                    let eps = inputs.pod_endpoints(&k, &self.node);
                    self.set_pod_endpoints(&k.0, &k.1, eps);
                }
            }
        }
    }

    /// Sets the namespace labels; a change rebuilds everything.
    pub fn set_namespaces(&mut self, namespaces: &BTreeMap<String, Labels>) {
        if *namespaces != self.namespaces {
            self.namespaces = namespaces.clone();
            self.rebuild();
        }
    }

    /// Sets the policies. A policy that is the same `Arc` as last time is
    /// not compared.
    pub fn set_policies<'a>(&mut self, policies: impl IntoIterator<Item = &'a Arc<Policy>>) {
        let want: BTreeMap<&str, &Arc<Policy>> =
            policies.into_iter().map(|p| (p.id.as_str(), p)).collect();
        let gone: Vec<String> = self
            .policies
            .keys()
            .filter(|id| !want.contains_key(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            self.set_policy(&id, None);
        }
        for (id, p) in want {
            let same = self
                .policies
                .get(id)
                .is_some_and(|o| Arc::ptr_eq(o, p) || o == p);
            if !same {
                self.set_policy(id, Some(p.clone()));
            }
        }
    }

    /// Sets the endpoints of one pod (namespace, name): none, one, or one
    /// per interface; every endpoint given must carry that namespace and name.
    pub fn set_pod_endpoints(&mut self, ns: &str, name: &str, endpoints: Vec<Endpoint>) {
        let want: BTreeMap<EpKey, Endpoint> =
            endpoints.into_iter().map(|e| (ep_key(&e), e)).collect();
        let have: Vec<EpKey> = self
            .endpoints
            .range((ns.to_string(), name.to_string(), None)..)
            .take_while(|(k, _)| k.0 == ns && k.1 == name)
            .map(|(k, _)| k.clone())
            .collect();
        for k in have {
            if !want.contains_key(&k) {
                self.set_endpoint(k, None);
            }
        }
        for (k, e) in want {
            if self.endpoints.get(&k) != Some(&e) {
                self.set_endpoint(k, Some(e));
            }
        }
    }

    /// The table as of the last [`Incremental::commit`] or
    /// [`Incremental::full_script`].
    pub fn table(&self) -> &Table {
        &self.table
    }

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

    fn ns_matches(&self, m: &NsMatch, ns: &str) -> bool {
        match m {
            NsMatch::Any => true,
            NsMatch::Exact(n) => n == ns,
            // No namespace (as [`crate::Model::ns_matches`]).
            NsMatch::Selector(_) if ns.is_empty() => false,
            NsMatch::Selector(s) => match self.ns_labels.get(ns) {
                Some(l) => s.matches(l),
                None => s.matches(&Labels::new()),
            },
        }
    }

    fn selects(&self, sel: &PodSel, ep: &Endpoint) -> bool {
        self.ns_matches(&sel.ns, &ep.namespace) && sel.pods.matches(&ep.labels)
    }

    // Table edits, remembering the value at the last commit.

    fn put_chain(&mut self, name: String, chain: Option<Chain>) {
        let old = match chain {
            Some(c) => self.table.chains.insert(name.clone(), c),
            None => self.table.chains.remove(&name),
        };
        if self.full_from.is_none() {
            self.before.chains.entry(name).or_insert(old);
        }
    }

    fn put_set(&mut self, name: String, set: Option<NamedSet>) {
        let old = match set {
            Some(s) => self.table.sets.insert(name.clone(), s),
            None => self.table.sets.remove(&name),
        };
        if self.full_from.is_none() {
            self.before.sets.entry(name).or_insert(old);
        }
    }

    fn set_mut(&mut self, name: &str) -> Option<&mut NamedSet> {
        if self.full_from.is_none() && !self.before.sets.contains_key(name) {
            self.before
                .sets
                .insert(name.to_string(), self.table.sets.get(name).cloned());
        }
        self.table.sets.get_mut(name)
    }

    fn put_map(&mut self, map: &str, iface: &str, chain: Option<String>) {
        let m = self.table.maps.entry(map.to_string()).or_default();
        let old = match chain {
            Some(c) => m.insert(iface.to_string(), c),
            None => m.remove(iface),
        };
        if self.full_from.is_none() {
            self.before
                .maps
                .entry((map.to_string(), iface.to_string()))
                .or_insert(old);
        }
    }

    // Inputs.

    fn set_policy(&mut self, id: &str, new: Option<Arc<Policy>>) {
        let old = match new {
            Some(p) => self.policies.insert(id.to_string(), p),
            None => self.policies.remove(id),
        };
        let new = self.policies.get(id).cloned();
        let same_scope = matches!((&old, &new), (Some(o), Some(n)) if o.scope == n.scope);
        let same_shape = same_scope
            && matches!((&old, &new), (Some(o), Some(n))
                if o.tier == n.tier
                    && o.order.map(f64::to_bits) == n.order.map(f64::to_bits)
                    && o.ingress.is_some() == n.ingress.is_some()
                    && o.egress.is_some() == n.egress.is_some());
        if !same_scope {
            let old_users = self.users.remove(id).unwrap_or_default();
            for k in &old_users {
                if let Some(l) = self.locals.get_mut(k) {
                    l.selecting.remove(id);
                }
            }
            let mut new_users = BTreeSet::new();
            if let Some(n) = &new {
                for k in self.locals.keys() {
                    if let Some(e) = self.endpoints.get(k)
                        && self.selects(&n.scope, e)
                    {
                        new_users.insert(k.clone());
                    }
                }
            }
            for k in &new_users {
                if let Some(l) = self.locals.get_mut(k) {
                    l.selecting.insert(id.to_string());
                }
            }
            self.dirty.extend(old_users);
            self.dirty.extend(new_users.iter().cloned());
            if !new_users.is_empty() {
                self.users.insert(id.to_string(), new_users);
            }
        } else if !same_shape && let Some(u) = self.users.get(id) {
            self.dirty.extend(u.iter().cloned());
        }
        // Chains in the table get the new rules now; chains no endpoint
        // jumps to any more go when the endpoints' chains are rendered.
        let Some(new) = new else { return };
        for d in DIRS {
            let ck = (id.to_string(), d);
            let changed = old.as_ref().map(|o| o.rules(d)) != Some(new.rules(d));
            if self.pol_chains.contains_key(&ck) && new.rules(d).is_some() && changed {
                self.render_policy_chain(&ck, &new);
            }
        }
    }

    fn set_endpoint(&mut self, key: EpKey, new: Option<Endpoint>) {
        let old = match &new {
            Some(e) => self.endpoints.insert(key.clone(), e.clone()),
            None => self.endpoints.remove(&key),
        };
        for ip in old.iter().flat_map(|e| e.ips.iter()) {
            if let Some(s) = self.by_ip.get_mut(ip) {
                s.remove(&key);
                if s.is_empty() {
                    self.by_ip.remove(ip);
                }
            }
        }
        if let Some(n) = &new {
            for ip in &n.ips {
                self.by_ip.entry(*ip).or_default().insert(key.clone());
            }
            if !self.ns_labels.contains_key(&n.namespace) {
                self.ns_labels.insert(
                    n.namespace.clone(),
                    Labels::from([(NAMESPACE_NAME_LABEL.to_string(), n.namespace.clone())]),
                );
            }
        }
        let ips: BTreeSet<IpAddr> = old
            .iter()
            .chain(new.iter())
            .flat_map(|e| e.ips.iter().copied())
            .collect();
        self.refresh_addresses(&ips);
        let mut touched = false;
        if let Some(l) = self.locals.remove(&key) {
            touched = true;
            for id in &l.selecting {
                if let Some(u) = self.users.get_mut(id) {
                    u.remove(&key);
                    if u.is_empty() {
                        self.users.remove(id);
                    }
                }
            }
        }
        if let Some(n) = &new
            && let Some(iface) = local_iface(n, &self.node)
        {
            touched = true;
            let selecting: BTreeSet<String> = self
                .policies
                .iter()
                .filter(|(_, p)| self.selects(&p.scope, n))
                .map(|(id, _)| id.clone())
                .collect();
            for id in &selecting {
                self.users
                    .entry(id.clone())
                    .or_default()
                    .insert(key.clone());
            }
            self.locals.insert(
                key.clone(),
                Local {
                    iface: iface.to_string(),
                    selecting,
                },
            );
        }
        if touched {
            self.dirty.insert(key);
        }
    }

    /// Brings the elements of every referenced set for these addresses in
    /// line with the endpoints holding them now.
    fn refresh_addresses(&mut self, ips: &BTreeSet<IpAddr>) {
        if ips.is_empty() {
            return;
        }
        let sels = std::mem::take(&mut self.sel_refs);
        for (sel, r) in &sels {
            for ip in ips {
                let want = self.by_ip.get(ip).is_some_and(|ks| {
                    ks.iter()
                        .filter_map(|k| self.endpoints.get(k))
                        .any(|e| self.selects(sel, e))
                });
                let name = format!("{}-{}", r.base, Fam::of(*ip).digit());
                let el = Element::Addr(*ip);
                let has = self
                    .table
                    .sets
                    .get(&name)
                    .is_some_and(|s| s.elements.contains(&el));
                if want != has
                    && let Some(s) = self.set_mut(&name)
                {
                    if want {
                        s.elements.insert(el);
                    } else {
                        s.elements.remove(&el);
                    }
                }
            }
        }
        self.sel_refs = sels;
        let ports: Vec<String> = self.port_refs.keys().cloned().collect();
        for port in &ports {
            for ip in ips {
                let mut want = BTreeSet::new();
                for e in self
                    .by_ip
                    .get(ip)
                    .into_iter()
                    .flatten()
                    .filter_map(|k| self.endpoints.get(k))
                {
                    for p in e.ports.iter().filter(|p| p.name == *port) {
                        want.insert(Element::AddrProtoPort(*ip, p.proto, p.port));
                    }
                }
                let name = port_set(port, Fam::of(*ip));
                let range = Element::AddrProtoPort(*ip, 0, 0)
                    ..=Element::AddrProtoPort(*ip, u8::MAX, u16::MAX);
                let has: BTreeSet<Element> = self
                    .table
                    .sets
                    .get(&name)
                    .map(|s| s.elements.range(range.clone()).copied().collect())
                    .unwrap_or_default();
                if want != has
                    && let Some(s) = self.set_mut(&name)
                {
                    for e in &has {
                        s.elements.remove(e);
                    }
                    s.elements.extend(want);
                }
            }
        }
    }

    /// Renders everything again from the inputs; the next commit diffs the
    /// whole table.
    fn rebuild(&mut self) {
        let mut old = std::mem::replace(&mut self.table, base_table());
        let before = std::mem::take(&mut self.before);
        if self.full_from.is_none() {
            // What the last commit left: the current table with every
            // touched object back at its value then.
            for (n, c) in before.chains {
                match c {
                    Some(c) => old.chains.insert(n, c),
                    None => old.chains.remove(&n),
                };
            }
            for (n, v) in before.sets {
                match v {
                    Some(v) => old.sets.insert(n, v),
                    None => old.sets.remove(&n),
                };
            }
            for ((m, i), c) in before.maps {
                let m = old.maps.entry(m).or_default();
                match c {
                    Some(c) => m.insert(i, c),
                    None => m.remove(&i),
                };
            }
            self.full_from = Some(old);
        }
        self.ns_labels = self
            .namespaces
            .iter()
            .map(|(n, l)| {
                let mut l = l.clone();
                l.insert(NAMESPACE_NAME_LABEL.to_string(), n.clone());
                (n.clone(), l)
            })
            .collect();
        self.by_ip.clear();
        self.locals.clear();
        self.users.clear();
        self.rendered.clear();
        self.pol_chains.clear();
        self.sel_refs.clear();
        self.port_refs.clear();
        self.dirty.clear();
        for (k, e) in std::mem::take(&mut self.endpoints) {
            self.set_endpoint(k, Some(e));
        }
    }

    // Derived parts.

    fn render_policy_chain(&mut self, ck: &ChainKey, p: &Policy) {
        let (chain, sels, ports) = policy_chain_rules(p, ck.1);
        for s in &sels {
            self.ref_sel(s);
        }
        for n in &ports {
            self.ref_port(n);
        }
        let old = self.pol_chains.insert(
            ck.clone(),
            PolChain {
                users: 0,
                sels,
                ports,
            },
        );
        if let Some(o) = old {
            if let Some(pc) = self.pol_chains.get_mut(ck) {
                pc.users = o.users;
            }
            for s in &o.sels {
                self.unref_sel(s);
            }
            for n in &o.ports {
                self.unref_port(n);
            }
        }
        self.put_chain(policy_chain(&p.id, ck.1), Some(chain));
    }

    fn ref_chain(&mut self, ck: &ChainKey) {
        if let Some(pc) = self.pol_chains.get_mut(ck) {
            pc.users += 1;
            return;
        }
        let Some(p) = self.policies.get(&ck.0).cloned() else {
            return;
        };
        self.render_policy_chain(ck, &p);
        if let Some(pc) = self.pol_chains.get_mut(ck) {
            pc.users = 1;
        }
    }

    fn unref_chain(&mut self, ck: &ChainKey) {
        let Some(pc) = self.pol_chains.get_mut(ck) else {
            return;
        };
        pc.users = pc.users.saturating_sub(1);
        if pc.users > 0 {
            return;
        }
        if let Some(pc) = self.pol_chains.remove(ck) {
            for s in &pc.sels {
                self.unref_sel(s);
            }
            for n in &pc.ports {
                self.unref_port(n);
            }
        }
        self.put_chain(policy_chain(&ck.0, ck.1), None);
    }

    fn ref_sel(&mut self, sel: &PodSel) {
        if let Some(r) = self.sel_refs.get_mut(sel) {
            r.users += 1;
            return;
        }
        let members: BTreeSet<IpAddr> = self
            .endpoints
            .values()
            .filter(|e| self.selects(sel, e))
            .flat_map(|e| e.ips.iter().copied())
            .collect();
        for (name, set) in selection_sets(sel, &members) {
            self.put_set(name, Some(set));
        }
        self.sel_refs.insert(
            sel.clone(),
            SelRef {
                users: 1,
                base: selection_set(sel),
            },
        );
    }

    fn unref_sel(&mut self, sel: &PodSel) {
        let Some(r) = self.sel_refs.get_mut(sel) else {
            return;
        };
        r.users -= 1;
        if r.users > 0 {
            return;
        }
        if let Some(r) = self.sel_refs.remove(sel) {
            for fam in [Fam::V4, Fam::V6] {
                self.put_set(format!("{}-{}", r.base, fam.digit()), None);
            }
        }
    }

    fn ref_port(&mut self, name: &str) {
        if let Some(n) = self.port_refs.get_mut(name) {
            *n += 1;
            return;
        }
        for (n, set) in named_port_sets(name, self.endpoints.values()) {
            self.put_set(n, Some(set));
        }
        self.port_refs.insert(name.to_string(), 1);
    }

    fn unref_port(&mut self, name: &str) {
        let Some(n) = self.port_refs.get_mut(name) else {
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        self.port_refs.remove(name);
        for fam in [Fam::V4, Fam::V6] {
            self.put_set(port_set(name, fam), None);
        }
    }

    /// Renders the chains of every dirty local endpoint. All of them are
    /// rendered before anything old is removed, so an interface that moved
    /// from one endpoint to another keeps its chains.
    fn finish(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        if dirty.is_empty() {
            return;
        }
        let mut olds = Vec::new();
        let mut news = Vec::new();
        for key in dirty {
            if let Some(o) = self.rendered.remove(&key) {
                olds.push(o);
            }
            let (Some(l), Some(ep)) = (self.locals.get(&key), self.endpoints.get(&key)) else {
                continue;
            };
            let mut pols: Vec<&Policy> = l
                .selecting
                .iter()
                .filter_map(|id| self.policies.get(id).map(|p| &**p))
                .collect();
            pols.sort_by(|a, b| evaluation_order(a, b));
            let id = ep.id();
            let mut chains = Vec::new();
            let mut refs = BTreeSet::new();
            for d in DIRS {
                let governing: Vec<&Policy> = pols
                    .iter()
                    .copied()
                    .filter(|p| p.rules(d).is_some())
                    .collect();
                for p in &governing {
                    refs.insert((p.id.clone(), d));
                }
                chains.extend(endpoint_chains(&id, &l.iface, d, &governing));
            }
            news.push((key, l.iface.clone(), chains, refs));
        }
        for (_, _, _, refs) in &news {
            for ck in refs {
                self.ref_chain(ck);
            }
        }
        let new_names: BTreeSet<&String> = news
            .iter()
            .flat_map(|n| n.2.iter().map(|(c, _)| c))
            .collect();
        let new_ifaces: BTreeSet<&String> = news.iter().map(|n| &n.1).collect();
        let mut drop_chains = Vec::new();
        let mut drop_ifaces = Vec::new();
        for o in &olds {
            drop_chains.extend(o.chains.iter().filter(|c| !new_names.contains(c)).cloned());
            if !new_ifaces.contains(&o.iface) {
                drop_ifaces.push(o.iface.clone());
            }
        }
        for c in drop_chains {
            self.put_chain(c, None);
        }
        for i in drop_ifaces {
            self.put_map(MAP_EGRESS, &i, None);
            self.put_map(MAP_INGRESS, &i, None);
        }
        for (key, iface, chains, refs) in news {
            let names: Vec<String> = chains.iter().map(|(n, _)| n.clone()).collect();
            for (n, c) in chains {
                if self.table.chains.get(&n) != Some(&c) {
                    self.put_chain(n, Some(c));
                }
            }
            for (map, d) in [
                (MAP_EGRESS, Direction::Egress),
                (MAP_INGRESS, Direction::Ingress),
            ] {
                let chain = endpoint_chain(&iface, d);
                if self.table.maps.get(map).and_then(|m| m.get(&iface)) != Some(&chain) {
                    self.put_map(map, &iface, Some(chain));
                }
            }
            self.rendered.insert(
                key,
                Rendered {
                    iface,
                    chains: names,
                    refs,
                },
            );
        }
        for o in olds {
            for ck in &o.refs {
                self.unref_chain(ck);
            }
        }
    }
}
