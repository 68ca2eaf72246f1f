//! `NodeStatus`: what one twill-node reports about itself (BGP sessions,
//! programmed routes, endpoints), so `twillctl node status` works from any
//! machine that reaches the datastore. Written only by the node it names.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::{Errors, ValidationError, check_name};

/// The most routes a report lists; `route_counts` counts all of them.
pub const MAX_LISTED_ROUTES: usize = 500;

/// A node agent's report. The object's name is the node's name.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "twill.dev",
    version = "v1",
    kind = "NodeStatus",
    plural = "nodestatuses",
    shortname = "tns",
    category = "twill",
    derive = "PartialEq",
    status = "NodeStatusReport",
    doc = "The state a twill-node reports about itself",
    printcolumn(name = "Ready", type_ = "boolean", json_path = ".status.ready"),
    printcolumn(name = "Address", type_ = "string", json_path = ".status.address"),
    printcolumn(name = "Endpoints", type_ = "integer", json_path = ".status.endpoints"),
    printcolumn(name = "Updated", type_ = "date", json_path = ".status.updated")
)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatusSpec {
    /// How often the node refreshes the report, in seconds (written by the
    /// node from its --status-interval; setting it changes nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_interval: Option<u32>,
}

/// The report itself.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatusReport {
    /// When the report was written (RFC 3339).
    #[serde(default)]
    pub updated: String,
    /// twill-node version.
    #[serde(default)]
    pub agent_version: String,
    /// The address the node peers from.
    #[serde(default)]
    pub address: String,
    /// AS number in use.
    #[serde(default)]
    pub as_number: u32,
    /// Datastore synced, sessions configured are up, dataplane programmed.
    #[serde(default)]
    pub ready: bool,
    /// Readiness conditions that do not hold, by name, with the reason
    /// (e.g. `policy`: the policies nft refused, whose pods drop their
    /// traffic).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub not_ready: BTreeMap<String, String>,
    /// BGP sessions.
    #[serde(default)]
    pub bgp_peers: Vec<PeerStatus>,
    /// Routes felix programmed: the node's own (local, blackhole) first,
    /// then learned ones, at most [`MAX_LISTED_ROUTES`] (the object must stay
    /// far below the API server's size limit on nodes with large tables).
    #[serde(default)]
    pub routes: Vec<RouteStatus>,
    /// How many routes of each kind are programmed, listed or not (empty
    /// from agents that predate it: count `routes` then).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub route_counts: BTreeMap<String, u64>,
    /// Local pod endpoints.
    #[serde(default)]
    pub endpoints: u32,
    /// IPAM handles (container IDs) of the local endpoints when the report
    /// was written: `twillctl ipam check` uses them to find leaked addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoint_handles: Vec<String>,
    /// Blocks affine to this node.
    #[serde(default)]
    pub blocks: Vec<String>,
    /// Service prefixes (cluster IP ranges, Service host routes) this node
    /// announces over BGP (`twill_api::service::announced_prefixes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_prefixes: Vec<String>,
    /// The readiness conditions behind `ready`, as the node's `/readyz`
    /// shows them (a failing datastore watch names its kind and error).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<ReportCondition>,
    /// Objects that reached the datastore invalid (an older CRD, a direct
    /// etcd write) and that this node therefore does not use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid_objects: Vec<InvalidObject>,
}

/// One readiness condition.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportCondition {
    /// `datastore`, `policy-objects`, `dataplane`, `bgp`.
    pub name: String,
    pub ready: bool,
    /// Why it is not ready.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// An invalid object in the datastore.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InvalidObject {
    pub kind: String,
    /// `namespace/name` for namespaced kinds.
    pub name: String,
    /// The field errors.
    pub reason: String,
}

/// One BGP session.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    pub address: String,
    pub as_number: u32,
    /// Where the peer comes from: mesh, global (BGPPeer), node (BGPPeer for this node), reflector.
    #[serde(default)]
    pub source: String,
    /// RFC 4271 state: Idle, Connect, Active, OpenSent, OpenConfirm, Established.
    pub state: String,
    /// When the session entered its current state (RFC 3339).
    #[serde(default)]
    pub since: String,
    #[serde(default)]
    pub prefixes_received: u64,
    #[serde(default)]
    pub prefixes_accepted: u64,
    #[serde(default)]
    pub prefixes_advertised: u64,
    /// The session's current error; cleared once it is Established.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Why the session last went down, kept after it re-establishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_down_reason: Option<String>,
    /// When the node first reported that reason (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_down_at: Option<String>,
}

/// A programmed route.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    pub destination: String,
    /// local (a pod's veth), blackhole (an owned block), bgp (learned).
    pub kind: String,
    /// Interface or next hops.
    #[serde(default)]
    pub via: Vec<String>,
}

impl NodeStatus {
    /// The name must be a node name.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let name = self.metadata.name.clone().unwrap_or_default();
        let mut e = Errors::default();
        if let Err(r) = check_name(&name) {
            e.push("metadata.name", &name, r);
        }
        e.finish("NodeStatus", &name)
    }
}
