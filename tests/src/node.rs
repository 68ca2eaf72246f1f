//! A Twill node for tests: a network namespace with twill-node running in
//! it against an embedded store file, and helpers to add and remove pods
//! through twill-cni.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::cni::{Attachment, CniOutput, call, call_env};
use crate::{Daemon, Netns, bins, wait_until};

/// twill-node in its own namespace.
pub struct TestNode {
    pub name: String,
    pub ns: Netns,
    pub dir: PathBuf,
    pub db: PathBuf,
    pub socket: PathBuf,
    pub daemon: Option<Daemon>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl TestNode {
    /// Creates the namespace (with `addr` on lo as the node's own address)
    /// and starts twill-node on the store at `db`.
    pub fn start(
        prefix: &str,
        name: &str,
        db: &Path,
        dir: &Path,
        addr: &str,
        extra: &[&str],
    ) -> TestNode {
        Self::start_with_env(prefix, name, db, dir, addr, extra, &[])
    }

    /// [`TestNode::start`] with environment variables for twill-node.
    pub fn start_with_env(
        prefix: &str,
        name: &str,
        db: &Path,
        dir: &Path,
        addr: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> TestNode {
        let ns = Netns::new(prefix);
        ns.ip(&["addr", "add", addr, "dev", "lo"]);
        TestNode::start_in(ns, name, db, dir, extra, env)
    }

    /// Starts twill-node in a namespace the caller prepared (links,
    /// addresses), with extra environment (e.g. `TWILL_DATASTORE=kubernetes`
    /// and a `KUBECONFIG`; `db` is then unused).
    pub fn start_in(
        ns: Netns,
        name: &str,
        db: &Path,
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> TestNode {
        let node = TestNode::spawn_in(ns, name, db, dir, extra, env);
        node.wait_socket();
        node
    }

    /// As [`TestNode::start_in`], without waiting for the CNI socket.
    pub fn spawn_in(
        ns: Netns,
        name: &str,
        db: &Path,
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> TestNode {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).expect("node dir");
        let mut node = TestNode {
            name: name.to_string(),
            ns,
            socket: dir.join("cni.sock"),
            db: db.to_path_buf(),
            dir,
            daemon: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        node.spawn();
        node
    }

    /// (Re)starts twill-node and waits until its CNI socket answers.
    pub fn launch(&mut self) {
        self.spawn();
        self.wait_socket();
    }

    /// Whether the CNI socket accepts a connection now.
    pub fn socket_open(&self) -> bool {
        std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
    }

    /// Waits up to 20 s for the CNI socket; panics with the log if it stays shut.
    pub fn wait_socket(&self) {
        assert!(
            wait_until(Duration::from_secs(20), || self.socket_open()),
            "twill-node {} did not open its CNI socket; log:\n{}",
            self.name,
            self.log()
        );
    }

    /// (Re)starts twill-node without waiting.
    pub fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let mut cmd = self
            .ns
            .command(bins::binary("twill-node").to_str().expect("utf-8 path"));
        cmd.args(["--node-name", &self.name])
            .arg("--path")
            .arg(&self.db)
            .arg("--cni-socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .args(&self.extra)
            .env("TWILL_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let log = self
            .dir
            .join(format!("twill-node.{}.log", std::process::id()));
        self.daemon = Some(Daemon::spawn(
            &format!("twill-node {}", self.name),
            &mut cmd,
            Some(&log),
        ));
    }

    /// The twill-node log so far.
    pub fn log(&self) -> String {
        let log = self
            .dir
            .join(format!("twill-node.{}.log", std::process::id()));
        std::fs::read_to_string(log).unwrap_or_default()
    }

    /// The network configuration for twill-cni on this node.
    pub fn netconf(&self, version: &str) -> Value {
        json!({"cniVersion": version, "name": "twill", "type": "twill-cni", "socket": self.socket})
    }

    fn att(container_id: &str, pod: &Netns, args: &str) -> Attachment {
        Attachment {
            container_id: container_id.to_string(),
            netns: format!("/run/netns/{}", pod.name()),
            ifname: "eth0".into(),
            args: args.to_string(),
        }
    }

    /// CNI ADD for a pod namespace.
    pub fn add(&self, container_id: &str, pod: &Netns) -> CniOutput {
        self.cni("ADD", container_id, pod, "")
    }

    /// CNI DEL.
    pub fn del(&self, container_id: &str, pod: &Netns) -> CniOutput {
        self.cni("DEL", container_id, pod, "")
    }

    /// Any CNI command with CNI_ARGS.
    pub fn cni(&self, command: &str, container_id: &str, pod: &Netns, args: &str) -> CniOutput {
        call(
            &self.ns,
            &bins::binary("twill-cni"),
            command,
            &Self::att(container_id, pod, args),
            &self.netconf("1.1.0"),
        )
    }

    /// A CNI call with a custom configuration and environment.
    pub fn cni_raw(
        &self,
        command: &str,
        att: &Attachment,
        config: &Value,
        env: &[(&str, &str)],
    ) -> CniOutput {
        call_env(
            &self.ns,
            &bins::binary("twill-cni"),
            command,
            att,
            config,
            env,
        )
    }

    /// Names of Twill's host-side veths in the node namespace.
    pub fn veths(&self) -> Vec<String> {
        self.ns
            .ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.len() == 15 && n.starts_with("tw"))
            .collect()
    }

    /// Routes with Twill's protocol number in the node namespace.
    pub fn twill_routes(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .ns
            .ip(&["route", "show", "proto", "116"])
            .lines()
            .map(str::to_string)
            .collect();
        v.extend(
            self.ns
                .ip(&["-6", "route", "show", "proto", "116"])
                .lines()
                .map(str::to_string),
        );
        v
    }
}
