//! `twillctl policy`: `explain SRC DST [--port PORT/PROTO]` says which
//! policies select each side, which rule decides and the verdict; `show
//! NODE` prints the nftables table that node renders. Both build the policy
//! model from the datastore exactly as twill-node does
//! ([`twill_policy::cluster::build`]), so the answer is the one the kernel
//! enforces (twill-node's own endpoint records are replaced here by the IPAM
//! allocations they were made from).

use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use twill_api::Store;
use twill_api::resources::{GlobalNetworkPolicy, IPAMBlock};
use twill_policy::cluster::{Objects, build};
use twill_policy::model::{Model, proto};
use twill_policy::{Packet, explain, render};

use crate::UsageError;
use crate::cli::{PolicyArgs, PolicyCommand, StoreArgs};

/// What a `--port` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortProto {
    pub proto: u8,
    pub port: Option<u16>,
}

/// Parses `80`, `80/TCP`, `53/udp`, `9000/SCTP`, `icmp`.
pub fn parse_port(s: &str) -> Result<PortProto, String> {
    let lower = s.to_ascii_lowercase();
    if lower == "icmp" || lower == "ping" {
        return Ok(PortProto {
            proto: proto::ICMP,
            port: None,
        });
    }
    let (port, p) = lower.split_once('/').unwrap_or((&lower, "tcp"));
    let proto = match p {
        "tcp" => proto::TCP,
        "udp" => proto::UDP,
        "sctp" => proto::SCTP,
        other => return Err(format!("unknown protocol {other:?}: use TCP, UDP or SCTP")),
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{port:?} is not a port (1..=65535)"))?;
    Ok(PortProto {
        proto,
        port: Some(port),
    })
}

async fn objects(store: &Store) -> anyhow::Result<Objects> {
    Ok(Objects {
        pods: store.list::<Pod>().await?.items,
        namespaces: store.list::<Namespace>().await?.items,
        network_policies: store.list::<NetworkPolicy>().await?.items,
        global_policies: store.list::<GlobalNetworkPolicy>().await?.items,
        blocks: store.list::<IPAMBlock>().await?.items,
    })
}

/// Nodes the datastore knows of: Node objects and nodes that report.
async fn known_nodes(store: &Store) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let mut known: std::collections::BTreeSet<String> = store
        .list::<k8s_openapi::api::core::v1::Node>()
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    known.extend(
        store
            .list::<twill_api::resources::NodeStatus>()
            .await?
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name),
    );
    Ok(known)
}

/// Resolves `namespace/pod` or an IP address to an address.
fn resolve(model: &Model, what: &str) -> anyhow::Result<IpAddr> {
    if let Ok(ip) = what.parse::<IpAddr>() {
        return Ok(ip);
    }
    let Some((ns, name)) = what.split_once('/') else {
        return Err(UsageError(format!("{what:?}: give NAMESPACE/POD or an IP address")).into());
    };
    let ep = model
        .endpoints
        .iter()
        .find(|e| e.namespace == ns && e.name == name)
        .with_context(|| {
            format!("pod {ns}/{name} has no address Twill knows (not found, not running, or on the host network)")
        })?;
    ep.ips
        .iter()
        .find(|i| i.is_ipv4())
        .or(ep.ips.first())
        .copied()
        .with_context(|| format!("pod {ns}/{name} has no address"))
}

pub async fn run(store_args: &StoreArgs, args: PolicyArgs) -> anyhow::Result<ExitCode> {
    let store = store_args.open_existing().await?;
    let objs = objects(&store).await?;
    match args.command {
        PolicyCommand::Explain {
            src,
            dst,
            port,
            output_json,
        } => {
            let (model, errors) = build(&objs, "", None, &twill_api::names::host_veth);
            for e in &errors {
                eprintln!("warning: left out (does not compile): {e}");
            }
            let s = resolve(&model, &src)?;
            let d = resolve(&model, &dst)?;
            if s.is_ipv4() != d.is_ipv4() {
                bail!("{src} ({s}) and {dst} ({d}) are of different address families");
            }
            let ports = if port.is_empty() {
                vec![PortProto {
                    proto: proto::ICMP,
                    port: None,
                }]
            } else {
                port
            };
            let mut json_out = Vec::new();
            for (i, pp) in ports.iter().enumerate() {
                let pkt = match pp.port {
                    Some(p) => Packet::l4(s, d, pp.proto, p),
                    None => Packet {
                        src: s,
                        dst: d,
                        proto: if s.is_ipv4() {
                            proto::ICMP
                        } else {
                            proto::ICMPV6
                        },
                        sport: None,
                        dport: None,
                        icmp: Some((if s.is_ipv4() { 8 } else { 128 }, 0)),
                    },
                };
                let e = explain(&model, &pkt);
                let what = match pp.port {
                    Some(p) => format!(
                        "{p}/{}",
                        match pp.proto {
                            proto::UDP => "UDP",
                            proto::SCTP => "SCTP",
                            _ => "TCP",
                        }
                    ),
                    None => "ICMP echo".to_string(),
                };
                if output_json {
                    let mut v = serde_json::to_value(&e)?;
                    v["src"] = serde_json::json!(s.to_string());
                    v["dst"] = serde_json::json!(d.to_string());
                    v["port"] = serde_json::json!(what);
                    json_out.push(v);
                } else {
                    if i > 0 {
                        println!();
                    }
                    println!("{src} ({s}) -> {dst} ({d}) {what}");
                    println!("{e}");
                }
            }
            if output_json {
                println!("{}", serde_json::to_string_pretty(&json_out)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Show { node } => {
            let (model, errors) = build(&objs, &node, None, &twill_api::names::host_veth);
            for e in &errors {
                eprintln!("warning: left out (does not compile): {e}");
            }
            if !model.endpoints.iter().any(|e| e.node == node) {
                let known = known_nodes(&store).await?;
                if !known.contains(&node) {
                    bail!(
                        "node {node:?} is not known: no Node, NodeStatus or pod names it; known nodes: {}",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.into_iter().collect::<Vec<_>>().join(", ")
                        }
                    );
                }
                eprintln!("note: no pod with an address on node {node:?}");
            }
            print!("{}", render(&model, &node).script());
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_as_people_write_them() {
        assert_eq!(
            parse_port("80").unwrap(),
            PortProto {
                proto: proto::TCP,
                port: Some(80)
            }
        );
        assert_eq!(parse_port("53/UDP").unwrap().proto, proto::UDP);
        assert_eq!(parse_port("icmp").unwrap().port, None);
        assert!(parse_port("0/tcp").is_err());
        assert!(parse_port("80/gre").is_err());
    }
}
