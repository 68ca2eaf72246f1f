//! The service proxy's tables (pure): from what the node does with each
//! Service ([`twill_api::service_proxy::proxy_model`]) to the nftables
//! objects that do it ([`SvcTable`], one table's worth), as one script that
//! replaces a table ([`SvcTable::full_script`]) or one that takes the
//! kernel from one table to the next ([`SvcTable::diff_script`]); the
//! Services spread over [`SHARDS`] tables and rendered only when they
//! change: [`shards`].
//!
//! The design is kube-proxy's nftables mode: one verdict-map lookup keyed
//! `daddr . l4proto . dport` per packet (`svc4`/`svc6`; node ports in
//! `nodeports4`/`6` behind `fib daddr type local`), whatever the number of
//! Services; a chain per Service port that picks an endpoint with one
//! `numgen random mod k 0 goto` rule per endpoint (kube-proxy's anonymous
//! `vmap` here made a full load quadratic in the kernel); a chain per
//! endpoint that DNATs. Frontends with
//! nothing to send to are refused at once (their element's verdict is
//! `goto refuse`: TCP reset, ICMP port unreachable, from the same NAT
//! chains, which only a connection's first packet passes), or
//! dropped where Kubernetes says so (external traffic under the Local
//! policy on a node without a local endpoint). Masquerade only where the
//! reply would otherwise miss this node: external traffic under the
//! Cluster policy, and a pod reaching itself (hairpin). Layout and
//! reasons: docs/service-proxy.md.

pub mod shards;
pub mod synthetic;

pub use shards::{Part, Renderer, TableOps, Tables, shard_of};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use twill_api::service_proxy::{
    Endpoint, EndpointSet, Family, Frontend, ServicePortProxy, proxy_model,
};

/// How many tables the Services are spread over ([`shards`]): a commit
/// makes the kernel re-check the jumps of the whole table it touches, so a
/// change at 10,000 Services re-checks one eighth of them.
pub const SHARDS: usize = 8;
/// The tables' names: `twill-svc-0` … `twill-svc-7` (family `inet`).
pub fn table_name(shard: usize) -> String {
    format!("twill-svc-{shard}")
}
/// The tables, for people: `inet twill-svc-0 … twill-svc-7`.
pub const TABLES: &str = "inet twill-svc-0 … twill-svc-7";
/// The one table earlier versions wrote; deleted by every full write.
pub const LEGACY_TABLE_NAME: &str = "twill-svc";
/// The packet mark bit that asks for masquerade in postrouting (distinct
/// from the policy table's pass mark, 0x02000000).
pub const MASQ_MARK: u32 = 0x0400_0000;
/// Priority of the NAT chains at prerouting and output (`dstnat`): before
/// routing, so everything after — the policy table's filter chains at
/// forward and input included — sees the endpoint, not the Service address.
pub const DSTNAT_PRIORITY: i32 = -100;
/// Priority of the masquerade chain (`srcnat`).
pub const SRCNAT_PRIORITY: i32 = 100;
/// One of the fixed verdict maps, with its key type.
const MAPS: [(&str, &str); 4] = [
    ("svc4", "ipv4_addr . inet_proto . inet_service"),
    ("svc6", "ipv6_addr . inet_proto . inet_service"),
    ("nodeports4", "inet_proto . inet_service"),
    ("nodeports6", "inet_proto . inet_service"),
];

/// The fixed chains: base chains (with their hook) and the helpers every
/// Service chain uses, with their rules.
fn fixed_chains() -> Vec<(&'static str, Option<String>, Vec<String>)> {
    let base = |ty: &str, hook: &str, prio: i32| {
        Some(format!(
            "type {ty} hook {hook} priority {prio}; policy accept;"
        ))
    };
    vec![
        (
            "nat-prerouting",
            base("nat", "prerouting", DSTNAT_PRIORITY),
            vec!["jump services".into()],
        ),
        (
            "nat-output",
            base("nat", "output", DSTNAT_PRIORITY),
            vec!["jump services".into()],
        ),
        (
            "nat-postrouting",
            base("nat", "postrouting", SRCNAT_PRIORITY),
            vec!["jump masquerading".into()],
        ),
        (
            "services",
            None,
            vec![
                "ip daddr . meta l4proto . th dport vmap @svc4".into(),
                "ip6 daddr . meta l4proto . th dport vmap @svc6".into(),
                "meta nfproto ipv4 fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @nodeports4".into(),
                "meta nfproto ipv6 fib daddr type local ip6 daddr != ::1 meta l4proto . th dport vmap @nodeports6".into(),
            ],
        ),
        (
            "refuse",
            None,
            vec![
                "meta l4proto tcp reject with tcp reset".into(),
                "reject with icmpx port-unreachable".into(),
            ],
        ),
        (
            "mark-for-masquerade",
            None,
            vec![format!("meta mark set meta mark | {MASQ_MARK:#010x}")],
        ),
        (
            "masquerading",
            None,
            vec![
                format!("meta mark & {MASQ_MARK:#010x} == 0 return"),
                format!("meta mark set meta mark & {:#010x}", !MASQ_MARK),
                "masquerade fully-random".into(),
            ],
        ),
    ]
}

/// A chain: its hook line (base chains) and its rules, as nft text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainDef {
    pub hook: Option<String>,
    pub rules: Vec<String>,
}

/// The whole table as nft objects: what a full script creates, what a diff
/// compares, what the kernel's listing is checked against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SvcTable {
    /// Chain name → definition.
    pub chains: BTreeMap<String, ChainDef>,
    /// Session-affinity sets: name → declaration (`type …; flags …; timeout …;`).
    pub sets: BTreeMap<String, String>,
    /// Verdict map → key (`10.96.0.1 . tcp . 80`) → verdict (`goto svc-…`, `drop`).
    pub maps: BTreeMap<String, BTreeMap<String, String>>,
}

/// Characters nft takes in an unquoted name after the first.
fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.')
}

/// A chain or set name `prefix` + `body` that nft takes unquoted and the
/// kernel keeps (at most 255 bytes): IPv6 colons become `_`; anything
/// else outside nft's name characters (only possible in a port name the
/// API server would refuse) becomes `_` and adds a hash of the original.
fn ident(prefix: &str, body: &str) -> String {
    let clean: String = body
        .chars()
        .map(|c| if name_char(c) { c } else { '_' })
        .collect();
    let body_colons_only = body.chars().all(|c| name_char(c) || c == ':');
    let body = if body_colons_only {
        clean
    } else {
        format!("{clean}-{:016x}", twill_policy::ir::fnv(body))
    };
    twill_policy::ir::fit_name(prefix, &body, "")
}

fn fam_tag(p: &ServicePortProxy) -> &'static str {
    match p.family {
        Family::V4 => "4",
        Family::V6 => "6",
    }
}

/// `ns/name/port/tcp4`: what names a Service port's objects.
fn port_body(p: &ServicePortProxy) -> String {
    format!(
        "{}/{}/{}{}",
        p.service,
        p.port_name,
        p.protocol.nft(),
        fam_tag(p)
    )
}

fn ep_body(p: &ServicePortProxy, e: &Endpoint) -> String {
    format!("{}/{}.{}", port_body(p), e.addr, e.port)
}

/// The chain that picks from the cluster set (`svc-`), the local set
/// (`local-`), the external entry (`ext-`), the source-range check (`fw-`).
pub fn chain_name(kind: &str, p: &ServicePortProxy) -> String {
    ident(&format!("{kind}-"), &port_body(p))
}

/// The chain that DNATs to one endpoint.
pub fn endpoint_chain(p: &ServicePortProxy, e: &Endpoint) -> String {
    ident("ep-", &ep_body(p, e))
}

/// The session-affinity set of one endpoint (its timeout in the name, so a
/// changed timeout is a new set).
pub fn affinity_set(p: &ServicePortProxy, e: &Endpoint, timeout: u32) -> String {
    ident("aff-", &format!("{}/{timeout}", ep_body(p, e)))
}

fn ip_kw(f: Family) -> &'static str {
    match f {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn dnat_target(a: IpAddr, port: u16) -> String {
    match a {
        IpAddr::V4(v) => format!("{v}:{port}"),
        IpAddr::V6(v) => format!("[{v}]:{port}"),
    }
}

/// What one frontend's traffic leads to.
enum Target {
    /// Jump into a chain (DNAT follows).
    Chain(String),
    /// Refused at once (TCP reset / ICMP port unreachable).
    Refuse,
}

impl SvcTable {
    /// The table as it is with no Service: fixed chains and empty maps.
    pub fn empty() -> SvcTable {
        let mut t = SvcTable::default();
        for (name, hook, rules) in fixed_chains() {
            t.chains.insert(name.into(), ChainDef { hook, rules });
        }
        for (name, _) in MAPS {
            t.maps.insert(name.into(), BTreeMap::new());
        }
        t
    }

    /// The table that implements `model` (see the module doc for the layout).
    pub fn from_model(model: &[ServicePortProxy]) -> SvcTable {
        let mut t = SvcTable::empty();
        for p in model {
            t.add_port(p);
        }
        t
    }

    fn chain(&mut self, name: &str) -> &mut Vec<String> {
        &mut self.chains.entry(name.to_string()).or_default().rules
    }

    fn element(&mut self, map: String, key: String, verdict: String) {
        self.maps.entry(map).or_default().insert(key, verdict);
    }

    /// A chain that picks one of the endpoints of `set` (affinity first),
    /// with the endpoint chains it needs; None when the set is empty.
    fn pick_chain(
        &mut self,
        kind: &str,
        p: &ServicePortProxy,
        set: &EndpointSet,
    ) -> Option<String> {
        if set.is_empty() {
            return None;
        }
        let name = chain_name(kind, p);
        if self.chains.contains_key(&name) {
            return Some(name);
        }
        let ip = ip_kw(p.family);
        let mut rules = Vec::new();
        let eps: Vec<&Endpoint> = p.chosen(set).collect();
        let mut arms = Vec::new();
        for e in &eps {
            let ep_chain = endpoint_chain(p, e);
            if !self.chains.contains_key(&ep_chain) {
                let mut ep_rules = vec![format!("{ip} saddr {} jump mark-for-masquerade", e.addr)];
                if let Some(t) = p.affinity_timeout {
                    let set = affinity_set(p, e, t);
                    let ty = match p.family {
                        Family::V4 => "ipv4_addr",
                        Family::V6 => "ipv6_addr",
                    };
                    self.sets.insert(
                        set.clone(),
                        format!("type {ty}; flags dynamic,timeout; timeout {t}s;"),
                    );
                    ep_rules.push(format!("update @{set} {{ {ip} saddr }}"));
                }
                ep_rules.push(format!(
                    "meta l4proto {} dnat {ip} to {}",
                    p.protocol.nft(),
                    dnat_target(e.addr, e.port)
                ));
                self.chains.insert(
                    ep_chain.clone(),
                    ChainDef {
                        hook: None,
                        rules: ep_rules,
                    },
                );
            }
            if let Some(t) = p.affinity_timeout {
                rules.push(format!(
                    "{ip} saddr @{} goto {ep_chain}",
                    affinity_set(p, e, t)
                ));
            }
            arms.push(ep_chain);
        }
        // One rule per endpoint, each taking 1 of the k not yet passed:
        // uniform, and no anonymous map (binding one costs the kernel a walk
        // of the whole transaction, quadratic in a full load).
        let n = arms.len();
        for (i, ep_chain) in arms.into_iter().enumerate() {
            if i + 1 < n {
                rules.push(format!("numgen random mod {} 0 goto {ep_chain}", n - i));
            } else {
                rules.push(format!("goto {ep_chain}"));
            }
        }
        *self.chain(&name) = rules;
        Some(name)
    }

    fn add_port(&mut self, p: &ServicePortProxy) {
        let cluster = self.pick_chain("svc", p, &p.cluster);
        // The local set's chain only where a traffic policy sends there.
        let local = if p.internal_local || p.external_local {
            self.pick_chain("local", p, &p.local)
        } else {
            None
        };
        let internal = if p.internal_local { &local } else { &cluster };
        let internal = match internal {
            Some(c) => Target::Chain(c.clone()),
            None => Target::Refuse,
        };
        // External traffic: masqueraded under the Cluster policy (the reply
        // must come back through this node); under Local, the client's
        // address is kept and only local endpoints serve, but the node's own
        // traffic and its pods' go to the cluster set like any internal traffic.
        let external = match (&cluster, p.external_local) {
            (None, _) => Target::Refuse,
            (Some(c), false) => {
                let name = chain_name("ext", p);
                *self.chain(&name) = vec!["jump mark-for-masquerade".into(), format!("goto {c}")];
                Target::Chain(name)
            }
            (Some(c), true) => {
                let name = chain_name("ext", p);
                // Pods of this node (their veths) are inside the cluster
                // too: the cluster set, unmasqueraded (kube-proxy's
                // interface-prefix local detection).
                let mut rules = vec![
                    "fib saddr type local jump mark-for-masquerade".into(),
                    format!("fib saddr type local goto {c}"),
                    format!("iifname \"{}*\" goto {c}", twill_api::names::VETH_PREFIX),
                ];
                match &local {
                    Some(l) => rules.push(format!("goto {l}")),
                    None => rules.push("drop".into()),
                }
                *self.chain(&name) = rules;
                Target::Chain(name)
            }
        };
        let fam = fam_tag(p);
        let proto = p.protocol.nft();
        for f in &p.frontends {
            let (addr_key, target) = match f {
                Frontend::ClusterIp(a, port) => {
                    (Some(format!("{a} . {proto} . {port}")), &internal)
                }
                Frontend::NodePort(port) => {
                    let key = format!("{proto} . {port}");
                    self.put(format!("nodeports{fam}"), key, &external);
                    continue;
                }
                Frontend::LoadBalancer(a, port) if !p.source_ranges.is_empty() => {
                    let key = format!("{a} . {proto} . {port}");
                    let fw = match &external {
                        Target::Chain(ext) => {
                            let name = chain_name("fw", p);
                            let ranges: Vec<String> =
                                p.source_ranges.iter().map(ToString::to_string).collect();
                            *self.chain(&name) = vec![
                                format!(
                                    "{} saddr != {{ {} }} drop",
                                    ip_kw(p.family),
                                    ranges.join(", ")
                                ),
                                format!("goto {ext}"),
                            ];
                            Target::Chain(name)
                        }
                        Target::Refuse => Target::Refuse,
                    };
                    self.put(format!("svc{fam}"), key, &fw);
                    continue;
                }
                Frontend::LoadBalancer(a, port) | Frontend::ExternalIp(a, port) => {
                    (Some(format!("{a} . {proto} . {port}")), &external)
                }
            };
            if let Some(key) = addr_key {
                let target = match target {
                    Target::Chain(c) => Target::Chain(c.clone()),
                    Target::Refuse => Target::Refuse,
                };
                self.put(format!("svc{fam}"), key, &target);
            }
        }
    }

    /// One frontend's element: a chain to go to, or `refuse`.
    fn put(&mut self, map: String, key: String, target: &Target) {
        match target {
            Target::Chain(c) => self.element(map, key, format!("goto {c}")),
            Target::Refuse => self.element(map, key, "goto refuse".into()),
        }
    }

    /// The script that replaces whatever table is there with this one, in
    /// one transaction (`add` first, so the `delete` cannot fail).
    pub fn full_script(&self, table: &str) -> String {
        let mut s = String::with_capacity(256 + self.chains.len() * 160);
        let _ = writeln!(s, "add table inet {table}");
        let _ = writeln!(s, "delete table inet {table}");
        let _ = writeln!(s, "add table inet {table}");
        self.create(&mut s, table, self.chains.keys(), self.sets.keys(), true);
        for (name, c) in &self.chains {
            for r in &c.rules {
                let _ = writeln!(s, "add rule inet {table} {name} {r}");
            }
        }
        for (map, elems) in &self.maps {
            add_elements(&mut s, table, map, elems.iter());
        }
        s
    }

    /// Declarations of chains, sets and (when `maps`) the fixed maps.
    fn create<'a>(
        &self,
        s: &mut String,
        table: &str,
        chains: impl Iterator<Item = &'a String>,
        sets: impl Iterator<Item = &'a String>,
        maps: bool,
    ) {
        for name in chains {
            match self.chains.get(name).and_then(|c| c.hook.as_deref()) {
                Some(h) => {
                    let _ = writeln!(s, "add chain inet {table} {name} {{ {h} }}");
                }
                None => {
                    let _ = writeln!(s, "add chain inet {table} {name}");
                }
            }
        }
        if maps {
            for (name, ty) in MAPS {
                let _ = writeln!(s, "add map inet {table} {name} {{ type {ty} : verdict; }}");
            }
        }
        for name in sets {
            if let Some(decl) = self.sets.get(name) {
                let _ = writeln!(s, "add set inet {table} {name} {{ {decl} }}");
            }
        }
    }

    /// The script that takes the kernel from `old` (what it holds, as
    /// applied) to `self`: [`SvcTable::diff_ops`] as nft text. Empty when
    /// nothing changes.
    pub fn diff_script(&self, old: &SvcTable, table: &str) -> String {
        render_ops(table, &self.diff_ops(old))
    }

    /// The steps that take the kernel from `old` to `self`: new chains and
    /// sets, changed chains flushed and filled again, map elements deleted
    /// and added, chains and sets no longer wanted flushed and deleted — in
    /// an order in which nothing is deleted while something still refers to
    /// it. The fixed part is the same in every table, so a diff never
    /// touches it.
    pub fn diff_ops(&self, old: &SvcTable) -> Vec<Op> {
        let mut ops = Vec::new();
        for name in self.chains.keys().filter(|n| !old.chains.contains_key(*n)) {
            let hook = self.chains.get(name).and_then(|c| c.hook.clone());
            ops.push(Op::AddChain {
                name: name.clone(),
                hook,
            });
        }
        for (name, decl) in &self.sets {
            if old.sets.get(name) != Some(decl) {
                ops.push(Op::AddSet {
                    name: name.clone(),
                    decl: decl.clone(),
                });
            }
        }
        for (name, c) in &self.chains {
            match old.chains.get(name) {
                Some(o) if o.rules == c.rules => continue,
                Some(_) => ops.push(Op::FlushChain(name.clone())),
                None => {}
            }
            for r in &c.rules {
                ops.push(Op::AddRule {
                    chain: name.clone(),
                    rule: r.clone(),
                });
            }
        }
        let empty = BTreeMap::new();
        for (map, _) in MAPS {
            let want = self.maps.get(map).unwrap_or(&empty);
            let have = old.maps.get(map).unwrap_or(&empty);
            let gone: Vec<String> = have
                .iter()
                .filter(|(k, v)| want.get(*k) != Some(*v))
                .map(|(k, _)| k.clone())
                .collect();
            if !gone.is_empty() {
                ops.push(Op::DelElements {
                    map: map.into(),
                    keys: gone,
                });
            }
            let new: Vec<(String, String)> = want
                .iter()
                .filter(|(k, v)| have.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !new.is_empty() {
                ops.push(Op::AddElements {
                    map: map.into(),
                    elems: new,
                });
            }
        }
        let dead: Vec<&String> = old
            .chains
            .keys()
            .filter(|n| !self.chains.contains_key(*n))
            .collect();
        for name in &dead {
            ops.push(Op::FlushChain((*name).clone()));
        }
        for name in &dead {
            ops.push(Op::DelChain((*name).clone()));
        }
        for name in old.sets.keys() {
            if !self.sets.contains_key(name) {
                ops.push(Op::DelSet(name.clone()));
            }
        }
        ops
    }

    /// What a listing of this table should show ([`Fingerprint`]).
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            chains: self
                .chains
                .iter()
                .map(|(n, c)| (n.clone(), c.rules.len()))
                .collect(),
            sets: self.sets.keys().cloned().collect(),
            maps: self
                .maps
                .iter()
                .map(|(n, e)| {
                    (
                        n.clone(),
                        e.iter().map(|(k, v)| format!("{k} : {v}")).collect(),
                    )
                })
                .collect(),
        }
    }
}

/// Elements per `add element` / `delete element` command (keeps a line,
/// and nft's parser, within bounds at 10,000 Services).
const ELEMENTS_PER_COMMAND: usize = 1000;

fn add_elements<'a>(
    s: &mut String,
    table: &str,
    map: &str,
    elems: impl Iterator<Item = (&'a String, &'a String)>,
) {
    let all: Vec<String> = elems.map(|(k, v)| format!("{k} : {v}")).collect();
    for chunk in all.chunks(ELEMENTS_PER_COMMAND) {
        let _ = writeln!(
            s,
            "add element inet {table} {map} {{ {} }}",
            chunk.join(", ")
        );
    }
}

/// One step of a diff ([`SvcTable::diff_ops`]), in one of the tables.
/// Rules, keys and verdicts are nft text as the table holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    AddChain {
        name: String,
        hook: Option<String>,
    },
    AddSet {
        name: String,
        decl: String,
    },
    FlushChain(String),
    AddRule {
        chain: String,
        rule: String,
    },
    DelElements {
        map: String,
        keys: Vec<String>,
    },
    AddElements {
        map: String,
        elems: Vec<(String, String)>,
    },
    DelChain(String),
    DelSet(String),
}

/// Steps in table `inet <table>` as nft script (one transaction when
/// applied whole).
pub fn render_ops(table: &str, ops: &[Op]) -> String {
    let mut s = String::new();
    for op in ops {
        match op {
            Op::AddChain {
                name,
                hook: Some(h),
            } => {
                let _ = writeln!(s, "add chain inet {table} {name} {{ {h} }}");
            }
            Op::AddChain { name, hook: None } => {
                let _ = writeln!(s, "add chain inet {table} {name}");
            }
            Op::AddSet { name, decl } => {
                let _ = writeln!(s, "add set inet {table} {name} {{ {decl} }}");
            }
            Op::FlushChain(name) => {
                let _ = writeln!(s, "flush chain inet {table} {name}");
            }
            Op::AddRule { chain, rule } => {
                let _ = writeln!(s, "add rule inet {table} {chain} {rule}");
            }
            Op::DelElements { map, keys } => {
                for chunk in keys.chunks(ELEMENTS_PER_COMMAND) {
                    let _ = writeln!(
                        s,
                        "delete element inet {table} {map} {{ {} }}",
                        chunk.join(", ")
                    );
                }
            }
            Op::AddElements { map, elems } => {
                add_elements(&mut s, table, map, elems.iter().map(|(k, v)| (k, v)));
            }
            Op::DelChain(name) => {
                let _ = writeln!(s, "delete chain inet {table} {name}");
            }
            Op::DelSet(name) => {
                let _ = writeln!(s, "delete set inet {table} {name}");
            }
        }
    }
    s
}

/// What drift detection compares: chains with their rule counts, the sets
/// by name, and every map element as `key : verdict`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fingerprint {
    pub chains: BTreeMap<String, usize>,
    pub sets: BTreeSet<String>,
    pub maps: BTreeMap<String, BTreeSet<String>>,
}

impl Fingerprint {
    /// Reads `nft -j list table inet twill-svc-N` output; None when it holds
    /// something this reader does not know (which is drift too).
    pub fn from_json(v: &serde_json::Value) -> Option<Fingerprint> {
        use serde_json::Value;
        let mut f = Fingerprint::default();
        let scalar = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        for item in v.get("nftables")?.as_array()? {
            if let Some(c) = item.get("chain") {
                f.chains
                    .entry(c.get("name")?.as_str()?.to_string())
                    .or_insert(0);
            } else if let Some(r) = item.get("rule") {
                *f.chains
                    .entry(r.get("chain")?.as_str()?.to_string())
                    .or_insert(0) += 1;
            } else if let Some(s) = item.get("set") {
                f.sets.insert(s.get("name")?.as_str()?.to_string());
            } else if let Some(m) = item.get("map") {
                let elems = f
                    .maps
                    .entry(m.get("name")?.as_str()?.to_string())
                    .or_default();
                for e in m
                    .get("elem")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let pair = e.as_array()?;
                    let key = match pair.first()? {
                        Value::Object(o) => o
                            .get("concat")?
                            .as_array()?
                            .iter()
                            .map(scalar)
                            .collect::<Option<Vec<_>>>()?
                            .join(" . "),
                        other => scalar(other)?,
                    };
                    let verdict = pair.get(1)?.as_object()?;
                    let (kind, arg) = verdict.iter().next()?;
                    let text = match arg.get("target").and_then(Value::as_str) {
                        Some(t) => format!("{kind} {t}"),
                        None => kind.clone(),
                    };
                    elems.insert(format!("{key} : {text}"));
                }
            }
        }
        Some(f)
    }
}

/// The table `node` should have for these Services and EndpointSlices.
pub fn desired(
    node: &str,
    services: &[k8s_openapi::api::core::v1::Service],
    slices: &[k8s_openapi::api::discovery::v1::EndpointSlice],
) -> (Vec<ServicePortProxy>, SvcTable) {
    let model = proxy_model(node, services, slices);
    let table = SvcTable::from_model(&model);
    (model, table)
}

/// A UDP flow target that went away: conntrack entries from `frontend` to
/// `endpoint` keep sending datagrams to an endpoint that no longer serves
/// (TCP learns by a reset; UDP does not), so they should be flushed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StaleUdp {
    pub frontend: Frontend,
    pub endpoint: IpAddr,
    pub port: u16,
}

/// The UDP (frontend, endpoint) pairs `old` sent to that `new` no longer
/// does: the entries a conntrack flush should remove after the new table
/// is applied (kube-proxy does the same). Under `externalTrafficPolicy:
/// Local` an external frontend sends the node's own traffic and its pods'
/// to the cluster set, so both sets count there.
pub fn stale_udp(old: &[ServicePortProxy], new: &[ServicePortProxy]) -> Vec<StaleUdp> {
    let pairs = |m: &[ServicePortProxy]| -> BTreeSet<StaleUdp> {
        m.iter()
            .filter(|p| p.protocol == twill_api::service_proxy::Protocol::Udp)
            .flat_map(|p| {
                p.frontends.iter().flat_map(move |f| {
                    let also_cluster = (f.is_external() && p.external_local)
                        .then(|| p.chosen(&p.cluster))
                        .into_iter()
                        .flatten();
                    p.chosen(p.targets(f))
                        .chain(also_cluster)
                        .map(move |e| StaleUdp {
                            frontend: *f,
                            endpoint: e.addr,
                            port: e.port,
                        })
                })
            })
            .collect()
    };
    let now = pairs(new);
    pairs(old)
        .into_iter()
        .filter(|p| !now.contains(p))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests;
