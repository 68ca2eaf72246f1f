//! The kube-router peer of the policy dataplane benchmark really filters:
//! loaded into a node namespace with `ipset restore` + `iptables-restore`
//! (legacy when installed, as the benchmark does), a pod selected by two
//! policies accepts a connection one of them allows, and refuses a client
//! no policy allows and a port no policy opens; a pod no policy selects
//! stays open. Root; fails (does not skip) without iptables or ipset.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use twill_bench::kube_router::{Policy, ruleset};
use twill_tests::netns::spawn_in;
use twill_tests::{Netns, require_binary, require_root, veth_between};

fn load(ns: &Netns, prog: &str, args: &[&str], input: &str) {
    let mut child = ns
        .command(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {prog}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write rules");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}\ninput:\n{input}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TCP server answering "k" on `port` in `ns`, for the life of the test.
fn serve(ns: &Netns, port: u16) {
    let l = spawn_in(ns.name(), move || {
        TcpListener::bind(("0.0.0.0", port)).expect("bind")
    })
    .join()
    .expect("bind thread");
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(b"k");
        }
    });
}

/// Whether a connection from `ns` to `addr` gets the server's answer.
fn answered(ns: &Netns, addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().expect("addr");
    spawn_in(ns.name(), move || {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(700)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(700)));
        let mut b = [0u8; 1];
        matches!(s.read(&mut b), Ok(1))
    })
    .join()
    .expect("client thread")
}

#[test]
fn kube_router_peer_drops_what_policy_denies_and_passes_what_it_allows() {
    require_root();
    require_binary("ipset", "ipset");
    let restore = if std::path::Path::new("/usr/sbin/iptables-legacy-restore").exists() {
        "iptables-legacy-restore"
    } else {
        require_binary("iptables-restore", "iptables");
        "iptables-restore"
    };
    let node = Netns::new("twkr");
    let allowed = Netns::new("twkr");
    let denied = Netns::new("twkr");
    let server = Netns::new("twkr");
    let open = Netns::new("twkr");
    veth_between(
        &node,
        "va",
        "10.83.1.1/30",
        &allowed,
        "eth0",
        "10.83.1.2/30",
    );
    veth_between(&node, "vd", "10.83.2.1/30", &denied, "eth0", "10.83.2.2/30");
    veth_between(&node, "vs", "10.83.3.1/30", &server, "eth0", "10.83.3.2/30");
    veth_between(&node, "vo", "10.83.4.1/30", &open, "eth0", "10.83.4.2/30");
    for (ns, gw) in [
        (&allowed, "10.83.1.1"),
        (&denied, "10.83.2.1"),
        (&server, "10.83.3.1"),
        (&open, "10.83.4.1"),
    ] {
        ns.ip(&["route", "add", "default", "via", gw]);
    }
    node.sysctl("net.ipv4.ip_forward", "1");
    for ns in [&server, &open] {
        serve(ns, 80);
        serve(ns, 81);
    }

    // Before any rule everything passes: the set-up itself works.
    assert!(answered(&denied, "10.83.3.2:80"));
    assert!(answered(&allowed, "10.83.3.2:81"));

    let ip = |s: &str| -> Ipv4Addr { s.parse().expect("ip") };
    let srv = ip("10.83.3.2");
    let policies = [
        // Selects the server, allows someone else.
        Policy {
            name: "bench/other".into(),
            selects: vec![srv],
            from: vec![ip("10.83.9.9")],
            tcp_ports: vec![80, 81],
        },
        // Selects the server, allows `allowed` on port 80 only.
        Policy {
            name: "bench/web".into(),
            selects: vec![srv],
            from: vec![ip("10.83.1.2")],
            tcp_ports: vec![80],
        },
    ];
    let r = ruleset(&[ip("10.83.4.2"), srv], &policies);
    load(&node, "ipset", &["-exist", "restore"], &r.ipset);
    load(&node, restore, &[], &r.iptables);

    assert!(
        answered(&allowed, "10.83.3.2:80"),
        "the allowed client on the allowed port is refused"
    );
    assert!(
        !answered(&denied, "10.83.3.2:80"),
        "a client no policy allows got through"
    );
    assert!(
        !answered(&allowed, "10.83.3.2:81"),
        "a port the allowing policy does not open got through"
    );
    assert!(
        answered(&denied, "10.83.4.2:81"),
        "a pod no policy selects must stay open"
    );
    let listing = node.exec_ok(
        restore.trim_end_matches("-restore"),
        &["-S", "KUBE-ROUTER-FORWARD"],
    );
    assert_eq!(
        listing.matches("-j KUBE-POD-FW-").count(),
        1,
        "one per-pod jump (only the selected pod): {listing}"
    );
}
