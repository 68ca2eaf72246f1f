//! Twill's embedded BGP-4 speaker.
//!
//! Layout: `types` (the shared vocabulary: prefixes, AS paths, attributes),
//! `wire` (the codec: one pass that checks every field as it reads it, typed
//! errors naming their NOTIFICATION), `rib` (Adj-RIB-In, Loc-RIB with the decision
//! process, Adj-RIB-Out; pure), `policy` (import/export filters; pure),
//! `session` (one driver task per peer around the pure FSM), `bfd`
//! (single-hop BFD: packet codec, pure session state machine, UDP driver), `speaker`
//! (the library API and the instance task that owns the RIB and the peer
//! table; picture in docs/bgp.md), `transport`
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
