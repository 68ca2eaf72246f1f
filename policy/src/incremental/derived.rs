//! Derived parts: policy chains and the selection and named-port sets
//! they refer to, reference-counted by the endpoint chains that use them,
//! and the endpoint chains of dirty local endpoints rendered at commit.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{ChainKey, DIRS, Incremental, PolChain, Rendered, SelRef};
use crate::ir::{Fam, MAP_EGRESS, MAP_INGRESS};
use crate::model::{Direction, PodSel, Policy, evaluation_order};
use crate::render::{
    endpoint_chain, endpoint_chains, named_port_sets, policy_chain, policy_chain_rules, port_set,
    sel_form, selection_sets,
};

impl Incremental {
    /// Addresses of every endpoint in a selection.
    fn members(&self, sel: &PodSel) -> BTreeSet<IpAddr> {
        self.endpoints
            .values()
            .filter(|e| self.selects(sel, e))
            .flat_map(|e| e.ips.iter().copied())
            .collect()
    }

    pub(super) fn render_policy_chain(&mut self, ck: &ChainKey, p: &Policy) {
        // Selections not referenced yet: members found once, kept for ref_sel.
        let mut fresh: BTreeMap<PodSel, BTreeSet<IpAddr>> = BTreeMap::new();
        let me = &*self;
        let (chain, sels, ports) = policy_chain_rules(p, ck.1, &mut |sel, fam| {
            if let Some(r) = me.sel_refs.get(sel) {
                return sel_form(sel, fam, &r.members);
            }
            let m = fresh.entry(sel.clone()).or_insert_with(|| me.members(sel));
            sel_form(sel, fam, m)
        });
        for s in &sels {
            let m = fresh.remove(s);
            self.ref_sel(s, m);
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

    /// One more user of a selection (`members`: its members, if known).
    fn ref_sel(&mut self, sel: &PodSel, members: Option<BTreeSet<IpAddr>>) {
        if let Some(r) = self.sel_refs.get_mut(sel) {
            r.users += 1;
            return;
        }
        let members = members.unwrap_or_else(|| self.members(sel));
        for (name, set) in selection_sets(sel, &members) {
            self.put_set(name, Some(set));
        }
        self.sel_refs
            .insert(sel.clone(), SelRef { users: 1, members });
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
            for (name, _) in selection_sets(sel, &r.members) {
                self.put_set(name, None);
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
    pub(super) fn finish(&mut self) {
        // Policy chains naming a selection whose form changed.
        let reformed = std::mem::take(&mut self.reformed);
        if !reformed.is_empty() {
            let cks: Vec<ChainKey> = self
                .pol_chains
                .iter()
                .filter(|(_, pc)| pc.sels.iter().any(|s| reformed.contains(s)))
                .map(|(ck, _)| ck.clone())
                .collect();
            for ck in cks {
                if let Some(p) = self.policies.get(&ck.0).cloned() {
                    self.render_policy_chain(&ck, &p);
                }
            }
        }
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
