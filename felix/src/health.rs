//! twill-node's health endpoint: `/healthz` (the process is alive and its
//! runtime answers), `/readyz` (every readiness condition holds) and
//! `/metrics` (see [`crate::metrics`]), on one TCP port (default
//! 127.0.0.1:9099; the kubelet probes it over the host's loopback).
//!
//! Readiness is a set of named conditions ([`Readiness`]): a module
//! registers its condition as not ready with a reason, and flips it when its
//! state changes — `datastore` (every watch has delivered its first listing
//! and none is failing; see [`Watches`]), `policy-objects` (no
//! NetworkPolicy or GlobalNetworkPolicy in the store is invalid), `dataplane`
//! (endpoints reconciled, CNI socket open) and `bgp` (at least one
//! configured session established). `/readyz` answers 200 when all hold and
//! 503 naming those that do not, in the kube-apiserver style (`[+]name ok` /
//! `[-]name: reason`).
//!
//! [`Watches`] also keeps the objects that reached the store invalid (an
//! older CRD, a direct etcd write): each is logged once, listed in the
//! NodeStatus report, and cleared when fixed or deleted.
//!
//! The HTTP/1.1 server is written by hand on tokio: the workspace has no
//! HTTP server crate (hyper is only there as kube's client), and three fixed
//! GET routes do not justify one. It is kept small and defensive: request
//! heads over 8 KiB get 431, a client gets 5 seconds to send its head,
//! at most 32 connections are served at once (others wait in the backlog),
//! every response closes the connection, and request bodies are never read.
//! Parsing and routing are pure functions, tested without sockets.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use twill_api::Kind;

use crate::metrics::Metrics;

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at the same time.
pub const MAX_CONNECTIONS: usize = 32;

/// The datastore condition: every watch delivered its first listing and
/// none is failing.
pub const DATASTORE: &str = "datastore";
/// No policy object in the store is invalid (an invalid one is not
/// enforced, so the pods it would select may be less protected).
pub const POLICY_OBJECTS: &str = "policy-objects";
/// The dataplane condition: endpoints reconciled, CNI socket serving.
pub const DATAPLANE: &str = "dataplane";
/// The BGP condition (set by the BGP wiring): at least one configured
/// session is established.
pub const BGP: &str = "bgp";

/// Named readiness conditions; ready when every registered one holds.
#[derive(Debug, Default)]
pub struct Readiness {
    conditions: Mutex<BTreeMap<String, Condition>>,
}

/// One condition's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub ready: bool,
    /// Why it is not ready (empty when ready).
    pub reason: String,
}

impl Readiness {
    pub fn new() -> Readiness {
        Readiness::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Condition>) -> R) -> R {
        f(&mut self.conditions.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Adds a condition, not ready for `reason`, unless it exists already.
    pub fn register(&self, name: &str, reason: &str) {
        self.with(|c| {
            c.entry(name.to_string()).or_insert(Condition {
                ready: false,
                reason: reason.to_string(),
            });
        });
    }

    /// Marks a condition as holding (registering it if needed).
    pub fn set_ready(&self, name: &str) {
        self.with(|c| {
            c.insert(
                name.to_string(),
                Condition {
                    ready: true,
                    reason: String::new(),
                },
            );
        });
    }

    /// Marks a condition as not holding, saying why.
    pub fn set_not_ready(&self, name: &str, reason: &str) {
        self.with(|c| {
            c.insert(
                name.to_string(),
                Condition {
                    ready: false,
                    reason: reason.to_string(),
                },
            );
        });
    }

    /// Removes a condition (a module that is switched off).
    pub fn remove(&self, name: &str) {
        self.with(|c| {
            c.remove(name);
        });
    }

    /// All conditions, by name.
    pub fn snapshot(&self) -> BTreeMap<String, Condition> {
        self.with(|c| c.clone())
    }

    /// Whether every condition holds.
    pub fn is_ready(&self) -> bool {
        self.with(|c| c.values().all(|c| c.ready))
    }
}

/// The process's readiness conditions.
pub fn global() -> &'static Arc<Readiness> {
    static GLOBAL: OnceLock<Arc<Readiness>> = OnceLock::new();
    GLOBAL.get_or_init(|| Arc::new(Readiness::new()))
}

/// One watch's state, as [`Watches`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// No complete listing yet.
    Starting,
    Synced,
    /// Failing with this error (since the first failure of this outage).
    Failing {
        error: String,
        since: String,
    },
}

#[derive(Debug)]
struct WatchEntry {
    kind: Kind,
    phase: Phase,
}

/// An object that reached the store invalid, as the NodeStatus lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub kind: Kind,
    /// `"namespace/name"` or `"name"`.
    pub key: String,
    pub reason: String,
}

#[derive(Debug, Default)]
struct WatchesInner {
    next_id: u64,
    watches: BTreeMap<u64, WatchEntry>,
    /// (kind, key) → (reason, the watches that see it invalid).
    invalid: BTreeMap<(Kind, String), (String, BTreeSet<u64>)>,
}

/// Every datastore watch of the process and the invalid objects they saw.
/// Sets the [`DATASTORE`] and [`POLICY_OBJECTS`] conditions of a
/// [`Readiness`] whenever something changes.
#[derive(Debug)]
pub struct Watches {
    inner: Mutex<WatchesInner>,
    readiness: Arc<Readiness>,
}

/// One registered watch; dropping it (the watching task ends or is
/// aborted) removes it and what it reported.
pub struct WatchHandle {
    id: u64,
    watches: Arc<Watches>,
}

impl Watches {
    pub fn new(readiness: Arc<Readiness>) -> Arc<Watches> {
        Arc::new(Watches {
            inner: Mutex::new(WatchesInner::default()),
            readiness,
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut WatchesInner) -> R) -> R {
        let r = f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()));
        self.publish();
        r
    }

    /// Registers a watch of `kind`, not synced yet.
    pub fn register(self: &Arc<Self>, kind: Kind) -> WatchHandle {
        let id = self.with(|w| {
            w.next_id += 1;
            w.watches.insert(
                w.next_id,
                WatchEntry {
                    kind,
                    phase: Phase::Starting,
                },
            );
            w.next_id
        });
        WatchHandle {
            id,
            watches: self.clone(),
        }
    }

    /// The objects seen invalid, by kind and key.
    pub fn invalid(&self) -> Vec<Invalid> {
        let w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        w.invalid
            .iter()
            .map(|((kind, key), (reason, _))| Invalid {
                kind: *kind,
                key: key.clone(),
                reason: reason.clone(),
            })
            .collect()
    }

    /// Why the datastore is not ready, if it is not: failing watches first
    /// (kind and error), else the kinds not listed yet.
    pub fn not_ready_reason(&self) -> Option<String> {
        let w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        datastore_reason(&w)
    }

    /// Writes the conditions from the current state.
    fn publish(&self) {
        let (datastore, policy) = {
            let w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let policy: Vec<String> = w
                .invalid
                .iter()
                .filter(|((k, _), _)| matches!(k, Kind::NetworkPolicy | Kind::GlobalNetworkPolicy))
                .map(|((k, key), (reason, _))| {
                    format!("{k} {key} is invalid and not enforced: {reason}")
                })
                .collect();
            (datastore_reason(&w), policy)
        };
        match datastore {
            Some(r) => self.readiness.set_not_ready(DATASTORE, &r),
            None => self.readiness.set_ready(DATASTORE),
        }
        if policy.is_empty() {
            self.readiness.set_ready(POLICY_OBJECTS);
        } else {
            self.readiness
                .set_not_ready(POLICY_OBJECTS, &policy.join("; "));
        }
    }
}

fn datastore_reason(w: &WatchesInner) -> Option<String> {
    let mut failing = BTreeMap::new();
    let mut starting = BTreeSet::new();
    for e in w.watches.values() {
        match &e.phase {
            Phase::Failing { error, since } => {
                failing.entry(e.kind).or_insert_with(|| {
                    format!(
                        "the watch of {} has been failing since {since}: {error}",
                        e.kind.plural()
                    )
                });
            }
            Phase::Starting => {
                starting.insert(e.kind.plural());
            }
            Phase::Synced => {}
        }
    }
    if !failing.is_empty() {
        return Some(failing.into_values().collect::<Vec<_>>().join("; "));
    }
    if !starting.is_empty() {
        return Some(format!(
            "waiting for the first listing of {}",
            starting.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    None
}

impl WatchHandle {
    /// A complete listing arrived.
    pub fn synced(&self) {
        self.watches.with(|w| {
            if let Some(e) = w.watches.get_mut(&self.id) {
                e.phase = Phase::Synced;
            }
        });
    }

    /// The watch failed with `error`.
    pub fn failing(&self, error: &str) {
        self.watches.with(|w| {
            if let Some(e) = w.watches.get_mut(&self.id) {
                let since = match &e.phase {
                    Phase::Failing { since, .. } => since.clone(),
                    _ => jiff::Timestamp::now().to_string(),
                };
                e.phase = Phase::Failing {
                    error: error.to_string(),
                    since,
                };
            }
        });
    }

    /// Records the validity of one object seen by this watch (`reason`
    /// `None`: valid). Logs when an object becomes invalid or valid again,
    /// once for the process however many watches see it.
    pub fn object(&self, kind: Kind, key: &str, reason: Option<String>) {
        self.watches
            .with(|w| set_invalid(w, self.id, kind, key, reason));
    }

    /// A complete listing: every object this watch reported invalid and
    /// not in `seen` is gone.
    pub fn retain(&self, kind: Kind, seen: &BTreeSet<String>) {
        self.watches.with(|w| {
            let gone: Vec<String> = w
                .invalid
                .iter()
                .filter(|((k, key), (_, holders))| {
                    *k == kind && holders.contains(&self.id) && !seen.contains(key)
                })
                .map(|((_, key), _)| key.clone())
                .collect();
            for key in gone {
                set_invalid(w, self.id, kind, &key, None);
            }
        });
    }
}

fn set_invalid(w: &mut WatchesInner, id: u64, kind: Kind, key: &str, reason: Option<String>) {
    let k = (kind, key.to_string());
    match reason {
        Some(reason) => match w.invalid.get_mut(&k) {
            Some((old, holders)) => {
                holders.insert(id);
                if *old != reason {
                    tracing::warn!(kind = %kind, object = %key, %reason, "invalid object in the datastore; it is not used");
                    *old = reason;
                }
            }
            None => {
                tracing::warn!(kind = %kind, object = %key, %reason, "invalid object in the datastore; it is not used");
                w.invalid.insert(k, (reason, BTreeSet::from([id])));
            }
        },
        None => {
            if let Some((_, holders)) = w.invalid.get_mut(&k) {
                holders.remove(&id);
                if holders.is_empty() {
                    w.invalid.remove(&k);
                    tracing::info!(kind = %kind, object = %key, "the invalid object was fixed or deleted");
                }
            }
        }
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        let id = self.id;
        self.watches.with(|w| {
            w.watches.remove(&id);
            w.invalid.retain(|_, (_, holders)| {
                holders.remove(&id);
                !holders.is_empty()
            });
        });
    }
}

/// The process's watches, reporting into [`global`].
pub fn watches() -> &'static Arc<Watches> {
    static GLOBAL: OnceLock<Arc<Watches>> = OnceLock::new();
    GLOBAL.get_or_init(|| Watches::new(global().clone()))
}

/// What a request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The path without the query string.
    pub path: String,
}

/// A request that cannot be served, with the status to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error("request head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("malformed request line")]
    Malformed,
    #[error("unsupported HTTP version")]
    Version,
}

impl BadRequest {
    fn status(&self) -> u16 {
        match self {
            BadRequest::TooLarge => 431,
            BadRequest::Malformed => 400,
            BadRequest::Version => 505,
        }
    }
}

/// Where the head ends (index after the blank line), if it is complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
}

/// Parses the request line of a complete head. Headers are not needed by
/// any route and are ignored.
pub fn parse_head(head: &[u8]) -> Result<RequestHead, BadRequest> {
    let line_end = head
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(BadRequest::Malformed)?;
    let line = std::str::from_utf8(&head[..line_end]).map_err(|_| BadRequest::Malformed)?;
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BadRequest::Malformed);
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(BadRequest::Malformed);
    }
    if !target.starts_with('/') {
        return Err(BadRequest::Malformed);
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(BadRequest::Version);
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Ok(RequestHead {
        method: method.to_string(),
        path: path.to_string(),
    })
}

/// A response before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// The `/readyz` answer for a set of conditions.
pub fn readyz(conditions: &BTreeMap<String, Condition>) -> Reply {
    let mut body = String::new();
    let mut ready = true;
    for (name, c) in conditions {
        if c.ready {
            body.push_str(&format!("[+]{name} ok\n"));
        } else {
            ready = false;
            body.push_str(&format!("[-]{name}: {}\n", c.reason));
        }
    }
    if ready {
        body.push_str("ready\n");
        Reply::text(200, body)
    } else {
        body.push_str("not ready\n");
        Reply::text(503, body)
    }
}

/// Answers a request.
pub fn route(head: &RequestHead, readiness: &Readiness, metrics: &Metrics) -> Reply {
    if head.method != "GET" && head.method != "HEAD" {
        return Reply::text(405, "only GET and HEAD\n");
    }
    match head.path.as_str() {
        "/healthz" | "/livez" => Reply::text(200, "ok\n"),
        "/readyz" => readyz(&readiness.snapshot()),
        "/metrics" => Reply {
            status: 200,
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body: metrics.encode(),
        },
        _ => Reply::text(404, "not found: try /healthz, /readyz or /metrics\n"),
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// The bytes of a response (`head_only` for HEAD requests).
pub fn render(reply: &Reply, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
        reply.status,
        reason_phrase(reply.status),
        reply.content_type,
        reply.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(reply.body.as_bytes());
    }
    out
}

/// Binds the health port.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves health, readiness and metrics until the listener fails.
pub async fn serve(
    listener: TcpListener,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Wait for a free slot before accepting: excess clients queue in
        // the kernel's backlog instead of costing us memory.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            // Out of file descriptors and the like: back off, keep serving.
            Err(e) => {
                tracing::warn!(error = %e, "health endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (r, m) = (readiness.clone(), metrics.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = handle(stream, &r, &m).await {
                tracing::debug!(error = %e, "health endpoint connection");
            }
        });
    }
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Result<Vec<u8>, BadRequest>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&buf) {
            if end > MAX_HEAD {
                return Ok(Err(BadRequest::TooLarge));
            }
            buf.truncate(end);
            return Ok(Ok(buf));
        }
        if buf.len() > MAX_HEAD {
            return Ok(Err(BadRequest::TooLarge));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn handle(
    mut stream: TcpStream,
    readiness: &Readiness,
    metrics: &Metrics,
) -> std::io::Result<()> {
    let (reply, head_only) = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await
    {
        Err(_) => (
            Reply::text(408, "request head not received in time\n"),
            false,
        ),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(Err(bad))) => (Reply::text(bad.status(), format!("{bad}\n")), false),
        Ok(Ok(Ok(head))) => match parse_head(&head) {
            Err(bad) => (Reply::text(bad.status(), format!("{bad}\n")), false),
            Ok(h) => (route(&h, readiness, metrics), h.method == "HEAD"),
        },
    };
    tokio::time::timeout(READ_TIMEOUT, async {
        stream.write_all(&render(&reply, head_only)).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_lines() {
        let h = parse_head(b"GET /readyz?verbose HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(h.method, "GET");
        assert_eq!(h.path, "/readyz");
        assert_eq!(
            parse_head(b"GET /x HTTP/2.0\r\n\r\n"),
            Err(BadRequest::Version)
        );
        assert_eq!(parse_head(b"GET\r\n\r\n"), Err(BadRequest::Malformed));
        assert_eq!(
            parse_head(b"GET  /x HTTP/1.1\r\n\r\n"),
            Err(BadRequest::Malformed)
        );
        assert_eq!(
            parse_head(b"get /x HTTP/1.1\r\n\r\n"),
            Err(BadRequest::Malformed)
        );
        assert_eq!(
            parse_head(b"GET x HTTP/1.1\r\n\r\n"),
            Err(BadRequest::Malformed)
        );
        assert_eq!(
            parse_head(b"GET /\xff HTTP/1.1\r\n\r\n"),
            Err(BadRequest::Malformed)
        );
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.0\n\nrest"), Some(16));
    }

    #[test]
    fn readiness_names_what_is_not_ready() {
        let r = Readiness::new();
        assert!(r.is_ready(), "no conditions: nothing to wait for");
        r.register("datastore", "not read yet");
        r.register("dataplane", "endpoints not reconciled");
        r.set_ready("datastore");
        r.register("datastore", "registering again does not reset it");
        let reply = readyz(&r.snapshot());
        assert_eq!(reply.status, 503);
        assert_eq!(
            reply.body,
            "[-]dataplane: endpoints not reconciled\n[+]datastore ok\nnot ready\n"
        );
        r.set_ready("dataplane");
        assert!(r.is_ready());
        assert_eq!(readyz(&r.snapshot()).status, 200);
        r.set_not_ready("bgp", "no configured BGP session is established");
        let reply = readyz(&r.snapshot());
        assert_eq!(reply.status, 503);
        assert!(reply.body.contains("[-]bgp: no configured BGP session"));
        r.remove("bgp");
        assert!(r.is_ready());
    }

    #[test]
    fn watches_name_the_failing_kind_and_recover() {
        let r = Arc::new(Readiness::new());
        let w = Watches::new(r.clone());
        let pools = w.register(Kind::IPPool);
        let gnps = w.register(Kind::GlobalNetworkPolicy);
        let body = readyz(&r.snapshot()).body;
        assert!(
            body.contains(
                "[-]datastore: waiting for the first listing of globalnetworkpolicies, ippools"
            ),
            "{body}"
        );
        pools.synced();
        gnps.failing("404 Not Found: the server could not find the requested resource");
        let reason = w.not_ready_reason().unwrap();
        assert!(
            reason.contains("the watch of globalnetworkpolicies has been failing since"),
            "{reason}"
        );
        assert!(reason.contains("404 Not Found"), "{reason}");
        assert!(!r.is_ready());
        // A second watch of the same kind that works does not hide the failure.
        let gnps2 = w.register(Kind::GlobalNetworkPolicy);
        gnps2.synced();
        assert!(
            w.not_ready_reason()
                .unwrap()
                .contains("globalnetworkpolicies")
        );
        gnps.synced();
        assert_eq!(w.not_ready_reason(), None);
        assert!(r.is_ready(), "{:?}", r.snapshot());
        // A watch that is gone (its task ended) no longer counts.
        let nodes = w.register(Kind::Node);
        assert!(!r.is_ready());
        drop(nodes);
        assert!(r.is_ready());
    }

    #[test]
    fn invalid_objects_are_reported_until_fixed_and_policies_fail_readiness() {
        let r = Arc::new(Readiness::new());
        let w = Watches::new(r.clone());
        let (a, b) = (
            w.register(Kind::IPPool),
            w.register(Kind::GlobalNetworkPolicy),
        );
        a.synced();
        b.synced();
        a.object(
            Kind::IPPool,
            "bad",
            Some("spec.cidr: \"10.300.0.0/16\": not a CIDR".into()),
        );
        a.object(Kind::IPPool, "good", None);
        assert_eq!(w.invalid().len(), 1);
        assert!(
            r.is_ready(),
            "an invalid pool is reported, not a readiness failure"
        );
        b.object(
            Kind::GlobalNetworkPolicy,
            "g",
            Some("spec.selector: bad".into()),
        );
        let body = readyz(&r.snapshot()).body;
        assert!(
            body.contains("[-]policy-objects: GlobalNetworkPolicy g is invalid and not enforced: spec.selector: bad"),
            "{body}"
        );
        // A listing without it (deleted while the watch was down) clears it.
        b.retain(Kind::GlobalNetworkPolicy, &BTreeSet::new());
        assert!(r.is_ready());
        a.object(Kind::IPPool, "bad", None);
        assert!(w.invalid().is_empty());
        a.object(Kind::IPPool, "bad", Some("x".into()));
        drop(a);
        assert!(w.invalid().is_empty(), "a gone watch's reports go with it");
    }

    #[test]
    fn routes_and_renders() {
        let r = Readiness::new();
        let m = Metrics::new();
        let get = |p: &str| RequestHead {
            method: "GET".into(),
            path: p.into(),
        };
        assert_eq!(route(&get("/healthz"), &r, &m).status, 200);
        assert_eq!(route(&get("/nope"), &r, &m).status, 404);
        let post = RequestHead {
            method: "POST".into(),
            path: "/healthz".into(),
        };
        assert_eq!(route(&post, &r, &m).status, 405);
        let metrics = route(&get("/metrics"), &r, &m);
        assert!(metrics.body.contains("twill_endpoints"), "{}", metrics.body);
        let bytes = render(&Reply::text(200, "ok\n"), true);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("content-length: 3\r\n"));
        assert!(text.ends_with("\r\n\r\n"), "HEAD has no body: {text:?}");
    }
}
