//! The pure half of route programming: what the kernel's main table should
//! hold (one route per prefix, from local endpoints, owned blocks and BGP)
//! and the difference between that and what it holds now. No I/O here.
//!
//! Precedence when one prefix has several sources: a local endpoint wins
//! over an owned block (its blackhole), which wins over a BGP route (a node
//! must never route its own block, or a pod on it, towards a peer).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::RTPROT_TWILL;

/// The main routing table.
pub const TABLE_MAIN: u32 = 254;

/// Where a route sends traffic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// Out of a local interface (a pod's host-side veth), link scope.
    Dev(u32),
    /// Dropped here: an owned block's addresses that no pod holds.
    Blackhole,
    /// Through next hops; several make an ECMP (multipath) route.
    Via(BTreeSet<IpAddr>),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Dev(i) => write!(f, "dev #{i}"),
            Target::Blackhole => write!(f, "blackhole"),
            Target::Via(hops) => {
                let v: Vec<String> = hops.iter().map(ToString::to_string).collect();
                write!(f, "via {}", v.join(","))
            }
        }
    }
}

/// Everything the desired routes are computed from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Local endpoint addresses (/32, /128) and their host-side interface.
    pub endpoints: BTreeMap<IpNetwork, String>,
    /// Blocks this node owns.
    pub blocks: BTreeSet<IpNetwork>,
    /// Best BGP routes: prefix and next hops.
    pub bgp: BTreeMap<IpNetwork, BTreeSet<IpAddr>>,
}

/// A prefix with its host bits cleared (the kernel rejects the others).
pub fn normalize(n: IpNetwork) -> IpNetwork {
    IpNetwork::new(n.network(), n.prefix()).unwrap_or(n)
}

impl Inputs {
    /// Every prefix some input mentions.
    pub fn prefixes(&self) -> BTreeSet<IpNetwork> {
        self.endpoints
            .keys()
            .chain(self.blocks.iter())
            .chain(self.bgp.keys())
            .copied()
            .collect()
    }

    /// The route `dst` should have, if any. `ifindex` resolves interface
    /// names; an endpoint whose interface does not exist gets no route.
    pub fn desired_for(
        &self,
        dst: &IpNetwork,
        ifindex: &dyn Fn(&str) -> Option<u32>,
    ) -> Option<Target> {
        if let Some(ifname) = self.endpoints.get(dst)
            && let Some(i) = ifindex(ifname)
        {
            return Some(Target::Dev(i));
        }
        if self.blocks.contains(dst) {
            return Some(Target::Blackhole);
        }
        let hops: BTreeSet<IpAddr> = self
            .bgp
            .get(dst)?
            .iter()
            .filter(|h| h.is_ipv4() == dst.is_ipv4())
            .copied()
            .collect();
        (!hops.is_empty()).then_some(Target::Via(hops))
    }

    /// The whole desired table.
    pub fn desired(&self, ifindex: &dyn Fn(&str) -> Option<u32>) -> BTreeMap<IpNetwork, Target> {
        self.prefixes()
            .into_iter()
            .filter_map(|p| Some((p, self.desired_for(&p, ifindex)?)))
            .collect()
    }
}

/// A route as the kernel reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    pub dst: IpNetwork,
    pub protocol: u8,
    pub table: u32,
    /// RTA_PRIORITY, when the kernel reported one.
    pub metric: Option<u32>,
    /// None: a shape Twill never installs (unreachable, encapsulation, ...).
    pub target: Option<Target>,
}

impl Installed {
    /// Whether Twill owns this route (and may change or delete it).
    pub fn is_ours(&self) -> bool {
        self.protocol == RTPROT_TWILL && self.table == TABLE_MAIN
    }

    /// Whether it has the metric Twill installs with (the kernel default:
    /// 0 for IPv4, 1024 for IPv6).
    pub fn has_default_metric(&self) -> bool {
        let default = if self.dst.is_ipv4() { 0 } else { 1024 };
        self.metric.unwrap_or(default) == default
    }
}

/// What to do to make the kernel match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub add: Vec<(IpNetwork, Target)>,
    /// An existing route of ours whose target changed: replaced in place
    /// (one netlink request, no moment without a route).
    pub replace: Vec<(IpNetwork, Target)>,
    pub delete: Vec<Installed>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.replace.is_empty() && self.delete.is_empty()
    }

    pub fn len(&self) -> usize {
        self.add.len() + self.replace.len() + self.delete.len()
    }
}

/// The difference between the desired table and the installed routes.
/// Routes that are not ours (another protocol number or table) are never
/// in the plan, whatever their prefix.
pub fn diff(desired: &BTreeMap<IpNetwork, Target>, installed: &[Installed]) -> Plan {
    let mut plan = Plan::default();
    let mut primary: BTreeMap<IpNetwork, &Installed> = BTreeMap::new();
    for r in installed.iter().filter(|r| r.is_ours()) {
        if r.has_default_metric() && !primary.contains_key(&r.dst) {
            primary.insert(r.dst, r);
        } else {
            // A duplicate of ours at another metric: not something we made.
            plan.delete.push(r.clone());
        }
    }
    for (dst, want) in desired {
        match primary.remove(dst) {
            None => plan.add.push((*dst, want.clone())),
            Some(have) if have.target.as_ref() == Some(want) => {}
            Some(_) => plan.replace.push((*dst, want.clone())),
        }
    }
    plan.delete.extend(primary.into_values().cloned());
    plan
}

/// The plan for a few prefixes against what we believe is installed
/// (`programmed`), for event-driven increments between resyncs.
pub fn diff_prefixes(
    inputs: &Inputs,
    prefixes: &BTreeSet<IpNetwork>,
    programmed: &BTreeMap<IpNetwork, Target>,
    ifindex: &dyn Fn(&str) -> Option<u32>,
) -> Plan {
    let mut plan = Plan::default();
    for p in prefixes {
        let want = inputs.desired_for(p, ifindex);
        match (programmed.get(p), want) {
            (None, None) => {}
            (None, Some(w)) => plan.add.push((*p, w)),
            (Some(h), Some(w)) if *h == w => {}
            (Some(_), Some(w)) => plan.replace.push((*p, w)),
            (Some(h), None) => plan.delete.push(Installed {
                dst: *p,
                protocol: RTPROT_TWILL,
                table: TABLE_MAIN,
                metric: None,
                target: Some(h.clone()),
            }),
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn via(hops: &[&str]) -> Target {
        Target::Via(hops.iter().map(|h| ip(h)).collect())
    }
    fn ours(dst: &str, target: Target) -> Installed {
        Installed {
            dst: net(dst),
            protocol: RTPROT_TWILL,
            table: TABLE_MAIN,
            metric: None,
            target: Some(target),
        }
    }
    fn no_links(_: &str) -> Option<u32> {
        None
    }

    #[test]
    fn desired_has_endpoints_blackholes_and_bgp_with_ecmp() {
        let mut i = Inputs::default();
        i.endpoints.insert(net("10.244.1.5/32"), "tw1".into());
        i.endpoints.insert(net("10.244.1.6/32"), "gone".into());
        i.blocks.insert(net("10.244.1.0/26"));
        i.bgp.insert(
            net("10.244.2.0/26"),
            [ip("192.168.0.2"), ip("192.168.0.3")].into(),
        );
        i.bgp
            .insert(net("10.244.3.0/26"), [ip("192.168.0.4")].into());
        let links = |n: &str| (n == "tw1").then_some(7);
        let d = i.desired(&links);
        assert_eq!(d.get(&net("10.244.1.5/32")), Some(&Target::Dev(7)));
        assert_eq!(d.get(&net("10.244.1.6/32")), None, "no interface, no route");
        assert_eq!(d.get(&net("10.244.1.0/26")), Some(&Target::Blackhole));
        assert_eq!(
            d.get(&net("10.244.2.0/26")),
            Some(&via(&["192.168.0.2", "192.168.0.3"]))
        );
        assert_eq!(d.get(&net("10.244.3.0/26")), Some(&via(&["192.168.0.4"])));
        assert_eq!(d.len(), 4);
    }

    #[test]
    fn local_sources_win_over_bgp() {
        let mut i = Inputs::default();
        i.blocks.insert(net("10.244.1.0/26"));
        i.bgp
            .insert(net("10.244.1.0/26"), [ip("192.168.0.9")].into());
        i.endpoints.insert(net("10.244.9.1/32"), "tw1".into());
        i.bgp
            .insert(net("10.244.9.1/32"), [ip("192.168.0.9")].into());
        let d = i.desired(&|_| Some(3));
        assert_eq!(d[&net("10.244.1.0/26")], Target::Blackhole);
        assert_eq!(d[&net("10.244.9.1/32")], Target::Dev(3));
    }

    #[test]
    fn next_hops_of_the_other_family_are_ignored() {
        let mut i = Inputs::default();
        i.bgp
            .insert(net("fd00:1::/122"), [ip("192.168.0.2")].into());
        i.bgp.insert(
            net("fd00:2::/122"),
            [ip("192.168.0.2"), ip("fd00::2")].into(),
        );
        let d = i.desired(&no_links);
        assert_eq!(d.get(&net("fd00:1::/122")), None);
        assert_eq!(d[&net("fd00:2::/122")], via(&["fd00::2"]));
    }

    #[test]
    fn diff_adds_missing_deletes_stale_keeps_equal() {
        let desired: BTreeMap<_, _> = [
            (net("10.244.1.0/26"), Target::Blackhole),
            (net("10.244.2.0/26"), via(&["192.168.0.2"])),
        ]
        .into();
        let installed = vec![
            ours("10.244.1.0/26", Target::Blackhole),
            ours("10.244.7.0/26", via(&["192.168.0.7"])),
        ];
        let p = diff(&desired, &installed);
        assert_eq!(p.add, vec![(net("10.244.2.0/26"), via(&["192.168.0.2"]))]);
        assert!(p.replace.is_empty());
        assert_eq!(p.delete, vec![ours("10.244.7.0/26", via(&["192.168.0.7"]))]);
    }

    #[test]
    fn foreign_routes_are_never_deleted_or_replaced() {
        let desired: BTreeMap<_, _> = [(net("10.244.2.0/26"), via(&["192.168.0.2"]))].into();
        let mut static_same_prefix = ours("10.244.2.0/26", via(&["192.168.0.99"]));
        static_same_prefix.protocol = 4; // RTPROT_STATIC
        let mut bird = ours("10.244.3.0/26", via(&["192.168.0.3"]));
        bird.protocol = 12;
        let mut other_table = ours("10.244.4.0/26", Target::Blackhole);
        other_table.table = 100;
        let mut kernel = ours("192.168.0.0/24", Target::Dev(2));
        kernel.protocol = 2;
        let p = diff(&desired, &[static_same_prefix, bird, other_table, kernel]);
        assert!(p.delete.is_empty(), "{p:?}");
        assert!(p.replace.is_empty(), "{p:?}");
        assert_eq!(p.add, vec![(net("10.244.2.0/26"), via(&["192.168.0.2"]))]);
    }

    #[test]
    fn changed_next_hops_are_a_replace_not_delete_and_add() {
        let desired: BTreeMap<_, _> = [
            (net("10.244.2.0/26"), via(&["192.168.0.2", "192.168.0.3"])),
            (net("10.244.3.0/26"), Target::Blackhole),
        ]
        .into();
        let installed = vec![
            ours("10.244.2.0/26", via(&["192.168.0.2"])),
            ours("10.244.3.0/26", via(&["192.168.0.3"])),
        ];
        let p = diff(&desired, &installed);
        assert!(p.add.is_empty() && p.delete.is_empty(), "{p:?}");
        assert_eq!(
            p.replace,
            vec![
                (net("10.244.2.0/26"), via(&["192.168.0.2", "192.168.0.3"])),
                (net("10.244.3.0/26"), Target::Blackhole),
            ]
        );
    }

    #[test]
    fn unrecognised_shapes_and_extra_metrics_are_repaired() {
        let desired: BTreeMap<_, _> = [(net("10.244.2.0/26"), Target::Blackhole)].into();
        let mut odd = ours("10.244.2.0/26", Target::Blackhole);
        odd.target = None;
        let mut extra = ours("10.244.2.0/26", Target::Blackhole);
        extra.metric = Some(50);
        let p = diff(&desired, &[odd, extra.clone()]);
        assert_eq!(p.replace, vec![(net("10.244.2.0/26"), Target::Blackhole)]);
        assert_eq!(p.delete, vec![extra]);
        // IPv6 routes carry metric 1024 by default: that is ours.
        let mut v6 = ours("fd00::/122", Target::Blackhole);
        v6.metric = Some(1024);
        let d6: BTreeMap<_, _> = [(net("fd00::/122"), Target::Blackhole)].into();
        assert!(diff(&d6, &[v6]).is_empty());
    }

    #[test]
    fn increments_compare_against_what_was_programmed() {
        let mut i = Inputs::default();
        i.bgp
            .insert(net("10.244.2.0/26"), [ip("192.168.0.2")].into());
        i.bgp
            .insert(net("10.244.3.0/26"), [ip("192.168.0.3")].into());
        let programmed: BTreeMap<_, _> = [
            (net("10.244.2.0/26"), via(&["192.168.0.9"])),
            (net("10.244.4.0/26"), Target::Blackhole),
            (net("10.244.5.0/26"), Target::Blackhole),
        ]
        .into();
        let touched: BTreeSet<_> = [
            net("10.244.2.0/26"),
            net("10.244.3.0/26"),
            net("10.244.4.0/26"),
        ]
        .into();
        let p = diff_prefixes(&i, &touched, &programmed, &no_links);
        assert_eq!(p.add, vec![(net("10.244.3.0/26"), via(&["192.168.0.3"]))]);
        assert_eq!(
            p.replace,
            vec![(net("10.244.2.0/26"), via(&["192.168.0.2"]))]
        );
        assert_eq!(p.delete.len(), 1);
        assert_eq!(p.delete[0].dst, net("10.244.4.0/26"));
        assert_eq!(p.delete[0].protocol, RTPROT_TWILL);
    }

    #[test]
    fn normalize_clears_host_bits() {
        assert_eq!(normalize(net("10.244.1.77/26")), net("10.244.1.64/26"));
    }
}
