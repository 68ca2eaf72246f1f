//! BGP sessions: the pure per-peer FSM (`fsm`) and the tokio driver that
//! runs it over a TCP connection (`driver`).

pub(crate) mod driver;
pub mod fsm;
