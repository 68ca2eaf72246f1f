//! A second connection to the same peer (RFC 4271 §6.8).
//!
//! A connection that arrives (or completes) during OpenSent/OpenConfirm is
//! kept as `pending` and sent our OPEN; once its OPEN names the peer's BGP
//! identifier, [`fsm::collision_keeps_new`] picks the survivor — unless the
//! first session reached Established meanwhile: then it wins and the new
//! one is closed with Cease/Connection Collision Resolution. A pending
//! connection that sends no OPEN within `open_wait` is closed (the
//! driver's timers).
//!
//! In Established with graceful restart negotiated, a new connection is
//! also kept as `pending` and sent our OPEN. Only an OPEN on it with the
//! Restart State bit says that the peer restarted (RFC 4724 §4.2): the
//! session moves to the new connection and the peer's routes stay stale
//! until its End-of-RIB. Any other OPEN there is a collision with the
//! Established session (Cease/7), and a connection that closes without an
//! OPEN (the peer's abandoned attempt of a simultaneous start) changes
//! nothing. Without GR, a new connection in Established is refused.
//!
//! When the peer closes the main connection while a pending one is open,
//! the session carries on there (`continue_on_pending`) instead of going
//! Idle, which would refuse the peer's connections for the backoff.
//! GTSM (RFC 5082) checks the TTL of an accepted connection's SYN.

use tokio::net::TcpStream;

use super::adapt::peer_open;
use super::conn::{Conn, ConnEvent};
use super::driver::{REFUSAL_LOG_INTERVAL, Runner};
use super::fsm::{self, Event as FsmEvent, State};
use super::ratelog::Verdict;
use crate::transport;
use crate::wire::{Message, Notification};

impl Runner {
    pub(super) fn incoming(&mut self, stream: TcpStream) {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        let v6 = stream.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
        // GTSM (RFC 5082): the peer's SYN must have arrived with the
        // minimum TTL too, not only what comes after the socket option.
        if let Some(min) = self.ttl_policy().min_ttl {
            match transport::syn_ttl(fd) {
                Some(ttl) if ttl >= min => {}
                seen => {
                    let seen =
                        seen.map_or_else(|| "an unknown TTL".to_string(), |t| format!("TTL {t}"));
                    let e = format!(
                        "GTSM: refused a connection whose SYN arrived with {seen} (needs {min} or more)"
                    );
                    self.note_error(&e);
                    let (v, summary) = self
                        .gtsm_log
                        .event(self.t.cfg.address, std::time::Instant::now());
                    if let Some(s) = summary {
                        tracing::info!(peer = %self.name, "GTSM: refused {} more connections in the last interval", s.suppressed);
                    }
                    if v == Verdict::Log {
                        tracing::info!(peer = %self.name, "{e} (repeats are counted, not logged, for {}s)", REFUSAL_LOG_INTERVAL.as_secs());
                    }
                    return;
                }
            }
        }
        if let Err(e) = self.ttl_policy().apply(fd, v6) {
            self.set_error(&e.to_string());
            return;
        }
        match self.fsm.state() {
            State::Idle => {
                // Idle refuses connections (after an error, during max-prefix hold-down).
            }
            State::Connect | State::Active => {
                self.generation += 1; // our own attempt, if any, loses
                if let Some(c) = Conn::new(stream, false, self.send_hold()) {
                    self.main = Some(c);
                    self.event(FsmEvent::TcpConnected);
                }
            }
            State::OpenSent | State::OpenConfirm => self.start_pending(stream, false),
            State::Established => {
                if self
                    .fsm
                    .negotiated()
                    .is_some_and(|n| n.graceful_restart.is_some())
                {
                    // Perhaps the peer restarted (RFC 4724 §4.2); its OPEN
                    // will say (`pending_event`).
                    self.start_pending(stream, false);
                } else if let Some(c) = Conn::new(stream, false, self.send_hold()) {
                    self.send_on(&c, &Message::Notification(Notification::cease(5)));
                    c.close();
                }
            }
        }
    }

    pub(super) fn start_pending(&mut self, stream: TcpStream, ours: bool) {
        if let Some(old) = self.pending.take() {
            old.close();
        }
        if let Some(c) = Conn::new(stream, ours, self.send_hold()) {
            let open = self.open_message();
            self.send_on(&c, &open);
            self.pending = Some(c);
        }
    }

    /// The peer closed the main connection while its second one is open
    /// (a restarted peer whose old connection closes only now, or a peer
    /// that dropped one of two simultaneous connections): carry on there in
    /// OpenSent, as our OPEN went out on it and the peer's comes next,
    /// instead of waiting in Idle and refusing the peer meanwhile.
    pub(super) fn continue_on_pending(&mut self) {
        let Some(p) = self.pending.take() else {
            return;
        };
        tracing::info!(peer = %self.name, "connection closed by peer: continuing on its second connection");
        self.move_to(p);
    }

    /// The session continues on `p` (our OPEN went out on it) in OpenSent;
    /// the old main connection, if any, is closed.
    fn move_to(&mut self, p: Conn) {
        if let Some(old) = self.main.replace(p) {
            old.close();
        }
        let acts = self.fsm.adopt_connection();
        self.apply(acts);
    }

    pub(super) fn pending_event(&mut self, ev: ConnEvent) {
        if self.fsm.state() == State::Established
            && let ConnEvent::Msg(m, _) = &ev
            && let Message::Open(open) = &**m
            && let Some(p) = self.pending.take()
        {
            let restarted = self
                .fsm
                .negotiated()
                .is_some_and(|n| n.graceful_restart.is_some())
                && open.graceful_restart().is_some_and(|g| g.restarting);
            if restarted {
                // RFC 4724 §4.2: the peer restarted; the old connection
                // is dead even if no FIN or RST reached us.
                self.set_error("the peer restarted (an OPEN with the Restart State bit on a new connection): graceful restart");
                self.move_to(p);
                self.event(FsmEvent::OpenReceived(peer_open(open)));
                return;
            }
            // RFC 4271 §6.8: a collision with an Established session closes
            // the newer connection; the session stays.
            tracing::info!(peer = %self.name, "connection collision with the established session: closing the new connection");
            self.send_on(&p, &Message::Notification(Notification::cease(7)));
            p.close();
            return;
        }
        let ConnEvent::Msg(m, _) = ev else {
            if let Some(p) = self.pending.take() {
                p.close();
            }
            return;
        };
        let Message::Open(open) = *m else {
            if let Some(p) = self.pending.take() {
                p.close();
            }
            return;
        };
        let (Some(p), Some(main)) = (self.pending.take(), self.main.take()) else {
            return;
        };
        let keep_new =
            fsm::collision_keeps_new(self.t.local.router_id, open.router_id, main.ours, p.ours);
        let cease = Message::Notification(Notification::cease(7));
        if keep_new {
            tracing::info!(peer = %self.name, "connection collision: keeping the new connection");
            self.send_on(&main, &cease);
            main.close();
            self.move_to(p);
            self.event(FsmEvent::OpenReceived(peer_open(&open)));
        } else {
            tracing::info!(peer = %self.name, "connection collision: keeping the existing connection");
            self.send_on(&p, &cease);
            p.close();
            self.main = Some(main);
        }
    }
}
