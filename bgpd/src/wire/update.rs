//! UPDATE (RFC 4271 4.3, 6.3 as revised by RFC 7606; RFC 4760; RFC 6793):
//! lengths, prefixes and the attribute walk, checked and decoded in one
//! pass. Attribute values are read in `attrs.rs`.

use super::Ctx;
use super::attrs::{Attrs, Fault, attr, flag, known_flags};
use super::decode::{be16, prefixes};
use super::error::UpdateError;
use super::message::Update;
use super::notification::{Action, UpdateSubcode, Warning};
use crate::types::Afi;

/// The UPDATE body (after the header): the message and the RFC 7606
/// warnings, or the error that resets the session.
pub(super) fn update(body: &[u8], ctx: &Ctx) -> Result<(Update, Vec<Warning>), UpdateError> {
    let malformed_list = || UpdateError::reset(UpdateSubcode::MalformedAttributeList, Vec::new());
    // RFC 4271 6.3 / RFC 7606 4: lengths that do not fit the message are a
    // Malformed Attribute List and reset the session (NLRI cannot be found).
    let wlen = usize::from(be16(body, 0).ok_or_else(malformed_list)?);
    let alen = usize::from(be16(body, 2 + wlen).ok_or_else(malformed_list)?);
    let astart = 4 + wlen;
    let aend = astart + alen;
    if aend > body.len() {
        return Err(malformed_list());
    }
    // RFC 4271 6.3: "The NLRI field in the UPDATE message is checked for
    // syntactic validity" -> Invalid Network Field; RFC 7606 5.3 keeps the
    // session reset for NLRI that cannot be parsed.
    let bad_net = || UpdateError::reset(UpdateSubcode::InvalidNetworkField, Vec::new());
    let mut withdrawn = Vec::new();
    prefixes(
        body.get(2..2 + wlen).unwrap_or_default(),
        Afi::Ipv4,
        &mut withdrawn,
    )
    .ok_or_else(bad_net)?;
    let classic = body.get(aend..).unwrap_or_default();
    let mut announced = Vec::new();
    prefixes(classic, Afi::Ipv4, &mut announced).ok_or_else(bad_net)?;
    let classic_count = announced.len();

    let mut a = Attrs::new(ctx);
    let mut warnings = Vec::new();
    let mut withdraw = false;
    let mut fault = |e: UpdateError, warnings: &mut Vec<Warning>| {
        if e.action == Action::TreatAsWithdraw {
            withdraw = true;
        }
        warnings.push(e.warning());
    };
    let mut seen = [false; 256];
    let mut attr_count = 0usize;
    let mut walk_broken = false;
    let mut pos = astart;
    while pos < aend {
        let flags = body.get(pos).copied().unwrap_or_default();
        let (hdr, vlen) = if flags & flag::EXTENDED_LENGTH != 0 {
            (4, be16(body, pos + 2).map(usize::from))
        } else {
            (3, body.get(pos + 2).copied().map(usize::from))
        };
        let vstart = pos + hdr;
        // RFC 7606 4: fewer octets left than an attribute header, or a length
        // that overruns Total Attribute Length: treat-as-withdraw, and Total
        // Attribute Length still locates the NLRI.
        let Some(vend) = vlen
            .map(|l| vstart + l)
            .filter(|&e| vstart <= aend && e <= aend)
        else {
            fault(
                UpdateError {
                    subcode: UpdateSubcode::AttributeLengthError,
                    action: Action::TreatAsWithdraw,
                    attr: body.get(pos + 1).copied().filter(|_| pos + 1 < aend),
                    data: body.get(pos..aend).unwrap_or_default().to_vec(),
                },
                &mut warnings,
            );
            walk_broken = true;
            break;
        };
        let code = body.get(pos + 1).copied().unwrap_or_default();
        let whole = body.get(pos..vend).unwrap_or_default();
        let value = body.get(vstart..vend).unwrap_or_default();
        pos = vend;
        attr_count += 1;
        let at_fault = |subcode, action| UpdateError {
            subcode,
            action,
            attr: Some(code),
            data: whole.to_vec(),
        };
        let is_mp = code == attr::MP_REACH_NLRI || code == attr::MP_UNREACH_NLRI;
        if seen[usize::from(code)] {
            // RFC 7606 3 g: a repeated MP_REACH/MP_UNREACH is a Malformed
            // Attribute List; any other repeat is discarded.
            if is_mp {
                return Err(malformed_list());
            }
            fault(
                at_fault(
                    UpdateSubcode::MalformedAttributeList,
                    Action::AttributeDiscard,
                ),
                &mut warnings,
            );
            continue;
        }
        seen[usize::from(code)] = true;
        let outcome = match known_flags(code) {
            None => {
                if flags & flag::OPTIONAL == 0 {
                    // RFC 4271 6.3: unrecognized well-known attribute; RFC
                    // 7606 leaves this a session reset.
                    return Err(at_fault(
                        UpdateSubcode::UnrecognizedWellKnownAttribute,
                        Action::SessionReset,
                    ));
                }
                if flags & flag::TRANSITIVE == 0 {
                    // RFC 4271 5: unrecognized optional non-transitive
                    // attributes are quietly ignored.
                    continue;
                }
                a.unknown_transitive(flags, code, value)
            }
            Some((want, action)) if flags & (flag::OPTIONAL | flag::TRANSITIVE) != want => {
                // RFC 7606 3 c: flags in conflict with the attribute's
                // definition make it malformed (RFC 4271: Attribute Flags
                // Error, the attribute as data).
                if is_mp && action == Action::TreatAsWithdraw {
                    // Still parse it so its prefixes are withdrawn, then
                    // treat the UPDATE as withdraw.
                    fault(
                        at_fault(UpdateSubcode::AttributeFlagsError, action),
                        &mut warnings,
                    );
                    a.known(code, value, &mut withdrawn, &mut announced)
                } else {
                    Err(Fault(action, UpdateSubcode::AttributeFlagsError))
                }
            }
            Some(_) => a.known(code, value, &mut withdrawn, &mut announced),
        };
        if let Err(Fault(action, subcode)) = outcome {
            let e = at_fault(subcode, action);
            if action == Action::SessionReset {
                return Err(e);
            }
            fault(e, &mut warnings);
        }
    }

    // RFC 7606 3 d: a missing well-known mandatory attribute in an UPDATE
    // that carries NLRI is treat-as-withdraw (NEXT_HOP only for the classic
    // NLRI field, RFC 4760 3).
    if !walk_broken && !announced.is_empty() {
        let next_hop = (classic_count > 0).then_some(attr::NEXT_HOP);
        for code in [Some(attr::ORIGIN), Some(attr::AS_PATH), next_hop]
            .into_iter()
            .flatten()
        {
            if !seen[usize::from(code)] {
                fault(
                    UpdateError {
                        subcode: UpdateSubcode::MissingWellKnownAttribute,
                        action: Action::TreatAsWithdraw,
                        attr: Some(code),
                        data: vec![code],
                    },
                    &mut warnings,
                );
            }
        }
    }

    // RFC 4724 2: End-of-RIB is an empty UPDATE (IPv4) or one holding only
    // an empty MP_UNREACH_NLRI.
    let empty = withdrawn.is_empty() && announced.is_empty();
    let eor = match attr_count {
        0 if empty => Some(Afi::Ipv4),
        1 if empty => a.mp_unreach,
        _ => None,
    };
    if withdraw {
        // RFC 7606 2: treat-as-withdraw.
        withdrawn.append(&mut announced);
        let u = Update {
            withdrawn,
            attrs: None,
            announced,
            eor: None,
        };
        return Ok((u, warnings));
    }
    let attrs = a.finish(classic_count > 0);
    Ok((
        Update {
            withdrawn,
            attrs,
            announced,
            eor,
        },
        warnings,
    ))
}
