//! The connectivity matrix `lab up` prints: every pod pings every pod, per
//! address family, until all answer or 40 s pass.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::state::State;

/// Pings every pod from every pod, on every family the lab has, until all
/// answer (or 40 s), then prints one matrix per family. True when every
/// pair reaches on every family.
pub(super) fn matrix(st: &State) -> anyhow::Result<bool> {
    let family = |ips: &BTreeMap<String, String>| -> Vec<(String, String, String)> {
        st.plan
            .pods
            .iter()
            .filter_map(|p| {
                ips.get(&p.name)
                    .map(|ip| (p.name.clone(), p.ns.clone(), ip.clone()))
            })
            .collect()
    };
    let mut families = vec![("IPv4", family(&st.pod_ips))];
    if st.plan.v6.is_some() {
        families.push(("IPv6", family(&st.pod_ips6)));
    }
    if families.iter().all(|(_, pods)| pods.is_empty()) {
        println!("no pods: no connectivity matrix");
        return Ok(true);
    }
    let start = Instant::now();
    let mut results: Vec<BTreeMap<(String, String), bool>>;
    loop {
        results = families.iter().map(|(_, pods)| probe_all(pods)).collect();
        let all = results.iter().all(|r| r.values().all(|ok| *ok));
        if all || start.elapsed() > Duration::from_secs(40) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut failed_total = 0;
    for ((fam, pods), result) in families.iter().zip(&results) {
        if pods.is_empty() {
            continue;
        }
        let mut rows = vec![
            std::iter::once("FROM \\ TO".to_string())
                .chain(pods.iter().map(|p| p.0.clone()))
                .collect::<Vec<_>>(),
        ];
        for (s, _, sip) in pods {
            let mut row = vec![format!("{s} ({sip})")];
            for (d, _, _) in pods {
                let ok = result
                    .get(&(s.clone(), d.clone()))
                    .copied()
                    .unwrap_or(false);
                row.push(if ok { "ok".into() } else { "FAIL".into() });
            }
            rows.push(row);
        }
        println!("pod-to-pod connectivity, {fam} (ping):");
        print!("{}", crate::output::align(&rows));
        let failed = result.values().filter(|ok| !**ok).count();
        if failed > 0 {
            println!(
                "{failed} of {} pairs do not reach each other on {fam}",
                result.len()
            );
        }
        failed_total += failed;
    }
    Ok(failed_total == 0)
}

fn probe_all(pods: &[(String, String, String)]) -> BTreeMap<(String, String), bool> {
    std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .flat_map(|(src, ns, _)| {
                pods.iter().map(move |(dst, _, ip)| {
                    s.spawn(move || {
                        let ok = Command::new("ip")
                            .args(["netns", "exec", ns, "ping", "-c1", "-W1", "-q", ip])
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status()
                            .map(|s| s.success())
                            .unwrap_or(false);
                        ((src.clone(), dst.clone()), ok)
                    })
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    })
}
