//! The plugin ⇄ twill-node wire protocol: one JSON request line from the
//! plugin, one JSON response line back, over the unix socket named in the
//! network configuration. The plugin does no networking itself.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::spec::{CniError, CniResult};

/// What the runtime asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
}

/// A request from the plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub command: Command,
    #[serde(default)]
    pub container_id: String,
    /// Path of the pod's network namespace (may be empty or gone on DEL).
    #[serde(default)]
    pub netns: String,
    #[serde(default)]
    pub ifname: String,
    /// `CNI_ARGS`, parsed.
    #[serde(default)]
    pub args: BTreeMap<String, String>,
    /// The whole network configuration as the runtime passed it
    /// (runtimeConfig, prevResult, cni.dev/valid-attachments included).
    pub config: Value,
}

/// twill-node's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// ADD returns a result; the other commands return none.
    Ok(Option<CniResult>),
    Err(CniError),
}
