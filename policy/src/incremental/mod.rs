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
//!
//! Here: the state and the public calls; how inputs change it in `inputs`,
//! the chains and sets derived from it in `derived`, the table edits and
//! the commit in `commit`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::cluster::{Inputs, LocalEndpoint};
use crate::ir::{Chain, NamedSet, Table};
use crate::model::{Direction, Endpoint, Labels, PodSel, Policy};
use crate::render::base_table;

mod commit;
mod derived;
mod inputs;

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

/// A referenced selection: reference count and members (which decide its
/// form in each family, [`crate::render::SelForm`]).
struct SelRef {
    users: usize,
    members: BTreeSet<IpAddr>,
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
    /// Selections whose form changed: the policy chains naming them are
    /// rendered again.
    reformed: BTreeSet<PodSel>,
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
            reformed: BTreeSet::new(),
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

    /// Whether an endpoint is in a selection (as [`crate::Model::selects`]).
    fn selects(&self, sel: &PodSel, ep: &Endpoint) -> bool {
        sel.ns.matches(&ep.namespace, &self.ns_labels) && sel.pods.matches(&ep.labels)
    }
}
