//! Dual stack end to end, through `twillctl lab up --dual-stack` exactly as
//! a user runs it: IPv4 and IPv6 pools, every pod one address of each family
//! through twill-cni, the mesh carrying both families, and a real ToR (BIRD
//! or FRR) on an IPv6 session per node holding every IPv6 block via the
//! owning node's IPv6 rack address.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::time::Duration;

use twill_tests::lab::Lab;
use twill_tests::{require_binary, require_root, wait_until};

fn prerequisites(tor: &str) {
    require_root();
    require_binary("ping", "iputils-ping");
    match tor {
        "bird" => {
            require_binary("bird", "bird2");
            require_binary("birdc", "bird2");
        }
        _ => {
            require_binary("/usr/lib/frr/bgpd", "frr");
            require_binary("/usr/lib/frr/zebra", "frr");
            require_binary("vtysh", "frr");
        }
    }
}

/// The ToR's BGP view of one IPv6 prefix, as its own tool shows it.
fn tor_bgp_view(lab: &Lab, tor: &str, prefix: &str) -> String {
    let out = if tor == "bird" {
        Command::new("birdc")
            .arg("-s")
            .arg(lab.dir.join("tor").join("bird.ctl"))
            .args(["show", "route", "for", prefix, "all"])
            .output()
    } else {
        Command::new("vtysh")
            .arg("--vty_socket")
            .arg(lab.frr_dir())
            .args(["-c", &format!("show bgp ipv6 unicast {prefix}")])
            .output()
    };
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("cannot ask the ToR: {e}"))
}

fn check_dual_stack(tor: &str) {
    prerequisites(tor);
    let lab = Lab::up(&[
        "--nodes",
        "3",
        "--tor",
        tor,
        "--pods-per-node",
        "2",
        "--dual-stack",
    ]);
    assert!(
        lab.up_ok,
        "not every pod reached every pod on both families:\n{}",
        lab.up_output
    );
    for fam in ["IPv4", "IPv6"] {
        assert!(
            lab.up_output
                .contains(&format!("pod-to-pod connectivity, {fam} (ping)")),
            "lab up printed no {fam} matrix:\n{}",
            lab.up_output
        );
    }
    assert!(!lab.up_output.contains("FAIL"), "{}", lab.up_output);

    // One address of each family per pod, from the lab's pools, none twice.
    let pods: Vec<String> = (1..=3)
        .flat_map(|n| (1..=2).map(move |p| format!("n{n}-p{p}")))
        .collect();
    let pool4: ipnetwork::Ipv4Network = "10.244.0.0/16".parse().expect("pool");
    let pool6: ipnetwork::Ipv6Network = "fd00:10:244::/56".parse().expect("pool");
    let mut seen = std::collections::BTreeSet::new();
    for p in &pods {
        let v4: Ipv4Addr = lab.pod_ip(p).parse().expect("IPv4 address");
        let v6: Ipv6Addr = lab.pod_ip6(p).parse().expect("IPv6 address");
        assert!(pool4.contains(v4), "{p}: {v4} outside {pool4}");
        assert!(pool6.contains(v6), "{p}: {v6} outside {pool6}");
        assert!(seen.insert(v4.to_string()) && seen.insert(v6.to_string()));
        // The pod itself holds both, and routes IPv6 via the link-local gateway.
        let addrs = lab.sh(p, &["ip", "addr", "show", "dev", "eth0"]);
        assert!(
            addrs.contains(&format!("{v4}/32")) && addrs.contains(&format!("{v6}/128")),
            "{p}'s eth0 lacks {v4}/32 or {v6}/128:\n{addrs}"
        );
        let r6 = lab.sh(p, &["ip", "-6", "route", "show", "default"]);
        assert!(
            r6.contains("via fe80::ecee:eeff:feee:eeee"),
            "{p}'s IPv6 default route:\n{r6}"
        );
    }

    // Every pod pings every pod on both families (our own pings, not the
    // lab's matrix), across nodes and on the same node.
    let mut failed = Vec::new();
    for from in &pods {
        for to in &pods {
            for ip in [lab.pod_ip(to), lab.pod_ip6(to)] {
                if !lab.ping(from, &ip) {
                    failed.push(format!("{from} -> {to} ({ip})"));
                }
            }
        }
    }
    assert!(
        failed.is_empty(),
        "no answer: {failed:?}\nn1's routes:\n{}",
        lab.sh("n1", &["ip", "-6", "route", "show"])
    );

    // The ToR holds every IPv6 block via its node's IPv6 address: in its
    // BGP table and in its kernel, and reaches every pod's IPv6 address.
    let st = lab.state();
    let addr6: BTreeMap<String, String> = st["plan"]["nodes"]
        .as_array()
        .expect("nodes in lab.json")
        .iter()
        .filter_map(|n| {
            Some((
                n["name"].as_str()?.to_string(),
                n["addr6"].as_str()?.to_string(),
            ))
        })
        .collect();
    assert_eq!(addr6.len(), 3, "every node has an IPv6 address: {addr6:?}");
    let want: BTreeMap<String, String> = lab
        .blocks()
        .into_iter()
        .filter(|(cidr, _)| cidr.contains(':'))
        .filter_map(|(cidr, node)| Some((cidr, addr6.get(&node?)?.clone())))
        .collect();
    assert_eq!(
        want.len(),
        3,
        "one IPv6 block per node (3 nodes, 2 pods each): {:?}",
        lab.blocks()
    );
    let kernel_ok = |kernel: &str| {
        want.iter().all(|(block, via)| {
            kernel
                .lines()
                .any(|l| l.starts_with(&format!("{block} ")) && l.contains(&format!("via {via} ")))
        })
    };
    assert!(
        wait_until(Duration::from_secs(15), || kernel_ok(
            &lab.sh("tor", &["ip", "-6", "route", "show"])
        )),
        "the ToR's kernel does not route every IPv6 block via its node ({want:?}):\n{}",
        lab.sh("tor", &["ip", "-6", "route", "show"])
    );
    for (block, via) in &want {
        let view = tor_bgp_view(&lab, tor, block);
        assert!(
            view.contains(via.as_str()),
            "the ToR's BGP table has {block} without next hop {via}:\n{view}"
        );
    }
    let unreachable: Vec<String> = pods
        .iter()
        .map(|p| lab.pod_ip6(p))
        .filter(|ip| !lab.ping("tor", ip))
        .collect();
    assert!(
        unreachable.is_empty(),
        "the ToR does not reach pods {unreachable:?}"
    );
}

#[test]
fn bird_tor_dual_stack_every_pod_reaches_every_pod_on_both_families() {
    check_dual_stack("bird");
}

#[test]
fn frr_tor_dual_stack_every_pod_reaches_every_pod_on_both_families() {
    check_dual_stack("frr");
}
