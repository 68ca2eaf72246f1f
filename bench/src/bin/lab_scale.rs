//! The lab at scale (root): `twillctl lab up` with N nodes behind two
//! route reflectors, a BIRD ToR and one pod per node, at several sizes.
//!
//! `lab_scale [SIZE:REPS,...] [IDLE_SECONDS]` (default `10:3,30:3,100:1`,
//! 60 s). Rounds go through the sizes in turn (10, 30, 100, 10, 30, ...)
//! until each has its repetitions. Per run: the wall time of `lab up`
//! (which returns only after a round in which every pod answered every
//! other pod's ping, or fails), its phases from lab.json (rack, agents,
//! pods, matrix = convergence), then the idle CPU of every twill-node over
//! IDLE_SECONDS from `/proc/<pid>/stat` (utime+stime with the children it
//! waited for; BIRD and the pods' responders are counted apart), then
//! `lab down`. Every run is in the JSON;
//! the markdown gives median and min–max per size, and the load average.
//!
//! Run with `scripts/bench.sh lab-scale` (release build, as root).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use twill_bench::{machine, table};
use twill_tests::{bins, require_binary, require_root, unique_name};

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions; it returns -1 on error.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of a process and of the children it waited for (an
/// agent's `nft` processes, if it starts any), in ticks (None when it is
/// gone).
fn cpu_ticks(pid: i64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    (11..=14).map(|i| f.get(i)?.parse::<u64>().ok()).sum()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The lab's processes by kind: ("twill-node" | "bird" | "serve", pid).
fn processes(state: &Value) -> Vec<(String, i64)> {
    state["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["marker"].as_str()?.to_string(), p["pid"].as_i64()?)))
        .collect()
}

/// One `lab up`, the idle window and `lab down`.
fn run(nodes: usize, rep: usize, idle: Duration) -> anyhow::Result<Value> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("lab");
    let name = unique_name("h");
    let load_before = loadavg();
    let t = Instant::now();
    let out = Command::new(bins::binary("twillctl"))
        .args(["lab", "up", "--dir"])
        .arg(&dir)
        .args(["--name", &name, "--nodes", &nodes.to_string()])
        .args(["--pods-per-node", "1", "--route-reflectors", "2"])
        .args(["--tor", "bird"])
        .output()?;
    let up_s = t.elapsed().as_secs_f64();
    let state: Value = std::fs::read(dir.join("lab.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let guard = Down(dir.clone());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let log = dir.join("lab-up.log");
        let _ = std::fs::write(&log, &stdout);
        anyhow::bail!(
            "lab up --nodes {nodes} failed ({}):\n{}\n{}",
            out.status,
            stdout.lines().rev().take(30).collect::<Vec<_>>().join("\n"),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let timings = state["timings"].clone();
    // Idle: no more changes, the agents only keep their sessions and
    // write their reports.
    let procs = processes(&state);
    let tck = clk_tck();
    let t0: Vec<Option<u64>> = procs.iter().map(|(_, p)| cpu_ticks(*p)).collect();
    let w = Instant::now();
    std::thread::sleep(idle);
    let t1: Vec<Option<u64>> = procs.iter().map(|(_, p)| cpu_ticks(*p)).collect();
    let wall = w.elapsed().as_secs_f64();
    let mut by_kind = std::collections::BTreeMap::<String, (f64, usize)>::new();
    let mut gone = Vec::new();
    for (((kind, pid), a), b) in procs.iter().zip(&t0).zip(&t1) {
        match (a, b) {
            (Some(a), Some(b)) => {
                let e = by_kind.entry(kind.clone()).or_default();
                e.0 += (b - a) as f64 / tck / wall * 100.0;
                e.1 += 1;
            }
            _ => gone.push(format!("{kind} {pid}")),
        }
    }
    if !gone.is_empty() {
        anyhow::bail!("processes ended during the idle window: {gone:?}");
    }
    let pct = |k: &str| by_kind.get(k).map(|v| v.0).unwrap_or(0.0);
    let agents = by_kind.get("twill-node").map(|v| v.1).unwrap_or(0);
    if agents != nodes {
        anyhow::bail!("{agents} twill-node processes recorded, not {nodes}");
    }
    drop(guard);
    let r = json!({
        "nodes": nodes,
        "rep": rep,
        "lab_up_s": up_s,
        "timings": timings,
        "idle_window_s": wall,
        "idle_agents_percent_of_one_core": pct("twill-node"),
        "idle_per_agent_percent": pct("twill-node") / nodes as f64,
        "idle_bird_percent": pct("bird"),
        "idle_responders_percent": pct("serve"),
        "loadavg_before": load_before,
        "loadavg_after_idle": loadavg(),
        "raised": state["raised"],
    });
    println!("{r}");
    Ok(r)
}

/// `lab down` for a lab this benchmark started, also when a run fails.
struct Down(std::path::PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        twill_tests::lab::down(&self.0);
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn cell(mut v: Vec<f64>, digits: usize) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let (lo, hi) = (
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let m = median(&mut v);
    if v.len() == 1 {
        format!("{m:.digits$}")
    } else {
        format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})")
    }
}

fn main() -> anyhow::Result<()> {
    require_root();
    for b in ["twillctl", "twill-node", "twill-cni"] {
        require_binary(
            &bins::binary(b).to_string_lossy(),
            "the workspace binaries (cargo build --release --workspace --bins)",
        );
    }
    require_binary("bird", "bird2");
    let args: Vec<String> = std::env::args().collect();
    let plan: Vec<(usize, usize)> = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("10:3,30:3,100:1")
        .split(',')
        .map(|s| {
            let (n, r) = s.split_once(':').unwrap_or((s, "1"));
            Ok((n.parse()?, r.parse()?))
        })
        .collect::<anyhow::Result<_>>()?;
    let idle = Duration::from_secs(args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(60));
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    let most = plan.iter().map(|p| p.1).max().unwrap_or(0);
    for rep in 1..=most {
        for &(nodes, reps) in &plan {
            if rep > reps {
                continue;
            }
            eprintln!("== {nodes} nodes, run {rep} of {reps} (load {})", loadavg());
            match run(nodes, rep, idle) {
                Ok(r) => runs.push(r),
                Err(e) => {
                    eprintln!("{e:#}");
                    failures.push(json!({"nodes": nodes, "rep": rep, "error": format!("{e:#}")}));
                }
            }
        }
    }
    let f = |r: &Value, p: &str| r.pointer(p).and_then(Value::as_f64);
    let mut rows = Vec::new();
    for &(nodes, _) in &plan {
        let mine: Vec<&Value> = runs
            .iter()
            .filter(|r| r["nodes"].as_u64() == Some(nodes as u64))
            .collect();
        let col = |p: &str| mine.iter().filter_map(|r| f(r, p)).collect::<Vec<_>>();
        let failed = failures
            .iter()
            .filter(|r| r["nodes"].as_u64() == Some(nodes as u64))
            .count();
        let loads: Vec<String> = mine
            .iter()
            .filter_map(|r| r["loadavg_after_idle"].as_str())
            .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
            .collect();
        rows.push(vec![
            nodes.to_string(),
            format!(
                "{}{}",
                mine.len(),
                if failed > 0 {
                    format!(" ({failed} failed)")
                } else {
                    String::new()
                }
            ),
            cell(col("/lab_up_s"), 1),
            cell(col("/timings/agents_s"), 1),
            cell(col("/timings/pods_s"), 1),
            cell(col("/timings/converge_s"), 1),
            cell(col("/idle_agents_percent_of_one_core"), 2),
            cell(col("/idle_per_agent_percent"), 3),
            cell(col("/idle_bird_percent"), 2),
            loads.join(", "),
        ]);
    }
    let md = format!(
        "`twillctl lab up --nodes N --pods-per-node 1 --route-reflectors 2 --tor bird`, {} build; median (min–max) over the runs; idle CPU of all twill-node agents (with the processes they started) from `/proc/<pid>/stat` over {} s after `lab up` returned. `lab up` returns after one round in which every pod answered every other pod (N·(N−1) pairs). Written by `bench/src/bin/lab_scale.rs` (every run in `lab_scale.json`). The machine ({}) is shared with other work: the load average (1 min) after each run's idle window is in the last column.\n\n{}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        idle.as_secs(),
        machine(),
        table(
            &[
                "nodes",
                "runs",
                "lab up (s)",
                "agents start (s)",
                "pods (s)",
                "convergence: last pod → full matrix (s)",
                "idle, all agents (% of one core)",
                "idle per agent (%)",
                "idle BIRD (%)",
                "load average",
            ],
            &rows,
        )
    );
    println!("{md}");
    twill_bench::write_results(
        "lab_scale",
        json!({"benchmark": "lab_scale", "idle_seconds": idle.as_secs(), "runs": runs, "failures": failures}),
        &md,
    )?;
    if !failures.is_empty() {
        anyhow::bail!("{} runs failed", failures.len());
    }
    Ok(())
}
