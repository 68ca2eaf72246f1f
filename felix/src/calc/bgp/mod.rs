//! BGP from the datastore (pure): this node's settings ([`local`]), which
//! sessions it runs ([`peers`]), each session's settings ([`session`]), import/export
//! policies and communities from the API types ([`from_api`]), what the
//! node announces ([`originate`]), and the node address ([`address`]).

pub mod address;
pub mod from_api;
pub mod local;
pub mod originate;
pub mod peers;
pub mod session;
