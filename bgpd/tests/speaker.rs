//! Two speakers in one process over loopback (127.0.0.1 ↔ 127.0.0.2, no
//! root needed): both open actively at the same moment, so connection
//! collision resolution must leave exactly one session; routes originated
//! through the library API reach the other side's best-route stream; 3 s /
//! 1 s timers keep the session up; removing a peer withdraws its routes.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use twill_bgpd::session::fsm::State;
use twill_bgpd::speaker::{PeerConfig, Speaker, SpeakerConfig};
use twill_bgpd::types::{PathAttrs, Prefix};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn speaker(addr: &str, asn: u32, port: u16) -> Speaker {
    Speaker::start(SpeakerConfig {
        asn,
        router_id: addr.parse().unwrap(),
        listen: Some(SocketAddr::new(addr.parse().unwrap(), port)),
        cluster_id: None,
        multipath: false,
        graceful_restart: None,
    })
    .await
    .unwrap()
}

fn peer(addr: &str, asn: u32, port: u16, local: &str) -> PeerConfig {
    let mut p = PeerConfig::new(addr.parse().unwrap(), asn);
    p.port = port;
    p.source_address = Some(local.parse().unwrap());
    p.hold_time = 3;
    p.keepalive = Some(1);
    p.connect_retry = Duration::from_secs(1);
    p.multihop = Some(2);
    p
}

async fn wait(mut f: impl FnMut() -> bool, secs: u64) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

fn state(s: &Speaker) -> State {
    s.status().first().map(|p| p.state).unwrap_or(State::Idle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_open_collides_into_one_session_and_routes_flow() {
    let (pa, pb) = (free_port(), free_port());
    let a = speaker("127.0.0.1", 65001, pa).await;
    let b = speaker("127.0.0.2", 65002, pb).await;
    let mut routes_b = b.subscribe();
    let mut synced_b = b.synced();
    assert!(
        !*synced_b.borrow(),
        "synced before any peer sent End-of-RIB"
    );
    let p: Prefix = "10.1.0.0/24".parse().unwrap();
    a.originate(p, PathAttrs::default());
    let t0 = Instant::now();
    a.add_peer(peer("127.0.0.2", 65002, pb, "127.0.0.1"))
        .unwrap();
    b.add_peer(peer("127.0.0.1", 65001, pa, "127.0.0.2"))
        .unwrap();
    assert!(
        wait(
            || state(&a) == State::Established && state(&b) == State::Established,
            10
        )
        .await,
        "{:?} {:?}",
        a.status(),
        b.status()
    );
    eprintln!("session setup over loopback: {:?}", t0.elapsed());
    // The route arrives on B's best-route stream with A as next hop.
    let change = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let batch = routes_b.recv().await.unwrap();
            if let Some(c) = batch.into_iter().find(|c| c.prefix == p) {
                return c;
            }
        }
    })
    .await
    .expect("route change on B");
    let best = change.best.expect("a best route");
    // A's End-of-RIB after its initial table completes B's initial sync.
    tokio::time::timeout(Duration::from_secs(5), synced_b.wait_for(|s| *s))
        .await
        .expect("B never synced")
        .unwrap();
    assert_eq!(best.next_hops, vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(best.attrs.as_path.to_string(), "65001");
    // 3 s hold / 1 s keepalive: still the same session after 5 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for s in [&a, &b] {
        let st = &s.status()[0];
        assert_eq!(st.state, State::Established, "{st:?}");
        assert_eq!(
            st.flaps, 0,
            "collision or hold timer flapped the session: {st:?}"
        );
        assert_eq!(st.hold_time, Some(3));
    }
    assert_eq!(b.status()[0].accepted, 1);
    assert_eq!(a.status()[0].advertised, 1);
    // Withdraw through the API.
    a.withdraw(p);
    let gone = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let batch = routes_b.recv().await.unwrap();
            if batch.iter().any(|c| c.prefix == p && c.best.is_none()) {
                return;
            }
        }
    })
    .await;
    assert!(gone.is_ok(), "withdrawal not seen on B");
    // Removing the peer on A ends the session on B (Cease), not by hold timer.
    a.remove_peer("127.0.0.2".parse().unwrap()).await;
    assert!(wait(|| state(&b) != State::Established, 2).await);
    let err = b.status()[0].last_error.clone().unwrap_or_default();
    assert!(err.contains("Cease"), "{err}");
    let m = b.metrics_text();
    assert!(
        m.contains("twill_bgp_flaps_total{peer=\"127.0.0.1\"} 1"),
        "{m}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn unresolved_secret_reference_is_refused() {
    let a = speaker("127.0.0.1", 65001, free_port()).await;
    let mut p = peer("127.0.0.9", 65009, 179, "127.0.0.1");
    p.password = Some(twill_bgpd::speaker::PasswordSource::SecretRef {
        namespace: "kube-system".into(),
        name: "bgp".into(),
        key: "password".into(),
    });
    let e = a.add_peer(p).unwrap_err();
    assert!(e.to_string().contains("Secret"), "{e}");
    a.shutdown().await;
}

/// A hand-made 2-octet peer (no 4-octet AS capability) on loopback: our
/// 4-octet AS must reach it as AS_TRANS in AS_PATH plus the real path in
/// AS4_PATH (RFC 6793 §4.2.2), and its OPEN must carry AS_TRANS.
#[tokio::test]
async fn two_octet_peer_gets_as_trans_and_as4_path() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = free_port();
    let a = Speaker::start(SpeakerConfig {
        asn: 4_200_000_001,
        router_id: "127.0.0.1".parse().unwrap(),
        listen: Some(SocketAddr::new("127.0.0.1".parse().unwrap(), port)),
        cluster_id: None,
        multipath: false,
        graceful_restart: None,
    })
    .await
    .unwrap();
    a.originate("10.1.0.0/24".parse().unwrap(), PathAttrs::default());
    let mut p = PeerConfig::new("127.0.0.3".parse().unwrap(), 65003);
    p.passive = true;
    p.families = vec![twill_bgpd::types::Afi::Ipv4];
    a.add_peer(p).unwrap();

    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.3:0".parse().unwrap()).unwrap();
    let mut s = sock
        .connect(SocketAddr::new("127.0.0.1".parse().unwrap(), port))
        .await
        .unwrap();
    // OPEN: version 4, AS 65003, hold 90, id 127.0.0.3, no optional parameters.
    let mut open = vec![0xffu8; 16];
    open.extend_from_slice(&[0, 29, 1, 4, 0xfd, 0xeb, 0, 90, 127, 0, 0, 3, 0]);
    s.write_all(&open).await.unwrap();
    async fn read(s: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
        let mut h = [0u8; 19];
        s.read_exact(&mut h).await.unwrap();
        let len = u16::from_be_bytes([h[16], h[17]]) as usize;
        let mut b = vec![0u8; len - 19];
        s.read_exact(&mut b).await.unwrap();
        (h[18], b)
    }
    let (t, body) = read(&mut s).await;
    assert_eq!(t, 1);
    assert_eq!(
        u16::from_be_bytes([body[1], body[2]]),
        23456,
        "OPEN must carry AS_TRANS"
    );
    let (t, _) = read(&mut s).await;
    assert_eq!(t, 4);
    let mut ka = vec![0xffu8; 16];
    ka.extend_from_slice(&[0, 19, 4]);
    s.write_all(&ka).await.unwrap();
    let update = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let (t, b) = read(&mut s).await;
            let announced = t == 2 && b.len() > 4 && u16::from_be_bytes([b[2], b[3]]) > 0;
            if announced {
                return b;
            }
        }
    })
    .await
    .expect("an UPDATE with our route");
    // Walk the attributes.
    let wl = u16::from_be_bytes([update[0], update[1]]) as usize;
    let al = u16::from_be_bytes([update[2 + wl], update[3 + wl]]) as usize;
    let mut attrs = &update[4 + wl..4 + wl + al];
    let (mut as_path, mut as4_path) = (None, None);
    while attrs.len() >= 3 {
        let flags = attrs[0];
        let code = attrs[1];
        let (len, hdr) = if flags & 0x10 != 0 {
            (u16::from_be_bytes([attrs[2], attrs[3]]) as usize, 4)
        } else {
            (attrs[2] as usize, 3)
        };
        let v = attrs[hdr..hdr + len].to_vec();
        match code {
            2 => as_path = Some(v),
            17 => as4_path = Some(v),
            _ => {}
        }
        attrs = &attrs[hdr + len..];
    }
    // One SEQUENCE of one 2-octet AS: AS_TRANS.
    assert_eq!(as_path, Some(vec![2, 1, 0x5b, 0xa0]));
    // AS4_PATH: one SEQUENCE of one 4-octet AS: 4200000001.
    let mut want = vec![2u8, 1];
    want.extend_from_slice(&4_200_000_001u32.to_be_bytes());
    assert_eq!(as4_path, Some(want));
    a.shutdown().await;
}

/// A peer that goes silent: with a 3 s hold time we send KEEPALIVEs about
/// every second and, 3 s after the last message, NOTIFICATION Hold Timer
/// Expired (4/0).
#[tokio::test]
async fn silent_peer_gets_hold_timer_expired() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = free_port();
    let a = speaker("127.0.0.1", 65001, port).await;
    let mut p = PeerConfig::new("127.0.0.4".parse().unwrap(), 65004);
    p.passive = true;
    p.hold_time = 3;
    p.families = vec![twill_bgpd::types::Afi::Ipv4];
    a.add_peer(p).unwrap();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.4:0".parse().unwrap()).unwrap();
    let mut s = sock
        .connect(SocketAddr::new("127.0.0.1".parse().unwrap(), port))
        .await
        .unwrap();
    // OPEN: AS 65004 (0xfdec), hold 3, id 127.0.0.4.
    let mut open = vec![0xffu8; 16];
    open.extend_from_slice(&[0, 29, 1, 4, 0xfd, 0xec, 0, 3, 127, 0, 0, 4, 0]);
    s.write_all(&open).await.unwrap();
    let mut ka = vec![0xffu8; 16];
    ka.extend_from_slice(&[0, 19, 4]);
    s.write_all(&ka).await.unwrap();
    let start = Instant::now();
    let mut keepalives = 0;
    let notif = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            let mut h = [0u8; 19];
            s.read_exact(&mut h).await.unwrap();
            let len = u16::from_be_bytes([h[16], h[17]]) as usize;
            let mut b = vec![0u8; len - 19];
            s.read_exact(&mut b).await.unwrap();
            match h[18] {
                4 => keepalives += 1,
                3 => return (b[0], b[1]),
                _ => {}
            }
        }
    })
    .await
    .expect("no NOTIFICATION from a hold timer");
    let took = start.elapsed();
    assert_eq!(notif, (4, 0));
    assert!(keepalives >= 3, "only {keepalives} KEEPALIVEs in {took:?}");
    assert!(
        took >= Duration::from_millis(2900),
        "hold timer fired early: {took:?}"
    );
    a.shutdown().await;
}
