//! The lab's plan, pure: from a topology (node count or file, ToR kind) to
//! every name, address and configuration file the lab will create. The I/O
//! in `lab::run` only carries it out, so the plan is unit-tested here.
//!
//! Shape: one rack. The ToR namespace holds a bridge (`rack`, 172.30.0.1/24)
//! that every node's `eth0` plugs into, like a rack's L2 segment; nodes peer
//! iBGP with each other (the mesh, direct next hops on the segment) and eBGP
//! with the ToR, which learns every block but sends nothing back (a ToR gives
//! nodes a default route, not each other's blocks).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

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
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodePlan {
    pub name: String,
    pub ns: String,
    pub addr: Ipv4Addr,
    /// The ToR side of the node's link (the node side is `eth0`).
    pub tor_port: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PodPlan {
    pub name: String,
    pub node: String,
    pub ns: String,
    pub container_id: String,
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
                name,
            });
        }
        out_nodes.push(NodePlan {
            ns: format!("{prefix}-{}", s.name),
            tor_port: format!("tp-{}", s.name),
            addr,
            name: s.name,
            labels: s.labels,
        });
    }
    Ok(Plan {
        prefix: prefix.to_string(),
        tor: file.tor.unwrap_or(tor),
        tor_ns: format!("{prefix}-tor"),
        tor_addr: Ipv4Addr::new(172, 30, 0, 1),
        prefix_len: 24,
        tor_as: file.tor_as.unwrap_or(65000),
        node_as: file.node_as.unwrap_or(64512),
        pool,
        block_size: file.block_size.unwrap_or(26),
        nodes: out_nodes,
        pods,
        route_reflectors: reflectors,
    })
}

/// The label the lab puts on route reflector nodes (BGPPeers select by it).
pub const REFLECTOR_LABEL: &str = "route-reflector";

impl Plan {
    /// The Twill resources the lab applies to its store.
    pub fn resources(&self) -> String {
        let mut docs = vec![format!(
            "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: lab-ipv4\nspec:\n  cidr: {}\n  blockSize: {}\n  natOutgoing: true\n  nodeSelector: all()\n",
            self.pool, self.block_size
        )];
        docs.push(format!(
            "apiVersion: twill.dev/v1\nkind: BGPConfiguration\nmetadata:\n  name: default\nspec:\n  asNumber: {}\n  nodeToNodeMeshEnabled: {}\n  holdTime: 9\n  keepaliveTime: 3\n  gracefulRestart:\n    enabled: true\n    restartTime: 20\n",
            self.node_as,
            self.route_reflectors.is_empty()
        ));
        // Reflectors: a cluster ID each, clients peer with every reflector
        // and the reflectors with each other (sessions are symmetric).
        for r in &self.route_reflectors {
            docs.push(format!(
                "apiVersion: twill.dev/v1\nkind: BGPConfiguration\nmetadata:\n  name: node.{r}\nspec:\n  routeReflectorClusterId: 1.1.1.1\n"
            ));
        }
        if !self.route_reflectors.is_empty() {
            docs.push(format!(
                "apiVersion: twill.dev/v1\nkind: BGPPeer\nmetadata:\n  name: rr-clients\nspec:\n  nodeSelector: \"!has({REFLECTOR_LABEL})\"\n  peerSelector: has({REFLECTOR_LABEL})\n"
            ));
            docs.push(format!(
                "apiVersion: twill.dev/v1\nkind: BGPPeer\nmetadata:\n  name: rr-mesh\nspec:\n  nodeSelector: has({REFLECTOR_LABEL})\n  peerSelector: has({REFLECTOR_LABEL})\n"
            ));
        }
        if self.tor != Tor::None {
            docs.push(format!(
                "apiVersion: twill.dev/v1\nkind: BGPPeer\nmetadata:\n  name: rack-tor\nspec:\n  peerIP: {}\n  asNumber: {}\n  nodeSelector: all()\n",
                self.tor_addr, self.tor_as
            ));
        }
        docs.join("---\n")
    }

    /// BIRD 2 configuration for the ToR: learn every node's routes into the
    /// kernel, send nothing back.
    pub fn bird_conf(&self) -> String {
        let mut s = format!(
            "router id {tor};\nprotocol device {{}}\nprotocol direct {{ ipv4; interface \"rack\"; }}\nprotocol kernel {{ ipv4 {{ export where source = RTS_BGP; }}; merge paths on; }}\n\
             template bgp node {{\n  local {tor} as {tas};\n  hold time 9;\n  graceful restart on;\n  ipv4 {{ import all; export none; }};\n}}\n",
            tor = self.tor_addr,
            tas = self.tor_as
        );
        for n in &self.nodes {
            s += &format!(
                "protocol bgp {} from node {{ neighbor {} as {}; }}\n",
                n.name.replace('-', "_"),
                n.addr,
                self.node_as
            );
        }
        s
    }

    /// FRR bgpd configuration for the ToR (with zebra for kernel routes).
    pub fn frr_conf(&self) -> String {
        let mut s = format!(
            "hostname lab-tor\nrouter bgp {}\n bgp router-id {}\n no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n",
            self.tor_as, self.tor_addr
        );
        for n in &self.nodes {
            s += &format!(
                " neighbor {} remote-as {}\n neighbor {} timers 3 9\n",
                n.addr, self.node_as, n.addr
            );
        }
        s += " address-family ipv4 unicast\n";
        for n in &self.nodes {
            s += &format!(
                "  neighbor {} activate\n  neighbor {} route-map LAB-NONE out\n",
                n.addr, n.addr
            );
        }
        s += " exit-address-family\nroute-map LAB-NONE deny 10\n";
        s
    }

    /// GoBGP configuration for the ToR (TOML). GoBGP has no kernel FIB of
    /// its own here, so this ToR learns routes but does not forward to pods.
    pub fn gobgp_toml(&self) -> String {
        let mut s = format!(
            "[global.config]\n  as = {}\n  router-id = \"{}\"\n  local-address-list = [\"{}\"]\n",
            self.tor_as, self.tor_addr, self.tor_addr
        );
        for n in &self.nodes {
            s += &format!(
                "\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{}\"\n    peer-as = {}\n  [neighbors.timers.config]\n    hold-time = 9\n    keepalive-interval = 3\n  [neighbors.apply-policy.config]\n    default-export-policy = \"reject-route\"\n",
                n.addr, self.node_as
            );
        }
        s
    }
}

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
    fn tor_configs_name_every_node() {
        let p = plan("twl", 2, Tor::Bird, 0, None).unwrap();
        let b = p.bird_conf();
        assert!(b.contains("neighbor 172.30.0.11 as 64512"));
        assert!(b.contains("neighbor 172.30.0.12 as 64512"));
        assert!(b.contains("export none"));
        let f = p.frr_conf();
        assert!(f.contains("neighbor 172.30.0.12 remote-as 64512"));
        assert!(f.contains("route-map LAB-NONE out"));
        let g = p.gobgp_toml();
        assert!(g.contains("neighbor-address = \"172.30.0.11\""));
        let r = p.resources();
        assert!(r.contains("kind: BGPPeer") && r.contains("peerIP: 172.30.0.1"));
        let none = plan("twl", 2, Tor::None, 0, None).unwrap();
        assert!(!none.resources().contains("BGPPeer"));
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
}
