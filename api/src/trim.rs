//! What the Kubernetes backend keeps of an object it lists or watches.
//!
//! Every twill-node watches every Pod, Namespace and NetworkPolicy in the
//! cluster and keeps them in memory. The API server sends far more than
//! Twill reads (`metadata.managedFields` alone is often larger than the rest
//! of the object; a Pod carries images, env, probes, volumes, conditions), so
//! the backend cuts each listed or watched object down to what Twill reads,
//! before anything is buffered or cached. Pure functions on JSON; `get`
//! returns objects untouched (twillctl edits and writes back what it got).
//!
//! Kept, by kind (everything else is dropped):
//! * every kind: all but `metadata.managedFields`;
//! * Pod: apiVersion, kind; metadata name, namespace, uid, resourceVersion,
//!   deletionTimestamp, labels and the `twill.dev/` annotations; spec
//!   nodeName, hostNetwork and each container's name and ports; status
//!   phase, podIP and podIPs (what policy and IPAM read);
//! * Namespace: apiVersion, kind; metadata name, uid, resourceVersion,
//!   deletionTimestamp and labels (namespace selectors);
//! * NetworkPolicy: apiVersion, kind; the same metadata as a Pod without
//!   annotations; the whole spec.
//! * Service: apiVersion, kind; the same metadata as a Pod; spec type,
//!   cluster IPs, IP families and policy, ports, externalIPs,
//!   loadBalancerIP and class, traffic policies,
//!   allocateLoadBalancerNodePorts, healthCheckNodePort, session
//!   affinity and its config, loadBalancerSourceRanges; status
//!   loadBalancer and conditions (what LoadBalancer IPAM, service
//!   advertisement and the service proxy read);
//! * EndpointSlice: apiVersion, kind; metadata as a Namespace (the
//!   `kubernetes.io/service-name` label); addressType, ports, and each
//!   endpoint's addresses, conditions and nodeName.

use serde_json::{Map, Value};

use crate::kinds::Kind;

/// Annotations on a Pod Twill reads (e.g. `twill.dev/ip-addrs`) share this prefix.
pub const TWILL_ANNOTATION_PREFIX: &str = "twill.dev/";

/// Metadata fields kept on trimmed kinds.
const META_KEPT: [&str; 6] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "deletionTimestamp",
    "labels",
];

/// Cuts `obj` (a listed or watched object of `kind`) down to what Twill reads.
pub fn trim(kind: Kind, obj: &mut Value) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    match kind {
        Kind::Pod => trim_pod(map),
        Kind::Namespace => {
            keep(map, &["apiVersion", "kind", "metadata"]);
            trim_meta(map, false);
        }
        Kind::NetworkPolicy => {
            keep(map, &["apiVersion", "kind", "metadata", "spec"]);
            trim_meta(map, false);
        }
        Kind::Service => trim_service(map),
        Kind::EndpointSlice => {
            keep(
                map,
                &[
                    "apiVersion",
                    "kind",
                    "metadata",
                    "addressType",
                    "endpoints",
                    "ports",
                ],
            );
            trim_meta(map, false);
            if let Some(eps) = map.get_mut("endpoints").and_then(Value::as_array_mut) {
                for ep in eps.iter_mut().filter_map(Value::as_object_mut) {
                    keep(ep, &["addresses", "conditions", "nodeName"]);
                }
            }
        }
        _ => {
            if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("managedFields");
            }
        }
    }
}

/// Removes every key of `map` not in `kept`.
fn keep(map: &mut Map<String, Value>, kept: &[&str]) {
    map.retain(|k, _| kept.contains(&k.as_str()));
}

fn trim_meta(obj: &mut Map<String, Value>, twill_annotations: bool) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let annotations = meta.remove("annotations");
    keep(meta, &META_KEPT);
    if twill_annotations && let Some(Value::Object(mut a)) = annotations {
        a.retain(|k, _| k.starts_with(TWILL_ANNOTATION_PREFIX));
        if !a.is_empty() {
            meta.insert("annotations".into(), Value::Object(a));
        }
    }
}

fn trim_pod(pod: &mut Map<String, Value>) {
    keep(pod, &["apiVersion", "kind", "metadata", "spec", "status"]);
    trim_meta(pod, true);
    if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
        keep(spec, &["nodeName", "hostNetwork", "containers"]);
        if let Some(cs) = spec.get_mut("containers").and_then(Value::as_array_mut) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                keep(c, &["name", "ports"]);
            }
        }
    }
    if let Some(status) = pod.get_mut("status").and_then(Value::as_object_mut) {
        keep(status, &["phase", "podIP", "podIPs"]);
    }
}

fn trim_service(svc: &mut Map<String, Value>) {
    keep(svc, &["apiVersion", "kind", "metadata", "spec", "status"]);
    trim_meta(svc, true);
    if let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) {
        keep(
            spec,
            &[
                "type",
                "clusterIP",
                "clusterIPs",
                "ipFamilies",
                "ipFamilyPolicy",
                "ports",
                "externalIPs",
                "loadBalancerIP",
                "loadBalancerClass",
                "externalTrafficPolicy",
                "internalTrafficPolicy",
                "allocateLoadBalancerNodePorts",
                "healthCheckNodePort",
                "sessionAffinity",
                "sessionAffinityConfig",
                "loadBalancerSourceRanges",
            ],
        );
    }
    if let Some(status) = svc.get_mut("status").and_then(Value::as_object_mut) {
        keep(status, &["loadBalancer", "conditions"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use serde_json::json;

    fn managed_fields() -> Value {
        json!([{"manager": "kubelet", "operation": "Update", "apiVersion": "v1",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:conditions": {}}}}])
    }

    fn full_pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web-1", "namespace": "shop", "uid": "u-1",
                "resourceVersion": "77", "generateName": "web-",
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"app": "web"},
                "annotations": {
                    "twill.dev/ip-addrs": "[\"10.244.1.9\"]",
                    "kubectl.kubernetes.io/last-applied-configuration": "{...}"
                },
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "r"}],
                "managedFields": managed_fields()
            },
            "spec": {
                "nodeName": "node-a", "hostNetwork": false,
                "serviceAccountName": "default",
                "volumes": [{"name": "v", "emptyDir": {}}],
                "initContainers": [{"name": "init", "image": "busybox"}],
                "containers": [{
                    "name": "app", "image": "nginx:1.27",
                    "env": [{"name": "A", "value": "1"}],
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                    "resources": {"limits": {"cpu": "1"}}
                }, {"name": "sidecar", "image": "envoy", "args": ["-c", "x"]}]
            },
            "status": {
                "phase": "Running", "podIP": "10.244.1.9",
                "podIPs": [{"ip": "10.244.1.9"}], "hostIP": "172.30.0.2",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0,
                    "image": "nginx:1.27", "imageID": "sha256:x"}]
            }
        })
    }

    #[test]
    fn a_pod_keeps_exactly_what_twill_reads() {
        let mut pod = full_pod();
        trim(Kind::Pod, &mut pod);
        assert_eq!(
            pod,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": "web-1", "namespace": "shop", "uid": "u-1",
                    "resourceVersion": "77", "labels": {"app": "web"},
                    "annotations": {"twill.dev/ip-addrs": "[\"10.244.1.9\"]"}
                },
                "spec": {
                    "nodeName": "node-a", "hostNetwork": false,
                    "containers": [
                        {"name": "app", "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]},
                        {"name": "sidecar"}
                    ]
                },
                "status": {"phase": "Running", "podIP": "10.244.1.9", "podIPs": [{"ip": "10.244.1.9"}]}
            })
        );
        // Still a Pod, with what policy reads intact.
        let typed: Pod = serde_json::from_value(pod).unwrap();
        assert_eq!(
            typed.spec.unwrap().containers[0].ports.as_ref().unwrap()[0].container_port,
            8080
        );
    }

    #[test]
    fn a_pod_without_twill_annotations_has_no_annotations_left() {
        let mut pod = full_pod();
        pod["metadata"]["annotations"]
            .as_object_mut()
            .unwrap()
            .remove("twill.dev/ip-addrs");
        trim(Kind::Pod, &mut pod);
        assert!(pod["metadata"].get("annotations").is_none(), "{pod}");
    }

    #[test]
    fn namespaces_and_policies_keep_labels_and_spec() {
        let mut ns = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "uid": "n", "resourceVersion": "5",
                "labels": {"team": "a"}, "annotations": {"big": "x"},
                "managedFields": managed_fields()},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        trim(Kind::Namespace, &mut ns);
        assert_eq!(
            ns,
            json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "shop", "uid": "n", "resourceVersion": "5", "labels": {"team": "a"}}})
        );
        serde_json::from_value::<Namespace>(ns).unwrap();
        let spec = json!({"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"namespaceSelector": {}}]}], "policyTypes": ["Ingress"]});
        let mut np = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "shop", "resourceVersion": "9",
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "managedFields": managed_fields()},
            "spec": spec.clone()});
        trim(Kind::NetworkPolicy, &mut np);
        assert_eq!(np["spec"], spec);
        assert_eq!(
            np["metadata"],
            json!({"name": "p", "namespace": "shop", "resourceVersion": "9"})
        );
        serde_json::from_value::<NetworkPolicy>(np).unwrap();
    }

    #[test]
    fn other_kinds_lose_only_managed_fields() {
        let node = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "resourceVersion": "3", "labels": {"a": "b"},
                "annotations": {"twill.dev/bgp-address": "172.30.0.2/24", "other": "x"},
                "managedFields": managed_fields()},
            "spec": {"podCIDR": "10.0.0.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "172.30.0.2"}]}});
        let mut trimmed = node.clone();
        trim(Kind::Node, &mut trimmed);
        let mut want = node;
        want["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("managedFields");
        assert_eq!(trimmed, want);
        let mut pool = json!({"apiVersion": "twill.dev/v1", "kind": "IPPool",
            "metadata": {"name": "p", "managedFields": managed_fields()},
            "spec": {"cidr": "10.244.0.0/16"}});
        trim(Kind::IPPool, &mut pool);
        assert_eq!(
            pool,
            json!({"apiVersion": "twill.dev/v1", "kind": "IPPool",
                "metadata": {"name": "p"}, "spec": {"cidr": "10.244.0.0/16"}})
        );
    }

    #[test]
    fn services_and_endpoint_slices_keep_what_lb_ipam_and_advertisement_read() {
        use k8s_openapi::api::core::v1::Service;
        use k8s_openapi::api::discovery::v1::EndpointSlice;
        let mut svc = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop", "uid": "s", "resourceVersion": "4",
                "labels": {"app": "web"},
                "annotations": {"twill.dev/sharing-key": "k", "other": "x"},
                "managedFields": managed_fields()},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5"],
                "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30001}],
                "selector": {"app": "web"}, "sessionAffinity": "None",
                "externalTrafficPolicy": "Local", "healthCheckNodePort": 31000,
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                "loadBalancerSourceRanges": ["198.51.100.0/24"]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipMode": "VIP"}]},
                "conditions": [{"type": "x", "status": "True", "reason": "R", "message": "",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
        trim(Kind::Service, &mut svc);
        assert_eq!(
            svc["metadata"],
            json!({"name": "web", "namespace": "shop", "uid": "s", "resourceVersion": "4",
                "labels": {"app": "web"}, "annotations": {"twill.dev/sharing-key": "k"}})
        );
        assert!(svc["spec"].get("selector").is_none(), "{svc}");
        assert_eq!(svc["spec"]["healthCheckNodePort"], 31000, "{svc}");
        // The service proxy's inputs: affinity, its timeout, source ranges.
        assert_eq!(svc["spec"]["sessionAffinity"], "None", "{svc}");
        assert_eq!(
            svc["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
            60
        );
        assert_eq!(
            svc["spec"]["loadBalancerSourceRanges"][0],
            "198.51.100.0/24"
        );
        assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local");
        assert_eq!(
            svc["status"]["loadBalancer"]["ingress"][0]["ip"],
            "192.0.2.1"
        );
        serde_json::from_value::<Service>(svc).unwrap();
        let mut es = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "shop", "resourceVersion": "5",
                "labels": {"kubernetes.io/service-name": "web"},
                "annotations": {"a": "b"}, "managedFields": managed_fields(),
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "s"}]},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.5"], "conditions": {"ready": true},
                "nodeName": "node-a", "zone": "z", "hostname": "h",
                "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "shop"}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]});
        trim(Kind::EndpointSlice, &mut es);
        assert_eq!(
            es["endpoints"],
            json!([{"addresses": ["10.244.0.5"], "conditions": {"ready": true}, "nodeName": "node-a"}])
        );
        assert_eq!(
            es["metadata"],
            json!({"name": "web-abc", "namespace": "shop", "resourceVersion": "5",
                "labels": {"kubernetes.io/service-name": "web"}})
        );
        serde_json::from_value::<EndpointSlice>(es).unwrap();
    }

    #[test]
    fn objects_that_are_not_maps_are_left_alone() {
        let mut v = json!("not an object");
        trim(Kind::Pod, &mut v);
        assert_eq!(v, json!("not an object"));
        let mut v = json!({"metadata": 3, "spec": [], "status": null});
        trim(Kind::Pod, &mut v);
        assert_eq!(v, json!({"metadata": 3, "spec": [], "status": null}));
    }
}
