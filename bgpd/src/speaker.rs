//! The library API twill-node uses: start a speaker, add/remove peers and
//! originated routes at run time, subscribe to best-route changes (for the
//! route programmer), read per-peer status and metrics.
//!
//! Layout: one tokio task per peer (`session::driver`) and one accept task.
//! The RIB (pure, `rib`) sits behind a `std::sync::Mutex` in [`Shared`]; a
//! peer task locks it to apply an UPDATE, then wakes every other peer task
//! (a `Notify` each), which takes its pending Adj-RIB-Out deltas. Nothing
//! awaits while holding the lock.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::bfd::driver as bfd_driver;
use crate::bfd::packet::BfdState;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::rib::{BestRoute, LocalConfig, PeerId, PeerKind, Rib};
use crate::session::driver::{self, Ctl};
use crate::session::fsm::State;
use crate::session::ratelog::{RateLog, Summary, Verdict};
use crate::transport;
use crate::types::{Afi, Asn, PathAttrs, Prefix};

#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    #[error("peer {0} is already configured")]
    DuplicatePeer(IpAddr),
    #[error("peer {0}: the password is a Secret reference the caller has not resolved")]
    UnresolvedSecret(IpAddr),
    #[error("graceful restart state file {path}: {source}")]
    StateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where a peer's TCP MD5 password comes from. The library only uses
/// `Literal`; the caller (twill-node) resolves `SecretRef` against the
/// Kubernetes API and passes a `Literal`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PasswordSource {
    Literal(String),
    SecretRef {
        namespace: String,
        name: String,
        key: String,
    },
}

/// Speaker-wide settings.
#[derive(Debug, Clone)]
pub struct SpeakerConfig {
    pub asn: Asn,
    pub router_id: Ipv4Addr,
    /// Where to accept BGP connections; None: active opens only.
    pub listen: Option<SocketAddr>,
    pub cluster_id: Option<Ipv4Addr>,
    pub multipath: bool,
    pub graceful_restart: Option<GracefulRestartConfig>,
}

/// Graceful restart (RFC 4724) of this speaker.
#[derive(Debug, Clone)]
pub struct GracefulRestartConfig {
    /// Restart time we advertise (seconds, ≤ 4095).
    pub restart_time: u16,
    /// A file that exists while the speaker runs. Finding it at start means
    /// the previous run did not stop cleanly: we are restarting, so our OPEN
    /// carries the Restart State bit and forwarding-preserved flags.
    pub state_file: Option<PathBuf>,
    /// As helper: how long a restarting peer's stale routes are kept after
    /// its session is back, waiting for its End-of-RIB (RFC 4724 §4.2).
    pub stale_time: Duration,
}

/// RFC 4271 §8: the "large value" the hold timer runs with until the OPEN
/// arrives (4 minutes suggested).
pub const DEFAULT_OPEN_WAIT: Duration = Duration::from_secs(240);
/// Default GR helper stale-route bound (BGPConfiguration `staleTime`).
pub const DEFAULT_STALE_TIME: Duration = Duration::from_secs(360);

/// One neighbour.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub address: IpAddr,
    pub port: u16,
    pub asn: Asn,
    pub password: Option<PasswordSource>,
    pub hold_time: u16,
    pub keepalive: Option<u16>,
    pub connect_retry: Duration,
    pub passive: bool,
    /// eBGP multihop TTL.
    pub multihop: Option<u8>,
    /// GTSM (RFC 5082) with the peer at most this many hops away: we send
    /// TTL 255 and accept only TTL ≥ 256 − hops. None: no GTSM.
    pub ttl_security: Option<u8>,
    pub source_address: Option<IpAddr>,
    pub families: Vec<Afi>,
    pub import: Policy,
    pub export: Policy,
    pub graceful_restart: bool,
    pub route_reflector_client: bool,
    pub kind: PeerKind,
    /// Run a single-hop BFD session towards the peer while it is
    /// configured; BFD going Down tears the BGP session down at once. The
    /// BGP session does not wait for BFD to come up (RFC 5882 §4.2 allows
    /// either; waiting would make a peer without BFD unreachable).
    pub bfd: Option<crate::bfd::session::Config>,
    /// How long a connection may stay open without the peer's OPEN (the
    /// OpenSent hold timer, and a second, colliding connection).
    pub open_wait: Duration,
    /// RFC 9687 send hold time: a peer that takes nothing from us for this
    /// long is dropped. None: max(8 min, 2 × the negotiated hold time).
    pub send_hold_time: Option<Duration>,
    /// Most encoded bytes queued towards the peer; a peer that lets the
    /// queue grow past this is not reading: the session goes down
    /// (Cease/Out of Resources) instead of memory growing.
    pub max_send_queue: usize,
}

/// Default bound of a peer's send queue: a whole table is encoded at once
/// when a session comes up (1M IPv4 routes with distinct attributes are
/// about 60 MB), so the bound only stops a peer that never reads.
pub const DEFAULT_MAX_SEND_QUEUE: usize = 256 * 1024 * 1024;

impl PeerConfig {
    /// Defaults: port 179, hold 90 s, connect retry 5 s, IPv4 and IPv6,
    /// import everything, export what this node originates, GR on.
    pub fn new(address: IpAddr, asn: Asn) -> PeerConfig {
        PeerConfig {
            address,
            port: 179,
            asn,
            password: None,
            hold_time: 90,
            keepalive: None,
            connect_retry: Duration::from_secs(5),
            passive: false,
            multihop: None,
            ttl_security: None,
            source_address: None,
            families: vec![Afi::Ipv4, Afi::Ipv6],
            import: Policy::accept_all(),
            export: Policy::originated_only(),
            graceful_restart: true,
            route_reflector_client: false,
            kind: PeerKind::External,
            bfd: None,
            open_wait: DEFAULT_OPEN_WAIT,
            send_hold_time: None,
            max_send_queue: DEFAULT_MAX_SEND_QUEUE,
        }
    }
}

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

/// Mutable per-peer status the driver updates.
#[derive(Debug, Clone, Default)]
pub(crate) struct LiveStatus {
    pub state: Option<State>,
    pub router_id: Option<Ipv4Addr>,
    pub established_at: Option<std::time::Instant>,
    pub flaps: u64,
    pub last_error: Option<String>,
    pub graceful_restart: bool,
    pub hold_time: Option<u16>,
    /// The first session's End-of-RIB arrived for every negotiated family.
    pub initial_eor: bool,
    pub bfd: Option<BfdState>,
}

pub(crate) struct PeerHandle {
    pub id: PeerId,
    pub cfg: Arc<PeerConfig>,
    pub ctl: mpsc::UnboundedSender<Ctl>,
    pub export: Arc<Notify>,
    pub status: Arc<Mutex<LiveStatus>>,
    pub task: JoinHandle<()>,
    /// Held, not read: dropping it stops the peer's BFD session.
    pub _bfd: Option<bfd_driver::BfdHandle>,
}

pub(crate) struct Core {
    pub rib: Rib,
    pub peers: HashMap<IpAddr, PeerHandle>,
    subscribers: Vec<mpsc::UnboundedSender<Vec<RouteChange>>>,
    next_id: PeerId,
}

impl Core {
    /// Hand best-route changes to subscribers and wake every peer task so it
    /// sends its Adj-RIB-Out deltas.
    pub fn publish(&mut self, best: Vec<(Prefix, Option<BestRoute>)>) {
        if best.is_empty() {
            return;
        }
        let batch: Vec<RouteChange> = best
            .into_iter()
            .map(|(prefix, best)| RouteChange { prefix, best })
            .collect();
        self.subscribers.retain(|s| s.send(batch.clone()).is_ok());
        for p in self.peers.values() {
            p.export.notify_one();
        }
    }
}

pub(crate) struct Shared {
    pub cfg: SpeakerConfig,
    pub core: Mutex<Core>,
    pub metrics: Metrics,
    /// Our OPEN carries the GR Restart State bit (previous run crashed).
    pub restarting: bool,
    /// The listening socket's fd (for per-peer MD5 keys) and family.
    pub listener: Mutex<Option<(std::os::fd::RawFd, bool)>>,
    /// True once the initial table is complete (see `Speaker::synced`).
    pub synced: tokio::sync::watch::Sender<bool>,
    /// BFD's receive socket, opened with the first peer that uses BFD.
    pub bfd_hub: Mutex<Option<Arc<bfd_driver::Hub>>>,
}

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Core> {
        // A panic while holding the lock would be a bug in the pure RIB; keep
        // serving with the data as it is rather than poisoning every peer.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Flips `synced` when there are peers and every one has sent its
    /// initial End-of-RIB.
    pub fn check_synced(&self) {
        if *self.synced.borrow() {
            return;
        }
        let core = self.lock();
        // No peers yet: nothing learned, so not synced (the restart-time
        // fallback still applies).
        let all = !core.peers.is_empty()
            && core
                .peers
                .values()
                .all(|h| h.status.lock().map(|s| s.initial_eor).unwrap_or(false));
        drop(core);
        if all {
            self.synced.send_replace(true);
        }
    }
}

/// A running speaker. Dropping it does not stop the tasks: call `shutdown`.
#[derive(Clone)]
pub struct Speaker {
    shared: Arc<Shared>,
    accept: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Speaker {
    /// Binds the listener (when configured) and starts accepting.
    pub async fn start(cfg: SpeakerConfig) -> Result<Speaker, SpeakerError> {
        let restarting = match cfg
            .graceful_restart
            .as_ref()
            .and_then(|g| g.state_file.clone())
        {
            Some(path) => {
                let existed = path.exists();
                std::fs::write(&path, format!("{}\n", std::process::id()))
                    .map_err(|source| SpeakerError::StateFile { path, source })?;
                existed
            }
            None => false,
        };
        let rib = Rib::new(LocalConfig {
            asn: cfg.asn,
            router_id: cfg.router_id,
            cluster_id: cfg.cluster_id,
            multipath: cfg.multipath,
        });
        let listen = cfg.listen;
        let shared = Arc::new(Shared {
            cfg,
            core: Mutex::new(Core {
                rib,
                peers: HashMap::new(),
                subscribers: Vec::new(),
                next_id: 1,
            }),
            metrics: Metrics::new(),
            restarting,
            listener: Mutex::new(None),
            synced: tokio::sync::watch::channel(false).0,
            bfd_hub: Mutex::new(None),
        });
        // RFC 4724 §4.1 selection deferral, bounded: give up waiting for
        // End-of-RIB after the restart time (120 s without GR).
        {
            let shared = Arc::clone(&shared);
            let wait = shared
                .cfg
                .graceful_restart
                .as_ref()
                .map(|g| g.restart_time)
                .unwrap_or(120);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(wait.into())).await;
                shared.synced.send_replace(true);
            });
        }
        let mut accept = None;
        if let Some(addr) = listen {
            let l = transport::listen(addr)?;
            if let Ok(mut g) = shared.listener.lock() {
                *g = Some((std::os::fd::AsRawFd::as_raw_fd(&l), addr.is_ipv6()));
            }
            accept = Some(tokio::spawn(accept_loop(l, Arc::clone(&shared))));
        }
        Ok(Speaker {
            shared,
            accept: Arc::new(Mutex::new(accept)),
        })
    }

    /// Whether this run is a graceful restart (the R bit is set).
    pub fn restarting(&self) -> bool {
        self.shared.restarting
    }

    /// The listener's address (useful with port 0).
    pub fn router_id(&self) -> Ipv4Addr {
        self.shared.cfg.router_id
    }

    /// Adds a peer and starts its session.
    pub fn add_peer(&self, cfg: PeerConfig) -> Result<(), SpeakerError> {
        let password = match &cfg.password {
            None => None,
            Some(PasswordSource::Literal(p)) => Some(p.clone().into_bytes()),
            Some(PasswordSource::SecretRef { .. }) => {
                return Err(SpeakerError::UnresolvedSecret(cfg.address));
            }
        };
        let mut core = self.shared.lock();
        if core.peers.contains_key(&cfg.address) {
            return Err(SpeakerError::DuplicatePeer(cfg.address));
        }
        if let Some(key) = &password
            && let Ok(l) = self.shared.listener.lock()
            && let Some((fd, v6)) = *l
        {
            transport::set_md5(fd, listener_view(cfg.address, v6), key)?;
        }
        // GTSM peers check the TTL of our SYN-ACK, which the listener sends
        // before we know who connected: send everything from it with 255
        // (accepted sockets get their per-peer TTL right after accept).
        if cfg.ttl_security.is_some()
            && let Ok(l) = self.shared.listener.lock()
            && let Some((fd, v6)) = *l
        {
            transport::set_ttl(fd, v6, 255)?;
        }
        let id = core.next_id;
        core.next_id += 1;
        let cfg = Arc::new(cfg);
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let export = Arc::new(Notify::new());
        let status = Arc::new(Mutex::new(LiveStatus::default()));
        let task = tokio::spawn(driver::run(driver::PeerTask {
            id,
            cfg: Arc::clone(&cfg),
            password,
            shared: Arc::clone(&self.shared),
            ctl_tx: ctl_tx.clone(),
            ctl: ctl_rx,
            export: Arc::clone(&export),
            status: Arc::clone(&status),
        }));
        let bfd = cfg.bfd.map(|bfd_cfg| {
            let hub = self.bfd_hub();
            bfd_driver::spawn(
                &hub,
                bfd_driver::PeerBfd {
                    peer: cfg.address,
                    source: cfg.source_address,
                    cfg: bfd_cfg,
                    ctl: ctl_tx.clone(),
                    status: Arc::clone(&status),
                    shared: Arc::clone(&self.shared),
                },
            )
        });
        core.peers.insert(
            cfg.address,
            PeerHandle {
                id,
                cfg,
                ctl: ctl_tx,
                export,
                status,
                task,
                _bfd: bfd,
            },
        );
        Ok(())
    }

    fn bfd_hub(&self) -> Arc<bfd_driver::Hub> {
        let mut g = self
            .shared
            .bfd_hub
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let listen = self
            .shared
            .cfg
            .listen
            .map(|a| a.ip())
            .unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
        Arc::clone(g.get_or_insert_with(|| bfd_driver::Hub::start(listen)))
    }

    /// Stops a peer (Cease/Administrative Shutdown when up), withdraws its routes.
    pub async fn remove_peer(&self, address: IpAddr) {
        let handle = self.shared.lock().peers.remove(&address);
        if let Some(h) = handle {
            let _ = h.ctl.send(Ctl::Stop);
            let _ = tokio::time::timeout(Duration::from_secs(2), h.task).await;
            let mut core = self.shared.lock();
            let ch = core.rib.remove_peer(h.id);
            core.publish(ch.best);
        }
        if let Ok(l) = self.shared.listener.lock()
            && let Some((fd, v6)) = *l
        {
            let _ = transport::set_md5(fd, listener_view(address, v6), &[]);
        }
    }

    /// Originates (or replaces) a route.
    pub fn originate(&self, prefix: Prefix, attrs: PathAttrs) {
        let mut core = self.shared.lock();
        let ch = core.rib.originate(crate::types::normalize(prefix), attrs);
        core.publish(ch.best);
    }

    /// Withdraws an originated route.
    pub fn withdraw(&self, prefix: Prefix) {
        let mut core = self.shared.lock();
        let ch = core.rib.withdraw_local(crate::types::normalize(prefix));
        core.publish(ch.best);
    }

    /// Becomes true once every configured peer has sent End-of-RIB after
    /// its first session (or the restart time passed): the moment a route
    /// programmer that kept the kernel's routes across a restart may delete
    /// the ones no longer in the table. Peers added later do not reset it.
    pub fn synced(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shared.check_synced();
        self.shared.synced.subscribe()
    }

    /// Best-route changes, starting with the whole current table.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Vec<RouteChange>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut core = self.shared.lock();
        let all: Vec<RouteChange> = core
            .rib
            .best()
            .map(|(prefix, b)| RouteChange {
                prefix,
                best: Some(b),
            })
            .collect();
        if !all.is_empty() {
            let _ = tx.send(all);
        }
        core.subscribers.push(tx);
        rx
    }

    /// The current best routes.
    pub fn best_routes(&self) -> Vec<(Prefix, BestRoute)> {
        self.shared.lock().rib.best().collect()
    }

    /// Per-peer status, sorted by address.
    pub fn status(&self) -> Vec<PeerStatus> {
        let core = self.shared.lock();
        let mut out: Vec<PeerStatus> = core
            .peers
            .values()
            .map(|h| {
                let s = h.status.lock().map(|s| s.clone()).unwrap_or_default();
                let c = core.rib.peer_counts(h.id);
                self.shared.metrics.set_prefixes(
                    &h.cfg.address.to_string(),
                    c.received,
                    c.accepted,
                    c.advertised,
                );
                PeerStatus {
                    address: h.cfg.address,
                    asn: h.cfg.asn,
                    state: s.state.unwrap_or(State::Idle),
                    router_id: s.router_id,
                    uptime_secs: s.established_at.map(|t| t.elapsed().as_secs()).unwrap_or(0),
                    received: c.received,
                    accepted: c.accepted,
                    advertised: c.advertised,
                    flaps: s.flaps,
                    last_error: s.last_error.clone(),
                    graceful_restart: s.graceful_restart,
                    hold_time: s.hold_time,
                    bfd: s.bfd,
                }
            })
            .collect();
        out.sort_by_key(|s| s.address);
        out
    }

    /// Prometheus text exposition.
    pub fn metrics_text(&self) -> String {
        // Refresh the prefix gauges.
        let _ = self.status();
        self.shared.metrics.encode()
    }

    /// Stops every peer (Cease/Administrative Shutdown) and the listener;
    /// removes the GR state file (a clean stop is not a restart).
    pub async fn shutdown(&self) {
        if let Ok(mut a) = self.accept.lock()
            && let Some(t) = a.take()
        {
            t.abort();
        }
        let handles: Vec<PeerHandle> = self.shared.lock().peers.drain().map(|(_, h)| h).collect();
        for h in &handles {
            let _ = h.ctl.send(Ctl::Stop);
        }
        for h in handles {
            let _ = tokio::time::timeout(Duration::from_secs(2), h.task).await;
        }
        if let Some(path) = self
            .shared
            .cfg
            .graceful_restart
            .as_ref()
            .and_then(|g| g.state_file.as_ref())
        {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Seconds since the UNIX epoch, for status output.
    pub fn now_unix() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// The address a dual-stack IPv6 listener sees an IPv4 peer as.
fn listener_view(peer: IpAddr, listener_v6: bool) -> IpAddr {
    match peer {
        IpAddr::V4(a) if listener_v6 => IpAddr::V6(a.to_ipv6_mapped()),
        other => other,
    }
}

/// How often refused connections from unknown addresses are summarised.
const REFUSED_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Accepts connections and hands each to its peer's task. Connections from
/// addresses that are not peers are closed; a flood of them is logged as a
/// few named sources and a count per minute, not a line each
/// (`session::ratelog`).
async fn accept_loop(l: tokio::net::TcpListener, shared: Arc<Shared>) {
    let mut refused = RateLog::new(REFUSED_LOG_INTERVAL);
    let mut tick = tokio::time::interval(REFUSED_LOG_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            a = l.accept() => a,
            _ = tick.tick() => {
                if let Some(s) = refused.flush(std::time::Instant::now()) {
                    log_refused_summary(s);
                }
                continue;
            }
        };
        let (stream, from) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ip = from.ip().to_canonical();
        let ctl = shared.lock().peers.get(&ip).map(|h| h.ctl.clone());
        match ctl {
            Some(c) => {
                let _ = c.send(Ctl::Incoming(stream));
            }
            None => {
                shared.metrics.refused();
                let (v, summary) = refused.event(ip, std::time::Instant::now());
                if let Some(s) = summary {
                    log_refused_summary(s);
                }
                if v == Verdict::Log {
                    tracing::info!(
                        "refused a connection from {ip}: not a configured peer (more are counted and summarised every {}s)",
                        REFUSED_LOG_INTERVAL.as_secs()
                    );
                }
            }
        }
    }
}

fn log_refused_summary(s: Summary) {
    tracing::info!(
        "refused {} more connections from {} addresses that are not configured peers in the last {}s",
        s.suppressed,
        s.sources,
        REFUSED_LOG_INTERVAL.as_secs()
    );
}
