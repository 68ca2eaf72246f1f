//! The netlink side of route programming: one socket per programmer, a
//! dump filtered by the kernel to Twill's protocol number, and batched,
//! pipelined writes.
//!
//! Writes go through rtnetlink's connection layer (`rtnetlink::proto`)
//! rather than one `Handle::route().add()` future per route: a batch of up
//! to `batch` requests travels in one `sendmsg`, the kernel processes them
//! in order, and up to `in_flight` batches are outstanding at once. Only
//! failures come back as messages (acknowledgements are consumed by the
//! connection); each failure carries the request it answers, which is how
//! an error is tied to its route. A batch that gets no complete answer in
//! time counts as failed, and the next resync settles it.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::time::Duration;

use futures::StreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::RouteMessage;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload, Parseable,
};
use rtnetlink::proto::ConnectionHandle;
use rtnetlink::sys::{AsyncSocket, SocketAddr};

use super::RouteError;
use super::message::{delete_message, dump_message, parse, route_message};
use crate::calc::routes::{Installed, Plan, Target};

/// The receive buffer asked for: acknowledgements of every request in
/// flight must fit, or the kernel drops them.
const RCVBUF: usize = 8 << 20;
/// How long a batch may wait for its answers.
const BATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// One route change.
#[derive(Clone, Debug)]
pub enum Op {
    Add(IpNetwork, Target),
    Replace(IpNetwork, Target),
    Delete(Installed),
}

impl Op {
    pub fn dst(&self) -> IpNetwork {
        match self {
            Op::Add(d, _) | Op::Replace(d, _) => *d,
            Op::Delete(r) => r.dst,
        }
    }

    /// The plan's operations: deletes first (they free prefixes), then
    /// replaces and adds.
    pub fn from_plan(plan: Plan) -> Vec<Op> {
        let mut ops: Vec<Op> = plan.delete.into_iter().map(Op::Delete).collect();
        ops.extend(plan.replace.into_iter().map(|(d, t)| Op::Replace(d, t)));
        ops.extend(plan.add.into_iter().map(|(d, t)| Op::Add(d, t)));
        ops
    }

    fn message(&self) -> NetlinkMessage<RouteNetlinkMessage> {
        let (payload, flags) = match self {
            Op::Add(d, t) => (
                RouteNetlinkMessage::NewRoute(route_message(d, t)),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            ),
            Op::Replace(d, t) => (
                RouteNetlinkMessage::NewRoute(route_message(d, t)),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            ),
            Op::Delete(r) => (
                RouteNetlinkMessage::DelRoute(delete_message(r)),
                NLM_F_REQUEST | NLM_F_ACK,
            ),
        };
        let mut m = NetlinkMessage::from(payload);
        m.header.flags = flags;
        m
    }

    /// What identifies this request's answer: delete or not, prefix, metric.
    fn key(&self) -> (bool, IpNetwork, Option<u32>) {
        match self {
            Op::Delete(r) => (true, r.dst, r.metric.filter(|m| *m != 0)),
            Op::Add(d, _) | Op::Replace(d, _) => (false, *d, None),
        }
    }
}

/// The key of the request an error message answers (from the copy of the
/// request the kernel sends back).
fn answered(original: &[u8]) -> Option<(bool, IpNetwork, Option<u32>)> {
    const RTM_DELROUTE: u16 = 25;
    let ty = u16::from_ne_bytes([*original.get(4)?, *original.get(5)?]);
    let body = original.get(16..)?;
    let m = RouteMessage::parse(body).ok()?;
    let r = parse(&m)?;
    let delete = ty == RTM_DELROUTE;
    let metric = if delete {
        r.metric.filter(|m| *m != 0)
    } else {
        None
    };
    Some((delete, r.dst, metric))
}

/// The outcome of one request: Ok, or the errno the kernel answered.
pub type OpResult = Result<(), i32>;

/// A netlink socket for routes, in the network namespace it was opened in.
#[derive(Clone)]
pub struct RouteSocket {
    h: ConnectionHandle<RouteNetlinkMessage>,
}

impl RouteSocket {
    /// Opens the socket (strict checking on, so dumps are filtered by the
    /// kernel) and returns it with the connection task to spawn.
    pub fn open() -> Result<(RouteSocket, impl Future<Output = ()> + Send + 'static), RouteError> {
        let (mut conn, h, _) = rtnetlink::proto::new_connection::<RouteNetlinkMessage>(
            rtnetlink::sys::protocols::NETLINK_ROUTE,
        )
        .map_err(RouteError::Socket)?;
        let sock = conn.socket_mut().socket_mut();
        sock.set_netlink_get_strict_chk(true)
            .map_err(RouteError::Socket)?;
        grow_rcvbuf(sock.as_raw_fd());
        Ok((RouteSocket { h }, conn))
    }

    async fn dump<F, T>(
        &self,
        payload: RouteNetlinkMessage,
        mut keep: F,
    ) -> Result<Vec<T>, RouteError>
    where
        F: FnMut(RouteNetlinkMessage) -> Option<T>,
    {
        let mut req = NetlinkMessage::from(payload);
        req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut stream = self
            .h
            .request(req, SocketAddr::new(0, 0))
            .map_err(|e| RouteError::Dump(e.to_string()))?;
        let mut out = Vec::new();
        while let Some(msg) = stream.next().await {
            match msg.payload {
                NetlinkPayload::InnerMessage(m) => out.extend(keep(m)),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    // A kernel without IPv6 answers the IPv6 dump this way.
                    if e.raw_code() == -libc::EAFNOSUPPORT {
                        return Ok(out);
                    }
                    return Err(RouteError::Dump(e.to_io().to_string()));
                }
                NetlinkPayload::Overrun(_) => {
                    return Err(RouteError::Dump("netlink receive buffer overrun".into()));
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Twill's routes in the main table, both families.
    pub async fn twill_routes(&self) -> Result<Vec<Installed>, RouteError> {
        let mut all = Vec::new();
        for v4 in [true, false] {
            let mut got = self
                .dump(
                    RouteNetlinkMessage::GetRoute(dump_message(v4)),
                    |m| match m {
                        RouteNetlinkMessage::NewRoute(r) => parse(&r).filter(Installed::is_ours),
                        _ => None,
                    },
                )
                .await?;
            all.append(&mut got);
        }
        Ok(all)
    }

    /// Interface name → index.
    pub async fn links(&self) -> Result<HashMap<String, u32>, RouteError> {
        let pairs = self
            .dump(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                |m| match m {
                    RouteNetlinkMessage::NewLink(l) => l.attributes.iter().find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some((n.clone(), l.header.index)),
                        _ => None,
                    }),
                    _ => None,
                },
            )
            .await?;
        Ok(pairs.into_iter().collect())
    }

    /// Runs `ops` in batches of `batch`, `in_flight` batches at a time;
    /// returns one result per op, in order.
    pub async fn apply(&self, ops: &[Op], batch: usize, in_flight: usize) -> Vec<OpResult> {
        let batch = batch.max(1);
        let chunks: Vec<Vec<Op>> = ops.chunks(batch).map(<[Op]>::to_vec).collect();
        let h = self.h.clone();
        let results: Vec<Vec<OpResult>> = futures::stream::iter(chunks)
            .map(move |chunk| run_batch(h.clone(), chunk))
            .buffered(in_flight.max(1))
            .collect()
            .await;
        results.into_iter().flatten().collect()
    }
}

async fn run_batch(h: ConnectionHandle<RouteNetlinkMessage>, ops: Vec<Op>) -> Vec<OpResult> {
    let mut results: Vec<OpResult> = vec![Ok(()); ops.len()];
    let index: HashMap<_, usize> = ops.iter().enumerate().map(|(i, o)| (o.key(), i)).collect();
    let stream = match h.request_batch(ops.iter().map(Op::message), SocketAddr::new(0, 0)) {
        Ok(s) => s,
        Err(_) => return vec![Err(libc::ENOTCONN); ops.len()],
    };
    let collect = async {
        let mut stream = std::pin::pin!(stream);
        let mut unmatched = false;
        while let Some(msg) = stream.next().await {
            match msg.payload {
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    match answered(&e.header).and_then(|k| index.get(&k)) {
                        Some(&i) => results[i] = Err(-e.raw_code()),
                        None => unmatched = true,
                    }
                }
                NetlinkPayload::Overrun(_) => unmatched = true,
                _ => {}
            }
        }
        unmatched
    };
    match tokio::time::timeout(BATCH_TIMEOUT, collect).await {
        Ok(false) => {}
        // Some answer cannot be tied to its request: trust none.
        Ok(true) | Err(_) => {
            return vec![Err(libc::ETIMEDOUT); ops.len()];
        }
    }
    // A delete of something already gone did what it was meant to.
    for (r, op) in results.iter_mut().zip(&ops) {
        if matches!(op, Op::Delete(_)) && *r == Err(libc::ESRCH) {
            *r = Ok(());
        }
    }
    results
}

/// Raises the socket's receive buffer (beyond rmem_max when privileged).
fn grow_rcvbuf(fd: i32) {
    let size = RCVBUF as libc::c_int;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt on a socket we own, with a valid int option.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}
