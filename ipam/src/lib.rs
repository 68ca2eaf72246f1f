//! Block IPAM. Built by the pod networking issue; this crate holds its place in the workspace.
