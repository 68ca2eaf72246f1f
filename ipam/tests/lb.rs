//! LoadBalancer IPAM against a real embedded store: several allocators
//! (each its own connection to the file, as the node agents of a cluster
//! would be) racing over the same Services, allocators killed at arbitrary
//! points, and what a user sees on the Service: `status.loadBalancer` and
//! the `twill.dev/LoadBalancerAllocated` condition.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use serde_json::json;
use twill_api::Store;
use twill_api::resources::{AllowedUse, IPAMBlock, IPPool, IPPoolSpec};
use twill_api::service::CONDITION_LB;
use twill_api::store::embedded::EmbeddedStore;
use twill_ipam::lb::{holders, lb_addresses, namespace_of};
use twill_ipam::lb_alloc::{LbAllocator, LbOutcome};
use twill_ipam::{AssignRequest, Ipam, IpamError, PlanError};

fn open(path: &Path) -> Store {
    Store::new(EmbeddedStore::open(path).expect("open store"))
}

fn lb_pool(name: &str, cidr: &str) -> IPPool {
    IPPool::new(
        name,
        IPPoolSpec {
            cidr: cidr.into(),
            allowed_uses: vec![AllowedUse::LoadBalancer],
            ..Default::default()
        },
    )
}

fn svc(ns: &str, name: &str, extra: serde_json::Value) -> Service {
    let mut v = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}});
    merge(&mut v, extra);
    serde_json::from_value(v).expect("service")
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

async fn get(s: &Store, ns: &str, name: &str) -> Service {
    s.get::<Service>(Some(ns), name)
        .await
        .expect("get")
        .expect("service exists")
}

fn ingress(s: &Service) -> Vec<IpAddr> {
    twill_api::service::ingress_ips(s).collect()
}

fn condition(s: &Service) -> Option<(String, String, String)> {
    s.status
        .iter()
        .flat_map(|st| st.conditions.iter().flatten())
        .find(|c| c.type_ == CONDITION_LB)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// The invariant: no address held in the blocks by two Services unless they
/// share it under one key, every Service's status shows only addresses the
/// blocks give it, and no two Services' statuses show one address unless
/// they share it.
async fn assert_never_doubled(s: &Store) -> BTreeMap<IpAddr, Vec<String>> {
    let blocks = s.list::<IPAMBlock>().await.expect("blocks").items;
    let mut by_addr: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for l in lb_addresses(&blocks) {
        assert!(
            seen.insert(l.addr),
            "{} allocated twice in the blocks",
            l.addr
        );
        let hs = holders(&l.allocation);
        assert!(!hs.is_empty(), "{} held by nobody", l.addr);
        if hs.len() > 1 {
            assert!(
                l.allocation.handle.starts_with("lb-share:"),
                "{} has several holders without a sharing key: {:?}",
                l.addr,
                l.allocation
            );
        }
        let ns = namespace_of(&l.allocation).to_string();
        by_addr.insert(
            l.addr,
            hs.iter().map(|h| format!("{ns}/{}", h.name)).collect(),
        );
    }
    let mut shown: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    for sv in s.list::<Service>().await.expect("services").items {
        let key = format!(
            "{}/{}",
            sv.metadata.namespace.clone().unwrap_or_default(),
            sv.metadata.name.clone().unwrap_or_default()
        );
        for a in ingress(&sv) {
            let holders = by_addr.get(&a).cloned().unwrap_or_default();
            assert!(
                holders.contains(&key),
                "Service {key} shows {a}, which the blocks give to {holders:?}"
            );
            shown.entry(a).or_default().push(key.clone());
        }
    }
    for (a, svcs) in &shown {
        assert!(
            svcs.len() == 1 || by_addr.get(a).is_some_and(|h| h.len() == svcs.len()),
            "{a} shown by several Services that do not share it: {svcs:?}"
        );
    }
    by_addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_allocators_never_give_one_address_to_two_services() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("lb.db");
    let store = open(&path);
    // 14 addresses (a /28 without its network and broadcast addresses)
    // for 24 Services: the pool runs out while they race.
    store
        .create(&lb_pool("lb", "192.0.2.0/28"))
        .await
        .expect("pool");
    for i in 0..24 {
        store
            .create(&svc("shop", &format!("s{i:02}"), json!({})))
            .await
            .expect("service");
    }
    let mut tasks = Vec::new();
    for n in 0..4usize {
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let a = LbAllocator::new(open(&path));
            // Each agent walks the Services in its own order.
            let mut order: Vec<usize> = (0..24).collect();
            order.rotate_left(n * 6);
            if n % 2 == 1 {
                order.reverse();
            }
            for i in order {
                a.reconcile("shop", &format!("s{i:02}"))
                    .await
                    .expect("reconcile");
            }
        }));
    }
    for t in tasks {
        t.await.expect("allocator task");
    }
    // A final pass settles what the race left (duplicates, late statuses).
    LbAllocator::new(store.clone())
        .reconcile_all()
        .await
        .expect("resync");
    let held = assert_never_doubled(&store).await;
    assert_eq!(
        held.len(),
        14,
        "every address of the pool but .0 and .15 is in use: {held:?}"
    );
    let mut allocated = 0;
    let mut pending = 0;
    for i in 0..24 {
        let s = get(&store, "shop", &format!("s{i:02}")).await;
        match (ingress(&s).len(), condition(&s)) {
            (1, Some((st, reason, _))) if st == "True" && reason == "Allocated" => allocated += 1,
            (0, Some((st, reason, msg))) if st == "False" && reason == "PoolExhausted" => {
                assert!(msg.contains("\"lb\""), "{msg}");
                pending += 1
            }
            other => panic!("s{i:02}: unexpected {other:?}"),
        }
    }
    assert_eq!((allocated, pending), (14, 10));
    // Deleting one frees its address for a pending one.
    let s0 = get(&store, "shop", "s00").await;
    let freed = ingress(&s0);
    store
        .delete::<Service>(Some("shop"), "s00", None)
        .await
        .expect("delete");
    let out = LbAllocator::new(store.clone())
        .reconcile_all()
        .await
        .expect("resync");
    assert!(
        matches!(&out["shop/s00"], LbOutcome::NotServed { released } if *released == freed),
        "{out:?}"
    );
    let newly: Vec<&String> = out
        .iter()
        .filter(|(_, o)| matches!(o, LbOutcome::Allocated(a) if a == &freed))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(newly.len(), 1, "{out:?}");
    assert_never_doubled(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocators_killed_mid_write_leave_no_address_twice_and_nothing_lost() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("lb.db");
    let store = open(&path);
    store
        .create(&lb_pool("lb", "192.0.2.0/27"))
        .await
        .expect("pool");
    for i in 0..20 {
        store
            .create(&svc("shop", &format!("s{i:02}"), json!({})))
            .await
            .expect("service");
    }
    // Rounds of agents that are aborted (a crash at any await point: before,
    // between or after their block and status writes), with Services
    // deleted and created meanwhile.
    for round in 0u64..12 {
        let mut tasks = Vec::new();
        for n in 0..3u64 {
            let path = path.clone();
            tasks.push(tokio::spawn(async move {
                let a = LbAllocator::new(open(&path));
                let _ = a.reconcile_all().await;
                let _ = n;
            }));
        }
        tokio::time::sleep(Duration::from_millis(3 + (round * 7) % 23)).await;
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        assert_never_doubled(&store).await;
        let victim = format!("s{:02}", (round * 5) % 20);
        if round % 3 == 0 {
            let _ = store.delete::<Service>(Some("shop"), &victim, None).await;
            store
                .create(&svc("shop", &victim, json!({})))
                .await
                .expect("recreate");
        }
    }
    // A clean pass afterwards: every Service served, no address leaked.
    LbAllocator::new(store.clone())
        .reconcile_all()
        .await
        .expect("resync");
    let held = assert_never_doubled(&store).await;
    assert_eq!(
        held.len(),
        20,
        "one address per Service, none leaked: {held:?}"
    );
    let mut shown = BTreeSet::new();
    for i in 0..20 {
        let s = get(&store, "shop", &format!("s{i:02}")).await;
        let ips = ingress(&s);
        assert_eq!(ips.len(), 1, "s{i:02}: {:?}", s.status);
        assert!(shown.insert(ips[0]));
        let uid = s.metadata.uid.clone().expect("uid");
        let holders_of: Vec<String> = held[&ips[0]].clone();
        assert_eq!(holders_of, vec![format!("shop/s{i:02}")]);
        // The holder recorded in the block is this incarnation of the name.
        let blocks = store.list::<IPAMBlock>().await.expect("blocks").items;
        let l = lb_addresses(&blocks)
            .into_iter()
            .find(|l| l.addr == ips[0])
            .expect("allocation");
        assert_eq!(holders(&l.allocation)[0].uid, uid);
    }
}

#[tokio::test]
async fn a_load_balancer_pool_is_never_used_for_pods() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir.path().join("lb.db"));
    store
        .create(&lb_pool("lb", "192.0.2.0/28"))
        .await
        .expect("pool");
    let ipam = Ipam::new(store.clone(), "n1");
    let err = ipam
        .assign(&AssignRequest {
            handle: "c1".into(),
            ..Default::default()
        })
        .await
        .expect_err("no pool for pods");
    assert!(
        matches!(err, IpamError::Plan(PlanError::NoPool { .. })),
        "{err}"
    );
    // With a pod pool too: pods get addresses there, never in the LB pool,
    // not even when they ask for one by name.
    store
        .create(&IPPool::new(
            "pods",
            IPPoolSpec {
                cidr: "10.244.0.0/24".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("pod pool");
    let got = ipam
        .assign(&AssignRequest {
            handle: "c1".into(),
            ..Default::default()
        })
        .await
        .expect("pod address");
    assert!(got[0].block.to_string().starts_with("10.244.0."), "{got:?}");
    let err = ipam
        .assign(&AssignRequest {
            handle: "c2".into(),
            requested: vec!["192.0.2.3".parse().expect("addr")],
            ..Default::default()
        })
        .await
        .expect_err("a pod asking for an LB address");
    assert!(err.to_string().contains("192.0.2.3"), "{err}");
    // And the LB pool does serve a LoadBalancer Service.
    store
        .create(&svc("default", "web", json!({})))
        .await
        .expect("svc");
    let out = LbAllocator::new(store.clone())
        .reconcile("default", "web")
        .await
        .expect("reconcile");
    assert_eq!(
        out,
        LbOutcome::Allocated(vec!["192.0.2.1".parse().expect("addr")])
    );
    let s = get(&store, "default", "web").await;
    let lb = s.status.and_then(|s| s.load_balancer).expect("lb status");
    let i = &lb.ingress.expect("ingress")[0];
    assert_eq!(i.ip_mode.as_deref(), Some("VIP"));
}

#[tokio::test]
async fn requests_refusals_sharing_release_and_dual_stack_as_a_user_sees_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir.path().join("lb.db"));
    // The embedded store needs an IPv6 service range for dual-stack cluster IPs.
    EmbeddedStore::open(dir.path().join("lb.db"))
        .expect("open")
        .set_service_ranges(&"10.96.0.0/12,fd00:96::/108".parse().expect("ranges"))
        .expect("ranges");
    store
        .create(&lb_pool("lb", "192.0.2.0/28"))
        .await
        .expect("pool");
    store
        .create(&lb_pool("lb6", "fd00:1::/124"))
        .await
        .expect("pool6");
    let a = LbAllocator::new(store.clone());
    // Limits: a 63-character namespace and Service name.
    let ns = "n".repeat(63);
    let long = format!("a{}", "b".repeat(62));
    store
        .create(&svc(
            &ns,
            &long,
            json!({"spec": {"loadBalancerIP": "192.0.2.9"}}),
        ))
        .await
        .expect("63-character names");
    assert_eq!(
        a.reconcile(&ns, &long).await.expect("reconcile"),
        LbOutcome::Allocated(vec!["192.0.2.9".parse().expect("addr")])
    );
    // Taken: the second one stays pending, naming the holder; so does one outside every pool.
    store
        .create(&svc(
            "shop",
            "second",
            json!({"metadata": {"annotations": {"twill.dev/loadBalancerIPs": "192.0.2.9"}}}),
        ))
        .await
        .expect("svc");
    a.reconcile("shop", "second").await.expect("reconcile");
    let s = get(&store, "shop", "second").await;
    assert!(ingress(&s).is_empty());
    let (st, reason, msg) = condition(&s).expect("condition");
    assert_eq!((st.as_str(), reason.as_str()), ("False", "AddressTaken"));
    assert!(msg.contains(&format!("Service {ns}/{long}")), "{msg}");
    let mut s2 = get(&store, "shop", "second").await;
    s2.metadata.annotations = Some(BTreeMap::from([(
        "twill.dev/loadBalancerIPs".to_string(),
        "198.51.100.1".to_string(),
    )]));
    store.update(&s2).await.expect("update");
    a.reconcile("shop", "second").await.expect("reconcile");
    let (_, reason, _) = condition(&get(&store, "shop", "second").await).expect("condition");
    assert_eq!(reason, "OutsidePools");
    // Asking for a free address instead: allocated, and the condition turns True.
    let mut s2 = get(&store, "shop", "second").await;
    s2.metadata.annotations = Some(BTreeMap::from([(
        "twill.dev/loadBalancerIPs".to_string(),
        "192.0.2.10".to_string(),
    )]));
    store.update(&s2).await.expect("update");
    a.reconcile("shop", "second").await.expect("reconcile");
    let s = get(&store, "shop", "second").await;
    assert_eq!(
        ingress(&s),
        vec!["192.0.2.10".parse::<IpAddr>().expect("a")]
    );
    assert_eq!(condition(&s).expect("c").0, "True");

    // Sharing: same key and ports that do not clash share; a clash is refused by name.
    let share = |name: &str, port: u16, proto: &str| {
        svc(
            "shop",
            name,
            json!({"metadata": {"annotations": {"twill.dev/sharing-key": "dns"}},
                   "spec": {"ports": [{"port": port, "protocol": proto}]}}),
        )
    };
    for (n, p, pr) in [
        ("dns-udp", 53, "UDP"),
        ("dns-tcp", 53, "TCP"),
        ("dns-clash", 53, "UDP"),
    ] {
        store.create(&share(n, p, pr)).await.expect("svc");
        a.reconcile("shop", n).await.expect("reconcile");
    }
    let udp = ingress(&get(&store, "shop", "dns-udp").await);
    assert_eq!(udp.len(), 1);
    assert_eq!(ingress(&get(&store, "shop", "dns-tcp").await), udp);
    let c = get(&store, "shop", "dns-clash").await;
    assert!(ingress(&c).is_empty());
    let (_, reason, msg) = condition(&c).expect("condition");
    assert_eq!(reason, "PortClash");
    assert!(
        msg.contains("UDP/53 clashes with Service shop/dns-udp"),
        "{msg}"
    );
    assert_never_doubled(&store).await;
    // One sharer leaving keeps the address for the other.
    store
        .delete::<Service>(Some("shop"), "dns-udp", None)
        .await
        .expect("delete");
    a.reconcile("shop", "dns-udp").await.expect("reconcile");
    assert_eq!(ingress(&get(&store, "shop", "dns-tcp").await), udp);
    let held = assert_never_doubled(&store).await;
    assert_eq!(held[&udp[0]], vec!["shop/dns-tcp".to_string()]);

    // Type change releases: the address goes back and the status is cleared.
    let mut s = get(&store, "shop", "second").await;
    if let Some(spec) = s.spec.as_mut() {
        spec.type_ = Some("ClusterIP".into());
    }
    store.update(&s).await.expect("update");
    assert_eq!(
        a.reconcile("shop", "second").await.expect("reconcile"),
        LbOutcome::NotServed {
            released: vec!["192.0.2.10".parse().expect("a")]
        }
    );
    let s = get(&store, "shop", "second").await;
    assert!(
        ingress(&s).is_empty() && condition(&s).is_none(),
        "{:?}",
        s.status
    );

    // Another loadBalancerClass: not Twill's, nothing allocated.
    store
        .create(&svc(
            "shop",
            "other",
            json!({"spec": {"loadBalancerClass": "example.com/lb"}}),
        ))
        .await
        .expect("svc");
    assert!(matches!(
        a.reconcile("shop", "other").await.expect("reconcile"),
        LbOutcome::NotServed { .. }
    ));

    // Dual stack: one address of each family, in the Service's order.
    store
        .create(&svc(
            "shop",
            "dual",
            json!({"spec": {"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6", "IPv4"]}}),
        ))
        .await
        .expect("svc");
    let LbOutcome::Allocated(ips) = a.reconcile("shop", "dual").await.expect("reconcile") else {
        panic!("dual stack not allocated");
    };
    assert_eq!(ips.len(), 2);
    assert!(ips[0].is_ipv6() && ips[1].is_ipv4(), "{ips:?}");
    assert_eq!(ingress(&get(&store, "shop", "dual").await), ips);
    assert_never_doubled(&store).await;
}

/// A dual-stack Service that requires both families and can get only one
/// holds none (all or nothing, as the API server allocates cluster IPs and
/// as MetalLB does): it stays pending with the reason and the other
/// family's addresses stay free for other Services; once the missing
/// family frees up it gets both. PreferDualStack takes what there is and
/// says why the second family is missing, until it frees up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_service_gets_both_families_or_holds_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir.path().join("lb.db"));
    EmbeddedStore::open(dir.path().join("lb.db"))
        .expect("open")
        .set_service_ranges(&"10.96.0.0/12,fd00:96::/108".parse().expect("ranges"))
        .expect("ranges");
    store
        .create(&lb_pool("lb", "192.0.2.0/29"))
        .await
        .expect("pool");
    // A /127: two IPv6 addresses (no first/last to skip).
    store
        .create(&lb_pool("lb6", "fd00:2::/127"))
        .await
        .expect("pool6");
    let a = LbAllocator::new(store.clone());
    let dual = |name: &str, policy: &str| {
        svc(
            "shop",
            name,
            json!({"spec": {"ipFamilyPolicy": policy, "ipFamilies": ["IPv4", "IPv6"]}}),
        )
    };
    for n in ["d1", "d2", "d3"] {
        store
            .create(&dual(n, "RequireDualStack"))
            .await
            .expect("svc");
        a.reconcile("shop", n).await.expect("reconcile");
    }
    for n in ["d1", "d2"] {
        let got = ingress(&get(&store, "shop", n).await);
        assert!(
            got.len() == 2 && got[0].is_ipv4() && got[1].is_ipv6(),
            "{n}: {got:?}"
        );
    }
    let d3 = get(&store, "shop", "d3").await;
    assert!(ingress(&d3).is_empty(), "{:?}", d3.status);
    let (st, reason, msg) = condition(&d3).expect("condition");
    assert_eq!(
        (st.as_str(), reason.as_str()),
        ("False", "PoolExhausted"),
        "{msg}"
    );
    let uid3 = d3.metadata.uid.clone().expect("uid");
    let blocks = store.list::<IPAMBlock>().await.expect("blocks").items;
    assert!(
        twill_ipam::lb::held_by(&blocks, "shop", "d3", &uid3).is_empty(),
        "a pending dual-stack Service holds an address"
    );
    // The IPv4 addresses it did not take are free: a single-stack Service gets one.
    store
        .create(&svc("shop", "v4", json!({})))
        .await
        .expect("svc");
    assert!(matches!(
        a.reconcile("shop", "v4").await.expect("reconcile"),
        LbOutcome::Allocated(_)
    ));
    // PreferDualStack: the IPv4 address alone, allocated (not pending).
    store
        .create(&dual("pref", "PreferDualStack"))
        .await
        .expect("svc");
    let LbOutcome::Allocated(ips) = a.reconcile("shop", "pref").await.expect("reconcile") else {
        panic!("PreferDualStack waits for IPv6");
    };
    assert!(ips.len() == 1 && ips[0].is_ipv4(), "{ips:?}");
    // ... and its condition says why it has no IPv6 address (the pool is
    // full), while a fully served Service's says plain Allocated.
    let (st, reason, msg) = condition(&get(&store, "shop", "pref").await).expect("condition");
    assert_eq!(
        (st.as_str(), reason.as_str()),
        ("True", twill_ipam::lb_alloc::REASON_PARTIAL),
        "{msg}"
    );
    assert!(
        msg.starts_with(&format!(
            "allocated {}; no IPv6 address (PreferDualStack): ",
            ips[0]
        )) && msg.contains("IPv6 LoadBalancer pools [\"lb6\"] have no free address"),
        "{msg}"
    );
    let (_, reason, _) = condition(&get(&store, "shop", "d2").await).expect("condition");
    assert_eq!(reason, "Allocated");
    // d1 goes: d3 gets both.
    store
        .delete::<Service>(Some("shop"), "d1", None)
        .await
        .expect("delete");
    a.reconcile_all().await.expect("resync");
    let got = ingress(&get(&store, "shop", "d3").await);
    assert!(
        got.len() == 2 && got[0].is_ipv4() && got[1].is_ipv6(),
        "{got:?}"
    );
    // d2 goes: its IPv6 address completes the PreferDualStack Service,
    // whose condition turns plain Allocated.
    store
        .delete::<Service>(Some("shop"), "d2", None)
        .await
        .expect("delete");
    a.reconcile_all().await.expect("resync");
    let pref = get(&store, "shop", "pref").await;
    let got = ingress(&pref);
    assert!(
        got.len() == 2 && got[0] == ips[0] && got[1].is_ipv6(),
        "{got:?}"
    );
    assert_eq!(condition(&pref).expect("condition").1, "Allocated");
    assert_never_doubled(&store).await;
}
