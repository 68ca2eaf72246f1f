//! The harness every kernel-facing test shares: network namespaces, veth
//! links and child processes wrapped in guards that clean up on drop — also
//! when the test fails — by the name or PID they recorded (never by process
//! name), plus `require` checks that fail a test with the reason when a
//! prerequisite (root, a binary) is missing instead of skipping it.
//! [`schema`] validates objects against a CRD's OpenAPI schema; [`kube_local`]
//! starts a real kube-apiserver for one test.

pub mod bins;
pub mod cni;
pub mod kube_local;
pub mod lab;
pub mod netns;
pub mod node;
pub mod peers;
pub mod process;
pub mod require;
pub mod schema;
pub mod services;
pub mod wait;

pub use netns::{Netns, unique_name, veth_between};
pub use node::TestNode;
pub use process::Daemon;
pub use require::{require_binary, require_root};
pub use wait::wait_until;
