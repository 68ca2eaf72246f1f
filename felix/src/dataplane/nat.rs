//! The NAT outgoing manager: Twill's own table `inet twill-nat`, and no
//! other. What it implements comes from the pools ([`crate::calc::nat`]);
//! here it becomes one `nft -j -f -` transaction (add, delete, re-create,
//! fill: atomic, never a moment without the rules), is read back with
//! `nft -j list table inet twill-nat` only, and is deleted when no pool
//! wants NAT. [`ruleset`] and [`observed`] are pure; [`NatTable`] is the
//! [`Manager`], and [`run`] rewrites the table only when it differs.
//!
//! Layout: interval sets `pools4`/`pools6` (every pool) and `nat4`/`nat6`
//! (pools with natOutgoing), and a `postrouting` NAT chain with
//! `ip saddr @nat4 ip daddr != @pools4 masquerade` (IPv6 alike).

use std::borrow::Cow;
use std::collections::HashSet;
use std::time::Duration;

use ipnetwork::IpNetwork;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField, Prefix};
use nftables::helper::{self, NftablesError};
use nftables::schema::{
    Chain, NfCmd, NfListObject, NfObject, Nftables, Rule, Set, SetFlag, SetType, SetTypeValue,
    Table,
};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use tokio::sync::watch;
use twill_api::resources::IPPool;
use twill_api::store::retry::Backoff;

use super::{Manager, Requeue, reconcile};
pub use crate::calc::nat::NatConfig;
use crate::calc::nat::nat_config;

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
    #[error("reading table inet {NAT_TABLE}: {0}")]
    Read(String),
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

/// Our table as nft lists it, or None when it does not exist. Read through
/// libnftables in this process when it loads (the `nft` binary otherwise):
/// the check runs every resync interval on every node, and a process
/// start per check was most of an idle agent's nft cost.
pub async fn read() -> Result<Option<Nftables<'static>>, NatError> {
    let listing = tokio::task::spawn_blocking(|| twill_nft::list_table_json("inet", NAT_TABLE))
        .await
        .map_err(|e| NatError::Read(e.to_string()))?
        .map_err(|e| NatError::Read(e.to_string()))?;
    listing
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| NatError::Read(format!("nft's listing of {NAT_TABLE}: {e}")))
}

/// The NAT table's manager: the kernel table is all its state.
#[derive(Debug, Default)]
pub struct NatTable;

/// What the kernel holds of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kernel {
    Absent,
    /// The table, in the shape [`ruleset`] makes, implementing this.
    Holds(NatConfig),
    /// The table, in another shape (a rule or set changed or missing).
    Drifted,
}

/// A rewrite of the table.
pub struct Write {
    pub config: NatConfig,
    pub ruleset: Nftables<'static>,
}

impl Manager for NatTable {
    type Inputs = [IPPool];
    type Desired = NatConfig;
    type Observed = Kernel;
    /// None: the table is as it should be.
    type Diff = Option<Write>;
    /// The configuration written, if anything was.
    type Report = Option<NatConfig>;
    type Error = NatError;

    async fn observe(&mut self, _: &[IPPool]) -> Result<Kernel, NatError> {
        Ok(match read().await? {
            None => Kernel::Absent,
            Some(listing) => observed(&listing).map_or(Kernel::Drifted, Kernel::Holds),
        })
    }

    fn desired(&mut self, pools: &[IPPool]) -> NatConfig {
        nat_config(pools)
    }

    fn diff(&mut self, want: NatConfig, kernel: Kernel) -> Option<Write> {
        let in_place = match &kernel {
            Kernel::Absent => want.is_empty(),
            Kernel::Holds(have) => !want.is_empty() && *have == want,
            Kernel::Drifted => false,
        };
        (!in_place).then(|| Write {
            ruleset: ruleset(&want),
            config: want,
        })
    }

    async fn apply(&mut self, diff: Option<Write>) -> Result<Option<NatConfig>, NatError> {
        let Some(w) = diff else { return Ok(None) };
        helper::apply_ruleset_async(&w.ruleset).await?;
        Ok(Some(w.config))
    }
}

/// Keeps the table in line with the pools (`None` until their first
/// listing): a pass on every change and every `every`, which repairs
/// drift; a failed pass is retried with backoff (1 s doubling, at most
/// `every`).
pub async fn run(mut pools: watch::Receiver<Option<Vec<IPPool>>>, every: Duration) {
    let mut table = NatTable;
    let mut requeue = Requeue::new("NAT outgoing table", Backoff::watch());
    loop {
        let mut wait = every;
        let listed = pools.borrow_and_update().clone();
        if let Some(listed) = listed {
            let r = reconcile(&mut table, &listed).await;
            if let Ok(Some(written)) = &r {
                tracing::info!(nat = ?written.nat, "NAT outgoing table written");
            }
            if let Some(delay) = requeue.after(&r) {
                wait = delay.min(every);
            }
        }
        if let Ok(Err(_)) = tokio::time::timeout(wait, pools.changed()).await {
            return; // the pool follower is gone
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn config(pools: &[&str], nat: &[&str]) -> NatConfig {
        let set =
            |l: &[&str]| -> BTreeSet<IpNetwork> { l.iter().map(|s| s.parse().unwrap()).collect() };
        NatConfig {
            pools: set(pools),
            nat: set(nat),
        }
    }

    #[test]
    fn the_transaction_replaces_only_our_table() {
        let c = config(&["10.244.0.0/16", "10.96.0.0/16"], &["10.244.0.0/16"]);
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
        let c = config(
            &["10.244.0.0/16", "10.96.0.5/32", "fd00:10::/48"],
            &["10.244.0.0/16", "fd00:10::/48"],
        );
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
        assert!(NatTable.diff(c.clone(), Kernel::Holds(c.clone())).is_none());
        assert!(NatTable.diff(c.clone(), Kernel::Drifted).is_some());
        assert!(
            NatTable
                .diff(NatConfig::default(), Kernel::Absent)
                .is_none()
        );
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
