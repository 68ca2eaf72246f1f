//! The decoder: reads messages the validator has passed into the shared
//! types. It trusts the structure the validator checked (lengths, counts,
//! prefix lengths) but still reads through `get`, so a validator bug becomes
//! an error, never a panic.
//!
//! Hand-written rather than zettabgp or netgauze-bgp-pkt: see the module doc
//! of `wire` for the measurements behind that choice.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use super::message::{Capability, GracefulRestart, Message, Open, RouteRefresh, Update, cap};
use super::notification::{Notification, Warning, update};
use super::validate::{Checked, MpSpan, UpdatePlan, attr, flag};
use super::{Ctx, HEADER_LEN};
use crate::types::{
    AS_TRANS, Afi, AsPath, AsSegment, Asn, Community, LargeCommunity, Origin, PathAttrs, Prefix,
    RawAttr, SAFI_UNICAST,
};

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([
        *b.get(at)?,
        *b.get(at.checked_add(1)?)?,
    ]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn ipv4(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    be32(b, at).map(Ipv4Addr::from)
}

fn ipv6(b: &[u8], at: usize) -> Option<Ipv6Addr> {
    let s: [u8; 16] = b.get(at..at.checked_add(16)?)?.try_into().ok()?;
    Some(Ipv6Addr::from(s))
}

/// A validator/decoder disagreement: never expected, reported rather than
/// panicking.
fn internal() -> Notification {
    Notification::update(update::MALFORMED_ATTRIBUTE_LIST, Vec::new())
}

pub(crate) fn message(
    checked: Checked,
    body: &[u8],
    ctx: &Ctx,
) -> Result<(Message, Vec<Warning>), Notification> {
    match checked {
        Checked::Open => Ok((Message::Open(open(body).ok_or_else(internal)?), Vec::new())),
        Checked::Update(plan) => {
            let mut plan = plan;
            let warnings = std::mem::take(&mut plan.warnings);
            let u = update_msg(body, &plan, ctx).ok_or_else(internal)?;
            Ok((Message::Update(u), warnings))
        }
        Checked::Notification => {
            let code = *body.first().ok_or_else(internal)?;
            let subcode = *body.get(1).ok_or_else(internal)?;
            let data = body.get(2..).unwrap_or_default().to_vec();
            Ok((
                Message::Notification(Notification::new(code, subcode, data)),
                Vec::new(),
            ))
        }
        Checked::Keepalive => Ok((Message::Keepalive, Vec::new())),
        Checked::RouteRefresh(Some(afi)) => Ok((
            Message::RouteRefresh(RouteRefresh {
                afi,
                subtype: body.get(2).copied().unwrap_or_default(),
            }),
            Vec::new(),
        )),
        Checked::RouteRefresh(None) => Ok((
            // RFC 2918 4: a refresh for a family we did not advertise is
            // ignored (by the session, which knows the state it came in).
            Message::RouteRefreshUnsupported {
                afi: be16(body, 0).ok_or_else(internal)?,
                safi: *body.get(3).ok_or_else(internal)?,
            },
            vec![Warning {
                action: super::Action::Ignore,
                attr: None,
                error: Notification::new(super::code::ROUTE_REFRESH, 0, body.to_vec()),
            }],
        )),
    }
}

fn open(body: &[u8]) -> Option<Open> {
    let version = *body.first()?;
    let my_as = be16(body, 1)?;
    let hold_time = be16(body, 3)?;
    let router_id = ipv4(body, 5)?;
    let opt_len = usize::from(*body.get(9)?);
    let params = body.get(10..10 + opt_len)?;
    let mut capabilities = Vec::new();
    let mut i = 0;
    while i < params.len() {
        let len = usize::from(*params.get(i + 1)?);
        let caps = params.get(i + 2..i + 2 + len)?;
        i += 2 + len;
        let mut j = 0;
        while j < caps.len() {
            let code = *caps.get(j)?;
            let clen = usize::from(*caps.get(j + 1)?);
            let value = caps.get(j + 2..j + 2 + clen)?;
            j += 2 + clen;
            capabilities.push(capability(code, value)?);
        }
    }
    let asn = capabilities
        .iter()
        .find_map(|c| match c {
            Capability::FourOctetAs(a) => Some(*a),
            _ => None,
        })
        .unwrap_or(Asn::from(my_as));
    Some(Open {
        version,
        asn,
        hold_time,
        router_id,
        capabilities,
    })
}

fn capability(code: u8, value: &[u8]) -> Option<Capability> {
    let unknown = || Capability::Unknown {
        code,
        value: value.to_vec(),
    };
    Some(match code {
        cap::MULTIPROTOCOL => {
            // RFC 4760 8: AFI (2), reserved (1), SAFI (1).
            match Afi::from_code(be16(value, 0)?) {
                // The reserved octet is ignored on receipt (RFC 4760 8).
                Some(afi) if value.get(3) == Some(&SAFI_UNICAST) => Capability::Multiprotocol(afi),
                _ => unknown(),
            }
        }
        cap::ROUTE_REFRESH => Capability::RouteRefresh,
        cap::FOUR_OCTET_AS => Capability::FourOctetAs(be32(value, 0)?),
        cap::GRACEFUL_RESTART => {
            // RFC 4724 3: flags (4 bits) + restart time (12 bits), then
            // (AFI, SAFI, flags) per family.
            let head = be16(value, 0)?;
            let mut families = Vec::new();
            for f in value.get(2..)?.chunks_exact(4) {
                if let (Some(afi), SAFI_UNICAST) = (Afi::from_code(be16(f, 0)?), f[2]) {
                    families.push((afi, f[3] & 0x80 != 0));
                }
            }
            Capability::GracefulRestart(GracefulRestart {
                restarting: head & 0x8000 != 0,
                time: head & 0x0fff,
                families,
            })
        }
        _ => unknown(),
    })
}

/// Appends the prefixes of a validated NLRI run, host bits cleared.
pub(crate) fn push_prefixes(b: &[u8], afi: Afi, out: &mut Vec<Prefix>) -> Option<()> {
    let mut i = 0;
    while i < b.len() {
        let bits = *b.get(i)?;
        let n = usize::from(bits).div_ceil(8);
        let bytes = b.get(i + 1..i + 1 + n)?;
        i += 1 + n;
        out.push(match afi {
            Afi::Ipv4 => {
                let mut a = [0u8; 4];
                a.get_mut(..n)?.copy_from_slice(bytes);
                let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
                let addr = Ipv4Addr::from(u32::from_be_bytes(a) & mask);
                IpNetwork::V4(Ipv4Network::new(addr, bits).ok()?)
            }
            Afi::Ipv6 => {
                let mut a = [0u8; 16];
                a.get_mut(..n)?.copy_from_slice(bytes);
                let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
                let addr = Ipv6Addr::from(u128::from_be_bytes(a) & mask);
                IpNetwork::V6(Ipv6Network::new(addr, bits).ok()?)
            }
        });
    }
    Some(())
}

fn mp_prefixes(body: &[u8], mp: &Option<MpSpan>, out: &mut Vec<Prefix>) -> Option<()> {
    match mp {
        Some(m) => push_prefixes(body.get(m.nlri.clone())?, m.afi, out),
        None => Some(()),
    }
}

fn update_msg(body: &[u8], plan: &UpdatePlan, ctx: &Ctx) -> Option<Update> {
    let mut withdrawn = Vec::new();
    push_prefixes(body.get(plan.withdrawn.clone())?, Afi::Ipv4, &mut withdrawn)?;
    mp_prefixes(body, &plan.mp_unreach, &mut withdrawn)?;
    let classic = body.get(plan.nlri.clone())?;
    let mut announced = Vec::with_capacity(plan.nlri_count);
    push_prefixes(classic, Afi::Ipv4, &mut announced)?;
    mp_prefixes(body, &plan.mp_reach, &mut announced)?;

    // RFC 4724 2: End-of-RIB is an empty UPDATE (IPv4) or one holding only
    // an empty MP_UNREACH_NLRI.
    let eor = if plan.attr_count == 0 && withdrawn.is_empty() && announced.is_empty() {
        Some(Afi::Ipv4)
    } else if plan.attr_count == 1 && withdrawn.is_empty() && announced.is_empty() {
        plan.mp_unreach.as_ref().map(|m| m.afi)
    } else {
        None
    };

    if plan.withdraw {
        // RFC 7606 2: treat-as-withdraw.
        withdrawn.append(&mut announced);
        return Some(Update {
            withdrawn,
            attrs: None,
            announced,
            eor: None,
        });
    }
    let attrs = if plan.attrs.is_empty() && plan.mp_reach.is_none() {
        None
    } else {
        Some(path_attrs(body, plan, ctx, !classic.is_empty())?)
    };
    Some(Update {
        withdrawn,
        attrs,
        announced,
        eor,
    })
}

fn as_path(v: &[u8], asn_size: usize) -> Option<AsPath> {
    let mut segments = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let ty = *v.get(i)?;
        let count = usize::from(*v.get(i + 1)?);
        let mut asns = Vec::with_capacity(count);
        for k in 0..count {
            let at = i + 2 + k * asn_size;
            asns.push(if asn_size == 4 {
                be32(v, at)?
            } else {
                Asn::from(be16(v, at)?)
            });
        }
        i += 2 + count * asn_size;
        segments.push(match ty {
            1 => AsSegment::Set(asns),
            2 => AsSegment::Sequence(asns),
            3 => AsSegment::ConfedSequence(asns),
            4 => AsSegment::ConfedSet(asns),
            _ => return None,
        });
    }
    Some(AsPath { segments })
}

fn path_attrs(body: &[u8], plan: &UpdatePlan, ctx: &Ctx, classic_nlri: bool) -> Option<PathAttrs> {
    let mut a = PathAttrs::default();
    let asn_size = if ctx.four_octet_as { 4 } else { 2 };
    let mut next_hop4 = None;
    let mut as4_path = None;
    let mut as4_aggregator = None;
    for s in &plan.attrs {
        let v = body.get(s.value.clone())?;
        match s.code {
            attr::ORIGIN => {
                a.origin = match v.first()? {
                    0 => Origin::Igp,
                    1 => Origin::Egp,
                    _ => Origin::Incomplete,
                }
            }
            attr::AS_PATH => a.as_path = as_path(v, asn_size)?,
            attr::NEXT_HOP => next_hop4 = Some(ipv4(v, 0)?),
            attr::MULTI_EXIT_DISC => a.med = Some(be32(v, 0)?),
            attr::LOCAL_PREF => a.local_pref = Some(be32(v, 0)?),
            attr::ATOMIC_AGGREGATE => a.atomic_aggregate = true,
            attr::AGGREGATOR => {
                a.aggregator = Some(if asn_size == 4 {
                    (be32(v, 0)?, ipv4(v, 4)?)
                } else {
                    (Asn::from(be16(v, 0)?), ipv4(v, 2)?)
                })
            }
            attr::COMMUNITIES => {
                a.communities = v
                    .chunks_exact(4)
                    .map(|c| Community(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                    .collect();
                a.communities.sort_unstable();
                a.communities.dedup();
            }
            attr::ORIGINATOR_ID => a.originator_id = Some(ipv4(v, 0)?),
            attr::CLUSTER_LIST => {
                a.cluster_list = v
                    .chunks_exact(4)
                    .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                    .collect()
            }
            attr::AS4_PATH => as4_path = Some(as_path(v, 4)?),
            attr::AS4_AGGREGATOR => as4_aggregator = Some((be32(v, 0)?, ipv4(v, 4)?)),
            attr::LARGE_COMMUNITY => {
                let mut l: Vec<LargeCommunity> = v
                    .chunks_exact(12)
                    .map(|c| LargeCommunity {
                        global: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                        local1: u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
                        local2: u32::from_be_bytes([c[8], c[9], c[10], c[11]]),
                    })
                    .collect();
                l.sort_unstable();
                l.dedup();
                a.large_communities = l;
            }
            code => a.unknown.push(RawAttr {
                flags: s.flags & (flag::OPTIONAL | flag::TRANSITIVE | flag::PARTIAL),
                code,
                value: v.to_vec(),
            }),
        }
    }
    if !ctx.four_octet_as {
        merge_as4(&mut a, as4_path, as4_aggregator);
    }
    // The classic NEXT_HOP serves the classic NLRI; an MP_REACH_NLRI's next
    // hop serves its own prefixes (one next hop per decoded UPDATE: an
    // UPDATE carrying both kinds keeps the classic one).
    let mp_nh = match &plan.mp_reach {
        Some(m) => {
            let nh = body.get(m.next_hop.clone())?;
            match nh.len() {
                4 => Some((IpAddr::V4(ipv4(nh, 0)?), None)),
                16 => Some((unmap(ipv6(nh, 0)?), None)),
                _ => Some((unmap(ipv6(nh, 0)?), Some(ipv6(nh, 16)?))),
            }
        }
        None => None,
    };
    match (next_hop4, mp_nh) {
        (Some(nh), _) if classic_nlri => a.next_hop = Some(IpAddr::V4(nh)),
        (_, Some((nh, ll))) => {
            a.next_hop = Some(nh);
            a.next_hop_link_local = ll;
        }
        (nh, None) => a.next_hop = nh.map(IpAddr::V4),
    }
    Some(a)
}

/// An IPv4-mapped IPv6 next hop (RFC 4291 2.5.5.2) is an IPv4 next hop.
fn unmap(a: Ipv6Addr) -> IpAddr {
    match a.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(a),
    }
}

/// RFC 6793 4.2.3: rebuild the true path from AS_PATH and AS4_PATH on a
/// session with a 2-octet speaker.
fn merge_as4(a: &mut PathAttrs, as4_path: Option<AsPath>, as4_aggregator: Option<(Asn, Ipv4Addr)>) {
    // "If the AGGREGATOR attribute contains an AS number other than AS_TRANS,
    // then: if the AS4_AGGREGATOR attribute is present, both the
    // AS4_AGGREGATOR and the AS4_PATH MUST be ignored."
    if let (Some((agg, _)), Some(_)) = (a.aggregator, as4_aggregator)
        && agg != AS_TRANS
    {
        return;
    }
    if let (Some((AS_TRANS, _)), Some(real)) = (a.aggregator, as4_aggregator) {
        a.aggregator = Some(real);
    }
    let Some(mut as4) = as4_path else { return };
    // RFC 6793 6: confederation segments in AS4_PATH are discarded.
    as4.segments
        .retain(|s| matches!(s, AsSegment::Sequence(_) | AsSegment::Set(_)));
    // "If the number of AS numbers in the AS_PATH attribute is less than the
    // number of AS numbers in the AS4_PATH attribute, then the AS4_PATH
    // attribute SHALL be ignored" (counted as in RFC 4271 9.1.2.2).
    let (n, n4) = (a.as_path.len(), as4.len());
    if n < n4 {
        return;
    }
    // "...take as many AS numbers and path segments as necessary from the
    // leading part of the AS_PATH attribute" and prepend them to AS4_PATH.
    let mut need = n - n4;
    let mut merged = Vec::new();
    let mut split_last = false;
    for seg in std::mem::take(&mut a.as_path.segments) {
        match seg {
            AsSegment::ConfedSequence(_) | AsSegment::ConfedSet(_) => merged.push(seg),
            _ if need == 0 => break,
            AsSegment::Sequence(v) if v.len() > need => {
                merged.push(AsSegment::Sequence(v[..need].to_vec()));
                need = 0;
                split_last = true;
            }
            AsSegment::Sequence(v) => {
                need -= v.len();
                merged.push(AsSegment::Sequence(v));
            }
            AsSegment::Set(v) => {
                need -= 1;
                merged.push(AsSegment::Set(v));
            }
        }
    }
    let mut rest = as4.segments.into_iter();
    if split_last
        && let (Some(AsSegment::Sequence(head)), Some(first)) = (merged.last_mut(), rest.next())
    {
        match first {
            AsSegment::Sequence(tail) if head.len() + tail.len() <= 255 => head.extend(tail),
            other => merged.push(other),
        }
    }
    merged.extend(rest);
    a.as_path = AsPath { segments: merged };
}

/// The decoder entry the module's `decode` uses after validation.
pub(crate) fn after_validation(
    msg: &[u8],
    checked: Checked,
    ctx: &Ctx,
) -> Result<(Message, Vec<Warning>), Notification> {
    message(checked, msg.get(HEADER_LEN..).unwrap_or_default(), ctx)
}
