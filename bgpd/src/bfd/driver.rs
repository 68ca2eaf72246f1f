//! The tokio side of BFD: one receive socket per speaker (UDP 3784 on the
//! speaker's listen address, RFC 5881 §4) and one task per peer owning its
//! [`Session`], its send socket and its timers.
//!
//! Single hop only (RFC 5881 §5): received packets must arrive with IP TTL
//! / hop limit 255 (read with `recvmsg` and IP_RECVTTL / IPV6_RECVHOPLIMIT),
//! and we send with TTL 255 from a source port in 49152–65535. Packets are
//! demultiplexed by source address (one session per peer); the session then
//! checks your-discriminator against its own. A session going Up → Down
//! sends `Event::BfdDown` to the instance task, which closes the BGP session.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdp};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::packet::{self, BfdState, ControlPacket};
use super::session::{Action, Config, Event, Session};
use crate::metrics::Metrics;
use crate::rib::PeerId;
use crate::speaker::{Event as InstanceEvent, StatusCell};
use crate::transport;

/// RFC 5881 §4: single-hop control packets go to this port.
pub const PORT: u16 = 3784;

/// The receive socket and the per-peer sessions it feeds.
pub(crate) struct Hub {
    sessions: Mutex<HashMap<IpAddr, mpsc::Sender<ControlPacket>>>,
    /// Why the receive socket could not be opened (shown in peer status).
    pub bind_error: Option<String>,
    /// Where the receive socket is bound.
    pub local: Option<SocketAddr>,
}

impl Hub {
    /// Binds UDP 3784 on `listen` (the unspecified IPv6 address takes IPv4
    /// too; falls back to 0.0.0.0 without IPv6) and starts the receiver.
    pub fn start(listen: IpAddr) -> Arc<Hub> {
        Hub::start_on(listen, PORT)
    }

    fn start_on(listen: IpAddr, port: u16) -> Arc<Hub> {
        let bound = open_rx(listen, port).or_else(|e| {
            if listen == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
                open_rx(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
            } else {
                Err(e)
            }
        });
        let local = bound.as_ref().ok().and_then(|s| s.local_addr().ok());
        let (sock, bind_error) = match bound {
            Ok(s) => (Some(s), None),
            Err(e) => {
                let msg = format!("BFD: cannot receive on {listen} port {port}: {e}");
                tracing::warn!("{msg}");
                (None, Some(msg))
            }
        };
        let hub = Arc::new(Hub {
            sessions: Mutex::new(HashMap::new()),
            bind_error,
            local,
        });
        if let Some(s) = sock {
            if let Some(at) = hub.local {
                tracing::info!("BFD: receiving on {at}");
            }
            tokio::spawn(rx_loop(s, Arc::downgrade(&hub)));
        }
        hub
    }

    fn lookup(&self, from: IpAddr) -> Option<mpsc::Sender<ControlPacket>> {
        self.sessions.lock().ok()?.get(&from).cloned()
    }
}

fn setsockopt_int(fd: RawFd, level: i32, name: i32, v: i32) -> io::Result<()> {
    // SAFETY: a valid fd and a pointer to a live i32 of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn open_rx(listen: IpAddr, port: u16) -> io::Result<UdpSocket> {
    let s = StdUdp::bind(SocketAddr::new(listen, port))?;
    let fd = s.as_raw_fd();
    if listen.is_ipv6() {
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1)?;
        // IPv4 packets on a dual-stack socket report IP_TTL.
        let _ = setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_RECVTTL, 1);
    } else {
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_RECVTTL, 1)?;
    }
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

/// One datagram with its source and the TTL / hop limit it arrived with.
fn recv_with_ttl(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<u8>)> {
    // SAFETY: every pointer handed to recvmsg points into a live local
    // buffer of the stated length; cmsg walking uses the libc macros on
    // the header recvmsg filled in.
    unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut cbuf = [0u64; 16];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
        let n = libc::recvmsg(fd, &mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut ttl = None;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let h = &*c;
            let is_ttl = (h.cmsg_level == libc::IPPROTO_IP && h.cmsg_type == libc::IP_TTL)
                || (h.cmsg_level == libc::IPPROTO_IPV6 && h.cmsg_type == libc::IPV6_HOPLIMIT);
            if is_ttl {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>());
                ttl = u8::try_from(v).ok();
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        let from = match i32::from(addr.ss_family) {
            libc::AF_INET => {
                let a = &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))),
                    u16::from_be(a.sin_port),
                )
            }
            libc::AF_INET6 => {
                let a = &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)),
                    u16::from_be(a.sin6_port),
                )
            }
            _ => return Err(io::Error::other("unknown address family")),
        };
        Ok((n as usize, from, ttl))
    }
}

async fn rx_loop(sock: UdpSocket, hub: std::sync::Weak<Hub>) {
    let mut buf = [0u8; 128];
    let fd = sock.as_raw_fd();
    loop {
        let r = sock
            .async_io(Interest::READABLE, || recv_with_ttl(fd, &mut buf))
            .await;
        let Some(hub) = hub.upgrade() else { return };
        let (n, from, ttl) = match r {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("BFD receive: {e}");
                continue;
            }
        };
        let from_ip = from.ip().to_canonical();
        // RFC 5881 §5 (GTSM): anything not sent from the link is dropped.
        if ttl != Some(255) {
            tracing::debug!(peer = %from_ip, ?ttl, "BFD packet dropped: TTL is not 255");
            continue;
        }
        let pkt = match packet::decode(buf.get(..n).unwrap_or_default()) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(peer = %from_ip, "BFD packet dropped: {e}");
                continue;
            }
        };
        if let Some(tx) = hub.lookup(from_ip) {
            // A full queue means the task is behind: dropping is what the
            // network would do.
            let _ = tx.try_send(pkt);
        }
    }
}

/// Opens the send socket: TTL 255, source port from 49152–65535 (RFC 5881 §4).
fn open_tx(peer: IpAddr, source: Option<IpAddr>, seed: u64) -> io::Result<UdpSocket> {
    let local = source.unwrap_or(match peer {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    let range = 65535 - 49152 + 1;
    let mut last = io::Error::other("no free source port");
    for i in 0..256u64 {
        let port = 49152 + ((seed.wrapping_add(i.wrapping_mul(7919))) % range) as u16;
        match StdUdp::bind(SocketAddr::new(local, port)) {
            Ok(s) => {
                transport::set_ttl(s.as_raw_fd(), peer.is_ipv6(), 255)
                    .map_err(|e| io::Error::other(e.to_string()))?;
                s.connect(SocketAddr::new(peer, PORT))?;
                s.set_nonblocking(true)?;
                return UdpSocket::from_std(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

/// Keeps a peer's BFD task running; dropping it stops the session
/// (AdminDown is sent to the peer).
pub(crate) struct BfdHandle {
    _stop: oneshot::Sender<()>,
}

pub(crate) struct PeerBfd {
    pub id: PeerId,
    pub peer: IpAddr,
    pub source: Option<IpAddr>,
    pub cfg: Config,
    pub events: mpsc::Sender<InstanceEvent>,
    pub status: StatusCell,
    pub metrics: Arc<Metrics>,
}

/// Registers the peer with the hub and starts its session task.
pub(crate) fn spawn(hub: &Arc<Hub>, p: PeerBfd) -> BfdHandle {
    let (stop_tx, stop_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel(64);
    let mut discr = 0u32;
    if let Ok(mut s) = hub.sessions.lock() {
        s.insert(p.peer, tx);
        discr = (random_u64() as u32).max(1);
    }
    set_state(&p, BfdState::Down);
    if let Some(e) = &hub.bind_error {
        p.status.update(|s| s.last_error = Some(e.clone()));
    }
    tokio::spawn(run(Arc::clone(hub), p, discr, rx, stop_rx));
    BfdHandle { _stop: stop_tx }
}

fn set_state(p: &PeerBfd, st: BfdState) {
    p.status.update(|s| s.bfd = Some(st));
    p.metrics
        .set_bfd_state(&p.peer.to_string(), i64::from(st.wire()));
}

async fn run(
    hub: Arc<Hub>,
    p: PeerBfd,
    discr: u32,
    mut rx: mpsc::Receiver<ControlPacket>,
    mut stop: oneshot::Receiver<()>,
) {
    let name = p.peer.to_string();
    let seed = random_u64();
    let sock = match open_tx(p.peer, p.source, seed) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(peer = %name, "BFD: cannot open the send socket: {e}");
            p.status
                .update(|s| s.last_error = Some(format!("BFD: cannot open the send socket: {e}")));
            None
        }
    };
    let now = || tokio::time::Instant::now().into_std();
    let mut session = Session::new(p.cfg, discr, now(), seed);
    loop {
        let deadline = session.next_deadline().map(tokio::time::Instant::from_std);
        let mut acts = Vec::new();
        tokio::select! {
            _ = &mut stop => {
                acts.extend(session.handle(now(), Event::AdminDown));
                send_all(&sock, &acts).await;
                break;
            }
            pkt = rx.recv() => match pkt {
                Some(pkt) => acts.extend(session.handle(now(), Event::Received(pkt))),
                None => break,
            },
            _ = sleep_until(deadline) => {
                let t = now();
                if session.detect_due(t) {
                    acts.extend(session.handle(t, Event::DetectTimer));
                }
                if session.tx_due(t) {
                    acts.extend(session.handle(t, Event::TxTimer));
                }
            }
        }
        let mut down = false;
        for a in &acts {
            if let Action::StateChanged { from, to, diag } = a {
                tracing::info!(peer = %name, "BFD {} -> {} (diag {diag})", from.name(), to.name());
                set_state(&p, *to);
                down |= *from == BfdState::Up && *to == BfdState::Down;
            }
        }
        send_all(&sock, &acts).await;
        if down {
            // Waits only while the instance is behind; a Down is never lost.
            let _ = p.events.send(InstanceEvent::BfdDown(p.id)).await;
        }
    }
    if let Ok(mut s) = hub.sessions.lock() {
        s.remove(&p.peer);
    }
}

async fn send_all(sock: &Option<UdpSocket>, acts: &[Action]) {
    let Some(sock) = sock else { return };
    for a in acts {
        if let Action::Send(pkt) = a {
            // Errors (ICMP unreachable reported on the connected socket,
            // no route yet) are what a lost packet looks like: ignore.
            let _ = sock.send(&packet::encode(pkt)).await;
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn down_packet() -> [u8; packet::LEN] {
        packet::encode(&ControlPacket {
            diag: 0,
            state: BfdState::Down,
            poll: false,
            final_: false,
            control_plane_independent: false,
            demand: false,
            detect_mult: 3,
            my_discr: 42,
            your_discr: 0,
            desired_min_tx: 1_000_000,
            required_min_rx: 300_000,
            required_min_echo_rx: 0,
        })
    }

    /// Over loopback (which keeps the TTL): only TTL 255 reaches the session.
    #[tokio::test]
    async fn only_packets_with_ttl_255_reach_the_session() {
        for listen in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ] {
            let hub = Hub::start_on(listen, 0);
            assert!(hub.bind_error.is_none(), "{:?}", hub.bind_error);
            let port = hub.local.unwrap().port();
            let (tx, mut rx) = mpsc::channel(4);
            hub.sessions
                .lock()
                .unwrap()
                .insert(IpAddr::V4(Ipv4Addr::LOCALHOST), tx);
            let to = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
            let send = |ttl: u8, bytes: &[u8]| {
                let s = StdUdp::bind("127.0.0.1:0").unwrap();
                transport::set_ttl(s.as_raw_fd(), false, ttl).unwrap();
                s.send_to(bytes, to).unwrap();
            };
            send(64, &down_packet());
            let mut bad = down_packet();
            bad[2] = 0; // detect multiplier 0
            send(255, &bad);
            send(255, &down_packet());
            let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.my_discr, 42);
            // Nothing else was delivered: the TTL-64 and the invalid one
            // were dropped.
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(rx.try_recv().is_err(), "{listen}: a bad packet got through");
        }
    }

    #[test]
    fn send_socket_uses_a_dynamic_port_and_ttl_255() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = open_tx(IpAddr::V4(Ipv4Addr::LOCALHOST), None, 12345).unwrap();
            let port = s.local_addr().unwrap().port();
            assert!(port >= 49152, "{port}");
            let mut ttl: i32 = 0;
            let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
            // SAFETY: valid fd, pointers to live locals.
            let rc = unsafe {
                libc::getsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_TTL,
                    (&mut ttl as *mut i32).cast(),
                    &mut len,
                )
            };
            assert_eq!((rc, ttl), (0, 255));
        });
    }
}
