//! Dataplane cost of network policy: TCP throughput (iperf3) and new TCP
//! connections per second between two pods, in one run, with
//!
//! * no policy at all (no table, so conntrack is not active either);
//! * conntrack only (one `ct state established,related accept` rule), the
//!   state of any node running kube-proxy, to separate conntrack's cost
//!   from the rules';
//! * Twill's table with 0, 1k and 10k NetworkPolicies in force;
//! * the same policies as kube-router programs them
//!   (`twill_bench::kube_router`: FORWARD → a per-pod chain chosen by
//!   destination → only the chains of the policies selecting that pod,
//!   ipsets for the peers).
//!
//! Topology: a node namespace with two pod namespaces on veths, routed
//! (/30 per pod), as on a Twill node. Each policy allows TCP 80 and 5201
//! from one client address to the pods it selects. Of N policies, the last
//! S select the measured server and the others select the node's 200 other
//! pods (addresses and interface names that exist only in the rules); only
//! the last policy allows the measured client. S = 1 is a server selected
//! by one policy; S = N a server selected by every policy, which both
//! dataplanes must walk to find the one that allows the client. In
//! kube-router's dispatch list the server's jump sits in the middle of the
//! node's pods.
//!
//! Every configuration is loaded, measured and removed again in each of
//! several repetitions (`TWILL_BENCH_REPS`, default 5), the order rotating
//! between repetitions; the table gives the median and min–max.
//!
//! Run as root: `cargo run --release -p twill-bench --bin policy_dataplane [-- --quick]`
//! (`--quick`: 2 s / 1 s measurements, no 10k shape; its results are
//! written too, and say so).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use twill_bench::Spread;
use twill_policy::model::{Endpoint, Model};
use twill_tests::{Netns, require_binary, require_root};

const CLIENT_IP: &str = "10.80.1.2";
const SERVER_IP: &str = "10.80.2.2";
/// Other pods on the node (a node runs at most a few hundred pods).
const FAKE_PODS: usize = 200;

/// The client address policy `i` allows.
fn client_of(i: usize) -> IpAddr {
    IpAddr::from([
        10,
        82 + (i / 62500) as u8,
        (i / 250 % 250) as u8,
        (i % 250 + 1) as u8,
    ])
}

fn in_netns<R>(name: &str, f: impl FnOnce() -> R) -> R {
    let file = std::fs::File::open(format!("/run/netns/{name}")).expect("open netns");
    // SAFETY: setns on the current thread with a namespace file we opened.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    f()
}

fn run_stdin(ns: &Netns, prog: &str, args: &[&str], input: &str) {
    let mut child = ns
        .command(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Policy `i` of `n` with `sel` selecting the server: which pod it
/// selects (`None` = the server, `Some(k)` = other pod k) and the client
/// address it allows.
fn scenario(i: usize, n: usize, sel: usize) -> (Option<usize>, IpAddr) {
    let target = (i + sel < n).then_some(i % FAKE_PODS);
    let from = if i + 1 == n {
        CLIENT_IP.parse().expect("client ip")
    } else {
        client_of(i)
    };
    (target, from)
}

fn fake_pod_ip(k: usize) -> IpAddr {
    IpAddr::from([10, 81, (k / 250) as u8, (k % 250 + 1) as u8])
}

/// The Twill table for `n` policies, `sel` of them selecting the server.
fn twill_table(n: usize, sel: usize) -> twill_policy::ir::Table {
    let mut endpoints = vec![
        Endpoint {
            namespace: "bench".into(),
            name: "client".into(),
            labels: [("role".to_string(), format!("client{}", n.saturating_sub(1)))].into(),
            ips: vec![CLIENT_IP.parse().unwrap()],
            ports: Vec::new(),
            node: "node".into(),
            iface: Some("vc".into()),
        },
        Endpoint {
            namespace: "bench".into(),
            name: "server".into(),
            labels: [("app".to_string(), "server".to_string())].into(),
            ips: vec![SERVER_IP.parse().unwrap()],
            ports: Vec::new(),
            node: "node".into(),
            iface: Some("vs".into()),
        },
    ];
    let mut policies = Vec::new();
    // The node's other pods: FAKE_PODS interfaces that exist only in the
    // dispatch map.
    if n > 0 {
        for k in 0..FAKE_PODS {
            endpoints.push(Endpoint {
                namespace: "bench".into(),
                name: format!("pod{k}"),
                labels: [("app".to_string(), format!("svc{k}"))].into(),
                ips: vec![fake_pod_ip(k)],
                ports: Vec::new(),
                node: "node".into(),
                iface: Some(format!("f{k}")),
            });
        }
    }
    for i in 0..n {
        let (target, _) = scenario(i, n, sel);
        if i + 1 < n {
            endpoints.push(Endpoint {
                namespace: "bench".into(),
                name: format!("client{i}"),
                labels: [("role".to_string(), format!("client{i}"))].into(),
                ips: vec![client_of(i)],
                ports: Vec::new(),
                node: "other".into(),
                iface: None,
            });
        }
        let app = match target {
            None => "server".to_string(),
            Some(k) => format!("svc{k}"),
        };
        let np: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(json!({
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

/// The same policies as kube-router programs them.
fn kube_router_rules(n: usize, sel: usize) -> twill_bench::kube_router::Ruleset {
    let v4 = |a: IpAddr| match a {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => unreachable!("the benchmark's addresses are IPv4"),
    };
    let server = v4(SERVER_IP.parse().expect("server ip"));
    let policies: Vec<_> = (0..n)
        .map(|i| {
            let (target, from) = scenario(i, n, sel);
            twill_bench::kube_router::Policy {
                name: format!("bench/np{i}"),
                selects: vec![target.map_or(server, |k| v4(fake_pod_ip(k)))],
                from: vec![v4(from)],
                tcp_ports: vec![5201, 80],
            }
        })
        .collect();
    let mut pods: Vec<_> = (0..FAKE_PODS).map(|k| v4(fake_pod_ip(k))).collect();
    pods.insert(FAKE_PODS / 2, server);
    twill_bench::kube_router::ruleset(&pods, &policies)
}

/// CPU time of the calling thread (with the softirq work the kernel did in
/// its context: the veths deliver there), in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid clock id and timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// iperf3 throughput client → server: bits per second, and CPU
/// milliseconds per GB moved (client and server, from iperf3's own
/// accounting). CPU per GB is what the rules cost; with other builds on
/// the machine it is much steadier than the rate.
fn throughput(client: &Netns, server: &Netns, secs: u32) -> (f64, f64) {
    let mut srv = server
        .command("iperf3")
        .args(["-s", "-1", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 -s");
    std::thread::sleep(Duration::from_millis(300));
    let out = client
        .command("iperf3")
        .args(["-c", SERVER_IP, "-p", "5201", "-J", "-t", &secs.to_string()])
        .output()
        .expect("iperf3 -c");
    // The client's JSON has both ends' figures; a server whose client never
    // reached it (a start-up race on a loaded machine) would wait forever.
    let _ = srv.kill();
    let _ = srv.wait();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let num = |p: &str| v.pointer(p).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let bps = num("/end/sum_received/bits_per_second");
    let wall = num("/end/sum_received/seconds");
    let bytes = num("/end/sum_received/bytes");
    let cpu_pct = num("/end/cpu_utilization_percent/host_total")
        + num("/end/cpu_utilization_percent/remote_total");
    (bps, cpu_pct / 100.0 * wall * 1000.0 / (bytes / 1e9))
}

/// New TCP connections per second (connect, read one byte, close with
/// RST), and CPU microseconds per connection (client and server threads).
fn conn_rate(client: &Netns, server: &Netns, dur: Duration) -> (f64, f64) {
    let listener = in_netns(server.name(), || {
        std::thread::spawn(|| TcpListener::bind(("0.0.0.0", 80)).expect("bind 80"))
            .join()
            .unwrap()
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let srv = std::thread::spawn(move || {
        let cpu0 = thread_cpu();
        for s in listener.incoming() {
            if stop2.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            if let Ok(mut s) = s {
                let _ = s.write_all(b"k");
            }
        }
        thread_cpu() - cpu0
    });
    let name = client.name().to_string();
    let n = std::thread::spawn(move || {
        in_netns(&name, || {
            let addr = SocketAddr::new(SERVER_IP.parse().unwrap(), 80);
            let start = Instant::now();
            let cpu0 = thread_cpu();
            let mut n = 0u64;
            while start.elapsed() < dur {
                if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                    use std::io::Read;
                    let mut b = [0u8; 1];
                    let _ = (&s).read(&mut b);
                    // RST on close: no TIME_WAIT, so ports never run out.
                    let l = libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    };
                    // SAFETY: setsockopt on a socket we own with a valid linger struct.
                    unsafe {
                        libc::setsockopt(
                            s.as_raw_fd(),
                            libc::SOL_SOCKET,
                            libc::SO_LINGER,
                            &l as *const libc::linger as *const libc::c_void,
                            std::mem::size_of::<libc::linger>() as libc::socklen_t,
                        );
                    }
                    n += 1;
                }
            }
            let cpu = thread_cpu() - cpu0;
            (n as f64 / start.elapsed().as_secs_f64(), cpu, n)
        })
    })
    .join()
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // Wake the accept loop so it sees the stop flag.
    let name = client.name().to_string();
    let _ = std::thread::spawn(move || {
        in_netns(&name, || {
            TcpStream::connect_timeout(
                &SocketAddr::new(SERVER_IP.parse().unwrap(), 80),
                Duration::from_millis(200),
            )
        })
    })
    .join();
    let srv_cpu = srv.join().unwrap_or(f64::NAN);
    let (rate, cpu, count) = n;
    (rate, (cpu + srv_cpu) * 1e6 / count.max(1) as f64)
}

/// One dataplane configuration of the node namespace.
#[derive(Clone, Copy, PartialEq)]
enum Config {
    /// Nothing loaded: no table, conntrack not even active.
    None,
    /// Only `ct state established,related accept` in a forward chain:
    /// conntrack active, as on any node running kube-proxy.
    Conntrack,
    /// Twill's table: N policies, S selecting the server.
    Twill(usize, usize),
    /// kube-router's chains: N policies, S selecting the server.
    KubeRouter(usize, usize),
}

const CT_TABLE: &str = "inet twbench-ct";

/// What loading and unloading a configuration needs, prepared once.
struct Prepared {
    twill: BTreeMap<(usize, usize), String>,
    kube_router: BTreeMap<(usize, usize), twill_bench::kube_router::Ruleset>,
    iptables_restore: &'static str,
}

impl Prepared {
    /// Loads `c` into the node namespace (which holds nothing).
    fn load(&self, node: &Netns, c: Config) {
        match c {
            Config::None => {}
            Config::Conntrack => run_stdin(
                node,
                "nft",
                &["-f", "-"],
                &format!(
                    "add table {CT_TABLE}\nadd chain {CT_TABLE} fwd-ct {{ type filter hook forward priority 0; policy accept; }}\nadd rule {CT_TABLE} fwd-ct ct state established,related accept\n"
                ),
            ),
            Config::Twill(n, s) => run_stdin(node, "nft", &["-f", "-"], &self.twill[&(n, s)]),
            Config::KubeRouter(n, s) => {
                let r = &self.kube_router[&(n, s)];
                run_stdin(node, "ipset", &["-exist", "restore"], &r.ipset);
                run_stdin(node, self.iptables_restore, &[], &r.iptables);
            }
        }
    }

    /// Removes `c` again, leaving the namespace as it was.
    fn unload(&self, node: &Netns, c: Config) {
        match c {
            Config::None => {}
            Config::Conntrack => run_stdin(
                node,
                "nft",
                &["-f", "-"],
                &format!("delete table {CT_TABLE}\n"),
            ),
            Config::Twill(..) => run_stdin(
                node,
                "nft",
                &["-f", "-"],
                &format!("delete table {}\n", twill_policy::ir::TABLE),
            ),
            Config::KubeRouter(..) => {
                run_stdin(
                    node,
                    self.iptables_restore,
                    &[],
                    "*filter\n-F\n-X\nCOMMIT\n",
                );
                node.exec_ok("ipset", &["destroy"]);
            }
        }
    }
}

/// Every sample of one configuration.
#[derive(Default)]
struct Samples {
    gbps: Vec<f64>,
    /// CPU ms per GB.
    gb_cpu: Vec<f64>,
    conns: Vec<f64>,
    /// CPU µs per connection.
    conn_cpu: Vec<f64>,
    load: Vec<f64>,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    require_root();
    require_binary("iperf3", "iperf3");
    require_binary("nft", "nftables");
    require_binary("ipset", "ipset");
    let quick = std::env::args().any(|a| a == "--quick");
    let reps: usize = std::env::var("TWILL_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 2 } else { 5 });
    let secs = if quick { 2 } else { 4 };
    let conn_dur = Duration::from_secs(if quick { 1 } else { 3 });
    let settle = Duration::from_millis(
        std::env::var("TWILL_BENCH_SETTLE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3000),
    );
    let node = Netns::new("twb");
    let client = Netns::new("twb");
    let server = Netns::new("twb");
    twill_tests::veth_between(&node, "vc", "10.80.1.1/30", &client, "eth0", "10.80.1.2/30");
    twill_tests::veth_between(&node, "vs", "10.80.2.1/30", &server, "eth0", "10.80.2.2/30");
    client.ip(&["route", "add", "default", "via", "10.80.1.1"]);
    server.ip(&["route", "add", "default", "via", "10.80.2.1"]);
    node.sysctl("net.ipv4.ip_forward", "1");
    let iptables_restore = if std::path::Path::new("/usr/sbin/iptables-legacy").exists() {
        "iptables-legacy-restore"
    } else {
        "iptables-restore"
    };
    let shapes: Vec<(usize, usize)> = if quick {
        vec![(1000, 1), (1000, 1000)]
    } else {
        vec![(1000, 1), (1000, 1000), (10_000, 1)]
    };
    let mut prep = Prepared {
        twill: BTreeMap::new(),
        kube_router: BTreeMap::new(),
        iptables_restore,
    };
    let mut render_ms = BTreeMap::new();
    for &(n, sel) in [(0usize, 0usize)].iter().chain(&shapes) {
        let t = Instant::now();
        let script = twill_table(n, sel).script();
        render_ms.insert(format!("{n}/{sel}"), t.elapsed().as_secs_f64() * 1000.0);
        prep.twill.insert((n, sel), script);
    }
    for &(n, sel) in &shapes {
        prep.kube_router.insert((n, sel), kube_router_rules(n, sel));
    }
    let mut configs = vec![Config::None, Config::Conntrack, Config::Twill(0, 0)];
    for &(n, sel) in &shapes {
        configs.push(Config::Twill(n, sel));
        configs.push(Config::KubeRouter(n, sel));
    }
    let load_before = loadavg();
    let mut samples: Vec<Samples> = configs.iter().map(|_| Samples::default()).collect();
    // Repetitions rotate the configurations, each starting one later than
    // the last, and odd repetitions run the rotation backwards (so Twill
    // and kube-router of a shape go A,B then B,A): drift in the machine's
    // load spreads over all of them instead of landing on whichever ran
    // last.
    for rep in 0..reps {
        let mut order: Vec<usize> = (0..configs.len())
            .map(|k| (k + rep) % configs.len())
            .collect();
        if rep % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let c = configs[i];
            let t = Instant::now();
            prep.load(&node, c);
            let load = t.elapsed().as_secs_f64() * 1000.0;
            // The same pause after every load (TWILL_BENCH_SETTLE_MS), so
            // no measurement starts straight after a long `nft -f`.
            std::thread::sleep(settle);
            let (bps, gb_cpu) = throughput(&client, &server, secs);
            let gbps = bps / 1e9;
            let (conns, conn_cpu) = conn_rate(&client, &server, conn_dur);
            prep.unload(&node, c);
            // Every configuration allows the client: a dataplane that let
            // no connection through would measure nothing. (A failed iperf3
            // run gives NaN, left out of the medians and visible in the
            // JSON.)
            assert!(
                conns > 0.0,
                "{} let no connection through",
                name(c, iptables_restore)
            );
            eprintln!(
                "rep {rep} {:<34} {gbps:.2} Gbit/s ({gb_cpu:.0} CPU ms/GB), {conns:.0} conn/s ({conn_cpu:.1} CPU µs/conn), load {load:.0} ms",
                name(c, iptables_restore)
            );
            let s = &mut samples[i];
            s.gbps.push(gbps);
            s.gb_cpu.push(gb_cpu);
            s.conns.push(conns);
            s.conn_cpu.push(conn_cpu);
            s.load.push(load);
        }
    }
    let load_after = loadavg();
    let base = &samples[0];
    let med = |v: &[f64]| Spread::of(v).median;
    let (bg, bc, bgc, bcc) = (
        med(&base.gbps),
        med(&base.conns),
        med(&base.gb_cpu),
        med(&base.conn_cpu),
    );
    let mut rows = Vec::new();
    let mut cpu_rows = Vec::new();
    let mut json_rows = Vec::new();
    for (c, s) in configs.iter().zip(&samples) {
        let (g, k, l, gc, kc) = (
            Spread::of(&s.gbps),
            Spread::of(&s.conns),
            Spread::of(&s.load),
            Spread::of(&s.gb_cpu),
            Spread::of(&s.conn_cpu),
        );
        let (n, sel) = match c {
            Config::Twill(n, s) | Config::KubeRouter(n, s) => (*n, *s),
            _ => (0, 0),
        };
        let shape = if n == 0 {
            "0".to_string()
        } else {
            format!("{n} ({sel})")
        };
        rows.push(vec![
            name(*c, iptables_restore),
            shape.clone(),
            g.show(2),
            format!("{:.2}", g.median / bg),
            k.show(0),
            format!("{:.2}", k.median / bc),
            format!("{:.0} ms", l.median),
        ]);
        // Inverted so that, like the rates, 1.00 is "as cheap as no policy".
        cpu_rows.push(vec![
            name(*c, iptables_restore),
            shape,
            gc.show(0),
            format!("{:.2}", bgc / gc.median),
            kc.show(1),
            format!("{:.2}", bcc / kc.median),
        ]);
        json_rows.push(json!({
            "dataplane": name(*c, iptables_restore), "policies": n, "selecting_server": sel,
            "gbps": s.gbps, "conns_per_s": s.conns, "load_ms": s.load,
            "cpu_ms_per_gb": s.gb_cpu, "cpu_us_per_conn": s.conn_cpu,
            "gbps_spread": g.json(), "conns_spread": k.json(),
            "gbps_vs_none": g.median / bg, "conns_vs_none": k.median / bc,
            "cpu_per_gb_none_over_this": bgc / gc.median, "cpu_per_conn_none_over_this": bcc / kc.median,
        }));
    }
    // Twill against kube-router, shape by shape (medians; > 1 is Twill ahead).
    let mut vs_rows = Vec::new();
    for &(n, sel) in &shapes {
        let at = |c: Config| configs.iter().position(|x| *x == c).map(|i| &samples[i]);
        if let (Some(t), Some(k)) = (at(Config::Twill(n, sel)), at(Config::KubeRouter(n, sel))) {
            vs_rows.push(vec![
                format!("{n} ({sel})"),
                format!("{:.2}", med(&t.gbps) / med(&k.gbps)),
                format!("{:.2}", med(&t.conns) / med(&k.conns)),
                format!("{:.2}", med(&k.conn_cpu) / med(&t.conn_cpu)),
                format!("{:.2}", med(&k.load) / med(&t.load)),
            ]);
        }
    }
    let md = format!(
        "{}\n{}\nTwill ÷ kube-router (medians; above 1.00 Twill is ahead: faster, or cheaper in CPU and load time):\n\n{}\nMedian (min–max) of {reps} repetitions, the order of the configurations rotating and reversed every other repetition ({secs} s iperf3, {} s of connections each{}); load average {load_before} before, {load_after} after. Policies: N (S) = N NetworkPolicies in force, S of them selecting the server. CPU: client and server together, with the softirq work done in their context; \"none ÷ this\" is 1.00 when a configuration costs what no policy costs. Twill render time (N/S): {}.\n",
        twill_bench::table(
            &[
                "dataplane",
                "policies (selecting)",
                "TCP Gbit/s",
                "vs none",
                "new conn/s",
                "vs none",
                "load rules",
            ],
            &rows,
        ),
        twill_bench::table(
            &[
                "dataplane",
                "policies (selecting)",
                "CPU ms per GB",
                "none ÷ this",
                "CPU µs per connection",
                "none ÷ this",
            ],
            &cpu_rows,
        ),
        twill_bench::table(
            &[
                "policies (selecting)",
                "Gbit/s",
                "conn/s",
                "CPU per connection",
                "load time",
            ],
            &vs_rows,
        ),
        conn_dur.as_secs(),
        if quick { "; quick shape" } else { "" },
        render_ms
            .iter()
            .map(|(n, ms)| format!("{n} {ms:.0} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    print!("{md}");
    if let Err(e) = twill_bench::write_results(
        "policy_dataplane",
        json!({"reps": reps, "quick": quick, "iperf_secs": secs, "conn_secs": conn_dur.as_secs(),
                "loadavg_before": load_before, "loadavg_after": load_after,
                "render_ms": render_ms, "rows": json_rows}),
        &md,
    ) {
        eprintln!("policy_dataplane: writing results: {e}");
    }
}

fn name(c: Config, iptables_restore: &str) -> String {
    match c {
        Config::None => "none".into(),
        Config::Conntrack => "conntrack only".into(),
        Config::Twill(..) => "twill".into(),
        Config::KubeRouter(..) => format!(
            "kube-router ({} + ipset)",
            iptables_restore.trim_end_matches("-restore")
        ),
    }
}
