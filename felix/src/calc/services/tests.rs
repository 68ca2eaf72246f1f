use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::*;

/// The table the flat-table tests write.
const T: &str = "twill-svc-0";

pub(crate) fn svc(yaml: &str) -> Service {
    serde_json::from_value(yaml_value(yaml)).expect("a Service")
}
pub(crate) fn slice(yaml: &str) -> EndpointSlice {
    serde_json::from_value(yaml_value(yaml)).expect("an EndpointSlice")
}
fn yaml_value(yaml: &str) -> serde_json::Value {
    let docs = twill_api::manifest::split_documents(yaml);
    twill_api::manifest::parse_document(&docs[0]).expect("YAML")
}

pub(crate) const WEB: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  clusterIPs: [10.96.0.10]
  externalIPs: [192.0.2.7]
  ports:
  - {name: http, port: 80, protocol: TCP, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP, nodePort: 30053}
status:
  loadBalancer:
    ingress: [{ip: 203.0.113.5}]
";

pub(crate) fn web_slice(eps: &str) -> EndpointSlice {
    slice(&format!(
        "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
- {{name: dns, port: 5353, protocol: UDP}}
endpoints:
{eps}
"
    ))
}

pub(crate) const TWO: &str = "
- {addresses: [10.244.1.5], nodeName: n1}
- {addresses: [10.244.2.5], nodeName: n2}
";

fn table(node: &str, svcs: &[Service], slices: &[EndpointSlice]) -> SvcTable {
    desired(node, svcs, slices).1
}

fn elem<'a>(t: &'a SvcTable, map: &str, key: &str) -> Option<&'a str> {
    t.maps.get(map)?.get(key).map(String::as_str)
}

#[test]
fn each_frontend_is_one_map_element_and_endpoints_are_picked_at_random() {
    let t = table("n1", &[svc(WEB)], &[web_slice(TWO)]);
    let svc_chain = "svc-shop/web/http/tcp4";
    assert_eq!(
        elem(&t, "svc4", "10.96.0.10 . tcp . 80"),
        Some(format!("goto {svc_chain}").as_str())
    );
    let ext = "goto ext-shop/web/http/tcp4";
    assert_eq!(elem(&t, "svc4", "203.0.113.5 . tcp . 80"), Some(ext));
    assert_eq!(elem(&t, "svc4", "192.0.2.7 . tcp . 80"), Some(ext));
    assert_eq!(elem(&t, "nodeports4", "tcp . 30080"), Some(ext));
    assert_eq!(
        elem(&t, "nodeports4", "udp . 30053"),
        Some("goto ext-shop/web/dns/udp4")
    );
    let rules = &t.chains[svc_chain].rules;
    assert_eq!(
        rules,
        &vec![
            "numgen random mod 2 0 goto ep-shop/web/http/tcp4/10.244.1.5.8080".to_string(),
            "goto ep-shop/web/http/tcp4/10.244.2.5.8080".into(),
        ]
    );
    assert_eq!(
        t.chains["ep-shop/web/http/tcp4/10.244.1.5.8080"].rules,
        vec![
            "ip saddr 10.244.1.5 jump mark-for-masquerade",
            "meta l4proto tcp dnat ip to 10.244.1.5:8080"
        ]
    );
    assert_eq!(
        t.chains["ep-shop/web/dns/udp4/10.244.1.5.5353"]
            .rules
            .last()
            .unwrap(),
        "meta l4proto udp dnat ip to 10.244.1.5:5353"
    );
    // External traffic under the Cluster policy is masqueraded; the
    // cluster IP's is not (the hairpin rule in the endpoint chain aside).
    assert_eq!(
        t.chains["ext-shop/web/http/tcp4"].rules,
        vec!["jump mark-for-masquerade", "goto svc-shop/web/http/tcp4"]
    );
    assert!(
        t.maps
            .values()
            .flat_map(|m| m.values())
            .all(|v| v != "goto refuse"),
        "nothing refused: {:?}",
        t.maps
    );
}

/// The pick rules (one per endpoint, `numgen random mod k 0`, the last a
/// plain goto) give every endpoint the same share.
#[test]
fn the_pick_rules_give_every_endpoint_the_same_share() {
    let five: String = (1..=5)
        .map(|i| format!("- {{addresses: [10.244.{i}.5], nodeName: n1}}\n"))
        .collect();
    let t = table("n1", &[svc(WEB)], &[web_slice(&five)]);
    let rules = &t.chains["svc-shop/web/http/tcp4"].rules;
    assert_eq!(rules.len(), 5, "{rules:?}");
    let mut left = 1.0f64;
    let mut shares = Vec::new();
    let mut targets = BTreeSet::new();
    for r in rules {
        let w: Vec<&str> = r.split_whitespace().collect();
        let (p, target) = match w.as_slice() {
            ["numgen", "random", "mod", k, "0", "goto", c] => (1.0 / k.parse::<f64>().unwrap(), c),
            ["goto", c] => (1.0, c),
            _ => panic!("unexpected pick rule {r}"),
        };
        shares.push(left * p);
        left *= 1.0 - p;
        targets.insert(target.to_string());
    }
    assert_eq!(targets.len(), 5, "each endpoint once: {rules:?}");
    assert!(left.abs() < 1e-12, "nothing falls through");
    for s in shares {
        assert!((s - 0.2).abs() < 1e-12, "{s}");
    }
}

#[test]
fn a_port_without_endpoints_is_refused_on_every_frontend() {
    let t = table("n1", &[svc(WEB)], &[]);
    for key in [
        "10.96.0.10 . tcp . 80",
        "203.0.113.5 . tcp . 80",
        "192.0.2.7 . udp . 53",
    ] {
        assert_eq!(elem(&t, "svc4", key), Some("goto refuse"), "{key}");
    }
    assert_eq!(elem(&t, "nodeports4", "tcp . 30080"), Some("goto refuse"));
    assert_eq!(
        t.chains["refuse"].rules,
        vec![
            "meta l4proto tcp reject with tcp reset",
            "reject with icmpx port-unreachable"
        ]
    );
    // No Service chains at all.
    assert!(
        t.chains
            .keys()
            .all(|c| !c.starts_with("svc-") && !c.starts_with("ep-"))
    );
}

#[test]
fn external_local_keeps_the_client_address_and_drops_without_a_local_endpoint() {
    let mut s = svc(WEB);
    s.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
    // n1 has a local endpoint: external traffic goes to it alone, unmasqueraded.
    let t = table("n1", std::slice::from_ref(&s), &[web_slice(TWO)]);
    let ext = &t.chains["ext-shop/web/http/tcp4"].rules;
    assert_eq!(
        ext,
        &vec![
            "fib saddr type local jump mark-for-masquerade".to_string(),
            "fib saddr type local goto svc-shop/web/http/tcp4".into(),
            "iifname \"tw*\" goto svc-shop/web/http/tcp4".into(),
            "goto local-shop/web/http/tcp4".into()
        ]
    );
    assert_eq!(
        t.chains["local-shop/web/http/tcp4"].rules,
        vec!["goto ep-shop/web/http/tcp4/10.244.1.5.8080"]
    );
    // The cluster IP still uses every endpoint.
    assert!(t.chains["svc-shop/web/http/tcp4"].rules[0].contains("mod 2 0 goto"));
    // n3 has none: dropped (not refused: another node may serve it), but
    // the node's own traffic still reaches the cluster set.
    let t = table("n3", &[s], &[web_slice(TWO)]);
    let ext = &t.chains["ext-shop/web/http/tcp4"].rules;
    assert_eq!(ext.last().map(String::as_str), Some("drop"));
    assert!(!t.chains.contains_key("local-shop/web/http/tcp4"));
}

#[test]
fn internal_local_sends_the_cluster_ip_to_local_endpoints_or_refuses() {
    let mut s = svc(WEB);
    s.spec.as_mut().unwrap().internal_traffic_policy = Some("Local".into());
    let t = table("n2", std::slice::from_ref(&s), &[web_slice(TWO)]);
    assert_eq!(
        elem(&t, "svc4", "10.96.0.10 . tcp . 80"),
        Some("goto local-shop/web/http/tcp4")
    );
    let t = table("n3", &[s], &[web_slice(TWO)]);
    assert_eq!(
        elem(&t, "svc4", "10.96.0.10 . tcp . 80"),
        Some("goto refuse")
    );
    // External traffic (Cluster policy) still goes everywhere.
    assert_eq!(
        elem(&t, "nodeports4", "tcp . 30080"),
        Some("goto ext-shop/web/http/tcp4")
    );
}

#[test]
fn session_affinity_remembers_the_client_per_endpoint_with_its_timeout() {
    let mut s = svc(WEB);
    let spec = s.spec.as_mut().unwrap();
    spec.session_affinity = Some("ClientIP".into());
    spec.session_affinity_config = Some(k8s_openapi::api::core::v1::SessionAffinityConfig {
        client_ip: Some(k8s_openapi::api::core::v1::ClientIPConfig {
            timeout_seconds: Some(30),
        }),
    });
    let t = table("n1", &[s], &[web_slice(TWO)]);
    let set = "aff-shop/web/http/tcp4/10.244.1.5.8080/30";
    assert_eq!(
        t.sets.get(set).map(String::as_str),
        Some("type ipv4_addr; flags dynamic,timeout; timeout 30s;")
    );
    let rules = &t.chains["svc-shop/web/http/tcp4"].rules;
    assert_eq!(
        rules[0],
        format!("ip saddr @{set} goto ep-shop/web/http/tcp4/10.244.1.5.8080")
    );
    assert!(
        rules[2].starts_with("numgen random mod 2 0 goto ep-"),
        "{rules:?}"
    );
    assert!(rules[3].starts_with("goto ep-"), "{rules:?}");
    assert!(
        t.chains["ep-shop/web/http/tcp4/10.244.1.5.8080"]
            .rules
            .contains(&format!("update @{set} {{ ip saddr }}"))
    );
}

#[test]
fn source_ranges_guard_the_load_balancer_address_only() {
    let mut s = svc(WEB);
    s.spec.as_mut().unwrap().load_balancer_source_ranges =
        Some(vec!["198.51.100.0/24".into(), "10.0.0.0/8".into()]);
    let t = table("n1", &[s], &[web_slice(TWO)]);
    assert_eq!(
        elem(&t, "svc4", "203.0.113.5 . tcp . 80"),
        Some("goto fw-shop/web/http/tcp4")
    );
    assert_eq!(
        t.chains["fw-shop/web/http/tcp4"].rules,
        vec![
            "ip saddr != { 198.51.100.0/24, 10.0.0.0/8 } drop",
            "goto ext-shop/web/http/tcp4"
        ]
    );
    // The external IP and node port are not the load balancer's.
    assert_eq!(
        elem(&t, "svc4", "192.0.2.7 . tcp . 80"),
        Some("goto ext-shop/web/http/tcp4")
    );
}

#[test]
fn ipv6_uses_its_own_maps_and_dnat_syntax() {
    let s = svc("
apiVersion: v1
kind: Service
metadata: {name: v6, namespace: default}
spec:
  type: NodePort
  clusterIPs: ['fd00:96::20']
  ports: [{port: 443, nodePort: 30443}]
");
    let sl = slice(
        "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: v6-1, namespace: default, labels: {kubernetes.io/service-name: v6}}
addressType: IPv6
ports: [{port: 8443}]
endpoints: [{addresses: ['fd00:10:244::5'], nodeName: n1}]
",
    );
    let t = table("n1", &[s], &[sl]);
    assert_eq!(
        elem(&t, "svc6", "fd00:96::20 . tcp . 443"),
        Some("goto svc-default/v6//tcp6")
    );
    assert_eq!(elem(&t, "nodeports6", "tcp . 443"), None);
    assert_eq!(
        elem(&t, "nodeports6", "tcp . 30443"),
        Some("goto ext-default/v6//tcp6")
    );
    let ep = "ep-default/v6//tcp6/fd00_10_244__5.8443";
    assert_eq!(
        t.chains[ep].rules,
        vec![
            "ip6 saddr fd00:10:244::5 jump mark-for-masquerade",
            "meta l4proto tcp dnat ip6 to [fd00:10:244::5]:8443"
        ]
    );
}

#[test]
fn names_fit_the_kernel_at_the_api_limits() {
    let ns = "n".repeat(63);
    let name = "s".repeat(63);
    let port = "p".repeat(300);
    let s = svc(&format!(
        "
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  clusterIPs: ['fd00:96::20']
  sessionAffinity: ClientIP
  ports: [{{name: {port}, port: 443}}, {{name: 'we ird', port: 444}}]
"
    ));
    let sl = slice(&format!(
        "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: x, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv6
ports: [{{name: {port}, port: 8443}}, {{name: 'we ird', port: 8444}}]
endpoints: [{{addresses: ['fd00:10:244:ffff:ffff:ffff:ffff:ffff']}}]
"
    ));
    let t = table("n1", &[s], &[sl]);
    let names: Vec<&String> = t.chains.keys().chain(t.sets.keys()).collect();
    assert!(names.len() > 14, "{names:?}");
    for n in names {
        assert!(n.len() <= 255, "{} bytes: {n}", n.len());
        assert!(n.chars().all(name_char), "{n}");
    }
    assert!(t.chains.keys().any(|n| n.contains("/we_ird/")));
}

#[test]
fn a_diff_touches_only_what_changed_and_a_no_change_is_empty() {
    let a = table("n1", &[svc(WEB)], &[web_slice(TWO)]);
    assert_eq!(a.diff_script(&a, T), "");
    // One endpoint goes: its chains are flushed and deleted, the picking
    // chains replaced, the map elements untouched.
    let b = table(
        "n1",
        &[svc(WEB)],
        &[web_slice("- {addresses: [10.244.1.5], nodeName: n1}")],
    );
    let d = b.diff_script(&a, T);
    assert!(
        d.contains("flush chain inet twill-svc-0 svc-shop/web/http/tcp4\n"),
        "{d}"
    );
    assert!(
        d.contains("delete chain inet twill-svc-0 ep-shop/web/http/tcp4/10.244.2.5.8080\n"),
        "{d}"
    );
    assert!(!d.contains("element"), "{d}");
    assert!(
        !d.contains("chain inet twill-svc-0 ep-shop/web/http/tcp4/10.244.1.5.8080"),
        "the kept endpoint's chain is left alone: {d}"
    );
    // The last endpoint goes: the frontends' elements now refuse.
    let c = table("n1", &[svc(WEB)], &[]);
    let d = c.diff_script(&b, T);
    assert!(d.contains("delete element inet twill-svc-0 svc4 {"), "{d}");
    assert!(
        d.contains("add element inet twill-svc-0 svc4 { 10.96.0.10 . tcp . 80 : goto refuse"),
        "{d}"
    );
    let del = d.find("delete element inet twill-svc-0 svc4").unwrap();
    let drop_chain = d.find("delete chain").unwrap();
    assert!(
        del < drop_chain,
        "elements go before the chains they name:\n{d}"
    );
}

#[test]
fn stale_udp_pairs_are_the_ones_no_longer_targeted() {
    let (old, _) = desired("n1", &[svc(WEB)], &[web_slice(TWO)]);
    let (new, _) = desired(
        "n1",
        &[svc(WEB)],
        &[web_slice("- {addresses: [10.244.1.5], nodeName: n1}")],
    );
    let gone = stale_udp(&old, &new);
    assert!(!gone.is_empty());
    assert!(
        gone.iter()
            .all(|g| g.endpoint.to_string() == "10.244.2.5" && g.port == 5353)
    );
    // Every UDP frontend: cluster IP, node port, LB and external address.
    assert_eq!(gone.len(), 4, "{gone:?}");
    assert!(stale_udp(&new, &new).is_empty());
}

#[test]
fn synthetic_services_render_one_element_per_frontend() {
    let t = synthetic::table(100, 2);
    assert_eq!(t.maps["svc4"].len(), 100);
    assert_eq!(t.maps["nodeports4"].len(), 100 / synthetic::NODE_PORT_EVERY);
    let full = synthetic::full_script(3, 1);
    assert!(full.starts_with("add table inet twill-svc\ndelete table inet twill-svc\n"));
    for i in 0..SHARDS {
        assert!(
            full.contains(&format!("add table inet twill-svc-{i}\n")),
            "{full}"
        );
    }
}

/// A network namespace this test made (`ip netns add`), deleted on drop.
pub(crate) struct TestNs(String);

impl TestNs {
    pub(crate) fn new() -> TestNs {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "twsvc-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let out = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip (install iproute2): {e}"));
        assert!(
            out.status.success(),
            "ip netns add {name} failed (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TestNs(name)
    }

    /// Runs `f` on a fresh thread inside the namespace (threads it starts
    /// inherit the namespace).
    pub(crate) fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            // SAFETY: a valid namespace fd; only this thread changes namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// The kernel takes every rendered script, and a diff applied on top of a
/// table leaves exactly what a full render of the new one lists.
#[test]
fn the_kernel_takes_full_and_diff_scripts_and_they_agree() {
    let mut aff = svc(WEB);
    let spec = aff.spec.as_mut().unwrap();
    spec.session_affinity = Some("ClientIP".into());
    spec.external_traffic_policy = Some("Local".into());
    spec.load_balancer_source_ranges = Some(vec!["198.51.100.0/24".into()]);
    let steps = [
        table("n1", &[svc(WEB)], &[web_slice(TWO)]),
        table("n1", &[aff.clone()], &[web_slice(TWO)]),
        table("n3", &[aff], &[web_slice(TWO)]),
        table("n1", &[svc(WEB)], &[]),
        synthetic::table(50, 3),
        SvcTable::empty(),
    ];
    let ns = TestNs::new();
    ns.run(move || {
        let mut nft = twill_nft::Nft::new().expect("nftables (install the nftables package)");
        let mut prev: Option<SvcTable> = None;
        for (i, t) in steps.iter().enumerate() {
            let script = match &prev {
                None => t.full_script(T),
                Some(p) => t.diff_script(p, T),
            };
            if !script.is_empty() {
                nft.apply(&script)
                    .unwrap_or_else(|e| panic!("step {i}: {e}\n{script}"));
            }
            let listed = nft
                .list_table_json("inet", T)
                .expect("list")
                .expect("the table exists");
            let seen = Fingerprint::from_json(&listed).expect("readable listing");
            assert_eq!(seen, t.fingerprint(), "step {i}");
            prev = Some(t.clone());
        }
        // And a full script replaces a drifted table.
        let t = &steps[0];
        nft.apply(&format!("flush chain inet {T} services\n"))
            .expect("flush");
        let listed = nft.list_table_json("inet", T).unwrap().unwrap();
        assert_ne!(
            Fingerprint::from_json(&listed).unwrap(),
            SvcTable::empty().fingerprint()
        );
        nft.apply(&t.full_script(T)).expect("full");
        let listed = nft.list_table_json("inet", T).unwrap().unwrap();
        assert_eq!(Fingerprint::from_json(&listed).unwrap(), t.fingerprint());
    });
}

/// The renderer renders only the Services that changed, and its tables'
/// diff is the same as the diff between two whole renders: one endpoint
/// moved touches one table; a Service gone deletes its objects.
#[test]
fn the_renderer_renders_what_changed_and_diffs_like_a_whole_render() {
    let (svcs, slices) = synthetic::services(200, 3);
    let whole = |svcs: &[Service], slices: &[EndpointSlice]| {
        Tables::from_model(&proxy_model("n1", svcs, slices))
    };
    let mut r = Renderer::new("n1");
    let a = r.render(&svcs, &slices);
    assert_eq!(r.rendered(), 200);
    assert!(whole(&svcs, &slices).diff_ops(&a).is_empty());
    let again = r.render(&svcs, &slices);
    assert_eq!(r.rendered(), 0, "nothing changed, nothing rendered");
    assert!(again.diff_ops(&a).is_empty());
    let mut moved = slices.clone();
    moved[77].endpoints[0].addresses = vec!["10.244.200.1".into()];
    // Same uid and resourceVersion: the same object, whatever it holds
    // (the API server's promise); the edit counts once the version moves.
    assert_eq!(r.render(&svcs, &moved).diff_ops(&a), vec![]);
    assert_eq!(r.rendered(), 0);
    moved[77].metadata.resource_version = Some("2".into());
    let b = r.render(&svcs, &moved);
    assert_eq!(r.rendered(), 1);
    let ops = b.diff_ops(&a);
    assert_eq!(ops, whole(&svcs, &moved).diff_ops(&whole(&svcs, &slices)));
    assert_eq!(ops.len(), 1, "one table: {ops:?}");
    let key = twill_api::service::service_key(&svcs[77]);
    assert_eq!(ops[0].0, table_name(shard_of(&key)));
    assert!(
        ops[0]
            .1
            .iter()
            .any(|op| matches!(op, Op::AddRule { rule, .. } if rule.contains("10.244.200.1"))),
        "{ops:?}"
    );
    // A Service and its slice gone: its chains and elements go.
    let c = r.render(&svcs[1..], &moved[1..]);
    assert_eq!(r.rendered(), 0);
    let ops = c.diff_ops(&b);
    assert_eq!(
        ops,
        whole(&svcs[1..], &moved[1..]).diff_ops(&whole(&svcs, &moved))
    );
    let text: String = ops.iter().map(|(t, o)| render_ops(t, o)).collect();
    assert!(text.contains("delete chain"), "{text}");
    assert!(
        text.contains(&format!(
            "delete element inet {} svc4",
            table_name(shard_of(&twill_api::service::service_key(&svcs[0])))
        )),
        "{text}"
    );
}

/// Two Services in one table claiming the same external address and port:
/// the first by name holds the element; when it goes, the other's verdict
/// takes its place (deleted and added in one diff).
#[test]
fn a_frontend_two_services_claim_passes_to_the_second_when_the_first_goes() {
    // Two names in the same table.
    let names: Vec<String> = (0..100).map(|i| format!("s{i}")).collect();
    let first = &names[0];
    let second = names
        .iter()
        .skip(1)
        .find(|n| shard_of(&format!("shop/{n}")) == shard_of(&format!("shop/{first}")))
        .expect("two names share a table");
    let mk = |name: &str, ip: &str| {
        svc(&format!(
            "
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec:
  clusterIPs: [{ip}]
  externalIPs: [192.0.2.7]
  ports: [{{name: http, port: 80, protocol: TCP}}]
"
        ))
    };
    let ep = |name: &str, addr: &str| {
        slice(&format!(
            "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: shop, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints: [{{addresses: [{addr}], nodeName: n1}}]
"
        ))
    };
    let both = [mk(first, "10.96.0.11"), mk(second, "10.96.0.12")];
    let slices = [ep(first, "10.244.1.1"), ep(second, "10.244.1.2")];
    let mut r = Renderer::new("n1");
    let a = r.render(&both, &slices);
    let table = table_name(shard_of(&format!("shop/{first}")));
    let flat = a.tables().find(|(n, _)| *n == table).expect("table").1;
    let verdict = &flat.maps["svc4"]["192.0.2.7 . tcp . 80"];
    assert!(verdict.contains(&format!("shop/{first}/")), "{verdict}");
    let b = r.render(&both[1..], &slices[1..]);
    let ops = b.diff_ops(&a);
    let text: String = ops.iter().map(|(t, o)| render_ops(t, o)).collect();
    let del = text
        .lines()
        .find(|l| l.starts_with(&format!("delete element inet {table} svc4 {{")))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(del.contains("192.0.2.7 . tcp . 80"), "{text}");
    assert!(
        text.contains(&format!(
            "add element inet {table} svc4 {{ 192.0.2.7 . tcp . 80 : goto ext-shop/{second}/"
        )),
        "{text}"
    );
}
