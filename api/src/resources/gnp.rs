//! `GlobalNetworkPolicy`: cluster-wide, ordered policy with Allow / Deny /
//! Pass / Log actions, evaluated together with Kubernetes NetworkPolicy
//! (Calico's model: lower `order` first; Pass hands the decision to the
//! Kubernetes policies; Log records and continues).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::{Errors, ValidationError, parse_net_or_addr};

/// A cluster-wide network policy.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "twill.dev",
    version = "v1",
    kind = "GlobalNetworkPolicy",
    plural = "globalnetworkpolicies",
    shortname = "gnp",
    category = "twill",
    derive = "PartialEq",
    doc = "Cluster-wide ordered network policy with Allow, Deny, Pass and Log",
    printcolumn(name = "Order", type_ = "number", json_path = ".spec.order"),
    printcolumn(name = "Selector", type_ = "string", json_path = ".spec.selector"),
    printcolumn(
        name = "Types",
        type_ = "string",
        json_path = ".spec.types",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct GlobalNetworkPolicySpec {
    /// Lower orders are evaluated first (default: after every ordered policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// Which pods the policy applies to (default all()).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Restrict to pods in namespaces whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    /// Directions the policy governs (default: Ingress, plus Egress when egress rules exist).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<PolicyType>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
}

/// Direction.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum PolicyType {
    Ingress,
    Egress,
}

/// Rule verdict.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Action {
    #[default]
    Allow,
    Deny,
    /// Skip the remaining GlobalNetworkPolicies; Kubernetes NetworkPolicies decide.
    Pass,
    /// Log the packet and continue with the next rule.
    Log,
}

/// A protocol by name (TCP, UDP, SCTP, ICMP, ICMPv6) or number (schema:
/// an int-or-string, in `schema.rs`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(untagged)]
pub enum Protocol {
    Number(u8),
    Name(String),
}

/// A port: a number, a range `"80:90"`, or a named container port (schema:
/// an int-or-string, in `schema.rs`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(untagged)]
pub enum Port {
    Number(u16),
    Text(String),
}

/// One rule.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_protocol: Option<Protocol>,
    /// ICMP type and code (needs protocol ICMP or ICMPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<Icmp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_icmp: Option<Icmp>,
    /// Restrict to IPv4 (4) or IPv6 (6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = [4, 6]))]
    pub ip_version: Option<u8>,
    #[serde(default)]
    pub source: EntityRule,
    #[serde(default)]
    pub destination: EntityRule,
}

/// ICMP match.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub struct Icmp {
    #[serde(rename = "type")]
    pub type_: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

/// Match on one side (source or destination) of a packet.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntityRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::schema::nets")]
    pub nets: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::schema::nets")]
    pub not_nets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<Port>,
}

/// A parsed port match.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortMatch {
    Range(u16, u16),
    Named(String),
}

impl Port {
    /// Parses the port form.
    pub fn parse(&self) -> Result<PortMatch, String> {
        match self {
            Port::Number(0) => Err("port 0 is not a port".into()),
            Port::Number(n) => Ok(PortMatch::Range(*n, *n)),
            Port::Text(t) => {
                if let Some((a, b)) = t.split_once(':') {
                    let a: u16 = a
                        .parse()
                        .map_err(|_| "range start must be 1..=65535".to_string())?;
                    let b: u16 = b
                        .parse()
                        .map_err(|_| "range end must be 1..=65535".to_string())?;
                    if a == 0 || a > b {
                        return Err("a range is FIRST:LAST with 1 <= FIRST <= LAST".into());
                    }
                    Ok(PortMatch::Range(a, b))
                } else if let Ok(n) = t.parse::<u16>() {
                    Port::Number(n).parse()
                } else if !t.is_empty()
                    && t.len() <= 15
                    && t.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                {
                    Ok(PortMatch::Named(t.clone()))
                } else {
                    Err(
                        "a port is a number, FIRST:LAST, or a container port name (IANA_SVC_NAME)"
                            .into(),
                    )
                }
            }
        }
    }
}

/// Protocol numbers for the names the API accepts.
pub fn protocol_number(p: &Protocol) -> Result<u8, String> {
    match p {
        Protocol::Number(n) => Ok(*n),
        Protocol::Name(n) => match n.to_ascii_uppercase().as_str() {
            "TCP" => Ok(6),
            "UDP" => Ok(17),
            "SCTP" => Ok(132),
            "ICMP" => Ok(1),
            "ICMPV6" => Ok(58),
            "UDPLITE" => Ok(136),
            _ => Err("unknown protocol: use TCP, UDP, SCTP, ICMP, ICMPv6 or a number".into()),
        },
    }
}

impl GlobalNetworkPolicySpec {
    /// The directions the policy governs, with the default applied.
    pub fn effective_types(&self) -> Vec<PolicyType> {
        if !self.types.is_empty() {
            return self.types.clone();
        }
        let mut t = vec![PolicyType::Ingress];
        if !self.egress.is_empty() {
            t.push(PolicyType::Egress);
        }
        t
    }
}

impl GlobalNetworkPolicy {
    /// Validates selectors, nets, ports and protocols.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let name = self.metadata.name.clone().unwrap_or_default();
        let mut e = Errors::default();
        let s = &self.spec;
        if let Some(o) = s.order
            && !o.is_finite()
        {
            e.push("spec.order", o, "must be a finite number");
        }
        if let Some(sel) = &s.selector {
            e.selector("spec.selector", sel);
        }
        if let Some(sel) = &s.namespace_selector {
            e.selector("spec.namespaceSelector", sel);
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in &s.types {
            if !seen.insert(*t) {
                e.push("spec.types", format!("{t:?}"), "listed twice");
            }
        }
        // Rules for a direction `types` leaves out would never be evaluated:
        // refuse them rather than accept and ignore them.
        for (dir, rules, t) in [
            ("ingress", &s.ingress, PolicyType::Ingress),
            ("egress", &s.egress, PolicyType::Egress),
        ] {
            if !s.types.is_empty() && !rules.is_empty() && !s.types.contains(&t) {
                e.push(
                    format!("spec.{dir}"),
                    format!("{} rule(s)", rules.len()),
                    format!(
                        "spec.types does not list {t:?}, so these rules would be ignored: add {t:?} to spec.types or remove them"
                    ),
                );
            }
        }
        for (dir, rules) in [("ingress", &s.ingress), ("egress", &s.egress)] {
            for (i, r) in rules.iter().enumerate() {
                validate_rule(&mut e, &format!("spec.{dir}[{i}]"), r);
            }
        }
        e.finish("GlobalNetworkPolicy", &name)
    }
}

fn validate_rule(e: &mut Errors, at: &str, r: &Rule) {
    let proto = r.protocol.as_ref().map(|p| match protocol_number(p) {
        Ok(n) => Some(n),
        Err(reason) => {
            e.push(format!("{at}.protocol"), format!("{p:?}"), reason);
            None
        }
    });
    if let Some(p) = &r.not_protocol
        && let Err(reason) = protocol_number(p)
    {
        e.push(format!("{at}.notProtocol"), format!("{p:?}"), reason);
    }
    let proto = proto.flatten();
    if (r.icmp.is_some() || r.not_icmp.is_some()) && !matches!(proto, Some(1 | 58)) {
        e.push(
            format!("{at}.icmp"),
            "",
            "icmp matches need protocol ICMP or ICMPv6",
        );
    }
    if let Some(v) = r.ip_version
        && v != 4
        && v != 6
    {
        e.push(format!("{at}.ipVersion"), v, "must be 4 or 6");
    }
    // A rule whose parts contradict each other would never match: say so
    // rather than accept it.
    if let (Some(v), Some(p @ (1 | 58))) = (r.ip_version, proto)
        && (v == 6) != (p == 58)
    {
        e.push(
            format!("{at}.ipVersion"),
            v,
            format!(
                "protocol {} is IPv{} only, so the rule would never match",
                if p == 1 { "ICMP" } else { "ICMPv6" },
                if p == 1 { 4 } else { 6 }
            ),
        );
    }
    if let Some(v @ (4 | 6)) = r.ip_version {
        for (side, ent) in [("source", &r.source), ("destination", &r.destination)] {
            let nets: Vec<_> = ent
                .nets
                .iter()
                .filter_map(|n| parse_net_or_addr(n).ok())
                .collect();
            if !nets.is_empty() && nets.iter().all(|n| n.is_ipv4() != (v == 4)) {
                e.push(
                    format!("{at}.{side}.nets"),
                    ent.nets.join(","),
                    format!("no IPv{v} network, so with ipVersion {v} the rule would never match"),
                );
            }
        }
    }
    for (side, ent) in [("source", &r.source), ("destination", &r.destination)] {
        let at = format!("{at}.{side}");
        for (f, nets) in [("nets", &ent.nets), ("notNets", &ent.not_nets)] {
            for (j, n) in nets.iter().enumerate() {
                if let Err(reason) = parse_net_or_addr(n) {
                    e.push(format!("{at}.{f}[{j}]"), n, reason);
                }
            }
        }
        for (f, sel) in [
            ("selector", &ent.selector),
            ("notSelector", &ent.not_selector),
            ("namespaceSelector", &ent.namespace_selector),
        ] {
            if let Some(sel) = sel {
                e.selector(&format!("{at}.{f}"), sel);
            }
        }
        for (f, ports) in [("ports", &ent.ports), ("notPorts", &ent.not_ports)] {
            if !ports.is_empty() && !matches!(proto, Some(6 | 17 | 132 | 136)) {
                e.push(
                    format!("{at}.{f}"),
                    "",
                    "ports need protocol TCP, UDP, SCTP or UDPLite",
                );
            }
            for (j, p) in ports.iter().enumerate() {
                if let Err(reason) = p.parse() {
                    e.push(format!("{at}.{f}[{j}]"), format!("{p:?}"), reason);
                }
            }
        }
    }
}
