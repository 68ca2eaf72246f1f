//! The BGP speaker. Built by the bgpd issue; this crate holds its place in the workspace.
