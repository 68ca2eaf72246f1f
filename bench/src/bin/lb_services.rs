//! LoadBalancer Services at scale, on a real `twillctl lab` (3 twill-node
//! agents on one embedded store, BIRD ToR), issue 12 item 7 (root).
//!
//! Each repetition is a fresh lab with an LB pool announced through
//! `serviceLoadBalancerIPs`:
//! 1. N LoadBalancer Services (Cluster policy) created back to back through
//!    `twill_api` (`Store::create_value`, what `twillctl apply` does); the
//!    bench's own Service watch timestamps when each gets its address, and
//!    `birdc show route` polled every 100 ms when each /32 is at the ToR
//!    (first path, and a path from every node).
//! 2. A Local-policy Service whose one ready endpoint moves from node to
//!    node (EndpointSlice update): time until BIRD's next hops for its /32
//!    are exactly the new node (`birdc show route PREFIX`, polled every 10 ms);
//!    once before the N Services exist and once (another Service) with all
//!    N present, after the burst.
//! 3. Each agent's CPU (utime+stime from /proc) over an idle window with 0
//!    and with N Services and while the N were being served; VmRSS with 0
//!    and N.
//!
//! A floor (full runs only): BIRD itself announcing N static /32s over
//! eBGP to the same ToR, timed the same way.
//!
//! `lb_services [--short] [--services N] [--reps R] [--moves M] [--idle S]
//! [--out DIR]`; `--short` (20 Services, 1 repetition, 5 moves, no floor) is
//! what `bench/tests/lb_services.rs` runs. Writes `lb_services.{json,md}`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};
use twill_api::store::embedded::EmbeddedStore;
use twill_api::{Kind, Store, WatchEvent};
use twill_bench::bgp_lab::proc_usage;
use twill_bench::{Spread, machine, table};
use twill_tests::lab::Lab;
use twill_tests::peers::{Flavor, Peer};
use twill_tests::{Netns, require_binary, require_root};

const NODES: usize = 3;
const LB_POOL: &str = "10.251.0.0/20";
const NAMESPACE: &str = "default";
const TOR_POLL: Duration = Duration::from_millis(100);
const MOVE_POLL: Duration = Duration::from_millis(10);

struct Args {
    services: usize,
    reps: usize,
    moves: usize,
    idle: Duration,
    short: bool,
    out: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        services: 1000,
        reps: 5,
        moves: 20,
        idle: Duration::from_secs(20),
        short: false,
        out: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/results")),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |what: &str| it.next().with_context(|| format!("{what} needs a value"));
        match arg.as_str() {
            "--short" => {
                a.short = true;
                a.services = 20;
                a.reps = 1;
                a.moves = 5;
                a.idle = Duration::from_secs(3);
            }
            "--services" => a.services = val("--services")?.parse()?,
            "--reps" => a.reps = val("--reps")?.parse()?,
            "--moves" => a.moves = val("--moves")?.parse()?,
            "--idle" => a.idle = Duration::from_secs(val("--idle")?.parse()?),
            "--out" => a.out = PathBuf::from(val("--out")?),
            other => bail!("unknown argument {other:?}"),
        }
    }
    if a.services == 0 || a.reps == 0 || a.services > 4000 {
        bail!("--services must be 1..=4000 (the pool's size) and --reps at least 1");
    }
    Ok(a)
}

/// BIRD's `show route` → prefix → next hops (`unicast` routes with a `via`).
fn next_hops(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // The prefix of the lines being read, and whether the current path is usable.
    let mut prefix: Option<String> = None;
    let mut usable = false;
    for l in text.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() >= 2 && w[0].contains('/') {
            prefix = Some(w[0].to_string());
            usable = w[1] == "unicast";
        } else if w.len() >= 2 && w[1].starts_with('[') {
            // A further path of the same prefix: `unicast [n2 …]`.
            usable = w[0] == "unicast";
        } else if w.first() == Some(&"via")
            && usable
            && let (Some(p), Some(nh)) = (&prefix, w.get(1))
        {
            out.entry(p.clone()).or_default().insert(nh.to_string());
        }
    }
    out
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One agent's CPU seconds and VmRSS (KiB) at one moment.
#[derive(Clone, Copy, Debug)]
struct Usage {
    cpu_s: f64,
    rss_kib: u64,
    at: Instant,
}

fn usage(pid: i32) -> Result<Usage> {
    let (_, rss_kib, cpu_s) = proc_usage(pid)?;
    Ok(Usage {
        cpu_s,
        rss_kib,
        at: Instant::now(),
    })
}

/// Percent of one core between two readings.
fn pct(a: &Usage, b: &Usage) -> f64 {
    (b.cpu_s - a.cpu_s) / (b.at - a.at).as_secs_f64().max(1e-9) * 100.0
}

#[derive(Debug, Default)]
struct Agent {
    node: String,
    idle0_pct: f64,
    rss0_kib: u64,
    busy_cpu_s: f64,
    busy_pct: f64,
    idle_n_pct: f64,
    rss_n_kib: u64,
}

#[derive(Debug, Default)]
struct Move {
    /// Slice written → the new node's path at the ToR.
    present_ms: Option<f64>,
    /// → the old node's path gone.
    gone_ms: Option<f64>,
    /// → the ToR's next hops are exactly the new node.
    exact_ms: Option<f64>,
}

#[derive(Debug, Default)]
struct Rep {
    load_start: String,
    load_end: String,
    create_s: f64,
    all_allocated_s: Option<f64>,
    all_tor_first_s: Option<f64>,
    all_tor_every_s: Option<f64>,
    allocated_ms: Vec<f64>,
    tor_first_ms: Vec<f64>,
    tor_every_ms: Vec<f64>,
    agents: Vec<Agent>,
    moves: Vec<Move>,
    /// The same, with the N Services present (after the burst).
    moves_n: Vec<Move>,
    /// One Service created after the N are at the ToR → allocated.
    late_allocated_s: Option<f64>,
    floor: Option<Floor>,
}

/// BIRD announcing N static /32s to the same ToR over one eBGP session.
#[derive(Debug, Default)]
struct Floor {
    /// `birdc enable` → every /32 at the ToR.
    all_s: Option<f64>,
    /// Per route: `birdc enable` → at the ToR.
    per_route_ms: Vec<f64>,
}

fn service_yaml(i: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i:04}"), "namespace": NAMESPACE},
        "spec": {
            "type": "LoadBalancer", "externalTrafficPolicy": "Cluster",
            "selector": {"app": format!("a{i}")},
            "ports": [{"port": 80, "protocol": "TCP"}],
        }
    })
}

fn lb_ip(s: &Service) -> Option<String> {
    s.status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .first()?
        .ip
        .clone()
}

/// The lab's nodes as (name, address, twill-node PID).
fn nodes(lab: &Lab) -> Result<Vec<(String, String, i32)>> {
    let st = lab.state();
    let mut out = Vec::new();
    for n in st["plan"]["nodes"].as_array().into_iter().flatten() {
        let name = n["name"].as_str().context("node name")?.to_string();
        let addr = n["addr"].as_str().context("node addr")?.to_string();
        let what = format!("twill-node {name}");
        let pid = st["processes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["what"].as_str() == Some(what.as_str()))
            .filter_map(|p| p["pid"].as_i64())
            .next_back()
            .with_context(|| format!("no PID for {what} in lab.json"))?;
        out.push((name, addr, pid as i32));
    }
    if out.len() != NODES {
        bail!("lab has {} nodes, want {NODES}", out.len());
    }
    Ok(out)
}

/// Polls BIRD's whole table until `stop`: when each prefix first had a
/// path, and when it first had one from each of `want` next hops.
struct TorPoller {
    stop: Arc<AtomicBool>,
    first: Arc<Mutex<HashMap<String, Instant>>>,
    every: Arc<Mutex<HashMap<String, Instant>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TorPoller {
    fn start(tor: Peer, want: usize) -> TorPoller {
        let stop = Arc::new(AtomicBool::new(false));
        let first: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
        let every: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
        let (s, f, e) = (stop.clone(), first.clone(), every.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let text = tor.cli(&["show", "route"]);
                // When BIRD had answered: a route shown was there by then.
                let now = Instant::now();
                let hops = next_hops(&text);
                if let (Ok(mut f), Ok(mut e)) = (f.lock(), e.lock()) {
                    for (p, nh) in hops {
                        f.entry(p.clone()).or_insert(now);
                        if nh.len() >= want {
                            e.entry(p).or_insert(now);
                        }
                    }
                }
                std::thread::sleep(TOR_POLL);
            }
        });
        TorPoller {
            stop,
            first,
            every,
            thread: Some(thread),
        }
    }

    fn counts(&self, prefixes: &BTreeSet<String>) -> (usize, usize) {
        let f = self.first.lock().map(|m| m.clone()).unwrap_or_default();
        let e = self.every.lock().map(|m| m.clone()).unwrap_or_default();
        (
            prefixes.iter().filter(|p| f.contains_key(*p)).count(),
            prefixes.iter().filter(|p| e.contains_key(*p)).count(),
        )
    }
}

impl Drop for TorPoller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn apply(store: &Store, kind: Kind, v: Value) -> Result<()> {
    store
        .create_value(kind, v.clone())
        .await
        .with_context(|| format!("create {v}"))?;
    Ok(())
}

fn route_of(tor: &Peer, prefix: &str) -> BTreeSet<String> {
    next_hops(&tor.cli(&["show", "route", prefix]))
        .remove(prefix)
        .unwrap_or_default()
}

async fn one_rep(a: &Args, rep: usize, work: &Path) -> Result<Rep> {
    let mut r = Rep {
        load_start: loadavg(),
        ..Default::default()
    };
    let topo = work.join(format!("lb{rep}.yaml"));
    std::fs::write(&topo, "tor: bird\npodsPerNode: 0\n")?;
    let lab = Lab::up(&[
        "--nodes",
        &NODES.to_string(),
        "--topology",
        topo.to_str().context("utf-8")?,
    ]);
    if !lab.up_ok {
        bail!("lab up failed:\n{}", lab.up_output);
    }
    let nodes = nodes(&lab)?;
    let tor = lab.tor(Flavor::Bird);
    let store = Store::new(EmbeddedStore::open(lab.dir.join("twill.db"))?);
    apply(
        &store,
        Kind::IPPool,
        json!({"apiVersion": "twill.dev/v1", "kind": "IPPool", "metadata": {"name": "lb"},
               "spec": {"cidr": LB_POOL, "allowedUses": ["LoadBalancer"]}}),
    )
    .await?;
    let out = lab.twillctl(&[
        "patch",
        "bgpconfiguration",
        "default",
        "-p",
        &format!(r#"{{"spec":{{"serviceLoadBalancerIPs":[{{"cidr":"{LB_POOL}"}}]}}}}"#),
    ]);
    if !out.status.success() {
        bail!("patch: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Every node's session to the ToR up before anything is timed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tor
        .cli(&["show", "protocols"])
        .matches("Established")
        .count()
        < NODES
    {
        if Instant::now() > deadline {
            bail!("ToR sessions not up:\n{}", tor.sessions());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 3. idle, no Services.
    let u0: Vec<Usage> = nodes.iter().map(|n| usage(n.2)).collect::<Result<_>>()?;
    tokio::time::sleep(a.idle).await;
    let u1: Vec<Usage> = nodes.iter().map(|n| usage(n.2)).collect::<Result<_>>()?;

    // 2. Endpoint moves, with no other Service (again with the N, below).
    r.moves = moves(a, &store, &tor, &nodes, "mover", 200).await?;

    // 1. N Services at once.
    let allocated: Arc<Mutex<HashMap<String, (Instant, String)>>> = Default::default();
    let mut watch = store.watch::<Service>(None);
    let alloc2 = allocated.clone();
    let want = a.services;
    let watcher = tokio::spawn(async move {
        while let Some(ev) = watch.next().await {
            let now = Instant::now();
            let items = match ev {
                Ok(WatchEvent::Applied(s)) => vec![s],
                Ok(WatchEvent::Resync { items, .. }) => items,
                Ok(WatchEvent::Deleted(_)) => continue,
                Err(e) => {
                    eprintln!("  Service watch: {e}");
                    return;
                }
            };
            let Ok(mut m) = alloc2.lock() else { return };
            for s in items {
                let (Some(name), Some(ip)) = (s.metadata.name.clone(), lb_ip(&s)) else {
                    continue;
                };
                if name.starts_with("svc-") {
                    m.entry(name).or_insert((now, ip));
                }
            }
            if m.len() >= want {
                return;
            }
        }
    });
    let poller = TorPoller::start(lab.tor(Flavor::Bird), NODES);
    let mut created: Vec<(String, Instant)> = Vec::with_capacity(a.services);
    let t0 = Instant::now();
    for i in 0..a.services {
        let at = Instant::now();
        apply(&store, Kind::Service, service_yaml(i)).await?;
        created.push((format!("svc-{i:04}"), at));
    }
    r.create_s = t0.elapsed().as_secs_f64();
    eprintln!(
        "  rep {rep}: {} Services created in {:.2} s",
        a.services, r.create_s
    );
    let timeout = Duration::from_secs(60 + a.services as u64 * 2);
    let mut last_print = Instant::now();
    loop {
        let got = allocated.lock().map(|m| m.len()).unwrap_or(0);
        if got >= a.services && r.all_allocated_s.is_none() {
            let last = allocated
                .lock()
                .ok()
                .and_then(|m| m.values().map(|v| v.0).max());
            r.all_allocated_s = last.map(|l| (l - t0).as_secs_f64());
        }
        let prefixes: BTreeSet<String> = allocated
            .lock()
            .map(|m| m.values().map(|v| format!("{}/32", v.1)).collect())
            .unwrap_or_default();
        let (first, every) = poller.counts(&prefixes);
        if got >= a.services && every >= a.services {
            break;
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  rep {rep}: {:.0} s: {got} allocated, {first} at the ToR, {every} from every node (load {})",
                t0.elapsed().as_secs_f64(),
                loadavg()
            );
            last_print = Instant::now();
        }
        if t0.elapsed() > timeout {
            eprintln!("  rep {rep}: gave up after {timeout:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let u2: Vec<Usage> = nodes.iter().map(|n| usage(n.2)).collect::<Result<_>>()?;
    let tor_first = poller.first.lock().map(|m| m.clone()).unwrap_or_default();
    let tor_every = poller.every.lock().map(|m| m.clone()).unwrap_or_default();
    drop(poller);
    watcher.abort();
    let alloc = allocated.lock().map(|m| m.clone()).unwrap_or_default();
    let mut last_first: Option<Instant> = None;
    let mut last_every: Option<Instant> = None;
    let (mut missing_first, mut missing_every) = (0, 0);
    for (name, at) in &created {
        let Some((when, ip)) = alloc.get(name) else {
            continue;
        };
        r.allocated_ms.push(ms(when.saturating_duration_since(*at)));
        let p = format!("{ip}/32");
        match tor_first.get(&p) {
            Some(t) => {
                r.tor_first_ms.push(ms(t.saturating_duration_since(*at)));
                last_first = last_first.max(Some(*t));
            }
            None => missing_first += 1,
        }
        match tor_every.get(&p) {
            Some(t) => {
                r.tor_every_ms.push(ms(t.saturating_duration_since(*at)));
                last_every = last_every.max(Some(*t));
            }
            None => missing_every += 1,
        }
    }
    if missing_first == 0 && alloc.len() >= a.services {
        r.all_tor_first_s = last_first.map(|t| (t - t0).as_secs_f64());
    }
    if missing_every == 0 && alloc.len() >= a.services {
        r.all_tor_every_s = last_every.map(|t| (t - t0).as_secs_f64());
    }

    // One more Service once the N are at the ToR: how long the allocators'
    // backlog keeps a new Service waiting.
    let late_at = Instant::now();
    apply(&store, Kind::Service, service_yaml(9999)).await?;
    let deadline = late_at + Duration::from_secs(900);
    loop {
        if let Some(s) = store.get::<Service>(Some(NAMESPACE), "svc-9999").await?
            && lb_ip(&s).is_some()
        {
            r.late_allocated_s = Some(late_at.elapsed().as_secs_f64());
            break;
        }
        if Instant::now() > deadline {
            eprintln!("  rep {rep}: the late Service got no address in 900 s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "  rep {rep}: late Service allocated after {:?} s",
        r.late_allocated_s
    );

    // 2. Endpoint moves again, with the N Services present.
    r.moves_n = moves(a, &store, &tor, &nodes, "mover-n", 201).await?;

    // 3. idle again, with the N Services.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let u3: Vec<Usage> = nodes.iter().map(|n| usage(n.2)).collect::<Result<_>>()?;
    tokio::time::sleep(a.idle).await;
    let u4: Vec<Usage> = nodes.iter().map(|n| usage(n.2)).collect::<Result<_>>()?;
    for (i, n) in nodes.iter().enumerate() {
        r.agents.push(Agent {
            node: n.0.clone(),
            idle0_pct: pct(&u0[i], &u1[i]),
            rss0_kib: u1[i].rss_kib,
            busy_cpu_s: u2[i].cpu_s - u1[i].cpu_s,
            busy_pct: pct(&u1[i], &u2[i]),
            idle_n_pct: pct(&u3[i], &u4[i]),
            rss_n_kib: u4[i].rss_kib,
        });
    }

    r.load_end = loadavg();
    for (n, _, pid) in &nodes {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            bail!(
                "twill-node {n} (PID {pid}) died during the run; see {}",
                lab.dir.join(n).join("twill-node.log").display()
            );
        }
    }
    if !a.short {
        r.floor = Some(floor(a, &lab, &tor, work, rep)?);
    }
    drop(lab);
    Ok(r)
}

/// The EndpointSlice `<svc>-1` of Service `svc`: one ready endpoint on `node`.
fn slice(svc: &str, node: &str, addr: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{svc}-1"), "namespace": NAMESPACE,
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"port": 80, "protocol": "TCP"}],
        "endpoints": [{"addresses": [addr], "conditions": {"ready": true}, "nodeName": node}],
    })
}

/// A Local-policy Service `name` whose one ready endpoint (in
/// 10.244.`net`.0/24) moves round the nodes.
async fn moves(
    a: &Args,
    store: &Store,
    tor: &Peer,
    nodes: &[(String, String, i32)],
    name: &str,
    net: u8,
) -> Result<Vec<Move>> {
    apply(
        store,
        Kind::Service,
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": NAMESPACE},
               "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                        "selector": {"app": name}, "ports": [{"port": 80, "protocol": "TCP"}]}}),
    )
    .await?;
    apply(
        store,
        Kind::EndpointSlice,
        slice(name, &nodes[0].0, &format!("10.244.{net}.1")),
    )
    .await?;
    let slice_name = format!("{name}-1");
    let deadline = Instant::now() + Duration::from_secs(60);
    let ip = loop {
        if let Some(s) = store.get::<Service>(Some(NAMESPACE), name).await?
            && let Some(ip) = lb_ip(&s)
        {
            break ip;
        }
        if Instant::now() > deadline {
            bail!("the Local Service {name} got no address in 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let prefix = format!("{ip}/32");
    let only = |n: &str| -> BTreeSet<String> { [n.to_string()].into() };
    let deadline = Instant::now() + Duration::from_secs(30);
    while route_of(tor, &prefix) != only(&nodes[0].1) {
        if Instant::now() > deadline {
            bail!(
                "{prefix} never reached the ToR via {} only:\n{}",
                nodes[0].1,
                tor.route(&prefix)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut out = Vec::new();
    for m in 0..a.moves {
        let from = &nodes[m % NODES];
        let to = &nodes[(m + 1) % NODES];
        let mut s: EndpointSlice = store
            .get(Some(NAMESPACE), &slice_name)
            .await?
            .with_context(|| format!("{slice_name} is gone"))?;
        let fresh: EndpointSlice = serde_json::from_value(slice(
            name,
            &to.0,
            &format!("10.244.{net}.{}", 1 + (m + 1) % 200),
        ))?;
        s.endpoints = fresh.endpoints;
        let t0 = Instant::now();
        store
            .update(&s)
            .await
            .with_context(|| format!("update {slice_name}"))?;
        let mut mv = Move::default();
        let deadline = t0 + Duration::from_secs(10);
        while Instant::now() < deadline {
            let hops = route_of(tor, &prefix);
            let now = Instant::now();
            if mv.present_ms.is_none() && hops.contains(&to.1) {
                mv.present_ms = Some(ms(now - t0));
            }
            if mv.gone_ms.is_none() && !hops.contains(&from.1) {
                mv.gone_ms = Some(ms(now - t0));
            }
            if hops == only(&to.1) {
                mv.exact_ms = Some(ms(now - t0));
                break;
            }
            std::thread::sleep(MOVE_POLL);
        }
        if mv.exact_ms.is_none() {
            eprintln!(
                "  move {m}: {} → {} not complete in 10 s: {:?}",
                from.0,
                to.0,
                route_of(tor, &prefix)
            );
            // Let it settle before the next move starts from a known state.
            let settle = Instant::now() + Duration::from_secs(20);
            while route_of(tor, &prefix) != only(&to.1) && Instant::now() < settle {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        out.push(mv);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(out)
}

/// The floor: a BIRD injector in its own namespace, linked to the ToR's,
/// with N static /32s in a disabled protocol; the ToR gets a session to it
/// (`birdc configure`), then the routes are enabled at once and polled at
/// the ToR exactly as the Services' /32s are.
fn floor(a: &Args, lab: &Lab, tor: &Peer, work: &Path, rep: usize) -> Result<Floor> {
    let st = lab.state();
    let tor_ns = st["plan"]["tor_ns"].as_str().context("tor_ns")?.to_string();
    let tor_as = st["plan"]["tor_as"].as_u64().context("tor_as")?;
    let inj = Netns::new("lbi");
    inj.ip(&[
        "link", "add", "lbi0", "type", "veth", "peer", "name", "lbt0", "netns", &tor_ns,
    ]);
    inj.ip(&["addr", "add", "10.252.0.2/30", "dev", "lbi0"]);
    inj.ip(&["link", "set", "lbi0", "up"]);
    for args in [
        vec!["addr", "add", "10.252.0.1/30", "dev", "lbt0"],
        vec!["link", "set", "lbt0", "up"],
    ] {
        let out = Command::new("ip")
            .args(["-n", &tor_ns])
            .args(&args)
            .output()?;
        if !out.status.success() {
            bail!(
                "ip {args:?} in the ToR: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let conf = lab.dir.join("tor").join("bird.conf");
    let mut text = std::fs::read_to_string(&conf)?;
    text += &format!(
        "protocol bgp floor_inj {{\n local 10.252.0.1 as {tor_as};\n neighbor 10.252.0.2 as 65100;\n hold time 9;\n ipv4 {{ import all; export none; }};\n}}\n"
    );
    std::fs::write(&conf, text)?;
    let said = tor.cli(&["configure"]);
    if !said.contains("Reconfigured") {
        bail!("ToR BIRD did not take the floor session: {said}");
    }
    let d = work.join(format!("floor{rep}"));
    std::fs::create_dir_all(&d)?;
    let mut c = format!(
        "log \"{}/bird.log\" {{ warning, error, fatal, bug }};\nrouter id 10.252.0.2;\nprotocol device {{ }}\nprotocol static s4 {{\n disabled;\n ipv4;\n",
        d.display()
    );
    let prefixes: BTreeSet<String> = (0..a.services)
        .map(|i| format!("10.253.{}.{}/32", i / 256, i % 256))
        .collect();
    for p in &prefixes {
        c += &format!(" route {p} blackhole;\n");
    }
    c += &format!(
        "}}\nprotocol bgp up {{\n local 10.252.0.2 as 65100;\n neighbor 10.252.0.1 as {tor_as};\n hold time 9;\n ipv4 {{ import none; export all; }};\n}}\n"
    );
    let bird = Peer::bird().raw_config(&c).start(&inj, &d);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !tor
        .cli(&["show", "protocols", "floor_inj"])
        .contains("Established")
    {
        if Instant::now() > deadline {
            bail!(
                "the floor injector's session is not up:\n{}",
                tor.sessions()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let poller = TorPoller::start(lab.tor(Flavor::Bird), 1);
    let t0 = Instant::now();
    let said = bird.cli(&["enable", "s4"]);
    if !said.contains("enabled") {
        bail!("injector: enable s4: {said}");
    }
    let deadline = t0 + Duration::from_secs(60);
    while poller.counts(&prefixes).0 < prefixes.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = poller.first.lock().map(|m| m.clone()).unwrap_or_default();
    drop(poller);
    let mut f = Floor::default();
    let mut last = None;
    for p in &prefixes {
        if let Some(t) = first.get(p) {
            f.per_route_ms.push(ms(t.saturating_duration_since(t0)));
            last = last.max(Some(*t));
        }
    }
    if f.per_route_ms.len() == prefixes.len() {
        f.all_s = last.map(|t| (t - t0).as_secs_f64());
    }
    drop(bird);
    drop(inj);
    Ok(f)
}

/// The p-th percentile (nearest rank, as `twill_bench::percentile_ms`).
fn pctl(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[rank.min(s.len() - 1)]
}

fn opt(v: Option<f64>) -> f64 {
    v.unwrap_or(f64::NAN)
}

/// Spread over repetitions of one number per repetition.
fn over<T>(reps: &[T], f: impl Fn(&T) -> f64) -> Spread {
    Spread::of(&reps.iter().map(f).collect::<Vec<_>>())
}

fn move_json(m: &Move) -> Value {
    json!({
        "new_node_present_ms": m.present_ms, "old_node_gone_ms": m.gone_ms, "exactly_new_node_ms": m.exact_ms,
    })
}

/// Moves pooled over repetitions: (present, gone, exact, incomplete).
fn pooled(moves: &[&Move]) -> (Vec<f64>, Vec<f64>, Vec<f64>, usize) {
    let present: Vec<f64> = moves.iter().filter_map(|m| m.present_ms).collect();
    let gone: Vec<f64> = moves.iter().filter_map(|m| m.gone_ms).collect();
    let exact: Vec<f64> = moves.iter().filter_map(|m| m.exact_ms).collect();
    let incomplete = moves.len() - exact.len();
    (present, gone, exact, incomplete)
}

fn pooled_json(moves: &[&Move]) -> Value {
    let (present, gone, exact, incomplete) = pooled(moves);
    json!({
        "exact": {"p50": pctl(&exact, 50.0), "p99": pctl(&exact, 99.0), "max": pctl(&exact, 100.0), "n": exact.len()},
        "present": {"p50": pctl(&present, 50.0), "p99": pctl(&present, 99.0)},
        "gone": {"p50": pctl(&gone, 50.0), "p99": pctl(&gone, 99.0)},
        "incomplete": incomplete,
    })
}

fn rep_json(r: &Rep) -> Value {
    json!({
        "loadavg_start": r.load_start, "loadavg_end": r.load_end,
        "create_s": r.create_s,
        "all_allocated_s": r.all_allocated_s,
        "all_at_tor_first_path_s": r.all_tor_first_s,
        "all_at_tor_every_node_s": r.all_tor_every_s,
        "one_more_after_n_allocated_s": r.late_allocated_s,
        "allocated_ms": r.allocated_ms,
        "at_tor_first_path_ms": r.tor_first_ms,
        "at_tor_every_node_ms": r.tor_every_ms,
        "agents": r.agents.iter().map(|g| json!({
            "node": g.node, "idle_0_pct_of_core": g.idle0_pct, "rss_0_kib": g.rss0_kib,
            "serving_cpu_s": g.busy_cpu_s, "serving_pct_of_core": g.busy_pct,
            "idle_n_pct_of_core": g.idle_n_pct, "rss_n_kib": g.rss_n_kib,
        })).collect::<Vec<_>>(),
        "moves": r.moves.iter().map(move_json).collect::<Vec<_>>(),
        "moves_with_n": r.moves_n.iter().map(move_json).collect::<Vec<_>>(),
        "floor": r.floor.as_ref().map(|f| json!({"all_s": f.all_s, "per_route_ms": f.per_route_ms})),
    })
}

fn main() -> Result<()> {
    require_root();
    require_binary("bird", "bird2");
    require_binary("birdc", "bird2");
    let a = parse_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let work = tempfile::tempdir()?;
    let mut reps = Vec::new();
    for rep in 0..a.reps {
        eprintln!(
            "== repetition {} of {} (load {})",
            rep + 1,
            a.reps,
            loadavg()
        );
        let r = rt.block_on(one_rep(&a, rep, work.path()))?;
        eprintln!(
            "  rep {rep}: allocated {:?} s, at ToR {:?} s (every node {:?} s), floor {:?}",
            r.all_allocated_s,
            r.all_tor_first_s,
            r.all_tor_every_s,
            r.floor.as_ref().map(|f| f.all_s)
        );
        reps.push(r);
    }
    let n = a.services;
    let kib = 1024.0;
    let agents = |f: &dyn Fn(&Agent) -> f64| -> Spread {
        Spread::of(
            &reps
                .iter()
                .flat_map(|r| r.agents.iter().map(f))
                .collect::<Vec<_>>(),
        )
    };
    let moves: Vec<&Move> = reps.iter().flat_map(|r| r.moves.iter()).collect();
    let moves_n: Vec<&Move> = reps.iter().flat_map(|r| r.moves_n.iter()).collect();

    let mut md = format!(
        "**{n} LoadBalancer Services created at once** ({NODES} twill-node agents on one embedded store, BIRD ToR; created back to back through `twill_api`, as `twillctl apply` does; {} repetitions, each a fresh lab; median (min–max) over repetitions; ToR polled with `birdc show route` every {} ms)\n\n",
        a.reps,
        TOR_POLL.as_millis()
    );
    let per = |f: &dyn Fn(&Rep) -> &Vec<f64>, p: f64| over(&reps, |r| pctl(f(r), p));
    let mut rows = vec![
        vec![
            "issuing the creates".to_string(),
            over(&reps, |r| r.create_s).show(2),
            "–".into(),
            "–".into(),
        ],
        vec![
            "create → allocated (`status.loadBalancer`)".into(),
            over(&reps, |r| opt(r.all_allocated_s)).show(2),
            per(&|r| &r.allocated_ms, 50.0).show(0),
            per(&|r| &r.allocated_ms, 99.0).show(0),
        ],
        vec![
            "create → at the ToR (first path)".into(),
            over(&reps, |r| opt(r.all_tor_first_s)).show(2),
            per(&|r| &r.tor_first_ms, 50.0).show(0),
            per(&|r| &r.tor_first_ms, 99.0).show(0),
        ],
        vec![
            format!("create → at the ToR from all {NODES} nodes (ECMP)"),
            over(&reps, |r| opt(r.all_tor_every_s)).show(2),
            per(&|r| &r.tor_every_ms, 50.0).show(0),
            per(&|r| &r.tor_every_ms, 99.0).show(0),
        ],
    ];
    rows.push(vec![
        format!("one more Service, created once all {n} are at the ToR → allocated"),
        over(&reps, |r| opt(r.late_allocated_s)).show(2),
        "–".into(),
        "–".into(),
    ]);
    let floors: Vec<&Floor> = reps.iter().filter_map(|r| r.floor.as_ref()).collect();
    if !floors.is_empty() {
        rows.push(vec![
            format!("floor: BIRD enables {n} static /32s → all at the same ToR (one eBGP session)"),
            over(&floors, |f| opt(f.all_s)).show(2),
            over(&floors, |f| pctl(&f.per_route_ms, 50.0)).show(0),
            over(&floors, |f| pctl(&f.per_route_ms, 99.0)).show(0),
        ]);
    }
    md += &table(
        &[
            "measure",
            "all done, s",
            "p50 per Service, ms",
            "p99 per Service, ms",
        ],
        &rows,
    );
    let missing: usize = reps
        .iter()
        .map(|r| n.saturating_sub(r.tor_every_ms.len()))
        .sum();
    if missing > 0 {
        md += &format!(
            "\n{missing} Services (over all repetitions) never reached the ToR from every node before the timeout.\n"
        );
    }
    md += &format!(
        "\n**Endpoint moves** (a Local-policy LoadBalancer Service, its one ready endpoint moved to the next node by an EndpointSlice update; {} moves per repetition over {} repetitions, once before the {n} Services were created and once, with another such Service, after all {n} were at the ToR; `birdc show route PREFIX` polled every {} ms; goal p99 < 1 s)\n\n",
        a.moves,
        a.reps,
        MOVE_POLL.as_millis()
    );
    let mut mrows = Vec::new();
    let mut incomplete_note = String::new();
    for (present_n, set) in [(0, &moves), (n, &moves_n)] {
        let (present, gone, exact, incomplete) = pooled(set);
        for (what, v) in [
            ("new node's path present", &present),
            ("old node's path gone", &gone),
            ("next hops exactly the new node", &exact),
        ] {
            mrows.push(vec![
                present_n.to_string(),
                what.to_string(),
                format!("{:.0}", pctl(v, 50.0)),
                format!("{:.0}", pctl(v, 99.0)),
                format!("{:.0}", pctl(v, 100.0)),
                v.len().to_string(),
            ]);
        }
        if incomplete > 0 {
            incomplete_note += &format!(
                "\nWith {present_n} Services present, {incomplete} moves did not complete within 10 s.\n"
            );
        }
    }
    md += &table(
        &[
            "Services present",
            "slice written → ToR",
            "p50 ms",
            "p99 ms",
            "max ms",
            "moves",
        ],
        &mrows,
    );
    md += &incomplete_note;
    md += &format!(
        "\n**Agent CPU and memory** (per agent, from /proc; median (min–max) over {} agents × {} repetitions; idle windows {} s)\n\n",
        NODES,
        a.reps,
        a.idle.as_secs()
    );
    md += &table(
        &["measure", "value"],
        &[
            vec![
                "idle, 0 Services: % of one core".into(),
                agents(&|g| g.idle0_pct).show(2),
            ],
            vec![
                format!("idle, {n} Services: % of one core"),
                agents(&|g| g.idle_n_pct).show(2),
            ],
            vec![
                format!("serving the {n} creates (create → all at the ToR): CPU s"),
                agents(&|g| g.busy_cpu_s).show(2),
            ],
            vec![
                "  … as % of one core over that time".into(),
                agents(&|g| g.busy_pct).show(1),
            ],
            vec![
                "  … CPU ms per Service".into(),
                agents(&|g| g.busy_cpu_s * 1000.0 / n as f64).show(2),
            ],
            vec![
                "VmRSS, 0 Services: MiB".into(),
                agents(&|g| g.rss0_kib as f64 / kib).show(1),
            ],
            vec![
                format!("VmRSS, {n} Services: MiB"),
                agents(&|g| g.rss_n_kib as f64 / kib).show(1),
            ],
            vec![
                "  … KiB per Service".into(),
                agents(&|g| (g.rss_n_kib as f64 - g.rss0_kib as f64) / n as f64).show(2),
            ],
        ],
    );
    md += &format!(
        "\nLoad average (1, 5, 15 min) at the start of each repetition: {}; at the end: {}. The machine is shared with other builds and tests: absolute times, no peer to take a ratio with (no MetalLB or Cilium here); the BIRD row is a floor (BGP transport and the ToR alone), not a peer.\n",
        reps.iter()
            .map(|r| format!("`{}`", r.load_start))
            .collect::<Vec<_>>()
            .join(", "),
        reps.iter()
            .map(|r| format!("`{}`", r.load_end))
            .collect::<Vec<_>>()
            .join(", "),
    );
    println!("{md}");
    let doc = json!({
        "benchmark": "lb_services",
        "short": a.short,
        "services": n, "nodes": NODES, "repetitions": a.reps, "moves_per_rep": a.moves,
        "idle_window_s": a.idle.as_secs(), "lb_pool": LB_POOL,
        "tor_poll_ms": TOR_POLL.as_millis() as u64, "move_poll_ms": MOVE_POLL.as_millis() as u64,
        "reps": reps.iter().map(rep_json).collect::<Vec<_>>(),
        "moves_pooled_ms": pooled_json(&moves),
        "moves_with_n_pooled_ms": pooled_json(&moves_n),
    });
    write_to(&a.out, doc, &md)
}

/// Writes `lb_services.{json,md}` into `dir` (bench/results/ by default;
/// not `twill_bench::write_results`, whose path is fixed when the library
/// is compiled).
fn write_to(dir: &Path, mut doc: Value, md: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()?;
    doc["recorded"] = Value::String(String::from_utf8_lossy(&date.stdout).trim().to_string());
    doc["machine"] = Value::String(machine());
    doc["build"] = Value::String(
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .into(),
    );
    std::fs::write(
        dir.join("lb_services.json"),
        serde_json::to_string_pretty(&doc)?,
    )?;
    std::fs::write(dir.join("lb_services.md"), md)?;
    eprintln!("results: {}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bird_next_hops_per_prefix() {
        let text = "BIRD 2.0.12 ready.\nTable master4:\n10.251.0.1/32        unicast [n1 21:00:01.000] * (100) [AS64512i]\n\tvia 172.30.0.11 on rack\n                     unicast [n2 21:00:01.000] (100) [AS64512i]\n\tvia 172.30.0.12 on rack\n10.251.0.2/32        unreachable [n3 21:00:01.000] * (100) [AS64512i]\n10.251.0.3/32        unicast [n3 21:00:01.000] * (100) [AS64512i]\n\tvia 172.30.0.13 on rack\n";
        let h = next_hops(text);
        assert_eq!(
            h.get("10.251.0.1/32").cloned().unwrap_or_default(),
            ["172.30.0.11".to_string(), "172.30.0.12".to_string()].into()
        );
        assert!(!h.contains_key("10.251.0.2/32"));
        assert_eq!(h["10.251.0.3/32"].len(), 1);
        assert_eq!(pctl(&[5.0, 1.0, 3.0], 50.0), 3.0);
        assert!(pctl(&[], 99.0).is_nan());
    }
}
