//! The kernel's addresses, for the node address and the IPv6 next hop
//! ([`crate::calc::bgp::address`] picks from them), and [`follow_addresses`],
//! which keeps a current list as addresses come and go.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use ipnetwork::IpNetwork;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::LinkAttribute;
use rtnetlink::Handle;
use rtnetlink::sys::AsyncSocket;
use tokio::sync::watch;

use crate::calc::bgp::address::{AddrFlags, AddressError, AddressSpec, HostAddress, pick};

/// Every address in the current network namespace, with interface names.
pub async fn host_addresses(h: &Handle) -> Result<(Vec<HostAddress>, Vec<String>), AddressError> {
    let nl = |e: rtnetlink::Error| AddressError::Netlink(e.to_string());
    let mut names = std::collections::BTreeMap::new();
    let mut links = h.link().get().execute();
    while let Some(l) = links.try_next().await.map_err(nl)? {
        for a in &l.attributes {
            if let LinkAttribute::IfName(n) = a {
                names.insert(l.header.index, n.clone());
            }
        }
    }
    let mut out = Vec::new();
    let mut stream = h.address().get().execute();
    while let Some(a) = stream.try_next().await.map_err(nl)? {
        let Some(ifname) = names.get(&a.header.index) else {
            continue;
        };
        // IFA_FLAGS (32 bits) when present, else the header's 8 bits.
        let bits = a
            .attributes
            .iter()
            .find_map(|at| match at {
                AddressAttribute::Flags(f) => Some(f.bits()),
                _ => None,
            })
            .unwrap_or_else(|| u32::from(a.header.flags.bits()));
        let f = AddressFlags::from_bits_retain(bits);
        let flags = AddrFlags {
            deprecated: f.contains(AddressFlags::Deprecated),
            // IFA_F_TEMPORARY is IFA_F_SECONDARY's bit; only IPv6 has it.
            temporary: f.contains(AddressFlags::Secondary),
            tentative: f.contains(AddressFlags::Tentative) || f.contains(AddressFlags::Dadfailed),
        };
        for attr in &a.attributes {
            if let AddressAttribute::Address(ip) = attr
                && let Ok(n) = IpNetwork::new(*ip, a.header.prefix_len)
            {
                out.push(HostAddress {
                    ifname: ifname.clone(),
                    addr: n,
                    flags: if ip.is_ipv6() {
                        flags
                    } else {
                        AddrFlags::default()
                    },
                });
            }
        }
    }
    Ok((out, names.into_values().collect()))
}

/// Resolves the spec against the kernel.
pub async fn resolve(h: &Handle, spec: &AddressSpec) -> Result<IpNetwork, AddressError> {
    let (addrs, links) = host_addresses(h).await?;
    if let AddressSpec::Interface(i) = spec
        && !links.contains(i)
    {
        return Err(AddressError::NoInterface(i.clone()));
    }
    pick(&addrs, spec)
}

/// Kernel notification groups: links and addresses of both families.
const GROUPS: u32 = rtnetlink::constants::RTMGRP_LINK
    | rtnetlink::constants::RTMGRP_IPV4_IFADDR
    | rtnetlink::constants::RTMGRP_IPV6_IFADDR;

/// How often the list is read again without a notification (one lost to a
/// full socket buffer is caught this way).
const RESYNC: Duration = Duration::from_secs(30);

/// Keeps `tx` at the node's current addresses but IPv6 link-local ones: read again after every link
/// or address notification (a burst settles for 100 ms first) and every
/// 30 s; `tx` changes only when the list does. Returns when every receiver
/// is gone or netlink cannot be opened (logged).
pub async fn follow_addresses(tx: watch::Sender<Option<Vec<HostAddress>>>) {
    let (mut conn, h, mut events) = match rtnetlink::new_connection() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot open netlink for address changes; the IPv6 next hop does not follow them");
            return;
        }
    };
    let sub = conn
        .socket_mut()
        .socket_mut()
        .bind(&rtnetlink::sys::SocketAddr::new(0, GROUPS));
    if let Err(e) = sub {
        tracing::warn!(error = %e, "cannot subscribe to address changes; reading them every 30 s instead");
    }
    tokio::spawn(conn);
    let mut failing = false;
    loop {
        match host_addresses(&h).await {
            Ok((mut addrs, _)) => {
                // Link-local addresses (one per pod veth) never matter here.
                addrs.retain(|a| match a.addr {
                    IpNetwork::V6(n) => !n.ip().is_unicast_link_local(),
                    IpNetwork::V4(_) => true,
                });
                if failing {
                    tracing::info!("listing the node's addresses works again");
                    failing = false;
                }
                tx.send_if_modified(|cur| {
                    if cur.as_ref() == Some(&addrs) {
                        false
                    } else {
                        *cur = Some(addrs);
                        true
                    }
                });
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot list the node's addresses; keeping the last list");
                    failing = true;
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::select! {
            e = events.next() => if e.is_none() {
                // The connection is gone: fall back to reading periodically.
                tokio::time::sleep(RESYNC).await;
            },
            _ = tokio::time::sleep(RESYNC) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, events.next()).await {}
    }
}
