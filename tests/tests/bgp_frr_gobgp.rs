//! twill-bgpd against FRR (bgpd, checked with vtysh) and GoBGP (checked with
//! the gobgp CLI), each as an eBGP ToR and as an iBGP peer: one session over
//! IPv4 for IPv4 routes and one over IPv6 for IPv6 routes, routes both ways.

use std::time::{Duration, Instant};

use twill_tests::peers::{Flavor, NODE4, NODE6, Peer, PeerBuilder, TorLink, TwillBgpd};
use twill_tests::wait_until;

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

/// The ToR in AS `asn` (65001 makes it iBGP), one session per family to
/// the node in AS 65001, announcing 10.60.0.0/24 and fd60::/64.
fn tor(b: PeerBuilder, asn: u32) -> PeerBuilder {
    b.asn(asn)
        .ipv4(65001)
        .ipv6(65001)
        .announce(&["10.60.0.0/24", "fd60::/64"])
}

/// One case: the ToR up, then us; both sides learn the other's routes, and
/// the ToR sees our AS in the path over eBGP (or an internal route over iBGP).
fn case(prefix: &str, peer: PeerBuilder, asn: u32) {
    let l = TorLink::new(prefix);
    let flavor = if asn == 65001 { "iBGP" } else { "eBGP" };
    let p = l.peer(tor(peer, asn));
    let what = format!("{} {flavor}", p.flavor.name());
    let t = l.twill_dual(asn, 9, "", "");
    check_ours(&t, &what, || p.sessions());
    assert!(
        wait_until(Duration::from_secs(15), || {
            p.has_route_via("10.1.0.0/24", NODE4) && p.has_route_via("fd00:1::/64", NODE6)
        }),
        "{what}: the ToR did not learn our routes:\n{}",
        p.table()
    );
    let r = p.route("10.1.0.0/24");
    if asn == 65001 {
        if p.flavor == Flavor::Frr {
            assert!(r.contains("Local") || r.contains("internal"), "{r}");
        }
    } else {
        assert!(r.contains("65001"), "{r}");
    }
}

fn frr_case(prefix: &str, asn: u32) {
    case(prefix, Peer::frr(), asn);
}

#[test]
fn bgp_frr_ebgp_tor() {
    frr_case("tfe", 65000);
}

#[test]
fn bgp_frr_ibgp() {
    frr_case("tfi", 65001);
}

fn gobgp_case(prefix: &str, asn: u32, api_port: u16) {
    case(prefix, Peer::gobgp().api_port(api_port), asn);
}

#[test]
fn bgp_gobgp_ebgp_tor() {
    gobgp_case("tge", 65000, 50051);
}

#[test]
fn bgp_gobgp_ibgp() {
    gobgp_case("tgi", 65001, 50052);
}
