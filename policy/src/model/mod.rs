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
//! The compilers are in `network_policy` and `global_policy`. Evaluation
//! lives in [`crate::explain`](mod@crate::explain), rendering in
//! [`crate::render`](mod@crate::render); both read only this module's
//! types, which is what keeps them in agreement.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use twill_api::selector::Selector;

mod global_policy;
mod network_policy;

pub use global_policy::compile_global_policy;
pub use network_policy::compile_network_policy;

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

impl NsMatch {
    /// Whether namespace `ns` matches, its labels looked up in
    /// `ns_labels` (unknown: no labels). An endpoint of no namespace (`ns`
    /// empty: a CNI ADD without `K8S_POD_NAMESPACE`) matches only
    /// [`NsMatch::Any`]. Only a selector looks the labels up: this runs for
    /// every endpoint a selection is matched against, so a lookup per call
    /// shows in the full render's CPU (docs/benchmarks.md, policy control).
    pub fn matches(&self, ns: &str, ns_labels: &BTreeMap<String, Labels>) -> bool {
        match self {
            NsMatch::Any => true,
            NsMatch::Exact(n) => n == ns,
            NsMatch::Selector(_) if ns.is_empty() => false,
            NsMatch::Selector(s) => match ns_labels.get(ns) {
                Some(l) => s.matches(l),
                None => s.matches(&Labels::new()),
            },
        }
    }
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
        m.matches(ns, &self.namespaces)
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

/// A compile error at `field` of `policy`.
fn err(policy: &str, field: &str, reason: impl Into<String>) -> CompileError {
    CompileError {
        policy: policy.to_string(),
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Whether an entity imposes nothing (used by explain's wording).
pub fn entity_is_any(e: &Entity) -> bool {
    e.is_any()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(s: &str) -> NsMatch {
        NsMatch::Selector(Selector::parse(s).expect("selector"))
    }

    #[test]
    fn ns_match_looks_labels_up_only_for_a_selector_and_never_for_no_namespace() {
        let labels: BTreeMap<String, Labels> = BTreeMap::from([
            (
                "a".to_string(),
                Labels::from([("team".into(), "t1".into())]),
            ),
            ("b".to_string(), Labels::new()),
            // A stray entry under the empty name must not make a selector match.
            ("".to_string(), Labels::from([("team".into(), "t1".into())])),
        ]);
        let none = BTreeMap::new();
        for ns in ["", "a", "b", "unknown"] {
            assert!(NsMatch::Any.matches(ns, &labels), "{ns:?}");
        }
        let exact = NsMatch::Exact("a".into());
        assert!(exact.matches("a", &none), "Exact needs no labels");
        assert!(!exact.matches("b", &labels));
        assert!(!exact.matches("", &labels));

        let t1 = sel("team == 't1'");
        assert!(t1.matches("a", &labels));
        assert!(!t1.matches("b", &labels));
        assert!(!t1.matches("unknown", &labels));
        assert!(
            !t1.matches("", &labels),
            "no namespace never matches a selector"
        );
        // An unknown namespace is matched as one without labels.
        let no_team = sel("!has(team)");
        assert!(no_team.matches("unknown", &labels));
        assert!(no_team.matches("b", &labels));
        assert!(!no_team.matches("a", &labels));
        assert!(
            !no_team.matches("", &none),
            "no namespace never matches a selector"
        );
    }
}
