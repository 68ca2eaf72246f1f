//! twill-node's health endpoint over loopback, against a real twill-node in
//! a node namespace (as the kubelet's probes and Prometheus reach it): the
//! answers, readiness turning on once the store is read and the endpoints
//! reconciled, metrics that follow a real CNI ADD, and robustness against
//! requests that are too large, malformed, slow or of the wrong method.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use twill_tests::{Netns, TestNode, bins, require_root, wait_until};

const ADDR: &str = "127.0.0.1:9099";

/// Runs `f` on a thread inside `ns` and waits for it.
fn in_ns<R: Send + 'static>(ns: &Netns, f: impl FnOnce() -> R + Send + 'static) -> R {
    twill_tests::netns::spawn_in(ns.name(), f)
        .join()
        .expect("namespace thread")
}

/// Sends raw bytes to the health port in `ns`; returns the whole answer.
fn raw(ns: &Netns, request: Vec<u8>) -> String {
    in_ns(ns, move || {
        let mut s = TcpStream::connect(ADDR).expect("connect to the health port");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        // The server may answer (431) and close before reading everything.
        let _ = s.write_all(&request);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
}

fn get(ns: &Netns, path: &str) -> (u16, String) {
    let text = raw(
        ns,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes(),
    );
    status_and_body(&text)
}

fn status_and_body(text: &str) -> (u16, String) {
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn apply_pool(db: &Path) {
    bins::twillctl_apply(
        db,
        "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: p\nspec:\n  cidr: 10.62.0.0/24\n  blockSize: 28\n",
    );
}

#[test]
fn health_readiness_and_metrics_follow_the_node() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    apply_pool(&db);
    let node = TestNode::start(
        "twh",
        "h1",
        &db,
        dir.path(),
        "10.96.62.1/32",
        &["--health-addr", ADDR, "--status-interval", "1"],
    );

    let (code, body) = get(&node.ns, "/healthz");
    assert_eq!((code, body.as_str()), (200, "ok\n"), "{}", node.log());

    // Ready once the store has been read and the endpoints reconciled; the
    // answer names each condition.
    let mut last = (0, String::new());
    assert!(
        wait_until(Duration::from_secs(15), || {
            last = get(&node.ns, "/readyz");
            last.0 == 200
        }),
        "never ready: {last:?}\n{}",
        node.log()
    );
    assert!(last.1.contains("[+]datastore ok"), "{}", last.1);
    assert!(last.1.contains("[+]dataplane ok"), "{}", last.1);

    // A pod: the CNI latency histogram counts the ADD, and the gauges
    // follow the endpoint, its address, its /32 and its block's blackhole.
    let pod = Netns::new("twh");
    let out = node.add("health-pod", &pod);
    assert!(out.success, "ADD: {}", out.json);
    let mut metrics = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            metrics = get(&node.ns, "/metrics").1;
            metrics.contains("twill_endpoints 1")
                && metrics.contains("twill_ipam_addresses_used 1")
                && metrics.contains(r#"twill_routes_programmed{kind="local"} 1"#)
                && metrics.contains(r#"twill_routes_programmed{kind="blackhole"} 1"#)
        }),
        "metrics did not follow the pod:\n{metrics}"
    );
    assert!(
        metrics
            .contains(r#"twill_cni_request_duration_seconds_count{command="ADD",result="ok"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("twill_ipam_blocks 1"), "{metrics}");
    // The policy table went in whole at start, and the pod's chains after.
    for kind in ["full", "incremental"] {
        let count =
            format!(r#"twill_nft_apply_duration_seconds_count{{kind="{kind}",result="ok"}} "#);
        assert!(
            metrics.contains(&count),
            "no {kind} nft apply recorded:\n{metrics}"
        );
    }
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");

    // Bad requests get an answer and do not hurt the server.
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    assert_eq!(status_and_body(&raw(&node.ns, huge.into_bytes())).0, 431);
    assert_eq!(
        status_and_body(&raw(&node.ns, b"\x16\x03\x01 hello\r\n\r\n".to_vec())).0,
        400
    );
    assert_eq!(
        status_and_body(&raw(
            &node.ns,
            b"POST /readyz HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".to_vec()
        ))
        .0,
        405
    );
    assert_eq!(get(&node.ns, "/nothing-here").0, 404);
    let head = raw(&node.ns, b"HEAD /healthz HTTP/1.1\r\n\r\n".to_vec());
    assert!(
        head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
        "HEAD: {head:?}"
    );
    // A client that sends half a request and waits is cut off after the
    // read timeout, while others are still served.
    let slow = twill_tests::netns::spawn_in(node.ns.name(), || {
        let mut s = TcpStream::connect(ADDR).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        get(&node.ns, "/healthz").0,
        200,
        "served beside a slow client"
    );
    let slow = slow.join().unwrap();
    assert!(slow.starts_with("HTTP/1.1 408"), "slow client: {slow:?}");

    // A second twill-node cannot take the port, and says why.
    let out = node
        .ns
        .command(bins::binary("twill-node").to_str().unwrap())
        .args(["--node-name", "h2", "--health-addr", ADDR])
        .arg("--path")
        .arg(&db)
        .arg("--cni-socket")
        .arg(dir.path().join("other.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("other-state"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot serve health and metrics on 127.0.0.1:9099"),
        "{err}"
    );
    let del = node.del("health-pod", &pod);
    assert!(del.success, "DEL: {}", del.json);
}

#[test]
fn logs_are_json_lines_when_asked() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    apply_pool(&db);
    let ns = Netns::new("twj");
    let socket = dir.path().join("cni.sock");
    let log = dir.path().join("twill-node.log");
    let mut cmd = ns.command(bins::binary("twill-node").to_str().unwrap());
    cmd.args(["--node-name", "j1"])
        .arg("--path")
        .arg(&db)
        .arg("--cni-socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("TWILL_LOG", "info")
        .env("TWILL_LOG_FORMAT", "json");
    let _daemon = twill_tests::Daemon::spawn("twill-node j1", &mut cmd, Some(&log));
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        }),
        "twill-node did not start:\n{}",
        read()
    );
    let text = read();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "nothing logged");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
    }
    assert!(
        lines.iter().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("serving /healthz"))
                && v["fields"]["addr"] == "127.0.0.1:9099"
        }),
        "no structured start-up line:\n{text}"
    );
}
