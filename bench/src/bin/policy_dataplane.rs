//! Dataplane cost of network policy: TCP throughput (iperf3) and new TCP
//! connections per second between two pods, in one run, with
//!
//! * no policy at all (no table);
//! * Twill's table with 0, 1k and 10k policy rules in force on the node;
//! * the same 1k and 10k rules as one linear iptables chain with one ipset
//!   per rule (the kube-router way).
//!
//! Topology: a node namespace with two pod namespaces on veths, routed
//! (/30 per pod), as on a Twill node. Each rule is one NetworkPolicy
//! allowing TCP 80 and 5201 from one set of clients to one of the node's
//! pods: 200 other pods (interface names that exist only in the dispatch
//! map) share all policies but the last, which selects the measured server.
//! The linear chain walks every rule for each new connection to the server;
//! Twill's dispatch goes straight to the server's chain.
//!
//! Run as root: `cargo run --release -p twill-bench --bin policy_dataplane [-- --quick]`.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
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

/// The Twill table for `n` rules, the server's last.
fn twill_table(n: usize) -> twill_policy::ir::Table {
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
            labels: [("app".to_string(), format!("svc{}", n.saturating_sub(1)))].into(),
            ips: vec![SERVER_IP.parse().unwrap()],
            ports: Vec::new(),
            node: "node".into(),
            iface: Some("vs".into()),
        },
    ];
    let mut policies = Vec::new();
    // The node's other pods: FAKE_PODS interfaces, each selected by every
    // FAKE_PODS-th policy. The server is selected by the last policy only.
    for k in 0..FAKE_PODS.min(n.saturating_sub(1)) {
        endpoints.push(Endpoint {
            namespace: "bench".into(),
            name: format!("pod{k}"),
            labels: [("app".to_string(), format!("svc{k}"))].into(),
            ips: vec![IpAddr::from([10, 81, (k / 250) as u8, (k % 250 + 1) as u8])],
            ports: Vec::new(),
            node: "node".into(),
            iface: Some(format!("f{k}")),
        });
    }
    for i in 0..n {
        let last = i + 1 == n;
        if !last {
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
        let app = if last {
            format!("svc{i}")
        } else {
            format!("svc{}", i % FAKE_PODS)
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

/// The same rules as a linear iptables chain with ipsets.
fn iptables_rules(n: usize) -> (String, String) {
    let mut ipset = String::new();
    let mut ipt = String::from("*filter\n:TWBENCH - [0:0]\n-A FORWARD -j TWBENCH\n");
    ipt.push_str("-A TWBENCH -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    ipset.push_str("create twb-isolated hash:ip\n");
    for i in 0..n {
        let (dst, src) = if i + 1 < n {
            let k = i % FAKE_PODS;
            (
                IpAddr::from([10, 81, (k / 250) as u8, (k % 250 + 1) as u8]),
                client_of(i),
            )
        } else {
            (SERVER_IP.parse().unwrap(), CLIENT_IP.parse().unwrap())
        };
        ipset.push_str(&format!(
            "create twb-src{i} hash:ip\nadd twb-src{i} {src}\nadd twb-isolated {dst}\n"
        ));
        for port in [5201, 80] {
            ipt.push_str(&format!(
                "-A TWBENCH -d {dst}/32 -p tcp --dport {port} -m set --match-set twb-src{i} src -j ACCEPT\n"
            ));
        }
    }
    ipt.push_str("-A TWBENCH -m set --match-set twb-isolated dst -j DROP\nCOMMIT\n");
    (ipset, ipt)
}

/// iperf3 throughput client → server, bits per second.
fn throughput(client: &Netns, server: &Netns, secs: u32) -> f64 {
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
    let _ = srv.wait();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.pointer("/end/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
}

/// New TCP connections per second (connect, read one byte, close with RST).
fn conn_rate(client: &Netns, server: &Netns, dur: Duration) -> f64 {
    let listener = in_netns(server.name(), || {
        std::thread::spawn(|| TcpListener::bind(("0.0.0.0", 80)).expect("bind 80"))
            .join()
            .unwrap()
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let srv = std::thread::spawn(move || {
        for s in listener.incoming() {
            if stop2.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            if let Ok(mut s) = s {
                let _ = s.write_all(b"k");
            }
        }
    });
    let name = client.name().to_string();
    let n = std::thread::spawn(move || {
        in_netns(&name, || {
            let addr = SocketAddr::new(SERVER_IP.parse().unwrap(), 80);
            let start = Instant::now();
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
            n as f64 / start.elapsed().as_secs_f64()
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
    let _ = srv.join();
    n
}

struct Row {
    name: String,
    rules: usize,
    gbps: f64,
    conns: f64,
    setup: Duration,
}

fn main() {
    require_root();
    require_binary("iperf3", "iperf3");
    require_binary("nft", "nftables");
    require_binary("ipset", "ipset");
    let quick = std::env::args().any(|a| a == "--quick");
    let secs = if quick { 2 } else { 5 };
    let conn_dur = Duration::from_secs(if quick { 2 } else { 4 });
    let node = Netns::new("twb");
    let client = Netns::new("twb");
    let server = Netns::new("twb");
    twill_tests::veth_between(&node, "vc", "10.80.1.1/30", &client, "eth0", "10.80.1.2/30");
    twill_tests::veth_between(&node, "vs", "10.80.2.1/30", &server, "eth0", "10.80.2.2/30");
    client.ip(&["route", "add", "default", "via", "10.80.1.1"]);
    server.ip(&["route", "add", "default", "via", "10.80.2.1"]);
    node.sysctl("net.ipv4.ip_forward", "1");
    let iptables = if std::path::Path::new("/usr/sbin/iptables-legacy").exists() {
        "iptables-legacy-restore"
    } else {
        "iptables-restore"
    };
    let mut rows = Vec::new();
    let measure = |name: &str, rules: usize, setup: Duration, rows: &mut Vec<Row>| {
        let gbps = throughput(&client, &server, secs) / 1e9;
        let conns = conn_rate(&client, &server, conn_dur);
        eprintln!("{name:<10} {rules:>6} rules: {gbps:.2} Gbit/s, {conns:.0} conn/s");
        rows.push(Row {
            name: name.into(),
            rules,
            gbps,
            conns,
            setup,
        });
    };
    measure("none", 0, Duration::ZERO, &mut rows);
    for n in [0usize, 1000, 10_000] {
        let t = Instant::now();
        let table = twill_table(n);
        run_stdin(&node, "nft", &["-f", "-"], &table.script());
        measure("twill", n, t.elapsed(), &mut rows);
    }
    run_stdin(&node, "nft", &["-f", "-"], "delete table inet twill\n");
    for n in [1000usize, 10_000] {
        let t = Instant::now();
        let (ipset, ipt) = iptables_rules(n);
        run_stdin(&node, "ipset", &["-exist", "restore"], &ipset);
        run_stdin(&node, iptables, &[], &ipt);
        measure("iptables", n, t.elapsed(), &mut rows);
        run_stdin(&node, iptables, &[], "*filter\n-F\n-X\nCOMMIT\n");
        node.exec_ok("ipset", &["destroy"]);
    }
    let base = &rows[0];
    let (bg, bc) = (base.gbps, base.conns);
    println!("| dataplane | rules | TCP Gbit/s | vs none | new conn/s | vs none | setup |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.0} | {:.2} | {:.0} ms |",
            if r.name == "iptables" {
                format!("{} + ipset (linear)", iptables.trim_end_matches("-restore"))
            } else {
                r.name.clone()
            },
            r.rules,
            r.gbps,
            r.gbps / bg,
            r.conns,
            r.conns / bc,
            r.setup.as_secs_f64() * 1000.0
        );
    }
}
