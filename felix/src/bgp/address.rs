//! The kernel's addresses, for the node address ([`crate::calc::bgp::address`]
//! picks from them).

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkAttribute;
use rtnetlink::Handle;

use crate::calc::bgp::address::{AddressError, AddressSpec, HostAddress, pick};

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
        for attr in &a.attributes {
            if let AddressAttribute::Address(ip) = attr
                && let Ok(n) = IpNetwork::new(*ip, a.header.prefix_len)
            {
                out.push(HostAddress {
                    ifname: ifname.clone(),
                    addr: n,
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
