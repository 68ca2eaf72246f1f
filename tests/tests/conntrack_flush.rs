//! twill-node's conntrack flush against the real kernel: UDP through a
//! DNAT (what a Service frontend is) sticks to its endpoint while the
//! conntrack entry lives, even after the DNAT changed; the flush deletes
//! exactly the entries of the gone endpoint, after which the same client
//! socket reaches the new endpoint at once, and an unrelated frontend's
//! entry (and its traffic) stays.
//!
//! The same on the IPv6 path (an IPv6 dump and delete over ctnetlink):
//! `ipv6_flush_moves_udp_to_the_new_endpoint_and_keeps_other_entries`.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use twill_felix::dataplane::conntrack::{self, Filter, IPPROTO_UDP};
use twill_tests::{Netns, netns::spawn_in, require_binary, require_root};

/// A UDP server on `addr` answering every datagram with its own address.
fn echo_server(ns: &Netns, addr: &'static str, stop: Arc<AtomicBool>) {
    let (tx, rx) = std::sync::mpsc::channel();
    spawn_in(ns.name(), move || {
        let s = UdpSocket::bind(addr).expect("bind echo server");
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((_, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(addr.as_bytes(), from);
            }
        }
    });
    rx.recv().expect("echo server started");
}

/// Sends from a client socket kept in the namespace and reports which
/// server answered (its address), or None without an answer.
struct Client {
    ask: std::sync::mpsc::Sender<Option<SocketAddr>>,
    answer: std::sync::mpsc::Receiver<Option<String>>,
}

impl Client {
    fn new(ns: &Netns, bind: &'static str) -> Client {
        let (ask, asks) = std::sync::mpsc::channel::<Option<SocketAddr>>();
        let (tell, answer) = std::sync::mpsc::channel();
        spawn_in(ns.name(), move || {
            let s = UdpSocket::bind(bind).expect("bind client");
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            while let Ok(Some(to)) = asks.recv() {
                let _ = s.send_to(b"who", to);
                let mut buf = [0u8; 64];
                let got = s
                    .recv_from(&mut buf)
                    .ok()
                    .map(|(n, _)| String::from_utf8_lossy(&buf[..n]).into_owned());
                if tell.send(got).is_err() {
                    return;
                }
            }
        });
        Client { ask, answer }
    }

    fn who(&self, to: &str) -> Option<String> {
        self.ask.send(Some(to.parse().unwrap())).unwrap();
        self.answer.recv().unwrap()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.ask.send(None);
    }
}

fn nft(ns: &Netns, script: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.nft");
    std::fs::write(&path, script).unwrap();
    ns.exec_ok("nft", &["-f", path.to_str().unwrap()]);
}

fn dnat_rules(first: &str, second: &str) -> String {
    format!(
        "flush chain ip svc out\n\
         add rule ip svc out ip daddr 10.96.0.10 udp dport 53 dnat to {first}\n\
         add rule ip svc out ip daddr 10.96.0.11 udp dport 53 dnat to {second}\n"
    )
}

fn entries(ns: &Netns, needle: &str) -> usize {
    ns.exec_ok("cat", &["/proc/net/nf_conntrack"])
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[test]
fn flush_moves_udp_to_the_new_endpoint_and_keeps_other_entries() {
    require_binary("nft", "nftables");
    let ns = Netns::new("twct");
    // A veth pair inside the namespace stands in for the node's uplink.
    ns.ip(&[
        "link", "add", "svc0", "type", "veth", "peer", "name", "svc1",
    ]);
    ns.ip(&["link", "set", "svc1", "up"]);
    for a in ["10.0.0.1/24", "10.0.0.2/24", "10.0.0.3/24"] {
        ns.ip(&["addr", "add", a, "dev", "svc0"]);
    }
    ns.ip(&["link", "set", "svc0", "up"]);
    ns.ip(&["route", "add", "10.96.0.0/16", "dev", "svc0"]);
    nft(
        &ns,
        &format!(
            "add table ip svc\n\
             add chain ip svc out {{ type nat hook output priority -100; }}\n{}",
            dnat_rules("10.0.0.2:5353", "10.0.0.3:5353")
        ),
    );
    let stop = Arc::new(AtomicBool::new(false));
    echo_server(&ns, "10.0.0.2:5353", stop.clone());
    echo_server(&ns, "10.0.0.3:5353", stop.clone());
    struct Stop(Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop = Stop(stop);

    let a = Client::new(&ns, "10.0.0.1:40001");
    let b = Client::new(&ns, "10.0.0.1:40002");
    assert_eq!(a.who("10.96.0.10:53").as_deref(), Some("10.0.0.2:5353"));
    assert_eq!(b.who("10.96.0.11:53").as_deref(), Some("10.0.0.3:5353"));
    assert_eq!(
        entries(&ns, "dst=10.96.0.10 sport=40001"),
        1,
        "entry of frontend .10"
    );
    assert_eq!(
        entries(&ns, "dst=10.96.0.11 sport=40002"),
        1,
        "entry of frontend .11"
    );

    // Both frontends now point elsewhere; conntrack keeps both flows where they were.
    nft(&ns, &dnat_rules("10.0.0.3:5353", "10.0.0.2:5353"));
    assert_eq!(
        a.who("10.96.0.10:53").as_deref(),
        Some("10.0.0.2:5353"),
        "without a flush the stale entry keeps the client on the gone endpoint"
    );

    let report = spawn_in(ns.name(), || {
        conntrack::flush(&[Filter::endpoint(
            IPPROTO_UDP,
            "10.96.0.10".parse().unwrap(),
            53,
            "10.0.0.2".parse().unwrap(),
        )])
    })
    .join()
    .expect("flush thread")
    .expect("flush");
    assert_eq!(report.deleted, 1, "{report:?}");
    assert_eq!(
        entries(&ns, "dst=10.96.0.10 sport=40001"),
        0,
        "flushed entry still there"
    );
    assert_eq!(
        entries(&ns, "dst=10.96.0.11 sport=40002"),
        1,
        "unrelated entry was flushed"
    );

    assert_eq!(
        a.who("10.96.0.10:53").as_deref(),
        Some("10.0.0.3:5353"),
        "after the flush the same client socket reaches the new endpoint"
    );
    assert_eq!(
        b.who("10.96.0.11:53").as_deref(),
        Some("10.0.0.3:5353"),
        "the unrelated frontend's flow kept its endpoint"
    );

    // A filter for an endpoint nothing talks to deletes nothing.
    let report = spawn_in(ns.name(), || {
        conntrack::flush(&[Filter::endpoint(
            IPPROTO_UDP,
            "10.96.0.10".parse().unwrap(),
            53,
            "10.0.0.9".parse().unwrap(),
        )])
    })
    .join()
    .expect("flush thread")
    .expect("flush");
    assert_eq!(report.deleted, 0, "{report:?}");
    assert_eq!(entries(&ns, "sport=40001"), 1);
}

// IPv6: frontends fd00:96::10 and ::11, endpoints fd00:1::2 and ::3.

fn dnat_rules6(first: &str, second: &str) -> String {
    format!(
        "flush chain ip6 svc out\n\
         add rule ip6 svc out ip6 daddr fd00:96::10 udp dport 53 dnat to {first}\n\
         add rule ip6 svc out ip6 daddr fd00:96::11 udp dport 53 dnat to {second}\n"
    )
}

/// IPv6 UDP conntrack entries from client port `sport` to port 53 (the
/// kernel prints IPv6 addresses unabridged, so the ports tell them apart).
fn entries6(ns: &Netns, sport: u16) -> usize {
    let needle = format!("sport={sport} dport=53 ");
    ns.exec_ok("cat", &["/proc/net/nf_conntrack"])
        .lines()
        .filter(|l| l.starts_with("ipv6") && l.contains(" udp ") && l.contains(&needle))
        .count()
}

fn flush6(ns: &Netns, endpoint: &str) -> conntrack::FlushReport {
    let f = Filter::endpoint(
        IPPROTO_UDP,
        "fd00:96::10".parse().expect("IPv6"),
        53,
        endpoint.parse().expect("IPv6"),
    );
    spawn_in(ns.name(), move || conntrack::flush(&[f]))
        .join()
        .expect("flush thread")
        .expect("flush")
}

#[test]
fn ipv6_flush_moves_udp_to_the_new_endpoint_and_keeps_other_entries() {
    require_root();
    require_binary("nft", "nftables");
    let ns = Netns::new("twct6");
    ns.ip(&[
        "link", "add", "svc0", "type", "veth", "peer", "name", "svc1",
    ]);
    ns.ip(&["link", "set", "svc1", "up"]);
    for a in ["fd00:1::1/64", "fd00:1::2/64", "fd00:1::3/64"] {
        ns.ip(&["-6", "addr", "add", a, "dev", "svc0", "nodad"]);
    }
    ns.ip(&["link", "set", "svc0", "up"]);
    ns.ip(&["-6", "route", "add", "fd00:96::/64", "dev", "svc0"]);
    nft(
        &ns,
        &format!(
            "add table ip6 svc\n\
             add chain ip6 svc out {{ type nat hook output priority -100; }}\n{}",
            dnat_rules6("[fd00:1::2]:5353", "[fd00:1::3]:5353")
        ),
    );
    let stop = Arc::new(AtomicBool::new(false));
    struct Stop(Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop = Stop(stop.clone());
    echo_server(&ns, "[fd00:1::2]:5353", stop.clone());
    echo_server(&ns, "[fd00:1::3]:5353", stop);

    let a = Client::new(&ns, "[fd00:1::1]:40001");
    let b = Client::new(&ns, "[fd00:1::1]:40002");
    assert_eq!(
        a.who("[fd00:96::10]:53").as_deref(),
        Some("[fd00:1::2]:5353")
    );
    assert_eq!(
        b.who("[fd00:96::11]:53").as_deref(),
        Some("[fd00:1::3]:5353")
    );
    assert_eq!(entries6(&ns, 40001), 1, "entry of frontend ::10");
    assert_eq!(entries6(&ns, 40002), 1, "entry of frontend ::11");

    // Both frontends now point elsewhere; conntrack keeps both flows where they were.
    nft(&ns, &dnat_rules6("[fd00:1::3]:5353", "[fd00:1::2]:5353"));
    assert_eq!(
        a.who("[fd00:96::10]:53").as_deref(),
        Some("[fd00:1::2]:5353"),
        "without a flush the stale entry keeps the client on the gone endpoint"
    );

    // A filter for an endpoint nothing talks to deletes nothing.
    let report = flush6(&ns, "fd00:1::9");
    assert_eq!(report.deleted, 0, "{report:?}");
    assert_eq!(entries6(&ns, 40001), 1);

    let report = flush6(&ns, "fd00:1::2");
    assert_eq!(report.deleted, 1, "{report:?}");
    assert_eq!(entries6(&ns, 40001), 0, "flushed entry still there");
    assert_eq!(entries6(&ns, 40002), 1, "unrelated entry was flushed");
    assert_eq!(
        a.who("[fd00:96::10]:53").as_deref(),
        Some("[fd00:1::3]:5353"),
        "after the flush the same client socket reaches the new endpoint"
    );
    assert_eq!(
        b.who("[fd00:96::11]:53").as_deref(),
        Some("[fd00:1::3]:5353"),
        "the unrelated frontend's flow kept its endpoint"
    );
}
