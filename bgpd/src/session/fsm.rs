//! The RFC 4271 §8 finite state machine of one peer, pure: `Fsm::handle`
//! takes an event and returns the actions to carry out. No sockets and no
//! clocks: the driver (`session::driver`) turns actions into I/O and timer
//! expiries into events, so every transition is unit-tested here.
//!
//! One FSM follows one TCP connection at a time. A second, colliding
//! connection is resolved by the driver with [`collision_keeps_new`] before
//! the FSM sees it (RFC 4271 §6.8). The FSM uses its own small view of OPEN
//! and NOTIFICATION (`PeerOpen`, `Notif`) so that it does not depend on the
//! codec; `session::adapt` converts.
//!
//! Timers: ConnectRetry and IdleHold back off exponentially with consecutive
//! failures (RFC 4271 §8.1.1 DampPeerOscillations); the driver adds jitter.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::types::{Afi, Asn};

/// RFC 4271 §8.2.2 states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "Idle",
            State::Connect => "Connect",
            State::Active => "Active",
            State::OpenSent => "OpenSent",
            State::OpenConfirm => "OpenConfirm",
            State::Established => "Established",
        }
    }

    /// Index for metrics (1..=6, as in the BGP4-MIB bgpPeerState).
    pub fn mib_value(self) -> i64 {
        match self {
            State::Idle => 1,
            State::Connect => 2,
            State::Active => 3,
            State::OpenSent => 4,
            State::OpenConfirm => 5,
            State::Established => 6,
        }
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    ConnectRetry,
    Hold,
    Keepalive,
    /// Wait in Idle before starting again (backoff after a failure, or the
    /// max-prefix restart time).
    IdleHold,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Start,
    Stop,
    TimerExpired(Timer),
    /// A TCP connection (ours or the peer's) is up and owned by the FSM.
    TcpConnected,
    /// Our outgoing connection attempt failed.
    TcpFailed,
    /// The connection closed or broke.
    TcpClosed,
    OpenReceived(PeerOpen),
    KeepaliveReceived,
    UpdateReceived,
    RouteRefreshReceived,
    NotificationReceived(Notif),
    /// The wire layer rejected a message; the NOTIFICATION to send.
    DecodeError(Notif),
    /// The peer sent more prefixes than allowed; stay down this long.
    MaxPrefixExceeded(Duration),
    /// The BFD session towards the peer went from Up to Down: the
    /// forwarding path is gone.
    BfdDown,
    /// RFC 9687: the peer took none of our data for the send hold time.
    SendHoldExpired,
    /// The send queue towards the peer reached its bound.
    SendQueueFull,
}

/// Why an Established session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    /// We sent this NOTIFICATION.
    Sent(Notif),
    /// The peer sent this NOTIFICATION.
    Received(Notif),
    /// TCP closed or broke without a NOTIFICATION.
    ConnectionLost,
    /// We stopped the peer.
    Stopped,
}

impl DownReason {
    /// RFC 4724 §4.2: a helper keeps the peer's routes (stale) when the TCP
    /// session ends without a NOTIFICATION — the peer's process restarted.
    /// Our hold timer expiring is not that: the peer went silent (power
    /// lost, link cut), we send a NOTIFICATION, and its routes go now, so a
    /// dead node is withdrawn within the hold time instead of blackholing
    /// traffic for the whole restart time.
    pub fn keeps_routes(&self) -> bool {
        match self {
            DownReason::ConnectionLost => true,
            DownReason::Sent(_) | DownReason::Received(_) | DownReason::Stopped => false,
        }
    }
}

impl std::fmt::Display for DownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DownReason::Sent(n) => write!(f, "sent {n}"),
            DownReason::Received(n) => write!(f, "received {n}"),
            DownReason::ConnectionLost => f.write_str("connection lost"),
            DownReason::Stopped => f.write_str("stopped"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start an outgoing connection (incoming ones are accepted meanwhile).
    Connect,
    /// Close the current connection (and abort an outgoing attempt).
    Disconnect,
    SendOpen,
    SendKeepalive,
    SendNotification(Notif),
    StartTimer(Timer, Duration),
    StopTimer(Timer),
    SessionUp(Negotiated),
    SessionDown(DownReason),
    /// A connection-level failure before Established (for status/metrics).
    Error(String),
}

/// First IdleHold after a failure.
const IDLE_HOLD_BASE: Duration = Duration::from_secs(1);

pub struct Fsm {
    params: Params,
    state: State,
    /// Consecutive failures since the last Established session (backoff).
    failures: u32,
    negotiated: Option<Negotiated>,
    /// Whether the session should come back by itself after going Idle.
    running: bool,
}

impl Fsm {
    pub fn new(params: Params) -> Fsm {
        Fsm {
            params,
            state: State::Idle,
            failures: 0,
            negotiated: None,
            running: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// Whether a new incoming connection may be handed to the FSM right away.
    pub fn accepts_connection(&self) -> bool {
        matches!(self.state, State::Connect | State::Active)
    }

    /// Collision resolution picked a newer connection, whose OPEN arrived
    /// already: continue on it as if in OpenSent (the driver sent our OPEN).
    pub fn adopt_connection(&mut self) {
        if matches!(self.state, State::OpenSent | State::OpenConfirm) {
            self.state = State::OpenSent;
        }
    }

    fn backoff(&self, base: Duration) -> Duration {
        let shift = self.failures.min(16);
        base.saturating_mul(1u32 << shift)
            .min(self.params.max_backoff)
    }

    fn fsm_error(&self) -> Notif {
        // RFC 6608 subcodes.
        let sub = match self.state {
            State::OpenSent => 1,
            State::OpenConfirm => 2,
            State::Established => 3,
            _ => 0,
        };
        Notif::new(5, sub)
    }

    pub fn handle(&mut self, ev: Event) -> Vec<Action> {
        use Action as A;
        use State as S;
        let mut out = Vec::new();
        match (self.state, ev) {
            (S::Idle, Event::Start) | (S::Idle, Event::TimerExpired(Timer::IdleHold)) => {
                self.running = true;
                out.push(A::StopTimer(Timer::IdleHold));
                self.start(&mut out);
            }
            (_, Event::Start) => self.running = true,
            (S::Idle, Event::Stop) => {
                self.running = false;
                out.push(A::StopTimer(Timer::IdleHold));
            }
            (S::Idle, _) => {
                // Idle refuses everything else (the driver closes stray connections).
            }
            (_, Event::Stop) => {
                if matches!(self.state, S::OpenSent | S::OpenConfirm | S::Established) {
                    out.push(A::SendNotification(Notif::new(6, 2)));
                }
                self.running = false;
                self.go_idle(&mut out, DownReason::Stopped, None);
            }
            (S::Connect | S::Active, Event::TcpConnected) => {
                out.push(A::StopTimer(Timer::ConnectRetry));
                out.push(A::SendOpen);
                out.push(A::StartTimer(Timer::Hold, self.params.open_hold));
                self.state = S::OpenSent;
            }
            (S::Connect, Event::TcpFailed) => {
                self.failures = self.failures.saturating_add(1);
                out.push(A::StartTimer(
                    Timer::ConnectRetry,
                    self.backoff(self.params.connect_retry),
                ));
                self.state = S::Active;
            }
            (S::Connect | S::Active, Event::TimerExpired(Timer::ConnectRetry)) => {
                if self.params.passive {
                    out.push(A::StartTimer(
                        Timer::ConnectRetry,
                        self.params.connect_retry,
                    ));
                } else {
                    out.push(A::Disconnect);
                    out.push(A::Connect);
                    out.push(A::StartTimer(
                        Timer::ConnectRetry,
                        self.backoff(self.params.connect_retry),
                    ));
                    self.state = S::Connect;
                }
            }
            (S::Connect | S::Active, Event::TcpFailed | Event::TcpClosed) => {}
            (S::OpenSent, Event::OpenReceived(open)) => match negotiate(&self.params, &open) {
                Ok(n) => {
                    out.push(A::SendKeepalive);
                    if n.hold_time == 0 {
                        out.push(A::StopTimer(Timer::Hold));
                    } else {
                        out.push(A::StartTimer(
                            Timer::Hold,
                            Duration::from_secs(n.hold_time.into()),
                        ));
                        out.push(A::StartTimer(
                            Timer::Keepalive,
                            Duration::from_secs(n.keepalive.into()),
                        ));
                    }
                    self.negotiated = Some(n);
                    self.state = S::OpenConfirm;
                }
                Err(n) => {
                    out.push(A::Error(format!("sent {n}")));
                    out.push(A::SendNotification(n.clone()));
                    self.go_idle(&mut out, DownReason::Sent(n), None);
                }
            },
            (S::OpenSent, Event::TcpClosed) => {
                // RFC 4271: back to Active, keep listening, retry later.
                out.push(A::Error("connection closed in OpenSent".into()));
                out.push(A::Disconnect);
                out.push(A::StopTimer(Timer::Hold));
                self.failures = self.failures.saturating_add(1);
                out.push(A::StartTimer(
                    Timer::ConnectRetry,
                    self.backoff(self.params.connect_retry),
                ));
                self.state = S::Active;
            }
            (S::OpenConfirm, Event::KeepaliveReceived) => {
                self.state = S::Established;
                self.failures = 0;
                if let Some(n) = &self.negotiated {
                    if n.hold_time != 0 {
                        out.push(A::StartTimer(
                            Timer::Hold,
                            Duration::from_secs(n.hold_time.into()),
                        ));
                    }
                    out.push(A::SessionUp(n.clone()));
                }
            }
            (S::OpenConfirm | S::Established, Event::TimerExpired(Timer::Keepalive)) => {
                out.push(A::SendKeepalive);
                if let Some(n) = &self.negotiated
                    && n.hold_time != 0
                {
                    out.push(A::StartTimer(
                        Timer::Keepalive,
                        Duration::from_secs(n.keepalive.into()),
                    ));
                }
            }
            (
                S::Established,
                Event::KeepaliveReceived | Event::UpdateReceived | Event::RouteRefreshReceived,
            ) => {
                if let Some(n) = &self.negotiated
                    && n.hold_time != 0
                {
                    out.push(A::StartTimer(
                        Timer::Hold,
                        Duration::from_secs(n.hold_time.into()),
                    ));
                }
            }
            (S::OpenSent | S::OpenConfirm | S::Established, Event::TimerExpired(Timer::Hold)) => {
                let n = Notif::new(4, 0);
                out.push(A::Error(format!("sent {n}")));
                out.push(A::SendNotification(n.clone()));
                self.go_idle(&mut out, DownReason::Sent(n), None);
            }
            (S::OpenConfirm | S::Established, Event::TcpClosed) => {
                out.push(A::Error("connection closed by peer".into()));
                self.go_idle(&mut out, DownReason::ConnectionLost, None);
            }
            (_, Event::NotificationReceived(n)) => {
                out.push(A::Error(format!("received {n}")));
                self.go_idle(&mut out, DownReason::Received(n), None);
            }
            (_, Event::DecodeError(n)) => {
                out.push(A::Error(format!("sent {n}")));
                out.push(A::SendNotification(n.clone()));
                self.go_idle(&mut out, DownReason::Sent(n), None);
            }
            (S::Established, Event::MaxPrefixExceeded(wait)) => {
                let n = Notif::new(6, 1);
                out.push(A::Error(format!("sent {n}")));
                out.push(A::SendNotification(n.clone()));
                self.go_idle(&mut out, DownReason::Sent(n), Some(wait));
            }
            (S::OpenSent | S::OpenConfirm | S::Established, Event::BfdDown) => {
                // RFC 9384 Cease/BFD Down (if the connection still takes it);
                // like a hold timer expiry the routes go now, not stale.
                let n = Notif::new(6, 10);
                out.push(A::Error(format!("sent {n}")));
                out.push(A::SendNotification(n.clone()));
                self.go_idle(&mut out, DownReason::Sent(n), None);
            }
            (S::OpenSent | S::OpenConfirm | S::Established, Event::SendHoldExpired) => {
                // RFC 9687 §3: NOTIFICATION Send Hold Timer Expired (it may
                // not get through: the peer is not reading), routes go now.
                let n = Notif::new(8, 0);
                out.push(A::Error(format!("sent {n}")));
                out.push(A::SendNotification(n.clone()));
                self.go_idle(&mut out, DownReason::Sent(n), None);
            }
            (S::OpenSent | S::OpenConfirm | S::Established, Event::SendQueueFull) => {
                let n = Notif::new(6, 8);
                out.push(A::Error(format!("sent {n}: the peer does not read")));
                out.push(A::SendNotification(n.clone()));
                self.go_idle(&mut out, DownReason::Sent(n), None);
            }
            (S::OpenSent | S::OpenConfirm | S::Established, _) => {
                // Anything else here is out of order (RFC 4271 §8.2.2, RFC 6608).
                let n = self.fsm_error();
                out.push(A::Error(format!("sent {n}")));
                out.push(A::SendNotification(n.clone()));
                self.go_idle(&mut out, DownReason::Sent(n), None);
            }
            (S::Connect | S::Active, _) => {}
        }
        out
    }

    fn start(&mut self, out: &mut Vec<Action>) {
        if self.params.passive {
            self.state = State::Active;
            out.push(Action::StartTimer(
                Timer::ConnectRetry,
                self.params.connect_retry,
            ));
        } else {
            self.state = State::Connect;
            out.push(Action::Connect);
            out.push(Action::StartTimer(
                Timer::ConnectRetry,
                self.backoff(self.params.connect_retry),
            ));
        }
    }

    /// Drop the connection and go Idle; come back after a backoff (or
    /// `wait`) unless stopped.
    fn go_idle(&mut self, out: &mut Vec<Action>, reason: DownReason, wait: Option<Duration>) {
        out.push(Action::Disconnect);
        for t in [Timer::ConnectRetry, Timer::Hold, Timer::Keepalive] {
            out.push(Action::StopTimer(t));
        }
        if self.state == State::Established {
            out.push(Action::SessionDown(reason));
        }
        self.negotiated = None;
        self.state = State::Idle;
        if self.running {
            let d = match wait {
                Some(w) => w,
                None => {
                    let d = self.backoff(IDLE_HOLD_BASE);
                    self.failures = self.failures.saturating_add(1);
                    d
                }
            };
            out.push(Action::StartTimer(Timer::IdleHold, d));
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            local_asn: 65001,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
            peer_asn: 65002,
            hold_time: 9,
            keepalive: Some(3),
            connect_retry: Duration::from_secs(5),
            max_backoff: Duration::from_secs(60),
            open_hold: Duration::from_secs(240),
            passive: false,
            families: vec![Afi::Ipv4, Afi::Ipv6],
            graceful_restart: Some(120),
        }
    }

    fn open() -> PeerOpen {
        PeerOpen {
            version: 4,
            asn: 65002,
            hold_time: 90,
            router_id: Ipv4Addr::new(10, 0, 0, 2),
            families: vec![Afi::Ipv4, Afi::Ipv6],
            route_refresh: true,
            four_octet: true,
            extended_messages: false,
            graceful_restart: Some(PeerGr {
                restarting: false,
                time: 120,
                families: vec![(Afi::Ipv4, true)],
            }),
        }
    }

    fn established(p: Params) -> Fsm {
        let mut f = Fsm::new(p);
        f.handle(Event::Start);
        f.handle(Event::TcpConnected);
        f.handle(Event::OpenReceived(open()));
        let a = f.handle(Event::KeepaliveReceived);
        assert!(a.iter().any(|a| matches!(a, Action::SessionUp(_))));
        assert_eq!(f.state(), State::Established);
        f
    }

    #[test]
    fn active_open_reaches_established_with_negotiated_timers() {
        let mut f = Fsm::new(params());
        let a = f.handle(Event::Start);
        assert_eq!(f.state(), State::Connect);
        assert!(a.contains(&Action::Connect));
        let a = f.handle(Event::TcpConnected);
        assert_eq!(f.state(), State::OpenSent);
        assert!(a.contains(&Action::SendOpen));
        let a = f.handle(Event::OpenReceived(open()));
        assert_eq!(f.state(), State::OpenConfirm);
        assert!(a.contains(&Action::SendKeepalive));
        assert!(a.contains(&Action::StartTimer(Timer::Hold, Duration::from_secs(9))));
        assert!(a.contains(&Action::StartTimer(
            Timer::Keepalive,
            Duration::from_secs(3)
        )));
        f.handle(Event::KeepaliveReceived);
        assert_eq!(f.state(), State::Established);
        let n = f.negotiated().unwrap();
        assert_eq!((n.hold_time, n.keepalive), (9, 3));
        assert!(n.graceful_restart.is_some());
    }

    #[test]
    fn bfd_down_ceases_the_session_and_drops_its_routes_and_is_ignored_when_not_connected() {
        let mut f = established(params());
        let a = f.handle(Event::BfdDown);
        let n = Notif::new(6, 10);
        assert!(a.contains(&Action::SendNotification(n.clone())));
        assert!(a.contains(&Action::Disconnect));
        let down = a
            .iter()
            .find_map(|a| match a {
                Action::SessionDown(r) => Some(r.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(down, DownReason::Sent(n.clone()));
        assert!(!down.keeps_routes(), "BFD Down must not leave stale routes");
        assert_eq!(n.to_string(), "Cease: BFD Down (6/10)");
        assert_eq!(f.state(), State::Idle);
        // It comes back by itself later (BGP does not wait for BFD).
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::StartTimer(Timer::IdleHold, _)))
        );
        f.handle(Event::TimerExpired(Timer::IdleHold));
        assert_eq!(f.state(), State::Connect);
        assert!(f.handle(Event::BfdDown).is_empty());
        assert_eq!(f.state(), State::Connect);
    }

    #[test]
    fn passive_open_waits_for_the_peer() {
        let mut p = params();
        p.passive = true;
        let mut f = Fsm::new(p);
        let a = f.handle(Event::Start);
        assert_eq!(f.state(), State::Active);
        assert!(!a.contains(&Action::Connect));
        let a = f.handle(Event::TimerExpired(Timer::ConnectRetry));
        assert!(!a.contains(&Action::Connect));
        f.handle(Event::TcpConnected);
        assert_eq!(f.state(), State::OpenSent);
    }

    #[test]
    fn hold_time_zero_disables_keepalives() {
        let mut p = params();
        p.hold_time = 0;
        let mut f = Fsm::new(p);
        f.handle(Event::Start);
        f.handle(Event::TcpConnected);
        let a = f.handle(Event::OpenReceived(open()));
        assert!(a.contains(&Action::StopTimer(Timer::Hold)));
        assert!(
            !a.iter()
                .any(|a| matches!(a, Action::StartTimer(Timer::Keepalive, _)))
        );
        let a = f.handle(Event::KeepaliveReceived);
        assert!(
            !a.iter()
                .any(|a| matches!(a, Action::StartTimer(Timer::Hold, _)))
        );
    }

    #[test]
    fn bad_open_is_refused_with_the_right_notification() {
        type Change = Box<dyn Fn(&mut PeerOpen)>;
        let cases: Vec<(Change, (u8, u8))> = vec![
            (Box::new(|o| o.version = 3), (2, 1)),
            (Box::new(|o| o.asn = 65099), (2, 2)),
            (Box::new(|o| o.hold_time = 2), (2, 6)),
            (Box::new(|o| o.router_id = Ipv4Addr::UNSPECIFIED), (2, 3)),
        ];
        for (change, (code, sub)) in cases {
            let mut o = open();
            change(&mut o);
            let mut f = Fsm::new(params());
            f.handle(Event::Start);
            f.handle(Event::TcpConnected);
            let a = f.handle(Event::OpenReceived(o));
            assert!(
                a.iter().any(|a| matches!(a, Action::SendNotification(n) if n.code == code && n.subcode == sub)),
                "{a:?}"
            );
            assert!(a.contains(&Action::Disconnect));
            assert_eq!(f.state(), State::Idle);
        }
    }

    #[test]
    fn hold_expiry_sends_notification_and_drops_routes() {
        let mut f = established(params());
        let a = f.handle(Event::TimerExpired(Timer::Hold));
        assert!(a.contains(&Action::SendNotification(Notif::new(4, 0))));
        let down = a
            .iter()
            .find_map(|a| match a {
                Action::SessionDown(r) => Some(r.clone()),
                _ => None,
            })
            .unwrap();
        assert!(
            !down.keeps_routes(),
            "a silent peer's routes go at hold expiry"
        );
        assert_eq!(f.state(), State::Idle);
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::StartTimer(Timer::IdleHold, _)))
        );
    }

    #[test]
    fn connection_loss_keeps_routes_but_notification_does_not() {
        let mut f = established(params());
        let a = f.handle(Event::TcpClosed);
        assert!(a.contains(&Action::SessionDown(DownReason::ConnectionLost)));
        let mut f = established(params());
        let a = f.handle(Event::NotificationReceived(Notif::new(6, 2)));
        assert!(a.contains(&Action::SessionDown(DownReason::Received(Notif::new(6, 2)))));
        assert!(!DownReason::Received(Notif::new(6, 2)).keeps_routes());
    }

    #[test]
    fn unexpected_message_is_an_fsm_error() {
        let mut f = Fsm::new(params());
        f.handle(Event::Start);
        f.handle(Event::TcpConnected);
        let a = f.handle(Event::UpdateReceived);
        assert!(a.contains(&Action::SendNotification(Notif::new(5, 1))));
        let mut f = established(params());
        let a = f.handle(Event::OpenReceived(open()));
        assert!(a.contains(&Action::SendNotification(Notif::new(5, 3))));
    }

    #[test]
    fn max_prefix_stays_down_for_the_restart_time() {
        let mut f = established(params());
        let a = f.handle(Event::MaxPrefixExceeded(Duration::from_secs(30)));
        assert!(a.contains(&Action::SendNotification(Notif::new(6, 1))));
        assert!(a.contains(&Action::StartTimer(
            Timer::IdleHold,
            Duration::from_secs(30)
        )));
        // Incoming connections are not taken while Idle.
        assert!(!f.accepts_connection());
        let a = f.handle(Event::TimerExpired(Timer::IdleHold));
        assert!(a.contains(&Action::Connect));
    }

    #[test]
    fn connect_retry_backs_off_exponentially_up_to_the_maximum() {
        let mut f = Fsm::new(params());
        f.handle(Event::Start);
        let mut seen = Vec::new();
        for _ in 0..6 {
            let a = f.handle(Event::TcpFailed);
            for x in a {
                if let Action::StartTimer(Timer::ConnectRetry, d) = x {
                    seen.push(d.as_secs());
                }
            }
            f.handle(Event::TimerExpired(Timer::ConnectRetry));
        }
        assert_eq!(seen, vec![10, 20, 40, 60, 60, 60]);
        // Established resets the backoff.
        let mut f = established(params());
        let a = f.handle(Event::TcpClosed);
        assert!(a.contains(&Action::StartTimer(Timer::IdleHold, Duration::from_secs(1))));
    }

    #[test]
    fn stop_sends_cease_and_stays_idle() {
        let mut f = established(params());
        let a = f.handle(Event::Stop);
        assert!(a.contains(&Action::SendNotification(Notif::new(6, 2))));
        assert!(a.contains(&Action::SessionDown(DownReason::Stopped)));
        assert!(
            !a.iter()
                .any(|a| matches!(a, Action::StartTimer(Timer::IdleHold, _)))
        );
    }

    #[test]
    fn collision_keeps_the_connection_of_the_higher_router_id() {
        let low = Ipv4Addr::new(10, 0, 0, 1);
        let high = Ipv4Addr::new(10, 0, 0, 2);
        // We are lower: the peer's connection (not ours) survives.
        assert!(collision_keeps_new(low, high, true, false));
        assert!(!collision_keeps_new(low, high, false, true));
        // We are higher: ours survives.
        assert!(!collision_keeps_new(high, low, true, false));
        assert!(collision_keeps_new(high, low, false, true));
    }

    #[test]
    fn route_refresh_before_established_is_an_fsm_error_not_a_keepalive() {
        let mut f = Fsm::new(params());
        f.handle(Event::Start);
        f.handle(Event::TcpConnected);
        f.handle(Event::OpenReceived(open()));
        assert_eq!(f.state(), State::OpenConfirm);
        let a = f.handle(Event::RouteRefreshReceived);
        assert!(a.contains(&Action::SendNotification(Notif::new(5, 2))));
        assert_eq!(f.state(), State::Idle);
        // In Established it is traffic: the hold timer restarts.
        let mut f = established(params());
        let a = f.handle(Event::RouteRefreshReceived);
        assert_eq!(
            a,
            vec![Action::StartTimer(Timer::Hold, Duration::from_secs(9))]
        );
        assert_eq!(f.state(), State::Established);
    }

    #[test]
    fn send_hold_expiry_sends_code_8_and_drops_routes() {
        let mut f = established(params());
        let a = f.handle(Event::SendHoldExpired);
        let n = Notif::new(8, 0);
        assert!(a.contains(&Action::SendNotification(n.clone())));
        assert!(a.contains(&Action::SessionDown(DownReason::Sent(n.clone()))));
        assert!(!DownReason::Sent(n.clone()).keeps_routes());
        assert_eq!(n.to_string(), "Send Hold Timer Expired (8/0)");
        let mut f = established(params());
        let a = f.handle(Event::SendQueueFull);
        assert!(a.contains(&Action::SendNotification(Notif::new(6, 8))));
        // Not connected: nothing to do.
        let mut f = Fsm::new(params());
        f.handle(Event::Start);
        assert!(f.handle(Event::SendHoldExpired).is_empty());
    }

    #[test]
    fn open_sent_waits_the_configured_open_hold() {
        let mut p = params();
        p.open_hold = Duration::from_secs(7);
        let mut f = Fsm::new(p);
        f.handle(Event::Start);
        let a = f.handle(Event::TcpConnected);
        assert!(a.contains(&Action::StartTimer(Timer::Hold, Duration::from_secs(7))));
    }

    #[test]
    fn families_intersect_and_default_to_ipv4() {
        let mut o = open();
        o.families.clear();
        let n = negotiate(&params(), &o).unwrap();
        assert_eq!(n.families, vec![Afi::Ipv4]);
    }
}
