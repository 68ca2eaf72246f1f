//! Helpers shared by the rib_* integration tests.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};

use twill_bgpd::policy::Policy;
use twill_bgpd::rib::{Changes, LocalConfig, PeerId, PeerInfo, PeerKind, Rib};
use twill_bgpd::types::{AsPath, Asn, PathAttrs, Prefix};

pub const ASN: Asn = 65000;
pub const ROUTER_ID: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
pub const LOCAL_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);

pub fn cfg() -> LocalConfig {
    LocalConfig {
        asn: ASN,
        router_id: ROUTER_ID,
        cluster_id: None,
        multipath: false,
    }
}

pub fn p(s: &str) -> Prefix {
    s.parse().unwrap()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Peer `id` at 10.0.0.id with router ID 1.1.1.id.
pub fn peer(id: PeerId, asn: Asn, kind: PeerKind) -> PeerInfo {
    PeerInfo {
        id,
        addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, id as u8)),
        asn,
        router_id: Ipv4Addr::new(1, 1, 1, id as u8),
        local_addr: IpAddr::V4(LOCAL_ADDR),
        rr_client: false,
        kind,
    }
}

pub fn add(rib: &mut Rib, info: PeerInfo) {
    rib.add_peer(info, Policy::accept_all(), Policy::originated_only());
}

pub fn attrs(path: &[Asn], next_hop: &str) -> PathAttrs {
    PathAttrs {
        as_path: AsPath::from_sequence(path.iter().copied()),
        next_hop: Some(ip(next_hop)),
        ..Default::default()
    }
}

pub fn announce(rib: &mut Rib, id: PeerId, a: PathAttrs, prefixes: &[&str]) -> Changes {
    let ps: Vec<Prefix> = prefixes.iter().map(|s| p(s)).collect();
    rib.update(id, &[], Some(a), &ps)
}

pub fn withdraw(rib: &mut Rib, id: PeerId, prefixes: &[&str]) -> Changes {
    let ps: Vec<Prefix> = prefixes.iter().map(|s| p(s)).collect();
    rib.update(id, &ps, None, &[])
}

/// Prefixes announced to a peer by a batch of exports, with their attributes.
pub fn announced(exports: &[twill_bgpd::rib::Export]) -> Vec<(Prefix, PathAttrs)> {
    let mut v: Vec<(Prefix, PathAttrs)> = exports
        .iter()
        .flat_map(|e| {
            e.announced
                .iter()
                .map(move |p| (*p, e.attrs.as_deref().cloned().unwrap()))
        })
        .collect();
    v.sort_by_key(|(p, _)| *p);
    v
}

pub fn withdrawn(exports: &[twill_bgpd::rib::Export]) -> Vec<Prefix> {
    let mut v: Vec<Prefix> = exports.iter().flat_map(|e| e.withdrawn.clone()).collect();
    v.sort();
    v
}
