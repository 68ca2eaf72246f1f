//! The node address on the Node object (`twill.dev/bgp-address`), where
//! the other nodes' mesh finds it.

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;
use twill_api::{Kind, Store};

use crate::calc::bgp::peers::ANN_ADDRESS;

/// Writes the node address into the Node's annotations (creating the Node
/// in the embedded store if no kubelet did). The Node is edited as JSON and
/// written back whole (compare-and-swap): a kubelet newer than this build's
/// Kubernetes types may have set fields they do not know, and a typed
/// round trip would drop them from the Node.
pub async fn publish_address(
    store: &Store,
    node: &str,
    addr: &IpNetwork,
) -> Result<(), twill_api::StoreError> {
    let key = twill_api::ObjectKey::new(None, node);
    for _ in 0..10 {
        let Some(mut n) = store.backend().get(Kind::Node, &key).await? else {
            let mut n = Node::default();
            n.metadata.name = Some(node.to_string());
            match store.create(&n).await {
                Ok(_) => continue,
                Err(e) if e.is_already_exists() => continue,
                Err(e) => return Err(e),
            }
        };
        let changed = set_annotation(&mut n, ANN_ADDRESS, &addr.to_string()).map_err(|reason| {
            twill_api::StoreError::Malformed {
                kind: Kind::Node,
                reason,
            }
        })?;
        if !changed {
            return Ok(());
        }
        Kind::Node.validate_value(&n)?;
        match store.backend().update(Kind::Node, n).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sets `metadata.annotations[key]` of a JSON object, leaving every other
/// field as it is. Returns whether anything changed.
fn set_annotation(obj: &mut serde_json::Value, key: &str, value: &str) -> Result<bool, String> {
    let meta = obj
        .get_mut("metadata")
        .and_then(serde_json::Value::as_object_mut)
        .ok_or("the object has no metadata")?;
    let ann = meta
        .entry("annotations")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    if ann.is_null() {
        *ann = serde_json::Value::Object(Default::default());
    }
    let ann = ann
        .as_object_mut()
        .ok_or("metadata.annotations is not a map")?;
    if ann.get(key).and_then(serde_json::Value::as_str) == Some(value) {
        return Ok(false);
    }
    ann.insert(key.to_string(), value.into());
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_annotation_is_set_and_every_other_field_kept() {
        let mut node = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "resourceVersion": "7", "labels": {"rack": "a"},
                "annotations": {"other": "x"}},
            "spec": {"podCIDR": "10.0.0.0/24", "aFieldFromANewerKubernetes": {"on": true}}});
        assert_eq!(
            set_annotation(&mut node, ANN_ADDRESS, "172.30.0.2/24"),
            Ok(true)
        );
        assert_eq!(
            node,
            json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "n1", "resourceVersion": "7", "labels": {"rack": "a"},
                    "annotations": {"other": "x", "twill.dev/bgp-address": "172.30.0.2/24"}},
                "spec": {"podCIDR": "10.0.0.0/24", "aFieldFromANewerKubernetes": {"on": true}}})
        );
        assert_eq!(
            set_annotation(&mut node, ANN_ADDRESS, "172.30.0.2/24"),
            Ok(false)
        );
        let mut bare = json!({"metadata": {"name": "n2", "annotations": null}});
        assert_eq!(set_annotation(&mut bare, ANN_ADDRESS, "a"), Ok(true));
        assert_eq!(bare["metadata"]["annotations"][ANN_ADDRESS], "a");
        assert!(set_annotation(&mut json!({"metadata": 1}), ANN_ADDRESS, "a").is_err());
        assert!(
            set_annotation(
                &mut json!({"metadata": {"annotations": []}}),
                ANN_ADDRESS,
                "a"
            )
            .is_err()
        );
    }
}
