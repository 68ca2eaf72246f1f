//! Acting on a running lab through its record: `lab restart` (stop a
//! node's twill-node and start it again with the same command line), `lab
//! exec` (a command in a node's, pod's or the ToR's namespace) and `lab
//! down` (every recorded process, then every recorded namespace).

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::host::{run_cmd, sibling, spawn_in, wait_for};
use super::state::{alive, exited, load, running_since, state_path};
use crate::UsageError;

pub(super) fn restart(dir: &Path, node: &str, kill: bool) -> anyhow::Result<ExitCode> {
    let mut st = load(dir)?;
    let what = format!("twill-node {node}");
    let (Some(n), Some(args)) = (
        st.plan.nodes.iter().find(|n| n.name == node).cloned(),
        st.node_args.get(node).cloned(),
    ) else {
        let names: Vec<&str> = st.plan.nodes.iter().map(|n| n.name.as_str()).collect();
        return Err(UsageError(format!(
            "no node {node:?} in the lab; there are: {}",
            names.join(", ")
        ))
        .into());
    };
    if let Some(p) = st.processes.iter().find(|p| p.what == what).cloned() {
        if alive(&p)
            && let Some(since) = running_since(p.pid)
        {
            let sig = if kill { libc::SIGKILL } else { libc::SIGTERM };
            // SAFETY: kill(2) on the PID we recorded, checked to still be twill-node.
            unsafe { libc::kill(p.pid, sig) };
            // Until it has closed its sockets, the successor cannot bind
            // the health port, and the old CNI socket still answers.
            wait_for(
                &format!("{what} (PID {}) to exit", p.pid),
                Duration::from_secs(10),
                || exited(p.pid, since),
            )?;
        }
        st.processes.retain(|q| q.what != what);
    }
    let ndir = dir.join(&n.name);
    let sock = ndir.join("cni.sock");
    let log = ndir.join("twill-node.log");
    let started = Instant::now();
    let pid = spawn_in(&n.ns, &sibling("twill-node"), &args, &log)?;
    st.add_proc(dir, &what, pid, "twill-node")?;
    let since = running_since(pid);
    let gone = || since.is_none_or(|s| exited(pid, s));
    wait_for(
        &format!("{what} opening its CNI socket"),
        Duration::from_secs(30),
        || std::os::unix::net::UnixStream::connect(&sock).is_ok() || gone(),
    )?;
    if gone() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let why: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().is_empty())
            .take_while(|l| !l.contains("Stack backtrace:"))
            .collect();
        anyhow::bail!(
            "{what} (PID {pid}) exited right after its start; the end of {}:\n{}",
            log.display(),
            why[why.len().saturating_sub(10)..].join("\n")
        );
    }
    println!(
        "{what} restarted ({}; PID {pid}); serving again after {} ms",
        if kill { "SIGKILL" } else { "SIGTERM" },
        started.elapsed().as_millis()
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) fn exec(dir: &Path, target: &str, command: &[String]) -> anyhow::Result<ExitCode> {
    let st = load(dir)?;
    let Some(ns) = st.ns_of(target) else {
        let mut names: Vec<String> = vec!["tor".into()];
        names.extend(st.plan.nodes.iter().map(|n| n.name.clone()));
        names.extend(st.plan.pods.iter().map(|p| p.name.clone()));
        return Err(UsageError(format!(
            "no node or pod {target:?} in the lab; there are: {}",
            names.join(", ")
        ))
        .into());
    };
    let status = Command::new("ip")
        .args(["netns", "exec", &ns])
        .args(command)
        .status()
        .context("running ip netns exec")?;
    Ok(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
}

pub(super) fn down(dir: &Path) -> anyhow::Result<ExitCode> {
    let st = load(dir)?;
    let mut problems = Vec::new();
    // Processes first (newest first), by recorded PID, only if still ours.
    let mut signalled = Vec::new();
    for p in st.processes.iter().rev() {
        let Some(since) = running_since(p.pid).filter(|_| alive(p)) else {
            continue;
        };
        // SAFETY: kill(2) with a PID we started and just checked.
        unsafe { libc::kill(p.pid, libc::SIGTERM) };
        signalled.push((p.pid, since));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for &(pid, since) in &signalled {
        while !exited(pid, since) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !exited(pid, since) {
            // SAFETY: as above; the same process (its start time is unchanged).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    for ns in st.namespaces.iter().rev() {
        if Path::new("/run/netns").join(ns).exists()
            && let Err(e) = run_cmd("ip", &["netns", "del", ns])
        {
            problems.push(format!("{e:#}"));
        }
    }
    for p in &st.processes {
        if alive(p) {
            problems.push(format!("{} (PID {}) is still running", p.what, p.pid));
        }
    }
    if let Some(f) = &st.frr_dir
        && f.exists()
        && let Err(e) = std::fs::remove_dir_all(f)
    {
        problems.push(format!("removing {}: {e}", f.display()));
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("lab down: {p}");
        }
        eprintln!(
            "lab down: {} kept so you can retry",
            state_path(dir).display()
        );
        return Ok(ExitCode::from(1));
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    println!(
        "lab down: stopped {} processes, removed {} namespaces and {}",
        st.processes.len(),
        st.namespaces.len(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
