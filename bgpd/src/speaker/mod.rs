//! The library API twill-node uses: start a speaker, add/remove peers and
//! originated routes at run time, subscribe to best-route changes (for the
//! route programmer), read per-peer status and metrics.
//!
//! One task, the instance (`instance`), owns the RIB and the peer table.
//! [`Speaker`] sends it requests; the accept loop (`accept`), every
//! peer's session driver (`session::driver`) and BFD driver
//! (`bfd::driver`) send it events; it answers each in one `process_*`
//! function (`events`) and sends the drivers commands (`session::Command`).
//! Status is read from per-peer cells (`view`) without asking the instance.

mod accept;
mod config;
mod events;
mod instance;
mod view;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use config::{
    DEFAULT_MAX_SEND_QUEUE, DEFAULT_OPEN_WAIT, DEFAULT_STALE_TIME, GracefulRestartConfig,
    PasswordSource, PeerConfig, SpeakerConfig, SpeakerError,
};
pub(crate) use events::{Event, SessionUp};
pub(crate) use view::StatusCell;
pub use view::{PeerStatus, RouteChange};

use crate::metrics::Metrics;
use crate::rib::{BestRoute, LocalConfig, Rib};
use crate::session::ratelog::RateLog;
use crate::transport;
use crate::types::{PathAttrs, Prefix};
use events::Request;
use instance::{Instance, REFUSED_LOG_INTERVAL};

/// Events waiting for the instance task before senders wait.
const EVENT_QUEUE: usize = 256;

/// A configured peer as the API sees it.
struct Configured {
    asn: crate::types::Asn,
    status: StatusCell,
}

/// A running speaker. Dropping it does not stop the tasks: call `shutdown`.
#[derive(Clone)]
pub struct Speaker {
    requests: mpsc::UnboundedSender<Request>,
    router_id: Ipv4Addr,
    restarting: bool,
    /// Removed on a clean `shutdown` (a clean stop is not a restart).
    state_file: Option<std::path::PathBuf>,
    /// The listening socket's fd (for per-peer MD5 keys) and family.
    listener: Option<(std::os::fd::RawFd, bool)>,
    /// The peers configured through this API, with their status cells.
    configured: Arc<Mutex<BTreeMap<IpAddr, Configured>>>,
    metrics: Arc<Metrics>,
    synced: watch::Receiver<bool>,
    accept: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Speaker {
    /// Binds the listener (when configured) and starts accepting.
    pub async fn start(cfg: SpeakerConfig) -> Result<Speaker, SpeakerError> {
        let state_file = cfg
            .graceful_restart
            .as_ref()
            .and_then(|g| g.state_file.clone());
        let restarting = match &state_file {
            Some(path) => {
                let existed = path.exists();
                std::fs::write(path, format!("{}\n", std::process::id())).map_err(|source| {
                    SpeakerError::StateFile {
                        path: path.clone(),
                        source,
                    }
                })?;
                existed
            }
            None => false,
        };
        let listener = cfg.listen.map(transport::listen).transpose()?;
        let listener_fd = listener
            .as_ref()
            .zip(cfg.listen)
            .map(|(l, a)| (std::os::fd::AsRawFd::as_raw_fd(l), a.is_ipv6()));
        let rib = Rib::new(LocalConfig {
            asn: cfg.asn,
            router_id: cfg.router_id,
            cluster_id: cfg.cluster_id,
            multipath: cfg.multipath,
        });
        // Without GR the selection deferral still ends after 120 s.
        let wait = cfg
            .graceful_restart
            .as_ref()
            .map(|g| g.restart_time)
            .unwrap_or(120);
        let now = tokio::time::Instant::now();
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let (requests, requests_rx) = mpsc::unbounded_channel();
        let (synced_tx, synced) = watch::channel(false);
        let metrics = Arc::new(Metrics::new());
        let router_id = cfg.router_id;
        let instance = Instance {
            cfg: Arc::new(cfg),
            restarting,
            metrics: Arc::clone(&metrics),
            rib,
            peers: HashMap::new(),
            by_addr: HashMap::new(),
            next_id: 1,
            subscribers: Vec::new(),
            synced: synced_tx,
            synced_deadline: Some(now + Duration::from_secs(wait.into())),
            events: events_tx.clone(),
            bfd_hub: None,
            refused: RateLog::new(REFUSED_LOG_INTERVAL),
            refused_flush: now + REFUSED_LOG_INTERVAL,
        };
        tokio::spawn(instance.run(events_rx, requests_rx));
        let accept = listener.map(|l| tokio::spawn(accept::run(l, events_tx)));
        Ok(Speaker {
            requests,
            router_id,
            restarting,
            state_file,
            listener: listener_fd,
            configured: Arc::default(),
            metrics,
            synced,
            accept: Arc::new(Mutex::new(accept)),
        })
    }

    /// Whether this run is a graceful restart (the R bit is set).
    pub fn restarting(&self) -> bool {
        self.restarting
    }

    pub fn router_id(&self) -> Ipv4Addr {
        self.router_id
    }

    fn configured(&self) -> std::sync::MutexGuard<'_, BTreeMap<IpAddr, Configured>> {
        self.configured.lock().unwrap_or_else(|e| e.into_inner())
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
        let mut configured = self.configured();
        if configured.contains_key(&cfg.address) {
            return Err(SpeakerError::DuplicatePeer(cfg.address));
        }
        if let Some((fd, v6)) = self.listener {
            if let Some(key) = &password {
                transport::set_md5(fd, listener_view(cfg.address, v6), key)?;
            }
            // GTSM peers check the TTL of our SYN-ACK, which the listener
            // sends before we know who connected: send everything from it
            // with 255 (accepted sockets get their per-peer TTL after accept).
            if cfg.ttl_security.is_some() {
                transport::set_ttl(fd, v6, 255)?;
            }
        }
        let status = StatusCell::default();
        configured.insert(
            cfg.address,
            Configured {
                asn: cfg.asn,
                status: status.clone(),
            },
        );
        let _ = self.requests.send(Request::AddPeer {
            cfg: Arc::new(cfg),
            password,
            status,
        });
        Ok(())
    }

    /// Stops a peer (Cease/Administrative Shutdown when up), withdraws its routes.
    pub async fn remove_peer(&self, address: IpAddr) {
        self.configured().remove(&address);
        let (tx, rx) = oneshot::channel();
        let _ = self.requests.send(Request::RemovePeer(address, tx));
        if let Ok(Some(task)) = rx.await {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        if let Some((fd, v6)) = self.listener {
            let _ = transport::set_md5(fd, listener_view(address, v6), &[]);
        }
    }

    /// Originates (or replaces) a route.
    pub fn originate(&self, prefix: Prefix, attrs: PathAttrs) {
        let _ = self.requests.send(Request::Originate(prefix, attrs));
    }

    /// Withdraws an originated route.
    pub fn withdraw(&self, prefix: Prefix) {
        let _ = self.requests.send(Request::Withdraw(prefix));
    }

    /// Becomes true once every configured peer has sent End-of-RIB after
    /// its first session (or the restart time passed): the moment a route
    /// programmer that kept the kernel's routes across a restart may delete
    /// the ones no longer in the table. Peers added later do not reset it.
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced.clone()
    }

    /// Best-route changes, starting with the whole current table.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Vec<RouteChange>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.requests.send(Request::Subscribe(tx));
        rx
    }

    /// The current best routes.
    pub async fn best_routes(&self) -> Vec<(Prefix, BestRoute)> {
        let (tx, rx) = oneshot::channel();
        let _ = self.requests.send(Request::BestRoutes(tx));
        rx.await.unwrap_or_default()
    }

    /// Per-peer status, sorted by address.
    pub fn status(&self) -> Vec<PeerStatus> {
        self.configured()
            .iter()
            .map(|(addr, c)| c.status.get().to_status(*addr, c.asn))
            .collect()
    }

    /// Prometheus text exposition.
    pub fn metrics_text(&self) -> String {
        self.metrics.encode()
    }

    /// Stops every peer (Cease/Administrative Shutdown) and the listener;
    /// removes the GR state file (a clean stop is not a restart).
    pub async fn shutdown(&self) {
        if let Ok(mut a) = self.accept.lock()
            && let Some(t) = a.take()
        {
            t.abort();
        }
        self.configured().clear();
        let (tx, rx) = oneshot::channel();
        let _ = self.requests.send(Request::Shutdown(tx));
        for task in rx.await.unwrap_or_default() {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        if let Some(path) = &self.state_file {
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
