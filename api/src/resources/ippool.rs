//! `IPPool`: a range of pod addresses, split into blocks that nodes claim.

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::{Errors, ValidationError, overlaps, parse_cidr};

/// Default block prefix length for IPv4 pools.
pub const DEFAULT_BLOCK_SIZE_V4: u8 = 26;
/// Default block prefix length for IPv6 pools.
pub const DEFAULT_BLOCK_SIZE_V6: u8 = 122;

/// A pool of pod addresses.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "twill.dev",
    version = "v1",
    kind = "IPPool",
    plural = "ippools",
    shortname = "pool",
    category = "twill",
    derive = "PartialEq",
    doc = "A pool of pod addresses, split into blocks of blockSize that nodes claim",
    printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr"),
    printcolumn(name = "Block", type_ = "integer", json_path = ".spec.blockSize"),
    printcolumn(name = "NAT", type_ = "boolean", json_path = ".spec.natOutgoing"),
    printcolumn(name = "Disabled", type_ = "boolean", json_path = ".spec.disabled"),
    printcolumn(
        name = "Selector",
        type_ = "string",
        json_path = ".spec.nodeSelector",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolSpec {
    /// The pool's addresses, e.g. 10.244.0.0/16 or fd00:10:244::/48.
    #[schemars(schema_with = "super::schema::cidr")]
    pub cidr: String,
    /// Prefix length of the blocks nodes claim (IPv4 20..=32, default 26; IPv6 116..=128, default 122).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 20, max = 128))]
    pub block_size: Option<u8>,
    /// Masquerade traffic from the pool to destinations outside every pool.
    #[serde(default)]
    pub nat_outgoing: bool,
    /// Which nodes may take addresses from this pool (selector on Node labels; default all()).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
    /// A disabled pool hands out no new addresses; existing ones stay.
    #[serde(default)]
    pub disabled: bool,
    /// Do not announce this pool's blocks over BGP.
    #[serde(default, rename = "disableBGPExport")]
    pub disable_bgp_export: bool,
    /// What addresses from this pool are for (default: Workload).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_uses: Vec<AllowedUse>,
    /// Never borrow single addresses from another node's block.
    #[serde(default)]
    pub strict_affinity: bool,
    /// Which Services may take LoadBalancer addresses from this pool
    /// (selector on the Service's labels, plus `twill.dev/namespace`, its
    /// namespace; default all()). Only for pools that allow LoadBalancer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<String>,
    /// BGP communities the pool's LoadBalancer addresses are announced
    /// with, standard (`65000:100`), large (`65000:1:2`) or `no-export` /
    /// `no-advertise` (added to the BGPConfiguration's prefixAdvertisements
    /// and the Service's `twill.dev/bgp-communities`). Only for pools that
    /// allow LoadBalancer.
    #[serde(
        default,
        rename = "bgpCommunities",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub bgp_communities: Vec<String>,
}

/// A use an IPPool may serve.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AllowedUse {
    /// Pod addresses.
    Workload,
    /// Addresses for tunnel devices (reserved; Twill routes without tunnels).
    Tunnel,
    /// Addresses for Services of type LoadBalancer (never given to pods).
    LoadBalancer,
}

impl IPPoolSpec {
    /// The parsed CIDR (validated objects always parse).
    pub fn network(&self) -> Option<IpNetwork> {
        parse_cidr(&self.cidr).ok()
    }

    /// The block prefix length, with the family default applied (a
    /// LoadBalancer-only pool smaller than the default block is one block).
    pub fn effective_block_size(&self) -> u8 {
        let default = match (self.block_size, self.network()) {
            (Some(b), _) => return b,
            (None, Some(IpNetwork::V6(_))) => DEFAULT_BLOCK_SIZE_V6,
            (None, _) => DEFAULT_BLOCK_SIZE_V4,
        };
        match self.network() {
            Some(n) if self.only_load_balancer() => default.max(n.prefix()),
            _ => default,
        }
    }

    /// Whether pods may get addresses from this pool.
    pub fn allows_workloads(&self) -> bool {
        self.allowed_uses.is_empty() || self.allowed_uses.contains(&AllowedUse::Workload)
    }

    /// Whether LoadBalancer Services may get addresses from this pool.
    pub fn allows_load_balancers(&self) -> bool {
        self.allowed_uses.contains(&AllowedUse::LoadBalancer)
    }

    fn only_load_balancer(&self) -> bool {
        self.allows_load_balancers() && !self.allows_workloads()
    }
}

impl IPPool {
    /// Validates the pool alone.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.validate_against(&[])
    }

    /// Validates the pool and checks it does not overlap any other pool.
    pub fn validate_against(&self, others: &[IPPool]) -> Result<(), ValidationError> {
        let name = self.metadata.name.clone().unwrap_or_default();
        let mut e = Errors::default();
        let s = &self.spec;
        let net = e.cidr("spec.cidr", &s.cidr);
        if let Some(net) = net {
            let (lo, hi) = if net.is_ipv4() { (20, 32) } else { (116, 128) };
            let block = s.effective_block_size();
            if !(lo..=hi).contains(&block) {
                e.push(
                    "spec.blockSize",
                    block,
                    format!(
                        "out of range: must be {lo}..={hi} for an IPv{} pool",
                        if net.is_ipv4() { 4 } else { 6 }
                    ),
                );
            } else if block < net.prefix() {
                e.push(
                    "spec.blockSize",
                    block,
                    format!("blocks must fit inside the pool: blockSize must be at least the pool's prefix length {}", net.prefix()),
                );
            }
            for other in others {
                if other.metadata.name.as_deref() == Some(name.as_str()) {
                    continue;
                }
                if let Some(o) = other.spec.network()
                    && overlaps(&net, &o)
                {
                    e.push(
                        "spec.cidr",
                        &s.cidr,
                        format!(
                            "overlaps IPPool {:?} ({}); pools must not share addresses",
                            other.metadata.name.as_deref().unwrap_or(""),
                            other.spec.cidr
                        ),
                    );
                }
            }
        } else if let Some(b) = s.block_size
            && !(20..=32).contains(&b)
            && !(116..=128).contains(&b)
        {
            e.push(
                "spec.blockSize",
                b,
                "out of range: must be 20..=32 (IPv4) or 116..=128 (IPv6)",
            );
        }
        if let Some(sel) = &s.node_selector {
            e.selector("spec.nodeSelector", sel);
        }
        if let Some(sel) = &s.service_selector {
            e.selector("spec.serviceSelector", sel);
            if !s.allows_load_balancers() {
                e.push(
                    "spec.serviceSelector",
                    sel,
                    "only a pool whose allowedUses include LoadBalancer selects Services",
                );
            }
        }
        for (i, c) in s.bgp_communities.iter().enumerate() {
            if let Err(r) = crate::resources::bgpconfig::parse_community(c) {
                e.push(format!("spec.bgpCommunities[{i}]"), c, r);
            }
        }
        if !s.bgp_communities.is_empty() && !s.allows_load_balancers() {
            e.push(
                "spec.bgpCommunities",
                s.bgp_communities.join(","),
                "only a pool whose allowedUses include LoadBalancer has communities (pod blocks take theirs from the BGPConfiguration's prefixAdvertisements)",
            );
        }
        if s.allows_load_balancers() && s.allows_workloads() {
            e.push(
                "spec.allowedUses",
                "Workload,LoadBalancer",
                "a pool is for pods or for LoadBalancer Services, not both (an address must never serve both)",
            );
        }
        e.finish("IPPool", &name)
    }
}

/// Labels type shared by selectors.
pub type Labels = BTreeMap<String, String>;
