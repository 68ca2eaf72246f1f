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
            "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: lb\nspec:\n  cidr: {LB_POOL}\n  allowedUses: [LoadBalancer]\n  bgpCommunities: [\"65000:7\", \"65000:7:7\"]\n"
        ),
    );
    // A community annotation that is no community: refused naming the
    // Service, the annotation and the entry (the valid one below is taken).
    let bad = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\n  annotations:\n    twill.dev/bgp-communities: \"65000:100,70000:1\"\nspec:\n  type: LoadBalancer\n  ports:\n  - {port: 80, protocol: TCP}\n";
    let f = dir.path().join("bad.yaml");
    std::fs::write(&f, bad).expect("write manifest");
    let out = lab.twillctl(&["apply", "-f", f.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("web")
            && err.contains("twill.dev/bgp-communities")
            && err.contains("70000:1"),
        "{err}"
    );
    let cluster = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\n  annotations:\n    twill.dev/bgp-communities: \"65000:100,65000:1:2\"\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Cluster\n  selector: {app: web}\n  ports:\n  - {port: 80, protocol: TCP}\n";
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
        &format!(
            r#"{{"spec":{{"serviceLoadBalancerIPs":[{{"cidr":"{LB_POOL}"}}],"prefixAdvertisements":[{{"cidr":"{LB_POOL}","communities":["64999:1"]}}]}}}}"#
        ),
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

    // Communities at the ToR: the BGPConfiguration's, the pool's and the
    // Service's, merged (standard and large).
    let has_all = |route: &str, want: &[&str]| want.iter().all(|c| route.contains(c));
    let web_comms = [
        "(64999,1)",
        "(65000,7)",
        "(65000,100)",
        "(65000, 1, 2)",
        "(65000, 7, 7)",
    ];
    assert!(
        wait_until(Duration::from_secs(10), || has_all(
            &lab.tor(Flavor::Bird).route(&web32),
            &web_comms
        )),
        "{web32} at the ToR lacks one of {web_comms:?}:\n{}",
        lab.tor(Flavor::Bird).route(&web32)
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
    // Without an annotation: the pool's and the configuration's
    // communities, not web's.
    let loc_route = lab.tor(Flavor::Bird).route(&loc32);
    assert!(
        has_all(&loc_route, &["(64999,1)", "(65000,7)", "(65000, 7, 7)"])
            && !loc_route.contains("(65000,100)")
            && !loc_route.contains("(65000, 1, 2)"),
        "{loc_route}"
    );

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
    // ... and says why, naming the holder.
    let get = lab.twillctl(&["get", "svc", "-n", "default"]);
    let get = String::from_utf8_lossy(&get.stdout).into_owned();
    let again_line = get
        .lines()
        .find(|l| l.starts_with("again"))
        .unwrap_or_default();
    assert!(
        again_line.contains("<pending>")
            && again_line.contains(&format!(
                "AddressTaken: requested address {web} is taken by Service default/web"
            )),
        "{get}"
    );

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

/// The next hops FRR has valid paths for exactly `prefix` (either family;
/// IPv6 link-local next hops left out).
fn frr_next_hops(lab: &Lab, prefix: &str) -> BTreeSet<String> {
    let fam = if prefix.contains(':') { "ipv6" } else { "ipv4" };
    let v: Value = serde_json::from_str(
        &lab.tor(Flavor::Frr)
            .cli(&["show", "bgp", fam, "unicast", "json"]),
    )
    .unwrap_or_default();
    v["routes"][prefix]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["valid"] == true)
        .flat_map(|p| p["nexthops"].as_array().cloned().unwrap_or_default())
        .filter(|nh| nh["scope"].as_str() != Some("link-local"))
        .filter_map(|nh| nh["ip"].as_str().map(str::to_string))
        .filter(|ip| !ip.starts_with("fe80"))
        .collect()
}

fn frr_table(lab: &Lab) -> String {
    lab.tor(Flavor::Frr).table()
}

/// Every node's LoadBalancer allocator lines (what each allocated and
/// released), for a failure message about a Service's address.
fn lb_logs(lab: &Lab, nodes: &[(String, String, String)]) -> String {
    nodes
        .iter()
        .map(|n| lab.log_lines(&n.0, "LoadBalancer address"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn patch_bgp(lab: &Lab, spec: &str) {
    let out = lab.twillctl(&[
        "patch",
        "bgpconfiguration",
        "default",
        "-p",
        &format!(r#"{{"spec":{spec}}}"#),
    ]);
    assert!(
        out.status.success(),
        "patch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An EndpointSlice for Service `svc` with one ready endpoint per node named.
fn slice_on(svc: &str, nodes: &[&str]) -> String {
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {svc}-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {svc}\naddressType: IPv4\nports:\n- {{port: 80, protocol: TCP}}\nendpoints:\n"
    );
    for (i, n) in nodes.iter().enumerate() {
        y += &format!(
            "- addresses: [10.244.201.{}]\n  conditions: {{ready: true}}\n  nodeName: {n}\n",
            i + 1
        );
    }
    if nodes.is_empty() {
        y = y.replace("endpoints:\n", "endpoints: []\n");
    }
    y
}

/// The same announcements through an FRR ToR on a dual-stack lab
/// (`lab up --dual-stack --tor frr`): a Cluster-policy LoadBalancer address
/// from every node, the cluster IP range from every node once
/// `serviceClusterIPs` names it, a RequireDualStack Service with one
/// address of each family both at the ToR (IPv6 via the nodes' IPv6
/// addresses), a Local-policy address following its endpoints as they
/// move and scale, and externalIPs inside `serviceExternalIPs` (and not one
/// outside).
#[test]
fn frr_tor_learns_service_addresses_on_both_families_and_follows_endpoints() {
    require_root();
    require_binary("/usr/lib/frr/bgpd", "frr");
    require_binary("/usr/lib/frr/zebra", "frr");
    require_binary("vtysh", "frr");
    let lab = Lab::up(&[
        "--nodes",
        "3",
        "--tor",
        "frr",
        "--pods-per-node",
        "1",
        "--dual-stack",
    ]);
    assert!(lab.up_ok, "{}", lab.up_output);
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = lab.state()["plan"]["nodes"].clone();
    let nodes: Vec<(String, String, String)> = plan
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            Some((
                n["name"].as_str()?.into(),
                n["addr"].as_str()?.into(),
                n["addr6"].as_str()?.into(),
            ))
        })
        .collect();
    assert_eq!(nodes.len(), 3, "{plan}");
    let all4: BTreeSet<String> = nodes.iter().map(|n| n.1.clone()).collect();
    let all6: BTreeSet<String> = nodes.iter().map(|n| n.2.clone()).collect();
    let (n1, n1_addr, _) = nodes[0].clone();
    let (n3, n3_addr, _) = nodes[2].clone();

    // A dual-stack store: cluster IPs of both families, LB pools of both.
    let out = lab.twillctl(&["datastore", "service-range", "10.96.0.0/12,fd00:96::/108"]);
    assert!(
        out.status.success(),
        "service-range: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    const LB6: &str = "fd00:251:7::/124";
    apply(
        &lab,
        dir.path(),
        "pools.yaml",
        &format!(
            "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: lb\nspec:\n  cidr: {LB_POOL}\n  allowedUses: [LoadBalancer]\n---\napiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: lb6\nspec:\n  cidr: {LB6}\n  allowedUses: [LoadBalancer]\n"
        ),
    );
    apply(
        &lab,
        dir.path(),
        "web.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Cluster\n  ports:\n  - {port: 80, protocol: TCP}\n",
    );
    let web32 = format!("{}/32", wait_ip(&lab, "web"));
    patch_bgp(
        &lab,
        &format!(r#"{{"serviceLoadBalancerIPs":[{{"cidr":"{LB_POOL}"}},{{"cidr":"{LB6}"}}]}}"#),
    );
    // Cluster policy: a path from every node (the ToR's kernel gets them as one ECMP route).
    assert!(
        wait_until(Duration::from_secs(15), || frr_next_hops(&lab, &web32)
            == all4),
        "the ToR should reach {web32} via every node {all4:?}, has {:?}\n{}\n{}\n{}",
        frr_next_hops(&lab, &web32),
        frr_table(&lab),
        service(&lab, "web"),
        lb_logs(&lab, &nodes)
    );
    // The cluster IP range is not announced until serviceClusterIPs names it.
    const RANGE: &str = "10.96.0.0/12";
    assert!(
        frr_next_hops(&lab, RANGE).is_empty(),
        "{RANGE} announced without serviceClusterIPs:\n{}",
        frr_table(&lab)
    );
    patch_bgp(
        &lab,
        &format!(
            r#"{{"serviceClusterIPs":[{{"cidr":"{RANGE}"}}],"serviceExternalIPs":[{{"cidr":"203.0.113.0/28"}}],"serviceLoadBalancerIPs":[{{"cidr":"{LB_POOL}"}},{{"cidr":"{LB6}"}}]}}"#
        ),
    );
    assert!(
        wait_until(Duration::from_secs(15), || frr_next_hops(&lab, RANGE)
            == all4),
        "the ToR should reach {RANGE} via every node, has {:?}\n{}",
        frr_next_hops(&lab, RANGE),
        frr_table(&lab)
    );

    // Dual stack: one address of each family, both at the ToR from every
    // node, the IPv6 one via the nodes' IPv6 addresses.
    apply(
        &lab,
        dir.path(),
        "dual.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: dual\n  namespace: default\nspec:\n  type: LoadBalancer\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  externalTrafficPolicy: Cluster\n  ports:\n  - {port: 443, protocol: TCP}\n",
    );
    let mut ips: Vec<String> = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            ips = service(&lab, "dual")["status"]["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["ip"].as_str().map(str::to_string))
                .collect();
            ips.len() == 2
        }),
        "dual got {ips:?}: {}",
        service(&lab, "dual")
    );
    let (v4, v6) = (&ips[0], &ips[1]);
    assert!(
        v4.parse::<std::net::Ipv4Addr>().is_ok() && v6.parse::<std::net::Ipv6Addr>().is_ok(),
        "{ips:?}"
    );
    assert!(
        LB6.parse::<ipnetwork::IpNetwork>()
            .is_ok_and(|n| n.contains(v6.parse().expect("an address"))),
        "{v6} is not from {LB6}"
    );
    let v6_128 = format!("{v6}/128");
    let v4_32 = format!("{v4}/32");
    assert!(
        wait_until(Duration::from_secs(15), || frr_next_hops(&lab, &v4_32)
            == all4
            && frr_next_hops(&lab, &v6_128) == all6),
        "the ToR should reach {v4_32} via {all4:?} and {v6_128} via {all6:?}; has {:?} and {:?}\n{}",
        frr_next_hops(&lab, &v4_32),
        frr_next_hops(&lab, &v6_128),
        frr_table(&lab)
    );

    // externalIPs: the one inside serviceExternalIPs from every node, the
    // one outside never.
    apply(
        &lab,
        dir.path(),
        "ext.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: ext\n  namespace: default\nspec:\n  externalIPs: [203.0.113.10, 198.51.100.20]\n  ports:\n  - {port: 80, protocol: TCP}\n",
    );
    assert!(
        wait_until(Duration::from_secs(15), || frr_next_hops(
            &lab,
            "203.0.113.10/32"
        ) == all4),
        "the ToR should reach 203.0.113.10/32 via every node, has {:?}\n{}",
        frr_next_hops(&lab, "203.0.113.10/32"),
        frr_table(&lab)
    );
    assert!(
        frr_next_hops(&lab, "198.51.100.20/32").is_empty(),
        "an externalIP outside serviceExternalIPs is announced:\n{}",
        frr_table(&lab)
    );

    // Local policy follows the endpoints: ready on n1 → only n1; moved to
    // n3 → n1 withdraws and n3 announces; scaled to n1 and n3 → both;
    // scaled to none → withdrawn.
    apply(
        &lab,
        dir.path(),
        "mover.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: mover\n  namespace: default\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  ports:\n  - {port: 80, protocol: TCP}\n",
    );
    let mover32 = format!("{}/32", wait_ip(&lab, "mover"));
    let steps: [(&[&str], BTreeSet<String>); 4] = [
        (&[n1.as_str()], [n1_addr.clone()].into()),
        (&[n3.as_str()], [n3_addr.clone()].into()),
        (
            &[n1.as_str(), n3.as_str()],
            [n1_addr.clone(), n3_addr.clone()].into(),
        ),
        (&[], BTreeSet::new()),
    ];
    for (i, (on, want)) in steps.iter().enumerate() {
        apply(
            &lab,
            dir.path(),
            &format!("slice{i}.yaml"),
            &slice_on("mover", on),
        );
        assert!(
            wait_until(Duration::from_secs(15), || frr_next_hops(&lab, &mover32)
                == *want),
            "endpoints on {on:?}: the ToR should reach {mover32} via {want:?}, has {:?}\n{}",
            frr_next_hops(&lab, &mover32),
            frr_table(&lab)
        );
        // NodeStatus follows the announcement (before the status interval).
        let n1_lists = on.contains(&n1.as_str());
        assert!(
            wait_until(Duration::from_secs(5), || node_service_prefixes(&lab, &n1)
                .contains(&mover32)
                == n1_lists),
            "{n1} servicePrefixes {:?} (endpoints on {on:?})",
            node_service_prefixes(&lab, &n1)
        );
    }
    // The Cluster-policy addresses stayed where they were throughout.
    assert_eq!(frr_next_hops(&lab, &web32), all4);
    assert_eq!(frr_next_hops(&lab, &v6_128), all6);
}

fn ctl(db: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(twill_tests::bins::binary("twillctl"))
        .arg("--path")
        .arg(db)
        .args(args)
        .output()
        .expect("run twillctl")
}

/// NodeStatus `servicePrefixes` follows what the node announces within
/// seconds, not at the next status report: twill-node runs with a
/// 120-second status interval, and the prefix appears when
/// `serviceLoadBalancerIPs` starts naming it and goes when the Service is
/// deleted (before either, the same status lists nothing).
#[test]
fn node_status_service_prefixes_follow_the_announcement_not_the_interval() {
    require_root();
    let tmp = tempfile::tempdir().expect("temp dir");
    let db = tmp.path().join("store.db");
    twill_tests::bins::twillctl_apply(
        &db,
        &format!(
            "apiVersion: twill.dev/v1\nkind: BGPConfiguration\nmetadata: {{name: default}}\nspec: {{asNumber: 65001, nodeToNodeMeshEnabled: false}}\n---\napiVersion: twill.dev/v1\nkind: IPPool\nmetadata: {{name: lb}}\nspec: {{cidr: {LB_POOL}, allowedUses: [LoadBalancer]}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  type: LoadBalancer\n  ports:\n  - {{port: 80, protocol: TCP}}\n"
        ),
    );
    let node = twill_tests::TestNode::start(
        "tsvN",
        "n1",
        &db,
        tmp.path(),
        "10.98.3.1/32",
        &["--node-address", "10.98.3.1/32", "--status-interval", "120"],
    );
    let prefixes = || -> Option<BTreeSet<String>> {
        let out = ctl(&db, &["node", "status", "n1", "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v.get("status")?;
        Some(
            v["status"]["servicePrefixes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect(),
        )
    };
    let ip = || -> Option<String> {
        let out = ctl(
            &db,
            &["get", "service", "web", "-n", "default", "-o", "json"],
        );
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["status"]["loadBalancer"]["ingress"][0]["ip"]
            .as_str()
            .map(str::to_string)
    };
    assert!(
        wait_until(Duration::from_secs(20), || prefixes().is_some()
            && ip().is_some()),
        "no first NodeStatus or no LoadBalancer address:\n{}",
        node.log()
    );
    let web32 = format!("{}/32", ip().unwrap_or_default());
    // Not announced: nothing configured.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(prefixes(), Some(BTreeSet::new()));
    let out = ctl(
        &db,
        &[
            "patch",
            "bgpconfiguration",
            "default",
            "-p",
            &format!(r#"{{"spec":{{"serviceLoadBalancerIPs":[{{"cidr":"{LB_POOL}"}}]}}}}"#),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: BTreeSet<String> = [web32.clone()].into();
    assert!(
        wait_until(Duration::from_secs(10), || prefixes().as_ref()
            == Some(&listed)),
        "servicePrefixes {:?}, want {listed:?} well before the 120 s interval:\n{}",
        prefixes(),
        node.log()
    );
    let out = ctl(&db, &["delete", "service", "web", "-n", "default"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(10), || prefixes()
            == Some(BTreeSet::new())),
        "servicePrefixes {:?} after the delete:\n{}",
        prefixes(),
        node.log()
    );
}
