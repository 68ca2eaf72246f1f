//! Translation between the route model and rtnetlink messages: the add,
//! replace and delete requests Twill sends, the filtered dump request, and
//! the parse of what the kernel reports back. Pure (no socket here).

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteNextHop, RouteProtocol,
    RouteScope, RouteType,
};

use crate::RTPROT_TWILL;
use crate::calc::routes::{Installed, Target};

fn family(dst: &IpNetwork) -> AddressFamily {
    if dst.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn base(dst: &IpNetwork) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family(dst);
    m.header.destination_prefix_length = dst.prefix();
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::from(RTPROT_TWILL);
    if dst.prefix() > 0 {
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                dst.network(),
            )));
    }
    m
}

/// The NEWROUTE body for `dst` → `target` (added or replaced by the caller's flags).
pub fn route_message(dst: &IpNetwork, target: &Target) -> RouteMessage {
    let mut m = base(dst);
    match target {
        Target::Dev(oif) => {
            m.header.kind = RouteType::Unicast;
            m.header.scope = RouteScope::Link;
            m.attributes.push(RouteAttribute::Oif(*oif));
        }
        Target::Blackhole => {
            m.header.kind = RouteType::BlackHole;
            m.header.scope = RouteScope::Universe;
        }
        Target::Via(hops) => {
            m.header.kind = RouteType::Unicast;
            m.header.scope = RouteScope::Universe;
            if hops.len() == 1 {
                if let Some(h) = hops.first() {
                    m.attributes
                        .push(RouteAttribute::Gateway(RouteAddress::from(*h)));
                }
            } else {
                let nhs = hops
                    .iter()
                    .map(|h| {
                        let mut nh = RouteNextHop::default();
                        nh.attributes
                            .push(RouteAttribute::Gateway(RouteAddress::from(*h)));
                        nh
                    })
                    .collect();
                m.attributes.push(RouteAttribute::MultiPath(nhs));
            }
        }
    }
    m
}

/// The DELROUTE body for one of our routes. The protocol number is part of
/// the match, so the kernel itself refuses to delete anyone else's route;
/// scope "nowhere" and type "unspec" match any scope and type.
pub fn delete_message(r: &Installed) -> RouteMessage {
    let mut m = base(&r.dst);
    m.header.kind = RouteType::Unspec;
    m.header.scope = RouteScope::NoWhere;
    if let Some(metric) = r.metric
        && metric != 0
    {
        m.attributes.push(RouteAttribute::Priority(metric));
    }
    m
}

/// The dump request for one family: only Twill's protocol, only the main
/// table. The kernel applies the filter when the socket has
/// NETLINK_GET_STRICT_CHK; [`parse`] checks again in case it did not.
pub fn dump_message(v4: bool) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = if v4 {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::from(RTPROT_TWILL);
    m.header.kind = RouteType::Unspec;
    m.header.scope = RouteScope::Universe;
    m
}

fn addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A reported route in model terms; None for messages that are not
/// IPv4/IPv6 routes at all.
pub fn parse(m: &RouteMessage) -> Option<Installed> {
    let v4 = match m.header.address_family {
        AddressFamily::Inet => true,
        AddressFamily::Inet6 => false,
        _ => return None,
    };
    let mut table = u32::from(m.header.table);
    let mut dst_ip = None;
    let mut metric = None;
    let mut gateway = None;
    let mut oif = None;
    let mut multipath: Option<&Vec<RouteNextHop>> = None;
    let mut unusual = false;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst_ip = addr(d),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Priority(p) => metric = Some(*p),
            RouteAttribute::Gateway(g) => gateway = addr(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::MultiPath(n) => multipath = Some(n),
            RouteAttribute::Via(_)
            | RouteAttribute::Encap(_)
            | RouteAttribute::EncapType(_)
            | RouteAttribute::NhId(_) => unusual = true,
            _ => {}
        }
    }
    let dst_ip = dst_ip.unwrap_or(if v4 {
        IpAddr::from([0u8; 4])
    } else {
        IpAddr::from([0u8; 16])
    });
    let dst = IpNetwork::new(dst_ip, m.header.destination_prefix_length).ok()?;
    let target = if unusual {
        None
    } else {
        match m.header.kind {
            RouteType::BlackHole => Some(Target::Blackhole),
            RouteType::Unicast => {
                if let Some(nhs) = multipath {
                    let hops: Option<BTreeSet<IpAddr>> = nhs
                        .iter()
                        .map(|nh| {
                            nh.attributes.iter().find_map(|a| match a {
                                RouteAttribute::Gateway(g) => addr(g),
                                _ => None,
                            })
                        })
                        .collect();
                    hops.filter(|h| !h.is_empty()).map(Target::Via)
                } else if let Some(g) = gateway {
                    Some(Target::Via([g].into()))
                } else {
                    oif.map(Target::Dev)
                }
            }
            _ => None,
        }
    };
    Some(Installed {
        dst,
        protocol: u8::from(m.header.protocol),
        table,
        metric,
        target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calc::routes::TABLE_MAIN;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn round_trip(dst: &str, t: Target) {
        let m = route_message(&net(dst), &t);
        let back = parse(&m).unwrap();
        assert_eq!(back.dst, net(dst));
        assert_eq!(back.protocol, RTPROT_TWILL);
        assert_eq!(back.table, TABLE_MAIN);
        assert_eq!(back.target, Some(t));
    }

    #[test]
    fn every_target_survives_a_round_trip() {
        round_trip("10.244.1.5/32", Target::Dev(9));
        round_trip("10.244.1.0/26", Target::Blackhole);
        round_trip(
            "10.244.2.0/26",
            Target::Via(["192.168.0.2".parse().unwrap()].into()),
        );
        round_trip(
            "10.244.3.0/26",
            Target::Via(
                [
                    "192.168.0.2".parse().unwrap(),
                    "192.168.0.3".parse().unwrap(),
                ]
                .into(),
            ),
        );
        round_trip(
            "fd00:10:244::/122",
            Target::Via(["fd00::2".parse().unwrap(), "fd00::3".parse().unwrap()].into()),
        );
    }

    #[test]
    fn deletes_carry_the_protocol_and_match_any_scope() {
        let r = Installed {
            dst: net("10.244.1.0/26"),
            protocol: RTPROT_TWILL,
            table: TABLE_MAIN,
            metric: Some(20),
            target: None,
        };
        let m = delete_message(&r);
        assert_eq!(u8::from(m.header.protocol), RTPROT_TWILL);
        assert_eq!(m.header.scope, RouteScope::NoWhere);
        assert_eq!(m.header.kind, RouteType::Unspec);
        assert!(m.attributes.contains(&RouteAttribute::Priority(20)));
    }

    #[test]
    fn dumps_ask_for_our_protocol_in_main_only_any_type() {
        let m = dump_message(true);
        assert_eq!(u8::from(m.header.protocol), RTPROT_TWILL);
        assert_eq!(m.header.table, RouteHeader::RT_TABLE_MAIN);
        assert_eq!(m.header.kind, RouteType::Unspec);
    }
}
