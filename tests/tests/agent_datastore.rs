//! twill-node towards its datastore, in-process on the embedded store with
//! a thin wrapper around the backend that counts every request and can
//! make one kind's watch fail the way a cluster without that CRD does
//! (404). The agent runs exactly as `twill-node` does
//! (`agent::start_enforcing`), on a thread inside a network namespace of
//! the test's own, with real nft and a real pod namespace.
//!
//! What a user would notice is asserted, in one sequence (readiness is per
//! process):
//! 1. a kind whose watch fails makes `/readyz` and NodeStatus not ready,
//!    naming the kind and the error, and a CNI ADD fails saying the
//!    datastore watch is failing — not "is nft installed?";
//! 2. once the kind answers, the node gets ready by itself and the same
//!    ADD succeeds;
//! 3. objects that reached the store invalid (written past validation) are
//!    listed in NodeStatus with kind, name and reason, an invalid policy
//!    makes the node not ready, `twillctl get` marks them INVALID, and
//!    deleting them clears all of it;
//! 4. at idle the agent's request rate is measured per verb and kind: the
//!    status report costs one write per interval and nothing is listed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{self, BoxStream, StreamExt};
use serde_json::{Value, json};
use twill_api::resources::{NodeStatus, NodeStatusReport};
use twill_api::store::embedded::EmbeddedStore;
use twill_api::store::{Backend, Listing, ObjectKey};
use twill_api::{Kind, Store, StoreError, WatchEvent};
use twill_cni::protocol::{Command, Request as CniRequest, Response as CniResponse};
use twill_felix::agent::{AgentConfig, start_enforcing};
use twill_felix::health;
use twill_tests::{Netns, bins, require_binary, require_root, wait_until};

const NODE: &str = "ds-node-1";
const NODE_ADDR: &str = "172.31.78.10/24";
const NODE_CIDR: &str = "172.31.78.0/24";
const STATUS_INTERVAL: Duration = Duration::from_secs(2);

/// Every request: when, verb, kind.
type Calls = Arc<Mutex<Vec<(Instant, &'static str, Kind)>>>;

/// The embedded backend, counting requests; `missing` makes the
/// GlobalNetworkPolicy resource answer 404 as if its CRD were not installed.
struct Counting {
    inner: EmbeddedStore,
    missing: Arc<AtomicBool>,
    calls: Calls,
}

impl Counting {
    fn note(&self, verb: &'static str, kind: Kind) -> Result<(), StoreError> {
        self.calls
            .lock()
            .unwrap()
            .push((Instant::now(), verb, kind));
        if kind == Kind::GlobalNetworkPolicy && self.missing.load(Ordering::SeqCst) {
            return Err(StoreError::Backend {
                backend: "kubernetes",
                message: "watch globalnetworkpolicies: the API server has no resource globalnetworkpolicies.twill.dev (is the CRD installed?): 404 page not found".into(),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Backend for Counting {
    fn name(&self) -> &'static str {
        "embedded"
    }
    async fn get(&self, kind: Kind, key: &ObjectKey) -> Result<Option<Value>, StoreError> {
        self.note("get", kind)?;
        self.inner.get(kind, key).await
    }
    async fn list(&self, kind: Kind, ns: Option<&str>) -> Result<Listing<Value>, StoreError> {
        self.note("list", kind)?;
        self.inner.list(kind, ns).await
    }
    async fn create(&self, kind: Kind, obj: Value) -> Result<Value, StoreError> {
        self.note("create", kind)?;
        self.inner.create(kind, obj).await
    }
    async fn update(&self, kind: Kind, obj: Value) -> Result<Value, StoreError> {
        self.note("update", kind)?;
        self.inner.update(kind, obj).await
    }
    async fn update_status(&self, kind: Kind, obj: Value) -> Result<Value, StoreError> {
        self.note("update-status", kind)?;
        self.inner.update_status(kind, obj).await
    }
    async fn delete(
        &self,
        kind: Kind,
        key: &ObjectKey,
        rev: Option<&str>,
    ) -> Result<(), StoreError> {
        self.note("delete", kind)?;
        self.inner.delete(kind, key, rev).await
    }
    fn watch(
        &self,
        kind: Kind,
        from: Option<String>,
    ) -> BoxStream<'static, Result<WatchEvent<Value>, StoreError>> {
        match self.note("watch", kind) {
            Err(e) => stream::iter([Err(e)]).boxed(),
            Ok(()) => self.inner.watch(kind, from),
        }
    }
}

fn cni(socket: &Path, req: &CniRequest) -> CniResponse {
    let mut s = UnixStream::connect(socket).expect("connect to the CNI socket");
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    let mut line = serde_json::to_vec(req).unwrap();
    line.push(b'\n');
    s.write_all(&line).unwrap();
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

fn add(container: &str, pod_ns: &Netns, pod: &str) -> CniRequest {
    CniRequest {
        command: Command::Add,
        container_id: container.into(),
        netns: format!("/run/netns/{}", pod_ns.name()),
        ifname: "eth0".into(),
        args: BTreeMap::from([
            ("K8S_POD_NAMESPACE".to_string(), "default".to_string()),
            ("K8S_POD_NAME".to_string(), pod.to_string()),
        ]),
        config: json!({"cniVersion": "1.1.0", "name": "twill", "type": "twill-cni"}),
    }
}

/// The NodeStatus report as stored.
fn report(emb: &EmbeddedStore, rt: &tokio::runtime::Runtime) -> Option<NodeStatusReport> {
    let store = Store::new(emb.clone());
    rt.block_on(store.get::<NodeStatus>(None, NODE))
        .ok()
        .flatten()
        .and_then(|n| n.status)
}

fn condition(r: &NodeStatusReport, name: &str) -> Option<(bool, String)> {
    r.conditions
        .iter()
        .find(|c| c.name == name)
        .map(|c| (c.ready, c.reason.clone()))
}

#[test]
fn the_agent_tells_the_truth_about_its_datastore() {
    require_root();
    require_binary("nft", "nftables");
    let twillctl = bins::binary("twillctl");
    let ns = Netns::new("tds");
    ns.ip(&[
        "link",
        "add",
        "uplink",
        "type",
        "veth",
        "peer",
        "name",
        "uplink-peer",
    ]);
    ns.ip(&["addr", "add", NODE_ADDR, "dev", "uplink"]);
    ns.ip(&["link", "set", "uplink", "up"]);
    ns.ip(&["link", "set", "uplink-peer", "up"]);
    let pod_ns = Netns::new("tdp");
    let pod_ns2 = Netns::new("tdq");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let socket = dir.path().join("cni.sock");
    let emb = EmbeddedStore::open(&db).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    {
        let store = Store::new(emb.clone());
        let pool = json!({"apiVersion": "twill.dev/v1", "kind": "IPPool",
            "metadata": {"name": "pods"}, "spec": {"cidr": "10.245.0.0/16"}});
        rt.block_on(store.create_value(Kind::IPPool, pool)).unwrap();
    }

    let missing = Arc::new(AtomicBool::new(true));
    let calls: Calls = Arc::new(Mutex::new(Vec::new()));
    let backend = Counting {
        inner: emb.clone(),
        missing: missing.clone(),
        calls: calls.clone(),
    };
    let readiness = health::global().clone();
    readiness.register(health::DATAPLANE, "endpoints are not reconciled yet");
    let (started_tx, started_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cfg_dir = dir.path().to_path_buf();
    let agent_thread = twill_tests::netns::spawn_in(ns.name(), move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let cfg = AgentConfig {
                node_name: NODE.into(),
                store: Store::new(backend),
                cni_socket: cfg_dir.join("cni.sock"),
                state_dir: cfg_dir.join("state"),
                mtu: None,
                register_node: Some(BTreeMap::new()),
                status_interval: STATUS_INTERVAL,
                status_heartbeat: STATUS_INTERVAL,
                block_grace: Duration::from_secs(240),
                route_resync: Duration::from_secs(30),
                node_address: Some(NODE_CIDR.parse().unwrap()),
                bgp_settle: Duration::from_secs(2),
                service_proxy: twill_felix::dataplane::services::Mode::Off,
            };
            match start_enforcing(cfg).await {
                Ok(node) => {
                    started_tx.send(Ok(())).unwrap();
                    let _ = stop_rx.await;
                    drop(node);
                }
                Err(e) => started_tx.send(Err(format!("{e:#}"))).unwrap(),
            }
        });
        rt.shutdown_timeout(Duration::from_secs(5));
    });
    // Stops the agent thread however the test ends.
    struct Stop(
        Option<tokio::sync::oneshot::Sender<()>>,
        Option<std::thread::JoinHandle<()>>,
    );
    impl Drop for Stop {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
            if let Some(t) = self.1.take() {
                let _ = t.join();
            }
        }
    }
    let _stop = Stop(Some(stop_tx), Some(agent_thread));
    match started_rx.recv_timeout(Duration::from_secs(120)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("twill-node did not start: {e}"),
        Err(e) => panic!("twill-node start-up did not finish: {e}"),
    }

    // 1. The GlobalNetworkPolicy resource is missing.
    let not_ready = || {
        let r = health::readyz(&readiness.snapshot());
        (r.status, r.body)
    };
    assert!(
        wait_until(Duration::from_secs(20), || {
            let (status, body) = not_ready();
            status == 503
                && body.contains(
                    "[-]datastore: the watch of globalnetworkpolicies has been failing since",
                )
                && body.contains("404 page not found")
        }),
        "/readyz does not name the failing kind: {:?}",
        not_ready()
    );
    assert!(
        wait_until(Duration::from_secs(20), || report(&emb, &rt).is_some_and(
            |r| {
                !r.ready
                    && condition(&r, "datastore").is_some_and(|(ok, why)| {
                        !ok && why.contains("globalnetworkpolicies") && why.contains("CRD")
                    })
            }
        )),
        "NodeStatus does not say the datastore is not ready and why: {:?}",
        report(&emb, &rt)
    );
    let started = Instant::now();
    let failed = cni(&socket, &add("c0ffee01", &pod_ns, "web-1"));
    let msg = match failed {
        CniResponse::Err(e) => e.msg.clone() + " " + &e.details,
        other => panic!("CNI ADD succeeded with policy unknown: {other:?}"),
    };
    assert!(
        msg.contains("the datastore is not ready")
            && msg.contains("globalnetworkpolicies")
            && !msg.contains("is nft installed"),
        "the CNI error does not name the real cause: {msg}"
    );
    eprintln!("CNI ADD refused after {:?}: {msg}", started.elapsed());

    // 2. The CRD appears: the watch recovers on its own (backoff ≤ 30 s).
    missing.store(false, Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(45), || readiness.is_ready()),
        "not ready after the kind came back: {:?}",
        not_ready()
    );
    match cni(&socket, &add("c0ffee02", &pod_ns2, "web-2")) {
        CniResponse::Ok(Some(_)) => {}
        other => panic!("CNI ADD failed after recovery: {other:?}"),
    }
    assert!(
        wait_until(Duration::from_secs(20), || report(&emb, &rt).is_some_and(
            |r| r.ready && condition(&r, "datastore") == Some((true, String::new()))
        )),
        "NodeStatus not ready after recovery: {:?}",
        report(&emb, &rt)
    );

    // 3. Invalid objects written past validation (a direct etcd write).
    let bad_pool = json!({"apiVersion": "twill.dev/v1", "kind": "IPPool",
        "metadata": {"name": "bad-pool"}, "spec": {"cidr": "10.300.0.0/16"}});
    let bad_gnp = json!({"apiVersion": "twill.dev/v1", "kind": "GlobalNetworkPolicy",
        "metadata": {"name": "bad-selector"}, "spec": {"selector": "app == 'web"}});
    rt.block_on(emb.create(Kind::IPPool, bad_pool)).unwrap();
    rt.block_on(emb.create(Kind::GlobalNetworkPolicy, bad_gnp))
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || report(&emb, &rt).is_some_and(
            |r| {
                let names: Vec<(&str, &str)> = r
                    .invalid_objects
                    .iter()
                    .map(|i| (i.kind.as_str(), i.name.as_str()))
                    .collect();
                names.contains(&("IPPool", "bad-pool"))
                    && names.contains(&("GlobalNetworkPolicy", "bad-selector"))
                    && r.invalid_objects.iter().all(|i| !i.reason.is_empty())
                    && !r.ready
            }
        )),
        "NodeStatus does not list the invalid objects: {:?}",
        report(&emb, &rt)
    );
    let (_, body) = not_ready();
    assert!(
        body.contains("[-]policy-objects: GlobalNetworkPolicy bad-selector is invalid and not enforced: spec.selector"),
        "{body}"
    );
    assert!(
        !body.contains("bad-pool"),
        "an invalid pool is reported, not a readiness failure: {body}"
    );
    let get = std::process::Command::new(&twillctl)
        .args(["get", "ippools"])
        .env("TWILL_DATASTORE_PATH", &db)
        .env_remove("TWILL_DATASTORE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&get.stderr);
    let stdout = String::from_utf8_lossy(&get.stdout);
    assert!(get.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: INVALID IPPool \"bad-pool\": spec.cidr")
            && !stderr.contains("\"pods\""),
        "twillctl get does not mark the invalid pool (only it): {stderr}"
    );
    assert!(
        stdout.contains("bad-pool") && stdout.contains("pods"),
        "{stdout}"
    );
    rt.block_on(emb.delete(Kind::IPPool, &ObjectKey::new(None, "bad-pool"), None))
        .unwrap();
    rt.block_on(emb.delete(
        Kind::GlobalNetworkPolicy,
        &ObjectKey::new(None, "bad-selector"),
        None,
    ))
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || report(&emb, &rt)
            .is_some_and(|r| r.invalid_objects.is_empty() && r.ready)),
        "deleting the invalid objects did not clear them: {:?}",
        report(&emb, &rt)
    );

    // 4. Idle: what the agent asks the datastore for, per minute.
    std::thread::sleep(Duration::from_secs(3));
    let from = Instant::now();
    let window = Duration::from_secs(30);
    std::thread::sleep(window);
    let mut per_kind: BTreeMap<(&str, String), u32> = BTreeMap::new();
    for (t, verb, kind) in calls.lock().unwrap().iter() {
        if *t >= from && *t < from + window {
            *per_kind.entry((*verb, kind.plural())).or_default() += 1;
        }
    }
    let total: u32 = per_kind.values().sum();
    eprintln!(
        "idle requests in {window:?} (status interval {STATUS_INTERVAL:?}): {total} ({:.1}/min): {per_kind:?}",
        f64::from(total) * 60.0 / window.as_secs_f64()
    );
    let n = |verb: &str, kind: &str| {
        per_kind
            .get(&(verb, kind.to_string()))
            .copied()
            .unwrap_or(0)
    };
    let reports = window.as_secs() / STATUS_INTERVAL.as_secs();
    let writes = u64::from(n("update-status", "nodestatuses"));
    assert!(
        writes + 2 >= reports && writes <= reports + 1,
        "one status write per interval: {per_kind:?}"
    );
    assert_eq!(
        n("get", "nodestatuses"),
        0,
        "the status object is not read back each time: {per_kind:?}"
    );
    // Neither the status report nor the empty-block release lists blocks.
    assert_eq!(
        n("list", "ipamblocks"),
        0,
        "IPAM blocks listed at idle: {per_kind:?}"
    );
    assert_eq!(
        u64::from(total),
        writes,
        "only the status writes at idle: {per_kind:?}"
    );
    assert_eq!(n("watch", "globalnetworkpolicies"), 0, "{per_kind:?}");
}
