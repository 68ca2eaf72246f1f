//! twill-bgpd against FRR (bgpd, checked with vtysh) and GoBGP (checked with
//! the gobgp CLI), each as an eBGP ToR and as an iBGP peer: one session over
//! IPv4 for IPv4 routes and one over IPv6 for IPv6 routes, routes both ways.

use std::time::{Duration, Instant};

use twill_tests::peers::{Frr, Gobgp, TwillBgpd, add_v6};
use twill_tests::{Netns, require_root, veth_between, wait_until};

struct Lab {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    tor: Netns,
    node: Netns,
}

fn lab(prefix: &str) -> Lab {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let tor = Netns::new(&format!("{prefix}T"));
    let node = Netns::new(&format!("{prefix}N"));
    veth_between(&tor, "tor0", "10.96.0.1/30", &node, "node0", "10.96.0.2/30");
    add_v6(&tor, "fd96::1/64", "tor0");
    add_v6(&node, "fd96::2/64", "node0");
    Lab {
        _tmp: tmp,
        dir,
        tor,
        node,
    }
}

fn twill(l: &Lab, peer_asn: u32) -> TwillBgpd {
    let dir = l.dir.join("twill");
    std::fs::create_dir_all(&dir).unwrap();
    let yaml = format!(
        r#"
asn: 65001
router_id: 10.96.0.2
listen_address: "::"
status_socket: {sock}
networks: [10.1.0.0/24, "fd00:1::/64"]
neighbors:
  - {{ address: 10.96.0.1, asn: {peer_asn}, hold_time: 9, connect_retry: 2, families: [ipv4] }}
  - {{ address: "fd96::1", asn: {peer_asn}, hold_time: 9, connect_retry: 2, families: [ipv6] }}
"#,
        sock = TwillBgpd::socket_for(&dir).display()
    );
    TwillBgpd::start(&l.node, &dir, &yaml)
}

/// Waits for both sessions and the routes in both directions on our side.
fn check_ours(t: &TwillBgpd, what: &str, peer_view: impl Fn() -> String) {
    let t0 = Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), || t.established("10.96.0.1")
            && t.established("fd96::1")),
        "{what}: sessions did not establish:\n{}\n{}\n{}",
        t.status_table(),
        peer_view(),
        t.log_tail()
    );
    eprintln!("{what}: Established after {:?}", t0.elapsed());
    assert!(
        wait_until(Duration::from_secs(15), || t.has_route("10.60.0.0/24")
            && t.has_route("fd60::/64")),
        "{what}: we did not learn the peer's routes: {:?}\n{}",
        t.routes(),
        t.log_tail()
    );
    let routes = t.routes();
    let nh4 = &routes.iter().find(|(p, _)| p == "10.60.0.0/24").unwrap().1;
    assert_eq!(nh4, &vec!["10.96.0.1".to_string()], "{what}");
}

fn frr_conf(asn: u32) -> String {
    format!(
        r#"hostname tor
router bgp {asn}
 bgp router-id 10.96.0.1
 no bgp ebgp-requires-policy
 no bgp network import-check
 no bgp default ipv4-unicast
 timers bgp 3 9
 neighbor 10.96.0.2 remote-as 65001
 neighbor 10.96.0.2 timers connect 2
 neighbor fd96::2 remote-as 65001
 neighbor fd96::2 timers connect 2
 address-family ipv4 unicast
  network 10.60.0.0/24
  neighbor 10.96.0.2 activate
 exit-address-family
 address-family ipv6 unicast
  network fd60::/64
  neighbor fd96::2 activate
 exit-address-family
"#
    )
}

fn frr_case(prefix: &str, asn: u32) {
    let l = lab(prefix);
    let frr = Frr::start(&l.tor, &l.dir.join("frr"), &frr_conf(asn), "10.96.0.1");
    let t = twill(&l, asn);
    let what = if asn == 65001 { "FRR iBGP" } else { "FRR eBGP" };
    check_ours(&t, what, || frr.vtysh("show bgp summary"));
    assert!(
        wait_until(Duration::from_secs(15), || {
            frr.vtysh("show bgp ipv4 unicast 10.1.0.0/24")
                .contains("10.96.0.2")
                && frr
                    .vtysh("show bgp ipv6 unicast fd00:1::/64")
                    .contains("fd96::2")
        }),
        "{what}: FRR did not learn our routes:\n{}\n{}",
        frr.vtysh("show bgp ipv4 unicast"),
        frr.vtysh("show bgp ipv6 unicast")
    );
    let r = frr.vtysh("show bgp ipv4 unicast 10.1.0.0/24");
    if asn == 65001 {
        assert!(r.contains("Local") || r.contains("internal"), "{r}");
    } else {
        assert!(r.contains("65001"), "{r}");
    }
}

#[test]
fn bgp_frr_ebgp_tor() {
    frr_case("tfe", 65000);
}

#[test]
fn bgp_frr_ibgp() {
    frr_case("tfi", 65001);
}

fn gobgp_conf(asn: u32) -> String {
    format!(
        r#"
[global.config]
  as = {asn}
  router-id = "10.96.0.1"
  local-address-list = ["10.96.0.1", "fd96::1"]

[[neighbors]]
  [neighbors.config]
    neighbor-address = "10.96.0.2"
    peer-as = 65001
  [neighbors.timers.config]
    connect-retry = 2
    hold-time = 9
    keepalive-interval = 3
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"

[[neighbors]]
  [neighbors.config]
    neighbor-address = "fd96::2"
    peer-as = 65001
  [neighbors.timers.config]
    connect-retry = 2
    hold-time = 9
    keepalive-interval = 3
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
"#
    )
}

fn gobgp_case(prefix: &str, asn: u32, api_port: u16) {
    let l = lab(prefix);
    let g = Gobgp::start(&l.tor, &l.dir.join("gobgp"), &gobgp_conf(asn), api_port);
    assert!(
        wait_until(Duration::from_secs(10), || !g.cli(&["global"]).is_empty()),
        "gobgpd API did not come up"
    );
    g.cli(&["global", "rib", "add", "10.60.0.0/24"]);
    g.cli(&["global", "rib", "-a", "ipv6", "add", "fd60::/64"]);
    let t = twill(&l, asn);
    let what = if asn == 65001 {
        "GoBGP iBGP"
    } else {
        "GoBGP eBGP"
    };
    check_ours(&t, what, || g.cli(&["neighbor"]));
    assert!(
        wait_until(Duration::from_secs(15), || {
            g.cli(&["global", "rib", "10.1.0.0/24"])
                .contains("10.96.0.2")
                && g.cli(&["global", "rib", "-a", "ipv6", "fd00:1::/64"])
                    .contains("fd96::2")
        }),
        "{what}: GoBGP did not learn our routes:\n{}\n{}",
        g.cli(&["global", "rib"]),
        g.cli(&["global", "rib", "-a", "ipv6"])
    );
    if asn != 65001 {
        let r = g.cli(&["global", "rib", "10.1.0.0/24"]);
        assert!(r.contains("65001"), "{r}");
    }
}

#[test]
fn bgp_gobgp_ebgp_tor() {
    gobgp_case("tge", 65000, 50051);
}

#[test]
fn bgp_gobgp_ibgp() {
    gobgp_case("tgi", 65001, 50052);
}
