//! Child processes (peers, agents) that are stopped by their recorded PID
//! when the guard drops.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running process, killed (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    name: String,
    pid: i32,
    child: Option<Child>,
}

impl Daemon {
    /// Spawns `cmd` with its output going to `log` (or discarded).
    pub fn spawn(name: &str, cmd: &mut Command, log: Option<&std::path::Path>) -> Daemon {
        let (out, err) = match log {
            Some(path) => {
                let f = std::fs::File::create(path)
                    .unwrap_or_else(|e| panic!("create log {}: {e}", path.display()));
                let f2 = f.try_clone().expect("clone log file");
                (Stdio::from(f), Stdio::from(f2))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Daemon {
            name: name.to_string(),
            pid: child.id() as i32,
            child: Some(child),
        }
    }

    /// Adopts a process that daemonized itself and wrote its PID to a file
    /// (BIRD, FRR): waits up to 10 s for the file.
    pub fn from_pidfile(name: &str, pidfile: &std::path::Path) -> Daemon {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(s) = std::fs::read_to_string(pidfile)
                && let Ok(pid) = s.trim().parse::<i32>()
            {
                return Daemon {
                    name: name.to_string(),
                    pid,
                    child: None,
                };
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not write its PID file {}",
                pidfile.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        if let Some(c) = &mut self.child {
            return matches!(c.try_wait(), Ok(None));
        }
        // SAFETY: signal 0 only checks that the PID exists.
        unsafe { libc::kill(self.pid, 0) == 0 }
    }

    /// Sends a signal (e.g. `libc::SIGKILL` to simulate a crash).
    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to a PID we started.
        unsafe {
            libc::kill(self.pid, sig);
        }
    }

    /// Stops the process and waits for it: SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        if self.pid <= 0 {
            return;
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.alive() {
            self.signal(libc::SIGKILL);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        } else {
            let deadline = Instant::now() + Duration::from_secs(2);
            while self.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.pid = 0;
    }

    /// Kills with SIGKILL and reaps, leaving no chance to clean up (a crash).
    pub fn kill(&mut self) {
        if self.pid <= 0 {
            return;
        }
        self.signal(libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        self.pid = 0;
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}
