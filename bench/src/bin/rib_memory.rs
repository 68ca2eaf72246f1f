//! RIB memory and ingest speed, in process: no sockets, no codec.
//!
//! Loads 1M IPv4 /24s into the RIB from one eBGP peer in 20 000 UPDATEs of
//! 50 prefixes that use 5 000 distinct attribute sets (AS paths of 2-6 ASes,
//! some with communities and MED), the shape of a full table; then the node
//! mesh shape, 100 peers x 10 prefixes, once as a plain node and once as a
//! route reflector whose clients all get everyone else's routes (Adj-RIB-Out
//! included). Bytes are counted by a global allocator that adds up what is
//! requested (malloc's own overhead is not included); "retained" is what the
//! RIB holds after loading, "peak" the high-water mark during the load (hash
//! table growth, the Changes handed to felix). Time is wall clock and this
//! thread's CPU time (the machine is shared; CPU time is the comparable one).
//!
//! Then, in the same run, the comparison with BIRD (needs root, BIRD and a
//! release `twill-bgpd` next to this binary): twill-bgpd and BIRD 2 each
//! receive the same N IPv4 /24s (default 1M) over eBGP from a BIRD
//! injector (`twill_bench::bgp_lab`), and their resident memory is read
//! from /proc/PID/status (VmRSS) one second after the last prefix arrived,
//! minus the VmRSS of the same receiver with its session up and no routes:
//! retained bytes per route as the kernel counts them, malloc's overhead
//! and all. `TWILL_BENCH_REPS` repetitions (default 5), the order
//! alternating (twill, BIRD, BIRD, twill, …); median (min–max).
//! Run (root): `target/release/rib_memory [PREFIXES]`; without root only
//! the in-process part runs and nothing is written.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};
use twill_bench::heap;

use ipnetwork::{IpNetwork, Ipv4Network};
use twill_bgpd::policy::Policy;
use twill_bgpd::rib::{LocalConfig, PeerInfo, PeerKind, Rib};
use twill_bgpd::types::{AsPath, Community, Origin, PathAttrs, Prefix};

#[global_allocator]
static ALLOC: heap::Counting = heap::Counting;

const LOCAL_AS: u32 = 65000;

fn cfg(cluster: bool) -> LocalConfig {
    LocalConfig {
        asn: LOCAL_AS,
        router_id: Ipv4Addr::new(192, 0, 2, 1),
        cluster_id: cluster.then_some(Ipv4Addr::new(192, 0, 2, 1)),
        multipath: true,
    }
}

fn peer(id: u32, asn: u32, kind: PeerKind, rr_client: bool) -> PeerInfo {
    let a = Ipv4Addr::from(0x0A00_0000u32 + id);
    PeerInfo {
        id,
        addr: IpAddr::V4(a),
        asn,
        router_id: a,
        local_addr: IpAddr::V4(Ipv4Addr::new(10, 255, 255, 254)),
        rr_client,
        kind,
    }
}

/// Attribute set `i` of a full table seen from AS 65100.
fn table_attrs(i: u32) -> PathAttrs {
    let mut s = i.wrapping_mul(0x9E37_79B9) | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        s
    };
    let len = 1 + next() % 5;
    let mut path = vec![65100];
    path.extend((0..len).map(|_| 1 + next() % 60000));
    let mut a = PathAttrs {
        origin: if next() % 10 == 0 {
            Origin::Incomplete
        } else {
            Origin::Igp
        },
        as_path: AsPath::from_sequence(path),
        next_hop: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
        ..Default::default()
    };
    if next() % 3 == 0 {
        a.med = Some(next() % 1000);
    }
    for _ in 0..next() % 4 {
        a.add_community(Community::new(65100, (next() % 500) as u16));
    }
    a
}

struct Row {
    name: &'static str,
    routes: usize,
    attr_sets: usize,
    retained: usize,
    peak: usize,
    took: Duration,
    cpu: Option<Duration>,
}

/// CPU time this thread has run (the machine is shared: wall time alone
/// says little).
fn cpu_now() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the pointer we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

fn cpu_since(start: Option<Duration>) -> Option<Duration> {
    Some(cpu_now()?.saturating_sub(start?))
}

fn mark() -> usize {
    let now = heap::current();
    heap::set_peak(now);
    now
}

fn full_table() -> (Row, Row) {
    const N: u32 = 1_000_000;
    const PER_UPDATE: u32 = 50;
    const SETS: u32 = 5_000;
    let updates: Vec<(PathAttrs, Vec<Prefix>)> = (0..N / PER_UPDATE)
        .map(|u| {
            let prefixes = (0..PER_UPDATE)
                .map(|j| {
                    let addr = Ipv4Addr::from(0x0100_0000u32 + ((u * PER_UPDATE + j) << 8));
                    IpNetwork::V4(
                        Ipv4Network::new(addr, 24).unwrap_or_else(|_| Ipv4Network::from(addr)),
                    )
                })
                .collect();
            (table_attrs(u.wrapping_mul(7919) % SETS), prefixes)
        })
        .collect();
    let base = mark();
    let start = Instant::now();
    let cpu = cpu_now();
    let mut rib = Rib::new(cfg(false));
    rib.add_peer(
        peer(1, 65100, PeerKind::External, false),
        Policy::accept_all(),
        Policy::originated_only(),
    );
    let mut best_changes = 0usize;
    for (attrs, prefixes) in &updates {
        let ch = rib.update(1, &[], Some(attrs.clone()), prefixes);
        best_changes += ch.best.len();
    }
    let took = start.elapsed();
    let attr_sets = rib.attribute_sets();
    let load = Row {
        name: "1M IPv4 /24s, 1 eBGP peer, 5k attribute sets",
        routes: rib.len(),
        attr_sets,
        retained: heap::current() - base,
        peak: heap::peak() - base,
        took,
        cpu: cpu_since(cpu),
    };
    assert_eq!(best_changes, N as usize);
    let start = Instant::now();
    let cpu = cpu_now();
    let ch = rib.remove_peer(1);
    let took = start.elapsed();
    let withdrawn = ch.best.len();
    drop(ch);
    let left = rib.attribute_sets();
    let gone = Row {
        name: "  then session down (remove_peer)",
        routes: withdrawn,
        attr_sets: left,
        retained: heap::current().saturating_sub(base),
        peak: heap::peak() - base,
        took,
        cpu: cpu_since(cpu),
    };
    drop(rib);
    drop(updates);
    (load, gone)
}

fn mesh(reflector: bool) -> Row {
    const PEERS: u32 = 100;
    const EACH: u32 = 10;
    let inputs: Vec<(u32, PathAttrs, Vec<Prefix>)> = (1..=PEERS)
        .map(|id| {
            let a = PathAttrs {
                next_hop: Some(IpAddr::V4(Ipv4Addr::from(0x0A00_0000u32 + id))),
                local_pref: Some(100),
                ..Default::default()
            };
            let prefixes = (0..EACH)
                .map(|j| {
                    let addr = Ipv4Addr::from(0x0AF4_0000u32 + ((id * EACH + j) << 6));
                    IpNetwork::V4(
                        Ipv4Network::new(addr, 26).unwrap_or_else(|_| Ipv4Network::from(addr)),
                    )
                })
                .collect();
            (id, a, prefixes)
        })
        .collect();
    let base = mark();
    let start = Instant::now();
    let cpu = cpu_now();
    let mut rib = Rib::new(cfg(reflector));
    for id in 1..=PEERS {
        rib.add_peer(
            peer(id, LOCAL_AS, PeerKind::Node, reflector),
            Policy::accept_all(),
            Policy::originated_only(),
        );
    }
    for (id, a, prefixes) in &inputs {
        rib.update(*id, &[], Some(a.clone()), prefixes);
    }
    let mut exported = 0usize;
    for id in 1..=PEERS {
        exported += rib
            .take_exports(id)
            .iter()
            .map(|e| e.announced.len())
            .sum::<usize>();
    }
    let took = start.elapsed();
    if reflector {
        assert_eq!(exported, (PEERS * (PEERS - 1) * EACH) as usize);
    } else {
        assert_eq!(exported, 0);
    }
    let attr_sets = rib.attribute_sets();
    Row {
        name: if reflector {
            "100 RR clients x 10 /26s, reflected (99k Adj-RIB-Out entries)"
        } else {
            "100 node peers x 10 /26s (full mesh, nothing re-exported)"
        },
        routes: rib.len(),
        attr_sets,
        retained: heap::current() - base,
        peak: heap::peak() - base,
        took,
        cpu: cpu_since(cpu),
    }
}

fn rss_peak_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One receiver's resident memory: KiB idle, KiB with the routes, peak KiB.
type Usage = (u64, u64, u64);

/// VmRSS with N routes and with none, for one receiver.
fn proc_retained(
    kind: twill_bench::bgp_lab::Kind,
    n: usize,
    dir: &std::path::Path,
    twill_bin: &std::path::Path,
) -> anyhow::Result<Usage> {
    use twill_bench::bgp_lab::{Shape, run_one};
    let settle = Duration::from_secs(1);
    let idle = run_one(
        Shape::Table(0),
        kind,
        &dir.join("idle"),
        50_151,
        twill_bin,
        settle,
    )?;
    anyhow::ensure!(
        idle.complete,
        "{}: no session with the injector",
        kind.name()
    );
    let full = run_one(
        Shape::Table(n),
        kind,
        &dir.join("full"),
        50_152,
        twill_bin,
        settle,
    )?;
    anyhow::ensure!(
        full.complete,
        "{}: only {} of {n} prefixes arrived",
        kind.name(),
        full.prefixes
    );
    Ok((idle.rss_kib, full.rss_kib, full.peak_rss_kib))
}

fn main() -> anyhow::Result<()> {
    use twill_bench::Spread;
    use twill_bench::bgp_lab::Kind;
    let prefixes: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.replace('_', "").parse().ok())
        .unwrap_or(1_000_000);
    let reps: usize = std::env::var("TWILL_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let (load, gone) = full_table();
    let rows = [load, gone, mesh(false), mesh(true)];
    let mut md = String::from(
        "**In process: the RIB alone** (bytes requested from the allocator; no sockets, no codec)\n\n| scenario | routes | attribute sets | retained bytes | bytes/route | peak bytes/route | wall | CPU | CPU ns/route |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut json_rows = Vec::new();
    for r in &rows {
        let n = r.routes.max(1) as f64;
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} ms | {} | {} |\n",
            r.name.trim(),
            r.routes,
            r.attr_sets,
            r.retained,
            r.retained as f64 / n,
            r.peak as f64 / n,
            r.took.as_secs_f64() * 1e3,
            r.cpu
                .map_or("?".into(), |c| format!("{:.1} ms", c.as_secs_f64() * 1e3)),
            r.cpu
                .map_or("?".into(), |c| format!("{:.0}", c.as_nanos() as f64 / n)),
        ));
        json_rows.push(serde_json::json!({
            "scenario": r.name.trim(), "routes": r.routes, "attribute_sets": r.attr_sets,
            "retained_bytes": r.retained, "peak_bytes": r.peak,
            "wall_ms": r.took.as_secs_f64() * 1e3,
            "cpu_ms": r.cpu.map(|c| c.as_secs_f64() * 1e3),
        }));
    }
    if let Some(k) = rss_peak_kib() {
        md.push_str(&format!(
            "\nThis process's peak RSS (inputs included): {:.1} MiB.\n",
            k as f64 / 1024.0
        ));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        print!("{md}");
        eprintln!(
            "rib_memory: not root: the comparison with BIRD needs namespaces; nothing written"
        );
        return Ok(());
    }
    twill_tests::require_binary("bird", "bird2");
    twill_tests::require_binary("birdc", "bird2");
    let twill_bin = std::env::current_exe()?
        .parent()
        .map(|d| d.join("twill-bgpd"))
        .filter(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("twill-bgpd is missing next to this binary: cargo build --release -p twill-bgpd --bins"))?;
    let tmp = tempfile::tempdir()?;
    // Per receiver: (idle KiB, loaded KiB, peak KiB) per repetition.
    let mut got: Vec<(Kind, Vec<Usage>)> =
        vec![(Kind::Twill, Vec::new()), (Kind::Bird, Vec::new())];
    for rep in 0..reps {
        for first in twill_bench::alternate(rep, 0usize, 1) {
            let kind = got[first].0;
            let dir = tmp.path().join(format!("r{rep}-{first}"));
            let r = proc_retained(kind, prefixes, &dir, &twill_bin)?;
            eprintln!(
                "rep {rep} {}: idle {} KiB, loaded {} KiB, peak {} KiB",
                kind.name(),
                r.0,
                r.1,
                r.2
            );
            got[first].1.push(r);
        }
    }
    let per_route = |v: &[Usage]| -> Vec<f64> {
        v.iter()
            .map(|(i, l, _)| (*l as f64 - *i as f64) * 1024.0 / prefixes as f64)
            .collect()
    };
    let bird_bpr = Spread::of(&per_route(&got[1].1)).median;
    md.push_str(&format!(
        "\n**Against BIRD, same run: resident memory from /proc** ({prefixes} IPv4 /24s over eBGP from a BIRD injector; VmRSS 1 s after the last prefix minus VmRSS with the session up and no routes; {reps} repetitions alternating twill-bgpd, BIRD, BIRD, twill-bgpd, …; median (min–max))\n\n"
    ));
    let mut proc_rows = Vec::new();
    let mut proc_json = Vec::new();
    for (kind, v) in &got {
        let mib = |f: &dyn Fn(&Usage) -> u64| {
            Spread::of(&v.iter().map(|x| f(x) as f64 / 1024.0).collect::<Vec<_>>())
        };
        let bpr = Spread::of(&per_route(v));
        proc_rows.push(vec![
            kind.name().to_string(),
            mib(&|x| x.0).show(1),
            mib(&|x| x.1).show(1),
            bpr.show(1),
            mib(&|x| x.2).show(1),
            twill_bench::ratio(bpr.median, bird_bpr),
        ]);
        proc_json.push(serde_json::json!({
            "receiver": kind.name(),
            "idle_rss_kib": v.iter().map(|x| x.0).collect::<Vec<_>>(),
            "loaded_rss_kib": v.iter().map(|x| x.1).collect::<Vec<_>>(),
            "peak_rss_kib": v.iter().map(|x| x.2).collect::<Vec<_>>(),
            "retained_bytes_per_route": bpr.json(),
        }));
    }
    md.push_str(&twill_bench::table(
        &[
            "receiver",
            "idle RSS (MiB)",
            "RSS with the routes (MiB)",
            "retained bytes/route",
            "peak RSS (MiB)",
            "bytes/route ÷ BIRD",
        ],
        &proc_rows,
    ));
    print!("{md}");
    twill_bench::write_results(
        "rib_memory",
        serde_json::json!({"in_process": json_rows, "against_bird": {
            "prefixes": prefixes, "reps": reps, "receivers": proc_json}}),
        &md,
    )?;
    Ok(())
}
