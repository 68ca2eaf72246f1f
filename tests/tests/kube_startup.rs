//! twill-node's whole start-up against the Kubernetes backend, with the
//! only mock allowed: the API server. A small fake API server (tower-test
//! under kube-rs, wired by `twill_testkit::kube_mock`; it keeps state, so it
//! answers from objects instead of a table) holds the objects from `tests/fixtures/kube/` (list
//! responses as an API server returns them: an IPPool for `rack == 'a'`, a
//! BGPConfiguration, two BGPPeers, the Node with its labels, empty lists for
//! the rest), answers GET and LIST from them, keeps WATCH requests open
//! (answering each with the next write's event, as the server does),
//! applies writes with resourceVersion checks (404/409 as the real server),
//! and enforces the ClusterRole of `deploy/10-rbac.yaml` (403 otherwise).
//! The agent runs exactly as `twill-node` does (`agent::start_enforcing`),
//! on a thread inside a network namespace of the test's own.
//!
//! What a user would notice is asserted: the CNI socket opens only after
//! the datastore answered; CNI STATUS says an IPPool selects the node; the
//! agent read every kind it needs; it published its BGP address on its Node
//! (leaving the kubelet's labels and fields, even ones this build's types do
//! not know, alone); its NodeStatus tells the truth; a
//! CNI ADD claims a block for the node with a compare-and-swap POST; a
//! deleted BGPPeer (a watch event) ends its session and the node reports
//! ready; and the agent never needed a permission the manifests do not grant.
//!
//! The same start-up against a real kube-apiserver is in `kube_real.rs`
//! (CNI STATUS, block claims, the Node annotation, NodeStatus writes, RBAC
//! from the audit log). This mock stays for what a real server cannot be
//! made to do: hold its answers (the socket must stay shut while the first
//! reads wait), serve a Node with a field from a newer Kubernetes than the
//! agent's types, and show every watch as it opens.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use serde_json::{Value, json};
use twill_api::Store;
use twill_api::store::kubernetes::KubeStore;
use twill_cni::protocol::{Command, Request as CniRequest, Response as CniResponse};
use twill_felix::agent::{AgentConfig, start_enforcing};
use twill_felix::health;
use twill_testkit::kube_mock::{self, Handle, SendResponse};
use twill_tests::{Netns, require_binary, require_root, wait_until};

const NODE: &str = "kube-node-1";
/// The node's address (on a veth in the test's namespace) and the
/// `--node-address` CIDR that selects it.
const NODE_ADDR: &str = "172.31.77.10/24";
const NODE_CIDR: &str = "172.31.77.0/24";
const FIXTURES: [&str; 13] = [
    "ippools",
    "ipamblocks",
    "bgpconfigurations",
    "bgppeers",
    "globalnetworkpolicies",
    "nodestatuses",
    "nodes",
    "namespaces",
    "pods",
    "networkpolicies",
    "secrets",
    "services",
    "endpointslices",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// One request as the fake API server saw and answered it.
#[derive(Clone, Debug)]
struct Call {
    verb: &'static str,
    /// `nodes`, `nodestatuses/status`, ...
    resource: String,
    name: Option<String>,
    uri: String,
    /// The answer's status; 0 for a watch kept open.
    status: u16,
    body: Option<Value>,
}

/// One rule of a ClusterRole.
struct Rule {
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
}

/// The fake API server's state; shared with the test thread.
struct Api {
    /// (resource, namespace, name) → object.
    objects: BTreeMap<(String, String, String), Value>,
    /// resource → (apiVersion, kind) of its objects.
    types: BTreeMap<String, (String, String)>,
    revision: u64,
    calls: Vec<Call>,
    /// Requests seen, answered or not (`VERB resource`).
    arrived: Vec<String>,
    rules: Vec<Rule>,
    /// Answers are held while false (a slow API server).
    answering: bool,
    /// Watches kept open (by resource) until an event is delivered on them.
    watches: Vec<(String, SendResponse)>,
}

/// Kinds with a status subresource: the main resource's writes keep the
/// stored status, `/status` writes change only the status.
const WITH_STATUS: [&str; 3] = ["nodestatuses", "nodes", "pods"];

fn status_body(code: u16, reason: &str, message: String) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

fn rbac_rules() -> Vec<Rule> {
    let text = std::fs::read_to_string(root().join("../deploy/10-rbac.yaml")).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let role = docs
        .into_iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "twill-node")
        .expect("ClusterRole twill-node in deploy/10-rbac.yaml");
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| Rule {
            groups: strings(&r["apiGroups"]),
            resources: strings(&r["resources"]),
            verbs: strings(&r["verbs"]),
        })
        .collect()
}

/// Path → (group, resource incl. subresource, namespace, name).
fn parse_path(path: &str) -> (String, String, Option<String>, Option<String>) {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.first() {
        Some(&"api") => (String::new(), &segs[2..]),
        Some(&"apis") => (segs[1].to_string(), &segs[3..]),
        _ => panic!("not an API path: {path}"),
    };
    if rest.is_empty() {
        // Discovery (`/apis/GROUP/VERSION`): no resource.
        return (group, String::new(), None, None);
    }
    let (ns, rest) = if rest.len() >= 3 && rest[0] == "namespaces" {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    let mut resource = rest[0].to_string();
    if let Some(sub) = rest.get(2) {
        resource = format!("{resource}/{sub}");
    }
    (group, resource, ns, rest.get(1).map(|s| s.to_string()))
}

impl Api {
    fn load() -> Api {
        let mut objects = BTreeMap::new();
        let mut types = BTreeMap::new();
        let mut revision = 0;
        for f in FIXTURES {
            let text = std::fs::read_to_string(root().join(format!("fixtures/kube/{f}.json")))
                .unwrap_or_else(|e| panic!("fixture {f}: {e}"));
            let list: Value = serde_json::from_str(&text).unwrap();
            let rv: u64 = list["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            revision = revision.max(rv);
            let api_version = list["apiVersion"].as_str().unwrap().to_string();
            let kind = list["kind"]
                .as_str()
                .unwrap()
                .trim_end_matches("List")
                .to_string();
            for item in list["items"].as_array().unwrap() {
                let ns = item["metadata"]["namespace"].as_str().unwrap_or_default();
                let name = item["metadata"]["name"].as_str().unwrap();
                // A GET returns the type fields that list items may omit.
                let mut item = item.clone();
                item["apiVersion"] = json!(api_version);
                item["kind"] = json!(kind);
                objects.insert((f.to_string(), ns.to_string(), name.to_string()), item);
            }
            types.insert(f.to_string(), (api_version, kind));
        }
        Api {
            objects,
            types,
            revision,
            calls: Vec::new(),
            arrived: Vec::new(),
            rules: rbac_rules(),
            answering: false,
            watches: Vec::new(),
        }
    }

    fn allowed(&self, group: &str, resource: &str, verb: &str) -> bool {
        self.rules.iter().any(|r| {
            r.groups.iter().any(|g| g == group)
                && r.resources.iter().any(|x| x == resource)
                && r.verbs.iter().any(|v| v == verb)
        })
    }

    fn object(&self, resource: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|((r, _, n), _)| r == resource && n == name)
            .map(|(_, v)| v)
    }

    /// Deletes an object as `kubectl delete` would: the open watches on its
    /// resource get the DELETED event, and their response ends there (the
    /// watcher then watches again from that revision).
    fn delete_and_notify(&mut self, resource: &str, name: &str) {
        let key = self
            .objects
            .keys()
            .find(|(r, _, n)| r == resource && n == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {resource} {name}"));
        let mut obj = self.objects.remove(&key).unwrap();
        self.next_revision(&mut obj);
        assert!(
            self.notify(resource, "DELETED", &obj),
            "nobody watches {resource}"
        );
    }

    /// Sends a watch event to the open watches of `resource`, as the API
    /// server does after every write (the watcher then watches again from
    /// that revision). Whether anybody was watching.
    fn notify(&mut self, resource: &str, kind: &str, obj: &Value) -> bool {
        let mut line = serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap();
        line.push(b'\n');
        let (notify, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.watches)
            .into_iter()
            .partition(|(r, _)| r == resource);
        self.watches = keep;
        let any = !notify.is_empty();
        for (_, send) in notify {
            send.send_response(kube_mock::respond(200, line.clone()));
        }
        any
    }

    fn next_revision(&mut self, obj: &mut Value) {
        self.revision += 1;
        obj["metadata"]["resourceVersion"] = json!(self.revision.to_string());
    }

    /// Answers one request: Some((status, body)), or None to keep it open.
    fn answer(
        &mut self,
        method: &Method,
        uri: &http::Uri,
        body: Option<Value>,
    ) -> (&'static str, String, Option<String>, Option<(u16, Value)>) {
        // API discovery (`/apis/GROUP/VERSION`): the agent asks once which
        // EndpointSlice version the server serves.
        let segs: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
        if segs.len() == 3 && segs[0] == "apis" {
            let (group, version) = (segs[1], segs[2]);
            let resources: Vec<Value> = self
                .types
                .iter()
                .filter(|(_, (v, _))| *v == format!("{group}/{version}"))
                .map(|(r, (_, kind))| json!({"name": r, "kind": kind, "namespaced": true, "singularName": "", "verbs": ["get", "list", "watch"]}))
                .collect();
            let body = json!({"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": format!("{group}/{version}"), "resources": resources});
            return (
                "discover",
                format!("{group}/{version}"),
                None,
                Some((200, body)),
            );
        }
        let (group, resource, ns, name) = parse_path(uri.path());
        let watch = uri.query().unwrap_or_default().contains("watch=true");
        let verb = match (method.as_str(), &name) {
            ("GET", Some(_)) => "get",
            ("GET", None) if watch => "watch",
            ("GET", None) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", _) => "delete",
            (m, _) => panic!("unexpected method {m}"),
        };
        if !self.allowed(&group, &resource, verb) {
            let msg = format!(
                "{resource} is forbidden: User \"system:serviceaccount:twill-system:twill-node\" cannot {verb} resource \"{resource}\" in API group \"{group}\""
            );
            return (
                verb,
                resource,
                name,
                Some((403, status_body(403, "Forbidden", msg))),
            );
        }
        let (base, sub) = match resource.split_once('/') {
            Some((b, s)) => (b.to_string(), Some(s.to_string())),
            None => (resource.clone(), None),
        };
        let key = |n: &str| (base.clone(), ns.clone().unwrap_or_default(), n.to_string());
        let not_found = |n: &str| {
            (
                404,
                status_body(404, "NotFound", format!("{base} \"{n}\" not found")),
            )
        };
        let reply = match verb {
            "watch" => None,
            "list" => {
                let items: Vec<Value> = self
                    .objects
                    .iter()
                    .filter(|((r, o_ns, _), _)| *r == base && ns.as_ref().is_none_or(|n| n == o_ns))
                    .map(|(_, v)| v.clone())
                    .collect();
                let (api_version, kind) = self.types[&base].clone();
                Some((
                    200,
                    json!({"kind": format!("{kind}List"), "apiVersion": api_version,
                        "metadata": {"resourceVersion": self.revision.to_string()}, "items": items}),
                ))
            }
            "get" => {
                let n = name.clone().unwrap();
                Some(match self.objects.get(&key(&n)) {
                    Some(o) => (200, o.clone()),
                    None => not_found(&n),
                })
            }
            "create" => {
                let mut obj = body.clone().expect("create without a body");
                let n = obj["metadata"]["name"].as_str().unwrap().to_string();
                if self.objects.contains_key(&key(&n)) {
                    Some((
                        409,
                        status_body(
                            409,
                            "AlreadyExists",
                            format!("{base} \"{n}\" already exists"),
                        ),
                    ))
                } else {
                    if WITH_STATUS.contains(&base.as_str())
                        && let Some(m) = obj.as_object_mut()
                    {
                        m.remove("status");
                    }
                    obj["metadata"]["uid"] = json!(format!("uid-{n}-{}", self.revision));
                    obj["metadata"]["creationTimestamp"] = json!("2026-11-25T12:00:00Z");
                    self.next_revision(&mut obj);
                    self.objects.insert(key(&n), obj.clone());
                    self.notify(&base, "ADDED", &obj);
                    Some((201, obj))
                }
            }
            "update" => {
                let n = name.clone().unwrap();
                let mut obj = body.clone().expect("update without a body");
                match self.objects.get(&key(&n)).cloned() {
                    None => Some(not_found(&n)),
                    Some(stored)
                        if obj["metadata"]["resourceVersion"]
                            != stored["metadata"]["resourceVersion"] =>
                    {
                        Some((
                            409,
                            status_body(
                                409,
                                "Conflict",
                                format!(
                                    "Operation cannot be fulfilled on {base} \"{n}\": the object has been modified; please apply your changes to the latest version and try again"
                                ),
                            ),
                        ))
                    }
                    Some(stored) => {
                        if sub.as_deref() == Some("status") {
                            let mut next = stored.clone();
                            next["status"] = obj["status"].clone();
                            obj = next;
                        } else if WITH_STATUS.contains(&base.as_str()) {
                            match stored.get("status") {
                                Some(s) => obj["status"] = s.clone(),
                                None => {
                                    if let Some(m) = obj.as_object_mut() {
                                        m.remove("status");
                                    }
                                }
                            }
                        }
                        obj["metadata"]["uid"] = stored["metadata"]["uid"].clone();
                        self.next_revision(&mut obj);
                        self.objects.insert(key(&n), obj.clone());
                        self.notify(&base, "MODIFIED", &obj);
                        Some((200, obj))
                    }
                }
            }
            "delete" => {
                let n = name.clone().unwrap();
                Some(match self.objects.remove(&key(&n)) {
                    Some(o) => (200, o),
                    None => not_found(&n),
                })
            }
            _ => Some((
                405,
                status_body(
                    405,
                    "MethodNotAllowed",
                    format!("the fake API server does not do {verb}"),
                ),
            )),
        };
        (verb, resource, name, reply)
    }
}

fn respond(status: u16, body: &Value) -> http::Response<kube::client::Body> {
    kube_mock::respond(status, serde_json::to_vec(body).unwrap())
}

/// Serves requests from the agent until the client side is dropped.
async fn serve(api: Arc<Mutex<Api>>, mut handle: Handle) {
    while let Some((req, send)) = handle.next_request().await {
        let (parts, body) = req.into_parts();
        let (_, resource, _, _) = parse_path(parts.uri.path());
        api.lock()
            .unwrap()
            .arrived
            .push(format!("{} {resource}", parts.method));
        let api = api.clone();
        tokio::spawn(async move {
            let bytes = body.collect_bytes().await.unwrap();
            let body: Option<Value> =
                (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).unwrap());
            // A slow API server: nothing is answered until the test says so.
            while !api.lock().unwrap().answering {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mut api = api.lock().unwrap();
            let (verb, resource, name, reply) = api.answer(&parts.method, &parts.uri, body.clone());
            let resource_of_call = resource.clone();
            api.calls.push(Call {
                verb,
                resource,
                name,
                uri: parts.uri.to_string(),
                status: reply.as_ref().map(|r| r.0).unwrap_or(0),
                body,
            });
            match reply {
                Some((status, v)) => send.send_response(respond(status, &v)),
                None => api.watches.push((resource_of_call, send)),
            }
        });
    }
}

/// One CNI request over the socket, as twill-cni sends it.
fn cni(socket: &Path, req: &CniRequest) -> CniResponse {
    let mut s = UnixStream::connect(socket).expect("connect to the CNI socket");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut line = serde_json::to_vec(req).unwrap();
    line.push(b'\n');
    s.write_all(&line).unwrap();
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

fn net_conf() -> Value {
    json!({"cniVersion": "1.1.0", "name": "twill", "type": "twill-cni"})
}

#[test]
fn twill_node_starts_against_the_kubernetes_api() {
    require_root();
    require_binary("nft", "nftables");
    let ns = Netns::new("tks");
    ns.ip(&[
        "link",
        "add",
        "uplink",
        "type",
        "veth",
        "peer",
        "name",
        "uplink-peer",
    ]);
    ns.ip(&["addr", "add", NODE_ADDR, "dev", "uplink"]);
    ns.ip(&["link", "set", "uplink", "up"]);
    ns.ip(&["link", "set", "uplink-peer", "up"]);
    let pod_ns = Netns::new("tkp");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("cni.sock");

    let api = Arc::new(Mutex::new(Api::load()));
    let readiness = health::global().clone();
    readiness.register(health::DATASTORE, "the datastore has not been read yet");
    readiness.register(health::DATAPLANE, "endpoints are not reconciled yet");
    let (started_tx, started_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cfg_dir = dir.path().to_path_buf();
    let server_api = api.clone();
    let agent_thread = twill_tests::netns::spawn_in(ns.name(), move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (client, handle) = kube_mock::pair();
            tokio::spawn(serve(server_api, handle));
            let store = Store::new(KubeStore::new(client));
            let cfg = AgentConfig {
                node_name: NODE.into(),
                store,
                cni_socket: cfg_dir.join("cni.sock"),
                state_dir: cfg_dir.join("state"),
                mtu: None,
                register_node: None,
                status_interval: Duration::from_secs(1),
                status_heartbeat: Duration::from_secs(1),
                block_grace: Duration::from_secs(300),
                route_resync: Duration::from_secs(30),
                node_address: Some(NODE_CIDR.parse().unwrap()),
                bgp_settle: Duration::from_secs(5),
                service_proxy: twill_felix::dataplane::services::Mode::Off,
            };
            match start_enforcing(cfg).await {
                Ok(node) => {
                    started_tx.send(Ok(())).unwrap();
                    let _ = stop_rx.await;
                    drop(node);
                }
                Err(e) => started_tx.send(Err(format!("{e:#}"))).unwrap(),
            }
        });
        rt.shutdown_timeout(Duration::from_secs(5));
    });

    // 1. Start-up waits for the datastore: with the API server not
    //    answering, the agent has asked for the IPAM blocks (to reconcile
    //    endpoints) but the CNI socket is not open.
    assert!(
        wait_until(Duration::from_secs(30), || api
            .lock()
            .unwrap()
            .arrived
            .iter()
            .any(|a| a == "GET ipamblocks")),
        "the agent never asked the API for IPAM blocks: {:?}",
        api.lock().unwrap().arrived
    );
    assert!(
        UnixStream::connect(&socket).is_err(),
        "the CNI socket accepts requests before the datastore was read"
    );
    api.lock().unwrap().answering = true;
    match started_rx.recv_timeout(Duration::from_secs(120)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("twill-node did not start against the Kubernetes API: {e}"),
        Err(e) => panic!("twill-node start-up did not finish: {e}"),
    }

    // 2. The CNI socket answers; STATUS is ready because the IPPool selects
    //    this node by the label its Node object carries (rack=a).
    let status = cni(
        &socket,
        &CniRequest {
            command: Command::Status,
            container_id: String::new(),
            netns: String::new(),
            ifname: String::new(),
            args: BTreeMap::new(),
            config: net_conf(),
        },
    );
    assert!(matches!(status, CniResponse::Ok(None)), "{status:?}");

    // 3. The NodeStatus report says what is true.
    let report = |api: &Api| -> Option<Value> {
        api.object("nodestatuses", NODE)
            .and_then(|o| o.get("status").cloned())
    };
    assert!(
        wait_until(Duration::from_secs(60), || report(&api.lock().unwrap())
            .is_some_and(|r| r["bgpPeers"]
                .as_array()
                .is_some_and(|p| !p.is_empty()))),
        "no NodeStatus listing the BGP peer was written: {:?}",
        api.lock().unwrap().object("nodestatuses", NODE)
    );
    let r = report(&api.lock().unwrap()).unwrap();
    assert_eq!(r["agentVersion"], env!("CARGO_PKG_VERSION"), "{r}");
    assert_eq!(r["address"], NODE_ADDR, "{r}");
    assert_eq!(
        r["asNumber"], 65010,
        "the Node's twill.dev/as-number wins: {r}"
    );
    assert_eq!(r["endpoints"], 0, "{r}");
    let peers: Vec<(String, u64)> = r["bgpPeers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["address"].as_str().unwrap().to_string(),
                p["asNumber"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        peers,
        [("172.31.77.1".to_string(), 65001)],
        "only the BGPPeer whose nodeSelector matches the Node's labels: {r}"
    );
    let peer = &r["bgpPeers"][0];
    assert_ne!(
        peer["state"], "Established",
        "nobody answers at 172.31.77.1: {r}"
    );
    assert_eq!(
        r["ready"], false,
        "a node with its only BGP session down is not ready: {r}"
    );
    {
        let api = api.lock().unwrap();
        let ns_obj = api.object("nodestatuses", NODE).unwrap();
        assert_eq!(ns_obj["spec"]["reportInterval"], 1, "{ns_obj}");
        // Created once, then reported through the status subresource.
        let writes: Vec<(&str, &str)> = api
            .calls
            .iter()
            .filter(|c| c.resource.starts_with("nodestatuses") && c.verb != "get")
            .map(|c| (c.verb, c.resource.as_str()))
            .collect();
        assert_eq!(writes[0], ("create", "nodestatuses"), "{writes:?}");
        assert!(
            writes[1..]
                .iter()
                .all(|w| *w == ("update", "nodestatuses/status")),
            "{writes:?}"
        );
    }

    // 4. The node address is published on the Node; the kubelet's labels
    //    and annotations are still there.
    {
        let api = api.lock().unwrap();
        let node = api.object("nodes", NODE).unwrap();
        let ann = &node["metadata"]["annotations"];
        assert_eq!(ann["twill.dev/bgp-address"], NODE_ADDR, "{node}");
        assert_eq!(ann["node.alpha.kubernetes.io/ttl"], "0", "{node}");
        assert_eq!(node["metadata"]["labels"]["rack"], "a", "{node}");
        assert_eq!(node["spec"]["podCIDR"], "10.200.1.0/24", "{node}");
        // A field a newer Kubernetes set, unknown to this build's types,
        // survives the write (version skew must not wipe kubelet state).
        assert_eq!(
            node["spec"]["aFieldFromANewerKubernetes"],
            json!({"enabled": true}),
            "{node}"
        );
        let put = api
            .calls
            .iter()
            .find(|c| c.verb == "update" && c.resource == "nodes")
            .expect("no Node update");
        assert_eq!(put.status, 200, "{put:?}");
        assert_eq!(
            put.body.as_ref().unwrap()["metadata"]["resourceVersion"],
            "5050",
            "the Node write is a compare-and-swap on the revision read"
        );
    }

    // 5. Every kind the agent needs was read from the API: listed, then watched.
    {
        let api = api.lock().unwrap();
        for kind in [
            "ippools",
            "ipamblocks",
            "bgpconfigurations",
            "bgppeers",
            "globalnetworkpolicies",
            "nodes",
            "pods",
            "namespaces",
            "networkpolicies",
        ] {
            for verb in ["list", "watch"] {
                assert!(
                    api.calls
                        .iter()
                        .any(|c| c.resource == kind && c.verb == verb),
                    "the agent did not {verb} {kind}"
                );
            }
        }
        assert!(
            api.calls.iter().any(|c| c.resource == "nodes"
                && c.verb == "get"
                && c.name.as_deref() == Some(NODE)),
            "the agent never read its own Node"
        );
    }

    // 6. A CNI ADD claims a block of the pool for this node: a POST of an
    //    IPAMBlock with the node's affinity, inside the pool.
    let add = cni(
        &socket,
        &CniRequest {
            command: Command::Add,
            container_id: "c0ffee01".into(),
            netns: format!("/run/netns/{}", pod_ns.name()),
            ifname: "eth0".into(),
            args: BTreeMap::from([
                ("K8S_POD_NAMESPACE".to_string(), "default".to_string()),
                ("K8S_POD_NAME".to_string(), "web-1".to_string()),
            ]),
            config: net_conf(),
        },
    );
    let result = match add {
        CniResponse::Ok(Some(r)) => serde_json::to_value(r).unwrap(),
        other => panic!("CNI ADD failed: {other:?}"),
    };
    let addr = result["ips"][0]["address"].as_str().unwrap().to_string();
    let pool: ipnetwork::Ipv4Network = "10.244.0.0/16".parse().unwrap();
    let ip: std::net::Ipv4Addr = addr.split('/').next().unwrap().parse().unwrap();
    assert!(pool.contains(ip), "{addr} is not in the pool");
    {
        let api = api.lock().unwrap();
        let claims: Vec<&Call> = api
            .calls
            .iter()
            .filter(|c| c.resource == "ipamblocks" && c.verb == "create" && c.status == 201)
            .collect();
        assert_eq!(claims.len(), 1, "one block claimed: {claims:?}");
        let block = claims[0].body.as_ref().unwrap();
        assert_eq!(block["spec"]["affinity"], NODE, "{block}");
        let cidr: ipnetwork::Ipv4Network = block["spec"]["cidr"].as_str().unwrap().parse().unwrap();
        assert_eq!(cidr.prefix(), 26, "{block}");
        assert!(pool.contains(cidr.network()), "{block}");
        let stored = api
            .objects
            .values()
            .find(|o| o["spec"]["cidr"] == block["spec"]["cidr"])
            .expect("the block is stored");
        assert!(
            cidr.contains(ip),
            "the address {ip} comes from the claimed block {cidr}: {stored}"
        );
        assert_eq!(
            stored["spec"]["allocations"].as_array().map(Vec::len),
            Some(1),
            "{stored}"
        );
        assert!(
            api.calls.iter().any(|c| c.resource == "pods"
                && c.verb == "get"
                && c.name.as_deref() == Some("web-1")),
            "the pod object was not read for the ADD"
        );
    }
    let block_cidr = {
        let api = api.lock().unwrap();
        let claim = api
            .calls
            .iter()
            .find(|c| c.resource == "ipamblocks" && c.verb == "create")
            .unwrap();
        claim.body.as_ref().unwrap()["spec"]["cidr"].clone()
    };
    assert!(
        wait_until(Duration::from_secs(30), || report(&api.lock().unwrap())
            .is_some_and(|r| r["endpoints"] == 1
                && r["blocks"]
                    .as_array()
                    .is_some_and(|b| b.contains(&block_cidr)))),
        "the NodeStatus does not show the new endpoint and the claimed block {block_cidr}: {:?}",
        report(&api.lock().unwrap())
    );

    // 7. The BGPPeer is deleted (kubectl delete bgppeer rack-a-tor): the
    //    watch delivers it, the session goes, and with no BGP session
    //    expected the node reports itself ready.
    api.lock()
        .unwrap()
        .delete_and_notify("bgppeers", "rack-a-tor");
    assert!(
        wait_until(Duration::from_secs(60), || report(&api.lock().unwrap())
            .is_some_and(|r| r["bgpPeers"]
                .as_array()
                .is_some_and(Vec::is_empty)
                && r["ready"] == true)),
        "the NodeStatus still lists the deleted peer or is not ready: {:?}",
        report(&api.lock().unwrap())
    );

    // 8. Nothing needed a permission the manifests do not grant, and no
    //    request was one the fake does not understand.
    {
        let api = api.lock().unwrap();
        let bad: Vec<String> = api
            .calls
            .iter()
            .filter(|c| c.status == 403 || (c.status >= 405 && c.status != 409))
            .map(|c| format!("{} {} → {}", c.verb, c.uri, c.status))
            .collect();
        assert!(bad.is_empty(), "requests the API server refused: {bad:#?}");
        let verbs: BTreeSet<(&str, &str)> = api
            .calls
            .iter()
            .filter(|c| !matches!(c.verb, "get" | "list" | "watch"))
            .map(|c| (c.verb, c.resource.as_str()))
            .collect();
        eprintln!("writes: {verbs:?}");
    }

    let _ = stop_tx.send(());
    agent_thread.join().expect("agent thread");
    drop(pod_ns);
    drop(ns);
}
