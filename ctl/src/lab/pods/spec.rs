//! What a lab pod is, pure: parsing `lab pod add`'s labels, namespace and
//! ports with Kubernetes' rules, file-system-safe names, and the Namespace
//! and Pod objects (and the status) as the API server and a kubelet write
//! them.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use twill_api::validate;

use crate::lab::plan::{PodPlan, PortSpec};

/// The longest network namespace or log file name we make (NAME_MAX is 255).
const MAX_FILE_NAME: usize = 240;

/// `k=v[,k=v]` with Kubernetes' rules for label keys and values (the
/// API crate's checks, so the lab accepts exactly what the datastore does).
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!("label {part:?}: write it as key=value"));
        };
        validate::check_label_key(k).map_err(|e| format!("label key {k:?}: {e}"))?;
        validate::check_label_value(v).map_err(|e| format!("label {k}: value {v:?}: {e}"))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// A Kubernetes namespace name: a DNS-1123 label (≤ 63).
pub fn check_namespace(ns: &str) -> Result<(), String> {
    let ok = !ns.is_empty()
        && ns.len() <= 63
        && ns
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !ns.starts_with('-')
        && !ns.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "namespace {ns:?}: use 1-63 lower-case letters, digits or '-', starting and ending with a letter or digit"
        ))
    }
}

/// `[NAME=]PORT[/TCP|/UDP]` (TCP when no protocol is given).
pub fn parse_port(s: &str) -> Result<PortSpec, String> {
    let (name, rest) = match s.split_once('=') {
        Some((n, r)) => (Some(n), r),
        None => (None, s),
    };
    let (port, proto) = rest.split_once('/').unwrap_or((rest, "TCP"));
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("port {s:?}: the port must be a number from 1 to 65535"))?;
    let protocol = match proto.to_ascii_uppercase().as_str() {
        "TCP" => "TCP",
        "UDP" => "UDP",
        other => {
            return Err(format!(
                "port {s:?}: protocol {other:?}: the lab serves TCP and UDP"
            ));
        }
    };
    if let Some(n) = name {
        // IANA service name, as Kubernetes checks containerPort names.
        let ok = !n.is_empty()
            && n.len() <= 15
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && n.chars().any(|c| c.is_ascii_lowercase())
            && !n.starts_with('-')
            && !n.ends_with('-')
            && !n.contains("--");
        if !ok {
            return Err(format!(
                "port name {n:?}: use 1-15 lower-case letters, digits or '-' with at least one letter"
            ));
        }
    }
    Ok(PortSpec {
        name: name.map(str::to_string),
        port,
        protocol: protocol.to_string(),
    })
}

/// `base`, or when that is too long for a file name, its start and a hash
/// of the whole (distinct names stay distinct).
pub fn file_name(base: &str) -> String {
    if base.len() <= MAX_FILE_NAME {
        return base.to_string();
    }
    // FNV-1a, 64 bits: stable across runs and builds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in base.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{}-{h:016x}", &base[..MAX_FILE_NAME - 17])
}

/// The Namespace object as the API server creates it.
pub fn namespace_object(ns: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}})
}

/// The Pod object, before the kubelet reports on it.
pub fn pod_object(p: &PodPlan) -> Value {
    let ports: Vec<Value> = p
        .ports
        .iter()
        .map(|s| {
            let mut v = json!({"containerPort": s.port, "protocol": s.protocol});
            if let Some(n) = &s.name {
                v["name"] = json!(n);
            }
            v
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels},
        "spec": {"nodeName": p.node, "containers": [
            {"name": "lab", "image": "twillctl-lab-serve", "ports": ports}]}})
}

/// The status a kubelet writes once the pod's network is up.
pub fn pod_status(ip: &str, ip6: Option<&str>, host_ip: &str) -> Value {
    let mut ips = vec![json!({"ip": ip})];
    ips.extend(ip6.map(|a| json!({"ip": a})));
    json!({"phase": "Running", "podIP": ip, "podIPs": ips,
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}]})
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Pod, PodStatus};

    use super::*;

    #[test]
    fn labels_follow_kubernetes_rules_at_their_limits() {
        let key = format!("{}/{}", "a".repeat(253), "b".repeat(63));
        let val = "v".repeat(63);
        let l = parse_labels(&format!("{key}={val},app=web,empty=")).unwrap();
        assert_eq!(l[&key], val);
        assert_eq!(l["app"], "web");
        assert_eq!(l["empty"], "");
        assert!(parse_labels(&format!("k={}", "v".repeat(64))).is_err());
        assert!(parse_labels(&format!("{}=v", "k".repeat(64))).is_err());
        assert!(parse_labels(&format!("{}/k=v", "a".repeat(254))).is_err());
        assert!(parse_labels("bad key=v").is_err());
        assert!(parse_labels("novalue").is_err());
        assert!(parse_labels("-k=v").is_err());
        assert!(parse_labels("k=-v").is_err());
    }

    #[test]
    fn ports_parse_with_names_and_protocols() {
        let p = parse_port("dns=53/udp").unwrap();
        assert_eq!(
            (p.name.as_deref(), p.port, p.protocol.as_str()),
            (Some("dns"), 53, "UDP")
        );
        assert_eq!(parse_port("80").unwrap().protocol, "TCP");
        assert_eq!(
            parse_port("http=80/TCP").unwrap().to_string(),
            "http=80/TCP"
        );
        for bad in [
            "0/TCP",
            "70000",
            "80/SCTP",
            "x/TCP",
            "9=80",
            "a-very-long-port-name=80",
        ] {
            assert!(parse_port(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn long_names_make_distinct_short_file_names() {
        let a = format!("twl-{}", "a".repeat(253));
        let b = format!("twl-{}b", "a".repeat(252));
        assert!(file_name(&a).len() <= MAX_FILE_NAME);
        assert_ne!(file_name(&a), file_name(&b));
        assert_eq!(file_name("twl-web"), "twl-web");
    }

    #[test]
    fn pod_object_carries_labels_ports_and_node() {
        let p = PodPlan {
            name: "web".into(),
            node: "n1".into(),
            ns: "twl-web".into(),
            container_id: "lab-web".into(),
            namespace: "shop".into(),
            labels: BTreeMap::from([("app".into(), "web".into())]),
            ports: vec![
                parse_port("http=80/TCP").unwrap(),
                parse_port("53/UDP").unwrap(),
            ],
        };
        let v = pod_object(&p);
        let pod: Pod = serde_json::from_value(v).unwrap();
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        let ports = spec.containers[0].ports.clone().unwrap();
        assert_eq!(ports[0].name.as_deref(), Some("http"));
        assert_eq!(ports[1].protocol.as_deref(), Some("UDP"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("shop"));
        let s: PodStatus =
            serde_json::from_value(pod_status("10.0.0.1", None, "172.30.0.11")).unwrap();
        assert_eq!(s.pod_ips.unwrap()[0].ip, "10.0.0.1");
    }
}
