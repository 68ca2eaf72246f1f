//! A diff of `inet twill-svc` ([`Op`]s) sent to nf_tables as one netlink
//! batch of our own (one transaction, all or nothing), without libnftables.
//!
//! Why: libnftables fetches a cache before every command — every table,
//! chain, set and object of the namespace — so one map element costs as
//! much as listing the ruleset: ~200 ms at 10,000 Services (40,000
//! chains), whatever the change. The kernel needs none of it; a change of
//! endpoints is a handful of messages that cost well under a millisecond.
//!
//! Why not a crate: `rustables` (GPL, by its own account rough) and `nftnl`
//! (links libnftnl at build time) build messages from expression objects —
//! the same encoding work as here, behind a dependency. The encoder knows
//! exactly the rule shapes a diff of this table carries (numgen pick,
//! goto/jump, the hairpin saddr check, the DNAT) and the keys of its maps;
//! [`encode`] refuses anything else (session-affinity sets, source ranges,
//! the Local-policy entry) and the caller sends that diff as nft text
//! through libnftables instead. Each shape is encoded as nft 1.0.6 encodes
//! it (`nft --debug=netlink`), and a kernel test compares the listing after
//! netlink diffs with the listing of the same table loaded whole by nft.
//! The full load stays nft text in one libnftables transaction.
//!
//! [`encode`] is pure; [`send`] is the only I/O (a `NETLINK_NETFILTER`
//! socket in the calling thread's network namespace).

use std::net::IpAddr;

use crate::calc::services::Op;

/// Why a batch was not applied.
#[derive(Debug, thiserror::Error)]
pub enum NfnlError {
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("nf_tables refused {what}: {reason}")]
    Refused { what: String, reason: String },
    #[error("nf_tables did not acknowledge the batch")]
    Unanswered,
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_ERROR: u16 = 2;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;

const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

/// Largest batch sent here: netlink refuses a message above the socket's
/// send buffer (208 KiB by default); a larger diff goes through nft.
pub const MAX_BATCH: usize = 160 * 1024;

/// A batch ready to send: the bytes, and what each acknowledged message
/// does (for the error that names it).
#[derive(Debug)]
pub struct Batch {
    pub bytes: Vec<u8>,
    first_seq: u32,
    what: Vec<String>,
}

/// An encoded verdict: code and chain.
struct Verdict<'a> {
    code: i32,
    chain: Option<&'a str>,
}

const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;

fn verdict(text: &str) -> Option<Verdict<'_>> {
    let w: Vec<&str> = text.split_whitespace().collect();
    match w.as_slice() {
        ["goto", c] => Some(Verdict {
            code: NFT_GOTO,
            chain: Some(c),
        }),
        ["jump", c] => Some(Verdict {
            code: NFT_JUMP,
            chain: Some(c),
        }),
        ["drop"] => Some(Verdict {
            code: NF_DROP,
            chain: None,
        }),
        ["accept"] => Some(Verdict {
            code: NF_ACCEPT,
            chain: None,
        }),
        _ => None,
    }
}

/// Netlink message builder (attributes in host order, as netlink wants;
/// nf_tables values in network order).
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.push(family);
        buf.push(0);
        buf.extend_from_slice(&res_id.to_be_bytes());
        Msg { buf }
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn str(&mut self, ty: u16, s: &str) {
        let mut d = Vec::with_capacity(s.len() + 1);
        d.extend_from_slice(s.as_bytes());
        d.push(0);
        self.attr(ty, &d);
    }

    fn be32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Msg)) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        f(self);
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

// Expression attributes (linux/netfilter/nf_tables.h).
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_REG_2: u32 = 2;

/// One expression of a rule.
enum Expr<'a> {
    /// `meta load KEY => reg 1`.
    Meta(u32),
    /// `cmp eq reg 1 DATA`.
    CmpEq(Vec<u8>),
    /// `payload load LEN @ network header + OFF => reg 1`.
    Network { offset: u32, len: u32 },
    /// `immediate reg 0 VERDICT`.
    Verdict(Verdict<'a>),
    /// `immediate reg N DATA`.
    Value(u32, Vec<u8>),
    /// `numgen reg 1 = random mod N`.
    Random(u32),
    /// `nat dnat FAMILY addr_min reg 1 proto_min reg 2 flags 0x2`.
    Dnat(u8),
}

const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;

fn put_verdict(m: &mut Msg, v: &Verdict) {
    m.nest(NFTA_DATA_VERDICT, |m| {
        m.be32(NFTA_VERDICT_CODE, v.code as u32);
        if let Some(c) = v.chain {
            m.str(NFTA_VERDICT_CHAIN, c);
        }
    });
}

fn put_expr(m: &mut Msg, e: &Expr) {
    m.nest(NFTA_LIST_ELEM, |m| {
        let name = match e {
            Expr::Meta(_) => "meta",
            Expr::CmpEq(_) => "cmp",
            Expr::Network { .. } => "payload",
            Expr::Verdict(_) | Expr::Value(..) => "immediate",
            Expr::Random(_) => "numgen",
            Expr::Dnat(_) => "nat",
        };
        m.str(NFTA_EXPR_NAME, name);
        m.nest(NFTA_EXPR_DATA, |m| match e {
            Expr::Meta(key) => {
                m.be32(2, *key); // NFTA_META_KEY
                m.be32(1, NFT_REG_1); // NFTA_META_DREG
            }
            Expr::CmpEq(data) => {
                m.be32(1, NFT_REG_1); // NFTA_CMP_SREG
                m.be32(2, 0); // NFTA_CMP_OP: NFT_CMP_EQ
                m.nest(3, |m| m.attr(NFTA_DATA_VALUE, data)); // NFTA_CMP_DATA
            }
            Expr::Network { offset, len } => {
                m.be32(1, NFT_REG_1); // NFTA_PAYLOAD_DREG
                m.be32(2, 1); // NFTA_PAYLOAD_BASE: network header
                m.be32(3, *offset);
                m.be32(4, *len);
            }
            Expr::Verdict(v) => {
                m.be32(1, NFT_REG_VERDICT); // NFTA_IMMEDIATE_DREG
                m.nest(2, |m| put_verdict(m, v)); // NFTA_IMMEDIATE_DATA
            }
            Expr::Value(reg, data) => {
                m.be32(1, *reg);
                m.nest(2, |m| m.attr(NFTA_DATA_VALUE, data));
            }
            Expr::Random(modulus) => {
                m.be32(1, NFT_REG_1); // NFTA_NG_DREG
                m.be32(2, *modulus); // NFTA_NG_MODULUS
                m.be32(3, 1); // NFTA_NG_TYPE: NFT_NG_RANDOM
                m.be32(4, 0); // NFTA_NG_OFFSET
            }
            Expr::Dnat(family) => {
                m.be32(1, 1); // NFTA_NAT_TYPE: NFT_NAT_DNAT
                m.be32(2, u32::from(*family)); // NFTA_NAT_FAMILY
                m.be32(3, NFT_REG_1); // NFTA_NAT_REG_ADDR_MIN
                m.be32(5, NFT_REG_2); // NFTA_NAT_REG_PROTO_MIN
                m.be32(7, 2); // NFTA_NAT_FLAGS: NF_NAT_RANGE_PROTO_SPECIFIED
            }
        });
    });
}

fn proto_number(p: &str) -> Option<u8> {
    match p {
        "tcp" => Some(6),
        "udp" => Some(17),
        "sctp" => Some(132),
        _ => None,
    }
}

fn addr_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// The expressions of one rule of a shape this encoder knows; None for
/// any other rule.
fn rule_exprs(rule: &str) -> Option<Vec<Expr<'_>>> {
    let w: Vec<&str> = rule.split_whitespace().collect();
    match w.as_slice() {
        ["goto" | "jump", _] => Some(vec![Expr::Verdict(verdict(rule)?)]),
        ["numgen", "random", "mod", n, "0", "goto", c] => {
            let n: u32 = n.parse().ok().filter(|n| *n > 0)?;
            Some(vec![
                Expr::Random(n),
                Expr::CmpEq(0u32.to_ne_bytes().to_vec()),
                Expr::Verdict(Verdict {
                    code: NFT_GOTO,
                    chain: Some(c),
                }),
            ])
        }
        [fam @ ("ip" | "ip6"), "saddr", a, "jump", c] => {
            let a: IpAddr = a.parse().ok()?;
            let (nfproto, offset) = match (*fam, a) {
                ("ip", IpAddr::V4(_)) => (NFPROTO_IPV4, 12),
                ("ip6", IpAddr::V6(_)) => (NFPROTO_IPV6, 8),
                _ => return None,
            };
            let bytes = addr_bytes(a);
            Some(vec![
                Expr::Meta(NFT_META_NFPROTO),
                Expr::CmpEq(vec![nfproto]),
                Expr::Network {
                    offset,
                    len: bytes.len() as u32,
                },
                Expr::CmpEq(bytes),
                Expr::Verdict(Verdict {
                    code: NFT_JUMP,
                    chain: Some(c),
                }),
            ])
        }
        [
            "meta",
            "l4proto",
            p,
            "dnat",
            fam @ ("ip" | "ip6"),
            "to",
            target,
        ] => {
            let proto = proto_number(p)?;
            let (addr, port) = target.rsplit_once(':')?;
            let port: u16 = port.parse().ok()?;
            let (family, addr): (u8, IpAddr) = match *fam {
                "ip" => (NFPROTO_IPV4, IpAddr::V4(addr.parse().ok()?)),
                _ => (
                    NFPROTO_IPV6,
                    IpAddr::V6(addr.strip_prefix('[')?.strip_suffix(']')?.parse().ok()?),
                ),
            };
            Some(vec![
                Expr::Meta(NFT_META_L4PROTO),
                Expr::CmpEq(vec![proto]),
                Expr::Value(NFT_REG_1, addr_bytes(addr)),
                Expr::Value(NFT_REG_2, port.to_be_bytes().to_vec()),
                Expr::Dnat(family),
            ])
        }
        _ => None,
    }
}

/// A map key as the kernel holds it: each part of the concatenation in
/// its own 4-byte-aligned field (addresses, protocol byte, port in
/// network order).
fn key_bytes(key: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(24);
    for part in key.split(" . ") {
        let part = part.trim();
        if let Ok(a) = part.parse::<IpAddr>() {
            out.extend(addr_bytes(a));
        } else if let Some(p) = proto_number(part) {
            out.extend([p, 0, 0, 0]);
        } else {
            let port: u16 = part.parse().ok()?;
            out.extend(port.to_be_bytes());
            out.extend([0, 0]);
        }
    }
    Some(out)
}

// Object attributes.
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;

fn msg_type(m: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | m
}

/// The batch for the steps of each table (`inet` family; sequence numbers
/// from `seq`), or why this encoder does not take them (then send them as
/// nft text).
pub fn encode(tables: &[(String, Vec<Op>)], seq: u32) -> Result<Batch, String> {
    let mut bytes = Vec::new();
    let mut what = Vec::new();
    let mut s = seq;
    let begin = Msg::new(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        s,
        0,
        NFNL_SUBSYS_NFTABLES,
    );
    bytes.extend(begin.finish());
    s = s.wrapping_add(1);
    let first_seq = s;
    let push = |m: Msg, w: String, bytes: &mut Vec<u8>, what: &mut Vec<String>| {
        bytes.extend(m.finish());
        what.push(w);
    };
    // Only the last message asks for an acknowledgement (errors are
    // answered anyway): one ack per message would overflow the socket's
    // receive buffer at a few hundred messages.
    let last = tables
        .iter()
        .map(|(_, o)| o.len())
        .sum::<usize>()
        .saturating_sub(1);
    let ops = tables
        .iter()
        .flat_map(|(t, ops)| ops.iter().map(move |op| (t.as_str(), op)));
    for (n, (table, op)) in ops.enumerate() {
        let req = if n == last {
            NLM_F_REQUEST | NLM_F_ACK
        } else {
            NLM_F_REQUEST
        };
        let seq = first_seq.wrapping_add(what.len() as u32);
        match op {
            Op::AddChain { name, hook: None } => {
                let mut m = Msg::new(
                    msg_type(NFT_MSG_NEWCHAIN),
                    req | NLM_F_CREATE,
                    seq,
                    NFPROTO_INET,
                    0,
                );
                m.str(NFTA_CHAIN_TABLE, table);
                m.str(NFTA_CHAIN_NAME, name);
                push(
                    m,
                    format!("{table}: add chain {name}"),
                    &mut bytes,
                    &mut what,
                );
            }
            Op::DelChain(name) => {
                let mut m = Msg::new(msg_type(NFT_MSG_DELCHAIN), req, seq, NFPROTO_INET, 0);
                m.str(NFTA_CHAIN_TABLE, table);
                m.str(NFTA_CHAIN_NAME, name);
                push(
                    m,
                    format!("{table}: delete chain {name}"),
                    &mut bytes,
                    &mut what,
                );
            }
            Op::FlushChain(name) => {
                let mut m = Msg::new(msg_type(NFT_MSG_DELRULE), req, seq, NFPROTO_INET, 0);
                m.str(NFTA_RULE_TABLE, table);
                m.str(NFTA_RULE_CHAIN, name);
                push(
                    m,
                    format!("{table}: flush chain {name}"),
                    &mut bytes,
                    &mut what,
                );
            }
            Op::AddRule { chain, rule } => {
                let exprs = rule_exprs(rule).ok_or_else(|| format!("rule shape: {rule}"))?;
                let mut m = Msg::new(
                    msg_type(NFT_MSG_NEWRULE),
                    req | NLM_F_CREATE | NLM_F_APPEND,
                    seq,
                    NFPROTO_INET,
                    0,
                );
                m.str(NFTA_RULE_TABLE, table);
                m.str(NFTA_RULE_CHAIN, chain);
                m.nest(NFTA_RULE_EXPRESSIONS, |m| {
                    for e in &exprs {
                        put_expr(m, e);
                    }
                });
                push(
                    m,
                    format!("{table}: add rule {chain} {rule}"),
                    &mut bytes,
                    &mut what,
                );
            }
            Op::AddElements { map, elems } => {
                let mut parsed = Vec::with_capacity(elems.len());
                for (k, v) in elems {
                    let key = key_bytes(k).ok_or_else(|| format!("map key: {k}"))?;
                    let v = verdict(v).ok_or_else(|| format!("verdict: {v}"))?;
                    parsed.push((key, v));
                }
                let mut m = Msg::new(
                    msg_type(NFT_MSG_NEWSETELEM),
                    req | NLM_F_CREATE,
                    seq,
                    NFPROTO_INET,
                    0,
                );
                m.str(NFTA_SET_ELEM_LIST_TABLE, table);
                m.str(NFTA_SET_ELEM_LIST_SET, map);
                m.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |m| {
                    for (key, v) in &parsed {
                        m.nest(NFTA_LIST_ELEM, |m| {
                            m.nest(NFTA_SET_ELEM_KEY, |m| m.attr(NFTA_DATA_VALUE, key));
                            m.nest(NFTA_SET_ELEM_DATA, |m| put_verdict(m, v));
                        });
                    }
                });
                push(
                    m,
                    format!("{table}: add {} element(s) to map {map}", elems.len()),
                    &mut bytes,
                    &mut what,
                );
            }
            Op::DelElements { map, keys } => {
                let mut parsed = Vec::with_capacity(keys.len());
                for k in keys {
                    parsed.push(key_bytes(k).ok_or_else(|| format!("map key: {k}"))?);
                }
                let mut m = Msg::new(msg_type(NFT_MSG_DELSETELEM), req, seq, NFPROTO_INET, 0);
                m.str(NFTA_SET_ELEM_LIST_TABLE, table);
                m.str(NFTA_SET_ELEM_LIST_SET, map);
                m.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |m| {
                    for key in &parsed {
                        m.nest(NFTA_LIST_ELEM, |m| {
                            m.nest(NFTA_SET_ELEM_KEY, |m| m.attr(NFTA_DATA_VALUE, key));
                        });
                    }
                });
                push(
                    m,
                    format!("{table}: delete {} element(s) from map {map}", keys.len()),
                    &mut bytes,
                    &mut what,
                );
            }
            Op::AddChain { .. } => return Err("a base chain".into()),
            Op::AddSet { name, .. } | Op::DelSet(name) => {
                return Err(format!("set {name} (session affinity)"));
            }
        }
        if bytes.len() > MAX_BATCH {
            return Err(format!("more than {MAX_BATCH} bytes"));
        }
    }
    let end = Msg::new(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        first_seq.wrapping_add(what.len() as u32),
        0,
        NFNL_SUBSYS_NFTABLES,
    );
    bytes.extend(end.finish());
    Ok(Batch {
        bytes,
        first_seq,
        what,
    })
}

/// A `NETLINK_NETFILTER` socket in the network namespace of the thread
/// that opened it, closed on drop. Keep one: closing it makes the kernel
/// wait for an RCU grace period (longer than a whole small change), so
/// the service proxy holds its socket for as long as it runs
/// ([`send_on`]).
pub struct Socket(std::os::fd::OwnedFd);

impl Socket {
    pub fn open() -> std::io::Result<Socket> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: plain socket(2) call; the fd is owned from here on.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nobody else owns.
        let s = Socket(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        let one: libc::c_int = 1;
        for opt in [libc::NETLINK_CAP_ACK, libc::NETLINK_EXT_ACK] {
            // SAFETY: a valid socket and an int option (failure only loses
            // the error text or echoes more bytes).
            unsafe {
                libc::setsockopt(
                    s.0.as_raw_fd(),
                    libc::SOL_NETLINK,
                    opt,
                    &one as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        Ok(s)
    }

    fn send(&self, bytes: &[u8]) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: zeroed sockaddr_nl is a valid "to the kernel" address.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: valid fd, buffer and address for the call.
        let n = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                bytes.as_ptr() as *const libc::c_void,
                bytes.len(),
                0,
                &to as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n as usize != bytes.len() {
            return Err(std::io::Error::other("short netlink send"));
        }
        Ok(())
    }

    /// One datagram, waiting for it (at most a second: the kernel answers
    /// a request inside the send, so a missing answer is an error).
    fn recv_wait(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, 1000) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.recv(buf)?
            .ok_or_else(|| std::io::Error::other("no answer from nf_tables"))
    }

    /// One datagram, or None when nothing is queued.
    fn recv(&self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        use std::os::fd::AsRawFd;
        // SAFETY: valid fd and buffer.
        let n = unsafe {
            libc::recv(
                self.0.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(n as usize))
    }
}

/// One answer of the kernel: the sequence number, errno (0: done) and
/// the kernel's message if it gave one.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    seq: u32,
    errno: i32,
    text: Option<String>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The NLMSG_ERROR answers in one datagram (malformed bytes end the walk).
fn answers(mut b: &[u8]) -> Vec<Answer> {
    let mut out = Vec::new();
    while b.len() >= 16 {
        let Some(len) = u32_at(b, 0).map(|l| l as usize) else {
            break;
        };
        if len < 16 || len > b.len() {
            break;
        }
        let msg = &b[..len];
        if u16_at(msg, 4) == Some(NLMSG_ERROR)
            && let (Some(flags), Some(seq), Some(err)) =
                (u16_at(msg, 6), u32_at(msg, 8), u32_at(msg, 16))
        {
            let errno = -(err as i32);
            // nlmsgerr: error, then the request's header (capped: 16
            // bytes), then the extended-ack attributes.
            let mut text = None;
            if flags & NLM_F_ACK_TLVS != 0 {
                let mut at = 16 + 4 + 16;
                while let (Some(alen), Some(aty)) = (u16_at(msg, at), u16_at(msg, at + 2)) {
                    let alen = alen as usize;
                    if alen < 4 || at + alen > msg.len() {
                        break;
                    }
                    if aty & 0x3fff == NLMSGERR_ATTR_MSG {
                        let s = &msg[at + 4..at + alen];
                        let s = s.split(|c| *c == 0).next().unwrap_or_default();
                        text = Some(String::from_utf8_lossy(s).into_owned());
                    }
                    at += alen.div_ceil(4) * 4;
                }
            }
            out.push(Answer { seq, errno, text });
        }
        let step = (len.div_ceil(4) * 4).min(b.len());
        b = &b[step..];
    }
    out
}

/// Sends `batch` to nf_tables in the calling thread's network namespace
/// and reads its answers: Ok when the transaction is committed (the last
/// message acknowledged, nothing refused); otherwise the first refused
/// message and the reason.
pub fn send(batch: &Batch) -> Result<(), NfnlError> {
    send_on(&Socket::open()?, batch)
}

/// [`send`] on a socket the caller keeps; answers left from an earlier
/// batch are read and dropped first.
pub fn send_on(sock: &Socket, batch: &Batch) -> Result<(), NfnlError> {
    let mut buf = vec![0u8; 64 * 1024];
    while sock.recv(&mut buf)?.is_some() {}
    sock.send(&batch.bytes)?;
    // nfnetlink runs the whole batch inside the send: every answer is
    // queued when it returns.
    let mut got = Vec::new();
    while let Some(n) = sock.recv(&mut buf)? {
        got.extend(answers(&buf[..n]));
    }
    let sent = batch.what.len();
    let idx = |seq: u32| seq.wrapping_sub(batch.first_seq) as usize;
    if let Some(bad) = got.iter().find(|a| a.errno != 0) {
        let what = batch
            .what
            .get(idx(bad.seq))
            .cloned()
            .unwrap_or_else(|| "the batch".into());
        let mut reason = std::io::Error::from_raw_os_error(bad.errno).to_string();
        if let Some(t) = &bad.text {
            reason = format!("{reason} ({t})");
        }
        return Err(NfnlError::Refused { what, reason });
    }
    let last = batch.first_seq.wrapping_add(sent.saturating_sub(1) as u32);
    if sent > 0 && !got.iter().any(|a| a.seq == last) {
        return Err(NfnlError::Unanswered);
    }
    Ok(())
}

/// The ruleset generation of the socket's namespace: nf_tables counts
/// every committed transaction, whatever table it touched, so an unchanged
/// generation means nothing was written since it was read.
pub fn generation(sock: &Socket) -> Result<u32, NfnlError> {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut buf = vec![0u8; 64 * 1024];
    while sock.recv(&mut buf)?.is_some() {}
    let m = Msg::new(msg_type(NFT_MSG_GETGEN), NLM_F_REQUEST, seq, 0, 0);
    sock.send(&m.finish())?;
    let n = sock.recv_wait(&mut buf)?;
    gen_id(&buf[..n], seq).ok_or(NfnlError::Unanswered)
}

/// NFTA_GEN_ID of the NFT_MSG_NEWGEN answer to `seq` in one datagram.
fn gen_id(mut b: &[u8], seq: u32) -> Option<u32> {
    while b.len() >= 16 {
        let len = u32_at(b, 0)? as usize;
        if len < 16 || len > b.len() {
            return None;
        }
        if u16_at(b, 4) == Some(msg_type(NFT_MSG_NEWGEN)) && u32_at(b, 8) == Some(seq) {
            // nlmsghdr (16), nfgenmsg (4), then attributes.
            let mut at = 20;
            while let (Some(alen), Some(aty)) = (u16_at(b, at), u16_at(b, at + 2)) {
                let alen = alen as usize;
                if alen < 4 || at + alen > len {
                    return None;
                }
                if aty & 0x3fff == NFTA_GEN_ID && alen >= 8 {
                    let v: [u8; 4] = b.get(at + 4..at + 8)?.try_into().ok()?;
                    return Some(u32::from_be_bytes(v));
                }
                at += alen.div_ceil(4) * 4;
            }
            return None;
        }
        let step = (len.div_ceil(4) * 4).min(b.len());
        b = &b[step..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generation moves with every commit, in any table, and only then.
    #[test]
    fn the_generation_counts_commits() {
        let ns = crate::calc::services::tests::TestNs::new();
        ns.run(|| {
            let sock = Socket::open().expect("socket");
            let g0 = generation(&sock).expect("generation");
            assert_eq!(generation(&sock).expect("again"), g0, "nothing written");
            twill_nft::apply_script("add table inet gen-test\n").expect("nft");
            let g1 = generation(&sock).expect("after");
            assert_eq!(g1, g0.wrapping_add(1), "one commit");
        });
    }

    #[test]
    fn keys_are_laid_out_in_four_byte_fields() {
        assert_eq!(
            key_bytes("10.96.0.1 . tcp . 80").unwrap(),
            vec![10, 96, 0, 1, 6, 0, 0, 0, 0, 80, 0, 0]
        );
        assert_eq!(
            key_bytes("udp . 30080").unwrap(),
            vec![17, 0, 0, 0, 0x75, 0x80, 0, 0]
        );
        assert_eq!(key_bytes("fd00::1 . sctp . 1").unwrap().len(), 24);
        assert!(key_bytes("10.96.0.1 . icmp . 80").is_none());
    }

    #[test]
    fn only_known_rule_shapes_are_encoded() {
        for ok in [
            "goto svc-a",
            "jump mark-for-masquerade",
            "numgen random mod 3 0 goto ep-a",
            "ip saddr 10.244.1.5 jump mark-for-masquerade",
            "ip6 saddr fd00::5 jump mark-for-masquerade",
            "meta l4proto tcp dnat ip to 10.244.1.5:8080",
            "meta l4proto udp dnat ip6 to [fd00::5]:53",
        ] {
            assert!(rule_exprs(ok).is_some(), "{ok}");
        }
        for other in [
            "update @aff-x { ip saddr }",
            "ip saddr @aff-x goto ep-a",
            "fib saddr type local goto svc-a",
            "ip saddr != { 10.0.0.0/8 } drop",
            "ip saddr fd00::5 jump m",
            "numgen random mod 0 0 goto ep-a",
            "meta l4proto tcp dnat ip6 to fd00::5:80",
        ] {
            assert!(rule_exprs(other).is_none(), "{other}");
        }
        let ops = vec![Op::AddRule {
            chain: "svc-a".into(),
            rule: "update @aff-x { ip saddr }".into(),
        }];
        assert!(
            encode(&[("t".to_string(), ops)], 1)
                .unwrap_err()
                .contains("rule shape")
        );
    }

    #[test]
    fn an_error_answer_is_read_with_its_sequence_and_text() {
        // nlmsghdr(NLMSG_ERROR, ACK_TLVS) + error -2 + echoed header + MSG attr.
        let mut m = Vec::new();
        let text = b"no such chain\0";
        let attr_len = 4 + text.len();
        let len = 16 + 4 + 16 + attr_len.div_ceil(4) * 4;
        m.extend((len as u32).to_ne_bytes());
        m.extend(NLMSG_ERROR.to_ne_bytes());
        m.extend(NLM_F_ACK_TLVS.to_ne_bytes());
        m.extend(7u32.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend((-2i32).to_ne_bytes());
        m.extend([0u8; 16]);
        m.extend((attr_len as u16).to_ne_bytes());
        m.extend(NLMSGERR_ATTR_MSG.to_ne_bytes());
        m.extend(text);
        while m.len() < len {
            m.push(0);
        }
        assert_eq!(
            answers(&m),
            vec![Answer {
                seq: 7,
                errno: 2,
                text: Some("no such chain".into())
            }]
        );
        assert!(answers(&m[..10]).is_empty());
    }
}
