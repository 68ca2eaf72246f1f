//! This node's own BGP settings ([`local_bgp`]: `default` merged with
//! `node.<name>` and the Node's AS annotation) and what each Node publishes
//! in its annotations (its peering address and AS) — pure.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;
use twill_api::resources::{BGPConfiguration, BGPConfigurationSpec};

/// Annotation where a twill-node publishes the address it peers from.
pub const ANN_ADDRESS: &str = "twill.dev/bgp-address";
/// Annotation that overrides a node's AS number.
pub const ANN_AS: &str = "twill.dev/as-number";
/// The AS when nothing sets one (Calico's default too).
pub const DEFAULT_AS: u32 = 64512;

/// This node's effective BGP settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalBgp {
    pub asn: u32,
    pub listen_port: u16,
    pub mesh: bool,
    pub hold_time: u16,
    /// None: a third of the negotiated hold time (the documented default).
    pub keepalive_time: Option<u16>,
    pub graceful_restart: bool,
    pub restart_time: u16,
    /// GR helper: seconds a restarting peer's stale routes are kept after
    /// its session is back (`gracefulRestart.staleTime`, default 360).
    pub stale_time: u32,
    pub cluster_id: Option<std::net::Ipv4Addr>,
    pub node_address: Option<twill_api::resources::NodeAddress>,
}

/// Merges `default` with `node.<name>` (the node's fields win) and this
/// node's AS annotation.
pub fn local_bgp(node: &str, node_obj: Option<&Node>, configs: &[BGPConfiguration]) -> LocalBgp {
    let find = |n: &str| {
        configs
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(n))
            .map(|c| &c.spec)
    };
    let empty = BGPConfigurationSpec::default();
    let d = find("default").unwrap_or(&empty);
    let n = find(&format!("node.{node}")).unwrap_or(&empty);
    let asn = node_obj
        .and_then(annotated_as)
        .or(n.as_number)
        .or(d.as_number)
        .unwrap_or(DEFAULT_AS);
    let gr = n.graceful_restart.as_ref().or(d.graceful_restart.as_ref());
    LocalBgp {
        asn,
        listen_port: n.listen_port.or(d.listen_port).unwrap_or(179),
        mesh: n
            .node_to_node_mesh_enabled
            .or(d.node_to_node_mesh_enabled)
            .unwrap_or(true),
        hold_time: n.hold_time.or(d.hold_time).unwrap_or(90),
        keepalive_time: n.keepalive_time.or(d.keepalive_time),
        graceful_restart: gr.is_none_or(|g| g.enabled),
        restart_time: gr.and_then(|g| g.restart_time).unwrap_or(120),
        stale_time: gr.and_then(|g| g.stale_time).unwrap_or(360),
        cluster_id: n
            .route_reflector_cluster_id
            .as_deref()
            .and_then(|s| s.parse().ok()),
        node_address: n.node_address.clone().or_else(|| d.node_address.clone()),
    }
}

pub(super) fn annotated_as(n: &Node) -> Option<u32> {
    parse_annotated_as(n).ok()?
}

/// The node's AS annotation: `Ok(None)` when absent, `Err` naming the node
/// and the reason when present but not a usable AS number (it is then
/// ignored, and [`super::peers::desired_peers`] reports it).
pub(super) fn parse_annotated_as(n: &Node) -> Result<Option<u32>, String> {
    let Some(v) = n.metadata.annotations.as_ref().and_then(|a| a.get(ANN_AS)) else {
        return Ok(None);
    };
    let asn: u32 = v.trim().parse().map_err(|_| {
        format!(
            "Node {:?}: annotation {ANN_AS}={v:?} is not an AS number (1..=4294967294); ignored",
            name(n)
        )
    })?;
    twill_api::validate::check_asn(asn).map_err(|r| {
        format!(
            "Node {:?}: annotation {ANN_AS}={v:?}: {r}; ignored",
            name(n)
        )
    })?;
    Ok(Some(asn))
}

pub(super) fn annotated_address(n: &Node) -> Option<IpAddr> {
    let a = n.metadata.annotations.as_ref()?.get(ANN_ADDRESS)?;
    a.split('/').next()?.parse().ok()
}

pub(super) fn labels(n: &Node) -> BTreeMap<String, String> {
    n.metadata.labels.clone().unwrap_or_default()
}

pub(super) fn name(n: &Node) -> &str {
    n.metadata.name.as_deref().unwrap_or_default()
}

/// Is `node` a route reflector (its own configuration sets a cluster ID)?
pub(super) fn is_reflector(node: &str, configs: &[BGPConfiguration]) -> bool {
    configs.iter().any(|c| {
        c.metadata.name.as_deref() == Some(&format!("node.{node}"))
            && c.spec.route_reflector_cluster_id.is_some()
    })
}
