//! GlobalNetworkPolicy fields on real packets: the fields whose nft
//! translation is least obvious (protocol and its negation, ICMP type and
//! its negation, ipVersion, notNets, notSelector, a rule's
//! namespaceSelector, source ports, named and negated destination ports,
//! types, Log) are each applied to one pod through a real twill-node, and a
//! real connection, datagram or ping from another pod goes through with the
//! field and is dropped with the field changed. Every step waits for the
//! verdict to flip (with → allowed, without → dropped), so a rule that the
//! kernel never got, or got wrong, fails the test. The model- and
//! render-level test of every field is policy/tests/gnp_fields.rs.
//!
//! Cluster: one node; namespaces x and y (labelled ns=NAME); pods x/a (the
//! policy's target), x/b and y/b (labelled pod=NAME), dual stack, serving
//! TCP 80 and 81 (named serve-80 and serve-81) and UDP 80.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use twill_tests::{Netns, TestNode, bins, require_binary, require_root, wait_until};

const PODS: [(&str, &str); 3] = [("x", "a"), ("x", "b"), ("y", "b")];
const TIMEOUT: Duration = Duration::from_millis(700);

fn in_netns<R>(name: &str, f: impl FnOnce() -> R) -> R {
    let file = std::fs::File::open(format!("/run/netns/{name}")).expect("open netns");
    // SAFETY: setns on this thread (a test-owned helper thread) with a namespace file we opened.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
    f()
}

/// TCP 80 and 81 and UDP 80 echo servers in a pod (both families).
fn serve(pod_ns: &str) {
    let name = pod_ns.to_string();
    let (tcp, udp) = std::thread::spawn(move || {
        in_netns(&name, || {
            let tcp: Vec<TcpListener> = [80, 81]
                .iter()
                .map(|p| TcpListener::bind(("::", *p)).expect("bind tcp"))
                .collect();
            (tcp, UdpSocket::bind(("::", 80)).expect("bind udp"))
        })
    })
    .join()
    .expect("listener thread");
    for l in tcp {
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let _ = s.write_all(b"ok");
            }
        });
    }
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
}

#[derive(Clone, Copy, Debug)]
enum Probe {
    Tcp(u16),
    /// TCP to 80 from this source port.
    TcpFrom(u16),
    Udp(u16),
    Ping,
    Tcp6(u16),
}

struct Cluster {
    node: TestNode,
    db: std::path::PathBuf,
    netns: Vec<Netns>,
    v4: Vec<IpAddr>,
    v6: Vec<IpAddr>,
}

fn apply(db: &Path, docs: &[Value]) {
    let yaml: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
    bins::twillctl_apply(db, &yaml.join("\n---\n"));
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let db = dir.join("store.db");
        let mut docs = vec![
            json!({"apiVersion": "twill.dev/v1", "kind": "IPPool", "metadata": {"name": "v4"},
                "spec": {"cidr": "10.75.0.0/24", "blockSize": 26}}),
            json!({"apiVersion": "twill.dev/v1", "kind": "IPPool", "metadata": {"name": "v6"},
                "spec": {"cidr": "fd00:75::/120", "blockSize": 122}}),
        ];
        for ns in ["x", "y"] {
            docs.push(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"ns": ns}}}));
        }
        for (ns, pod) in PODS {
            docs.push(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": ns, "labels": {"pod": pod}},
                "spec": {"nodeName": "gf", "containers": [{"name": "srv", "image": "none", "ports": [
                    {"name": "serve-80", "containerPort": 80, "protocol": "TCP"},
                    {"name": "serve-81", "containerPort": 81, "protocol": "TCP"}]}]}}));
        }
        apply(&db, &docs);
        let node = TestNode::start("twg", "gf", &db, dir, "10.96.75.1/32", &[]);
        let netns: Vec<Netns> = PODS.iter().map(|_| Netns::new("twg")).collect();
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (i, (ns, pod)) in PODS.iter().enumerate() {
            let out = node.cni(
                "ADD",
                &format!("cid-{ns}-{pod}"),
                &netns[i],
                &format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod}"),
            );
            assert!(out.success, "ADD {ns}/{pod}: {}\n{}", out.json, node.log());
            let addrs: Vec<IpAddr> = out
                .addresses()
                .iter()
                .filter_map(|a| a.split('/').next()?.parse().ok())
                .collect();
            v4.push(*addrs.iter().find(|a| a.is_ipv4()).expect("IPv4 address"));
            v6.push(*addrs.iter().find(|a| a.is_ipv6()).expect("IPv6 address"));
            serve(netns[i].name());
        }
        Cluster {
            node,
            db,
            netns,
            v4,
            v6,
        }
    }

    fn ip(&self, ns: &str, pod: &str) -> String {
        let i = PODS
            .iter()
            .position(|p| *p == (ns, pod))
            .expect("a cluster pod");
        self.v4[i].to_string()
    }

    /// Does the probe from pod `from` (index) to x/a get through?
    fn probe(&self, from: usize, p: Probe) -> bool {
        let (v4, v6) = (self.v4[0], self.v6[0]);
        let ns = self.netns[from].name().to_string();
        if let Probe::Ping = p {
            return self.netns[from]
                .exec("ping", &["-c1", "-W1", "-q", &v4.to_string()])
                .status
                .success();
        }
        std::thread::spawn(move || {
            in_netns(&ns, || match p {
                Probe::Tcp(port) => tcp(SocketAddr::new(v4, port)),
                Probe::Tcp6(port) => tcp(SocketAddr::new(v6, port)),
                Probe::TcpFrom(sport) => tcp_from(sport, SocketAddr::new(v4, 80)),
                Probe::Udp(port) => {
                    let Ok(u) = UdpSocket::bind("0.0.0.0:0") else {
                        return false;
                    };
                    let _ = u.set_read_timeout(Some(TIMEOUT));
                    let mut b = [0u8; 16];
                    u.send_to(b"probe", SocketAddr::new(v4, port)).is_ok()
                        && u.recv_from(&mut b).is_ok()
                }
                Probe::Ping => false,
            })
        })
        .join()
        .expect("probe thread")
    }

    fn set_policy(&self, spec: &Value) {
        apply(
            &self.db,
            &[
                json!({"apiVersion": "twill.dev/v1", "kind": "GlobalNetworkPolicy",
                "metadata": {"name": "field"}, "spec": spec}),
            ],
        );
    }

    /// Applies `spec` and waits until the probe's outcome is `want`.
    fn expect(&self, what: &str, spec: &Value, from: usize, p: Probe, want: bool) {
        self.set_policy(spec);
        assert!(
            wait_until(Duration::from_secs(15), || self.probe(from, p) == want),
            "{what}: {p:?} from {:?} to x/a should be {}; policy {spec}\ntable:\n{}\nlog:\n{}",
            PODS[from],
            if want { "allowed" } else { "dropped" },
            self.node
                .ns
                .exec_ok("nft", &["list", "table", "inet", "twill"]),
            self.node.log()
        );
    }

    /// The field's check: with it the probe passes, with it changed it is dropped.
    fn field(&self, what: &str, with: Value, without: Value, from: usize, p: Probe) {
        self.expect(&format!("{what} (with)"), &with, from, p, true);
        self.expect(&format!("{what} (changed)"), &without, from, p, false);
    }
}

fn tcp(addr: SocketAddr) -> bool {
    match TcpStream::connect_timeout(&addr, TIMEOUT) {
        Ok(mut s) => {
            let _ = s.set_read_timeout(Some(TIMEOUT));
            let mut b = [0u8; 2];
            s.read_exact(&mut b).is_ok()
        }
        Err(_) => false,
    }
}

/// A TCP connection from a fixed source port (SO_REUSEADDR so a probe can
/// follow one in TIME_WAIT).
fn tcp_from(sport: u16, addr: SocketAddr) -> bool {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return false;
    };
    rt.block_on(async {
        let Ok(sock) = tokio::net::TcpSocket::new_v4() else {
            return false;
        };
        let _ = sock.set_reuseaddr(true);
        if sock.bind(SocketAddr::from(([0, 0, 0, 0], sport))).is_err() {
            return false;
        }
        let Ok(Ok(mut s)) = tokio::time::timeout(TIMEOUT, sock.connect(addr)).await else {
            return false;
        };
        let mut b = [0u8; 2];
        matches!(
            tokio::time::timeout(TIMEOUT, tokio::io::AsyncReadExt::read_exact(&mut s, &mut b))
                .await,
            Ok(Ok(_))
        )
    })
}

/// x/a's ingress: these rules, then Deny.
fn ingress(rules: Value) -> Value {
    let mut rules = rules.as_array().cloned().unwrap_or_default();
    rules.push(json!({"action": "Deny"}));
    json!({"selector": "pod == 'a'", "namespaceSelector": "ns == 'x'", "types": ["Ingress"], "ingress": rules})
}

#[test]
fn global_policy_fields_on_real_packets() {
    require_root();
    require_binary("nft", "nftables");
    require_binary("ping", "iputils-ping");
    let dir = tempfile::tempdir().expect("temp dir");
    let c = Cluster::start(dir.path());
    const YB: usize = 2;
    const XB: usize = 1;
    let allow = |extra: Value| {
        let mut r = json!({"action": "Allow"});
        if let (Some(r), Some(e)) = (r.as_object_mut(), extra.as_object()) {
            r.extend(e.clone());
        }
        ingress(json!([r]))
    };

    // No policy: everything reaches x/a; a Deny-only policy drops it.
    assert!(
        wait_until(Duration::from_secs(10), || c.probe(YB, Probe::Tcp(80))),
        "no policy, y/b -> x/a TCP 80; log:\n{}",
        c.node.log()
    );
    c.expect("deny", &ingress(json!([])), YB, Probe::Tcp(80), false);

    c.field(
        "protocol",
        allow(json!({"protocol": "UDP"})),
        allow(json!({"protocol": "TCP"})),
        YB,
        Probe::Udp(80),
    );
    c.field(
        "notProtocol",
        allow(json!({"notProtocol": "TCP"})),
        allow(json!({"notProtocol": "UDP"})),
        YB,
        Probe::Udp(80),
    );
    c.field(
        "icmp",
        allow(json!({"protocol": "ICMP", "icmp": {"type": 8}})),
        allow(json!({"protocol": "ICMP", "icmp": {"type": 13}})),
        YB,
        Probe::Ping,
    );
    c.field(
        "notIcmp",
        allow(json!({"protocol": "ICMP", "notIcmp": {"type": 13}})),
        allow(json!({"protocol": "ICMP", "notIcmp": {"type": 8}})),
        YB,
        Probe::Ping,
    );
    c.field(
        "ipVersion",
        allow(json!({"ipVersion": 6})),
        allow(json!({"ipVersion": 4})),
        YB,
        Probe::Tcp6(80),
    );
    c.field(
        "source.notNets",
        allow(json!({"source": {"notNets": [format!("{}/32", c.ip("x", "b"))]}})),
        allow(json!({"source": {"notNets": [format!("{}/32", c.ip("y", "b"))]}})),
        YB,
        Probe::Tcp(80),
    );
    c.field(
        "source.notSelector",
        allow(json!({"source": {"notSelector": "pod == 'c'"}})),
        allow(json!({"source": {"notSelector": "pod == 'b'"}})),
        YB,
        Probe::Tcp(80),
    );
    c.field(
        "source.namespaceSelector",
        allow(json!({"source": {"namespaceSelector": "ns == 'x'"}})),
        allow(json!({"source": {"namespaceSelector": "ns == 'y'"}})),
        XB,
        Probe::Tcp(80),
    );
    c.field(
        "source.ports",
        allow(json!({"protocol": "TCP", "source": {"ports": [40123]}})),
        allow(json!({"protocol": "TCP", "source": {"ports": [40124]}})),
        YB,
        Probe::TcpFrom(40123),
    );
    c.field(
        "destination.ports (named)",
        allow(json!({"protocol": "TCP", "destination": {"ports": ["serve-80"]}})),
        allow(json!({"protocol": "TCP", "destination": {"ports": ["serve-81"]}})),
        YB,
        Probe::Tcp(80),
    );
    c.field(
        "destination.notPorts",
        allow(json!({"protocol": "TCP", "destination": {"notPorts": [81]}})),
        allow(json!({"protocol": "TCP", "destination": {"notPorts": [80]}})),
        YB,
        Probe::Tcp(80),
    );
    c.field(
        "types",
        json!({"selector": "pod == 'a'", "namespaceSelector": "ns == 'x'", "types": ["Egress"]}),
        json!({"selector": "pod == 'a'", "namespaceSelector": "ns == 'x'", "types": ["Ingress"]}),
        YB,
        Probe::Tcp(80),
    );
    // Log goes on to the next rule (and is in the kernel's table); alone it
    // decides nothing, so the selected pod is denied.
    c.field(
        "action Log",
        ingress(json!([{"action": "Log"}, {"action": "Allow"}])),
        json!({"selector": "pod == 'a'", "namespaceSelector": "ns == 'x'", "ingress": [{"action": "Log"}]}),
        YB,
        Probe::Tcp(80),
    );
    c.set_policy(&ingress(json!([{"action": "Log"}, {"action": "Allow"}])));
    assert!(
        wait_until(Duration::from_secs(10), || c
            .node
            .ns
            .exec_ok("nft", &["list", "table", "inet", "twill"])
            .contains("log prefix \"twill gnp/field ingress[0] \"")),
        "{}",
        c.node
            .ns
            .exec_ok("nft", &["list", "table", "inet", "twill"])
    );
    for (i, (ns, pod)) in PODS.iter().enumerate() {
        let _ = c.node.cni(
            "DEL",
            &format!("cid-{ns}-{pod}"),
            &c.netns[i],
            &format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod}"),
        );
    }
}
