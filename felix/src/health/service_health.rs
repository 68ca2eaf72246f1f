//! `healthCheckNodePort`: for every Service with `externalTrafficPolicy:
//! Local` (a LoadBalancer's health check port), twill-node serves HTTP on
//! that port on the node's addresses and answers as kube-proxy does, so a
//! cloud or MetalLB-style load balancer sends traffic only to nodes that
//! have an endpoint of the Service:
//!
//! * any path, `GET` (or `HEAD`): `200` when the node has local endpoints,
//!   `503` when it has none, with the body
//!   `{"service":{"namespace":"ns","name":"web"},"localEndpoints":N}` and
//!   the header `X-Load-Balancing-Endpoint-Weight: N`;
//! * N counts this node's ready, not terminating endpoints of the Service
//!   (each address and port once, over all its ports), as kube-proxy's
//!   `LocalReadyEndpoints` does: a node whose endpoints are all terminating
//!   answers 503, so the load balancer drains it while the endpoints still
//!   serve what arrives.
//!
//! [`follow`] serves what [`desired`] reads from each model the service
//! proxy applies; [`ServiceHealth`] starts a listener when a Service gets a health check
//! port and stops it when the Service goes (or the port changes); counts
//! change in place, without rebinding. A port that cannot be bound (taken
//! by another process) is logged once and tried again at the next update.
//! The HTTP side reuses the health endpoint's request reader and its
//! limits ([`super::http`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use twill_api::service_proxy::ServicePortProxy;

use super::http::{BadRequest, MAX_CONNECTIONS, READ_TIMEOUT, parse_head, read_head};

/// What one health check port answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub namespace: String,
    pub name: String,
    /// This node's ready, not terminating endpoints of the Service.
    pub local_endpoints: usize,
}

/// The health check ports `node` serves and their answers, from the model
/// the service proxy applied (pure). A port two Services claim (the API
/// server never allows it) answers for the first by name.
pub fn desired(node: &str, model: &[ServicePortProxy]) -> BTreeMap<u16, HealthCheck> {
    let mut local: BTreeMap<&str, BTreeSet<(IpAddr, u16)>> = BTreeMap::new();
    let mut ports: BTreeMap<u16, &str> = BTreeMap::new();
    for p in model {
        let Some(port) = p.health_check_node_port else {
            continue;
        };
        let held = ports.entry(port).or_insert(&p.service);
        if *held != p.service {
            continue;
        }
        local.entry(&p.service).or_default().extend(
            p.endpoints
                .iter()
                .filter(|e| e.node.as_deref() == Some(node) && e.usable())
                .map(|e| (e.addr, e.port)),
        );
    }
    ports
        .into_iter()
        .map(|(port, service)| {
            let (namespace, name) = service.split_once('/').unwrap_or(("", service));
            let n = local.get(service).map_or(0, BTreeSet::len);
            (
                port,
                HealthCheck {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    local_endpoints: n,
                },
            )
        })
        .collect()
}

/// Serves the health check ports of every model the service proxy
/// applies, until the sender goes. A port that could not be bound is
/// tried again every 10 s.
pub async fn follow(node: String, mut models: watch::Receiver<Arc<Vec<ServicePortProxy>>>) {
    let mut health = ServiceHealth::new(Vec::new());
    loop {
        let model = models.borrow_and_update().clone();
        health.update(&desired(&node, &model)).await;
        let retry = !health.failed().is_empty();
        tokio::select! {
            r = models.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(10)), if retry => {}
        }
    }
}

/// The response bytes for `check` (`head_only` for HEAD requests).
pub fn reply(check: &HealthCheck, head_only: bool) -> Vec<u8> {
    let n = check.local_endpoints;
    let (status, phrase) = if n > 0 {
        (200, "OK")
    } else {
        (503, "Service Unavailable")
    };
    let body = serde_json::json!({
        "service": {"namespace": check.namespace, "name": check.name},
        "localEndpoints": n,
    })
    .to_string();
    let mut out = format!(
        "HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n\
         x-content-type-options: nosniff\r\nx-load-balancing-endpoint-weight: {n}\r\n\
         content-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

fn error_reply(status: u16, text: &str) -> Vec<u8> {
    let phrase = match status {
        400 => "Bad Request",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "HTTP Version Not Supported",
    };
    format!(
        "HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    )
    .into_bytes()
}

/// One serving port: the shared answer and the task serving it.
struct Server {
    check: Arc<Mutex<HealthCheck>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The health check ports this node serves.
#[derive(Default)]
pub struct ServiceHealth {
    /// Where to listen; empty means every address of the node (`[::]`,
    /// or `0.0.0.0` where IPv6 is off).
    addrs: Vec<IpAddr>,
    servers: BTreeMap<u16, Server>,
    /// Ports whose bind failed, with the error, logged once each.
    failed: BTreeMap<u16, String>,
}

impl ServiceHealth {
    /// Serves on `addrs` (empty: every address of the node).
    pub fn new(addrs: Vec<IpAddr>) -> ServiceHealth {
        ServiceHealth {
            addrs,
            ..Default::default()
        }
    }

    /// The ports being served now.
    pub fn ports(&self) -> Vec<u16> {
        self.servers.keys().copied().collect()
    }

    /// Ports that could not be bound, with the reason.
    pub fn failed(&self) -> &BTreeMap<u16, String> {
        &self.failed
    }

    /// Serves exactly `want`: stops ports no longer wanted, updates the
    /// answers of the others in place, and binds new ones (retrying those
    /// that failed before). Must run inside a tokio runtime.
    pub async fn update(&mut self, want: &BTreeMap<u16, HealthCheck>) {
        self.servers.retain(|port, _| want.contains_key(port));
        self.failed.retain(|port, _| want.contains_key(port));
        for (port, check) in want {
            if let Some(s) = self.servers.get(port) {
                if let Ok(mut c) = s.check.lock()
                    && *c != *check
                {
                    *c = check.clone();
                }
                continue;
            }
            match self.bind(*port).await {
                Ok(listeners) => {
                    if self.failed.remove(port).is_some() {
                        tracing::info!(port, service = %format!("{}/{}", check.namespace, check.name),
                            "health check node port bound after all");
                    }
                    let shared = Arc::new(Mutex::new(check.clone()));
                    let task = tokio::spawn(serve(listeners, shared.clone()));
                    self.servers.insert(
                        *port,
                        Server {
                            check: shared,
                            task,
                        },
                    );
                }
                Err(e) => {
                    let e = e.to_string();
                    if self.failed.get(port) != Some(&e) {
                        tracing::warn!(port, service = %format!("{}/{}", check.namespace, check.name),
                            error = %e, "health check node port cannot be served");
                        self.failed.insert(*port, e);
                    }
                }
            }
        }
    }

    async fn bind(&self, port: u16) -> std::io::Result<Vec<TcpListener>> {
        if self.addrs.is_empty() {
            // `[::]` takes IPv4 too (unless the host set bindv6only).
            return match TcpListener::bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port))
                .await
            {
                Ok(l) => Ok(vec![l]),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
                    ) =>
                {
                    Ok(vec![
                        TcpListener::bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))
                            .await?,
                    ])
                }
                Err(e) => Err(e),
            };
        }
        let mut out = Vec::new();
        for a in &self.addrs {
            out.push(TcpListener::bind(SocketAddr::new(*a, port)).await?);
        }
        Ok(out)
    }
}

async fn serve(listeners: Vec<TcpListener>, check: Arc<Mutex<HealthCheck>>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = tokio::task::JoinSet::new();
    for l in listeners {
        let (slots, check) = (slots.clone(), check.clone());
        tasks.spawn(async move {
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let stream = match l.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "health check port: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let check = check.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(e) = answer(stream, &check).await {
                        tracing::debug!(error = %e, "health check port connection");
                    }
                });
            }
        });
    }
    // Aborting this task drops the JoinSet, which aborts the accept loops
    // and closes the listeners.
    while tasks.join_next().await.is_some() {}
}

async fn answer(mut stream: TcpStream, check: &Mutex<HealthCheck>) -> std::io::Result<()> {
    let bytes = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => error_reply(408, "request head not received in time\n"),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(Err(bad))) => error_reply(bad_status(&bad), &format!("{bad}\n")),
        Ok(Ok(Ok(head))) => match parse_head(&head) {
            Err(bad) => error_reply(bad_status(&bad), &format!("{bad}\n")),
            Ok(h) if h.method != "GET" && h.method != "HEAD" => {
                error_reply(405, "only GET and HEAD\n")
            }
            Ok(h) => {
                let now = check
                    .lock()
                    .map(|c| c.clone())
                    .map_err(|_| std::io::Error::other("health check state poisoned"))?;
                reply(&now, h.method == "HEAD")
            }
        },
    };
    tokio::time::timeout(READ_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

fn bad_status(b: &BadRequest) -> u16 {
    match b {
        BadRequest::TooLarge => 431,
        BadRequest::Malformed => 400,
        BadRequest::Version => 505,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn check(n: usize) -> HealthCheck {
        HealthCheck {
            namespace: "shop".into(),
            name: "web".into(),
            local_endpoints: n,
        }
    }

    fn split(bytes: &[u8]) -> (String, serde_json::Value) {
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.to_string(), serde_json::from_str(body).unwrap())
    }

    #[test]
    fn answers_like_kube_proxy() {
        let (head, body) = split(&reply(&check(2), false));
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("x-load-balancing-endpoint-weight: 2"),
            "{head}"
        );
        assert!(head.contains("content-type: application/json"), "{head}");
        assert_eq!(
            body,
            serde_json::json!({"service": {"namespace": "shop", "name": "web"}, "localEndpoints": 2})
        );
        let (head, body) = split(&reply(&check(0), false));
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert_eq!(body["localEndpoints"], 0);
        let text = String::from_utf8(reply(&check(1), true)).unwrap();
        assert!(text.ends_with("\r\n\r\n"), "HEAD has no body: {text:?}");
    }

    async fn get(port: u16, request: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn serves_updates_and_stops_ports() {
        let port = free_port();
        let mut h = ServiceHealth::new(vec!["127.0.0.1".parse().unwrap()]);
        let mut want = BTreeMap::from([(port, check(0))]);
        h.update(&want).await;
        assert_eq!(h.ports(), vec![port]);
        let r = get(port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
        assert!(r.contains("\"localEndpoints\":0"), "{r}");

        want.insert(port, check(3));
        h.update(&want).await;
        let r = get(port, "GET / HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(r.contains("\"localEndpoints\":3"), "{r}");
        let r = get(port, "POST / HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");

        h.update(&BTreeMap::new()).await;
        assert!(h.ports().is_empty());
        // The listener is closed once its task is gone.
        let mut closed = false;
        for _ in 0..50 {
            if TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(closed, "port {port} still accepts after its Service went");
    }

    #[tokio::test]
    async fn a_taken_port_is_reported_and_retried() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let mut h = ServiceHealth::new(vec!["127.0.0.1".parse().unwrap()]);
        let want = BTreeMap::from([(port, check(1))]);
        h.update(&want).await;
        assert!(h.ports().is_empty());
        assert!(h.failed().contains_key(&port), "{:?}", h.failed());
        drop(taken);
        h.update(&want).await;
        assert_eq!(h.ports(), vec![port], "{:?}", h.failed());
        assert!(h.failed().is_empty());
        let r = get(port, "GET / HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    }

    #[test]
    fn counts_ready_local_endpoints_once_over_all_ports() {
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                "healthCheckNodePort": 31000, "clusterIP": "10.96.0.9", "clusterIPs": ["10.96.0.9"],
                "ports": [{"name": "a", "port": 80, "nodePort": 30080},
                          {"name": "b", "port": 81, "nodePort": 30081}]}
        }))
        .unwrap();
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "web-1", "namespace": "shop",
                    "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "a", "port": 8080, "protocol": "TCP"},
                          {"name": "b", "port": 8080, "protocol": "TCP"}],
                "endpoints": [
                    {"addresses": ["10.244.0.5"], "nodeName": "n1"},
                    {"addresses": ["10.244.0.6"], "nodeName": "n1",
                        "conditions": {"ready": false, "serving": true, "terminating": true}},
                    {"addresses": ["10.244.1.5"], "nodeName": "n2"}
                ]
            }))
            .unwrap();
        let model = |node: &str| {
            twill_api::service_proxy::proxy_model(
                node,
                std::slice::from_ref(&svc),
                std::slice::from_ref(&slice),
            )
        };
        let n1 = desired("n1", &model("n1"));
        assert_eq!(
            n1,
            BTreeMap::from([(
                31000,
                HealthCheck {
                    namespace: "shop".into(),
                    name: "web".into(),
                    local_endpoints: 1
                }
            )]),
            "one ready local endpoint, counted once over both ports; the terminating one is not counted"
        );
        assert_eq!(desired("n3", &model("n3"))[&31000].local_endpoints, 0);
        let mut cluster = svc.clone();
        if let Some(s) = cluster.spec.as_mut() {
            s.external_traffic_policy = Some("Cluster".into());
        }
        let m =
            twill_api::service_proxy::proxy_model("n1", &[cluster], std::slice::from_ref(&slice));
        assert!(
            desired("n1", &m).is_empty(),
            "no health check port under the Cluster policy"
        );
    }
}
