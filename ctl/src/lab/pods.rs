//! Lab pods as Kubernetes has them: a Namespace and a Pod object in the
//! lab's store (labels, container ports, `spec.nodeName`, and after CNI ADD
//! `status.podIP(s)` as a kubelet writes them), so NetworkPolicy selects
//! them; a network namespace set up through twill-cni; and a responder
//! (`twillctl lab serve`, started in the pod's namespace, recorded by PID)
//! that answers on the pod's ports with the pod's name. `lab pod add|del`
//! add and remove such pods in a running lab; `lab probe` is the client.
//!
//! Parsing and the objects are pure (unit-tested below); the rest is I/O.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodStatus};
use serde_json::{Value, json};
use twill_api::{Store, validate};

use super::plan::{PodPlan, PortSpec};
use super::{Proc, State, alive, load, sibling};
use crate::UsageError;
use crate::cli::{Backend, StoreArgs};

/// The longest network namespace or log file name we make (NAME_MAX is 255).
const MAX_FILE_NAME: usize = 240;

/// `k=v[,k=v]` with Kubernetes' rules for label keys and values (the
/// API crate's checks, so the lab accepts exactly what the datastore does).
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!("label {part:?}: write it as key=value"));
        };
        validate::check_label_key(k).map_err(|e| format!("label key {k:?}: {e}"))?;
        validate::check_label_value(v).map_err(|e| format!("label {k}: value {v:?}: {e}"))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// A Kubernetes namespace name: a DNS-1123 label (≤ 63).
pub fn check_namespace(ns: &str) -> Result<(), String> {
    let ok = !ns.is_empty()
        && ns.len() <= 63
        && ns
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !ns.starts_with('-')
        && !ns.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "namespace {ns:?}: use 1-63 lower-case letters, digits or '-', starting and ending with a letter or digit"
        ))
    }
}

/// `[NAME=]PORT[/TCP|/UDP]` (TCP when no protocol is given).
pub fn parse_port(s: &str) -> Result<PortSpec, String> {
    let (name, rest) = match s.split_once('=') {
        Some((n, r)) => (Some(n), r),
        None => (None, s),
    };
    let (port, proto) = rest.split_once('/').unwrap_or((rest, "TCP"));
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("port {s:?}: the port must be a number from 1 to 65535"))?;
    let protocol = match proto.to_ascii_uppercase().as_str() {
        "TCP" => "TCP",
        "UDP" => "UDP",
        other => {
            return Err(format!(
                "port {s:?}: protocol {other:?}: the lab serves TCP and UDP"
            ));
        }
    };
    if let Some(n) = name {
        // IANA service name, as Kubernetes checks containerPort names.
        let ok = !n.is_empty()
            && n.len() <= 15
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && n.chars().any(|c| c.is_ascii_lowercase())
            && !n.starts_with('-')
            && !n.ends_with('-')
            && !n.contains("--");
        if !ok {
            return Err(format!(
                "port name {n:?}: use 1-15 lower-case letters, digits or '-' with at least one letter"
            ));
        }
    }
    Ok(PortSpec {
        name: name.map(str::to_string),
        port,
        protocol: protocol.to_string(),
    })
}

/// `base`, or when that is too long for a file name, its start and a hash
/// of the whole (distinct names stay distinct).
pub fn file_name(base: &str) -> String {
    if base.len() <= MAX_FILE_NAME {
        return base.to_string();
    }
    // FNV-1a, 64 bits: stable across runs and builds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in base.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{}-{h:016x}", &base[..MAX_FILE_NAME - 17])
}

/// The Namespace object as the API server creates it.
pub fn namespace_object(ns: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}})
}

/// The Pod object, before the kubelet reports on it.
pub fn pod_object(p: &PodPlan) -> Value {
    let ports: Vec<Value> = p
        .ports
        .iter()
        .map(|s| {
            let mut v = json!({"containerPort": s.port, "protocol": s.protocol});
            if let Some(n) = &s.name {
                v["name"] = json!(n);
            }
            v
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels},
        "spec": {"nodeName": p.node, "containers": [
            {"name": "lab", "image": "twillctl-lab-serve", "ports": ports}]}})
}

/// The status a kubelet writes once the pod's network is up.
pub fn pod_status(ip: &str, ip6: Option<&str>, host_ip: &str) -> Value {
    let mut ips = vec![json!({"ip": ip})];
    ips.extend(ip6.map(|a| json!({"ip": a})));
    json!({"phase": "Running", "podIP": ip, "podIPs": ips,
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}]})
}

/// The lab's store.
pub(super) async fn open_store(dir: &Path) -> anyhow::Result<Store> {
    StoreArgs {
        datastore: Backend::Embedded,
        path: dir.join("twill.db"),
    }
    .open()
    .await
}

/// The Namespace (if missing) and the Pod, as the API server has them before
/// the kubelet runs the pod.
async fn create_objects(store: &Store, p: &PodPlan) -> anyhow::Result<()> {
    if store.get::<Namespace>(None, &p.namespace).await?.is_none() {
        let ns: Namespace = serde_json::from_value(namespace_object(&p.namespace))?;
        if let Err(e) = store.create(&ns).await
            && !e.is_already_exists()
        {
            return Err(e).with_context(|| format!("creating namespace {}", p.namespace));
        }
    }
    let pod: Pod = serde_json::from_value(pod_object(p))?;
    store
        .create(&pod)
        .await
        .with_context(|| format!("creating pod {}/{}", p.namespace, p.name))?;
    Ok(())
}

/// Writes the pod's addresses into its status, as the kubelet does.
async fn record_status(
    store: &Store,
    p: &PodPlan,
    ip: &str,
    ip6: Option<&str>,
    host_ip: &str,
) -> anyhow::Result<()> {
    let what = format!("pod {}/{}", p.namespace, p.name);
    let mut pod = store
        .get::<Pod>(Some(&p.namespace), &p.name)
        .await?
        .with_context(|| format!("{what} vanished from the store"))?;
    pod.status = Some(serde_json::from_value::<PodStatus>(pod_status(
        ip, ip6, host_ip,
    ))?);
    store
        .update_status(&pod)
        .await
        .with_context(|| format!("writing the status of {what}"))?;
    Ok(())
}

fn responder_what(pod: &str) -> String {
    format!("serve {pod}")
}

const RESPONDER_MARKER: &str = "serve";

/// Starts `twillctl lab serve` in the pod's namespace and waits until it
/// listens on every port (or says why it cannot).
fn start_responder(dir: &Path, st: &mut State, p: &PodPlan) -> anyhow::Result<()> {
    let logs = dir.join("pods");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let log = logs.join(format!("{}.log", file_name(&p.name)));
    let me = std::env::current_exe().unwrap_or_else(|_| sibling("twillctl"));
    let mut args = vec![
        "lab".to_string(),
        "serve".into(),
        "--pod".into(),
        p.name.clone(),
    ];
    for port in &p.ports {
        args.push("--port".into());
        args.push(port.to_string());
    }
    let pid = super::spawn_in(&p.ns, &me, &args, &log)?;
    let proc = Proc {
        what: responder_what(&p.name),
        pid,
        marker: RESPONDER_MARKER.into(),
    };
    st.processes.push(proc.clone());
    st.save(dir)?;
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("serving ") {
            return Ok(());
        }
        // Not `!alive`: between fork and exec the child still has our
        // command line, without the marker, and would count as gone.
        if exited(pid) || start.elapsed() > Duration::from_secs(10) {
            bail!(
                "the responder for pod {} did not start listening: {}",
                p.name,
                text.trim()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The process has ended (gone, or a zombie nobody waited for).
fn exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name's closing parenthesis.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// One pod, as a kubelet and container runtime bring it up: its objects,
/// its namespace, CNI ADD through twill-cni, its status, its responder.
pub(super) async fn start_pod(
    dir: &Path,
    st: &mut State,
    store: &Store,
    cni_bin: &Path,
    p: &PodPlan,
) -> anyhow::Result<()> {
    create_objects(store, p).await?;
    st.add_ns(dir, &p.ns)?;
    let sock = dir.join(&p.node).join("cni.sock");
    let v = super::cni_call(cni_bin, &sock, p, "ADD")?;
    let address = |v6: bool| {
        v["ips"]
            .as_array()
            .and_then(|ips| {
                ips.iter()
                    .filter_map(|i| i["address"].as_str())
                    .find(|a| a.contains(':') == v6)
            })
            .and_then(|a| a.split('/').next())
            .map(String::from)
    };
    let ip = address(false)
        .with_context(|| format!("CNI ADD for pod {} returned no IPv4 address: {v}", p.name))?;
    st.pod_ips.insert(p.name.clone(), ip.clone());
    let ip6 = if st.plan.v6.is_some() {
        let a = address(true).with_context(|| {
            format!(
                "CNI ADD for pod {} returned no IPv6 address in a dual-stack lab: {v}",
                p.name
            )
        })?;
        st.pod_ips6.insert(p.name.clone(), a.clone());
        Some(a)
    } else {
        None
    };
    st.save(dir)?;
    let host_ip = st
        .plan
        .nodes
        .iter()
        .find(|n| n.name == p.node)
        .map(|n| n.addr.to_string())
        .unwrap_or_default();
    record_status(store, p, &ip, ip6.as_deref(), &host_ip).await?;
    if !p.ports.is_empty() {
        start_responder(dir, st, p)?;
    }
    Ok(())
}

/// What `lab pod add` was given.
pub struct AddArgs {
    pub name: String,
    pub node: String,
    pub namespace: String,
    pub labels: Vec<BTreeMap<String, String>>,
    pub ports: Vec<PortSpec>,
}

/// `twillctl lab pod add`.
pub async fn add(dir: &Path, a: AddArgs) -> anyhow::Result<ExitCode> {
    super::need_root()?;
    let mut st = load(dir)?;
    twill_api::validate::check_name(&a.name)
        .map_err(|e| UsageError(format!("pod name {:?}: {e}", a.name)))?;
    check_namespace(&a.namespace).map_err(UsageError)?;
    if a.name == "tor" || st.plan.nodes.iter().any(|n| n.name == a.name) {
        return Err(UsageError(format!(
            "pod name {:?} is the name of a node or the ToR in this lab (`lab exec` targets would be ambiguous): choose another",
            a.name
        ))
        .into());
    }
    if let Some(p) = st.plan.pods.iter().find(|p| p.name == a.name) {
        return Err(UsageError(format!(
            "the lab already has a pod {:?} (in namespace {}): pod names are unique in a lab",
            a.name, p.namespace
        ))
        .into());
    }
    if !st.plan.nodes.iter().any(|n| n.name == a.node) {
        let names: Vec<&str> = st.plan.nodes.iter().map(|n| n.name.as_str()).collect();
        return Err(UsageError(format!(
            "no node {:?} in the lab; there are: {}",
            a.node,
            names.join(", ")
        ))
        .into());
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in &a.ports {
        if !seen.insert((p.port, p.protocol.clone())) {
            return Err(UsageError(format!("port {p} is given twice")).into());
        }
    }
    let ns = file_name(&format!("{}-{}", st.plan.prefix, a.name));
    if Path::new("/run/netns").join(&ns).exists() {
        bail!("network namespace {ns} already exists: remove it with `ip netns del {ns}`");
    }
    let labels = a.labels.into_iter().flatten().collect();
    let p = PodPlan {
        container_id: file_name(&format!("lab-{}-{}", a.namespace, a.name)),
        ns,
        name: a.name,
        node: a.node,
        namespace: a.namespace,
        labels,
        ports: a.ports,
    };
    let store = open_store(dir).await?;
    if store
        .get::<Pod>(Some(&p.namespace), &p.name)
        .await?
        .is_some()
    {
        bail!(
            "pod {}/{} already exists in the lab's store (not made by `lab pod add`): delete it first with `twillctl --path {} delete pod {} -n {}`",
            p.namespace,
            p.name,
            dir.join("twill.db").display(),
            p.name,
            p.namespace
        );
    }
    st.plan.pods.push(p.clone());
    st.save(dir)?;
    let cni_bin = sibling("twill-cni");
    super::need(&cni_bin.to_string_lossy())?;
    if let Err(e) = start_pod(dir, &mut st, &store, &cni_bin, &p).await {
        eprintln!(
            "lab pod add {} failed: {e:#}\n(what was made is recorded: `twillctl lab pod del {}{}` removes it)",
            p.name,
            p.name,
            super::dir_flag(dir)
        );
        return Ok(ExitCode::from(1));
    }
    let ip = st.pod_ips.get(&p.name).cloned().unwrap_or_default();
    let ports: Vec<String> = p.ports.iter().map(|s| s.to_string()).collect();
    println!(
        "pod {}/{} is up on node {} with IP {ip}{}{}",
        p.namespace,
        p.name,
        p.node,
        st.pod_ips6
            .get(&p.name)
            .map(|a| format!(" and {a}"))
            .unwrap_or_default(),
        if ports.is_empty() {
            String::new()
        } else {
            format!(", serving {}", ports.join(", "))
        }
    );
    if let Some(first) = p.ports.first() {
        println!(
            "try: `twillctl lab exec OTHER-POD{d} -- {me} lab probe {ip} {}/{}`",
            first.port,
            first.protocol,
            d = super::dir_flag(dir),
            me = sibling("twillctl").display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM, then SIGKILL after 5 s, to a process we recorded (if still ours).
pub(super) fn stop(p: &Proc) -> bool {
    if !alive(p) {
        return true;
    }
    // SAFETY: kill(2) on a PID we started and just checked.
    unsafe { libc::kill(p.pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(p) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(p) {
        // SAFETY: as above.
        unsafe { libc::kill(p.pid, libc::SIGKILL) };
        std::thread::sleep(Duration::from_millis(100));
    }
    !alive(p)
}

/// `twillctl lab pod del`: the responder, CNI DEL, the Pod object, the namespace.
pub async fn del(dir: &Path, name: &str) -> anyhow::Result<ExitCode> {
    super::need_root()?;
    let mut st = load(dir)?;
    let Some(p) = st.plan.pods.iter().find(|p| p.name == name).cloned() else {
        let names: Vec<&str> = st.plan.pods.iter().map(|p| p.name.as_str()).collect();
        return Err(UsageError(format!(
            "no pod {name:?} in the lab; there are: {}",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ))
        .into());
    };
    let what = responder_what(name);
    for proc in st.processes.iter().filter(|q| q.what == what) {
        if !stop(proc) {
            bail!("{} (PID {}) does not stop", proc.what, proc.pid);
        }
    }
    st.processes.retain(|q| q.what != what);
    st.save(dir)?;
    if Path::new("/run/netns").join(&p.ns).exists() {
        let sock = dir.join(&p.node).join("cni.sock");
        super::cni_call(&sibling("twill-cni"), &sock, &p, "DEL").with_context(|| {
            format!(
                "releasing pod {}'s address through twill-node on {} (is it running? `twillctl lab status{}`)",
                name,
                p.node,
                super::dir_flag(dir)
            )
        })?;
        super::run_cmd("ip", &["netns", "del", &p.ns])?;
    }
    st.namespaces.retain(|n| n != &p.ns);
    let store = open_store(dir).await?;
    match store.delete::<Pod>(Some(&p.namespace), &p.name, None).await {
        Ok(()) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => {
            return Err(e).with_context(|| format!("deleting pod {}/{}", p.namespace, p.name));
        }
    }
    st.plan.pods.retain(|q| q.name != name);
    st.pod_ips.remove(name);
    st.pod_ips6.remove(name);
    st.save(dir)?;
    println!("pod {}/{} deleted", p.namespace, name);
    Ok(ExitCode::SUCCESS)
}

/// `twillctl lab serve` (hidden): answers on every port with the pod's name,
/// in the network namespace it was started in, until it is stopped.
pub fn serve(pod: &str, ports: &[PortSpec]) -> anyhow::Result<ExitCode> {
    if ports.is_empty() {
        return Err(UsageError("lab serve: give at least one --port".into()).into());
    }
    let reply: &'static [u8] = format!("{pod}\n").into_bytes().leak();
    let mut threads = Vec::new();
    for p in ports {
        // [::] takes both families (IPv4 as mapped addresses) where the
        // namespace has IPv6; 0.0.0.0 where it has not.
        let addr = SocketAddr::from(([0u16; 8], p.port));
        let v4 = SocketAddr::from(([0, 0, 0, 0], p.port));
        if p.protocol == "UDP" {
            let sock = UdpSocket::bind(addr)
                .or_else(|_| UdpSocket::bind(v4))
                .with_context(|| format!("listening on {p}"))?;
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                loop {
                    match sock.recv_from(&mut buf) {
                        Ok((_, from)) => {
                            let _ = sock.send_to(reply, from);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }));
        } else {
            let l = TcpListener::bind(addr)
                .or_else(|_| TcpListener::bind(v4))
                .with_context(|| format!("listening on {p}"))?;
            threads.push(std::thread::spawn(move || {
                loop {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                            let _ = s.write_all(reply);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }));
        }
    }
    let list: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
    println!("serving {pod} on {}", list.join(", "));
    let _ = std::io::stdout().flush();
    for t in threads {
        let _ = t.join();
    }
    Ok(ExitCode::SUCCESS)
}

/// `twillctl lab probe IP PORT/PROTO`: one connection (TCP) or datagram
/// (UDP) from the current network namespace; succeeds when the far side
/// answers (a lab pod's responder answers with its name).
pub fn probe(ip: IpAddr, port: &PortSpec, timeout: Duration) -> anyhow::Result<ExitCode> {
    let addr = SocketAddr::new(ip, port.port);
    let answer: Result<String, String> = if port.protocol == "UDP" {
        (|| {
            let bind: SocketAddr = if ip.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                ([0u16; 8], 0).into()
            };
            let u = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
            u.set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            u.send_to(b"probe\n", addr).map_err(|e| e.to_string())?;
            let mut b = [0u8; 512];
            let (n, _) = u.recv_from(&mut b).map_err(|e| e.to_string())?;
            Ok(String::from_utf8_lossy(&b[..n]).trim().to_string())
        })()
    } else {
        (|| {
            let s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            let mut b = Vec::new();
            s.take(512).read_to_end(&mut b).map_err(|e| e.to_string())?;
            Ok(String::from_utf8_lossy(&b).trim().to_string())
        })()
    };
    let target = format!("{ip} {}/{}", port.port, port.protocol);
    match answer {
        Ok(a) => {
            println!("{target}: answered {a:?}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let why = if e.contains("os error 11") || e.contains("timed out") {
                format!("nothing within {} ms", timeout.as_millis())
            } else {
                e
            };
            println!("{target}: no answer ({why})");
            Ok(ExitCode::from(1))
        }
    }
}

/// Where a ToR FRR keeps its sockets and PID files: its own directory
/// under /run, owned by the `frr` user (FRR drops root and must reach it
/// whatever the lab directory's parents allow).
pub(super) fn frr_run_dir(prefix: &str) -> PathBuf {
    Path::new("/run/twill-lab").join(format!("{prefix}-frr"))
}

/// Makes `dir` (fresh) owned by user and group `frr`, mode 0750.
pub(super) fn make_frr_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (uid, gid) = frr_ids()?;
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))
        .with_context(|| format!("chown frr {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
        .with_context(|| format!("chmod {}", dir.display()))
}

/// Gives a file in the FRR directory to user `frr`.
pub(super) fn give_to_frr(file: &Path) -> anyhow::Result<()> {
    let (uid, gid) = frr_ids()?;
    std::os::unix::fs::chown(file, Some(uid), Some(gid))
        .with_context(|| format!("chown frr {}", file.display()))
}

fn frr_ids() -> anyhow::Result<(u32, u32)> {
    let out = Command::new("id")
        .args(["-u", "frr"])
        .stderr(Stdio::null())
        .output()
        .context("running id")?;
    let gout = Command::new("id")
        .args(["-g", "frr"])
        .stderr(Stdio::null())
        .output()
        .context("running id")?;
    let parse = |o: &std::process::Output| -> Option<u32> {
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .flatten()
    };
    match (parse(&out), parse(&gout)) {
        (Some(u), Some(g)) => Ok((u, g)),
        _ => {
            bail!("there is no user frr, which FRR's daemons run as: is the frr package installed?")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_kubernetes_rules_at_their_limits() {
        let key = format!("{}/{}", "a".repeat(253), "b".repeat(63));
        let val = "v".repeat(63);
        let l = parse_labels(&format!("{key}={val},app=web,empty=")).unwrap();
        assert_eq!(l[&key], val);
        assert_eq!(l["app"], "web");
        assert_eq!(l["empty"], "");
        assert!(parse_labels(&format!("k={}", "v".repeat(64))).is_err());
        assert!(parse_labels(&format!("{}=v", "k".repeat(64))).is_err());
        assert!(parse_labels(&format!("{}/k=v", "a".repeat(254))).is_err());
        assert!(parse_labels("bad key=v").is_err());
        assert!(parse_labels("novalue").is_err());
        assert!(parse_labels("-k=v").is_err());
        assert!(parse_labels("k=-v").is_err());
    }

    #[test]
    fn ports_parse_with_names_and_protocols() {
        let p = parse_port("dns=53/udp").unwrap();
        assert_eq!(
            (p.name.as_deref(), p.port, p.protocol.as_str()),
            (Some("dns"), 53, "UDP")
        );
        assert_eq!(parse_port("80").unwrap().protocol, "TCP");
        assert_eq!(
            parse_port("http=80/TCP").unwrap().to_string(),
            "http=80/TCP"
        );
        for bad in [
            "0/TCP",
            "70000",
            "80/SCTP",
            "x/TCP",
            "9=80",
            "a-very-long-port-name=80",
        ] {
            assert!(parse_port(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn long_names_make_distinct_short_file_names() {
        let a = format!("twl-{}", "a".repeat(253));
        let b = format!("twl-{}b", "a".repeat(252));
        assert!(file_name(&a).len() <= MAX_FILE_NAME);
        assert_ne!(file_name(&a), file_name(&b));
        assert_eq!(file_name("twl-web"), "twl-web");
    }

    #[test]
    fn pod_object_carries_labels_ports_and_node() {
        let p = PodPlan {
            name: "web".into(),
            node: "n1".into(),
            ns: "twl-web".into(),
            container_id: "lab-web".into(),
            namespace: "shop".into(),
            labels: BTreeMap::from([("app".into(), "web".into())]),
            ports: vec![
                parse_port("http=80/TCP").unwrap(),
                parse_port("53/UDP").unwrap(),
            ],
        };
        let v = pod_object(&p);
        let pod: Pod = serde_json::from_value(v).unwrap();
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        let ports = spec.containers[0].ports.clone().unwrap();
        assert_eq!(ports[0].name.as_deref(), Some("http"));
        assert_eq!(ports[1].protocol.as_deref(), Some("UDP"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("shop"));
        let s: PodStatus =
            serde_json::from_value(pod_status("10.0.0.1", None, "172.30.0.11")).unwrap();
        assert_eq!(s.pod_ips.unwrap()[0].ip, "10.0.0.1");
    }
}
