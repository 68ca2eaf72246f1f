//! `twillctl lab up|status|exec|down`: a whole Twill cluster on one Linux
//! machine. A network namespace per node, a ToR namespace running BIRD, FRR
//! or GoBGP (or nothing), a link from each node to the ToR's bridge,
//! twill-node in every node namespace on one embedded store in the lab's
//! directory (the ToR only learns, or with `torReflector` reflects the
//! nodes' routes to each other), and pods created through twill-cni
//! exactly as a container runtime calls it, with Namespace and Pod objects in
//! the store so NetworkPolicy selects them (`pods`: `lab pod add|del`, the
//! responder serving their ports, `lab probe`).
//!
//! Everything the lab creates is written to `DIR/lab.json` the moment it
//! exists (namespaces by name, processes by PID and command line), so `lab
//! down` removes exactly that — also after an `up` that failed half-way — and
//! never kills a process whose PID was reused. The plan itself is pure, in
//! `plan`.

pub mod plan;
pub mod pods;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use twill_api::resources::NodeStatus;

use crate::UsageError;
use crate::cli::{Backend, FileArgs, OutputFormat, StoreArgs};
use plan::{Plan, Tor};

#[derive(Args, Debug)]
pub struct LabArgs {
    #[command(subcommand)]
    pub command: LabCommand,
    /// The lab's directory: its store, configs, logs and lab.json.
    #[arg(
        long,
        global = true,
        env = "TWILL_LAB_DIR",
        default_value = DEFAULT_DIR
    )]
    pub dir: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Build the cluster, create example pods, print node status and a connectivity matrix.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, value_enum, default_value = "bird")]
        tor: Tor,
        /// YAML: nodes (name, labels), tor, podsPerNode, pool, blockSize, nodeAs, torAs,
        /// routeReflectors (node names), torReflector (true: the ToR is the rack's
        /// route reflector, one AS, no mesh), dualStack, pool6, blockSize6.
        #[arg(long)]
        topology: Option<PathBuf>,
        /// IPv6 beside IPv4: an IPv6 pool (fd00:10:244::/56, /122 blocks),
        /// every pod one address of each family, IPv6 rack addresses and
        /// IPv6 sessions to the ToR (as `dualStack: true` in a topology file).
        #[arg(long)]
        dual_stack: bool,
        #[arg(long, default_value_t = 2)]
        pods_per_node: usize,
        /// Namespace name prefix (several labs can run side by side with
        /// different prefixes and directories).
        #[arg(long, default_value = plan::DEFAULT_PREFIX)]
        name: String,
    },
    /// Restart a node's twill-node (SIGTERM, or SIGKILL with --kill) and
    /// wait until it serves again: graceful restart in action.
    Restart {
        node: String,
        #[arg(long)]
        kill: bool,
    },
    /// What is running, node status, pods and the ToR's routes.
    Status {
        /// table (for people), json or yaml (for programs).
        #[arg(short, long, value_enum, default_value = "table")]
        output: StatusFormat,
    },
    /// Add or delete a pod: its Namespace and Pod objects, its network
    /// through twill-cni, and a responder serving its ports.
    Pod {
        #[command(subcommand)]
        command: PodCommand,
    },
    /// One TCP connection or UDP datagram from the current network namespace
    /// (run it in a pod: `lab exec POD -- twillctl lab probe IP 80/TCP`);
    /// exit 0 when answered, 1 when not.
    Probe {
        ip: std::net::IpAddr,
        /// PORT[/TCP|/UDP].
        #[arg(value_parser = pods::parse_port)]
        port: plan::PortSpec,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// A pod's responder (started by the lab in the pod's namespace).
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        pod: String,
        #[arg(long = "port", value_parser = pods::parse_port)]
        ports: Vec<plan::PortSpec>,
    },
    /// Run a command in a node's, a pod's or the ToR's namespace (`tor`).
    Exec {
        target: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Remove every namespace and process the lab made.
    Down,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFormat {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand, Debug)]
pub enum PodCommand {
    /// Create a pod on a node, labelled, serving the given ports.
    Add {
        /// The pod's name (unique in the lab).
        name: String,
        /// The node it runs on.
        #[arg(long)]
        node: String,
        /// Its Kubernetes namespace (created when missing).
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Labels: k=v[,k=v] (repeatable).
        #[arg(short, long, value_parser = pods::parse_labels)]
        labels: Vec<BTreeMap<String, String>>,
        /// A port the pod serves: [NAME=]PORT[/TCP|/UDP] (repeatable, or comma-separated).
        #[arg(short, long = "port", value_parser = pods::parse_port, value_delimiter = ',')]
        ports: Vec<plan::PortSpec>,
    },
    /// Delete a pod: its responder, its address (CNI DEL), its Pod object and namespace.
    Del { name: String },
}

/// What the lab made, recorded as it is made.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    plan: Plan,
    namespaces: Vec<String>,
    processes: Vec<Proc>,
    pod_ips: BTreeMap<String, String>,
    /// The pods' IPv6 addresses (dual-stack labs).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pod_ips6: BTreeMap<String, String>,
    /// twill-node's command line per node, for `lab restart`.
    #[serde(default)]
    node_args: BTreeMap<String, Vec<String>>,
    /// The ToR FRR's own run directory (sockets, PID files), when FRR runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    frr_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Proc {
    what: String,
    pid: i32,
    /// A word the process's command line must contain before we signal it.
    marker: String,
}

pub async fn run(args: LabArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        LabCommand::Up {
            nodes,
            tor,
            topology,
            dual_stack,
            pods_per_node,
            name,
        } => {
            up(
                &args.dir,
                &name,
                nodes,
                tor,
                topology,
                dual_stack,
                pods_per_node,
            )
            .await
        }
        LabCommand::Restart { node, kill } => restart(&args.dir, &node, kill),
        LabCommand::Status { output } => status(&args.dir, output).await,
        LabCommand::Exec { target, command } => exec(&args.dir, &target, &command),
        LabCommand::Down => down(&args.dir),
        LabCommand::Pod {
            command:
                PodCommand::Add {
                    name,
                    node,
                    namespace,
                    labels,
                    ports,
                },
        } => {
            pods::add(
                &args.dir,
                pods::AddArgs {
                    name,
                    node,
                    namespace,
                    labels,
                    ports,
                },
            )
            .await
        }
        LabCommand::Pod {
            command: PodCommand::Del { name },
        } => pods::del(&args.dir, &name).await,
        LabCommand::Probe {
            ip,
            port,
            timeout_ms,
        } => pods::probe(ip, &port, Duration::from_millis(timeout_ms)),
        LabCommand::Serve { pod, ports } => pods::serve(&pod, &ports),
    }
}

/// The lab directory's default (the `--dir` default).
const DEFAULT_DIR: &str = "/var/lib/twill/lab";

/// ` --dir DIR` when the lab is not in the default directory, for hints.
fn dir_flag(dir: &Path) -> String {
    if dir == Path::new(DEFAULT_DIR) {
        String::new()
    } else {
        format!(" --dir {}", dir.display())
    }
}

fn need_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("twillctl lab needs root: it creates network namespaces");
    }
    Ok(())
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("lab.json")
}

fn load(dir: &Path) -> anyhow::Result<State> {
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
    fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let p = state_path(dir);
        let tmp = dir.join("lab.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))?;
        Ok(())
    }

    fn add_ns(&mut self, dir: &Path, ns: &str) -> anyhow::Result<()> {
        run_cmd("ip", &["netns", "add", ns])?;
        self.namespaces.push(ns.to_string());
        self.save(dir)?;
        run_cmd("ip", &["-n", ns, "link", "set", "lo", "up"])
    }

    fn add_proc(&mut self, dir: &Path, what: &str, pid: i32, marker: &str) -> anyhow::Result<()> {
        self.processes.push(Proc {
            what: what.into(),
            pid,
            marker: marker.into(),
        });
        self.save(dir)
    }

    fn ns_of(&self, target: &str) -> Option<String> {
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

/// Runs a command to completion; its stderr becomes the error.
fn run_cmd(prog: &str, args: &[&str]) -> anyhow::Result<()> {
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
    Ok(())
}

fn output_of(prog: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {prog}"))?;
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
fn sibling(name: &str) -> PathBuf {
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

fn need(prog: &str) -> anyhow::Result<()> {
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
fn spawn_in(ns: &str, prog: &Path, args: &[String], log: &Path) -> anyhow::Result<i32> {
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
fn sysctl_in(ns: &str, setting: &str) -> anyhow::Result<()> {
    run_cmd("ip", &["netns", "exec", ns, "sysctl", "-qw", setting])
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what} did not happen within {}s", timeout.as_secs())
}

fn read_pid(file: &Path) -> Option<i32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

async fn up(
    dir: &Path,
    name: &str,
    nodes: usize,
    tor: Tor,
    topology: Option<PathBuf>,
    dual_stack: bool,
    pods_per_node: usize,
) -> anyhow::Result<ExitCode> {
    need_root()?;
    if state_path(dir).exists() {
        bail!(
            "a lab is already up in {} — `twillctl lab status{d}` shows it, `twillctl lab down{d}` removes it",
            dir.display(),
            d = dir_flag(dir)
        );
    }
    let file = match &topology {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Some(
                serde_saphyr::from_str(&text)
                    .map_err(|e| UsageError(format!("{}: {e}", p.display())))?,
            )
        }
        None => None,
    };
    let file = if dual_stack {
        let mut f: plan::TopologyFile = file.unwrap_or_default();
        f.dual_stack = Some(true);
        Some(f)
    } else {
        file
    };
    let plan =
        plan::plan(name, nodes, tor, pods_per_node, file).map_err(|e| UsageError(e.to_string()))?;
    let node_bin = sibling("twill-node");
    let cni_bin = sibling("twill-cni");
    for p in ["ip", "ping"] {
        need(p)?;
    }
    need(&node_bin.to_string_lossy())?;
    need(&cni_bin.to_string_lossy())?;
    match plan.tor {
        Tor::Bird => need("bird")?,
        Tor::Frr => need("/usr/lib/frr/bgpd")?,
        Tor::Gobgp => need("gobgpd")?,
        Tor::None => {}
    }
    for n in &plan.nodes {
        if Path::new("/run/netns").join(&n.ns).exists() {
            bail!(
                "namespace {} already exists but no lab is recorded in {}: remove it with `ip netns del {}`",
                n.ns,
                dir.display(),
                n.ns
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut st = State {
        plan: plan.clone(),
        namespaces: vec![],
        processes: vec![],
        pod_ips: BTreeMap::new(),
        pod_ips6: BTreeMap::new(),
        node_args: BTreeMap::new(),
        frr_dir: None,
    };
    st.save(dir)?;
    let result = build(dir, &mut st, &node_bin, &cni_bin).await;
    if let Err(e) = result {
        eprintln!(
            "lab up failed: {e:#}\n(what was built is recorded; `twillctl lab down` removes it; logs are in {})",
            dir.display()
        );
        return Ok(ExitCode::from(1));
    }
    println!(
        "lab is up in {} ({} nodes, ToR: {:?}{}{})\n",
        dir.display(),
        plan.nodes.len(),
        plan.tor,
        if plan.tor_reflector {
            ", the rack's route reflector"
        } else {
            ""
        },
        if plan.v6.is_some() {
            ", dual-stack"
        } else {
            ""
        }
    );
    let ok = matrix(&st)?;
    println!();
    // Reports come every 2 s: show ones written after the matrix settled.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    print_status(dir, &st).await?;
    let d = dir_flag(dir);
    let first_node = plan.nodes.first().map(|n| n.name.as_str()).unwrap_or("n1");
    println!(
        "lab name (namespace prefix): {name}; pods are in Kubernetes namespace {}",
        plan::LAB_NAMESPACE
    );
    println!("next:");
    for hint in [
        format!("twillctl lab status{d}"),
        format!(
            "twillctl lab pod add web{d} --node {first_node} --namespace shop --labels app=web --port 80/TCP"
        ),
        format!(
            "twillctl --path {} apply -f policy.yaml",
            dir.join("twill.db").display()
        ),
        format!("twillctl lab exec POD{d} -- twillctl lab probe IP 80/TCP"),
        format!("twillctl lab restart {first_node}{d} --kill"),
        format!("twillctl lab down{d}"),
    ] {
        println!("  {hint}");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn build(dir: &Path, st: &mut State, node_bin: &Path, cni_bin: &Path) -> anyhow::Result<()> {
    let plan = st.plan.clone();
    let tor_ns = plan.tor_ns.as_str();
    let rack = format!("{}/{}", plan.tor_addr, plan.prefix_len);
    st.add_ns(dir, tor_ns)?;
    run_cmd(
        "ip",
        &["-n", tor_ns, "link", "add", "rack", "type", "bridge"],
    )?;
    run_cmd("ip", &["-n", tor_ns, "addr", "add", &rack, "dev", "rack"])?;
    if let Some(v6) = &plan.v6 {
        let a = format!("{}/{}", v6.tor_addr, v6.prefix_len);
        run_cmd(
            "ip",
            &[
                "-n", tor_ns, "-6", "addr", "add", &a, "dev", "rack", "nodad",
            ],
        )?;
        sysctl_in(tor_ns, "net.ipv6.conf.all.forwarding=1")?;
    }
    run_cmd("ip", &["-n", tor_ns, "link", "set", "rack", "up"])?;
    run_cmd(
        "ip",
        &[
            "netns",
            "exec",
            tor_ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ],
    )?;
    for n in &plan.nodes {
        st.add_ns(dir, &n.ns)?;
        run_cmd(
            "ip",
            &[
                "link",
                "add",
                &n.tor_port,
                "netns",
                tor_ns,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &n.ns,
            ],
        )?;
        run_cmd(
            "ip",
            &[
                "-n",
                tor_ns,
                "link",
                "set",
                &n.tor_port,
                "master",
                "rack",
                "up",
            ],
        )?;
        let addr = format!("{}/{}", n.addr, plan.prefix_len);
        run_cmd("ip", &["-n", &n.ns, "addr", "add", &addr, "dev", "eth0"])?;
        if let (Some(v6), Some(a6)) = (&plan.v6, n.addr6) {
            let a = format!("{a6}/{}", v6.prefix_len);
            run_cmd(
                "ip",
                &["-n", &n.ns, "-6", "addr", "add", &a, "dev", "eth0", "nodad"],
            )?;
        }
        run_cmd("ip", &["-n", &n.ns, "link", "set", "eth0", "up"])?;
        if let Some(v6) = &plan.v6 {
            sysctl_in(&n.ns, "net.ipv6.conf.all.forwarding=1")?;
            run_cmd(
                "ip",
                &[
                    "-n",
                    &n.ns,
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &v6.tor_addr.to_string(),
                ],
            )?;
        }
        run_cmd(
            "ip",
            &[
                "-n",
                &n.ns,
                "route",
                "add",
                "default",
                "via",
                &plan.tor_addr.to_string(),
            ],
        )?;
        run_cmd(
            "ip",
            &[
                "netns",
                "exec",
                &n.ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        )?;
    }
    // The store and the resources.
    let db = dir.join("twill.db");
    let res = dir.join("resources.yaml");
    std::fs::write(&res, plan.resources()).context("writing resources.yaml")?;
    let store_args = StoreArgs {
        datastore: Backend::Embedded,
        path: db.clone(),
    };
    let code = crate::resources::apply(
        &store_args,
        FileArgs {
            files: vec![res],
            namespace: "default".into(),
            // "ippool/lab-ipv4 created", as `apply` says it.
            output: OutputFormat::Table,
        },
        crate::resources::Mode::Apply,
    )
    .await?;
    if code != ExitCode::SUCCESS {
        bail!("applying the lab's resources failed");
    }
    // The ToR.
    let tdir = dir.join("tor");
    std::fs::create_dir_all(&tdir)?;
    start_tor(dir, st, &tdir)?;
    // The nodes.
    for n in &plan.nodes {
        let ndir = dir.join(&n.name);
        std::fs::create_dir_all(&ndir)?;
        let sock = ndir.join("cni.sock");
        let mut args: Vec<String> = vec![
            "--node-name".into(),
            n.name.clone(),
            "--path".into(),
            db.display().to_string(),
            "--cni-socket".into(),
            sock.display().to_string(),
            "--state-dir".into(),
            ndir.join("state").display().to_string(),
        ];
        if !n.labels.is_empty() {
            let l: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            args.push("--node-labels".into());
            args.push(l.join(","));
        }
        args.extend(NODE_BGP_ARGS.iter().map(|s| s.to_string()));
        let pid = spawn_in(&n.ns, node_bin, &args, &ndir.join("twill-node.log"))?;
        st.add_proc(dir, &format!("twill-node {}", n.name), pid, "twill-node")?;
        st.node_args.insert(n.name.clone(), args);
        st.save(dir)?;
    }
    for n in &plan.nodes {
        let sock = dir.join(&n.name).join("cni.sock");
        wait_for(
            &format!("twill-node {} opening its CNI socket", n.name),
            Duration::from_secs(30),
            || std::os::unix::net::UnixStream::connect(&sock).is_ok(),
        )
        .with_context(|| format!("see {}", dir.join(&n.name).join("twill-node.log").display()))?;
    }
    // The pods: objects in the store, then twill-cni as a runtime calls it.
    let store = pods::open_store(dir).await?;
    for p in &plan.pods {
        pods::start_pod(dir, st, &store, cni_bin, p).await?;
    }
    Ok(())
}

/// Extra twill-node flags in the lab: the node address comes from eth0,
/// reports are frequent and empty blocks go back to the pool after 10 s.
const NODE_BGP_ARGS: &[&str] = &[
    "--node-address",
    "eth0",
    "--status-interval",
    "2",
    "--block-grace",
    "10",
];

fn start_tor(dir: &Path, st: &mut State, tdir: &Path) -> anyhow::Result<()> {
    let plan = st.plan.clone();
    let ns = plan.tor_ns.as_str();
    match plan.tor {
        Tor::None => Ok(()),
        Tor::Bird => {
            let conf = tdir.join("bird.conf");
            std::fs::write(&conf, plan.bird_conf())?;
            let pidf = tdir.join("bird.pid");
            let (c, s, p) = (
                conf.display().to_string(),
                tdir.join("bird.ctl").display().to_string(),
                pidf.display().to_string(),
            );
            run_cmd(
                "ip",
                &["netns", "exec", ns, "bird", "-c", &c, "-s", &s, "-P", &p],
            )?;
            wait_for("BIRD writing its PID file", Duration::from_secs(10), || {
                read_pid(&pidf).is_some()
            })?;
            let pid = read_pid(&pidf).unwrap_or_default();
            st.add_proc(dir, "bird (ToR)", pid, "bird")
        }
        Tor::Frr => {
            // FRR's daemons drop root for user frr, who may not reach the
            // lab directory (a private parent): they get a directory of
            // their own under /run; the lab directory keeps a copy of the
            // configuration for people to read.
            std::fs::write(tdir.join("bgpd.conf"), plan.frr_conf())?;
            let fdir = pods::frr_run_dir(&plan.prefix);
            st.frr_dir = Some(fdir.clone());
            st.save(dir)?;
            pods::make_frr_dir(&fdir)?;
            let conf = fdir.join("bgpd.conf");
            std::fs::write(&conf, plan.frr_conf())?;
            pods::give_to_frr(&conf)?;
            let zserv = fdir.join("zserv.api").display().to_string();
            let td = fdir.display().to_string();
            let zpid = fdir.join("zebra.pid");
            run_cmd(
                "ip",
                &[
                    "netns",
                    "exec",
                    ns,
                    "/usr/lib/frr/zebra",
                    "-d",
                    "-z",
                    &zserv,
                    "-i",
                    &zpid.display().to_string(),
                    "--vty_socket",
                    &td,
                ],
            )?;
            wait_for(
                "zebra writing its PID file",
                Duration::from_secs(10),
                || read_pid(&zpid).is_some(),
            )?;
            st.add_proc(
                dir,
                "zebra (ToR)",
                read_pid(&zpid).unwrap_or_default(),
                "zebra",
            )?;
            let bpid = fdir.join("bgpd.pid");
            let (conf_s, bpid_s) = (conf.display().to_string(), bpid.display().to_string());
            let mut args: Vec<String> = [
                "netns",
                "exec",
                ns,
                "/usr/lib/frr/bgpd",
                "-d",
                "-S",
                "-z",
                &zserv,
                "-f",
                &conf_s,
                "-i",
                &bpid_s,
                "--vty_socket",
                &td,
                "-l",
                &plan.tor_addr.to_string(),
            ]
            .iter()
            .map(|a| a.to_string())
            .collect();
            // Dual stack: listen on the IPv6 rack address too (the IPv6 sessions).
            if let Some(v6) = &plan.v6 {
                args.extend(["-l".to_string(), v6.tor_addr.to_string()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_cmd("ip", &args)?;
            wait_for(
                "FRR bgpd writing its PID file",
                Duration::from_secs(10),
                || read_pid(&bpid).is_some(),
            )?;
            st.add_proc(
                dir,
                "bgpd (ToR)",
                read_pid(&bpid).unwrap_or_default(),
                "bgpd",
            )
        }
        Tor::Gobgp => {
            let conf = tdir.join("gobgp.toml");
            std::fs::write(&conf, plan.gobgp_toml())?;
            let pid = spawn_in(
                ns,
                Path::new("gobgpd"),
                &[
                    "-f".into(),
                    conf.display().to_string(),
                    "--api-hosts".into(),
                    GOBGP_API.into(),
                ],
                &tdir.join("gobgpd.log"),
            )?;
            st.add_proc(dir, "gobgpd (ToR)", pid, "gobgpd")
        }
    }
}

const GOBGP_API: &str = "127.0.0.1:50051";

/// CNI `command` (ADD, DEL) through the real twill-cni, as a container
/// runtime calls it; returns what it printed (nothing, for DEL).
fn cni_call(
    cni_bin: &Path,
    sock: &Path,
    p: &plan::PodPlan,
    command: &str,
) -> anyhow::Result<serde_json::Value> {
    let conf = serde_json::json!({
        "cniVersion": "1.1.0", "name": "twill", "type": "twill-cni", "socket": sock,
    });
    let mut child = Command::new(cni_bin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &p.container_id)
        .env("CNI_NETNS", format!("/run/netns/{}", p.ns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_bin.parent().unwrap_or(Path::new("/")))
        .env(
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE={};K8S_POD_NAME={}", p.namespace, p.name),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", cni_bin.display()))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(conf.to_string().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() && out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Null);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "twill-cni printed no JSON for CNI {command} of pod {}: {}",
            p.name,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if !out.status.success() {
        bail!("CNI {command} for pod {} failed: {}", p.name, v);
    }
    Ok(v)
}

/// Pings every pod from every pod, on every family the lab has, until all
/// answer (or 40 s), then prints one matrix per family. True when every
/// pair reaches on every family.
fn matrix(st: &State) -> anyhow::Result<bool> {
    let family = |ips: &BTreeMap<String, String>| -> Vec<(String, String, String)> {
        st.plan
            .pods
            .iter()
            .filter_map(|p| {
                ips.get(&p.name)
                    .map(|ip| (p.name.clone(), p.ns.clone(), ip.clone()))
            })
            .collect()
    };
    let mut families = vec![("IPv4", family(&st.pod_ips))];
    if st.plan.v6.is_some() {
        families.push(("IPv6", family(&st.pod_ips6)));
    }
    if families.iter().all(|(_, pods)| pods.is_empty()) {
        println!("no pods: no connectivity matrix");
        return Ok(true);
    }
    let start = Instant::now();
    let mut results: Vec<BTreeMap<(String, String), bool>>;
    loop {
        results = families.iter().map(|(_, pods)| probe_all(pods)).collect();
        let all = results.iter().all(|r| r.values().all(|ok| *ok));
        if all || start.elapsed() > Duration::from_secs(40) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut failed_total = 0;
    for ((fam, pods), result) in families.iter().zip(&results) {
        if pods.is_empty() {
            continue;
        }
        let mut rows = vec![
            std::iter::once("FROM \\ TO".to_string())
                .chain(pods.iter().map(|p| p.0.clone()))
                .collect::<Vec<_>>(),
        ];
        for (s, _, sip) in pods {
            let mut row = vec![format!("{s} ({sip})")];
            for (d, _, _) in pods {
                let ok = result
                    .get(&(s.clone(), d.clone()))
                    .copied()
                    .unwrap_or(false);
                row.push(if ok { "ok".into() } else { "FAIL".into() });
            }
            rows.push(row);
        }
        println!("pod-to-pod connectivity, {fam} (ping):");
        print!("{}", crate::output::align(&rows));
        let failed = result.values().filter(|ok| !**ok).count();
        if failed > 0 {
            println!(
                "{failed} of {} pairs do not reach each other on {fam}",
                result.len()
            );
        }
        failed_total += failed;
    }
    Ok(failed_total == 0)
}

fn probe_all(pods: &[(String, String, String)]) -> BTreeMap<(String, String), bool> {
    std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .flat_map(|(src, ns, _)| {
                pods.iter().map(move |(dst, _, ip)| {
                    s.spawn(move || {
                        let ok = Command::new("ip")
                            .args(["netns", "exec", ns, "ping", "-c1", "-W1", "-q", ip])
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status()
                            .map(|s| s.success())
                            .unwrap_or(false);
                        ((src.clone(), dst.clone()), ok)
                    })
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    })
}

fn alive(p: &Proc) -> bool {
    std::fs::read(format!("/proc/{}/cmdline", p.pid))
        .map(|c| String::from_utf8_lossy(&c).contains(&p.marker))
        .unwrap_or(false)
}

async fn print_status(dir: &Path, st: &State) -> anyhow::Result<()> {
    let store = pods::open_store(dir).await?;
    let now = jiff::Timestamp::now();
    for n in &st.plan.nodes {
        match store.get::<NodeStatus>(None, &n.name).await? {
            Some(s) => match &s.status {
                Some(r) => println!("{}", crate::node::render(&n.name, r, now, false)),
                None => println!("node {}: no report yet\n", n.name),
            },
            None => println!("node {}: no NodeStatus yet\n", n.name),
        }
    }
    Ok(())
}

/// The ToR router's routes, as its own tool shows them.
fn tor_routes(dir: &Path, st: &State) -> anyhow::Result<String> {
    let tdir = dir.join("tor");
    match st.plan.tor {
        Tor::Bird => output_of(
            "birdc",
            &[
                "-s",
                &tdir.join("bird.ctl").display().to_string(),
                "show",
                "route",
            ],
        ),
        Tor::Frr => output_of(
            "vtysh",
            &[
                "--vty_socket",
                &st.frr_dir.as_deref().unwrap_or(&tdir).display().to_string(),
                "-c",
                "show ip route bgp",
                "-c",
                "show ipv6 route bgp",
            ],
        ),
        Tor::Gobgp => output_of(
            "ip",
            &[
                "netns",
                "exec",
                &st.plan.tor_ns,
                "gobgp",
                "--target",
                GOBGP_API,
                "global",
                "rib",
            ],
        ),
        Tor::None => Ok(String::new()),
    }
}

/// `lab status -o json|yaml`: the whole lab as one document.
async fn status_document(dir: &Path, st: &State) -> anyhow::Result<serde_json::Value> {
    use serde_json::json;
    let store = pods::open_store(dir).await?;
    let mut nodes = Vec::new();
    for n in &st.plan.nodes {
        let report = store
            .get::<NodeStatus>(None, &n.name)
            .await?
            .and_then(|s| s.status);
        nodes.push(json!({
            "name": n.name, "netns": n.ns, "address": n.addr.to_string(), "address6": n.addr6,
            "labels": n.labels, "report": report,
        }));
    }
    let pods: Vec<_> = st
        .plan
        .pods
        .iter()
        .map(|p| {
            json!({
                "name": p.name, "namespace": p.namespace, "node": p.node, "netns": p.ns,
                "ip": st.pod_ips.get(&p.name), "ip6": st.pod_ips6.get(&p.name), "labels": p.labels,
                "ports": p.ports.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let processes: Vec<_> = st
        .processes
        .iter()
        .map(|p| json!({"what": p.what, "pid": p.pid, "running": alive(p)}))
        .collect();
    let namespaces: Vec<_> = st
        .namespaces
        .iter()
        .map(|n| json!({"name": n, "present": Path::new("/run/netns").join(n).exists()}))
        .collect();
    let (routes, routes_error) = match tor_routes(dir, st) {
        Ok(t) => (Some(t), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    Ok(json!({
        "dir": dir, "name": st.plan.prefix, "tor": st.plan.tor,
        "torReflector": st.plan.tor_reflector, "torNetns": st.plan.tor_ns, "frrDir": st.frr_dir,
        "store": dir.join("twill.db"),
        "processes": processes, "namespaces": namespaces,
        "nodes": nodes, "pods": pods,
        "torRoutes": routes, "torRoutesError": routes_error,
    }))
}

async fn status(dir: &Path, format: StatusFormat) -> anyhow::Result<ExitCode> {
    let st = load(dir)?;
    match format {
        StatusFormat::Table => {}
        StatusFormat::Json => {
            let doc = status_document(dir, &st).await?;
            println!("{}", serde_json::to_string_pretty(&doc)?);
            return Ok(ExitCode::SUCCESS);
        }
        StatusFormat::Yaml => {
            let doc = status_document(dir, &st).await?;
            print!(
                "{}",
                twill_api::manifest::to_yaml(&doc).map_err(anyhow::Error::msg)?
            );
            return Ok(ExitCode::SUCCESS);
        }
    }
    println!(
        "lab {} in {} (ToR: {:?}; store {})",
        st.plan.prefix,
        dir.display(),
        st.plan.tor,
        dir.join("twill.db").display()
    );
    let mut rows = vec![vec!["PROCESS".to_string(), "PID".into(), "STATE".into()]];
    for p in &st.processes {
        rows.push(vec![
            p.what.clone(),
            p.pid.to_string(),
            if alive(p) {
                "running".into()
            } else {
                "GONE".into()
            },
        ]);
    }
    print!("{}", crate::output::align(&rows));
    let missing: Vec<&String> = st
        .namespaces
        .iter()
        .filter(|n| !Path::new("/run/netns").join(n).exists())
        .collect();
    if !missing.is_empty() {
        println!(
            "missing namespaces: {}",
            missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!();
    let mut rows = vec![vec![
        "POD".to_string(),
        "NAMESPACE".into(),
        "NODE".into(),
        "IP".into(),
        "PORTS".into(),
        "LABELS".into(),
    ]];
    for p in &st.plan.pods {
        rows.push(vec![
            p.name.clone(),
            p.namespace.clone(),
            p.node.clone(),
            {
                let mut ips: Vec<String> = [st.pod_ips.get(&p.name), st.pod_ips6.get(&p.name)]
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect();
                if ips.is_empty() {
                    ips.push("-".into());
                }
                ips.join(",")
            },
            p.ports
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(","),
            p.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        ]);
    }
    print!("{}", crate::output::align(&rows));
    println!();
    print_status(dir, &st).await?;
    match tor_routes(dir, &st) {
        Ok(t) if !t.is_empty() => println!("ToR routes:\n{t}"),
        Ok(_) => {}
        Err(e) => println!("ToR routes: {e:#}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn restart(dir: &Path, node: &str, kill: bool) -> anyhow::Result<ExitCode> {
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
        if alive(&p) {
            let sig = if kill { libc::SIGKILL } else { libc::SIGTERM };
            // SAFETY: kill(2) on the PID we recorded, checked to still be twill-node.
            unsafe { libc::kill(p.pid, sig) };
            wait_for(
                &format!("{what} (PID {}) to exit", p.pid),
                Duration::from_secs(10),
                || !alive(&p),
            )?;
        }
        st.processes.retain(|q| q.what != what);
    }
    let ndir = dir.join(&n.name);
    let sock = ndir.join("cni.sock");
    let started = Instant::now();
    let pid = spawn_in(
        &n.ns,
        &sibling("twill-node"),
        &args,
        &ndir.join("twill-node.log"),
    )?;
    st.add_proc(dir, &what, pid, "twill-node")?;
    wait_for(
        &format!("{what} opening its CNI socket"),
        Duration::from_secs(30),
        || std::os::unix::net::UnixStream::connect(&sock).is_ok(),
    )?;
    println!(
        "{what} restarted ({}; PID {pid}); serving again after {} ms",
        if kill { "SIGKILL" } else { "SIGTERM" },
        started.elapsed().as_millis()
    );
    Ok(ExitCode::SUCCESS)
}

fn exec(dir: &Path, target: &str, command: &[String]) -> anyhow::Result<ExitCode> {
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

fn down(dir: &Path) -> anyhow::Result<ExitCode> {
    let st = load(dir)?;
    let mut problems = Vec::new();
    // Processes first (newest first), by recorded PID, only if still ours.
    for p in st.processes.iter().rev() {
        if !alive(p) {
            continue;
        }
        // SAFETY: kill(2) with a PID we started and just checked.
        unsafe { libc::kill(p.pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for p in st.processes.iter().rev() {
        while alive(p) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(p) {
            // SAFETY: as above.
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
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
