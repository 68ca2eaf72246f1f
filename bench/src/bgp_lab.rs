//! The BGP benchmarks' lab: a BIRD injector in its own network namespace
//! announcing a table (or 100 sessions × 10 prefixes, the node-mesh shape)
//! over a veth to a receiver — twill-bgpd, BIRD 2, GoBGP or FRR bgpd — in
//! another, polled through the receiver's own CLI until every prefix is in
//! its RIB, with the receiver's memory and CPU read from /proc. Used by
//! `bgp_ingest` (time, peak memory) and `rib_memory` (retained memory
//! against BIRD). Namespaces and daemons sit in guards from `twill-tests`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use twill_tests::peers::{Peer, TwillBgpd};
use twill_tests::{Netns, veth_between};

pub const RECEIVER_ASN: u32 = 65001;
pub const POLL: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Twill,
    Bird,
    Gobgp,
    Frr,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Twill, Kind::Bird, Kind::Gobgp, Kind::Frr];
    pub fn name(self) -> &'static str {
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
pub enum Shape {
    /// One session, N prefixes.
    Table(usize),
    /// 100 sessions × 10 prefixes.
    Mesh,
}

pub const MESH_PEERS: usize = 100;
pub const MESH_EACH: usize = 10;

impl Shape {
    pub fn label(self) -> String {
        match self {
            Shape::Table(0) => "no prefixes".to_string(),
            Shape::Table(n) if n % 1_000_000 == 0 => format!("{}M prefixes", n / 1_000_000),
            Shape::Table(n) if n % 1000 == 0 => format!("{}k prefixes", n / 1000),
            Shape::Table(n) => format!("{n} prefixes"),
            Shape::Mesh => format!("mesh {MESH_PEERS} peers x {MESH_EACH}"),
        }
    }
    pub fn total(self) -> usize {
        match self {
            Shape::Table(n) => n,
            Shape::Mesh => MESH_PEERS * MESH_EACH,
        }
    }
    /// (injector address, its ASN) per session.
    pub fn injectors(self) -> Vec<(String, u32)> {
        match self {
            Shape::Table(_) => vec![("10.97.0.1".into(), 65000)],
            Shape::Mesh => (1..=MESH_PEERS)
                .map(|i| (format!("10.98.0.{i}"), 65100 + i as u32))
                .collect(),
        }
    }
    pub fn receiver_addr(self) -> &'static str {
        match self {
            Shape::Table(_) => "10.97.0.2",
            Shape::Mesh => "10.98.0.200",
        }
    }
    pub fn timeout(self) -> Duration {
        match self {
            Shape::Table(n) if n >= 500_000 => Duration::from_secs(150),
            _ => Duration::from_secs(60),
        }
    }
}

/// The N-th /24 from 32.0.0.0 upward.
pub fn table_prefix(i: usize) -> String {
    let a = (32u32 << 24) + ((i as u32) << 8);
    let [b0, b1, b2, _] = a.to_be_bytes();
    format!("{b0}.{b1}.{b2}.0/24")
}

/// The injector's BIRD config: the whole table (`mesh == None`), or mesh
/// instance `i` (1..=100) speaking from 10.98.0.i with its 10 prefixes.
pub fn injector_conf(shape: Shape, mesh: Option<usize>, dir: &Path) -> String {
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

pub fn receiver_conf(kind: Kind, shape: Shape, dir: &Path) -> String {
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
pub enum Receiver {
    Twill(TwillBgpd),
    Bird(Peer),
    Gobgp(Peer),
    Frr(Peer),
}

/// What one poll of a receiver's own CLI shows.
#[derive(Debug, Default, Clone, Copy)]
pub struct Seen {
    pub established: usize,
    pub prefixes: usize,
}

pub fn output(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// `A of B routes for C networks in table master4` → C.
pub fn bird_networks(text: &str) -> usize {
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
pub fn gobgp_destinations(text: &str) -> usize {
    text.split("Destination:")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|x| x.trim().parse().ok())
        .unwrap_or(0)
}

impl Receiver {
    pub fn start(kind: Kind, shape: Shape, ns: &Netns, dir: &Path, api_port: u16) -> Receiver {
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

    pub fn pid(&self) -> i32 {
        match self {
            Receiver::Twill(t) => t.daemon.pid(),
            Receiver::Bird(b) => b.pid(),
            Receiver::Gobgp(g) => g.pid(),
            Receiver::Frr(f) => f.pid(),
        }
    }

    pub fn poll(&self, twill_bin: &Path) -> Seen {
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

/// VmHWM and VmRSS in KiB, and utime+stime in seconds, of a process (all
/// its threads).
pub fn proc_usage(pid: i32) -> Result<(u64, u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse().ok())
        .context("VmHWM")?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse().ok())
        .context("VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks =
        |i: usize| -> Result<u64> { f.get(i).and_then(|x| x.parse().ok()).context("stat field") };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((hwm, rss, (ticks(11)? + ticks(12)?) as f64 / hz))
}

#[derive(Debug, Clone)]
pub struct Row {
    pub shape: Shape,
    pub kind: Kind,
    pub complete: bool,
    pub prefixes: usize,
    /// First poll Established → first poll with any prefix.
    pub est_to_first: Option<f64>,
    /// First poll Established → first poll with all prefixes.
    pub est_to_all: Option<f64>,
    /// Receiver start → all prefixes.
    pub start_to_all: Option<f64>,
    pub peak_rss_kib: u64,
    /// VmRSS after the last prefix arrived and `settle` passed.
    pub rss_kib: u64,
    pub cpu_s: f64,
}

/// The injector namespace, its BIRD(s) and the receiver's namespace,
/// linked by a veth (fields drop in order: daemons before namespaces).
pub struct Lab {
    _birds: Vec<Peer>,
    _inj: Netns,
    pub rcv: Netns,
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
    pub fn start(shape: Shape, dir: &Path) -> Result<Lab> {
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

/// One receiver against a fresh injector: until every prefix is in its RIB
/// (or the shape's timeout), then `settle` more before reading VmRSS.
pub fn run_one(
    shape: Shape,
    kind: Kind,
    dir: &Path,
    api_port: u16,
    twill_bin: &Path,
    settle: Duration,
) -> Result<Row> {
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
    let (peak_rss_kib, _, cpu_s) = proc_usage(rcv.pid()).unwrap_or((0, 0, f64::NAN));
    // TWILL_BENCH_SMAPS=DIR keeps the receiver's /proc/PID/smaps at this
    // moment (where its memory is: docs/bgp.md#memory).
    if let Some(out) = std::env::var_os("TWILL_BENCH_SMAPS") {
        let to = Path::new(&out).join(format!("{}-{}.smaps", kind.name(), rcv.pid()));
        if let Err(e) = std::fs::copy(format!("/proc/{}/smaps", rcv.pid()), &to) {
            eprintln!("  smaps of {} to {}: {e}", rcv.pid(), to.display());
        }
    }
    std::thread::sleep(settle);
    let (_, rss_kib, _) = proc_usage(rcv.pid()).unwrap_or((0, 0, f64::NAN));
    let row = Row {
        shape,
        kind,
        complete: done_at.is_some(),
        prefixes: last.prefixes,
        est_to_first: first_at.zip(est_at).map(|(d, e)| (d - e).as_secs_f64()),
        est_to_all: done_at.zip(est_at).map(|(d, e)| (d - e).as_secs_f64()),
        start_to_all: done_at.map(|d| (d - start).as_secs_f64()),
        peak_rss_kib,
        rss_kib,
        cpu_s,
    };
    eprintln!("  {:<10} {:?}", kind.name(), row);
    drop(rcv);
    drop(lab);
    Ok(row)
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
