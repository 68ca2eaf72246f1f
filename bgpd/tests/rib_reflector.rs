//! Route reflection (RFC 4456): three clients and two non-clients of one
//! reflector.

mod rib_support;

use std::net::Ipv4Addr;

use rib_support::*;
use twill_bgpd::rib::{PeerKind, Rib};

const CLUSTER: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);

fn reflector() -> Rib {
    let mut c = cfg();
    c.cluster_id = Some(CLUSTER);
    let mut rib = Rib::new(c);
    for id in 1..=3 {
        let mut info = peer(id, ASN, PeerKind::Node);
        info.rr_client = true;
        add(&mut rib, info);
    }
    for id in 4..=5 {
        add(&mut rib, peer(id, ASN, PeerKind::Node));
    }
    for id in 1..=5 {
        assert!(rib.full_export(id).is_empty());
    }
    for id in 1..=5u32 {
        let a = attrs(&[], &format!("10.0.0.{id}"));
        announce(&mut rib, id, a, &[&format!("10.{id}.0.0/26")]);
    }
    rib
}

#[test]
fn every_client_gets_every_other_clients_routes_with_reflection_attributes() {
    let mut rib = reflector();
    for c in 1..=3u32 {
        let got = announced(&rib.take_exports(c));
        let prefixes: Vec<String> = got.iter().map(|(p, _)| p.to_string()).collect();
        let mut want: Vec<String> = (1..=5u32)
            .filter(|o| *o != c)
            .map(|o| format!("10.{o}.0.0/26"))
            .collect();
        want.sort();
        assert_eq!(prefixes, want, "client {c}");
        for (p, a) in got {
            let origin: u8 = p.to_string()[3..4].parse().unwrap();
            assert_eq!(a.originator_id, Some(Ipv4Addr::new(1, 1, 1, origin)), "{p}");
            assert_eq!(a.cluster_list, vec![CLUSTER]);
            assert_eq!(
                a.next_hop,
                Some(ip(&format!("10.0.0.{origin}"))),
                "next hop unchanged"
            );
            assert_eq!(a.local_pref, Some(100));
        }
    }
}

#[test]
fn non_clients_get_client_routes_but_not_each_others() {
    let mut rib = reflector();
    for n in 4..=5u32 {
        let got: Vec<String> = announced(&rib.take_exports(n))
            .iter()
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(
            got,
            vec!["10.1.0.0/26", "10.2.0.0/26", "10.3.0.0/26"],
            "non-client {n}"
        );
    }
}

#[test]
fn an_existing_originator_id_is_kept_and_the_cluster_id_prepended() {
    let mut rib = reflector();
    for id in 1..=5 {
        rib.take_exports(id);
    }
    let mut a = attrs(&[], "10.0.0.1");
    a.originator_id = Some(Ipv4Addr::new(172, 16, 0, 1));
    a.cluster_list = vec![Ipv4Addr::new(10, 255, 0, 9)];
    announce(&mut rib, 1, a, &["10.100.0.0/24"]);
    let got = announced(&rib.take_exports(2));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1.originator_id, Some(Ipv4Addr::new(172, 16, 0, 1)));
    assert_eq!(
        got[0].1.cluster_list,
        vec![CLUSTER, Ipv4Addr::new(10, 255, 0, 9)]
    );
}

#[test]
fn a_route_carrying_our_cluster_id_is_rejected() {
    let mut rib = reflector();
    let mut a = attrs(&[], "10.0.0.2");
    a.cluster_list = vec![Ipv4Addr::new(10, 255, 0, 7), CLUSTER];
    let ch = announce(&mut rib, 2, a, &["10.200.0.0/24"]);
    assert!(ch.best.is_empty());
    assert!(rib.best_route(&p("10.200.0.0/24")).is_none());
    assert_eq!(rib.peer_counts(2).accepted, 1, "only its own prefix");
}

#[test]
fn withdrawals_are_reflected() {
    let mut rib = reflector();
    for id in 1..=5 {
        rib.take_exports(id);
    }
    withdraw(&mut rib, 1, &["10.1.0.0/26"]);
    for id in 2..=5 {
        let e = rib.take_exports(id);
        assert_eq!(withdrawn(&e), vec![p("10.1.0.0/26")], "peer {id}");
        assert!(announced(&e).is_empty());
    }
    assert!(rib.take_exports(1).is_empty(), "never sent to its origin");
}

#[test]
fn without_a_cluster_id_ibgp_routes_are_not_passed_on() {
    let mut rib = Rib::new(cfg());
    for id in 1..=3 {
        let mut info = peer(id, ASN, PeerKind::Node);
        info.rr_client = true;
        add(&mut rib, info);
    }
    announce(&mut rib, 1, attrs(&[], "10.0.0.1"), &["10.1.0.0/26"]);
    rib.originate(p("10.50.0.0/26"), Default::default());
    for id in 2..=3 {
        let got = announced(&rib.full_export(id));
        assert_eq!(got.len(), 1, "only our own block");
        assert_eq!(got[0].0, p("10.50.0.0/26"));
        assert_eq!(got[0].1.next_hop, Some(LOCAL_ADDR.into()));
        assert_eq!(got[0].1.local_pref, Some(100));
        assert!(got[0].1.as_path.is_empty(), "no prepend towards iBGP");
    }
}

#[test]
fn a_reflector_does_not_leak_tor_routes_to_clients_or_client_routes_to_the_tor() {
    let mut rib = reflector();
    add(&mut rib, peer(9, 65100, PeerKind::External));
    rib.full_export(9);
    for id in 1..=5 {
        rib.take_exports(id);
    }
    announce(&mut rib, 9, attrs(&[65100], "10.0.0.9"), &["0.0.0.0/0"]);
    assert!(rib.best_route(&p("0.0.0.0/0")).is_some());
    for id in 1..=5 {
        assert!(rib.take_exports(id).is_empty(), "peer {id}");
    }
    assert!(
        rib.full_export(9).is_empty(),
        "client routes are not ours to announce"
    );
    rib.originate(p("10.50.0.0/26"), Default::default());
    let got = announced(&rib.take_exports(9));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1.as_path.to_string(), "65000");
    assert_eq!(got[0].1.originator_id, None);
    assert!(got[0].1.cluster_list.is_empty());
}
