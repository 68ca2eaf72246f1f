//! What the node tells the datastore about itself: its Node object (in the
//! embedded store there is no kubelet to register it) and a periodic
//! NodeStatus report ([`report`]), which `twillctl node status` and
//! `twillctl ipam check` read from anywhere.

pub mod report;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use twill_api::resources::nodestatus::MAX_LISTED_ROUTES;
use twill_api::resources::{NodeStatus, NodeStatusReport, NodeStatusSpec, RouteStatus};
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

/// The routes a report lists and how many of each kind there are: the
/// node's own routes (local, blackhole) before learned ones, each group in
/// destination order, at most [`MAX_LISTED_ROUTES`].
pub fn listed_routes(mut all: Vec<RouteStatus>) -> (Vec<RouteStatus>, BTreeMap<String, u64>) {
    let mut counts = BTreeMap::new();
    for r in &all {
        *counts.entry(r.kind.clone()).or_insert(0) += 1;
    }
    all.sort_by_key(|r| (r.kind == "bgp", r.destination.clone()));
    all.truncate(MAX_LISTED_ROUTES);
    (all, counts)
}

/// Writes the node's report (creating its NodeStatus object if needed).
/// `cached` is the object as last written: with it the write is one
/// request (the status update); it is read again only after a conflict or
/// when it is gone.
pub async fn write_report(
    store: &Store,
    name: &str,
    interval_secs: u32,
    report: NodeStatusReport,
    cached: &mut Option<NodeStatus>,
) -> Result<(), StoreError> {
    for _ in 0..5 {
        let current = match cached.take() {
            Some(o) => Some(o),
            None => store.get::<NodeStatus>(None, name).await?,
        };
        let mut obj = match current {
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
            Ok(stored) => {
                *cached = Some(stored);
                return Ok(());
            }
            Err(e) if e.is_conflict() || e.is_not_found() => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: String, kind: &str) -> RouteStatus {
        RouteStatus {
            destination: dst,
            kind: kind.into(),
            via: Vec::new(),
        }
    }

    #[test]
    fn a_large_table_is_counted_in_full_and_listed_own_routes_first() {
        let mut all: Vec<RouteStatus> = (0..20_000)
            .map(|i| route(format!("10.{}.{}.0/26", i / 256, i % 256), "bgp"))
            .collect();
        all.push(route("10.244.7.0/26".into(), "blackhole"));
        all.extend((0..3).map(|i| route(format!("10.244.7.{i}/32"), "local")));
        let (listed, counts) = listed_routes(all);
        assert_eq!(listed.len(), MAX_LISTED_ROUTES);
        assert_eq!(counts["bgp"], 20_000);
        assert_eq!(counts["blackhole"], 1);
        assert_eq!(counts["local"], 3);
        assert!(
            listed[..4].iter().all(|r| r.kind != "bgp"),
            "{:?}",
            &listed[..4]
        );
        assert!(listed[4..].iter().all(|r| r.kind == "bgp"));
    }

    #[test]
    fn a_small_table_is_listed_whole() {
        let all = vec![
            route("10.0.0.0/26".into(), "bgp"),
            route("10.0.1.0/26".into(), "blackhole"),
        ];
        let (listed, counts) = listed_routes(all);
        assert_eq!(listed.len(), 2);
        assert_eq!(counts.values().sum::<u64>(), 2);
    }
}
