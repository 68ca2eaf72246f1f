//! The lab at a size CI can afford (20 nodes behind two route reflectors, a
//! BIRD ToR, one pod each): `lab up` returns only after every pod answered
//! every other pod in one round, says so, and records its phases; the
//! agents report at the interval that keeps a large lab idle. The 100-node
//! figures are `bench/src/bin/lab_scale.rs`'s (docs/lab.md).

use twill_tests::lab::Lab;
use twill_tests::{require_binary, require_root};

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
}
