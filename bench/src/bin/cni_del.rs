//! CNI DEL latency alone: twill-cni + twill-node against Debian's `ptp` and
//! `bridge` plugins (both with `host-local`), all three with their host
//! sides in the same namespace (the twill-node's), the same pods, in one
//! run. Each repetition ADDs every pod (not timed) and then DELs every pod
//! (timed), sequentially and 20 at a time; the plugins' order alternates
//! between repetitions (Twill, ptp, bridge, then bridge, ptp, Twill, ...).
//! Reported: the median over repetitions of each repetition's p50 and p99,
//! with min–max, and Twill's ratio to each plugin.
//!
//! `cni_del [PODS] [REPS]` (defaults 60 and 5), as root, after
//! `cargo build --workspace --bins` (debug or release: it uses the
//! binaries next to itself). docs/cni-latency.md explains the numbers.
//! With `CNI_DEL_STEPS=FILE` (and `TWILL_LOG` enabling debug for
//! `twill_felix::dataplane::endpoints`) twill-node's per-step DEL timings
//! are copied to FILE at the end.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use twill_bench::{percentile_ms, ratio, table, write_results};
use twill_tests::cni::{Attachment, call};
use twill_tests::{Netns, TestNode, bins, require_binary, require_root};

fn att(id: &str, pod: &Netns) -> Attachment {
    Attachment {
        container_id: id.into(),
        netns: format!("/run/netns/{}", pod.name()),
        ifname: "eth0".into(),
        args: String::new(),
    }
}

/// Runs `cmd` for every pod, `concurrency` at a time; the time of each call.
fn each(
    host: &Netns,
    plugin: &std::path::Path,
    conf: &Value,
    pods: &[Netns],
    concurrency: usize,
    cmd: &str,
    tag: &str,
) -> Vec<Duration> {
    let out = Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|sc| {
        for _ in 0..concurrency {
            sc.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= pods.len() {
                        break;
                    }
                    let a = att(&format!("{tag}p{i}"), &pods[i]);
                    let t = Instant::now();
                    let r = call(host, plugin, cmd, &a, conf);
                    let d = t.elapsed();
                    assert!(r.success, "{tag} {cmd} pod {i}: {} {}", r.json, r.stderr);
                    out.lock().unwrap_or_else(|p| p.into_inner()).push(d);
                }
            });
        }
    });
    out.into_inner().unwrap_or_else(|p| p.into_inner())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn spread(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.1} ({lo:.1}–{hi:.1})", median(v.to_vec()))
}

/// The 1, 5 and 15 minute load averages (the machine is shared).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    require_root();
    for p in ["bridge", "ptp", "host-local"] {
        require_binary(&format!("/usr/lib/cni/{p}"), "containernetworking-plugins");
    }
    let mut args = std::env::args().skip(1);
    let pods_n: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(60);
    let reps: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5);
    anyhow::ensure!(pods_n > 0 && reps > 0, "PODS and REPS must be positive");
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("store.db");
    twill_tests::bins::twillctl_apply(
        &db,
        "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: bench\nspec:\n  cidr: 10.150.0.0/16\n",
    );
    let twill = TestNode::start_with_env(
        "twdl",
        "bench",
        &db,
        dir.path(),
        "10.96.150.1/32",
        &["--status-interval", "60"],
        &[(
            "TWILL_LOG",
            &std::env::var("TWILL_LOG").unwrap_or("info".into()),
        )],
    );
    let pods: Vec<Netns> = (0..pods_n).map(|_| Netns::new("twdp")).collect();
    let hl = |sub: &str, d: &str| json!({"type": "host-local", "ranges": [[{"subnet": sub}]], "dataDir": dir.path().join(d)});
    let plugins: [(&str, std::path::PathBuf, Value); 3] = [
        ("twill", bins::binary("twill-cni"), twill.netconf("1.0.0")),
        (
            "ptp",
            "/usr/lib/cni/ptp".into(),
            json!({"cniVersion": "1.0.0", "name": "bench-ptp", "type": "ptp", "ipMasq": false,
                   "ipam": hl("10.152.0.0/16", "hl-ptp")}),
        ),
        (
            "bridge",
            "/usr/lib/cni/bridge".into(),
            json!({"cniVersion": "1.0.0", "name": "bench-bridge", "type": "bridge", "bridge": "twdbr0",
                   "isGateway": true, "ipMasq": false, "ipam": hl("10.151.0.0/16", "hl-bridge")}),
        ),
    ];

    let load_before = loadavg();
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    for conc in [1usize, 20] {
        // p50 and p99 per repetition, per plugin.
        let mut p50 = vec![Vec::new(); plugins.len()];
        let mut p99 = vec![Vec::new(); plugins.len()];
        for rep in 0..reps {
            let mut order: Vec<usize> = (0..plugins.len()).collect();
            if rep % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let (name, bin, conf) = &plugins[i];
                let tag = format!("{}c{conc}r{rep}", &name[..1]);
                each(&twill.ns, bin, conf, &pods, conc, "ADD", &tag);
                let del = each(&twill.ns, bin, conf, &pods, conc, "DEL", &tag);
                p50[i].push(percentile_ms(&del, 50.0));
                p99[i].push(percentile_ms(&del, 99.0));
            }
        }
        let mode = if conc == 1 {
            "sequential".to_string()
        } else {
            format!("{conc} at a time")
        };
        let (t50, t99) = (median(p50[0].clone()), median(p99[0].clone()));
        let mut row = vec![format!("DEL {mode}")];
        for i in 0..plugins.len() {
            row.push(spread(&p50[i]));
            row.push(spread(&p99[i]));
        }
        for i in 1..plugins.len() {
            row.push(format!(
                "{} / {}",
                ratio(t50, median(p50[i].clone())),
                ratio(t99, median(p99[i].clone()))
            ));
        }
        rows.push(row);
        json_rows.push(json!({"concurrency": conc, "pods": pods_n, "reps": reps,
            "p50_ms": {"twill": p50[0], "ptp": p50[1], "bridge": p50[2]},
            "p99_ms": {"twill": p99[0], "ptp": p99[1], "bridge": p99[2]}}));
    }
    let load_after = loadavg();
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let mut md = format!(
        "CNI DEL latency, ms: median (min–max) over {reps} repetitions of each repetition's \
         p50 / p99, {pods_n} pods each; order alternating; host sides in one namespace; \
         {build} build; load average {load_before} before, {load_after} after\n\n"
    );
    md.push_str(&table(
        &[
            "mode",
            "twill p50",
            "twill p99",
            "ptp p50",
            "ptp p99",
            "bridge p50",
            "bridge p99",
            "twill/ptp p50 / p99",
            "twill/bridge p50 / p99",
        ],
        &rows,
    ));
    println!("{md}");
    if let Ok(path) = std::env::var("CNI_DEL_STEPS") {
        let steps: String = twill
            .log()
            .lines()
            .filter(|l| l.contains("DEL steps"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, steps)?;
    }
    write_results(
        "cni_del",
        json!({"rows": json_rows, "binaries": bins::binary("twill-node").display().to_string(),
            "loadavg_before": load_before, "loadavg_after": load_after}),
        &md,
    )?;
    Ok(())
}
