//! twill-bgpd against BIRD 2 as an eBGP ToR, in two namespaces joined by a
//! veth: one session over IPv4 and one over IPv6; routes both ways, checked
//! with birdc (and BIRD's kernel table) on the ToR and with
//! `twill-bgpd status` / `routes` on ours.

use std::time::{Duration, Instant};

use twill_tests::peers::{Bird, TwillBgpd, add_v6};
use twill_tests::{Netns, require_root, veth_between, wait_until};

fn bird_conf(dir: &std::path::Path) -> String {
    format!(
        r#"
log "{dir}/bird.log" all;
router id 10.96.0.1;
protocol device {{ }}
protocol static s4 {{ ipv4; route 10.60.0.0/24 blackhole; route 10.60.1.0/24 blackhole; }}
protocol static s6 {{ ipv6; route fd60::/64 blackhole; }}
protocol kernel k4 {{ ipv4 {{ export where source = RTS_BGP; }}; }}
protocol kernel k6 {{ ipv6 {{ export where source = RTS_BGP; }}; }}
template bgp tw {{
  local as 65000;
  hold time 9;
  connect retry time 2;
  connect delay time 1;
  error wait time 1, 5;
}}
protocol bgp twill4 from tw {{
  local 10.96.0.1 as 65000;
  neighbor 10.96.0.2 as 65001;
  ipv4 {{ import all; export all; }};
}}
protocol bgp twill6 from tw {{
  local fd96::1 as 65000;
  neighbor fd96::2 as 65001;
  ipv6 {{ import all; export all; }};
}}
"#,
        dir = dir.display()
    )
}

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
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let tor = Netns::new("tbB");
    let node = Netns::new("tbN");
    veth_between(&tor, "tor0", "10.96.0.1/30", &node, "node0", "10.96.0.2/30");
    add_v6(&tor, "fd96::1/64", "tor0");
    add_v6(&node, "fd96::2/64", "node0");

    let bird_dir = tmp.path().join("bird");
    let twill_dir = tmp.path().join("twill");
    std::fs::create_dir_all(&bird_dir).unwrap();
    std::fs::create_dir_all(&twill_dir).unwrap();
    let t0 = Instant::now();
    let bird = Bird::start(&tor, &bird_dir, &bird_conf(&bird_dir));
    let twill = TwillBgpd::start(&node, &twill_dir, &twill_conf(&twill_dir));

    let up = wait_until(Duration::from_secs(20), || {
        twill.established("10.96.0.1") && twill.established("fd96::1")
    });
    assert!(
        up,
        "sessions did not establish:\n{}\n{}\n{}",
        twill.status_table(),
        bird.birdc(&["show", "protocols", "all"]),
        twill.log_tail()
    );
    eprintln!("both sessions Established after {:?}", t0.elapsed());
    assert!(bird.established("twill4") && bird.established("twill6"));

    // Ours -> BIRD, seen by birdc and in BIRD's kernel table.
    assert!(
        wait_until(Duration::from_secs(10), || {
            bird.birdc(&["show", "route", "10.1.0.0/24"])
                .contains("10.96.0.2")
                && bird
                    .birdc(&["show", "route", "fd00:1::/64"])
                    .contains("fd96::2")
        }),
        "BIRD did not learn our routes:\n{}",
        bird.birdc(&["show", "route", "all"])
    );
    let k4 = tor.ip(&["route", "show", "10.1.0.0/24"]);
    assert!(k4.contains("via 10.96.0.2"), "BIRD kernel table: {k4}");
    let k6 = tor.ip(&["-6", "route", "show", "fd00:1::/64"]);
    assert!(k6.contains("via fd96::2"), "BIRD kernel table: {k6}");
    let path = bird.birdc(&["show", "route", "10.1.0.0/24", "all"]);
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
    bird.birdc(&["reload", "in", "twill4"]);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let m = twill.metrics();
            m.contains("kind=\"route_refresh\"") && updates_out(&m) > before
        }),
        "no answer to ROUTE-REFRESH:\n{}",
        twill.metrics()
    );
    assert!(
        bird.established("twill4"),
        "route refresh reset the session"
    );
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
    bird.birdc(&["disable", "s4"]);
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
