//! The address this node peers from. It is never guessed: it comes from
//! `--node-address` (an interface name or a CIDR) or the BGPConfiguration's
//! `nodeAddress`, and must resolve to exactly one global IPv4 address on the
//! node — otherwise BGP stays off and the error says why. The choice is
//! pure ([`pick`]); `crate::bgp::address` lists the kernel's addresses.
//! In dual stack the node's IPv6 next hop is a global IPv6 address on the
//! node address's interface, by the rule of [`pick_v6`].

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

/// One address on the node: interface name, address with prefix length and
/// what the kernel says about its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAddress {
    pub ifname: String,
    pub addr: IpNetwork,
    pub flags: AddrFlags,
}

/// The kernel's flags that rule an IPv6 address out as the next hop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddrFlags {
    /// Preferred lifetime over: kept for existing connections only.
    pub deprecated: bool,
    /// A privacy address (RFC 8981), which changes by design.
    pub temporary: bool,
    /// Duplicate address detection running or failed: not usable yet.
    pub tentative: bool,
}

impl AddrFlags {
    /// Usable as the node's IPv6 next hop.
    pub fn usable(&self) -> bool {
        !(self.deprecated || self.temporary || self.tentative)
    }
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

/// The node's IPv6 address for IPv6 next hops (and the source of its IPv6
/// sessions), chosen by one rule so every run on the same addresses picks
/// the same one:
///
/// 1. candidates: the global IPv6 addresses on the interface that holds the
///    node address `v4`, except deprecated (preferred lifetime over),
///    temporary (privacy) and tentative or DAD-failed ones;
/// 2. of those, the ones whose own subnet holds an IPv6 BGP peer (`peers6`)
///    when there are any — the address a router on that link can reach;
/// 3. the lowest of what is left.
///
/// None when there is no candidate (an IPv4-only node: IPv6 blocks are not
/// announced).
pub fn pick_v6(
    addrs: &[HostAddress],
    v4: &IpNetwork,
    peers6: &[std::net::Ipv6Addr],
) -> Option<std::net::Ipv6Addr> {
    let ifname = addrs
        .iter()
        .find(|a| a.addr == *v4)
        .map(|a| a.ifname.as_str())?;
    let candidates: Vec<ipnetwork::Ipv6Network> = addrs
        .iter()
        .filter(|a| a.ifname == ifname && a.flags.usable())
        .filter_map(|a| match a.addr {
            IpNetwork::V6(n) if global_v6(&n.ip()) => Some(n),
            _ => None,
        })
        .collect();
    let near_a_peer: Vec<&ipnetwork::Ipv6Network> = candidates
        .iter()
        .filter(|n| peers6.iter().any(|p| n.contains(*p) && *p != n.ip()))
        .collect();
    if near_a_peer.is_empty() {
        candidates.iter().map(|n| n.ip()).min()
    } else {
        near_a_peer.iter().map(|n| n.ip()).min()
    }
}

fn global_v6(a: &std::net::Ipv6Addr) -> bool {
    !a.is_loopback()
        && !a.is_unspecified()
        && !a.is_unicast_link_local()
        && !a.is_multicast()
        && a.to_ipv4_mapped().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(ifname: &str, addr: &str) -> HostAddress {
        HostAddress {
            ifname: ifname.into(),
            addr: addr.parse().unwrap(),
            flags: AddrFlags::default(),
        }
    }

    fn v6(s: &str) -> std::net::Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn the_ipv6_next_hop_is_a_global_ipv6_beside_the_node_address() {
        let v4: IpNetwork = "172.30.0.11/24".parse().unwrap();
        let mut addrs = vec![
            a("eth0", "fe80::1/64"),
            a("eth0", "172.30.0.11/24"),
            a("eth1", "fd00:1::1/64"),
            a("eth0", "::ffff:10.0.0.1/128"),
        ];
        // IPv4 only on eth0 (link-local and mapped do not count, eth1 is not ours).
        assert_eq!(pick_v6(&addrs, &v4, &[]), None);
        addrs.push(a("eth0", "fd00:172:30::11/64"));
        assert_eq!(pick_v6(&addrs, &v4, &[]), Some(v6("fd00:172:30::11")));
        // A node address that is not on the node: nothing to be beside.
        assert_eq!(
            pick_v6(&addrs, &"172.30.0.99/24".parse().unwrap(), &[]),
            None
        );
    }

    #[test]
    fn several_ipv6_addresses_pick_the_lowest_whatever_their_order() {
        let v4: IpNetwork = "172.30.0.11/24".parse().unwrap();
        let mut addrs = vec![
            a("eth0", "172.30.0.11/24"),
            a("eth0", "fd00:172:30::99/64"),
            a("eth0", "fd00:172:30::11/64"),
            a("eth0", "2001:db8::5/64"),
        ];
        assert_eq!(pick_v6(&addrs, &v4, &[]), Some(v6("2001:db8::5")));
        addrs.reverse();
        assert_eq!(pick_v6(&addrs, &v4, &[]), Some(v6("2001:db8::5")));
    }

    #[test]
    fn an_address_in_a_peers_subnet_wins_over_a_lower_one() {
        let v4: IpNetwork = "172.30.0.11/24".parse().unwrap();
        let addrs = vec![
            a("eth0", "172.30.0.11/24"),
            a("eth0", "2001:db8::5/64"),
            a("eth0", "fd00:172:30::99/64"),
            a("eth0", "fd00:172:30::11/64"),
        ];
        let tor = [v6("fd00:172:30::1")];
        assert_eq!(pick_v6(&addrs, &v4, &tor), Some(v6("fd00:172:30::11")));
        // A peer in no subnet of ours (multihop) changes nothing.
        assert_eq!(
            pick_v6(&addrs, &v4, &[v6("fd00:99::1")]),
            Some(v6("2001:db8::5"))
        );
        // A "peer" that is our own address is no reason either.
        assert_eq!(
            pick_v6(&addrs, &v4, &[v6("fd00:172:30::11")]),
            Some(v6("fd00:172:30::99"))
        );
    }

    #[test]
    fn deprecated_temporary_and_tentative_addresses_are_never_the_next_hop() {
        let v4: IpNetwork = "172.30.0.11/24".parse().unwrap();
        let mut addrs = vec![a("eth0", "172.30.0.11/24"), a("eth0", "fd00:172:30::99/64")];
        for flags in [
            AddrFlags {
                deprecated: true,
                ..Default::default()
            },
            AddrFlags {
                temporary: true,
                ..Default::default()
            },
            AddrFlags {
                tentative: true,
                ..Default::default()
            },
        ] {
            let mut low = a("eth0", "fd00:172:30::11/64");
            low.flags = flags;
            addrs.push(low);
            assert_eq!(
                pick_v6(&addrs, &v4, &[]),
                Some(v6("fd00:172:30::99")),
                "{flags:?}"
            );
            addrs.pop();
        }
        // The only address deprecated: no next hop rather than a dying one.
        addrs[1].flags.deprecated = true;
        assert_eq!(pick_v6(&addrs, &v4, &[]), None);
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
