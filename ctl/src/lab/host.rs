//! Running things on the host: commands to completion, long-running
//! processes started in a network namespace and detached, and the checks
//! for root and for the programs the lab needs.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Fails unless we are root (namespaces need it).
pub(super) fn need_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("twillctl lab needs root: it creates network namespaces");
    }
    Ok(())
}

/// Runs a command to completion; its stderr becomes the error.
pub(super) fn run_cmd(prog: &str, args: &[&str]) -> anyhow::Result<()> {
    output_of(prog, args).map(drop)
}

/// Runs a command to completion and returns what it printed; its stderr
/// becomes the error.
pub(super) fn output_of(prog: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| {
            format!("running {prog}: is it installed? (scripts/deps.sh installs it)")
        })?;
    if !out.status.success() {
        bail!(
            "`{prog} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A Twill binary next to twillctl (the build puts them together), else on PATH.
pub(super) fn sibling(name: &str) -> PathBuf {
    if let Ok(me) = std::env::current_exe()
        && let Some(d) = me.parent()
    {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from(name)
}

pub(super) fn need(prog: &str) -> anyhow::Result<()> {
    let found = if prog.contains('/') {
        Path::new(prog).is_file()
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
            .unwrap_or(false)
    };
    if !found {
        bail!(
            "{prog} is not installed: run scripts/deps.sh (or apt-get install the package that has it)"
        );
    }
    Ok(())
}

/// Starts a long-running process in a namespace, detached from our session,
/// output to `log`; returns its PID (`ip netns exec` execs, so the PID is the program's).
pub(super) fn spawn_in(ns: &str, prog: &Path, args: &[String], log: &Path) -> anyhow::Result<i32> {
    let f = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .env(
            "TWILL_LOG",
            std::env::var("TWILL_LOG").unwrap_or_else(|_| "info".into()),
        );
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", prog.display()))?;
    Ok(child.id() as i32)
}

/// `sysctl -qw SETTING` in a namespace.
pub(super) fn sysctl_in(ns: &str, setting: &str) -> anyhow::Result<()> {
    run_cmd("ip", &["netns", "exec", ns, "sysctl", "-qw", setting])
}

pub(super) fn wait_for(
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what} did not happen within {}s", timeout.as_secs())
}

pub(super) fn read_pid(file: &Path) -> Option<i32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}
