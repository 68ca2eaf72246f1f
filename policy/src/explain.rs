//! Evaluation of the model for one packet, with the reasons: which policies
//! select each side, which rule decided, and the verdict. This is the
//! reference semantics; the renderer must produce rules that decide the same
//! (the property test in `tests/agreement.rs` checks it).
//!
//! Semantics (Calico's, with Kubernetes NetworkPolicy as the last tier):
//! * a packet is allowed when the source endpoint's egress AND the
//!   destination endpoint's ingress allow it; an address that is not an
//!   endpoint has no policy of its own;
//! * a pod talking to itself (source and destination addresses of one
//!   endpoint) is always allowed: the packet never leaves the pod's network
//!   namespace, so no node rule sees it;
//! * for one direction of one endpoint: global policies that select it, in
//!   order, rule by rule — Allow and Deny decide, Log continues, Pass skips
//!   to the Kubernetes tier; if a global policy selected the endpoint and
//!   none decided, the packet is denied (end of tier);
//! * Kubernetes tier: if no NetworkPolicy selects the endpoint for this
//!   direction it is not isolated and the packet is allowed; otherwise some
//!   rule of some selecting policy must allow it (they add up).

use std::fmt;
use std::net::IpAddr;

use crate::model::{Action, Direction, Endpoint, Entity, Model, Peer, PortSpec, Rule, Tier, proto};

/// A packet as policy sees it (the first packet of a flow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// ICMP type and code.
    pub icmp: Option<(u8, u8)>,
}

impl Packet {
    /// A TCP, UDP or SCTP packet to `dport` (source port 40000).
    pub fn l4(src: IpAddr, dst: IpAddr, proto: u8, dport: u16) -> Packet {
        Packet {
            src,
            dst,
            proto,
            sport: Some(40000),
            dport: Some(dport),
            icmp: None,
        }
    }
}

/// Allowed or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Verdict {
    Allow,
    Deny,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "ALLOW",
            Verdict::Deny => "DENY",
        })
    }
}

/// What decided one direction.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "by", rename_all = "camelCase")]
pub enum Decision {
    /// No policy selects the endpoint in this direction.
    NotIsolated,
    /// A rule matched.
    Rule {
        policy: String,
        rule: String,
        action: String,
    },
    /// Global policies selected the endpoint and none decided.
    EndOfGlobalTier,
    /// NetworkPolicies isolate the endpoint and none of their rules allows.
    NoRuleAllows,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::NotIsolated => write!(f, "no policy selects it: not isolated"),
            Decision::Rule {
                policy,
                rule,
                action,
            } => write!(f, "{policy} {rule} ({action})"),
            Decision::EndOfGlobalTier => {
                write!(
                    f,
                    "global policies select it and none matched: end-of-tier deny"
                )
            }
            Decision::NoRuleAllows => write!(
                f,
                "isolated, and no rule of the selecting policies allows it"
            ),
        }
    }
}

/// One direction of one endpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Side {
    pub endpoint: String,
    pub direction: String,
    /// Policies selecting the endpoint in this direction, in evaluation order.
    pub selecting: Vec<String>,
    /// Rules with action Log that matched on the way.
    pub logged: Vec<String>,
    /// The Pass rule that handed over to the Kubernetes tier, if any.
    pub passed: Option<String>,
    pub decision: Decision,
    pub verdict: Verdict,
}

/// The whole answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Explanation {
    pub egress: Option<Side>,
    pub ingress: Option<Side>,
    /// Source and destination are this one endpoint: the packet never
    /// leaves it (the pod's own loopback routing), so no policy applies.
    #[serde(rename = "samePod", skip_serializing_if = "Option::is_none")]
    pub same_pod: Option<String>,
    pub verdict: Verdict,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = &self.same_pod {
            writeln!(
                f,
                "source and destination are the same pod ({p}): the packet never leaves it, no policy applies"
            )?;
        }
        for (what, side) in [("source", &self.egress), ("destination", &self.ingress)] {
            if self.same_pod.is_some() {
                break;
            }
            match side {
                None => writeln!(
                    f,
                    "{what}: not a pod: no {} policy",
                    if what == "source" {
                        "egress"
                    } else {
                        "ingress"
                    }
                )?,
                Some(s) => {
                    writeln!(f, "{what} {} ({}):", s.endpoint, s.direction)?;
                    if s.selecting.is_empty() {
                        writeln!(f, "  selected by: none")?;
                    } else {
                        writeln!(f, "  selected by: {}", s.selecting.join(", "))?;
                    }
                    for l in &s.logged {
                        writeln!(f, "  logged by: {l}")?;
                    }
                    if let Some(p) = &s.passed {
                        writeln!(f, "  passed by: {p}")?;
                    }
                    writeln!(f, "  decided by: {}", s.decision)?;
                    writeln!(f, "  {}", s.verdict)?;
                }
            }
        }
        write!(f, "verdict: {}", self.verdict)
    }
}

fn endpoint_matches_peer(model: &Model, ip: IpAddr, p: &Peer) -> bool {
    match p {
        Peer::Pods(sel) => model.endpoints_at(ip).any(|e| model.selects(sel, e)),
        Peer::Block { net, except } => net.contains(ip) && !except.iter().any(|x| x.contains(ip)),
    }
}

fn port_matches(model: &Model, ip: IpAddr, l4: u8, port: Option<u16>, spec: &PortSpec) -> bool {
    let Some(port) = port else { return false };
    match spec {
        PortSpec::Range(a, b) => (*a..=*b).contains(&port),
        PortSpec::Named(n) => model
            .endpoints_at(ip)
            .any(|e| e.named_port(n, l4) == Some(port)),
    }
}

fn entity_matches(model: &Model, e: &Entity, ip: IpAddr, l4: u8, port: Option<u16>) -> bool {
    (e.peers.is_empty() || e.peers.iter().any(|p| endpoint_matches_peer(model, ip, p)))
        && (e.nets.is_empty() || e.nets.iter().any(|n| n.contains(ip)))
        && !e.not_nets.iter().any(|n| n.contains(ip))
        && e.not_pods
            .as_ref()
            .is_none_or(|s| !model.endpoints_at(ip).any(|ep| model.selects(s, ep)))
        && (e.ports.is_empty() || e.ports.iter().any(|s| port_matches(model, ip, l4, port, s)))
        && !e
            .not_ports
            .iter()
            .any(|s| port_matches(model, ip, l4, port, s))
}

fn icmp_matches(m: &crate::model::IcmpMatch, pkt: &Packet) -> bool {
    match pkt.icmp {
        Some((t, c)) => t == m.type_ && m.code.is_none_or(|mc| mc == c),
        None => false,
    }
}

/// Whether a rule's match conditions hold for a packet.
pub fn rule_matches(model: &Model, r: &Rule, pkt: &Packet) -> bool {
    let is_icmp = matches!(pkt.proto, proto::ICMP | proto::ICMPV6);
    r.proto.is_none_or(|p| p == pkt.proto)
        && r.not_proto.is_none_or(|p| p != pkt.proto)
        && r.icmp.as_ref().is_none_or(|m| icmp_matches(m, pkt))
        && r.not_icmp
            .as_ref()
            .is_none_or(|m| is_icmp && pkt.icmp.is_some() && !icmp_matches(m, pkt))
        && r.ip_version.is_none_or(|v| match pkt.src {
            IpAddr::V4(_) => v == 4,
            IpAddr::V6(_) => v == 6,
        })
        && entity_matches(model, &r.src, pkt.src, pkt.proto, pkt.sport)
        && entity_matches(model, &r.dst, pkt.dst, pkt.proto, pkt.dport)
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Allow => "Allow",
        Action::Deny => "Deny",
        Action::Pass => "Pass",
        Action::Log => "Log",
    }
}

/// Evaluates one direction for one endpoint.
pub fn evaluate(model: &Model, ep: &Endpoint, dir: Direction, pkt: &Packet) -> Side {
    let selecting: Vec<&crate::model::Policy> = model
        .policies
        .iter()
        .filter(|p| p.rules(dir).is_some() && model.selects(&p.scope, ep))
        .collect();
    let mut side = Side {
        endpoint: ep.id(),
        direction: dir.to_string(),
        selecting: selecting.iter().map(|p| p.id.clone()).collect(),
        logged: Vec::new(),
        passed: None,
        decision: Decision::NotIsolated,
        verdict: Verdict::Allow,
    };
    let global: Vec<_> = selecting
        .iter()
        .filter(|p| p.tier == Tier::Global)
        .collect();
    'global: for p in &global {
        for r in p.rules(dir).unwrap_or_default() {
            if !rule_matches(model, r, pkt) {
                continue;
            }
            let here = format!("{} {}", p.id, r.origin);
            match r.action {
                Action::Log => side.logged.push(here),
                Action::Pass => {
                    side.passed = Some(here);
                    break 'global;
                }
                Action::Allow | Action::Deny => {
                    side.decision = Decision::Rule {
                        policy: p.id.clone(),
                        rule: r.origin.clone(),
                        action: action_name(r.action).into(),
                    };
                    side.verdict = if r.action == Action::Allow {
                        Verdict::Allow
                    } else {
                        Verdict::Deny
                    };
                    return side;
                }
            }
        }
    }
    if !global.is_empty() && side.passed.is_none() {
        side.decision = Decision::EndOfGlobalTier;
        side.verdict = Verdict::Deny;
        return side;
    }
    let k8s: Vec<_> = selecting
        .iter()
        .filter(|p| p.tier == Tier::Kubernetes)
        .collect();
    if k8s.is_empty() {
        return side;
    }
    for p in k8s {
        for r in p.rules(dir).unwrap_or_default() {
            if rule_matches(model, r, pkt) {
                side.decision = Decision::Rule {
                    policy: p.id.clone(),
                    rule: r.origin.clone(),
                    action: "Allow".into(),
                };
                return side;
            }
        }
    }
    side.decision = Decision::NoRuleAllows;
    side.verdict = Verdict::Deny;
    side
}

/// Explains what happens to a packet.
pub fn explain(model: &Model, pkt: &Packet) -> Explanation {
    let from = model.endpoints_at(pkt.src).next();
    let to = model.endpoints_at(pkt.dst).next();
    if let (Some(a), Some(b)) = (from, to)
        && (&a.namespace, &a.name, &a.node) == (&b.namespace, &b.name, &b.node)
    {
        return Explanation {
            egress: None,
            ingress: None,
            same_pod: Some(a.id()),
            verdict: Verdict::Allow,
        };
    }
    let egress = from.map(|e| evaluate(model, e, Direction::Egress, pkt));
    let ingress = to.map(|e| evaluate(model, e, Direction::Ingress, pkt));
    let verdict = if [&egress, &ingress]
        .iter()
        .any(|s| s.as_ref().is_some_and(|s| s.verdict == Verdict::Deny))
    {
        Verdict::Deny
    } else {
        Verdict::Allow
    };
    Explanation {
        egress,
        ingress,
        same_pod: None,
        verdict,
    }
}
