//! Kernel route programming: one route per prefix in the main table, all
//! with Twill's protocol number ([`crate::RTPROT_TWILL`]).
//!
//! * [`model`]: pure — the desired routes (a /32 or /128 per local
//!   endpoint to its veth, a blackhole per owned block, a route per best
//!   BGP route through its next hops, multipath when several) and the diff
//!   against what the kernel holds;
//! * [`message`]: pure — model ⇄ rtnetlink messages;
//! * [`netlink`]: the socket: filtered dumps, batched pipelined writes;
//! * [`RouteProgrammer`] (here): the task that owns the socket. Inputs
//!   arrive as commands through its handle and are applied at once, for
//!   the prefixes they touch; a periodic resync dumps Twill's routes and
//!   repairs any drift. A failed route is logged and retried at the next
//!   resync, never fatal. Routes of any other protocol are never touched:
//!   they are filtered out of the dump, and every delete names protocol 116
//!   so the kernel refuses to remove anything else.
//!
//! The first full resync (the only step that deletes routes no input
//! mentions) waits until every required input source has delivered its
//! complete set once, so a restarted node does not withdraw routes it has
//! simply not been told about yet.

pub mod message;
pub mod model;
pub mod netlink;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use ipnetwork::IpNetwork;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub use model::{Inputs, Installed, Plan, Target, diff, diff_prefixes};
use netlink::{Op, RouteSocket};

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
        let (sock, conn) = RouteSocket::open()?;
        let conn_task = tokio::spawn(conn);
        let installed = sock.twill_routes().await?;
        let programmed = installed
            .into_iter()
            .filter(Installed::has_default_metric)
            .filter_map(|r| Some((r.dst, r.target?)))
            .collect();
        let (tx, rx) = mpsc::unbounded_channel();
        let actor = Actor {
            sock,
            synced: Sources {
                endpoints: !cfg.wait_for.endpoints,
                blocks: !cfg.wait_for.blocks,
                bgp: !cfg.wait_for.bgp,
            },
            cfg,
            inputs: Inputs::default(),
            programmed,
            links: HashMap::new(),
            resync_soon: false,
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

struct Actor {
    sock: RouteSocket,
    cfg: RouteConfig,
    inputs: Inputs,
    /// What we believe the kernel holds of ours (default metric only).
    programmed: BTreeMap<IpNetwork, Target>,
    links: HashMap<String, u32>,
    synced: Sources,
    /// An add found the prefix taken: look at the kernel again soon.
    resync_soon: bool,
}

/// How soon to look again after an add found its prefix taken.
const RESYNC_SOON: Duration = Duration::from_millis(250);
/// At most this many route errors are logged one by one per round.
const LOGGED_ERRORS: usize = 10;

impl Actor {
    fn ready(&self) -> bool {
        self.synced.endpoints && self.synced.blocks && self.synced.bgp
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let mut next_resync = Instant::now() + self.cfg.resync_interval;
        let mut was_ready = self.ready();
        if was_ready {
            next_resync = Instant::now();
        }
        loop {
            let due = if self.resync_soon && self.ready() {
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
                    if self.ready()
                        && let Err(e) = self.resync().await
                    {
                        tracing::warn!(error = %e, "route resync failed; retrying at the next one");
                    }
                    next_resync = Instant::now() + self.cfg.resync_interval;
                }
            }
        }
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
                self.refresh_links().await;
            }
            report = self.increment(&touched).await;
        }
        for tx in syncs {
            let _ = tx.send(report);
        }
        for tx in snapshots {
            let _ = tx.send(self.programmed.clone());
        }
        forced
    }

    async fn refresh_links(&mut self) {
        if self.inputs.endpoints.is_empty() {
            return;
        }
        match self.sock.links().await {
            Ok(l) => self.links = l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list interfaces; endpoint routes wait for the next resync")
            }
        }
    }

    async fn increment(&mut self, touched: &BTreeSet<IpNetwork>) -> ApplyReport {
        let links = &self.links;
        let ifindex = |n: &str| links.get(n).copied();
        let plan = diff_prefixes(&self.inputs, touched, &self.programmed, &ifindex);
        let report = self.execute(plan, true).await;
        if report != ApplyReport::default() {
            self.publish_metrics(report.failed);
        }
        report
    }

    /// Dump, diff against everything, apply.
    async fn resync(&mut self) -> Result<ApplyReport, RouteError> {
        self.resync_soon = false;
        if !self.inputs.endpoints.is_empty() {
            self.links = self.sock.links().await?;
        }
        let installed = self.sock.twill_routes().await?;
        let links = &self.links;
        let ifindex = |n: &str| links.get(n).copied();
        let desired = self.inputs.desired(&ifindex);
        let plan = diff(&desired, &installed);
        self.programmed = installed
            .into_iter()
            .filter(Installed::has_default_metric)
            .filter_map(|r| Some((r.dst, r.target?)))
            .collect();
        if !plan.is_empty() {
            tracing::info!(
                add = plan.add.len(),
                replace = plan.replace.len(),
                delete = plan.delete.len(),
                "route resync: repairing drift"
            );
        }
        let report = self.execute(plan, false).await;
        self.publish_metrics(report.failed);
        Ok(report)
    }

    /// Updates the routes-programmed gauges from what the kernel holds of
    /// ours (one pass over the table: only after a resync or an increment
    /// that changed something), and counts refused changes.
    fn publish_metrics(&self, failed: usize) {
        let (mut local, mut blackhole, mut bgp) = (0, 0, 0);
        for t in self.programmed.values() {
            match t {
                Target::Dev(_) => local += 1,
                Target::Blackhole => blackhole += 1,
                Target::Via(_) => bgp += 1,
            }
        }
        let m = crate::metrics::global();
        m.set_routes(local, blackhole, bgp);
        m.add_route_failures(failed);
    }

    /// Runs a plan and records what took effect. An increment's add that
    /// finds its prefix taken (by an identical route someone else just
    /// made, e.g. endpoint setup, or by a foreign route) asks for an early
    /// resync, which sees the truth; a resync's own adds never do, so a
    /// foreign route holding a prefix costs one attempt per interval.
    async fn execute(&mut self, plan: Plan, increment: bool) -> ApplyReport {
        let mut report = ApplyReport::default();
        if plan.is_empty() {
            return report;
        }
        let ops = Op::from_plan(plan);
        let results = self
            .sock
            .apply(&ops, self.cfg.batch, self.cfg.in_flight)
            .await;
        let mut logged = 0;
        let mut quiet = 0;
        for (op, r) in ops.into_iter().zip(results) {
            match r {
                Ok(()) => match op {
                    Op::Add(d, t) => {
                        report.added += 1;
                        self.programmed.insert(d, t);
                    }
                    Op::Replace(d, t) => {
                        report.replaced += 1;
                        self.programmed.insert(d, t);
                    }
                    Op::Delete(r) => {
                        report.deleted += 1;
                        if r.has_default_metric() {
                            self.programmed.remove(&r.dst);
                        }
                    }
                },
                Err(errno) => {
                    report.failed += 1;
                    if errno == libc::EEXIST && increment {
                        self.resync_soon = true;
                        tracing::debug!(dst = %op.dst(), "prefix already routed; checking at an early resync");
                        quiet += 1;
                        continue;
                    }
                    if logged < LOGGED_ERRORS {
                        logged += 1;
                        let err = std::io::Error::from_raw_os_error(errno);
                        let (what, target) = match &op {
                            Op::Add(_, t) => ("adding", t.to_string()),
                            Op::Replace(_, t) => ("replacing", t.to_string()),
                            Op::Delete(_) => ("deleting", String::new()),
                        };
                        tracing::warn!(dst = %op.dst(), %target, error = %err, "{what} a route failed; retrying at the next resync");
                    }
                }
            }
        }
        if report.failed > logged + quiet {
            tracing::warn!(
                failed = report.failed,
                "route changes failed; retrying at the next resync"
            );
        }
        report
    }
}
