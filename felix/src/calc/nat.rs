//! NAT outgoing from the pools (pure): which sources are masqueraded
//! (pools with `natOutgoing`) and which destinations never are (every
//! pool). [`crate::dataplane::nat`] writes it as the `inet twill-nat` table.

use std::collections::BTreeSet;

use ipnetwork::IpNetwork;
use twill_api::resources::IPPool;

/// What the NAT table implements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatConfig {
    /// Every pool's CIDR (destinations that are never NATed).
    pub pools: BTreeSet<IpNetwork>,
    /// CIDRs of the pools with natOutgoing (sources that are).
    pub nat: BTreeSet<IpNetwork>,
}

impl NatConfig {
    /// No pool wants NAT: the table should not exist.
    pub fn is_empty(&self) -> bool {
        self.nat.is_empty()
    }
}

/// Drops prefixes contained in another one (interval sets reject overlaps).
fn collapse(nets: impl IntoIterator<Item = IpNetwork>) -> BTreeSet<IpNetwork> {
    let all: Vec<IpNetwork> = nets
        .into_iter()
        .map(|n| IpNetwork::new(n.network(), n.prefix()).unwrap_or(n))
        .collect();
    all.iter()
        .filter(|n| {
            !all.iter().any(|o| {
                o != *n
                    && o.is_ipv4() == n.is_ipv4()
                    && o.prefix() <= n.prefix()
                    && o.contains(n.network())
            })
        })
        .copied()
        .collect()
}

/// The NAT configuration the pools ask for (disabled pools included: their
/// addresses are still in use).
pub fn nat_config(pools: &[IPPool]) -> NatConfig {
    let nets = |nat_only: bool| {
        collapse(
            pools
                .iter()
                .filter(|p| !nat_only || p.spec.nat_outgoing)
                .filter_map(|p| p.spec.network()),
        )
    };
    NatConfig {
        pools: nets(false),
        nat: nets(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_api::resources::IPPoolSpec;

    fn pool(cidr: &str, nat: bool) -> IPPool {
        IPPool::new(
            "p",
            IPPoolSpec {
                cidr: cidr.into(),
                block_size: None,
                nat_outgoing: nat,
                node_selector: None,
                disabled: false,
                disable_bgp_export: false,
                allowed_uses: vec![],
                strict_affinity: false,
                service_selector: None,
                bgp_communities: vec![],
            },
        )
    }
    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn config_separates_nat_pools_from_all_pools() {
        let c = nat_config(&[
            pool("10.244.0.0/16", true),
            pool("10.96.0.0/16", false),
            pool("fd00:10::/48", true),
        ]);
        assert_eq!(
            c.pools,
            [
                net("10.244.0.0/16"),
                net("10.96.0.0/16"),
                net("fd00:10::/48")
            ]
            .into()
        );
        assert_eq!(c.nat, [net("10.244.0.0/16"), net("fd00:10::/48")].into());
        assert!(nat_config(&[pool("10.96.0.0/16", false)]).is_empty());
    }

    #[test]
    fn nested_pools_collapse_into_the_outer_one() {
        let c = nat_config(&[pool("10.244.0.0/16", true), pool("10.244.8.0/24", true)]);
        assert_eq!(c.nat, [net("10.244.0.0/16")].into());
    }
}
