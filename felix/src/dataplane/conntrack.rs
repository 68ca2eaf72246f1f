//! Deleting stale conntrack entries when a Service endpoint goes away.
//!
//! A UDP "connection" through a Service's DNAT lives in conntrack for as
//! long as packets keep coming (120 s after the last one for a stream), so a
//! client that keeps sending keeps talking to an endpoint that is gone. As
//! kube-proxy does, twill-node deletes the entries of a UDP frontend whose
//! reply comes from an endpoint that left ([`filters`] of
//! [`crate::calc::services::stale_udp`]; under `externalTrafficPolicy:
//! Local` an external frontend's cluster set counts too, since the node's
//! own traffic and its pods' go there), right after the new table is in
//! the kernel, so the next packet is balanced again. (A frontend without
//! endpoints leaves no entry to flush: the service proxy refuses those
//! packets before conntrack confirms them.)
//!
//! Through ctnetlink (`NETLINK_NETFILTER`), from twill-node itself: one
//! dump of the family's table, matched here ([`Filter::matches`], pure),
//! then one `IPCTNL_MSG_CT_DELETE` per match by its original tuple (and
//! zone). No `conntrack` process per change. The protocol is a field, so
//! SCTP could follow.
//!
//! Crate: `netlink-packet-netfilter` (rust-netlink, the maintainers of the
//! rtnetlink crates Twill uses) encodes and parses the conntrack messages;
//! `netlink-sys` is the socket the rtnetlink stack already uses.

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

/// IANA protocol numbers the filters use.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;

/// Which entries to delete: every field that is `Some` must match.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Filter {
    /// IP protocol number (17 for UDP).
    pub protocol: u8,
    /// The original destination: the Service frontend's address.
    pub orig_dst: Option<IpAddr>,
    /// The original destination port (the Service port or node port).
    pub orig_dst_port: Option<u16>,
    /// Where replies come from: the endpoint after DNAT.
    pub reply_src: Option<IpAddr>,
}

impl Filter {
    /// Every entry of protocol `protocol` to `addr:port` (a frontend that
    /// had no endpoints).
    pub fn frontend(protocol: u8, addr: IpAddr, port: u16) -> Filter {
        Filter {
            protocol,
            orig_dst: Some(addr),
            orig_dst_port: Some(port),
            reply_src: None,
        }
    }

    /// The entries of `addr:port` answered by `endpoint` (an endpoint
    /// that left the frontend).
    pub fn endpoint(protocol: u8, addr: IpAddr, port: u16, endpoint: IpAddr) -> Filter {
        Filter {
            protocol,
            orig_dst: Some(addr),
            orig_dst_port: Some(port),
            reply_src: Some(endpoint),
        }
    }

    /// Whether `entry` is one this filter deletes.
    pub fn matches(&self, entry: &Entry) -> bool {
        entry.protocol == self.protocol
            && self.orig_dst.is_none_or(|a| entry.orig_dst == Some(a))
            && self
                .orig_dst_port
                .is_none_or(|p| entry.orig_dst_port == Some(p))
            && self.reply_src.is_none_or(|a| entry.reply_src == Some(a))
    }

    fn families(&self) -> Vec<NetfilterProtoFamily> {
        match self.orig_dst.or(self.reply_src) {
            Some(IpAddr::V4(_)) => vec![NetfilterProtoFamily::IPv4],
            Some(IpAddr::V6(_)) => vec![NetfilterProtoFamily::IPv6],
            None => vec![NetfilterProtoFamily::IPv4, NetfilterProtoFamily::IPv6],
        }
    }
}

/// What a filter looks at in one conntrack entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    pub protocol: u8,
    pub orig_src: Option<IpAddr>,
    pub orig_dst: Option<IpAddr>,
    pub orig_dst_port: Option<u16>,
    pub reply_src: Option<IpAddr>,
}

/// Why a flush failed.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("ctnetlink socket: {0}")]
    Socket(std::io::Error),
    #[error("ctnetlink dump: {0}")]
    Dump(std::io::Error),
    #[error("ctnetlink delete of {entry}: {source}")]
    Delete {
        entry: String,
        source: std::io::Error,
    },
    #[error("ctnetlink: the kernel's answer could not be read: {0}")]
    Decode(String),
}

/// What a flush did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FlushReport {
    /// Entries deleted.
    pub deleted: usize,
    /// Entries that matched but were gone before the delete reached them.
    pub already_gone: usize,
    /// Dumped messages that could not be parsed (skipped, never deleted).
    pub unreadable: usize,
}

/// A dumped entry to delete: what it looked like and how to name it.
struct Doomed {
    entry: Entry,
    /// The original tuple as the kernel gave it, sent back to name it.
    orig: Vec<Tuple>,
    /// Its zone attribute, when it has one (a delete without it would
    /// look in zone 0).
    zone: Option<ConntrackAttribute>,
    family: NetfilterProtoFamily,
}

const CTA_ZONE: u16 = 18;
const RECV_BUFFER: usize = 256 * 1024;

/// Deletes every entry that one of `filters` matches, in the network
/// namespace of the calling thread. Blocking (a few syscalls per deleted
/// entry plus one dump per family); call it from a blocking thread.
pub fn flush(filters: &[Filter]) -> Result<FlushReport, ConntrackError> {
    let mut report = FlushReport::default();
    if filters.is_empty() {
        return Ok(report);
    }
    let wanted: Vec<NetfilterProtoFamily> = filters.iter().flat_map(Filter::families).collect();
    let families = [NetfilterProtoFamily::IPv4, NetfilterProtoFamily::IPv6]
        .into_iter()
        .filter(|f| wanted.contains(f));
    let mut socket = Link::open()?;
    let mut doomed = Vec::new();
    for family in families {
        let (found, unreadable) = socket.dump(family, filters)?;
        doomed.extend(found);
        report.unreadable += unreadable;
    }
    for d in doomed {
        match socket.delete(&d) {
            Ok(true) => report.deleted += 1,
            Ok(false) => report.already_gone += 1,
            Err(source) => {
                return Err(ConntrackError::Delete {
                    entry: describe(&d.entry),
                    source,
                });
            }
        }
    }
    Ok(report)
}

/// [`flush`] on tokio's blocking pool.
pub async fn flush_async(filters: Vec<Filter>) -> Result<FlushReport, ConntrackError> {
    tokio::task::spawn_blocking(move || flush(&filters))
        .await
        .map_err(|e| ConntrackError::Decode(format!("flush task: {e}")))?
}

fn describe(e: &Entry) -> String {
    let show = |a: Option<IpAddr>| a.map_or("?".to_string(), |a| a.to_string());
    format!(
        "proto {} {} -> {}:{} (reply from {})",
        e.protocol,
        show(e.orig_src),
        show(e.orig_dst),
        e.orig_dst_port.map_or("?".to_string(), |p| p.to_string()),
        show(e.reply_src)
    )
}

/// One ctnetlink socket with its sequence numbers.
struct Link {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Link {
    fn open() -> Result<Link, ConntrackError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(ConntrackError::Socket)?;
        socket
            .bind(&SocketAddr::new(0, 0))
            .map_err(ConntrackError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(ConntrackError::Socket)?;
        // The kernel always answers; the timeout only bounds a surprise.
        let timeout = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: a valid socket fd and a timeval of the size given.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(ConntrackError::Socket(std::io::Error::last_os_error()));
        }
        Ok(Link {
            socket,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUFFER),
        })
    }

    fn send(
        &mut self,
        message: ConntrackMessage,
        family: NetfilterProtoFamily,
        flags: u16,
    ) -> std::io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(
            header,
            NetlinkPayload::from(NetfilterMessage::new(
                NetfilterHeader::new(family, 0, 0),
                message,
            )),
        );
        msg.finalize();
        let mut bytes = vec![0; msg.buffer_len()];
        msg.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;
        Ok(self.seq)
    }

    fn recv(&mut self) -> std::io::Result<()> {
        self.buf.clear();
        self.socket.recv(&mut self.buf, 0)?;
        Ok(())
    }

    /// Dumps one family's table; returns the entries a filter matches and
    /// how many messages could not be read.
    fn dump(
        &mut self,
        family: NetfilterProtoFamily,
        filters: &[Filter],
    ) -> Result<(Vec<Doomed>, usize), ConntrackError> {
        let seq = self
            .send(
                ConntrackMessage::Get(vec![]),
                family,
                NLM_F_REQUEST | NLM_F_DUMP,
            )
            .map_err(ConntrackError::Dump)?;
        let mut found = Vec::new();
        let mut unreadable = 0;
        loop {
            self.recv().map_err(ConntrackError::Dump)?;
            let mut offset = 0;
            while offset < self.buf.len() {
                let raw = &self.buf[offset..];
                let len = match NetlinkBuffer::new_checked(raw) {
                    Ok(b) => b.length() as usize,
                    Err(e) => return Err(ConntrackError::Decode(e.to_string())),
                };
                if len == 0 || len > raw.len() {
                    return Err(ConntrackError::Decode(format!(
                        "netlink message length {len} with {} bytes left",
                        raw.len()
                    )));
                }
                offset += (len + 3) & !3;
                let msg = match NetlinkMessage::<NetfilterMessage>::deserialize(&raw[..len]) {
                    Ok(m) => m,
                    Err(_) => {
                        unreadable += 1;
                        continue;
                    }
                };
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok((found, unreadable)),
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        return Err(ConntrackError::Dump(e.to_io()));
                    }
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)),
                        ..
                    }) => {
                        if let Some(d) = doomed(attrs, family)
                            && filters.iter().any(|f| f.matches(&d.entry))
                        {
                            found.push(d);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Deletes one entry; `Ok(false)` when it was already gone.
    fn delete(&mut self, d: &Doomed) -> std::io::Result<bool> {
        let mut attrs = vec![ConntrackAttribute::CtaTupleOrig(d.orig.clone())];
        attrs.extend(d.zone.clone());
        let seq = self.send(
            ConntrackMessage::Delete(attrs),
            d.family,
            NLM_F_REQUEST | NLM_F_ACK,
        )?;
        loop {
            self.recv()?;
            let mut offset = 0;
            while offset < self.buf.len() {
                let raw = &self.buf[offset..];
                let len = NetlinkBuffer::new_checked(raw)
                    .map(|b| b.length() as usize)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                if len == 0 || len > raw.len() {
                    return Err(std::io::Error::other("truncated netlink answer"));
                }
                offset += (len + 3) & !3;
                let Ok(msg) = NetlinkMessage::<NetfilterMessage>::deserialize(&raw[..len]) else {
                    continue;
                };
                if msg.header.sequence_number != seq {
                    continue;
                }
                if let NetlinkPayload::Error(e) = msg.payload {
                    return match e.code {
                        None => Ok(true),
                        Some(c) if c.get() == -libc::ENOENT => Ok(false),
                        Some(_) => Err(e.to_io()),
                    };
                }
            }
        }
    }
}

/// Reads what the filters look at from one dumped entry (pure); `None`
/// when it has no original tuple to name it by.
fn doomed(attrs: Vec<ConntrackAttribute>, family: NetfilterProtoFamily) -> Option<Doomed> {
    let mut entry = Entry::default();
    let mut orig = None;
    let mut zone = None;
    for attr in attrs {
        match attr {
            ConntrackAttribute::CtaTupleOrig(tuples) => {
                for t in &tuples {
                    match t {
                        Tuple::Ip(ips) => {
                            for ip in ips {
                                match ip {
                                    IPTuple::SourceAddress(a) => entry.orig_src = Some(*a),
                                    IPTuple::DestinationAddress(a) => entry.orig_dst = Some(*a),
                                    _ => {}
                                }
                            }
                        }
                        Tuple::Proto(ps) => {
                            for p in ps {
                                match p {
                                    ProtoTuple::Protocol(p) => entry.protocol = u8::from(*p),
                                    ProtoTuple::DestinationPort(port) => {
                                        entry.orig_dst_port = Some(*port)
                                    }
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
                orig = Some(tuples);
            }
            ConntrackAttribute::CtaTupleReply(tuples) => {
                for t in &tuples {
                    if let Tuple::Ip(ips) = t {
                        for ip in ips {
                            if let IPTuple::SourceAddress(a) = ip {
                                entry.reply_src = Some(*a);
                            }
                        }
                    }
                }
            }
            ConntrackAttribute::Other(nla) if netlink_packet_core::Nla::kind(&nla) == CTA_ZONE => {
                zone = Some(ConntrackAttribute::Other(nla));
            }
            _ => {}
        }
    }
    Some(Doomed {
        entry,
        orig: orig?,
        zone,
        family,
    })
}

/// The filters that delete the entries of flows the service proxy no
/// longer sends where it did ([`crate::calc::services::stale_udp`]): each
/// by frontend and endpoint; a node port matches on its port alone,
/// whichever node address it came to (pure).
pub fn filters(stale: &[crate::calc::services::StaleUdp]) -> Vec<Filter> {
    use twill_api::service_proxy::Frontend;
    let mut out: Vec<Filter> = stale
        .iter()
        .map(|s| {
            let (addr, port) = match s.frontend {
                Frontend::ClusterIp(a, p)
                | Frontend::LoadBalancer(a, p)
                | Frontend::ExternalIp(a, p) => (Some(a), p),
                Frontend::NodePort(p) => (None, p),
            };
            Filter {
                protocol: IPPROTO_UDP,
                orig_dst: addr,
                orig_dst_port: Some(port),
                reply_src: Some(s.endpoint),
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The protocol number of a Service port's protocol name.
pub fn protocol_number(name: &str) -> Option<u8> {
    match name {
        "TCP" => Some(IPPROTO_TCP),
        "UDP" => Some(IPPROTO_UDP),
        "SCTP" => Some(IPPROTO_SCTP),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_netfilter::conntrack::Protocol;

    fn entry(dst: &str, port: u16, reply: &str) -> Entry {
        Entry {
            protocol: IPPROTO_UDP,
            orig_src: Some("10.0.0.9".parse().unwrap()),
            orig_dst: Some(dst.parse().unwrap()),
            orig_dst_port: Some(port),
            reply_src: Some(reply.parse().unwrap()),
        }
    }

    #[test]
    fn endpoint_filter_matches_only_its_frontend_and_endpoint() {
        let f = Filter::endpoint(
            IPPROTO_UDP,
            "10.96.0.10".parse().unwrap(),
            53,
            "10.244.0.5".parse().unwrap(),
        );
        assert!(f.matches(&entry("10.96.0.10", 53, "10.244.0.5")));
        assert!(
            !f.matches(&entry("10.96.0.10", 53, "10.244.0.6")),
            "other endpoint"
        );
        assert!(
            !f.matches(&entry("10.96.0.10", 54, "10.244.0.5")),
            "other port"
        );
        assert!(
            !f.matches(&entry("10.96.0.11", 53, "10.244.0.5")),
            "other frontend"
        );
        let mut tcp = entry("10.96.0.10", 53, "10.244.0.5");
        tcp.protocol = IPPROTO_TCP;
        assert!(!f.matches(&tcp), "TCP is never flushed by a UDP filter");
    }

    #[test]
    fn frontend_filter_matches_every_reply_source() {
        let f = Filter::frontend(IPPROTO_UDP, "fd00:96::a".parse().unwrap(), 53);
        assert!(f.matches(&entry("fd00:96::a", 53, "fd00:10:244::5")));
        assert!(f.matches(&entry("fd00:96::a", 53, "fd00:10:244::6")));
        assert!(!f.matches(&entry("fd00:96::b", 53, "fd00:10:244::6")));
        assert_eq!(f.families(), vec![NetfilterProtoFamily::IPv6]);
    }

    #[test]
    fn an_entry_is_named_by_its_original_tuple_and_zone() {
        let orig = vec![
            Tuple::Ip(vec![
                IPTuple::SourceAddress("10.0.0.9".parse().unwrap()),
                IPTuple::DestinationAddress("10.96.0.10".parse().unwrap()),
            ]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(Protocol::Udp),
                ProtoTuple::SourcePort(40000),
                ProtoTuple::DestinationPort(53),
            ]),
        ];
        let reply = vec![Tuple::Ip(vec![
            IPTuple::SourceAddress("10.244.0.5".parse().unwrap()),
            IPTuple::DestinationAddress("10.0.0.9".parse().unwrap()),
        ])];
        let d = doomed(
            vec![
                ConntrackAttribute::CtaTupleOrig(orig.clone()),
                ConntrackAttribute::CtaTupleReply(reply),
            ],
            NetfilterProtoFamily::IPv4,
        )
        .expect("has an original tuple");
        assert_eq!(d.entry, entry("10.96.0.10", 53, "10.244.0.5"));
        assert_eq!(d.orig, orig);
        assert!(d.zone.is_none());
        assert!(
            doomed(
                vec![ConntrackAttribute::CtaMark(1)],
                NetfilterProtoFamily::IPv4
            )
            .is_none(),
            "an entry without an original tuple cannot be named, so is never deleted"
        );
    }

    fn model(eps: &[(&str, &str, bool)]) -> Vec<twill_api::service_proxy::ServicePortProxy> {
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "dns", "namespace": "kube"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
                          {"name": "tcp", "port": 53, "protocol": "TCP", "nodePort": 30054}]}
        }))
        .unwrap();
        let endpoints: Vec<serde_json::Value> = eps
            .iter()
            .map(|(a, node, ready)| {
                serde_json::json!({"addresses": [a], "nodeName": node, "conditions": {"ready": ready}})
            })
            .collect();
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "dns-1", "namespace": "kube",
                    "labels": {"kubernetes.io/service-name": "dns"}},
                "addressType": "IPv4",
                "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"},
                          {"name": "tcp", "port": 5353, "protocol": "TCP"}],
                "endpoints": endpoints
            }))
            .unwrap();
        twill_api::service_proxy::proxy_model("n1", &[svc], &[slice])
    }

    #[test]
    fn a_gone_udp_endpoint_is_flushed_on_every_frontend_and_tcp_never() {
        use crate::calc::services::stale_udp;
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let before = model(&[("10.244.0.5", "n1", true), ("10.244.1.6", "n2", true)]);
        let after = model(&[("10.244.1.6", "n2", true)]);
        let f = filters(&stale_udp(&before, &after));
        assert_eq!(
            f,
            vec![
                Filter {
                    protocol: IPPROTO_UDP,
                    orig_dst: None,
                    orig_dst_port: Some(30053),
                    reply_src: Some(ip("10.244.0.5")),
                },
                Filter::endpoint(IPPROTO_UDP, ip("10.96.0.10"), 53, ip("10.244.0.5")),
            ]
        );
        assert!(
            filters(&stale_udp(&before, &before)).is_empty(),
            "no change, no flush"
        );
        // An endpoint that stops being ready is gone too.
        let unready = model(&[("10.244.0.5", "n1", false), ("10.244.1.6", "n2", true)]);
        assert_eq!(filters(&stale_udp(&before, &unready)).len(), 2);
    }

    #[test]
    fn under_the_local_policy_the_nodes_own_flows_to_a_remote_endpoint_are_flushed_too() {
        use crate::calc::services::stale_udp;
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        // n2's view: the Service's one endpoint moves from n1 to n2. n2's
        // own traffic (and its pods') to the LB address and the node port
        // went to the cluster set, i.e. to n1's endpoint: those entries go.
        let model = |addr: &str, node: &str| {
            let svc: k8s_openapi::api::core::v1::Service =
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": "dns", "namespace": "kube"},
                    "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                        "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                        "healthCheckNodePort": 32000,
                        "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]},
                    "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}]}}
                }))
                .unwrap();
            let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": "dns-1", "namespace": "kube",
                        "labels": {"kubernetes.io/service-name": "dns"}},
                    "addressType": "IPv4",
                    "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"}],
                    "endpoints": [{"addresses": [addr], "nodeName": node}]
                }))
                .unwrap();
            twill_api::service_proxy::proxy_model("n2", &[svc], &[slice])
        };
        let before = model("10.244.0.5", "n1");
        let after = model("10.244.1.6", "n2");
        let f = filters(&stale_udp(&before, &after));
        let gone = ip("10.244.0.5");
        for want in [
            Filter::endpoint(IPPROTO_UDP, ip("10.96.0.10"), 53, gone),
            Filter::endpoint(IPPROTO_UDP, ip("203.0.113.5"), 53, gone),
            Filter {
                protocol: IPPROTO_UDP,
                orig_dst: None,
                orig_dst_port: Some(30053),
                reply_src: Some(gone),
            },
        ] {
            assert!(f.contains(&want), "{want:?} missing from {f:?}");
        }
        assert_eq!(f.len(), 3, "{f:?}");
        // The endpoint that stays local (and in the cluster set) is never flushed.
        let other = model("10.244.1.6", "n2");
        assert!(filters(&stale_udp(&after, &other)).is_empty());
    }
}
