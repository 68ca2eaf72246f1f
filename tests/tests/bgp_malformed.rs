//! A raw TCP test peer (hand-built bytes, independent of our codec) opens a
//! session to twill-bgpd and sends one malformed message per session: each
//! gets the right NOTIFICATION, or RFC 7606 treat-as-withdraw /
//! attribute-discard with the session kept, while the session to BIRD stays
//! up throughout.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use twill_tests::peers::{NODE4, TorLink, TwillBgpd};
use twill_tests::wait_until;

const PEER_AS: u32 = 65002;

fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(ty);
    m.extend_from_slice(body);
    m
}

fn open(id: Ipv4Addr) -> Vec<u8> {
    let mut b = vec![4];
    b.extend_from_slice(&(PEER_AS as u16).to_be_bytes());
    b.extend_from_slice(&90u16.to_be_bytes());
    b.extend_from_slice(&id.octets());
    // Capabilities: MP IPv4 unicast, 4-octet AS.
    let caps = [
        &[1u8, 4, 0, 1, 0, 1][..],
        &[65u8, 4][..],
        &PEER_AS.to_be_bytes()[..],
    ]
    .concat();
    b.push(caps.len() as u8 + 2);
    b.push(2);
    b.push(caps.len() as u8);
    b.extend_from_slice(&caps);
    msg(1, &b)
}

fn update(attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0];
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(attrs);
    b.extend_from_slice(nlri);
    msg(2, &b)
}

const ORIGIN: [u8; 4] = [0x40, 1, 1, 0];
/// AS_PATH [65002], 4-octet.
const AS_PATH: [u8; 9] = [0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xea];

fn next_hop(src: Ipv4Addr) -> Vec<u8> {
    [&[0x40u8, 3, 4][..], &src.octets()[..]].concat()
}

fn good_attrs(src: Ipv4Addr) -> Vec<u8> {
    [&ORIGIN[..], &AS_PATH[..], &next_hop(src)[..]].concat()
}

/// Runs `f` on a thread inside network namespace `ns` (its sockets live there).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on this thread only, with a valid namespace fd.
        assert_eq!(
            unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        f()
    })
    .join()
    .unwrap()
}

struct Raw {
    s: TcpStream,
}

impl Raw {
    /// Connects from `src` and completes OPEN / KEEPALIVE.
    fn establish(src: Ipv4Addr) -> Raw {
        let sock = socket_bound(src);
        let mut s = sock;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&open(src)).unwrap();
        let (t1, _) = read_msg(&mut s).expect("OPEN from twill-bgpd");
        assert_eq!(t1, 1, "expected OPEN");
        let (t2, _) = read_msg(&mut s).expect("KEEPALIVE from twill-bgpd");
        assert_eq!(t2, 4, "expected KEEPALIVE");
        s.write_all(&msg(4, &[])).unwrap();
        Raw { s }
    }

    fn send(&mut self, m: &[u8]) {
        self.s.write_all(m).unwrap();
    }

    /// The NOTIFICATION's (code, subcode), skipping UPDATEs/KEEPALIVEs;
    /// None when the connection stays quiet for `wait`.
    fn notification(&mut self, wait: Duration) -> Option<(u8, u8)> {
        self.s.set_read_timeout(Some(wait)).unwrap();
        loop {
            let (ty, body) = read_msg(&mut self.s)?;
            if ty == 3 {
                return Some((body[0], body[1]));
            }
        }
    }
}

fn socket_bound(src: Ipv4Addr) -> TcpStream {
    // std has no bind-before-connect: use libc for the socket, std for I/O.
    // SAFETY: plain socket calls with valid arguments; the fd is owned below.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from_ne_bytes(src.octets());
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), len),
            0
        );
        let dst: SocketAddr = "10.96.0.2:179".parse().unwrap();
        let mut da: libc::sockaddr_in = std::mem::zeroed();
        da.sin_family = libc::AF_INET as libc::sa_family_t;
        da.sin_port = dst.port().to_be();
        da.sin_addr.s_addr = u32::from_ne_bytes([10, 96, 0, 2]);
        assert_eq!(
            libc::connect(fd, (&da as *const libc::sockaddr_in).cast(), len),
            0,
            "connect from {src}: {}",
            std::io::Error::last_os_error()
        );
        <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd)
    }
}

fn read_msg(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 19];
    s.read_exact(&mut h).ok()?;
    let len = u16::from_be_bytes([h[16], h[17]]) as usize;
    let mut body = vec![0u8; len.saturating_sub(19)];
    s.read_exact(&mut body).ok()?;
    Some((h[18], body))
}

#[derive(Clone, Copy)]
enum Expect {
    Notification(u8, u8),
    /// The announced prefix is withdrawn; the session stays up.
    TreatAsWithdraw,
    /// The route is accepted without the bad attribute; the session stays up.
    AttributeDiscard,
}

#[test]
fn bgp_malformed_messages_get_the_right_answer_and_other_sessions_stay_up() {
    let l = TorLink::new("tmf");
    l.tor.ip(&["addr", "add", "10.96.1.1/24", "dev", "tor0"]);
    l.node
        .ip(&["route", "add", "10.96.1.0/24", "via", "10.96.0.1"]);
    let bird = l.bird(&["10.60.0.0/24"], |b| b);
    // (last octet, what we send, expected answer)
    type Case = (u8, &'static str, Expect);
    let cases: Vec<Case> = vec![
        (11, "bad marker", Expect::Notification(1, 1)),
        (12, "bad length", Expect::Notification(1, 2)),
        (13, "truncated attribute", Expect::TreatAsWithdraw),
        (14, "bad AS_PATH", Expect::TreatAsWithdraw),
        (15, "bad NLRI length", Expect::Notification(3, 10)),
        (
            16,
            "unknown well-known attribute",
            Expect::Notification(3, 2),
        ),
        (17, "duplicate attribute", Expect::AttributeDiscard),
    ];
    let mut yaml = String::from(
        "  - { address: 10.96.0.1, asn: 65000, hold_time: 9, connect_retry: 2, families: [ipv4] }\n",
    );
    for (n, _, _) in &cases {
        l.tor
            .ip(&["addr", "add", &format!("10.96.1.{n}/24"), "dev", "tor0"]);
        yaml.push_str(&format!(
            "  - {{ address: 10.96.1.{n}, asn: {PEER_AS}, passive: true, families: [ipv4] }}\n"
        ));
    }
    let dir = l.dir("twill");
    let t = TwillBgpd::start(
        &l.node,
        &dir,
        &format!(
            "asn: 65001\nrouter_id: 10.96.0.2\nlisten_address: 10.96.0.2\nstatus_socket: {}\nnetworks: [10.1.0.0/24]\nneighbors:\n{yaml}",
            TwillBgpd::socket_for(&dir).display()
        ),
    );
    assert!(
        wait_until(Duration::from_secs(20), || t.established("10.96.0.1")),
        "{}",
        t.status_table()
    );

    let tor = l.tor.name().to_string();
    for (n, what, expect) in cases {
        let src = Ipv4Addr::new(10, 96, 1, n);
        let prefix = format!("10.77.{n}.0/24");
        let nlri = [24u8, 10, 77, n];
        let bad: Vec<u8> = match n {
            11 => {
                let mut m = msg(4, &[]);
                m[3] = 0;
                m
            }
            12 => {
                let mut m = msg(4, &[]);
                m[17] = 18;
                m
            }
            // AS_PATH claims 9 octets, 6 follow before the NLRI.
            13 => update(
                &[
                    &ORIGIN[..],
                    &[0x40, 2, 9, 2, 1, 0, 0, 0xfd, 0xea],
                    &next_hop(src)[..],
                ]
                .concat()[..4 + 3 + 6],
                &nlri,
            ),
            // One segment followed by a stray octet.
            14 => update(
                &[
                    &ORIGIN[..],
                    &[0x40, 2, 7, 2, 1, 0, 0, 0xfd, 0xea, 0],
                    &next_hop(src)[..],
                ]
                .concat(),
                &nlri,
            ),
            15 => update(&good_attrs(src), &[33, 10, 77, n, 0, 0]),
            16 => update(&[&good_attrs(src)[..], &[0x40, 99, 1, 7]].concat(), &nlri),
            _ => update(&[&good_attrs(src)[..], &[0x40, 1, 1, 2]].concat(), &nlri),
        };
        let good = update(&good_attrs(src), &nlri);
        // Only the connect happens inside the ToR namespace; the socket
        // stays there, so the rest runs on this thread.
        let mut raw = in_netns(&tor, move || Raw::establish(src));
        if matches!(expect, Expect::TreatAsWithdraw) {
            raw.send(&good);
            assert!(
                wait_until(Duration::from_secs(3), || t.has_route(&prefix)),
                "{what}: the valid announcement of {prefix} was not accepted"
            );
        }
        raw.send(&bad);
        let notif = raw.notification(Duration::from_millis(1500));
        match expect {
            Expect::Notification(c, s) => {
                assert_eq!(notif, Some((c, s)), "{what}: wrong answer");
                let p = t.peer(&src.to_string()).unwrap();
                assert_ne!(p["state"], "Established", "{what}: {p}");
            }
            Expect::TreatAsWithdraw => {
                assert_eq!(notif, None, "{what}: must not reset the session");
                assert!(t.established(&src.to_string()), "{what}");
                assert!(
                    wait_until(Duration::from_secs(3), || !t.has_route(&prefix)),
                    "{what}: {prefix} not withdrawn"
                );
            }
            Expect::AttributeDiscard => {
                assert_eq!(notif, None, "{what}: must not reset the session");
                assert!(t.established(&src.to_string()), "{what}");
                assert!(
                    wait_until(Duration::from_secs(3), || t.has_route(&prefix)),
                    "{what}: {prefix} not accepted: {:?}",
                    t.routes()
                );
            }
        }
        drop(raw);
        // The BIRD session is untouched by any of it.
        assert!(
            t.established("10.96.0.1"),
            "{what} disturbed another session"
        );
        assert!(bird.established(NODE4));
    }
    assert!(t.has_route("10.60.0.0/24"));
    let p = t.peer("10.96.0.1").unwrap();
    assert_eq!(p["flaps"], 0, "{p}");
}
