//! The pod annotation Twill reads, through a real twill-node and twill-cni:
//! `twill.dev/ip-addrs` (a JSON list or comma-separated addresses) gives the
//! pod exactly those addresses; an address that is taken or in no pool
//! fails the ADD with code 103 naming it and leaves nothing behind; a pod
//! without the annotation gets any free address.

use std::path::Path;

use serde_json::json;
use twill_tests::{Netns, TestNode, bins, require_root};

fn apply(db: &Path, docs: &[serde_json::Value]) {
    let yaml: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
    bins::twillctl_apply(db, &yaml.join("\n---\n"));
}

fn pod(name: &str, addrs: Option<&str>) -> serde_json::Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ann"},
        "spec": {"nodeName": "annode", "containers": [{"name": "c", "image": "none"}]}});
    if let Some(a) = addrs {
        p["metadata"]["annotations"] = json!({"twill.dev/ip-addrs": a});
    }
    p
}

fn args(name: &str) -> String {
    format!("K8S_POD_NAMESPACE=ann;K8S_POD_NAME={name}")
}

#[test]
fn ip_addrs_annotation_gives_the_pod_exactly_those_addresses() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("store.db");
    apply(
        &db,
        &[
            json!({"apiVersion": "twill.dev/v1", "kind": "IPPool", "metadata": {"name": "p"},
                "spec": {"cidr": "10.74.0.0/24", "blockSize": 26}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ann"}}),
            pod("json", Some("[\"10.74.0.77\"]")),
            pod("comma", Some("10.74.0.200")),
            pod("taken", Some("10.74.0.77")),
            pod("outside", Some("10.99.0.1")),
            pod("plain", None),
        ],
    );
    let node = TestNode::start("twa", "annode", &db, dir.path(), "10.96.74.1/32", &[]);
    let ns: Vec<Netns> = (0..5).map(|_| Netns::new("twa")).collect();

    let json_form = node.cni("ADD", "c-json", &ns[0], &args("json"));
    assert!(json_form.success, "{}\n{}", json_form.json, node.log());
    assert_eq!(json_form.addresses(), vec!["10.74.0.77/32"]);
    let comma = node.cni("ADD", "c-comma", &ns[1], &args("comma"));
    assert!(comma.success, "{}", comma.json);
    assert_eq!(comma.addresses(), vec!["10.74.0.200/32"]);
    // The address is really the pod's.
    let inside = ns[0].exec_ok("ip", &["-4", "addr", "show", "dev", "eth0"]);
    assert!(inside.contains("10.74.0.77"), "{inside}");

    for (name, netns, addr) in [
        ("taken", &ns[2], "10.74.0.77"),
        ("outside", &ns[3], "10.99.0.1"),
    ] {
        let out = node.cni("ADD", &format!("c-{name}"), netns, &args(name));
        assert!(!out.success, "{name}: {}", out.json);
        assert_eq!(out.code(), Some(103), "{name}: {}", out.json);
        assert!(out.json.to_string().contains(addr), "{name}: {}", out.json);
    }
    let plain = node.cni("ADD", "c-plain", &ns[4], &args("plain"));
    assert!(plain.success, "{}", plain.json);
    let got = plain.addresses();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("10.74.0.") && got[0] != "10.74.0.77/32" && got[0] != "10.74.0.200/32",
        "{got:?}"
    );
    // The refused ADDs left no allocation behind.
    let out = std::process::Command::new(bins::binary("twillctl"))
        .args(["ipam", "show", "--ip", "10.99.0.1"])
        .env("TWILL_DATASTORE_PATH", &db)
        .output()
        .expect("twillctl");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("c-outside"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = std::process::Command::new(bins::binary("twillctl"))
        .args(["get", "ipamblocks", "-o", "json"])
        .env("TWILL_DATASTORE_PATH", &db)
        .output()
        .expect("twillctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("c-json") && text.contains("c-plain"),
        "{text}"
    );
    assert!(
        !text.contains("c-taken") && !text.contains("c-outside"),
        "{text}"
    );
    for (i, c) in ["c-json", "c-comma", "c-taken", "c-outside", "c-plain"]
        .iter()
        .enumerate()
    {
        let _ = node.cni("DEL", c, &ns[i], &args("x"));
    }
}
