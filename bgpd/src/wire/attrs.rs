//! Path attribute values (RFC 4271 4.3, 5; RFC 7606 7; RFC 4760; RFC 6793):
//! each one checked and read into [`PathAttrs`] in the same step.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::Ctx;
use super::decode::{be16, be32, ipv4, ipv6, prefixes};
use super::notification::{Action, UpdateSubcode};
use crate::types::{
    AS_TRANS, Afi, AsPath, AsSegment, Asn, Community, LargeCommunity, Origin, PathAttrs, Prefix,
    RawAttr, SAFI_UNICAST,
};

/// Path attribute type codes (IANA "BGP Path Attributes").
pub mod attr {
    pub const ORIGIN: u8 = 1;
    pub const AS_PATH: u8 = 2;
    pub const NEXT_HOP: u8 = 3;
    pub const MULTI_EXIT_DISC: u8 = 4;
    pub const LOCAL_PREF: u8 = 5;
    pub const ATOMIC_AGGREGATE: u8 = 6;
    pub const AGGREGATOR: u8 = 7;
    pub const COMMUNITIES: u8 = 8;
    pub const ORIGINATOR_ID: u8 = 9;
    pub const CLUSTER_LIST: u8 = 10;
    pub const MP_REACH_NLRI: u8 = 14;
    pub const MP_UNREACH_NLRI: u8 = 15;
    pub const EXTENDED_COMMUNITIES: u8 = 16;
    pub const AS4_PATH: u8 = 17;
    pub const AS4_AGGREGATOR: u8 = 18;
    pub const IPV6_EXTENDED_COMMUNITIES: u8 = 25;
    pub const LARGE_COMMUNITY: u8 = 32;
}

/// Attribute flag bits (RFC 4271 4.3).
pub mod flag {
    pub const OPTIONAL: u8 = 0x80;
    pub const TRANSITIVE: u8 = 0x40;
    pub const PARTIAL: u8 = 0x20;
    pub const EXTENDED_LENGTH: u8 = 0x10;
}

/// What is wrong with one attribute and what RFC 7606 does about it (the
/// caller adds the attribute as data).
pub(super) struct Fault(pub Action, pub UpdateSubcode);

type Checked = Result<(), Fault>;

fn withdraw(s: UpdateSubcode) -> Checked {
    Err(Fault(Action::TreatAsWithdraw, s))
}

fn discard(s: UpdateSubcode) -> Checked {
    Err(Fault(Action::AttributeDiscard, s))
}

fn reset(s: UpdateSubcode) -> Checked {
    Err(Fault(Action::SessionReset, s))
}

const LENGTH: UpdateSubcode = UpdateSubcode::AttributeLengthError;
const OPTIONAL: UpdateSubcode = UpdateSubcode::OptionalAttributeError;

/// The Optional and Transitive bits each known attribute must carry, and
/// what RFC 7606 says to do when they are wrong (section 3 c: treat as
/// malformed, the attribute's own rule applies).
pub(super) fn known_flags(code: u8) -> Option<(u8, Action)> {
    use Action::{AttributeDiscard as D, TreatAsWithdraw as W};
    let wk = flag::TRANSITIVE;
    let ot = flag::OPTIONAL | flag::TRANSITIVE;
    let on = flag::OPTIONAL;
    Some(match code {
        attr::ORIGIN | attr::AS_PATH | attr::NEXT_HOP | attr::LOCAL_PREF => (wk, W),
        attr::ATOMIC_AGGREGATE => (wk, D), // RFC 7606 7.6
        attr::MULTI_EXIT_DISC => (on, W),  // RFC 7606 7.4
        attr::AGGREGATOR => (ot, D),       // RFC 7606 7.7
        attr::COMMUNITIES => (ot, W),      // RFC 7606 7.8
        attr::ORIGINATOR_ID | attr::CLUSTER_LIST => (on, W), // RFC 7606 7.9, 7.10
        attr::MP_REACH_NLRI | attr::MP_UNREACH_NLRI => (on, W),
        attr::AS4_PATH | attr::AS4_AGGREGATOR => (ot, D), // RFC 6793 6
        attr::LARGE_COMMUNITY => (ot, W),                 // RFC 8092 6
        _ => return None,
    })
}

/// The attributes of one UPDATE as they are read.
pub(super) struct Attrs {
    four_octet_as: bool,
    a: PathAttrs,
    /// Attributes read into `a` (MP attributes not counted).
    read: usize,
    next_hop4: Option<Ipv4Addr>,
    as4_path: Option<AsPath>,
    as4_aggregator: Option<(Asn, Ipv4Addr)>,
    /// MP_REACH_NLRI's next hop (global, link-local).
    mp_next_hop: Option<(IpAddr, Option<Ipv6Addr>)>,
    /// The family of a well-formed MP_UNREACH_NLRI.
    pub mp_unreach: Option<Afi>,
}

impl Attrs {
    pub fn new(ctx: &Ctx) -> Attrs {
        Attrs {
            four_octet_as: ctx.four_octet_as,
            a: PathAttrs::default(),
            read: 0,
            next_hop4: None,
            as4_path: None,
            as4_aggregator: None,
            mp_next_hop: None,
            mp_unreach: None,
        }
    }

    /// Optional transitive attributes we pass on without interpreting; the
    /// lengths of those whose RFC 7606 rule is known are checked.
    pub fn unknown_transitive(&mut self, flags: u8, code: u8, v: &[u8]) -> Checked {
        let unit = match code {
            attr::EXTENDED_COMMUNITIES => 8,       // RFC 7606 7.14
            attr::IPV6_EXTENDED_COMMUNITIES => 20, // RFC 7606 7.15
            _ => 1,
        };
        if unit > 1 && (v.is_empty() || !v.len().is_multiple_of(unit)) {
            return withdraw(LENGTH);
        }
        self.read += 1;
        self.a.unknown.push(RawAttr {
            flags: flags & (flag::OPTIONAL | flag::TRANSITIVE | flag::PARTIAL),
            code,
            value: v.to_vec(),
        });
        Ok(())
    }

    /// An attribute we interpret (RFC 7606 7 for the length and content
    /// rules). MP_REACH/MP_UNREACH prefixes go to `announced`/`withdrawn`.
    pub fn known(
        &mut self,
        code: u8,
        v: &[u8],
        withdrawn: &mut Vec<Prefix>,
        announced: &mut Vec<Prefix>,
    ) -> Checked {
        let four = self.four_octet_as;
        let nonzero_multiple = |unit: usize| !v.is_empty() && v.len().is_multiple_of(unit);
        let a = &mut self.a;
        match code {
            // RFC 7606 7.1: wrong length or undefined value: treat-as-withdraw.
            attr::ORIGIN => {
                a.origin = match v {
                    [0] => Origin::Igp,
                    [1] => Origin::Egp,
                    [2] => Origin::Incomplete,
                    [_] => return withdraw(UpdateSubcode::InvalidOriginAttribute),
                    _ => return withdraw(LENGTH),
                }
            }
            // RFC 7606 7.2: a malformed AS_PATH is treat-as-withdraw; 2- or
            // 4-octet AS numbers per the session (RFC 6793 4).
            attr::AS_PATH => match as_path(v, if four { 4 } else { 2 }) {
                Some(p) => a.as_path = p,
                None => return withdraw(UpdateSubcode::MalformedAsPath),
            },
            // RFC 7606 7.3, 7.4, 7.5, 7.9: fixed 4 octets, treat-as-withdraw.
            attr::NEXT_HOP | attr::MULTI_EXIT_DISC | attr::LOCAL_PREF | attr::ORIGINATOR_ID => {
                let Some(n) = be32(v, 0).filter(|_| v.len() == 4) else {
                    return withdraw(LENGTH);
                };
                match code {
                    attr::NEXT_HOP => self.next_hop4 = Some(Ipv4Addr::from(n)),
                    attr::MULTI_EXIT_DISC => a.med = Some(n),
                    attr::LOCAL_PREF => a.local_pref = Some(n),
                    _ => a.originator_id = Some(Ipv4Addr::from(n)),
                }
            }
            // RFC 7606 7.6: ATOMIC_AGGREGATE is empty, else attribute-discard.
            attr::ATOMIC_AGGREGATE if v.is_empty() => a.atomic_aggregate = true,
            attr::ATOMIC_AGGREGATE => return discard(LENGTH),
            // RFC 7606 7.7: AGGREGATOR is 6 or 8 octets per the session, else
            // attribute-discard.
            attr::AGGREGATOR => {
                a.aggregator = match (four, v.len()) {
                    (true, 8) => be32(v, 0).zip(ipv4(v, 4)),
                    (false, 6) => be16(v, 0).map(Asn::from).zip(ipv4(v, 2)),
                    _ => None,
                };
                if a.aggregator.is_none() {
                    return discard(LENGTH);
                }
            }
            // RFC 7606 7.8, 7.10; RFC 8092 6: non-zero multiples, else
            // treat-as-withdraw.
            attr::COMMUNITIES if nonzero_multiple(4) => {
                a.communities = v
                    .chunks_exact(4)
                    .map(|c| Community(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                    .collect();
                a.communities.sort_unstable();
                a.communities.dedup();
            }
            attr::CLUSTER_LIST if nonzero_multiple(4) => {
                a.cluster_list = v
                    .chunks_exact(4)
                    .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                    .collect();
            }
            attr::LARGE_COMMUNITY if nonzero_multiple(12) => {
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
            attr::COMMUNITIES | attr::CLUSTER_LIST | attr::LARGE_COMMUNITY => {
                return withdraw(LENGTH);
            }
            // RFC 6793 6: a NEW speaker discards AS4_PATH / AS4_AGGREGATOR from
            // another NEW speaker, and malformed ones (an AS4_PATH shorter than
            // one AS, or with bad segments) from an OLD one.
            attr::AS4_PATH | attr::AS4_AGGREGATOR if four => return discard(OPTIONAL),
            attr::AS4_PATH => match as_path(v, 4).filter(|_| v.len() >= 6) {
                Some(p) => self.as4_path = Some(p),
                None => return discard(UpdateSubcode::MalformedAsPath),
            },
            attr::AS4_AGGREGATOR => match be32(v, 0).zip(ipv4(v, 4)) {
                Some(agg) if v.len() == 8 => self.as4_aggregator = Some(agg),
                _ => return discard(LENGTH),
            },
            attr::MP_REACH_NLRI => return self.mp_reach(v, announced),
            attr::MP_UNREACH_NLRI => return self.mp_unreach(v, withdrawn),
            _ => return Ok(()),
        }
        self.read += 1;
        Ok(())
    }

    /// MP_REACH_NLRI (RFC 4760 3): AFI, SAFI, next hop length and address,
    /// reserved octet, NLRI. RFC 7606 7.11: a next hop length that does not
    /// fit leaves the NLRI unlocatable, so the session is reset (Optional
    /// Attribute Error, RFC 4760 7).
    fn mp_reach(&mut self, v: &[u8], announced: &mut Vec<Prefix>) -> Checked {
        let Some(&nh_len) = v.get(3).filter(|_| v.len() >= 5) else {
            return reset(OPTIONAL);
        };
        let nh_len = usize::from(nh_len);
        let nlri_at = 4 + nh_len + 1;
        if nlri_at > v.len() {
            return reset(OPTIONAL);
        }
        let Some(afi) = mp_family(v) else {
            // A family we never negotiate (RFC 4760 7 lets us ignore it).
            return discard(OPTIONAL);
        };
        // IPv4: 4, or 16/32 for an IPv6 next hop (RFC 8950); IPv6: 16 global,
        // 32 global + link-local (RFC 2545 3).
        let next_hop = match (afi, nh_len) {
            (Afi::Ipv4, 4) => ipv4(v, 4).map(|a| (IpAddr::V4(a), None)),
            (_, 16) => ipv6(v, 4).map(|a| (unmap(a), None)),
            (_, 32) => ipv6(v, 4)
                .zip(ipv6(v, 20))
                .map(|(a, ll)| (unmap(a), Some(ll))),
            _ => None,
        };
        // RFC 7606 5.3: NLRI that cannot be parsed reset the session.
        let Some(next_hop) = next_hop else {
            return reset(OPTIONAL);
        };
        if prefixes(v.get(nlri_at..).unwrap_or_default(), afi, announced).is_none() {
            return reset(OPTIONAL);
        }
        self.mp_next_hop = Some(next_hop);
        Ok(())
    }

    /// MP_UNREACH_NLRI (RFC 4760 4): AFI, SAFI, withdrawn NLRI.
    fn mp_unreach(&mut self, v: &[u8], withdrawn: &mut Vec<Prefix>) -> Checked {
        if v.len() < 3 {
            return reset(OPTIONAL);
        }
        let Some(afi) = mp_family(v) else {
            return discard(OPTIONAL);
        };
        if prefixes(v.get(3..).unwrap_or_default(), afi, withdrawn).is_none() {
            return reset(OPTIONAL);
        }
        self.mp_unreach = Some(afi);
        Ok(())
    }

    /// The UPDATE's attributes, None when it carried none we keep.
    /// `classic_nlri`: the UPDATE announces in the classic NLRI field.
    pub fn finish(self, classic_nlri: bool) -> Option<PathAttrs> {
        if self.read == 0 && self.mp_next_hop.is_none() {
            return None;
        }
        let mut a = self.a;
        if !self.four_octet_as {
            merge_as4(&mut a, self.as4_path, self.as4_aggregator);
        }
        // The classic NEXT_HOP serves the classic NLRI; an MP_REACH_NLRI's
        // next hop serves its own prefixes (one next hop per decoded UPDATE:
        // an UPDATE carrying both kinds keeps the classic one).
        match (self.next_hop4, self.mp_next_hop) {
            (Some(nh), _) if classic_nlri => a.next_hop = Some(IpAddr::V4(nh)),
            (_, Some((nh, ll))) => {
                a.next_hop = Some(nh);
                a.next_hop_link_local = ll;
            }
            (nh, None) => a.next_hop = nh.map(IpAddr::V4),
        }
        Some(a)
    }
}

fn mp_family(v: &[u8]) -> Option<Afi> {
    let afi = Afi::from_code(be16(v, 0)?)?;
    (v.get(2) == Some(&SAFI_UNICAST)).then_some(afi)
}

/// An IPv4-mapped IPv6 next hop (RFC 4291 2.5.5.2) is an IPv4 next hop.
fn unmap(a: Ipv6Addr) -> IpAddr {
    match a.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(a),
    }
}

/// AS_PATH / AS4_PATH segments (RFC 4271 4.3, RFC 7606 7.2): type 1..=4,
/// count at least one, and the segments exactly fill the attribute.
fn as_path(v: &[u8], asn_size: usize) -> Option<AsPath> {
    let mut segments = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let ty = *v.get(i)?;
        let count = usize::from(*v.get(i + 1)?);
        if count == 0 {
            return None;
        }
        let end = i + 2 + count * asn_size;
        let body = v.get(i + 2..end)?;
        let asns: Vec<Asn> = if asn_size == 4 {
            body.chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        } else {
            body.chunks_exact(2)
                .map(|c| Asn::from(u16::from_be_bytes([c[0], c[1]])))
                .collect()
        };
        i = end;
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
