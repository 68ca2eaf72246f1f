//! A real kube-apiserver (v1.20.2) with its own etcd for one test: started
//! by `scripts/k8s-local.sh start` from the binaries `k8s-local.sh build`
//! put in the machine's cache, in a temporary directory on free loopback
//! ports, so no two runs share an instance; stopped by the PIDs that start
//! recorded when the guard drops (also when the test fails).
//!
//! It gives an admin kubeconfig, runs `kubectl` against the instance, mints
//! ServiceAccount tokens (TokenRequest), reads the audit log of requests
//! made by twill-system ServiceAccounts, and relays the server into a
//! network namespace ([`Relay`]: the server listens on the host's loopback,
//! which a namespace cannot reach).

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Netns;

/// Where `scripts/k8s-local.sh build` keeps the binaries (as the script's default).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("K8S_LOCAL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/twill/k8s-local"))
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Three ports free on 127.0.0.1 right now (held together while chosen so
/// they differ).
fn free_ports() -> [u16; 3] {
    let l: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port"))
        .collect();
    let p: Vec<u16> = l
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect();
    [p[0], p[1], p[2]]
}

/// One etcd + kube-apiserver, owned by the test.
pub struct KubeApi {
    dir: tempfile::TempDir,
    /// The API server's port on 127.0.0.1.
    pub port: u16,
    etcd_port: u16,
    etcd_peer_port: u16,
    /// PIDs this guard started (component name, PID).
    pids: Vec<(String, i32)>,
    /// When each start of kube-apiserver began and when it was ready.
    starts: Vec<(jiff::Timestamp, jiff::Timestamp)>,
}

impl KubeApi {
    /// Starts etcd and kube-apiserver and waits until the server is ready.
    /// Fails with the reason when the binaries or kubectl are missing.
    pub fn start() -> KubeApi {
        let cache = cache_dir();
        assert!(
            cache.join("bin/kube-apiserver").is_file(),
            "no kube-apiserver in {}: run `scripts/k8s-local.sh build` (scripts/test.sh does; \
             needs the packages scripts/deps.sh installs)",
            cache.join("bin").display()
        );
        crate::require_binary("etcdctl", "etcd-client");
        crate::require_binary("kubectl", "kubernetes-client");
        crate::require_binary("openssl", "openssl");
        crate::require_binary("curl", "curl");
        let dir = tempfile::Builder::new()
            .prefix("twill-kube.")
            .tempdir()
            .expect("temporary directory");
        let [port, etcd_port, etcd_peer_port] = free_ports();
        let mut api = KubeApi {
            dir,
            port,
            etcd_port,
            etcd_peer_port,
            pids: Vec::new(),
            starts: Vec::new(),
        };
        let t0 = Instant::now();
        api.start_component("all");
        eprintln!(
            "kube-apiserver on 127.0.0.1:{port} ready in {:.1} s ({})",
            t0.elapsed().as_secs_f64(),
            api.dir().display()
        );
        api
    }

    /// The instance's directory (pki, kubeconfig, logs, etcd data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The admin kubeconfig (static token, group system:masters).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir().join("kubeconfig")
    }

    /// The CA that signed the server's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir().join("pki/ca.crt")
    }

    fn script(&self, args: &[&str]) -> Output {
        Command::new(workspace().join("scripts/k8s-local.sh"))
            .args(args)
            .env("K8S_LOCAL_CACHE", cache_dir())
            .env("K8S_LOCAL_DIR", self.dir())
            .env("K8S_LOCAL_PORT", self.port.to_string())
            .env("K8S_LOCAL_ETCD_PORT", self.etcd_port.to_string())
            .env("K8S_LOCAL_ETCD_PEER_PORT", self.etcd_peer_port.to_string())
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/k8s-local.sh")
    }

    fn pid_of(&self, component: &str) -> Option<i32> {
        std::fs::read_to_string(self.dir().join(format!("run/{component}.pid")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    fn start_component(&mut self, what: &str) {
        let begun = jiff::Timestamp::now();
        let out = self.script(&["start", what]);
        self.starts.push((begun, jiff::Timestamp::now()));
        // Record the PIDs first, so the guard stops them even if start failed.
        for c in ["etcd", "apiserver"] {
            if let Some(pid) = self.pid_of(c)
                && !self.pids.iter().any(|(_, p)| *p == pid)
            {
                self.pids.push((c.to_string(), pid));
            }
        }
        assert!(
            out.status.success(),
            "k8s-local.sh start {what} failed: {}{}\napiserver log tail:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail("apiserver.log")
        );
    }

    /// The last lines of one of the instance's logs.
    pub fn log_tail(&self, file: &str) -> String {
        let text = std::fs::read_to_string(self.dir().join("log").join(file)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Stops only kube-apiserver (etcd keeps the data).
    pub fn stop_apiserver(&mut self) {
        if let Some(pid) = self.pid_of("apiserver") {
            kill_and_wait(pid);
            self.pids.retain(|(_, p)| *p != pid);
        }
        let _ = std::fs::remove_file(self.dir().join("run/apiserver.pid"));
    }

    /// Starts kube-apiserver again and waits until it is ready.
    pub fn start_apiserver(&mut self) {
        self.start_component("apiserver");
    }

    /// `kubectl --kubeconfig ADMIN ARGS`, any status.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_in(args, None)
    }

    /// `kubectl` with `input` on stdin, any status.
    pub fn kubectl_in(&self, args: &[&str], input: Option<&str>) -> Output {
        kubectl_with(&self.kubeconfig(), args, input)
    }

    /// `kubectl ARGS`; panics with stderr unless it succeeds; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply --server-side -f -` of `yaml`; panics unless it succeeds.
    pub fn apply(&self, yaml: &str) -> String {
        let out = self.kubectl_in(&["apply", "--server-side", "-f", "-"], Some(yaml));
        assert!(
            out.status.success(),
            "kubectl apply --server-side failed: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl get -o json ARGS` parsed.
    pub fn get_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["get", "-o", "json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.kubectl_ok(&a)).expect("kubectl get -o json output")
    }

    /// A token for ServiceAccount `namespace/name` from the TokenRequest
    /// API (`kubectl create token`), valid for an hour.
    pub fn token(&self, namespace: &str, name: &str) -> String {
        let t = self.kubectl_ok(&["create", "token", name, "-n", namespace, "--duration=3600s"]);
        let t = t.trim().to_string();
        assert!(
            t.split('.').count() == 3,
            "TokenRequest for {namespace}/{name} returned no JWT: {t:?}"
        );
        t
    }

    /// Writes a kubeconfig that authenticates with `token` to
    /// https://127.0.0.1:PORT (the server itself, or a [`Relay`] on the same
    /// port inside a namespace) and returns its path.
    pub fn kubeconfig_with_token(&self, file: &str, token: &str) -> PathBuf {
        let path = self.dir().join(file);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: k8s-local\n  cluster:\n    \
             server: https://127.0.0.1:{}\n    certificate-authority: {}\nusers:\n- name: sa\n  \
             user:\n    token: {token}\ncontexts:\n- name: sa\n  context: {{cluster: k8s-local, \
             user: sa}}\ncurrent-context: sa\n",
            self.port,
            self.ca().display()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Every audit event so far (requests of twill-system ServiceAccounts,
    /// metadata level, one per finished request).
    pub fn audit_events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir().join("log/audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Whether `at` falls into one of the server's own start-ups: from the
    /// start until `settle` after it answered ready. Right after a restart
    /// the server answers before its RBAC caches are filled and refuses
    /// requests it would allow a moment later.
    pub fn in_start_up(&self, at: jiff::Timestamp, settle: Duration) -> bool {
        let settle = jiff::SignedDuration::try_from(settle).unwrap_or_default();
        self.starts
            .iter()
            .any(|(begun, ready)| at >= *begun && at <= *ready + settle)
    }

    /// Relays this server into `ns`: 127.0.0.1:PORT inside the namespace
    /// reaches the server.
    pub fn relay_into(&self, ns: &Netns) -> Relay {
        Relay::start(ns, self.port)
    }
}

/// `kubectl --kubeconfig CONFIG ARGS` with optional stdin; kubectl's
/// discovery cache goes next to the kubeconfig, not into the user's home.
pub fn kubectl_with(kubeconfig: &Path, args: &[&str], input: Option<&str>) -> Output {
    let cache = kubeconfig
        .parent()
        .unwrap_or(Path::new("."))
        .join("kubectl-cache");
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    if let Some(text) = input {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write kubectl stdin");
    }
    child.wait_with_output().expect("kubectl")
}

fn kill_and_wait(pid: i32) {
    // SAFETY: signalling a PID this guard's start recorded.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    // SAFETY: signal 0 only probes.
    while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe {
        if libc::kill(pid, 0) == 0 {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    // The processes were started detached (setsid), so they are not our
    // children and need no reaping; wait until the PID is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    // SAFETY: as above.
    while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        // The API server first, then etcd; only the PIDs this guard started.
        let mut pids = std::mem::take(&mut self.pids);
        pids.sort_by_key(|(c, _)| c != "apiserver");
        for (_, pid) in pids {
            kill_and_wait(pid);
        }
        if std::thread::panicking() {
            eprintln!(
                "kube-apiserver log tail ({}):\n{}",
                self.dir().display(),
                self.log_tail("apiserver.log")
            );
        }
    }
}

/// A TCP relay: a listener on 127.0.0.1:PORT inside a network namespace,
/// each connection forwarded to 127.0.0.1:PORT of the test's own namespace.
/// Stops accepting when dropped; open connections end with their peers.
pub struct Relay {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(ns: &Netns, port: u16) -> Relay {
        let listener = crate::netns::spawn_in(ns.name(), move || {
            TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        })
        .join()
        .expect("relay listener thread")
        .unwrap_or_else(|e| panic!("relay: bind 127.0.0.1:{port} in the namespace: {e}"));
        listener.set_nonblocking(true).expect("non-blocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        std::thread::spawn(move || pipe(client, upstream));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Relay {
            stop,
            thread: Some(thread),
        }
    }
}

fn pipe(client: TcpStream, upstream: SocketAddr) {
    let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2)) else {
        // The server is down: the client sees the connection close.
        return;
    };
    let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let mut c = client;
        let mut s = server;
        let _ = std::io::copy(&mut c, &mut s);
        let _ = s.shutdown(std::net::Shutdown::Both);
        let _ = c.shutdown(std::net::Shutdown::Both);
    });
    let _ = std::io::copy(&mut s2, &mut c2);
    let _ = c2.shutdown(std::net::Shutdown::Both);
    let _ = s2.shutdown(std::net::Shutdown::Both);
    let _ = up.join();
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
