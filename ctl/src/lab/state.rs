//! The lab's record, `DIR/lab.json`: the plan and everything made so far
//! (namespaces by name, processes by PID and a word their command line must
//! contain), saved the moment each thing exists so that `lab down` removes
//! exactly what is there and never signals a reused PID.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::host::run_cmd;
use super::plan::Plan;

/// What the lab made, recorded as it is made.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) plan: Plan,
    pub(super) namespaces: Vec<String>,
    pub(super) processes: Vec<Proc>,
    pub(super) pod_ips: BTreeMap<String, String>,
    /// The pods' IPv6 addresses (dual-stack labs).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) pod_ips6: BTreeMap<String, String>,
    /// twill-node's command line per node, for `lab restart`.
    #[serde(default)]
    pub(super) node_args: BTreeMap<String, Vec<String>>,
    /// The ToR FRR's own run directory (sockets, PID files), when FRR runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) frr_dir: Option<PathBuf>,
    /// Host limits `lab up` raised (machine-wide; `lab down` leaves them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) raised: Vec<super::limits::Raised>,
    /// How long `lab up` took, by phase (for people and benchmarks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) timings: Option<Timings>,
}

/// `lab up`'s phases in seconds: building the rack (namespaces, links),
/// starting the agents until every CNI socket answers, creating the pods,
/// and from the last pod to the round in which every pod pair answered.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Timings {
    pub(super) rack_s: f64,
    pub(super) agents_s: f64,
    pub(super) pods_s: f64,
    pub(super) converge_s: f64,
    pub(super) rounds: u32,
    pub(super) pairs: usize,
    pub(super) converged: bool,
    /// From `lab up`'s start to the converged matrix.
    pub(super) total_s: f64,
}

/// A process the lab started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Proc {
    pub(super) what: String,
    pub(super) pid: i32,
    /// A word the process's command line must contain before we signal it.
    pub(super) marker: String,
}

pub(super) fn state_path(dir: &Path) -> PathBuf {
    dir.join("lab.json")
}

pub(super) fn load(dir: &Path) -> anyhow::Result<State> {
    let p = state_path(dir);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "no lab is up in {} (start one with `twillctl lab up`)",
                dir.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    serde_json::from_str(&text).with_context(|| format!("{} is not a lab record", p.display()))
}

impl State {
    pub(super) fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let p = state_path(dir);
        let tmp = dir.join("lab.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))?;
        Ok(())
    }

    pub(super) fn add_ns(&mut self, dir: &Path, ns: &str) -> anyhow::Result<()> {
        run_cmd("ip", &["netns", "add", ns])?;
        self.namespaces.push(ns.to_string());
        self.save(dir)?;
        run_cmd("ip", &["-n", ns, "link", "set", "lo", "up"])
    }

    pub(super) fn add_proc(
        &mut self,
        dir: &Path,
        what: &str,
        pid: i32,
        marker: &str,
    ) -> anyhow::Result<()> {
        self.processes.push(Proc {
            what: what.into(),
            pid,
            marker: marker.into(),
        });
        self.save(dir)
    }

    pub(super) fn ns_of(&self, target: &str) -> Option<String> {
        if target == "tor" {
            return Some(self.plan.tor_ns.clone());
        }
        self.plan
            .nodes
            .iter()
            .find(|n| n.name == target)
            .map(|n| n.ns.clone())
            .or_else(|| {
                self.plan
                    .pods
                    .iter()
                    .find(|p| p.name == target)
                    .map(|p| p.ns.clone())
            })
    }
}

pub(super) fn alive(p: &Proc) -> bool {
    std::fs::read(format!("/proc/{}/cmdline", p.pid))
        .map(|c| String::from_utf8_lossy(&c).contains(&p.marker))
        .unwrap_or(false)
}

/// The start time of process `pid` (clock ticks since boot, field 22 of
/// `/proc/PID/stat`) while it has not yet exited, None once it is gone or
/// a zombie without threads. A dying process loses its command line (what
/// [`alive`] reads) before the kernel closes its files and sockets, and the
/// main thread of a multi-threaded one is a zombie while other threads still
/// hold the shared file table; only when no thread is left are its sockets
/// closed, so this is what to wait for before a successor binds its ports.
pub(super) fn running_since(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if matches!(state, "Z" | "X" | "x") {
        let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
        if threads <= 1 {
            return None;
        }
    }
    // Field 3 was `state`; field 22 is 19 further on.
    fields.nth(18)?.parse().ok()
}

/// Whether the process that was `pid`, started at `since`, has exited
/// (its files closed); a new process reusing the PID does not count.
pub(super) fn exited(pid: i32, since: u64) -> bool {
    running_since(pid) != Some(since)
}

#[cfg(test)]
mod tests {
    use super::{exited, running_since};

    #[test]
    fn a_killed_process_has_exited_once_it_is_a_zombie_not_before_the_signal() {
        /// Kills and reaps the child even when an assertion fails.
        struct Reap(std::process::Child);
        impl Drop for Reap {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut child = Reap(
            std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .expect("start sleep"),
        );
        let pid = child.0.id() as i32;
        let since = running_since(pid).expect("a running child has a start time");
        assert!(!exited(pid, since), "sleep is running");
        assert!(
            exited(pid, since + 1),
            "another start time is another process"
        );
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !exited(pid, since) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Not reaped yet: a zombie, which has closed all its files.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("zombie stat");
        assert!(stat.contains(") Z "), "{stat}");
        assert!(exited(pid, since));
        child.0.wait().expect("reap sleep");
        assert!(exited(pid, since));
    }
}
