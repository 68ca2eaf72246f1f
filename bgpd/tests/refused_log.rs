//! Log lines a remote party can trigger at will are rate-limited: a flood
//! of 2,000 connections from an address that is not a peer, and 200 from
//! a peer whose SYNs fail the GTSM check, each produce one log line (the
//! first, naming the source) instead of one per connection — while every
//! refusal is still counted (metric, peer status). Loopback, no root.
//!
//! One test per file: the log capture is the process's global subscriber.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use twill_bgpd::speaker::{PeerConfig, Speaker, SpeakerConfig};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn lines(&self, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn flood(from: &str, port: u16, n: usize) {
    for _ in 0..n {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
        if let Ok(s) = sock
            .connect(SocketAddr::new("127.0.0.1".parse().unwrap(), port))
            .await
        {
            drop(s);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_logs_a_line_not_a_line_per_connection() {
    let cap = Capture::default();
    let writer = cap.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let port = free_port();
    let a = Speaker::start(SpeakerConfig {
        asn: 65001,
        router_id: "127.0.0.1".parse().unwrap(),
        listen: Some(SocketAddr::new("127.0.0.1".parse().unwrap(), port)),
        cluster_id: None,
        multipath: false,
        graceful_restart: None,
    })
    .await
    .unwrap();
    // A GTSM peer directly connected (hop count 1): loopback SYNs carry
    // TTL 64, below the 255 it needs.
    let mut p = PeerConfig::new("127.0.0.21".parse().unwrap(), 65021);
    p.passive = true;
    p.ttl_security = Some(1);
    a.add_peer(p).unwrap();

    // 2,000 connections from 127.0.0.20, not a peer.
    flood("127.0.0.20", port, 2000).await;
    let counted = |a: &Speaker| {
        a.metrics_text()
            .lines()
            .find(|l| l.starts_with("twill_bgp_refused_connections_total"))
            .and_then(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let end = Instant::now() + Duration::from_secs(10);
    while counted(&a) < 2000 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counted(&a), 2000, "every refusal is counted");
    let refused = cap.lines("refused a connection from");
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert!(refused[0].contains("127.0.0.20"), "{}", refused[0]);
    assert!(refused[0].contains("INFO"), "{}", refused[0]);

    // 200 GTSM refusals from the peer's address: one line, and the peer's
    // status shows the reason.
    flood("127.0.0.21", port, 200).await;
    let st = || a.status().into_iter().next().unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    while st().last_error.is_none() && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let err = st().last_error.unwrap_or_default();
    assert!(err.contains("GTSM") && err.contains("TTL 64"), "{err}");
    let gtsm = cap.lines("GTSM: refused");
    assert_eq!(gtsm.len(), 1, "{gtsm:#?}");
    assert!(gtsm[0].contains("needs 255"), "{}", gtsm[0]);
    a.shutdown().await;
}
