//! Bidirectional Forwarding Detection for BGP sessions: RFC 5880
//! asynchronous mode, single hop (RFC 5881), as a BGP client (RFC 5882).
//!
//! `packet` is the 24-byte control packet codec with the §6.8.6 checks;
//! `session` is the pure per-peer state machine (time comes in as an
//! argument, so tests drive it with a fake clock); `driver` is the tokio
//! side: UDP port 3784 with the TTL-255 check, one task per peer. No
//! authentication and no echo function; demand mode is never requested.
//! When a session goes from Up to Down the peer's BGP session is torn
//! down (Cease/BFD Down) and its routes are withdrawn at once.

pub mod driver;
pub mod packet;
pub mod session;
