//! Network policy conformance, in the manner of the Kubernetes e2e
//! network-policy suite: namespaces x, y, z; pods a, b, c in each, created
//! through the real twill-cni on a real twill-node, each serving TCP and UDP
//! on ports 80 and 81 (named serve-80-tcp, serve-80-udp, ...). For every
//! case the full truth table (every ordered pair of distinct pods × 4
//! ports) is checked twice: against `twillctl policy explain` (the model)
//! and against real packets through the kernel's nftables rules.
//!
//! The listeners are threads of this test process whose sockets were
//! created inside the pod namespaces (`setns` on a thread changes only that
//! thread's namespace); probes are threads that enter the source pod's
//! namespace the same way, so hundreds of probes run in parallel without
//! starting a process each.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use twill_tests::{Netns, TestNode, bins, require_binary, require_root, wait_until};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
/// (port, protocol) probed for every pair.
const PORTS: [(u16, &str); 4] = [(80, "TCP"), (81, "TCP"), (80, "UDP"), (81, "UDP")];

/// Runs `f` on the current thread inside the namespace `name`.
fn in_netns<R>(name: &str, f: impl FnOnce() -> R) -> R {
    let file = std::fs::File::open(format!("/run/netns/{name}")).expect("open netns");
    // SAFETY: setns on this thread with a namespace file we just opened.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
    f()
}

/// Starts TCP and UDP echo listeners on 80 and 81 inside a pod namespace.
fn serve(pod_ns: &str) {
    let name = pod_ns.to_string();
    let (tcp, udp) = std::thread::spawn(move || {
        in_netns(&name, || {
            let tcp: Vec<TcpListener> = [80, 81]
                .iter()
                .map(|p| TcpListener::bind(("0.0.0.0", *p)).expect("bind tcp"))
                .collect();
            let udp: Vec<UdpSocket> = [80, 81]
                .iter()
                .map(|p| UdpSocket::bind(("0.0.0.0", *p)).expect("bind udp"))
                .collect();
            (tcp, udp)
        })
    })
    .join()
    .unwrap();
    // The sockets belong to the pod namespace; any thread may serve them.
    for l in tcp {
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let _ = s.write_all(b"ok");
            }
        });
    }
    for u in udp {
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = u.recv_from(&mut buf) {
                let _ = u.send_to(&buf[..n], from);
            }
        });
    }
}

/// One connection attempt from inside `from_ns` (on the calling thread).
fn probe_here(dst: IpAddr, port: u16, proto: &str, timeout: Duration) -> bool {
    let addr = SocketAddr::new(dst, port);
    if proto == "TCP" {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(timeout));
                let mut b = [0u8; 2];
                s.read_exact(&mut b).is_ok()
            }
            Err(_) => false,
        }
    } else {
        let Ok(u) = UdpSocket::bind("0.0.0.0:0") else {
            return false;
        };
        let _ = u.set_read_timeout(Some(timeout));
        if u.send_to(b"probe", addr).is_err() {
            return false;
        }
        let mut b = [0u8; 16];
        u.recv_from(&mut b).is_ok()
    }
}

/// A probe: source pod index, destination pod index, port index.
type Probe = (usize, usize, usize);

struct Cluster {
    node: TestNode,
    db: std::path::PathBuf,
    /// (namespace, pod) in order x/a, x/b, ... z/c.
    pods: Vec<(String, String)>,
    netns: Vec<Netns>,
    ips: Vec<IpAddr>,
}

fn twillctl(db: &Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut child = std::process::Command::new(bins::binary("twillctl"))
        .args(args)
        .env("TWILL_DATASTORE_PATH", db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("twillctl");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    child.wait_with_output().expect("twillctl")
}

fn apply(db: &Path, docs: &[Value]) {
    let yaml: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
    let out = twillctl(db, &["apply", "-f", "-"], Some(&yaml.join("\n---\n")));
    assert!(
        out.status.success(),
        "twillctl apply: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        yaml.join("\n---\n")
    );
}

fn np(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn gnp(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "twill.dev/v1", "kind": "GlobalNetworkPolicy",
        "metadata": {"name": name}, "spec": spec})
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let db = dir.join("store.db");
        let mut docs = vec![json!({"apiVersion": "twill.dev/v1", "kind": "IPPool",
            "metadata": {"name": "p"}, "spec": {"cidr": "10.71.0.0/24", "blockSize": 26}})];
        let mut pods = Vec::new();
        for ns in NAMESPACES {
            docs.push(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"ns": ns}}}));
            for pod in PODS {
                let ports: Vec<Value> = PORTS
                    .iter()
                    .map(|(p, pr)| json!({"name": format!("serve-{p}-{}", pr.to_ascii_lowercase()), "containerPort": p, "protocol": pr}))
                    .collect();
                docs.push(json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod, "namespace": ns, "labels": {"pod": pod}},
                    "spec": {"nodeName": "pol", "containers": [{"name": "srv", "image": "none", "ports": ports}]}}));
                pods.push((ns.to_string(), pod.to_string()));
            }
        }
        apply(&db, &docs);
        let node = TestNode::start("twq", "pol", &db, dir, "10.96.71.1/32", &[]);
        let netns: Vec<Netns> = pods.iter().map(|_| Netns::new("twq")).collect();
        let mut ips = Vec::new();
        for (i, (ns, pod)) in pods.iter().enumerate() {
            let out = node.cni(
                "ADD",
                &format!("cid-{ns}-{pod}"),
                &netns[i],
                &format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod}"),
            );
            assert!(out.success, "ADD {ns}/{pod}: {}\n{}", out.json, node.log());
            let addr = out.addresses()[0].split('/').next().unwrap().to_string();
            ips.push(addr.parse().unwrap());
            serve(netns[i].name());
        }
        Cluster {
            node,
            db,
            pods,
            netns,
            ips,
        }
    }

    fn index(&self, ns: &str, pod: &str) -> usize {
        self.pods
            .iter()
            .position(|(n, p)| n == ns && p == pod)
            .unwrap()
    }

    fn probes(&self) -> Vec<Probe> {
        let n = self.pods.len();
        (0..n)
            .flat_map(|s| (0..n).filter(move |d| *d != s).map(move |d| (s, d)))
            .flat_map(|(s, d)| (0..PORTS.len()).map(move |p| (s, d, p)))
            .collect()
    }

    /// What the kernel lets through, probe by probe (in parallel).
    fn kernel_matrix(&self) -> BTreeMap<Probe, bool> {
        let probes = self.probes();
        let next = AtomicUsize::new(0);
        let out = Mutex::new(BTreeMap::new());
        std::thread::scope(|s| {
            for _ in 0..48 {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(src, dst, p)) = probes.get(i) else {
                            break;
                        };
                        let (port, proto) = PORTS[p];
                        let ok = in_netns(self.netns[src].name(), || {
                            probe_here(self.ips[dst], port, proto, Duration::from_millis(700))
                        });
                        out.lock().unwrap().insert((src, dst, p), ok);
                    }
                });
            }
        });
        out.into_inner().unwrap()
    }

    /// What `twillctl policy explain` says, probe by probe.
    fn model_matrix(&self) -> BTreeMap<Probe, bool> {
        let pairs: Vec<(usize, usize)> = (0..self.pods.len())
            .flat_map(|s| (0..self.pods.len()).map(move |d| (s, d)))
            .filter(|(s, d)| s != d)
            .collect();
        let next = AtomicUsize::new(0);
        let out = Mutex::new(BTreeMap::new());
        std::thread::scope(|sc| {
            for _ in 0..6 {
                sc.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(s, d)) = pairs.get(i) else { break };
                        let src = format!("{}/{}", self.pods[s].0, self.pods[s].1);
                        let dst = format!("{}/{}", self.pods[d].0, self.pods[d].1);
                        let mut args = vec!["policy", "explain", &src, &dst, "--json"];
                        let ports: Vec<String> =
                            PORTS.iter().map(|(p, pr)| format!("{p}/{pr}")).collect();
                        for p in &ports {
                            args.push("--port");
                            args.push(p);
                        }
                        let o = twillctl(&self.db, &args, None);
                        assert!(
                            o.status.success(),
                            "twillctl {}: {}",
                            args.join(" "),
                            String::from_utf8_lossy(&o.stderr)
                        );
                        let v: Value = serde_json::from_slice(&o.stdout).expect("explain json");
                        let mut m = out.lock().unwrap();
                        for (p, e) in v.as_array().expect("array").iter().enumerate() {
                            m.insert((s, d, p), e["verdict"] == "Allow");
                        }
                    }
                });
            }
        });
        out.into_inner().unwrap()
    }

    /// Waits until the node's table mentions (or no longer mentions) these chains' policies.
    fn wait_programmed(&self, present: &[&str], absent: &[&str]) {
        let ok = wait_until(Duration::from_secs(10), || {
            let out = self
                .node
                .ns
                .exec("nft", &["list", "table", "inet", "twill"]);
            let t = String::from_utf8_lossy(&out.stdout);
            out.status.success()
                && present.iter().all(|p| t.contains(p))
                && absent.iter().all(|p| !t.contains(p))
        });
        assert!(
            ok,
            "policy chains {present:?} present / {absent:?} absent not reached; twill-node log:\n{}",
            self.node.log()
        );
    }

    fn describe(&self, (s, d, p): Probe) -> String {
        let (port, proto) = PORTS[p];
        format!(
            "{}/{} -> {}/{} {port}/{proto}",
            self.pods[s].0, self.pods[s].1, self.pods[d].0, self.pods[d].1
        )
    }

    /// Checks one case: model and kernel against the expected truth table.
    fn check(&self, case: &str, expect: impl Fn(Peer, Peer, u16, &str) -> bool) {
        let started = Instant::now();
        let want: BTreeMap<Probe, bool> = self
            .probes()
            .into_iter()
            .map(|pr @ (s, d, p)| {
                let (port, proto) = PORTS[p];
                let sp = Peer::of(&self.pods[s]);
                let dp = Peer::of(&self.pods[d]);
                (pr, expect(sp, dp, port, proto))
            })
            .collect();
        let model = self.model_matrix();
        let wrong: Vec<String> = want
            .iter()
            .filter(|(k, v)| model.get(k) != Some(v))
            .map(|(k, v)| {
                format!(
                    "{} (want {})",
                    self.describe(*k),
                    if *v { "allow" } else { "deny" }
                )
            })
            .collect();
        assert!(
            wrong.is_empty(),
            "[{case}] explain disagrees on {} probes: {wrong:#?}",
            wrong.len()
        );
        let mut kernel = self.kernel_matrix();
        // A probe that failed may have raced nothing but load: retry those once, slowly.
        let retry: Vec<Probe> = kernel
            .iter()
            .filter(|(k, v)| !**v && want.get(k) == Some(&true))
            .map(|(k, _)| *k)
            .collect();
        for (s, d, p) in retry {
            let (port, proto) = PORTS[p];
            let ok = std::thread::scope(|sc| {
                sc.spawn(|| {
                    in_netns(self.netns[s].name(), || {
                        probe_here(self.ips[d], port, proto, Duration::from_secs(2))
                    })
                })
                .join()
                .unwrap()
            });
            kernel.insert((s, d, p), ok);
        }
        let wrong: Vec<String> = want
            .iter()
            .filter(|(k, v)| kernel.get(k) != Some(v))
            .map(|(k, v)| {
                format!(
                    "{} (want {})",
                    self.describe(*k),
                    if *v { "allow" } else { "deny" }
                )
            })
            .collect();
        assert!(
            wrong.is_empty(),
            "[{case}] the kernel disagrees on {} probes: {wrong:#?}\ntable:\n{}",
            wrong.len(),
            String::from_utf8_lossy(
                &self
                    .node
                    .ns
                    .exec("nft", &["list", "table", "inet", "twill"])
                    .stdout
            )
        );
        let allowed = want.values().filter(|v| **v).count();
        eprintln!(
            "[{case}] ok: {allowed}/{} allowed, model and kernel agree ({:?})",
            want.len(),
            started.elapsed()
        );
    }

    fn delete(&self, kind: &str, ns: &str, names: &[&str]) {
        let mut args = vec!["delete", kind];
        args.extend_from_slice(names);
        args.extend_from_slice(&["-n", ns]);
        let o = twillctl(&self.db, &args, None);
        assert!(
            o.status.success(),
            "twillctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// A pod in a truth table.
#[derive(Clone, Copy, Debug)]
struct Peer<'a> {
    ns: &'a str,
    pod: &'a str,
}

impl<'a> Peer<'a> {
    fn of(p: &'a (String, String)) -> Peer<'a> {
        Peer {
            ns: &p.0,
            pod: &p.1,
        }
    }
    fn is(&self, ns: &str, pod: &str) -> bool {
        self.ns == ns && self.pod == pod
    }
}

#[test]
fn kubernetes_network_policy_conformance_and_global_policies() {
    require_root();
    require_binary("nft", "nftables");
    let suite = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path());
    let db = c.db.clone();

    c.check("no policy", |_, _, _, _| true);

    // Default deny ingress in x.
    apply(
        &db,
        &[np(
            "x",
            "deny-in",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        )],
    );
    c.wait_programmed(&["np.x.deny-in"], &[]);
    c.check("default deny ingress", |_, d, _, _| d.ns != "x");
    c.delete("networkpolicy", "x", &["deny-in"]);

    // `egress: []` without policyTypes: the API server defaults policyTypes
    // to [Ingress] (SetDefaults_NetworkPolicy: Egress only with an egress
    // rule), so this isolates ingress only; egress from x stays open.
    apply(
        &db,
        &[np(
            "x",
            "empty-egress",
            json!({"podSelector": {}, "egress": []}),
        )],
    );
    c.wait_programmed(&["np.x.empty-egress"], &["np.x.deny-in"]);
    c.check(
        "egress: [] without policyTypes isolates ingress only",
        |_, d, _, _| d.ns != "x",
    );
    c.delete("networkpolicy", "x", &["empty-egress"]);

    // Default deny egress in x.
    apply(
        &db,
        &[np(
            "x",
            "deny-out",
            json!({"podSelector": {}, "policyTypes": ["Egress"]}),
        )],
    );
    c.wait_programmed(&["np.x.deny-out"], &["np.x.empty-egress"]);
    c.check("default deny egress", |s, _, _, _| s.ns != "x");
    c.delete("networkpolicy", "x", &["deny-out"]);

    // Pod AND namespace selector in one peer.
    apply(
        &db,
        &[np(
            "x",
            "and",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
        )],
    );
    c.wait_programmed(&["np.x.and"], &["np.x.deny-out"]);
    c.check("pod AND namespace selector", |s, d, _, _| {
        !d.is("x", "a") || s.is("y", "b")
    });
    c.delete("networkpolicy", "x", &["and"]);

    // Pod OR namespace selector (two peers).
    apply(
        &db,
        &[np(
            "x",
            "or",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"ns": "y"}}}, {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
        )],
    );
    c.wait_programmed(&["np.x.or"], &["np.x.and"]);
    c.check("pod OR namespace selector", |s, d, _, _| {
        !d.is("x", "a") || s.ns == "y" || s.is("x", "b")
    });
    c.delete("networkpolicy", "x", &["or"]);

    // matchExpressions.
    apply(
        &db,
        &[np(
            "x",
            "expr",
            json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]},
        "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["y"]}]}}]}]}),
        )],
    );
    c.wait_programmed(&["np.x.expr"], &["np.x.or"]);
    c.check("matchExpressions", |s, d, _, _| {
        d.ns != "x" || d.pod == "c" || s.ns != "y"
    });
    c.delete("networkpolicy", "x", &["expr"]);

    // A numeric port.
    apply(
        &db,
        &[np(
            "x",
            "port81",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": [{"port": 81, "protocol": "TCP"}]}]}),
        )],
    );
    c.wait_programmed(&["np.x.port81"], &["np.x.expr"]);
    c.check("port 81/TCP only", |_, d, port, proto| {
        !d.is("x", "a") || (port == 81 && proto == "TCP")
    });
    c.delete("networkpolicy", "x", &["port81"]);

    // A named port.
    apply(
        &db,
        &[np(
            "x",
            "named",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": [{"port": "serve-80-udp", "protocol": "UDP"}]}]}),
        )],
    );
    c.wait_programmed(&["np.x.named"], &["np.x.port81"]);
    c.check("named port serve-80-udp", |_, d, port, proto| {
        !d.is("x", "a") || (port == 80 && proto == "UDP")
    });
    c.delete("networkpolicy", "x", &["named"]);

    // endPort.
    apply(
        &db,
        &[np(
            "x",
            "range",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": [{"port": 80, "endPort": 81, "protocol": "TCP"}]}]}),
        )],
    );
    c.wait_programmed(&["np.x.range"], &["np.x.named"]);
    c.check("endPort 80-81/TCP", |_, d, _, proto| {
        !d.is("x", "a") || proto == "TCP"
    });
    c.delete("networkpolicy", "x", &["range"]);

    // ipBlock with except.
    let yb = c.ips[c.index("y", "b")];
    apply(
        &db,
        &[np(
            "x",
            "block",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.71.0.0/24", "except": [format!("{yb}/32")]}}]}]}),
        )],
    );
    c.wait_programmed(&["np.x.block"], &["np.x.range"]);
    c.check("ipBlock with except", |s, d, _, _| {
        !d.is("x", "a") || !s.is("y", "b")
    });
    c.delete("networkpolicy", "x", &["block"]);

    // Several policies add up.
    apply(
        &db,
        &[
            np(
                "x",
                "from-b",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
            ),
            np(
                "x",
                "from-z",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}], "ports": [{"port": 80, "protocol": "TCP"}]}]}),
            ),
        ],
    );
    c.wait_programmed(&["np.x.from-b", "np.x.from-z"], &["np.x.block"]);
    c.check("policies add up", |s, d, port, proto| {
        !d.is("x", "a") || s.is("x", "b") || (s.ns == "z" && port == 80 && proto == "TCP")
    });
    c.delete("networkpolicy", "x", &["from-b", "from-z"]);

    // Egress to an ipBlock only.
    let yc = c.ips[c.index("y", "c")];
    apply(
        &db,
        &[np(
            "x",
            "egress-block",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": format!("{yc}/32")}}]}]}),
        )],
    );
    c.wait_programmed(&["np.x.egress-block"], &["np.x.from-b", "np.x.from-z"]);
    c.check("egress to an ipBlock", |s, d, _, _| {
        !s.is("x", "a") || d.is("y", "c")
    });
    c.delete("networkpolicy", "x", &["egress-block"]);

    // Global policies: order, Deny, Pass, with a NetworkPolicy after Pass.
    apply(
        &db,
        &[
            gnp(
                "deny-z",
                json!({"order": 10, "selector": "pod == 'a'", "ingress": [
            {"action": "Deny", "source": {"namespaceSelector": "ns == 'z'"}},
            {"action": "Pass"}]}),
            ),
            gnp(
                "allow-zb",
                json!({"order": 5, "selector": "pod == 'a'", "ingress": [
            {"action": "Allow", "source": {"selector": "pod == 'b'", "namespaceSelector": "ns == 'z'"}}]}),
            ),
            np(
                "x",
                "only-y",
                json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
            ),
        ],
    );
    c.wait_programmed(
        &["gnp.deny-z", "gnp.allow-zb", "np.x.only-y"],
        &["np.x.egress-block"],
    );
    c.check("global order, Deny, Pass", |s, d, _, _| {
        if d.pod == "a" {
            if s.is("z", "b") {
                return true; // order 5 allows first
            }
            if s.ns == "z" {
                return false; // order 10 denies
            }
        }
        // Passed (or not selected): the NetworkPolicy decides in x.
        d.ns != "x" || s.ns == "y"
    });
    c.delete("globalnetworkpolicy", "default", &["deny-z", "allow-zb"]);
    c.delete("networkpolicy", "x", &["only-y"]);

    // Deleting every policy restores connectivity.
    c.wait_programmed(&[], &["gnp.", "np.x."]);
    c.check("all policies deleted", |_, _, _, _| true);
    eprintln!("conformance suite: {:?}", suite.elapsed());
}

#[test]
fn drift_is_repaired_and_restart_keeps_enforcing() {
    require_root();
    require_binary("nft", "nftables");
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path());
    apply(
        &c.db,
        &[np(
            "x",
            "deny-in",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        )],
    );
    c.wait_programmed(&["np.x.deny-in"], &[]);
    let xa = c.ips[c.index("x", "a")];
    let ya_ns = c.netns[c.index("y", "a")].name().to_string();
    let ya = c.ips[c.index("y", "a")];
    let from_y = |port: u16| {
        let ns = ya_ns.clone();
        std::thread::scope(|s| {
            s.spawn(|| {
                in_netns(&ns, || {
                    probe_here(xa, port, "TCP", Duration::from_millis(700))
                })
            })
            .join()
            .unwrap()
        })
    };
    assert!(!from_y(80), "default deny ingress is not enforced");
    // Someone flushes our endpoint chain: twill-node notices and repairs it.
    let out = c
        .node
        .ns
        .exec("nft", &["list", "map", "inet", "twill", "endpoint-ingress"]);
    assert!(out.status.success());
    c.node.ns.exec_ok(
        "nft",
        &["flush", "map", "inet", "twill", "endpoint-ingress"],
    );
    assert!(
        from_y(80),
        "flushing the dispatch map should have opened x/a (the test is wrong)"
    );
    assert!(
        wait_until(Duration::from_secs(20), || !from_y(80)),
        "drift was not repaired; log:\n{}",
        c.node.log()
    );
    // Another table is never touched.
    c.node.ns.exec_ok("nft", &["add", "table", "inet", "other"]);
    c.node
        .ns
        .exec_ok("nft", &["add", "chain", "inet", "other", "keep"]);
    // A restarted agent keeps enforcing (the table stays in the kernel).
    let mut node = c.node;
    if let Some(mut d) = node.daemon.take() {
        d.stop();
    }
    let pods_still_denied = {
        let ns = ya_ns.clone();
        std::thread::scope(|s| {
            s.spawn(|| {
                in_netns(&ns, || {
                    probe_here(xa, 80, "TCP", Duration::from_millis(700))
                })
            })
            .join()
            .unwrap()
        })
    };
    assert!(
        !pods_still_denied,
        "stopping twill-node removed policy enforcement"
    );
    node.launch();
    // A pod added after the restart is isolated the moment its ADD returns:
    // the very first packet after ADD is already subject to its policy.
    apply(
        &c.db,
        &[json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "d", "namespace": "x", "labels": {"pod": "d"}},
        "spec": {"nodeName": "pol", "containers": [{"name": "srv", "image": "none"}]}})],
    );
    let d_ns = Netns::new("twq");
    serve(d_ns.name());
    let out = node.cni(
        "ADD",
        "cid-x-d",
        &d_ns,
        "K8S_POD_NAMESPACE=x;K8S_POD_NAME=d",
    );
    assert!(out.success, "ADD x/d: {}\n{}", out.json, node.log());
    let xd: IpAddr = out.addresses()[0]
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let probe_from = |ns: &str, dst: IpAddr| {
        std::thread::scope(|s| {
            s.spawn(|| {
                in_netns(ns, || {
                    probe_here(dst, 80, "TCP", Duration::from_millis(700))
                })
            })
            .join()
            .unwrap()
        })
    };
    assert!(
        !probe_from(&ya_ns, xd),
        "the first packet to a new pod got through: ADD returned before its policy was programmed"
    );
    assert!(
        probe_from(d_ns.name(), ya),
        "x/d cannot reach y/a, though neither x/d's egress nor y/a's ingress is isolated"
    );
    assert!(
        node.ns
            .exec("nft", &["list", "chain", "inet", "other", "keep"])
            .status
            .success(),
        "another table was touched"
    );
}
