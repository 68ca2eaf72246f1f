//! The BGP wire layer: bytes from a peer to [`Message`] and back.
//!
//! Every byte a peer sends passes [`validate`] (a strict structural check of
//! our own: header, lengths, attribute flags and lengths, AS_PATH segments,
//! prefix lengths, MP_REACH/MP_UNREACH layout) before the decoder reads it;
//! errors map to the NOTIFICATION RFC 4271 section 6 names, or to the RFC 7606
//! outcome (treat-as-withdraw, attribute-discard) returned as a [`Warning`].

mod decode;
mod encode;
pub mod fuzz;
mod message;
mod notification;
mod validate;

pub use message::*;
pub use notification::*;
pub use validate::{attr, flag, validate};

use crate::types::{PathAttrs, Prefix};

/// The fixed BGP header: marker, length, type (RFC 4271 4.1).
pub const HEADER_LEN: usize = 19;
/// The largest BGP message without RFC 8654 extended messages.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Negotiated per-session parameters the codec needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ctx {
    /// Both sides announced the 4-octet AS capability (RFC 6793).
    pub four_octet_as: bool,
}

/// Ok(None) until `buf` holds a whole header; then the whole message's
/// length, after checking marker, length bounds (19..=4096), type and the
/// type's minimum or exact length; Err is the NOTIFICATION to send.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, Notification> {
    match buf.get(..HEADER_LEN) {
        None => Ok(None),
        Some(h) => validate::check_header(h).map(Some),
    }
}

/// One whole message (header included): validator first, then the decoder.
/// RFC 7606 outcomes come back as Ok: treat-as-withdraw turns the UPDATE's
/// announced prefixes into withdrawn ones and drops its attributes;
/// attribute-discard drops the attribute; both add a [`Warning`]. A
/// ROUTE-REFRESH for a family we do not carry decodes as `Keepalive` with an
/// `Action::Ignore` warning (RFC 2918 4: ignore it).
pub fn decode(msg: &[u8], ctx: &Ctx) -> Result<(Message, Vec<Warning>), Notification> {
    let checked = validate::check(msg, ctx)?;
    decode::after_validation(msg, checked, ctx)
}

/// The message on the wire, header included. An UPDATE is encoded as one
/// message whatever its size: use [`encode_updates`] to pack routes.
pub fn encode(msg: &Message, ctx: &Ctx) -> Vec<u8> {
    encode::message(msg, ctx)
}

/// Packs prefixes into as many UPDATEs (each at most 4096 bytes) as needed:
/// withdrawals first (IPv4 classic, IPv6 in MP_UNREACH_NLRI), then
/// announcements with `attrs` (IPv4 classic with NEXT_HOP, or MP_REACH_NLRI
/// when the next hop is IPv6; IPv6 in MP_REACH_NLRI). Announcements without
/// attributes are not sent. End-of-RIB: `encode(&Message::Update(Update::end_of_rib(afi)))`.
pub fn encode_updates(
    withdrawn: &[Prefix],
    attrs: Option<&PathAttrs>,
    announced: &[Prefix],
    ctx: &Ctx,
) -> Vec<Vec<u8>> {
    encode::updates(withdrawn, attrs, announced, ctx)
}
