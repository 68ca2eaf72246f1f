//! The route manager: Twill's routes in the main table, one per prefix,
//! all with Twill's protocol number ([`crate::RTPROT_TWILL`]). Routes of
//! any other protocol are never touched: they are filtered out of the
//! dump, and every delete names protocol 116 so the kernel refuses to
//! remove anything else.
//!
//! * [`RouteProgrammer`] (here): the handle, and the task that owns the
//!   inputs (endpoints, owned blocks, best BGP routes). A command is
//!   applied at once for the prefixes it touches, against what was last
//!   programmed; a periodic resync is a full [`super::Manager`] pass
//!   ([`manager::RouteManager`]: dump, desired, diff, repair). A failed
//!   route is logged and retried at the next resync; a failed resync is
//!   retried with backoff.
//! * [`manager`]: the kernel side — the socket and what it holds of ours;
//!   [`netlink`]: filtered dumps, batched pipelined writes; [`message`]:
//!   model ⇄ rtnetlink messages (pure). The desired routes and the diff
//!   are [`crate::calc::routes`].
//!
//! The first full resync (the only step that deletes routes no input
//! mentions) waits until every required input source has delivered its
//! complete set once, so a restarted node does not withdraw routes it has
//! simply not been told about yet.

pub mod manager;
pub mod message;
pub mod netlink;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use ipnetwork::IpNetwork;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use twill_api::store::retry::Backoff;

use super::{Requeue, reconcile};
use crate::calc::routes as model;
pub use crate::calc::routes::{Inputs, Installed, Plan, Target, diff, diff_prefixes};
use manager::RouteManager;

/// Why the route programmer could not do something.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("opening a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("listing routes or links over netlink: {0}")]
    Dump(String),
    #[error("the route programmer has stopped")]
    Stopped,
}

/// Tuning and start-up behaviour.
#[derive(Clone, Debug)]
pub struct RouteConfig {
    /// Time between full resyncs (dump, diff, repair).
    pub resync_interval: Duration,
    /// Requests per netlink batch (one sendmsg).
    pub batch: usize,
    /// Batches outstanding at once.
    pub in_flight: usize,
    /// Input sources that must deliver a complete set (`set_endpoints`,
    /// `set_blocks`, `set_bgp_routes`) before the first full resync.
    pub wait_for: Sources,
}

/// Which input sources the first resync waits for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    pub endpoints: bool,
    pub blocks: bool,
    pub bgp: bool,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            resync_interval: Duration::from_secs(30),
            batch: 128,
            in_flight: 4,
            wait_for: Sources::default(),
        }
    }
}

/// Counts of what one apply did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub added: usize,
    pub replaced: usize,
    pub deleted: usize,
    pub failed: usize,
}

impl std::ops::AddAssign for ApplyReport {
    fn add_assign(&mut self, o: Self) {
        self.added += o.added;
        self.replaced += o.replaced;
        self.deleted += o.deleted;
        self.failed += o.failed;
    }
}

enum Cmd {
    Endpoints(BTreeMap<IpNetwork, String>),
    Endpoint(IpNetwork, Option<String>),
    Blocks(BTreeSet<IpNetwork>),
    Block(IpNetwork, bool),
    BgpAll(BTreeMap<IpNetwork, BTreeSet<IpAddr>>),
    Bgp(IpNetwork, BTreeSet<IpAddr>),
    Sync(oneshot::Sender<ApplyReport>),
    Resync(oneshot::Sender<Result<ApplyReport, RouteError>>),
    Snapshot(oneshot::Sender<BTreeMap<IpNetwork, Target>>),
}

/// Handle to the route programming task; dropping it stops the task
/// (routes stay in the kernel).
pub struct RouteProgrammer {
    tx: mpsc::UnboundedSender<Cmd>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for RouteProgrammer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn hops(v: Vec<IpAddr>) -> BTreeSet<IpAddr> {
    v.into_iter().collect()
}

impl RouteProgrammer {
    /// Opens a netlink socket in the current network namespace, reads the
    /// routes already there and starts the task. Must run inside a tokio
    /// runtime.
    pub async fn start(cfg: RouteConfig) -> Result<RouteProgrammer, RouteError> {
        let (mgr, conn_task) = RouteManager::open(cfg.batch, cfg.in_flight).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let actor = Actor {
            mgr,
            synced: Sources {
                endpoints: !cfg.wait_for.endpoints,
                blocks: !cfg.wait_for.blocks,
                bgp: !cfg.wait_for.bgp,
            },
            cfg,
            inputs: Inputs::default(),
            requeue: Requeue::new("kernel routes", Backoff::watch()),
        };
        let task = tokio::spawn(actor.run(rx));
        Ok(RouteProgrammer {
            tx,
            tasks: vec![task, conn_task],
        })
    }

    fn send(&self, c: Cmd) {
        // Only fails when the task is gone, which `sync` reports.
        let _ = self.tx.send(c);
    }

    /// The complete set of local endpoint addresses and their host veths.
    pub fn set_endpoints(&self, eps: impl IntoIterator<Item = (IpNetwork, String)>) {
        self.send(Cmd::Endpoints(
            eps.into_iter()
                .map(|(n, i)| (model::normalize(n), i))
                .collect(),
        ));
    }

    /// One endpoint address: its veth, or None when it is gone.
    pub fn set_endpoint_route(&self, dst: IpNetwork, ifname: Option<String>) {
        self.send(Cmd::Endpoint(model::normalize(dst), ifname));
    }

    /// The complete set of blocks this node owns (each gets a blackhole).
    pub fn set_blocks(&self, blocks: impl IntoIterator<Item = IpNetwork>) {
        self.send(Cmd::Blocks(
            blocks.into_iter().map(model::normalize).collect(),
        ));
    }

    /// One block claimed (true) or released (false).
    pub fn set_block(&self, block: IpNetwork, owned: bool) {
        self.send(Cmd::Block(model::normalize(block), owned));
    }

    /// The complete set of best BGP routes: prefix and next hops.
    pub fn set_bgp_routes(&self, routes: Vec<(IpNetwork, Vec<IpAddr>)>) {
        self.send(Cmd::BgpAll(
            routes
                .into_iter()
                .map(|(n, h)| (model::normalize(n), hops(h)))
                .collect(),
        ));
    }

    /// One BGP route added or changed.
    pub fn set_bgp_route(&self, dst: IpNetwork, next_hops: Vec<IpAddr>) {
        self.send(Cmd::Bgp(model::normalize(dst), hops(next_hops)));
    }

    /// One BGP route withdrawn.
    pub fn remove_bgp_route(&self, dst: IpNetwork) {
        self.send(Cmd::Bgp(model::normalize(dst), BTreeSet::new()));
    }

    /// Waits until every earlier command has been applied; returns what
    /// that last round did.
    pub async fn sync(&self) -> Result<ApplyReport, RouteError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Sync(tx))
            .map_err(|_| RouteError::Stopped)?;
        rx.await.map_err(|_| RouteError::Stopped)
    }

    /// A full resync now (dump, diff, repair), whatever the schedule.
    pub async fn resync(&self) -> Result<ApplyReport, RouteError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Resync(tx))
            .map_err(|_| RouteError::Stopped)?;
        rx.await.map_err(|_| RouteError::Stopped)?
    }

    /// The routes the programmer believes are installed.
    pub async fn programmed(&self) -> Result<BTreeMap<IpNetwork, Target>, RouteError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Snapshot(tx))
            .map_err(|_| RouteError::Stopped)?;
        rx.await.map_err(|_| RouteError::Stopped)
    }
}

/// The task: the inputs, the schedule, and the manager that writes.
struct Actor {
    mgr: RouteManager,
    cfg: RouteConfig,
    inputs: Inputs,
    synced: Sources,
    /// When a failed resync runs again.
    requeue: Requeue,
}

/// How soon to look again after an add found its prefix taken.
const RESYNC_SOON: Duration = Duration::from_millis(250);

impl Actor {
    fn ready(&self) -> bool {
        self.synced.endpoints && self.synced.bgp && self.synced.blocks
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let mut next_resync = Instant::now() + self.cfg.resync_interval;
        let mut was_ready = self.ready();
        if was_ready {
            next_resync = Instant::now();
        }
        loop {
            let due = if self.mgr.resync_soon && self.ready() {
                next_resync.min(Instant::now() + RESYNC_SOON)
            } else {
                next_resync
            };
            tokio::select! {
                c = rx.recv() => {
                    let Some(c) = c else { return };
                    let mut cmds = vec![c];
                    while let Ok(c) = rx.try_recv() {
                        cmds.push(c);
                    }
                    let forced = self.handle(cmds).await;
                    if forced {
                        next_resync = Instant::now() + self.cfg.resync_interval;
                    }
                    if !was_ready && self.ready() {
                        // Every source has spoken: clean up what none wants.
                        was_ready = true;
                        next_resync = Instant::now();
                    }
                }
                _ = tokio::time::sleep_until(due) => {
                    let mut wait = self.cfg.resync_interval;
                    if self.ready() {
                        let r = self.resync().await;
                        if let Some(delay) = self.requeue.after(&r) {
                            wait = wait.min(delay);
                        }
                    }
                    next_resync = Instant::now() + wait;
                }
            }
        }
    }

    /// A full pass: dump, diff against everything, repair.
    async fn resync(&mut self) -> Result<ApplyReport, RouteError> {
        reconcile(&mut self.mgr, &self.inputs).await
    }
    /// Applies a burst of commands; returns whether it ran a full resync.
    async fn handle(&mut self, cmds: Vec<Cmd>) -> bool {
        let mut touched = BTreeSet::new();
        let mut links_changed = false;
        let mut syncs = Vec::new();
        let mut resyncs = Vec::new();
        let mut snapshots = Vec::new();
        for c in cmds {
            match c {
                Cmd::Endpoints(eps) => {
                    touched.extend(self.inputs.endpoints.keys().copied());
                    touched.extend(eps.keys().copied());
                    self.inputs.endpoints = eps;
                    self.synced.endpoints = true;
                    links_changed = true;
                }
                Cmd::Endpoint(dst, ifname) => {
                    touched.insert(dst);
                    match ifname {
                        Some(i) => self.inputs.endpoints.insert(dst, i),
                        None => self.inputs.endpoints.remove(&dst),
                    };
                    links_changed = true;
                }
                Cmd::Blocks(b) => {
                    touched.extend(self.inputs.blocks.symmetric_difference(&b).copied());
                    self.inputs.blocks = b;
                    self.synced.blocks = true;
                }
                Cmd::Block(b, owned) => {
                    touched.insert(b);
                    if owned {
                        self.inputs.blocks.insert(b);
                    } else {
                        self.inputs.blocks.remove(&b);
                    }
                }
                Cmd::BgpAll(all) => {
                    for (p, h) in &self.inputs.bgp {
                        if all.get(p) != Some(h) {
                            touched.insert(*p);
                        }
                    }
                    for (p, h) in &all {
                        if self.inputs.bgp.get(p) != Some(h) {
                            touched.insert(*p);
                        }
                    }
                    self.inputs.bgp = all;
                    self.synced.bgp = true;
                }
                Cmd::Bgp(p, h) => {
                    touched.insert(p);
                    if h.is_empty() {
                        self.inputs.bgp.remove(&p);
                    } else {
                        self.inputs.bgp.insert(p, h);
                    }
                }
                Cmd::Sync(tx) => syncs.push(tx),
                Cmd::Resync(tx) => resyncs.push(tx),
                Cmd::Snapshot(tx) => snapshots.push(tx),
            }
        }
        let mut report = ApplyReport::default();
        let forced = !resyncs.is_empty();
        if forced {
            let r = self.resync().await;
            if let Ok(rep) = &r {
                report = *rep;
            }
            for tx in resyncs {
                let _ = tx.send(match &r {
                    Ok(rep) => Ok(*rep),
                    Err(e) => Err(RouteError::Dump(e.to_string())),
                });
            }
        } else if !touched.is_empty() {
            if links_changed {
                self.mgr.refresh_links(&self.inputs).await;
            }
            report = self.mgr.increment(&self.inputs, &touched).await;
        }
        for tx in syncs {
            let _ = tx.send(report);
        }
        for tx in snapshots {
            let _ = tx.send(self.mgr.programmed.clone());
        }
        forced
    }
}
