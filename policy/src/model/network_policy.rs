//! Compiling a Kubernetes `NetworkPolicy` into a [`Policy`]: the pod
//! selector is the scope, `policyTypes` (or their defaults) the governed
//! directions, and every `from`/`to` rule one [`Rule`] per port entry with
//! the same peers. Ports always name the destination.

use ipnetwork::IpNetwork;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use twill_api::selector::Selector;

use super::{
    Action, CompileError, Direction, Entity, NsMatch, Peer, PodSel, Policy, PortSpec, Rule, Tier,
    err, proto,
};

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
