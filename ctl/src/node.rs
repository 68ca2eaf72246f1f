//! `twillctl node status [NODE]`: what a node reports about itself in its
//! NodeStatus object — BGP sessions with state, uptime and prefixes, and the
//! routes felix programmed. It reads the datastore, so it works from any
//! machine that reaches the store (a kubeconfig, or the embedded file).

use std::process::ExitCode;

use anyhow::Context;
use twill_api::resources::{NodeStatus, NodeStatusReport};

use crate::UsageError;
use crate::cli::{NodeArgs, NodeCommand, OutputFormat, StoreArgs};
use crate::output::align;

pub async fn run(store_args: &StoreArgs, args: NodeArgs) -> anyhow::Result<ExitCode> {
    let NodeCommand::Status { node, output } = args.command;
    let store = store_args.open().await?;
    let mut statuses: Vec<NodeStatus> = match &node {
        Some(n) => match store.get::<NodeStatus>(None, n).await? {
            Some(s) => vec![s],
            None => {
                let known: Vec<String> = store
                    .list::<NodeStatus>()
                    .await?
                    .items
                    .into_iter()
                    .filter_map(|s| s.metadata.name)
                    .collect();
                anyhow::bail!(
                    "node {n:?} has no NodeStatus: is twill-node running there? nodes that report: {}",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                );
            }
        },
        None => store.list::<NodeStatus>().await?.items,
    };
    statuses.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    match output {
        OutputFormat::Json => {
            let v: Vec<serde_json::Value> = statuses
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "node": s.metadata.name,
                        "status": s.status,
                    })
                })
                .collect();
            let v = if node.is_some() && v.len() == 1 {
                v.into_iter().next().unwrap_or_default()
            } else {
                serde_json::Value::Array(v)
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&v).context("printing JSON")?
            );
        }
        OutputFormat::Table | OutputFormat::Wide => {
            let now = jiff::Timestamp::now();
            for (i, s) in statuses.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                let name = s.metadata.name.clone().unwrap_or_default();
                match &s.status {
                    Some(r) => print!("{}", render(&name, r, now, output == OutputFormat::Wide)),
                    None => println!("node {name}: no report yet"),
                }
            }
        }
        other => {
            return Err(UsageError(format!(
                "node status prints a table (-o table|wide) or JSON (-o json), not {other:?}"
            ))
            .into());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Human age of an RFC 3339 time relative to `now` ("3m12s"); "-" if unknown.
pub fn age(since: &str, now: jiff::Timestamp) -> String {
    let Ok(t) = since.parse::<jiff::Timestamp>() else {
        return "-".into();
    };
    let secs = now.as_second().saturating_sub(t.as_second()).max(0);
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// One node's report as text.
pub fn render(name: &str, r: &NodeStatusReport, now: jiff::Timestamp, wide: bool) -> String {
    let mut out = format!(
        "node {name}: address {}, AS {}, {}, {} endpoints, report {} old\n",
        if r.address.is_empty() {
            "-"
        } else {
            &r.address
        },
        r.as_number,
        if r.ready { "ready" } else { "NOT ready" },
        r.endpoints,
        age(&r.updated, now),
    );
    for (cond, reason) in &r.not_ready {
        out += &format!("not ready: {cond}: {reason}\n");
    }
    if !r.blocks.is_empty() {
        out += &format!("blocks: {}\n", r.blocks.join(", "));
    }
    out += "\n";
    if r.bgp_peers.is_empty() {
        out += "BGP: no sessions configured\n";
    } else {
        let mut rows = vec![
            [
                "PEER",
                "AS",
                "SOURCE",
                "STATE",
                "SINCE",
                "RECEIVED",
                "ACCEPTED",
                "ADVERTISED",
                "LAST ERROR",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
        ];
        for p in &r.bgp_peers {
            rows.push(vec![
                p.address.clone(),
                p.as_number.to_string(),
                p.source.clone(),
                p.state.clone(),
                age(&p.since, now),
                p.prefixes_received.to_string(),
                p.prefixes_accepted.to_string(),
                p.prefixes_advertised.to_string(),
                p.last_error.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        out += &align(&rows);
    }
    out += "\n";
    let mut kinds: std::collections::BTreeMap<&str, u64> = Default::default();
    if r.route_counts.is_empty() {
        for rt in &r.routes {
            *kinds.entry(rt.kind.as_str()).or_default() += 1;
        }
    } else {
        kinds = r
            .route_counts
            .iter()
            .map(|(k, n)| (k.as_str(), *n))
            .collect();
    }
    let total: u64 = kinds.values().sum();
    let summary: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    out += &format!(
        "routes: {}\n",
        if summary.is_empty() {
            "none".into()
        } else {
            summary.join(", ")
        }
    );
    if wide || r.routes.len() <= 20 {
        let mut rows = vec![vec!["DESTINATION".to_string(), "KIND".into(), "VIA".into()]];
        for rt in &r.routes {
            rows.push(vec![
                rt.destination.clone(),
                rt.kind.clone(),
                rt.via.join(","),
            ]);
        }
        if rows.len() > 1 {
            out += &align(&rows);
        }
        if total > r.routes.len() as u64 {
            out += &format!(
                "({} of {total} listed: the report carries the node's own routes and the first learned ones)\n",
                r.routes.len()
            );
        }
    } else {
        out += "(-o wide lists them)\n";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_api::resources::{PeerStatus, RouteStatus};

    #[test]
    fn renders_peers_and_routes_for_people() {
        let now: jiff::Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let r = NodeStatusReport {
            updated: "2026-01-01T00:09:55Z".into(),
            address: "172.30.0.11".into(),
            as_number: 64512,
            ready: true,
            endpoints: 2,
            blocks: vec!["10.244.0.0/26".into()],
            bgp_peers: vec![PeerStatus {
                address: "172.30.0.1".into(),
                as_number: 65000,
                source: "node".into(),
                state: "Established".into(),
                since: "2026-01-01T00:07:00Z".into(),
                prefixes_received: 0,
                prefixes_accepted: 0,
                prefixes_advertised: 1,
                last_error: None,
            }],
            routes: vec![RouteStatus {
                destination: "10.244.0.0/26".into(),
                kind: "blackhole".into(),
                via: vec![],
            }],
            ..Default::default()
        };
        let t = render("n1", &r, now, false);
        assert!(
            t.contains("node n1: address 172.30.0.11, AS 64512, ready, 2 endpoints, report 5s old"),
            "{t}"
        );
        assert!(t.contains("Established"), "{t}");
        assert!(t.contains("3m0s"), "{t}");
        assert!(t.contains("routes: 1 blackhole"), "{t}");
    }

    #[test]
    fn a_capped_report_shows_the_full_counts_and_says_what_is_listed() {
        let now: jiff::Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let r = NodeStatusReport {
            updated: "2026-01-01T00:09:55Z".into(),
            routes: vec![RouteStatus {
                destination: "10.244.0.0/26".into(),
                kind: "blackhole".into(),
                via: vec![],
            }],
            route_counts: [("blackhole".to_string(), 1), ("bgp".to_string(), 20_000)]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let t = render("n1", &r, now, true);
        assert!(t.contains("routes: 20000 bgp, 1 blackhole"), "{t}");
        assert!(t.contains("(1 of 20001 listed"), "{t}");
    }

    #[test]
    fn age_is_readable() {
        let now: jiff::Timestamp = "2026-01-02T01:00:00Z".parse().unwrap();
        assert_eq!(age("2026-01-01T00:00:00Z", now), "1d1h");
        assert_eq!(age("garbage", now), "-");
    }
}
