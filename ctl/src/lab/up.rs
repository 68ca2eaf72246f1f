//! `lab up`: checks the host, makes the plan, builds the rack (namespaces,
//! bridge, links, addresses, routes), applies the lab's resources to the
//! store, starts the ToR and every twill-node, creates the pods, then shows
//! the connectivity matrix and node status.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::host::{need, need_root, run_cmd, sibling, spawn_in, sysctl_in, wait_for};
use super::limits;
use super::matrix::{converge_timeout, matrix};
use super::plan::{self, Tor};
use super::state::{State, Timings, state_path};
use super::status::print_status;
use super::tor::start_tor;
use super::{dir_flag, pods};
use crate::UsageError;
use crate::cli::{Backend, FileArgs, OutputFormat, StoreArgs};

/// `lab up`'s shape flags.
pub(super) struct Shape {
    pub(super) nodes: usize,
    pub(super) tor: Tor,
    pub(super) topology: Option<PathBuf>,
    pub(super) dual_stack: bool,
    pub(super) pods_per_node: usize,
    pub(super) route_reflectors: Option<usize>,
}

/// `twillctl lab up`.
pub(super) async fn up(dir: &Path, name: &str, shape: Shape) -> anyhow::Result<ExitCode> {
    let Shape {
        nodes,
        tor,
        topology,
        dual_stack,
        pods_per_node,
        route_reflectors,
    } = shape;
    let started = Instant::now();
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
    let file = with_reflectors(file, nodes, route_reflectors)?;
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
        raised: vec![],
        timings: None,
    };
    st.save(dir)?;
    st.raised = limits::raise(&plan)?;
    st.save(dir)?;
    let mut timings = Timings::default();
    let result = build(dir, &mut st, &node_bin, &cni_bin, &mut timings).await;
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
    let m = matrix(&st, converge_timeout(plan.nodes.len()))?;
    timings.converge_s = m.elapsed.as_secs_f64();
    timings.rounds = m.rounds;
    timings.pairs = m.pairs;
    timings.converged = m.ok;
    timings.total_s = started.elapsed().as_secs_f64();
    println!(
        "lab up: rack {:.1} s, agents {:.1} s, pods {:.1} s, matrix {:.1} s; {:.1} s in all",
        timings.rack_s, timings.agents_s, timings.pods_s, timings.converge_s, timings.total_s
    );
    st.timings = Some(timings);
    st.save(dir)?;
    let ok = m.ok;
    println!();
    if plan.nodes.len() <= SHOW_NODES {
        // Show reports written after the matrix settled.
        tokio::time::sleep(status_interval(plan.nodes.len()) + Duration::from_millis(500)).await;
        print_status(dir, &st).await?;
    } else {
        println!(
            "{} nodes: `twillctl lab status{}` shows each node's report",
            plan.nodes.len(),
            dir_flag(dir)
        );
    }
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

/// Builds the planned lab, recording each namespace and process in `st`
/// the moment it exists.
async fn build(
    dir: &Path,
    st: &mut State,
    node_bin: &Path,
    cni_bin: &Path,
    timings: &mut Timings,
) -> anyhow::Result<()> {
    let phase = Instant::now();
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
    sysctl_in(tor_ns, "net.ipv4.ip_forward=1")?;
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
        sysctl_in(&n.ns, "net.ipv4.ip_forward=1")?;
    }
    timings.rack_s = phase.elapsed().as_secs_f64();
    let phase = Instant::now();
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
        args.push("--status-interval".into());
        args.push(status_interval(plan.nodes.len()).as_secs().to_string());
        args.push("--status-heartbeat".into());
        args.push(status_heartbeat(plan.nodes.len()).as_secs().to_string());
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
    timings.agents_s = phase.elapsed().as_secs_f64();
    let phase = Instant::now();
    // The pods: objects in the store, then twill-cni as a runtime calls it.
    let store = pods::open_store(dir).await?;
    for p in &plan.pods {
        pods::start_pod(dir, st, &store, cni_bin, p).await?;
    }
    timings.pods_s = phase.elapsed().as_secs_f64();
    Ok(())
}

/// Extra twill-node flags in the lab: the node address comes from eth0,
/// empty blocks go back to the pool after 10 s, and twill-node is the
/// service proxy (the lab has no kube-proxy).
const NODE_BGP_ARGS: &[&str] = &[
    "--node-address",
    "eth0",
    "--service-proxy",
    "nftables",
    "--block-grace",
    "10",
];

/// Up to this many nodes `lab up` prints every node's report.
const SHOW_NODES: usize = 16;

/// Seconds between a lab node's status reports: 2 s in a small lab, then
/// longer so that all nodes together write at most 5 reports a second.
/// Every write wakes every agent's store notifier (one revision check
/// each), so at 2 s a 100-node lab made 5,000 checks a second while idle.
pub(super) fn status_interval(nodes: usize) -> Duration {
    Duration::from_secs((nodes as u64).div_ceil(5).max(2))
}

/// The longest a lab node leaves an unchanged report unwritten: three
/// status intervals, so an idle lab writes at most 5/3 reports a second in
/// all (a changed report is still written within one interval). A report
/// is stale after three of these (`twillctl node status`).
pub(super) fn status_heartbeat(nodes: usize) -> Duration {
    3 * status_interval(nodes)
}

/// `--route-reflectors N`: the first N nodes become route reflectors (as
/// `routeReflectors` in a topology file, which may not say so too).
fn with_reflectors(
    file: Option<plan::TopologyFile>,
    nodes: usize,
    count: Option<usize>,
) -> Result<Option<plan::TopologyFile>, UsageError> {
    let Some(count) = count else {
        return Ok(file);
    };
    let mut f = file.unwrap_or_default();
    if f.route_reflectors.is_some() {
        return Err(UsageError(
            "--route-reflectors and the topology file's routeReflectors both name reflectors: give one".into(),
        ));
    }
    let names: Vec<String> = match &f.nodes {
        Some(n) => n.iter().map(|s| s.name.clone()).collect(),
        None => (1..=nodes).map(|i| format!("n{i}")).collect(),
    };
    if count == 0 || count > names.len() {
        return Err(UsageError(format!(
            "--route-reflectors {count}: give 1 to {} (the lab's node count)",
            names.len()
        )));
    }
    f.route_reflectors = Some(names.into_iter().take(count).collect());
    Ok(Some(f))
}
