//! Services (v1) and EndpointSlices (discovery.k8s.io/v1) as Twill reads
//! them: validation the API server would do, the API server's own
//! allocation of cluster IPs and node ports for the embedded store (which
//! has no API server), the names of Twill's LoadBalancer annotations, and
//! the pure answer to "which service prefixes does this node announce"
//! ([`announced_prefixes`]) that the node agent's BGP origination uses.
//! Pure functions only; `docs/services.md` tells the whole story.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::validate::{Errors, ValidationError, check_name};

/// The range cluster IPs come from on the embedded store unless configured
/// (Kubernetes' default `--service-cluster-ip-range`).
pub const DEFAULT_SERVICE_RANGE: &str = "10.96.0.0/12";
/// Node ports (Kubernetes' default `--service-node-port-range`).
pub const NODE_PORTS: std::ops::RangeInclusive<i32> = 30000..=32767;
/// `spec.loadBalancerClass` Twill serves (as does a Service without one).
pub const LB_CLASS: &str = "twill.dev/lb";
/// Annotation: the addresses a LoadBalancer Service asks for, comma-separated.
pub const ANN_LB_IPS: &str = "twill.dev/loadBalancerIPs";
/// Annotation: the IPPool(s) to take LoadBalancer addresses from, comma-separated.
pub const ANN_POOL: &str = "twill.dev/ip-pool";
/// Annotation: Services of one namespace with the same key may share an address.
pub const ANN_SHARING_KEY: &str = "twill.dev/sharing-key";
/// Annotation: BGP communities the Service's announced addresses carry,
/// comma-separated (`65000:100,65000:1:2,no-export`).
pub const ANN_BGP_COMMUNITIES: &str = "twill.dev/bgp-communities";
/// The status condition the LoadBalancer allocator keeps on a Service.
pub const CONDITION_LB: &str = "twill.dev/LoadBalancerAllocated";
/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The synthetic label an IPPool's serviceSelector sees: the Service's namespace.
pub const NAMESPACE_LABEL: &str = "twill.dev/namespace";

/// A DNS-1035 label (Service names): at most 63 characters, lower-case
/// letters, digits and `-`, starting with a letter, ending with a letter or digit.
pub fn check_dns_label(s: &str, starts_with_letter: bool) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err(format!(
            "is {} characters long; at most 63 are allowed",
            s.len()
        ));
    }
    let chars_ok = s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let first_ok = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || (!starts_with_letter && c.is_ascii_digit()));
    let last_ok = s
        .chars()
        .last()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if chars_ok && first_ok && last_ok {
        Ok(())
    } else {
        Err(format!(
            "must be lower-case letters, digits and '-', starting with a letter{} and ending with a letter or digit",
            if starts_with_letter { "" } else { " or digit" }
        ))
    }
}

fn check_namespace(e: &mut Errors, ns: Option<&str>) {
    if let Some(ns) = ns
        && let Err(r) = check_dns_label(ns, false)
    {
        e.push("metadata.namespace", ns, r);
    }
}

fn check_protocol(e: &mut Errors, at: &str, p: Option<&str>) {
    if let Some(p) = p
        && !matches!(p, "TCP" | "UDP" | "SCTP")
    {
        e.push(at, p, "must be TCP, UDP or SCTP");
    }
}

/// Validates a Service the way the API server would (the parts Twill reads).
pub fn validate_service(s: &Service) -> Result<(), ValidationError> {
    let name = s.metadata.name.clone().unwrap_or_default();
    let mut e = Errors::default();
    if let Err(r) = check_dns_label(&name, true) {
        e.push("metadata.name", &name, r);
    }
    check_namespace(&mut e, s.metadata.namespace.as_deref());
    if let Err((raw, r)) = bgp_communities(s) {
        e.push(
            format!("metadata.annotations[{ANN_BGP_COMMUNITIES}]"),
            raw,
            r,
        );
    }
    let Some(spec) = &s.spec else {
        return e.finish("Service", &name);
    };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !matches!(
        ty,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        e.push(
            "spec.type",
            ty,
            "must be ClusterIP, NodePort, LoadBalancer or ExternalName",
        );
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    let mut seen = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        if !(1..=65535).contains(&p.port) {
            e.push(format!("{at}.port"), p.port, "must be 1..=65535");
        }
        check_protocol(&mut e, &format!("{at}.protocol"), p.protocol.as_deref());
        let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
        if !seen.insert((proto.clone(), p.port)) {
            e.push(
                format!("{at}.port"),
                p.port,
                format!("{proto}/{} is listed twice", p.port),
            );
        }
        if ports.len() > 1 && p.name.as_deref().is_none_or(str::is_empty) {
            e.push(
                format!("{at}.name"),
                "",
                "every port needs a name when there are several",
            );
        }
        if let Some(np) = p.node_port
            && np != 0
            && !NODE_PORTS.contains(&np)
        {
            e.push(
                format!("{at}.nodePort"),
                np,
                format!(
                    "must be in the node port range {}-{}",
                    NODE_PORTS.start(),
                    NODE_PORTS.end()
                ),
            );
        }
    }
    for (i, ip) in spec.cluster_ips.iter().flatten().enumerate() {
        if ip != "None" && !ip.is_empty() && ip.parse::<IpAddr>().is_err() {
            e.push(
                format!("spec.clusterIPs[{i}]"),
                ip,
                "not an IP address (or None)",
            );
        }
    }
    if let Some(ip) = &spec.cluster_ip
        && ip != "None"
        && !ip.is_empty()
        && ip.parse::<IpAddr>().is_err()
    {
        e.push("spec.clusterIP", ip, "not an IP address (or None)");
    }
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        if ip.parse::<IpAddr>().is_err() {
            e.push(format!("spec.externalIPs[{i}]"), ip, "not an IP address");
        }
    }
    if let Some(ip) = &spec.load_balancer_ip
        && !ip.is_empty()
        && ip.parse::<IpAddr>().is_err()
    {
        e.push("spec.loadBalancerIP", ip, "not an IP address");
    }
    for (f, v) in [
        ("spec.externalTrafficPolicy", &spec.external_traffic_policy),
        ("spec.internalTrafficPolicy", &spec.internal_traffic_policy),
    ] {
        if let Some(v) = v
            && v != "Cluster"
            && v != "Local"
        {
            e.push(f, v, "must be Cluster or Local");
        }
    }
    if let Some(p) = &spec.ip_family_policy
        && !matches!(
            p.as_str(),
            "SingleStack" | "PreferDualStack" | "RequireDualStack"
        )
    {
        e.push(
            "spec.ipFamilyPolicy",
            p,
            "must be SingleStack, PreferDualStack or RequireDualStack",
        );
    }
    for (i, f) in spec.ip_families.iter().flatten().enumerate() {
        if f != "IPv4" && f != "IPv6" {
            e.push(format!("spec.ipFamilies[{i}]"), f, "must be IPv4 or IPv6");
        }
    }
    e.finish("Service", &name)
}

/// Validates an EndpointSlice the way the API server would (the parts Twill reads).
pub fn validate_endpoint_slice(s: &EndpointSlice) -> Result<(), ValidationError> {
    let name = s.metadata.name.clone().unwrap_or_default();
    let mut e = Errors::default();
    if let Err(r) = check_name(&name) {
        e.push("metadata.name", &name, r);
    }
    check_namespace(&mut e, s.metadata.namespace.as_deref());
    let v4 = match s.address_type.as_str() {
        "IPv4" => Some(true),
        "IPv6" => Some(false),
        "FQDN" => None,
        other => {
            e.push("addressType", other, "must be IPv4, IPv6 or FQDN");
            None
        }
    };
    for (i, ep) in s.endpoints.iter().enumerate() {
        if ep.addresses.is_empty() || ep.addresses.len() > 100 {
            e.push(
                format!("endpoints[{i}].addresses"),
                ep.addresses.len(),
                "must hold 1..=100 addresses",
            );
        }
        for (j, a) in ep.addresses.iter().enumerate() {
            if let Some(v4) = v4 {
                match a.parse::<IpAddr>() {
                    Ok(ip) if ip.is_ipv4() == v4 => {}
                    _ => e.push(
                        format!("endpoints[{i}].addresses[{j}]"),
                        a,
                        format!("not an {} address", s.address_type),
                    ),
                }
            }
        }
    }
    for (i, p) in s.ports.iter().flatten().enumerate() {
        check_protocol(
            &mut e,
            &format!("ports[{i}].protocol"),
            p.protocol.as_deref(),
        );
    }
    e.finish("EndpointSlice", &name)
}

/// The Service's type, defaulted.
pub fn service_type(s: &Service) -> &str {
    s.spec
        .as_ref()
        .and_then(|sp| sp.type_.as_deref())
        .unwrap_or("ClusterIP")
}

/// Whether Twill's LoadBalancer allocator serves this Service: type
/// LoadBalancer with no `loadBalancerClass` or [`LB_CLASS`].
pub fn is_twill_lb(s: &Service) -> bool {
    service_type(s) == "LoadBalancer"
        && s.spec
            .as_ref()
            .and_then(|sp| sp.load_balancer_class.as_deref())
            .is_none_or(|c| c == LB_CLASS)
}

/// `namespace/name`.
pub fn service_key(s: &Service) -> String {
    format!(
        "{}/{}",
        s.metadata.namespace.as_deref().unwrap_or("default"),
        s.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The Service's ports as `PROTOCOL/port`, sorted (what sharing compares).
pub fn port_keys(s: &Service) -> BTreeSet<String> {
    s.spec
        .iter()
        .flat_map(|sp| sp.ports.iter().flatten())
        .map(|p| format!("{}/{}", p.protocol.as_deref().unwrap_or("TCP"), p.port))
        .collect()
}

/// An annotation's value.
pub fn annotation<'a>(s: &'a Service, key: &str) -> Option<&'a str> {
    s.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The LoadBalancer addresses the Service asks for: `spec.loadBalancerIP`
/// and the [`ANN_LB_IPS`] annotation; an entry that is no address is an error naming it.
pub fn requested_lb_ips(s: &Service) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    let spec_ip = s
        .spec
        .as_ref()
        .and_then(|sp| sp.load_balancer_ip.as_deref())
        .filter(|v| !v.is_empty());
    let listed = annotation(s, ANN_LB_IPS).unwrap_or_default();
    for raw in spec_ip
        .into_iter()
        .chain(listed.split(',').map(str::trim).filter(|v| !v.is_empty()))
    {
        let ip: IpAddr = raw
            .parse()
            .map_err(|_| format!("requested address {raw:?} is not an IP address"))?;
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

/// The addresses `status.loadBalancer.ingress` shows (entries without an
/// IP, or with one that does not parse, left out), in the status's order.
pub fn ingress_ips(s: &Service) -> impl Iterator<Item = IpAddr> + '_ {
    s.status
        .iter()
        .filter_map(|st| st.load_balancer.as_ref())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
}

/// The communities the [`ANN_BGP_COMMUNITIES`] annotation asks for (none
/// without it); an entry that is no community is an error naming it and why.
pub fn bgp_communities(
    s: &Service,
) -> Result<Vec<crate::resources::bgpconfig::Community>, (String, String)> {
    let mut out = Vec::new();
    for raw in annotation(s, ANN_BGP_COMMUNITIES)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        let c = crate::resources::bgpconfig::parse_community(raw)
            .map_err(|r| (raw.to_string(), format!("{raw:?} is no BGP community: {r}")))?;
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

/// `spec.ipFamilies` as booleans (true: IPv4), unknown names left out.
fn spec_families(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Vec<bool> {
    spec.ip_families
        .iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some(true),
            "IPv6" => Some(false),
            _ => None,
        })
        .collect()
}

/// The IP families a Service asks for, in order (`true` = IPv4), each with
/// whether it is required: `ipFamilies` as the API server filled it, cut to
/// one for SingleStack; the second is optional under PreferDualStack.
pub fn wanted_families(s: &Service) -> Vec<(bool, bool)> {
    let Some(spec) = &s.spec else {
        return vec![(true, true)];
    };
    let mut fams = spec_families(spec);
    fams.dedup();
    if fams.is_empty() {
        fams.push(true);
    }
    match spec.ip_family_policy.as_deref() {
        Some("RequireDualStack") => fams.into_iter().map(|f| (f, true)).collect(),
        Some("PreferDualStack") => fams
            .into_iter()
            .enumerate()
            .map(|(i, f)| (f, i == 0))
            .collect(),
        _ => vec![(fams[0], true)],
    }
}

/// The service cluster IP ranges of the embedded store: at most one per family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRanges(pub Vec<IpNetwork>);

impl Default for ServiceRanges {
    fn default() -> Self {
        ServiceRanges(vec![
            DEFAULT_SERVICE_RANGE
                .parse()
                .expect("the default service range is a CIDR"),
        ])
    }
}

impl std::fmt::Display for ServiceRanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

impl std::str::FromStr for ServiceRanges {
    type Err = String;
    /// `10.96.0.0/12` or `10.96.0.0/12,fd00:96::/108`: one CIDR per family,
    /// at least 8 addresses each (IPv6 at most a /108's worth, as Kubernetes).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out: Vec<IpNetwork> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let net = crate::validate::parse_cidr(part)?;
            if out.iter().any(|o| o.is_ipv4() == net.is_ipv4()) {
                return Err(format!("{part}: one range per IP family"));
            }
            let host_bits = if net.is_ipv4() { 32 } else { 128 } - net.prefix();
            if host_bits < 3 {
                return Err(format!("{part}: too small (at least 8 addresses)"));
            }
            if !net.is_ipv4() && host_bits > 20 {
                return Err(format!(
                    "{part}: an IPv6 service range is at most a /108 (Kubernetes' limit)"
                ));
            }
            out.push(net);
        }
        if out.is_empty() {
            return Err("no CIDR given".into());
        }
        Ok(ServiceRanges(out))
    }
}

impl ServiceRanges {
    fn of(&self, v4: bool) -> Option<IpNetwork> {
        self.0.iter().copied().find(|n| n.is_ipv4() == v4)
    }
}

fn family_name(v4: bool) -> &'static str {
    if v4 { "IPv4" } else { "IPv6" }
}

fn u128_of(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

fn addr_of(v4: bool, n: u128) -> Option<IpAddr> {
    if v4 {
        u32::try_from(n)
            .ok()
            .map(|v| IpAddr::V4(std::net::Ipv4Addr::from(v)))
    } else {
        Some(IpAddr::V6(std::net::Ipv6Addr::from(n)))
    }
}

/// First free address of the range (not its network address, nor for IPv4
/// its broadcast address).
fn first_free(range: &IpNetwork, used: &BTreeSet<IpAddr>) -> Option<IpAddr> {
    let lo = u128_of(range.network()) + 1;
    let hi = u128_of(range.broadcast()) - u128::from(range.is_ipv4());
    // At most used.len() + 1 candidates are looked at.
    (lo..=hi)
        .filter_map(|n| addr_of(range.is_ipv4(), n))
        .find(|a| !used.contains(a))
}

/// What the API server does to a Service being written, done by the
/// embedded store in the write's transaction: keeps what `old` had where
/// the new object leaves it out (cluster IPs are immutable), fills
/// `ipFamilies`, `ipFamilyPolicy`, `clusterIP(s)` from `ranges` and node
/// ports from 30000–32767, and refuses an address or port another Service
/// holds, naming it. `others` are the other stored Services.
pub fn assign_cluster_fields(
    svc: &mut Service,
    old: Option<&Service>,
    others: &[Service],
    ranges: &ServiceRanges,
) -> Result<(), ValidationError> {
    let name = svc.metadata.name.clone().unwrap_or_default();
    let mut e = Errors::default();
    let ty = service_type(svc).to_string();
    let old_spec = old.and_then(|o| o.spec.clone()).unwrap_or_default();
    let spec = svc.spec.get_or_insert_with(Default::default);
    if ty == "ExternalName" {
        spec.cluster_ip = None;
        spec.cluster_ips = None;
        spec.ip_families = None;
        spec.ip_family_policy = None;
        return e.finish("Service", &name);
    }
    // Cluster IPs: given, kept from the stored object, or allocated.
    let mut ips: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
    if ips.is_empty()
        && let Some(ip) = spec.cluster_ip.clone().filter(|s| !s.is_empty())
    {
        ips.push(ip);
    }
    let old_ips: Vec<String> = old_spec.cluster_ips.clone().unwrap_or_default();
    if ips.is_empty() && !old_ips.is_empty() {
        ips = old_ips.clone();
    } else if !old_ips.is_empty() && ips.first() != old_ips.first() {
        e.push(
            "spec.clusterIPs",
            ips.join(","),
            format!(
                "a Service's cluster IP cannot change (it is {}): delete and recreate the Service",
                old_ips.join(",")
            ),
        );
        return e.finish("Service", &name);
    }
    let headless = ips.first().is_some_and(|i| i == "None");
    let mut families: Vec<bool> = Vec::new();
    if !headless {
        for ip in &ips {
            if let Ok(a) = ip.parse::<IpAddr>() {
                families.push(a.is_ipv4());
            }
        }
    }
    if families.is_empty() {
        families = spec_families(spec);
    }
    if families.is_empty()
        && let Some(first) = ranges.0.first()
    {
        families.push(first.is_ipv4());
    }
    let policy = spec
        .ip_family_policy
        .clone()
        .unwrap_or_else(|| "SingleStack".into());
    if policy != "SingleStack" && families.len() == 1 {
        let other = !families[0];
        if ranges.of(other).is_some() {
            families.push(other);
        } else if policy == "RequireDualStack" {
            e.push(
                "spec.ipFamilyPolicy",
                &policy,
                format!(
                    "the service range ({ranges}) has no {} range for a dual-stack Service",
                    family_name(other)
                ),
            );
        }
    }
    families.dedup();
    if policy == "SingleStack" && families.len() > 1 {
        e.push(
            "spec.ipFamilies",
            families.len(),
            "a SingleStack Service has one IP family",
        );
    }
    if !e.is_empty() {
        return e.finish("Service", &name);
    }
    if !headless {
        let used: BTreeMap<IpAddr, String> = others
            .iter()
            .flat_map(|o| {
                let key = service_key(o);
                o.spec
                    .iter()
                    .flat_map(|sp| sp.cluster_ips.iter().flatten())
                    .filter_map(|i| i.parse::<IpAddr>().ok())
                    .map(move |i| (i, key.clone()))
            })
            .collect();
        let mut out = Vec::new();
        for (i, v4) in families.iter().copied().enumerate() {
            let Some(range) = ranges.of(v4) else {
                e.push(
                    format!("spec.ipFamilies[{i}]"),
                    family_name(v4),
                    format!(
                        "the service range ({ranges}) has no {} range",
                        family_name(v4)
                    ),
                );
                continue;
            };
            let given = ips.get(i).and_then(|s| s.parse::<IpAddr>().ok());
            let ip = match given {
                Some(ip) => {
                    let ours = old_ips.iter().any(|o| o.parse::<IpAddr>().ok() == Some(ip));
                    if !ours && !range.contains(ip) {
                        e.push(
                            format!("spec.clusterIPs[{i}]"),
                            ip,
                            format!("not in the service range {range}"),
                        );
                    } else if let Some(holder) = used.get(&ip) {
                        e.push(
                            format!("spec.clusterIPs[{i}]"),
                            ip,
                            format!("already allocated to Service {holder}"),
                        );
                    }
                    ip
                }
                None => {
                    let taken: BTreeSet<IpAddr> = used.keys().copied().collect();
                    match first_free(&range, &taken) {
                        Some(ip) => ip,
                        None => {
                            e.push(
                                format!("spec.clusterIPs[{i}]"),
                                "",
                                format!("the service range {range} is full"),
                            );
                            continue;
                        }
                    }
                }
            };
            out.push(ip.to_string());
        }
        ips = out;
    } else {
        ips = vec!["None".into()];
    }
    spec.cluster_ip = ips.first().cloned();
    spec.cluster_ips = Some(ips);
    spec.ip_families = Some(families.iter().map(|f| family_name(*f).into()).collect());
    spec.ip_family_policy = Some(policy);
    assign_node_ports(&mut e, spec, &old_spec, others, &ty);
    if e.is_empty() {
        assign_health_check_node_port(&mut e, spec, &old_spec, others, &ty);
    }
    e.finish("Service", &name)
}

/// `spec.healthCheckNodePort`, as the API server does: a LoadBalancer
/// Service with `externalTrafficPolicy: Local` gets one from the node port
/// range (kept from the stored object, or given, when free); any other
/// Service has none.
fn assign_health_check_node_port(
    e: &mut Errors,
    spec: &mut k8s_openapi::api::core::v1::ServiceSpec,
    old: &k8s_openapi::api::core::v1::ServiceSpec,
    others: &[Service],
    ty: &str,
) {
    if ty != "LoadBalancer" || spec.external_traffic_policy.as_deref() != Some("Local") {
        spec.health_check_node_port = None;
        return;
    }
    let mut used: BTreeMap<i32, String> = BTreeMap::new();
    for o in others {
        let key = service_key(o);
        for sp in o.spec.iter() {
            for n in sp.ports.iter().flatten().filter_map(|p| p.node_port) {
                used.insert(n, key.clone());
            }
            if let Some(n) = sp.health_check_node_port {
                used.insert(n, key.clone());
            }
        }
    }
    let mine: BTreeSet<i32> = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.node_port)
        .collect();
    let wanted = spec
        .health_check_node_port
        .filter(|n| *n != 0)
        .or(old.health_check_node_port.filter(|n| *n != 0));
    if let Some(n) = wanted {
        if !NODE_PORTS.contains(&n) {
            e.push(
                "spec.healthCheckNodePort",
                n,
                format!(
                    "must be in the node port range {}-{}",
                    NODE_PORTS.start(),
                    NODE_PORTS.end()
                ),
            );
        } else if let Some(holder) = used.get(&n) {
            e.push(
                "spec.healthCheckNodePort",
                n,
                format!("already allocated to Service {holder}"),
            );
        } else if mine.contains(&n) {
            e.push(
                "spec.healthCheckNodePort",
                n,
                "is also a node port of this Service",
            );
        }
        spec.health_check_node_port = Some(n);
        return;
    }
    match NODE_PORTS
        .clone()
        .find(|n| !used.contains_key(n) && !mine.contains(n))
    {
        Some(n) => spec.health_check_node_port = Some(n),
        None => e.push(
            "spec.healthCheckNodePort",
            "",
            "the node port range 30000-32767 is full",
        ),
    }
}

fn assign_node_ports(
    e: &mut Errors,
    spec: &mut k8s_openapi::api::core::v1::ServiceSpec,
    old: &k8s_openapi::api::core::v1::ServiceSpec,
    others: &[Service],
    ty: &str,
) {
    let wants = ty == "NodePort"
        || (ty == "LoadBalancer" && spec.allocate_load_balancer_node_ports != Some(false));
    let Some(ports) = spec.ports.as_mut() else {
        return;
    };
    if !wants {
        if ty != "LoadBalancer" {
            for p in ports.iter_mut() {
                p.node_port = None;
            }
        }
        return;
    }
    let used: BTreeMap<i32, String> = others
        .iter()
        .flat_map(|o| {
            let key = service_key(o);
            o.spec
                .iter()
                .flat_map(|sp| {
                    sp.ports
                        .iter()
                        .flatten()
                        .filter_map(|p| p.node_port)
                        .chain(sp.health_check_node_port)
                })
                .map(move |n| (n, key.clone()))
        })
        .collect();
    let same = |a: &ServicePort, b: &ServicePort| {
        a.port == b.port
            && a.protocol.as_deref().unwrap_or("TCP") == b.protocol.as_deref().unwrap_or("TCP")
    };
    let proto = |p: &ServicePort| p.protocol.clone().unwrap_or_else(|| "TCP".into());
    // First what is given or kept, then free ports for the rest, so a
    // port given explicitly is never handed to an earlier port. One node
    // port may serve one protocol once: `53/TCP` and `53/UDP` may share
    // a node port, as Kubernetes allows (and gives them one when neither
    // has one), two TCP ports may not.
    let mut mine: BTreeSet<(String, i32)> = BTreeSet::new();
    for (i, p) in ports.iter_mut().enumerate() {
        if p.node_port.unwrap_or(0) == 0 {
            p.node_port = old
                .ports
                .iter()
                .flatten()
                .find(|o| same(o, p))
                .and_then(|o| o.node_port);
        }
        if let Some(n) = p.node_port.filter(|n| *n != 0) {
            if let Some(holder) = used.get(&n) {
                e.push(
                    format!("spec.ports[{i}].nodePort"),
                    n,
                    format!("already allocated to Service {holder}"),
                );
            } else if !mine.insert((proto(p), n)) {
                e.push(
                    format!("spec.ports[{i}].nodePort"),
                    n,
                    format!("used twice for {} in this Service", proto(p)),
                );
            }
        }
    }
    for i in 0..ports.len() {
        if ports[i].node_port.unwrap_or(0) != 0 {
            continue;
        }
        let pr = proto(&ports[i]);
        // The same port number under another protocol: its node port.
        let sibling = ports
            .iter()
            .filter(|o| o.port == ports[i].port && proto(o) != pr)
            .filter_map(|o| o.node_port.filter(|n| *n != 0))
            .find(|n| !mine.contains(&(pr.clone(), *n)));
        let free = sibling.or_else(|| {
            NODE_PORTS
                .clone()
                .find(|n| !used.contains_key(n) && !mine.iter().any(|(_, m)| m == n))
        });
        match free {
            Some(n) => {
                mine.insert((pr, n));
                ports[i].node_port = Some(n);
            }
            None => e.push(
                format!("spec.ports[{i}].nodePort"),
                "",
                "the node port range 30000-32767 is full",
            ),
        }
    }
}

/// The CIDRs from BGPConfiguration that bound what is announced, by kind of address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceAdvertisement {
    /// `serviceClusterIPs`: announced whole from every node.
    pub cluster_ips: Vec<IpNetwork>,
    /// `serviceExternalIPs`.
    pub external_ips: Vec<IpNetwork>,
    /// `serviceLoadBalancerIPs`.
    pub load_balancer_ips: Vec<IpNetwork>,
}

impl ServiceAdvertisement {
    /// From a BGPConfiguration's spec (invalid CIDRs were refused at write time and are skipped).
    pub fn from_spec(spec: &crate::resources::BGPConfigurationSpec) -> Self {
        let parse = |v: &[crate::resources::bgpconfig::ServiceCidr]| {
            v.iter()
                .filter_map(|c| crate::validate::parse_cidr(&c.cidr).ok())
                .collect()
        };
        ServiceAdvertisement {
            cluster_ips: parse(&spec.service_cluster_ips),
            external_ips: parse(&spec.service_external_ips),
            load_balancer_ips: parse(&spec.service_load_balancer_ips),
        }
    }
}

fn host_net(a: IpAddr) -> IpNetwork {
    let len = if a.is_ipv4() { 32 } else { 128 };
    IpNetwork::new(a, len).expect("a host prefix length is valid")
}

/// Whether `node` has an endpoint that should receive Local-policy traffic
/// for the Service: a ready one, or when the node has no ready one, a
/// serving terminating one (kube-proxy's rule).
fn has_local_endpoint(svc: &Service, slices: &[impl Borrow<EndpointSlice>], node: &str) -> bool {
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let local = slices
        .iter()
        .map(Borrow::borrow)
        .filter(|s| s.metadata.namespace.as_deref().unwrap_or("default") == ns)
        .filter(|s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .is_some_and(|n| n == name)
        })
        .flat_map(|s| s.endpoints.iter())
        .filter(|ep| ep.node_name.as_deref() == Some(node));
    let mut serving_terminating = false;
    for ep in local {
        let c = ep.conditions.clone().unwrap_or_default();
        // Unset `ready` means ready (the API's rule for consumers).
        let ready = c.ready.unwrap_or(true);
        let serving = c.serving.unwrap_or(ready);
        let terminating = c.terminating.unwrap_or(false);
        if ready && !terminating {
            return true;
        }
        if serving && terminating {
            serving_terminating = true;
        }
    }
    serving_terminating
}

/// The service prefixes `node` announces, each with the Services (or
/// `serviceClusterIPs`) that make it announced. Nothing outside the
/// configured CIDRs is ever included. The cluster IP CIDRs are announced
/// whole by every node; a cluster IP with `internalTrafficPolicy: Local`,
/// and external and LoadBalancer addresses, as host routes: by every node
/// under the Cluster policy, and only by nodes with a local endpoint
/// under Local (`externalTrafficPolicy` for external and LoadBalancer
/// addresses). Pure: the node agent calls it on every change of its inputs.
pub fn announced_prefixes(
    node: &str,
    services: &[impl Borrow<Service>],
    slices: &[impl Borrow<EndpointSlice>],
    adv: &ServiceAdvertisement,
) -> BTreeMap<IpNetwork, BTreeSet<String>> {
    let mut out: BTreeMap<IpNetwork, BTreeSet<String>> = BTreeMap::new();
    for c in &adv.cluster_ips {
        out.entry(*c)
            .or_default()
            .insert("serviceClusterIPs".into());
    }
    let inside = |cidrs: &[IpNetwork], a: IpAddr| cidrs.iter().any(|c| c.contains(a));
    for svc in services {
        let svc = svc.borrow();
        let ty = service_type(svc);
        if ty == "ExternalName" {
            continue;
        }
        let Some(spec) = &svc.spec else { continue };
        let key = service_key(svc);
        let mut local_cache: Option<bool> = None;
        let mut local =
            || *local_cache.get_or_insert_with(|| has_local_endpoint(svc, slices, node));
        if spec.internal_traffic_policy.as_deref() == Some("Local") {
            for ip in spec.cluster_ips.iter().flatten() {
                if let Ok(a) = ip.parse::<IpAddr>()
                    && inside(&adv.cluster_ips, a)
                    && local()
                {
                    out.entry(host_net(a)).or_default().insert(key.clone());
                }
            }
        }
        let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
        let mut external: Vec<(IpAddr, &[IpNetwork])> = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|s| s.parse().ok())
            .map(|a| (a, adv.external_ips.as_slice()))
            .collect();
        if ty == "LoadBalancer" {
            external.extend(ingress_ips(svc).map(|a| (a, adv.load_balancer_ips.as_slice())));
        }
        for (a, cidrs) in external {
            if inside(cidrs, a) && (!external_local || local()) {
                out.entry(host_net(a)).or_default().insert(key.clone());
            }
        }
    }
    out
}
