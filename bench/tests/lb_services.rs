//! The LoadBalancer Services benchmark cannot rot: its short mode (20
//! Services, 5 endpoint moves, one repetition, on a real 3-node lab with a
//! BIRD ToR) runs to the end, and what it wrote says every Service got an
//! address and reached the ToR from every node and every move (before the
//! Services and with them present) reached the ToR. Root, BIRD and the
//! workspace's binaries (`cargo build --workspace
//! --bins`); fails, never skips, without them.

use std::process::Command;

use serde_json::Value;
use twill_tests::{require_binary, require_root};

#[test]
fn short_run_allocates_announces_and_follows_moves() {
    require_root();
    require_binary("bird", "bird2");
    require_binary("birdc", "bird2");
    let out = tempfile::tempdir().expect("temp dir");
    let run = Command::new(env!("CARGO_BIN_EXE_lb_services"))
        .args(["--short", "--out"])
        .arg(out.path())
        .output()
        .expect("run lb_services");
    assert!(
        run.status.success(),
        "lb_services --short failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let doc: Value = serde_json::from_slice(
        &std::fs::read(out.path().join("lb_services.json")).expect("lb_services.json"),
    )
    .expect("JSON");
    let n = doc["services"].as_u64().expect("services") as usize;
    assert_eq!(n, 20, "{doc}");
    let rep = &doc["reps"][0];
    let len = |k: &str| rep[k].as_array().map_or(0, Vec::len);
    assert_eq!(len("allocated_ms"), n, "every Service allocated: {rep}");
    assert_eq!(
        len("at_tor_every_node_ms"),
        n,
        "every /32 at the ToR from every node: {rep}"
    );
    assert!(
        rep["all_at_tor_every_node_s"]
            .as_f64()
            .is_some_and(|s| s > 0.0),
        "{rep}"
    );
    // Allocation comes before announcement, for every Service.
    let alloc: Vec<f64> = rep["allocated_ms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .collect();
    assert!(
        alloc.iter().all(|x| (0.0..120_000.0).contains(x)),
        "{alloc:?}"
    );
    // Moves with no other Service, and with the 20 present.
    let moves: Vec<Value> = ["moves", "moves_with_n"]
        .iter()
        .flat_map(|k| rep[*k].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(moves.len(), 10, "{rep}");
    for m in &moves {
        let exact = m["exactly_new_node_ms"].as_f64();
        assert!(
            exact.is_some_and(|x| x > 0.0 && x < 10_000.0),
            "a move did not reach the ToR: {m}"
        );
        assert!(
            m["new_node_present_ms"].as_f64().is_some() && m["old_node_gone_ms"].as_f64().is_some(),
            "{m}"
        );
    }
    let agents = rep["agents"].as_array().cloned().unwrap_or_default();
    assert_eq!(agents.len(), 3, "{rep}");
    for g in &agents {
        assert!(g["rss_0_kib"].as_u64().is_some_and(|k| k > 1000), "{g}");
        assert!(g["serving_cpu_s"].as_f64().is_some_and(|s| s >= 0.0), "{g}");
    }
    let md = std::fs::read_to_string(out.path().join("lb_services.md")).expect("lb_services.md");
    assert!(
        md.contains("create → at the ToR from all 3 nodes")
            && md.contains("next hops exactly the new node"),
        "{md}"
    );
}
