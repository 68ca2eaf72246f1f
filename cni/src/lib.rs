//! twill-cni's shared half: the CNI spec's types (network configuration,
//! results and errors in every cniVersion Twill answers) and the request /
//! response that travel over the unix socket between the plugin and
//! twill-node. serde only — no async runtime, no Kubernetes client — because
//! the plugin is exec'd for every pod.

pub mod protocol;
pub mod spec;
