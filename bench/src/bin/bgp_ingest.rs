//! BGP ingest: how fast and how lean a receiver takes in a full table over a
//! real eBGP session, against BIRD 2, GoBGP and FRR on this machine in the
//! same run.
//!
//! A BIRD injector in one namespace announces N IPv4 /24s (`protocol static`
//! blackholes from 32.0.0.0 upward; 32/8 so no prefix overlaps the link
//! addresses) over a veth (10.97.0.1/30 ↔ 10.97.0.2/30) to a receiver in
//! another namespace: twill-bgpd, BIRD 2, GoBGP, FRR bgpd (`-Z`, no zebra) in
//! turn. Each receiver gets a freshly started, passive injector (its table
//! loaded before the receiver starts) and a fresh namespace; it opens the session itself, imports everything,
//! exports nothing and installs no kernel routes. The receiver's own CLI is
//! polled every ~50 ms: "Established → all" runs from the first poll that
//! shows the session Established to the first that shows N prefixes in its
//! RIB. Peak RSS is the receiver's VmHWM, CPU its utime+stime (all threads)
//! at that moment — both from /proc/PID.
//!
//! The node-mesh shape: one injector namespace with 100 addresses on its
//! veth and 100 BIRD instances (AS 65101..65200, one per address: BIRD
//! serialises sessions to one neighbour address within an instance), each
//! exporting its own 10 /24s (20.i.j.0/24), to a receiver with 100
//! neighbours; timed from the receiver's start to all 1000 prefixes.
//!
//! Namespaces and daemons sit in guards from `twill-tests` (deleted / killed
//! by recorded name and PID, also on panic).
//! Run (root): `target/release/bgp_ingest` (100k, 1M, mesh), or e.g.
//! `bgp_ingest 100000 mesh` for a subset; receiver names (`twill`, `bird`,
//! `gobgp`, `frr`) pick receivers. `TWILL_BENCH_REPS` runs per receiver
//! (default 5), the receivers' order alternating between runs; the table
//! gives median (min–max).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;
use twill_bench::bgp_lab::{Kind, Row, Shape, run_one};
use twill_bench::{Spread, ratio, table, write_results};
use twill_tests::{require_binary, require_root};

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() -> Result<()> {
    require_root();
    for (bin, pkg) in [
        ("bird", "bird2"),
        ("birdc", "bird2"),
        ("gobgpd", "gobgpd"),
        ("gobgp", "gobgpd"),
        ("/usr/lib/frr/bgpd", "frr"),
        ("vtysh", "frr"),
    ] {
        require_binary(bin, pkg);
    }
    let twill_bin: PathBuf = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .join("twill-bgpd");
    if !twill_bin.is_file() {
        bail!(
            "{} is missing: cargo build --release -p twill-bgpd --bins",
            twill_bin.display()
        );
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut shapes = Vec::new();
    let mut kinds = Vec::new();
    for a in &args {
        if let Some(k) = Kind::ALL
            .into_iter()
            .find(|k| k.name().to_lowercase().starts_with(&a.to_lowercase()))
        {
            kinds.push(k);
        } else if a == "mesh" {
            shapes.push(Shape::Mesh);
        } else {
            let n: usize = a
                .replace('_', "")
                .parse()
                .with_context(|| format!("size {a:?}: give a prefix count or `mesh`"))?;
            shapes.push(Shape::Table(n));
        }
    }
    if shapes.is_empty() {
        shapes = vec![Shape::Table(100_000), Shape::Table(1_000_000), Shape::Mesh];
    }

    if kinds.is_empty() {
        kinds = Kind::ALL.to_vec();
    }

    let reps: usize = std::env::var("TWILL_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let tmp = tempfile::tempdir()?;
    let mut rows: Vec<Row> = Vec::new();
    for (si, shape) in shapes.iter().enumerate() {
        eprintln!("== {}", shape.label());
        for rep in 0..reps {
            // The receivers' order alternates: forward in even repetitions,
            // reversed in odd ones (A,B,C,D,D,C,B,A,…).
            let mut order: Vec<(usize, Kind)> = kinds.iter().copied().enumerate().collect();
            if rep % 2 == 1 {
                order.reverse();
            }
            for (ki, kind) in order {
                // A fresh injector and namespaces per receiver: a reused
                // injector (session restarted after the old link vanished)
                // sent its table seconds later than a fresh one.
                let port = 50_051 + (si * 100 + rep * 10 + ki) as u16;
                let dir = tmp.path().join(format!("s{si}-r{rep}-{ki}"));
                rows.push(run_one(
                    *shape,
                    kind,
                    &dir,
                    port,
                    &twill_bin,
                    Duration::ZERO,
                )?);
            }
        }
    }

    let header = [
        "shape",
        "receiver",
        "Established → all (s)",
        "start → all (s)",
        "peak RSS (MiB)",
        "CPU (s)",
        "time / BIRD",
        "RSS / BIRD",
    ];
    let mut table_rows = Vec::new();
    let mut json_rows = Vec::new();
    let mut notes = Vec::new();
    for shape in &shapes {
        // The mesh is timed from the receiver's start, the tables from Established.
        let time = |r: &Row| match shape {
            Shape::Mesh => r.start_to_all,
            Shape::Table(_) => r.est_to_all,
        };
        let of = |k: Kind| -> Vec<&Row> {
            rows.iter()
                .filter(|r| r.shape.label() == shape.label() && r.kind == k)
                .collect()
        };
        let spread = |k: Kind, f: &dyn Fn(&Row) -> Option<f64>| -> Spread {
            Spread::of(&of(k).iter().filter_map(|r| f(r)).collect::<Vec<_>>())
        };
        let t_of = |k: Kind| spread(k, &time);
        let rss_of = |k: Kind| spread(k, &|r: &Row| Some(r.peak_rss_kib as f64 / 1024.0));
        let bird_t = t_of(Kind::Bird);
        let bird_rss = rss_of(Kind::Bird);
        for &k in &kinds {
            let runs = of(k);
            let missed = runs.iter().filter(|r| !r.complete).count();
            let (t, rss) = (t_of(k), rss_of(k));
            let est = spread(k, &|r: &Row| r.est_to_all);
            let start = spread(k, &|r: &Row| r.start_to_all);
            let cpu = spread(k, &|r: &Row| Some(r.cpu_s));
            let with_missed = |s: String| {
                if missed > 0 {
                    format!("{s}, {missed} of {} timed out", runs.len())
                } else {
                    s
                }
            };
            let has_bird = kinds.contains(&Kind::Bird);
            let (tr, mr) = if has_bird {
                (
                    ratio(t.median, bird_t.median),
                    ratio(rss.median, bird_rss.median),
                )
            } else {
                ("-".into(), "-".into())
            };
            table_rows.push(vec![
                shape.label(),
                k.name().to_string(),
                with_missed(est.show(2)),
                start.show(2),
                rss.show(1),
                cpu.show(2),
                tr.clone(),
                mr.clone(),
            ]);
            json_rows.push(json!({
                "shape": shape.label(),
                "prefixes_expected": shape.total(),
                "receiver": k.name(),
                "runs": runs.iter().map(|r| json!({
                    "complete": r.complete,
                    "prefixes_seen": r.prefixes,
                    "established_to_first_s": r.est_to_first,
                    "established_to_all_s": r.est_to_all,
                    "start_to_all_s": r.start_to_all,
                    "peak_rss_kib": r.peak_rss_kib,
                    "cpu_s": r.cpu_s,
                })).collect::<Vec<_>>(),
                "time_s": t.json(), "peak_rss_mib": rss.json(),
                "time_vs_bird": tr,
                "rss_vs_bird": mr,
            }));
        }
        if kinds.contains(&Kind::Twill) && kinds.contains(&Kind::Gobgp) {
            let (tt, gt) = (t_of(Kind::Twill).median, t_of(Kind::Gobgp).median);
            if tt.is_finite() && gt.is_finite() {
                notes.push(format!(
                    "- {}: twill-bgpd is {:.1}x as fast as GoBGP (medians {:.2} s vs {:.2} s)",
                    shape.label(),
                    gt / tt,
                    tt,
                    gt
                ));
            }
        }
        if let Shape::Table(n) = shape
            && *n >= 1_000_000
            && kinds.contains(&Kind::Twill)
            && kinds.contains(&Kind::Bird)
            && kinds.contains(&Kind::Gobgp)
        {
            let (tt, bt, gt) = (
                t_of(Kind::Twill).median,
                bird_t.median,
                t_of(Kind::Gobgp).median,
            );
            let mark = |ok: bool| if ok { "met" } else { "NOT met" };
            notes.push(format!(
                "- targets at {} (medians): time <= BIRD {}, peak RSS <= BIRD {}, >= 5x faster than GoBGP {}",
                shape.label(),
                mark(tt <= bt),
                mark(rss_of(Kind::Twill).median <= bird_rss.median),
                mark(gt >= 5.0 * tt)
            ));
        }
    }
    let mut md = table(&header, &table_rows);
    md.push('\n');
    md.push_str(&notes.join("\n"));
    md.push_str(&format!(
        "\n\nMedian (min–max) of {reps} runs per receiver, the receivers' order alternating between runs (forward, reversed, …); ratios of the medians. Load average at the end: {}.",
        loadavg()
    ));
    md.push_str(
        "\n\nTables: time from the session's Established to all prefixes in the receiver's RIB; mesh: from the receiver's start to all 1000 prefixes (ratios use those). Peak RSS = VmHWM, CPU = utime+stime of the receiver process, both when the last prefix arrived. Injector: BIRD 2, passive, in its own namespace over a veth; receivers import all, export nothing, no kernel routes.\n",
    );
    println!("{md}");
    write_results(
        "bgp_ingest",
        json!({ "benchmark": "bgp_ingest", "reps": reps, "rows": json_rows, "notes": notes }),
        &md,
    )?;
    Ok(())
}
