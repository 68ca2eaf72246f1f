//! `twillctl service show NAMESPACE/NAME [--node NODE] [-o json]`: for
//! each node, the endpoints that node sends each Service port's traffic
//! to and why — ready endpoints, the serving terminating fallback, the
//! Local traffic policies, nothing (refused at once, or dropped under the
//! Local policy). Built from the same pure model twill-node's service
//! proxy renders ([`twill_api::service_proxy::proxy_model`]), and the
//! same reading of it as the node's table: internal traffic (the cluster
//! IP) follows `internalTrafficPolicy`; external traffic (node ports,
//! LoadBalancer and external addresses) follows `externalTrafficPolicy`,
//! except the node's own and its pods', which go to the cluster set.

use std::collections::BTreeSet;
use std::process::ExitCode;

use anyhow::Context;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Serialize;
use twill_api::Store;
use twill_api::resources::NodeStatus;
use twill_api::service_proxy::{EndpointSet, Frontend, Pick, ServicePortProxy, proxy_model};

use crate::UsageError;
use crate::cli::{OutputFormat, StoreArgs};
use crate::output::align;

/// What one node does with one kind of traffic to one Service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// `internal` (cluster IP) or `external` (node port, LoadBalancer,
    /// external IPs).
    pub traffic: &'static str,
    /// The traffic policy that applies: `Cluster` or `Local`.
    pub policy: &'static str,
    /// `forward`, `reject` (TCP reset / ICMP unreachable) or `drop`.
    pub verdict: &'static str,
    /// `address:port` of each endpoint picked from at random.
    pub endpoints: Vec<String>,
    /// Why, in words.
    pub why: String,
}

/// One Service port in one family on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortView {
    pub port: String,
    pub protocol: &'static str,
    pub family: &'static str,
    pub frontends: Vec<String>,
    pub routes: Vec<Route>,
}

/// One node's view of the Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    pub node: String,
    pub ports: Vec<PortView>,
    /// What the health check node port answers on this node (Local
    /// LoadBalancer Services only): the local ready endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthView {
    pub port: u16,
    pub local_endpoints: usize,
    pub status: u16,
}

/// The whole answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    pub service: String,
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_affinity_timeout: Option<u32>,
    /// Every endpoint with its conditions (same on every node).
    pub endpoints: Vec<EndpointView>,
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointView {
    pub port: String,
    pub address: String,
    pub node: Option<String>,
    pub conditions: String,
}

fn frontend(f: &Frontend) -> String {
    let hostport = |a: &std::net::IpAddr, p: &u16| {
        if a.is_ipv6() {
            format!("[{a}]:{p}")
        } else {
            format!("{a}:{p}")
        }
    };
    match f {
        Frontend::ClusterIp(a, p) => format!("clusterIP {}", hostport(a, p)),
        Frontend::NodePort(p) => format!("nodePort {p}"),
        Frontend::LoadBalancer(a, p) => format!("loadBalancer {}", hostport(a, p)),
        Frontend::ExternalIp(a, p) => format!("externalIP {}", hostport(a, p)),
    }
}

fn picked(p: &ServicePortProxy, set: &EndpointSet) -> Vec<String> {
    p.chosen(set)
        .map(|e| {
            if e.addr.is_ipv6() {
                format!("[{}]:{}", e.addr, e.port)
            } else {
                format!("{}:{}", e.addr, e.port)
            }
        })
        .collect()
}

fn why_picked(set: &EndpointSet, local: bool) -> String {
    let scope = if local { " on this node" } else { "" };
    match set.pick {
        Pick::Ready => format!("ready endpoints{scope}"),
        Pick::ServingTerminating => {
            format!("no ready endpoint{scope}: the serving terminating ones (fallback)")
        }
        Pick::None => format!("no endpoint{scope}"),
    }
}

/// The internal route: the cluster IP, under `internalTrafficPolicy`.
fn internal(p: &ServicePortProxy) -> Route {
    let (set, policy) = if p.internal_local {
        (&p.local, "Local")
    } else {
        (&p.cluster, "Cluster")
    };
    if set.is_empty() {
        let why = if p.internal_local && !p.cluster.is_empty() {
            "internalTrafficPolicy Local and no endpoint on this node: refused at once".to_string()
        } else {
            "no ready or serving endpoint: refused at once (TCP reset / ICMP unreachable)"
                .to_string()
        };
        return Route {
            traffic: "internal",
            policy,
            verdict: "reject",
            endpoints: Vec::new(),
            why,
        };
    }
    Route {
        traffic: "internal",
        policy,
        verdict: "forward",
        endpoints: picked(p, set),
        why: why_picked(set, p.internal_local),
    }
}

/// The external route: node ports, LoadBalancer and external addresses,
/// under `externalTrafficPolicy`.
fn external(p: &ServicePortProxy) -> Route {
    let policy = if p.external_local { "Local" } else { "Cluster" };
    if p.cluster.is_empty() {
        return Route {
            traffic: "external",
            policy,
            verdict: "reject",
            endpoints: Vec::new(),
            why: "no ready or serving endpoint: refused at once (TCP reset / ICMP unreachable)"
                .into(),
        };
    }
    if !p.external_local {
        return Route {
            traffic: "external",
            policy,
            verdict: "forward",
            endpoints: picked(p, &p.cluster),
            why: format!(
                "{}; the client's address is masqueraded to the node's",
                why_picked(&p.cluster, false)
            ),
        };
    }
    if p.local.is_empty() {
        return Route {
            traffic: "external",
            policy,
            verdict: "drop",
            endpoints: Vec::new(),
            why: "externalTrafficPolicy Local and no endpoint on this node: dropped (the node's and its pods' own traffic goes to the cluster set)".into(),
        };
    }
    Route {
        traffic: "external",
        policy,
        verdict: "forward",
        endpoints: picked(p, &p.local),
        why: format!(
            "{}; the client's address is kept",
            why_picked(&p.local, true)
        ),
    }
}

fn conditions(e: &twill_api::service_proxy::Endpoint) -> String {
    let mut c = Vec::new();
    c.push(if e.ready { "ready" } else { "not ready" });
    if e.serving && !e.ready {
        c.push("serving");
    }
    if e.terminating {
        c.push("terminating");
    }
    c.join(", ")
}

/// The answer for `service` on `nodes`, from the Services and slices (pure).
pub fn view(service: &Service, slices: &[EndpointSlice], nodes: &BTreeSet<String>) -> ServiceView {
    let services = std::slice::from_ref(service);
    let key = twill_api::service::service_key(service);
    let type_ = twill_api::service::service_type(service).to_string();
    let mut out = ServiceView {
        service: key.clone(),
        type_,
        session_affinity_timeout: None,
        endpoints: Vec::new(),
        nodes: Vec::new(),
    };
    let mut first = true;
    for node in nodes {
        let model = proxy_model(node, services, slices);
        if first {
            first = false;
            for p in &model {
                out.session_affinity_timeout = out.session_affinity_timeout.or(p.affinity_timeout);
                for e in &p.endpoints {
                    out.endpoints.push(EndpointView {
                        port: format!("{}/{}", port_label(p), p.protocol.api()),
                        address: if e.addr.is_ipv6() {
                            format!("[{}]:{}", e.addr, e.port)
                        } else {
                            format!("{}:{}", e.addr, e.port)
                        },
                        node: e.node.clone(),
                        conditions: conditions(e),
                    });
                }
            }
        }
        let health_port = model.iter().find_map(|p| p.health_check_node_port);
        let health_check = health_port.map(|port| {
            let n = local_ready(&model, node);
            HealthView {
                port,
                local_endpoints: n,
                status: if n > 0 { 200 } else { 503 },
            }
        });
        let ports = model
            .iter()
            .map(|p| {
                let mut routes = vec![internal(p)];
                if p.frontends.iter().any(Frontend::is_external) {
                    routes.push(external(p));
                }
                PortView {
                    port: port_label(p),
                    protocol: p.protocol.api(),
                    family: p.family.api(),
                    frontends: p.frontends.iter().map(frontend).collect(),
                    routes,
                }
            })
            .collect();
        out.nodes.push(NodeView {
            node: node.clone(),
            ports,
            health_check,
        });
    }
    out
}

/// What the health check node port counts on `node`: its ready, not
/// terminating endpoints, each address and port once (as twill-node's
/// `health::service_health` does; the terminating fallback serves traffic
/// but is not counted, so a load balancer drains the node).
fn local_ready(model: &[ServicePortProxy], node: &str) -> usize {
    model
        .iter()
        .flat_map(|p| p.endpoints.iter())
        .filter(|e| e.node.as_deref() == Some(node) && e.usable())
        .map(|e| (e.addr, e.port))
        .collect::<BTreeSet<_>>()
        .len()
}

fn port_label(p: &ServicePortProxy) -> String {
    if p.port_name.is_empty() {
        p.frontends
            .iter()
            .find_map(|f| match f {
                Frontend::ClusterIp(_, port) => Some(port.to_string()),
                _ => None,
            })
            .unwrap_or_else(|| "-".into())
    } else {
        p.port_name.clone()
    }
}

/// The table `service show` prints.
pub fn table(v: &ServiceView) -> String {
    let mut out = format!("Service {} ({})", v.service, v.type_);
    if let Some(t) = v.session_affinity_timeout {
        out.push_str(&format!(", sessionAffinity ClientIP for {t}s"));
    }
    out.push('\n');
    if let Some(n) = v.nodes.first() {
        out.push_str("\nFrontends:\n");
        for p in &n.ports {
            out.push_str(&format!(
                "  {}/{} {}: {}\n",
                p.port,
                p.protocol,
                p.family,
                p.frontends.join(", ")
            ));
        }
    }
    out.push_str("\nEndpoints:\n");
    if v.endpoints.is_empty() {
        out.push_str("  (none)\n");
    } else {
        let rows: Vec<Vec<String>> = v
            .endpoints
            .iter()
            .map(|e| {
                vec![
                    format!("  {}", e.port),
                    e.address.clone(),
                    e.node.clone().unwrap_or_else(|| "<no node>".into()),
                    e.conditions.clone(),
                ]
            })
            .collect();
        out.push_str(&align(&rows));
    }
    out.push('\n');
    let mut rows = vec![vec![
        "NODE".to_string(),
        "PORT".into(),
        "TRAFFIC".into(),
        "POLICY".into(),
        "VERDICT".into(),
        "ENDPOINTS".into(),
        "WHY".into(),
    ]];
    for n in &v.nodes {
        for p in &n.ports {
            for r in &p.routes {
                rows.push(vec![
                    n.node.clone(),
                    format!("{}/{}/{}", p.port, p.protocol, p.family),
                    r.traffic.into(),
                    r.policy.into(),
                    r.verdict.into(),
                    if r.endpoints.is_empty() {
                        "-".into()
                    } else {
                        r.endpoints.join(",")
                    },
                    r.why.clone(),
                ]);
            }
        }
    }
    out.push_str(&align(&rows));
    let health: Vec<Vec<String>> = v
        .nodes
        .iter()
        .filter_map(|n| {
            let h = n.health_check.as_ref()?;
            Some(vec![
                n.node.clone(),
                h.port.to_string(),
                h.status.to_string(),
                h.local_endpoints.to_string(),
            ])
        })
        .collect();
    if !health.is_empty() {
        out.push('\n');
        let mut rows = vec![vec![
            "NODE".to_string(),
            "HEALTH-CHECK-PORT".into(),
            "ANSWERS".into(),
            "LOCAL-ENDPOINTS".into(),
        ]];
        rows.extend(health);
        out.push_str(&align(&rows));
    }
    out
}

/// Nodes the datastore knows of (Node objects and nodes that report) and
/// nodes the Service's endpoints name.
async fn nodes(store: &Store, slices: &[EndpointSlice]) -> anyhow::Result<BTreeSet<String>> {
    let mut known: BTreeSet<String> = store
        .list::<Node>()
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    known.extend(
        store
            .list::<NodeStatus>()
            .await?
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name),
    );
    known.extend(
        slices
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter_map(|e| e.node_name.clone()),
    );
    Ok(known)
}

/// `twillctl service show`.
pub async fn show(
    store_args: &StoreArgs,
    target: &str,
    node: Option<String>,
    output: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let Some((ns, name)) = target.split_once('/') else {
        return Err(UsageError(format!("{target:?}: give NAMESPACE/NAME")).into());
    };
    if !matches!(output, OutputFormat::Table | OutputFormat::Json) {
        return Err(UsageError("service show: -o table or -o json".into()).into());
    }
    let store = store_args.open_existing().await?;
    let service: Service = store
        .get(Some(ns), name)
        .await
        .with_context(|| format!("reading Service {ns}/{name}"))?
        .with_context(|| format!("Service {ns}/{name} not found"))?;
    let slices: Vec<EndpointSlice> = store
        .list::<EndpointSlice>()
        .await?
        .items
        .into_iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(ns))
        .collect();
    let mut nodes = nodes(&store, &slices).await?;
    if let Some(n) = node {
        if !nodes.contains(&n) {
            return Err(anyhow::anyhow!(
                "node {n} is not known (no Node, no NodeStatus, no endpoint names it); known: {}",
                nodes.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        nodes = BTreeSet::from([n]);
    }
    let v = view(&service, &slices, &nodes);
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        _ => {
            if nodes.is_empty() {
                eprintln!("no node is known (no Node, no NodeStatus, no endpoint names one)");
            }
            print!("{}", table(&v));
        }
    }
    Ok(ExitCode::SUCCESS)
}
