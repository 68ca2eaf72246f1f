//! `BGPConfiguration`: cluster-wide BGP settings (`default`) and per-node
//! overrides (`node.<nodename>`).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::{Errors, ValidationError, check_name};

/// AS number used when no BGPConfiguration sets one.
pub const DEFAULT_ASN: u32 = 64512;
/// Name of the cluster-wide configuration.
pub const DEFAULT_NAME: &str = "default";

/// BGP settings for the whole cluster or for one node.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "twill.dev",
    version = "v1",
    kind = "BGPConfiguration",
    plural = "bgpconfigurations",
    shortname = "bgpconfig",
    category = "twill",
    derive = "PartialEq",
    doc = "BGP settings: `default` for the cluster, `node.<name>` for one node",
    printcolumn(name = "AS", type_ = "integer", json_path = ".spec.asNumber"),
    printcolumn(
        name = "Mesh",
        type_ = "boolean",
        json_path = ".spec.nodeToNodeMeshEnabled"
    ),
    printcolumn(
        name = "Port",
        type_ = "integer",
        json_path = ".spec.listenPort",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BGPConfigurationSpec {
    /// The cluster's (or node's) AS number; default 64512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// Peer every node with every other node over iBGP (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_to_node_mesh_enabled: Option<bool>,
    /// TCP port BGP listens on (default 179).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub listen_port: Option<u16>,
    /// Hold time in seconds (0, or 3..=65535; default 90).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_time: Option<u16>,
    /// Keepalive interval in seconds (default: hold time / 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_time: Option<u16>,
    /// Graceful restart (RFC 4724) settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_restart: Option<GracefulRestart>,
    /// Communities attached to advertised prefixes (a node's own list, when
    /// not empty, replaces the `default` one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix_advertisements: Vec<PrefixAdvertisement>,
    /// Route reflector cluster ID (an IPv4 address); set on a node's configuration
    /// to make that node a route reflector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::ipv4_opt")]
    pub route_reflector_cluster_id: Option<String>,
    /// Which address the node peers from: an interface name or a CIDR the
    /// address must fall in (per-node or cluster-wide; never guessed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_address: Option<NodeAddress>,
    /// Service cluster IP ranges to announce (whole, from every node); cluster
    /// IPs of `internalTrafficPolicy: Local` Services inside them are
    /// announced as host routes by nodes with a local endpoint.
    #[serde(
        default,
        rename = "serviceClusterIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_cluster_ips: Vec<ServiceCidr>,
    /// Only Service `externalIPs` inside these CIDRs are announced.
    #[serde(
        default,
        rename = "serviceExternalIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_external_ips: Vec<ServiceCidr>,
    /// Only LoadBalancer addresses inside these CIDRs are announced.
    #[serde(
        default,
        rename = "serviceLoadBalancerIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_load_balancer_ips: Vec<ServiceCidr>,
}

/// One CIDR of Service addresses to announce (Calico's shape: `{cidr: ...}`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceCidr {
    #[schemars(schema_with = "super::schema::cidr")]
    pub cidr: String,
}

/// Graceful restart settings.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GracefulRestart {
    /// Advertise the capability and keep peers' routes as stale while they restart (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Seconds peers keep our routes while we restart (default 120, at most 4095).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 4095))]
    pub restart_time: Option<u16>,
    /// Seconds we keep a restarting peer's stale routes after its session returns (default 360).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_time: Option<u32>,
}

fn yes() -> bool {
    true
}

/// Communities to attach to prefixes inside a CIDR.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrefixAdvertisement {
    /// Prefixes inside this CIDR get the communities.
    #[schemars(schema_with = "super::schema::cidr")]
    pub cidr: String,
    /// Standard (`65000:100`) or large (`65000:1:2`) communities.
    pub communities: Vec<String>,
}

/// How a node finds the address it peers from.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeAddress {
    /// Use the first global address on this interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Use the node address that falls inside this CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::cidr_opt")]
    pub cidr: Option<String>,
}

impl BGPConfiguration {
    /// Validates names and fields.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let name = self.metadata.name.clone().unwrap_or_default();
        let mut e = Errors::default();
        if name != DEFAULT_NAME {
            match name.strip_prefix("node.") {
                Some(node) if check_name(node).is_ok() => {}
                _ => e.push(
                    "metadata.name",
                    &name,
                    "must be \"default\" or \"node.<node name>\"",
                ),
            }
        }
        let s = &self.spec;
        if let Some(asn) = s.as_number {
            e.asn("spec.asNumber", asn);
        }
        if s.listen_port == Some(0) {
            e.push("spec.listenPort", 0, "must be 1..=65535");
        }
        check_timers(&mut e, "spec", s.hold_time, s.keepalive_time);
        if let Some(gr) = &s.graceful_restart
            && let Some(t) = gr.restart_time
            && t > 4095
        {
            e.push(
                "spec.gracefulRestart.restartTime",
                t,
                "at most 4095 seconds (a 12-bit field, RFC 4724)",
            );
        }
        for (i, adv) in s.prefix_advertisements.iter().enumerate() {
            e.cidr(&format!("spec.prefixAdvertisements[{i}].cidr"), &adv.cidr);
            for (j, c) in adv.communities.iter().enumerate() {
                if let Err(r) = parse_community(c) {
                    e.push(
                        format!("spec.prefixAdvertisements[{i}].communities[{j}]"),
                        c,
                        r,
                    );
                }
            }
        }
        for (field, list) in [
            ("serviceClusterIPs", &s.service_cluster_ips),
            ("serviceExternalIPs", &s.service_external_ips),
            ("serviceLoadBalancerIPs", &s.service_load_balancer_ips),
        ] {
            for (i, c) in list.iter().enumerate() {
                e.cidr(&format!("spec.{field}[{i}].cidr"), &c.cidr);
            }
        }
        if let Some(id) = &s.route_reflector_cluster_id
            && id.parse::<std::net::Ipv4Addr>().is_err()
        {
            e.push(
                "spec.routeReflectorClusterId",
                id,
                "must be an IPv4 address, e.g. 224.0.0.1",
            );
        }
        if let Some(na) = &s.node_address {
            match (&na.interface, &na.cidr) {
                (None, None) | (Some(_), Some(_)) => e.push(
                    "spec.nodeAddress",
                    "",
                    "set exactly one of interface or cidr",
                ),
                (None, Some(c)) => {
                    e.cidr("spec.nodeAddress.cidr", c);
                }
                (Some(_), None) => {}
            }
        }
        e.finish("BGPConfiguration", &name)
    }
}

/// Checks a hold time / keepalive pair (RFC 4271: hold 0 or at least 3 s).
pub(crate) fn check_timers(
    e: &mut Errors,
    prefix: &str,
    hold: Option<u16>,
    keepalive: Option<u16>,
) {
    if let Some(h) = hold
        && (1..3).contains(&h)
    {
        e.push(
            format!("{prefix}.holdTime"),
            h,
            "must be 0 (no keepalives) or at least 3 seconds (RFC 4271)",
        );
    }
    if let (Some(h), Some(k)) = (hold, keepalive)
        && h != 0
        && k >= h
    {
        e.push(
            format!("{prefix}.keepaliveTime"),
            k,
            format!("must be less than the hold time {h}"),
        );
    }
}

/// A BGP community: standard `A:B` (16-bit halves), large `A:B:C` (32-bit
/// parts), or one of the well-known names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Community {
    Standard(u32),
    Large(u32, u32, u32),
}

/// Parses a community as written in resources.
pub fn parse_community(s: &str) -> Result<Community, String> {
    match s {
        "no-export" => return Ok(Community::Standard(0xFFFF_FF01)),
        "no-advertise" => return Ok(Community::Standard(0xFFFF_FF02)),
        "no-export-subconfed" => return Ok(Community::Standard(0xFFFF_FF03)),
        _ => {}
    }
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        [a, b] => {
            let a: u16 = a
                .parse()
                .map_err(|_| "standard community halves are 0..=65535".to_string())?;
            let b: u16 = b
                .parse()
                .map_err(|_| "standard community halves are 0..=65535".to_string())?;
            Ok(Community::Standard((u32::from(a) << 16) | u32::from(b)))
        }
        [a, b, c] => {
            let p = |x: &str| {
                x.parse::<u32>()
                    .map_err(|_| "large community parts are 0..=4294967295".to_string())
            };
            Ok(Community::Large(p(a)?, p(b)?, p(c)?))
        }
        _ => Err("expected A:B (standard), A:B:C (large), or no-export / no-advertise".into()),
    }
}
