//! What this node announces (pure): every block it owns, and every address
//! it borrowed from another node's block as a /32 (/128); nothing from a
//! pool with `disableBGPExport`; IPv6 prefixes only with an IPv6 next hop;
//! communities from the BGPConfiguration's `prefixAdvertisements` (the
//! node's own `node.<name>` list wins over `default`'s).

use std::collections::BTreeSet;

use ipnetwork::IpNetwork;
use twill_api::resources::{BGPConfiguration, IPAMBlock, IPPool};
use twill_bgpd::policy::PolicyError;

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
}
