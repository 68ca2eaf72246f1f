//! The policy engine in twill-node: follows Pods, Namespaces,
//! NetworkPolicies, GlobalNetworkPolicies and IPAM blocks in the datastore
//! plus the node's own endpoints, keeps Twill's table up to date and
//! applies it.
//!
//! * Objects are reduced on arrival to what policy needs
//!   ([`twill_policy::cluster::Inputs`]: labels, addresses, named ports,
//!   node; policies compiled once per change), never kept or cloned whole.
//! * Rendering is incremental ([`twill_policy::incremental`]): a change
//!   re-renders only the chains and set elements it touches, and the nft
//!   script holds only those.
//! * Nothing is applied until every watched kind has delivered its first
//!   full listing: a restarted agent keeps the previous run's table in the
//!   kernel until it knows the whole picture, then replaces it atomically.
//! * The first apply, and any apply after a failure or detected drift,
//!   replaces the whole table in one transaction; every other change is an
//!   incremental update (set elements, changed chains only).
//! * Every `drift_every` the table is read back and compared; a difference
//!   is logged and repaired with a full replacement.
//! * [`PolicyGate`] makes a CNI ADD wait until the new endpoint's chains and
//!   dispatch entries are in the kernel, with its Pod object's labels and
//!   named ports taken into account.
//! * Fail closed: when nft refuses a full replacement, the policies it is
//!   due to are found by checking the table with `nft -c`
//!   ([`twill_policy::refused`]); each is logged once, named in the
//!   `policy` readiness condition (and so in the NodeStatus report), and
//!   enforced as allowing nothing for the pods it selects until the policy
//!   changes ([`twill_policy::refused::fail_closed`]); everything else is
//!   applied. Until the first table is in the
//!   kernel the condition is not ready either.
//! * Test hook, for tests only: `TWILL_TEST_UNPROGRAMMABLE_POLICY=ID`
//!   (`np/NAMESPACE/NAME` or `gnp/NAME`) adds to that policy a rule nft
//!   refuses (a port range running backwards), so tests can provoke a
//!   refusal with a legal object. Never set it in production.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use tokio::sync::{mpsc, oneshot, watch};
use twill_api::resources::{GlobalNetworkPolicy, IPAMBlock};
use twill_api::{Object, Store, WatchEvent};
use twill_policy::cluster::{Inputs, LocalEndpoint, PodInfo, allocations};
use twill_policy::incremental::Incremental;
use twill_policy::ir::MAP_INGRESS;
use twill_policy::model::{Action, Entity, Policy, PortSpec, Rule, proto};
use twill_policy::refused::{fail_closed, find_refused};

use crate::endpoint::{EndpointGate, EndpointRecord, EndpointSet};
use crate::nft::{Fingerprint, apply_script, check_script, read_table};

// Watch events are large and short-lived; boxing them buys nothing.
#[allow(clippy::large_enum_variant)]
enum Event {
    Pods(WatchEvent<Pod>),
    Namespaces(WatchEvent<Namespace>),
    Policies(WatchEvent<NetworkPolicy>),
    Globals(WatchEvent<GlobalNetworkPolicy>),
    Blocks(WatchEvent<IPAMBlock>),
    /// A CNI ADD waiting for its endpoint (with its Pod object, if any).
    Ensure {
        iface: String,
        pod: Option<Box<Pod>>,
        reply: oneshot::Sender<()>,
    },
}

fn obj_key<K: kube::Resource>(o: &K) -> (String, String) {
    (
        o.meta().namespace.clone().unwrap_or_default(),
        o.meta().name.clone().unwrap_or_default(),
    )
}

/// Handle to the running engine.
pub struct PolicyEngine {
    node: String,
    store: Store,
    tx: mpsc::UnboundedSender<Event>,
    rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    /// How long an ADD waits for its policy.
    gate_timeout: Duration,
}

/// What the model is built from, reduced to what policy needs.
#[derive(Default)]
struct State {
    inputs: Inputs,
    synced: BTreeSet<&'static str>,
}

const KINDS: [&str; 5] = ["pods", "namespaces", "policies", "globals", "blocks"];

/// The readiness condition of policy programming: not ready until the
/// first table is in the kernel, and while any policy is refused.
pub const POLICY: &str = "policy";

/// The test-only variable that makes one policy unprogrammable (see the
/// module doc). Tests only.
pub const TEST_UNPROGRAMMABLE_POLICY: &str = "TWILL_TEST_UNPROGRAMMABLE_POLICY";

/// Origin of the rule the test hook adds.
const TEST_HOOK_ORIGIN: &str = "test-hook-unprogrammable";

/// A policy the kernel refused: what it was when refused and what is
/// enforced instead, with nft's reason.
struct Refused {
    original: Arc<Policy>,
    closed: Arc<Policy>,
    reason: String,
}

/// The refused policies by id.
struct Refusals {
    by_id: std::collections::BTreeMap<String, Refused>,
    /// The last refusal no policy explained (logged once).
    unexplained: Option<String>,
    /// The policy the test hook breaks (tests only).
    hook: Option<String>,
}

impl Refusals {
    fn new() -> Refusals {
        let hook = std::env::var(TEST_UNPROGRAMMABLE_POLICY).ok();
        if let Some(id) = &hook {
            tracing::warn!(policy = %id, "{TEST_UNPROGRAMMABLE_POLICY} is set: this policy is made unprogrammable (a test hook, never for production)");
        }
        Refusals {
            by_id: Default::default(),
            unexplained: None,
            hook,
        }
    }

    /// Puts the fail-closed form in place of every refused policy that is
    /// unchanged; a policy that changed (or is gone) is tried again.
    fn substitute(&mut self, inputs: &mut Inputs) {
        let mut present = BTreeSet::new();
        let maps = inputs
            .network_policies
            .values_mut()
            .chain(inputs.global_policies.values_mut());
        for p in maps {
            present.insert(p.id.clone());
            let r = self.by_id.get(&p.id);
            if r.is_some_and(|r| Arc::ptr_eq(p, &r.closed)) {
                continue;
            }
            if self.hook.as_deref() == Some(p.id.as_str()) && !has_test_hook(p) {
                *p = Arc::new(with_test_hook(p));
            }
            let Some(r) = r else {
                continue;
            };
            if **p == *r.original {
                *p = r.closed.clone();
            } else {
                tracing::info!(policy = %p.id, "a refused policy changed; programming it again");
                self.by_id.remove(&p.id);
            }
        }
        self.by_id.retain(|id, _| present.contains(id));
    }

    /// The readiness reason, or None when nothing is refused.
    fn reason(&self) -> Option<String> {
        if self.by_id.is_empty() {
            return None;
        }
        let list: Vec<String> = self
            .by_id
            .iter()
            .map(|(id, r)| format!("{id} ({})", r.reason))
            .collect();
        Some(format!(
            "not programmed, enforced as allowing nothing: {}",
            list.join("; ")
        ))
    }
}

fn has_test_hook(p: &Policy) -> bool {
    [&p.ingress, &p.egress]
        .iter()
        .any(|r| r.iter().flatten().any(|r| r.origin == TEST_HOOK_ORIGIN))
}

/// `p` with a rule nft refuses (tests only; see the module doc).
fn with_test_hook(p: &Policy) -> Policy {
    let mut p = p.clone();
    let bad = Rule {
        proto: Some(proto::TCP),
        dst: Entity {
            ports: vec![PortSpec::Range(2, 1)],
            ..Entity::default()
        },
        ..Rule::any(TEST_HOOK_ORIGIN, Action::Allow)
    };
    for rules in [&mut p.ingress, &mut p.egress].into_iter().flatten() {
        rules.push(bad.clone());
    }
    p
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
        wrap: fn(WatchEvent<K>) -> Event,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.store.clone();
        let tx = self.tx.clone();
        // Retries with backoff and reports its state in readiness.
        tokio::spawn(crate::agent::watch_kind::<K>(store, move |ev| {
            tx.send(wrap(ev)).is_ok()
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
            self.watch_kind::<Pod>(Event::Pods),
            self.watch_kind::<Namespace>(Event::Namespaces),
            self.watch_kind::<NetworkPolicy>(Event::Policies),
            self.watch_kind::<GlobalNetworkPolicy>(Event::Globals),
            self.watch_kind::<IPAMBlock>(Event::Blocks),
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
        let mut st = State::default();
        let mut waiting: Vec<(String, oneshot::Sender<()>)> = Vec::new();
        let mut inc = Incremental::new(&self.node);
        let mut refusals = Refusals::new();
        // Whether the kernel has `inc`'s table as of its last commit.
        let mut in_kernel = false;
        let mut dirty = true;
        let mut drift = tokio::time::interval(drift_every);
        drift.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut check_drift = false;
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
                    self.handle(&mut st, &mut waiting, ev);
                    while let Ok(ev) = rx.try_recv() {
                        self.handle(&mut st, &mut waiting, ev);
                    }
                    dirty = true;
                }
                r = endpoints.changed() => {
                    if r.is_err() { return }
                    dirty = true;
                }
                _ = drift.tick() => check_drift = true,
                _ = retry => { retry_at = None; dirty = true; }
            }
            if st.synced.len() < KINDS.len() {
                continue;
            }
            if check_drift && in_kernel {
                check_drift = false;
                let want = Fingerprint::of(inc.table());
                match tokio::task::spawn_blocking(read_table).await {
                    Ok(Ok(kernel)) => {
                        let diffs = match &kernel {
                            Some(k) => want.differences(k),
                            None => vec!["the table is missing".to_string()],
                        };
                        if !diffs.is_empty() {
                            tracing::warn!(drift = ?diffs, "the kernel's policy table drifted; replacing it");
                            in_kernel = false;
                            dirty = true;
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the policy table back"),
                    Err(e) => tracing::warn!(error = %e, "drift check task failed"),
                }
            }
            if !dirty {
                continue;
            }
            dirty = false;
            let locals: Vec<LocalEndpoint> = endpoints
                .borrow_and_update()
                .values()
                .map(local_endpoint)
                .collect();
            refusals.substitute(&mut st.inputs);
            inc.follow(&mut st.inputs, &locals);
            let full = !in_kernel;
            let script = if full {
                Some(inc.full_script())
            } else {
                inc.commit()
            };
            if let Some(script) = script {
                let started = Instant::now();
                let r = tokio::task::spawn_blocking(move || apply_script(&script)).await;
                crate::metrics::global().observe_nft_apply(
                    full,
                    matches!(r, Ok(Ok(()))),
                    started.elapsed(),
                );
                match r {
                    Ok(Ok(())) => {
                        tracing::debug!(full, took = ?started.elapsed(), rules = inc.table().rule_count(), "policy table applied");
                    }
                    Ok(Err(e)) => {
                        in_kernel = false;
                        if !full {
                            tracing::warn!(error = %e, "nft refused an incremental update; replacing the whole table");
                            // Now, not at the next event.
                            retry_at = Some(Instant::now());
                            continue;
                        }
                        match self.diagnose(&inc, &st.inputs, &mut refusals).await {
                            // Refused policies found: apply the rest now.
                            Ok(true) => retry_at = Some(Instant::now()),
                            // The table passes the check now (a transient
                            // refusal): try again, but not in a busy loop.
                            Ok(false) => retry_at = Some(Instant::now() + Duration::from_secs(1)),
                            Err(reason) => {
                                if refusals.unexplained.as_ref() != Some(&reason) {
                                    tracing::warn!(error = %e, "nft refused the policy table and no single policy explains it; retrying every second");
                                    refusals.unexplained = Some(reason.clone());
                                }
                                crate::health::global().set_not_ready(
                                    POLICY,
                                    &format!("the policy table is not programmed: {reason}"),
                                );
                                retry_at = Some(Instant::now() + Duration::from_secs(1));
                            }
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "policy apply task failed");
                        in_kernel = false;
                        retry_at = Some(Instant::now() + Duration::from_secs(1));
                        continue;
                    }
                }
            }
            in_kernel = true;
            refusals.unexplained = None;
            match refusals.reason() {
                None => crate::health::global().set_ready(POLICY),
                Some(r) => crate::health::global().set_not_ready(POLICY, &r),
            }
            let ready = inc.table().maps.get(MAP_INGRESS);
            let (done, still): (Vec<_>, Vec<_>) = waiting
                .into_iter()
                .partition(|(iface, _)| ready.is_some_and(|m| m.contains_key(iface)));
            for (_, reply) in done {
                let _ = reply.send(());
            }
            waiting = still;
        }
    }

    /// After nft refused a full table: finds the policies it is due to
    /// (checking, never applying) and records them as refused, logging each
    /// once; true when it found any. Err with nft's reason when no policy
    /// explains the refusal.
    async fn diagnose(
        &self,
        inc: &Incremental,
        inputs: &Inputs,
        refusals: &mut Refusals,
    ) -> Result<bool, String> {
        let table = inc.table().clone();
        let ids: Vec<String> = inputs.policies().map(|p| p.id.clone()).collect();
        let found = tokio::task::spawn_blocking(move || {
            find_refused(&table, ids.iter().map(String::as_str), &mut |s| {
                check_script(s).map_err(|e| e.to_string())
            })
        })
        .await
        .map_err(|e| format!("the check task failed: {e}"))??;
        if found.is_empty() {
            return Ok(false);
        }
        for (id, reason) in found {
            let Some(original) = inputs.policies().find(|p| p.id == id).cloned() else {
                continue;
            };
            tracing::warn!(policy = %id, reason = %reason, "nft refused this policy: it is enforced as allowing nothing for the pods it selects until it changes; everything else is programmed");
            refusals.by_id.insert(
                id,
                Refused {
                    closed: Arc::new(fail_closed(&original)),
                    original,
                    reason,
                },
            );
        }
        if let Some(r) = refusals.reason() {
            crate::health::global().set_not_ready(POLICY, &r);
        }
        Ok(true)
    }

    fn handle(&self, st: &mut State, waiting: &mut Vec<(String, oneshot::Sender<()>)>, ev: Event) {
        let resync = matches!(
            &ev,
            Event::Pods(WatchEvent::Resync { .. })
                | Event::Namespaces(WatchEvent::Resync { .. })
                | Event::Policies(WatchEvent::Resync { .. })
                | Event::Globals(WatchEvent::Resync { .. })
                | Event::Blocks(WatchEvent::Resync { .. })
        );
        let inputs = &mut st.inputs;
        let left_out = |e: twill_policy::model::CompileError| {
            tracing::warn!(error = %e, "policy left out: it does not compile");
        };
        let kind = match ev {
            Event::Pods(e) => {
                match e {
                    WatchEvent::Resync { items, .. } => {
                        inputs.replace_pods(items.iter().filter_map(PodInfo::of).collect());
                    }
                    WatchEvent::Applied(o) => {
                        if let Some((k, p)) = PodInfo::of(&o) {
                            inputs.apply_pod(k, p);
                        }
                    }
                    WatchEvent::Deleted(o) => {
                        inputs.remove_pod(&obj_key(&o));
                    }
                }
                "pods"
            }
            Event::Namespaces(e) => {
                let labels = |n: &Namespace| n.metadata.labels.clone().unwrap_or_default();
                match e {
                    WatchEvent::Resync { items, .. } => {
                        inputs.namespaces =
                            items.iter().map(|n| (obj_key(n).1, labels(n))).collect();
                    }
                    WatchEvent::Applied(o) => {
                        inputs.namespaces.insert(obj_key(&o).1, labels(&o));
                    }
                    WatchEvent::Deleted(o) => {
                        inputs.namespaces.remove(&obj_key(&o).1);
                    }
                }
                "namespaces"
            }
            Event::Policies(e) => {
                match e {
                    WatchEvent::Resync { items, .. } => {
                        inputs.network_policies.clear();
                        for o in &items {
                            inputs.apply_network_policy(o).unwrap_or_else(left_out);
                        }
                    }
                    WatchEvent::Applied(o) => {
                        inputs.apply_network_policy(&o).unwrap_or_else(left_out);
                    }
                    WatchEvent::Deleted(o) => {
                        inputs.network_policies.remove(&obj_key(&o));
                    }
                }
                "policies"
            }
            Event::Globals(e) => {
                match e {
                    WatchEvent::Resync { items, .. } => {
                        inputs.global_policies.clear();
                        for o in &items {
                            inputs.apply_global_policy(o).unwrap_or_else(left_out);
                        }
                    }
                    WatchEvent::Applied(o) => {
                        inputs.apply_global_policy(&o).unwrap_or_else(left_out);
                    }
                    WatchEvent::Deleted(o) => {
                        inputs.global_policies.remove(&obj_key(&o).1);
                    }
                }
                "globals"
            }
            Event::Blocks(e) => {
                match e {
                    WatchEvent::Resync { items, .. } => {
                        inputs.replace_blocks(
                            items
                                .iter()
                                .map(|b| (obj_key(b).1, allocations(b)))
                                .collect(),
                        );
                    }
                    WatchEvent::Applied(o) => {
                        inputs.apply_block(&obj_key(&o).1, allocations(&o));
                    }
                    WatchEvent::Deleted(o) => {
                        inputs.remove_block(&obj_key(&o).1);
                    }
                }
                "blocks"
            }
            Event::Ensure { iface, pod, reply } => {
                if let Some((k, p)) = pod.as_deref().and_then(PodInfo::of) {
                    inputs.apply_pod(k, p);
                }
                waiting.push((iface, reply));
                return;
            }
        };
        if resync {
            st.synced.insert(kind);
        }
    }
}
fn local_endpoint(r: &EndpointRecord) -> LocalEndpoint {
    LocalEndpoint {
        namespace: r.namespace.clone(),
        pod: r.pod.clone(),
        labels: r.labels.clone(),
        ips: r.addresses.iter().map(|a| a.ip()).collect(),
        iface: r.host_ifname.clone(),
        container_id: r.container_id.clone(),
    }
}

/// Holds a CNI ADD until the endpoint's policy is in the kernel.
pub struct PolicyGate {
    engine: Arc<PolicyEngine>,
}

#[async_trait::async_trait]
impl EndpointGate for PolicyGate {
    async fn ready(&self, ep: &EndpointRecord) -> Result<(), String> {
        // Read the Pod now: the watch may not have delivered it yet, and its
        // labels and named ports decide what the endpoint's rules are.
        let pod = match (&ep.namespace, &ep.pod) {
            (Some(ns), Some(name)) => self
                .engine
                .store
                .get::<Pod>(Some(ns), name)
                .await
                .map_err(|e| format!("reading pod {ns}/{name}: {e}"))?
                .map(Box::new),
            _ => None,
        };
        let (reply, done) = oneshot::channel();
        self.engine
            .tx
            .send(Event::Ensure {
                iface: ep.host_ifname.clone(),
                pod,
                reply,
            })
            .map_err(|_| "the policy engine is not running".to_string())?;
        match tokio::time::timeout(self.engine.gate_timeout, done).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("the policy engine stopped".into()),
            Err(_) => Err(match crate::health::watches().not_ready_reason() {
                // The engine cannot compute policy without every kind.
                Some(why) => format!(
                    "not programmed within {:?}: the datastore is not ready: {why}",
                    self.engine.gate_timeout
                ),
                None => format!(
                    "not programmed within {:?} (is nft installed? see the twill-node log)",
                    self.engine.gate_timeout
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn add_is_held_until_the_policy_is_programmed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(
            twill_api::store::embedded::EmbeddedStore::open(dir.path().join("s.db")).unwrap(),
        );
        // The engine is not running, so nothing is ever programmed: the
        // gate must hold the ADD and then fail it, never wave it through.
        let engine = PolicyEngine::with_gate_timeout("n", store, Duration::from_millis(300));
        let gate = engine.gate();
        let rec = EndpointRecord {
            container_id: "c".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/none".into(),
            host_ifname: "twc".into(),
            mac: String::new(),
            mtu: 1500,
            addresses: Vec::new(),
            namespace: None,
            pod: None,
            labels: Default::default(),
            created: String::new(),
        };
        let started = Instant::now();
        let err = gate.ready(&rec).await.unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(err.contains("not programmed"), "{err}");
    }
}
