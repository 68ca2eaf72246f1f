//! ICMP echo from inside a pod's network namespace to many addresses at
//! once, for the lab's connectivity matrix: one thread per source pod enters
//! the pod's namespace (setns on that thread only), opens one raw ICMP (or
//! ICMPv6) socket there, sends one echo request to every destination and
//! collects the replies. A 100-pod lab's 9,900 pairs then cost 100 threads
//! and 9,900 packets instead of 9,900 `ping` processes.
//!
//! A reply counts only if it is an echo reply from the destination's own
//! address carrying our identifier, the destination's sequence number and
//! this round's token, so a late reply of an earlier round or someone else's
//! ping in the namespace is never taken for an answer. Building and reading
//! packets is pure (`request`, `parse_reply`); the rest is I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const MAGIC: &[u8; 4] = b"twl\x01";

/// The echo request for destination number `seq` of round `round` (the
/// ICMPv4 checksum filled in; for ICMPv6 the kernel fills it).
pub(super) fn request(v6: bool, id: u16, seq: u16, round: u32) -> Vec<u8> {
    let mut p = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(MAGIC);
    p.extend_from_slice(&round.to_be_bytes());
    if !v6 {
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The sequence number of a received packet if it is an echo reply to one
/// of our requests of this round. `packet` is what a raw socket returns: the
/// IPv4 header and ICMP message, or the ICMPv6 message alone.
pub(super) fn parse_reply(v6: bool, packet: &[u8], id: u16, round: u32) -> Option<u16> {
    let icmp = if v6 {
        packet
    } else {
        let ihl = usize::from(packet.first()? & 0x0f) * 4;
        packet.get(ihl..)?
    };
    let want_type = if v6 { 129 } else { 0 };
    if icmp.len() < 16 || icmp[0] != want_type || icmp[1] != 0 {
        return None;
    }
    if u16::from_be_bytes([icmp[4], icmp[5]]) != id || &icmp[8..12] != MAGIC {
        return None;
    }
    if u32::from_be_bytes([icmp[12], icmp[13], icmp[14], icmp[15]]) != round {
        return None;
    }
    Some(u16::from_be_bytes([icmp[6], icmp[7]]))
}

/// Enters the network namespace `ns` (by name, /run/netns/NS) on the
/// calling thread. Call it only on a thread made for it.
fn enter(ns: &str) -> anyhow::Result<()> {
    let path = format!("/run/netns/{ns}");
    let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: a valid namespace fd; only the calling thread changes namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("entering {ns}"));
    }
    Ok(())
}

fn raw_socket(v6: bool) -> anyhow::Result<OwnedFd> {
    let (family, proto) = if v6 {
        (libc::AF_INET6, libc::IPPROTO_ICMPV6)
    } else {
        (libc::AF_INET, libc::IPPROTO_ICMP)
    };
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening a raw ICMP socket");
    }
    // SAFETY: fd was just returned by socket(2) and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // 1 MiB of receive buffer: every reply of a round fits.
    let size: libc::c_int = 1 << 20;
    // SAFETY: a valid fd and a c_int option of the right size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    Ok(fd)
}

fn send_to(fd: &OwnedFd, ip: IpAddr, packet: &[u8]) -> std::io::Result<()> {
    let rc = match ip {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_in is plain data; zeroed is a valid value.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            // SAFETY: valid fd, buffer and address of the stated sizes.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        IpAddr::V6(a) => {
            // SAFETY: sockaddr_in6 is plain data; zeroed is a valid value.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_addr.s6_addr = a.octets();
            // SAFETY: valid fd, buffer and address of the stated sizes.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&sa as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one packet within `wait`: its bytes and its source address.
fn recv_from(fd: &OwnedFd, buf: &mut [u8], wait: Duration) -> Option<(usize, IpAddr)> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = wait.as_millis().clamp(1, 60_000) as libc::c_int;
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
        return None;
    }
    // SAFETY: sockaddr_storage is plain data; zeroed is a valid value.
    let mut sa: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: valid fd, buffer and address storage of the stated sizes.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            (&mut sa as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if n < 0 {
        return Some((0, IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
    }
    let from = match i32::from(sa.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (family AF_INET).
            let s: &libc::sockaddr_in = unsafe { &*(&sa as *const _ as *const libc::sockaddr_in) };
            IpAddr::V4(Ipv4Addr::from(s.sin_addr.s_addr.to_ne_bytes()))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 (family AF_INET6).
            let s: &libc::sockaddr_in6 =
                unsafe { &*(&sa as *const _ as *const libc::sockaddr_in6) };
            IpAddr::V6(Ipv6Addr::from(s.sin6_addr.s6_addr))
        }
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    Some((n as usize, from))
}

/// One round from the namespace `ns`: one echo request to every address in
/// `dsts` (all of one family), then replies until every destination has
/// answered or `wait` has passed since the last request went out. Element i
/// of the result: did `dsts[i]` answer? Runs on the calling thread, which it
/// moves into `ns`: call it on a thread of its own.
pub(super) fn round_from(
    ns: &str,
    dsts: &[IpAddr],
    id: u16,
    round: u32,
    wait: Duration,
) -> anyhow::Result<Vec<bool>> {
    let mut answered = vec![false; dsts.len()];
    let Some(first) = dsts.first() else {
        return Ok(answered);
    };
    if dsts.len() > usize::from(u16::MAX) {
        bail!("at most {} destinations per round", u16::MAX);
    }
    let v6 = first.is_ipv6();
    enter(ns)?;
    let fd = raw_socket(v6)?;
    for (i, ip) in dsts.iter().enumerate() {
        // A send error (no route yet, neighbour table full) is an
        // unanswered destination, not a failed round.
        let _ = send_to(&fd, *ip, &request(v6, id, i as u16, round));
    }
    let deadline = Instant::now() + wait;
    let mut missing = dsts.len();
    let mut buf = [0u8; 2048];
    while missing > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let Some((n, from)) = recv_from(&fd, &mut buf, left) else {
            break;
        };
        let Some(seq) = parse_reply(v6, &buf[..n], id, round) else {
            continue;
        };
        let i = usize::from(seq);
        if dsts.get(i) == Some(&from) && !answered[i] {
            answered[i] = true;
            missing -= 1;
        }
    }
    Ok(answered)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel sends back for a request: type 0 (or 129), the rest
    /// echoed, behind a 20-byte IPv4 header for IPv4.
    fn reply_to(v6: bool, req: &[u8]) -> Vec<u8> {
        let mut r = req.to_vec();
        r[0] = if v6 { 129 } else { 0 };
        if v6 {
            r
        } else {
            let mut ip = vec![0x45u8];
            ip.extend_from_slice(&[0; 19]);
            ip.extend(r);
            ip
        }
    }

    #[test]
    fn a_reply_to_our_request_of_this_round_is_recognised() {
        for v6 in [false, true] {
            let req = request(v6, 0x1234, 77, 5);
            assert_eq!(parse_reply(v6, &reply_to(v6, &req), 0x1234, 5), Some(77));
            // Another round, another identifier, a request (not a reply),
            // a truncated packet: not an answer.
            assert_eq!(parse_reply(v6, &reply_to(v6, &req), 0x1234, 6), None);
            assert_eq!(parse_reply(v6, &reply_to(v6, &req), 0x1235, 5), None);
            let mut as_request = reply_to(v6, &req);
            let t = if v6 { 0 } else { 20 };
            as_request[t] = if v6 { 128 } else { 8 };
            assert_eq!(parse_reply(v6, &as_request, 0x1234, 5), None);
            let r = reply_to(v6, &req);
            assert_eq!(parse_reply(v6, &r[..r.len() - 1], 0x1234, 5), None);
            assert_eq!(parse_reply(v6, &[], 0x1234, 5), None);
        }
        // Someone else's ping (no token) is not ours either.
        let mut other = request(false, 0x1234, 1, 5);
        other[8..12].copy_from_slice(b"abcd");
        assert_eq!(
            parse_reply(false, &reply_to(false, &other), 0x1234, 5),
            None
        );
    }

    /// Two namespaces joined by a veth pair, deleted on drop (by the names
    /// this test made).
    struct Pair(String, String);

    impl Drop for Pair {
        fn drop(&mut self) {
            for ns in [&self.0, &self.1] {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", ns])
                    .status();
            }
        }
    }

    fn ip(args: &[&str]) {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Root (CI is root): a real echo round in a namespace, a neighbour
    /// that answers and an address nobody has, on both families.
    #[test]
    fn a_round_counts_the_neighbour_that_answers_and_not_the_one_that_does_not() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this test builds network namespaces: run it as root"
        );
        let id = std::process::id();
        let pair = Pair(format!("twlecho{id}a"), format!("twlecho{id}b"));
        for ns in [&pair.0, &pair.1] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n", &pair.0, "link", "add", "e0", "type", "veth", "peer", "name", "e0", "netns",
            &pair.1,
        ]);
        for (ns, a4, a6) in [
            (&pair.0, "10.250.0.1/24", "fd00:250::1/64"),
            (&pair.1, "10.250.0.2/24", "fd00:250::2/64"),
        ] {
            ip(&["-n", ns, "addr", "add", a4, "dev", "e0"]);
            ip(&["-n", ns, "-6", "addr", "add", a6, "dev", "e0", "nodad"]);
            ip(&["-n", ns, "link", "set", "e0", "up"]);
        }
        let ns = pair.0.clone();
        let got = std::thread::spawn(move || {
            let v4: Vec<IpAddr> = ["10.250.0.2", "10.250.0.9"]
                .iter()
                .map(|a| a.parse().unwrap())
                .collect();
            let v6: Vec<IpAddr> = ["fd00:250::2", "fd00:250::9"]
                .iter()
                .map(|a| a.parse().unwrap())
                .collect();
            (
                round_from(&ns, &v4, 7, 1, Duration::from_secs(3)).unwrap(),
                round_from(&ns, &v6, 7, 1, Duration::from_secs(3)).unwrap(),
            )
        })
        .join()
        .unwrap();
        assert_eq!(got.0, vec![true, false], "IPv4");
        assert_eq!(got.1, vec![true, false], "IPv6");
    }

    #[test]
    fn the_ipv4_checksum_verifies() {
        let req = request(false, 0xbeef, 300, 9);
        // A correct checksum makes the sum over the whole message 0.
        assert_eq!(checksum(&req), 0);
        assert_eq!(checksum(&[0x45, 0x00, 0x00]), !0x4500u16);
    }
}
