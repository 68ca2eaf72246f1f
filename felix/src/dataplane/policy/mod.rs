//! The policy manager: Twill's nftables table `inet twill`, the network
//! policy of this node's endpoints.
//!
//! * [`engine`]: follows the datastore (reduced on arrival by
//!   [`crate::calc::policy`]) and the endpoints, and runs the passes;
//! * [`table`]: the [`super::Manager`] — incremental render, drift check,
//!   full or incremental nft transaction, fail-closed diagnosis;
//! * [`refusals`]: policies nft refused and their fail-closed stand-ins;
//! * [`gate`]: holds a CNI ADD until its endpoint's policy is in place;
//! * [`nft`]: running nft — apply, check (`nft -c`), read back.
//!
//! The `policy` readiness condition is not ready until the first table is
//! in the kernel, and while any policy is refused (naming each and nft's
//! reason).

pub mod engine;
pub mod gate;
pub mod nft;
pub mod refusals;
pub mod table;

pub use engine::PolicyEngine;
pub use gate::PolicyGate;

/// The readiness condition of policy programming: not ready until the
/// first table is in the kernel, and while any policy is refused.
pub const POLICY: &str = "policy";
