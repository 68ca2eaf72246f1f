//! The lab at a size CI can afford (20 nodes behind two route reflectors, a
//! BIRD ToR, one pod each): `lab up` returns only after every pod answered
//! every other pod in one round, says so, and records its phases; the
//! agents report at the interval that keeps a large lab idle, and an idle
//! node rewrites an unchanged report only at its heartbeat (three
//! intervals) while a change is still written within an interval and no
//! report reads as stale. The 100-node figures are
//! `bench/src/bin/lab_scale.rs`'s (docs/lab.md).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use twill_tests::lab::Lab;
use twill_tests::{require_binary, require_root};

/// `twillctl node status -o json`: per node, (report time, endpoints, stale).
fn reports(lab: &Lab) -> BTreeMap<String, (String, u64, bool)> {
    let o = lab.twillctl(&["node", "status", "-o", "json"]);
    assert!(
        o.status.success(),
        "node status: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).expect("node status JSON");
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some((
                r["node"].as_str()?.to_string(),
                (
                    r["status"]["updated"].as_str()?.to_string(),
                    r["status"]["endpoints"].as_u64()?,
                    r["stale"].as_bool()?,
                ),
            ))
        })
        .collect()
}

#[test]
fn twenty_nodes_behind_reflectors_converge_to_a_full_matrix() {
    require_root();
    require_binary("bird", "bird2");
    let lab = Lab::up(&[
        "--nodes",
        "20",
        "--pods-per-node",
        "1",
        "--route-reflectors",
        "2",
        "--tor",
        "bird",
    ]);
    assert!(lab.up_ok, "lab up:\n{}", lab.up_output);
    // Every ordered pair of the 20 pods, none left out, in one round.
    assert!(
        lab.up_output
            .contains("every pod pinged every other pod: 380 of 380 pairs answered"),
        "{}",
        lab.up_output
    );
    assert!(
        lab.up_output.contains("converged: all 380 pod pairs"),
        "{}",
        lab.up_output
    );
    assert!(!lab.up_output.contains("FAIL"), "{}", lab.up_output);
    let st = lab.state();
    let t = &st["timings"];
    assert_eq!(t["converged"], true, "{t}");
    assert_eq!(t["pairs"], 380, "{t}");
    assert!(t["total_s"].as_f64().unwrap_or(0.0) > 0.0, "{t}");
    // n1 and n2 reflect, the other 18 peer with them only.
    assert_eq!(
        st["plan"]["route_reflectors"],
        serde_json::json!(["n1", "n2"])
    );
    // 20 nodes report every 4 s (5 reports a second in all), not every 2 s.
    let args = st["node_args"]["n7"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>())
        .unwrap_or_default();
    let i = args
        .iter()
        .position(|a| *a == "--status-interval")
        .unwrap_or_else(|| panic!("no --status-interval in {args:?}"));
    assert_eq!(args.get(i + 1), Some(&"4"), "{args:?}");

    // Idle: the reports do not change, so each node writes its report at
    // most once every 12 s (its heartbeat), not every 4 s. Watched for 14 s
    // after the first interval settled things: at most 2 writes per node,
    // where writing every interval makes 3 or 4.
    std::thread::sleep(Duration::from_secs(5));
    let mut last = reports(&lab);
    assert_eq!(last.len(), 20, "{last:?}");
    let mut writes: BTreeMap<String, u32> = BTreeMap::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(14) {
        std::thread::sleep(Duration::from_millis(700));
        let now = reports(&lab);
        for (node, r) in &now {
            if last.get(node).map(|l| &l.0) != Some(&r.0) {
                *writes.entry(node.clone()).or_default() += 1;
            }
            assert!(
                !r.2,
                "{node}'s report reads as stale while its agent runs: {r:?}"
            );
        }
        last = now;
    }
    let busy: Vec<_> = writes.iter().filter(|(_, n)| **n > 2).collect();
    assert!(
        busy.is_empty(),
        "idle nodes rewrote unchanged reports more than once a heartbeat (12 s) in 14 s: {busy:?}"
    );
    // Some node did write in the window (the heartbeat), and no report is
    // older than its stale limit although most went unwritten for > 3
    // intervals.
    assert!(!writes.is_empty(), "no node wrote its report in 14 s");

    // A change is written within an interval: a second pod on n7 shows in
    // n7's report within 4 s (plus the pod's own set-up).
    let before = last.get("n7").map(|r| r.1);
    assert_eq!(before, Some(1), "{last:?}");
    let o = lab.lab(&[
        "pod",
        "add",
        "idle-probe",
        "--node",
        "n7",
        "-n",
        "shop",
        "-l",
        "app=probe",
    ]);
    assert!(
        o.status.success(),
        "lab pod add: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let added = Instant::now();
    loop {
        if reports(&lab).get("n7").map(|r| r.1) == Some(2) {
            break;
        }
        assert!(
            added.elapsed() < Duration::from_secs(6),
            "n7's report still says {:?} endpoints 6 s after a pod was added (interval 4 s)",
            reports(&lab).get("n7")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}
