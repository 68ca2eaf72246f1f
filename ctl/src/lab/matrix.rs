//! The connectivity matrix `lab up` waits for: every pod pings every other
//! pod, per address family, in rounds (one echo request per pair, replies
//! awaited up to 2 s; `echo`), until one round in which every pair answers
//! — the fabric has converged — or the time given runs out. Small labs get
//! the whole matrix as a table; large ones a count and the failing pairs.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::echo;
use super::state::State;

/// Up to this many pods the matrix is printed as a table.
const TABLE_PODS: usize = 16;
/// How long a round waits for replies after its requests.
const ROUND_WAIT: Duration = Duration::from_secs(2);

/// How long `lab up` waits for the matrix: 40 s, and one more second per
/// node (BGP sessions and routes of a 100-node lab on 2 shared cores).
pub(super) fn converge_timeout(nodes: usize) -> Duration {
    Duration::from_secs(40 + nodes as u64)
}

/// What the matrix found.
#[derive(Debug, Clone, Copy)]
pub(super) struct Outcome {
    /// Every pair answered in the last round, on every family.
    pub(super) ok: bool,
    pub(super) rounds: u32,
    /// From the first round's start to the end of the last.
    pub(super) elapsed: Duration,
    /// Pairs checked per round (all families).
    pub(super) pairs: usize,
}

/// A pod of one family: its name, its network namespace, its address.
type Pod = (String, String, IpAddr);

/// Pings every pod from every other pod, on every family the lab has,
/// until a round in which all answer (or `timeout`), then prints the
/// result per family.
pub(super) fn matrix(st: &State, timeout: Duration) -> anyhow::Result<Outcome> {
    let family = |ips: &BTreeMap<String, String>| -> Vec<Pod> {
        st.plan
            .pods
            .iter()
            .filter_map(|p| {
                let ip = ips.get(&p.name)?.parse().ok()?;
                Some((p.name.clone(), p.ns.clone(), ip))
            })
            .collect()
    };
    let mut families = vec![("IPv4", family(&st.pod_ips))];
    if st.plan.v6.is_some() {
        families.push(("IPv6", family(&st.pod_ips6)));
    }
    let pairs: usize = families
        .iter()
        .map(|(_, p)| p.len() * p.len().saturating_sub(1))
        .sum();
    if pairs == 0 {
        println!("fewer than two pods: no connectivity matrix");
        return Ok(Outcome {
            ok: true,
            rounds: 0,
            elapsed: Duration::ZERO,
            pairs,
        });
    }
    let start = Instant::now();
    let mut rounds = 0u32;
    let mut results: Vec<Vec<Vec<bool>>>;
    loop {
        rounds += 1;
        results = families
            .iter()
            .map(|(_, pods)| round(pods, rounds))
            .collect::<anyhow::Result<_>>()?;
        let all = results.iter().flatten().flatten().all(|ok| *ok);
        if all || start.elapsed() > timeout {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let elapsed = start.elapsed();
    let mut failed_total = 0;
    for ((fam, pods), result) in families.iter().zip(&results) {
        if pods.len() < 2 {
            continue;
        }
        failed_total += print_family(fam, pods, result);
    }
    let ok = failed_total == 0;
    if ok {
        println!(
            "converged: all {pairs} pod pairs answered in one round, {:.1} s after the first (round {rounds})",
            elapsed.as_secs_f64()
        );
    } else {
        println!(
            "not converged: {failed_total} of {pairs} pod pairs did not answer in the last of {rounds} rounds ({:.1} s)",
            elapsed.as_secs_f64()
        );
    }
    Ok(Outcome {
        ok,
        rounds,
        elapsed,
        pairs,
    })
}

/// One round of one family: a thread per source pod, in the pod's
/// namespace, pinging every other pod. `result[s][d]`: did pod d answer
/// pod s (true on the diagonal, which is not checked).
fn round(pods: &[Pod], n: u32) -> anyhow::Result<Vec<Vec<bool>>> {
    let dsts: Vec<IpAddr> = pods.iter().map(|p| p.2).collect();
    let base = std::process::id() as u16;
    std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, (_, ns, _))| {
                let others: Vec<IpAddr> = dsts
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, ip)| *ip)
                    .collect();
                let id = base.wrapping_add(i as u16);
                s.spawn(move || echo::round_from(ns, &others, id, n, ROUND_WAIT))
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                let answered = h
                    .join()
                    .map_err(|_| anyhow::anyhow!("the ping thread of {} panicked", pods[i].0))??;
                // Back to one column per pod, the diagonal true.
                let mut row = answered;
                row.insert(i, true);
                Ok(row)
            })
            .collect()
    })
}

/// Prints one family's matrix (a table, or for many pods a count and the
/// failing pairs); returns how many pairs failed.
fn print_family(fam: &str, pods: &[Pod], result: &[Vec<bool>]) -> usize {
    let failed: Vec<(usize, Vec<usize>)> = result
        .iter()
        .enumerate()
        .map(|(s, row)| (s, (0..row.len()).filter(|d| !row[*d]).collect::<Vec<_>>()))
        .filter(|(_, f)| !f.is_empty())
        .collect();
    let n_failed: usize = failed.iter().map(|(_, f)| f.len()).sum();
    let n_pairs = pods.len() * (pods.len() - 1);
    println!("pod-to-pod connectivity, {fam} (ping):");
    if pods.len() <= TABLE_PODS {
        let mut rows = vec![
            std::iter::once("FROM \\ TO".to_string())
                .chain(pods.iter().map(|p| p.0.clone()))
                .collect::<Vec<_>>(),
        ];
        for (s, (name, _, ip)) in pods.iter().enumerate() {
            let mut row = vec![format!("{name} ({ip})")];
            for (d, ok) in result[s].iter().enumerate() {
                row.push(if s == d {
                    "-".into()
                } else if *ok {
                    "ok".into()
                } else {
                    "FAIL".into()
                });
            }
            rows.push(row);
        }
        print!("{}", crate::output::align(&rows));
    } else {
        println!(
            "every pod pinged every other pod: {} of {n_pairs} pairs answered",
            n_pairs - n_failed
        );
        const SHOWN: usize = 20;
        for (s, f) in failed.iter().take(SHOWN) {
            let names: Vec<&str> = f.iter().map(|d| pods[*d].0.as_str()).collect();
            println!(
                "  FAIL from {} ({}) to {} of {}: {}",
                pods[*s].0,
                pods[*s].2,
                f.len(),
                pods.len() - 1,
                names.join(", ")
            );
        }
        if failed.len() > SHOWN {
            println!("  ... and {} more pods with failures", failed.len() - SHOWN);
        }
    }
    if n_failed > 0 {
        println!("{n_failed} of {n_pairs} pairs do not reach each other on {fam}");
    }
    n_failed
}
