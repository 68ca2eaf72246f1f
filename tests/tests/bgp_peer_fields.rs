//! BGPPeer fields that used to be accepted and ignored, through twill-node
//! and a real BIRD peer one router away (BIRD — router namespace with
//! forwarding — twill-node):
//! * `ttlSecurity: N` is GTSM with hop count N (RFC 5082: send TTL 255,
//!   accept TTL ≥ 256 − N). BIRD (`ttl security on; multihop 2`) is two
//!   hops away, its packets arrive with TTL 254: N=1 never establishes and
//!   the log names the GTSM refusal; N=2, in the same set-up, establishes.
//! * `password.namespace` unset: the Secret is read from the namespace
//!   twill-node runs in (POD_NAMESPACE, here `bgp-secrets`), not a
//!   hard-coded twill-system; BIRD requires the MD5 password, so the
//!   session coming up proves the Secret was found.

use std::time::Duration;

use twill_tests::bins::twillctl_apply;
use twill_tests::peers::Peer;
use twill_tests::{Netns, TestNode, require_root, veth_between, wait_until};

const BGP_CONFIG: &str = r#"
apiVersion: twill.dev/v1
kind: BGPConfiguration
metadata: {name: default}
spec: {asNumber: 65001, nodeToNodeMeshEnabled: false}
---
apiVersion: v1
kind: Secret
metadata: {name: tor-password, namespace: bgp-secrets}
data: {password: dHdvLWhvcC1TZWNyZXQ=}
"#;

fn peer(ttl_security: u8) -> String {
    format!(
        r#"
apiVersion: twill.dev/v1
kind: BGPPeer
metadata: {{name: tor}}
spec:
  peerIP: 10.96.0.1
  asNumber: 65000
  holdTime: 9
  ttlSecurity: {ttl_security}
  password: {{name: tor-password, key: password}}
"#
    )
}

#[test]
fn bgppeer_ttl_security_is_a_hop_count_and_the_secret_namespace_is_our_own() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("store.db");
    twillctl_apply(&db, BGP_CONFIG);
    twillctl_apply(&db, &peer(1));

    let tor = Netns::new("tgsT");
    let router = Netns::new("tgsR");
    veth_between(&tor, "r0", "10.96.0.1/30", &router, "tor0", "10.96.0.2/30");
    router.sysctl("net.ipv4.ip_forward", "1");
    // twill-node retries the node address until the link below exists.
    let node = TestNode::start_with_env(
        "tgsN",
        "n1",
        &db,
        tmp.path(),
        "10.98.1.1/32",
        &["--node-address", "10.98.0.0/30"],
        &[("POD_NAMESPACE", "bgp-secrets")],
    );
    veth_between(
        &router,
        "node0",
        "10.98.0.1/30",
        &node.ns,
        "r0",
        "10.98.0.2/30",
    );
    tor.ip(&["route", "add", "10.98.0.0/30", "via", "10.96.0.2"]);
    node.ns
        .ip(&["route", "add", "10.96.0.0/30", "via", "10.98.0.1"]);
    assert!(node.ns.ping("10.96.0.1"), "no path across the router");

    // BIRD two hops away with GTSM and the MD5 password of the Secret.
    let bird = Peer::bird()
        .neighbor("10.96.0.1", "10.98.0.2", 65001)
        .name("tor")
        .multihop(2)
        .ttl_security()
        .password("two-hop-Secret")
        .next_hop_self()
        .announce(&["10.60.0.0/24"])
        .start(&tor, &tmp.path().join("bird"));

    // ttlSecurity 1: a direct peer only. BIRD's packets arrive with TTL 254.
    let up = wait_until(Duration::from_secs(12), || bird.established("10.98.0.2"));
    assert!(
        !up,
        "ttlSecurity 1 let a peer two hops away in:\n{}",
        node.log()
    );
    assert!(
        wait_until(Duration::from_secs(10), || node
            .log()
            .contains("arrived with TTL 254 (needs 255 or more)")),
        "the GTSM refusal is not logged:\n{}\n{}",
        node.log(),
        bird.session_view("10.98.0.2")
    );
    assert!(
        !node
            .log()
            .contains("Secret bgp-secrets/tor-password does not exist"),
        "{}",
        node.log()
    );

    // ttlSecurity 2: one router between us is allowed.
    twillctl_apply(&db, &peer(2));
    assert!(
        wait_until(Duration::from_secs(40), || bird.established("10.98.0.2")),
        "ttlSecurity 2 did not establish with a peer two hops away:\n{}\n{}",
        bird.session_view("10.98.0.2"),
        node.log()
    );
    // And it stays up (keepalives pass the TTL check too).
    std::thread::sleep(Duration::from_secs(12));
    let b = bird.session_view("10.98.0.2");
    assert!(b.contains("Established"), "{b}");
}
