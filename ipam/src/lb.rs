//! LoadBalancer IPAM, the pure part: which pool and address a Service of
//! type LoadBalancer gets, as one write of one IPAMBlock ([`LbStep`]).
//!
//! LoadBalancer addresses live in the same IPAMBlocks as pod addresses,
//! cut from pools whose `allowedUses` include `LoadBalancer`, with no node
//! affinity. One allocation (one ordinal) per address; its handle is
//! `lb:<service uid>`, or `lb-share:<namespace>/<sharing key>` for an
//! address Services share, and its attributes name every holder:
//! `service:<name>` = `<uid>|<PROTO/port,...>` (plus `use: LoadBalancer`
//! and the namespace). Because the holders and their ports are in the
//! block, joining a shared address is checked against the other holders'
//! ports by the same compare-and-swap that writes it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Service;
use twill_api::Selector;
use twill_api::resources::{Allocation, IPAMBlock, IPAMBlockSpec, IPPool, block_name};
use twill_api::service::{
    ANN_POOL, ANN_SHARING_KEY, NAMESPACE_LABEL, annotation, port_keys, requested_lb_ips,
    wanted_families,
};

use crate::blockmath::{
    addr_at, block_containing, block_len, first_unclaimed_block, next_free_ordinal, ordinal_of,
    overlapping_claimed,
};
use crate::plan::{Family, block_net, with_allocation};
use crate::{ATTR_CREATED, ATTR_NAMESPACE};

/// Allocation attribute: what the address is for (`LoadBalancer`).
pub const ATTR_USE: &str = "use";
/// The [`ATTR_USE`] value of LoadBalancer allocations.
pub const USE_LB: &str = "LoadBalancer";
/// Attribute key prefix of a holder: `service:<name>`.
pub const HOLDER_PREFIX: &str = "service:";

/// What one Service asks of LoadBalancer IPAM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbRequest {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The Service's labels plus [`NAMESPACE_LABEL`] (what serviceSelector sees).
    pub labels: BTreeMap<String, String>,
    /// Families in order, each with whether it is required.
    pub families: Vec<(Family, bool)>,
    /// Addresses asked for (at most one per family is used).
    pub requested: Vec<IpAddr>,
    /// Pools named by the `twill.dev/ip-pool` annotation (empty: any that selects the Service).
    pub pools: Vec<String>,
    pub sharing_key: Option<String>,
    /// `PROTO/port` of every Service port.
    pub ports: BTreeSet<String>,
}

/// One Service holding an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub name: String,
    pub uid: String,
    pub ports: BTreeSet<String>,
}

/// Why a Service gets no address; `reason()` is the condition's reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LbRefusal {
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "no enabled {family} IPPool with allowedUses LoadBalancer selects Service {service} (check the pools' serviceSelector, disabled and the twill.dev/ip-pool annotation)"
    )]
    NoPool { family: Family, service: String },
    #[error("IPPool {name:?} named by twill.dev/ip-pool {why}")]
    BadPool { name: String, why: String },
    #[error("{family} LoadBalancer pools {pools:?} have no free address")]
    Exhausted { family: Family, pools: Vec<String> },
    #[error(
        "requested address {addr} is outside every LoadBalancer IPPool Service {service} may use"
    )]
    OutsidePools { addr: IpAddr, service: String },
    #[error("requested address {addr} is taken by {by}")]
    Taken { addr: IpAddr, by: String },
    #[error(
        "address {addr} is shared under sharing key {key:?}, but port {port} clashes with Service {other}"
    )]
    PortClash {
        addr: IpAddr,
        key: String,
        port: String,
        other: String,
    },
}

impl LbRefusal {
    /// The status condition's reason (CamelCase, as Kubernetes wants).
    pub fn reason(&self) -> &'static str {
        match self {
            LbRefusal::BadRequest(_) => "InvalidRequest",
            LbRefusal::NoPool { .. } => "NoPool",
            LbRefusal::BadPool { .. } => "UnknownPool",
            LbRefusal::Exhausted { .. } => "PoolExhausted",
            LbRefusal::OutsidePools { .. } => "OutsidePools",
            LbRefusal::Taken { .. } => "AddressTaken",
            LbRefusal::PortClash { .. } => "PortClash",
        }
    }
}

fn family_of(v4: bool) -> Family {
    if v4 { Family::V4 } else { Family::V6 }
}

impl LbRequest {
    /// Reads the request from a Service (of type LoadBalancer).
    pub fn from_service(svc: &Service) -> Result<Self, LbRefusal> {
        let namespace = svc
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        // Communities are the announcing node's business, but a Service
        // whose annotation is no community is refused here too, where the
        // user sees it (on Kubernetes nothing else checks Twill's annotations).
        twill_api::service::bgp_communities(svc).map_err(|(_, r)| {
            LbRefusal::BadRequest(format!(
                "annotation {}: {r}",
                twill_api::service::ANN_BGP_COMMUNITIES
            ))
        })?;
        let mut labels = svc.metadata.labels.clone().unwrap_or_default();
        labels.insert(NAMESPACE_LABEL.into(), namespace.clone());
        Ok(LbRequest {
            name: svc.metadata.name.clone().unwrap_or_default(),
            uid: svc.metadata.uid.clone().unwrap_or_default(),
            labels,
            families: wanted_families(svc)
                .into_iter()
                .map(|(v4, req)| (family_of(v4), req))
                .collect(),
            requested: requested_lb_ips(svc).map_err(LbRefusal::BadRequest)?,
            pools: annotation(svc, ANN_POOL)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
            sharing_key: annotation(svc, ANN_SHARING_KEY).map(String::from),
            ports: port_keys(svc),
            namespace,
        })
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The handle of the allocation this Service holds or joins.
    pub fn handle(&self) -> String {
        match &self.sharing_key {
            Some(k) => format!("lb-share:{}/{k}", self.namespace),
            None => format!("lb:{}", self.uid),
        }
    }

    /// The address asked for in `family`, if any.
    pub fn requested_in(&self, family: Family) -> Option<IpAddr> {
        self.requested
            .iter()
            .copied()
            .find(|a| Family::of_addr(a) == family)
    }

    fn holder_value(&self) -> String {
        let ports: Vec<&str> = self.ports.iter().map(String::as_str).collect();
        format!("{}|{}", self.uid, ports.join(","))
    }
}

/// Whether an allocation is a LoadBalancer address.
pub fn is_lb(a: &Allocation) -> bool {
    a.attributes.get(ATTR_USE).map(String::as_str) == Some(USE_LB)
}

/// The Services holding a LoadBalancer allocation.
pub fn holders(a: &Allocation) -> Vec<Holder> {
    a.attributes
        .iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix(HOLDER_PREFIX)?;
            let (uid, ports) = v.split_once('|').unwrap_or((v.as_str(), ""));
            Some(Holder {
                name: name.to_string(),
                uid: uid.to_string(),
                ports: ports
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(String::from)
                    .collect(),
            })
        })
        .collect()
}

/// The namespace of a LoadBalancer allocation's holders.
pub fn namespace_of(a: &Allocation) -> &str {
    a.attributes
        .get(ATTR_NAMESPACE)
        .map(String::as_str)
        .unwrap_or("default")
}

/// One LoadBalancer address as found in the blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbAddress {
    pub addr: IpAddr,
    pub block: String,
    pub allocation: Allocation,
}

/// Every LoadBalancer allocation in the blocks, with its address.
pub fn lb_addresses(blocks: &[IPAMBlock]) -> Vec<LbAddress> {
    crate::allocator::allocations_where(blocks, is_lb)
        .into_iter()
        .map(|(addr, block, allocation)| LbAddress {
            addr,
            block,
            allocation,
        })
        .collect()
}

/// The addresses a Service (namespace, name, uid) holds, lowest first.
pub fn held_by(blocks: &[IPAMBlock], namespace: &str, name: &str, uid: &str) -> Vec<LbAddress> {
    let mut v: Vec<LbAddress> = lb_addresses(blocks)
        .into_iter()
        .filter(|l| namespace_of(&l.allocation) == namespace)
        .filter(|l| {
            holders(&l.allocation)
                .iter()
                .any(|h| h.name == name && h.uid == uid)
        })
        .collect();
    v.sort_by_key(|l| l.addr);
    v
}

/// The pools a request may take addresses from in `family`, in name order.
pub fn lb_pools<'a>(
    pools: &'a [IPPool],
    req: &LbRequest,
    family: Family,
) -> Result<Vec<&'a IPPool>, LbRefusal> {
    for name in &req.pools {
        match pools
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name.as_str()))
        {
            None => {
                return Err(LbRefusal::BadPool {
                    name: name.clone(),
                    why: "does not exist".into(),
                });
            }
            Some(p) if !p.spec.allows_load_balancers() => {
                return Err(LbRefusal::BadPool {
                    name: name.clone(),
                    why: "does not allow LoadBalancer (allowedUses)".into(),
                });
            }
            Some(_) => {}
        }
    }
    let mut out: Vec<&IPPool> = pools
        .iter()
        .filter(|p| !p.spec.disabled && p.spec.allows_load_balancers())
        .filter(|p| p.spec.network().is_some_and(|n| Family::of(&n) == family))
        .filter(|p| {
            if req.pools.is_empty() {
                p.spec
                    .service_selector
                    .as_deref()
                    .map(Selector::parse)
                    .unwrap_or(Ok(Selector::All))
                    .is_ok_and(|s| s.matches(&req.labels))
            } else {
                p.metadata
                    .name
                    .as_ref()
                    .is_some_and(|n| req.pools.contains(n))
            }
        })
        .collect();
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(out)
}

/// The one write that gives a request an address in a family.
#[derive(Clone, Debug, PartialEq)]
pub enum LbStep {
    /// Write `block` (read at its revision) back with the address allocated or joined.
    Update { block: IPAMBlock, addr: IpAddr },
    /// Create `block` with the allocation in it (fails if someone else created it first).
    Claim { block: IPAMBlock, addr: IpAddr },
}

impl LbStep {
    pub fn addr(&self) -> IpAddr {
        match self {
            LbStep::Update { addr, .. } | LbStep::Claim { addr, .. } => *addr,
        }
    }
}

fn in_pool(b: &IPAMBlock, pool: &IPPool) -> bool {
    b.spec.pool == pool.metadata.name.clone().unwrap_or_default()
        && matches!((block_net(b), pool.spec.network()),
            (Some(bn), Some(pn)) if pn.is_ipv4() == bn.is_ipv4() && pn.contains(bn.network()))
}

fn attributes(req: &LbRequest, now: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (ATTR_USE.to_string(), USE_LB.to_string()),
        (ATTR_NAMESPACE.to_string(), req.namespace.clone()),
        (ATTR_CREATED.to_string(), now.to_string()),
        (format!("{HOLDER_PREFIX}{}", req.name), req.holder_value()),
    ])
}

/// Who holds an allocation, for messages: `Service ns/a, ns/b`.
pub fn describe_holders(a: &Allocation) -> String {
    let ns = namespace_of(a);
    let hs: Vec<String> = holders(a)
        .iter()
        .map(|h| format!("{ns}/{}", h.name))
        .collect();
    if hs.is_empty() {
        format!("handle {:?}", a.handle)
    } else {
        format!("Service {}", hs.join(", "))
    }
}

/// Joins `req` to a shared allocation when its ports clash with no other holder's.
fn join(
    block: &IPAMBlock,
    a: &Allocation,
    addr: IpAddr,
    req: &LbRequest,
) -> Result<LbStep, LbRefusal> {
    for h in holders(a).iter().filter(|h| h.name != req.name) {
        if let Some(p) = h.ports.intersection(&req.ports).next() {
            return Err(LbRefusal::PortClash {
                addr,
                key: req.sharing_key.clone().unwrap_or_default(),
                port: p.clone(),
                other: format!("{}/{}", req.namespace, h.name),
            });
        }
    }
    let mut b = block.clone();
    if let Some(x) = b
        .spec
        .allocations
        .iter_mut()
        .find(|x| x.ordinal == a.ordinal)
    {
        x.attributes
            .insert(format!("{HOLDER_PREFIX}{}", req.name), req.holder_value());
    }
    Ok(LbStep::Update { block: b, addr })
}

fn new_block(pool: &IPPool, cidr: IpNetwork) -> IPAMBlock {
    let cidr = cidr.to_string();
    IPAMBlock::new(
        &block_name(&cidr),
        IPAMBlockSpec {
            cidr,
            affinity: None,
            pool: pool.metadata.name.clone().unwrap_or_default(),
            ..Default::default()
        },
    )
}

/// The ordinals of `block` never handed out unasked: the first and the last
/// address of a pool wider than a /31 (/127) — its network and broadcast
/// addresses, which some routers and clients treat specially (what
/// Cilium's LB-IPAM does by default). A Service asking for one by name
/// gets it.
pub fn never_chosen(pool: &IPPool, block: &IpNetwork) -> BTreeSet<u32> {
    let Some(pn) = pool.spec.network() else {
        return BTreeSet::new();
    };
    let width = if pn.is_ipv4() { 32 } else { 128 };
    if pn.prefix() + 1 >= width {
        return BTreeSet::new();
    }
    let last = match pn {
        IpNetwork::V4(n) => IpAddr::V4(n.broadcast()),
        IpNetwork::V6(n) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(n.network()) | (u128::MAX >> n.prefix()),
        )),
    };
    [pn.network(), last]
        .into_iter()
        .filter_map(|a| ordinal_of(block, a))
        .collect()
}

/// Plans the write that gives `req` an address in `family`: the requested
/// one, else a shared one under its sharing key, else a free one of the
/// first pool (by name) with one, claiming a new block when the existing
/// ones are full, never the pool's first or last address unasked
/// ([`never_chosen`]). `now` stamps the allocation.
pub fn plan_lb(
    pools: &[IPPool],
    blocks: &[IPAMBlock],
    req: &LbRequest,
    family: Family,
    now: &str,
) -> Result<LbStep, LbRefusal> {
    let eligible = lb_pools(pools, req, family)?;
    if eligible.is_empty() {
        return Err(LbRefusal::NoPool {
            family,
            service: req.key(),
        });
    }
    let handle = req.handle();
    if let Some(addr) = req.requested_in(family) {
        let Some(pool) = eligible
            .iter()
            .find(|p| p.spec.network().is_some_and(|n| n.contains(addr)))
        else {
            return Err(LbRefusal::OutsidePools {
                addr,
                service: req.key(),
            });
        };
        let pn = pool.spec.network().ok_or(LbRefusal::OutsidePools {
            addr,
            service: req.key(),
        })?;
        let cidr = block_containing(&pn, pool.spec.effective_block_size(), addr).ok_or(
            LbRefusal::OutsidePools {
                addr,
                service: req.key(),
            },
        )?;
        // Any block holding the address (even one cut differently) decides.
        let holding = blocks.iter().find(|b| {
            block_net(b).is_some_and(|n| n.contains(addr) && n.is_ipv4() == addr.is_ipv4())
        });
        let Some(b) = holding else {
            // A new block never overlaps an existing one of another size (a
            // pool whose blockSize changed): the largest aligned block
            // around the address that overlaps none.
            let claimed: BTreeSet<IpNetwork> = blocks.iter().filter_map(block_net).collect();
            let width = if addr.is_ipv4() { 32 } else { 128 };
            let cidr = (cidr.prefix()..=width)
                .filter_map(|p| IpNetwork::new(addr, p).ok())
                .filter_map(|n| IpNetwork::new(n.network(), n.prefix()).ok())
                .find(|n| overlapping_claimed(n, &claimed).is_none())
                .ok_or(LbRefusal::OutsidePools {
                    addr,
                    service: req.key(),
                })?;
            let ordinal = ordinal_of(&cidr, addr).ok_or(LbRefusal::OutsidePools {
                addr,
                service: req.key(),
            })?;
            let (block, _) = with_allocation(
                &new_block(pool, cidr),
                ordinal,
                &handle,
                attributes(req, now),
            );
            return Ok(LbStep::Claim { block, addr });
        };
        let net = block_net(b).ok_or(LbRefusal::OutsidePools {
            addr,
            service: req.key(),
        })?;
        if b.spec.affinity.is_some() || !in_pool(b, pool) {
            return Err(LbRefusal::Taken {
                addr,
                by: format!(
                    "IPAM block {} (not a LoadBalancer block of pool {:?})",
                    b.spec.cidr,
                    pool.metadata.name.as_deref().unwrap_or("")
                ),
            });
        }
        let ordinal = ordinal_of(&net, addr).ok_or(LbRefusal::OutsidePools {
            addr,
            service: req.key(),
        })?;
        return match b.spec.allocations.iter().find(|a| a.ordinal == ordinal) {
            None => {
                let (block, _) = with_allocation(b, ordinal, &handle, attributes(req, now));
                Ok(LbStep::Update { block, addr })
            }
            Some(a) if a.handle == handle && req.sharing_key.is_some() => join(b, a, addr, req),
            Some(a) if a.handle == handle => Ok(LbStep::Update {
                block: b.clone(),
                addr,
            }),
            Some(a) => Err(LbRefusal::Taken {
                addr,
                by: describe_holders(a),
            }),
        };
    }
    if req.sharing_key.is_some() {
        for b in blocks
            .iter()
            .filter(|b| eligible.iter().any(|p| in_pool(b, p)))
        {
            let Some(net) = block_net(b) else { continue };
            if let Some(a) = b.spec.allocations.iter().find(|a| a.handle == handle)
                && let Some(addr) = addr_at(&net, a.ordinal)
            {
                return join(b, a, addr, req);
            }
        }
    }
    for pool in &eligible {
        let mut mine: Vec<&IPAMBlock> = blocks
            .iter()
            .filter(|b| in_pool(b, pool) && b.spec.affinity.is_none())
            .collect();
        mine.sort_by(|a, b| a.spec.cidr.cmp(&b.spec.cidr));
        for b in mine {
            let Some(net) = block_net(b) else { continue };
            let mut taken: BTreeSet<u32> = b.spec.allocations.iter().map(|a| a.ordinal).collect();
            taken.extend(never_chosen(pool, &net));
            if let Some(ordinal) = next_free_ordinal(block_len(&net), &taken, b.spec.last_ordinal)
                && let Some(addr) = addr_at(&net, ordinal)
            {
                let (block, _) = with_allocation(b, ordinal, &handle, attributes(req, now));
                return Ok(LbStep::Update { block, addr });
            }
        }
        let Some(pn) = pool.spec.network() else {
            continue;
        };
        let mut claimed: BTreeSet<IpNetwork> = blocks
            .iter()
            .filter_map(block_net)
            .filter(|n| n.is_ipv4() == pn.is_ipv4())
            .collect();
        // A new block whose only addresses are never chosen (a /32 block
        // on the pool's first address) is passed over.
        while let Some(cidr) =
            first_unclaimed_block(&pn, pool.spec.effective_block_size(), &claimed)
        {
            let reserved = never_chosen(pool, &cidr);
            if let Some(ordinal) = next_free_ordinal(block_len(&cidr), &reserved, None)
                && let Some(addr) = addr_at(&cidr, ordinal)
            {
                let (block, _) = with_allocation(
                    &new_block(pool, cidr),
                    ordinal,
                    &handle,
                    attributes(req, now),
                );
                return Ok(LbStep::Claim { block, addr });
            }
            claimed.insert(cidr);
        }
    }
    Err(LbRefusal::Exhausted {
        family,
        pools: eligible
            .iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect(),
    })
}

/// The block without `name`'s holding (with `uid`) of the address at
/// `ordinal`; the allocation goes when its last holder does. `None` when
/// there is nothing to remove.
pub fn without_holder(
    block: &IPAMBlock,
    ordinal: u32,
    name: &str,
    uid: &str,
    now: &str,
) -> Option<IPAMBlock> {
    let mut b = block.clone();
    let pos = b
        .spec
        .allocations
        .iter()
        .position(|a| a.ordinal == ordinal && is_lb(a))?;
    let key = format!("{HOLDER_PREFIX}{name}");
    let held = holders(&b.spec.allocations[pos])
        .iter()
        .any(|h| h.name == name && h.uid == uid);
    if !held {
        return None;
    }
    b.spec.allocations[pos].attributes.remove(&key);
    if holders(&b.spec.allocations[pos]).is_empty() {
        b.spec.allocations.remove(pos);
        if b.spec.allocations.is_empty() {
            b.spec.empty_since = Some(now.to_string());
        }
    }
    Some(b)
}

/// A problem `twillctl ipam check` finds with LoadBalancer addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LbFinding {
    /// An address held in a block for Services none of which exists (or is
    /// still Twill's LoadBalancer with that uid).
    NoService {
        addr: IpAddr,
        block: String,
        holders: Vec<String>,
    },
    /// Several Services show the address but do not all hold it (or share it).
    TwoServices { addr: IpAddr, services: Vec<String> },
    /// A Service shows an address of a LoadBalancer pool the blocks do not give it.
    NotHeld { addr: IpAddr, service: String },
}

impl std::fmt::Display for LbFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LbFinding::NoService {
                addr,
                block,
                holders,
            } => write!(
                f,
                "LoadBalancer address {addr} (block {block}) is held for {}, but no such LoadBalancer Service exists: release it",
                holders.join(", ")
            ),
            LbFinding::TwoServices { addr, services } => write!(
                f,
                "LoadBalancer address {addr} is shown by Services {} that do not share it: rewrite their status from the blocks",
                services.join(", ")
            ),
            LbFinding::NotHeld { addr, service } => write!(
                f,
                "Service {service} shows LoadBalancer address {addr}, which the blocks do not give it: rewrite its status from the blocks"
            ),
        }
    }
}

impl LbFinding {
    /// The Services (`namespace/name`) whose reconcile repairs the finding.
    pub fn services(&self) -> Vec<String> {
        match self {
            LbFinding::NoService { holders, .. } => holders.clone(),
            LbFinding::TwoServices { services, .. } => services.clone(),
            LbFinding::NotHeld { service, .. } => vec![service.clone()],
        }
    }
}

/// Compares LoadBalancer allocations with the Services that exist and what
/// their status shows.
pub fn check(pools: &[IPPool], blocks: &[IPAMBlock], services: &[Service]) -> Vec<LbFinding> {
    let key = |s: &Service| {
        format!(
            "{}/{}",
            s.metadata.namespace.as_deref().unwrap_or("default"),
            s.metadata.name.as_deref().unwrap_or_default()
        )
    };
    let live: BTreeMap<String, &Service> = services.iter().map(|s| (key(s), s)).collect();
    let mut out = Vec::new();
    let mut holders_of: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
    for l in lb_addresses(blocks) {
        let ns = namespace_of(&l.allocation);
        let hs = holders(&l.allocation);
        let names: Vec<String> = hs.iter().map(|h| format!("{ns}/{}", h.name)).collect();
        let alive: BTreeSet<String> = hs
            .iter()
            .filter(|h| {
                live.get(&format!("{ns}/{}", h.name)).is_some_and(|s| {
                    s.metadata.uid.as_deref() == Some(h.uid.as_str())
                        && twill_api::service::is_twill_lb(s)
                })
            })
            .map(|h| format!("{ns}/{}", h.name))
            .collect();
        if alive.is_empty() {
            out.push(LbFinding::NoService {
                addr: l.addr,
                block: l.block.clone(),
                holders: names,
            });
        }
        holders_of.insert(l.addr, alive);
    }
    let lb_nets: Vec<IpNetwork> = pools
        .iter()
        .filter(|p| p.spec.allows_load_balancers())
        .filter_map(|p| p.spec.network())
        .collect();
    let mut shown: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    for s in services {
        let k = key(s);
        for a in twill_api::service::ingress_ips(s) {
            shown.entry(a).or_default().push(k.clone());
            let in_lb_pool = lb_nets.iter().any(|n| n.contains(a));
            if in_lb_pool && !holders_of.get(&a).is_some_and(|h| h.contains(&k)) {
                out.push(LbFinding::NotHeld {
                    addr: a,
                    service: k.clone(),
                });
            }
        }
    }
    for (addr, services) in shown {
        if services.len() > 1
            && !services
                .iter()
                .all(|s| holders_of.get(&addr).is_some_and(|h| h.contains(s)))
        {
            out.push(LbFinding::TwoServices { addr, services });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_api::resources::{AllowedUse, IPPoolSpec};

    fn lb_pool(name: &str, cidr: &str) -> IPPool {
        IPPool::new(
            name,
            IPPoolSpec {
                cidr: cidr.into(),
                allowed_uses: vec![AllowedUse::LoadBalancer],
                ..Default::default()
            },
        )
    }

    fn req(name: &str) -> LbRequest {
        LbRequest {
            namespace: "ns".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            labels: BTreeMap::from([(NAMESPACE_LABEL.to_string(), "ns".to_string())]),
            families: vec![(Family::V4, true)],
            requested: vec![],
            pools: vec![],
            sharing_key: None,
            ports: BTreeSet::from(["TCP/80".to_string()]),
        }
    }

    fn apply(blocks: &mut Vec<IPAMBlock>, step: LbStep) -> IpAddr {
        match step {
            LbStep::Update { block, addr } | LbStep::Claim { block, addr } => {
                blocks.retain(|b| b.metadata.name != block.metadata.name);
                blocks.push(block);
                addr
            }
        }
    }

    #[test]
    fn a_small_pool_is_one_block_and_runs_out_with_a_reason() {
        let pools = vec![lb_pool("lb", "192.0.2.0/29")];
        assert_eq!(pools[0].spec.effective_block_size(), 29);
        let mut blocks = vec![];
        let mut got = BTreeSet::new();
        for i in 0..6 {
            let s = plan_lb(&pools, &blocks, &req(&format!("s{i}")), Family::V4, "t").unwrap();
            assert!(got.insert(apply(&mut blocks, s)));
        }
        assert_eq!(blocks.len(), 1);
        // Six addresses: .1 to .6, never the network .0 nor the broadcast .7.
        let want: BTreeSet<IpAddr> = (1..=6)
            .map(|i| format!("192.0.2.{i}").parse().unwrap())
            .collect();
        assert_eq!(got, want);
        let e = plan_lb(&pools, &blocks, &req("s6"), Family::V4, "t").unwrap_err();
        assert_eq!(e.reason(), "PoolExhausted", "{e}");
        // Asked for by name, the broadcast address is given.
        let mut r = req("s7");
        r.requested = vec!["192.0.2.7".parse().unwrap()];
        let s = plan_lb(&pools, &blocks, &r, Family::V4, "t").unwrap();
        assert_eq!(s.addr(), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn first_and_last_of_a_pool_are_skipped_only_when_it_is_wider_than_a_31() {
        // A /31 (and /127) has no network or broadcast address: both are used.
        for (cidr, n) in [
            ("192.0.2.0/31", 2),
            ("fd00:1::/127", 2),
            ("fd00:1::/126", 2),
        ] {
            let pools = vec![lb_pool("lb", cidr)];
            let fam = if cidr.contains(':') {
                Family::V6
            } else {
                Family::V4
            };
            let mut blocks = vec![];
            for i in 0..n {
                let s = plan_lb(&pools, &blocks, &req(&format!("s{i}")), fam, "t").unwrap();
                apply(&mut blocks, s);
            }
            let e = plan_lb(&pools, &blocks, &req("x"), fam, "t").unwrap_err();
            assert_eq!(e.reason(), "PoolExhausted", "{cidr}: {e}");
        }
        // /32 blocks of a /24: the block of .0 is passed over, .255's too.
        let mut p = lb_pool("lb", "192.0.2.0/24");
        p.spec.block_size = Some(32);
        let s = plan_lb(&[p.clone()], &[], &req("a"), Family::V4, "t").unwrap();
        let LbStep::Claim { block, addr } = s else {
            panic!("a new block")
        };
        assert_eq!(addr, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(block.spec.cidr, "192.0.2.1/32");
        assert_eq!(
            never_chosen(&p, &"192.0.2.255/32".parse().unwrap()),
            BTreeSet::from([0])
        );
        // Later blocks of a pool hold neither end.
        let mut q = lb_pool("lb", "192.0.2.0/24");
        q.spec.block_size = Some(26);
        assert!(never_chosen(&q, &"192.0.2.64/26".parse().unwrap()).is_empty());
        assert_eq!(
            never_chosen(&q, &"192.0.2.192/26".parse().unwrap()),
            BTreeSet::from([63])
        );
    }

    #[test]
    fn requested_addresses_taken_outside_and_shared() {
        let pools = vec![
            lb_pool("lb", "192.0.2.0/28"),
            lb_pool("lb6", "fd00:1::/124"),
        ];
        let mut blocks = vec![];
        let mut a = req("a");
        a.requested = vec!["192.0.2.7".parse().unwrap()];
        let s = plan_lb(&pools, &blocks, &a, Family::V4, "t").unwrap();
        assert_eq!(
            apply(&mut blocks, s),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
        let mut b = req("b");
        b.requested = a.requested.clone();
        let e = plan_lb(&pools, &blocks, &b, Family::V4, "t").unwrap_err();
        assert_eq!(
            e.to_string(),
            "requested address 192.0.2.7 is taken by Service ns/a"
        );
        b.requested = vec!["198.51.100.1".parse().unwrap()];
        let e = plan_lb(&pools, &blocks, &b, Family::V4, "t").unwrap_err();
        assert_eq!(e.reason(), "OutsidePools", "{e}");
        // Sharing: same key, different ports joins; a clashing port is refused naming the holder.
        let mut blocks = vec![];
        let mut x = req("x");
        x.sharing_key = Some("k".into());
        let step = plan_lb(&pools, &blocks, &x, Family::V4, "t").unwrap();
        let first = apply(&mut blocks, step);
        let mut y = req("y");
        y.sharing_key = Some("k".into());
        y.ports = BTreeSet::from(["UDP/80".to_string()]);
        let step = plan_lb(&pools, &blocks, &y, Family::V4, "t").unwrap();
        let joined = apply(&mut blocks, step);
        assert_eq!(first, joined);
        let hs = holders(&lb_addresses(&blocks)[0].allocation);
        assert_eq!(hs.len(), 2);
        let mut z = req("z");
        z.sharing_key = Some("k".into());
        let e = plan_lb(&pools, &blocks, &z, Family::V4, "t").unwrap_err();
        assert!(
            e.to_string().contains("TCP/80 clashes with Service ns/x"),
            "{e}"
        );
        // Leaving: the address stays while another holder remains.
        let b0 = blocks[0].clone();
        let ord = b0.spec.allocations[0].ordinal;
        let after = without_holder(&b0, ord, "x", "uid-x", "t").unwrap();
        assert_eq!(after.spec.allocations.len(), 1);
        assert!(without_holder(&after, ord, "x", "uid-x", "t").is_none());
        let gone = without_holder(&after, ord, "y", "uid-y", "t").unwrap();
        assert!(gone.spec.allocations.is_empty());
        assert_eq!(gone.spec.empty_since.as_deref(), Some("t"));
    }

    #[test]
    fn a_requested_address_never_gets_a_block_overlapping_another() {
        // The pool had /30 blocks; now /28: the block claimed for .9 must not cover .0/30.
        let mut pool = lb_pool("lb", "192.0.2.0/28");
        pool.spec.block_size = Some(30);
        let pools = vec![pool.clone()];
        let mut blocks = vec![];
        let first = plan_lb(&pools, &blocks, &req("a"), Family::V4, "t").unwrap();
        apply(&mut blocks, first);
        let pools = vec![{
            let mut p = pool;
            p.spec.block_size = Some(28);
            p
        }];
        let mut r = req("b");
        r.requested = vec!["192.0.2.9".parse().unwrap()];
        let LbStep::Claim { block, addr } = plan_lb(&pools, &blocks, &r, Family::V4, "t").unwrap()
        else {
            panic!("expected a new block");
        };
        assert_eq!(addr, "192.0.2.9".parse::<IpAddr>().unwrap());
        assert_eq!(block.spec.cidr, "192.0.2.8/29");
    }

    /// On Kubernetes nothing checks Twill's annotations before the
    /// allocator: a community list that is not one leaves the Service
    /// pending with the reason, naming the annotation and the entry.
    #[test]
    fn an_invalid_community_annotation_is_an_invalid_request() {
        let svc = |ann: &str| -> Service {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "web", "namespace": "shop", "uid": "u",
                             "annotations": {"twill.dev/bgp-communities": ann}},
                "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
            }))
            .unwrap()
        };
        let e = LbRequest::from_service(&svc("65000:1,1:2:3:4")).unwrap_err();
        assert_eq!(e.reason(), "InvalidRequest");
        assert!(
            e.to_string().contains("twill.dev/bgp-communities")
                && e.to_string().contains("1:2:3:4"),
            "{e}"
        );
        assert!(LbRequest::from_service(&svc("65000:1,1:2:3")).is_ok());
    }

    #[test]
    fn selection_by_annotation_selector_and_namespace() {
        let mut sel = lb_pool("blue", "192.0.2.0/28");
        sel.spec.service_selector = Some("twill.dev/namespace == 'shop'".into());
        let pools = vec![sel, lb_pool("red", "198.51.100.0/28")];
        let mut r = req("a");
        let only_red = lb_pools(&pools, &r, Family::V4).unwrap();
        assert_eq!(only_red.len(), 1);
        r.labels.insert(NAMESPACE_LABEL.into(), "shop".into());
        assert_eq!(lb_pools(&pools, &r, Family::V4).unwrap().len(), 2);
        r.pools = vec!["red".into()];
        let p = lb_pools(&pools, &r, Family::V4).unwrap();
        assert_eq!(p[0].metadata.name.as_deref(), Some("red"));
        r.pools = vec!["nope".into()];
        assert_eq!(
            lb_pools(&pools, &r, Family::V4).unwrap_err().reason(),
            "UnknownPool"
        );
        assert_eq!(
            plan_lb(&pools, &[], &req("a"), Family::V6, "t")
                .unwrap_err()
                .reason(),
            "NoPool"
        );
    }
}
