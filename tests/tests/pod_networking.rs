//! Pod networking on a node, end to end: twill-node in a node namespace,
//! pods as namespaces created by the test, twill-cni called exactly as a
//! container runtime calls it, and Debian's CNI plugins chained after it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use twill_tests::cni::{Attachment, chain};
use twill_tests::{Netns, TestNode, bins, require_binary, require_root};

fn apply(db: &Path, yaml: &str) {
    bins::twillctl_apply(db, yaml);
}

fn pool(name: &str, cidr: &str, block: u8) -> String {
    format!(
        "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: {name}\nspec:\n  cidr: {cidr}\n  blockSize: {block}\n---\n"
    )
}

/// Allocations in the store: (address-ish block/ordinal key, handle).
fn allocations(db: &Path) -> Vec<(String, String)> {
    let out = std::process::Command::new(bins::binary("twillctl"))
        .args(["get", "ipamblocks", "-o", "json"])
        .env("TWILL_DATASTORE_PATH", db)
        .output()
        .expect("twillctl");
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Vec::new();
    }
    let v: Value = serde_json::from_str(&text).expect("json");
    let blocks: Vec<Value> = match v.get("items") {
        Some(items) => items.as_array().cloned().unwrap_or_default(),
        None => vec![v],
    };
    let mut out = Vec::new();
    for b in blocks {
        for a in b["spec"]["allocations"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            out.push((
                format!(
                    "{}#{}",
                    b["spec"]["cidr"].as_str().unwrap_or(""),
                    a["ordinal"]
                ),
                a["handle"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    out
}

fn ipv4_of(result: &Value) -> String {
    result["ips"]
        .as_array()
        .and_then(|ips| {
            ips.iter()
                .find_map(|i| i["address"].as_str().filter(|a| !a.contains(':')))
        })
        .and_then(|a| a.split('/').next())
        .expect("an IPv4 address in the result")
        .to_string()
}

/// Runs `f` over `items` on `threads` threads.
fn parallel<T: Send + Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out: Mutex<Vec<(usize, R)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= items.len() {
                        break;
                    }
                    let r = f(&items[i]);
                    out.lock().unwrap().push((i, r));
                }
            });
        }
    });
    let mut v = out.into_inner().unwrap();
    v.sort_by_key(|(i, _)| *i);
    v.into_iter().map(|(_, r)| r).collect()
}

#[test]
fn fifty_pods_reach_each_other_and_the_host_and_del_removes_everything() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    // /27 blocks: 50 pods need a second block.
    apply(&db, &pool("p", "10.61.0.0/24", 27));
    let node = TestNode::start("twp", "n50", &db, dir.path(), "10.96.61.1/32", &[]);
    let pods: Vec<Netns> = (0..50).map(|_| Netns::new("twp")).collect();
    let ids: Vec<usize> = (0..50).collect();
    let results = parallel(&ids, 8, |i| node.add(&format!("pod{i}"), &pods[*i]));
    for (i, r) in results.iter().enumerate() {
        assert!(r.success, "ADD pod{i}: {}", r.json);
    }
    let ips: Vec<String> = results.iter().map(|r| ipv4_of(&r.json)).collect();
    assert_eq!(
        ips.iter().collect::<BTreeSet<_>>().len(),
        50,
        "duplicate addresses: {ips:?}"
    );
    assert_eq!(node.veths().len(), 50);

    // Every pod reaches every other pod and the host; the host reaches every pod.
    let pairs: Vec<(usize, usize)> = (0..50)
        .flat_map(|a| (0..50).filter(move |b| *b != a).map(move |b| (a, b)))
        .collect();
    let failed: Vec<String> = parallel(&pairs, 16, |(a, b)| {
        (!pods[*a].ping(&ips[*b])).then(|| format!("pod{a} -> pod{b}"))
    })
    .into_iter()
    .flatten()
    .collect();
    assert!(failed.is_empty(), "unreachable: {failed:?}");
    let failed: Vec<String> = parallel(&ids, 16, |i| {
        let mut f = Vec::new();
        if !pods[*i].ping("10.96.61.1") {
            f.push(format!("pod{i} -> host"));
        }
        if !node.ns.ping(&ips[*i]) {
            f.push(format!("host -> pod{i}"));
        }
        f
    })
    .into_iter()
    .flatten()
    .collect();
    assert!(failed.is_empty(), "unreachable: {failed:?}");

    for (i, p) in pods.iter().enumerate() {
        let r = node.del(&format!("pod{i}"), p);
        assert!(r.success, "DEL pod{i}: {}", r.json);
    }
    assert!(node.veths().is_empty(), "veths left: {:?}", node.veths());
    // Owned blocks keep their blackhole until the block returns to the pool.
    let left: Vec<String> = node
        .twill_routes()
        .into_iter()
        .filter(|r| !r.starts_with("blackhole "))
        .collect();
    assert!(left.is_empty(), "routes left: {left:?}");
    assert!(
        allocations(&db).is_empty(),
        "addresses still held: {:?}",
        allocations(&db)
    );
}

#[test]
fn killed_mid_add_then_restarted_holds_no_address_twice_and_leaks_nothing() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    apply(&db, &pool("p", "10.62.0.0/24", 26));
    let mut node = TestNode::start("twp", "nkill", &db, dir.path(), "10.96.62.1/32", &[]);
    let pods: Vec<Netns> = (0..30).map(|_| Netns::new("twp")).collect();
    let ids: Vec<usize> = (0..30).collect();
    let node_ref = &node;
    let results = std::thread::scope(|s| {
        let adds = s.spawn(|| parallel(&ids, 10, |i| node_ref.add(&format!("k{i}"), &pods[*i])));
        // Kill it while ADDs are in flight.
        std::thread::sleep(Duration::from_millis(120));
        if let Some(d) = &node_ref.daemon {
            d.signal(libc::SIGKILL);
        }
        adds.join().unwrap()
    });
    if let Some(mut d) = node.daemon.take() {
        d.kill();
    }
    let ok: BTreeMap<String, String> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.success)
        .map(|(i, r)| {
            (
                format!("k{i}"),
                r.json["interfaces"][0]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    assert!(
        ok.len() < 30,
        "the kill came too late to interrupt anything"
    );
    for r in results.iter().filter(|r| !r.success) {
        assert_eq!(
            r.code(),
            Some(11),
            "an interrupted ADD must ask the runtime to try again: {}",
            r.json
        );
    }

    node.launch();
    // After reconcile: only endpoints whose ADD succeeded have veths and
    // addresses, and every address has one holder. An ADD may also have
    // completed on the node in the instant its reply was lost to the kill
    // (the runtime saw "try again"): such an endpoint is whole (its own
    // veth and its one address) and the runtime's retry below adopts it.
    let veths: BTreeSet<String> = node.veths().into_iter().collect();
    let completed_unanswered: BTreeSet<String> = (0..30)
        .map(|i| format!("k{i}"))
        .filter(|k| !ok.contains_key(k))
        .filter(|k| veths.contains(&twill_api::names::host_veth(k, "eth0")))
        .collect();
    assert!(
        completed_unanswered.len() <= 10,
        "more endpoints completed without a reply than ADDs were in flight: {completed_unanswered:?}"
    );
    let expected: BTreeSet<String> = ok
        .values()
        .cloned()
        .chain(
            completed_unanswered
                .iter()
                .map(|k| twill_api::names::host_veth(k, "eth0")),
        )
        .collect();
    assert_eq!(veths, expected, "veths after reconcile\n{}", node.log());
    let allocs = allocations(&db);
    let handles: BTreeSet<String> = allocs.iter().map(|(_, h)| h.clone()).collect();
    let ok_ids: BTreeSet<String> = ok
        .keys()
        .cloned()
        .chain(completed_unanswered.iter().cloned())
        .collect();
    assert_eq!(handles, ok_ids, "allocations after reconcile");
    let keys: BTreeSet<&String> = allocs.iter().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), allocs.len(), "an address is held twice");

    // The runtime retries the interrupted pods: they all come up.
    for (i, p) in pods.iter().enumerate() {
        if !ok.contains_key(&format!("k{i}")) {
            let r = node.add(&format!("k{i}"), p);
            assert!(r.success, "retried ADD k{i}: {}", r.json);
        }
    }
    assert_eq!(node.veths().len(), 30);
    let allocs = allocations(&db);
    assert_eq!(
        allocs.iter().map(|(k, _)| k).collect::<BTreeSet<_>>().len(),
        30
    );
}

/// (address, holder, held from ADD return, until DEL call)
type Holding = (String, String, Instant, Instant);

#[test]
fn two_agents_sharing_a_store_never_give_one_address_to_two_pods() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    // 16 blocks of 8: the nodes compete for blocks.
    apply(&db, &pool("p", "10.63.0.0/25", 29));
    let a = TestNode::start("twp", "na", &db, dir.path(), "10.96.63.1/32", &[]);
    let b = TestNode::start("twp", "nb", &db, dir.path(), "10.96.63.2/32", &[]);
    let nodes = [&a, &b];
    let held: Arc<Mutex<Vec<Holding>>> = Arc::default();
    let workers: Vec<(usize, usize)> = (0..2).flat_map(|n| (0..10).map(move |w| (n, w))).collect();
    let errors = parallel(&workers, 20, |(n, w)| {
        let pod = Netns::new("twp");
        let mut errs = Vec::new();
        for c in 0..10 {
            let id = format!("n{n}w{w}c{c}");
            let r = nodes[*n].add(&id, &pod);
            let got = Instant::now();
            if !r.success {
                errs.push(format!("ADD {id}: {}", r.json));
                continue;
            }
            let ip = ipv4_of(&r.json);
            std::thread::sleep(Duration::from_millis(5 * (c as u64 % 3)));
            let release = Instant::now();
            let d = nodes[*n].del(&id, &pod);
            if !d.success {
                errs.push(format!("DEL {id}: {}", d.json));
            }
            held.lock().unwrap().push((ip, id, got, release));
        }
        errs
    });
    let errors: Vec<String> = errors.into_iter().flatten().collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let held = held.lock().unwrap();
    assert_eq!(held.len(), 200);
    let mut by_addr: HashMap<&str, Vec<&Holding>> = HashMap::new();
    for h in held.iter() {
        by_addr.entry(h.0.as_str()).or_default().push(h);
    }
    for (addr, mut holders) in by_addr {
        holders.sort_by_key(|h| h.2);
        for pair in holders.windows(2) {
            assert!(
                pair[1].2 >= pair[0].3,
                "{addr} was held by {} and {} at the same time",
                pair[0].1,
                pair[1].1
            );
        }
    }
    assert!(allocations(&db).is_empty());
}

#[test]
fn bad_input_gets_the_spec_error_code_and_changes_nothing() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    apply(&db, &pool("tiny", "10.64.0.0/30", 30));
    let node = TestNode::start("twp", "nbad", &db, dir.path(), "10.96.64.1/32", &[]);
    let pod = Netns::new("twp");
    let att = |id: &str| Attachment {
        container_id: id.into(),
        netns: format!("/run/netns/{}", pod.name()),
        ifname: "eth0".into(),
        args: String::new(),
    };
    let conf = node.netconf("1.0.0");
    let before = (node.veths(), allocations(&db));
    type Case<'a> = (&'a str, Value, Vec<(&'a str, &'a str)>, u64);
    let cases: Vec<Case> = vec![
        (
            "missing CNI_NETNS",
            conf.clone(),
            vec![("CNI_NETNS", "")],
            4,
        ),
        (
            "netns that does not exist",
            conf.clone(),
            vec![("CNI_NETNS", "/run/netns/twp-no-such")],
            4,
        ),
        (
            "unknown cniVersion",
            json!({"cniVersion": "0.2.0", "name": "t", "type": "twill-cni", "socket": node.socket}),
            vec![],
            1,
        ),
        (
            "unknown pool",
            json!({"cniVersion": "1.0.0", "name": "t", "type": "twill-cni", "socket": node.socket, "pools": ["nope"]}),
            vec![],
            7,
        ),
        (
            "an ipam section",
            json!({"cniVersion": "1.0.0", "name": "t", "type": "twill-cni", "socket": node.socket, "ipam": {"type": "host-local"}}),
            vec![],
            2,
        ),
        (
            "bad mtu",
            json!({"cniVersion": "1.0.0", "name": "t", "type": "twill-cni", "socket": node.socket, "mtu": 5}),
            vec![],
            7,
        ),
        (
            "a bad container id",
            conf.clone(),
            vec![("CNI_CONTAINERID", "../etc")],
            4,
        ),
    ];
    for (what, config, env, code) in cases {
        let out = node.cni_raw("ADD", &att("bad"), &config, &env);
        assert!(!out.success, "{what}: succeeded");
        assert_eq!(out.code(), Some(code), "{what}: {}", out.json);
        assert!(
            out.json["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: no message"
        );
        assert_eq!(
            (node.veths(), allocations(&db)),
            before,
            "{what} changed something"
        );
    }
    // Invalid JSON on stdin.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo '{{not json' | CNI_COMMAND=ADD CNI_CONTAINERID=x CNI_NETNS=/run/netns/{} CNI_IFNAME=eth0 {}",
            pod.name(),
            bins::binary("twill-cni").display()
        ))
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!out.status.success());
    assert_eq!(v["code"], 6);

    // The /30 holds four pods; the fifth gets "exhausted" and nothing changes.
    let pods: Vec<Netns> = (0..5).map(|_| Netns::new("twp")).collect();
    for (i, p) in pods.iter().take(4).enumerate() {
        assert!(node.add(&format!("t{i}"), p).success);
    }
    let before = (node.veths(), allocations(&db));
    let out = node.add("t4", &pods[4]);
    assert_eq!(out.code(), Some(102), "{}", out.json);
    assert!(
        out.json["msg"]
            .as_str()
            .unwrap()
            .contains("no free address"),
        "{}",
        out.json
    );
    assert_eq!((node.veths(), allocations(&db)), before);
}

#[test]
fn check_names_the_drift_and_del_is_idempotent() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    apply(&db, &pool("p", "10.65.0.0/24", 26));
    let node = TestNode::start("twp", "nchk", &db, dir.path(), "10.96.65.1/32", &[]);
    let pod = Netns::new("twp");
    let r = node.add("c1", &pod);
    assert!(r.success, "{}", r.json);
    let ip = ipv4_of(&r.json);
    let c = node.cni("CHECK", "c1", &pod, "");
    assert!(c.success, "CHECK on a healthy pod: {}", c.json);

    node.ns
        .ip(&["route", "del", &format!("{ip}/32"), "proto", "116"]);
    pod.ip(&["route", "del", "default"]);
    let c = node.cni("CHECK", "c1", &pod, "");
    assert_eq!(c.code(), Some(105), "{}", c.json);
    let msg = c.json["msg"].as_str().unwrap();
    assert!(msg.contains(&format!("host route {ip}/32")), "{msg}");
    assert!(msg.contains("default route via 169.254.1.1"), "{msg}");
    let unknown = node.cni("CHECK", "nobody", &pod, "");
    assert_eq!(unknown.code(), Some(3), "{}", unknown.json);

    assert!(node.del("c1", &pod).success);
    assert!(node.del("c1", &pod).success, "a second DEL must succeed");
    // DEL after the pod's namespace is gone.
    let gone = Netns::new("twp");
    assert!(node.add("c2", &gone).success);
    let att = Attachment {
        container_id: "c2".into(),
        netns: format!("/run/netns/{}", gone.name()),
        ifname: "eth0".into(),
        args: String::new(),
    };
    drop(gone);
    let d = node.cni_raw("DEL", &att, &node.netconf("1.0.0"), &[]);
    assert!(d.success, "DEL with the namespace gone: {}", d.json);
    assert!(node.veths().is_empty());
    assert!(allocations(&db).is_empty());
}

#[test]
fn debian_plugins_chain_after_twill_cni() {
    require_root();
    for p in ["portmap", "bandwidth", "tuning"] {
        require_binary(&format!("/usr/lib/cni/{p}"), "containernetworking-plugins");
    }
    require_binary("iptables-save", "iptables");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    apply(&db, &pool("p", "10.66.0.0/24", 26));
    let node = TestNode::start("twp", "nchain", &db, dir.path(), "10.96.66.1/32", &[]);
    let pod = Netns::new("twp");
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "twill",
        "plugins": [
            {"type": "twill-cni", "socket": node.socket},
            {"type": "tuning", "sysctl": {"net.core.somaxconn": "1234"}},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
        ]
    });
    let runtime = json!({
        "portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 8000000, "ingressBurst": 1000000}
    });
    let att = Attachment {
        container_id: "chained".into(),
        netns: format!("/run/netns/{}", pod.name()),
        ifname: "eth0".into(),
        args: String::new(),
    };
    let result = chain(&node.ns, &conflist, "ADD", &att, &runtime)
        .unwrap_or_else(|e| panic!("chain ADD failed: {} {}", e.json, e.stderr));
    let ip = ipv4_of(&result);
    let host_if = result["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        pod.exec_ok("sysctl", &["-n", "net.core.somaxconn"]).trim(),
        "1234",
        "tuning did not apply"
    );
    let qdisc = node.ns.exec_ok("tc", &["qdisc", "show", "dev", &host_if]);
    assert!(
        qdisc.contains("tbf"),
        "bandwidth did not shape {host_if}: {qdisc}"
    );
    let nat = node.ns.exec_ok("iptables-save", &["-t", "nat"]);
    assert!(
        nat.contains(&format!("{ip}:80")),
        "portmap did not map to {ip}:80:\n{nat}"
    );
    assert!(
        pod.ping("10.96.66.1"),
        "the chained pod cannot reach the host"
    );

    chain(&node.ns, &conflist, "DEL", &att, &runtime)
        .unwrap_or_else(|e| panic!("chain DEL failed: {}", e.json));
    let nat = node.ns.exec_ok("iptables-save", &["-t", "nat"]);
    assert!(
        !nat.contains(&format!("{ip}:80")),
        "portmap left its mapping:\n{nat}"
    );
    assert!(node.veths().is_empty());
}

/// Twenty DELs at once: their address releases are batched (one write per
/// block for whoever waits together); each DEL frees exactly its own pod's
/// addresses and veth, the pods not deleted keep theirs, and the same DELs
/// repeated at once still succeed.
#[test]
fn twenty_concurrent_dels_release_exactly_their_own_addresses() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    apply(&db, &pool("p", "10.62.0.0/24", 27));
    let node = TestNode::start("twq", "n24", &db, dir.path(), "10.96.62.1/32", &[]);
    let pods: Vec<Netns> = (0..24).map(|_| Netns::new("twq")).collect();
    let ids: Vec<usize> = (0..24).collect();
    for (i, r) in parallel(&ids, 8, |i| node.add(&format!("pod{i}"), &pods[*i]))
        .iter()
        .enumerate()
    {
        assert!(r.success, "ADD pod{i}: {}", r.json);
    }
    assert_eq!(allocations(&db).len(), 24);
    let gone: Vec<usize> = (0..20).collect();
    for _ in 0..2 {
        for (i, r) in parallel(&gone, 20, |i| node.del(&format!("pod{i}"), &pods[*i]))
            .iter()
            .enumerate()
        {
            assert!(r.success, "DEL pod{i}: {}", r.json);
        }
        let held: BTreeSet<String> = allocations(&db).into_iter().map(|(_, h)| h).collect();
        let kept: BTreeSet<String> = (20..24).map(|i| format!("pod{i}")).collect();
        assert_eq!(held, kept, "addresses held after 20 concurrent DELs");
        assert_eq!(node.veths().len(), 4, "veths: {:?}", node.veths());
    }
}
