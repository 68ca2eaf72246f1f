//! Every malformed-message case the speaker must handle: the NOTIFICATION
//! code/subcode sent, or the RFC 7606 action taken, asserted per case.

use std::net::{IpAddr, Ipv4Addr};

use twill_bgpd::types::{AsPath, AsSegment, Origin, PathAttrs, Prefix};
use twill_bgpd::wire::{
    Action, CeaseSubcode, Ctx, DecodeError, ErrorCode, HeaderError, Message, Notification, Open,
    OpenError, Update, UpdateSubcode, Warning, attr, decode, encode, encode_updates,
    encode_updates_checked, frame_len, frame_len_in,
};

const TWO: Ctx = Ctx {
    four_octet_as: false,
    extended_messages: false,
};
const FOUR: Ctx = Ctx {
    four_octet_as: true,
    extended_messages: false,
};
/// RFC 8654 extended messages negotiated.
const EXT: Ctx = Ctx {
    four_octet_as: true,
    extended_messages: true,
};

fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(ty);
    m.extend_from_slice(body);
    m
}

/// An UPDATE from raw withdrawn bytes, attribute bytes and NLRI bytes.
fn update(withdrawn: &[u8], attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut b = (withdrawn.len() as u16).to_be_bytes().to_vec();
    b.extend_from_slice(withdrawn);
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(attrs);
    b.extend_from_slice(nlri);
    msg(2, &b)
}

/// ORIGIN IGP, AS_PATH [65001] (4-octet), NEXT_HOP 192.0.2.1.
const ORIGIN: [u8; 4] = [0x40, 1, 1, 0];
const AS_PATH4: [u8; 9] = [0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe9];
const NEXT_HOP: [u8; 7] = [0x40, 3, 4, 192, 0, 2, 1];
const NLRI: [u8; 4] = [24, 10, 0, 1];

fn good_attrs() -> Vec<u8> {
    [&ORIGIN[..], &AS_PATH4[..], &NEXT_HOP[..]].concat()
}

fn pfx(s: &str) -> Prefix {
    s.parse().unwrap()
}

fn err(m: &[u8], ctx: &Ctx) -> (u8, u8) {
    let e: Notification = decode(m, ctx).expect_err("must be rejected").into();
    (e.code, e.subcode)
}

fn warned(m: &[u8], ctx: &Ctx) -> (Update, Vec<Warning>) {
    match decode(m, ctx) {
        Ok((Message::Update(u), w)) => (u, w),
        other => panic!("expected an UPDATE, got {other:?}"),
    }
}

#[test]
fn a_good_update_decodes_without_warnings() {
    let (u, w) = warned(&update(&[], &good_attrs(), &NLRI), &FOUR);
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(u.announced, vec![pfx("10.0.1.0/24")]);
    let a = u.attrs.unwrap();
    assert_eq!(a.as_path, AsPath::from_sequence([65001]));
    assert_eq!(a.next_hop, Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))));
}

#[test]
fn bad_marker_is_connection_not_synchronized() {
    let mut m = encode(&Message::Keepalive, &FOUR);
    m[3] = 0xfe;
    assert_eq!(frame_len(&m).unwrap_err().notification().subcode, 1);
    assert_eq!(err(&m, &FOUR), (1, 1));
}

#[test]
fn length_below_19_or_above_4096_is_bad_message_length() {
    for bad in [0u16, 18, 4097, 0xffff] {
        let mut m = encode(&Message::Keepalive, &FOUR);
        m[16..18].copy_from_slice(&bad.to_be_bytes());
        let e = frame_len(&m).unwrap_err().notification();
        assert_eq!((e.code, e.subcode), (1, 2), "length {bad}");
        assert_eq!(
            e.data,
            bad.to_be_bytes().to_vec(),
            "data is the length field"
        );
        assert_eq!(err(&m, &FOUR), (1, 2));
    }
}

#[test]
fn type_specific_lengths_and_unknown_types() {
    // KEEPALIVE must be exactly 19, ROUTE-REFRESH 23, OPEN >= 29,
    // NOTIFICATION >= 21, UPDATE >= 23.
    assert_eq!(err(&msg(4, &[0]), &FOUR), (1, 2));
    assert_eq!(err(&msg(5, &[0, 1, 0]), &FOUR), (1, 2));
    assert_eq!(err(&msg(1, &[4; 9]), &FOUR), (1, 2));
    assert_eq!(err(&msg(3, &[6]), &FOUR), (1, 2));
    assert_eq!(err(&msg(2, &[0, 0, 0]), &FOUR), (1, 2));
    let e = decode(&msg(9, &[]), &FOUR).unwrap_err().notification();
    assert_eq!((e.code, e.subcode, e.data), (1, 3, vec![9]));
}

#[test]
fn frame_len_waits_for_a_whole_header_and_checks_buffer_length() {
    let m = encode(&Message::Keepalive, &FOUR);
    assert_eq!(frame_len(&m[..18]), Ok(None));
    assert_eq!(frame_len(&m), Ok(Some(19)));
    let mut longer = m.clone();
    longer.push(0);
    assert_eq!(frame_len(&longer), Ok(Some(19)));
    // decode wants exactly one message.
    assert_eq!(err(&longer, &FOUR), (1, 2));
}

#[test]
fn truncated_attribute_is_treat_as_withdraw() {
    // AS_PATH claims 9 octets, only 6 follow before NLRI (RFC 7606 4).
    let attrs = [&ORIGIN[..], &[0x40, 2, 9, 2, 1, 0, 0, 0xfd, 0xe9]].concat();
    let (u, w) = warned(&update(&[], &attrs, &NLRI), &FOUR);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].action, Action::TreatAsWithdraw);
    assert_eq!((w[0].error.code, w[0].error.subcode), (3, 5));
    assert!(u.attrs.is_none());
    assert!(u.announced.is_empty());
    assert_eq!(u.withdrawn, vec![pfx("10.0.1.0/24")]);
}

#[test]
fn attribute_block_too_short_for_a_header_is_treat_as_withdraw() {
    let attrs = [&good_attrs()[..], &[0x40, 5]].concat();
    let (u, w) = warned(&update(&[], &attrs, &NLRI), &FOUR);
    assert_eq!(w[0].action, Action::TreatAsWithdraw);
    assert_eq!(u.withdrawn.len(), 1);
}

#[test]
fn attribute_lengths_past_the_message_are_malformed_attribute_list() {
    // Withdrawn Routes Length runs past the message (RFC 4271 6.3).
    let mut m = update(&[], &good_attrs(), &NLRI);
    m[19..21].copy_from_slice(&500u16.to_be_bytes());
    assert_eq!(err(&m, &FOUR), (3, 1));
    // Total Path Attribute Length runs past the message.
    let mut m = update(&[], &good_attrs(), &NLRI);
    m[21..23].copy_from_slice(&500u16.to_be_bytes());
    assert_eq!(err(&m, &FOUR), (3, 1));
}

#[test]
fn as_path_with_a_stray_trailing_byte_is_malformed_as_path() {
    // The 14-byte attribute block that makes zettabgp 0.6 loop forever:
    // ORIGIN + AS_PATH whose one segment is followed by one stray octet.
    let attrs = [&ORIGIN[..], &[0x40, 2, 7, 2, 1, 0, 0, 0xfd, 0xe9, 0]].concat();
    assert_eq!(attrs.len(), 14);
    for ctx in [TWO, FOUR] {
        let (u, w) = warned(&update(&[], &attrs, &[8, 10]), &ctx);
        // (NEXT_HOP is missing too, a second treat-as-withdraw reason.)
        assert_eq!(w[0].action, Action::TreatAsWithdraw);
        assert_eq!(w[0].attr, Some(attr::AS_PATH));
        assert_eq!((w[0].error.code, w[0].error.subcode), (3, 11));
        assert_eq!(u.withdrawn, vec![pfx("10.0.0.0/8")]);
    }
}

#[test]
fn as_path_segment_rules() {
    let cases: [&[u8]; 4] = [
        &[0x40, 2, 6, 5, 1, 0, 0, 0xfd, 0xe9], // segment type 5
        &[0x40, 2, 2, 2, 0],                   // zero count
        &[0x40, 2, 6, 2, 2, 0, 0, 0xfd, 0xe9], // count says 2, one AS present
        &[0x40, 2, 4, 2, 1, 0xfd, 0xe9],       // 2-octet AS on a 4-octet session
    ];
    for c in cases {
        let attrs = [&ORIGIN[..], c, &NEXT_HOP[..]].concat();
        let (_, w) = warned(&update(&[], &attrs, &NLRI), &FOUR);
        assert_eq!(w[0].action, Action::TreatAsWithdraw, "{c:?}");
        assert_eq!(w[0].error.subcode, 11, "{c:?}");
    }
    // The same 2-octet path is fine on a 2-octet session.
    let attrs = [&ORIGIN[..], &[0x40, 2, 4, 2, 1, 0xfd, 0xe9], &NEXT_HOP[..]].concat();
    let (u, w) = warned(&update(&[], &attrs, &NLRI), &TWO);
    assert!(w.is_empty());
    assert_eq!(u.attrs.unwrap().as_path, AsPath::from_sequence([65001]));
}

#[test]
fn bad_nlri_length_is_invalid_network_field() {
    // Prefix length 33, and a /24 with only two address octets.
    for nlri in [&[33u8, 10, 0, 0, 0, 0][..], &[24, 10, 0][..]] {
        assert_eq!(err(&update(&[], &good_attrs(), nlri), &FOUR), (3, 10));
    }
    // The same in withdrawn routes.
    assert_eq!(err(&update(&[40, 1, 2, 3, 4, 5], &[], &[]), &FOUR), (3, 10));
}

#[test]
fn bad_mp_reach_is_a_session_reset() {
    // IPv6 with a 5-octet next hop: the NLRI cannot be located (RFC 7606 7.11).
    let mut mp = vec![0x80, 14, 0, 0, 2, 1, 5, 0, 0, 0, 0, 0, 0];
    mp[2] = (mp.len() - 3) as u8;
    let attrs = [&mp[..], &ORIGIN[..], &AS_PATH4[..]].concat();
    assert_eq!(err(&update(&[], &attrs, &[]), &FOUR), (3, 9));
    // IPv6 prefix length 129.
    let mut mp = vec![0x80, 14, 0, 0, 2, 1, 16];
    mp.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    mp.extend_from_slice(&[0, 129, 0]);
    mp[2] = (mp.len() - 3) as u8;
    let attrs = [&mp[..], &ORIGIN[..], &AS_PATH4[..]].concat();
    assert_eq!(err(&update(&[], &attrs, &[]), &FOUR), (3, 9));
    // Two MP_UNREACH_NLRI: Malformed Attribute List (RFC 7606 3 g).
    let un = [0x80, 15, 3, 0, 2, 1];
    let attrs = [&un[..], &un[..]].concat();
    assert_eq!(err(&update(&[], &attrs, &[]), &FOUR), (3, 1));
}

#[test]
fn unknown_well_known_attribute_is_a_session_reset() {
    let attrs = [&good_attrs()[..], &[0x40, 99, 1, 7]].concat();
    let e = decode(&update(&[], &attrs, &NLRI), &FOUR)
        .unwrap_err()
        .notification();
    assert_eq!((e.code, e.subcode), (3, 2));
    assert_eq!(e.data, vec![0x40, 99, 1, 7], "data is the attribute");
}

#[test]
fn unknown_optional_attributes_are_kept_when_transitive_else_dropped() {
    let attrs = [&good_attrs()[..], &[0xc0, 99, 1, 7], &[0x80, 98, 1, 8]].concat();
    let (u, w) = warned(&update(&[], &attrs, &NLRI), &FOUR);
    assert!(w.is_empty());
    let a = u.attrs.unwrap();
    assert_eq!(a.unknown.len(), 1);
    assert_eq!(
        (a.unknown[0].code, a.unknown[0].value.clone()),
        (99, vec![7])
    );
    // Passed on with the Partial bit (RFC 4271 5).
    let out = encode_updates(&[], Some(&a), &u.announced, &FOUR);
    let needle = [0xe0u8, 99, 1, 7];
    assert!(out[0].windows(4).any(|w| w == needle));
}

#[test]
fn duplicate_attributes_keep_the_first_and_discard_the_rest() {
    let attrs = [&good_attrs()[..], &[0x40, 1, 1, 2]].concat();
    let (u, w) = warned(&update(&[], &attrs, &NLRI), &FOUR);
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].action, Action::AttributeDiscard);
    assert_eq!(w[0].attr, Some(attr::ORIGIN));
    assert_eq!((w[0].error.code, w[0].error.subcode), (3, 1));
    assert_eq!(u.attrs.unwrap().origin, Origin::Igp);
    assert_eq!(u.announced.len(), 1);
}

#[test]
fn missing_mandatory_attributes_are_treat_as_withdraw() {
    for (missing, attrs) in [
        (attr::ORIGIN, [&AS_PATH4[..], &NEXT_HOP[..]].concat()),
        (attr::AS_PATH, [&ORIGIN[..], &NEXT_HOP[..]].concat()),
        (attr::NEXT_HOP, [&ORIGIN[..], &AS_PATH4[..]].concat()),
    ] {
        let (u, w) = warned(&update(&[], &attrs, &NLRI), &FOUR);
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].action, Action::TreatAsWithdraw);
        assert_eq!((w[0].error.code, w[0].error.subcode), (3, 3));
        assert_eq!(w[0].error.data, vec![missing]);
        assert_eq!(u.withdrawn, vec![pfx("10.0.1.0/24")]);
    }
    // Without NLRI nothing is mandatory.
    let (_, w) = warned(&update(&[], &ORIGIN, &[]), &FOUR);
    assert!(w.is_empty());
}

#[test]
fn bad_origin_value_is_treat_as_withdraw() {
    let attrs = [&[0x40, 1, 1, 3][..], &AS_PATH4[..], &NEXT_HOP[..]].concat();
    let (u, w) = warned(&update(&[], &attrs, &NLRI), &FOUR);
    assert_eq!(w[0].action, Action::TreatAsWithdraw);
    assert_eq!((w[0].error.code, w[0].error.subcode), (3, 6));
    assert!(u.announced.is_empty());
}

#[test]
fn attribute_flag_errors_follow_the_attribute_rule() {
    // ORIGIN marked optional: treat-as-withdraw with Attribute Flags Error.
    let attrs = [&[0xc0, 1, 1, 0][..], &AS_PATH4[..], &NEXT_HOP[..]].concat();
    let (_, w) = warned(&update(&[], &attrs, &NLRI), &FOUR);
    assert_eq!(w[0].action, Action::TreatAsWithdraw);
    assert_eq!((w[0].error.code, w[0].error.subcode), (3, 4));
    // ATOMIC_AGGREGATE marked optional: attribute-discard (RFC 7606 7.6).
    let attrs = [&good_attrs()[..], &[0x80, 6, 0]].concat();
    let (u, w) = warned(&update(&[], &attrs, &NLRI), &FOUR);
    assert_eq!(w[0].action, Action::AttributeDiscard);
    assert!(!u.attrs.unwrap().atomic_aggregate);
    // The extended-length bit is accepted on any attribute.
    let attrs = [
        &ORIGIN[..],
        &[0x50, 2, 0, 6, 2, 1, 0, 0, 0xfd, 0xe9],
        &NEXT_HOP[..],
    ]
    .concat();
    let (u, w) = warned(&update(&[], &attrs, &NLRI), &FOUR);
    assert!(w.is_empty());
    assert_eq!(u.announced.len(), 1);
}

#[test]
fn fixed_length_rules_of_known_attributes() {
    // MED of 3 octets: treat-as-withdraw (RFC 7606 7.4).
    let attrs = [&good_attrs()[..], &[0x80, 4, 3, 0, 0, 1]].concat();
    let (_, w) = warned(&update(&[], &attrs, &NLRI), &FOUR);
    assert_eq!(
        (w[0].action, w[0].error.subcode),
        (Action::TreatAsWithdraw, 5)
    );
    // AGGREGATOR of 6 octets on a 4-octet session: attribute-discard (7.7).
    let attrs = [&good_attrs()[..], &[0xc0, 7, 6, 0xfd, 0xe9, 1, 2, 3, 4]].concat();
    let (u, w) = warned(&update(&[], &attrs, &NLRI), &FOUR);
    assert_eq!(w[0].action, Action::AttributeDiscard);
    assert_eq!(u.attrs.unwrap().aggregator, None);
    // COMMUNITIES of 5 octets: treat-as-withdraw (7.8).
    let attrs = [&good_attrs()[..], &[0xc0, 8, 5, 0, 0, 0, 1, 2]].concat();
    let (_, w) = warned(&update(&[], &attrs, &NLRI), &FOUR);
    assert_eq!(w[0].action, Action::TreatAsWithdraw);
}

#[test]
fn open_errors() {
    let good = |f: &dyn Fn(&mut Vec<u8>)| {
        // version 4, AS 65001, hold 90, id 192.0.2.1, one capability (4-octet AS).
        let mut b = vec![
            4, 0xfd, 0xe9, 0, 90, 192, 0, 2, 1, 8, 2, 6, 65, 4, 0, 0, 0xfd, 0xe9,
        ];
        f(&mut b);
        msg(1, &b)
    };
    assert!(matches!(
        decode(&good(&|_| {}), &FOUR),
        Ok((Message::Open(_), _))
    ));
    let e = decode(&good(&|b| b[0] = 3), &FOUR)
        .unwrap_err()
        .notification();
    assert_eq!((e.code, e.subcode, e.data), (2, 1, vec![0, 4]));
    assert_eq!(err(&good(&|b| b[4] = 2), &FOUR), (2, 6));
    assert_eq!(err(&good(&|b| b[5..9].fill(0)), &FOUR), (2, 3));
    assert_eq!(err(&good(&|b| b[1..3].fill(0)), &FOUR), (2, 2));
    assert_eq!(err(&good(&|b| b[10] = 1), &FOUR), (2, 4));
    assert_eq!(err(&good(&|b| b[9] = 9), &FOUR), (2, 0));
    assert_eq!(err(&good(&|b| b[11] = 7), &FOUR), (2, 0));
    assert_eq!(err(&good(&|b| b[13] = 3), &FOUR), (2, 0));
}

#[test]
fn notification_names_display() {
    let n = Notification::new(3, 11, vec![]);
    assert_eq!(
        n.to_string(),
        "UPDATE Message Error / Malformed AS_PATH (3/11)"
    );
    assert_eq!(
        Notification::cease(2).to_string(),
        "Cease / Administrative Shutdown (6/2)"
    );
}

/// Refusals are typed per message kind; each names exactly one
/// NOTIFICATION, and UPDATE errors say what RFC 7606 did.
#[test]
fn typed_errors_name_their_notification_and_action() {
    let mut bad_marker = encode(&Message::Keepalive, &FOUR);
    bad_marker[3] = 0;
    let e = decode(&bad_marker, &FOUR).unwrap_err();
    assert_eq!(
        e,
        DecodeError::Header(HeaderError::ConnectionNotSynchronized)
    );
    assert_eq!(e.code(), ErrorCode::MessageHeader);

    let open = Open {
        version: 4,
        asn: 65001,
        hold_time: 90,
        router_id: Ipv4Addr::new(192, 0, 2, 1),
        capabilities: vec![],
    };
    let mut v3 = encode(&Message::Open(open), &FOUR);
    v3[19] = 3;
    let e = decode(&v3, &FOUR).unwrap_err();
    assert_eq!(e, DecodeError::Open(OpenError::UnsupportedVersion(3)));
    assert_eq!(Notification::from(e), Notification::new(2, 1, vec![0, 4]));

    // An unrecognized well-known attribute resets the session ...
    let attrs = [&good_attrs()[..], &[0x40, 99, 1, 7]].concat();
    let DecodeError::Update(u) = decode(&update(&[], &attrs, &NLRI), &FOUR).unwrap_err() else {
        panic!("an UPDATE error expected");
    };
    assert_eq!(
        (u.subcode, u.action, u.attr),
        (
            UpdateSubcode::UnrecognizedWellKnownAttribute,
            Action::SessionReset,
            Some(99)
        )
    );
    // ... a bad ORIGIN is treat-as-withdraw: a warning, the same subcode
    // names as a NOTIFICATION would carry.
    let attrs = [&[0x40, 1, 1, 9][..], &AS_PATH4, &NEXT_HOP].concat();
    let (u, w) = warned(&update(&[], &attrs, &NLRI), &FOUR);
    assert_eq!(u.withdrawn, vec![pfx("10.0.1.0/24")]);
    assert_eq!(w[0].action, Action::TreatAsWithdraw);
    assert_eq!(
        UpdateSubcode::try_from(w[0].error.subcode),
        Ok(UpdateSubcode::InvalidOriginAttribute)
    );

    // Code points convert both ways; unassigned ones stay octets.
    for n in 0..=u8::MAX {
        if let Ok(c) = ErrorCode::try_from(n) {
            assert_eq!(u8::from(c), n);
        }
        if let Ok(c) = CeaseSubcode::try_from(n) {
            assert_eq!(u8::from(c), n);
        }
    }
    assert_eq!(ErrorCode::try_from(8), Err(8));
    assert_eq!(
        Notification::from(CeaseSubcode::BfdDown).to_string(),
        "Cease / BFD Down (6/10)"
    );
}

#[test]
fn as4_path_is_merged_on_two_octet_sessions() {
    // What a 2-octet speaker forwards: AS_PATH 65002 23456 65003 with
    // AS4_PATH 4200000001 65003 (RFC 6793 4.2.3).
    let attrs = [
        &ORIGIN[..],
        &[0x40, 2, 8, 2, 3, 0xfd, 0xea, 0x5b, 0xa0, 0xfd, 0xeb],
        &NEXT_HOP[..],
        &[0xc0, 17, 10, 2, 2, 0xfa, 0x56, 0xea, 0x01, 0, 0, 0xfd, 0xeb],
    ]
    .concat();
    let (u, w) = warned(&update(&[], &attrs, &NLRI), &TWO);
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(
        u.attrs.unwrap().as_path,
        AsPath::from_sequence([65002, 4_200_000_001, 65003])
    );
    // On a 4-octet session an AS4_PATH is discarded (RFC 6793 4.1).
    let attrs = [&good_attrs()[..], &[0xc0, 17, 6, 2, 1, 0, 0, 0, 1]].concat();
    let (u, w) = warned(&update(&[], &attrs, &NLRI), &FOUR);
    assert_eq!(w[0].action, Action::AttributeDiscard);
    assert_eq!(u.attrs.unwrap().as_path, AsPath::from_sequence([65001]));
}

#[test]
fn four_octet_paths_go_to_two_octet_peers_as_as_trans_plus_as4_path() {
    let attrs = PathAttrs {
        as_path: AsPath {
            segments: vec![AsSegment::Sequence(vec![65001, 4_200_000_001])],
        },
        next_hop: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
        aggregator: Some((4_200_000_002, Ipv4Addr::new(192, 0, 2, 2))),
        ..PathAttrs::default()
    };
    let out = encode_updates(&[], Some(&attrs), &[pfx("10.0.0.0/8")], &TWO);
    let m = &out[0];
    // AS_PATH 65001 AS_TRANS.
    assert!(
        m.windows(9)
            .any(|w| w == [0x40, 2, 6, 2, 2, 0xfd, 0xe9, 0x5b, 0xa0])
    );
    // AS4_PATH carries the real path.
    assert!(m.windows(5).any(|w| w == [0xc0, 17, 10, 2, 2]));
    let (u, w) = warned(m, &TWO);
    assert!(w.is_empty());
    assert_eq!(u.attrs.unwrap(), attrs);
}

#[test]
fn end_of_rib_for_both_families() {
    for afi in [twill_bgpd::types::Afi::Ipv4, twill_bgpd::types::Afi::Ipv6] {
        let m = encode(&Message::Update(Update::end_of_rib(afi)), &FOUR);
        let (u, w) = warned(&m, &FOUR);
        assert!(w.is_empty());
        assert_eq!(u.is_end_of_rib(), Some(afi));
    }
    assert_eq!(
        encode(
            &Message::Update(Update::end_of_rib(twill_bgpd::types::Afi::Ipv4)),
            &FOUR
        )
        .len(),
        23
    );
}

#[test]
fn packing_keeps_every_update_within_4096_bytes() {
    let attrs = PathAttrs {
        as_path: AsPath::from_sequence([65001]),
        next_hop: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
        ..PathAttrs::default()
    };
    let v4: Vec<Prefix> = (0..5000u32)
        .map(|i| {
            Prefix::V4(
                ipnetwork::Ipv4Network::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).unwrap(),
            )
        })
        .collect();
    let v6: Vec<Prefix> = (0..3000u32)
        .map(|i| {
            let a = std::net::Ipv6Addr::from((0x2001_0db8u128 << 96) | (u128::from(i) << 64));
            Prefix::V6(ipnetwork::Ipv6Network::new(a, 64).unwrap())
        })
        .collect();
    let all: Vec<Prefix> = v4.iter().chain(&v6).copied().collect();
    for ctx in [TWO, FOUR] {
        let out = encode_updates(&all, Some(&attrs), &all, &ctx);
        let (mut w, mut a) = (Vec::new(), Vec::new());
        for m in &out {
            assert!(m.len() <= 4096, "{}", m.len());
            let (u, warn) = warned(m, &ctx);
            assert!(warn.is_empty());
            w.extend(u.withdrawn);
            a.extend(u.announced);
        }
        assert_eq!(w, all);
        assert_eq!(a, all);
        // Dense packing: 5000 /24 (4 octets each) fill 5 messages, 3000
        // /64 (9 octets) 7, once withdrawn and once announced.
        assert_eq!(out.len(), 2 * (5 + 7), "{} messages", out.len());
    }
}

#[test]
fn valid_but_unusual_messages_are_accepted() {
    // MP_REACH_NLRI with a non-zero Reserved octet (RFC 4760: ignored on
    // receipt; zettabgp reads it as an SNPA count and panics).
    let mut mp = vec![0x80, 14, 0, 0, 2, 1, 16];
    mp.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    mp.extend_from_slice(&[7, 32, 0x20, 1, 0xd, 0xb8]);
    mp[2] = (mp.len() - 3) as u8;
    let attrs = [&mp[..], &ORIGIN[..], &AS_PATH4[..]].concat();
    let (u, w) = warned(&update(&[], &attrs, &[]), &FOUR);
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(u.announced, vec![pfx("2001:db8::/32")]);
    // Confederation segments (RFC 5065) and the Partial bit on ORIGIN.
    let attrs = [
        &[0x60, 1, 1, 0][..],
        &[0x40, 2, 12, 3, 1, 0, 0, 0xfd, 0xe8, 2, 1, 0, 0, 0xfd, 0xe9],
        &NEXT_HOP[..],
    ]
    .concat();
    let (u, w) = warned(&update(&[], &attrs, &NLRI), &FOUR);
    assert!(w.is_empty(), "{w:?}");
    let path = u.attrs.unwrap().as_path;
    assert_eq!(path.to_string(), "(65000) 65001");
    // A NOTIFICATION with an unassigned subcode is still a NOTIFICATION.
    let (m, _) = decode(&msg(3, &[6, 200, 1, 2]), &FOUR).unwrap();
    assert_eq!(
        m,
        Message::Notification(Notification::new(6, 200, vec![1, 2]))
    );
}

#[test]
fn route_refresh_for_a_family_we_do_not_carry_is_ignored() {
    // AFI 25 (L2VPN): RFC 2918 4 says ignore it.
    let (m, w) = decode(&msg(5, &[0, 25, 0, 65]), &FOUR).unwrap();
    assert_eq!(m, Message::RouteRefreshUnsupported { afi: 25, safi: 65 });
    assert_ne!(m, Message::Keepalive, "never a KEEPALIVE");
    assert_eq!(
        twill_bgpd::wire::encode(&m, &FOUR),
        msg(5, &[0, 25, 0, 65]),
        "re-encodes as it came"
    );
    assert_eq!(w[0].action, Action::Ignore);
    let (m, w) = decode(&msg(5, &[0, 2, 0, 1]), &FOUR).unwrap();
    assert!(w.is_empty());
    assert_eq!(
        m,
        Message::RouteRefresh(twill_bgpd::wire::RouteRefresh {
            afi: twill_bgpd::types::Afi::Ipv6,
            subtype: 0
        })
    );
}

#[test]
fn as4_path_confederation_segments_are_dropped_and_malformed_ones_discarded() {
    // AS_PATH 65002 23456; AS4_PATH (65010) 4200000001: the confed segment
    // in AS4_PATH is dropped (RFC 6793 6), the merge still happens.
    let attrs = [
        &ORIGIN[..],
        &[0x40, 2, 6, 2, 2, 0xfd, 0xea, 0x5b, 0xa0],
        &NEXT_HOP[..],
        &[
            0xc0, 17, 12, 3, 1, 0, 0, 0xfd, 0xf2, 2, 1, 0xfa, 0x56, 0xea, 0x01,
        ],
    ]
    .concat();
    let (u, w) = warned(&update(&[], &attrs, &NLRI), &TWO);
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(
        u.attrs.unwrap().as_path,
        AsPath::from_sequence([65002, 4_200_000_001])
    );
    // A zero-count segment makes AS4_PATH malformed: attribute-discard, and
    // the AS_PATH stands as received.
    let attrs = [
        &ORIGIN[..],
        &[0x40, 2, 6, 2, 2, 0xfd, 0xea, 0x5b, 0xa0],
        &NEXT_HOP[..],
        &[0xc0, 17, 6, 2, 0, 0, 0, 0, 1],
    ]
    .concat();
    let (u, w) = warned(&update(&[], &attrs, &NLRI), &TWO);
    assert_eq!(w[0].action, Action::AttributeDiscard);
    assert_eq!(w[0].attr, Some(attr::AS4_PATH));
    assert_eq!(
        u.attrs.unwrap().as_path,
        AsPath::from_sequence([65002, 23456])
    );
}

#[test]
fn open_round_trips_with_capability_helpers() {
    use twill_bgpd::types::Afi;
    use twill_bgpd::wire::{Capability, GracefulRestart, Open};
    let open = Open {
        version: 4,
        asn: 4_200_000_000,
        hold_time: 9,
        router_id: Ipv4Addr::new(192, 0, 2, 1),
        capabilities: vec![
            Capability::Multiprotocol(Afi::Ipv6),
            Capability::RouteRefresh,
            Capability::FourOctetAs(4_200_000_000),
            Capability::GracefulRestart(GracefulRestart {
                restarting: true,
                time: 120,
                families: vec![(Afi::Ipv4, true)],
            }),
        ],
    };
    let bytes = encode(&Message::Open(open.clone()), &TWO);
    // The 2-octet My AS field carries AS_TRANS (RFC 6793 4.1).
    assert_eq!(&bytes[20..22], &23456u16.to_be_bytes());
    let (m, _) = decode(&bytes, &TWO).unwrap();
    assert_eq!((m.type_code(), m.type_name()), (1, "open"));
    let Message::Open(back) = m else {
        unreachable!()
    };
    assert_eq!(back, open);
    assert_eq!(back.four_octet_as(), Some(4_200_000_000));
    assert!(back.multiprotocol(Afi::Ipv6) && !back.multiprotocol(Afi::Ipv4));
    assert!(back.route_refresh());
    assert_eq!(back.graceful_restart().unwrap().time, 120);
}

/// RFC 8654: a 5,000-byte UPDATE is Bad Message Length unless extended
/// messages were negotiated; an OPEN never passes 4,096 bytes. Attributes
/// too large for 4,096 bytes are packed into one extended UPDATE instead of
/// being withdrawn.
#[test]
fn extended_messages_raise_the_limit_only_when_negotiated() {
    use twill_bgpd::types::Community;
    // 1,200 communities: 4,800 bytes of attribute value.
    let comms: Vec<u8> = (0..1200u32).flat_map(|c| c.to_be_bytes()).collect();
    let mut comm_attr = vec![0xd0, 8];
    comm_attr.extend_from_slice(&(comms.len() as u16).to_be_bytes());
    comm_attr.extend_from_slice(&comms);
    let attrs = [&ORIGIN[..], &AS_PATH4[..], &NEXT_HOP[..], &comm_attr[..]].concat();
    let big = update(&[], &attrs, &[24, 10, 1, 0]);
    assert!(big.len() > 4096);
    let e = frame_len(&big).unwrap_err().notification();
    assert_eq!(
        (e.code, e.subcode),
        (1, 2),
        "Bad Message Length without RFC 8654"
    );
    assert!(decode(&big, &FOUR).is_err());
    assert_eq!(frame_len_in(&big, &EXT).unwrap(), Some(big.len()));
    let (m, w) = decode(&big, &EXT).unwrap();
    assert!(w.is_empty(), "{w:?}");
    let Message::Update(u) = m else {
        panic!("{m:?}")
    };
    assert_eq!(u.announced, vec![pfx("10.1.0.0/24")]);
    assert_eq!(u.attrs.unwrap().communities.len(), 1200);
    // An OPEN header claiming 5,000 bytes is refused even then.
    let mut open_hdr = vec![0xff; 16];
    open_hdr.extend_from_slice(&5000u16.to_be_bytes());
    open_hdr.push(1);
    assert!(frame_len_in(&open_hdr, &EXT).is_err());
    // Encoding: withdrawn without RFC 8654, one UPDATE with it.
    let mut pa = PathAttrs {
        next_hop: Some("192.0.2.1".parse().unwrap()),
        ..PathAttrs::default()
    };
    for c in 0..1200u32 {
        pa.add_community(Community(c));
    }
    let p = [pfx("10.1.0.0/24")];
    let (msgs, unsent) = encode_updates_checked(&[], Some(&pa), &p, &FOUR);
    assert!(msgs.is_empty());
    assert_eq!(unsent, p);
    let (msgs, unsent) = encode_updates_checked(&[], Some(&pa), &p, &EXT);
    assert!(unsent.is_empty());
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0].len() > 4096 && msgs[0].len() <= 65535);
    let (m, _) = decode(&msgs[0], &EXT).unwrap();
    let Message::Update(u) = m else {
        panic!("{m:?}")
    };
    assert_eq!(u.announced, p);
}
