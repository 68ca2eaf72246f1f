//! Property: the best routes depend only on what each peer last announced,
//! never on the order the UPDATEs arrived in; and the stream of best-route
//! changes, replayed, ends at exactly the RIB's best routes.

mod rib_support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use proptest::prelude::*;
use rib_support::*;
use twill_bgpd::rib::{BestRoute, Changes, PeerKind, Rib};
use twill_bgpd::types::{AsPath, Origin, PathAttrs, Prefix};

const PREFIXES: [&str; 3] = ["10.0.0.0/24", "10.0.1.0/24", "2001:db8::/48"];

#[derive(Debug, Clone)]
struct Ann {
    peer: u32,
    prefix: usize,
    attrs: Option<PathAttrs>,
}

fn arb_attrs() -> impl Strategy<Value = PathAttrs> {
    (
        prop::option::of(prop::sample::select(vec![90u32, 100, 200])),
        prop::collection::vec(prop::sample::select(vec![65001u32, 65002, 65003]), 1..4),
        prop::sample::select(vec![Origin::Igp, Origin::Egp, Origin::Incomplete]),
        prop::option::of(prop::sample::select(vec![0u32, 10, 20])),
        prop::option::of(prop::sample::select(vec![1u8, 2])),
        0usize..3,
        0u8..4,
    )
        .prop_map(|(lp, path, origin, med, orig, cl, nh)| PathAttrs {
            local_pref: lp,
            as_path: AsPath::from_sequence(path),
            origin,
            med,
            originator_id: orig.map(|o| Ipv4Addr::new(1, 1, 1, o)),
            cluster_list: (0..cl).map(|i| Ipv4Addr::new(5, 5, 5, i as u8)).collect(),
            next_hop: Some(ip(&format!("10.9.0.{nh}"))),
            ..Default::default()
        })
}

fn arb_ann() -> impl Strategy<Value = Ann> {
    (
        1u32..=5,
        0usize..PREFIXES.len(),
        prop::option::weighted(0.8, arb_attrs()),
    )
        .prop_map(|(peer, prefix, attrs)| Ann {
            peer,
            prefix,
            attrs,
        })
}

fn build(multipath: bool) -> Rib {
    let mut c = cfg();
    c.multipath = multipath;
    let mut rib = Rib::new(c);
    // Peers 1-2 eBGP in the same AS, 3 eBGP elsewhere, 4-5 iBGP.
    add(&mut rib, peer(1, 65001, PeerKind::External));
    add(&mut rib, peer(2, 65001, PeerKind::External));
    add(&mut rib, peer(3, 65002, PeerKind::External));
    add(&mut rib, peer(4, ASN, PeerKind::Node));
    add(&mut rib, peer(5, ASN, PeerKind::Node));
    rib
}

fn apply(rib: &mut Rib, a: &Ann, seen: &mut BTreeMap<Prefix, BestRoute>) {
    let pfx = p(PREFIXES[a.prefix]);
    let ch: Changes = match &a.attrs {
        Some(at) => rib.update(a.peer, &[], Some(at.clone()), &[pfx]),
        None => rib.update(a.peer, &[pfx], None, &[]),
    };
    for (p, b) in ch.best {
        match b {
            Some(b) => seen.insert(p, b),
            None => seen.remove(&p),
        };
    }
}

proptest! {
    #[test]
    fn best_routes_do_not_depend_on_arrival_order(
        noise in prop::collection::vec(arb_ann(), 0..20),
        finals in prop::collection::vec(prop::option::weighted(0.7, arb_attrs()), 5 * PREFIXES.len()),
        seed in any::<u64>(),
        multipath in any::<bool>(),
    ) {
        // The last word of every (peer, prefix), after noise in any order.
        let ordered: Vec<Ann> = finals
            .iter()
            .enumerate()
            .map(|(i, attrs)| Ann {
                peer: (i / PREFIXES.len()) as u32 + 1,
                prefix: i % PREFIXES.len(),
                attrs: attrs.clone(),
            })
            .collect();
        let mut shuffled = ordered.clone();
        // Deterministic shuffle from the seed.
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let mut a = build(multipath);
        let mut seen_a = BTreeMap::new();
        for x in noise.iter().chain(ordered.iter()) {
            apply(&mut a, x, &mut seen_a);
        }
        let mut b = build(multipath);
        let mut seen_b = BTreeMap::new();
        for x in noise.iter().rev().chain(shuffled.iter()) {
            apply(&mut b, x, &mut seen_b);
        }
        let best_a: BTreeMap<Prefix, BestRoute> = a.best().collect();
        let best_b: BTreeMap<Prefix, BestRoute> = b.best().collect();
        prop_assert_eq!(&best_a, &best_b);
        prop_assert_eq!(&seen_a, &best_a, "replayed changes end at the RIB's best routes");
        prop_assert_eq!(&seen_b, &best_b);
    }
}
