//! Property: any message we can represent survives encode -> decode
//! unchanged, on 2-octet and 4-octet sessions; and a deterministic fuzz run
//! (fixed seed) of the whole decode path never panics or hangs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::mpsc;
use std::time::Duration;

use ipnetwork::{Ipv4Network, Ipv6Network};
use proptest::prelude::*;
use twill_bgpd::types::{
    Afi, AsPath, AsSegment, Community, LargeCommunity, Origin, PathAttrs, Prefix, RawAttr,
};
use twill_bgpd::wire::{
    Capability, Ctx, GracefulRestart, Message, Notification, Open, RouteRefresh, Update, decode,
    encode, fuzz,
};

fn v4_prefix() -> impl Strategy<Value = Prefix> {
    (any::<u32>(), 0u8..=32).prop_map(|(a, l)| {
        let n = Ipv4Network::new(Ipv4Addr::from(a), l).unwrap();
        Prefix::V4(Ipv4Network::new(n.network(), l).unwrap())
    })
}

fn v6_prefix() -> impl Strategy<Value = Prefix> {
    (any::<u128>(), 0u8..=128).prop_map(|(a, l)| {
        let n = Ipv6Network::new(Ipv6Addr::from(a), l).unwrap();
        Prefix::V6(Ipv6Network::new(n.network(), l).unwrap())
    })
}

fn asn(four: bool) -> BoxedStrategy<u32> {
    if four {
        prop_oneof![1u32..65536, any::<u32>()].boxed()
    } else {
        // 4-octet numbers travel via AS_TRANS + AS4_PATH.
        prop_oneof![1u32..65536, 65536u32..=u32::MAX].boxed()
    }
}

fn as_path(four: bool) -> impl Strategy<Value = AsPath> {
    let seg = prop_oneof![
        prop::collection::vec(asn(four), 1..8).prop_map(AsSegment::Sequence),
        prop::collection::vec(asn(four), 1..4).prop_map(AsSegment::Set),
    ];
    // Confederation segments only lead the path, with 2-octet members on
    // 2-octet sessions (AS4_PATH cannot carry them, RFC 6793 3).
    let confed_asn = if four {
        asn(true)
    } else {
        (1u32..65536).boxed()
    };
    let confed = prop::option::of(prop_oneof![
        prop::collection::vec(confed_asn.clone(), 1..3).prop_map(AsSegment::ConfedSequence),
        prop::collection::vec(confed_asn, 1..3).prop_map(AsSegment::ConfedSet),
    ]);
    (confed, prop::collection::vec(seg, 0..4)).prop_map(|(c, mut segs)| {
        if let Some(c) = c {
            segs.insert(0, c);
        }
        AsPath { segments: segs }
    })
}

fn attrs(four: bool, v6_next_hop: bool) -> impl Strategy<Value = PathAttrs> {
    let nh: BoxedStrategy<(IpAddr, Option<Ipv6Addr>)> = if v6_next_hop {
        (any::<u128>(), prop::option::of(any::<u128>()))
            .prop_filter("not IPv4-mapped", |(a, _)| {
                Ipv6Addr::from(*a).to_ipv4_mapped().is_none()
            })
            .prop_map(|(a, ll)| (IpAddr::V6(Ipv6Addr::from(a)), ll.map(Ipv6Addr::from)))
            .boxed()
    } else {
        any::<u32>()
            .prop_map(|a| (IpAddr::V4(Ipv4Addr::from(a)), None))
            .boxed()
    };
    (
        (
            prop_oneof![
                Just(Origin::Igp),
                Just(Origin::Egp),
                Just(Origin::Incomplete)
            ],
            as_path(four),
            nh,
            prop::option::of(any::<u32>()),
            prop::option::of(any::<u32>()),
            any::<bool>(),
            prop::option::of((asn(four), any::<u32>())),
        ),
        (
            prop::collection::btree_set(any::<u32>(), 0..6),
            prop::collection::btree_set(any::<(u32, u32, u32)>(), 0..4),
            prop::option::of(any::<u32>()),
            prop::collection::vec(any::<u32>(), 0..4),
            prop::collection::btree_map(
                100u8..=200,
                prop::collection::vec(any::<u8>(), 0..300),
                0..3,
            ),
        ),
    )
        .prop_map(
            |((origin, as_path, (nh, ll), med, lp, atomic, agg), (comm, large, orig, cl, unk))| {
                PathAttrs {
                    origin,
                    as_path,
                    next_hop: Some(nh),
                    next_hop_link_local: ll,
                    med,
                    local_pref: lp,
                    atomic_aggregate: atomic,
                    aggregator: agg.map(|(a, ip)| (a, Ipv4Addr::from(ip))),
                    communities: comm.into_iter().map(Community).collect(),
                    large_communities: large
                        .into_iter()
                        .map(|(global, local1, local2)| LargeCommunity {
                            global,
                            local1,
                            local2,
                        })
                        .collect(),
                    originator_id: orig.map(Ipv4Addr::from),
                    cluster_list: cl.into_iter().map(Ipv4Addr::from).collect(),
                    unknown: unk
                        .into_iter()
                        .map(|(code, value)| RawAttr {
                            flags: 0xe0,
                            code,
                            value,
                        })
                        .collect(),
                }
            },
        )
}

fn update(four: bool) -> impl Strategy<Value = Update> {
    let w = (
        prop::collection::vec(v4_prefix(), 0..20),
        prop::collection::vec(v6_prefix(), 0..20),
    )
        .prop_map(|(a, b)| a.into_iter().chain(b).collect::<Vec<_>>());
    // Announcements: both families with an IPv4 next hop, or one family
    // with an IPv6 next hop (one UPDATE has one MP_REACH_NLRI).
    let ann = prop_oneof![
        (
            attrs(four, false),
            prop::collection::vec(v4_prefix(), 0..20),
            prop::collection::vec(v6_prefix(), 0..20)
        )
            .prop_map(|(a, x, y)| (Some(a), x.into_iter().chain(y).collect::<Vec<_>>())),
        (attrs(four, true), prop::collection::vec(v6_prefix(), 0..20))
            .prop_map(|(a, x)| (Some(a), x)),
        (attrs(four, true), prop::collection::vec(v4_prefix(), 0..20))
            // RFC 8950: IPv4 prefixes with an IPv6 next hop.
            .prop_map(|(a, x)| (Some(a), x)),
        Just((None, Vec::new())),
    ];
    prop_oneof![
        4 => (w, ann).prop_map(|(withdrawn, (attrs, announced))| {
            let mut u = Update {
                withdrawn,
                attrs,
                announced,
                eor: None,
            };
            if u.withdrawn.is_empty() && u.announced.is_empty() && u.attrs.is_none() {
                u.eor = Some(Afi::Ipv4);
            }
            u
        }),
        1 => prop_oneof![Just(Afi::Ipv4), Just(Afi::Ipv6)].prop_map(Update::end_of_rib),
    ]
}

fn capability() -> impl Strategy<Value = Capability> {
    let afi = prop_oneof![Just(Afi::Ipv4), Just(Afi::Ipv6)];
    prop_oneof![
        afi.clone().prop_map(Capability::Multiprotocol),
        Just(Capability::RouteRefresh),
        (
            any::<bool>(),
            0u16..4096,
            prop::collection::vec((afi, any::<bool>()), 0..3)
        )
            .prop_map(|(restarting, time, families)| Capability::GracefulRestart(
                GracefulRestart {
                    restarting,
                    time,
                    families,
                }
            )),
        (
            prop_oneof![3u8..64, 66u8..=255],
            prop::collection::vec(any::<u8>(), 0..12)
        )
            .prop_map(|(code, value)| Capability::Unknown { code, value }),
    ]
}

fn message(four: bool) -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            1u32..=u32::MAX,
            prop_oneof![Just(0u16), 3u16..=u16::MAX],
            1u32..=u32::MAX,
            prop::collection::vec(capability(), 0..6),
            any::<bool>()
        )
            .prop_map(|(asn, hold_time, id, mut caps, four_cap)| {
                let asn = if four_cap { asn } else { asn % 65535 + 1 };
                if four_cap {
                    caps.push(Capability::FourOctetAs(asn));
                }
                Message::Open(Open {
                    version: 4,
                    asn,
                    hold_time,
                    router_id: Ipv4Addr::from(id),
                    capabilities: caps,
                })
            }),
        update(four).prop_map(Message::Update),
        (
            1u8..=6,
            any::<u8>(),
            prop::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(c, s, d)| Message::Notification(Notification::new(c, s, d))),
        Just(Message::Keepalive),
        (prop_oneof![Just(Afi::Ipv4), Just(Afi::Ipv6)], 0u8..3)
            .prop_map(|(afi, subtype)| Message::RouteRefresh(RouteRefresh { afi, subtype })),
    ]
}

fn round_trip(m: &Message, four: bool) -> Result<(), TestCaseError> {
    let ctx = Ctx {
        four_octet_as: four,
        ..Ctx::default()
    };
    let bytes = encode(m, &ctx);
    prop_assume!(bytes.len() <= 4096);
    let (back, warnings) = decode(&bytes, &ctx).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(warnings.is_empty(), "{warnings:?}");
    prop_assert_eq!(&back, m);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn encode_decode_round_trip_four_octet(m in message(true)) {
        round_trip(&m, true)?;
    }

    #[test]
    fn encode_decode_round_trip_two_octet(m in message(false)) {
        round_trip(&m, false)?;
    }
}

/// 200k mutated inputs (fixed seed, both session kinds) through frame_len
/// and decode, and every decoded message re-encoded and decoded again. A
/// panic fails the test; so does a run that does not finish in 120 s (a
/// hang; the run itself takes a few seconds in debug).
#[test]
fn deterministic_fuzz_run_never_panics_or_hangs() {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let corpus = fuzz::seed_corpus();
        let (mut decoded, mut warned) = (0u64, 0u64);
        for i in 0..200_000u64 {
            let input = fuzz::input(0x7411_1b9b, i, &corpus);
            let r = std::panic::catch_unwind(|| fuzz::exercise(&input, &fuzz::ctx_for(i)));
            match r {
                Ok(fuzz::Outcome::Decoded) => decoded += 1,
                Ok(fuzz::Outcome::Warned) => warned += 1,
                Ok(_) => {}
                Err(_) => {
                    let _ = tx.send(Err(format!("input {i} panicked: {input:02x?}")));
                    return;
                }
            }
        }
        let _ = tx.send(Ok((decoded, warned)));
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(Ok((decoded, warned))) => {
            // The mutations must reach the decoder and the RFC 7606 paths.
            assert!(decoded > 10_000, "only {decoded} inputs decoded");
            assert!(warned > 1_000, "only {warned} inputs hit RFC 7606 handling");
        }
        Ok(Err(e)) => panic!("{e}"),
        Err(_) => panic!("fuzz run did not finish in 120 s: a hang"),
    }
}
