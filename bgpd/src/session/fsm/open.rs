//! OPEN as the FSM sees it: what we offer (`Params`), what the peer sent
//! (`PeerOpen`), the RFC 4271 §6.2 checks and capability negotiation, and
//! the §6.8 collision rule. NOTIFICATIONs as `Notif`.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::types::{Afi, Asn};

/// A NOTIFICATION as the FSM sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notif {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notif {
    pub fn new(code: u8, subcode: u8) -> Notif {
        Notif {
            code,
            subcode,
            data: Vec::new(),
        }
    }
}

impl std::fmt::Display for Notif {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = match self.code {
            1 => "Message Header Error",
            2 => "OPEN Message Error",
            3 => "UPDATE Message Error",
            4 => "Hold Timer Expired",
            5 => "Finite State Machine Error",
            6 => "Cease",
            7 => "ROUTE-REFRESH Message Error",
            8 => "Send Hold Timer Expired",
            _ => "Unknown",
        };
        let sub = match (self.code, self.subcode) {
            (2, 1) => "Unsupported Version Number",
            (2, 2) => "Bad Peer AS",
            (2, 3) => "Bad BGP Identifier",
            (2, 4) => "Unsupported Optional Parameter",
            (2, 6) => "Unacceptable Hold Time",
            (2, 7) => "Unsupported Capability",
            (6, 1) => "Maximum Number of Prefixes Reached",
            (6, 2) => "Administrative Shutdown",
            (6, 3) => "Peer De-configured",
            (6, 4) => "Administrative Reset",
            (6, 5) => "Connection Rejected",
            (6, 6) => "Other Configuration Change",
            (6, 7) => "Connection Collision Resolution",
            (6, 8) => "Out of Resources",
            (6, 10) => "BFD Down",
            _ => "",
        };
        if sub.is_empty() {
            write!(f, "{code} ({}/{})", self.code, self.subcode)
        } else {
            write!(f, "{code}: {sub} ({}/{})", self.code, self.subcode)
        }
    }
}

/// Graceful restart as the peer advertised it (RFC 4724).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerGr {
    pub restarting: bool,
    pub time: u16,
    pub families: Vec<(Afi, bool)>,
}

/// The parts of a received OPEN the FSM negotiates on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerOpen {
    pub version: u8,
    pub asn: Asn,
    pub hold_time: u16,
    pub router_id: Ipv4Addr,
    /// Multiprotocol capabilities; empty means "IPv4 unicast only" (RFC 4760 §8).
    pub families: Vec<Afi>,
    pub route_refresh: bool,
    pub four_octet: bool,
    /// RFC 8654 extended messages (we always offer them).
    pub extended_messages: bool,
    pub graceful_restart: Option<PeerGr>,
}

/// What we offer in our OPEN and accept from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub local_asn: Asn,
    pub router_id: Ipv4Addr,
    pub peer_asn: Asn,
    /// Our proposed hold time; 0 disables keepalives and the hold timer.
    pub hold_time: u16,
    /// Keepalive interval we use when the negotiated hold time equals ours;
    /// otherwise a third of the negotiated hold time.
    pub keepalive: Option<u16>,
    pub connect_retry: Duration,
    /// Upper bound for the backoff of ConnectRetry and IdleHold.
    pub max_backoff: Duration,
    /// Hold timer while waiting for the peer's OPEN (RFC 4271 §8.2.2 "large
    /// value", 4 minutes suggested).
    pub open_hold: Duration,
    /// Only wait for the peer to connect.
    pub passive: bool,
    pub families: Vec<Afi>,
    /// Our graceful restart capability: restart time; None disables GR.
    pub graceful_restart: Option<u16>,
}

/// What both sides agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub peer_asn: Asn,
    pub peer_router_id: Ipv4Addr,
    pub hold_time: u16,
    pub keepalive: u16,
    pub four_octet: bool,
    /// Both sides offered RFC 8654 extended messages.
    pub extended_messages: bool,
    pub families: Vec<Afi>,
    pub route_refresh: bool,
    /// The peer's GR capability, when both sides advertised GR.
    pub graceful_restart: Option<PeerGr>,
}

/// RFC 4271 §6.2 OPEN checks and capability negotiation.
pub fn negotiate(p: &Params, open: &PeerOpen) -> Result<Negotiated, Notif> {
    if open.version != 4 {
        return Err(Notif {
            code: 2,
            subcode: 1,
            data: 4u16.to_be_bytes().to_vec(),
        });
    }
    if open.asn != p.peer_asn {
        return Err(Notif::new(2, 2));
    }
    if open.hold_time == 1 || open.hold_time == 2 {
        return Err(Notif::new(2, 6));
    }
    let id = open.router_id;
    if id.is_unspecified() || id.is_broadcast() || (p.local_asn == p.peer_asn && id == p.router_id)
    {
        return Err(Notif::new(2, 3));
    }
    let peer_families: Vec<Afi> = if open.families.is_empty() {
        vec![Afi::Ipv4]
    } else {
        open.families.clone()
    };
    let families: Vec<Afi> = p
        .families
        .iter()
        .copied()
        .filter(|f| peer_families.contains(f))
        .collect();
    let hold_time = p.hold_time.min(open.hold_time);
    let keepalive = match p.keepalive {
        Some(k) if hold_time == p.hold_time && k > 0 && k < hold_time.max(1) => k,
        _ => (hold_time / 3).max(1),
    };
    Ok(Negotiated {
        peer_asn: open.asn,
        peer_router_id: open.router_id,
        hold_time,
        keepalive,
        four_octet: open.four_octet,
        extended_messages: open.extended_messages,
        families,
        route_refresh: open.route_refresh,
        graceful_restart: if p.graceful_restart.is_some() {
            open.graceful_restart.clone()
        } else {
            None
        },
    })
}

/// RFC 4271 §6.8: of two connections to the same peer, keep the one opened
/// by the side with the higher BGP Identifier. `existing_ours` / `new_ours`
/// say which side opened each connection. Returns whether to keep the new one.
pub fn collision_keeps_new(
    local_id: Ipv4Addr,
    remote_id: Ipv4Addr,
    existing_ours: bool,
    new_ours: bool,
) -> bool {
    if existing_ours == new_ours {
        // Same initiator twice: the newer connection replaces a dead one.
        return true;
    }
    let local_wins = u32::from(local_id) > u32::from(remote_id);
    // Keep the connection the winner opened.
    if local_wins { new_ours } else { !new_ours }
}
