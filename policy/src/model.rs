//! The policy model: what the cluster looks like to policy (endpoints with
//! their addresses, labels and named ports; namespaces with their labels)
//! and every policy compiled into one shape, whether it came from a
//! Kubernetes `NetworkPolicy` or a Twill `GlobalNetworkPolicy`.
//!
//! Both kinds compile to [`Policy`]: a scope (which endpoints it selects), and
//! for each direction it governs an ordered list of [`Rule`]s. A Kubernetes
//! rule `from: [peers] ports: [p1, p2]` becomes one rule per port entry, each
//! with the same peers (peers OR'ed, ports OR'ed, the two AND'ed), so every
//! compiled rule has at most one protocol, as Calico's rules do.
//!
//! Evaluation lives in [`crate::explain`](mod@crate::explain), rendering in
//! [`crate::render`](mod@crate::render);
//! both read only this module's types, which is what keeps them in agreement.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use twill_api::resources::gnp::{
    Action as GnpAction, EntityRule, GlobalNetworkPolicy, PolicyType, PortMatch, protocol_number,
};
use twill_api::selector::Selector;

/// Label map.
pub type Labels = BTreeMap<String, String>;

/// Label every namespace carries in Kubernetes (the API server adds it);
/// the model adds it too so the embedded store behaves the same.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// IP protocol numbers.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
}

/// Why a policy could not be compiled. The datastore validates objects
/// before storing them, so this only happens with objects written around it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{policy}: {field}: {reason}")]
pub struct CompileError {
    pub policy: String,
    pub field: String,
    pub reason: String,
}

/// A container port with a name (what named ports in policies resolve to).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamedPort {
    pub name: String,
    pub proto: u8,
    pub port: u16,
}

/// A pod interface as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub ips: Vec<IpAddr>,
    pub ports: Vec<NamedPort>,
    /// The node the pod runs on.
    pub node: String,
    /// The host-side interface, for endpoints on the node being rendered.
    pub iface: Option<String>,
}

impl Endpoint {
    /// `namespace/name`, or `container ID` for an endpoint of no namespace.
    pub fn id(&self) -> String {
        if self.namespace.is_empty() {
            format!("container {}", self.name)
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }

    /// The port a named port resolves to on this endpoint for `proto`.
    pub fn named_port(&self, name: &str, proto: u8) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.proto == proto)
            .map(|p| p.port)
    }
}

/// Which namespaces a scope or peer covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NsMatch {
    Any,
    Exact(String),
    Selector(Selector),
}

/// A selection of endpoints: pods matching `pods` in namespaces matching `ns`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodSel {
    pub ns: NsMatch,
    pub pods: Selector,
}

impl fmt::Display for PodSel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.ns {
            NsMatch::Any => write!(f, "pods {}", self.pods),
            NsMatch::Exact(n) => write!(f, "pods {} in namespace {n}", self.pods),
            NsMatch::Selector(s) => write!(f, "pods {} in namespaces {s}", self.pods),
        }
    }
}

/// One alternative a rule side may match.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    Pods(PodSel),
    /// A CIDR minus exceptions (Kubernetes ipBlock).
    Block {
        net: IpNetwork,
        except: Vec<IpNetwork>,
    },
}

/// A port match on one side.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortSpec {
    Range(u16, u16),
    Named(String),
}

/// One side (source or destination) of a rule. Every present condition
/// must hold; lists are alternatives (OR); empty lists impose nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Entity {
    /// Alternatives (Kubernetes peers; a GNP selector is one alternative).
    pub peers: Vec<Peer>,
    /// The address must be in one of these (GNP `nets`).
    pub nets: Vec<IpNetwork>,
    /// The address must be in none of these (GNP `notNets`).
    pub not_nets: Vec<IpNetwork>,
    /// The address must not belong to an endpoint of this selection.
    pub not_pods: Option<PodSel>,
    pub ports: Vec<PortSpec>,
    pub not_ports: Vec<PortSpec>,
}

impl Entity {
    fn is_any(&self) -> bool {
        *self == Entity::default()
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Deny,
    /// Skip the remaining global policies; Kubernetes policies decide.
    Pass,
    /// Log and continue.
    Log,
}

/// An ICMP type and optional code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IcmpMatch {
    pub type_: u8,
    pub code: Option<u8>,
}

/// One compiled rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Where it came from, e.g. `ingress[0]` or `ingress[0].ports[1]`.
    pub origin: String,
    pub action: Action,
    pub proto: Option<u8>,
    pub not_proto: Option<u8>,
    pub icmp: Option<IcmpMatch>,
    pub not_icmp: Option<IcmpMatch>,
    /// 4 or 6.
    pub ip_version: Option<u8>,
    pub src: Entity,
    pub dst: Entity,
}

impl Rule {
    /// A rule that matches every packet (no protocol, ICMP, family or
    /// peer condition); callers narrow it with struct update syntax.
    pub fn any(origin: impl Into<String>, action: Action) -> Rule {
        Rule {
            origin: origin.into(),
            action,
            proto: None,
            not_proto: None,
            icmp: None,
            not_icmp: None,
            ip_version: None,
            src: Entity::default(),
            dst: Entity::default(),
        }
    }
}

/// Direction, from the selected endpoint's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// Which evaluation tier a policy sits in: global policies first (by
/// order), then Kubernetes policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    Global,
    Kubernetes,
}

/// A compiled policy of either kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// `gnp/NAME` or `np/NAMESPACE/NAME`.
    pub id: String,
    pub tier: Tier,
    /// Global policies: lower first; none sorts last.
    pub order: Option<f64>,
    pub scope: PodSel,
    /// Rules per governed direction; a direction absent is not governed.
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    /// The rules for a direction, if the policy governs it.
    pub fn rules(&self, d: Direction) -> Option<&[Rule]> {
        match d {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// Evaluation order: global policies by (order, name), then Kubernetes
/// policies by name.
pub fn evaluation_order(a: &Policy, b: &Policy) -> std::cmp::Ordering {
    a.tier
        .cmp(&b.tier)
        .then_with(|| {
            let oa = a.order.unwrap_or(f64::INFINITY);
            let ob = b.order.unwrap_or(f64::INFINITY);
            oa.total_cmp(&ob)
        })
        .then_with(|| a.id.cmp(&b.id))
}

/// Everything evaluation and rendering look at.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub endpoints: Vec<Endpoint>,
    /// Namespace name → labels (the name label is added by [`Model::new`]).
    pub namespaces: BTreeMap<String, Labels>,
    /// In evaluation order: global by (order, name), then Kubernetes by name.
    pub policies: Vec<Policy>,
    /// Endpoint indices by address.
    by_ip: BTreeMap<IpAddr, Vec<usize>>,
}

impl Model {
    /// Builds the model; sorts policies into evaluation order.
    pub fn new(
        endpoints: Vec<Endpoint>,
        namespaces: BTreeMap<String, Labels>,
        mut policies: Vec<Policy>,
    ) -> Model {
        let mut namespaces = namespaces;
        for ep in &endpoints {
            namespaces.entry(ep.namespace.clone()).or_default();
        }
        for (name, labels) in namespaces.iter_mut() {
            labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
        }
        policies.sort_by(evaluation_order);
        let mut by_ip: BTreeMap<IpAddr, Vec<usize>> = BTreeMap::new();
        for (i, ep) in endpoints.iter().enumerate() {
            for ip in &ep.ips {
                by_ip.entry(*ip).or_default().push(i);
            }
        }
        Model {
            endpoints,
            namespaces,
            policies,
            by_ip,
        }
    }

    /// Endpoints holding an address.
    pub fn endpoints_at(&self, ip: IpAddr) -> impl Iterator<Item = &Endpoint> {
        self.by_ip
            .get(&ip)
            .into_iter()
            .flatten()
            .filter_map(|i| self.endpoints.get(*i))
    }

    /// Whether a namespace matches. An endpoint of no namespace (`ns`
    /// empty: a CNI ADD without `K8S_POD_NAMESPACE`) matches only
    /// [`NsMatch::Any`]: namespace selectors never match it.
    pub fn ns_matches(&self, m: &NsMatch, ns: &str) -> bool {
        match m {
            NsMatch::Any => true,
            NsMatch::Exact(n) => n == ns,
            NsMatch::Selector(_) if ns.is_empty() => false,
            NsMatch::Selector(s) => {
                let empty = Labels::new();
                s.matches(self.namespaces.get(ns).unwrap_or(&empty))
            }
        }
    }

    /// Whether an endpoint is in a selection.
    pub fn selects(&self, sel: &PodSel, ep: &Endpoint) -> bool {
        self.ns_matches(&sel.ns, &ep.namespace) && sel.pods.matches(&ep.labels)
    }

    /// Addresses of every endpoint in a selection.
    pub fn members(&self, sel: &PodSel) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .endpoints
            .iter()
            .filter(|e| self.selects(sel, e))
            .flat_map(|e| e.ips.iter().copied())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

fn err(policy: &str, field: &str, reason: impl Into<String>) -> CompileError {
    CompileError {
        policy: policy.to_string(),
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn label_sel(
    id: &str,
    field: &str,
    s: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> Result<Selector, CompileError> {
    match s {
        None => Ok(Selector::All),
        Some(s) => twill_api::native::label_selector(s).map_err(|r| err(id, field, r)),
    }
}

fn k8s_peer(id: &str, at: &str, ns: &str, p: &NetworkPolicyPeer) -> Result<Peer, CompileError> {
    if let Some(b) = &p.ip_block {
        let net: IpNetwork = twill_api::native::cidr(&b.cidr)
            .map_err(|r| err(id, &format!("{at}.ipBlock.cidr"), r))?;
        let except = b
            .except
            .iter()
            .flatten()
            .map(|e| {
                twill_api::native::cidr(e).map_err(|r| err(id, &format!("{at}.ipBlock.except"), r))
            })
            .collect::<Result<_, _>>()?;
        return Ok(Peer::Block { net, except });
    }
    let pods = label_sel(id, &format!("{at}.podSelector"), p.pod_selector.as_ref())?;
    let nsm = match &p.namespace_selector {
        None => NsMatch::Exact(ns.to_string()),
        Some(s) => NsMatch::Selector(label_sel(id, &format!("{at}.namespaceSelector"), Some(s))?),
    };
    Ok(Peer::Pods(PodSel { ns: nsm, pods }))
}

fn k8s_port(
    id: &str,
    at: &str,
    p: &NetworkPolicyPort,
) -> Result<(u8, Option<PortSpec>), CompileError> {
    let proto = match p.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => proto::TCP,
        "UDP" => proto::UDP,
        "SCTP" => proto::SCTP,
        other => {
            return Err(err(
                id,
                &format!("{at}.protocol"),
                format!("unknown protocol {other}"),
            ));
        }
    };
    let spec = match &p.port {
        None => None,
        Some(IntOrString::Int(n)) => {
            let start = u16::try_from(*n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| err(id, &format!("{at}.port"), "must be 1..=65535"))?;
            let end = match p.end_port {
                None => start,
                Some(e) => u16::try_from(e)
                    .ok()
                    .filter(|e| *e >= start)
                    .ok_or_else(|| err(id, &format!("{at}.endPort"), "must be port..=65535"))?,
            };
            Some(PortSpec::Range(start, end))
        }
        Some(IntOrString::String(s)) => match s.parse::<u16>() {
            Ok(n) if n > 0 => Some(PortSpec::Range(n, n)),
            _ => Some(PortSpec::Named(s.clone())),
        },
    };
    Ok((proto, spec))
}

/// A Kubernetes rule's peers and ports, whichever direction it is.
type K8sRule = (
    Option<Vec<NetworkPolicyPeer>>,
    Option<Vec<NetworkPolicyPort>>,
);

/// Compiles a Kubernetes NetworkPolicy.
pub fn compile_network_policy(np: &NetworkPolicy) -> Result<Policy, CompileError> {
    let ns = np
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = np.metadata.name.clone().unwrap_or_default();
    let id = format!("np/{ns}/{name}");
    let spec = np.spec.clone().unwrap_or_default();
    let pods = label_sel(&id, "spec.podSelector", spec.pod_selector.as_ref())?;
    let (mut ing, mut egr) = (false, false);
    match &spec.policy_types {
        Some(types) if !types.is_empty() => {
            for t in types {
                match t.as_str() {
                    "Ingress" => ing = true,
                    "Egress" => egr = true,
                    other => {
                        return Err(err(
                            &id,
                            "spec.policyTypes",
                            format!("unknown type {other}"),
                        ));
                    }
                }
            }
        }
        _ => {
            // SetDefaults_NetworkPolicy: Egress only when there is an
            // egress rule (twill_api::defaults does the same in the store).
            ing = true;
            egr = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        }
    }
    let compile_dir = |dir: Direction| -> Result<Vec<Rule>, CompileError> {
        let mut out = Vec::new();
        let rules: Vec<K8sRule> = match dir {
            Direction::Ingress => spec
                .ingress
                .iter()
                .flatten()
                .map(|r| (r.from.clone(), r.ports.clone()))
                .collect(),
            Direction::Egress => spec
                .egress
                .iter()
                .flatten()
                .map(|r| (r.to.clone(), r.ports.clone()))
                .collect(),
        };
        let peer_field = if dir == Direction::Ingress {
            "from"
        } else {
            "to"
        };
        for (i, (peers, ports)) in rules.iter().enumerate() {
            let at = format!("{dir}[{i}]");
            let peers = peers
                .iter()
                .flatten()
                .enumerate()
                .map(|(j, p)| k8s_peer(&id, &format!("spec.{at}.{peer_field}[{j}]"), &ns, p))
                .collect::<Result<Vec<_>, _>>()?;
            let other = Entity {
                peers,
                ..Default::default()
            };
            let ports = ports.clone().unwrap_or_default();
            let variants: Vec<(String, Option<u8>, Vec<PortSpec>)> = if ports.is_empty() {
                vec![(at.clone(), None, Vec::new())]
            } else {
                ports
                    .iter()
                    .enumerate()
                    .map(|(j, p)| {
                        let (proto, spec) = k8s_port(&id, &format!("spec.{at}.ports[{j}]"), p)?;
                        Ok((
                            format!("{at}.ports[{j}]"),
                            Some(proto),
                            spec.into_iter().collect(),
                        ))
                    })
                    .collect::<Result<_, CompileError>>()?
            };
            for (origin, proto, ports) in variants {
                let local_ports = Entity {
                    ports,
                    ..Default::default()
                };
                // Ports always name the destination: for ingress the selected
                // pod, for egress the peer.
                let (src, dst) = match dir {
                    Direction::Ingress => (other.clone(), local_ports),
                    Direction::Egress => {
                        let mut d = other.clone();
                        d.ports = local_ports.ports;
                        (Entity::default(), d)
                    }
                };
                out.push(Rule {
                    proto,
                    src,
                    dst,
                    ..Rule::any(origin, Action::Allow)
                });
            }
        }
        Ok(out)
    };
    let ingress = if ing {
        Some(compile_dir(Direction::Ingress)?)
    } else {
        None
    };
    let egress = if egr {
        Some(compile_dir(Direction::Egress)?)
    } else {
        None
    };
    Ok(Policy {
        id,
        tier: Tier::Kubernetes,
        order: None,
        scope: PodSel {
            ns: NsMatch::Exact(ns),
            pods,
        },
        ingress,
        egress,
    })
}

fn calico_sel(id: &str, field: &str, s: Option<&String>) -> Result<Option<Selector>, CompileError> {
    s.map(|s| Selector::parse(s).map_err(|e| err(id, field, e.to_string())))
        .transpose()
}

fn nets(id: &str, field: &str, v: &[String]) -> Result<Vec<IpNetwork>, CompileError> {
    v.iter()
        .map(|n| twill_api::validate::parse_net_or_addr(n).map_err(|r| err(id, field, r)))
        .collect()
}

fn gnp_ports(
    id: &str,
    field: &str,
    v: &[twill_api::resources::gnp::Port],
) -> Result<Vec<PortSpec>, CompileError> {
    v.iter()
        .map(|p| match p.parse() {
            Ok(PortMatch::Range(a, b)) => Ok(PortSpec::Range(a, b)),
            Ok(PortMatch::Named(n)) => Ok(PortSpec::Named(n)),
            Err(r) => Err(err(id, field, r)),
        })
        .collect()
}

fn gnp_entity(id: &str, at: &str, e: &EntityRule) -> Result<Entity, CompileError> {
    let sel = calico_sel(id, &format!("{at}.selector"), e.selector.as_ref())?;
    let nssel = calico_sel(
        id,
        &format!("{at}.namespaceSelector"),
        e.namespace_selector.as_ref(),
    )?;
    let not_sel = calico_sel(id, &format!("{at}.notSelector"), e.not_selector.as_ref())?;
    let ns = match &nssel {
        Some(s) => NsMatch::Selector(s.clone()),
        None => NsMatch::Any,
    };
    let peers = if sel.is_some() || nssel.is_some() {
        vec![Peer::Pods(PodSel {
            ns: ns.clone(),
            pods: sel.unwrap_or(Selector::All),
        })]
    } else {
        Vec::new()
    };
    Ok(Entity {
        peers,
        nets: nets(id, &format!("{at}.nets"), &e.nets)?,
        not_nets: nets(id, &format!("{at}.notNets"), &e.not_nets)?,
        not_pods: not_sel.map(|pods| PodSel { ns, pods }),
        ports: gnp_ports(id, &format!("{at}.ports"), &e.ports)?,
        not_ports: gnp_ports(id, &format!("{at}.notPorts"), &e.not_ports)?,
    })
}

/// Compiles a GlobalNetworkPolicy.
pub fn compile_global_policy(g: &GlobalNetworkPolicy) -> Result<Policy, CompileError> {
    let name = g.metadata.name.clone().unwrap_or_default();
    let id = format!("gnp/{name}");
    let s = &g.spec;
    let pods = calico_sel(&id, "spec.selector", s.selector.as_ref())?.unwrap_or(Selector::All);
    let ns = match calico_sel(&id, "spec.namespaceSelector", s.namespace_selector.as_ref())? {
        Some(sel) => NsMatch::Selector(sel),
        None => NsMatch::Any,
    };
    let types = s.effective_types();
    let compile_dir = |dir: Direction, rules: &[twill_api::resources::gnp::Rule]| {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let at = format!("{dir}[{i}]");
                let p = |x: &Option<twill_api::resources::gnp::Protocol>, f: &str| {
                    x.as_ref()
                        .map(|x| {
                            protocol_number(x).map_err(|r| err(&id, &format!("spec.{at}.{f}"), r))
                        })
                        .transpose()
                };
                let icmp = |x: &Option<twill_api::resources::gnp::Icmp>| {
                    x.as_ref().map(|i| IcmpMatch {
                        type_: i.type_,
                        code: i.code,
                    })
                };
                Ok(Rule {
                    origin: at.clone(),
                    action: match r.action {
                        GnpAction::Allow => Action::Allow,
                        GnpAction::Deny => Action::Deny,
                        GnpAction::Pass => Action::Pass,
                        GnpAction::Log => Action::Log,
                    },
                    proto: p(&r.protocol, "protocol")?,
                    not_proto: p(&r.not_protocol, "notProtocol")?,
                    icmp: icmp(&r.icmp),
                    not_icmp: icmp(&r.not_icmp),
                    ip_version: r.ip_version,
                    src: gnp_entity(&id, &format!("spec.{at}.source"), &r.source)?,
                    dst: gnp_entity(&id, &format!("spec.{at}.destination"), &r.destination)?,
                })
            })
            .collect::<Result<Vec<_>, CompileError>>()
    };
    let ingress = if types.contains(&PolicyType::Ingress) {
        Some(compile_dir(Direction::Ingress, &s.ingress)?)
    } else {
        None
    };
    let egress = if types.contains(&PolicyType::Egress) {
        Some(compile_dir(Direction::Egress, &s.egress)?)
    } else {
        None
    };
    Ok(Policy {
        id,
        tier: Tier::Global,
        order: s.order,
        scope: PodSel { ns, pods },
        ingress,
        egress,
    })
}

/// Whether an entity imposes nothing (used by explain's wording).
pub fn entity_is_any(e: &Entity) -> bool {
    e.is_any()
}
