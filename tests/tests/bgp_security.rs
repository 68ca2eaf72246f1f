//! TCP MD5 (RFC 2385) and GTSM (RFC 5082) between twill-bgpd and BIRD, and
//! the max-prefix tear-down with its hold-down and recovery.

use std::time::{Duration, Instant};

use twill_tests::peers::{NODE4, Peer, TorLink, TwillBgpd};
use twill_tests::wait_until;

const UP: Duration = Duration::from_secs(20);
/// How long a session that must not come up is watched.
const NEVER: Duration = Duration::from_secs(8);

/// Our session to BIRD comes up and BIRD's 10.60.0.0/24 reaches us.
fn assert_up_with_route(t: &TwillBgpd, bird: &Peer) {
    assert!(
        wait_until(UP, || t.established("10.96.0.1")),
        "{}\n{}\n{}",
        t.status_table(),
        bird.session_view(NODE4),
        t.log_tail()
    );
    assert!(wait_until(Duration::from_secs(10), || t.has_route("10.60.0.0/24")));
}

#[test]
fn bgp_md5_right_password_establishes() {
    let l = TorLink::new("tm5");
    let bird = l.bird(&["10.60.0.0/24"], |b| b.password("s3cret-Key"));
    let t = l.twill("password: s3cret-Key", "");
    assert_up_with_route(&t, &bird);
    assert!(bird.established(NODE4));
}

#[test]
fn bgp_md5_wrong_password_never_establishes() {
    let l = TorLink::new("tm6");
    let bird = l.bird(&["10.60.0.0/24"], |b| b.password("s3cret-Key"));
    let t = l.twill("password: not-the-key", "");
    let up = wait_until(NEVER, || {
        t.established("10.96.0.1") || bird.established(NODE4)
    });
    assert!(!up, "a session came up with the wrong MD5 key");
    assert!(!t.has_route("10.60.0.0/24"));
}

#[test]
fn bgp_gtsm_both_sides_establishes() {
    let l = TorLink::new("tgt");
    let bird = l.bird(&["10.60.0.0/24"], |b| b.ttl_security());
    let t = l.twill("ttl_security: true", "");
    assert_up_with_route(&t, &bird);
}

#[test]
fn bgp_gtsm_drops_a_peer_sending_ttl_1() {
    // BIRD without GTSM sends eBGP packets with TTL 1: our IP_MINTTL 255
    // drops them, so no session in either direction.
    let l = TorLink::new("tgu");
    let bird = l.bird(&["10.60.0.0/24"], |b| b);
    let t = l.twill("ttl_security: true", "");
    let up = wait_until(NEVER, || {
        t.established("10.96.0.1") || bird.established(NODE4)
    });
    assert!(!up, "GTSM let a TTL-1 peer in:\n{}", t.status_table());
}

#[test]
fn bgp_max_prefix_tears_down_holds_down_and_recovers() {
    let l = TorLink::new("tmp");
    let mut bird = l.bird(
        &[
            "10.60.0.0/24",
            "10.60.1.0/24",
            "10.60.2.0/24",
            "10.60.3.0/24",
            "10.60.4.0/24",
        ],
        |b| b,
    );
    let t = l.twill(
        "max_prefix: { limit: 3, action: teardown, restart_after: 6 }",
        "",
    );
    // Tear-down: Cease/1 noted on our side and on BIRD's.
    assert!(
        wait_until(UP, || t
            .peer("10.96.0.1")
            .and_then(|p| p["last_error"].as_str().map(str::to_string))
            .is_some_and(|e| e.contains("Maximum Number of Prefixes"))),
        "no max-prefix tear-down:\n{}\n{}",
        t.status_table(),
        t.log_tail()
    );
    let torn = Instant::now();
    let b = bird.session_view(NODE4);
    assert!(
        b.to_lowercase().contains("maximum number of prefixes"),
        "BIRD did not get Cease/1:\n{b}"
    );
    // The routes are gone and the session stays down for the restart time.
    assert!(wait_until(Duration::from_secs(3), || !t.has_route("10.60.0.0/24")));
    while torn.elapsed() < Duration::from_secs(4) {
        assert!(
            !t.established("10.96.0.1"),
            "reconnected before the restart time"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The ToR fixes its side: three routes fewer.
    bird.withdraw(&["10.60.2.0/24", "10.60.3.0/24", "10.60.4.0/24"]);
    assert!(
        wait_until(Duration::from_secs(25), || t.established("10.96.0.1")),
        "no recovery after the restart time:\n{}\n{}",
        t.status_table(),
        t.log_tail()
    );
    assert!(wait_until(Duration::from_secs(10), || t.has_route("10.60.1.0/24")));
    let p = t.peer("10.96.0.1").unwrap();
    assert_eq!(p["received"], 2, "{p}");
    assert!(!t.has_route("10.60.4.0/24"));
}
