//! `lab status`: what runs, which namespaces exist, the pods, each node's
//! report from the store and the ToR's routes — as a table for people or
//! one JSON/YAML document for programs.

use std::path::Path;
use std::process::ExitCode;

use twill_api::resources::NodeStatus;

use super::StatusFormat;
use super::pods;
use super::state::{State, alive, load};
use super::tor::tor_routes;

pub(super) async fn print_status(dir: &Path, st: &State) -> anyhow::Result<()> {
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

pub(super) async fn status(dir: &Path, format: StatusFormat) -> anyhow::Result<ExitCode> {
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
