//! The manifests under deploy/: every document parses into its Kubernetes
//! type with no field the type does not know; every example custom
//! resource (deploy/examples and examples/) is valid against the generated
//! CRD's openAPIV3Schema and against Twill's own validation; the DaemonSet,
//! RBAC and CNI ConfigMap agree with each other and with what twill-node
//! needs; and Debian's kubectl accepts the whole directory
//! (`kubectl apply --dry-run=client -f deploy/ --recursive`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use twill_api::Kind;
use twill_api::resources::IPPool;
use twill_testkit::http_fake::HttpFake;
use twill_tests::schema;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

/// Every document of every YAML file under `dir`, with its file.
fn documents(dir: &Path) -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    yaml_files(dir, &mut files);
    assert!(!files.is_empty(), "no YAML under {}", dir.display());
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let parsed: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{}: not YAML: {e}", f.display()));
        for d in parsed.into_iter().filter(|d| !d.is_null()) {
            docs.push((f.clone(), d));
        }
    }
    docs
}

fn type_meta(v: &Value) -> (String, String) {
    (
        v["apiVersion"].as_str().unwrap_or_default().to_string(),
        v["kind"].as_str().unwrap_or_default().to_string(),
    )
}

/// Parses into `T` and back: anything the type does not know is lost on the
/// way, so the round trip equals the document only when every field is known.
fn typed<T: DeserializeOwned + Serialize>(file: &Path, doc: &Value) -> T {
    let t: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| {
        panic!(
            "{}: {} {}: {e}",
            file.display(),
            doc["kind"],
            doc["metadata"]["name"]
        )
    });
    let back = serde_json::to_value(&t).unwrap();
    let mut lost = Vec::new();
    diff(doc, &back, "", &mut lost);
    assert!(
        lost.is_empty(),
        "{}: {} {}: fields Kubernetes does not know (typos?): {lost:?}",
        file.display(),
        doc["kind"],
        doc["metadata"]["name"]
    );
    t
}

/// Paths present in `a` but missing or different in `b`.
fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                let p = format!("{path}.{k}");
                match y.get(k) {
                    Some(w) => diff(v, w, &p, out),
                    None => out.push(p),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                diff(v, w, &format!("{path}[{i}]"), out);
            }
        }
        _ if a == b => {}
        // YAML integers written where the type keeps a float, and the like.
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        _ => out.push(format!("{path}: {a} became {b}")),
    }
}

/// The typed core manifests (everything but CRDs and examples).
struct Core {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
    crds: Vec<CustomResourceDefinition>,
    custom: Vec<(PathBuf, Value)>,
}

fn load(dir: &Path) -> Core {
    let mut c = Core {
        namespaces: vec![],
        service_accounts: vec![],
        cluster_roles: vec![],
        cluster_role_bindings: vec![],
        roles: vec![],
        role_bindings: vec![],
        config_maps: vec![],
        daemon_sets: vec![],
        crds: vec![],
        custom: vec![],
    };
    for (f, d) in documents(dir) {
        let (api, kind) = type_meta(&d);
        match (api.as_str(), kind.as_str()) {
            ("v1", "Namespace") => c.namespaces.push(typed(&f, &d)),
            ("v1", "ServiceAccount") => c.service_accounts.push(typed(&f, &d)),
            ("v1", "ConfigMap") => c.config_maps.push(typed(&f, &d)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => c.cluster_roles.push(typed(&f, &d)),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                c.cluster_role_bindings.push(typed(&f, &d))
            }
            ("rbac.authorization.k8s.io/v1", "Role") => c.roles.push(typed(&f, &d)),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => c.role_bindings.push(typed(&f, &d)),
            ("apps/v1", "DaemonSet") => c.daemon_sets.push(typed(&f, &d)),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => c.crds.push(typed(&f, &d)),
            ("twill.dev/v1", _) => c.custom.push((f, d)),
            other => panic!("{}: unexpected kind {other:?}", f.display()),
        }
    }
    c
}

#[test]
fn every_manifest_parses_into_its_kubernetes_type() {
    let c = load(&root().join("deploy"));
    assert_eq!(c.namespaces.len(), 1);
    assert_eq!(c.daemon_sets.len(), 1);
    assert_eq!(
        c.crds.len(),
        twill_api::crds::all().len(),
        "a CRD is missing from deploy/crds"
    );
    assert_eq!(c.config_maps.len(), 1);
    assert_eq!(c.service_accounts.len(), 1);
    assert!(!c.custom.is_empty(), "no examples under deploy/examples");
}

fn crd_schemas(crds: &[CustomResourceDefinition]) -> BTreeMap<String, Value> {
    crds.iter()
        .map(|crd| {
            let v1 = crd
                .spec
                .versions
                .iter()
                .find(|v| v.name == "v1")
                .expect("a v1 version");
            let s = v1
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("openAPIV3Schema");
            (
                crd.spec.names.kind.clone(),
                serde_json::to_value(s).unwrap(),
            )
        })
        .collect()
}

#[test]
fn examples_are_valid_against_the_crd_schemas_and_twills_validation() {
    let c = load(&root().join("deploy"));
    let schemas = crd_schemas(&c.crds);
    let mut examples = c.custom.clone();
    examples.extend(
        documents(&root().join("examples"))
            .into_iter()
            .filter(|(_, d)| type_meta(d).0 == "twill.dev/v1"),
    );
    let mut pools: Vec<(PathBuf, IPPool)> = Vec::new();
    let mut checked = 0;
    for (f, d) in &examples {
        let (_, kind) = type_meta(d);
        let name = d["metadata"]["name"].as_str().unwrap_or_default();
        let schema = schemas
            .get(&kind)
            .unwrap_or_else(|| panic!("{}: no CRD for kind {kind}", f.display()));
        let errors = schema::validate(schema, d);
        assert!(
            errors.is_empty(),
            "{}: {kind} {name} is invalid against its CRD schema:\n  {}",
            f.display(),
            errors.join("\n  ")
        );
        let k = Kind::from_type_meta("twill.dev/v1", &kind).expect("a Twill kind");
        if let Err(e) = k.validate_value(d) {
            panic!("{}: {e}", f.display());
        }
        if k == Kind::IPPool {
            pools.push((f.clone(), serde_json::from_value(d.clone()).unwrap()));
        }
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} examples checked");
    // Pools applied together must not overlap (per directory: deploy/examples
    // and examples/ are alternatives, not applied together).
    for (f, p) in &pools {
        let others: Vec<IPPool> = pools
            .iter()
            .filter(|(g, q)| g.parent() == f.parent() && q.metadata.name != p.metadata.name)
            .map(|(_, q)| q.clone())
            .collect();
        if let Err(e) = p.validate_against(&others) {
            panic!("{}: {e}", f.display());
        }
    }
}

#[test]
fn the_schema_check_rejects_a_broken_example() {
    // The schema validator is wired to the real CRDs: a typo and an
    // out-of-range value in a copy of an example are caught.
    let c = load(&root().join("deploy"));
    let schemas = crd_schemas(&c.crds);
    let (_, peer) = c
        .custom
        .iter()
        .find(|(_, d)| d["kind"] == "BGPPeer")
        .expect("a BGPPeer example");
    let mut bad = peer.clone();
    bad["spec"]["holdtime"] = json!(9);
    bad["spec"]["ebgpMultihop"] = json!(300);
    bad["spec"]["exportFilters"][0]["action"] = json!("Allow");
    let errors = schema::validate(&schemas["BGPPeer"], &bad);
    for want in [
        "spec.holdtime: unknown field",
        "spec.ebgpMultihop: 300 is above the maximum 255",
        "spec.exportFilters[0].action: \"Allow\" is not one of",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(want)),
            "{want:?} not in {errors:#?}"
        );
    }
}

fn rule_grants(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        r.api_groups
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|g| g == group)
            && r.resources
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|x| x == resource)
            && r.verbs.iter().any(|v| v == verb)
    })
}

#[test]
fn rbac_is_least_privilege_and_sufficient() {
    let c = load(&root().join("deploy"));
    let role = &c.cluster_roles[0];
    let rules = role.rules.clone().unwrap_or_default();
    let read = ["get", "list", "watch"];
    // What twill-node needs.
    let mut needed: Vec<(&str, &str, &str)> = Vec::new();
    for (g, r) in [
        ("", "nodes"),
        ("", "pods"),
        ("", "namespaces"),
        ("networking.k8s.io", "networkpolicies"),
        ("twill.dev", "ippools"),
        ("twill.dev", "bgpconfigurations"),
        ("twill.dev", "bgppeers"),
        ("twill.dev", "globalnetworkpolicies"),
        ("twill.dev", "ipamblocks"),
        ("twill.dev", "nodestatuses"),
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
    ] {
        for v in read {
            needed.push((g, r, v));
        }
    }
    for v in ["create", "update", "patch", "delete"] {
        needed.push(("twill.dev", "ipamblocks", v));
    }
    // The node address annotation on the node's own Node.
    needed.push(("", "nodes", "update"));
    needed.push(("twill.dev", "nodestatuses", "create"));
    needed.push(("twill.dev", "nodestatuses", "update"));
    needed.push(("twill.dev", "nodestatuses/status", "update"));
    // The LoadBalancer allocator writes Services' status (docs/services.md).
    needed.push(("", "services/status", "get"));
    needed.push(("", "services/status", "patch"));
    needed.push(("", "services/status", "update"));
    for (g, r, v) in &needed {
        assert!(
            rule_grants(&rules, g, r, v),
            "ClusterRole lacks {v} {g}/{r}"
        );
    }
    // And nothing more: no wildcards, no Secrets cluster-wide, no writes
    // beyond the list above.
    for r in &rules {
        let groups = r.api_groups.clone().unwrap_or_default();
        let resources = r.resources.clone().unwrap_or_default();
        assert!(r.non_resource_urls.is_none(), "{r:?}");
        assert!(r.resource_names.is_none(), "{r:?}");
        for g in &groups {
            for res in &resources {
                for v in &r.verbs {
                    assert!(
                        g != "*" && res != "*" && v != "*",
                        "wildcard in the ClusterRole: {r:?}"
                    );
                    assert!(
                        needed.contains(&(g.as_str(), res.as_str(), v.as_str()))
                            || (res == "nodestatuses/status" && v == "get"),
                        "ClusterRole grants {v} {g}/{res}, which twill-node does not need"
                    );
                }
            }
        }
    }
    // Secrets (BGP passwords) only in twill-system, read only.
    assert_eq!(c.roles.len(), 1);
    let secrets = &c.roles[0];
    assert_eq!(secrets.metadata.namespace.as_deref(), Some("twill-system"));
    for r in secrets.rules.clone().unwrap_or_default() {
        assert_eq!(r.resources.as_deref(), Some(&["secrets".to_string()][..]));
        assert!(r.verbs.iter().all(|v| read.contains(&v.as_str())), "{r:?}");
    }
    // Bindings point at the ServiceAccount the DaemonSet runs as.
    let sa = &c.service_accounts[0];
    let ds_sa = c.daemon_sets[0]
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.service_account_name.clone());
    assert_eq!(ds_sa, sa.metadata.name);
    for subjects in c
        .cluster_role_bindings
        .iter()
        .map(|b| b.subjects.clone())
        .chain(c.role_bindings.iter().map(|b| b.subjects.clone()))
    {
        let s = &subjects.unwrap_or_default()[0];
        assert_eq!(
            (Some(s.name.clone()), s.namespace.clone()),
            (sa.metadata.name.clone(), sa.metadata.namespace.clone())
        );
    }
    assert_eq!(
        c.cluster_role_bindings[0].role_ref.name,
        role.metadata.name.clone().unwrap()
    );
    assert_eq!(
        c.role_bindings[0].role_ref.name,
        secrets.metadata.name.clone().unwrap()
    );
}

#[test]
fn daemonset_runs_everywhere_without_privileged_and_matches_the_cni_config() {
    let c = load(&root().join("deploy"));
    let ds = &c.daemon_sets[0];
    let ns = c.namespaces[0].metadata.name.clone().unwrap();
    assert_eq!(ns, "twill-system");
    assert_eq!(ds.metadata.namespace.as_deref(), Some("twill-system"));
    let pod = ds.spec.as_ref().unwrap().template.spec.clone().unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.host_pid, Some(false));
    let tol = pod.tolerations.clone().unwrap_or_default();
    assert!(
        tol.iter().any(|t| t.operator.as_deref() == Some("Exists")
            && t.key.is_none()
            && t.effect.is_none()),
        "twill-node must tolerate every taint: {tol:?}"
    );
    let node = pod
        .containers
        .iter()
        .find(|c| c.name == "twill-node")
        .unwrap();
    let sc = node.security_context.clone().unwrap();
    assert_ne!(sc.privileged, Some(true));
    let caps = sc.capabilities.unwrap();
    assert_eq!(caps.drop.unwrap_or_default(), vec!["ALL".to_string()]);
    let mut add = caps.add.unwrap_or_default();
    add.sort();
    assert_eq!(add, vec!["NET_ADMIN", "NET_BIND_SERVICE", "SYS_ADMIN"]);
    let env: BTreeMap<String, _> = node
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name.clone(), e))
        .collect();
    assert_eq!(
        env["NODE_NAME"]
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("spec.nodeName")
    );
    // BGPPeer password Secrets without a namespace are read from the
    // namespace twill-node runs in (downward API).
    assert_eq!(
        env["POD_NAMESPACE"]
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("metadata.namespace")
    );
    assert_eq!(env["TWILL_DATASTORE"].value.as_deref(), Some("kubernetes"));
    // The probes hit the port twill-node listens on.
    let health = env["TWILL_HEALTH_ADDR"].value.clone().unwrap();
    let (host, port) = health.rsplit_once(':').unwrap();
    for (probe, path) in [
        (node.liveness_probe.clone(), "/healthz"),
        (node.readiness_probe.clone(), "/readyz"),
    ] {
        let g = probe.and_then(|p| p.http_get).expect("an HTTP probe");
        assert_eq!(g.path.as_deref(), Some(path));
        assert_eq!(
            serde_json::to_value(&g.port).unwrap(),
            json!(port.parse::<u16>().unwrap())
        );
        assert_eq!(g.host.as_deref(), Some(host));
    }
    assert!(
        node.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .is_some()
    );
    // sysctls go through the host's /proc/sys/net mount.
    let proc_sys = env["TWILL_PROC_SYS"].value.clone().unwrap();
    let mounts = node.volume_mounts.clone().unwrap_or_default();
    assert!(
        mounts
            .iter()
            .any(|m| m.mount_path == format!("{proc_sys}/net"))
    );
    let netns = mounts
        .iter()
        .find(|m| m.mount_path == "/var/run/netns")
        .unwrap();
    assert_eq!(netns.mount_propagation.as_deref(), Some("HostToContainer"));
    // The CNI socket directory is shared with the host, where twill-cni runs.
    let cm = &c.config_maps[0];
    let conflist: Value = serde_json::from_str(
        cm.data
            .as_ref()
            .unwrap()
            .get("10-twill.conflist")
            .expect("10-twill.conflist"),
    )
    .expect("the conflist is JSON");
    let plugins = conflist["plugins"].as_array().unwrap();
    assert_eq!(plugins[0]["type"], "twill-cni");
    assert_eq!(plugins[1]["type"], "portmap");
    assert_eq!(plugins.len(), 2);
    assert!(twill_cni::spec::supported(
        conflist["cniVersion"].as_str().unwrap()
    ));
    let socket = plugins[0]["socket"].as_str().unwrap();
    assert_eq!(socket, twill_cni::spec::DEFAULT_SOCKET);
    let socket_dir = Path::new(socket).parent().unwrap().to_str().unwrap();
    let run = mounts
        .iter()
        .find(|m| m.mount_path == socket_dir)
        .expect("socket dir mounted");
    let volumes = pod.volumes.clone().unwrap_or_default();
    let vol = volumes.iter().find(|v| v.name == run.name).unwrap();
    assert_eq!(
        vol.host_path.as_ref().map(|h| h.path.as_str()),
        Some(socket_dir)
    );
    // The init container installs from this ConfigMap into the host's CNI dirs.
    let init = &pod.init_containers.clone().unwrap()[0];
    let init_mounts = init.volume_mounts.clone().unwrap_or_default();
    let host_path_of = |mount: &str| {
        let m = init_mounts.iter().find(|m| m.mount_path == mount).unwrap();
        let v = volumes.iter().find(|v| v.name == m.name).unwrap();
        v.host_path.as_ref().map(|h| h.path.clone()).or_else(|| {
            v.config_map
                .as_ref()
                .map(|c| format!("configmap:{}", c.name))
        })
    };
    assert_eq!(
        host_path_of("/host/opt/cni/bin").as_deref(),
        Some("/opt/cni/bin")
    );
    assert_eq!(
        host_path_of("/host/etc/cni/net.d").as_deref(),
        Some("/etc/cni/net.d")
    );
    assert_eq!(
        host_path_of("/etc/twill/cni"),
        Some(format!("configmap:{}", cm.metadata.name.clone().unwrap()))
    );
    let script = init.command.clone().unwrap().join(" ");
    assert!(
        script.contains("/host/etc/cni/net.d/10-twill.conflist"),
        "{script}"
    );
    assert!(script.contains("/host/opt/cni/bin/twill-cni"), "{script}");
}

/// What kubectl needs to map kinds to resources, answered like an API
/// server's legacy discovery: (groupVersion, plural, kind, namespaced).
fn discovery_table(crds: &[CustomResourceDefinition]) -> Vec<(String, String, String, bool)> {
    let mut t: Vec<(String, String, String, bool)> = [
        ("v1", "namespaces", "Namespace", false),
        ("v1", "serviceaccounts", "ServiceAccount", true),
        ("v1", "configmaps", "ConfigMap", true),
        ("v1", "secrets", "Secret", true),
        ("apps/v1", "daemonsets", "DaemonSet", true),
        (
            "rbac.authorization.k8s.io/v1",
            "clusterroles",
            "ClusterRole",
            false,
        ),
        (
            "rbac.authorization.k8s.io/v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
        ),
        ("rbac.authorization.k8s.io/v1", "roles", "Role", true),
        (
            "rbac.authorization.k8s.io/v1",
            "rolebindings",
            "RoleBinding",
            true,
        ),
        (
            "apiextensions.k8s.io/v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
        ),
    ]
    .iter()
    .map(|(g, p, k, n)| (g.to_string(), p.to_string(), k.to_string(), *n))
    .collect();
    for crd in crds {
        t.push((
            format!("{}/v1", crd.spec.group),
            crd.spec.names.plural.clone(),
            crd.spec.names.kind.clone(),
            crd.spec.scope == "Namespaced",
        ));
    }
    t
}

/// Answers one discovery or GET request like an API server with the CRDs
/// installed and no objects.
fn fake_api_answer(path: &str, table: &[(String, String, String, bool)]) -> (u16, Value) {
    let path = path.split('?').next().unwrap_or(path);
    let not_found = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "reason": "NotFound", "code": 404, "message": format!("{path} not found")});
    if path == "/api" {
        return (
            200,
            json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
        );
    }
    let mut groups: Vec<String> = table
        .iter()
        .map(|t| t.0.clone())
        .filter(|g| g.contains('/'))
        .collect();
    groups.sort();
    groups.dedup();
    if path == "/apis" {
        let list: Vec<Value> = groups
            .iter()
            .map(|gv| {
                let (g, v) = gv.split_once('/').unwrap();
                json!({"name": g, "versions": [{"groupVersion": gv, "version": v}],
                    "preferredVersion": {"groupVersion": gv, "version": v}})
            })
            .collect();
        return (
            200,
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": list}),
        );
    }
    let gv = if path == "/api/v1" {
        Some("v1".to_string())
    } else {
        path.strip_prefix("/apis/")
            .filter(|p| p.matches('/').count() == 1)
            .map(str::to_string)
    };
    if let Some(gv) = gv {
        let resources: Vec<Value> = table
            .iter()
            .filter(|t| t.0 == gv)
            .map(|(_, plural, kind, namespaced)| {
                json!({"name": plural, "singularName": kind.to_lowercase(), "namespaced": namespaced,
                    "kind": kind, "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]})
            })
            .collect();
        if resources.is_empty() {
            return (404, not_found);
        }
        return (
            200,
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": resources}),
        );
    }
    (404, not_found)
}

/// `kubectl apply --dry-run=client` needs an API server even though it
/// changes nothing: it maps kinds to resources through discovery and GETs
/// each object to compute the patch. Offline, it talks to a fake API server
/// on loopback that answers discovery (for the built-in kinds used here and
/// the CRDs from deploy/crds) and 404 for every object, so everything is
/// "created (dry run)". `--validate=false` because the fake serves no
/// OpenAPI document: field-level checks are the other tests' job.
#[test]
fn kubectl_client_dry_run_applies_the_whole_directory() {
    let kubectl = which("kubectl").unwrap_or_else(|| {
        panic!("kubectl is not installed: `apt-get install kubernetes-client` (Debian's kubectl; scripts/deps.sh installs it)")
    });
    let deploy = root().join("deploy");
    let c = load(&deploy);
    let expected = documents(&deploy).len();
    let table = discovery_table(&c.crds);
    let api = HttpFake::serve(move |req| {
        let (status, body) = fake_api_answer(&req.target, &table);
        (status, body.to_string())
    })
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let kubeconfig = home.path().join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            api.url()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(kubectl)
        .args([
            "apply",
            "--dry-run=client",
            "--validate=false",
            "--recursive",
            "-f",
        ])
        .arg(&deploy)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--cache-dir")
        .arg(home.path().join("cache"))
        .env("HOME", home.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kubectl apply --dry-run=client failed:\n{stderr}\n{stdout}\nrequests: {:?}",
        api.requests()
    );
    let created = stdout
        .lines()
        .filter(|l| l.ends_with("created (dry run)"))
        .count();
    assert_eq!(
        created, expected,
        "every document should be created (dry run):\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("daemonset.apps/twill-node created (dry run)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("bgppeer.twill.dev/r1-tor-1 created (dry run)"),
        "{stdout}"
    );
    // A dry run never writes.
    let requests = api.requests();
    assert!(
        requests.iter().all(|r| r.starts_with("GET ")),
        "kubectl sent more than GETs: {requests:?}"
    );
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}
