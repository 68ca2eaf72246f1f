//! The RFC 4271 §8 finite state machine of one peer, pure: `Fsm::handle`
//! takes an event and returns the actions to carry out. No sockets and no
//! clocks: the driver (`session::driver`) turns actions into I/O and timer
//! expiries into events, so every transition is unit-tested (`tests`).
//!
//! One FSM follows one TCP connection at a time. A second, colliding
//! connection is resolved by the driver (`session::collision`) with
//! [`collision_keeps_new`] before the FSM sees it (RFC 4271 §6.8). OPEN
//! checks and negotiation are in `open`, on the FSM's own small view of
//! OPEN and NOTIFICATION (`PeerOpen`, `Notif`) so that it does not depend
//! on the codec; `session::adapt` converts.
//!
//! Timers: ConnectRetry and IdleHold back off exponentially with consecutive
//! failures (RFC 4271 §8.1.1 DampPeerOscillations); the driver adds jitter.

mod open;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use open::{Negotiated, Notif, Params, PeerGr, PeerOpen, collision_keeps_new, negotiate};

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

/// Delay of the first KEEPALIVE after Established: with the driver's
/// jitter (× 0.75–1.0) never less than the one second RFC 4271 §4.4 asks
/// between KEEPALIVEs (the previous one went in OpenSent → OpenConfirm).
pub const FIRST_KEEPALIVE: Duration = Duration::from_millis(1334);

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

    /// The driver moves to a newer connection whose OPEN arrived already
    /// (collision resolution, or a restarted GR peer's new connection):
    /// continue on it as in OpenSent, since the driver sent our OPEN there.
    /// An Established session ends first as a lost connection, so that a
    /// GR peer's routes stay (stale) until its new End-of-RIB.
    pub fn adopt_connection(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        match self.state {
            State::OpenSent | State::OpenConfirm => {}
            State::Established => out.push(Action::SessionDown(DownReason::ConnectionLost)),
            State::Idle | State::Connect | State::Active => return out,
        }
        out.push(Action::StopTimer(Timer::Keepalive));
        out.push(Action::StartTimer(Timer::Hold, self.params.open_hold));
        self.negotiated = None;
        self.state = State::OpenSent;
        out
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
                        // The first KEEPALIVE after Established goes out
                        // soon (FIRST_KEEPALIVE), then every keepalive
                        // interval: a peer that went Established on our
                        // OpenConfirm KEEPALIVE but only sends its table
                        // when something next arrives (BIRD 2's event
                        // loop) waits for it instead of its 3 s poll.
                        out.push(A::StartTimer(
                            Timer::Keepalive,
                            FIRST_KEEPALIVE.min(Duration::from_secs(n.keepalive.into())),
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
