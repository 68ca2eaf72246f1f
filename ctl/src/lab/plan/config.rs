//! The files the plan turns into: the Twill resources the lab applies to
//! its store (pools, BGP configuration, peers) and the ToR router's
//! configuration for BIRD, FRR or GoBGP — in the default eBGP shape or, with
//! `torReflector`, as the rack's route reflector.

use std::net::Ipv6Addr;

use super::{Plan, REFLECTOR_LABEL, Tor};

impl Plan {
    /// The Twill resources the lab applies to its store.
    pub fn resources(&self) -> String {
        let (ka, hold) = self.bgp_timers();
        let mut docs = vec![format!(
            "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: lab-ipv4\nspec:\n  cidr: {}\n  blockSize: {}\n  natOutgoing: true\n  nodeSelector: all()\n",
            self.pool, self.block_size
        )];
        if let Some(v6) = &self.v6 {
            docs.push(format!(
                "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: lab-ipv6\nspec:\n  cidr: {}\n  blockSize: {}\n  natOutgoing: true\n  nodeSelector: all()\n",
                v6.pool, v6.block_size
            ));
        }
        docs.push(format!(
            "apiVersion: twill.dev/v1\nkind: BGPConfiguration\nmetadata:\n  name: default\nspec:\n  asNumber: {}\n  nodeToNodeMeshEnabled: {}\n  holdTime: {hold}\n  keepaliveTime: {ka}\n  gracefulRestart:\n    enabled: true\n    restartTime: 20\n",
            self.node_as,
            self.route_reflectors.is_empty() && !self.tor_reflector
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
            // One session per family to the ToR: eBGP rewrites the next hop
            // to the session's own address, so IPv6 blocks need an IPv6 session.
            if let Some(v6) = &self.v6 {
                docs.push(format!(
                    "apiVersion: twill.dev/v1\nkind: BGPPeer\nmetadata:\n  name: rack-tor-v6\nspec:\n  peerIP: {}\n  asNumber: {}\n  nodeSelector: all()\n",
                    v6.tor_addr, self.tor_as
                ));
            }
        }
        docs.join("---\n")
    }

    /// The rack's subnet (the nodes' and the ToR's addresses), e.g. 172.30.0.0/24.
    /// BGP keepalive and hold time (seconds) on every session of the lab,
    /// both ends: 3 and 9 below 20 nodes (a silent peer is noticed within
    /// 9 s), then a keepalive every nodes/5 s (at most 20 s), hold three
    /// keepalives. A reflector or the ToR keeps one session per node, so at
    /// 3 s a 100-node lab sent and read about 130 keepalives a second while
    /// idle; at 20 s it is 20. A stopped agent still ends its sessions at
    /// once (its sockets close); only a silent peer waits for the hold time.
    pub fn bgp_timers(&self) -> (u64, u64) {
        let ka = (self.nodes.len() as u64 / 5).clamp(3, 20);
        (ka, 3 * ka)
    }

    pub fn rack_subnet(&self) -> String {
        let net = ipnetwork::Ipv4Network::new(self.tor_addr, self.prefix_len)
            .map(|n| n.network())
            .unwrap_or(self.tor_addr);
        format!("{net}/{}", self.prefix_len)
    }

    /// BIRD 2 configuration for the ToR: learn every node's routes into the
    /// kernel, send nothing back — or, as the rack's reflector, reflect them.
    pub fn bird_conf(&self) -> String {
        let (_, hold) = self.bgp_timers();
        if self.tor_reflector {
            return self.bird_reflector_conf();
        }
        let mut s = format!(
            "router id {tor};\nprotocol device {{}}\nprotocol direct {{ ipv4; interface \"rack\"; }}\nprotocol kernel {{ ipv4 {{ export where source = RTS_BGP; }}; merge paths on; }}\n\
             template bgp node {{\n  local {tor} as {tas};\n  hold time {hold};\n  graceful restart on;\n  ipv4 {{ import all; export none; }};\n}}\n",
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
        if let Some(v6) = &self.v6 {
            s += &format!(
                "protocol direct {{ ipv6; interface \"rack\"; }}\nprotocol kernel {{ ipv6 {{ export where source = RTS_BGP; }}; merge paths on; }}\n\
                 template bgp node6 {{\n  local {tor6} as {tas};\n  hold time {hold};\n  graceful restart on;\n  ipv6 {{ import all; export none; }};\n}}\n",
                tor6 = v6.tor_addr,
                tas = self.tor_as
            );
            for n in &self.nodes {
                if let Some(a6) = n.addr6 {
                    s += &format!(
                        "protocol bgp {}_v6 from node6 {{ neighbor {} as {}; }}\n",
                        n.name.replace('-', "_"),
                        a6,
                        self.node_as
                    );
                }
            }
        }
        s
    }

    /// BIRD 2 as the rack's route reflector, in the shape deploy/README.md
    /// documents: nodes as dynamic iBGP neighbors over the rack subnet, RR
    /// clients, only the pool's blocks and /32s in and out, learned routes
    /// (several nodes per prefix merged) into the kernel. `direct` matters:
    /// without it BIRD resolves iBGP next hops recursively and, with no IGP,
    /// installs the pod routes as unreachable (reflection still works, but
    /// the ToR itself drops traffic to pods).
    fn bird_reflector_conf(&self) -> String {
        let (ka, hold) = self.bgp_timers();
        let mut s = format!(
            r#"router id {tor};

protocol device {{}}

protocol kernel {{
  ipv4 {{ export where source = RTS_BGP; }};
  merge paths on;
}}

filter twill_pods {{
  if net ~ [ {pool}{{{bs},32}} ] then accept;
  reject;
}}

protocol bgp twill_nodes {{
  local {tor} as {asn};
  neighbor range {rack} as {asn};
  dynamic name "node_";
  # The nodes are on this subnet: resolve their next hops on it. iBGP is
  # multihop by default, whose next hops resolve recursively through an IGP;
  # with none, BIRD marks the pod routes unreachable and installs them so.
  direct;
  rr client;
  rr cluster id {tor};
  hold time {hold};
  keepalive time {ka};
  graceful restart on;
  graceful restart time 120;
  ipv4 {{
    import filter twill_pods;
    import limit 10000 action restart;
    export filter twill_pods;
  }};
}}
"#,
            tor = self.tor_addr,
            asn = self.tor_as,
            rack = self.rack_subnet(),
            pool = self.pool,
            bs = self.block_size,
        );
        // Dual stack: the IPv6 blocks on IPv6 sessions (one per family, as
        // to an eBGP ToR); iBGP reflection keeps the nodes' IPv6 next hops.
        if let Some(v6) = &self.v6 {
            s += &format!(
                r#"
protocol direct {{ ipv6; interface "rack"; }}

protocol kernel {{
  ipv6 {{ export where source = RTS_BGP; }};
  merge paths on;
}}

filter twill_pods6 {{
  if net ~ [ {pool6}{{{bs6},128}} ] then accept;
  reject;
}}

protocol bgp twill_nodes6 {{
  local {tor6} as {asn};
  neighbor range {rack6} as {asn};
  dynamic name "node6_";
  direct;
  rr client;
  rr cluster id {tor};
  hold time {hold};
  keepalive time {ka};
  graceful restart on;
  graceful restart time 120;
  ipv6 {{
    import filter twill_pods6;
    import limit 10000 action restart;
    export filter twill_pods6;
  }};
}}
"#,
                tor = self.tor_addr,
                asn = self.tor_as,
                tor6 = v6.tor_addr,
                rack6 = ipnetwork::Ipv6Network::new(v6.tor_addr, v6.prefix_len)
                    .map(|n| format!("{}/{}", n.network(), v6.prefix_len))
                    .unwrap_or_else(|_| format!("{}/{}", v6.tor_addr, v6.prefix_len)),
                pool6 = v6.pool,
                bs6 = v6.block_size,
            );
        }
        s
    }

    /// FRR bgpd configuration for the ToR (with zebra for kernel routes).
    pub fn frr_conf(&self) -> String {
        let (ka, hold) = self.bgp_timers();
        if self.tor_reflector {
            return self.frr_reflector_conf();
        }
        let mut s = format!(
            "hostname lab-tor\nrouter bgp {}\n bgp router-id {}\n no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n",
            self.tor_as, self.tor_addr
        );
        for n in &self.nodes {
            s += &format!(
                " neighbor {} remote-as {}\n neighbor {} timers {ka} {hold}\n",
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
        s += " exit-address-family\n";
        let v6_nodes: Vec<Ipv6Addr> = self.nodes.iter().filter_map(|n| n.addr6).collect();
        if !v6_nodes.is_empty() {
            // The IPv6 sessions (declared above the families, as FRR
            // writes its own configuration).
            let mut neighbors = String::new();
            for a in &v6_nodes {
                neighbors += &format!(
                    " neighbor {a} remote-as {}\n neighbor {a} timers {ka} {hold}\n",
                    self.node_as
                );
            }
            let at = s.find(" address-family ipv4 unicast\n").unwrap_or(s.len());
            s.insert_str(at, &neighbors);
            s += " address-family ipv6 unicast\n";
            for a in &v6_nodes {
                s += &format!("  neighbor {a} activate\n  neighbor {a} route-map LAB-NONE out\n");
            }
            s += " exit-address-family\n";
        }
        s += "route-map LAB-NONE deny 10\n";
        s
    }

    /// The prefix-list range of the pool's blocks and /32s: `ge` only when
    /// blocks are longer than the pool (FRR wants ge > the prefix length).
    fn pods_range_frr(&self) -> String {
        let pool_len = self
            .pool
            .split('/')
            .nth(1)
            .and_then(|l| l.parse::<u8>().ok())
            .unwrap_or(0);
        if self.block_size > pool_len {
            format!("{} ge {} le 32", self.pool, self.block_size)
        } else {
            format!("{} le 32", self.pool)
        }
    }

    /// FRR as the rack's route reflector, in the shape deploy/README.md
    /// documents: a peer group for the rack subnet (`bgp listen range`), RR
    /// clients, the pool's blocks and /32s in and out, iBGP multipath into the
    /// kernel.
    fn frr_reflector_conf(&self) -> String {
        let (ka, hold) = self.bgp_timers();
        let limit = if self.nodes.len() > 100 {
            format!(" bgp listen limit {}\n", self.nodes.len())
        } else {
            String::new()
        };
        format!(
            r#"frr defaults datacenter
hostname lab-tor
!
ip prefix-list twill-pods seq 10 permit {range}
!
router bgp {asn}
 bgp router-id {tor}
 bgp cluster-id {tor}
 bgp graceful-restart
 neighbor twill peer-group
 neighbor twill remote-as internal
 neighbor twill timers {ka} {hold}
 bgp listen range {rack} peer-group twill
{limit} !
 address-family ipv4 unicast
  maximum-paths ibgp 64
  neighbor twill activate
  neighbor twill route-reflector-client
  neighbor twill prefix-list twill-pods in
  neighbor twill prefix-list twill-pods out
  neighbor twill maximum-prefix 10000 restart 1
 exit-address-family
!
"#,
            range = self.pods_range_frr(),
            asn = self.tor_as,
            tor = self.tor_addr,
            rack = self.rack_subnet(),
        )
    }

    /// GoBGP configuration for the ToR (TOML). GoBGP has no kernel FIB of
    /// its own here, so this ToR learns routes but does not forward to pods.
    /// As the rack's reflector, every node is an RR client (next hops stay
    /// the nodes', so pods reach each other without the ToR forwarding).
    pub fn gobgp_toml(&self) -> String {
        let (ka, hold) = self.bgp_timers();
        if self.tor_reflector {
            return self.gobgp_reflector_toml();
        }
        let listen = match &self.v6 {
            Some(v6) => format!("\"{}\", \"{}\"", self.tor_addr, v6.tor_addr),
            None => format!("\"{}\"", self.tor_addr),
        };
        let mut s = format!(
            "[global.config]\n  as = {}\n  router-id = \"{}\"\n  local-address-list = [{listen}]\n",
            self.tor_as, self.tor_addr
        );
        // One neighbor per node address; the ToR sends nothing back.
        let neighbor = |addr: String| {
            format!(
                "\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{addr}\"\n    peer-as = {}\n  [neighbors.timers.config]\n    hold-time = {hold}\n    keepalive-interval = {ka}\n  [neighbors.apply-policy.config]\n    default-export-policy = \"reject-route\"\n",
                self.node_as
            )
        };
        for n in &self.nodes {
            s += &neighbor(n.addr.to_string());
            if let Some(a6) = n.addr6 {
                s += &neighbor(a6.to_string());
            }
        }
        s
    }

    fn gobgp_reflector_toml(&self) -> String {
        let (ka, hold) = self.bgp_timers();
        let mut s = format!(
            "[global.config]\n  as = {asn}\n  router-id = \"{tor}\"\n  local-address-list = [\"{tor}\"]\n",
            asn = self.tor_as,
            tor = self.tor_addr
        );
        for n in &self.nodes {
            s += &format!(
                "\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{addr}\"\n    peer-as = {asn}\n  [neighbors.timers.config]\n    hold-time = {hold}\n    keepalive-interval = {ka}\n  [neighbors.route-reflector.config]\n    route-reflector-client = true\n    route-reflector-cluster-id = \"{tor}\"\n",
                addr = n.addr,
                asn = self.tor_as,
                tor = self.tor_addr
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::super::{TopologyFile, plan};
    use super::*;

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
    fn the_reflector_tor_configs_have_the_documented_shape() {
        let f: TopologyFile =
            serde_saphyr::from_str("torReflector: true\npool: 10.246.0.0/16\nblockSize: 28\n")
                .unwrap();
        let p = plan("twl", 3, Tor::Bird, 0, Some(f)).unwrap();
        assert_eq!(p.rack_subnet(), "172.30.0.0/24");
        let b = p.bird_conf();
        for want in [
            "router id 172.30.0.1;",
            "merge paths on;",
            "if net ~ [ 10.246.0.0/16{28,32} ] then accept;",
            "local 172.30.0.1 as 64512;",
            "neighbor range 172.30.0.0/24 as 64512;",
            "direct;",
            "rr client;",
            "rr cluster id 172.30.0.1;",
            "graceful restart on;",
            "import filter twill_pods;",
            "export filter twill_pods;",
        ] {
            assert!(b.contains(want), "BIRD config lacks {want:?}:\n{b}");
        }
        // Dynamic neighbors: no node is named, and the lab sets no password.
        assert!(!b.contains("172.30.0.11"), "{b}");
        assert!(!b.contains("password"), "{b}");
        let f = p.frr_conf();
        for want in [
            "ip prefix-list twill-pods seq 10 permit 10.246.0.0/16 ge 28 le 32",
            "router bgp 64512\n",
            " bgp cluster-id 172.30.0.1\n",
            " bgp graceful-restart\n",
            " neighbor twill remote-as internal\n",
            " bgp listen range 172.30.0.0/24 peer-group twill\n",
            "  maximum-paths ibgp 64\n",
            "  neighbor twill route-reflector-client\n",
            "  neighbor twill prefix-list twill-pods in\n",
            "  neighbor twill prefix-list twill-pods out\n",
        ] {
            assert!(f.contains(want), "FRR config lacks {want:?}:\n{f}");
        }
        assert!(!f.contains("172.30.0.11") && !f.contains("password"), "{f}");
        assert!(!f.contains("bgp listen limit"), "{f}");
        let g = p.gobgp_toml();
        assert_eq!(g.matches("route-reflector-client = true").count(), 3, "{g}");
        assert!(g.contains("neighbor-address = \"172.30.0.13\"\n    peer-as = 64512"));
        assert!(!g.contains("reject-route"), "{g}");
        // A pool whose blocks are as long as the pool: no `ge` (FRR wants ge > len).
        let f: TopologyFile =
            serde_saphyr::from_str("torReflector: true\npool: 10.246.0.0/26\nblockSize: 26\n")
                .unwrap();
        let p = plan("twl", 1, Tor::Frr, 0, Some(f)).unwrap();
        assert!(p.frr_conf().contains("permit 10.246.0.0/26 le 32\n"));
        // Past FRR's default of 100 dynamic neighbors, the limit is raised.
        let f: TopologyFile = serde_saphyr::from_str("torReflector: true\n").unwrap();
        let p = plan("twl", 150, Tor::Frr, 0, Some(f)).unwrap();
        assert!(p.frr_conf().contains(" bgp listen limit 150\n"));
    }

    #[test]
    fn a_dual_stack_bird_reflector_reflects_ipv6_on_ipv6_sessions() {
        let f: TopologyFile =
            serde_saphyr::from_str("torReflector: true\ndualStack: true\n").unwrap();
        let p = plan("twl", 3, Tor::Bird, 0, Some(f)).unwrap();
        let b = p.bird_conf();
        let v6 = b
            .split("protocol bgp twill_nodes6 {")
            .nth(1)
            .unwrap_or_else(|| panic!("no IPv6 reflector protocol:\n{b}"));
        for want in [
            "local fd00:172:30::1 as 64512;",
            "neighbor range fd00:172:30::/64 as 64512;",
            "rr client;",
            "import filter twill_pods6;",
        ] {
            assert!(v6.contains(want), "IPv6 reflector lacks {want:?}:\n{b}");
        }
        assert!(
            b.contains("if net ~ [ fd00:10:244::/56{122,128} ] then accept;"),
            "{b}"
        );
        assert!(b.contains("protocol kernel {\n  ipv6"), "{b}");
        // The IPv4 sessions stay IPv4 only: no ipv6 channel before it.
        let v4 = b.split("protocol direct { ipv6").next().unwrap_or_default();
        let v4 = v4
            .split("protocol bgp twill_nodes {")
            .nth(1)
            .unwrap_or_default();
        assert!(v4.contains("ipv4 {") && !v4.contains("ipv6"), "{b}");
        // The nodes get an IPv6 BGPPeer to the ToR in the rack's one AS.
        assert!(
            p.resources().contains(
                "name: rack-tor-v6\nspec:\n  peerIP: fd00:172:30::1\n  asNumber: 64512\n"
            ),
            "{}",
            p.resources()
        );
    }

    #[test]
    fn a_dual_stack_lab_has_an_ipv6_pool_addresses_and_sessions() {
        let f: TopologyFile = serde_saphyr::from_str("dualStack: true\n").unwrap();
        let p = plan("twl", 12, Tor::Bird, 1, Some(f)).unwrap();
        let v6 = p.v6.clone().unwrap();
        assert_eq!(v6.pool, "fd00:10:244::/56");
        assert_eq!(v6.block_size, 122);
        assert_eq!(v6.tor_addr, "fd00:172:30::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.nodes[0].addr6, Some("fd00:172:30::11".parse().unwrap()));
        assert_eq!(p.nodes[11].addr6, Some("fd00:172:30::22".parse().unwrap()));
        let r = p.resources();
        assert!(r.contains("name: lab-ipv6\nspec:\n  cidr: fd00:10:244::/56\n  blockSize: 122\n"));
        assert!(
            r.contains("name: rack-tor-v6\nspec:\n  peerIP: fd00:172:30::1\n  asNumber: 65000\n")
        );
        for doc in r.split("---\n") {
            let _: serde_json::Value = serde_saphyr::from_str(doc).unwrap();
        }
        let b = p.bird_conf();
        assert!(b.contains("local fd00:172:30::1 as 65000;"), "{b}");
        assert!(b.contains("protocol bgp n1_v6 from node6 { neighbor fd00:172:30::11 as 64512; }"));
        assert!(b.contains("ipv6 { import all; export none; }"));
        assert!(b.contains("protocol kernel { ipv6 { export where source = RTS_BGP; }"));
        let f = p.frr_conf();
        assert!(
            f.contains(" neighbor fd00:172:30::11 remote-as 64512\n"),
            "{f}"
        );
        let v6_family = f
            .split(" address-family ipv6 unicast\n")
            .nth(1)
            .unwrap_or("");
        assert!(
            v6_family.contains("  neighbor fd00:172:30::12 activate\n"),
            "{f}"
        );
        assert!(!v6_family.contains("172.30.0.12 activate"), "{f}");
        // The IPv6 neighbors are declared before any address family.
        assert!(
            f.find(" neighbor fd00:172:30::11 remote-as").unwrap()
                < f.find(" address-family ipv4 unicast").unwrap(),
            "{f}"
        );
        let g = p.gobgp_toml();
        assert!(
            g.contains("local-address-list = [\"172.30.0.1\", \"fd00:172:30::1\"]"),
            "{g}"
        );
        assert!(g.contains("neighbor-address = \"fd00:172:30::11\""), "{g}");
        // An IPv4-only lab has none of it.
        let d = plan("twl", 2, Tor::Frr, 1, None).unwrap();
        assert!(d.v6.is_none() && d.nodes[0].addr6.is_none());
        assert!(!d.resources().contains("ipv6") && !d.frr_conf().contains("ipv6"));
        assert!(!d.bird_conf().contains("ipv6"));
    }
}
