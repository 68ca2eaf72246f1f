//! Service dataplanes at 1, 1,000 and 10,000 Services (3 endpoints each,
//! every tenth a NodePort), in one run, on namespaces this benchmark makes:
//!
//! * none: no Service rules at all (no table, so no conntrack either);
//! * twill: the table `inet twill-svc` as twill-node renders it
//!   (`twill_felix::calc::services`), applied as the agent does: the whole
//!   table from nothing through libnftables in process, one endpoint
//!   change as the agent's netlink batch of the diff;
//! * kube-proxy iptables: kube-proxy v1.20's iptables-mode rules for the
//!   same Services (`twill_bench::kube_proxy`), synced the way it syncs
//!   every time: `iptables -N`/`-C` per jump, `iptables-save` of filter
//!   and nat, the whole KUBE chains in one `iptables-restore --noflush
//!   --counters` (Debian's iptables: the nf_tables backend; not run from
//!   `TWILL_BENCH_IPT_BELOW` Services on, 10,000 unless set: one restore
//!   there did not finish in 23 minutes on this machine);
//! * kube-proxy iptables, legacy backend: the same rules and sync through
//!   `iptables-legacy`, `-save`, `-restore` (x_tables, which kube-proxy's
//!   image uses whenever the host does), at every size, in client, node
//!   and server namespaces of its own: a legacy table stays in its
//!   namespace once made. Its unload deletes its jumps and `KUBE-` chains
//!   and checks that nothing of them is left.
//!
//! Topology: client (a pod address, 10.244.255.2) — node (the namespace
//! holding the rules, routing) — server, which answers on port 8080 at
//! every address of 10.244.0.0/17 (a `local` route), so every endpoint of
//! every Service exists. The server answers each connection with the
//! address it arrived at, so the benchmark checks that a Service's
//! connections land on its endpoints, that traffic for no Service keeps
//! its address, and that after the endpoint change the new endpoint gets
//! traffic and the old one none.
//!
//! Per configuration and repetition: load from nothing (timed), kernel
//! memory (/proc/meminfo Slab + Percpu + VmallocUsed, after minus before:
//! the machine is shared, so this is noisy), TCP connect time (the SYN is
//! the first packet of the flow: it walks the rules) to the first and the
//! last Service and to a pod address no Service has, new connections per
//! second to the last Service and to that pod, one endpoint change of the
//! middle Service (timed), unload. Repetitions (`TWILL_BENCH_REPS`,
//! default 5) rotate the order and reverse it every other time.
//!
//! Run as root: `target/release/service_proxy` (writes
//! bench/results/service_proxy.{json,md}); `--short` (1 and 20 Services,
//! 2 repetitions, short measurements; used by `bench/tests/service_proxy.rs`)
//! writes nothing under bench/results, only `--json PATH` when given.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::time::{Duration, Instant};
use twill_bench::heap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};
use twill_bench::Spread;
use twill_bench::kube_proxy::{self, SvcPort};
use twill_felix::calc::services::{Renderer, SHARDS, Tables, synthetic, table_name};
use twill_felix::dataplane::services::{Via, apply_ops_on, nfnl};
use twill_tests::netns::spawn_in;
use twill_tests::{Netns, require_binary, require_root, veth_between};

// ---- heap accounting (Twill's in-process memory) -------------------------

#[global_allocator]
static ALLOC: heap::Counting = heap::Counting;

// ---- topology and addresses ---------------------------------------------

const CLIENT: &str = "10.244.255.2";
/// The pod CIDR (kube-proxy's `--cluster-cidr`).
const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Every address here answers in the server namespace.
const SERVED: &str = "10.244.0.0/17";
const TARGET_PORT: u16 = 8080;
const ENDPOINTS: usize = 3;
/// A pod address no Service has (traffic that is not for a Service).
const LONE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 127, 1);
/// The address the changed endpoint moves to.
const MOVED: Ipv4Addr = Ipv4Addr::new(10, 244, 127, 200);

struct Topo {
    node: Netns,
    client: Netns,
    /// Held so the namespace (and its listener) lives as long as the run.
    _server: Netns,
}

fn topology() -> Topo {
    let node = Netns::new("tsp");
    let client = Netns::new("tsp");
    let server = Netns::new("tsp");
    veth_between(
        &node,
        "vc",
        "10.244.255.1/30",
        &client,
        "eth0",
        &format!("{CLIENT}/30"),
    );
    veth_between(&node, "vs", "10.81.0.1/30", &server, "eth0", "10.81.0.2/30");
    client.ip(&["route", "add", "default", "via", "10.244.255.1"]);
    server.ip(&["route", "add", "default", "via", "10.81.0.1"]);
    server.ip(&["route", "add", "local", SERVED, "dev", "lo"]);
    node.ip(&["route", "add", SERVED, "via", "10.81.0.2"]);
    node.sysctl("net.ipv4.ip_forward", "1");
    for ns in [&node, &server] {
        ns.sysctl("net.ipv4.conf.all.rp_filter", "0");
        ns.sysctl("net.ipv4.conf.default.rp_filter", "0");
    }
    serve(&server);
    Topo {
        node,
        client,
        _server: server,
    }
}

/// Answers every connection to port 8080 with the 4 bytes of the address
/// it arrived at, for the life of the process.
fn serve(server: &Netns) {
    let l = spawn_in(server.name(), || {
        TcpListener::bind(("0.0.0.0", TARGET_PORT)).expect("bind 8080 in the server namespace")
    })
    .join()
    .expect("bind thread");
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            if let Ok(SocketAddr::V4(a)) = s.local_addr() {
                let _ = s.write_all(&a.ip().octets());
            }
        }
    });
}

/// Closes with RST: no TIME_WAIT, so the client's ports never run out.
fn rst_close(s: &TcpStream) {
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
}

/// One connection: its connect time and where it landed; None when it
/// failed (the error).
fn connect_once(to: SocketAddrV4, timeout: Duration) -> Result<(f64, Ipv4Addr), String> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(to), timeout)
        .map_err(|e| format!("connect {to}: {e}"))?;
    let connect = t.elapsed().as_secs_f64() * 1000.0;
    let _ = s.set_read_timeout(Some(timeout));
    let mut b = [0u8; 4];
    let r = s
        .read_exact(&mut b)
        .map_err(|e| format!("read from {to}: {e}"));
    rst_close(&s);
    r.map(|_| (connect, Ipv4Addr::from(b)))
}

/// `count` sequential connections from the client: connect times (ms) and
/// every address they landed on.
fn probe(client: &Netns, to: SocketAddrV4, count: usize) -> (Vec<f64>, Vec<Ipv4Addr>) {
    spawn_in(client.name(), move || {
        let mut times = Vec::with_capacity(count);
        let mut landed = Vec::with_capacity(count);
        for _ in 0..count {
            match connect_once(to, Duration::from_secs(2)) {
                Ok((t, a)) => {
                    times.push(t);
                    landed.push(a);
                }
                Err(e) => panic!("{e}"),
            }
        }
        (times, landed)
    })
    .join()
    .expect("probe thread")
}

/// Whether a connection to `to` fails (within a second) rather than lands.
fn refused(client: &Netns, to: SocketAddrV4) -> bool {
    spawn_in(client.name(), move || {
        connect_once(to, Duration::from_secs(1)).is_err()
    })
    .join()
    .expect("probe thread")
}

/// New connections per second to `to` over `dur` (connect, read the
/// answer, RST).
fn rate(client: &Netns, to: SocketAddrV4, dur: Duration) -> f64 {
    spawn_in(client.name(), move || {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < dur {
            if connect_once(to, Duration::from_secs(1)).is_ok() {
                n += 1;
            }
        }
        n as f64 / start.elapsed().as_secs_f64()
    })
    .join()
    .expect("rate thread")
}

// ---- commands ------------------------------------------------------------

/// What one command did: its output, wall time and peak RSS.
struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
    /// From spawn to exit of the program itself (not of `ip netns exec`
    /// or the helper around it).
    ms: f64,
    maxrss_kib: i64,
}

/// The first argument of this binary's helper mode ([`maxrss_helper`]).
const MAXRSS_OF: &str = "--maxrss-of";
/// How the helper's report, the last line of its stderr, starts.
const MAXRSS_LINE: &str = "service_proxy helper: maxrss_kib ms ";

/// `service_proxy --maxrss-of PROG ARGS…`: runs PROG on this process's
/// stdin, stdout and stderr, writes its peak RSS (KiB) and wall time (ms)
/// as the last line of stderr, and exits with its status. Why a helper:
/// Linux carries the high-water RSS of the process a child was forked
/// from over its `exec`, so a child of this benchmark (which holds
/// hundreds of MiB of Services) would report the benchmark's peak, not
/// its own. The helper is a fresh, small process (a few MiB: the floor of
/// what it reports).
fn maxrss_helper(args: &[String]) -> ! {
    let Some((prog, rest)) = args.split_first() else {
        eprintln!("usage: service_proxy {MAXRSS_OF} PROG [ARGS…]");
        std::process::exit(2);
    };
    let t = Instant::now();
    let status = match std::process::Command::new(prog).args(rest).status() {
        Ok(st) => st,
        Err(e) => {
            eprintln!("spawn {prog}: {e}");
            std::process::exit(127);
        }
    };
    let ms = ms_since(t);
    // SAFETY: an all-zero rusage is a valid value for getrusage to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer; RUSAGE_CHILDREN covers the one child
    // reaped above.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    eprintln!("{MAXRSS_LINE}{} {ms}", ru.ru_maxrss);
    std::process::exit(status.code().unwrap_or(128));
}

/// Runs `prog ARGS` in `ns` with `input` on stdin, through
/// [`maxrss_helper`] for the program's own peak RSS and time.
fn run(ns: &Netns, prog: &str, args: &[&str], input: &str) -> Ran {
    let exe = std::env::current_exe().expect("this benchmark's own path");
    let exe = exe.to_string_lossy();
    let mut child = ns
        .command(&exe)
        .arg(MAXRSS_OF)
        .arg(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {prog}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_string();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let mut out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let mut err = child.stderr.take().expect("stderr");
    let mut stderr = String::new();
    let _ = err.read_to_string(&mut stderr);
    let _ = writer.join();
    let stdout = reader.join().unwrap_or_default();
    let ok = child.wait().is_ok_and(|st| st.success());
    let report = stderr
        .lines()
        .rfind(|l| l.starts_with(MAXRSS_LINE))
        .map(str::to_string);
    let (maxrss_kib, ms) = report
        .as_deref()
        .and_then(|l| l.strip_prefix(MAXRSS_LINE))
        .and_then(|v| v.split_once(' '))
        .and_then(|(k, m)| Some((k.parse().ok()?, m.parse().ok()?)))
        .unwrap_or((0, f64::NAN));
    if let Some(l) = &report {
        stderr = stderr.replace(&format!("{l}\n"), "");
    }
    Ran {
        ok: ok && report.is_some(),
        stdout,
        stderr,
        ms,
        maxrss_kib,
    }
}

fn run_ok(ns: &Netns, prog: &str, args: &[&str], input: &str) -> Ran {
    let r = run(ns, prog, args, input);
    assert!(r.ok, "[{}] {prog} {args:?}: {}", ns.name(), r.stderr);
    r
}

/// Kernel memory now, in KiB: Slab, Percpu, VmallocUsed.
fn kernel_kib() -> [i64; 3] {
    let m = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let get = |k: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            .unwrap_or(0)
    };
    [get("Slab:"), get("Percpu:"), get("VmallocUsed:")]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---- the contenders ------------------------------------------------------

/// The same Services for every contender at one size.
struct Input {
    n: usize,
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    /// The same with the middle Service's first endpoint moved to MOVED.
    changed_slices: Vec<EndpointSlice>,
    /// Index of the changed Service.
    changed: usize,
}

impl Input {
    fn new(n: usize) -> Input {
        let (services, slices) = synthetic::services(n, ENDPOINTS);
        let changed = n / 2;
        let mut changed_slices = slices.clone();
        changed_slices[changed].endpoints[0].addresses = vec![MOVED.to_string()];
        changed_slices[changed].metadata.resource_version = Some("2".into());
        Input {
            n,
            services,
            slices,
            changed_slices,
            changed,
        }
    }

    fn vip(&self, i: usize) -> SocketAddrV4 {
        SocketAddrV4::new(synthetic::cluster_ip(i), 80)
    }

    fn endpoints(&self, i: usize, after_change: bool) -> BTreeSet<Ipv4Addr> {
        let mut s: BTreeSet<Ipv4Addr> = (0..ENDPOINTS)
            .map(|j| synthetic::endpoint_ip(i, j, ENDPOINTS))
            .collect();
        if after_change && i == self.changed {
            s.remove(&synthetic::endpoint_ip(i, 0, ENDPOINTS));
            s.insert(MOVED);
        }
        s
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    None,
    Twill,
    /// kube-proxy's rules through iptables on the nf_tables backend.
    Iptables,
    /// The same through the legacy x_tables backend (`iptables-legacy*`).
    IptablesLegacy,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::None => "none",
            Kind::Twill => "twill (nftables)",
            Kind::Iptables => "kube-proxy 1.20 iptables (nft backend)",
            Kind::IptablesLegacy => "kube-proxy 1.20 iptables (legacy backend)",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Kind::None => "none",
            Kind::Twill => "twill",
            Kind::Iptables => "iptables",
            Kind::IptablesLegacy => "iptables-legacy",
        }
    }
    /// The iptables peers' `iptables`, `-save` and `-restore` binaries.
    fn tools(self) -> Option<IptTools> {
        match self {
            Kind::None | Kind::Twill => None,
            Kind::Iptables => Some(IptTools {
                iptables: "iptables",
                save: "iptables-save",
                restore: "iptables-restore",
            }),
            Kind::IptablesLegacy => Some(IptTools {
                iptables: "iptables-legacy",
                save: "iptables-legacy-save",
                restore: "iptables-legacy-restore",
            }),
        }
    }
}

/// The binaries of one iptables backend.
#[derive(Clone, Copy)]
struct IptTools {
    iptables: &'static str,
    save: &'static str,
    restore: &'static str,
}

/// Times of one load or change, in ms, by part; and the loaders' peak RSS.
#[derive(Default, Clone)]
struct Applied {
    parts: BTreeMap<&'static str, f64>,
    maxrss_kib: i64,
    /// Lines of what went to the kernel (nft script or restore input).
    lines: usize,
}

impl Applied {
    fn total(&self) -> f64 {
        self.parts.values().sum()
    }
}

/// Applies an nft script in the node namespace through libnftables (the
/// agent's way), returning the time of the apply alone.
fn nft_apply(node: &Netns, script: String) -> f64 {
    spawn_in(node.name(), move || {
        let mut nft = twill_nft::Nft::new().expect("nftables");
        let t = Instant::now();
        nft.apply(&script)
            .unwrap_or_else(|e| panic!("the kernel refused twill-svc: {e}"));
        t.elapsed().as_secs_f64() * 1000.0
    })
    .join()
    .expect("nft thread")
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// What the agent keeps between passes: its renderer (each Service's part)
/// and the tables in the kernel, to diff the next change against.
struct Kept {
    renderer: Renderer,
    tables: Tables,
    /// The netlink socket the agent keeps for its diffs (opened by the
    /// first change, in the node's namespace).
    sock: Option<nfnl::Socket>,
}

/// Twill: all tables from nothing, rendered as the agent renders them.
fn twill_load(node: &Netns, inp: &Input) -> (Kept, Applied) {
    let mut a = Applied::default();
    let t = Instant::now();
    let mut renderer = Renderer::new("n1");
    let tables = renderer.render(&inp.services, &inp.slices);
    let script = tables.full_script();
    a.parts.insert("render", ms_since(t));
    a.lines = script.lines().count();
    a.parts.insert("apply", nft_apply(node, script));
    (
        Kept {
            renderer,
            tables,
            sock: None,
        },
        a,
    )
}

/// Twill: one endpoint change as the agent applies it: the renderer given
/// all Services and EndpointSlices (it renders the one that changed), the
/// steps from the tables in the kernel to the new ones, as one netlink
/// batch (`twill_felix::dataplane::services::apply_ops`; nft text only for
/// what its encoder does not take, which this benchmark's Services never
/// need).
fn twill_change(node: &Netns, inp: &Input, kept: &mut Kept) -> Applied {
    let mut a = Applied::default();
    let t = Instant::now();
    let tables = kept.renderer.render(&inp.services, &inp.changed_slices);
    let ops = tables.diff_ops(&kept.tables);
    a.parts.insert("render", ms_since(t));
    a.lines = ops.iter().map(|(_, o)| o.len()).sum();
    let mut sock = kept.sock.take();
    let (apply, sock) = spawn_in(node.name(), move || {
        let t = Instant::now();
        let via = apply_ops_on(&mut sock, &ops)
            .unwrap_or_else(|e| panic!("the kernel refused the change: {e}"));
        assert_eq!(via, Via::Netlink, "the change went as nft text");
        (ms_since(t), sock)
    })
    .join()
    .expect("netlink thread");
    kept.sock = sock;
    a.parts.insert("apply", apply);
    a
}

/// kube-proxy 1.20's sync through one iptables backend: make sure of the
/// jumps, save filter and nat, generate, restore everything.
fn iptables_sync(node: &Netns, ipt: IptTools, ports: &[SvcPort]) -> Applied {
    let mut a = Applied::default();
    // The programs' own times (not `ip netns exec`'s or the helper's).
    let mut jumps_ms = 0.0;
    for j in kube_proxy::jump_rules() {
        // `-N` fails when the chain exists; kube-proxy takes that as fine.
        jumps_ms += run(
            node,
            ipt.iptables,
            &["-w", "5", "-W", "100000", "-N", j.chain, "-t", j.table],
            "",
        )
        .ms;
        let mut args = vec!["-w", "5", "-W", "100000", "-C", j.hook, "-t", j.table];
        args.extend(j.args.iter().map(String::as_str));
        let check = run(node, ipt.iptables, &args, "");
        jumps_ms += check.ms;
        if !check.ok {
            args[4] = "-I";
            jumps_ms += run_ok(node, ipt.iptables, &args, "").ms;
        }
    }
    a.parts.insert("ensure jumps", jumps_ms);
    let filter = run_ok(node, ipt.save, &["-t", "filter"], "");
    let nat = run_ok(node, ipt.save, &["-t", "nat"], "");
    a.parts.insert("save", filter.ms + nat.ms);
    let t = Instant::now();
    let input =
        kube_proxy::restore_input(ports, CLUSTER_CIDR, &kube_proxy::saved_chains(&nat.stdout));
    a.parts.insert("generate", ms_since(t));
    a.lines = input.lines().count();
    let restore = run_ok(
        node,
        ipt.restore,
        &["-w", "5", "-W", "100000", "--noflush", "--counters"],
        &input,
    );
    a.parts.insert("restore", restore.ms);
    a.maxrss_kib = filter
        .maxrss_kib
        .max(nat.maxrss_kib)
        .max(restore.maxrss_kib);
    a
}

/// Removes what `kind` loaded into the node namespace, and only that.
fn unload(node: &Netns, kind: Kind) {
    let script = match kind {
        Kind::None => return,
        Kind::Twill => &(0..SHARDS)
            .map(|i| format!("delete table inet {}\n", table_name(i)))
            .collect::<String>(),
        Kind::Iptables => "delete table ip nat\ndelete table ip filter\n",
        Kind::IptablesLegacy => return unload_legacy(node),
    };
    run_ok(node, "nft", &["-f", "-"], script);
}

/// The legacy peer's unload: legacy tables are x_tables, not nft tables
/// (`delete table ip nat` does not reach them), and a built-in table
/// stays in a namespace once made. So: delete the jumps the sync
/// inserted, flush and delete every `KUBE-` chain of filter and nat in one
/// `iptables-legacy-restore --noflush`, and check that no rule and no
/// `KUBE-` chain is left.
fn unload_legacy(node: &Netns) {
    let ipt = Kind::IptablesLegacy.tools().expect("an iptables peer");
    for j in kube_proxy::jump_rules() {
        let mut args = vec!["-w", "5", "-W", "100000", "-D", j.hook, "-t", j.table];
        args.extend(j.args.iter().map(String::as_str));
        run_ok(node, ipt.iptables, &args, "");
    }
    let mut input = String::new();
    for table in ["filter", "nat"] {
        let save = run_ok(node, ipt.save, &["-t", table], "");
        let kube: Vec<String> = kube_proxy::saved_chains(&save.stdout)
            .into_iter()
            .filter(|c| c.starts_with("KUBE-"))
            .collect();
        input.push_str(&kube_proxy::delete_chains_input(table, &kube));
    }
    run_ok(
        node,
        ipt.restore,
        &["-w", "5", "-W", "100000", "--noflush"],
        &input,
    );
    let left = run_ok(node, ipt.save, &[], "");
    assert!(
        !left
            .stdout
            .lines()
            .any(|l| l.starts_with("-A") || l.contains("KUBE-")),
        "[{}] the legacy peer's unload left rules or chains behind:\n{}",
        node.name(),
        left.stdout
    );
}

// ---- measurement ---------------------------------------------------------

/// Sizes from here on may run fewer repetitions (`TWILL_BENCH_REPS_LARGE`).
const LARGE: usize = 10_000;

struct Settings {
    sizes: Vec<usize>,
    reps: usize,
    /// Repetitions at LARGE Services and more.
    reps_large: usize,
    /// The nft-backend iptables peer's endpoint change is measured below
    /// this many Services only (`TWILL_BENCH_IPT_CHANGE_BELOW`): at 10k it
    /// is another whole sync of many minutes on this machine.
    ipt_change_below: usize,
    /// The nft-backend iptables peer runs below this many Services only
    /// (`TWILL_BENCH_IPT_BELOW`): at 10k one iptables-restore of its rules
    /// takes longer on this machine than a run can wait for it. The legacy
    /// peer runs at every size.
    ipt_below: usize,
    /// Results go to bench/results/NAME.{json,md} (`--name`).
    name: String,
    probes: usize,
    conn_dur: Duration,
    settle: Duration,
}

/// Every sample of one contender at one size.
#[derive(Default)]
struct Samples {
    /// Per repetition: p50 connect ms to the first / last Service / the lone pod.
    first_ms: Vec<f64>,
    last_ms: Vec<f64>,
    pod_ms: Vec<f64>,
    svc_rate: Vec<f64>,
    pod_rate: Vec<f64>,
    load: Vec<Applied>,
    change: Vec<Applied>,
    kernel_kib: Vec<[i64; 3]>,
}

fn p50(v: &[f64]) -> f64 {
    Spread::of(v).median
}

/// `median (min–max)`, or why there is none.
fn show(sp: Spread, prec: usize) -> String {
    if sp.median.is_nan() {
        "not measured".into()
    } else {
        sp.show(prec)
    }
}

fn check_landed(what: &str, landed: &[Ipv4Addr], allowed: &BTreeSet<Ipv4Addr>) {
    for a in landed {
        assert!(
            allowed.contains(a),
            "{what}: a connection landed on {a}, not one of {allowed:?}"
        );
    }
}

/// One configuration, one repetition: load, measure, change, unload.
fn measure(t: &Topo, kind: Kind, inp: &Input, s: &Settings, out: &mut Samples) {
    let lone = SocketAddrV4::new(LONE_POD, TARGET_PORT);
    let before = kernel_kib();
    let mut twill_table = None;
    let ports = kube_proxy::from_objects(&inp.services, &inp.slices);
    match kind {
        Kind::None => {}
        Kind::Twill => {
            let (table, a) = twill_load(&t.node, inp);
            twill_table = Some(table);
            out.load.push(a);
        }
        Kind::Iptables | Kind::IptablesLegacy => {
            let ipt = kind.tools().expect("an iptables peer");
            out.load.push(iptables_sync(&t.node, ipt, &ports));
        }
    }
    std::thread::sleep(s.settle);
    let after = kernel_kib();
    out.kernel_kib.push([0, 1, 2].map(|k| after[k] - before[k]));

    let (times, landed) = probe(&t.client, lone, s.probes);
    check_landed(
        "traffic for no Service",
        &landed,
        &BTreeSet::from([LONE_POD]),
    );
    out.pod_ms.push(p50(&times));
    out.pod_rate.push(rate(&t.client, lone, s.conn_dur));
    if kind == Kind::None {
        // Without rules a Service address leads nowhere: what the other
        // configurations measure is their rules' doing.
        assert!(
            refused(&t.client, inp.vip(0)),
            "a cluster IP answered with no Service rules loaded"
        );
        return;
    }
    let last = inp.n - 1;
    for (i, into) in [(0, &mut out.first_ms), (last, &mut out.last_ms)] {
        let (times, landed) = probe(&t.client, inp.vip(i), s.probes);
        check_landed(
            &format!("{} Service {i}", kind.key()),
            &landed,
            &inp.endpoints(i, false),
        );
        into.push(p50(&times));
    }
    out.svc_rate
        .push(rate(&t.client, inp.vip(last), s.conn_dur));

    if kind == Kind::Iptables && inp.n >= s.ipt_change_below {
        unload(&t.node, kind);
        return;
    }
    let change = match kind {
        Kind::Twill => twill_change(&t.node, inp, twill_table.as_mut().expect("loaded")),
        Kind::Iptables | Kind::IptablesLegacy => {
            let ipt = kind.tools().expect("an iptables peer");
            let ports = kube_proxy::from_objects(&inp.services, &inp.changed_slices);
            iptables_sync(&t.node, ipt, &ports)
        }
        Kind::None => unreachable!("returned above"),
    };
    out.change.push(change);
    // The change is in the kernel: the moved endpoint gets connections, the
    // old address none (each connect is a new flow; 30 tries miss an
    // endpoint with probability (2/3)^30).
    let (_, landed) = probe(&t.client, inp.vip(inp.changed), 30);
    check_landed(
        &format!("{} changed Service", kind.key()),
        &landed,
        &inp.endpoints(inp.changed, true),
    );
    assert!(
        landed.contains(&MOVED),
        "{}: the moved endpoint {MOVED} got none of 30 connections after the change",
        kind.key()
    );
    unload(&t.node, kind);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(MAXRSS_OF) {
        maxrss_helper(&args[2..]);
    }
    require_root();
    for (b, p) in [
        ("nft", "nftables"),
        ("iptables", "iptables"),
        ("iptables-save", "iptables"),
        ("iptables-restore", "iptables"),
        ("iptables-legacy", "iptables"),
        ("iptables-legacy-save", "iptables"),
        ("iptables-legacy-restore", "iptables"),
    ] {
        require_binary(b, p);
    }
    let short = args.iter().any(|a| a == "--short");
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let version_of = |prog: &str| {
        std::process::Command::new(prog)
            .arg("-V")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let version = version_of("iptables");
    assert!(
        version.contains("nf_tables"),
        "iptables is not the nf_tables backend ({version}); the anchor is"
    );
    let legacy_version = version_of("iptables-legacy");
    assert!(
        legacy_version.contains("legacy"),
        "iptables-legacy is not the legacy backend ({legacy_version})"
    );
    let reps: usize = std::env::var("TWILL_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if short { 2 } else { 5 });
    let s = Settings {
        reps_large: std::env::var("TWILL_BENCH_REPS_LARGE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(reps)
            .min(reps),
        sizes: std::env::var("TWILL_BENCH_SIZES")
            .ok()
            .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
            .unwrap_or_else(|| {
                if short {
                    vec![1, 20]
                } else {
                    vec![1, 1000, 10_000]
                }
            }),
        reps,
        ipt_change_below: std::env::var("TWILL_BENCH_IPT_CHANGE_BELOW")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(usize::MAX),
        ipt_below: std::env::var("TWILL_BENCH_IPT_BELOW")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(LARGE),
        name: args
            .iter()
            .position(|a| a == "--name")
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| "service_proxy".into()),
        probes: if short { 20 } else { 200 },
        conn_dur: Duration::from_millis(if short { 300 } else { 3000 }),
        settle: Duration::from_millis(if short { 300 } else { 2000 }),
    };
    let t = topology();
    // The legacy peer's own namespaces: x_tables tables, once made, stay in
    // a namespace (their hooks, and conntrack for nat) until it is gone,
    // and would tax every configuration measured after them.
    let legacy = topology();
    // Closed flows leave conntrack at once, so one configuration's
    // connections are gone before the next one's memory is read.
    for topo in [&t, &legacy] {
        topo.node
            .sysctl("net.netfilter.nf_conntrack_tcp_timeout_close", "1");
    }

    // Twill's process memory for the Services, counted by the allocator:
    // what the agent keeps (the objects from its watches, the table) and
    // the peak while rendering.
    let mut heap = BTreeMap::new();
    let inputs: Vec<Input> = s.sizes.iter().map(|&n| Input::new(n)).collect();
    for inp in &inputs {
        let base = heap::current();
        heap::set_peak(base);
        let (svcs, slices) = synthetic::services(inp.n, ENDPOINTS);
        let objects = heap::current() - base;
        let mut renderer = Renderer::new("n1");
        let tables = renderer.render(&svcs, &slices);
        let kept = heap::current() - base;
        let script = tables.full_script();
        let peak = heap::peak() - base;
        drop((script, renderer, tables, svcs, slices));
        heap.insert(inp.n, (objects, kept, peak));
    }

    let mut configs = vec![(Kind::None, 0usize)];
    for (k, inp) in inputs.iter().enumerate() {
        configs.push((Kind::Twill, k));
        if inp.n < s.ipt_below {
            configs.push((Kind::Iptables, k));
        }
        configs.push((Kind::IptablesLegacy, k));
    }
    let load_before = loadavg();
    let mut samples: Vec<Samples> = configs.iter().map(|_| Samples::default()).collect();
    for rep in 0..s.reps {
        let mut order: Vec<usize> = (0..configs.len())
            .map(|k| (k + rep) % configs.len())
            .collect();
        if rep % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (kind, k) = configs[i];
            let inp = &inputs[k];
            if kind != Kind::None && inp.n >= LARGE && rep >= s.reps_large {
                continue;
            }
            let t0 = Instant::now();
            let topo = if kind == Kind::IptablesLegacy {
                &legacy
            } else {
                &t
            };
            measure(topo, kind, inp, &s, &mut samples[i]);
            let sm = &samples[i];
            eprintln!(
                "rep {rep} {:<40} n={:<6} load {:>9.1} ms, change {:>9.1} ms, last svc {:.3} ms, {:.0} conn/s svc, {:.0} conn/s pod ({:.0} s)",
                kind.label(),
                if kind == Kind::None { 0 } else { inp.n },
                sm.load.last().map_or(0.0, Applied::total),
                sm.change.last().map_or(0.0, Applied::total),
                sm.last_ms.last().copied().unwrap_or(f64::NAN),
                sm.svc_rate.last().copied().unwrap_or(f64::NAN),
                sm.pod_rate.last().copied().unwrap_or(f64::NAN),
                t0.elapsed().as_secs_f64()
            );
            if let (Some(l), Some(c)) = (sm.load.last(), sm.change.last()) {
                eprintln!("    load parts {:?}, change parts {:?}", l.parts, c.parts);
            }
            // Conntrack entries of this configuration expire (close
            // timeout 1 s) before the next one reads memory.
            std::thread::sleep(s.settle);
        }
    }
    let load_after = loadavg();
    let (md, doc) = report(
        &s,
        &inputs,
        &configs,
        &samples,
        &heap,
        &load_before,
        &load_after,
        &version,
        &legacy_version,
    );
    print!("{md}");
    if let Some(p) = json_path {
        std::fs::write(&p, serde_json::to_string_pretty(&doc).expect("json"))
            .unwrap_or_else(|e| panic!("write {p}: {e}"));
    }
    if !short && let Err(e) = twill_bench::write_results(&s.name, doc, &md) {
        eprintln!("service_proxy: writing results: {e}");
    }
    drop((t, legacy));
}

// ---- report ----------------------------------------------------------------

fn spread(v: impl IntoIterator<Item = f64>) -> Spread {
    Spread::of(&v.into_iter().collect::<Vec<_>>())
}

fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

#[allow(clippy::too_many_arguments)]
fn report(
    s: &Settings,
    inputs: &[Input],
    configs: &[(Kind, usize)],
    samples: &[Samples],
    heap: &BTreeMap<usize, (usize, usize, usize)>,
    load_before: &str,
    load_after: &str,
    version: &str,
    legacy_version: &str,
) -> (String, Value) {
    use std::fmt::Write as _;
    let base = &samples[0];
    let base_ms = p50(&base.pod_ms);
    let base_rate = p50(&base.pod_rate);
    let dash = || "–".to_string();
    let mut traffic = Vec::new();
    let mut control = Vec::new();
    let mut rows_json = Vec::new();
    for ((kind, k), sm) in configs.iter().zip(samples) {
        let n = if *kind == Kind::None { 0 } else { inputs[*k].n };
        let svc = *kind != Kind::None;
        let pod = Spread::of(&sm.pod_rate);
        traffic.push(vec![
            kind.label().to_string(),
            n.to_string(),
            if svc {
                Spread::of(&sm.first_ms).show(3)
            } else {
                dash()
            },
            if svc {
                Spread::of(&sm.last_ms).show(3)
            } else {
                dash()
            },
            Spread::of(&sm.pod_ms).show(3),
            if svc {
                Spread::of(&sm.svc_rate).show(0)
            } else {
                dash()
            },
            pod.show(0),
            format!("{:.2}", pod.median / base_rate),
        ]);
        let kernel = spread(
            sm.kernel_kib
                .iter()
                .map(|k| mib(k.iter().sum::<i64>() as f64)),
        );
        if svc {
            let load = spread(sm.load.iter().map(Applied::total));
            let change = spread(sm.change.iter().map(Applied::total));
            let change_kernel = spread(sm.change.iter().map(|a| {
                a.parts
                    .get("apply")
                    .or(a.parts.get("restore"))
                    .copied()
                    .unwrap_or(f64::NAN)
            }));
            let rss = spread(
                sm.load
                    .iter()
                    .chain(&sm.change)
                    .map(|a| mib(a.maxrss_kib as f64)),
            );
            let (_, kept, peak) = heap.get(&n).copied().unwrap_or_default();
            control.push(vec![
                kind.label().to_string(),
                n.to_string(),
                load.show(1),
                show(change, 1),
                show(change_kernel, 1),
                format!(
                    "{} / {}",
                    sm.load.first().map_or(0, |a| a.lines),
                    sm.change
                        .first()
                        .map_or("–".into(), |a| a.lines.to_string())
                ),
                kernel.show(1),
                match kind {
                    Kind::Twill => format!(
                        "{:.1} kept, {:.1} peak (heap)",
                        kept as f64 / 1048576.0,
                        peak as f64 / 1048576.0
                    ),
                    _ => format!("{} (loader RSS)", rss.show(1)),
                },
            ]);
        }
        let parts = |v: &[Applied]| -> Value {
            v.iter()
                .map(|a| json!({"parts_ms": a.parts, "total_ms": a.total(), "lines": a.lines, "loader_maxrss_kib": a.maxrss_kib}))
                .collect()
        };
        rows_json.push(json!({
            "dataplane": kind.key(), "services": n,
            "connect_ms_p50_first_service": sm.first_ms, "connect_ms_p50_last_service": sm.last_ms,
            "connect_ms_p50_no_service": sm.pod_ms,
            "conns_per_s_service": sm.svc_rate, "conns_per_s_no_service": sm.pod_rate,
            "load": parts(&sm.load), "change": parts(&sm.change),
            "kernel_kib_slab_percpu_vmalloc": sm.kernel_kib,
            "conns_per_s_no_service_vs_none": pod.median / base_rate,
        }));
    }
    // Twill ÷ iptables per size, and Twill's flatness.
    let at = |kind: Kind, k: usize| {
        configs
            .iter()
            .position(|c| *c == (kind, k))
            .map(|i| &samples[i])
    };
    let mut vs = Vec::new();
    let peers = [
        (Kind::Iptables, "kube-proxy iptables, nft backend"),
        (Kind::IptablesLegacy, "kube-proxy iptables, legacy backend"),
    ];
    for ((k, inp), (peer, against)) in inputs
        .iter()
        .enumerate()
        .flat_map(|ki| peers.iter().map(move |p| (ki, *p)))
    {
        let Some(tw) = at(Kind::Twill, k) else {
            continue;
        };
        let Some(ip) = at(peer, k) else {
            let mut row = vec![inp.n.to_string(), against.to_string()];
            row.extend((0..6).map(|_| "peer not run".to_string()));
            vs.push(row);
            continue;
        };
        let tot = |v: &[Applied]| p50(&v.iter().map(Applied::total).collect::<Vec<_>>());
        let kern = |v: &[[i64; 3]]| {
            p50(&v
                .iter()
                .map(|k| k.iter().sum::<i64>() as f64)
                .collect::<Vec<_>>())
        };
        vs.push(vec![
            inp.n.to_string(),
            against.to_string(),
            format!("{:.2}", p50(&ip.last_ms) / p50(&tw.last_ms)),
            format!("{:.2}", p50(&tw.svc_rate) / p50(&ip.svc_rate)),
            format!("{:.2}", p50(&tw.pod_rate) / p50(&ip.pod_rate)),
            format!("{:.2}", tot(&ip.load) / tot(&tw.load)),
            if ip.change.is_empty() {
                "–".into()
            } else {
                format!("{:.2}", tot(&ip.change) / tot(&tw.change))
            },
            format!("{:.2}", kern(&ip.kernel_kib) / kern(&tw.kernel_kib)),
        ]);
    }
    let mut goals = String::new();
    if let (Some(first), Some(lastk)) = (inputs.first(), inputs.len().checked_sub(1)) {
        let big = &inputs[lastk];
        if let (Some(t1), Some(tn)) = (at(Kind::Twill, 0), at(Kind::Twill, lastk)) {
            let change = p50(&tn.change.iter().map(Applied::total).collect::<Vec<_>>());
            let per_size: Vec<String> = (0..inputs.len())
                .filter_map(|k| {
                    let sm = at(Kind::Twill, k)?;
                    let c = p50(&sm.change.iter().map(Applied::total).collect::<Vec<_>>());
                    Some(format!("{:.1} ms at {}", c, inputs[k].n))
                })
                .collect();
            goals = format!(
                "Goals (Twill): flat from {} to {} Services — connect time to the last Service {:.2}×, new connections/s to it {:.2}×, to no Service {:.2}× of the {}-Service figure; one endpoint change to the kernel {} Services (goal < 50 ms at {}: {}).\n",
                first.n,
                big.n,
                p50(&tn.last_ms) / p50(&t1.last_ms),
                p50(&tn.svc_rate) / p50(&t1.svc_rate),
                p50(&tn.pod_rate) / p50(&t1.pod_rate),
                first.n,
                per_size.join(", "),
                big.n,
                if change < 50.0 { "met" } else { "not met" }
            );
        }
    }
    let sizes = |f: &dyn Fn(&Input) -> bool| {
        inputs
            .iter()
            .filter(|i| f(i))
            .map(|i| i.n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (nft_ran, skipped) = (
        sizes(&|i| i.n < s.ipt_below),
        sizes(&|i| i.n >= s.ipt_below),
    );
    let nft_change_skipped = sizes(&|i| i.n < s.ipt_below && i.n >= s.ipt_change_below);
    let mut peer_note = format!(
        "Peers: {} ran at {} Services",
        Kind::Iptables.label(),
        if nft_ran.is_empty() {
            "no size of"
        } else {
            &nft_ran
        }
    );
    if !skipped.is_empty() {
        let _ = write!(
            peer_note,
            ", not at {skipped} (`TWILL_BENCH_IPT_BELOW={}`): one `iptables-restore` of its rules there did not finish on this machine in the time a run can give it (see docs/benchmarks.md)",
            s.ipt_below
        );
    }
    if !nft_change_skipped.is_empty() {
        let _ = write!(
            peer_note,
            "; its endpoint change not measured at {nft_change_skipped} (`TWILL_BENCH_IPT_CHANGE_BELOW={}`)",
            s.ipt_change_below
        );
    }
    let _ = writeln!(
        peer_note,
        ". {} ran and was measured at {} Services, in namespaces of its own (legacy tables stay in a namespace once made).",
        Kind::IptablesLegacy.label(),
        sizes(&|_| true)
    );
    let md = format!(
        "**Traffic**: TCP connect time (ms, p50 of {} connections per repetition) and new connections/s ({:.1} s per repetition)\n\n{}\n**Control plane and memory**: ms to get all Services into the kernel from nothing and one endpoint change (Twill: render, then from nothing one libnftables transaction of nft text, a change one netlink batch of the diff's steps; iptables: kube-proxy's whole sync — `-N`/`-C` per jump, `iptables-save` ×2, generate, `iptables-restore`, through `iptables-legacy*` for the legacy backend), and kernel memory (Slab + Percpu + VmallocUsed after load minus before, MiB)\n\n{}\nTwill ÷ iptables, one row per size and peer (medians; above 1.00 Twill is ahead: quicker, faster, or smaller):\n\n{}\n{goals}{peer_note}\nMedian (min–max) of {}, the order of the {} configurations rotating and reversed every other repetition; {} endpoints per Service, every tenth a NodePort; \"none\" has no rules and no conntrack (a cluster IP leads nowhere there, which the run checks). Every connection's landing address is checked: a Service's on its endpoints, after the change on the new set (the moved endpoint included), traffic for no Service unchanged. {version}; {legacy_version}. Load average {load_before} before, {load_after} after (a shared 2-core machine). kube-proxy's own process is not run here; the anchor (issue 17) measured it at 150–164 MiB with 10k Services.\n",
        s.probes,
        s.conn_dur.as_secs_f64(),
        twill_bench::table(
            &[
                "dataplane",
                "Services",
                "connect: first Service",
                "connect: last Service",
                "connect: no Service",
                "new conn/s: last Service",
                "new conn/s: no Service",
                "vs none",
            ],
            &traffic,
        ),
        twill_bench::table(
            &[
                "dataplane",
                "Services",
                "all Services from nothing",
                "one endpoint change",
                "of which the kernel apply / restore",
                "lines (load / change; Twill's change: netlink steps)",
                "kernel MiB",
                "process MiB",
            ],
            &control,
        ),
        twill_bench::table(
            &[
                "Services",
                "against",
                "connect: last Service",
                "conn/s: last Service",
                "conn/s: no Service",
                "from nothing",
                "one change",
                "kernel memory",
            ],
            &vs,
        ),
        if s.reps_large < s.reps && s.sizes.iter().any(|&n| n >= LARGE) {
            format!(
                "{} repetitions ({} at {LARGE} Services and more, `TWILL_BENCH_REPS_LARGE`)",
                s.reps, s.reps_large
            )
        } else {
            format!("{} repetitions", s.reps)
        },
        configs.len(),
        ENDPOINTS,
    );
    let _ = base_ms;
    let doc = json!({
        "ipt_below": (s.ipt_below != usize::MAX).then_some(s.ipt_below),
        "reps": s.reps, "reps_large": s.reps_large, "large_from": LARGE, "sizes": s.sizes, "endpoints_per_service": ENDPOINTS,
        "probes": s.probes, "conn_secs": s.conn_dur.as_secs_f64(),
        "iptables": version, "iptables_legacy": legacy_version,
        "loadavg_before": load_before, "loadavg_after": load_after,
        "twill_heap_bytes": heap.iter().map(|(n, (o, k, p))| json!({"services": n, "objects": o, "objects_model_table": k, "peak_render": p})).collect::<Vec<_>>(),
        "rows": rows_json,
    });
    (md, doc)
}
