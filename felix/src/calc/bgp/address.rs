//! The address this node peers from. It is never guessed: it comes from
//! `--node-address` (an interface name or a CIDR) or the BGPConfiguration's
//! `nodeAddress`, and must resolve to exactly one global IPv4 address on the
//! node — otherwise BGP stays off and the error says why. The choice is
//! pure ([`pick`]); `crate::bgp::address` lists the kernel's addresses.
//! In dual stack the node's IPv6 next hop is the one global IPv6 address on
//! the node address's interface ([`pick_v6`]).

use ipnetwork::IpNetwork;

/// How to find the node address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressSpec {
    Interface(String),
    Cidr(IpNetwork),
}

impl std::str::FromStr for AddressSpec {
    type Err = String;
    /// `eth0` (an interface) or `172.30.0.0/24` (a CIDR the address is in).
    fn from_str(s: &str) -> Result<Self, String> {
        if s.contains('/') {
            return s
                .parse::<IpNetwork>()
                .map(AddressSpec::Cidr)
                .map_err(|e| format!("node address {s:?}: not a CIDR: {e}"));
        }
        let ok = !s.is_empty()
            && s.len() <= 15
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
        if ok {
            Ok(AddressSpec::Interface(s.to_string()))
        } else {
            Err(format!(
                "node address {s:?}: give an interface name (eth0) or a CIDR (172.30.0.0/24)"
            ))
        }
    }
}

impl TryFrom<&twill_api::resources::NodeAddress> for AddressSpec {
    type Error = String;
    fn try_from(a: &twill_api::resources::NodeAddress) -> Result<Self, String> {
        match (&a.interface, &a.cidr) {
            (Some(i), None) => Ok(AddressSpec::Interface(i.clone())),
            (None, Some(c)) => c.parse(),
            (Some(_), Some(_)) => {
                Err("BGPConfiguration nodeAddress: set interface or cidr, not both".into())
            }
            (None, None) => Err("BGPConfiguration nodeAddress: set interface or cidr".into()),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("interface {0} does not exist on this node")]
    NoInterface(String),
    #[error("interface {0} has no global IPv4 address")]
    NoAddressOn(String),
    #[error("no address on this node is inside {0}")]
    NoneInCidr(IpNetwork),
    #[error(
        "{cidr} matches several addresses on this node ({found}): use a narrower CIDR or an interface"
    )]
    Ambiguous { cidr: IpNetwork, found: String },
    #[error("listing the node's addresses: {0}")]
    Netlink(String),
}

/// One address on the node: interface name and address with prefix length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAddress {
    pub ifname: String,
    pub addr: IpNetwork,
}

fn global_v4(a: &IpNetwork) -> bool {
    matches!(a, IpNetwork::V4(v) if !v.ip().is_loopback() && !v.ip().is_link_local())
}

/// Picks the node address from the node's addresses.
pub fn pick(addrs: &[HostAddress], spec: &AddressSpec) -> Result<IpNetwork, AddressError> {
    match spec {
        AddressSpec::Interface(name) => addrs
            .iter()
            .filter(|a| &a.ifname == name)
            .find(|a| global_v4(&a.addr))
            .map(|a| a.addr)
            .ok_or_else(|| AddressError::NoAddressOn(name.clone())),
        AddressSpec::Cidr(c) => {
            let found: Vec<&HostAddress> =
                addrs.iter().filter(|a| c.contains(a.addr.ip())).collect();
            match found.as_slice() {
                [] => Err(AddressError::NoneInCidr(*c)),
                [one] => Ok(one.addr),
                many => Err(AddressError::Ambiguous {
                    cidr: *c,
                    found: many
                        .iter()
                        .map(|a| format!("{} on {}", a.addr, a.ifname))
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
            }
        }
    }
}

/// The node's IPv6 address for IPv6 next hops: the one global IPv6 address
/// on the interface that holds the node address `v4`. None when there is
/// none (an IPv4-only node); an error when there are several (never guessed).
pub fn pick_v6(
    addrs: &[HostAddress],
    v4: &IpNetwork,
) -> Result<Option<std::net::Ipv6Addr>, String> {
    let Some(ifname) = addrs
        .iter()
        .find(|a| a.addr == *v4)
        .map(|a| a.ifname.as_str())
    else {
        return Ok(None);
    };
    let found: Vec<std::net::Ipv6Addr> = addrs
        .iter()
        .filter(|a| a.ifname == ifname)
        .filter_map(|a| match a.addr {
            IpNetwork::V6(n)
                if !n.ip().is_loopback()
                    && !n.ip().is_unicast_link_local()
                    && !n.ip().is_multicast() =>
            {
                Some(n.ip())
            }
            _ => None,
        })
        .collect();
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        many => Err(format!(
            "{ifname} has several global IPv6 addresses ({}): IPv6 blocks need one next hop",
            many.iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(ifname: &str, addr: &str) -> HostAddress {
        HostAddress {
            ifname: ifname.into(),
            addr: addr.parse().unwrap(),
        }
    }

    #[test]
    fn the_ipv6_next_hop_is_the_one_global_ipv6_beside_the_node_address() {
        let v4: IpNetwork = "172.30.0.11/24".parse().unwrap();
        let mut addrs = vec![
            a("eth0", "fe80::1/64"),
            a("eth0", "172.30.0.11/24"),
            a("eth1", "fd00:1::1/64"),
        ];
        // IPv4 only on eth0 (link-local does not count, eth1 is not ours).
        assert_eq!(pick_v6(&addrs, &v4), Ok(None));
        addrs.push(a("eth0", "fd00:172:30::11/64"));
        assert_eq!(
            pick_v6(&addrs, &v4),
            Ok(Some("fd00:172:30::11".parse().unwrap()))
        );
        addrs.push(a("eth0", "fd00:172:30::99/64"));
        let e = pick_v6(&addrs, &v4).unwrap_err();
        assert!(
            e.contains("fd00:172:30::11") && e.contains("fd00:172:30::99"),
            "{e}"
        );
    }

    #[test]
    fn interface_gives_its_first_global_ipv4() {
        let addrs = [
            a("lo", "127.0.0.1/8"),
            a("eth0", "fe80::1/64"),
            a("eth0", "172.30.0.11/24"),
            a("eth1", "10.0.0.1/24"),
        ];
        assert_eq!(
            pick(&addrs, &"eth0".parse().unwrap()),
            Ok("172.30.0.11/24".parse().unwrap())
        );
        assert_eq!(
            pick(&addrs, &"eth2".parse().unwrap()),
            Err(AddressError::NoAddressOn("eth2".into()))
        );
    }

    #[test]
    fn cidr_must_match_exactly_one() {
        let addrs = [a("eth0", "172.30.0.11/24"), a("eth1", "172.30.1.5/24")];
        assert_eq!(
            pick(&addrs, &"172.30.0.0/24".parse().unwrap()),
            Ok("172.30.0.11/24".parse().unwrap())
        );
        assert!(matches!(
            pick(&addrs, &"172.30.0.0/16".parse().unwrap()),
            Err(AddressError::Ambiguous { .. })
        ));
        assert!(matches!(
            pick(&addrs, &"10.0.0.0/8".parse().unwrap()),
            Err(AddressError::NoneInCidr(_))
        ));
    }

    #[test]
    fn specs_parse_with_useful_errors() {
        assert_eq!(
            "eth0".parse::<AddressSpec>(),
            Ok(AddressSpec::Interface("eth0".into()))
        );
        assert!(
            "10.0.0.0/33"
                .parse::<AddressSpec>()
                .unwrap_err()
                .contains("not a CIDR")
        );
        assert!("this is not".parse::<AddressSpec>().is_err());
    }
}
