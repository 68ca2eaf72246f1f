//! The pure half of the node agent: API objects and local facts in,
//! desired state out. No I/O here, so every rule is unit-tested.
//!
//! * [`routes`]: the kernel routes the node should have, and the plan that
//!   takes the installed routes there;
//! * [`nat`]: what NAT outgoing the pools ask for;
//! * [`bgp`]: the sessions, their settings and the prefixes to announce;
//! * [`endpoint`]: endpoint records, the addresses a pod asks for, the CNI
//!   result, and what the start-up repair of the endpoints should do;
//! * [`policy`]: datastore events reduced to the policy renderer's inputs;
//! * [`services`]: the service proxy's nftables table from Services and EndpointSlices.

pub mod bgp;
pub mod endpoint;
pub mod nat;
pub mod policy;
pub mod routes;
pub mod services;
