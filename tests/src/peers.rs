//! Real BGP speakers for interop tests, each inside a namespace the test
//! created, with its own directory for config, sockets and PID files, and a
//! guard that stops it by PID: BIRD 2 (`birdc`), FRR's bgpd (`vtysh`),
//! GoBGP (`gobgp`), and twill-bgpd itself (`twill-bgpd status`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::{Daemon, Netns, bins, require_binary, wait_until};

/// BIRD 2 in a namespace.
pub struct Bird {
    pub dir: PathBuf,
    pub ctl: PathBuf,
    pub daemon: Daemon,
    ns_name: String,
}

impl Bird {
    /// Starts `bird` with `conf` (written to DIR/bird.conf).
    pub fn start(ns: &Netns, dir: &Path, conf: &str) -> Bird {
        require_binary("bird", "bird2");
        require_binary("birdc", "bird2");
        std::fs::create_dir_all(dir).expect("bird dir");
        let cfg = dir.join("bird.conf");
        std::fs::write(&cfg, conf).expect("write bird.conf");
        let ctl = dir.join("bird.ctl");
        let pid = dir.join("bird.pid");
        let _ = std::fs::remove_file(&pid);
        let out = ns.exec(
            "bird",
            &[
                "-c",
                cfg.to_str().unwrap_or_default(),
                "-s",
                ctl.to_str().unwrap_or_default(),
                "-P",
                pid.to_str().unwrap_or_default(),
            ],
        );
        assert!(
            out.status.success(),
            "bird did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let daemon = Daemon::from_pidfile("bird", &pid);
        Bird {
            dir: dir.to_path_buf(),
            ctl,
            daemon,
            ns_name: ns.name().to_string(),
        }
    }

    /// `birdc -s CTL ARGS`, stdout.
    pub fn birdc(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns_name, "birdc", "-s"])
            .arg(&self.ctl)
            .args(args)
            .output()
            .expect("birdc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether protocol `name` is Established.
    pub fn established(&self, name: &str) -> bool {
        self.birdc(&["show", "protocols", name])
            .contains("Established")
    }
}

/// FRR's bgpd alone (no zebra) in a namespace.
pub struct Frr {
    pub dir: PathBuf,
    pub daemon: Daemon,
    ns_name: String,
}

impl Frr {
    pub fn start(ns: &Netns, dir: &Path, conf: &str, listen: &str) -> Frr {
        let bgpd = require_binary("/usr/lib/frr/bgpd", "frr");
        require_binary("vtysh", "frr");
        std::fs::create_dir_all(dir).expect("frr dir");
        let _ = Command::new("chmod").arg("777").arg(dir).status();
        let cfg = dir.join("bgpd.conf");
        std::fs::write(&cfg, conf).expect("write bgpd.conf");
        let pid = dir.join("bgpd.pid");
        let _ = std::fs::remove_file(&pid);
        let out = ns.exec(
            bgpd.to_str().unwrap_or_default(),
            &[
                "-d",
                "-S",
                "-Z",
                "-f",
                cfg.to_str().unwrap_or_default(),
                "-i",
                pid.to_str().unwrap_or_default(),
                "--vty_socket",
                dir.to_str().unwrap_or_default(),
                "-l",
                listen,
            ],
        );
        assert!(
            out.status.success(),
            "FRR bgpd did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let daemon = Daemon::from_pidfile("frr-bgpd", &pid);
        Frr {
            dir: dir.to_path_buf(),
            daemon,
            ns_name: ns.name().to_string(),
        }
    }

    pub fn vtysh(&self, cmd: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns_name, "vtysh", "--vty_socket"])
            .arg(&self.dir)
            .args(["-c", cmd])
            .output()
            .expect("vtysh");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// GoBGP in a namespace, its API on 127.0.0.1:`api_port` inside it.
pub struct Gobgp {
    pub daemon: Daemon,
    api: String,
    ns_name: String,
}

impl Gobgp {
    pub fn start(ns: &Netns, dir: &Path, toml: &str, api_port: u16) -> Gobgp {
        require_binary("gobgpd", "gobgpd");
        require_binary("gobgp", "gobgpd");
        std::fs::create_dir_all(dir).expect("gobgp dir");
        let cfg = dir.join("gobgp.toml");
        std::fs::write(&cfg, toml).expect("write gobgp.toml");
        let api = format!("127.0.0.1:{api_port}");
        let daemon = Daemon::spawn(
            "gobgpd",
            ns.command("gobgpd").args([
                "-f",
                cfg.to_str().unwrap_or_default(),
                "--api-hosts",
                &api,
            ]),
            Some(&dir.join("gobgpd.log")),
        );
        Gobgp {
            daemon,
            api,
            ns_name: ns.name().to_string(),
        }
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns_name,
                "gobgp",
                "--target",
                &self.api,
            ])
            .args(args)
            .output()
            .expect("gobgp");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// twill-bgpd in a namespace, run from a YAML config.
pub struct TwillBgpd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub daemon: Daemon,
    ns_name: String,
}

impl TwillBgpd {
    /// Writes `yaml` (its `status_socket` must be `{dir}/bgpd.sock`, see
    /// [`TwillBgpd::socket_for`]) and starts twill-bgpd; waits for the socket.
    pub fn start(ns: &Netns, dir: &Path, yaml: &str) -> TwillBgpd {
        std::fs::create_dir_all(dir).expect("twill dir");
        let config = dir.join("twill-bgpd.yaml");
        std::fs::write(&config, yaml).expect("write config");
        Self::spawn(ns, dir, config)
    }

    pub fn socket_for(dir: &Path) -> PathBuf {
        dir.join("bgpd.sock")
    }

    fn spawn(ns: &Netns, dir: &Path, config: PathBuf) -> TwillBgpd {
        let socket = Self::socket_for(dir);
        let _ = std::fs::remove_file(&socket);
        let bin = bins::binary("twill-bgpd");
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let daemon = Daemon::spawn(
            "twill-bgpd",
            ns.command(bin.to_str().unwrap_or_default())
                .args(["--config", config.to_str().unwrap_or_default()])
                .env("RUST_LOG", "info"),
            Some(&dir.join(format!("twill-bgpd.{n}.log"))),
        );
        assert!(
            wait_until(Duration::from_secs(10), || socket.exists()),
            "twill-bgpd did not open its status socket {}",
            socket.display()
        );
        TwillBgpd {
            dir: dir.to_path_buf(),
            socket,
            config,
            daemon,
            ns_name: ns.name().to_string(),
        }
    }

    /// Starts it again with the same config (after a crash or stop).
    pub fn restart(&mut self, ns: &Netns) {
        let next = Self::spawn(ns, &self.dir, self.config.clone());
        *self = next;
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(bins::binary("twill-bgpd"))
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("twill-bgpd status");
        let _ = &self.ns_name;
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `twill-bgpd status -o json`.
    pub fn status(&self) -> Vec<Value> {
        serde_json::from_str(&self.run(&["status", "-o", "json"])).unwrap_or_default()
    }

    /// `twill-bgpd metrics` (Prometheus text).
    pub fn metrics(&self) -> String {
        self.run(&["metrics"])
    }

    /// `twill-bgpd status` (the table).
    pub fn status_table(&self) -> String {
        self.run(&["status"])
    }

    /// The status of the peer at `addr`.
    pub fn peer(&self, addr: &str) -> Option<Value> {
        self.status()
            .into_iter()
            .find(|p| p["address"].as_str() == Some(addr))
    }

    pub fn established(&self, addr: &str) -> bool {
        self.peer(addr)
            .is_some_and(|p| p["state"].as_str() == Some("Established"))
    }

    /// Best routes: (prefix, next hops).
    pub fn routes(&self) -> Vec<(String, Vec<String>)> {
        let v: Value = serde_json::from_str(&self.run(&["routes"])).unwrap_or(Value::Null);
        v.as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                (
                    r["prefix"].as_str().unwrap_or_default().to_string(),
                    r["next_hops"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|n| n.as_str().map(str::to_string))
                        .collect(),
                )
            })
            .collect()
    }

    pub fn has_route(&self, prefix: &str) -> bool {
        self.routes().iter().any(|(p, _)| p == prefix)
    }

    /// The last lines of the logs, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        if let Ok(d) = std::fs::read_dir(&self.dir) {
            let mut logs: Vec<PathBuf> = d
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect();
            logs.sort();
            for l in logs {
                let text = std::fs::read_to_string(&l).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let start = lines.len().saturating_sub(30);
                out.push_str(&format!(
                    "== {}\n{}\n",
                    l.display(),
                    lines[start..].join("\n")
                ));
            }
        }
        out
    }
}

/// Adds an IPv6 address without duplicate address detection (usable at once).
pub fn add_v6(ns: &Netns, addr: &str, dev: &str) {
    ns.ip(&["addr", "add", addr, "dev", dev, "nodad"]);
}

/// A ToR namespace and a node namespace joined by a veth:
/// tor0 10.96.0.1/30 + fd96::1/64 ↔ node0 10.96.0.2/30 + fd96::2/64.
pub struct TorLink {
    pub tmp: tempfile::TempDir,
    pub tor: Netns,
    pub node: Netns,
}

impl TorLink {
    pub fn new(prefix: &str) -> TorLink {
        crate::require_root();
        let tmp = tempfile::tempdir().expect("tempdir");
        let tor = Netns::new(&format!("{prefix}T"));
        let node = Netns::new(&format!("{prefix}N"));
        crate::veth_between(&tor, "tor0", "10.96.0.1/30", &node, "node0", "10.96.0.2/30");
        add_v6(&tor, "fd96::1/64", "tor0");
        add_v6(&node, "fd96::2/64", "node0");
        TorLink { tmp, tor, node }
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        let d = self.tmp.path().join(name);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    /// BIRD on the ToR (AS 65000) with one IPv4 session `twill4` to
    /// 10.96.0.2 AS 65001; `session_opts` go into that protocol block,
    /// `statics` are IPv4 prefixes BIRD announces.
    pub fn bird(&self, session_opts: &str, statics: &[&str]) -> Bird {
        let dir = self.dir("bird");
        let routes: String = statics
            .iter()
            .map(|p| format!("route {p} blackhole; "))
            .collect();
        let conf = format!(
            r#"
log "{dir}/bird.log" all;
router id 10.96.0.1;
protocol device {{ }}
protocol static s4 {{ ipv4; {routes} }}
protocol kernel k4 {{ ipv4 {{ export where source = RTS_BGP; }}; }}
protocol bgp twill4 {{
  local 10.96.0.1 as 65000;
  neighbor 10.96.0.2 as 65001;
  hold time 9;
  connect retry time 2;
  connect delay time 1;
  error wait time 1, 3;
  {session_opts}
  ipv4 {{ import all; export all; }};
}}
"#,
            dir = dir.display()
        );
        Bird::start(&self.tor, &dir, &conf)
    }

    /// Starts BIRD again on the ToR with a given config (after a crash).
    pub fn bird_restart(&self, conf: &str) -> Bird {
        Bird::start(&self.tor, &self.dir("bird"), conf)
    }

    /// twill-bgpd on the node (AS 65001, originating 10.1.0.0/24) with one
    /// IPv4 neighbour 10.96.0.1 AS 65000; `neighbor_opts` are extra YAML
    /// keys of that neighbour (flow style, e.g. `password: x`), `top` extra
    /// top-level lines.
    pub fn twill(&self, neighbor_opts: &str, top: &str) -> TwillBgpd {
        let dir = self.dir("twill");
        let yaml = format!(
            r#"
asn: 65001
router_id: 10.96.0.2
listen_address: 10.96.0.2
status_socket: {sock}
networks: [10.1.0.0/24]
{top}
neighbors:
  - {{ address: 10.96.0.1, asn: 65000, hold_time: 9, connect_retry: 2, families: [ipv4] {sep} {neighbor_opts} }}
"#,
            sock = TwillBgpd::socket_for(&dir).display(),
            sep = if neighbor_opts.is_empty() { "" } else { "," },
        );
        TwillBgpd::start(&self.node, &dir, &yaml)
    }
}
