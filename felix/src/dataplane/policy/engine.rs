//! The policy engine in twill-node: follows Pods, Namespaces,
//! NetworkPolicies, GlobalNetworkPolicies and IPAM blocks in the datastore
//! plus the node's own endpoints, and keeps the [`PolicyTable`] in line.
//!
//! * Nothing is applied until every watched kind has delivered its first
//!   full listing: a restarted agent keeps the previous run's table in the
//!   kernel until it knows the whole picture, then replaces it atomically.
//! * Each burst of events is one [`crate::dataplane::Manager`] pass; every `drift_every` the
//!   pass also reads the table back. A failed pass is retried at once when
//!   it taught something, else after a second.
//! * [`PolicyGate`] (in [`super::gate`]) makes a CNI ADD wait until the new
//!   endpoint's chains and dispatch entries are in the kernel.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use tokio::sync::{mpsc, oneshot, watch};
use twill_api::resources::{GlobalNetworkPolicy, IPAMBlock};
use twill_api::{Object, Store, WatchEvent};
use twill_policy::cluster::{LocalEndpoint, PodInfo};

use super::POLICY;
use super::gate::PolicyGate;
use super::table::PolicyTable;
use crate::calc::policy::{Change, KINDS, local_endpoint};
use crate::dataplane::endpoints::{EndpointGate, EndpointSet};
use crate::dataplane::reconcile;

/// What the engine's loop is told.
// Watch events are large and short-lived; boxing them buys nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Event {
    Watch(Change),
    /// A CNI ADD waiting for its endpoint (with its Pod object, if any).
    Ensure {
        iface: String,
        pod: Option<Box<Pod>>,
        reply: oneshot::Sender<()>,
    },
}

/// Handle to the running engine.
pub struct PolicyEngine {
    node: String,
    pub(super) store: Store,
    pub(super) tx: mpsc::UnboundedSender<Event>,
    rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    /// How long an ADD waits for its policy.
    pub(super) gate_timeout: Duration,
}

impl PolicyEngine {
    pub fn new(node: &str, store: Store) -> Arc<PolicyEngine> {
        Self::with_gate_timeout(node, store, Duration::from_secs(20))
    }

    /// Like [`PolicyEngine::new`], with how long an ADD waits for its policy.
    pub fn with_gate_timeout(
        node: &str,
        store: Store,
        gate_timeout: Duration,
    ) -> Arc<PolicyEngine> {
        let (tx, rx) = mpsc::unbounded_channel();
        Arc::new(PolicyEngine {
            node: node.to_string(),
            store,
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            gate_timeout,
        })
    }

    /// The gate CNI ADD waits on.
    pub fn gate(self: &Arc<Self>) -> Arc<dyn EndpointGate> {
        Arc::new(PolicyGate {
            engine: self.clone(),
        })
    }

    fn watch_kind<K: Object>(
        &self,
        wrap: fn(WatchEvent<K>) -> Change,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.store.clone();
        let tx = self.tx.clone();
        // Retries with backoff and reports its state in readiness.
        tokio::spawn(crate::watch::watch_kind::<K>(store, move |ev| {
            tx.send(Event::Watch(wrap(ev))).is_ok()
        }))
    }

    /// Starts the watches and the loop. `drift_every`: how often the kernel
    /// table is read back and compared.
    pub fn run(
        self: &Arc<Self>,
        endpoints: watch::Receiver<EndpointSet>,
        drift_every: Duration,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = vec![
            self.watch_kind::<Pod>(Change::Pods),
            self.watch_kind::<Namespace>(Change::Namespaces),
            self.watch_kind::<NetworkPolicy>(Change::Policies),
            self.watch_kind::<GlobalNetworkPolicy>(Change::Globals),
            self.watch_kind::<IPAMBlock>(Change::Blocks),
        ];
        crate::health::global().register(POLICY, "the policy table is not programmed yet");
        let rx = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(rx) = rx {
            let me = self.clone();
            tasks.push(tokio::spawn(async move {
                me.main_loop(rx, endpoints, drift_every).await;
            }));
        }
        tasks
    }

    async fn main_loop(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<Event>,
        mut endpoints: watch::Receiver<EndpointSet>,
        drift_every: Duration,
    ) {
        let mut table = PolicyTable::new(&self.node);
        let mut synced: BTreeSet<&'static str> = BTreeSet::new();
        let mut waiting: Vec<(String, oneshot::Sender<()>)> = Vec::new();
        let mut drift = tokio::time::interval(drift_every);
        drift.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry_at: Option<Instant> = None;
        loop {
            let retry = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = rx.recv() => {
                    let Some(ev) = ev else { return };
                    handle(&mut table, &mut synced, &mut waiting, ev);
                    while let Ok(ev) = rx.try_recv() {
                        handle(&mut table, &mut synced, &mut waiting, ev);
                    }
                }
                r = endpoints.changed() => if r.is_err() { return },
                _ = drift.tick() => table.drift_due = true,
                _ = retry => retry_at = None,
            }
            // Every wake-up is one pass, once every kind has been listed.
            if synced.len() < KINDS.len() {
                continue;
            }
            let locals: Vec<LocalEndpoint> = endpoints
                .borrow_and_update()
                .values()
                .map(local_endpoint)
                .collect();
            match reconcile(&mut table, &locals).await {
                Ok(()) => {
                    let (done, still): (Vec<_>, Vec<_>) = waiting
                        .into_iter()
                        .partition(|(iface, _)| table.has_endpoint(iface));
                    for (_, reply) in done {
                        let _ = reply.send(());
                    }
                    waiting = still;
                }
                Err(e) => retry_at = Some(Instant::now() + e.retry_after()),
            }
        }
    }
}

/// Applies one event: a datastore change to the inputs, or an ADD that
/// waits (its Pod object applied first, which the watch may not have
/// delivered yet).
fn handle(
    table: &mut PolicyTable,
    synced: &mut BTreeSet<&'static str>,
    waiting: &mut Vec<(String, oneshot::Sender<()>)>,
    ev: Event,
) {
    match ev {
        Event::Watch(change) => {
            if let Some(kind) = change.apply(&mut table.inputs) {
                synced.insert(kind);
            }
        }
        Event::Ensure { iface, pod, reply } => {
            if let Some((k, p)) = pod.as_deref().and_then(PodInfo::of) {
                table.inputs.apply_pod(k, p);
            }
            waiting.push((iface, reply));
        }
    }
}
