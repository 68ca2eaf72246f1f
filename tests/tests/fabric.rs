//! The routed fabric end to end, through `twillctl lab` exactly as a user
//! runs it: node namespaces running twill-node with the embedded BGP
//! speaker, a ToR namespace running BIRD, pods created through twill-cni.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use twill_tests::lab::Lab;
use twill_tests::{Daemon, Netns, require_binary, require_root, wait_until};

fn prerequisites() {
    require_root();
    for (b, pkg) in [
        ("bird", "bird2"),
        ("birdc", "bird2"),
        ("ping", "iputils-ping"),
        ("iperf3", "iperf3"),
    ] {
        require_binary(b, pkg);
    }
}

/// Prefixes BIRD learned over BGP (lines like `10.244.0.0/26  unicast [n1 ...`).
fn bird_bgp_prefixes(lab: &Lab) -> BTreeSet<String> {
    lab.bird_routes()
        .lines()
        .filter(|l| l.contains("[AS"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Every IPAM block in the lab's store, by CIDR.
fn block_cidrs(lab: &Lab) -> BTreeSet<String> {
    lab.blocks().into_keys().collect()
}

#[test]
fn three_nodes_and_a_bird_tor_every_pod_reaches_every_pod() {
    prerequisites();
    let lab = Lab::up(&["--nodes", "3", "--tor", "bird", "--pods-per-node", "2"]);
    assert!(
        lab.up_ok,
        "not every pod reached every pod:\n{}",
        lab.up_output
    );
    assert!(!lab.up_output.contains("FAIL"), "{}", lab.up_output);
    let pods: Vec<String> = (1..=3)
        .flat_map(|n| (1..=2).map(move |p| format!("n{n}-p{p}")))
        .collect();

    // TCP too: an iperf3 server in every pod, a connection from every other pod.
    let _servers: Vec<Daemon> = pods
        .iter()
        .map(|p| {
            Daemon::spawn(
                &format!("iperf3 in {p}"),
                Command::new("ip").args([
                    "netns",
                    "exec",
                    &lab.ns(p),
                    "iperf3",
                    "-s",
                    "-p",
                    "5201",
                ]),
                None,
            )
        })
        .collect();
    for p in &pods {
        let ip = lab.pod_ip(p);
        assert!(
            wait_until(Duration::from_secs(5), || lab
                .exec(p, &["bash", "-c", &format!("exec 3<>/dev/tcp/{ip}/5201")])
                .status
                .success()),
            "iperf3 in {p} does not listen"
        );
    }
    let mut failed = Vec::new();
    for from in &pods {
        for to in &pods {
            let ip = lab.pod_ip(to);
            let ok = lab
                .exec(
                    from,
                    &[
                        "timeout",
                        "3",
                        "bash",
                        "-c",
                        &format!("exec 3<>/dev/tcp/{ip}/5201"),
                    ],
                )
                .status
                .success();
            if !ok {
                failed.push(format!("{from} -> {to} ({ip})"));
            }
        }
    }
    assert!(failed.is_empty(), "TCP failed: {failed:?}");

    // The ToR holds exactly the blocks: no /32s, nothing else.
    let want = block_cidrs(&lab);
    assert_eq!(want.len(), 3, "one block per node: {want:?}");
    assert!(
        wait_until(Duration::from_secs(10), || bird_bgp_prefixes(&lab) == want),
        "BIRD has {:?}, the blocks are {want:?}\n{}",
        bird_bgp_prefixes(&lab),
        lab.bird_routes()
    );

    // node status shows the sessions from the store.
    let out = lab.twillctl(&["node", "status", "n1", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("node status JSON");
    let peers = v["status"]["bgpPeers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(peers.len(), 3, "two mesh peers and the ToR: {v}");
    assert!(
        peers.iter().all(|p| p["state"] == "Established"),
        "{}",
        lab.sessions_report("n1", &["n1", "n2", "n3"])
    );
    // An Established session has a start time and no current error
    // (errors from before it came up are the last down reason).
    assert!(
        peers
            .iter()
            .all(|p| p["since"].as_str().is_some_and(|s| !s.is_empty())
                && p.get("lastError").is_none()),
        "{v}"
    );
    let table = lab.twillctl(&["node", "status", "n1"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains(", ready,"), "{text}");
    assert!(
        text.lines()
            .filter(|l| l.contains("Established"))
            .all(|l| l.split_whitespace().nth(4).is_none_or(|since| since != "-")),
        "{text}"
    );

    // twill-node's /metrics carries the speaker's per-peer metrics too.
    let metrics = lab.sh(
        "n1",
        &[
            "bash",
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/9099; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3",
        ],
    );
    assert!(metrics.contains("twill_endpoints 2"), "{metrics}");
    assert!(metrics.contains("twill_bgp_peer_state"), "{metrics}");
    assert_eq!(metrics.matches("# EOF").count(), 1, "{metrics}");
}

#[test]
fn a_full_block_brings_a_second_one_and_releases_and_lost_nodes_are_withdrawn() {
    prerequisites();
    let dir = tempfile::tempdir().expect("temp dir");
    let topo = dir.path().join("topology.yaml");
    std::fs::write(
        &topo,
        "pool: 10.246.0.0/16\nblockSize: 29\npodsPerNode: 1\n",
    )
    .expect("topology");
    let lab = Lab::up(&[
        "--nodes",
        "3",
        "--tor",
        "bird",
        "--topology",
        topo.to_str().expect("utf-8"),
    ]);
    assert!(lab.up_ok, "{}", lab.up_output);
    let first = block_cidrs(&lab);
    assert_eq!(first.len(), 3);

    // Fill n1's /29 (8 addresses; the lab pod holds one) and one more.
    let pods: Vec<Netns> = (0..8).map(|_| Netns::new("fill")).collect();
    for (i, p) in pods.iter().enumerate() {
        let (ok, v) = lab.cni("n1", "ADD", &format!("fill{i}"), p.name());
        assert!(ok, "ADD fill{i}: {v}");
    }
    let now = block_cidrs(&lab);
    let new: Vec<String> = now.difference(&first).cloned().collect();
    assert_eq!(new.len(), 1, "n1 claimed a second block: {now:?}");
    let second = new[0].clone();
    let net = second.split('/').next().expect("cidr").to_string();
    assert!(
        wait_until(Duration::from_secs(10), || lab
            .twill_routes("n2")
            .contains(&second)
            && bird_bgp_prefixes(&lab).contains(&second)),
        "n2 and the ToR learn {second}: n2 has\n{}\nBIRD has {:?}",
        lab.twill_routes("n2"),
        bird_bgp_prefixes(&lab)
    );
    assert!(
        lab.twill_routes("n2")
            .contains(&format!("{second} via 172.30.0.11")),
        "{}",
        lab.twill_routes("n2")
    );

    // Empty the second block: after the lab's 10 s grace it returns to the pool
    // and is withdrawn everywhere.
    for (i, p) in pods.iter().enumerate() {
        let (ok, v) = lab.cni("n1", "DEL", &format!("fill{i}"), p.name());
        assert!(ok, "DEL fill{i}: {v}");
    }
    assert!(
        wait_until(Duration::from_secs(40), || !lab
            .twill_routes("n2")
            .contains(&net)
            && !bird_bgp_prefixes(&lab).contains(&second)),
        "{second} still announced after its release: n2 has\n{}\nBIRD has {:?}",
        lab.twill_routes("n2"),
        bird_bgp_prefixes(&lab)
    );

    // A node that goes silent (its link to the rack cut) is withdrawn by the
    // other nodes within the hold time (9 s in the lab). The ToR, a graceful
    // restart helper, may keep it as stale for the restart time the node
    // advertised (20 s in the lab) before it withdraws it too.
    let n3_block: String = lab
        .twill_routes("n1")
        .lines()
        .find(|l| l.contains("via 172.30.0.13"))
        .and_then(|l| l.split_whitespace().next())
        .expect("n1 has a route to n3's block")
        .to_string();
    let cut = std::time::Instant::now();
    lab.sh("tor", &["ip", "link", "set", "tp-n3", "down"]);
    assert!(
        wait_until(Duration::from_secs(14), || !lab
            .twill_routes("n1")
            .contains(&n3_block)
            && !lab.twill_routes("n2").contains(&n3_block)),
        "{n3_block} still routed by the nodes after n3 went silent: n1 has\n{}",
        lab.twill_routes("n1"),
    );
    eprintln!(
        "nodes withdrew n3's block {:?} after its link was cut",
        cut.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(35), || !bird_bgp_prefixes(&lab)
            .contains(&n3_block)),
        "the ToR still has {n3_block} 35 s after n3 went silent: {:?}",
        bird_bgp_prefixes(&lab)
    );
}

#[test]
fn restarting_twill_node_under_traffic_loses_no_packets() {
    prerequisites();
    let lab = Lab::up(&["--nodes", "2", "--tor", "bird", "--pods-per-node", "1"]);
    assert!(lab.up_ok, "{}", lab.up_output);
    let dst = lab.pod_ip("n2-p1");
    let n2_block: String = lab
        .twill_routes("n1")
        .lines()
        .find(|l| l.contains("via 172.30.0.12"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| {
            panic!(
                "n1 routes no block via n2:\n{}\n{}",
                lab.twill_routes("n1"),
                lab.sessions_report("n1", &["n1", "n2"])
            )
        })
        .to_string();
    // 100 packets a second for 12 s, across nodes, both directions of the path.
    let (sent, got, text) = lab.ping_across_restarts("n1-p1", &dst);
    eprintln!(
        "graceful restart under traffic: {sent} sent, {got} received, {} lost",
        sent - got
    );
    assert_eq!(sent, 1200, "{text}");
    assert_eq!(
        got, sent,
        "packets lost across a SIGKILL of n2 and a SIGTERM of n1:\n{text}"
    );
    // The sessions come back and the route never left n1 nor the ToR.
    assert!(lab.twill_routes("n1").contains(&n2_block));
    assert!(
        wait_until(Duration::from_secs(20), || {
            let out = lab.twillctl(&["node", "status", "n1", "-o", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let peers = v["status"]["bgpPeers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            peers.len() == 2 && peers.iter().all(|p| p["state"] == "Established")
        }),
        "sessions did not come back: {}",
        lab.sessions_report("n1", &["n1", "n2"])
    );
    assert!(
        bird_bgp_prefixes(&lab).contains(&n2_block),
        "{}",
        lab.bird_routes()
    );
}
