//! `BGPPeer`: a BGP session (or a set of sessions) for some or all nodes.
//! Either `peerIP` (a router, e.g. a ToR) or `peerSelector` (other Twill
//! nodes, e.g. route reflectors); `node` / `nodeSelector` say which of our
//! nodes open the session (all when neither is set).

use std::net::IpAddr;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::bgpconfig::{check_timers, parse_community};
use crate::validate::{Errors, ValidationError};

/// A BGP peer.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "twill.dev",
    version = "v1",
    kind = "BGPPeer",
    plural = "bgppeers",
    shortname = "peer",
    category = "twill",
    derive = "PartialEq",
    doc = "A BGP peer: a router by peerIP, or other Twill nodes by peerSelector",
    printcolumn(name = "Peer", type_ = "string", json_path = ".spec.peerIP"),
    printcolumn(name = "AS", type_ = "integer", json_path = ".spec.asNumber"),
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(
        name = "NodeSelector",
        type_ = "string",
        json_path = ".spec.nodeSelector"
    ),
    printcolumn(
        name = "PeerSelector",
        type_ = "string",
        json_path = ".spec.peerSelector",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BGPPeerSpec {
    /// The peer's address, `IP` or `IP:port` (`[IPv6]:port`).
    #[serde(default, rename = "peerIP", skip_serializing_if = "Option::is_none")]
    pub peer_ip: Option<String>,
    /// The peer's AS number (required with peerIP; defaults to ours with peerSelector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// Only this node opens the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Nodes whose labels match open the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
    /// Peer with the Twill nodes whose labels match (e.g. route reflectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_selector: Option<String>,
    /// TCP MD5 password, read from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretKeyRef>,
    /// Hold time in seconds (0, or 3..=65535).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_time: Option<u16>,
    /// Keepalive interval in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_time: Option<u16>,
    /// GTSM (RFC 5082): accept packets from at most this many hops away (1..=254).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 254))]
    pub ttl_security: Option<u8>,
    /// eBGP multihop: TTL for a peer that is not directly connected (1..=255).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub ebgp_multihop: Option<u8>,
    /// Limit on prefixes accepted from the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prefixes: Option<MaxPrefixes>,
    /// Rules applied to routes received, first match wins (default: accept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub import_filters: Vec<FilterRule>,
    /// Rules applied to routes sent, first match wins (default: what the node originates).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_filters: Vec<FilterRule>,
    /// Bidirectional forwarding detection for fast failure detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<Bfd>,
    /// Source address: `UseNodeIP` (default), `None` (kernel picks), or an address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<String>,
    /// Rewrite the next hop to ourselves on routes we send.
    #[serde(default)]
    pub next_hop_self: bool,
    /// The selected peers are route-reflector clients of this node.
    #[serde(default)]
    pub route_reflector_client: bool,
    /// Graceful restart with this peer (default: the BGPConfiguration's setting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_restart: Option<bool>,
}

/// Reference to one key of a Secret.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key inside the Secret's data.
    pub key: String,
    /// Namespace of the Secret (default: the namespace twill-node runs in —
    /// its POD_NAMESPACE, else its service account's namespace, else
    /// twill-system). twill-node needs RBAC to read Secrets there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// What to do when a peer sends more prefixes than allowed.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaxPrefixes {
    /// The limit.
    pub limit: u32,
    /// Warn (log and count) or Restart (NOTIFICATION Cease/1, then reconnect after restartAfter).
    #[serde(default)]
    pub action: MaxPrefixAction,
    /// Seconds to wait before reconnecting after a tear-down (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_after: Option<u32>,
}

/// Max-prefix action.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MaxPrefixAction {
    Warn,
    #[default]
    Restart,
}

/// BFD parameters.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Bfd {
    pub enabled: bool,
    /// Desired minimum transmit interval, milliseconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tx_ms: Option<u32>,
    /// Required minimum receive interval, milliseconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_rx_ms: Option<u32>,
    /// Detection multiplier (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<u8>,
}

/// One import or export rule. All match fields that are set must match;
/// then the action applies, with the modifications when it is Accept.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FilterRule {
    pub action: FilterAction,
    /// Match prefixes inside this CIDR ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::cidr_opt")]
    pub cidr: Option<String>,
    /// ... whose length is at least ge (default: the CIDR's length) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 128))]
    pub ge: Option<u8>,
    /// ... and at most le (default: ge when set, else the CIDR's length: exact match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 128))]
    pub le: Option<u8>,
    /// Match routes carrying any of these communities (standard or large).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<String>,
    /// On Accept: add these communities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_communities: Vec<String>,
    /// On Accept: set LOCAL_PREF (iBGP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_local_pref: Option<u32>,
    /// On Accept: prepend our AS this many times (export).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepend_as_path: Option<u8>,
    /// On Accept: set the next hop to ourselves (export).
    #[serde(default)]
    pub next_hop_self: bool,
}

/// Filter verdict.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum FilterAction {
    #[default]
    Accept,
    Reject,
}

/// Splits `IP`, `IP:port` or `[IPv6]:port`.
pub fn parse_peer_address(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok((ip, None));
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Ok((sa.ip(), Some(sa.port())));
    }
    Err("expected IP, IP:port or [IPv6]:port".into())
}

impl BGPPeer {
    /// Validates the peer definition.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let name = self.metadata.name.clone().unwrap_or_default();
        let mut e = Errors::default();
        let s = &self.spec;
        match (&s.peer_ip, &s.peer_selector) {
            (None, None) => e.push(
                "spec.peerIP",
                "",
                "a peer needs an address (peerIP) or a selector for other Twill nodes (peerSelector)",
            ),
            (Some(ip), Some(_)) => e.push(
                "spec.peerSelector",
                ip,
                "set peerIP or peerSelector, not both",
            ),
            (Some(ip), None) => {
                if let Err(r) = parse_peer_address(ip) {
                    e.push("spec.peerIP", ip, r);
                }
                if s.as_number.is_none() {
                    e.push("spec.asNumber", "", "required with peerIP: the router's AS number");
                }
            }
            (None, Some(sel)) => {
                e.selector("spec.peerSelector", sel);
            }
        }
        if let Some(asn) = s.as_number {
            e.asn("spec.asNumber", asn);
        }
        if s.node.is_some() && s.node_selector.is_some() {
            e.push(
                "spec.nodeSelector",
                s.node_selector.as_deref().unwrap_or(""),
                "set node or nodeSelector, not both",
            );
        }
        if let Some(sel) = &s.node_selector {
            e.selector("spec.nodeSelector", sel);
        }
        if let Some(p) = &s.password {
            if p.name.is_empty() {
                e.push("spec.password.name", "", "the Secret's name is required");
            }
            if p.key.is_empty() {
                e.push(
                    "spec.password.key",
                    "",
                    "the key inside the Secret is required",
                );
            }
        }
        check_timers(&mut e, "spec", s.hold_time, s.keepalive_time);
        if let Some(t) = s.ttl_security
            && !(1..=254).contains(&t)
        {
            e.push("spec.ttlSecurity", t, "hop count must be 1..=254");
        }
        if s.ttl_security.is_some() && s.ebgp_multihop.is_some() {
            e.push(
                "spec.ebgpMultihop",
                s.ebgp_multihop.unwrap_or(0),
                "ttlSecurity already sets the TTL; use one of them",
            );
        }
        if s.ebgp_multihop == Some(0) {
            e.push("spec.ebgpMultihop", 0, "TTL must be 1..=255");
        }
        if let Some(mp) = &s.max_prefixes
            && mp.limit == 0
        {
            e.push("spec.maxPrefixes.limit", 0, "must be at least 1");
        }
        if let Some(b) = &s.bfd {
            if b.multiplier == Some(0) {
                e.push("spec.bfd.multiplier", 0, "must be at least 1");
            }
            for (f, v) in [("minTxMs", b.min_tx_ms), ("minRxMs", b.min_rx_ms)] {
                if v == Some(0) {
                    e.push(format!("spec.bfd.{f}"), 0, "must be at least 1 ms");
                }
            }
        }
        if let Some(src) = &s.source_address
            && src != "UseNodeIP"
            && src != "None"
            && src.parse::<IpAddr>().is_err()
        {
            e.push(
                "spec.sourceAddress",
                src,
                "must be UseNodeIP, None, or an IP address",
            );
        }
        for (list, rules) in [
            ("importFilters", &s.import_filters),
            ("exportFilters", &s.export_filters),
        ] {
            for (i, r) in rules.iter().enumerate() {
                validate_rule(&mut e, &format!("spec.{list}[{i}]"), r);
            }
        }
        e.finish("BGPPeer", &name)
    }
}

fn validate_rule(e: &mut Errors, at: &str, r: &FilterRule) {
    let net = r
        .cidr
        .as_ref()
        .and_then(|c| e.cidr(&format!("{at}.cidr"), c));
    let max = match net {
        Some(n) if n.is_ipv6() => 128,
        _ => 32,
    };
    let min = net.map(|n| n.prefix()).unwrap_or(0);
    if (r.ge.is_some() || r.le.is_some()) && r.cidr.is_none() {
        e.push(
            format!("{at}.ge"),
            r.ge.or(r.le).unwrap_or(0),
            "ge/le need a cidr to apply to",
        );
    }
    for (f, v) in [("ge", r.ge), ("le", r.le)] {
        if let Some(v) = v
            && !(min..=max).contains(&v)
        {
            e.push(
                format!("{at}.{f}"),
                v,
                format!("must be {min}..={max} (between the CIDR's length and the address width)"),
            );
        }
    }
    if let (Some(ge), Some(le)) = (r.ge, r.le)
        && ge > le
    {
        e.push(
            format!("{at}.le"),
            le,
            format!("must be at least ge ({ge})"),
        );
    }
    for (f, list) in [
        ("communities", &r.communities),
        ("addCommunities", &r.add_communities),
    ] {
        for (j, c) in list.iter().enumerate() {
            if let Err(reason) = parse_community(c) {
                e.push(format!("{at}.{f}[{j}]"), c, reason);
            }
        }
    }
}
