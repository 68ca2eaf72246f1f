//! Per-peer import and export policy: ordered terms, first match wins.
//!
//! A term matches when every criterion it sets matches (prefix list with
//! ge/le, any of the listed standard/large communities, AS in the path,
//! neighbour AS, where the route came from). Its verdict then applies, and on
//! Accept its modifications. Deciding ([`Policy::decide`]) is split from
//! modifying ([`Policy::modify`]) because modifications depend only on the
//! term and the attributes, not the prefix: the RIB computes them once per
//! UPDATE and term. When no term matches, the policy's [`DefaultAction`]
//! decides; [`DefaultAction::OriginatedOnly`] is Twill's export rule (announce
//! what this node originates; reflect node routes between nodes when this
//! node is a route reflector). The max-prefix limit rides on the import policy.

mod prefix_list;

use std::net::IpAddr;
use std::time::Duration;

pub use prefix_list::{PrefixList, PrefixRange};

use crate::rib::PeerKind;
use crate::types::{Asn, Community, LargeCommunity, PathAttrs, Prefix};

/// A policy that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("prefix range {range}: {reason}")]
    PrefixRange { range: String, reason: String },
    /// A field of a resource (path like `spec.importFilters[0].cidr`).
    #[error("{field}: {reason}")]
    Field { field: String, reason: String },
}

/// Where a route came from, as a policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Originated by this node.
    Local,
    /// Learned from another Twill node.
    Node,
    /// Learned from an external router (ToR, route server).
    External,
}

impl From<PeerKind> for Source {
    fn from(k: PeerKind) -> Source {
        match k {
            PeerKind::Node => Source::Node,
            PeerKind::External => Source::External,
        }
    }
}

/// What a term (or the default) does with a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verdict {
    #[default]
    Accept,
    Reject,
}

/// What happens to a route no term matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultAction {
    Accept,
    Reject,
    /// Twill's export rule: routes this node originates; routes from another
    /// node only when reflecting them to a node (route reflector); nothing
    /// learned from an external router.
    OriginatedOnly,
}

/// The criteria of a term; unset criteria match everything.
#[derive(Debug, Clone, Default)]
pub struct Match {
    pub prefixes: Option<PrefixList>,
    /// Matches when the route carries any of `communities` or any of
    /// `large_communities` (when either is non-empty).
    pub communities: Vec<Community>,
    pub large_communities: Vec<LargeCommunity>,
    /// The AS appears anywhere in the AS_PATH.
    pub as_path_contains: Option<Asn>,
    /// The first AS of the AS_PATH (the neighbouring AS).
    pub neighbor_as: Option<Asn>,
    /// Where the route came from.
    pub source: Option<Source>,
}

/// A modification applied on Accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modify {
    SetCommunities(Vec<Community>),
    AddCommunities(Vec<Community>),
    RemoveCommunities(Vec<Community>),
    SetLargeCommunities(Vec<LargeCommunity>),
    AddLargeCommunities(Vec<LargeCommunity>),
    RemoveLargeCommunities(Vec<LargeCommunity>),
    /// Prepend our AS this many times.
    Prepend(u8),
    SetLocalPref(u32),
    SetMed(u32),
    /// Next hop := our address on the session (export only).
    NextHopSelf,
}

/// One ordered term.
#[derive(Debug, Clone, Default)]
pub struct Term {
    pub matches: Match,
    pub verdict: Verdict,
    pub modify: Vec<Modify>,
}

/// What a max-prefix limit does when exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxPrefixAction {
    /// Report once (until the count drops below the limit) and keep going.
    Warn,
    /// Tear the session down with NOTIFICATION Cease/1 (RFC 4486) and
    /// reconnect after `restart_after`.
    Restart,
}

/// Limit on the prefixes a peer may announce (counted before import policy,
/// so filtered announcements cannot grow memory without bound either).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPrefix {
    pub limit: u32,
    pub action: MaxPrefixAction,
    pub restart_after: Duration,
}

/// A peer's import or export policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub terms: Vec<Term>,
    pub default: DefaultAction,
    /// Next hop := our session address on everything accepted (export).
    pub next_hop_self: bool,
    /// Only meaningful on an import policy.
    pub max_prefix: Option<MaxPrefix>,
}

/// What a policy evaluation needs to know besides the route.
#[derive(Debug, Clone, Copy)]
pub struct EvalCtx {
    pub local_asn: Asn,
    /// Our address on the session (for next-hop self); None on import.
    pub local_addr: Option<IpAddr>,
    pub source: Source,
    /// The peer the route goes to (export), None on import.
    pub target: Option<PeerKind>,
    /// This node reflects routes (has a cluster ID).
    pub reflector: bool,
}

/// Result of [`Policy::decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Reject,
    /// Accepted by this term (None: by the default action).
    Accept(Option<usize>),
}

impl Policy {
    /// Accept everything unchanged (the default import policy).
    pub fn accept_all() -> Policy {
        Policy {
            terms: Vec::new(),
            default: DefaultAction::Accept,
            next_hop_self: false,
            max_prefix: None,
        }
    }

    pub fn reject_all() -> Policy {
        Policy {
            default: DefaultAction::Reject,
            ..Policy::accept_all()
        }
    }

    /// Twill's default export policy (see [`DefaultAction::OriginatedOnly`]).
    pub fn originated_only() -> Policy {
        Policy {
            default: DefaultAction::OriginatedOnly,
            ..Policy::accept_all()
        }
    }

    /// Does the route pass, and by which term?
    pub fn decide(&self, prefix: &Prefix, attrs: &PathAttrs, ctx: &EvalCtx) -> Decision {
        for (i, t) in self.terms.iter().enumerate() {
            if t.matches.matches(prefix, attrs, ctx) {
                return match t.verdict {
                    Verdict::Accept => Decision::Accept(Some(i)),
                    Verdict::Reject => Decision::Reject,
                };
            }
        }
        let pass = match self.default {
            DefaultAction::Accept => true,
            DefaultAction::Reject => false,
            DefaultAction::OriginatedOnly => match ctx.source {
                Source::Local => true,
                Source::Node => ctx.reflector && ctx.target == Some(PeerKind::Node),
                Source::External => false,
            },
        };
        if pass {
            Decision::Accept(None)
        } else {
            Decision::Reject
        }
    }

    /// Do the accepted route's attributes change (term from [`Decision::Accept`])?
    pub fn changes(&self, term: Option<usize>) -> bool {
        self.next_hop_self
            || term
                .and_then(|i| self.terms.get(i))
                .is_some_and(|t| !t.modify.is_empty())
    }

    /// The attributes after the accepting term's modifications, or None when
    /// nothing changes.
    pub fn modify(
        &self,
        term: Option<usize>,
        attrs: &PathAttrs,
        ctx: &EvalCtx,
    ) -> Option<PathAttrs> {
        if !self.changes(term) {
            return None;
        }
        let mut a = attrs.clone();
        if let Some(t) = term.and_then(|i| self.terms.get(i)) {
            for m in &t.modify {
                apply(m, &mut a, ctx);
            }
        }
        if self.next_hop_self {
            apply(&Modify::NextHopSelf, &mut a, ctx);
        }
        Some(a)
    }
}

fn apply(m: &Modify, a: &mut PathAttrs, ctx: &EvalCtx) {
    match m {
        Modify::SetCommunities(v) => {
            a.communities = v.clone();
            a.communities.sort_unstable();
            a.communities.dedup();
        }
        Modify::AddCommunities(v) => v.iter().for_each(|c| a.add_community(*c)),
        Modify::RemoveCommunities(v) => a.communities.retain(|c| !v.contains(c)),
        Modify::SetLargeCommunities(v) => {
            a.large_communities = v.clone();
            a.large_communities.sort_unstable();
            a.large_communities.dedup();
        }
        Modify::AddLargeCommunities(v) => v.iter().for_each(|c| a.add_large_community(*c)),
        Modify::RemoveLargeCommunities(v) => a.large_communities.retain(|c| !v.contains(c)),
        Modify::Prepend(n) => a.as_path.prepend(ctx.local_asn, usize::from(*n)),
        Modify::SetLocalPref(v) => a.local_pref = Some(*v),
        Modify::SetMed(v) => a.med = Some(*v),
        Modify::NextHopSelf => {
            if let Some(addr) = ctx.local_addr {
                a.next_hop = Some(addr);
                a.next_hop_link_local = None;
            }
        }
    }
}

impl Match {
    pub fn matches(&self, prefix: &Prefix, attrs: &PathAttrs, ctx: &EvalCtx) -> bool {
        if let Some(s) = self.source
            && s != ctx.source
        {
            return false;
        }
        if let Some(asn) = self.neighbor_as
            && attrs.as_path.first_as() != Some(asn)
        {
            return false;
        }
        if let Some(asn) = self.as_path_contains
            && !attrs.as_path.contains(asn)
        {
            return false;
        }
        if (!self.communities.is_empty() || !self.large_communities.is_empty())
            && !self.communities.iter().any(|c| attrs.has_community(*c))
            && !self
                .large_communities
                .iter()
                .any(|c| attrs.large_communities.binary_search(c).is_ok())
        {
            return false;
        }
        if let Some(l) = &self.prefixes
            && !l.matches(prefix)
        {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::AsPath;

    fn ctx(source: Source) -> EvalCtx {
        EvalCtx {
            local_asn: 65000,
            local_addr: Some("192.0.2.1".parse().unwrap()),
            source,
            target: Some(PeerKind::External),
            reflector: false,
        }
    }

    fn attrs() -> PathAttrs {
        PathAttrs {
            as_path: AsPath::from_sequence([65001, 65002]),
            communities: vec![Community::new(65001, 1)],
            ..Default::default()
        }
    }

    #[test]
    fn first_matching_term_wins_and_unset_criteria_match_all() {
        let list = PrefixList::new([PrefixRange::orlonger("10.0.0.0/8".parse().unwrap())]).unwrap();
        let p = Policy {
            terms: vec![
                Term {
                    matches: Match {
                        prefixes: Some(list),
                        ..Default::default()
                    },
                    verdict: Verdict::Reject,
                    modify: vec![],
                },
                Term {
                    matches: Match::default(),
                    verdict: Verdict::Accept,
                    modify: vec![Modify::SetLocalPref(200)],
                },
            ],
            ..Policy::reject_all()
        };
        let c = ctx(Source::External);
        let a = attrs();
        assert_eq!(
            p.decide(&"10.1.0.0/16".parse().unwrap(), &a, &c),
            Decision::Reject
        );
        let d = p.decide(&"172.16.0.0/16".parse().unwrap(), &a, &c);
        assert_eq!(d, Decision::Accept(Some(1)));
        let Decision::Accept(t) = d else {
            unreachable!()
        };
        assert_eq!(p.modify(t, &a, &c).unwrap().local_pref, Some(200));
    }

    #[test]
    fn community_neighbour_and_path_matches() {
        let c = ctx(Source::External);
        let a = attrs();
        let m = |m: Match| m.matches(&"10.0.0.0/8".parse().unwrap(), &a, &c);
        assert!(m(Match {
            communities: vec![Community::new(65001, 1)],
            ..Default::default()
        }));
        assert!(!m(Match {
            communities: vec![Community::new(65001, 2)],
            ..Default::default()
        }));
        let lc = LargeCommunity {
            global: 1,
            local1: 2,
            local2: 3,
        };
        assert!(!m(Match {
            large_communities: vec![lc],
            ..Default::default()
        }));
        assert!(m(Match {
            neighbor_as: Some(65001),
            ..Default::default()
        }));
        assert!(!m(Match {
            neighbor_as: Some(65002),
            ..Default::default()
        }));
        assert!(m(Match {
            as_path_contains: Some(65002),
            ..Default::default()
        }));
        assert!(!m(Match {
            source: Some(Source::Node),
            ..Default::default()
        }));
    }

    #[test]
    fn modifications_apply_in_order() {
        let c = ctx(Source::Local);
        let p = Policy {
            terms: vec![Term {
                matches: Match::default(),
                verdict: Verdict::Accept,
                modify: vec![
                    Modify::AddCommunities(vec![Community::new(1, 1)]),
                    Modify::RemoveCommunities(vec![Community::new(65001, 1)]),
                    Modify::AddLargeCommunities(vec![LargeCommunity {
                        global: 9,
                        local1: 9,
                        local2: 9,
                    }]),
                    Modify::Prepend(2),
                    Modify::SetMed(7),
                    Modify::NextHopSelf,
                ],
            }],
            ..Policy::reject_all()
        };
        let out = p.modify(Some(0), &attrs(), &c).unwrap();
        assert_eq!(out.communities, vec![Community::new(1, 1)]);
        assert_eq!(out.large_communities.len(), 1);
        assert_eq!(out.as_path.to_string(), "65000 65000 65001 65002");
        assert_eq!(out.med, Some(7));
        assert_eq!(out.next_hop, c.local_addr);
        assert!(p.modify(None, &attrs(), &c).is_none() || p.next_hop_self);
    }

    #[test]
    fn originated_only_is_twills_no_transit_rule() {
        let p = Policy::originated_only();
        let a = attrs();
        let pfx: Prefix = "10.0.0.0/8".parse().unwrap();
        let mut c = ctx(Source::Local);
        assert_eq!(p.decide(&pfx, &a, &c), Decision::Accept(None));
        c.source = Source::External;
        assert_eq!(p.decide(&pfx, &a, &c), Decision::Reject);
        c.target = Some(PeerKind::Node);
        assert_eq!(p.decide(&pfx, &a, &c), Decision::Reject);
        c.source = Source::Node;
        assert_eq!(p.decide(&pfx, &a, &c), Decision::Reject, "not a reflector");
        c.reflector = true;
        assert_eq!(p.decide(&pfx, &a, &c), Decision::Accept(None));
        c.target = Some(PeerKind::External);
        assert_eq!(p.decide(&pfx, &a, &c), Decision::Reject);
    }
}
