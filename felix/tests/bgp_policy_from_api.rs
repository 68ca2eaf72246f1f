//! Policies built from a BGPPeer resource, applied inside the RIB: import
//! filters reject and rewrite, export filters prepend, tag and set next hop.

#[path = "../../bgpd/tests/rib_support/mod.rs"]
mod rib_support;

use rib_support::*;
use twill_api::resources::{BGPPeerSpec, FilterAction, FilterRule};
use twill_bgpd::rib::{PeerKind, Rib};
use twill_bgpd::types::{Community, PathAttrs};
use twill_felix::calc::bgp::from_api::peer_policies;

#[test]
fn import_filters_from_a_bgppeer_reject_and_rewrite() {
    let spec = BGPPeerSpec {
        import_filters: vec![
            FilterRule {
                action: FilterAction::Reject,
                cidr: Some("10.0.0.0/8".into()),
                ge: Some(25),
                le: Some(32),
                ..Default::default()
            },
            FilterRule {
                action: FilterAction::Accept,
                communities: vec!["65101:200".into()],
                set_local_pref: Some(200),
                add_communities: vec!["65000:1".into()],
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let pol = peer_policies(&spec).unwrap();
    let mut rib = Rib::new(cfg());
    rib.add_peer(peer(1, ASN, PeerKind::Node), pol.import, pol.export);
    add(&mut rib, peer(2, ASN, PeerKind::Node));
    let plain = attrs(&[65101], "10.0.0.1");
    let ch = announce(
        &mut rib,
        1,
        plain,
        &["10.1.2.128/25", "10.1.2.0/24", "10.1.2.7/32"],
    );
    assert_eq!(
        ch.best.len(),
        1,
        "the /25 and /32 are filtered, the /24 is not"
    );
    let c = rib.peer_counts(1);
    assert_eq!((c.received, c.accepted), (3, 1));
    // Tagged routes get LOCAL_PREF 200 and win over an otherwise better path.
    let mut tagged = attrs(&[65101, 65102], "10.0.0.1");
    tagged.add_community(Community::new(65101, 200));
    announce(&mut rib, 2, attrs(&[65101], "10.0.0.2"), &["172.16.0.0/16"]);
    announce(&mut rib, 1, tagged, &["172.16.0.0/16"]);
    let best = rib.best_route(&p("172.16.0.0/16")).unwrap();
    assert_eq!(best.next_hops, vec![ip("10.0.0.1")]);
    assert_eq!(best.attrs.local_pref, Some(200));
    assert!(best.attrs.has_community(Community::new(65000, 1)));
    // A withdrawal of a filtered prefix lowers the received count.
    withdraw(&mut rib, 1, &["10.1.2.7/32"]);
    assert_eq!(rib.peer_counts(1).received, 3);
}

#[test]
fn export_filters_prepend_tag_and_set_next_hop() {
    let spec = BGPPeerSpec {
        export_filters: vec![
            FilterRule {
                action: FilterAction::Reject,
                cidr: Some("10.244.9.0/24".into()),
                le: Some(32),
                ..Default::default()
            },
            FilterRule {
                action: FilterAction::Accept,
                cidr: Some("10.244.0.0/16".into()),
                le: Some(32),
                prepend_as_path: Some(2),
                add_communities: vec!["65000:42".into(), "65000:1:2".into()],
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let pol = peer_policies(&spec).unwrap();
    let mut rib = Rib::new(cfg());
    rib.add_peer(peer(1, 65101, PeerKind::External), pol.import, pol.export);
    rib.originate(p("10.244.1.0/26"), PathAttrs::default());
    rib.originate(p("10.244.9.0/26"), PathAttrs::default());
    rib.originate(p("10.250.0.0/26"), PathAttrs::default());
    let got = announced(&rib.full_export(1));
    let prefixes: Vec<String> = got.iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(prefixes, vec!["10.244.1.0/26", "10.250.0.0/26"]);
    let a = &got[0].1;
    assert_eq!(a.as_path.to_string(), "65000 65000 65000");
    assert!(a.has_community(Community::new(65000, 42)));
    assert_eq!(a.large_communities.len(), 1);
    let b = &got[1].1;
    assert_eq!(
        b.as_path.to_string(),
        "65000",
        "default rule: own route, no prepend"
    );
}
