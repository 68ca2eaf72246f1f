//! The instance task: the one owner of the RIB and the peer table.
//!
//! It waits for three things — a [`Request`] from the library API, an
//! [`Event`] from the accept loop, a session driver or a BFD driver, and
//! its own timers — and hands each to one `process_*` function
//! (`speaker::events`). After a batch of inputs it tells every Established
//! peer whose Adj-RIB-Out changed (`Command::ExportsPending`; the driver
//! asks back and gets the deltas taken together in one `Command::Send`) and
//! refreshes the prefix counts in the status cells. It never awaits a peer:
//! commands go out on unbounded per-peer channels that hold at most a few
//! commands, which the driver drains into its byte-bounded send queue.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::config::SpeakerConfig;
use super::events::{Event, Request};
use super::view::{RouteChange, StatusCell};
use crate::bfd::driver as bfd_driver;
use crate::metrics::Metrics;
use crate::rib::{BestRoute, PeerCounts, PeerId, Rib};
use crate::session::Command;
use crate::session::ratelog::{RateLog, Summary};
use crate::types::{Afi, Prefix};

/// How often refused connections from unknown addresses are summarised.
pub(super) const REFUSED_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Events (or requests) taken in one turn before exports are flushed.
const BATCH: usize = 64;

/// A peer in the instance's table.
pub(super) struct Peer {
    pub id: PeerId,
    pub cfg: Arc<crate::speaker::PeerConfig>,
    pub name: String,
    pub commands: mpsc::UnboundedSender<Command>,
    pub status: StatusCell,
    pub task: Option<JoinHandle<()>>,
    /// Held, not read: dropping it stops the peer's BFD session.
    pub _bfd: Option<bfd_driver::BfdHandle>,
    /// The driver's number of the Established session, if there is one.
    pub session: Option<u64>,
    /// `Command::ExportsPending` went out and the driver has not asked yet.
    pub exports_pending: bool,
    /// A ROUTE-REFRESH asked for the whole table.
    pub full_export: bool,
    /// GR helper: the peer's routes are stale until this instant.
    pub stale_until: Option<Instant>,
    /// Families whose End-of-RIB we still wait for (GR helper).
    pub stale_families: Vec<Afi>,
    /// The peer's GR restart time, when it advertised GR in the session
    /// that is (or last was) up.
    pub peer_gr_time: Option<u16>,
    /// Families whose End-of-RIB the current session has not received.
    pub eor_waiting: Vec<Afi>,
    /// The first session's End-of-RIB arrived for every negotiated family.
    pub initial_eor: bool,
    /// Counts last written to the status cell and the metrics (None: not
    /// yet, so a new peer's zeros show too).
    pub counts: Option<PeerCounts>,
}

pub(super) struct Instance {
    pub cfg: Arc<SpeakerConfig>,
    /// Our OPEN carries the GR Restart State bit (previous run crashed).
    pub restarting: bool,
    pub metrics: Arc<Metrics>,
    pub rib: Rib,
    pub peers: HashMap<PeerId, Peer>,
    pub by_addr: HashMap<IpAddr, PeerId>,
    pub next_id: PeerId,
    pub subscribers: Vec<mpsc::UnboundedSender<Vec<RouteChange>>>,
    /// True once the initial table is complete (see `Speaker::synced`).
    pub synced: watch::Sender<bool>,
    /// RFC 4724 §4.1 selection deferral, bounded: `synced` turns true at
    /// this instant whatever the peers did.
    pub synced_deadline: Option<Instant>,
    /// Given to every driver this task starts.
    pub events: mpsc::Sender<Event>,
    /// BFD's receive socket, opened with the first peer that uses BFD.
    pub bfd_hub: Option<Arc<bfd_driver::Hub>>,
    pub refused: RateLog,
    pub refused_flush: Instant,
}

impl Instance {
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        mut requests: mpsc::UnboundedReceiver<Request>,
    ) {
        loop {
            let next = self.next_deadline();
            tokio::select! {
                r = requests.recv() => match r {
                    Some(r) => {
                        self.process_request(r);
                        for _ in 1..BATCH {
                            match requests.try_recv() {
                                Ok(r) => self.process_request(r),
                                Err(_) => break,
                            }
                        }
                    }
                    // Every `Speaker` handle is gone.
                    None => return,
                },
                Some(e) = events.recv() => {
                    self.take_event(e, &mut requests);
                    for _ in 1..BATCH {
                        match events.try_recv() {
                            Ok(e) => self.take_event(e, &mut requests),
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep_until(next) => self.process_timer(Instant::now()),
            }
            self.flush_exports();
            self.refresh_counts();
        }
    }

    fn take_event(&mut self, e: Event, requests: &mut mpsc::UnboundedReceiver<Request>) {
        if matches!(e, Event::Accepted(..)) {
            // A peer added through the API before the connection came is
            // in the table before the connection is looked up.
            while let Ok(r) = requests.try_recv() {
                self.process_request(r);
            }
        }
        self.process_event(e);
    }

    fn next_deadline(&self) -> Instant {
        self.peers
            .values()
            .filter_map(|p| p.stale_until)
            .chain(self.synced_deadline)
            .fold(self.refused_flush, Instant::min)
    }

    /// Hands best-route changes to the subscribers. (Peers get theirs from
    /// the RIB's per-peer queues in `flush_exports`.)
    pub fn publish(&mut self, best: Vec<(Prefix, Option<BestRoute>)>) {
        if best.is_empty() {
            return;
        }
        let batch: Vec<RouteChange> = best
            .into_iter()
            .map(|(prefix, best)| RouteChange { prefix, best })
            .collect();
        self.subscribers.retain(|s| s.send(batch.clone()).is_ok());
    }

    /// Tells each Established peer whose Adj-RIB-Out changed (once, until
    /// its driver asks for the deltas: `process_exports_wanted`).
    fn flush_exports(&mut self) {
        for p in self.peers.values_mut() {
            let Some(session) = p.session else { continue };
            if p.exports_pending || !self.rib.has_exports(p.id) {
                continue;
            }
            p.exports_pending = true;
            let _ = p.commands.send(Command::ExportsPending { session });
        }
    }

    /// Prefix counts into the status cells and the metrics, where changed.
    fn refresh_counts(&mut self) {
        for p in self.peers.values_mut() {
            let c = self.rib.peer_counts(p.id);
            if p.counts == Some(c) {
                continue;
            }
            p.counts = Some(c);
            p.status.update(|s| s.counts = c);
            self.metrics
                .set_prefixes(&p.name, c.received, c.accepted, c.advertised);
        }
    }

    /// Flips `synced` when there are peers and every one has sent its
    /// initial End-of-RIB.
    pub fn check_synced(&mut self) {
        if *self.synced.borrow() {
            return;
        }
        // No peers yet: nothing learned, so not synced (the restart-time
        // deadline still applies).
        if !self.peers.is_empty() && self.peers.values().all(|p| p.initial_eor) {
            self.synced.send_replace(true);
            self.synced_deadline = None;
        }
    }

    pub fn log_refused_summary(s: Summary) {
        tracing::info!(
            "refused {} more connections from {} addresses that are not configured peers in the last {}s",
            s.suppressed,
            s.sources,
            REFUSED_LOG_INTERVAL.as_secs()
        );
    }
}
