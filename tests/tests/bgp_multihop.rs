//! eBGP multihop: BIRD and twill-bgpd two hops apart (a router namespace in
//! between). With `multihop: 2` the session comes up and routes flow; with
//! the eBGP default TTL 1 our packets die at the router.

use std::time::Duration;

use twill_tests::peers::{Peer, TwillBgpd};
use twill_tests::{Netns, require_root, veth_between, wait_until};

struct Hops {
    tmp: tempfile::TempDir,
    tor: Netns,
    node: Netns,
    _router: Netns,
}

fn hops(prefix: &str) -> Hops {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let tor = Netns::new(&format!("{prefix}T"));
    let router = Netns::new(&format!("{prefix}R"));
    let node = Netns::new(&format!("{prefix}N"));
    veth_between(&tor, "r0", "10.96.0.1/30", &router, "tor0", "10.96.0.2/30");
    veth_between(
        &router,
        "node0",
        "10.98.0.1/30",
        &node,
        "r0",
        "10.98.0.2/30",
    );
    router.sysctl("net.ipv4.ip_forward", "1");
    tor.ip(&["route", "add", "10.98.0.0/30", "via", "10.96.0.2"]);
    node.ip(&["route", "add", "10.96.0.0/30", "via", "10.98.0.1"]);
    assert!(node.ping("10.96.0.1"), "no path across the router");
    Hops {
        tmp,
        tor,
        node,
        _router: router,
    }
}

/// BIRD (AS 65000, multihop 2 towards 10.98.0.2) and us, whose neighbour
/// gets the YAML keys `multihop`.
fn start(h: &Hops, multihop: &str) -> (Peer, TwillBgpd) {
    let bird = Peer::bird()
        .neighbor("10.96.0.1", "10.98.0.2", 65001)
        .multihop(2)
        .next_hop_self()
        .announce(&["10.60.0.0/24"])
        .start(&h.tor, &h.tmp.path().join("bird"));
    let td = h.tmp.path().join("twill");
    std::fs::create_dir_all(&td).unwrap();
    let twill = TwillBgpd::start(
        &h.node,
        &td,
        &format!(
            "asn: 65001\nrouter_id: 10.98.0.2\nlisten_address: 10.98.0.2\nstatus_socket: {}\nnetworks: [10.1.0.0/24]\nneighbors:\n  - {{ address: 10.96.0.1, asn: 65000, connect_retry: 2, families: [ipv4] {multihop} }}\n",
            TwillBgpd::socket_for(&td).display()
        ),
    );
    (bird, twill)
}

#[test]
fn bgp_ebgp_multihop_across_a_router() {
    let h = hops("tmh");
    let (bird, t) = start(&h, ", multihop: 2");
    assert!(
        wait_until(Duration::from_secs(20), || t.established("10.96.0.1")),
        "{}\n{}\n{}",
        t.status_table(),
        bird.session_view("10.98.0.2"),
        t.log_tail()
    );
    assert!(wait_until(Duration::from_secs(10), || t.has_route("10.60.0.0/24")));
    assert!(wait_until(Duration::from_secs(10), || bird
        .has_route_via("10.1.0.0/24", "10.98.0.2")));
}

#[test]
fn bgp_ebgp_without_multihop_does_not_cross_a_router() {
    let h = hops("tmn");
    let (bird, t) = start(&h, "");
    let up = wait_until(Duration::from_secs(8), || {
        t.established("10.96.0.1") || bird.established("10.98.0.2")
    });
    assert!(!up, "a TTL-1 eBGP session crossed a router");
}
