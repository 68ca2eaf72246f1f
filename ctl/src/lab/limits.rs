//! Host limits a large lab runs into, and raising them before it does.
//! Both are machine-wide, shared by every network namespace and every lab:
//!
//! - `fs.inotify.max_user_instances` (128 by default, per user — root runs
//!   every lab): each twill-node's embedded store handle holds one inotify
//!   instance; without one it falls back to checking the store every 25 ms.
//! - the neighbour tables' `gc_thresh2`/`gc_thresh3` (512/1024 by default):
//!   ARP and NDP entries of all namespaces count against one table. On the
//!   rack every node talks to every other node's address (next hops), so a
//!   lab needs about nodes² entries; past gc_thresh3 the kernel refuses new
//!   ones ("neighbour table overflow") and pods stop reaching each other.
//!
//! `lab up` raises a limit only when what is in use plus what the lab needs
//! does not fit, and never lowers one — not even at `lab down`: lowering a
//! machine-wide limit under other labs or agents already relying on it
//! breaks them, while a higher limit costs nothing until used. The values
//! before and after are recorded in lab.json and printed. The arithmetic is
//! pure (`plan_limits`); reading and writing /proc is below it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::plan::Plan;

/// inotify instances one twill-node may hold (one per store handle; two
/// leave room for a second handle).
const INOTIFY_PER_AGENT: u64 = 2;
/// Instances left free for everything else root starts meanwhile.
const INOTIFY_SPARE: u64 = 64;
/// Neighbour entries left free for the rest of the machine.
const NEIGH_SPARE: u64 = 256;

/// What the host has now: a limit's value and how much of it is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Current {
    pub(super) inotify_limit: u64,
    pub(super) inotify_used: u64,
    /// gc_thresh2 and gc_thresh3, and entries in the table (IPv4: ARP).
    pub(super) neigh4: (u64, u64, u64),
    /// The same for IPv6 (NDP).
    pub(super) neigh6: (u64, u64, u64),
}

/// One limit `lab up` changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Raised {
    pub(super) sysctl: String,
    pub(super) before: u64,
    pub(super) after: u64,
}

/// Neighbour entries a lab makes: on the rack every node resolves every
/// other node and the ToR, the ToR every node; each pod and its host side
/// resolve each other.
pub(super) fn neighbours_needed(nodes: u64, pods: u64) -> u64 {
    nodes * nodes + nodes + 2 * pods
}

/// The limits to raise for `plan` given `now` (none when everything fits).
pub(super) fn plan_limits(plan: &Plan, now: &Current) -> Vec<Raised> {
    let nodes = plan.nodes.len() as u64;
    let pods = plan.pods.len() as u64;
    let mut out = Vec::new();
    let want = now.inotify_used + nodes * INOTIFY_PER_AGENT + INOTIFY_SPARE;
    if now.inotify_limit < want {
        out.push(Raised {
            sysctl: "fs.inotify.max_user_instances".into(),
            before: now.inotify_limit,
            after: want,
        });
    }
    let need = neighbours_needed(nodes, pods);
    let mut families = vec![("ipv4", now.neigh4)];
    if plan.v6.is_some() {
        families.push(("ipv6", now.neigh6));
    }
    for (fam, (t2, t3, used)) in families {
        // Below gc_thresh2 the kernel never forces entries out; below
        // gc_thresh3 it never refuses one.
        let soft = used + need + NEIGH_SPARE;
        if t2 < soft {
            out.push(Raised {
                sysctl: format!("net.{fam}.neigh.default.gc_thresh2"),
                before: t2,
                after: soft,
            });
        }
        if t3 < 2 * soft {
            out.push(Raised {
                sysctl: format!("net.{fam}.neigh.default.gc_thresh3"),
                before: t3,
                after: 2 * soft,
            });
        }
    }
    out
}

fn read_u64(path: &str) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {path}: {e}"))?;
    s.trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("{path}: {:?} is not a number: {e}", s.trim()))
}

fn sysctl_path(name: &str) -> String {
    format!("/proc/sys/{}", name.replace('.', "/"))
}

/// Entries in a neighbour table (the first column of its per-CPU
/// statistics, the same on every line: the table's total).
fn table_entries(stat: &str) -> u64 {
    std::fs::read_to_string(stat)
        .ok()
        .and_then(|s| {
            let line = s.lines().nth(1)?.to_string();
            u64::from_str_radix(line.split_whitespace().next()?, 16).ok()
        })
        .unwrap_or(0)
}

/// inotify instances held by processes of user `uid`.
fn inotify_instances(uid: u32) -> u64 {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut n = 0;
    for p in procs.flatten() {
        let path = p.path();
        let mine = std::fs::read_to_string(path.join("status"))
            .ok()
            .and_then(|s| {
                let l = s.lines().find(|l| l.starts_with("Uid:"))?.to_string();
                l.split_whitespace().nth(1)?.parse::<u32>().ok()
            })
            == Some(uid);
        if !mine {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(path.join("fd")) else {
            continue;
        };
        n += fds
            .flatten()
            .filter(|f| {
                std::fs::read_link(f.path())
                    .map(|l| l == Path::new("anon_inode:inotify"))
                    .unwrap_or(false)
            })
            .count() as u64;
    }
    n
}

/// The host's limits and their use now.
pub(super) fn current() -> anyhow::Result<Current> {
    let neigh = |fam: &str, stat: &str| -> anyhow::Result<(u64, u64, u64)> {
        Ok((
            read_u64(&sysctl_path(&format!("net.{fam}.neigh.default.gc_thresh2")))?,
            read_u64(&sysctl_path(&format!("net.{fam}.neigh.default.gc_thresh3")))?,
            table_entries(stat),
        ))
    };
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    Ok(Current {
        inotify_limit: read_u64(&sysctl_path("fs.inotify.max_user_instances"))?,
        inotify_used: inotify_instances(uid),
        neigh4: neigh("ipv4", "/proc/net/stat/arp_cache")?,
        neigh6: neigh("ipv6", "/proc/net/stat/ndisc_cache")?,
    })
}

/// Raises what `plan` needs; returns what was changed (and prints it).
pub(super) fn raise(plan: &Plan) -> anyhow::Result<Vec<Raised>> {
    let now = current()?;
    let todo = plan_limits(plan, &now);
    for r in &todo {
        // gc_thresh3 first would not matter: each is checked on its own.
        std::fs::write(sysctl_path(&r.sysctl), r.after.to_string()).map_err(|e| {
            anyhow::anyhow!(
                "raising {} from {} to {} (a {}-node lab needs it): {e}",
                r.sysctl,
                r.before,
                r.after,
                plan.nodes.len()
            )
        })?;
        println!(
            "raised {} from {} to {} for {} nodes (machine-wide; lab down leaves it: `sysctl -w {}={}` restores it)",
            r.sysctl,
            r.before,
            r.after,
            plan.nodes.len(),
            r.sysctl,
            r.before
        );
    }
    Ok(todo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::plan::{TopologyFile, Tor, plan};

    fn defaults() -> Current {
        Current {
            inotify_limit: 128,
            inotify_used: 10,
            neigh4: (512, 1024, 20),
            neigh6: (512, 1024, 5),
        }
    }

    #[test]
    fn a_small_lab_changes_nothing() {
        let p = plan("t", 3, Tor::Bird, 2, None).unwrap();
        assert_eq!(plan_limits(&p, &defaults()), vec![]);
    }

    #[test]
    fn a_100_node_lab_raises_inotify_and_the_arp_table_only() {
        let p = plan("t", 100, Tor::Bird, 1, None).unwrap();
        let r = plan_limits(&p, &defaults());
        let get = |s: &str| r.iter().find(|x| x.sysctl == s).map(|x| x.after);
        // 100 agents × 2 + 10 in use + 64 spare.
        assert_eq!(get("fs.inotify.max_user_instances"), Some(274));
        // 100² + 100 + 2×100 entries + 20 in use + 256 spare.
        assert_eq!(neighbours_needed(100, 100), 10_300);
        assert_eq!(get("net.ipv4.neigh.default.gc_thresh2"), Some(10_576));
        assert_eq!(get("net.ipv4.neigh.default.gc_thresh3"), Some(21_152));
        assert_eq!(r.len(), 3, "{r:?}");
        // The old values are kept for the record.
        assert!(r.iter().all(|x| x.before < x.after));
    }

    #[test]
    fn limits_already_high_enough_are_left_alone_and_never_lowered() {
        let p = plan("t", 100, Tor::Bird, 1, None).unwrap();
        let high = Current {
            inotify_limit: 8192,
            inotify_used: 10,
            neigh4: (100_000, 200_000, 20),
            neigh6: (512, 1024, 5),
        };
        assert_eq!(plan_limits(&p, &high), vec![]);
        // Only the one that does not fit is raised.
        let some = Current {
            neigh4: (100_000, 1024, 20),
            ..high
        };
        let r = plan_limits(&p, &some);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].sysctl, "net.ipv4.neigh.default.gc_thresh3");
    }

    #[test]
    fn a_dual_stack_lab_raises_the_ipv6_table_too() {
        let f = TopologyFile {
            dual_stack: Some(true),
            ..Default::default()
        };
        let p = plan("t", 40, Tor::Bird, 1, Some(f)).unwrap();
        let r = plan_limits(&p, &defaults());
        assert!(
            r.iter()
                .any(|x| x.sysctl == "net.ipv6.neigh.default.gc_thresh3"),
            "{r:?}"
        );
        // What other labs use counts: 128 in use leaves no room for 40 agents.
        let busy = Current {
            inotify_used: 128,
            ..defaults()
        };
        let r = plan_limits(&p, &busy);
        assert_eq!(
            r.iter()
                .find(|x| x.sysctl == "fs.inotify.max_user_instances")
                .map(|x| x.after),
            Some(128 + 80 + 64)
        );
    }
}
