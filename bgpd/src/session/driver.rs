//! The tokio side of one peer: runs its [`Fsm`] over the current
//! connection (`conn`), keeps its timers, and talks to the instance task.
//!
//! Out: [`Event`]s on the instance's bounded channel — `SessionUp`,
//! `SessionDown`, every UPDATE received while Established, a
//! ROUTE-REFRESH, a request for pending exports. In: [`Command`]s — an
//! accepted connection, Stop, BFD Down, max-prefix, "exports pending", and
//! Adj-RIB-Out deltas, which this task encodes into its
//! connection's byte-bounded send queue (a peer that lets it fill goes
//! down with Cease/Out of Resources). A second connection is handled in
//! `collision`. Log lines a remote party can trigger at will (GTSM
//! refusals) go through `ratelog`.
//!
//! Graceful restart: the FSM says whether a session ended without a
//! NOTIFICATION (`DownReason::keeps_routes`); the instance keeps the routes
//! stale. As restarting speaker our OPEN carries the R bit.

use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Command;
use super::adapt::{kind_name, notif, open_message, peer_open};
use super::conn::{Conn, ConnEvent, recv};
use super::fsm::{Action, DownReason, Event as FsmEvent, Fsm, Negotiated, Params, State, Timer};
use super::ratelog::RateLog;
use crate::metrics::Metrics;
use crate::rib::{Export, PeerId};
use crate::speaker::{Event, PeerConfig, SessionUp, StatusCell};
use crate::transport::{self, ConnectOpts, TtlPolicy};
use crate::types::Asn;
use crate::wire::{self, Ctx, Message, Notification};

/// This speaker, as a session needs it.
pub(crate) struct Local {
    pub asn: Asn,
    pub router_id: Ipv4Addr,
    /// Our GR restart time; None: no GR.
    pub restart_time: Option<u16>,
    /// Our OPEN carries the GR Restart State bit.
    pub restarting: bool,
}

pub(crate) struct PeerTask {
    pub id: PeerId,
    pub cfg: Arc<PeerConfig>,
    pub local: Local,
    pub password: Option<Vec<u8>>,
    pub events: mpsc::Sender<Event>,
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub status: StatusCell,
    pub metrics: Arc<Metrics>,
}

/// The result of an outgoing connection attempt, by attempt number.
type Connected = (u64, Result<TcpStream, String>);

pub(super) struct Runner {
    pub t: PeerTask,
    pub fsm: Fsm,
    pub main: Option<Conn>,
    pub pending: Option<Conn>,
    /// Generation of the outgoing connection attempt; stale results are dropped.
    pub generation: u64,
    connected_tx: mpsc::UnboundedSender<Connected>,
    connected: mpsc::UnboundedReceiver<Connected>,
    timers: Vec<(Timer, Instant)>,
    /// Codec context of the Established session.
    ctx: Ctx,
    /// Number of the current (or last) Established session.
    session: u64,
    /// Events for the instance, sent at the end of this turn.
    outbox: Vec<Event>,
    pub name: String,
    stopped: bool,
    /// A send found the queue full; the session goes down after this turn.
    overflow: Cell<bool>,
    /// GTSM refusals, logged once per interval.
    pub gtsm_log: RateLog,
    /// When our last KEEPALIVE was written.
    keepalive_sent: Option<Instant>,
    /// UPDATEs of a new session wait until then (`INITIAL_GAP`), in order
    /// in `held`.
    hold_sends: Option<Instant>,
    held: Vec<(Vec<Export>, Vec<crate::types::Afi>)>,
}

/// How long after our OpenConfirm KEEPALIVE the session's first UPDATE
/// waits. A peer whose read takes the KEEPALIVE (which makes it
/// Established) together with our first UPDATE may only start sending its
/// own table when something next arrives: BIRD 2 then waits for its
/// event loop's 3 s poll (docs/bgp.md, "Session start"). The gap lets the
/// peer read the KEEPALIVE alone; FIRST_KEEPALIVE bounds the wait when
/// even that was not enough.
pub(super) const INITIAL_GAP: Duration = Duration::from_millis(50);

/// How often a repeated refusal is logged.
pub(super) const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

pub(crate) async fn run(t: PeerTask) {
    let params = Params {
        local_asn: t.local.asn,
        router_id: t.local.router_id,
        peer_asn: t.cfg.asn,
        hold_time: t.cfg.hold_time,
        keepalive: t.cfg.keepalive,
        connect_retry: t.cfg.connect_retry,
        max_backoff: Duration::from_secs(120).max(t.cfg.connect_retry),
        open_hold: t.cfg.open_wait,
        passive: t.cfg.passive,
        families: t.cfg.families.clone(),
        graceful_restart: if t.cfg.graceful_restart {
            t.local.restart_time
        } else {
            None
        },
    };
    let name = t.cfg.address.to_string();
    let (connected_tx, connected) = mpsc::unbounded_channel();
    let mut r = Runner {
        t,
        fsm: Fsm::new(params),
        main: None,
        pending: None,
        generation: 0,
        connected_tx,
        connected,
        timers: Vec::new(),
        ctx: Ctx::default(),
        session: 0,
        outbox: Vec::new(),
        name,
        stopped: false,
        overflow: Cell::new(false),
        gtsm_log: RateLog::new(REFUSAL_LOG_INTERVAL),
        keepalive_sent: None,
        hold_sends: None,
        held: Vec::new(),
    };
    r.event(FsmEvent::Start);
    r.sync_status();
    r.run().await;
}

/// Jitter factor in [0.75, 1.0] (RFC 4271 §10), from the std hasher's
/// random keys — no RNG crate needed for this.
fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(d.as_nanos() as u64);
    let f = 0.75 + (h.finish() % 1000) as f64 / 4000.0;
    d.mul_f64(f)
}

impl Runner {
    async fn run(&mut self) {
        loop {
            if self.stopped && self.main.is_none() {
                return;
            }
            let next = self
                .timers
                .iter()
                .map(|(_, at)| *at)
                .chain(
                    self.pending
                        .as_ref()
                        .map(|p| p.since + self.t.cfg.open_wait),
                )
                .chain(self.hold_sends)
                .min();
            tokio::select! {
                c = self.t.commands.recv() => match c {
                    Some(c) => self.command(c),
                    // The instance dropped the peer.
                    None => return,
                },
                Some((generation, res)) = self.connected.recv() => self.connected(generation, res),
                ev = recv(&mut self.main) => self.main_event(ev),
                ev = recv(&mut self.pending) => self.pending_event(ev),
                _ = sleep_until(next) => self.fire_timers(),
            }
            if self.overflow.replace(false) {
                self.event(FsmEvent::SendQueueFull);
            }
            self.sync_status();
            // Waits while the instance is behind: this peer's reader, and
            // so its TCP window, waits with it.
            for e in std::mem::take(&mut self.outbox) {
                if self.t.events.send(e).await.is_err() {
                    return;
                }
            }
            if self.stopped && self.fsm.state() == State::Idle {
                // Give the writer a moment to flush the NOTIFICATION.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
        }
    }

    fn sync_status(&self) {
        let st = self.fsm.state();
        let n = self.fsm.negotiated();
        self.t.status.update(|s| {
            s.state = Some(st);
            if st != State::Established {
                s.established_at = None;
            }
            if let Some(n) = n {
                s.router_id = Some(n.peer_router_id);
                s.hold_time = Some(n.hold_time);
                s.graceful_restart = n.graceful_restart.is_some();
            }
        });
        self.t.metrics.set_state(&self.name, st.mib_value());
    }

    pub fn set_error(&self, e: &str) {
        self.t.status.set_error(&self.t.metrics, &self.name, e);
    }

    /// The status and metrics side of `set_error`, without a log line.
    pub fn note_error(&self, e: &str) {
        self.t.status.note_error(&self.t.metrics, &self.name, e);
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Stop => {
                self.stopped = true;
                if self.fsm.state() == State::Idle {
                    return;
                }
                self.event(FsmEvent::Stop);
            }
            Command::BfdDown => {
                tracing::info!(peer = %self.name, "BFD session down: closing the BGP session");
                self.event(FsmEvent::BfdDown);
            }
            Command::Incoming(stream) => self.incoming(stream),
            Command::Send {
                session,
                exports,
                end_of_rib,
            } => {
                if self.up(session) {
                    if self.hold_sends.is_some() {
                        self.held.push((exports, end_of_rib));
                    } else {
                        self.send_updates(exports, end_of_rib);
                    }
                }
            }
            Command::ExportsPending { session } => {
                if self.up(session) {
                    self.outbox.push(Event::ExportsWanted(self.t.id));
                }
            }
            Command::MaxPrefix { session, wait } => {
                if self.up(session) {
                    self.event(FsmEvent::MaxPrefixExceeded(wait));
                }
            }
        }
    }

    /// Whether `session` is the Established session now.
    fn up(&self, session: u64) -> bool {
        session == self.session && self.fsm.state() == State::Established
    }

    fn connected(&mut self, generation: u64, res: Result<TcpStream, String>) {
        if generation != self.generation {
            return;
        }
        match res {
            Ok(stream) => match self.fsm.state() {
                State::Connect | State::Active => {
                    if let Some(c) = Conn::new(stream, true, self.send_hold()) {
                        self.main = Some(c);
                        self.event(FsmEvent::TcpConnected);
                    }
                }
                State::OpenSent | State::OpenConfirm => self.start_pending(stream, true),
                _ => {}
            },
            Err(e) => {
                self.set_error(&e);
                self.event(FsmEvent::TcpFailed);
            }
        }
    }

    pub fn ttl_policy(&self) -> TtlPolicy {
        TtlPolicy::for_peer(
            self.t.cfg.asn != self.t.local.asn,
            self.t.cfg.multihop,
            self.t.cfg.ttl_security,
        )
    }

    fn main_event(&mut self, ev: ConnEvent) {
        match ev {
            ConnEvent::Closed
                if self.pending.is_some()
                    && matches!(
                        self.fsm.state(),
                        State::OpenSent | State::OpenConfirm | State::Established
                    ) =>
            {
                self.continue_on_pending();
            }
            ConnEvent::Closed => self.event(FsmEvent::TcpClosed),
            ConnEvent::Error(n) => {
                self.count_in("error");
                self.event(FsmEvent::DecodeError(notif(&n)));
            }
            ConnEvent::Msg(m, warnings) => {
                if !matches!(*m, Message::RouteRefreshUnsupported { .. }) {
                    for w in &warnings {
                        self.set_error(&format!("UPDATE error handled by RFC 7606: {w}"));
                    }
                }
                self.message(*m);
            }
            ConnEvent::SendStalled => self.event(FsmEvent::SendHoldExpired),
        }
    }

    fn message(&mut self, m: Message) {
        let established = self.fsm.state() == State::Established;
        tracing::debug!(peer = %self.name, kind = kind_name(&m), state = self.fsm.state().name(), "received");
        match m {
            Message::Open(o) => {
                self.count_in("open");
                self.event(FsmEvent::OpenReceived(peer_open(&o)));
            }
            Message::Keepalive => {
                self.count_in("keepalive");
                self.event(FsmEvent::KeepaliveReceived);
            }
            Message::Notification(n) => {
                self.count_in("notification");
                self.event(FsmEvent::NotificationReceived(notif(&n)));
            }
            Message::RouteRefresh(r) => {
                self.count_in("route_refresh");
                // Before Established this is an FSM error (the FSM says so).
                self.event(FsmEvent::RouteRefreshReceived);
                if established {
                    if self
                        .fsm
                        .negotiated()
                        .is_some_and(|n| n.families.contains(&r.afi))
                    {
                        self.outbox.push(Event::RouteRefresh(self.t.id));
                    } else {
                        // RFC 2918 §4: a family we did not negotiate is ignored.
                        tracing::debug!(peer = %self.name, afi = ?r.afi, "ignored ROUTE-REFRESH for a family not negotiated");
                    }
                }
            }
            Message::RouteRefreshUnsupported { afi, safi } => {
                self.count_in("route_refresh");
                self.event(FsmEvent::RouteRefreshReceived);
                tracing::debug!(peer = %self.name, afi, safi, "ignored ROUTE-REFRESH for a family we do not carry");
            }
            Message::Update(u) => {
                self.count_in("update");
                self.event(FsmEvent::UpdateReceived);
                if established {
                    self.outbox.push(Event::Update(self.t.id, Box::new(u)));
                }
            }
        }
    }

    fn count_in(&self, kind: &str) {
        self.t.metrics.message(&self.name, false, kind);
    }

    pub fn event(&mut self, ev: FsmEvent) {
        let acts = self.fsm.handle(ev);
        self.apply(acts);
    }

    pub(super) fn apply(&mut self, acts: Vec<Action>) {
        for a in acts {
            match a {
                Action::Connect => self.connect(),
                Action::Disconnect => {
                    self.generation += 1;
                    if let Some(c) = self.main.take() {
                        c.close();
                    }
                }
                Action::SendOpen => {
                    let open = self.open_message();
                    self.send(&open);
                }
                Action::SendKeepalive => {
                    self.send(&Message::Keepalive);
                    self.keepalive_sent = Some(Instant::now());
                }
                Action::SendNotification(n) => self.send(&Message::Notification(
                    Notification::new(n.code, n.subcode, n.data),
                )),
                Action::StartTimer(t, d) => {
                    let d = match t {
                        Timer::Hold => d,
                        _ => jitter(d),
                    };
                    self.timers.retain(|(x, _)| *x != t);
                    self.timers.push((t, Instant::now() + d));
                }
                Action::StopTimer(t) => self.timers.retain(|(x, _)| *x != t),
                Action::SessionUp(n) => self.session_up(n),
                Action::SessionDown(r) => self.session_down(r),
                Action::Error(e) => self.set_error(&e),
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        if self.hold_sends.is_some_and(|t| t <= now) {
            self.hold_sends = None;
            if self.fsm.state() == State::Established {
                for (exports, end_of_rib) in std::mem::take(&mut self.held) {
                    self.send_updates(exports, end_of_rib);
                }
            }
        }
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.since + self.t.cfg.open_wait <= now)
            && let Some(p) = self.pending.take()
        {
            // RFC 4271 §8.2.2: the large hold timer bounds the wait for an OPEN.
            self.set_error(&format!(
                "closed a second connection that sent no OPEN within {}s",
                self.t.cfg.open_wait.as_secs()
            ));
            self.send_on(
                &p,
                &Message::Notification(Notification::new(4, 0, Vec::new())),
            );
            p.close();
        }
        let due: Vec<Timer> = self
            .timers
            .iter()
            .filter(|(_, at)| *at <= now)
            .map(|(t, _)| *t)
            .collect();
        self.timers.retain(|(_, at)| *at > now);
        for t in due {
            self.event(FsmEvent::TimerExpired(t));
        }
    }

    fn connect(&mut self) {
        self.generation += 1;
        let generation = self.generation;
        let opts = ConnectOpts {
            peer: SocketAddr::new(self.t.cfg.address, self.t.cfg.port),
            source: self.t.cfg.source_address,
            md5: self.t.password.clone(),
            ttl: self.ttl_policy(),
            timeout: self.t.cfg.connect_retry.max(Duration::from_secs(1)),
        };
        let tx = self.connected_tx.clone();
        tokio::spawn(async move {
            let r = transport::connect(&opts).await.map_err(|e| match (&e, opts.ttl.min_ttl) {
                // GTSM drops the peer's SYN-ACK in the kernel without a trace:
                // say that it may be the reason.
                (transport::TransportError::Timeout(_), Some(min)) => format!(
                    "{e} (GTSM: the kernel drops the peer's packets that arrive with a TTL below {min})"
                ),
                _ => e.to_string(),
            });
            let _ = tx.send((generation, r));
        });
    }

    pub fn open_message(&self) -> Message {
        open_message(self.fsm.params(), self.t.local.restarting)
    }

    pub fn send_on(&self, c: &Conn, m: &Message) {
        self.t.metrics.message(&self.name, true, kind_name(m));
        self.push(c, wire::encode(m, &self.ctx));
    }

    /// Queues encoded bytes unless that would pass the send queue bound
    /// (then the session goes down after this turn).
    fn push(&self, c: &Conn, bytes: Vec<u8>) {
        if !c.push(bytes, self.t.cfg.max_send_queue) {
            self.overflow.set(true);
        }
    }

    /// RFC 9687 §4: max(8 minutes, 2 × hold time), unless configured.
    pub fn send_hold(&self) -> Duration {
        let hold = self
            .fsm
            .negotiated()
            .map_or(self.t.cfg.hold_time, |n| n.hold_time);
        self.t.cfg.send_hold_time.unwrap_or_else(|| {
            Duration::from_secs(480).max(Duration::from_secs(2 * u64::from(hold)))
        })
    }

    fn send(&self, m: &Message) {
        if let Some(c) = &self.main {
            self.send_on(c, m);
        }
    }

    fn session_up(&mut self, n: Negotiated) {
        self.ctx = Ctx {
            four_octet_as: n.four_octet,
            extended_messages: n.extended_messages,
        };
        if let Some(c) = &self.main {
            c.set_send_hold(self.send_hold());
        }
        let local_addr: IpAddr = self
            .main
            .as_ref()
            .map(|c| c.local.ip().to_canonical())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        self.t
            .status
            .update(|s| s.established_at = Some(std::time::Instant::now()));
        tracing::info!(peer = %self.name, hold = n.hold_time, "session established");
        // The instance answers with the whole table and End-of-RIB, sent
        // no sooner than INITIAL_GAP after our KEEPALIVE.
        self.hold_sends = self
            .keepalive_sent
            .map(|k| k + INITIAL_GAP)
            .filter(|t| *t > Instant::now());
        self.held.clear();
        self.session += 1;
        self.outbox.push(Event::SessionUp(
            self.t.id,
            SessionUp {
                session: self.session,
                router_id: n.peer_router_id,
                local_addr,
                families: n.families,
                graceful_restart: n.graceful_restart,
            },
        ));
    }

    fn session_down(&mut self, r: DownReason) {
        self.hold_sends = None;
        self.held.clear();
        self.t.metrics.flap(&self.name);
        self.t.status.update(|s| s.flaps += 1);
        tracing::info!(peer = %self.name, "session down: {r}");
        self.outbox.push(Event::SessionDown {
            peer: self.t.id,
            keeps_routes: r.keeps_routes(),
        });
        self.ctx = Ctx::default();
    }

    /// Adj-RIB-Out deltas, then End-of-RIB for `end_of_rib`.
    fn send_updates(&mut self, exports: Vec<Export>, end_of_rib: Vec<crate::types::Afi>) {
        self.send_exports(exports);
        for afi in end_of_rib {
            self.send(&Message::Update(wire::Update::end_of_rib(afi)));
        }
    }

    /// Encodes Adj-RIB-Out deltas into the send queue.
    fn send_exports(&mut self, exports: Vec<Export>) {
        let Some(c) = &self.main else { return };
        for e in exports {
            let (msgs, unsent) = wire::encode_updates_checked(
                &e.withdrawn,
                e.attrs.as_deref(),
                &e.announced,
                &self.ctx,
            );
            for msg in msgs {
                self.t.metrics.message(&self.name, true, "update");
                self.push(c, msg);
            }
            if let Some(first) = unsent.first() {
                // Too large for this session's largest message (4,096 bytes,
                // or 65,535 with RFC 8654): withdrawing them keeps the peer
                // from using an older path.
                let max = self.ctx.max_len();
                tracing::warn!(peer = %self.name, prefixes = unsent.len(), first = %first,
                    "path attributes leave no room in a {max}-byte UPDATE: withdrawing the prefixes from this peer");
                self.note_error(&format!(
                    "withdrew {} prefixes (first {first}) whose attributes do not fit a {max}-byte UPDATE",
                    unsent.len()
                ));
                for msg in wire::encode_updates(&unsent, None, &[], &self.ctx) {
                    self.t.metrics.message(&self.name, true, "update");
                    self.push(c, msg);
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
