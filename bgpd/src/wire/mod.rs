//! The BGP wire layer: bytes from a peer to [`Message`] and back.
//!
//! `decode.rs` (header, dispatch, NLRI), `open.rs` and `update.rs` with
//! `attrs.rs` read a message in one pass that checks every field as it reads
//! it; a refusal is a typed [`DecodeError`] that names its NOTIFICATION
//! (`error.rs`, codes in `notification.rs`), and an UPDATE error RFC 7606
//! does not reset for comes back as a [`Warning`] next to the message.
//! `encode.rs` writes messages and packs routes into UPDATEs; `fuzz.rs`
//! (feature `fuzz`) is the mutation engine of `twill-bgp-fuzz`. Why the
//! codec is hand-written, what it leaves out, and its measurements:
//! docs/bgp-wire.md.

mod attrs;
mod decode;
mod encode;
mod error;
#[cfg(feature = "fuzz")]
pub mod fuzz;
mod message;
mod notification;
mod open;
mod update;

pub use attrs::{attr, flag};
pub use error::*;
pub use message::*;
pub use notification::*;

use crate::types::{PathAttrs, Prefix};

/// The fixed BGP header: marker, length, type (RFC 4271 4.1).
pub const HEADER_LEN: usize = 19;
/// The largest BGP message without RFC 8654 extended messages.
pub const MAX_MESSAGE_LEN: usize = 4096;
/// The largest BGP message with RFC 8654 extended messages.
pub const MAX_EXTENDED_LEN: usize = 65535;

/// Negotiated per-session parameters the codec needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ctx {
    /// Both sides announced the 4-octet AS capability (RFC 6793).
    pub four_octet_as: bool,
    /// Both sides announced extended messages (RFC 8654): messages other
    /// than OPEN and KEEPALIVE may be up to 65,535 bytes.
    pub extended_messages: bool,
}

impl Ctx {
    /// The largest message this session may carry.
    pub fn max_len(&self) -> usize {
        if self.extended_messages {
            MAX_EXTENDED_LEN
        } else {
            MAX_MESSAGE_LEN
        }
    }
}

/// Ok(None) until `buf` holds a whole header; then the whole message's
/// length, after checking marker, length bounds (19..=4096), type and the
/// type's minimum or exact length; Err is the NOTIFICATION to send.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, HeaderError> {
    frame_len_in(buf, &Ctx::default())
}

/// [`frame_len`] for a session whose context may allow RFC 8654 extended
/// messages (up to 65,535 bytes; an OPEN stays within 4,096).
pub fn frame_len_in(buf: &[u8], ctx: &Ctx) -> Result<Option<usize>, HeaderError> {
    match buf.get(..HEADER_LEN) {
        None => Ok(None),
        Some(h) => decode::header(h, ctx.max_len()).map(Some),
    }
}

/// One whole message (header included), checked as it is read; Err is the
/// NOTIFICATION to send ([`DecodeError::notification`]).
/// RFC 7606 outcomes come back as Ok: treat-as-withdraw turns the UPDATE's
/// announced prefixes into withdrawn ones and drops its attributes;
/// attribute-discard drops the attribute; both add a [`Warning`]. A
/// ROUTE-REFRESH for a family we do not carry decodes as
/// `RouteRefreshUnsupported` with an `Action::Ignore` warning (RFC 2918 4:
/// the session ignores it when Established).
pub fn decode(msg: &[u8], ctx: &Ctx) -> Result<(Message, Vec<Warning>), DecodeError> {
    decode::message(msg, ctx)
}

/// [`decode`] keeping only the verdict: Ok with the RFC 7606 warnings when
/// the message is accepted (the fuzz runner puts other decoders behind it).
pub fn validate(msg: &[u8], ctx: &Ctx) -> Result<Vec<Warning>, DecodeError> {
    decode(msg, ctx).map(|(_, w)| w)
}

/// The message on the wire, header included. An UPDATE is encoded as one
/// message whatever its size: use [`encode_updates`] to pack routes.
pub fn encode(msg: &Message, ctx: &Ctx) -> Vec<u8> {
    encode::message(msg, ctx)
}

/// Packs prefixes into as many UPDATEs (each at most `ctx.max_len()` bytes) as needed:
/// withdrawals first (IPv4 classic, IPv6 in MP_UNREACH_NLRI), then
/// announcements with `attrs` (IPv4 classic with NEXT_HOP, or MP_REACH_NLRI
/// when the next hop is IPv6; IPv6 in MP_REACH_NLRI). Announcements without
/// attributes are not sent, nor those whose attributes leave no room for a
/// prefix in `ctx.max_len()` bytes: [`encode_updates_checked`] names those.
/// End-of-RIB: `encode(&Message::Update(Update::end_of_rib(afi)))`.
pub fn encode_updates(
    withdrawn: &[Prefix],
    attrs: Option<&PathAttrs>,
    announced: &[Prefix],
    ctx: &Ctx,
) -> Vec<Vec<u8>> {
    encode::updates(withdrawn, attrs, announced, ctx).messages
}

/// [`encode_updates`], plus the announced prefixes that fit no message
/// (their attributes are too large for the session's largest message).
/// The session withdraws those instead, so the neighbour does not keep an
/// older path for them.
pub fn encode_updates_checked(
    withdrawn: &[Prefix],
    attrs: Option<&PathAttrs>,
    announced: &[Prefix],
    ctx: &Ctx,
) -> (Vec<Vec<u8>>, Vec<Prefix>) {
    let p = encode::updates(withdrawn, attrs, announced, ctx);
    (p.messages, p.unsent)
}
