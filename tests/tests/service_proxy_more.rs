//! More of the service proxy's semantics in the lab (issue 17, item 2),
//! each with its positive case in the same set-up:
//!
//! * `loadBalancerSourceRanges`: from the ToR's network, a source inside
//!   the range reaches the LoadBalancer address, one outside does not (the
//!   node port stays open to both, as in kube-proxy);
//! * SCTP: this kernel has no SCTP sockets, but netfilter tracks and NATs
//!   SCTP, so a crafted INIT sent over a raw socket to a cluster IP arrives
//!   at the endpoint with its address and target port, and a TCP port of
//!   the same number does not catch it;
//! * `externalTrafficPolicy: Local`: the node's own UDP to the LoadBalancer
//!   address and its node port (served by the cluster set) moves when its
//!   remote endpoint goes (stale conntrack entries flushed);
//! * the node's own UDP to a Service without endpoints: `send()` fails at
//!   once with EPERM and the socket then reports ECONNREFUSED — what
//!   kube-proxy (iptables and nftables modes) gives too (docs/services.md);
//! * IPv6: a UDP client of an IPv6 cluster IP and one of an IPv6 node port
//!   (from the ToR) move when the endpoint goes, and the IPv6 node port
//!   answers TCP from the ToR; an IPv6 LoadBalancer address from the ToR
//!   (refused without endpoints, then answered by the endpoint),
//!   `loadBalancerSourceRanges` over IPv6 and SCTP over IPv6 — the IPv4
//!   checks of ranges and SCTP are helpers taking the family; an IPv6
//!   external IP from the ToR, and `externalTrafficPolicy: Local` over IPv6
//!   (the endpoint sees the ToR's own address through the LoadBalancer
//!   address and its node's node port; the other node's node port drops).
//!
//! EndpointSlices are written by the test (the lab has no endpoint
//! controller), pointing at the lab's pods.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use twill_tests::lab::Lab;
use twill_tests::netns::spawn_in;
use twill_tests::services::{
    NS, Servers, cluster_ip, node_addr, peer_server, sa, service, tcp, udp_server,
};
use twill_tests::{require_binary, require_root, wait_until};

const LB_POOL: &str = "10.251.9.0/28";
/// A second address the test gives the ToR's rack bridge: the source
/// inside the load balancer's source ranges (172.30.0.1 is outside).
const TOR_ALLOWED: &str = "172.30.0.250";
const TOR_OTHER: &str = "172.30.0.1";
/// The IPv6 LoadBalancer pool of the dual-stack test.
const LB_POOL6: &str = "fd00:251:9::/124";
/// The same two sources on the ToR's IPv6 rack network: the second address
/// the test gives it (inside the ranges) and its own (outside).
const TOR_ALLOWED6: &str = "fd00:172:30::250";
const TOR_OTHER6: &str = "fd00:172:30::1";
/// An IPv6 external IP, inside the lab's `serviceExternalIPs`.
const EXTERNAL_IP6: &str = "fd00:251:8::7";

fn node_port(lab: &Lab, name: &str, i: usize) -> u16 {
    let s = service(lab, name);
    s["spec"]["ports"][i]["nodePort"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("no node port {i}: {s}"))
}

/// The LoadBalancer address the lab's allocator gave `name`.
fn lb_ip(lab: &Lab, name: &str) -> String {
    let mut lb = None;
    wait_until(Duration::from_secs(20), || {
        lb = service(lab, name)["status"]["loadBalancer"]["ingress"][0]["ip"]
            .as_str()
            .map(str::to_string);
        lb.is_some()
    });
    lb.unwrap_or_else(|| panic!("no LoadBalancer address: {}", service(lab, name)))
}

/// A Service `name` with `ports` (`(name, protocol, port, targetPort)`).
fn svc(name: &str, extra: &str, ports: &[(&str, &str, u16, u16)]) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n{extra}  ports:\n"
    );
    for (n, proto, port, target) in ports {
        y.push_str(&format!(
            "  - {{name: {n}, port: {port}, targetPort: {target}, protocol: {proto}}}\n"
        ));
    }
    y
}

/// The EndpointSlice of `svc`: its ports (`(name, protocol, port)`) and
/// ready endpoints (`(address, node)`).
fn slice(svc: &str, family: &str, ports: &[(&str, &str, u16)], eps: &[(&str, &str)]) -> String {
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {svc}-1\n  namespace: {NS}\n  labels: {{kubernetes.io/service-name: {svc}}}\naddressType: {family}\nports:\n"
    );
    for (n, proto, port) in ports {
        y.push_str(&format!(
            "- {{name: {n}, port: {port}, protocol: {proto}}}\n"
        ));
    }
    y.push_str(if eps.is_empty() {
        "endpoints: []\n"
    } else {
        "endpoints:\n"
    });
    for (addr, node) in eps {
        y.push_str(&format!(
            "- addresses: ['{addr}']\n  nodeName: {node}\n  conditions: {{ready: true}}\n"
        ));
    }
    y
}

fn udp_once(ns: &str, from: Option<&str>, to: SocketAddr) -> Option<String> {
    let bind = match (from, to) {
        (Some(a), _) => sa(a, 0),
        (None, SocketAddr::V4(_)) => sa("0.0.0.0", 0),
        (None, SocketAddr::V6(_)) => sa("::", 0),
    };
    spawn_in(ns, move || {
        let s = UdpSocket::bind(bind).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        s.send_to(b"who", to).ok()?;
        let mut b = [0u8; 64];
        let (n, _) = s.recv_from(&mut b).ok()?;
        Some(String::from_utf8_lossy(&b[..n]).into_owned())
    })
    .join()
    .ok()
    .flatten()
}

/// A UDP client that keeps one socket (so one conntrack entry) in `ns` and
/// asks `to` on demand; stopped on drop.
struct UdpClient {
    ask: std::sync::mpsc::Sender<bool>,
    answers: std::sync::mpsc::Receiver<Option<String>>,
}

impl UdpClient {
    fn new(ns: &str, to: SocketAddr) -> UdpClient {
        let (ask, asks) = std::sync::mpsc::channel::<bool>();
        let (tell, answers) = std::sync::mpsc::channel();
        let bind = if to.is_ipv4() {
            sa("0.0.0.0", 0)
        } else {
            sa("::", 0)
        };
        spawn_in(ns, move || {
            let s = UdpSocket::bind(bind).expect("client socket");
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .expect("timeout");
            while let Ok(true) = asks.recv() {
                let _ = s.send_to(b"who", to);
                let mut b = [0u8; 64];
                let got = s
                    .recv_from(&mut b)
                    .ok()
                    .map(|(n, _)| String::from_utf8_lossy(&b[..n]).into_owned());
                if tell.send(got).is_err() {
                    return;
                }
            }
        });
        UdpClient { ask, answers }
    }

    fn who(&self) -> Option<String> {
        self.ask.send(true).ok()?;
        self.answers.recv().ok().flatten()
    }

    /// Asks until the answer is `want` (true) or `within` passed (false).
    fn until(&self, want: &str, within: Duration) -> (bool, Option<String>) {
        let t = Instant::now();
        let mut last = None;
        while t.elapsed() < within {
            last = self.who();
            if last.as_deref() == Some(want) {
                return (true, last);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (false, last)
    }
}

impl Drop for UdpClient {
    fn drop(&mut self) {
        let _ = self.ask.send(false);
    }
}

fn wait_tcp(ns: &str, to: SocketAddr, want: &str) -> Result<String, String> {
    let mut last = Err("never tried".to_string());
    wait_until(Duration::from_secs(20), || {
        last = tcp(ns, to);
        last.as_deref() == Ok(want)
    });
    last
}

// --- SCTP over raw sockets -------------------------------------------------

/// CRC-32C (Castagnoli), the SCTP checksum (RFC 9260, appendix A).
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An SCTP packet holding one INIT chunk from `sport` to `dport`, told
/// apart from others by its initiate tag.
fn sctp_init(sport: u16, dport: u16, tag: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes()); // verification tag: 0 in an INIT
    p.extend_from_slice(&0u32.to_be_bytes()); // checksum, filled below
    p.extend_from_slice(&[1, 0]); // chunk type INIT, flags
    p.extend_from_slice(&20u16.to_be_bytes()); // chunk length
    p.extend_from_slice(&tag.to_be_bytes()); // initiate tag
    p.extend_from_slice(&65535u32.to_be_bytes()); // a_rwnd
    p.extend_from_slice(&1u16.to_be_bytes()); // outbound streams
    p.extend_from_slice(&1u16.to_be_bytes()); // inbound streams
    p.extend_from_slice(&tag.wrapping_add(1).to_be_bytes()); // initial TSN
    let sum = crc32c(&p);
    p[8..12].copy_from_slice(&sum.to_le_bytes());
    p
}

/// A raw IPv4 or (`v6`) IPv6 socket for protocol 132 (SCTP), or why there is none.
fn raw_sctp_socket(v6: bool) -> Result<std::os::fd::OwnedFd, String> {
    use std::os::fd::FromRawFd;
    let (family, name) = if v6 {
        (libc::AF_INET6, "AF_INET6")
    } else {
        (libc::AF_INET, "AF_INET")
    };
    // SAFETY: plain socket(2); the fd is owned by the OwnedFd at once.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW, libc::IPPROTO_SCTP) };
    if fd < 0 {
        return Err(format!(
            "socket({name}, SOCK_RAW, IPPROTO_SCTP): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Sends `packet` (an SCTP packet) to `dst` over a raw socket from `ns`;
/// the kernel adds the IP header (the SCTP checksum covers no pseudo-header,
/// so the same packet goes over either family).
fn send_sctp(ns: &str, dst: IpAddr, packet: Vec<u8>) -> Result<(), String> {
    spawn_in(ns, move || {
        use std::os::fd::AsRawFd;
        let fd = raw_sctp_socket(dst.is_ipv6())?;
        let send = |to: *const libc::sockaddr, len: usize| {
            // SAFETY: buffer and address are valid for the lengths given.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    to,
                    len as libc::socklen_t,
                )
            }
        };
        let n = match dst {
            IpAddr::V4(d) => {
                let to = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: 0,
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(d).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                send(
                    (&raw const to).cast(),
                    std::mem::size_of::<libc::sockaddr_in>(),
                )
            }
            IpAddr::V6(d) => {
                let to = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: 0,
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: d.octets(),
                    },
                    sin6_scope_id: 0,
                };
                send(
                    (&raw const to).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>(),
                )
            }
        };
        if n < 0 {
            return Err(format!(
                "sendto {dst} (raw SCTP): {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err("sender thread panicked".into()))
}

/// One SCTP packet seen at an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    tag: u32,
}

/// Ports and initiate tag of an SCTP packet whose first chunk is an INIT.
fn parse_init_chunk(s: &[u8]) -> Option<(u16, u16, u32)> {
    if *s.get(12)? != 1 {
        return None;
    }
    Some((
        u16::from_be_bytes(s.get(0..2)?.try_into().ok()?),
        u16::from_be_bytes(s.get(2..4)?.try_into().ok()?),
        u32::from_be_bytes(s.get(16..20)?.try_into().ok()?),
    ))
}

/// Parses an IPv4 packet carrying an SCTP INIT (what a raw IPv4 socket reads).
fn parse_init4(b: &[u8]) -> Option<Seen> {
    let ihl = usize::from(*b.first()? & 0x0f) * 4;
    let ip4 = |o: usize| -> Option<IpAddr> {
        let a: [u8; 4] = b.get(o..o + 4)?.try_into().ok()?;
        Some(IpAddr::from(a))
    };
    let (sport, dport, tag) = parse_init_chunk(b.get(ihl..)?)?;
    Some(Seen {
        src: ip4(12)?,
        dst: ip4(16)?,
        sport,
        dport,
        tag,
    })
}

/// Sets an integer socket option, or says which one failed.
fn set_opt<T>(fd: &std::os::fd::OwnedFd, level: i32, opt: i32, v: &T) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid fd and a value of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(format!(
            "setsockopt({level}, {opt}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Reads one packet from a raw IPv6 SCTP socket: an IPv6 raw socket gets
/// no IP header, so the source comes from the sender's address and the
/// destination from `IPV6_PKTINFO`.
fn recv_init6(fd: &std::os::fd::OwnedFd, buf: &mut [u8]) -> Option<Seen> {
    use std::os::fd::AsRawFd;
    // SAFETY: all-zero is a valid sockaddr_in6.
    let mut from: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all-zero is a valid msghdr; the pointers are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut from).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg points at buffers valid for the lengths it names.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &raw mut msg, 0) };
    let n = usize::try_from(n).ok()?;
    let mut dst = None;
    // SAFETY: the CMSG_* walk stays inside msg_control as recvmsg filled it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IPV6 && (*c).cmsg_type == libc::IPV6_PKTINFO {
                let info: libc::in6_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                dst = Some(IpAddr::from(info.ipi6_addr.s6_addr));
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    let (sport, dport, tag) = parse_init_chunk(buf.get(..n)?)?;
    Some(Seen {
        src: IpAddr::from(from.sin6_addr.s6_addr),
        dst: dst?,
        sport,
        dport,
        tag,
    })
}

/// Captures SCTP INITs of one family arriving in `ns` until `stop`; the
/// packets seen.
fn capture_sctp(
    ns: &str,
    v6: bool,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<Vec<Seen>, String>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = spawn_in(ns, move || {
        use std::os::fd::AsRawFd;
        let ready = || -> Result<std::os::fd::OwnedFd, String> {
            let fd = raw_sctp_socket(v6)?;
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            set_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
            if v6 {
                set_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, &1i32)?;
            }
            Ok(fd)
        };
        let fd = ready();
        let _ = tx.send(());
        let fd = fd?;
        let mut seen = Vec::new();
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            let got = if v6 {
                recv_init6(&fd, &mut buf)
            } else {
                // SAFETY: buf is valid for its length.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                usize::try_from(n)
                    .ok()
                    .and_then(|n| buf.get(..n))
                    .and_then(parse_init4)
            };
            seen.extend(got);
        }
        Ok(seen)
    });
    let _ = rx.recv();
    h
}

/// Whether `/proc/net/nf_conntrack` text holds an SCTP entry to `frontend`
/// answered by `endpoint` from `port` (IPv6 addresses are written in full
/// there, so they are compared parsed).
fn has_sctp_entry(ct: &str, frontend: IpAddr, endpoint: IpAddr, port: u16) -> bool {
    ct.lines().any(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        if !words.contains(&"sctp") {
            return false;
        }
        let all = |key: &str| -> Vec<&str> {
            words
                .iter()
                .filter_map(|w| w.strip_prefix(key))
                .collect::<Vec<_>>()
        };
        let (src, dst, sport) = (all("src="), all("dst="), all("sport="));
        dst.first().and_then(|a| a.parse::<IpAddr>().ok()) == Some(frontend)
            && src.get(1).and_then(|a| a.parse::<IpAddr>().ok()) == Some(endpoint)
            && sport.get(1).and_then(|p| p.parse::<u16>().ok()) == Some(port)
    })
}

#[test]
fn crc32c_is_the_sctp_checksum() {
    // RFC 3720, B.4: 32 bytes of zeros.
    assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
}

#[test]
fn sctp_entries_are_found_in_both_families_conntrack_lines() {
    // As /proc/net/nf_conntrack writes them: IPv6 addresses in full.
    let ct = "\
ipv4     2 sctp     132 2 CLOSED src=10.244.0.1 dst=10.96.0.9 sport=40123 dport=7000 [UNREPLIED] src=10.244.0.65 dst=10.244.0.1 sport=7100 dport=40123 mark=0 zone=0 use=2
ipv6     10 sctp     132 2 CLOSED src=fd00:0010:0244:0000:0000:0000:0000:0001 dst=fd00:0096:0000:0000:0000:0000:0000:0009 sport=40123 dport=7000 [UNREPLIED] src=fd00:0010:0244:0000:0000:0000:0000:0041 dst=fd00:0010:0244:0000:0000:0000:0000:0001 sport=7100 dport=40123 mark=0 zone=0 use=2
ipv6     10 tcp      6 119 TIME_WAIT src=fd00:0010:0244:0000:0000:0000:0000:0001 dst=fd00:0096:0000:0000:0000:0000:0000:000a sport=40125 dport=7000 src=fd00:0010:0244:0000:0000:0000:0000:0041 dst=fd00:0010:0244:0000:0000:0000:0000:0001 sport=80 dport=40125 [ASSURED] mark=0 zone=0 use=2
";
    let ip = |s: &str| s.parse::<IpAddr>().expect("an address");
    assert!(has_sctp_entry(ct, ip("10.96.0.9"), ip("10.244.0.65"), 7100));
    assert!(has_sctp_entry(
        ct,
        ip("fd00:96::9"),
        ip("fd00:10:244::41"),
        7100
    ));
    // The wrong target port, the wrong endpoint, a TCP entry: none.
    assert!(!has_sctp_entry(
        ct,
        ip("fd00:96::9"),
        ip("fd00:10:244::41"),
        80
    ));
    assert!(!has_sctp_entry(
        ct,
        ip("fd00:96::9"),
        ip("fd00:10:244::42"),
        7100
    ));
    assert!(!has_sctp_entry(
        ct,
        ip("fd00:96::a"),
        ip("fd00:10:244::41"),
        80
    ));
}

// --- Set-ups and checks both families share ---------------------------------

/// The `spec` lines that make a Service single-stack IPv6 (nothing for
/// IPv4, the lab's first family).
fn family_spec(v6: bool) -> &'static str {
    if v6 {
        "  ipFamilies: [IPv6]\n  ipFamilyPolicy: SingleStack\n"
    } else {
        ""
    }
}

/// An EndpointSlice's `addressType` for the family.
fn address_type(v6: bool) -> &'static str {
    if v6 { "IPv6" } else { "IPv4" }
}

/// A pod's address of the family.
fn pod_addr(lab: &Lab, pod: &str, v6: bool) -> String {
    if v6 {
        lab.pod_ip6(pod)
    } else {
        lab.pod_ip(pod)
    }
}

/// A dual-stack lab (two nodes, one pod each) with a BIRD ToR holding an
/// IPv6 session to every node, whose store gives cluster IPs of both
/// families.
fn dual_stack_lab() -> Lab {
    require_root();
    require_binary("bird", "bird2");
    require_binary("birdc", "bird2");
    let lab = Lab::up(&[
        "--nodes",
        "2",
        "--tor",
        "bird",
        "--pods-per-node",
        "1",
        "--dual-stack",
    ]);
    assert!(lab.up_ok, "{}", lab.up_output);
    let out = lab.twillctl(&["datastore", "service-range", "10.96.0.0/12,fd00:96::/108"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab
}

/// LoadBalancer addresses from `pools` (an IPPool `lbN` each), announced by
/// the nodes to the ToR.
fn lb_pools(lab: &Lab, pools: &[&str]) {
    for (i, cidr) in pools.iter().enumerate() {
        lab.apply(&format!(
            "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: lb{i}\nspec:\n  cidr: {cidr}\n  allowedUses: [LoadBalancer]\n"
        ));
    }
    let cidrs: Vec<String> = pools
        .iter()
        .map(|c| format!(r#"{{"cidr":"{c}"}}"#))
        .collect();
    patch_bgp(
        lab,
        &format!(
            r#"{{"spec":{{"serviceLoadBalancerIPs":[{}]}}}}"#,
            cidrs.join(",")
        ),
    );
}

/// A merge patch of the default BGPConfiguration.
fn patch_bgp(lab: &Lab, patch: &str) {
    let out = lab.twillctl(&["patch", "bgpconfiguration", "default", "-p", patch]);
    assert!(
        out.status.success(),
        "patch bgpconfiguration: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `loadBalancerSourceRanges` from the ToR's network, in `inside`'s family:
/// the ToR's rack bridge gets `inside` (`/len`) as a second address; a
/// LoadBalancer Service `fw` whose only source range is `inside` (endpoint:
/// n1-p1's UDP server on 5353, which answers "one") answers `inside` and
/// gives `outside` (the ToR's own address) nothing; its node port on n1
/// answers both, as the ranges guard the LoadBalancer address only.
fn source_ranges_hold(lab: &Lab, (inside, len): (&str, u8), outside: &str) {
    let v6 = inside.contains(':');
    let tor = lab.ns("tor");
    let with_len = format!("{inside}/{len}");
    let mut add = vec!["ip", "addr", "add", &with_len, "dev", "rack"];
    if v6 {
        // Usable at once, without duplicate address detection's wait.
        add.push("nodad");
    }
    lab.sh("tor", &add);
    let host = if v6 { 128 } else { 32 };
    lab.apply(&svc(
        "fw",
        &format!(
            "  type: LoadBalancer\n{}  loadBalancerSourceRanges: [{inside}/{host}]\n",
            family_spec(v6)
        ),
        &[("p", "UDP", 53, 5353)],
    ));
    let ep = pod_addr(lab, "n1-p1", v6);
    lab.apply(&slice(
        "fw",
        address_type(v6),
        &[("p", "UDP", 5353)],
        &[(&ep, "n1")],
    ));
    let lb = lb_ip(lab, "fw");
    assert_eq!(
        lb.parse::<IpAddr>().map(|a| a.is_ipv6()),
        Ok(v6),
        "the LoadBalancer address of fw"
    );
    let fw = sa(&lb, 53);
    assert!(
        wait_until(Duration::from_secs(20), || udp_once(&tor, Some(inside), fw)
            .as_deref()
            == Some("one")),
        "{inside} (inside the source ranges) never reached {fw}; the ToR's route:\n{}",
        lab.sh("tor", &["ip", "route", "get", &lb])
    );
    for _ in 0..4 {
        assert_eq!(
            udp_once(&tor, Some(inside), fw).as_deref(),
            Some("one"),
            "inside the source ranges"
        );
        assert_eq!(
            udp_once(&tor, Some(outside), fw),
            None,
            "{outside} is outside the source ranges but reached {fw}"
        );
    }
    let np = node_port(lab, "fw", 0);
    let n1 = node_addr(lab, "n1", if v6 { "addr6" } else { "addr" });
    for from in [inside, outside] {
        assert_eq!(
            udp_once(&tor, Some(from), sa(&n1, np)).as_deref(),
            Some("one"),
            "node port {n1}:{np} from {from}"
        );
    }
}

/// SCTP through a cluster IP of one family, from pod n1-p1 to the endpoint
/// n2-p1: one Service `mix` with SCTP and TCP on port 7000 (→ 7100 and
/// → 80) and a TCP-only Service `tonly` on 7000. A crafted INIT to `mix`
/// arrives at the endpoint from the client's address at the endpoint's
/// address and the SCTP target port, n1's conntrack holds the SCTP entry,
/// and an INIT to `tonly` is not translated (never arrives).
fn sctp_through_a_cluster_ip(lab: &Lab, v6: bool) {
    let (p1, p2) = ("n1-p1", "n2-p1");
    let (ns1, ns2) = (lab.ns(p1), lab.ns(p2));
    let (a, b) = (pod_addr(lab, p1, v6), pod_addr(lab, p2, v6));
    let fam = address_type(v6);
    lab.apply(&svc(
        "mix",
        family_spec(v6),
        &[("s", "SCTP", 7000, 7100), ("t", "TCP", 7000, 80)],
    ));
    lab.apply(&slice(
        "mix",
        fam,
        &[("s", "SCTP", 7100), ("t", "TCP", 80)],
        &[(&b, "n2")],
    ));
    lab.apply(&svc("tonly", family_spec(v6), &[("t", "TCP", 7000, 80)]));
    lab.apply(&slice("tonly", fam, &[("t", "TCP", 80)], &[(&b, "n2")]));
    let mix: IpAddr = cluster_ip(lab, "mix").parse().expect("an address");
    let tonly: IpAddr = cluster_ip(lab, "tonly").parse().expect("an address");
    assert_eq!((mix.is_ipv6(), tonly.is_ipv6()), (v6, v6), "{mix} {tonly}");
    // The TCP port answers (so both Services are in the table).
    for ip in [mix, tonly] {
        let to = SocketAddr::new(ip, 7000);
        assert_eq!(wait_tcp(&ns1, to, p2).as_deref(), Ok(p2), "TCP to {to}");
    }
    let cap_stop = Arc::new(AtomicBool::new(false));
    let _cap_guard = Servers(cap_stop.clone());
    let capture = capture_sctp(&ns2, v6, cap_stop.clone());
    let (to_mix, to_tonly) = (0x5c7a_0001u32, 0x5c7a_0002u32);
    let pod_a: IpAddr = a.parse().expect("an address");
    let pod_b: IpAddr = b.parse().expect("an address");
    for _ in 0..3 {
        send_sctp(&ns1, mix, sctp_init(40123, 7000, to_mix)).unwrap_or_else(|e| {
            panic!("no raw SCTP socket in the pod, so SCTP cannot be tested here: {e}")
        });
        send_sctp(&ns1, tonly, sctp_init(40124, 7000, to_tonly)).expect("send SCTP");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    cap_stop.store(true, Ordering::Relaxed);
    let seen = capture
        .join()
        .expect("capture thread")
        .unwrap_or_else(|e| panic!("no raw SCTP socket at the endpoint: {e}"));
    let at_mix: Vec<&Seen> = seen.iter().filter(|s| s.tag == to_mix).collect();
    assert!(
        !at_mix.is_empty(),
        "no SCTP INIT to {mix} port 7000 arrived at {b} (seen: {seen:?})"
    );
    for s in &at_mix {
        assert_eq!(
            (s.src, s.dst, s.sport, s.dport),
            (pod_a, pod_b, 40123, 7100),
            "the INIT arrives from the client's address at the endpoint's address and SCTP target port"
        );
    }
    assert!(
        !seen.iter().any(|s| s.tag == to_tonly),
        "SCTP to {tonly} port 7000 (a TCP-only Service) was translated: {seen:?}"
    );
    let ct = lab.sh("n1", &["cat", "/proc/net/nf_conntrack"]);
    assert!(
        has_sctp_entry(&ct, mix, pod_b, 7100),
        "no SCTP conntrack entry from {mix} port 7000 to {b} port 7100 on n1:\n{ct}"
    );
}

#[test]
fn source_ranges_sctp_local_policy_flush_and_the_nodes_udp_refusal() {
    require_root();
    require_binary("bird", "bird2");
    require_binary("birdc", "bird2");
    let lab = Lab::up(&["--nodes", "2", "--tor", "bird", "--pods-per-node", "1"]);
    assert!(lab.up_ok, "{}", lab.up_output);
    let (p1, p2) = ("n1-p1", "n2-p1");
    let (a, b) = (lab.pod_ip(p1), lab.pod_ip(p2));
    let (ns1, ns2) = (lab.ns(p1), lab.ns(p2));
    let stop = Arc::new(AtomicBool::new(false));
    let _servers = Servers(stop.clone());
    udp_server(&ns1, 5353, "one", stop.clone());
    udp_server(&ns2, 5353, "two", stop.clone());

    lb_pools(&lab, &[LB_POOL]);

    // --- loadBalancerSourceRanges, from the ToR's network.
    source_ranges_hold(&lab, (TOR_ALLOWED, 24), TOR_OTHER);

    // --- SCTP: a crafted INIT to a cluster IP is translated to the endpoint.
    sctp_through_a_cluster_ip(&lab, false);

    // --- externalTrafficPolicy Local: the node's own UDP to the LB address
    // and its node port is served by the cluster set; when that endpoint
    // goes, the same client sockets move (stale entries flushed).
    lab.apply(&svc(
        "loc",
        "  type: LoadBalancer\n  externalTrafficPolicy: Local\n",
        &[("p", "UDP", 53, 5353)],
    ));
    lab.apply(&slice("loc", "IPv4", &[("p", "UDP", 5353)], &[(&a, "n1")]));
    let loc_lb = sa(&lb_ip(&lab, "loc"), 53);
    let n2 = node_addr(&lab, "n2", "addr");
    let loc_np = sa(&n2, node_port(&lab, "loc", 0));
    let node_ns = lab.ns("n2");
    let via_lb = UdpClient::new(&node_ns, loc_lb);
    let via_np = UdpClient::new(&node_ns, loc_np);
    for (c, to) in [(&via_lb, loc_lb), (&via_np, loc_np)] {
        let (ok, last) = c.until("one", Duration::from_secs(20));
        assert!(
            ok,
            "n2 -> {to} (Local policy, endpoint on n1) never answered: {last:?}"
        );
    }
    lab.apply(&slice("loc", "IPv4", &[("p", "UDP", 5353)], &[(&b, "n2")]));
    for (c, to) in [(&via_lb, loc_lb), (&via_np, loc_np)] {
        let (ok, last) = c.until("two", Duration::from_secs(5));
        assert!(
            ok,
            "n2 -> {to}: the same socket still reaches the gone endpoint on n1 \
             (stale conntrack entry of the node's own traffic under the Local policy): {last:?}"
        );
        for _ in 0..3 {
            assert_eq!(c.who().as_deref(), Some("two"));
        }
    }

    // --- The node's own UDP to a Service without endpoints.
    lab.apply(&svc("none", "", &[("p", "UDP", 53, 5353)]));
    let none = sa(&cluster_ip(&lab, "none"), 53);
    let n1_ns = lab.ns("n1");
    // (send error, recv error or answer, time taken) of one connected exchange.
    let exchange = |ns: &str| {
        spawn_in(ns, move || {
            let u = UdpSocket::bind("0.0.0.0:0").expect("bind");
            u.connect(none).expect("connect");
            u.set_read_timeout(Some(Duration::from_millis(1500)))
                .expect("timeout");
            let t = Instant::now();
            let sent = u.send(b"who").map(|_| ()).map_err(|e| e.raw_os_error());
            let mut buf = [0u8; 64];
            let got = u
                .recv(&mut buf)
                .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
                .map_err(|e| e.raw_os_error());
            (sent, got, t.elapsed())
        })
        .join()
        .expect("exchange thread")
    };
    let refused = |ns: &str, node: bool| {
        let mut last = None;
        let ok = wait_until(Duration::from_secs(20), || {
            let r = exchange(ns);
            let want_send = if node { Err(Some(libc::EPERM)) } else { Ok(()) };
            let ok = r.0 == want_send && r.1 == Err(Some(libc::ECONNREFUSED));
            last = Some(r);
            ok
        });
        (ok, last)
    };
    let (ok, last) = refused(&n1_ns, true);
    assert!(
        ok,
        "the node's own UDP to {none} (no endpoints): want send() EPERM then ECONNREFUSED, got {last:?}"
    );
    let t = last.map(|l| l.2).unwrap_or_default();
    assert!(t < Duration::from_millis(500), "refused only after {t:?}");
    let (ok, last) = refused(&ns1, false);
    assert!(
        ok,
        "a pod's UDP to {none} (no endpoints): want ECONNREFUSED, got {last:?}"
    );
    // With an endpoint, the same kind of socket from the node gets the answer.
    lab.apply(&slice("none", "IPv4", &[("p", "UDP", 5353)], &[(&a, "n1")]));
    let mut last = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            let r = exchange(&n1_ns);
            let ok = r.0 == Ok(()) && r.1.as_deref() == Ok("one");
            last = Some(r);
            ok
        }),
        "the node's UDP to {none} after an endpoint came: {last:?}"
    );
}

#[test]
fn ipv6_udp_flush_and_ipv6_node_port_from_the_tor() {
    let lab = dual_stack_lab();
    let (p1, p2) = ("n1-p1", "n2-p1");
    let (a6, b6) = (lab.pod_ip6(p1), lab.pod_ip6(p2));
    let stop = Arc::new(AtomicBool::new(false));
    let _servers = Servers(stop.clone());
    udp_server(&lab.ns(p1), 5353, "one", stop.clone());
    udp_server(&lab.ns(p2), 5353, "two", stop.clone());
    lab.apply(&svc(
        "dns6",
        "  type: NodePort\n  ipFamilies: [IPv6]\n  ipFamilyPolicy: SingleStack\n",
        &[("u", "UDP", 53, 5353), ("t", "TCP", 80, 80)],
    ));
    let ports = [("u", "UDP", 5353), ("t", "TCP", 80)];
    lab.apply(&slice("dns6", "IPv6", &ports, &[(&a6, "n1")]));
    let ip = cluster_ip(&lab, "dns6");
    assert!(ip.starts_with("fd00:96::"), "{ip}");
    let (udp_np, tcp_np) = (node_port(&lab, "dns6", 0), node_port(&lab, "dns6", 1));
    let n1_6 = node_addr(&lab, "n1", "addr6");
    let tor = lab.ns("tor");

    // TCP through the IPv6 node port from the ToR.
    let np_tcp = SocketAddr::new(n1_6.parse::<IpAddr>().expect("IPv6"), tcp_np);
    assert_eq!(wait_tcp(&tor, np_tcp, p1).as_deref(), Ok(p1));

    // UDP clients that keep their socket: the node n2 to the cluster IP,
    // the ToR to n1's IPv6 node port.
    let to_cip = sa(&ip, 53);
    let to_np = SocketAddr::new(n1_6.parse::<IpAddr>().expect("IPv6"), udp_np);
    let from_node = UdpClient::new(&lab.ns("n2"), to_cip);
    let from_tor = UdpClient::new(&tor, to_np);
    for (c, to) in [(&from_node, to_cip), (&from_tor, to_np)] {
        let (ok, last) = c.until("one", Duration::from_secs(20));
        assert!(ok, "{to} never answered over IPv6: {last:?}");
    }
    lab.apply(&slice("dns6", "IPv6", &ports, &[(&b6, "n2")]));
    for (c, to) in [(&from_node, to_cip), (&from_tor, to_np)] {
        let (ok, last) = c.until("two", Duration::from_secs(5));
        assert!(
            ok,
            "{to}: the same IPv6 client socket still reaches the gone endpoint \
             (stale conntrack entry): {last:?}"
        );
        for _ in 0..3 {
            assert_eq!(c.who().as_deref(), Some("two"));
        }
    }
    assert_eq!(wait_tcp(&tor, np_tcp, p2).as_deref(), Ok(p2));
}

#[test]
fn ipv6_load_balancer_source_ranges_and_sctp_from_the_tor() {
    let lab = dual_stack_lab();
    let (p1, p2) = ("n1-p1", "n2-p1");
    let (a6, b6) = (lab.pod_ip6(p1), lab.pod_ip6(p2));
    let tor = lab.ns("tor");
    let stop = Arc::new(AtomicBool::new(false));
    let _servers = Servers(stop.clone());
    udp_server(&lab.ns(p1), 5353, "one", stop.clone());
    udp_server(&lab.ns(p2), 5353, "two", stop.clone());
    lb_pools(&lab, &[LB_POOL6]);

    // --- An IPv6 LoadBalancer address, from the ToR: refused at once while
    // the Service has no endpoint (so the ToR's route leads to a node that
    // proxies it), then answered by the endpoint, and by the next one when
    // the endpoint moves.
    lab.apply(&svc(
        "lb6",
        &format!("  type: LoadBalancer\n{}", family_spec(true)),
        &[("t", "TCP", 80, 80)],
    ));
    let lb = lb_ip(&lab, "lb6");
    let pool: ipnetwork::IpNetwork = LB_POOL6.parse().expect("a CIDR");
    let lb_addr: IpAddr = lb.parse().expect("an address");
    assert!(pool.contains(lb_addr), "{lb} is not from {LB_POOL6}");
    let to = SocketAddr::new(lb_addr, 80);
    let route = || lab.sh("tor", &["ip", "-6", "route", "show", &format!("{lb}/128")]);
    let mut last = (Err("never tried".to_string()), Duration::ZERO);
    let refused = wait_until(Duration::from_secs(20), || {
        let t = Instant::now();
        let r = tcp(&tor, to);
        last = (r, t.elapsed());
        last.0.as_ref().is_err_and(|e| e.contains("refused"))
    });
    assert!(
        refused,
        "{to} without endpoints: want a refusal from the ToR, got {last:?}; the ToR's route: {}",
        route()
    );
    assert!(
        last.1 < Duration::from_millis(500),
        "refused only after {:?}",
        last.1
    );
    lab.apply(&slice("lb6", "IPv6", &[("t", "TCP", 80)], &[(&a6, "n1")]));
    assert_eq!(
        wait_tcp(&tor, to, p1).as_deref(),
        Ok(p1),
        "{to} from the ToR; its route: {}",
        route()
    );
    lab.apply(&slice("lb6", "IPv6", &[("t", "TCP", 80)], &[(&b6, "n2")]));
    assert_eq!(
        wait_tcp(&tor, to, p2).as_deref(),
        Ok(p2),
        "{to} after the endpoint moved"
    );
    for _ in 0..3 {
        assert_eq!(tcp(&tor, to).as_deref(), Ok(p2));
    }

    // --- loadBalancerSourceRanges over IPv6, from the ToR's network.
    source_ranges_hold(&lab, (TOR_ALLOWED6, 64), TOR_OTHER6);

    // --- SCTP over IPv6 through a cluster IP.
    sctp_through_a_cluster_ip(&lab, true);
}

#[test]
fn ipv6_external_ips_and_the_local_policy_from_the_tor() {
    let lab = dual_stack_lab();
    let p1 = "n1-p1";
    let a6 = lab.pod_ip6(p1);
    let tor = lab.ns("tor");
    let stop = Arc::new(AtomicBool::new(false));
    let _servers = Servers(stop.clone());
    peer_server(&lab.ns(p1), 8081, stop.clone());
    lb_pools(&lab, &[LB_POOL6]);
    patch_bgp(
        &lab,
        &format!(r#"{{"spec":{{"serviceExternalIPs":[{{"cidr":"{EXTERNAL_IP6}/128"}}]}}}}"#),
    );
    let ext6: IpAddr = EXTERNAL_IP6.parse().expect("an address");
    let route = |ip: &str| lab.sh("tor", &["ip", "-6", "route", "show", &format!("{ip}/128")]);

    // --- An IPv6 external IP (Cluster policy), from the ToR: answered by
    // the endpoint through whichever node the ToR picks.
    lab.apply(&svc(
        "ext6",
        &format!("  externalIPs: ['{EXTERNAL_IP6}']\n{}", family_spec(true)),
        &[("t", "TCP", 82, 8081)],
    ));
    lab.apply(&slice(
        "ext6",
        "IPv6",
        &[("t", "TCP", 8081)],
        &[(&a6, "n1")],
    ));
    let to_ext = SocketAddr::new(ext6, 82);
    let mut last = Err("never tried".to_string());
    assert!(
        wait_until(Duration::from_secs(20), || {
            last = tcp(&tor, to_ext);
            last.is_ok()
        }),
        "{to_ext} from the ToR: {last:?}; the ToR's route: {}",
        route(EXTERNAL_IP6)
    );
    for _ in 0..5 {
        assert!(
            tcp(&tor, to_ext).is_ok(),
            "{to_ext} answered only sometimes"
        );
    }

    // --- externalTrafficPolicy Local over IPv6: the endpoint (on n1) sees
    // the ToR's own address, through the LoadBalancer address and n1's
    // node port; n2 has no local endpoint and drops.
    lab.apply(&svc(
        "loc6",
        &format!(
            "  type: LoadBalancer\n  externalTrafficPolicy: Local\n{}",
            family_spec(true)
        ),
        &[("t", "TCP", 81, 8081)],
    ));
    lab.apply(&slice(
        "loc6",
        "IPv6",
        &[("t", "TCP", 8081)],
        &[(&a6, "n1")],
    ));
    let lb = lb_ip(&lab, "loc6");
    let np = node_port(&lab, "loc6", 0);
    let (n1, n2) = (
        node_addr(&lab, "n1", "addr6"),
        node_addr(&lab, "n2", "addr6"),
    );
    for to in [sa(&lb, 81), sa(&n1, np)] {
        assert_eq!(
            wait_tcp(&tor, to, TOR_OTHER6).as_deref(),
            Ok(TOR_OTHER6),
            "{to} from the ToR under the Local policy: the pod must see the ToR's address; \
             the ToR's route to {lb}: {}",
            route(&lb)
        );
    }
    let to_n2 = sa(&n2, np);
    let mut last = Ok(String::new());
    assert!(
        wait_until(Duration::from_secs(20), || {
            last = tcp(&tor, to_n2);
            last.as_ref().err().map(String::as_str) == Some("timeout")
        }),
        "{to_n2}: n2 has no local endpoint and must drop, got {last:?}"
    );
}
