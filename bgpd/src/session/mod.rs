//! BGP sessions: the pure per-peer FSM (`fsm`), the tokio driver that
//! runs it over a TCP connection (`driver`), and the rate limit for log
//! lines a remote party can trigger (`ratelog`).

pub(crate) mod driver;
pub mod fsm;
pub mod ratelog;
