//! The encoder: messages to bytes, and route sets packed into UPDATEs of at
//! most 4096 octets. IPv4 goes in the classic fields with NEXT_HOP (or in
//! MP_REACH_NLRI when the next hop is IPv6, RFC 8950), IPv6 in
//! MP_REACH_NLRI / MP_UNREACH_NLRI, which come first among the attributes
//! (RFC 7606 5.1). Towards a 2-octet peer, 4-octet AS numbers become AS_TRANS
//! and the true path travels in AS4_PATH / AS4_AGGREGATOR (RFC 6793 4.2.2).

use std::net::IpAddr;

use super::attrs::{attr, flag};
use super::message::{Capability, Message, Open, Update, cap, msg_type};
use super::{Ctx, HEADER_LEN};
use crate::types::{AS_TRANS, Afi, AsPath, AsSegment, Asn, PathAttrs, Prefix, SAFI_UNICAST};

fn start(ty: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[0xff; 16]);
    out.extend_from_slice(&[0, 0, ty]);
    out
}

fn finish(mut out: Vec<u8>) -> Vec<u8> {
    let len = u16::try_from(out.len()).unwrap_or(u16::MAX).to_be_bytes();
    out[16] = len[0];
    out[17] = len[1];
    out
}

pub(crate) fn message(msg: &Message, ctx: &Ctx) -> Vec<u8> {
    match msg {
        Message::Open(o) => open(o),
        Message::Update(u) => update(u, ctx),
        Message::Notification(n) => {
            let mut out = start(msg_type::NOTIFICATION);
            out.push(n.code);
            out.push(n.subcode);
            let room = ctx.max_len() - HEADER_LEN - 2;
            out.extend_from_slice(&n.data[..n.data.len().min(room)]);
            finish(out)
        }
        Message::Keepalive => finish(start(msg_type::KEEPALIVE)),
        Message::RouteRefresh(r) => {
            let mut out = start(msg_type::ROUTE_REFRESH);
            out.extend_from_slice(&r.afi.code().to_be_bytes());
            out.push(r.subtype);
            out.push(SAFI_UNICAST);
            finish(out)
        }
        Message::RouteRefreshUnsupported { afi, safi } => {
            let mut out = start(msg_type::ROUTE_REFRESH);
            out.extend_from_slice(&afi.to_be_bytes());
            out.push(0);
            out.push(*safi);
            finish(out)
        }
    }
}

fn capability(c: &Capability, out: &mut Vec<u8>) {
    let mut tlv = |code: u8, value: &[u8]| {
        out.push(code);
        out.push(value.len().min(255) as u8);
        out.extend_from_slice(&value[..value.len().min(255)]);
    };
    match c {
        Capability::Multiprotocol(afi) => {
            let a = afi.code().to_be_bytes();
            tlv(cap::MULTIPROTOCOL, &[a[0], a[1], 0, SAFI_UNICAST]);
        }
        Capability::RouteRefresh => tlv(cap::ROUTE_REFRESH, &[]),
        Capability::FourOctetAs(asn) => tlv(cap::FOUR_OCTET_AS, &asn.to_be_bytes()),
        Capability::GracefulRestart(gr) => {
            let head = (u16::from(gr.restarting) << 15) | (gr.time & 0x0fff);
            let mut v = head.to_be_bytes().to_vec();
            for (afi, fwd) in &gr.families {
                v.extend_from_slice(&afi.code().to_be_bytes());
                v.push(SAFI_UNICAST);
                v.push(if *fwd { 0x80 } else { 0 });
            }
            tlv(cap::GRACEFUL_RESTART, &v);
        }
        Capability::Unknown { code, value } => tlv(*code, value),
    }
}

/// OPEN (RFC 4271 4.2). Capabilities go in Capabilities optional
/// parameters (RFC 5492 4), several when they exceed one parameter's 255
/// octets; parameters beyond the 255-octet Optional Parameters Length are
/// not sent (RFC 9072 extended parameters are not implemented).
fn open(o: &Open) -> Vec<u8> {
    let mut out = start(msg_type::OPEN);
    out.push(o.version);
    let my_as = u16::try_from(o.asn).unwrap_or(AS_TRANS as u16);
    out.extend_from_slice(&my_as.to_be_bytes());
    out.extend_from_slice(&o.hold_time.to_be_bytes());
    out.extend_from_slice(&o.router_id.octets());
    let mut params: Vec<u8> = Vec::new();
    let mut param: Vec<u8> = Vec::new();
    let flush = |param: &mut Vec<u8>, params: &mut Vec<u8>| {
        if !param.is_empty() && params.len() + 2 + param.len() <= 255 {
            params.push(2);
            params.push(param.len() as u8);
            params.append(param);
        }
        param.clear();
    };
    for c in &o.capabilities {
        let mut one = Vec::new();
        capability(c, &mut one);
        if param.len() + one.len() > 255 {
            flush(&mut param, &mut params);
        }
        param.extend_from_slice(&one);
    }
    flush(&mut param, &mut params);
    out.push(params.len() as u8);
    out.extend_from_slice(&params);
    finish(out)
}

/// Octets a prefix takes in NLRI.
pub(crate) fn prefix_len(p: &Prefix) -> usize {
    1 + usize::from(p.prefix()).div_ceil(8)
}

fn put_prefix(p: &Prefix, out: &mut Vec<u8>) {
    let bits = p.prefix();
    out.push(bits);
    let n = usize::from(bits).div_ceil(8);
    match p.network() {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()[..n]),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()[..n]),
    }
}

fn put_attr(out: &mut Vec<u8>, flags: u8, code: u8, value: &[u8]) {
    if value.len() > 255 {
        out.push(flags | flag::EXTENDED_LENGTH);
        out.push(code);
        out.extend_from_slice(&(value.len().min(0xffff) as u16).to_be_bytes());
    } else {
        out.push(flags & !flag::EXTENDED_LENGTH);
        out.push(code);
        out.push(value.len() as u8);
    }
    out.extend_from_slice(&value[..value.len().min(0xffff)]);
}

fn path_bytes(path: &AsPath, four: bool, skip_confed: bool) -> Vec<u8> {
    let mut v = Vec::new();
    for seg in &path.segments {
        let (ty, asns) = match seg {
            AsSegment::Set(a) => (1u8, a),
            AsSegment::Sequence(a) => (2, a),
            AsSegment::ConfedSequence(a) => (3, a),
            AsSegment::ConfedSet(a) => (4, a),
        };
        if skip_confed && ty > 2 {
            continue;
        }
        // A segment holds at most 255 AS numbers (RFC 4271 4.3).
        for chunk in asns.chunks(255) {
            v.push(ty);
            v.push(chunk.len() as u8);
            for &asn in chunk {
                if four {
                    v.extend_from_slice(&asn.to_be_bytes());
                } else {
                    let two = u16::try_from(asn).unwrap_or(AS_TRANS as u16);
                    v.extend_from_slice(&two.to_be_bytes());
                }
            }
        }
    }
    v
}

fn is_four_octet(asn: Asn) -> bool {
    asn > 0xffff
}

/// The path attributes other than MP_REACH/MP_UNREACH, NEXT_HOP included
/// only when asked.
pub(crate) fn path_attrs(a: &PathAttrs, ctx: &Ctx, with_next_hop: bool) -> Vec<u8> {
    let wk = flag::TRANSITIVE;
    let ot = flag::OPTIONAL | flag::TRANSITIVE;
    let on = flag::OPTIONAL;
    let four = ctx.four_octet_as;
    let mut out = Vec::with_capacity(64);
    put_attr(&mut out, wk, attr::ORIGIN, &[a.origin as u8]);
    put_attr(
        &mut out,
        wk,
        attr::AS_PATH,
        &path_bytes(&a.as_path, four, false),
    );
    if with_next_hop && let Some(IpAddr::V4(nh)) = a.next_hop {
        put_attr(&mut out, wk, attr::NEXT_HOP, &nh.octets());
    }
    if let Some(med) = a.med {
        put_attr(&mut out, on, attr::MULTI_EXIT_DISC, &med.to_be_bytes());
    }
    if let Some(lp) = a.local_pref {
        put_attr(&mut out, wk, attr::LOCAL_PREF, &lp.to_be_bytes());
    }
    if a.atomic_aggregate {
        put_attr(&mut out, wk, attr::ATOMIC_AGGREGATE, &[]);
    }
    if let Some((asn, ip)) = a.aggregator {
        let mut v = Vec::with_capacity(8);
        if four {
            v.extend_from_slice(&asn.to_be_bytes());
        } else {
            let two = u16::try_from(asn).unwrap_or(AS_TRANS as u16);
            v.extend_from_slice(&two.to_be_bytes());
        }
        v.extend_from_slice(&ip.octets());
        put_attr(&mut out, ot, attr::AGGREGATOR, &v);
    }
    if !a.communities.is_empty() {
        let v: Vec<u8> = a
            .communities
            .iter()
            .flat_map(|c| c.0.to_be_bytes())
            .collect();
        put_attr(&mut out, ot, attr::COMMUNITIES, &v);
    }
    if let Some(id) = a.originator_id {
        put_attr(&mut out, on, attr::ORIGINATOR_ID, &id.octets());
    }
    if !a.cluster_list.is_empty() {
        let v: Vec<u8> = a.cluster_list.iter().flat_map(|c| c.octets()).collect();
        put_attr(&mut out, on, attr::CLUSTER_LIST, &v);
    }
    if !four {
        // RFC 6793 4.2.2: AS4_PATH (without confederation segments) when the
        // path holds a 4-octet AS, AS4_AGGREGATOR when the aggregator is one.
        let needs_as4 = a.as_path.segments.iter().any(|s| match s {
            AsSegment::Sequence(v) | AsSegment::Set(v) => v.iter().any(|&x| is_four_octet(x)),
            _ => false,
        });
        if needs_as4 {
            put_attr(
                &mut out,
                ot,
                attr::AS4_PATH,
                &path_bytes(&a.as_path, true, true),
            );
        }
        if let Some((asn, ip)) = a.aggregator.filter(|(asn, _)| is_four_octet(*asn)) {
            let mut v = asn.to_be_bytes().to_vec();
            v.extend_from_slice(&ip.octets());
            put_attr(&mut out, ot, attr::AS4_AGGREGATOR, &v);
        }
    }
    if !a.large_communities.is_empty() {
        let v: Vec<u8> = a
            .large_communities
            .iter()
            .flat_map(|c| {
                let mut b = [0u8; 12];
                b[..4].copy_from_slice(&c.global.to_be_bytes());
                b[4..8].copy_from_slice(&c.local1.to_be_bytes());
                b[8..].copy_from_slice(&c.local2.to_be_bytes());
                b
            })
            .collect();
        put_attr(&mut out, ot, attr::LARGE_COMMUNITY, &v);
    }
    for u in &a.unknown {
        // RFC 4271 5: an unrecognized optional transitive attribute passed
        // on gets the Partial bit.
        let flags = (u.flags & (flag::OPTIONAL | flag::TRANSITIVE)) | flag::PARTIAL;
        put_attr(&mut out, flags, u.code, &u.value);
    }
    out
}

/// MP next hop bytes (RFC 4760 3, RFC 2545 3): an IPv4 next hop for IPv6
/// prefixes goes as IPv4-mapped IPv6 (RFC 4291 2.5.5.2); for IPv4 prefixes
/// it is 4 octets.
fn mp_next_hop(a: &PathAttrs, afi: Afi) -> Vec<u8> {
    match (a.next_hop, afi) {
        (Some(IpAddr::V4(v4)), Afi::Ipv4) => v4.octets().to_vec(),
        (Some(IpAddr::V4(v4)), Afi::Ipv6) => v4.to_ipv6_mapped().octets().to_vec(),
        (Some(IpAddr::V6(v6)), _) => {
            let mut v = v6.octets().to_vec();
            if let Some(ll) = a.next_hop_link_local {
                v.extend_from_slice(&ll.octets());
            }
            v
        }
        (None, Afi::Ipv4) => vec![0; 4],
        (None, Afi::Ipv6) => vec![0; 16],
    }
}

fn mp_reach(afi: Afi, nh: &[u8], prefixes: &[Prefix]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + nh.len() + prefixes.len() * 8);
    v.extend_from_slice(&afi.code().to_be_bytes());
    v.push(SAFI_UNICAST);
    v.push(nh.len() as u8);
    v.extend_from_slice(nh);
    v.push(0);
    for p in prefixes {
        put_prefix(p, &mut v);
    }
    v
}

fn mp_unreach(afi: Afi, prefixes: &[Prefix]) -> Vec<u8> {
    let mut v = Vec::with_capacity(3 + prefixes.len() * 8);
    v.extend_from_slice(&afi.code().to_be_bytes());
    v.push(SAFI_UNICAST);
    for p in prefixes {
        put_prefix(p, &mut v);
    }
    v
}

/// One UPDATE from its parts: classic withdrawn, attribute section, NLRI.
fn assemble(withdrawn: &[Prefix], attrs: &[u8], nlri: &[Prefix]) -> Vec<u8> {
    let mut out = start(msg_type::UPDATE);
    let wlen: usize = withdrawn.iter().map(prefix_len).sum();
    out.extend_from_slice(&(wlen.min(0xffff) as u16).to_be_bytes());
    for p in withdrawn {
        put_prefix(p, &mut out);
    }
    out.extend_from_slice(&(attrs.len().min(0xffff) as u16).to_be_bytes());
    out.extend_from_slice(attrs);
    for p in nlri {
        put_prefix(p, &mut out);
    }
    finish(out)
}

fn split(prefixes: &[Prefix]) -> (Vec<Prefix>, Vec<Prefix>) {
    prefixes.iter().partition(|p| Afi::of(p) == Afi::Ipv4)
}

/// One UPDATE holding everything in `u` (see `encode_updates` for packing).
/// With an IPv6 next hop and announcements of both families, the IPv4 ones
/// go in the classic NLRI without a NEXT_HOP: one UPDATE cannot carry two
/// MP_REACH_NLRI. `encode_updates` never builds that.
fn update(u: &Update, ctx: &Ctx) -> Vec<u8> {
    let (w4, w6) = split(&u.withdrawn);
    let (a4, a6) = split(&u.announced);
    let mut attrs = Vec::new();
    if !w6.is_empty() || u.eor == Some(Afi::Ipv6) {
        put_attr(
            &mut attrs,
            flag::OPTIONAL,
            attr::MP_UNREACH_NLRI,
            &mp_unreach(Afi::Ipv6, &w6),
        );
    }
    let mut classic = a4.as_slice();
    if let Some(a) = &u.attrs {
        let v6_nh = matches!(a.next_hop, Some(IpAddr::V6(_)));
        if v6_nh && a6.is_empty() {
            // RFC 8950: IPv4 prefixes with an IPv6 next hop.
            let nh = mp_next_hop(a, Afi::Ipv4);
            put_attr(
                &mut attrs,
                flag::OPTIONAL,
                attr::MP_REACH_NLRI,
                &mp_reach(Afi::Ipv4, &nh, &a4),
            );
            classic = &[];
        } else if !a6.is_empty() || v6_nh {
            let nh = mp_next_hop(a, Afi::Ipv6);
            put_attr(
                &mut attrs,
                flag::OPTIONAL,
                attr::MP_REACH_NLRI,
                &mp_reach(Afi::Ipv6, &nh, &a6),
            );
        }
        attrs.extend_from_slice(&path_attrs(a, ctx, !v6_nh));
    }
    assemble(&w4, &attrs, classic)
}

/// Packs `items` greedily into chunks whose encoded size fits `room`.
/// Items from the first one that fits no chunk on (the attributes alone
/// nearly fill a message) come back as the second value.
fn chunks(items: &[Prefix], room: usize) -> (Vec<&[Prefix]>, &[Prefix]) {
    let mut out = Vec::new();
    let mut start = 0;
    while start < items.len() {
        let mut used = 0;
        let mut end = start;
        while let Some(p) = items.get(end) {
            if used + prefix_len(p) > room {
                break;
            }
            used += prefix_len(p);
            end += 1;
        }
        if end == start {
            break;
        }
        out.push(&items[start..end]);
        start = end;
    }
    (out, items.get(start..).unwrap_or_default())
}

/// Attribute header size for a value of this length.
fn attr_hdr(value_len: usize) -> usize {
    if value_len > 255 { 4 } else { 3 }
}

/// Encoded UPDATEs and the announced prefixes that fit no message (their
/// attributes take nearly all of the session's largest message).
pub(crate) struct Packed {
    pub messages: Vec<Vec<u8>>,
    pub unsent: Vec<Prefix>,
}

pub(crate) fn updates(
    withdrawn: &[Prefix],
    attrs: Option<&PathAttrs>,
    announced: &[Prefix],
    ctx: &Ctx,
) -> Packed {
    const FIXED: usize = HEADER_LEN + 4;
    let mut out = Vec::new();
    let mut unsent = Vec::new();
    let (w4, w6) = split(withdrawn);
    // A withdrawal always fits: the room is far larger than one prefix.
    let max = ctx.max_len();
    for c in chunks(&w4, max - FIXED).0 {
        out.push(assemble(c, &[], &[]));
    }
    // MP_UNREACH with extended length: 4 header + AFI/SAFI 3.
    for c in chunks(&w6, max - FIXED - 4 - 3).0 {
        let v = mp_unreach(Afi::Ipv6, c);
        let mut a = Vec::with_capacity(v.len() + 4);
        put_attr(&mut a, flag::OPTIONAL, attr::MP_UNREACH_NLRI, &v);
        out.push(assemble(&[], &a, &[]));
    }
    let Some(pa) = attrs else {
        return Packed {
            messages: out,
            unsent,
        };
    };
    let (a4, a6) = split(announced);
    let v6_nh = matches!(pa.next_hop, Some(IpAddr::V6(_)));
    if !a4.is_empty() {
        if v6_nh {
            mp_packed(Afi::Ipv4, pa, &a4, ctx, &mut out, &mut unsent);
        } else {
            let common = path_attrs(pa, ctx, true);
            match max.checked_sub(FIXED + common.len()) {
                Some(room) => {
                    let (cs, rest) = chunks(&a4, room);
                    for c in cs {
                        out.push(assemble(&[], &common, c));
                    }
                    unsent.extend_from_slice(rest);
                }
                None => unsent.extend_from_slice(&a4),
            }
        }
    }
    if !a6.is_empty() {
        mp_packed(Afi::Ipv6, pa, &a6, ctx, &mut out, &mut unsent);
    }
    Packed {
        messages: out,
        unsent,
    }
}

fn mp_packed(
    afi: Afi,
    pa: &PathAttrs,
    prefixes: &[Prefix],
    ctx: &Ctx,
    out: &mut Vec<Vec<u8>>,
    unsent: &mut Vec<Prefix>,
) {
    const FIXED: usize = HEADER_LEN + 4;
    let common = path_attrs(pa, ctx, false);
    let nh = mp_next_hop(pa, afi);
    let overhead = FIXED + common.len() + attr_hdr(256) + 5 + nh.len();
    let Some(room) = ctx.max_len().checked_sub(overhead) else {
        unsent.extend_from_slice(prefixes);
        return;
    };
    let (cs, rest) = chunks(prefixes, room);
    unsent.extend_from_slice(rest);
    out.extend(cs.into_iter().map(|c| {
        let mut a = Vec::with_capacity(room + 64);
        put_attr(
            &mut a,
            flag::OPTIONAL,
            attr::MP_REACH_NLRI,
            &mp_reach(afi, &nh, c),
        );
        a.extend_from_slice(&common);
        assemble(&[], &a, &[])
    }));
}
