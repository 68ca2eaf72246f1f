//! Twill on a real kube-apiserver (v1.20.2 with etcd, `tests/src/kube_local.rs`;
//! each test starts its own on free loopback ports and stops it by PID).
//! No controller-manager, scheduler or kubelet: a test creates Nodes and Pods
//! itself and writes `status.podIP` as a kubelet would.
//!
//! What a user would notice on a fresh cluster is asserted: the shipped CRDs
//! apply server-side and become Established; every example and every
//! manifest under deploy/ applies; the server itself enforces each generated
//! CRD's schema (valid objects stored with their int-or-string values intact,
//! one representative invalid object per kind refused naming the field);
//! twill-node runs as the `twill-node` ServiceAccount with a TokenRequest
//! token under the shipped RBAC (the audit log shows none of its requests
//! refused), claims an IPAMBlock on a CNI ADD, publishes its Node annotation
//! and NodeStatus, and two agents mesh so pods ping across; twillctl and
//! kubectl see the same objects; and a 30 s API server outage under
//! cross-node traffic loses no packet, after which the agents reconnect and
//! a policy change made then is programmed. Services and EndpointSlices: a
//! 1.20 server serves EndpointSlice only as discovery.k8s.io/v1beta1, which
//! the Kubernetes backend reads and writes as v1; the LoadBalancer
//! allocator writes a Service's status there.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use twill_api::Kind;
use twill_tests::cni::Attachment;
use twill_tests::kube_local::{KubeApi, Relay};
use twill_tests::{Netns, TestNode, bins, require_binary, require_root, veth_between, wait_until};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The shipped CRDs, applied server-side, each Established with its names
/// accepted and no NonStructuralSchema condition.
fn install_crds(api: &KubeApi) {
    let out = api.kubectl_ok(&[
        "apply",
        "--server-side",
        "-f",
        path_str(&root().join("deploy/crds")),
    ]);
    let names: Vec<String> = twill_api::crds::all()
        .iter()
        .map(|c| c.metadata.name.clone().expect("CRD name"))
        .collect();
    for n in &names {
        assert!(out.contains(n), "apply did not mention {n}: {out}");
    }
    wait_established(api, &names);
}

fn wait_established(api: &KubeApi, names: &[String]) {
    for n in names {
        let crd = format!("crd/{n}");
        api.kubectl_ok(&["wait", "--for=condition=Established", "--timeout=60s", &crd]);
        let c = api.get_json(&[&crd]);
        let conditions = c["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let status = |t: &str| {
            conditions
                .iter()
                .find(|x| x["type"] == t)
                .map(|x| x["status"].as_str().unwrap_or_default().to_string())
        };
        assert_eq!(
            status("Established").as_deref(),
            Some("True"),
            "{n}: {conditions:?}"
        );
        assert_eq!(
            status("NamesAccepted").as_deref(),
            Some("True"),
            "{n}: {conditions:?}"
        );
        assert_ne!(
            status("NonStructuralSchema").as_deref(),
            Some("True"),
            "{n} is not structural: {conditions:?}"
        );
    }
}

/// Namespace, ServiceAccount, RBAC, CNI ConfigMap and DaemonSet (deploy/*.yaml).
fn install_deploy(api: &KubeApi) {
    api.kubectl_ok(&[
        "apply",
        "--server-side",
        "-f",
        path_str(&root().join("deploy")),
    ]);
}

#[test]
fn shipped_crds_examples_and_manifests_apply_on_a_fresh_server() {
    let api = KubeApi::start();
    let t0 = Instant::now();
    install_crds(&api);

    // Every example applies on its own, in file order, on the fresh server.
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "examples/: {files:?}");
    let mut applied = 0;
    for f in &files {
        let out = api.kubectl(&["apply", "--server-side", "-f", path_str(f)]);
        assert!(
            out.status.success(),
            "{} does not apply on a fresh cluster: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        applied += String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("serverside-applied"))
            .count();
    }
    // What was applied is there: the NetworkPolicy in its namespace, every
    // Twill object.
    api.kubectl_ok(&["get", "networkpolicy", "db-from-web", "-n", "shop"]);
    let twill = api.get_json(&["ippools,bgppeers,bgpconfigurations,globalnetworkpolicies"]);
    let stored = twill["items"].as_array().map(Vec::len).unwrap_or(0);
    assert!(
        stored >= 5 && applied >= stored,
        "{stored} Twill objects stored, {applied} applied"
    );

    // deploy/ (Namespace, RBAC, ConfigMap, DaemonSet) and the rack example.
    install_deploy(&api);
    api.kubectl_ok(&[
        "apply",
        "--server-side",
        "-f",
        path_str(&root().join("deploy/examples")),
    ]);
    let ds = api.get_json(&["daemonset", "twill-node", "-n", "twill-system"]);
    assert_eq!(
        ds["spec"]["template"]["spec"]["serviceAccountName"], "twill-node",
        "{ds}"
    );
    api.kubectl_ok(&["get", "serviceaccount", "twill-node", "-n", "twill-system"]);
    api.kubectl_ok(&["get", "clusterrolebinding", "twill-node"]);
    eprintln!("applied everything in {:.1} s", t0.elapsed().as_secs_f64());
}

/// One kind's valid object and a representative invalid one, with the field
/// the server must name when it refuses it.
struct Case {
    valid: Value,
    invalid: Value,
    field: &'static str,
}

fn obj(kind: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "twill.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})
}

/// `sent` is part of `stored`: every value sent is there unchanged (the
/// server adds the schema's defaults around them).
fn contains(stored: &Value, sent: &Value) -> bool {
    match (stored, sent) {
        (Value::Object(a), Value::Object(b)) => b
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|x| contains(x, v))),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| contains(x, y))
        }
        _ => stored == sent,
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            valid: obj(
                "IPPool",
                "pool",
                json!({"cidr": "10.244.0.0/16", "blockSize": 26}),
            ),
            invalid: obj("IPPool", "pool-bad", json!({"cidr": "10.300.0.0/16"})),
            field: "spec.cidr",
        },
        Case {
            valid: obj(
                "IPPool",
                "pool6",
                json!({"cidr": "fd00:10:244::/56", "blockSize": 122}),
            ),
            invalid: obj(
                "IPPool",
                "pool-small",
                json!({"cidr": "10.245.0.0/16", "blockSize": 19}),
            ),
            field: "spec.blockSize",
        },
        Case {
            valid: obj(
                "IPAMBlock",
                "10-244-0-0-26",
                json!({"cidr": "10.244.0.0/26", "affinity": "node-a", "pool": "pool",
                    "sequence": 1, "allocations": [{"ordinal": 0, "handle": "c0ffee",
                    "sequence": 1, "attributes": {"pod": "web-1"}}]}),
            ),
            invalid: obj("IPAMBlock", "bad-block", json!({"cidr": "10.244.0.0/33"})),
            field: "spec.cidr",
        },
        Case {
            valid: obj(
                "BGPConfiguration",
                "default",
                json!({"asNumber": 64512, "routeReflectorClusterId": "224.0.0.1",
                    "nodeAddress": {"cidr": "172.30.0.0/24"},
                    "gracefulRestart": {"enabled": true, "restartTime": 120},
                    "prefixAdvertisements": [{"cidr": "10.244.0.0/16", "communities": ["65000:100"]}]}),
            ),
            invalid: obj(
                "BGPConfiguration",
                "node.bad",
                json!({"routeReflectorClusterId": "224.0.0"}),
            ),
            field: "spec.routeReflectorClusterId",
        },
        Case {
            valid: obj(
                "BGPPeer",
                "tor",
                json!({"peerIP": "10.96.1.1", "asNumber": 65001, "ttlSecurity": 1,
                    "exportFilters": [{"action": "Accept", "cidr": "10.244.0.0/16", "ge": 26, "le": 32}]}),
            ),
            invalid: obj(
                "BGPPeer",
                "tor-bad",
                json!({"peerIP": "10.96.1.2", "asNumber": 65001, "ttlSecurity": 255}),
            ),
            field: "spec.ttlSecurity",
        },
        Case {
            valid: obj(
                "GlobalNetworkPolicy",
                "web",
                json!({"selector": "app == 'web'", "ingress": [{"action": "Allow",
                    "protocol": "TCP", "notProtocol": 17, "ipVersion": 4,
                    "source": {"nets": ["10.0.0.0/8", "192.168.1.1", "fd00::/8"]},
                    "destination": {"ports": [80, "8080:8090", "http"], "notPorts": [22]}}]}),
            ),
            invalid: obj(
                "GlobalNetworkPolicy",
                "bad-port",
                json!({"ingress": [{"action": "Allow", "protocol": "TCP",
                    "destination": {"ports": [0]}}]}),
            ),
            field: "destination.ports",
        },
        Case {
            valid: obj(
                "GlobalNetworkPolicy",
                "icmp",
                json!({"egress": [{"action": "Deny", "protocol": 1}]}),
            ),
            invalid: obj(
                "GlobalNetworkPolicy",
                "bad-nets",
                json!({"egress": [{"action": "Deny", "destination": {"nets": ["10.0.0.0/40"]}}]}),
            ),
            field: "destination.nets",
        },
        Case {
            valid: obj("NodeStatus", "node-a", json!({"reportInterval": 10})),
            invalid: obj("NodeStatus", "node-bad", json!({"reportInterval": -1})),
            field: "spec.reportInterval",
        },
    ]
}

#[test]
fn every_generated_crd_is_enforced_by_the_server() {
    let api = KubeApi::start();
    // The CRDs as the generator makes them (deploy/crds is checked to match
    // elsewhere), through the real server.
    let rendered = twill_api::crds::rendered().expect("render CRDs");
    let yaml: Vec<String> = rendered.into_iter().map(|(_, body)| body).collect();
    api.apply(&yaml.join("---\n"));
    let names: Vec<String> = twill_api::crds::all()
        .iter()
        .map(|c| c.metadata.name.clone().expect("CRD name"))
        .collect();
    wait_established(&api, &names);

    let cases = cases();
    let kinds: std::collections::BTreeSet<&str> = cases
        .iter()
        .map(|c| c.valid["kind"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(kinds.len(), names.len(), "a case for every kind: {kinds:?}");
    for c in &cases {
        let kind = c.valid["kind"].as_str().unwrap_or_default();
        let k = Kind::from_type_meta("twill.dev/v1", kind).expect("a Twill kind");
        // Twill's own validation agrees with the server on both.
        if let Err(e) = k.validate_value(&c.valid) {
            panic!("Twill refuses the valid {kind}: {e}");
        }
        assert!(
            k.validate_value(&c.invalid).is_err(),
            "Twill accepts the invalid {kind}: {}",
            c.invalid
        );

        // The valid one is stored as sent: int-or-string values keep their type.
        api.apply(&c.valid.to_string());
        let name = c.valid["metadata"]["name"].as_str().unwrap_or_default();
        let stored = api.get_json(&[&kind.to_lowercase(), name]);
        assert!(
            contains(&stored["spec"], &c.valid["spec"]),
            "{kind} {name} changed on the way: sent {}, stored {}",
            c.valid["spec"],
            stored["spec"]
        );

        // The invalid one is refused by the server, naming the field.
        let bad = c.invalid["metadata"]["name"].as_str().unwrap_or_default();
        let out = api.kubectl_in(
            &["apply", "--server-side", "-f", "-"],
            Some(&c.invalid.to_string()),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(c.field) && err.contains("Invalid"),
            "the server did not refuse {kind} {bad} naming {}: {err}",
            c.field
        );
        let gone = api.kubectl(&["get", &kind.to_lowercase(), bad]);
        assert!(!gone.status.success(), "{kind} {bad} was stored anyway");
    }

    // The issue's example, exactly as a user types it.
    let out = api.kubectl_in(
        &["apply", "-f", "-"],
        Some("apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: typo\nspec:\n  cidr: 10.300.0.0/16\n"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("spec.cidr"),
        "kubectl apply of an IPPool with cidr 10.300.0.0/16 was not refused: {err}"
    );
}

// ---------------------------------------------------------------------------
// twill-node against the real server.

const POOL: &str = "10.244.0.0/16";
const LINK: &str = "172.31.93";

/// Two nodes on one link, each running twill-node in its namespace as the
/// twill-node ServiceAccount through a relay to the API server.
struct Cluster {
    api: KubeApi,
    nodes: Vec<TestNode>,
    _relays: Vec<Relay>,
    _dir: tempfile::TempDir,
    /// Pod name → (namespace guard, address).
    pods: Vec<(String, Netns, String)>,
}

fn prerequisites() {
    require_root();
    require_binary("nft", "nftables");
    require_binary("ping", "iputils-ping");
}

impl Cluster {
    fn up() -> Cluster {
        prerequisites();
        let api = KubeApi::start();
        install_crds(&api);
        install_deploy(&api);
        api.apply(&format!(
            "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: pods\nspec:\n  cidr: {POOL}\n  blockSize: 26\n---\n\
             apiVersion: twill.dev/v1\nkind: BGPConfiguration\nmetadata:\n  name: default\nspec:\n  asNumber: 64512\n  \
             holdTime: 9\n  keepaliveTime: 3\n"
        ));
        // Nodes as a kubelet registers them (label, annotation, podCIDR).
        for (i, n) in ["node-a", "node-b"].iter().enumerate() {
            api.apply(&format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {n}\n  labels:\n    kubernetes.io/hostname: {n}\n  \
                 annotations:\n    node.alpha.kubernetes.io/ttl: \"0\"\nspec:\n  podCIDR: 10.200.{i}.0/24\n"
            ));
        }
        // A TokenRequest token for the ServiceAccount deploy/ created.
        let token = api.token("twill-system", "twill-node");
        let kubeconfig = api.kubeconfig_with_token("twill-node.kubeconfig", &token);
        let dir = tempfile::tempdir().expect("temp dir");
        let a = Netns::new("tkr");
        let b = Netns::new("tkr");
        veth_between(
            &a,
            "eth0",
            &format!("{LINK}.1/24"),
            &b,
            "eth0",
            &format!("{LINK}.2/24"),
        );
        let relays = vec![api.relay_into(&a), api.relay_into(&b)];
        let db = dir.path().join("unused.db");
        let env = [
            ("TWILL_DATASTORE", "kubernetes"),
            ("KUBECONFIG", path_str(&kubeconfig)),
        ];
        let addr = format!("{LINK}.0/24");
        let extra = ["--node-address", addr.as_str(), "--status-interval", "2"];
        let nodes = vec![
            TestNode::start_in(a, "node-a", &db, dir.path(), &extra, &env),
            TestNode::start_in(b, "node-b", &db, dir.path(), &extra, &env),
        ];
        Cluster {
            api,
            nodes,
            _relays: relays,
            _dir: dir,
            pods: Vec::new(),
        }
    }

    /// Creates Pod `name` on node `i` (as the scheduler would), runs CNI ADD
    /// for it and writes its address into the Pod's status (as a kubelet
    /// would). Returns the address.
    fn pod(&mut self, i: usize, name: &str, labels: &str) -> String {
        let node = &self.nodes[i];
        self.api.apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels: {labels}\n\
             spec:\n  nodeName: {}\n  containers:\n  - name: main\n    image: registry.invalid/none\n",
            node.name
        ));
        let ns = Netns::new("tkp");
        let out = node.cni(
            "ADD",
            &format!("cid-{name}"),
            &ns,
            &format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}"),
        );
        assert!(out.success, "ADD {name}: {}\n{}", out.json, node.log());
        let addr = out.addresses()[0]
            .split('/')
            .next()
            .expect("address")
            .to_string();
        self.api.kubectl_ok(&[
            "patch",
            "pod",
            name,
            "-n",
            "default",
            "--subresource=status",
            "--type=merge",
            "-p",
            &json!({"status": {"phase": "Running", "podIP": addr, "podIPs": [{"ip": addr}]}})
                .to_string(),
        ]);
        self.pods.push((name.to_string(), ns, addr.clone()));
        addr
    }

    fn pod_ns(&self, name: &str) -> &Netns {
        &self
            .pods
            .iter()
            .find(|(n, _, _)| n == name)
            .expect("a pod of this test")
            .1
    }

    /// Node `name` and a namespace for it with a relay to the server (while
    /// the server answers).
    fn prepare_node(&self, name: &str) -> (Netns, Relay) {
        self.api.apply(&format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n"
        ));
        let ns = Netns::new("tkr");
        let relay = self.api.relay_into(&ns);
        (ns, relay)
    }

    /// Starts twill-node for `name` in `ns`, without BGP (no node address),
    /// and does not wait for it (no API call: the server may be down).
    fn spawn_node(&self, ns: Netns, name: &str) -> TestNode {
        let kubeconfig = self.api.dir().join("twill-node.kubeconfig");
        let env = [
            ("TWILL_DATASTORE", "kubernetes"),
            ("KUBECONFIG", path_str(&kubeconfig)),
        ];
        TestNode::spawn_in(
            ns,
            name,
            &self._dir.path().join("unused.db"),
            self._dir.path(),
            &["--status-interval", "2"],
            &env,
        )
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.name, n.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Requests of the twill-node ServiceAccount the server refused (403),
    /// except during the API server's own start-ups (RBAC caches filling:
    /// up to 10 s after it answered ready), which are printed.
    fn refused(&self) -> (usize, Vec<String>) {
        let events = self.api.audit_events();
        let mine: Vec<&Value> = events
            .iter()
            .filter(|e| e["user"]["username"] == "system:serviceaccount:twill-system:twill-node")
            .collect();
        let mut refused = Vec::new();
        for e in mine.iter().filter(|e| e["responseStatus"]["code"] == 403) {
            let at = e["requestReceivedTimestamp"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok());
            let line = format!(
                "{} {} {}",
                e["requestReceivedTimestamp"], e["verb"], e["requestURI"]
            );
            if at.is_some_and(|at| self.api.in_start_up(at, Duration::from_secs(10))) {
                eprintln!("refused while the API server started: {line}");
            } else {
                refused.push(line);
            }
        }
        (mine.len(), refused)
    }
}

#[test]
fn twill_node_runs_as_its_service_account_and_pods_ping_across() {
    let t0 = Instant::now();
    let mut c = Cluster::up();

    // CNI STATUS: the datastore was read and the pool selects the node.
    let none = Attachment {
        container_id: String::new(),
        netns: String::new(),
        ifname: String::new(),
        args: String::new(),
    };
    for n in &c.nodes {
        let st = n.cni_raw("STATUS", &none, &n.netconf("1.1.0"), &[]);
        assert!(
            st.success,
            "CNI STATUS on {}: {}\n{}",
            n.name,
            st.json,
            n.log()
        );
    }

    let a = c.pod(0, "web-a", "{app: web}");
    let b = c.pod(1, "web-b", "{app: web}");

    // Each ADD claimed a block for its node as an IPAMBlock CR holding the
    // pod's address.
    let blocks = c.api.get_json(&["ipamblocks"]);
    for (node, addr) in [("node-a", &a), ("node-b", &b)] {
        let ip: std::net::IpAddr = addr.parse().expect("pod address");
        let block = blocks["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|blk| blk["spec"]["affinity"] == node)
            .unwrap_or_else(|| panic!("no IPAMBlock affine to {node}: {blocks}"));
        let cidr: ipnetwork::IpNetwork = block["spec"]["cidr"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("block CIDR");
        assert!(
            cidr.contains(ip) && cidr.prefix() == 26,
            "{addr} not in {block}"
        );
        assert_eq!(
            block["spec"]["allocations"].as_array().map(Vec::len),
            Some(1),
            "{block}"
        );
    }

    // Each node published its BGP address on its Node and reports itself
    // in a NodeStatus: ready, one endpoint, its block.
    for (i, node) in ["node-a", "node-b"].iter().enumerate() {
        // The address with its prefix length, as on the interface.
        let want = format!("{LINK}.{}/24", i + 1);
        assert!(
            wait_until(Duration::from_secs(30), || {
                c.api.get_json(&["node", node])["metadata"]["annotations"]["twill.dev/bgp-address"]
                    == want.as_str()
            }),
            "{node} did not publish twill.dev/bgp-address={want}: {}\n{}",
            c.api.get_json(&["node", node])["metadata"],
            c.logs()
        );
        assert!(
            wait_until(Duration::from_secs(60), || {
                let s = c.api.kubectl(&["get", "nodestatus", node, "-o", "json"]);
                serde_json::from_slice::<Value>(&s.stdout).is_ok_and(|s| {
                    s["status"]["ready"] == true
                        && s["status"]["endpoints"] == 1
                        && s["status"]["address"]
                            .as_str()
                            .is_some_and(|a| a.split('/').next() == want.split('/').next())
                        && s["status"]["blocks"]
                            .as_array()
                            .is_some_and(|b| b.len() == 1)
                })
            }),
            "{node}'s NodeStatus is not ready with its endpoint and block: {}\n{}",
            c.api.kubectl_ok(&["get", "nodestatus", "-o", "yaml"]),
            c.logs()
        );
    }

    // Publishing the annotation left the kubelet's fields alone.
    for (i, node) in ["node-a", "node-b"].iter().enumerate() {
        let n = c.api.get_json(&["node", node]);
        assert_eq!(
            n["metadata"]["labels"]["kubernetes.io/hostname"], *node,
            "{n}"
        );
        assert_eq!(
            n["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"], "0",
            "{n}"
        );
        assert_eq!(n["spec"]["podCIDR"], format!("10.200.{i}.0/24"), "{n}");
    }

    // The two agents mesh over BGP and the pods reach each other.
    assert!(
        wait_until(Duration::from_secs(60), || c.pod_ns("web-a").ping(&b)
            && c.pod_ns("web-b").ping(&a)),
        "pods on different nodes do not reach each other\n{}\n{}",
        c.nodes[0].twill_routes().join("\n"),
        c.logs()
    );

    // The agents used the API as the twill-node ServiceAccount, and the
    // shipped RBAC refused none of their requests.
    let (seen, refused) = c.refused();
    assert!(
        seen > 20,
        "only {seen} requests of the ServiceAccount audited"
    );
    assert!(refused.is_empty(), "requests refused by RBAC: {refused:#?}");

    // Every kind the agent needs was listed; the NodeStatus
    // was created once per node and then reported through the status
    // subresource.
    let events = c.api.audit_events();
    let ok: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["user"]["username"] == "system:serviceaccount:twill-system:twill-node"
                && e["responseStatus"]["code"]
                    .as_u64()
                    .is_some_and(|c| c < 300)
        })
        .collect();
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
        // (Watches are audited only when they end; that the agents follow
        // changes is shown by the policy change after the outage.)
        assert!(
            ok.iter()
                .any(|e| e["verb"] == "list" && e["objectRef"]["resource"] == kind),
            "the agents did not list {kind}"
        );
    }
    let writes: Vec<String> = ok
        .iter()
        .filter(|e| {
            e["objectRef"]["resource"] == "nodestatuses"
                && !matches!(e["verb"].as_str(), Some("get" | "list" | "watch"))
        })
        .map(|e| {
            format!(
                "{} {}",
                e["verb"].as_str().unwrap_or_default(),
                e["objectRef"]["subresource"].as_str().unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        writes.iter().filter(|w| w.starts_with("create")).count(),
        2,
        "one NodeStatus created per node: {writes:?}"
    );
    assert!(
        writes
            .iter()
            .all(|w| w.starts_with("create") || w == "update status"),
        "NodeStatus reports go through the status subresource: {writes:?}"
    );
    eprintln!(
        "two nodes up, meshed and pinging in {:.1} s; {seen} audited requests",
        t0.elapsed().as_secs_f64()
    );

    // The API load of an idle node (a number for the record; the status
    // loop's writes and any re-lists are in it): 20 s with nothing changing.
    let before = c.refused().0;
    std::thread::sleep(Duration::from_secs(20));
    let (after, refused) = c.refused();
    assert!(refused.is_empty(), "requests refused by RBAC: {refused:#?}");
    eprintln!(
        "idle API load: {:.0} requests/min per node (watches not counted)",
        (after - before) as f64 * 3.0 / 2.0
    );
}

/// Runs `ping -i 0.2 -c COUNT` in the background; returns the child.
fn ping_stream(from: &Netns, to: &str, count: u32) -> std::process::Child {
    from.command("ping")
        .args(["-i", "0.2", "-W", "1", "-c", &count.to_string(), to])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ping")
}

#[test]
fn an_apiserver_outage_under_traffic_loses_no_packets() {
    let mut c = Cluster::up();
    let a = c.pod(0, "web-a", "{app: web}");
    let b = c.pod(1, "db-b", "{app: db}");
    assert!(
        wait_until(Duration::from_secs(60), || c.pod_ns("web-a").ping(&b)),
        "pods do not reach each other before the outage\n{}",
        c.logs()
    );
    let _ = a;

    // 40 s of pings (5 per second) across the nodes; the API server is down
    // for 30 s of it.
    let (ns_c, relay_c) = c.prepare_node("node-c");
    let ping = ping_stream(c.pod_ns("web-a"), &b, 200);
    std::thread::sleep(Duration::from_secs(3));
    c.api.stop_apiserver();
    let down = Instant::now();
    // A node that starts while the server is down waits for the datastore:
    // its CNI socket stays shut (a pod could not get its policy).
    let mut node_c = (c.spawn_node(ns_c, "node-c"), relay_c);
    // node-b, whose pod the pings reach, crashes and restarts while the
    // server is down: it must neither exit nor take its pod down (its IPAM
    // cannot be read, which says nothing about the pod).
    c.nodes[1].daemon.as_mut().expect("node-b runs").kill();
    c.nodes[1].spawn();
    std::thread::sleep(Duration::from_secs(15));
    assert!(
        c.nodes[1].daemon.as_mut().is_some_and(|d| d.alive()),
        "node-b exited while the API server was down\n{}",
        c.nodes[1].log()
    );
    assert!(
        !node_c.0.socket_open(),
        "node-c opened its CNI socket without a datastore\n{}",
        node_c.0.log()
    );
    std::thread::sleep(Duration::from_secs(15));
    c.api.start_apiserver();
    eprintln!("API server was down {:.1} s", down.elapsed().as_secs_f64());
    let out = ping.wait_with_output().expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" 0% packet loss"),
        "packets were lost while the API server was down:\n{text}\n{}",
        c.logs()
    );

    // The agents reconnect: both write their NodeStatus again.
    let restarted = jiff::Timestamp::now();
    for node in ["node-a", "node-b"] {
        assert!(
            wait_until(Duration::from_secs(60), || {
                let s = c.api.kubectl(&["get", "nodestatus", node, "-o", "json"]);
                serde_json::from_slice::<Value>(&s.stdout).is_ok_and(|s| {
                    s["status"]["updated"]
                        .as_str()
                        .and_then(|u| u.parse::<jiff::Timestamp>().ok())
                        .is_some_and(|u| u > restarted)
                })
            }),
            "{node} did not report again after the API server returned\n{}",
            c.logs()
        );
    }

    // node-c waited for the datastore instead of exiting, opens its socket
    // once the server answers, and CNI STATUS works.
    assert!(
        node_c.0.daemon.as_mut().is_some_and(|d| d.alive()),
        "node-c exited while the API server was down\n{}",
        node_c.0.log()
    );
    assert!(
        wait_until(Duration::from_secs(60), || node_c.0.socket_open()),
        "node-c did not start after the API server returned\n{}",
        node_c.0.log()
    );
    let none = Attachment {
        container_id: String::new(),
        netns: String::new(),
        ifname: String::new(),
        args: String::new(),
    };
    let st = node_c
        .0
        .cni_raw("STATUS", &none, &node_c.0.netconf("1.1.0"), &[]);
    assert!(
        st.success,
        "CNI STATUS on node-c: {}\n{}",
        st.json,
        node_c.0.log()
    );
    drop(node_c);

    // A change made now is programmed: a policy that isolates the db pods
    // stops the pings, and deleting it lets them through again.
    c.api.apply(
        "apiVersion: twill.dev/v1\nkind: GlobalNetworkPolicy\nmetadata:\n  name: db-closed\nspec:\n  \
         selector: app == 'db'\n  types: [Ingress]\n",
    );
    assert!(
        wait_until(Duration::from_secs(30), || !c.pod_ns("web-a").ping(&b)),
        "a policy applied after the outage was not programmed\n{}",
        c.logs()
    );
    c.api
        .kubectl_ok(&["delete", "globalnetworkpolicy", "db-closed"]);
    assert!(
        wait_until(Duration::from_secs(30), || c.pod_ns("web-a").ping(&b)),
        "deleting the policy did not open the path again\n{}",
        c.logs()
    );
    let (_, refused) = c.refused();
    assert!(refused.is_empty(), "requests refused by RBAC: {refused:#?}");
}

// ---------------------------------------------------------------------------
// twillctl and kubectl on the same server.

fn twillctl(api: &KubeApi, args: &[&str], input: Option<&str>) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(bins::binary("twillctl"))
        .args(args)
        .env("TWILL_DATASTORE", "kubernetes")
        .env("KUBECONFIG", api.kubeconfig())
        .stdin(if input.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run twillctl");
    if let Some(text) = input {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write twillctl stdin");
    }
    child.wait_with_output().expect("twillctl")
}

fn twillctl_ok(api: &KubeApi, args: &[&str], input: Option<&str>) -> String {
    let out = twillctl(api, args, input);
    assert!(
        out.status.success(),
        "twillctl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn twillctl_and_kubectl_agree() {
    let api = KubeApi::start();
    install_crds(&api);
    let pool = "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: blue\nspec:\n  cidr: 10.250.0.0/16\n  blockSize: 26\n";

    // create (twillctl) → get (kubectl)
    twillctl_ok(&api, &["create", "-f", "-"], Some(pool));
    let k = api.get_json(&["ippool", "blue"]);
    assert_eq!(k["spec"]["cidr"], "10.250.0.0/16", "{k}");
    assert!(
        !twillctl(&api, &["create", "-f", "-"], Some(pool))
            .status
            .success(),
        "twillctl create of an existing IPPool succeeded"
    );

    // create (kubectl) → get (twillctl)
    let out = api.kubectl_in(
        &["create", "-f", "-"],
        Some("apiVersion: twill.dev/v1\nkind: BGPPeer\nmetadata:\n  name: tor\nspec:\n  peerIP: 10.96.1.1\n  asNumber: 65001\n"),
    );
    assert!(
        out.status.success(),
        "kubectl create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t: Value = serde_json::from_str(&twillctl_ok(
        &api,
        &["get", "bgppeer", "tor", "-o", "json"],
        None,
    ))
    .expect("twillctl get -o json");
    let t = if t["items"].is_array() {
        t["items"][0].clone()
    } else {
        t
    };
    assert_eq!(t["spec"]["peerIP"], "10.96.1.1", "{t}");
    assert_eq!(t["spec"]["asNumber"], 65001, "{t}");

    // label (twillctl) → kubectl sees it; label (kubectl) → twillctl sees it
    twillctl_ok(&api, &["label", "ippool", "blue", "rack=a"], None);
    assert_eq!(
        api.get_json(&["ippool", "blue"])["metadata"]["labels"]["rack"],
        "a"
    );
    api.kubectl_ok(&["label", "bgppeer", "tor", "tier=tor"]);
    let names = twillctl_ok(&api, &["get", "bgppeer", "-o", "yaml"], None);
    assert!(names.contains("tier: tor"), "{names}");

    // patch (twillctl) → kubectl; patch (kubectl) → twillctl
    twillctl_ok(
        &api,
        &[
            "patch",
            "ippool",
            "blue",
            "-p",
            r#"{"spec":{"natOutgoing":true}}"#,
        ],
        None,
    );
    assert_eq!(
        api.get_json(&["ippool", "blue"])["spec"]["natOutgoing"],
        true
    );
    api.kubectl_ok(&[
        "patch",
        "ippool",
        "blue",
        "--type=merge",
        "-p",
        r#"{"spec":{"disabled":true}}"#,
    ]);
    let y = twillctl_ok(&api, &["get", "ippool", "blue", "-o", "yaml"], None);
    assert!(
        y.contains("disabled: true") && y.contains("natOutgoing: true"),
        "{y}"
    );

    // replace (twillctl) → kubectl
    twillctl_ok(
        &api,
        &["replace", "-f", "-"],
        Some(&pool.replace("blockSize: 26", "blockSize: 28")),
    );
    let k = api.get_json(&["ippool", "blue"]);
    assert_eq!(k["spec"]["blockSize"], 28, "{k}");

    // apply (twillctl) of an invalid pool: refused, nothing changes
    let bad = twillctl(
        &api,
        &["apply", "-f", "-"],
        Some(&pool.replace("10.250.0.0/16", "10.300.0.0/16")),
    );
    assert!(!bad.status.success(), "twillctl applied an invalid pool");
    assert_eq!(
        api.get_json(&["ippool", "blue"])["spec"]["cidr"],
        "10.250.0.0/16"
    );

    // the table listings agree on the names
    let kt = api.kubectl_ok(&["get", "ippools,bgppeers", "-o", "name"]);
    assert!(
        kt.contains("ippool.twill.dev/blue") && kt.contains("bgppeer.twill.dev/tor"),
        "{kt}"
    );
    let tt = twillctl_ok(&api, &["get", "ippools"], None);
    assert!(tt.contains("blue") && tt.contains("10.250.0.0/16"), "{tt}");

    // At Kubernetes' limits: a 253-character name, a 317-character label
    // key (253-character prefix) and a 63-character value, made by kubectl,
    // read, labelled and deleted by twillctl.
    let label = |c: char| format!("{c}{}", "x".repeat(62));
    let long = format!(
        "{}.{}.{}.{}",
        label('a'),
        label('b'),
        label('c'),
        &label('d')[..61]
    );
    assert_eq!(long.len(), 253);
    let key = format!("{}/{}", long.replace('a', "k"), label('n'));
    assert_eq!(key.len(), 317);
    let value = label('v');
    api.apply(&format!(
        "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: {long}\n  labels:\n    {key}: {value}\n\
         spec:\n  cidr: 10.251.0.0/16\n"
    ));
    let y = twillctl_ok(&api, &["get", "ippool", &long, "-o", "yaml"], None);
    assert!(
        y.contains(&long) && y.contains(&key) && y.contains(&value),
        "{y}"
    );
    let key2 = format!("{}/{}", long.replace('a', "j"), label('m'));
    twillctl_ok(
        &api,
        &["label", "ippool", &long, &format!("{key2}={value}")],
        None,
    );
    assert_eq!(
        api.get_json(&["ippool", &long])["metadata"]["labels"][&key2],
        value.as_str()
    );
    twillctl_ok(&api, &["delete", "ippool", &long], None);
    assert!(
        !api.kubectl(&["get", "ippool", &long]).status.success(),
        "{long} survived"
    );

    // delete (twillctl) → kubectl sees it gone; delete (kubectl) → twillctl
    twillctl_ok(&api, &["delete", "ippool", "blue"], None);
    assert!(
        !api.kubectl(&["get", "ippool", "blue"]).status.success(),
        "blue survived"
    );
    api.kubectl_ok(&["delete", "bgppeer", "tor"]);
    let after = twillctl_ok(&api, &["get", "bgppeers"], None);
    assert!(!after.contains("tor"), "{after}");
}

// ---------------------------------------------------------------------------
// Services and EndpointSlices on a 1.20 server (EndpointSlice is v1beta1 there).

const SERVICES: &str = r#"
apiVersion: twill.dev/v1
kind: IPPool
metadata:
  name: lb
spec:
  cidr: 192.0.2.0/29
  allowedUses: [LoadBalancer]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  type: LoadBalancer
  ports:
  - port: 80
    protocol: TCP
---
apiVersion: v1
kind: Service
metadata:
  name: copycat
  namespace: shop
  annotations:
    twill.dev/loadBalancerIPs: 192.0.2.1
spec:
  type: LoadBalancer
  ports:
  - port: 81
    protocol: TCP
---
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- port: 8080
  protocol: TCP
endpoints:
- addresses: [10.244.0.5]
  conditions: {ready: true}
  topology:
    kubernetes.io/hostname: node-a
"#;

#[test]
fn services_and_v1beta1_endpoint_slices_on_a_1_20_server() {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use twill_api::store::kubernetes::KubeStore;
    use twill_api::{Store, WatchEvent};
    use twill_ipam::lb_alloc::{LbAllocator, LbOutcome};

    let api = KubeApi::start();
    install_crds(&api);
    api.kubectl_ok(&["create", "namespace", "shop"]);
    api.apply(SERVICES);
    // The API server allocated the cluster IP and node port; twillctl shows them.
    let k = api.get_json(&["svc", "web", "-n", "shop"]);
    let cluster_ip = k["spec"]["clusterIP"]
        .as_str()
        .expect("cluster IP")
        .to_string();
    let t = twillctl_ok(&api, &["get", "svc", "-n", "shop"], None);
    let web = t
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("{t}"));
    assert!(
        web.contains(&cluster_ip) && web.contains("<pending>") && web.contains("80:3"),
        "{t}"
    );
    // twillctl reads the v1beta1 slice as v1: nodeName from the topology.
    let e: Value = serde_json::from_str(&twillctl_ok(
        &api,
        &["get", "endpointslices", "web-1", "-n", "shop", "-o", "json"],
        None,
    ))
    .expect("json");
    assert_eq!(e["apiVersion"], "discovery.k8s.io/v1", "{e}");
    assert_eq!(e["endpoints"][0]["nodeName"], "node-a", "{e}");
    assert_eq!(
        e["endpoints"][0]["deprecatedTopology"]["kubernetes.io/hostname"], "node-a",
        "{e}"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(api.kubeconfig()).expect("kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        let store = Store::new(KubeStore::new(kube::Client::try_from(cfg).expect("client")));
        // The watch delivers v1 objects from the v1beta1 resource.
        let mut w = store.watch::<EndpointSlice>(None);
        match futures::StreamExt::next(&mut w).await {
            Some(Ok(WatchEvent::Resync { items, .. })) => {
                // Also the API server's own slice for the `kubernetes` Service.
                let ours: Vec<&EndpointSlice> = items
                    .iter()
                    .filter(|s| s.metadata.namespace.as_deref() == Some("shop"))
                    .collect();
                assert_eq!(ours.len(), 1, "{items:?}");
                assert_eq!(ours[0].endpoints[0].node_name.as_deref(), Some("node-a"));
            }
            other => panic!("{other:?}"),
        }
        // A v1 slice written through the store lands as v1beta1 with the node in its topology.
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-2", "namespace": "shop",
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.5"], "nodeName": "node-b",
                "conditions": {"ready": true}}]}))
        .expect("slice");
        store.create(&slice).await.expect("create v1 slice");
        let got: EndpointSlice = store
            .get(Some("shop"), "web-2")
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(got.endpoints[0].node_name.as_deref(), Some("node-b"));
        // The LoadBalancer allocator against the real server: first come,
        // first served (the pool's first address, its network address, is
        // skipped unless asked for by name).
        let alloc = LbAllocator::new(store.clone());
        assert_eq!(
            alloc.reconcile("shop", "web").await.expect("reconcile"),
            LbOutcome::Allocated(vec!["192.0.2.1".parse().expect("addr")])
        );
        let out = alloc.reconcile("shop", "copycat").await.expect("reconcile");
        assert!(matches!(out, LbOutcome::Pending(_)), "{out:?}");
        let _ = store.list::<Service>().await.expect("list services");
    });
    let b = api.get_json(&[
        "endpointslices.v1beta1.discovery.k8s.io",
        "web-2",
        "-n",
        "shop",
    ]);
    assert_eq!(
        b["endpoints"][0]["topology"]["kubernetes.io/hostname"], "node-b",
        "{b}"
    );
    let k = api.get_json(&["svc", "web", "-n", "shop"]);
    assert_eq!(
        k["status"]["loadBalancer"]["ingress"][0]["ip"], "192.0.2.1",
        "{k}"
    );
    let cond = |v: &Value| {
        v["status"]["conditions"]
            .as_array()
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c["type"] == "twill.dev/LoadBalancerAllocated")
                    .cloned()
            })
            .unwrap_or(Value::Null)
    };
    assert_eq!(cond(&k)["status"], "True", "{k}");
    let c = api.get_json(&["svc", "copycat", "-n", "shop"]);
    assert_eq!(cond(&c)["reason"], "AddressTaken", "{c}");
    assert!(
        cond(&c)["message"]
            .as_str()
            .is_some_and(|m| m.contains("taken by Service shop/web")),
        "{c}"
    );
    let t = twillctl_ok(&api, &["get", "svc", "-n", "shop"], None);
    assert!(t.contains("192.0.2.1"), "{t}");
    assert!(t.contains("<pending>") && t.contains("AddressTaken"), "{t}");
}
