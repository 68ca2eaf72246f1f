//! Keeping [`Inputs`] up to date: full listings, one object at a time,
//! and the node's endpoint records, each noting which pods' endpoints may
//! have changed; policies are compiled once per change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use twill_api::resources::GlobalNetworkPolicy;

use super::{
    Allocation, Inputs, LocalEndpoint, Objects, PodInfo, PodKey, allocations, key, local_key,
};
use crate::model::{CompileError, Policy, compile_global_policy, compile_network_policy};

impl Inputs {
    /// Reduces objects; policies that do not compile are left out and
    /// returned with the reason.
    pub fn of(objs: &Objects) -> (Inputs, Vec<CompileError>) {
        let mut errors = Vec::new();
        let mut i = Inputs {
            namespaces: objs
                .namespaces
                .iter()
                .filter_map(|n| {
                    Some((
                        n.metadata.name.clone()?,
                        n.metadata.labels.clone().unwrap_or_default(),
                    ))
                })
                .collect(),
            ..Default::default()
        };
        i.replace_pods(objs.pods.iter().filter_map(PodInfo::of).collect());
        i.replace_blocks(
            objs.blocks
                .iter()
                .map(|b| (b.metadata.name.clone().unwrap_or_default(), allocations(b)))
                .collect(),
        );
        for np in &objs.network_policies {
            if let Err(e) = i.apply_network_policy(np) {
                errors.push(e);
            }
        }
        for g in &objs.global_policies {
            if let Err(e) = i.apply_global_policy(g) {
                errors.push(e);
            }
        }
        (i, errors)
    }

    /// Records a NetworkPolicy; one that does not compile is left out.
    pub fn apply_network_policy(&mut self, np: &NetworkPolicy) -> Result<(), CompileError> {
        let k = key(
            np.metadata.namespace.as_deref().unwrap_or_default(),
            np.metadata.name.as_deref().unwrap_or_default(),
        );
        record(&mut self.network_policies, k, compile_network_policy(np))
    }

    /// Records a GlobalNetworkPolicy; one that does not compile is left out.
    pub fn apply_global_policy(&mut self, g: &GlobalNetworkPolicy) -> Result<(), CompileError> {
        let k = g.metadata.name.clone().unwrap_or_default();
        record(&mut self.global_policies, k, compile_global_policy(g))
    }

    /// Records a pod.
    pub fn apply_pod(&mut self, key: PodKey, pod: PodInfo) {
        if self.pods.get(&key) != Some(&pod) {
            self.changed.insert(key.clone());
            self.pods.insert(key, pod);
        }
    }

    /// Forgets a pod.
    pub fn remove_pod(&mut self, key: &PodKey) {
        if self.pods.remove(key).is_some() {
            self.changed.insert(key.clone());
        }
    }

    /// Replaces every pod (a full listing).
    pub fn replace_pods(&mut self, pods: BTreeMap<PodKey, PodInfo>) {
        self.pods = pods;
        self.all_changed = true;
    }

    /// The pods.
    pub fn pods(&self) -> &BTreeMap<PodKey, PodInfo> {
        &self.pods
    }

    /// Records a block's allocations.
    pub fn apply_block(&mut self, name: &str, allocs: Vec<Allocation>) {
        self.remove_block(name);
        for a in &allocs {
            let k = key(&a.namespace, &a.pod);
            self.allocated_in
                .entry(k.clone())
                .or_default()
                .insert(name.to_string());
            self.changed.insert(k);
        }
        self.blocks.insert(name.to_string(), allocs);
    }

    /// Forgets a block.
    pub fn remove_block(&mut self, name: &str) {
        for a in self.blocks.remove(name).unwrap_or_default() {
            let k = key(&a.namespace, &a.pod);
            if let Some(b) = self.allocated_in.get_mut(&k) {
                b.remove(name);
                if b.is_empty() {
                    self.allocated_in.remove(&k);
                }
            }
            self.changed.insert(k);
        }
    }

    /// Replaces every block (a full listing).
    pub fn replace_blocks(&mut self, blocks: BTreeMap<String, Vec<Allocation>>) {
        self.allocated_in.clear();
        for (name, allocs) in &blocks {
            for a in allocs {
                self.allocated_in
                    .entry(key(&a.namespace, &a.pod))
                    .or_default()
                    .insert(name.clone());
            }
        }
        self.blocks = blocks;
        self.all_changed = true;
    }

    /// Sets the node's endpoint records (twill-node's view: with records,
    /// this node's allocations without one are not endpoints).
    pub fn set_locals(&mut self, locals: &[LocalEndpoint]) {
        let mut by_pod: BTreeMap<PodKey, Vec<LocalEndpoint>> = BTreeMap::new();
        for l in locals {
            by_pod.entry(local_key(l)).or_default().push(l.clone());
        }
        for k in self.locals.keys().chain(by_pod.keys()) {
            if self.locals.get(k) != by_pod.get(k) {
                self.changed.insert(k.clone());
            }
        }
        self.locals = by_pod;
    }

    /// The pods whose endpoints may have changed since the last call, or
    /// None when everything may have.
    pub fn take_changed(&mut self) -> Option<BTreeSet<PodKey>> {
        let changed = std::mem::take(&mut self.changed);
        if std::mem::take(&mut self.all_changed) {
            None
        } else {
            Some(changed)
        }
    }

    /// Every compiled policy.
    pub fn policies(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.network_policies
            .values()
            .chain(self.global_policies.values())
    }
}

/// Keeps a compiled policy under `key`, or drops the previous one when the
/// new version does not compile (a broken policy never keeps its old rules).
fn record<K: Ord>(
    map: &mut BTreeMap<K, Arc<Policy>>,
    key: K,
    compiled: Result<Policy, CompileError>,
) -> Result<(), CompileError> {
    match compiled {
        Ok(p) => {
            map.insert(key, Arc::new(p));
            Ok(())
        }
        Err(e) => {
            map.remove(&key);
            Err(e)
        }
    }
}
