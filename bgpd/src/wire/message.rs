//! The decoded forms of the five BGP messages.

use std::net::Ipv4Addr;

use crate::types::{Afi, Asn, PathAttrs, Prefix};

pub use super::notification::Notification;

/// One BGP message. `Update` stays unboxed: it is the contract's shape and
/// the hot path moves it once.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    RouteRefresh(RouteRefresh),
    /// A ROUTE-REFRESH for a family we do not carry (AFI/SAFI as on the
    /// wire). RFC 2918 §4: ignored in Established; still a ROUTE-REFRESH
    /// for the FSM (an error before Established), never a KEEPALIVE.
    RouteRefreshUnsupported {
        afi: u16,
        safi: u8,
    },
}

impl Message {
    /// The message type code (RFC 4271 4.1, RFC 2918).
    pub fn type_code(&self) -> u8 {
        match self {
            Message::Open(_) => msg_type::OPEN,
            Message::Update(_) => msg_type::UPDATE,
            Message::Notification(_) => msg_type::NOTIFICATION,
            Message::Keepalive => msg_type::KEEPALIVE,
            Message::RouteRefresh(_) | Message::RouteRefreshUnsupported { .. } => {
                msg_type::ROUTE_REFRESH
            }
        }
    }

    /// Lower-case type name, for logs and metrics labels.
    pub fn type_name(&self) -> &'static str {
        match self {
            Message::Open(_) => "open",
            Message::Update(_) => "update",
            Message::Notification(_) => "notification",
            Message::Keepalive => "keepalive",
            Message::RouteRefresh(_) | Message::RouteRefreshUnsupported { .. } => "route_refresh",
        }
    }
}

/// OPEN (RFC 4271 4.2) with its capabilities (RFC 5492).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub version: u8,
    /// From the 4-octet AS capability when present, else the 2-octet field.
    /// On encode, an AS above 65535 goes out as AS_TRANS in the 2-octet field
    /// (the caller includes `Capability::FourOctetAs`).
    pub asn: Asn,
    pub hold_time: u16,
    pub router_id: Ipv4Addr,
    pub capabilities: Vec<Capability>,
}

impl Open {
    /// The peer announced the 4-octet AS capability (RFC 6793).
    pub fn four_octet_as(&self) -> Option<Asn> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::FourOctetAs(a) => Some(*a),
            _ => None,
        })
    }

    /// The peer announced multiprotocol unicast for `afi` (RFC 4760 8).
    pub fn multiprotocol(&self, afi: Afi) -> bool {
        self.capabilities.contains(&Capability::Multiprotocol(afi))
    }

    /// The extended message capability (RFC 8654).
    pub fn extended_message() -> Capability {
        Capability::Unknown {
            code: cap::EXTENDED_MESSAGE,
            value: Vec::new(),
        }
    }

    /// The sender announced extended messages (RFC 8654).
    pub fn extended_messages(&self) -> bool {
        self.capabilities.iter().any(|c| {
            matches!(
                c,
                Capability::Unknown {
                    code: cap::EXTENDED_MESSAGE,
                    ..
                }
            )
        })
    }

    /// The peer announced route refresh (RFC 2918).
    pub fn route_refresh(&self) -> bool {
        self.capabilities.contains(&Capability::RouteRefresh)
    }

    /// The peer's graceful restart capability (RFC 4724), if any.
    pub fn graceful_restart(&self) -> Option<&GracefulRestart> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart(g) => Some(g),
            _ => None,
        })
    }
}

/// A capability (RFC 5492). Multiprotocol for a SAFI other than unicast, or
/// any capability we do not interpret, is kept as `Unknown`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// RFC 4760, SAFI unicast.
    Multiprotocol(Afi),
    /// RFC 2918.
    RouteRefresh,
    /// RFC 6793.
    FourOctetAs(Asn),
    /// RFC 4724.
    GracefulRestart(GracefulRestart),
    Unknown {
        code: u8,
        value: Vec<u8>,
    },
}

/// Capability code points (IANA "Capability Codes").
pub mod cap {
    pub const MULTIPROTOCOL: u8 = 1;
    pub const ROUTE_REFRESH: u8 = 2;
    pub const GRACEFUL_RESTART: u8 = 64;
    pub const FOUR_OCTET_AS: u8 = 65;
    /// RFC 8654 extended messages (length 0; kept as `Capability::Unknown`).
    pub const EXTENDED_MESSAGE: u8 = 6;
}

/// The graceful restart capability (RFC 4724 3). Families other than
/// IPv4/IPv6 unicast are dropped on decode.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GracefulRestart {
    /// The Restart State (R) bit.
    pub restarting: bool,
    /// Restart Time in seconds (12 bits on the wire).
    pub time: u16,
    /// (family, Forwarding State bit).
    pub families: Vec<(Afi, bool)>,
}

/// An UPDATE. Both families in one: IPv4 from the classic fields, IPv6 (and
/// IPv4) from MP_REACH_NLRI / MP_UNREACH_NLRI. Lists hold the classic
/// field's prefixes first, then the multiprotocol ones.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    pub withdrawn: Vec<Prefix>,
    pub attrs: Option<PathAttrs>,
    pub announced: Vec<Prefix>,
    /// Set when the message is an End-of-RIB marker (RFC 4724 2): an empty
    /// UPDATE for IPv4, an UPDATE holding only an empty MP_UNREACH_NLRI for
    /// the family otherwise. Added to the contract (the IPv6 marker cannot be
    /// told apart from the three fields alone).
    pub eor: Option<Afi>,
}

impl Update {
    pub fn end_of_rib(afi: Afi) -> Update {
        Update {
            eor: Some(afi),
            ..Update::default()
        }
    }

    pub fn is_end_of_rib(&self) -> Option<Afi> {
        if !self.withdrawn.is_empty() || !self.announced.is_empty() || self.attrs.is_some() {
            return None;
        }
        Some(self.eor.unwrap_or(Afi::Ipv4))
    }
}

/// ROUTE-REFRESH (RFC 2918; `subtype` is RFC 7313's, 0 for a plain request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRefresh {
    pub afi: Afi,
    pub subtype: u8,
}

/// Message type codes (RFC 4271 4.1, RFC 2918).
pub mod msg_type {
    pub const OPEN: u8 = 1;
    pub const UPDATE: u8 = 2;
    pub const NOTIFICATION: u8 = 3;
    pub const KEEPALIVE: u8 = 4;
    pub const ROUTE_REFRESH: u8 = 5;
}
