//! The instance task's inputs and one `process_*` function for each.
//!
//! Follow one UPDATE: the connection's reader decodes it
//! (`session::conn`), the peer's driver runs it through the FSM and sends
//! [`Event::Update`] (`session::driver`), [`Instance::process_update`]
//! applies it to the RIB, and the instance loop sends every other
//! Established peer its deltas as `Command::Send`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::config::{DEFAULT_STALE_TIME, PeerConfig};
use super::instance::{Instance, Peer, REFUSED_LOG_INTERVAL};
use super::view::{RouteChange, StatusCell};
use crate::bfd::driver as bfd_driver;
use crate::policy::Policy;
use crate::rib::{BestRoute, PeerId, PeerInfo};
use crate::session::fsm::PeerGr;
use crate::session::ratelog::Verdict;
use crate::session::{Command, driver};
use crate::types::{Afi, PathAttrs, Prefix};
use crate::wire;

/// From the library API (`Speaker`); unbounded: only the local caller sends.
pub(crate) enum Request {
    AddPeer {
        cfg: Arc<PeerConfig>,
        password: Option<Vec<u8>>,
        status: StatusCell,
    },
    /// Replies with the driver task, to wait for its NOTIFICATION to go out.
    RemovePeer(IpAddr, oneshot::Sender<Option<JoinHandle<()>>>),
    Originate(Prefix, PathAttrs),
    Withdraw(Prefix),
    Subscribe(mpsc::UnboundedSender<Vec<RouteChange>>),
    BestRoutes(oneshot::Sender<Vec<(Prefix, BestRoute)>>),
    /// Stops every peer; replies with their driver tasks.
    Shutdown(oneshot::Sender<Vec<JoinHandle<()>>>),
}

/// What a peer's Established session agreed on, as the RIB needs it.
#[derive(Debug)]
pub(crate) struct SessionUp {
    /// The driver's number for this session; commands carry it back.
    pub session: u64,
    pub router_id: Ipv4Addr,
    /// Our address on the connection (next-hop self).
    pub local_addr: IpAddr,
    pub families: Vec<Afi>,
    /// The peer's GR capability, when both sides advertised GR.
    pub graceful_restart: Option<PeerGr>,
}

/// From the accept loop, the session drivers and the BFD drivers, on one
/// bounded channel: a sender waits when the instance is behind.
#[derive(Debug)]
pub(crate) enum Event {
    Accepted(TcpStream, IpAddr),
    SessionUp(PeerId, SessionUp),
    /// `keeps_routes`: RFC 4724 helper, the session ended without a
    /// NOTIFICATION.
    SessionDown {
        peer: PeerId,
        keeps_routes: bool,
    },
    Update(PeerId, Box<wire::Update>),
    /// A ROUTE-REFRESH for a negotiated family: send the whole table.
    RouteRefresh(PeerId),
    /// The driver took `Command::ExportsPending`: send the deltas (or the
    /// whole table after a ROUTE-REFRESH).
    ExportsWanted(PeerId),
    /// The peer's BFD session went from Up to Down.
    BfdDown(PeerId),
}

impl Instance {
    pub fn process_request(&mut self, r: Request) {
        match r {
            Request::AddPeer {
                cfg,
                password,
                status,
            } => self.process_add_peer(cfg, password, status),
            Request::RemovePeer(addr, reply) => {
                let _ = reply.send(self.process_remove_peer(addr));
            }
            Request::Originate(prefix, attrs) => {
                let ch = self.rib.originate(crate::types::normalize(prefix), attrs);
                self.publish(ch.best);
            }
            Request::Withdraw(prefix) => {
                let ch = self.rib.withdraw_local(crate::types::normalize(prefix));
                self.publish(ch.best);
            }
            Request::Subscribe(tx) => {
                let all: Vec<RouteChange> = self
                    .rib
                    .best()
                    .map(|(prefix, b)| RouteChange {
                        prefix,
                        best: Some(b),
                    })
                    .collect();
                if all.is_empty() || tx.send(all).is_ok() {
                    self.subscribers.push(tx);
                }
            }
            Request::BestRoutes(reply) => {
                let _ = reply.send(self.rib.best().collect());
            }
            Request::Shutdown(reply) => {
                let ids: Vec<PeerId> = self.peers.keys().copied().collect();
                let mut tasks = Vec::new();
                for id in ids {
                    if let Some(mut p) = self.peers.remove(&id) {
                        self.by_addr.remove(&p.cfg.address);
                        let _ = p.commands.send(Command::Stop);
                        tasks.extend(p.task.take());
                        // A session stopped by us keeps no routes.
                        if p.session.is_some() {
                            let ch = self.rib.remove_peer(id);
                            self.publish(ch.best);
                        }
                    }
                }
                let _ = reply.send(tasks);
            }
        }
    }

    pub fn process_event(&mut self, e: Event) {
        match e {
            Event::Accepted(stream, from) => self.process_accept(stream, from),
            Event::SessionUp(id, up) => self.process_session_up(id, up),
            Event::SessionDown { peer, keeps_routes } => {
                self.process_session_down(peer, keeps_routes)
            }
            Event::Update(id, u) => self.process_update(id, *u),
            Event::RouteRefresh(id) => self.process_route_refresh(id),
            Event::ExportsWanted(id) => self.process_exports_wanted(id),
            Event::BfdDown(id) => self.process_bfd_down(id),
        }
    }

    /// Starts the peer's session driver (and BFD session).
    fn process_add_peer(
        &mut self,
        cfg: Arc<PeerConfig>,
        password: Option<Vec<u8>>,
        status: StatusCell,
    ) {
        if self.by_addr.contains_key(&cfg.address) {
            // `Speaker::add_peer` refuses duplicates before asking.
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(driver::run(driver::PeerTask {
            id,
            cfg: Arc::clone(&cfg),
            local: driver::Local {
                asn: self.cfg.asn,
                router_id: self.cfg.router_id,
                restart_time: self.cfg.graceful_restart.as_ref().map(|g| g.restart_time),
                restarting: self.restarting,
            },
            password,
            events: self.events.clone(),
            commands: rx,
            status: status.clone(),
            metrics: Arc::clone(&self.metrics),
        }));
        let bfd = cfg.bfd.map(|bfd_cfg| {
            let listen = self
                .cfg
                .listen
                .map(|a| a.ip())
                .unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
            let hub = self
                .bfd_hub
                .get_or_insert_with(|| bfd_driver::Hub::start(listen));
            bfd_driver::spawn(
                hub,
                bfd_driver::PeerBfd {
                    id,
                    peer: cfg.address,
                    source: cfg.source_address,
                    cfg: bfd_cfg,
                    events: self.events.clone(),
                    status: status.clone(),
                    metrics: Arc::clone(&self.metrics),
                },
            )
        });
        self.by_addr.insert(cfg.address, id);
        self.peers.insert(
            id,
            Peer {
                id,
                name: cfg.address.to_string(),
                cfg,
                commands: tx,
                status,
                task: Some(task),
                _bfd: bfd,
                session: None,
                exports_pending: false,
                full_export: false,
                stale_until: None,
                stale_families: Vec::new(),
                peer_gr_time: None,
                eor_waiting: Vec::new(),
                initial_eor: false,
                counts: None,
            },
        );
    }

    /// Stops the peer's driver (Cease when up) and withdraws its routes.
    fn process_remove_peer(&mut self, addr: IpAddr) -> Option<JoinHandle<()>> {
        let id = self.by_addr.remove(&addr)?;
        let mut p = self.peers.remove(&id)?;
        let _ = p.commands.send(Command::Stop);
        let ch = self.rib.remove_peer(id);
        self.publish(ch.best);
        // Peers left may all have sent their End-of-RIB now.
        self.check_synced();
        p.task.take()
    }

    /// A connection to our listener: to its peer's driver, or refused.
    fn process_accept(&mut self, stream: TcpStream, from: IpAddr) {
        if let Some(p) = self.by_addr.get(&from).and_then(|id| self.peers.get(id)) {
            let _ = p.commands.send(Command::Incoming(stream));
            return;
        }
        // Not a peer: closed (dropped) here; a flood of them is logged as a
        // few named sources and a count per minute, not a line each.
        self.metrics.refused();
        let (v, summary) = self.refused.event(from, std::time::Instant::now());
        if let Some(s) = summary {
            Instance::log_refused_summary(s);
        }
        if v == Verdict::Log {
            tracing::info!(
                "refused a connection from {from}: not a configured peer (more are counted and summarised every {}s)",
                REFUSED_LOG_INTERVAL.as_secs()
            );
        }
    }

    fn process_session_up(&mut self, id: PeerId, up: SessionUp) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        self.rib.add_peer(
            PeerInfo {
                id,
                addr: p.cfg.address,
                asn: p.cfg.asn,
                router_id: up.router_id,
                local_addr: up.local_addr,
                rr_client: p.cfg.route_reflector_client,
                kind: p.cfg.kind,
            },
            p.cfg.import.clone(),
            family_guard(&p.cfg.export, &up.families),
        );
        // GR helper: routes kept from the previous session stay (stale)
        // only when the peer says it preserved forwarding for the family.
        if !p.stale_families.is_empty() {
            let keep: Vec<Afi> = up
                .graceful_restart
                .as_ref()
                .map(|g| {
                    g.families
                        .iter()
                        .filter(|(_, fwd)| *fwd)
                        .map(|(f, _)| *f)
                        .collect()
                })
                .unwrap_or_default();
            let drop_now: Vec<Afi> = p
                .stale_families
                .iter()
                .copied()
                .filter(|f| !keep.contains(f) || !up.families.contains(f))
                .collect();
            let mut best = Vec::new();
            for afi in drop_now {
                best.extend(self.rib.end_of_rib(id, afi).best);
                p.stale_families.retain(|f| *f != afi);
            }
            if p.stale_families.is_empty() {
                p.stale_until = None;
            } else {
                // RFC 4724: wait for End-of-RIB, bounded by the
                // configured stale time.
                let stale = self
                    .cfg
                    .graceful_restart
                    .as_ref()
                    .map_or(DEFAULT_STALE_TIME, |g| g.stale_time);
                p.stale_until = Some(Instant::now() + stale);
            }
            self.publish(best);
        }
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        p.session = Some(up.session);
        p.exports_pending = false;
        p.full_export = false;
        p.eor_waiting = up.families.clone();
        p.peer_gr_time = up.graceful_restart.as_ref().map(|g| g.time);
        // The whole table, then End-of-RIB for every negotiated family.
        let exports = self.rib.full_export(id);
        let _ = p.commands.send(Command::Send {
            session: up.session,
            exports,
            end_of_rib: up.families,
        });
    }

    fn process_session_down(&mut self, id: PeerId, keeps_routes: bool) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        p.session = None;
        p.exports_pending = false;
        p.full_export = false;
        match p.peer_gr_time {
            Some(time) if keeps_routes && time > 0 => {
                self.rib.peer_stale(id);
                p.stale_families = p.cfg.families.clone();
                p.stale_until = Some(Instant::now() + Duration::from_secs(time.into()));
            }
            _ => {
                p.stale_families.clear();
                p.stale_until = None;
                let ch = self.rib.remove_peer(id);
                self.publish(ch.best);
            }
        }
    }

    fn process_update(&mut self, id: PeerId, u: wire::Update) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if let Some(afi) = u.is_end_of_rib() {
            p.stale_families.retain(|f| *f != afi);
            if p.stale_families.is_empty() {
                p.stale_until = None;
            }
            p.eor_waiting.retain(|f| *f != afi);
            let first = p.eor_waiting.is_empty() && !std::mem::replace(&mut p.initial_eor, true);
            let ch = self.rib.end_of_rib(id, afi);
            self.publish(ch.best);
            if first {
                self.check_synced();
            }
            return;
        }
        let ch = self.rib.update(id, &u.withdrawn, u.attrs, &u.announced);
        let exceeded = ch.max_prefix_exceeded == Some(id);
        let warn = ch.max_prefix_warning == Some(id);
        self.publish(ch.best);
        let Some(p) = self.peers.get(&id) else {
            return;
        };
        if warn {
            p.status.set_error(
                &self.metrics,
                &p.name,
                "maximum number of prefixes reached (warning only)",
            );
        }
        if exceeded && let Some(session) = p.session {
            let wait = self
                .rib
                .max_prefix(id)
                .map(|m| m.restart_after)
                .unwrap_or(Duration::from_secs(60));
            let _ = p.commands.send(Command::MaxPrefix { session, wait });
        }
    }

    /// The whole table again, on the driver's next request (refreshes
    /// asked for meanwhile are one).
    fn process_route_refresh(&mut self, id: PeerId) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(session) = p.session else { return };
        p.full_export = true;
        if !std::mem::replace(&mut p.exports_pending, true) {
            let _ = p.commands.send(Command::ExportsPending { session });
        }
    }

    /// The Adj-RIB-Out deltas queued since the last ones, in one command.
    fn process_exports_wanted(&mut self, id: PeerId) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        p.exports_pending = false;
        let Some(session) = p.session else { return };
        let exports = if std::mem::take(&mut p.full_export) {
            self.rib.full_export(id)
        } else {
            self.rib.take_exports(id)
        };
        if !exports.is_empty() {
            let _ = p.commands.send(Command::Send {
                session,
                exports,
                end_of_rib: Vec::new(),
            });
        }
    }

    fn process_bfd_down(&mut self, id: PeerId) {
        if let Some(p) = self.peers.get(&id) {
            let _ = p.commands.send(Command::BfdDown);
        }
    }

    /// Stale-route timers (GR helper), the bounded selection deferral and
    /// the refused-connection summary.
    pub fn process_timer(&mut self, now: Instant) {
        let due: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| p.stale_until.is_some_and(|t| t <= now))
            .map(|p| p.id)
            .collect();
        for id in due {
            let Some(p) = self.peers.get_mut(&id) else {
                continue;
            };
            p.stale_until = None;
            let families = std::mem::take(&mut p.stale_families);
            let up = p.session.is_some();
            let mut best = Vec::new();
            for afi in families {
                best.extend(self.rib.end_of_rib(id, afi).best);
            }
            if !up {
                best.extend(self.rib.remove_peer(id).best);
            }
            self.publish(best);
        }
        if self.synced_deadline.is_some_and(|t| t <= now) {
            self.synced_deadline = None;
            self.synced.send_replace(true);
        }
        if self.refused_flush <= now {
            self.refused_flush = now + REFUSED_LOG_INTERVAL;
            if let Some(s) = self.refused.flush(std::time::Instant::now()) {
                Instance::log_refused_summary(s);
            }
        }
    }
}

/// The export policy with leading terms that reject every family the
/// session did not negotiate (the RIB's Adj-RIB-Out is family-blind).
fn family_guard(export: &Policy, families: &[Afi]) -> Policy {
    use crate::policy::{Match, PrefixList, PrefixRange, Term, Verdict};
    let mut p = export.clone();
    for (afi, all) in [(Afi::Ipv4, "0.0.0.0/0"), (Afi::Ipv6, "::/0")] {
        if families.contains(&afi) {
            continue;
        }
        let Ok(net) = all.parse() else { continue };
        let Ok(list) = PrefixList::new([PrefixRange::orlonger(net)]) else {
            continue;
        };
        p.terms.insert(
            0,
            Term {
                matches: Match {
                    prefixes: Some(list),
                    ..Match::default()
                },
                verdict: Verdict::Reject,
                modify: Vec::new(),
            },
        );
    }
    p
}
