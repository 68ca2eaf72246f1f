//! Network namespaces and veth links owned by a test.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `PREFIX` + pid + counter. Keep
/// prefixes short: interface names built from it must fit 15 characters.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

/// Runs `ip ARGS` in the root namespace and panics with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = run(Command::new("ip").args(args));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a new thread inside the network namespace named `ns` (the
/// thread is never reused, so nothing else ever runs in that namespace by
/// accident).
pub fn spawn_in<R: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> std::thread::JoinHandle<R> {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        // SAFETY: a valid namespace fd; only this thread changes namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

/// A network namespace, deleted (with every process still inside it) on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `unique_name(prefix)` with `lo` up.
    pub fn new(prefix: &str) -> Netns {
        crate::require_root();
        let name = unique_name(prefix);
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs a command inside the namespace; returns its output (any status).
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        run(self.command(program).args(args))
    }

    /// Runs a command inside the namespace; panics with stderr on failure; returns stdout.
    pub fn exec_ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.exec(program, args);
        assert!(
            out.status.success(),
            "[{}] {program} {}: {}{}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> String {
        self.exec_ok("ip", args)
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec_ok("sysctl", &["-qw", &format!("{key}={value}")]);
    }

    /// Whether `ping -c1 -W1 ADDR` from this namespace succeeds.
    pub fn ping(&self, addr: &str) -> bool {
        self.exec("ping", &["-c1", "-W1", "-q", addr])
            .status
            .success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes a test started inside the namespace would keep it alive:
        // kill them by the PIDs the kernel lists for this namespace.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: these PIDs run inside the namespace this test created.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Creates a veth pair between two namespaces and sets each end's address
/// (CIDR form, e.g. `10.96.0.1/30`) and brings both up. The pair dies with
/// either namespace.
pub fn veth_between(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]);
    a.ip(&["addr", "add", a_addr, "dev", a_if]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["addr", "add", b_addr, "dev", b_if]);
    b.ip(&["link", "set", b_if, "up"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_link_up_and_clean_up_on_drop() {
        let name;
        {
            let a = Netns::new("twt");
            let b = Netns::new("twt");
            name = a.name().to_string();
            veth_between(&a, "va", "10.96.250.1/30", &b, "vb", "10.96.250.2/30");
            assert!(
                a.ping("10.96.250.2"),
                "veth between namespaces does not pass traffic"
            );
        }
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains(&name),
            "namespace {name} left behind"
        );
    }

    #[test]
    fn daemon_guard_kills_by_pid() {
        let pid;
        {
            let mut d = crate::Daemon::spawn("sleeper", Command::new("sleep").arg("600"), None);
            pid = d.pid();
            assert!(d.alive());
        }
        // SAFETY: probing a PID we started.
        assert_ne!(
            unsafe { libc::kill(pid, 0) },
            0,
            "process {pid} survived its guard"
        );
    }
}
