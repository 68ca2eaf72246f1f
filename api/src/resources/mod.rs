//! Twill's custom resources (group `twill.dev`, version `v1`). Each type is
//! a kube `CustomResource` with an OpenAPI schema, printer columns and short
//! name, plus a `validate` method that names the field and the bad value.

// Several `printcolumn(type_ = "string", ...)` attributes on one type are
// distinct columns, not duplicates; clippy cannot tell them apart.
#![allow(clippy::duplicated_attributes)]

pub mod bgpconfig;
pub mod bgppeer;
pub mod gnp;
pub mod ipamblock;
pub mod ippool;
pub mod nodestatus;
mod schema;

pub use bgpconfig::{
    BGPConfiguration, BGPConfigurationSpec, Community, GracefulRestart, NodeAddress, ServiceCidr,
    parse_community,
};
pub use bgppeer::{
    BGPPeer, BGPPeerSpec, FilterAction, FilterRule, MaxPrefixAction, MaxPrefixes, SecretKeyRef,
};
pub use gnp::{GlobalNetworkPolicy, GlobalNetworkPolicySpec};
pub use ipamblock::{Allocation, IPAMBlock, IPAMBlockSpec, block_name};
pub use ippool::{AllowedUse, IPPool, IPPoolSpec};
pub use nodestatus::{
    InvalidObject, NodeStatus, NodeStatusReport, NodeStatusSpec, PeerStatus, ReportCondition,
    RouteStatus,
};

/// The API group of every Twill resource.
pub const GROUP: &str = "twill.dev";
/// The API version of every Twill resource.
pub const VERSION: &str = "v1";
