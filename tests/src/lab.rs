//! A `twillctl lab` for tests: `Lab::up` runs the real `twillctl lab up` in
//! a directory and with a namespace prefix of its own (so labs in parallel
//! tests do not meet), and dropping it runs `lab down` — and, if that fails,
//! removes by hand exactly what `lab.json` recorded (namespaces by name,
//! processes by PID after checking their command line).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::peers::{Flavor, Peer};
use crate::{bins, unique_name};

/// The lab's GoBGP API address (in the ToR namespace).
pub const GOBGP_API: &str = "127.0.0.1:50051";

pub struct Lab {
    pub dir: PathBuf,
    pub name: String,
    /// `lab up`'s standard output (status and the connectivity matrix).
    pub up_output: String,
    pub up_ok: bool,
    _tmp: tempfile::TempDir,
}

fn twillctl() -> Command {
    Command::new(bins::binary("twillctl"))
}

impl Lab {
    /// `twillctl lab up` with these extra arguments (e.g. `--nodes 3 --tor bird`).
    /// Panics when it cannot even start; `up_ok` says whether every pod reached every pod.
    pub fn up(args: &[&str]) -> Lab {
        Lab::up_in(args, false)
    }

    /// `Lab::up` in a directory whose parent only root may enter (mode
    /// 0700), as a private home or temporary directory is.
    pub fn up_private(args: &[&str]) -> Lab {
        Lab::up_in(args, true)
    }

    fn up_in(args: &[&str], private: bool) -> Lab {
        let tmp = tempfile::tempdir().expect("temp dir");
        if private {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700))
                .expect("chmod 0700");
        }
        let dir = tmp.path().join("lab");
        let name = unique_name("t");
        let out = twillctl()
            .args(["lab", "up", "--dir"])
            .arg(&dir)
            .args(["--name", &name])
            .args(args)
            .output()
            .expect("run twillctl lab up");
        let lab = Lab {
            dir,
            name,
            up_output: String::from_utf8_lossy(&out.stdout).into_owned(),
            up_ok: out.status.success(),
            _tmp: tmp,
        };
        assert!(
            lab.dir.join("lab.json").exists() && lab.state()["pod_ips"].is_object(),
            "lab up failed before recording anything:\n{}\n{}",
            lab.up_output,
            String::from_utf8_lossy(&out.stderr)
        );
        if !lab.up_ok {
            eprintln!(
                "lab up said:\n{}\n{}",
                lab.up_output,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        lab
    }

    /// The lab's record (`lab.json`).
    pub fn state(&self) -> Value {
        std::fs::read(self.dir.join("lab.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    pub fn pod_ip(&self, pod: &str) -> String {
        self.state()["pod_ips"][pod]
            .as_str()
            .unwrap_or_else(|| panic!("no pod {pod} in the lab"))
            .to_string()
    }

    /// A pod's IPv6 address (dual-stack labs).
    pub fn pod_ip6(&self, pod: &str) -> String {
        self.state()["pod_ips6"][pod]
            .as_str()
            .unwrap_or_else(|| panic!("no IPv6 address for pod {pod} in the lab"))
            .to_string()
    }

    /// The namespace of a node, pod or `tor`.
    pub fn ns(&self, target: &str) -> String {
        if target == "tor" {
            format!("{}-tor", self.name)
        } else {
            format!("{}-{target}", self.name)
        }
    }

    /// Runs a command in a node's, pod's or the ToR's namespace.
    pub fn exec(&self, target: &str, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(target)])
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .expect("ip netns exec")
    }

    /// stdout of a command that must succeed.
    pub fn sh(&self, target: &str, cmd: &[&str]) -> String {
        let o = self.exec(target, cmd);
        assert!(
            o.status.success(),
            "{cmd:?} in {target} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Does `from` (a pod) answer ping to `ip` within a second?
    pub fn ping(&self, from: &str, ip: &str) -> bool {
        self.exec(from, &["ping", "-c1", "-W1", "-q", ip])
            .status
            .success()
    }

    /// Routes with Twill's protocol number in a node's namespace.
    pub fn twill_routes(&self, node: &str) -> String {
        self.sh(node, &["ip", "route", "show", "proto", "116"])
    }

    /// BIRD's table in the ToR (the lab's BIRD control socket).
    pub fn bird_routes(&self) -> String {
        self.tor(Flavor::Bird).cli(&["show", "route"])
    }

    /// Any twillctl command against the lab's store.
    pub fn twillctl(&self, args: &[&str]) -> Output {
        twillctl()
            .arg("--path")
            .arg(self.dir.join("twill.db"))
            .args(args)
            .output()
            .expect("run twillctl")
    }

    /// `twillctl apply -f` of a manifest; panics with twillctl's output
    /// when it is refused.
    pub fn apply(&self, yaml: &str) {
        let dir = tempfile::tempdir().expect("temp dir");
        let f = dir.path().join("obj.yaml");
        std::fs::write(&f, yaml).expect("write manifest");
        let out = self.twillctl(&["apply", "-f", f.to_str().expect("utf-8")]);
        assert!(
            out.status.success(),
            "apply: {}{}\n{yaml}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `twillctl get KIND NAME -n NAMESPACE -o json` (Null when absent).
    pub fn get_json(&self, kind: &str, namespace: &str, name: &str) -> Value {
        let out = self.twillctl(&["get", kind, name, "-n", namespace, "-o", "json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// `twillctl lab --dir DIR ARGS` (any lab subcommand).
    pub fn lab(&self, args: &[&str]) -> Output {
        twillctl()
            .arg("lab")
            .arg("--dir")
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run twillctl lab")
    }

    /// `twillctl lab exec FROM -- twillctl lab probe IP PORT`: does `ip`
    /// answer on `port` (e.g. `80/TCP`) from the pod `from`? Returns the
    /// answer (the responding pod's name) or None.
    pub fn probe(&self, from: &str, ip: &str, port: &str) -> Option<String> {
        let me = bins::binary("twillctl");
        let me = me.to_str().expect("utf-8 path");
        let out = self.lab(&[
            "exec",
            from,
            "--",
            me,
            "lab",
            "probe",
            ip,
            port,
            "--timeout-ms",
            "700",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return None;
        }
        let answer = text.split("answered").nth(1)?.trim().trim_matches('"');
        Some(answer.to_string())
    }

    /// The ToR FRR's socket directory (its own, under /run), from lab.json.
    pub fn frr_dir(&self) -> PathBuf {
        self.state()["frr_dir"]
            .as_str()
            .map(PathBuf::from)
            .unwrap_or_else(|| self.dir.join("tor"))
    }

    /// The lab's ToR (`--tor bird|frr|gobgp`) for queries; the lab owns
    /// its process.
    pub fn tor(&self, flavor: Flavor) -> Peer {
        let dir = match flavor {
            Flavor::Frr => self.frr_dir(),
            _ => self.dir.join("tor"),
        };
        Peer::attach(flavor, &self.ns("tor"), &dir, GOBGP_API)
    }

    /// `twillctl lab restart NODE [--kill]`.
    pub fn restart(&self, node: &str, kill: bool) -> Output {
        let mut c = twillctl();
        c.args(["lab", "restart", node, "--dir"]).arg(&self.dir);
        if kill {
            c.arg("--kill");
        }
        c.output().expect("run twillctl lab restart")
    }

    /// Every IPAM block in the lab's store: CIDR → the node it is affine to
    /// (None for a block without affinity).
    pub fn blocks(&self) -> std::collections::BTreeMap<String, Option<String>> {
        let out = self.twillctl(&["get", "ipamblocks", "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let items = v["items"]
            .as_array()
            .cloned()
            .or_else(|| v.as_array().cloned())
            .unwrap_or_default();
        items
            .iter()
            .filter_map(|b| {
                Some((
                    b["spec"]["cidr"].as_str()?.to_string(),
                    b["spec"]["affinity"].as_str().map(str::to_string),
                ))
            })
            .collect()
    }

    /// `node`'s twill-node log: its path and text (or why it is unreadable).
    fn log(&self, node: &str) -> (PathBuf, String) {
        let path = self.dir.join(node).join("twill-node.log");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()));
        (path, text)
    }

    /// The last 60 lines of `node`'s twill-node log (without a backtrace),
    /// for a failure message about its BGP sessions.
    pub fn log_tail(&self, node: &str) -> String {
        let (path, text) = self.log(node);
        // An error's backtrace would push the error itself out of view.
        let lines: Vec<&str> = text
            .lines()
            .take_while(|l| !l.contains("Stack backtrace:"))
            .collect();
        let from = lines.len().saturating_sub(60);
        format!("--- {} ---\n{}", path.display(), lines[from..].join("\n"))
    }

    /// The lines of `node`'s twill-node log that contain `needle`, for a
    /// failure message about one subsystem (the LoadBalancer allocator's
    /// "LoadBalancer address" lines, say).
    pub fn log_lines(&self, node: &str, needle: &str) -> String {
        let (path, text) = self.log(node);
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
        format!(
            "--- {} ({needle}) ---\n{}",
            path.display(),
            lines.join("\n")
        )
    }

    /// `node`'s status (as `twillctl node status -o json` prints it) and
    /// the log tails of `logs_of`, for a failure message about sessions.
    pub fn sessions_report(&self, node: &str, logs_of: &[&str]) -> String {
        let status = self.twillctl(&["node", "status", node, "-o", "json"]);
        let mut out = String::from_utf8_lossy(&status.stdout).into_owned();
        for n in logs_of {
            out.push('\n');
            out.push_str(&self.log_tail(n));
        }
        out
    }

    /// Pings `dst` from `pod` at 100 packets a second for 12 s while n2's
    /// twill-node is killed (SIGKILL) and then n1's stopped (SIGTERM), each
    /// restarted by `lab restart`; returns (sent, received, ping's output).
    pub fn ping_across_restarts(&self, pod: &str, dst: &str) -> (u64, u64, String) {
        let ping = Command::new("ip")
            .args(["netns", "exec", &self.ns(pod), "ping", "-i", "0.01"])
            .args(["-c", "1200", "-W", "1", "-q", dst])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ping");
        for (node, kill) in [("n2", true), ("n1", false)] {
            std::thread::sleep(std::time::Duration::from_secs(2));
            let r = self.restart(node, kill);
            assert!(
                r.status.success(),
                "restart {node}: {}",
                String::from_utf8_lossy(&r.stderr)
            );
        }
        let out = ping.wait_with_output().expect("ping result");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (sent, got) = ping_counts(&text).unwrap_or_else(|| panic!("no ping summary: {text}"));
        (sent, got, text)
    }

    /// CNI `command` for a pod namespace through the node's twill-node,
    /// as a runtime calls twill-cni. Returns the parsed stdout and success.
    pub fn cni(&self, node: &str, command: &str, container_id: &str, netns: &str) -> (bool, Value) {
        use std::io::Write;
        let conf = serde_json::json!({
            "cniVersion": "1.1.0", "name": "twill", "type": "twill-cni",
            "socket": self.dir.join(node).join("cni.sock"),
        });
        let mut child = Command::new(bins::binary("twill-cni"))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", format!("/run/netns/{netns}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run twill-cni");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.to_string().as_bytes())
            .expect("write config");
        let out = child.wait_with_output().expect("twill-cni");
        let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.success(), v)
    }
}

fn alive(pid: i64, marker: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(marker))
        .unwrap_or(false)
}

fn force_down(dir: &Path) {
    let Some(st) = std::fs::read(dir.join("lab.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    else {
        return;
    };
    for p in st["processes"].as_array().into_iter().flatten() {
        let (Some(pid), Some(marker)) = (p["pid"].as_i64(), p["marker"].as_str()) else {
            continue;
        };
        if alive(pid, marker) {
            // SAFETY: a PID the lab recorded, checked to still be that program.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
    for ns in st["namespaces"].as_array().into_iter().flatten().rev() {
        if let Some(ns) = ns.as_str() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// `twillctl lab down --dir DIR`, and when that fails, removal by hand of
/// exactly what `lab.json` recorded. For any lab a test or benchmark started.
pub fn down(dir: &Path) {
    let ok = twillctl()
        .args(["lab", "down", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        force_down(dir);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        down(&self.dir);
    }
}

/// (transmitted, received) from ping's summary line.
pub fn ping_counts(out: &str) -> Option<(u64, u64)> {
    let line = out.lines().find(|l| l.contains("packets transmitted"))?;
    let mut nums = line.split(',').map(|p| {
        p.split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
    });
    Some((nums.next()??, nums.next()??))
}
