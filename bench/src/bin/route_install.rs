//! Route install benchmark: install, then remove, N routes (default
//! 100 000 IPv4 /32s via a next hop on a veth, protocol 116) in a fresh
//! network namespace, once with Twill's route programmer and once with
//! `ip -batch` of the same routes, the order alternating between rounds
//! (ip, Twill, Twill, ip, …), in the same run. Prints a markdown table and
//! writes bench/results/route_install.{json,md}.
//!
//! `route_install [N] [ROUNDS]` (root). Rates are routes per second over
//! the whole install (or removal) as the caller sees it: for Twill from
//! handing the complete set to the programmer until `sync()` returns, for
//! ip from starting `ip -batch` until it exits. The median of ROUNDS
//! (default 5) with min–max is reported.

use std::fmt::Write as _;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use twill_felix::dataplane::routes::{RouteConfig, RouteProgrammer};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 2);

struct Ns(String);

impl Ns {
    fn new() -> Ns {
        let name = format!("twbench{}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Ns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["link", "add", "bv0", "type", "veth", "peer", "name", "bv1"]);
        ns.ip(&["addr", "add", "10.255.0.1/30", "dev", "bv0"]);
        ns.ip(&["link", "set", "bv0", "up"]);
        ns.ip(&["link", "set", "bv1", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", self.0.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    fn twill_routes(&self) -> usize {
        self.ip(&["route", "show", "proto", "116"]).lines().count()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn prefixes(n: usize) -> Vec<IpNetwork> {
    (0..n)
        .map(|i| {
            let i = i as u32;
            let a = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i);
            IpNetwork::new(IpAddr::V4(a), 32).expect("a /32")
        })
        .collect()
}

/// `ip -batch` of the lines; returns the elapsed time.
fn ip_batch(ns: &Ns, dir: &std::path::Path, name: &str, lines: &str) -> Duration {
    let path = dir.join(name);
    std::fs::write(&path, lines).expect("write batch file");
    let t = Instant::now();
    ns.ip(&["-batch", path.to_str().expect("utf-8 path")]);
    t.elapsed()
}

/// Runs the programmer inside the namespace: install all, then remove all.
fn twill_round(ns: &Ns, routes: &[IpNetwork]) -> (Duration, Duration, Duration) {
    let path = format!("/run/netns/{}", ns.0);
    let routes = routes.to_vec();
    std::thread::spawn(move || {
        let f = File::open(&path).expect("open netns");
        // SAFETY: moves only this fresh thread into the benchmark namespace.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let cfg = RouteConfig {
                resync_interval: Duration::from_secs(3600),
                ..RouteConfig::default()
            };
            let p = RouteProgrammer::start(cfg).await.expect("start programmer");
            p.resync().await.expect("initial resync");
            let all: Vec<(IpNetwork, Vec<IpAddr>)> = routes
                .iter()
                .map(|r| (*r, vec![IpAddr::V4(GATEWAY)]))
                .collect();
            let t = Instant::now();
            p.set_bgp_routes(all);
            let rep = p.sync().await.expect("sync");
            let install = t.elapsed();
            assert_eq!(rep.added, routes.len(), "install: {rep:?}");
            assert_eq!(rep.failed, 0, "install: {rep:?}");
            // A periodic resync with everything in place: dump, diff, nothing to do.
            let t = Instant::now();
            let rep = p.resync().await.expect("resync");
            let resync = t.elapsed();
            assert_eq!(rep, Default::default(), "resync found drift: {rep:?}");
            let t = Instant::now();
            p.set_bgp_routes(Vec::new());
            let rep = p.sync().await.expect("sync");
            let remove = t.elapsed();
            assert_eq!(rep.deleted, routes.len(), "remove: {rep:?}");
            assert_eq!(rep.failed, 0, "remove: {rep:?}");
            (install, remove, resync)
        })
    })
    .join()
    .expect("benchmark thread")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5).max(1);
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root (network namespaces)"
    );
    let load_before = loadavg();
    let ns = Ns::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = prefixes(n);
    let mut add = String::new();
    let mut del = String::new();
    for r in &routes {
        let _ = writeln!(add, "route add {r} via {GATEWAY} proto 116");
        let _ = writeln!(del, "route del {r} proto 116");
    }
    let (mut ip_in, mut ip_out, mut tw_in, mut tw_out) = (vec![], vec![], vec![], vec![]);
    let mut tw_resync = vec![];
    for round in 0..rounds {
        let ip_round = || {
            let a = ip_batch(&ns, dir.path(), "add", &add);
            assert_eq!(ns.twill_routes(), n, "ip -batch installed every route");
            let d = ip_batch(&ns, dir.path(), "del", &del);
            assert_eq!(ns.twill_routes(), 0, "ip -batch removed every route");
            (a, d)
        };
        let twill = || {
            let r = twill_round(&ns, &routes);
            assert_eq!(ns.twill_routes(), 0, "twill removed every route");
            r
        };
        let ((a, d), (ti, to, tr)) = if round % 2 == 0 {
            let i = ip_round();
            (i, twill())
        } else {
            let t = twill();
            (ip_round(), t)
        };
        eprintln!(
            "round {}: ip -batch {:.3}s + {:.3}s, twill {:.3}s + {:.3}s (no-op resync {:.3}s)",
            round + 1,
            a.as_secs_f64(),
            d.as_secs_f64(),
            ti.as_secs_f64(),
            to.as_secs_f64(),
            tr.as_secs_f64()
        );
        ip_in.push(a);
        ip_out.push(d);
        tw_in.push(ti);
        tw_out.push(to);
        tw_resync.push(tr);
    }
    let secs = |v: &[Duration]| v.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>();
    let rates = |v: &[Duration], k: usize| -> Vec<f64> {
        v.iter().map(|d| (k * n) as f64 / d.as_secs_f64()).collect()
    };
    let sum = |a: &[Duration], b: &[Duration]| -> Vec<Duration> {
        a.iter().zip(b).map(|(x, y)| *x + *y).collect()
    };
    let (tw_both, ip_both) = (sum(&tw_in, &tw_out), sum(&ip_in, &ip_out));
    let phases = [
        ("install", rates(&tw_in, 1), rates(&ip_in, 1)),
        ("remove", rates(&tw_out, 1), rates(&ip_out, 1)),
        ("install + remove", rates(&tw_both, 2), rates(&ip_both, 2)),
    ];
    let resync = median(tw_resync.clone());
    let (ii, io, ti, to) = (
        median(ip_in.clone()),
        median(ip_out.clone()),
        median(tw_in.clone()),
        median(tw_out.clone()),
    );
    let rows = [
        ("install", rate(n, ti), rate(n, ii)),
        ("remove", rate(n, to), rate(n, io)),
        (
            "install + remove",
            rate(2 * n, ti + to),
            rate(2 * n, ii + io),
        ),
    ];
    let cpus = std::thread::available_parallelism().map_or(0, |p| p.get());
    let mut md = format!(
        "{n} IPv4 /32 routes via a veth next hop, proto 116, fresh network namespace; {rounds} rounds alternating ip -batch and Twill (ip, Twill, Twill, ip, …); median (min–max) of the per-round rates, ratio of the medians ({cpus} CPUs, target ≥ 0.8 of ip -batch).\n\n"
    );
    let table_rows: Vec<Vec<String>> = phases
        .iter()
        .map(|(phase, t, i)| {
            let (t, i) = (twill_bench::Spread::of(t), twill_bench::Spread::of(i));
            vec![
                phase.to_string(),
                t.show(0),
                i.show(0),
                format!("{:.2}", t.median / i.median),
            ]
        })
        .collect();
    md.push_str(&twill_bench::table(
        &["phase", "twill routes/s", "ip -batch routes/s", "ratio"],
        &table_rows,
    ));
    let r = twill_bench::Spread::of(&secs(&tw_resync));
    md.push_str(&format!(
        "\nA full resync with all {n} routes in place (dump of protocol 116, diff, nothing to apply): {:.0} ms ({:.0}–{:.0}).\n",
        r.median * 1000.0,
        r.min * 1000.0,
        r.max * 1000.0
    ));
    let load_after = loadavg();
    md.push_str(&format!(
        "\n{} build; load average {load_before} before, {load_after} after (shared machine).\n",
        if cfg!(debug_assertions) {
            "Debug"
        } else {
            "Release"
        }
    ));
    print!("{md}");
    let json = serde_json::json!({
        "benchmark": "route_install",
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "routes": n,
        "rounds": rounds,
        "cpus": cpus,
        "kernel": run("uname", &["-r"]).trim(),
        "route": "IPv4 /32 via 10.255.0.2 (veth), proto 116, table main",
        "target_ratio": 0.8,
        "phases": rows.iter().map(|(p, t, i)| serde_json::json!({
            "phase": p, "twill_routes_per_s": t.round(), "ip_batch_routes_per_s": i.round(),
            "ratio": (t / i * 100.0).round() / 100.0,
        })).collect::<Vec<_>>(),
        "round_seconds": {
            "twill_install": secs(&tw_in), "twill_remove": secs(&tw_out),
            "ip_batch_install": secs(&ip_in), "ip_batch_remove": secs(&ip_out),
            "twill_noop_resync": secs(&tw_resync),
        },
        "seconds": {
            "twill_install": ti.as_secs_f64(), "twill_remove": to.as_secs_f64(),
            "ip_batch_install": ii.as_secs_f64(), "ip_batch_remove": io.as_secs_f64(),
            "twill_noop_resync": resync.as_secs_f64(),
        },
    });
    twill_bench::write_results("route_install", json, &md).expect("write results");
}

/// The 1, 5 and 15 minute load averages (the machine is shared).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
