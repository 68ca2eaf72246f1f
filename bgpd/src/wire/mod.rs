//! The BGP wire layer: bytes from a peer to [`Message`] and back.
//!
//! Every byte a peer sends passes the validator (`validate.rs`, a strict
//! structural check of our own: header, lengths, attribute flags and
//! lengths, AS_PATH segments, prefix lengths, MP_REACH/MP_UNREACH layout)
//! before the decoder (`decode.rs`) reads it. Errors map to the NOTIFICATION
//! RFC 4271 section 6 names (with RFC 4760, RFC 6793, RFC 7607), or to the
//! RFC 7606 outcome (treat-as-withdraw, attribute-discard) returned as a
//! [`Warning`] next to the decoded message. `encode.rs` writes messages and
//! packs routes into UPDATEs; `fuzz.rs` is the mutation engine that the
//! `twill-bgp-fuzz` runner and the test suite drive.
//!
//! The decoder is hand-written, not zettabgp 0.6 (the codec the issue named)
//! nor netgauze-bgp-pkt (its named fallback). Measured with `twill-bgp-fuzz`
//! (seed 1947278235):
//! - zettabgp raw, 100,000 inputs: 862 panics (0.86%, 18 sites: index out
//!   of bounds, slice ranges), 301 hangs over 1 s (0.30%; the AS_PATH with a
//!   stray trailing octet loops while allocating) and 3 runs past 1 GiB of
//!   live heap; its header check subtracts 19 from the length unchecked.
//! - zettabgp behind this validator, fed only messages that pass it with no
//!   warning: still 102 panics in 1,000,000 inputs (no hang). 101 come from
//!   reading RFC 4760's Reserved octet of MP_REACH_NLRI as an RFC 2858 SNPA
//!   count (valid messages with a non-zero Reserved octet index out of
//!   bounds; rejecting them would break RFC 4760's "ignored on receipt"),
//!   one from an attribute it interprets unchecked (type 35 with 3 octets,
//!   which we do not know and skip). An UPDATE the validator passes with an
//!   RFC 7606 warning still reaches the decoder as it is on the wire; fed
//!   those too (`--feed-warned`, 100,000 inputs) zettabgp panics 101 times,
//!   hangs 140 times and passes 1 GiB of heap 68 times. A validator in front
//!   of zettabgp would have to mirror every quirk of it.
//! - netgauze-bgp-pkt 0.13: no panic or hang in 1,000,000 raw inputs, but it
//!   fails whole messages that are valid: confederation AS_PATH segments
//!   (RFC 5065), NOTIFICATIONs with unassigned subcodes, ROUTE-REFRESH for an
//!   unknown AFI (RFC 2918 says ignore), class D prefixes; its errors carry no
//!   RFC 7606 action, so the validator would still be needed; it adds 17
//!   crates (about 3 minutes of release build on one core here) and decodes
//!   into its own types that would be converted again.
//! - The validator already walks every byte; building `types` directly from
//!   the checked positions costs about 30 ns per prefix (25-35 ms for 1M
//!   IPv4 prefixes in 992 UPDATEs; zettabgp 20 ms and netgauze 27 ms into
//!   their own types, before any conversion), with one allocation per
//!   prefix list, not per prefix.
//!
//! Extended messages (RFC 8654) are on when both OPENs carry capability 6
//! (`Ctx::extended_messages`): UPDATEs are then packed up to 65,535 bytes.
//! Not implemented: ADD-PATH, extended
//! optional parameters (RFC 9072), semantic NEXT_HOP checks (the session
//! knows the peer), LOCAL_PREF-from-eBGP discard (RFC 7606 7.5, the RIB knows
//! the peer type). The Partial bit on well-known attributes is tolerated (RFC
//! 7606 3 c checks only the Optional and Transitive bits).

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
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, Notification> {
    frame_len_in(buf, &Ctx::default())
}

/// [`frame_len`] for a session whose context may allow RFC 8654 extended
/// messages (up to 65,535 bytes; an OPEN stays within 4,096).
pub fn frame_len_in(buf: &[u8], ctx: &Ctx) -> Result<Option<usize>, Notification> {
    match buf.get(..HEADER_LEN) {
        None => Ok(None),
        Some(h) => validate::check_header(h, ctx.max_len()).map(Some),
    }
}

/// One whole message (header included): validator first, then the decoder.
/// RFC 7606 outcomes come back as Ok: treat-as-withdraw turns the UPDATE's
/// announced prefixes into withdrawn ones and drops its attributes;
/// attribute-discard drops the attribute; both add a [`Warning`]. A
/// ROUTE-REFRESH for a family we do not carry decodes as
/// `RouteRefreshUnsupported` with an `Action::Ignore` warning (RFC 2918 4:
/// the session ignores it when Established).
pub fn decode(msg: &[u8], ctx: &Ctx) -> Result<(Message, Vec<Warning>), Notification> {
    let checked = validate::check(msg, ctx)?;
    decode::after_validation(msg, checked, ctx)
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
