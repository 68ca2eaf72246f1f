//! Checks on native Kubernetes objects Twill consumes. The API server
//! validates these in a real cluster; the embedded store has no API server,
//! so the same mistakes are caught here (a NetworkPolicy with a bad ipBlock
//! would otherwise be silently ignored by the renderer).

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::selector::Selector;
use crate::validate::{Errors, ValidationError, check_name, overlaps, parse_cidr};

/// Converts a Kubernetes label selector into Twill's selector.
pub fn label_selector(sel: &LabelSelector) -> Result<Selector, String> {
    let labels = sel.match_labels.clone().unwrap_or_default();
    let exprs: Vec<(String, String, Vec<String>)> = sel
        .match_expressions
        .iter()
        .flatten()
        .map(|e| {
            (
                e.key.clone(),
                e.operator.clone(),
                e.values.clone().unwrap_or_default(),
            )
        })
        .collect();
    Selector::from_label_selector(&labels, &exprs).map_err(|e| e.reason)
}

/// Validates a NetworkPolicy the way the API server would.
pub fn validate_network_policy(np: &NetworkPolicy) -> Result<(), ValidationError> {
    let name = np.metadata.name.clone().unwrap_or_default();
    let mut e = Errors::default();
    if let Err(r) = check_name(&name) {
        e.push("metadata.name", &name, r);
    }
    if let Some(spec) = &np.spec {
        if let Some(ps) = &spec.pod_selector
            && let Err(r) = label_selector(ps)
        {
            e.push("spec.podSelector", "", r);
        }
        for t in spec.policy_types.iter().flatten() {
            if t != "Ingress" && t != "Egress" {
                e.push("spec.policyTypes", t, "must be Ingress or Egress");
            }
        }
        for (i, rule) in spec.ingress.iter().flatten().enumerate() {
            let at = format!("spec.ingress[{i}]");
            peers(&mut e, &format!("{at}.from"), rule.from.as_deref());
            ports(&mut e, &format!("{at}.ports"), rule.ports.as_deref());
        }
        for (i, rule) in spec.egress.iter().flatten().enumerate() {
            let at = format!("spec.egress[{i}]");
            peers(&mut e, &format!("{at}.to"), rule.to.as_deref());
            ports(&mut e, &format!("{at}.ports"), rule.ports.as_deref());
        }
    }
    e.finish("NetworkPolicy", &name)
}

fn peers(e: &mut Errors, at: &str, peers: Option<&[NetworkPolicyPeer]>) {
    for (i, p) in peers.unwrap_or_default().iter().enumerate() {
        let at = format!("{at}[{i}]");
        if let Some(b) = &p.ip_block {
            if p.pod_selector.is_some() || p.namespace_selector.is_some() {
                e.push(
                    format!("{at}.ipBlock"),
                    &b.cidr,
                    "ipBlock cannot be combined with podSelector or namespaceSelector",
                );
            }
            if let Some(net) = e.cidr(&format!("{at}.ipBlock.cidr"), &b.cidr) {
                for (j, ex) in b.except.iter().flatten().enumerate() {
                    if let Some(exn) = e.cidr(&format!("{at}.ipBlock.except[{j}]"), ex)
                        && (!overlaps(&net, &exn) || exn.prefix() < net.prefix())
                    {
                        e.push(
                            format!("{at}.ipBlock.except[{j}]"),
                            ex,
                            format!("must be inside the cidr {}", b.cidr),
                        );
                    }
                }
            }
        }
        for (f, sel) in [
            ("podSelector", &p.pod_selector),
            ("namespaceSelector", &p.namespace_selector),
        ] {
            if let Some(sel) = sel
                && let Err(r) = label_selector(sel)
            {
                e.push(format!("{at}.{f}"), "", r);
            }
        }
    }
}

fn ports(e: &mut Errors, at: &str, ports: Option<&[NetworkPolicyPort]>) {
    for (i, p) in ports.unwrap_or_default().iter().enumerate() {
        let at = format!("{at}[{i}]");
        if let Some(proto) = &p.protocol
            && !matches!(proto.as_str(), "TCP" | "UDP" | "SCTP")
        {
            e.push(format!("{at}.protocol"), proto, "must be TCP, UDP or SCTP");
        }
        match (&p.port, p.end_port) {
            (Some(IntOrString::Int(n)), end) => {
                if !(1..=65535).contains(n) {
                    e.push(format!("{at}.port"), n, "must be 1..=65535");
                }
                if let Some(end) = end
                    && (end < *n || end > 65535)
                {
                    e.push(format!("{at}.endPort"), end, format!("must be {n}..=65535"));
                }
            }
            (Some(IntOrString::String(s)), end) => {
                if end.is_some() {
                    e.push(
                        format!("{at}.endPort"),
                        end.unwrap_or(0),
                        "endPort needs a numeric port",
                    );
                }
                if s.is_empty() || s.len() > 15 {
                    e.push(format!("{at}.port"), s, "a named port is 1..=15 characters");
                }
            }
            (None, Some(end)) => e.push(format!("{at}.endPort"), end, "endPort needs port"),
            (None, None) => {}
        }
    }
}

/// Checks a CIDR string the same way everywhere (re-exported for the policy crate).
pub fn cidr(value: &str) -> Result<ipnetwork::IpNetwork, String> {
    parse_cidr(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn catches_what_the_api_server_would() {
        let np: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "np", "namespace": "x"},
            "spec": {"podSelector": {}, "ingress": [{
                "from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16", "10.1.0.0/16"]}}],
                "ports": [{"port": 90, "endPort": 80}, {"protocol": "ICMP", "port": 1}]
            }]}
        }))
        .unwrap();
        let err = validate_network_policy(&np).unwrap_err();
        let fields: Vec<&str> = err.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.ingress[0].from[0].ipBlock.except[0]",
                "spec.ingress[0].ports[0].endPort",
                "spec.ingress[0].ports[1].protocol"
            ]
        );
    }
}
