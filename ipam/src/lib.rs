//! twill-ipam: block IPAM on the datastore.
//!
//! Pools ([`twill_api::resources::IPPool`]) split into blocks of `blockSize`;
//! a node claims blocks affine to itself ([`twill_api::resources::IPAMBlock`],
//! a compare-and-swap create), hands out addresses from them, claims another
//! when they are full, and borrows single addresses from other nodes' blocks
//! only when the pool has no free block left (and the pool allows it).
//!
//! * [`blockmath`]: pure address arithmetic;
//! * [`plan`]: pure decisions (which write satisfies a request);
//! * [`allocator`]: executes them with CAS writes and retries;
//! * [`report`]: pure summaries and consistency checks for `twillctl ipam`;
//! * [`lb`]: LoadBalancer IPAM's pure decisions (pool, address, sharing);
//! * [`lb_alloc`]: the LoadBalancer allocator every node runs ([`lb_alloc::run`]).

pub mod allocator;
pub mod blockmath;
pub mod lb;
pub mod lb_alloc;
pub mod plan;
pub mod report;

pub use allocator::{AssignRequest, Assigned, Ipam, IpamError, Released, node_allocations};
pub use plan::{Family, PlanError, borrowed_addresses, owned_blocks};

/// Allocation attribute: the node that made the allocation.
pub const ATTR_NODE: &str = "node";
/// Allocation attribute: when it was made (RFC 3339).
pub const ATTR_CREATED: &str = "created";
/// Allocation attribute: the pod's namespace.
pub const ATTR_NAMESPACE: &str = "namespace";
/// Allocation attribute: the pod's name.
pub const ATTR_POD: &str = "pod";
/// Allocation attribute: the interface inside the pod.
pub const ATTR_IFNAME: &str = "ifname";
