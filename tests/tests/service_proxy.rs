//! twill-node as the service proxy (issue 17), end to end in `twillctl
//! lab` with a BIRD ToR: one lab, two nodes, pods with responders that
//! answer with their name, Services and EndpointSlices applied with
//! twillctl (the lab has no EndpointSlice controller, so the test writes
//! the slices, as a controller would, with the named target port resolved).
//! Probes run on threads that enter the lab's namespaces (pod, node, ToR).

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use serde_json::Value;
use twill_tests::lab::Lab;
use twill_tests::{require_binary, require_root, wait_until};

const LB_POOL: &str = "10.251.7.0/28";
const EXTERNAL_IP: &str = "10.251.8.7";

/// What a probe got.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    /// The responder's answer (its pod's name).
    Answer(String),
    /// Refused (TCP reset or ICMP port unreachable), with the time it took.
    Refused(Duration),
    /// The kernel refused to send it (EPERM: a datagram from the node
    /// itself that the output hook rejected), with the time it took.
    SendRefused(Duration),
    /// Nothing, or another error.
    Nothing(String),
}

/// One TCP connection or UDP datagram to `ip:port` from the lab namespace
/// `ns`, on a thread that enters it.
fn probe_in(ns: &str, ip: &str, port: u16, udp: bool) -> Got {
    let path = format!("/run/netns/{ns}");
    let addr = SocketAddr::new(ip.parse::<IpAddr>().expect("an address"), port);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: a valid namespace fd; only this thread changes namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        let timeout = Duration::from_millis(1500);
        let start = Instant::now();
        let r: std::io::Result<String> = if udp {
            (|| {
                let u = UdpSocket::bind(("0.0.0.0", 0))?;
                // Connected, so an ICMP port unreachable comes back as an error.
                u.connect(addr)?;
                u.set_read_timeout(Some(timeout))?;
                u.send(b"probe\n")?;
                let mut b = [0u8; 512];
                let n = u.recv(&mut b)?;
                Ok(String::from_utf8_lossy(&b[..n]).trim().to_string())
            })()
        } else {
            (|| {
                let mut s = TcpStream::connect_timeout(&addr, timeout)?;
                s.set_read_timeout(Some(timeout))?;
                let mut b = Vec::new();
                (&mut s).take(512).read_to_end(&mut b)?;
                Ok(String::from_utf8_lossy(&b).trim().to_string())
            })()
        };
        match r {
            Ok(a) => Got::Answer(a),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                Got::Refused(start.elapsed())
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => Got::SendRefused(start.elapsed()),
            Err(e) => Got::Nothing(e.to_string()),
        }
    })
    .join()
    .expect("probe thread")
}

fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn apply(lab: &Lab, dir: &std::path::Path, name: &str, yaml: &str) {
    let f = dir.join(name);
    std::fs::write(&f, yaml).expect("write manifest");
    ok(
        &lab.twillctl(&["apply", "-f", f.to_str().expect("utf-8")]),
        &format!("apply {name}"),
    );
}

fn service(lab: &Lab, name: &str) -> Value {
    let out = lab.twillctl(&["get", "service", name, "-n", "shop", "-o", "json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// The answers of `tries` probes.
fn answers(lab: &Lab, from: &str, ip: &str, port: u16, udp: bool, tries: usize) -> Vec<Got> {
    (0..tries)
        .map(|_| probe_in(&lab.ns(from), ip, port, udp))
        .collect()
}

/// Waits until a probe from `from` answers with one of `want`, then checks
/// that `tries` more all do, and that more than one endpoint answered when
/// `spread`.
fn serves(lab: &Lab, from: &str, ip: &str, port: u16, udp: bool, want: &[&str], spread: bool) {
    let ns = lab.ns(from);
    let mut last = Got::Nothing("never probed".into());
    assert!(
        wait_until(Duration::from_secs(20), || {
            last = probe_in(&ns, ip, port, udp);
            matches!(&last, Got::Answer(a) if want.contains(&a.as_str()))
        }),
        "{from} -> {ip}:{port} {}: {last:?}, want one of {want:?}",
        if udp { "UDP" } else { "TCP" }
    );
    let got = answers(lab, from, ip, port, udp, 16);
    let names: std::collections::BTreeSet<String> = got
        .iter()
        .map(|g| match g {
            Got::Answer(a) if want.contains(&a.as_str()) => a.clone(),
            other => panic!("{from} -> {ip}:{port}: {other:?} among {got:?}"),
        })
        .collect();
    if spread {
        assert!(
            names.len() > 1,
            "{from} -> {ip}:{port}: only {names:?} in 16 tries"
        );
    }
}

#[test]
fn services_answer_from_pods_nodes_and_the_tor_and_policy_sees_the_endpoint() {
    require_root();
    require_binary("bird", "bird2");
    require_binary("birdc", "bird2");
    let lab = Lab::up(&["--nodes", "2", "--tor", "bird", "--pods-per-node", "0"]);
    assert!(lab.up_ok, "{}", lab.up_output);
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = lab.state()["plan"]["nodes"].clone();
    let nodes: Vec<(String, String)> = plan
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n["name"].as_str()?.into(), n["addr"].as_str()?.into())))
        .collect();
    assert_eq!(nodes.len(), 2, "{plan}");

    // Pods: a web backend on each node (8080/TCP, 5353/UDP), a client and
    // another pod to reach them from.
    for (pod, node, labels, ports) in [
        (
            "web1",
            "n1",
            "app=web",
            &["http=8080/TCP", "dns=5353/UDP"][..],
        ),
        (
            "web2",
            "n2",
            "app=web",
            &["http=8080/TCP", "dns=5353/UDP"][..],
        ),
        ("client", "n2", "app=client", &[][..]),
        ("other", "n1", "app=other", &[][..]),
    ] {
        let mut args = vec![
            "pod", "add", pod, "--node", node, "-n", "shop", "-l", labels,
        ];
        for p in ports {
            args.extend(["--port", p]);
        }
        ok(&lab.lab(&args), &format!("pod add {pod}"));
    }
    let web1 = lab.pod_ip("web1");
    let web2 = lab.pod_ip("web2");

    apply(
        &lab,
        dir.path(),
        "pool.yaml",
        &format!(
            "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: lb\nspec:\n  cidr: {LB_POOL}\n  allowedUses: [LoadBalancer]\n"
        ),
    );
    ok(
        &lab.twillctl(&[
            "patch",
            "bgpconfiguration",
            "default",
            "-p",
            &format!(
                r#"{{"spec":{{"serviceLoadBalancerIPs":[{{"cidr":"{LB_POOL}"}}],"serviceExternalIPs":[{{"cidr":"{EXTERNAL_IP}/32"}}]}}}}"#
            ),
        ]),
        "patch bgpconfiguration",
    );
    // A LoadBalancer Service with a named target port (http → 8080 in the
    // slice, as the EndpointSlice controller resolves it), UDP beside TCP,
    // an external IP; and a Service with no endpoints.
    apply(
        &lab,
        dir.path(),
        "web.yaml",
        &format!(
            "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  type: LoadBalancer
  selector: {{app: web}}
  externalIPs: [{EXTERNAL_IP}]
  ports:
  - {{name: http, port: 80, targetPort: http, protocol: TCP}}
  - {{name: dns, port: 53, targetPort: 5353, protocol: UDP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
- {{name: dns, port: 5353, protocol: UDP}}
endpoints:
- {{addresses: [{web1}], nodeName: n1, conditions: {{ready: true}}}}
- {{addresses: [{web2}], nodeName: n2, conditions: {{ready: true}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: empty, namespace: shop}}
spec:
  selector: {{app: nothing}}
  ports:
  - {{name: http, port: 80, protocol: TCP}}
  - {{name: dns, port: 53, protocol: UDP}}
"
        ),
    );
    let svc = service(&lab, "web");
    let cluster_ip = svc["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_else(|| panic!("no cluster IP: {svc}"))
        .to_string();
    let node_port = svc["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("no node port: {svc}"));
    let udp_node_port = svc["spec"]["ports"][1]["nodePort"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("no UDP node port: {svc}"));
    let mut lb = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            lb = service(&lab, "web")["status"]["loadBalancer"]["ingress"][0]["ip"]
                .as_str()
                .map(str::to_string);
            lb.is_some()
        }),
        "no LoadBalancer address: {}",
        service(&lab, "web")
    );
    let lb = lb.unwrap_or_default();
    let empty = service(&lab, "empty");
    let empty_ip = empty["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_else(|| panic!("no cluster IP: {empty}"))
        .to_string();
    let both = ["web1", "web2"];

    // ClusterIP from pods on every node, TCP (80 → the named port 8080)
    // and UDP (53 → 5353), spread over both endpoints.
    for from in ["client", "other"] {
        serves(&lab, from, &cluster_ip, 80, false, &both, true);
        serves(&lab, from, &cluster_ip, 53, true, &both, true);
    }
    // ... and from the nodes themselves.
    for (node, _) in &nodes {
        serves(&lab, node, &cluster_ip, 80, false, &both, true);
    }
    // NodePort on every node address, from the ToR and from a pod.
    for (_, addr) in &nodes {
        serves(&lab, "tor", addr, node_port, false, &both, true);
        serves(&lab, "tor", addr, udp_node_port, true, &both, false);
        serves(&lab, "client", addr, node_port, false, &both, false);
    }
    // The LoadBalancer address and the external IP from the ToR's network
    // (announced over BGP by both nodes).
    serves(&lab, "tor", &lb, 80, false, &both, true);
    serves(&lab, "tor", &lb, 53, true, &both, false);
    serves(&lab, "tor", EXTERNAL_IP, 80, false, &both, true);
    // Nothing else on those addresses: a port the Service does not have
    // is not translated (the ToR gets no answer from the Service's pods).
    assert!(
        !matches!(probe_in(&lab.ns("tor"), &lb, 8080, false), Got::Answer(_)),
        "{lb}:8080 answered"
    );

    // A Service without endpoints is refused at once — TCP reset and ICMP
    // port unreachable — from a pod and from a node, where the Service
    // with endpoints answered in the same set-up. (A datagram the node
    // itself sends is refused before it leaves: send() fails with EPERM.)
    for from in ["client", "n1"] {
        for (port, udp) in [(80, false), (53, true)] {
            match probe_in(&lab.ns(from), &empty_ip, port, udp) {
                Got::Refused(t) => assert!(
                    t < Duration::from_millis(500),
                    "{from} -> {empty_ip}:{port}: refused only after {t:?}"
                ),
                Got::SendRefused(t) if from == "n1" && udp => assert!(
                    t < Duration::from_millis(500),
                    "{from} -> {empty_ip}:{port}: refused only after {t:?}"
                ),
                other => panic!("{from} -> {empty_ip}:{port} (no endpoints): {other:?}"),
            }
        }
    }
    // Once it has an endpoint, it answers.
    apply(
        &lab,
        dir.path(),
        "empty-slice.yaml",
        &format!(
            "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: empty-1
  namespace: shop
  labels: {{kubernetes.io/service-name: empty}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
endpoints:
- {{addresses: [{web2}], nodeName: n2}}
"
        ),
    );
    serves(&lab, "client", &empty_ip, 80, false, &["web2"], false);

    // NetworkPolicy applies to the pod behind the Service, on the
    // translated destination: web admits only the client, and only on
    // 8080 — the endpoint's port, not the Service's 80.
    apply(
        &lab,
        dir.path(),
        "policy.yaml",
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-client, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 8080, protocol: TCP}]
",
    );
    let ns_other = lab.ns("other");
    assert!(
        wait_until(Duration::from_secs(20), || !matches!(
            probe_in(&ns_other, &cluster_ip, 80, false),
            Got::Answer(_)
        )),
        "other still reaches web through the Service under the policy"
    );
    for g in answers(&lab, "other", &cluster_ip, 80, false, 6) {
        assert!(!matches!(g, Got::Answer(_)), "other -> web: {g:?}");
    }
    // Directly too (the policy is the pods', not the Service's).
    assert!(!matches!(
        probe_in(&ns_other, &web1, 8080, false),
        Got::Answer(_)
    ));
    // The client still gets through the Service, to both endpoints.
    serves(&lab, "client", &cluster_ip, 80, false, &both, true);

    // Readiness says the table is in place, on every node.
    for (node, _) in &nodes {
        let status: Value = serde_json::from_str(&ok(
            &lab.twillctl(&["node", "status", node, "-o", "json"]),
            "node status",
        ))
        .unwrap_or_default();
        let cond = status["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "service-proxy")
            .cloned()
            .unwrap_or_default();
        assert_eq!(cond["ready"], true, "{node}: {status}");
        // And the agent's metrics say what the proxy did: passes that
        // changed the tables, Services rendered, ports implemented.
        let metrics = lab.sh(
            node,
            &[
                "bash",
                "-c",
                "exec 3<>/dev/tcp/127.0.0.1/9099; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3",
            ],
        );
        let value = |prefix: &str| -> f64 {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("{node}: no {prefix}:\n{metrics}"))
        };
        assert!(
            value(r#"twill_service_proxy_sync_duration_seconds_count{outcome="incremental"} "#)
                >= 1.0
        );
        assert!(value("twill_service_proxy_services_rendered_total ") >= 1.0);
        assert!(value("twill_service_proxy_ports ") >= 1.0);
    }
}
