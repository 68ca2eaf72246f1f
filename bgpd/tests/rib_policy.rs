//! Import and export policy inside the RIB (policies built from a BGPPeer
//! resource are tested in felix, where that conversion lives).

mod rib_support;

use rib_support::*;
use twill_bgpd::policy::{Match, Modify, Policy, PrefixList, PrefixRange, Term, Verdict};
use twill_bgpd::rib::{PeerKind, Rib};
use twill_bgpd::types::LargeCommunity;

#[test]
fn a_route_that_becomes_filtered_is_withdrawn() {
    let list = PrefixList::new([PrefixRange::orlonger(p("192.168.0.0/16"))]).unwrap();
    let reject_tagged = Policy {
        terms: vec![Term {
            matches: Match {
                large_communities: vec![LargeCommunity {
                    global: 65101,
                    local1: 0,
                    local2: 666,
                }],
                prefixes: Some(list),
                ..Default::default()
            },
            verdict: Verdict::Reject,
            modify: vec![],
        }],
        ..Policy::accept_all()
    };
    let mut rib = Rib::new(cfg());
    rib.add_peer(
        peer(1, 65101, PeerKind::External),
        reject_tagged,
        Policy::originated_only(),
    );
    announce(
        &mut rib,
        1,
        attrs(&[65101], "10.0.0.1"),
        &["192.168.1.0/24"],
    );
    let mut bad = attrs(&[65101], "10.0.0.1");
    bad.add_large_community(LargeCommunity {
        global: 65101,
        local1: 0,
        local2: 666,
    });
    let ch = announce(&mut rib, 1, bad, &["192.168.1.0/24", "10.10.0.0/16"]);
    assert_eq!(ch.best.len(), 2);
    assert_eq!(ch.best[0], (p("192.168.1.0/24"), None));
    assert!(
        rib.best_route(&p("10.10.0.0/16")).is_some(),
        "outside the prefix list"
    );
}

#[test]
fn next_hop_self_towards_ibgp() {
    let mut rib = Rib::new(cfg());
    add(&mut rib, peer(1, 65101, PeerKind::External));
    let export = Policy {
        terms: vec![Term {
            matches: Match::default(),
            verdict: Verdict::Accept,
            modify: vec![Modify::NextHopSelf, Modify::SetMed(9)],
        }],
        ..Policy::originated_only()
    };
    rib.add_peer(peer(2, ASN, PeerKind::Node), Policy::accept_all(), export);
    announce(&mut rib, 1, attrs(&[65101], "10.0.0.1"), &["8.8.8.0/24"]);
    let got = announced(&rib.full_export(2));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1.next_hop, Some(LOCAL_ADDR.into()));
    assert_eq!(got[0].1.med, Some(9));
    assert_eq!(
        got[0].1.as_path.to_string(),
        "65101",
        "no prepend towards iBGP"
    );
}
