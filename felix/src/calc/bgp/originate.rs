//! What this node announces (pure): every block it owns, and every address
//! it borrowed from another node's block as a /32 (/128); nothing from a
//! pool with `disableBGPExport`; IPv6 prefixes only with an IPv6 next hop;
//! communities from the BGPConfiguration's `prefixAdvertisements` (the
//! node's own `node.<name>` list wins over `default`'s); and the Service
//! prefixes [`from_services`] gives (bounded by the `default`
//! BGPConfiguration's `serviceClusterIPs`/`serviceExternalIPs`/
//! `serviceLoadBalancerIPs`), each with the communities of
//! [`service_communities`] added: its LoadBalancer pool's `bgpCommunities`
//! and its Services' `twill.dev/bgp-communities`.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use twill_api::resources::bgpconfig::{Community as ApiCommunity, parse_community};
use twill_api::resources::{BGPConfiguration, IPAMBlock, IPPool};
use twill_api::service::{ServiceAdvertisement, announced_prefixes, bgp_communities, service_key};
use twill_bgpd::policy::PolicyError;
use twill_bgpd::types::{Community, LargeCommunity, PathAttrs};

use super::from_api::Advertisements;

/// The prefixes the blocks give this node to announce.
pub fn from_blocks(blocks: &[IPAMBlock], node: &str) -> BTreeSet<IpNetwork> {
    let mut want: BTreeSet<IpNetwork> =
        twill_ipam::owned_blocks(blocks, node).into_iter().collect();
    want.extend(
        twill_ipam::borrowed_addresses(blocks, node)
            .into_iter()
            .filter_map(|a| IpNetwork::new(a, if a.is_ipv4() { 32 } else { 128 }).ok()),
    );
    want
}

/// Service prefixes, each with the Services that make it announced.
pub type ServicePrefixes = BTreeMap<IpNetwork, BTreeSet<String>>;

/// The Service prefixes this node announces, each with the Services that
/// make it announced: [`announced_prefixes`] under the `default`
/// BGPConfiguration's service CIDRs (Calico's rule: only the cluster-wide
/// configuration says which Service addresses are announced; none, or no
/// `default`, announces nothing). A Service whose
/// `twill.dev/bgp-communities` is no list of communities makes nothing
/// announced (announcing it without the communities it asks for, say a
/// `no-export`, could carry it further than meant); it is in the second
/// list, `namespace/name` with the reason, for the caller to log.
pub fn from_services(
    node: &str,
    services: &[impl Borrow<Service>],
    slices: &[impl Borrow<EndpointSlice>],
    configs: &[BGPConfiguration],
) -> (ServicePrefixes, Vec<(String, String)>) {
    let adv = configs
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("default"))
        .map(|c| ServiceAdvertisement::from_spec(&c.spec))
        .unwrap_or_default();
    let mut refused = Vec::new();
    let valid: Vec<&Service> = services
        .iter()
        .map(Borrow::borrow)
        .filter(|s| match bgp_communities(s) {
            Ok(_) => true,
            Err((_, r)) => {
                refused.push((service_key(s), r));
                false
            }
        })
        .collect();
    (announced_prefixes(node, &valid, slices, &adv), refused)
}

fn add(attrs: &mut PathAttrs, c: ApiCommunity) {
    match c {
        ApiCommunity::Standard(v) => attrs.add_community(Community(v)),
        ApiCommunity::Large(global, local1, local2) => attrs.add_large_community(LargeCommunity {
            global,
            local1,
            local2,
        }),
    }
}

/// Adds to `attrs` (already holding the BGPConfiguration's
/// prefixAdvertisements communities) the communities of a Service prefix:
/// `bgpCommunities` of the LoadBalancer pool holding its address (host
/// routes only: a cluster IP CIDR is no pool's), and the
/// `twill.dev/bgp-communities` of every Service in `by` (the Services that
/// make it announced; several when they share the address). The union:
/// nothing anyone asked for is dropped.
pub fn service_communities(
    attrs: &mut PathAttrs,
    prefix: &IpNetwork,
    by: &BTreeSet<String>,
    services: &[impl Borrow<Service>],
    pools: &[IPPool],
) {
    let host = prefix.prefix() == if prefix.is_ipv4() { 32 } else { 128 };
    if host {
        for pool in pools.iter().filter(|p| p.spec.allows_load_balancers()) {
            if pool.spec.network().is_some_and(|n| n.contains(prefix.ip())) {
                for c in pool.spec.bgp_communities.iter() {
                    if let Ok(c) = parse_community(c) {
                        add(attrs, c);
                    }
                }
            }
        }
    }
    for s in services
        .iter()
        .map(Borrow::borrow)
        .filter(|s| by.contains(&service_key(s)))
    {
        for c in bgp_communities(s).unwrap_or_default() {
            add(attrs, c);
        }
    }
}

/// Of `want`, what is announced: nothing inside a pool that disables BGP
/// export, and IPv6 only when the node has an IPv6 next hop.
pub fn exported(
    mut want: BTreeSet<IpNetwork>,
    pools: &[IPPool],
    ipv6: bool,
) -> BTreeSet<IpNetwork> {
    let no_export: Vec<IpNetwork> = pools
        .iter()
        .filter(|p| p.spec.disable_bgp_export)
        .filter_map(|p| p.spec.cidr.parse().ok())
        .collect();
    want.retain(|p| !no_export.iter().any(|n| n.contains(p.ip())));
    if !ipv6 {
        want.retain(|p| p.is_ipv4());
    }
    want
}

/// The communities to announce with: the node's own `node.<name>`
/// configuration's list when it has one, else `default`'s.
pub fn advertisements(
    node: &str,
    configs: &[BGPConfiguration],
) -> Result<Advertisements, PolicyError> {
    let named = |n: &str| {
        configs
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(n))
    };
    let own = format!("node.{node}");
    named(&own)
        .filter(|c| !c.spec.prefix_advertisements.is_empty())
        .or_else(|| named("default"))
        .map(|c| Advertisements::from_api(&c.spec))
        .transpose()
        .map(Option::unwrap_or_default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_api::resources::IPPoolSpec;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn pools_without_export_and_ipv6_without_a_next_hop_are_not_announced() {
        let mut pool = IPPool::new(
            "quiet",
            IPPoolSpec {
                cidr: "10.9.0.0/16".into(),
                disable_bgp_export: true,
                ..Default::default()
            },
        );
        let want: BTreeSet<IpNetwork> =
            [net("10.9.1.0/26"), net("10.8.0.0/26"), net("fd00::/122")].into();
        let out = exported(want.clone(), std::slice::from_ref(&pool), true);
        assert_eq!(out, [net("10.8.0.0/26"), net("fd00::/122")].into());
        assert_eq!(exported(want.clone(), &[], false).len(), 2);
        pool.spec.disable_bgp_export = false;
        assert_eq!(exported(want.clone(), &[pool], true), want);
    }

    fn config(name: &str, lb: &str) -> BGPConfiguration {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "twill.dev/v1", "kind": "BGPConfiguration",
            "metadata": {"name": name},
            "spec": {"serviceLoadBalancerIPs": [{"cidr": lb}]},
        }))
        .unwrap()
    }

    #[test]
    fn service_prefixes_come_only_from_the_default_configuration() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10",
                     "externalTrafficPolicy": "Cluster",
                     "ports": [{"port": 80, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.5"}]}},
        }))
        .unwrap();
        let svcs = std::slice::from_ref(&svc);
        // A node's own configuration does not say what Services announce.
        let own = [config("node.a", "192.0.2.0/24")];
        assert!(
            from_services("a", svcs, &[] as &[EndpointSlice], &own)
                .0
                .is_empty()
        );
        let def = [config("default", "192.0.2.0/24")];
        let (got, _) = from_services("a", svcs, &[] as &[EndpointSlice], &def);
        assert_eq!(
            got.keys().copied().collect::<Vec<_>>(),
            [net("192.0.2.5/32")]
        );
        // Outside the configured CIDR: nothing.
        let other = [config("default", "198.51.100.0/24")];
        assert!(
            from_services("a", svcs, &[] as &[EndpointSlice], &other)
                .0
                .is_empty()
        );
    }

    #[test]
    fn service_prefixes_carry_pool_and_service_communities() {
        use twill_api::resources::AllowedUse;
        let svc = |name: &str, ann: &str| -> Service {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "shop",
                             "annotations": {"twill.dev/bgp-communities": ann}},
                "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Cluster",
                         "ports": [{"port": 80, "protocol": "TCP"}]},
                "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.5"}]}},
            }))
            .unwrap()
        };
        let pool = IPPool::new(
            "lb",
            IPPoolSpec {
                cidr: "192.0.2.0/28".into(),
                allowed_uses: vec![AllowedUse::LoadBalancer],
                bgp_communities: vec!["65000:1".into(), "65000:7:7".into()],
                ..Default::default()
            },
        );
        let svcs = [svc("a", "65000:100,no-export"), svc("b", "65000:1")];
        let by: BTreeSet<String> = ["shop/a".to_string(), "shop/b".to_string()].into();
        // The BGPConfiguration's communities are already there and stay.
        let mut attrs = PathAttrs::default();
        attrs.add_community(Community::new(64512, 9));
        service_communities(
            &mut attrs,
            &net("192.0.2.5/32"),
            &by,
            &svcs,
            std::slice::from_ref(&pool),
        );
        assert_eq!(
            attrs.communities,
            vec![
                Community::new(64512, 9),
                Community::new(65000, 1),
                Community::new(65000, 100),
                Community::NO_EXPORT
            ]
        );
        assert_eq!(attrs.large_communities.len(), 1);
        // Only the Services that make the prefix announced, and no pool
        // community on a CIDR (the cluster IP range).
        let mut attrs = PathAttrs::default();
        let only_b: BTreeSet<String> = ["shop/b".to_string()].into();
        service_communities(&mut attrs, &net("192.0.2.0/28"), &only_b, &svcs, &[pool]);
        assert_eq!(attrs.communities, vec![Community::new(65000, 1)]);
        assert!(attrs.large_communities.is_empty());
        // A Service whose annotation is no community announces nothing and is reported.
        let bad = [svc("c", "65000:100,70000:1")];
        let (got, refused) = from_services(
            "a",
            &bad,
            &[] as &[EndpointSlice],
            &[config("default", "192.0.2.0/24")],
        );
        assert!(got.is_empty());
        assert_eq!(refused.len(), 1);
        assert!(
            refused[0].0 == "shop/c" && refused[0].1.contains("70000:1"),
            "{refused:?}"
        );
    }
}
