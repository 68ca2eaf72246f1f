//! Fabric convergence, on a real `twillctl lab` (network namespaces, BIRD ToR).
//!
//! 1. Block claim → route: a 3-node lab with /30 blocks and no pods. Each of
//!    100 rounds makes a CNI ADD on n1 that must claim a new block (the
//!    previous blocks are exactly full), then times when the block appears
//!    as n1's own blackhole, as a BGP route in n2's kernel and in the ToR's
//!    kernel (BIRD's kernel protocol exports what it learned). Timestamps
//!    come from `ip -ts monitor route` running in each namespace before the
//!    trigger, so polling does not blur them.
//! 2. A 20-node lab behind two route reflectors (mesh off): time from
//!    `twillctl lab up` until every node holds every other node's block in
//!    its kernel, polled every 100 ms.
//!
//! Run with `scripts/bench.sh fabric-convergence` (release build, as root).

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use twill_bench::{machine, percentile_ms, table};
use twill_tests::lab::Lab;
use twill_tests::{Netns, bins, require_binary, require_root};

const ROUNDS: usize = 100;
const BLOCK: u8 = 30;
const RR_NODES: usize = 20;

/// Seconds since the Unix epoch, as a float (the clock `ip -ts` prints).
fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Parses `[2026-11-25T13:48:05.964472]` (UTC, we set TZ) to epoch seconds.
fn parse_ts(s: &str) -> Option<f64> {
    let s = s.strip_prefix('[')?.strip_suffix(']')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let ss: f64 = t.next()?.parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60) as f64 + ss)
}

/// `ip -ts monitor route` in a namespace, every line kept with its timestamp.
struct Monitor {
    child: Child,
    lines: Arc<Mutex<Vec<(f64, String)>>>,
}

impl Monitor {
    fn start(ns: &str) -> Monitor {
        let mut child = Command::new("ip")
            .args(["-n", ns, "-ts", "monitor", "route"])
            .env("TZ", "UTC")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ip monitor");
        let out = child.stdout.take().expect("monitor stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let Some((ts, rest)) = line.split_once(' ') else {
                    continue;
                };
                if let Some(t) = parse_ts(ts) {
                    l2.lock().unwrap().push((t, rest.to_string()));
                }
            }
        });
        // Let it subscribe before anything is triggered.
        std::thread::sleep(Duration::from_millis(300));
        Monitor { child, lines }
    }

    /// When a route for `prefix` was first added (optionally with a leading
    /// type word like `blackhole`), waiting up to `timeout`.
    fn added(&self, prefix: &str, timeout: Duration) -> Option<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let lines = self.lines.lock().unwrap();
                let hit = lines.iter().find(|(_, l)| {
                    let l = l.strip_prefix("blackhole ").unwrap_or(l);
                    l.starts_with(&format!("{prefix} "))
                });
                if let Some((t, _)) = hit {
                    return Some(*t);
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        // Our own child, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn block_of(ip: &str, len: u8) -> Option<String> {
    let a: Ipv4Addr = ip.parse().ok()?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Some(format!("{}/{len}", Ipv4Addr::from(u32::from(a) & mask)))
}

fn pod_ip(v: &Value) -> Option<String> {
    v["ips"]
        .as_array()?
        .iter()
        .filter_map(|i| i["address"].as_str())
        .find(|a| !a.contains(':'))
        .and_then(|a| a.split('/').next())
        .map(String::from)
}

struct Convergence {
    /// ADD start → n1's blackhole (the claim as programmed locally).
    claim: Vec<Duration>,
    /// ADD start → route in n2's kernel.
    node: Vec<Duration>,
    /// ADD start → route in the ToR's kernel.
    tor: Vec<Duration>,
    /// n1's blackhole → route in n2's kernel (the BGP path only).
    node_after_claim: Vec<Duration>,
    /// n1's blackhole → route in the ToR's kernel.
    tor_after_claim: Vec<Duration>,
    missed: usize,
    not_new: usize,
}

fn secs(d: f64) -> Duration {
    Duration::from_secs_f64(d.max(0.0))
}

fn convergence(topo_dir: &Path) -> Convergence {
    let topo = topo_dir.join("conv.yaml");
    std::fs::write(
        &topo,
        format!("tor: bird\npodsPerNode: 0\nblockSize: {BLOCK}\npool: 10.244.0.0/16\n"),
    )
    .unwrap();
    let lab = Lab::up(&["--nodes", "3", "--topology", topo.to_str().unwrap()]);
    assert!(lab.up_ok, "lab up failed:\n{}", lab.up_output);
    // Sessions up: n2 and the ToR need to be listening before we time anything.
    std::thread::sleep(Duration::from_secs(3));
    let mon_a = Monitor::start(&lab.ns("n1"));
    let mon_b = Monitor::start(&lab.ns("n2"));
    let mon_t = Monitor::start(&lab.ns("tor"));
    let per_block = 1usize << (32 - BLOCK);
    let mut pods: Vec<Netns> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut c = Convergence {
        claim: vec![],
        node: vec![],
        tor: vec![],
        node_after_claim: vec![],
        tor_after_claim: vec![],
        missed: 0,
        not_new: 0,
    };
    let add = |pods: &mut Vec<Netns>| -> String {
        let ns = Netns::new("fcp");
        let cid = format!("bench-{}", ns.name());
        let (ok, v) = lab.cni("n1", "ADD", &cid, ns.name());
        assert!(ok, "CNI ADD failed: {v}");
        pods.push(ns);
        pod_ip(&v).unwrap_or_else(|| panic!("no IPv4 in {v}"))
    };
    for round in 0..ROUNDS {
        let t0 = now_s();
        let ip = add(&mut pods);
        let block = block_of(&ip, BLOCK).unwrap();
        if !seen.insert(block.clone()) {
            c.not_new += 1;
            eprintln!("round {round}: {ip} is in block {block} claimed before");
            continue;
        }
        let wait = Duration::from_secs(5);
        let (a, b, t) = (
            mon_a.added(&block, wait),
            mon_b.added(&block, wait),
            mon_t.added(&block, wait),
        );
        match (a, b, t) {
            (Some(a), Some(b), Some(t)) => {
                c.claim.push(secs(a - t0));
                c.node.push(secs(b - t0));
                c.tor.push(secs(t - t0));
                c.node_after_claim.push(secs(b - a));
                c.tor_after_claim.push(secs(t - a));
            }
            _ => {
                c.missed += 1;
                eprintln!("round {round}: block {block}: n1 {a:?} n2 {b:?} tor {t:?}");
            }
        }
        // Fill the block so the next round's ADD claims a new one.
        for _ in 1..per_block {
            let ip = add(&mut pods);
            let b = block_of(&ip, BLOCK).unwrap();
            if b != block {
                eprintln!("round {round}: filler {ip} landed in {b}, not {block}");
                seen.insert(b);
            }
        }
    }
    drop(lab);
    drop(pods);
    c
}

/// Runs `twillctl lab down` for a lab we started ourselves, even on panic.
struct LabGuard {
    dir: PathBuf,
    up: Option<Child>,
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.up.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        twill_tests::lab::down(&self.dir);
    }
}

struct Reflected {
    nodes: usize,
    up_total: Duration,
    all_blocks: Duration,
    after_last_claim: Duration,
    tor_all: Duration,
    client_sessions: usize,
    reflector_sessions: usize,
}

fn established_bgp(ns: &str) -> usize {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ss", "-Htn", "state", "established"])
        .output()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(":179 ") || l.contains(":179\t") || l.ends_with(":179"))
        .count()
}

fn reflected(work: &Path) -> Reflected {
    let topo = work.join("rr.yaml");
    std::fs::write(
        &topo,
        "tor: bird\npodsPerNode: 1\nrouteReflectors: [n1, n2]\n",
    )
    .unwrap();
    let dir = work.join("rrlab");
    let name = twill_tests::unique_name("r");
    let start = Instant::now();
    let child = Command::new(bins::binary("twillctl"))
        .args(["lab", "up", "--dir"])
        .arg(&dir)
        .args(["--name", &name, "--nodes", &RR_NODES.to_string()])
        .arg("--topology")
        .arg(&topo)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("twillctl lab up");
    let mut guard = LabGuard {
        dir: dir.clone(),
        up: Some(child),
    };
    let mut claims_done: Option<Instant> = None;
    let mut converged: std::collections::BTreeMap<String, Instant> = Default::default();
    let mut tor_all: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        assert!(
            Instant::now() < deadline,
            "20-node lab did not converge in 300 s ({} of {RR_NODES} nodes)",
            converged.len()
        );
        std::thread::sleep(Duration::from_millis(100));
        let st: Value = std::fs::read(dir.join("lab.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let Some(pods) = st["plan"]["pods"].as_array() else {
            continue;
        };
        let bs = st["plan"]["block_size"].as_u64().unwrap_or(26) as u8;
        let mut blocks: Vec<(String, String)> = Vec::new();
        for p in pods {
            let (Some(pn), Some(node)) = (p["name"].as_str(), p["node"].as_str()) else {
                continue;
            };
            if let Some(ip) = st["pod_ips"][pn].as_str()
                && let Some(b) = block_of(ip, bs)
            {
                blocks.push((node.to_string(), b));
            }
        }
        if blocks.len() < RR_NODES {
            continue;
        }
        let claims = *claims_done.get_or_insert_with(Instant::now);
        for n in st["plan"]["nodes"].as_array().into_iter().flatten() {
            let (Some(nn), Some(ns)) = (n["name"].as_str(), n["ns"].as_str()) else {
                continue;
            };
            if converged.contains_key(nn) {
                continue;
            }
            let out = Command::new("ip")
                .args(["-n", ns, "-4", "route", "show", "proto", "116"])
                .output()
                .expect("ip route");
            let routes = String::from_utf8_lossy(&out.stdout);
            let all = blocks
                .iter()
                .filter(|(owner, _)| owner != nn)
                .all(|(_, b)| routes.lines().any(|l| l.starts_with(&format!("{b} "))));
            if all {
                converged.insert(nn.to_string(), Instant::now());
            }
        }
        if tor_all.is_none() {
            let tor = st["plan"]["tor_ns"].as_str().unwrap_or_default();
            let out = Command::new("ip")
                .args(["-n", tor, "-4", "route", "show", "proto", "bird"])
                .output()
                .expect("ip route");
            let routes = String::from_utf8_lossy(&out.stdout);
            if blocks
                .iter()
                .all(|(_, b)| routes.lines().any(|l| l.starts_with(&format!("{b} "))))
            {
                tor_all = Some(Instant::now());
            }
        }
        if converged.len() == RR_NODES && tor_all.is_some() {
            let last = converged
                .values()
                .max()
                .copied()
                .unwrap_or_else(Instant::now);
            let up = guard.up.as_mut().expect("lab up child");
            let status = up.wait().expect("lab up");
            let up_total = start.elapsed();
            let mut err = String::new();
            if let Some(mut e) = up.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            guard.up = None;
            assert!(status.success(), "lab up failed: {err}");
            let st: Value =
                serde_json::from_slice(&std::fs::read(dir.join("lab.json")).unwrap()).unwrap();
            let ns_of = |i: usize| {
                st["plan"]["nodes"][i]["ns"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            };
            let r = Reflected {
                nodes: RR_NODES,
                up_total,
                all_blocks: last - start,
                after_last_claim: last.saturating_duration_since(claims),
                tor_all: tor_all.unwrap_or(last) - start,
                client_sessions: established_bgp(&ns_of(RR_NODES - 1)),
                reflector_sessions: established_bgp(&ns_of(0)),
            };
            drop(guard);
            return r;
        }
    }
}

fn row(what: &str, s: &[Duration]) -> Vec<String> {
    vec![
        what.to_string(),
        format!("{:.1}", percentile_ms(s, 50.0)),
        format!("{:.1}", percentile_ms(s, 99.0)),
        format!("{:.1}", percentile_ms(s, 100.0)),
        s.len().to_string(),
    ]
}

/// Writes `name.json` and `name.md` under this binary's own bench/results/.
/// (Not `twill_bench::write_results`: its path is fixed when the library is
/// compiled, and a target directory shared between worktrees may hold a
/// library built from another checkout.)
fn write_here(name: &str, mut doc: Value, md: &str) -> anyhow::Result<()> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/results"));
    std::fs::create_dir_all(&dir)?;
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()?;
    doc["recorded"] = Value::String(String::from_utf8_lossy(&date.stdout).trim().to_string());
    doc["machine"] = Value::String(machine());
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(&doc)?,
    )?;
    std::fs::write(dir.join(format!("{name}.md")), md)?;
    println!("results: {}", dir.display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    require_root();
    require_binary("bird", "bird2");
    require_binary("birdc", "bird2");
    let work = tempfile::tempdir()?;

    let c = convergence(work.path());
    let header = [
        "block claimed on n1 → route present",
        "p50 ms",
        "p99 ms",
        "max ms",
        "samples",
    ];
    let rows = vec![
        row("n2's kernel (from the CNI ADD that claims)", &c.node),
        row("ToR kernel via BIRD (from the CNI ADD)", &c.tor),
        row("n1's own blackhole (the claim itself)", &c.claim),
        row("n2's kernel (from n1's blackhole)", &c.node_after_claim),
        row("ToR kernel (from n1's blackhole)", &c.tor_after_claim),
    ];
    let mut md = format!(
        "## Convergence: new block on a node → route elsewhere\n\n3 nodes (iBGP mesh) + BIRD ToR, /{BLOCK} blocks, {ROUNDS} claims; `ip -ts monitor route` timestamps. Target p99 < 100 ms.\n\n"
    );
    md += &table(&header, &rows);
    if c.missed + c.not_new > 0 {
        md += &format!(
            "\n{} claims never reached every place within 5 s; {} ADDs did not claim a new block.\n",
            c.missed, c.not_new
        );
    }

    let r = reflected(work.path());
    md += &format!(
        "\n## {} nodes behind two route reflectors (mesh off)\n\n",
        r.nodes
    );
    md += &table(
        &["measure", "seconds"],
        &[
            vec![
                "`lab up` start → every node holds every other node's block".into(),
                format!("{:.2}", r.all_blocks.as_secs_f64()),
            ],
            vec![
                "last block claimed → every node holds every block".into(),
                format!("{:.2}", r.after_last_claim.as_secs_f64()),
            ],
            vec![
                "`lab up` start → ToR holds every block".into(),
                format!("{:.2}", r.tor_all.as_secs_f64()),
            ],
            vec![
                "`lab up` total (incl. ping matrix)".into(),
                format!("{:.2}", r.up_total.as_secs_f64()),
            ],
        ],
    );
    md += &format!(
        "\nBGP sessions established: a client {} (2 reflectors + ToR), a reflector {}.\n",
        r.client_sessions, r.reflector_sessions
    );
    println!("{md}");
    let ms = |s: &[Duration], p: f64| percentile_ms(s, p);
    write_here(
        "fabric_convergence",
        json!({
            "convergence": {
                "nodes": 3, "block_size": BLOCK, "rounds": ROUNDS,
                "missed": c.missed, "not_new_block": c.not_new,
                "node_ms": {"p50": ms(&c.node, 50.0), "p99": ms(&c.node, 99.0), "max": ms(&c.node, 100.0)},
                "tor_ms": {"p50": ms(&c.tor, 50.0), "p99": ms(&c.tor, 99.0), "max": ms(&c.tor, 100.0)},
                "claim_ms": {"p50": ms(&c.claim, 50.0), "p99": ms(&c.claim, 99.0)},
                "node_after_claim_ms": {"p50": ms(&c.node_after_claim, 50.0), "p99": ms(&c.node_after_claim, 99.0)},
                "tor_after_claim_ms": {"p50": ms(&c.tor_after_claim, 50.0), "p99": ms(&c.tor_after_claim, 99.0)},
            },
            "route_reflector_lab": {
                "nodes": r.nodes, "reflectors": 2,
                "start_to_all_blocks_s": r.all_blocks.as_secs_f64(),
                "last_claim_to_all_blocks_s": r.after_last_claim.as_secs_f64(),
                "start_to_tor_all_s": r.tor_all.as_secs_f64(),
                "lab_up_total_s": r.up_total.as_secs_f64(),
                "client_sessions": r.client_sessions,
                "reflector_sessions": r.reflector_sessions,
            }
        }),
        &md,
    )?;
    Ok(())
}
