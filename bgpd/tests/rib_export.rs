//! Adj-RIB-Out: Twill's no-transit default, the eBGP rewrite, well-known
//! communities, deltas versus full exports.

mod rib_support;

use rib_support::*;
use twill_bgpd::policy::{DefaultAction, Match, Modify, Policy, Source, Term, Verdict};
use twill_bgpd::rib::{PeerKind, Rib};
use twill_bgpd::types::{Community, PathAttrs};

/// Node 65000 with two ToRs (eBGP) and one other node (iBGP).
fn node() -> Rib {
    let mut rib = Rib::new(cfg());
    add(&mut rib, peer(1, 65101, PeerKind::External));
    add(&mut rib, peer(2, 65102, PeerKind::External));
    add(&mut rib, peer(3, ASN, PeerKind::Node));
    for id in 1..=3 {
        rib.full_export(id);
    }
    rib
}

#[test]
fn routes_from_one_tor_never_reach_another_tor_or_a_node() {
    let mut rib = node();
    let ch = announce(
        &mut rib,
        1,
        attrs(&[65101], "10.0.0.1"),
        &["0.0.0.0/0", "8.8.8.0/24"],
    );
    assert_eq!(ch.best.len(), 2, "felix still gets them");
    assert!(rib.take_exports(2).is_empty());
    assert!(rib.take_exports(3).is_empty());
    assert!(rib.full_export(2).is_empty());
    // Even an export policy that accepts everything does not make a ToR transit.
    rib.add_peer(
        peer(2, 65102, PeerKind::External),
        Policy::accept_all(),
        Policy::accept_all(),
    );
    assert!(rib.full_export(2).is_empty());
    // A node peer can be given ToR routes explicitly.
    let to_node = Policy {
        terms: vec![Term {
            matches: Match {
                source: Some(Source::External),
                ..Default::default()
            },
            verdict: Verdict::Accept,
            modify: vec![],
        }],
        ..Policy::originated_only()
    };
    rib.add_peer(peer(3, ASN, PeerKind::Node), Policy::accept_all(), to_node);
    assert_eq!(announced(&rib.full_export(3)).len(), 2);
}

#[test]
fn own_routes_go_to_tors_with_the_ebgp_rewrite() {
    let mut rib = node();
    let a = PathAttrs {
        med: Some(5),
        local_pref: Some(300),
        ..Default::default()
    };
    rib.originate(p("10.244.1.0/26"), a);
    for tor in 1..=2 {
        let got = announced(&rib.take_exports(tor));
        assert_eq!(got.len(), 1);
        let a = &got[0].1;
        assert_eq!(a.as_path.to_string(), "65000");
        assert_eq!(a.next_hop, Some(LOCAL_ADDR.into()));
        assert_eq!(a.local_pref, None);
        assert_eq!(a.med, Some(5), "our own MED is sent");
    }
    let got = announced(&rib.take_exports(3));
    assert_eq!(got[0].1.local_pref, Some(300));
    assert!(got[0].1.as_path.is_empty());
}

#[test]
fn med_learned_elsewhere_is_not_passed_to_ebgp() {
    let mut rib = node();
    let mut a = attrs(&[], "10.0.0.3");
    a.med = Some(77);
    a.local_pref = Some(150);
    announce(&mut rib, 3, a, &["10.244.9.0/26"]);
    let accept = Policy {
        default: DefaultAction::Accept,
        ..Policy::accept_all()
    };
    rib.add_peer(
        peer(1, 65101, PeerKind::External),
        Policy::accept_all(),
        accept,
    );
    let got = announced(&rib.full_export(1));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1.med, None);
    assert_eq!(got[0].1.local_pref, None);
    assert_eq!(got[0].1.as_path.to_string(), "65000");
}

#[test]
fn no_export_and_no_advertise_are_honoured() {
    let mut rib = node();
    let mut ne = PathAttrs::default();
    ne.add_community(Community::NO_EXPORT);
    rib.originate(p("10.244.2.0/26"), ne);
    let mut na = PathAttrs::default();
    na.add_community(Community::NO_ADVERTISE);
    rib.originate(p("10.244.3.0/26"), na);
    assert!(
        rib.take_exports(1).is_empty(),
        "NO_EXPORT stays inside the AS"
    );
    let to_node: Vec<String> = announced(&rib.take_exports(3))
        .iter()
        .map(|(p, _)| p.to_string())
        .collect();
    assert_eq!(to_node, vec!["10.244.2.0/26"], "NO_ADVERTISE goes nowhere");
}

#[test]
fn deltas_carry_only_what_changed_and_full_export_everything() {
    let mut rib = node();
    rib.originate(p("10.244.1.0/26"), PathAttrs::default());
    rib.originate(p("10.244.2.0/26"), PathAttrs::default());
    let first = rib.take_exports(1);
    assert_eq!(first.len(), 1, "one attribute set, one group");
    assert_eq!(first[0].announced.len(), 2);
    assert!(rib.take_exports(1).is_empty(), "nothing new");
    // Same attributes again: no delta.
    rib.originate(p("10.244.1.0/26"), PathAttrs::default());
    assert!(rib.take_exports(1).is_empty());
    rib.withdraw_local(p("10.244.2.0/26"));
    let e = rib.take_exports(1);
    assert_eq!(withdrawn(&e), vec![p("10.244.2.0/26")]);
    assert_eq!(rib.peer_counts(1).advertised, 1);
    // Full export: the whole Adj-RIB-Out again.
    assert_eq!(announced(&rib.full_export(1)).len(), 1);
    // A stricter policy: full export withdraws what no longer passes.
    rib.add_peer(
        peer(1, 65101, PeerKind::External),
        Policy::accept_all(),
        Policy::reject_all(),
    );
    rib.full_export(1);
    let prepend = Policy {
        terms: vec![Term {
            matches: Match::default(),
            verdict: Verdict::Accept,
            modify: vec![Modify::Prepend(2)],
        }],
        ..Policy::reject_all()
    };
    rib.add_peer(
        peer(1, 65101, PeerKind::External),
        Policy::accept_all(),
        prepend,
    );
    let got = announced(&rib.full_export(1));
    assert_eq!(got[0].1.as_path.to_string(), "65000 65000 65000");
}

#[test]
fn full_export_after_a_policy_change_withdraws_what_no_longer_passes() {
    let mut rib = node();
    rib.originate(p("10.244.1.0/26"), PathAttrs::default());
    assert_eq!(announced(&rib.take_exports(1)).len(), 1);
    assert!(rib.set_policies(1, Policy::accept_all(), Policy::reject_all()));
    let e = rib.full_export(1);
    assert_eq!(withdrawn(&e), vec![p("10.244.1.0/26")]);
    assert!(announced(&e).is_empty());
    assert_eq!(rib.peer_counts(1).advertised, 0);
}

#[test]
fn a_new_session_starts_with_an_empty_adj_rib_out() {
    let mut rib = node();
    rib.originate(p("10.244.1.0/26"), PathAttrs::default());
    assert_eq!(announced(&rib.take_exports(1)).len(), 1);
    rib.add_peer(
        peer(1, 65101, PeerKind::External),
        Policy::accept_all(),
        Policy::originated_only(),
    );
    assert_eq!(rib.peer_counts(1).advertised, 0);
    assert_eq!(announced(&rib.full_export(1)).len(), 1);
}
