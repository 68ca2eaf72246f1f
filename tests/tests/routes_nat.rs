//! NAT outgoing through twill-node: a pod in a natOutgoing pool reaching a
//! destination outside every pool (a namespace of the test's own) arrives
//! with the node's address; pod to pod keeps its own source; only the
//! `inet twill-nat` table is written, and it goes when the pool stops
//! asking for NAT.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use twill_tests::{Netns, TestNode, bins, require_binary, require_root, veth_between, wait_until};

fn apply(db: &Path, yaml: &str) {
    bins::twillctl_apply(db, yaml);
}

fn pool(nat: bool) -> String {
    format!(
        "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: natpool\nspec:\n  cidr: 10.72.0.0/24\n  blockSize: 26\n  natOutgoing: {nat}\n"
    )
}

/// Moves the calling thread into `ns`.
fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    // SAFETY: only the calling thread (a test-owned helper thread) moves.
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
}

/// A TCP server in `server` on `addr`, a client in `client` connecting to
/// it: the peer address the server saw, or None when no connection came.
fn peer_seen(server: &Netns, client: &Netns, addr: SocketAddr) -> Option<IpAddr> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let sname = server.name().to_string();
    let srv = std::thread::spawn(move || {
        enter(&sname);
        let l = TcpListener::bind(addr).unwrap();
        l.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(4);
        while Instant::now() < deadline {
            match l.accept() {
                Ok((mut s, peer)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.write_all(b"ok");
                    return Some(peer.ip());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        None
    });
    ready_rx.recv().unwrap();
    let cname = client.name().to_string();
    let cli = std::thread::spawn(move || {
        enter(&cname);
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).ok()?;
        (&buf == b"ok").then_some(())
    });
    let answered = cli.join().unwrap();
    let seen = srv.join().unwrap();
    answered.and(seen)
}

fn ipv4_of(out: &twill_tests::cni::CniOutput) -> IpAddr {
    out.addresses()
        .into_iter()
        .find(|a| !a.contains(':'))
        .and_then(|a| a.split('/').next()?.parse().ok())
        .expect("an IPv4 address")
}

#[test]
fn pods_reach_outside_the_pools_as_the_node_and_each_other_as_themselves() {
    require_root();
    require_binary("nft", "nftables");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    apply(&db, &pool(true));
    let node = TestNode::start(
        "twn",
        "rn2",
        &db,
        dir.path(),
        "10.96.72.1/32",
        &["--route-resync", "1"],
    );
    // Someone else's nft table on the node: it must stay exactly as it is.
    node.ns.exec_ok(
        "nft",
        &["add table inet other; add chain inet other c { type filter hook postrouting priority 50; }; add rule inet other c counter"],
    );
    let other = || {
        node.ns
            .exec_ok("nft", &["list", "table", "inet", "other"])
            .lines()
            .filter(|l| !l.contains("counter packets"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let other_before = other();

    // A destination outside every pool, behind its own link.
    let outside = Netns::new("twn");
    veth_between(
        &node.ns,
        "nx0",
        "192.168.72.1/30",
        &outside,
        "dx0",
        "192.168.72.2/30",
    );

    let a = Netns::new("twn");
    let b = Netns::new("twn");
    let ra = node.add("ca", &a);
    let rb = node.add("cb", &b);
    assert!(ra.success && rb.success, "{} {}", ra.json, rb.json);
    let (ip_a, ip_b) = (ipv4_of(&ra), ipv4_of(&rb));

    let table = || node.ns.exec("nft", &["list", "table", "inet", "twill-nat"]);
    assert!(
        wait_until(Duration::from_secs(10), || table().status.success()),
        "twill-nat never appeared; log:\n{}",
        node.log()
    );
    let listing = String::from_utf8_lossy(&table().stdout).into_owned();
    assert!(listing.contains("masquerade"), "{listing}");

    let to_outside: SocketAddr = "192.168.72.2:7070".parse().unwrap();
    assert_eq!(
        peer_seen(&outside, &a, to_outside),
        Some("192.168.72.1".parse().unwrap()),
        "pod -> outside is masqueraded to the node's address"
    );
    assert_eq!(
        peer_seen(&b, &a, SocketAddr::new(ip_b, 7071)),
        Some(ip_a),
        "pod -> pod keeps the pod's own source"
    );
    assert_eq!(other(), other_before, "another table was touched");
    // Checks every second read the table back and find it as written.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        node.log().matches("NAT outgoing table written").count(),
        1,
        "rewritten although nothing drifted; log:\n{}",
        node.log()
    );
    // Drift (our masquerade rule flushed by hand) is repaired.
    node.ns.exec_ok(
        "nft",
        &["flush", "chain", "inet", "twill-nat", "postrouting"],
    );
    assert!(
        wait_until(Duration::from_secs(3), || String::from_utf8_lossy(
            &table().stdout
        )
        .contains("masquerade")),
        "not repaired"
    );

    // The pool stops asking: the table goes, and the outside sees (and
    // cannot answer) the pod's own address.
    apply(&db, &pool(false));
    assert!(
        wait_until(Duration::from_secs(10), || !table().status.success()),
        "twill-nat still there; log:\n{}",
        node.log()
    );
    assert_eq!(peer_seen(&outside, &a, to_outside), None);
    assert_eq!(other(), other_before, "another table was touched");
}
