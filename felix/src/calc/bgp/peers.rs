//! Which BGP sessions this node should have, computed from the datastore —
//! pure, so every rule is unit-tested.
//!
//! Inputs: the BGPConfigurations (`default` and this node's `node.<name>`),
//! every BGPPeer, and every Node (labels; the address and AS each twill-node
//! publishes in its Node's annotations). Rules, as Calico users expect:
//! * the node-to-node iBGP mesh (on unless `nodeToNodeMeshEnabled: false`)
//!   peers with every other node that has published an address;
//! * a BGPPeer applies to this node when `node` names it, when
//!   `nodeSelector` matches its labels, or when it has neither (global);
//!   with `peerIP` it is one session, with `peerSelector` one session per
//!   selected node — and the selected nodes open the reverse sessions, so
//!   route reflector peerings are symmetric;
//! * a node whose configuration sets `routeReflectorClusterId` is a route
//!   reflector: its sessions to nodes that are not reflectors are to RR
//!   clients;
//! * an explicit BGPPeer wins over the mesh for the same address.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;
use twill_api::resources::bgppeer::Bfd;
use twill_api::resources::{BGPConfiguration, BGPPeer, BGPPeerSpec, SecretKeyRef};
use twill_api::selector::Selector;

pub use super::local::{ANN_ADDRESS, ANN_AS, DEFAULT_AS, LocalBgp, local_bgp};
use super::local::{annotated_address, is_reflector, labels, name, parse_annotated_as};

/// Where a session comes from (shown in `twillctl node status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Mesh,
    /// A BGPPeer with peerIP that applies to every node.
    Global,
    /// A BGPPeer with peerIP for this node (node or nodeSelector).
    Node,
    /// A BGPPeer with peerSelector (other Twill nodes).
    Selector,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Mesh => "mesh",
            Source::Global => "global",
            Source::Node => "node",
            Source::Selector => "selector",
        }
    }
}

/// One session this node should have.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredPeer {
    pub address: IpAddr,
    pub port: u16,
    pub asn: u32,
    pub source: Source,
    /// The BGPPeer it comes from (None for the mesh).
    pub from: Option<String>,
    /// The other side is a Twill node (mesh or peerSelector), not a router.
    pub is_node: bool,
    pub rr_client: bool,
    pub password: Option<SecretKeyRef>,
    pub hold_time: u16,
    /// None: a third of the negotiated hold time.
    pub keepalive_time: Option<u16>,
    pub ttl_security: Option<u8>,
    pub ebgp_multihop: Option<u8>,
    pub graceful_restart: bool,
    /// The BGPPeer's spec, for filters, max-prefix and the rest.
    pub spec: Option<BGPPeerSpec>,
    /// BFD for this session (the BGPPeer's `bfd` when enabled).
    pub bfd: Option<Bfd>,
}

/// `IP`, `IP:port` or `[IPv6]:port`.
pub fn parse_peer_ip(s: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some((ip, None));
    }
    let sa: std::net::SocketAddr = s.parse().ok()?;
    Some((sa.ip(), Some(sa.port())))
}

/// Every session `me` should have. Problems (a selector that does not
/// parse, a peer without an AS) skip that BGPPeer and are returned as
/// messages for the log; they never stop the other sessions.
pub fn desired_peers(
    me: &str,
    nodes: &[Node],
    configs: &[BGPConfiguration],
    peers: &[BGPPeer],
) -> (Vec<DesiredPeer>, Vec<String>) {
    let mut problems: Vec<String> = nodes
        .iter()
        .filter_map(|n| parse_annotated_as(n).err())
        .collect();
    let my_node = nodes.iter().find(|n| name(n) == me);
    let local = local_bgp(me, my_node, configs);
    let my_labels = my_node.map(labels).unwrap_or_default();
    let my_addr = my_node.and_then(annotated_address);
    let i_reflect = local.cluster_id.is_some();
    let mut out: BTreeMap<IpAddr, DesiredPeer> = BTreeMap::new();
    let node_as = |n: &Node| local_bgp(name(n), Some(n), configs).asn;
    // Another Twill node listens on its own effective listenPort.
    let node_port = |n: &Node| local_bgp(name(n), Some(n), configs).listen_port;

    let base = |address: IpAddr, asn: u32, source: Source| DesiredPeer {
        address,
        port: 179,
        asn,
        source,
        from: None,
        is_node: false,
        rr_client: false,
        password: None,
        hold_time: local.hold_time,
        keepalive_time: local.keepalive_time,
        ttl_security: None,
        ebgp_multihop: None,
        graceful_restart: local.graceful_restart,
        spec: None,
        bfd: None,
    };

    if local.mesh {
        for n in nodes {
            if name(n) == me {
                continue;
            }
            let Some(addr) = annotated_address(n) else {
                continue;
            };
            if Some(addr) == my_addr {
                continue;
            }
            let mut p = base(addr, node_as(n), Source::Mesh);
            p.port = node_port(n);
            p.is_node = true;
            p.rr_client = i_reflect && !is_reflector(name(n), configs);
            out.insert(addr, p);
        }
    }

    let parse =
        |what: &str, s: &Option<String>, problems: &mut Vec<String>| -> Option<Option<Selector>> {
            match s {
                None => Some(None),
                Some(s) => match Selector::parse(s) {
                    Ok(sel) => Some(Some(sel)),
                    Err(e) => {
                        problems.push(format!("BGPPeer {what}: {e}; skipped"));
                        None
                    }
                },
            }
        };
    let mut sorted: Vec<&BGPPeer> = peers.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for bp in sorted {
        let pname = bp.metadata.name.clone().unwrap_or_default();
        let s = &bp.spec;
        let Some(node_sel) = parse(&pname, &s.node_selector, &mut problems) else {
            continue;
        };
        let Some(peer_sel) = parse(&pname, &s.peer_selector, &mut problems) else {
            continue;
        };
        let applies_to = |n: &str, l: &BTreeMap<String, String>| match (&s.node, &node_sel) {
            (Some(only), _) => only == n,
            (None, Some(sel)) => sel.matches(l),
            (None, None) => true,
        };
        let apply = |p: &mut DesiredPeer| {
            p.from = Some(pname.clone());
            p.password = s.password.clone();
            if let Some(h) = s.hold_time {
                p.hold_time = h;
            }
            if let Some(k) = s.keepalive_time {
                p.keepalive_time = Some(k);
            }
            p.ttl_security = s.ttl_security;
            p.ebgp_multihop = s.ebgp_multihop;
            if let Some(g) = s.graceful_restart {
                p.graceful_restart = g;
            }
            p.spec = Some(s.clone());
            p.bfd = s.bfd.clone().filter(|b| b.enabled);
        };
        if let Some(ip) = &s.peer_ip {
            if !applies_to(me, &my_labels) {
                continue;
            }
            let Some((addr, port)) = parse_peer_ip(ip) else {
                problems.push(format!(
                    "BGPPeer {pname}: peerIP {ip:?} is not an address; skipped"
                ));
                continue;
            };
            let Some(asn) = s.as_number else {
                problems.push(format!("BGPPeer {pname}: peerIP without asNumber; skipped"));
                continue;
            };
            let source = if s.node.is_some() || node_sel.is_some() {
                Source::Node
            } else {
                Source::Global
            };
            let mut p = base(addr, asn, source);
            p.port = port.unwrap_or(179);
            p.rr_client = s.route_reflector_client;
            apply(&mut p);
            out.insert(addr, p);
        } else if let Some(psel) = &peer_sel {
            for other in nodes {
                if name(other) == me {
                    continue;
                }
                let ol = labels(other);
                // Forward: I am selected by node(Selector), the other by peerSelector.
                let forward = applies_to(me, &my_labels) && psel.matches(&ol);
                // Reverse: the other opens a session to me; I answer it.
                let reverse = applies_to(name(other), &ol) && psel.matches(&my_labels);
                if !(forward || reverse) {
                    continue;
                }
                let Some(addr) = annotated_address(other) else {
                    continue;
                };
                let mut p = base(
                    addr,
                    s.as_number.unwrap_or_else(|| node_as(other)),
                    Source::Selector,
                );
                p.port = node_port(other);
                p.is_node = true;
                apply(&mut p);
                p.rr_client =
                    s.route_reflector_client || (i_reflect && !is_reflector(name(other), configs));
                out.insert(addr, p);
            }
        } else {
            problems.push(format!(
                "BGPPeer {pname}: neither peerIP nor peerSelector; skipped"
            ));
        }
    }
    (out.into_values().collect(), problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use twill_api::resources::BGPConfigurationSpec;

    fn node(name: &str, addr: Option<&str>, labels: &[(&str, &str)]) -> Node {
        let mut ann = BTreeMap::new();
        if let Some(a) = addr {
            ann.insert(ANN_ADDRESS.to_string(), a.to_string());
        }
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some(ann),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn config(name: &str, spec: BGPConfigurationSpec) -> BGPConfiguration {
        BGPConfiguration::new(name, spec)
    }

    fn peer(name: &str, spec: BGPPeerSpec) -> BGPPeer {
        BGPPeer::new(name, spec)
    }

    fn nodes3() -> Vec<Node> {
        vec![
            node("n1", Some("172.30.0.11/24"), &[("rack", "a")]),
            node("n2", Some("172.30.0.12/24"), &[("rack", "a")]),
            node("n3", Some("172.30.0.13/24"), &[("rack", "b")]),
        ]
    }

    #[test]
    fn the_mesh_peers_with_every_other_node_with_an_address() {
        let mut nodes = nodes3();
        nodes.push(node("n4", None, &[]));
        let (p, problems) = desired_peers("n1", &nodes, &[], &[]);
        assert!(problems.is_empty());
        let addrs: Vec<String> = p.iter().map(|p| p.address.to_string()).collect();
        assert_eq!(addrs, ["172.30.0.12", "172.30.0.13"]);
        assert!(
            p.iter()
                .all(|p| p.source == Source::Mesh && p.asn == DEFAULT_AS && p.is_node)
        );
    }

    #[test]
    fn mesh_off_and_a_tor_per_rack_by_node_selector() {
        let cfg = config(
            "default",
            BGPConfigurationSpec {
                as_number: Some(64600),
                node_to_node_mesh_enabled: Some(false),
                ..Default::default()
            },
        );
        let tor_a = peer(
            "tor-a",
            BGPPeerSpec {
                peer_ip: Some("172.30.0.1".into()),
                as_number: Some(65000),
                node_selector: Some("rack == 'a'".into()),
                hold_time: Some(9),
                ..Default::default()
            },
        );
        let (p, _) = desired_peers(
            "n1",
            &nodes3(),
            std::slice::from_ref(&cfg),
            std::slice::from_ref(&tor_a),
        );
        assert_eq!(p.len(), 1);
        assert_eq!(
            (
                p[0].address.to_string(),
                p[0].asn,
                p[0].source,
                p[0].hold_time
            ),
            ("172.30.0.1".into(), 65000, Source::Node, 9)
        );
        assert!(!p[0].is_node);
        let (p, _) = desired_peers("n3", &nodes3(), &[cfg], &[tor_a]);
        assert!(p.is_empty(), "rack b does not peer with rack a's ToR");
    }

    #[test]
    fn route_reflectors_by_peer_selector_are_symmetric_and_have_clients() {
        let mut nodes = nodes3();
        nodes[2] = node("rr", Some("172.30.0.13/24"), &[("route-reflector", "true")]);
        let configs = vec![
            config(
                "default",
                BGPConfigurationSpec {
                    node_to_node_mesh_enabled: Some(false),
                    ..Default::default()
                },
            ),
            config(
                "node.rr",
                BGPConfigurationSpec {
                    route_reflector_cluster_id: Some("1.1.1.1".into()),
                    ..Default::default()
                },
            ),
        ];
        let rr = peer(
            "to-rr",
            BGPPeerSpec {
                node_selector: Some("!has(route-reflector)".into()),
                peer_selector: Some("has(route-reflector)".into()),
                ..Default::default()
            },
        );
        let (client, _) = desired_peers("n1", &nodes, &configs, std::slice::from_ref(&rr));
        assert_eq!(client.len(), 1);
        assert_eq!(client[0].address.to_string(), "172.30.0.13");
        assert!(!client[0].rr_client);
        let (reflector, _) = desired_peers("rr", &nodes, &configs, &[rr]);
        let addrs: Vec<String> = reflector.iter().map(|p| p.address.to_string()).collect();
        assert_eq!(addrs, ["172.30.0.11", "172.30.0.12"]);
        assert!(
            reflector
                .iter()
                .all(|p| p.rr_client && p.is_node && p.source == Source::Selector)
        );
    }

    #[test]
    fn explicit_peer_wins_over_the_mesh_and_bad_peers_are_reported() {
        let explicit = peer(
            "n2-special",
            BGPPeerSpec {
                peer_ip: Some("172.30.0.12:1179".into()),
                as_number: Some(64512),
                node: Some("n1".into()),
                ..Default::default()
            },
        );
        let broken = peer(
            "broken",
            BGPPeerSpec {
                peer_ip: Some("10.0.0.1".into()),
                ..Default::default()
            },
        );
        let badsel = peer(
            "badsel",
            BGPPeerSpec {
                peer_selector: Some("has(".into()),
                ..Default::default()
            },
        );
        let (p, problems) = desired_peers("n1", &nodes3(), &[], &[explicit, broken, badsel]);
        let n2 = p
            .iter()
            .find(|p| p.address.to_string() == "172.30.0.12")
            .unwrap();
        assert_eq!((n2.source, n2.port), (Source::Node, 1179));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|m| m.contains("broken") && m.contains("asNumber"))
        );
        assert!(problems.iter().any(|m| m.contains("badsel")));
    }

    #[test]
    fn bfd_enabled_on_a_bgppeer_is_carried_to_its_session_and_not_to_the_mesh() {
        let bfd = Bfd {
            enabled: true,
            min_tx_ms: Some(100),
            multiplier: Some(5),
            ..Default::default()
        };
        let tor = peer(
            "tor",
            BGPPeerSpec {
                peer_ip: Some("10.96.1.1".into()),
                as_number: Some(65001),
                bfd: Some(bfd.clone()),
                ..Default::default()
            },
        );
        let off = peer(
            "off",
            BGPPeerSpec {
                peer_ip: Some("10.96.2.1".into()),
                as_number: Some(65001),
                bfd: Some(Bfd {
                    enabled: false,
                    ..bfd.clone()
                }),
                ..Default::default()
            },
        );
        let (p, problems) = desired_peers("n1", &nodes3(), &[], &[tor, off]);
        assert!(problems.is_empty(), "{problems:?}");
        let find = |a: &str| p.iter().find(|p| p.address.to_string() == a).unwrap();
        assert_eq!(find("10.96.1.1").bfd, Some(bfd));
        assert_eq!(find("10.96.2.1").bfd, None, "enabled: false is no BFD");
        assert!(
            p.iter()
                .filter(|p| p.source == Source::Mesh)
                .all(|p| p.bfd.is_none())
        );
    }

    #[test]
    fn listen_port_is_where_other_nodes_connect_and_timers_default_as_documented() {
        let configs = vec![
            config(
                "default",
                BGPConfigurationSpec {
                    listen_port: Some(1179),
                    hold_time: Some(240),
                    graceful_restart: Some(twill_api::resources::bgpconfig::GracefulRestart {
                        enabled: true,
                        restart_time: Some(30),
                        stale_time: Some(45),
                    }),
                    ..Default::default()
                },
            ),
            config(
                "node.n3",
                BGPConfigurationSpec {
                    listen_port: Some(2179),
                    ..Default::default()
                },
            ),
        ];
        let l = local_bgp("n1", None, &configs);
        assert_eq!((l.listen_port, l.hold_time), (1179, 240));
        assert_eq!(l.keepalive_time, None, "default: a third of the hold time");
        assert_eq!((l.restart_time, l.stale_time), (30, 45));
        assert_eq!(local_bgp("n1", None, &[]).stale_time, 360);
        let (p, _) = desired_peers("n1", &nodes3(), &configs, &[]);
        let ports: Vec<(String, u16)> = p.iter().map(|p| (p.address.to_string(), p.port)).collect();
        assert_eq!(
            ports,
            [
                ("172.30.0.12".to_string(), 1179),
                ("172.30.0.13".to_string(), 2179)
            ]
        );
        assert!(
            p.iter()
                .all(|p| p.keepalive_time.is_none() && p.hold_time == 240)
        );
    }

    #[test]
    fn per_node_configuration_and_annotation_set_the_as() {
        let mut nodes = nodes3();
        nodes[1]
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(ANN_AS.into(), "65010".into());
        let configs = vec![config(
            "node.n1",
            BGPConfigurationSpec {
                as_number: Some(65001),
                ..Default::default()
            },
        )];
        assert_eq!(local_bgp("n1", Some(&nodes[0]), &configs).asn, 65001);
        let (p, _) = desired_peers("n1", &nodes, &configs, &[]);
        assert_eq!(p[0].asn, 65010, "n2's annotation");
        assert_eq!(p[1].asn, DEFAULT_AS);
    }

    #[test]
    fn an_as_annotation_that_is_no_as_number_is_reported_not_silently_dropped() {
        for bad in ["sixty-five", "0", "23456", "4294967295", "-1"] {
            let mut nodes = nodes3();
            nodes[1]
                .metadata
                .annotations
                .get_or_insert_default()
                .insert(ANN_AS.into(), bad.into());
            let (p, problems) = desired_peers("n1", &nodes, &[], &[]);
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
            assert!(
                problems[0].contains("Node \"n2\"") && problems[0].contains(ANN_AS),
                "{problems:?}"
            );
            assert_eq!(p[0].asn, DEFAULT_AS, "{bad} is not used");
        }
        let mut nodes = nodes3();
        nodes[1]
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(ANN_AS.into(), " 65010".into());
        let (p, problems) = desired_peers("n1", &nodes, &[], &[]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(p[0].asn, 65010);
    }
}
