//! Session rules driven by a raw TCP peer on loopback (hand-built bytes,
//! independent of our codec; 127.0.0.x, no root needed): RFC 4271 §6.8
//! collisions against an Established session, a silent second connection,
//! RFC 2918 ROUTE-REFRESH for a family we do not carry, the RFC 9687 send
//! hold timer and the send queue bound, a re-advertisement too large for
//! 4,096 bytes, and the graceful-restart stale time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use twill_bgpd::session::fsm::State;
use twill_bgpd::speaker::{GracefulRestartConfig, PeerConfig, Speaker, SpeakerConfig};
use twill_bgpd::types::{Afi, Community, PathAttrs, Prefix};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Speaker on 127.0.0.1 (AS 65001, router ID 127.0.0.1).
async fn speaker(port: u16, gr: Option<GracefulRestartConfig>) -> Speaker {
    Speaker::start(SpeakerConfig {
        asn: 65001,
        router_id: "127.0.0.1".parse().unwrap(),
        listen: Some(SocketAddr::new("127.0.0.1".parse().unwrap(), port)),
        cluster_id: None,
        multipath: false,
        graceful_restart: gr,
    })
    .await
    .unwrap()
}

/// A passive IPv4 peer at `addr` with AS 65005.
fn peer(addr: &str) -> PeerConfig {
    let mut p = PeerConfig::new(addr.parse().unwrap(), 65005);
    p.passive = true;
    p.families = vec![Afi::Ipv4];
    p
}

fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(ty);
    m.extend_from_slice(body);
    m
}

const KEEPALIVE: [u8; 19] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0, 19, 4,
];

/// OPEN from AS 65005 with MP IPv4, 4-octet AS and, when `gr` is
/// `Some(restarting)`, graceful restart (60 s, IPv4 with forwarding kept).
fn open(id: [u8; 4], gr: Option<bool>) -> Vec<u8> {
    open_with(id, gr, false)
}

/// [`open`], with the RFC 8654 extended message capability when `ext`.
fn open_with(id: [u8; 4], gr: Option<bool>, ext: bool) -> Vec<u8> {
    let mut caps = vec![1u8, 4, 0, 1, 0, 1, 65, 4];
    caps.extend_from_slice(&65005u32.to_be_bytes());
    if ext {
        caps.extend_from_slice(&[6, 0]);
    }
    if let Some(restarting) = gr {
        let head: u16 = (u16::from(restarting) << 15) | 60;
        caps.extend_from_slice(&[64, 6]);
        caps.extend_from_slice(&head.to_be_bytes());
        caps.extend_from_slice(&[0, 1, 1, 0x80]);
    }
    let mut b = vec![4];
    b.extend_from_slice(&65005u16.to_be_bytes());
    b.extend_from_slice(&90u16.to_be_bytes());
    b.extend_from_slice(&id);
    b.push(caps.len() as u8 + 2);
    b.push(2);
    b.push(caps.len() as u8);
    b.extend_from_slice(&caps);
    msg(1, &b)
}

struct Raw {
    s: TcpStream,
}

impl Raw {
    async fn connect(from: &str, port: u16) -> Raw {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let s = sock
            .connect(SocketAddr::new("127.0.0.1".parse().unwrap(), port))
            .await
            .unwrap();
        Raw { s }
    }

    /// Connects until the speaker answers with its OPEN (it refuses
    /// connections while Idle, e.g. in the backoff after an error).
    async fn connect_until_open(from: &str, port: u16) -> Raw {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let mut r = Raw::connect(from, port).await;
            if let Some(Some((1, _))) = r.next(Duration::from_millis(500)).await {
                return r;
            }
            assert!(Instant::now() < end, "the speaker never sent its OPEN");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).await.unwrap();
    }

    /// The next message: Some(None) on EOF/reset, None on timeout.
    async fn next(&mut self, wait: Duration) -> Option<Option<(u8, Vec<u8>)>> {
        tokio::time::timeout(wait, async {
            let mut h = [0u8; 19];
            if self.s.read_exact(&mut h).await.is_err() {
                return None;
            }
            let len = u16::from_be_bytes([h[16], h[17]]) as usize;
            let mut b = vec![0u8; len.saturating_sub(19)];
            if self.s.read_exact(&mut b).await.is_err() {
                return None;
            }
            Some((h[18], b))
        })
        .await
        .ok()
    }

    /// Reads until a NOTIFICATION (its code/subcode) or EOF (None).
    async fn notification(&mut self, wait: Duration) -> Option<(u8, u8)> {
        let end = Instant::now() + wait;
        while Instant::now() < end {
            match self.next(end - Instant::now()).await {
                Some(Some((3, b))) => return Some((b[0], b[1])),
                Some(Some(_)) => {}
                Some(None) | None => return None,
            }
        }
        None
    }

    /// The speaker's OPEN, first on a new connection (`what` names it).
    async fn expect_open(&mut self, what: &str) {
        match self.next(Duration::from_secs(5)).await {
            Some(Some((1, _))) => {}
            other => panic!("no OPEN on the {what}: {other:?}"),
        }
    }

    /// OPEN + KEEPALIVE after the speaker's OPEN; returns once its
    /// KEEPALIVE arrived (we are Established on both sides).
    async fn establish(&mut self, id: [u8; 4], gr: Option<bool>) {
        self.establish_with(open(id, gr)).await;
    }

    async fn establish_with(&mut self, open: Vec<u8>) {
        self.send(&open).await;
        self.send(&KEEPALIVE).await;
        loop {
            match self.next(Duration::from_secs(5)).await {
                Some(Some((4, _))) => return,
                Some(Some((3, b))) => panic!("NOTIFICATION {}/{}", b[0], b[1]),
                Some(Some(_)) => {}
                other => panic!("no KEEPALIVE: {other:?}"),
            }
        }
    }
}

/// Graceful restart on the speaker (restart time 120 s) with `stale_time`.
fn gr(stale_time: Duration) -> Option<GracefulRestartConfig> {
    Some(GracefulRestartConfig {
        restart_time: 120,
        state_file: None,
        stale_time,
    })
}

/// An UPDATE from AS 65005 announcing the /24 `prefix` via `next_hop`.
fn update_24(next_hop: [u8; 4], prefix: [u8; 3]) -> Vec<u8> {
    let attrs = [
        &[0x40u8, 1, 1, 0][..],
        &[0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xed],
        &[0x40, 3, 4],
        &next_hop,
    ]
    .concat();
    let mut body = vec![0, 0];
    body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    body.extend_from_slice(&attrs);
    body.push(24);
    body.extend_from_slice(&prefix);
    msg(2, &body)
}

/// Whether the best routes hold `prefix`.
fn has_route(prefix: &str) -> impl Fn(&[(Prefix, twill_bgpd::rib::BestRoute)]) -> bool + use<> {
    let prefix = prefix.to_string();
    move |r| r.iter().any(|(p, _)| p.to_string() == prefix)
}

/// A speaker (graceful restart, `stale` stale time) with one passive peer,
/// 127.0.0.`n`, Established on a raw connection (GR, not restarting) that
/// has sent 10.`p`.0.0/24, already in the speaker's RIB. Returns the
/// speaker, the port it listens on and the connection.
async fn gr_peer_with_route(n: u8, p: u8, stale: Duration) -> (Speaker, u16, Raw) {
    let port = free_port();
    let a = speaker(port, gr(stale)).await;
    let id = [127, 0, 0, n];
    let addr = format!("127.0.0.{n}");
    a.add_peer(peer(&addr)).unwrap();
    let mut r = Raw::connect_until_open(&addr, port).await;
    r.establish(id, Some(false)).await;
    r.send(&update_24(id, [10, p, 0])).await;
    let has = has_route(&format!("10.{p}.0.0/24"));
    assert!(wait_routes(&a, &has, Duration::from_secs(3)).await);
    (a, port, r)
}

/// IPv4 prefixes of an UPDATE body: (withdrawn, announced).
fn update_prefixes(b: &[u8]) -> (Vec<String>, Vec<String>) {
    fn walk(mut p: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(&bits) = p.first() {
            let n = usize::from(bits).div_ceil(8);
            let mut a = [0u8; 4];
            a[..n].copy_from_slice(&p[1..1 + n]);
            out.push(format!("{}.{}.{}.{}/{bits}", a[0], a[1], a[2], a[3]));
            p = &p[1 + n..];
        }
        out
    }
    let wl = u16::from_be_bytes([b[0], b[1]]) as usize;
    let al = u16::from_be_bytes([b[2 + wl], b[3 + wl]]) as usize;
    (walk(&b[2..2 + wl]), walk(&b[4 + wl + al..]))
}

fn status(s: &Speaker) -> twill_bgpd::speaker::PeerStatus {
    s.status().into_iter().next().expect("one peer")
}

async fn wait(mut f: impl FnMut() -> bool, wait: Duration) -> bool {
    let end = Instant::now() + wait;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// As `wait`, for a condition on the best routes (read from the instance).
async fn wait_routes(
    a: &Speaker,
    f: impl Fn(&[(Prefix, twill_bgpd::rib::BestRoute)]) -> bool,
    wait: Duration,
) -> bool {
    let end = Instant::now() + wait;
    loop {
        if f(&a.best_routes().await) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// RFC 4271 §6.8: the peer opens a second connection while the first is
/// in OpenSent and answers it only after the first is Established. The
/// Established session stays (no flap, keepalives continue); the second
/// connection gets our OPEN and then Cease/Connection Collision Resolution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_collision_keeps_the_established_session() {
    let port = free_port();
    let a = speaker(port, None).await;
    a.add_peer(peer("127.0.0.5")).unwrap();
    let mut first = Raw::connect_until_open("127.0.0.5", port).await;
    assert_eq!(status(&a).state, State::OpenSent);
    // The second connection while the first is in OpenSent: we answer
    // with our OPEN and wait for the peer's.
    let mut second = Raw::connect("127.0.0.5", port).await;
    second.expect_open("second connection").await;
    // A higher BGP identifier than ours, so only the Established rule can
    // keep the first connection.
    first.establish([127, 0, 0, 5], None).await;
    assert!(
        wait(
            || status(&a).state == State::Established,
            Duration::from_secs(3)
        )
        .await
    );
    second.send(&open([127, 0, 0, 5], None)).await;
    assert_eq!(
        second.notification(Duration::from_secs(5)).await,
        Some((6, 7)),
        "the second connection must be closed with Cease/Connection Collision Resolution"
    );
    // The first session is untouched: still Established, no flap, and it
    // keeps sending KEEPALIVEs rather than a NOTIFICATION.
    first.send(&KEEPALIVE).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = status(&a);
    assert_eq!((st.state, st.flaps), (State::Established, 0), "{st:?}");
    // What the established connection carries: End-of-RIB, keepalives;
    // never a NOTIFICATION or a close.
    while let Some(m) = first.next(Duration::from_millis(300)).await {
        match m {
            Some((3, b)) => panic!(
                "NOTIFICATION {}/{} on the established connection",
                b[0], b[1]
            ),
            Some(_) => {}
            None => panic!("the established connection was closed"),
        }
    }
    a.shutdown().await;
}

/// A second connection that never sends an OPEN is closed after
/// `open_wait` (RFC 4271 §8's large hold timer), while the first
/// connection goes on to Established and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_second_connection_is_not_held_forever() {
    let port = free_port();
    let a = speaker(port, None).await;
    let mut p = peer("127.0.0.6");
    p.open_wait = Duration::from_secs(2);
    a.add_peer(p).unwrap();
    let mut first = Raw::connect_until_open("127.0.0.6", port).await;
    let mut second = Raw::connect("127.0.0.6", port).await;
    let opened = Instant::now();
    first.establish([127, 0, 0, 6], None).await;
    // The silent one gets our OPEN, then is closed (Hold Timer Expired).
    let mut got = Vec::new();
    let closed = loop {
        match second.next(Duration::from_secs(6)).await {
            Some(Some((t, b))) => got.push((t, b.first().copied())),
            Some(None) => break opened.elapsed(),
            None => panic!("the silent connection was held for 6 s: {got:?}"),
        }
    };
    assert!(got.contains(&(3, Some(4))), "{got:?}");
    assert!(
        closed >= Duration::from_millis(1900),
        "closed before open_wait: {closed:?}"
    );
    assert!(
        status(&a)
            .last_error
            .unwrap_or_default()
            .contains("sent no OPEN"),
        "{:?}",
        status(&a)
    );
    let st = status(&a);
    assert_eq!((st.state, st.flaps), (State::Established, 0), "{st:?}");
    a.shutdown().await;
}

/// RFC 2918: a ROUTE-REFRESH for a family we do not carry is never a
/// KEEPALIVE. In OpenConfirm it is an FSM error (5/2) — it used to move
/// the session to Established. Established, it is ignored and the session
/// stays; a refresh for IPv4 unicast re-sends our routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_refresh_for_an_unknown_family_is_decoded_as_route_refresh() {
    let port = free_port();
    let a = speaker(port, None).await;
    a.originate("10.71.0.0/24".parse().unwrap(), PathAttrs::default());
    a.add_peer(peer("127.0.0.7")).unwrap();
    let l2vpn = msg(5, &[0, 25, 0, 65]);
    // OpenConfirm: our OPEN, their OPEN, our KEEPALIVE; then the refresh.
    let mut r = Raw::connect_until_open("127.0.0.7", port).await;
    r.send(&open([127, 0, 0, 7], None)).await;
    match r.next(Duration::from_secs(5)).await {
        Some(Some((4, _))) => {}
        other => panic!("no KEEPALIVE: {other:?}"),
    }
    assert_eq!(status(&a).state, State::OpenConfirm);
    r.send(&l2vpn).await;
    assert_eq!(r.notification(Duration::from_secs(5)).await, Some((5, 2)));
    assert_ne!(status(&a).state, State::Established);
    assert_eq!(status(&a).flaps, 0, "never reached Established");
    // Established: ignored.
    let mut r = Raw::connect_until_open("127.0.0.7", port).await;
    r.establish([127, 0, 0, 7], None).await;
    let mut announced = Vec::new();
    while let Some(Some((t, b))) = r.next(Duration::from_millis(500)).await {
        if t == 2 {
            announced.extend(update_prefixes(&b).1);
        }
    }
    assert_eq!(announced, ["10.71.0.0/24"]);
    r.send(&l2vpn).await;
    // No answer: only the periodic KEEPALIVE may arrive meanwhile.
    while let Some(m) = r.next(Duration::from_millis(500)).await {
        assert!(matches!(m, Some((4, _))), "answered with {m:?}");
    }
    assert_eq!(status(&a).state, State::Established);
    // IPv4 unicast: the table again.
    r.send(&msg(5, &[0, 1, 0, 1])).await;
    let again = loop {
        match r.next(Duration::from_secs(3)).await {
            Some(Some((2, b))) if !update_prefixes(&b).1.is_empty() => break update_prefixes(&b).1,
            Some(Some(_)) => {}
            other => panic!("no UPDATE after ROUTE-REFRESH: {other:?}"),
        }
    };
    assert_eq!(again, ["10.71.0.0/24"]);
    let st = status(&a);
    assert_eq!((st.state, st.flaps), (State::Established, 0), "{st:?}");
    a.shutdown().await;
}

/// `n` prefixes with distinct communities (about 55 bytes of UPDATE each).
fn originate_many(a: &Speaker, n: u32) {
    for i in 0..n {
        let p: Prefix = format!("10.{}.{}.0/24", 100 + i / 256, i % 256)
            .parse()
            .unwrap();
        let mut attrs = PathAttrs::default();
        attrs.add_community(Community(i));
        a.originate(p, attrs);
    }
}

/// A raw peer whose receive buffer is tiny, so the speaker's writes stall
/// as soon as it stops reading.
async fn small_window(from: &str, port: u16) -> Raw {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let s = sock
            .connect(SocketAddr::new("127.0.0.1".parse().unwrap(), port))
            .await
            .unwrap();
        let mut r = Raw { s };
        if let Some(Some((1, _))) = r.next(Duration::from_millis(500)).await {
            return r;
        }
        assert!(Instant::now() < end, "the speaker never sent its OPEN");
    }
}

/// RFC 9687: while the peer reads, the session stays up past the send
/// hold time; once it stops reading (its window stays closed) the session
/// is dropped after the send hold time, its routes are gone, and the
/// status names Send Hold Timer Expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_dropped_after_the_send_hold_time() {
    let port = free_port();
    let a = speaker(port, None).await;
    let mut p = peer("127.0.0.8");
    p.send_hold_time = Some(Duration::from_secs(2));
    p.hold_time = 60;
    a.add_peer(p).unwrap();
    let mut r = small_window("127.0.0.8", port).await;
    r.establish([127, 0, 0, 8], None).await;
    // A route from the peer, to see it withdrawn when the session drops.
    r.send(&update_24([127, 0, 0, 8], [10, 72, 0])).await;
    assert!(wait_routes(&a, |r| !r.is_empty(), Duration::from_secs(3)).await);
    // Reading: 3 s > the send hold time, and 12,000 routes flow through.
    originate_many(&a, 12_000);
    let mut received = 0usize;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) || received < 12_000 {
        match r.next(Duration::from_millis(500)).await {
            Some(Some((2, b))) => received += update_prefixes(&b).1.len(),
            Some(Some((3, b))) => {
                panic!("NOTIFICATION {}/{} while the peer was reading", b[0], b[1])
            }
            Some(Some(_)) => {}
            Some(None) => {
                panic!("session ended while the peer was reading, after {received} prefixes")
            }
            None => assert!(
                t.elapsed() < Duration::from_secs(20),
                "only {received} prefixes"
            ),
        }
        r.send(&KEEPALIVE).await;
    }
    let st = status(&a);
    assert_eq!((st.state, st.flaps), (State::Established, 0), "{st:?}");
    // Stop reading; more routes fill both socket buffers.
    let stopped = Instant::now();
    originate_many_more(&a);
    assert!(
        wait(
            || status(&a).state != State::Established,
            Duration::from_secs(15)
        )
        .await,
        "still Established 15 s after the peer stopped reading: {:?}",
        status(&a)
    );
    let took = stopped.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "dropped before the send hold time: {took:?}"
    );
    let err = status(&a).last_error.unwrap_or_default();
    assert!(err.contains("Send Hold Timer Expired"), "{err}");
    assert!(
        wait_routes(
            &a,
            |r| r.iter().all(|(_, b)| b.local),
            Duration::from_secs(2)
        )
        .await,
        "the peer's route stayed"
    );
    a.shutdown().await;
}

/// Another 80,000 routes with distinct attributes (about 4 MB of UPDATEs,
/// more than both socket buffers hold).
fn originate_many_more(a: &Speaker) {
    for i in 0..80_000u32 {
        let p: Prefix = format!("{}.{}.{}.0/24", 11 + i / 65536, (i / 256) % 256, i % 256)
            .parse()
            .unwrap();
        let mut attrs = PathAttrs::default();
        attrs.add_community(Community(1_000_000 + i));
        a.originate(p, attrs);
    }
}

/// The send queue is bounded: a peer that lets it pass the bound is
/// dropped with Cease/Out of Resources instead of memory growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_queue_is_bounded() {
    let port = free_port();
    let a = speaker(port, None).await;
    let mut p = peer("127.0.0.9");
    p.max_send_queue = 256 * 1024;
    p.hold_time = 60;
    a.add_peer(p).unwrap();
    let mut r = small_window("127.0.0.9", port).await;
    r.establish([127, 0, 0, 9], None).await;
    // A small table passes the bound easily.
    originate_many(&a, 100);
    let mut received = 0;
    while received < 100 {
        match r.next(Duration::from_secs(3)).await {
            Some(Some((2, b))) => received += update_prefixes(&b).1.len(),
            Some(Some(_)) => {}
            other => panic!("{other:?} after {received}"),
        }
    }
    assert_eq!(status(&a).state, State::Established);
    // Not reading, 80,000 routes (about 4 MB) more than the bound.
    originate_many_more(&a);
    assert!(
        wait(
            || status(&a).state != State::Established,
            Duration::from_secs(5)
        )
        .await,
        "{:?}",
        status(&a)
    );
    let err = status(&a).last_error.unwrap_or_default();
    assert!(err.contains("Out of Resources"), "{err}");
    a.shutdown().await;
}

/// A re-advertisement whose attributes no longer fit 4,096 bytes (1,100
/// communities) to a peer without RFC 8654 extended messages withdraws the prefix, so the peer does not keep the older
/// path; once the attributes fit again it is announced again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readvertisement_too_large_for_one_update_withdraws_the_prefix() {
    let port = free_port();
    let a = speaker(port, None).await;
    let p: Prefix = "10.73.0.0/24".parse().unwrap();
    a.originate(p, PathAttrs::default());
    a.add_peer(peer("127.0.0.10")).unwrap();
    let mut r = Raw::connect_until_open("127.0.0.10", port).await;
    r.establish([127, 0, 0, 10], None).await;
    async fn next_update(r: &mut Raw) -> (Vec<String>, Vec<String>) {
        loop {
            match r.next(Duration::from_secs(5)).await {
                Some(Some((2, b))) => {
                    let u = update_prefixes(&b);
                    if !u.0.is_empty() || !u.1.is_empty() {
                        return u;
                    }
                }
                Some(Some(_)) => {}
                other => panic!("no UPDATE: {other:?}"),
            }
        }
    }
    assert_eq!(
        next_update(&mut r).await,
        (vec![], vec!["10.73.0.0/24".into()])
    );
    let mut big = PathAttrs::default();
    for i in 0..1100u32 {
        big.add_community(Community(i));
    }
    a.originate(p, big);
    assert_eq!(
        next_update(&mut r).await,
        (vec!["10.73.0.0/24".into()], vec![]),
        "the prefix must be withdrawn"
    );
    let err = status(&a).last_error.unwrap_or_default();
    assert!(err.contains("4096-byte UPDATE"), "{err}");
    let mut small = PathAttrs::default();
    small.add_community(Community(7));
    a.originate(p, small);
    assert_eq!(
        next_update(&mut r).await,
        (vec![], vec!["10.73.0.0/24".into()])
    );
    assert_eq!(status(&a).state, State::Established);
    a.shutdown().await;
}

/// With graceful restart, a second connection while Established gets our
/// OPEN and decides nothing by itself. One that closes without an OPEN (the
/// peer's abandoned attempt of a simultaneous start, accepted late) and one
/// whose OPEN lacks the Restart State bit (a collision, Cease/7) leave the
/// session alone. An OPEN with the Restart State bit means the peer
/// restarted: the session moves to the new connection at once, and the
/// peer's routes stay meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gr_session_moves_to_a_new_connection_only_for_a_restarted_peer() {
    let (a, port, mut first) = gr_peer_with_route(13, 76, Duration::from_secs(30)).await;
    let id = [127, 0, 0, 13];
    let has = has_route("10.76.0.0/24");

    // The first connection keeps carrying the session: no NOTIFICATION,
    // no close, and no flap.
    async fn undisturbed(first: &mut Raw, a: &Speaker, when: &str) {
        first.send(&KEEPALIVE).await;
        while let Some(m) = first.next(Duration::from_millis(300)).await {
            match m {
                Some((3, b)) => panic!("{when}: NOTIFICATION {}/{} on the session", b[0], b[1]),
                Some(_) => {}
                None => panic!("{when}: the session's connection was closed"),
            }
        }
        let st = status(a);
        assert_eq!(
            (st.state, st.flaps),
            (State::Established, 0),
            "{when}: {st:?}"
        );
    }

    // A stray connection: our OPEN, then it closes without one.
    let mut stray = Raw::connect("127.0.0.13", port).await;
    stray.expect_open("stray connection").await;
    drop(stray);
    undisturbed(&mut first, &a, "after a stray connection").await;

    // A collision: an OPEN without the Restart State bit.
    let mut second = Raw::connect("127.0.0.13", port).await;
    second.expect_open("second connection").await;
    second.send(&open(id, Some(false))).await;
    assert_eq!(
        second.notification(Duration::from_secs(5)).await,
        Some((6, 7)),
        "a colliding connection is closed with Cease/Connection Collision Resolution"
    );
    undisturbed(&mut first, &a, "after a collision").await;

    // The peer restarted, and its old connection is not closed (no FIN
    // reached us): its OPEN with the Restart State bit moves the session.
    let mut again = Raw::connect("127.0.0.13", port).await;
    again.expect_open("restarted peer's connection").await;
    again.establish(id, Some(true)).await;
    assert!(
        wait(
            || status(&a).state == State::Established && status(&a).flaps == 1,
            Duration::from_secs(3)
        )
        .await,
        "{:?}",
        status(&a)
    );
    assert!(
        has(&a.best_routes().await),
        "the restarted peer's route went"
    );
    // The old connection is closed by us.
    let closed = loop {
        match first.next(Duration::from_secs(5)).await {
            Some(Some(_)) => {}
            Some(None) => break true,
            None => break false,
        }
    };
    assert!(closed, "the old connection stayed open");
    a.shutdown().await;
}

/// The peer's old connection closes only after its new one arrived (a
/// restarted GR peer whose FIN came late): the session carries on on the
/// new connection at once, instead of waiting in Idle and refusing it, and
/// the peer's routes stay meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_hands_the_session_to_the_peers_second_one() {
    let (a, port, first) = gr_peer_with_route(14, 77, Duration::from_secs(30)).await;
    let id = [127, 0, 0, 14];
    let has = has_route("10.77.0.0/24");
    let mut second = Raw::connect("127.0.0.14", port).await;
    second.expect_open("second connection").await;
    drop(first);
    assert!(
        wait(|| status(&a).flaps == 1, Duration::from_secs(3)).await,
        "the closed connection did not end the session: {:?}",
        status(&a)
    );
    assert!(has(&a.best_routes().await), "the peer's route went");
    // Our KEEPALIVE answers the peer's OPEN on the second connection.
    second.establish(id, Some(true)).await;
    assert!(
        wait(
            || status(&a).state == State::Established,
            Duration::from_secs(3)
        )
        .await,
        "{:?}",
        status(&a)
    );
    assert_eq!(status(&a).flaps, 1);
    assert!(has(&a.best_routes().await), "the peer's route went");
    a.shutdown().await;
}

/// Graceful restart helper: the peer's routes stay (stale) across its
/// restart; when its session is back and it sends no End-of-RIB, they are
/// dropped after the configured stale time (2 s here, not the 360 s that
/// used to be hard-coded) — and not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_routes_go_after_the_configured_stale_time() {
    let (a, port, r) = gr_peer_with_route(11, 74, Duration::from_secs(2)).await;
    let has = has_route("10.74.0.0/24");
    // The peer's process dies: TCP closes without a NOTIFICATION.
    drop(r);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        has(&a.best_routes().await),
        "routes must stay stale while the peer restarts"
    );
    // It comes back (Restart State bit set) and never sends End-of-RIB.
    let mut r = Raw::connect_until_open("127.0.0.11", port).await;
    r.establish([127, 0, 0, 11], Some(true)).await;
    let back = Instant::now();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(has(&a.best_routes().await), "dropped before the stale time");
    assert!(
        wait_routes(&a, |r| !has(r), Duration::from_secs(3)).await,
        "stale route still there {:?} after the session came back",
        back.elapsed()
    );
    // The session came up just before `back` was taken: a little slack.
    assert!(
        back.elapsed() >= Duration::from_millis(1800),
        "{:?}",
        back.elapsed()
    );
    assert_eq!(status(&a).state, State::Established);
    a.shutdown().await;
}

/// With RFC 8654 extended messages on both sides (we always offer them),
/// the same oversized re-advertisement goes out as one UPDATE larger than
/// 4,096 bytes instead of a withdrawal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_extended_messages_the_large_readvertisement_is_sent() {
    let port = free_port();
    let a = speaker(port, None).await;
    let p: Prefix = "10.75.0.0/24".parse().unwrap();
    a.originate(p, PathAttrs::default());
    a.add_peer(peer("127.0.0.12")).unwrap();
    let mut r = Raw::connect_until_open("127.0.0.12", port).await;
    r.establish_with(open_with([127, 0, 0, 12], None, true))
        .await;
    let mut big = PathAttrs::default();
    for i in 0..1100u32 {
        big.add_community(Community(i));
    }
    a.originate(p, big);
    let (len, u) = loop {
        match r.next(Duration::from_secs(5)).await {
            Some(Some((2, b))) if b.len() > 4096 => break (b.len() + 19, update_prefixes(&b)),
            Some(Some((2, b))) => assert!(update_prefixes(&b).0.is_empty(), "withdrawn"),
            Some(Some(_)) => {}
            other => panic!("no extended UPDATE: {other:?}"),
        }
    };
    assert!(len > 4096, "{len}");
    assert_eq!(u, (vec![], vec!["10.75.0.0/24".to_string()]));
    assert_eq!(status(&a).state, State::Established);
    a.shutdown().await;
}
