//! twill-policy: Kubernetes NetworkPolicy and Twill GlobalNetworkPolicy,
//! pure and without I/O.
//!
//! * [`cluster`]: datastore objects → model (twill-node and twillctl share it);
//! * [`model`]: endpoints, namespaces and both policy kinds compiled into
//!   one shape ([`model::Policy`]);
//! * [`explain`](mod@explain): the reference semantics — the verdict for a packet and
//!   why (`twillctl policy explain`);
//! * [`render`](mod@render): the model as Twill's nftables table for one node, as data
//!   ([`ir`]) printable as an nft script;
//! * [`incremental`]: the rendered table kept up to date change by change,
//!   re-rendering only what a change touches;
//! * [`diff`]: the incremental update between two rendered tables;
//! * [`refused`]: which policies a kernel refusal is due to, and the
//!   allow-nothing form they are enforced in until they change;
//! * [`interp`]: an interpreter of the rendered table, so tests can check
//!   that rules and model agree.
//!
//! Label selectors are the API crate's ([`twill_api::selector`]).

pub mod cluster;
pub mod diff;
pub mod explain;
pub mod incremental;
pub mod interp;
pub mod ir;
pub mod model;
pub mod refused;
pub mod render;

pub use explain::{Explanation, Packet, Verdict, explain};
pub use model::{
    Endpoint, Model, NamedPort, Policy, compile_global_policy, compile_network_policy,
};
pub use render::render;
