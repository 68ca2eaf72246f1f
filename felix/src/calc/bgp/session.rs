//! A desired session's settings as the speaker takes them (pure): the
//! BGPPeer's and BGPConfiguration's fields, the BFD timers, and where a
//! BGPPeer's password Secret lives. The Secret itself is read by
//! `crate::bgp::sessions`.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use twill_bgpd::rib::PeerKind;
use twill_bgpd::speaker::PeerConfig;

use super::from_api::peer_policies;
use super::peers::DesiredPeer;

/// BGPPeer.spec.bfd to the speaker's BFD settings (300 ms × 3 by default;
/// the API validates the ranges).
pub fn bfd_config(b: &twill_api::resources::bgppeer::Bfd) -> twill_bgpd::bfd::session::Config {
    let d = twill_bgpd::bfd::session::Config::default();
    twill_bgpd::bfd::session::Config {
        min_tx: b
            .min_tx_ms
            .map(|ms| Duration::from_millis(ms.into()))
            .unwrap_or(d.min_tx),
        min_rx: b
            .min_rx_ms
            .map(|ms| Duration::from_millis(ms.into()))
            .unwrap_or(d.min_rx),
        multiplier: b.multiplier.filter(|m| *m > 0).unwrap_or(d.multiplier),
    }
}

/// Where twill-node runs when nothing says otherwise (the deploy manifests).
pub const DEFAULT_NAMESPACE: &str = "twill-system";

/// The namespace of a BGPPeer password Secret: the reference's own, else
/// the namespace twill-node runs in (`own`), else twill-system.
pub fn secret_namespace(field: Option<&str>, own: impl FnOnce() -> Option<String>) -> String {
    match field.map(str::trim).filter(|s| !s.is_empty()) {
        Some(ns) => ns.to_string(),
        None => own().unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
    }
}

/// Everything of a session's settings but the password (pure): the
/// BGPPeer's and BGPConfiguration's fields as the speaker takes them. The
/// session starts from the node's address of the peer's family (`my_addr`,
/// or `my_addr6`, the IPv6 next hop) unless the BGPPeer's `sourceAddress`
/// says otherwise.
pub fn session_settings(
    d: &DesiredPeer,
    my_addr: IpAddr,
    my_addr6: Option<Ipv6Addr>,
) -> Result<PeerConfig, String> {
    let mut pc = PeerConfig::new(d.address, d.asn);
    pc.port = d.port;
    pc.hold_time = d.hold_time;
    pc.keepalive = d.keepalive_time;
    pc.multihop = d.ebgp_multihop;
    // GTSM with the hop count the BGPPeer gives (RFC 5082: accept TTL ≥ 256 − N).
    pc.ttl_security = d.ttl_security;
    pc.graceful_restart = d.graceful_restart;
    pc.route_reflector_client = d.rr_client;
    pc.kind = if d.is_node {
        PeerKind::Node
    } else {
        PeerKind::External
    };
    pc.connect_retry = Duration::from_secs(2);
    pc.bfd = d.bfd.as_ref().map(bfd_config);
    if my_addr.is_ipv4() == d.address.is_ipv4() {
        pc.source_address = Some(my_addr);
    } else if d.address.is_ipv6() {
        pc.source_address = my_addr6.map(IpAddr::V6);
    }
    if let Some(spec) = &d.spec {
        let pol = peer_policies(spec)
            .map_err(|e| format!("BGPPeer {}: {e}", d.from.clone().unwrap_or_default()))?;
        pc.import = pol.import;
        pc.export = pol.export;
        match spec.source_address.as_deref() {
            Some("None") => pc.source_address = None,
            Some("UseNodeIP") | None => {}
            Some(ip) => {
                pc.source_address = Some(
                    ip.parse()
                        .map_err(|_| format!("sourceAddress {ip:?} is not an address"))?,
                )
            }
        }
    }
    Ok(pc)
}

#[cfg(test)]
mod tests {
    use super::super::peers;
    use super::*;
    use twill_api::resources::{BGPConfiguration, BGPPeer};

    /// Every BGPPeer field that shapes a session reaches the speaker's
    /// settings (the speaker's behaviour for each is tested in bgpd).
    #[test]
    fn every_bgppeer_session_field_reaches_the_speaker() {
        use twill_api::resources::bgppeer::{Bfd, FilterRule, MaxPrefixes};
        use twill_api::resources::{BGPConfigurationSpec, BGPPeerSpec};
        let cfg = BGPConfiguration::new(
            "default",
            BGPConfigurationSpec {
                as_number: Some(65001),
                node_to_node_mesh_enabled: Some(false),
                hold_time: Some(30),
                graceful_restart: Some(twill_api::resources::bgpconfig::GracefulRestart {
                    enabled: true,
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        let spec = BGPPeerSpec {
            peer_ip: Some("10.96.0.1:1179".into()),
            as_number: Some(65000),
            hold_time: Some(9),
            keepalive_time: Some(2),
            ttl_security: Some(3),
            max_prefixes: Some(MaxPrefixes {
                limit: 5,
                ..Default::default()
            }),
            import_filters: vec![FilterRule {
                cidr: Some("10.0.0.0/8".into()),
                ..Default::default()
            }],
            export_filters: vec![FilterRule::default()],
            bfd: Some(Bfd {
                enabled: true,
                ..Default::default()
            }),
            source_address: Some("10.98.0.9".into()),
            next_hop_self: true,
            route_reflector_client: true,
            graceful_restart: Some(false),
            ..Default::default()
        };
        let peer = BGPPeer::new("tor", spec.clone());
        let (d, problems) = peers::desired_peers("n1", &[], std::slice::from_ref(&cfg), &[peer]);
        assert!(problems.is_empty(), "{problems:?}");
        let me: IpAddr = "10.98.0.2".parse().unwrap();
        let pc = session_settings(&d[0], me, None).unwrap();
        assert_eq!(pc.address, "10.96.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((pc.port, pc.asn), (1179, 65000));
        assert_eq!((pc.hold_time, pc.keepalive), (9, Some(2)));
        assert_eq!(pc.ttl_security, Some(3));
        assert_eq!(pc.import.max_prefix.map(|m| m.limit), Some(5));
        assert_eq!(pc.import.terms.len(), 1);
        assert_eq!(pc.export.terms.len(), 1);
        assert!(pc.export.next_hop_self);
        assert!(pc.bfd.is_some());
        assert_eq!(pc.source_address, Some("10.98.0.9".parse().unwrap()));
        assert!(pc.route_reflector_client);
        assert!(!pc.graceful_restart);
        assert_eq!(pc.kind, PeerKind::External);
        // ebgpMultihop (exclusive with ttlSecurity), sourceAddress None and
        // UseNodeIP, and the configuration's defaults.
        let spec = BGPPeerSpec {
            ttl_security: None,
            ebgp_multihop: Some(4),
            source_address: Some("None".into()),
            hold_time: None,
            keepalive_time: None,
            graceful_restart: None,
            ..spec
        };
        let (d, _) = peers::desired_peers(
            "n1",
            &[],
            std::slice::from_ref(&cfg),
            &[BGPPeer::new("tor", spec.clone())],
        );
        let pc = session_settings(&d[0], me, None).unwrap();
        assert_eq!((pc.multihop, pc.ttl_security), (Some(4), None));
        assert_eq!(pc.source_address, None);
        assert_eq!((pc.hold_time, pc.keepalive), (30, None));
        assert!(pc.graceful_restart, "the configuration's setting");
        let spec = BGPPeerSpec {
            source_address: Some("UseNodeIP".into()),
            ..spec
        };
        let (d, _) = peers::desired_peers("n1", &[], &[cfg], &[BGPPeer::new("tor", spec)]);
        assert_eq!(
            session_settings(&d[0], me, None).unwrap().source_address,
            Some(me)
        );
    }

    /// An IPv6 peer's session starts from the node's IPv6 next hop, so an
    /// eBGP router sees that address as the next hop of the IPv6 blocks;
    /// without one the kernel picks; an IPv4 peer keeps the node address.
    #[test]
    fn an_ipv6_session_starts_from_the_ipv6_next_hop() {
        use twill_api::resources::BGPPeerSpec;
        let peer = |ip: &str| {
            BGPPeer::new(
                &format!("tor-{}", ip.len()),
                BGPPeerSpec {
                    peer_ip: Some(ip.into()),
                    as_number: Some(65000),
                    ..Default::default()
                },
            )
        };
        let (d, problems) = peers::desired_peers(
            "n1",
            &[],
            &[],
            &[peer("172.30.0.1"), peer("fd00:172:30::1")],
        );
        assert!(problems.is_empty(), "{problems:?}");
        let me: IpAddr = "172.30.0.11".parse().unwrap();
        let me6: Ipv6Addr = "fd00:172:30::11".parse().unwrap();
        let source = |addr: &str, my6: Option<Ipv6Addr>| {
            let d = d
                .iter()
                .find(|d| d.address.to_string() == addr)
                .expect("the peer");
            session_settings(d, me, my6).unwrap().source_address
        };
        assert_eq!(source("fd00:172:30::1", Some(me6)), Some(IpAddr::V6(me6)));
        assert_eq!(source("fd00:172:30::1", None), None);
        assert_eq!(source("172.30.0.1", Some(me6)), Some(me));
    }

    #[test]
    fn secret_namespace_is_the_field_then_our_own_then_twill_system() {
        assert_eq!(
            secret_namespace(Some("bgp-secrets"), || Some("kube-system".into())),
            "bgp-secrets"
        );
        assert_eq!(
            secret_namespace(None, || Some("kube-system".into())),
            "kube-system"
        );
        assert_eq!(
            secret_namespace(Some(""), || Some("kube-system".into())),
            "kube-system",
            "an empty namespace is no namespace"
        );
        assert_eq!(secret_namespace(None, || None), DEFAULT_NAMESPACE);
    }

    #[test]
    fn bgppeer_bfd_maps_to_speaker_settings_with_defaults() {
        use twill_api::resources::bgppeer::Bfd;
        let c = bfd_config(&Bfd {
            enabled: true,
            min_tx_ms: Some(100),
            min_rx_ms: None,
            multiplier: Some(5),
        });
        assert_eq!(c.min_tx, Duration::from_millis(100));
        assert_eq!(c.min_rx, Duration::from_millis(300));
        assert_eq!(c.multiplier, 5);
        assert_eq!(
            bfd_config(&Bfd {
                enabled: true,
                ..Default::default()
            }),
            twill_bgpd::bfd::session::Config::default()
        );
    }
}
