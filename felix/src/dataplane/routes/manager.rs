//! The kernel side of the route manager: the netlink socket and what it
//! holds of ours. A full pass ([`Manager`]) dumps Twill's routes, computes
//! the desired table ([`crate::calc::routes`]) and repairs the difference;
//! between passes, [`RouteManager::increment`] applies the prefixes a
//! command touched against what was last programmed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ipnetwork::IpNetwork;

use super::netlink::{Op, RouteSocket};
use super::{ApplyReport, RouteError};
use crate::calc::routes::{Inputs, Installed, Plan, Target, diff, diff_prefixes};
use crate::dataplane::Manager;

/// At most this many route errors are logged one by one per round.
const LOGGED_ERRORS: usize = 10;

/// Twill's routes in the kernel, and the socket that writes them.
pub struct RouteManager {
    sock: RouteSocket,
    /// Requests per netlink batch, and batches in flight.
    batch: usize,
    in_flight: usize,
    /// What we believe the kernel holds of ours (default metric only).
    pub(super) programmed: BTreeMap<IpNetwork, Target>,
    links: HashMap<String, u32>,
    /// An add found the prefix taken: look at the kernel again soon.
    pub(super) resync_soon: bool,
}

/// Ours at the default metric: what a pass may keep as programmed.
fn programmed(installed: &[Installed]) -> BTreeMap<IpNetwork, Target> {
    installed
        .iter()
        .filter(|r| r.has_default_metric())
        .filter_map(|r| Some((r.dst, r.target.clone()?)))
        .collect()
}

impl RouteManager {
    /// Opens a netlink socket in the current network namespace (its
    /// connection runs in the task returned) and reads the routes already
    /// there.
    pub async fn open(
        batch: usize,
        in_flight: usize,
    ) -> Result<(RouteManager, tokio::task::JoinHandle<()>), RouteError> {
        let (sock, conn) = RouteSocket::open()?;
        let conn_task = tokio::spawn(conn);
        let installed = match sock.twill_routes().await {
            Ok(i) => i,
            Err(e) => {
                conn_task.abort();
                return Err(e);
            }
        };
        let mgr = RouteManager {
            sock,
            batch,
            in_flight,
            programmed: programmed(&installed),
            links: HashMap::new(),
            resync_soon: false,
        };
        Ok((mgr, conn_task))
    }

    pub(super) async fn refresh_links(&mut self, inputs: &Inputs) {
        if inputs.endpoints.is_empty() {
            return;
        }
        match self.sock.links().await {
            Ok(l) => self.links = l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list interfaces; endpoint routes wait for the next resync")
            }
        }
    }

    /// Applies the `touched` prefixes against what was last programmed.
    pub(super) async fn increment(
        &mut self,
        inputs: &Inputs,
        touched: &BTreeSet<IpNetwork>,
    ) -> ApplyReport {
        let links = &self.links;
        let ifindex = |n: &str| links.get(n).copied();
        let plan = diff_prefixes(inputs, touched, &self.programmed, &ifindex);
        let report = self.execute(plan, true).await;
        if report != ApplyReport::default() {
            self.publish_metrics(report.failed);
        }
        report
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
        let results = self.sock.apply(&ops, self.batch, self.in_flight).await;
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

impl Manager for RouteManager {
    type Inputs = Inputs;
    type Desired = BTreeMap<IpNetwork, Target>;
    /// Twill's routes as the kernel lists them.
    type Observed = Vec<Installed>;
    type Diff = Plan;
    type Report = ApplyReport;
    type Error = RouteError;

    /// Dumps the interfaces (for endpoint routes) and Twill's routes.
    async fn observe(&mut self, inputs: &Inputs) -> Result<Vec<Installed>, RouteError> {
        self.resync_soon = false;
        if !inputs.endpoints.is_empty() {
            self.links = self.sock.links().await?;
        }
        let installed = self.sock.twill_routes().await?;
        self.programmed = programmed(&installed);
        Ok(installed)
    }

    fn desired(&mut self, inputs: &Inputs) -> BTreeMap<IpNetwork, Target> {
        let links = &self.links;
        inputs.desired(&|n: &str| links.get(n).copied())
    }

    fn diff(&mut self, desired: BTreeMap<IpNetwork, Target>, installed: Vec<Installed>) -> Plan {
        diff(&desired, &installed)
    }

    async fn apply(&mut self, plan: Plan) -> Result<ApplyReport, RouteError> {
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
}
