//! twill-node programs its routes: a blackhole for each block it owns and
//! a /32 per pod, both with protocol 116; a route deleted by hand comes
//! back within --route-resync; a released block's blackhole goes; a
//! restart (SIGKILL) leaves the routes in place.

use std::path::Path;
use std::time::Duration;

use twill_tests::{Netns, TestNode, bins, require_root, wait_until};

fn apply(db: &Path, yaml: &str) {
    bins::twillctl_apply(db, yaml);
}

fn ipv4_of(out: &twill_tests::cni::CniOutput) -> String {
    out.addresses()
        .into_iter()
        .find(|a| !a.contains(':'))
        .and_then(|a| a.split('/').next().map(str::to_string))
        .expect("an IPv4 address")
}

fn has(node: &TestNode, needle: &str) -> bool {
    node.twill_routes().iter().any(|l| l.starts_with(needle))
}

#[test]
fn node_programs_blackholes_and_pod_routes_and_repairs_them() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    apply(
        &db,
        "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: p\nspec:\n  cidr: 10.71.0.0/24\n  blockSize: 26\n",
    );
    let mut node = TestNode::start(
        "twq",
        "rn1",
        &db,
        dir.path(),
        "10.96.71.1/32",
        &[
            "--route-resync",
            "1",
            "--block-grace",
            "2",
            "--status-interval",
            "1",
        ],
    );
    let pod = Netns::new("twq");
    let out = node.add("c1", &pod);
    assert!(out.success, "ADD: {}", out.json);
    let addr = ipv4_of(&out);
    let pod_route = format!("{addr} dev tw");
    assert!(
        wait_until(Duration::from_secs(5), || has(
            &node,
            "blackhole 10.71.0.0/26"
        ) && has(&node, &pod_route)),
        "routes: {:?}\nlog:\n{}",
        node.twill_routes(),
        node.log()
    );

    // The node's status report lists what it programmed.
    let reported = || {
        let out = std::process::Command::new(bins::binary("twillctl"))
            .args(["get", "nodestatus", "rn1", "-o", "json"])
            .env("TWILL_DATASTORE_PATH", &db)
            .output()
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        v["status"]["routes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|r| {
                format!(
                    "{} {} {}",
                    r["kind"].as_str().unwrap_or(""),
                    r["destination"].as_str().unwrap_or(""),
                    r["via"]
                )
            })
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(5), || {
            let r = reported();
            r.iter().any(|l| l.starts_with("blackhole 10.71.0.0/26"))
                && r.iter()
                    .any(|l| l.starts_with(&format!("local {addr}/32 [\"tw")))
        }),
        "status routes: {:?}",
        reported()
    );

    // Deleted by hand: back within the 1 s resync interval.
    node.ns
        .ip(&["route", "del", &format!("{addr}/32"), "proto", "116"]);
    node.ns
        .ip(&["route", "del", "blackhole", "10.71.0.0/26", "proto", "116"]);
    assert!(!has(&node, &pod_route));
    assert!(
        wait_until(Duration::from_secs(3), || has(
            &node,
            "blackhole 10.71.0.0/26"
        ) && has(&node, &pod_route)),
        "not repaired: {:?}",
        node.twill_routes()
    );
    assert!(node.ns.ping(&addr), "host -> pod after repair");

    // SIGKILL and restart: the routes never leave.
    if let Some(d) = node.daemon.as_mut() {
        d.kill();
    }
    assert!(has(&node, "blackhole 10.71.0.0/26") && has(&node, &pod_route));
    node.launch();
    for _ in 0..20 {
        assert!(
            has(&node, "blackhole 10.71.0.0/26") && has(&node, &pod_route),
            "a route went away across the restart: {:?}",
            node.twill_routes()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The pod goes: its route goes; the empty block is released after the
    // grace period and its blackhole goes with it.
    let out = node.del("c1", &pod);
    assert!(out.success, "DEL: {}", out.json);
    assert!(!has(&node, &pod_route));
    assert!(
        wait_until(Duration::from_secs(10), || node.twill_routes().is_empty()),
        "left: {:?}\nlog:\n{}",
        node.twill_routes(),
        node.log()
    );
}
