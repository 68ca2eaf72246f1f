//! What the library caller reads: best-route changes, and per-peer status.
//!
//! A peer's [`LiveStatus`] is a small cell each side fills with what it
//! alone knows: the session driver the FSM state, negotiated values, errors
//! and flaps; the BFD driver the BFD state; the instance task the prefix
//! counts. `Speaker::status` reads the cells without asking the instance
//! task, so it stays synchronous and never waits behind a table load.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use crate::bfd::packet::BfdState;
use crate::metrics::Metrics;
use crate::rib::{BestRoute, PeerCounts};
use crate::session::fsm::State;
use crate::types::{Asn, Prefix};

/// A best-route change for the route programmer: None = no route any more.
#[derive(Debug, Clone)]
pub struct RouteChange {
    pub prefix: Prefix,
    pub best: Option<BestRoute>,
}

/// What `twill-bgpd status` shows per peer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerStatus {
    pub address: IpAddr,
    pub asn: Asn,
    pub state: State,
    pub router_id: Option<Ipv4Addr>,
    /// Seconds in Established (0 when not Established).
    pub uptime_secs: u64,
    pub received: usize,
    pub accepted: usize,
    pub advertised: usize,
    pub flaps: u64,
    pub last_error: Option<String>,
    pub graceful_restart: bool,
    pub hold_time: Option<u16>,
    /// The BFD session state, when BFD is configured for the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<BfdState>,
}

/// One peer's status cell (see the module doc for who writes what).
#[derive(Debug, Clone, Default)]
pub(crate) struct LiveStatus {
    pub state: Option<State>,
    pub router_id: Option<Ipv4Addr>,
    pub established_at: Option<std::time::Instant>,
    pub flaps: u64,
    pub last_error: Option<String>,
    pub graceful_restart: bool,
    pub hold_time: Option<u16>,
    pub bfd: Option<BfdState>,
    pub counts: PeerCounts,
}

/// A shared handle on a peer's [`LiveStatus`].
#[derive(Debug, Clone, Default)]
pub(crate) struct StatusCell(Arc<Mutex<LiveStatus>>);

impl StatusCell {
    /// Changes the cell. A panic while it was held cannot leave it half
    /// written in a way that matters for status output: keep using it.
    pub fn update(&self, f: impl FnOnce(&mut LiveStatus)) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g);
    }

    pub fn get(&self) -> LiveStatus {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Logs an error a peer caused and shows it in status and metrics.
    pub fn set_error(&self, metrics: &Metrics, peer: &str, e: &str) {
        tracing::info!(peer = %peer, "{e}");
        self.note_error(metrics, peer, e);
    }

    /// `set_error` without the log line.
    pub fn note_error(&self, metrics: &Metrics, peer: &str, e: &str) {
        self.update(|s| s.last_error = Some(e.to_string()));
        metrics.set_error(peer, e);
    }
}

impl LiveStatus {
    pub fn to_status(&self, address: IpAddr, asn: Asn) -> PeerStatus {
        PeerStatus {
            address,
            asn,
            state: self.state.unwrap_or(State::Idle),
            router_id: self.router_id,
            uptime_secs: self
                .established_at
                .map(|t| t.elapsed().as_secs())
                .unwrap_or(0),
            received: self.counts.received,
            accepted: self.counts.accepted,
            advertised: self.counts.advertised,
            flaps: self.flaps,
            last_error: self.last_error.clone(),
            graceful_restart: self.graceful_restart,
            hold_time: self.hold_time,
            bfd: self.bfd,
        }
    }
}
