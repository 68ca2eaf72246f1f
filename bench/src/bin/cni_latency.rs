//! CNI ADD and DEL latency: twill-cni + twill-node against Debian's bridge +
//! host-local setting up the same pods, on this machine, in the same run;
//! sequentially and 20 at a time. Each mode runs `REPS` repetitions of
//! ADD-all-then-DEL-all per plugin, the order alternating (Twill, bridge,
//! bridge, Twill, …); the table gives the median over repetitions of each
//! repetition's p50 and p99, with min–max. Plus IPAM allocations per
//! second on one node (embedded store).
//!
//! Run with `scripts/bench.sh cni-latency` (release build, as root).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use twill_bench::{Spread, percentile_ms, ratio, table, write_results};
use twill_tests::cni::{Attachment, call};
use twill_tests::{Netns, TestNode, bins, require_binary, require_root};

const PODS: usize = 100;
const REPS: usize = 5;

struct Samples {
    add: Vec<Duration>,
    del: Vec<Duration>,
}

fn att(id: &str, pod: &Netns) -> Attachment {
    Attachment {
        container_id: id.into(),
        netns: format!("/run/netns/{}", pod.name()),
        ifname: "eth0".into(),
        args: String::new(),
    }
}

/// ADDs then DELs every pod once, `concurrency` at a time, timing each call.
fn run(
    host: &Netns,
    plugin: &std::path::Path,
    conf: &Value,
    pods: &[Netns],
    concurrency: usize,
    tag: &str,
) -> Samples {
    let s = Mutex::new(Samples {
        add: Vec::new(),
        del: Vec::new(),
    });
    {
        for cmd in ["ADD", "DEL"] {
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
                            let out = call(host, plugin, cmd, &a, conf);
                            let d = t.elapsed();
                            assert!(
                                out.success,
                                "{tag} {cmd} pod {i}: {} {}",
                                out.json, out.stderr
                            );
                            let mut g = s.lock().unwrap();
                            if cmd == "ADD" {
                                g.add.push(d)
                            } else {
                                g.del.push(d)
                            }
                        }
                    });
                }
            });
        }
    }
    s.into_inner().unwrap()
}

fn ipam_rate() -> anyhow::Result<(f64, f64)> {
    use twill_api::Store;
    use twill_api::resources::{IPPool, IPPoolSpec};
    use twill_api::store::embedded::EmbeddedStore;
    use twill_ipam::{AssignRequest, Ipam};
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = Store::new(EmbeddedStore::open(dir.path().join("ipam.db"))?);
        store
            .create(&IPPool::new(
                "p",
                IPPoolSpec {
                    cidr: "10.128.0.0/16".into(),
                    ..Default::default()
                },
            ))
            .await?;
        let ipam = Ipam::new(store, "bench");
        let n = 5000;
        let t = Instant::now();
        for i in 0..n {
            ipam.assign(&AssignRequest {
                handle: format!("h{i}"),
                ..Default::default()
            })
            .await?;
        }
        let assign = n as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        for i in 0..n {
            ipam.release_handle(&format!("h{i}")).await?;
        }
        let release = n as f64 / t.elapsed().as_secs_f64();
        Ok((assign, release))
    })
}

fn main() -> anyhow::Result<()> {
    require_root();
    for p in ["bridge", "host-local"] {
        require_binary(&format!("/usr/lib/cni/{p}"), "containernetworking-plugins");
    }
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("store.db");
    let pool = "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: bench\nspec:\n  cidr: 10.150.0.0/16\n";
    let mut apply = std::process::Command::new(bins::binary("twillctl"))
        .args(["apply", "-f", "-"])
        .env("TWILL_DATASTORE_PATH", &db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    use std::io::Write;
    apply
        .stdin
        .take()
        .expect("stdin")
        .write_all(pool.as_bytes())?;
    anyhow::ensure!(apply.wait()?.success(), "twillctl apply failed");

    let twill = TestNode::start(
        "twbn",
        "bench",
        &db,
        dir.path(),
        "10.96.150.1/32",
        &["--status-interval", "60"],
    );
    let bridge_host = Netns::new("twbn");
    let pods: Vec<Netns> = (0..PODS).map(|_| Netns::new("twbp")).collect();
    let twill_conf = twill.netconf("1.0.0");
    let bridge_conf = json!({
        "cniVersion": "1.0.0", "name": "bench-bridge", "type": "bridge", "bridge": "twbr0",
        "isGateway": true, "ipMasq": false,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.151.0.0/16"}]], "dataDir": dir.path().join("host-local")}
    });
    let twill_cni = bins::binary("twill-cni");
    let bridge = std::path::PathBuf::from("/usr/lib/cni/bridge");

    let load_before = loadavg();
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    for conc in [1usize, 20] {
        // Per repetition: (twill, bridge) samples; the order alternates so
        // neither always gets the warmer caches or the quieter machine.
        let mut reps: Vec<(Option<Samples>, Option<Samples>)> = Vec::new();
        for rep in 0..REPS {
            let mut this = (None, None);
            for twill_turn in twill_bench::alternate(rep, true, false) {
                if twill_turn {
                    this.0 = Some(run(
                        &twill.ns,
                        &twill_cni,
                        &twill_conf,
                        &pods,
                        conc,
                        &format!("t{conc}r{rep}"),
                    ));
                } else {
                    this.1 = Some(run(
                        &bridge_host,
                        &bridge,
                        &bridge_conf,
                        &pods,
                        conc,
                        &format!("b{conc}r{rep}"),
                    ));
                }
            }
            reps.push(this);
        }
        for op in ["ADD", "DEL"] {
            let pick = |s: &Option<Samples>| -> Vec<Duration> {
                s.as_ref()
                    .map(|s| {
                        if op == "ADD" {
                            s.add.clone()
                        } else {
                            s.del.clone()
                        }
                    })
                    .unwrap_or_default()
            };
            let per_rep = |twill_side: bool, p: f64| -> Vec<f64> {
                reps.iter()
                    .map(|(t, b)| percentile_ms(&pick(if twill_side { t } else { b }), p))
                    .collect()
            };
            let (t50, t99, b50, b99) = (
                Spread::of(&per_rep(true, 50.0)),
                Spread::of(&per_rep(true, 99.0)),
                Spread::of(&per_rep(false, 50.0)),
                Spread::of(&per_rep(false, 99.0)),
            );
            let mode = if conc == 1 {
                "sequential".to_string()
            } else {
                format!("{conc} at a time")
            };
            rows.push(vec![
                format!("{op} {mode}"),
                t50.show(1),
                t99.show(1),
                b50.show(1),
                b99.show(1),
                ratio(t50.median, b50.median),
                ratio(t99.median, b99.median),
            ]);
            json_rows.push(
                json!({"op": op, "concurrency": conc, "pods": PODS, "reps": REPS,
                "twill_p50_ms": per_rep(true, 50.0), "twill_p99_ms": per_rep(true, 99.0),
                "bridge_p50_ms": per_rep(false, 50.0), "bridge_p99_ms": per_rep(false, 99.0),
                "ratio_p50": t50.median / b50.median, "ratio_p99": t99.median / b99.median}),
            );
        }
    }
    let load_after = loadavg();
    let (assign, release) = ipam_rate()?;
    let mut md = String::from(
        "CNI latency, ms (twill-cni + twill-node vs bridge + host-local, same pods, same run; ",
    );
    md.push_str(&format!(
        "{PODS} pods per repetition, {REPS} repetitions per mode alternating Twill, bridge, bridge, Twill, …; median (min–max) over repetitions of each repetition's p50 / p99; ratios of the medians, lower is better for Twill)\n\n"
    ));
    md.push_str(&table(
        &[
            "operation",
            "twill p50",
            "twill p99",
            "bridge p50",
            "bridge p99",
            "ratio p50",
            "ratio p99",
        ],
        &rows,
    ));
    md.push_str(&format!(
        "\nIPAM on one node (embedded store): {assign:.0} allocations/s, {release:.0} releases/s\n\n{} build; load average {load_before} before the CNI runs, {load_after} after (shared machine).\n",
        if cfg!(debug_assertions) {
            "Debug"
        } else {
            "Release"
        }
    ));
    println!("{md}");
    write_results(
        "cni_latency",
        json!({"pods": PODS, "reps": REPS, "loadavg_before": load_before, "loadavg_after": load_after, "rows": json_rows, "ipam_allocations_per_s": assign, "ipam_releases_per_s": release}),
        &md,
    )?;
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
