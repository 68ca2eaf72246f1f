//! NAT outgoing: traffic from a pool that asks for it (`natOutgoing`) to a
//! destination outside every pool is masqueraded to the node's address;
//! traffic between pool addresses never is.
//!
//! Twill keeps this in its own table, `inet twill-nat`, and touches no
//! other: the table is replaced in one `nft -j -f -` transaction (add,
//! delete, re-create, fill — atomic, so there is no moment without the
//! rules), read back with `nft -j list table inet twill-nat` only, and
//! deleted when no pool wants NAT. [`nat_config`] and [`ruleset`] are pure;
//! [`observed`] reads the configuration back out of nft's JSON so a
//! periodic check rewrites the table only when it drifted.
//!
//! Layout: interval sets `pools4`/`pools6` (every pool) and `nat4`/`nat6`
//! (pools with natOutgoing), and a `postrouting` NAT chain with
//! `ip saddr @nat4 ip daddr != @pools4 masquerade` (IPv6 alike).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};

use ipnetwork::IpNetwork;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField, Prefix};
use nftables::helper::{self, NftablesError};
use nftables::schema::{
    Chain, NfCmd, NfListObject, NfObject, Nftables, Rule, Set, SetFlag, SetType, SetTypeValue,
    Table,
};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use twill_api::resources::IPPool;

/// Twill's NAT table (family inet).
pub const NAT_TABLE: &str = "twill-nat";
const CHAIN: &str = "postrouting";
/// srcnat.
const PRIORITY: i32 = 100;

/// Why NAT could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("nft: {0}")]
    Nft(#[from] NftablesError),
}

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

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: NAT_TABLE.into(),
        handle: None,
    }
}

fn elem(n: &IpNetwork) -> Expression<'static> {
    if n.prefix() == if n.is_ipv4() { 32 } else { 128 } {
        Expression::String(n.ip().to_string().into())
    } else {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(Expression::String(n.network().to_string().into())),
            len: u32::from(n.prefix()),
        }))
    }
}

const SETS: [(&str, bool, bool); 4] = [
    ("pools4", true, false),
    ("nat4", true, true),
    ("pools6", false, false),
    ("nat6", false, true),
];

fn set(name: &'static str, v4: bool, nets: Vec<&IpNetwork>) -> Set<'static> {
    Set {
        family: NfFamily::INet,
        table: NAT_TABLE.into(),
        name: name.into(),
        set_type: SetTypeValue::Single(if v4 {
            SetType::Ipv4Addr
        } else {
            SetType::Ipv6Addr
        }),
        flags: Some(HashSet::from([SetFlag::Interval])),
        elem: (!nets.is_empty()).then(|| Cow::Owned(nets.into_iter().map(elem).collect())),
        ..Set::default()
    }
}

fn payload(proto: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: proto.into(),
            field: field.into(),
        },
    )))
}

/// The masquerade rule for one family.
fn rule_expr(v4: bool) -> Vec<Statement<'static>> {
    let (proto, nat, pools) = if v4 {
        ("ip", "@nat4", "@pools4")
    } else {
        ("ip6", "@nat6", "@pools6")
    };
    vec![
        Statement::Match(Match {
            left: payload(proto, "saddr"),
            right: Expression::String(nat.into()),
            op: Operator::EQ,
        }),
        Statement::Match(Match {
            left: payload(proto, "daddr"),
            right: Expression::String(pools.into()),
            op: Operator::NEQ,
        }),
        Statement::Masquerade(None),
    ]
}

/// The families that get a rule (those with a NAT pool).
fn families(cfg: &NatConfig) -> Vec<bool> {
    [true, false]
        .into_iter()
        .filter(|v4| cfg.nat.iter().any(|n| n.is_ipv4() == *v4))
        .collect()
}

/// The one transaction that makes the table implement `cfg`: create (so
/// the delete cannot fail), delete, and — when some pool wants NAT —
/// create again with its sets, chain and rules.
pub fn ruleset(cfg: &NatConfig) -> Nftables<'static> {
    let mut objs = vec![
        NfObject::CmdObject(NfCmd::Add(NfListObject::Table(table()))),
        NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(table()))),
    ];
    if !cfg.is_empty() {
        objs.push(NfObject::CmdObject(NfCmd::Add(
            NfListObject::Table(table()),
        )));
        for (name, v4, nat) in SETS {
            let src = if nat { &cfg.nat } else { &cfg.pools };
            let nets = src.iter().filter(|n| n.is_ipv4() == v4).collect();
            objs.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Set(
                Box::new(set(name, v4, nets)),
            ))));
        }
        objs.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Chain(
            Chain {
                family: NfFamily::INet,
                table: NAT_TABLE.into(),
                name: CHAIN.into(),
                _type: Some(NfChainType::NAT),
                hook: Some(NfHook::Postrouting),
                prio: Some(PRIORITY),
                policy: Some(NfChainPolicy::Accept),
                ..Chain::default()
            },
        ))));
        for v4 in families(cfg) {
            objs.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(Rule {
                family: NfFamily::INet,
                table: NAT_TABLE.into(),
                chain: CHAIN.into(),
                expr: Cow::Owned(rule_expr(v4)),
                handle: None,
                index: None,
                comment: None,
            }))));
        }
    }
    Nftables {
        objects: Cow::Owned(objs),
    }
}

fn net_of(e: &Expression) -> Option<IpNetwork> {
    match e {
        Expression::String(s) => s.parse::<std::net::IpAddr>().ok().map(IpNetwork::from),
        Expression::Named(NamedExpression::Prefix(p)) => match &*p.addr {
            Expression::String(s) => {
                IpNetwork::new(s.parse().ok()?, u8::try_from(p.len).ok()?).ok()
            }
            _ => None,
        },
        _ => None,
    }
}

/// The configuration a listing of our table implements, or None when the
/// table is not in the exact shape [`ruleset`] makes (a rule or the chain
/// missing or changed, an element nft could not express as a prefix).
pub fn observed(listing: &Nftables) -> Option<NatConfig> {
    let mut cfg = NatConfig::default();
    let mut sets_seen = 0;
    let mut chain_ok = false;
    let mut rules = Vec::new();
    for o in listing.objects.iter() {
        let NfObject::ListObject(o) = o else { continue };
        match o {
            NfListObject::Set(s) if s.table == NAT_TABLE => {
                let (_, _, nat) = SETS.iter().find(|(n, _, _)| *n == s.name)?;
                sets_seen += 1;
                for e in s.elem.iter().flat_map(|e| e.iter()) {
                    let n = net_of(e)?;
                    if *nat {
                        cfg.nat.insert(n);
                    } else {
                        cfg.pools.insert(n);
                    }
                }
            }
            NfListObject::Chain(c) if c.table == NAT_TABLE => {
                chain_ok = c.name == CHAIN
                    && c._type == Some(NfChainType::NAT)
                    && c.hook == Some(NfHook::Postrouting)
                    && c.prio == Some(PRIORITY);
            }
            NfListObject::Rule(r) if r.table == NAT_TABLE => rules.push(r.expr.to_vec()),
            _ => {}
        }
    }
    let want: Vec<Vec<Statement>> = families(&cfg).into_iter().map(rule_expr).collect();
    (sets_seen == SETS.len() && chain_ok && rules == want).then_some(cfg)
}

/// Our table as nft lists it, or None when it does not exist.
pub async fn read() -> Result<Option<Nftables<'static>>, NatError> {
    match helper::get_current_ruleset_with_args_async(
        helper::DEFAULT_NFT,
        ["list", "table", "inet", NAT_TABLE],
    )
    .await
    {
        Ok(n) => Ok(Some(n)),
        Err(NftablesError::NftFailed { stderr, .. }) if stderr.contains("No such file") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Makes the table implement `cfg`; returns whether anything was written.
pub async fn apply(cfg: &NatConfig) -> Result<bool, NatError> {
    let current = read().await?;
    let in_place = match &current {
        None => cfg.is_empty(),
        Some(listing) => !cfg.is_empty() && observed(listing).as_ref() == Some(cfg),
    };
    if in_place {
        return Ok(false);
    }
    helper::apply_ruleset_async(&ruleset(cfg)).await?;
    Ok(true)
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

    #[test]
    fn the_transaction_replaces_only_our_table() {
        let c = nat_config(&[pool("10.244.0.0/16", true), pool("10.96.0.0/16", false)]);
        let r = ruleset(&c);
        let json = serde_json::to_value(&r).unwrap();
        let text = json.to_string();
        for o in json["nftables"].as_array().unwrap() {
            let (_, body) = o.as_object().unwrap().iter().next().unwrap();
            let (_, obj) = body.as_object().unwrap().iter().next().unwrap();
            let t = obj.get("table").or(obj.get("name")).unwrap();
            assert_eq!(t, NAT_TABLE, "{o}");
            assert_eq!(obj["family"], "inet");
        }
        assert!(text.contains("masquerade"));
        assert!(text.contains("\"!=\""));
        // Only an IPv4 NAT pool: one rule.
        let rules = json["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["add"].get("rule").is_some())
            .count();
        assert_eq!(rules, 1);
    }

    #[test]
    fn no_nat_pool_means_the_table_is_removed() {
        let r = ruleset(&NatConfig::default());
        let json = serde_json::to_value(&r).unwrap();
        let cmds = json["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 2);
        assert!(cmds[1]["delete"]["table"].is_object());
    }

    #[test]
    fn a_listing_of_what_we_wrote_reads_back_as_the_same_config() {
        let c = nat_config(&[
            pool("10.244.0.0/16", true),
            pool("10.96.0.5/32", false),
            pool("fd00:10::/48", true),
        ]);
        // What nft lists: the same objects as list objects.
        let listing = Nftables {
            objects: Cow::Owned(
                ruleset(&c)
                    .objects
                    .iter()
                    .skip(3)
                    .filter_map(|o| match o {
                        NfObject::CmdObject(NfCmd::Add(l)) => Some(NfObject::ListObject(l.clone())),
                        _ => None,
                    })
                    .collect(),
            ),
        };
        assert_eq!(observed(&listing), Some(c.clone()));
        // A missing rule is drift.
        let mut fewer = listing.objects.to_vec();
        fewer.pop();
        assert_eq!(
            observed(&Nftables {
                objects: Cow::Owned(fewer)
            }),
            None
        );
    }
}
