//! Adapters between the codec (`wire`) and the FSM's own small view of
//! OPEN and NOTIFICATION (`fsm::PeerOpen`, `fsm::Notif`), and our OPEN
//! built from the FSM's parameters.

use super::fsm::{self, Notif, Params};
use crate::wire::{self, Capability, Message, Notification};

/// Our OPEN: the families, route refresh, 4-octet AS, extended messages,
/// and graceful restart (with the R bit when `restarting`).
pub(super) fn open_message(p: &Params, restarting: bool) -> Message {
    let mut caps: Vec<Capability> = p
        .families
        .iter()
        .map(|f| Capability::Multiprotocol(*f))
        .collect();
    caps.push(Capability::RouteRefresh);
    caps.push(Capability::FourOctetAs(p.local_asn));
    caps.push(wire::Open::extended_message());
    if let Some(time) = p.graceful_restart {
        caps.push(Capability::GracefulRestart(wire::GracefulRestart {
            restarting,
            time,
            families: p.families.iter().map(|f| (*f, restarting)).collect(),
        }));
    }
    Message::Open(wire::Open {
        version: 4,
        asn: p.local_asn,
        hold_time: p.hold_time,
        router_id: p.router_id,
        capabilities: caps,
    })
}

pub(super) fn kind_name(m: &Message) -> &'static str {
    match m {
        Message::Open(_) => "open",
        Message::Update(_) => "update",
        Message::Notification(_) => "notification",
        Message::Keepalive => "keepalive",
        Message::RouteRefresh(_) | Message::RouteRefreshUnsupported { .. } => "route_refresh",
    }
}

/// Adapter: the codec's NOTIFICATION to the FSM's.
pub(super) fn notif(n: &Notification) -> Notif {
    Notif {
        code: n.code,
        subcode: n.subcode,
        data: n.data.clone(),
    }
}

/// Adapter: the codec's OPEN to the FSM's view of it.
pub(super) fn peer_open(o: &wire::Open) -> fsm::PeerOpen {
    let mut families = Vec::new();
    let mut route_refresh = false;
    let mut four_octet = false;
    let mut gr = None;
    let extended_messages = o.extended_messages();
    for c in &o.capabilities {
        match c {
            Capability::Multiprotocol(f) => families.push(*f),
            Capability::RouteRefresh => route_refresh = true,
            Capability::FourOctetAs(_) => four_octet = true,
            Capability::GracefulRestart(g) => {
                gr = Some(fsm::PeerGr {
                    restarting: g.restarting,
                    time: g.time,
                    families: g.families.clone(),
                })
            }
            Capability::Unknown { .. } => {}
        }
    }
    fsm::PeerOpen {
        version: o.version,
        asn: o.asn,
        hold_time: o.hold_time,
        router_id: o.router_id,
        families,
        route_refresh,
        four_octet,
        extended_messages,
        graceful_restart: gr,
    }
}
