//! Calling CNI plugins exactly as a container runtime does: network
//! configuration on stdin, CNI_* in the environment, result or error object
//! on stdout. Plugins run inside the node's namespace (the runtime's "host").

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::Netns;

/// Debian's reference plugins.
pub const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";

/// What one plugin call returned.
#[derive(Debug, Clone)]
pub struct CniOutput {
    pub success: bool,
    /// The parsed stdout (a result, an error object, or Null when empty).
    pub json: Value,
    pub stderr: String,
}

impl CniOutput {
    /// The CNI error code, when the call failed.
    pub fn code(&self) -> Option<u64> {
        self.json.get("code").and_then(Value::as_u64)
    }

    /// The result's addresses (`ips[].address`).
    pub fn addresses(&self) -> Vec<String> {
        self.json["ips"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["address"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One attachment's parameters.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    /// Path of the pod's network namespace.
    pub netns: String,
    pub ifname: String,
    pub args: String,
}

/// Runs `plugin` (a path) for `command` inside `host`, with `config` on stdin.
pub fn call(
    host: &Netns,
    plugin: &std::path::Path,
    command: &str,
    att: &Attachment,
    config: &Value,
) -> CniOutput {
    call_env(host, plugin, command, att, config, &[])
}

/// Like [`call`], with extra environment overrides (empty value removes a variable).
pub fn call_env(
    host: &Netns,
    plugin: &std::path::Path,
    command: &str,
    att: &Attachment,
    config: &Value,
    env: &[(&str, &str)],
) -> CniOutput {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", host.name()])
        .arg(plugin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &att.container_id)
        .env("CNI_NETNS", &att.netns)
        .env("CNI_IFNAME", &att.ifname)
        .env("CNI_ARGS", &att.args)
        .env("CNI_PATH", CNI_PLUGIN_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    let mut child = cmd.spawn().expect("start CNI plugin");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(config.to_string().as_bytes());
    }
    let out = child.wait_with_output().expect("wait for CNI plugin");
    let stdout = String::from_utf8_lossy(&out.stdout);
    CniOutput {
        success: out.status.success(),
        json: serde_json::from_str(stdout.trim()).unwrap_or(Value::Null),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs a network configuration list the way libcni does: ADD through the
/// plugins in order, each getting the previous result as `prevResult`; DEL
/// in reverse order. Returns the final result, or the first failure.
pub fn chain(
    host: &Netns,
    conflist: &Value,
    command: &str,
    att: &Attachment,
    runtime_config: &Value,
) -> Result<Value, CniOutput> {
    let version = conflist["cniVersion"].clone();
    let name = conflist["name"].clone();
    let mut plugins: Vec<Value> = conflist["plugins"].as_array().cloned().unwrap_or_default();
    if command == "DEL" {
        plugins.reverse();
    }
    let mut prev: Option<Value> = None;
    for p in plugins {
        let mut conf = p.clone();
        conf["cniVersion"] = version.clone();
        conf["name"] = name.clone();
        // Only capabilities a plugin declares are passed to it.
        if let Some(caps) = p.get("capabilities").and_then(Value::as_object) {
            let mut rc = json!({});
            for (cap, on) in caps {
                if on.as_bool() == Some(true)
                    && let Some(v) = runtime_config.get(cap)
                {
                    rc[cap] = v.clone();
                }
            }
            conf["runtimeConfig"] = rc;
        }
        if let Some(r) = &prev {
            conf["prevResult"] = r.clone();
        }
        let ty = p["type"].as_str().unwrap_or_default().to_string();
        let path = if ty == "twill-cni" {
            crate::bins::binary("twill-cni")
        } else {
            std::path::Path::new(CNI_PLUGIN_DIR).join(&ty)
        };
        let out = call(host, &path, command, att, &conf);
        if !out.success {
            return Err(out);
        }
        if command == "ADD" {
            prev = Some(out.json);
        }
    }
    Ok(prev.unwrap_or(Value::Null))
}
