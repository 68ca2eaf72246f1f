//! twill-felix: `twill-node`, the agent on every node. Its modules follow
//! the data flow (see DESIGN.md, "twill-node and the datastore"):
//!
//! * [`watch`]: the inputs — every datastore watch (retried, validated,
//!   reported in readiness) and the feeds that wire one kind to a manager;
//!   [`cni_server`]: the CNI socket, the other input;
//! * [`calc`]: pure computation, API objects in, desired state out
//!   (routes, NAT, BGP sessions and announcements, endpoint records);
//! * [`dataplane`]: one manager per kernel object (routes, the policy
//!   table, the NAT table, endpoints), each the object's only writer, all
//!   with one reconcile shape ([`dataplane::Manager`]);
//! * [`bgp`]: the embedded speaker, kept in line with the datastore; its
//!   best routes go to the route manager;
//! * [`status`], [`health`], [`metrics`]: what the node reports — the
//!   NodeStatus object, `/healthz` and `/readyz`, Prometheus `/metrics`;
//! * [`agent`]: start-up order and wiring; [`names`] (re-exported from
//!   twill-api, which twillctl shares): veth names.
//!
//! Every route felix writes carries [`RTPROT_TWILL`]; it never touches
//! routes of another protocol.

pub mod agent;
pub mod bgp;
pub mod calc;
pub mod cni_server;
pub mod dataplane;
pub mod health;
pub mod metrics;
pub use twill_api::names;
pub mod status;
pub mod watch;

/// Twill's routing protocol number (`ip route show proto 116`). Chosen
/// outside every number in iproute2's rt_protos and those used by BIRD (12),
/// FRR (11, 186-192), Calico (80) and kube-router, so Twill can find exactly
/// its own routes and nobody else's.
pub const RTPROT_TWILL: u8 = 116;
