//! BGP sessions, one driver task per peer.
//!
//! - `fsm`: the pure RFC 4271 §8 state machine (and OPEN negotiation in
//!   `fsm::open`).
//! - `driver`: runs the FSM for one peer: timers, connections, and the
//!   events it sends the instance task (`speaker::events`).
//! - `collision`: a second connection to the same peer (RFC 4271 §6.8).
//! - `conn`: one TCP connection's reader and writer tasks, the send-queue
//!   bound and the RFC 9687 send hold timer.
//! - `adapt`: the codec's OPEN and NOTIFICATION to the FSM's view of them.
//! - `ratelog`: the rate limit for log lines a remote party can trigger.

mod adapt;
mod collision;
mod conn;
pub(crate) mod driver;
pub mod fsm;
pub mod ratelog;

use std::time::Duration;

use tokio::net::TcpStream;

use crate::rib::Export;
use crate::types::Afi;

/// What the instance task tells a peer's driver.
#[derive(Debug)]
pub(crate) enum Command {
    /// A connection from the peer, accepted by the listener.
    Incoming(TcpStream),
    /// Cease/Administrative Shutdown when up, and end the task.
    Stop,
    /// The peer's BFD session went from Up to Down: Cease/BFD Down.
    BfdDown,
    /// The peer's Adj-RIB-Out has changes: ask for them (`Event::ExportsWanted`)
    /// when session `session` is still up. One at a time, so changes made
    /// meanwhile are taken together and the channel stays short.
    ExportsPending { session: u64 },
    /// Adj-RIB-Out deltas to encode and send on Established session
    /// `session` (dropped if that session is gone), then End-of-RIB for
    /// `end_of_rib` (the initial table).
    Send {
        session: u64,
        exports: Vec<Export>,
        end_of_rib: Vec<Afi>,
    },
    /// The peer passed its max-prefix limit: Cease/1, stay down `wait`.
    MaxPrefix { session: u64, wait: Duration },
}
