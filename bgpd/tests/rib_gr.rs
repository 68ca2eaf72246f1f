//! Graceful restart (helper side), peer loss, attribute interning and
//! max-prefix.

mod rib_support;

use std::sync::Arc;
use std::time::Duration;

use rib_support::*;
use twill_bgpd::policy::{MaxPrefix, MaxPrefixAction, Policy};
use twill_bgpd::rib::{PeerKind, Rib};
use twill_bgpd::types::{Afi, Prefix};

#[test]
fn stale_routes_survive_the_restart_and_end_of_rib_drops_only_the_unrefreshed() {
    let mut rib = Rib::new(cfg());
    add(&mut rib, peer(1, 65101, PeerKind::External));
    let a = attrs(&[65101], "10.0.0.1");
    announce(
        &mut rib,
        1,
        a.clone(),
        &["10.1.0.0/24", "10.2.0.0/24", "10.3.0.0/24"],
    );
    rib.update(1, &[], Some(a.clone()), &[p("2001:db8:1::/48")]);
    rib.peer_stale(1);
    assert_eq!(rib.len(), 4, "kept while the peer restarts");
    // The session comes back and re-sends part of its table.
    add(&mut rib, peer(1, 65101, PeerKind::External));
    let ch = announce(&mut rib, 1, a.clone(), &["10.1.0.0/24"]);
    assert!(ch.best.is_empty(), "refreshed, not flapped");
    let changed = attrs(&[65101, 65200], "10.0.0.1");
    let ch = announce(&mut rib, 1, changed, &["10.2.0.0/24"]);
    assert_eq!(ch.best.len(), 1);
    let ch = rib.end_of_rib(1, Afi::Ipv4);
    assert_eq!(ch.best, vec![(p("10.3.0.0/24"), None)]);
    assert!(rib.best_route(&p("10.1.0.0/24")).is_some());
    assert!(rib.best_route(&p("10.2.0.0/24")).is_some());
    assert!(
        rib.best_route(&p("2001:db8:1::/48")).is_some(),
        "IPv6 waits for its own End-of-RIB"
    );
    let ch = rib.end_of_rib(1, Afi::Ipv6);
    assert_eq!(ch.best, vec![(p("2001:db8:1::/48"), None)]);
    assert_eq!(rib.peer_counts(1).accepted, 2);
}

#[test]
fn families_without_preserved_forwarding_are_withdrawn_at_once() {
    let mut rib = Rib::new(cfg());
    add(&mut rib, peer(1, 65101, PeerKind::External));
    let a = attrs(&[65101], "10.0.0.1");
    rib.update(1, &[], Some(a), &[p("10.1.0.0/24"), p("2001:db8:1::/48")]);
    let ch = rib.peer_stale_families(1, &[Afi::Ipv4]);
    assert_eq!(ch.best, vec![(p("2001:db8:1::/48"), None)]);
    assert!(rib.best_route(&p("10.1.0.0/24")).is_some());
    let ch = rib.end_of_rib(1, Afi::Ipv4);
    assert_eq!(ch.best, vec![(p("10.1.0.0/24"), None)]);
}

#[test]
fn remove_peer_withdraws_everything_it_sent_and_falls_back() {
    let mut rib = Rib::new(cfg());
    add(&mut rib, peer(1, 65101, PeerKind::External));
    add(&mut rib, peer(2, 65102, PeerKind::External));
    announce(
        &mut rib,
        1,
        attrs(&[65101], "10.0.0.1"),
        &["10.1.0.0/24", "10.9.0.0/24"],
    );
    announce(
        &mut rib,
        2,
        attrs(&[65102, 1], "10.0.0.2"),
        &["10.9.0.0/24"],
    );
    let mut ch = rib.remove_peer(1);
    ch.best.sort_by_key(|(p, _)| *p);
    assert_eq!(ch.best.len(), 2);
    assert_eq!(ch.best[0], (p("10.1.0.0/24"), None));
    assert_eq!(
        ch.best[1].1.as_ref().unwrap().next_hops,
        vec![ip("10.0.0.2")]
    );
    assert_eq!(rib.len(), 1);
    assert!(
        rib.update(
            1,
            &[],
            Some(attrs(&[65101], "10.0.0.1")),
            &[p("10.5.0.0/24")]
        )
        .best
        .is_empty(),
        "unknown peer"
    );
}

#[test]
fn equal_attribute_sets_share_one_arc_and_are_freed_when_unused() {
    let mut rib = Rib::new(cfg());
    add(&mut rib, peer(1, 65101, PeerKind::External));
    add(&mut rib, peer(2, 65102, PeerKind::External));
    let sets = [
        attrs(&[65101], "10.0.0.1"),
        attrs(&[65101, 7], "10.0.0.1"),
        attrs(&[65101, 8], "10.0.0.1"),
    ];
    let mut all = Vec::new();
    for u in 0..30u32 {
        let prefixes: Vec<Prefix> = (0..100u32)
            .map(|i| p(&format!("10.{}.{}.0/24", u, i)))
            .collect();
        rib.update(1, &[], Some(sets[(u % 3) as usize].clone()), &prefixes);
        all.extend(prefixes);
    }
    assert_eq!(rib.len(), 3000);
    assert_eq!(rib.attribute_sets(), 3);
    let a = rib.received(1, &p("10.0.0.0/24")).unwrap();
    let b = rib.received(1, &p("10.3.99.0/24")).unwrap();
    assert!(Arc::ptr_eq(&a, &b), "two UPDATEs, same attributes, one Arc");
    let c = rib.best_route(&p("10.3.5.0/24")).unwrap().attrs;
    assert!(Arc::ptr_eq(&a, &c));
    // Another peer with the same attributes shares them too.
    rib.update(2, &[], Some(sets[0].clone()), &[p("172.16.0.0/24")]);
    assert!(Arc::ptr_eq(
        &a,
        &rib.received(2, &p("172.16.0.0/24")).unwrap()
    ));
    drop((a, b, c));
    rib.update(1, &all, None, &[]);
    rib.remove_peer(2);
    assert_eq!(rib.len(), 0);
    assert_eq!(rib.attribute_sets(), 0);
}

fn limited(action: MaxPrefixAction) -> Rib {
    let mut rib = Rib::new(cfg());
    let import = Policy {
        max_prefix: Some(MaxPrefix {
            limit: 5,
            action,
            restart_after: Duration::from_secs(30),
        }),
        ..Policy::accept_all()
    };
    rib.add_peer(
        peer(1, 65101, PeerKind::External),
        import,
        Policy::originated_only(),
    );
    rib
}

fn many(from: u32, n: u32) -> Vec<Prefix> {
    (from..from + n)
        .map(|i| p(&format!("10.0.{i}.0/24")))
        .collect()
}

#[test]
fn max_prefix_restart_reports_once_and_stops_accepting() {
    let mut rib = limited(MaxPrefixAction::Restart);
    let a = attrs(&[65101], "10.0.0.1");
    let ch = rib.update(1, &[], Some(a.clone()), &many(0, 5));
    assert_eq!(ch.max_prefix_exceeded, None, "at the limit is fine");
    let ch = rib.update(1, &[], Some(a.clone()), &many(5, 1));
    assert_eq!(ch.max_prefix_exceeded, Some(1));
    assert_eq!(
        rib.max_prefix(1).unwrap().restart_after,
        Duration::from_secs(30)
    );
    let ch = rib.update(1, &[], Some(a.clone()), &many(6, 3));
    assert!(ch.is_empty(), "ignored until the session is torn down");
    let ch = rib.remove_peer(1);
    assert_eq!(ch.best.len(), 6);
    assert!(rib.is_empty());
}

#[test]
fn max_prefix_warn_keeps_routes_and_warns_once_per_crossing() {
    let mut rib = limited(MaxPrefixAction::Warn);
    let a = attrs(&[65101], "10.0.0.1");
    let ch = rib.update(1, &[], Some(a.clone()), &many(0, 7));
    assert_eq!(ch.max_prefix_warning, Some(1));
    assert_eq!(ch.max_prefix_exceeded, None);
    assert_eq!(rib.len(), 7);
    let ch = rib.update(1, &[], Some(a.clone()), &many(7, 1));
    assert_eq!(ch.max_prefix_warning, None, "already warned");
    rib.update(1, &many(0, 5), None, &[]);
    assert_eq!(rib.peer_counts(1).received, 3);
    let ch = rib.update(1, &[], Some(a.clone()), &many(20, 3));
    assert_eq!(
        ch.max_prefix_warning,
        Some(1),
        "went below the limit and crossed it again"
    );
    let ch = rib.update(1, &[], Some(a), &many(30, 1));
    assert_eq!(ch.max_prefix_warning, None);
    assert_eq!(rib.len(), 7);
}
