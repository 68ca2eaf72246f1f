//! Services and EndpointSlices on the embedded store, which does what the
//! API server does on a cluster: cluster IPs from the service range (a
//! store setting), node ports from 30000–32767, clashes refused naming the
//! other Service, all inside the write's transaction (several writers
//! racing never get one address twice). And the pure answer to which
//! service prefixes a node announces.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};
use twill_api::service::{ServiceAdvertisement, announced_prefixes};
use twill_api::store::embedded::EmbeddedStore;
use twill_api::{Kind, Store};

fn svc(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn open() -> (tempfile::TempDir, Store, EmbeddedStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let emb = EmbeddedStore::open(dir.path().join("s.db")).expect("open");
    (dir, Store::new(emb.clone()), emb)
}

#[tokio::test]
async fn cluster_ips_and_node_ports_are_allocated_and_clashes_refused_by_name() {
    let (_d, store, emb) = open();
    assert_eq!(
        emb.service_ranges().expect("ranges").to_string(),
        "10.96.0.0/12"
    );
    let a = store
        .create_value(
            Kind::Service,
            svc(
                "shop",
                "a",
                json!({"type": "NodePort", "ports": [{"port": 80}]}),
            ),
        )
        .await
        .expect("create");
    assert_eq!(a["spec"]["clusterIP"], "10.96.0.1");
    assert_eq!(a["spec"]["clusterIPs"], json!(["10.96.0.1"]));
    assert_eq!(a["spec"]["ipFamilies"], json!(["IPv4"]));
    assert_eq!(a["spec"]["ipFamilyPolicy"], "SingleStack");
    assert_eq!(a["spec"]["ports"][0]["nodePort"], 30000);
    assert_eq!(a["spec"]["ports"][0]["targetPort"], 80);
    assert_eq!(a["spec"]["ports"][0]["protocol"], "TCP");
    assert_eq!(a["spec"]["externalTrafficPolicy"], "Cluster");

    // Asking for a taken address or node port: refused, naming the holder; nothing stored.
    let e = store
        .create_value(
            Kind::Service,
            svc(
                "web",
                "b",
                json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}),
            ),
        )
        .await
        .expect_err("taken cluster IP");
    assert!(
        e.to_string()
            .contains("already allocated to Service shop/a"),
        "{e}"
    );
    let e = store
        .create_value(
            Kind::Service,
            svc(
                "web",
                "b",
                json!({"type": "NodePort", "ports": [{"port": 81, "nodePort": 30000}]}),
            ),
        )
        .await
        .expect_err("taken node port");
    assert!(
        e.to_string().contains("nodePort") && e.to_string().contains("Service shop/a"),
        "{e}"
    );
    let e = store
        .create_value(
            Kind::Service,
            svc(
                "web",
                "b",
                json!({"clusterIP": "10.1.0.1", "ports": [{"port": 80}]}),
            ),
        )
        .await
        .expect_err("outside the range");
    assert!(
        e.to_string()
            .contains("not in the service range 10.96.0.0/12"),
        "{e}"
    );
    let e = store
        .create_value(
            Kind::Service,
            svc(
                "web",
                "b",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 8080}]}),
            ),
        )
        .await
        .expect_err("node port outside the range");
    assert!(e.to_string().contains("30000-32767"), "{e}");
    assert!(
        store
            .get::<Service>(Some("web"), "b")
            .await
            .expect("get")
            .is_none()
    );

    // The positive path in the same store: free ones are taken.
    let b = store
        .create_value(
            Kind::Service,
            svc("web", "b", json!({"clusterIP": "10.96.0.77", "type": "LoadBalancer",
                "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 443, "nodePort": 30001}]})),
        )
        .await
        .expect("create");
    assert_eq!(b["spec"]["clusterIP"], "10.96.0.77");
    // The port given explicitly is not handed to the port before it.
    assert_eq!(b["spec"]["ports"][0]["nodePort"], 30002);
    assert_eq!(b["spec"]["ports"][1]["nodePort"], 30001);

    // An update keeps what was allocated; the cluster IP cannot change.
    let mut again = b.clone();
    again["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("clusterIP");
    again["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("clusterIPs");
    again["spec"]["ports"][0]
        .as_object_mut()
        .expect("port")
        .remove("nodePort");
    let kept = store
        .update_value(Kind::Service, again)
        .await
        .expect("update");
    assert_eq!(kept["spec"]["clusterIP"], "10.96.0.77");
    assert_eq!(kept["spec"]["ports"][0]["nodePort"], 30002);
    let mut moved = kept.clone();
    moved["spec"]["clusterIP"] = json!("10.96.0.78");
    moved["spec"]["clusterIPs"] = json!(["10.96.0.78"]);
    let e = store
        .update_value(Kind::Service, moved)
        .await
        .expect_err("immutable");
    assert!(e.to_string().contains("cannot change"), "{e}");
    // Back to ClusterIP: node ports go (as the API server drops them).
    let mut plain = kept.clone();
    plain["spec"]["type"] = json!("ClusterIP");
    let plain = store
        .update_value(Kind::Service, plain)
        .await
        .expect("update");
    assert!(
        plain["spec"]["ports"][0].get("nodePort").is_none(),
        "{plain}"
    );

    // Headless and ExternalName get no address.
    let h = store
        .create_value(
            Kind::Service,
            svc(
                "web",
                "h",
                json!({"clusterIP": "None", "ports": [{"port": 80}]}),
            ),
        )
        .await
        .expect("headless");
    assert_eq!(h["spec"]["clusterIPs"], json!(["None"]));
    let x = store
        .create_value(
            Kind::Service,
            svc(
                "web",
                "x",
                json!({"type": "ExternalName", "externalName": "example.com"}),
            ),
        )
        .await
        .expect("external name");
    assert!(x["spec"].get("clusterIP").is_none(), "{x}");
}

#[tokio::test]
async fn the_service_range_is_a_store_setting_and_dual_stack_needs_both_families() {
    let (_d, store, emb) = open();
    let e = store
        .create_value(
            Kind::Service,
            svc(
                "d",
                "dual",
                json!({"ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 80}]}),
            ),
        )
        .await
        .expect_err("no IPv6 range");
    assert!(e.to_string().contains("no IPv6 range"), "{e}");
    emb.set_service_ranges(&"10.100.0.0/29,fd00:96::/120".parse().expect("ranges"))
        .expect("set");
    let d = store
        .create_value(
            Kind::Service,
            svc(
                "d",
                "dual",
                json!({"ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 80}]}),
            ),
        )
        .await
        .expect("dual");
    assert_eq!(d["spec"]["clusterIPs"], json!(["10.100.0.1", "fd00:96::1"]));
    assert_eq!(d["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
    // A /29 has 6 usable addresses: one is taken, five more fit, then it is full.
    for i in 0..5 {
        store
            .create_value(
                Kind::Service,
                svc("d", &format!("s{i}"), json!({"ports": [{"port": 80}]})),
            )
            .await
            .expect("fits");
    }
    let e = store
        .create_value(
            Kind::Service,
            svc("d", "full", json!({"ports": [{"port": 80}]})),
        )
        .await
        .expect_err("full");
    assert!(e.to_string().contains("10.100.0.0/29 is full"), "{e}");
    for bad in [
        "",
        "10.0.0.0/30",
        "10.0.0.0/16,10.1.0.0/16",
        "fd00::/64",
        "10.0.0.1/16",
    ] {
        assert!(
            bad.parse::<twill_api::service::ServiceRanges>().is_err(),
            "{bad:?} accepted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_never_get_one_cluster_ip_or_node_port_twice() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("s.db");
    let mut tasks = Vec::new();
    for w in 0..4 {
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let store = Store::new(EmbeddedStore::open(&path).expect("open"));
            for i in 0..15 {
                store
                    .create_value(
                        Kind::Service,
                        svc(
                            "race",
                            &format!("w{w}-{i}"),
                            json!({"type": "NodePort", "ports": [{"port": 80}]}),
                        ),
                    )
                    .await
                    .expect("create");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let store = Store::new(EmbeddedStore::open(&path).expect("open"));
    let all = store.list::<Service>().await.expect("list").items;
    assert_eq!(all.len(), 60);
    let ips: BTreeSet<String> = all
        .iter()
        .filter_map(|s| s.spec.as_ref()?.cluster_ip.clone())
        .collect();
    let ports: BTreeSet<i32> = all
        .iter()
        .filter_map(|s| s.spec.as_ref()?.ports.as_ref()?[0].node_port)
        .collect();
    assert_eq!((ips.len(), ports.len()), (60, 60));
}

#[tokio::test]
async fn names_at_the_kubernetes_limits() {
    let (_d, store, _) = open();
    let ns63 = "n".repeat(63);
    // A Service name is a DNS label: 63 characters at most.
    let name63 = format!("a{}", "b".repeat(62));
    store
        .create_value(
            Kind::Service,
            svc(&ns63, &name63, json!({"ports": [{"port": 80}]})),
        )
        .await
        .expect("63/63");
    let e = store
        .create_value(
            Kind::Service,
            svc(
                &ns63,
                &format!("{name63}c"),
                json!({"ports": [{"port": 80}]}),
            ),
        )
        .await
        .expect_err("64-character Service name");
    assert!(e.to_string().contains("at most 63"), "{e}");
    let e = store
        .create_value(
            Kind::Service,
            svc(&format!("{ns63}x"), "ok", json!({"ports": [{"port": 80}]})),
        )
        .await
        .expect_err("64-character namespace");
    assert!(e.to_string().contains("metadata.namespace"), "{e}");
    // An EndpointSlice name is a DNS subdomain: 253.
    let slice = |name: &str| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": ns63,
                "labels": {"kubernetes.io/service-name": name63}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.5"], "nodeName": "x".repeat(253),
                "conditions": {"ready": true}}],
            "ports": [{"port": 8080, "protocol": "TCP"}]})
    };
    let name253 = format!("{}.{}", "a".repeat(126), "b".repeat(126));
    store
        .create_value(Kind::EndpointSlice, slice(&name253))
        .await
        .expect("253");
    let e = store
        .create_value(Kind::EndpointSlice, slice(&format!("{name253}c")))
        .await
        .expect_err("254");
    assert!(e.to_string().contains("253"), "{e}");
    let mut bad = slice("bad");
    bad["endpoints"][0]["addresses"] = json!(["fd00::1"]);
    let e = store
        .create_value(Kind::EndpointSlice, bad)
        .await
        .expect_err("v6 in a v4 slice");
    assert!(e.to_string().contains("not an IPv4 address"), "{e}");
    let got = store.list::<EndpointSlice>().await.expect("list").items;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].endpoints[0].node_name.as_deref(),
        Some("x".repeat(253).as_str())
    );
}

fn typed_svc(name: &str, spec: Value, lb: &[&str]) -> Service {
    let ingress: Vec<Value> = lb
        .iter()
        .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
        .collect();
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "shop"},
        "spec": spec, "status": {"loadBalancer": {"ingress": ingress}}}))
    .expect("service")
}

fn typed_slice(svc: &str, eps: Value) -> EndpointSlice {
    serde_json::from_value(
        json!({"metadata": {"name": format!("{svc}-x"), "namespace": "shop",
        "labels": {"kubernetes.io/service-name": svc}}, "addressType": "IPv4", "endpoints": eps}),
    )
    .expect("slice")
}

#[test]
fn which_service_prefixes_a_node_announces() {
    let adv = ServiceAdvertisement {
        cluster_ips: vec!["10.96.0.0/12".parse().expect("cidr")],
        external_ips: vec!["203.0.113.0/24".parse().expect("cidr")],
        load_balancer_ips: vec!["192.0.2.0/24".parse().expect("cidr")],
    };
    let services = vec![
        typed_svc(
            "cluster",
            json!({"type": "LoadBalancer", "clusterIPs": ["10.96.0.10"],
                "externalTrafficPolicy": "Cluster", "externalIPs": ["203.0.113.5", "198.51.100.1"]}),
            &["192.0.2.1"],
        ),
        typed_svc(
            "local",
            json!({"type": "LoadBalancer", "clusterIPs": ["10.96.0.11"],
                "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local"}),
            &["192.0.2.2", "198.51.100.2"],
        ),
    ];
    let slices = vec![typed_slice(
        "local",
        json!([
            {"addresses": ["10.244.0.1"], "nodeName": "a", "conditions": {"ready": true}},
            {"addresses": ["10.244.0.2"], "nodeName": "b", "conditions": {"ready": false, "serving": true, "terminating": true}},
            {"addresses": ["10.244.0.3"], "nodeName": "c", "conditions": {"ready": false, "serving": false, "terminating": true}}
        ]),
    )];
    let on = |node: &str| -> Vec<String> {
        announced_prefixes(node, &services, &slices, &adv)
            .keys()
            .map(ToString::to_string)
            .collect()
    };
    // Ready local endpoint: everything, Local addresses as host routes.
    assert_eq!(
        on("a"),
        [
            "10.96.0.0/12",
            "10.96.0.11/32",
            "192.0.2.1/32",
            "192.0.2.2/32",
            "203.0.113.5/32"
        ]
    );
    // Only a serving terminating endpoint: still announces (nothing ready here).
    assert_eq!(on("b"), on("a"));
    // Not serving, or no endpoint: only what every node announces.
    assert_eq!(on("c"), ["10.96.0.0/12", "192.0.2.1/32", "203.0.113.5/32"]);
    assert_eq!(on("d"), on("c"));
    // Addresses outside the configured CIDRs are never announced; nothing configured, nothing announced.
    let all: Vec<String> = on("a");
    assert!(!all.iter().any(|p| p.starts_with("198.51.100.")), "{all:?}");
    assert!(
        announced_prefixes("a", &services, &slices, &ServiceAdvertisement::default()).is_empty()
    );
    // Who asked for each prefix is kept for status and debugging.
    let why = announced_prefixes("a", &services, &slices, &adv);
    let lb2: IpAddr = "192.0.2.2".parse().expect("addr");
    assert_eq!(
        why[&ipnetwork::IpNetwork::new(lb2, 32).expect("net")],
        BTreeSet::from(["shop/local".to_string()])
    );
}

/// Kubernetes lets one Service use a node port once per protocol: DNS on
/// `53/TCP` and `53/UDP` gets one node port for both (given or allocated);
/// the same node port twice for one protocol, or held by another Service,
/// is refused.
#[tokio::test]
async fn one_node_port_serves_tcp_and_udp_of_one_service() {
    let (_d, store, _emb) = open();
    let dns = store
        .create_value(
            Kind::Service,
            svc(
                "kube-system",
                "dns",
                json!({"type": "NodePort", "ports": [
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                {"name": "dns-udp", "port": 53, "protocol": "UDP"},
                {"name": "metrics", "port": 9153, "protocol": "TCP"}]}),
            ),
        )
        .await
        .expect("create");
    let ports = &dns["spec"]["ports"];
    assert_eq!(ports[0]["nodePort"], 30000, "{dns}");
    assert_eq!(ports[1]["nodePort"], 30000, "{dns}");
    assert_eq!(ports[2]["nodePort"], 30001, "{dns}");
    let given = store
        .create_value(
            Kind::Service,
            svc(
                "kube-system",
                "dns2",
                json!({"type": "NodePort", "ports": [
                {"name": "t", "port": 53, "protocol": "TCP", "nodePort": 31053},
                {"name": "u", "port": 53, "protocol": "UDP", "nodePort": 31053}]}),
            ),
        )
        .await
        .expect("one node port for TCP and UDP, given");
    assert_eq!(given["spec"]["ports"][1]["nodePort"], 31053);
    let e = store
        .create_value(
            Kind::Service,
            svc(
                "kube-system",
                "dns3",
                json!({"type": "NodePort", "ports": [
                {"name": "a", "port": 53, "protocol": "TCP", "nodePort": 31054},
                {"name": "b", "port": 54, "protocol": "TCP", "nodePort": 31054}]}),
            ),
        )
        .await
        .expect_err("one node port twice for TCP");
    assert!(
        e.to_string().contains("used twice for TCP in this Service"),
        "{e}"
    );
    // Another Service cannot take it for the other protocol either (one
    // node port belongs to one Service, as on a cluster).
    let e = store
        .create_value(
            Kind::Service,
            svc(
                "kube-system",
                "dns4",
                json!({"type": "NodePort", "ports": [
                {"name": "u", "port": 53, "protocol": "UDP", "nodePort": 30000}]}),
            ),
        )
        .await
        .expect_err("held by dns");
    assert!(
        e.to_string()
            .contains("already allocated to Service kube-system/dns"),
        "{e}"
    );
}

/// `twill.dev/bgp-communities` is checked when the Service is written: a
/// value that is no community is refused naming the Service, the
/// annotation and the entry; valid ones (standard, large, well-known) are
/// stored.
#[tokio::test]
async fn bgp_community_annotations_are_checked() {
    let (_d, store, _emb) = open();
    let mut bad = svc(
        "shop",
        "web",
        json!({"type": "LoadBalancer", "ports": [{"port": 80}]}),
    );
    bad["metadata"]["annotations"] = json!({"twill.dev/bgp-communities": "65000:100, 65536:1"});
    let e = store
        .create_value(Kind::Service, bad.clone())
        .await
        .expect_err("not a community");
    let msg = e.to_string();
    assert!(
        msg.contains("web") && msg.contains("twill.dev/bgp-communities") && msg.contains("65536:1"),
        "{msg}"
    );
    bad["metadata"]["annotations"] =
        json!({"twill.dev/bgp-communities": "65000:100, 65000:1:2,no-export"});
    let ok = store
        .create_value(Kind::Service, bad)
        .await
        .expect("valid communities");
    let svc: Service = serde_json::from_value(ok).expect("a Service");
    assert_eq!(
        twill_api::service::bgp_communities(&svc)
            .expect("valid")
            .len(),
        3
    );
}

/// An IPPool's `bgpCommunities`: each entry checked (refusal names the
/// pool and the entry), and only on a LoadBalancer pool.
#[test]
fn pool_communities_are_checked_and_only_for_load_balancer_pools() {
    use twill_api::resources::{AllowedUse, IPPool, IPPoolSpec};
    let mut p = IPPool::new(
        "lb",
        IPPoolSpec {
            cidr: "192.0.2.0/28".into(),
            allowed_uses: vec![AllowedUse::LoadBalancer],
            bgp_communities: vec!["65000:100".into(), "65000:1:2".into(), "no-export".into()],
            ..Default::default()
        },
    );
    p.validate().expect("valid communities");
    p.spec.bgp_communities.push("65000:x".into());
    let e = p.validate().expect_err("not a community").to_string();
    assert!(
        e.contains("IPPool") && e.contains("lb") && e.contains("spec.bgpCommunities[3]"),
        "{e}"
    );
    p.spec.bgp_communities.pop();
    p.spec.allowed_uses = vec![AllowedUse::Workload];
    let e = p.validate().expect_err("pod pool").to_string();
    assert!(e.contains("spec.bgpCommunities"), "{e}");
}

#[tokio::test]
async fn health_check_node_ports_are_allocated_for_local_load_balancers_only() {
    let (_d, store, _emb) = open();
    let local = |name: &str, extra: Value| {
        let mut spec = json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "ports": [{"port": 80}]});
        if let (Some(s), Some(x)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(x.clone());
        }
        svc("shop", name, spec)
    };
    let a = store
        .create_value(Kind::Service, local("a", json!({})))
        .await
        .expect("create");
    // The node port comes first, then the health check port, both unique.
    assert_eq!(a["spec"]["ports"][0]["nodePort"], 30000);
    assert_eq!(a["spec"]["healthCheckNodePort"], 30001, "{a}");

    // A Cluster-policy LoadBalancer gets none, even when it asks.
    let c = store
        .create_value(
            Kind::Service,
            svc(
                "shop",
                "c",
                json!({"type": "LoadBalancer", "ports": [{"port": 80}], "healthCheckNodePort": 31500}),
            ),
        )
        .await
        .expect("create");
    assert!(c["spec"].get("healthCheckNodePort").is_none(), "{c}");
    assert_eq!(c["spec"]["ports"][0]["nodePort"], 30002, "{c}");

    // Asking for another Service's health check port: refused, naming it.
    let e = store
        .create_value(
            Kind::Service,
            local("b", json!({"healthCheckNodePort": 30001})),
        )
        .await
        .expect_err("taken health check port");
    assert!(
        e.to_string()
            .contains("already allocated to Service shop/a"),
        "{e}"
    );
    // A node port may not take it either.
    let e = store
        .create_value(
            Kind::Service,
            svc(
                "shop",
                "n",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30001}]}),
            ),
        )
        .await
        .expect_err("node port on a health check port");
    assert!(e.to_string().contains("shop/a"), "{e}");
    let e = store
        .create_value(
            Kind::Service,
            local("b", json!({"healthCheckNodePort": 80})),
        )
        .await
        .expect_err("outside the node port range");
    assert!(e.to_string().contains("30000-32767"), "{e}");
    let b = store
        .create_value(
            Kind::Service,
            local("b", json!({"healthCheckNodePort": 32767})),
        )
        .await
        .expect("a free port asked for");
    assert_eq!(b["spec"]["healthCheckNodePort"], 32767);

    // Kept across an update that leaves it out; dropped with the Local policy.
    let mut again = a.clone();
    again["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("healthCheckNodePort");
    let again = store
        .update_value(Kind::Service, again)
        .await
        .expect("update");
    assert_eq!(again["spec"]["healthCheckNodePort"], 30001);
    let mut cluster = again.clone();
    cluster["spec"]["externalTrafficPolicy"] = json!("Cluster");
    let cluster = store
        .update_value(Kind::Service, cluster)
        .await
        .expect("update");
    assert!(
        cluster["spec"].get("healthCheckNodePort").is_none(),
        "{cluster}"
    );
}
