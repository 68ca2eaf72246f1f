//! `twillctl service show NAMESPACE/NAME` on an embedded store from real
//! manifest files: for every node, the endpoints that node picks for each
//! port and why — ready endpoints, the serving terminating fallback, the
//! Local policies (kept source, dropped without a local endpoint), a
//! Service without endpoints refused — and what its health check node
//! port answers; the same as JSON; and the errors a user can make.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

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
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The table rows of `node` for port `port` and traffic `traffic`.
fn route<'a>(table: &'a str, node: &str, port: &str, traffic: &str) -> &'a str {
    table
        .lines()
        .find(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some(node) && w.next() == Some(port) && w.next() == Some(traffic)
        })
        .unwrap_or_else(|| panic!("no row {node} {port} {traffic} in\n{table}"))
}

const MANIFEST: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
---
apiVersion: v1
kind: Node
metadata: {name: node-b}
---
apiVersion: v1
kind: Node
metadata: {name: node-c}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  ports:
  - {name: http, port: 80, targetPort: web}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: shop}
spec:
  ports:
  - {port: 5432}
---
apiVersion: v1
kind: Service
metadata: {name: near, namespace: shop}
spec:
  internalTrafficPolicy: Local
  ports:
  - {port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
endpoints:
- addresses: [10.244.0.5]
  nodeName: node-a
  conditions: {ready: true}
- addresses: [10.244.1.7]
  nodeName: node-b
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.244.2.9]
  nodeName: node-c
  conditions: {ready: false, serving: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: near-1
  namespace: shop
  labels: {kubernetes.io/service-name: near}
addressType: IPv4
ports:
- {port: 53, protocol: UDP}
endpoints:
- addresses: [10.244.0.20]
  nodeName: node-a
"#;

#[test]
fn service_show_says_what_each_node_picks_and_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("s.db");
    let file = dir.path().join("svc.yaml");
    std::fs::write(&file, MANIFEST).expect("write manifest");
    ok(&db, &["apply", "-f", file.to_str().expect("utf-8")]);

    let t = ok(&db, &["service", "show", "shop/web"]);
    assert!(t.contains("Service shop/web (LoadBalancer)"), "{t}");
    assert!(t.contains("sessionAffinity ClientIP for 60s"), "{t}");
    assert!(t.contains("nodePort 3"), "the node port is a frontend: {t}");
    // Internal traffic (Cluster policy): the one ready endpoint, from every node.
    for n in ["node-a", "node-b", "node-c"] {
        let r = route(&t, n, "http/TCP/IPv4", "internal");
        assert!(
            r.contains("forward") && r.contains("10.244.0.5:8080"),
            "{t}"
        );
        assert!(
            !r.contains("10.244.1.7"),
            "a terminating endpoint is not used while one is ready: {t}"
        );
        assert!(
            !r.contains("10.244.2.9"),
            "a not-ready endpoint is never used: {t}"
        );
    }
    // External traffic under Local: each node its own endpoints.
    let a = route(&t, "node-a", "http/TCP/IPv4", "external");
    assert!(
        a.contains("forward") && a.contains("10.244.0.5:8080") && a.contains("kept"),
        "{t}"
    );
    let b = route(&t, "node-b", "http/TCP/IPv4", "external");
    assert!(
        b.contains("forward") && b.contains("10.244.1.7:8080") && b.contains("fallback"),
        "node-b falls back to its serving terminating endpoint: {t}"
    );
    let c = route(&t, "node-c", "http/TCP/IPv4", "external");
    assert!(
        c.contains("drop") && c.contains("no endpoint on this node"),
        "{t}"
    );
    // The health check port: 200 only where a ready endpoint is local.
    let health: Vec<&str> = t
        .lines()
        .skip_while(|l| !l.starts_with("NODE") || !l.contains("HEALTH-CHECK-PORT"))
        .collect();
    assert_eq!(health.len(), 4, "{t}");
    assert!(
        health[1].starts_with("node-a") && health[1].contains(" 200 "),
        "{t}"
    );
    assert!(
        health[2].starts_with("node-b") && health[2].contains(" 503 "),
        "terminating is not counted: {t}"
    );
    assert!(
        health[3].starts_with("node-c") && health[3].contains(" 503 "),
        "{t}"
    );

    // One node, as JSON.
    let j: Value = serde_json::from_str(&ok(
        &db,
        &[
            "service", "show", "shop/web", "--node", "node-b", "-o", "json",
        ],
    ))
    .expect("JSON");
    assert_eq!(j["service"], "shop/web");
    assert_eq!(j["sessionAffinityTimeout"], 60);
    assert_eq!(j["nodes"].as_array().map(Vec::len), Some(1), "{j}");
    let node = &j["nodes"][0];
    assert_eq!(node["node"], "node-b");
    assert_eq!(node["healthCheck"]["localEndpoints"], 0);
    assert_eq!(node["healthCheck"]["status"], 503);
    let routes = &node["ports"][0]["routes"];
    assert_eq!(routes[1]["traffic"], "external");
    assert_eq!(routes[1]["policy"], "Local");
    assert_eq!(
        routes[1]["endpoints"],
        serde_json::json!(["10.244.1.7:8080"])
    );
    let eps = j["endpoints"].as_array().expect("endpoints");
    assert!(
        eps.iter().any(|e| e["address"] == "10.244.1.7:8080"
            && e["conditions"] == "not ready, serving, terminating"),
        "{j}"
    );

    // No endpoints: refused at once, everywhere.
    let t = ok(&db, &["service", "show", "shop/empty"]);
    let r = route(&t, "node-a", "5432/TCP/IPv4", "internal");
    assert!(r.contains("reject") && r.contains("refused at once"), "{t}");
    assert!(
        !t.contains("HEALTH-CHECK-PORT"),
        "no health check port without the Local policy: {t}"
    );

    // internalTrafficPolicy Local: only the node with the endpoint forwards.
    let t = ok(&db, &["service", "show", "shop/near"]);
    assert!(
        route(&t, "node-a", "53/UDP/IPv4", "internal").contains("10.244.0.20:53"),
        "{t}"
    );
    let b = route(&t, "node-b", "53/UDP/IPv4", "internal");
    assert!(
        b.contains("Local") && b.contains("reject") && !b.contains("10.244.0.20"),
        "{t}"
    );

    // Mistakes: say what is wrong.
    let (o, text) = twillctl(&db, &["service", "show", "web"]);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(text.contains("NAMESPACE/NAME"), "{text}");
    let (o, text) = twillctl(&db, &["service", "show", "shop/nope"]);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("shop/nope") && text.contains("not found"),
        "{text}"
    );
    let (o, text) = twillctl(&db, &["service", "show", "shop/web", "--node", "node-z"]);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("node-z") && text.contains("node-a"), "{text}");
}
