//! The tokio side of one peer: owns the [`Fsm`], the TCP connection(s) and
//! the timers, and connects the session to the RIB.
//!
//! Each connection has a reader task (a 64 KiB buffer framed with
//! `wire::frame_len_in`, so it never grows; it holds the largest RFC 8654
//! extended message, which the peer may send once its OPEN offered them —
//! we always do; decoded messages go to the peer
//! task over a bounded channel, which pushes back on a fast sender) and a
//! writer task (a queue of encoded messages, bounded in bytes by
//! `PeerConfig::max_send_queue`: a peer that lets it fill is dropped with
//! Cease/Out of Resources; and the RFC 9687 send hold timer: a write that
//! makes no progress for the send hold time ends the session with
//! NOTIFICATION 8). A second connection during OpenSent/OpenConfirm is kept
//! as `pending` until its OPEN names the peer's BGP identifier; then RFC 4271
//! §6.8 picks the survivor — unless the first session reached Established
//! meanwhile: then the Established one wins and the new one is closed with
//! Cease/Connection Collision Resolution. A pending connection that sends
//! no OPEN within `open_wait` is closed.
//!
//! Log lines a remote party can trigger at will (GTSM refusals) go through
//! `ratelog`: once per interval, with a count of the rest.
//!
//! Graceful restart: as helper, a session that ends without a NOTIFICATION
//! keeps the peer's routes stale (`Rib::peer_stale`) for the peer's restart
//! time; when it comes back, End-of-RIB (or the stale timer) drops what was
//! not refreshed. As restarting speaker the OPEN carries the R bit. After the
//! initial table we always send End-of-RIB for every negotiated family.

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::fsm::{self, Action, DownReason, Event, Fsm, Negotiated, Notif, Params, State, Timer};
use super::ratelog::{RateLog, Verdict};
use crate::rib::{PeerId, PeerInfo};
use crate::speaker::{DEFAULT_STALE_TIME, LiveStatus, PeerConfig, Shared};
use crate::transport::{self, ConnectOpts, TtlPolicy};
use crate::types::Afi;
use crate::wire::{self, Capability, Ctx, Message, Notification};

/// Control input of a peer task.
pub(crate) enum Ctl {
    Incoming(TcpStream),
    Connected(u64, Result<TcpStream, String>),
    Stop,
    /// The peer's BFD session went from Up to Down.
    BfdDown,
}

enum ConnEvent {
    Msg(Box<Message>, Vec<wire::Warning>),
    Error(Notification),
    Closed,
    /// A write made no progress for the send hold time (RFC 9687).
    SendStalled,
}

struct Conn {
    ours: bool,
    local: SocketAddr,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes handed to the writer and not yet written to the socket.
    queued: Arc<AtomicUsize>,
    /// The send hold time in milliseconds (set again when the hold time
    /// is negotiated).
    send_hold: Arc<AtomicU64>,
    rx: mpsc::Receiver<ConnEvent>,
    reader: JoinHandle<()>,
    /// When the connection was accepted (pending connections only wait
    /// `open_wait` for an OPEN).
    since: Instant,
}

impl Conn {
    fn new(stream: TcpStream, ours: bool, send_hold: Duration) -> Option<Conn> {
        let local = stream.local_addr().ok()?;
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        let (tx, wrx) = mpsc::unbounded_channel();
        let (etx, rx) = mpsc::channel(256);
        let queued = Arc::new(AtomicUsize::new(0));
        let send_hold = Arc::new(AtomicU64::new(millis(send_hold)));
        let reader = tokio::spawn(read_loop(rd, etx.clone()));
        tokio::spawn(write_loop(
            wr,
            wrx,
            Arc::clone(&queued),
            Arc::clone(&send_hold),
            etx,
        ));
        Some(Conn {
            ours,
            local,
            tx,
            queued,
            send_hold,
            rx,
            reader,
            since: Instant::now(),
        })
    }

    fn close(self) {
        self.reader.abort();
        // Dropping `tx` lets the writer flush what is queued, then shut down.
    }
}

/// Bounded read loop: at most 64 KiB buffered, whatever the peer sends.
async fn read_loop(mut rd: OwnedReadHalf, tx: mpsc::Sender<ConnEvent>) {
    const BUF: usize = 64 * 1024;
    let mut buf = vec![0u8; BUF];
    let (mut start, mut end) = (0usize, 0usize);
    let mut ctx = Ctx::default();
    loop {
        loop {
            let avail = buf.get(start..end).unwrap_or_default();
            let len = match wire::frame_len_in(avail, &ctx) {
                Err(e) => {
                    let _ = tx.send(ConnEvent::Error(e.into())).await;
                    return;
                }
                Ok(None) => break,
                Ok(Some(len)) if avail.len() < len => break,
                Ok(Some(len)) => len,
            };
            let msg = avail.get(..len).unwrap_or_default();
            match wire::decode(msg, &ctx) {
                Ok((m, warnings)) => {
                    if let Message::Open(o) = &m {
                        // We always offer 4-octet AS; it is on when the peer does too.
                        ctx.four_octet_as = o
                            .capabilities
                            .iter()
                            .any(|c| matches!(c, Capability::FourOctetAs(_)));
                        // We always offer extended messages (RFC 8654) too.
                        ctx.extended_messages = o.extended_messages();
                    }
                    if tx
                        .send(ConnEvent::Msg(Box::new(m), warnings))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(ConnEvent::Error(e.into())).await;
                    return;
                }
            }
            start += len;
        }
        if start == end {
            start = 0;
            end = 0;
        } else if BUF - end < ctx.max_len() {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        let Some(space) = buf.get_mut(end..) else {
            return;
        };
        match rd.read(space).await {
            Ok(0) | Err(_) => {
                let _ = tx.send(ConnEvent::Closed).await;
                return;
            }
            Ok(n) => end += n,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Writes queued messages in batches of up to 64 KiB. RFC 9687: when one
/// write makes no progress for the send hold time (the peer's receive
/// window stays closed), the session is told and the writer stops.
async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    send_hold: Arc<AtomicU64>,
    events: mpsc::Sender<ConnEvent>,
) {
    const BATCH: usize = 64 * 1024;
    let mut buf: Vec<u8> = Vec::with_capacity(BATCH);
    while let Some(b) = rx.recv().await {
        buf.clear();
        buf.extend_from_slice(&b);
        while buf.len() < BATCH {
            match rx.try_recv() {
                Ok(b) => buf.extend_from_slice(&b),
                Err(_) => break,
            }
        }
        let mut off = 0;
        while let Some(rest) = buf.get(off..).filter(|r| !r.is_empty()) {
            let hold = Duration::from_millis(send_hold.load(Ordering::Relaxed));
            match tokio::time::timeout(hold, wr.write(rest)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => {
                    off += n;
                    queued.fetch_sub(n, Ordering::Relaxed);
                }
                Err(_) => {
                    let _ = events.send(ConnEvent::SendStalled).await;
                    return;
                }
            }
        }
    }
    let _ = wr.shutdown().await;
}

async fn recv(c: &mut Option<Conn>) -> ConnEvent {
    match c {
        Some(c) => c.rx.recv().await.unwrap_or(ConnEvent::Closed),
        None => std::future::pending().await,
    }
}

pub(crate) struct PeerTask {
    pub id: PeerId,
    pub cfg: Arc<PeerConfig>,
    pub password: Option<Vec<u8>>,
    pub shared: Arc<Shared>,
    pub ctl_tx: mpsc::UnboundedSender<Ctl>,
    pub ctl: mpsc::UnboundedReceiver<Ctl>,
    pub export: Arc<Notify>,
    pub status: Arc<Mutex<LiveStatus>>,
}

struct Runner {
    t: PeerTask,
    fsm: Fsm,
    main: Option<Conn>,
    pending: Option<Conn>,
    /// Generation of the outgoing connection attempt; stale results are dropped.
    generation: u64,
    timers: Vec<(Timer, Instant)>,
    /// Codec context of the Established session.
    ctx: Ctx,
    /// GR helper: the peer's routes are stale until this instant.
    stale_until: Option<Instant>,
    /// Families whose End-of-RIB we still wait for (GR helper).
    stale_families: Vec<Afi>,
    /// The peer advertised GR in the session that last went down.
    peer_gr_time: Option<u16>,
    /// Families whose End-of-RIB this session has not sent yet.
    eor_waiting: Vec<Afi>,
    name: String,
    stopped: bool,
    /// A send found the queue full; the session goes down after this turn.
    overflow: Cell<bool>,
    /// GTSM refusals, logged once per interval.
    gtsm_log: RateLog,
}

/// How often a repeated refusal is logged.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

pub(crate) async fn run(t: PeerTask) {
    let params = Params {
        local_asn: t.shared.cfg.asn,
        router_id: t.shared.cfg.router_id,
        peer_asn: t.cfg.asn,
        hold_time: t.cfg.hold_time,
        keepalive: t.cfg.keepalive,
        connect_retry: t.cfg.connect_retry,
        max_backoff: Duration::from_secs(120).max(t.cfg.connect_retry),
        open_hold: t.cfg.open_wait,
        passive: t.cfg.passive,
        families: t.cfg.families.clone(),
        graceful_restart: if t.cfg.graceful_restart {
            t.shared
                .cfg
                .graceful_restart
                .as_ref()
                .map(|g| g.restart_time)
        } else {
            None
        },
    };
    let name = t.cfg.address.to_string();
    let mut r = Runner {
        t,
        fsm: Fsm::new(params),
        main: None,
        pending: None,
        generation: 0,
        timers: Vec::new(),
        ctx: Ctx::default(),
        stale_until: None,
        stale_families: Vec::new(),
        peer_gr_time: None,
        eor_waiting: Vec::new(),
        name,
        stopped: false,
        overflow: Cell::new(false),
        gtsm_log: RateLog::new(REFUSAL_LOG_INTERVAL),
    };
    r.event(Event::Start);
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
                .chain(self.stale_until)
                .chain(
                    self.pending
                        .as_ref()
                        .map(|p| p.since + self.t.cfg.open_wait),
                )
                .min();
            let established = self.fsm.state() == State::Established;
            tokio::select! {
                c = self.t.ctl.recv() => match c {
                    Some(c) => self.ctl(c),
                    None => return,
                },
                ev = recv(&mut self.main) => self.main_event(ev),
                ev = recv(&mut self.pending) => self.pending_event(ev),
                _ = sleep_until(next) => self.fire_timers(),
                _ = self.t.export.notified(), if established => self.send_exports(false),
            }
            if self.overflow.replace(false) {
                self.event(Event::SendQueueFull);
            }
            self.sync_status();
            if self.stopped && self.fsm.state() == State::Idle {
                // Give the writer a moment to flush the NOTIFICATION.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
        }
    }

    fn sync_status(&self) {
        let st = self.fsm.state();
        if let Ok(mut s) = self.t.status.lock() {
            s.state = Some(st);
            if st != State::Established {
                s.established_at = None;
            }
            if let Some(n) = self.fsm.negotiated() {
                s.router_id = Some(n.peer_router_id);
                s.hold_time = Some(n.hold_time);
                s.graceful_restart = n.graceful_restart.is_some();
            }
        }
        self.t.shared.metrics.set_state(&self.name, st.mib_value());
    }

    fn set_error(&self, e: &str) {
        tracing::info!(peer = %self.name, "{e}");
        self.note_error(e);
    }

    /// The status and metrics side of `set_error`, without a log line.
    fn note_error(&self, e: &str) {
        if let Ok(mut s) = self.t.status.lock() {
            s.last_error = Some(e.to_string());
        }
        self.t.shared.metrics.set_error(&self.name, e);
    }

    fn ctl(&mut self, c: Ctl) {
        match c {
            Ctl::Stop => {
                self.stopped = true;
                if self.fsm.state() == State::Idle {
                    return;
                }
                self.event(Event::Stop);
            }
            Ctl::BfdDown => {
                tracing::info!(peer = %self.name, "BFD session down: closing the BGP session");
                self.event(Event::BfdDown);
            }
            Ctl::Incoming(stream) => self.incoming(stream),
            Ctl::Connected(generation, res) => {
                if generation != self.generation {
                    return;
                }
                match res {
                    Ok(stream) => match self.fsm.state() {
                        State::Connect | State::Active => {
                            if let Some(c) = Conn::new(stream, true, self.send_hold()) {
                                self.main = Some(c);
                                self.event(Event::TcpConnected);
                            }
                        }
                        State::OpenSent | State::OpenConfirm => self.start_pending(stream, true),
                        _ => {}
                    },
                    Err(e) => {
                        self.set_error(&e);
                        self.event(Event::TcpFailed);
                    }
                }
            }
        }
    }

    fn ttl_policy(&self) -> TtlPolicy {
        TtlPolicy::for_peer(
            self.t.cfg.asn != self.t.shared.cfg.asn,
            self.t.cfg.multihop,
            self.t.cfg.ttl_security,
        )
    }

    fn incoming(&mut self, stream: TcpStream) {
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
                    self.event(Event::TcpConnected);
                }
            }
            State::OpenSent | State::OpenConfirm => self.start_pending(stream, false),
            State::Established => {
                if self
                    .fsm
                    .negotiated()
                    .is_some_and(|n| n.graceful_restart.is_some())
                {
                    // RFC 4724 §4.2: a new connection from a peer we have a
                    // GR session with means the peer restarted.
                    self.set_error("peer reconnected: treating as graceful restart");
                    self.event(Event::TcpClosed);
                    self.event(Event::Start);
                    self.event(Event::TimerExpired(Timer::IdleHold));
                    self.generation += 1;
                    if let Some(main) = self.main.take() {
                        main.close();
                    }
                    if let Some(c) = Conn::new(stream, false, self.send_hold()) {
                        self.main = Some(c);
                        self.event(Event::TcpConnected);
                    }
                } else if let Some(c) = Conn::new(stream, false, self.send_hold()) {
                    self.send_on(&c, &Message::Notification(Notification::cease(5)));
                    c.close();
                }
            }
        }
    }

    fn start_pending(&mut self, stream: TcpStream, ours: bool) {
        if let Some(old) = self.pending.take() {
            old.close();
        }
        if let Some(c) = Conn::new(stream, ours, self.send_hold()) {
            let open = self.open_message();
            self.send_on(&c, &open);
            self.pending = Some(c);
        }
    }

    fn pending_event(&mut self, ev: ConnEvent) {
        if self.fsm.state() == State::Established
            && let ConnEvent::Msg(m, _) = &ev
            && matches!(**m, Message::Open(_))
            && let Some(p) = self.pending.take()
        {
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
        let keep_new = fsm::collision_keeps_new(
            self.t.shared.cfg.router_id,
            open.router_id,
            main.ours,
            p.ours,
        );
        let cease = Message::Notification(Notification::cease(7));
        if keep_new {
            tracing::info!(peer = %self.name, "connection collision: keeping the new connection");
            self.send_on(&main, &cease);
            main.close();
            self.main = Some(p);
            self.fsm.adopt_connection();
            self.event(Event::OpenReceived(peer_open(&open)));
        } else {
            tracing::info!(peer = %self.name, "connection collision: keeping the existing connection");
            self.send_on(&p, &cease);
            p.close();
            self.main = Some(main);
        }
    }

    fn main_event(&mut self, ev: ConnEvent) {
        match ev {
            ConnEvent::Closed => self.event(Event::TcpClosed),
            ConnEvent::Error(n) => {
                self.count_in("error");
                self.event(Event::DecodeError(notif(&n)));
            }
            ConnEvent::Msg(m, warnings) => {
                if !matches!(*m, Message::RouteRefreshUnsupported { .. }) {
                    for w in &warnings {
                        self.set_error(&format!("UPDATE error handled by RFC 7606: {w}"));
                    }
                }
                self.message(*m);
            }
            ConnEvent::SendStalled => self.event(Event::SendHoldExpired),
        }
    }

    fn message(&mut self, m: Message) {
        let established = self.fsm.state() == State::Established;
        tracing::debug!(peer = %self.name, kind = kind_name(&m), state = self.fsm.state().name(), "received");
        match m {
            Message::Open(o) => {
                self.count_in("open");
                self.event(Event::OpenReceived(peer_open(&o)));
            }
            Message::Keepalive => {
                self.count_in("keepalive");
                self.event(Event::KeepaliveReceived);
            }
            Message::Notification(n) => {
                self.count_in("notification");
                self.event(Event::NotificationReceived(notif(&n)));
            }
            Message::RouteRefresh(r) => {
                self.count_in("route_refresh");
                // Before Established this is an FSM error (the FSM says so).
                self.event(Event::RouteRefreshReceived);
                if established {
                    if self
                        .fsm
                        .negotiated()
                        .is_some_and(|n| n.families.contains(&r.afi))
                    {
                        self.send_exports(true);
                    } else {
                        // RFC 2918 §4: a family we did not negotiate is ignored.
                        tracing::debug!(peer = %self.name, afi = ?r.afi, "ignored ROUTE-REFRESH for a family not negotiated");
                    }
                }
            }
            Message::RouteRefreshUnsupported { afi, safi } => {
                self.count_in("route_refresh");
                self.event(Event::RouteRefreshReceived);
                tracing::debug!(peer = %self.name, afi, safi, "ignored ROUTE-REFRESH for a family we do not carry");
            }
            Message::Update(u) => {
                self.count_in("update");
                self.event(Event::UpdateReceived);
                if established {
                    self.update(u);
                }
            }
        }
    }

    fn update(&mut self, u: wire::Update) {
        let mut core = self.t.shared.lock();
        if let Some(afi) = u.is_end_of_rib() {
            let ch = core.rib.end_of_rib(self.t.id, afi);
            core.publish(ch.best);
            drop(core);
            self.stale_families.retain(|f| *f != afi);
            if self.stale_families.is_empty() {
                self.stale_until = None;
            }
            self.eor_waiting.retain(|f| *f != afi);
            if self.eor_waiting.is_empty() {
                let first = self
                    .t
                    .status
                    .lock()
                    .map(|mut s| !std::mem::replace(&mut s.initial_eor, true))
                    .unwrap_or(false);
                if first {
                    self.t.shared.check_synced();
                }
            }
            return;
        }
        let ch = core
            .rib
            .update(self.t.id, &u.withdrawn, u.attrs, &u.announced);
        let exceeded = ch.max_prefix_exceeded == Some(self.t.id);
        let warn = ch.max_prefix_warning == Some(self.t.id);
        core.publish(ch.best);
        let wait = core
            .rib
            .max_prefix(self.t.id)
            .map(|m| m.restart_after)
            .unwrap_or(Duration::from_secs(60));
        drop(core);
        if warn {
            self.set_error("maximum number of prefixes reached (warning only)");
        }
        if exceeded {
            self.event(Event::MaxPrefixExceeded(wait));
        }
    }

    fn count_in(&self, kind: &str) {
        self.t.shared.metrics.message(&self.name, false, kind);
    }

    fn event(&mut self, ev: Event) {
        let acts = self.fsm.handle(ev);
        self.apply(acts);
    }

    fn apply(&mut self, acts: Vec<Action>) {
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
                Action::SendKeepalive => self.send(&Message::Keepalive),
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
        if self.stale_until.is_some_and(|t| t <= now) {
            self.stale_until = None;
            let mut core = self.t.shared.lock();
            for afi in std::mem::take(&mut self.stale_families) {
                let ch = core.rib.end_of_rib(self.t.id, afi);
                core.publish(ch.best);
            }
            if self.fsm.state() != State::Established {
                let ch = core.rib.remove_peer(self.t.id);
                core.publish(ch.best);
            }
        }
        let due: Vec<Timer> = self
            .timers
            .iter()
            .filter(|(_, at)| *at <= now)
            .map(|(t, _)| *t)
            .collect();
        self.timers.retain(|(_, at)| *at > now);
        for t in due {
            self.event(Event::TimerExpired(t));
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
        let tx = self.t.ctl_tx.clone();
        tokio::spawn(async move {
            let r = transport::connect(&opts).await.map_err(|e| match (&e, opts.ttl.min_ttl) {
                // GTSM drops the peer's SYN-ACK in the kernel without a trace:
                // say that it may be the reason.
                (transport::TransportError::Timeout(_), Some(min)) => format!(
                    "{e} (GTSM: the kernel drops the peer's packets that arrive with a TTL below {min})"
                ),
                _ => e.to_string(),
            });
            let _ = tx.send(Ctl::Connected(generation, r));
        });
    }

    fn open_message(&self) -> Message {
        let p = self.fsm.params();
        let mut caps: Vec<Capability> = p
            .families
            .iter()
            .map(|f| Capability::Multiprotocol(*f))
            .collect();
        caps.push(Capability::RouteRefresh);
        caps.push(Capability::FourOctetAs(p.local_asn));
        caps.push(wire::Open::extended_message());
        if let Some(time) = p.graceful_restart {
            let restarting = self.t.shared.restarting;
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

    fn send_on(&self, c: &Conn, m: &Message) {
        self.t
            .shared
            .metrics
            .message(&self.name, true, kind_name(m));
        self.push(c, wire::encode(m, &self.ctx));
    }

    /// Queues encoded bytes unless that would pass the send queue bound
    /// (then the session goes down after this turn).
    fn push(&self, c: &Conn, bytes: Vec<u8>) {
        let n = bytes.len();
        if c.queued.load(Ordering::Relaxed).saturating_add(n) > self.t.cfg.max_send_queue {
            self.overflow.set(true);
            return;
        }
        c.queued.fetch_add(n, Ordering::Relaxed);
        let _ = c.tx.send(bytes);
    }

    /// RFC 9687 §4: max(8 minutes, 2 × hold time), unless configured.
    fn send_hold(&self) -> Duration {
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
        self.eor_waiting = n.families.clone();
        if let Some(c) = &self.main {
            c.send_hold
                .store(millis(self.send_hold()), Ordering::Relaxed);
        }
        let local_addr: IpAddr = self
            .main
            .as_ref()
            .map(|c| c.local.ip().to_canonical())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        if let Ok(mut s) = self.t.status.lock() {
            s.established_at = Some(std::time::Instant::now());
        }
        tracing::info!(peer = %self.name, hold = n.hold_time, "session established");
        {
            let mut core = self.t.shared.lock();
            core.rib.add_peer(
                PeerInfo {
                    id: self.t.id,
                    addr: self.t.cfg.address,
                    asn: self.t.cfg.asn,
                    router_id: n.peer_router_id,
                    local_addr,
                    rr_client: self.t.cfg.route_reflector_client,
                    kind: self.t.cfg.kind,
                },
                self.t.cfg.import.clone(),
                family_guard(&self.t.cfg.export, &n.families),
            );
            // GR helper: routes kept from the previous session stay (stale)
            // only when the peer says it preserved forwarding for the family.
            if !self.stale_families.is_empty() {
                let keep: Vec<Afi> = n
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
                let drop_now: Vec<Afi> = self
                    .stale_families
                    .iter()
                    .copied()
                    .filter(|f| !keep.contains(f) || !n.families.contains(f))
                    .collect();
                for afi in drop_now {
                    let ch = core.rib.end_of_rib(self.t.id, afi);
                    core.publish(ch.best);
                    self.stale_families.retain(|f| *f != afi);
                }
                if self.stale_families.is_empty() {
                    self.stale_until = None;
                } else {
                    // RFC 4724: wait for End-of-RIB, bounded by the
                    // configured stale time.
                    let stale = self
                        .t
                        .shared
                        .cfg
                        .graceful_restart
                        .as_ref()
                        .map_or(DEFAULT_STALE_TIME, |g| g.stale_time);
                    self.stale_until = Some(Instant::now() + stale);
                }
            }
        }
        self.send_exports(true);
        for afi in &n.families {
            self.send(&Message::Update(wire::Update::end_of_rib(*afi)));
        }
        self.peer_gr_time = n.graceful_restart.as_ref().map(|g| g.time);
    }

    fn session_down(&mut self, r: DownReason) {
        self.t.shared.metrics.flap(&self.name);
        if let Ok(mut s) = self.t.status.lock() {
            s.flaps += 1;
        }
        tracing::info!(peer = %self.name, "session down: {r}");
        let mut core = self.t.shared.lock();
        match self.peer_gr_time {
            Some(time) if r.keeps_routes() && time > 0 => {
                core.rib.peer_stale(self.t.id);
                self.stale_families = self.t.cfg.families.clone();
                self.stale_until = Some(Instant::now() + Duration::from_secs(time.into()));
            }
            _ => {
                let ch = core.rib.remove_peer(self.t.id);
                core.publish(ch.best);
                self.stale_families.clear();
                self.stale_until = None;
            }
        }
        self.ctx = Ctx::default();
    }

    /// Sends pending Adj-RIB-Out changes (or the whole table).
    fn send_exports(&mut self, full: bool) {
        if self.fsm.state() != State::Established {
            return;
        }
        let exports = {
            let mut core = self.t.shared.lock();
            if full {
                core.rib.full_export(self.t.id)
            } else {
                core.rib.take_exports(self.t.id)
            }
        };
        let Some(c) = &self.main else { return };
        for e in exports {
            let (msgs, unsent) = wire::encode_updates_checked(
                &e.withdrawn,
                e.attrs.as_deref(),
                &e.announced,
                &self.ctx,
            );
            for msg in msgs {
                self.t.shared.metrics.message(&self.name, true, "update");
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
                    self.t.shared.metrics.message(&self.name, true, "update");
                    self.push(c, msg);
                }
            }
        }
    }
}

/// The export policy with leading terms that reject every family the
/// session did not negotiate (the RIB's Adj-RIB-Out is family-blind).
fn family_guard(export: &crate::policy::Policy, families: &[Afi]) -> crate::policy::Policy {
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

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn kind_name(m: &Message) -> &'static str {
    match m {
        Message::Open(_) => "open",
        Message::Update(_) => "update",
        Message::Notification(_) => "notification",
        Message::Keepalive => "keepalive",
        Message::RouteRefresh(_) | Message::RouteRefreshUnsupported { .. } => "route_refresh",
    }
}

/// Adapter: the codec's NOTIFICATION to the FSM's.
fn notif(n: &Notification) -> Notif {
    Notif {
        code: n.code,
        subcode: n.subcode,
        data: n.data.clone(),
    }
}

/// Adapter: the codec's OPEN to the FSM's view of it.
pub(crate) fn peer_open(o: &wire::Open) -> fsm::PeerOpen {
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
