//! Synthetic Services for benchmarks and scale tests: `n` ClusterIP
//! Services (one TCP port each, every `NODE_PORT_EVERY`th a NodePort) with
//! `endpoints` ready endpoints each, spread over nodes `n1`…`n3`, and the
//! table a node renders for them. Addresses: cluster IPs from 10.96.0.0/12
//! (10.96.0.1 upwards), endpoints from 10.244.0.0/16 — only ever used in a
//! namespace a benchmark or test made.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{SvcTable, Tables, desired};

/// Every this many Services, one is a NodePort.
pub const NODE_PORT_EVERY: usize = 10;

/// The `i`th Service's cluster IP (10.96.0.1 + i).
pub fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)).wrapping_add(i as u32))
}

/// The `j`th endpoint of the `i`th Service (10.244.0.0/16, distinct for
/// `i * endpoints + j` below 65,534).
pub fn endpoint_ip(i: usize, j: usize, endpoints: usize) -> Ipv4Addr {
    let n = (i * endpoints + j) % 65_534 + 1;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + n as u32)
}

/// `n` Services named `svc-<i>` in namespace `bench`, port 80 → 8080, and
/// one EndpointSlice each with `endpoints` ready endpoints.
pub fn services(n: usize, endpoints: usize) -> (Vec<Service>, Vec<EndpointSlice>) {
    let mut svcs = Vec::with_capacity(n);
    let mut slices = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("svc-{i}");
        let node_port = (i % NODE_PORT_EVERY == 0).then(|| 30000 + (i / NODE_PORT_EVERY) as i32);
        let node_port = node_port.filter(|p| *p <= 32767);
        svcs.push(Service {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some("bench".into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                type_: Some(
                    if node_port.is_some() {
                        "NodePort"
                    } else {
                        "ClusterIP"
                    }
                    .into(),
                ),
                cluster_ip: Some(cluster_ip(i).to_string()),
                cluster_ips: Some(vec![cluster_ip(i).to_string()]),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    protocol: Some("TCP".into()),
                    target_port: Some(IntOrString::Int(8080)),
                    node_port,
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            status: None,
        });
        slices.push(slice(&name, i, endpoints));
    }
    (svcs, slices)
}

/// The EndpointSlice of Service `i` with `endpoints` ready endpoints.
pub fn slice(name: &str, i: usize, endpoints: usize) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{name}-1")),
            namespace: Some("bench".into()),
            labels: Some(BTreeMap::from([(
                twill_api::service::SERVICE_NAME_LABEL.to_string(),
                name.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
        endpoints: (0..endpoints)
            .map(|j| Endpoint {
                addresses: vec![endpoint_ip(i, j, endpoints).to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                node_name: Some(format!("n{}", j % 3 + 1)),
                ..Endpoint::default()
            })
            .collect(),
    }
}

/// The table node `n1` renders for `n` synthetic Services.
pub fn table(n: usize, endpoints: usize) -> SvcTable {
    let (svcs, slices) = services(n, endpoints);
    desired("n1", &svcs, &slices).1
}

/// The tables node `n1` renders for `n` synthetic Services.
pub fn tables(n: usize, endpoints: usize) -> Tables {
    let (svcs, slices) = services(n, endpoints);
    Tables::from_model(&twill_api::service_proxy::proxy_model("n1", &svcs, &slices))
}

/// The full script (one transaction) for `n` synthetic Services with
/// `endpoints` endpoints each, as node `n1` would apply it.
pub fn full_script(n: usize, endpoints: usize) -> String {
    tables(n, endpoints).full_script()
}
