//! The structural validator: every byte a peer sends is checked here before
//! the decoder reads it, and every failure is mapped to the NOTIFICATION
//! RFC 4271 section 6 names or to the RFC 7606 action for UPDATE attributes.
//!
//! It allocates nothing for OPEN/KEEPALIVE/NOTIFICATION/ROUTE-REFRESH and one
//! small list of attribute positions per UPDATE ([`UpdatePlan`]), which the
//! decoder then reads without re-checking structure.

use std::ops::Range;

use super::message::{cap, msg_type};
use super::notification::{Action, Notification, Warning, header, open, update};
use super::{Ctx, HEADER_LEN, MAX_MESSAGE_LEN};
use crate::types::{Afi, SAFI_UNICAST};

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

/// A validated attribute: where its value lies in the message body.
#[derive(Debug, Clone)]
pub(crate) struct Span {
    pub flags: u8,
    pub code: u8,
    pub value: Range<usize>,
}

/// A validated MP_REACH_NLRI / MP_UNREACH_NLRI (RFC 4760 3, 4).
#[derive(Debug, Clone)]
pub(crate) struct MpSpan {
    pub afi: Afi,
    /// Next hop bytes (empty for MP_UNREACH_NLRI).
    pub next_hop: Range<usize>,
    pub nlri: Range<usize>,
}

/// What the decoder needs to read an UPDATE that passed validation. Ranges
/// index the message body (the bytes after the 19-byte header).
#[derive(Debug, Clone, Default)]
pub(crate) struct UpdatePlan {
    pub withdrawn: Range<usize>,
    pub nlri: Range<usize>,
    /// Attributes to decode, in wire order (discarded ones and the MP
    /// attributes are not here).
    pub attrs: Vec<Span>,
    pub mp_reach: Option<MpSpan>,
    pub mp_unreach: Option<MpSpan>,
    /// Prefixes announced (classic NLRI plus MP_REACH_NLRI), to size lists.
    pub nlri_count: usize,
    /// How many attributes the message carried in all.
    pub attr_count: usize,
    /// RFC 7606 treat-as-withdraw applies.
    pub withdraw: bool,
    pub warnings: Vec<Warning>,
}

/// The validator's verdict on a whole message.
#[derive(Debug, Clone)]
pub(crate) enum Checked {
    Open,
    Update(UpdatePlan),
    Notification,
    Keepalive,
    /// `None`: a family we do not carry, to be ignored (RFC 2918 4).
    RouteRefresh(Option<Afi>),
}

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

/// Checks a whole header (RFC 4271 4.1, 6.1); returns the message length.
pub(crate) fn check_header(h: &[u8], max_len: usize) -> Result<usize, Notification> {
    // RFC 4271 6.1: "If the Marker field of the message header is not as
    // expected, then a synchronization error has occurred".
    let marker = h.get(..16).ok_or(Notification::bad_message_length(0))?;
    if marker.iter().any(|&b| b != 0xff) {
        return Err(Notification::header(
            header::CONNECTION_NOT_SYNCHRONIZED,
            Vec::new(),
        ));
    }
    let len = be16(h, 16).ok_or(Notification::bad_message_length(0))?;
    let ty = *h.get(18).ok_or(Notification::bad_message_length(len))?;
    // RFC 4271 6.1: length below 19 or above 4096 (RFC 8654: the
    // negotiated maximum; an OPEN never above 4096) is Bad Message Length,
    // with the erroneous Length field as data.
    let n = usize::from(len);
    let max = if ty == msg_type::OPEN {
        MAX_MESSAGE_LEN
    } else {
        max_len
    };
    if !(HEADER_LEN..=max).contains(&n) {
        return Err(Notification::bad_message_length(len));
    }
    // RFC 4271 6.1: type-specific minimum (OPEN 29, UPDATE 23, NOTIFICATION
    // 21) and exact (KEEPALIVE 19) lengths; RFC 2918 3: ROUTE-REFRESH is 23.
    let fits = match ty {
        msg_type::OPEN => n >= 29,
        msg_type::UPDATE => n >= 23,
        msg_type::NOTIFICATION => n >= 21,
        msg_type::KEEPALIVE => n == 19,
        msg_type::ROUTE_REFRESH => n == 23,
        // RFC 4271 6.1: unrecognized type, the type octet as data.
        _ => return Err(Notification::header(header::BAD_MESSAGE_TYPE, vec![ty])),
    };
    if !fits {
        return Err(Notification::bad_message_length(len));
    }
    Ok(n)
}

/// Validates one whole message (header included).
pub(crate) fn check(msg: &[u8], ctx: &Ctx) -> Result<Checked, Notification> {
    let hdr = msg
        .get(..HEADER_LEN)
        .ok_or(Notification::bad_message_length(
            msg.len().min(0xffff) as u16
        ))?;
    let n = check_header(hdr, ctx.max_len())?;
    if n != msg.len() {
        // The caller framed with `frame_len`; a mismatch means the Length
        // field does not describe these bytes.
        return Err(Notification::bad_message_length(n as u16));
    }
    let body = msg.get(HEADER_LEN..).unwrap_or_default();
    match hdr.get(18).copied().unwrap_or_default() {
        msg_type::OPEN => check_open(body).map(|()| Checked::Open),
        msg_type::UPDATE => check_update(body, ctx).map(Checked::Update),
        msg_type::NOTIFICATION => Ok(Checked::Notification),
        msg_type::KEEPALIVE => Ok(Checked::Keepalive),
        _ => Ok(Checked::RouteRefresh(route_refresh_family(body))),
    }
}

/// RFC 2918 3: AFI (2), Reserved / RFC 7313 subtype (1), SAFI (1).
pub(crate) fn route_refresh_family(body: &[u8]) -> Option<Afi> {
    let afi = Afi::from_code(be16(body, 0)?)?;
    (body.get(3) == Some(&SAFI_UNICAST)).then_some(afi)
}

/// OPEN (RFC 4271 4.2, 6.2; capabilities RFC 5492).
fn check_open(body: &[u8]) -> Result<(), Notification> {
    let malformed = || Notification::open(open::UNSPECIFIC, Vec::new());
    let version = *body.first().ok_or_else(malformed)?;
    if version != 4 {
        // RFC 4271 6.2: data is the largest version we support.
        return Err(Notification::open(open::UNSUPPORTED_VERSION, vec![0, 4]));
    }
    let my_as = be16(body, 1).ok_or_else(malformed)?;
    if my_as == 0 {
        // RFC 7607 2: AS 0 in an OPEN is Bad Peer AS.
        return Err(Notification::open(open::BAD_PEER_AS, Vec::new()));
    }
    let hold = be16(body, 3).ok_or_else(malformed)?;
    if hold == 1 || hold == 2 {
        // RFC 4271 6.2: hold time must be zero or at least three seconds.
        return Err(Notification::open(open::UNACCEPTABLE_HOLD_TIME, Vec::new()));
    }
    if be32(body, 5).ok_or_else(malformed)? == 0 {
        // RFC 6286 2.1: the BGP Identifier must be non-zero.
        return Err(Notification::open(open::BAD_BGP_IDENTIFIER, Vec::new()));
    }
    let opt_len = usize::from(*body.get(9).ok_or_else(malformed)?);
    let params = body.get(10..).ok_or_else(malformed)?;
    if params.len() != opt_len {
        // RFC 4271 6.2: a recognized but malformed optional parameter is
        // subcode 0 (Unspecific); a length that disagrees with the message is
        // exactly that.
        return Err(malformed());
    }
    let mut i = 0;
    while i < params.len() {
        let ty = *params.get(i).ok_or_else(malformed)?;
        let len = usize::from(*params.get(i + 1).ok_or_else(malformed)?);
        let value = params.get(i + 2..i + 2 + len).ok_or_else(malformed)?;
        i += 2 + len;
        if ty != 2 {
            // RFC 4271 6.2 / RFC 5492 4: only Capabilities (2) is known.
            return Err(Notification::open(
                open::UNSUPPORTED_OPTIONAL_PARAMETER,
                Vec::new(),
            ));
        }
        check_capabilities(value)?;
    }
    Ok(())
}

fn check_capabilities(caps: &[u8]) -> Result<(), Notification> {
    let malformed = || Notification::open(open::UNSPECIFIC, Vec::new());
    let mut i = 0;
    while i < caps.len() {
        let code = *caps.get(i).ok_or_else(malformed)?;
        let len = usize::from(*caps.get(i + 1).ok_or_else(malformed)?);
        let value = caps.get(i + 2..i + 2 + len).ok_or_else(malformed)?;
        i += 2 + len;
        let ok = match code {
            cap::MULTIPROTOCOL => len == 4,                          // RFC 4760 8
            cap::ROUTE_REFRESH => len == 0,                          // RFC 2918 2
            cap::GRACEFUL_RESTART => len >= 2 && (len - 2) % 4 == 0, // RFC 4724 3
            cap::FOUR_OCTET_AS => {
                // RFC 6793 9 / RFC 7607 2: AS 0 is Bad Peer AS.
                if len == 4 && be32(value, 0) == Some(0) {
                    return Err(Notification::open(open::BAD_PEER_AS, Vec::new()));
                }
                len == 4
            }
            _ => true,
        };
        if !ok {
            return Err(malformed());
        }
    }
    Ok(())
}

/// Checks a run of (length, prefix) NLRI entries (RFC 4271 4.3, RFC 4760 5)
/// and returns how many there are.
pub(crate) fn count_prefixes(b: &[u8], max_bits: u8) -> Option<usize> {
    let mut i = 0usize;
    let mut n = 0;
    while i < b.len() {
        let bits = *b.get(i)?;
        if bits > max_bits {
            return None;
        }
        i += 1 + usize::from(bits).div_ceil(8);
        if i > b.len() {
            return None;
        }
        n += 1;
    }
    Some(n)
}

/// AS_PATH / AS4_PATH segments (RFC 4271 4.3, RFC 7606 7.2): type 1..=4,
/// count at least one, and the segments exactly fill the attribute.
pub(crate) fn as_path_ok(v: &[u8], asn_size: usize, allow_confed: bool) -> bool {
    let mut i = 0usize;
    while i < v.len() {
        let (Some(&ty), Some(&count)) = (v.get(i), v.get(i + 1)) else {
            return false;
        };
        let max_ty = if allow_confed { 4 } else { 2 };
        if !(1..=max_ty).contains(&ty) || count == 0 {
            return false;
        }
        i += 2 + usize::from(count) * asn_size;
    }
    i == v.len()
}

/// How an attribute error is handled.
enum Fault {
    Withdraw(Notification),
    Discard(Notification),
    Reset(Notification),
}

/// The Optional and Transitive bits each known attribute must carry, and
/// what RFC 7606 says to do when they are wrong (section 3 c: treat as
/// malformed, the attribute's own rule applies).
fn known_flags(code: u8) -> Option<(u8, Action)> {
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

fn attr_data(body: &[u8], start: usize, end: usize) -> Vec<u8> {
    body.get(start..end).map(<[u8]>::to_vec).unwrap_or_default()
}

/// UPDATE (RFC 4271 4.3, 6.3 as revised by RFC 7606; RFC 4760; RFC 6793).
fn check_update(body: &[u8], ctx: &Ctx) -> Result<UpdatePlan, Notification> {
    let malformed_list = || Notification::update(update::MALFORMED_ATTRIBUTE_LIST, Vec::new());
    // RFC 4271 6.3 / RFC 7606 4: lengths that do not fit the message are a
    // Malformed Attribute List and reset the session (NLRI cannot be found).
    let wlen = usize::from(be16(body, 0).ok_or_else(malformed_list)?);
    let withdrawn = 2..2 + wlen;
    let alen = usize::from(be16(body, 2 + wlen).ok_or_else(malformed_list)?);
    let astart = 4 + wlen;
    let aend = astart + alen;
    if aend > body.len() {
        return Err(malformed_list());
    }
    let nlri = aend..body.len();
    // RFC 4271 6.3: "The NLRI field in the UPDATE message is checked for
    // syntactic validity" -> Invalid Network Field; RFC 7606 5.3 keeps the
    // session reset for NLRI that cannot be parsed.
    let bad_net = || Notification::update(update::INVALID_NETWORK_FIELD, Vec::new());
    count_prefixes(body.get(withdrawn.clone()).unwrap_or_default(), 32).ok_or_else(bad_net)?;
    let nlri_count =
        count_prefixes(body.get(nlri.clone()).unwrap_or_default(), 32).ok_or_else(bad_net)?;

    let mut plan = UpdatePlan {
        withdrawn,
        nlri,
        nlri_count,
        ..UpdatePlan::default()
    };
    let mut seen = [false; 256];
    let mut walk_broken = false;
    let mut pos = astart;
    while pos < aend {
        let flags = body.get(pos).copied().unwrap_or_default();
        let hdr = if flags & flag::EXTENDED_LENGTH != 0 {
            4
        } else {
            3
        };
        let vlen = if hdr == 4 {
            be16(body, pos + 2).map(usize::from)
        } else {
            body.get(pos + 2).copied().map(usize::from)
        };
        let vstart = pos + hdr;
        // RFC 7606 4: fewer octets left than an attribute header, or a length
        // that overruns Total Attribute Length: treat-as-withdraw, and Total
        // Attribute Length still locates the NLRI.
        let Some(vend) = vlen
            .map(|l| vstart + l)
            .filter(|&e| vstart <= aend && e <= aend)
        else {
            plan.withdraw = true;
            plan.warnings.push(Warning {
                action: Action::TreatAsWithdraw,
                attr: body.get(pos + 1).copied().filter(|_| pos + 1 < aend),
                error: Notification::update(
                    update::ATTRIBUTE_LENGTH_ERROR,
                    attr_data(body, pos, aend),
                ),
            });
            walk_broken = true;
            break;
        };
        let code = body.get(pos + 1).copied().unwrap_or_default();
        let whole = pos..vend;
        pos = vend;
        plan.attr_count += 1;
        let value = body.get(vstart..vend).unwrap_or_default();
        if seen[usize::from(code)] {
            // RFC 7606 3 g: a repeated MP_REACH/MP_UNREACH is a Malformed
            // Attribute List; any other repeat is discarded.
            if code == attr::MP_REACH_NLRI || code == attr::MP_UNREACH_NLRI {
                return Err(malformed_list());
            }
            plan.warnings.push(Warning {
                action: Action::AttributeDiscard,
                attr: Some(code),
                error: Notification::update(
                    update::MALFORMED_ATTRIBUTE_LIST,
                    attr_data(body, whole.start, whole.end),
                ),
            });
            continue;
        }
        seen[usize::from(code)] = true;
        let span = Span {
            flags,
            code,
            value: vstart..vend,
        };
        let fault = match known_flags(code) {
            None => {
                if flags & flag::OPTIONAL == 0 {
                    // RFC 4271 6.3: unrecognized well-known attribute; RFC
                    // 7606 leaves this a session reset.
                    return Err(Notification::update(
                        update::UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE,
                        attr_data(body, whole.start, whole.end),
                    ));
                }
                if flags & flag::TRANSITIVE == 0 {
                    // RFC 4271 5: unrecognized optional non-transitive
                    // attributes are quietly ignored.
                    continue;
                }
                check_unknown_transitive(code, value)
            }
            Some((want, action)) => {
                let got = flags & (flag::OPTIONAL | flag::TRANSITIVE);
                if got != want {
                    // RFC 7606 3 c: flags in conflict with the attribute's
                    // definition make it malformed (RFC 4271: Attribute Flags
                    // Error, the attribute as data).
                    let e = Notification::update(
                        update::ATTRIBUTE_FLAGS_ERROR,
                        attr_data(body, whole.start, whole.end),
                    );
                    match action {
                        Action::AttributeDiscard => Some(Fault::Discard(e)),
                        _ if code == attr::MP_REACH_NLRI || code == attr::MP_UNREACH_NLRI => {
                            // Still parse it below so its prefixes are
                            // withdrawn, then treat the UPDATE as withdraw.
                            plan.withdraw = true;
                            plan.warnings.push(Warning {
                                action: Action::TreatAsWithdraw,
                                attr: Some(code),
                                error: e,
                            });
                            check_known(&mut plan, body, &span, ctx)
                        }
                        _ => Some(Fault::Withdraw(e)),
                    }
                } else {
                    check_known(&mut plan, body, &span, ctx)
                }
            }
        };
        let data = || attr_data(body, whole.start, whole.end);
        match fault {
            None => {
                if code != attr::MP_REACH_NLRI && code != attr::MP_UNREACH_NLRI {
                    plan.attrs.push(span);
                }
            }
            Some(Fault::Reset(mut e)) => {
                if e.data.is_empty() {
                    e.data = data();
                }
                return Err(e);
            }
            Some(Fault::Withdraw(mut e)) => {
                if e.data.is_empty() {
                    e.data = data();
                }
                plan.withdraw = true;
                plan.warnings.push(Warning {
                    action: Action::TreatAsWithdraw,
                    attr: Some(code),
                    error: e,
                });
            }
            Some(Fault::Discard(mut e)) => {
                if e.data.is_empty() {
                    e.data = data();
                }
                plan.warnings.push(Warning {
                    action: Action::AttributeDiscard,
                    attr: Some(code),
                    error: e,
                });
            }
        }
    }

    // RFC 7606 3 d: a missing well-known mandatory attribute in an UPDATE
    // that carries NLRI is treat-as-withdraw (NEXT_HOP only for the classic
    // NLRI field, RFC 4760 3).
    let mp_nlri = plan.mp_reach.as_ref().is_some_and(|m| !m.nlri.is_empty());
    if !walk_broken && (nlri_count > 0 || mp_nlri) {
        let mut required = vec![attr::ORIGIN, attr::AS_PATH];
        if nlri_count > 0 {
            required.push(attr::NEXT_HOP);
        }
        for code in required {
            if !seen[usize::from(code)] {
                plan.withdraw = true;
                plan.warnings.push(Warning {
                    action: Action::TreatAsWithdraw,
                    attr: Some(code),
                    error: Notification::update(update::MISSING_WELL_KNOWN_ATTRIBUTE, vec![code]),
                });
            }
        }
    }
    Ok(plan)
}

/// Lengths of optional transitive attributes we pass on without
/// interpreting but whose RFC 7606 rule is known.
fn check_unknown_transitive(code: u8, value: &[u8]) -> Option<Fault> {
    let unit = match code {
        attr::EXTENDED_COMMUNITIES => 8,       // RFC 7606 7.14
        attr::IPV6_EXTENDED_COMMUNITIES => 20, // RFC 7606 7.15
        _ => return None,
    };
    (value.is_empty() || !value.len().is_multiple_of(unit)).then(|| {
        Fault::Withdraw(Notification::update(
            update::ATTRIBUTE_LENGTH_ERROR,
            Vec::new(),
        ))
    })
}

/// Length and content rules of the attributes we interpret (RFC 7606 7).
fn check_known(plan: &mut UpdatePlan, body: &[u8], span: &Span, ctx: &Ctx) -> Option<Fault> {
    let v = body.get(span.value.clone()).unwrap_or_default();
    let len_err = || Notification::update(update::ATTRIBUTE_LENGTH_ERROR, Vec::new());
    let nonzero_multiple = |unit: usize| !v.is_empty() && v.len().is_multiple_of(unit);
    let four = ctx.four_octet_as;
    match span.code {
        // RFC 7606 7.1: wrong length or undefined value: treat-as-withdraw.
        attr::ORIGIN => {
            if v.len() != 1 {
                Some(Fault::Withdraw(len_err()))
            } else if v[0] > 2 {
                Some(Fault::Withdraw(Notification::update(
                    update::INVALID_ORIGIN_ATTRIBUTE,
                    Vec::new(),
                )))
            } else {
                None
            }
        }
        // RFC 7606 7.2: a malformed AS_PATH is treat-as-withdraw; 2- or
        // 4-octet AS numbers per the session (RFC 6793 4).
        attr::AS_PATH => (!as_path_ok(v, if four { 4 } else { 2 }, true))
            .then(|| Fault::Withdraw(Notification::update(update::MALFORMED_AS_PATH, Vec::new()))),
        // RFC 7606 7.3, 7.4, 7.5, 7.9: fixed 4 octets, treat-as-withdraw.
        attr::NEXT_HOP | attr::MULTI_EXIT_DISC | attr::LOCAL_PREF | attr::ORIGINATOR_ID => {
            (v.len() != 4).then(|| Fault::Withdraw(len_err()))
        }
        // RFC 7606 7.6: ATOMIC_AGGREGATE is empty, else attribute-discard.
        attr::ATOMIC_AGGREGATE => (!v.is_empty()).then(|| Fault::Discard(len_err())),
        // RFC 7606 7.7: AGGREGATOR is 6 or 8 octets per the session, else
        // attribute-discard.
        attr::AGGREGATOR => {
            (v.len() != if four { 8 } else { 6 }).then(|| Fault::Discard(len_err()))
        }
        // RFC 7606 7.8, 7.10; RFC 8092 6: non-zero multiples, else
        // treat-as-withdraw.
        attr::COMMUNITIES | attr::CLUSTER_LIST => {
            (!nonzero_multiple(4)).then(|| Fault::Withdraw(len_err()))
        }
        attr::LARGE_COMMUNITY => (!nonzero_multiple(12)).then(|| Fault::Withdraw(len_err())),
        // RFC 6793 6: a NEW speaker discards AS4_PATH / AS4_AGGREGATOR from
        // another NEW speaker, and malformed ones (an AS4_PATH shorter than
        // one AS, or with bad segments) from an OLD one.
        attr::AS4_PATH => {
            if four {
                Some(Fault::Discard(Notification::update(
                    update::OPTIONAL_ATTRIBUTE_ERROR,
                    Vec::new(),
                )))
            } else {
                (v.len() < 6 || !as_path_ok(v, 4, true)).then(|| {
                    Fault::Discard(Notification::update(update::MALFORMED_AS_PATH, Vec::new()))
                })
            }
        }
        attr::AS4_AGGREGATOR => {
            if four {
                Some(Fault::Discard(Notification::update(
                    update::OPTIONAL_ATTRIBUTE_ERROR,
                    Vec::new(),
                )))
            } else {
                (v.len() != 8).then(|| Fault::Discard(len_err()))
            }
        }
        attr::MP_REACH_NLRI => mp_reach(plan, span.value.clone(), v),
        attr::MP_UNREACH_NLRI => mp_unreach(plan, span.value.clone(), v),
        _ => None,
    }
}

fn mp_family(v: &[u8]) -> Option<Afi> {
    let afi = Afi::from_code(be16(v, 0)?)?;
    (v.get(2) == Some(&SAFI_UNICAST)).then_some(afi)
}

fn max_bits(afi: Afi) -> u8 {
    match afi {
        Afi::Ipv4 => 32,
        Afi::Ipv6 => 128,
    }
}

/// MP_REACH_NLRI (RFC 4760 3): AFI, SAFI, next hop length and address,
/// reserved octet, NLRI. RFC 7606 7.11: a next hop length that does not fit
/// leaves the NLRI unlocatable, so the session is reset (Optional Attribute
/// Error, RFC 4760 7).
fn mp_reach(plan: &mut UpdatePlan, at: Range<usize>, v: &[u8]) -> Option<Fault> {
    let reset = || {
        Some(Fault::Reset(Notification::update(
            update::OPTIONAL_ATTRIBUTE_ERROR,
            Vec::new(),
        )))
    };
    if v.len() < 5 {
        return reset();
    }
    let nh_len = usize::from(v[3]);
    if 4 + nh_len + 1 > v.len() {
        return reset();
    }
    let Some(afi) = mp_family(v) else {
        // A family we never negotiate (RFC 4760 7 lets us ignore it).
        return Some(Fault::Discard(Notification::update(
            update::OPTIONAL_ATTRIBUTE_ERROR,
            Vec::new(),
        )));
    };
    // IPv4: 4, or 16/32 for an IPv6 next hop (RFC 8950); IPv6: 16 global,
    // 32 global + link-local (RFC 2545 3).
    let nh_ok = match afi {
        Afi::Ipv4 => matches!(nh_len, 4 | 16 | 32),
        Afi::Ipv6 => matches!(nh_len, 16 | 32),
    };
    let nlri_at = 4 + nh_len + 1;
    // RFC 7606 5.3: NLRI that cannot be parsed reset the session.
    let Some(n) =
        count_prefixes(v.get(nlri_at..).unwrap_or_default(), max_bits(afi)).filter(|_| nh_ok)
    else {
        return reset();
    };
    plan.nlri_count += n;
    plan.mp_reach = Some(MpSpan {
        afi,
        next_hop: at.start + 4..at.start + 4 + nh_len,
        nlri: at.start + nlri_at..at.end,
    });
    None
}

/// MP_UNREACH_NLRI (RFC 4760 4): AFI, SAFI, withdrawn NLRI.
fn mp_unreach(plan: &mut UpdatePlan, at: Range<usize>, v: &[u8]) -> Option<Fault> {
    if v.len() < 3 {
        return Some(Fault::Reset(Notification::update(
            update::OPTIONAL_ATTRIBUTE_ERROR,
            Vec::new(),
        )));
    }
    let Some(afi) = mp_family(v) else {
        return Some(Fault::Discard(Notification::update(
            update::OPTIONAL_ATTRIBUTE_ERROR,
            Vec::new(),
        )));
    };
    if count_prefixes(v.get(3..).unwrap_or_default(), max_bits(afi)).is_none() {
        return Some(Fault::Reset(Notification::update(
            update::OPTIONAL_ATTRIBUTE_ERROR,
            Vec::new(),
        )));
    }
    plan.mp_unreach = Some(MpSpan {
        afi,
        next_hop: at.start..at.start,
        nlri: at.start + 3..at.end,
    });
    None
}

/// The validator on its own: Ok with the RFC 7606 warnings when a decoder may
/// read `msg`, Err with the NOTIFICATION to send otherwise. (The fuzz runner
/// uses it to put other decoders behind it.)
pub fn validate(msg: &[u8], ctx: &Ctx) -> Result<Vec<Warning>, Notification> {
    Ok(match check(msg, ctx)? {
        Checked::Update(plan) => plan.warnings,
        _ => Vec::new(),
    })
}
