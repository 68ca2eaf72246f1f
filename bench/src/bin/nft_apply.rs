//! Kernel writes of Twill's nftables table: libnftables in-process
//! (`twill_nft`) against one `nft -f -` process per transaction (what
//! twill-node did before), same scripts, same network namespace, the
//! methods alternating change by change:
//!
//! * (a) one small change at a table of 1k pods (250 on this node) and 1k
//!   policies (policy_control's cluster): a NetworkPolicy edit as the
//!   engine's incremental renderer scripts it, and one set element added
//!   and removed; p50 / p99 per method over `rounds` × `changes`;
//! * (b) the full load of the 10k-policy table of the dataplane benchmark
//!   (policy_dataplane's `twill_table` with one policy per server, copied
//!   here) from nothing, as rendered (`Table::script`), timed per method
//!   alternating; and the same table with two pods in every client
//!   selection, which makes each a named set (10k sets), to show what the
//!   kernel's set lookup still costs when selections need sets.
//!
//! Run as root: `cargo run --release -p twill-bench --bin nft_apply [-- --quick]`.
//! `--dump DIR` writes the scripts of (b) to DIR and exits;
//! `--changes-only` runs (a) alone (results in `nft_apply_changes.*`).
//! `--phases [--script FILE]` splits (b)'s full load of the as-rendered
//! table (or FILE, e.g. from `--dump`) into where its time goes: `nft -c -f`
//! (nft parses, evaluates and encodes; the kernel takes the batch message by
//! message, then aborts it: no batch end), `nft -f` (the same and the
//! commit) and libnftables in this thread, each with its user and system
//! CPU (results in `nft_apply_phases.*`).
//! Times are wall clock; CPU is this thread's (libnftables and the
//! kernel's netlink work in its system calls) plus the `nft` children's.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;
use twill_bench::policy_cluster::{NODE, inputs, policy};
use twill_policy::incremental::Incremental;
use twill_policy::ir::{TABLE, Table};
use twill_policy::model::{Endpoint, Model};
use twill_tests::{Netns, require_binary, require_root};

// (a) uses policy_control's cluster (`twill_bench::policy_cluster`).

// ---- (b) policy_dataplane's table (keep in step with its `twill_table`) ----

const CLIENT_IP: &str = "10.80.1.2";
const SERVER_IP: &str = "10.80.2.2";
const FAKE_PODS: usize = 200;

fn client_of(i: usize) -> IpAddr {
    IpAddr::from([
        10,
        82 + (i / 62500) as u8,
        (i / 250 % 250) as u8,
        (i % 250 + 1) as u8,
    ])
}

/// The dataplane benchmark's table with `n` policies; `per` pods in each
/// policy's client selection (1: the benchmark's own shape).
fn dataplane_table(n: usize, per: usize) -> Table {
    let ep =
        |name: String, labels: [(String, String); 1], ip: IpAddr, node: &str, iface| Endpoint {
            namespace: "bench".into(),
            name,
            labels: labels.into(),
            ips: vec![ip],
            ports: Vec::new(),
            node: node.into(),
            iface,
        };
    let last = n.saturating_sub(1);
    let mut endpoints = vec![
        ep(
            "client".into(),
            [("role".into(), format!("client{last}"))],
            CLIENT_IP.parse().expect("ip"),
            "node",
            Some("vc".into()),
        ),
        ep(
            "server".into(),
            [("app".into(), format!("svc{last}"))],
            SERVER_IP.parse().expect("ip"),
            "node",
            Some("vs".into()),
        ),
    ];
    for k in 0..FAKE_PODS.min(last) {
        endpoints.push(ep(
            format!("pod{k}"),
            [("app".into(), format!("svc{k}"))],
            IpAddr::from([10, 81, (k / 250) as u8, (k % 250 + 1) as u8]),
            "node",
            Some(format!("f{k}")),
        ));
    }
    let mut policies = Vec::new();
    for i in 0..n {
        let is_last = i + 1 == n;
        if !is_last {
            endpoints.push(ep(
                format!("client{i}"),
                [("role".into(), format!("client{i}"))],
                client_of(i),
                "other",
                None,
            ));
        }
        for extra in 1..per {
            let IpAddr::V4(a) = client_of(i) else {
                unreachable!("IPv4")
            };
            let [_, b, c, d] = a.octets();
            endpoints.push(ep(
                format!("client{i}x{extra}"),
                [("role".into(), format!("client{i}"))],
                IpAddr::from([10, b + 4 * extra as u8, c, d]),
                "other",
                None,
            ));
        }
        let app = if is_last {
            format!("svc{i}")
        } else {
            format!("svc{}", i % FAKE_PODS)
        };
        let np: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": format!("np{i}"), "namespace": "bench"},
            "spec": {"podSelector": {"matchLabels": {"app": app}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": format!("client{i}")}}}],
                    "ports": [{"port": 5201}, {"port": 80}]}]}
        }))
        .expect("policy");
        policies.push(twill_policy::compile_network_policy(&np).expect("compile"));
    }
    twill_policy::render(&Model::new(endpoints, BTreeMap::new(), policies), "node")
}

// ---- the two ways to the kernel ----

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Via {
    /// `twill_nft::apply_script`: a libnftables context per call.
    Lib,
    /// One libnftables context kept for every call.
    LibKept,
    /// `nft -f -`, one process per transaction.
    Binary,
}

impl Via {
    const ALL: [Via; 3] = [Via::Lib, Via::LibKept, Via::Binary];
    fn name(self) -> &'static str {
        match self {
            Via::Lib => "libnftables, context per call",
            Via::LibKept => "libnftables, one context kept",
            Via::Binary => "nft -f - (process per change)",
        }
    }
}

fn nft_binary(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(script.as_bytes()).map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

struct Kernel {
    kept: twill_nft::Nft,
    /// CPU of the last apply: this thread (libnftables and the kernel's
    /// netlink work in its syscalls) plus reaped children (nft).
    last_cpu: Duration,
}

/// CPU time of this thread plus that of reaped child processes.
fn cpu_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    // SAFETY: getrusage fills the struct we pass.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut r) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32) + tv(r.ru_utime) + tv(r.ru_stime)
}

impl Kernel {
    /// Applies `script` via `via`; the wall time.
    fn apply(&mut self, via: Via, script: &str) -> Duration {
        let c = cpu_now();
        let t = Instant::now();
        let r = match via {
            Via::Lib => twill_nft::apply_script(script).map_err(|e| e.to_string()),
            Via::LibKept => self.kept.apply(script).map_err(|e| e.to_string()),
            Via::Binary => nft_binary(script),
        };
        let d = t.elapsed();
        self.last_cpu = cpu_now().saturating_sub(c);
        if let Err(e) = r {
            panic!(
                "{via:?} refused:\n{e}\n--- script (start) ---\n{}",
                head(script)
            );
        }
        d
    }
}

fn head(s: &str) -> String {
    s.lines().take(20).collect::<Vec<_>>().join("\n")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(v: &[Duration], p: f64) -> f64 {
    twill_bench::percentile_ms(v, p)
}

/// Median, min, max of values in ms.
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    (med, s[0], s[n - 1])
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The full loads measured: the benchmark's table as rendered, and with
/// two pods per client selection (every selection a named set).
fn variants() -> Vec<(&'static str, Table)> {
    vec![
        (
            "as rendered: one client per selection (inline, no set)",
            dataplane_table(10_000, 1),
        ),
        (
            "two clients per selection (a named set each)",
            dataplane_table(10_000, 2),
        ),
    ]
}

fn main() {
    require_root();
    require_binary("nft", "nftables");
    if let Err(e) = twill_nft::library_available() {
        panic!("{e}");
    }
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // Only (a), written to nft_apply_changes.* (the 10k render is slow in
    // a debug build).
    let changes_only = args.iter().any(|a| a == "--changes-only");
    if let Some(i) = args.iter().position(|a| a == "--dump") {
        let dir = args.get(i + 1).expect("--dump DIR");
        std::fs::create_dir_all(dir).expect("mkdir");
        for (k, (name, t)) in variants().into_iter().enumerate() {
            let path = format!("{dir}/variant{k}.nft");
            std::fs::write(&path, t.script()).expect("write");
            println!("{path}: {name}");
        }
        return;
    }
    if args.iter().any(|a| a == "--phases") {
        let script = match args.iter().position(|a| a == "--script") {
            Some(i) => std::fs::read_to_string(args.get(i + 1).expect("--script FILE"))
                .expect("read --script"),
            None => dataplane_table(10_000, 1).script(),
        };
        let ns = Netns::new("twnp");
        let name = ns.name().to_string();
        let report = twill_tests::netns::spawn_in(&name, move || phases(quick, &script))
            .join()
            .expect("benchmark thread");
        drop(ns);
        print!("{}", report.0);
        if !quick
            && let Err(e) = twill_bench::write_results("nft_apply_phases", report.1, &report.0)
        {
            eprintln!("nft_apply: writing results: {e}");
        }
        return;
    }
    let ns = Netns::new("twna");
    let name = ns.name().to_string();
    // Everything runs on one thread inside the namespace: libnftables'
    // sockets and the nft processes it forks are all there.
    let report = twill_tests::netns::spawn_in(&name, move || run(quick, changes_only))
        .join()
        .expect("benchmark thread");
    drop(ns);
    print!("{}", report.0);
    if !quick
        && let Err(e) = twill_bench::write_results(
            if changes_only {
                "nft_apply_changes"
            } else {
                "nft_apply"
            },
            report.1,
            &report.0,
        )
    {
        eprintln!("nft_apply: writing results: {e}");
    }
}

fn run(quick: bool, changes_only: bool) -> (String, serde_json::Value) {
    let rounds = if quick { 2 } else { 5 };
    let changes = if quick { 10 } else { 40 };
    let load_before = loadavg();
    let mut k = Kernel {
        kept: twill_nft::Nft::library().expect("libnftables context"),
        last_cpu: Duration::ZERO,
    };

    // Context cost: what "per call" adds.
    let mut ctx = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        drop(twill_nft::Nft::new().expect("context"));
        ctx.push(t.elapsed());
    }

    // (a) one small change at 1k pods / 1k policies.
    let (mut inp, locals) = inputs(1000, 250, 1000);
    let mut inc = Incremental::new(NODE);
    inc.follow(&mut inp, &locals);
    let full = inc.full_script();
    let t0 = Instant::now();
    k.apply(Via::LibKept, &full);
    let small_load = t0.elapsed();
    let small_sets = inc.table().sets.len();
    eprintln!(
        "1k/1k table: {} rules, {small_sets} named sets, loaded in {:.0} ms",
        inc.table().rule_count(),
        ms(small_load)
    );
    let set = inc
        .table()
        .sets
        .iter()
        .find(|(n, s)| n.ends_with("-4") && matches!(s.kind, twill_policy::ir::SetKind::Addr(_)))
        .map(|(n, _)| n.clone())
        .expect("an address set");
    let mut pol: BTreeMap<Via, Vec<Duration>> = BTreeMap::new();
    let mut pol_total: BTreeMap<Via, Vec<Duration>> = BTreeMap::new();
    let mut elem: BTreeMap<Via, Vec<Duration>> = BTreeMap::new();
    let mut pol_cpu: BTreeMap<Via, Vec<Duration>> = BTreeMap::new();
    let mut elem_cpu: BTreeMap<Via, Vec<Duration>> = BTreeMap::new();
    let mut round_p50: BTreeMap<(Via, &str), Vec<f64>> = BTreeMap::new();
    let mut script_lines = Vec::new();
    let mut n = 0usize;
    for round in 0..rounds {
        let mut this: BTreeMap<(Via, &str), Vec<Duration>> = BTreeMap::new();
        for c in 0..changes {
            // The method rotates change by change, its start rotating by round.
            let via = Via::ALL[(c + round) % Via::ALL.len()];
            let j = (n * 37) % 1000;
            let port = 8000 + (n % 1000) as u16;
            n += 1;
            let t = Instant::now();
            inp.apply_network_policy(&policy(j, port)).expect("compile");
            inc.follow(&mut inp, &locals);
            let Some(script) = inc.commit() else { continue };
            let update = t.elapsed();
            script_lines.push(script.lines().count());
            let d = k.apply(via, &script);
            pol.entry(via).or_default().push(d);
            pol_cpu.entry(via).or_default().push(k.last_cpu);
            pol_total.entry(via).or_default().push(update + d);
            this.entry((via, "policy")).or_default().push(d);
            let ip = IpAddr::from([172, 30, (n / 250) as u8, (n % 250) as u8]);
            let d = k.apply(via, &format!("add element {TABLE} {set} {{ {ip} }}\n"));
            elem.entry(via).or_default().push(d);
            elem_cpu.entry(via).or_default().push(k.last_cpu);
            this.entry((via, "element")).or_default().push(d);
            k.apply(via, &format!("delete element {TABLE} {set} {{ {ip} }}\n"));
        }
        for ((via, what), v) in this {
            round_p50
                .entry((via, what))
                .or_default()
                .push(pct(&v, 50.0));
        }
    }

    // (b) full load of the dataplane benchmark's 10k-policy table.
    let t = Instant::now();
    let tables = if changes_only { Vec::new() } else { variants() };
    let render = t.elapsed() / tables.len().max(1) as u32;
    let vars: Vec<(&str, String, Table)> = tables
        .into_iter()
        .map(|(n, t)| (n, t.script(), t))
        .collect();
    let shapes = if quick { 1 } else { vars.len() };
    let mut loads: BTreeMap<(usize, Via), Vec<Duration>> = BTreeMap::new();
    let load_rounds = match (changes_only, quick) {
        (true, _) => 0,
        (_, true) => 1,
        _ => 5,
    };
    for round in 0..load_rounds {
        for (vi, (vname, script, _)) in vars.iter().enumerate().take(shapes) {
            // The two-client variant only shows the kernel's set cost: via libnftables.
            let methods: &[Via] = match (vi, round % 2) {
                (0, 0) => &[Via::Lib, Via::Binary],
                (0, _) => &[Via::Binary, Via::Lib],
                _ => &[Via::Lib],
            };
            for &via in methods {
                k.apply(via, &format!("add table {TABLE}\ndelete table {TABLE}\n"));
                let d = k.apply(via, script);
                eprintln!("load {vname} via {via:?}: {:.0} ms", ms(d));
                loads.entry((vi, via)).or_default().push(d);
            }
        }
    }
    k.apply(
        Via::Lib,
        &format!("add table {TABLE}\ndelete table {TABLE}\n"),
    );
    let load_after = loadavg();

    // Report.
    let mut rows = Vec::new();
    let mut jrows = Vec::new();
    for via in Via::ALL {
        let p = &pol[&via];
        let tot = &pol_total[&via];
        let e = &elem[&via];
        let (rp, rp0, rp1) = spread(&round_p50[&(via, "policy")]);
        rows.push(vec![
            via.name().to_string(),
            format!("{:.1} / {:.1}", pct(p, 50.0), pct(p, 99.0)),
            format!("{rp:.1} ({rp0:.1}–{rp1:.1})"),
            format!("{:.1} / {:.1}", pct(tot, 50.0), pct(tot, 99.0)),
            format!("{:.1} / {:.1}", pct(e, 50.0), pct(e, 99.0)),
            format!(
                "{:.1} / {:.1}",
                pct(&pol_cpu[&via], 50.0),
                pct(&pol_cpu[&via], 99.0)
            ),
            format!(
                "{:.1} / {:.1}",
                pct(&elem_cpu[&via], 50.0),
                pct(&elem_cpu[&via], 99.0)
            ),
        ]);
        jrows.push(json!({"via": via.name(),
            "policy_apply_ms": p.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "policy_update_plus_apply_ms": tot.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "element_add_ms": e.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "policy_apply_cpu_ms": pol_cpu[&via].iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "element_add_cpu_ms": elem_cpu[&via].iter().map(|d| ms(*d)).collect::<Vec<_>>()}));
    }
    let mut lrows = Vec::new();
    let mut jloads = Vec::new();
    for (vi, (vname, script, table)) in vars.iter().enumerate().take(shapes) {
        let cell = |via| {
            let v: Vec<f64> = loads
                .get(&(vi, via))
                .map(|v| v.iter().map(|d| ms(*d)).collect())
                .unwrap_or_default();
            let (m, a, b) = spread(&v);
            let text = match v.len() {
                0 => "–".to_string(),
                1 => format!("{m:.0}"),
                _ => format!("{m:.0} ({a:.0}–{b:.0})"),
            };
            (text, v)
        };
        if !loads.contains_key(&(vi, Via::Lib)) {
            continue;
        }
        let (l, lv) = cell(Via::Lib);
        let (b, bv) = cell(Via::Binary);
        let sets = script.lines().filter(|l| l.starts_with("add set ")).count();
        let anon: usize = script
            .lines()
            .filter(|l| l.starts_with("add rule "))
            .map(|l| l.matches("{ ").count())
            .sum();
        lrows.push(vec![
            vname.to_string(),
            table.rule_count().to_string(),
            script.lines().count().to_string(),
            sets.to_string(),
            anon.to_string(),
            l,
            b,
        ]);
        jloads.push(json!({"script": vname, "lines": script.lines().count(),
            "rules": table.rule_count(), "named_sets": sets, "anonymous_sets": anon,
            "libnftables_ms": lv, "nft_binary_ms": bv}));
    }
    let sl: Vec<f64> = script_lines.iter().map(|n| *n as f64).collect();
    let (slm, sl0, sl1) = spread(&sl);
    let md = format!(
        "(a) One change at 1k pods (250 local) / 1k policies, {} changes per method over {rounds} rounds, methods alternating change by change; ms.\n\n{}\nPolicy-edit scripts: median {slm:.0} lines ({sl0:.0}–{sl1:.0}). A libnftables context costs {:.2} ms p50 / {:.2} ms p99 to make and free. The 1k/1k table ({} rules, {small_sets} named sets) loaded in {:.0} ms.\n\n(b) Full load of the dataplane benchmark's 10k-policy table from nothing (render {:.0} ms per table), {load_rounds} rounds, methods alternating; ms, median (min–max).\n\n{}\nLoad average {load_before} before, {load_after} after.\n",
        pol[&Via::Lib].len(),
        twill_bench::table(
            &[
                "method",
                "policy edit: apply p50 / p99",
                "per-round p50, median (min–max)",
                "update + apply p50 / p99",
                "add one set element p50 / p99",
                "CPU per policy edit p50 / p99",
                "CPU per element add p50 / p99",
            ],
            &rows,
        ),
        pct(&ctx, 50.0),
        pct(&ctx, 99.0),
        inc.table().rule_count(),
        ms(small_load),
        ms(render),
        twill_bench::table(
            &[
                "script",
                "rules",
                "lines",
                "named sets",
                "anonymous sets",
                "libnftables",
                "nft -f -",
            ],
            &lrows,
        ),
    );
    let doc = json!({"rounds": rounds, "changes_per_round": changes,
        "context_ms_p50": pct(&ctx, 50.0), "context_ms_p99": pct(&ctx, 99.0),
        "incremental": jrows, "full_loads": jloads,
        "render_ms": ms(render), "loadavg_before": load_before, "loadavg_after": load_after});
    if changes_only {
        let a = md.split("\n\n(b)").next().unwrap_or_default();
        return (
            format!("{a}\n\nLoad average {load_before} before, {load_after} after.\n"),
            doc,
        );
    }
    (md, doc)
}

// ---- --phases: where a full load's time goes ----

/// User and system CPU of this thread and of reaped children.
fn rusage_split() -> (Duration, Duration) {
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    let get = |who| {
        // SAFETY: getrusage fills the struct we pass.
        let mut r: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut r) };
        (tv(r.ru_utime), tv(r.ru_stime))
    };
    let (tu, ts) = get(libc::RUSAGE_THREAD);
    let (cu, cs) = get(libc::RUSAGE_CHILDREN);
    (tu + cu, ts + cs)
}

fn nft_file(check: bool, file: &std::path::Path) -> Result<(), String> {
    let mut cmd = Command::new("nft");
    if check {
        cmd.arg("-c");
    }
    let out = cmd
        .arg("-f")
        .arg(file)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn phases(quick: bool, script: &str) -> (String, serde_json::Value) {
    let load_before = loadavg();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("table.nft");
    std::fs::write(&file, script).expect("write script");
    let empty = format!("add table {TABLE}\ndelete table {TABLE}\n");
    let methods: [(&str, &str); 3] = [
        (
            "check",
            "nft -c -f: parse, evaluate, encode; kernel takes each message, then aborts",
        ),
        ("apply", "nft -f: the same, then the kernel commits"),
        (
            "lib",
            "libnftables in this thread (twill-node's way): parse … commit",
        ),
    ];
    let rounds = if quick { 1 } else { 5 };
    // (wall, user, sys) per method
    let mut got: BTreeMap<&str, Vec<(Duration, Duration, Duration)>> = BTreeMap::new();
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..methods.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (key, _) = methods[i];
            twill_nft::apply_script(&empty).expect("empty the table");
            let (u0, s0) = rusage_split();
            let t = Instant::now();
            let r = match key {
                "check" => nft_file(true, &file),
                "apply" => nft_file(false, &file),
                _ => twill_nft::apply_script(script).map_err(|e| e.to_string()),
            };
            let wall = t.elapsed();
            let (u1, s1) = rusage_split();
            if let Err(e) = r {
                panic!(
                    "{key} refused:\n{e}\n--- script (start) ---\n{}",
                    head(script)
                );
            }
            eprintln!(
                "{key}: {:.0} ms (user {:.0}, sys {:.0})",
                ms(wall),
                ms(u1 - u0),
                ms(s1 - s0)
            );
            got.entry(key).or_default().push((wall, u1 - u0, s1 - s0));
        }
    }
    twill_nft::apply_script(&empty).expect("empty the table");
    let load_after = loadavg();
    let cell = |v: &[f64]| {
        let (m, lo, hi) = spread(v);
        format!("{m:.0} ({lo:.0}–{hi:.0})")
    };
    let mut rows = Vec::new();
    let mut jrows = Vec::new();
    let mut med = BTreeMap::new();
    for (key, what) in methods {
        let v = &got[key];
        let wall: Vec<f64> = v.iter().map(|x| ms(x.0)).collect();
        let user: Vec<f64> = v.iter().map(|x| ms(x.1)).collect();
        let sys: Vec<f64> = v.iter().map(|x| ms(x.2)).collect();
        let cpu: Vec<f64> = v.iter().map(|x| ms(x.1 + x.2)).collect();
        med.insert(
            key,
            (
                spread(&user).0,
                spread(&sys).0,
                spread(&cpu).0,
                spread(&wall).0,
            ),
        );
        rows.push(vec![
            what.to_string(),
            cell(&wall),
            cell(&user),
            cell(&sys),
            cell(&cpu),
        ]);
        jrows.push(
            json!({"method": key, "what": what, "wall_ms": wall, "user_ms": user, "sys_ms": sys}),
        );
    }
    let (cu, cs, _, _) = med["check"];
    let (au, asys, _, _) = med["apply"];
    let (lu, ls, lc, lw) = med["lib"];
    // Within 10 % of the check's kernel time is within this machine's noise.
    let commit = if asys <= cs * 1.1 {
        "the commit adds nothing measurable to taking the messages".to_string()
    } else {
        format!("the commit adds about {:.0} ms", asys - cs)
    };
    let md = format!(
        "Full load of the dataplane benchmark's 10k-policy table from nothing ({} `add rule` lines, {} script lines), {rounds} rounds, methods alternating; ms, median (min–max). CPU: user = nft/libnftables in user space (parse, evaluate, netlink encoding), sys = the kernel (nf_tables taking the batch; with -f also the commit).\n\n{}\nFrom the medians: user space (parse, evaluate, encode) takes {cu:.0} ms (check) / {au:.0} ms (nft -f) / {lu:.0} ms (libnftables); the kernel {cs:.0} ms to take the batch and abort it, {asys:.0} ms to take it and commit it, {ls:.0} ms through libnftables — {commit}. A full load through libnftables needs {lc:.0} ms of CPU, about half in each; its wall time ({lw:.0} ms) above that is waiting for a core on this shared machine.\n\nLoad average {load_before} before, {load_after} after.\n",
        script
            .lines()
            .filter(|l| l.trim_start().starts_with("add rule"))
            .count(),
        script.lines().count(),
        twill_bench::table(&["method", "wall", "user CPU", "sys CPU", "CPU"], &rows),
    );
    let doc = json!({"benchmark": "nft_apply_phases", "rounds": rounds, "rows": jrows,
        "loadavg_before": load_before, "loadavg_after": load_after});
    (md, doc)
}
