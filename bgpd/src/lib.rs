//! Twill's embedded BGP-4 speaker.
//!
//! Layout: `types` (the shared vocabulary: prefixes, AS paths, attributes),
//! `wire` (the codec: one pass that checks every field as it reads it, typed
//! errors naming their NOTIFICATION), `rib` (Adj-RIB-In, Loc-RIB with the decision
//! process, Adj-RIB-Out; pure), `policy` (import/export filters; pure),
//! `session` (per-peer FSM on tokio, sockets with TCP MD5 and GTSM), `bfd`
//! (single-hop BFD: packet codec, pure session state machine, UDP driver), `speaker`
//! (peers + RIB + the channel felix reads best routes from), `transport`
//! (TCP MD5, GTSM and TTL socket options), `config` (the standalone YAML),
//! `status` (unix-socket status and HTTP metrics), `metrics` (Prometheus).

pub mod bfd;
pub mod config;
pub mod metrics;
pub mod policy;
pub mod rib;
pub mod session;
pub mod speaker;
pub mod status;
pub mod transport;
pub mod types;
pub mod wire;
