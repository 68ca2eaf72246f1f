//! TCP sockets for BGP: the listener and outgoing connections, with the
//! socket options BGP needs that tokio does not expose — TCP MD5 signatures
//! (RFC 2385, `TCP_MD5SIG`, set per peer address on the listening socket and
//! on the connecting socket before `connect`), GTSM (RFC 5082: we send with
//! TTL 255 and drop anything that arrives with less than 256 − hops through
//! `IP_MINTTL` / `IPV6_MINHOPCOUNT`) and the outgoing TTL for eBGP (1, or the
//! multihop value). `struct tcp_md5sig` is declared here because the libc
//! crate does not define it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Linux `TCP_MD5SIG_MAXKEYLEN`.
pub const MD5_MAX_KEY_LEN: usize = 80;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("TCP MD5 key for {peer} is {len} bytes; at most {MD5_MAX_KEY_LEN} are allowed")]
    KeyTooLong { peer: IpAddr, len: usize },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {0} timed out")]
    Timeout(SocketAddr),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> TransportError {
    let what = what.into();
    move |source| TransportError::Io { what, source }
}

/// Linux `struct tcp_md5sig` (include/uapi/linux/tcp.h).
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: i32,
    key: [u8; MD5_MAX_KEY_LEN],
}

fn setsockopt<T>(fd: RawFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live, properly sized T for the duration of
    // the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets (or, with an empty key, removes) the TCP MD5 key for `peer` on a
/// socket: on a listener it applies to connections from that address.
pub fn set_md5(fd: RawFd, peer: IpAddr, key: &[u8]) -> Result<(), TransportError> {
    if key.len() > MD5_MAX_KEY_LEN {
        return Err(TransportError::KeyTooLong {
            peer,
            len: key.len(),
        });
    }
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    match peer {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe {
                &mut *(&mut sig.addr as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
        }
        IpAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe {
                &mut *(&mut sig.addr as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = a.octets();
        }
    }
    sig.keylen = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_MD5SIG, &sig)
        .map_err(io_err(format!("TCP_MD5SIG for {peer}")))
}

/// Outgoing TTL / hop limit.
pub fn set_ttl(fd: RawFd, v6: bool, ttl: u8) -> Result<(), TransportError> {
    let v = i32::from(ttl);
    if v6 {
        setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &v)
    } else {
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_TTL, &v)
    }
    .map_err(io_err("set TTL"))
}

/// Minimum TTL / hop limit of accepted packets (GTSM).
pub fn set_min_ttl(fd: RawFd, v6: bool, min: u8) -> Result<(), TransportError> {
    let v = i32::from(min);
    if v6 {
        setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT, &v)
    } else {
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_MINTTL, &v)
    }
    .map_err(io_err("set minimum TTL"))
}

/// The TTL options of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlPolicy {
    /// Outgoing TTL.
    pub ttl: u8,
    /// Minimum incoming TTL (GTSM), if any.
    pub min_ttl: Option<u8>,
}

impl TtlPolicy {
    /// eBGP: TTL 1 unless multihop; iBGP: 64. GTSM (`gtsm_hops`: the peer
    /// is at most this many hops away) overrides both: send 255 and accept
    /// only TTL ≥ 256 − hops (RFC 5082 §3: 255 for a direct peer, 254 for
    /// a peer one router away).
    pub fn for_peer(ebgp: bool, multihop: Option<u8>, gtsm_hops: Option<u8>) -> TtlPolicy {
        if let Some(hops) = gtsm_hops {
            let hops = hops.clamp(1, 255);
            return TtlPolicy {
                ttl: 255,
                min_ttl: Some((256u16 - u16::from(hops)) as u8),
            };
        }
        let ttl = match (ebgp, multihop) {
            (_, Some(h)) => h,
            (true, None) => 1,
            (false, None) => 64,
        };
        TtlPolicy { ttl, min_ttl: None }
    }

    pub fn apply(&self, fd: RawFd, v6: bool) -> Result<(), TransportError> {
        set_ttl(fd, v6, self.ttl)?;
        if let Some(m) = self.min_ttl {
            set_min_ttl(fd, v6, m)?;
        }
        Ok(())
    }
}

/// Linux `TCP_SAVE_SYN` / `TCP_SAVED_SYN` (include/uapi/linux/tcp.h).
const TCP_SAVE_SYN: i32 = 27;
const TCP_SAVED_SYN: i32 = 28;

/// The TTL (IPv6: hop limit) of the SYN that opened an accepted connection,
/// from the headers the listener saved (`TCP_SAVE_SYN`). GTSM needs it: the
/// minimum TTL can only be set on an accepted socket after the handshake,
/// too late for what the peer sent meanwhile. Readable once per socket.
pub fn syn_ttl(fd: RawFd) -> Option<u8> {
    let mut buf = [0u8; 512];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf and len are live and len holds buf's size; the kernel
    // writes at most len bytes and stores the written length in len.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            TCP_SAVED_SYN,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let len = usize::try_from(len).ok()?;
    if rc != 0 || len < 20 {
        return None;
    }
    match buf.first()? >> 4 {
        4 => buf.get(8).copied(),
        6 if len >= 40 => buf.get(7).copied(),
        _ => None,
    }
}

/// A bound, listening BGP socket.
pub fn listen(addr: SocketAddr) -> Result<TcpListener, TransportError> {
    let sock = if addr.is_ipv6() {
        TcpSocket::new_v6()
    } else {
        TcpSocket::new_v4()
    }
    .map_err(io_err("create listening socket"))?;
    sock.set_reuseaddr(true).map_err(io_err("SO_REUSEADDR"))?;
    setsockopt(sock.as_raw_fd(), libc::IPPROTO_TCP, TCP_SAVE_SYN, &1i32)
        .map_err(io_err("TCP_SAVE_SYN"))?;
    sock.bind(addr).map_err(io_err(format!("bind {addr}")))?;
    sock.listen(128)
        .map_err(io_err(format!("listen on {addr}")))
}

/// Options of one outgoing connection.
#[derive(Debug, Clone)]
pub struct ConnectOpts {
    pub peer: SocketAddr,
    pub source: Option<IpAddr>,
    pub md5: Option<Vec<u8>>,
    pub ttl: TtlPolicy,
    pub timeout: Duration,
}

/// Connects to a peer with MD5 and TTL options set before the SYN.
pub async fn connect(o: &ConnectOpts) -> Result<TcpStream, TransportError> {
    let v6 = o.peer.is_ipv6();
    let sock = if v6 {
        TcpSocket::new_v6()
    } else {
        TcpSocket::new_v4()
    }
    .map_err(io_err("create socket"))?;
    let fd = sock.as_raw_fd();
    if let Some(key) = &o.md5 {
        set_md5(fd, o.peer.ip(), key)?;
    }
    o.ttl.apply(fd, v6)?;
    if let Some(src) = o.source {
        sock.bind(SocketAddr::new(src, 0))
            .map_err(io_err(format!("bind source address {src}")))?;
    }
    let stream = tokio::time::timeout(o.timeout, sock.connect(o.peer))
        .await
        .map_err(|_| TransportError::Timeout(o.peer))?
        .map_err(io_err(format!("connect to {}", o.peer)))?;
    stream.set_nodelay(true).map_err(io_err("TCP_NODELAY"))?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_policy_follows_rfc_5082_and_ebgp_defaults() {
        assert_eq!(
            TtlPolicy::for_peer(true, None, None),
            TtlPolicy {
                ttl: 1,
                min_ttl: None
            }
        );
        assert_eq!(TtlPolicy::for_peer(false, None, None).ttl, 64);
        assert_eq!(TtlPolicy::for_peer(true, Some(3), None).ttl, 3);
        assert_eq!(
            TtlPolicy::for_peer(true, None, Some(1)),
            TtlPolicy {
                ttl: 255,
                min_ttl: Some(255)
            }
        );
        // A peer one router away: its packets arrive with 254.
        assert_eq!(
            TtlPolicy::for_peer(true, None, Some(2)),
            TtlPolicy {
                ttl: 255,
                min_ttl: Some(254)
            }
        );
        assert_eq!(
            TtlPolicy::for_peer(false, Some(9), Some(254)).min_ttl,
            Some(2)
        );
    }

    #[tokio::test]
    async fn md5_and_ttl_options_are_accepted_by_the_kernel() {
        let l = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        set_md5(l.as_raw_fd(), "127.0.0.1".parse().unwrap(), b"secret").unwrap();
        // The SYN-ACK must also leave with TTL 255 to pass our GTSM check.
        set_ttl(l.as_raw_fd(), false, 255).unwrap();
        let o = ConnectOpts {
            peer: addr,
            source: None,
            md5: Some(b"secret".to_vec()),
            ttl: TtlPolicy::for_peer(true, None, Some(1)),
            timeout: Duration::from_secs(2),
        };
        let (c, a) = tokio::join!(connect(&o), l.accept());
        c.unwrap();
        a.unwrap();
        assert!(matches!(
            set_md5(l.as_raw_fd(), "127.0.0.1".parse().unwrap(), &[0u8; 81]),
            Err(TransportError::KeyTooLong { .. })
        ));
    }

    #[tokio::test]
    async fn wrong_md5_key_never_connects() {
        let l = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        set_md5(l.as_raw_fd(), "127.0.0.1".parse().unwrap(), b"right").unwrap();
        let o = ConnectOpts {
            peer: addr,
            source: None,
            md5: Some(b"wrong".to_vec()),
            ttl: TtlPolicy::for_peer(false, None, None),
            timeout: Duration::from_millis(700),
        };
        let r = tokio::select! {
            r = connect(&o) => r.map(|_| ()),
            _ = l.accept() => panic!("accepted a connection signed with the wrong key"),
        };
        assert!(matches!(r, Err(TransportError::Timeout(_))), "{r:?}");
    }
}
