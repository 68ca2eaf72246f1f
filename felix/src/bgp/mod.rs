//! twill-node's BGP side: which sessions to run ([`peers`], pure, from the
//! datastore) and the node's own address.

pub mod address;
pub mod from_api;
pub mod peers;
pub mod run;
