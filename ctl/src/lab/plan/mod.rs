//! The lab's plan, pure: from a topology (node count or file, ToR kind) to
//! every name, address and configuration file the lab will create. The I/O
//! in `lab up` only carries it out, so the plan is unit-tested here; the
//! resources and ToR configurations it writes are made in `config`.
//!
//! Shape: one rack. The ToR namespace holds a bridge (`rack`, 172.30.0.1/24)
//! that every node's `eth0` plugs into, like a rack's L2 segment; nodes peer
//! iBGP with each other (the mesh, direct next hops on the segment) and eBGP
//! with the ToR, which learns every block but sends nothing back (a ToR gives
//! nodes a default route, not each other's blocks).
//!
//! With `torReflector: true` the rack is one AS instead ("AS per rack"): the
//! mesh is off, every node peers iBGP with the ToR only, and the ToR is a
//! route reflector whose clients are the nodes (dynamic neighbors over the
//! rack subnet), so each node learns the others' blocks from the ToR with the
//! originating node as next hop. The ToR configs then have the shape
//! deploy/README.md documents for real ToRs.
//!
//! With `dualStack: true` (`lab up --dual-stack`) there is an IPv6 pool
//! beside the IPv4 one, every node and the ToR also have an IPv6 address on
//! the rack (fd00:172:30::/64), the mesh carries IPv6 blocks over its IPv4
//! sessions (next hop: the node's IPv6 address) and the ToR has a second,
//! IPv6 session per node (see DESIGN.md, "Dual stack").

mod config;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// Default prefix of every namespace the lab makes (so they are easy to spot).
pub const DEFAULT_PREFIX: &str = "twl";

/// The router daemon in the ToR namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Tor {
    Bird,
    Frr,
    Gobgp,
    /// The ToR namespace only forwards (the bridge and a gateway address); no BGP.
    None,
}

/// A topology file (`--topology FILE`, YAML). Every field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TopologyFile {
    /// Node names and labels; default n1..nN.
    pub nodes: Option<Vec<NodeSpec>>,
    pub tor: Option<Tor>,
    pub pods_per_node: Option<usize>,
    /// The IPv4 pod pool (default 10.244.0.0/16).
    pub pool: Option<String>,
    pub block_size: Option<u8>,
    pub node_as: Option<u32>,
    pub tor_as: Option<u32>,
    /// Nodes that become route reflectors (cluster ID 1.1.1.1, label
    /// `route-reflector`); with any, the node-to-node mesh is off and every
    /// other node peers with the reflectors only.
    pub route_reflectors: Option<Vec<String>>,
    /// The ToR is the rack's route reflector: one AS for the nodes and the
    /// ToR (iBGP), the mesh off, the nodes the ToR's RR clients.
    pub tor_reflector: Option<bool>,
    /// IPv6 beside IPv4: a second pool, IPv6 rack addresses, IPv6 sessions
    /// to the ToR.
    pub dual_stack: Option<bool>,
    /// The IPv6 pod pool when dual-stack (default fd00:10:244::/56).
    pub pool6: Option<String>,
    /// The IPv6 block size (default 122).
    pub block_size6: Option<u8>,
}

/// The IPv6 pod pool of a dual-stack lab unless the topology says.
pub const DEFAULT_POOL6: &str = "fd00:10:244::/56";
/// The rack's IPv6 subnet (the ToR is ::1, node i is ::(11+i) in hex digits
/// as written, e.g. fd00:172:30::11).
const RACK6: &str = "fd00:172:30::/64";

/// The IPv6 side of a dual-stack lab.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct V6Plan {
    pub pool: String,
    pub block_size: u8,
    pub tor_addr: Ipv6Addr,
    pub prefix_len: u8,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Everything the lab builds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    /// Namespace name prefix: `PREFIX-tor`, `PREFIX-n1`, `PREFIX-n1-p1`.
    pub prefix: String,
    pub tor: Tor,
    pub tor_ns: String,
    pub tor_addr: Ipv4Addr,
    pub prefix_len: u8,
    pub tor_as: u32,
    pub node_as: u32,
    pub pool: String,
    pub block_size: u8,
    pub nodes: Vec<NodePlan>,
    pub pods: Vec<PodPlan>,
    /// Route reflector node names (empty: full mesh).
    #[serde(default)]
    pub route_reflectors: Vec<String>,
    /// The ToR reflects the nodes' routes to each other (`tor_as == node_as`,
    /// no mesh).
    #[serde(default)]
    pub tor_reflector: bool,
    /// IPv6 pool and rack addresses, when the lab is dual-stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<V6Plan>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodePlan {
    pub name: String,
    pub ns: String,
    pub addr: Ipv4Addr,
    /// The node's IPv6 address on the rack (dual-stack labs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr6: Option<Ipv6Addr>,
    /// The ToR side of the node's link (the node side is `eth0`).
    pub tor_port: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PodPlan {
    pub name: String,
    pub node: String,
    /// The pod's network namespace.
    pub ns: String,
    pub container_id: String,
    /// The pod's Kubernetes namespace (its Pod object's).
    #[serde(default = "default_pod_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Ports the pod serves (a responder in its namespace answers on them).
    #[serde(default)]
    pub ports: Vec<PortSpec>,
}

/// The Kubernetes namespace of the pods `lab up` creates.
pub const LAB_NAMESPACE: &str = "lab";

fn default_pod_namespace() -> String {
    LAB_NAMESPACE.to_string()
}

/// A port a lab pod serves: `[NAME=]PORT[/TCP|/UDP]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    /// `TCP` or `UDP`.
    pub protocol: String,
}

impl std::fmt::Display for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(n) = &self.name {
            write!(f, "{n}=")?;
        }
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error("a lab needs 1 to 200 nodes, not {0}")]
    NodeCount(usize),
    #[error(
        "node name {0:?}: use 1-10 lowercase letters, digits or '-' (it becomes part of interface names)"
    )]
    NodeName(String),
    #[error("node {0:?} is listed twice")]
    Duplicate(String),
    #[error("pool {0:?}: {1}")]
    Pool(String, String),
    #[error("pods per node: 0 to 50, not {0}")]
    Pods(usize),
    #[error("lab name {0:?}: use 1-12 lowercase letters or digits")]
    Prefix(String),
    #[error("route reflector {0:?} is not a node of the lab")]
    Reflector(String),
    #[error("torReflector: {0}")]
    TorReflector(String),
    #[error("dualStack: {0}")]
    DualStack(String),
}

/// Builds the plan from `--nodes`, `--tor` and an optional topology file
/// (whose fields win over the flags' defaults when present).
pub fn plan(
    prefix: &str,
    nodes: usize,
    tor: Tor,
    pods_per_node: usize,
    file: Option<TopologyFile>,
) -> Result<Plan, PlanError> {
    if prefix.is_empty()
        || prefix.len() > 12
        || !prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return Err(PlanError::Prefix(prefix.to_string()));
    }
    let file = file.unwrap_or_default();
    let specs = match file.nodes {
        Some(n) => n,
        None => {
            if nodes == 0 || nodes > 200 {
                return Err(PlanError::NodeCount(nodes));
            }
            (1..=nodes)
                .map(|i| NodeSpec {
                    name: format!("n{i}"),
                    labels: BTreeMap::new(),
                })
                .collect()
        }
    };
    if specs.is_empty() || specs.len() > 200 {
        return Err(PlanError::NodeCount(specs.len()));
    }
    let pods_per_node = file.pods_per_node.unwrap_or(pods_per_node);
    if pods_per_node > 50 {
        return Err(PlanError::Pods(pods_per_node));
    }
    let pool = file.pool.unwrap_or_else(|| "10.244.0.0/16".into());
    let net: ipnetwork::Ipv4Network = pool
        .parse()
        .map_err(|e| PlanError::Pool(pool.clone(), format!("{e}")))?;
    if net.ip() != net.network() {
        return Err(PlanError::Pool(pool.clone(), "host bits are set".into()));
    }
    let rack: ipnetwork::Ipv4Network = "172.30.0.0/24"
        .parse()
        .map_err(|e| PlanError::Pool("172.30.0.0/24".into(), format!("{e}")))?;
    if net.overlaps(rack) {
        return Err(PlanError::Pool(
            pool.clone(),
            "overlaps the lab's rack segment 172.30.0.0/24".into(),
        ));
    }
    let reflectors = file.route_reflectors.unwrap_or_default();
    if let Some(r) = reflectors
        .iter()
        .find(|r| !specs.iter().any(|s| &s.name == *r))
    {
        return Err(PlanError::Reflector(r.clone()));
    }
    let tor = file.tor.unwrap_or(tor);
    let tor_reflector = file.tor_reflector.unwrap_or(false);
    let (node_as, tor_as) = if tor_reflector {
        if tor == Tor::None {
            return Err(PlanError::TorReflector(
                "the ToR runs no BGP (tor: none); choose bird, frr or gobgp".into(),
            ));
        }
        if !reflectors.is_empty() {
            return Err(PlanError::TorReflector(
                "the ToR is the reflector, so routeReflectors (node reflectors) cannot be set too"
                    .into(),
            ));
        }
        // One AS for the rack: iBGP between the nodes and the ToR.
        match (file.node_as, file.tor_as) {
            (Some(n), Some(t)) if n != t => {
                return Err(PlanError::TorReflector(format!(
                    "the nodes and the ToR share one AS (iBGP), but nodeAs is {n} and torAs is {t}; set one of them or both the same"
                )));
            }
            (Some(a), _) | (None, Some(a)) => (a, a),
            (None, None) => (DEFAULT_NODE_AS, DEFAULT_NODE_AS),
        }
    } else {
        (
            file.node_as.unwrap_or(DEFAULT_NODE_AS),
            file.tor_as.unwrap_or(DEFAULT_TOR_AS),
        )
    };
    let v6 = if file.dual_stack.unwrap_or(false) {
        if tor_reflector && tor != Tor::Bird {
            return Err(PlanError::DualStack(
                "a dual-stack ToR reflector is BIRD only for now (--tor bird); FRR and GoBGP reflect IPv4 only".into(),
            ));
        }
        let pool6 = file.pool6.unwrap_or_else(|| DEFAULT_POOL6.into());
        let net6: ipnetwork::Ipv6Network = pool6
            .parse()
            .map_err(|e| PlanError::Pool(pool6.clone(), format!("{e}")))?;
        if net6.ip() != net6.network() {
            return Err(PlanError::Pool(pool6.clone(), "host bits are set".into()));
        }
        let rack6: ipnetwork::Ipv6Network = RACK6
            .parse()
            .map_err(|e| PlanError::Pool(RACK6.into(), format!("{e}")))?;
        if net6.overlaps(rack6) {
            return Err(PlanError::Pool(
                pool6.clone(),
                format!("overlaps the lab's rack segment {RACK6}"),
            ));
        }
        let bs6 = file.block_size6.unwrap_or(122);
        if bs6 < net6.prefix() || bs6 > 128 {
            return Err(PlanError::Pool(
                pool6.clone(),
                format!(
                    "blockSize6 {bs6} must be between the pool's length {} and 128",
                    net6.prefix()
                ),
            ));
        }
        Some(V6Plan {
            pool: pool6,
            block_size: bs6,
            tor_addr: rack6.network() | Ipv6Addr::from(1u128),
            prefix_len: rack6.prefix(),
        })
    } else {
        None
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut out_nodes = Vec::new();
    let mut pods = Vec::new();
    for (i, mut s) in specs.into_iter().enumerate() {
        if reflectors.contains(&s.name) {
            s.labels
                .insert(REFLECTOR_LABEL.to_string(), "true".to_string());
        }
        let ok = !s.name.is_empty()
            && s.name.len() <= 10
            && s.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.name.starts_with('-');
        if !ok {
            return Err(PlanError::NodeName(s.name));
        }
        if !seen.insert(s.name.clone()) {
            return Err(PlanError::Duplicate(s.name));
        }
        // 172.30.0.11 upwards; 200 nodes fit below .255.
        let addr = Ipv4Addr::new(172, 30, 0, 11 + i as u8);
        for p in 1..=pods_per_node {
            let name = format!("{}-p{p}", s.name);
            pods.push(PodPlan {
                ns: format!("{prefix}-{name}"),
                container_id: format!("lab-{name}"),
                node: s.name.clone(),
                namespace: LAB_NAMESPACE.to_string(),
                labels: BTreeMap::from([
                    ("app".to_string(), "lab".to_string()),
                    ("pod".to_string(), name.clone()),
                ]),
                ports: vec![PortSpec {
                    name: Some("http".into()),
                    port: 80,
                    protocol: "TCP".into(),
                }],
                name,
            });
        }
        // fd00:172:30::11 upwards, the same digits as the IPv4 address
        // (read as hex) so that a node's two addresses are easy to pair.
        let addr6 = v6.as_ref().map(|v| node_addr6(v.tor_addr, 11 + i as u16));
        out_nodes.push(NodePlan {
            ns: format!("{prefix}-{}", s.name),
            tor_port: format!("tp-{}", s.name),
            addr,
            addr6,
            name: s.name,
            labels: s.labels,
        });
    }
    Ok(Plan {
        prefix: prefix.to_string(),
        tor,
        tor_ns: format!("{prefix}-tor"),
        tor_addr: Ipv4Addr::new(172, 30, 0, 1),
        prefix_len: 24,
        tor_as,
        node_as,
        pool,
        block_size: file.block_size.unwrap_or(26),
        nodes: out_nodes,
        pods,
        route_reflectors: reflectors,
        tor_reflector,
        v6,
    })
}

/// The rack IPv6 address whose last group reads like `n` in decimal
/// (11 → fd00:172:30::11).
fn node_addr6(tor: Ipv6Addr, n: u16) -> Ipv6Addr {
    let digits = format!("{n}");
    let group = u16::from_str_radix(&digits, 16).unwrap_or(n);
    let mut seg = tor.segments();
    seg[7] = group;
    Ipv6Addr::from(seg)
}

/// The nodes' AS unless the topology says (Twill's default asNumber).
const DEFAULT_NODE_AS: u32 = 64512;
/// The ToR's AS in the default (eBGP) lab.
const DEFAULT_TOR_AS: u32 = 65000;

/// The label the lab puts on route reflector nodes (BGPPeers select by it).
pub const REFLECTOR_LABEL: &str = "route-reflector";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_nodes_get_names_addresses_and_pods() {
        let p = plan("twl", 3, Tor::Bird, 2, None).unwrap();
        assert_eq!(p.nodes.len(), 3);
        assert_eq!(p.nodes[0].ns, "twl-n1");
        assert_eq!(p.nodes[2].addr, Ipv4Addr::new(172, 30, 0, 13));
        assert_eq!(p.nodes[1].tor_port, "tp-n2");
        assert_eq!(p.pods.len(), 6);
        assert_eq!(p.pods[3].ns, "twl-n2-p2");
        assert_eq!(p.pods[3].node, "n2");
    }

    #[test]
    fn bad_topologies_say_what_is_wrong() {
        assert_eq!(
            plan("A-b", 1, Tor::Bird, 1, None),
            Err(PlanError::Prefix("A-b".into()))
        );
        assert_eq!(
            plan("twl", 0, Tor::Bird, 1, None),
            Err(PlanError::NodeCount(0))
        );
        let f = TopologyFile {
            nodes: Some(vec![NodeSpec {
                name: "A_B".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(
            plan("twl", 1, Tor::Bird, 1, Some(f)),
            Err(PlanError::NodeName("A_B".into()))
        );
        let f = TopologyFile {
            nodes: Some(vec![
                NodeSpec {
                    name: "a".into(),
                    ..Default::default()
                },
                NodeSpec {
                    name: "a".into(),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        assert_eq!(
            plan("twl", 1, Tor::Bird, 1, Some(f)),
            Err(PlanError::Duplicate("a".into()))
        );
        let f = TopologyFile {
            pool: Some("172.30.0.0/16".into()),
            ..Default::default()
        };
        assert!(matches!(
            plan("twl", 1, Tor::Bird, 1, Some(f)),
            Err(PlanError::Pool(..))
        ));
    }

    #[test]
    fn route_reflectors_turn_the_mesh_off_and_get_peers() {
        let f: TopologyFile = serde_saphyr::from_str("routeReflectors: [n1, n2]\n").unwrap();
        let p = plan("twl", 4, Tor::Bird, 0, Some(f)).unwrap();
        assert_eq!(p.route_reflectors, vec!["n1", "n2"]);
        assert_eq!(
            p.nodes[0].labels.get(REFLECTOR_LABEL).map(String::as_str),
            Some("true")
        );
        assert!(p.nodes[2].labels.is_empty());
        let r = p.resources();
        assert!(r.contains("nodeToNodeMeshEnabled: false"));
        assert!(r.contains("name: node.n1\nspec:\n  routeReflectorClusterId: 1.1.1.1"));
        assert!(r.contains("name: node.n2\n"));
        assert!(r.contains("nodeSelector: \"!has(route-reflector)\""));
        assert!(r.contains("name: rr-mesh"));
        // Every document parses as YAML.
        for doc in r.split("---\n") {
            let _: serde_json::Value = serde_saphyr::from_str(doc).unwrap();
        }
        let mesh = plan("twl", 4, Tor::Bird, 0, None).unwrap();
        assert!(mesh.resources().contains("nodeToNodeMeshEnabled: true"));
        assert!(!mesh.resources().contains("rr-clients"));
        let f: TopologyFile = serde_saphyr::from_str("routeReflectors: [zz]\n").unwrap();
        assert_eq!(
            plan("twl", 2, Tor::Bird, 0, Some(f)),
            Err(PlanError::Reflector("zz".into()))
        );
    }

    #[test]
    fn a_topology_file_parses() {
        let f: TopologyFile = serde_saphyr::from_str(
            "nodes:\n  - name: rr1\n    labels: {route-reflector: \"true\"}\n  - name: w1\ntor: frr\npodsPerNode: 1\n",
        )
        .unwrap();
        let p = plan("twl", 9, Tor::Bird, 3, Some(f)).unwrap();
        assert_eq!(p.tor, Tor::Frr);
        assert_eq!(p.nodes.len(), 2);
        assert_eq!(p.pods.len(), 2);
        assert_eq!(
            p.nodes[0].labels.get("route-reflector").map(String::as_str),
            Some("true")
        );
    }

    #[test]
    fn a_tor_reflector_makes_the_rack_one_as_without_the_mesh() {
        let f: TopologyFile = serde_saphyr::from_str("torReflector: true\n").unwrap();
        let p = plan("twl", 3, Tor::Bird, 0, Some(f)).unwrap();
        assert!(p.tor_reflector);
        assert_eq!((p.node_as, p.tor_as), (64512, 64512));
        let r = p.resources();
        assert!(r.contains("asNumber: 64512\n  nodeToNodeMeshEnabled: false"));
        assert!(r.contains("peerIP: 172.30.0.1\n  asNumber: 64512\n  nodeSelector: all()"));
        assert!(!r.contains("rr-clients"));
        for doc in r.split("---\n") {
            let _: serde_json::Value = serde_saphyr::from_str(doc).unwrap();
        }
        // One AS given is the rack's AS; two that differ are refused.
        let f: TopologyFile = serde_saphyr::from_str("torReflector: true\ntorAs: 65001\n").unwrap();
        let p = plan("twl", 2, Tor::Frr, 0, Some(f)).unwrap();
        assert_eq!((p.node_as, p.tor_as), (65001, 65001));
        let f: TopologyFile =
            serde_saphyr::from_str("torReflector: true\nnodeAs: 65001\ntorAs: 65002\n").unwrap();
        let e = plan("twl", 2, Tor::Bird, 0, Some(f)).unwrap_err();
        assert!(matches!(e, PlanError::TorReflector(_)));
        assert!(
            e.to_string().contains("nodeAs is 65001 and torAs is 65002"),
            "{e}"
        );
        let f: TopologyFile = serde_saphyr::from_str("torReflector: true\n").unwrap();
        assert!(matches!(
            plan("twl", 2, Tor::None, 0, Some(f)),
            Err(PlanError::TorReflector(_))
        ));
        let f: TopologyFile =
            serde_saphyr::from_str("torReflector: true\nrouteReflectors: [n1]\n").unwrap();
        assert!(matches!(
            plan("twl", 2, Tor::Bird, 0, Some(f)),
            Err(PlanError::TorReflector(_))
        ));
        // The default lab is unchanged: eBGP to the ToR, mesh on.
        let d = plan("twl", 2, Tor::Bird, 0, None).unwrap();
        assert!(!d.tor_reflector);
        assert_eq!((d.node_as, d.tor_as), (64512, 65000));
        assert!(d.bird_conf().contains("export none"));
    }

    #[test]
    fn bad_dual_stack_topologies_say_what_is_wrong() {
        for (yaml, want) in [
            ("dualStack: true\npool6: fd00:172:30::/48\n", "overlaps"),
            ("dualStack: true\npool6: fd00:1::1/64\n", "host bits"),
            (
                "dualStack: true\npool6: fd00:1::/64\nblockSize6: 60\n",
                "blockSize6",
            ),
        ] {
            let f: TopologyFile = serde_saphyr::from_str(yaml).unwrap();
            let e = plan("twl", 2, Tor::Bird, 0, Some(f)).unwrap_err();
            assert!(e.to_string().contains(want), "{yaml}: {e}");
        }
        for (tor, yaml, want) in [
            (
                Tor::Frr,
                "dualStack: true\ntorReflector: true\n",
                "BIRD only",
            ),
            (
                Tor::Gobgp,
                "dualStack: true\ntorReflector: true\n",
                "BIRD only",
            ),
        ] {
            let f: TopologyFile = serde_saphyr::from_str(yaml).unwrap();
            let e = plan("twl", 2, tor, 0, Some(f)).unwrap_err();
            assert!(e.to_string().contains(want), "{yaml}: {e}");
        }
    }
}
