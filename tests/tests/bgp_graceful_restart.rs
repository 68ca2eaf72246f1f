//! Graceful restart (RFC 4724) with BIRD as helper: twill-bgpd is killed
//! with SIGKILL; BIRD keeps its routes (stale) in its RIB and in its kernel
//! table; twill-bgpd comes back with the Restart State bit (its state file
//! survived the crash), re-sends its table and End-of-RIB, and the route
//! never leaves BIRD's kernel table.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use twill_tests::peers::{NODE4, TorLink};
use twill_tests::wait_until;

#[test]
fn bgp_graceful_restart_bird_keeps_routes_across_a_crash() {
    let l = TorLink::new("tgr");
    let bird = l.bird(&["10.60.0.0/24"], |b| {
        b.bird_options("graceful restart on; graceful restart time 60;")
    });
    let state = l.dir("twill").join("gr.state");
    let mut t = l.twill(
        "",
        &format!(
            "graceful_restart: {{ restart_time: 60, state_file: {} }}",
            state.display()
        ),
    );
    assert!(
        wait_until(Duration::from_secs(20), || t.established("10.96.0.1")),
        "{}\n{}",
        t.status_table(),
        t.log_tail()
    );
    assert!(
        wait_until(Duration::from_secs(10), || l
            .tor
            .ip(&["route", "show", "10.1.0.0/24"])
            .contains("via 10.96.0.2")),
        "BIRD did not install our route"
    );
    let p = t.peer("10.96.0.1").unwrap();
    assert_eq!(p["graceful_restart"], true, "GR not negotiated: {p}");

    // Watch BIRD's kernel table from now on.
    let stop = Arc::new(AtomicBool::new(false));
    let missing = Arc::new(AtomicU32::new(0));
    let samples = Arc::new(AtomicU32::new(0));
    let watcher = {
        let (stop, missing, samples) = (stop.clone(), missing.clone(), samples.clone());
        let ns = l.tor.name().to_string();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let out = std::process::Command::new("ip")
                    .args(["netns", "exec", &ns, "ip", "route", "show", "10.1.0.0/24"])
                    .output()
                    .unwrap();
                if !String::from_utf8_lossy(&out.stdout).contains("via 10.96.0.2") {
                    missing.fetch_add(1, Ordering::Relaxed);
                }
                samples.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    t.daemon.kill();
    assert!(state.exists(), "the GR state file must survive a crash");
    // BIRD notices the dead session but keeps the route.
    assert!(
        wait_until(Duration::from_secs(10), || !bird.established(NODE4)),
        "BIRD did not notice the crash"
    );
    std::thread::sleep(Duration::from_secs(2));
    let r = bird.route("10.1.0.0/24");
    assert!(
        r.contains("10.96.0.2"),
        "BIRD dropped our route during the restart:\n{r}"
    );

    t.restart(&l.node);
    assert!(
        wait_until(Duration::from_secs(20), || t.established("10.96.0.1")),
        "no session after the restart:\n{}\n{}",
        t.status_table(),
        t.log_tail()
    );
    assert!(wait_until(Duration::from_secs(10), || bird.established(NODE4)));
    // Routes learned from BIRD come back too.
    assert!(wait_until(Duration::from_secs(10), || t.has_route("10.60.0.0/24")));
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let (miss, n) = (
        missing.load(Ordering::Relaxed),
        samples.load(Ordering::Relaxed),
    );
    eprintln!("kernel route checked {n} times during the restart, missing {miss} times");
    assert!(n > 20);
    assert_eq!(
        miss, 0,
        "BIRD's kernel route flapped during the graceful restart"
    );
    let r = bird.route("10.1.0.0/24");
    assert!(
        !r.to_lowercase().contains("stale"),
        "still stale after End-of-RIB:\n{r}"
    );
    let log = t.log_tail();
    assert!(
        log.contains("R bit set"),
        "second run did not restart gracefully:\n{log}"
    );
}

#[test]
fn bgp_graceful_restart_helper_keeps_a_crashed_peers_routes_stale() {
    let l = TorLink::new("tgh");
    let mut bird = l.bird(&["10.60.0.0/24"], |b| {
        b.bird_options("graceful restart on; graceful restart time 30;")
    });
    let t = l.twill("", "graceful_restart: { restart_time: 60 }");
    assert!(wait_until(Duration::from_secs(20), || t.established("10.96.0.1")));
    assert!(wait_until(Duration::from_secs(10), || t.has_route("10.60.0.0/24")));

    bird.daemon.as_mut().expect("started").kill();
    assert!(
        wait_until(Duration::from_secs(15), || !t.established("10.96.0.1")),
        "we did not notice BIRD's crash"
    );
    // As helper we keep BIRD's route (stale) while it is away.
    for _ in 0..10 {
        assert!(
            t.has_route("10.60.0.0/24"),
            "route dropped while the peer restarts: {:?}\n{}",
            t.routes(),
            t.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // BIRD comes back; its table replaces the stale one.
    bird.restart();
    assert!(
        wait_until(Duration::from_secs(20), || t.established("10.96.0.1")),
        "{}\n{}",
        t.status_table(),
        t.log_tail()
    );
    assert!(wait_until(Duration::from_secs(10), || t.has_route("10.60.0.0/24")));
    assert!(bird.established(NODE4));
}
