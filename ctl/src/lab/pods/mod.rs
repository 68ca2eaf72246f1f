//! Lab pods as Kubernetes has them: a Namespace and a Pod object in the
//! lab's store (labels, container ports, `spec.nodeName`, and after CNI ADD
//! `status.podIP(s)` as a kubelet writes them), so NetworkPolicy selects
//! them; a network namespace set up through twill-cni, called as a
//! container runtime calls it; and a responder (`twillctl lab serve`, in
//! `traffic`, started in the pod's namespace, recorded by PID) that answers
//! on the pod's ports with the pod's name. `lab pod add|del` add and remove
//! such pods in a running lab.
//!
//! Parsing and the objects are pure, in `spec`; the rest is I/O.

mod spec;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodStatus};
use twill_api::Store;

use super::dir_flag;
use super::host::{need, need_root, run_cmd, sibling, spawn_in};
use super::plan::{PodPlan, PortSpec};
use super::state::{Proc, State, alive, load};
use crate::UsageError;
use crate::cli::{Backend, StoreArgs};
pub use spec::{check_namespace, file_name, parse_labels, parse_port};
use spec::{namespace_object, pod_object, pod_status};

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
    let pid = spawn_in(&p.ns, &me, &args, &log)?;
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
    let v = cni_call(cni_bin, &sock, p, "ADD")?;
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
    need_root()?;
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
    need(&cni_bin.to_string_lossy())?;
    if let Err(e) = start_pod(dir, &mut st, &store, &cni_bin, &p).await {
        eprintln!(
            "lab pod add {} failed: {e:#}\n(what was made is recorded: `twillctl lab pod del {}{}` removes it)",
            p.name,
            p.name,
            dir_flag(dir)
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
            d = dir_flag(dir),
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
    need_root()?;
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
        cni_call(&sibling("twill-cni"), &sock, &p, "DEL").with_context(|| {
            format!(
                "releasing pod {}'s address through twill-node on {} (is it running? `twillctl lab status{}`)",
                name,
                p.node,
                dir_flag(dir)
            )
        })?;
        run_cmd("ip", &["netns", "del", &p.ns])?;
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

/// CNI `command` (ADD, DEL) through the real twill-cni, as a container
/// runtime calls it; returns what it printed (nothing, for DEL).
fn cni_call(
    cni_bin: &Path,
    sock: &Path,
    p: &PodPlan,
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
