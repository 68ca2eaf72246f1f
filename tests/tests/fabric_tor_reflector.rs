//! "AS per rack" through `twillctl lab` with `torReflector: true`: the nodes
//! and the ToR share one AS, the node-to-node mesh is off, and the ToR (BIRD
//! or FRR, configured as deploy/README.md documents, or GoBGP) reflects each
//! node's blocks to the others with the originating node as next hop.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use twill_tests::lab::Lab;
use twill_tests::peers::{Flavor, Peer};
use twill_tests::{require_binary, require_root, wait_until};

#[derive(Clone, Copy, PartialEq)]
enum Tor {
    Bird,
    Frr,
    /// The lab's GoBGP has no kernel FIB: it reflects, it does not forward.
    Gobgp,
}

impl Tor {
    fn name(self) -> &'static str {
        match self {
            Tor::Bird => "bird",
            Tor::Frr => "frr",
            Tor::Gobgp => "gobgp",
        }
    }
}

fn prerequisites(tor: Tor) {
    require_root();
    require_binary("ping", "iputils-ping");
    match tor {
        Tor::Bird => {
            require_binary("bird", "bird2");
            require_binary("birdc", "bird2");
        }
        Tor::Frr => {
            require_binary("/usr/lib/frr/bgpd", "frr");
            require_binary("/usr/lib/frr/zebra", "frr");
            require_binary("vtysh", "frr");
        }
        Tor::Gobgp => {
            require_binary("gobgpd", "gobgpd");
            require_binary("gobgp", "gobgpd");
        }
    }
}

/// Runs a program and returns its success and combined output.
fn run(prog: &str, args: &[&str]) -> (bool, String) {
    let o = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {prog}: {e}"));
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Node name → its address on the rack, from the lab's record.
fn node_addrs(lab: &Lab) -> BTreeMap<String, String> {
    lab.state()["plan"]["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|n| Some((n["name"].as_str()?.into(), n["addr"].as_str()?.into())))
        .collect()
}

/// The lab's ToR, for its BGP table.
fn tor_peer(lab: &Lab, tor: Tor) -> Peer {
    lab.tor(Flavor::from_name(tor.name()))
}

fn check_tor_reflector(tor: Tor) {
    prerequisites(tor);
    let dir = tempfile::tempdir().expect("temp dir");
    let topo = dir.path().join("topology.yaml");
    std::fs::write(&topo, "torReflector: true\n").expect("topology");
    let lab = Lab::up(&[
        "--nodes",
        "3",
        "--tor",
        tor.name(),
        "--pods-per-node",
        "2",
        "--topology",
        topo.to_str().expect("utf-8"),
    ]);

    // The ToR configuration the lab wrote passes the router's own parser.
    let tdir = lab.dir.join("tor");
    let (ok, why) = match tor {
        Tor::Bird => run(
            "bird",
            &["-p", "-c", tdir.join("bird.conf").to_str().expect("utf-8")],
        ),
        Tor::Frr => run(
            "vtysh",
            &[
                "--dryrun",
                "-f",
                tdir.join("bgpd.conf").to_str().expect("utf-8"),
            ],
        ),
        Tor::Gobgp => run(
            "gobgpd",
            &[
                "--dry-run",
                "-f",
                tdir.join("gobgp.toml").to_str().expect("utf-8"),
            ],
        ),
    };
    assert!(ok, "the lab's ToR config does not parse: {why}");

    // Every pod reaches every pod.
    assert!(
        lab.up_ok,
        "not every pod reached every pod:\n{}",
        lab.up_output
    );
    let pods: Vec<String> = (1..=3)
        .flat_map(|n| (1..=2).map(move |p| format!("n{n}-p{p}")))
        .collect();
    let mut failed = Vec::new();
    for from in &pods {
        for to in &pods {
            let ip = lab.pod_ip(to);
            if !lab.ping(from, &ip) {
                failed.push(format!("{from} -> {to} ({ip})"));
            }
        }
    }
    assert!(failed.is_empty(), "ping failed: {failed:?}");

    let blocks: BTreeMap<String, String> = lab
        .blocks()
        .into_iter()
        .filter_map(|(cidr, node)| Some((cidr, node?)))
        .collect();
    let addrs = node_addrs(&lab);
    assert_eq!(blocks.len(), 3, "one block per node: {blocks:?}");
    let want: BTreeSet<(String, String)> = blocks
        .iter()
        .map(|(b, n)| (b.clone(), addrs[n].clone()))
        .collect();

    // Each node routes every other node's block straight to that node (the
    // reflector leaves the next hop alone), and nothing through the ToR.
    for node in addrs.keys() {
        let routes = lab.twill_routes(node);
        for (block, owner) in &blocks {
            if owner == node {
                continue;
            }
            let line = format!("{block} via {} dev eth0", addrs[owner]);
            assert!(
                routes.lines().any(|l| l.starts_with(&line)),
                "{node} lacks `{line}`:\n{routes}"
            );
        }
        assert!(!routes.contains("via 172.30.0.1 "), "{node}:\n{routes}");
    }

    // node status: one session, to the ToR, Established, with the other
    // two blocks accepted; no mesh. Reports come every 2 s.
    for node in addrs.keys() {
        let status = || {
            let out = lab.twillctl(&["node", "status", node, "-o", "json"]);
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
        };
        let good = |v: &serde_json::Value| {
            let peers = v["status"]["bgpPeers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            peers.len() == 1
                && peers[0]["address"] == "172.30.0.1"
                && peers[0]["state"] == "Established"
                && peers[0]["prefixesAccepted"] == 2
        };
        assert!(
            wait_until(Duration::from_secs(10), || good(&status())),
            "{node} should have one Established session, to the ToR, with 2 prefixes accepted: {}",
            status()
        );
    }

    // The ToR holds every block via its node, usable: in its BGP table with
    // a resolved next hop, in its kernel, and it reaches every pod (the
    // lab's GoBGP has no kernel side: its table only).
    assert!(
        wait_until(Duration::from_secs(10), || tor_peer(&lab, tor)
            .ipv4_next_hops()
            == want),
        "the ToR's BGP table has {:?} (usable routes only), want {want:?}\n{}",
        tor_peer(&lab, tor).ipv4_next_hops(),
        tor_peer(&lab, tor).table()
    );
    if tor == Tor::Gobgp {
        return;
    }
    let kernel = lab.sh("tor", &["ip", "route", "show"]);
    for (block, addr) in &want {
        assert!(
            kernel
                .lines()
                .any(|l| l.starts_with(&format!("{block} ")) && l.contains(&format!("via {addr} "))),
            "the ToR's kernel does not route {block} via {addr}:\n{kernel}"
        );
    }
    let unreachable: Vec<String> = pods
        .iter()
        .map(|p| lab.pod_ip(p))
        .filter(|ip| {
            !lab.exec("tor", &["ping", "-c1", "-W1", "-q", ip])
                .status
                .success()
        })
        .collect();
    assert!(
        unreachable.is_empty(),
        "the ToR does not reach pods {unreachable:?}:\n{kernel}"
    );
}

#[test]
fn tor_reflector_carries_routes_between_nodes_with_the_mesh_off() {
    check_tor_reflector(Tor::Bird);
}

#[test]
fn frr_tor_reflector_carries_routes_between_nodes_with_the_mesh_off() {
    check_tor_reflector(Tor::Frr);
}

#[test]
fn gobgp_tor_reflector_carries_routes_between_nodes_with_the_mesh_off() {
    check_tor_reflector(Tor::Gobgp);
}

/// Graceful restart through the reflector: while n2's twill-node is killed
/// the ToR keeps reflecting n2's block to n1 as stale, so n1 keeps routing
/// it; a SIGTERM of n1 leaves its kernel routes in place.
#[test]
fn restarting_nodes_behind_a_reflector_tor_loses_no_packets() {
    prerequisites(Tor::Bird);
    let dir = tempfile::tempdir().expect("temp dir");
    let topo = dir.path().join("topology.yaml");
    std::fs::write(&topo, "torReflector: true\n").expect("topology");
    let lab = Lab::up(&[
        "--nodes",
        "2",
        "--tor",
        "bird",
        "--pods-per-node",
        "1",
        "--topology",
        topo.to_str().expect("utf-8"),
    ]);
    assert!(lab.up_ok, "{}", lab.up_output);
    let dst = lab.pod_ip("n2-p1");
    let (sent, got, text) = lab.ping_across_restarts("n1-p1", &dst);
    eprintln!(
        "graceful restart behind a reflector ToR: {sent} sent, {got} received, {} lost",
        sent - got
    );
    assert_eq!(sent, 1200, "{text}");
    assert_eq!(
        got, sent,
        "packets lost across a SIGKILL of n2 and a SIGTERM of n1:\n{text}"
    );
    // Both sessions to the ToR come back and n1 still routes n2's block via n2.
    assert!(
        wait_until(Duration::from_secs(20), || {
            ["n1", "n2"].iter().all(|n| {
                let out = lab.twillctl(&["node", "status", n, "-o", "json"]);
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                let peers = v["status"]["bgpPeers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                peers.len() == 1 && peers[0]["state"] == "Established"
            })
        }),
        "the sessions to the ToR did not come back"
    );
    assert!(
        lab.twill_routes("n1").contains("via 172.30.0.12 dev eth0"),
        "{}",
        lab.twill_routes("n1")
    );
}
