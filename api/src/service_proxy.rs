//! What a node does with a Service, as a pure function of the Services,
//! the EndpointSlices and the node's name ([`proxy_model`]): for every
//! Service port and IP family, the addresses and ports traffic arrives on
//! ([`Frontend`]), the endpoints with their target ports resolved, and the
//! endpoints this node sends to — the cluster set and the node-local set,
//! each chosen by Kubernetes' rule (ready endpoints; when none is ready, the
//! serving terminating ones) — with the traffic policies, session affinity,
//! source ranges and health check port that shape it.
//!
//! The node agent's service proxy renders this as nftables; `twillctl` can
//! show it as it is (the "why" is in the fields). docs/service-proxy.md
//! tells the whole story.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::service::{SERVICE_NAME_LABEL, service_key, service_type};

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 h).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;
/// The longest affinity timeout the API allows (one day).
pub const MAX_AFFINITY_TIMEOUT: u32 = 86400;

/// A Service port's transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// From the API's name; unset is TCP, an unknown name is None.
    pub fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The name nftables uses (`tcp`, `udp`, `sctp`).
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// The name the API uses.
    pub fn api(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

/// An IP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(a: &IpAddr) -> Family {
        if a.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    /// `IPv4` / `IPv6`, as the API (and an EndpointSlice's addressType) says.
    pub fn api(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// Where traffic for a Service port arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Frontend {
    /// A cluster IP (`spec.clusterIPs`) and the Service port.
    ClusterIp(IpAddr, u16),
    /// The node port on every local address of the family.
    NodePort(u16),
    /// A LoadBalancer ingress address (`status.loadBalancer.ingress[].ip`,
    /// unless its `ipMode` is `Proxy`) and the Service port.
    LoadBalancer(IpAddr, u16),
    /// An address of `spec.externalIPs` and the Service port.
    ExternalIp(IpAddr, u16),
}

impl Frontend {
    /// Whether traffic to it follows `externalTrafficPolicy` (everything
    /// but the cluster IP, which follows `internalTrafficPolicy`).
    pub fn is_external(&self) -> bool {
        !matches!(self, Frontend::ClusterIp(..))
    }
}

/// An endpoint of a Service port: an address with the target port
/// resolved (an EndpointSlice's port of the Service port's name), and the
/// conditions it was chosen by.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
    /// The node it runs on, if the slice says.
    pub node: Option<String>,
    /// `conditions.ready`, unset meaning ready.
    pub ready: bool,
    /// `conditions.serving`, unset meaning `ready`.
    pub serving: bool,
    /// `conditions.terminating`, unset meaning false.
    pub terminating: bool,
}

impl Endpoint {
    /// Ready and not terminating: the endpoints traffic normally goes to.
    pub fn usable(&self) -> bool {
        self.ready && !self.terminating
    }

    /// Serving while terminating: the fallback when no endpoint is usable.
    pub fn fallback(&self) -> bool {
        self.serving && self.terminating
    }
}

/// Why an endpoint set is what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// The ready endpoints.
    Ready,
    /// No endpoint is ready: the serving terminating ones.
    ServingTerminating,
    /// No endpoint is ready or serving-terminating: traffic is refused.
    None,
}

/// The endpoints one traffic policy sends to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSet {
    /// Indexes into [`ServicePortProxy::endpoints`], in its order.
    pub chosen: Vec<usize>,
    pub pick: Pick,
}

impl EndpointSet {
    /// Kubernetes' rule over the endpoints `eligible` admits: the usable
    /// ones, else the serving terminating ones.
    fn pick(eps: &[Endpoint], eligible: impl Fn(&Endpoint) -> bool) -> EndpointSet {
        let ready: Vec<usize> = (0..eps.len())
            .filter(|&i| eligible(&eps[i]) && eps[i].usable())
            .collect();
        if !ready.is_empty() {
            return EndpointSet {
                chosen: ready,
                pick: Pick::Ready,
            };
        }
        let fallback: Vec<usize> = (0..eps.len())
            .filter(|&i| eligible(&eps[i]) && eps[i].fallback())
            .collect();
        let pick = if fallback.is_empty() {
            Pick::None
        } else {
            Pick::ServingTerminating
        };
        EndpointSet {
            chosen: fallback,
            pick,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.chosen.is_empty()
    }
}

/// One Service port in one IP family, as a node proxies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortProxy {
    /// `namespace/name`.
    pub service: String,
    /// The Service port's name (may be empty when it is the only one).
    pub port_name: String,
    pub protocol: Protocol,
    pub family: Family,
    /// Where traffic arrives, sorted.
    pub frontends: Vec<Frontend>,
    /// Every endpoint of the family serving this port, sorted by address,
    /// each address once (the first slice listing it wins).
    pub endpoints: Vec<Endpoint>,
    /// What traffic under the Cluster policy goes to.
    pub cluster: EndpointSet,
    /// What traffic under the Local policy goes to: this node's endpoints.
    pub local: EndpointSet,
    /// `externalTrafficPolicy: Local` (node ports, LoadBalancer and
    /// external addresses use only [`Self::local`]; the client's address is
    /// kept).
    pub external_local: bool,
    /// `internalTrafficPolicy: Local` (the cluster IP uses only [`Self::local`]).
    pub internal_local: bool,
    /// `sessionAffinity: ClientIP`: the timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// `loadBalancerSourceRanges` of this family (for LoadBalancer frontends).
    pub source_ranges: Vec<IpNetwork>,
    /// `healthCheckNodePort` (LoadBalancer with `externalTrafficPolicy: Local`).
    pub health_check_node_port: Option<u16>,
}

impl ServicePortProxy {
    /// The endpoints traffic arriving on `f` goes to.
    pub fn targets(&self, f: &Frontend) -> &EndpointSet {
        let local = if f.is_external() {
            self.external_local
        } else {
            self.internal_local
        };
        if local { &self.local } else { &self.cluster }
    }

    /// The chosen endpoints of a set.
    pub fn chosen<'a>(&'a self, set: &'a EndpointSet) -> impl Iterator<Item = &'a Endpoint> + 'a {
        set.chosen.iter().filter_map(|&i| self.endpoints.get(i))
    }

    /// `namespace/name:port/PROTO/IPvN`, for logs and names.
    pub fn key(&self) -> String {
        format!(
            "{}:{}/{}/{}",
            self.service,
            self.port_name,
            self.protocol.api(),
            self.family.api()
        )
    }
}

/// The local endpoint count per Service (`namespace/name`) on the node,
/// for the health check node port: how many of the node's endpoints the
/// Local policy sends to (the largest count over the Service's ports).
pub fn local_endpoint_counts(model: &[ServicePortProxy]) -> BTreeMap<String, usize> {
    let mut out: BTreeMap<String, usize> = BTreeMap::new();
    for p in model {
        let n = out.entry(p.service.clone()).or_default();
        *n = (*n).max(p.local.chosen.len());
    }
    out
}

fn parse_ips<'a>(v: impl IntoIterator<Item = &'a String>) -> Vec<IpAddr> {
    v.into_iter()
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn port_u16(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

/// The endpoints of one Service port in one family from the Service's
/// slices: a slice's port of the same name and protocol gives the target
/// port; a slice without it does not serve this port.
fn endpoints_of(
    slices: &[&EndpointSlice],
    sp: &ServicePort,
    proto: Protocol,
    fam: Family,
) -> Vec<Endpoint> {
    let name = sp.name.as_deref().unwrap_or_default();
    let mut by_addr: BTreeMap<IpAddr, Endpoint> = BTreeMap::new();
    for s in slices {
        if s.address_type != fam.api() {
            continue;
        }
        let Some(port) = s
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.as_deref().unwrap_or_default() == name
                    && Protocol::parse(p.protocol.as_deref()) == Some(proto)
            })
            .and_then(|p| p.port)
            .and_then(port_u16)
        else {
            continue;
        };
        for ep in &s.endpoints {
            let c = ep.conditions.clone().unwrap_or_default();
            let ready = c.ready.unwrap_or(true);
            let serving = c.serving.unwrap_or(ready);
            let terminating = c.terminating.unwrap_or(false);
            // Kubernetes proxies one address per endpoint (the first).
            let Some(addr) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            if Family::of(&addr) != fam {
                continue;
            }
            by_addr.entry(addr).or_insert_with(|| Endpoint {
                addr,
                port,
                node: ep.node_name.clone(),
                ready,
                serving,
                terminating,
            });
        }
    }
    by_addr.into_values().collect()
}

/// The EndpointSlices of each Service, by (namespace, name) as the
/// `kubernetes.io/service-name` label says; slices without it belong to
/// none. Borrows the names: building it allocates only the lists.
pub fn slices_by_service<E: Borrow<EndpointSlice>>(
    slices: &[E],
) -> HashMap<(&str, &str), Vec<&EndpointSlice>> {
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for s in slices {
        let s = s.borrow();
        let Some(name) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let ns = s.metadata.namespace.as_deref().unwrap_or("default");
        by_service.entry((ns, name)).or_default().push(s);
    }
    by_service
}

/// The (namespace, name) a Service or EndpointSlice is known by.
pub fn namespace_name(m: &ObjectMeta) -> (&str, &str) {
    (
        m.namespace.as_deref().unwrap_or("default"),
        m.name.as_deref().unwrap_or_default(),
    )
}

/// What `node` does with every Service: one [`ServicePortProxy`] per
/// Service port and IP family, sorted by Service, port name, protocol and
/// family. Left out: ExternalName and headless Services (no cluster IP:
/// nothing to proxy), ports with an unknown protocol, and families the
/// Service has no cluster IP of. Pure: the node agent calls
/// [`service_ports`] for each Service that changed.
pub fn proxy_model(
    node: &str,
    services: &[Service],
    slices: &[EndpointSlice],
) -> Vec<ServicePortProxy> {
    let by_service = slices_by_service(slices);
    let mut out = Vec::new();
    for svc in services {
        let mine = by_service
            .get(&namespace_name(&svc.metadata))
            .map(Vec::as_slice)
            .unwrap_or_default();
        out.extend(service_ports(node, svc, mine));
    }
    out.sort_by(|a, b| {
        (&a.service, &a.port_name, a.protocol, a.family).cmp(&(
            &b.service,
            &b.port_name,
            b.protocol,
            b.family,
        ))
    });
    out
}

/// [`proxy_model`] for one Service and its EndpointSlices (`my_slices`),
/// sorted by port name, protocol and family.
pub fn service_ports(
    node: &str,
    svc: &Service,
    my_slices: &[&EndpointSlice],
) -> Vec<ServicePortProxy> {
    let mut out = Vec::new();
    let ty = service_type(svc);
    let Some(spec) = &svc.spec else { return out };
    if ty == "ExternalName" {
        return out;
    }
    let mut cluster_ips = parse_ips(spec.cluster_ips.iter().flatten());
    if cluster_ips.is_empty() {
        cluster_ips = parse_ips(spec.cluster_ip.iter());
    }
    if cluster_ips.is_empty() {
        return out; // headless, or not allocated yet
    }
    let external_ips = parse_ips(spec.external_ips.iter().flatten());
    let lb_ips: Vec<IpAddr> = if ty == "LoadBalancer" {
        svc.status
            .iter()
            .filter_map(|s| s.load_balancer.as_ref())
            .flat_map(|lb| lb.ingress.iter().flatten())
            .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|i| i.ip.as_deref()?.trim().parse().ok())
            .collect()
    } else {
        Vec::new()
    };
    let ranges: Vec<IpNetwork> = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .filter_map(|r| crate::validate::parse_cidr(r.trim()).ok())
        .collect();
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| (1..=MAX_AFFINITY_TIMEOUT).contains(t))
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    });
    let health_check_node_port = (ty == "LoadBalancer" && external_local)
        .then_some(spec.health_check_node_port)
        .flatten()
        .and_then(port_u16);
    let families: BTreeSet<Family> = cluster_ips.iter().map(Family::of).collect();
    for sp in spec.ports.iter().flatten() {
        let Some(proto) = Protocol::parse(sp.protocol.as_deref()) else {
            continue;
        };
        let Some(port) = port_u16(sp.port) else {
            continue;
        };
        let node_port = (ty == "NodePort" || ty == "LoadBalancer")
            .then_some(sp.node_port)
            .flatten()
            .and_then(port_u16);
        for &fam in &families {
            let in_fam = |a: &&IpAddr| Family::of(a) == fam;
            let mut frontends: Vec<Frontend> = cluster_ips
                .iter()
                .filter(in_fam)
                .map(|a| Frontend::ClusterIp(*a, port))
                .collect();
            frontends.extend(node_port.map(Frontend::NodePort));
            frontends.extend(
                lb_ips
                    .iter()
                    .filter(in_fam)
                    .map(|a| Frontend::LoadBalancer(*a, port)),
            );
            frontends.extend(
                external_ips
                    .iter()
                    .filter(in_fam)
                    .map(|a| Frontend::ExternalIp(*a, port)),
            );
            frontends.sort();
            frontends.dedup();
            let endpoints = endpoints_of(my_slices, sp, proto, fam);
            let cluster = EndpointSet::pick(&endpoints, |_| true);
            let local = EndpointSet::pick(&endpoints, |e| e.node.as_deref() == Some(node));
            out.push(ServicePortProxy {
                service: service_key(svc),
                port_name: sp.name.clone().unwrap_or_default(),
                protocol: proto,
                family: fam,
                frontends,
                endpoints,
                cluster,
                local,
                external_local,
                internal_local,
                affinity_timeout,
                source_ranges: ranges
                    .iter()
                    .filter(|r| Family::of(&r.ip()) == fam)
                    .copied()
                    .collect(),
                health_check_node_port,
            });
        }
    }
    out.sort_by(|a, b| {
        (&a.port_name, a.protocol, a.family).cmp(&(&b.port_name, b.protocol, b.family))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(yaml: &str) -> Service {
        serde_saphyr::from_str(yaml).expect("a Service")
    }
    fn slice(yaml: &str) -> EndpointSlice {
        serde_saphyr::from_str(yaml).expect("an EndpointSlice")
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn addrs(p: &ServicePortProxy, set: &EndpointSet) -> Vec<String> {
        p.chosen(set)
            .map(|e| format!("{}:{}", e.addr, e.port))
            .collect()
    }

    const WEB: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  externalIPs: [192.0.2.7]
  loadBalancerSourceRanges: [198.51.100.0/24, '2001:db8::/32']
  ports:
  - {name: http, port: 80, targetPort: web, protocol: TCP, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP, nodePort: 30053}
status:
  loadBalancer:
    ingress: [{ip: 203.0.113.5}, {ip: 203.0.113.6, ipMode: Proxy}]
";

    fn web_slice(eps: &str) -> EndpointSlice {
        slice(&format!(
            "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
- {{name: dns, port: 5353, protocol: UDP}}
endpoints:
{eps}
"
        ))
    }

    #[test]
    fn frontends_are_every_address_traffic_arrives_on() {
        let m = proxy_model("n1", &[svc(WEB)], &[]);
        assert_eq!(m.len(), 2, "{m:#?}");
        let http = m.iter().find(|p| p.port_name == "http").unwrap();
        assert_eq!(http.protocol, Protocol::Tcp);
        assert_eq!(http.family, Family::V4);
        assert_eq!(
            http.frontends,
            vec![
                Frontend::ClusterIp(ip("10.96.0.10"), 80),
                Frontend::NodePort(30080),
                // ipMode Proxy: the load balancer proxies, the node does not.
                Frontend::LoadBalancer(ip("203.0.113.5"), 80),
                Frontend::ExternalIp(ip("192.0.2.7"), 80),
            ]
        );
        assert_eq!(http.source_ranges, vec!["198.51.100.0/24".parse().unwrap()]);
        let dns = m.iter().find(|p| p.port_name == "dns").unwrap();
        assert_eq!(dns.protocol, Protocol::Udp);
        assert!(dns.frontends.contains(&Frontend::NodePort(30053)));
        // No endpoints at all: nothing to send to, said so.
        assert_eq!(http.cluster.pick, Pick::None);
        assert!(http.cluster.is_empty());
    }

    #[test]
    fn target_ports_come_from_the_slice_port_of_the_same_name_and_protocol() {
        let s = web_slice("- {addresses: [10.244.1.5], nodeName: n1}");
        let m = proxy_model("n1", &[svc(WEB)], &[s]);
        let http = m.iter().find(|p| p.port_name == "http").unwrap();
        assert_eq!(addrs(http, &http.cluster), vec!["10.244.1.5:8080"]);
        let dns = m.iter().find(|p| p.port_name == "dns").unwrap();
        assert_eq!(addrs(dns, &dns.cluster), vec!["10.244.1.5:5353"]);
        // A slice without the port's name serves no endpoint for it.
        let mut other = web_slice("- {addresses: [10.244.1.6], nodeName: n1}");
        other.metadata.name = Some("web-2".into());
        other.ports = Some(vec![k8s_openapi::api::discovery::v1::EndpointPort {
            name: Some("metrics".into()),
            port: Some(9090),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]);
        let m = proxy_model("n1", &[svc(WEB)], &[web_slice("  []"), other]);
        assert!(m.iter().all(|p| p.endpoints.is_empty()), "{m:#?}");
    }

    #[test]
    fn ready_endpoints_win_and_serving_terminating_ones_are_the_fallback() {
        let s = web_slice(
            "
- {addresses: [10.244.1.5], nodeName: n1, conditions: {ready: true}}
- {addresses: [10.244.2.5], nodeName: n2, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.244.3.5], nodeName: n3, conditions: {ready: false, serving: false, terminating: true}}
- {addresses: [10.244.4.5], nodeName: n2}
",
        );
        let m = proxy_model("n2", &[svc(WEB)], std::slice::from_ref(&s));
        let http = &m.iter().find(|p| p.port_name == "http").unwrap();
        // Unset ready means ready.
        assert_eq!(
            addrs(http, &http.cluster),
            vec!["10.244.1.5:8080", "10.244.4.5:8080"]
        );
        assert_eq!(http.cluster.pick, Pick::Ready);
        assert_eq!(addrs(http, &http.local), vec!["10.244.4.5:8080"]);
        // Without the ready ones: the serving terminating one, never the
        // one that stopped serving.
        let s = web_slice(
            "
- {addresses: [10.244.2.5], nodeName: n2, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.244.3.5], nodeName: n3, conditions: {ready: false, serving: false, terminating: true}}
- {addresses: [10.244.5.5], nodeName: n2, conditions: {ready: false}}
",
        );
        let m = proxy_model("n2", &[svc(WEB)], &[s]);
        let http = &m.iter().find(|p| p.port_name == "http").unwrap();
        assert_eq!(addrs(http, &http.cluster), vec!["10.244.2.5:8080"]);
        assert_eq!(http.cluster.pick, Pick::ServingTerminating);
        assert_eq!(http.endpoints.len(), 3);
    }

    #[test]
    fn the_local_set_is_this_nodes_endpoints_with_its_own_fallback() {
        let s = web_slice(
            "
- {addresses: [10.244.1.5], nodeName: n1}
- {addresses: [10.244.2.5], nodeName: n2, conditions: {ready: false, serving: true, terminating: true}}
",
        );
        let mut local = svc(WEB);
        let spec = local.spec.as_mut().unwrap();
        spec.external_traffic_policy = Some("Local".into());
        spec.internal_traffic_policy = Some("Local".into());
        spec.health_check_node_port = Some(32000);
        // n2 has no ready endpoint of its own: its serving terminating one,
        // although another node has a ready one.
        let m = proxy_model("n2", std::slice::from_ref(&local), std::slice::from_ref(&s));
        let http = &m.iter().find(|p| p.port_name == "http").unwrap();
        assert_eq!(addrs(http, &http.local), vec!["10.244.2.5:8080"]);
        assert_eq!(http.local.pick, Pick::ServingTerminating);
        assert_eq!(addrs(http, &http.cluster), vec!["10.244.1.5:8080"]);
        assert!(http.external_local && http.internal_local);
        assert_eq!(http.health_check_node_port, Some(32000));
        // Both policies Local: every frontend goes to the local set.
        for f in &http.frontends {
            assert_eq!(http.targets(f), &http.local, "{f:?}");
        }
        // A node without endpoints: none.
        let m = proxy_model("n9", std::slice::from_ref(&local), std::slice::from_ref(&s));
        assert!(m.iter().all(|p| p.local.pick == Pick::None));
        assert_eq!(local_endpoint_counts(&m).get("shop/web"), Some(&0));
        let m = proxy_model("n1", &[local], &[s]);
        assert_eq!(local_endpoint_counts(&m).get("shop/web"), Some(&1));
    }

    #[test]
    fn traffic_policies_choose_the_set_per_frontend() {
        let mut s = svc(WEB);
        s.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
        let m = proxy_model("n1", &[s], &[]);
        let http = &m[1];
        assert_eq!(http.port_name, "http");
        for f in &http.frontends {
            let want = if f.is_external() {
                &http.local
            } else {
                &http.cluster
            };
            assert!(std::ptr::eq(http.targets(f), want), "{f:?}");
        }
        // The health check port is only for LoadBalancer + Local.
        assert_eq!(http.health_check_node_port, None, "none was allocated");
    }

    #[test]
    fn session_affinity_has_kubernetes_default_timeout() {
        let mut s = svc(WEB);
        s.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
        let m = proxy_model("n1", std::slice::from_ref(&s), &[]);
        assert_eq!(m[0].affinity_timeout, Some(DEFAULT_AFFINITY_TIMEOUT));
        s.spec.as_mut().unwrap().session_affinity_config =
            Some(k8s_openapi::api::core::v1::SessionAffinityConfig {
                client_ip: Some(k8s_openapi::api::core::v1::ClientIPConfig {
                    timeout_seconds: Some(30),
                }),
            });
        let m = proxy_model("n1", std::slice::from_ref(&s), &[]);
        assert_eq!(m[0].affinity_timeout, Some(30));
        s.spec.as_mut().unwrap().session_affinity = Some("None".into());
        assert_eq!(proxy_model("n1", &[s], &[])[0].affinity_timeout, None);
    }

    #[test]
    fn dual_stack_services_split_by_family_and_headless_ones_are_skipped() {
        let svcs: Vec<Service> = [
            "
apiVersion: v1
kind: Service
metadata: {name: dual, namespace: default}
spec:
  type: NodePort
  clusterIPs: [10.96.0.20, 'fd00:96::20']
  ports: [{port: 443, nodePort: 30443}]
",
            "
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: default}
spec:
  clusterIP: None
  ports: [{port: 80}]
",
            "
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec:
  type: ExternalName
  externalName: example.com
",
        ]
        .into_iter()
        .map(svc)
        .collect();
        let v6 = slice(
            "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dual-6, namespace: default, labels: {kubernetes.io/service-name: dual}}
addressType: IPv6
ports: [{port: 8443}]
endpoints: [{addresses: ['fd00:10:244::5'], nodeName: n1}]
",
        );
        let m = proxy_model("n1", &svcs, &[v6]);
        assert_eq!(m.len(), 2, "{m:#?}");
        assert_eq!((m[0].family, m[1].family), (Family::V4, Family::V6));
        assert_eq!(
            m[1].frontends,
            vec![
                Frontend::ClusterIp(ip("fd00:96::20"), 443),
                Frontend::NodePort(30443)
            ]
        );
        assert!(m[0].endpoints.is_empty());
        assert_eq!(addrs(&m[1], &m[1].cluster), vec!["fd00:10:244::5:8443"]);
    }

    #[test]
    fn slices_of_other_services_or_namespaces_do_not_count() {
        let mut s = web_slice("- {addresses: [10.244.1.5]}");
        s.metadata.namespace = Some("other".into());
        let mut t = web_slice("- {addresses: [10.244.1.6]}");
        t.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(SERVICE_NAME_LABEL.into(), "api".into());
        let m = proxy_model("n1", &[svc(WEB)], &[s, t]);
        assert!(m.iter().all(|p| p.endpoints.is_empty()));
    }

    #[test]
    fn an_address_listed_twice_is_one_endpoint() {
        let a = web_slice("- {addresses: [10.244.1.5], nodeName: n1}");
        let mut b = a.clone();
        b.metadata.name = Some("web-2".into());
        let m = proxy_model("n1", &[svc(WEB)], &[a, b]);
        assert_eq!(m[0].endpoints.len(), 1);
    }
}
