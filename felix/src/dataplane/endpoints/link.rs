//! The netlink operations that build, check and remove a pod's plumbing
//! (DESIGN.md "Pod networking"): a veth pair whose host end `tw…` has MAC
//! ee:ee:ee:ee:ee:ee and proxy ARP on; the pod end, created directly inside
//! the pod's namespace with its final name, gets the /32 (/128), a
//! link-scope route to 169.254.1.1, a permanent neighbour entry for it and
//! the default route through it (IPv6 likewise through the host end's
//! link-local address); the host gets a /32 (/128) route to the veth with
//! Twill's routing protocol number.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::address::AddressHeaderFlags;
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::RTPROT_TWILL;
use crate::dataplane::sysctl;

pub use crate::calc::endpoint::{GATEWAY_V4, GATEWAY_V6, HOST_MAC, format_mac};

/// A failed netlink step, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct LinkError {
    pub what: String,
    #[source]
    pub source: rtnetlink::Error,
}

fn ctx(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let what = what.into();
    move |source| LinkError { what, source }
}

/// Sets a link up; `what` names it in the error.
async fn set_up(h: &Handle, index: u32, what: impl Into<String>) -> Result<(), LinkError> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(ctx(what))
}

/// Whether a netlink error is "no such device" / "no such process".
fn is_missing(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::ENODEV || m.raw_code() == -libc::ESRCH || m.raw_code() == -libc::ENOENT)
}

/// The index of a link by name, if it exists.
pub async fn link_index(h: &Handle, name: &str) -> Result<Option<u32>, LinkError> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(Some(m)) => Ok(Some(m.header.index)),
        Ok(None) => Ok(None),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(ctx(format!("looking up link {name}"))(e)),
    }
}

/// A link's state: index, up, MAC.
pub struct LinkState {
    pub index: u32,
    pub up: bool,
    pub mac: Vec<u8>,
    pub mtu: u32,
}

pub async fn link_state(h: &Handle, name: &str) -> Result<Option<LinkState>, LinkError> {
    let m = match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(None),
        Err(e) if is_missing(&e) => return Ok(None),
        Err(e) => return Err(ctx(format!("looking up link {name}"))(e)),
    };
    let mut st = LinkState {
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        mac: Vec::new(),
        mtu: 0,
    };
    for a in m.attributes {
        match a {
            LinkAttribute::Address(mac) => st.mac = mac,
            LinkAttribute::Mtu(mtu) => st.mtu = mtu,
            _ => {}
        }
    }
    Ok(Some(st))
}

/// [`delete_link`] on a thread of the blocking pool with a netlink
/// connection of its own, in this process's namespace.
///
/// The kernel runs a request inside the sender's `sendmsg`, and deleting a
/// veth waits there for RCU grace periods (tens of milliseconds on a busy
/// machine). Sent from the async runtime, that blocks one of its few worker
/// threads: twenty concurrent DELs stalled every other task of the agent
/// (accepting CNI connections, IPAM, policy). On blocking-pool threads, each
/// with its own socket, the deletions overlap and the workers stay free.
pub async fn delete_link_off_runtime(name: &str) -> Result<bool, LinkError> {
    let name = name.to_string();
    let failed = |what: String| LinkError {
        what,
        source: rtnetlink::Error::RequestFailed,
    };
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| failed(format!("starting a netlink worker: {e}")))?;
        rt.block_on(async {
            let (conn, h, _) = rtnetlink::new_connection()
                .map_err(|e| failed(format!("opening a netlink socket: {e}")))?;
            let task = tokio::spawn(conn);
            let out = delete_link(&h, &name).await;
            task.abort();
            out
        })
    })
    .await
    .map_err(|e| failed(format!("the netlink worker failed: {e}")))?
}

/// Deletes a link by name; returns whether it existed. One request: the
/// kernel resolves the name (index 0 and IFLA_IFNAME), so a DEL does not
/// queue twice for the RTNL lock behind other netlink users.
pub async fn delete_link(h: &Handle, name: &str) -> Result<bool, LinkError> {
    let mut req = h.link().del(0);
    req.message_mut()
        .attributes
        .push(LinkAttribute::IfName(name.to_string()));
    match req.execute().await {
        Ok(()) => Ok(true),
        Err(e) if is_missing(&e) => Ok(false),
        Err(e) => Err(ctx(format!("deleting link {name}"))(e)),
    }
}

/// Creates the veth pair: `host_if` here, `pod_if` directly inside the
/// namespace `pod_ns`, both with `mtu`. Returns the host end's index.
pub async fn create_veth(
    h: &Handle,
    host_if: &str,
    pod_if: &str,
    pod_ns: &File,
    mtu: u32,
) -> Result<u32, LinkError> {
    let mut peer = rtnetlink::LinkMessageBuilder::<LinkUnspec>::new()
        .name(pod_if.to_string())
        .mtu(mtu)
        .build();
    peer.attributes
        .push(LinkAttribute::NetNsFd(pod_ns.as_raw_fd()));
    let msg = LinkVeth::new(host_if, pod_if)
        .mtu(mtu)
        .address(HOST_MAC.to_vec())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    h.link().add(msg).execute().await.map_err(ctx(format!(
        "creating veth {host_if} <-> {pod_if} in the pod"
    )))?;
    link_index(h, host_if).await?.ok_or_else(|| LinkError {
        what: format!("veth {host_if} vanished right after creation"),
        source: rtnetlink::Error::RequestFailed,
    })
}

fn host_route(dst: IpNetwork, oif: u32) -> RouteMessage {
    let proto = RouteProtocol::from(RTPROT_TWILL);
    match dst {
        IpNetwork::V4(n) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(n.ip(), n.prefix())
            .output_interface(oif)
            .scope(RouteScope::Link)
            .protocol(proto)
            .build(),
        IpNetwork::V6(n) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(n.ip(), n.prefix())
            .output_interface(oif)
            .scope(RouteScope::Link)
            .protocol(proto)
            .build(),
    }
}

/// Host end: up, proxy ARP, and a route to each pod address through it.
pub async fn configure_host_side(
    h: &Handle,
    host_if: &str,
    index: u32,
    addrs: &[IpNetwork],
) -> Result<(), LinkError> {
    let sys = |what: &str, r: std::io::Result<()>| {
        r.map_err(|e| LinkError {
            what: format!("{what} on {host_if}: {e}"),
            source: rtnetlink::Error::RequestFailed,
        })
    };
    sys(
        "enabling proxy_arp",
        sysctl::write_if("ipv4", host_if, "proxy_arp", "1"),
    )?;
    // Answer at once instead of after the default random delay.
    sys(
        "setting proxy_delay",
        sysctl::write_neigh("ipv4", host_if, "proxy_delay", "0"),
    )?;
    // The link-local gateway address must be usable the moment ADD returns:
    // skip duplicate address detection (it is derived from our own fixed MAC
    // on a point-to-point link). Best effort: IPv6 may be disabled.
    let _ = sysctl::write_if("ipv6", host_if, "accept_dad", "0");
    set_up(h, index, format!("bringing {host_if} up")).await?;
    for a in addrs {
        h.route()
            .add(host_route(*a, index))
            .replace()
            .execute()
            .await
            .map_err(ctx(format!("adding host route {a} dev {host_if}")))?;
    }
    Ok(())
}

/// Pod end, run inside the pod's namespace: up, addresses, gateway
/// neighbour and routes. Returns the pod end's MAC.
pub async fn configure_pod_side(
    h: &Handle,
    pod_if: &str,
    addrs: &[IpNetwork],
) -> Result<String, LinkError> {
    let st = link_state(h, pod_if).await?.ok_or_else(|| LinkError {
        what: format!("{pod_if} is missing inside the pod"),
        source: rtnetlink::Error::RequestFailed,
    })?;
    let idx = st.index;
    if let Some(lo) = link_index(h, "lo").await? {
        set_up(h, lo, "bringing lo up in the pod").await?;
    }
    let has_v6 = addrs.iter().any(|a| a.is_ipv6());
    if has_v6 {
        // The address is unique by construction: skip duplicate detection.
        let _ = sysctl::write_if("ipv6", pod_if, "accept_dad", "0");
        let _ = sysctl::write_if("ipv6", pod_if, "disable_ipv6", "0");
    }
    set_up(h, idx, format!("bringing {pod_if} up in the pod")).await?;
    for a in addrs {
        let mut req = h.address().add(idx, a.ip(), a.prefix());
        if a.is_ipv6() {
            req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        }
        req.replace()
            .execute()
            .await
            .map_err(ctx(format!("adding {a} to {pod_if}")))?;
    }
    if addrs.iter().any(|a| a.is_ipv4()) {
        h.neighbours()
            .add(idx, IpAddr::V4(GATEWAY_V4))
            .link_layer_address(&HOST_MAC)
            .replace()
            .execute()
            .await
            .map_err(ctx("adding the gateway neighbour 169.254.1.1"))?;
        h.route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(GATEWAY_V4, 32)
                    .output_interface(idx)
                    .scope(RouteScope::Link)
                    .build(),
            )
            .replace()
            .execute()
            .await
            .map_err(ctx("adding the route to 169.254.1.1"))?;
        h.route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(GATEWAY_V4)
                    .output_interface(idx)
                    .build(),
            )
            .replace()
            .execute()
            .await
            .map_err(ctx("adding the default route via 169.254.1.1"))?;
    }
    if has_v6 {
        h.neighbours()
            .add(idx, IpAddr::V6(GATEWAY_V6))
            .link_layer_address(&HOST_MAC)
            .replace()
            .execute()
            .await
            .map_err(ctx(format!("adding the gateway neighbour {GATEWAY_V6}")))?;
        h.route()
            .add(
                RouteMessageBuilder::<Ipv6Addr>::new()
                    .gateway(GATEWAY_V6)
                    .output_interface(idx)
                    .build(),
            )
            .replace()
            .execute()
            .await
            .map_err(ctx(format!("adding the default route via {GATEWAY_V6}")))?;
    }
    Ok(format_mac(&st.mac))
}

/// Destinations of the routes with Twill's protocol through interface `oif`.
pub async fn twill_routes_via(h: &Handle, oif: u32) -> Result<Vec<IpNetwork>, LinkError> {
    let mut out = Vec::new();
    for msg in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let mut stream = h.route().get(msg).execute();
        while let Some(r) = stream.try_next().await.map_err(ctx("listing routes"))? {
            if u8::from(r.header.protocol) != RTPROT_TWILL {
                continue;
            }
            let mut dst = None;
            let mut via = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                        dst = Some(IpAddr::V4(*ip))
                    }
                    RouteAttribute::Destination(RouteAddress::Inet6(ip)) => {
                        dst = Some(IpAddr::V6(*ip))
                    }
                    RouteAttribute::Oif(i) => via = Some(*i),
                    _ => {}
                }
            }
            if via == Some(oif)
                && let Some(d) = dst
                && let Ok(n) = IpNetwork::new(d, r.header.destination_prefix_length)
            {
                out.push(n);
            }
        }
    }
    Ok(out)
}

/// What the pod sees: its interface's addresses and whether the default
/// routes point at the gateways. Run inside the pod's namespace.
pub struct PodView {
    pub up: bool,
    pub addrs: Vec<IpNetwork>,
    pub default_v4: bool,
    pub default_v6: bool,
}

pub async fn pod_view(h: &Handle, pod_if: &str) -> Result<Option<PodView>, LinkError> {
    use netlink_packet_route::address::AddressAttribute;
    let Some(st) = link_state(h, pod_if).await? else {
        return Ok(None);
    };
    let mut view = PodView {
        up: st.up,
        addrs: Vec::new(),
        default_v4: false,
        default_v6: false,
    };
    let mut stream = h.address().get().set_link_index_filter(st.index).execute();
    while let Some(a) = stream
        .try_next()
        .await
        .map_err(ctx("listing pod addresses"))?
    {
        for attr in &a.attributes {
            if let AddressAttribute::Address(ip) = attr
                && !ip.is_loopback()
                && !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] == 0xfe80)
                && let Ok(n) = IpNetwork::new(*ip, a.header.prefix_len)
            {
                view.addrs.push(n);
            }
        }
    }
    for (msg, v4) in [
        (RouteMessageBuilder::<Ipv4Addr>::new().build(), true),
        (RouteMessageBuilder::<Ipv6Addr>::new().build(), false),
    ] {
        let mut stream = h.route().get(msg).execute();
        while let Some(r) = stream.try_next().await.map_err(ctx("listing pod routes"))? {
            if r.header.destination_prefix_length != 0 {
                continue;
            }
            let gw_ok = r.attributes.iter().any(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => *g == GATEWAY_V4,
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => *g == GATEWAY_V6,
                _ => false,
            });
            if gw_ok {
                if v4 {
                    view.default_v4 = true;
                } else {
                    view.default_v6 = true;
                }
            }
        }
    }
    Ok(Some(view))
}
