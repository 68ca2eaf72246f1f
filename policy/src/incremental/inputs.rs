//! Inputs changing: a policy or an endpoint set or removed updates who
//! selects whom, marks the local endpoints whose chains must be rendered
//! again, and brings set elements in line with the endpoints' addresses; a
//! namespace label change rebuilds everything.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use super::{DIRS, EpKey, Incremental, Local};
use crate::ir::{Element, Fam};
use crate::model::{Endpoint, Labels, NAMESPACE_NAME_LABEL, Policy};
use crate::render::{SelForm, base_table, local_iface, port_set, sel_form, selection_set_of};

impl Incremental {
    pub(super) fn set_policy(&mut self, id: &str, new: Option<Arc<Policy>>) {
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

    pub(super) fn set_endpoint(&mut self, key: EpKey, new: Option<Endpoint>) {
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
        let mut sels = std::mem::take(&mut self.sel_refs);
        for (sel, r) in sels.iter_mut() {
            for ip in ips {
                let want = self.by_ip.get(ip).is_some_and(|ks| {
                    ks.iter()
                        .filter_map(|k| self.endpoints.get(k))
                        .any(|e| self.selects(sel, e))
                });
                if want == r.members.contains(ip) {
                    continue;
                }
                let fam = Fam::of(*ip);
                let before = sel_form(sel, fam, &r.members);
                if want {
                    r.members.insert(*ip);
                } else {
                    r.members.remove(ip);
                }
                let after = sel_form(sel, fam, &r.members);
                match (&before, &after) {
                    (SelForm::Set(name), SelForm::Set(_)) => {
                        if let Some(s) = self.set_mut(name) {
                            let el = Element::Addr(*ip);
                            if want {
                                s.elements.insert(el);
                            } else {
                                s.elements.remove(&el);
                            }
                        }
                    }
                    _ => {
                        if let SelForm::Set(name) = before {
                            self.put_set(name, None);
                        }
                        if let Some((name, set)) = selection_set_of(sel, fam, &r.members) {
                            self.put_set(name, Some(set));
                        }
                        self.reformed.insert(sel.clone());
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
    pub(super) fn rebuild(&mut self) {
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
        self.reformed.clear();
        for (k, e) in std::mem::take(&mut self.endpoints) {
            self.set_endpoint(k, Some(e));
        }
    }
}
