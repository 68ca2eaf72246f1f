//! Service addresses announced over the nodes' BGP sessions (issue 12,
//! item 3), end to end through `twillctl lab` with a BIRD ToR: the
//! LoadBalancer allocator every twill-node runs gives the address, and the
//! ToR learns it from the nodes the traffic policy says.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use twill_tests::lab::Lab;
use twill_tests::peers::Flavor;
use twill_tests::{require_binary, require_root, wait_until};

const LB_POOL: &str = "10.251.7.0/28";

fn apply(lab: &Lab, dir: &std::path::Path, name: &str, yaml: &str) {
    let f = dir.join(name);
    std::fs::write(&f, yaml).expect("write manifest");
    let out = lab.twillctl(&["apply", "-f", f.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "apply {name}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn service(lab: &Lab, name: &str) -> Value {
    let out = lab.twillctl(&["get", "service", name, "-n", "default", "-o", "json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// The Service's first LoadBalancer address, once it has one.
fn lb_ip(lab: &Lab, name: &str) -> Option<String> {
    service(lab, name)["status"]["loadBalancer"]["ingress"][0]["ip"]
        .as_str()
        .map(str::to_string)
}

fn wait_ip(lab: &Lab, name: &str) -> String {
    let mut ip = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            ip = lb_ip(lab, name);
            ip.is_some()
        }),
        "Service {name} got no LoadBalancer address: {}",
        service(lab, name)
    );
    ip.unwrap_or_default()
}

/// The next hops BIRD has for exactly `prefix`.
fn tor_next_hops(lab: &Lab, prefix: &str) -> BTreeSet<String> {
    lab.tor(Flavor::Bird)
        .ipv4_next_hops()
        .into_iter()
        .filter(|(p, _)| p == prefix)
        .map(|(_, nh)| nh)
        .collect()
}

/// NodeStatus `servicePrefixes` of one node.
fn node_service_prefixes(lab: &Lab, node: &str) -> BTreeSet<String> {
    let out = lab.twillctl(&["node", "status", node, "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["status"]["servicePrefixes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect()
}

#[test]
fn load_balancer_addresses_reach_the_tor_from_the_nodes_the_policy_names() {
    require_root();
    require_binary("bird", "bird2");
    require_binary("birdc", "bird2");
    let lab = Lab::up(&["--nodes", "3", "--tor", "bird", "--pods-per-node", "1"]);
    assert!(lab.up_ok, "{}", lab.up_output);
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = lab.state()["plan"]["nodes"].clone();
    let nodes: Vec<(String, String)> = plan
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n["name"].as_str()?.into(), n["addr"].as_str()?.into())))
        .collect();
    assert_eq!(nodes.len(), 3, "{plan}");
    let all: BTreeSet<String> = nodes.iter().map(|(_, a)| a.clone()).collect();
    let (n2, n2_addr) = nodes[1].clone();
    let (n1, _) = nodes[0].clone();

    apply(
        &lab,
        dir.path(),
        "pool.yaml",
        &format!(
            "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: lb\nspec:\n  cidr: {LB_POOL}\n  allowedUses: [LoadBalancer]\n"
        ),
    );
    let cluster = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Cluster\n  selector: {app: web}\n  ports:\n  - {port: 80, protocol: TCP}\n";
    apply(&lab, dir.path(), "web.yaml", cluster);
    let web = wait_ip(&lab, "web");
    let web32 = format!("{web}/32");
    assert!(
        LB_POOL
            .parse::<ipnetwork::IpNetwork>()
            .is_ok_and(|n| n.contains(web.parse().expect("an address"))),
        "{web} is not from {LB_POOL}"
    );

    // Nothing is announced before BGPConfiguration says so.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        tor_next_hops(&lab, &web32).is_empty(),
        "{web32} announced without serviceLoadBalancerIPs:\n{}",
        lab.bird_routes()
    );
    let out = lab.twillctl(&[
        "patch",
        "bgpconfiguration",
        "default",
        "-p",
        &format!(r#"{{"spec":{{"serviceLoadBalancerIPs":[{{"cidr":"{LB_POOL}"}}]}}}}"#),
    ]);
    assert!(
        out.status.success(),
        "patch: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Cluster policy: every node announces it, the ToR has ECMP over all.
    assert!(
        wait_until(Duration::from_secs(15), || tor_next_hops(&lab, &web32)
            == all),
        "the ToR should reach {web32} via every node {all:?}, has {:?}\n{}",
        tor_next_hops(&lab, &web32),
        lab.bird_routes()
    );

    // Local policy, the only ready endpoint on n2 (n3's is not ready).
    let local = "apiVersion: v1\nkind: Service\nmetadata:\n  name: local\n  namespace: default\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  selector: {app: local}\n  ports:\n  - {port: 80, protocol: TCP}\n";
    apply(&lab, dir.path(), "local.yaml", local);
    let slice = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: local-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: local\naddressType: IPv4\nports:\n- {{port: 80, protocol: TCP}}\nendpoints:\n- addresses: [10.244.200.1]\n  conditions: {{ready: true}}\n  nodeName: {n2}\n- addresses: [10.244.200.2]\n  conditions: {{ready: false}}\n  nodeName: {}\n",
        nodes[2].0
    );
    apply(&lab, dir.path(), "slice.yaml", &slice);
    let loc = wait_ip(&lab, "local");
    assert_ne!(loc, web, "two Services got one address");
    let loc32 = format!("{loc}/32");
    let only_n2: BTreeSet<String> = [n2_addr.clone()].into();
    assert!(
        wait_until(Duration::from_secs(15), || tor_next_hops(&lab, &loc32)
            == only_n2),
        "the ToR should reach {loc32} only via {n2} ({n2_addr}), has {:?}\n{}",
        tor_next_hops(&lab, &loc32),
        lab.bird_routes()
    );
    // Still only n2 a while later (no other node joins in).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(tor_next_hops(&lab, &loc32), only_n2);

    // NodeStatus servicePrefixes: n2 lists both, n1 only the Cluster one.
    assert!(
        wait_until(Duration::from_secs(30), || {
            let a = node_service_prefixes(&lab, &n2);
            let b = node_service_prefixes(&lab, &n1);
            a.contains(&web32) && a.contains(&loc32) && b.contains(&web32) && !b.contains(&loc32)
        }),
        "servicePrefixes: {n2} {:?}, {n1} {:?}",
        node_service_prefixes(&lab, &n2),
        node_service_prefixes(&lab, &n1)
    );
    let wide = lab.twillctl(&["get", "svc", "-n", "default", "-o", "wide"]);
    let wide = String::from_utf8_lossy(&wide.stdout).into_owned();
    let local_line = wide
        .lines()
        .find(|l| l.starts_with("local"))
        .unwrap_or_default();
    assert!(
        local_line.contains(&n2) && !local_line.contains(&n1),
        "{wide}"
    );

    // A Service asking for web's address while web holds it stays pending
    // (Local policy without endpoints: it is never announced, so the
    // withdrawal below is web's alone).
    let want_web = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: again\n  namespace: default\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  loadBalancerIP: {web}\n  ports:\n  - {{port: 80, protocol: TCP}}\n"
    );
    apply(&lab, dir.path(), "again.yaml", &want_web);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lb_ip(&lab, "again"), None, "{}", service(&lab, "again"));

    // Delete web: withdrawn from the ToR, and the address is free — the
    // Service waiting for it gets it.
    let out = lab.twillctl(&["delete", "service", "web", "-n", "default"]);
    assert!(
        out.status.success(),
        "delete: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(15), || tor_next_hops(&lab, &web32)
            .is_empty()),
        "{web32} is still at the ToR after the delete:\n{}",
        lab.bird_routes()
    );
    assert!(
        wait_until(Duration::from_secs(45), || lb_ip(&lab, "again").as_deref()
            == Some(web.as_str())),
        "the freed {web} did not go to the Service asking for it: {}",
        service(&lab, "again")
    );
    // The Local one is still announced via n2 only.
    assert_eq!(tor_next_hops(&lab, &loc32), only_n2);
}
