//! Announcements follow the IPAM blocks, the pools, the BGPConfigurations,
//! and the Services and EndpointSlices; what to announce is
//! [`crate::calc::bgp::originate`]. Service prefixes go out over the same
//! sessions as blocks, through the same per-peer export filters.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use twill_api::resources::{BGPConfiguration, IPAMBlock, IPPool};
use twill_bgpd::speaker::Speaker;
use twill_bgpd::types::{Origin, PathAttrs};

use super::{BgpConfig, SharedReport};
use crate::calc::bgp::originate::{advertisements, exported, from_blocks, from_services};
use crate::watch::{Cache, follow};

/// Originates owned blocks and borrowed /32s (/128s), following the IPAM
/// blocks, and the Service prefixes this node announces (kept in `report`
/// for NodeStatus `servicePrefixes`). IPv6 prefixes need `next_hop6`: without one they are not
/// announced (an IPv4 next hop is no way to reach them).
pub(super) async fn follow_origination(
    cfg: BgpConfig,
    speaker: Arc<Speaker>,
    next_hop: IpAddr,
    next_hop6: Option<Ipv6Addr>,
    report: SharedReport,
) {
    let store = cfg.store.clone();
    let mut originated: BTreeSet<IpNetwork> = BTreeSet::new();
    // The follower turns every block change into the set of prefixes this
    // node should announce, and wakes the loop only when that set changes:
    // a pod ADD or DEL that only touches allocations costs nothing here.
    let (tx, mut rx) = tokio::sync::watch::channel(None::<BTreeSet<IpNetwork>>);
    let node = cfg.node.clone();
    tokio::spawn(follow::<IPAMBlock>(store.clone(), move |blocks| {
        let want = from_blocks(&blocks, &node);
        tx.send_if_modified(|cur| {
            if cur.as_ref() == Some(&want) {
                false
            } else {
                *cur = Some(want);
                true
            }
        });
    }));
    // Pools (disableBGPExport) and communities come from their watches'
    // caches; a change to either wakes the loop like a block change.
    let (poke, mut poked) = tokio::sync::watch::channel(());
    let pools = Cache::<IPPool>::follow(&store, poke.clone());
    let configs = Cache::<BGPConfiguration>::follow(&store, poke.clone());
    // Services and EndpointSlices: until their first listing there are no
    // Service prefixes, and blocks are announced meanwhile (a failing
    // Service watch must not hold back the pod network).
    let services = Cache::<Service>::follow(&store, poke.clone());
    let slices = Cache::<EndpointSlice>::follow(&store, poke);
    loop {
        let wanted = rx.borrow_and_update().clone();
        poked.borrow_and_update();
        if let (Some(want), Some(pools), Some(configs)) = (wanted, pools.get(), configs.get()) {
            let adv = advertisements(&cfg.node, &configs).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "BGPConfiguration prefixAdvertisements ignored");
                Default::default()
            });
            let svc = from_services(
                &cfg.node,
                &services.get().unwrap_or_default(),
                &slices.get().unwrap_or_default(),
                &configs,
            );
            let mut want = want;
            want.extend(svc.keys().copied());
            let want = exported(want, &pools, next_hop6.is_some());
            let announced: Vec<String> = svc
                .keys()
                .filter(|p| want.contains(p))
                .map(ToString::to_string)
                .collect();
            if let Ok(mut r) = report.lock() {
                r.service_prefixes = announced;
            }
            for p in originated.difference(&want) {
                tracing::info!(prefix = %p, "withdrawing");
                speaker.withdraw(*p);
            }
            for p in want.difference(&originated) {
                tracing::info!(prefix = %p, "announcing");
                let mut attrs: PathAttrs = adv.attrs_for(p);
                attrs.origin = Origin::Igp;
                attrs.next_hop = Some(match (p, next_hop6) {
                    (IpNetwork::V6(_), Some(a)) => IpAddr::V6(a),
                    _ => next_hop,
                });
                speaker.originate(*p, attrs);
            }
            originated = want;
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            r = poked.changed() => if r.is_err() { return },
        }
    }
}
