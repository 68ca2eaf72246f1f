//! Policy fails closed and says so, on a real twill-node with pods made
//! through the real twill-cni and real packets through nftables:
//!
//! * objects at the limits Kubernetes allows (253-byte names, a 63-byte
//!   namespace, 317-byte label keys, 63-byte values, selectors far over
//!   nft's 128-byte comments, a Log rule of a 253-byte GlobalNetworkPolicy)
//!   are enforced: allowed traffic passes, denied traffic is dropped;
//! * a policy the kernel refuses (provoked with twill-node's test-only
//!   `TWILL_TEST_UNPROGRAMMABLE_POLICY` hook) is named in readiness,
//!   NodeStatus and `twillctl node status`; the pods it selects drop; every
//!   other policy is still enforced; fixing it makes the node ready again;
//! * `twillctl policy explain` agrees with the kernel for a pod talking to
//!   itself and for an endpoint a CNI ADD without `K8S_POD_NAMESPACE` made
//!   (as podman does), which `policy show` lists.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use twill_tests::netns::spawn_in;
use twill_tests::{Netns, TestNode, bins, require_binary, require_root, wait_until};

fn twillctl(db: &Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut child = std::process::Command::new(bins::binary("twillctl"))
        .args(args)
        .env("TWILL_DATASTORE_PATH", db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("twillctl");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("twillctl")
}

fn ctl_ok(db: &Path, args: &[&str]) -> String {
    let o = twillctl(db, args, None);
    assert!(
        o.status.success(),
        "twillctl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
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

/// A TCP server on port 80 inside a pod namespace that answers "ok".
fn serve(pod: &Netns) {
    let l = spawn_in(pod.name(), || {
        TcpListener::bind(("0.0.0.0", 80)).expect("bind")
    })
    .join()
    .expect("bind thread");
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(b"ok");
        }
    });
}

/// Whether a TCP connection from inside `from` to `dst:80` gets its answer.
fn reaches(from: &Netns, dst: IpAddr, timeout: Duration) -> bool {
    spawn_in(from.name(), move || {
        let Ok(mut s) = TcpStream::connect_timeout(&SocketAddr::new(dst, 80), timeout) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(timeout));
        let mut b = [0u8; 2];
        s.read_exact(&mut b).is_ok()
    })
    .join()
    .unwrap_or(false)
}

/// The node, its store and its pods (each serving TCP 80).
struct Setup {
    node: TestNode,
    db: PathBuf,
    pods: Vec<(String, Netns, IpAddr)>,
}

impl Setup {
    /// A node on a fresh store holding `docs` (plus a pool), then one pod
    /// per (label, CNI_ARGS).
    fn start(
        dir: &Path,
        net: u8,
        docs: &[Value],
        pods: &[(&str, String)],
        env: &[(&str, &str)],
    ) -> Setup {
        require_root();
        require_binary("nft", "nftables");
        let db = dir.join("store.db");
        let mut all = vec![json!({"apiVersion": "twill.dev/v1", "kind": "IPPool",
            "metadata": {"name": "p"}, "spec": {"cidr": format!("10.{net}.0.0/24"), "blockSize": 26}})];
        all.extend_from_slice(docs);
        apply(&db, &all);
        let node = TestNode::start_with_env(
            "twf",
            "fc",
            &db,
            dir,
            &format!("10.96.{net}.1/32"),
            &["--status-interval", "1"],
            env,
        );
        let mut out = Vec::new();
        for (i, (label, args)) in pods.iter().enumerate() {
            let ns = Netns::new("twf");
            let r = node.cni("ADD", &format!("cid-{net}-{i}"), &ns, args);
            assert!(r.success, "ADD {label}: {}\n{}", r.json, node.log());
            let ip: IpAddr = r.addresses()[0]
                .split('/')
                .next()
                .and_then(|a| a.parse().ok())
                .expect("an address");
            serve(&ns);
            out.push((label.to_string(), ns, ip));
        }
        Setup {
            node,
            db,
            pods: out,
        }
    }

    fn pod(&self, label: &str) -> &(String, Netns, IpAddr) {
        self.pods
            .iter()
            .find(|p| p.0 == label)
            .unwrap_or_else(|| panic!("no pod {label}"))
    }

    fn table(&self) -> String {
        String::from_utf8_lossy(
            &self
                .node
                .ns
                .exec("nft", &["list", "table", "inet", "twill"])
                .stdout,
        )
        .into_owned()
    }

    /// Checks the kernel against `want` (from, to, allowed): allowed pairs
    /// may take a few tries while rules settle; denied ones are checked
    /// after every allowed one passed.
    fn expect(&self, case: &str, want: &[(&str, &str, bool)]) {
        for (from, to, allowed) in want.iter().filter(|w| w.2) {
            let (f, t) = (self.pod(from), self.pod(to));
            assert!(
                wait_until(Duration::from_secs(10), || reaches(
                    &f.1,
                    t.2,
                    Duration::from_millis(700)
                )),
                "[{case}] {from} -> {to} should pass and does not\n{}\n{}",
                self.table(),
                self.node.log()
            );
            let _ = allowed;
        }
        for (from, to, _) in want.iter().filter(|w| !w.2) {
            let (f, t) = (self.pod(from), self.pod(to));
            assert!(
                !reaches(&f.1, t.2, Duration::from_millis(700)),
                "[{case}] {from} -> {to} should be dropped and passes\n{}",
                self.table()
            );
        }
    }

    /// `twillctl policy explain` for the pair (by address), as allowed or not.
    fn explain(&self, from: &str, to: &str) -> (bool, Value) {
        let (f, t) = (self.pod(from), self.pod(to));
        let out = ctl_ok(
            &self.db,
            &[
                "policy",
                "explain",
                &f.2.to_string(),
                &t.2.to_string(),
                "--port",
                "80/TCP",
                "--json",
            ],
        );
        let v: Value = serde_json::from_str(&out).expect("explain json");
        let e = v[0].clone();
        (e["verdict"] == "Allow", e)
    }
}

fn label(len: usize, c: char) -> String {
    std::iter::repeat_n(c, len).collect()
}

/// A DNS subdomain of exactly `len` bytes made of 63-byte labels of `c`.
fn subdomain(len: usize, c: char) -> String {
    let mut s = String::new();
    while s.len() < len {
        if !s.is_empty() {
            s.push('.');
        }
        let room = len - s.len();
        let take = if room > 63 { 63.min(room - 2) } else { room };
        s.push_str(&label(take, c));
    }
    s
}

#[test]
fn policies_at_the_kubernetes_limits_are_enforced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = format!("n{}", label(62, 'q'));
    let key = format!("{}/{}", subdomain(253, 'k'), label(63, 'm'));
    let val = |c: char| label(63, c);
    let pod_name = |c: char| subdomain(253, c);
    let np_name = subdomain(253, 'p');
    let gnp_name = subdomain(253, 'g');
    // A selector whose text is far over 128 bytes: the long key, In over
    // several 63-byte values.
    let long_sel = json!({"matchLabels": {key.clone(): val('s')},
        "matchExpressions": [{"key": key.clone(), "operator": "In",
            "values": [val('s'), val('t'), val('u')]}]});
    let client_sel = json!({"matchExpressions": [{"key": key.clone(), "operator": "In",
        "values": [val('a'), val('x'), val('y'), val('z')]}]});
    let docs = vec![
        json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": {key.clone(): val('n')}}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod_name('s'), "namespace": ns,
            "labels": {key.clone(): val('s')}}, "spec": {"nodeName": "fc", "containers": [{"name": "c", "image": "none"}]}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod_name('a'), "namespace": ns,
            "labels": {key.clone(): val('a')}}, "spec": {"nodeName": "fc", "containers": [{"name": "c", "image": "none"}]}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod_name('d'), "namespace": ns,
            "labels": {key.clone(): val('d')}}, "spec": {"nodeName": "fc", "containers": [{"name": "c", "image": "none"}]}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": np_name, "namespace": ns},
            "spec": {"podSelector": long_sel, "ingress": [{"from": [{"podSelector": client_sel,
                "namespaceSelector": {"matchLabels": {key.clone(): val('n')}}}], "ports": [{"port": 80}]}]}}),
        // A global policy logging and passing everything to the
        // Kubernetes tier: its rules' comments and log prefixes are long.
        json!({"apiVersion": "twill.dev/v1", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": gnp_name},
            "spec": {"selector": format!("{key} in {{'{}', '{}', '{}'}}", val('s'), val('a'), val('d')),
                "ingress": [{"action": "Log"}, {"action": "Pass"}],
                "egress": [{"action": "Log"}, {"action": "Pass"}]}}),
    ];
    let args = |c: char| format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={}", pod_name(c));
    let s = Setup::start(
        dir.path(),
        73,
        &docs,
        &[
            ("server", args('s')),
            ("allowed", args('a')),
            ("denied", args('d')),
        ],
        &[],
    );
    let table = s.table();
    assert!(
        table.contains(&format!("pol-in-np.{ns}.")),
        "the NetworkPolicy's chain keeps a readable prefix:\n{table}"
    );
    s.expect(
        "limits",
        &[
            ("allowed", "server", true),
            ("server", "denied", true),
            ("denied", "server", false),
        ],
    );
    // The model agrees.
    assert!(s.explain("allowed", "server").0);
    assert!(!s.explain("denied", "server").0);
}

const BROKEN: &str = "np/x/broken";

/// twill-node's `/readyz` answer (status line, headers, body).
fn readyz(node: &TestNode) -> String {
    spawn_in(node.ns.name(), || {
        let mut s = TcpStream::connect("127.0.0.1:9099").expect("health port");
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .join()
    .expect("readyz thread")
}

fn ready_reason(s: &Setup) -> String {
    ctl_ok(&s.db, &["node", "status", "fc"])
}

#[test]
fn a_policy_the_kernel_refuses_fails_closed_and_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let np = |name: &str, target: &str, from: &str| {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"app": target}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": from}}}], "ports": [{"port": 80}]}]}})
    };
    let pod = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "x",
            "labels": {"app": name}}, "spec": {"nodeName": "fc", "containers": [{"name": "c", "image": "none"}]}})
    };
    let docs = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}),
        pod("a"),
        pod("b"),
        pod("c"),
        // Would let b reach a; the hook makes nft refuse it.
        np("broken", "a", "b"),
        // Lets b reach c, and nothing else.
        np("good", "c", "b"),
    ];
    let args = |p: &str| format!("K8S_POD_NAMESPACE=x;K8S_POD_NAME={p}");
    let s = Setup::start(
        dir.path(),
        74,
        &docs,
        &[("a", args("a")), ("b", args("b")), ("c", args("c"))],
        &[("TWILL_TEST_UNPROGRAMMABLE_POLICY", BROKEN)],
    );
    // Named: in NodeStatus as shown by twillctl, with nft's reason.
    let mut status = String::new();
    assert!(
        wait_until(Duration::from_secs(15), || {
            status = ready_reason(&s);
            status.contains("NOT ready") && status.contains(BROKEN)
        }),
        "node status does not name the refused policy:\n{status}\n{}",
        s.node.log()
    );
    assert!(status.contains("not ready: policy:"), "{status}");
    let ready = readyz(&s.node);
    assert!(
        ready.starts_with("HTTP/1.1 503")
            && ready.contains("[-]policy: ")
            && ready.contains(BROKEN),
        "/readyz: {ready}"
    );
    assert!(
        status.contains("zero or negative"),
        "nft's reason: {status}"
    );
    // Fail closed: a drops everything (even b, which the policy allows);
    // the good policy is still enforced; pods without policy are open.
    s.expect(
        "refused",
        &[
            ("b", "c", true),
            ("a", "b", true),
            ("c", "b", true),
            ("b", "a", false),
            ("c", "a", false),
            ("a", "c", false),
        ],
    );
    // Logged once, not once a second.
    std::thread::sleep(Duration::from_secs(3));
    let log = s.node.log();
    let times = log.matches("nft refused this policy").count();
    assert_eq!(times, 1, "logged {times} times:\n{log}");
    // Fixed (here: deleted): ready again, and a is open again.
    ctl_ok(&s.db, &["delete", "networkpolicy", "broken", "-n", "x"]);
    assert!(
        wait_until(Duration::from_secs(15), || {
            status = ready_reason(&s);
            status.contains(", ready,") && !status.contains(BROKEN)
        }),
        "the node does not recover:\n{status}\n{}",
        s.node.log()
    );
    s.expect(
        "fixed",
        &[("b", "a", true), ("c", "a", true), ("a", "c", false)],
    );
    let ready = readyz(&s.node);
    assert!(ready.contains("[+]policy ok"), "/readyz: {ready}");
}

#[test]
fn explain_agrees_with_the_kernel_for_self_traffic_and_endpoints_of_no_namespace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "x",
            "labels": {"app": name}}, "spec": {"nodeName": "fc", "containers": [{"name": "c", "image": "none"}]}})
    };
    let docs = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}),
        pod("a"),
        pod("b"),
        // Every pod in every namespace may reach a; isolates a.
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "from-all-pods", "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"app": "a"}},
                "ingress": [{"from": [{"namespaceSelector": {}}]}]}}),
        // Endpoints without labels (the podman one) take no ingress at all.
        json!({"apiVersion": "twill.dev/v1", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": "unlabelled-closed"},
            "spec": {"selector": "!has(app)", "types": ["Ingress"], "ingress": [{"action": "Deny"}]}}),
    ];
    let args = |p: &str| format!("K8S_POD_NAMESPACE=x;K8S_POD_NAME={p}");
    // "podman": CNI_ARGS without K8S_POD_NAMESPACE.
    let s = Setup::start(
        dir.path(),
        75,
        &docs,
        &[
            ("a", args("a")),
            ("b", args("b")),
            ("podman", "IgnoreUnknown=1".to_string()),
        ],
        &[],
    );
    let want = [
        ("a", "a", true),
        ("podman", "podman", true),
        ("b", "a", true),
        ("a", "b", true),
        ("podman", "b", true),
        ("podman", "a", false),
        ("a", "podman", false),
        ("b", "podman", false),
    ];
    for (from, to, allowed) in want {
        let (got, e) = s.explain(from, to);
        assert_eq!(got, allowed, "explain {from} -> {to}: {e:#}");
    }
    let (_, e) = s.explain("a", "a");
    assert_eq!(e["samePod"], "x/a", "{e:#}");
    s.expect("explain", &want);
    // `policy show` lists the endpoint of no namespace with the chains the
    // node has for it.
    let show = ctl_ok(&s.db, &["policy", "show", "fc"]);
    let table = s.table();
    let veths = s.node.veths();
    assert_eq!(veths.len(), 3, "{veths:?}");
    for v in &veths {
        let chain = format!("ep-in-{v}");
        assert!(show.contains(&chain), "policy show lacks {chain}:\n{show}");
        assert!(table.contains(&chain), "the kernel lacks {chain}:\n{table}");
    }
    assert!(show.contains("container cid-75-2"), "{show}");
}
