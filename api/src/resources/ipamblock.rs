//! `IPAMBlock`: one block of a pool, its node affinity and its allocations.
//! Every write to a block is a compare-and-swap on its revision, which is
//! what keeps two nodes (or two processes) from handing out one address.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::{Errors, ValidationError};

/// One block of pod addresses.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "twill.dev",
    version = "v1",
    kind = "IPAMBlock",
    plural = "ipamblocks",
    shortname = "block",
    category = "twill",
    derive = "PartialEq",
    doc = "A block of pod addresses: its CIDR, the node it is affine to and its allocations",
    printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr"),
    printcolumn(name = "Affinity", type_ = "string", json_path = ".spec.affinity"),
    printcolumn(
        name = "Pool",
        type_ = "string",
        json_path = ".spec.pool",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IPAMBlockSpec {
    /// The block's addresses.
    #[schemars(schema_with = "super::schema::cidr")]
    pub cidr: String,
    /// Name of the node the block is affine to (none when released to the pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
    /// Name of the IPPool the block was carved from.
    #[serde(default)]
    pub pool: String,
    /// The last allocation sequence number handed out in this block; it only grows.
    #[serde(default)]
    pub sequence: u64,
    /// Allocated addresses, sorted by ordinal.
    #[serde(default)]
    pub allocations: Vec<Allocation>,
    /// The ordinal handed out most recently: the next allocation starts
    /// after it, so released addresses are reused as late as possible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ordinal: Option<u32>,
    /// When the block became empty (RFC 3339); it returns to the pool after a grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_since: Option<String>,
}

/// One allocated address.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    /// Offset of the address from the block's first address.
    pub ordinal: u32,
    /// Who holds it: the container ID for pods.
    pub handle: String,
    /// The block's sequence number when this allocation was made; a release
    /// that names an older sequence does not free a reused address.
    pub sequence: u64,
    /// Free-form attributes: node, namespace, pod, interface.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// The object name for a block: its CIDR with `.`, `:` and `/` made into `-`.
pub fn block_name(cidr: &str) -> String {
    cidr.replace(['.', ':', '/'], "-")
}

impl IPAMBlock {
    /// Validates the block's own fields.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let name = self.metadata.name.clone().unwrap_or_default();
        let mut e = Errors::default();
        if let Some(net) = e.cidr("spec.cidr", &self.spec.cidr) {
            let size: u128 = match net {
                ipnetwork::IpNetwork::V4(n) => 1u128 << (32 - n.prefix()),
                ipnetwork::IpNetwork::V6(n) => 1u128 << (128 - n.prefix()).min(127),
            };
            let mut last: Option<u32> = None;
            for (i, a) in self.spec.allocations.iter().enumerate() {
                if u128::from(a.ordinal) >= size {
                    e.push(
                        format!("spec.allocations[{i}].ordinal"),
                        a.ordinal,
                        format!("outside the block (size {size})"),
                    );
                }
                if last.is_some_and(|l| l >= a.ordinal) {
                    e.push(
                        format!("spec.allocations[{i}].ordinal"),
                        a.ordinal,
                        "allocations must be sorted by ordinal without duplicates",
                    );
                }
                if a.handle.is_empty() {
                    e.push(
                        format!("spec.allocations[{i}].handle"),
                        "",
                        "an allocation needs a handle",
                    );
                }
                if a.sequence > self.spec.sequence {
                    e.push(
                        format!("spec.allocations[{i}].sequence"),
                        a.sequence,
                        "newer than the block's sequence",
                    );
                }
                last = Some(a.ordinal);
            }
        }
        e.finish("IPAMBlock", &name)
    }
}
