//! `twillctl node status [NODE]`: what a node reports about itself in its
//! NodeStatus object — BGP sessions with state, uptime and prefixes, and the
//! routes felix programmed. It reads the datastore, so it works from any
//! machine that reaches the store (a kubeconfig, or the embedded file).
//!
//! It tells the truth about age: a report older than three of the node's
//! report intervals is shown STALE and the node not ready (its agent is
//! probably gone); no reports at all is an error, as is a node that does
//! not report. An Established session shows no "last error" (the last
//! reason it went down is shown as such with `-o wide`).

use std::process::ExitCode;

use anyhow::Context;
use twill_api::resources::{NodeStatus, NodeStatusReport};

use crate::cli::{NodeArgs, NodeCommand, OutputFormat, StoreArgs};
use crate::output::align;

/// The report interval assumed when a report does not say (twill-node's default).
const DEFAULT_INTERVAL_SECS: i64 = 10;

/// Whether a report is older than three of its node's report intervals.
pub fn is_stale(s: &NodeStatus, now: jiff::Timestamp) -> bool {
    let Some(r) = &s.status else { return true };
    let interval = s
        .spec
        .report_interval
        .map(i64::from)
        .unwrap_or(DEFAULT_INTERVAL_SECS)
        .max(1);
    match r.updated.parse::<jiff::Timestamp>() {
        Ok(t) => now.as_second() - t.as_second() > 3 * interval,
        Err(_) => true,
    }
}

pub async fn run(store_args: &StoreArgs, args: NodeArgs) -> anyhow::Result<ExitCode> {
    let NodeCommand::Status { node, output } = args.command;
    let store = store_args.open_existing().await?;
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
    if statuses.is_empty() {
        anyhow::bail!(
            "no node reports its status: is twill-node running, and writing to this datastore?"
        );
    }
    statuses.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let now = jiff::Timestamp::now();
    match output {
        OutputFormat::Json => {
            let v: Vec<serde_json::Value> = statuses
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "node": s.metadata.name,
                        "stale": is_stale(s, now),
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
        OutputFormat::Yaml => {
            let docs: Vec<String> = statuses
                .iter()
                .map(|s| {
                    twill_api::manifest::to_yaml(&serde_json::json!({
                        "node": s.metadata.name,
                        "stale": is_stale(s, now),
                        "status": s.status,
                    }))
                    .map_err(anyhow::Error::msg)
                })
                .collect::<Result<_, _>>()?;
            print!("{}", docs.join("---\n"));
        }
        OutputFormat::Name => {
            for s in &statuses {
                println!("nodestatus/{}", s.metadata.name.as_deref().unwrap_or(""));
            }
        }
        OutputFormat::Table | OutputFormat::Wide => {
            for (i, s) in statuses.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                let name = s.metadata.name.clone().unwrap_or_default();
                match &s.status {
                    Some(r) => print!(
                        "{}",
                        render_report(
                            &name,
                            r,
                            now,
                            output == OutputFormat::Wide,
                            is_stale(s, now)
                        )
                    ),
                    None => println!("node {name}: no report yet"),
                }
            }
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
    render_report(name, r, now, wide, false)
}

/// [`render`]; with `stale`, the node is shown not ready whatever the report says.
pub fn render_report(
    name: &str,
    r: &NodeStatusReport,
    now: jiff::Timestamp,
    wide: bool,
    stale: bool,
) -> String {
    let mut out = format!(
        "node {name}: address {}, AS {}, {}, {} endpoints, report {} old{}\n",
        if r.address.is_empty() {
            "-"
        } else {
            &r.address
        },
        r.as_number,
        if stale {
            "NOT ready (STALE: no recent report)"
        } else if r.ready {
            "ready"
        } else {
            "NOT ready"
        },
        r.endpoints,
        age(&r.updated, now),
        if stale {
            "; its twill-node is not reporting (stopped, or cannot reach the datastore)"
        } else {
            ""
        },
    );
    for (cond, reason) in &r.not_ready {
        out += &format!("not ready: {cond}: {reason}\n");
    }
    if !r.blocks.is_empty() {
        out += &format!("blocks: {}\n", r.blocks.join(", "));
    }
    if !r.service_prefixes.is_empty() {
        out += &format!("service prefixes: {}\n", r.service_prefixes.join(", "));
    }
    out += "\n";
    if r.bgp_peers.is_empty() {
        out += "BGP: no sessions configured\n";
    } else {
        let mut header = vec![
            "PEER",
            "AS",
            "SOURCE",
            "STATE",
            "SINCE",
            "RECEIVED",
            "ACCEPTED",
            "ADVERTISED",
            "LAST ERROR",
        ];
        if wide {
            header.push("LAST DOWN REASON");
        }
        let mut rows = vec![header.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
        for p in &r.bgp_peers {
            let established = p.state == "Established";
            // An error from before the session came up is history, not
            // the session's state: shown as the last down reason.
            // (Agents that predate lastDownReason still send the old error
            // with an Established session.)
            let last_error = match (&p.last_error, established) {
                (Some(e), false) => e.clone(),
                _ => "-".to_string(),
            };
            let down_reason = match (&p.last_down_reason, &p.last_error) {
                (Some(r), _) => match &p.last_down_at {
                    Some(at) => format!("{r} ({} ago)", age(at, now)),
                    None => r.clone(),
                },
                (None, Some(e)) => e.clone(),
                (None, None) => "-".to_string(),
            };
            let mut row = vec![
                p.address.clone(),
                p.as_number.to_string(),
                p.source.clone(),
                p.state.clone(),
                age(&p.since, now),
                p.prefixes_received.to_string(),
                p.prefixes_accepted.to_string(),
                p.prefixes_advertised.to_string(),
                last_error,
            ];
            if wide {
                row.push(down_reason);
            }
            rows.push(row);
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
                ..Default::default()
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

    #[test]
    fn stale_reports_and_established_sessions_tell_the_truth() {
        let now: jiff::Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let mut s = NodeStatus::new("n1", Default::default());
        s.spec.report_interval = Some(5);
        s.status = Some(NodeStatusReport {
            updated: "2026-01-01T00:09:46Z".into(),
            ready: true,
            bgp_peers: vec![PeerStatus {
                address: "172.30.0.1".into(),
                state: "Established".into(),
                since: "2026-01-01T00:09:00Z".into(),
                last_error: Some("connection closed in OpenSent".into()),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert!(!is_stale(&s, now), "14 s old with a 5 s interval");
        let later: jiff::Timestamp = "2026-01-01T00:10:02Z".parse().unwrap();
        assert!(is_stale(&s, later), "16 s old with a 5 s interval");
        let r = s.status.clone().unwrap();
        let t = render_report("n1", &r, later, false, true);
        assert!(t.contains("NOT ready (STALE"), "{t}");
        assert!(!t.contains(", ready,"), "{t}");
        let t = render("n1", &r, now, false);
        assert!(t.contains(", ready,"), "{t}");
        assert!(!t.contains("connection closed"), "{t}");
        assert!(t.contains("1m0s"), "{t}");
        let w = render("n1", &r, now, true);
        assert!(
            w.contains("LAST DOWN REASON") && w.contains("connection closed in OpenSent"),
            "{w}"
        );
        // From an agent that reports the down reason with its time.
        let mut r = r;
        r.bgp_peers[0].last_error = None;
        r.bgp_peers[0].last_down_reason = Some("hold timer expired".into());
        r.bgp_peers[0].last_down_at = Some("2026-01-01T00:08:00Z".into());
        let w = render("n1", &r, now, true);
        assert!(w.contains("hold timer expired (2m0s ago)"), "{w}");
    }
}
