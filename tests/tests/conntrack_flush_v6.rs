//! twill-node's conntrack flush on the IPv6 path of the real kernel (the
//! IPv4 one is `conntrack_flush.rs`): UDP through an IPv6 DNAT sticks to
//! its endpoint after the DNAT changed; the flush (an IPv6 dump and
//! delete over ctnetlink) deletes exactly the entries of the gone
//! endpoint, the same client socket then reaches the new endpoint, and an
//! unrelated frontend's entry and traffic stay.

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
            .expect("timeout");
        let _ = tx.send(());
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((_, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(addr.as_bytes(), from);
            }
        }
    });
    rx.recv().expect("echo server started");
}

/// A client socket kept in the namespace (one conntrack entry per
/// frontend): which server answered, or None.
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
            s.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
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
        self.ask
            .send(Some(to.parse().expect("socket address")))
            .ok()?;
        self.answer.recv().ok().flatten()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.ask.send(None);
    }
}

fn nft(ns: &Netns, script: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("rules.nft");
    std::fs::write(&path, script).expect("write rules");
    ns.exec_ok("nft", &["-f", path.to_str().expect("utf-8")]);
}

fn dnat_rules(first: &str, second: &str) -> String {
    format!(
        "flush chain ip6 svc out\n\
         add rule ip6 svc out ip6 daddr fd00:96::10 udp dport 53 dnat to {first}\n\
         add rule ip6 svc out ip6 daddr fd00:96::11 udp dport 53 dnat to {second}\n"
    )
}

/// IPv6 UDP conntrack entries from client port `sport` to port 53 (the
/// kernel prints IPv6 addresses unabridged, so the ports tell them apart).
fn entries(ns: &Netns, sport: u16) -> usize {
    let needle = format!("sport={sport} dport=53 ");
    ns.exec_ok("cat", &["/proc/net/nf_conntrack"])
        .lines()
        .filter(|l| l.starts_with("ipv6") && l.contains(" udp ") && l.contains(&needle))
        .count()
}

fn flush(ns: &Netns, endpoint: &str) -> conntrack::FlushReport {
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
            dnat_rules("[fd00:1::2]:5353", "[fd00:1::3]:5353")
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
    assert_eq!(entries(&ns, 40001), 1, "entry of frontend ::10");
    assert_eq!(entries(&ns, 40002), 1, "entry of frontend ::11");

    // Both frontends now point elsewhere; conntrack keeps both flows where they were.
    nft(&ns, &dnat_rules("[fd00:1::3]:5353", "[fd00:1::2]:5353"));
    assert_eq!(
        a.who("[fd00:96::10]:53").as_deref(),
        Some("[fd00:1::2]:5353"),
        "without a flush the stale entry keeps the client on the gone endpoint"
    );

    // A filter for an endpoint nothing talks to deletes nothing.
    let report = flush(&ns, "fd00:1::9");
    assert_eq!(report.deleted, 0, "{report:?}");
    assert_eq!(entries(&ns, 40001), 1);

    let report = flush(&ns, "fd00:1::2");
    assert_eq!(report.deleted, 1, "{report:?}");
    assert_eq!(entries(&ns, 40001), 0, "flushed entry still there");
    assert_eq!(entries(&ns, 40002), 1, "unrelated entry was flushed");
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
