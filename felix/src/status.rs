//! What the node tells the datastore about itself: its Node object (in the
//! embedded store there is no kubelet to register it) and a periodic
//! NodeStatus report, which `twillctl node status` and `twillctl ipam check`
//! read from anywhere.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use twill_api::resources::{NodeStatus, NodeStatusReport, NodeStatusSpec};
use twill_api::{Store, StoreError};

/// Creates the Node object if it does not exist (labels applied only on creation).
pub async fn register_node(
    store: &Store,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Result<bool, StoreError> {
    if store.get::<Node>(None, name).await?.is_some() {
        return Ok(false);
    }
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: (!labels.is_empty()).then(|| labels.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    match store.create(&node).await {
        Ok(_) => Ok(true),
        Err(e) if e.is_already_exists() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes the node's report (creating its NodeStatus object if needed).
pub async fn write_report(
    store: &Store,
    name: &str,
    interval_secs: u32,
    report: NodeStatusReport,
) -> Result<(), StoreError> {
    for _ in 0..5 {
        let mut obj = match store.get::<NodeStatus>(None, name).await? {
            Some(o) => o,
            None => match store
                .create(&NodeStatus::new(
                    name,
                    NodeStatusSpec {
                        report_interval: Some(interval_secs),
                    },
                ))
                .await
            {
                Ok(o) => o,
                Err(e) if e.is_already_exists() => continue,
                Err(e) => return Err(e),
            },
        };
        obj.status = Some(report.clone());
        match store.update_status(&obj).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
