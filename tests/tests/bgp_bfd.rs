//! BFD on BGP sessions: twill-bgpd against BIRD 2 over a veth, eBGP with a
//! 60 s hold time and BFD at 100 ms × 3 on both sides, one session over
//! IPv4 and one over IPv6. A path that fails silently (nft drops, the link
//! stays up, TCP notices nothing) must take the sessions and their routes
//! down well before the hold time could; when the path heals, BFD and BGP
//! come back. A peer without BFD still gets a BGP session (we do not wait
//! for BFD), with BFD shown Down.

use std::time::{Duration, Instant};

use twill_tests::peers::{Peer, TorLink, TwillBgpd};
use twill_tests::{require_binary, wait_until};

const PEERS: [&str; 2] = ["10.96.0.1", "fd96::1"];
const OURS: [&str; 2] = ["10.96.0.2", "fd96::2"];

/// Fields drop in order: the daemons (by PID) before their namespaces.
struct Lab {
    twill: TwillBgpd,
    bird: Peer,
    l: TorLink,
}

/// BIRD (AS 65000) and us (AS 65001), one session per family, hold time
/// 60 s; BFD at 100 ms × 3 on our side, and on BIRD's if `bird_bfd`.
fn lab(bird_bfd: bool) -> Lab {
    require_binary("nft", "nftables");
    let l = TorLink::new("tf");
    let mut b = Peer::bird()
        .hold_time(60)
        .ipv4(65001)
        .ipv6(65001)
        .announce(&["10.60.0.0/24", "fd60::/64"]);
    if bird_bfd {
        b = b.bfd(100, 100, 3);
    }
    let bird = l.peer(b);
    let twill = l.twill_dual(
        65000,
        60,
        "bfd: { min_tx_ms: 100, min_rx_ms: 100, multiplier: 3 }",
        "",
    );
    Lab { twill, bird, l }
}

impl Lab {
    /// Our status's `bfd` field for the peer.
    fn our_bfd(&self, peer: &str) -> String {
        self.twill
            .peer(peer)
            .and_then(|p| p["bfd"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// BIRD's state of its BFD session towards our address.
    fn bird_bfd(&self, ours: &str) -> String {
        self.bird
            .cli(&["show", "bfd", "sessions"])
            .lines()
            .find(|l| l.split_whitespace().next() == Some(ours))
            .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
            .unwrap_or_default()
    }

    fn all_up(&self) -> bool {
        PEERS
            .iter()
            .all(|p| self.twill.established(p) && self.our_bfd(p) == "Up")
            && OURS.iter().all(|o| self.bird_bfd(o) == "Up")
            && self.twill.has_route("10.60.0.0/24")
            && self.twill.has_route("fd60::/64")
            && self.bird.has_route_via("10.1.0.0/24", OURS[0])
            && self.bird.has_route_via("fd00:1::/64", OURS[1])
    }

    fn debug(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}",
            self.twill.status_table(),
            self.bird.cli(&["show", "bfd", "sessions"]),
            self.bird.cli(&["show", "protocols"]),
            self.twill.log_tail()
        )
    }

    fn nft(&self, script: &str) {
        let out = self
            .l
            .tor
            .command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(script.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Drops, in BIRD's namespace, what comes from us and (when `both`)
    /// what goes to us. The link stays up.
    fn fail_path(&self, both: bool) {
        let mut s = String::from(
            "table inet bfdtest {\n chain in { type filter hook input priority 0; ip saddr 10.96.0.2 drop; ip6 saddr fd96::2 drop; }\n",
        );
        if both {
            s.push_str(
                " chain out { type filter hook output priority 0; ip daddr 10.96.0.2 drop; ip6 daddr fd96::2 drop; }\n",
            );
        }
        s.push_str("}\n");
        self.nft(&s);
    }

    fn heal_path(&self) {
        self.nft("delete table inet bfdtest\n");
    }

    /// After a silent failure: our sessions are down, BIRD's routes are
    /// gone from our RIB, BIRD's BFD sessions are down too. `we_detect`:
    /// nothing from BIRD reaches us, so only our own BFD can have closed
    /// the sessions (with one-way loss BIRD detects it and its Cease may
    /// arrive before its BFD Down does).
    fn assert_failure_detected(&self, what: &str, we_detect: bool) {
        let t0 = Instant::now();
        // Hold time is 60 s: within 10 s only BFD can explain it.
        let down = wait_until(Duration::from_secs(10), || {
            PEERS.iter().all(|p| !self.twill.established(p))
                && !self.twill.has_route("10.60.0.0/24")
                && !self.twill.has_route("fd60::/64")
        });
        assert!(
            down,
            "{what}: sessions or routes still up:\n{}",
            self.debug()
        );
        eprintln!("{what}: sessions and routes down after {:?}", t0.elapsed());
        for p in PEERS {
            let st = self.twill.peer(p).unwrap();
            let err = st["last_error"].as_str().unwrap_or_default();
            if we_detect {
                assert!(err.contains("sent Cease: BFD Down"), "{what}: {p}: {st}");
            }
            assert_ne!(self.our_bfd(p), "Up", "{what}: {p}");
        }
        assert!(
            wait_until(Duration::from_secs(10), || OURS
                .iter()
                .all(|o| self.bird_bfd(o) == "Down")),
            "{what}: BIRD still sees BFD up:\n{}",
            self.debug()
        );
        let m = self.twill.metrics();
        assert!(
            !m.contains("twill_bgp_bfd_state{peer=\"10.96.0.1\"} 3"),
            "{what}: {m}"
        );
    }

    fn assert_recovers(&self, what: &str) {
        assert!(
            wait_until(Duration::from_secs(30), || self.all_up()),
            "{what}: did not come back:\n{}",
            self.debug()
        );
    }
}

#[test]
fn bgp_bfd_with_bird_takes_sessions_down_on_a_silent_path_failure_and_recovers() {
    let l = lab(true);
    assert!(
        wait_until(Duration::from_secs(30), || l.all_up()),
        "BGP with BFD did not come up:\n{}",
        l.debug()
    );
    let m = l.twill.metrics();
    assert!(
        m.contains("twill_bgp_bfd_state{peer=\"10.96.0.1\"} 3")
            && m.contains("twill_bgp_bfd_state{peer=\"fd96::1\"} 3"),
        "{m}"
    );
    assert!(
        l.twill
            .status_table()
            .lines()
            .any(|r| r.starts_with("10.96.0.1") && r.contains(" Up ")),
        "{}",
        l.twill.status_table()
    );

    // One direction: BIRD stops hearing us, times out, tells us Down.
    l.fail_path(false);
    l.assert_failure_detected("one-way loss", false);
    l.heal_path();
    l.assert_recovers("after one-way loss");

    // Both directions: we time out ourselves.
    l.fail_path(true);
    l.assert_failure_detected("two-way loss", true);
    l.heal_path();
    l.assert_recovers("after two-way loss");
}

#[test]
fn bgp_bfd_peer_without_bfd_still_gets_a_session_and_bfd_shows_down() {
    let l = lab(false);
    assert!(
        wait_until(Duration::from_secs(30), || {
            PEERS.iter().all(|p| l.twill.established(p))
                && l.twill.has_route("10.60.0.0/24")
                && l.twill.has_route("fd60::/64")
        }),
        "BGP did not come up without peer BFD:\n{}",
        l.debug()
    );
    // A few BFD detection times later the session is still there: BFD that
    // never came up does not tear BGP down.
    std::thread::sleep(Duration::from_secs(2));
    for p in PEERS {
        assert!(l.twill.established(p), "{}", l.debug());
        assert_eq!(l.our_bfd(p), "Down", "{}", l.debug());
        assert_eq!(l.twill.peer(p).unwrap()["flaps"], 0, "{}", l.debug());
    }
    let m = l.twill.metrics();
    assert!(
        m.contains("twill_bgp_bfd_state{peer=\"10.96.0.1\"} 1"),
        "{m}"
    );
}
