//! Building BGP policies from a `BGPPeer` resource (`importFilters`,
//! `exportFilters`, `maxPrefixes`, `nextHopSelf`) and the BGPConfiguration.
//! Errors name the field, as `spec.importFilters[2].cidr`, so they can be
//! shown next to the resource. It lives here, not in bgpd, so the speaker
//! does not depend on the Kubernetes types (and builds in parallel with them).

use std::time::Duration;

use std::net::Ipv4Addr;

use twill_api::resources::bgpconfig::{Community as ApiCommunity, DEFAULT_ASN, parse_community};
use twill_api::resources::{
    BGPConfigurationSpec, BGPPeerSpec, FilterAction, FilterRule, MaxPrefixAction as ApiAction,
    MaxPrefixes,
};

use twill_bgpd::policy::{
    DefaultAction, Match, MaxPrefix, MaxPrefixAction, Modify, Policy, PolicyError, PrefixList,
    PrefixRange, Term, Verdict,
};
use twill_bgpd::rib::{LocalConfig, PeerKind};
use twill_bgpd::types::{Community, LargeCommunity, PathAttrs, Prefix, normalize};

/// Seconds to wait before reconnecting after a max-prefix tear-down when the
/// resource does not say.
pub const DEFAULT_RESTART_AFTER: Duration = Duration::from_secs(60);

/// The import and export policy of one peer.
#[derive(Debug, Clone)]
pub struct PeerPolicies {
    pub import: Policy,
    pub export: Policy,
}

/// Import: the filters, then accept; max-prefix on import. Export: the
/// filters, then Twill's originated-only rule; `nextHopSelf` on everything.
pub fn peer_policies(spec: &BGPPeerSpec) -> Result<PeerPolicies, PolicyError> {
    let mut import = policy_from_rules(
        &spec.import_filters,
        "spec.importFilters",
        DefaultAction::Accept,
    )?;
    import.max_prefix = spec
        .max_prefixes
        .as_ref()
        .map(|m| max_prefix_from_api(m, "spec.maxPrefixes"))
        .transpose()?;
    let mut export = policy_from_rules(
        &spec.export_filters,
        "spec.exportFilters",
        DefaultAction::OriginatedOnly,
    )?;
    export.next_hop_self = spec.next_hop_self;
    Ok(PeerPolicies { import, export })
}

pub fn max_prefix_from_api(m: &MaxPrefixes, field: &str) -> Result<MaxPrefix, PolicyError> {
    if m.limit == 0 {
        return Err(field_err(format!("{field}.limit"), "must be at least 1"));
    }
    Ok(MaxPrefix {
        limit: m.limit,
        action: match m.action {
            ApiAction::Warn => MaxPrefixAction::Warn,
            ApiAction::Restart => MaxPrefixAction::Restart,
        },
        restart_after: m
            .restart_after
            .map(|s| Duration::from_secs(u64::from(s)))
            .unwrap_or(DEFAULT_RESTART_AFTER),
    })
}

/// One policy from an ordered rule list; `field` is the list's path.
pub fn policy_from_rules(
    rules: &[FilterRule],
    field: &str,
    default: DefaultAction,
) -> Result<Policy, PolicyError> {
    let terms = rules
        .iter()
        .enumerate()
        .map(|(i, r)| term_from_rule(r, &format!("{field}[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Policy {
        terms,
        default,
        next_hop_self: false,
        max_prefix: None,
    })
}

fn field_err(field: String, reason: impl Into<String>) -> PolicyError {
    PolicyError::Field {
        field,
        reason: reason.into(),
    }
}

fn term_from_rule(r: &FilterRule, at: &str) -> Result<Term, PolicyError> {
    let mut m = Match::default();
    match &r.cidr {
        Some(c) => {
            let net: Prefix = c
                .parse()
                .map_err(|e| field_err(format!("{at}.cidr"), format!("{c:?}: {e}")))?;
            let net = normalize(net);
            let len = net.prefix();
            // The resource's documented defaults: ge defaults to the CIDR's
            // length; le defaults to ge when ge is set, else the CIDR's length.
            let ge = r.ge.unwrap_or(len);
            let le = r.le.unwrap_or(ge);
            let list = PrefixList::new([PrefixRange { net, ge, le }]).map_err(|e| {
                let f = if r.le.is_some() { "le" } else { "ge" };
                field_err(format!("{at}.{f}"), e.to_string())
            })?;
            m.prefixes = Some(list);
        }
        None => {
            if let Some(v) = r.ge.or(r.le) {
                let f = if r.ge.is_some() { "ge" } else { "le" };
                return Err(field_err(
                    format!("{at}.{f}"),
                    format!("{v}: ge/le need a cidr to apply to"),
                ));
            }
        }
    }
    let (c, l) = communities(&r.communities, &format!("{at}.communities"))?;
    m.communities = c;
    m.large_communities = l;
    let mut modify = Vec::new();
    let (c, l) = communities(&r.add_communities, &format!("{at}.addCommunities"))?;
    if !c.is_empty() {
        modify.push(Modify::AddCommunities(c));
    }
    if !l.is_empty() {
        modify.push(Modify::AddLargeCommunities(l));
    }
    if let Some(lp) = r.set_local_pref {
        modify.push(Modify::SetLocalPref(lp));
    }
    if let Some(n) = r.prepend_as_path {
        modify.push(Modify::Prepend(n));
    }
    if r.next_hop_self {
        modify.push(Modify::NextHopSelf);
    }
    let verdict = match r.action {
        FilterAction::Accept => Verdict::Accept,
        FilterAction::Reject => Verdict::Reject,
    };
    Ok(Term {
        matches: m,
        verdict,
        modify,
    })
}

fn communities(
    list: &[String],
    at: &str,
) -> Result<(Vec<Community>, Vec<LargeCommunity>), PolicyError> {
    let mut std = Vec::new();
    let mut large = Vec::new();
    for (j, s) in list.iter().enumerate() {
        match parse_community(s)
            .map_err(|e| field_err(format!("{at}[{j}]"), format!("{s:?}: {e}")))?
        {
            ApiCommunity::Standard(v) => std.push(Community(v)),
            ApiCommunity::Large(global, local1, local2) => large.push(LargeCommunity {
                global,
                local1,
                local2,
            }),
        }
    }
    std.sort_unstable();
    std.dedup();
    large.sort_unstable();
    large.dedup();
    Ok((std, large))
}

/// The RIB's settings from the effective BGPConfiguration (the node's
/// `node.<name>` merged over `default` by the caller): AS (default 64512),
/// route-reflector cluster ID.
pub fn local_config(
    spec: &BGPConfigurationSpec,
    router_id: Ipv4Addr,
    multipath: bool,
) -> Result<LocalConfig, PolicyError> {
    let cluster_id = spec
        .route_reflector_cluster_id
        .as_ref()
        .map(|c| {
            c.parse::<Ipv4Addr>().map_err(|_| {
                field_err(
                    "spec.routeReflectorClusterId".into(),
                    format!("{c:?} is not an IPv4 address"),
                )
            })
        })
        .transpose()?;
    Ok(LocalConfig {
        asn: spec.as_number.unwrap_or(DEFAULT_ASN),
        router_id,
        cluster_id,
        multipath,
    })
}

/// What kind of peer a BGPPeer describes: other Twill nodes (peerSelector)
/// or a router by address (peerIP).
pub fn peer_kind(spec: &BGPPeerSpec) -> PeerKind {
    if spec.peer_selector.is_some() {
        PeerKind::Node
    } else {
        PeerKind::External
    }
}

/// `spec.prefixAdvertisements`: communities attached to the prefixes this
/// node originates, by CIDR.
#[derive(Debug, Clone, Default)]
pub struct Advertisements {
    entries: Vec<(PrefixList, Vec<Community>, Vec<LargeCommunity>)>,
}

impl Advertisements {
    pub fn from_api(spec: &BGPConfigurationSpec) -> Result<Advertisements, PolicyError> {
        let mut entries = Vec::new();
        for (i, a) in spec.prefix_advertisements.iter().enumerate() {
            let at = format!("spec.prefixAdvertisements[{i}]");
            let net: Prefix = a
                .cidr
                .parse()
                .map_err(|e| field_err(format!("{at}.cidr"), format!("{:?}: {e}", a.cidr)))?;
            let list = PrefixList::new([PrefixRange::orlonger(net)])
                .map_err(|e| field_err(format!("{at}.cidr"), e.to_string()))?;
            let (c, l) = communities(&a.communities, &format!("{at}.communities"))?;
            entries.push((list, c, l));
        }
        Ok(Advertisements { entries })
    }

    /// The attributes to originate `prefix` with: every matching entry's
    /// communities.
    pub fn attrs_for(&self, prefix: &Prefix) -> PathAttrs {
        let mut a = PathAttrs::default();
        for (list, c, l) in &self.entries {
            if list.matches(prefix) {
                c.iter().for_each(|x| a.add_community(*x));
                l.iter().for_each(|x| a.add_large_community(*x));
            }
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bgp_configuration_gives_the_local_config_and_communities() {
        use twill_api::resources::bgpconfig::PrefixAdvertisement;
        let mut spec = BGPConfigurationSpec {
            route_reflector_cluster_id: Some("224.0.0.1".into()),
            prefix_advertisements: vec![
                PrefixAdvertisement {
                    cidr: "10.244.0.0/16".into(),
                    communities: vec!["65000:100".into()],
                },
                PrefixAdvertisement {
                    cidr: "10.244.1.0/24".into(),
                    communities: vec!["65000:1:2".into(), "no-export".into()],
                },
            ],
            ..Default::default()
        };
        let c = local_config(&spec, Ipv4Addr::new(192, 0, 2, 1), true).unwrap();
        assert_eq!(c.asn, DEFAULT_ASN);
        assert_eq!(c.cluster_id, Some(Ipv4Addr::new(224, 0, 0, 1)));
        let adv = Advertisements::from_api(&spec).unwrap();
        let a = adv.attrs_for(&"10.244.1.64/26".parse().unwrap());
        assert_eq!(
            a.communities,
            vec![Community::new(65000, 100), Community::NO_EXPORT]
        );
        assert_eq!(a.large_communities.len(), 1);
        assert!(
            adv.attrs_for(&"10.9.0.0/26".parse().unwrap())
                .communities
                .is_empty()
        );
        spec.route_reflector_cluster_id = Some("x".into());
        let e = local_config(&spec, Ipv4Addr::new(192, 0, 2, 1), true).unwrap_err();
        assert!(
            e.to_string().starts_with("spec.routeReflectorClusterId:"),
            "{e}"
        );
        spec.prefix_advertisements[1].cidr = "10.244.1.0/33".into();
        let e = Advertisements::from_api(&spec).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("spec.prefixAdvertisements[1].cidr:"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let spec = BGPPeerSpec {
            import_filters: vec![
                FilterRule::default(),
                FilterRule {
                    cidr: Some("10.0.0.0/8".into()),
                    ge: Some(4),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let e = peer_policies(&spec).unwrap_err().to_string();
        assert!(e.starts_with("spec.importFilters[1].ge:"), "{e}");

        let spec = BGPPeerSpec {
            export_filters: vec![FilterRule {
                communities: vec!["65536:1".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = peer_policies(&spec).unwrap_err().to_string();
        assert!(
            e.starts_with("spec.exportFilters[0].communities[0]:"),
            "{e}"
        );

        let spec = BGPPeerSpec {
            max_prefixes: Some(MaxPrefixes {
                limit: 0,
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = peer_policies(&spec).unwrap_err().to_string();
        assert!(e.starts_with("spec.maxPrefixes.limit:"), "{e}");
    }

    #[test]
    fn rules_become_terms_with_the_documented_defaults() {
        let spec = BGPPeerSpec {
            import_filters: vec![FilterRule {
                action: FilterAction::Accept,
                cidr: Some("10.0.0.0/8".into()),
                le: Some(24),
                communities: vec!["65000:1".into(), "1:2:3".into()],
                add_communities: vec!["no-export".into()],
                set_local_pref: Some(300),
                ..Default::default()
            }],
            export_filters: vec![FilterRule {
                action: FilterAction::Reject,
                cidr: Some("192.168.0.0/16".into()),
                ge: Some(24),
                ..Default::default()
            }],
            max_prefixes: Some(MaxPrefixes {
                limit: 10,
                action: ApiAction::Warn,
                restart_after: None,
            }),
            next_hop_self: true,
            ..Default::default()
        };
        let p = peer_policies(&spec).unwrap();
        let t = &p.import.terms[0];
        let l = t.matches.prefixes.as_ref().unwrap();
        assert!(l.matches(&"10.0.0.0/8".parse().unwrap()));
        assert!(l.matches(&"10.1.2.0/24".parse().unwrap()));
        assert!(!l.matches(&"10.1.2.0/25".parse().unwrap()));
        assert_eq!(t.matches.communities, vec![Community::new(65000, 1)]);
        assert_eq!(t.matches.large_communities.len(), 1);
        assert_eq!(
            t.modify,
            vec![
                Modify::AddCommunities(vec![Community::NO_EXPORT]),
                Modify::SetLocalPref(300)
            ]
        );
        assert_eq!(p.import.default, DefaultAction::Accept);
        let mp = p.import.max_prefix.unwrap();
        assert_eq!((mp.limit, mp.action), (10, MaxPrefixAction::Warn));
        assert_eq!(mp.restart_after, DEFAULT_RESTART_AFTER);
        // ge without le means exactly ge.
        let e = p.export.terms[0].matches.prefixes.as_ref().unwrap();
        assert!(e.matches(&"192.168.1.0/24".parse().unwrap()));
        assert!(!e.matches(&"192.168.1.0/25".parse().unwrap()));
        assert_eq!(p.export.terms[0].verdict, Verdict::Reject);
        assert_eq!(p.export.default, DefaultAction::OriginatedOnly);
        assert!(p.export.next_hop_self);
    }
}
