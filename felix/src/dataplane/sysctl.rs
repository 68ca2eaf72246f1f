//! Reading and writing sysctls through /proc/sys. Network sysctls belong to
//! the network namespace of the calling thread, so these apply where the
//! caller runs (twill-node's node namespace, or a pod namespace from a
//! [`crate::dataplane::netns::in_netns`] worker).
//!
//! The root is `/proc/sys`, or `$TWILL_PROC_SYS` when set: a container that
//! is not privileged gets /proc/sys read-only, so the DaemonSet mounts the
//! host's /proc/sys/net at /host/proc/sys/net and sets TWILL_PROC_SYS to
//! /host/proc/sys (network sysctls still follow the opening thread's netns).

use std::path::PathBuf;

fn root() -> PathBuf {
    std::env::var_os("TWILL_PROC_SYS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/proc/sys"))
}

fn path(key: &str) -> PathBuf {
    root().join(key.replace('.', "/"))
}

/// Writes `value` to the sysctl `key` (dotted form, e.g. `net.ipv4.ip_forward`).
pub fn write(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(path(key), value)
}

/// Reads the sysctl `key`, trimmed.
pub fn read(key: &str) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path(key))?.trim().to_string())
}

/// The path of a per-interface key under `net.<family>.<section>.<if>`.
/// Interface names can contain dots, so the path is built segment by
/// segment.
fn if_path(family: &str, section: &str, ifname: &str, key: &str) -> PathBuf {
    root()
        .join("net")
        .join(family)
        .join(section)
        .join(ifname)
        .join(key)
}

/// Writes a per-interface key, e.g. `net.ipv4.conf.<if>.proxy_arp`.
pub fn write_if(family: &str, ifname: &str, key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(if_path(family, "conf", ifname, key), value)
}

/// Writes a per-interface neighbour sysctl, e.g. `net.ipv4.neigh.<if>.proxy_delay`.
pub fn write_neigh(family: &str, ifname: &str, key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(if_path(family, "neigh", ifname, key), value)
}

/// Reads a per-interface sysctl.
pub fn read_if(family: &str, ifname: &str, key: &str) -> std::io::Result<String> {
    Ok(
        std::fs::read_to_string(if_path(family, "conf", ifname, key))?
            .trim()
            .to_string(),
    )
}
