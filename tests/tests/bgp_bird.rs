//! twill-bgpd against BIRD 2 as an eBGP ToR, in two namespaces joined by a
//! veth: one session over IPv4 and one over IPv6; routes both ways, checked
//! with birdc (and BIRD's kernel table) on the ToR and with
//! `twill-bgpd status` / `routes` on ours.

use std::time::{Duration, Instant};

use twill_tests::peers::{NODE4, NODE6, Peer, TorLink, TwillBgpd};
use twill_tests::wait_until;

fn twill_conf(dir: &std::path::Path) -> String {
    format!(
        r#"
asn: 65001
router_id: 10.96.0.2
listen_address: "::"
status_socket: {sock}
metrics_address: 127.0.0.1:9179
networks: [10.1.0.0/24, "fd00:1::/64"]
neighbors:
  - address: 10.96.0.1
    asn: 65000
    hold_time: 9
    connect_retry: 2
    families: [ipv4]
    import: {{ default: accept }}
  - address: "fd96::1"
    asn: 65000
    hold_time: 9
    connect_retry: 2
    families: [ipv6]
"#,
        sock = TwillBgpd::socket_for(dir).display()
    )
}

#[test]
fn bgp_bird_ebgp_tor_routes_both_ways_ipv4_and_ipv6() {
    let l = TorLink::new("tb");
    let (tor, node) = (&l.tor, &l.node);
    let twill_dir = l.dir("twill");
    let t0 = Instant::now();
    // AS 65000, one session per family, BGP routes into its kernel table.
    let bird = l.peer(
        Peer::bird()
            .ipv4(65001)
            .ipv6(65001)
            .announce(&["10.60.0.0/24", "10.60.1.0/24", "fd60::/64"])
            .kernel_export(),
    );
    let twill = TwillBgpd::start(node, &twill_dir, &twill_conf(&twill_dir));

    let up = wait_until(Duration::from_secs(20), || {
        twill.established("10.96.0.1") && twill.established("fd96::1")
    });
    assert!(
        up,
        "sessions did not establish:\n{}\n{}\n{}",
        twill.status_table(),
        bird.sessions(),
        twill.log_tail()
    );
    eprintln!("both sessions Established after {:?}", t0.elapsed());
    assert!(bird.established(NODE4) && bird.established(NODE6));

    // Ours -> BIRD, seen by birdc and in BIRD's kernel table.
    assert!(
        wait_until(Duration::from_secs(10), || {
            bird.has_route_via("10.1.0.0/24", NODE4) && bird.has_route_via("fd00:1::/64", NODE6)
        }),
        "BIRD did not learn our routes:\n{}",
        bird.table()
    );
    let k4 = tor.ip(&["route", "show", "10.1.0.0/24"]);
    assert!(k4.contains("via 10.96.0.2"), "BIRD kernel table: {k4}");
    let k6 = tor.ip(&["-6", "route", "show", "fd00:1::/64"]);
    assert!(k6.contains("via fd96::2"), "BIRD kernel table: {k6}");
    let path = bird.route("10.1.0.0/24");
    assert!(path.contains("BGP.as_path: 65001"), "{path}");

    // BIRD -> ours.
    assert!(
        wait_until(Duration::from_secs(10), || {
            twill.has_route("10.60.0.0/24")
                && twill.has_route("10.60.1.0/24")
                && twill.has_route("fd60::/64")
        }),
        "we did not learn BIRD's routes: {:?}\n{}",
        twill.routes(),
        twill.log_tail()
    );
    let routes = twill.routes();
    let nh = &routes.iter().find(|(p, _)| p == "10.60.0.0/24").unwrap().1;
    assert_eq!(nh, &vec!["10.96.0.1".to_string()]);
    let p4 = twill.peer("10.96.0.1").unwrap();
    assert_eq!(p4["received"], 2, "{p4}");
    assert_eq!(p4["accepted"], 2, "{p4}");
    assert_eq!(p4["advertised"], 1, "{p4}");
    let table = twill.status_table();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("10.96.0.1") && l.contains("Established")),
        "{table}"
    );

    // BIRD asks for a route refresh: we answer with the full Adj-RIB-Out.
    let updates_out = |m: &str| -> u64 {
        m.lines()
            .find(|l| {
                l.starts_with("twill_bgp_messages_total")
                    && l.contains("peer=\"10.96.0.1\"")
                    && l.contains("direction=\"out\"")
                    && l.contains("kind=\"update\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let before = updates_out(&twill.metrics());
    bird.cli(&["reload", "in", "twill4"]);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let m = twill.metrics();
            m.contains("kind=\"route_refresh\"") && updates_out(&m) > before
        }),
        "no answer to ROUTE-REFRESH:\n{}",
        twill.metrics()
    );
    assert!(bird.established(NODE4), "route refresh reset the session");
    // The same metrics over HTTP for Prometheus, inside the node namespace
    // (bash's /dev/tcp: no HTTP client needed).
    let scrape = node.exec_ok(
        "bash",
        &[
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/9179; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3",
        ],
    );
    assert!(scrape.starts_with("HTTP/1.0 200 OK"), "{scrape}");
    assert!(
        scrape.contains("twill_bgp_peer_state{peer=\"10.96.0.1\"} 6"),
        "{scrape}"
    );

    // A withdrawal on BIRD's side reaches us.
    // s4: the builder's static protocol for the IPv4 prefixes.
    bird.cli(&["disable", "s4"]);
    assert!(
        wait_until(Duration::from_secs(10), || !twill.has_route("10.60.0.0/24")),
        "withdrawal not seen: {:?}",
        twill.routes()
    );
    assert!(
        twill.has_route("fd60::/64"),
        "the IPv6 session was disturbed"
    );
    drop(twill);
    drop(bird);
}
