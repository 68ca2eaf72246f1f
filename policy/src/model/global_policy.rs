//! Compiling a Twill `GlobalNetworkPolicy` into a [`Policy`]: Calico-style
//! selectors, nets, ports and actions map one-to-one onto the model; a
//! direction is governed when the policy's effective types name it.

use ipnetwork::IpNetwork;
use twill_api::resources::gnp::{
    Action as GnpAction, EntityRule, GlobalNetworkPolicy, PolicyType, PortMatch, protocol_number,
};
use twill_api::selector::Selector;

use super::{
    Action, CompileError, Direction, Entity, IcmpMatch, NsMatch, Peer, PodSel, Policy, PortSpec,
    Rule, Tier, err,
};

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
