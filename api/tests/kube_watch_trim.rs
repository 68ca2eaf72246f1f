//! Bounded memory for watched Pods with the Kubernetes backend: a mock API
//! server (tower-test, serving a table of expected requests) lists 20 pods and then streams a churn of 5,000 pods
//! created and (most of them) deleted again, each as the API server sends
//! it — large managedFields, several containers with images, env and
//! resources, conditions, container statuses. A consumer keeps a cache the
//! way twill-node's policy engine does. At the end the cache holds exactly
//! the live pods, and each carries only what Twill reads. A get, unlike a
//! list or watch, returns the object whole.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use http::Method;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use twill_api::store::kubernetes::KubeStore;
use twill_api::{Store, WatchEvent};
use twill_testkit::kube_mock::{Exchange, Script, exchange};

const INITIAL: usize = 20;
const CHURN: usize = 5_000;
/// Events per watch response; the body then ends and the watcher resumes
/// from the last revision it saw (as after a server-side watch timeout).
const CHUNK: usize = 500;
/// Revision of the initial list; churn events count up from here.
const LIST_RV: u64 = 1000;

fn pod_name(i: usize) -> String {
    format!("churn-{i}")
}

/// Pod `i` as the API server sends it: everything a real Pod carries.
fn fat_pod(name: &str, rv: u64) -> Value {
    let containers: Vec<Value> = (0..4)
        .map(|c| {
            json!({
                "name": format!("c{c}"),
                "image": format!("registry.example.com/team/app-{c}:v1.2.{c}"),
                "command": ["/bin/app", "--serve", "--log-level=info"],
                "env": (0..12).map(|e| json!({"name": format!("ENV_{e}"), "value": "x".repeat(30)})).collect::<Vec<_>>(),
                "ports": [{"name": format!("p{c}"), "containerPort": 8080 + c, "protocol": "TCP"}],
                "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "100m"}},
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080 + c}}
            })
        })
        .collect();
    let managed: Vec<Value> = ["kube-controller-manager", "kubelet", "kubectl"]
        .iter()
        .map(|m| {
            json!({"manager": m, "operation": "Update", "apiVersion": "v1",
                "time": "2026-11-25T10:00:00Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                    "f:spec": {"f:containers": (0..4).map(|c| (format!("k:{{\"name\":\"c{c}\"}}"),
                        json!({".": {}, "f:env": {}, "f:image": {}, "f:ports": {}, "f:resources": {}}))).collect::<serde_json::Map<_, _>>()},
                    "f:status": {"f:conditions": {}, "f:containerStatuses": {}, "f:podIP": {}}}})
        })
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "churn", "uid": format!("uid-{name}"),
            "resourceVersion": rv.to_string(), "generateName": "churn-",
            "creationTimestamp": "2026-11-25T10:00:00Z",
            "labels": {"app": "churn", "pod-template-hash": "5d8c7f"},
            "annotations": {
                "twill.dev/ip-addrs": "[\"10.244.9.9\"]",
                "kubectl.kubernetes.io/restartedAt": "2026-11-25T09:00:00Z"
            },
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "churn-5d8c7f", "uid": "rs", "controller": true}],
            "managedFields": managed
        },
        "spec": {
            "nodeName": "node-a", "serviceAccountName": "default", "restartPolicy": "Always",
            "volumes": [{"name": "data", "emptyDir": {}}],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}],
            "containers": containers
        },
        "status": {
            "phase": "Running", "podIP": "10.244.9.9", "podIPs": [{"ip": "10.244.9.9"}],
            "hostIP": "172.30.0.2", "startTime": "2026-11-25T10:00:00Z",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-25T10:00:01Z"}],
            "containerStatuses": (0..4).map(|c| json!({"name": format!("c{c}"), "ready": true, "restartCount": 0,
                "image": "registry.example.com/team/app:v1", "imageID": format!("sha256:{}", "ab".repeat(32)),
                "containerID": format!("containerd://{}", "cd".repeat(32)), "state": {"running": {"startedAt": "2026-11-25T10:00:01Z"}}})).collect::<Vec<_>>()
        }
    })
}

/// The churn, in order: pod i is added; every pod not divisible by 10 is
/// deleted again 3 events later; the initial pods with odd numbers go too.
fn churn() -> Vec<(&'static str, String)> {
    let mut ev = Vec::new();
    for i in 0..CHURN {
        ev.push(("ADDED", pod_name(i)));
        if i >= 3 && (i - 3) % 10 != 0 {
            ev.push(("DELETED", pod_name(i - 3)));
        }
        if i < INITIAL && i % 2 == 1 {
            ev.push(("DELETED", format!("initial-{i}")));
        }
    }
    for i in CHURN - 3..CHURN {
        if i % 10 != 0 {
            ev.push(("DELETED", pod_name(i)));
        }
    }
    ev
}

const PODS: &str = "/api/v1/pods";

/// What the API server is expected to be asked, and answers: one listing of
/// the initial pods, then watches, each resuming exactly where the previous
/// body ended (a re-list in the middle of the churn is a request the table
/// does not have). The watch after the last event is not in the table: the
/// test stops reading before the watcher asks again.
fn churn_table(events: &[(&'static str, String)]) -> Vec<Exchange> {
    let items: Vec<Value> = (0..INITIAL)
        .map(|i| fat_pod(&format!("initial-{i}"), 100 + i as u64))
        .collect();
    let list = json!({"apiVersion": "v1", "kind": "PodList",
        "metadata": {"resourceVersion": LIST_RV.to_string()}, "items": items});
    let mut table = vec![exchange(
        Method::GET,
        PODS,
        200,
        serde_json::to_vec(&list).unwrap(),
    )];
    let mut next = 0usize;
    for chunk in events.chunks(CHUNK) {
        let from = LIST_RV + next as u64;
        let mut body = Vec::new();
        for (kind, name) in chunk {
            next += 1;
            let line = json!({"type": kind, "object": fat_pod(name, LIST_RV + next as u64)});
            serde_json::to_writer(&mut body, &line).unwrap();
            body.push(b'\n');
        }
        table.push(exchange(
            Method::GET,
            format!("{PODS}?watch=true&resourceVersion={from}"),
            200,
            body,
        ));
    }
    table
}

#[tokio::test]
async fn a_pod_churn_leaves_only_live_pods_holding_only_what_twill_reads() {
    let events = churn();
    let total_events = events.len();
    let (client, mut api) = Script::start(churn_table(&events));
    let store = Store::new(KubeStore::new(client));

    // The consumer: a cache keyed by namespace/name, as the policy engine keeps.
    let mut cache: BTreeMap<(String, String), Pod> = BTreeMap::new();
    let key = |p: &Pod| {
        (
            p.metadata.namespace.clone().unwrap_or_default(),
            p.metadata.name.clone().unwrap_or_default(),
        )
    };
    let mut w = store.watch::<Pod>(None);
    let mut seen = 0;
    let mut resyncs = 0;
    while seen < total_events {
        let ev = tokio::time::timeout(Duration::from_secs(60), w.next())
            .await
            .unwrap_or_else(|_| panic!("watch stalled after {seen} of {total_events} events"))
            .expect("watch ended")
            .expect("watch error");
        match ev {
            WatchEvent::Resync { items, .. } => {
                resyncs += 1;
                cache = items.into_iter().map(|p| (key(&p), p)).collect();
            }
            WatchEvent::Applied(p) => {
                seen += 1;
                cache.insert(key(&p), p);
            }
            WatchEvent::Deleted(p) => {
                seen += 1;
                cache.remove(&key(&p));
            }
        }
    }
    api.finish().await;
    drop(w);
    assert_eq!(resyncs, 1, "one listing, then only watch events");

    let live: BTreeSet<String> = (0..INITIAL)
        .filter(|i| i % 2 == 0)
        .map(|i| format!("initial-{i}"))
        .chain((0..CHURN).filter(|i| i % 10 == 0).map(pod_name))
        .collect();
    let cached: BTreeSet<String> = cache.keys().map(|(_, n)| n.clone()).collect();
    assert_eq!(cached.len(), INITIAL / 2 + CHURN / 10);
    assert_eq!(cached, live, "the cache holds exactly the live pods");

    let mut cached_bytes = 0;
    for pod in cache.values() {
        assert!(pod.metadata.managed_fields.is_none(), "{pod:?}");
        let v = serde_json::to_value(pod).unwrap();
        cached_bytes += v.to_string().len();
        let keys = |v: &Value| -> BTreeSet<String> {
            v.as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default()
        };
        let set = |s: &[&str]| -> BTreeSet<String> { s.iter().map(|s| s.to_string()).collect() };
        assert!(
            keys(&v).is_subset(&set(&["apiVersion", "kind", "metadata", "spec", "status"])),
            "{v}"
        );
        assert_eq!(
            keys(&v["metadata"]),
            set(&[
                "name",
                "namespace",
                "uid",
                "resourceVersion",
                "labels",
                "annotations"
            ]),
            "{v}"
        );
        assert_eq!(
            v["metadata"]["annotations"],
            json!({"twill.dev/ip-addrs": "[\"10.244.9.9\"]"})
        );
        assert_eq!(keys(&v["spec"]), set(&["nodeName", "containers"]), "{v}");
        let containers = v["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 4);
        for (c, container) in containers.iter().enumerate() {
            assert_eq!(keys(container), set(&["name", "ports"]), "{v}");
            assert_eq!(container["ports"][0]["containerPort"], 8080 + c);
        }
        assert_eq!(
            keys(&v["status"]),
            set(&["phase", "podIP", "podIPs"]),
            "{v}"
        );
    }
    let full = fat_pod("churn-0", 1).to_string().len();
    eprintln!(
        "one pod: {full} bytes as sent, {} bytes cached ({} pods cached)",
        cached_bytes / cache.len(),
        cache.len()
    );
    assert!(
        cached_bytes / cache.len() * 5 < full,
        "a cached pod should be a small fraction of what the API server sends"
    );
}

/// A get returns the whole object, as the API server sent it: twillctl
/// `label` and `patch` write back what they read, and a trimmed Pod or
/// Namespace written back would lose everything trimmed. Lists are trimmed.
#[tokio::test]
async fn get_returns_the_whole_object_and_list_the_trimmed_one() {
    let sent = fat_pod("web-1", 42);
    let list = json!({"apiVersion": "v1", "kind": "PodList",
        "metadata": {"resourceVersion": "42"}, "items": [sent]});
    let (client, mut api) = Script::start(vec![
        exchange(
            Method::GET,
            "/api/v1/namespaces/churn/pods/web-1",
            200,
            serde_json::to_vec(&sent).unwrap(),
        ),
        exchange(Method::GET, PODS, 200, serde_json::to_vec(&list).unwrap()),
    ]);
    let store = Store::new(KubeStore::new(client));
    let key = twill_api::ObjectKey::new(Some("churn"), "web-1");
    let got = store
        .backend()
        .get(twill_api::Kind::Pod, &key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, sent, "a get returns the object untouched");
    let listed = store.list::<Pod>().await.unwrap();
    let pod = &listed.items[0];
    assert!(pod.metadata.managed_fields.is_none());
    assert!(pod.metadata.owner_references.is_none());
    assert!(pod.spec.as_ref().unwrap().containers[0].image.is_none());
    assert_eq!(
        pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some("node-a")
    );
    api.finish().await;
}
