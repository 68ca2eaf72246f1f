//! `twillctl` with Services and EndpointSlices on an embedded store, from
//! real manifest files: apply, `get svc` (cluster IPs, `<pending>` with the
//! reason, LoadBalancer addresses, `-o wide` ANNOUNCED-BY from NodeStatus),
//! `get endpointslices`, `datastore service-range`, and `ipam show` /
//! `ipam check [--repair]` over LoadBalancer addresses. The LoadBalancer
//! allocator runs as the library the node agent starts.

use std::path::Path;
use std::process::{Command, Output};

use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, Service, ServiceStatus};
use twill_api::Store;
use twill_api::resources::{NodeStatus, NodeStatusReport, NodeStatusSpec};
use twill_api::store::embedded::EmbeddedStore;
use twill_ipam::lb_alloc::LbAllocator;

fn twillctl(db: &Path, args: &[&str]) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_twillctl"))
        .args(args)
        .env("TWILL_DATASTORE_PATH", db)
        .env_remove("TWILL_DATASTORE")
        .output()
        .expect("run twillctl");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out, text)
}

fn ok(db: &Path, args: &[&str]) -> String {
    let (o, text) = twillctl(db, args);
    assert!(o.status.success(), "twillctl {}: {text}", args.join(" "));
    text
}

/// The line of a table whose first column is `name`.
fn row<'a>(table: &'a str, name: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in\n{table}"))
}

const MANIFEST: &str = r#"
apiVersion: twill.dev/v1
kind: IPPool
metadata:
  name: lb
spec:
  cidr: 192.0.2.0/29
  allowedUses: [LoadBalancer]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  type: LoadBalancer
  loadBalancerIP: 192.0.2.5
  externalTrafficPolicy: Local
  ports:
  - name: http
    port: 80
  - name: https
    port: 443
---
apiVersion: v1
kind: Service
metadata:
  name: copycat
  namespace: shop
  annotations:
    twill.dev/loadBalancerIPs: 192.0.2.5
spec:
  type: LoadBalancer
  ports:
  - port: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: inner
  namespace: shop
spec:
  ports:
  - port: 5432
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abcde
  namespace: shop
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
- addresses: [10.244.0.5]
  nodeName: node-a
  conditions: {ready: true}
- addresses: [10.244.1.7]
  nodeName: node-b
  conditions: {ready: false}
"#;

#[tokio::test]
async fn services_from_files_through_allocation_to_ipam_check() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("s.db");
    let file = dir.path().join("services.yaml");
    std::fs::write(&file, MANIFEST).expect("write manifest");

    // The service range is a store setting; a bad one is a usage error.
    let (o, text) = twillctl(&db, &["datastore", "service-range", "10.0.0.0/30"]);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(text.contains("too small"), "{text}");
    ok(&db, &["datastore", "service-range", "10.43.0.0/16"]);
    assert_eq!(
        ok(&db, &["datastore", "service-range"]).trim(),
        "10.43.0.0/16"
    );

    let text = ok(&db, &["apply", "-f", file.to_str().expect("utf-8")]);
    assert!(text.contains("service/web"), "{text}");
    let t = ok(&db, &["get", "svc", "-n", "shop"]);
    let header = t.lines().next().expect("header");
    for h in ["TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "LB-STATUS"] {
        assert!(header.contains(h), "{t}");
    }
    assert!(!header.contains("ANNOUNCED-BY"), "only with -o wide: {t}");
    let web = row(&t, "web");
    assert!(
        web.contains("LoadBalancer")
            && web.contains("10.43.0.")
            && web.contains("<pending>")
            && web.contains("80:30000/TCP,443:30001/TCP"),
        "{t}"
    );
    assert!(row(&t, "inner").contains("<none>"), "{t}");

    // The allocator (what every twill-node runs) serves the two LoadBalancers.
    // First come, first served: web is reconciled first.
    let store = Store::new(EmbeddedStore::open(&db).expect("open"));
    let alloc = LbAllocator::new(store.clone());
    alloc.reconcile("shop", "web").await.expect("allocate");
    alloc.reconcile_all().await.expect("allocate");
    let t = ok(&db, &["get", "services", "-n", "shop"]);
    assert!(row(&t, "web").contains("192.0.2.5"), "{t}");
    let cc = row(&t, "copycat");
    assert!(
        cc.contains("<pending>")
            && cc
                .contains("AddressTaken: requested address 192.0.2.5 is taken by Service shop/web"),
        "{t}"
    );

    // ANNOUNCED-BY: the nodes whose NodeStatus lists a prefix with the address.
    let mut ns = store
        .create(&NodeStatus::new("node-a", NodeStatusSpec::default()))
        .await
        .expect("node status");
    ns.status = Some(NodeStatusReport {
        updated: jiff::Timestamp::now().to_string(),
        service_prefixes: vec!["10.43.0.0/16".into(), "192.0.2.5/32".into()],
        ..Default::default()
    });
    store.update_status(&ns).await.expect("status");
    let mut nb = store
        .create(&NodeStatus::new("node-b", NodeStatusSpec::default()))
        .await
        .expect("node status");
    nb.status = Some(NodeStatusReport {
        updated: jiff::Timestamp::now().to_string(),
        service_prefixes: vec!["10.43.0.0/16".into()],
        ..Default::default()
    });
    store.update_status(&nb).await.expect("status");
    let w = ok(&db, &["get", "svc", "-n", "shop", "-o", "wide"]);
    assert!(
        w.lines().next().expect("header").contains("ANNOUNCED-BY"),
        "{w}"
    );
    assert!(row(&w, "web").contains("node-a,node-b"), "{w}");
    let node = ok(&db, &["node", "status", "node-a"]);
    assert!(
        node.contains("service prefixes: 10.43.0.0/16, 192.0.2.5/32"),
        "{node}"
    );

    // EndpointSlices.
    let e = ok(&db, &["get", "endpointslices", "-n", "shop", "-o", "wide"]);
    let r = row(&e, "web-abcde");
    assert!(
        r.contains("IPv4")
            && r.contains("http:8080/TCP")
            && r.contains("10.244.0.5,10.244.1.7")
            && r.contains("node-a,node-b(not ready)"),
        "{e}"
    );

    // ipam show covers LoadBalancer addresses.
    let s = ok(&db, &["ipam", "show"]);
    assert!(s.contains("lb (LoadBalancer)"), "{s}");
    assert!(row(&s, "192.0.2.5").contains("shop/web"), "{s}");
    let s = ok(&db, &["ipam", "show", "--ip", "192.0.2.5"]);
    assert!(
        s.contains("LoadBalancer address of Service shop/web"),
        "{s}"
    );
    let s = ok(&db, &["ipam", "check"]);
    assert!(
        s.contains("consistent") && s.contains("1 LoadBalancer addresses"),
        "{s}"
    );

    // A Service deleted while no allocator runs: its address is held by no Service.
    ok(&db, &["delete", "service", "web", "-n", "shop"]);
    // And a status claiming an address the blocks do not give it, shown twice.
    let mut inner: Service = store
        .get(Some("shop"), "inner")
        .await
        .expect("get")
        .expect("inner");
    inner.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(vec![LoadBalancerIngress {
                ip: Some("192.0.2.6".into()),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    });
    store.update_status(&inner).await.expect("status");
    let mut cc: Service = store
        .get(Some("shop"), "copycat")
        .await
        .expect("get")
        .expect("copycat");
    cc.status = inner.status.clone();
    store.update_status(&cc).await.expect("status");
    let (o, c) = twillctl(&db, &["ipam", "check"]);
    assert_eq!(o.status.code(), Some(1), "{c}");
    assert!(
        c.contains("LoadBalancer address 192.0.2.5") && c.contains("no such LoadBalancer Service"),
        "{c}"
    );
    assert!(
        c.contains("192.0.2.6 is shown by Services shop/copycat, shop/inner"),
        "{c}"
    );
    assert!(
        c.contains("Service shop/inner shows LoadBalancer address 192.0.2.6"),
        "{c}"
    );
    let r = ok(&db, &["ipam", "check", "--repair"]);
    assert!(
        r.contains("released 192.0.2.5 held for Service shop/web"),
        "{r}"
    );
    let s = ok(&db, &["ipam", "check"]);
    assert!(s.contains("consistent"), "{s}");
    // The repair also let copycat have the address it asked for.
    let t = ok(&db, &["get", "svc", "copycat", "-n", "shop"]);
    assert!(row(&t, "copycat").contains("192.0.2.5"), "{t}");
    assert!(!row(&ok(&db, &["get", "svc", "-n", "shop"]), "inner").contains("192.0.2.6"));
}

/// A PreferDualStack Service that gets only its first family: `get svc`
/// shows its address and, in LB-STATUS, why the second is missing (here:
/// no IPv6 LoadBalancer pool); a single-stack Service beside it, fully
/// served, shows an empty LB-STATUS.
#[tokio::test]
async fn get_svc_says_why_prefer_dual_stack_has_one_family() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("s.db");
    let file = dir.path().join("pref.yaml");
    std::fs::write(
        &file,
        r#"
apiVersion: twill.dev/v1
kind: IPPool
metadata:
  name: lb
spec:
  cidr: 192.0.2.0/29
  allowedUses: [LoadBalancer]
---
apiVersion: v1
kind: Service
metadata:
  name: pref
  namespace: shop
spec:
  type: LoadBalancer
  ipFamilyPolicy: PreferDualStack
  ipFamilies: [IPv4, IPv6]
  ports:
  - port: 80
---
apiVersion: v1
kind: Service
metadata:
  name: plain
  namespace: shop
spec:
  type: LoadBalancer
  ports:
  - port: 80
"#,
    )
    .expect("write manifest");
    // Dual-stack cluster IPs need a service range of each family.
    ok(
        &db,
        &["datastore", "service-range", "10.43.0.0/16,fd00:43::/108"],
    );
    ok(&db, &["apply", "-f", file.to_str().expect("utf-8")]);
    let store = Store::new(EmbeddedStore::open(&db).expect("open"));
    LbAllocator::new(store)
        .reconcile_all()
        .await
        .expect("allocate");
    let t = ok(&db, &["get", "svc", "-n", "shop"]);
    let pref = row(&t, "pref");
    assert!(
        pref.contains("192.0.2.")
            && pref.contains("PartiallyAllocated: allocated 192.0.2.")
            && pref.contains("no IPv6 address (PreferDualStack): no enabled IPv6 IPPool with allowedUses LoadBalancer selects Service shop/pref"),
        "{t}"
    );
    let plain = row(&t, "plain");
    assert!(
        plain.contains("192.0.2.") && !plain.contains("Allocated"),
        "{t}"
    );
}
