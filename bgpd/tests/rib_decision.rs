//! The decision process step by step: each pair of routes differs only in the
//! step under test, and the tie-breaks that follow favour the loser, so the
//! result can only come from that step. Both arrival orders are checked.

mod rib_support;

use std::net::Ipv4Addr;

use rib_support::*;
use twill_bgpd::rib::{PeerInfo, PeerKind, Rib};
use twill_bgpd::types::{Origin, PathAttrs};

const PFX: &str = "203.0.113.0/24";

/// Installs `a` from peer `pa` and `b` from peer `pb` in both orders and
/// returns the winning next hop (the same in both, or the test fails).
fn winner(
    cfg_: twill_bgpd::rib::LocalConfig,
    pa: PeerInfo,
    a: PathAttrs,
    pb: PeerInfo,
    b: PathAttrs,
) -> String {
    let mut results = Vec::new();
    for flip in [false, true] {
        let mut rib = Rib::new(cfg_.clone());
        add(&mut rib, pa.clone());
        add(&mut rib, pb.clone());
        let order = if flip {
            [(pb.id, b.clone()), (pa.id, a.clone())]
        } else {
            [(pa.id, a.clone()), (pb.id, b.clone())]
        };
        for (id, at) in order {
            announce(&mut rib, id, at, &[PFX]);
        }
        let best = rib.best_route(&p(PFX)).unwrap();
        results.push(best.next_hops[0].to_string());
    }
    assert_eq!(results[0], results[1], "arrival order changed the result");
    results.remove(0)
}

/// Two iBGP peers; peer 1 has the lower router ID and address, so every
/// tie-break favours it.
fn ibgp_pair() -> (PeerInfo, PeerInfo) {
    (peer(1, ASN, PeerKind::Node), peer(2, ASN, PeerKind::Node))
}

#[test]
fn highest_local_pref_wins() {
    let (a, b) = ibgp_pair();
    let mut x = attrs(&[65001], "10.9.0.1");
    let mut y = attrs(&[65001], "10.9.0.2");
    x.local_pref = Some(100);
    y.local_pref = Some(200);
    assert_eq!(winner(cfg(), a, x, b, y), "10.9.0.2");
}

#[test]
fn missing_local_pref_counts_as_100() {
    let (a, b) = ibgp_pair();
    let x = attrs(&[65001], "10.9.0.1");
    let mut y = attrs(&[65001], "10.9.0.2");
    y.local_pref = Some(101);
    assert_eq!(
        winner(cfg(), a.clone(), x.clone(), b.clone(), y),
        "10.9.0.2"
    );
    let mut z = attrs(&[65001], "10.9.0.2");
    z.local_pref = Some(99);
    assert_eq!(winner(cfg(), a, x, b, z), "10.9.0.1");
}

#[test]
fn shortest_as_path_wins() {
    let (a, b) = ibgp_pair();
    let x = attrs(&[65001, 65002, 65003], "10.9.0.1");
    let y = attrs(&[65001, 65003], "10.9.0.2");
    assert_eq!(winner(cfg(), a, x, b, y), "10.9.0.2");
}

#[test]
fn lowest_origin_wins() {
    let (a, b) = ibgp_pair();
    let mut x = attrs(&[65001], "10.9.0.1");
    let mut y = attrs(&[65001], "10.9.0.2");
    x.origin = Origin::Incomplete;
    y.origin = Origin::Egp;
    assert_eq!(winner(cfg(), a, x, b, y), "10.9.0.2");
}

#[test]
fn lowest_med_wins_between_routes_from_the_same_neighbour_as() {
    let (a, b) = ibgp_pair();
    let mut x = attrs(&[65001], "10.9.0.1");
    let mut y = attrs(&[65001], "10.9.0.2");
    x.med = Some(50);
    y.med = Some(10);
    assert_eq!(winner(cfg(), a, x, b, y), "10.9.0.2");
}

#[test]
fn med_is_not_compared_across_neighbour_ases() {
    let (a, b) = ibgp_pair();
    let mut x = attrs(&[65001], "10.9.0.1");
    let mut y = attrs(&[65002], "10.9.0.2");
    x.med = Some(50);
    y.med = Some(10);
    // MED skipped: the router-ID tie-break picks peer 1.
    assert_eq!(winner(cfg(), a, x, b, y), "10.9.0.1");
}

#[test]
fn ebgp_wins_over_ibgp() {
    let a = peer(1, ASN, PeerKind::Node);
    let b = peer(2, 65001, PeerKind::External);
    let x = attrs(&[65001], "10.9.0.1");
    let y = attrs(&[65001], "10.9.0.2");
    assert_eq!(winner(cfg(), a, x, b, y), "10.9.0.2");
}

#[test]
fn lowest_router_id_wins() {
    let mut a = peer(1, ASN, PeerKind::Node);
    let b = peer(2, ASN, PeerKind::Node);
    a.router_id = Ipv4Addr::new(1, 1, 1, 9);
    let x = attrs(&[65001], "10.9.0.1");
    let y = attrs(&[65001], "10.9.0.2");
    assert_eq!(winner(cfg(), a, x, b, y), "10.9.0.2");
}

#[test]
fn originator_id_replaces_the_router_id_when_present() {
    let (a, b) = ibgp_pair();
    let mut x = attrs(&[65001], "10.9.0.1");
    x.originator_id = Some(Ipv4Addr::new(9, 9, 9, 9));
    let y = attrs(&[65001], "10.9.0.2");
    assert_eq!(winner(cfg(), a, x, b, y), "10.9.0.2");
}

#[test]
fn shortest_cluster_list_wins() {
    let (a, b) = ibgp_pair();
    let mut x = attrs(&[65001], "10.9.0.1");
    let mut y = attrs(&[65001], "10.9.0.2");
    x.originator_id = Some(Ipv4Addr::new(7, 7, 7, 7));
    y.originator_id = Some(Ipv4Addr::new(7, 7, 7, 7));
    x.cluster_list = vec![Ipv4Addr::new(5, 5, 5, 1), Ipv4Addr::new(5, 5, 5, 2)];
    y.cluster_list = vec![Ipv4Addr::new(5, 5, 5, 3)];
    assert_eq!(winner(cfg(), a, x, b, y), "10.9.0.2");
}

#[test]
fn lowest_peer_address_wins_last() {
    let mut a = peer(1, ASN, PeerKind::Node);
    let b = peer(2, ASN, PeerKind::Node);
    a.addr = ip("10.0.0.50");
    a.router_id = b.router_id;
    let x = attrs(&[65001], "10.9.0.1");
    let y = attrs(&[65001], "10.9.0.2");
    assert_eq!(winner(cfg(), a, x, b, y), "10.9.0.2");
}

#[test]
fn a_locally_originated_route_wins() {
    let mut rib = Rib::new(cfg());
    add(&mut rib, peer(1, ASN, PeerKind::Node));
    let mut better = attrs(&[], "10.9.0.1");
    better.local_pref = Some(1000);
    announce(&mut rib, 1, better, &[PFX]);
    let ch = rib.originate(p(PFX), PathAttrs::default());
    let (pfx, best) = ch.best.into_iter().next().unwrap();
    assert_eq!(pfx, p(PFX));
    assert!(best.unwrap().local);
    let ch = rib.withdraw_local(p(PFX));
    let best = ch.best[0].1.clone().unwrap();
    assert!(!best.local);
    assert_eq!(best.next_hops, vec![ip("10.9.0.1")]);
}

#[test]
fn ecmp_gives_every_equal_path_from_different_peers() {
    let mut c = cfg();
    c.multipath = true;
    let mut rib = Rib::new(c);
    for id in 1..=3 {
        add(&mut rib, peer(id, 65001, PeerKind::External));
    }
    add(&mut rib, peer(4, ASN, PeerKind::Node));
    announce(&mut rib, 3, attrs(&[65001], "10.9.0.3"), &[PFX]);
    announce(&mut rib, 1, attrs(&[65001], "10.9.0.1"), &[PFX]);
    // Equal up to the eBGP step, but iBGP: not part of the set.
    announce(&mut rib, 4, attrs(&[65001], "10.9.0.4"), &[PFX]);
    let ch = announce(&mut rib, 2, attrs(&[65001], "10.9.0.2"), &[PFX]);
    let best = ch.best[0].1.clone().unwrap();
    assert_eq!(
        best.next_hops,
        vec![ip("10.9.0.1"), ip("10.9.0.2"), ip("10.9.0.3")]
    );
    // A longer path leaves the set.
    let ch = announce(&mut rib, 1, attrs(&[65001, 65009], "10.9.0.1"), &[PFX]);
    assert_eq!(
        ch.best[0].1.clone().unwrap().next_hops,
        vec![ip("10.9.0.2"), ip("10.9.0.3")]
    );
    // Without multipath: one next hop.
    let mut single = Rib::new(cfg());
    for id in 1..=2 {
        add(&mut single, peer(id, 65001, PeerKind::External));
        announce(
            &mut single,
            id,
            attrs(&[65001], &format!("10.9.0.{id}")),
            &[PFX],
        );
    }
    assert_eq!(
        single.best_route(&p(PFX)).unwrap().next_hops,
        vec![ip("10.9.0.1")]
    );
}

#[test]
fn loops_are_rejected_on_import() {
    let mut c = cfg();
    c.cluster_id = Some(Ipv4Addr::new(10, 255, 0, 1));
    let mut rib = Rib::new(c);
    add(&mut rib, peer(1, 65001, PeerKind::External));
    add(&mut rib, peer(2, ASN, PeerKind::Node));
    // Our AS in the path from an eBGP peer.
    assert!(
        announce(&mut rib, 1, attrs(&[65001, ASN], "10.9.0.1"), &[PFX])
            .best
            .is_empty()
    );
    // ORIGINATOR_ID is us.
    let mut o = attrs(&[], "10.9.0.2");
    o.originator_id = Some(ROUTER_ID);
    assert!(announce(&mut rib, 2, o, &[PFX]).best.is_empty());
    // Our cluster ID in CLUSTER_LIST.
    let mut cl = attrs(&[], "10.9.0.2");
    cl.cluster_list = vec![Ipv4Addr::new(1, 2, 3, 4), Ipv4Addr::new(10, 255, 0, 1)];
    assert!(announce(&mut rib, 2, cl, &[PFX]).best.is_empty());
    assert!(rib.best_route(&p(PFX)).is_none());
    // A looped re-announcement withdraws the earlier good route.
    announce(&mut rib, 1, attrs(&[65001], "10.9.0.1"), &[PFX]);
    assert!(rib.best_route(&p(PFX)).is_some());
    let ch = announce(&mut rib, 1, attrs(&[65001, ASN], "10.9.0.1"), &[PFX]);
    assert_eq!(ch.best, vec![(p(PFX), None)]);
    assert_eq!(rib.peer_counts(1).accepted, 0);
}

#[test]
fn local_pref_from_an_ebgp_peer_is_ignored() {
    let a = peer(1, 65001, PeerKind::External);
    let b = peer(2, 65002, PeerKind::External);
    let mut x = attrs(&[65001], "10.9.0.1");
    let mut y = attrs(&[65002], "10.9.0.2");
    x.local_pref = Some(10);
    y.local_pref = Some(1000);
    // Both count as 100; router ID picks peer 1.
    assert_eq!(winner(cfg(), a, x, b, y), "10.9.0.1");
}
