//! How `twillctl get services` and `get endpointslices` show them: the
//! columns kubectl shows (type, cluster IPs, external addresses, ports),
//! `<pending>` with the LoadBalancer allocator's reason, and with `-o wide`
//! the nodes that announce each Service's addresses (from NodeStatus
//! `servicePrefixes`). Also `twillctl datastore service-range`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::Context;
use ipnetwork::IpNetwork;
use serde_json::Value;
use twill_api::resources::NodeStatus;
use twill_api::service::{CONDITION_LB, ServiceRanges};
use twill_api::store::embedded::EmbeddedStore;

use crate::cli::{Backend, StoreArgs};

/// Each node's announced service prefixes, read once per `get services`.
static ANNOUNCED: Mutex<BTreeMap<String, Vec<IpNetwork>>> = Mutex::new(BTreeMap::new());

/// Reads every NodeStatus's `servicePrefixes` for the ANNOUNCED-BY column.
pub async fn load_announcements(store: &twill_api::Store) -> anyhow::Result<()> {
    let mut map = BTreeMap::new();
    for s in store.list::<NodeStatus>().await?.items {
        let (Some(name), Some(r)) = (s.metadata.name, s.status) else {
            continue;
        };
        let nets: Vec<IpNetwork> = r
            .service_prefixes
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect();
        map.insert(name, nets);
    }
    if let Ok(mut g) = ANNOUNCED.lock() {
        *g = map;
    }
    Ok(())
}

fn strs(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn lb_ips(v: &Value) -> Vec<String> {
    v.pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|i| {
                    i.get("ip")
                        .or_else(|| i.get("hostname"))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn ty(v: &Value) -> &str {
    v.pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
}

/// CLUSTER-IP: every cluster IP (`None` for headless).
pub fn cluster_ip(v: &Value) -> String {
    let ips = strs(v.pointer("/spec/clusterIPs"));
    if !ips.is_empty() {
        return ips.join(",");
    }
    v.pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("<none>")
        .to_string()
}

/// EXTERNAL-IP: LoadBalancer addresses and externalIPs; `<pending>` for a
/// LoadBalancer Service without an address yet.
pub fn external_ip(v: &Value) -> String {
    if ty(v) == "ExternalName" {
        return v
            .pointer("/spec/externalName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
    }
    let mut all = lb_ips(v);
    all.extend(strs(v.pointer("/spec/externalIPs")));
    if all.is_empty() {
        return if ty(v) == "LoadBalancer" {
            "<pending>".into()
        } else {
            "<none>".into()
        };
    }
    all.join(",")
}

/// PORT(S): `80:30000/TCP,443/TCP`.
pub fn ports(v: &Value) -> String {
    let Some(ps) = v.pointer("/spec/ports").and_then(Value::as_array) else {
        return "<none>".into();
    };
    ps.iter()
        .map(|p| {
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(n) => format!("{port}:{n}/{proto}"),
                None => format!("{port}/{proto}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// LB-STATUS: why a LoadBalancer Service is pending, or why a
/// PreferDualStack one has only its first family (the allocator's
/// condition); empty when it is fully served.
pub fn lb_status(v: &Value) -> String {
    let cond = v
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some(CONDITION_LB))
        });
    match cond {
        Some(c)
            if c.get("status").and_then(Value::as_str) == Some("False")
                || c.get("reason").and_then(Value::as_str)
                    == Some(twill_ipam::lb_alloc::REASON_PARTIAL) =>
        {
            format!(
                "{}: {}",
                c.get("reason").and_then(Value::as_str).unwrap_or(""),
                c.get("message").and_then(Value::as_str).unwrap_or("")
            )
        }
        _ => String::new(),
    }
}

/// ANNOUNCED-BY: the nodes whose NodeStatus lists a prefix holding one of
/// the Service's addresses (cluster IPs, external and LoadBalancer addresses).
pub fn announced_by(v: &Value) -> String {
    let mut addrs: Vec<IpAddr> = strs(v.pointer("/spec/clusterIPs"))
        .iter()
        .chain(strs(v.pointer("/spec/externalIPs")).iter())
        .chain(lb_ips(v).iter())
        .filter_map(|s| s.parse().ok())
        .collect();
    addrs.sort();
    addrs.dedup();
    let Ok(g) = ANNOUNCED.lock() else {
        return String::new();
    };
    let nodes: Vec<&str> = g
        .iter()
        .filter(|(_, nets)| nets.iter().any(|n| addrs.iter().any(|a| n.contains(*a))))
        .map(|(n, _)| n.as_str())
        .collect();
    nodes.join(",")
}

/// EndpointSlice PORTS: `http:8080/TCP`.
pub fn slice_ports(v: &Value) -> String {
    v.get("ports")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let port = p
                        .get("port")
                        .and_then(Value::as_i64)
                        .map_or("*".to_string(), |n| n.to_string());
                    let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                    match p
                        .get("name")
                        .and_then(Value::as_str)
                        .filter(|n| !n.is_empty())
                    {
                        Some(n) => format!("{n}:{port}/{proto}"),
                        None => format!("{port}/{proto}"),
                    }
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn endpoints(v: &Value) -> Vec<&Value> {
    v.get("endpoints")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// EndpointSlice ENDPOINTS: the first three addresses and how many more (as kubectl).
pub fn slice_endpoints(v: &Value) -> String {
    let all: Vec<String> = endpoints(v)
        .iter()
        .flat_map(|e| strs(e.get("addresses")))
        .collect();
    if all.is_empty() {
        return "<unset>".into();
    }
    let mut s = all.iter().take(3).cloned().collect::<Vec<_>>().join(",");
    if all.len() > 3 {
        s += &format!(" + {} more...", all.len() - 3);
    }
    s
}

/// EndpointSlice NODES (wide): each endpoint's node, with `(not ready)` where so.
pub fn slice_nodes(v: &Value) -> String {
    endpoints(v)
        .iter()
        .map(|e| {
            let node = e.get("nodeName").and_then(Value::as_str).unwrap_or("-");
            let ready = e
                .pointer("/conditions/ready")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            if ready {
                node.to_string()
            } else {
                format!("{node}(not ready)")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `twillctl datastore service-range [CIDRS]`: shows or sets the embedded
/// store's service cluster IP range(s).
pub async fn service_range(store: &StoreArgs, set: Option<String>) -> anyhow::Result<ExitCode> {
    if store.datastore != Backend::Embedded {
        anyhow::bail!(
            "the service range is the API server's --service-cluster-ip-range on a cluster; twillctl sets it only for the embedded store"
        );
    }
    let emb = EmbeddedStore::open(&store.path).context("opening the embedded datastore")?;
    if let Some(s) = set {
        let ranges: ServiceRanges = s
            .parse()
            .map_err(|e| crate::UsageError(format!("service range {s:?}: {e}")))?;
        emb.set_service_ranges(&ranges)?;
        println!("service range set to {ranges} (for Services written from now on)");
    } else {
        println!("{}", emb.service_ranges()?);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_as_kubectl_shows_them() {
        let v = json!({"spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.0.1", "fd00::1"],
            "ports": [{"port": 80, "nodePort": 30000, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]},
            "status": {"conditions": [{"type": CONDITION_LB, "status": "False",
                "reason": "PoolExhausted", "message": "IPv4 LoadBalancer pools [\"lb\"] have no free address"}]}});
        assert_eq!(cluster_ip(&v), "10.96.0.1,fd00::1");
        assert_eq!(external_ip(&v), "<pending>");
        assert_eq!(ports(&v), "80:30000/TCP,53/UDP");
        assert!(
            lb_status(&v).starts_with("PoolExhausted: IPv4"),
            "{}",
            lb_status(&v)
        );
        let partial = json!({"spec": {"type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]},
                "conditions": [{"type": CONDITION_LB, "status": "True",
                "reason": twill_ipam::lb_alloc::REASON_PARTIAL,
                "message": "allocated 192.0.2.1; no IPv6 address (PreferDualStack): IPv6 LoadBalancer pools [\"lb6\"] have no free address"}]}});
        assert!(
            lb_status(&partial).starts_with("PartiallyAllocated: allocated 192.0.2.1; no IPv6"),
            "{}",
            lb_status(&partial)
        );
        let full = json!({"spec": {"type": "LoadBalancer"},
            "status": {"conditions": [{"type": CONDITION_LB, "status": "True",
                "reason": "Allocated", "message": "allocated 192.0.2.1"}]}});
        assert_eq!(lb_status(&full), "");
        let c = json!({"spec": {"clusterIP": "None"}});
        assert_eq!(
            (cluster_ip(&c), external_ip(&c)),
            ("None".into(), "<none>".into())
        );
    }
}
