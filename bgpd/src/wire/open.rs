//! OPEN (RFC 4271 4.2, 6.2) and its capabilities (RFC 5492), checked and
//! decoded in one pass.

use super::decode::{be16, be32, ipv4};
use super::error::{CapabilityError, OpenError};
use super::message::{Capability, GracefulRestart, Open, cap};
use crate::types::{Afi, Asn, SAFI_UNICAST};

/// The OPEN body (after the header).
pub(super) fn open(body: &[u8]) -> Result<Open, OpenError> {
    let version = *body.first().ok_or(OpenError::Malformed)?;
    if version != 4 {
        return Err(OpenError::UnsupportedVersion(version));
    }
    let my_as = be16(body, 1).ok_or(OpenError::Malformed)?;
    if my_as == 0 {
        // RFC 7607 2: AS 0 in an OPEN is Bad Peer AS.
        return Err(OpenError::BadPeerAs);
    }
    let hold_time = be16(body, 3).ok_or(OpenError::Malformed)?;
    if hold_time == 1 || hold_time == 2 {
        // RFC 4271 6.2: hold time must be zero or at least three seconds.
        return Err(OpenError::UnacceptableHoldTime(hold_time));
    }
    let router_id = ipv4(body, 5).ok_or(OpenError::Malformed)?;
    if router_id.is_unspecified() {
        // RFC 6286 2.1: the BGP Identifier must be non-zero.
        return Err(OpenError::BadBgpIdentifier);
    }
    let opt_len = usize::from(*body.get(9).ok_or(OpenError::Malformed)?);
    let params = body.get(10..).ok_or(OpenError::Malformed)?;
    if params.len() != opt_len {
        // RFC 4271 6.2: a recognized but malformed optional parameter is
        // subcode 0 (Unspecific); a length that disagrees with the message is
        // exactly that.
        return Err(OpenError::Malformed);
    }
    let mut capabilities = Vec::new();
    let mut i = 0;
    while i < params.len() {
        let ty = *params.get(i).ok_or(OpenError::Malformed)?;
        let len = usize::from(*params.get(i + 1).ok_or(OpenError::Malformed)?);
        let value = params.get(i + 2..i + 2 + len).ok_or(OpenError::Malformed)?;
        i += 2 + len;
        if ty != 2 {
            // RFC 4271 6.2 / RFC 5492 4: only Capabilities (2) is known.
            return Err(OpenError::UnsupportedOptionalParameter(ty));
        }
        capability_list(value, &mut capabilities)?;
    }
    let asn = capabilities
        .iter()
        .find_map(|c| match c {
            Capability::FourOctetAs(a) => Some(*a),
            _ => None,
        })
        .unwrap_or(Asn::from(my_as));
    Ok(Open {
        version,
        asn,
        hold_time,
        router_id,
        capabilities,
    })
}

fn capability_list(caps: &[u8], out: &mut Vec<Capability>) -> Result<(), CapabilityError> {
    let mut i = 0;
    while i < caps.len() {
        let code = *caps.get(i).ok_or(CapabilityError::Truncated)?;
        let len = *caps.get(i + 1).ok_or(CapabilityError::Truncated)?;
        let n = usize::from(len);
        let value = caps
            .get(i + 2..i + 2 + n)
            .ok_or(CapabilityError::Truncated)?;
        i += 2 + n;
        out.push(capability(code, value).ok_or(CapabilityError::BadLength { code, len })??);
    }
    Ok(())
}

/// One capability; None when a capability we interpret has the wrong length.
fn capability(code: u8, value: &[u8]) -> Option<Result<Capability, CapabilityError>> {
    let unknown = || Capability::Unknown {
        code,
        value: value.to_vec(),
    };
    Some(Ok(match code {
        // RFC 4760 8: AFI (2), reserved (1), SAFI (1); the reserved octet is
        // ignored on receipt.
        cap::MULTIPROTOCOL if value.len() == 4 => match Afi::from_code(be16(value, 0)?) {
            Some(afi) if value.get(3) == Some(&SAFI_UNICAST) => Capability::Multiprotocol(afi),
            _ => unknown(),
        },
        // RFC 2918 2.
        cap::ROUTE_REFRESH if value.is_empty() => Capability::RouteRefresh,
        // RFC 6793 9 / RFC 7607 2: AS 0 is Bad Peer AS.
        cap::FOUR_OCTET_AS if value.len() == 4 => match be32(value, 0)? {
            0 => return Some(Err(CapabilityError::FourOctetAsZero)),
            asn => Capability::FourOctetAs(asn),
        },
        // RFC 4724 3: flags (4 bits) + restart time (12 bits), then (AFI,
        // SAFI, flags) per family.
        cap::GRACEFUL_RESTART if value.len() >= 2 && (value.len() - 2).is_multiple_of(4) => {
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
        cap::MULTIPROTOCOL | cap::ROUTE_REFRESH | cap::FOUR_OCTET_AS | cap::GRACEFUL_RESTART => {
            return None;
        }
        _ => unknown(),
    }))
}
