//! The YAML shape of a neighbour and its policies (the top level is
//! `Config` in the parent module).

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::types::Asn;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrYaml {
    #[serde(default = "default_restart_time")]
    pub restart_time: u16,
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// Seconds a restarting peer's stale routes are kept after its session
    /// is back, waiting for its End-of-RIB.
    #[serde(default = "default_stale_time")]
    pub stale_time: u32,
}
fn default_restart_time() -> u16 {
    120
}
fn default_stale_time() -> u32 {
    360
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeighborYaml {
    pub address: IpAddr,
    pub asn: Asn,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub hold_time: Option<u16>,
    #[serde(default)]
    pub keepalive: Option<u16>,
    #[serde(default)]
    pub connect_retry: Option<u64>,
    #[serde(default)]
    pub passive: bool,
    #[serde(default)]
    pub multihop: Option<u8>,
    #[serde(default)]
    pub ttl_security: bool,
    #[serde(default)]
    pub source_address: Option<IpAddr>,
    /// RFC 9687 send hold time, seconds.
    #[serde(default)]
    pub send_hold_time: Option<u64>,
    /// Seconds a connection may wait for the peer's OPEN.
    #[serde(default)]
    pub open_wait: Option<u64>,
    #[serde(default)]
    pub families: Option<Vec<FamilyYaml>>,
    #[serde(default)]
    pub max_prefix: Option<MaxPrefixYaml>,
    #[serde(default)]
    pub import: Option<FilterYaml>,
    #[serde(default)]
    pub export: Option<FilterYaml>,
    #[serde(default = "yes")]
    pub graceful_restart: bool,
    #[serde(default)]
    pub route_reflector_client: bool,
    /// `node` for another Twill node, `external` (default) for a router.
    #[serde(default)]
    pub kind: Option<KindYaml>,
    /// Single-hop BFD towards the neighbour (RFC 5880/5881).
    #[serde(default)]
    pub bfd: Option<BfdYaml>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BfdYaml {
    #[serde(default = "default_bfd_ms")]
    pub min_tx_ms: u32,
    #[serde(default = "default_bfd_ms")]
    pub min_rx_ms: u32,
    #[serde(default = "default_bfd_mult")]
    pub multiplier: u8,
}

fn default_bfd_ms() -> u32 {
    300
}
fn default_bfd_mult() -> u8 {
    3
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FamilyYaml {
    Ipv4,
    Ipv6,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KindYaml {
    Node,
    External,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MaxPrefixActionYaml {
    Warn,
    Teardown,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxPrefixYaml {
    pub limit: u32,
    #[serde(default = "teardown")]
    pub action: MaxPrefixActionYaml,
    /// Seconds before reconnecting after a tear-down.
    #[serde(default = "default_restart_after")]
    pub restart_after: u64,
}
fn teardown() -> MaxPrefixActionYaml {
    MaxPrefixActionYaml::Teardown
}
fn default_restart_after() -> u64 {
    60
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DefaultYaml {
    Accept,
    Reject,
    /// Only what this speaker originates (the default export).
    Originated,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VerdictYaml {
    Accept,
    Reject,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterYaml {
    pub default: DefaultYaml,
    #[serde(default)]
    pub next_hop_self: bool,
    #[serde(default)]
    pub terms: Vec<TermYaml>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TermYaml {
    /// `"10.0.0.0/8"`, `"10.0.0.0/8 le 24"`, `"10.0.0.0/8 ge 16 le 24"`.
    #[serde(default)]
    pub prefixes: Vec<String>,
    #[serde(default)]
    pub communities: Vec<String>,
    #[serde(default)]
    pub large_communities: Vec<String>,
    #[serde(default)]
    pub as_path_contains: Option<Asn>,
    pub action: VerdictYaml,
    #[serde(default)]
    pub set_local_pref: Option<u32>,
    #[serde(default)]
    pub set_med: Option<u32>,
    #[serde(default)]
    pub prepend: Option<u8>,
    #[serde(default)]
    pub add_communities: Vec<String>,
    #[serde(default)]
    pub add_large_communities: Vec<String>,
}
