//! The Service semantics of twill-node's service proxy in the lab (issue
//! 17, item 2), each with the positive case in the same set-up as the
//! negative one: EndpointSlice conditions (a not-ready endpoint unused, the
//! serving terminating fallback, nothing left → refused at once), session
//! affinity ClientIP (one endpoint per client, its timeout in the kernel's
//! set), hairpin, internalTrafficPolicy Local, externalTrafficPolicy Local
//! (client address kept at the pod, a node without a local endpoint
//! drops, the health check node port counts), stale UDP conntrack entries
//! flushed when an endpoint goes, and an IPv6 cluster IP in a dual-stack
//! lab. EndpointSlices are written by the test (the lab has no endpoint
//! controller), pointing at the lab's pods.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde_json::Value;
use twill_tests::lab::Lab;
use twill_tests::netns::spawn_in;
use twill_tests::services::{
    NS, Servers, cluster_ip, node_addr, peer_server, sa, service, tcp, udp_server,
};
use twill_tests::{require_root, wait_until};

/// An EndpointSlice for `svc`: `(address, node, ready, serving, terminating)`.
fn slice(svc: &str, proto: &str, port: u16, eps: &[(&str, &str, bool, bool, bool)]) -> String {
    slice_of(svc, "IPv4", proto, port, eps)
}

fn slice_of(
    svc: &str,
    family: &str,
    proto: &str,
    port: u16,
    eps: &[(&str, &str, bool, bool, bool)],
) -> String {
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {svc}-1\n  namespace: {NS}\n  labels: {{kubernetes.io/service-name: {svc}}}\naddressType: {family}\nports:\n- {{name: p, port: {port}, protocol: {proto}}}\n"
    );
    y.push_str(if eps.is_empty() {
        "endpoints: []\n"
    } else {
        "endpoints:\n"
    });
    for (addr, node, ready, serving, term) in eps {
        y.push_str(&format!(
            "- addresses: ['{addr}']\n  nodeName: {node}\n  conditions: {{ready: {ready}, serving: {serving}, terminating: {term}}}\n"
        ));
    }
    y
}

/// A Service named `name` with one port `p` (`port` → `target`).
fn svc(name: &str, extra: &str, proto: &str, port: u16, target: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n{extra}  ports:\n  - {{name: p, port: {port}, targetPort: {target}, protocol: {proto}}}\n"
    )
}

/// Waits until `to` answers from `ns` with something `ok` accepts.
fn wait_answer(
    ns: &str,
    to: SocketAddr,
    ok: impl Fn(&Result<String, String>) -> bool,
) -> Result<String, String> {
    let mut last = Err("never tried".to_string());
    wait_until(Duration::from_secs(15), || {
        last = tcp(ns, to);
        ok(&last)
    });
    last
}

/// HTTP GET from `ns`: (status, body).
fn http_get(ns: &str, to: SocketAddr) -> Option<(u16, String)> {
    spawn_in(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_millis(800)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let status = out.split_whitespace().nth(1)?.parse().ok()?;
        let body = out.split_once("\r\n\r\n")?.1.to_string();
        Some((status, body))
    })
    .join()
    .ok()
    .flatten()
}

#[test]
fn endpoint_conditions_affinity_hairpin_and_traffic_policies() {
    require_root();
    let lab = Lab::up(&["--nodes", "2", "--pods-per-node", "1"]);
    assert!(lab.up_ok, "{}", lab.up_output);
    let (p1, p2) = ("n1-p1", "n2-p1");
    let (a, b) = (lab.pod_ip(p1), lab.pod_ip(p2));
    let (ns1, ns2) = (lab.ns(p1), lab.ns(p2));
    let (p1s, p2s) = (p1.to_string(), p2.to_string());

    // --- EndpointSlice conditions: both ready → both used.
    lab.apply(&svc("cond", "", "TCP", 80, 80));
    lab.apply(&slice(
        "cond",
        "TCP",
        80,
        &[(&a, "n1", true, true, false), (&b, "n2", true, true, false)],
    ));
    let cond = sa(&cluster_ip(&lab, "cond"), 80);
    let first = wait_answer(&ns1, cond, |r| r.is_ok());
    assert!(first.is_ok(), "the cluster IP never answered: {first:?}");
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        if let Ok(who) = tcp(&ns1, cond) {
            seen.insert(who);
        }
    }
    assert_eq!(
        seen,
        BTreeSet::from([p1s.clone(), p2s.clone()]),
        "two ready endpoints: both are picked"
    );
    // Not ready (and not serving): never used.
    lab.apply(&slice(
        "cond",
        "TCP",
        80,
        &[
            (&a, "n1", true, true, false),
            (&b, "n2", false, false, false),
        ],
    ));
    assert!(wait_until(Duration::from_secs(10), || {
        (0..8).all(|_| tcp(&ns1, cond).as_deref() == Ok(p1))
    }));
    for _ in 0..20 {
        assert_eq!(
            tcp(&ns1, cond).as_deref(),
            Ok(p1),
            "a not-ready endpoint got traffic"
        );
    }
    // No ready endpoint: the serving terminating one is the fallback.
    lab.apply(&slice(
        "cond",
        "TCP",
        80,
        &[
            (&a, "n1", false, true, true),
            (&b, "n2", false, false, false),
        ],
    ));
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..10 {
        assert_eq!(
            tcp(&ns1, cond).as_deref(),
            Ok(p1),
            "the serving terminating fallback"
        );
    }
    // Nothing serving: refused at once (a reset, no hang).
    lab.apply(&slice(
        "cond",
        "TCP",
        80,
        &[
            (&a, "n1", false, false, true),
            (&b, "n2", false, false, false),
        ],
    ));
    let r = wait_answer(&ns1, cond, |r| {
        r.as_ref().err().map(String::as_str) == Some("refused")
    });
    assert_eq!(
        r.as_ref().err().map(String::as_str),
        Some("refused"),
        "a Service without endpoints must refuse at once"
    );
    let t = Instant::now();
    assert_eq!(tcp(&ns1, cond).err().as_deref(), Some("refused"));
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "refusal took {:?}",
        t.elapsed()
    );

    // --- Session affinity ClientIP: one endpoint per client, with the timeout in the kernel.
    lab.apply(&svc(
        "sticky",
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 90}}\n",
        "TCP",
        80,
        80,
    ));
    lab.apply(&slice(
        "sticky",
        "TCP",
        80,
        &[(&a, "n1", true, true, false), (&b, "n2", true, true, false)],
    ));
    let sticky = sa(&cluster_ip(&lab, "sticky"), 80);
    let first = wait_answer(&ns1, sticky, |r| r.is_ok()).expect("sticky answers");
    for _ in 0..20 {
        assert_eq!(
            tcp(&ns1, sticky),
            Ok(first.clone()),
            "affinity broken for one client"
        );
    }
    let other = wait_answer(&ns2, sticky, |r| r.is_ok()).expect("sticky answers from n2");
    for _ in 0..10 {
        assert_eq!(
            tcp(&ns2, sticky),
            Ok(other.clone()),
            "affinity broken for the other client"
        );
    }
    let table = lab.sh("n1", &["nft", "list", "ruleset"]);
    assert!(
        table.contains("timeout 1m30s"),
        "the affinity timeout is not in the table:\n{table}"
    );

    // --- Hairpin: a pod reaching itself through its Service.
    lab.apply(&svc("self", "", "TCP", 80, 80));
    lab.apply(&slice("self", "TCP", 80, &[(&a, "n1", true, true, false)]));
    let me = sa(&cluster_ip(&lab, "self"), 80);
    let r = wait_answer(&ns1, me, |r| r.is_ok());
    assert_eq!(
        r.as_deref(),
        Ok(p1),
        "hairpin: the pod did not reach itself"
    );
    assert_eq!(tcp(&ns2, me).as_deref(), Ok(p1), "and others reach it too");

    // --- internalTrafficPolicy Local: only clients on the endpoint's node.
    lab.apply(&svc(
        "near",
        "  internalTrafficPolicy: Local\n",
        "TCP",
        80,
        80,
    ));
    lab.apply(&slice("near", "TCP", 80, &[(&a, "n1", true, true, false)]));
    let near = sa(&cluster_ip(&lab, "near"), 80);
    assert_eq!(wait_answer(&ns1, near, |r| r.is_ok()).as_deref(), Ok(p1));
    let r = wait_answer(&ns2, near, |r| {
        r.as_ref().err().map(String::as_str) == Some("refused")
    });
    assert_eq!(
        r.as_ref().err().map(String::as_str),
        Some("refused"),
        "a client on n2 must be refused by a Local Service with no endpoint on n2"
    );

    // --- externalTrafficPolicy Local on a LoadBalancer Service's node port.
    let stop = Arc::new(AtomicBool::new(false));
    let _servers = Servers(stop.clone());
    peer_server(&ns1, 8081, stop.clone());
    lab.apply(&svc(
        "ext",
        "  type: LoadBalancer\n  externalTrafficPolicy: Local\n",
        "TCP",
        81,
        8081,
    ));
    lab.apply(&slice("ext", "TCP", 8081, &[(&a, "n1", true, true, false)]));
    let s = service(&lab, "ext");
    let node_port = s["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("a node port") as u16;
    let hc_port = s["spec"]["healthCheckNodePort"]
        .as_u64()
        .unwrap_or_else(|| panic!("no healthCheckNodePort: {s}")) as u16;
    let (n1, n2) = (node_addr(&lab, "n1", "addr"), node_addr(&lab, "n2", "addr"));
    let tor = lab.ns("tor");
    let r = wait_answer(&tor, sa(&n1, node_port), |r| r.is_ok());
    assert_eq!(
        r.as_deref(),
        Ok("172.30.0.1"),
        "under the Local policy the pod sees the client's own address"
    );
    let r = wait_answer(&tor, sa(&n2, node_port), |r| {
        r.as_ref().err().map(String::as_str) == Some("timeout")
    });
    assert_eq!(
        r.as_ref().err().map(String::as_str),
        Some("timeout"),
        "n2 has no local endpoint: dropped"
    );
    // The health check node port says which node to use.
    let mut h1 = None;
    wait_until(Duration::from_secs(10), || {
        h1 = http_get(&tor, sa(&n1, hc_port));
        h1.as_ref().is_some_and(|(s, _)| *s == 200)
    });
    let (status, body) = h1.expect("health check port on n1 answers");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["localEndpoints"], 1);
    assert_eq!(v["service"]["name"], "ext");
    assert_eq!(v["service"]["namespace"], NS);
    let (status, body) = http_get(&tor, sa(&n2, hc_port)).expect("health check port on n2 answers");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"localEndpoints\":0"), "{body}");
    // The same Service under the Cluster policy: both nodes answer, masqueraded.
    lab.apply(&svc(
        "ext",
        "  type: LoadBalancer\n  externalTrafficPolicy: Cluster\n",
        "TCP",
        81,
        8081,
    ));
    let r = wait_answer(&tor, sa(&n2, node_port), |r| r.is_ok());
    assert_eq!(
        r.as_deref(),
        Ok(n2.as_str()),
        "Cluster policy through n2: masqueraded to n2"
    );
    assert!(
        wait_until(Duration::from_secs(10), || http_get(&tor, sa(&n1, hc_port))
            .is_none()),
        "the health check port still answers after the Local policy went"
    );

    // --- Stale UDP conntrack: a client that keeps sending moves when its endpoint goes.
    udp_server(&ns1, 5353, "one", stop.clone());
    udp_server(&ns2, 5353, "two", stop.clone());
    lab.apply(&svc("dns", "", "UDP", 53, 5353));
    lab.apply(&slice("dns", "UDP", 5353, &[(&a, "n1", true, true, false)]));
    let dns = sa(&cluster_ip(&lab, "dns"), 53);
    let (ask, asks) = std::sync::mpsc::channel::<bool>();
    let (tell, answers) = std::sync::mpsc::channel::<Option<String>>();
    // The client is node n2 itself (host network), so neither endpoint is a hairpin.
    let client_ns = lab.ns("n2");
    let _client = spawn_in(&client_ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("client socket");
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        while let Ok(true) = asks.recv() {
            let _ = s.send_to(b"who", dns);
            let mut b = [0u8; 64];
            let got = s
                .recv_from(&mut b)
                .ok()
                .map(|(n, _)| String::from_utf8_lossy(&b[..n]).into_owned());
            if tell.send(got).is_err() {
                return;
            }
        }
    });
    struct Quit(std::sync::mpsc::Sender<bool>);
    impl Drop for Quit {
        fn drop(&mut self) {
            let _ = self.0.send(false);
        }
    }
    let ask = Quit(ask);
    let who = |q: &Quit| -> Option<String> {
        q.0.send(true).ok()?;
        answers.recv().ok().flatten()
    };
    assert!(
        wait_until(Duration::from_secs(15), || who(&ask).as_deref()
            == Some("one")),
        "the UDP Service never answered"
    );
    lab.apply(&slice("dns", "UDP", 5353, &[(&b, "n2", true, true, false)]));
    let t = Instant::now();
    let mut last = None;
    while t.elapsed() < Duration::from_secs(5) {
        last = who(&ask);
        if last.as_deref() == Some("two") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        last.as_deref(),
        Some("two"),
        "the same client socket still reaches the gone endpoint (stale conntrack entry)"
    );
    for _ in 0..5 {
        assert_eq!(who(&ask).as_deref(), Some("two"));
    }
}

#[test]
fn ipv6_cluster_ip_in_a_dual_stack_lab() {
    require_root();
    let lab = Lab::up(&["--nodes", "2", "--pods-per-node", "1", "--dual-stack"]);
    assert!(lab.up_ok, "{}", lab.up_output);
    let out = lab.twillctl(&["datastore", "service-range", "10.96.0.0/12,fd00:96::/108"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.apply(&svc(
        "web6",
        "  ipFamilies: [IPv6]\n  ipFamilyPolicy: SingleStack\n",
        "TCP",
        80,
        80,
    ));
    let ip = cluster_ip(&lab, "web6");
    assert!(ip.starts_with("fd00:96::"), "{ip}");
    let target = lab.pod_ip6("n2-p1");
    let to = SocketAddr::new(ip.parse().expect("IPv6"), 80);
    let ns1 = lab.ns("n1-p1");
    // No endpoints yet: refused at once.
    let r = wait_answer(&ns1, to, |r| {
        r.as_ref().err().map(String::as_str) == Some("refused")
    });
    assert_eq!(
        r.as_ref().err().map(String::as_str),
        Some("refused"),
        "an IPv6 Service without endpoints"
    );
    lab.apply(&slice_of(
        "web6",
        "IPv6",
        "TCP",
        80,
        &[(&target, "n2", true, true, false)],
    ));
    let r = wait_answer(&ns1, to, |r| r.is_ok());
    assert_eq!(
        r.as_deref(),
        Ok("n2-p1"),
        "the IPv6 cluster IP did not reach its endpoint"
    );
}
