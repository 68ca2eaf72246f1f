//! twill-bgpd as a route reflector (RFC 4456) for three iBGP clients, each
//! a GoBGP in its own namespace: every client learns the other two clients'
//! routes (with ORIGINATOR_ID and our CLUSTER_LIST), nobody gets its own
//! route back, and no route loops.

use std::time::Duration;

use twill_tests::peers::{Peer, TwillBgpd};
use twill_tests::{Netns, require_root, veth_between, wait_until};

#[test]
fn bgp_route_reflector_with_three_clients() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let rr = Netns::new("trrR");
    let mut clients = Vec::new();
    let mut yaml = String::new();
    for i in 1..=3u8 {
        let ns = Netns::new(&format!("trr{i}"));
        veth_between(
            &rr,
            &format!("c{i}"),
            &format!("10.97.{i}.1/30"),
            &ns,
            "rr0",
            &format!("10.97.{i}.2/30"),
        );
        yaml.push_str(&format!(
            "  - {{ address: 10.97.{i}.2, asn: 65001, hold_time: 9, connect_retry: 2, families: [ipv4], kind: node, route_reflector_client: true }}\n"
        ));
        clients.push(ns);
    }
    let mut gobgps = Vec::new();
    for (i, ns) in clients.iter().enumerate() {
        let n = i as u8 + 1;
        // An iBGP client (AS 65001) of the reflector, announcing 10.70.N.0/24.
        let g = Peer::gobgp()
            .asn(65001)
            .router_id(&format!("10.97.{n}.2"))
            .neighbor(&format!("10.97.{n}.2"), &format!("10.97.{n}.1"), 65001)
            .announce(&[&format!("10.70.{n}.0/24")])
            .api_port(50060 + u16::from(n))
            .start(ns, &tmp.path().join(format!("g{n}")));
        gobgps.push(g);
    }
    let dir = tmp.path().join("twill");
    std::fs::create_dir_all(&dir).unwrap();
    let t = TwillBgpd::start(
        &rr,
        &dir,
        &format!(
            "asn: 65001\nrouter_id: 10.97.0.1\ncluster_id: 10.97.0.1\nstatus_socket: {}\nneighbors:\n{yaml}",
            TwillBgpd::socket_for(&dir).display()
        ),
    );
    assert!(
        wait_until(Duration::from_secs(20), || (1..=3)
            .all(|i| t.established(&format!("10.97.{i}.2")))),
        "{}\n{}",
        t.status_table(),
        t.log_tail()
    );
    for (i, g) in gobgps.iter().enumerate() {
        let me = i + 1;
        let others: Vec<String> = (1..=3)
            .filter(|j| *j != me)
            .map(|j| format!("10.70.{j}.0/24"))
            .collect();
        assert!(
            wait_until(Duration::from_secs(15), || {
                let rib = g.cli(&["global", "rib"]);
                others.iter().all(|p| rib.contains(p.as_str()))
            }),
            "client {me} did not learn {others:?}:\n{}\n{}",
            g.cli(&["global", "rib"]),
            t.log_tail()
        );
        // Reflected with ORIGINATOR_ID (the other client) and our cluster.
        let detail = g.cli(&["global", "rib", &others[0], "-j"]);
        // (GoBGP's JSON lists attributes by type: 9 ORIGINATOR_ID, 10 CLUSTER_LIST.)
        assert!(
            detail.contains("\"type\":9") && detail.contains("\"type\":10"),
            "no ORIGINATOR_ID / CLUSTER_LIST: {detail}"
        );
        // Its own route does not come back from the reflector.
        let adj_in = g.cli(&["neighbor", &format!("10.97.{me}.1"), "adj-in"]);
        assert!(
            !adj_in.contains(&format!("10.70.{me}.0/24")),
            "client {me} got its own route back:\n{adj_in}"
        );
        assert_eq!(
            adj_in.matches("10.70.").count(),
            2,
            "client {me}: each other route exactly once:\n{adj_in}"
        );
    }
    // The reflector itself holds all three, once each.
    let routes = t.routes();
    for n in 1..=3 {
        let p = format!("10.70.{n}.0/24");
        assert_eq!(
            routes.iter().filter(|(q, _)| *q == p).count(),
            1,
            "{routes:?}"
        );
    }
}
