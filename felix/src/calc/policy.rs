//! Datastore changes reduced to what network policy needs (pure): each
//! watch event of the five kinds policy reads updates the renderer's
//! [`Inputs`] (labels, addresses, named ports, node; policies compiled once
//! per change), never keeping objects whole. The local endpoint records
//! become [`LocalEndpoint`]s. The rendering itself is `twill_policy`'s.

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use twill_api::WatchEvent;
use twill_api::resources::{GlobalNetworkPolicy, IPAMBlock};
use twill_policy::cluster::{Inputs, LocalEndpoint, PodInfo, allocations};

use crate::calc::endpoint::EndpointRecord;

/// The kinds policy reads; nothing is applied before each has delivered
/// its first full listing.
pub const KINDS: [&str; 5] = ["pods", "namespaces", "policies", "globals", "blocks"];

/// One watch event of a kind policy reads.
// Watch events are large and short-lived; boxing them buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum Change {
    Pods(WatchEvent<Pod>),
    Namespaces(WatchEvent<Namespace>),
    Policies(WatchEvent<NetworkPolicy>),
    Globals(WatchEvent<GlobalNetworkPolicy>),
    Blocks(WatchEvent<IPAMBlock>),
}

fn obj_key<K: kube::Resource>(o: &K) -> (String, String) {
    (
        o.meta().namespace.clone().unwrap_or_default(),
        o.meta().name.clone().unwrap_or_default(),
    )
}

impl Change {
    /// Applies the change to `inputs`. Returns the kind (one of [`KINDS`])
    /// when the change was a full listing.
    pub fn apply(self, inputs: &mut Inputs) -> Option<&'static str> {
        let left_out = |e: twill_policy::model::CompileError| {
            tracing::warn!(error = %e, "policy left out: it does not compile");
        };
        let (kind, listing) = match self {
            Change::Pods(e) => {
                let listing = match e {
                    WatchEvent::Resync { items, .. } => {
                        inputs.replace_pods(items.iter().filter_map(PodInfo::of).collect());
                        true
                    }
                    WatchEvent::Applied(o) => {
                        if let Some((k, p)) = PodInfo::of(&o) {
                            inputs.apply_pod(k, p);
                        }
                        false
                    }
                    WatchEvent::Deleted(o) => {
                        inputs.remove_pod(&obj_key(&o));
                        false
                    }
                };
                ("pods", listing)
            }
            Change::Namespaces(e) => {
                let labels = |n: &Namespace| n.metadata.labels.clone().unwrap_or_default();
                let listing = match e {
                    WatchEvent::Resync { items, .. } => {
                        inputs.namespaces =
                            items.iter().map(|n| (obj_key(n).1, labels(n))).collect();
                        true
                    }
                    WatchEvent::Applied(o) => {
                        inputs.namespaces.insert(obj_key(&o).1, labels(&o));
                        false
                    }
                    WatchEvent::Deleted(o) => {
                        inputs.namespaces.remove(&obj_key(&o).1);
                        false
                    }
                };
                ("namespaces", listing)
            }
            Change::Policies(e) => {
                let listing = match e {
                    WatchEvent::Resync { items, .. } => {
                        inputs.network_policies.clear();
                        for o in &items {
                            inputs.apply_network_policy(o).unwrap_or_else(left_out);
                        }
                        true
                    }
                    WatchEvent::Applied(o) => {
                        inputs.apply_network_policy(&o).unwrap_or_else(left_out);
                        false
                    }
                    WatchEvent::Deleted(o) => {
                        inputs.network_policies.remove(&obj_key(&o));
                        false
                    }
                };
                ("policies", listing)
            }
            Change::Globals(e) => {
                let listing = match e {
                    WatchEvent::Resync { items, .. } => {
                        inputs.global_policies.clear();
                        for o in &items {
                            inputs.apply_global_policy(o).unwrap_or_else(left_out);
                        }
                        true
                    }
                    WatchEvent::Applied(o) => {
                        inputs.apply_global_policy(&o).unwrap_or_else(left_out);
                        false
                    }
                    WatchEvent::Deleted(o) => {
                        inputs.global_policies.remove(&obj_key(&o).1);
                        false
                    }
                };
                ("globals", listing)
            }
            Change::Blocks(e) => {
                let listing = match e {
                    WatchEvent::Resync { items, .. } => {
                        inputs.replace_blocks(
                            items
                                .iter()
                                .map(|b| (obj_key(b).1, allocations(b)))
                                .collect(),
                        );
                        true
                    }
                    WatchEvent::Applied(o) => {
                        inputs.apply_block(&obj_key(&o).1, allocations(&o));
                        false
                    }
                    WatchEvent::Deleted(o) => {
                        inputs.remove_block(&obj_key(&o).1);
                        false
                    }
                };
                ("blocks", listing)
            }
        };
        listing.then_some(kind)
    }
}

/// A local endpoint record as the renderer takes it.
pub fn local_endpoint(r: &EndpointRecord) -> LocalEndpoint {
    LocalEndpoint {
        namespace: r.namespace.clone(),
        pod: r.pod.clone(),
        labels: r.labels.clone(),
        ips: r.addresses.iter().map(|a| a.ip()).collect(),
        iface: r.host_ifname.clone(),
        container_id: r.container_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(name: &str, team: &str) -> Namespace {
        let mut n = Namespace::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some([("team".to_string(), team.to_string())].into());
        n
    }

    #[test]
    fn a_listing_replaces_and_an_event_edits_only_its_object() {
        let mut inputs = Inputs::default();
        let listing = Change::Namespaces(WatchEvent::Resync {
            items: vec![namespace("a", "x"), namespace("b", "y")],
            revision: "1".into(),
        });
        assert_eq!(listing.apply(&mut inputs), Some("namespaces"));
        assert_eq!(inputs.namespaces.len(), 2);
        let edit = Change::Namespaces(WatchEvent::Applied(namespace("a", "z")));
        assert_eq!(edit.apply(&mut inputs), None);
        assert_eq!(inputs.namespaces["a"]["team"], "z");
        assert_eq!(inputs.namespaces["b"]["team"], "y");
        let gone = Change::Namespaces(WatchEvent::Deleted(namespace("b", "y")));
        assert_eq!(gone.apply(&mut inputs), None);
        assert_eq!(inputs.namespaces.keys().collect::<Vec<_>>(), ["a"]);
    }
}
