//! Control-plane cost of network policy, measured on what twill-node's
//! policy engine does for every change — reduce the changed object to what
//! policy needs (`cluster::Inputs`), bring the incremental renderer up to
//! date with it (`Incremental::follow`, the engine's own call), and apply
//! its script through libnftables in this process (`twill_nft::apply_script`,
//! the engine's own call) — in a network namespace of its own (datastore
//! watch delivery is not included):
//!
//! * full render + apply from nothing: 10k pods (250 on this node), 1k policies;
//! * NetworkPolicy change → rules in the kernel: 1k pods, 1k policies,
//!   p50 / p99 over many changes;
//! * CPU time (the engine's update; libnftables and the kernel's netlink
//!   work) per pod add and per pod delete on this node, with 10k pods and
//!   1k policies.
//!
//! Run as root: `cargo run --release -p twill-bench --bin policy_control [-- --quick]`.

use std::time::{Duration, Instant};

use serde_json::json;
use twill_bench::policy_cluster::{NAMESPACES, NODE, inputs, pod, policy, record};
use twill_bench::write_results;
use twill_policy::cluster::{Inputs, LocalEndpoint, PodInfo};
use twill_policy::incremental::Incremental;
use twill_tests::{Netns, require_binary, require_root};

/// Applies a script as twill-node does (libnftables, one transaction).
fn nft(script: &str) {
    if let Err(e) = twill_nft::apply_script(script) {
        panic!("nft: {e}");
    }
}

/// What the engine does after handling events: endpoints, sync, script.
fn update(
    inc: &mut Incremental,
    i: &mut Inputs,
    locals: &[LocalEndpoint],
    full: bool,
) -> Option<String> {
    inc.follow(i, locals);
    if full {
        Some(inc.full_script())
    } else {
        inc.commit()
    }
}

/// CPU time of the calling thread (everything runs on one thread:
/// libnftables and the kernel's netlink work happen in its system calls).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
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
    if let Err(e) = twill_nft::library_available() {
        panic!("{e}");
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let ns = Netns::new("twc");
    let name = ns.name().to_string();
    // Everything on one thread inside the namespace (libnftables' socket).
    let (md, doc) = twill_tests::netns::spawn_in(&name, move || run(quick))
        .join()
        .expect("benchmark thread");
    drop(ns);
    print!("{md}");
    if !quick {
        write_results("policy_control", doc, &md).expect("write results");
    }
}

fn run(quick: bool) -> (String, serde_json::Value) {
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    // 1. Full render + apply from nothing: 10k pods, 250 local, 1k policies.
    let mut full = Vec::new();
    let mut render_only = Vec::new();
    let mut rules = 0;
    let mut elements = 0;
    for _ in 0..if quick { 2 } else { 5 } {
        nft("add table inet twill\ndelete table inet twill\n");
        let (mut big, big_locals) = inputs(10_000, 250, 1000);
        let t = Instant::now();
        let mut inc = Incremental::new(NODE);
        let script = update(&mut inc, &mut big, &big_locals, true).expect("script");
        render_only.push(t.elapsed());
        nft(&script);
        full.push(t.elapsed());
        let table = inc.table();
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
    let (mut mid, mid_locals) = inputs(1000, 250, 1000);
    let mut inc = Incremental::new(NODE);
    nft(&update(&mut inc, &mut mid, &mid_locals, true).expect("script"));
    let mut lat = Vec::new();
    let mut lat_render = Vec::new();
    let n_changes = if quick { 40 } else { 200 };
    for k in 0..n_changes {
        let j = (k * 37) % 1000;
        let np = policy(j, 8000 + k as u16);
        let t = Instant::now();
        mid.apply_network_policy(&np).expect("compile");
        let script = update(&mut inc, &mut mid, &mid_locals, false);
        lat_render.push(t.elapsed());
        if let Some(script) = script {
            nft(&script);
        }
        lat.push(t.elapsed());
    }
    let (c50, c99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    let (r50, r99) = (pct(&mut lat_render, 0.5), pct(&mut lat_render, 0.99));
    eprintln!(
        "change: p50 {} p99 {} (render + diff p50 {} p99 {})",
        ms(c50),
        ms(c99),
        ms(r50),
        ms(r99)
    );

    // 3. CPU per pod add / delete on this node: 10k pods, 1k policies.
    let (mut big, mut big_locals) = inputs(10_000, 250, 1000);
    let mut inc = Incremental::new(NODE);
    nft(&update(&mut inc, &mut big, &big_locals, true).expect("script"));
    let ops = if quick { 10 } else { 40 };
    // Per operation: [engine CPU, libnftables + kernel CPU, wall] for adds and deletes.
    let mut add = [Duration::ZERO; 3];
    let mut del = [Duration::ZERO; 3];
    for k in 0..ops {
        let p = 20_000 + k;
        let obj = pod(p, true);
        for adding in [true, false] {
            let c0 = thread_cpu();
            let t = Instant::now();
            if adding {
                // CNI ADD: the record, and the Pod object the gate reads.
                big_locals.push(record(p));
                let (key, info) = PodInfo::of(&obj).expect("pod key");
                big.apply_pod(key, info);
            } else {
                big_locals.pop();
                big.remove_pod(&(format!("ns{}", p % NAMESPACES), format!("pod{p}")));
            }
            let script = update(&mut inc, &mut big, &big_locals, false);
            let c1 = thread_cpu();
            if let Some(script) = script {
                nft(&script);
            }
            let c2 = thread_cpu();
            let acc = if adding { &mut add } else { &mut del };
            acc[0] += c1 - c0;
            acc[1] += c2 - c1;
            acc[2] += t.elapsed();
        }
    }
    let per = |d: Duration| d / ops as u32;
    let rows = [
        format!(
            "| render + apply the whole table from nothing | 10k pods (250 local), 1k policies; {rules} rules, {elements} set elements | {} (render {}) | < 1 s |",
            ms(full_p50),
            ms(render_p50)
        ),
        format!(
            "| NetworkPolicy change → rules in the kernel (update + libnftables), p50 / p99 over {n_changes} | 1k pods, 1k policies | {} / {} (update {} / {}) | p99 < 10 ms |",
            ms(c50),
            ms(c99),
            ms(r50),
            ms(r99)
        ),
        format!(
            "| CPU per pod add: engine + libnftables/kernel (wall) | 10k pods, 1k policies | {} + {} ({}) | |",
            ms(per(add[0])),
            ms(per(add[1])),
            ms(per(add[2]))
        ),
        format!(
            "| CPU per pod delete: engine + libnftables/kernel (wall) | 10k pods, 1k policies | {} + {} ({}) | |",
            ms(per(del[0])),
            ms(per(del[1])),
            ms(per(del[2]))
        ),
    ];
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let md = format!(
        "| measurement | load | result | target |\n|---|---|---:|---:|\n{}\n\nLoad average {} before, {} after (a shared 2-core machine).\n",
        rows.join("\n"),
        load_before
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        load_after
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    let f = |d: Duration| d.as_secs_f64() * 1000.0;
    let doc = json!({
        "full_apply_ms": f(full_p50),
        "full_render_ms": f(render_p50),
        "rules": rules,
        "set_elements": elements,
        "change_p50_ms": f(c50),
        "change_p99_ms": f(c99),
        "change_update_p50_ms": f(r50),
        "change_update_p99_ms": f(r99),
        "changes": n_changes,
        "pod_add_engine_cpu_ms": f(per(add[0])),
        "pod_add_nft_cpu_ms": f(per(add[1])),
        "pod_add_wall_ms": f(per(add[2])),
        "pod_delete_engine_cpu_ms": f(per(del[0])),
        "pod_delete_nft_cpu_ms": f(per(del[1])),
        "pod_delete_wall_ms": f(per(del[2])),
        "load_average_before": load_before.trim(),
        "load_average_after": load_after.trim(),
    });
    (md, doc)
}
