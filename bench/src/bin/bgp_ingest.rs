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
//! `gobgp`, `frr`) pick receivers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use twill_bench::{ratio, table, write_results};
use twill_tests::peers::{Peer, TwillBgpd};
use twill_tests::{Netns, require_binary, require_root, veth_between};

const RECEIVER_ASN: u32 = 65001;
const POLL: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Twill,
    Bird,
    Gobgp,
    Frr,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Twill, Kind::Bird, Kind::Gobgp, Kind::Frr];
    fn name(self) -> &'static str {
        match self {
            Kind::Twill => "twill-bgpd",
            Kind::Bird => "BIRD 2",
            Kind::Gobgp => "GoBGP",
            Kind::Frr => "FRR bgpd",
        }
    }
}

/// One benchmark shape: the injector's sessions and what they announce.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// One session, N prefixes.
    Table(usize),
    /// 100 sessions × 10 prefixes.
    Mesh,
}

const MESH_PEERS: usize = 100;
const MESH_EACH: usize = 10;

impl Shape {
    fn label(self) -> String {
        match self {
            Shape::Table(n) if n % 1_000_000 == 0 => format!("{}M prefixes", n / 1_000_000),
            Shape::Table(n) if n % 1000 == 0 => format!("{}k prefixes", n / 1000),
            Shape::Table(n) => format!("{n} prefixes"),
            Shape::Mesh => format!("mesh {MESH_PEERS} peers x {MESH_EACH}"),
        }
    }
    fn total(self) -> usize {
        match self {
            Shape::Table(n) => n,
            Shape::Mesh => MESH_PEERS * MESH_EACH,
        }
    }
    /// (injector address, its ASN) per session.
    fn injectors(self) -> Vec<(String, u32)> {
        match self {
            Shape::Table(_) => vec![("10.97.0.1".into(), 65000)],
            Shape::Mesh => (1..=MESH_PEERS)
                .map(|i| (format!("10.98.0.{i}"), 65100 + i as u32))
                .collect(),
        }
    }
    fn receiver_addr(self) -> &'static str {
        match self {
            Shape::Table(_) => "10.97.0.2",
            Shape::Mesh => "10.98.0.200",
        }
    }
    fn timeout(self) -> Duration {
        match self {
            Shape::Table(n) if n >= 500_000 => Duration::from_secs(150),
            _ => Duration::from_secs(60),
        }
    }
}

/// The N-th /24 from 32.0.0.0 upward.
fn table_prefix(i: usize) -> String {
    let a = (32u32 << 24) + ((i as u32) << 8);
    let [b0, b1, b2, _] = a.to_be_bytes();
    format!("{b0}.{b1}.{b2}.0/24")
}

/// The injector's BIRD config: the whole table (`mesh == None`), or mesh
/// instance `i` (1..=100) speaking from 10.98.0.i with its 10 prefixes.
fn injector_conf(shape: Shape, mesh: Option<usize>, dir: &Path) -> String {
    let mut s = format!(
        "log \"{}/bird.log\" {{ warning, error, fatal, bug }};\nrouter id 10.97.0.1;\nprotocol device {{ }}\n",
        dir.display()
    );
    match (shape, mesh) {
        (Shape::Table(n), _) => {
            s.reserve(n * 40);
            s.push_str("protocol static s4 {\n ipv4;\n");
            for i in 0..n {
                s.push_str(" route ");
                s.push_str(&table_prefix(i));
                s.push_str(" blackhole;\n");
            }
            s.push_str("}\n");
            s.push_str(
                "protocol bgp inj {\n local 10.97.0.1 as 65000;\n neighbor 10.97.0.2 as 65001;\n passive on;\n hold time 240;\n error wait time 1, 2;\n ipv4 { import none; export all; };\n}\n",
            );
        }
        (Shape::Mesh, i) => {
            let i = i.unwrap_or(1);
            s.push_str("protocol static s4 {\n ipv4;\n");
            for j in 0..MESH_EACH {
                s.push_str(&format!(" route 20.{i}.{j}.0/24 blackhole;\n"));
            }
            s.push_str("}\n");
            s.push_str(&format!(
                "protocol bgp m {{\n local 10.98.0.{i} as {asn};\n neighbor 10.98.0.200 as 65001;\n strict bind on;\n passive on;\n hold time 240;\n error wait time 1, 2;\n ipv4 {{ import none; export all; }};\n}}\n",
                asn = 65100 + i
            ));
        }
    }
    s
}

fn receiver_conf(kind: Kind, shape: Shape, dir: &Path) -> String {
    let local = shape.receiver_addr();
    let peers = shape.injectors();
    match kind {
        Kind::Twill => {
            let mut s = format!(
                "asn: {RECEIVER_ASN}\nrouter_id: {local}\nlisten_address: {local}\nstatus_socket: {}\nneighbors:\n",
                TwillBgpd::socket_for(dir).display()
            );
            for (a, asn) in &peers {
                s.push_str(&format!(
                    "  - {{ address: {a}, asn: {asn}, hold_time: 240, connect_retry: 1, families: [ipv4], import: {{ default: accept }} }}\n"
                ));
            }
            s
        }
        Kind::Bird => {
            let mut s = format!(
                "log \"{}/bird.log\" {{ warning, error, fatal, bug }};\nrouter id {local};\nprotocol device {{ }}\n",
                dir.display()
            );
            for (i, (a, asn)) in peers.iter().enumerate() {
                s.push_str(&format!(
                    "protocol bgp p{i} {{\n local {local} as {RECEIVER_ASN};\n neighbor {a} as {asn};\n hold time 240;\n connect delay time 1;\n connect retry time 1;\n ipv4 {{ import all; export none; }};\n}}\n"
                ));
            }
            s
        }
        Kind::Gobgp => {
            let mut s = format!(
                "[global.config]\n  as = {RECEIVER_ASN}\n  router-id = \"{local}\"\n  local-address-list = [\"{local}\"]\n[global.apply-policy.config]\n  default-export-policy = \"reject-route\"\n"
            );
            for (a, asn) in &peers {
                s.push_str(&format!(
                    "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{a}\"\n    peer-as = {asn}\n  [neighbors.timers.config]\n    connect-retry = 1\n    hold-time = 240\n    keepalive-interval = 80\n  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n"
                ));
            }
            s
        }
        Kind::Frr => {
            let mut s = format!(
                "hostname rcv\nroute-map NONE deny 10\nrouter bgp {RECEIVER_ASN}\n bgp router-id {local}\n no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n timers bgp 80 240\n"
            );
            for (a, asn) in &peers {
                s.push_str(&format!(
                    " neighbor {a} remote-as {asn}\n neighbor {a} timers connect 1\n"
                ));
            }
            s.push_str(" address-family ipv4 unicast\n");
            for (a, _) in &peers {
                s.push_str(&format!(
                    "  neighbor {a} activate\n  neighbor {a} route-map NONE out\n"
                ));
            }
            s.push_str(" exit-address-family\n");
            s
        }
    }
}

/// A running receiver (the guard stops it by PID on drop).
enum Receiver {
    Twill(TwillBgpd),
    Bird(Peer),
    Gobgp(Peer),
    Frr(Peer),
}

/// What one poll of a receiver's own CLI shows.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    established: usize,
    prefixes: usize,
}

fn output(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// `A of B routes for C networks in table master4` → C.
fn bird_networks(text: &str) -> usize {
    text.lines()
        .find(|l| l.contains("networks"))
        .and_then(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.iter()
                .position(|x| *x == "networks")
                .and_then(|p| p.checked_sub(1))
                .and_then(|p| w.get(p))
                .and_then(|x| x.parse().ok())
        })
        .unwrap_or(0)
}

/// `Destination: N, Path: M` → N.
fn gobgp_destinations(text: &str) -> usize {
    text.split("Destination:")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|x| x.trim().parse().ok())
        .unwrap_or(0)
}

impl Receiver {
    fn start(kind: Kind, shape: Shape, ns: &Netns, dir: &Path, api_port: u16) -> Receiver {
        let conf = receiver_conf(kind, shape, dir);
        match kind {
            Kind::Twill => Receiver::Twill(TwillBgpd::start(ns, dir, &conf)),
            Kind::Bird => Receiver::Bird(Peer::bird().raw_config(&conf).start(ns, dir)),
            Kind::Gobgp => Receiver::Gobgp(
                Peer::gobgp()
                    .raw_config(&conf)
                    .api_port(api_port)
                    .start(ns, dir),
            ),
            Kind::Frr => Receiver::Frr(
                Peer::frr()
                    .raw_config(&conf)
                    .listen(shape.receiver_addr())
                    .start(ns, dir),
            ),
        }
    }

    fn pid(&self) -> i32 {
        match self {
            Receiver::Twill(t) => t.daemon.pid(),
            Receiver::Bird(b) => b.pid(),
            Receiver::Gobgp(g) => g.pid(),
            Receiver::Frr(f) => f.pid(),
        }
    }

    fn poll(&self, twill_bin: &Path) -> Seen {
        match self {
            Receiver::Twill(t) => {
                let text = output(
                    Command::new(twill_bin)
                        .args(["status", "-o", "json", "--socket"])
                        .arg(&t.socket),
                );
                let peers: Vec<Value> = serde_json::from_str(&text).unwrap_or_default();
                Seen {
                    established: peers
                        .iter()
                        .filter(|p| p["state"].as_str() == Some("Established"))
                        .count(),
                    prefixes: peers
                        .iter()
                        .map(|p| p["accepted"].as_u64().unwrap_or(0) as usize)
                        .sum(),
                }
            }
            Receiver::Bird(b) => {
                let protos = b.cli(&["show", "protocols"]);
                Seen {
                    established: protos.matches("Established").count(),
                    prefixes: bird_networks(&b.cli(&["show", "route", "count"])),
                }
            }
            Receiver::Gobgp(g) => {
                let neigh = g.cli(&["neighbor"]);
                let rib = g.cli(&["global", "rib", "summary", "-a", "ipv4"]);
                Seen {
                    established: neigh.matches("Establ").count(),
                    prefixes: gobgp_destinations(&rib),
                }
            }
            Receiver::Frr(f) => {
                let text = f.cli(&["show bgp ipv4 unicast summary json"]);
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let peers = v["peers"].as_object().cloned().unwrap_or_default();
                let rcvd: usize = peers
                    .values()
                    .map(|p| p["pfxRcd"].as_u64().unwrap_or(0) as usize)
                    .sum();
                Seen {
                    established: peers
                        .values()
                        .filter(|p| p["state"].as_str() == Some("Established"))
                        .count(),
                    // pfxRcd: accepted into the RIB after import policy
                    // (ribCount counts radix-tree nodes, not prefixes).
                    prefixes: rcvd,
                }
            }
        }
    }
}

/// VmHWM in KiB and utime+stime in seconds of a process (all its threads).
fn proc_usage(pid: i32) -> Result<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse().ok())
        .context("VmHWM")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks =
        |i: usize| -> Result<u64> { f.get(i).and_then(|x| x.parse().ok()).context("stat field") };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((hwm, (ticks(11)? + ticks(12)?) as f64 / hz))
}

#[derive(Debug, Clone)]
struct Row {
    shape: Shape,
    kind: Kind,
    complete: bool,
    prefixes: usize,
    /// First poll Established → first poll with any prefix.
    est_to_first: Option<f64>,
    /// First poll Established → first poll with all prefixes.
    est_to_all: Option<f64>,
    /// Receiver start → all prefixes.
    start_to_all: Option<f64>,
    peak_rss_kib: u64,
    cpu_s: f64,
}

/// The injector namespace, its BIRD(s) and the receiver's namespace,
/// linked by a veth (fields drop in order: daemons before namespaces).
struct Lab {
    _birds: Vec<Peer>,
    _inj: Netns,
    rcv: Netns,
}

impl Drop for Lab {
    /// Stops the injector BIRDs in parallel: each guard waits for its PID to
    /// go away, and a daemonised BIRD lingers as a zombie until init reaps
    /// it, so 100 sequential stops would take minutes.
    fn drop(&mut self) {
        let birds = std::mem::take(&mut self._birds);
        std::thread::scope(|s| {
            for b in birds {
                s.spawn(move || drop(b));
            }
        });
    }
}

impl Lab {
    /// Namespaces and link first (the mesh injectors bind to their own
    /// addresses), then the injector: one BIRD with the whole table, or for
    /// the mesh 100 BIRDs with 10 prefixes each — BIRD serialises sessions
    /// to the same neighbour address inside one instance, so one instance
    /// with 100 sessions to the receiver would bring them up one at a time.
    fn start(shape: Shape, dir: &Path) -> Result<Lab> {
        let inj = Netns::new("bgi");
        let rcv = Netns::new("bgr");
        let t = Instant::now();
        let mut birds = Vec::new();
        match shape {
            Shape::Table(_) => {
                veth_between(&inj, "inj0", "10.97.0.1/30", &rcv, "rcv0", "10.97.0.2/30");
                let d = dir.join("injector");
                std::fs::create_dir_all(&d)?;
                birds.push(
                    Peer::bird()
                        .raw_config(&injector_conf(shape, None, &d))
                        .start(&inj, &d),
                );
            }
            Shape::Mesh => {
                veth_between(&inj, "inj0", "10.98.0.1/24", &rcv, "rcv0", "10.98.0.200/24");
                for i in 2..=MESH_PEERS {
                    inj.ip(&["addr", "add", &format!("10.98.0.{i}/24"), "dev", "inj0"]);
                }
                for i in 1..=MESH_PEERS {
                    let d = dir.join(format!("injector{i}"));
                    std::fs::create_dir_all(&d)?;
                    birds.push(
                        Peer::bird()
                            .raw_config(&injector_conf(shape, Some(i), &d))
                            .start(&inj, &d),
                    );
                }
            }
        }
        let each = match shape {
            Shape::Table(n) => n,
            Shape::Mesh => MESH_EACH,
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        for b in &birds {
            loop {
                let n = bird_networks(&b.cli(&["show", "route", "count"]));
                if n >= each {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("injector loaded only {n} of {each} routes");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        eprintln!(
            "  injector ({}) ready in {:.1} s",
            shape.label(),
            t.elapsed().as_secs_f64()
        );
        Ok(Lab {
            _birds: birds,
            _inj: inj,
            rcv,
        })
    }
}

fn run_one(shape: Shape, kind: Kind, dir: &Path, api_port: u16, twill_bin: &Path) -> Result<Row> {
    let want = shape.total();
    let sessions = shape.injectors().len();
    let lab = Lab::start(shape, &dir.join("injector"))?;
    let rdir = dir.join("receiver");
    std::fs::create_dir_all(&rdir)?;
    let start = Instant::now();
    let rcv = Receiver::start(kind, shape, &lab.rcv, &rdir, api_port);
    let deadline = start + shape.timeout();
    let mut est_at: Option<Instant> = None;
    let mut first_at: Option<Instant> = None;
    let mut done_at: Option<Instant> = None;
    let mut last = Seen::default();
    while Instant::now() < deadline {
        let seen = rcv.poll(twill_bin);
        let now = Instant::now();
        if est_at.is_none() && seen.established >= 1 {
            est_at = Some(now);
        }
        if first_at.is_none() && seen.prefixes > 0 {
            first_at = Some(now);
        }
        last = seen;
        if seen.prefixes >= want && seen.established >= sessions {
            done_at = Some(now);
            break;
        }
        std::thread::sleep(POLL);
    }
    let (peak_rss_kib, cpu_s) = proc_usage(rcv.pid()).unwrap_or((0, f64::NAN));
    let row = Row {
        shape,
        kind,
        complete: done_at.is_some(),
        prefixes: last.prefixes,
        est_to_first: first_at.zip(est_at).map(|(d, e)| (d - e).as_secs_f64()),
        est_to_all: done_at.zip(est_at).map(|(d, e)| (d - e).as_secs_f64()),
        start_to_all: done_at.map(|d| (d - start).as_secs_f64()),
        peak_rss_kib,
        cpu_s,
    };
    eprintln!("  {:<10} {:?}", kind.name(), row);
    drop(rcv);
    drop(lab);
    Ok(row)
}

fn secs(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.2}"))
        .unwrap_or_else(|| "timeout".into())
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

    let tmp = tempfile::tempdir()?;
    let mut rows: Vec<Row> = Vec::new();
    for (si, shape) in shapes.iter().enumerate() {
        eprintln!("== {}", shape.label());
        for (ki, kind) in kinds.iter().enumerate() {
            // A fresh injector and namespaces per receiver: a reused injector
            // (session restarted after the old link vanished) sent its table
            // seconds later than a fresh one.
            let port = 50_051 + (si * 10 + ki) as u16;
            let dir = tmp.path().join(format!("s{si}-{ki}"));
            rows.push(run_one(*shape, *kind, &dir, port, &twill_bin)?);
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
        let of: Vec<&Row> = rows
            .iter()
            .filter(|r| r.shape.label() == shape.label())
            .collect();
        let find = |k: Kind| of.iter().find(|r| r.kind == k).copied();
        // The mesh is timed from the receiver's start, the tables from Established.
        let time = |r: &Row| match shape {
            Shape::Mesh => r.start_to_all,
            Shape::Table(_) => r.est_to_all,
        };
        let bird = find(Kind::Bird);
        for r in &of {
            let (tr, mr) = match bird {
                Some(b) => (
                    time(r)
                        .zip(time(b))
                        .map(|(a, b)| ratio(a, b))
                        .unwrap_or_else(|| "-".into()),
                    ratio(r.peak_rss_kib as f64, b.peak_rss_kib as f64),
                ),
                None => ("-".into(), "-".into()),
            };
            table_rows.push(vec![
                shape.label(),
                r.kind.name().to_string(),
                secs(r.est_to_all),
                secs(r.start_to_all),
                format!("{:.1}", r.peak_rss_kib as f64 / 1024.0),
                format!("{:.2}", r.cpu_s),
                tr.clone(),
                mr.clone(),
            ]);
            json_rows.push(json!({
                "shape": shape.label(),
                "prefixes_expected": shape.total(),
                "prefixes_seen": r.prefixes,
                "receiver": r.kind.name(),
                "complete": r.complete,
                "established_to_first_s": r.est_to_first,
                "established_to_all_s": r.est_to_all,
                "start_to_all_s": r.start_to_all,
                "peak_rss_kib": r.peak_rss_kib,
                "cpu_s": r.cpu_s,
                "time_vs_bird": tr,
                "rss_vs_bird": mr,
            }));
        }
        if let (Some(t), Some(g)) = (find(Kind::Twill), find(Kind::Gobgp))
            && let (Some(tt), Some(gt)) = (time(t), time(g))
        {
            notes.push(format!(
                "- {}: twill-bgpd is {:.1}x as fast as GoBGP ({:.2} s vs {:.2} s)",
                shape.label(),
                gt / tt,
                tt,
                gt
            ));
        }
        if let (Shape::Table(n), Some(t), Some(b), Some(g)) =
            (shape, find(Kind::Twill), bird, find(Kind::Gobgp))
            && *n >= 1_000_000
        {
            let ok_time = time(t).zip(time(b)).is_some_and(|(a, b)| a <= b);
            let ok_mem = t.peak_rss_kib <= b.peak_rss_kib;
            let ok_go = time(t).zip(time(g)).is_some_and(|(a, g)| g >= 5.0 * a);
            let mark = |ok: bool| if ok { "met" } else { "NOT met" };
            notes.push(format!(
                "- targets at {}: time <= BIRD {}, peak RSS <= BIRD {}, >= 5x faster than GoBGP {}",
                shape.label(),
                mark(ok_time),
                mark(ok_mem),
                mark(ok_go)
            ));
        }
    }
    let mut md = table(&header, &table_rows);
    md.push('\n');
    md.push_str(&notes.join("\n"));
    md.push_str(
        "\n\nTables: time from the session's Established to all prefixes in the receiver's RIB; mesh: from the receiver's start to all 1000 prefixes (ratios use those). Peak RSS = VmHWM, CPU = utime+stime of the receiver process, both when the last prefix arrived. Injector: BIRD 2, passive, in its own namespace over a veth; receivers import all, export nothing, no kernel routes.\n",
    );
    println!("{md}");
    write_results(
        "bgp_ingest",
        json!({ "benchmark": "bgp_ingest", "rows": json_rows, "notes": notes }),
        &md,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_parsers() {
        assert_eq!(table_prefix(0), "32.0.0.0/24");
        assert_eq!(table_prefix(256), "32.1.0.0/24");
        assert_eq!(table_prefix(999_999), "47.66.63.0/24");
        assert_eq!(
            bird_networks(
                "BIRD 2.0.12 ready.\n1000 of 1000 routes for 1000 networks in table master4\n"
            ),
            1000
        );
        assert_eq!(
            gobgp_destinations("Table ipv4-unicast\nDestination: 42, Path: 42\n"),
            42
        );
    }
}
