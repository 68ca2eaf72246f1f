//! The decoder: one checked pass from bytes to [`Message`]. Every read goes
//! through `get`, every rule of RFC 4271 section 6 (with RFC 4760, RFC 6793,
//! RFC 7606, RFC 7607) is checked where the field is read, and a failure is
//! a typed [`DecodeError`]. OPEN is in `open.rs`, UPDATE in `update.rs` and
//! `attrs.rs`.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use super::error::{DecodeError, HeaderError};
use super::message::{Message, RouteRefresh, msg_type};
use super::notification::{Action, ErrorCode, Notification, Warning};
use super::{Ctx, HEADER_LEN, MAX_MESSAGE_LEN, open, update};
use crate::types::{Afi, Prefix, SAFI_UNICAST};

pub(super) fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([
        *b.get(at)?,
        *b.get(at.checked_add(1)?)?,
    ]))
}

pub(super) fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

pub(super) fn ipv4(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    be32(b, at).map(Ipv4Addr::from)
}

pub(super) fn ipv6(b: &[u8], at: usize) -> Option<Ipv6Addr> {
    let s: [u8; 16] = b.get(at..at.checked_add(16)?)?.try_into().ok()?;
    Some(Ipv6Addr::from(s))
}

/// Checks a whole header (RFC 4271 4.1, 6.1); returns the message length.
pub(crate) fn header(h: &[u8], max_len: usize) -> Result<usize, HeaderError> {
    // RFC 4271 6.1: "If the Marker field of the message header is not as
    // expected, then a synchronization error has occurred".
    let marker = h.get(..16).ok_or(HeaderError::BadMessageLength(0))?;
    if marker.iter().any(|&b| b != 0xff) {
        return Err(HeaderError::ConnectionNotSynchronized);
    }
    let len = be16(h, 16).ok_or(HeaderError::BadMessageLength(0))?;
    let ty = *h.get(18).ok_or(HeaderError::BadMessageLength(len))?;
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
        return Err(HeaderError::BadMessageLength(len));
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
        _ => return Err(HeaderError::BadMessageType(ty)),
    };
    if !fits {
        return Err(HeaderError::BadMessageLength(len));
    }
    Ok(n)
}

/// One whole message (header included).
pub(crate) fn message(msg: &[u8], ctx: &Ctx) -> Result<(Message, Vec<Warning>), DecodeError> {
    let hdr = msg
        .get(..HEADER_LEN)
        .ok_or(HeaderError::BadMessageLength(msg.len().min(0xffff) as u16))?;
    let n = header(hdr, ctx.max_len())?;
    if n != msg.len() {
        // The caller framed with `frame_len`; a mismatch means the Length
        // field does not describe these bytes.
        return Err(HeaderError::BadMessageLength(n as u16).into());
    }
    let body = msg.get(HEADER_LEN..).unwrap_or_default();
    match hdr.get(18).copied().unwrap_or_default() {
        msg_type::OPEN => Ok((Message::Open(open::open(body)?), Vec::new())),
        msg_type::UPDATE => {
            let (u, warnings) = update::update(body, ctx)?;
            Ok((Message::Update(u), warnings))
        }
        // The header check guarantees code and subcode (21 octets at least).
        msg_type::NOTIFICATION => {
            let code = body.first().copied().unwrap_or_default();
            let subcode = body.get(1).copied().unwrap_or_default();
            let data = body.get(2..).unwrap_or_default().to_vec();
            Ok((
                Message::Notification(Notification::new(code, subcode, data)),
                Vec::new(),
            ))
        }
        msg_type::KEEPALIVE => Ok((Message::Keepalive, Vec::new())),
        _ => Ok(route_refresh(body)),
    }
}

/// RFC 2918 3: AFI (2), Reserved / RFC 7313 subtype (1), SAFI (1); the
/// header check guarantees the four octets.
fn route_refresh(body: &[u8]) -> (Message, Vec<Warning>) {
    let afi = be16(body, 0).unwrap_or_default();
    let safi = body.get(3).copied().unwrap_or_default();
    match Afi::from_code(afi).filter(|_| safi == SAFI_UNICAST) {
        Some(afi) => (
            Message::RouteRefresh(RouteRefresh {
                afi,
                subtype: body.get(2).copied().unwrap_or_default(),
            }),
            Vec::new(),
        ),
        // RFC 2918 4: a refresh for a family we did not advertise is
        // ignored (by the session, which knows the state it came in).
        None => (
            Message::RouteRefreshUnsupported { afi, safi },
            vec![Warning {
                action: Action::Ignore,
                attr: None,
                error: Notification::new(ErrorCode::RouteRefresh.into(), 0, body.to_vec()),
            }],
        ),
    }
}

pub(super) fn max_bits(afi: Afi) -> u8 {
    match afi {
        Afi::Ipv4 => 32,
        Afi::Ipv6 => 128,
    }
}

/// Reads a run of (length, prefix) NLRI entries (RFC 4271 4.3, RFC 4760 5)
/// into `out`, host bits cleared; None when a length exceeds the family's
/// or an entry overruns the field.
pub(super) fn prefixes(b: &[u8], afi: Afi, out: &mut Vec<Prefix>) -> Option<()> {
    let max = max_bits(afi);
    let mut i = 0;
    while i < b.len() {
        let bits = *b.get(i)?;
        if bits > max {
            return None;
        }
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
