//! Dual stack end to end, through `twillctl lab up --dual-stack` exactly as
//! a user runs it: IPv4 and IPv6 pools, every pod one address of each family
//! through twill-cni, the mesh (or node route reflectors) carrying both
//! families, and a real ToR (BIRD, FRR, GoBGP) on an IPv6 session per node
//! holding every IPv6 block via the owning node's IPv6 rack address; IPv6
//! policy, neighbour discovery, natOutgoing and restarts on the same lab.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use twill_tests::lab::Lab;
use twill_tests::peers::Flavor;
use twill_tests::{require_binary, require_root, wait_until};

fn prerequisites(tor: &str) {
    require_root();
    require_binary("ping", "iputils-ping");
    match tor {
        "bird" => {
            require_binary("bird", "bird2");
            require_binary("birdc", "bird2");
        }
        "gobgp" => {
            require_binary("gobgpd", "gobgpd");
            require_binary("gobgp", "gobgpd");
        }
        _ => {
            require_binary("/usr/lib/frr/bgpd", "frr");
            require_binary("/usr/lib/frr/zebra", "frr");
            require_binary("vtysh", "frr");
        }
    }
}

fn check_dual_stack(tor: &str, extra: &[&str]) {
    prerequisites(tor);
    let mut args = vec![
        "--nodes",
        "3",
        "--tor",
        tor,
        "--pods-per-node",
        "2",
        "--dual-stack",
    ];
    args.extend(extra);
    let lab = Lab::up(&args);
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
    let router = lab.tor(Flavor::from_name(tor));
    for (block, via) in &want {
        assert!(
            wait_until(Duration::from_secs(10), || router.has_route_via(block, via)),
            "the ToR's BGP table has {block} without next hop {via}:\n{}",
            router.route(block)
        );
    }
    if tor == "gobgp" {
        // The lab's GoBGP has no kernel side: its table only.
        return;
    }
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
    check_dual_stack("bird", &[]);
}

#[test]
fn frr_tor_dual_stack_every_pod_reaches_every_pod_on_both_families() {
    check_dual_stack("frr", &[]);
}

#[test]
fn gobgp_tor_dual_stack_every_pod_reaches_every_pod_on_both_families() {
    check_dual_stack("gobgp", &[]);
}

/// Node route reflectors instead of the mesh: n1 reflects both families
/// (IPv6 over the IPv4 sessions, the originator's IPv6 next hop kept).
#[test]
fn node_route_reflectors_carry_both_families() {
    let topo = tempfile::NamedTempFile::new().expect("topology file");
    std::fs::write(topo.path(), "routeReflectors: [n1]\n").expect("write topology");
    let path = topo.path().to_str().expect("utf-8 path").to_string();
    check_dual_stack("bird", &["--topology", &path]);
}

/// `lab pod add NAME --node NODE -n shop -l app=NAME [--port 80/TCP]`.
fn add_pod(lab: &Lab, name: &str, node: &str, serve: bool) {
    let label = format!("app={name}");
    let mut args = vec![
        "pod", "add", name, "--node", node, "-n", "shop", "-l", &label,
    ];
    if serve {
        args.extend(["--port", "80/TCP"]);
    }
    let o = lab.lab(&args);
    assert!(
        o.status.success(),
        "lab pod add {name}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn ipv6_policy_denies_what_ipv4_policy_denies_and_nd_still_works() {
    prerequisites("bird");
    let lab = Lab::up(&[
        "--nodes",
        "2",
        "--tor",
        "bird",
        "--pods-per-node",
        "0",
        "--dual-stack",
    ]);
    assert!(lab.up_ok, "{}", lab.up_output);
    // web on n1; client and other on n2, other also on n1 (same node).
    add_pod(&lab, "web", "n1", true);
    add_pod(&lab, "client", "n2", true);
    add_pod(&lab, "other", "n2", true);
    add_pod(&lab, "near", "n1", false);
    let ip = |p: &str| [lab.pod_ip(p), lab.pod_ip6(p)];
    let answers = |from: &str, to: &str| -> [bool; 2] {
        ip(to).map(|a| lab.probe(from, &a, "80/TCP").as_deref() == Some(to))
    };
    // Without policy everything answers on both families (the positive path).
    for from in ["client", "other", "near"] {
        assert!(
            wait_until(Duration::from_secs(10), || answers(from, "web")
                == [true, true]),
            "{from} -> web before any policy: {:?}",
            answers(from, "web")
        );
    }
    assert_eq!(answers("web", "other"), [true, true]);

    // web admits and reaches the pools except `other` and `near`, one
    // ipBlock per family; Egress is restricted too, so the pod's own
    // neighbour solicitations meet its egress chain.
    let [o4, o6] = ip("other");
    let [n4, n6] = ip("near");
    let policy = format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - ipBlock: {{cidr: 10.244.0.0/16, except: [{o4}/32, {n4}/32]}}
    - ipBlock: {{cidr: \"fd00:10:244::/56\", except: [\"{o6}/128\", \"{n6}/128\"]}}
  egress:
  - to:
    - ipBlock: {{cidr: 10.244.0.0/16, except: [{o4}/32]}}
    - ipBlock: {{cidr: \"fd00:10:244::/56\", except: [\"{o6}/128\"]}}
"
    );
    let file = lab.dir.join("web-policy.yaml");
    std::fs::write(&file, policy).expect("write policy");
    let o = lab.twillctl(&["apply", "-f", file.to_str().expect("utf-8")]);
    assert!(
        o.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(10), || answers("other", "web")
            == [false, false]),
        "other -> web with the policy: {:?} (want denied on both families)",
        answers("other", "web")
    );
    assert_eq!(answers("near", "web"), [false, false], "near -> web");
    assert_eq!(answers("web", "other"), [false, false], "web -> other");
    // Neighbour discovery is never blocked: with every neighbour entry
    // forgotten on both sides, the allowed peers still get through on IPv6.
    let web_if = lab.sh("web", &["ip", "-6", "route", "show", "default"]);
    lab.sh("web", &["ip", "-6", "neigh", "flush", "all"]);
    lab.sh("n1", &["ip", "-6", "neigh", "flush", "all"]);
    assert_eq!(
        answers("client", "web"),
        [true, true],
        "client -> web with the policy (neighbour caches flushed; web routes {web_if})"
    );
    assert_eq!(answers("web", "client"), [true, true], "web -> client");
    let neigh = lab.sh("web", &["ip", "-6", "neigh", "show"]);
    assert!(
        neigh.contains("fe80::ecee:eeff:feee:eeee") && !neigh.contains("FAILED"),
        "web resolved its IPv6 gateway again:\n{neigh}"
    );

    // A GlobalNetworkPolicy whose rule selects pods by label matches their
    // IPv6 addresses as well: client is denied on both families, other
    // (no longer excluded, the NetworkPolicy gone) admitted on both.
    let o = lab.twillctl(&["delete", "-f", file.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let gnp = lab.dir.join("web-gnp.yaml");
    std::fs::write(
        &gnp,
        "apiVersion: twill.dev/v1
kind: GlobalNetworkPolicy
metadata: {name: web-not-from-client}
spec:
  selector: app == 'web'
  types: [Ingress]
  ingress:
  - {action: Deny, source: {selector: app == 'client'}}
  - {action: Allow}
",
    )
    .expect("write policy");
    let o = lab.twillctl(&["apply", "-f", gnp.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        wait_until(Duration::from_secs(10), || answers("client", "web")
            == [false, false]
            && answers("other", "web") == [true, true]),
        "with the global policy: client -> web {:?} (want denied on both), other -> web {:?} (want admitted on both)",
        answers("client", "web"),
        answers("other", "web")
    );
}

/// Echo requests the ToR received from `src` (its counter in the test's
/// own nft table in the ToR namespace, which goes with the namespace).
fn echo_requests_from(lab: &Lab, src: &str) -> u64 {
    let out = lab.sh("tor", &["nft", "list", "table", "ip6", "twtest"]);
    out.lines()
        .find(|l| l.contains(&format!("ip6 saddr {src} ")))
        .and_then(|l| l.split("packets ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter for {src} in:\n{out}"))
}

#[test]
fn nat_outgoing_on_the_ipv6_pool_masquerades_to_the_node_ipv6_address() {
    prerequisites("bird");
    require_binary("nft", "nftables");
    let lab = Lab::up(&[
        "--nodes",
        "1",
        "--tor",
        "bird",
        "--pods-per-node",
        "1",
        "--dual-stack",
    ]);
    assert!(lab.up_ok, "{}", lab.up_output);
    let pod6 = lab.pod_ip6("n1-p1");
    let node6 = lab.state()["plan"]["nodes"][0]["addr6"]
        .as_str()
        .expect("n1's IPv6 address")
        .to_string();
    let tor6 = lab.state()["plan"]["v6"]["tor_addr"]
        .as_str()
        .expect("the ToR's IPv6 address")
        .to_string();
    // The ToR's own address is outside every pool: a destination for NAT.
    lab.sh(
        "tor",
        &[
            "nft",
            &format!(
                "add table ip6 twtest; add chain ip6 twtest in {{ type filter hook input priority 0; }}; \
                 add rule ip6 twtest in ip6 saddr {node6} icmpv6 type echo-request counter; \
                 add rule ip6 twtest in ip6 saddr {pod6} icmpv6 type echo-request counter"
            ),
        ],
    );
    let ping = |n: &str| {
        lab.exec(
            "n1-p1",
            &["ping", "-c", n, "-i", "0.2", "-W", "1", "-q", &tor6],
        )
    };
    // The lab's IPv6 pool has natOutgoing: the ToR sees the node's address.
    assert!(ping("3").status.success(), "the pod does not reach {tor6}");
    assert_eq!(
        (
            echo_requests_from(&lab, &node6),
            echo_requests_from(&lab, &pod6)
        ),
        (3, 0),
        "with natOutgoing the ToR should see only n1's address {node6}"
    );
    // Without it, the pod's own address (the ToR routes back over BGP).
    let pool = lab.dir.join("pool6.yaml");
    std::fs::write(
        &pool,
        "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: lab-ipv6\nspec:\n  cidr: fd00:10:244::/56\n  blockSize: 122\n  natOutgoing: false\n  nodeSelector: all()\n",
    )
    .expect("write pool");
    let o = lab.twillctl(&["apply", "-f", pool.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        wait_until(Duration::from_secs(20), || {
            ping("1");
            echo_requests_from(&lab, &pod6) > 0
        }),
        "natOutgoing off, yet the ToR never saw the pod's own address {pod6}"
    );
    let before = echo_requests_from(&lab, &node6);
    assert!(ping("3").status.success());
    assert_eq!(
        echo_requests_from(&lab, &node6),
        before,
        "masqueraded after natOutgoing was turned off"
    );
}

#[test]
fn restarting_twill_node_under_ipv6_traffic_loses_no_packets() {
    prerequisites("bird");
    let lab = Lab::up(&[
        "--nodes",
        "2",
        "--tor",
        "bird",
        "--pods-per-node",
        "1",
        "--dual-stack",
    ]);
    assert!(lab.up_ok, "{}", lab.up_output);
    let dst = lab.pod_ip6("n2-p1");
    let routes6 = || lab.sh("n1", &["ip", "-6", "route", "show", "proto", "116"]);
    let n2_block: String = routes6()
        .lines()
        .find(|l| l.contains("via fd00:172:30::12"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("n1 routes no IPv6 block via n2:\n{}", routes6()))
        .to_string();
    // 100 packets a second for 12 s over IPv6 while n2's twill-node is
    // killed and n1's stopped, each started again.
    let (sent, got, text) = lab.ping_across_restarts("n1-p1", &dst);
    eprintln!(
        "graceful restart under IPv6 traffic: {sent} sent, {got} received, {} lost",
        sent - got
    );
    assert_eq!(sent, 1200, "{text}");
    assert_eq!(
        got, sent,
        "IPv6 packets lost across a SIGKILL of n2 and a SIGTERM of n1:\n{text}"
    );
    assert!(routes6().contains(&n2_block), "{}", routes6());
    // All three sessions come back: the mesh, the ToR on IPv4 and on IPv6.
    assert!(
        wait_until(Duration::from_secs(20), || {
            let out = lab.twillctl(&["node", "status", "n1", "-o", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let peers = v["status"]["bgpPeers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            peers.len() == 3 && peers.iter().all(|p| p["state"] == "Established")
        }),
        "sessions did not come back: {}",
        lab.sessions_report("n1", &["n1", "n2"])
    );
    assert!(
        wait_until(Duration::from_secs(10), || lab
            .tor(Flavor::Bird)
            .has_route_via(&n2_block, "fd00:172:30::12")),
        "the ToR lost {n2_block}:\n{}",
        lab.tor(Flavor::Bird).route(&n2_block)
    );
}

/// n1's IPv6 next hop as its peers see it: the ToR's BGP table and kernel
/// and n2's kernel all route n1's IPv6 block via `via`, and n2's pod and
/// the ToR reach n1's pod over IPv6.
fn n1_block_is_routed_via(lab: &Lab, block: &str, via: &str) -> Result<(), String> {
    let bgp = lab.tor(Flavor::Bird).route(block);
    if !bgp.contains(via) {
        return Err(format!("the ToR's BGP table:\n{bgp}"));
    }
    let routed = |who: &str| {
        lab.sh(who, &["ip", "-6", "route", "show", block])
            .contains(&format!("via {via} "))
    };
    for who in ["tor", "n2"] {
        if !routed(who) {
            return Err(format!(
                "{who}'s kernel route: {}",
                lab.sh(who, &["ip", "-6", "route", "show", block])
            ));
        }
    }
    let pod = lab.pod_ip6("n1-p1");
    for from in ["n2-p1", "tor"] {
        if !lab.ping(from, &pod) {
            return Err(format!("{from} does not reach {pod}"));
        }
    }
    Ok(())
}

/// Several global IPv6 addresses on a node: the next hop is chosen by the
/// documented rule (in the ToR's subnet, then the lowest), also when
/// twill-node starts with both; when the chosen address is replaced the
/// ToR's and the other nodes' next hop follows without a restart.
#[test]
fn the_ipv6_next_hop_follows_the_node_addresses() {
    prerequisites("bird");
    let lab = Lab::up(&[
        "--nodes",
        "2",
        "--tor",
        "bird",
        "--pods-per-node",
        "1",
        "--dual-stack",
    ]);
    assert!(lab.up_ok, "{}", lab.up_output);
    let block: String = lab
        .blocks()
        .into_iter()
        .find(|(cidr, node)| cidr.contains(':') && node.as_deref() == Some("n1"))
        .map(|(cidr, _)| cidr)
        .unwrap_or_else(|| panic!("n1 has no IPv6 block: {:?}", lab.blocks()));
    let old = "fd00:172:30::11";
    let new = "fd00:172:30::a11";
    let settled = |via: &str| {
        let mut last = String::new();
        let ok = wait_until(Duration::from_secs(30), || {
            match n1_block_is_routed_via(&lab, &block, via) {
                Ok(()) => true,
                Err(e) => {
                    last = e;
                    false
                }
            }
        });
        assert!(ok, "{block} not routed via {via}: {last}");
    };
    settled(old);

    // The ToR's operator declares the node's coming address beside the old
    // one (the lab's BIRD names each node's IPv6 neighbour).
    let conf = lab.dir.join("tor").join("bird.conf");
    let mut text = std::fs::read_to_string(&conf).expect("the ToR's bird.conf");
    text += &format!("protocol bgp n1_v6_new from node6 {{ neighbor {new} as 64512; }}\n");
    std::fs::write(&conf, text).expect("write bird.conf");
    let tor = lab.tor(Flavor::Bird);
    let birdc = |args: &[&str]| tor.cli(args);
    let r = birdc(&["configure"]);
    assert!(r.contains("Reconfigured"), "birdc configure: {r}");

    // A second global address (higher, same subnet): nothing changes, and
    // the IPv6 session to the ToR is not replaced.
    let since = |proto: &str| {
        birdc(&["show", "protocols", proto])
            .lines()
            .find(|l| l.starts_with(proto))
            .map(str::to_string)
            .unwrap_or_default()
    };
    let before = since("n1_v6");
    assert!(before.contains("Established"), "{before}");
    lab.sh(
        "n1",
        &[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{new}/64"),
            "dev",
            "eth0",
        ],
    );
    std::thread::sleep(Duration::from_secs(4));
    settled(old);
    // BIRD prints the time of the last state change in milliseconds,
    // converted from its monotonic clock at each call, so the same change
    // can print a millisecond apart; a new session would be 4 s later.
    let after = since("n1_v6");
    let changed_at = |line: &str| -> Option<f64> {
        let t = line
            .split_whitespace()
            .find(|w| w.matches(':').count() == 2)?;
        let mut parts = t.split(':');
        let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
        Some(
            h.parse::<f64>().ok()? * 3600.0
                + m.parse::<f64>().ok()? * 60.0
                + s.parse::<f64>().ok()?,
        )
    };
    let (b, a) = (changed_at(&before), changed_at(&after));
    assert!(
        after.contains("Established")
            && b.zip(a).is_some_and(|(b, a)| {
                // (across midnight too)
                let d = (a - b).rem_euclid(86400.0);
                d.min(86400.0 - d) < 0.5
            }),
        "the IPv6 session was disturbed by a second address:\n before: {before}\n after:  {after}"
    );

    // twill-node started with both addresses still announces IPv6 (it
    // used to refuse to choose), with the same next hop.
    let o = lab.restart("n1", false);
    assert!(
        o.status.success(),
        "lab restart n1: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    settled(old);

    // The chosen address goes: the next hop moves to the remaining one,
    // at the ToR (a new IPv6 session from it) and on n2 (the mesh).
    lab.sh(
        "n1",
        &[
            "ip",
            "-6",
            "addr",
            "del",
            &format!("{old}/64"),
            "dev",
            "eth0",
        ],
    );
    settled(new);
    let status = since("n1_v6_new");
    assert!(status.contains("Established"), "{status}");
}

/// The ToR as the rack's route reflector (one AS, no mesh): BIRD reflects
/// the IPv6 blocks on its IPv6 sessions with the nodes' IPv6 next hops, so
/// pods on different nodes reach each other on IPv6 only through it.
#[test]
fn bird_tor_reflector_reflects_both_families() {
    let topo = tempfile::NamedTempFile::new().expect("topology file");
    std::fs::write(topo.path(), "torReflector: true\n").expect("write topology");
    let path = topo.path().to_str().expect("utf-8 path").to_string();
    check_dual_stack("bird", &["--topology", &path]);
}
