//! The service proxy (`--service-proxy=nftables`): the only writer of the
//! `inet twill-svc-0` … `twill-svc-7` tables. What they hold comes from
//! [`crate::calc::services`] (rendered only for the Services that changed);
//! here it reaches the kernel through [`twill_nft`] — all tables replaced
//! in one transaction at start and after any failure or drift, otherwise
//! only the difference from what was last applied (map elements, chains
//! flushed and refilled) in the tables of the Services that changed, as
//! one netlink batch of our own ([`nfnl`]: libnftables would list the
//! whole ruleset first) or, for what that encoder does not know (session
//! affinity, source ranges, the Local policy's entry), as nft text. Every
//! `resync` the tables are read back and compared with what was applied;
//! any difference is drift, repaired by a full replacement.
//!
//! With `--service-proxy=off` (the default: kube-proxy usually runs) the
//! agent writes nothing here, and deletes the tables a previous run with
//! the proxy on left behind ([`remove_leftover`]): a stale table would keep
//! translating Service addresses to endpoints that may be gone, in front
//! of kube-proxy's rules.
//!
//! Readiness ([`health::SERVICE_PROXY`]) holds only while the tables
//! implement the Services as last listed, and names nft's error when they
//! cannot be written.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::watch;
use twill_api::service_proxy::ServicePortProxy;
use twill_api::store::retry::Backoff;

pub mod nfnl;

use super::{Manager, Requeue, reconcile};
use crate::calc::services::{
    Fingerprint, LEGACY_TABLE_NAME, Renderer, SHARDS, StaleUdp, TABLES, TableOps, Tables,
    render_ops, table_name,
};
use crate::health;
use crate::watch::feeds::ServiceFeed;

/// `--service-proxy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Nothing: Service traffic is someone else's (kube-proxy).
    #[default]
    Off,
    /// The `inet twill-svc-N` tables.
    Nftables,
}

/// Why the tables could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SvcError {
    #[error(transparent)]
    Nft(#[from] twill_nft::NftError),
    #[error(transparent)]
    Netlink(#[from] nfnl::NfnlError),
    #[error("the nft task failed: {0}")]
    Task(String),
}

/// How a diff reached the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// One netlink batch of our own ([`nfnl`]).
    Netlink,
    /// nft text through libnftables (what [`nfnl::encode`] does not take).
    Script,
}

/// Applies the steps of a diff, table by table, in one transaction, in the
/// calling thread's network namespace: as a netlink batch when
/// [`nfnl::encode`] takes them, else as nft text; says which.
pub fn apply_ops(tables: &[(String, Vec<crate::calc::services::Op>)]) -> Result<Via, SvcError> {
    apply_ops_on(&mut None, tables)
}

/// [`apply_ops`] on a netlink socket the caller keeps between calls
/// (opened here, in the calling thread's namespace, when `sock` is None;
/// dropped after an error, so the next call opens a fresh one).
pub fn apply_ops_on(
    sock: &mut Option<nfnl::Socket>,
    tables: &[(String, Vec<crate::calc::services::Op>)],
) -> Result<Via, SvcError> {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n: usize = tables.iter().map(|(_, o)| o.len()).sum();
    let seq = SEQ.fetch_add(n as u32 + 2, std::sync::atomic::Ordering::Relaxed);
    match nfnl::encode(tables, seq) {
        Ok(batch) => {
            let s = match sock.take() {
                Some(s) => s,
                None => nfnl::Socket::open().map_err(nfnl::NfnlError::from)?,
            };
            nfnl::send_on(&s, &batch)?;
            *sock = Some(s);
            Ok(Via::Netlink)
        }
        Err(why) => {
            tracing::debug!(%why, "service proxy diff sent as nft text");
            let text: String = tables.iter().map(|(t, ops)| render_ops(t, ops)).collect();
            twill_nft::apply_script(&text)?;
            Ok(Via::Script)
        }
    }
}

/// What other parts of the agent learn from the proxy after each applied
/// pass (the UDP conntrack flush and the health check port hang here).
#[derive(Clone, Default)]
pub struct Hooks {
    /// Called with the UDP flows the new tables no longer send where they
    /// did, after the tables are in the kernel.
    pub on_stale_udp: Option<Arc<dyn Fn(Vec<StaleUdp>) + Send + Sync>>,
    /// Gets the Service ports with a health check node port, as the kernel
    /// now implements them (local endpoint counts:
    /// [`twill_api::service_proxy::local_endpoint_counts`]), when they change.
    pub model: Option<watch::Sender<Arc<Vec<ServicePortProxy>>>>,
}

/// The inputs of one pass.
pub struct Inputs {
    pub services: Arc<Vec<Arc<Service>>>,
    pub slices: Arc<Vec<Arc<EndpointSlice>>>,
}

/// What the kernel holds, as far as a pass needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kernel {
    /// What this manager applied last (read back and checked when a read
    /// was due).
    AsApplied,
    /// Something else: rebuild (the reason is logged).
    Rebuild(String),
}

/// A pass's plan: the new tables, and the script to get there.
pub struct Plan {
    tables: Tables,
    script: Option<Script>,
}

/// The script of a pass.
pub enum Script {
    Full { text: String, reason: String },
    Diff(TableOps),
}

/// What a pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Nothing,
    Incremental { steps: usize, via: Via },
    Full { reason: String },
}

/// The manager: what it applied last is its state; the renderer keeps
/// each Service's part between passes so that a pass renders only the
/// Services that changed.
pub struct SvcProxy {
    renderer: Renderer,
    applied: Option<Tables>,
    /// Read the kernel's tables on the next pass.
    pub read_due: bool,
    hooks: Hooks,
    /// The health-checked ports last handed to [`Hooks::model`].
    health_ports: Option<Vec<ServicePortProxy>>,
    /// The netlink socket diffs go through, kept (see [`nfnl::Socket`]).
    sock: Option<nfnl::Socket>,
    /// The ruleset generation at which the kernel held exactly `applied`
    /// (our write the only commit between two reads of it): while the
    /// generation stays there, nothing can have drifted and a due read is
    /// skipped (listing the tables costs about as much as writing them).
    known_generation: Option<u32>,
    /// How many times the tables were listed (read back).
    pub reads: usize,
}

/// The kept socket's namespace's ruleset generation (opening the socket
/// if needed); None when it cannot be read (then reads are not skipped).
fn generation_of(sock: &mut Option<nfnl::Socket>) -> Option<u32> {
    if sock.is_none() {
        *sock = nfnl::Socket::open().ok();
    }
    let g = nfnl::generation(sock.as_ref()?).ok();
    if g.is_none() {
        *sock = None;
    }
    g
}

impl SvcProxy {
    pub fn new(node: &str, hooks: Hooks) -> SvcProxy {
        SvcProxy {
            renderer: Renderer::new(node),
            applied: None,
            read_due: true,
            hooks,
            health_ports: None,
            sock: None,
            known_generation: None,
            reads: 0,
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, twill_nft::NftError> + Send + 'static,
) -> Result<T, SvcError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SvcError::Task(e.to_string()))?
        .map_err(SvcError::from)
}

/// The kernel's tables `inet <name>` as fingerprints, listed through one
/// libnftables context (None: absent; an unreadable listing reads as an
/// empty fingerprint, which differs from any table).
async fn read(names: Vec<String>) -> Result<Vec<Option<Fingerprint>>, SvcError> {
    blocking(move || {
        let mut nft = twill_nft::Nft::new()?;
        names
            .iter()
            .map(|n| {
                let v = nft.list_table_json("inet", n)?;
                Ok(v.map(|v| Fingerprint::from_json(&v).unwrap_or_default()))
            })
            .collect()
    })
    .await
}

impl Manager for SvcProxy {
    type Inputs = Inputs;
    type Desired = Tables;
    type Observed = Kernel;
    type Diff = Plan;
    type Report = Applied;
    type Error = SvcError;

    async fn observe(&mut self, _: &Inputs) -> Result<Kernel, SvcError> {
        let Some(tables) = &self.applied else {
            return Ok(Kernel::Rebuild("first write by this run".into()));
        };
        if !self.read_due {
            return Ok(Kernel::AsApplied);
        }
        self.read_due = false;
        let mut sock = self.sock.take();
        let (sock, now) = tokio::task::spawn_blocking(move || {
            let g = generation_of(&mut sock);
            (sock, g)
        })
        .await
        .unwrap_or((None, None));
        self.sock = sock;
        if now.is_some() && now == self.known_generation {
            return Ok(Kernel::AsApplied);
        }
        self.reads += 1;
        let want = tables.fingerprints();
        let mut names: Vec<String> = want.iter().map(|(n, _)| n.clone()).collect();
        names.push(LEGACY_TABLE_NAME.into());
        let seen = read(names).await?;
        for ((name, want), seen) in want.iter().zip(&seen) {
            match seen {
                None => return Ok(Kernel::Rebuild(format!("the table inet {name} is missing"))),
                Some(f) if f == want => {}
                Some(f) => {
                    return Ok(Kernel::Rebuild(format!(
                        "inet {name}: {}",
                        drift_reason(want, f)
                    )));
                }
            }
        }
        if seen.last().is_some_and(Option::is_some) {
            return Ok(Kernel::Rebuild(format!(
                "an earlier version's table inet {LEGACY_TABLE_NAME} is there"
            )));
        }
        // As applied at `now` (read before the listing: a commit during it
        // moves the generation and brings the next read).
        self.known_generation = now;
        Ok(Kernel::AsApplied)
    }

    fn desired(&mut self, inputs: &Inputs) -> Tables {
        self.renderer.render(&inputs.services, &inputs.slices)
    }

    fn diff(&mut self, tables: Tables, kernel: Kernel) -> Plan {
        let script = match (kernel, &self.applied) {
            (Kernel::AsApplied, Some(old)) => {
                let d = tables.diff_ops(old);
                (!d.is_empty()).then_some(Script::Diff(d))
            }
            (Kernel::Rebuild(reason), _) => Some(Script::Full {
                text: tables.full_script(),
                reason,
            }),
            (Kernel::AsApplied, None) => Some(Script::Full {
                text: tables.full_script(),
                reason: "first write by this run".into(),
            }),
        };
        Plan { tables, script }
    }

    async fn apply(&mut self, plan: Plan) -> Result<Applied, SvcError> {
        let report = match plan.script {
            None => Applied::Nothing,
            Some(script) => {
                let mut sock = self.sock.take();
                let r = tokio::task::spawn_blocking(move || {
                    let before = generation_of(&mut sock);
                    let r = match script {
                        Script::Full { text, reason } => twill_nft::apply_script(&text)
                            .map(|()| Applied::Full { reason })
                            .map_err(SvcError::from),
                        Script::Diff(ops) => {
                            let steps = ops.iter().map(|(_, o)| o.len()).sum();
                            apply_ops_on(&mut sock, &ops)
                                .map(|via| Applied::Incremental { steps, via })
                        }
                    };
                    let after = generation_of(&mut sock);
                    let only_ours = match (before, after) {
                        (Some(b), Some(a)) if a == b.wrapping_add(1) => Some(a),
                        _ => None,
                    };
                    (sock, r, only_ours)
                })
                .await
                .map_err(|e| SvcError::Task(e.to_string()))
                .and_then(|(sock, r, only_ours)| {
                    self.sock = sock;
                    self.known_generation = only_ours;
                    r
                });
                match r {
                    Ok(applied) => applied,
                    Err(e) => {
                        // Whatever the kernel holds now, the next pass rebuilds.
                        self.applied = None;
                        self.known_generation = None;
                        return Err(e);
                    }
                }
            }
        };
        if let (Some(hook), Some(old)) = (&self.hooks.on_stale_udp, &self.applied) {
            let stale = plan.tables.stale_udp(old);
            if !stale.is_empty() {
                hook(stale);
            }
        }
        if let Some(tx) = &self.hooks.model {
            let ports: Vec<ServicePortProxy> = plan
                .tables
                .model()
                .filter(|p| p.health_check_node_port.is_some())
                .cloned()
                .collect();
            if self.health_ports.as_ref() != Some(&ports) {
                tx.send_replace(Arc::new(ports.clone()));
                self.health_ports = Some(ports);
            }
        }
        self.applied = Some(plan.tables);
        Ok(report)
    }
}

/// One line naming what differs between the table applied and the kernel's.
fn drift_reason(want: &Fingerprint, seen: &Fingerprint) -> String {
    let mut parts = Vec::new();
    for (c, n) in &want.chains {
        match seen.chains.get(c) {
            None => parts.push(format!("chain {c} missing")),
            Some(m) if m != n => parts.push(format!("chain {c} has {m} rules, not {n}")),
            _ => {}
        }
    }
    for c in seen.chains.keys().filter(|c| !want.chains.contains_key(*c)) {
        parts.push(format!("unexpected chain {c}"));
    }
    for (m, e) in &want.maps {
        if seen.maps.get(m) != Some(e) {
            parts.push(format!("map {m} elements differ"));
        }
    }
    if want.sets != seen.sets {
        parts.push("affinity sets differ".into());
    }
    if parts.is_empty() {
        parts.push("the listing differs".into());
    }
    parts.truncate(5);
    format!("drift: {}", parts.join("; "))
}

/// Keeps the `inet twill-svc-N` tables in line with the Services and
/// EndpointSlices: a pass on every change, and every `resync` a pass that
/// reads the tables back (drift is repaired by a full replacement); a
/// failed pass is retried with backoff (1 s doubling, at most `resync`).
/// Readiness follows every pass.
pub async fn run(node: String, mut feed: ServiceFeed, resync: Duration, hooks: Hooks) {
    let h = health::global();
    h.register(
        health::SERVICE_PROXY,
        "waiting for the first listing of Services and EndpointSlices",
    );
    let mut proxy = SvcProxy::new(&node, hooks);
    let mut requeue = Requeue::new("service proxy tables (inet twill-svc-N)", Backoff::watch());
    let mut next_read = Instant::now() + resync;
    loop {
        let mut wait = resync;
        if let Some((services, slices)) = feed.both() {
            if Instant::now() >= next_read {
                proxy.read_due = true;
                next_read = Instant::now() + resync;
            }
            let started = Instant::now();
            let r = reconcile(&mut proxy, &Inputs { services, slices }).await;
            let outcome = match &r {
                Ok(Applied::Nothing) => "nothing",
                Ok(Applied::Incremental { .. }) => "incremental",
                Ok(Applied::Full { .. }) => "full",
                Err(_) => "error",
            };
            crate::metrics::global().observe_service_proxy(
                outcome,
                started.elapsed(),
                proxy.renderer.rendered(),
                proxy.applied.as_ref().map_or(0, Tables::ports),
            );
            match &r {
                Ok(applied) => {
                    if let Applied::Full { reason } = applied {
                        tracing::info!(%reason, "service proxy tables {TABLES} written whole");
                    }
                    h.set_ready(health::SERVICE_PROXY);
                }
                Err(e) => h.set_not_ready(
                    health::SERVICE_PROXY,
                    &format!("the service proxy tables {TABLES} cannot be written: {e}"),
                ),
            }
            if let Some(delay) = requeue.after(&r) {
                wait = delay.min(resync);
            }
        }
        tokio::select! {
            alive = feed.changed() => if !alive { return },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// With the proxy off: deletes the `inet twill-svc-N` tables (and an
/// earlier version's `inet twill-svc`) that a previous run left (only
/// this agent ever writes them); true when it deleted any.
pub async fn remove_leftover() -> Result<bool, SvcError> {
    let names: Vec<String> = std::iter::once(LEGACY_TABLE_NAME.to_string())
        .chain((0..SHARDS).map(table_name))
        .collect();
    let seen = read(names.clone()).await?;
    let script: String = names
        .iter()
        .zip(&seen)
        .filter(|(_, s)| s.is_some())
        .map(|(n, _)| format!("delete table inet {n}\n"))
        .collect();
    if script.is_empty() {
        return Ok(false);
    }
    blocking(move || twill_nft::apply_script(&script)).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::calc::services::tests::{TWO, TestNs, WEB, slice, svc, web_slice};
    use crate::calc::services::{Op, shard_of, synthetic};
    use crate::dataplane::reconcile;
    use twill_api::service_proxy::proxy_model;

    /// WEB under the Local policy, with a health check node port.
    fn local_web() -> Service {
        let mut s = svc(WEB);
        let spec = s.spec.as_mut().expect("spec");
        spec.external_traffic_policy = Some("Local".into());
        spec.health_check_node_port = Some(32000);
        s
    }

    fn inputs(slice: &str) -> Inputs {
        Inputs {
            services: Arc::new(vec![Arc::new(local_web())]),
            slices: Arc::new(vec![Arc::new(web_slice(slice))]),
        }
    }

    fn tables(
        svcs: &[impl std::borrow::Borrow<Service>],
        slices: &[impl std::borrow::Borrow<EndpointSlice>],
    ) -> Tables {
        let svcs: Vec<Service> = svcs.iter().map(|s| s.borrow().clone()).collect();
        let slices: Vec<EndpointSlice> = slices.iter().map(|s| s.borrow().clone()).collect();
        Tables::from_model(&proxy_model("n1", &svcs, &slices))
    }

    /// Every table's listing, as fingerprints.
    fn listed() -> Vec<(String, Fingerprint)> {
        (0..SHARDS)
            .map(|i| {
                let v = twill_nft::list_table_json("inet", &table_name(i))
                    .expect("list")
                    .expect("the table exists");
                (table_name(i), Fingerprint::from_json(&v).expect("readable"))
            })
            .collect()
    }

    /// The manager against the kernel, in a namespace of its own: a full
    /// write first, then diffs only, nothing when nothing changes, drift
    /// found by the read-back and repaired whole; the UDP hook hears of an
    /// endpoint that went away.
    #[test]
    fn writes_whole_then_diffs_and_repairs_drift() {
        let ns = TestNs::new();
        ns.run(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let stale = Arc::new(std::sync::Mutex::new(Vec::new()));
                let seen = stale.clone();
                let (tx, rx) = watch::channel(Arc::new(Vec::new()));
                let hooks = Hooks {
                    on_stale_udp: Some(Arc::new(move |s| seen.lock().unwrap().extend(s))),
                    model: Some(tx),
                };
                let mut m = SvcProxy::new("n1", hooks);
                let two = inputs(TWO);
                let r = reconcile(&mut m, &two).await.expect("first pass");
                assert!(matches!(r, Applied::Full { .. }), "{r:?}");
                let want = tables(&two.services, &two.slices);
                assert_eq!(listed(), want.fingerprints());
                assert_eq!(
                    rx.borrow().len(),
                    2,
                    "the health-checked ports are published"
                );
                // Nothing changed: nothing written; a due read-back is
                // skipped while nothing was committed since our write.
                assert_eq!(reconcile(&mut m, &two).await.unwrap(), Applied::Nothing);
                m.read_due = true;
                assert_eq!(reconcile(&mut m, &two).await.unwrap(), Applied::Nothing);
                assert_eq!(m.reads, 0, "the generation did not move: no listing");
                // Someone writes another table: the tables are read, found
                // as applied, and the next due read is skipped again.
                twill_nft::apply_script("add table inet someone-else\n").unwrap();
                m.read_due = true;
                assert_eq!(reconcile(&mut m, &two).await.unwrap(), Applied::Nothing);
                assert_eq!(m.reads, 1);
                m.read_due = true;
                assert_eq!(reconcile(&mut m, &two).await.unwrap(), Applied::Nothing);
                assert_eq!(m.reads, 1);
                // An endpoint goes: a diff, and the UDP flows to it are stale.
                let one = inputs("- {addresses: [10.244.1.5], nodeName: n1}");
                let r = reconcile(&mut m, &one).await.unwrap();
                assert!(matches!(r, Applied::Incremental { .. }), "{r:?}");
                let want = tables(&one.services, &one.slices);
                assert_eq!(listed(), want.fingerprints());
                let gone = stale.lock().unwrap().clone();
                assert!(!gone.is_empty());
                assert!(gone.iter().all(|g| g.endpoint.to_string() == "10.244.2.5"));
                // Someone flushes a chain: found at the next read-back and
                // repaired by a full write.
                let web = table_name(shard_of("shop/web"));
                twill_nft::apply_script(&format!("flush chain inet {web} services\n")).unwrap();
                assert_ne!(listed(), want.fingerprints());
                assert_eq!(
                    reconcile(&mut m, &one).await.unwrap(),
                    Applied::Nothing,
                    "not read yet"
                );
                m.read_due = true;
                match reconcile(&mut m, &one).await.unwrap() {
                    Applied::Full { reason } => {
                        assert!(reason.contains("chain services has 0 rules"), "{reason}")
                    }
                    other => panic!("drift not repaired: {other:?}"),
                }
                assert_eq!(m.reads, 2, "the flush moved the generation");
                assert_eq!(listed(), want.fingerprints());
                // A table deleted: written whole again.
                twill_nft::apply_script(&format!("delete table inet {web}\n")).unwrap();
                m.read_due = true;
                let r = reconcile(&mut m, &one).await.unwrap();
                assert_eq!(
                    r,
                    Applied::Full {
                        reason: format!("the table inet {web} is missing")
                    }
                );
                assert_eq!(listed(), want.fingerprints());
                // An earlier version's single table: deleted by a full write.
                twill_nft::apply_script(&format!("add table inet {LEGACY_TABLE_NAME}\n")).unwrap();
                m.read_due = true;
                match reconcile(&mut m, &one).await.unwrap() {
                    Applied::Full { reason } => assert!(reason.contains("earlier"), "{reason}"),
                    other => panic!("legacy table kept: {other:?}"),
                }
                assert!(
                    twill_nft::list_table_json("inet", LEGACY_TABLE_NAME)
                        .unwrap()
                        .is_none()
                );
                // Off: the leftovers are deleted, once.
                assert!(remove_leftover().await.unwrap());
                assert!(!remove_leftover().await.unwrap());
                for i in 0..SHARDS {
                    assert!(
                        twill_nft::list_table_json("inet", &table_name(i))
                            .unwrap()
                            .is_none()
                    );
                }
            });
        });
    }

    /// The listing as a comparable value: every chain's rules (expressions
    /// as the kernel lists them, in order), every map's and set's
    /// elements; handles and the order of objects left out.
    fn canonical(v: &serde_json::Value) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for item in v["nftables"].as_array().expect("a listing") {
            if let Some(c) = item.get("chain") {
                let hook = format!("{}{}{}", c["type"], c["hook"], c["prio"]);
                out.entry(format!("chain {}", c["name"]))
                    .or_default()
                    .insert(0, hook);
            } else if let Some(r) = item.get("rule") {
                out.entry(format!("chain {}", r["chain"]))
                    .or_default()
                    .push(r["expr"].to_string());
            } else if let Some(m) = item.get("map").or_else(|| item.get("set")) {
                let mut elems: Vec<String> = m["elem"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| e.to_string())
                    .collect();
                elems.sort();
                elems.insert(0, format!("{}{}", m["type"], m["map"]));
                out.insert(format!("map {}", m["name"]), elems);
            }
        }
        out
    }

    fn listing() -> serde_json::Value {
        listing_of(&table_name(0))
    }

    fn listing_of(table: &str) -> serde_json::Value {
        twill_nft::list_table_json("inet", table)
            .expect("list")
            .expect("the table exists")
    }

    /// Every table's listing, canonical.
    fn all_listings() -> Vec<BTreeMap<String, Vec<String>>> {
        (0..SHARDS)
            .map(|i| canonical(&listing_of(&table_name(i))))
            .collect()
    }

    /// Diffs sent as netlink batches leave exactly what nft lists for the
    /// same table loaded whole: after each of a sequence of changes
    /// (endpoints moved, added, removed, all gone and back, Services added
    /// and removed, IPv4 and IPv6, node ports, LB and external addresses),
    /// every chain's expressions and every map element agree. A diff with
    /// session affinity goes as nft text and agrees too.
    #[test]
    fn netlink_diffs_leave_what_a_full_load_lists() {
        let v6 = svc("
apiVersion: v1
kind: Service
metadata: {name: v6, namespace: default}
spec:
  type: NodePort
  clusterIPs: ['fd00:96::20']
  ports: [{port: 443, protocol: UDP, nodePort: 30443}]
");
        let v6_slice = |eps: &str| {
            slice(&format!(
                "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: v6-1, namespace: default, labels: {{kubernetes.io/service-name: v6}}}}
addressType: IPv6
ports: [{{port: 8443, protocol: UDP}}]
endpoints: {eps}
"
            ))
        };
        let (base_svcs, base_slices) = synthetic::services(30, 3);
        let step = |extra_svcs: Vec<Service>,
                    extra_slices: Vec<EndpointSlice>,
                    edit: &dyn Fn(&mut Vec<EndpointSlice>)| {
            let mut svcs = base_svcs.clone();
            let mut slices = base_slices.clone();
            edit(&mut slices);
            svcs.extend(extra_svcs);
            slices.extend(extra_slices);
            tables(&svcs, &slices)
        };
        let moved = |sl: &mut Vec<EndpointSlice>| {
            sl[5].endpoints[0].addresses = vec!["10.244.127.200".into()];
        };
        let fewer = |sl: &mut Vec<EndpointSlice>| {
            moved(sl);
            sl[7].endpoints.truncate(1);
        };
        let none = |sl: &mut Vec<EndpointSlice>| {
            fewer(sl);
            sl[9].endpoints.clear();
            sl[10].endpoints.clear();
        };
        let more = |sl: &mut Vec<EndpointSlice>| {
            none(sl);
            let mut e = sl[7].endpoints[0].clone();
            e.addresses = vec!["10.244.127.201".into()];
            sl[7].endpoints.push(e.clone());
            e.addresses = vec!["10.244.127.202".into()];
            sl[7].endpoints.push(e);
        };
        let web = || (vec![svc(WEB), v6.clone()], vec![web_slice(TWO)]);
        let with_v6 = |eps: &str| {
            let (s, mut sl) = web();
            sl.push(v6_slice(eps));
            (s, sl)
        };
        let v6_two = "[{addresses: ['fd00:10:244::5'], nodeName: n1}, {addresses: ['fd00:10:244::6'], nodeName: n2}]";
        let v6_one = "[{addresses: ['fd00:10:244::6'], nodeName: n2}]";
        let mut aff = svc(WEB);
        aff.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
        let steps: Vec<(Tables, Via)> = vec![
            (step(vec![], vec![], &moved), Via::Netlink),
            (step(vec![], vec![], &fewer), Via::Netlink),
            (step(vec![], vec![], &none), Via::Netlink),
            (step(vec![], vec![], &more), Via::Netlink),
            {
                let (s, sl) = with_v6(v6_two);
                (step(s, sl, &more), Via::Netlink)
            },
            {
                let (s, sl) = with_v6(v6_one);
                (step(s, sl, &more), Via::Netlink)
            },
            {
                let (s, sl) = with_v6(v6_two);
                (step(s, sl, &|_| {}), Via::Netlink)
            },
            (step(vec![aff], vec![web_slice(TWO)], &|_| {}), Via::Script),
            (tables(&base_svcs[..12], &base_slices[..12]), Via::Script),
            (step(vec![], vec![], &|_| {}), Via::Netlink),
        ];
        let first = step(vec![], vec![], &|_| {});
        let incremental = TestNs::new();
        let whole = TestNs::new();
        let load = first.full_script();
        incremental.run(move || twill_nft::apply_script(&load).expect("first load"));
        let mut prev = first;
        for (i, (t, via)) in steps.into_iter().enumerate() {
            let ops = t.diff_ops(&prev);
            assert!(!ops.is_empty(), "step {i} changes something");
            if i == 0 {
                assert_eq!(ops.len(), 1, "one Service changed: one table touched");
            }
            let script: String = ops.iter().map(|(t, o)| render_ops(t, o)).collect();
            let got = incremental.run(move || {
                let via = apply_ops(&ops).unwrap_or_else(|e| panic!("step {i}: {e}\n{script}"));
                let fps: Vec<(String, Fingerprint)> = (0..SHARDS)
                    .map(|s| {
                        let l = listing_of(&table_name(s));
                        (table_name(s), Fingerprint::from_json(&l).expect("readable"))
                    })
                    .collect();
                (via, all_listings(), fps)
            });
            assert_eq!(got.0, via, "step {i}");
            let load = t.full_script();
            let want = whole.run(move || {
                twill_nft::apply_script(&load).expect("full load");
                all_listings()
            });
            assert_eq!(got.1, want, "step {i}");
            assert_eq!(got.2, t.fingerprints(), "step {i}");
            prev = t;
        }
    }

    /// A batch the kernel refuses changes nothing and names the step.
    #[test]
    fn a_refused_batch_changes_nothing_and_names_the_step() {
        let ns = TestNs::new();
        let t = synthetic::table(3, 2);
        let load = t.full_script(&table_name(0));
        ns.run(move || {
            twill_nft::apply_script(&load).expect("load");
            let before = listing();
            let ops = vec![(
                table_name(0),
                vec![
                    Op::AddChain {
                        name: "ep-new".into(),
                        hook: None,
                    },
                    Op::AddElements {
                        map: "svc4".into(),
                        elems: vec![("10.99.0.1 . tcp . 80".into(), "goto ep-new".into())],
                    },
                    Op::AddRule {
                        chain: "no-such-chain".into(),
                        rule: "goto ep-new".into(),
                    },
                ],
            )];
            match apply_ops(&ops) {
                Err(SvcError::Netlink(nfnl::NfnlError::Refused { what, reason })) => {
                    assert!(what.contains("no-such-chain"), "{what}");
                    assert!(reason.contains("No such file"), "{reason}");
                }
                other => panic!("not refused: {other:?}"),
            }
            assert_eq!(canonical(&listing()), canonical(&before));
            // The same batch without the bad rule goes in.
            let mut good = ops.clone();
            good[0].1.truncate(2);
            assert_eq!(apply_ops(&good).unwrap(), Via::Netlink);
            let after = listing();
            assert!(after.to_string().contains("10.99.0.1"), "{after}");
        });
    }
}
