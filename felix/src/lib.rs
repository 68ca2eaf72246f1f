//! twill-felix: the node dataplane and the `twill-node` agent.
//!
//! * [`endpoint`]: pod endpoints (veth + pod namespace setup through
//!   rtnetlink), CNI ADD/DEL/CHECK/GC/STATUS, reconcile on start;
//! * [`cni_server`]: the unix socket twill-cni talks to;
//! * [`agent`]: twill-node itself — wires the datastore, IPAM, endpoints and
//!   the status report together;
//! * [`health`], [`metrics`]: `/healthz`, `/readyz` (named readiness
//!   conditions) and Prometheus `/metrics` on one port;
//! * [`nft`]: Twill's nftables table — applying it, reading it back, and
//!   the policy engine that renders it from the datastore;
//! * [`netns`], [`sysctl`]: small kernel helpers; [`names`] (re-exported
//!   from twill-api, which twillctl shares): veth names.
//!
//! Only felix writes Twill's kernel objects: every route it writes carries
//! [`RTPROT_TWILL`], and it never touches routes of another protocol.

pub mod agent;
pub mod bgp;
pub mod cni_server;
pub mod endpoint;
pub mod health;
pub mod metrics;
pub use twill_api::names;
pub mod nat;
pub mod netns;
pub mod nft;
pub mod routes;
pub mod status;
pub mod sysctl;

/// Twill's routing protocol number (`ip route show proto 116`). Chosen
/// outside every number in iproute2's rt_protos and those used by BIRD (12),
/// FRR (11, 186-192), Calico (80) and kube-router, so Twill can find exactly
/// its own routes and nobody else's.
pub const RTPROT_TWILL: u8 = 116;
