//! Twill's route programmer against the real kernel, inside a network
//! namespace each test creates: the routes it installs (protocol 116,
//! blackholes, ECMP), repair of hand-made drift at resync, and that routes
//! of any other protocol are never touched.

use std::future::Future;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use twill_felix::dataplane::routes::{RouteConfig, RouteProgrammer, Sources};
use twill_tests::{Netns, require_root};

/// Runs `body` on a fresh thread moved into `ns`, with its own runtime: the
/// programmer's netlink socket is opened in that namespace.
fn in_ns<T: Send + 'static, Fut: Future<Output = T>>(
    ns: &Netns,
    body: impl FnOnce() -> Fut + Send + 'static,
) -> T {
    let path = format!("/run/netns/{}", ns.name());
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        // SAFETY: moves only this fresh thread into the test's namespace.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(body())
    })
    .join()
    .unwrap()
}

/// A namespace with an uplink `up0` (10.255.0.1/24, fd00:255::1/64) whose
/// next hops .2/.3 (::2/::3) are on-link, and a pod-like veth `tp0`.
fn lab() -> Netns {
    let ns = Netns::new("twr");
    ns.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
    ns.ip(&["addr", "add", "10.255.0.1/24", "dev", "up0"]);
    ns.ip(&["addr", "add", "fd00:255::1/64", "dev", "up0", "nodad"]);
    ns.ip(&["link", "add", "tp0", "type", "veth", "peer", "name", "tp1"]);
    for l in ["up0", "up1", "tp0", "tp1"] {
        ns.ip(&["link", "set", l, "up"]);
    }
    ns
}

/// Runs `ip` somewhere: in a test namespace from outside, or `Here` from
/// a thread already inside it.
trait Ip {
    fn ip(&self, args: &[&str]) -> String;
}

impl Ip for Netns {
    fn ip(&self, args: &[&str]) -> String {
        Netns::ip(self, args)
    }
}

/// The namespace the calling thread is in (children inherit it).
struct Here;

impl Ip for Here {
    fn ip(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Twill's routes, IPv4 then IPv6.
fn twill_routes(ns: &impl Ip) -> String {
    let mut s = ns.ip(&["route", "show", "proto", "116"]);
    s += &ns.ip(&["-6", "route", "show", "proto", "116"]);
    s
}

fn line_for<'a>(routes: &'a str, dst: &str) -> Option<&'a str> {
    // `ip` prints multipath routes over several lines; join them per route.
    routes
        .split('\n')
        .position(|l| l.starts_with(&format!("{dst} ")) || l.contains(&format!(" {dst} ")))
        .map(|_| routes)
        .and_then(|r| {
            let start = r.find(&format!("{dst} "))?;
            let rest = &r[start..];
            let end = rest
                .match_indices('\n')
                .map(|(i, _)| i)
                .find(|i| !rest[i + 1..].starts_with('\t') && !rest[i + 1..].starts_with(' '))
                .unwrap_or(rest.len());
            Some(&rest[..end])
        })
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cfg(resync: Duration) -> RouteConfig {
    RouteConfig {
        resync_interval: resync,
        ..RouteConfig::default()
    }
}

async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn endpoint_blackhole_and_ecmp_routes_are_installed_with_protocol_116() {
    require_root();
    let ns = lab();
    in_ns(&ns, || async move {
        let ns = Here;
        let p = RouteProgrammer::start(cfg(Duration::from_secs(3600)))
            .await
            .unwrap();
        p.set_endpoints([(net("10.244.1.5/32"), "tp0".to_string())]);
        p.set_blocks([net("10.244.1.0/26"), net("fd00:10:244:1::/122")]);
        p.set_bgp_routes(vec![
            (
                net("10.244.2.0/26"),
                vec![ip("10.255.0.2"), ip("10.255.0.3")],
            ),
            (net("10.244.3.0/26"), vec![ip("10.255.0.2")]),
            (
                net("fd00:10:244:2::/122"),
                vec![ip("fd00:255::2"), ip("fd00:255::3")],
            ),
        ]);
        let rep = p.sync().await.unwrap();
        assert_eq!(rep.failed, 0, "{rep:?}");
        let r = twill_routes(&ns);
        assert!(r.contains("10.244.1.5 dev tp0 scope link"), "{r}");
        assert!(r.contains("blackhole 10.244.1.0/26"), "{r}");
        assert!(r.contains("blackhole fd00:10:244:1::/122"), "{r}");
        assert!(r.contains("10.244.3.0/26 via 10.255.0.2 dev up0"), "{r}");
        let ecmp = line_for(&r, "10.244.2.0/26").unwrap_or_default();
        assert!(
            ecmp.contains("nexthop via 10.255.0.2") && ecmp.contains("nexthop via 10.255.0.3"),
            "IPv4 ECMP route with both next hops: {r}"
        );
        let ecmp6 = line_for(&r, "fd00:10:244:2::/122").unwrap_or_default();
        assert!(
            ecmp6.contains("fd00:255::2") && ecmp6.contains("fd00:255::3"),
            "IPv6 ECMP route with both next hops: {r}"
        );
        assert_eq!(
            r.matches("proto").count(),
            0,
            "ip omits the proto it was asked for: {r}"
        );

        // A second next hop for 10.244.3.0/26: replaced in place.
        p.set_bgp_route(
            net("10.244.3.0/26"),
            vec![ip("10.255.0.2"), ip("10.255.0.3")],
        );
        let rep = p.sync().await.unwrap();
        assert_eq!((rep.replaced, rep.added, rep.deleted), (1, 0, 0), "{rep:?}");
        let r = twill_routes(&ns);
        let ecmp = line_for(&r, "10.244.3.0/26").unwrap_or_default();
        assert!(ecmp.contains("nexthop via 10.255.0.3"), "{r}");

        // Withdrawn, released, gone: each leaves the kernel.
        p.remove_bgp_route(net("10.244.2.0/26"));
        p.set_block(net("10.244.1.0/26"), false);
        p.set_endpoint_route(net("10.244.1.5/32"), None);
        let rep = p.sync().await.unwrap();
        assert_eq!(rep.deleted, 3, "{rep:?}");
        let r = twill_routes(&ns);
        assert!(!r.contains("10.244.2.0/26"), "{r}");
        assert!(!r.contains("10.244.1.0/26"), "{r}");
        assert!(!r.contains("10.244.1.5"), "{r}");
        assert!(r.contains("10.244.3.0/26"), "{r}");
        // The resync finds nothing to do: the kernel reads back as programmed.
        assert_eq!(p.resync().await.unwrap(), Default::default());
    });
}

#[test]
fn routes_changed_by_hand_are_repaired_within_the_resync_interval() {
    require_root();
    let ns = lab();
    in_ns(&ns, || async move {
        let ns = Here;
        let p = RouteProgrammer::start(cfg(Duration::from_secs(1)))
            .await
            .unwrap();
        p.set_endpoints([(net("10.244.1.5/32"), "tp0".to_string())]);
        p.set_blocks([net("10.244.1.0/26")]);
        p.set_bgp_routes(vec![
            (
                net("10.244.2.0/26"),
                vec![ip("10.255.0.2"), ip("10.255.0.3")],
            ),
            (net("10.244.3.0/26"), vec![ip("10.255.0.2")]),
        ]);
        p.sync().await.unwrap();
        let before = twill_routes(&ns);
        // Drift: two routes deleted, one pointed elsewhere, a stray one added.
        ns.ip(&["route", "del", "10.244.2.0/26", "proto", "116"]);
        ns.ip(&["route", "del", "10.244.1.5/32", "proto", "116"]);
        ns.ip(&["route", "del", "blackhole", "10.244.1.0/26", "proto", "116"]);
        ns.ip(&[
            "route",
            "replace",
            "10.244.3.0/26",
            "via",
            "10.255.0.3",
            "proto",
            "116",
        ]);
        ns.ip(&[
            "route",
            "add",
            "10.244.9.0/26",
            "via",
            "10.255.0.2",
            "proto",
            "116",
        ]);
        assert_ne!(twill_routes(&ns), before);
        let t = Instant::now();
        let repaired = eventually(Duration::from_secs(3), || twill_routes(&ns) == before).await;
        assert!(
            repaired,
            "not repaired 3 s after a 1 s resync interval:\nwant\n{before}\nhave\n{}",
            twill_routes(&ns)
        );
        assert!(
            t.elapsed() <= Duration::from_millis(2500),
            "{:?}",
            t.elapsed()
        );
    });
}

#[test]
fn foreign_routes_in_the_same_prefix_space_are_left_alone() {
    require_root();
    let ns = lab();
    // Someone else's routes: inside our block, at our BGP prefix, at our
    // block with another metric, and a whole pool.
    let foreign = [
        vec!["10.244.1.128/25", "via", "10.255.0.3", "proto", "static"],
        vec!["10.244.2.0/26", "via", "10.255.0.3", "proto", "static"],
        vec![
            "10.244.1.0/26",
            "via",
            "10.255.0.3",
            "metric",
            "100",
            "proto",
            "static",
        ],
        vec!["10.244.0.0/16", "via", "10.255.0.2", "proto", "bird"],
    ];
    for f in &foreign {
        let mut a = vec!["route", "add"];
        a.extend(f.iter().copied());
        ns.ip(&a);
    }
    let theirs = || {
        let mut s = ns.ip(&["route", "show", "proto", "static"]);
        s += &ns.ip(&["route", "show", "proto", "bird"]);
        s
    };
    let before = theirs();
    assert_eq!(before.lines().count(), 4, "{before}");
    let report = in_ns(&ns, || async move {
        let ns = Here;
        let p = RouteProgrammer::start(cfg(Duration::from_millis(300)))
            .await
            .unwrap();
        p.set_blocks([net("10.244.1.0/26")]);
        p.set_bgp_routes(vec![
            (net("10.244.2.0/26"), vec![ip("10.255.0.2")]),
            (net("10.244.3.0/26"), vec![ip("10.255.0.2")]),
        ]);
        let added = p.sync().await.unwrap();
        // Several resyncs come and go.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ours = twill_routes(&ns);
        p.set_blocks([]);
        p.set_bgp_routes(vec![]);
        let removed = p.sync().await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        (added, removed, ours, twill_routes(&ns))
    });
    let (added, removed, ours, after) = report;
    assert!(ours.contains("blackhole 10.244.1.0/26"), "{ours}");
    assert!(ours.contains("10.244.3.0/26 via 10.255.0.2"), "{ours}");
    // The prefix a static route already holds is not taken over.
    assert!(!ours.contains("10.244.2.0/26"), "{ours}");
    assert_eq!((added.added, added.failed), (2, 1), "{added:?}");
    assert_eq!(removed.deleted, 2, "{removed:?}");
    assert_eq!(after, "", "our routes are gone");
    assert_eq!(theirs(), before, "foreign routes changed");
}

#[test]
fn nothing_is_deleted_before_every_source_has_spoken() {
    require_root();
    let ns = lab();
    // A route from a previous run, for a BGP route not yet relearned.
    ns.ip(&[
        "route",
        "add",
        "10.244.7.0/26",
        "via",
        "10.255.0.2",
        "proto",
        "116",
    ]);
    in_ns(&ns, || async move {
        let ns = Here;
        let p = RouteProgrammer::start(RouteConfig {
            resync_interval: Duration::from_millis(200),
            wait_for: Sources {
                endpoints: false,
                blocks: true,
                bgp: true,
            },
            ..RouteConfig::default()
        })
        .await
        .unwrap();
        p.set_blocks([net("10.244.1.0/26")]);
        p.sync().await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = twill_routes(&ns);
        assert!(
            r.contains("10.244.7.0/26 via 10.255.0.2"),
            "kept while BGP is silent: {r}"
        );
        assert!(r.contains("blackhole 10.244.1.0/26"), "{r}");
        p.set_bgp_routes(vec![]);
        assert!(
            eventually(Duration::from_secs(2), || !twill_routes(&ns)
                .contains("10.244.7.0/26"))
            .await,
            "removed once BGP delivered its table: {}",
            twill_routes(&ns)
        );
    });
}

#[test]
fn a_route_the_kernel_rejects_fails_alone_and_is_retried_at_resync() {
    require_root();
    let ns = lab();
    in_ns(&ns, || async move {
        let ns = Here;
        let p = RouteProgrammer::start(cfg(Duration::from_millis(500)))
            .await
            .unwrap();
        // 10.254.0.2 is not on any connected network (yet): rejected.
        p.set_bgp_routes(vec![
            (net("10.244.2.0/26"), vec![ip("10.255.0.2")]),
            (net("10.244.3.0/26"), vec![ip("10.254.0.2")]),
            (net("10.244.4.0/26"), vec![ip("10.255.0.3")]),
        ]);
        let rep = p.sync().await.unwrap();
        assert_eq!((rep.added, rep.failed), (2, 1), "{rep:?}");
        let r = twill_routes(&ns);
        assert!(
            r.contains("10.244.2.0/26") && r.contains("10.244.4.0/26"),
            "{r}"
        );
        assert!(!r.contains("10.244.3.0/26"), "{r}");
        // The next hop becomes reachable: the next resync installs it.
        ns.ip(&["addr", "add", "10.254.0.1/24", "dev", "up0"]);
        assert!(
            eventually(Duration::from_secs(2), || twill_routes(&ns)
                .contains("10.244.3.0/26 via 10.254.0.2"))
            .await,
            "not retried: {}",
            twill_routes(&ns)
        );
    });
}
