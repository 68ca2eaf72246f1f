//! The periodic NodeStatus report: what the node's endpoints, routes,
//! blocks, BGP sessions and readiness are, gathered from the managers and
//! the watches' caches, written every `--status-interval`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use twill_api::Store;
use twill_api::resources::{
    IPAMBlock, InvalidObject, NodeStatusReport, ReportCondition, RouteStatus,
};
use twill_api::store::retry::{Change, Outage};

use crate::bgp::SharedReport;
use crate::calc::routes::Target;
use crate::dataplane::endpoints::Endpoints;
use crate::dataplane::routes::RouteProgrammer;
use crate::{health, metrics};

/// What the report needs to know besides its sources.
#[derive(Clone, Debug)]
pub struct ReportConfig {
    pub node: String,
    pub store: Store,
    /// How often the report is built (and written if it changed).
    pub interval: Duration,
    /// The longest time an unchanged report goes unwritten; the object's
    /// `reportInterval`, by which readers judge a report stale.
    pub heartbeat: Duration,
}

/// The status report's view of a programmed route.
fn route_status(
    dst: &ipnetwork::IpNetwork,
    t: &Target,
    names: &BTreeMap<u32, String>,
) -> RouteStatus {
    let (kind, via) = match t {
        Target::Dev(i) => (
            "local",
            vec![names.get(i).cloned().unwrap_or_else(|| format!("#{i}"))],
        ),
        Target::Blackhole => ("blackhole", Vec::new()),
        Target::Via(h) => ("bgp", h.iter().map(ToString::to_string).collect()),
    };
    RouteStatus {
        destination: dst.to_string(),
        kind: kind.into(),
        via,
    }
}

/// What the status report says about this node's blocks, kept by the
/// block watch (the report reads it instead of listing every block).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BlockSummary {
    /// Blocks affine to this node and the allocations in them.
    pub mine: usize,
    pub used: usize,
    /// Blocks this node owns (CIDRs).
    pub owned: Vec<String>,
    /// The blocks affine to this node, whole (for the empty-block release).
    pub affine: Vec<IPAMBlock>,
}

pub fn block_summary(blocks: &[IPAMBlock], node: &str) -> BlockSummary {
    let mine = blocks
        .iter()
        .filter(|b| b.spec.affinity.as_deref() == Some(node));
    BlockSummary {
        mine: mine.clone().count(),
        used: mine.clone().map(|b| b.spec.allocations.len()).sum(),
        affine: mine.cloned().collect(),
        owned: twill_ipam::owned_blocks(blocks, node)
            .into_iter()
            .map(|b| b.to_string())
            .collect(),
    }
}

/// The periodic NodeStatus report, built every interval from the managers
/// and the watches (blocks from the block watch, readiness from the
/// watches), and written when it differs from the last one written (but
/// for its time) or when the last write is a heartbeat old. Every write
/// wakes every agent on the embedded store, so an idle node writes once a
/// heartbeat. One datastore request per write (a GET only when the cached
/// object is stale).
pub async fn report_loop(
    cfg: ReportConfig,
    endpoints: Arc<Endpoints>,
    routes: Arc<RouteProgrammer>,
    host: rtnetlink::Handle,
    bgp: SharedReport,
    blocks: tokio::sync::watch::Receiver<Option<BlockSummary>>,
) {
    let mut cached: Option<twill_api::resources::NodeStatus> = None;
    let mut written: Option<(NodeStatusReport, Instant)> = None;
    let mut outage = Outage::default();
    let changed = bgp.lock().map(|b| b.changed.clone()).unwrap_or_default();
    loop {
        // Interface names of the local endpoints, for the route listing.
        let mut names = BTreeMap::new();
        for e in endpoints.current().values() {
            if let Ok(Some(i)) =
                crate::dataplane::endpoints::link::link_index(&host, &e.host_ifname).await
            {
                names.insert(i, e.host_ifname.clone());
            }
        }
        let programmed: Vec<RouteStatus> = routes
            .programmed()
            .await
            .map(|m| m.iter().map(|(d, t)| route_status(d, t, &names)).collect())
            .unwrap_or_default();
        let (listed_routes, route_counts) = super::listed_routes(programmed);
        let eps = endpoints.current();
        metrics::global().set_endpoints(eps.len());
        let owned = match blocks.borrow().clone() {
            Some(b) => {
                metrics::global().set_ipam(b.mine, b.used);
                b.owned
            }
            None => Vec::new(),
        };
        let bgp = bgp.lock().map(|b| b.clone()).unwrap_or_default();
        // One snapshot: ready, not_ready and conditions agree.
        let readiness = health::global().snapshot();
        let ready = readiness.values().all(|c| c.ready);
        let not_ready = readiness
            .iter()
            .filter(|(_, c)| !c.ready)
            .map(|(n, c)| (n.clone(), c.reason.clone()))
            .collect();
        let conditions = readiness
            .into_iter()
            .map(|(name, c)| ReportCondition {
                name,
                ready: c.ready,
                reason: c.reason,
            })
            .collect();
        let invalid_objects = health::watches()
            .invalid()
            .into_iter()
            .map(|i| InvalidObject {
                kind: i.kind.to_string(),
                name: i.key,
                reason: i.reason,
            })
            .collect();
        let report = NodeStatusReport {
            updated: jiff::Timestamp::now().to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            ready,
            not_ready,
            address: bgp.address,
            as_number: bgp.asn,
            bgp_peers: bgp.peers,
            endpoints: eps.len() as u32,
            endpoint_handles: eps.values().map(|e| e.container_id.clone()).collect(),
            blocks: owned,
            routes: listed_routes,
            route_counts,
            conditions,
            invalid_objects,
            service_prefixes: bgp.service_prefixes,
        };
        let secs = cfg.heartbeat.max(cfg.interval).as_secs().max(1) as u32;
        let due = match &written {
            Some((last, at)) => {
                !same_but_time(last, &report) || at.elapsed() + cfg.interval / 2 >= cfg.heartbeat
            }
            None => true,
        };
        let result = if due {
            let r =
                super::write_report(&cfg.store, &cfg.node, secs, report.clone(), &mut cached).await;
            if r.is_ok() {
                written = Some((report, Instant::now()));
            }
            r
        } else {
            Ok(())
        };
        match result {
            Ok(()) => {
                if let Change::Recovered { attempts } = outage.succeeded() {
                    tracing::info!(attempts, "the node status is written again");
                }
            }
            Err(e) => {
                if outage.failed(&e.to_string()) == Change::Failing {
                    tracing::warn!(error = %e, "cannot write the node status (logged again when it works)");
                }
            }
        }
        // The next report: at the interval, or soon after the announced
        // Service prefixes change (changes within 200 ms make one write).
        tokio::select! {
            _ = tokio::time::sleep(cfg.interval) => {}
            _ = changed.notified() => {
                tokio::time::sleep(SERVICE_CHANGE_COALESCE).await;
            }
        }
    }
}

/// Whether two reports say the same but for when they were made. A
/// session's `since` is computed from its uptime at each report, so it
/// moves by milliseconds between reports of the same session; a session
/// that went down in between changes its state or `lastDownAt`.
fn same_but_time(a: &NodeStatusReport, b: &NodeStatusReport) -> bool {
    let timeless = |r: &NodeStatusReport| {
        let mut r = r.clone();
        r.updated.clear();
        for p in &mut r.bgp_peers {
            p.since.clear();
        }
        r
    };
    timeless(a) == timeless(b)
}

/// How long a report waits after a change of the announced Service
/// prefixes, so a burst of changes makes one write.
const SERVICE_CHANGE_COALESCE: std::time::Duration = std::time::Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_time_of_a_report_does_not_make_it_new() {
        let a = NodeStatusReport {
            updated: "2026-01-01T00:00:00Z".into(),
            endpoints: 1,
            ..Default::default()
        };
        let later = NodeStatusReport {
            updated: "2026-01-01T00:01:00Z".into(),
            ..a.clone()
        };
        assert!(same_but_time(&a, &later));
        // A session's `since`, recomputed from its uptime, jitters.
        let peer = |since: &str| twill_api::resources::PeerStatus {
            since: since.into(),
            state: "Established".into(),
            ..Default::default()
        };
        let a = NodeStatusReport {
            bgp_peers: vec![peer("2026-01-01T00:00:00.001Z")],
            ..a
        };
        let jitter = NodeStatusReport {
            bgp_peers: vec![peer("2026-01-01T00:00:00.003Z")],
            ..a.clone()
        };
        assert!(same_but_time(&a, &jitter));
        let more = NodeStatusReport {
            endpoints: 2,
            ..later.clone()
        };
        assert!(!same_but_time(&a, &more));
    }
}
