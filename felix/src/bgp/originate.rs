//! Announcements follow the IPAM blocks, the pools, the BGPConfigurations,
//! and the Services and EndpointSlices; what to announce is
//! [`crate::calc::bgp::originate`]. Service prefixes go out over the same
//! sessions as blocks, through the same per-peer export filters.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use ipnetwork::IpNetwork;
use twill_api::resources::{BGPConfiguration, IPAMBlock, IPPool};
use twill_bgpd::speaker::Speaker;
use twill_bgpd::types::{Origin, PathAttrs};

use super::{BgpConfig, SharedReport};
use crate::calc::bgp::originate::{advertisements, exported, from_blocks, from_services};
use crate::watch::{Cache, follow};

/// Originates owned blocks and borrowed /32s (/128s), following the IPAM
/// blocks, and the Service prefixes this node announces (kept in `report`
/// for NodeStatus `servicePrefixes`). IPv6 prefixes need an IPv6 next hop
/// (`next_hop6`, None until the session follower has chosen it): without
/// one they are not announced (an IPv4 next hop is no way to reach them);
/// when it changes they are announced again with the new one. A prefix
/// whose attributes change (next hop, communities) is announced again;
/// others are left alone.
pub(super) async fn follow_origination(
    cfg: BgpConfig,
    speaker: Arc<Speaker>,
    next_hop: IpAddr,
    mut next_hop6: tokio::sync::watch::Receiver<Option<Option<Ipv6Addr>>>,
    report: SharedReport,
) {
    let store = cfg.store.clone();
    let mut originated: BTreeMap<IpNetwork, PathAttrs> = BTreeMap::new();
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
    let mut feed = cfg.services.clone();
    tokio::spawn(async move {
        while feed.changed().await {
            poke.send_replace(());
        }
    });
    loop {
        let wanted = rx.borrow_and_update().clone();
        poked.borrow_and_update();
        let nh6 = *next_hop6.borrow_and_update();
        if let (Some(want), Some(pools), Some(configs), Some(nh6)) =
            (wanted, pools.get(), configs.get(), nh6)
        {
            let adv = advertisements(&cfg.node, &configs).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "BGPConfiguration prefixAdvertisements ignored");
                Default::default()
            });
            let svc = from_services(
                &cfg.node,
                &cfg.services.services().unwrap_or_default(),
                &cfg.services.slices().unwrap_or_default(),
                &configs,
            );
            let mut want = want;
            want.extend(svc.keys().copied());
            let want = exported(want, &pools, nh6.is_some());
            let announced: Vec<String> = svc
                .keys()
                .filter(|p| want.contains(p))
                .map(ToString::to_string)
                .collect();
            if let Ok(mut r) = report.lock() {
                r.service_prefixes = announced;
            }
            let want: BTreeMap<IpNetwork, PathAttrs> = want
                .into_iter()
                .map(|p| {
                    let mut attrs: PathAttrs = adv.attrs_for(&p);
                    attrs.origin = Origin::Igp;
                    attrs.next_hop = Some(match (p, nh6) {
                        (IpNetwork::V6(_), Some(a)) => IpAddr::V6(a),
                        _ => next_hop,
                    });
                    (p, attrs)
                })
                .collect();
            for p in originated.keys().filter(|p| !want.contains_key(p)) {
                tracing::info!(prefix = %p, "withdrawing");
                speaker.withdraw(*p);
            }
            for (p, attrs) in &want {
                match originated.get(p) {
                    Some(a) if a == attrs => continue,
                    Some(_) => {
                        tracing::info!(prefix = %p, next_hop = ?attrs.next_hop, "announcing again with new attributes")
                    }
                    None => tracing::info!(prefix = %p, "announcing"),
                }
                speaker.originate(*p, attrs.clone());
            }
            originated = want;
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            r = poked.changed() => if r.is_err() { return },
            r = next_hop6.changed() => if r.is_err() { return },
        }
    }
}
