//! Control-plane cost of network policy, measured on what twill-node does
//! for every change — rebuild the model, render the node's table, diff it
//! against the applied one, apply the difference with `nft -f` — in a
//! network namespace of its own (datastore watch delivery is not included):
//!
//! * full render + apply from nothing: 10k pods (250 on this node), 1k policies;
//! * NetworkPolicy change → rules in the kernel: 1k pods, 1k policies,
//!   p50 / p99 over many changes;
//! * CPU time (this process + nft) per pod add and per pod delete on this
//!   node, with 10k pods and 1k policies.
//!
//! Run as root: `cargo run --release -p twill-bench --bin policy_control [-- --quick]`.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use twill_policy::ir::Table;
use twill_policy::model::{Endpoint, Labels, Model, NamedPort, Policy, proto};
use twill_tests::{Netns, require_binary, require_root};

const NODE: &str = "n0";
const NAMESPACES: usize = 20;
const APPS: usize = 100;

fn nft(ns: &Netns, script: &str) {
    let mut child = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("nft");
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pod(i: usize, local: bool) -> Endpoint {
    let ip = IpAddr::from([
        10,
        100 + (i / 65536) as u8,
        (i / 256 % 256) as u8,
        (i % 256) as u8,
    ]);
    Endpoint {
        namespace: format!("ns{}", i % NAMESPACES),
        name: format!("pod{i}"),
        labels: Labels::from([
            ("app".to_string(), format!("app{}", i % APPS)),
            ("tier".to_string(), ["web", "api", "db"][i % 3].to_string()),
        ]),
        ips: vec![ip],
        ports: vec![NamedPort {
            name: "http".into(),
            proto: proto::TCP,
            port: 8080,
        }],
        node: if local {
            NODE.into()
        } else {
            format!("n{}", 1 + i % 40)
        },
        iface: local.then(|| format!("tw{i:013x}")),
    }
}

fn policy(j: usize, port: u16) -> Policy {
    let np: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": format!("np{j}"), "namespace": format!("ns{}", j % NAMESPACES)},
        "spec": {
            "podSelector": {"matchLabels": {"app": format!("app{}", j % APPS)}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": format!("app{}", (j + 1) % APPS)}}},
                          {"namespaceSelector": {"matchLabels": {"team": format!("t{}", j % 5)}},
                           "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "api"]}]}}],
                 "ports": [{"port": port}, {"port": "http"}]},
                {"from": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}]}
            ],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"tier": "db"}}}], "ports": [{"port": 5432}]}]
        }
    }))
    .expect("policy");
    twill_policy::compile_network_policy(&np).expect("compile")
}

fn namespaces() -> BTreeMap<String, Labels> {
    (0..NAMESPACES)
        .map(|n| {
            (
                format!("ns{n}"),
                Labels::from([("team".to_string(), format!("t{}", n % 5))]),
            )
        })
        .collect()
}

fn pods(total: usize, local: usize) -> Vec<Endpoint> {
    (0..total).map(|i| pod(i, i < local)).collect()
}

fn render(eps: &[Endpoint], pols: &[Policy]) -> Table {
    twill_policy::render(&Model::new(eps.to_vec(), namespaces(), pols.to_vec()), NODE)
}

fn cpu_time() -> Duration {
    let mut total = Duration::ZERO;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: getrusage fills the struct we pass.
        let mut r: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe {
            libc::getrusage(who, &mut r);
        }
        for tv in [r.ru_utime, r.ru_stime] {
            total +=
                Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64);
        }
    }
    total
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    require_root();
    require_binary("nft", "nftables");
    let quick = std::env::args().any(|a| a == "--quick");
    let ns = Netns::new("twc");
    let pols: Vec<Policy> = (0..1000).map(|j| policy(j, 80)).collect();

    // 1. Full render + apply from nothing: 10k pods, 250 local, 1k policies.
    let big = pods(10_000, 250);
    let mut full = Vec::new();
    let mut render_only = Vec::new();
    let mut rules = 0;
    let mut elements = 0;
    for _ in 0..if quick { 2 } else { 5 } {
        nft(&ns, "add table inet twill\ndelete table inet twill\n");
        let t = Instant::now();
        let table = render(&big, &pols);
        render_only.push(t.elapsed());
        nft(&ns, &table.script());
        full.push(t.elapsed());
        rules = table.rule_count();
        elements = table.sets.values().map(|s| s.elements.len()).sum::<usize>();
    }
    let full_p50 = pct(&mut full, 0.5);
    let render_p50 = pct(&mut render_only, 0.5);
    eprintln!(
        "full: {} (render {}), {rules} rules, {elements} set elements",
        ms(full_p50),
        ms(render_p50)
    );

    // 2. Policy change → kernel: 1k pods (250 local), 1k policies.
    let mid = pods(1000, 250);
    let mut cur_pols = pols.clone();
    let mut applied = render(&mid, &cur_pols);
    nft(&ns, &applied.script());
    let mut lat = Vec::new();
    let mut lat_render = Vec::new();
    let n_changes = if quick { 40 } else { 200 };
    for k in 0..n_changes {
        let j = (k * 37) % cur_pols.len();
        let t = Instant::now();
        cur_pols[j] = policy(j, 8000 + k as u16);
        let table = render(&mid, &cur_pols);
        let diff = twill_policy::diff::diff(&applied, &table);
        lat_render.push(t.elapsed());
        if let Some((script, _)) = diff {
            nft(&ns, &script);
        }
        lat.push(t.elapsed());
        applied = table;
    }
    let (c50, c99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    let r50 = pct(&mut lat_render, 0.5);
    eprintln!(
        "change: p50 {} p99 {} (render + diff p50 {})",
        ms(c50),
        ms(c99),
        ms(r50)
    );

    // 3. CPU per pod add / delete on this node: 10k pods, 1k policies.
    let mut eps = big.clone();
    let mut applied = render(&eps, &pols);
    nft(&ns, &applied.script());
    let ops = if quick { 10 } else { 40 };
    let (mut add_cpu, mut add_wall, mut del_cpu, mut del_wall) = (
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
    );
    for k in 0..ops {
        for adding in [true, false] {
            let c = cpu_time();
            let t = Instant::now();
            if adding {
                eps.push(pod(20_000 + k, true));
            } else {
                eps.pop();
            }
            let table = render(&eps, &pols);
            if let Some((script, _)) = twill_policy::diff::diff(&applied, &table) {
                nft(&ns, &script);
            }
            applied = table;
            let (dc, dw) = (cpu_time() - c, t.elapsed());
            if adding {
                add_cpu += dc;
                add_wall += dw;
            } else {
                del_cpu += dc;
                del_wall += dw;
            }
        }
    }
    let per = |d: Duration| d / ops as u32;
    println!("| measurement | load | result | target |");
    println!("|---|---|---:|---:|");
    println!(
        "| render + apply the whole table from nothing | 10k pods (250 local), 1k policies; {rules} rules, {elements} set elements | {} (render {}) | < 1 s |",
        ms(full_p50),
        ms(render_p50)
    );
    println!(
        "| NetworkPolicy change → rules in the kernel (render + diff + nft), p50 / p99 over {n_changes} | 1k pods, 1k policies | {} / {} | p99 < 100 ms |",
        ms(c50),
        ms(c99)
    );
    println!(
        "| CPU per pod add (wall) | 10k pods, 1k policies | {} ({}) | |",
        ms(per(add_cpu)),
        ms(per(add_wall))
    );
    println!(
        "| CPU per pod delete (wall) | 10k pods, 1k policies | {} ({}) | |",
        ms(per(del_cpu)),
        ms(per(del_wall))
    );
}
